//! The ordered phase lists of every workflow: the one place where order is written.

use crate::phase::addons::Addons;
use crate::phase::identity::Identity;
use crate::phase::install::{ApiEndpoint, ControlPlane, Etcd, Nodes, OsPrep, Runtime};
use crate::phase::{preflight::Preflight, state::RecordState, verify::Verify, Phase};

/// `apply`: install or converge a cluster.
pub fn apply() -> Vec<&'static dyn Phase> {
    vec![
        &Preflight,
        &Identity,
        &OsPrep,
        &Runtime,
        &Etcd,
        &ControlPlane,
        &ApiEndpoint,
        &Nodes,
        &Addons,
        &Verify,
        &RecordState,
    ]
}

/// The names of every workflow.
pub const NAMES: &[&str] = &["apply"];

/// A workflow by name (for `kubeforge phases NAME`).
pub fn by_name(name: &str) -> Option<Vec<&'static dyn Phase>> {
    match name {
        "apply" => Some(apply()),
        _ => None,
    }
}
