//! The rolling part of `upgrade apply` and `upgrade rollback`: one step at a time (an etcd-only member, a
//! control plane, a batch of workers) through the per-step stages of [`crate::workflow::UPGRADE`] (`step`
//! to `rollback`), on the command's session: its transports, its executor, its artifacts.

use super::policy::{self, HostFacts};
use crate::apply::{self, ApplyOptions, RunSummary};
use crate::disrupt::Disruption;
use crate::exec::Executor;
use crate::inventory::validate::Version;
use crate::model::ClusterModel;
use crate::session::{Artifacts, Session};
use crate::state::ClusterState;
use crate::transport::Transport;
use crate::workflow::UPGRADE;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Phases that run on the first control plane for the whole cluster, whoever the step's host is.
const CLUSTER_WIDE: [&str; 3] = ["addons", "verify", crate::phase::state::ID];
/// How long a host may take to pass its gate after its converge.
const GATE_TIMEOUT: Duration = Duration::from_secs(300);

/// The run's fixed parts.
#[derive(Clone)]
pub(super) struct Run<'a> {
    pub session: &'a Session,
    /// The options of the apply passes (preflight settings among them).
    pub options: ApplyOptions,
    /// The session's executor, or (a rollback) one an interrupt does not stop.
    pub executor: &'a Executor,
    /// Verified artifacts per Kubernetes version.
    pub artifacts: BTreeMap<Version, Artifacts>,
    /// The cluster model at the inventory's version (hosts, roles, addresses).
    pub model: ClusterModel,
    pub drain_timeout: Duration,
    /// The identity check's outcome (made before anything is written).
    pub verified: crate::identity::Verified,
    /// How long a host may take to pass its gate (tests: seconds).
    pub gate_timeout: Duration,
    /// Between two readings of a gate or the workloads (tests: none).
    pub poll: Duration,
}

/// A planned step: the material it was planned with and its plan.
pub(super) struct Step {
    model: ClusterModel,
    material: apply::Material,
    previous: ClusterState,
    pub planned: apply::Planned,
    _scratch: Option<apply::Scratch>,
}

/// The inventory with its Kubernetes version set to `v`, and its model.
pub(super) fn at_version(
    loaded: &crate::inventory::Loaded,
    v: Version,
) -> (crate::inventory::Loaded, ClusterModel) {
    let mut l = loaded.clone();
    l.inventory.cluster.kubernetes_version = v.to_string();
    let m = ClusterModel::derive(&l);
    (l, m)
}

impl<'a> Run<'a> {
    /// A run on `session` for `model`, with the session's executor.
    pub fn new(
        session: &'a Session,
        options: ApplyOptions,
        model: ClusterModel,
        drain_timeout: Duration,
        verified: crate::identity::Verified,
    ) -> Self {
        Run {
            session,
            options,
            executor: &session.executor,
            artifacts: BTreeMap::new(),
            model,
            drain_timeout,
            verified,
            gate_timeout: GATE_TIMEOUT,
            poll: Duration::from_secs(3),
        }
    }

    fn transport(&self, host: &str) -> Result<Arc<dyn Transport>> {
        self.session.transport(host)
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

    /// Taking the step's nodes out of service and back, through `api`.
    fn disruption(&self, api: &str) -> Disruption<'_> {
        Disruption {
            session: self.session,
            api: api.to_owned(),
            drain_timeout: self.drain_timeout,
            poll: self.poll,
            tag: "upgrade",
        }
    }

    pub async fn prepare_artifacts(&mut self, v: Version) -> Result<()> {
        if !self.artifacts.contains_key(&v) {
            let (l, m) = at_version(&self.session.loaded, v);
            let a = self.session.artifacts(&m, &l.inventory, &self.options).await?;
            self.artifacts.insert(v, a);
        }
        Ok(())
    }

    /// Pass one of the apply workflow at version `v` on `hosts` (plus the cluster-wide phases on the first
    /// control plane), without the `verify` phase (the upgrade's gate checks the hosts' services itself and
    /// the whole cluster after every step). A `dry` plan uses a scratch PKI copy.
    pub async fn plan(&self, v: Version, hosts: &[String], dry: bool) -> Result<Step> {
        let (_, mut model) = at_version(&self.session.loaded, v);
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
        let planned = apply::plan_workflow(
            &model,
            &mut material,
            &previous,
            &phases,
            &self.session.transports,
            self.executor,
        )
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
            &self.session.transports,
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

    /// Each host's own services pass their health checks (units active, health endpoints), the hosts read
    /// `--concurrency` at a time.
    async fn check_services(&self, hosts: &[String]) -> Result<()> {
        let checks = self
            .executor
            .each(hosts, |h| async move {
                let host = self
                    .model
                    .host(h)
                    .ok_or_else(|| Error::msg(format!("{h} is not in the inventory"), None))?;
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
            })
            .await;
        checks.into_iter().collect()
    }

    /// Waits until `hosts` pass their gate at `v`: their apiserver ready and reporting `v`, their etcd member
    /// healthy, their Node Ready with kubelet `v`, and every Kubernetes binary on them reporting `v`.
    async fn gate(&self, api: &str, hosts: &[String], v: Version) -> Result<()> {
        let start = Instant::now();
        let t = self.transport(api)?;
        let last = loop {
            // Health first, then the hosts' versions: the two on one control plane at the same time would
            // compete for its CPU and slow the probes past their timeouts.
            let health = policy::read_health(&self.model, t.as_ref()).await.unwrap_or_default();
            let facts: BTreeMap<String, HostFacts> = self
                .executor
                .each(hosts, |h| async move {
                    let facts = match self.transport(h) {
                        Ok(tr) => policy::host_facts(tr.as_ref()).await,
                        Err(e) => HostFacts { error: Some(e.to_string()), ..Default::default() },
                    };
                    (h.clone(), facts)
                })
                .await
                .into_iter()
                .collect();
            let problems = policy::gate_problems(&self.model, hosts, Some(v), &health, &facts);
            if problems.is_empty() {
                return Ok(());
            }
            if start.elapsed() >= self.gate_timeout {
                break problems;
            }
            tokio::time::sleep(self.poll).await;
        };
        Err(Error::msg(
            format!(
                "health gate at {v} not passed within {}s: {}",
                self.gate_timeout.as_secs(),
                last.join("; ")
            ),
            None,
        ))
    }
}

/// Per host of `summary`'s plan: (changes in host phases, bytes, node components change).
pub(super) fn host_changes(summary: &RunSummary, host: &str) -> (usize, u64, bool) {
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
pub(super) enum Outcome {
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
    /// One step: `hosts` (an etcd-only member, a control plane, or a batch of workers) from the versions in
    /// `from` to `to`, through the stages `step` to `rollback`. A failure is rolled back and reported in the
    /// outcomes; an error means the step stopped before anything was converged (a failed cordon or drain,
    /// an interrupt), with every node it cordoned uncordoned again.
    pub async fn step(
        &self,
        hosts: &[String],
        from: &BTreeMap<String, Version>,
        to: Version,
    ) -> Result<Vec<(String, Outcome)>> {
        let session = self.session;
        session.enter(&UPGRADE, "step");
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
        let to_drain: Vec<String> = todo.iter().filter(|(_, n)| *n).map(|(h, _)| h.clone()).collect();
        let d = self.disruption(&api);
        let before = if to_drain.is_empty() { BTreeMap::new() } else { d.ready_by_owner().await? };
        // The nodes cordoned so far: whatever stops the step before its converge uncordons them. The whole
        // batch is cordoned before the first drain, so no evicted pod lands on a node about to be drained.
        let mut cordoned: Vec<String> = Vec::new();
        if !to_drain.is_empty() && !session.executor.stopping() {
            session.enter(&UPGRADE, "cordon");
            cordoned = d.cordon(&to_drain, &format!("its upgrade to {to}")).await?;
            session.enter(&UPGRADE, "drain");
        }
        d.drain(&cordoned).await?;
        // An interrupt during the drains: nothing was converged; the drained nodes take pods again.
        if session.executor.stopping() {
            d.uncordon(&cordoned).await;
            return Err(session.boundary(&UPGRADE, "converge").expect_err("stopping"));
        }
        let names: Vec<String> = todo.iter().map(|(h, _)| h.clone()).collect();
        let t0 = Instant::now();
        session.enter(&UPGRADE, "leadership");
        d.hand_over_etcd_leadership(&self.model, &names).await;
        session.enter(&UPGRADE, "converge");
        let result = match self.execute(planned).await {
            Ok(s) => {
                eprint!("{}", apply::traffic_table(&s.traffic));
                session.enter(&UPGRADE, "gate");
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
                if !cordoned.is_empty() {
                    session.enter(&UPGRADE, "uncordon");
                    // Cleanup: an interrupt now does not leave the upgraded nodes cordoned.
                    for h in &cordoned {
                        d.kubectl("uncordon", &["uncordon", h], Duration::from_secs(30)).await?;
                        crate::cleanup::host_doing(h, format!("upgraded to {to} and uncordoned"));
                        eprintln!("[upgrade] {h}: uncordoned");
                    }
                    session.enter(&UPGRADE, "workloads");
                    let clock = Instant::now();
                    d.workload_gate(&before).await?;
                    eprintln!(
                        "[upgrade] workloads back to Ready ({} controller(s), {:.1}s)",
                        before.len(),
                        clock.elapsed().as_secs_f64()
                    );
                }
                out.extend(names.into_iter().map(|h| (h, Outcome::Upgraded)));
            }
            Err(e) => {
                session.enter(&UPGRADE, "rollback");
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
                            Ok(()) => Outcome::RolledBack(format!("{e}")),
                            Err(r) => Outcome::Broken(format!("{e}; the rollback to {v} failed too: {r}")),
                        };
                        out.push((h.clone(), o));
                    }
                }
                // A node goes back into service when it runs what it ran before; one whose rollback failed
                // stays cordoned (it is broken: no pods belong there), and the report says so.
                let back: Vec<String> = cordoned
                    .iter()
                    .filter(|h| out.iter().any(|(n, o)| n == *h && matches!(o, Outcome::RolledBack(_))))
                    .cloned()
                    .collect();
                d.uncordon(&back).await;
            }
        }
        Ok(out)
    }
}
