//! What a workflow run works from, prepared on the admin machine before any host is touched: the run's
//! options and the [`Material`] (verified artifacts, the PKI store, the encryption key, the balancer
//! binaries, the cluster state the run leads to). Phases read it; `apply` prepares it. It sits below both,
//! so the module graph runs one way (`apply` -> `workflow` -> `phase` -> `material`).

use crate::artifacts::{self, Component as Art, LocalArtifact};
use crate::state::ClusterState;
use crate::transport::ssh::ConnectOptions;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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
    /// Work on these hosts only (cluster-wide phases still run on the first control plane); `None`: all.
    pub hosts: Option<Vec<String>>,
    /// Hosts restarted at once where a phase rolls out one batch at a time (default 1).
    pub batch: usize,
    /// With `dry_run`: save the plan here.
    pub plan_out: Option<PathBuf>,
    /// Carry out this saved plan, refused when a fresh plan differs from it.
    pub plan_in: Option<PathBuf>,
    /// With `hosts`: other hosts whose desired state moved from the recorded checkpoint take part too
    /// (`join`).
    pub follow_changes: bool,
    /// Where the node-local API balancer binaries (`kubeforge-apilb-linux-ARCH`, or `kubeforge-apilb` for
    /// this machine's architecture) are looked for before the directory of kubeforge itself
    /// (`KUBEFORGE_APILB_DIR`).
    pub api_lb_dir: Option<PathBuf>,
    /// Show the script behind every command of a plan (`--verbose`).
    pub verbose: bool,
}

impl ApplyOptions {
    /// Options with defaults for everything but the PKI root and the cache.
    pub fn new(pki_root: PathBuf, cache_dir: PathBuf) -> Self {
        ApplyOptions {
            dry_run: false,
            concurrency: 10,
            connect: ConnectOptions::default(),
            pki_root,
            cache_dir,
            only: None,
            ignore_preflight: Vec::new(),
            hosts: None,
            batch: 1,
            plan_out: None,
            plan_in: None,
            follow_changes: false,
            api_lb_dir: std::env::var_os("KUBEFORGE_APILB_DIR").filter(|d| !d.is_empty()).map(PathBuf::from),
            verbose: false,
        }
    }
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
    /// The keys that encrypt Secrets at rest (the current one, and a rotation in progress), generated once
    /// per cluster and kept in the PKI store ([`crate::at_rest`]).
    pub encryption_key: crate::at_rest::Keys,
    /// The service-account key pair, and a rotation in progress, as the store holds them
    /// ([`crate::sa_key`]): what the control planes' `sa.key` and `sa.pub` hold.
    pub service_account: crate::sa_key::SaKeys,
    /// The node-local API balancer (`kubeforge-apilb`) per node architecture, when the cluster uses one.
    pub api_lb: BTreeMap<String, LocalBinary>,
    /// The cluster state as it will be once this run succeeds (the `state` phase places it on the control
    /// planes).
    pub state: ClusterState,
    /// The cluster marker every host carries (the `identity` phase places it).
    pub marker: crate::identity::Marker,
}

/// An executable of this machine's to place on hosts.
#[derive(Debug, Clone)]
pub struct LocalBinary {
    /// Where it is.
    pub path: PathBuf,
    /// Its sha256 (hex).
    pub sha256: String,
    /// Its size in bytes.
    pub size: u64,
}

impl LocalBinary {
    /// Reads and hashes `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let up = crate::transport::Upload::file(path, "/", 0o755)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        Ok(LocalBinary { path: path.to_owned(), sha256: up.sha256, size: up.size })
    }
}

/// This machine's architecture in release naming (`amd64`, `arm64`...).
pub fn local_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Where `kubeforge-apilb` for `arch` is looked for, in order: in `dir` (`--api-lb-dir`), then beside this
/// kubeforge binary: `kubeforge-apilb-linux-ARCH`, then (this machine's architecture only) `kubeforge-apilb`.
/// A build tree's `deps/` test binaries look one directory up as well.
pub fn api_lb_candidates(dir: Option<&Path>, arch: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = dir.map(Path::to_path_buf).into_iter().collect();
    if let Some(me) = std::env::current_exe().ok().and_then(|me| me.parent().map(Path::to_path_buf)) {
        if me.ends_with("deps") {
            dirs.extend(me.parent().map(Path::to_path_buf));
        }
        dirs.push(me);
    }
    let mut out = Vec::new();
    for d in dirs {
        out.push(d.join(format!("kubeforge-apilb-linux-{arch}")));
        if arch == local_arch() {
            out.push(d.join("kubeforge-apilb"));
        }
    }
    out
}

impl Material {
    /// The node-local API balancer binary for `arch` (found when the material was prepared).
    pub fn api_lb_binary(&self, arch: &str) -> Result<&LocalBinary> {
        self.api_lb.get(arch).ok_or_else(|| {
            Error::msg(format!("no kubeforge-apilb for {arch} among the prepared binaries"), None)
        })
    }

    /// The verified executable `name` of `component` for `arch`.
    pub fn executable(&self, component: Art, arch: &str, name: &str) -> Result<&artifacts::Executable> {
        self.artifacts
            .get(&(component, arch.to_owned()))
            .and_then(|a| a.executables.iter().find(|e| e.name == name))
            .ok_or_else(|| Error::msg(format!("no {name} for {arch} among the prepared artifacts"), None))
    }
}
