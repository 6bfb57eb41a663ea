//! The executor: the only code that changes hosts. It runs each host's list of [`Step`]s with bounded
//! concurrency (one task per host, at most `concurrency` hosts at once, and a smaller limit for large
//! uploads), stops a host at its first failure while the others carry on, and collects every host's
//! failure (step, redacted command, exit status, last stderr lines) into one [`PhaseReport`].
//! A stop flag (its own, or the process's interrupt: see [`crate::cleanup`]) is checked between steps, so a
//! host is never left in the middle of one; a cleanup executor ([`Executor::for_cleanup`]) ignores the interrupt.

use crate::report::{Event, Reporter};
use crate::transport::{
    Command, ExecOutput, OutputSink, StatsSnapshot, Transport, TransportError, Upload, UploadOutcome,
};
use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// A custom step: an async function run against the host's transport. It returns whether it changed
/// the host. The plan work plugs its own action types in through this.
pub type StepFn = Box<dyn for<'a> FnOnce(&'a dyn Transport) -> BoxFuture<'a, Result<bool, StepError>> + Send>;

/// What a step does.
pub enum Action {
    /// Run a command; a non-zero exit fails the step.
    Exec(Command),
    /// Run a command and keep its output whatever the exit status (`kubeforge exec`, fact gathering).
    Probe(Command),
    /// Place a file (skipped when the remote sha256 already matches).
    Upload(Upload),
    /// Anything else.
    Custom(StepFn),
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Exec(c) | Action::Probe(c) => write!(f, "{c}"),
            Action::Upload(u) => write!(f, "{u}"),
            Action::Custom(_) => f.write_str("<custom step>"),
        }
    }
}

/// A named action.
pub struct Step {
    /// Short human name (`install kubelet`), shown in progress and errors.
    pub name: String,
    /// What to do.
    pub action: Action,
}

impl Step {
    /// A step running a command that must succeed.
    pub fn exec(name: impl Into<String>, cmd: Command) -> Self {
        Step { name: name.into(), action: Action::Exec(cmd) }
    }
    /// A step running a command whose exit status is data.
    pub fn probe(name: impl Into<String>, cmd: Command) -> Self {
        Step { name: name.into(), action: Action::Probe(cmd) }
    }
    /// A step placing a file.
    pub fn upload(name: impl Into<String>, up: Upload) -> Self {
        Step { name: name.into(), action: Action::Upload(up) }
    }
    /// A custom async step.
    pub fn custom<F>(name: impl Into<String>, f: F) -> Self
    where
        F: for<'a> FnOnce(&'a dyn Transport) -> BoxFuture<'a, Result<bool, StepError>> + Send + 'static,
    {
        Step { name: name.into(), action: Action::Custom(Box::new(f)) }
    }
}

/// The work for one host.
pub struct HostPlan {
    /// The host's transport (one connection for the whole run: share the `Arc` between phases).
    pub transport: Arc<dyn Transport>,
    /// Steps, in order.
    pub steps: Vec<Step>,
}

/// Why a step failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The transport failed (connection, host key, timeout, sudo).
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A command exited non-zero.
    #[error("{}", command_failed(command, *status, output))]
    Command {
        /// The command (redacted).
        command: String,
        /// Exit status (`None`: killed by a signal).
        status: Option<u32>,
        /// Its output.
        output: ExecOutput,
    },
    /// A custom step's own failure.
    #[error("{0}")]
    Other(String),
}

/// `` `cmd` exited with status 1: `` and the last lines it wrote to stderr (else stdout), which usually say
/// why.
fn command_failed(command: &str, status: Option<u32>, output: &ExecOutput) -> String {
    let status = status.map(|s| s.to_string()).unwrap_or("<killed by signal>".into());
    let mut said = output.stderr_str();
    if said.trim().is_empty() {
        said = output.stdout_str();
    }
    let lines: Vec<&str> = said.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(3)..].join(" | ");
    if tail.is_empty() {
        format!("`{command}` exited with status {status}")
    } else {
        format!("`{command}` exited with status {status}: {tail}")
    }
}

/// The result of one step.
#[derive(Debug, Clone)]
pub struct StepResult {
    /// Step name.
    pub step: String,
    /// Whether the host changed.
    pub changed: bool,
    /// Output of `Exec`/`Probe` steps.
    pub output: Option<ExecOutput>,
    /// Time taken.
    pub elapsed: Duration,
}

/// A host that finished its steps.
#[derive(Debug, Clone)]
pub struct HostReport {
    /// Host name.
    pub host: String,
    /// Every step's result.
    pub results: Vec<StepResult>,
    /// Wall time of the host's steps.
    pub elapsed: Duration,
    /// Transport counters at the end.
    pub stats: StatsSnapshot,
}

impl HostReport {
    /// Steps that changed the host.
    pub fn changes(&self) -> usize {
        self.results.iter().filter(|r| r.changed).count()
    }
}

/// A host that stopped at a failed step.
#[derive(Debug)]
pub struct HostFailure {
    /// Host name.
    pub host: String,
    /// The step that failed.
    pub step: String,
    /// What it ran (redacted).
    pub command: String,
    /// Exit status, when a command ran to the end.
    pub status: Option<u32>,
    /// The last stderr lines.
    pub stderr_tail: Vec<String>,
    /// The error.
    pub error: StepError,
    /// Steps that completed before the failure.
    pub completed: Vec<StepResult>,
}

impl fmt::Display for HostFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: step '{}' failed: ", self.host, self.step)?;
        match &self.error {
            StepError::Command { status, .. } => write!(f, "`{}` exited with status ", self.command)
                .and_then(|_| match status {
                    Some(s) => write!(f, "{s}"),
                    None => f.write_str("<killed by signal>"),
                })?,
            e => write!(f, "{e}")?,
        }
        for l in &self.stderr_tail {
            write!(f, "\n      stderr: {l}")?;
        }
        Ok(())
    }
}

/// The outcome of one phase on all hosts: the hosts that finished and those that failed.
#[derive(Debug)]
pub struct PhaseReport {
    /// Phase id.
    pub phase: String,
    /// Hosts that completed every step.
    pub hosts: Vec<HostReport>,
    /// Hosts that stopped at a failure (or were interrupted).
    pub failures: Vec<HostFailure>,
    /// Wall time.
    pub elapsed: Duration,
    /// Whether the run was stopped (Ctrl-C).
    pub interrupted: bool,
}

impl PhaseReport {
    /// `Ok(self)` when no host failed, else the collected failures (successful hosts' results are lost
    /// only from the error value; inspect `self` first if you need them).
    pub fn into_result(self) -> Result<PhaseReport, ExecError> {
        if self.failures.is_empty() && !self.interrupted {
            Ok(self)
        } else {
            Err(ExecError::HostsFailed {
                phase: self.phase,
                ok_hosts: self.hosts.len(),
                failures: self.failures,
                interrupted: self.interrupted,
            })
        }
    }
}

/// Errors of a run.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Some hosts failed; each failure lists host, step, command, status and stderr.
    #[error("{}", fmt_failures(phase, *ok_hosts, failures, *interrupted))]
    HostsFailed {
        /// Phase id.
        phase: String,
        /// Hosts that completed.
        ok_hosts: usize,
        /// The failures.
        failures: Vec<HostFailure>,
        /// Stopped by Ctrl-C.
        interrupted: bool,
    },
}

impl ExecError {
    /// The hint of the first failure that has one.
    pub fn hint(&self) -> Option<String> {
        let ExecError::HostsFailed { failures, interrupted, .. } = self;
        if *interrupted {
            return Some("the run was interrupted between steps; re-running continues safely".into());
        }
        failures.iter().find_map(|f| match &f.error {
            StepError::Transport(t) => t.hint(),
            _ => None,
        })
    }
}

fn fmt_failures(phase: &str, ok: usize, failures: &[HostFailure], interrupted: bool) -> String {
    let mut s = format!(
        "[{phase}] {} host(s) failed, {ok} succeeded{}",
        failures.len(),
        if interrupted { " (interrupted)" } else { "" }
    );
    for f in failures {
        s.push_str(&format!("\n  - {f}"));
    }
    s
}

/// Runs host plans in parallel.
#[derive(Clone)]
pub struct Executor {
    /// Hosts worked on at once.
    pub concurrency: usize,
    /// Uploads of at least `large_upload_bytes` in flight at once (they compete for bandwidth and disk).
    pub large_upload_concurrency: usize,
    /// Threshold for the upload limit.
    pub large_upload_bytes: u64,
    reporter: Arc<dyn Reporter>,
    stop: Arc<AtomicBool>,
    upload_slots: Arc<Semaphore>,
    /// A cleanup executor: the process's interrupt does not stop it.
    cleanup: bool,
}

impl Executor {
    /// An executor with `concurrency` hosts at once and `reporter` for progress.
    pub fn new(concurrency: usize, reporter: Arc<dyn Reporter>) -> Self {
        let large = concurrency.clamp(1, 50);
        Executor {
            concurrency: concurrency.max(1),
            large_upload_concurrency: large,
            large_upload_bytes: 16 * 1024 * 1024,
            reporter,
            stop: Arc::new(AtomicBool::new(false)),
            upload_slots: Arc::new(Semaphore::new(large)),
            cleanup: false,
        }
    }

    /// Sets the limit for large uploads.
    pub fn with_large_upload_limit(mut self, n: usize) -> Self {
        self.large_upload_concurrency = n.max(1);
        self.upload_slots = Arc::new(Semaphore::new(n.max(1)));
        self
    }

    /// Runs `f` on every item, at most `concurrency` at once (reads and fan-outs outside a plan: the facts
    /// of `audit`, the state copies of `state pull`, a restore's member steps); the results in the items'
    /// order.
    pub async fn each<I, F, Fut, T>(&self, items: I, f: F) -> Vec<T>
    where
        I: IntoIterator,
        F: FnMut(I::Item) -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        futures::stream::iter(items).map(f).buffered(self.concurrency).collect().await
    }

    /// The stop flag: set it to stop every host before its next step.
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// An executor for cleanup (rollback, uncordon, putting data back) with the same concurrency and
    /// reporter and a stop flag of its own: an interrupt never cancels cleanup (see [`crate::cleanup`]).
    pub fn for_cleanup(&self) -> Executor {
        Executor {
            concurrency: self.concurrency,
            large_upload_concurrency: self.large_upload_concurrency,
            large_upload_bytes: self.large_upload_bytes,
            reporter: self.reporter.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            upload_slots: self.upload_slots.clone(),
            cleanup: true,
        }
    }

    /// Whether this executor has been told to stop (its flag, or the process's interrupt unless it is a
    /// cleanup executor): work between steps checks it too.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || (!self.cleanup && crate::cleanup::stopped())
    }

    /// Runs `plans` (one per host) as phase `phase`.
    pub async fn run(&self, phase: &str, plans: Vec<HostPlan>) -> PhaseReport {
        let started = Instant::now();
        self.reporter.event(&Event::PhaseStarted { phase: phase.into(), hosts: plans.len() });
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let mut tasks: FuturesUnordered<_> =
            plans.into_iter().map(|p| self.run_host(phase, p, slots.clone())).collect();
        let mut hosts = Vec::new();
        let mut failures = Vec::new();
        while let Some(r) = tasks.next().await {
            match r {
                Ok(h) => hosts.push(h),
                Err(f) => failures.push(f),
            }
        }
        hosts.sort_by(|a, b| a.host.cmp(&b.host));
        failures.sort_by(|a, b| a.host.cmp(&b.host));
        let elapsed = started.elapsed();
        self.reporter.event(&Event::PhaseFinished { phase: phase.into(), elapsed, failed: failures.len() });
        PhaseReport { phase: phase.into(), hosts, failures, elapsed, interrupted: self.stopping() }
    }

    async fn run_host(
        &self,
        phase: &str,
        plan: HostPlan,
        slots: Arc<Semaphore>,
    ) -> Result<HostReport, HostFailure> {
        let _slot = slots.acquire_owned().await.expect("semaphore never closed");
        let t = plan.transport;
        let host = t.host().to_string();
        let started = Instant::now();
        let total = plan.steps.len();
        let mut results = Vec::with_capacity(total);
        let sink: Option<OutputSink> = if self.reporter.wants_output() {
            let (r, p, h) = (self.reporter.clone(), phase.to_string(), host.clone());
            Some(Arc::new(move |s, l: &str| {
                r.event(&Event::Output {
                    phase: p.clone(),
                    host: h.clone(),
                    stderr: s == crate::transport::Stream::Stderr,
                    line: l.to_string(),
                })
            }))
        } else {
            None
        };
        for (index, step) in plan.steps.into_iter().enumerate() {
            let fail = |step: &str, command: String, error: StepError, completed: Vec<StepResult>| {
                let (status, stderr_tail) = match &error {
                    StepError::Command { status, output, .. } => (*status, output.last_stderr_lines(5)),
                    _ => (None, Vec::new()),
                };
                self.reporter.event(&Event::HostFinished {
                    phase: phase.into(),
                    host: host.clone(),
                    ok: false,
                    message: format!("{step}: {error}"),
                });
                HostFailure {
                    host: host.clone(),
                    step: step.into(),
                    command,
                    status,
                    stderr_tail,
                    error,
                    completed,
                }
            };
            if self.stopping() {
                let e = StepError::Other("interrupted before this step".into());
                return Err(fail(&step.name, step.action.to_string(), e, results));
            }
            self.reporter.event(&Event::StepStarted {
                phase: phase.into(),
                host: host.clone(),
                step: step.name.clone(),
                index,
                total,
            });
            crate::cleanup::host_doing(
                &host,
                format!("in `{phase}`, step {}/{total} `{}` (may be half done)", index + 1, step.name),
            );
            let shown = step.action.to_string();
            let t0 = Instant::now();
            let outcome: Result<(bool, Option<ExecOutput>), StepError> = match step.action {
                Action::Exec(cmd) => match t.exec_io(&cmd, None, sink.as_ref()).await {
                    Ok(out) if out.success() => Ok((true, Some(out))),
                    Ok(out) => {
                        Err(StepError::Command { command: cmd.to_string(), status: out.status, output: out })
                    }
                    Err(e) => Err(e.into()),
                },
                Action::Probe(cmd) => {
                    t.exec_io(&cmd, None, sink.as_ref()).await.map(|o| (false, Some(o))).map_err(Into::into)
                }
                Action::Upload(up) => {
                    let _permit = if up.size >= self.large_upload_bytes {
                        Some(self.upload_slots.clone().acquire_owned().await.expect("never closed"))
                    } else {
                        None
                    };
                    t.upload(&up).await.map(|o| (o == UploadOutcome::Written, None)).map_err(Into::into)
                }
                Action::Custom(f) => f(t.as_ref()).await.map(|c| (c, None)),
            };
            let elapsed = t0.elapsed();
            let ok = outcome.is_ok();
            crate::cleanup::host_doing(
                &host,
                format!(
                    "{} step {}/{total} `{}` of `{phase}`",
                    if ok { "finished" } else { "failed at" },
                    index + 1,
                    step.name
                ),
            );
            self.reporter.event(&Event::StepFinished {
                phase: phase.into(),
                host: host.clone(),
                step: step.name.clone(),
                ok,
                changed: matches!(outcome, Ok((true, _))),
                elapsed,
            });
            match outcome {
                Ok((changed, output)) => {
                    results.push(StepResult { step: step.name, changed, output, elapsed })
                }
                Err(e) => return Err(fail(&step.name, shown, e, results)),
            }
        }
        let report = HostReport { host: host.clone(), elapsed: started.elapsed(), stats: t.stats(), results };
        self.reporter.event(&Event::HostFinished {
            phase: phase.into(),
            host,
            ok: true,
            message: format!("{} step(s), {} changed", report.results.len(), report.changes()),
        });
        Ok(report)
    }
}

/// The timing summary: one row per phase (wall time, hosts, failed, slowest host).
pub fn summary(phases: &[PhaseReport]) -> String {
    use crate::report::fmt_dur;
    let mut s = format!("{:<20} {:>9} {:>6} {:>7}  {}\n", "PHASE", "TIME", "HOSTS", "FAILED", "SLOWEST HOST");
    let mut total = Duration::ZERO;
    for p in phases {
        total += p.elapsed;
        let slowest = p
            .hosts
            .iter()
            .max_by_key(|h| h.elapsed)
            .map(|h| format!("{} ({})", h.host, fmt_dur(h.elapsed)))
            .unwrap_or_default();
        s.push_str(&format!(
            "{:<20} {:>9} {:>6} {:>7}  {}\n",
            p.phase,
            fmt_dur(p.elapsed),
            p.hosts.len() + p.failures.len(),
            p.failures.len(),
            slowest
        ));
    }
    s.push_str(&format!("{:<20} {:>9}\n", "total", fmt_dur(total)));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Recorder;
    use crate::transport::fake::{FakeTransport, Reply};

    fn plan(t: Arc<FakeTransport>) -> HostPlan {
        HostPlan {
            transport: t,
            steps: vec![
                Step::exec("one", Command::new("true")),
                Step::exec("two", Command::new("systemctl").arg("start").arg("etcd").secret_arg("s3cret")),
                Step::upload("three", Upload::bytes(b"x".to_vec(), "/etc/x", 0o644)),
            ],
        }
    }

    #[tokio::test]
    async fn failures_are_collected_and_other_hosts_finish() {
        let a = Arc::new(FakeTransport::new("a"));
        a.permissive();
        let b = Arc::new(FakeTransport::new("b"));
        b.on("systemctl", Reply::fail(3, "line1\nJob for etcd.service failed\n")).permissive();
        let c = Arc::new(FakeTransport::new("c"));
        c.on("true", Reply::Disconnect);
        let rec = Arc::new(Recorder::default());
        let ex = Executor::new(2, rec.clone());
        let r = ex.run("etcd", vec![plan(a.clone()), plan(b.clone()), plan(c.clone())]).await;
        assert_eq!(r.hosts.len(), 1);
        assert_eq!(r.hosts[0].host, "a");
        assert_eq!(r.hosts[0].changes(), 3);
        assert_eq!(a.file("/etc/x").as_deref(), Some(&b"x"[..]));
        assert_eq!(r.failures.len(), 2);
        let fb = &r.failures[0];
        assert_eq!((fb.host.as_str(), fb.step.as_str(), fb.status), ("b", "two", Some(3)));
        assert_eq!(fb.command, "systemctl start etcd <redacted>");
        assert_eq!(fb.stderr_tail, vec!["line1", "Job for etcd.service failed"]);
        assert!(b.file("/etc/x").is_none(), "b stopped at its failure");
        let err = r.into_result().unwrap_err().to_string();
        assert!(err.contains("2 host(s) failed, 1 succeeded"), "{err}");
        assert!(err.contains("c: step 'one' failed: c: connection lost"), "{err}");
        assert!(!err.contains("s3cret"));
        assert!(rec
            .events()
            .iter()
            .any(|e| matches!(e, Event::HostFinished { host, ok: true, .. } if host == "a")));
    }

    #[tokio::test]
    async fn stop_flag_stops_between_steps() {
        let a = Arc::new(FakeTransport::new("a"));
        let ex = Executor::new(4, Arc::new(crate::report::Silent));
        let stop = ex.stop_flag();
        let p = HostPlan {
            transport: a.clone(),
            steps: vec![
                Step::custom("flip", move |_t| {
                    Box::pin(async move {
                        stop.store(true, Ordering::SeqCst);
                        Ok(false)
                    })
                }),
                Step::exec("never", Command::new("reboot")),
            ],
        };
        let r = ex.run("x", vec![p]).await;
        assert!(r.interrupted);
        assert_eq!(r.failures[0].step, "never");
        assert!(a.commands().is_empty());
    }

    #[tokio::test]
    async fn a_cleanup_executor_runs_its_steps_after_the_run_was_stopped() {
        let a = Arc::new(FakeTransport::new("a"));
        a.on("systemctl start etcd", Reply::ok(""));
        let ex = Executor::new(1, Arc::new(crate::report::Silent));
        ex.stop_flag().store(true, Ordering::SeqCst);
        let step = || Step::exec("put back", Command::new("systemctl").args(["start", "etcd"]));
        let r = ex.run("x", vec![HostPlan { transport: a.clone(), steps: vec![step()] }]).await;
        assert!(r.interrupted && a.commands().is_empty(), "the stopped run stops");
        let r = ex.for_cleanup().run("x", vec![HostPlan { transport: a.clone(), steps: vec![step()] }]).await;
        assert!(!r.interrupted && r.failures.is_empty());
        assert_eq!(a.commands(), vec!["systemctl start etcd".to_string()]);
    }

    #[tokio::test]
    async fn the_fake_host_refuses_commands_it_was_not_told_about() {
        let a = Arc::new(FakeTransport::new("a"));
        let ex = Executor::new(1, Arc::new(crate::report::Silent));
        let r = ex
            .run("x", vec![HostPlan { transport: a, steps: vec![Step::exec("s", Command::new("reboot"))] }])
            .await;
        assert_eq!(r.failures[0].status, Some(127));
        assert!(
            r.failures[0].stderr_tail[0].contains("no rule for `reboot`"),
            "{:?}",
            r.failures[0].stderr_tail
        );
    }

    #[tokio::test]
    async fn second_identical_upload_is_unchanged() {
        let a = Arc::new(FakeTransport::new("a"));
        let ex = Executor::new(1, Arc::new(crate::report::Silent));
        let up = Upload::bytes(b"same".to_vec(), "/etc/y", 0o600);
        let r1 = ex
            .run("x", vec![HostPlan { transport: a.clone(), steps: vec![Step::upload("u", up.clone())] }])
            .await;
        let r2 =
            ex.run("x", vec![HostPlan { transport: a.clone(), steps: vec![Step::upload("u", up)] }]).await;
        assert_eq!((r1.hosts[0].changes(), r2.hosts[0].changes()), (1, 0));
    }
    #[tokio::test]
    async fn each_keeps_the_order_and_never_runs_more_than_the_concurrency_at_once() {
        use std::sync::atomic::AtomicUsize;
        let ex = Executor::new(3, Arc::new(crate::report::Silent));
        let (now, peak) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let out = ex
            .each(0..12u64, |i| {
                let (now, peak) = (now.clone(), peak.clone());
                async move {
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(n, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5 + (i * 7) % 11)).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    i * 2
                }
            })
            .await;
        assert_eq!(out, (0..12).map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(peak.load(Ordering::SeqCst), 3);
    }
}
