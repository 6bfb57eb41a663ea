//! `kubeforge check`: connectivity and facts for the selected hosts, one round trip per host. The facts
//! come from the preflight phase's own read-only facts script (so `check` and `apply` see a host the same
//! way), prefixed with two lines `check` also shows (the OS's pretty name and the systemd version), and
//! asked about the ports of the control plane, etcd and the kubelet. The preflight verdicts
//! ([`crate::phase::preflight::judge`]) are shown too, as what `apply` would say; they do not change the
//! exit code, which only says whether every host answered.

use super::{exec, Outcome, Target};
use crate::exec::Executor;
use crate::model::ClusterModel;
use crate::phase::preflight;
use crate::transport::settings::Setting;
use crate::transport::ssh::ConnectOptions;
use crate::transport::Command;
use crate::{Error, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

/// The ports `check` reports as free or in use: apiserver, etcd client and peer, kubelet,
/// controller-manager, scheduler.
pub const PORTS: [u16; 6] = [6443, 2379, 2380, 10250, 10257, 10259];

/// Facts `check` shows beyond the preflight script's. Runs before it and leaves `$@` alone.
const EXTRA_FACTS: &str = r#"
echo "os_name=$(. /etc/os-release 2>/dev/null; echo "${PRETTY_NAME:-}")"
echo "systemd_version=$(systemctl --version 2>/dev/null | sed -n '1s/^systemd \([0-9][0-9]*\).*/\1/p')"
"#;

/// The preflight facts script, taken from the command the preflight phase builds (`sh -c SCRIPT sh
/// ARGS...`), so there is exactly one facts script in the code base.
fn preflight_script(model: &ClusterModel) -> Option<String> {
    let host = model.hosts.first()?;
    match preflight::facts_command(model, host).argv().as_slice() {
        [sh, c, script, ..] if sh == "sh" && c == "-c" => Some(script.clone()),
        _ => None,
    }
}

/// The one command `check` runs on a host: read-only, as root (facts like port owners need it), with
/// `timeout` as its limit. No peer addresses are passed: `check` contacts nothing but the hosts.
pub fn facts_command(model: &ClusterModel, timeout: Duration) -> Result<Command> {
    let script = preflight_script(model).ok_or_else(|| {
        Error::msg("the preflight facts command has an unexpected shape (internal error)", None)
    })?;
    Ok(Command::shell(format!("{EXTRA_FACTS}{script}"))
        .args(PORTS.iter().map(u16::to_string))
        .arg("--")
        .sudo()
        .timeout(timeout))
}

/// systemd on the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Systemd {
    /// PID 1 is systemd.
    pub running: bool,
    /// `systemctl` is installed.
    pub installed: bool,
    /// `systemctl --version`'s number, e.g. `252`.
    pub version: Option<String>,
}

/// Swap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Swap {
    /// Any swap space is active.
    pub on: bool,
    /// Total active swap, MiB.
    pub size_mib: u64,
}

/// One port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Port {
    /// The TCP port.
    pub port: u16,
    /// Nothing listens on it.
    pub free: bool,
    /// The listening process, when known.
    pub holder: Option<String>,
}

/// What a host is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Facts {
    /// `PRETTY_NAME` from /etc/os-release (else `ID VERSION_ID`).
    pub os: String,
    /// `uname -r`.
    pub kernel: String,
    /// `uname -m`.
    pub arch: String,
    /// Online CPUs.
    pub cpus: Option<u32>,
    /// Total memory, MiB.
    pub memory_mib: Option<u64>,
    /// systemd.
    pub systemd: Systemd,
    /// Swap.
    pub swap: Swap,
    /// [`PORTS`], in order.
    pub ports: Vec<Port>,
}

impl Facts {
    /// Reads the `KEY=value` facts.
    pub fn from_map(f: &BTreeMap<String, String>) -> Facts {
        let get = |k: &str| f.get(k).cloned().unwrap_or_default();
        let os = match get("os_name") {
            n if !n.is_empty() => n,
            _ => get("os"),
        };
        let swap_kib: u64 = get("swap_kb").parse().unwrap_or(0);
        let ports = PORTS
            .iter()
            .map(|&port| {
                let held = get(&format!("port_{port}"));
                Port { port, free: held.is_empty(), holder: Some(held).filter(|h| !h.is_empty() && h != "?") }
            })
            .collect();
        Facts {
            os,
            kernel: get("kernel"),
            arch: get("arch"),
            cpus: get("cpus").parse().ok(),
            memory_mib: get("mem_mb").parse().ok(),
            systemd: Systemd {
                running: get("init") == "systemd",
                installed: get("systemctl") == "yes",
                version: Some(get("systemd_version")).filter(|v| !v.is_empty()),
            },
            swap: Swap { on: swap_kib > 0, size_mib: swap_kib / 1024 },
            ports,
        }
    }
}

/// A preflight verdict, as `apply` would report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Check name (`--ignore-preflight-errors` takes it).
    pub check: String,
    /// `apply` stops on it (unless ignored).
    pub fatal: bool,
    /// What was found.
    pub message: String,
}

/// One host's row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostCheck {
    /// Host name.
    pub host: String,
    /// Address.
    pub address: String,
    /// `ok`, or why not: `unreachable`, `connection-lost`, `timed-out`, `sudo`, `error`.
    pub status: String,
    /// The error, when not `ok`.
    pub error: Option<String>,
    /// How to fix the error, when known.
    pub hint: Option<String>,
    /// The facts, when `ok`.
    pub facts: Option<Facts>,
    /// Preflight verdicts from the facts.
    pub preflight: Vec<Finding>,
    /// Commands run on the host (1 for a host that answered).
    pub round_trips: u64,
    /// With `--show-ssh`: every effective SSH setting and where it came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshSources>,
}

/// A host's effective SSH settings with their sources (`check --show-ssh`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SshSources {
    /// Setting by setting: the host's, then each jump host's.
    pub settings: Vec<Setting>,
    /// Notes about the OpenSSH config (values kubeforge maps differently, criteria it does not evaluate).
    pub notes: Vec<String>,
}

impl HostCheck {
    /// The host answered with its facts.
    pub fn ok(&self) -> bool {
        self.status == "ok"
    }
}

/// Gathers the facts of every target in parallel and judges them against the model.
pub async fn gather(
    executor: &Executor,
    targets: &[Target],
    model: &ClusterModel,
    timeout: Duration,
) -> Result<Vec<HostCheck>> {
    let cmd = facts_command(model, timeout)?;
    let results = exec(executor, targets, &cmd).await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    Ok(results
        .into_iter()
        .zip(targets)
        .map(|(r, t)| {
            let mut row = HostCheck {
                host: r.host,
                address: r.address,
                status: "ok".into(),
                error: None,
                hint: None,
                facts: None,
                preflight: Vec::new(),
                round_trips: t.transport.stats().round_trips,
                ssh: None,
            };
            match r.outcome {
                Outcome::Ran { output, .. } if output.success() => {
                    let map = preflight::parse_facts(&output.stdout_str());
                    if let Some(hm) = model.host(&row.host) {
                        row.preflight = preflight::judge(model, hm, &map, now)
                            .into_iter()
                            .map(|f| Finding { check: f.check.into(), fatal: f.fatal, message: f.message })
                            .collect();
                    }
                    row.facts = Some(Facts::from_map(&map));
                }
                Outcome::Ran { output, .. } => {
                    row.status = "error".into();
                    row.error = Some(format!(
                        "the facts script exited with status {:?}: {}",
                        output.status,
                        output.last_stderr_lines(3).join(" | ")
                    ));
                }
                Outcome::Failed(f) => {
                    row.status = serde_json::to_value(f.kind)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_else(|| "error".into());
                    row.error = Some(f.message);
                    row.hint = f.hint;
                }
            }
            row
        })
        .collect())
}

fn systemd_cell(s: &Systemd) -> String {
    let v = s.version.clone().unwrap_or_else(|| "yes".into());
    match (s.running, s.installed) {
        (true, _) => v,
        (false, true) => format!("{v} (not PID 1)"),
        (false, false) => "no".into(),
    }
}

fn ports_cell(ports: &[Port]) -> String {
    let used: Vec<String> = ports
        .iter()
        .filter(|p| !p.free)
        .map(|p| match &p.holder {
            Some(h) => format!("{} ({h})", p.port),
            None => p.port.to_string(),
        })
        .collect();
    if used.is_empty() {
        "all free".into()
    } else {
        format!("in use: {}", used.join(", "))
    }
}

/// The table: one row per host (an unreachable host's row carries its error), then the preflight
/// findings and the summary line.
pub fn render_table(rows: &[HostCheck]) -> String {
    const HEAD: [&str; 10] =
        ["HOST", "ADDRESS", "OS", "KERNEL", "ARCH", "CPUS", "MEMORY", "SYSTEMD", "SWAP", "PORTS"];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut c = vec![r.host.clone(), r.address.clone()];
            match &r.facts {
                Some(f) => c.extend([
                    f.os.clone(),
                    f.kernel.clone(),
                    f.arch.clone(),
                    f.cpus.map(|n| n.to_string()).unwrap_or_else(|| "?".into()),
                    f.memory_mib.map(|m| format!("{m} MiB")).unwrap_or_else(|| "?".into()),
                    systemd_cell(&f.systemd),
                    if f.swap.on { format!("on ({} MiB)", f.swap.size_mib) } else { "off".into() },
                    ports_cell(&f.ports),
                ]),
                None => c.push(format!(
                    "{}: {}",
                    r.status.replace('-', " ").to_uppercase(),
                    r.error.as_deref().unwrap_or("")
                )),
            }
            c
        })
        .collect();
    let mut width: Vec<usize> = HEAD.iter().map(|h| h.len()).collect();
    for c in cells.iter().filter(|c| c.len() == HEAD.len()) {
        for (w, cell) in width.iter_mut().zip(c) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for c in cells.iter().filter(|c| c.len() < HEAD.len()) {
        width[0] = width[0].max(c[0].chars().count());
        width[1] = width[1].max(c[1].chars().count());
    }
    let line = |c: &[String]| {
        let last = c.len() - 1;
        let mut s = String::new();
        for (i, cell) in c.iter().enumerate() {
            if i == last {
                s.push_str(cell);
            } else {
                let _ = write!(s, "{cell:<w$}  ", w = width[i]);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&HEAD.map(String::from));
    for c in &cells {
        out.push_str(&line(c));
    }
    let findings: Vec<(&str, &Finding)> =
        rows.iter().flat_map(|r| r.preflight.iter().map(move |f| (r.host.as_str(), f))).collect();
    if !findings.is_empty() {
        out.push_str("\npreflight (what `kubeforge apply` would report):\n");
        for (host, f) in &findings {
            let level = if f.fatal { "error" } else { "warning" };
            let _ = writeln!(out, "  {host}: {level} [{}] {}", f.check, f.message);
        }
    }
    let reachable = rows.iter().filter(|r| r.ok()).count();
    let errors = findings.iter().filter(|(_, f)| f.fatal).count();
    let _ = writeln!(
        out,
        "\n{} host(s): {reachable} answered, {} did not; preflight: {errors} error(s), {} warning(s)",
        rows.len(),
        rows.len() - reachable,
        findings.len() - errors,
    );
    out
}

/// The `--show-ssh` section: per host, every effective SSH setting, its value and where it came from
/// (the inventory, an OpenSSH config file and line, a default), then the notes about the config.
pub fn render_ssh_sources(rows: &[HostCheck]) -> String {
    let mut out = String::from("\nssh settings (value and where it comes from):\n");
    for r in rows {
        let Some(src) = &r.ssh else { continue };
        let _ = writeln!(out, "  {}", r.host);
        let label = |s: &Setting| {
            if s.hop.is_empty() {
                s.setting.clone()
            } else {
                format!("{} {}", s.hop, s.setting)
            }
        };
        let w0 = src.settings.iter().map(|s| label(s).chars().count()).max().unwrap_or(0);
        let w1 = src.settings.iter().map(|s| s.value.chars().count()).max().unwrap_or(0);
        for s in &src.settings {
            let line = format!("    {:<w0$}  {:<w1$}  {}", label(s), s.value, s.source);
            let _ = writeln!(out, "{}", line.trim_end());
        }
        for n in &src.notes {
            let _ = writeln!(out, "    note: {n}");
        }
    }
    out
}

/// How `check` prints (the format every reporting command shares).
pub use crate::output::Format as OutputFormat;

/// Options of `kubeforge check`.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// The inventory file.
    pub inventory: PathBuf,
    /// `--hosts` selector.
    pub hosts: String,
    /// Hosts at once.
    pub concurrency: usize,
    /// SSH options.
    pub connect: ConnectOptions,
    /// Limit for the facts script.
    pub timeout: Duration,
    /// Table or JSON.
    pub output: OutputFormat,
    /// Also show every effective SSH setting and where it came from.
    pub show_ssh: bool,
}

/// The JSON document.
#[derive(Debug, Serialize)]
struct Document<'a> {
    cluster: &'a str,
    hosts: &'a [HostCheck],
}

/// `kubeforge check`: 0 when every selected host answered, 1 otherwise, 2 for a bad selector.
pub fn run(o: CheckOptions) -> Result<i32> {
    let loaded = crate::inventory::load(&o.inventory)?;
    let model = ClusterModel::derive(&loaded);
    let hosts = match super::select(&loaded.inventory.hosts, &o.hosts) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("{}", Error::from(e).report());
            return Ok(crate::error::EXIT_INVALID_INPUT);
        }
    };
    let targets = super::targets(&loaded, &hosts, &o.connect)?;
    let rt = tokio::runtime::Runtime::new().map_err(|e| Error::io("starting the async runtime", e))?;
    let mut rows = rt.block_on(async {
        let executor = Executor::new(o.concurrency.max(1), super::progress());
        let rows = gather(&executor, &targets, &model, o.timeout).await;
        super::close(&targets).await;
        rows
    })?;
    if o.show_ssh {
        for (row, h) in rows.iter_mut().zip(&hosts) {
            let r = crate::transport::settings::resolve(&loaded.inventory, &loaded.dir, h, &o.connect)?;
            row.ssh = Some(SshSources { settings: r.settings, notes: r.notes });
        }
    }
    match o.output {
        OutputFormat::Json | OutputFormat::Yaml => {
            crate::output::print(o.output, "Check", &Document { cluster: &model.name, hosts: &rows })?;
        }
        OutputFormat::Table => {
            print!("{}", render_table(&rows));
            if o.show_ssh {
                print!("{}", render_ssh_sources(&rows));
            }
            let mut hints: Vec<&str> = Vec::new();
            for r in rows.iter().filter(|r| !r.ok()) {
                eprintln!("error: {}: {}: {}", r.host, r.status, r.error.as_deref().unwrap_or(""));
                if let Some(h) = r.hint.as_deref().filter(|h| !hints.contains(h)) {
                    hints.push(h);
                }
            }
            for h in hints {
                eprintln!("hint: {h}");
            }
        }
    }
    Ok(if rows.iter().all(HostCheck::ok) { 0 } else { crate::error::EXIT_FAILURE })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::local::LocalTransport;
    use crate::transport::Transport;
    use std::sync::Arc;

    fn model() -> ClusterModel {
        let text = "cluster: {name: c, kubernetesVersion: v1.35.7}\nhosts:\n\
            - {name: cp1, address: 127.0.0.1, roles: [control-plane, etcd]}\n\
            - {name: w1, address: 127.0.0.2, roles: [worker]}\n";
        ClusterModel::derive(&crate::inventory::parse(std::path::Path::new("t.yaml"), text).unwrap())
    }

    #[test]
    fn the_command_is_the_preflight_script_with_fixed_ports_and_no_peers() {
        let m = model();
        let cmd = facts_command(&m, Duration::from_secs(5)).unwrap();
        let argv = cmd.argv();
        let preflight_argv = preflight::facts_command(&m, &m.hosts[0]).argv();
        assert!(argv[2].ends_with(&preflight_argv[2]), "the preflight script is reused verbatim");
        assert_eq!(argv[3..], ["sh", "6443", "2379", "2380", "10250", "10257", "10259", "--"]);
        assert!(cmd.needs_sudo());
        assert!(!cmd.to_string().contains("127.0.0.2"), "no peers: check only talks to the hosts");
    }

    #[test]
    fn facts_are_read_from_key_value_lines() {
        let text = "os=debian 12\nos_name=Debian GNU/Linux 12 (bookworm)\nkernel=6.1.0\narch=x86_64\n\
            init=bash\nsystemctl=yes\nsystemd_version=252\ncpus=2\nmem_mb=3900\nswap_kb=2097148\n\
            port_6443=nginx\nport_2379=\nport_2380=?\nport_10250=\nport_10257=\nport_10259=\n";
        let f = Facts::from_map(&preflight::parse_facts(text));
        assert_eq!(f.os, "Debian GNU/Linux 12 (bookworm)");
        assert_eq!((f.cpus, f.memory_mib), (Some(2), Some(3900)));
        assert_eq!(f.systemd, Systemd { running: false, installed: true, version: Some("252".into()) });
        assert_eq!(f.swap, Swap { on: true, size_mib: 2047 });
        assert_eq!(ports_cell(&f.ports), "in use: 6443 (nginx), 2380");
        assert_eq!(systemd_cell(&f.systemd), "252 (not PID 1)");
    }

    #[tokio::test]
    async fn one_round_trip_per_host_and_a_row_for_a_host_that_fails() {
        let m = model();
        let local: Arc<dyn Transport> = Arc::new(LocalTransport::new("cp1"));
        let broken = Arc::new(crate::transport::fake::FakeTransport::new("w1"));
        broken.on("sh -c", crate::transport::fake::Reply::Disconnect);
        let targets = vec![Target::new("cp1", "127.0.0.1", local), Target::new("w1", "127.0.0.2", broken)];
        let ex = Executor::new(2, Arc::new(crate::report::Silent));
        let rows = gather(&ex, &targets, &m, Duration::from_secs(30)).await.unwrap();
        assert_eq!(rows[0].status, "ok", "{:?}", rows[0]);
        assert_eq!(rows[0].round_trips, 1);
        let f = rows[0].facts.as_ref().unwrap();
        let uname = |a: &str| {
            String::from_utf8(std::process::Command::new("uname").arg(a).output().unwrap().stdout).unwrap()
        };
        assert_eq!(f.kernel, uname("-r").trim());
        assert_eq!(f.arch, uname("-m").trim());
        assert!(f.cpus.unwrap() >= 1 && f.memory_mib.unwrap() > 0 && !f.os.is_empty(), "{f:?}");
        assert_eq!(f.ports.len(), PORTS.len());
        assert_eq!(rows[1].status, "connection-lost");
        let table = render_table(&rows);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("HOST  ADDRESS    OS"), "{table}");
        assert!(
            lines[2].starts_with("w1    127.0.0.2  CONNECTION LOST: connection lost while running"),
            "{table}"
        );
        assert!(lines.last().unwrap().starts_with("2 host(s): 1 answered, 1 did not;"), "{table}");
    }
}
