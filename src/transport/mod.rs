//! Everything that talks to a machine: the [`Transport`] trait, the [`Command`] builder (argument by
//! argument, shell-escaped, with secret redaction), and the implementations: [`ssh`] (russh, the real
//! one), [`local`] (this machine, through `sh`), [`fake`] (scripted, records calls, for unit tests of plans).
//!
//! Uploads are implemented once here on top of [`Transport::exec_io`] so every transport gets the same
//! guarantees: skip when the remote sha256 matches, stream with constant memory to a temporary file,
//! refuse to rename a short file into place, then set mode/owner and rename atomically. A batch
//! ([`Transport::upload_batch`], [`upload_all`]) gives many small files the same guarantees in one round trip.

pub mod fake;
pub mod known_hosts;
pub mod local;
pub mod settings;
pub mod ssh;
pub mod target;

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
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
    stdout_progress: Option<ProgressHook>,
    stdout_chunks: Option<ChunkHook>,
}

/// Given each piece of stdout as it arrives, instead of the output being kept (a download to a file).
pub type StdoutChunks = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// A [`StdoutChunks`] carried by a [`Command`]; like [`ProgressHook`] it is not part of what runs.
#[derive(Clone)]
struct ChunkHook(StdoutChunks);

impl PartialEq for ChunkHook {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for ChunkHook {}

/// Told the number of stdout bytes received so far, as they arrive (for a transfer's progress bar).
pub type ByteProgress = Arc<dyn Fn(u64) + Send + Sync>;

/// A [`ByteProgress`] carried by a [`Command`]: it observes the command, it is not part of what runs, so
/// two commands that differ only in it are equal.
#[derive(Clone)]
struct ProgressHook(ByteProgress);

impl PartialEq for ProgressHook {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for ProgressHook {}

impl Command {
    /// A command running `program` (not through a shell).
    pub fn new(program: impl Into<String>) -> Self {
        Command {
            args: vec![Arg { value: program.into(), secret: false }],
            env: Vec::new(),
            sudo: false,
            timeout: None,
            output_cap: DEFAULT_OUTPUT_CAP,
            stdout_progress: None,
            stdout_chunks: None,
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

    /// Calls `progress` with the number of stdout bytes received so far, each time more arrive.
    pub fn on_stdout_bytes(mut self, progress: ByteProgress) -> Self {
        self.stdout_progress = Some(ProgressHook(progress));
        self
    }

    /// Hands every piece of stdout to `chunks` as it arrives and keeps none of it (the output's `stdout` is
    /// empty; `stdout_len` counts it): memory stays flat whatever the size.
    pub fn stdout_to(mut self, chunks: StdoutChunks) -> Self {
        self.stdout_chunks = Some(ChunkHook(chunks));
        self
    }

    /// The stdout chunk hook, if any (transports feed it).
    pub fn stdout_chunks(&self) -> Option<StdoutChunks> {
        self.stdout_chunks.as_ref().map(|h| h.0.clone())
    }

    /// The stdout progress hook, if any (transports feed it).
    pub fn stdout_progress(&self) -> Option<ByteProgress> {
        self.stdout_progress.as_ref().map(|h| h.0.clone())
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
    progress: Option<ByteProgress>,
    chunks: Option<StdoutChunks>,
}

impl OutputCollector {
    pub(crate) fn new(stream: Stream, cap: usize) -> Self {
        OutputCollector {
            buf: Vec::new(),
            cap,
            total: 0,
            line: Vec::new(),
            stream,
            progress: None,
            chunks: None,
        }
    }

    /// Hands the data to `chunks` instead of keeping it.
    pub(crate) fn with_chunks(mut self, chunks: Option<StdoutChunks>) -> Self {
        self.chunks = chunks;
        self
    }

    /// Reports the running byte count to `progress` on every push.
    pub(crate) fn with_progress(mut self, progress: Option<ByteProgress>) -> Self {
        self.progress = progress;
        self
    }

    pub(crate) fn push(&mut self, data: &[u8], sink: Option<&OutputSink>) {
        self.total += data.len() as u64;
        if let Some(p) = &self.progress {
            p(self.total);
        }
        if let Some(c) = &self.chunks {
            c(data);
            return;
        }
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
        let truncated = self.chunks.is_none() && (truncated || self.total > self.buf.len() as u64);
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

    /// Closes the connection, so the next use connects anew (after a reboot: the old connection may not
    /// know yet that its peer is gone). Transports without a connection do nothing.
    fn drop_connection(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    /// Runs `cmd` and collects its output.
    fn exec<'a>(&'a self, cmd: &'a Command) -> BoxFuture<'a, Result<ExecOutput, TransportError>> {
        self.exec_io(cmd, None, None)
    }

    /// Places a file: skipped when the remote sha256 matches, otherwise streamed to a temporary file
    /// next to the destination, length-checked, given its mode and owner, and renamed into place.
    fn upload<'a>(&'a self, up: &'a Upload) -> BoxFuture<'a, Result<UploadOutcome, TransportError>> {
        Box::pin(upload_via_exec(self, up))
    }

    /// Places several files in **one** round trip (see [`upload_batch_via_exec`]): each is staged beside
    /// its destination and checked (size, sha256) before any is renamed into place; `then`, when given,
    /// runs in the same round trip once every file is in place. The content is streamed, one file after
    /// the other (constant memory). Callers keep a batch under [`BATCH_MAX_FILES`] and send in a batch
    /// only files that must be written ([`batchable`]; [`upload_all`] does both): a file already in
    /// place is still read past on the host, so a large one is worth its own digest check first.
    fn upload_batch<'a>(
        &'a self,
        files: &'a [Upload],
        then: Option<&'a Command>,
    ) -> BoxFuture<'a, Result<BatchOutcome, TransportError>> {
        Box::pin(upload_batch_via_exec(self, files, then))
    }

    /// Reads a whole remote file (at most `max` bytes).
    fn read_file<'a>(
        &'a self,
        path: &'a str,
        sudo: bool,
        max: usize,
    ) -> BoxFuture<'a, Result<Vec<u8>, TransportError>> {
        self.read_file_progress(path, sudo, max, None)
    }

    /// [`Transport::read_file`], telling `progress` the bytes received so far as they arrive.
    fn read_file_progress<'a>(
        &'a self,
        path: &'a str,
        sudo: bool,
        max: usize,
        progress: Option<ByteProgress>,
    ) -> BoxFuture<'a, Result<Vec<u8>, TransportError>> {
        Box::pin(async move {
            let mut cmd = Command::new("cat").arg("--").arg(path).with_sudo(sudo).output_cap(max + 1);
            if let Some(p) = progress {
                cmd = cmd.on_stdout_bytes(p);
            }
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

    /// Copies the remote file `path` into the new local file `dest` (0600) as it arrives: memory stays flat
    /// whatever the size. Returns its size and sha256 (hex). `dest` is removed when the copy fails.
    fn download<'a>(
        &'a self,
        path: &'a str,
        sudo: bool,
        dest: &'a Path,
        progress: Option<ByteProgress>,
    ) -> BoxFuture<'a, Result<(u64, String), TransportError>> {
        Box::pin(download_via_exec(self, path, sudo, dest, progress))
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

/// [`Transport::download`] through `cat`, its stdout written to `dest` piece by piece.
async fn download_via_exec<T: Transport + ?Sized>(
    t: &T,
    path: &str,
    sudo: bool,
    dest: &Path,
    progress: Option<ByteProgress>,
) -> Result<(u64, String), TransportError> {
    use sha2::Digest;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let local = |what: &str, e: std::io::Error| TransportError::Remote {
        host: t.host().into(),
        what: format!("{what} {}", dest.display()),
        status: None,
        stderr: e.to_string(),
    };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .map_err(|e| local("creating", e))?;
    type Sink = (std::io::BufWriter<std::fs::File>, sha2::Sha256, Option<std::io::Error>);
    let state: Arc<std::sync::Mutex<Sink>> = Arc::new(std::sync::Mutex::new((
        std::io::BufWriter::with_capacity(1 << 20, file),
        sha2::Sha256::new(),
        None,
    )));
    let chunks: StdoutChunks = {
        let state = state.clone();
        Arc::new(move |data: &[u8]| {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            if s.2.is_none() {
                s.1.update(data);
                if let Err(e) = s.0.write_all(data) {
                    s.2 = Some(e);
                }
            }
        })
    };
    let mut cmd =
        Command::new("cat").arg("--").arg(path).with_sudo(sudo).output_cap(64 * 1024).stdout_to(chunks);
    if let Some(p) = progress {
        cmd = cmd.on_stdout_bytes(p);
    }
    let result = async {
        let out = t.exec(&cmd).await?;
        if !out.success() {
            return Err(remote_err(t.host(), format!("reading {path}"), &out));
        }
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = s.2.take() {
            return Err(local("writing", e));
        }
        s.0.flush().map_err(|e| local("writing", e))?;
        s.0.get_ref().sync_all().map_err(|e| local("writing", e))?;
        let digest = hex::encode(std::mem::take(&mut s.1).finalize());
        Ok((out.stdout_len, digest))
    }
    .await;
    if result.is_err() {
        let _ = std::fs::remove_file(dest);
    }
    result
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
/// `$5` expected sha256, `$6` `secret` or `keep`. A destination that already has that digest is left alone; otherwise the bytes go
/// to a temporary file in the destination directory, whose size **and sha256** are checked on the host
/// before the final `mv` (a same-filesystem rename: atomic). `head -c` plus the checks guarantee that a
/// stream cut short or corrupted never gets renamed into place. The file is fsynced (`sync FILE`) before
/// the rename and its directory after it, so a power loss leaves either the old file or the complete new
/// one, never an empty or partial file under the destination's name. The file being replaced is kept as
/// `<dest>.kubeforge-prev` (a hard link: no copy, same mode) so an admin can see what changed and put it
/// back, and so a control plane that fails its health wait after a change goes back to its previous
/// files ([`crate::plan::apply_changes_reverting`]), except a secret (`$6` = `secret`: keys, kubeconfigs,
/// the encryption config, the cluster state; a unit file is 0600 for the benchmark but no secret): a
/// secret's old version is not left on the host (its previous copy is removed instead; the store keeps the
/// keys, and a rollback converges from the store, not from these copies); every
/// directory kubeforge writes to ignores that suffix (systemd units, sysctl.d, modules-load.d, CNI configs
/// are read by extension). The signal traps matter for a dropped connection: with sshd gone, the error
/// message hits a closed pipe, and a shell killed by SIGPIPE would skip the EXIT trap and leave the
/// temporary file behind.
const UPLOAD_SCRIPT: &str = r#"set -e
d=$1
if [ -n "$5" ] && [ -f "$d" ] && [ "$(sha256sum < "$d" | cut -d' ' -f1)" = "$5" ]; then
  cat > /dev/null; chmod "$3" -- "$d"; if [ -n "$4" ]; then chown -- "$4" "$d"; fi; echo kubeforge-unchanged; exit 0
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
sync -- "$t"
case $6 in
  secret) rm -f -- "$d.kubeforge-prev" ;;
  *) if [ -f "$d" ]; then ln -f -- "$d" "$d.kubeforge-prev" 2>/dev/null || cp -p -- "$d" "$d.kubeforge-prev"; fi ;;
esac
mv -f -- "$t" "$d"
trap - EXIT
sync -- "$dir"
echo kubeforge-written
"#;

/// A dropped connection or a timeout during an upload names the upload (`shown`), not the script that carried
/// it.
fn shown_as(e: TransportError, shown: String) -> TransportError {
    match e {
        TransportError::Disconnected { host, message, .. } => {
            TransportError::Disconnected { host, command: shown, message }
        }
        TransportError::Timeout { host, timeout, .. } => {
            TransportError::Timeout { host, command: shown, timeout }
        }
        e => e,
    }
}

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
        .arg(if up.secret { "secret" } else { "keep" })
        .with_sudo(up.sudo);
    let reader = up.open().await.map_err(|e| TransportError::Io {
        host: t.host().into(),
        context: format!("opening upload source for {}", up.dest),
        source: e,
    })?;
    let out = t.exec_io(&cmd, Some(reader), None).await.map_err(|e| shown_as(e, up.to_string()))?;
    if !out.success() {
        return Err(remote_err(t.host(), up.to_string(), &out));
    }
    if out.stdout_str().contains("kubeforge-unchanged") {
        Ok(UploadOutcome::Unchanged)
    } else {
        Ok(UploadOutcome::Written)
    }
}

/// Files up to this size travel in a batch ([`Transport::upload_batch`]) even when they may already be in
/// place; a larger one (a binary) joins a batch only when the caller knows it differs
/// ([`Upload::precheck`] off: a plan's probe has read its digest), otherwise it goes alone, after one
/// digest check that saves sending it when it matches.
pub const BATCH_MAX_FILE: u64 = 1 << 20;
/// At most this many files per batch: their metadata travels as arguments, which must stay far below the
/// host's argument limit (five short arguments per file).
pub const BATCH_MAX_FILES: usize = 256;

/// What a batch did: per file (in order) whether it was written, and the output of the command that
/// followed the files in the same round trip, when there was one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchOutcome {
    /// One outcome per file, in the order given.
    pub files: Vec<UploadOutcome>,
    /// The follow-up command's output (its exit status is data: the caller judges it).
    pub then: Option<ExecOutput>,
}

/// The remote side of a batch. Arguments: the file count `n`; then per file `dest size mode owner sha256
/// secret|keep` (owner may be empty); then the follow-up command's argv (may be empty). Stdin carries the files'
/// bytes back to back, in that order: `head -c` takes exactly each file's length (GNU head reads no
/// further on a pipe; a `head` that did would shift the next file's bytes, which its sha256 check catches).
///
/// Two passes, so a batch never leaves some files replaced and others not because of bad data: **stage**
/// writes each file to a temporary file beside its destination and checks its size and sha256 (a file
/// that already has that digest is read past and left alone), then checks that the stream ended exactly
/// after the last file; **commit** then keeps each replaced file as `<dest>.kubeforge-prev` (a hard link, as
/// the single upload does, and as it does never for a secret) and renames the staged file into place (same filesystem: atomic). A failure
/// Staged files are fsynced (one `sync` for all) before the first rename, and the directories of the
/// replaced files after the last one (durable, as a single upload). A failure
/// in the first pass names the file and removes every staged file (EXIT trap; the signal traps matter for
/// a dropped connection, as in [`UPLOAD_SCRIPT`]). Each file's outcome is printed as `kubeforge-batch I
/// written|unchanged`, then `kubeforge-batch-done`, and only then the follow-up command replaces the shell.
/// Temporary names are kept in variables `t_1`..`t_n`, the directories written to in `w_1`..`w_n` (`eval`
/// only ever sees those names, never a value).
pub(crate) const BATCH_SCRIPT: &str = r#"set -e
n=$1; shift
cleanup() { j=1; while [ "$j" -le "$n" ]; do eval "f=\${t_$j-}"; [ -z "$f" ] || rm -f -- "$f"; j=$((j+1)); done; }
trap cleanup EXIT
trap 'exit 1' HUP INT TERM PIPE
stage() {
  i=1
  while [ "$i" -le "$n" ]; do
    d=$1
    if [ -n "$5" ] && [ -f "$d" ] && [ "$(sha256sum < "$d" | cut -d' ' -f1)" = "$5" ]; then
      got=$(head -c "$2" | wc -c)
      if [ "$got" != "$2" ]; then echo "$d: short upload: got $got of $2 bytes" >&2; exit 4; fi
    else
      dir=$(dirname -- "$d")
      mkdir -p -- "$dir"
      t=$(mktemp "$dir/.kubeforge-upload.XXXXXX")
      eval "t_$i=\$t"
      head -c "$2" > "$t"
      got=$(stat -c %s -- "$t")
      if [ "$got" != "$2" ]; then echo "$d: short upload: got $got of $2 bytes" >&2; exit 4; fi
      sum=$(sha256sum < "$t" | cut -d' ' -f1)
      if [ "$sum" != "$5" ]; then echo "$d: checksum mismatch: got sha256 $sum, expected $5" >&2; exit 5; fi
      chmod "$3" -- "$t"
      if [ -n "$4" ]; then chown -- "$4" "$t"; fi
    fi
    i=$((i+1)); shift 6
  done
}
commit() {
  i=1
  while [ "$i" -le "$n" ]; do
    d=$1
    eval "t=\${t_$i-}"
    if [ -z "$t" ]; then
      chmod "$3" -- "$d"; if [ -n "$4" ]; then chown -- "$4" "$d"; fi
      echo "kubeforge-batch $i unchanged"
    else
      case $6 in
        secret) rm -f -- "$d.kubeforge-prev" ;;
        *) if [ -f "$d" ]; then ln -f -- "$d" "$d.kubeforge-prev" 2>/dev/null || cp -p -- "$d" "$d.kubeforge-prev"; fi ;;
      esac
      mv -f -- "$t" "$d"
      eval "t_$i="
      w=${d%/*}; eval "w_$i=\${w:-/}"
      echo "kubeforge-batch $i written"
    fi
    i=$((i+1)); shift 6
  done
}
sync_named() {
  prefix=$1
  set --
  j=1; while [ "$j" -le "$n" ]; do eval "f=\${${prefix}_$j-}"; [ -z "$f" ] || set -- "$@" "$f"; j=$((j+1)); done
  [ $# -eq 0 ] || sync -- "$@"
}
stage "$@"
extra=$(head -c 1 | wc -c)
if [ "$extra" != 0 ]; then echo "batch upload: more bytes than the $n files announced" >&2; exit 6; fi
sync_named t
commit "$@"
trap - EXIT
sync_named w
shift $((n * 6))
echo kubeforge-batch-done
[ $# -eq 0 ] || exec "$@"
"#;

/// Whether `up` may travel in a batch: small or known to differ ([`BATCH_MAX_FILE`]), and a destination
/// the batch script takes as is (absolute, one line). Anything else goes as a single upload.
pub fn batchable(up: &Upload) -> bool {
    (up.size <= BATCH_MAX_FILE || !up.precheck) && up.dest.starts_with('/') && !up.dest.contains('\n')
}

/// Whether `then` can run inside a batch's round trip: the batch runs it with the batch's privileges,
/// no environment of its own and no timeout.
fn foldable(then: &Command, sudo: bool) -> bool {
    then.env.is_empty() && then.needs_sudo() == sudo && then.get_timeout().is_none()
}

/// [`Transport::upload_batch`] on top of [`Transport::exec_io`]: one command whose stdin carries every
/// file (so the transport counts one round trip and the content bytes, as for single uploads). A batch
/// that mixes privileges, or a follow-up command that cannot be folded in, is split so each part runs
/// as asked: correctness first, one round trip where possible.
pub async fn upload_batch_via_exec<T: Transport + ?Sized>(
    t: &T,
    files: &[Upload],
    then: Option<&Command>,
) -> Result<BatchOutcome, TransportError> {
    let host = || t.host().to_owned();
    if files.is_empty() {
        let then = match then {
            Some(c) => Some(t.exec(c).await?),
            None => None,
        };
        return Ok(BatchOutcome { files: Vec::new(), then });
    }
    let sudo = files[0].sudo;
    if files.iter().any(|f| f.sudo != sudo) {
        let (root, user): (Vec<Upload>, Vec<Upload>) = files.iter().cloned().partition(|f| f.sudo);
        let mut by_dest: BTreeMap<String, UploadOutcome> = BTreeMap::new();
        for part in [&user, &root] {
            let o = Box::pin(upload_batch_via_exec(t, part, None)).await?;
            by_dest.extend(part.iter().map(|f| f.dest.clone()).zip(o.files));
        }
        let then = match then {
            Some(c) => Some(t.exec(c).await?),
            None => None,
        };
        return Ok(BatchOutcome { files: files.iter().map(|f| by_dest[&f.dest]).collect(), then });
    }
    let fold = then.filter(|c| foldable(c, sudo));
    let mut sources = Vec::with_capacity(files.len());
    let mut cmd = Command::shell(BATCH_SCRIPT).arg(files.len().to_string()).with_sudo(sudo);
    for f in files {
        sources.push(open_exact(f).await.map_err(|e| TransportError::Io {
            host: host(),
            context: format!("upload source for {}", f.dest),
            source: e,
        })?);
        cmd = cmd
            .arg(&f.dest)
            .arg(f.size.to_string())
            .arg(format!("{:o}", f.mode))
            .arg(f.owner.clone().unwrap_or_default())
            .arg(&f.sha256)
            .arg(if f.secret { "secret" } else { "keep" });
    }
    if let Some(c) = fold {
        cmd.args.extend(c.args.iter().cloned());
    }
    let shown = batch_label(files, fold);
    let reader: Box<dyn AsyncRead + Send + Unpin> = Box::new(Concat { parts: sources.into() });
    let out = t.exec_io(&cmd, Some(reader), None).await.map_err(|e| shown_as(e, shown.clone()))?;
    let stdout = out.stdout_str();
    let Some(done) = stdout.find("kubeforge-batch-done\n") else {
        return Err(remote_err(t.host(), shown, &out));
    };
    let mut outcomes = vec![None; files.len()];
    for l in stdout[..done].lines() {
        let mut w = l.split_whitespace();
        if let (Some("kubeforge-batch"), Some(i), Some(what)) = (w.next(), w.next(), w.next()) {
            if let Some(slot) = i.parse::<usize>().ok().and_then(|i| outcomes.get_mut(i.wrapping_sub(1))) {
                *slot =
                    Some(if what == "written" { UploadOutcome::Written } else { UploadOutcome::Unchanged });
            }
        }
    }
    let Some(outcomes) = outcomes.into_iter().collect::<Option<Vec<_>>>() else {
        return Err(TransportError::Remote {
            host: host(),
            what: shown,
            status: out.status,
            stderr: "the host did not report every file of the batch".into(),
        });
    };
    // Every file is in place. Without a folded command the script ended right after: exit 0.
    let then_out = match (then, fold) {
        (Some(_), Some(_)) => {
            // What precedes the marker is the script's ASCII: the same offset in the raw bytes.
            let rest = out.stdout[done + "kubeforge-batch-done\n".len()..].to_vec();
            Some(ExecOutput { stdout_len: rest.len() as u64, stdout: rest, ..out })
        }
        (Some(c), None) => Some(t.exec(c).await?),
        (None, _) if !out.success() => return Err(remote_err(t.host(), shown, &out)),
        (None, _) => None,
    };
    Ok(BatchOutcome { files: outcomes, then: then_out })
}

/// Opens `up`'s content for a batch, checked to hold the announced number of bytes (a local file that
/// changed since its digest was taken is refused here, before anything is sent) and cut at that length.
async fn open_exact(up: &Upload) -> std::io::Result<tokio::io::Take<Box<dyn AsyncRead + Send + Unpin>>> {
    let len = match &up.source {
        UploadSource::File(p) => tokio::fs::metadata(p).await?.len(),
        UploadSource::Bytes(b) => b.len() as u64,
    };
    if len != up.size {
        return Err(std::io::Error::other(format!("{len} bytes where {} were announced", up.size)));
    }
    Ok(up.open().await?.take(up.size))
}

/// The batch's stdin: each file's content in turn. A source that ends early just ends its part; the host
/// then finds the file short (or its digest wrong) and names it, and nothing is renamed into place.
struct Concat {
    parts: std::collections::VecDeque<tokio::io::Take<Box<dyn AsyncRead + Send + Unpin>>>,
}

impl AsyncRead for Concat {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        while let Some(part) = self.parts.front_mut() {
            let before = buf.filled().len();
            std::task::ready!(std::pin::Pin::new(part).poll_read(cx, buf))?;
            if buf.filled().len() > before || buf.remaining() == 0 {
                return std::task::Poll::Ready(Ok(()));
            }
            self.parts.pop_front();
        }
        std::task::Poll::Ready(Ok(()))
    }
}

/// How a batch shows in errors: its files (no content, so no secret), and the folded command.
fn batch_label(files: &[Upload], then: Option<&Command>) -> String {
    let mut s = format!("upload of {} file(s): ", files.len());
    s.push_str(&files.iter().map(|f| f.dest.as_str()).collect::<Vec<_>>().join(", "));
    if let Some(c) = then {
        s.push_str(&format!("; then {c}"));
    }
    s
}

/// Places `files`: those that may travel together ([`batchable`]) in batches of one round trip each (one
/// in all up to [`BATCH_MAX_FILES`] files), the others one transfer each, first. Returns one outcome per
/// file, in order. `then`, when given, runs after every file is in place, in the last batch's round trip
/// when it can.
pub async fn upload_all(
    t: &dyn Transport,
    files: &[Upload],
    then: Option<&Command>,
) -> Result<BatchOutcome, TransportError> {
    let mut outcomes: Vec<Option<UploadOutcome>> = vec![None; files.len()];
    let (together, alone): (Vec<usize>, Vec<usize>) = (0..files.len()).partition(|&i| batchable(&files[i]));
    for &i in &alone {
        outcomes[i] = Some(t.upload(&files[i]).await?);
    }
    let chunks: Vec<&[usize]> = together.chunks(BATCH_MAX_FILES).collect();
    let mut then_out = None;
    let last = chunks.len().saturating_sub(1);
    for (k, chunk) in chunks.iter().enumerate() {
        let part: Vec<Upload> = chunk.iter().map(|&i| files[i].clone()).collect();
        let o = t.upload_batch(&part, if k == last { then } else { None }).await?;
        for (&i, r) in chunk.iter().zip(o.files) {
            outcomes[i] = Some(r);
        }
        then_out = o.then;
    }
    if chunks.is_empty() {
        if let Some(c) = then {
            then_out = Some(t.exec(c).await?);
        }
    }
    Ok(BatchOutcome {
        files: outcomes.into_iter().map(|o| o.expect("every file placed")).collect(),
        then: then_out,
    })
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
        // Without the pre-check the script itself still skips a file that already matches, and gives it
        // its mode again (a file whose permissions drifted).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(t.upload(&v2).await.unwrap(), UploadOutcome::Unchanged);
        assert_eq!(std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o640);

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

    fn listing(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().map(|e| e.unwrap()) {
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    out.push(e.path().strip_prefix(dir).unwrap().to_string_lossy().into_owned());
                }
            }
        }
        out.sort();
        out
    }

    fn local_up(data: &[u8], dest: &Path, mode: u32) -> Upload {
        Upload::bytes(data.to_vec(), dest.to_str().unwrap(), mode).with_sudo(false)
    }

    /// The batch script in a real `sh`: one round trip for every file and the follow-up command; contents,
    /// modes and owner as asked; a replaced file kept as `.kubeforge-prev`; a file that already matches
    /// left alone; odd file names taken literally.
    #[tokio::test]
    async fn a_batch_places_every_file_in_one_round_trip_and_keeps_previous_versions() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("etc")).unwrap();
        std::fs::write(d.join("etc/old.conf"), "old\n").unwrap();
        std::fs::write(d.join("etc/same.conf"), "same\n").unwrap();
        // Same content, other permissions: left alone but given its mode.
        std::fs::set_permissions(d.join("etc/same.conf"), std::fs::Permissions::from_mode(0o666)).unwrap();
        let uid = std::fs::metadata(d).unwrap().uid();
        let files = vec![
            local_up(b"new\n", &d.join("etc/old.conf"), 0o640),
            local_up(b"same\n", &d.join("etc/same.conf"), 0o644),
            local_up(b"key", &d.join("pki/deep/k.key"), 0o600).owner(uid.to_string()).secret(),
            local_up(b"", &d.join("etc/odd name; $(id) 'q'"), 0o644),
        ];
        let then = Command::shell("echo started \"$1\"; echo done > \"$1.ran\"")
            .arg(d.join("svc").to_str().unwrap());
        let t = local::LocalTransport::new("local");
        let o = t.upload_batch(&files, Some(&then)).await.unwrap();
        use UploadOutcome::*;
        assert_eq!(o.files, vec![Written, Unchanged, Written, Written]);
        let then_out = o.then.unwrap();
        assert!(then_out.success(), "{then_out:?}");
        assert_eq!(then_out.stdout_str(), format!("started {}\n", d.join("svc").display()));
        assert_eq!(t.stats().round_trips, 1, "files and follow-up in one round trip");
        assert_eq!(t.stats().bytes_sent, 4 + 5 + 3, "the content, nothing else on stdin");
        assert_eq!(std::fs::read(d.join("etc/old.conf")).unwrap(), b"new\n");
        assert_eq!(std::fs::read(d.join("etc/old.conf.kubeforge-prev")).unwrap(), b"old\n");
        assert_eq!(std::fs::read(d.join("pki/deep/k.key")).unwrap(), b"key");
        let mode = |p: &str| std::fs::metadata(d.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            (mode("etc/old.conf"), mode("etc/same.conf"), mode("pki/deep/k.key")),
            (0o640, 0o644, 0o600)
        );
        assert_eq!(std::fs::metadata(d.join("pki/deep/k.key")).unwrap().uid(), uid);
        assert_eq!(
            listing(d),
            [
                "etc/odd name; $(id) 'q'",
                "etc/old.conf",
                "etc/old.conf.kubeforge-prev",
                "etc/same.conf",
                "pki/deep/k.key",
                "svc.ran"
            ],
            "no temporary file left, nothing else written"
        );
    }

    /// A secret keeps no previous copy when it is replaced, and one left by an older kubeforge is removed,
    /// in a single upload and in a batch; other files keep theirs, a 0600 file that is no secret (a unit)
    /// too.
    #[tokio::test]
    async fn a_replaced_secret_leaves_no_previous_copy_on_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("pki")).unwrap();
        for f in ["pki/a.key", "pki/b.key", "pki/c.crt"] {
            std::fs::write(d.join(f), "old\n").unwrap();
            std::fs::write(d.join(format!("{f}.kubeforge-prev")), "older\n").unwrap();
        }
        let t = local::LocalTransport::new("local");
        std::fs::write(d.join("pki/unit.service"), "old\n").unwrap();
        let mut single = local_up(b"new\n", &d.join("pki/a.key"), 0o600).secret();
        single.precheck = false;
        assert_eq!(t.upload(&single).await.unwrap(), UploadOutcome::Written);
        let files = vec![
            local_up(b"new\n", &d.join("pki/b.key"), 0o600).secret(),
            local_up(b"new\n", &d.join("pki/c.crt"), 0o644),
            local_up(b"new\n", &d.join("pki/unit.service"), 0o600),
        ];
        t.upload_batch(&files, None).await.unwrap();
        assert_eq!(
            listing(d),
            [
                "pki/a.key",
                "pki/b.key",
                "pki/c.crt",
                "pki/c.crt.kubeforge-prev",
                "pki/unit.service",
                "pki/unit.service.kubeforge-prev"
            ]
        );
        assert_eq!(std::fs::read(d.join("pki/c.crt.kubeforge-prev")).unwrap(), b"old\n");
    }

    /// Bad data anywhere in a batch replaces nothing: a checksum mismatch is named with its file, the
    /// files staged before it are removed, the follow-up command does not run.
    #[tokio::test]
    async fn a_checksum_mismatch_fails_the_batch_names_the_file_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("etc")).unwrap();
        std::fs::write(d.join("etc/a.conf"), "a0\n").unwrap();
        let mut bad = local_up(b"b1\n", &d.join("etc/b.conf"), 0o644);
        bad.sha256 = hex::encode(Sha256::digest(b"something else"));
        let files = vec![
            local_up(b"a1\n", &d.join("etc/a.conf"), 0o644),
            bad,
            local_up(b"c1\n", &d.join("new/c.conf"), 0o644),
        ];
        let then = Command::shell("touch \"$1\"").arg(d.join("ran").to_str().unwrap());
        let t = local::LocalTransport::new("local");
        let err = t.upload_batch(&files, Some(&then)).await.unwrap_err().to_string();
        assert!(err.contains(&format!("{}: checksum mismatch", d.join("etc/b.conf").display())), "{err}");
        assert_eq!(std::fs::read(d.join("etc/a.conf")).unwrap(), b"a0\n", "the first file was not replaced");
        assert_eq!(listing(d), ["etc/a.conf"], "no staged file, no prev copy, no follow-up");
    }

    /// The host side refuses a stream that is shorter or longer than the files it announces (a framing
    /// error must never shift bytes from one file into another), and leaves nothing behind.
    #[tokio::test]
    async fn the_batch_script_refuses_a_short_or_long_stream() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let dest = d.join("x.conf");
        let sha = hex::encode(Sha256::digest(b"xyz"));
        let t = local::LocalTransport::new("local");
        for (stdin, expect) in
            [(&b"xy"[..], "short upload: got 2 of 3 bytes"), (&b"xyzw"[..], "more bytes than")]
        {
            let cmd = Command::shell(BATCH_SCRIPT).args([
                "1",
                dest.to_str().unwrap(),
                "3",
                "644",
                "",
                &sha,
                "keep",
            ]);
            let out =
                t.exec_io(&cmd, Some(Box::new(std::io::Cursor::new(stdin.to_vec()))), None).await.unwrap();
            assert!(!out.success() && out.stderr_str().contains(expect), "{out:?}");
            assert!(listing(d).is_empty(), "{:?}", listing(d));
        }
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
