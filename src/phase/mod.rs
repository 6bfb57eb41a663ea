//! Phases of a workflow. A phase is a pure description: for each host it returns the state the host must
//! reach ([`HostDesired`]) or, for phases that only check or query, its own executor [`Step`]. Phases
//! never talk to hosts themselves; [`crate::plan`] probes and diffs, [`crate::exec`] writes. That split is
//! what makes `--dry-run` unable to leak a write and lets unit tests assert on plans.

use crate::exec::Step;
use crate::model::{ClusterModel, HostModel};
use crate::plan::HostDesired;

/// What a phase does on one host.
pub enum HostWork {
    /// Converge the host to this state (probe, diff, write, restart).
    Converge(HostDesired),
    /// Run this step (checks and queries that are not about files and services).
    Step(Step),
}

/// Everything phases read: the model, and the material prepared on the admin machine before any host is
/// touched (certificates, binaries, generated secrets).
pub struct Context<'a> {
    /// The cluster model.
    pub model: &'a ClusterModel,
    /// Prepared local material (PKI, artifacts, secrets), filled by the workflow before phases run.
    pub material: &'a crate::material::Material,
}

/// How a phase rolls its changes out across hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollout {
    /// Every host at once.
    Parallel,
    /// Hosts that install for the first time go at once; hosts whose change restarts a service that is
    /// running ([`crate::plan::HostChanges::disrupts`]) go in batches of the run's batch size (default one),
    /// each batch gated on its health waits before the next starts. A quorum (etcd) or an HA control plane
    /// therefore never loses more than one member to a restart.
    SerialWhenRunning,
}

/// One phase of a workflow.
pub trait Phase: Send + Sync {
    /// Stable id (`etcd`, `control-plane`), used in progress lines, `--phases`, and checkpoints.
    fn id(&self) -> &'static str;
    /// Human title ("Install the etcd cluster").
    fn title(&self) -> &'static str;
    /// The work on `host`, or `None` when the host takes no part in this phase.
    fn work(&self, ctx: &Context<'_>, host: &HostModel) -> Result<Option<HostWork>, crate::Error>;
    /// A read-only check that runs while the plan is made, before any host is probed for changes
    /// (preflight). Other step phases run in their place when the plan is carried out.
    fn at_plan_time(&self) -> bool {
        false
    }
    /// The phase does cluster-wide work on the first control plane (addons, the all-nodes check), so it
    /// runs there even when a run targets other hosts only (`join`, `--hosts`).
    fn cluster_wide(&self) -> bool {
        false
    }
    /// How changes roll out across hosts.
    fn rollout(&self) -> Rollout {
        Rollout::Parallel
    }
}

pub mod addons;
pub mod identity;
pub mod install;
pub mod pki_files;
pub mod preflight;
pub mod state;
pub mod verify;
