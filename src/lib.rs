//! kubeforge: turns an inventory file into a running, secured, self-hosted Kubernetes cluster over SSH,
//! and keeps it alive (join, upgrade, certificate renewal, backup, reset).
//!
//! The crate is a library with a thin binary on top (`src/main.rs`); README.md describes every command, the
//! command-line contract and the safety rules. Imports run one way: commands → library → transport.
//!
//! - Command layer: `cli` (clap definitions and dispatch), `args` (argument types the commands share),
//!   `prompt` (the one confirmation rule), `output` (`-o table|json|yaml` documents), and the commands:
//!   `apply`, `lifecycle` (join, remove-node, reset, state pull), `upgrade`, `maintain` (rolling host
//!   maintenance), `replace` (replace-node), `rotate` (encryption-key and service-account key rotation),
//!   `restore` (backup and restore), `status`, `etcd` (etcd status, defragmentation, alarms), `audit`,
//!   `certs` (certificates and kubeconfigs), `adhoc` (`exec`, `check`), `lab`.
//! - Engine: `session` (one session per command: inventory, one transport per host, one runtime, one
//!   executor), `workflow` (every workflow's phases or typed stages, in one place), `phase` (what each apply
//!   phase wants), `plan` (desired/actual state, diff, the plan value), `exec` (the parallel executor, the
//!   only writer), `report` (progress events), `cleanup` (the interrupt policy), `disrupt` (cordon, drain,
//!   leadership hand-over, uncordon and the workload gate, for the commands that take nodes out of service).
//! - Library: `inventory` (YAML model and validation with file:line:col errors), `selector` (the one
//!   `--hosts` grammar), `model` (the derived cluster model), `pki` (certificates, keys, kubeconfigs),
//!   `identity` (the cluster marker and the check every writing command makes first), `at_rest` and
//!   `sa_key` (the encryption-at-rest key and the service-account key pair, each with its rotation's
//!   record), `material`, `state`, `render`, `artifacts`, `backup`.
//! - Transport: `transport` (SSH, local and fake machines; `target` the connection data, `settings` its
//!   resolution), `sshconfig` (OpenSSH client config).

pub mod adhoc;
/// The node-local API load balancer (the `kubeforge-apilb` crate; `kubeforge api-lb` runs it too).
pub use kubeforge_apilb as apilb;
pub mod apply;
pub mod args;
pub mod artifacts;
pub mod at_rest;
pub mod audit;
pub mod backup;
pub mod certs;
pub mod cleanup;
pub mod cli;
pub mod disrupt;
pub mod error;
pub mod etcd;
pub mod exec;
pub mod fsutil;
pub mod identity;
pub mod inventory;
pub mod lab;
pub mod lifecycle;
pub mod maintain;
pub mod material;
pub mod model;
pub mod output;
pub mod phase;
pub mod pki;
pub mod plan;
pub mod prompt;
pub mod render;
pub mod replace;
pub mod report;
pub mod restore;
pub mod rotate;
pub mod sa_key;
pub mod selector;
pub mod session;
pub mod sshconfig;
pub mod state;
pub mod status;
pub mod transport;
pub mod upgrade;
pub mod workflow;

pub use error::{Error, Result};

/// Helpers shared by unit tests that run real shell scripts against fake programs.
#[cfg(test)]
pub(crate) mod test_support {
    /// Runs `argv` with `dir` first on `PATH` (where the test's fake programs are) and `$D` set to `dir`.
    pub fn run_with_fakes(argv: &[String], dir: &std::path::Path) -> std::process::Output {
        let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap());
        std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .env("PATH", &path)
            .env("D", dir)
            .output()
            .unwrap()
    }
}
