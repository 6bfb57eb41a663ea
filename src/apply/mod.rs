//! `kubeforge apply`: prepares the local material (PKI, verified binaries, generated secrets), connects to
//! every host once, and runs the workflow's phases in order. Each phase converges every participating host
//! in parallel; a failure stops the run at the phase boundary with every failing host reported, and a re-run
//! continues from the state the hosts are in. `--dry-run` probes and prints, and writes nothing to any host.

use crate::artifacts::{self, ArtifactSource, Component as Art, LocalArtifact, Requirement};
use crate::exec::{Executor, HostPlan};
use crate::model::ClusterModel;
use crate::phase::{Context, HostWork, Phase};
use crate::plan::{converge_step, ChangeLog};
use crate::transport::ssh::{ConnectOptions, SshTarget, SshTransport};
use crate::transport::Transport;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Options of one run.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Probe and print the plan; write nothing to any host.
    pub dry_run: bool,
    /// Hosts worked on at once.
    pub concurrency: usize,
    /// SSH options from the command line.
    pub connect: ConnectOptions,
    /// Where `pki/<cluster>/` lives.
    pub pki_root: PathBuf,
    /// Artifact cache.
    pub cache_dir: PathBuf,
    /// Run only these phases (ids), in workflow order.
    pub only: Option<Vec<String>>,
    /// Preflight checks whose failure is reported but does not stop the run (`all` for every check).
    pub ignore_preflight: Vec<String>,
}

/// Material prepared on the admin machine before any host is touched.
pub struct Material {
    /// Verified artifacts by component and architecture.
    pub artifacts: BTreeMap<(Art, String), LocalArtifact>,
    /// The cluster's PKI store (`pki/<cluster>/`), complete and current.
    pub pki: crate::pki::store::Store,
    /// The inputs the PKI was made from.
    pub pki_inputs: crate::pki::PkiInputs,
    /// Options of the run (preflight exceptions, dry-run).
    pub options: ApplyOptions,
    /// The key that encrypts Secrets at rest (base64 of 32 random bytes), generated once per cluster and kept
    /// in the PKI store.
    pub encryption_key: String,
    /// This kubeforge binary (installed on nodes as the API balancer) and its sha256.
    pub kubeforge_binary: PathBuf,
    /// sha256 of [`Self::kubeforge_binary`].
    pub kubeforge_sha256: String,
}

/// The cluster's encryption-at-rest key: read from the store, or created once (0600).
pub fn encryption_key(store: &crate::pki::store::Store) -> Result<String> {
    use base64::Engine;
    const NAME: &str = "secrets/encryption-key";
    if let Ok(k) = store.read(NAME) {
        return Ok(String::from_utf8_lossy(&k).trim().to_owned());
    }
    let key: [u8; 32] = rand::random();
    let text = base64::engine::general_purpose::STANDARD.encode(key);
    store.write(NAME, text.as_bytes(), 0o600)?;
    Ok(text)
}

/// This binary and its sha256.
pub fn self_binary() -> Result<(PathBuf, String)> {
    let me = std::env::current_exe().map_err(|e| Error::io("locating the kubeforge binary", e))?;
    let up = crate::transport::Upload::file(&me, "/", 0o755)
        .map_err(|e| Error::io(format!("reading {}", me.display()), e))?;
    Ok((me, up.sha256))
}

impl Material {
    /// The verified executable `name` of `component` for `arch`.
    pub fn executable(&self, component: Art, arch: &str, name: &str) -> Result<&artifacts::Executable> {
        self.artifacts
            .get(&(component, arch.to_owned()))
            .and_then(|a| a.executables.iter().find(|e| e.name == name))
            .ok_or_else(|| Error::msg(format!("no {name} for {arch} among the prepared artifacts"), None))
    }
}

/// Resolves (downloads or reads from the cache/bundle, verifying checksums) every artifact the cluster
/// needs, once per component and architecture. Notes (test doubles) are printed.
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
    /// Each phase's report.
    pub phases: Vec<crate::exec::PhaseReport>,
    /// Every host's changes, per phase.
    pub changes: Vec<(String, Vec<(String, crate::plan::HostChanges)>)>,
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
/// sent to all hosts, and the file content written. A converged re-run shows one round trip per host per
/// phase and no file bytes.
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

impl RunSummary {
    /// Total number of changes.
    pub fn total_changes(&self) -> usize {
        self.changes.iter().flat_map(|(_, hs)| hs.iter()).map(|(_, c)| c.count()).sum()
    }
}

/// Runs `phases` over the model's hosts. Stops at the first phase in which a host fails.
pub async fn run_phases(
    model: &ClusterModel,
    material: &Material,
    phases: &[&dyn Phase],
    transports: &BTreeMap<String, Arc<dyn Transport>>,
    executor: &Executor,
) -> Result<RunSummary> {
    let ctx = Context { model, material };
    let mut summary = RunSummary { phases: Vec::new(), changes: Vec::new(), traffic: Vec::new() };
    for phase in phases {
        if let Some(only) = &material.options.only {
            if !only.iter().any(|p| p == phase.id()) {
                continue;
            }
        }
        let log: ChangeLog = Default::default();
        let mut plans = Vec::new();
        for host in &model.hosts {
            let Some(work) = phase.work(&ctx, host)? else { continue };
            let step = match work {
                HostWork::Converge(desired) => converge_step(
                    phase.id(),
                    host.name.clone(),
                    desired,
                    material.options.dry_run,
                    log.clone(),
                ),
                HostWork::Step(s) => s,
            };
            let transport = transports
                .get(&host.name)
                .cloned()
                .ok_or_else(|| Error::msg(format!("no connection for host {}", host.name), None))?;
            plans.push(HostPlan { transport, steps: vec![step] });
        }
        if plans.is_empty() {
            continue;
        }
        let before: Vec<(String, crate::transport::StatsSnapshot)> =
            plans.iter().map(|p| (p.transport.host().to_owned(), p.transport.stats())).collect();
        let transports_used: Vec<Arc<dyn Transport>> = plans.iter().map(|p| p.transport.clone()).collect();
        let report = executor.run(phase.id(), plans).await;
        let mut changes = std::mem::take(&mut *log.lock().expect("lock"));
        changes.sort_by(|a, b| a.0.cmp(&b.0));
        let written_bytes = if material.options.dry_run {
            0
        } else {
            changes.iter().flat_map(|(_, c)| c.files.iter()).map(|f| f.file.upload.size).sum()
        };
        summary.traffic.push(PhaseTraffic {
            phase: phase.id().to_owned(),
            hosts: before
                .into_iter()
                .zip(&transports_used)
                .map(|((host, b), t)| {
                    let a = t.stats();
                    (host, a.round_trips - b.round_trips, a.bytes_sent - b.bytes_sent)
                })
                .collect(),
            written_bytes,
        });
        summary.changes.push((phase.id().to_owned(), changes));
        if !report.failures.is_empty() || report.interrupted {
            return Err(report.into_result().expect_err("hosts failed").into());
        }
        summary.phases.push(report);
    }
    Ok(summary)
}

/// The dry-run text: per phase and host, what would change.
pub fn plan_text(summary: &RunSummary) -> String {
    let mut s = String::new();
    for (phase, hosts) in &summary.changes {
        for (host, ch) in hosts {
            if ch.is_empty() {
                continue;
            }
            s.push_str(&format!("[{phase}] {host}: {} change(s)\n{ch}", ch.count()));
        }
    }
    if s.is_empty() {
        s.push_str("no changes: the cluster matches the inventory\n");
    }
    s
}

/// Entry point of `kubeforge apply`.
pub fn run(inventory: &Path, options: ApplyOptions) -> Result<i32> {
    let loaded = crate::inventory::load(inventory)?;
    let model = ClusterModel::derive(&loaded);
    let rt = tokio::runtime::Runtime::new().map_err(|e| Error::io("starting the async runtime", e))?;
    rt.block_on(async move {
        let pki = crate::pki::store::Store::new(&options.pki_root, &model.name);
        let pki_inputs = model.pki_inputs();
        let report = pki.ensure(&pki_inputs)?;
        if !report.issued.is_empty() || !report.cas_created.is_empty() {
            eprintln!(
                "[pki] {}: {} issued, {} reused, {} CA/key pair(s) created",
                pki.root().display(),
                report.issued.len(),
                report.reused.len(),
                report.cas_created.len()
            );
        }
        let artifacts = prepare_artifacts(&model, &loaded.inventory, &options.cache_dir).await?;
        let encryption_key = encryption_key(&pki)?;
        let (kubeforge_binary, kubeforge_sha256) = self_binary()?;
        let material = Material {
            artifacts,
            pki,
            pki_inputs,
            options: options.clone(),
            encryption_key,
            kubeforge_binary,
            kubeforge_sha256,
        };
        let transports = transports(&loaded, &options.connect)?;
        let executor = Executor::new(options.concurrency, crate::report::auto(false));
        executor.stop_on_ctrl_c();
        let phases = crate::workflow::apply();
        let result = run_phases(&model, &material, &phases, &transports, &executor).await;
        for t in transports.values() {
            let s = t.stats();
            eprintln!(
                "[stats] {}: {} round trips, {} bytes sent, {} connection(s)",
                t.host(),
                s.round_trips,
                s.bytes_sent,
                s.connects
            );
        }
        let summary = result?;
        eprint!("{}", traffic_table(&summary.traffic));
        if options.dry_run {
            print!("{}", plan_text(&summary));
        } else {
            eprint!("{}", crate::report::summary(&summary.phases));
            let n = summary.total_changes();
            println!(
                "apply: {n} change{}{}",
                if n == 1 { "" } else { "s" },
                if n == 0 { " (the cluster already matches the inventory)" } else { "" }
            );
        }
        Ok(0)
    })
}
