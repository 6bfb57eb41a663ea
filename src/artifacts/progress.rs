//! Progress reporting for downloads: an indicatif bar per transfer on a terminal, plain lines
//! otherwise, nothing in tests. Also carries notes (bundle entries marked as test doubles) so that
//! every use of such an artifact is visible to the user.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// Receives download progress and messages.
pub trait Progress: Send + Sync {
    /// A transfer of `url` starts; `total` is the full size when known, `done` bytes are already on disk.
    fn begin(&self, url: &str, total: Option<u64>, done: u64) -> Box<dyn Bar>;
    /// A one-line message (retry, cache hit, artifact note).
    fn message(&self, line: &str);
}

/// One transfer's bar.
pub trait Bar: Send {
    /// `n` more bytes arrived.
    fn advance(&mut self, n: u64);
    /// The transfer ended (successfully or not).
    fn finish(&mut self);
}

/// Reports nothing except notes and retries, which go to stderr: a note must never be lost.
#[derive(Debug, Default, Clone, Copy)]
pub struct Silent;

struct NoBar;
impl Bar for NoBar {
    fn advance(&mut self, _: u64) {}
    fn finish(&mut self) {}
}

impl Progress for Silent {
    fn begin(&self, _: &str, _: Option<u64>, _: u64) -> Box<dyn Bar> {
        Box::new(NoBar)
    }
    fn message(&self, line: &str) {
        eprintln!("{line}");
    }
}

/// indicatif bars on a terminal; plain `download: <url>` lines when stderr is not a terminal.
pub struct TerminalProgress {
    multi: MultiProgress,
    tty: bool,
}

impl Default for TerminalProgress {
    fn default() -> Self {
        let tty = std::io::stderr().is_terminal();
        let target = if tty { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
        TerminalProgress { multi: MultiProgress::with_draw_target(target), tty }
    }
}

struct IndicatifBar(ProgressBar);
impl Bar for IndicatifBar {
    fn advance(&mut self, n: u64) {
        self.0.inc(n);
    }
    fn finish(&mut self) {
        self.0.finish_and_clear();
    }
}

impl Progress for TerminalProgress {
    fn begin(&self, url: &str, total: Option<u64>, done: u64) -> Box<dyn Bar> {
        let name = url.rsplit('/').next().unwrap_or(url).to_owned();
        if !self.tty {
            eprintln!("download: {url}");
            return Box::new(NoBar);
        }
        let bar = self.multi.add(ProgressBar::new(total.unwrap_or(0)));
        let style = ProgressStyle::with_template("{msg:32!} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_message(name);
        bar.set_position(done);
        Box::new(IndicatifBar(bar))
    }
    fn message(&self, line: &str) {
        if self.tty {
            let _ = self.multi.println(line);
        } else {
            eprintln!("{line}");
        }
    }
}
