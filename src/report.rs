//! Progress and result reporting: the executor emits [`Event`]s; a [`Reporter`] shows them as indicatif
//! bars per host on a TTY ([`BarReporter`]), plain `[phase] host: message` lines otherwise
//! ([`PlainReporter`], for CI and pipes), or records them for tests ([`Recorder`]). The executor renders
//! the per-phase timing table printed at the end of a run.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Something that happened during a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A phase started on `hosts` hosts.
    PhaseStarted {
        /// Phase id.
        phase: String,
        /// Number of hosts.
        hosts: usize,
    },
    /// A host started a step.
    StepStarted {
        /// Phase id.
        phase: String,
        /// Host name.
        host: String,
        /// Step name.
        step: String,
        /// Index of the step (0-based).
        index: usize,
        /// Steps of this host in this phase.
        total: usize,
    },
    /// A line of remote output.
    Output {
        /// Phase id.
        phase: String,
        /// Host name.
        host: String,
        /// Whether it came from stderr.
        stderr: bool,
        /// The line.
        line: String,
    },
    /// A host finished a step.
    StepFinished {
        /// Phase id.
        phase: String,
        /// Host name.
        host: String,
        /// Step name.
        step: String,
        /// Whether it succeeded.
        ok: bool,
        /// Whether it changed the host.
        changed: bool,
        /// How long it took.
        elapsed: Duration,
    },
    /// A host finished the phase (or stopped at a failure).
    HostFinished {
        /// Phase id.
        phase: String,
        /// Host name.
        host: String,
        /// Whether every step succeeded.
        ok: bool,
        /// Short message (error summary when failed).
        message: String,
    },
    /// The phase is over.
    PhaseFinished {
        /// Phase id.
        phase: String,
        /// Wall time.
        elapsed: Duration,
        /// Hosts that failed.
        failed: usize,
    },
}

/// Receives events. Implementations must be cheap: they are called from the executor's tasks.
pub trait Reporter: Send + Sync {
    /// Handles one event.
    fn event(&self, e: &Event);
    /// Whether remote output lines should be produced at all (they cost a little per line).
    fn wants_output(&self) -> bool {
        false
    }
}

/// Picks the bar reporter when stderr is a terminal, plain lines otherwise.
pub fn auto(show_output: bool) -> Arc<dyn Reporter> {
    if std::io::stderr().is_terminal() && std::env::var_os("CI").is_none() {
        Arc::new(BarReporter::new(show_output))
    } else {
        Arc::new(PlainReporter::stderr(show_output))
    }
}

/// Plain `[phase] host: message` lines, one per step start/finish (for CI logs and pipes).
pub struct PlainReporter {
    out: Mutex<Box<dyn Write + Send>>,
    show_output: bool,
}

impl PlainReporter {
    /// Writes to stderr.
    pub fn stderr(show_output: bool) -> Self {
        PlainReporter { out: Mutex::new(Box::new(std::io::stderr())), show_output }
    }

    /// Writes to any writer (tests).
    pub fn to_writer(w: Box<dyn Write + Send>, show_output: bool) -> Self {
        PlainReporter { out: Mutex::new(w), show_output }
    }
}

/// The one-line text of an event, or `None` for events a line-based log skips.
pub fn line(e: &Event) -> Option<String> {
    Some(match e {
        Event::PhaseStarted { phase, hosts } => format!("[{phase}] starting on {hosts} host(s)"),
        Event::StepStarted { phase, host, step, index, total } => {
            format!("[{phase}] {host}: ({}/{total}) {step}", index + 1)
        }
        Event::Output { phase, host, stderr, line } => {
            format!("[{phase}] {host}: {}{line}", if *stderr { "! " } else { "| " })
        }
        Event::StepFinished { ok: true, .. } => return None,
        Event::StepFinished { phase, host, step, ok: false, elapsed, .. } => {
            format!("[{phase}] {host}: FAILED {step} after {}", fmt_dur(*elapsed))
        }
        Event::HostFinished { phase, host, ok: true, message } => format!("[{phase}] {host}: done {message}"),
        // The step's FAILED line said where; the reason is printed once, in the command's error.
        Event::HostFinished { ok: false, .. } => return None,
        Event::PhaseFinished { phase, elapsed, failed } => {
            format!("[{phase}] finished in {} ({failed} host(s) failed)", fmt_dur(*elapsed))
        }
    })
}

impl Reporter for PlainReporter {
    fn event(&self, e: &Event) {
        if let Some(l) = line(e) {
            let mut o = self.out.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(o, "{l}");
        }
    }
    fn wants_output(&self) -> bool {
        self.show_output
    }
}

/// One indicatif bar per host (steps done / total), with the current step as its message.
pub struct BarReporter {
    multi: indicatif::MultiProgress,
    bars: Mutex<HashMap<String, indicatif::ProgressBar>>,
    show_output: bool,
}

impl BarReporter {
    /// A reporter drawing to stderr.
    pub fn new(show_output: bool) -> Self {
        BarReporter { multi: indicatif::MultiProgress::new(), bars: Mutex::new(HashMap::new()), show_output }
    }

    fn bar(&self, host: &str, total: usize) -> indicatif::ProgressBar {
        let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
        bars.entry(host.to_string())
            .or_insert_with(|| {
                let b = self.multi.add(indicatif::ProgressBar::new(total as u64));
                b.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{prefix:>20.bold} [{bar:20}] {pos}/{len} {wide_msg}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                b.set_prefix(host.to_string());
                b
            })
            .clone()
    }
}

impl Reporter for BarReporter {
    fn event(&self, e: &Event) {
        match e {
            Event::PhaseStarted { .. } => {
                self.bars.lock().unwrap_or_else(|p| p.into_inner()).clear();
                if let Some(l) = line(e) {
                    let _ = self.multi.println(l);
                }
            }
            Event::StepStarted { host, step, index, total, .. } => {
                let b = self.bar(host, *total);
                b.set_length(*total as u64);
                b.set_position(*index as u64);
                b.set_message(step.clone());
            }
            Event::Output { .. } => {
                if let Some(l) = line(e) {
                    let _ = self.multi.println(l);
                }
            }
            Event::StepFinished { host, .. } => self.bar(host, 0).inc(1),
            Event::HostFinished { host, ok, message, .. } => {
                let b = self.bar(host, 0);
                if *ok {
                    b.finish_with_message(format!("done {message}"));
                } else {
                    b.abandon_with_message(format!("FAILED: {message}"));
                }
            }
            Event::PhaseFinished { .. } => {
                if let Some(l) = line(e) {
                    let _ = self.multi.println(l);
                }
            }
        }
    }
    fn wants_output(&self) -> bool {
        self.show_output
    }
}

/// Keeps every event (tests assert on them).
#[derive(Default)]
pub struct Recorder {
    events: Mutex<Vec<Event>>,
}

impl Recorder {
    /// Everything recorded so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Reporter for Recorder {
    fn event(&self, e: &Event) {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).push(e.clone());
    }
    fn wants_output(&self) -> bool {
        true
    }
}

/// A reporter that shows nothing.
pub struct Silent;

impl Reporter for Silent {
    fn event(&self, _: &Event) {}
}

/// Human duration: `850ms`, `12.3s`, `2m05s`.
pub fn fmt_dur(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

/// A Unix time as people read it (`2026-12-07 13:05 UTC`).
pub fn unix_time(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC")).ok()
        })
        .unwrap_or_default()
}

/// Now, in Unix seconds.
pub fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
