//! kubeforge: turns an inventory file into a running, secured, self-hosted Kubernetes cluster over SSH,
//! and keeps it alive (join, upgrade, certificate renewal, backup, reset).
//!
//! The crate is a library with a thin binary on top (`src/main.rs`); README.md describes every command and
//! the safety rules. Module map: `cli` (clap definitions), `error` (top-level error, exit codes, hints),
//! `inventory` (YAML model and validation with file:line:col errors), `model` (the derived cluster model
//! every phase reads), `pki` (certificates, keys, kubeconfigs, client bundle), `identity` (the cluster
//! marker on every host and the check every writing command makes first), `cleanup` (the interrupt policy
//! and what goes whatever ends the process), `transport` (SSH/local/fake machines), `sshconfig` (OpenSSH
//! client config), `plan` (desired/actual state, diff, the plan value), `exec` (the parallel executor, the
//! only writer), `phase` + `workflow` (what each phase wants, in one ordered list), `report` (progress and
//! summaries), `adhoc` (`exec` and `check`: ad-hoc commands and facts on selected hosts), and the lifecycle
//! commands (`apply`, `lifecycle`, `upgrade`, `backup`/`restore`, `status`, `audit`, `lab`).

pub mod adhoc;
/// The node-local API load balancer (the `kubeforge-apilb` crate; `kubeforge api-lb` runs it too).
pub use kubeforge_apilb as apilb;
pub mod apply;
pub mod artifacts;
pub mod audit;
pub mod backup;
pub mod cleanup;
pub mod cli;
pub mod error;
pub mod exec;
pub mod identity;
pub mod inventory;
pub mod lab;
pub mod lifecycle;
pub mod material;
pub mod model;
pub mod output;
pub mod phase;
pub mod pki;
pub mod plan;
pub mod prompt;
pub mod render;
pub mod report;
pub mod restore;
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
