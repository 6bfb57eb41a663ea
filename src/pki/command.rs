//! The PKI commands: `certs generate|check-expiration|renew`, `kubeconfig` and `bundle`.

use super::store::Store;
use super::users;
use crate::model::ClusterModel;
use crate::Result;
use clap::{Args, Subcommand};
use std::path::PathBuf;

/// Where the PKI lives and which cluster.
#[derive(Debug, Args)]
pub struct PkiTarget {
    /// The inventory file.
    #[arg(short, long)]
    pub inventory: PathBuf,
    /// Directory holding `<cluster>/` PKI directories (default: `pki/` beside the inventory file).
    #[arg(long)]
    pub pki_dir: Option<PathBuf>,
}

impl PkiTarget {
    /// The PKI directory (see [`super::resolve_root`]).
    pub fn root(&self) -> Result<PathBuf> {
        super::resolve_root(&self.inventory, self.pki_dir.as_deref())
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
    },
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
        #[arg(long, value_delimiter = ',', requires = "apply")]
        ignore_preflight_errors: Vec<String>,
    },
}

/// `kubeforge kubeconfig` / `kubeforge bundle`.
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
    /// Validity of the certificate.
    #[arg(long, default_value = "24h")]
    pub ttl: String,
    /// Output file (kubeconfig: default stdout; bundle: default `<cluster>-<user>.tar.gz`).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

fn open(t: &PkiTarget) -> Result<(ClusterModel, Store, super::PkiInputs)> {
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
            let r = store.ensure(&inputs, super::store::NewKeys::Allowed)?;
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
        CertsCommand::CheckExpiration { target, warn_within, on_hosts } => {
            let (_, store, _) = open(&target)?;
            let certs = store.certificates()?;
            if certs.is_empty() {
                return Err(crate::Error::msg(
                    format!("{} holds no certificates", store.root().display()),
                    Some("run `kubeforge certs generate -i INVENTORY` first"),
                ));
            }
            let limit = match warn_within {
                Some(w) => Some(
                    crate::inventory::validate::parse_duration(&w).map_err(|e| crate::Error::msg(e, None))?,
                ),
                None => None,
            };
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            println!("{:<34} {:<22} {:>10}  {:<16} KEY", "CERTIFICATE", "EXPIRES", "RESIDUAL", "SIGNED BY");
            let mut soon = 0;
            for (name, f) in &certs {
                let exp = time::OffsetDateTime::from_unix_timestamp(f.not_after)
                    .ok()
                    .and_then(|t| {
                        t.format(time::macros::format_description!(
                            "[year]-[month]-[day] [hour]:[minute] UTC"
                        ))
                        .ok()
                    })
                    .unwrap_or_default();
                let by = if f.is_ca { "(self)".to_string() } else { f.issuer.clone() };
                let alg = store.key_algorithm(name).map(|a| a.to_string()).unwrap_or_else(|| "-".into());
                println!("{name:<34} {exp:<22} {:>10}  {by:<16} {alg}", human(f.not_after - now));
                if limit.is_some_and(|l| f.not_after - now < l.as_secs() as i64) {
                    soon += 1;
                }
            }
            let mut code = 0;
            if soon > 0 {
                eprintln!("{soon} certificate(s) expire within the warning window; renew with `kubeforge certs renew`");
                code = 1;
            }
            if on_hosts {
                let mut o =
                    crate::apply::ApplyOptions::new(target.root()?, crate::artifacts::default_cache_dir());
                o.connect = crate::cli::connect_options(false);
                let (diffs, unreachable) = crate::status::deployed_differences(&target.inventory, o)?;
                println!();
                println!("ON THE HOSTS (what is deployed, compared with {})", store.root().display());
                let mut hosts: Vec<&str> = diffs.iter().map(|d| d.host.as_str()).collect();
                hosts.dedup();
                for d in &diffs {
                    let what = match &d.not_after {
                        Ok(t) => format!("deployed certificate expires in {}", human(t - now)),
                        Err(why) => why.clone(),
                    };
                    println!("{:<14} DIFFERS {} ({what})", d.host, d.path);
                }
                for (h, e) in &unreachable {
                    println!("{h:<14} UNREACHABLE {e}");
                }
                if diffs.is_empty() && unreachable.is_empty() {
                    println!("every host's certificates, keys and kubeconfigs match the store");
                } else {
                    eprintln!(
                        "{} file(s) on {} host(s) differ from the store, {} host(s) unreachable; `kubeforge apply` pushes the store's",
                        diffs.len(),
                        hosts.len(),
                        unreachable.len()
                    );
                    code = 1;
                }
            }
            Ok(code)
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
            let mut o = crate::apply::ApplyOptions::new(target.root()?, crate::artifacts::default_cache_dir());
            o.ignore_preflight = ignore_preflight_errors;
            crate::apply::run(&target.inventory, o)
        }
    }
}

fn issue(a: &UserArgs) -> Result<(ClusterModel, users::UserCredential)> {
    let (model, store, inputs) = open(&a.target)?;
    let ttl = crate::inventory::validate::parse_duration(&a.ttl).map_err(|e| crate::Error::msg(e, None))?;
    if !store.root().join("ca.crt").exists() {
        return Err(crate::Error::msg(
            format!("{} has no cluster CA", store.root().display()),
            Some("run `kubeforge certs generate -i INVENTORY` first"),
        ));
    }
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
pub fn run_kubeconfig(a: UserArgs) -> Result<i32> {
    let (_, cred) = issue(&a)?;
    match &a.output {
        Some(p) => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(p)
                .map_err(|e| crate::Error::io(format!("cannot write {}", p.display()), e))?;
            f.write_all(cred.kubeconfig.as_bytes())
                .map_err(|e| crate::Error::io(format!("cannot write {}", p.display()), e))?;
        }
        None => print!("{}", cred.kubeconfig),
    }
    Ok(0)
}

/// Runs `bundle`.
pub fn run_bundle(a: UserArgs) -> Result<i32> {
    let (model, cred) = issue(&a)?;
    let out = a.output.clone().unwrap_or_else(|| PathBuf::from(format!("{}-{}.tar.gz", model.name, a.user)));
    users::write_bundle(&out, &cred, &model.name)?;
    println!("{}", out.display());
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_near_expiry_are_listed_soonest_first() {
        let dir = tempfile::tempdir().unwrap();
        let inv = "cluster: {name: c1, kubernetesVersion: v1.35.7}\nhosts:\n- {name: cp1, address: 10.0.0.1, roles: [control-plane, etcd, worker]}\n";
        let model =
            ClusterModel::derive(&crate::inventory::parse(std::path::Path::new("i.yaml"), inv).unwrap());
        let store = Store::new(dir.path(), "c1");
        store.ensure(&model.pki_inputs(), crate::pki::store::NewKeys::Allowed).unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!(expiring(&store, now).is_empty(), "a fresh PKI: nothing near expiry");
        // A year from now, every one-year leaf is within the window; the ten-year CAs are not.
        let later = expiring(&store, now + 360 * 86_400);
        assert!(!later.is_empty());
        assert!(later.iter().any(|c| c.starts_with("apiserver (")), "{later:?}");
        assert!(!later.iter().any(|c| c.starts_with("ca (")), "{later:?}");
        assert!(expiring(&Store::new(dir.path(), "none"), now).is_empty(), "no store: quiet");
    }
}
