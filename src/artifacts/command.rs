//! `kubeforge artifacts fetch|bundle|verify`: argument shapes and the commands' work.

use super::bundle::{write_bundle, Bundle};
use super::versions::VersionOverrides;
use super::{
    default_cache_dir, requirements_for_host, requirements_for_hosts, ArtifactError, ArtifactSource,
    LocalArtifact, Progress, Requirement, TerminalProgress, Versions,
};
use crate::{inventory, Result};
use clap::{Args, Subcommand};
use futures::StreamExt;
use std::path::{Path, PathBuf};

/// `kubeforge artifacts ...`.
#[derive(Debug, Subcommand)]
pub enum ArtifactsCommand {
    /// Download and verify every binary the inventory's hosts need into the local cache.
    ///
    /// Each host gets what its roles need, for its own arch. Digests come from the published checksum
    /// files, or from `cluster.releaseSource.pins` ("etcd/amd64": "sha256:<hex>"), never from a table
    /// inside kubeforge. A cached artifact is re-hashed and used without any network request.
    /// An http:// mirror is trusted for nothing: every artifact fetched from it needs a pin, and its
    /// checksum files are not read.
    ///
    /// A mirror (`releaseSource: {type: mirror, url: M}`) serves the upstream paths under M:
    ///   M/release/<v>/bin/linux/<arch>/<bin>            and <bin>.sha256
    ///   M/github.com/etcd-io/etcd/releases/download/<v>/etcd-<v>-linux-<arch>.tar.gz, SHA256SUMS
    ///   M/github.com/containerd/containerd/releases/download/v<x>/containerd-<x>-linux-<arch>.tar.gz(.sha256sum)
    ///   M/github.com/opencontainers/runc/releases/download/v<x>/runc.<arch>, runc.sha256sum
    ///   M/github.com/containernetworking/plugins/releases/download/v<x>/cni-plugins-linux-<arch>-v<x>.tgz(.sha256)
    ///   M/github.com/kubernetes-sigs/cri-tools/releases/download/v<x>/crictl-v<x>-linux-<arch>.tar.gz(.sha256)
    #[command(verbatim_doc_comment)]
    Fetch {
        /// Inventory, versions and cache.
        #[command(flatten)]
        common: FetchArgs,
    },
    /// Write an air-gapped bundle (release files + manifest.json) for the inventory: a directory, or an
    /// archive when FILE ends in .tar.gz / .tgz.
    Bundle {
        /// Inventory, versions and cache.
        #[command(flatten)]
        common: FetchArgs,
        /// Output directory or .tar.gz file.
        #[arg(long, value_name = "DIR|FILE.tar.gz")]
        out: PathBuf,
    },
    /// Re-check a bundle: manifest, every file present, every sha256 matching.
    Verify {
        /// Bundle directory or .tar.gz.
        bundle: PathBuf,
        /// Where a .tar.gz bundle is unpacked [default: $KUBEFORGE_CACHE_DIR or ~/.cache/kubeforge/artifacts].
        #[arg(long, env = "KUBEFORGE_CACHE_DIR")]
        cache_dir: Option<PathBuf>,
    },
}

/// Options shared by `fetch` and `bundle`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// The inventory file.
    #[arg(short, long)]
    pub inventory: PathBuf,
    /// Artifact cache [default: $KUBEFORGE_CACHE_DIR or ~/.cache/kubeforge/artifacts].
    #[arg(long, env = "KUBEFORGE_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// etcd version when cluster.components.etcd is unset (default: per Kubernetes minor).
    #[arg(long)]
    pub etcd_version: Option<String>,
    /// containerd version when cluster.components.containerd is unset.
    #[arg(long)]
    pub containerd_version: Option<String>,
    /// runc version when cluster.components.runc is unset.
    #[arg(long)]
    pub runc_version: Option<String>,
    /// CNI plugins version when cluster.components.cniPlugins is unset.
    #[arg(long)]
    pub cni_plugins_version: Option<String>,
    /// crictl version when cluster.components.crictl is unset.
    #[arg(long)]
    pub crictl_version: Option<String>,
    /// Parallel downloads.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
}

/// Runs an `artifacts` subcommand; returns the exit code.
pub fn run(cmd: ArtifactsCommand) -> Result<i32> {
    let rt =
        tokio::runtime::Runtime::new().map_err(|e| crate::Error::io("cannot start the async runtime", e))?;
    match cmd {
        ArtifactsCommand::Fetch { common } => {
            let (_, artifacts) = rt.block_on(fetch_all(&common))?;
            for a in &artifacts {
                println!(
                    "{:<44} sha256:{}  {}",
                    a.requirement.to_string(),
                    &a.origin.sha256[..16],
                    a.origin.path.display()
                );
            }
            println!("{} artifacts ready in {}", artifacts.len(), cache_dir(&common.cache_dir).display());
            Ok(0)
        }
        ArtifactsCommand::Bundle { common, out: output } => {
            let (source, artifacts) = rt.block_on(fetch_all(&common))?;
            let manifest = write_bundle(&output, &artifacts)?;
            println!(
                "wrote bundle {} ({} files from {})",
                output.display(),
                manifest.artifacts.len(),
                source.describe()
            );
            Ok(0)
        }
        ArtifactsCommand::Verify { bundle, cache_dir: dir } => {
            let b = Bundle::open(&bundle, &cache_dir(&dir))?;
            let n = b.verify()?;
            for e in &b.manifest.artifacts {
                match &e.note {
                    Some(note) => println!("ok  {}  (note: {note})", e.label()),
                    None => println!("ok  {}", e.label()),
                }
            }
            println!("bundle {} verified: {n} files", bundle.display());
            Ok(0)
        }
    }
}

fn cache_dir(opt: &Option<PathBuf>) -> PathBuf {
    opt.clone().unwrap_or_else(default_cache_dir)
}

/// Resolves the inventory's requirements and ensures them all; every failure is reported, the first
/// one is returned.
async fn fetch_all(args: &FetchArgs) -> Result<(ArtifactSource, Vec<LocalArtifact>)> {
    let inv = inventory::load(&args.inventory)?.inventory;
    let overrides = VersionOverrides {
        etcd: args.etcd_version.clone(),
        containerd: args.containerd_version.clone(),
        runc: args.runc_version.clone(),
        cni_plugins: args.cni_plugins_version.clone(),
        crictl: args.crictl_version.clone(),
    };
    let versions = Versions::resolve(&inv.cluster, &overrides)?;
    for h in &inv.hosts {
        let reqs = requirements_for_host(h, &versions)?;
        let names: Vec<&str> = reqs.iter().map(|r| r.component.name()).collect();
        eprintln!("{} ({}): {}", h.name, reqs.first().map_or("-", |r| r.arch.as_str()), names.join(", "));
    }
    let reqs = requirements_for_hosts(&inv.hosts, &versions)?;
    let dir = args.inventory.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let source =
        ArtifactSource::from_spec(inv.cluster.release_source.as_ref(), dir, &cache_dir(&args.cache_dir))?;
    let progress = TerminalProgress::default();
    let results: Vec<(Requirement, Result<LocalArtifact, ArtifactError>)> = futures::stream::iter(reqs)
        .map(|r| {
            let (source, progress): (&ArtifactSource, &dyn Progress) = (&source, &progress);
            async move {
                let res = source.ensure(&r, progress).await;
                (r, res)
            }
        })
        .buffered(args.concurrency.max(1))
        .collect()
        .await;
    let mut ok = Vec::new();
    let mut first_err = None;
    for (r, res) in results {
        match res {
            Ok(a) => ok.push(a),
            Err(e) => {
                if first_err.is_some() {
                    eprintln!(
                        "{}",
                        crate::Error::from(e).report().replacen("error:", &format!("error: {r}:"), 1)
                    );
                } else {
                    first_err = Some(e);
                }
            }
        }
    }
    match first_err {
        Some(e) => Err(e.into()),
        None => Ok((source, ok)),
    }
}
