//! The local transport: runs commands on this machine through `sh -c`, with the same semantics as SSH
//! (exit status is data, output capped, stdin streamed). Used for `lab` and tests of the upload logic.

use super::{
    ByteProgress, Command, ExecOutput, OutputCollector, OutputSink, Stats, StatsSnapshot, Stream, Transport,
    TransportError,
};
use futures::future::BoxFuture;
use std::process::Stdio;
use std::sync::atomic::Ordering;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Runs commands locally. `sudo` commands run as they are (the caller is expected to be root, or to
/// accept failures).
pub struct LocalTransport {
    name: String,
    stats: Stats,
}

impl LocalTransport {
    /// A local transport reporting itself as `name`.
    pub fn new(name: impl Into<String>) -> Self {
        LocalTransport { name: name.into(), stats: Stats::default() }
    }

    async fn run(
        &self,
        cmd: &Command,
        stdin: Option<Box<dyn AsyncRead + Send + Unpin + '_>>,
        sink: Option<&OutputSink>,
    ) -> Result<ExecOutput, TransportError> {
        self.stats.round_trips.fetch_add(1, Ordering::Relaxed);
        let io = |context: &str, e| TransportError::Io {
            host: self.name.clone(),
            context: context.into(),
            source: e,
        };
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd.to_shell())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| io("spawning sh", e))?;
        let mut child_in = child.stdin.take();
        let mut so = child.stdout.take().expect("piped");
        let mut se = child.stderr.take().expect("piped");
        let feed = async {
            if let (Some(mut r), Some(w)) = (stdin, child_in.as_mut()) {
                // A write error means the command stopped reading; its exit status tells why.
                if let Ok(n) = tokio::io::copy(&mut r, w).await {
                    self.stats.bytes_sent.fetch_add(n, Ordering::Relaxed);
                }
                let _ = w.flush().await;
            }
            drop(child_in);
        };
        let cap = cmd.get_output_cap();
        let all = async {
            let (_, o, e) = tokio::join!(
                feed,
                collect(&mut so, Stream::Stdout, cap, sink, cmd.stdout_progress(), cmd.stdout_chunks()),
                collect(&mut se, Stream::Stderr, cap, sink, None, None)
            );
            let status = child.wait().await;
            (o, e, status)
        };
        let (o, e, status) = match cmd.get_timeout() {
            Some(t) => tokio::time::timeout(t, all).await.map_err(|_| TransportError::Timeout {
                host: self.name.clone(),
                command: cmd.to_string(),
                timeout: t,
            })?,
            None => all.await,
        };
        let status = status.map_err(|e| io("waiting for sh", e))?;
        let (stdout, t1, stdout_len) = o.finish(sink);
        let (stderr, t2, _) = e.finish(sink);
        use std::os::unix::process::ExitStatusExt;
        Ok(ExecOutput {
            status: status.code().map(|c| c as u32),
            signal: status.signal().map(|s| s.to_string()),
            stdout,
            stderr,
            truncated: t1 || t2,
            stdout_len,
        })
    }
}

impl Transport for LocalTransport {
    fn host(&self) -> &str {
        &self.name
    }

    fn exec_io<'a>(
        &'a self,
        cmd: &'a Command,
        stdin: Option<Box<dyn AsyncRead + Send + Unpin + 'a>>,
        sink: Option<&'a OutputSink>,
    ) -> BoxFuture<'a, Result<ExecOutput, TransportError>> {
        Box::pin(self.run(cmd, stdin, sink))
    }

    fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }
}

async fn collect<R: AsyncRead + Unpin>(
    r: &mut R,
    stream: Stream,
    cap: usize,
    sink: Option<&OutputSink>,
    progress: Option<ByteProgress>,
    chunks: Option<super::StdoutChunks>,
) -> OutputCollector {
    let mut col = OutputCollector::new(stream, cap).with_progress(progress).with_chunks(chunks);
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => col.push(&buf[..n], sink),
        }
    }
    col
}
