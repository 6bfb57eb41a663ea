//! The service-account key pair in the PKI store (`sa.key`, `sa.pub`) and its rotation's record.
//!
//! kube-apiserver verifies service-account tokens with every public key of `--service-account-key-file`
//! (one PEM file may hold several keys, as upstream's flag documents; kubeforge renders one file, `sa.pub`)
//! and signs the tokens it issues (TokenRequest: every projected token a kubelet mounts) with
//! `--service-account-signing-key-file` (`sa.key`); kube-controller-manager signs the legacy token Secrets
//! with `--service-account-private-key-file` (`sa.key` too). The paths never change; what the files hold does.
//!
//! A rotation ([`SaRotation`], `secrets/sa-rotation.json`, 0600, written atomically and forced to disk) holds
//! the old private key, the new one, the step reached and, once every control plane signs with the new key,
//! when that happened and until when tokens signed with the old key may still be valid. As long as the record
//! exists it alone decides what `sa.key` and `sa.pub` hold on the control planes ([`SaKeys::signing_key`],
//! [`SaKeys::verifying_keys`]), so `apply` in the middle of a rotation renders the step the rotation last
//! rolled out and never rolls it back, and a backup taken then carries both keys:
//! - `trust-both`: `sa.pub` holds the old and the new public key, `sa.key` is the old key (still signing);
//! - `sign-new`: `sa.pub` unchanged (both keys), `sa.key` is the new key (apiservers and controller-manager
//!   sign with it);
//! - `drop-old`: `sa.pub` holds the new public key alone, `sa.key` the new key.
//!
//! The rotation ends by keeping the old key aside (`secrets/retired/sa-<kid>.key`), writing the new pair as
//! the store's `sa.key`/`sa.pub`, and removing the record last: an interrupt anywhere leaves the record, and a
//! re-run finishes the same rotation. `<kid>` is the key id upstream puts in every token's header (base64url
//! of the SHA-256 of the public key's DER).

use crate::pki::issue::Key;
use crate::pki::store::Store;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A service-account key rotation in progress, relative to the store.
pub const ROTATION_FILE: &str = "secrets/sa-rotation.json";
/// Where the keys rotations replaced are kept (`sa-<kid>.key`).
pub const RETIRED_DIR: &str = "secrets/retired";
/// How long the kubelet asks a projected service-account token (`kube-api-access-*`) to live: upstream's
/// 3607 s. kubeforge renders `--service-account-extend-token-expiration=false`, so it lives no longer.
pub const PROJECTED_TOKEN_LIFETIME: Duration = Duration::from_secs(3607);
/// Added to a token lifetime for the clocks of the control planes (a token's `exp` is the issuing
/// apiserver's clock; another one checks it against its own).
pub const CLOCK_MARGIN: Duration = Duration::from_secs(5 * 60);
/// How long upstream extends a projected token when `--service-account-extend-token-expiration` is true.
pub const EXTENDED_TOKEN_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

/// How far a rotation got: each step is a pair of files rolled out to every control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SaStep {
    /// Both public keys verify, the old key signs.
    TrustBoth,
    /// Both public keys verify, the new key signs (apiservers and controller-manager).
    SignNew,
    /// The new public key alone verifies; then the store switches to the new pair.
    DropOld,
}

impl SaStep {
    /// The step's name in reports, the record and the workflow's stages.
    pub fn name(self) -> &'static str {
        match self {
            SaStep::TrustBoth => "trust-both",
            SaStep::SignNew => "sign-new",
            SaStep::DropOld => "drop-old",
        }
    }
}

/// A rotation in progress, as `secrets/sa-rotation.json` records it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SaRotation {
    /// The step whose files are (being) rolled out.
    pub step: SaStep,
    /// The key being replaced (PKCS#8 PEM): the store's `sa.key` when the rotation began.
    pub old: String,
    /// The key replacing it (PKCS#8 PEM).
    pub new: String,
    /// When the last control plane began signing with the new key (seconds since the epoch); set once
    /// `sign-new` is rolled out everywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_new_since: Option<u64>,
    /// Until when a token signed with the old key may be valid (seconds since the epoch): `signing_new_since`
    /// plus the token wait bound ([`token_wait`]); the old key is dropped only after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_tokens_valid_until: Option<u64>,
}

impl std::fmt::Debug for SaRotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaRotation")
            .field("step", &self.step)
            .field("old", &key_id(&self.old).unwrap_or_default())
            .field("new", &key_id(&self.new).unwrap_or_default())
            .field("signing_new_since", &self.signing_new_since)
            .field("old_tokens_valid_until", &self.old_tokens_valid_until)
            .finish()
    }
}

/// The cluster's service-account keys: the store's pair, and a rotation when one is in progress.
#[derive(Clone, PartialEq, Eq)]
pub struct SaKeys {
    /// `sa.key` as the store holds it.
    pub key: Vec<u8>,
    /// `sa.pub` as the store holds it.
    pub public: Vec<u8>,
    /// A rotation in progress.
    pub rotation: Option<SaRotation>,
}

impl std::fmt::Debug for SaKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaKeys").field("key", &"REDACTED").field("rotation", &self.rotation).finish()
    }
}

fn parse_key(pem: &str, what: &str) -> Result<Key> {
    Key::from_pem(pem, std::path::Path::new(what)).map_err(Error::from)
}

/// The public half of a private key (SPKI PEM), as `sa.pub` holds it.
pub fn public_pem(private: &str) -> Result<String> {
    Ok(parse_key(private, "service-account key")?.public_pem())
}

/// The key id upstream writes into the header of every token a key signs: base64url (no padding) of the
/// SHA-256 of the public key's DER (SubjectPublicKeyInfo).
pub fn key_id(private: &str) -> Result<String> {
    use base64::Engine;
    use sha2::Digest;
    let k = parse_key(private, "service-account key")?;
    let spki = rcgen::PublicKeyData::subject_public_key_info(&k.0);
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(spki)))
}

/// The algorithm of a private key, as kubeforge names it (`ecdsa-p256`).
pub fn algorithm(private: &str) -> Result<crate::pki::KeyAlgorithm> {
    parse_key(private, "service-account key")?.algorithm().ok_or_else(|| {
        Error::msg("the service-account key is of an algorithm kubeforge does not issue", None)
    })
}

impl SaKeys {
    /// What the control planes' `sa.key` holds: the store's key, or the rotation step's signing key.
    pub fn signing_key(&self) -> Vec<u8> {
        match &self.rotation {
            None => self.key.clone(),
            Some(r) => match r.step {
                SaStep::TrustBoth => r.old.as_bytes().to_vec(),
                SaStep::SignNew | SaStep::DropOld => r.new.as_bytes().to_vec(),
            },
        }
    }

    /// What the control planes' `sa.pub` holds: the store's public key, or the rotation step's keys (old
    /// then new while both verify; the new one alone at `drop-old`).
    pub fn verifying_keys(&self) -> Result<Vec<u8>> {
        match &self.rotation {
            None => Ok(self.public.clone()),
            Some(r) => match r.step {
                SaStep::TrustBoth | SaStep::SignNew => {
                    Ok(format!("{}{}", public_pem(&r.old)?, public_pem(&r.new)?).into_bytes())
                }
                SaStep::DropOld => Ok(public_pem(&r.new)?.into_bytes()),
            },
        }
    }
}

fn damaged(store: &Store, file: &str, why: String) -> Error {
    Error::msg(
        format!("{}: {why}", store.root().join(file).display()),
        Some("bring the store back from a backup (`kubeforge restore --from ARCHIVE`); a new service-account key made now would invalidate every token in the cluster"),
    )
}

/// The store's service-account keys and the rotation in progress. A record that cannot be read, whose keys
/// are not keys, or that is not of the store's key (neither its old nor its new key is `sa.key`) stops the
/// run. `sa.key` and `sa.pub` must exist (`Store::ensure` makes or refuses them first).
pub fn load(store: &Store) -> Result<SaKeys> {
    let key = store.read("sa.key")?;
    let public = store.read("sa.pub")?;
    let path = store.root().join(ROTATION_FILE);
    let rotation = match std::fs::read(&path) {
        Ok(text) => {
            let r: SaRotation = serde_json::from_slice(&text)
                .map_err(|e| damaged(store, ROTATION_FILE, format!("not a rotation record ({e})")))?;
            let (old, new) = (
                key_id(&r.old).map_err(|e| damaged(store, ROTATION_FILE, format!("its old key: {e}")))?,
                key_id(&r.new).map_err(|e| damaged(store, ROTATION_FILE, format!("its new key: {e}")))?,
            );
            if old == new {
                return Err(damaged(store, ROTATION_FILE, "its old and new keys are the same key".into()));
            }
            let current = key_id(&String::from_utf8_lossy(&key))
                .map_err(|e| damaged(store, "sa.key", e.to_string()))?;
            if current != old && current != new {
                return Err(damaged(
                    store,
                    ROTATION_FILE,
                    "the rotation it records is not of the store's sa.key".into(),
                ));
            }
            Some(r)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    Ok(SaKeys { key, public, rotation })
}

/// The rotation to start (a dry run shows it without writing; a run [`record`]s it): a new key of the same
/// algorithm as the store's, or the recorded rotation.
pub fn plan_rotation(keys: &SaKeys) -> Result<SaRotation> {
    if let Some(r) = &keys.rotation {
        return Ok(r.clone());
    }
    let old = String::from_utf8_lossy(&keys.key).into_owned();
    let alg = parse_key(&old, "sa.key")?.algorithm().unwrap_or(crate::pki::KeyAlgorithm::EcdsaP256);
    let new = Key::generate(alg).map_err(Error::from)?.pem();
    Ok(SaRotation {
        step: SaStep::TrustBoth,
        old,
        new,
        signing_new_since: None,
        old_tokens_valid_until: None,
    })
}

/// Records `rotation` (its step moved on, or its wait stamped): atomically, 0600, forced to disk.
pub fn record(store: &Store, rotation: &SaRotation) -> Result<()> {
    let mut json = serde_json::to_vec_pretty(rotation).expect("a rotation serializes");
    json.push(b'\n');
    Ok(store.write_durable(ROTATION_FILE, &json, 0o600)?)
}

/// Where the old key of `rotation` is kept once it ended, relative to the store.
pub fn retired_path(rotation: &SaRotation) -> Result<String> {
    Ok(format!("{RETIRED_DIR}/sa-{}.key", key_id(&rotation.old)?))
}

/// Ends `rotation` (every apiserver trusts the new key alone): the old key is kept in
/// `secrets/retired/sa-<kid>.key`, the new pair becomes `sa.key`/`sa.pub`, and the record is removed last.
/// Each write is atomic and forced to disk; an interrupt before the removal leaves the record, and running
/// this again completes the same end.
pub fn finish(store: &Store, rotation: &SaRotation) -> Result<()> {
    store.write_durable(&retired_path(rotation)?, rotation.old.as_bytes(), 0o600)?;
    store.write_durable("sa.key", rotation.new.as_bytes(), 0o600)?;
    store.write_durable("sa.pub", public_pem(&rotation.new)?.as_bytes(), 0o644)?;
    let path = store.root().join(ROTATION_FILE);
    std::fs::remove_file(&path).map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
    let dir = path.parent().expect("inside the store");
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("syncing {}", dir.display()), e))
}

/// How long a token signed with the old key may stay valid once no apiserver signs with it any more, from
/// what kubeforge renders for kube-apiserver (`apiserver_flags`, extraArgs included), and why:
/// - `--service-account-extend-token-expiration=false` (kubeforge's default): a projected token lives its
///   requested expiration; a kubelet asks 3607 s; `--service-account-max-token-expiration`, when set,
///   caps every request and is the bound instead (tokens asked for longer are cut to it). Without it, a
///   token someone requested for longer (`kubectl create token --duration`) is not covered: the README says
///   so;
/// - extended expiration (an extraArgs override): upstream extends the kubelets' tokens to a year.
///
/// A margin for the control planes' clocks is added.
pub fn token_wait(apiserver: &crate::render::Flags) -> (Duration, String) {
    let extended =
        apiserver.get("service-account-extend-token-expiration").map(String::as_str) != Some("false");
    let max = apiserver
        .get("service-account-max-token-expiration")
        .and_then(|v| crate::inventory::validate::parse_duration(v).ok());
    let (life, why) = match (extended, max) {
        (true, _) => (
            EXTENDED_TOKEN_LIFETIME,
            "--service-account-extend-token-expiration is not false: upstream extends the kubelets' tokens to a year".into(),
        ),
        (false, Some(m)) => {
            (m, format!("--service-account-max-token-expiration={}", humantime::format_duration(m)))
        }
        (false, None) => (
            PROJECTED_TOKEN_LIFETIME,
            "projected tokens live the 3607 s a kubelet asks (--service-account-extend-token-expiration=false)".into(),
        ),
    };
    (life + CLOCK_MARGIN, format!("{why}, plus {} for clocks", humantime::format_duration(CLOCK_MARGIN)))
}

/// Seconds since the epoch.
pub fn epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `secs` (since the epoch) as an RFC 3339 UTC time.
pub fn show_time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::store::NewKeys;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "c");
        let k = Key::generate(crate::pki::KeyAlgorithm::EcdsaP256).unwrap();
        store.write("sa.key", k.pem().as_bytes(), 0o600).unwrap();
        store.write("sa.pub", k.public_pem().as_bytes(), 0o644).unwrap();
        let _ = NewKeys::Refused;
        (dir, store)
    }

    fn mode(s: &Store, rel: &str) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(s.root().join(rel)).unwrap().permissions().mode() & 0o777
    }

    /// The public keys (SPKI PEM blocks) a file holds, in order.
    fn keys_in(pem: &[u8]) -> Vec<String> {
        let text = String::from_utf8_lossy(pem);
        text.split_inclusive("-----END PUBLIC KEY-----\n").map(str::to_owned).collect()
    }

    #[test]
    fn each_step_renders_its_signing_key_and_trusted_keys_and_the_end_switches_the_store() {
        let (_d, s) = store();
        let keys = load(&s).unwrap();
        let (old_key, old_pub) = (keys.key.clone(), keys.public.clone());
        assert_eq!((keys.signing_key(), keys.verifying_keys().unwrap()), (old_key.clone(), old_pub.clone()));
        // A dry run's plan writes nothing.
        let planned = plan_rotation(&keys).unwrap();
        assert!(!s.root().join(ROTATION_FILE).exists());
        assert_eq!(
            parse_key(&planned.new, "new").unwrap().algorithm(),
            Some(crate::pki::KeyAlgorithm::EcdsaP256)
        );
        let mut r = planned.clone();
        record(&s, &r).unwrap();
        assert_eq!(mode(&s, ROTATION_FILE), 0o600);
        assert_eq!(s.read("sa.key").unwrap(), old_key, "the store's key is untouched until the end");
        let new_pub = public_pem(&r.new).unwrap();
        let old_pub_s = String::from_utf8(old_pub.clone()).unwrap();
        let k = load(&s).unwrap();
        assert_eq!(k.rotation.as_ref(), Some(&r), "read back as recorded");
        assert_eq!(plan_rotation(&k).unwrap(), r, "a run in the middle resumes the same rotation");
        // trust-both: old signs, both verify.
        assert_eq!(k.signing_key(), old_key);
        assert_eq!(keys_in(&k.verifying_keys().unwrap()), [old_pub_s.clone(), new_pub.clone()]);
        // sign-new: new signs, both still verify (sa.pub does not change).
        r.step = SaStep::SignNew;
        record(&s, &r).unwrap();
        let k = load(&s).unwrap();
        assert_eq!(k.signing_key(), r.new.as_bytes());
        assert_eq!(keys_in(&k.verifying_keys().unwrap()), [old_pub_s.clone(), new_pub.clone()]);
        // drop-old: the new key alone.
        r.step = SaStep::DropOld;
        record(&s, &r).unwrap();
        let k = load(&s).unwrap();
        assert_eq!(k.signing_key(), r.new.as_bytes());
        assert_eq!(keys_in(&k.verifying_keys().unwrap()), vec![new_pub.clone()]);
        let rendered = (k.signing_key(), k.verifying_keys().unwrap());
        // The end, interrupted after the new key was written: the record still decides, a re-run finishes.
        s.write_durable("sa.key", r.new.as_bytes(), 0o600).unwrap();
        assert_eq!(load(&s).unwrap().rotation.as_ref(), Some(&r));
        finish(&s, &r).unwrap();
        let k = load(&s).unwrap();
        assert_eq!(k.rotation, None);
        assert_eq!(
            (k.signing_key(), k.verifying_keys().unwrap()),
            rendered,
            "apply renders what drop-old left"
        );
        let retired = retired_path(&r).unwrap();
        assert_eq!(s.read(&retired).unwrap(), old_key, "the old key kept aside");
        assert_eq!(mode(&s, &retired), 0o600);
        assert_eq!(mode(&s, "sa.key"), 0o600);
        assert!(!format!("{k:?}{r:?}").contains("PRIVATE"), "Debug never shows a key");
    }

    #[test]
    fn a_record_that_does_not_fit_the_store_stops_the_run() {
        let (_d, s) = store();
        let keys = load(&s).unwrap();
        let mut r = plan_rotation(&keys).unwrap();
        r.old = Key::generate(crate::pki::KeyAlgorithm::EcdsaP256).unwrap().pem();
        record(&s, &r).unwrap();
        let e = load(&s).unwrap_err().report();
        assert!(e.contains("not of the store's sa.key"), "{e}");
        s.write_durable(ROTATION_FILE, b"{", 0o600).unwrap();
        let e = load(&s).unwrap_err().report();
        assert!(e.contains("not a rotation record"), "{e}");
    }

    #[test]
    fn the_token_wait_follows_the_rendered_apiserver_flags() {
        let flags = |pairs: &[(&str, &str)]| -> crate::render::Flags {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let (d, why) = token_wait(&flags(&[("service-account-extend-token-expiration", "false")]));
        assert_eq!(d, Duration::from_secs(3607 + 300));
        assert!(why.contains("3607 s"), "{why}");
        let (d, _) = token_wait(&flags(&[
            ("service-account-extend-token-expiration", "false"),
            ("service-account-max-token-expiration", "2h0m0s"),
        ]));
        assert_eq!(d, Duration::from_secs(7200 + 300));
        let (d, why) = token_wait(&flags(&[]));
        assert_eq!(d, EXTENDED_TOKEN_LIFETIME + CLOCK_MARGIN);
        assert!(why.contains("a year"), "{why}");
    }
}
