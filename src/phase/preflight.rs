//! `preflight`: checks every host before anything is installed, and reports every problem of every host
//! at once. One read-only script per host gathers the facts; the verdicts are made here, so the rules are
//! unit-testable and `--ignore-preflight-errors` can turn named checks into warnings.

use super::{Context, HostWork, Phase};
use crate::exec::{Step, StepError};
use crate::model::{ClusterModel, Component, HostModel};
use crate::transport::{Command, Transport};

/// Every preflight check's name: what `--ignore-preflight-errors` accepts (besides `all`).
pub const CHECKS: &[&str] = &[
    "arch",
    "cpu",
    "hostname",
    "kernel-modules",
    "memory",
    "network",
    "packages",
    "ports",
    "swap",
    "systemd",
    "time",
];

/// Phase `preflight`.
pub struct Preflight;

/// Ports each component listens on, and the process names allowed to hold them already (a re-run).
const PORTS: &[(Component, u16, &str)] = &[
    (Component::KubeApiserver, 6443, "kube-apiserver"),
    (Component::Etcd, 2379, "etcd"),
    (Component::Etcd, 2380, "etcd"),
    (Component::Etcd, 2381, "etcd"),
    (Component::KubeControllerManager, 10257, "kube-controller"),
    (Component::KubeScheduler, 10259, "kube-scheduler"),
    (Component::Kubelet, 10250, "kubelet"),
    (Component::Kubelet, 10248, "kubelet"),
    (Component::KubeProxy, 10256, "kube-proxy"),
    (Component::ApiLoadBalancer, crate::model::LOCAL_LB_PORT, "kubeforge"),
];

/// The facts script: `KEY=value` lines. Arguments: ports to inspect, `--`, peer addresses to reach.
const FACTS: &str = r#"
echo "os=$(. /etc/os-release 2>/dev/null; echo "${ID:-unknown} ${VERSION_ID:-}")"
echo "arch=$(uname -m)"
echo "kernel=$(uname -r)"
echo "init=$(cat /proc/1/comm 2>/dev/null)"
echo "cpus=$(nproc)"
echo "mem_mb=$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)"
echo "swap_kb=$(awk 'NR>1 {s+=$3} END {print s+0}' /proc/swaps)"
echo "epoch=$(date +%s)"
echo "hostname=$(hostname)"
{ [ -f /var/lib/kubeforge/cluster.json ] || [ -f /etc/kubernetes/pki/ca.crt ]; } && echo "marked=yes" || echo "marked=no"
getent hosts "$(hostname)" >/dev/null 2>&1 && echo "hostname_resolves=yes" || echo "hostname_resolves=no"
for m in overlay br_netfilter; do
  if [ -d "/sys/module/$m" ] || modprobe -n "$m" >/dev/null 2>&1; then echo "module_$m=yes"; else echo "module_$m=no"; fi
done
for b in iptables conntrack mount; do command -v "$b" >/dev/null 2>&1 && echo "bin_$b=yes" || echo "bin_$b=no"; done
command -v systemctl >/dev/null 2>&1 && echo "systemctl=yes" || echo "systemctl=no"
listening=$(ss -Hltnp 2>/dev/null)
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  l=$(printf '%s\n' "$listening" | awk -v p=":$1" 'substr($4, length($4) - length(p) + 1) == p { print; exit }')
  owner=$(printf '%s\n' "$l" | sed -n 's/.*users:(("\([^"]*\)".*/\1/p')
  if [ -n "$owner" ]; then echo "port_$1=$owner"; elif [ -n "$l" ]; then echo "port_$1=?"; else echo "port_$1="; fi
  shift
done
shift
for peer in "$@"; do
  if timeout 5 bash -c "exec 3<>/dev/tcp/$peer/22" 2>/dev/null; then echo "peer_$peer=yes"; else echo "peer_$peer=no"; fi
done
"#;

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Check name (what `--ignore-preflight-errors` names).
    pub check: &'static str,
    /// Error (stops the run) or only a warning.
    pub fatal: bool,
    /// What was found and how to fix it.
    pub message: String,
}

/// Judges a host's facts. `local_epoch` is the admin machine's clock when the facts were read.
pub fn judge(
    model: &ClusterModel,
    host: &HostModel,
    facts: &std::collections::BTreeMap<String, String>,
    local_epoch: i64,
) -> Vec<Finding> {
    let mut f = Vec::new();
    let get = |k: &str| facts.get(k).map(String::as_str).unwrap_or("");
    let mut add = |check: &'static str, fatal: bool, message: String| {
        debug_assert!(CHECKS.contains(&check), "preflight check `{check}` is missing from CHECKS");
        f.push(Finding { check, fatal, message })
    };
    if get("init") != "systemd" || get("systemctl") != "yes" {
        add(
            "systemd",
            true,
            format!(
                "PID 1 is `{}`, not systemd; kubeforge runs every component as a systemd service",
                get("init")
            ),
        );
    }
    let arch = match get("arch") {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "ppc64le" => "ppc64le",
        "s390x" => "s390x",
        other => other,
    };
    if arch != host.arch {
        add("arch", true, format!("the machine is {arch} but the inventory says `arch: {}`", host.arch));
    }
    let cpus: u32 = get("cpus").parse().unwrap_or(0);
    if host.roles.control_plane && cpus < 2 {
        add("cpu", true, format!("{cpus} CPU(s); a control plane needs at least 2"));
    }
    let mem: u64 = get("mem_mb").parse().unwrap_or(0);
    let need = if host.roles.control_plane { 1700 } else { 900 };
    if mem < need {
        add("memory", true, format!("{mem} MiB of memory; this host's roles need at least {need} MiB"));
    }
    if get("swap_kb") != "0" && !get("swap_kb").is_empty() {
        add(
            "swap",
            false,
            "swap is on; os-prep will turn it off (the kubelet refuses to run with swap)".into(),
        );
    }
    for m in ["overlay", "br_netfilter"] {
        if facts.get(&format!("module_{m}")).map(String::as_str) != Some("yes") {
            add("kernel-modules", true, format!("kernel module `{m}` is not available"));
        }
    }
    if host.is_node {
        for b in ["iptables", "conntrack"] {
            if facts.get(&format!("bin_{b}")).map(String::as_str) != Some("yes") {
                add(
                    "packages",
                    true,
                    format!("`{b}` is not installed; kube-proxy needs it (install the `{b}` package)"),
                );
            }
        }
    }
    if let Ok(remote) = get("epoch").parse::<i64>() {
        let skew = (remote - local_epoch).abs();
        if skew > 30 {
            add("time", true, format!("the clock is {skew} s off the admin machine's; certificates and etcd need synchronized time (enable NTP)"));
        }
    }
    if get("hostname_resolves") != "yes" {
        add(
            "hostname",
            false,
            format!(
                "the hostname `{}` does not resolve on the host itself (add it to /etc/hosts)",
                get("hostname")
            ),
        );
    }
    for (component, port, owner) in PORTS {
        if !host.components.contains(component) {
            continue;
        }
        let held = get(&format!("port_{port}"));
        if !held.is_empty() && !held.starts_with(owner) {
            add(
                "ports",
                true,
                format!("port {port} (for {}) is already in use by `{held}`", component.unit()),
            );
        } else if !held.is_empty() && get("marked") == "no" {
            // The right program, but not one kubeforge installed: the host carries no cluster marker (the
            // identity check passed it as a new host), so this is another installation's.
            add(
                "ports",
                true,
                format!(
                    "port {port} (for {}) is held by `{held}`, which kubeforge did not install (the host carries no {}): another installation's",
                    component.unit(),
                    crate::identity::MARKER_PATH
                ),
            );
        }
    }
    for peer in model.hosts.iter().filter(|p| p.name != host.name) {
        if facts.get(&format!("peer_{}", peer.internal_ip)).map(String::as_str) == Some("no") {
            add(
                "network",
                true,
                format!("cannot reach {} at {} (TCP 22) from this host", peer.name, peer.internal_ip),
            );
        }
    }
    f
}

/// Parses `KEY=value` lines.
pub fn parse_facts(stdout: &str) -> std::collections::BTreeMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// The facts command for `host`.
pub fn facts_command(model: &ClusterModel, host: &HostModel) -> Command {
    let ports = PORTS.iter().filter(|(c, ..)| host.components.contains(c)).map(|(_, p, _)| p.to_string());
    let peers = model.hosts.iter().filter(|p| p.name != host.name).map(|p| p.internal_ip.to_string());
    Command::shell(FACTS).args(ports).arg("--").args(peers).sudo()
}

impl Phase for Preflight {
    fn id(&self) -> &'static str {
        "preflight"
    }
    fn title(&self) -> &'static str {
        "Check every host before installing"
    }
    fn at_plan_time(&self) -> bool {
        true
    }
    fn work(&self, ctx: &Context<'_>, host: &HostModel) -> Result<Option<HostWork>, crate::Error> {
        let model = ctx.model.clone();
        let host = host.clone();
        let ignore = ctx.material.options.ignore_preflight.clone();
        Ok(Some(HostWork::Step(Step::custom("preflight checks", move |t: &dyn Transport| {
            Box::pin(async move {
                let cmd = facts_command(&model, &host);
                let out = t.exec(&cmd).await?;
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                if !out.success() {
                    return Err(StepError::Command {
                        command: "gather facts".into(),
                        status: out.status,
                        output: out,
                    });
                }
                let findings = judge(&model, &host, &parse_facts(&out.stdout_str()), now);
                let ignored = |c: &str| ignore.iter().any(|i| i == "all" || i == c);
                let mut errors = Vec::new();
                for fnd in &findings {
                    if fnd.fatal && !ignored(fnd.check) {
                        errors.push(format!("[{}] {}", fnd.check, fnd.message));
                    } else {
                        eprintln!("[preflight] {}: warning [{}] {}", host.name, fnd.check, fnd.message);
                    }
                }
                if errors.is_empty() {
                    Ok(false)
                } else {
                    Err(StepError::Other(format!(
                        "{} preflight check(s) failed:\n        {}\n      (skip a check with --ignore-preflight-errors=NAME)",
                        errors.len(),
                        errors.join("\n        ")
                    )))
                }
            })
        }))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> ClusterModel {
        let text = "cluster: {name: c, kubernetesVersion: v1.35.7}\nhosts:\n\
            - {name: cp1, address: 10.0.0.1, roles: [control-plane, etcd]}\n\
            - {name: w1, address: 10.0.0.2, roles: [worker]}\n";
        let loaded = crate::inventory::parse(std::path::Path::new("t.yaml"), text).unwrap();
        ClusterModel::derive(&loaded)
    }

    const GOOD: &str = "os=debian 13\narch=x86_64\ninit=systemd\nsystemctl=yes\ncpus=2\nmem_mb=3900\nswap_kb=0\nepoch=1000\n\
        hostname=cp1\nhostname_resolves=yes\nmodule_overlay=yes\nmodule_br_netfilter=yes\nbin_iptables=yes\nbin_conntrack=yes\n\
        port_6443=\nport_2379=\nport_10250=kubelet\npeer_10.0.0.2=yes\n";

    #[test]
    fn a_good_host_passes_and_our_own_services_may_hold_their_ports() {
        let m = model();
        let f = judge(&m, m.host("cp1").unwrap(), &parse_facts(GOOD), 1010);
        assert!(f.is_empty(), "{f:?}");
    }

    #[test]
    fn our_program_on_its_port_on_a_host_kubeforge_never_marked_is_another_installations() {
        let m = model();
        let f = judge(&m, m.host("cp1").unwrap(), &parse_facts(&format!("{GOOD}marked=no\n")), 1010);
        assert!(
            f.iter().any(|p| p.check == "ports" && p.message.contains("kubeforge did not install")),
            "{f:?}"
        );
        let f = judge(&m, m.host("cp1").unwrap(), &parse_facts(&format!("{GOOD}marked=yes\n")), 1010);
        assert!(!f.iter().any(|p| p.check == "ports"), "{f:?}");
    }

    #[test]
    fn every_problem_is_reported_with_its_check_name() {
        let m = model();
        let bad = GOOD
            .replace("cpus=2", "cpus=1")
            .replace("port_6443=", "port_6443=nginx")
            .replace("epoch=1000", "epoch=5000")
            .replace("module_br_netfilter=yes", "module_br_netfilter=no")
            .replace("peer_10.0.0.2=yes", "peer_10.0.0.2=no")
            .replace("swap_kb=0", "swap_kb=1024");
        let f = judge(&m, m.host("cp1").unwrap(), &parse_facts(&bad), 1000);
        let checks: Vec<_> = f.iter().map(|x| (x.check, x.fatal)).collect();
        assert_eq!(
            checks,
            [
                ("cpu", true),
                ("swap", false),
                ("kernel-modules", true),
                ("time", true),
                ("ports", true),
                ("network", true)
            ]
        );
        assert!(f.iter().any(|x| x.message == "port 6443 (for kube-apiserver) is already in use by `nginx`"));
    }

    #[test]
    fn workers_need_less_and_the_facts_command_never_embeds_values_in_the_script() {
        let m = model();
        let w = m.host("w1").unwrap();
        let facts = GOOD
            .replace("cpus=2", "cpus=1")
            .replace("mem_mb=3900", "mem_mb=1000")
            .replace("peer_10.0.0.2", "peer_10.0.0.1");
        assert!(judge(&m, w, &parse_facts(&facts), 1000).is_empty());
        let cmd = facts_command(&m, w).to_string();
        assert!(cmd.contains("10250") && cmd.contains("10.0.0.1") && !cmd.contains("6443 "), "{cmd}");
    }

    #[tokio::test]
    async fn the_facts_script_runs_in_a_real_shell() {
        // Loopback peers only: tests never send traffic to other addresses.
        let text = "cluster: {name: c, kubernetesVersion: v1.35.7}\nhosts:\n\
            - {name: cp1, address: 127.0.0.1, roles: [control-plane, etcd]}\n\
            - {name: w1, address: 127.0.0.2, roles: [worker]}\n";
        let m = ClusterModel::derive(&crate::inventory::parse(std::path::Path::new("t.yaml"), text).unwrap());
        let t = crate::transport::local::LocalTransport::new("local");
        // A port held by this test process is reported with its owner; 10256 (kube-proxy's) is free.
        let held = std::net::TcpListener::bind("127.0.0.1:10250").ok();
        let out = t.exec(&facts_command(&m, m.host("w1").unwrap())).await.unwrap();
        assert!(out.success(), "{}", out.stderr_str());
        let facts = parse_facts(&out.stdout_str());
        for key in ["arch", "cpus", "mem_mb", "epoch", "module_overlay", "port_10250", "peer_127.0.0.1"] {
            assert!(facts.contains_key(key), "missing {key}: {facts:?}");
        }
        if held.is_some() && which("ss") {
            assert!(!facts["port_10250"].is_empty(), "{facts:?}");
            assert_eq!(facts.get("port_10256").map(String::as_str), Some(""), "{facts:?}");
        }
    }

    fn which(program: &str) -> bool {
        std::process::Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}
