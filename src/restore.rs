//! `kubeforge backup` and `kubeforge restore`: a whole cluster in one archive, and back.
//!
//! A backup is one gzip'd tar (age-encrypted with a passphrase when asked): a manifest with the sha256 of
//! every member, an etcd snapshot taken over TLS on a member (checked with `etcdutl snapshot status`), the
//! whole PKI store (CAs, service-account keys, the encryption-at-rest key, the cluster state) and the
//! inventory. See [`crate::backup`] for the snapshot and the archive.
//!
//! A restore works onto the same hosts or onto new hosts with other addresses (the inventory given):
//! 1. the archive is checked member by member against its manifest, and its cluster name against the
//!    inventory's;
//! 2. the PKI: a store already in `pki/<cluster>/` with the same CAs, service-account key and encryption key
//!    is kept (its certificates are the newer ones); a store with other CAs is refused unless
//!    `--replace-pki` (it is then moved aside); without a store, the archive's is unpacked. Hosts the cluster
//!    state knows and the inventory does not are dropped from the state;
//! 3. `apply` installs or converges every host (certificates whose SANs changed are re-issued, new hosts are
//!    installed from nothing);
//! 4. the control plane stops; every etcd member's data is restored from the snapshot with
//!    `etcdutl snapshot restore` (`etcdctl` for etcd 3.4) and a fresh `--initial-cluster` of the inventory's
//!    members and a new cluster token, the previous data kept aside; the members start together;
//! 5. the control plane starts, the addons and node labels are applied again, and a second `apply` checks
//!    everything (health gates, Nodes Ready). Nodes in the backup that the inventory does not have are
//!    listed.

use crate::apply::{self, ApplyOptions};
use crate::backup::{self, Manifest};
use crate::state::ClusterState;
use crate::transport::{Command, Transport, Upload};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Reads the passphrase from the environment variable `name` (`--passphrase-env`).
pub fn passphrase(name: Option<&str>) -> Result<Option<String>> {
    let Some(name) = name else { return Ok(None) };
    match std::env::var(name) {
        Ok(p) if !p.is_empty() => Ok(Some(p)),
        _ => Err(Error::msg(
            format!("the environment variable {name} (named by --passphrase-env) is not set or empty"),
            Some(&format!("export {name}=... with the archive's passphrase, or leave out --passphrase-env")),
        )),
    }
}

fn stamp() -> String {
    time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!("[year][month][day]T[hour][minute][second]Z"))
        .expect("static format")
}

/// Options of `kubeforge backup`.
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// Where to write the archive (default `pki/<cluster>/backups/<cluster>-<time>.backup.tar.gz[.age]`).
    pub output: Option<PathBuf>,
    /// The environment variable holding the passphrase to encrypt with.
    pub passphrase_env: Option<String>,
    /// Write the archive in the clear (an explicit choice: without it, a passphrase is required).
    pub unencrypted: bool,
    /// PKI root, cache and SSH settings.
    pub apply: ApplyOptions,
}

/// `kubeforge backup`.
pub fn run_backup(inventory: &Path, o: BackupOptions) -> Result<i32> {
    if o.passphrase_env.is_none() && !o.unencrypted {
        return Err(Error::usage(
            "a backup holds every CA key, the service-account key and the encryption-at-rest key: it is encrypted unless you choose otherwise",
            Some("--passphrase-env VAR encrypts it (age, scrypt; the encryption also authenticates the archive's manifest), --unencrypted writes it in the clear"),
        ));
    }
    let session = crate::session::Session::open(inventory, o.apply.clone())?;
    backup_in(&session, o)
}

/// [`run_backup`] in a session.
pub fn backup_in(session: &crate::session::Session, o: BackupOptions) -> Result<i32> {
    let inventory = &session.loaded.path;
    let model = session.model();
    let state = ClusterState::load(&o.apply.pki_root, &model.name)?;
    if state.hosts.is_empty() {
        return Err(Error::msg(
            format!("kubeforge has no record of cluster `{}` in {}", model.name, o.apply.pki_root.display()),
            Some("back up a cluster kubeforge installed (`kubeforge apply`), from its admin machine"),
        ));
    }
    let passphrase = passphrase(o.passphrase_env.as_deref())?;
    // The text as read (a streamed inventory, `-i -`, cannot be read twice).
    let inventory_bytes = crate::inventory::read(inventory)?.into_bytes();
    let store = o.apply.pki_root.join(&model.name);
    let transports = &session.transports;
    let mut members: Vec<String> = model
        .etcd_members()
        .filter(|h| state.etcd_members.is_empty() || state.etcd_members.contains(&h.name))
        .map(|h| h.name.clone())
        .collect();
    if members.is_empty() {
        members = model.etcd_members().map(|h| h.name.clone()).collect();
    }
    let t0 = Instant::now();
    let progress = crate::artifacts::TerminalProgress::default();
    session.enter(&crate::workflow::BACKUP, "snapshot");
    let snapshot = session.block_on(async {
        let mut last = None;
        for m in &members {
            let t = transports.get(m).expect("transport per host");
            match backup::snapshot(&model, m, t.as_ref(), &o.apply.pki_root, "backup", &progress).await {
                Ok(s) => return Ok(s),
                Err(e) => {
                    eprintln!("[backup] {m}: {e}; trying the next member");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::msg("the inventory has no etcd member", None)))
    })?;
    eprintln!(
        "[backup] etcd snapshot from {}: revision {}, {} keys, {} bytes ({:.1}s)",
        snapshot.member,
        snapshot.revision,
        snapshot.total_keys,
        snapshot.bytes,
        t0.elapsed().as_secs_f64()
    );
    let out = match &o.output {
        Some(p) => p.clone(),
        None => backup::local_dir(&o.apply.pki_root, &model.name).join(format!(
            "{}-{}.backup.tar.gz{}",
            model.name,
            stamp(),
            if passphrase.is_some() { ".age" } else { "" }
        )),
    };
    let versions: BTreeMap<String, BTreeMap<String, String>> =
        state.hosts.iter().map(|(n, h)| (n.clone(), h.versions.clone())).collect();
    session.enter(&crate::workflow::BACKUP, "archive");
    let written = backup::write_archive(
        &out,
        &model.name,
        &model.versions.kubernetes.to_string(),
        versions,
        &snapshot,
        &store,
        &inventory_bytes,
        passphrase.as_deref(),
    );
    // The archive holds the snapshot: the loose copy is not kept.
    let _ = std::fs::remove_file(&snapshot.path);
    let manifest = written?;
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    println!(
        "backup: {} ({size} bytes, mode 0600): etcd revision {} ({} keys) from {}, {} PKI file(s), the inventory and the cluster state; {}",
        out.display(),
        manifest.etcd.revision,
        manifest.etcd.total_keys,
        manifest.etcd.member,
        manifest.files.iter().filter(|f| f.path.starts_with("pki/")).count(),
        match &o.passphrase_env {
            Some(v) => format!("encrypted with age (passphrase from ${v})"),
            None => "NOT encrypted (--unencrypted): it holds the CA keys and nothing authenticates it; keep it as safe as pki/".into(),
        }
    );
    Ok(0)
}

/// Options of `kubeforge restore`.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The archive.
    pub from: PathBuf,
    /// The environment variable holding its passphrase.
    pub passphrase_env: Option<String>,
    /// Preview (`--dry-run`), go ahead (`--yes`), or preview then ask.
    pub consent: crate::prompt::Consent,
    /// Move a `pki/<cluster>/` with other CAs aside instead of refusing.
    pub replace_pki: bool,
    /// PKI root, cache and SSH settings.
    pub apply: ApplyOptions,
}

/// The files that make a PKI store the same cluster's: a store that differs in any of them belongs to
/// another cluster (or another life of it).
const IDENTITY: &[&str] = &[
    "ca.crt",
    "ca.key",
    "etcd/ca.crt",
    "etcd/ca.key",
    "front-proxy-ca.crt",
    "front-proxy-ca.key",
    "sa.key",
    "secrets/encryption-key",
    "secrets/encryption-provider",
];

/// The identity files in which the local store differs from the archive's (a missing file differs).
fn identity_differences(local: &Path, archived: &Path) -> Vec<String> {
    IDENTITY
        .iter()
        .filter(|f| {
            let a = std::fs::read(local.join(f)).ok();
            let b = std::fs::read(archived.join(f)).ok();
            b.is_some() && a != b
        })
        .map(|f| f.to_string())
        .collect()
}

/// Puts the archive's PKI store where `apply` reads it, or keeps the local one when it is the same
/// cluster's. Returns what was done, for the report.
fn place_pki(
    pki_root: &Path,
    cluster: &str,
    opened: &backup::Opened,
    replace: bool,
    dry: bool,
) -> Result<String> {
    let local = pki_root.join(cluster);
    let archived = opened.path(Manifest::PKI);
    if local.join("ca.crt").exists() {
        let mut diff = identity_differences(&local, &archived);
        // A key rotation recorded in one store and not the other (or at another step): the snapshot's Secrets
        // are encrypted with the keys of the backup's own store, which the kept store may no longer render.
        let rotation = crate::at_rest::ROTATION_FILE;
        if std::fs::read(local.join(rotation)).ok() != std::fs::read(archived.join(rotation)).ok() {
            diff.push(format!("{rotation} (an encryption-key rotation in progress in one of them)"));
        }
        if diff.is_empty() {
            return Ok(format!(
                "{} has the backup's CAs and keys: kept (its certificates are newer)",
                local.display()
            ));
        }
        if !replace {
            let what = if diff.iter().all(|d| d.starts_with("secrets/")) {
                "holds other encryption-at-rest keys than the backup"
            } else {
                "belongs to another cluster than the backup"
            };
            return Err(Error::msg(
                format!("{} {what}: {} differ", local.display(), diff.join(", ")),
                Some("restore from a backup of this cluster, or give --replace-pki to move the store aside and use the backup's"),
            ));
        }
        let aside = pki_root.join(format!("{cluster}.before-restore-{}", stamp()));
        if dry {
            return Ok(format!(
                "{} would be moved to {} and replaced by the backup's",
                local.display(),
                aside.display()
            ));
        }
        std::fs::rename(&local, &aside)
            .map_err(|e| Error::io(format!("moving {} aside", local.display()), e))?;
        eprintln!("[restore] {} moved to {}", local.display(), aside.display());
    } else if dry {
        return Ok(if local.exists() {
            format!(
                "{} would be created from the backup (what it holds now is moved aside; its backups/ stay)",
                local.display()
            )
        } else {
            format!("{} would be created from the backup", local.display())
        });
    }
    std::fs::create_dir_all(pki_root)
        .map_err(|e| Error::io(format!("creating {}", pki_root.display()), e))?;
    let staging = pki_root.join(format!(".{cluster}.restore-{}", stamp()));
    apply::copy_dir(&archived, &staging).map_err(|e| Error::io("unpacking the PKI store", e))?;
    for f in opened.manifest.files.iter().filter(|f| f.path.starts_with("pki/")) {
        use std::os::unix::fs::PermissionsExt;
        let p = staging.join(&f.path["pki/".len()..]);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(f.mode & 0o777))
            .map_err(|e| Error::io(format!("setting the mode of {}", p.display()), e))?;
    }
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io("setting the mode of the PKI store", e))?;
    }
    // A store without a CA (the PKI was lost and archives were copied back, or an interrupted run): nothing is
    // deleted. What it holds is moved aside, and its backups/ (the archive being restored may be one of
    // them) move into the restored store.
    let mut note = String::new();
    if local.exists() {
        let aside = pki_root.join(format!("{cluster}.before-restore-{}", stamp()));
        std::fs::rename(&local, &aside)
            .map_err(|e| Error::io(format!("moving {} aside", local.display()), e))?;
        std::fs::rename(&staging, &local)
            .map_err(|e| Error::io(format!("writing {}", local.display()), e))?;
        let backups = aside.join("backups");
        if backups.is_dir() {
            std::fs::rename(&backups, local.join("backups"))
                .map_err(|e| Error::io(format!("moving {} back", backups.display()), e))?;
            note.push_str("; its backups/ kept");
        }
        if std::fs::remove_dir(&aside).is_err() {
            note.push_str(&format!("; what it held before is in {}", aside.display()));
        }
    } else {
        std::fs::rename(&staging, &local)
            .map_err(|e| Error::io(format!("writing {}", local.display()), e))?;
    }
    Ok(format!("{} created from the backup{note}", local.display()))
}

/// The hosts that carry a cluster other than the backup's: another name, or another CA than `archived_ca`.
pub fn foreign_hosts(
    cluster: &str,
    archived_ca: &crate::identity::Fingerprint,
    found: &[(String, crate::identity::Remote)],
) -> Vec<String> {
    let mut out = Vec::new();
    for (host, r) in found {
        match (&r.marker, &r.ca) {
            (Some(Ok(m)), _) if m.cluster != cluster => {
                out.push(format!("`{host}` belongs to cluster `{}`", m.cluster))
            }
            (Some(Ok(m)), _) if m.ca_sha256 != *archived_ca => out.push(format!(
                "`{host}` runs cluster `{cluster}` with CA {}, the backup's CA is {archived_ca}: another installation",
                m.ca_sha256
            )),
            (Some(Err(why)), _) => out.push(format!("`{host}`: its marker is not kubeforge's ({why})")),
            (None, Some(ca)) if ca != archived_ca => {
                out.push(format!("`{host}` runs a cluster whose CA is {ca}, the backup's is {archived_ca}"))
            }
            _ => {}
        }
    }
    out
}

/// Stops the control plane's services: `$@` the units.
const STOP: &str = "for u in \"$@\"; do systemctl stop \"$u\" 2>/dev/null || true; done";

/// Restores one member's data: `$1` snapshot, `$2` name, `$3` initial cluster, `$4` token, `$5` peer URL,
/// `$6` where the previous data goes. Prints `aside DIR` when there was previous data.
const RESTORE_MEMBER: &str = r#"set -eu
snap=$1; name=$2; ic=$3; token=$4; peer=$5; aside=$6
data=/var/lib/etcd
systemctl stop etcd 2>/dev/null || true
rm -rf "$data.restore"
if [ -x /usr/local/bin/etcdutl ]; then
  set -- /usr/local/bin/etcdutl snapshot restore "$snap"
else
  set -- env ETCDCTL_API=3 /usr/local/bin/etcdctl snapshot restore "$snap"
fi
out=$("$@" --name "$name" --initial-cluster "$ic" --initial-cluster-token "$token" \
  --initial-advertise-peer-urls "$peer" --data-dir "$data.restore" 2>&1) || { echo "$out" >&2; rm -rf "$data.restore"; exit 1; }
chmod 700 "$data.restore"
if [ -e "$data" ]; then mv "$data" "$aside"; echo "aside $aside"; fi
mv "$data.restore" "$data"
rm -f "$snap""#;

/// How to go on after a restore step failed.
const AGAIN: &str = "run the same `kubeforge restore` again once the host is fixed: it redoes every step, and each member's previous data stays aside (/var/lib/etcd.before-restore-*)";

/// Starts etcd without waiting (the members need each other for quorum), then waits for this member to
/// be healthy.
const START_ETCD: &str = r#"systemctl start --no-block etcd
eps=https://127.0.0.1:2379
i=0
until e endpoint health >/dev/null 2>&1; do
  i=$((i+1)); [ $i -lt 150 ] || { e endpoint health >&2; exit 1; }
  sleep 2
done"#;

/// `kubeforge restore`.
pub fn run_restore(inventory: &Path, o: RestoreOptions) -> Result<i32> {
    let session = crate::session::Session::open(inventory, o.apply.clone())?;
    restore_in(&session, o)
}

/// [`run_restore`] in a session: one connection per host for the whole restore.
pub fn restore_in(session: &crate::session::Session, o: RestoreOptions) -> Result<i32> {
    let (loaded, inventory) = (&session.loaded, &session.loaded.path);
    let model = session.model();
    use crate::workflow::RESTORE;
    session.enter(&RESTORE, "archive");
    let passphrase = passphrase(o.passphrase_env.as_deref())?;
    let opened = backup::open_archive(&o.from, passphrase.as_deref(), &o.apply.pki_root)?;
    let m = &opened.manifest;
    if m.cluster != model.name {
        return Err(Error::msg(
            format!(
                "{} is a backup of cluster `{}`, the inventory describes `{}`",
                o.from.display(),
                m.cluster,
                model.name
            ),
            Some(&format!("restore it with an inventory whose cluster.name is `{}`", m.cluster)),
        ));
    }
    eprintln!(
        "[restore] {}: cluster `{}`, taken {} by kubeforge {}, etcd revision {} ({} keys) from {}; {} member(s) checked{}",
        o.from.display(),
        m.cluster,
        m.created,
        m.kubeforge,
        m.etcd.revision,
        m.etcd.total_keys,
        m.etcd.member,
        m.files.len(),
        if opened.encrypted { ", decrypted" } else { "" }
    );
    let members: Vec<String> = model.etcd_members().map(|h| h.name.clone()).collect();
    // The hosts must be empty or this backup's cluster: a restore never overwrites another cluster's hosts
    // (one of the same name included), and nothing is placed or touched before that is known.
    let archived_ca = std::fs::read(opened.path(Manifest::PKI).join("ca.crt"))
        .ok()
        .and_then(|pem| crate::identity::Fingerprint::of_pem(&pem))
        .ok_or_else(|| Error::msg(format!("{} holds no cluster CA", o.from.display()), None))?;
    let transports = &session.transports;
    session.enter(&RESTORE, "identity");
    {
        let hosts: Vec<String> = model.hosts.iter().map(|h| h.name.clone()).collect();
        let found = session.block_on(crate::identity::read_hosts(&hosts, transports, &session.executor))?;
        let foreign = foreign_hosts(&model.name, &archived_ca, &found);
        if !foreign.is_empty() {
            return Err(Error::msg(
                format!("refusing to restore onto another cluster's hosts:\n  {}", foreign.join("\n  ")),
                Some("restore onto hosts of this backup's cluster or empty ones; a host you mean to reuse is emptied first with `kubeforge reset -i INV --hosts NAME --yes --force`"),
            ));
        }
    }
    session.enter(&RESTORE, "pki");
    use crate::prompt::Consent;
    let pki_note = place_pki(&o.apply.pki_root, &model.name, &opened, o.replace_pki, true)?;
    if o.consent != Consent::Given {
        println!("restore would:");
        println!("  - PKI: {pki_note}");
        println!("  - install or converge every host of {} (apply)", inventory.display());
        println!("  - stop the control plane, replace the etcd data of {} with the snapshot (the previous data is kept aside), start them together", members.join(", "));
        println!("  - start the control plane, apply the addons again, check the cluster (apply)");
        if o.consent == Consent::Preview {
            println!("restore --dry-run: nothing was changed (`--yes` restores without asking)");
            return Ok(0);
        }
        session.enter(&RESTORE, "confirm");
        if !crate::prompt::ask("Restore the cluster from this backup?")? {
            println!("restore: nothing was changed");
            return Ok(0);
        }
    }
    let pki_note = place_pki(&o.apply.pki_root, &model.name, &opened, o.replace_pki, false)?;
    eprintln!("[restore] PKI: {pki_note}");
    // The state: hosts the inventory does not have are not part of the restored cluster.
    let mut state = ClusterState::load(&o.apply.pki_root, &model.name)?;
    let gone: Vec<String> = state.hosts.keys().filter(|h| model.host(h).is_none()).cloned().collect();
    for h in &gone {
        state.forget_host(h);
    }
    if !gone.is_empty() {
        eprintln!("[restore] not in the inventory, dropped from the cluster state: {}", gone.join(", "));
        state.save(&o.apply.pki_root)?;
    }
    let t0 = Instant::now();
    session.boundary(&RESTORE, "install")?;
    session.enter(&RESTORE, "install");
    apply::run_in(session, loaded, model.clone(), o.apply.clone(), "[restore] install")?;
    eprintln!("[restore] hosts installed and converged ({:.0}s)", t0.elapsed().as_secs_f64());

    let snap = opened.path(Manifest::SNAPSHOT);
    let when = stamp();
    let token = format!("kubeforge-{}-restore-{when}", model.name);
    let initial = model.etcd_initial_cluster();
    let t1 = Instant::now();
    session.block_on(async {
        // 1. The control plane stops everywhere before any member is touched: no apiserver may write to a
        //    member between its restore and the others'.
        session.boundary(&RESTORE, "stop")?;
        session.enter(&RESTORE, "stop");
        let stop = Command::shell(STOP)
            .args(["kube-apiserver", "kube-controller-manager", "kube-scheduler"])
            .sudo();
        run_on(session, model.control_planes().map(|h| h.name.clone()), "stop the control plane", &stop).await?;
        // 2. Every member's data is replaced from the snapshot.
        session.boundary(&RESTORE, "members")?;
        session.enter(&RESTORE, "members");
        let up = Upload::file(&snap, format!("{}/restore-{when}.db", backup::REMOTE_DIR), 0o600)
            .map_err(|e| Error::io("reading the snapshot", e))?;
        let asides: Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        on_hosts(session, members.iter().cloned(), |name, t| {
            let h = model.host(&name).expect("member").clone();
            let (up, initial, token, asides) = (up.clone(), initial.clone(), token.clone(), asides.clone());
            let aside = format!("/var/lib/etcd.before-restore-{when}");
            async move {
                t.exec(&Command::shell(format!("mkdir -p {0} && chmod 700 {0}", backup::REMOTE_DIR)).sudo())
                    .await
                    .map_err(|e| Error::on_host(&name, "preparing the backups directory", e, Some(AGAIN)))?;
                t.upload(&up).await.map_err(|e| Error::on_host(&name, "sending the snapshot", e, Some(AGAIN)))?;
                let cmd = Command::shell(RESTORE_MEMBER)
                    .arg(up.dest.clone())
                    .arg(name.clone())
                    .arg(initial)
                    .arg(token)
                    .arg(crate::model::url(h.internal_ip, 2380))
                    .arg(aside)
                    .sudo();
                let out = crate::plan::run_checked(t.as_ref(), "restore the etcd data", &cmd)
                    .await
                    .map_err(|e| Error::on_host(&name, "restoring the etcd data", e, Some(AGAIN)))?;
                if let Some(a) = out.stdout_str().lines().find_map(|l| l.strip_prefix("aside ")) {
                    asides.lock().expect("lock").push(format!("{name}:{a}"));
                }
                Ok(())
            }
        })
        .await?;
        eprintln!("[restore] etcd data restored on {} ({:.0}s)", members.join(", "), t1.elapsed().as_secs_f64());
        let kept = asides.lock().expect("lock").clone();
        if !kept.is_empty() {
            eprintln!("[restore] the previous etcd data is kept in {} (remove it once the cluster is as it should be)", kept.join(", "));
        }
        // 3. The members start together and each waits for its health (quorum).
        session.boundary(&RESTORE, "etcd")?;
        session.enter(&RESTORE, "etcd");
        let start = Command::shell(format!("{}\n{START_ETCD}", crate::phase::install::ETCDCTL_FN)).sudo();
        // Together, whatever --concurrency says: each member's health needs a quorum of the others.
        let started = futures::future::join_all(members.iter().map(|m| {
            let t = session.transports.get(m).cloned().expect("transport per host");
            let start = start.clone();
            async move {
                crate::plan::run_checked(t.as_ref(), "start etcd", &start)
                    .await
                    .map_err(|e| format!("{m}: {e}"))
            }
        }))
        .await;
        let problems: Vec<String> = started.into_iter().filter_map(|r| r.err()).collect();
        if !problems.is_empty() {
            return Err(Error::msg(format!("restore failed:\n  {}", problems.join("\n  ")), Some(AGAIN)));
        }
        eprintln!("[restore] etcd members healthy ({:.0}s)", t1.elapsed().as_secs_f64());
        // 4. The control plane starts; the addons and node labels are applied again (the restored objects
        //    are those of the backup).
        session.boundary(&RESTORE, "control-plane")?;
        session.enter(&RESTORE, "control-plane");
        let start_cp = Command::new("systemctl")
            .args(["start", "kube-apiserver", "kube-controller-manager", "kube-scheduler"])
            .sudo();
        run_on(session, model.control_planes().map(|h| h.name.clone()), "start the control plane", &start_cp).await?;
        Ok::<(), Error>(())
    })?;
    // 5. The addons and node labels are applied again (the restored objects are those of the backup), then a
    //    converge run starts whatever is still stopped and checks everything.
    let first = model.control_planes().next().expect("a control plane").name.clone();
    session.boundary(&RESTORE, "addons")?;
    session.enter(&RESTORE, "addons");
    session.block_on(async {
        let t = transports.get(&first).expect("transport");
        t.exec(&Command::new("rm").args(["-f", crate::phase::addons::APPLIED]).sudo())
            .await
            .map_err(|e| Error::on_host(&first, "forgetting the applied addons", e, Some(AGAIN)))?;
        for (what, cmd) in crate::phase::addons::reapply_commands(&model) {
            crate::plan::run_checked(t.as_ref(), &what, &cmd).await.map_err(|e| {
                Error::on_host(
                    &first,
                    what,
                    e,
                    Some("the cluster runs again; `kubeforge apply` applies the addons and labels"),
                )
            })?;
        }
        Ok::<(), Error>(())
    })?;
    eprintln!("[restore] addons and node labels applied again on {first}");
    session.boundary(&RESTORE, "check")?;
    session.enter(&RESTORE, "check");
    apply::run_in(session, loaded, model.clone(), o.apply.clone(), "[restore] check")?;
    // Nodes in the backup that the inventory does not have.
    let nodes = session
        .block_on(async {
            let t = transports.get(&first).expect("transport");
            crate::plan::run_checked(
                t.as_ref(),
                "list the Nodes",
                &crate::lifecycle::kubectl_retrying(&[
                    "get",
                    "nodes",
                    "-o",
                    "jsonpath={.items[*].metadata.name}",
                ]),
            )
            .await
        })
        .map_err(|e| {
            Error::on_host(
                &first,
                "listing the Nodes",
                e,
                Some("the cluster is restored; `kubectl get nodes` lists them"),
            )
        })?;
    let stale: Vec<String> = nodes
        .stdout_str()
        .split_whitespace()
        .filter(|n| model.host(n).is_none())
        .map(str::to_owned)
        .collect();
    if !stale.is_empty() {
        eprintln!(
            "[restore] Nodes from the backup that the inventory does not have: {} (they stay NotReady; `kubectl delete node NAME` once they are gone for good)",
            stale.join(", ")
        );
    }
    println!(
        "restore: cluster `{}` is back at etcd revision {} of {} on {} ({:.0}s)",
        model.name,
        m.etcd.revision,
        m.created,
        model.hosts.iter().map(|h| h.name.as_str()).collect::<Vec<_>>().join(", "),
        t0.elapsed().as_secs_f64()
    );
    Ok(0)
}

/// Runs `cmd` (`what`, for messages) on each of `hosts` (`--concurrency` at once); failures name the host.
async fn run_on(
    session: &crate::session::Session,
    hosts: impl Iterator<Item = String>,
    what: &str,
    cmd: &Command,
) -> Result<()> {
    on_hosts(session, hosts, |name, t| async move {
        crate::plan::run_checked(t.as_ref(), what, cmd)
            .await
            .map(|_| ())
            .map_err(|e| Error::on_host(&name, what.to_string(), e, Some(AGAIN)))
    })
    .await
}

/// Runs `f` on each of `hosts` (`--concurrency` at once); every failure is reported after all have
/// finished.
async fn on_hosts<F, Fut>(
    session: &crate::session::Session,
    hosts: impl Iterator<Item = String>,
    f: F,
) -> Result<()>
where
    F: Fn(String, Arc<dyn Transport>) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let problems: Vec<String> = session
        .executor
        .each(hosts, |h| {
            let t = session.transports.get(&h).cloned().expect("transport per host");
            f(h, t)
        })
        .await
        .into_iter()
        .filter_map(|r| r.err())
        .map(|e| {
            // Each failure with its causes on one line (the hint is the same for all: it follows once).
            let mut line = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                line.push_str(&format!(": {c}"));
                cause = c.source();
            }
            line
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::msg(format!("restore failed:\n  {}", problems.join("\n  ")), Some(AGAIN)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// The member restore script in a real shell, against a fake etcdutl and systemctl, in a temporary root.
    #[test]
    fn a_member_restore_keeps_the_previous_data_aside_and_never_half_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let data = d.join("etcd");
        std::fs::create_dir_all(data.join("member")).unwrap();
        std::fs::write(data.join("member/old"), b"old data").unwrap();
        std::fs::write(d.join("snap.db"), b"snapshot").unwrap();
        let fake = |name: &str, body: &str| {
            let p = d.join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        fake("systemctl", "echo \"systemctl $*\" >> $D/calls");
        // The fake etcdutl writes its arguments into the data directory it is given (or fails when told).
        fake(
            "etcdutl",
            "echo \"etcdutl $*\" >> $D/calls; [ -e $D/fail ] && { echo 'snapshot file has wrong hash' >&2; exit 1; }\n\
             while [ $# -gt 0 ]; do [ \"$1\" = --data-dir ] && dd=$2; shift; done\n\
             mkdir -p \"$dd/member\" && echo restored > \"$dd/member/new\"",
        );
        let run = || {
            let argv = Command::shell(RESTORE_MEMBER)
                .arg(d.join("snap.db").to_str().unwrap())
                .args(["cp2", "cp1=https://10.0.0.1:2380,cp2=https://10.0.0.2:2380", "tok-1"])
                .arg("https://10.0.0.2:2380")
                .arg(d.join("etcd.before-restore").to_str().unwrap())
                .argv();
            let argv: Vec<String> = argv
                .iter()
                .map(|a| {
                    a.replace("/var/lib/etcd", data.to_str().unwrap())
                        .replace("/usr/local/bin/etcdutl", d.join("etcdutl").to_str().unwrap())
                })
                .collect();
            crate::test_support::run_with_fakes(&argv, d)
        };
        // A failing restore leaves the data as it was and no partial directory.
        std::fs::write(d.join("fail"), b"").unwrap();
        let out = run();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("wrong hash"));
        assert_eq!(std::fs::read(data.join("member/old")).unwrap(), b"old data");
        assert!(!d.join("etcd.restore").exists() && !d.join("etcd.before-restore").exists());
        // A good one moves the old data aside and puts the restored data in place, private.
        std::fs::remove_file(d.join("fail")).unwrap();
        let out = run();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let aside = d.join("etcd.before-restore");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("aside {}", aside.display()));
        assert_eq!(std::fs::read(aside.join("member/old")).unwrap(), b"old data");
        assert_eq!(std::fs::read(data.join("member/new")).unwrap(), b"restored\n");
        assert_eq!(std::fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o700);
        assert!(!d.join("snap.db").exists(), "the uploaded snapshot is removed");
        let calls = std::fs::read_to_string(d.join("calls")).unwrap();
        assert!(calls.contains("systemctl stop etcd"), "{calls}");
        assert!(
            calls.contains("--name cp2 --initial-cluster cp1=https://10.0.0.1:2380,cp2=https://10.0.0.2:2380 --initial-cluster-token tok-1 --initial-advertise-peer-urls https://10.0.0.2:2380"),
            "{calls}"
        );
    }

    fn store(root: &Path, ca: &str) {
        let s = root.join("c1");
        std::fs::create_dir_all(s.join("etcd")).unwrap();
        for f in ["ca.crt", "ca.key", "etcd/ca.crt", "sa.key"] {
            std::fs::write(s.join(f), format!("{ca} {f}")).unwrap();
        }
    }

    fn opened_with(ca: &str) -> (tempfile::TempDir, backup::Opened) {
        let dir = tempfile::tempdir().unwrap();
        store(&dir.path().join("src"), ca);
        let snap = dir.path().join("snap.db");
        std::fs::write(&snap, b"s").unwrap();
        let s = backup::Snapshot {
            path: snap,
            member: "cp1".into(),
            sha256: String::new(),
            bytes: 1,
            revision: 1,
            total_keys: 1,
        };
        let out = dir.path().join("b.tar.gz");
        backup::write_archive(
            &out,
            "c1",
            "v1.35.7",
            Default::default(),
            &s,
            &dir.path().join("src/c1"),
            b"i",
            None,
        )
        .unwrap();
        let o = backup::open_archive(&out, None, dir.path()).unwrap();
        (dir, o)
    }

    #[test]
    fn a_restore_refuses_hosts_of_another_cluster_or_ca_and_takes_empty_or_own_ones() {
        use crate::identity::{Fingerprint, Marker, Remote};
        let fp = |c: char| Fingerprint(format!("sha256:{}", c.to_string().repeat(64)));
        let marked = |cluster: &str, ca: char| Remote {
            marker: Some(Ok(Marker { cluster: cluster.into(), uid: "u".into(), ca_sha256: fp(ca) })),
            ca: Some(fp(ca)),
        };
        let found = vec![
            ("a".to_string(), marked("c1", 'a')),
            ("b".to_string(), Remote::default()),
            ("c".to_string(), marked("c1", 'b')),
            ("d".to_string(), marked("other", 'a')),
            ("e".to_string(), Remote { marker: None, ca: Some(fp('c')) }),
        ];
        let f = foreign_hosts("c1", &fp('a'), &found);
        assert_eq!(f.len(), 3, "{f:?}");
        assert!(f[0].starts_with("`c`") && f[1].starts_with("`d`") && f[2].starts_with("`e`"), "{f:?}");
    }

    /// The disaster layout: the PKI lost, archives copied back into `pki/<cluster>/backups/`: the restore
    /// keeps every archive (the one it restores from included) and deletes nothing.
    #[test]
    fn a_store_without_a_ca_keeps_its_backups_and_nothing_is_deleted() {
        let (_k, opened) = opened_with("A");
        let root = tempfile::tempdir().unwrap();
        let backups = root.path().join("c1/backups");
        std::fs::create_dir_all(&backups).unwrap();
        std::fs::write(backups.join("c1-1.backup.tar.gz"), b"the one restored").unwrap();
        std::fs::write(backups.join("c1-0.backup.tar.gz"), b"an older one").unwrap();
        std::fs::write(root.path().join("c1/notes.txt"), b"the admin's").unwrap();
        let note = place_pki(root.path(), "c1", &opened, false, true).unwrap();
        assert!(note.contains("backups/ stay"), "{note}");
        let note = place_pki(root.path(), "c1", &opened, false, false).unwrap();
        assert!(note.contains("backups/ kept"), "{note}");
        assert_eq!(std::fs::read(backups.join("c1-1.backup.tar.gz")).unwrap(), b"the one restored");
        assert_eq!(std::fs::read(backups.join("c1-0.backup.tar.gz")).unwrap(), b"an older one");
        assert_eq!(std::fs::read(root.path().join("c1/etcd/ca.crt")).unwrap(), b"A etcd/ca.crt");
        let aside: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("c1.before-restore-"))
            .collect();
        assert_eq!(aside.len(), 1, "the rest moved aside");
        assert_eq!(std::fs::read(aside[0].path().join("notes.txt")).unwrap(), b"the admin's");
    }

    #[test]
    fn the_pki_is_kept_when_it_is_the_same_clusters_and_otherwise_refused_or_replaced() {
        let (_k, opened) = opened_with("A");
        // No store: the backup's is unpacked, private.
        let root = tempfile::tempdir().unwrap();
        let note = place_pki(root.path(), "c1", &opened, false, true).unwrap();
        assert!(note.contains("would be created"), "{note}");
        assert!(!root.path().join("c1").exists(), "a dry run writes nothing");
        let note = place_pki(root.path(), "c1", &opened, false, false).unwrap();
        assert!(note.contains("created from the backup"), "{note}");
        assert_eq!(std::fs::read(root.path().join("c1/etcd/ca.crt")).unwrap(), b"A etcd/ca.crt");
        assert_eq!(std::fs::metadata(root.path().join("c1")).unwrap().permissions().mode() & 0o777, 0o700);
        // The same CAs: kept.
        std::fs::write(root.path().join("c1/apiserver.crt"), b"newer").unwrap();
        let note = place_pki(root.path(), "c1", &opened, false, false).unwrap();
        assert!(note.contains("kept"), "{note}");
        assert_eq!(std::fs::read(root.path().join("c1/apiserver.crt")).unwrap(), b"newer");
        // Other CAs: refused, naming them; with --replace-pki moved aside.
        let root = tempfile::tempdir().unwrap();
        store(root.path(), "B");
        let e = place_pki(root.path(), "c1", &opened, false, false).unwrap_err().to_string();
        assert!(
            e.contains("belongs to another cluster") && e.contains("ca.crt, ca.key, etcd/ca.crt, sa.key"),
            "{e}"
        );
        place_pki(root.path(), "c1", &opened, true, false).unwrap();
        assert_eq!(std::fs::read(root.path().join("c1/ca.key")).unwrap(), b"A ca.key");
        let aside: Vec<_> = std::fs::read_dir(root.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("c1.before-restore-"))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert_eq!(std::fs::read(root.path().join(&aside[0]).join("ca.key")).unwrap(), b"B ca.key");
    }
}
