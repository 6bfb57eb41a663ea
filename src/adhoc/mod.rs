//! Ad-hoc work on an inventory's hosts, outside any workflow: host selection (`--hosts`), the
//! connections for the selected hosts, `kubeforge exec` (one command on many hosts, output grouped per
//! host) and, in [`check`], `kubeforge check` (connectivity and facts). Everything runs through the same
//! [`Executor`] and SSH transport as `apply`, so concurrency, timeouts, host key checks and sudo behave
//! the same way; nothing here writes to a host except what the user's own command does.

pub mod check;

use crate::exec::{Executor, HostPlan, Step, StepError};
use crate::inventory::{HostSpec, Loaded};
use crate::report::{BarReporter, Reporter, Silent};
use crate::transport::ssh::{ConnectOptions, SshTarget, SshTransport};
use crate::transport::{Command, ExecOutput, Transport, TransportError};
use crate::{Error, Result};
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use crate::selector::{select, SelectError, ROLES};

/// A selected host with its transport (connected on first use).
pub struct Target {
    /// Host name.
    pub name: String,
    /// Address as the inventory writes it.
    pub address: String,
    /// The transport commands run on.
    pub transport: Arc<dyn Transport>,
    /// The same transport when it is SSH, to close it at the end.
    pub ssh: Option<Arc<SshTransport>>,
}

impl Target {
    /// A target on any transport (tests, local runs).
    pub fn new(name: &str, address: &str, transport: Arc<dyn Transport>) -> Self {
        Target { name: name.into(), address: address.into(), transport, ssh: None }
    }
}

/// One transport per selected host. Settings errors (an unset `sudoPasswordEnv` variable) fail here,
/// before any connection is made.
pub fn targets(loaded: &Loaded, hosts: &[&HostSpec], connect: &ConnectOptions) -> Result<Vec<Target>> {
    hosts
        .iter()
        .map(|h| {
            let t = SshTarget::from_inventory(&loaded.inventory, &loaded.dir, h, connect)?;
            let ssh = Arc::new(SshTransport::new(t));
            Ok(Target {
                name: h.name.clone(),
                address: h.address.clone(),
                transport: ssh.clone(),
                ssh: Some(ssh),
            })
        })
        .collect()
}

/// Progress bars on an interactive terminal; nothing otherwise (the grouped output is the log).
fn progress() -> Arc<dyn Reporter> {
    if std::io::stderr().is_terminal() && std::env::var_os("CI").is_none() {
        Arc::new(BarReporter::new(false))
    } else {
        Arc::new(Silent)
    }
}

/// Why a host produced no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// No session: connection, host key, authentication or settings.
    Unreachable,
    /// The connection dropped while the command ran.
    ConnectionLost,
    /// The command ran longer than `--timeout`.
    TimedOut,
    /// sudo refused.
    Sudo,
    /// Anything else.
    Error,
}

impl FailureKind {
    /// Classifies a step error.
    pub fn of(e: &StepError) -> Self {
        match e {
            StepError::Transport(t) => match t {
                TransportError::Connect { .. }
                | TransportError::UnknownHostKey { .. }
                | TransportError::HostKeyChanged { .. }
                | TransportError::Auth { .. }
                | TransportError::Config { .. } => FailureKind::Unreachable,
                TransportError::Disconnected { .. } => FailureKind::ConnectionLost,
                TransportError::Timeout { .. } => FailureKind::TimedOut,
                TransportError::Sudo { .. } => FailureKind::Sudo,
                _ => FailureKind::Error,
            },
            _ => FailureKind::Error,
        }
    }

    /// Lower-case label.
    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Unreachable => "unreachable",
            FailureKind::ConnectionLost => "connection lost",
            FailureKind::TimedOut => "timed out",
            FailureKind::Sudo => "sudo refused",
            FailureKind::Error => "error",
        }
    }
}

/// A host's failure, ready to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The class.
    pub kind: FailureKind,
    /// The message, without the leading `host: ` the transport errors carry.
    pub message: String,
    /// How to fix it, when known.
    pub hint: Option<String>,
}

impl Failure {
    fn new(host: &str, e: &StepError) -> Self {
        let text = e.to_string();
        let message = text.strip_prefix(&format!("{host}: ")).map(str::to_owned).unwrap_or(text);
        let hint = match e {
            StepError::Transport(t) => t.hint(),
            _ => None,
        };
        Failure { kind: FailureKind::of(e), message, hint }
    }
}

/// What one host did with the command.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The command ran to the end (whatever its exit status).
    Ran {
        /// Its output and status.
        output: ExecOutput,
        /// Wall time of the command.
        elapsed: Duration,
    },
    /// No exit status: the host failed before or while running it.
    Failed(Failure),
}

/// One host's result, in selection order.
#[derive(Debug, Clone)]
pub struct HostResult {
    /// Host name.
    pub host: String,
    /// Address.
    pub address: String,
    /// What happened.
    pub outcome: Outcome,
}

impl HostResult {
    /// Ran and exited 0.
    pub fn ok(&self) -> bool {
        matches!(&self.outcome, Outcome::Ran { output, .. } if output.success())
    }
}

/// The command for `kubeforge exec`: a single argument is a shell script (`sh -c`, so pipes and `$VAR`
/// work as with `ssh host 'cmd | head'`); several arguments are a program and its arguments, each passed
/// literally (escaped), so `exec -- echo 'a b'` prints `a b`.
pub fn command(argv: &[String], sudo: bool, timeout: Option<Duration>) -> Result<Command> {
    let mut cmd = match argv {
        [] => return Err(Error::msg("no command given", Some("write the command after `--`"))),
        [script] => Command::shell(script.clone()),
        [program, rest @ ..] => Command::new(program.clone()).args(rest.iter().cloned()),
    };
    cmd = cmd.with_sudo(sudo);
    if let Some(t) = timeout {
        cmd = cmd.timeout(t);
    }
    Ok(cmd)
}

/// Runs `cmd` on every target in parallel (at most `executor.concurrency` at once); one result per
/// target, in the order given.
pub async fn exec(executor: &Executor, targets: &[Target], cmd: &Command) -> Vec<HostResult> {
    let plans = targets
        .iter()
        .map(|t| HostPlan { transport: t.transport.clone(), steps: vec![Step::probe("exec", cmd.clone())] })
        .collect();
    let report = executor.run("exec", plans).await;
    targets
        .iter()
        .map(|t| {
            let outcome = if let Some(h) = report.hosts.iter().find(|h| h.host == t.name) {
                let r = &h.results[0];
                Outcome::Ran { output: r.output.clone().unwrap_or_default(), elapsed: r.elapsed }
            } else if let Some(f) = report.failures.iter().find(|f| f.host == t.name) {
                Outcome::Failed(Failure::new(&t.name, &f.error))
            } else {
                Outcome::Failed(Failure {
                    kind: FailureKind::Error,
                    message: "the executor returned no result for this host".into(),
                    hint: None,
                })
            };
            HostResult { host: t.name.clone(), address: t.address.clone(), outcome }
        })
        .collect()
}

fn push_block(out: &mut String, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    out.push_str(&text);
    if !text.is_empty() && !text.ends_with('\n') {
        out.push('\n');
    }
}

/// Renders the results: per host a `=== host (address): exit N in T` header, its stdout, then its
/// stderr after a `--- host stderr` line; then the one-line summary. Returns (stdout text, stderr text
/// with one `error:` line per failed host, then each distinct hint once).
pub fn render(results: &[HostResult]) -> (String, String) {
    let mut out = String::new();
    let mut err = String::new();
    let mut hints: Vec<&str> = Vec::new();
    let (mut ok, mut failed, mut unreachable) = (Vec::new(), Vec::new(), Vec::new());
    for r in results {
        let _ = write!(out, "=== {} ({}): ", r.host, r.address);
        match &r.outcome {
            Outcome::Ran { output, elapsed } => {
                let status = match (output.status, &output.signal) {
                    (Some(s), _) => format!("exit {s}"),
                    (None, Some(sig)) => format!("killed by signal {sig}"),
                    (None, None) => "no exit status".into(),
                };
                let _ = writeln!(out, "{status} in {}", crate::report::fmt_dur(*elapsed));
                push_block(&mut out, &output.stdout);
                if !output.stderr.is_empty() {
                    let _ = writeln!(out, "--- {} stderr", r.host);
                    push_block(&mut out, &output.stderr);
                }
                if output.truncated {
                    let _ = writeln!(out, "--- {}: output truncated (only its end is shown)", r.host);
                }
                if output.success() {
                    ok.push(r.host.as_str());
                } else {
                    let _ = writeln!(err, "error: {}: {status}", r.host);
                    failed.push(r.host.as_str());
                }
            }
            Outcome::Failed(f) => {
                let _ = writeln!(out, "{}: {}", f.kind.label().to_uppercase(), f.message);
                let _ = writeln!(err, "error: {}: {}: {}", r.host, f.kind.label(), f.message);
                if let Some(h) = f.hint.as_deref().filter(|h| !hints.contains(h)) {
                    hints.push(h);
                }
                if f.kind == FailureKind::Unreachable {
                    unreachable.push(r.host.as_str());
                } else {
                    failed.push(r.host.as_str());
                }
            }
        }
    }
    let list = |v: &[&str]| if v.is_empty() { String::new() } else { format!(" ({})", v.join(", ")) };
    let _ = writeln!(
        out,
        "{} host(s): {} ok, {} failed{}, {} unreachable{}",
        results.len(),
        ok.len(),
        failed.len(),
        list(&failed),
        unreachable.len(),
        list(&unreachable),
    );
    for h in hints {
        let _ = writeln!(err, "hint: {h}");
    }
    (out, err)
}

/// Options of `kubeforge exec`.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// The inventory file.
    pub inventory: PathBuf,
    /// `--hosts` selector.
    pub hosts: String,
    /// Hosts at once.
    pub concurrency: usize,
    /// SSH options.
    pub connect: ConnectOptions,
    /// Run the command as root.
    pub sudo: bool,
    /// Per-host limit for the command.
    pub timeout: Option<Duration>,
    /// The command (see [`command`]).
    pub command: Vec<String>,
}

/// `kubeforge exec`: returns 0 when every selected host ran the command with exit status 0, 1 when any
/// failed or was unreachable, 2 for a bad selector (nothing contacted).
pub fn run_exec(o: ExecOptions) -> Result<i32> {
    let loaded = crate::inventory::load(&o.inventory)?;
    let hosts = match select(&loaded.inventory.hosts, &o.hosts) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("{}", Error::from(e).report());
            return Ok(crate::error::EXIT_INVALID_INPUT);
        }
    };
    let cmd = command(&o.command, o.sudo, o.timeout)?;
    let targets = targets(&loaded, &hosts, &o.connect)?;
    let rt = tokio::runtime::Runtime::new().map_err(|e| Error::io("starting the async runtime", e))?;
    let results = rt.block_on(async {
        let executor = Executor::new(o.concurrency.max(1), progress());
        let results = exec(&executor, &targets, &cmd).await;
        close(&targets).await;
        results
    });
    let (out, err) = render(&results);
    print!("{out}");
    eprint!("{err}");
    Ok(if results.iter().all(HostResult::ok) { 0 } else { crate::error::EXIT_FAILURE })
}

/// Closes every connection politely (in parallel).
pub async fn close(targets: &[Target]) {
    futures::future::join_all(targets.iter().filter_map(|t| t.ssh.as_ref()).map(|t| t.close())).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::fake::{FakeTransport, Reply};

    fn hosts() -> Vec<HostSpec> {
        let h = |name: &str, roles: &[&str]| HostSpec {
            name: name.into(),
            address: format!("10.0.0.{}", name.len()),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            ..Default::default()
        };
        vec![h("cp-1", &["control-plane", "etcd"]), h("worker-1", &["worker"]), h("worker-2", &["worker"])]
    }

    fn names(v: Vec<&HostSpec>) -> Vec<&str> {
        v.into_iter().map(|h| h.name.as_str()).collect()
    }

    #[test]
    fn selectors_by_name_role_and_all_keep_inventory_order() {
        let hs = hosts();
        assert_eq!(names(select(&hs, "all").unwrap()), ["cp-1", "worker-1", "worker-2"]);
        assert_eq!(names(select(&hs, "@worker").unwrap()), ["worker-1", "worker-2"]);
        assert_eq!(names(select(&hs, "role=etcd").unwrap()), ["cp-1"]);
        assert_eq!(names(select(&hs, "worker-2, cp-1,worker-2").unwrap()), ["cp-1", "worker-2"]);
        assert_eq!(names(select(&hs, "@etcd,worker-1").unwrap()), ["cp-1", "worker-1"]);
    }

    #[test]
    fn bad_selectors_are_precise_errors() {
        let hs = hosts();
        let e = select(&hs, "cp-1,workr-1").unwrap_err();
        assert_eq!(e.to_string(), "--hosts: the inventory has no host named `workr-1`");
        assert_eq!(e.hint(), "did you mean `worker-1`? Hosts: cp-1, worker-1, worker-2");
        let e = select(&hs, "zzz").unwrap_err();
        assert_eq!(e.hint(), "hosts: cp-1, worker-1, worker-2");
        assert_eq!(select(&hs, "@workers").unwrap_err(), SelectError::UnknownRole { role: "workers".into() });
        let only_cp = &hs[..1];
        assert_eq!(select(only_cp, "@worker").unwrap_err(), SelectError::EmptyRole { role: "worker".into() });
        assert_eq!(select(&hs, " , ").unwrap_err(), SelectError::Empty);
    }

    #[test]
    fn one_argument_is_a_script_several_are_an_argv() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let c = command(&s(&["uptime | cut -d, -f1"]), false, None).unwrap();
        assert_eq!(c.argv(), ["sh", "-c", "uptime | cut -d, -f1", "sh"]);
        let c = command(&s(&["echo", "a b", "$HOME"]), true, Some(Duration::from_secs(3))).unwrap();
        assert_eq!(c.to_shell(), "echo 'a b' '$HOME'");
        assert!(c.needs_sudo());
        assert_eq!(c.get_timeout(), Some(Duration::from_secs(3)));
        assert!(command(&[], false, None).is_err());
    }

    #[tokio::test]
    async fn results_are_grouped_per_host_with_a_summary() {
        let a = Arc::new(FakeTransport::new("a"));
        a.on("probe", Reply::Output { status: 0, stdout: "hello\n".into(), stderr: "warn".into() });
        let b = Arc::new(FakeTransport::new("b"));
        b.on("probe", Reply::fail(3, "boom\n"));
        let c = Arc::new(FakeTransport::new("c"));
        c.on("probe", Reply::Timeout);
        let d = Arc::new(FakeTransport::new("d"));
        d.on("probe", Reply::Disconnect);
        let e = Arc::new(FakeTransport::new("e"));
        e.on("probe", Reply::Disconnect);
        let executor = Executor::new(4, Arc::new(Silent));
        let cmd = Command::new("probe").timeout(Duration::from_secs(1));
        let targets: Vec<Target> = [("a", a), ("b", b), ("c", c), ("d", d), ("e", e)]
            .into_iter()
            .map(|(n, t)| Target::new(n, &format!("10.0.0.{n}"), t))
            .collect();
        let mut results = exec(&executor, &targets, &cmd).await;
        for r in &mut results {
            if let Outcome::Ran { elapsed, .. } = &mut r.outcome {
                *elapsed = Duration::ZERO;
            }
        }
        assert!(results[0].ok() && !results[1].ok());
        let (out, err) = render(&results);
        assert_eq!(
            out,
            "=== a (10.0.0.a): exit 0 in 0ms\nhello\n--- a stderr\nwarn\n\
             === b (10.0.0.b): exit 3 in 0ms\n--- b stderr\nboom\n\
             === c (10.0.0.c): TIMED OUT: `probe` timed out after 1s\n\
             === d (10.0.0.d): CONNECTION LOST: connection lost while running `probe`: scripted disconnect\n\
             === e (10.0.0.e): CONNECTION LOST: connection lost while running `probe`: scripted disconnect\n\
             5 host(s): 1 ok, 4 failed (b, c, d, e), 0 unreachable\n"
        );
        assert!(err.starts_with("error: b: exit 3\nerror: c: timed out: "), "{err}");
        assert_eq!(
            err.matches("hint: check that the host is up").count(),
            1,
            "one line per distinct hint: {err}"
        );
    }
}
