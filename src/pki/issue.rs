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

/// Latest `notAfter` written: X.509 dates end with the year 9999 (RFC 5280 GeneralizedTime).
const LAST_DATE: OffsetDateTime = time::macros::datetime!(9999-12-31 23:59:59 UTC);

/// The `notBefore`/`notAfter` pair for a certificate valid for `validity` from `now`. Never panics: a
/// validity that overflows the calendar, or ends past what X.509 can express, is an error naming `name`.
fn window_at(
    now: OffsetDateTime,
    validity: Duration,
    name: &str,
) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    let too_long = || PkiError::Issue {
        name: name.to_owned(),
        message: format!(
            "a validity of {} ends after the last date a certificate can carry (9999-12-31)",
            humantime::format_duration(validity)
        ),
    };
    let not_before =
        time::Duration::try_from(BACKDATE).ok().and_then(|b| now.checked_sub(b)).ok_or_else(too_long)?;
    let not_after = time::Duration::try_from(validity)
        .ok()
        .and_then(|v| now.checked_add(v))
        .filter(|t| *t <= LAST_DATE)
        .ok_or_else(too_long)?;
    Ok((not_before, not_after))
}

fn window(validity: Duration, name: &str) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    window_at(OffsetDateTime::now_utc(), validity, name)
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
    (p.not_before, p.not_after) = window(validity, ca.name())?;
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
    (p.not_before, p.not_after) = window(validity, &spec.name)?;
    p.serial_number = Some(serial());
    p.use_authority_key_identifier_extension = true;
    p.signed_by(&key.0, &signer.issuer).map(|c| c.pem()).map_err(|e| err(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_never_panics_on_any_validity() {
        let now = time::macros::datetime!(2026-01-01 00:00:00 UTC);
        let (nb, na) = window_at(now, Duration::from_secs(86_400), "x").unwrap();
        assert_eq!(now - nb, time::Duration::minutes(5));
        assert_eq!(na - now, time::Duration::days(1));
        // 100 years fits; 100000 years, u64::MAX seconds and Duration::MAX are errors, not panics.
        assert!(window_at(now, Duration::from_secs(100 * 31_557_600), "x").is_ok());
        for v in [Duration::from_secs(100_000 * 31_557_600), Duration::from_secs(u64::MAX), Duration::MAX] {
            let e = window_at(now, v, "apiserver").unwrap_err();
            assert!(e.to_string().contains("apiserver"), "{e}");
        }
        // At the very end of the calendar even the backdate is checked.
        let end = time::macros::datetime!(9999-12-31 23:59:00 UTC);
        assert!(window_at(end, Duration::from_secs(3600), "x").is_err());
        assert!(window_at(
            OffsetDateTime::new_utc(time::Date::MIN, time::Time::MIDNIGHT),
            Duration::ZERO,
            "x"
        )
        .is_err());
    }

    #[test]
    fn issuing_with_an_absurd_validity_is_an_error() {
        let key = Key::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let e = ca_certificate(CaId::Cluster, &key, Duration::from_secs(100_000 * 31_557_600)).unwrap_err();
        assert!(matches!(e, PkiError::Issue { .. }) && e.to_string().contains("9999-12-31"), "{e}");
    }
}
