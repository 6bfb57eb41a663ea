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
    /// Directory holding `<cluster>/` PKI directories.
    #[arg(long, default_value = "pki")]
    pub pki_dir: PathBuf,
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
    },
    /// Re-issue certificates now (keeping their keys) and rewrite the kubeconfigs that embed them.
    Renew {
        /// Certificate names (as `check-expiration` lists them), or `all`.
        #[arg(required = true)]
        names: Vec<String>,
        /// Where.
        #[command(flatten)]
        target: PkiTarget,
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
    Ok((model.clone(), Store::new(&t.pki_dir, &model.name), inputs))
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

/// Runs `certs ...`.
pub fn run_certs(cmd: CertsCommand) -> Result<i32> {
    match cmd {
        CertsCommand::Generate(t) => {
            let (_, store, inputs) = open(&t)?;
            let r = store.ensure(&inputs)?;
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
        CertsCommand::CheckExpiration { target, warn_within } => {
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
            if soon > 0 {
                eprintln!("{soon} certificate(s) expire within the warning window; renew with `kubeforge certs renew`");
                return Ok(1);
            }
            Ok(0)
        }
        CertsCommand::Renew { names, target } => {
            let (_, store, inputs) = open(&target)?;
            for n in store.renew(&inputs, &names)? {
                println!("renewed   {n}");
            }
            println!("push the renewed certificates to the hosts with `kubeforge apply`");
            Ok(0)
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
