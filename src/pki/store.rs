//! The store: `pki/<cluster>/`, laid out like kubeadm's `/etc/kubernetes/pki` (`ca.crt`, `etcd/ca.crt`,
//! `apiserver.crt`...), plus `etcd/<member>/`, `nodes/<node>/`, kubeconfigs, `users/` and `ledger.json`.
//!
//! [`Store::ensure`] is idempotent: a CA is created once and never touched again; a leaf is reused while its
//! subject, usages, SANs, issuer, key algorithm and remaining validity still match the table, and re-issued
//! (keeping its key when the algorithm is unchanged) when one of them does not. Keys are created 0600 and
//! directories 0700 from the start; every write goes to a temporary file that is renamed into place.

use super::issue::{self, Key, Signer};
use super::spec::{self, CaId, CertSpec, Usage};
use super::{KeyAlgorithm, PkiError, PkiInputs};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use x509_parser::prelude::*;

/// Whether [`Store::ensure`] may create CAs and the service-account key pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewKeys {
    /// A new cluster: create what is missing.
    Allowed,
    /// A live cluster (or one that may be): a missing CA or service-account key is an error.
    Refused,
}

/// A cluster's PKI directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// What [`Store::ensure`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct EnsureReport {
    /// CAs created.
    pub cas_created: Vec<String>,
    /// Leaves issued, with the reason.
    pub issued: Vec<(String, String)>,
    /// Leaves kept as they were.
    pub reused: Vec<String>,
}

/// The parsed facts of a certificate that the table cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// Subject CN.
    pub common_name: String,
    /// Subject O values, sorted.
    pub organizations: Vec<String>,
    /// Issuer CN.
    pub issuer: String,
    /// DNS SANs, sorted.
    pub dns: BTreeSet<String>,
    /// IP SANs, sorted.
    pub ips: BTreeSet<IpAddr>,
    /// serverAuth present.
    pub server_auth: bool,
    /// clientAuth present.
    pub client_auth: bool,
    /// Is a CA.
    pub is_ca: bool,
    /// Not after, unix seconds.
    pub not_after: i64,
    /// Not before, unix seconds.
    pub not_before: i64,
    /// DER of the subject public key info.
    pub spki: Vec<u8>,
}

/// Parses the first certificate of a PEM text.
pub fn parse_cert(pem: &[u8], path: &Path) -> Result<CertFacts, PkiError> {
    let bad = |m: String| PkiError::Invalid { path: path.to_owned(), message: m };
    let (_, p) =
        x509_parser::pem::parse_x509_pem(pem).map_err(|e| bad(format!("not a PEM certificate: {e}")))?;
    let (_, c) =
        X509Certificate::from_der(&p.contents).map_err(|e| bad(format!("not an X.509 certificate: {e}")))?;
    let cn =
        |n: &X509Name| n.iter_common_name().next().and_then(|a| a.as_str().ok()).unwrap_or("").to_owned();
    let mut orgs: Vec<String> =
        c.subject().iter_organization().filter_map(|a| a.as_str().ok()).map(str::to_owned).collect();
    orgs.sort();
    let mut dns = BTreeSet::new();
    let mut ips = BTreeSet::new();
    if let Ok(Some(san)) = c.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => {
                    dns.insert(d.to_string());
                }
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => IpAddr::from(<[u8; 4]>::try_from(*b).expect("4 bytes")),
                        16 => IpAddr::from(<[u8; 16]>::try_from(*b).expect("16 bytes")),
                        _ => continue,
                    };
                    ips.insert(ip);
                }
                _ => {}
            }
        }
    }
    let (server_auth, client_auth) = match c.extended_key_usage() {
        Ok(Some(e)) => (e.value.server_auth, e.value.client_auth),
        _ => (false, false),
    };
    Ok(CertFacts {
        common_name: cn(c.subject()),
        organizations: orgs,
        issuer: cn(c.issuer()),
        dns,
        ips,
        server_auth,
        client_auth,
        is_ca: c.is_ca(),
        not_after: c.validity().not_after.timestamp(),
        not_before: c.validity().not_before.timestamp(),
        spki: c.public_key().raw.to_vec(),
    })
}

/// Does `cert_pem` carry a valid signature of the CA whose certificate is `ca_pem`?
pub fn signed_by(cert_pem: &[u8], ca_pem: &[u8]) -> bool {
    let parse = |pem: &[u8]| x509_parser::pem::parse_x509_pem(pem).ok().map(|(_, p)| p.contents);
    let (Some(c), Some(ca)) = (parse(cert_pem), parse(ca_pem)) else { return false };
    let (Ok((_, c)), Ok((_, ca))) = (X509Certificate::from_der(&c), X509Certificate::from_der(&ca)) else {
        return false;
    };
    c.verify_signature(Some(ca.public_key())).is_ok()
}

fn now() -> i64 {
    ::time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A certificate is renewed when less than this much validity is left.
pub fn renew_threshold(validity: Duration) -> Duration {
    (validity / 3).min(Duration::from_secs(30 * 86_400))
}

impl Store {
    /// The store of `cluster` under `pki_root` (not created until written).
    pub fn new(pki_root: &Path, cluster: &str) -> Store {
        Store { root: pki_root.join(cluster) }
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/<name>.<ext>`.
    pub fn path(&self, name: &str, ext: &str) -> PathBuf {
        self.root.join(format!("{name}.{ext}"))
    }

    /// Reads a file of the store.
    pub fn read(&self, rel: &str) -> Result<Vec<u8>, PkiError> {
        let p = self.root.join(rel);
        std::fs::read(&p).map_err(|e| PkiError::io(format!("cannot read {}", p.display()), e))
    }

    fn mkdirs(&self, dir: &Path) -> Result<(), PkiError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| PkiError::io(format!("cannot create {}", dir.display()), e))
    }

    /// Writes `rel` atomically with `mode` (the temporary file has the final mode from its creation).
    pub fn write(&self, rel: &str, data: &[u8], mode: u32) -> Result<(), PkiError> {
        let path = self.root.join(rel);
        let dir = path.parent().expect("inside the store");
        self.mkdirs(dir)?;
        // Only what cannot be re-created is forced to disk before the rename: a lost CA or service-account
        // key would orphan the cluster, while any leaf or kubeconfig is simply re-issued by the next run.
        // (An fsync per file made a 226-certificate store 40x slower.)
        let durable =
            rel.ends_with("ca.key") || rel == "sa.key" || rel == "ledger.json" || rel.starts_with("secrets/");
        crate::fsutil::replace_file(&path, data, mode, durable)
            .map_err(|e| PkiError::io(format!("cannot write {}", path.display()), e))
    }

    /// [`Store::write`] forced to disk (file and directory) before it returns: for what cannot be made
    /// again.
    pub fn write_durable(&self, rel: &str, data: &[u8], mode: u32) -> Result<(), PkiError> {
        self.write(rel, data, mode)?;
        let path = self.root.join(rel);
        let dir = path.parent().expect("inside the store");
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| PkiError::io(format!("cannot sync {}", dir.display()), e))
    }

    fn exists(&self, rel: &str) -> bool {
        self.root.join(rel).exists()
    }

    fn load_key(&self, name: &str) -> Result<Option<Key>, PkiError> {
        let rel = format!("{name}.key");
        if !self.exists(&rel) {
            return Ok(None);
        }
        let pem = String::from_utf8_lossy(&self.read(&rel)?).into_owned();
        Key::from_pem(&pem, &self.root.join(&rel)).map(Some)
    }

    /// Creates the CA if missing and `new_keys` allows it; returns whether it was created. Never modifies
    /// an existing CA.
    fn ensure_ca(&self, ca: CaId, i: &PkiInputs, new_keys: NewKeys) -> Result<bool, PkiError> {
        let (crt, key) = (format!("{}.crt", ca.name()), format!("{}.key", ca.name()));
        match (self.exists(&crt), self.exists(&key)) {
            (true, true) => Ok(false),
            (true, false) => Err(PkiError::CaKeyMissing { path: self.root.join(crt) }),
            (false, _) if new_keys == NewKeys::Refused => {
                Err(PkiError::KeyOfLiveCluster { path: self.root.join(crt) })
            }
            (false, _) => {
                let k = Key::generate(i.key_algorithm)?;
                let pem = issue::ca_certificate(ca, &k, i.ca_validity)?;
                self.write(&key, k.pem().as_bytes(), 0o600)?;
                self.write(&crt, pem.as_bytes(), 0o644)?;
                Ok(true)
            }
        }
    }

    /// The CA rotation in progress in this store, if any ([`super::rotation`]).
    pub fn ca_rotation(&self) -> Result<Option<super::rotation::CaRotation>, PkiError> {
        super::rotation::load(self)
    }

    /// The certificate of the CA that signs `ca`'s leaves now: the store's, or the one a rotation in progress
    /// says.
    pub fn issuing_ca_pem(&self, ca: CaId) -> Result<Vec<u8>, PkiError> {
        match self.ca_rotation()?.as_ref().and_then(|r| r.issuer(ca)) {
            Some((cert, _)) => Ok(cert.as_bytes().to_vec()),
            None => self.read(&format!("{}.crt", ca.name())),
        }
    }

    /// The key of the CA that signs `ca`'s leaves now (what the controller-manager's signer gets).
    pub fn issuing_ca_key_pem(&self, ca: CaId) -> Result<Vec<u8>, PkiError> {
        match self.ca_rotation()?.as_ref().and_then(|r| r.issuer(ca)) {
            Some((_, key)) => Ok(key.as_bytes().to_vec()),
            None => self.read(&format!("{}.key", ca.name())),
        }
    }

    /// What a trust file of `ca` holds: the store's CA certificate, or during a rotation the certificates
    /// its step trusts, the signing CA first.
    pub fn trust_pem(&self, ca: CaId) -> Result<Vec<u8>, PkiError> {
        match self.ca_rotation()?.as_ref().and_then(|r| r.trust(ca)) {
            Some(t) => Ok(t.into_bytes()),
            None => self.read(&format!("{}.crt", ca.name())),
        }
    }

    /// A signer for `ca`: the store's CA, or the one a rotation in progress signs with.
    pub fn signer(&self, ca: CaId) -> Result<Signer, PkiError> {
        if let Some(s) = self.ca_rotation()?.as_ref().and_then(|r| super::rotation::signer(r, ca)) {
            return s;
        }
        let cert = String::from_utf8_lossy(&self.read(&format!("{}.crt", ca.name()))?).into_owned();
        let key = self
            .load_key(ca.name())?
            .ok_or_else(|| PkiError::CaKeyMissing { path: self.path(ca.name(), "crt") })?;
        Signer::new(&cert, key)
    }

    /// Why the stored leaf for `spec` must be re-issued, or `None` when it is still right.
    pub fn stale_reason(&self, spec: &CertSpec, i: &PkiInputs) -> Result<Option<String>, PkiError> {
        let crt = format!("{}.crt", spec.name);
        if !self.exists(&crt) {
            return Ok(Some("new".into()));
        }
        // A leaf or its key cut short by a crash (empty, or not PEM) is simply issued again.
        let key = match self.load_key(&spec.name) {
            Ok(Some(k)) => k,
            Ok(None) => return Ok(Some("key missing".into())),
            Err(PkiError::Invalid { .. }) => return Ok(Some("key unreadable".into())),
            Err(e) => return Err(e),
        };
        let pem = self.read(&crt)?;
        let f = match parse_cert(&pem, &self.root.join(&crt)) {
            Ok(f) => f,
            Err(PkiError::Invalid { .. }) => return Ok(Some("certificate unreadable".into())),
            Err(e) => return Err(e),
        };
        if f.spki != rcgen::PublicKeyData::subject_public_key_info(&key.0) {
            return Ok(Some("key does not match certificate".into()));
        }
        if key.algorithm() != Some(i.key_algorithm) {
            return Ok(Some(format!("key algorithm is not {}", i.key_algorithm)));
        }
        if !signed_by(&pem, &self.issuing_ca_pem(spec.ca)?) {
            return Ok(Some(format!("not signed by the current {}", spec.ca.name())));
        }
        let mut orgs = spec.organizations.clone();
        orgs.sort();
        if f.common_name != spec.common_name || f.organizations != orgs {
            return Ok(Some("subject changed".into()));
        }
        let (sa, ca) = match spec.usage {
            Usage::Server => (true, false),
            Usage::Client => (false, true),
            Usage::ServerAndClient => (true, true),
        };
        if (f.server_auth, f.client_auth) != (sa, ca) {
            return Ok(Some("key usage changed".into()));
        }
        let want_dns: BTreeSet<String> = spec.dns.iter().cloned().collect();
        let want_ips: BTreeSet<IpAddr> = spec.ips.iter().copied().collect();
        if f.dns != want_dns || f.ips != want_ips {
            let added: Vec<String> = want_dns
                .difference(&f.dns)
                .cloned()
                .chain(want_ips.difference(&f.ips).map(|i| i.to_string()))
                .collect();
            let removed: Vec<String> = f
                .dns
                .difference(&want_dns)
                .cloned()
                .chain(f.ips.difference(&want_ips).map(|i| i.to_string()))
                .collect();
            return Ok(Some(format!("SANs changed (+[{}] -[{}])", added.join(", "), removed.join(", "))));
        }
        let left = f.not_after - now();
        if left < renew_threshold(i.validity).as_secs() as i64 {
            return Ok(Some(if left <= 0 { "expired".into() } else { "expires soon".into() }));
        }
        Ok(None)
    }

    /// Issues (or re-issues) the leaf `spec`, keeping its key when the algorithm still matches.
    pub fn issue(
        &self,
        spec: &CertSpec,
        i: &PkiInputs,
        signer: &Signer,
        validity: Duration,
    ) -> Result<(), PkiError> {
        let key = match self.load_key(&spec.name).unwrap_or(None) {
            Some(k) if k.algorithm() == Some(i.key_algorithm) => k,
            _ => {
                let k = Key::generate(i.key_algorithm)?;
                self.write(&format!("{}.key", spec.name), k.pem().as_bytes(), 0o600)?;
                k
            }
        };
        let pem = issue::leaf_certificate(spec, &key, signer, validity)?;
        self.write(&format!("{}.crt", spec.name), pem.as_bytes(), 0o644)
    }

    /// Makes the store complete and current for `i`: CAs, service-account keys, every leaf, every
    /// kubeconfig. Idempotent.
    ///
    /// CAs and the service-account key pair are created only when `new_keys` allows it (a new cluster);
    /// otherwise a missing one is an error: a live cluster's trust roots are never replaced by new ones.
    pub fn ensure(&self, i: &PkiInputs, new_keys: NewKeys) -> Result<EnsureReport, PkiError> {
        self.mkdirs(&self.root)?;
        let mut report = EnsureReport::default();
        for ca in CaId::ALL {
            if self.ensure_ca(ca, i, new_keys)? {
                report.cas_created.push(ca.name().to_owned());
            }
        }
        match (self.exists("sa.key"), self.exists("sa.pub")) {
            (true, true) => {}
            (true, false) => {
                // The pair is written key first: a crash between the two leaves the key, whose public half
                // is derived again.
                let pem = String::from_utf8_lossy(&self.read("sa.key")?).into_owned();
                let k = Key::from_pem(&pem, &self.root.join("sa.key"))?;
                self.write("sa.pub", k.public_pem().as_bytes(), 0o644)?;
            }
            (false, _) if new_keys == NewKeys::Refused => {
                return Err(PkiError::KeyOfLiveCluster { path: self.root.join("sa.key") });
            }
            (false, _) => {
                let k = Key::generate(i.key_algorithm)?;
                self.write("sa.key", k.pem().as_bytes(), 0o600)?;
                self.write("sa.pub", k.public_pem().as_bytes(), 0o644)?;
                report.cas_created.push("sa".into());
            }
        }
        let mut signers: BTreeMap<CaId, Signer> = BTreeMap::new();
        for spec in spec::leaf_specs(i) {
            match self.stale_reason(&spec, i)? {
                None => report.reused.push(spec.name.clone()),
                Some(reason) => {
                    let signer = match signers.entry(spec.ca) {
                        std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::btree_map::Entry::Vacant(e) => e.insert(self.signer(spec.ca)?),
                    };
                    self.issue(&spec, i, signer, i.validity)?;
                    report.issued.push((spec.name.clone(), reason));
                }
            }
        }
        self.write_kubeconfigs(i)?;
        Ok(report)
    }

    /// Re-issues the named leaves (or all) now, keeping keys: `certs renew`.
    pub fn renew(&self, i: &PkiInputs, names: &[String]) -> Result<Vec<String>, PkiError> {
        let specs = spec::leaf_specs(i);
        let all = names.iter().any(|n| n == "all");
        for n in names.iter().filter(|n| *n != "all") {
            if !specs.iter().any(|s| &s.name == n) {
                return Err(PkiError::UnknownCert(n.clone()));
            }
        }
        let mut done = Vec::new();
        for s in specs.iter().filter(|s| all || names.contains(&s.name)) {
            let signer = self.signer(s.ca)?;
            self.issue(s, i, &signer, i.validity)?;
            done.push(s.name.clone());
        }
        self.write_kubeconfigs(i)?;
        Ok(done)
    }

    /// Renders a kubeconfig embedding the cluster CA and the client certificate `cert_name`.
    pub fn kubeconfig_for(
        &self,
        i: &PkiInputs,
        cert_name: &str,
        user: &str,
        server: &str,
    ) -> Result<String, PkiError> {
        let ca = self.trust_pem(CaId::Cluster)?;
        let crt = self.read(&format!("{cert_name}.crt"))?;
        let key = self.read(&format!("{cert_name}.key"))?;
        Ok(super::kubeconfig::Kubeconfig::with_client_cert(&i.cluster_name, server, &ca, user, &crt, &key)
            .to_yaml())
    }

    /// Writes every component and admin kubeconfig (deterministic: unchanged certificates give unchanged files).
    pub fn write_kubeconfigs(&self, i: &PkiInputs) -> Result<(), PkiError> {
        let fixed = [
            ("admin.conf", "admin", "kubernetes-admin", &i.api_server_url),
            ("super-admin.conf", "super-admin", "kubernetes-super-admin", &i.api_server_url),
            (
                "controller-manager.conf",
                "controller-manager",
                "system:kube-controller-manager",
                &i.api_server_url,
            ),
            ("scheduler.conf", "scheduler", "system:kube-scheduler", &i.api_server_url),
            ("kube-proxy.conf", "kube-proxy", "system:kube-proxy", &i.node_api_url),
        ];
        for (file, cert, user, server) in fixed {
            let y = self.kubeconfig_for(i, cert, user, server)?;
            self.write(file, y.as_bytes(), 0o600)?;
        }
        for n in &i.nodes {
            let y = self.kubeconfig_for(
                i,
                &format!("nodes/{}/kubelet-client", n.name),
                &format!("system:node:{}", n.name),
                &i.node_api_url,
            )?;
            self.write(&format!("nodes/{}/kubelet.conf", n.name), y.as_bytes(), 0o600)?;
        }
        Ok(())
    }

    /// Every certificate in the store (CAs first), for `check-expiration`.
    /// People's certificates (`users/`, issued by `kubeforge kubeconfig`) are not the cluster's: see
    /// [`Store::user_certificates`].
    pub fn certificates(&self) -> Result<Vec<(String, CertFacts)>, PkiError> {
        self.certificates_under(&self.root, &[self.root.join("users")])
    }

    /// The copies of people's certificates (`users/<user>/<serial>`), soonest expiry first.
    pub fn user_certificates(&self) -> Result<Vec<(String, CertFacts)>, PkiError> {
        let users = self.root.join("users");
        if !users.is_dir() {
            return Ok(Vec::new());
        }
        let mut out = self.certificates_under(&users, &[])?;
        out.sort_by_key(|(_, f)| f.not_after);
        Ok(out)
    }

    fn certificates_under(&self, top: &Path, skip: &[PathBuf]) -> Result<Vec<(String, CertFacts)>, PkiError> {
        let mut out = Vec::new();
        let mut stack = vec![top.to_path_buf()];
        while let Some(d) = stack.pop() {
            let rd = match std::fs::read_dir(&d) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && d == self.root => return Ok(out),
                Err(e) => return Err(PkiError::io(format!("cannot list {}", d.display()), e)),
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    // Not the people's certificates, not scratch or staging directories.
                    if !skip.contains(&p) && !e.file_name().to_string_lossy().starts_with('.') {
                        stack.push(p);
                    }
                } else if p.extension().is_some_and(|x| x == "crt") {
                    let rel = p.strip_prefix(&self.root).expect("inside").with_extension("");
                    let pem = std::fs::read(&p)
                        .map_err(|e| PkiError::io(format!("cannot read {}", p.display()), e))?;
                    out.push((rel.to_string_lossy().into_owned(), parse_cert(&pem, &p)?));
                }
            }
        }
        out.sort_by(|a, b| (!a.1.is_ca, &a.0).cmp(&(!b.1.is_ca, &b.0)));
        Ok(out)
    }

    /// The key algorithm of an existing key in the store (for reporting).
    pub fn key_algorithm(&self, name: &str) -> Option<KeyAlgorithm> {
        self.load_key(name).ok().flatten().and_then(|k| k.algorithm())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kubelet's certificates (and every other leaf) are renewed by the next `apply` once less than a
    /// third of their validity is left: what stands in for the kubelet's own rotation.
    #[test]
    fn certificates_near_expiry_are_reissued_by_the_next_ensure_and_nothing_else_is() {
        let text = "cluster: {name: c, kubernetesVersion: v1.35.7}\nhosts:\n  - {name: cp1, address: 10.0.0.1, roles: [control-plane, etcd, worker]}\n";
        let loaded = crate::inventory::parse(Path::new("i.yaml"), text).unwrap();
        let mut inputs = crate::model::ClusterModel::derive(&loaded).pki_inputs();
        // Six seconds: renewed when less than two are left.
        inputs.validity = Duration::from_secs(6);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "c");
        let first = store.ensure(&inputs, NewKeys::Allowed).unwrap();
        assert!(first.issued.iter().any(|(n, _)| n == "nodes/cp1/kubelet-client"), "{:?}", first.issued);
        assert!(
            store.ensure(&inputs, NewKeys::Allowed).unwrap().issued.is_empty(),
            "fresh certificates are kept"
        );
        let serial = |name: &str| {
            let pem = std::fs::read(dir.path().join(format!("c/{name}.crt"))).unwrap();
            let (_, p) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
            p.parse_x509().unwrap().raw_serial().to_vec()
        };
        let before = serial("nodes/cp1/kubelet-serving");
        std::thread::sleep(Duration::from_millis(5100));
        let late = store.ensure(&inputs, NewKeys::Allowed).unwrap();
        assert!(late.cas_created.is_empty(), "CAs are not touched");
        let names: BTreeSet<&str> = late.issued.iter().map(|(n, _)| n.as_str()).collect();
        assert!(
            names.contains("nodes/cp1/kubelet-client") && names.contains("nodes/cp1/kubelet-serving"),
            "{:?}",
            late.issued
        );
        assert!(
            late.issued.iter().all(|(_, why)| why == "expires soon" || why == "expired"),
            "{:?}",
            late.issued
        );
        assert_ne!(serial("nodes/cp1/kubelet-serving"), before, "a new certificate");
    }
}
