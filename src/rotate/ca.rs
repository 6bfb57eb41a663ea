//! `kubeforge rotate ca`: new cluster, etcd and front-proxy CAs (or those `--only` names) with the API up the
//! whole time, as the stages of [`crate::workflow::ROTATE_CA`] on one [`Session`].
//!
//! The CAs and the rotation's record live in the PKI store ([`crate::pki::rotation`]): the record (per CA
//! the old and the new certificate and key, and the step) is written before each step is rolled out, and
//! what every path renders for the hosts (`apply` too: trust files, kubeconfigs, the balancers' CA, leaves,
//! markers) follows it. A step is rolled out by the apply engine itself, on the phases that carry PKI
//! (`identity` for the marker, `etcd`, `control-plane`, `api-endpoint`, `nodes`), host by host in the
//! upgrade's spirit: control planes one at a time, then etcd-only members one at a time, then workers; each
//! followed by a gate through another control plane (every apiserver ready, every etcd member healthy). The
//! steps:
//! 1. `trust-both`: every trust file and kubeconfig holds the old and the new CA, the old one first (it
//!    still signs);
//! 2. `issue`: every leaf and kubeconfig is re-issued by the new CA (the store's signer follows the record),
//!    the new CA listed first (the controller-manager signs with it), the markers take the new cluster CA;
//! 3. `distrust`: the new CA alone; then the store switches to the new CAs (the old ones kept in
//!    `secrets/retired/`), removing the record last.
//!
//! Users' kubeconfigs issued under the old cluster CA (`kubeforge kubeconfig user`, recorded in the ledger)
//! stop working: from `issue` their CA data (the old CA alone) does not verify the re-issued apiserver
//! certificates, and at `distrust` their client certificates are refused. The preview and the question name
//! them, and the end prints the command that issues a new one for each; nothing is issued for them.

use super::{RotateOptions, Rotator};
use crate::model::ClusterModel;
use crate::pki::rotation::{self, CaRotation, CaStep};
use crate::pki::spec::CaId;
use crate::pki::users::LedgerEntry;
use crate::prompt::Consent;
use crate::session::Session;
use crate::workflow::ROTATE_CA as WF;
use crate::{Error, Result};
use std::time::Instant;

/// A CA `rotate ca --only` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum CaChoice {
    /// The cluster CA (`ca`): apiservers, every client of the apiserver, kubelets, users' kubeconfigs.
    Cluster,
    /// The etcd CA (`etcd/ca`): etcd server, peer and client certificates.
    Etcd,
    /// The front-proxy CA (`front-proxy-ca`): the aggregation layer's client certificate.
    FrontProxy,
}

impl CaChoice {
    /// The store's CA it names.
    pub fn id(self) -> CaId {
        match self {
            CaChoice::Cluster => CaId::Cluster,
            CaChoice::Etcd => CaId::Etcd,
            CaChoice::FrontProxy => CaId::FrontProxy,
        }
    }
}

/// What a step may change on a host: certificates, keys, kubeconfigs, CA files, the balancer's CA and the
/// identity marker (the phases' converged markers always follow their digests).
const CA_FILES: &[&str] = &[
    "/etc/kubernetes/pki/",
    "/var/lib/kubelet/pki/",
    "/etc/kubernetes/admin.conf",
    "/etc/kubernetes/controller-manager.conf",
    "/etc/kubernetes/scheduler.conf",
    "/etc/kubernetes/kubelet.conf",
    "/etc/kubernetes/kube-proxy.conf",
    crate::render::API_LB_CA,
    crate::identity::MARKER_PATH,
];

/// The apply phases that carry PKI material.
const CA_PHASES: &[&str] = &[crate::phase::identity::ID, "etcd", "control-plane", "api-endpoint", "nodes"];

/// How a refusal names [`CA_FILES`].
const CA_MATERIAL: &str =
    "its PKI material (certificates, keys, kubeconfigs, CA files, the balancer's CA, the cluster marker)";

/// How a run ended.
enum Outcome {
    /// `--dry-run`.
    Previewed,
    /// The rotation finished: per CA its name, old and new fingerprint and where the old one is kept; the
    /// users whose kubeconfigs the old cluster CA issued.
    Finished { cas: Vec<(String, String, String, String)>, users: Vec<LedgerEntry> },
}

/// `kubeforge rotate ca` in a session (fake transports in tests): the CAs `cas` (all three when empty; a
/// recorded rotation goes on with the CAs it records).
pub fn ca_in(session: &Session, options: &RotateOptions, cas: &[CaChoice]) -> Result<i32> {
    let model = session.model();
    let started = Instant::now();
    let result = session.block_on(run_stages(session, &model, options, cas));
    eprint!("{}", crate::apply::host_stats(&session.transports));
    if let Outcome::Finished { cas, users } = result? {
        let mut text = format!("rotate ca: {} now trusts and signs with its new CAs alone\n", model.name);
        for (name, old, new, retired) in &cas {
            text.push_str(&format!(
                "  {name}: {} → {}; the old CA kept in {retired}\n",
                short(old),
                short(new)
            ));
        }
        if cas.iter().any(|(name, ..)| name == CaId::Cluster.name()) {
            text.push_str(&reissue_lines(session, &users));
        }
        text.push_str(&format!("  wall time {:.0}s\n", started.elapsed().as_secs_f64()));
        session.say(text);
    }
    Ok(0)
}

/// `sha256:` and the first 16 hex digits of a fingerprint.
fn short(fp: &str) -> String {
    let hex = fp.trim_start_matches("sha256:");
    format!("sha256:{}…", hex.get(..16).unwrap_or(hex))
}

/// The end's lines on the admin's and the users' kubeconfigs after a cluster CA rotation: the command that
/// issues each a new one (nothing is issued here).
fn reissue_lines(session: &Session, users: &[LedgerEntry]) -> String {
    let inv = session.loaded.path.display();
    let admin = format!(
        "  a copy of the admin kubeconfig taken before the rotation no longer works: `kubeforge kubeconfig admin -i {inv} --merge` writes the new one\n"
    );
    if users.is_empty() {
        return format!("{admin}  users' kubeconfigs issued under the old cluster CA: none\n");
    }
    let mut s = admin;
    s.push_str(&format!(
        "  users' kubeconfigs issued under the old cluster CA no longer work ({}); issue new ones with:\n",
        users.len()
    ));
    let mut seen = std::collections::BTreeSet::new();
    for u in users.iter().filter(|u| seen.insert((u.user.clone(), u.groups.clone()))) {
        let groups: String = u.groups.iter().map(|g| format!(" --group {g}")).collect();
        s.push_str(&format!(
            "    kubeforge kubeconfig user -i {inv} --user {}{groups} --out {}.conf\n",
            u.user, u.user
        ));
    }
    s
}

/// The ledger's users whose certificates the old cluster CA of `rotation` signed and that have not expired
/// at `now` (seconds since the epoch): their kubeconfigs stop working. Empty when the rotation keeps the
/// cluster CA.
fn old_ca_users(
    store: &crate::pki::store::Store,
    rotation: &CaRotation,
    now: i64,
) -> Result<Vec<LedgerEntry>> {
    let Some(pair) = rotation.pair(CaId::Cluster) else { return Ok(Vec::new()) };
    let mut users = Vec::new();
    for e in crate::pki::users::read_ledger(store)? {
        let expires = time::OffsetDateTime::parse(&e.expires, &time::format_description::well_known::Rfc3339)
            .map(|t| t.unix_timestamp())
            .unwrap_or(i64::MAX);
        if expires <= now {
            continue;
        }
        // The copy kept at issue; a ledger entry without one is counted (it may be out there).
        let signed_by_old = match store.read(&format!("users/{}/{}.crt", e.user, e.serial)) {
            Ok(cert) => crate::pki::store::signed_by(&cert, pair.old_cert.as_bytes()),
            Err(_) => true,
        };
        if signed_by_old {
            users.push(e);
        }
    }
    Ok(users)
}

/// The preview's line on users' kubeconfigs.
fn users_line(rotation: &CaRotation, users: &[LedgerEntry]) -> String {
    if rotation.pair(CaId::Cluster).is_none() {
        return "users' kubeconfigs: not touched (the cluster CA is not rotated)".into();
    }
    if users.is_empty() {
        return "users' kubeconfigs the old cluster CA issued (ledger.json): none".into();
    }
    let names: Vec<String> = users.iter().map(|u| format!("{} (serial {})", u.user, u.serial)).collect();
    format!(
        "users' kubeconfigs the old cluster CA issued (ledger.json): {} — {} — STOP WORKING: from issue their CA data does not verify the re-issued apiserver certificates, from distrust their certificates are refused; issue new ones after the rotation (`kubeforge kubeconfig user`)",
        users.len(),
        names.join(", ")
    )
}

/// The hosts in rollout order, in batches: control planes one at a time, then etcd-only members one at a
/// time, then the other hosts (workers) one at a time.
fn rollout(model: &ClusterModel) -> Vec<Vec<String>> {
    let cps = model.control_planes().map(|h| vec![h.name.clone()]);
    let etcd_only = model.etcd_members().filter(|h| !h.roles.control_plane).map(|h| vec![h.name.clone()]);
    let rest =
        model.hosts.iter().filter(|h| !h.roles.control_plane && !h.roles.etcd).map(|h| vec![h.name.clone()]);
    cps.chain(etcd_only).chain(rest).collect()
}

/// Records `rotation` at `step`, then rolls that step out to every host in rollout order, each batch gated.
async fn roll_out(
    r: &Rotator<'_>,
    rotation: &mut CaRotation,
    step: CaStep,
    batches: &[Vec<String>],
) -> Result<()> {
    let stage = step.name();
    // An interrupt between two steps stops before the next step is recorded.
    r.session.boundary(&WF, stage)?;
    rotation.step = step;
    rotation::record(&r.store, rotation)?;
    r.session.enter(&WF, stage);
    eprintln!(
        "[rotate] {stage}: {}",
        match step {
            CaStep::TrustBoth =>
                "every trust file and kubeconfig holds the old and the new CA, the old one signs",
            CaStep::Issue => "every leaf re-issued by the new CA, both trusted",
            CaStep::Distrust => "the new CA alone",
        }
    );
    r.each_batch(&WF, stage, batches).await
}

/// The preview's lines on each CA: name, old → new fingerprint (`a new CA` when a dry run before any
/// rotation made one only to show it).
fn ca_lines(rotation: &CaRotation, show_new: bool) -> Vec<String> {
    rotation
        .cas
        .iter()
        .map(|(name, p)| {
            let new = if show_new { short(&rotation::fingerprint(&p.new_cert)) } else { "a new CA".into() };
            format!("{name}: {} → {new}", short(&rotation::fingerprint(&p.old_cert)))
        })
        .collect()
}

async fn run_stages(
    session: &Session,
    model: &ClusterModel,
    options: &RotateOptions,
    cas: &[CaChoice],
) -> Result<Outcome> {
    let (_, verified, store) = super::identity(session, model, &WF, true).await?;
    let r = Rotator {
        session,
        model: model.clone(),
        options,
        verified,
        store,
        command: WF.command,
        files: CA_FILES,
        phases: CA_PHASES,
        material: Some(CA_MATERIAL),
    };

    session.enter(&WF, "health");
    let api = r.api_host(&[])?;
    let problems = r.problems(&api).await?;
    if !problems.is_empty() {
        return Err(Error::msg(
            format!("the cluster is not healthy, nothing was changed: {}", problems.join("; ")),
            Some("fix these first (`kubeforge status` shows the details); a CA rotation restarts every component and starts from a healthy cluster"),
        ));
    }
    eprintln!("[rotate] healthy: every apiserver ready, every etcd member healthy");

    session.enter(&WF, "preview");
    let asked: Vec<CaId> =
        if cas.is_empty() { CaId::ALL.to_vec() } else { cas.iter().map(|c| c.id()).collect() };
    let resuming = rotation::load(&r.store)?.is_some();
    let validity = model.pki_inputs().ca_validity;
    let mut rotation = rotation::plan(&r.store, &asked, validity)?;
    let now = crate::sa_key::epoch(options.clock.now()) as i64;
    let users = old_ca_users(&r.store, &rotation, now)?;
    let batches = rollout(model);
    let stands = if resuming {
        let mut s = format!("resuming the recorded rotation at {}", rotation.step.name());
        let recorded: Vec<&str> = rotation.cas.keys().map(String::as_str).collect();
        let mut wanted: Vec<&str> = asked.iter().map(|c| c.name()).collect();
        wanted.sort();
        if recorded != wanted {
            s.push_str(&format!(
                " (of {}: a rotation in progress goes on with the CAs it records)",
                recorded.join(", ")
            ));
        }
        s
    } else {
        "a new rotation".into()
    };
    let steps: Vec<&str> = [CaStep::TrustBoth, CaStep::Issue, CaStep::Distrust]
        .into_iter()
        .filter(|s| *s >= rotation.step)
        .map(CaStep::name)
        .collect();
    let hosts: Vec<String> = batches.iter().map(|b| b.join("+")).collect();
    session.say(format!(
        "rotate ca on {}: {stands}\n  {}\n  stages: {}, finish\n  hosts, one at a time in this order, each gated: {}\n  {}\n",
        model.name,
        ca_lines(&rotation, resuming || options.consent != Consent::Preview).join("\n  "),
        steps.join(", "),
        hosts.join(", "),
        users_line(&rotation, &users),
    ));
    let question = || {
        let names: Vec<&str> = users.iter().map(|u| u.user.as_str()).collect();
        let lost = if names.is_empty() {
            String::new()
        } else {
            format!("; the kubeconfigs of {} STOP WORKING (from issue on)", names.join(", "))
        };
        let which: Vec<&str> = rotation.cas.keys().map(String::as_str).collect();
        format!(
            "Rotate the CAs {} of cluster `{}` (components restart three times, host by host{lost})?",
            which.join(", "),
            model.name
        )
    };
    if !super::consent_then_begin(session, &WF, options.consent, question)? {
        return Ok(Outcome::Previewed);
    }
    if !resuming {
        rotation::record(&r.store, &rotation)?;
    }
    eprintln!(
        "[rotate] {} CA(s) recorded beside the current ones in {}",
        if resuming { "pending" } else { "new" },
        r.store.root().join(rotation::ROTATION_FILE).display()
    );
    for step in [CaStep::TrustBoth, CaStep::Issue, CaStep::Distrust] {
        if step >= rotation.step {
            roll_out(&r, &mut rotation, step, &batches).await?;
        }
    }
    session.boundary(&WF, "finish")?;
    session.enter(&WF, "finish");
    rotation::finish(&r.store, &rotation)?;
    let done: Vec<(String, String, String, String)> = rotation
        .cas
        .iter()
        .map(|(name, p)| {
            let (crt, _) = rotation::retired_paths(name, p);
            (
                name.clone(),
                rotation::fingerprint(&p.old_cert),
                rotation::fingerprint(&p.new_cert),
                r.store.root().join(crt).display().to_string(),
            )
        })
        .collect();
    for (name, _, _, retired) in &done {
        eprintln!("[rotate] the store's {name}.crt is the new CA; the old one kept in {retired}");
    }
    Ok(Outcome::Finished { cas: done, users })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_roll_out_control_planes_then_etcd_only_members_then_workers() {
        let text = "cluster: {name: c, kubernetesVersion: v1.35.7}\nhosts:\n\
            - {name: w1, address: 10.0.0.9, roles: [worker]}\n\
            - {name: e1, address: 10.0.0.5, roles: [etcd]}\n\
            - {name: cp1, address: 10.0.0.1, roles: [control-plane, etcd]}\n\
            - {name: cp2, address: 10.0.0.2, roles: [control-plane]}\n";
        let loaded = crate::inventory::parse(std::path::Path::new("i.yaml"), text).unwrap();
        let model = ClusterModel::derive(&loaded);
        let order: Vec<String> = rollout(&model).into_iter().map(|b| b.join("+")).collect();
        assert_eq!(order, ["cp1", "cp2", "e1", "w1"]);
    }

    #[test]
    fn only_takes_the_three_cas_and_refuses_others_naming_them() {
        use clap::Parser;
        let parse = |only: &str| {
            crate::cli::Cli::try_parse_from(["kubeforge", "rotate", "ca", "-i", "i.yaml", "--only", only])
        };
        let cli = parse("etcd,front-proxy").unwrap();
        let crate::cli::Command::Rotate(super::super::RotateCommand::Ca(a)) = cli.command else {
            panic!("not rotate ca")
        };
        assert_eq!(a.only.iter().map(|c| c.id()).collect::<Vec<_>>(), [CaId::Etcd, CaId::FrontProxy]);
        let e = parse("cluster,kubelet").unwrap_err().to_string();
        assert!(e.contains("kubelet") && e.contains("cluster, etcd, front-proxy"), "{e}");
    }
}
