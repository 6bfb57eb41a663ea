//! Every command's workflow, listed in one place: the one place where order is written.
//!
//! `apply` (and the apply passes that `join`, `remove-node` and `restore` run) is its ordered phase list: each
//! phase returns desired state and the executor writes. The lifecycle commands are ordered lists of typed
//! [`Stage`]s: a check, a converge (desired state, absent files included), a cluster action run on one API
//! host, a gate, a nested apply pass, local work, or the confirmation. A command enters its stages through
//! [`crate::session::Session::enter`], which refuses (in debug builds and every test) a stage that is not in
//! the command's list or comes out of order, so the list `kubeforge phases NAME` prints is the order the
//! command runs.

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

/// What kind of work a stage does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageKind {
    /// Reads hosts and refuses before anything is written.
    Check,
    /// Shows what would be done (`--dry-run` ends after it).
    Preview,
    /// Asks on the terminal unless `--yes`.
    Confirm,
    /// Brings hosts to a desired state through the executor (absent files and units included).
    Converge,
    /// A cluster operation on one API or etcd host (cordon, drain, delete a Node, etcd member changes,
    /// snapshot, restore of a member).
    ClusterAction,
    /// Acts on the step's hosts themselves (a reboot).
    Host,
    /// Waits for health and refuses to go on without it.
    Gate,
    /// A nested `apply` pass.
    Apply,
    /// Work on the admin machine (the store, the state file, an archive).
    Local,
}

impl StageKind {
    /// The kind's name in listings.
    pub fn name(self) -> &'static str {
        match self {
            StageKind::Check => "check",
            StageKind::Preview => "preview",
            StageKind::Confirm => "confirm",
            StageKind::Converge => "converge",
            StageKind::ClusterAction => "cluster",
            StageKind::Host => "host",
            StageKind::Gate => "gate",
            StageKind::Apply => "apply",
            StageKind::Local => "local",
        }
    }
}

/// One stage of a lifecycle workflow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    /// Its id (`drain`).
    pub id: &'static str,
    /// What kind of work it is.
    pub kind: StageKind,
    /// What it does, for people.
    pub title: &'static str,
}

const fn stage(id: &'static str, kind: StageKind, title: &'static str) -> Stage {
    Stage { id, kind, title }
}

/// A lifecycle command's ordered stages.
#[derive(Debug)]
pub struct Workflow {
    /// The workflow's name (`reset`), as `kubeforge phases NAME` takes it.
    pub name: &'static str,
    /// The command line that runs it (`reset`, `upgrade apply`).
    pub command: &'static str,
    /// Its stages, in the order they run.
    pub stages: &'static [Stage],
    /// Stages `first..=last` that run once per round (`upgrade`: per step), in order within each round.
    pub repeat: Option<(&'static str, &'static str)>,
}

impl Workflow {
    /// The position of stage `id`, if the workflow has it.
    pub fn position(&self, id: &str) -> Option<usize> {
        self.stages.iter().position(|s| s.id == id)
    }
}

use StageKind::*;

/// `kubeforge join`.
pub const JOIN: Workflow = Workflow {
    name: "join",
    command: "join",
    stages: &[
        stage("select", Check, "Find the inventory hosts the cluster state does not know (or --hosts)"),
        stage("apply", Apply, "Apply to the new hosts; other hosts only where their desired state moves (routes, labels, the state copy)"),
        stage("learners", ClusterAction, "After a failed join: remove the etcd learners and unstarted members it left"),
    ],
    repeat: None,
};

/// `kubeforge remove-node`.
pub const REMOVE_NODE: Workflow = Workflow {
    name: "remove-node",
    command: "remove-node",
    stages: &[
        stage("identity", Check, "Read the staying control planes' markers: the store must be this installed cluster's"),
        stage("etcd-member", ClusterAction, "An etcd member leaves first, through a member that stays, only when the rest keep a quorum"),
        stage("cordon", ClusterAction, "Cordon the Node"),
        stage("drain", ClusterAction, "Drain it through the eviction API (--force goes on when it cannot finish)"),
        stage("delete-node", ClusterAction, "Delete the Node"),
        stage("clean", Converge, "Remove what kubeforge installed on the host, put back what it had before (a dead host is reported)"),
        stage("forget", Local, "Forget the host in the cluster state (its pod subnet is free again)"),
        stage("converge", Apply, "Converge the hosts that stay without it (routes, balancers' backends, the state copy)"),
    ],
    repeat: None,
};

/// `kubeforge reset`.
pub const RESET: Workflow = Workflow {
    name: "reset",
    command: "reset",
    stages: &[
        stage("identity", Check, "Read every selected host's marker and CA; refuse hosts of no or another cluster and staying etcd members (unless --force)"),
        stage("material", Local, "Work out what kubeforge installed, in a scratch copy of the store"),
        stage("preview", Preview, "Show per host what would be removed and what would be put back"),
        stage("confirm", Confirm, "Ask on the terminal (--yes: go ahead; no terminal: refused)"),
        stage("remove", Converge, "Per host: pods, units, files and their rollback copies, data, bridge, routes, KUBE-* chains; put back what the host had before; check it is clean"),
        stage("state", Local, "Forget the reset hosts in the cluster state"),
    ],
    repeat: None,
};

/// `kubeforge backup`.
pub const BACKUP: Workflow = Workflow {
    name: "backup",
    command: "backup",
    stages: &[
        stage("snapshot", ClusterAction, "Take an etcd snapshot over TLS on a member (the next one when it fails), check it, stream it here"),
        stage("archive", Local, "Write the archive: manifest, snapshot, the whole store, the inventory; encrypted unless --unencrypted"),
    ],
    repeat: None,
};

/// `kubeforge restore`.
pub const RESTORE: Workflow = Workflow {
    name: "restore",
    command: "restore",
    stages: &[
        stage("archive", Check, "Open the archive and check every member against the manifest"),
        stage(
            "identity",
            Check,
            "Read every host's marker and CA: refuse hosts of another cluster or installation",
        ),
        stage("pki", Local, "Keep, place or (--replace-pki) replace the store; --dry-run shows the steps"),
        stage("confirm", Confirm, "Ask on the terminal (--yes: go ahead; no terminal: refused)"),
        stage("install", Apply, "Install or converge every host of the inventory"),
        stage("stop", ClusterAction, "Stop the control plane everywhere"),
        stage(
            "members",
            ClusterAction,
            "Replace every member's data with the snapshot (the previous data kept aside)",
        ),
        stage("etcd", Gate, "Start the members together; each must be healthy"),
        stage("control-plane", ClusterAction, "Start the control plane"),
        stage("addons", ClusterAction, "Apply the addons and node labels again"),
        stage("check", Apply, "Converge and check everything"),
    ],
    repeat: None,
};

/// `kubeforge upgrade apply` (`upgrade plan` runs its stages up to `preview`; `upgrade rollback` runs the
/// per-step stages).
pub const UPGRADE: Workflow = Workflow {
    name: "upgrade",
    command: "upgrade apply",
    stages: &[
        stage("read", Check, "Read every host's binaries' versions (one round trip each) and the cluster's health on a control plane"),
        stage("path", Check, "The path, one minor per hop, and each hop's steps and skew, runtime and release-note checks; refuse a downgrade, a skipped minor, a forbidden skew, an unhealthy cluster"),
        stage("preview", Preview, "Show the plan (`upgrade plan` and `--dry-run` end here)"),
        stage("identity", Check, "Read every host's marker: the store must be this installed cluster's"),
        stage("artifacts", Local, "Resolve and verify the artifacts of every hop and of the versions the hosts run now (for a rollback)"),
        stage("confirm", Confirm, "Ask on the terminal (--yes: go ahead; no terminal: refused)"),
        stage("snapshot", ClusterAction, "Take an etcd snapshot into the store's backups"),
        stage("step", Check, "Per step of the plan (etcd-only members, control planes one at a time, then workers in batches), hop by hop: plan its hosts at the hop's version; hosts already on it are skipped"),
        stage("cordon", ClusterAction, "Cordon the step's nodes whose kubelet, kube-proxy or runtime changes"),
        stage("drain", ClusterAction, "Drain them through the eviction API (PodDisruptionBudgets hold); a drain that cannot finish uncordons and stops"),
        stage("leadership", ClusterAction, "Hand etcd leadership away from a member about to restart"),
        stage("converge", Apply, "The apply workflow at the hop's version on the step's hosts (previous files kept as .kubeforge-prev)"),
        stage("gate", Gate, "Services healthy; apiserver ready at the hop's version, etcd member healthy, Node Ready with the new kubelet, every binary reporting it"),
        stage("uncordon", ClusterAction, "Uncordon the drained nodes"),
        stage("workloads", Gate, "Every workload controller has its Ready pods of before the drain again"),
        stage("rollback", Converge, "After a failure or an interrupt in the step: converge its hosts back to what they ran, gate, uncordon; the upgrade stops"),
        stage("report", Local, "The versions each host runs now; --edit-inventory records the target"),
    ],
    repeat: Some(("step", "rollback")),
};

/// `kubeforge maintain`.
pub const MAINTAIN: Workflow = Workflow {
    name: "maintain",
    command: "maintain",
    stages: &[
        stage("identity", Check, "Read the selected hosts' and the control planes' markers: the store must be this installed cluster's"),
        stage("read", Check, "Per host: boot id, package manager, pending package upgrades (--patch; lists refreshed unless --dry-run), reboot required; the cluster's health (refused when unhealthy)"),
        stage("preview", Preview, "Show per step and host what will be done: packages, reboot and why, drain (`--dry-run` ends here)"),
        stage("confirm", Confirm, "Ask on the terminal (--yes: go ahead; no terminal: refused)"),
        stage("step", Check, "Per step (etcd-only members, control planes one at a time, then workers in batches): its hosts with work left; hosts done earlier in this maintenance are skipped"),
        stage("cordon", ClusterAction, "Cordon the step's nodes"),
        stage("drain", ClusterAction, "Drain them through the eviction API (PodDisruptionBudgets hold); a drain that cannot finish uncordons and stops"),
        stage("leadership", ClusterAction, "Hand etcd leadership away from a member about to restart"),
        stage("patch", Converge, "Upgrade the OS packages (--patch): apt-get upgrade or dnf upgrade, non-interactive, keeping changed configuration files"),
        stage("reboot", Host, "Reboot when required (/var/run/reboot-required, needs-restarting -r) or always (--reboot)"),
        stage("back", Gate, "SSH answers with a new boot id, then the host's services pass their health checks (--reboot-timeout)"),
        stage("gate", Gate, "apiserver ready, etcd member healthy, Node Ready (--gate-timeout); a host that fails stays cordoned and the run stops"),
        stage("uncordon", ClusterAction, "Uncordon the step's nodes; the host is recorded as done in the cluster state"),
        stage("workloads", Gate, "Every workload controller has its Ready pods of before the drain again"),
        stage("report", Local, "Per host: patched, rebooted, and the time of each part"),
    ],
    repeat: Some(("step", "workloads")),
};

/// `kubeforge replace-node`.
pub const REPLACE_NODE: Workflow = Workflow {
    name: "replace-node",
    command: "replace-node",
    stages: &[
        stage("select", Check, "The node is in the inventory and the cluster state, the inventory with its new address is valid, it is not the only etcd member; does the old machine answer?"),
        stage("preview", Preview, "Show what happens to the old machine and the new one (`--dry-run` ends here)"),
        stage("confirm", Confirm, "Ask on the terminal (--yes: go ahead; no terminal: refused)"),
        stage("remove", Apply, "The remove-node workflow on the old machine (a machine that does not answer: Node deleted without a drain, not cleaned), its pod subnet kept"),
        stage("join", Apply, "The join workflow on the new machine under the same name (an etcd member as a learner); the other hosts converge to the new address"),
        stage("inventory", Local, "--edit-inventory writes the new address into the inventory file; otherwise the line to change is named"),
    ],
    repeat: None,
};

/// `kubeforge rotate encryption-key` (a re-run after an interrupt resumes at the step the store records).
pub const ROTATE_ENCRYPTION_KEY: Workflow = Workflow {
    name: "rotate-encryption-key",
    command: "rotate encryption-key",
    stages: &[
        stage("identity", Check, "Read every control plane's marker: the store must be this installed cluster's"),
        stage("health", Check, "Every apiserver ready, every etcd member healthy; count the encrypted values in etcd per key"),
        stage("preview", Preview, "Show the old and new key, the stages left and the count per key (`--dry-run` ends here)"),
        stage("confirm", Confirm, "Ask on the terminal (--yes: go ahead; no terminal: refused)"),
        stage("begin", Local, "Record the new secretbox key beside the current one in the store (or resume the recorded rotation)"),
        stage("read-both", Converge, "Old key writes, both read: control planes one at a time, each gated on every apiserver ready"),
        stage("write-new", Converge, "New key writes, both read: control planes one at a time, gated"),
        stage("rewrite", ClusterAction, "Write every Secret back through the API, one namespace at a time, on one control plane"),
        stage("prove", Gate, "Read every value from etcd: refuse to go on while any lacks the new key's prefix (count per key)"),
        stage("drop-old", Converge, "New key alone: control planes one at a time, gated"),
        stage("finish", Local, "The store's current key becomes the new one, the old one kept in secrets/retired/; the record goes last"),
    ],
    repeat: None,
};

/// `kubeforge rotate service-account-key` (a re-run resumes at the step the store records; a run during the
/// wait stops there and says when the old key can go).
pub const ROTATE_SERVICE_ACCOUNT_KEY: Workflow = Workflow {
    name: "rotate-service-account-key",
    command: "rotate service-account-key",
    stages: &[
        stage("identity", Check, "Read every control plane's marker: the store must be this installed cluster's"),
        stage("health", Check, "Every apiserver ready, every etcd member healthy; the key id of each legacy token Secret (its token's header, cut on the control plane)"),
        stage("preview", Preview, "Show the old and new key ids, where a rotation stands, the token wait and the legacy token Secrets that stop working (`--dry-run` ends here)"),
        stage("confirm", Confirm, "Ask on the terminal (--yes: go ahead; no terminal: refused)"),
        stage("begin", Local, "Record the new key pair beside the current one in the store (or resume the recorded rotation)"),
        stage("trust-both", Converge, "sa.pub holds the old and the new public key, the old key signs: control planes one at a time, each gated on every apiserver ready"),
        stage("sign-new", Converge, "The new key signs (apiserver tokens, controller-manager legacy tokens), both verify: control planes one at a time, gated; the time it ended is recorded"),
        stage("wait", Gate, "Tokens signed with the old key expire: the bound from the apiserver's flags (1h 5m 7s by default) after sign-new ended; before it the run stops and says when to run again"),
        stage("drop-old", Converge, "The new public key alone: control planes one at a time, gated"),
        stage("finish", Local, "The store's sa.key/sa.pub become the new pair, the old key kept in secrets/retired/; the record goes last"),
    ],
    repeat: None,
};

/// `kubeforge rotate ca` (a re-run after an interrupt resumes at the step the store records).
pub const ROTATE_CA: Workflow = Workflow {
    name: "rotate-ca",
    command: "rotate ca",
    stages: &[
        stage("identity", Check, "Read every host's marker: the store must be this installed cluster's (the old or the new cluster CA while a rotation runs)"),
        stage("health", Check, "Every apiserver ready, every etcd member healthy"),
        stage("preview", Preview, "Show each CA's old and new fingerprint, where a rotation stands, the hosts in rollout order and the users' kubeconfigs the old cluster CA issued, which stop working (`--dry-run` ends here)"),
        stage("confirm", Confirm, "Ask on the terminal (--yes: go ahead; no terminal: refused)"),
        stage("begin", Local, "Record a new CA beside each current one in the store (or resume the recorded rotation)"),
        stage("trust-both", Converge, "Every trust file, kubeconfig and the balancers' CA hold the old and the new CA, the old one signs: control planes one at a time (gated), etcd-only members one at a time, then workers"),
        stage("issue", Converge, "Every leaf and kubeconfig re-issued by the new CA, both still trusted, markers take the new cluster CA: same order, gated"),
        stage("distrust", Converge, "The new CA alone: same order, gated; certificates the old CA issued (users' kubeconfigs) are refused from here"),
        stage("finish", Local, "The store's CAs become the new ones, the old ones kept in secrets/retired/; the record goes last"),
    ],
    repeat: None,
};

/// `kubeforge etcd status`.
pub const ETCD_STATUS: Workflow = Workflow {
    name: "etcd-status",
    command: "etcd status",
    stages: &[stage(
        "read",
        Check,
        "Read every selected member on its host: status, health, alarms, quota (one round trip each)",
    )],
    repeat: None,
};

/// `kubeforge etcd defrag`.
pub const ETCD_DEFRAG: Workflow = Workflow {
    name: "etcd-defrag",
    command: "etcd defrag",
    stages: &[
        stage("read", Check, "Read every member on its host: status, health, alarms (one round trip each)"),
        stage("plan", Check, "Choose the selected members whose in-use share is below --threshold (or all with --force), the leader last; refuse when a member is unhealthy or an alarm is active"),
        stage("preview", Preview, "Show the members and why (--dry-run ends here)"),
        stage("identity", Check, "Read the members' markers: the store must be this installed cluster's"),
        stage("confirm", Confirm, "Ask on the terminal (--yes: go ahead; no terminal: refused)"),
        stage("quorum", Gate, "Per member: every member answers and is healthy, or the run stops before it"),
        stage("defrag", ClusterAction, "Defragment the member (it answers nothing meanwhile)"),
        stage("gate", Gate, "The member is healthy and answers again; its size after"),
        stage("report", Local, "Size before and after per member, and the time"),
    ],
    repeat: Some(("quorum", "gate")),
};

/// `kubeforge etcd alarms` (without `--disarm` it ends after `preview`).
pub const ETCD_ALARMS: Workflow = Workflow {
    name: "etcd-alarms",
    command: "etcd alarms --disarm",
    stages: &[
        stage("read", Check, "Read every member on its host: status, health, alarms, quota (one round trip each)"),
        stage("preview", Preview, "List the alarms; with --disarm, the recovery's steps (refused for an alarm other than NOSPACE or a member that does not answer)"),
        stage("identity", Check, "Read the members' markers: the store must be this installed cluster's"),
        stage("confirm", Confirm, "Ask on the terminal (--yes: go ahead; no terminal: refused)"),
        stage("compact", ClusterAction, "Compact the key space to the current revision"),
        stage("quorum", Gate, "Per member: every member answers (the alarm makes health checks fail)"),
        stage("defrag", ClusterAction, "Defragment the member, followers first, the leader last"),
        stage("gate", Gate, "The member answers again; its size after"),
        stage("quota", Check, "Every member's db is below its quota again, or the alarm stays armed and the run says so"),
        stage("disarm", ClusterAction, "Disarm the NOSPACE alarm"),
        stage("verify", Gate, "No alarm is left and every member is healthy"),
    ],
    repeat: Some(("quorum", "gate")),
};

/// Every lifecycle workflow with stages.
pub const LIFECYCLE: &[&Workflow] = &[
    &JOIN,
    &REMOVE_NODE,
    &RESET,
    &BACKUP,
    &RESTORE,
    &UPGRADE,
    &MAINTAIN,
    &REPLACE_NODE,
    &ROTATE_ENCRYPTION_KEY,
    &ROTATE_SERVICE_ACCOUNT_KEY,
    &ROTATE_CA,
    &ETCD_STATUS,
    &ETCD_DEFRAG,
    &ETCD_ALARMS,
];

/// The names of every workflow (`kubeforge phases NAME`).
pub const NAMES: &[&str] = &[
    "apply",
    "join",
    "remove-node",
    "reset",
    "backup",
    "restore",
    "upgrade",
    "maintain",
    "replace-node",
    "rotate-encryption-key",
    "rotate-service-account-key",
    "rotate-ca",
    "etcd-status",
    "etcd-defrag",
    "etcd-alarms",
];

/// A lifecycle workflow by name.
pub fn lifecycle(name: &str) -> Option<&'static Workflow> {
    LIFECYCLE.iter().copied().find(|w| w.name == name)
}

/// A workflow by name (for `kubeforge phases NAME`): the apply phases, or a lifecycle command's stages.
pub fn by_name(name: &str) -> Option<Vec<&'static dyn Phase>> {
    match name {
        "apply" => Some(apply()),
        _ => None,
    }
}

/// The lines `kubeforge phases NAME` prints: number, id, kind (for stages) and title.
pub fn listing(name: &str) -> Option<Vec<String>> {
    if let Some(phases) = by_name(name) {
        return Some(
            phases
                .iter()
                .enumerate()
                .map(|(i, p)| format!("{:>2}. {:<16} {}", i + 1, p.id(), p.title()))
                .collect(),
        );
    }
    let w = lifecycle(name)?;
    let mut lines: Vec<String> = w
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{:>2}. {:<14} {:<8} {}", i + 1, s.id, s.kind.name(), s.title))
        .collect();
    if let Some((first, last)) = w.repeat {
        let per = if w.name.starts_with("etcd-") { "member" } else { "step" };
        lines.push(format!("    `{first}` to `{last}` run once per {per}"));
    }
    Some(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_workflow_is_listed_by_name_with_unique_stage_ids() {
        for name in NAMES {
            assert!(listing(name).is_some_and(|l| !l.is_empty()), "{name}");
        }
        for w in LIFECYCLE {
            assert!(NAMES.contains(&w.name), "{} is not in NAMES", w.name);
            let mut ids: Vec<&str> = w.stages.iter().map(|s| s.id).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), w.stages.len(), "{}: a stage id repeats", w.name);
        }
    }
}
