//! Certificates for people: `kubeforge kubeconfig` issues a short-lived client certificate and kubeconfig
//! for a user and records it in `ledger.json` (Kubernetes cannot revoke certificates, so the ledger is how an
//! admin knows what is out there); `kubeforge bundle` packs one into a `.tar.gz` with env scripts for bash/zsh,
//! fish, PowerShell and cmd.

use super::issue::{self, Key};
use super::spec::{CaId, CertSpec, Usage};
use super::store::{parse_cert, Store};
use super::{PkiError, PkiInputs};
use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

/// One issued user certificate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LedgerEntry {
    /// User (certificate CN).
    pub user: String,
    /// Groups (certificate O).
    pub groups: Vec<String>,
    /// Serial number, hex.
    pub serial: String,
    /// SHA-256 fingerprint of the certificate DER, hex.
    pub sha256: String,
    /// Issued, RFC 3339.
    pub issued: String,
    /// Expires, RFC 3339.
    pub expires: String,
}

/// A freshly issued user credential.
pub struct UserCredential {
    /// The ledger entry.
    pub entry: LedgerEntry,
    /// Kubeconfig YAML.
    pub kubeconfig: String,
    /// Cluster CA PEM.
    pub ca_pem: Vec<u8>,
    /// Certificate PEM.
    pub cert_pem: String,
    /// Key PEM (secret).
    pub key_pem: String,
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// Reads the ledger (empty when none).
pub fn read_ledger(store: &Store) -> Result<Vec<LedgerEntry>, PkiError> {
    let p = store.root().join("ledger.json");
    match std::fs::read(&p) {
        Ok(b) => {
            serde_json::from_slice(&b).map_err(|e| PkiError::Invalid { path: p, message: e.to_string() })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(PkiError::io(format!("cannot read {}", p.display()), e)),
    }
}

/// Issues a client certificate for `user` in `groups`, valid for `ttl`, records it in the ledger, and keeps
/// a copy under `users/<user>/<serial>.crt` (the key is not kept: it is the user's).
pub fn issue_user(
    store: &Store,
    i: &PkiInputs,
    user: &str,
    groups: &[String],
    ttl: Duration,
) -> Result<UserCredential, PkiError> {
    if user.is_empty() || user.contains(['/', '\0']) || user.starts_with("system:") {
        return Err(PkiError::Invalid {
            path: store.root().join("ledger.json"),
            message: format!(
                "`{user}` is not a user name kubeforge issues (no `/`, not a `system:` identity)"
            ),
        });
    }
    let spec = CertSpec {
        name: format!("users/{user}"),
        ca: CaId::Cluster,
        common_name: user.to_owned(),
        organizations: groups.to_vec(),
        usage: Usage::Client,
        dns: vec![],
        ips: vec![],
    };
    let key = Key::generate(i.key_algorithm)?;
    let cert_pem = issue::leaf_certificate(&spec, &key, &store.signer(CaId::Cluster)?, ttl)?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).expect("just issued");
    let (_, cert) = x509_parser::parse_x509_certificate(&pem.contents).expect("just issued");
    let facts = parse_cert(cert_pem.as_bytes(), Path::new("user"))?;
    let entry = LedgerEntry {
        user: user.into(),
        groups: groups.to_vec(),
        serial: cert.raw_serial_as_string().replace(':', ""),
        sha256: hex::encode(sha2::Sha256::digest(&pem.contents)),
        issued: rfc3339(facts.not_before + issue::BACKDATE.as_secs() as i64),
        expires: rfc3339(facts.not_after),
    };
    let mut ledger = read_ledger(store)?;
    ledger.push(entry.clone());
    store.write(&format!("users/{user}/{}.crt", entry.serial), cert_pem.as_bytes(), 0o644)?;
    store.write("ledger.json", serde_json::to_string_pretty(&ledger).expect("json").as_bytes(), 0o600)?;
    let ca_pem = store.trust_pem(super::spec::CaId::Cluster)?;
    let kubeconfig = super::kubeconfig::Kubeconfig::with_client_cert(
        &i.cluster_name,
        &i.api_server_url,
        &ca_pem,
        user,
        cert_pem.as_bytes(),
        key.pem().as_bytes(),
    )
    .to_yaml();
    Ok(UserCredential { entry, kubeconfig, ca_pem, cert_pem, key_pem: key.pem() })
}

/// Removes the expired entries (`now`, unix seconds) from the ledger and their certificate copies from
/// `users/`; returns them. Entries whose expiry cannot be read are kept.
pub fn prune_expired(store: &Store, now: i64) -> Result<Vec<LedgerEntry>, PkiError> {
    let ledger = read_ledger(store)?;
    let expired = |e: &LedgerEntry| {
        time::OffsetDateTime::parse(&e.expires, &time::format_description::well_known::Rfc3339)
            .is_ok_and(|t| t.unix_timestamp() <= now)
    };
    let (gone, kept): (Vec<LedgerEntry>, Vec<LedgerEntry>) = ledger.into_iter().partition(expired);
    if gone.is_empty() {
        return Ok(gone);
    }
    store.write("ledger.json", serde_json::to_string_pretty(&kept).expect("json").as_bytes(), 0o600)?;
    for e in &gone {
        let p = store.root().join(format!("users/{}/{}.crt", e.user, e.serial));
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => return Err(PkiError::io(format!("cannot remove {}", p.display()), err)),
        }
        let _ = std::fs::remove_dir(store.root().join(format!("users/{}", e.user)));
    }
    Ok(gone)
}

/// `env.sh`: bash and zsh (`source env.sh`).
pub const ENV_SH: &str = r#"# Point kubectl at this bundle: source env.sh (bash or zsh)
if [ -n "${BASH_SOURCE:-}" ]; then _kf_src="${BASH_SOURCE[0]}"; elif [ -n "${ZSH_VERSION:-}" ]; then _kf_src="${(%):-%x}"; else _kf_src="$0"; fi
export KUBECONFIG="$(cd "$(dirname "$_kf_src")" && pwd)/kubeconfig"
unset _kf_src
"#;
/// `env.fish`: `source env.fish`.
pub const ENV_FISH: &str = r#"# Point kubectl at this bundle: source env.fish
set -gx KUBECONFIG (cd (dirname (status --current-filename)); and pwd)/kubeconfig
"#;
/// `env.ps1`: `. .\env.ps1`.
pub const ENV_PS1: &str = "# Point kubectl at this bundle: . .\\env.ps1\r\n$env:KUBECONFIG = Join-Path $PSScriptRoot 'kubeconfig'\r\n";
/// `env.cmd`: `call env.cmd`.
pub const ENV_CMD: &str =
    "@echo off\r\nrem Point kubectl at this bundle: call env.cmd\r\nset \"KUBECONFIG=%~dp0kubeconfig\"\r\n";

/// Writes the client bundle `out` (`.tar.gz`) with a top-level directory `<cluster>-<user>/`.
pub fn write_bundle(out: &Path, cred: &UserCredential, cluster: &str) -> Result<(), PkiError> {
    let dir = format!("{cluster}-{}", cred.entry.user);
    let readme = format!(
        "Kubernetes access for {user} to cluster {cluster}\n\nGroups: {groups}\nExpires: {exp}\nCertificate serial: {serial}\n\n\
         kubeconfig   the kubeconfig (CA, certificate and key embedded)\nca.pem       the cluster CA\n\
         {user}.crt / {user}.key   the client certificate and its key (keep the key private)\n\n\
         Use it:\n  bash/zsh:    source env.sh\n  fish:        source env.fish\n  PowerShell:  . .\\env.ps1\n  cmd:         call env.cmd\nthen: kubectl get nodes\n",
        user = cred.entry.user,
        groups = if cred.entry.groups.is_empty() { "(none)".to_string() } else { cred.entry.groups.join(", ") },
        exp = cred.entry.expires,
        serial = cred.entry.serial,
    );
    let files: Vec<(String, &[u8], u32)> = vec![
        ("README.txt".into(), readme.as_bytes(), 0o644),
        ("kubeconfig".into(), cred.kubeconfig.as_bytes(), 0o600),
        ("ca.pem".into(), &cred.ca_pem, 0o644),
        (format!("{}.crt", cred.entry.user), cred.cert_pem.as_bytes(), 0o644),
        (format!("{}.key", cred.entry.user), cred.key_pem.as_bytes(), 0o600),
        ("env.sh".into(), ENV_SH.as_bytes(), 0o644),
        ("env.fish".into(), ENV_FISH.as_bytes(), 0o644),
        ("env.ps1".into(), ENV_PS1.as_bytes(), 0o644),
        ("env.cmd".into(), ENV_CMD.as_bytes(), 0o644),
    ];
    let io = |e: std::io::Error| PkiError::io(format!("cannot write {}", out.display()), e);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(out)
        .map_err(io)?;
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(f, flate2::Compression::default()));
    let mtime = time::OffsetDateTime::now_utc().unix_timestamp() as u64;
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(0o700);
    h.set_size(0);
    h.set_mtime(mtime);
    tar.append_data(&mut h, format!("{dir}/"), std::io::empty()).map_err(io)?;
    for (name, data, mode) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(mtime);
        tar.append_data(&mut h, format!("{dir}/{name}"), data).map_err(io)?;
    }
    tar.into_inner().and_then(|gz| gz.finish()).map_err(io)?;
    Ok(())
}
