//! Everything that talks to a machine: the [`Transport`] trait, the [`Command`] builder (argument by
//! argument, shell-escaped, with secret redaction), and the implementations: [`ssh`] (russh, the real
//! one), [`local`] (this machine, through `sh`), [`fake`] (scripted, records calls, for unit tests of plans).
//!
//! Uploads are implemented once here on top of [`Transport::exec_io`] so every transport gets the same
//! guarantees: skip when the remote sha256 matches, stream with constant memory to a temporary file,
//! refuse to rename a short file into place, then set mode/owner and rename atomically.

pub mod fake;
pub mod known_hosts;
pub mod local;
pub mod settings;
pub mod ssh;

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Default cap on how much of each output stream a command keeps in memory (the tail is kept).
pub const DEFAULT_OUTPUT_CAP: usize = 4 * 1024 * 1024;

/// One argument of a [`Command`]: its value and whether it is a secret.
#[derive(Clone, PartialEq, Eq)]
struct Arg {
    value: String,
    secret: bool,
}

/// A remote command built argument by argument. Every argument is shell-escaped when the command line is
/// rendered, so inventory values are never interpreted by the remote shell. Arguments and environment
/// values marked secret render as `<redacted>` in [`fmt::Display`] (plans, logs, errors).
#[derive(Clone, PartialEq, Eq)]
pub struct Command {
    args: Vec<Arg>,
    env: Vec<(String, Arg)>,
    sudo: bool,
    timeout: Option<Duration>,
    output_cap: usize,
}

impl Command {
    /// A command running `program` (not through a shell).
    pub fn new(program: impl Into<String>) -> Self {
        Command {
            args: vec![Arg { value: program.into(), secret: false }],
            env: Vec::new(),
            sudo: false,
            timeout: None,
            output_cap: DEFAULT_OUTPUT_CAP,
        }
    }

    /// A shell script run by `sh -c`. The script itself is passed as one escaped argument; use it only
    /// for fixed text written in this code base, never for inventory values (pass those as arguments:
    /// `Command::shell("... \"$1\" ...").arg(value)` sees them as `$1`, `$2`, ...).
    pub fn shell(script: impl Into<String>) -> Self {
        Command::new("sh").arg("-c").arg(script).arg("sh")
    }

    /// Appends one argument.
    pub fn arg(mut self, value: impl Into<String>) -> Self {
        self.args.push(Arg { value: value.into(), secret: false });
        self
    }

    /// Appends several arguments.
    pub fn args<I, S>(mut self, values: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        for v in values {
            self = self.arg(v);
        }
        self
    }

    /// Appends an argument that is a secret: it is sent to the host but shown as `<redacted>`.
    pub fn secret_arg(mut self, value: impl Into<String>) -> Self {
        self.args.push(Arg { value: value.into(), secret: true });
        self
    }

    /// Sets an environment variable for the command (through `env`, so it works without `AcceptEnv`).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), Arg { value: value.into(), secret: false }));
        self
    }

    /// Sets a secret environment variable (shown as `KEY=<redacted>`).
    pub fn secret_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), Arg { value: value.into(), secret: true }));
        self
    }

    /// Runs the command with root privileges (through `sudo` when the login user is not root).
    pub fn sudo(mut self) -> Self {
        self.sudo = true;
        self
    }

    /// Sets or clears the privilege flag.
    pub fn with_sudo(mut self, sudo: bool) -> Self {
        self.sudo = sudo;
        self
    }

    /// Fails the command with [`TransportError::Timeout`] when it runs longer than `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Keeps at most `bytes` of each output stream in memory (the tail).
    pub fn output_cap(mut self, bytes: usize) -> Self {
        self.output_cap = bytes.max(1);
        self
    }

    /// Whether the command asks for root privileges.
    pub fn needs_sudo(&self) -> bool {
        self.sudo
    }

    /// The per-command timeout, if any.
    pub fn get_timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The in-memory cap per output stream.
    pub fn get_output_cap(&self) -> usize {
        self.output_cap
    }

    /// The program and its arguments, unescaped (secrets included: for local execution only).
    pub fn argv(&self) -> Vec<String> {
        self.args.iter().map(|a| a.value.clone()).collect()
    }

    /// The environment, unescaped (secrets included: for local execution only).
    pub fn env_vars(&self) -> Vec<(String, String)> {
        self.env.iter().map(|(k, v)| (k.clone(), v.value.clone())).collect()
    }

    /// The escaped command line the remote shell runs, secrets included. Never log this; log
    /// the [`fmt::Display`] form instead. The sudo prefix is added by the transport.
    pub fn to_shell(&self) -> String {
        self.render(false)
    }

    fn render(&self, redact: bool) -> String {
        let mut parts = Vec::new();
        if !self.env.is_empty() {
            parts.push("env".to_string());
            for (k, v) in &self.env {
                if redact && v.secret {
                    parts.push(format!("{}=<redacted>", shell_escape(k)));
                } else {
                    parts.push(shell_escape(&format!("{k}={}", v.value)));
                }
            }
        }
        for a in &self.args {
            if redact && a.secret {
                parts.push("<redacted>".into());
            } else {
                parts.push(shell_escape(&a.value));
            }
        }
        parts.join(" ")
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.sudo {
            f.write_str("sudo ")?;
        }
        f.write_str(&self.render(true))
    }
}

impl fmt::Debug for Command {
    // Debug must not leak secrets either: `{:?}` ends up in logs and panics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Command({self})")
    }
}

/// Quotes `s` for a POSIX shell: unchanged when it only has safe characters, otherwise single-quoted.
pub fn shell_escape(s: &str) -> String {
    let safe = !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-./=:,+@%^".contains(&b));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Receives output as it arrives (complete lines), e.g. to forward it to the reporter.
pub type OutputSink = Arc<dyn Fn(Stream, &str) + Send + Sync>;

/// What a finished command produced. A non-zero exit status is data, not an error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit status; `None` when the command was killed by a signal.
    pub status: Option<u32>,
    /// Signal name, when killed by one.
    pub signal: Option<String>,
    /// Standard output (the last `output_cap` bytes).
    pub stdout: Vec<u8>,
    /// Standard error (the last `output_cap` bytes).
    pub stderr: Vec<u8>,
    /// Whether stdout or stderr was longer than the cap and lost its beginning.
    pub truncated: bool,
    /// Total bytes of stdout received (even beyond the cap).
    pub stdout_len: u64,
}

impl ExecOutput {
    /// Exit status 0.
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// Stdout as text (lossy).
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Stderr as text (lossy).
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// The last `n` lines of stderr, for error messages.
    pub fn last_stderr_lines(&self, n: usize) -> Vec<String> {
        let s = self.stderr_str();
        let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
        lines[lines.len().saturating_sub(n)..].iter().map(|l| l.to_string()).collect()
    }
}

/// Collects one output stream, keeping only the last `cap` bytes and forwarding complete lines.
pub(crate) struct OutputCollector {
    buf: Vec<u8>,
    cap: usize,
    total: u64,
    line: Vec<u8>,
    stream: Stream,
}

impl OutputCollector {
    pub(crate) fn new(stream: Stream, cap: usize) -> Self {
        OutputCollector { buf: Vec::new(), cap, total: 0, line: Vec::new(), stream }
    }

    pub(crate) fn push(&mut self, data: &[u8], sink: Option<&OutputSink>) {
        self.total += data.len() as u64;
        self.buf.extend_from_slice(data);
        // Drain in big steps so memory stays under 2x the cap without quadratic copying.
        if self.buf.len() > 2 * self.cap {
            let cut = self.buf.len() - self.cap;
            self.buf.drain(..cut);
        }
        if let Some(sink) = sink {
            for &b in data {
                if b == b'\n' {
                    sink(self.stream, &String::from_utf8_lossy(&self.line));
                    self.line.clear();
                } else if self.line.len() < 4096 {
                    self.line.push(b);
                }
            }
        }
    }

    pub(crate) fn finish(mut self, sink: Option<&OutputSink>) -> (Vec<u8>, bool, u64) {
        if let (Some(sink), false) = (sink, self.line.is_empty()) {
            sink(self.stream, &String::from_utf8_lossy(&self.line));
        }
        let truncated = self.buf.len() > self.cap;
        if truncated {
            let cut = self.buf.len() - self.cap;
            self.buf.drain(..cut);
        }
        let truncated = truncated || self.total > self.buf.len() as u64;
        (self.buf, truncated, self.total)
    }
}

/// Where an upload's bytes come from.
#[derive(Debug, Clone)]
pub enum UploadSource {
    /// A local file, streamed.
    File(PathBuf),
    /// Bytes in memory (rendered configs, certificates).
    Bytes(Arc<Vec<u8>>),
}

/// A file to place on a host.
#[derive(Debug, Clone)]
pub struct Upload {
    /// The content.
    pub source: UploadSource,
    /// Absolute destination path on the host.
    pub dest: String,
    /// File mode, e.g. `0o644`.
    pub mode: u32,
    /// `user[:group]` to chown to, when set.
    pub owner: Option<String>,
    /// Write as root (through sudo for a non-root login).
    pub sudo: bool,
    /// Length in bytes.
    pub size: u64,
    /// Hex sha256 of the content, computed once locally.
    pub sha256: String,
    /// Content is secret (keys): never shown, only the path is.
    pub secret: bool,
    /// Read the remote digest first and send nothing when it matches (one round trip). Plans turn it off:
    /// their probe has just read every digest.
    pub precheck: bool,
}

impl Upload {
    /// An upload of in-memory bytes.
    pub fn bytes(data: impl Into<Vec<u8>>, dest: impl Into<String>, mode: u32) -> Self {
        let data = data.into();
        let sha256 = hex::encode(Sha256::digest(&data));
        Upload {
            size: data.len() as u64,
            source: UploadSource::Bytes(Arc::new(data)),
            dest: dest.into(),
            mode,
            owner: None,
            sudo: true,
            sha256,
            secret: false,
            precheck: true,
        }
    }

    /// An upload of a local file; its sha256 is computed here (streaming) once, so the same `Upload`
    /// can be cloned for many hosts.
    pub fn file(path: &Path, dest: impl Into<String>, mode: u32) -> std::io::Result<Self> {
        use std::io::Read;
        let mut f = std::fs::File::open(path)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            size += n as u64;
            hasher.update(&buf[..n]);
        }
        Ok(Upload {
            source: UploadSource::File(path.to_path_buf()),
            dest: dest.into(),
            mode,
            owner: None,
            sudo: true,
            size,
            sha256: hex::encode(hasher.finalize()),
            secret: false,
            precheck: true,
        })
    }

    /// Sets the owner (`user[:group]`).
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// Sets whether the file is written as root.
    pub fn with_sudo(mut self, sudo: bool) -> Self {
        self.sudo = sudo;
        self
    }

    /// Marks the content as secret.
    pub fn secret(mut self) -> Self {
        self.secret = true;
        self
    }

    async fn open(&self) -> std::io::Result<Box<dyn AsyncRead + Send + Unpin>> {
        Ok(match &self.source {
            UploadSource::File(p) => Box::new(tokio::fs::File::open(p).await?),
            UploadSource::Bytes(b) => Box::new(std::io::Cursor::new(SharedBytes(b.clone()))),
        })
    }
}

impl fmt::Display for Upload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "upload {} ({} bytes, mode {:04o}", self.dest, self.size, self.mode)?;
        if let Some(o) = &self.owner {
            write!(f, ", owner {o}")?;
        }
        f.write_str(")")
    }
}

struct SharedBytes(Arc<Vec<u8>>);
impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Whether an upload wrote anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadOutcome {
    /// The remote file already had the same sha256; nothing was sent.
    Unchanged,
    /// The file was written.
    Written,
}

/// Counters per host, for benchmarks and the run summary.
#[derive(Debug, Default)]
pub struct Stats {
    /// Commands started (each is one channel and at least one round trip).
    pub round_trips: AtomicU64,
    /// Payload bytes sent (stdin of commands, uploads).
    pub bytes_sent: AtomicU64,
    /// Connections opened (1 for a healthy run).
    pub connects: AtomicU64,
}

/// A snapshot of [`Stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    /// Commands started.
    pub round_trips: u64,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// Connections opened.
    pub connects: u64,
}

impl Stats {
    /// Reads the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            round_trips: self.round_trips.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            connects: self.connects.load(Ordering::Relaxed),
        }
    }
}

/// Errors of the transport layer. A command that ran and exited non-zero is *not* an error.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// TCP connect or SSH handshake failed or took too long.
    #[error("{host}: cannot connect to {addr}: {message}")]
    Connect {
        /// Host name.
        host: String,
        /// Address tried.
        addr: String,
        /// What happened.
        message: String,
        /// Underlying error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The host offered a key that known_hosts does not have.
    #[error("{host}: unknown host key {fingerprint} for {addr}")]
    UnknownHostKey {
        /// Host name.
        host: String,
        /// `host` or `[host]:port` as known_hosts writes it.
        addr: String,
        /// `SHA256:...` fingerprint of the offered key.
        fingerprint: String,
    },
    /// The host offered a key that differs from the recorded one.
    #[error(
        "{host}: HOST KEY CHANGED for {addr}: offered {fingerprint}, recorded in {recorded_in}. \
         Someone could be intercepting the connection (or the host was reinstalled)"
    )]
    HostKeyChanged {
        /// Host name.
        host: String,
        /// `host` or `[host]:port`.
        addr: String,
        /// Offered key fingerprint.
        fingerprint: String,
        /// Where the expected key came from (file:line or "the inventory").
        recorded_in: String,
    },
    /// No offered credential was accepted.
    #[error("{host}: authentication as {user} failed ({tried})")]
    Auth {
        /// Host name.
        host: String,
        /// Login user.
        user: String,
        /// Methods tried.
        tried: String,
    },
    /// A key or known_hosts file could not be read.
    #[error("{host}: {message}")]
    Config {
        /// Host name.
        host: String,
        /// What is wrong.
        message: String,
    },
    /// The connection dropped while a command or upload was running.
    #[error("{host}: connection lost while running `{command}`: {message}")]
    Disconnected {
        /// Host name.
        host: String,
        /// The command (redacted) or upload being run.
        command: String,
        /// Details.
        message: String,
    },
    /// A command ran longer than its timeout.
    #[error("{host}: `{command}` timed out after {timeout:?}")]
    Timeout {
        /// Host name.
        host: String,
        /// The command (redacted).
        command: String,
        /// The limit.
        timeout: Duration,
    },
    /// sudo refused (needs a password, wrong password, user not in sudoers).
    #[error("{host}: sudo failed for `{command}`: {message}")]
    Sudo {
        /// Host name.
        host: String,
        /// The command (redacted).
        command: String,
        /// sudo's message.
        message: String,
    },
    /// An upload or read failed on the remote side (exit status non-zero).
    #[error("{host}: {what} failed (exit {status:?}): {stderr}")]
    Remote {
        /// Host name.
        host: String,
        /// What was being done.
        what: String,
        /// Exit status.
        status: Option<u32>,
        /// Last stderr lines.
        stderr: String,
    },
    /// Local I/O (reading a file to upload, spawning a local command).
    #[error("{host}: {context}")]
    Io {
        /// Host name.
        host: String,
        /// What was being done.
        context: String,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl TransportError {
    /// How to fix it, when known.
    pub fn hint(&self) -> Option<String> {
        match self {
            TransportError::UnknownHostKey { .. } => Some(
                "verify the fingerprint out of band, then re-run with --accept-new-host-keys to record it \
                 (or pin it with ssh.hostKey in the inventory)"
                    .into(),
            ),
            TransportError::HostKeyChanged { addr, .. } => Some(format!(
                "if the host was really reinstalled, remove the old entry (ssh-keygen -R '{addr}') and \
                 verify the new key; --accept-new-host-keys never overrides a changed key"
            )),
            TransportError::Auth { .. } => Some(
                "check ssh.user and ssh.identityFile in the inventory, or load the key into ssh-agent".into(),
            ),
            TransportError::Sudo { .. } => Some(
                "allow passwordless sudo for the login user, or set ssh.sudoPasswordEnv to a variable \
                 holding the password"
                    .into(),
            ),
            TransportError::Disconnected { .. } | TransportError::Connect { .. } => {
                Some("check that the host is up and sshd is running; re-running resumes safely".into())
            }
            _ => None,
        }
    }

    /// Whether the connection is gone (the transport reconnects on next use).
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, TransportError::Disconnected { .. } | TransportError::Connect { .. })
    }
}

/// A machine we can run commands on. Implementations: [`ssh::SshTransport`], [`local::LocalTransport`],
/// [`fake::FakeTransport`]. Methods return boxed futures so the trait can be used as `&dyn Transport`.
pub trait Transport: Send + Sync {
    /// The host name (for messages).
    fn host(&self) -> &str;

    /// Runs `cmd`, feeding `stdin` (then EOF) when given, forwarding output lines to `sink`.
    fn exec_io<'a>(
        &'a self,
        cmd: &'a Command,
        stdin: Option<Box<dyn AsyncRead + Send + Unpin + 'a>>,
        sink: Option<&'a OutputSink>,
    ) -> BoxFuture<'a, Result<ExecOutput, TransportError>>;

    /// Round trips and bytes sent so far.
    fn stats(&self) -> StatsSnapshot;

    /// Runs `cmd` and collects its output.
    fn exec<'a>(&'a self, cmd: &'a Command) -> BoxFuture<'a, Result<ExecOutput, TransportError>> {
        self.exec_io(cmd, None, None)
    }

    /// Places a file: skipped when the remote sha256 matches, otherwise streamed to a temporary file
    /// next to the destination, length-checked, given its mode and owner, and renamed into place.
    fn upload<'a>(&'a self, up: &'a Upload) -> BoxFuture<'a, Result<UploadOutcome, TransportError>> {
        Box::pin(upload_via_exec(self, up))
    }

    /// Reads a whole remote file (at most `max` bytes).
    fn read_file<'a>(
        &'a self,
        path: &'a str,
        sudo: bool,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<u8>, TransportError>> {
        Box::pin(async move {
            let cmd = Command::new("cat").arg("--").arg(path).with_sudo(sudo).output_cap(max + 1);
            let out = self.exec(&cmd).await?;
            if !out.success() {
                return Err(remote_err(self.host(), format!("reading {path}"), &out));
            }
            if out.truncated {
                return Err(TransportError::Remote {
                    host: self.host().into(),
                    what: format!("reading {path}"),
                    status: out.status,
                    stderr: format!("file is larger than {max} bytes"),
                });
            }
            Ok(out.stdout)
        })
    }

    /// The hex sha256 of a remote file, `None` when it does not exist.
    fn sha256<'a>(
        &'a self,
        path: &'a str,
        sudo: bool,
    ) -> BoxFuture<'a, Result<Option<String>, TransportError>> {
        Box::pin(async move {
            let cmd = Command::shell(r#"[ -e "$1" ] || exit 3; sha256sum -- "$1""#).arg(path).with_sudo(sudo);
            let out = self.exec(&cmd).await?;
            match out.status {
                Some(0) => Ok(out.stdout_str().split_whitespace().next().map(str::to_owned)),
                Some(3) => Ok(None),
                _ => Err(remote_err(self.host(), format!("sha256 of {path}"), &out)),
            }
        })
    }
}

pub(crate) fn remote_err(host: &str, what: String, out: &ExecOutput) -> TransportError {
    TransportError::Remote {
        host: host.into(),
        what,
        status: out.status,
        stderr: out.last_stderr_lines(5).join(" | "),
    }
}

/// The remote side of an upload. `$1` dest, `$2` expected size, `$3` mode, `$4` owner (may be empty),
/// `$5` expected sha256. A destination that already has that digest is left alone; otherwise the bytes go
/// to a temporary file in the destination directory, whose size **and sha256** are checked on the host
/// before the final `mv` (a same-filesystem rename: atomic). `head -c` plus the checks guarantee that a
/// stream cut short or corrupted never gets renamed into place. The file being replaced is kept as
/// `<dest>.kubeforge-prev` (a hard link: no copy, same mode) so a failed upgrade can be rolled back; every
/// directory kubeforge writes to ignores that suffix (systemd units, sysctl.d, modules-load.d, CNI configs
/// are read by extension). The signal traps matter for a dropped connection: with sshd gone, the error
/// message hits a closed pipe, and a shell killed by SIGPIPE would skip the EXIT trap and leave the
/// temporary file behind.
const UPLOAD_SCRIPT: &str = r#"set -e
d=$1
if [ -n "$5" ] && [ -f "$d" ] && [ "$(sha256sum < "$d" | cut -d' ' -f1)" = "$5" ]; then
  cat > /dev/null; echo kubeforge-unchanged; exit 0
fi
dir=$(dirname -- "$d")
mkdir -p -- "$dir"
t=$(mktemp "$dir/.kubeforge-upload.XXXXXX")
trap 'rm -f -- "$t"' EXIT
trap 'exit 1' HUP INT TERM PIPE
head -c "$2" > "$t"
got=$(stat -c %s -- "$t")
if [ "$got" != "$2" ]; then echo "short upload: got $got of $2 bytes" >&2; exit 4; fi
if [ -n "$5" ]; then
  sum=$(sha256sum < "$t" | cut -d' ' -f1)
  if [ "$sum" != "$5" ]; then echo "checksum mismatch: got sha256 $sum, expected $5" >&2; exit 5; fi
fi
chmod "$3" -- "$t"
if [ -n "$4" ]; then chown -- "$4" "$t"; fi
if [ -f "$d" ]; then ln -f -- "$d" "$d.kubeforge-prev" 2>/dev/null || cp -p -- "$d" "$d.kubeforge-prev"; fi
mv -f -- "$t" "$d"
trap - EXIT
echo kubeforge-written
"#;

async fn upload_via_exec<T: Transport + ?Sized>(t: &T, up: &Upload) -> Result<UploadOutcome, TransportError> {
    // Check first (one round trip) so an unchanged file costs no bandwidth, unless the caller has just read
    // the remote digest itself (a plan's probe). The script checks again, which keeps it correct if the file
    // changed in between.
    if up.precheck && t.sha256(&up.dest, up.sudo).await?.as_deref() == Some(up.sha256.as_str()) {
        return Ok(UploadOutcome::Unchanged);
    }
    let cmd = Command::shell(UPLOAD_SCRIPT)
        .arg(&up.dest)
        .arg(up.size.to_string())
        .arg(format!("{:o}", up.mode))
        .arg(up.owner.clone().unwrap_or_default())
        .arg(&up.sha256)
        .with_sudo(up.sudo);
    let reader = up.open().await.map_err(|e| TransportError::Io {
        host: t.host().into(),
        context: format!("opening upload source for {}", up.dest),
        source: e,
    })?;
    let out = t.exec_io(&cmd, Some(reader), None).await.map_err(|e| match e {
        TransportError::Disconnected { host, message, .. } => {
            TransportError::Disconnected { host, command: up.to_string(), message }
        }
        TransportError::Timeout { host, timeout, .. } => {
            TransportError::Timeout { host, command: up.to_string(), timeout }
        }
        e => e,
    })?;
    if !out.success() {
        return Err(remote_err(t.host(), up.to_string(), &out));
    }
    if out.stdout_str().contains("kubeforge-unchanged") {
        Ok(UploadOutcome::Unchanged)
    } else {
        Ok(UploadOutcome::Written)
    }
}

/// Reads `r` to the end in chunks and hands each chunk to `f`; used by transports to stream stdin.
pub(crate) async fn pump<R, F, Fut>(mut r: R, mut f: F) -> std::io::Result<u64>
where
    R: AsyncRead + Unpin,
    F: FnMut(Vec<u8>) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>>,
{
    let mut total = 0u64;
    loop {
        let mut buf = vec![0u8; 32 * 1024];
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(total);
        }
        buf.truncate(n);
        total += n as u64;
        f(buf).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_values_literal() {
        assert_eq!(shell_escape("abc/def-1.2"), "abc/def-1.2");
        assert_eq!(shell_escape(""), "''");
        assert_eq!(shell_escape("a b"), "'a b'");
        assert_eq!(shell_escape("it's; rm -rf /"), r"'it'\''s; rm -rf /'");
        assert_eq!(shell_escape("$(id)"), "'$(id)'");
    }

    #[test]
    fn secrets_are_redacted_in_display_and_debug() {
        let c = Command::new("etcdctl")
            .arg("--user")
            .secret_arg("root:hunter2")
            .secret_env("TOKEN", "abc")
            .sudo();
        let shown = format!("{c} {c:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("abc"), "{shown}");
        assert_eq!(c.to_string(), "sudo env TOKEN=<redacted> etcdctl --user <redacted>");
        assert_eq!(c.to_shell(), "env TOKEN=abc etcdctl --user root:hunter2");
    }

    #[tokio::test]
    async fn upload_checks_the_digest_on_the_host_and_keeps_the_previous_version() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("etc/app.conf");
        let dest_s = dest.to_str().unwrap().to_owned();
        let t = local::LocalTransport::new("local");
        let mut v1 = Upload::bytes(b"v1\n".to_vec(), &dest_s, 0o640);
        v1.sudo = false;
        assert_eq!(t.upload(&v1).await.unwrap(), UploadOutcome::Written);
        let mut v2 = Upload::bytes(b"v2\n".to_vec(), &dest_s, 0o640);
        v2.sudo = false;
        v2.precheck = false;
        assert_eq!(t.upload(&v2).await.unwrap(), UploadOutcome::Written);
        assert_eq!(std::fs::read(&dest).unwrap(), b"v2\n");
        let prev = dir.path().join("etc/app.conf.kubeforge-prev");
        assert_eq!(std::fs::read(&prev).unwrap(), b"v1\n", "the replaced version is kept for rollback");
        // Without the pre-check the script itself still skips a file that already matches.
        assert_eq!(t.upload(&v2).await.unwrap(), UploadOutcome::Unchanged);

        // Bytes that do not match the announced digest never replace the file.
        let mut bad = Upload::bytes(b"v3\n".to_vec(), &dest_s, 0o640);
        bad.sudo = false;
        bad.sha256 = hex::encode(Sha256::digest(b"something else"));
        let err = t.upload(&bad).await.unwrap_err().to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        assert_eq!(std::fs::read(&dest).unwrap(), b"v2\n");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("etc"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".kubeforge-upload"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }

    #[test]
    fn collector_keeps_tail_and_lines() {
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let l2 = lines.clone();
        let sink: OutputSink = Arc::new(move |_, l| l2.lock().unwrap().push(l.to_string()));
        let mut c = OutputCollector::new(Stream::Stderr, 4);
        c.push(b"abc\nde", Some(&sink));
        c.push(b"f\nghij", Some(&sink));
        let (buf, truncated, total) = c.finish(Some(&sink));
        assert_eq!(buf, b"ghij");
        assert!(truncated);
        assert_eq!(total, 12);
        assert_eq!(*lines.lock().unwrap(), vec!["abc", "def", "ghij"]);
    }
}
