//! `kubeforge upgrade plan | apply | rollback`: skew-safe rolling upgrades of Kubernetes, as the stages of
//! [`crate::workflow::UPGRADE`] on one [`Session`] (one connection per host, `--concurrency` honoured, the
//! fake transport in tests).
//!
//! - [`assess`] (stages `read` and `path`) reads every host's binaries' versions and the cluster's health
//!   and computes an [`UpgradePlan`]: the path one minor per hop, each hop's checks and its steps
//!   ([`steps`]: etcd-only members, then control planes one at a time, then workers `--batch` at a time).
//!   `upgrade plan` prints that value (`-o json`: an `UpgradePlan` document) and `upgrade apply` executes the
//!   same value, so the plan shown is the plan run.
//! - `upgrade apply` then checks the hosts' identity, resolves every hop's artifacts (and the current ones,
//!   for a rollback), asks (or `--yes`, or ends at `--dry-run`), snapshots etcd, and runs each step through
//!   [`rolling`]: plan the step's hosts at the hop's version (hosts already on it are skipped), cordon the
//!   nodes whose kubelet, kube-proxy or runtime changes, drain them, hand etcd leadership away, converge
//!   (the apply workflow at the hop's version), gate (services, `/readyz` at the version, etcd member, Node
//!   Ready with the new kubelet, every binary's version), uncordon, wait for the workloads. A step that
//!   fails is rolled back (converged to what its hosts ran, gated, uncordoned) and the upgrade stops.
//! - Interrupts: the first Ctrl-C lets the step in progress finish. Before the converge, the cordoned nodes
//!   are uncordoned and nothing was changed; during it, the rollback (cleanup, which the interrupt does not
//!   stop) puts the hosts back. Either way the command ends with exit 130 and a re-run continues: the
//!   cluster state records each host's versions, so hosts already on the target have nothing to do.
//! - Certificates within their renewal window are re-issued on the way (the store renews them whenever
//!   material is prepared).

use crate::inventory::validate::Version;
use crate::model::ClusterModel;
use crate::prompt::Consent;
use crate::session::Session;
use crate::state::ClusterState;
use crate::workflow::UPGRADE;
use crate::{Error, Result};
use policy::{Check, Health, HostFacts, KUBE_BINARIES};
use rolling::{Outcome, Run};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

pub mod policy;
mod rolling;

pub use policy::{
    gate_problems, parse_facts, parse_health, path, problems, ready_counts, release_note_checks,
    runtime_checks, skew_checks, MOVE_LEADER,
};

/// `--to`: a version, parsed where it is typed.
fn parse_version(s: &str) -> std::result::Result<Version, String> {
    s.parse::<Version>().map_err(|e| format!("{e} (write it like `v1.37.1`)"))
}

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
    #[arg(long, value_parser = parse_version)]
    pub to: Option<Version>,
    /// Workers upgraded at once, as `upgrade apply --batch` (the plan shows the same steps).
    #[arg(long, default_value = "1")]
    pub batch: Batch,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: crate::output::Format,
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
    #[arg(long, value_parser = parse_version)]
    pub to: Option<Version>,
    /// Show the plan `upgrade plan` shows; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask (without it, the plan is shown and a terminal is asked; without a terminal it refuses).
    #[arg(short, long)]
    pub yes: bool,
    /// Workers upgraded at once: a count (`2`) or a share of the workers (`20%`).
    #[arg(long, default_value = "1")]
    pub batch: Batch,
    /// How long draining one node may take.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// How long a step's hosts may take to pass their health gate after their converge before they are
    /// rolled back.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub gate_timeout: Duration,
    /// Set `kubernetesVersion` in the inventory file to the target once the upgrade succeeded.
    #[arg(long)]
    pub edit_inventory: bool,
    /// Preflight checks to report as warnings instead of errors (`cpu,memory`, or `all`).
    #[arg(long, value_delimiter = ',', value_parser = crate::args::preflight_check)]
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
    #[arg(long, value_parser = parse_version)]
    pub to: Option<Version>,
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

/// Runs a parsed `upgrade` command: flags are checked first, then one session (one connection per host)
/// serves the whole command.
pub fn run(cmd: UpgradeCommand) -> Result<i32> {
    match cmd {
        UpgradeCommand::Plan(a) => {
            let o = a.common.options(&a.inventory)?;
            let session = Session::open(&a.inventory, o)?;
            plan_in(&session, a.to, a.batch, a.output)
        }
        UpgradeCommand::Apply(a) => {
            if a.edit_inventory && crate::inventory::is_stream(&a.inventory) {
                return Err(Error::usage(
                    "--edit-inventory: the inventory comes from a stream (`-i -` or a pipe), not a file to edit",
                    Some("give the inventory file with -i, or set its `kubernetesVersion` yourself after the upgrade"),
                ));
            }
            let consent = Consent::from_flags("upgrade apply", a.dry_run, a.yes)?;
            let mut o = a.common.options(&a.inventory)?;
            o.ignore_preflight = a.ignore_preflight_errors;
            let session = Session::open(&a.inventory, o)?;
            apply_in(
                &session,
                &UpgradeOptions {
                    to: a.to,
                    consent,
                    batch: a.batch,
                    drain_timeout: a.drain_timeout,
                    gate_timeout: a.gate_timeout,
                    edit_inventory: a.edit_inventory,
                },
            )
        }
        UpgradeCommand::Rollback(a) => {
            let mut o = a.common.options(&a.inventory)?;
            o.ignore_preflight = vec!["all".into()];
            let session = Session::open(&a.inventory, o)?;
            rollback_in(&session, &a.hosts, a.to, a.drain_timeout)
        }
    }
}

/// Settings of `upgrade apply` (the connection, PKI, cache and preflight settings are the session's).
#[derive(Debug, Clone)]
pub struct UpgradeOptions {
    /// Target version (default: the inventory's).
    pub to: Option<Version>,
    /// Preview (`--dry-run`), go ahead (`--yes`), or show the plan then ask.
    pub consent: Consent,
    /// Worker batch size.
    pub batch: Batch,
    /// Drain limit per node.
    pub drain_timeout: Duration,
    /// Limit of a step's health gate.
    pub gate_timeout: Duration,
    /// Write the target into the inventory afterwards.
    pub edit_inventory: bool,
}

// ---------------------------------------------------------------------------------------------------------
// The plan: one value, printed by `upgrade plan` and executed by `upgrade apply`

/// What a step of a hop moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepKind {
    /// An etcd member without a control plane.
    EtcdMember,
    /// A control plane (and its etcd member, kubelet and kube-proxy), one at a time.
    ControlPlane,
    /// A batch of workers (`--batch`).
    Workers,
}

/// One step of a hop: hosts that move together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedStep {
    /// What the step moves.
    pub kind: StepKind,
    /// Its hosts, in inventory order.
    pub hosts: Vec<String>,
}

/// One hop: every host to `version`, step by step.
#[derive(Debug, Clone, Serialize)]
pub struct Hop {
    /// The version of the hop (the newest patch of its minor, or the target).
    pub version: Version,
    /// The version-skew, runtime and release-note checks of moving to it.
    pub checks: Vec<Check>,
    /// The steps, in the order they run.
    pub steps: Vec<PlannedStep>,
}

/// The versions one host runs now.
#[derive(Debug, Clone, Serialize)]
pub struct HostVersions {
    /// The host's name.
    pub name: String,
    /// Version per binary (`kubelet`, `etcd`, `containerd`, ...).
    pub versions: BTreeMap<String, Version>,
    /// Why the host could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the first hop changes on one host (a dry run of the apply workflow at its version).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Touch {
    /// The host.
    pub host: String,
    /// Changes in the host's phases.
    pub changes: usize,
    /// Bytes to send.
    pub bytes: u64,
    /// Its node components (kubelet, kube-proxy, runtime) change: it is drained first.
    pub drains: bool,
}

/// An upgrade's plan: the path, each hop's checks and steps, and the cluster's health. `upgrade plan`
/// prints it and `upgrade apply` executes this very value (the same function computes it for both).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpgradePlan {
    /// The cluster's name.
    pub cluster: String,
    /// The version the control planes run (the lowest apiserver).
    pub current: Version,
    /// The target.
    pub target: Version,
    /// What each host runs now.
    pub hosts: Vec<HostVersions>,
    /// The hops, one minor each (empty: every host runs the target).
    pub hops: Vec<Hop>,
    /// Everything unhealthy now (an upgrade starts from a healthy cluster).
    pub problems: Vec<String>,
    /// What the first hop changes per host (`upgrade plan` only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub touches: Vec<Touch>,
}

impl UpgradePlan {
    /// What refuses the upgrade: health problems and failed fatal checks.
    pub fn blockers(&self) -> Vec<String> {
        let mut b = self.problems.clone();
        b.extend(
            self.hops.iter().flat_map(|h| &h.checks).filter(|c| c.fatal && !c.ok).map(|c| c.text.clone()),
        );
        b
    }

    /// The plan for people: versions per host and component, the path, each hop's steps and checks, the
    /// health, and what the first hop touches.
    pub fn table(&self) -> String {
        let mut s = format!("{:<14} {:<24} {:<10}    {}\n", "HOST", "COMPONENT", "CURRENT", "TARGET");
        for h in &self.hosts {
            if let Some(e) = &h.error {
                s.push_str(&format!("{:<14} {:<24} UNREACHABLE: {e}\n", h.name, "-"));
                continue;
            }
            for b in KUBE_BINARIES {
                if let Some(v) = h.versions.get(b) {
                    let arrow = if *v == self.target { "=" } else { "→" };
                    s.push_str(&format!(
                        "{:<14} {:<24} {:<10} {arrow}  {}\n",
                        h.name,
                        b,
                        v.to_string(),
                        self.target
                    ));
                }
            }
            if let Some(v) = h.versions.get("containerd") {
                s.push_str(&format!(
                    "{:<14} {:<24} {:<10} (the runtime of the target's minor: see each hop)\n",
                    h.name,
                    "containerd",
                    v.to_string()
                ));
            }
            if let Some(v) = h.versions.get("etcd") {
                s.push_str(&format!(
                    "{:<14} {:<24} {:<10} (etcd follows cluster.components)\n",
                    h.name,
                    "etcd",
                    v.to_string()
                ));
            }
        }
        if self.hops.is_empty() {
            s.push_str(&format!("path: the cluster already runs {}\n", self.target));
        } else {
            let path: Vec<String> = std::iter::once(self.current.to_string())
                .chain(self.hops.iter().map(|h| h.version.to_string()))
                .collect();
            let n = self.hops.len();
            s.push_str(&format!("path: {} ({n} hop{})\n", path.join(" → "), if n == 1 { "" } else { "s" }));
        }
        for hop in &self.hops {
            s.push_str(&format!("hop to {}:\n", hop.version));
            for (i, st) in hop.steps.iter().enumerate() {
                let what = match st.kind {
                    StepKind::EtcdMember => "etcd member",
                    StepKind::ControlPlane => {
                        "control plane (apiserver → controller-manager → scheduler, then kubelet and kube-proxy, drained)"
                    }
                    StepKind::Workers => "workers (cordon, drain, kubelet and kube-proxy, Ready gate, uncordon)",
                };
                s.push_str(&format!("  {:>2}. {}: {what}\n", i + 1, st.hosts.join(", ")));
            }
            for ch in &hop.checks {
                let mark = if ch.ok {
                    "ok  "
                } else if ch.fatal {
                    "FAIL"
                } else {
                    "warn"
                };
                s.push_str(&format!("  {mark} {}\n", ch.text));
            }
        }
        if self.problems.is_empty() {
            s.push_str("health: every etcd member healthy, every apiserver ready, every Node Ready\n");
        } else {
            for p in &self.problems {
                s.push_str(&format!("health: {p}\n"));
            }
        }
        if let Some(hop) = self.hops.first().filter(|_| !self.touches.is_empty()) {
            s.push_str(&format!("hop to {} touches:\n", hop.version));
            for t in &self.touches {
                s.push_str(&format!(
                    "  {}: {} change(s), {} bytes{}\n",
                    t.host,
                    t.changes,
                    t.bytes,
                    if t.drains { ", drains the node" } else { "" }
                ));
            }
        }
        s
    }
}

/// The steps of every hop: etcd-only members one at a time, then control planes one at a time, then the
/// workers `batch` at a time, each group in inventory order.
pub fn steps(model: &ClusterModel, batch: Batch) -> Vec<PlannedStep> {
    let one = |kind, name: &str| PlannedStep { kind, hosts: vec![name.to_owned()] };
    let mut steps: Vec<PlannedStep> = model
        .etcd_members()
        .filter(|h| !h.roles.control_plane)
        .map(|h| one(StepKind::EtcdMember, &h.name))
        .collect();
    steps.extend(model.control_planes().map(|h| one(StepKind::ControlPlane, &h.name)));
    let workers: Vec<String> = model
        .hosts
        .iter()
        .filter(|h| !h.roles.control_plane && !h.roles.etcd)
        .map(|h| h.name.clone())
        .collect();
    let size = batch.size(workers.len()).max(1);
    steps.extend(workers.chunks(size).map(|c| PlannedStep { kind: StepKind::Workers, hosts: c.to_vec() }));
    steps
}

/// The version the control planes run (the lowest apiserver), else the lowest of any host.
fn current_version(model: &ClusterModel, facts: &BTreeMap<String, HostFacts>) -> Option<Version> {
    let cps: Vec<Version> = model
        .control_planes()
        .filter_map(|h| facts.get(&h.name)?.versions.get("kube-apiserver").copied())
        .collect();
    cps.into_iter().min().or_else(|| facts.values().filter_map(HostFacts::kubernetes).min())
}

/// The Kubernetes version each host runs (its lowest Kubernetes binary).
fn host_versions(facts: &BTreeMap<String, HostFacts>) -> BTreeMap<String, Version> {
    facts.iter().filter_map(|(h, f)| Some((h.clone(), f.kubernetes()?))).collect()
}

/// The newest release the release source offers of each minor between `from` and `to` (the hops a path
/// passes through; the target itself is given, so a one-minor upgrade asks the source nothing).
async fn latest_between(
    session: &Session,
    from: Version,
    to: Version,
) -> Result<BTreeMap<u32, Option<Version>>> {
    let mut m = BTreeMap::new();
    if from.minor + 1 >= to.minor {
        return Ok(m);
    }
    let source = release_source(session)?;
    for minor in from.minor + 1..to.minor {
        let v = source.latest_kubernetes(from.major, minor, &crate::artifacts::Silent).await?;
        m.insert(minor, v.and_then(|v| v.parse().ok()));
    }
    Ok(m)
}

fn release_source(session: &Session) -> Result<crate::artifacts::ArtifactSource> {
    let model = session.model();
    crate::artifacts::ArtifactSource::from_spec(
        session.loaded.inventory.cluster.release_source.as_ref(),
        &model.inventory_dir,
        &session.options.cache_dir,
    )
    .map_err(Error::from)
}

/// Stages `read` and `path`: reads every host's versions and the cluster's health, and computes the plan
/// to `target` (`batch` workers per step). Refuses a downgrade and a skipped minor; what else blocks the
/// upgrade is in [`UpgradePlan::blockers`].
pub async fn assess(session: &Session, target: Version, batch: Batch) -> Result<(UpgradePlan, Health)> {
    let model = session.model();
    session.enter(&UPGRADE, "read");
    let first = model
        .control_planes()
        .next()
        .ok_or_else(|| Error::msg("the inventory has no control plane", None))?;
    let t = session.transport(&first.name)?;
    let ex = &session.executor;
    // One after the other: on a small control plane, the version reads and the health probes compete for
    // the same CPU, and a probe that times out would report a healthy apiserver as not ready.
    let mut facts = policy::read_facts(&model, &session.transports, ex).await;
    let mut health = policy::read_health(&model, t.as_ref()).await?;
    // One reading can catch a moment's blip (an apiserver busy past the probe's timeout): what is unhealthy
    // must still be so in a second reading, 5 s later, before the upgrade is refused for it.
    if !problems(&model, &health, &facts).is_empty() {
        tokio::time::sleep(Duration::from_secs(5)).await;
        facts = policy::read_facts(&model, &session.transports, ex).await;
        health = policy::read_health(&model, t.as_ref()).await?;
    }
    session.enter(&UPGRADE, "path");
    let current = current_version(&model, &facts).ok_or_else(|| {
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
    let mut versions = Vec::new();
    if current < target {
        let latest = latest_between(session, current, target).await?;
        versions =
            path(current, target, |m| latest.get(&m).copied().flatten()).map_err(|e| Error::msg(e, None))?;
    }
    // Hosts left behind at the target's own version (an interrupted run): one hop finishes them.
    if versions.is_empty() && host_versions(&facts).values().any(|v| *v != target) {
        versions.push(target);
    }
    let steps = steps(&model, batch);
    let kubectl = model.versions.kubectl;
    let mut hops = Vec::new();
    let mut f = facts.clone();
    let mut from = current;
    for hop in versions {
        let mut checks =
            skew_checks(&model, &f, hop, if kubectl == model.versions.kubernetes { hop } else { kubectl });
        checks.extend(release_note_checks(&session.loaded.inventory.cluster.extra_args, from, hop));
        let runtime = rolling::at_version(&session.loaded, hop).1.versions.containerd;
        checks.extend(runtime_checks(&model, &f, hop, runtime));
        hops.push(Hop { version: hop, checks, steps: steps.clone() });
        from = hop;
        // After the hop every binary is on it, and every node on the hop's container runtime (the next hop
        // does not move it again).
        for hf in f.values_mut() {
            for (b, v) in hf.versions.iter_mut() {
                if KUBE_BINARIES.contains(&b.as_str()) {
                    *v = hop;
                } else if b == "containerd" {
                    *v = runtime;
                }
            }
        }
    }
    let plan = UpgradePlan {
        cluster: model.name.clone(),
        current,
        target,
        hosts: model
            .hosts
            .iter()
            .map(|h| {
                let f = facts.get(&h.name).cloned().unwrap_or_default();
                HostVersions { name: h.name.clone(), versions: f.versions, error: f.error }
            })
            .collect(),
        hops,
        problems: problems(&model, &health, &facts),
        touches: Vec::new(),
    };
    Ok((plan, health))
}

/// The facts of the plan's hosts, as read.
fn facts_of(plan: &UpgradePlan) -> BTreeMap<String, HostFacts> {
    plan.hosts
        .iter()
        .map(|h| (h.name.clone(), HostFacts { versions: h.versions.clone(), error: h.error.clone() }))
        .collect()
}

/// `upgrade plan`'s document: the versions the release source offers (without `--to`) and a plan per
/// target.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PlanDocument {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    offered: Vec<Version>,
    plans: Vec<UpgradePlan>,
}

/// `kubeforge upgrade plan` in a session, in `format`: exit 1 when a plan has a blocker.
pub fn plan_in(
    session: &Session,
    to: Option<Version>,
    batch: Batch,
    format: crate::output::Format,
) -> Result<i32> {
    let model = session.model();
    let result = session.block_on(async {
        let (targets, offered) = match to {
            Some(t) => (vec![t], Vec::new()),
            None => {
                let facts = policy::read_facts(&model, &session.transports, &session.executor).await;
                let cur = current_version(&model, &facts)
                    .ok_or_else(|| Error::msg("no host reports a Kubernetes version", None))?;
                let source = release_source(session)?;
                let mut v = Vec::new();
                for minor in [cur.minor, cur.minor + 1] {
                    if let Some(l) =
                        source.latest_kubernetes(cur.major, minor, &crate::artifacts::Silent).await?
                    {
                        let l: Version = l.parse().map_err(|e: String| Error::msg(e, None))?;
                        if l > cur {
                            v.push(l);
                        }
                    }
                }
                if v.is_empty() && !format.is_document() {
                    session.say(format!(
                        "{}: {cur} is the newest release {} offers for v{}.{} and v{}.{}\n",
                        model.name,
                        source.describe(),
                        cur.major,
                        cur.minor,
                        cur.major,
                        cur.minor + 1
                    ));
                } else if !format.is_document() {
                    session.say(format!(
                        "{} offers: {}\n",
                        source.describe(),
                        v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ")
                    ));
                }
                (v.clone(), v)
            }
        };
        let mut plans = Vec::new();
        for target in targets {
            let (mut plan, _) = assess(session, target, batch).await?;
            if let Some(hop) = plan.hops.first().map(|h| h.version) {
                plan.touches = touches(session, &model, hop).await?;
            }
            plans.push(plan);
        }
        Ok::<_, Error>((offered, plans))
    });
    eprint!("{}", crate::apply::host_stats(&session.transports));
    let (offered, plans) = result?;
    let code = if plans.iter().any(|p| !p.blockers().is_empty()) { 1 } else { 0 };
    if format.is_document() {
        session.say(crate::output::render(format, "UpgradePlan", &PlanDocument { offered, plans })?);
    } else {
        for p in &plans {
            session.say(format!("== upgrade to {}\n{}", p.target, p.table()));
        }
    }
    Ok(code)
}

/// What the hop to `hop` changes per host: a dry run of the apply workflow at its version, in a scratch
/// copy of the store (stage `preview`).
async fn touches(session: &Session, model: &ClusterModel, hop: Version) -> Result<Vec<Touch>> {
    session.enter(&UPGRADE, "preview");
    let all = crate::apply::guarded_hosts(model, None);
    let verified =
        crate::apply::guard(model, &session.options, &all, &session.transports, &session.executor).await?;
    let mut o = session.options.clone();
    o.ignore_preflight = vec!["all".into()];
    let mut run = Run::new(session, o, model.clone(), Duration::from_secs(300), verified);
    run.prepare_artifacts(hop).await?;
    let names: Vec<String> = model.hosts.iter().map(|h| h.name.clone()).collect();
    let step = run.plan(hop, &names, true).await?;
    Ok(names
        .iter()
        .map(|h| {
            let (changes, bytes, drains) = rolling::host_changes(&step.planned.summary, h);
            Touch { host: h.clone(), changes, bytes, drains }
        })
        .collect())
}

/// `kubeforge upgrade apply` in a session: the stages of [`UPGRADE`], in order.
pub fn apply_in(session: &Session, options: &UpgradeOptions) -> Result<i32> {
    let model = session.model();
    let target = options.to.unwrap_or(model.versions.kubernetes);
    let started = Instant::now();
    let result = session.block_on(async {
        let t = Instant::now();
        let (plan, _) = assess(session, target, options.batch).await?;
        eprintln!("[upgrade] versions and health read ({:.1}s)", t.elapsed().as_secs_f64());
        session.enter(&UPGRADE, "preview");
        session.say(plan.table());
        if !plan.problems.is_empty() {
            return Err(Error::msg(
                format!("the cluster is not healthy, nothing was changed: {}", plan.problems.join("; ")),
                Some("fix these first (`kubeforge status` shows the details); an upgrade starts from a healthy cluster"),
            ));
        }
        let failed = plan.blockers();
        if !failed.is_empty() {
            return Err(Error::msg(
                format!("the version-skew policy forbids this upgrade: {}", failed.join("; ")),
                Some("upgrade the hosts left behind first (one minor at a time)"),
            ));
        }
        if plan.hops.is_empty() {
            session.say(format!("upgrade: 0 changes (every host runs {target})\n"));
            return Ok((false, facts_of(&plan)));
        }
        if options.consent == Consent::Preview {
            session.say("upgrade apply --dry-run: nothing was changed; run with --yes to upgrade\n");
            return Ok((false, facts_of(&plan)));
        }
        session.enter(&UPGRADE, "identity");
        let all = crate::apply::guarded_hosts(&model, None);
        let verified =
            crate::apply::guard(&model, &session.options, &all, &session.transports, &session.executor).await?;
        session.enter(&UPGRADE, "artifacts");
        let mut run = Run::new(session, session.options.clone(), model.clone(), options.drain_timeout, verified);
        run.gate_timeout = options.gate_timeout;
        // Every hop's artifacts (and those of the versions hosts run now, for a rollback) before any host.
        let facts = facts_of(&plan);
        let mut needed: BTreeSet<Version> = plan.hops.iter().map(|h| h.version).collect();
        needed.extend(host_versions(&facts).values().copied());
        let t = Instant::now();
        for v in &needed {
            run.prepare_artifacts(*v).await?;
        }
        eprintln!("[upgrade] artifacts of {} version(s) ready ({:.1}s)", needed.len(), t.elapsed().as_secs_f64());
        if options.consent == Consent::Ask {
            session.enter(&UPGRADE, "confirm");
            if !crate::prompt::ask(&format!("Upgrade cluster `{}` to {target}?", model.name))? {
                return Err(Error::msg("upgrade cancelled, nothing was changed", None));
            }
        }
        session.boundary(&UPGRADE, "snapshot")?;
        // From here on a first Ctrl-C lets the host in progress finish (or roll back) and be uncordoned.
        crate::cleanup::writing();
        session.enter(&UPGRADE, "snapshot");
        let member = model
            .etcd_members()
            .next()
            .map(|h| h.name.clone())
            .ok_or_else(|| Error::msg("no etcd member", None))?;
        let (t, clock) = (session.transport(&member)?, Instant::now());
        let progress = crate::artifacts::TerminalProgress::default();
        let snap = crate::backup::snapshot(
            &model,
            &member,
            t.as_ref(),
            &session.options.pki_root,
            "pre-upgrade",
            &progress,
        )
        .await?;
        eprintln!(
            "[upgrade] etcd snapshot from {member}: {} ({} bytes, revision {}, {} keys, sha256 {}; {:.1}s)",
            snap.path.display(),
            snap.bytes,
            snap.revision,
            snap.total_keys,
            &snap.sha256[..16.min(snap.sha256.len())],
            clock.elapsed().as_secs_f64()
        );
        // The plan's hops and steps, as shown.
        let mut facts = facts;
        for hop in &plan.hops {
            eprintln!("[upgrade] == hop to {}", hop.version);
            let from = host_versions(&facts);
            for step in &hop.steps {
                session.boundary(&UPGRADE, "step")?;
                let outcomes = run.step(&step.hosts, &from, hop.version).await?;
                let failures: Vec<String> = outcomes
                    .iter()
                    .filter_map(|(h, o)| match o {
                        Outcome::RolledBack(e) => Some(format!(
                            "{h}: failed and rolled back to {} ({e})",
                            from.get(h).map(|v| v.to_string()).unwrap_or_default()
                        )),
                        Outcome::Broken(e) => Some(format!("{h}: failed, and the rollback failed: {e}")),
                        _ => None,
                    })
                    .collect();
                if !failures.is_empty() {
                    let now = policy::read_facts(&model, &session.transports, &session.executor).await;
                    let message =
                        format!("the upgrade stopped: {}\n{}", failures.join("\n"), versions_now(&model, &now));
                    if session.executor.stopping() {
                        return Err(Error::Interrupted {
                            message,
                            hint: Some("the host in progress was put back; run `kubeforge upgrade apply` again to go on (the hosts already upgraded are skipped)".into()),
                        });
                    }
                    return Err(Error::msg(
                        message,
                        Some("fix the cause on that host, then run `kubeforge upgrade apply` again: the hosts already upgraded are skipped"),
                    ));
                }
            }
            facts = policy::read_facts(&model, &session.transports, &session.executor).await;
        }
        Ok((true, facts))
    });
    eprint!("{}", crate::apply::host_stats(&session.transports));
    let (changed, facts) = result?;
    if !changed {
        return Ok(0);
    }
    session.enter(&UPGRADE, "report");
    session.say(versions_now(&model, &facts));
    session.say(format!(
        "upgrade: {} now runs {target} ({:.0}s)\n",
        model.name,
        started.elapsed().as_secs_f64()
    ));
    if model.versions.kubernetes != target {
        let inventory = &session.loaded.path;
        if options.edit_inventory {
            edit_inventory_version(&session.loaded, target)?;
            session.say(format!("{}: kubernetesVersion set to {target}\n", inventory.display()));
        } else {
            let line =
                session.loaded.positions.find("cluster.kubernetesVersion").map(|p| p.line).unwrap_or(0);
            session.say(format!(
                "next: set `kubernetesVersion: {target}` in {}:{line} (apply refuses to change the version), or re-run with --edit-inventory\n",
                inventory.display()
            ));
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

/// `kubeforge upgrade rollback` in a session: each host back to `to` (default: what it ran before its last
/// upgrade), one at a time, through the per-step stages.
pub fn rollback_in(
    session: &Session,
    hosts: &[String],
    to: Option<Version>,
    drain_timeout: Duration,
) -> Result<i32> {
    let model = session.model();
    let state = ClusterState::load(&session.options.pki_root, &model.name)?;
    let names = crate::selector::names(&session.loaded.inventory.hosts, Some(hosts))?.unwrap_or_default();
    let mut back: BTreeMap<String, Version> = BTreeMap::new();
    for h in &names {
        let v = match to {
            Some(t) => t,
            None => state
                .hosts
                .get(h)
                .and_then(|s| s.previous_kubernetes.clone())
                .ok_or_else(|| {
                    Error::msg(
                        format!("kubeforge has no record of {h} before an upgrade"),
                        Some("name the version with --to"),
                    )
                })?
                .parse()
                .map_err(|e: String| Error::msg(e, None))?,
        };
        back.insert(h.clone(), v);
    }
    session.block_on(async {
        let facts = policy::read_facts(&model, &session.transports, &session.executor).await;
        let hosts: Vec<String> = back.keys().cloned().collect();
        let guarded = crate::apply::guarded_hosts(&model, Some(&hosts));
        let verified =
            crate::apply::guard(&model, &session.options, &guarded, &session.transports, &session.executor)
                .await?;
        let mut run = Run::new(session, session.options.clone(), model.clone(), drain_timeout, verified);
        for v in back.values() {
            run.prepare_artifacts(*v).await?;
        }
        crate::cleanup::writing();
        let from = host_versions(&facts);
        for (h, v) in &back {
            session.boundary(&UPGRADE, "step")?;
            eprintln!("[rollback] {h}: {} → {v}", from.get(h).map(|x| x.to_string()).unwrap_or("?".into()));
            for (name, o) in run.step(std::slice::from_ref(h), &from, *v).await? {
                match o {
                    Outcome::Current => session.say(format!("rollback: {name} already runs {v}\n")),
                    Outcome::Upgraded => session.say(format!("rollback: {name} now runs {v}\n")),
                    Outcome::RolledBack(e) | Outcome::Broken(e) => {
                        return Err(Error::msg(format!("{name}: the rollback to {v} failed: {e}"), None))
                    }
                }
            }
        }
        let now = policy::read_facts(&model, &session.transports, &session.executor).await;
        session.say(versions_now(&model, &now));
        Ok(0)
    })
}

#[cfg(test)]
mod tests {
    use super::policy::tests::{model, v, INV};
    use super::*;

    #[test]
    fn apply_refuses_to_change_the_version_of_installed_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("inv.yaml");
        std::fs::write(&p, INV.replace("v1.34.10", "v1.35.7")).unwrap();
        let loaded = crate::inventory::load(&p).unwrap();
        let mut st = ClusterState::default();
        st.record_hosts(&model(INV), ["cp1", "w1"]);
        let newer = ClusterModel::derive(&loaded);
        let e = crate::apply::check_version_unchanged(&newer, &st, &loaded).unwrap_err();
        assert!(e.to_string().contains("asks for Kubernetes v1.35.7, but cp1, w1 run v1.34.10"), "{e}");
        assert!(format!("{e:?}").contains("upgrade apply"), "{e:?}");
        st.record_hosts(&newer, ["cp1", "w1"]);
        crate::apply::check_version_unchanged(&newer, &st, &loaded).unwrap();
        let older = model(INV);
        let e = crate::apply::check_version_unchanged(&older, &st, &loaded).unwrap_err();
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

    #[test]
    fn the_steps_are_etcd_members_then_control_planes_one_at_a_time_then_worker_batches() {
        let m = model(
            "cluster: {name: c, kubernetesVersion: v1.35.7}\nhosts:\n\
             - {name: e1, address: 10.0.0.9, roles: [etcd]}\n\
             - {name: cp1, address: 10.0.0.1, roles: [control-plane, etcd]}\n\
             - {name: cp2, address: 10.0.0.2, roles: [control-plane, etcd]}\n\
             - {name: w1, address: 10.0.0.3, roles: [worker]}\n\
             - {name: w2, address: 10.0.0.4, roles: [worker]}\n\
             - {name: w3, address: 10.0.0.5, roles: [worker]}\n",
        );
        let shown: Vec<(StepKind, Vec<String>)> =
            steps(&m, Batch::Nodes(2)).into_iter().map(|s| (s.kind, s.hosts)).collect();
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            shown,
            [
                (StepKind::EtcdMember, s(&["e1"])),
                (StepKind::ControlPlane, s(&["cp1"])),
                (StepKind::ControlPlane, s(&["cp2"])),
                (StepKind::Workers, s(&["w1", "w2"])),
                (StepKind::Workers, s(&["w3"])),
            ]
        );
        assert_eq!(steps(&m, Batch::Percent(100)).last().unwrap().hosts.len(), 3);
    }
}
