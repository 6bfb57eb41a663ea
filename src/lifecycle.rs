//! Growing and shrinking a running cluster: `kubeforge join` and `kubeforge remove-node`.
//!
//! Both are the apply workflow with other targets, so they share its plan, dry run, checkpoints and
//! rolling restarts:
//! - **join** runs the workflow on the hosts the cluster state does not know yet (or `--hosts`), plus, phase
//!   by phase, the existing hosts whose desired state moved from the checkpoint the state recorded (with the
//!   built-in bridge CNI, every node gets a route to the new node's pod subnet). Cluster-wide work (labels,
//!   the all-nodes check) runs on the first control plane and the state copy on every control plane; every
//!   other host receives no SSH session.
//! - **remove-node** cordons and drains the node through the eviction API (PodDisruptionBudgets hold), deletes
//!   its Node object, then removes everything kubeforge installed on it — the list derived from the apply
//!   phases themselves, as negative desired state — and forgets it in the cluster state (its pod subnet is
//!   free again). The remaining hosts then converge on the cluster without it (routes, labels, state). A
//!   node that cannot be reached (powered off, dead) is still drained and deleted on the API side, and the
//!   report says that the host itself could not be cleaned.
//!
//! - **reset** returns hosts to the state before kubeforge: the same owned list as remove-node, plus what the
//!   services created at run time (etcd and kubelet data, mounts under the kubelet's directory, pods in
//!   containerd, the CNI bridge, routes to pod subnets, kube-proxy's `KUBE-*` iptables chains, the CNI
//!   plugin links). It then checks the host with the same tools and reports anything left, with why.
//!
//! Control planes with stacked etcd join as **learners**: added after a quorum check, started with
//! `initial-cluster-state=existing`, promoted once caught up, one member at a time; a join that fails leaves
//! no learner behind. They leave with a quorum-checked `member remove` through a member that stays, before
//! their Node is drained and deleted; the apiservers' etcd lists and the balancers' backends then converge,
//! one host at a time. The last control plane and the last etcd member are refused.

use crate::apply::{self, ApplyOptions};
use crate::exec::{HostPlan, Step};
use crate::model::{ClusterModel, HostModel};
use crate::phase::{Context, HostWork};
use crate::plan::HostDesired;
use crate::state::ClusterState;
use crate::transport::{Command, Transport};
use crate::{Error, Result};
use std::path::Path;
use std::sync::Arc;

/// The hosts of `model` that join: `requested`, or those the cluster state does not list.
pub fn hosts_to_join(
    model: &ClusterModel,
    state: &ClusterState,
    requested: Option<&[String]>,
) -> Result<Vec<String>> {
    if state.hosts.is_empty() {
        return Err(Error::msg(
            format!("kubeforge has no record of cluster `{}` (no hosts in its state file)", model.name),
            Some("install the cluster with `kubeforge apply` first; join adds hosts to a running cluster"),
        ));
    }
    let new: Vec<String> = match requested {
        Some(r) => r.to_vec(),
        None => model
            .hosts
            .iter()
            .filter(|h| !state.hosts.contains_key(&h.name))
            .map(|h| h.name.clone())
            .collect(),
    };
    Ok(new)
}

/// `kubeforge join`: installs the new hosts and converges what their arrival changes elsewhere.
pub fn join(inventory: &Path, options: ApplyOptions) -> Result<i32> {
    let session = crate::session::Session::open(inventory, options.clone())?;
    join_in(&session, options)
}

/// [`join`] in a session (fake transports in tests).
pub fn join_in(session: &crate::session::Session, mut options: ApplyOptions) -> Result<i32> {
    let loaded = &session.loaded;
    let model = session.model();
    session.enter(&crate::workflow::JOIN, "select");
    let state = ClusterState::load(&options.pki_root, &model.name)?;
    let selected = crate::selector::names(&loaded.inventory.hosts, options.hosts.as_deref())?;
    let new = hosts_to_join(&model, &state, selected.as_deref())?;
    if new.is_empty() {
        println!("join: nothing to join: every host of the inventory is part of cluster `{}`", model.name);
        return Ok(0);
    }
    eprintln!("[join] joining {}", new.join(", "));
    let joining_members: Vec<String> =
        new.iter().filter(|n| model.host(n).is_some_and(|h| h.roles.etcd)).cloned().collect();
    let keeper = model.etcd_members().find(|h| state.etcd_members.contains(&h.name)).map(|h| h.name.clone());
    options.hosts = Some(new);
    options.follow_changes = true;
    let dry = options.dry_run;
    session.enter(&crate::workflow::JOIN, "apply");
    let result = apply::run_in(session, loaded, model.clone(), options, "join");
    if let (Err(e), Some(keeper), false) = (&result, keeper, joining_members.is_empty() || dry) {
        // A join that failed half-way must not leave a learner (or an unstarted member) behind: it would
        // count against the quorum of a cluster it never served.
        eprintln!("[join] failed: {e}");
        session.enter(&crate::workflow::JOIN, "learners");
        match remove_stale_learners(session, &model, &keeper, &joining_members) {
            Ok(removed) if removed.is_empty() => eprintln!("[join] no etcd learner left behind"),
            Ok(removed) => eprintln!(
                "[join] removed the etcd member(s) that had not finished joining: {}",
                removed.join(", ")
            ),
            Err(e2) => {
                eprintln!("[join] warning: could not check for a stale etcd learner on {keeper}: {e2}")
            }
        }
    }
    result
}

/// Removes the members among the peer URLs `$2...` that are learners or never started, through `$1`; prints
/// the peer URLs removed.
const REMOVE_STALE: &str = r#"eps=$1; shift
# A cluster that just lost a member may be electing a leader: three tries.
list=$(e member list) || { sleep 5; list=$(e member list); } || { sleep 10; list=$(e member list); } || exit 1
for peer in "$@"; do
  line=$(echo "$list" | awk -F', ' -v p="$peer" '$4 == p')
  [ -n "$line" ] || continue
  case "$line" in
    *", true"|*", unstarted, "*) e member remove "${line%%,*}" >/dev/null && echo "$peer" ;;
  esac
done"#;

/// Removes, through the running member `keeper`, the etcd members among `hosts` that are still learners or
/// never started. Returns the names removed.
fn remove_stale_learners(
    session: &crate::session::Session,
    model: &ClusterModel,
    keeper: &str,
    hosts: &[String],
) -> Result<Vec<String>> {
    let k =
        model.host(keeper).ok_or_else(|| Error::msg(format!("{keeper} is not in the inventory"), None))?;
    let peers: Vec<String> =
        hosts.iter().filter_map(|n| model.host(n)).map(|h| crate::model::url(h.internal_ip, 2380)).collect();
    let cmd = stale_learners_command(&crate::model::url(k.internal_ip, 2379), &peers);
    let t = session.transport(keeper)?;
    let out = session
        .block_on(async { crate::plan::run_checked(t.as_ref(), "remove stale etcd learners", &cmd).await })
        .map_err(|e| Error::on_host(keeper, "removing stale etcd learners", e, None))?;
    let removed: Vec<String> = out
        .stdout_str()
        .lines()
        .filter_map(|peer| model.hosts.iter().find(|h| crate::model::url(h.internal_ip, 2380) == peer.trim()))
        .map(|h| h.name.clone())
        .collect();
    Ok(removed)
}

/// The command removing stale learners (`REMOVE_STALE` with etcdctl's function).
fn stale_learners_command(through: &str, peers: &[String]) -> Command {
    Command::shell(format!("{}\n{REMOVE_STALE}", crate::phase::install::ETCDCTL_FN))
        .arg(through)
        .args(peers.iter().cloned())
        .sudo()
}

/// Options of `kubeforge remove-node`.
#[derive(Debug, Clone)]
pub struct RemoveOptions {
    /// The node.
    pub node: String,
    /// Go on when the drain fails or times out (a node that cannot be drained, or is dead).
    pub force: bool,
    /// How long the drain may take.
    pub drain_timeout: std::time::Duration,
    /// Everything else (PKI root, cache, SSH options, dry run).
    pub apply: ApplyOptions,
    /// `replace-node`: the node comes back on another machine under its name: its pod subnet is kept, the
    /// rest of the cluster is converged by the join that follows (not here).
    pub replacing: bool,
    /// Delete the Node without cordon and drain (`replace-node` of a machine that does not answer: its pods
    /// do not run any more; deleting the Node lets their controllers start them elsewhere).
    pub skip_drain: bool,
}

/// What kubeforge installs on `host`: every file and unit the apply phases place there, and the rollback
/// copies of the files. Removing exactly this (and the phase markers) undoes an install.
pub fn owned(ctx: &Context<'_>, host: &HostModel) -> Result<HostDesired> {
    let mut d = HostDesired::default();
    for phase in crate::workflow::apply() {
        if let Some(HostWork::Converge(w)) = phase.work(ctx, host)? {
            let w = w.with_marker(phase.id());
            for f in &w.files {
                d.absent_files.push(f.upload.dest.clone());
                d.absent_files.push(format!("{}.kubeforge-prev", f.upload.dest));
            }
            d.absent_units.extend(w.units.iter().cloned());
        }
    }
    d.absent_files.sort();
    d.absent_files.dedup();
    d.absent_units.sort();
    d.absent_units.dedup();
    Ok(d)
}

/// kubectl on a control plane with the admin kubeconfig.
pub(crate) fn kubectl(args: &[&str]) -> Command {
    Command::new("kubectl")
        .args(["--kubeconfig", "/etc/kubernetes/admin.conf"])
        .args(args.iter().copied())
        .sudo()
}

/// [`kubectl`], run again when it fails the way an API server fails for a moment (a slow quorum read, a
/// restarting apiserver behind the endpoint): for idempotent requests (cordon, uncordon, get, delete
/// `--ignore-not-found`), never for a drain, whose own timeout must stand.
pub(crate) fn kubectl_retrying(args: &[&str]) -> Command {
    let mut argv = vec!["kubectl", "--kubeconfig", "/etc/kubernetes/admin.conf"];
    argv.extend_from_slice(args);
    crate::phase::addons::retrying(&argv)
}

/// `kubeforge remove-node` in a session (fake transports in tests).
pub fn remove_node_in(session: &crate::session::Session, options: RemoveOptions) -> Result<i32> {
    let (loaded, inventory) = (&session.loaded, &session.loaded.path);
    let full = session.model();
    let name = options.node.clone();
    let host = full.host(&name).cloned().ok_or_else(|| {
        Error::msg(
            format!("`{name}` is not in the inventory"),
            Some("remove-node needs the node's entry (its SSH address) to clean it; remove it from the inventory afterwards"),
        )
    })?;
    if host.roles.control_plane && full.control_planes().count() == 1 {
        return Err(Error::msg(
            format!("{name} is the only control plane: removing it would leave no cluster"),
            Some("add another control plane with `kubeforge join` first, or tear the cluster down with `kubeforge reset`"),
        ));
    }
    if host.roles.etcd && full.etcd_members().count() == 1 {
        return Err(Error::msg(
            format!("{name} is the only etcd member: removing it would lose the cluster's data"),
            Some("join another etcd member first, or tear the cluster down with `kubeforge reset`"),
        ));
    }
    // The API and etcd are reached through the hosts that stay.
    let first_cp = full
        .control_planes()
        .find(|h| h.name != name)
        .map(|h| h.name.clone())
        .ok_or_else(|| Error::msg("the inventory has no other control plane", None))?;
    let mut state = ClusterState::load(&options.apply.pki_root, &full.name)?;
    let (transports, executor) = (&session.transports, &session.executor);
    let dry = options.apply.dry_run;
    if !dry {
        crate::cleanup::writing();
    }
    // The node itself may be dead: the control planes that stay say which cluster this is.
    let keepers: Vec<String> =
        full.control_planes().filter(|h| h.name != name).map(|h| h.name.clone()).collect();
    use crate::workflow::REMOVE_NODE;
    session.enter(&REMOVE_NODE, "identity");
    let verified = session.block_on(apply::guard(&full, &options.apply, &keepers, transports, executor))?;
    if verified.fresh {
        return Err(Error::msg(
            format!(
                "cluster `{}` is not installed: no host carries it and {} records no host",
                full.name,
                ClusterState::path(&options.apply.pki_root, &full.name).display()
            ),
            Some("point --pki-dir at the cluster's store (the default is `pki/` beside the inventory)"),
        ));
    }

    // 0. An etcd member leaves first, through a member that stays, when the others keep a quorum.
    if host.roles.etcd {
        session.enter(&REMOVE_NODE, "etcd-member");
        let keeper = full.etcd_members().find(|h| h.name != name).expect("checked: another member").clone();
        let remaining: Vec<String> = full
            .etcd_members()
            .filter(|h| h.name != name)
            .map(|h| crate::model::url(h.internal_ip, 2379))
            .collect();
        let cmd = Command::shell(format!("{}\n{REMOVE_MEMBER}", crate::phase::install::ETCDCTL_FN))
            .arg(crate::model::url(host.internal_ip, 2380))
            .arg(remaining.join(","))
            .arg(if dry { "check" } else { "remove" })
            .sudo();
        let t = transports.get(&keeper.name).cloned().expect("transport per host");
        let out = session
            .block_on(async { crate::plan::run_checked(t.as_ref(), "remove the etcd member", &cmd).await })
            .map_err(|e| {
                Error::msg(
                    format!("{name}: the etcd member was not removed: {e}"),
                    Some("the cluster must keep a quorum without it; bring unhealthy members back first"),
                )
            })?;
        eprintln!(
            "[remove-node] {name}: etcd member {} (checked on {})",
            out.stdout_str().trim(),
            keeper.name
        );
    }

    // 1. The API side, on a control plane that stays: cordon, drain through the eviction API, delete the Node.
    let drain_secs = options.drain_timeout.as_secs().max(1).to_string();
    let timeout = format!("--timeout={drain_secs}s");
    let mut api_steps = vec![
        ("cordon", kubectl_retrying(&["cordon", &name])),
        ("drain", kubectl(&["drain", &name, "--ignore-daemonsets", "--delete-emptydir-data", &timeout])),
        ("delete the Node", kubectl_retrying(&["delete", "node", &name, "--ignore-not-found"])),
    ];
    if dry {
        for id in ["cordon", "drain", "delete-node"] {
            session.enter(&REMOVE_NODE, id);
        }
        session.say(format!("[remove-node] {first_cp}: would run (through the API, retried on transient errors but the drain):\n"));
        let shown = [
            format!("kubectl cordon {name}"),
            format!("kubectl drain {name} --ignore-daemonsets --delete-emptydir-data {timeout}"),
            format!("kubectl delete node {name}"),
        ];
        for ((what, _), cmd) in api_steps.iter().zip(shown) {
            session.say(format!("  {what}: {cmd}\n"));
        }
    } else {
        let t = transports.get(&first_cp).cloned().expect("transport per host");
        let cleanup = executor.for_cleanup();
        let run_on = |ex: &crate::exec::Executor, what: &'static str, cmd: Command| {
            let plan = vec![HostPlan { transport: t.clone(), steps: vec![Step::exec(what, cmd)] }];
            // A step that finished is done even when an interrupt came meanwhile: the next boundary stops.
            let report = session.block_on(ex.run("remove-node", plan));
            if report.failures.is_empty() {
                return Ok(());
            }
            report.into_result().map(|_| ()).map_err(Error::from)
        };
        let one = |what: &'static str, cmd: Command| run_on(executor, what, cmd);
        // Putting a node back into service is cleanup: an interrupt does not stop it.
        let uncordon = || run_on(&cleanup, "uncordon", kubectl_retrying(&["uncordon", &name]));
        let (cordon, drain, delete) = (api_steps.remove(0), api_steps.remove(0), api_steps.remove(0));
        session.boundary(&REMOVE_NODE, "cordon")?;
        // A re-run after an interrupt or a failure later on: the Node may be gone already.
        let present = session
            .block_on(crate::plan::run_checked(
                t.as_ref(),
                "look up the Node",
                &kubectl_retrying(&["get", "node", &name, "-o", "name", "--ignore-not-found"]),
            ))
            .map_err(|e| {
                Error::on_host(
                    &first_cp,
                    "looking up the Node",
                    e,
                    Some("the API must answer on a control plane that stays"),
                )
            })?;
        if present.stdout_str().trim().is_empty() {
            eprintln!("[remove-node] {name}: no Node of that name any more (deleted already): nothing to cordon or drain");
        } else if options.skip_drain {
            session.enter(&REMOVE_NODE, "delete-node");
            one(delete.0, delete.1)?;
            eprintln!("[remove-node] {name}: the machine does not answer: Node deleted without a drain (its pods are started elsewhere)");
        } else {
            session.enter(&REMOVE_NODE, "cordon");
            one(cordon.0, cordon.1)?;
            session.enter(&REMOVE_NODE, "drain");
            if let Err(e) = one(drain.0, drain.1) {
                if !options.force {
                    // The node goes back into service: nothing else was changed.
                    let back = uncordon();
                    return Err(Error::msg(
                    format!(
                        "{name}: the drain did not finish; nothing else was changed and the node is {}: {e}",
                        if back.is_ok() { "uncordoned again" } else { "still cordoned (the uncordon failed too)" }
                    ),
                    Some("fix what holds the drain (a PodDisruptionBudget, a pod without a controller), or pass --force to remove the node anyway"),
                ));
                }
                eprintln!("[remove-node] warning: the drain did not finish, going on (--force): {e}");
            }
            if let Err(stop) = session.boundary(&REMOVE_NODE, "delete-node") {
                // Stopped with the Node still there: it goes back into service (cleanup, which the
                // interrupt does not stop); a re-run cordons and drains it again.
                let back = uncordon();
                crate::cleanup::host_doing(
                    &name,
                    if back.is_ok() { "uncordoned, not removed".into() } else { "still cordoned".into() },
                );
                return Err(stop);
            }
            session.enter(&REMOVE_NODE, "delete-node");
            one(delete.0, delete.1)?;
            eprintln!("[remove-node] {name}: cordoned, drained, Node deleted");
        }
    }

    // 2. The host itself: remove everything kubeforge installed, when it can be reached.
    session.boundary(&REMOVE_NODE, "clean")?;
    session.enter(&REMOVE_NODE, "clean");
    let mut material_model = full.clone();
    let scratch = apply::scratch_for(&options.apply, &full.name)?;
    let (material, _) = session.block_on(session.prepare(
        &mut material_model,
        &loaded.inventory,
        &options.apply,
        scratch.as_ref().map(|t| t.path()),
        &verified,
    ))?;
    let ctx = Context { model: &material_model, material: &material };
    let owned = owned(&ctx, &host)?;
    let t: Arc<dyn Transport> = transports.get(&name).cloned().expect("transport per host");
    let cleaned = session.block_on(async {
        // What the host had before kubeforge (a distribution's containerd, its config) is put back, not
        // removed.
        let record = Command::shell(READ_PREEXISTING).arg(crate::phase::identity::PREEXISTING).sudo();
        let before = crate::phase::identity::Preexisting::parse(
            &crate::plan::run_checked(t.as_ref(), "read what the host had before", &record)
                .await?
                .stdout_str(),
        );
        let owned = without_preexisting(owned, &before);
        let actual = crate::plan::probe(t.as_ref(), &owned).await?;
        let changes = crate::plan::diff(&owned, &actual);
        if dry {
            session.say(format!("[remove-node] {name}: {} change(s)\n{changes}", changes.count()));
            for (u, _, _) in &before.units {
                session.say(format!("  = {u}: was there before kubeforge; put back as it was\n"));
            }
            return Ok::<_, crate::exec::StepError>(changes.count());
        }
        crate::plan::apply_changes(t.as_ref(), &changes).await?;
        let restore = Command::shell(RESTORE_PREEXISTING).arg(crate::phase::identity::PREEXISTING).sudo();
        crate::plan::run_checked(t.as_ref(), "put back what the host had before", &restore).await?;
        Ok(changes.count())
    });
    let host_report = match cleaned {
        Ok(n) => format!("{n} file(s) and unit(s) {}", if dry { "would be removed" } else { "removed" }),
        Err(e) => {
            eprintln!("[remove-node] warning: {name} could not be cleaned: {e}");
            format!("NOT cleaned ({e}); its services may still run if it comes back: run `kubeforge remove-node` again then, or wipe it")
        }
    };
    if dry {
        session.say(format!("[remove-node] {name}: {host_report}\n"));
        return Ok(0);
    }

    // 3. Forget it, then converge the rest of the cluster without it (routes, labels, the state copy).
    session.enter(&REMOVE_NODE, "forget");
    let subnet = state.pod_subnets.get(&name).cloned();
    state.forget_host(&name);
    if let (true, Some(s)) = (options.replacing, subnet) {
        // The node comes back under its name on another machine: with its pod subnet.
        state.pod_subnets.insert(name.clone(), s);
    }
    state.save(&options.apply.pki_root)?;
    if options.replacing {
        session.say(format!(
            "remove-node: {name} left cluster `{}` (its pod subnet kept); the old machine: {host_report}\n",
            full.name
        ));
        return Ok(0);
    }
    let mut rest = loaded.clone();
    rest.inventory.hosts.retain(|h| h.name != name);
    let model = ClusterModel::derive(&rest);
    let mut o = options.apply.clone();
    o.hosts = Some(Vec::new());
    o.follow_changes = true;
    session.boundary(&REMOVE_NODE, "converge")?;
    session.enter(&REMOVE_NODE, "converge");
    let code = apply::run_in(session, &rest, model, o, "remove-node")?;
    session
        .say(format!("remove-node: {name} removed from cluster `{}`; the host: {host_report}\n", full.name));
    session.say(format!(
        "remove-node: now delete `{name}` from {} (kubeforge does not edit your inventory)\n",
        inventory.display()
    ));
    Ok(code)
}

/// Removes an etcd member through one that stays: `$1` its peer URL, `$2` the remaining members' client URLs,
/// `$3` `check` or `remove`. Refuses (exit 3) when the remaining healthy members would not be a majority of
/// the remaining voting members, naming the unhealthy ones. Prints what it did.
const REMOVE_MEMBER: &str = r#"peer=$1; eps=$2; mode=$3
list=$(e member list) || { echo "cannot list the etcd members through $eps" >&2; exit 1; }
line=$(echo "$list" | awk -F', ' -v p="$peer" '$4 == p')
if [ -z "$line" ]; then echo "was not a member any more"; exit 0; fi
voting=$(echo "$list" | grep -c ', false$')
case "$line" in *", false") remaining=$((voting - 1)) ;; *) remaining=$voting ;; esac
health=$(e endpoint health 2>&1)
healthy=$(echo "$health" | grep -c 'is healthy')
need=$((remaining / 2 + 1))
if [ "$healthy" -lt "$need" ]; then
  echo "refusing: $healthy of the $remaining remaining members are healthy, $need are needed for a quorum:" >&2
  echo "$health" | grep -v 'is healthy' >&2
  exit 3
fi
if [ "$mode" = check ]; then echo "would be removed ($healthy of $remaining remaining members healthy)"; exit 0; fi
e member remove "${line%%,*}" >/dev/null && echo "removed ($healthy of $remaining remaining members healthy)""#;

/// Directories the services fill at run time (data, logs, generated state), removed by reset.
pub const RUNTIME_DIRS: &[&str] = &[
    crate::render::paths::ETCD_DATA,
    "/var/lib/kubelet",
    "/var/lib/kube-proxy",
    "/var/lib/kubeforge",
    crate::render::paths::KUBE,
    "/var/log/kubernetes",
    "/etc/cni/net.d/kubeforge",
];

/// Before the units stop: remove the pods containerd runs for the kubelet (their mounts and network
/// namespaces go with them).
const RESET_PRE: &str = r#"if [ -S /run/containerd/containerd.sock ] && command -v crictl >/dev/null 2>&1; then
  crictl --runtime-endpoint unix:///run/containerd/containerd.sock rmp -af >/dev/null 2>&1 || true
fi
true"#;

/// After the units stopped and the files went: what the services left behind. `$1` is the pod CIDR, the rest
/// the runtime directories.
const RESET_POST: &str = r#"cidr=$1; shift
for d in "$@"; do
  # Unmount what a kubelet mounted under its directory (deepest first), then remove.
  awk -v d="$d" '$2 == d || index($2, d "/") == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -rf -- "$d"
done
ip link show kf0 >/dev/null 2>&1 && ip link delete kf0 2>/dev/null
for r in $(ip route show root "$cidr" 2>/dev/null | awk '{print $1}'); do ip route del "$r" 2>/dev/null || true; done
# kube-proxy's chains go, and the jumps into them from other chains; nothing else of a table is rewritten
# (one delta per table, applied atomically with --noflush: rules others add meanwhile stay).
if command -v iptables-save >/dev/null 2>&1; then
  for t in filter nat mangle; do
    rules=$(iptables-save -t "$t" 2>/dev/null) || continue
    printf '%s\n' "$rules" | grep -q '^:KUBE-' || continue
    {
      echo "*$t"
      printf '%s\n' "$rules" | grep '^-A ' | grep -v '^-A KUBE-' | grep -e ' -j KUBE-' -e ' -g KUBE-' | sed 's/^-A /-D /'
      printf '%s\n' "$rules" | awk '/^:KUBE-/ {print "-F " substr($1, 2)}'
      printf '%s\n' "$rules" | awk '/^:KUBE-/ {print "-X " substr($1, 2)}'
      echo COMMIT
    } | iptables-restore --noflush 2>/dev/null || true
  done
fi
[ -d /opt/cni/bin ] && find /opt/cni/bin -maxdepth 1 -type l -lname '/usr/lib/cni/*' -delete 2>/dev/null
rmdir /opt/cni/bin /opt/cni /etc/cni/net.d /etc/cni 2>/dev/null
systemctl daemon-reload
true"#;

/// The check after a reset: prints `left: WHAT` for anything kubeforge made that is still there. `$1` the pod
/// CIDR, then the owned files, `--`, the owned units, `--`, the runtime directories.
const RESET_CHECK: &str = r#"cidr=$1; shift
while [ $# -gt 0 ] && [ "$1" != "--" ]; do [ -e "$1" ] || [ -L "$1" ] && echo "left: file $1"; shift; done; shift
while [ $# -gt 0 ] && [ "$1" != "--" ]; do
  a=$(systemctl is-active "$1" 2>/dev/null); [ "$a" = active ] || [ "$a" = activating ] && echo "left: unit $1 is $a"; shift
done; shift
for d in "$@"; do [ -e "$d" ] && echo "left: directory $d"; done
awk '$2 ~ "^/var/lib/kubelet" {print "left: mount " $2}' /proc/mounts
ip link show kf0 >/dev/null 2>&1 && echo "left: interface kf0"
ip route show root "$cidr" 2>/dev/null | awk '{print "left: route " $1}'
command -v iptables-save >/dev/null 2>&1 && iptables-save 2>/dev/null | grep -q '^:KUBE-' && echo "left: iptables KUBE-* chains"
true"#;

/// Reads the record of what a host had before kubeforge (empty when there is none).
const READ_PREEXISTING: &str = r#"[ -f "$1" ] && cat -- "$1"; true"#;

/// Puts back what a host had before kubeforge first touched it (`$1`: the record): replaced files from
/// their `.kubeforge-orig` copies, then each unit that existed as it was enabled and running.
const RESTORE_PREEXISTING: &str = r#"p=$1
[ -f "$p" ] || exit 0
while read -r kind a b c; do
  [ "$kind" = file ] && [ -f "$a.kubeforge-orig" ] && mv -f -- "$a.kubeforge-orig" "$a"
done < "$p"
systemctl daemon-reload
while read -r kind a b c; do
  [ "$kind" = unit ] || continue
  case "$b" in enabled) systemctl enable -- "$a" >/dev/null 2>&1 ;; disabled) systemctl disable -- "$a" >/dev/null 2>&1 ;; esac
  case "$c" in active) systemctl restart -- "$a" ;; *) systemctl stop -- "$a" 2>/dev/null ;; esac
done < "$p"
rm -f -- "$p"
true"#;

/// The owned state less what the host had before kubeforge: those units are not disabled (they are put
/// back as they were), those files not deleted (their originals return).
pub fn without_preexisting(
    mut owned: HostDesired,
    before: &crate::phase::identity::Preexisting,
) -> HostDesired {
    owned.absent_units.retain(|u| !before.has_unit(u));
    owned.absent_files.retain(|f| !before.files.contains(f));
    owned
}

/// Why hosts must not be reset: a host that carries another cluster (or another CA), or nothing of this
/// cluster, and an etcd member whose cluster stays (it must leave through `remove-node`).
pub fn reset_refusals(
    model: &ClusterModel,
    local: &crate::identity::Local,
    found: &[(String, crate::identity::Remote)],
    targets: &[String],
) -> Vec<String> {
    let mut out = Vec::new();
    for (host, r) in found {
        match (&r.marker, &r.ca) {
            (Some(Ok(m)), _) if m.cluster != model.name => {
                out.push(format!("`{host}` belongs to cluster `{}`, not `{}`", m.cluster, model.name))
            }
            (Some(Ok(m)), _) if local.ca.as_ref().is_some_and(|ca| *ca != m.ca_sha256) => out.push(format!(
                "`{host}` runs a cluster whose CA is {}, not this store's {}",
                m.ca_sha256,
                local.ca.as_ref().expect("checked")
            )),
            (Some(Ok(_)), _) => {}
            (Some(Err(why)), _) => out.push(format!(
                "`{host}`: {} is not a kubeforge marker ({why})",
                crate::identity::MARKER_PATH
            )),
            (None, Some(ca)) if local.ca.as_ref() == Some(ca) => {}
            (None, Some(ca)) => out.push(format!(
                "`{host}` runs a cluster kubeforge did not mark (CA {ca} at {}): another tool's cluster",
                crate::identity::HOST_CA_PATH
            )),
            // Nothing of any cluster, and the state does not record it: reset already (an interrupted or
            // repeated reset) or never installed; `reset_skips` leaves it out.
            (None, None) if !local.installed.contains(host) => {}
            (None, None) => out.push(format!(
                "`{host}` carries nothing of cluster `{}` (no {}), yet the cluster state records it: is the inventory's address right?",
                model.name,
                crate::identity::MARKER_PATH
            )),
        }
    }
    let members: Vec<&str> = model.etcd_members().map(|h| h.name.as_str()).collect();
    let staying: Vec<&str> = members.iter().copied().filter(|m| !targets.iter().any(|t| t == m)).collect();
    if !staying.is_empty() {
        for t in targets.iter().filter(|t| members.contains(&t.as_str())) {
            out.push(format!(
                "`{t}` is a member of the etcd cluster that stays ({}): its data would go without `member remove`; use `kubeforge remove-node {t}`",
                staying.join(", ")
            ));
        }
    }
    out
}

/// The hosts a reset leaves out (without `--force`): no marker, no cluster CA, and not in the cluster
/// state, so nothing of the cluster is there to remove (reset already, or never installed).
pub fn reset_skips(
    local: &crate::identity::Local,
    found: &[(String, crate::identity::Remote)],
) -> Vec<String> {
    found
        .iter()
        .filter(|(h, r)| r.marker.is_none() && r.ca.is_none() && !local.installed.contains(h))
        .map(|(h, _)| h.clone())
        .collect()
}

/// Options of `kubeforge reset`.
#[derive(Debug, Clone)]
pub struct ResetOptions {
    /// Preview (`--dry-run`), go ahead (`--yes`), or preview then ask.
    pub consent: crate::prompt::Consent,
    /// Reset hosts that do not carry this cluster's marker, and etcd members whose cluster stays.
    pub force: bool,
    /// Everything else (hosts, PKI root, cache, SSH options).
    pub apply: ApplyOptions,
}

/// One reset pass over `targets`: with `remove` false it only reads and reports what would go; the
/// per-host text is returned sorted by host.
fn reset_pass(
    session: &crate::session::Session,
    ctx: &Context<'_>,
    targets: &[String],
    remove: bool,
) -> Result<(crate::exec::PhaseReport, Vec<(String, String)>)> {
    let pod_cidr = ctx.model.pod_cidr.to_string();
    let mut plans = Vec::new();
    let reports: Arc<std::sync::Mutex<Vec<(String, String)>>> = Default::default();
    for name in targets {
        let host = ctx.model.host(name).expect("checked").clone();
        let owned = owned(ctx, &host)?;
        let (cidr, out) = (pod_cidr.clone(), reports.clone());
        let hostname = name.clone();
        let step = Step::custom("reset", move |t: &dyn Transport| {
            Box::pin(async move {
                let record = Command::shell(READ_PREEXISTING).arg(crate::phase::identity::PREEXISTING).sudo();
                let before = crate::phase::identity::Preexisting::parse(
                    &crate::plan::run_checked(t, "read what the host had before", &record)
                        .await?
                        .stdout_str(),
                );
                let owned = without_preexisting(owned, &before);
                let actual = crate::plan::probe(t, &owned).await?;
                let changes = crate::plan::diff(&owned, &actual);
                let dirs: Vec<String> = RUNTIME_DIRS.iter().map(|d| d.to_string()).collect();
                if !remove {
                    let mut text = format!("{changes}");
                    for d in &dirs {
                        text.push_str(&format!("  - {d}/ (data)\n"));
                    }
                    text.push_str("  - the kubelet's pods in containerd, the kf0 bridge, routes to pod subnets, KUBE-* iptables chains\n");
                    for (u, e, a) in &before.units {
                        text.push_str(&format!(
                            "  = {u}: was there before kubeforge; kept, left {e} and {a}\n"
                        ));
                    }
                    for f in &before.files {
                        text.push_str(&format!("  = {f}: put back as it was before kubeforge\n"));
                    }
                    out.lock().expect("lock").push((hostname, text));
                    return Ok(false);
                }
                crate::plan::run_checked(t, "remove pods", &Command::shell(RESET_PRE).sudo()).await?;
                crate::plan::apply_changes(t, &changes).await?;
                let restore =
                    Command::shell(RESTORE_PREEXISTING).arg(crate::phase::identity::PREEXISTING).sudo();
                crate::plan::run_checked(t, "put back what the host had before", &restore).await?;
                let post = Command::shell(RESET_POST).arg(cidr.clone()).args(dirs.iter().cloned()).sudo();
                crate::plan::run_checked(t, "remove runtime data", &post).await?;
                let check = Command::shell(RESET_CHECK)
                    .arg(cidr)
                    .args(owned.absent_files.iter().cloned())
                    .arg("--")
                    .args(owned.absent_units.iter().cloned())
                    .arg("--")
                    .args(dirs);
                let left = crate::plan::run_checked(t, "check the host is clean", &check.sudo()).await?;
                out.lock().expect("lock").push((hostname, left.stdout_str()));
                Ok(true)
            })
        });
        plans.push(HostPlan { transport: session.transport(name)?, steps: vec![step] });
    }
    if remove {
        crate::cleanup::writing();
    }
    let report = session.block_on(session.executor.run("reset", plans));
    let mut reports = reports.lock().expect("lock").clone();
    reports.sort();
    Ok((report, reports))
}

/// `kubeforge reset`.
pub fn reset(inventory: &Path, options: ResetOptions) -> Result<i32> {
    let session = crate::session::Session::open(inventory, options.apply.clone())?;
    reset_in(&session, options)
}

/// [`reset`] in a session (fake transports in tests).
pub fn reset_in(session: &crate::session::Session, options: ResetOptions) -> Result<i32> {
    use crate::prompt::Consent;
    let (loaded, transports, executor) = (&session.loaded, &session.transports, &session.executor);
    let mut model = session.model();
    let targets: Vec<String> =
        crate::selector::names(&loaded.inventory.hosts, options.apply.hosts.as_deref())?
            .unwrap_or_else(|| model.hosts.iter().map(|h| h.name.clone()).collect());
    use crate::workflow::RESET;
    // Which cluster each host carries, before anything is decided: a reset touches only this cluster's.
    session.enter(&RESET, "identity");
    let local = crate::identity::Local::read(&options.apply.pki_root, &model.name)?;
    let found = session.block_on(crate::identity::read_hosts(&targets, transports, executor))?;
    let refused = reset_refusals(&model, &local, &found, &targets);
    if !refused.is_empty() && !options.force {
        return Err(Error::msg(
            format!("refusing to reset:\n  {}", refused.join("\n  ")),
            Some("check the inventory's addresses; `--force` resets these hosts anyway (it removes what kubeforge would install there)"),
        ));
    }
    for r in &refused {
        eprintln!("[reset] warning (--force): {r}");
    }
    let skipped = if options.force { Vec::new() } else { reset_skips(&local, &found) };
    for h in &skipped {
        eprintln!(
            "[reset] {h}: carries nothing of cluster `{}` and the state does not record it (reset already, or never installed): left out; `--force` resets it anyway",
            model.name
        );
    }
    let targets: Vec<String> = targets.into_iter().filter(|t| !skipped.contains(t)).collect();
    if targets.is_empty() {
        session.say(format!("reset: nothing to do: no selected host carries cluster `{}`\n", model.name));
        return Ok(0);
    }
    let verified = crate::identity::Verified {
        uid: local.uid.clone().unwrap_or_else(|| "unrecorded".into()),
        fresh: true,
        adopted: Vec::new(),
    };
    // The owned list needs the material the phases read; it is made in a scratch copy of the store (new
    // keys there are thrown away), so a reset never creates a CA for a cluster that has none.
    session.enter(&RESET, "material");
    let scratch = apply::Scratch::new(&options.apply.pki_root, &model.name)?;
    let mut apply_options = options.apply.clone();
    apply_options.hosts = Some(targets.clone());
    let (material, _) = session.block_on(session.prepare(
        &mut model,
        &loaded.inventory,
        &apply_options,
        Some(scratch.path()),
        &verified,
    ))?;
    let ctx = Context { model: &model, material: &material };
    if options.consent != Consent::Given {
        session.enter(&RESET, "preview");
        let (report, reports) = reset_pass(session, &ctx, &targets, false)?;
        for (host, text) in &reports {
            session.say(format!("[reset] {host}: would remove\n{text}"));
        }
        report.into_result()?;
        let question = format!("Remove all of this from {} host(s)?", reports.len());
        if options.consent == Consent::Preview {
            session.say("reset --dry-run: nothing was changed; run with --yes to remove it\n");
            return Ok(0);
        }
        session.enter(&RESET, "confirm");
        if !crate::prompt::ask(&question)? {
            session.say("reset: nothing was changed\n");
            return Ok(0);
        }
    }
    session.enter(&RESET, "remove");
    let (report, reports) = reset_pass(session, &ctx, &targets, true)?;
    drop(scratch);
    let mut unclean = 0;
    for (host, text) in &reports {
        if text.trim().is_empty() {
            session.say(format!("[reset] {host}: clean\n"));
        } else {
            unclean += 1;
            session.say(format!("[reset] {host}: NOT clean:\n{text}"));
        }
    }
    let failed = report.failures.len();
    session.enter(&RESET, "state");
    let mut state = ClusterState::load(&options.apply.pki_root, &model.name)?;
    for (host, _) in &reports {
        state.forget_host(host);
    }
    if state.hosts.is_empty() {
        let path = ClusterState::path(&options.apply.pki_root, &model.name);
        if path.exists() {
            std::fs::remove_file(&path).map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
        }
    } else {
        state.save(&options.apply.pki_root)?;
    }
    report.into_result()?;
    session.say(format!("reset: {} host(s) reset, {unclean} not clean, {failed} failed\n", reports.len()));
    Ok(if unclean > 0 { 1 } else { 0 })
}

/// `kubeforge state pull`: fetches the state copy from every control plane of the inventory, takes the
/// one most hold, and writes it to `pki/<cluster>/state.json` (a different local file is kept as
/// `state.json.before-pull`).
pub fn state_pull(inventory: &Path, options: &crate::apply::ApplyOptions) -> crate::Result<i32> {
    use crate::state::{consensus, FILE, REMOTE_PATH};
    let session = crate::session::Session::open(inventory, options.clone())?;
    let model = session.model();
    let cps: Vec<String> = model.control_planes().map(|h| h.name.clone()).collect();
    let results = session.block_on(session.executor.each(&cps, |h| {
        let t = session.transports.get(h).cloned().expect("transport per host");
        async move { t.read_file(REMOTE_PATH, true, 16 << 20).await }
    }));
    let mut copies = Vec::new();
    for (h, r) in cps.iter().zip(results) {
        match r.map_err(|e| e.to_string()).and_then(|b| {
            ClusterState::parse(Path::new(REMOTE_PATH), &b).map(|st| (st, b)).map_err(|e| e.to_string())
        }) {
            Ok((st, b)) if st.cluster == model.name => copies.push((h.clone(), b)),
            Ok((st, _)) => eprintln!(
                "[state] {h}: its copy is of cluster `{}`, not `{}`: ignored",
                st.cluster, model.name
            ),
            Err(e) => eprintln!("[state] {h}: no usable copy: {e}"),
        }
    }
    let Some((best, others)) = consensus(&copies) else {
        return Err(Error::msg(
            format!("no control plane of {} has a usable copy of the cluster state", inventory.display()),
            Some(
                "check the control planes are reachable (`kubeforge check`) and were installed by kubeforge",
            ),
        ));
    };
    let state = ClusterState::parse(Path::new(REMOTE_PATH), &best)?;
    let holders: Vec<&str> = copies.iter().filter(|(_, c)| *c == best).map(|(h, _)| h.as_str()).collect();
    if !others.is_empty() {
        eprintln!(
            "[state] {} hold(s) another copy (a run that could not reach them); the copy of {} is used",
            others.join(", "),
            holders.join(", ")
        );
    }
    let path = ClusterState::path(&options.pki_root, &model.name);
    let local = std::fs::read(&path).ok();
    if local.as_deref() == Some(&state.to_json()[..]) {
        println!("state: {} already matches the control planes ({})", path.display(), holders.join(", "));
        return Ok(0);
    }
    if local.is_some() {
        let kept = path.with_file_name(format!("{FILE}.before-pull"));
        std::fs::rename(&path, &kept).map_err(|e| Error::io(format!("keeping {}", kept.display()), e))?;
        eprintln!("[state] the previous local state is kept as {}", kept.display());
    }
    state.save(&options.pki_root)?;
    if !options.pki_root.join(&model.name).join("ca.key").exists() {
        eprintln!(
            "[state] note: {} has no CA key: copy the PKI store from the other admin machine before changing the cluster",
            options.pki_root.join(&model.name).display()
        );
    }
    println!(
        "state: {} written from {} ({} host(s), {} etcd member(s))",
        path.display(),
        holders.join(", "),
        state.hosts.len(),
        state.etcd_members.len()
    );
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(text: &str) -> ClusterModel {
        ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), text).unwrap())
    }

    const INV: &str = "cluster: {name: c, kubernetesVersion: v1.35.7}\nhosts:\n\
        - {name: cp1, address: 10.0.0.1, roles: [control-plane, etcd]}\n\
        - {name: w1, address: 10.0.0.2, roles: [worker]}\n\
        - {name: w2, address: 10.0.0.3, roles: [worker]}\n\
        - {name: cp2, address: 10.0.0.4, roles: [control-plane, etcd]}\n";

    /// The stale-learner script, run by a real shell against a fake etcdctl: it removes the learner and the
    /// unstarted member among the joining peers, and leaves voting members and other hosts alone.
    #[test]
    fn a_failed_join_removes_its_learners_and_unstarted_members() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("etcdctl");
        let log = dir.path().join("calls");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\nfor a; do last2=\"$last1\"; last1=\"$a\"; done\necho \"$*\" >> {log}\n\
                 case \"$*\" in *'member list') cat <<'L'\n\
                 a1, started, cp1, https://10.0.0.1:2380, https://10.0.0.1:2379, false\n\
                 b2, started, cp2, https://10.0.0.4:2380, https://10.0.0.4:2379, true\n\
                 c3, unstarted, , https://10.0.0.5:2380, , true\n\
                 d4, started, cp4, https://10.0.0.6:2380, https://10.0.0.6:2379, false\n\
                 L\n;; esac\n",
                log = log.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let peers: Vec<String> = ["10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.9"]
            .iter()
            .map(|ip| format!("https://{ip}:2380"))
            .collect();
        let argv = stale_learners_command("https://10.0.0.1:2379", &peers).argv();
        let argv: Vec<String> =
            argv.iter().map(|a| a.replace("/usr/local/bin/etcdctl", fake.to_str().unwrap())).collect();
        let out = std::process::Command::new(&argv[0]).args(&argv[1..]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "https://10.0.0.4:2380\nhttps://10.0.0.5:2380\n");
        let calls = std::fs::read_to_string(&log).unwrap();
        assert!(calls.contains("--endpoints=https://10.0.0.1:2379"), "{calls}");
        let removed: Vec<&str> = calls.lines().filter_map(|l| l.split("member remove ").nth(1)).collect();
        assert_eq!(removed, ["b2", "c3"], "{calls}");
    }

    #[test]
    fn join_finds_the_hosts_the_state_does_not_know() {
        let m = model(INV);
        let mut st = ClusterState::default();
        let e = hosts_to_join(&m, &st, None).unwrap_err();
        assert!(e.to_string().contains("no record of cluster `c`"), "{e}");
        st.record_hosts(&m, ["cp1", "w1", "cp2"]);
        assert_eq!(hosts_to_join(&m, &st, None).unwrap(), ["w2"]);
        st.record_hosts(&m, ["w2"]);
        assert!(hosts_to_join(&m, &st, None).unwrap().is_empty());
        st.forget_host("cp2");
        assert_eq!(hosts_to_join(&m, &st, None).unwrap(), ["cp2"]);
    }
}
