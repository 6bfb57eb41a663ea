//! `identity`: the cluster marker on every host ([`crate::identity::MARKER_PATH`]: the cluster's name, UID
//! and CA fingerprint), written before anything else, so that every host kubeforge touched says which
//! cluster it belongs to. The first time a host is marked, it also records what kubeforge found there
//! ([`PREEXISTING`]): the state of every unit kubeforge will manage that already existed (a distribution's
//! containerd or etcd), and a copy (`<file>.kubeforge-orig`) of every file it will replace. `reset` and
//! `remove-node` put those back instead of removing them.

use super::{Context, HostWork, Phase};
use crate::model::HostModel;
use crate::plan::{DesiredFile, HostDesired};
use crate::transport::Command;

/// The phase id.
pub const ID: &str = "identity";

/// What was on the host before kubeforge first touched it: `unit NAME ENABLED ACTIVE` and `file PATH`
/// lines (the file's original kept as `PATH.kubeforge-orig`).
pub const PREEXISTING: &str = "/var/lib/kubeforge/preexisting";

/// Records what was there, once. A host that kubeforge had installed before markers existed records that
/// nothing is known of its earlier state. `$1` the record, then units, `--`, files.
const RECORD: &str = r##"p=$1; shift
[ -e "$p" ] && exit 0
mkdir -p "${p%/*}"
{
  if [ -e /var/lib/kubeforge/state.json ] || ls /var/lib/kubeforge/converged 2>/dev/null | grep -qv '^identity$'; then
    echo "# marked after kubeforge had installed this host: what was there before is not known"
  else
    while [ $# -gt 0 ] && [ "$1" != "--" ]; do
      e=$(systemctl is-enabled "$1" 2>/dev/null); a=$(systemctl is-active "$1" 2>/dev/null)
      case "$e" in ''|not-found) ;; *) echo "unit $1 $e ${a:-inactive}" ;; esac
      shift
    done; shift
    for f in "$@"; do
      if [ -f "$f" ] && [ ! -L "$f" ]; then cp -p -- "$f" "$f.kubeforge-orig" && echo "file $f"; fi
    done
  fi
} > "$p.tmp" && mv -f -- "$p.tmp" "$p""##;

/// Where only Kubernetes (this cluster's, since the host passed the identity check) keeps files: nothing
/// there is another package's, so nothing there is recorded.
const KUBEFORGE_OWN: &[&str] =
    &["/etc/kubernetes/", "/var/lib/kubelet/", "/var/lib/kube-proxy/", "/var/lib/kubeforge/"];

/// Phase `identity`.
pub struct Identity;

impl Phase for Identity {
    fn id(&self) -> &'static str {
        ID
    }
    fn title(&self) -> &'static str {
        "Cluster marker (and what the host had before)"
    }
    fn work(&self, ctx: &Context<'_>, host: &HostModel) -> crate::Result<Option<HostWork>> {
        let marker = DesiredFile::bytes(
            crate::identity::MARKER_PATH,
            0o644,
            ctx.material.marker.to_json(),
            "cluster marker",
        );
        // What the other phases will manage on this host.
        let (mut units, mut files) = (Vec::new(), Vec::new());
        for phase in crate::workflow::apply().into_iter().filter(|p| p.id() != ID) {
            if let Some(HostWork::Converge(d)) = phase.work(ctx, host)? {
                units.extend(d.units.iter().cloned());
                files.extend(d.files.iter().map(|f| f.upload.dest.clone()).filter(|f| {
                    !KUBEFORGE_OWN.iter().any(|own| f.starts_with(own)) && !f.contains("kubeforge")
                }));
            }
        }
        units.sort();
        units.dedup();
        files.sort();
        files.dedup();
        let record = Command::shell(RECORD).arg(PREEXISTING).args(units).arg("--").args(files).sudo();
        Ok(Some(HostWork::Converge(HostDesired {
            files: vec![marker],
            after_change: vec![("record what the host had before".into(), record)],
            ..Default::default()
        })))
    }
}

/// What a host's [`PREEXISTING`] record says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Preexisting {
    /// Units that existed: name, `is-enabled`, `is-active` as found.
    pub units: Vec<(String, String, String)>,
    /// Files that existed (kept as `<file>.kubeforge-orig`).
    pub files: Vec<String>,
}

impl Preexisting {
    /// Parses a record.
    pub fn parse(text: &str) -> Preexisting {
        let mut p = Preexisting::default();
        for line in text.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            match w.as_slice() {
                ["unit", name, enabled, active] => {
                    p.units.push((name.to_string(), enabled.to_string(), active.to_string()))
                }
                ["file", path] => p.files.push(path.to_string()),
                _ => {}
            }
        }
        p
    }

    /// Whether `unit` existed before kubeforge.
    pub fn has_unit(&self, unit: &str) -> bool {
        self.units.iter().any(|(u, _, _)| u == unit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_parses_and_comments_say_nothing() {
        let p = Preexisting::parse(
            "unit containerd enabled active\nfile /etc/containerd/config.toml\n# note\nbogus line here x y\n",
        );
        assert_eq!(p.units, vec![("containerd".into(), "enabled".into(), "active".into())]);
        assert_eq!(p.files, vec!["/etc/containerd/config.toml".to_string()]);
        assert!(p.has_unit("containerd") && !p.has_unit("kubelet"));
    }

    #[test]
    fn the_record_script_keeps_originals_and_unit_states_once() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("config.toml"), "distro\n").unwrap();
        let rec = d.join("kf/preexisting");
        let run = || {
            let st = std::process::Command::new("sh")
                .args(["-c", RECORD, "sh"])
                .arg(&rec)
                .arg("no-such-unit-kubeforge-test")
                .arg("--")
                .arg(d.join("config.toml"))
                .arg(d.join("absent.conf"))
                .status()
                .unwrap();
            assert!(st.success());
        };
        run();
        let text = std::fs::read_to_string(&rec).unwrap();
        assert_eq!(text, format!("file {}\n", d.join("config.toml").display()));
        assert_eq!(std::fs::read_to_string(d.join("config.toml.kubeforge-orig")).unwrap(), "distro\n");
        // A second run changes nothing, even after kubeforge replaced the file.
        std::fs::write(d.join("config.toml"), "kubeforge\n").unwrap();
        run();
        assert_eq!(std::fs::read_to_string(d.join("config.toml.kubeforge-orig")).unwrap(), "distro\n");
        assert_eq!(std::fs::read_to_string(&rec).unwrap(), text);
    }
}
