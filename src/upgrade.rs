//! `kubeforge upgrade plan | apply | rollback`: skew-safe rolling upgrades of Kubernetes.
//!
//! An upgrade is the apply workflow at the target version, run **one host at a time** (workers in batches),
//! with a gate around every host:
//!
//! 1. **Read** the live versions on every host (each binary's `--version`, one round trip per host) and the
//!    cluster's health on a control plane (etcd members, every apiserver's `/readyz` and `/version`, Node
//!    readiness and kubelet versions). Refuse a downgrade, a skipped minor, an unhealthy cluster, a skew the
//!    official policy forbids, each with its reason. Resolve and verify the artifacts of every hop before
//!    any host is touched.
//! 2. **Snapshot** etcd (over TLS, checked, copied to `pki/<cluster>/backups/`).
//! 3. Per hop (control planes move one minor at a time; `--to` two minors ahead runs two hops):
//!    etcd-only members, then control planes, one at a time: plan the host at the hop's version; if a node
//!    component changes, cordon and drain it through the eviction API first; converge (the previous file is
//!    kept beside each new one as `<file>.kubeforge-prev`; units restart in start order, apiserver →
//!    controller-manager → scheduler, each phase waiting for its health endpoint); then the gate: the
//!    apiserver answers `/readyz` and reports the hop's version, the etcd member is healthy, the Node is
//!    Ready with the new kubelet version, every binary on the host reports it; uncordon; wait until every
//!    workload controller has as many Ready pods as before the drain. Then the workers, `--batch` at a time.
//! 4. **Rollback**: a host that fails its converge or its gate is converged back to the version it ran
//!    (same machinery, the old artifacts), gated at that version, uncordoned, and the upgrade stops there
//!    with a table of which host runs which version. `upgrade rollback --hosts` does the same by hand.
//!
//! The cluster state records each host's versions after each host, so a re-run after an interruption skips
//! the hosts already on the target (their plan is empty) and continues with the others. Certificates within
//! their renewal window are re-issued on the way (the PKI store renews them whenever material is prepared).

use crate::apply::{self, ApplyOptions, RunSummary};
use crate::artifacts::{ArtifactSource, LocalArtifact};
use crate::exec::Executor;
use crate::inventory::validate::Version;
use crate::model::ClusterModel;
use crate::state::ClusterState;
use crate::transport::{Command, Transport};
use crate::{Error, Result};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The Kubernetes binaries whose versions move with an upgrade.
pub const KUBE_BINARIES: [&str; 5] =
    ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"];
/// Phases that run on the first control plane for the whole cluster, whoever the step's host is.
const CLUSTER_WIDE: [&str; 3] = ["addons", "verify", crate::phase::state::ID];
/// How long a host may take to pass its gate after its converge.
const GATE_TIMEOUT: Duration = Duration::from_secs(300);

/// `kubeforge upgrade`.
#[derive(Debug, clap::Subcommand)]
pub enum UpgradeCommand {
    /// Show the upgrade path (one minor per hop), the current → target version per host and component, the
    /// version-skew checks, and what each hop touches. Changes nothing.
    Plan(PlanArgs),
    /// Upgrade: preflight, etcd snapshot, control planes one at a time, workers in drained batches, health
    /// gates after every host, rollback of a host that fails.
    Apply(ApplyArgs),
    /// Converge hosts back to the version they ran before their last upgrade (or `--to`).
    Rollback(RollbackArgs),
}

/// Arguments of `upgrade plan`.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// The inventory file.
    #[arg(short, long)]
    pub inventory: std::path::PathBuf,
    /// Target version (default: the newest patch of the current minor and of the next one the release
    /// source offers are proposed).
    #[arg(long)]
    pub to: Option<String>,
    /// Connection, PKI and cache settings.
    #[command(flatten)]
    pub common: crate::args::ClusterArgs,
}

/// Arguments of `upgrade apply`.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// The inventory file.
    #[arg(short, long)]
    pub inventory: std::path::PathBuf,
    /// Target version (default: the inventory's `kubernetesVersion`).
    #[arg(long)]
    pub to: Option<String>,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
    /// Workers upgraded at once: a count (`2`) or a share of the workers (`20%`).
    #[arg(long, default_value = "1")]
    pub batch: Batch,
    /// How long draining one node may take.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Set `kubernetesVersion` in the inventory file to the target once the upgrade succeeded.
    #[arg(long)]
    pub edit_inventory: bool,
    /// Preflight checks to report as warnings instead of errors (`cpu,memory`, or `all`).
    #[arg(long, value_delimiter = ',')]
    pub ignore_preflight_errors: Vec<String>,
    /// Connection, PKI and cache settings.
    #[command(flatten)]
    pub common: crate::args::ClusterArgs,
}

/// Arguments of `upgrade rollback`.
#[derive(Debug, clap::Args)]
pub struct RollbackArgs {
    /// The inventory file.
    #[arg(short, long)]
    pub inventory: std::path::PathBuf,
    /// The hosts to roll back (comma-separated names).
    #[arg(long, value_delimiter = ',', required = true)]
    pub hosts: Vec<String>,
    /// The version to go back to (default: what each host ran before its last upgrade).
    #[arg(long)]
    pub to: Option<String>,
    /// How long draining one node may take.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Connection, PKI and cache settings.
    #[command(flatten)]
    pub common: crate::args::ClusterArgs,
}

/// How many workers go at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// A count.
    Nodes(usize),
    /// A percentage of the workers (rounded up, at least one).
    Percent(u32),
}

impl std::str::FromStr for Batch {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad =
            || format!("`{s}` is not a batch size: write a count (`2`) or a share of the workers (`20%`)");
        match s.strip_suffix('%') {
            Some(p) => match p.parse::<u32>() {
                Ok(n) if (1..=100).contains(&n) => Ok(Batch::Percent(n)),
                _ => Err(bad()),
            },
            None => match s.parse::<usize>() {
                Ok(n) if n >= 1 => Ok(Batch::Nodes(n)),
                _ => Err(bad()),
            },
        }
    }
}

impl Batch {
    /// Hosts per batch among `workers`.
    pub fn size(self, workers: usize) -> usize {
        match self {
            Batch::Nodes(n) => n,
            Batch::Percent(p) => (workers * p as usize).div_ceil(100),
        }
        .max(1)
    }
}

/// Runs a parsed `upgrade` command.
pub fn run(cmd: UpgradeCommand) -> Result<i32> {
    match cmd {
        UpgradeCommand::Plan(a) => {
            let o = a.common.options(&a.inventory)?;
            plan(&a.inventory, a.to.as_deref(), o)
        }
        UpgradeCommand::Apply(a) => {
            let mut o = a.common.options(&a.inventory)?;
            o.ignore_preflight = a.ignore_preflight_errors;
            apply(
                &a.inventory,
                UpgradeOptions {
                    to: a.to,
                    yes: a.yes,
                    batch: a.batch,
                    drain_timeout: a.drain_timeout,
                    edit_inventory: a.edit_inventory,
                    apply: o,
                },
            )
        }
        UpgradeCommand::Rollback(a) => {
            let mut o = a.common.options(&a.inventory)?;
            o.ignore_preflight = vec!["all".into()];
            rollback(&a.inventory, &a.hosts, a.to.as_deref(), a.drain_timeout, o)
        }
    }
}

/// Settings of `upgrade apply`.
#[derive(Debug, Clone)]
pub struct UpgradeOptions {
    /// Target version (default: the inventory's).
    pub to: Option<String>,
    /// Skip the confirmation.
    pub yes: bool,
    /// Worker batch size.
    pub batch: Batch,
    /// Drain limit per node.
    pub drain_timeout: Duration,
    /// Write the target into the inventory afterwards.
    pub edit_inventory: bool,
    /// Connection, PKI, cache and preflight settings.
    pub apply: ApplyOptions,
}

/// Run on an etcd member (after `ETCDCTL_FN`): when the local member is the leader, hands leadership to
/// the first other started voting member and prints `moved NAME`; prints nothing otherwise.
pub const MOVE_LEADER: &str = r#"eps=https://127.0.0.1:2379
st=$(e endpoint status) || exit 1
me=$(printf '%s\n' "$st" | awk -F', ' '{print $2; exit}')
leader=$(printf '%s\n' "$st" | awk -F', ' '{print $5; exit}')
[ "$leader" = true ] || exit 0
to=$(e member list | awk -F', ' -v me="$me" '$1 != me && $2 == "started" && $6 == "false" {print $1 " " $3; exit}')
[ -n "$to" ] || exit 0
e move-leader "${to%% *}" >/dev/null || exit 1
echo "moved ${to#* }""#;

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
async fn host_facts(t: &dyn Transport) -> HostFacts {
    match t.exec(&Command::shell(FACTS).sudo()).await {
        Ok(o) if o.success() => HostFacts { versions: parse_facts(&o.stdout_str()), error: None },
        Ok(o) => HostFacts { error: Some(o.stderr_str().trim().to_owned()), ..Default::default() },
        Err(e) => HostFacts { error: Some(e.to_string()), ..Default::default() },
    }
}

/// Reads every host's binaries' versions, in parallel, one round trip each.
pub async fn read_facts(
    model: &ClusterModel,
    transports: &BTreeMap<String, Arc<dyn Transport>>,
) -> BTreeMap<String, HostFacts> {
    let reads = model.hosts.iter().map(|h| {
        let t = transports.get(&h.name).cloned();
        let name = h.name.clone();
        async move {
            let Some(t) = t else {
                return (name, HostFacts { error: Some("no connection".into()), ..Default::default() });
            };
            (name, host_facts(t.as_ref()).await)
        }
    });
    futures::future::join_all(reads).await.into_iter().collect()
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

// ---------------------------------------------------------------------------------------------------------
// Steps

/// The run's fixed parts.
#[derive(Clone)]
struct Run<'a> {
    loaded: &'a crate::inventory::Loaded,
    options: &'a ApplyOptions,
    transports: &'a BTreeMap<String, Arc<dyn Transport>>,
    executor: &'a Executor,
    /// Verified artifacts per Kubernetes version.
    artifacts: BTreeMap<Version, BTreeMap<(crate::artifacts::Component, String), LocalArtifact>>,
    /// The cluster model at the inventory's version (hosts, roles, addresses).
    model: ClusterModel,
    drain_timeout: Duration,
    /// The identity check's outcome (made before anything is written).
    verified: crate::identity::Verified,
}

/// A planned step: the material it was planned with and its plan.
struct Step {
    model: ClusterModel,
    material: apply::Material,
    previous: ClusterState,
    planned: apply::Planned,
    _scratch: Option<apply::Scratch>,
}

/// The inventory with its Kubernetes version set to `v`, and its model.
fn at_version(loaded: &crate::inventory::Loaded, v: Version) -> (crate::inventory::Loaded, ClusterModel) {
    let mut l = loaded.clone();
    l.inventory.cluster.kubernetes_version = v.to_string();
    let m = ClusterModel::derive(&l);
    (l, m)
}

impl Run<'_> {
    fn transport(&self, host: &str) -> Result<Arc<dyn Transport>> {
        self.transports
            .get(host)
            .cloned()
            .ok_or_else(|| Error::msg(format!("no connection for host {host}"), None))
    }

    /// The control plane that runs kubectl and the gates while `busy` hosts change: another one when
    /// there is one.
    fn api_host(&self, busy: &[String]) -> String {
        let cps: Vec<&str> = self.model.control_planes().map(|h| h.name.as_str()).collect();
        cps.iter()
            .find(|c| !busy.iter().any(|b| b == *c))
            .or(cps.first())
            .map(|s| s.to_string())
            .unwrap_or_default()
    }

    async fn prepare_artifacts(&mut self, v: Version) -> Result<()> {
        if !self.artifacts.contains_key(&v) {
            let (l, m) = at_version(self.loaded, v);
            let a = apply::prepare_artifacts(&m, &l.inventory, &self.options.cache_dir).await?;
            self.artifacts.insert(v, a);
        }
        Ok(())
    }

    /// Pass one of the apply workflow at version `v` on `hosts` (plus the cluster-wide phases on the first
    /// control plane), without the `verify` phase (the upgrade's gate checks the hosts' services itself and
    /// the whole cluster after every step). A `dry` plan uses a scratch PKI copy.
    async fn plan(&self, v: Version, hosts: &[String], dry: bool) -> Result<Step> {
        let (_, mut model) = at_version(self.loaded, v);
        let mut o = self.options.clone();
        o.hosts = Some(hosts.to_vec());
        o.dry_run = dry;
        o.follow_changes = false;
        o.only = Some(
            crate::workflow::apply().iter().map(|p| p.id().to_owned()).filter(|p| p != "verify").collect(),
        );
        let artifacts = self.artifacts.get(&v).cloned().ok_or_else(|| {
            Error::msg(format!("the artifacts of {v} were not prepared"), Some("this is a kubeforge bug"))
        })?;
        let scratch = apply::scratch_for(&o, &model.name)?;
        let (mut material, previous) = apply::prepare_with(
            &mut model,
            &o,
            scratch.as_ref().map(|t| t.path()),
            artifacts,
            &self.verified,
        )?;
        let phases = crate::workflow::apply();
        let planned =
            apply::plan_workflow(&model, &mut material, &previous, &phases, self.transports, self.executor)
                .await?;
        Ok(Step { model, material, previous, planned, _scratch: scratch })
    }

    /// Pass two: carries out a planned step.
    async fn execute(&self, step: Step) -> Result<RunSummary> {
        let phases = crate::workflow::apply();
        apply::execute_workflow(
            &step.model,
            &step.material,
            &step.previous,
            &phases,
            self.transports,
            self.executor,
            step.planned,
        )
        .await
    }

    /// Plans and carries out the workflow at `v` on `hosts`.
    async fn converge(&self, v: Version, hosts: &[String]) -> Result<RunSummary> {
        let step = self.plan(v, hosts, false).await?;
        self.execute(step).await
    }

    /// Each host's own services pass their health checks (units active, health endpoints), in parallel.
    async fn check_services(&self, hosts: &[String]) -> Result<()> {
        let checks = hosts.iter().map(|h| async move {
            let host =
                self.model.host(h).ok_or_else(|| Error::msg(format!("{h} is not in the inventory"), None))?;
            let t = self.transport(h)?;
            let out = t
                .exec(&crate::phase::verify::host_checks(host))
                .await
                .map_err(|e| Error::msg(format!("{h}: health checks: {e}"), None))?;
            if out.success() {
                Ok(())
            } else {
                Err(Error::msg(format!("{h}: health checks failed:\n{}", out.stdout_str()), None))
            }
        });
        for r in futures::future::join_all(checks).await {
            r?;
        }
        Ok(())
    }

    async fn kubectl(&self, api: &str, what: &str, args: &[&str], timeout: Duration) -> Result<String> {
        let t = self.transport(api)?;
        // Transient API errors are retried, except for a drain, whose own timeout must stand.
        let cmd = if what == "drain" {
            crate::lifecycle::kubectl(args)
        } else {
            crate::lifecycle::kubectl_retrying(args)
        };
        let cmd = cmd.timeout(timeout + Duration::from_secs(if what == "drain" { 30 } else { 120 }));
        let out = crate::plan::run_checked(t.as_ref(), what, &cmd)
            .await
            .map_err(|e| Error::msg(format!("{what} (through {api}): {e}"), None))?;
        Ok(out.stdout_str())
    }

    /// Ready pods per owning controller (`namespace/Kind/name`), cluster-wide.
    async fn ready_by_owner(&self, api: &str) -> Result<BTreeMap<String, usize>> {
        let out = self
            .kubectl(
                api,
                "count Ready pods",
                &[
                    "get",
                    "pods",
                    "-A",
                    "-o",
                    r#"jsonpath={range .items[*]}{.metadata.namespace}{"/"}{.metadata.ownerReferences[0].kind}{"/"}{.metadata.ownerReferences[0].name}{" "}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}"#,
                ],
                Duration::from_secs(30),
            )
            .await?;
        Ok(ready_counts(&out))
    }

    /// Waits until every controller has at least as many Ready pods as in `before` (the pods a drain
    /// evicted are back), up to the drain timeout.
    async fn workload_gate(&self, api: &str, before: &BTreeMap<String, usize>) -> Result<()> {
        let start = Instant::now();
        loop {
            let now = self.ready_by_owner(api).await.unwrap_or_default();
            let short: Vec<String> = before
                .iter()
                .filter(|(k, n)| now.get(*k).copied().unwrap_or(0) < **n)
                .map(|(k, n)| format!("{k} {}/{n} Ready", now.get(k).copied().unwrap_or(0)))
                .collect();
            if short.is_empty() {
                return Ok(());
            }
            if start.elapsed() > self.drain_timeout {
                return Err(Error::msg(
                    format!("the workloads did not come back: {}", short.join(", ")),
                    Some("check the pods with kubectl; re-run the upgrade to continue"),
                ));
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }

    /// Waits until `hosts` pass their gate at `v`: their apiserver ready and reporting `v`, their etcd member
    /// healthy, their Node Ready with kubelet `v`, and every Kubernetes binary on them reporting `v`.
    async fn gate(&self, api: &str, hosts: &[String], v: Version) -> Result<()> {
        let start = Instant::now();
        let t = self.transport(api)?;
        let mut last = Vec::new();
        while start.elapsed() < GATE_TIMEOUT {
            // Health first, then the hosts' versions (every host at once): the two on one control plane at
            // the same time would compete for its CPU and slow the probes past their timeouts.
            let health = read_health(&self.model, t.as_ref()).await.unwrap_or_default();
            let mut reads = Vec::new();
            for h in hosts {
                let tr = self.transport(h)?;
                reads.push(async move { (h.clone(), host_facts(tr.as_ref()).await) });
            }
            let facts: BTreeMap<String, HostFacts> =
                futures::future::join_all(reads).await.into_iter().collect();
            last = gate_problems(&self.model, hosts, v, &health, &facts);
            if last.is_empty() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        Err(Error::msg(
            format!("health gate at {v} not passed within {}s: {}", GATE_TIMEOUT.as_secs(), last.join("; ")),
            None,
        ))
    }
}

/// Parses `ns/Kind/name True|False` lines into Ready counts per controller (bare pods left out).
pub fn ready_counts(out: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for l in out.lines() {
        let mut it = l.split_whitespace();
        let (Some(owner), ready) = (it.next(), it.next()) else { continue };
        if owner.ends_with("//") {
            continue;
        }
        let e = m.entry(owner.to_owned()).or_insert(0);
        if ready == Some("True") {
            *e += 1;
        }
    }
    m.retain(|_, n| *n > 0);
    m
}

/// What keeps `hosts` from passing their gate at `v`.
pub fn gate_problems(
    model: &ClusterModel,
    hosts: &[String],
    v: Version,
    health: &Health,
    facts: &BTreeMap<String, HostFacts>,
) -> Vec<String> {
    let mut p = Vec::new();
    for name in hosts {
        let Some(h) = model.host(name) else { continue };
        if h.roles.control_plane {
            match health.api.get(&h.internal_ip.to_string()) {
                Some((true, Some(got))) if *got == v => {}
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
                Some(n) if n.ready && n.kubelet == Some(v) => {}
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
                    if *got != v {
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

/// Per host of `summary`'s plan: (changes in host phases, bytes, node components change).
fn host_changes(summary: &RunSummary, host: &str) -> (usize, u64, bool) {
    let mut n = 0;
    let mut bytes = 0;
    let mut node = false;
    for pp in summary.plan.phases.iter().filter(|p| !CLUSTER_WIDE.contains(&p.phase.as_str())) {
        for (h, c) in pp.hosts.iter().filter(|(h, _)| h == host) {
            let _ = h;
            n += c.count();
            bytes += c.bytes();
            // A new kubelet or kube-proxy, or a new container runtime (containerd 1.7 → 2.x, its config): the
            // node's pods are drained first.
            if (pp.phase == "nodes" || pp.phase == "runtime") && !c.is_empty() {
                node = true;
            }
        }
    }
    (n, bytes, node)
}

/// How one host (or batch) ended.
#[derive(Debug)]
enum Outcome {
    /// Nothing to do: already on the version.
    Current,
    /// Upgraded and gated.
    Upgraded,
    /// Failed, rolled back to the version it ran; the upgrade stops.
    RolledBack(String),
    /// Failed and the rollback failed too.
    Broken(String),
}

impl Run<'_> {
    /// One step: `hosts` (one control plane, or a batch of workers) from `from` to `to`.
    /// Before a host's step: when its etcd member leads a cluster of several members, leadership moves to
    /// another started voting member (`etcdctl move-leader`), so that the busy host (new binaries written,
    /// services restarting) does not hold every write and every linearizable read of the cluster up, and a
    /// member that restarts costs no election. A failure only warns: the step does not need it.
    async fn hand_over_etcd_leadership(&self, hosts: &[String]) {
        if self.model.etcd_members().count() < 2 {
            return;
        }
        for h in hosts {
            if !self.model.host(h).is_some_and(|m| m.roles.etcd) {
                continue;
            }
            let Ok(t) = self.transport(h) else { continue };
            let clock = Instant::now();
            let cmd = Command::shell(format!("{}\n{MOVE_LEADER}", crate::phase::install::ETCDCTL_FN)).sudo();
            match t.exec(&cmd).await {
                Ok(o) if o.success() => {
                    if let Some(to) = o.stdout_str().lines().find_map(|l| l.strip_prefix("moved ")) {
                        eprintln!(
                            "[upgrade] {h}: etcd leadership handed to {} ({:.1}s)",
                            to.trim(),
                            clock.elapsed().as_secs_f64()
                        );
                    }
                }
                Ok(o) => eprintln!(
                    "[upgrade] {h}: warning: etcd leadership not handed over: {}",
                    o.stderr_str().trim()
                ),
                Err(e) => eprintln!("[upgrade] {h}: warning: etcd leadership not handed over: {e}"),
            }
        }
    }

    async fn step(
        &self,
        hosts: &[String],
        from: &BTreeMap<String, Version>,
        to: Version,
    ) -> Result<Vec<(String, Outcome)>> {
        let api = self.api_host(hosts);
        // What each host returns to by hand (`upgrade rollback`); recorded before the plan so that the state
        // copy the step puts on the control planes already says so.
        let mut st = ClusterState::load(&self.options.pki_root, &self.model.name)?;
        for h in hosts {
            if let (Some(hs), Some(f)) = (st.hosts.get_mut(h), from.get(h)) {
                if *f != to {
                    hs.previous_kubernetes = Some(f.to_string());
                }
            }
        }
        st.save(&self.options.pki_root)?;
        let planned = self.plan(to, hosts, false).await?;
        let mut todo = Vec::new();
        let mut out = Vec::new();
        for h in hosts {
            let (n, bytes, node) = host_changes(&planned.planned.summary, h);
            if n == 0 {
                eprintln!("[upgrade] {h}: already on {to}");
                out.push((h.clone(), Outcome::Current));
            } else {
                eprintln!(
                    "[upgrade] {h}: {n} change(s), {bytes} bytes to send{}",
                    if node { ", node components (drain first)" } else { "" }
                );
                todo.push((h.clone(), node));
            }
        }
        if todo.is_empty() {
            return Ok(out);
        }
        let drained: Vec<String> = todo.iter().filter(|(_, n)| *n).map(|(h, _)| h.clone()).collect();
        let before = if drained.is_empty() { BTreeMap::new() } else { self.ready_by_owner(&api).await? };
        let drain_secs = format!("--timeout={}s", self.drain_timeout.as_secs().max(1));
        for h in &drained {
            let clock = Instant::now();
            self.kubectl(&api, "cordon", &["cordon", h], Duration::from_secs(30)).await?;
            eprintln!("[upgrade] {h}: cordoned; draining (eviction API)");
            if let Err(e) = self
                .kubectl(
                    &api,
                    "drain",
                    &["drain", h, "--ignore-daemonsets", "--delete-emptydir-data", &drain_secs],
                    self.drain_timeout,
                )
                .await
            {
                let _ = self.kubectl(&api, "uncordon", &["uncordon", h], Duration::from_secs(30)).await;
                return Err(Error::msg(
                    format!("{h}: the drain did not finish, nothing was changed on it and it is uncordoned again: {e}"),
                    Some("check the PodDisruptionBudgets that block it, or raise --drain-timeout; then re-run"),
                ));
            }
            eprintln!("[upgrade] {h}: drained ({:.1}s)", clock.elapsed().as_secs_f64());
        }
        let names: Vec<String> = todo.iter().map(|(h, _)| h.clone()).collect();
        let t0 = Instant::now();
        self.hand_over_etcd_leadership(&names).await;
        let result = match self.execute(planned).await {
            Ok(s) => {
                eprint!("{}", apply::traffic_table(&s.traffic));
                match self.check_services(&names).await {
                    Ok(()) => self.gate(&api, &names, to).await,
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                eprintln!(
                    "[upgrade] {}: on {to}, gate passed ({:.0}s)",
                    names.join(","),
                    t0.elapsed().as_secs_f64()
                );
                for h in &drained {
                    self.kubectl(&api, "uncordon", &["uncordon", h], Duration::from_secs(30)).await?;
                    eprintln!("[upgrade] {h}: uncordoned");
                }
                if !drained.is_empty() {
                    let clock = Instant::now();
                    self.workload_gate(&api, &before).await?;
                    eprintln!(
                        "[upgrade] workloads back to Ready ({} controller(s), {:.1}s)",
                        before.len(),
                        clock.elapsed().as_secs_f64()
                    );
                }
                out.extend(names.into_iter().map(|h| (h, Outcome::Upgraded)));
            }
            Err(e) => {
                eprintln!("[upgrade] {}: FAILED at {to}: {e}", names.join(","));
                // Back to what each host ran, per version.
                let mut by_version: BTreeMap<Version, Vec<String>> = BTreeMap::new();
                for h in &names {
                    by_version.entry(from.get(h).copied().unwrap_or(to)).or_default().push(h.clone());
                }
                // The rollback is cleanup: an interrupt (the likely cause of the failure) does not stop it.
                let ex = self.executor.for_cleanup();
                let undo = Run { executor: &ex, ..self.clone() };
                for (v, hs) in by_version {
                    eprintln!("[upgrade] rolling {} back to {v}", hs.join(","));
                    let back = match undo.converge(v, &hs).await {
                        Ok(_) => match undo.check_services(&hs).await {
                            Ok(()) => undo.gate(&api, &hs, v).await,
                            Err(e) => Err(e),
                        },
                        Err(e) => Err(e),
                    };
                    for h in &hs {
                        let o = match &back {
                            Ok(()) => {
                                if drained.contains(h) {
                                    let _ = self
                                        .kubectl(&api, "uncordon", &["uncordon", h], Duration::from_secs(30))
                                        .await;
                                }
                                Outcome::RolledBack(format!("{e}"))
                            }
                            Err(r) => Outcome::Broken(format!("{e}; the rollback to {v} failed too: {r}")),
                        };
                        out.push((h.clone(), o));
                    }
                }
            }
        }
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Commands

struct Context {
    loaded: crate::inventory::Loaded,
    model: ClusterModel,
    transports: BTreeMap<String, Arc<dyn Transport>>,
    source: ArtifactSource,
}

fn context(inventory: &Path, options: &ApplyOptions) -> Result<Context> {
    let loaded = crate::inventory::load(inventory)?;
    let model = ClusterModel::derive(&loaded);
    let transports = apply::transports(&loaded, &options.connect)?;
    let source = ArtifactSource::from_spec(
        loaded.inventory.cluster.release_source.as_ref(),
        &model.inventory_dir,
        &options.cache_dir,
    )?;
    Ok(Context { loaded, model, transports, source })
}

/// The version the control planes run (the lowest apiserver), else the lowest of any host.
fn current_version(model: &ClusterModel, facts: &BTreeMap<String, HostFacts>) -> Option<Version> {
    let cps: Vec<Version> = model
        .control_planes()
        .filter_map(|h| facts.get(&h.name)?.versions.get("kube-apiserver").copied())
        .collect();
    cps.into_iter().min().or_else(|| facts.values().filter_map(HostFacts::kubernetes).min())
}

/// The table of current → target per host and component.
fn version_table(model: &ClusterModel, facts: &BTreeMap<String, HostFacts>, target: Version) -> String {
    let mut s = format!("{:<14} {:<24} {:<10}    {}\n", "HOST", "COMPONENT", "CURRENT", "TARGET");
    for h in &model.hosts {
        let Some(f) = facts.get(&h.name) else { continue };
        if let Some(e) = &f.error {
            s.push_str(&format!("{:<14} {:<24} UNREACHABLE: {e}\n", h.name, "-"));
            continue;
        }
        for b in KUBE_BINARIES {
            if let Some(v) = f.versions.get(b) {
                let arrow = if *v == target { "=" } else { "→" };
                s.push_str(&format!("{:<14} {:<24} {:<10} {arrow}  {target}\n", h.name, b, v.to_string()));
            }
        }
        if let Some(v) = f.versions.get("containerd") {
            s.push_str(&format!(
                "{:<14} {:<24} {:<10} (the runtime of the target's minor: see each hop)\n",
                h.name,
                "containerd",
                v.to_string()
            ));
        }
        if let Some(v) = f.versions.get("etcd") {
            s.push_str(&format!(
                "{:<14} {:<24} {:<10} (etcd follows cluster.components)\n",
                h.name,
                "etcd",
                v.to_string()
            ));
        }
    }
    s
}

async fn latest_per_minor(
    source: &ArtifactSource,
    from: Version,
    to: Version,
) -> Result<BTreeMap<u32, Option<Version>>> {
    let mut m = BTreeMap::new();
    for minor in from.minor..=to.minor {
        let v = source.latest_kubernetes(from.major, minor, &crate::artifacts::Silent).await?;
        m.insert(minor, v.and_then(|v| v.parse().ok()));
    }
    Ok(m)
}

/// Reads facts and health, and computes the path; refuses what the policy forbids. Returns
/// (facts, health, current, hops, checks per hop).
struct Assessment {
    facts: BTreeMap<String, HostFacts>,
    health: Health,
    current: Version,
    hops: Vec<Version>,
    checks: Vec<(Version, Vec<Check>)>,
}

async fn assess(c: &Context, target: Version) -> Result<Assessment> {
    let first = c
        .model
        .control_planes()
        .next()
        .ok_or_else(|| Error::msg("the inventory has no control plane", None))?;
    let t = c.transports.get(&first.name).cloned().expect("transport per host");
    // One after the other: on a small control plane, the version reads and the health probes compete for
    // the same CPU, and a probe that times out would report a healthy apiserver as not ready.
    let mut facts = read_facts(&c.model, &c.transports).await;
    let mut health = read_health(&c.model, t.as_ref()).await?;
    // One reading can catch a moment's blip (an apiserver busy past the probe's timeout): what is unhealthy
    // must still be so in a second reading, 5 s later, before the upgrade is refused for it.
    if !problems(&c.model, &health, &facts).is_empty() {
        tokio::time::sleep(Duration::from_secs(5)).await;
        facts = read_facts(&c.model, &c.transports).await;
        health = read_health(&c.model, t.as_ref()).await?;
    }
    let current = current_version(&c.model, &facts).ok_or_else(|| {
        Error::msg(
            "no host reports a Kubernetes version",
            Some("install the cluster with `kubeforge apply` first; check that the hosts are reachable"),
        )
    })?;
    // Any host newer than the target means a downgrade for it.
    if let Some((h, v)) = facts
        .iter()
        .filter_map(|(h, f)| {
            f.kubernetes()
                .map(|_| (h, KUBE_BINARIES.iter().filter_map(|b| f.versions.get(*b)).max().copied()))
        })
        .filter_map(|(h, v)| Some((h, v?)))
        .find(|(_, v)| *v > target)
    {
        return Err(Error::msg(
            format!("{h} runs {v}, newer than the target {target}: kubeforge does not downgrade"),
            Some("restore a backup taken before the upgrade instead, or pick a newer target"),
        ));
    }
    let lowest = facts.values().filter_map(HostFacts::kubernetes).min().unwrap_or(current);
    let latest = latest_per_minor(&c.source, lowest.min(current), target).await?;
    let hops =
        path(current, target, |m| latest.get(&m).copied().flatten()).map_err(|e| Error::msg(e, None))?;
    // Hosts left behind by an interrupted hop (kubelets still on the current minor's predecessor) are
    // covered: every hop converges every host.
    let kubectl = c.model.versions.kubectl;
    let mut checks = Vec::new();
    let mut f = facts.clone();
    let mut from = current;
    for hop in hops.iter().copied() {
        let mut hop_checks = skew_checks(
            &c.model,
            &f,
            hop,
            if kubectl == c.model.versions.kubernetes { hop } else { kubectl },
        );
        hop_checks.extend(release_note_checks(&c.loaded.inventory.cluster.extra_args, from, hop));
        hop_checks.extend(runtime_checks(
            &c.model,
            &f,
            hop,
            at_version(&c.loaded, hop).1.versions.containerd,
        ));
        checks.push((hop, hop_checks));
        from = hop;
        // After the hop every binary is on it.
        for hf in f.values_mut() {
            for (b, v) in hf.versions.iter_mut() {
                if KUBE_BINARIES.contains(&b.as_str()) {
                    *v = hop;
                }
            }
        }
    }
    Ok(Assessment { facts, health, current, hops, checks })
}

fn print_assessment(c: &Context, a: &Assessment, target: Version, batch: usize) {
    print!("{}", version_table(&c.model, &a.facts, target));
    if a.hops.is_empty() {
        println!("path: the cluster already runs {target}");
        return;
    }
    let path: Vec<String> =
        std::iter::once(a.current.to_string()).chain(a.hops.iter().map(|v| v.to_string())).collect();
    println!("path: {} ({} hop{})", path.join(" → "), a.hops.len(), if a.hops.len() == 1 { "" } else { "s" });
    let cps: Vec<&str> = c.model.control_planes().map(|h| h.name.as_str()).collect();
    let etcd_only: Vec<&str> =
        c.model.etcd_members().filter(|h| !h.roles.control_plane).map(|h| h.name.as_str()).collect();
    let workers: Vec<&str> = c
        .model
        .hosts
        .iter()
        .filter(|h| !h.roles.control_plane && !h.roles.etcd)
        .map(|h| h.name.as_str())
        .collect();
    for (hop, checks) in &a.checks {
        println!("hop to {hop}:");
        if !etcd_only.is_empty() {
            println!("  etcd members, one at a time: {}", etcd_only.join(", "));
        }
        println!("  control planes, one at a time (apiserver → controller-manager → scheduler, then kubelet and kube-proxy, drained): {}", cps.join(", "));
        if !workers.is_empty() {
            println!("  workers, {batch} at a time (cordon, drain, kubelet and kube-proxy, Ready gate, uncordon): {}", workers.join(", "));
        }
        for ch in checks {
            println!(
                "  {} {}",
                if ch.ok {
                    "ok  "
                } else if ch.fatal {
                    "FAIL"
                } else {
                    "warn"
                },
                ch.text
            );
        }
    }
    let problems = problems(&c.model, &a.health, &a.facts);
    if problems.is_empty() {
        println!("health: every etcd member healthy, every apiserver ready, every Node Ready");
    } else {
        for p in &problems {
            println!("health: {p}");
        }
    }
}

/// `kubeforge upgrade plan`.
pub fn plan(inventory: &Path, to: Option<&str>, options: ApplyOptions) -> Result<i32> {
    let c = context(inventory, &options)?;
    let rt = tokio::runtime::Runtime::new().map_err(|e| Error::io("starting the async runtime", e))?;
    rt.block_on(async {
        let targets: Vec<Version> = match to {
            Some(t) => vec![t.parse().map_err(|e: String| Error::msg(e, None))?],
            None => {
                let facts = read_facts(&c.model, &c.transports).await;
                let cur = current_version(&c.model, &facts)
                    .ok_or_else(|| Error::msg("no host reports a Kubernetes version", None))?;
                let mut v = Vec::new();
                for minor in [cur.minor, cur.minor + 1] {
                    if let Some(l) =
                        c.source.latest_kubernetes(cur.major, minor, &crate::artifacts::Silent).await?
                    {
                        let l: Version = l.parse().map_err(|e: String| Error::msg(e, None))?;
                        if l > cur {
                            v.push(l);
                        }
                    }
                }
                if v.is_empty() {
                    println!(
                        "{}: {cur} is the newest release {} offers for v{}.{} and v{}.{}",
                        c.model.name,
                        c.source.describe(),
                        cur.major,
                        cur.minor,
                        cur.major,
                        cur.minor + 1
                    );
                    return Ok(0);
                }
                println!(
                    "{} offers: {}",
                    c.source.describe(),
                    v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ")
                );
                v
            }
        };
        let mut code = 0;
        for target in targets {
            println!("== upgrade to {target}");
            let a = assess(&c, target).await?;
            print_assessment(&c, &a, target, 1);
            // What the first hop touches, per host: a dry run of the apply workflow at its version.
            if let Some(hop) = a.hops.first().copied() {
                let executor = Executor::new(options.concurrency, Arc::new(crate::report::Silent));
                let all = apply::guarded_hosts(&c.model, None);
                let verified = apply::guard(&c.model, &options, &all, &c.transports, &executor).await?;
                let mut run = Run {
                    loaded: &c.loaded,
                    options: &options,
                    transports: &c.transports,
                    executor: &executor,
                    artifacts: BTreeMap::new(),
                    model: c.model.clone(),
                    drain_timeout: Duration::from_secs(300),
                    verified,
                };
                run.prepare_artifacts(hop).await?;
                let names: Vec<String> = c.model.hosts.iter().map(|h| h.name.clone()).collect();
                let mut o = options.clone();
                o.ignore_preflight = vec!["all".into()];
                let run = Run { options: &o, ..run };
                let step = run.plan(hop, &names, true).await?;
                let s = &step.planned.summary;
                println!("hop to {hop} touches:");
                for h in &names {
                    let (n, bytes, node) = host_changes(s, h);
                    println!(
                        "  {h}: {n} change(s), {bytes} bytes{}",
                        if node { ", drains the node" } else { "" }
                    );
                }
            }
            if a.checks.iter().flat_map(|(_, c)| c).any(|c| c.fatal && !c.ok)
                || !problems(&c.model, &a.health, &a.facts).is_empty()
            {
                code = 1;
            }
        }
        eprint!("{}", apply::host_stats(&c.transports));
        Ok(code)
    })
}

/// The Kubernetes version each host runs (its lowest Kubernetes binary).
fn host_versions(facts: &BTreeMap<String, HostFacts>) -> BTreeMap<String, Version> {
    facts.iter().filter_map(|(h, f)| Some((h.clone(), f.kubernetes()?))).collect()
}

/// The one confirmation rule (`crate::prompt`): asked on the terminal, refused (exit 2) without one.
fn confirm(question: &str) -> Result<bool> {
    crate::prompt::ask(question)
}

/// `kubeforge upgrade apply`.
pub fn apply(inventory: &Path, options: UpgradeOptions) -> Result<i32> {
    if options.edit_inventory && crate::inventory::is_stream(inventory) {
        // Refused before any work, not after the upgrade.
        return Err(Error::usage(
            "--edit-inventory: the inventory comes from a stream (`-i -` or a pipe), not a file to edit",
            Some(
                "give the inventory file with -i, or set its `kubernetesVersion` yourself after the upgrade",
            ),
        ));
    }
    let c = context(inventory, &options.apply)?;
    let target: Version = match &options.to {
        Some(t) => {
            t.parse().map_err(|e: String| Error::msg(e, Some("write the target like `--to v1.35.7`")))?
        }
        None => c.model.versions.kubernetes,
    };
    let rt = tokio::runtime::Runtime::new().map_err(|e| Error::io("starting the async runtime", e))?;
    let executor = Executor::new(options.apply.concurrency, crate::report::auto(false));
    let started = Instant::now();
    let result = rt.block_on(async {
        // 1. Preflight.
        let t = Instant::now();
        let a = assess(&c, target).await?;
        eprintln!("[upgrade] versions and health read ({:.1}s)", t.elapsed().as_secs_f64());
        let workers: Vec<String> =
            c.model.hosts.iter().filter(|h| !h.roles.control_plane && !h.roles.etcd).map(|h| h.name.clone()).collect();
        let batch = options.batch.size(workers.len());
        print_assessment(&c, &a, target, batch);
        let unhealthy = problems(&c.model, &a.health, &a.facts);
        if !unhealthy.is_empty() {
            return Err(Error::msg(
                format!("the cluster is not healthy, nothing was changed: {}", unhealthy.join("; ")),
                Some("fix these first (`kubeforge status` shows the details); an upgrade starts from a healthy cluster"),
            ));
        }
        let failed: Vec<String> =
            a.checks.iter().flat_map(|(_, c)| c).filter(|c| c.fatal && !c.ok).map(|c| c.text.clone()).collect();
        if !failed.is_empty() {
            return Err(Error::msg(
                format!("the version-skew policy forbids this upgrade: {}", failed.join("; ")),
                Some("upgrade the hosts left behind first (one minor at a time)"),
            ));
        }
        if a.hops.is_empty() && host_versions(&a.facts).values().all(|v| *v == target) {
            println!("upgrade: 0 changes (every host runs {target})");
            return Ok((0, a.facts));
        }
        let all = apply::guarded_hosts(&c.model, None);
        let verified = apply::guard(&c.model, &options.apply, &all, &c.transports, &executor).await?;
        let mut run = Run {
            loaded: &c.loaded,
            options: &options.apply,
            transports: &c.transports,
            executor: &executor,
            artifacts: BTreeMap::new(),
            model: c.model.clone(),
            drain_timeout: options.drain_timeout,
            verified,
        };
        // Every hop's artifacts (and those of the versions hosts run now, for a rollback) before any host.
        let mut needed: BTreeSet<Version> = a.hops.iter().copied().collect();
        needed.insert(target);
        needed.extend(host_versions(&a.facts).values().copied());
        let t = Instant::now();
        for v in &needed {
            run.prepare_artifacts(*v).await?;
        }
        eprintln!("[upgrade] artifacts of {} version(s) ready ({:.1}s)", needed.len(), t.elapsed().as_secs_f64());
        if !options.yes && !confirm(&format!("Upgrade cluster `{}` to {target}?", c.model.name))? {
            return Err(Error::msg("upgrade cancelled, nothing was changed", None));
        }
        // From here on a first Ctrl-C lets the host in progress finish (or roll back) and be uncordoned.
        crate::cleanup::writing();
        // 2. The etcd snapshot.
        let member = c.model.etcd_members().next().map(|h| h.name.clone()).ok_or_else(|| Error::msg("no etcd member", None))?;
        let (t, clock) = (run.transport(&member)?, Instant::now());
        let progress = crate::artifacts::TerminalProgress::default();
        let snap = crate::backup::snapshot(&c.model, &member, t.as_ref(), &options.apply.pki_root, "pre-upgrade", &progress)
            .await?;
        eprintln!(
            "[upgrade] etcd snapshot from {member}: {} ({} bytes, revision {}, {} keys, sha256 {}; {:.1}s)",
            snap.path.display(),
            snap.bytes,
            snap.revision,
            snap.total_keys,
            &snap.sha256[..16],
            clock.elapsed().as_secs_f64()
        );
        // 3. Hops, each host gated.
        let hops: Vec<Version> = if a.hops.is_empty() { vec![target] } else { a.hops.clone() };
        let mut facts = a.facts.clone();
        for hop in hops {
            eprintln!("[upgrade] == hop to {hop}");
            let from = host_versions(&facts);
            let mut steps: Vec<Vec<String>> = Vec::new();
            for h in c.model.etcd_members().filter(|h| !h.roles.control_plane) {
                steps.push(vec![h.name.clone()]);
            }
            for h in c.model.control_planes() {
                steps.push(vec![h.name.clone()]);
            }
            let rest: Vec<String> = c
                .model
                .hosts
                .iter()
                .filter(|h| !h.roles.control_plane && !h.roles.etcd)
                .map(|h| h.name.clone())
                .collect();
            steps.extend(rest.chunks(batch).map(|c| c.to_vec()));
            for hosts in steps {
                let outcomes = run.step(&hosts, &from, hop).await?;
                let failures: Vec<String> = outcomes
                    .iter()
                    .filter_map(|(h, o)| match o {
                        Outcome::RolledBack(e) => Some(format!("{h}: failed and rolled back to {} ({e})", from.get(h).map(|v| v.to_string()).unwrap_or_default())),
                        Outcome::Broken(e) => Some(format!("{h}: failed, and the rollback failed: {e}")),
                        _ => None,
                    })
                    .collect();
                if !failures.is_empty() {
                    let now = read_facts(&c.model, &c.transports).await;
                    return Err(Error::msg(
                        format!("the upgrade stopped: {}\n{}", failures.join("\n"), versions_now(&c.model, &now)),
                        Some(if crate::cleanup::stopped() {
                            "the run was interrupted: the host in progress was put back; run `kubeforge upgrade apply` again to go on (the hosts already upgraded are skipped)"
                        } else {
                            "fix the cause on that host, then run `kubeforge upgrade apply` again: the hosts already upgraded are skipped"
                        }),
                    ));
                }
            }
            facts = read_facts(&c.model, &c.transports).await;
        }
        Ok((1, facts))
    });
    eprint!("{}", apply::host_stats(&c.transports));
    let (changed, facts) = result?;
    print!("{}", versions_now(&c.model, &facts));
    if changed == 1 {
        println!("upgrade: {} now runs {target} ({:.0}s)", c.model.name, started.elapsed().as_secs_f64());
    }
    if c.model.versions.kubernetes != target {
        if options.edit_inventory {
            edit_inventory_version(&c.loaded, target)?;
            println!("{}: kubernetesVersion set to {target}", inventory.display());
        } else {
            let line = c.loaded.positions.find("cluster.kubernetesVersion").map(|p| p.line).unwrap_or(0);
            println!(
                "next: set `kubernetesVersion: {target}` in {}:{line} (apply refuses to change the version), or re-run with --edit-inventory",
                inventory.display()
            );
        }
    }
    Ok(0)
}

/// The table of which host runs which version.
fn versions_now(model: &ClusterModel, facts: &BTreeMap<String, HostFacts>) -> String {
    let mut s = String::from("versions now:\n");
    for h in &model.hosts {
        let v = facts
            .get(&h.name)
            .map(|f| match (&f.error, f.kubernetes()) {
                (Some(e), _) => format!("unreachable ({e})"),
                (None, Some(v)) => v.to_string(),
                (None, None) => "no Kubernetes binaries".into(),
            })
            .unwrap_or_default();
        s.push_str(&format!("  {:<14} {v}\n", h.name));
    }
    s
}

/// Rewrites the `kubernetesVersion` value in the inventory file, leaving every other byte alone.
pub fn edit_inventory_version(loaded: &crate::inventory::Loaded, v: Version) -> Result<()> {
    if crate::inventory::is_stream(&loaded.path) {
        return Err(Error::usage(
            "--edit-inventory: the inventory came from a stream (`-i -` or a pipe), not a file to edit",
            Some("set `kubernetesVersion` in the inventory's source file yourself, or give the file with -i"),
        ));
    }
    let text = std::fs::read_to_string(&loaded.path)
        .map_err(|e| Error::io(format!("reading {}", loaded.path.display()), e))?;
    let old = &loaded.inventory.cluster.kubernetes_version;
    let pos = loaded.positions.find("cluster.kubernetesVersion").ok_or_else(|| {
        Error::msg(format!("{}: no cluster.kubernetesVersion to edit", loaded.path.display()), None)
    })?;
    let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    let line = lines.get_mut(pos.line - 1).filter(|l| l.contains(old.as_str())).ok_or_else(|| {
        Error::msg(
            format!(
                "{}:{}: kubernetesVersion is not written on one line; edit it by hand",
                loaded.path.display(),
                pos.line
            ),
            None,
        )
    })?;
    *line = line.replacen(old.as_str(), &v.to_string(), 1);
    let out = lines.join("\n");
    let tmp = loaded.path.with_extension("kubeforge-tmp");
    std::fs::write(&tmp, out).map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, &loaded.path)
        .map_err(|e| Error::io(format!("writing {}", loaded.path.display()), e))
}

/// `kubeforge upgrade rollback`.
pub fn rollback(
    inventory: &Path,
    hosts: &[String],
    to: Option<&str>,
    drain_timeout: Duration,
    options: ApplyOptions,
) -> Result<i32> {
    let c = context(inventory, &options)?;
    let state = ClusterState::load(&options.pki_root, &c.model.name)?;
    let mut back: BTreeMap<String, Version> = BTreeMap::new();
    for h in hosts {
        if c.model.host(h).is_none() {
            return Err(Error::msg(format!("`{h}` is not in the inventory"), None));
        }
        let v = match to {
            Some(t) => t.to_owned(),
            None => state.hosts.get(h).and_then(|s| s.previous_kubernetes.clone()).ok_or_else(|| {
                Error::msg(
                    format!("kubeforge has no record of {h} before an upgrade"),
                    Some("name the version with --to"),
                )
            })?,
        };
        back.insert(h.clone(), v.parse().map_err(|e: String| Error::msg(e, None))?);
    }
    let rt = tokio::runtime::Runtime::new().map_err(|e| Error::io("starting the async runtime", e))?;
    let executor = Executor::new(options.concurrency, crate::report::auto(false));
    rt.block_on(async {
        let facts = read_facts(&c.model, &c.transports).await;
        let hosts: Vec<String> = back.keys().cloned().collect();
        let guarded = apply::guarded_hosts(&c.model, Some(&hosts));
        let verified = apply::guard(&c.model, &options, &guarded, &c.transports, &executor).await?;
        let mut run = Run {
            loaded: &c.loaded,
            options: &options,
            transports: &c.transports,
            executor: &executor,
            artifacts: BTreeMap::new(),
            model: c.model.clone(),
            drain_timeout,
            verified,
        };
        for v in back.values() {
            run.prepare_artifacts(*v).await?;
        }
        let from = host_versions(&facts);
        for (h, v) in &back {
            eprintln!("[rollback] {h}: {} → {v}", from.get(h).map(|x| x.to_string()).unwrap_or("?".into()));
            for (name, o) in run.step(std::slice::from_ref(h), &from, *v).await? {
                match o {
                    Outcome::Current => println!("rollback: {name} already runs {v}"),
                    Outcome::Upgraded => println!("rollback: {name} now runs {v}"),
                    Outcome::RolledBack(e) | Outcome::Broken(e) => {
                        return Err(Error::msg(format!("{name}: the rollback to {v} failed: {e}"), None))
                    }
                }
            }
        }
        let now = read_facts(&c.model, &c.transports).await;
        print!("{}", versions_now(&c.model, &now));
        Ok(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    fn model(text: &str) -> ClusterModel {
        ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), text).unwrap())
    }

    const INV: &str = "cluster: {name: c, kubernetesVersion: v1.34.10}\nhosts:\n\
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
        assert!(gate_problems(&m, &["cp1".into()], v("v1.35.7"), &ok, &facts("v1.35.7")).is_empty());
        let p = gate_problems(&m, &["cp1".into()], v("v1.35.7"), &ok, &facts("v1.34.10"));
        assert_eq!(p, ["cp1: kube-apiserver reports v1.34.10", "cp1: kubelet reports v1.34.10"]);
        let old_api = parse_health(
            "etcd https://10.0.0.1:2379 healthy\napi 10.0.0.1 ok v1.34.10\nnode cp1|v1.34.10||True\n",
        );
        let p = gate_problems(&m, &["cp1".into()], v("v1.35.7"), &old_api, &facts("v1.35.7"));
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
    fn apply_refuses_to_change_the_version_of_installed_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("inv.yaml");
        std::fs::write(&p, INV.replace("v1.34.10", "v1.35.7")).unwrap();
        let loaded = crate::inventory::load(&p).unwrap();
        let mut st = ClusterState::default();
        st.record_hosts(&model(INV), ["cp1", "w1"]);
        let newer = ClusterModel::derive(&loaded);
        let e = apply::check_version_unchanged(&newer, &st, &loaded).unwrap_err();
        assert!(e.to_string().contains("asks for Kubernetes v1.35.7, but cp1, w1 run v1.34.10"), "{e}");
        assert!(format!("{e:?}").contains("upgrade apply"), "{e:?}");
        st.record_hosts(&newer, ["cp1", "w1"]);
        apply::check_version_unchanged(&newer, &st, &loaded).unwrap();
        let older = model(INV);
        let e = apply::check_version_unchanged(&older, &st, &loaded).unwrap_err();
        assert!(format!("{e:?}").contains("does not downgrade"), "{e:?}");
    }

    #[test]
    fn the_inventory_version_is_edited_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("inv.yaml");
        let text = "# my cluster\ncluster:\n  name: c\n  kubernetesVersion: v1.34.10   # pinned\nhosts:\n  - {name: cp1, address: 10.0.0.1, roles: [control-plane, etcd, worker]}\n";
        std::fs::write(&p, text).unwrap();
        let loaded = crate::inventory::load(&p).unwrap();
        edit_inventory_version(&loaded, v("v1.35.7")).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), text.replace("v1.34.10", "v1.35.7"));
    }

    /// The leadership hand-over in a real shell against a fake etcdctl: the leader hands over to the first
    /// other started voting member (not a learner, not an unstarted member); a follower does nothing.
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
