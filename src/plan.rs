//! Desired state and the difference to a host's actual state: the heart of idempotent `apply`.
//!
//! A phase describes, per host, the files that must exist (content, mode, which services they affect) and
//! the services that must be enabled and running ([`HostDesired`]). [`probe`] reads the host's actual state
//! in **one** command (digests of every file, enabled/active state of every unit), and [`diff`] turns the
//! two into a [`HostChanges`]: the dry-run prints it, [`converge_step`] carries it out. A converged host
//! therefore costs one round trip per phase and sends no bytes, and a changed setting touches exactly the
//! files and restarts exactly the services that depend on it.

use crate::exec::{Step, StepError};
use crate::transport::{Command, Transport, Upload};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// A file a host must have.
#[derive(Debug, Clone)]
pub struct DesiredFile {
    /// What to place (content, destination, mode, owner, secrecy).
    pub upload: Upload,
    /// Units to restart when this file changes.
    pub restarts: Vec<String>,
    /// Short description for plans (`kubelet v1.35.7`, `etcd server certificate`).
    pub label: String,
}

impl DesiredFile {
    /// A file from bytes.
    pub fn bytes(dest: &str, mode: u32, content: impl Into<Vec<u8>>, label: impl Into<String>) -> Self {
        DesiredFile { upload: Upload::bytes(content, dest, mode), restarts: Vec::new(), label: label.into() }
    }

    /// A file streamed from a local path (binaries); `sha256` and `size` are the already-verified values.
    pub fn local(
        dest: &str,
        mode: u32,
        path: PathBuf,
        sha256: String,
        size: u64,
        label: impl Into<String>,
    ) -> Self {
        let upload = Upload {
            source: crate::transport::UploadSource::File(path),
            dest: dest.into(),
            mode,
            owner: None,
            sudo: true,
            size,
            sha256,
            secret: false,
        };
        DesiredFile { upload, restarts: Vec::new(), label: label.into() }
    }

    /// Marks the content secret (keys, tokens): plans show the path and whether it changed, never digests.
    pub fn secret(mut self) -> Self {
        self.upload.secret = true;
        self
    }

    /// Units to restart when this file changes.
    pub fn restarts(mut self, units: &[&str]) -> Self {
        self.restarts = units.iter().map(|u| u.to_string()).collect();
        self
    }
}

/// What one host must look like after a phase.
#[derive(Debug, Clone, Default)]
pub struct HostDesired {
    /// Files, in the order they are written.
    pub files: Vec<DesiredFile>,
    /// systemd units that must be enabled and active, in start order.
    pub units: Vec<String>,
    /// Commands that run (in order) after the files are written and units started, but only when something
    /// on this host changed in this phase (health waits, `etcdctl member add`...).
    pub after_change: Vec<(String, Command)>,
    /// Commands that always run in this phase (kept rare: each is a round trip on converged hosts).
    pub always: Vec<(String, Command)>,
    /// Programs that must already be installed (e.g. the distribution's containerd), checked by the probe
    /// itself at no extra round trip: `(program, how to install it)`.
    pub require: Vec<(String, String)>,
}

/// The state of one unit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnitState {
    /// `systemctl is-enabled` (`enabled`, `disabled`, `missing`...).
    pub enabled: String,
    /// `systemctl is-active` (`active`, `inactive`, `failed`...).
    pub active: String,
}

/// What [`probe`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActualState {
    /// sha256 per path (`None`: no such file).
    pub digests: BTreeMap<String, Option<String>>,
    /// State per unit.
    pub units: BTreeMap<String, UnitState>,
}

/// One file that will change.
#[derive(Debug, Clone)]
pub struct FileChange {
    /// The desired file.
    pub file: DesiredFile,
    /// The digest on the host now (`None`: new file).
    pub old: Option<String>,
}

/// Everything that will change on one host.
#[derive(Debug, Clone, Default)]
pub struct HostChanges {
    /// Files to write.
    pub files: Vec<FileChange>,
    /// Units to `systemctl enable`.
    pub enable: Vec<String>,
    /// Units to (re)start, in start order.
    pub restart: Vec<String>,
    /// `systemctl daemon-reload` first (a unit file changed).
    pub daemon_reload: bool,
    /// Commands that follow a change.
    pub after_change: Vec<(String, Command)>,
}

impl HostChanges {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.enable.is_empty() && self.restart.is_empty()
    }

    /// Number of changes (files written + units enabled or restarted).
    pub fn count(&self) -> usize {
        self.files.len() + self.enable.len() + self.restart.len()
    }
}

fn short(d: &str) -> &str {
    &d[..d.len().min(12)]
}

fn human_size(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

impl fmt::Display for HostChanges {
    /// The dry-run text: one line per change; secrets show no digests.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.files {
            let u = &c.file.upload;
            let what = match (&c.old, u.secret) {
                (None, true) => format!("new, secret, mode {:04o}", u.mode),
                (Some(_), true) => "changed, secret".to_string(),
                (None, false) => {
                    format!("new, {}, mode {:04o}, sha256 {}", human_size(u.size), u.mode, short(&u.sha256))
                }
                (Some(old), false) => format!("sha256 {} -> {}", short(old), short(&u.sha256)),
            };
            let sign = if c.old.is_none() { '+' } else { '~' };
            writeln!(f, "  {sign} {} ({}; {what})", u.dest, c.file.label)?;
        }
        if self.daemon_reload {
            writeln!(f, "  systemctl daemon-reload")?;
        }
        for u in &self.enable {
            writeln!(f, "  enable {u}")?;
        }
        for u in &self.restart {
            writeln!(f, "  restart {u}")?;
        }
        for (name, cmd) in &self.after_change {
            writeln!(f, "  run: {name}: {cmd}")?;
        }
        Ok(())
    }
}

/// Where each phase records that it converged.
pub const MARKER_DIR: &str = "/var/lib/kubeforge/converged";

impl HostDesired {
    /// Adds the phase's completion marker: a file whose content is the digest of the whole desired state
    /// (files, units, follow-up commands). It is written last, only after every restart and follow-up
    /// succeeded, so a run that failed half-way is redone by the next run instead of looking converged.
    pub fn with_marker(mut self, phase: &str) -> Self {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for f in &self.files {
            h.update(format!("{} {} {:o}\n", f.upload.dest, f.upload.sha256, f.upload.mode));
        }
        for u in &self.units {
            h.update(format!("unit {u}\n"));
        }
        for (name, cmd) in &self.after_change {
            h.update(format!("after {name}: {cmd}\n"));
        }
        let digest = hex::encode(h.finalize());
        self.files.push(DesiredFile::bytes(
            &format!("{MARKER_DIR}/{phase}"),
            0o644,
            digest + "\n",
            "phase completion marker",
        ));
        self
    }
}

fn is_marker(f: &DesiredFile) -> bool {
    f.upload.dest.starts_with(MARKER_DIR)
}

/// The one command that reads a host's actual state for `desired`: file digests, then unit states.
pub fn probe_command(desired: &HostDesired) -> Command {
    // Arguments: required programs..., `--`, files..., `--`, units.... Values arrive as "$@", never pasted
    // into the script.
    let script = r#"missing=""
while [ $# -gt 0 ] && [ "$1" != "--" ]; do command -v "$1" >/dev/null 2>&1 || missing="$missing $1"; shift; done
shift
if [ -n "$missing" ]; then echo "missing:$missing" >&2; exit 3; fi
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  if [ -f "$1" ]; then d=$(sha256sum < "$1") && echo "${d%% *}" || echo "?"; else echo "-"; fi
  shift
done
shift
for u in "$@"; do
  e=$(systemctl is-enabled "$u" 2>/dev/null); a=$(systemctl is-active "$u" 2>/dev/null)
  echo "${e:-missing} ${a:-inactive}"
done"#;
    Command::shell(script)
        .args(desired.require.iter().map(|(p, _)| p.clone()))
        .arg("--")
        .args(desired.files.iter().map(|f| f.upload.dest.clone()))
        .arg("--")
        .args(desired.units.iter().cloned())
        .sudo()
}

/// Parses [`probe_command`]'s output.
pub fn parse_probe(desired: &HostDesired, stdout: &str) -> Result<ActualState, String> {
    let lines: Vec<&str> = stdout.lines().collect();
    let (nf, nu) = (desired.files.len(), desired.units.len());
    if lines.len() != nf + nu {
        return Err(format!("state probe printed {} lines, expected {}", lines.len(), nf + nu));
    }
    let mut st = ActualState::default();
    for (f, l) in desired.files.iter().zip(&lines[..nf]) {
        let d = match l.trim() {
            "-" => None,
            // An unreadable file counts as different: it will be rewritten.
            "?" => Some(String::new()),
            h => Some(h.to_owned()),
        };
        st.digests.insert(f.upload.dest.clone(), d);
    }
    for (u, l) in desired.units.iter().zip(&lines[nf..]) {
        let mut it = l.split_whitespace();
        st.units.insert(
            u.clone(),
            UnitState {
                enabled: it.next().unwrap_or("missing").to_owned(),
                active: it.next().unwrap_or("inactive").to_owned(),
            },
        );
    }
    Ok(st)
}

/// Reads the actual state of a host in one round trip.
pub async fn probe(t: &dyn Transport, desired: &HostDesired) -> Result<ActualState, StepError> {
    if desired.files.is_empty() && desired.units.is_empty() && desired.require.is_empty() {
        return Ok(ActualState::default());
    }
    let cmd = probe_command(desired);
    let out = t.exec(&cmd).await?;
    if out.status == Some(3) {
        let missing = out.stderr_str().trim().trim_start_matches("missing:").trim().to_owned();
        let hints: Vec<String> = desired
            .require
            .iter()
            .filter(|(p, _)| missing.split_whitespace().any(|m| m == p))
            .map(|(p, how)| format!("`{p}` is not installed: {how}"))
            .collect();
        return Err(StepError::Other(hints.join("; ")));
    }
    if !out.success() {
        return Err(StepError::Command {
            command: "read host state".into(),
            status: out.status,
            output: out,
        });
    }
    parse_probe(desired, &out.stdout_str()).map_err(StepError::Other)
}

/// What must change to turn `actual` into `desired`.
pub fn diff(desired: &HostDesired, actual: &ActualState) -> HostChanges {
    let mut ch = HostChanges::default();
    let mut restart: BTreeSet<String> = BTreeSet::new();
    for f in &desired.files {
        let old = actual.digests.get(&f.upload.dest).cloned().flatten();
        if old.as_deref() != Some(f.upload.sha256.as_str()) {
            if f.upload.dest.starts_with("/etc/systemd/system/") {
                ch.daemon_reload = true;
            }
            restart.extend(f.restarts.iter().cloned());
            ch.files.push(FileChange { file: f.clone(), old });
        }
    }
    for u in &desired.units {
        let st = actual.units.get(u).cloned().unwrap_or_default();
        if st.enabled != "enabled" {
            ch.enable.push(u.clone());
        }
        if st.active != "active" {
            restart.insert(u.clone());
        }
    }
    // Keep the phase's start order, then any other unit a file asked for.
    ch.restart = desired.units.iter().filter(|u| restart.contains(*u)).cloned().collect();
    ch.restart.extend(restart.into_iter().filter(|u| !desired.units.contains(u)));
    if !ch.is_empty() {
        ch.after_change = desired.after_change.clone();
    }
    ch
}

/// Applies `changes` to a host: writes files, reloads systemd, enables and (re)starts units, runs the
/// follow-up commands. Returns whether anything changed.
pub async fn apply_changes(t: &dyn Transport, changes: &HostChanges) -> Result<bool, StepError> {
    for c in changes.files.iter().filter(|c| !is_marker(&c.file)) {
        t.upload(&c.file.upload).await?;
    }
    if changes.daemon_reload || !changes.enable.is_empty() || !changes.restart.is_empty() {
        // Arguments: units to enable, `--`, units to restart (in start order).
        let mut script = String::from("set -e\n");
        if changes.daemon_reload {
            script.push_str("systemctl daemon-reload\n");
        }
        script
            .push_str("while [ \"$1\" != \"--\" ]; do systemctl enable --quiet \"$1\"; shift; done\nshift\n");
        // --no-block: a notify-type etcd member only reports ready once a quorum runs, so a blocking restart
        // could wait on hosts not yet started; every phase proves readiness with its own health waits.
        script.push_str("for u in \"$@\"; do systemctl restart --no-block \"$u\"; done\n");
        let cmd = Command::shell(script)
            .args(changes.enable.iter().cloned())
            .arg("--")
            .args(changes.restart.iter().cloned())
            .sudo();
        run_checked(t, "start services", &cmd).await?;
    }
    for (name, cmd) in &changes.after_change {
        run_checked(t, name, cmd).await?;
    }
    for c in changes.files.iter().filter(|c| is_marker(&c.file)) {
        t.upload(&c.file.upload).await?;
    }
    Ok(!changes.is_empty())
}

/// Runs a command that must succeed.
pub async fn run_checked(
    t: &dyn Transport,
    name: &str,
    cmd: &Command,
) -> Result<crate::transport::ExecOutput, StepError> {
    let out = t.exec(cmd).await?;
    if !out.success() {
        return Err(StepError::Command {
            command: format!("{name}: {cmd}"),
            status: out.status,
            output: out,
        });
    }
    Ok(out)
}

/// Shared record of what a run did or would do, per host, for the dry-run text and the "N changes" summary.
pub type ChangeLog = Arc<std::sync::Mutex<Vec<(String, HostChanges)>>>;

/// The executor step for one host and phase: probe, diff, record, and (unless `dry_run`) apply.
pub fn converge_step(phase: &str, host: String, desired: HostDesired, dry_run: bool, log: ChangeLog) -> Step {
    let desired = desired.with_marker(phase);
    Step::custom("converge", move |t: &dyn Transport| {
        Box::pin(async move {
            for (name, cmd) in &desired.always {
                run_checked(t, name, cmd).await?;
            }
            let actual = probe(t, &desired).await?;
            let changes = diff(&desired, &actual);
            log.lock().expect("lock").push((host, changes.clone()));
            if dry_run || changes.is_empty() {
                return Ok(false);
            }
            apply_changes(t, &changes).await
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::fake::{FakeTransport, Reply};

    fn desired() -> HostDesired {
        HostDesired {
            files: vec![
                DesiredFile::bytes("/etc/a.conf", 0o644, "a=1\n", "config a").restarts(&["svc-a"]),
                DesiredFile::bytes("/etc/systemd/system/svc-a.service", 0o644, "[Service]\n", "unit a"),
                DesiredFile::bytes("/etc/k.key", 0o600, "secret", "key").secret(),
            ],
            units: vec!["svc-a".into(), "svc-b".into()],
            after_change: vec![("wait".into(), Command::new("true"))],
            always: vec![],
            require: vec![],
        }
    }

    fn sha(s: &str) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(s.as_bytes()))
    }

    #[test]
    fn fresh_host_gets_everything_and_secret_digests_stay_hidden() {
        let d = desired();
        let actual = parse_probe(&d, "-\n-\n-\nmissing inactive\nmissing inactive\n").unwrap();
        let ch = diff(&d, &actual);
        assert_eq!(ch.files.len(), 3);
        assert!(ch.daemon_reload);
        assert_eq!(ch.enable, vec!["svc-a", "svc-b"]);
        assert_eq!(ch.restart, vec!["svc-a", "svc-b"]);
        let text = ch.to_string();
        assert!(text.contains("+ /etc/k.key (key; new, secret, mode 0600)"), "{text}");
        assert!(!text.contains(&sha("secret")[..12]), "secret digest leaked: {text}");
        assert!(text.contains("run: wait: true"));
    }

    #[test]
    fn converged_host_has_no_changes_and_a_changed_file_restarts_only_its_units() {
        let d = desired();
        let all_same = format!(
            "{}\n{}\n{}\nenabled active\nenabled active\n",
            sha("a=1\n"),
            sha("[Service]\n"),
            sha("secret")
        );
        let ch = diff(&d, &parse_probe(&d, &all_same).unwrap());
        assert!(ch.is_empty(), "{ch}");
        assert!(ch.after_change.is_empty(), "follow-ups run only after a change");

        let changed = format!(
            "{}\n{}\n{}\nenabled active\nenabled active\n",
            sha("a=0\n"),
            sha("[Service]\n"),
            sha("secret")
        );
        let ch = diff(&d, &parse_probe(&d, &changed).unwrap());
        assert_eq!(ch.files.len(), 1);
        assert!(!ch.daemon_reload);
        assert_eq!(ch.restart, vec!["svc-a"]);
        assert!(ch.enable.is_empty());
    }

    #[test]
    fn probe_output_of_the_wrong_shape_is_an_error() {
        assert!(parse_probe(&desired(), "-\n").is_err());
    }

    #[tokio::test]
    async fn converge_runs_one_probe_then_writes_and_restarts() {
        let t = FakeTransport::new("h1");
        t.on("sha256sum", Reply::ok("-\n-\n-\n-\nmissing inactive\nmissing inactive\n"));
        let log: ChangeLog = Default::default();
        let step = converge_step("test", "h1".into(), desired(), false, log.clone());
        let crate::exec::Action::Custom(f) = step.action else { panic!("custom step") };
        assert!(f(&t).await.unwrap());
        assert_eq!(t.file("/etc/a.conf").as_deref(), Some(&b"a=1\n"[..]));
        let cmds = t.commands();
        assert!(cmds[0].contains("sha256sum"), "{cmds:?}");
        assert!(cmds.iter().any(|c| c.contains("daemon-reload") && c.contains("svc-b")), "{cmds:?}");
        assert_eq!(log.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn dry_run_writes_nothing() {
        let t = FakeTransport::new("h1");
        t.on("sha256sum", Reply::ok("-\n-\n-\n-\nmissing inactive\nmissing inactive\n"));
        let log: ChangeLog = Default::default();
        let step = converge_step("test", "h1".into(), desired(), true, log.clone());
        let crate::exec::Action::Custom(f) = step.action else { panic!("custom step") };
        assert!(!f(&t).await.unwrap());
        assert_eq!(t.commands().len(), 1, "only the probe ran");
        assert!(t.file("/etc/a.conf").is_none());
        assert_eq!(log.lock().unwrap()[0].1.count(), 8, "3 files + the marker, 2 enables, 2 restarts");
    }

    #[tokio::test]
    async fn probe_script_reads_real_files_in_a_real_shell() {
        let dir = tempfile::tempdir().unwrap();
        let present = dir.path().join("present");
        std::fs::write(&present, "a=1\n").unwrap();
        let d = HostDesired {
            files: vec![
                DesiredFile::bytes(present.to_str().unwrap(), 0o644, "a=1\n", "present"),
                DesiredFile::bytes(
                    dir.path().join("absent; rm -rf /").to_str().unwrap(),
                    0o644,
                    "x",
                    "odd name",
                ),
            ],
            ..Default::default()
        };
        let t = crate::transport::local::LocalTransport::new("local");
        let actual = probe(&t, &d).await.unwrap();
        let ch = diff(&d, &actual);
        assert_eq!(ch.files.len(), 1, "{ch}");
        assert!(ch.files[0].old.is_none());
        assert!(ch.files[0].file.upload.dest.ends_with("absent; rm -rf /"));
    }

    #[tokio::test]
    async fn a_failed_follow_up_leaves_the_phase_unmarked_so_the_next_run_redoes_it() {
        let t = FakeTransport::new("h1");
        t.on("sha256sum", Reply::ok("-\n-\n-\n-\nmissing inactive\nmissing inactive\n"));
        t.on("true", Reply::fail(1, "not ready"));
        let log: ChangeLog = Default::default();
        let crate::exec::Action::Custom(f) = converge_step("p", "h1".into(), desired(), false, log).action
        else {
            panic!()
        };
        assert!(f(&t).await.is_err());
        assert!(t.file("/etc/a.conf").is_some(), "files were written");
        assert!(t.file(&format!("{MARKER_DIR}/p")).is_none(), "but the phase is not marked converged");
    }
}
