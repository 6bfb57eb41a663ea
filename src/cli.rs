//! Command-line definitions (clap) and dispatch. Only argument shapes live here; each command's work is in
//! its own module.

use crate::{inventory, Result};
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
        Command::Validate { inventory } => {
            let inv = inventory::load(&inventory)?;
            println!("{}: valid ({} hosts)", inventory.display(), inv.hosts.len());
            Ok(0)
        }
        Command::Artifacts { command } => crate::artifacts::command::run(command),
    }
}
