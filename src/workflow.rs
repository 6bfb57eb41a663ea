//! The ordered phase lists of every workflow: the one place where order is written.

use crate::phase::{preflight::Preflight, Phase};

/// `apply`: install or converge a cluster.
pub fn apply() -> Vec<&'static dyn Phase> {
    vec![&Preflight]
}

/// A workflow by name (for `kubeforge phases NAME`).
pub fn by_name(name: &str) -> Option<Vec<&'static dyn Phase>> {
    match name {
        "apply" => Some(apply()),
        _ => None,
    }
}
