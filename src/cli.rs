//! Command-line definitions (clap) and dispatch. Only argument shapes live here; each command's work is in
//! its own module.

use crate::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// kubeforge: install and operate self-hosted Kubernetes clusters over SSH.
#[derive(Debug, Parser)]
#[command(name = "kubeforge", version, about, long_about = None)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Every command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Node-local API load balancer (runs as the `kube-api-lb` service on nodes; not for interactive use).
    #[command(hide = true)]
    ApiLb {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: std::net::SocketAddr,
        /// An apiserver address, `IP:PORT`; repeat once per control plane.
        #[arg(long = "backend", required = true)]
        backends: Vec<std::net::SocketAddr>,
    },
    /// Validate an inventory without connecting to any host.
    Validate {
        /// The inventory file.
        #[arg(short, long)]
        inventory: PathBuf,
    },
    /// Release binaries: fill the cache, write or verify an air-gapped bundle.
    Artifacts {
        /// What to do.
        #[command(subcommand)]
        command: crate::artifacts::command::ArtifactsCommand,
    },
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::ApiLb { listen, backends } => crate::apilb::run(listen, backends),
        Command::Validate { inventory } => {
            let model = crate::model::ClusterModel::load(&inventory)?;
            println!(
                "{}: valid — cluster `{}`, Kubernetes {}, {} control plane(s), {} etcd member(s), {} node(s), endpoint {} ({:?})",
                inventory.display(),
                model.name,
                model.versions.kubernetes,
                model.control_planes().count(),
                model.etcd_members().count(),
                model.nodes().count(),
                model.endpoint.external_url(),
                model.endpoint.mode,
            );
            Ok(0)
        }
        Command::Artifacts { command } => crate::artifacts::command::run(command),
    }
}
