//! A scripted transport for unit tests of phases and plans: it records every call (commands as their
//! redacted display form, uploads as destination + sha256) and answers from rules matched on the
//! command text, so a test can assert on exactly what would run without any machine.

use super::{
    BatchOutcome, ByteProgress, Command, ExecOutput, OutputSink, StatsSnapshot, Transport, TransportError,
    Upload, UploadOutcome,
};
use futures::future::BoxFuture;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The chunk size in which [`FakeTransport`] reports a file read's progress.
pub const FAKE_CHUNK: usize = 64 * 1024;

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    /// A command, in its redacted display form.
    Exec(String),
    /// An upload: destination, mode, sha256, and whether it was skipped as unchanged.
    Upload {
        /// Destination path.
        dest: String,
        /// Mode.
        mode: u32,
        /// sha256 of the content.
        sha256: String,
        /// Skipped because the fake already held the same content.
        unchanged: bool,
    },
}

/// A canned answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Exit with this status and output.
    Output {
        /// Exit status.
        status: u32,
        /// Stdout.
        stdout: String,
        /// Stderr.
        stderr: String,
    },
    /// Fail as if the connection dropped.
    Disconnect,
    /// Fail as if the command timed out.
    Timeout,
}

impl Reply {
    /// Exit 0 with `stdout`.
    pub fn ok(stdout: impl Into<String>) -> Self {
        Reply::Output { status: 0, stdout: stdout.into(), stderr: String::new() }
    }
    /// Exit `status` with `stderr`.
    pub fn fail(status: u32, stderr: impl Into<String>) -> Self {
        Reply::Output { status, stdout: String::new(), stderr: stderr.into() }
    }
}

/// A computed answer: gets the command's argv (the script first for shell commands) and the fake itself
/// (its files), returns the reply. Used to simulate a host (probe digests from the fake's files).
pub type Handler = std::sync::Arc<dyn Fn(&[String], &FakeTransport) -> Reply + Send + Sync>;

/// A scripted, recording transport. It is strict: a command that no rule matches fails with exit status 127
/// and names itself, so a test never passes on a command it did not expect. Uploaded files are kept in
/// memory, so `read_file`/`sha256` see them and a second identical upload is skipped.
pub struct FakeTransport {
    name: String,
    rules: Mutex<Vec<(String, Reply)>>,
    handlers: Mutex<Vec<(String, Handler)>>,
    calls: Mutex<Vec<Call>>,
    files: Mutex<BTreeMap<String, Vec<u8>>>,
    /// Round trips: each command, single upload, file read, and batch (its files and follow-up command
    /// together) counts one, as on a real host.
    round_trips: AtomicU64,
}

impl FakeTransport {
    /// A fake host named `name`.
    pub fn new(name: impl Into<String>) -> Self {
        FakeTransport {
            name: name.into(),
            rules: Mutex::new(Vec::new()),
            handlers: Mutex::new(Vec::new()),
            calls: Mutex::new(Vec::new()),
            files: Mutex::new(BTreeMap::new()),
            round_trips: AtomicU64::new(0),
        }
    }

    /// Answers commands whose display text contains `needle` with `reply` (first added rule wins).
    pub fn on(&self, needle: impl Into<String>, reply: Reply) -> &Self {
        self.rules.lock().unwrap().push((needle.into(), reply));
        self
    }

    /// Answers commands whose display text contains `needle` with what `handler` computes (checked after
    /// the fixed rules; among handlers the one added last wins, so a test can override a simulated host's
    /// default behaviour for one command).
    pub fn handle(
        &self,
        needle: impl Into<String>,
        handler: impl Fn(&[String], &FakeTransport) -> Reply + Send + Sync + 'static,
    ) -> &Self {
        self.handlers.lock().unwrap().push((needle.into(), std::sync::Arc::new(handler)));
        self
    }

    /// Answers every command that no other rule matches with exit 0 and no output (a permissive host, for
    /// tests about something else than the commands).
    pub fn permissive(&self) -> &Self {
        self.on("", Reply::ok(""))
    }

    /// Pre-populates a remote file.
    pub fn put_file(&self, path: impl Into<String>, content: impl Into<Vec<u8>>) {
        self.files.lock().unwrap().insert(path.into(), content.into());
    }

    /// Deletes a remote file.
    pub fn remove_file(&self, path: &str) {
        self.files.lock().unwrap().remove(path);
    }

    /// Every remote file path.
    pub fn paths(&self) -> Vec<String> {
        self.files.lock().unwrap().keys().cloned().collect()
    }

    /// The content of a remote file, if uploaded or put.
    pub fn file(&self, path: &str) -> Option<Vec<u8>> {
        self.files.lock().unwrap().get(path).cloned()
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The commands run so far (redacted display form).
    pub fn commands(&self) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::Exec(s) => Some(s),
                _ => None,
            })
            .collect()
    }
}

impl Transport for FakeTransport {
    fn host(&self) -> &str {
        &self.name
    }

    fn exec_io<'a>(
        &'a self,
        cmd: &'a Command,
        stdin: Option<Box<dyn AsyncRead + Send + Unpin + 'a>>,
        sink: Option<&'a OutputSink>,
    ) -> BoxFuture<'a, Result<ExecOutput, TransportError>> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        self.answer(cmd, stdin, sink)
    }

    fn stats(&self) -> StatsSnapshot {
        StatsSnapshot { round_trips: self.round_trips.load(Ordering::Relaxed), ..Default::default() }
    }

    fn upload<'a>(&'a self, up: &'a Upload) -> BoxFuture<'a, Result<UploadOutcome, TransportError>> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        Box::pin(self.place(up))
    }

    /// One round trip: every file is recorded and kept as by [`Transport::upload`], then the follow-up
    /// command is answered by the rules like any command.
    fn upload_batch<'a>(
        &'a self,
        files: &'a [Upload],
        then: Option<&'a Command>,
    ) -> BoxFuture<'a, Result<BatchOutcome, TransportError>> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            let mut outcomes = Vec::with_capacity(files.len());
            for f in files {
                outcomes.push(self.place(f).await?);
            }
            let then = match then {
                Some(c) => Some(self.answer(c, None, None).await?),
                None => None,
            };
            Ok(BatchOutcome { files: outcomes, then })
        })
    }

    /// Answers from the fake's files; `progress` hears the running total in chunks of [`FAKE_CHUNK`] bytes,
    /// as a real transport's would in the channel's data messages.
    fn download<'a>(
        &'a self,
        path: &'a str,
        sudo: bool,
        dest: &'a std::path::Path,
        progress: Option<ByteProgress>,
    ) -> BoxFuture<'a, Result<(u64, String), TransportError>> {
        Box::pin(async move {
            use sha2::Digest;
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let data = self.read_file_progress(path, sudo, usize::MAX, progress).await?;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(dest)
                .and_then(|mut f| f.write_all(&data))
                .map_err(|e| TransportError::Remote {
                    host: self.name.clone(),
                    what: format!("writing {}", dest.display()),
                    status: None,
                    stderr: e.to_string(),
                })?;
            Ok((data.len() as u64, hex::encode(sha2::Sha256::digest(&data))))
        })
    }

    fn read_file_progress<'a>(
        &'a self,
        path: &'a str,
        _sudo: bool,
        _max: usize,
        progress: Option<ByteProgress>,
    ) -> BoxFuture<'a, Result<Vec<u8>, TransportError>> {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            self.calls.lock().unwrap().push(Call::Exec(format!("cat -- {path}")));
            let data = self.file(path).ok_or_else(|| TransportError::Remote {
                host: self.name.clone(),
                what: format!("reading {path}"),
                status: Some(1),
                stderr: format!("cat: {path}: No such file or directory"),
            })?;
            if let Some(p) = progress {
                let mut done = 0;
                for chunk in data.chunks(FAKE_CHUNK) {
                    done += chunk.len() as u64;
                    p(done);
                }
            }
            Ok(data)
        })
    }
}

impl FakeTransport {
    /// Records `cmd` and answers it from the rules (no round trip counted: callers count).
    fn answer<'a>(
        &'a self,
        cmd: &'a Command,
        stdin: Option<Box<dyn AsyncRead + Send + Unpin + 'a>>,
        sink: Option<&'a OutputSink>,
    ) -> BoxFuture<'a, Result<ExecOutput, TransportError>> {
        Box::pin(async move {
            let shown = cmd.to_string();
            self.calls.lock().unwrap().push(Call::Exec(shown.clone()));
            if let Some(mut r) = stdin {
                let mut sink_buf = Vec::new();
                let _ = r.read_to_end(&mut sink_buf).await;
            }
            let fixed = |catch_all: bool| {
                self.rules
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|(n, _)| n.is_empty() == catch_all && shown.contains(n.as_str()))
                    .map(|(_, r)| r.clone())
            };
            let handler = self
                .handlers
                .lock()
                .unwrap()
                .iter()
                .rev()
                .find(|(n, _)| shown.contains(n.as_str()))
                .map(|(_, h)| h.clone());
            let reply = fixed(false)
                .or_else(|| handler.map(|h| h(&cmd.argv(), self)))
                .or_else(|| fixed(true))
                .unwrap_or_else(|| {
                    Reply::fail(127, format!("fake host {}: no rule for `{shown}`", self.name))
                });
            match reply {
                Reply::Output { status, stdout, stderr } => {
                    if let Some(s) = sink {
                        stdout.lines().for_each(|l| s(super::Stream::Stdout, l));
                        stderr.lines().for_each(|l| s(super::Stream::Stderr, l));
                    }
                    Ok(ExecOutput {
                        status: Some(status),
                        stdout_len: stdout.len() as u64,
                        stdout: stdout.into_bytes(),
                        stderr: stderr.into_bytes(),
                        ..Default::default()
                    })
                }
                Reply::Disconnect => Err(TransportError::Disconnected {
                    host: self.name.clone(),
                    command: shown,
                    message: "scripted disconnect".into(),
                }),
                Reply::Timeout => Err(TransportError::Timeout {
                    host: self.name.clone(),
                    command: shown,
                    timeout: cmd.get_timeout().unwrap_or_default(),
                }),
            }
        })
    }

    /// Records an upload and keeps its content (no round trip counted: callers count).
    async fn place(&self, up: &Upload) -> Result<UploadOutcome, TransportError> {
        {
            let data = match &up.source {
                super::UploadSource::Bytes(b) => b.as_ref().clone(),
                super::UploadSource::File(p) => std::fs::read(p).map_err(|e| TransportError::Io {
                    host: self.name.clone(),
                    context: format!("reading {}", p.display()),
                    source: e,
                })?,
            };
            let unchanged = self.files.lock().unwrap().get(&up.dest) == Some(&data);
            self.calls.lock().unwrap().push(Call::Upload {
                dest: up.dest.clone(),
                mode: up.mode,
                sha256: up.sha256.clone(),
                unchanged,
            });
            // As the upload scripts do: a replaced file is kept as `.kubeforge-prev`, except a secret.
            let mut files = self.files.lock().unwrap();
            let prev = format!("{}.kubeforge-prev", up.dest);
            if up.secret {
                files.remove(&prev);
            } else if let Some(old) = files.get(&up.dest).filter(|_| !unchanged).cloned() {
                files.insert(prev, old);
            }
            files.insert(up.dest.clone(), data);
            Ok(if unchanged { UploadOutcome::Unchanged } else { UploadOutcome::Written })
        }
    }
}
