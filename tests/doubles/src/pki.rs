//! Loading and checking certificates and keys the way the real components do at startup: PEM parses,
//! private key matches the certificate, chain to the CA given, extended key usage, validity, SANs.

use std::net::IpAddr;

use rcgen::PublicKeyData;
use x509_parser::prelude::*;

/// A certificate or key problem, worded like the Go errors the real binaries print.
#[derive(Debug)]
pub struct PkiError(pub String);

impl std::fmt::Display for PkiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A parsed certificate (DER kept; fields extracted on load).
#[derive(Debug, Clone)]
pub struct Cert {
    /// DER bytes.
    pub der: Vec<u8>,
    /// Subject CN.
    pub cn: String,
    /// Subject O values.
    pub orgs: Vec<String>,
    /// DNS SANs.
    pub dns: Vec<String>,
    /// IP SANs.
    pub ips: Vec<IpAddr>,
    /// Whether basicConstraints CA:TRUE.
    pub is_ca: bool,
    /// serverAuth EKU present.
    pub server_auth: bool,
    /// clientAuth EKU present.
    pub client_auth: bool,
    /// Where it came from (for messages).
    pub origin: String,
}

/// The PEM text of a certificate chain + parsed first cert.
fn parse_der(der: Vec<u8>, origin: &str) -> Result<Cert, PkiError> {
    let (_, x) = X509Certificate::from_der(&der)
        .map_err(|e| PkiError(format!("x509: malformed certificate in {origin}: {e}")))?;
    let now = ASN1Time::now();
    if x.validity().not_after < now {
        return Err(PkiError(format!(
            "x509: certificate in {origin} has expired: current time {} is after {}",
            now,
            x.validity().not_after
        )));
    }
    if x.validity().not_before > now {
        return Err(PkiError(format!("x509: certificate in {origin} is not yet valid")));
    }
    let cn = x.subject().iter_common_name().next().and_then(|a| a.as_str().ok()).unwrap_or("").to_string();
    let orgs = x.subject().iter_organization().filter_map(|a| a.as_str().ok().map(String::from)).collect();
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    if let Ok(Some(san)) = x.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default())),
                    16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default())),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    let is_ca = x.basic_constraints().ok().flatten().is_some_and(|b| b.value.ca);
    let (server_auth, client_auth) = match x.extended_key_usage() {
        Ok(Some(e)) => (e.value.server_auth || e.value.any, e.value.client_auth || e.value.any),
        _ => (false, false),
    };
    Ok(Cert { cn, orgs, dns, ips, is_ca, server_auth, client_auth, origin: origin.to_string(), der })
}

/// All certificates in PEM text.
pub fn certs_from_pem(pem: &[u8], origin: &str) -> Result<Vec<Cert>, PkiError> {
    let ders: Vec<Vec<u8>> = rustls_pemfile::certs(&mut &pem[..])
        .map(|r| r.map(|c| c.as_ref().to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|e| PkiError(format!("failed to parse certificate PEM in {origin}: {e}")))?;
    if ders.is_empty() {
        return Err(PkiError(format!("tls: failed to find any PEM data in certificate input ({origin})")));
    }
    ders.into_iter().map(|d| parse_der(d, origin)).collect()
}

fn read(path: &str, what: &str) -> Result<Vec<u8>, PkiError> {
    std::fs::read(path)
        .map_err(|e| PkiError(format!("failed to read {what} {path:?}: open {path}: {}", go_io_error(&e))))
}

/// An io error worded like Go's syscall errors (`no such file or directory`).
pub fn go_io_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => e.to_string(),
    }
}

/// Loads a certificate file (first cert = leaf, rest = chain).
pub fn load_certs(path: &str) -> Result<Vec<Cert>, PkiError> {
    certs_from_pem(&read(path, "certificate")?, path)
}

/// A loaded private key (PEM kept for TLS configs; never logged).
#[derive(Clone)]
pub struct Key {
    /// PEM text.
    pub pem: String,
    /// Raw public key bits derived from the private key.
    pub public_raw: Vec<u8>,
    /// SubjectPublicKeyInfo DER derived from the private key.
    pub spki: Vec<u8>,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// Parses a private key from PEM text.
pub fn key_from_pem(pem: &str, origin: &str) -> Result<Key, PkiError> {
    let pair = rcgen::KeyPair::from_pem(pem)
        .map_err(|e| PkiError(format!("tls: failed to parse private key in {origin}: {e}")))?;
    Ok(Key {
        pem: pem.to_string(),
        public_raw: pair.der_bytes().to_vec(),
        spki: pair.subject_public_key_info(),
    })
}

/// Loads a private key file.
pub fn load_key(path: &str) -> Result<Key, PkiError> {
    let bytes = read(path, "key")?;
    key_from_pem(&String::from_utf8_lossy(&bytes), path)
}

/// `tls.X509KeyPair`-style check that the key belongs to the certificate.
pub fn check_pair(cert: &Cert, key: &Key) -> Result<(), PkiError> {
    let (_, x) = X509Certificate::from_der(&cert.der).map_err(|e| PkiError(e.to_string()))?;
    if x.public_key().subject_public_key.data.as_ref() != key.public_raw.as_slice() {
        return Err(PkiError(format!(
            "tls: private key does not match public key (certificate {})",
            cert.origin
        )));
    }
    Ok(())
}

/// Checks that `cert` was signed by one of `cas` (issuer name and signature), like x509.Verify.
pub fn check_chain(cert: &Cert, cas: &[Cert]) -> Result<(), PkiError> {
    let (_, x) = X509Certificate::from_der(&cert.der).map_err(|e| PkiError(e.to_string()))?;
    for ca in cas {
        let Ok((_, c)) = X509Certificate::from_der(&ca.der) else { continue };
        if c.subject().as_raw() == x.issuer().as_raw() && x.verify_signature(Some(c.public_key())).is_ok() {
            return Ok(());
        }
    }
    Err(PkiError(format!(
        "x509: certificate signed by unknown authority (certificate {} CN={:?}, issuer {:?}, not signed by CA in {})",
        cert.origin,
        cert.cn,
        x.issuer().to_string(),
        cas.first().map(|c| c.origin.as_str()).unwrap_or("-")
    )))
}

/// Loads a CA bundle and checks each is a CA.
pub fn load_ca(path: &str) -> Result<Vec<Cert>, PkiError> {
    let cas = load_certs(path)?;
    for ca in &cas {
        if !ca.is_ca {
            return Err(PkiError(format!(
                "{path}: certificate {:?} is not a CA (basicConstraints CA:FALSE)",
                ca.cn
            )));
        }
    }
    Ok(cas)
}

/// Loads a CSR signer (`--cluster-signing-cert-file` + `--cluster-signing-key-file`) the way the real
/// controller-manager does (`signer.newCAProvider`): `tls.X509KeyPair` first (the key must belong to the
/// FIRST certificate of the file), then the file must hold exactly one certificate
/// (`expected 1 certificate, found 2`): a CA bundle is a trust file, never a signer.
pub fn load_signing_pair(cert_path: &str, key_path: &str) -> Result<(Cert, Key), PkiError> {
    let certs = load_certs(cert_path)?;
    let key = load_key(key_path)?;
    check_pair(&certs[0], &key)
        .map_err(|e| PkiError(format!("error reading CA cert file {cert_path:?}: {e}")))?;
    if certs.len() != 1 {
        return Err(PkiError(format!(
            "error reading CA cert file \"csr-controller\": expected 1 certificate, found {} (--cluster-signing-cert-file {cert_path})",
            certs.len()
        )));
    }
    let ca = certs.into_iter().next().expect("one certificate");
    if !ca.is_ca {
        return Err(PkiError(format!(
            "{cert_path}: certificate {:?} is not a CA (basicConstraints CA:FALSE)",
            ca.cn
        )));
    }
    Ok((ca, key))
}

/// The usage a leaf must carry.
#[derive(Debug, Clone, Copy)]
pub enum Usage {
    /// ExtKeyUsage serverAuth.
    Server,
    /// ExtKeyUsage clientAuth.
    Client,
}

/// Loads a cert+key pair, checks pair, usage and (when given) the chain.
pub fn load_leaf(
    cert_path: &str,
    key_path: &str,
    usage: Usage,
    cas: Option<&[Cert]>,
) -> Result<(Vec<Cert>, Key), PkiError> {
    let certs = load_certs(cert_path)?;
    let key = load_key(key_path)?;
    let leaf = &certs[0];
    check_pair(leaf, &key)?;
    check_usage(leaf, usage)?;
    if let Some(cas) = cas {
        check_chain(leaf, cas)?;
    }
    Ok((certs, key))
}

/// Checks the extended key usage.
pub fn check_usage(cert: &Cert, usage: Usage) -> Result<(), PkiError> {
    let ok = match usage {
        Usage::Server => cert.server_auth,
        Usage::Client => cert.client_auth,
    };
    if ok {
        Ok(())
    } else {
        Err(PkiError(format!(
            "x509: certificate {} (CN={:?}) specifies an incompatible key usage: {:?} needed",
            cert.origin, cert.cn, usage
        )))
    }
}

/// Checks that the cert's SANs cover `ip`.
pub fn covers_ip(cert: &Cert, ip: IpAddr) -> bool {
    cert.ips.contains(&ip)
}

/// Checks that the cert's SANs cover the DNS name.
pub fn covers_dns(cert: &Cert, name: &str) -> bool {
    cert.dns.iter().any(|d| d.eq_ignore_ascii_case(name))
}

/// Public key parameters of an SPKI for the JWKS document (RSA n/e or EC x/y), base64url.
pub fn jwk_of_spki(spki_der: &[u8]) -> Option<serde_json::Value> {
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let (_, spki) = SubjectPublicKeyInfo::from_der(spki_der).ok()?;
    let kid = b64(&<sha2::Sha256 as sha2::Digest>::digest(spki_der));
    match spki.parsed().ok()? {
        x509_parser::public_key::PublicKey::RSA(rsa) => {
            let strip = |b: &[u8]| b.iter().skip_while(|x| **x == 0).copied().collect::<Vec<u8>>();
            Some(serde_json::json!({"use":"sig","kty":"RSA","kid":kid,"alg":"RS256",
                "n": b64(&strip(rsa.modulus)), "e": b64(&strip(rsa.exponent))}))
        }
        x509_parser::public_key::PublicKey::EC(point) => {
            let data = point.data();
            let half = (data.len() - 1) / 2;
            Some(serde_json::json!({"use":"sig","kty":"EC","kid":kid,"alg":"ES256","crv":"P-256",
                "x": b64(&data[1..1 + half]), "y": b64(&data[1 + half..])}))
        }
        _ => None,
    }
}

/// Loads public keys (`PUBLIC KEY` PEM blocks, or certificates) from a `--service-account-key-file`.
pub fn load_public_keys(path: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    let bytes = read(path, "service account key file")?;
    let mut out = Vec::new();
    for item in rustls_pemfile::read_all(&mut &bytes[..]) {
        match item.map_err(|e| PkiError(format!("{path}: {e}")))? {
            rustls_pemfile::Item::SubjectPublicKeyInfo(spki) => out.push(spki.as_ref().to_vec()),
            rustls_pemfile::Item::X509Certificate(c) => {
                let (_, x) = X509Certificate::from_der(c.as_ref()).map_err(|e| PkiError(e.to_string()))?;
                out.push(x.public_key().raw.to_vec());
            }
            rustls_pemfile::Item::Pkcs8Key(_)
            | rustls_pemfile::Item::Pkcs1Key(_)
            | rustls_pemfile::Item::Sec1Key(_) => {
                let key = key_from_pem(&String::from_utf8_lossy(&bytes), path)?;
                out.push(key.spki);
            }
            _ => {}
        }
    }
    if out.is_empty() {
        return Err(PkiError(format!(
            "failed to parse key file {path:?}: data does not contain any valid RSA or ECDSA public keys"
        )));
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod test_ca {
    //! Throw-away CAs and leaves for the unit tests (rcgen), and a helper writing them to files.

    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };

    /// A self-signed CA that signs leaves.
    pub(crate) struct TestCa {
        /// PEM certificate.
        pub(crate) cert_pem: String,
        /// PEM key.
        pub(crate) key_pem: String,
        issuer: Issuer<'static, KeyPair>,
    }

    impl TestCa {
        /// A new CA with subject CN `cn` and a key of its own.
        pub(crate) fn new(cn: &str) -> Self {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
            let key = KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            Self { cert_pem: cert.pem(), key_pem: key.serialize_pem(), issuer: Issuer::new(params, key) }
        }

        /// A leaf this CA signs: (cert PEM, key PEM).
        pub(crate) fn leaf(
            &self,
            cn: &str,
            ekus: &[ExtendedKeyUsagePurpose],
            sans: &[&str],
        ) -> (String, String) {
            let mut params =
                CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
            params.extended_key_usages = ekus.to_vec();
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        }
    }

    /// Writes `text` to `dir/name`; its path.
    pub(crate) fn write(dir: &std::path::Path, name: &str, text: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::test_ca::{write, TestCa};
    use super::*;
    use rcgen::ExtendedKeyUsagePurpose as Eku;

    /// The old and the new cluster CA of a rotation share their subject (`CN=kubernetes`) and differ in
    /// their keys; a third CA with that subject stands for a foreign one.
    #[test]
    fn a_bundle_of_two_cas_with_one_subject_trusts_the_leaves_of_either_and_not_of_a_third() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new, other) =
            (TestCa::new("kubernetes"), TestCa::new("kubernetes"), TestCa::new("kubernetes"));
        let bundle = write(dir.path(), "ca.crt", &format!("{}{}", new.cert_pem, old.cert_pem));
        let cas = load_ca(&bundle).unwrap();
        assert_eq!(cas.len(), 2, "every certificate of the file is a trust anchor");
        assert!(cas.iter().all(|c| c.cn == "kubernetes" && c.is_ca));
        for (name, ca, trusted) in [("old", &old, true), ("new", &new, true), ("other", &other, false)] {
            // A serving cert (the apiserver's and the kubelet's are checked against their client CA).
            let (c, k) = ca.leaf("kube-apiserver", &[Eku::ServerAuth], &["127.0.0.1"]);
            let (cp, kp) = (
                write(dir.path(), &format!("{name}.crt"), &c),
                write(dir.path(), &format!("{name}.key"), &k),
            );
            match load_leaf(&cp, &kp, Usage::Server, Some(&cas)) {
                Ok(_) => assert!(trusted, "a leaf of the {name} CA must be refused"),
                Err(e) => {
                    assert!(!trusted, "a leaf of the {name} CA must be accepted: {e}");
                    assert!(e.0.contains("x509: certificate signed by unknown authority"), "{e}");
                }
            }
            // A client cert, as the x509 authenticator of the apiserver, kubelet and controller-manager sees it.
            let (c, _) = ca.leaf("jane", &[Eku::ClientAuth], &[]);
            let cert = certs_from_pem(c.as_bytes(), "client").unwrap().remove(0);
            assert_eq!(check_chain(&cert, &cas).is_ok(), trusted, "client cert of the {name} CA");
        }
        // Each CA alone trusts its own leaves only: the second certificate of the bundle is what lets the old
        // CA's leaves in.
        let new_only = certs_from_pem(new.cert_pem.as_bytes(), "new").unwrap();
        let (c, _) = old.leaf("jane", &[Eku::ClientAuth], &[]);
        assert!(check_chain(&certs_from_pem(c.as_bytes(), "client").unwrap()[0], &new_only).is_err());
    }

    #[test]
    fn a_csr_signer_is_one_certificate_with_its_key_as_the_controller_manager_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (TestCa::new("kubernetes"), TestCa::new("kubernetes"));
        let w = |name: &str, text: &str| write(dir.path(), name, text);
        let (new_crt, new_key, old_key) =
            (w("new.crt", &new.cert_pem), w("new.key", &new.key_pem), w("old.key", &old.key_pem));
        let (signer, _) = load_signing_pair(&new_crt, &new_key).unwrap();
        assert_eq!(signer.cn, "kubernetes");
        // A bundle, signing CA first, with its key: tls.X509KeyPair accepts it, the CSR signer does not.
        let bundle = w("bundle.crt", &format!("{}{}", new.cert_pem, old.cert_pem));
        let err = load_signing_pair(&bundle, &new_key).unwrap_err().0;
        assert!(err.contains("expected 1 certificate, found 2"), "{err}");
        // The key of the second certificate: refused by tls.X509KeyPair already.
        let err = load_signing_pair(&bundle, &old_key).unwrap_err().0;
        assert!(err.contains("tls: private key does not match public key"), "{err}");
        // One certificate and another CA's key.
        let err = load_signing_pair(&new_crt, &old_key).unwrap_err().0;
        assert!(err.contains("tls: private key does not match public key"), "{err}");
        // A leaf is no signer.
        let (c, k) = new.leaf("kube-apiserver", &[Eku::ServerAuth], &["127.0.0.1"]);
        let err = load_signing_pair(&w("leaf.crt", &c), &w("leaf.key", &k)).unwrap_err().0;
        assert!(err.contains("is not a CA"), "{err}");
    }
}
