//! Encryption at rest, as kube-apiserver's `--encryption-provider-config` does it: the
//! EncryptionConfiguration (`apiserver.config.k8s.io/v1`) is read and validated at startup (a bad one stops
//! the apiserver, `error while parsing file: ...`), and every value of a listed resource goes through the
//! upstream prefix transformers on its way to and from etcd.
//!
//! Byte layout (upstream `storage/value/encrypt/*` and `server/options/encryptionconfig`):
//! - writes use the **first** provider and its **first** key: `k8s:enc:<provider>:v1:<key name>:` + payload;
//!   `identity` writes the plain value;
//! - `aescbc`: 16-byte random IV, then AES-CBC (PKCS#7 padding) of the value; keys of 16, 24 or 32 bytes;
//! - `aesgcm`: 12-byte random nonce, then AES-GCM ciphertext and tag, the etcd key as additional data;
//!   keys of 16, 24 or 32 bytes;
//! - `secretbox`: 24-byte random nonce, then NaCl secretbox (XSalsa20-Poly1305: the 16-byte tag, then the
//!   ciphertext); 32-byte keys;
//! - reads try each provider whose prefix the value carries, in the configured order, and within it the key
//!   whose name follows; `identity` reads any value that does not start with `k8s:enc:`. A value nothing can
//!   read is an error for that object (HTTP 500 `Internal error occurred: ...`), as upstream.
//!
//! Deliberate limits, each refused at startup with a message that says so: `kms` providers (the tests have
//! no KMS plugin, and kubeforge never renders one), and fields the API does not have (upstream's decoder
//! ignores unknown fields; the double refuses them, because a field kubeforge writes that the apiserver
//! silently ignores is a kubeforge bug). Resource names: `secrets`, `<resource>.<group>`, `*.` (the core
//! group), `*.<group>` and `*.*`; an exact name wins over `*.<group>`, which wins over `*.*`.

use std::sync::Arc;

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use serde::Deserialize;

/// The prefix every encrypted value starts with (upstream reserves it; `identity` refuses to read it).
const ENCRYPTED: &[u8] = b"k8s:enc:";

/// One key of a provider: its name (written into every value) and the raw secret.
#[derive(Clone)]
struct Key {
    name: String,
    secret: Vec<u8>,
}

/// One provider of a resource list, in configured order.
#[derive(Clone)]
enum Provider {
    Identity,
    AesCbc(Vec<Key>),
    AesGcm(Vec<Key>),
    Secretbox(Vec<Key>),
}

impl Provider {
    /// The prefix of the values this provider writes (empty for identity).
    fn prefix(&self) -> &'static [u8] {
        match self {
            Provider::Identity => b"",
            Provider::AesCbc(_) => b"k8s:enc:aescbc:v1:",
            Provider::AesGcm(_) => b"k8s:enc:aesgcm:v1:",
            Provider::Secretbox(_) => b"k8s:enc:secretbox:v1:",
        }
    }

    fn keys(&self) -> &[Key] {
        match self {
            Provider::Identity => &[],
            Provider::AesCbc(k) | Provider::AesGcm(k) | Provider::Secretbox(k) => k,
        }
    }

    /// The name upstream's "no matching key" error gives the provider.
    fn transformer_name(&self) -> &'static str {
        match self {
            Provider::Secretbox(_) => "Secretbox",
            _ => "AES",
        }
    }
}

/// The providers of one resource: what upstream calls its prefix transformers.
#[derive(Clone)]
pub struct Providers(Vec<Provider>);

impl Providers {
    /// The value as stored: encrypted with the first provider's first key (`etcd_key` is the additional
    /// data of aesgcm).
    pub fn write(&self, plain: &[u8], etcd_key: &str) -> Result<Vec<u8>, String> {
        let first = self.0.first().ok_or("no providers")?;
        let Some(key) = first.keys().first() else { return Ok(plain.to_vec()) };
        let mut out = first.prefix().to_vec();
        out.extend_from_slice(key.name.as_bytes());
        out.push(b':');
        match first {
            Provider::Identity => unreachable!("identity has no keys"),
            Provider::AesCbc(_) => cbc_seal(&key.secret, plain, &mut out)?,
            Provider::AesGcm(_) => gcm_seal(&key.secret, plain, etcd_key.as_bytes(), &mut out)?,
            Provider::Secretbox(_) => secretbox_seal(&key.secret, plain, &mut out)?,
        }
        Ok(out)
    }

    /// Whether `stored` was written otherwise than [`Providers::write`] writes now: by another provider or
    /// key than the first one (upstream's prefix transformers then report the value stale, and the storage
    /// layer writes it again on an update even when the object is unchanged: that is what makes
    /// `kubectl get -o json | kubectl replace -f -` re-encrypt after a key rotation).
    pub fn is_stale(&self, stored: &[u8]) -> bool {
        let Some(first) = self.0.first() else { return false };
        match first.keys().first() {
            None => stored.starts_with(ENCRYPTED),
            Some(key) => {
                let mut prefix = first.prefix().to_vec();
                prefix.extend_from_slice(key.name.as_bytes());
                prefix.push(b':');
                !stored.starts_with(&prefix)
            }
        }
    }

    /// The plain value of a stored one, read by whichever provider and key it was written with.
    pub fn read(&self, stored: &[u8], etcd_key: &str) -> Result<Vec<u8>, String> {
        let mut errors = Vec::new();
        for p in &self.0 {
            let Some(rest) = stored.strip_prefix(p.prefix()) else { continue };
            let result = match p {
                Provider::Identity if stored.starts_with(ENCRYPTED) => {
                    Err("identity transformer tried to read encrypted data".to_string())
                }
                Provider::Identity => Ok(stored.to_vec()),
                _ => read_with_keys(p, rest, etcd_key),
            };
            // Upstream: an identity that cannot read lets the next provider try; any other provider whose
            // prefix matched has the last word.
            match result {
                Err(e) if p.prefix().is_empty() => errors.push(e),
                r => return r,
            }
        }
        match errors.len() {
            0 => Err("no matching prefix found".into()),
            1 => Err(errors.remove(0)),
            _ => Err(format!("[{}]", errors.join(", "))),
        }
    }
}

fn read_with_keys(p: &Provider, rest: &[u8], etcd_key: &str) -> Result<Vec<u8>, String> {
    for key in p.keys() {
        let Some(payload) = rest.strip_prefix(key.name.as_bytes()).and_then(|r| r.strip_prefix(b":")) else {
            continue;
        };
        return match p {
            Provider::AesCbc(_) => cbc_open(&key.secret, payload),
            Provider::AesGcm(_) => gcm_open(&key.secret, payload, etcd_key.as_bytes()),
            Provider::Secretbox(_) => secretbox_open(&key.secret, payload),
            Provider::Identity => unreachable!("identity has no keys"),
        };
    }
    Err(format!("no matching key was found for the provided {} transformer", p.transformer_name()))
}

fn random<const N: usize>() -> Result<[u8; N], String> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| format!("unable to read sufficient random bytes: {e}"))?;
    Ok(b)
}

fn cbc_seal(key: &[u8], plain: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    use aes::cipher::{block_padding::Pkcs7, BlockModeEncrypt, KeyIvInit};
    let iv = random::<16>()?;
    let ct = match key.len() {
        16 => cbc::Encryptor::<aes::Aes128>::new_from_slices(key, &iv)
            .map(|c| c.encrypt_padded_vec::<Pkcs7>(plain)),
        24 => cbc::Encryptor::<aes::Aes192>::new_from_slices(key, &iv)
            .map(|c| c.encrypt_padded_vec::<Pkcs7>(plain)),
        _ => cbc::Encryptor::<aes::Aes256>::new_from_slices(key, &iv)
            .map(|c| c.encrypt_padded_vec::<Pkcs7>(plain)),
    }
    .map_err(|e| format!("crypto/aes: invalid key size {}: {e}", key.len()))?;
    out.extend_from_slice(&iv);
    out.extend_from_slice(&ct);
    Ok(())
}

fn cbc_open(key: &[u8], data: &[u8]) -> Result<Vec<u8>, String> {
    use aes::cipher::{block_padding::Pkcs7, BlockModeDecrypt, KeyIvInit};
    if data.len() < 16 {
        return Err("the stored data was shorter than the required size".into());
    }
    let (iv, ct) = data.split_at(16);
    if ct.len() % 16 != 0 {
        return Err("the stored data is not a multiple of the block size".into());
    }
    let bad = |_| "invalid padding on input".to_string();
    let keyerr = |e| format!("crypto/aes: invalid key size {}: {e}", key.len());
    match key.len() {
        16 => cbc::Decryptor::<aes::Aes128>::new_from_slices(key, iv)
            .map_err(keyerr)?
            .decrypt_padded_vec::<Pkcs7>(ct)
            .map_err(bad),
        24 => cbc::Decryptor::<aes::Aes192>::new_from_slices(key, iv)
            .map_err(keyerr)?
            .decrypt_padded_vec::<Pkcs7>(ct)
            .map_err(bad),
        _ => cbc::Decryptor::<aes::Aes256>::new_from_slices(key, iv)
            .map_err(keyerr)?
            .decrypt_padded_vec::<Pkcs7>(ct)
            .map_err(bad),
    }
}

type Aes192Gcm = aes_gcm::AesGcm<aes::Aes192, aes_gcm::aead::consts::U12>;

fn gcm_seal(key: &[u8], plain: &[u8], aad: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    let nonce = random::<12>()?;
    let msg = Payload { msg: plain, aad };
    let keyerr = |_| format!("crypto/aes: invalid key size {}", key.len());
    let ct = match key.len() {
        16 => aes_gcm::Aes128Gcm::new_from_slice(key).map_err(keyerr)?.encrypt(&nonce.into(), msg),
        24 => Aes192Gcm::new_from_slice(key).map_err(keyerr)?.encrypt(&nonce.into(), msg),
        _ => aes_gcm::Aes256Gcm::new_from_slice(key).map_err(keyerr)?.encrypt(&nonce.into(), msg),
    }
    .map_err(|_| "failed to seal with AES-GCM".to_string())?;
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    Ok(())
}

fn gcm_open(key: &[u8], data: &[u8], aad: &[u8]) -> Result<Vec<u8>, String> {
    use aes_gcm::aead::{Aead, KeyInit, Payload};
    if data.len() < 12 {
        return Err("the stored data was shorter than the required size".into());
    }
    let (nonce, ct) = data.split_at(12);
    let nonce: [u8; 12] = nonce.try_into().map_err(|_| "bad nonce")?;
    let msg = Payload { msg: ct, aad };
    let keyerr = |_| format!("crypto/aes: invalid key size {}", key.len());
    match key.len() {
        16 => aes_gcm::Aes128Gcm::new_from_slice(key).map_err(keyerr)?.decrypt(&nonce.into(), msg),
        24 => Aes192Gcm::new_from_slice(key).map_err(keyerr)?.decrypt(&nonce.into(), msg),
        _ => aes_gcm::Aes256Gcm::new_from_slice(key).map_err(keyerr)?.decrypt(&nonce.into(), msg),
    }
    .map_err(|_| "cipher: message authentication failed".to_string())
}

fn secretbox_seal(key: &[u8], plain: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    use crypto_secretbox::aead::{Aead, KeyInit};
    let nonce = random::<24>()?;
    let cipher = crypto_secretbox::XSalsa20Poly1305::new_from_slice(key)
        .map_err(|_| format!("expected key size 32 for secretbox provider, got {}", key.len()))?;
    // NaCl layout (Go's secretbox.Seal): the Poly1305 tag first, then the ciphertext.
    let sealed = cipher.encrypt(&nonce.into(), plain).map_err(|_| "failed to seal with secretbox")?;
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(())
}

fn secretbox_open(key: &[u8], data: &[u8]) -> Result<Vec<u8>, String> {
    use crypto_secretbox::aead::{Aead, KeyInit};
    if data.len() < 24 + 16 {
        return Err("the stored data was shorter than the required size".into());
    }
    let (nonce, sealed) = data.split_at(24);
    let nonce: [u8; 24] = nonce.try_into().map_err(|_| "bad nonce")?;
    let cipher = crypto_secretbox::XSalsa20Poly1305::new_from_slice(key)
        .map_err(|_| format!("expected key size 32 for secretbox provider, got {}", key.len()))?;
    // Upstream's wording when secretbox.Open fails (wrong key or damaged value).
    cipher
        .decrypt(&nonce.into(), sealed)
        .map_err(|_| "output array was not large enough for encryption".into())
}

/// A resource name of a `resources[].resources` list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Name {
    /// `secrets` (core) or `deployments.apps`.
    Exact { group: String, resource: String },
    /// `*.` (core) or `*.apps`.
    Group(String),
    /// `*.*`.
    All,
}

impl Name {
    fn parse(s: &str) -> Result<Name, String> {
        if s.is_empty() || s != s.to_lowercase() || s.contains(char::is_whitespace) {
            return Err(format!("{s:?}: resource name must be lowercase and non-empty"));
        }
        Ok(match s.split_once('.') {
            Some(("*", "*")) => Name::All,
            Some(("*", g)) => Name::Group(g.into()),
            Some((r, g)) if !r.contains('*') && !g.contains('*') => {
                Name::Exact { group: g.into(), resource: r.into() }
            }
            None if s != "*" => Name::Exact { group: String::new(), resource: s.into() },
            _ => return Err(format!("{s:?}: use '*.' for every core resource, '*.<group>' or '*.*'")),
        })
    }
}

/// A checked EncryptionConfiguration.
#[derive(Clone)]
pub struct Config {
    rules: Vec<(Vec<Name>, Arc<Providers>)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FileV1 {
    api_version: Option<String>,
    kind: Option<String>,
    resources: Option<Vec<ResourceV1>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResourceV1 {
    resources: Option<Vec<String>>,
    providers: Option<Vec<ProviderV1>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProviderV1 {
    aesgcm: Option<KeysV1>,
    aescbc: Option<KeysV1>,
    secretbox: Option<KeysV1>,
    identity: Option<IdentityV1>,
    kms: Option<serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysV1 {
    keys: Option<Vec<KeyV1>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyV1 {
    name: Option<String>,
    secret: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityV1 {}

impl Config {
    /// Reads and checks `--encryption-provider-config`; the error is the one the apiserver stops with.
    pub fn load(path: &str) -> Result<Config, String> {
        let text = std::fs::read(path)
            .map_err(|e| format!("error opening encryption provider configuration file {path:?}: {e}"))?;
        if text.is_empty() {
            return Err(format!("encryption provider configuration file {path:?} is empty"));
        }
        Config::parse(&String::from_utf8_lossy(&text))
            .map_err(|e| format!("error while parsing file: error while parsing encryption provider configuration file {path:?}: {e}"))
    }

    /// Parses and validates the text of an EncryptionConfiguration (field errors worded like upstream's
    /// validation, one or `[a, b, ...]`).
    pub fn parse(text: &str) -> Result<Config, String> {
        let file: FileV1 = serde_yaml::from_str(text).map_err(|e| format!("strict decoding error: {e}"))?;
        let (api, kind) = (file.api_version.unwrap_or_default(), file.kind.unwrap_or_default());
        if api != "apiserver.config.k8s.io/v1" || kind != "EncryptionConfiguration" {
            return Err(format!(
                "no kind {kind:?} is registered for version {api:?}: want apiVersion apiserver.config.k8s.io/v1, kind EncryptionConfiguration"
            ));
        }
        let mut errs = Vec::new();
        let entries = file.resources.unwrap_or_default();
        if entries.is_empty() {
            return Err("resources: Required value: at least one resources is required".into());
        }
        let mut rules = Vec::new();
        let mut seen: Vec<Name> = Vec::new();
        for (i, entry) in entries.into_iter().enumerate() {
            let r = format!("resources[{i}].resources");
            let p = format!("resources[{i}].providers");
            let names = entry.resources.unwrap_or_default();
            if names.is_empty() {
                errs.push(format!("{r}: Required value: at least one {r} is required"));
            }
            let mut parsed = Vec::new();
            for (j, n) in names.iter().enumerate() {
                match Name::parse(n) {
                    Ok(name) if seen.contains(&name) => {
                        errs.push(format!("{r}[{j}]: Duplicate value: {n:?}: listed more than once"))
                    }
                    Ok(name) => {
                        seen.push(name.clone());
                        parsed.push(name);
                    }
                    Err(e) => errs.push(format!("{r}[{j}]: Invalid value: {e}")),
                }
            }
            let providers = entry.providers.unwrap_or_default();
            if providers.is_empty() {
                errs.push(format!("{p}: Required value: at least one {p} is required"));
            }
            let mut list = Vec::new();
            for (j, pc) in providers.into_iter().enumerate() {
                let path = format!("{p}[{j}]");
                let set = [
                    pc.kms.is_some(),
                    pc.aesgcm.is_some(),
                    pc.aescbc.is_some(),
                    pc.secretbox.is_some(),
                    pc.identity.is_some(),
                ];
                match set.iter().filter(|b| **b).count() {
                    0 => {
                        errs.push(format!("{path}: Invalid value: provider does not contain any of the expected providers: KMS, AESGCM, AESCBC, Secretbox, Identity"));
                        continue;
                    }
                    1 => {}
                    _ => {
                        errs.push(format!("{path}: Invalid value: more than one provider specified in a single element, should split into different list elements"));
                        continue;
                    }
                }
                let provider = if pc.kms.is_some() {
                    errs.push(format!("{path}.kms: Forbidden: the kube-apiserver contract double does not implement kms providers (the tests have no KMS plugin; kubeforge never renders one)"));
                    continue;
                } else if pc.identity.is_some() {
                    Provider::Identity
                } else if let Some(k) = pc.aesgcm {
                    Provider::AesGcm(keys(k, &format!("{path}.aesgcm.keys"), &[16, 24, 32], &mut errs))
                } else if let Some(k) = pc.aescbc {
                    Provider::AesCbc(keys(k, &format!("{path}.aescbc.keys"), &[16, 24, 32], &mut errs))
                } else if let Some(k) = pc.secretbox {
                    Provider::Secretbox(keys(k, &format!("{path}.secretbox.keys"), &[32], &mut errs))
                } else {
                    unreachable!("one provider is set")
                };
                list.push(provider);
            }
            rules.push((parsed, Arc::new(Providers(list))));
        }
        match errs.len() {
            0 => Ok(Config { rules }),
            1 => Err(errs.remove(0)),
            _ => Err(format!("[{}]", errs.join(", "))),
        }
    }

    /// The providers of a resource, or `None` when no entry lists it (stored as is).
    pub fn providers_for(&self, group: &str, resource: &str) -> Option<Arc<Providers>> {
        let find = |want: &dyn Fn(&Name) -> bool| {
            self.rules.iter().find(|(names, _)| names.iter().any(want)).map(|(_, p)| p.clone())
        };
        find(&|n| matches!(n, Name::Exact { group: g, resource: r } if g == group && r == resource))
            .or_else(|| find(&|n| matches!(n, Name::Group(g) if g == group)))
            .or_else(|| find(&|n| *n == Name::All))
    }
}

fn keys(k: KeysV1, path: &str, sizes: &[usize], errs: &mut Vec<String>) -> Vec<Key> {
    let list = k.keys.unwrap_or_default();
    if list.is_empty() {
        errs.push(format!("{path}: Required value: at least one keys is required"));
    }
    let mut out = Vec::new();
    for (i, key) in list.into_iter().enumerate() {
        let name = key.name.unwrap_or_default();
        if name.is_empty() {
            errs.push(format!("{path}[{i}].name: Required value: name is a mandatory field for a key"));
        }
        let Some(secret) = key.secret.filter(|s| !s.is_empty()) else {
            errs.push(format!("{path}[{i}].secret: Required value: secret is a mandatory field for a key"));
            continue;
        };
        match B64.decode(secret.trim()) {
            Err(_) => errs.push(format!("{path}[{i}].secret: Invalid value: \"REDACTED\": secrets must be base64 encoded")),
            Ok(b) if !sizes.contains(&b.len()) => errs.push(format!(
                "{path}[{i}].secret: Invalid value: \"REDACTED\": secret is not of the expected length, got {}, expected one of {sizes:?}",
                b.len()
            )),
            Ok(b) => out.push(Key { name, secret: b }),
        }
    }
    out
}

/// The transformers of every etcd key prefix the apiserver writes, from the configuration and the served
/// resources (`(group, plural, etcd segment)`): what the etcd client applies to each value.
#[derive(Clone, Default)]
pub struct AtRest {
    by_prefix: Vec<(String, Arc<Providers>)>,
}

impl AtRest {
    /// The transformers for `resources` under `config`.
    pub fn new(config: &Config, resources: &[(&str, &str, &str)]) -> AtRest {
        let by_prefix = resources
            .iter()
            .filter_map(|(g, plural, seg)| {
                config.providers_for(g, plural).map(|p| (format!("/registry/{seg}/"), p))
            })
            .collect();
        AtRest { by_prefix }
    }

    fn providers(&self, etcd_key: &str) -> Option<&Providers> {
        self.by_prefix.iter().find(|(prefix, _)| etcd_key.starts_with(prefix.as_str())).map(|(_, p)| &**p)
    }

    /// Whether values under `etcd_key` are transformed at all.
    pub fn covers(&self, etcd_key: &str) -> bool {
        self.providers(etcd_key).is_some()
    }

    /// The bytes to store for `plain` under `etcd_key`.
    pub fn to_storage(&self, etcd_key: &str, plain: Vec<u8>) -> Result<Vec<u8>, String> {
        match self.providers(etcd_key) {
            Some(p) => p.write(&plain, etcd_key),
            None => Ok(plain),
        }
    }

    /// Whether what is stored under `etcd_key` would be stored otherwise now ([`Providers::is_stale`]).
    pub fn is_stale(&self, etcd_key: &str, stored: &[u8]) -> bool {
        self.providers(etcd_key).is_some_and(|p| p.is_stale(stored))
    }

    /// The plain value of what is stored under `etcd_key`.
    pub fn from_storage(&self, etcd_key: &str, stored: Vec<u8>) -> Result<Vec<u8>, String> {
        match self.providers(etcd_key) {
            Some(p) => p.read(&stored, etcd_key),
            None => Ok(stored),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY1: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="; // bytes 0..32
    const KEY2: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8="; // bytes 32..64
    const SECRET_KEY: &str = "/registry/secrets/default/s1";
    const PLAIN: &[u8] = br#"{"kind":"Secret","data":{"k":"dmFsdWU="}}"#;

    fn config(providers: &str) -> Config {
        Config::parse(&format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{providers}"
        ))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn secrets(c: &Config) -> Arc<Providers> {
        c.providers_for("", "secrets").expect("secrets are listed")
    }

    #[test]
    fn each_provider_round_trips_and_stores_its_prefix_not_the_plaintext() {
        for (provider, key, prefix) in [
            ("secretbox", KEY1, "k8s:enc:secretbox:v1:key1:"),
            ("aescbc", KEY1, "k8s:enc:aescbc:v1:key1:"),
            ("aesgcm", KEY1, "k8s:enc:aesgcm:v1:key1:"),
            ("aescbc", "AAECAwQFBgcICQoLDA0ODw==", "k8s:enc:aescbc:v1:key1:"), // a 16-byte AES key
        ] {
            let c = config(&format!(
                "  - {provider}: {{keys: [{{name: key1, secret: {key}}}]}}\n  - identity: {{}}\n"
            ));
            let p = secrets(&c);
            let stored = p.write(PLAIN, SECRET_KEY).unwrap();
            assert!(
                stored.starts_with(prefix.as_bytes()),
                "{provider}: {}",
                String::from_utf8_lossy(&stored)
            );
            assert!(
                !stored.windows(8).any(|w| w == b"dmFsdWU=") && !stored.windows(6).any(|w| w == b"Secret")
            );
            assert_eq!(p.read(&stored, SECRET_KEY).unwrap(), PLAIN, "{provider}");
            assert_ne!(
                p.write(PLAIN, SECRET_KEY).unwrap(),
                stored,
                "{provider}: a random nonce or IV per write"
            );
        }
        // identity first: stored as is, and plain values stay readable.
        let c = config(&format!(
            "  - identity: {{}}\n  - secretbox: {{keys: [{{name: key1, secret: {KEY1}}}]}}\n"
        ));
        assert_eq!(secrets(&c).write(PLAIN, SECRET_KEY).unwrap(), PLAIN);
    }

    /// Values made by independent implementations (libsodium's crypto_secretbox_easy, OpenSSL's AES through
    /// Python's `cryptography`) with key bytes 0..32, laid out as upstream stores them: the double reads them,
    /// so its byte layout is upstream's, not merely self-consistent.
    #[test]
    fn values_sealed_by_libsodium_and_openssl_are_read() {
        let vectors = [
            ("secretbox", "azhzOmVuYzpzZWNyZXRib3g6djE6a2V5MTpkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ensI4dxjylAwxD9fxS19RXkweZvyoFTS7NOSrkb3ReHXOhKIXMaQx2kh3S4ptjCpreXuHJBPGgq5mYg="),
            ("aescbc", "azhzOmVuYzphZXNjYmM6djE6a2V5MTrIycrLzM3Oz9DR0tPU1dbXB9Fv5nNdmLeLaruI423omNW8hsJ6WiagdPqIlJmYAqY46VeOWhOuQjxolapbgKbv"),
            ("aesgcm", "azhzOmVuYzphZXNnY206djE6a2V5MToyMzQ1Njc4OTo7PD29eYSpq1ij2U9Uj+UpiIvaSpF/4P0shdGqOGC6jRH/H2VzrhxC3iXT7IA++K/owJPLIycFYQh19/Y="),
        ];
        for (provider, value) in vectors {
            let c = config(&format!("  - {provider}: {{keys: [{{name: key1, secret: {KEY1}}}]}}\n"));
            let stored = B64.decode(value).unwrap();
            assert_eq!(secrets(&c).read(&stored, SECRET_KEY).unwrap(), PLAIN, "{provider}");
        }
        // aesgcm authenticates the etcd key: the same bytes under another key are refused.
        let c = config(&format!("  - aesgcm: {{keys: [{{name: key1, secret: {KEY1}}}]}}\n"));
        let moved = secrets(&c).read(&B64.decode(vectors[2].1).unwrap(), "/registry/secrets/default/other");
        assert_eq!(moved.unwrap_err(), "cipher: message authentication failed");
    }

    #[test]
    fn a_second_key_or_provider_reads_old_data_and_a_missing_key_is_an_error() {
        let old =
            config(&format!("  - aescbc: {{keys: [{{name: old, secret: {KEY1}}}]}}\n  - identity: {{}}\n"));
        let by_old = secrets(&old).write(PLAIN, SECRET_KEY).unwrap();
        // A new secretbox key first, the old aescbc key kept for reading (a rotation's middle step).
        let rotated = config(&format!(
            "  - secretbox: {{keys: [{{name: new, secret: {KEY2}}}]}}\n  - aescbc: {{keys: [{{name: old, secret: {KEY1}}}]}}\n  - identity: {{}}\n"
        ));
        assert_eq!(secrets(&rotated).read(&by_old, SECRET_KEY).unwrap(), PLAIN);
        assert_eq!(secrets(&rotated).read(PLAIN, SECRET_KEY).unwrap(), PLAIN, "plain values, via identity");
        let by_new = secrets(&rotated).write(PLAIN, SECRET_KEY).unwrap();
        assert!(by_new.starts_with(b"k8s:enc:secretbox:v1:new:"));
        // Two keys of one provider: the first writes, both read.
        let two = config(&format!(
            "  - aescbc: {{keys: [{{name: k2, secret: {KEY2}}}, {{name: old, secret: {KEY1}}}]}}\n"
        ));
        assert_eq!(secrets(&two).read(&by_old, SECRET_KEY).unwrap(), PLAIN);
        assert!(secrets(&two).write(PLAIN, SECRET_KEY).unwrap().starts_with(b"k8s:enc:aescbc:v1:k2:"));
        // Stale: anything but the first provider's first key (an update must write it again).
        assert!(!secrets(&old).is_stale(&by_old));
        assert!(secrets(&rotated).is_stale(&by_old) && !secrets(&rotated).is_stale(&by_new));
        assert!(secrets(&rotated).is_stale(PLAIN), "a plain value read through identity");
        assert!(secrets(&two).is_stale(&by_old), "the second key of the first provider");
        let identity_first =
            config(&format!("  - identity: {{}}\n  - aescbc: {{keys: [{{name: old, secret: {KEY1}}}]}}\n"));
        assert!(secrets(&identity_first).is_stale(&by_old) && !secrets(&identity_first).is_stale(PLAIN));

        // Nothing can read: an error for that object, worded as upstream.
        let err = |c: &Config, v: &[u8]| secrets(c).read(v, SECRET_KEY).unwrap_err();
        assert_eq!(err(&old, &by_new), "identity transformer tried to read encrypted data");
        let other_key = config(&format!("  - aescbc: {{keys: [{{name: other, secret: {KEY2}}}]}}\n"));
        assert_eq!(err(&other_key, &by_old), "no matching key was found for the provided AES transformer");
        let same_name = config(&format!("  - aescbc: {{keys: [{{name: old, secret: {KEY2}}}]}}\n"));
        assert_eq!(err(&same_name, &by_old), "invalid padding on input", "a wrong key of the same name");
        let boxed = config(&format!("  - secretbox: {{keys: [{{name: new, secret: {KEY1}}}]}}\n"));
        assert_eq!(err(&boxed, &by_new), "output array was not large enough for encryption");
        assert_eq!(
            err(&boxed, PLAIN),
            "no matching prefix found",
            "no identity: a plain value is unreadable"
        );
    }

    #[test]
    fn resources_match_exact_names_before_group_and_global_wildcards() {
        let c = Config::parse(&format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n\
             - resources: [events]\n  providers: [{{identity: {{}}}}]\n\
             - resources: [secrets, deployments.apps]\n  providers: [{{secretbox: {{keys: [{{name: a, secret: {KEY1}}}]}}}}]\n\
             - resources: ['*.*']\n  providers: [{{aescbc: {{keys: [{{name: b, secret: {KEY1}}}]}}}}]\n"
        ))
        .unwrap();
        let writes = |g: &str, r: &str, prefix: &str| {
            let w = c.providers_for(g, r).unwrap().write(b"{}", "/k").unwrap();
            assert!(w.starts_with(prefix.as_bytes()), "{r}.{g}: {}", String::from_utf8_lossy(&w));
        };
        writes("", "secrets", "k8s:enc:secretbox:v1:a:");
        writes("apps", "deployments", "k8s:enc:secretbox:v1:a:");
        writes("", "events", "{}");
        writes("", "configmaps", "k8s:enc:aescbc:v1:b:");
        let only_secrets = config(&format!("  - secretbox: {{keys: [{{name: a, secret: {KEY1}}}]}}\n"));
        assert!(only_secrets.providers_for("", "configmaps").is_none());
        assert!(only_secrets.providers_for("apps", "secrets").is_none(), "secrets of another group");
        let at_rest =
            AtRest::new(&only_secrets, &[("", "secrets", "secrets"), ("", "configmaps", "configmaps")]);
        assert!(at_rest.covers("/registry/secrets/ns/a") && !at_rest.covers("/registry/configmaps/ns/a"));
        assert_eq!(at_rest.to_storage("/registry/configmaps/ns/a", PLAIN.to_vec()).unwrap(), PLAIN);
        let stored = at_rest.to_storage("/registry/secrets/ns/a", PLAIN.to_vec()).unwrap();
        assert_eq!(at_rest.from_storage("/registry/secrets/ns/a", stored).unwrap(), PLAIN);
    }

    #[test]
    fn a_bad_configuration_is_refused_with_the_field_that_is_wrong() {
        let head = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n";
        let short = B64.encode([7u8; 16]);
        for (body, needle) in [
            (format!("{head}resources:\n- resources: [secrets]\n  providers: [{{secretbox: {{keys: [{{name: a, secret: {short}}}]}}}}]\n"),
             "resources[0].providers[0].secretbox.keys[0].secret: Invalid value: \"REDACTED\": secret is not of the expected length, got 16, expected one of [32]"),
            (format!("{head}resources:\n- resources: [secrets]\n  providers: [{{aescbc: {{keys: [{{name: a, secret: '%%%'}}]}}}}]\n"),
             "resources[0].providers[0].aescbc.keys[0].secret: Invalid value: \"REDACTED\": secrets must be base64 encoded"),
            (format!("{head}resources:\n- resources: [secrets]\n  providers: [{{aescbc: {{keys: []}}}}]\n"),
             "resources[0].providers[0].aescbc.keys: Required value: at least one keys is required"),
            (format!("{head}resources:\n- resources: [secrets]\n  providers: [{{aescbc: {{keys: [{{secret: {KEY1}}}]}}}}]\n"),
             "keys[0].name: Required value: name is a mandatory field for a key"),
            (format!("{head}resources:\n- resources: [secrets]\n  providers: [{{identity: {{}}, secretbox: {{keys: [{{name: a, secret: {KEY1}}}]}}}}]\n"),
             "more than one provider specified in a single element"),
            (format!("{head}resources:\n- resources: [secrets]\n  providers: [{{identity: null}}]\n"),
             "provider does not contain any of the expected providers"),
            (format!("{head}resources:\n- resources: [secrets]\n  providers: [{{kms: {{name: k, endpoint: 'unix:///k.sock'}}}}]\n"),
             "does not implement kms providers"),
            (format!("{head}resources:\n- resources: [secrets]\n  providers: []\n"),
             "resources[0].providers: Required value"),
            (format!("{head}resources:\n- resources: [Secrets]\n  providers: [{{identity: {{}}}}]\n"),
             "must be lowercase"),
            (format!("{head}resources:\n- resources: [secrets]\n  providers: [{{identity: {{}}}}]\n- resources: [secrets]\n  providers: [{{identity: {{}}}}]\n"),
             "resources[1].resources[0]: Duplicate value"),
            (format!("{head}resources: []\n"), "at least one resources is required"),
            (format!("{head}resources:\n- resources: [secrets]\n  providers: [{{secretBox: {{keys: []}}}}]\n"),
             "unknown field `secretBox`"),
            ("apiVersion: apiserver.config.k8s.io/v1beta1\nkind: EncryptionConfiguration\nresources: []\n".into(),
             "no kind \"EncryptionConfiguration\" is registered for version \"apiserver.config.k8s.io/v1beta1\""),
        ] {
            let e = Config::parse(&body).err().unwrap_or_else(|| panic!("accepted:\n{body}"));
            assert!(e.contains(needle), "expected {needle:?} in {e:?}");
            assert!(!e.contains(KEY1) && !e.contains(&short), "a key never reaches a message: {e}");
        }
        // Several problems are reported together.
        let e =
            Config::parse(&format!("{head}resources:\n- resources: []\n  providers: []\n")).err().unwrap();
        assert!(
            e.starts_with('[')
                && e.contains("resources[0].resources")
                && e.contains("resources[0].providers"),
            "{e}"
        );
        // The file: missing, empty.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("enc.yaml");
        assert!(Config::load(path.to_str().unwrap())
            .err()
            .unwrap()
            .contains("error opening encryption provider configuration file"));
        std::fs::write(&path, "").unwrap();
        assert!(Config::load(path.to_str().unwrap()).err().unwrap().ends_with("is empty"));
        std::fs::write(&path, format!("{head}resources: []\n")).unwrap();
        assert!(Config::load(path.to_str().unwrap())
            .err()
            .unwrap()
            .starts_with("error while parsing file: "));
    }
}
