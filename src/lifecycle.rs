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
//! Control planes and etcd members are refused for now with a clear message: their join needs the etcd
//! learner flow and their removal the quorum-safe `member remove`.

use crate::apply::{self, ApplyOptions};
use crate::exec::{Executor, HostPlan, Step};
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
    let refused: Vec<String> = new
        .iter()
        .filter_map(|n| model.host(n))
        .filter(|h| h.roles.control_plane || h.roles.etcd)
        .map(|h| h.name.clone())
        .collect();
    if !refused.is_empty() {
        return Err(Error::msg(
            format!("{}: joining control planes and etcd members is not supported yet", refused.join(", ")),
            Some("join workers; control planes and etcd members need the etcd learner flow, which is not built yet"),
        ));
    }
    Ok(new)
}

/// `kubeforge join`: installs the new hosts and converges what their arrival changes elsewhere.
pub fn join(inventory: &Path, mut options: ApplyOptions) -> Result<i32> {
    let loaded = crate::inventory::load(inventory)?;
    let model = ClusterModel::derive(&loaded);
    let state = ClusterState::load(&options.pki_root, &model.name)?;
    let new = hosts_to_join(&model, &state, options.hosts.as_deref())?;
    if new.is_empty() {
        println!("join: nothing to join: every host of the inventory is part of cluster `{}`", model.name);
        return Ok(0);
    }
    eprintln!("[join] joining {}", new.join(", "));
    options.hosts = Some(new);
    options.follow_changes = true;
    apply::run_loaded(&loaded, model, options, "join")
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

fn kubectl(args: &[&str]) -> Command {
    Command::new("kubectl")
        .args(["--kubeconfig", "/etc/kubernetes/admin.conf"])
        .args(args.iter().copied())
        .sudo()
}

/// `kubeforge remove-node`.
pub fn remove_node(inventory: &Path, options: RemoveOptions) -> Result<i32> {
    let loaded = crate::inventory::load(inventory)?;
    let full = ClusterModel::derive(&loaded);
    let name = options.node.clone();
    let host = full.host(&name).cloned().ok_or_else(|| {
        Error::msg(
            format!("`{name}` is not in the inventory"),
            Some("remove-node needs the node's entry (its SSH address) to clean it; remove it from the inventory afterwards"),
        )
    })?;
    if host.roles.control_plane || host.roles.etcd {
        return Err(Error::msg(
            format!("{name} is a control plane or etcd member: removing those is not supported yet"),
            Some("remove workers; control planes and etcd members need the quorum-safe etcd member removal, which is not built yet"),
        ));
    }
    let first_cp = full
        .control_planes()
        .next()
        .map(|h| h.name.clone())
        .ok_or_else(|| Error::msg("the inventory has no control plane", None))?;
    let mut state = ClusterState::load(&options.apply.pki_root, &full.name)?;
    let rt = tokio::runtime::Runtime::new().map_err(|e| Error::io("starting the async runtime", e))?;
    let transports = apply::transports(&loaded, &options.apply.connect)?;
    let executor = Executor::new(options.apply.concurrency, crate::report::auto(false));
    let dry = options.apply.dry_run;

    // 1. The API side, on the first control plane: cordon, drain through the eviction API, delete the Node.
    let drain_secs = options.drain_timeout.as_secs().max(1).to_string();
    let timeout = format!("--timeout={drain_secs}s");
    let mut api_steps = vec![
        ("cordon", kubectl(&["cordon", &name])),
        ("drain", kubectl(&["drain", &name, "--ignore-daemonsets", "--delete-emptydir-data", &timeout])),
        ("delete the Node", kubectl(&["delete", "node", &name, "--ignore-not-found"])),
    ];
    if dry {
        println!("[remove-node] {first_cp}: would run:");
        for (what, c) in &api_steps {
            println!("  {what}: {c}");
        }
    } else {
        let t = transports.get(&first_cp).cloned().expect("transport per host");
        let drain = api_steps.remove(1);
        let result = rt.block_on(async {
            let mut r = executor
                .run(
                    "remove-node",
                    vec![HostPlan {
                        transport: t.clone(),
                        steps: vec![Step::exec(api_steps[0].0, api_steps[0].1.clone())],
                    }],
                )
                .await
                .into_result();
            if r.is_ok() {
                let d = executor
                    .run(
                        "remove-node",
                        vec![HostPlan { transport: t.clone(), steps: vec![Step::exec(drain.0, drain.1)] }],
                    )
                    .await;
                if let Err(e) = d.into_result() {
                    if !options.force {
                        return Err(Error::from(e));
                    }
                    eprintln!("[remove-node] warning: the drain did not finish, going on (--force): {e}");
                }
                r = executor
                    .run(
                        "remove-node",
                        vec![HostPlan {
                            transport: t,
                            steps: vec![Step::exec(api_steps[1].0, api_steps[1].1.clone())],
                        }],
                    )
                    .await
                    .into_result();
            }
            r.map(|_| ()).map_err(Error::from)
        });
        result?;
        eprintln!("[remove-node] {name}: cordoned, drained, Node deleted");
    }

    // 2. The host itself: remove everything kubeforge installed, when it can be reached.
    let mut material_model = full.clone();
    let scratch = apply::scratch_for(&options.apply, &full.name)?;
    let (material, _) = rt.block_on(apply::prepare(
        &loaded,
        &mut material_model,
        &options.apply,
        scratch.as_ref().map(|t| t.path()),
    ))?;
    let ctx = Context { model: &material_model, material: &material };
    let owned = owned(&ctx, &host)?;
    let t: Arc<dyn Transport> = transports.get(&name).cloned().expect("transport per host");
    let cleaned = rt.block_on(async {
        let actual = crate::plan::probe(t.as_ref(), &owned).await?;
        let changes = crate::plan::diff(&owned, &actual);
        if dry {
            print!("[remove-node] {name}: {} change(s)\n{changes}", changes.count());
            return Ok::<_, crate::exec::StepError>(changes.count());
        }
        crate::plan::apply_changes(t.as_ref(), &changes).await?;
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
        println!("[remove-node] {name}: {host_report}");
        return Ok(0);
    }

    // 3. Forget it, then converge the rest of the cluster without it (routes, labels, the state copy).
    state.forget_host(&name);
    state.save(&options.apply.pki_root)?;
    let mut rest = loaded.clone();
    rest.inventory.hosts.retain(|h| h.name != name);
    let model = ClusterModel::derive(&rest);
    let mut o = options.apply.clone();
    o.hosts = Some(Vec::new());
    o.follow_changes = true;
    let code = apply::run_loaded(&rest, model, o, "remove-node")?;
    println!("remove-node: {name} removed from cluster `{}`; the host: {host_report}", full.name);
    println!(
        "remove-node: now delete `{name}` from {} (kubeforge does not edit your inventory)",
        inventory.display()
    );
    Ok(code)
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

    #[test]
    fn join_finds_the_hosts_the_state_does_not_know_and_refuses_control_planes_for_now() {
        let m = model(INV);
        let mut st = ClusterState::default();
        let e = hosts_to_join(&m, &st, None).unwrap_err();
        assert!(e.to_string().contains("no record of cluster `c`"), "{e}");
        st.record_hosts(&m, ["cp1", "w1", "cp2"]);
        assert_eq!(hosts_to_join(&m, &st, None).unwrap(), ["w2"]);
        st.record_hosts(&m, ["w2"]);
        assert!(hosts_to_join(&m, &st, None).unwrap().is_empty());
        st.forget_host("cp2");
        let e = hosts_to_join(&m, &st, None).unwrap_err();
        assert!(
            e.to_string().contains("cp2: joining control planes and etcd members is not supported yet"),
            "{e}"
        );
    }
}
