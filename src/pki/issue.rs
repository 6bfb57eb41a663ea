//! Key generation and signing: the only code that uses rcgen. Certificates are backdated a few minutes
//! (slow or freshly booted guests may run slightly behind) and carry kubeadm's key usages.

use super::spec::{CaId, CertSpec, Usage};
use super::{KeyAlgorithm, PkiError};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use std::time::Duration;
use time::OffsetDateTime;

/// How far `notBefore` is set in the past.
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// A private key with its PEM (PKCS#8).
pub struct Key(pub KeyPair);

impl Key {
    /// A new key.
    pub fn generate(alg: KeyAlgorithm) -> Result<Key, PkiError> {
        let err = |e: rcgen::Error| PkiError::Issue { name: format!("{alg} key"), message: e.to_string() };
        let kp = match alg {
            KeyAlgorithm::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            KeyAlgorithm::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
            KeyAlgorithm::Rsa2048 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            }
            KeyAlgorithm::Rsa3072 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_3072)
            }
            KeyAlgorithm::Rsa4096 => {
                KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_4096)
            }
        }
        .map_err(err)?;
        Ok(Key(kp))
    }

    /// Loads a PEM key.
    pub fn from_pem(pem: &str, path: &std::path::Path) -> Result<Key, PkiError> {
        KeyPair::from_pem(pem).map(Key).map_err(|e| PkiError::Invalid {
            path: path.to_owned(),
            message: format!("not a usable private key: {e}"),
        })
    }

    /// PKCS#8 PEM.
    pub fn pem(&self) -> String {
        self.0.serialize_pem()
    }

    /// The public key as SPKI PEM (`sa.pub`).
    pub fn public_pem(&self) -> String {
        self.0.public_key_pem()
    }

    /// The algorithm of this key, as kubeforge names it (RSA size from the modulus).
    pub fn algorithm(&self) -> Option<KeyAlgorithm> {
        let alg = self.0.algorithm();
        if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
            Some(KeyAlgorithm::EcdsaP256)
        } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
            Some(KeyAlgorithm::EcdsaP384)
        } else if alg == &rcgen::PKCS_RSA_SHA256 {
            // SPKI DER of an RSA key grows with the modulus: ~294 / ~422 / ~550 bytes.
            Some(match rcgen::PublicKeyData::subject_public_key_info(&self.0).len() {
                0..=350 => KeyAlgorithm::Rsa2048,
                351..=480 => KeyAlgorithm::Rsa3072,
                _ => KeyAlgorithm::Rsa4096,
            })
        } else {
            None
        }
    }
}

fn serial() -> SerialNumber {
    let mut b: [u8; 16] = rand::random();
    b[0] &= 0x7f; // positive
    SerialNumber::from_slice(&b)
}

fn window(validity: Duration) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (now - BACKDATE, now + validity)
}

/// A self-signed CA certificate (PEM) for `ca` with `key`.
pub fn ca_certificate(ca: CaId, key: &Key, validity: Duration) -> Result<String, PkiError> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, ca.common_name());
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyCertSign,
    ];
    (p.not_before, p.not_after) = window(validity);
    p.serial_number = Some(serial());
    p.use_authority_key_identifier_extension = false;
    p.self_signed(&key.0)
        .map(|c| c.pem())
        .map_err(|e| PkiError::Issue { name: ca.name().into(), message: e.to_string() })
}

/// A CA ready to sign: its certificate PEM and key.
pub struct Signer {
    issuer: Issuer<'static, KeyPair>,
}

impl Signer {
    /// A signer from a CA certificate and its key.
    pub fn new(cert_pem: &str, key: Key) -> Result<Signer, PkiError> {
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key.0)
            .map_err(|e| PkiError::Issue { name: "CA".into(), message: e.to_string() })?;
        Ok(Signer { issuer })
    }
}

/// Signs a leaf certificate for `spec` over `key`'s public key.
pub fn leaf_certificate(
    spec: &CertSpec,
    key: &Key,
    signer: &Signer,
    validity: Duration,
) -> Result<String, PkiError> {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    for o in &spec.organizations {
        dn.push(DnType::OrganizationName, o.as_str());
    }
    dn.push(DnType::CommonName, spec.common_name.as_str());
    p.distinguished_name = dn;
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    p.extended_key_usages = match spec.usage {
        Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
        Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
        Usage::ServerAndClient => {
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
        }
    };
    let err = |m: String| PkiError::Issue { name: spec.name.clone(), message: m };
    for d in &spec.dns {
        p.subject_alt_names
            .push(SanType::DnsName(d.clone().try_into().map_err(|e: rcgen::Error| err(e.to_string()))?));
    }
    for ip in &spec.ips {
        p.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    (p.not_before, p.not_after) = window(validity);
    p.serial_number = Some(serial());
    p.use_authority_key_identifier_extension = true;
    p.signed_by(&key.0, &signer.issuer).map(|c| c.pem()).map_err(|e| err(e.to_string()))
}
