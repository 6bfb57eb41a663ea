//! Service-account tokens as kube-apiserver checks them: a JWS (ES256 or RS256) whose signature verifies with
//! one of the `--service-account-key-file` keys (every key of every file, as upstream), issued by one of
//! `--service-account-issuer`, for an audience the apiserver accepts (`--api-audiences`, by default the
//! issuers), not expired. The subject is the service account's user (`system:serviceaccount:NS:NAME`).
//! [`sign`] makes such a token with a private key, for tests.

use crate::http::Identity;
use base64::Engine;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// What a token must satisfy.
pub struct Verifier<'a> {
    /// Public keys (SPKI DER).
    pub keys: &'a [Vec<u8>],
    /// Accepted issuers.
    pub issuers: &'a [String],
    /// Accepted audiences.
    pub audiences: &'a [String],
    /// Seconds since the epoch.
    pub now: u64,
}

/// DER `SEQUENCE { INTEGER r, INTEGER s }` from a JWS ECDSA signature (`r || s`, fixed width).
fn der_of_fixed(sig: &[u8]) -> Option<Vec<u8>> {
    if !sig.len().is_multiple_of(2) || sig.is_empty() {
        return None;
    }
    let int = |b: &[u8]| {
        let mut v: Vec<u8> = b.iter().copied().skip_while(|x| *x == 0).collect();
        if v.first().is_none_or(|x| x & 0x80 != 0) {
            v.insert(0, 0);
        }
        let mut out = vec![0x02, v.len() as u8];
        out.extend(v);
        out
    };
    let (r, s) = sig.split_at(sig.len() / 2);
    let body = [int(r), int(s)].concat();
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    Some(out)
}

/// `r || s` (32 bytes each) from a DER ECDSA P-256 signature.
fn fixed_of_der(der: &[u8]) -> Option<Vec<u8>> {
    let body = der.strip_prefix(&[0x30])?.get(1..)?;
    let mut out = Vec::new();
    let mut rest = body;
    for _ in 0..2 {
        let (tag, len) = (*rest.first()?, *rest.get(1)? as usize);
        if tag != 0x02 {
            return None;
        }
        let v: Vec<u8> = rest.get(2..2 + len)?.iter().copied().skip_while(|x| *x == 0).collect();
        if v.len() > 32 {
            return None;
        }
        out.extend(std::iter::repeat_n(0, 32 - v.len()));
        out.extend(v);
        rest = &rest[2 + len..];
    }
    Some(out)
}

/// Whether `sig` over `msg` verifies with `spki` for the JWS algorithm `alg`.
fn verifies(spki: &[u8], alg: &str, msg: &[u8], sig: &[u8]) -> bool {
    use rustls::pki_types::SignatureVerificationAlgorithm;
    use rustls::SignatureScheme;
    use x509_parser::prelude::FromDer;
    let Ok((_, info)) = x509_parser::x509::SubjectPublicKeyInfo::from_der(spki) else { return false };
    let (scheme, sig) = match (alg, info.parsed()) {
        ("ES256", Ok(x509_parser::public_key::PublicKey::EC(_))) => match der_of_fixed(sig) {
            Some(d) => (SignatureScheme::ECDSA_NISTP256_SHA256, d),
            None => return false,
        },
        ("RS256", Ok(x509_parser::public_key::PublicKey::RSA(_))) => {
            (SignatureScheme::RSA_PKCS1_SHA256, sig.to_vec())
        }
        _ => return false,
    };
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let algs: Vec<&dyn SignatureVerificationAlgorithm> = provider
        .signature_verification_algorithms
        .mapping
        .iter()
        .filter(|(s, _)| *s == scheme)
        .flat_map(|(_, a)| a.iter().copied())
        .collect();
    algs.iter().any(|a| a.verify_signature(&info.subject_public_key.data, msg, &sig).is_ok())
}

/// The identity a token authenticates, or why it does not (the apiserver answers 401 then).
pub fn verify(token: &str, v: &Verifier<'_>) -> Result<Identity, String> {
    let parts: Vec<&str> = token.split('.').collect();
    let [h, p, s] = parts[..] else { return Err("not a JWS compact token".into()) };
    let header: serde_json::Value = B64
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("the token's header is not JSON")?;
    let alg = header["alg"].as_str().unwrap_or_default();
    let sig = B64.decode(s).map_err(|_| "the token's signature is not base64url")?;
    let msg = format!("{h}.{p}");
    if !v.keys.iter().any(|k| verifies(k, alg, msg.as_bytes(), &sig)) {
        return Err("[invalid bearer token, square/go-jose: error in cryptographic primitive]".into());
    }
    let claims: serde_json::Value = B64
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("the token's claims are not JSON")?;
    let iss = claims["iss"].as_str().unwrap_or_default();
    if !v.issuers.iter().any(|i| i == iss) {
        return Err(format!("invalid bearer token, token issuer {iss:?} is not accepted"));
    }
    let aud: Vec<&str> = match &claims["aud"] {
        serde_json::Value::String(a) => vec![a.as_str()],
        serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_str()).collect(),
        _ => Vec::new(),
    };
    if !aud.iter().any(|a| v.audiences.iter().any(|x| x == a)) {
        return Err("invalid bearer token, token audiences are not accepted".into());
    }
    if claims["exp"].as_u64().is_none_or(|exp| exp <= v.now) {
        return Err("invalid bearer token, service account token has expired".into());
    }
    if claims["nbf"].as_u64().is_some_and(|nbf| nbf > v.now) {
        return Err("invalid bearer token, service account token is not valid yet".into());
    }
    let sub = claims["sub"].as_str().unwrap_or_default();
    let Some(ns) = sub.strip_prefix("system:serviceaccount:").and_then(|r| r.split(':').next()) else {
        return Err(format!("invalid bearer token, subject {sub:?} is not a service account"));
    };
    Ok(Identity {
        user: sub.to_string(),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".into(),
        ],
    })
}

/// A token for `namespace/name` signed with `key_pem` (ECDSA P-256 or RSA, PKCS#8 PEM), as an apiserver
/// issues one: issuer and audience `issuer`, valid from `now` for `seconds`.
pub fn sign(
    key_pem: &str,
    issuer: &str,
    namespace: &str,
    name: &str,
    now: u64,
    seconds: u64,
) -> Result<String, String> {
    use rcgen::{PublicKeyData, SigningKey};
    let key = rcgen::KeyPair::from_pem(key_pem).map_err(|e| e.to_string())?;
    let ec = key.algorithm() == &rcgen::PKCS_ECDSA_P256_SHA256;
    let kid = {
        use sha2::Digest;
        B64.encode(sha2::Sha256::digest(key.subject_public_key_info()))
    };
    let header = serde_json::json!({"alg": if ec { "ES256" } else { "RS256" }, "kid": kid});
    let claims = serde_json::json!({
        "iss": issuer, "aud": [issuer], "sub": format!("system:serviceaccount:{namespace}:{name}"),
        "iat": now, "nbf": now, "exp": now + seconds,
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name}},
    });
    let msg = format!("{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()));
    let sig = key.sign(msg.as_bytes()).map_err(|e| e.to_string())?;
    let sig = if ec { fixed_of_der(&sig).ok_or("an ECDSA signature that is not DER")? } else { sig };
    Ok(format!("{msg}.{}", B64.encode(sig)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_verifies_with_its_key_only_and_within_its_lifetime() {
        let old = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let new = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let spki = |k: &rcgen::KeyPair| rcgen::PublicKeyData::subject_public_key_info(k);
        let iss = vec!["https://kubernetes.default.svc.cluster.local".to_string()];
        let t = sign(&old.serialize_pem(), &iss[0], "default", "app", 1000, 3607).unwrap();
        let both = [spki(&old), spki(&new)];
        let v = |keys: &[Vec<u8>], now| verify(&t, &Verifier { keys, issuers: &iss, audiences: &iss, now });
        assert_eq!(v(&both, 1001).unwrap().user, "system:serviceaccount:default:app");
        assert!(v(&[spki(&new)], 1001).unwrap_err().contains("invalid bearer token"));
        assert!(v(&both, 1000 + 3607).unwrap_err().contains("expired"));
        let other = ["https://elsewhere".to_string()];
        let e =
            verify(&t, &Verifier { keys: &both, issuers: &other, audiences: &iss, now: 1001 }).unwrap_err();
        assert!(e.contains("issuer"), "{e}");
        let rsa =
            rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap();
        let t = sign(&rsa.serialize_pem(), &iss[0], "kube-system", "x", 1000, 600).unwrap();
        assert!(
            verify(&t, &Verifier { keys: &[spki(&rsa)], issuers: &iss, audiences: &iss, now: 1001 }).is_ok()
        );
        assert!(verify(&t, &Verifier { keys: &both, issuers: &iss, audiences: &iss, now: 1001 }).is_err());
    }
}
