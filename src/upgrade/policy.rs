//! What an upgrade reads and decides, with no side effects beyond the reads: each host's binaries' versions
//! ([`FACTS`]), the cluster's health as one control plane sees it ([`HEALTH`]), the path one minor per hop,
//! the version-skew, runtime and release-note checks per hop, and what keeps a host from passing its gate.

use crate::inventory::validate::Version;
use crate::model::ClusterModel;
use crate::transport::{Command, Transport};
use crate::{Error, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The Kubernetes binaries whose versions move with an upgrade.
pub const KUBE_BINARIES: [&str; 5] =
    ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"];

pub use crate::disrupt::{ready_counts, MOVE_LEADER};

// ---------------------------------------------------------------------------------------------------------
// Live facts

/// Prints `<binary> <version>` for every Kubernetes binary, etcd and the containerd that runs (kubeforge's
/// under /usr/local/bin, else the distribution's).
const FACTS: &str = r#"for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
  if [ -x /usr/local/bin/$b ]; then echo "$b $(/usr/local/bin/$b --version 2>/dev/null | head -1 | awk '{print $NF}')"; fi
done
if [ -x /usr/local/bin/etcd ]; then echo "etcd v$(/usr/local/bin/etcd --version 2>/dev/null | awk '/^etcd Version:/ {print $3}')"; fi
c=$(PATH=/usr/local/bin:/usr/bin:/bin:$PATH command -v containerd)
if [ -n "$c" ]; then echo "containerd v$("$c" --version 2>/dev/null | awk '{print $3}' | sed 's/^v//; s/[~+-].*//')"; fi
true"#;

/// What one host runs, read live.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HostFacts {
    /// Version per binary (`kubelet`: v1.35.7); a binary that does not answer is absent.
    pub versions: BTreeMap<String, Version>,
    /// Why the host could not be read.
    pub error: Option<String>,
}

impl HostFacts {
    /// The lowest Kubernetes version among the host's Kubernetes binaries.
    pub fn kubernetes(&self) -> Option<Version> {
        KUBE_BINARIES.iter().filter_map(|b| self.versions.get(*b)).min().copied()
    }
}

/// Parses [`FACTS`] output.
pub fn parse_facts(out: &str) -> BTreeMap<String, Version> {
    out.lines()
        .filter_map(|l| {
            let (b, v) = l.trim().split_once(' ')?;
            Some((b.to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Reads one host's binaries' versions (one round trip).
pub async fn host_facts(t: &dyn Transport) -> HostFacts {
    match t.exec(&Command::shell(FACTS).sudo()).await {
        Ok(o) if o.success() => HostFacts { versions: parse_facts(&o.stdout_str()), error: None },
        Ok(o) => HostFacts { error: Some(o.stderr_str().trim().to_owned()), ..Default::default() },
        Err(e) => HostFacts { error: Some(e.to_string()), ..Default::default() },
    }
}

/// Reads every host's binaries' versions, `--concurrency` hosts at a time, one round trip each.
pub async fn read_facts(
    model: &ClusterModel,
    transports: &BTreeMap<String, Arc<dyn Transport>>,
    executor: &crate::exec::Executor,
) -> BTreeMap<String, HostFacts> {
    executor
        .each(&model.hosts, |h| {
            let t = transports.get(&h.name).cloned();
            async move {
                let Some(t) = t else {
                    return (
                        h.name.clone(),
                        HostFacts { error: Some("no connection".into()), ..Default::default() },
                    );
                };
                (h.name.clone(), host_facts(t.as_ref()).await)
            }
        })
        .await
        .into_iter()
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// Cluster health

/// `$1` the etcd client URLs, then every control plane's address. Prints `etcd URL healthy|unhealthy`,
/// `api IP READY VERSION` and `node NAME|VERSION|UNSCHEDULABLE|READY` lines.
const HEALTH: &str = r#"eps=$1; shift
if [ -n "$eps" ]; then
  e endpoint health 2>&1 | awk '/is healthy/ {sub(":$","",$1); print "etcd " $1 " healthy"} /is unhealthy|failed to commit/ {sub(":$","",$1); print "etcd " $1 " unhealthy"}'
fi
for ip in "$@"; do
  case $ip in *:*) host="[$ip]" ;; *) host=$ip ;; esac
  r=$(curl -s --max-time 10 --cacert /etc/kubernetes/pki/ca.crt "https://$host:6443/readyz" 2>/dev/null)
  v=$(curl -s --max-time 10 --cacert /etc/kubernetes/pki/ca.crt "https://$host:6443/version" 2>/dev/null | tr -d '\n ' | sed -n 's/.*"gitVersion":"\([^"]*\)".*/\1/p')
  echo "api $ip ${r:-down} ${v:-unknown}"
done
kubectl --kubeconfig /etc/kubernetes/admin.conf get nodes --request-timeout=10s -o jsonpath='{range .items[*]}{"node "}{.metadata.name}{"|"}{.status.nodeInfo.kubeletVersion}{"|"}{.spec.unschedulable}{"|"}{range .status.conditions[?(@.type=="Ready")]}{.status}{end}{"\n"}{end}' 2>/dev/null
true"#;

/// One Node as the API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// Ready condition is True.
    pub ready: bool,
    /// `status.nodeInfo.kubeletVersion`.
    pub kubelet: Option<Version>,
    /// Cordoned.
    pub unschedulable: bool,
}

/// The cluster's health as one control plane sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Health {
    /// etcd member health by client URL.
    pub etcd: BTreeMap<String, bool>,
    /// Per apiserver address: `/readyz` answered `ok`, and `/version`'s gitVersion.
    pub api: BTreeMap<String, (bool, Option<Version>)>,
    /// Nodes by name.
    pub nodes: BTreeMap<String, NodeInfo>,
    /// The API answered the Node list.
    pub api_answered: bool,
}

/// Parses [`HEALTH`] output.
pub fn parse_health(out: &str) -> Health {
    let mut h = Health::default();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.as_slice() {
            ["etcd", url, state] => {
                h.etcd.insert(url.to_string(), *state == "healthy");
            }
            ["api", ip, ready, version] => {
                h.api.insert(ip.to_string(), (*ready == "ok", version.parse().ok()));
            }
            ["node", rest] => {
                let p: Vec<&str> = rest.split('|').collect();
                if let [name, version, unsched, ready] = p.as_slice() {
                    h.api_answered = true;
                    h.nodes.insert(
                        name.to_string(),
                        NodeInfo {
                            ready: *ready == "True",
                            kubelet: version.parse().ok(),
                            unschedulable: *unsched == "true",
                        },
                    );
                }
            }
            _ => {}
        }
    }
    h
}

/// Reads the cluster's health through `t` (a control plane).
pub async fn read_health(model: &ClusterModel, t: &dyn Transport) -> Result<Health> {
    let script = format!("{}\n{HEALTH}", crate::phase::install::ETCDCTL_FN);
    let mut cmd = Command::shell(script).arg(model.etcd_client_urls());
    for cp in model.control_planes() {
        cmd = cmd.arg(cp.internal_ip.to_string());
    }
    let out = t
        .exec(&cmd.sudo())
        .await
        .map_err(|e| Error::msg(format!("reading the cluster's health: {e}"), None))?;
    Ok(parse_health(&out.stdout_str()))
}

/// Everything unhealthy in `health` for the hosts of `model` (empty = healthy), each naming its host.
pub fn problems(model: &ClusterModel, health: &Health, facts: &BTreeMap<String, HostFacts>) -> Vec<String> {
    let mut p = Vec::new();
    for (name, f) in facts {
        if let Some(e) = &f.error {
            p.push(format!("{name}: unreachable ({e})"));
        }
    }
    for m in model.etcd_members() {
        let url = crate::model::url(m.internal_ip, 2379);
        if health.etcd.get(&url) != Some(&true) {
            p.push(format!("{}: etcd member {url} is not healthy", m.name));
        }
    }
    for cp in model.control_planes() {
        match health.api.get(&cp.internal_ip.to_string()) {
            Some((true, _)) => {}
            _ => p.push(format!("{}: kube-apiserver is not ready (/readyz)", cp.name)),
        }
    }
    if !health.api_answered {
        p.push("the API did not answer the Node list".into());
    } else {
        for n in model.nodes() {
            match health.nodes.get(&n.name) {
                Some(i) if i.ready => {}
                Some(_) => p.push(format!("{}: Node is not Ready", n.name)),
                None => p.push(format!("{}: no Node registered", n.name)),
            }
        }
    }
    p
}

// ---------------------------------------------------------------------------------------------------------
// Path and skew

/// The versions the control planes go through from `current` to `target`: one minor per hop, the newest
/// patch the release source offers for each intermediate minor (`latest(minor)`). Refuses a downgrade and
/// a minor the source cannot provide.
pub fn path(
    current: Version,
    target: Version,
    latest: impl Fn(u32) -> Option<Version>,
) -> std::result::Result<Vec<Version>, String> {
    if target < current {
        return Err(format!(
            "{target} is older than the {current} the cluster runs: kubeforge does not downgrade (etcd's data and \
             the API's stored versions only move forward); restore a backup taken before the upgrade instead"
        ));
    }
    if target.major != current.major {
        return Err(format!("{current} → {target} changes the major version; kubeforge upgrades within v1"));
    }
    if target == current {
        return Ok(Vec::new());
    }
    let mut hops = Vec::new();
    for minor in current.minor + 1..target.minor {
        match latest(minor) {
            Some(v) => hops.push(v),
            None => {
                return Err(format!(
                    "{current} → {target} skips v{}.{minor}: kube-apiserver may move one minor at a time, and the \
                     release source offers no v{}.{minor} release to pass through",
                    current.major, current.major
                ))
            }
        }
    }
    hops.push(target);
    Ok(hops)
}

/// One skew check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Passed.
    pub ok: bool,
    /// A failure refuses the upgrade (otherwise it is a warning).
    pub fatal: bool,
    /// What was checked, with the numbers.
    pub text: String,
}

/// The version-skew checks for moving the apiservers to `hop`, given what runs now. The official policy:
/// apiservers within one minor of each other (and never skipping one); kubelet and kube-proxy never newer
/// than the apiserver and at most three minors older; controller-manager and scheduler within one minor;
/// kubectl one minor either side.
pub fn skew_checks(
    model: &ClusterModel,
    facts: &BTreeMap<String, HostFacts>,
    hop: Version,
    kubectl: Version,
) -> Vec<Check> {
    let mut out = Vec::new();
    let minor = |v: Version| v.minor as i64;
    let n = minor(hop);
    for h in &model.hosts {
        let Some(f) = facts.get(&h.name) else { continue };
        for (bin, v) in &f.versions {
            let d = n - minor(*v);
            let check = match bin.as_str() {
                "kube-apiserver" => Check {
                    ok: (0..=1).contains(&d),
                    fatal: true,
                    text: format!("kube-apiserver on {} {v} → {hop}: one minor at most per hop", h.name),
                },
                "kube-controller-manager" | "kube-scheduler" => Check {
                    ok: (0..=1).contains(&d),
                    fatal: true,
                    text: format!("{bin} on {} {v}: within one minor of kube-apiserver {hop}", h.name),
                },
                "kubelet" | "kube-proxy" => Check {
                    ok: (0..=3).contains(&d),
                    fatal: true,
                    text: format!(
                        "{bin} on {} {v}: not newer than kube-apiserver {hop} and at most three minors older",
                        h.name
                    ),
                },
                _ => continue,
            };
            out.push(check);
        }
    }
    let d = minor(kubectl) - n;
    out.push(Check {
        ok: (-1..=1).contains(&d),
        fatal: false,
        text: format!("kubectl {kubectl}: one minor either side of kube-apiserver {hop}"),
    });
    out
}

/// The container runtime of a hop: which nodes move to the hop's containerd (`runtime` is the one the hop's
/// minor installs: the inventory's or the minor's default), and a blocker when that is a containerd 1.x
/// for a minor whose preflight refuses it.
pub fn runtime_checks(
    model: &ClusterModel,
    facts: &BTreeMap<String, HostFacts>,
    hop: Version,
    runtime: Version,
) -> Vec<Check> {
    let mut out = Vec::new();
    let nodes: Vec<(&str, Version)> = model
        .hosts
        .iter()
        .filter(|h| h.is_node)
        .filter_map(|h| Some((h.name.as_str(), *facts.get(&h.name)?.versions.get("containerd")?)))
        .collect();
    let refused = crate::phase::preflight::MINOR_RULES.iter().find(|r| {
        r.refuses == crate::phase::preflight::Refuses::ContainerdBelow(2) && hop.minor >= r.from_minor
    });
    if let Some(rule) = refused.filter(|_| runtime.major < 2) {
        out.push(Check {
            ok: false,
            fatal: true,
            text: format!("containerd {runtime} for {hop}: {}; {}", rule.reason, rule.fix),
        });
    }
    let moving: Vec<String> =
        nodes.iter().filter(|(_, v)| *v != runtime).map(|(h, v)| format!("{h} {v}")).collect();
    if !moving.is_empty() {
        out.push(Check {
            ok: true,
            fatal: false,
            text: format!(
                "container runtime → containerd {runtime} where the release source has it (config {}; each node drained first): {}",
                if runtime.major >= 2 { "rewritten in format version 3" } else { "format version 2" },
                moving.join(", ")
            ),
        });
    }
    out
}

/// The release notes of the minors a hop enters, against the inventory's `extraArgs`: a flag the hop's
/// minor removed is a blocker (the component would not start), a value whose meaning changed a warning.
pub fn release_note_checks(
    extra_args: &BTreeMap<String, BTreeMap<String, String>>,
    from: Version,
    hop: Version,
) -> Vec<Check> {
    crate::inventory::flags::upgrade_notes(extra_args, from.minor, hop.minor)
        .into_iter()
        .map(|(fatal, text)| Check { ok: false, fatal, text })
        .collect()
}

/// What keeps `hosts` from passing their gate: healthy, and at `v` when given (an upgrade; `None`: any
/// version, as `maintain` gates a host that comes back from a reboot).
pub fn gate_problems(
    model: &ClusterModel,
    hosts: &[String],
    v: Option<Version>,
    health: &Health,
    facts: &BTreeMap<String, HostFacts>,
) -> Vec<String> {
    let mut p = Vec::new();
    for name in hosts {
        let Some(h) = model.host(name) else { continue };
        if h.roles.control_plane {
            match health.api.get(&h.internal_ip.to_string()) {
                Some((true, got)) if v.is_none() || *got == v => {}
                Some((true, got)) => p.push(format!(
                    "{name}: kube-apiserver reports {}",
                    got.map(|g| g.to_string()).unwrap_or("no version".into())
                )),
                _ => p.push(format!("{name}: kube-apiserver not ready")),
            }
        }
        if h.roles.etcd && health.etcd.get(&crate::model::url(h.internal_ip, 2379)) != Some(&true) {
            p.push(format!("{name}: etcd member not healthy"));
        }
        if h.is_node {
            match health.nodes.get(name) {
                Some(n) if n.ready && (v.is_none() || n.kubelet == v) => {}
                Some(n) => p.push(format!(
                    "{name}: Node {} with kubelet {}",
                    if n.ready { "Ready" } else { "not Ready" },
                    n.kubelet.map(|k| k.to_string()).unwrap_or("unknown".into())
                )),
                None => p.push(format!("{name}: no Node")),
            }
        }
        match facts.get(name) {
            Some(f) if f.error.is_none() => {
                for (bin, got) in f.versions.iter().filter(|(b, _)| KUBE_BINARIES.contains(&b.as_str())) {
                    if v.is_some_and(|v| *got != v) {
                        p.push(format!("{name}: {bin} reports {got}"));
                    }
                }
            }
            Some(f) => p.push(format!("{name}: unreachable ({})", f.error.clone().unwrap_or_default())),
            None => p.push(format!("{name}: not read")),
        }
    }
    p
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::upgrade::Batch;
    use std::path::Path;

    pub(crate) fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    pub(crate) fn model(text: &str) -> ClusterModel {
        ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), text).unwrap())
    }

    pub(crate) const INV: &str = "cluster: {name: c, kubernetesVersion: v1.34.10}\nhosts:\n\
        - {name: cp1, address: 10.0.0.1, roles: [control-plane, etcd, worker]}\n\
        - {name: w1, address: 10.0.0.2, roles: [worker]}\n";

    #[test]
    fn the_path_moves_one_minor_per_hop_through_the_newest_patches() {
        let latest = |m: u32| match m {
            34 => Some(v("v1.34.12")),
            35 => Some(v("v1.35.7")),
            _ => None,
        };
        assert_eq!(path(v("v1.34.10"), v("v1.35.7"), latest).unwrap(), [v("v1.35.7")]);
        assert_eq!(path(v("v1.33.2"), v("v1.35.7"), latest).unwrap(), [v("v1.34.12"), v("v1.35.7")]);
        assert_eq!(path(v("v1.34.10"), v("v1.34.12"), latest).unwrap(), [v("v1.34.12")]);
        assert!(path(v("v1.35.7"), v("v1.35.7"), latest).unwrap().is_empty());
        let e = path(v("v1.35.7"), v("v1.34.10"), latest).unwrap_err();
        assert!(e.contains("does not downgrade"), "{e}");
        let e = path(v("v1.34.10"), v("v1.36.1"), |m| (m == 36).then(|| v("v1.36.1"))).unwrap_err();
        assert!(e.contains("skips v1.35") && e.contains("one minor at a time"), "{e}");
    }

    #[test]
    fn batches_are_counts_or_shares() {
        assert_eq!("2".parse::<Batch>().unwrap().size(10), 2);
        assert_eq!("20%".parse::<Batch>().unwrap().size(10), 2);
        assert_eq!("20%".parse::<Batch>().unwrap().size(3), 1);
        assert_eq!("50%".parse::<Batch>().unwrap().size(3), 2);
        assert!(
            "0".parse::<Batch>().is_err()
                && "120%".parse::<Batch>().is_err()
                && "x".parse::<Batch>().is_err()
        );
    }

    #[test]
    fn facts_and_health_are_parsed() {
        let f = parse_facts("kube-apiserver v1.34.10\nkubelet v1.35.7\nkube-proxy \netcd v3.5.1\n");
        assert_eq!(f.len(), 3, "{f:?}");
        let hf = HostFacts { versions: f, error: None };
        assert_eq!(hf.kubernetes(), Some(v("v1.34.10")));
        let h = parse_health(
            "etcd https://10.0.0.1:2379 healthy\napi 10.0.0.1 ok v1.35.7\nnode cp1|v1.35.7||True\nnode w1|v1.34.10|true|False\n",
        );
        assert!(h.etcd["https://10.0.0.1:2379"]);
        assert_eq!(h.api["10.0.0.1"], (true, Some(v("v1.35.7"))));
        assert_eq!(
            h.nodes["cp1"],
            NodeInfo { ready: true, kubelet: Some(v("v1.35.7")), unschedulable: false }
        );
        assert_eq!(
            h.nodes["w1"],
            NodeInfo { ready: false, kubelet: Some(v("v1.34.10")), unschedulable: true }
        );
        let m = model(INV);
        let facts: BTreeMap<String, HostFacts> = [
            ("cp1".to_string(), hf.clone()),
            ("w1".to_string(), HostFacts { error: Some("timeout".into()), ..Default::default() }),
        ]
        .into();
        let p = problems(&m, &h, &facts);
        assert_eq!(p, ["w1: unreachable (timeout)", "w1: Node is not Ready"], "{p:?}");
        let down = parse_health("etcd https://10.0.0.1:2379 unhealthy\napi 10.0.0.1 down unknown\n");
        let p = problems(&m, &down, &facts);
        assert!(p.iter().any(|x| x == "cp1: etcd member https://10.0.0.1:2379 is not healthy"), "{p:?}");
        assert!(p.iter().any(|x| x == "cp1: kube-apiserver is not ready (/readyz)"), "{p:?}");
        assert!(p.iter().any(|x| x == "the API did not answer the Node list"), "{p:?}");
    }

    #[test]
    fn gates_need_every_signal_on_the_new_version() {
        let m = model(INV);
        let ok = parse_health(
            "etcd https://10.0.0.1:2379 healthy\napi 10.0.0.1 ok v1.35.7\nnode cp1|v1.35.7||True\n",
        );
        let facts = |ver: &str| -> BTreeMap<String, HostFacts> {
            [(
                "cp1".to_string(),
                HostFacts {
                    versions: parse_facts(&format!("kube-apiserver {ver}\nkubelet {ver}\netcd v3.5.1")),
                    error: None,
                },
            )]
            .into()
        };
        assert!(gate_problems(&m, &["cp1".into()], Some(v("v1.35.7")), &ok, &facts("v1.35.7")).is_empty());
        let p = gate_problems(&m, &["cp1".into()], Some(v("v1.35.7")), &ok, &facts("v1.34.10"));
        assert_eq!(p, ["cp1: kube-apiserver reports v1.34.10", "cp1: kubelet reports v1.34.10"]);
        let old_api = parse_health(
            "etcd https://10.0.0.1:2379 healthy\napi 10.0.0.1 ok v1.34.10\nnode cp1|v1.34.10||True\n",
        );
        let p = gate_problems(&m, &["cp1".into()], Some(v("v1.35.7")), &old_api, &facts("v1.35.7"));
        assert_eq!(p, ["cp1: kube-apiserver reports v1.34.10", "cp1: Node Ready with kubelet v1.34.10"]);
    }

    #[test]
    fn skew_refuses_old_kubelets_and_warns_on_kubectl() {
        let m = model(INV);
        let facts: BTreeMap<String, HostFacts> = [
            (
                "cp1".to_string(),
                HostFacts {
                    versions: parse_facts(
                        "kube-apiserver v1.34.10\nkube-scheduler v1.34.10\nkubelet v1.34.10",
                    ),
                    error: None,
                },
            ),
            (
                "w1".to_string(),
                HostFacts { versions: parse_facts("kubelet v1.31.2\nkube-proxy v1.34.10"), error: None },
            ),
        ]
        .into();
        let c = skew_checks(&m, &facts, v("v1.35.7"), v("v1.37.1"));
        let failed: Vec<&str> = c.iter().filter(|c| !c.ok).map(|c| c.text.as_str()).collect();
        assert_eq!(
            failed,
            [
                "kubelet on w1 v1.31.2: not newer than kube-apiserver v1.35.7 and at most three minors older",
                "kubectl v1.37.1: one minor either side of kube-apiserver v1.35.7"
            ]
        );
        assert!(
            !c.iter().find(|c| c.text.starts_with("kubectl")).unwrap().fatal,
            "kubectl skew is a warning"
        );
        let c = skew_checks(&m, &facts, v("v1.36.0"), v("v1.36.0"));
        assert!(
            c.iter().any(|c| !c.ok && c.text.starts_with("kube-apiserver on cp1 v1.34.10 → v1.36.0")),
            "{c:?}"
        );
    }

    #[test]
    fn a_flag_the_target_removed_blocks_the_hop_into_it() {
        let m = model(
            "cluster: {name: c, kubernetesVersion: v1.36.4, extraArgs: {kube-controller-manager: {concurrent-service-syncs: \"5\"}}}\n\
             hosts:\n- {name: cp1, address: 10.0.0.1, roles: [control-plane, etcd, worker]}\n",
        );
        let args = &m.extra_args;
        let c = release_note_checks(args, v("v1.36.4"), v("v1.37.1"));
        assert_eq!(c.len(), 1);
        assert!(c[0].fatal && !c[0].ok);
        assert!(
            c[0].text.contains("`--concurrent-service-syncs`") && c[0].text.contains("PR 138002"),
            "{}",
            c[0].text
        );
        // Patch upgrades within v1.36 and the hop from v1.35 to v1.36 do not touch it.
        assert!(release_note_checks(args, v("v1.36.3"), v("v1.36.4")).is_empty());
        assert!(release_note_checks(args, v("v1.35.8"), v("v1.36.4")).is_empty());
    }

    #[test]
    fn the_runtime_moves_to_containerd_2_with_the_hop_and_containerd_1_is_refused_from_v1_36() {
        let m = model(
            "cluster: {name: c, kubernetesVersion: v1.35.8}\nhosts:\n\
             - {name: cp1, address: 10.0.0.1, roles: [control-plane, etcd]}\n\
             - {name: w1, address: 10.0.0.2, roles: [worker]}\n",
        );
        let mut facts = BTreeMap::new();
        for (h, c) in [("cp1", "v1.7.24"), ("w1", "v2.1.9")] {
            let versions = parse_facts(&format!("kubelet v1.35.8\ncontainerd {c}\n"));
            facts.insert(h.to_string(), HostFacts { versions, error: None });
        }
        let c = runtime_checks(&m, &facts, v("v1.36.4"), v("v2.1.9"));
        assert_eq!(c.len(), 1, "{:?}", c.iter().map(|c| &c.text).collect::<Vec<_>>());
        assert!(c[0].ok && !c[0].fatal);
        assert!(
            c[0].text.ends_with(": cp1 v1.7.24") && c[0].text.contains("format version 3"),
            "{}",
            c[0].text
        );
        // An inventory pinning containerd 1.7 cannot go to v1.36.
        let c = runtime_checks(&m, &facts, v("v1.36.4"), v("v1.7.29"));
        assert!(c.iter().any(|c| c.fatal && !c.ok && c.text.contains("kubeforge policy")), "{c:?}");
        assert!(!runtime_checks(&m, &facts, v("v1.35.9"), v("v1.7.24")).iter().any(|c| c.fatal));
        // The facts script reports containerd without Debian's suffixes.
        assert_eq!(parse_facts("containerd v1.7.24\n")["containerd"], v("v1.7.24"));
        assert!(FACTS.contains("s/[~+-].*//"));
    }

    #[test]
    fn ready_pods_are_counted_per_controller() {
        let out = "default/ReplicaSet/web-5d9 True\ndefault/ReplicaSet/web-5d9 True\ndefault/ReplicaSet/web-5d9 False\n\
                   default// True\nkube-system/DaemonSet/proxy True\n";
        let c = ready_counts(out);
        assert_eq!(c.get("default/ReplicaSet/web-5d9"), Some(&2));
        assert_eq!(c.get("kube-system/DaemonSet/proxy"), Some(&1));
        assert_eq!(c.len(), 2, "bare pods are left out: {c:?}");
    }

    #[test]
    fn a_leading_member_hands_leadership_to_a_started_voter() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("etcdctl");
        let log = dir.path().join("calls");
        let run = |leader: &str| {
            std::fs::write(
                &fake,
                format!(
                    "#!/bin/sh\nfor a; do last=\"$a\"; done\necho \"$*\" >> {log}\n\
                     case \"$*\" in\n\
                     *'endpoint status') echo 'https://127.0.0.1:2379, a1, 3.5.1, 20 kB, {leader}, false, 2, 8, 8, ' ;;\n\
                     *'member list') printf '%s\\n' 'a1, started, cp1, https://10.0.0.1:2380, https://10.0.0.1:2379, false' \
                       'c3, unstarted, , https://10.0.0.5:2380, , false' 'b2, started, cp2, https://10.0.0.2:2380, https://10.0.0.2:2379, true' \
                       'd4, started, cp4, https://10.0.0.4:2380, https://10.0.0.4:2379, false' ;;\n\
                     *'move-leader d4') echo 'Leadership transferred' ;;\n\
                     *) exit 1 ;;\n\
                     esac\n",
                    log = log.display()
                ),
            )
            .unwrap();
            std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
            let _ = std::fs::remove_file(&log);
            let script = format!("{}\n{MOVE_LEADER}", crate::phase::install::ETCDCTL_FN)
                .replace("/usr/local/bin/etcdctl", fake.to_str().unwrap());
            let o = std::process::Command::new("sh").args(["-c", &script]).output().unwrap();
            assert!(o.status.success(), "{o:?}");
            (String::from_utf8_lossy(&o.stdout).into_owned(), std::fs::read_to_string(&log).unwrap())
        };
        let (out, calls) = run("true");
        assert_eq!(out, "moved cp4\n");
        assert!(calls.contains("--endpoints=https://127.0.0.1:2379"), "{calls}");
        assert!(calls.lines().last().unwrap().ends_with("move-leader d4"), "{calls}");
        let (out, calls) = run("false");
        assert_eq!(out, "");
        assert_eq!(calls.lines().count(), 1, "a follower only reads its status: {calls}");
    }
}
