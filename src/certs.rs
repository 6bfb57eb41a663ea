//! The certificate and kubeconfig commands (a command module above the `pki` library): `certs generate|check-expiration|renew|prune-users` and `kubeconfig admin|user|bundle`.

use crate::model::ClusterModel;
use crate::pki::store::Store;
use crate::pki::users;
use crate::Result;
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// Where the PKI lives and which cluster.
#[derive(Debug, Args)]
pub struct PkiTarget {
    /// The inventory file (`-`: standard input).
    #[arg(short, long)]
    pub inventory: PathBuf,
    /// Directory holding `<cluster>/` PKI directories (default: `pki/` beside the inventory file).
    #[arg(long)]
    pub pki_dir: Option<PathBuf>,
}

impl PkiTarget {
    /// The PKI directory (see [`crate::pki::resolve_root`]).
    pub fn root(&self) -> Result<PathBuf> {
        crate::pki::resolve_root(&self.inventory, self.pki_dir.as_deref())
    }
}

/// `kubeforge certs ...`.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create or complete `pki/<cluster>/`: reuses every valid certificate, re-issues exactly the ones whose
    /// subject, SANs or validity no longer fit, never touches a CA.
    Generate(PkiTarget),
    /// A table of every certificate: expiry, residual time, signing CA.
    CheckExpiration {
        /// Where.
        #[command(flatten)]
        target: PkiTarget,
        /// Exit 1 when a certificate expires within this duration (for cron and monitoring), e.g. `30d`.
        #[arg(long)]
        warn_within: Option<String>,
        /// Also read what is deployed on every host (one probe per host, as `status`): list the
        /// certificates, keys and kubeconfigs that differ from `pki/<cluster>/`, with the deployed
        /// certificate's expiry; exit 1 when any differs.
        #[arg(long)]
        on_hosts: bool,
        /// Output format (`json`/`yaml`: a `CertificateExpiration` document).
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: crate::output::Format,
    },
    /// Remove expired people's certificates from `users/` and the ledger (they can no longer authenticate).
    PruneUsers(PkiTarget),
    /// Re-issue certificates now (keeping their keys) and rewrite the kubeconfigs that embed them; with
    /// `--apply`, push them: each service that reads a renewed file restarts, control planes one at a time,
    /// each gated on its health checks.
    Renew {
        /// Certificate names (as `check-expiration` lists them), or `all`.
        #[arg(required = true)]
        names: Vec<String>,
        /// Where.
        #[command(flatten)]
        target: PkiTarget,
        /// Then run `apply`: push the renewed files and restart exactly the services that read them.
        #[arg(long)]
        apply: bool,
        /// With --apply: preflight checks to report as warnings instead of errors (`cpu,memory`, or `all`).
        #[arg(long, value_delimiter = ',', requires = "apply", value_parser = crate::args::preflight_check)]
        ignore_preflight_errors: Vec<String>,
    },
}

/// `kubeforge kubeconfig ...`.
#[derive(Debug, Subcommand)]
pub enum KubeconfigCommand {
    /// The cluster's admin kubeconfig (`pki/<cluster>/admin.conf`, cluster-admin): print it, write it
    /// (`--out`, 0600), or merge it into a kubeconfig file (`--merge`).
    Admin(AdminArgs),
    /// Issue a kubeconfig for a person: a short-lived client certificate, recorded in the ledger.
    User(UserArgs),
    /// Issue a person's client bundle: kubeconfig, CA, certificate, key and env scripts (bash/zsh, fish,
    /// PowerShell, cmd) in one archive.
    Bundle(UserArgs),
}

/// Arguments of `kubeforge kubeconfig admin`.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Where.
    #[command(flatten)]
    pub target: PkiTarget,
    /// Write it to this file (mode 0600) instead of standard output.
    #[arg(long, value_name = "FILE", conflicts_with = "merge")]
    pub out: Option<PathBuf>,
    /// Merge it into a kubeconfig file: this one, or without a value the first file of `$KUBECONFIG`,
    /// else `~/.kube/config`. Its entries are named after the cluster (cluster `<cluster>`, user
    /// `<cluster>-admin`, context `<cluster>-admin@<cluster>`) and replace entries of the same names; other
    /// entries stay as they are. The current context is set only when the file has none.
    #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "")]
    pub merge: Option<PathBuf>,
}

/// `kubeforge kubeconfig user` / `kubeforge kubeconfig bundle`.
#[derive(Debug, Args)]
pub struct UserArgs {
    /// Where.
    #[command(flatten)]
    pub target: PkiTarget,
    /// The user name (certificate CN).
    #[arg(long)]
    pub user: String,
    /// A group (certificate O); repeat for several.
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// Validity of the certificate: at most the cluster's leaf validity (`certificates.validity`, one year
    /// by default), never past the cluster CA's end.
    #[arg(long, default_value = "24h")]
    pub ttl: String,
    /// Allow `--group system:masters`: a super-user that RBAC cannot restrict and, like every client
    /// certificate, that cannot be revoked before it expires.
    #[arg(long)]
    pub allow_system_masters: bool,
    /// Output file (kubeconfig: default stdout; bundle: default `<cluster>-<user>.tar.gz`).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// One certificate of the store in `check-expiration`.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct CertRow {
    name: String,
    /// `2027-12-07 10:00 UTC`.
    expires: String,
    residual_seconds: i64,
    /// `364d`, `1y2d`, `EXPIRED`.
    residual: String,
    signed_by: String,
    key_algorithm: String,
    /// Expires within `--warn-within`.
    within_warning: bool,
}

/// A person's certificate (listed apart: never part of the cluster's health or the exit code).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct UserRow {
    user: String,
    serial: String,
    expires: String,
    residual: String,
    expired: bool,
}

/// A deployed file that differs from the store (`--on-hosts`).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct HostRow {
    host: String,
    path: String,
    /// The deployed certificate's expiry, or why it could not be read.
    deployed: String,
}

/// The `CertificateExpiration` document, and what the table prints.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Expiration {
    cluster: String,
    store: String,
    certificates: Vec<CertRow>,
    users: Vec<UserRow>,
    /// `--on-hosts`: deployed files that differ from the store, and hosts that could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    hosts: Option<OnHosts>,
    /// What the exit code 1 means: a certificate within the warning window, a deployed file that differs,
    /// or an unreachable host.
    problems: bool,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct OnHosts {
    differences: Vec<HostRow>,
    unreachable: std::collections::BTreeMap<String, String>,
}

fn when(unix: i64) -> String {
    crate::report::unix_time(unix)
}

/// Reads the store (and with `on_hosts` the deployed files) into the expiration report.
fn expiration(target: &PkiTarget, limit: Option<std::time::Duration>, on_hosts: bool) -> Result<Expiration> {
    let (model, store, _) = open(target)?;
    let certs = store.certificates()?;
    if certs.is_empty() {
        return Err(crate::Error::msg(
            format!("{} holds no certificates", store.root().display()),
            Some("run `kubeforge certs generate -i INVENTORY` first"),
        ));
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let certificates: Vec<CertRow> = certs
        .iter()
        .map(|(name, f)| CertRow {
            name: name.clone(),
            expires: when(f.not_after),
            residual_seconds: f.not_after - now,
            residual: human(f.not_after - now),
            signed_by: if f.is_ca { "(self)".to_string() } else { f.issuer.clone() },
            key_algorithm: store.key_algorithm(name).map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
            within_warning: limit.is_some_and(|l| f.not_after - now < l.as_secs() as i64),
        })
        .collect();
    let users = store
        .user_certificates()?
        .iter()
        .map(|(name, f)| {
            let (user, serial) = name.rsplit_once('/').unwrap_or((name.as_str(), ""));
            UserRow {
                user: user.to_string(),
                serial: serial.to_string(),
                expires: when(f.not_after),
                residual: human(f.not_after - now),
                expired: f.not_after <= now,
            }
        })
        .collect();
    let hosts = if on_hosts {
        let mut o = crate::apply::ApplyOptions::new(target.root()?, crate::artifacts::default_cache_dir());
        o.connect = crate::args::connect_options(false);
        let (diffs, unreachable) = crate::status::deployed_differences(&target.inventory, o)?;
        let differences = diffs
            .into_iter()
            .map(|d| HostRow {
                host: d.host,
                path: d.path,
                deployed: match &d.not_after {
                    Ok(t) => format!("deployed certificate expires in {}", human(t - now)),
                    Err(why) => why.clone(),
                },
            })
            .collect();
        Some(OnHosts { differences, unreachable: unreachable.into_iter().collect() })
    } else {
        None
    };
    let problems = certificates.iter().any(|c| c.within_warning)
        || hosts.as_ref().is_some_and(|h| !h.differences.is_empty() || !h.unreachable.is_empty());
    Ok(Expiration {
        cluster: model.name,
        store: store.root().display().to_string(),
        certificates,
        users,
        hosts,
        problems,
    })
}

impl Expiration {
    /// The tables for people; columns as wide as their longest value.
    fn table(&self) -> String {
        let w = |f: &dyn Fn(&CertRow) -> usize, head: &str| {
            self.certificates.iter().map(f).max().unwrap_or(0).max(head.len())
        };
        let (wn, wb) = (w(&|c| c.name.len(), "CERTIFICATE"), w(&|c| c.signed_by.len(), "SIGNED BY"));
        let mut s = format!(
            "{:<wn$}  {:<20}  {:>9}  {:<wb$}  KEY\n",
            "CERTIFICATE", "EXPIRES", "RESIDUAL", "SIGNED BY"
        );
        for c in &self.certificates {
            s.push_str(&format!(
                "{:<wn$}  {:<20}  {:>9}  {:<wb$}  {}\n",
                c.name, c.expires, c.residual, c.signed_by, c.key_algorithm
            ));
        }
        if !self.users.is_empty() {
            s.push_str("\nUSERS (kubeconfigs issued to people; short-lived by design, not renewed, not counted above)\n");
            let wu = self.users.iter().map(|u| u.user.len() + u.serial.len() + 3).max().unwrap_or(0);
            for u in &self.users {
                s.push_str(&format!("{:<wu$}  {:>9}\n", format!("{} ({})", u.user, u.serial), u.residual));
            }
        }
        if let Some(h) = &self.hosts {
            s.push_str(&format!("\nON THE HOSTS (what is deployed, compared with {})\n", self.store));
            let wh = h
                .differences
                .iter()
                .map(|d| d.host.len())
                .chain(h.unreachable.keys().map(String::len))
                .max()
                .unwrap_or(0);
            for d in &h.differences {
                s.push_str(&format!("{:<wh$}  DIFFERS {} ({})\n", d.host, d.path, d.deployed));
            }
            for (host, e) in &h.unreachable {
                s.push_str(&format!("{host:<wh$}  UNREACHABLE {e}\n"));
            }
            if h.differences.is_empty() && h.unreachable.is_empty() {
                s.push_str("every host's certificates, keys and kubeconfigs match the store\n");
            }
        }
        s
    }

    /// The closing notes on standard error.
    fn notes(&self) {
        let expired = self.users.iter().filter(|u| u.expired).count();
        if expired > 0 {
            eprintln!("{expired} user certificate(s) expired; `kubeforge certs prune-users` removes them");
        }
        let soon = self.certificates.iter().filter(|c| c.within_warning).count();
        if soon > 0 {
            eprintln!(
                "{soon} certificate(s) expire within the warning window; renew with `kubeforge certs renew`"
            );
        }
        if let Some(h) =
            self.hosts.as_ref().filter(|h| !h.differences.is_empty() || !h.unreachable.is_empty())
        {
            let mut hosts: Vec<&str> = h.differences.iter().map(|d| d.host.as_str()).collect();
            hosts.dedup();
            eprintln!(
                "{} file(s) on {} host(s) differ from the store, {} host(s) unreachable; `kubeforge apply` pushes the store's",
                h.differences.len(),
                hosts.len(),
                h.unreachable.len()
            );
        }
    }
}

fn open(t: &PkiTarget) -> Result<(ClusterModel, Store, crate::pki::PkiInputs)> {
    let model = ClusterModel::load(&t.inventory)?;
    let inputs = model.pki_inputs();
    Ok((model.clone(), Store::new(&t.root()?, &model.name), inputs))
}

fn human(secs: i64) -> String {
    if secs <= 0 {
        return "EXPIRED".into();
    }
    let d = secs / 86_400;
    if d >= 365 {
        format!("{}y{}d", d / 365, d % 365)
    } else if d > 0 {
        format!("{d}d")
    } else {
        format!("{}h", secs / 3600)
    }
}

/// How close an expiry must be for every command to warn about it.
pub const WARN_WITHIN_DAYS: i64 = 30;

/// The certificates of `store` that expire within [`WARN_WITHIN_DAYS`] of `now` (unix seconds), as
/// `name (residual)`, soonest first.
pub fn expiring(store: &Store, now: i64) -> Vec<String> {
    let Ok(certs) = store.certificates() else { return Vec::new() };
    let mut soon: Vec<(i64, String)> = certs
        .into_iter()
        .filter(|(_, f)| f.not_after - now < WARN_WITHIN_DAYS * 86_400)
        .map(|(n, f)| (f.not_after, format!("{n} ({})", human(f.not_after - now))))
        .collect();
    soon.sort();
    soon.into_iter().map(|(_, s)| s).collect()
}

/// Prints a warning to stderr when a certificate of the inventory's cluster in `pki_dir` expires within
/// [`WARN_WITHIN_DAYS`] (every command that works on a cluster calls it first). Quiet when the inventory
/// does not load (the command itself reports that) or the store is empty.
pub fn warn_expiring(inventory: &std::path::Path, pki_dir: &std::path::Path) {
    let Ok(loaded) = crate::inventory::load_quietly(inventory).0 else { return };
    let name = loaded.inventory.cluster.name.clone();
    let store = Store::new(pki_dir, &name);
    let soon = expiring(&store, time::OffsetDateTime::now_utc().unix_timestamp());
    if soon.is_empty() {
        return;
    }
    let shown: Vec<&str> = soon.iter().take(8).map(String::as_str).collect();
    eprintln!(
        "warning: {} certificate(s) in {} expire within {WARN_WITHIN_DAYS} days: {}{}; renew them with `kubeforge certs renew all -i {} --apply`",
        soon.len(),
        store.root().display(),
        shown.join(", "),
        if soon.len() > shown.len() { ", ..." } else { "" },
        inventory.display()
    );
}

/// Runs `certs ...`.
pub fn run_certs(cmd: CertsCommand) -> Result<i32> {
    match cmd {
        CertsCommand::Generate(t) => {
            let (_, store, inputs) = open(&t)?;
            // Offline: `certs generate` makes a store for a new cluster. A store made here in front of a live
            // cluster is refused by every command that connects (its CA is not the hosts').
            let r = store.ensure(&inputs, crate::pki::store::NewKeys::Allowed)?;
            for ca in &r.cas_created {
                println!("created   {ca}");
            }
            for (name, why) in &r.issued {
                println!("issued    {name} ({why})");
            }
            println!(
                "{}: {} issued, {} reused, {} CA/key pair(s) created",
                store.root().display(),
                r.issued.len(),
                r.reused.len(),
                r.cas_created.len()
            );
            Ok(0)
        }
        CertsCommand::CheckExpiration { target, warn_within, on_hosts, output } => {
            let limit = match warn_within {
                Some(w) => Some(crate::inventory::validate::parse_duration(&w).map_err(|e| {
                    crate::Error::usage(format!("--warn-within: {e}"), Some("e.g. `30d`, `720h`"))
                })?),
                None => None,
            };
            let doc = expiration(&target, limit, on_hosts)?;
            if output.is_document() {
                crate::output::print(output, "CertificateExpiration", &doc)?;
            } else {
                print!("{}", doc.table());
                doc.notes();
            }
            Ok(if doc.problems { 1 } else { 0 })
        }
        CertsCommand::PruneUsers(t) => {
            let (_, store, _) = open(&t)?;
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let pruned = users::prune_expired(&store, now)?;
            for e in &pruned {
                println!("pruned    {} (serial {}, expired {})", e.user, e.serial, e.expires);
            }
            println!("{}: {} expired user certificate(s) pruned", store.root().display(), pruned.len());
            Ok(0)
        }
        CertsCommand::Renew { names, target, apply, ignore_preflight_errors } => {
            let (_, store, inputs) = open(&target)?;
            for n in store.renew(&inputs, &names)? {
                println!("renewed   {n}");
            }
            if !apply {
                println!("push the renewed certificates to the hosts with `kubeforge apply` (or renew with --apply)");
                return Ok(0);
            }
            let mut o =
                crate::apply::ApplyOptions::new(target.root()?, crate::artifacts::default_cache_dir());
            o.ignore_preflight = ignore_preflight_errors;
            crate::apply::run(&target.inventory, o)
        }
    }
}

/// Checks `--user` and `--group` before anything is read or written.
fn check_user_flags(a: &UserArgs) -> Result<()> {
    let u = a.user.as_str();
    let bad = u.trim().is_empty()
        || u.trim() != u
        || u.chars().any(|c| c.is_control() || matches!(c, '/' | '\'' | '"' | '\\'))
        || u.starts_with("system:");
    if bad {
        return Err(crate::Error::usage(
            format!("--user `{u}` is not a user name kubeforge issues certificates for"),
            Some("a person's name or e-mail: not empty, no `/`, quotes, backslashes or control characters, not a `system:` identity (those belong to the cluster's components)"),
        ));
    }
    for g in &a.groups {
        if g.trim().is_empty() || g.chars().any(char::is_control) {
            return Err(crate::Error::usage(format!("--group `{g}` is not a group name"), None));
        }
        if g == "system:masters" && !a.allow_system_masters {
            return Err(crate::Error::usage(
                "--group system:masters makes a super-user that RBAC cannot restrict and no one can revoke before the certificate expires",
                Some("bind the user to `cluster-admin` with RBAC instead (revocable), or add --allow-system-masters"),
            ));
        }
    }
    Ok(())
}

/// The certificate validity `--ttl` asks for, checked: not zero, not longer than the cluster's leaf
/// validity, not past the CA's end (`ca_not_after`, unix seconds).
fn user_ttl(ttl: &str, max: std::time::Duration, ca_not_after: i64, now: i64) -> Result<std::time::Duration> {
    let d = crate::inventory::validate::parse_duration(ttl)
        .map_err(|e| crate::Error::usage(format!("--ttl: {e}"), Some("e.g. `8h`, `24h`, `30d`")))?;
    if d.is_zero() {
        return Err(crate::Error::usage("--ttl 0 would issue a certificate that is already expired", None));
    }
    if d > max {
        return Err(crate::Error::usage(
            format!("--ttl {ttl} is longer than the cluster's certificate validity ({})", human(max.as_secs() as i64)),
            Some("a person's certificate cannot be revoked: keep it short (and raise `certificates.validity` in the inventory if you must)"),
        ));
    }
    if now + d.as_secs() as i64 > ca_not_after {
        return Err(crate::Error::usage(
            format!("--ttl {ttl} ends after the cluster CA does (in {})", human(ca_not_after - now)),
            Some("a certificate never outlives the CA that signed it; choose a shorter --ttl"),
        ));
    }
    Ok(d)
}

fn issue(a: &UserArgs) -> Result<(ClusterModel, users::UserCredential)> {
    check_user_flags(a)?;
    let (model, store, inputs) = open(&a.target)?;
    let Ok(ca) = store.read("ca.crt") else {
        return Err(crate::Error::msg(
            format!("{} has no cluster CA", store.root().display()),
            Some("run `kubeforge certs generate -i INVENTORY` first"),
        ));
    };
    let ca = crate::pki::store::parse_cert(&ca, &store.root().join("ca.crt"))?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let ttl = user_ttl(&a.ttl, inputs.validity, ca.not_after, now)?;
    let cred = users::issue_user(&store, &inputs, &a.user, &a.groups, ttl)?;
    eprintln!(
        "issued a certificate for `{}` (groups: {}), serial {}, expires {}; recorded in {}",
        cred.entry.user,
        if a.groups.is_empty() { "none".into() } else { a.groups.join(",") },
        cred.entry.serial,
        cred.entry.expires,
        store.root().join("ledger.json").display()
    );
    Ok((model, cred))
}

/// Runs `kubeconfig`.
pub fn run_kubeconfig(c: KubeconfigCommand) -> Result<i32> {
    match c {
        KubeconfigCommand::Admin(a) => run_admin(a),
        KubeconfigCommand::User(a) => {
            let (_, cred) = issue(&a)?;
            match &a.out {
                Some(p) => write_private(p, cred.kubeconfig.as_bytes())?,
                None => print!("{}", cred.kubeconfig),
            }
            Ok(0)
        }
        KubeconfigCommand::Bundle(a) => run_bundle(a),
    }
}

/// Writes `bytes` to `path` with mode 0600 through a temporary file beside it (a reader never sees half a
/// file; an existing file's other readers lose nothing until the rename).
fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let err = |e| crate::Error::io(format!("cannot write {}", path.display()), e);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    crate::fsutil::replace_file(path, bytes, 0o600, true).map_err(err)
}

/// The kubeconfig file `--merge` writes to: the given one, the first of `$KUBECONFIG`, or `~/.kube/config`.
fn merge_target(given: &std::path::Path) -> Result<PathBuf> {
    if !given.as_os_str().is_empty() {
        return Ok(given.to_path_buf());
    }
    if let Some(first) = std::env::var_os("KUBECONFIG")
        .and_then(|v| std::env::split_paths(&v).find(|p| !p.as_os_str().is_empty()))
    {
        return Ok(first);
    }
    dirs::home_dir().map(|h| h.join(".kube/config")).ok_or_else(|| {
        crate::Error::usage(
            "no home directory to find ~/.kube/config in",
            Some("give the file: `--merge FILE`"),
        )
    })
}

/// `kubeforge kubeconfig admin`.
fn run_admin(a: AdminArgs) -> Result<i32> {
    let (model, store, _) = open(&a.target)?;
    let path = store.root().join("admin.conf");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        crate::Error::msg(
            format!("cannot read {}: {e}", path.display()),
            Some("the admin kubeconfig is written by `kubeforge apply` (or `certs generate`); check -i and --pki-dir"),
        )
    })?;
    match (&a.out, &a.merge) {
        (Some(out), _) => {
            write_private(out, text.as_bytes())?;
            eprintln!(
                "kubeconfig: {} written (cluster-admin of `{}`; keep it private)",
                out.display(),
                model.name
            );
        }
        (None, Some(given)) => {
            let target = merge_target(given)?;
            let existing = match std::fs::read_to_string(&target) {
                Ok(t) => Some(t),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(crate::Error::io(format!("reading {}", target.display()), e)),
            };
            let (merged, context) =
                merge_kubeconfig(existing.as_deref(), &text, &model.name).map_err(|e| {
                    crate::Error::msg(
                        format!("{}: {e}", target.display()),
                        Some("fix or move that file, or write to another with --out"),
                    )
                })?;
            write_private(&target, merged.as_bytes())?;
            println!("kubeconfig: context `{context}` merged into {}", target.display());
        }
        (None, None) => print!("{text}"),
    }
    Ok(0)
}

/// Merges kubeconfig `ours` (one cluster, user and context) into `existing`, renamed after `cluster`
/// (user `<cluster>-admin`, context `<cluster>-admin@<cluster>`, so two clusters' admins never collide):
/// entries of the same names are replaced, every other entry and field is kept. The current context is set
/// only when `existing` has none. Returns the text and the context's name.
pub fn merge_kubeconfig(
    existing: Option<&str>,
    ours: &str,
    cluster: &str,
) -> std::result::Result<(String, String), String> {
    use serde_yaml::{Mapping, Value};
    let ours: Value =
        serde_yaml::from_str(ours).map_err(|e| format!("the admin kubeconfig does not parse: {e}"))?;
    let mut doc: Value = match existing.map(str::trim).filter(|t| !t.is_empty()) {
        Some(t) => serde_yaml::from_str(t).map_err(|e| format!("not a kubeconfig: {e}"))?,
        None => serde_yaml::from_str(
            "apiVersion: v1
kind: Config
preferences: {}
",
        )
        .expect("literal"),
    };
    let map = doc.as_mapping_mut().ok_or("not a kubeconfig: the document is not a mapping")?;
    let (user, context) = (format!("{cluster}-admin"), format!("{cluster}-admin@{cluster}"));
    let first = |key: &str| -> std::result::Result<Value, String> {
        ours.get(key)
            .and_then(Value::as_sequence)
            .and_then(|s| s.first())
            .cloned()
            .ok_or_else(|| format!("the admin kubeconfig has no {key}"))
    };
    let mut entry = |key: &str, name: &str, mut value: Value| -> std::result::Result<(), String> {
        value.as_mapping_mut().ok_or("malformed entry")?.insert("name".into(), name.into());
        let list = map.entry(key.into()).or_insert_with(|| Value::Sequence(Vec::new()));
        if list.is_null() {
            *list = Value::Sequence(Vec::new());
        }
        let seq = list.as_sequence_mut().ok_or_else(|| format!("not a kubeconfig: `{key}` is not a list"))?;
        seq.retain(|e| e.get("name").and_then(Value::as_str) != Some(name));
        seq.push(value);
        Ok(())
    };
    entry("clusters", cluster, first("clusters")?)?;
    entry("users", &user, first("users")?)?;
    let mut ctx = Mapping::new();
    ctx.insert("cluster".into(), cluster.into());
    ctx.insert("user".into(), user.as_str().into());
    let mut named = Mapping::new();
    named.insert("context".into(), Value::Mapping(ctx));
    entry("contexts", &context, Value::Mapping(named))?;
    let current = map.get("current-context").and_then(Value::as_str).unwrap_or("");
    if current.is_empty() {
        map.insert("current-context".into(), context.as_str().into());
    }
    let text = serde_yaml::to_string(&doc).map_err(|e| e.to_string())?;
    Ok((text, context))
}

/// Runs `bundle`.
pub fn run_bundle(a: UserArgs) -> Result<i32> {
    let (model, cred) = issue(&a)?;
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from(format!("{}-{}.tar.gz", model.name, a.user)));
    users::write_bundle(&out, &cred, &model.name)?;
    println!("{}", out.display());
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store made for a one-node cluster `c1` in a temporary directory.
    fn one_node_store() -> (tempfile::TempDir, ClusterModel, Store) {
        let dir = tempfile::tempdir().unwrap();
        let inv = "cluster: {name: c1, kubernetesVersion: v1.35.7}\nhosts:\n- {name: cp1, address: 10.0.0.1, roles: [control-plane, etcd, worker]}\n";
        let model =
            ClusterModel::derive(&crate::inventory::parse(std::path::Path::new("i.yaml"), inv).unwrap());
        let store = Store::new(dir.path(), "c1");
        store.ensure(&model.pki_inputs(), crate::pki::store::NewKeys::Allowed).unwrap();
        (dir, model, store)
    }

    #[test]
    fn certificates_near_expiry_are_listed_soonest_first() {
        let (dir, _model, store) = one_node_store();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!(expiring(&store, now).is_empty(), "a fresh PKI: nothing near expiry");
        // A year from now, every one-year leaf is within the window; the ten-year CAs are not.
        let later = expiring(&store, now + 360 * 86_400);
        assert!(!later.is_empty());
        assert!(later.iter().any(|c| c.starts_with("apiserver (")), "{later:?}");
        assert!(!later.iter().any(|c| c.starts_with("ca (")), "{later:?}");
        assert!(expiring(&Store::new(dir.path(), "none"), now).is_empty(), "no store: quiet");
    }

    fn user_args(user: &str, groups: &[&str], allow: bool) -> UserArgs {
        UserArgs {
            target: PkiTarget { inventory: "i.yaml".into(), pki_dir: None },
            user: user.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ttl: "24h".into(),
            allow_system_masters: allow,
            out: None,
        }
    }

    #[test]
    fn user_flags_are_checked_as_flags_and_system_masters_needs_its_own() {
        for bad in ["", "''", "alice/x", "system:admin", " bob", "a\u{7}"] {
            let e = check_user_flags(&user_args(bad, &[], false)).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
            assert!(e.to_string().starts_with("--user"), "{e}");
            assert!(!e.to_string().contains("ledger"), "the ledger is not to blame: {e}");
        }
        assert!(check_user_flags(&user_args("alice@example.com", &["dev"], false)).is_ok());
        let e = check_user_flags(&user_args("alice", &["system:masters"], false)).unwrap_err();
        assert!(
            e.to_string().contains("system:masters") && e.hint().unwrap().contains("--allow-system-masters")
        );
        assert!(check_user_flags(&user_args("alice", &["system:masters"], true)).is_ok());
    }

    #[test]
    fn a_user_ttl_is_never_zero_longer_than_the_clusters_validity_or_past_the_ca() {
        let year = std::time::Duration::from_secs(365 * 86_400);
        let now = 1_000_000;
        let ca_end = now + 10 * 365 * 86_400;
        assert_eq!(user_ttl("24h", year, ca_end, now).unwrap(), std::time::Duration::from_secs(86_400));
        for (ttl, says) in [("0s", "already expired"), ("100y", "longer than"), ("nonsense", "--ttl")] {
            let e = user_ttl(ttl, year, ca_end, now).unwrap_err();
            assert!(e.to_string().contains(says) && e.exit_code() == 2, "{ttl}: {e}");
        }
        let e = user_ttl("300d", year, now + 86_400 * 30, now).unwrap_err();
        assert!(e.to_string().contains("after the cluster CA"), "{e}");
    }

    #[test]
    fn peoples_certificates_are_not_the_clusters_health_and_expired_ones_are_pruned() {
        let (_dir, model, store) = one_node_store();
        let inputs = model.pki_inputs();
        let day = std::time::Duration::from_secs(86_400);
        users::issue_user(&store, &inputs, "alice", &["dev".into()], day).unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!(
            expiring(&store, now).is_empty(),
            "a 24 h kubeconfig is no cluster alarm: {:?}",
            expiring(&store, now)
        );
        assert!(!store.certificates().unwrap().iter().any(|(n, _)| n.starts_with("users/")));
        assert_eq!(store.user_certificates().unwrap().len(), 1);
        assert!(users::prune_expired(&store, now).unwrap().is_empty(), "not expired yet");
        let pruned = users::prune_expired(&store, now + 2 * 86_400).unwrap();
        assert_eq!(pruned.len(), 1);
        assert!(store.user_certificates().unwrap().is_empty());
        assert!(users::read_ledger(&store).unwrap().is_empty());
    }
}
