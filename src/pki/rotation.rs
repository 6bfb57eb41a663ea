//! A CA rotation's record in the store, and what it makes every path render: the foundation of
//! `kubeforge rotate ca`, on the pattern of the service-account key's rotation ([`crate::sa_key`]).
//!
//! A rotation ([`CaRotation`], `secrets/ca-rotation.json`, 0600, written atomically and forced to disk) holds,
//! for each CA it replaces (`ca`, `etcd/ca`, `front-proxy-ca`), the old certificate and key and the new ones,
//! and the step reached. While the record exists it alone decides, for those CAs:
//! - what **signs** leaves ([`CaRotation::issuer`]): the old CA at `trust-both`, the new one from `issue` on.
//!   [`Store::signer`] and the staleness check follow it, so at `issue` every leaf of that CA is re-issued by
//!   the new CA, and a re-run of `apply` never goes back;
//! - what is **trusted** ([`CaRotation::trust`]): the old and the new certificate while both must verify
//!   (`trust-both`, `issue`), the new one alone at `distrust`. Every trust file kubeforge renders (`ca.crt`,
//!   `etcd/ca.crt`, `front-proxy-ca.crt`) and every kubeconfig's `certificate-authority-data` hold it.
//!
//! A bundle lists the CA that signs first. The controller-manager's CSR signer is a file of its own
//! (`ca-signer.crt` with `ca.key`, [`Store::issuing_ca_pem`]): kube-controller-manager refuses a signer file
//! with more than one certificate, so it never reads the bundle.
//!
//! The rotation ends ([`finish`]) by keeping the old CAs aside (`secrets/retired/<ca>-<fingerprint>.crt/.key`),
//! writing the new ones as the store's CAs, and removing the record last: an interrupt anywhere leaves the
//! record, and a re-run finishes the same rotation.

use super::issue::{self, Key, Signer};
use super::spec::CaId;
use super::store::Store;
use super::{KeyAlgorithm, PkiError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// A CA rotation in progress, relative to the store.
pub const ROTATION_FILE: &str = "secrets/ca-rotation.json";
/// Where the CAs rotations replaced are kept.
pub const RETIRED_DIR: &str = "secrets/retired";

/// How far a rotation got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CaStep {
    /// Old and new CA trusted everywhere; the old CA signs.
    TrustBoth,
    /// Old and new CA trusted everywhere; the new CA signs (every leaf re-issued).
    Issue,
    /// The new CA alone is trusted; then the store switches to it.
    Distrust,
}

impl CaStep {
    /// The step's name in reports, the record and the workflow's stages.
    pub fn name(self) -> &'static str {
        match self {
            CaStep::TrustBoth => "trust-both",
            CaStep::Issue => "issue",
            CaStep::Distrust => "distrust",
        }
    }
}

/// One CA being replaced: certificates and keys as PEM.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaPair {
    /// The CA certificate being replaced (the store's when the rotation began).
    pub old_cert: String,
    /// Its key.
    pub old_key: String,
    /// The CA certificate replacing it.
    pub new_cert: String,
    /// Its key.
    pub new_key: String,
}

/// A rotation in progress, as `secrets/ca-rotation.json` records it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaRotation {
    /// The step whose files are (being) rolled out.
    pub step: CaStep,
    /// The CAs being replaced, by store name (`ca`, `etcd/ca`, `front-proxy-ca`).
    pub cas: BTreeMap<String, CaPair>,
}

impl std::fmt::Debug for CaRotation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cas: BTreeMap<&str, (String, String)> = self
            .cas
            .iter()
            .map(|(k, p)| (k.as_str(), (fingerprint(&p.old_cert), fingerprint(&p.new_cert))))
            .collect();
        f.debug_struct("CaRotation").field("step", &self.step).field("cas", &cas).finish()
    }
}

/// `sha256:<hex>` of the first certificate of `pem` (what the hosts' identity markers hold), or `?`.
pub fn fingerprint(pem: &str) -> String {
    use sha2::Digest;
    match x509_parser::pem::parse_x509_pem(pem.as_bytes()) {
        Ok((_, p)) if p.label == "CERTIFICATE" => {
            format!("sha256:{}", hex::encode(sha2::Sha256::digest(&p.contents)))
        }
        _ => "?".into(),
    }
}

/// Two PEM blocks as one file, each ending with a newline.
fn bundle(first: &str, second: &str) -> String {
    let mut s = String::with_capacity(first.len() + second.len() + 2);
    for pem in [first, second] {
        s.push_str(pem);
        if !pem.ends_with('\n') {
            s.push('\n');
        }
    }
    s
}

impl CaRotation {
    /// The pair of `ca`, when this rotation replaces it.
    pub fn pair(&self, ca: CaId) -> Option<&CaPair> {
        self.cas.get(ca.name())
    }

    /// The CA that signs `ca`'s leaves at this step (certificate and key PEM), when this rotation replaces it.
    pub fn issuer(&self, ca: CaId) -> Option<(&str, &str)> {
        self.pair(ca).map(|p| match self.step {
            CaStep::TrustBoth => (p.old_cert.as_str(), p.old_key.as_str()),
            CaStep::Issue | CaStep::Distrust => (p.new_cert.as_str(), p.new_key.as_str()),
        })
    }

    /// What a trust file of `ca` holds at this step, the signing CA first, when this rotation replaces it.
    pub fn trust(&self, ca: CaId) -> Option<String> {
        self.pair(ca).map(|p| match self.step {
            CaStep::TrustBoth => bundle(&p.old_cert, &p.new_cert),
            CaStep::Issue => bundle(&p.new_cert, &p.old_cert),
            CaStep::Distrust => p.new_cert.clone(),
        })
    }

    /// The fingerprints a host's cluster CA may have while this rotation runs (the old and the new cluster
    /// CA), when it replaces the cluster CA.
    pub fn cluster_fingerprints(&self) -> Vec<String> {
        self.pair(CaId::Cluster)
            .map(|p| vec![fingerprint(&p.old_cert), fingerprint(&p.new_cert)])
            .unwrap_or_default()
    }
}

fn damaged(store: &Store, why: String) -> PkiError {
    PkiError::Invalid { path: store.root().join(ROTATION_FILE), message: why }
}

/// The rotation in progress in `store`, if any. A record that cannot be read, names a CA kubeforge does not
/// have, whose certificates are not certificates of their keys, or whose CAs are not the store's (neither the
/// old nor the new certificate is the store's file) stops the run.
pub fn load(store: &Store) -> Result<Option<CaRotation>, PkiError> {
    let path = store.root().join(ROTATION_FILE);
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(PkiError::io(format!("cannot read {}", path.display()), e)),
    };
    let r: CaRotation = serde_json::from_slice(&text)
        .map_err(|e| damaged(store, format!("not a CA rotation record ({e})")))?;
    if r.cas.is_empty() {
        return Err(damaged(store, "it names no CA".into()));
    }
    for (name, p) in &r.cas {
        let Some(ca) = CaId::ALL.into_iter().find(|c| c.name() == name) else {
            return Err(damaged(store, format!("`{name}` is not one of kubeforge's CAs")));
        };
        for (cert, key, which) in [(&p.old_cert, &p.old_key, "old"), (&p.new_cert, &p.new_key, "new")] {
            let k = Key::from_pem(key, Path::new(ROTATION_FILE))
                .map_err(|e| damaged(store, format!("the {which} {name} key: {e}")))?;
            let facts = super::store::parse_cert(cert.as_bytes(), Path::new(ROTATION_FILE))
                .map_err(|e| damaged(store, format!("the {which} {name} certificate: {e}")))?;
            if facts.spki != rcgen::PublicKeyData::subject_public_key_info(&k.0) {
                return Err(damaged(store, format!("the {which} {name} certificate is not of its key")));
            }
        }
        let (old, new) = (fingerprint(&p.old_cert), fingerprint(&p.new_cert));
        if old == new {
            return Err(damaged(store, format!("its old and new {name} are the same certificate")));
        }
        let current = fingerprint(&String::from_utf8_lossy(&store.read(&format!("{}.crt", ca.name()))?));
        if current != old && current != new {
            return Err(damaged(store, format!("the rotation it records is not of the store's {name}.crt")));
        }
    }
    Ok(Some(r))
}

/// The rotation to start for `cas` (a dry run shows it without writing; a run [`record`]s it): a new CA of the
/// same key algorithm as the store's, valid for `validity`, for each; or the recorded rotation.
pub fn plan(store: &Store, cas: &[CaId], validity: Duration) -> Result<CaRotation, PkiError> {
    if let Some(r) = load(store)? {
        return Ok(r);
    }
    let mut pairs = BTreeMap::new();
    for &ca in cas {
        let old_cert = String::from_utf8_lossy(&store.read(&format!("{}.crt", ca.name()))?).into_owned();
        let key_rel = format!("{}.key", ca.name());
        let old_key = String::from_utf8_lossy(&store.read(&key_rel)?).into_owned();
        let alg = Key::from_pem(&old_key, &store.root().join(&key_rel))?
            .algorithm()
            .unwrap_or(KeyAlgorithm::EcdsaP256);
        let k = Key::generate(alg)?;
        let new_cert = issue::ca_certificate(ca, &k, validity)?;
        pairs.insert(ca.name().to_owned(), CaPair { old_cert, old_key, new_cert, new_key: k.pem() });
    }
    Ok(CaRotation { step: CaStep::TrustBoth, cas: pairs })
}

/// Records `rotation` (started, or its step moved on): atomically, 0600, forced to disk.
pub fn record(store: &Store, rotation: &CaRotation) -> Result<(), PkiError> {
    let mut json = serde_json::to_vec_pretty(rotation).expect("a rotation serializes");
    json.push(b'\n');
    store.write_durable(ROTATION_FILE, &json, 0o600)
}

/// Where the old `ca` of `pair` is kept once the rotation ended (certificate, key), relative to the store.
pub fn retired_paths(ca: &str, pair: &CaPair) -> (String, String) {
    let fp = fingerprint(&pair.old_cert);
    let short = fp.trim_start_matches("sha256:").get(..16).unwrap_or("unknown").to_owned();
    let stem = format!("{RETIRED_DIR}/{}-{short}", ca.replace('/', "-"));
    (format!("{stem}.crt"), format!("{stem}.key"))
}

/// Ends `rotation` (every host trusts the new CAs alone): each old CA is kept in `secrets/retired/`, each new
/// one becomes the store's (key first, then certificate), and the record is removed last. Each write is
/// atomic and forced to disk; an interrupt before the removal leaves the record, and running this again
/// completes the same end.
pub fn finish(store: &Store, rotation: &CaRotation) -> Result<(), PkiError> {
    for (ca, p) in &rotation.cas {
        let (crt, key) = retired_paths(ca, p);
        store.write_durable(&key, p.old_key.as_bytes(), 0o600)?;
        store.write_durable(&crt, p.old_cert.as_bytes(), 0o644)?;
        store.write_durable(&format!("{ca}.key"), p.new_key.as_bytes(), 0o600)?;
        store.write_durable(&format!("{ca}.crt"), p.new_cert.as_bytes(), 0o644)?;
    }
    let path = store.root().join(ROTATION_FILE);
    std::fs::remove_file(&path).map_err(|e| PkiError::io(format!("cannot remove {}", path.display()), e))?;
    let dir = path.parent().expect("inside the store");
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| PkiError::io(format!("cannot sync {}", dir.display()), e))
}

/// The signer of `ca`'s leaves in `rotation`'s step, when it replaces `ca`.
pub fn signer(rotation: &CaRotation, ca: CaId) -> Option<Result<Signer, PkiError>> {
    rotation.issuer(ca).map(|(cert, key)| {
        let k = Key::from_pem(key, Path::new(ROTATION_FILE))?;
        Signer::new(cert, k)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::store::{signed_by, NewKeys};

    const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

    fn inputs() -> crate::pki::PkiInputs {
        let text = "cluster: {name: c, kubernetesVersion: v1.37.1}\nhosts:\n  - {name: cp1, address: 10.0.0.1, roles: [control-plane, etcd]}\n  - {name: w1, address: 10.0.0.2, roles: [worker]}\n";
        let loaded = crate::inventory::parse(Path::new("i.yaml"), text).unwrap();
        crate::model::ClusterModel::derive(&loaded).pki_inputs()
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "c");
        store.ensure(&inputs(), NewKeys::Allowed).unwrap();
        (dir, store)
    }

    fn certs_in(pem: &str) -> Vec<String> {
        x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
            .map(|p| {
                use sha2::Digest;
                format!("sha256:{}", hex::encode(sha2::Sha256::digest(&p.unwrap().contents)))
            })
            .collect()
    }

    #[test]
    fn each_step_signs_and_trusts_what_it_should_and_the_end_switches_the_store() {
        let (_d, store) = store();
        let i = inputs();
        let old = String::from_utf8(store.read("ca.crt").unwrap()).unwrap();
        let etcd_before = store.read("etcd/ca.crt").unwrap();
        let mut r = plan(&store, &[CaId::Cluster], YEAR).unwrap();
        assert!(load(&store).unwrap().is_none(), "a plan writes nothing");
        let new = r.pair(CaId::Cluster).unwrap().new_cert.clone();
        assert_ne!(fingerprint(&old), fingerprint(&new));
        assert!(r.pair(CaId::Etcd).is_none() && r.trust(CaId::Etcd).is_none(), "only the CAs asked for");

        // trust-both: the old CA signs, both are trusted (the signing CA first).
        record(&store, &r).unwrap();
        assert_eq!(load(&store).unwrap().as_ref(), Some(&r));
        assert_eq!(certs_in(&r.trust(CaId::Cluster).unwrap()), [fingerprint(&old), fingerprint(&new)]);
        assert_eq!(store.trust_pem(CaId::Cluster).unwrap(), r.trust(CaId::Cluster).unwrap().into_bytes());
        assert_eq!(store.ensure(&i, NewKeys::Refused).unwrap().issued, Vec::<(String, String)>::new());
        let admin = String::from_utf8(store.read("admin.conf").unwrap()).unwrap();
        assert!(
            admin.contains(&{
                use base64::Engine;
                base64::engine::general_purpose::STANDARD.encode(r.trust(CaId::Cluster).unwrap())
            }),
            "kubeconfigs carry both CAs"
        );

        // issue: the new CA signs; every leaf of the cluster CA is re-issued by it, the etcd CA's are not.
        r.step = CaStep::Issue;
        record(&store, &r).unwrap();
        assert_eq!(certs_in(&r.trust(CaId::Cluster).unwrap()), [fingerprint(&new), fingerprint(&old)]);
        let issued = store.ensure(&i, NewKeys::Refused).unwrap().issued;
        assert!(issued.iter().any(|(n, _)| n == "apiserver"), "{issued:?}");
        assert!(issued.iter().all(|(_, why)| why == "not signed by the current ca"), "{issued:?}");
        assert!(!issued.iter().any(|(n, _)| n.starts_with("etcd/")), "{issued:?}");
        assert!(signed_by(&store.read("apiserver.crt").unwrap(), new.as_bytes()));
        assert!(signed_by(&store.read("nodes/w1/kubelet-client.crt").unwrap(), new.as_bytes()));
        assert_eq!(store.ensure(&i, NewKeys::Refused).unwrap().issued.len(), 0, "a second run keeps them");
        assert_eq!(store.read("ca.crt").unwrap(), old.as_bytes(), "the store's CA changes only at the end");

        // distrust: the new CA alone; the end keeps the old one aside and removes the record.
        r.step = CaStep::Distrust;
        record(&store, &r).unwrap();
        assert_eq!(
            certs_in(&String::from_utf8(store.trust_pem(CaId::Cluster).unwrap()).unwrap()),
            [fingerprint(&new)]
        );
        finish(&store, &r).unwrap();
        assert!(load(&store).unwrap().is_none());
        assert_eq!(store.read("ca.crt").unwrap(), new.as_bytes());
        let (crt, key) = retired_paths("ca", r.pair(CaId::Cluster).unwrap());
        assert_eq!(store.read(&crt).unwrap(), old.as_bytes());
        assert!(!store.read(&key).unwrap().is_empty());
        assert_eq!(store.read("etcd/ca.crt").unwrap(), etcd_before);
        assert_eq!(store.ensure(&i, NewKeys::Refused).unwrap().issued.len(), 0, "nothing left to re-issue");
        // The end again (an interrupt before the record went): the same end, nothing else.
        record(&store, &r).unwrap();
        assert!(load(&store).unwrap().is_some(), "the store's CA is the record's new one: accepted");
        finish(&store, &r).unwrap();
        assert_eq!(store.read("ca.crt").unwrap(), new.as_bytes());
    }

    #[test]
    fn a_record_that_does_not_fit_the_store_stops_the_run() {
        let (_d, store) = store();
        let r = plan(&store, &[CaId::Cluster, CaId::FrontProxy], YEAR).unwrap();
        let write = |r: &CaRotation| record(&store, r).unwrap();
        // Another store's rotation.
        let (_d2, other) = self::store();
        let foreign = plan(&other, &[CaId::Cluster], YEAR).unwrap();
        write(&foreign);
        let e = load(&store).unwrap_err().to_string();
        assert!(e.contains("not of the store's ca.crt"), "{e}");
        // A new certificate that is not of the new key.
        let mut bad = r.clone();
        bad.cas.get_mut("ca").unwrap().new_key = r.pair(CaId::FrontProxy).unwrap().new_key.clone();
        write(&bad);
        assert!(load(&store).unwrap_err().to_string().contains("the new ca certificate is not of its key"));
        // An unknown CA, and not JSON at all.
        let mut bad = r.clone();
        let p = bad.cas.remove("ca").unwrap();
        bad.cas.insert("mystery-ca".into(), p);
        write(&bad);
        assert!(load(&store).unwrap_err().to_string().contains("`mystery-ca` is not one of kubeforge's CAs"));
        store.write_durable(ROTATION_FILE, b"{", 0o600).unwrap();
        assert!(load(&store).unwrap_err().to_string().contains("not a CA rotation record"));
        // Mode: the record holds CA keys.
        use std::os::unix::fs::PermissionsExt;
        write(&r);
        let mode = std::fs::metadata(store.root().join(ROTATION_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn the_debug_form_shows_fingerprints_never_keys() {
        let (_d, store) = store();
        let r = plan(&store, &[CaId::Etcd], YEAR).unwrap();
        let shown = format!("{r:?}");
        assert!(shown.contains("sha256:") && !shown.contains("PRIVATE KEY"), "{shown}");
    }
}
