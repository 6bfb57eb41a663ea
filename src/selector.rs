//! The one host-selector grammar every command's `--hosts` takes: comma-separated host names, roles
//! (`@worker` or `role=worker`) and `all`. A library module: `exec`, `check`, `apply`, `join`, `reset` and
//! `upgrade rollback` all select through [`select`] (or [`names`]), so a selector means the same everywhere.

use crate::inventory::HostSpec;
use crate::Error;

/// The roles a selector may name (`@worker`, `role=worker`).
pub const ROLES: &[&str] = &["control-plane", "etcd", "worker"];

/// Why a `--hosts` selector selects nothing sensible. Nothing has been contacted when this is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// A name that is no host of the inventory.
    #[error("--hosts: the inventory has no host named `{name}`")]
    UnknownHost {
        /// The name given.
        name: String,
        /// The closest host name, if one is close.
        suggestion: Option<String>,
        /// Every host name, in inventory order.
        known: Vec<String>,
    },
    /// A role that does not exist.
    #[error("--hosts: unknown role `{role}`")]
    UnknownRole {
        /// The role given.
        role: String,
    },
    /// A valid role that no host has.
    #[error("--hosts: no host of the inventory has the role `{role}`")]
    EmptyRole {
        /// The role given.
        role: String,
    },
    /// The selector is empty (`--hosts ,`).
    #[error("--hosts selects no host")]
    Empty,
}

impl SelectError {
    /// How to fix it.
    pub fn hint(&self) -> String {
        match self {
            SelectError::UnknownHost { suggestion: Some(s), known, .. } => {
                format!("did you mean `{s}`? Hosts: {}", known.join(", "))
            }
            SelectError::UnknownHost { known, .. } => format!("hosts: {}", known.join(", ")),
            SelectError::UnknownRole { .. } => {
                format!("roles are {}; write `@worker` or `role=worker`", ROLES.join(", "))
            }
            SelectError::EmptyRole { .. } | SelectError::Empty => {
                "select host names, `@ROLE` / `role=ROLE`, or `all`".into()
            }
        }
    }
}

impl From<SelectError> for Error {
    /// A selector that selects nothing sensible is a usage error (exit 2): nothing was contacted.
    fn from(e: SelectError) -> Self {
        Error::Usage { message: e.to_string(), hint: Some(e.hint()) }
    }
}

/// Selects hosts with a comma-separated list of host names, roles (`role=worker` or `@worker`) and
/// `all`. The result is in inventory order, each host once. Every item must select something: a typo
/// never silently shrinks the set of hosts.
pub fn select<'a>(hosts: &'a [HostSpec], selector: &str) -> Result<Vec<&'a HostSpec>, SelectError> {
    let items: Vec<&str> = selector.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if items.is_empty() {
        return Err(SelectError::Empty);
    }
    let mut chosen = vec![false; hosts.len()];
    for item in items {
        let role = item.strip_prefix('@').or_else(|| item.strip_prefix("role="));
        if item == "all" {
            chosen.iter_mut().for_each(|c| *c = true);
        } else if let Some(role) = role {
            if !ROLES.contains(&role) {
                return Err(SelectError::UnknownRole { role: role.into() });
            }
            let mut any = false;
            for (i, h) in hosts.iter().enumerate() {
                if h.roles.iter().any(|r| r == role) {
                    chosen[i] = true;
                    any = true;
                }
            }
            if !any {
                return Err(SelectError::EmptyRole { role: role.into() });
            }
        } else {
            match hosts.iter().position(|h| h.name == item) {
                Some(i) => chosen[i] = true,
                None => {
                    let suggestion = hosts
                        .iter()
                        .map(|h| (strsim::jaro_winkler(&h.name, item), &h.name))
                        .max_by(|a, b| a.0.total_cmp(&b.0))
                        .filter(|(score, _)| *score > 0.8)
                        .map(|(_, n)| n.clone());
                    return Err(SelectError::UnknownHost {
                        name: item.into(),
                        suggestion,
                        known: hosts.iter().map(|h| h.name.clone()).collect(),
                    });
                }
            }
        }
    }
    Ok(hosts.iter().zip(chosen).filter(|(_, c)| *c).map(|(h, _)| h).collect())
}

/// The names [`select`] picks for the values of a repeated/comma-separated `--hosts` flag (`None`: every
/// host, as when the flag is absent).
pub fn names(hosts: &[HostSpec], selector: Option<&[String]>) -> Result<Option<Vec<String>>, SelectError> {
    let Some(items) = selector else { return Ok(None) };
    if items.is_empty() {
        // No target at all (a run that only follows changes, as `remove-node`'s converge): not a user's
        // selector, which always has an item.
        return Ok(Some(Vec::new()));
    }
    Ok(Some(select(hosts, &items.join(","))?.into_iter().map(|h| h.name.clone()).collect()))
}
