//! Desired state, the difference to a host's actual state, and the plan: the heart of idempotent `apply`.
//!
//! A phase describes, per host, the files that must exist (content, mode, which services they affect), the
//! services that must be enabled and running, and what must be *absent* (files, units) ([`HostDesired`]).
//! [`probe`] reads the host's actual state in **one** command (digests of every file, enabled/active state of
//! every unit) for all phases at once, and [`diff`] turns the two into a [`HostChanges`]. The changes of
//! every phase and host form a [`Plan`]: a value that the dry-run prints, that can be saved as a
//! [`PlanRecord`] and checked again before it is carried out, and that [`apply_changes`] carries out. A
//! converged host therefore costs one round trip for the whole plan and sends no bytes, and a changed
//! setting touches exactly the files and restarts exactly the services that depend on it.

use crate::exec::StepError;
use crate::transport::{Command, Transport, Upload};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

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
            precheck: true,
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
    /// Files that must not exist (removed when present), e.g. a member's data after `remove-node`.
    pub absent_files: Vec<String>,
    /// Units that must not exist: stopped, disabled, their unit file removed (`reset`, `remove-node`).
    pub absent_units: Vec<String>,
    /// Programs that must already be installed (e.g. the distribution's containerd), checked by the probe
    /// itself at no extra round trip: `(program, how to install it)`.
    pub require: Vec<(String, String)>,
    /// Commands that run after the files are written and before the units (re)start, only when something
    /// changed (adding an etcd learner before the member starts).
    pub before_start: Vec<(String, Command)>,
    /// The host's change must roll out one batch at a time even when nothing runs yet (etcd members join
    /// one by one).
    pub serial: bool,
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
    /// Commands between the file writes and the unit starts.
    pub before_start: Vec<(String, Command)>,
    /// Units to stop, disable and delete (negative desired state).
    pub remove_units: Vec<String>,
    /// Files to delete (negative desired state), after the units that use them stopped.
    pub remove_files: Vec<String>,
    /// A restart hits a service that was running before: the host serves traffic while it changes, so
    /// phases that roll out one host at a time do so for this host ([`crate::phase::Rollout`]).
    pub disrupts: bool,
}

impl HostChanges {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// Number of changes (files written or removed + units enabled, restarted or removed).
    pub fn count(&self) -> usize {
        self.files.len()
            + self.enable.len()
            + self.restart.len()
            + self.remove_units.len()
            + self.remove_files.len()
    }

    /// Bytes of file content this host receives.
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.file.upload.size).sum()
    }
}

fn short(d: &str) -> &str {
    &d[..d.len().min(12)]
}

/// A size for people: `812 B`, `4.0 KiB`, `3.2 MiB`, `2.0 GiB`.
pub fn human_size(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

impl fmt::Display for HostChanges {
    /// The dry-run text: one line per change; secrets show no digests. Commands by name; the alternate
    /// form (`{:#}`, `--verbose`) adds the script behind each.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.files {
            let u = &c.file.upload;
            let mode_only =
                c.old.as_deref().and_then(|o| o.split_once(" (mode ")).filter(|(h, _)| *h == u.sha256);
            let what = match (&c.old, u.secret) {
                (Some(_), _) if mode_only.is_some() => {
                    format!(
                        "mode {} -> {:04o}",
                        mode_only.map(|(_, m)| m.split(',').next().unwrap_or(m)).unwrap_or(""),
                        u.mode
                    )
                }
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
        for u in &self.remove_units {
            writeln!(f, "  - unit {u} (stop, disable, delete)")?;
        }
        for p in &self.remove_files {
            writeln!(f, "  - {p}")?;
        }
        for (name, cmd) in self.before_start.iter().chain(&self.after_change) {
            if f.alternate() {
                writeln!(f, "  run: {name}: {cmd}")?;
            } else {
                writeln!(f, "  run: {name}")?;
            }
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
        let digest = self.digest();
        self.files.push(DesiredFile::bytes(
            &format!("{MARKER_DIR}/{phase}"),
            0o644,
            digest + "\n",
            "phase completion marker",
        ));
        self
    }

    /// The digest of the whole desired state (files, units, follow-up commands, what must be absent): what
    /// the completion marker and the cluster state's checkpoint record.
    pub fn digest(&self) -> String {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for f in self.files.iter().filter(|f| !is_marker(f)) {
            h.update(format!("{} {} {:o}\n", f.upload.dest, f.upload.sha256, f.upload.mode));
        }
        for u in &self.units {
            h.update(format!("unit {u}\n"));
        }
        for (name, cmd) in &self.before_start {
            h.update(format!("before start {name}: {cmd}\n"));
        }
        for (name, cmd) in &self.after_change {
            h.update(format!("after {name}: {cmd}\n"));
        }
        for u in &self.absent_units {
            h.update(format!("absent unit {u}\n"));
        }
        for p in &self.absent_files {
            h.update(format!("absent {p}\n"));
        }
        hex::encode(h.finalize())
    }
}

fn is_marker(f: &DesiredFile) -> bool {
    f.upload.dest.starts_with(MARKER_DIR)
}

impl HostDesired {
    /// Every path the probe must read: the files that must exist, then those that must not.
    fn probed_paths(&self) -> impl Iterator<Item = &str> {
        self.files.iter().map(|f| f.upload.dest.as_str()).chain(self.absent_files.iter().map(String::as_str))
    }

    /// Every unit the probe must read.
    fn probed_units(&self) -> impl Iterator<Item = &str> {
        self.units.iter().chain(self.absent_units.iter()).map(String::as_str)
    }

    /// Everything `parts` describe, in one value: one probe then reads the state of all of them.
    pub fn merged<'a>(parts: impl IntoIterator<Item = &'a HostDesired>) -> HostDesired {
        let mut all = HostDesired::default();
        for p in parts {
            all.files.extend(p.files.iter().cloned());
            all.units.extend(p.units.iter().cloned());
            all.require.extend(p.require.iter().cloned());
            all.absent_files.extend(p.absent_files.iter().cloned());
            all.absent_units.extend(p.absent_units.iter().cloned());
        }
        all
    }
}

/// Where the probe keeps the digests it computed (root only, mode 0700: digests of secret files are never
/// shown), keyed by each file's device, inode, size, modification and change times (`DIGEST_CACHE` + the
/// file's path). Any write to a file changes its change time, which
/// no unprivileged tool can set back, so a matching key means unchanged content and the probe skips
/// hashing the file again: a converged host's binaries (hundreds of MB) are not read on every run.
#[cfg(not(test))]
pub const DIGEST_CACHE: &str = "/var/lib/kubeforge/digests";
/// Unit tests that probe through a local shell keep their cache out of the machine's `/var/lib`.
#[cfg(test)]
pub const DIGEST_CACHE: &str = "/tmp/kubeforge-unit-test-digests";

/// The one command that reads a host's actual state for `desired`: file digests (through the digest cache),
/// then unit states (all units in one `systemctl show`, per-unit calls if that fails).
pub fn probe_command(desired: &HostDesired) -> Command {
    probe_command_with_cache(desired, DIGEST_CACHE)
}

/// [`probe_command`] with the digest cache in `cache`.
fn probe_command_with_cache(desired: &HostDesired, cache: &str) -> Command {
    // Arguments: required programs..., `--`, files..., `--`, units.... Values arrive as "$@", never pasted
    // into the script.
    let script = format!(
        r#"missing=""
while [ $# -gt 0 ] && [ "$1" != "--" ]; do command -v "$1" >/dev/null 2>&1 || missing="$missing $1"; shift; done
shift
if [ -n "$missing" ]; then echo "missing:$missing" >&2; exit 3; fi
c={}
umask 077
[ -d "$c" ] || {{ mkdir -p "$c" && chmod 0700 "$c"; }}
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  if [ -f "$1" ]; then
    k=$(stat -c '%a %d:%i %s %y %z' -- "$1" 2>/dev/null) || k=""; h=""
    if [ -n "$k" ] && [ -f "$c$1" ]; then {{ read -r ck; read -r ch; }} < "$c$1" && [ "$ck" = "$k" ] && h=$ch; fi
    if [ -z "$h" ] && h=$(sha256sum < "$1"); then
      h=${{h%% *}}
      if [ -n "$k" ]; then [ -d "$c${{1%/*}}" ] || mkdir -p "$c${{1%/*}}"; printf '%s\n%s\n' "$k" "$h" > "$c$1"; fi
    fi
    echo "${{h:-?}} ${{k%% *}}"
  else echo "-"; fi
  shift
done
shift
[ $# -gt 0 ] || exit 0
if st=$(systemctl show -p UnitFileState -p ActiveState -- "$@" 2>/dev/null | awk -v n=$# 'BEGIN {{ RS = ""; FS = "\n" }}
  {{ e = ""; a = ""; for (i = 1; i <= NF; i++) {{ if ($i ~ /^UnitFileState=/) e = substr($i, 15); if ($i ~ /^ActiveState=/) a = substr($i, 13) }}
    o = (e == "" ? "missing" : e) " " (a == "" ? "inactive" : a); print o; c++ }}
  END {{ if (c != n) exit 1 }}'); then printf '%s\n' "$st"; exit 0; fi
for u in "$@"; do
  e=$(systemctl is-enabled "$u" 2>/dev/null); a=$(systemctl is-active "$u" 2>/dev/null)
  echo "${{e:-missing}} ${{a:-inactive}}"
done"#,
        crate::transport::shell_escape(cache)
    );
    Command::shell(script)
        .args(desired.require.iter().map(|(p, _)| p.clone()))
        .arg("--")
        .args(desired.probed_paths().map(str::to_owned))
        .arg("--")
        .args(desired.probed_units().map(str::to_owned))
        .sudo()
}

/// Parses [`probe_command`]'s output.
pub fn parse_probe(desired: &HostDesired, stdout: &str) -> Result<ActualState, String> {
    let lines: Vec<&str> = stdout.lines().collect();
    let paths: Vec<&str> = desired.probed_paths().collect();
    let units: Vec<&str> = desired.probed_units().collect();
    let (nf, nu) = (paths.len(), units.len());
    if lines.len() != nf + nu {
        return Err(format!("state probe printed {} lines, expected {}", lines.len(), nf + nu));
    }
    let mut st = ActualState::default();
    let modes: BTreeMap<&str, u32> =
        desired.files.iter().map(|f| (f.upload.dest.as_str(), f.upload.mode)).collect();
    for (path, l) in paths.iter().zip(&lines[..nf]) {
        let mut words = l.split_whitespace();
        let d = match words.next().unwrap_or("-") {
            "-" => None,
            // An unreadable file counts as different: it will be rewritten.
            "?" => Some(String::new()),
            h => {
                // A file with the right content but other permissions (a key made world-readable) differs
                // too: the upload only sets its mode again.
                let mode = words.next().and_then(|m| u32::from_str_radix(m, 8).ok());
                match (mode, modes.get(path)) {
                    (Some(m), Some(want)) if m != *want => Some(format!("{h} (mode {m:o}, not {want:o})")),
                    _ => Some(h.to_owned()),
                }
            }
        };
        st.digests.insert((*path).to_owned(), d);
    }
    for (u, l) in units.iter().zip(&lines[nf..]) {
        let mut it = l.split_whitespace();
        st.units.insert(
            (*u).to_owned(),
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
    if desired.probed_paths().next().is_none()
        && desired.probed_units().next().is_none()
        && desired.require.is_empty()
    {
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

impl UnitState {
    /// Whether the unit exists on the host at all (enabled, or running, or failed).
    fn present(&self) -> bool {
        !matches!(self.enabled.as_str(), "missing" | "not-found" | "")
            || !matches!(self.active.as_str(), "inactive" | "missing" | "unknown" | "")
    }
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
    ch.disrupts = ch.restart.iter().any(|u| actual.units.get(u).is_some_and(|s| s.active == "active"));
    ch.remove_units = desired
        .absent_units
        .iter()
        .filter(|u| actual.units.get(*u).is_some_and(|s| s.present()))
        .cloned()
        .collect();
    ch.remove_files = desired
        .absent_files
        .iter()
        .filter(|p| actual.digests.get(*p).is_some_and(|d| d.is_some()))
        .cloned()
        .collect();
    if ch.remove_files.iter().any(|p| p.starts_with("/etc/systemd/system/")) {
        ch.daemon_reload = true;
    }
    if !ch.is_empty() {
        ch.after_change = desired.after_change.clone();
        ch.before_start = desired.before_start.clone();
        ch.disrupts |= desired.serial;
    }
    ch
}

/// Applies `changes` to a host: stops and removes what must be absent, writes files (the probe has just read
/// their digests, so each is sent without a second check), reloads systemd, enables and (re)starts units,
/// runs the follow-up commands, and writes the phase's completion marker last. Returns whether anything
/// changed.
///
/// Round trips: every file, binaries included, in **one** batch (streamed: see
/// [`crate::transport::upload_all`]), which also reloads, enables and restarts the units once every file
/// is in place (unless commands must run in between: then the start is its own round trip after them);
/// one per follow-up command; one for the marker. The order (files, commands before the start, start, health waits, marker)
/// is the same as one command per step.
pub async fn apply_changes(t: &dyn Transport, changes: &HostChanges) -> Result<bool, StepError> {
    apply_changes_marking(t, changes, &mut false).await
}

/// [`apply_changes`], setting `placed` once the new files are in place (a failure after that leaves the
/// host with the new files and the `.kubeforge-prev` copies of the ones they replaced).
async fn apply_changes_marking(
    t: &dyn Transport,
    changes: &HostChanges,
    placed: &mut bool,
) -> Result<bool, StepError> {
    if !changes.remove_units.is_empty() || !changes.remove_files.is_empty() {
        // Arguments: units, `--`, files. Units stop before the files they use go.
        let script = "while [ \"$1\" != \"--\" ]; do systemctl disable --now --quiet \"$1\" 2>/dev/null || systemctl stop \"$1\" 2>/dev/null || true; systemctl reset-failed \"$1\" 2>/dev/null || true; shift; done\nshift\nrm -f -- \"$@\"\n";
        let cmd = Command::shell(script)
            .args(changes.remove_units.iter().cloned())
            .arg("--")
            .args(changes.remove_files.iter().cloned())
            .sudo();
        run_checked(t, "remove", &cmd).await?;
    }
    // The probe has just read every digest: no second check before sending (the host scripts still skip
    // a file that already matches).
    let files: Vec<crate::transport::Upload> = changes
        .files
        .iter()
        .filter(|c| !is_marker(&c.file))
        .map(|c| crate::transport::Upload { precheck: false, ..c.file.upload.clone() })
        .collect();
    let start =
        (changes.daemon_reload || !changes.enable.is_empty() || !changes.restart.is_empty()).then(|| {
            // Arguments: units to enable, `--`, units to restart (in start order).
            let mut script = String::from("set -e\n");
            if changes.daemon_reload {
                script.push_str("systemctl daemon-reload\n");
            }
            script.push_str(
                "while [ \"$1\" != \"--\" ]; do systemctl enable --quiet \"$1\"; shift; done\nshift\n",
            );
            // --no-block: a notify-type etcd member only reports ready once a quorum runs, so a blocking restart
            // could wait on hosts not yet started; every phase proves readiness with its own health waits.
            script.push_str("for u in \"$@\"; do systemctl restart --no-block \"$u\"; done\n");
            Command::shell(script)
                .args(changes.enable.iter().cloned())
                .arg("--")
                .args(changes.restart.iter().cloned())
                .sudo()
        });
    if changes.before_start.is_empty() {
        // Every file in one round trip, and the units start in that same round trip once every file is
        // in place.
        let done = crate::transport::upload_all(t, &files, start.as_ref()).await?;
        *placed = true;
        if let (Some(out), Some(cmd)) = (done.then, &start) {
            if !out.success() {
                let command = format!("start services: {cmd}");
                return Err(StepError::Command { command, status: out.status, output: out });
            }
        }
    } else {
        crate::transport::upload_all(t, &files, None).await?;
        *placed = true;
        for (name, cmd) in &changes.before_start {
            run_checked(t, name, cmd).await?;
        }
        if let Some(cmd) = &start {
            run_checked(t, "start services", cmd).await?;
        }
    }
    for (name, cmd) in &changes.after_change {
        run_checked(t, name, cmd).await?;
    }
    for c in changes.files.iter().filter(|c| is_marker(&c.file)) {
        let mut up = c.file.upload.clone();
        up.precheck = false;
        t.upload(&up).await?;
    }
    Ok(!changes.is_empty())
}

/// Puts back the files given (`$@`) from their `.kubeforge-prev` copies, each renamed over the file (one
/// atomic step per file); prints `restored FILE` or `no-copy FILE` (a secret keeps no copy, a file was
/// new). Then `systemctl daemon-reload` when a unit file was restored.
const REVERT: &str = r#"# kubeforge-revert
reload=
for d in "$@"; do
  if [ -f "$d.kubeforge-prev" ]; then
    mv -f -- "$d.kubeforge-prev" "$d" && echo "restored $d" || exit 1
    case $d in /etc/systemd/*) reload=1 ;; esac
  else
    echo "no-copy $d"
  fi
done
[ -z "$reload" ] || systemctl daemon-reload"#;

/// [`apply_changes`] on a host that serves while it changes (a running control plane or etcd member
/// restarting in a rolling group): when the change fails after its files are in place (a service refuses
/// its new configuration, a health wait fails), the files it replaced are **put back** from their
/// `.kubeforge-prev` copies, the units restarted again and the health waits run again, and the step fails
/// saying whether the host is healthy on its previous configuration. The rolling group stops there: the
/// hosts after it are never changed (issue #32).
pub async fn apply_changes_reverting(t: &dyn Transport, changes: &HostChanges) -> Result<bool, StepError> {
    let mut placed = false;
    let err = match apply_changes_marking(t, changes, &mut placed).await {
        Ok(changed) => return Ok(changed),
        Err(e) => e,
    };
    let replaced: Vec<String> = changes
        .files
        .iter()
        .filter(|f| f.old.is_some() && !is_marker(&f.file))
        .map(|f| f.file.upload.dest.clone())
        .collect();
    if !placed || replaced.is_empty() {
        return Err(err);
    }
    let revert = async {
        let out =
            run_checked(t, "put the previous files back", &Command::shell(REVERT).args(replaced).sudo())
                .await?
                .stdout_str();
        let missing: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("no-copy ")).collect();
        if !changes.restart.is_empty() {
            let cmd = Command::shell("for u in \"$@\"; do systemctl restart --no-block \"$u\"; done")
                .args(changes.restart.iter().cloned())
                .sudo();
            run_checked(t, "restart on the previous files", &cmd).await?;
        }
        for (name, cmd) in &changes.after_change {
            run_checked(t, name, cmd).await?;
        }
        Ok::<_, StepError>((out.lines().filter(|l| l.starts_with("restored ")).count(), missing.join(", ")))
    };
    Err(StepError::Other(match revert.await {
        Ok((n, missing)) => format!(
            "{err}\n      REVERTED: {n} file(s) put back from their .kubeforge-prev copies{}, {} restarted: healthy again on the previous configuration",
            if missing.is_empty() { String::new() } else { format!(" ({missing} kept the new content: no previous copy)") },
            if changes.restart.is_empty() { "nothing".to_owned() } else { changes.restart.join(", ") }
        ),
        Err(r) => format!("{err}\n      the revert to the previous files failed too: {r}"),
    }))
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

/// The changes of one phase, per host (hosts without changes are listed too: they took part).
#[derive(Debug, Clone, Default)]
pub struct PhasePlan {
    /// Phase id.
    pub phase: String,
    /// `(host, changes)`, in host order.
    pub hosts: Vec<(String, HostChanges)>,
}

/// What a run will do: the changes of every phase on every host, computed before anything is written.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Converge phases, in workflow order.
    pub phases: Vec<PhasePlan>,
}

impl Plan {
    /// Total number of changes.
    pub fn total_changes(&self) -> usize {
        self.phases.iter().flat_map(|p| p.hosts.iter()).map(|(_, c)| c.count()).sum()
    }

    /// The changes of `phase`, when it is part of the plan.
    pub fn phase(&self, phase: &str) -> Option<&PhasePlan> {
        self.phases.iter().find(|p| p.phase == phase)
    }

    /// The dry-run text: per phase and host, what would change.
    pub fn text(&self) -> String {
        self.render(false)
    }

    /// The dry-run text with the script behind every command (`apply --dry-run --verbose`, golden plans).
    pub fn text_verbose(&self) -> String {
        self.render(true)
    }

    fn render(&self, verbose: bool) -> String {
        let mut s = String::new();
        let (mut total, mut hosts, mut phases) = (0, std::collections::BTreeSet::new(), 0);
        for p in &self.phases {
            let mut any = false;
            for (host, ch) in &p.hosts {
                if ch.is_empty() {
                    continue;
                }
                any = true;
                total += ch.count();
                hosts.insert(host.as_str());
                let body = if verbose { format!("{ch:#}") } else { format!("{ch}") };
                s.push_str(&format!("[{}] {host}: {} change(s)\n{body}", p.phase, ch.count()));
            }
            phases += usize::from(any);
        }
        if s.is_empty() {
            s.push_str("no changes: the cluster matches the inventory\n");
        } else {
            s.push_str(&format!(
                "plan: {total} change(s) on {} host(s) in {phases} phase(s){}\n",
                hosts.len(),
                if verbose { "" } else { " (--verbose shows the script behind each `run:`)" }
            ));
        }
        s
    }

    /// The plan as a record that can be saved and compared (`apply --dry-run --out`, `apply --plan`).
    /// Digests of secret files are salted with `salt`, so the record reveals nothing about a key.
    pub fn record(&self, cluster: &str, salt: &str) -> PlanRecord {
        let hide = |d: &str| {
            use sha2::Digest;
            format!("salted:{}", hex::encode(sha2::Sha256::digest(format!("{salt}:{d}").as_bytes())))
        };
        let phases = self
            .phases
            .iter()
            .map(|p| PhaseRecord {
                phase: p.phase.clone(),
                hosts: p
                    .hosts
                    .iter()
                    .filter(|(_, c)| !c.is_empty())
                    .map(|(h, c)| HostRecord {
                        host: h.clone(),
                        files: c
                            .files
                            .iter()
                            .map(|f| {
                                let u = &f.file.upload;
                                let (old, new) = if u.secret {
                                    (f.old.as_deref().map(hide), hide(&u.sha256))
                                } else {
                                    (f.old.clone(), u.sha256.clone())
                                };
                                FileRecord { path: u.dest.clone(), mode: u.mode, old, new }
                            })
                            .collect(),
                        daemon_reload: c.daemon_reload,
                        enable: c.enable.clone(),
                        restart: c.restart.clone(),
                        remove_units: c.remove_units.clone(),
                        remove_files: c.remove_files.clone(),
                        run: c
                            .before_start
                            .iter()
                            .chain(&c.after_change)
                            .map(|(n, cmd)| format!("{n}: {cmd}"))
                            .collect(),
                    })
                    .collect(),
            })
            .collect();
        PlanRecord {
            format: PlanRecord::FORMAT,
            kubeforge: env!("CARGO_PKG_VERSION").to_owned(),
            cluster: cluster.to_owned(),
            salt: salt.to_owned(),
            phases,
        }
    }
}

/// A saved plan: what every host will receive, with the digest each file has now and will have.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PlanRecord {
    /// Format version of this record.
    pub format: u32,
    /// The kubeforge version that made it.
    pub kubeforge: String,
    /// Cluster name.
    pub cluster: String,
    /// Salt for the digests of secret files.
    pub salt: String,
    /// Phases with changes.
    pub phases: Vec<PhaseRecord>,
}

/// One phase of a [`PlanRecord`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PhaseRecord {
    /// Phase id.
    pub phase: String,
    /// Hosts with changes.
    pub hosts: Vec<HostRecord>,
}

/// One host's changes in a [`PlanRecord`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HostRecord {
    /// Host name.
    pub host: String,
    /// Files written.
    pub files: Vec<FileRecord>,
    /// `systemctl daemon-reload`.
    pub daemon_reload: bool,
    /// Units enabled.
    pub enable: Vec<String>,
    /// Units (re)started.
    pub restart: Vec<String>,
    /// Units removed.
    pub remove_units: Vec<String>,
    /// Files removed.
    pub remove_files: Vec<String>,
    /// Follow-up commands (redacted).
    pub run: Vec<String>,
}

/// One file of a [`HostRecord`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileRecord {
    /// Destination.
    pub path: String,
    /// Mode.
    pub mode: u32,
    /// Digest on the host when the plan was made (`None`: absent).
    pub old: Option<String>,
    /// Digest it will have.
    pub new: String,
}

impl PlanRecord {
    /// The current format.
    pub const FORMAT: u32 = 1;

    /// Where `fresh` (the plan made now) differs from this saved plan, one line per difference; empty when
    /// the plan can be carried out exactly as reviewed.
    pub fn differences(&self, fresh: &PlanRecord) -> Vec<String> {
        let mut out = Vec::new();
        if self.cluster != fresh.cluster {
            out.push(format!(
                "the plan is for cluster `{}`, the inventory names `{}`",
                self.cluster, fresh.cluster
            ));
        }
        let index = |r: &PlanRecord| -> BTreeMap<(String, String), HostRecord> {
            r.phases
                .iter()
                .flat_map(|p| p.hosts.iter().map(move |h| ((p.phase.clone(), h.host.clone()), h.clone())))
                .collect()
        };
        let (saved, now) = (index(self), index(fresh));
        for (key, h) in &saved {
            match now.get(key) {
                None => out.push(format!(
                    "[{}] {}: nothing to do any more (it changed since the plan)",
                    key.0, key.1
                )),
                Some(n) if n != h => {
                    let saved_files: BTreeMap<&str, &FileRecord> =
                        h.files.iter().map(|f| (f.path.as_str(), f)).collect();
                    let mut said = false;
                    for f in &n.files {
                        match saved_files.get(f.path.as_str()) {
                            Some(s) if *s == f => {}
                            Some(s) if s.old != f.old => {
                                out.push(format!(
                                    "[{}] {}: {} changed on the host since the plan",
                                    key.0, key.1, f.path
                                ));
                                said = true;
                            }
                            Some(_) => {
                                out.push(format!(
                                    "[{}] {}: {} would now get different content",
                                    key.0, key.1, f.path
                                ));
                                said = true;
                            }
                            None => {
                                out.push(format!("[{}] {}: {} is not in the plan", key.0, key.1, f.path));
                                said = true;
                            }
                        }
                    }
                    if !said {
                        out.push(format!("[{}] {}: the changes differ from the plan", key.0, key.1));
                    }
                }
                Some(_) => {}
            }
        }
        for key in now.keys().filter(|k| !saved.contains_key(*k)) {
            out.push(format!("[{}] {}: has changes that are not in the plan", key.0, key.1));
        }
        out
    }
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
            require: vec![],
            ..Default::default()
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
        assert!(text.contains("  run: wait\n"), "commands by name: {text}");
        assert!(format!("{ch:#}").contains("run: wait: true"), "the script behind it with --verbose");
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

    /// Probe, diff and (unless `dry_run`) apply, as a run does for one host and phase.
    async fn converge(
        t: &FakeTransport,
        phase: &str,
        d: HostDesired,
        dry_run: bool,
    ) -> Result<HostChanges, StepError> {
        let d = d.with_marker(phase);
        let actual = probe(t, &d).await?;
        let ch = diff(&d, &actual);
        if !dry_run {
            apply_changes(t, &ch).await?;
        }
        Ok(ch)
    }

    #[tokio::test]
    async fn converge_runs_one_probe_then_writes_and_restarts() {
        let t = FakeTransport::new("h1");
        t.on("sha256sum", Reply::ok("-\n-\n-\n-\nmissing inactive\nmissing inactive\n"));
        t.on("daemon-reload", Reply::ok(""));
        t.on("true", Reply::ok(""));
        let ch = converge(&t, "test", desired(), false).await.unwrap();
        assert!(!ch.disrupts, "nothing was running");
        assert_eq!(t.file("/etc/a.conf").as_deref(), Some(&b"a=1\n"[..]));
        let cmds = t.commands();
        assert!(cmds[0].contains("sha256sum"), "{cmds:?}");
        assert!(cmds.iter().any(|c| c.contains("daemon-reload") && c.contains("svc-b")), "{cmds:?}");
        assert!(t.file(&format!("{MARKER_DIR}/test")).is_some(), "marker written last");
    }

    #[tokio::test]
    async fn dry_run_writes_nothing() {
        let t = FakeTransport::new("h1");
        t.on("sha256sum", Reply::ok("-\n-\n-\n-\nmissing inactive\nmissing inactive\n"));
        let ch = converge(&t, "test", desired(), true).await.unwrap();
        assert_eq!(t.commands().len(), 1, "only the probe ran");
        assert!(t.file("/etc/a.conf").is_none());
        assert_eq!(ch.count(), 8, "3 files + the marker, 2 enables, 2 restarts");
    }

    #[test]
    fn a_restart_of_a_running_service_is_a_disruption() {
        let d = desired();
        let running = format!(
            "{}\n{}\n{}\nenabled active\nenabled active\n",
            sha("a=0\n"),
            sha("[Service]\n"),
            sha("secret")
        );
        assert!(diff(&d, &parse_probe(&d, &running).unwrap()).disrupts);
    }

    #[tokio::test]
    async fn absent_units_and_files_are_removed_only_when_present() {
        let d = HostDesired {
            absent_files: vec!["/etc/systemd/system/old.service".into(), "/etc/gone.conf".into()],
            absent_units: vec!["old".into(), "never".into()],
            ..Default::default()
        };
        let t = FakeTransport::new("h1");
        t.on("sha256sum", Reply::ok("abc\n-\nenabled active\nmissing inactive\n"));
        t.on("disable --now", Reply::ok(""));
        t.on("daemon-reload", Reply::ok(""));
        let actual = probe(&t, &d).await.unwrap();
        let ch = diff(&d, &actual);
        assert_eq!(ch.remove_units, vec!["old"]);
        assert_eq!(ch.remove_files, vec!["/etc/systemd/system/old.service"]);
        assert!(ch.daemon_reload);
        assert!(ch.to_string().contains("- unit old (stop, disable, delete)"), "{ch}");
        apply_changes(&t, &ch).await.unwrap();
        let cmds = t.commands();
        assert!(
            cmds.iter().any(|c| c.contains("disable --now") && c.contains("old") && !c.contains("never")),
            "{cmds:?}"
        );
        // Converged: nothing left to remove.
        let gone = parse_probe(&d, "-\n-\nmissing inactive\nmissing inactive\n").unwrap();
        assert!(diff(&d, &gone).is_empty());
    }

    #[test]
    fn a_saved_plan_matches_itself_and_names_what_moved() {
        let d = desired().with_marker("p");
        let fresh = diff(&d, &parse_probe(&d, "-\n-\n-\n-\nmissing inactive\nmissing inactive\n").unwrap());
        let plan = Plan { phases: vec![PhasePlan { phase: "p".into(), hosts: vec![("h1".into(), fresh)] }] };
        let saved = plan.record("c", "salt1");
        let json = serde_json::to_string(&saved).unwrap();
        assert!(!json.contains(&sha("secret")), "secret digests are salted: {json}");
        let back: PlanRecord = serde_json::from_str(&json).unwrap();
        assert!(back.differences(&plan.record("c", "salt1")).is_empty());

        // The host changed since: /etc/a.conf now exists with other content.
        let moved = diff(
            &d,
            &parse_probe(&d, &format!("{}\n-\n-\n-\nmissing inactive\nmissing inactive\n", sha("x")))
                .unwrap(),
        );
        let now = Plan { phases: vec![PhasePlan { phase: "p".into(), hosts: vec![("h1".into(), moved)] }] };
        let diffs = back.differences(&now.record("c", "salt1"));
        assert_eq!(diffs, vec!["[p] h1: /etc/a.conf changed on the host since the plan"]);
        assert!(!back.differences(&plan.record("other", "salt1")).is_empty());
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
        t.on("daemon-reload", Reply::ok(""));
        t.on("true", Reply::fail(1, "not ready"));
        assert!(converge(&t, "p", desired(), false).await.is_err());
        assert!(t.file("/etc/a.conf").is_some(), "files were written");
        assert!(t.file(&format!("{MARKER_DIR}/p")).is_none(), "but the phase is not marked converged");
    }

    #[tokio::test]
    async fn files_and_the_start_share_one_round_trip_and_a_failed_start_still_fails_the_step() {
        let t = FakeTransport::new("h1");
        t.on("sha256sum", Reply::ok("-\n-\n-\n-\nmissing inactive\nmissing inactive\n"));
        t.on("daemon-reload", Reply::ok(""));
        t.on("true", Reply::ok(""));
        converge(&t, "p", desired(), false).await.unwrap();
        // probe, three files and the start together, the follow-up, the marker.
        assert_eq!(t.stats().round_trips, 4, "{:?}", t.calls());

        let t = FakeTransport::new("h2");
        t.on("sha256sum", Reply::ok("-\n-\n-\n-\nmissing inactive\nmissing inactive\n"));
        t.on(
            "daemon-reload",
            Reply::fail(1, "Failed to enable unit: Unit file svc-b.service does not exist"),
        );
        let err = converge(&t, "p", desired(), false).await.unwrap_err();
        let StepError::Command { command, output, .. } = &err else { panic!("{err}") };
        assert!(command.starts_with("start services: "), "{command}");
        assert!(output.stderr_str().contains("svc-b.service does not exist"));
        assert!(t.file("/etc/a.conf").is_some(), "the files were placed before the start");
        assert!(t.file(&format!("{MARKER_DIR}/p")).is_none(), "no marker after a failed start");
        assert!(!t.commands().iter().any(|c| c.contains("true")), "no follow-up after a failed start");
    }

    /// A command that must run between the files and the start (an etcd learner is added before its
    /// member starts) keeps its place: files, the command, then the start.
    #[tokio::test]
    async fn commands_before_the_start_keep_it_out_of_the_batch() {
        let t = FakeTransport::new("h1");
        t.on("sha256sum", Reply::ok("-\n-\n-\n-\nmissing inactive\nmissing inactive\n"));
        t.permissive();
        let mut d = desired();
        d.before_start.push(("add member".into(), Command::new("member-add")));
        converge(&t, "p", d, false).await.unwrap();
        let calls = t.calls();
        let pos = |needle: &str| {
            calls
                .iter()
                .position(|c| match c {
                    crate::transport::fake::Call::Exec(s) => s.contains(needle),
                    crate::transport::fake::Call::Upload { dest, .. } => dest == needle,
                })
                .unwrap_or_else(|| panic!("{needle} not in {calls:?}"))
        };
        assert!(
            pos("/etc/k.key") < pos("member-add") && pos("member-add") < pos("daemon-reload"),
            "{calls:?}"
        );
        assert_eq!(t.stats().round_trips, 6, "probe, files, member add, start, follow-up, marker");
    }

    /// The probe script in a real shell: digests and unit states in argument order; a second probe answers
    /// from the digest cache; a file rewritten with its size and modification time preserved is hashed
    /// again (its change time moved); `systemctl show`'s blocks become `enabled active` lines, a unit file
    /// that does not exist `missing inactive`.
    #[test]
    fn the_probe_script_caches_digests_by_file_identity_and_reads_units_in_one_call() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (a, b) = (d.join("etc/a.conf"), d.join("etc/b.conf"));
        std::fs::create_dir_all(d.join("etc")).unwrap();
        std::fs::write(&a, "a=1\n").unwrap();
        std::fs::write(
            d.join("systemctl"),
            "#!/bin/sh\necho \"$*\" >> \"$D/calls\"\n[ \"$1\" = show ] || exit 1\n\
            printf 'ActiveState=active\\nUnitFileState=enabled\\n\\nActiveState=inactive\\n'\n",
        )
        .unwrap();
        std::fs::set_permissions(d.join("systemctl"), std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let desired = HostDesired {
            files: vec![
                DesiredFile::bytes(a.to_str().unwrap(), 0o644, "x", "a"),
                DesiredFile::bytes(b.to_str().unwrap(), 0o644, "x", "b"),
            ],
            units: vec!["svc-a".into(), "svc-b".into()],
            ..Default::default()
        };
        let cache = d.join("cache");
        let argv = probe_command_with_cache(&desired, cache.to_str().unwrap()).argv();
        let run = || {
            let o = crate::test_support::run_with_fakes(&argv, d);
            assert!(o.status.success(), "{o:?}");
            parse_probe(&desired, &String::from_utf8_lossy(&o.stdout)).unwrap()
        };
        let first = run();
        assert_eq!(first.digests[a.to_str().unwrap()], Some(sha("a=1\n")));
        assert_eq!(first.digests[b.to_str().unwrap()], None);
        assert_eq!(first.units["svc-a"], UnitState { enabled: "enabled".into(), active: "active".into() });
        assert_eq!(first.units["svc-b"], UnitState { enabled: "missing".into(), active: "inactive".into() });
        let calls = std::fs::read_to_string(d.join("calls")).unwrap();
        assert_eq!(calls, "show -p UnitFileState -p ActiveState -- svc-a svc-b\n", "one systemctl call");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777,
            0o700,
            "the cache is root's"
        );
        let cached = cache.join(a.strip_prefix("/").unwrap());
        assert!(std::fs::read_to_string(&cached).unwrap().ends_with(&format!("{}\n", sha("a=1\n"))));
        // A cache entry for these very file identities is believed...
        let key = std::fs::read_to_string(&cached).unwrap().lines().next().unwrap().to_string();
        std::fs::write(&cached, format!("{key}\n{}\n", "f".repeat(64))).unwrap();
        assert_eq!(run().digests[a.to_str().unwrap()], Some("f".repeat(64)));
        // ...but a rewrite that keeps size and modification time moves the change time: hashed again.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mtime = std::fs::metadata(&a).unwrap().modified().unwrap();
        std::fs::write(&a, "a=2\n").unwrap();
        std::fs::File::options().write(true).open(&a).unwrap().set_modified(mtime).unwrap();
        assert_eq!(run().digests[a.to_str().unwrap()], Some(sha("a=2\n")));
        // The right content with other permissions differs too: the upload sets the mode again.
        std::fs::write(&a, "x").unwrap();
        std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(run().digests[a.to_str().unwrap()], Some(sha("x")), "same content and mode: the same");
        std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o666)).unwrap();
        let got = run().digests[a.to_str().unwrap()].clone().unwrap();
        assert_eq!(got, format!("{} (mode 666, not 644)", sha("x")));
        let change = HostChanges {
            files: vec![FileChange { file: desired.files[0].clone(), old: Some(got) }],
            ..Default::default()
        };
        assert!(change.to_string().contains("(a; mode 666 -> 0644)"), "{change}");
    }
}
