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
    "firewall",
    "hostname",
    "kernel-modules",
    "memory",
    "network",
    "os",
    "packages",
    "ports",
    "selinux",
    "swap",
    "systemd",
    "time",
];

/// Phase `preflight`.
pub struct Preflight;

/// What differs per OS family, in one place: the `/etc/os-release` IDs of each family, how kubeforge knows
/// it works there, and the package that carries `iptables`/`conntrack` when they are missing. kubeforge
/// installs static binaries and systemd units and uses no package manager, so the families differ in what
/// guards the host (SELinux, firewalld: checked below for every family) more than in what is installed.
pub const OS_FAMILIES: &[OsFamily] = &[
    OsFamily {
        name: "Debian",
        ids: &["debian"],
        tested: true,
        packages: "apt-get install iptables conntrack",
    },
    OsFamily {
        name: "Ubuntu",
        ids: &["ubuntu"],
        tested: false,
        packages: "apt-get install iptables conntrack",
    },
    OsFamily {
        name: "RHEL family",
        ids: &["rhel", "centos", "rocky", "almalinux", "ol", "fedora"],
        tested: false,
        packages: "dnf install iptables-nft conntrack-tools",
    },
];

/// One OS family (see [`OS_FAMILIES`]).
#[derive(Debug)]
pub struct OsFamily {
    /// For people.
    pub name: &'static str,
    /// `ID` values of `/etc/os-release`.
    pub ids: &'static [&'static str],
    /// Run end to end on the lab's VMs (otherwise only the fake-transport tests know it).
    pub tested: bool,
    /// How the packages kube-proxy needs are installed there.
    pub packages: &'static str,
}

/// The family of an `/etc/os-release` `ID`.
pub fn os_family(id: &str) -> Option<&'static OsFamily> {
    OS_FAMILIES.iter().find(|f| f.ids.contains(&id))
}

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
echo "selinux=$(cat /sys/fs/selinux/enforce 2>/dev/null)"
echo "firewalld=$(systemctl is-active firewalld 2>/dev/null)"
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
echo "cgroup_fs=$(stat -fc %T /sys/fs/cgroup 2>/dev/null)"
echo "containerd_version=$(containerd --version 2>/dev/null | awk '{print $3}')"
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

/// What a Kubernetes minor needs of its hosts, as data: each rule applies from its minor on.
#[derive(Debug, Clone, Copy)]
pub struct MinorRule {
    /// The check name (`--ignore-preflight-errors`).
    pub check: &'static str,
    /// The first minor the rule applies to.
    pub from_minor: u32,
    /// What the rule refuses.
    pub refuses: Refuses,
    /// Why, with the upstream source.
    pub reason: &'static str,
    /// How to fix the host.
    pub fix: &'static str,
}

/// What a [`MinorRule`] refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refuses {
    /// A host whose `/sys/fs/cgroup` is not the unified cgroup v2 hierarchy.
    CgroupV1,
    /// A node whose containerd (the one that will run after the install) is older than this major.
    ContainerdBelow(u32),
}

/// The rules, one row per upstream change (see docs/reference/k8s-1.36-1.37.md).
pub const MINOR_RULES: &[MinorRule] = &[
    MinorRule {
        check: "cgroups",
        from_minor: 35,
        refuses: Refuses::CgroupV1,
        reason: "the kubelet of v1.35 and later refuses to start on a cgroup v1 host (`failCgroupV1` defaults to true, KEP-5573, kubernetes PR 134298)",
        fix: "boot the host with the unified cgroup v2 hierarchy (systemd.unified_cgroup_hierarchy=1 on the kernel command line; Debian 11 and later default to it)",
    },
    MinorRule {
        check: "containerd-version",
        from_minor: 36,
        refuses: Refuses::ContainerdBelow(2),
        reason: "kubeforge policy: containerd 1.7 is at the end of its support and kubeforge installs Kubernetes v1.36 and later on containerd 2.x only (upstream deferred the kubelet's own removal of containerd 1.7 support to v1.38, kubernetes PRs 136846 and 139121)",
        fix: "let kubeforge install containerd 2.x from the release source (leave `cluster.components.containerd` unset or set a 2.x release, and use a release source that has it), or upgrade the host's containerd package to 2.x",
    },
];

/// The major of a `containerd --version` word: `v2.1.9` → 2, Debian's `1.7.24~ds1` → 1.
pub fn containerd_major(word: &str) -> Option<u32> {
    word.trim_start_matches('v').split(['.', '~', '-', '+']).next()?.parse().ok()
}

/// The rules of [`MINOR_RULES`] and the upgrade-source policy, against a host's facts. `release_containerd`
/// is the containerd version the release source installs on this host (None: the host's own runs).
pub fn judge_version_rules(
    model: &ClusterModel,
    host: &HostModel,
    facts: &std::collections::BTreeMap<String, String>,
    release_containerd: Option<&str>,
) -> Vec<Finding> {
    let mut f = Vec::new();
    let k8s = model.versions.kubernetes;
    let get = |k: &str| facts.get(k).map(String::as_str).unwrap_or("");
    if crate::inventory::validate::minor_support(&k8s)
        == crate::inventory::validate::MinorSupport::UpgradeSourceOnly
        && get("marked") == "no"
    {
        f.push(Finding {
            check: "kubernetes-version",
            fatal: true,
            message: format!(
                "Kubernetes {k8s} is out of upstream support and this host runs no cluster: kubeforge installs {} on new hosts and accepts v1.{} only to upgrade a running cluster from (install a supported version, or upgrade the cluster first and add the host afterwards)",
                crate::inventory::validate::supported_range(),
                k8s.minor
            ),
        });
    }
    for rule in MINOR_RULES.iter().filter(|r| k8s.major == 1 && k8s.minor >= r.from_minor) {
        let problem = match rule.refuses {
            Refuses::CgroupV1 => {
                let fs = get("cgroup_fs");
                (!fs.is_empty() && fs != "cgroup2fs")
                    .then(|| format!("the host uses cgroup v1 (/sys/fs/cgroup is `{fs}`)"))
            }
            Refuses::ContainerdBelow(major) if host.is_node => {
                let (version, whose) = match release_containerd {
                    Some(v) => (v, "the release source's"),
                    None => (get("containerd_version"), "the host's"),
                };
                containerd_major(version)
                    .filter(|m| *m < major)
                    .map(|_| format!("{whose} containerd is {version}, older than {major}.x"))
            }
            Refuses::ContainerdBelow(_) => None,
        };
        if let Some(p) = problem {
            f.push(Finding {
                check: rule.check,
                fatal: true,
                message: format!("{p}, refused for Kubernetes {k8s}: {}. Fix: {}", rule.reason, rule.fix),
            });
        }
    }
    f
}

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
    let os_id = get("os").split_whitespace().next().unwrap_or("unknown");
    let family = os_family(os_id);
    match family {
        Some(f) if f.tested => {}
        Some(f) => add(
            "os",
            false,
            format!(
                "{} ({}) is not run on kubeforge's test VMs (only Debian is); its differences are covered by preflight's checks only",
                f.name,
                get("os").trim()
            ),
        ),
        None => add(
            "os",
            false,
            format!("`{}` is a distribution kubeforge knows nothing of: it needs systemd, iptables, conntrack and the kernel modules checked here", get("os").trim()),
        ),
    }
    if get("selinux") == "1" {
        add(
            "selinux",
            true,
            "SELinux is enforcing: kubeforge installs no SELinux policy for its binaries and units, so containerd and the kubelet would be denied; run `setenforce 0` and set SELINUX=permissive in /etc/selinux/config (or pass --ignore-preflight-errors=selinux when you manage the policy yourself)".into(),
        );
    }
    if get("firewalld") == "active" {
        add(
            "firewall",
            true,
            "firewalld is active and would drop the cluster's ports (6443, 2379-2381, 10250, the pod and service networks); stop and disable it, or open those ports and pass --ignore-preflight-errors=firewall".into(),
        );
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
                    format!(
                        "`{b}` is not installed; kube-proxy needs it ({})",
                        family.map(|f| format!("`{}`", f.packages)).unwrap_or("install its package".into())
                    ),
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
        let release_containerd = ctx
            .material
            .artifacts
            .get(&(crate::artifacts::Component::Containerd, host.arch.clone()))
            .map(|a| a.requirement.version.clone());
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
                let facts = parse_facts(&out.stdout_str());
                let mut findings = judge(&model, &host, &facts, now);
                findings.extend(judge_version_rules(&model, &host, &facts, release_containerd.as_deref()));
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
    fn each_os_family_is_judged_by_the_one_table() {
        let m = model();
        let judged = |facts: String| judge(&m, m.host("cp1").unwrap(), &parse_facts(&facts), 1010);
        // Debian: run on the test VMs, nothing to say.
        assert!(judged(GOOD.to_string()).is_empty());
        // Ubuntu: a warning that it is not run here, nothing fatal.
        let f = judged(GOOD.replace("os=debian 13", "os=ubuntu 24.04"));
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(!f[0].fatal && f[0].check == "os" && f[0].message.contains("Ubuntu (ubuntu 24.04)"), "{f:?}");
        // Rocky with SELinux enforcing and firewalld: both refused, with the way out; its packages named.
        let rocky =
            GOOD.replace("os=debian 13", "os=rocky 9.4").replace("bin_conntrack=yes", "bin_conntrack=no")
                + "selinux=1\nfirewalld=active\n";
        let f = judged(rocky);
        let by = |c: &str| f.iter().find(|x| x.check == c).unwrap_or_else(|| panic!("{c}: {f:?}"));
        assert!(by("selinux").fatal && by("selinux").message.contains("setenforce 0"));
        assert!(
            by("firewall").fatal && by("firewall").message.contains("--ignore-preflight-errors=firewall")
        );
        assert!(!by("os").fatal && by("os").message.contains("RHEL family"));
        assert!(by("packages").message.contains("dnf install iptables-nft conntrack-tools"), "{f:?}");
        // SELinux permissive (0) or absent, firewalld inactive: nothing.
        assert!(judged(GOOD.to_string() + "selinux=0\nfirewalld=inactive\n").is_empty());
        // An unknown distribution: a warning naming what it needs.
        let f = judged(GOOD.replace("os=debian 13", "os=nixos 24.11"));
        assert!(
            f.iter().any(|x| x.check == "os" && !x.fatal && x.message.contains("knows nothing of")),
            "{f:?}"
        );
    }

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

    fn model_at(version: &str) -> ClusterModel {
        let text = format!(
            "cluster: {{name: c, kubernetesVersion: {version}}}\nhosts:\n\
            - {{name: cp1, address: 10.0.0.1, roles: [control-plane, etcd]}}\n\
            - {{name: w1, address: 10.0.0.2, roles: [worker]}}\n"
        );
        ClusterModel::derive(&crate::inventory::parse(std::path::Path::new("t.yaml"), &text).unwrap())
    }

    fn rules(version: &str, host: &str, facts: &str, release: Option<&str>) -> Vec<(&'static str, String)> {
        let m = model_at(version);
        judge_version_rules(&m, m.host(host).unwrap(), &parse_facts(facts), release)
            .into_iter()
            .inspect(|f| assert!(f.fatal))
            .map(|f| (f.check, f.message))
            .collect()
    }

    #[test]
    fn containerd_1_is_refused_from_v1_36_with_the_reason_and_the_fix() {
        let debian = "containerd_version=1.7.24~ds1\ncgroup_fs=cgroup2fs\nmarked=no\n";
        // v1.35 still runs on the distribution's containerd 1.7.
        assert!(rules("v1.35.8", "w1", debian, None).is_empty());
        let f = rules("v1.36.4", "w1", debian, None);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].0, "containerd-version");
        assert!(f[0].1.starts_with("the host's containerd is 1.7.24~ds1, older than 2.x, refused for Kubernetes v1.36.4: kubeforge policy"), "{}", f[0].1);
        assert!(
            f[0].1.contains("deferred") && f[0].1.contains("Fix: let kubeforge install containerd 2.x"),
            "{}",
            f[0].1
        );
        // The release source's containerd 2 replaces the host's 1.7: nothing to refuse.
        assert!(rules("v1.37.1", "w1", debian, Some("v2.1.9")).is_empty());
        // A release source pinned to 1.7 is refused however new the host's is.
        let f = rules("v1.37.1", "cp1", "containerd_version=v2.1.9\nmarked=no\n", Some("v1.7.29"));
        assert!(f[0].1.starts_with("the release source's containerd is v1.7.29"), "{f:?}");
        // No containerd yet and none from the release source: the runtime phase requires the package.
        assert!(rules("v1.37.1", "w1", "containerd_version=\nmarked=no\n", None).is_empty());
        assert_eq!(containerd_major("v2.1.9"), Some(2));
        assert_eq!(containerd_major("1.7.24~ds1"), Some(1));
        assert_eq!(containerd_major(""), None);
    }

    #[test]
    fn cgroup_v1_hosts_are_refused_from_v1_35() {
        let v1 = "cgroup_fs=tmpfs\ncontainerd_version=v2.1.9\nmarked=yes\n";
        assert!(rules("v1.34.11", "cp1", v1, None).is_empty());
        for v in ["v1.35.8", "v1.36.4", "v1.37.1"] {
            let f = rules(v, "cp1", v1, None);
            assert_eq!(f.len(), 1, "{v}: {f:?}");
            assert_eq!(f[0].0, "cgroups");
            assert!(
                f[0].1.contains("/sys/fs/cgroup is `tmpfs`") && f[0].1.contains("failCgroupV1"),
                "{}",
                f[0].1
            );
        }
        assert!(rules("v1.37.1", "cp1", &v1.replace("tmpfs", "cgroup2fs"), None).is_empty());
    }

    #[test]
    fn upgrade_source_versions_are_not_installed_on_new_hosts() {
        let f = rules("v1.34.11", "w1", "marked=no\ncgroup_fs=cgroup2fs\n", None);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].0, "kubernetes-version");
        assert!(f[0].1.contains("installs v1.35.x to v1.37.x"), "{}", f[0].1);
        // A host of the running cluster (marked) converges at its version, e.g. before an upgrade.
        assert!(rules("v1.34.11", "w1", "marked=yes\ncgroup_fs=cgroup2fs\n", None).is_empty());
        assert!(rules("v1.35.8", "w1", "marked=no\ncgroup_fs=cgroup2fs\n", None).is_empty());
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
        for key in [
            "arch",
            "cpus",
            "mem_mb",
            "epoch",
            "module_overlay",
            "port_10250",
            "peer_127.0.0.1",
            "cgroup_fs",
            "containerd_version",
        ] {
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
