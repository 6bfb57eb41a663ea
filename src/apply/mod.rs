//! `kubeforge apply` and the workflow runner every lifecycle command uses.
//!
//! A run has two passes. **Plan**: the read-only checks (preflight) run, then every participating host is
//! probed once for the state of every phase, and the differences become a [`Plan`] value. `--dry-run`
//! prints it (and `--out` saves it as a [`crate::plan::PlanRecord`]) and stops there: nothing is written to
//! any host, and nothing under `pki/` either (material that must be generated to compute digests goes to a
//! temporary copy of the store). **Execute**: the plan, and only the plan, is carried out phase by phase;
//! `--plan FILE` first checks that a fresh plan equals the saved one and refuses when a host or the inventory
//! changed since. Phases converge their hosts in parallel, except that restarts of running etcd members and
//! control planes go one host (or `--batch` hosts) at a time, each gated on its health waits. `--hosts`
//! restricts a run to some hosts (cluster-wide phases still run on the first control plane). After each
//! phase the cluster state file (`pki/<cluster>/state.json`) records the checkpoint; a failure stops the run
//! at the phase boundary with every failing host reported, and a re-run continues from where it stopped.

use crate::artifacts::{self, ArtifactSource, Component as Art, LocalArtifact, Requirement};
use crate::exec::{Executor, HostPlan, Step};
use crate::identity::Verified;
pub use crate::material::{api_lb_candidates, local_arch, ApplyOptions, LocalBinary, Material};
use crate::model::ClusterModel;
use crate::phase::{Context, HostWork, Phase, Rollout};
use crate::pki::store::NewKeys;
use crate::plan::{ActualState, HostChanges, HostDesired, PhasePlan, Plan};
use crate::state::ClusterState;
use crate::transport::ssh::{ConnectOptions, SshTarget, SshTransport};
use crate::transport::Transport;
use crate::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// The balancer binary of every node architecture the cluster needs one for (none without a node-local
/// balancer endpoint).
fn api_lb_binaries(model: &ClusterModel, dir: Option<&Path>) -> Result<BTreeMap<String, LocalBinary>> {
    let mut out = BTreeMap::new();
    if model.endpoint.mode != crate::model::EndpointMode::LocalLb {
        return Ok(out);
    }
    for h in model.hosts.iter().filter(|h| h.is_node) {
        if out.contains_key(&h.arch) {
            continue;
        }
        let candidates = api_lb_candidates(dir, &h.arch);
        let Some(found) = candidates.iter().find(|p| p.is_file()) else {
            let beside = candidates
                .iter()
                .rev()
                .find(|p| p.to_string_lossy().ends_with(&format!("-linux-{}", h.arch)))
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            return Err(Error::msg(
                format!(
                    "host `{}` needs the node-local API balancer for linux/{} (the cluster's endpoint is a \
                     balancer on every node), and no kubeforge-apilb for it was found (looked for: {})",
                    h.name,
                    h.arch,
                    candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
                ),
                Some(&format!(
                    "install kubeforge-apilb together with kubeforge (both come with every release), or put one \
                     built for linux/{} at {beside} (or in the directory KUBEFORGE_APILB_DIR names)",
                    h.arch
                )),
            ));
        };
        out.insert(h.arch.clone(), LocalBinary::read(found)?);
    }
    Ok(out)
}

/// Resolves (downloads or reads from the cache/bundle, verifying checksums) every artifact the cluster
/// needs, once per component and architecture. Notes (test doubles) are printed. A CNI manifest URL is
/// fetched into the cache too, held to its sha256 pin (the addons phase reads it from there).
pub async fn prepare_artifacts(
    model: &ClusterModel,
    inv: &crate::inventory::Inventory,
    cache_dir: &Path,
) -> Result<BTreeMap<(Art, String), LocalArtifact>> {
    let source =
        ArtifactSource::from_spec(inv.cluster.release_source.as_ref(), &model.inventory_dir, cache_dir)?;
    let v = &model.versions;
    let versions = artifacts::Versions {
        kubernetes: v.kubernetes.to_string(),
        etcd: v.etcd.to_string(),
        containerd: v.containerd.to_string(),
        runc: v.runc.to_string(),
        cni_plugins: v.cni_plugins.to_string(),
        crictl: v.crictl.to_string(),
        kubectl: v.kubectl.to_string(),
    };
    let reqs: Vec<Requirement> = artifacts::requirements_for_hosts(&inv.hosts, &versions)?;
    let progress = artifacts::TerminalProgress::default();
    let mut out = BTreeMap::new();
    let mut notes = BTreeMap::new();
    for r in reqs {
        let optional = matches!(r.component, Art::Containerd | Art::Runc | Art::CniPlugins | Art::Crictl);
        let a = match source.ensure(&r, &progress).await {
            Ok(a) => a,
            // A bundle without the container runtime is fine: the runtime phase then uses (and requires) the
            // distribution's packages on the hosts. A failed download is never skipped.
            Err(artifacts::ArtifactError::NotInBundle { .. }) if optional => {
                eprintln!(
                    "note: {} is not in the bundle; nodes must have the distribution's package",
                    r.component.name()
                );
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(n) = &a.note {
            notes.insert(r.component.name().to_owned(), n.clone());
        }
        out.insert((r.component, r.arch.clone()), a);
    }
    if !notes.is_empty() {
        eprintln!("note: these binaries are not the official releases:");
        for (c, n) in notes {
            eprintln!("  {c}: {n}");
        }
    }
    if let crate::model::Cni::Manifest { source: crate::model::CniManifest::Url { url, sha256 } } = &model.cni
    {
        artifacts::manifest::fetch(url, sha256, cache_dir, artifacts::RetryPolicy::default(), &progress)
            .await?;
    }
    Ok(out)
}

/// Opens one transport per host (connections are made on first use and kept for the whole run).
pub fn transports(
    loaded: &crate::inventory::Loaded,
    connect: &ConnectOptions,
) -> Result<BTreeMap<String, Arc<dyn Transport>>> {
    let mut out = BTreeMap::new();
    for h in &loaded.inventory.hosts {
        let target = SshTarget::from_inventory(&loaded.inventory, &loaded.dir, h, connect)?;
        out.insert(h.name.clone(), Arc::new(SshTransport::new(target)) as Arc<dyn Transport>);
    }
    Ok(out)
}

/// The outcome of a workflow run.
pub struct RunSummary {
    /// What the run did (or, in a dry run, would do).
    pub plan: Plan,
    /// Each executed phase's report (plan-time checks included).
    pub phases: Vec<crate::exec::PhaseReport>,
    /// SSH traffic per phase and host (round trips and bytes sent during that phase).
    pub traffic: Vec<PhaseTraffic>,
}

/// The SSH traffic of one phase, per participating host.
#[derive(Debug, Clone, Default)]
pub struct PhaseTraffic {
    /// Phase id.
    pub phase: String,
    /// `(host, round trips, bytes sent)` during the phase.
    pub hosts: Vec<(String, u64, u64)>,
    /// Bytes of file content the phase wrote (all hosts): what a cold run must send once.
    pub written_bytes: u64,
}

/// The traffic table printed after a run: per phase, the most round trips any one host needed, the bytes
/// sent to all hosts, and the file content written. A converged re-run shows one round trip per host for
/// the whole plan and no file bytes.
pub fn traffic_table(traffic: &[PhaseTraffic]) -> String {
    let mut s = format!(
        "{:<16} {:>5} {:>16} {:>14} {:>14}\n",
        "PHASE", "HOSTS", "ROUND TRIPS/HOST", "BYTES SENT", "FILE BYTES"
    );
    let (mut rt, mut sent, mut written) = (0u64, 0u64, 0u64);
    for p in traffic {
        let max = p.hosts.iter().map(|h| h.1).max().unwrap_or(0);
        let min = p.hosts.iter().map(|h| h.1).min().unwrap_or(0);
        let bytes: u64 = p.hosts.iter().map(|h| h.2).sum();
        rt += p.hosts.iter().map(|h| h.1).sum::<u64>();
        sent += bytes;
        written += p.written_bytes;
        let per_host = if min == max { max.to_string() } else { format!("{min}-{max}") };
        s.push_str(&format!(
            "{:<16} {:>5} {:>16} {:>14} {:>14}\n",
            p.phase,
            p.hosts.len(),
            per_host,
            bytes,
            p.written_bytes
        ));
    }
    s.push_str(&format!("{:<16} {:>5} {:>16} {:>14} {:>14}\n", "total", "", rt, sent, written));
    s
}

/// Per-host totals of a run, one `[stats] HOST: N round trips, M bytes sent, K connection(s)` line each
/// (a host that took no part shows 0 round trips).
pub fn host_stats(transports: &BTreeMap<String, Arc<dyn Transport>>) -> String {
    let mut s = String::new();
    for t in transports.values() {
        let st = t.stats();
        s.push_str(&format!(
            "[stats] {}: {} round trips, {} bytes sent, {} connection(s)\n",
            t.host(),
            st.round_trips,
            st.bytes_sent,
            st.connects
        ));
    }
    s
}

impl RunSummary {
    /// Total number of changes.
    pub fn total_changes(&self) -> usize {
        self.plan.total_changes()
    }
}

/// Checks `--phases` against the workflow: every name must be one of its phase ids.
pub fn select_phases<'a>(phases: &[&'a dyn Phase], only: Option<&[String]>) -> Result<Vec<&'a dyn Phase>> {
    let Some(only) = only else { return Ok(phases.to_vec()) };
    let ids: Vec<&str> = phases.iter().map(|p| p.id()).collect();
    let unknown: Vec<&String> = only.iter().filter(|o| !ids.contains(&o.as_str())).collect();
    if !unknown.is_empty() {
        return Err(Error::usage(
            format!(
                "unknown phase{} {}",
                if unknown.len() == 1 { "" } else { "s" },
                unknown.iter().map(|u| format!("`{u}`")).collect::<Vec<_>>().join(", ")
            ),
            Some(&format!("the phases of this workflow are: {}", ids.join(", "))),
        ));
    }
    Ok(phases.iter().copied().filter(|p| only.iter().any(|o| o == p.id())).collect())
}

/// Which hosts take part in a run: all, or the targeted ones (checked against the model). Cluster-wide
/// phases also run on the first control plane, the state copy on every control plane. With
/// [`Targets::following_changes`] (`join`), a host outside the targets still takes part in a phase when the
/// phase's desired state for it differs from the checkpoint the cluster state recorded (a new node adds a
/// route on the others): hosts whose desired state did not move receive no SSH session at all.
#[derive(Debug, Clone)]
pub struct Targets {
    hosts: Option<BTreeSet<String>>,
    first_control_plane: Option<String>,
    control_planes: BTreeSet<String>,
    checkpoints: Option<BTreeMap<String, BTreeMap<String, String>>>,
}

impl Targets {
    /// Every host of `model`, or only `hosts` (each must be in the model).
    pub fn new(model: &ClusterModel, hosts: Option<&[String]>) -> Result<Self> {
        if let Some(hs) = hosts {
            let unknown: Vec<&String> = hs.iter().filter(|h| model.host(h).is_none()).collect();
            if !unknown.is_empty() {
                return Err(Error::usage(
                    format!(
                        "{} not in the inventory",
                        unknown.iter().map(|u| format!("`{u}`")).collect::<Vec<_>>().join(", ")
                    ),
                    Some("name hosts as they appear under `hosts:` in the inventory"),
                ));
            }
        }
        Ok(Targets {
            hosts: hosts.map(|h| h.iter().cloned().collect()),
            first_control_plane: model.control_planes().next().map(|h| h.name.clone()),
            control_planes: model.control_planes().map(|h| h.name.clone()).collect(),
            checkpoints: None,
        })
    }

    /// Also takes in, per phase, the other hosts whose desired state moved away from `state`'s checkpoint.
    pub fn following_changes(mut self, state: &ClusterState) -> Self {
        self.checkpoints = Some(state.phases.clone());
        self
    }

    /// Whether `host` takes part in `phase` by the targets alone.
    pub fn includes(&self, phase: &dyn Phase, host: &str) -> bool {
        match &self.hosts {
            None => true,
            Some(hs) => {
                hs.contains(host)
                    || (phase.cluster_wide() && self.first_control_plane.as_deref() == Some(host))
                    || (phase.id() == crate::phase::state::ID && self.control_planes.contains(host))
            }
        }
    }

    /// Whether `host` takes part in `phase`, given the work the phase has for it.
    pub fn takes_part(&self, phase: &dyn Phase, host: &str, work: &HostWork) -> bool {
        if self.includes(phase, host) {
            return true;
        }
        match (&self.checkpoints, work) {
            (Some(cp), HostWork::Converge(d)) => {
                cp.get(phase.id()).and_then(|h| h.get(host)).is_none_or(|digest| *digest != d.digest())
            }
            _ => false,
        }
    }

    /// The targeted hosts (`None`: all).
    pub fn hosts(&self) -> Option<&BTreeSet<String>> {
        self.hosts.as_ref()
    }
}

/// Everything one run works with.
pub struct Runner<'a> {
    /// The cluster model.
    pub model: &'a ClusterModel,
    /// Prepared local material.
    pub material: &'a Material,
    /// One transport per host.
    pub transports: &'a BTreeMap<String, Arc<dyn Transport>>,
    /// The executor.
    pub executor: &'a Executor,
    /// Which hosts take part.
    pub targets: Targets,
}

/// Called after each executed converge phase with its plan (for checkpoints).
pub type PhaseDone<'a> = &'a mut (dyn FnMut(&PhasePlan) -> Result<()> + Send);

impl Runner<'_> {
    fn transport(&self, host: &str) -> Result<Arc<dyn Transport>> {
        self.transports
            .get(host)
            .cloned()
            .ok_or_else(|| Error::msg(format!("no connection for host {host}"), None))
    }

    /// Runs host plans as `phase` and records their traffic; a failed host fails the run.
    async fn run_plans(
        &self,
        phase: &str,
        plans: Vec<HostPlan>,
        written_bytes: u64,
        summary: &mut RunSummary,
    ) -> Result<()> {
        let before: Vec<(String, crate::transport::StatsSnapshot, Arc<dyn Transport>)> = plans
            .iter()
            .map(|p| (p.transport.host().to_owned(), p.transport.stats(), p.transport.clone()))
            .collect();
        let report = self.executor.run(phase, plans).await;
        let hosts = before
            .into_iter()
            .map(|(host, b, t)| {
                let a = t.stats();
                (host, a.round_trips - b.round_trips, a.bytes_sent - b.bytes_sent)
            })
            .collect();
        match summary.traffic.iter_mut().find(|t| t.phase == phase) {
            Some(t) => {
                t.hosts.extend::<Vec<_>>(hosts);
                t.written_bytes += written_bytes;
            }
            None => summary.traffic.push(PhaseTraffic { phase: phase.to_owned(), hosts, written_bytes }),
        }
        if !report.failures.is_empty() || report.interrupted {
            return Err(report.into_result().expect_err("hosts failed").into());
        }
        summary.phases.push(report);
        Ok(())
    }

    /// The step phase `phase` on every participating host.
    async fn run_step_phase(&self, phase: &dyn Phase, summary: &mut RunSummary) -> Result<()> {
        let ctx = Context { model: self.model, material: self.material };
        let mut plans = Vec::new();
        for host in self.model.hosts.iter().filter(|h| self.targets.includes(phase, &h.name)) {
            if let Some(HostWork::Step(step)) = phase.work(&ctx, host)? {
                plans.push(HostPlan { transport: self.transport(&host.name)?, steps: vec![step] });
            }
        }
        if plans.is_empty() {
            return Ok(());
        }
        self.run_plans(phase.id(), plans, 0, summary).await
    }

    /// Pass one: the plan-time checks, then one probe per host for every converge phase, then the diff.
    pub async fn plan(&self, phases: &[&dyn Phase], summary: &mut RunSummary) -> Result<Plan> {
        for phase in phases.iter().filter(|p| p.at_plan_time()) {
            self.run_step_phase(*phase, summary).await?;
        }
        let ctx = Context { model: self.model, material: self.material };
        // (phase, host, desired) for every converge phase, in workflow order.
        let mut desired: Vec<(&'static str, String, HostDesired)> = Vec::new();
        for phase in phases.iter().filter(|p| !p.at_plan_time()) {
            for host in &self.model.hosts {
                let Some(work) = phase.work(&ctx, host)? else { continue };
                if !self.targets.takes_part(*phase, &host.name, &work) {
                    continue;
                }
                if let HostWork::Converge(d) = work {
                    desired.push((phase.id(), host.name.clone(), d.with_marker(phase.id())));
                }
            }
        }
        let actual: Arc<Mutex<BTreeMap<String, ActualState>>> = Default::default();
        let mut probes = Vec::new();
        let hosts: BTreeSet<&String> = desired.iter().map(|(_, h, _)| h).collect();
        for host in hosts {
            let merged = HostDesired::merged(desired.iter().filter(|(_, h, _)| h == host).map(|(_, _, d)| d));
            let (out, name) = (actual.clone(), host.clone());
            let step = Step::custom("read host state", move |t: &dyn Transport| {
                Box::pin(async move {
                    let st = crate::plan::probe(t, &merged).await?;
                    out.lock().expect("lock").insert(name, st);
                    Ok(false)
                })
            });
            probes.push(HostPlan { transport: self.transport(host)?, steps: vec![step] });
        }
        if !probes.is_empty() {
            self.run_plans("plan", probes, 0, summary).await?;
        }
        let actual = actual.lock().expect("lock");
        let mut plan = Plan::default();
        for phase in phases.iter().filter(|p| !p.at_plan_time()) {
            let hosts: Vec<(String, HostChanges)> = desired
                .iter()
                .filter(|(p, ..)| *p == phase.id())
                .map(|(_, h, d)| {
                    (h.clone(), crate::plan::diff(d, actual.get(h).unwrap_or(&ActualState::default())))
                })
                .collect();
            if !hosts.is_empty() {
                plan.phases.push(PhasePlan { phase: phase.id().to_owned(), hosts });
            }
        }
        Ok(plan)
    }

    /// Pass two: carries `plan` out, phase by phase; step phases (verify) run in their place.
    pub async fn execute(
        &self,
        phases: &[&dyn Phase],
        plan: &Plan,
        batch: usize,
        summary: &mut RunSummary,
        on_phase_done: PhaseDone<'_>,
    ) -> Result<()> {
        for phase in phases.iter().filter(|p| !p.at_plan_time()) {
            let Some(pp) = plan.phase(phase.id()) else {
                self.run_step_phase(*phase, summary).await?;
                continue;
            };
            let changed: Vec<&(String, HostChanges)> =
                pp.hosts.iter().filter(|(_, c)| !c.is_empty()).collect();
            let (rolling, together): (Vec<_>, Vec<_>) = changed
                .into_iter()
                .partition(|(_, c)| phase.rollout() == Rollout::SerialWhenRunning && c.disrupts);
            let mut groups: Vec<Vec<&(String, HostChanges)>> = Vec::new();
            if !together.is_empty() {
                groups.push(together);
            }
            for chunk in rolling.chunks(batch.max(1)) {
                groups.push(chunk.to_vec());
            }
            for group in groups {
                let mut plans = Vec::new();
                let mut bytes = 0;
                for (host, changes) in group {
                    bytes += changes.bytes();
                    let changes = changes.clone();
                    // A host that serves while it restarts goes back to its previous files when the change
                    // fails its health waits; the group fails and the hosts after it are never changed.
                    let rolling = phase.rollout() == Rollout::SerialWhenRunning && changes.disrupts;
                    let step = Step::custom("converge", move |t: &dyn Transport| {
                        Box::pin(async move {
                            if rolling {
                                crate::plan::apply_changes_reverting(t, &changes).await
                            } else {
                                crate::plan::apply_changes(t, &changes).await
                            }
                        })
                    });
                    plans.push(HostPlan { transport: self.transport(host)?, steps: vec![step] });
                }
                self.run_plans(phase.id(), plans, bytes, summary).await?;
            }
            on_phase_done(pp)?;
        }
        Ok(())
    }
}

/// The digest a phase's completion marker records, from the plan's changes or the desired state.
fn marker_digest(changes: &HostChanges) -> Option<String> {
    changes.files.iter().find(|f| f.file.upload.dest.starts_with(crate::plan::MARKER_DIR)).and_then(|f| {
        match &f.file.upload.source {
            crate::transport::UploadSource::Bytes(b) => Some(String::from_utf8_lossy(b).trim().to_owned()),
            _ => None,
        }
    })
}

/// Records a phase's checkpoint in `state`: for every host that converged (or already was), the digest of
/// its desired state.
pub fn record_checkpoint(state: &mut ClusterState, pp: &PhasePlan, previous: &ClusterState) {
    if pp.phase == crate::phase::state::ID {
        return;
    }
    for (host, changes) in &pp.hosts {
        let digest = marker_digest(changes)
            .or_else(|| previous.phases.get(&pp.phase).and_then(|h| h.get(host)).cloned());
        if let Some(d) = digest {
            state.phases.entry(pp.phase.clone()).or_default().insert(host.clone(), d);
        }
    }
}

/// A scratch copy of a cluster's PKI store, for runs that must not write under `pki/<cluster>/` (a dry run,
/// `status`, `reset`) but need every file the phases read. It lives **inside** the PKI directory
/// (`pki/.scratch-XXXX/`, 0700), never in a shared temporary directory, holds only what the phases read
/// (not `backups/`), and is removed when dropped and, through [`crate::cleanup`], when the process is
/// interrupted or terminated.
pub struct Scratch {
    dir: Option<tempfile::TempDir>,
    created_root: Option<std::path::PathBuf>,
}

impl Scratch {
    /// Copies `<pki_root>/<cluster>/` (without `backups/`) into a new scratch directory under `pki_root`.
    pub fn new(pki_root: &Path, cluster: &str) -> Result<Scratch> {
        use std::os::unix::fs::DirBuilderExt;
        let created_root = if pki_root.exists() {
            None
        } else {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(pki_root)
                .map_err(|e| Error::io(format!("creating {}", pki_root.display()), e))?;
            Some(pki_root.to_path_buf())
        };
        let dir = tempfile::Builder::new()
            .prefix(".scratch-")
            .tempdir_in(pki_root)
            .map_err(|e| Error::io(format!("creating a scratch directory in {}", pki_root.display()), e))?;
        crate::cleanup::register(dir.path());
        let scratch = Scratch { dir: Some(dir), created_root };
        let from = pki_root.join(cluster);
        if from.is_dir() {
            copy_dir_except(&from, &scratch.path().join(cluster), &["backups"])
                .map_err(|e| Error::io(format!("copying {} into a scratch directory", from.display()), e))?;
        }
        Ok(scratch)
    }

    /// Where the copy is (a PKI root: the store is `<path>/<cluster>/`).
    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("present until dropped").path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(d) = self.dir.take() {
            crate::cleanup::unregister(d.path());
            let _ = d.close();
        }
        if let Some(root) = &self.created_root {
            let _ = std::fs::remove_dir(root);
        }
    }
}

/// [`copy_dir`], leaving out the top-level entries named in `except`.
fn copy_dir_except(from: &Path, to: &Path, except: &[&str]) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(to)?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700))?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        // The process is exiting and removing its scratch copies: copy nothing more into them.
        if crate::cleanup::exiting() {
            return Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "the process is exiting"));
        }
        if except.iter().any(|x| e.file_name() == *x) {
            continue;
        }
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type()?.is_dir() {
            copy_dir(&src, &dst)?;
        } else if e.file_type()?.is_file() {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// Copies a directory tree (files and directories; directories 0700).
pub fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    copy_dir_except(from, to, &[])
}

/// The `--plan FILE` check: the saved plan must equal the plan made now.
/// Reads a plan saved with `apply --dry-run --out`: a missing file, another format or another cluster's
/// plan is a usage error found before any work.
pub fn read_saved_plan(path: &Path, cluster: &str) -> Result<crate::plan::PlanRecord> {
    let bytes = std::fs::read(path).map_err(|e| {
        Error::usage(
            format!("cannot read the plan {}: {e}", path.display()),
            Some("give the file written by `kubeforge apply --dry-run --out FILE`"),
        )
    })?;
    let saved: crate::plan::PlanRecord = serde_json::from_slice(&bytes).map_err(|e| {
        Error::usage(
            format!("{} is not a saved kubeforge plan: {e}", path.display()),
            Some("give the file written by `kubeforge apply --dry-run --out FILE`"),
        )
    })?;
    if saved.format != crate::plan::PlanRecord::FORMAT {
        return Err(Error::usage(
            format!(
                "{} has plan format {}, expected {}",
                path.display(),
                saved.format,
                crate::plan::PlanRecord::FORMAT
            ),
            Some("make the plan again with this kubeforge"),
        ));
    }
    if saved.cluster != cluster {
        return Err(Error::usage(
            format!("{} is a plan for cluster `{}`, not `{cluster}`", path.display(), saved.cluster),
            Some("give the plan made from this inventory"),
        ));
    }
    Ok(saved)
}

fn check_saved_plan(path: &Path, cluster: &str, plan: &Plan) -> Result<()> {
    let saved = read_saved_plan(path, cluster)?;
    let diffs = saved.differences(&plan.record(cluster, &saved.salt));
    if diffs.is_empty() {
        return Ok(());
    }
    Err(Error::msg(
        format!(
            "refusing to apply {}: the cluster or the inventory changed since the plan was made:\n  {}",
            path.display(),
            diffs.join("\n  ")
        ),
        Some("review a new plan (`apply --dry-run --out FILE`) and apply that one"),
    ))
}

/// Prepares the material for a run of `model`: the PKI (in a scratch copy for a dry run), the verified
/// artifacts, the encryption key, this binary, and the state the cluster will be in after the run.
pub async fn prepare(
    loaded: &crate::inventory::Loaded,
    model: &mut ClusterModel,
    options: &ApplyOptions,
    scratch: Option<&Path>,
    verified: &Verified,
) -> Result<(Material, ClusterState)> {
    let artifacts = prepare_artifacts(model, &loaded.inventory, &options.cache_dir).await?;
    prepare_with(model, options, scratch, artifacts, verified)
}

/// [`prepare`] with the artifacts already resolved. `verified` is the identity check's outcome: keys are
/// created only for a fresh cluster, and the markers carry its UID.
pub fn prepare_with(
    model: &mut ClusterModel,
    options: &ApplyOptions,
    scratch: Option<&Path>,
    artifacts: BTreeMap<(Art, String), LocalArtifact>,
    verified: &Verified,
) -> Result<(Material, ClusterState)> {
    let previous = ClusterState::load(&options.pki_root, &model.name)?;
    let mut state = previous.clone();
    state.uid = Some(verified.uid.clone());
    let new_keys = if verified.fresh { NewKeys::Allowed } else { NewKeys::Refused };
    let subnets = state.allocate_pod_subnets(model)?;
    model.set_pod_subnets(&subnets);
    state.etcd_bootstrap = model.set_etcd_bootstrap(&previous.etcd_bootstrap, &previous.etcd_members);
    let pki_root = scratch.unwrap_or(&options.pki_root);
    let pki = crate::pki::store::Store::new(pki_root, &model.name);
    let pki_inputs = model.pki_inputs();
    let report = pki.ensure(&pki_inputs, new_keys)?;
    if !report.issued.is_empty() || !report.cas_created.is_empty() {
        eprintln!(
            "[pki] {}: {} {}, {} reused, {} CA/key pair(s) {}",
            if scratch.is_some() { options.pki_root.join(&model.name) } else { pki.root().to_path_buf() }
                .display(),
            report.issued.len(),
            if scratch.is_some() { "would be issued" } else { "issued" },
            report.reused.len(),
            report.cas_created.len(),
            if scratch.is_some() { "would be created" } else { "created" },
        );
    }
    let encryption_key = crate::at_rest::load_or_create(&pki, new_keys)?;
    let service_account = crate::sa_key::load(&pki)?;
    // The CA that signs: the store's, or during a CA rotation the one its step signs with (from `issue` on,
    // the new CA), so the markers follow the rotation and agree with the store once it ends.
    let ca = pki.issuing_ca_pem(crate::pki::spec::CaId::Cluster)?;
    let marker = crate::identity::Marker {
        cluster: model.name.clone(),
        uid: verified.uid.clone(),
        ca_sha256: crate::identity::Fingerprint::of_pem(&ca).ok_or_else(|| {
            Error::msg(format!("{}/ca.crt is not a certificate", pki.root().display()), None)
        })?,
    };
    let api_lb = api_lb_binaries(model, options.api_lb_dir.as_deref())?;
    let targets = Targets::new(model, options.hosts.as_deref())?;
    let hosts: Vec<&str> = model
        .hosts
        .iter()
        .filter(|h| targets.hosts().is_none_or(|t| t.contains(&h.name)))
        .map(|h| h.name.as_str())
        .collect();
    state.record_hosts(model, hosts);
    let material = Material {
        artifacts,
        pki,
        pki_inputs,
        options: options.clone(),
        encryption_key,
        service_account,
        api_lb,
        state: state.clone(),
        marker,
    };
    Ok((material, previous))
}

/// A workflow run's first pass: the plan, and the state the cluster will be in once it is carried out.
pub struct Planned {
    /// The plan (and the plan pass's traffic).
    pub summary: RunSummary,
    /// The state file after a successful run (every phase's checkpoint).
    pub final_state: ClusterState,
}

fn targets_for(model: &ClusterModel, options: &ApplyOptions, previous: &ClusterState) -> Result<Targets> {
    let mut targets = Targets::new(model, options.hosts.as_deref())?;
    if options.follow_changes {
        targets = targets.following_changes(previous);
    }
    Ok(targets)
}

/// Pass one of a workflow run: plans `phases` (plan-time checks, one probe per host, the diff). Writes a
/// dry run's plan record (`--out`); changes nothing on the hosts.
pub async fn plan_workflow(
    model: &ClusterModel,
    material: &mut Material,
    previous: &ClusterState,
    phases: &[&dyn Phase],
    transports: &BTreeMap<String, Arc<dyn Transport>>,
    executor: &Executor,
) -> Result<Planned> {
    let options = material.options.clone();
    let phases = select_phases(phases, options.only.as_deref())?;
    let targets = targets_for(model, &options, previous)?;
    let mut summary = RunSummary { plan: Plan::default(), phases: Vec::new(), traffic: Vec::new() };
    // The state the control planes receive includes every phase's checkpoint: compute it from a first plan
    // of the other phases' desired states (their markers do not depend on the state file).
    let mut final_state = material.state.clone();
    {
        let ctx = Context { model, material: &*material };
        for phase in phases.iter().filter(|p| !p.at_plan_time() && p.id() != crate::phase::state::ID) {
            for host in &model.hosts {
                let Some(work) = phase.work(&ctx, host)? else { continue };
                if !targets.takes_part(*phase, &host.name, &work) {
                    continue;
                }
                if let HostWork::Converge(d) = work {
                    let d = d.with_marker(phase.id());
                    let pp = PhasePlan {
                        phase: phase.id().to_owned(),
                        hosts: vec![(host.name.clone(), crate::plan::diff(&d, &ActualState::default()))],
                    };
                    record_checkpoint(&mut final_state, &pp, previous);
                }
            }
        }
    }
    material.state = final_state.clone();
    let runner = Runner { model, material: &*material, transports, executor, targets };
    summary.plan = runner.plan(&phases, &mut summary).await?;
    if options.dry_run {
        if let Some(out) = &options.plan_out {
            let salt = hex::encode(rand::random::<[u8; 16]>());
            let record = summary.plan.record(&model.name, &salt);
            let mut json = serde_json::to_vec_pretty(&record).expect("plans serialize");
            json.push(b'\n');
            std::fs::write(out, json)
                .map_err(|e| Error::io(format!("writing the plan {}", out.display()), e))?;
        }
    }
    Ok(Planned { summary, final_state })
}

/// Pass two: carries out a plan from [`plan_workflow`] with the same material, with checkpoints in the
/// state file after every phase. Returns the summary.
pub async fn execute_workflow(
    model: &ClusterModel,
    material: &Material,
    previous: &ClusterState,
    phases: &[&dyn Phase],
    transports: &BTreeMap<String, Arc<dyn Transport>>,
    executor: &Executor,
    planned: Planned,
) -> Result<RunSummary> {
    let options = material.options.clone();
    let phases = select_phases(phases, options.only.as_deref())?;
    let targets = targets_for(model, &options, previous)?;
    let Planned { mut summary, final_state } = planned;
    if let Some(saved) = &options.plan_in {
        check_saved_plan(saved, &model.name, &summary.plan)?;
    }
    let runner = Runner { model, material, transports, executor, targets };
    let mut live = previous.clone();
    live.pod_subnets = final_state.pod_subnets.clone();
    live.uid = final_state.uid.clone();
    let pki_root = options.pki_root.clone();
    let plan = summary.plan.clone();
    let mut done = |pp: &PhasePlan| -> Result<()> {
        record_checkpoint(&mut live, pp, previous);
        live.save(&pki_root)?;
        Ok(())
    };
    runner.execute(&phases, &plan, options.batch, &mut summary, &mut done).await?;
    // Every selected phase succeeded: the hosts are what the final state says.
    if options.only.is_none() {
        final_state.save(&options.pki_root)?;
    } else {
        live.hosts = final_state.hosts.clone();
        live.etcd_members = final_state.etcd_members.clone();
        live.save(&options.pki_root)?;
    }
    Ok(summary)
}

/// Runs `phases` as one workflow run: plan, then (unless a dry run) execute, with checkpoints in the state
/// file. Returns the summary; prints nothing but progress.
pub async fn run_workflow(
    model: &ClusterModel,
    material: &mut Material,
    previous: &ClusterState,
    phases: &[&dyn Phase],
    transports: &BTreeMap<String, Arc<dyn Transport>>,
    executor: &Executor,
) -> Result<RunSummary> {
    let planned = plan_workflow(model, material, previous, phases, transports, executor).await?;
    if material.options.dry_run {
        return Ok(planned.summary);
    }
    // A run that follows changes (`join`) may reach hosts outside its targets (a route to a new node):
    // those are read too before anything is written (hosts with nothing to change get no session).
    let guarded = guarded_hosts(model, material.options.hosts.as_deref());
    let mut reached: Vec<String> = planned
        .summary
        .plan
        .phases
        .iter()
        .flat_map(|p| {
            p.hosts.iter().filter(|(h, c)| !c.is_empty() && !guarded.contains(h)).map(|(h, _)| h.clone())
        })
        .collect();
    reached.sort();
    reached.dedup();
    if !reached.is_empty() {
        guard(model, &material.options, &reached, transports, executor).await?;
    }
    crate::cleanup::writing();
    execute_workflow(model, material, previous, phases, transports, executor, planned).await
}

/// The hosts whose markers a run that works on `hosts` (all when `None`) reads before it writes anything:
/// those hosts and every control plane (they carry the cluster).
pub fn guarded_hosts(model: &ClusterModel, hosts: Option<&[String]>) -> Vec<String> {
    model
        .hosts
        .iter()
        .filter(|h| h.roles.control_plane || hosts.is_none_or(|t| t.contains(&h.name)))
        .map(|h| h.name.clone())
        .collect()
}

/// The identity check every command that writes runs first (see [`crate::identity`]): reads the markers
/// of `hosts` and compares them with the local store. Nothing has been written when it refuses.
pub async fn guard(
    model: &ClusterModel,
    options: &ApplyOptions,
    hosts: &[String],
    transports: &BTreeMap<String, Arc<dyn Transport>>,
    executor: &Executor,
) -> Result<Verified> {
    let local = crate::identity::Local::read(&options.pki_root, &model.name)?;
    Ok(crate::identity::check(&local, hosts, transports, executor).await?.0)
}

/// A scratch copy of the PKI store for a dry run (`None` otherwise): a dry run writes nothing under `pki/`.
pub fn scratch_for(options: &ApplyOptions, cluster: &str) -> Result<Option<Scratch>> {
    if options.dry_run {
        Scratch::new(&options.pki_root, cluster).map(Some)
    } else {
        Ok(None)
    }
}

/// Entry point of `kubeforge apply`.
pub fn run(inventory: &Path, options: ApplyOptions) -> Result<i32> {
    let session = crate::session::Session::open(inventory, options.clone())?;
    run_in(&session, &session.loaded, session.model(), options, "apply")
}

/// Refuses a run whose inventory asks for another Kubernetes version than the hosts kubeforge installed
/// run: a version change is an upgrade (drain, one host at a time, gates, rollback), never a side effect of
/// `apply`, `join` or `remove-node`.
pub fn check_version_unchanged(
    model: &ClusterModel,
    state: &ClusterState,
    loaded: &crate::inventory::Loaded,
) -> Result<()> {
    let want = model.versions.kubernetes.to_string();
    let mut other: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, h) in &state.hosts {
        if model.host(name).is_none() {
            continue;
        }
        let running = ["kube-apiserver", "kubelet"].iter().find_map(|c| h.versions.get(*c));
        if let Some(v) = running.filter(|v| **v != want) {
            other.entry(v.clone()).or_default().push(name.clone());
        }
    }
    let Some((running, hosts)) = other.into_iter().next() else { return Ok(()) };
    let line = loaded.positions.find("cluster.kubernetesVersion").map(|p| p.line).unwrap_or(0);
    let newer = want.parse::<crate::inventory::validate::Version>().ok()
        > running.parse::<crate::inventory::validate::Version>().ok();
    Err(Error::msg(
        format!(
            "{}:{line}: the inventory asks for Kubernetes {want}, but {} run{} {running}",
            loaded.path.display(),
            hosts.join(", "),
            if hosts.len() == 1 { "s" } else { "" }
        ),
        Some(&if newer {
            format!("upgrading is `kubeforge upgrade apply -i {} --to {want}` (drained, one host at a time, with rollback)", loaded.path.display())
        } else {
            format!("set `kubernetesVersion: {running}` (kubeforge does not downgrade; `upgrade rollback` returns single hosts after a failed upgrade)")
        }),
    ))
}

/// Checks the flags of a run against the inventory before any work (exit 2 when one is wrong): the saved
/// plan, the phases, the host selector (resolved to names here).
pub fn check_flags(
    loaded: &crate::inventory::Loaded,
    model: &ClusterModel,
    options: &mut ApplyOptions,
) -> Result<()> {
    if let Some(saved) = &options.plan_in {
        read_saved_plan(saved, &model.name)?;
    }
    select_phases(&crate::workflow::apply(), options.only.as_deref())?;
    options.hosts = crate::selector::names(&loaded.inventory.hosts, options.hosts.as_deref())?;
    Ok(())
}

/// One apply pass in `session`, without printing: the identity check, the material, then the workflow
/// (plan, and unless a dry run, execution). `loaded`/`model` may be a part of the session's inventory
/// (`remove-node` converges the hosts that stay).
pub async fn execute(
    session: &crate::session::Session,
    loaded: &crate::inventory::Loaded,
    mut model: ClusterModel,
    options: &ApplyOptions,
) -> Result<RunSummary> {
    let recorded = ClusterState::load(&options.pki_root, &model.name)?;
    check_version_unchanged(&model, &recorded, loaded)?;
    let (transports, executor) = (&session.transports, &session.executor);
    // The targets and the control planes are read first; hosts a `join` reaches outside its targets (a
    // route to the new node) are read by `run_workflow` before anything is written to them.
    let guarded = guarded_hosts(&model, options.hosts.as_deref());
    let verified = guard(&model, options, &guarded, transports, executor).await?;
    let scratch = scratch_for(options, &model.name)?;
    let (mut material, previous) = session
        .prepare(&mut model, &loaded.inventory, options, scratch.as_ref().map(|t| t.path()), &verified)
        .await?;
    let phases = crate::workflow::apply();
    run_workflow(&model, &mut material, &previous, &phases, transports, executor).await
}

/// Runs the apply workflow in `session` and prints the plan (dry run) or the summary, as
/// `label: N changes`. `apply`, `join`, `remove-node` and `restore` end here.
pub fn run_in(
    session: &crate::session::Session,
    loaded: &crate::inventory::Loaded,
    model: ClusterModel,
    mut options: ApplyOptions,
    label: &str,
) -> Result<i32> {
    let inventory = loaded.path.clone();
    // Every flag is checked before any work: the plan file, the phases, the host selector.
    check_flags(loaded, &model, &mut options)?;
    let result = session.block_on(execute(session, loaded, model, &options));
    eprint!("{}", host_stats(&session.transports));
    let summary = result?;
    eprint!("{}", traffic_table(&summary.traffic));
    if options.dry_run {
        print!("{}", if options.verbose { summary.plan.text_verbose() } else { summary.plan.text() });
        if let Some(out) = &options.plan_out {
            eprintln!(
                "plan saved to {}: apply it with `kubeforge apply -i {} --plan {}`",
                out.display(),
                inventory.display(),
                out.display()
            );
        }
    } else {
        eprint!("{}", crate::exec::summary(&summary.phases));
        let n = summary.total_changes();
        println!(
            "{label}: {n} change{}{}",
            if n == 1 { "" } else { "s" },
            if n == 0 { " (the cluster already matches the inventory)" } else { "" }
        );
    }
    Ok(0)
}

#[cfg(test)]
mod tests;
