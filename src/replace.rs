//! `kubeforge replace-node NAME --address NEW`: a node moves to a new machine under the same name (issue
//! #32). The old machine leaves as `remove-node` removes it (its etcd member first, through a member that
//! stays and only when the others keep a quorum; its Node deleted; the machine cleaned when it answers),
//! except that its pod subnet stays reserved for it; then the node joins again at the new address as `join`
//! adds a host (an etcd member as a learner, promoted once it caught up), which converges the rest of the
//! cluster to the new address (the apiservers' etcd lists, the balancers' backends, routes). The stages are
//! [`crate::workflow::REPLACE_NODE`].

use crate::inventory::Loaded;
use crate::lifecycle::RemoveOptions;
use crate::prompt::Consent;
use crate::session::Session;
use crate::state::ClusterState;
use crate::transport::Command;
use crate::workflow::REPLACE_NODE;
use crate::{Error, Result};
use std::path::PathBuf;
use std::time::Duration;

/// Arguments of `kubeforge replace-node`.
#[derive(Debug, clap::Args)]
pub struct ReplaceNodeArgs {
    /// The inventory file (listing the node at its old address).
    #[arg(short, long)]
    pub inventory: PathBuf,
    /// The node to move to a new machine.
    pub node: String,
    /// The new machine's SSH address (IP or DNS name).
    #[arg(long)]
    pub address: String,
    /// The new machine's cluster address, when the inventory gives the node an `internalAddress`.
    #[arg(long)]
    pub internal_address: Option<String>,
    /// Go on when the old machine answers but cannot be drained (PodDisruptionBudgets).
    #[arg(long)]
    pub force: bool,
    /// How long draining the old machine may take (a machine that does not answer is not drained).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Write the new address into the inventory file once the node runs on the new machine.
    #[arg(long)]
    pub edit_inventory: bool,
    /// Show what would be done; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask (without it, the plan is shown and a terminal is asked; without a terminal it refuses).
    #[arg(short, long)]
    pub yes: bool,
    /// Preflight checks to report as warnings instead of errors (`cpu,memory`, or `all`).
    #[arg(long, value_delimiter = ',', value_parser = crate::args::preflight_check)]
    pub ignore_preflight_errors: Vec<String>,
    /// Connection, PKI and cache settings.
    #[command(flatten)]
    pub common: crate::args::ClusterArgs,
}

/// What `replace-node` does, besides the session's settings.
#[derive(Debug, Clone)]
pub struct ReplaceOptions {
    /// The node.
    pub node: String,
    /// The new machine's SSH address.
    pub address: String,
    /// The new machine's cluster address (only when the inventory gives the node one).
    pub internal_address: Option<String>,
    /// Go on when an answering old machine cannot be drained.
    pub force: bool,
    /// Drain limit.
    pub drain_timeout: Duration,
    /// Write the new address into the inventory file at the end.
    pub edit_inventory: bool,
    /// Preview, go ahead, or ask.
    pub consent: Consent,
}

/// Runs a parsed `kubeforge replace-node`: one session on the inventory as it is (the old machine), one on
/// the inventory with the new address (the new machine).
pub fn run(a: ReplaceNodeArgs) -> Result<i32> {
    if a.edit_inventory && crate::inventory::is_stream(&a.inventory) {
        return Err(Error::usage(
            "--edit-inventory: the inventory comes from a stream (`-i -` or a pipe), not a file to edit",
            Some("give the inventory file with -i, or change the node's address yourself afterwards"),
        ));
    }
    let consent = Consent::from_flags("replace-node", a.dry_run, a.yes)?;
    let mut o = a.common.options(&a.inventory)?;
    o.ignore_preflight = a.ignore_preflight_errors;
    let old = Session::open(&a.inventory, o.clone())?;
    let options = ReplaceOptions {
        node: a.node,
        address: a.address,
        internal_address: a.internal_address,
        force: a.force,
        drain_timeout: a.drain_timeout,
        edit_inventory: a.edit_inventory,
        consent,
    };
    let (moved, text) = moved_inventory(&old.loaded, &options)?;
    // The hosts that stay keep their connection; only the moved node gets one to its new machine.
    let mut transports = old.transports.clone();
    let fresh = crate::apply::transports(&moved, &o.connect)?;
    if let Some(t) = fresh.get(&options.node) {
        transports.insert(options.node.clone(), t.clone());
    }
    let new = Session::new(moved, transports, o, crate::report::auto(false))?;
    replace_node_in(&old, &new, &options, &text)
}

/// The inventory with `options.node` at its new address, checked as a whole, and its text (the admin's text
/// with the address edited in place, so every position still points at the line the admin wrote).
pub fn moved_inventory(loaded: &Loaded, options: &ReplaceOptions) -> Result<(Loaded, String)> {
    let name = &options.node;
    let (i, host) = loaded.inventory.hosts.iter().enumerate().find(|(_, h)| &h.name == name).ok_or_else(|| {
        Error::usage(
            format!("`{name}` is not in {}", loaded.path.display()),
            Some("replace-node moves a node of the inventory to a new machine; add a new node with `kubeforge join`"),
        )
    })?;
    if host.address == options.address && options.internal_address.is_none() {
        return Err(Error::usage(
            format!("{name} is at {} already", options.address),
            Some("give the new machine's address with --address"),
        ));
    }
    if host.internal_address.is_some() && options.internal_address.is_none() {
        return Err(Error::usage(
            format!(
                "{name} has an `internalAddress` in {}: the new machine needs its own",
                loaded.path.display()
            ),
            Some("give it with --internal-address"),
        ));
    }
    let mut text = std::fs::read_to_string(&loaded.path).unwrap_or_default();
    if text.is_empty() || crate::inventory::is_stream(&loaded.path) {
        // A stream: no text to edit; the typed inventory is changed instead (it is checked again below).
        let mut l = loaded.clone();
        l.inventory.hosts[i].address = options.address.clone();
        if let Some(ia) = &options.internal_address {
            l.inventory.hosts[i].internal_address = Some(ia.clone());
        }
        text = serde_yaml::to_string(&l.inventory).map_err(|e| Error::msg(e.to_string(), None))?;
    } else {
        text = edit_value(loaded, &text, &format!("hosts[{i}].address"), &host.address, &options.address)?;
        if let (Some(old), Some(new)) = (&host.internal_address, &options.internal_address) {
            let l = crate::inventory::parse(&loaded.path, &text).map_err(Error::from)?;
            text = edit_value(&l, &text, &format!("hosts[{i}].internalAddress"), old, new)?;
        }
    }
    let moved = crate::inventory::parse(&loaded.path, &text).map_err(Error::from)?;
    let problems = crate::inventory::validate::validate(&moved.inventory, &moved.dir);
    if let Some(p) = problems.iter().find(|p| !p.warning) {
        return Err(Error::usage(format!("{name} at {}: {}", options.address, p.message), p.hint.as_deref()));
    }
    Ok((moved, text))
}

/// `text` with the value at `path` (now `old`) replaced by `new`, on its line.
fn edit_value(loaded: &Loaded, text: &str, path: &str, old: &str, new: &str) -> Result<String> {
    let pos = loaded
        .positions
        .find(path)
        .ok_or_else(|| Error::msg(format!("{}: no {path} to edit", loaded.path.display()), None))?;
    let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    let line = lines.get_mut(pos.line - 1).filter(|l| l.contains(old)).ok_or_else(|| {
        Error::msg(
            format!(
                "{}:{}: {path} is not written on one line; edit it by hand",
                loaded.path.display(),
                pos.line
            ),
            None,
        )
    })?;
    let at = pos.column.saturating_sub(1).min(line.len());
    let start =
        line[at..].find(old).map(|i| i + at).or_else(|| line.find(old)).expect("checked: the line has it");
    line.replace_range(start..start + old.len(), new);
    Ok(lines.join("\n"))
}

/// `kubeforge replace-node` in two sessions: `old` on the inventory as it is, `new` on the inventory with the
/// node at its new address, whose text is `moved_text` (tests: fake transports for both).
pub fn replace_node_in(old: &Session, new: &Session, o: &ReplaceOptions, moved_text: &str) -> Result<i32> {
    let name = &o.node;
    let model = old.model();
    old.enter(&REPLACE_NODE, "select");
    let host = model
        .host(name)
        .cloned()
        .ok_or_else(|| Error::usage(format!("`{name}` is not in {}", old.loaded.path.display()), None))?;
    if host.roles.etcd && model.etcd_members().count() == 1 {
        return Err(Error::msg(
            format!("{name} is the only etcd member: the cluster's data would go with the old machine"),
            Some("restore a backup onto the new machine instead (`kubeforge backup`, then `kubeforge restore` with the new address)"),
        ));
    }
    let state = ClusterState::load(&old.options.pki_root, &model.name)?;
    if !state.hosts.contains_key(name) {
        return Err(Error::msg(
            format!("{name} is not part of cluster `{}` (its state does not record it)", model.name),
            Some("a host the cluster does not know yet joins with `kubeforge join`"),
        ));
    }
    let subnet = state.pod_subnets.get(name).cloned();
    let to = new.model().host(name).map(|h| h.internal_ip.to_string()).unwrap_or_default();
    // Does the old machine answer? One short probe; a machine that is off is not drained or cleaned.
    let answers = old.block_on(async {
        let t = old.transport(name)?;
        Ok::<_, Error>(
            t.exec(&Command::new("true").timeout(Duration::from_secs(30))).await.is_ok_and(|o| o.success()),
        )
    })?;
    old.enter(&REPLACE_NODE, "preview");
    let mut plan = format!(
        "replace-node: {name} moves from {} to {}{}\n",
        host.ssh_address,
        o.address,
        if to.is_empty() { String::new() } else { format!(" (cluster address {to})") }
    );
    plan.push_str(&format!(
        "  the old machine {}: {}\n",
        host.ssh_address,
        if answers {
            "answers: cordoned, drained, its Node deleted, everything kubeforge installed removed"
        } else {
            "does not answer: its Node is deleted without a drain (its pods are started elsewhere); it is not cleaned (wipe it before it boots again)"
        }
    ));
    if host.roles.etcd {
        plan.push_str("  its etcd member leaves first, through a member that stays, only if the others keep a quorum; the new machine joins as a learner\n");
    }
    plan.push_str(&format!(
        "  the new machine {}: installed as {name} ({}), pod subnet {} kept; the other hosts converge to the new address\n",
        o.address,
        host.roles.names().join(", "),
        subnet.as_deref().unwrap_or("allocated anew")
    ));
    old.say(&plan);
    if o.consent == Consent::Preview {
        old.say("replace-node --dry-run: nothing was changed\n");
        return Ok(0);
    }
    if o.consent == Consent::Ask {
        old.enter(&REPLACE_NODE, "confirm");
        if !crate::prompt::ask(&format!("Move {name} to {}?", o.address))? {
            return Err(Error::msg("replace-node cancelled, nothing was changed", None));
        }
    }
    old.enter(&REPLACE_NODE, "remove");
    let mut apply = old.options.clone();
    apply.ignore_preflight = vec!["all".into()];
    crate::lifecycle::remove_node_in(
        old,
        RemoveOptions {
            node: name.clone(),
            force: o.force,
            drain_timeout: o.drain_timeout,
            apply,
            replacing: true,
            skip_drain: !answers,
        },
    )?;
    old.boundary(&REPLACE_NODE, "join")?;
    old.enter(&REPLACE_NODE, "join");
    let mut join = new.options.clone();
    join.hosts = Some(vec![name.clone()]);
    let code = crate::lifecycle::join_in(new, join)?;
    if code != 0 {
        return Ok(code);
    }
    let after = ClusterState::load(&new.options.pki_root, &model.name)?;
    new.enter(&REPLACE_NODE, "inventory");
    new.say(format!(
        "replace-node: {name} runs on {} (pod subnet {})\n",
        o.address,
        after.pod_subnets.get(name).map(String::as_str).unwrap_or("none")
    ));
    if o.edit_inventory {
        write_inventory(&new.loaded.path, moved_text)?;
        new.say(format!("{}: {name} is at {} now\n", new.loaded.path.display(), o.address));
    } else {
        let line = old
            .loaded
            .inventory
            .hosts
            .iter()
            .position(|h| &h.name == name)
            .and_then(|i| old.loaded.positions.find(&format!("hosts[{i}].address")))
            .map(|p| p.line)
            .unwrap_or(0);
        new.say(format!(
            "next: set {name}'s address to {} in {}:{line} (or re-run with --edit-inventory)\n",
            o.address,
            old.loaded.path.display()
        ));
    }
    Ok(0)
}

/// Writes `text` over the inventory file `path` (a temporary file beside it, then a rename).
fn write_inventory(path: &std::path::Path, text: &str) -> Result<()> {
    let tmp = path.with_extension("kubeforge-tmp");
    std::fs::write(&tmp, text).map_err(|e| Error::io(format!("writing {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(format!("writing {}", path.display()), e))
}
