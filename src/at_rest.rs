//! The cluster's encryption-at-rest key: which provider it is for and its secret, both kept in the PKI store
//! (`secrets/encryption-key`, base64 of 32 random bytes; `secrets/encryption-provider`, the provider's name).
//! The apiserver's EncryptionConfiguration is rendered from it (`render::encryption_config`).
//!
//! Which provider (issue #29). Upstream's table ("Encrypting Confidential Data at Rest") rates `aescbc` weak
//! (CBC is open to padding-oracle attacks) and advises against it, `aesgcm` needs a key rotation every
//! 200,000 writes, and `kms` needs an external KMS plugin kubeforge does not run. `secretbox` (XSalsa20 and
//! Poly1305, 32-byte key) is the strong choice among the local-key providers, so **new clusters get a
//! secretbox key**.
//!
//! Clusters made before (their store has a key and no provider record) **keep aescbc**: their key was made
//! for aescbc, every Secret in their etcd is written with it, and `apply` renders exactly the configuration
//! their apiservers run (a re-apply stays at 0 changes). Moving such a cluster to secretbox is a rotation that
//! must not happen as a side effect of `apply`: every apiserver must first be able to read with the old key
//! while the new one writes, then every Secret must be rewritten, and only then may the old key go. That is
//! the job of `kubeforge rotate` (issue #31, not written yet); until then `kubeforge audit` reports aescbc as
//! a finding (CIS 1.2.28, WARN) that names it. aescbc still encrypts: nothing is stored in the clear.

use crate::pki::store::{NewKeys, Store};
use crate::{Error, Result};

/// Where the key is, relative to the store.
pub const KEY_FILE: &str = "secrets/encryption-key";
/// Where the provider the key is for is recorded, relative to the store.
pub const PROVIDER_FILE: &str = "secrets/encryption-provider";
/// The key's name in the EncryptionConfiguration (written into every encrypted value's prefix).
pub const KEY_NAME: &str = "kubeforge-1";

/// An encrypting provider kubeforge renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// XSalsa20-Poly1305 (NaCl secretbox): the default of new clusters.
    Secretbox,
    /// AES-CBC with PKCS#7 padding: what clusters made before secretbox keep until a rotation.
    Aescbc,
}

impl Provider {
    /// The provider's field name in the EncryptionConfiguration (and in the store's record).
    pub fn name(self) -> &'static str {
        match self {
            Provider::Secretbox => "secretbox",
            Provider::Aescbc => "aescbc",
        }
    }

    fn parse(s: &str) -> Option<Provider> {
        [Provider::Secretbox, Provider::Aescbc].into_iter().find(|p| p.name() == s)
    }
}

/// The key that encrypts Secrets at rest.
#[derive(Clone, PartialEq, Eq)]
pub struct EncryptionKey {
    /// The provider it is for.
    pub provider: Provider,
    /// Base64 of the 32 secret bytes, as the EncryptionConfiguration carries it.
    pub secret: String,
}

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptionKey")
            .field("provider", &self.provider)
            .field("secret", &"REDACTED")
            .finish()
    }
}

/// The cluster's key: read from the store, or, for a new cluster only, created once for secretbox (the
/// provider record first, then the key, each 0600 and forced to disk). A key that cannot be read, is not 32
/// bytes of base64, or whose provider record names no provider stops the run: every Secret of a live cluster
/// is encrypted with it, so it is never replaced by a new one.
pub fn load_or_create(store: &Store, new_keys: NewKeys) -> Result<EncryptionKey> {
    use base64::Engine;
    let path = store.root().join(KEY_FILE);
    let damaged = |file: &str, why: String| {
        Error::msg(
            format!("{}: {why}", store.root().join(file).display()),
            Some("bring the key back from a backup (`kubeforge restore --from ARCHIVE`); a new key would leave every Secret unreadable"),
        )
    };
    let provider = match std::fs::read(store.root().join(PROVIDER_FILE)) {
        Ok(text) => {
            let text = String::from_utf8_lossy(&text).trim().to_owned();
            Some(Provider::parse(&text).ok_or_else(|| {
                damaged(
                    PROVIDER_FILE,
                    format!("{text:?} is not a provider kubeforge renders (secretbox, aescbc)"),
                )
            })?)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(Error::io(format!("reading {}", store.root().join(PROVIDER_FILE).display()), e))
        }
    };
    match std::fs::read(&path) {
        Ok(k) => {
            let text = String::from_utf8_lossy(&k).trim().to_owned();
            match base64::engine::general_purpose::STANDARD.decode(&text) {
                // A key without a record was made by a kubeforge that knew only aescbc.
                Ok(b) if b.len() == 32 => {
                    Ok(EncryptionKey { provider: provider.unwrap_or(Provider::Aescbc), secret: text })
                }
                Ok(b) => Err(damaged(KEY_FILE, format!("the key is {} bytes, not 32", b.len()))),
                Err(e) => Err(damaged(KEY_FILE, format!("not base64 ({e})"))),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if new_keys == NewKeys::Refused {
                return Err(damaged(
                    KEY_FILE,
                    "missing, and the cluster is not new: refusing to create a new encryption key".into(),
                ));
            }
            let key: [u8; 32] = rand::random();
            let secret = base64::engine::general_purpose::STANDARD.encode(key);
            // The record first: a key on disk without one would be taken for an aescbc key.
            store.write_durable(
                PROVIDER_FILE,
                format!("{}\n", Provider::Secretbox.name()).as_bytes(),
                0o600,
            )?;
            store.write_durable(KEY_FILE, secret.as_bytes(), 0o600)?;
            Ok(EncryptionKey { provider: Provider::Secretbox, secret })
        }
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path(), "c");
        (dir, store)
    }

    #[test]
    fn a_new_cluster_gets_a_secretbox_key_recorded_before_the_key() {
        let (_d, s) = store();
        let k = load_or_create(&s, NewKeys::Allowed).unwrap();
        assert_eq!(k.provider, Provider::Secretbox);
        assert_eq!(std::fs::read_to_string(s.root().join(PROVIDER_FILE)).unwrap(), "secretbox\n");
        assert_eq!(std::fs::read_to_string(s.root().join(KEY_FILE)).unwrap(), k.secret);
        assert_eq!(load_or_create(&s, NewKeys::Refused).unwrap(), k, "read back, never made again");
        assert!(!format!("{k:?}").contains(&k.secret), "Debug never shows the key");
    }

    #[test]
    fn a_store_from_before_the_record_keeps_its_aescbc_key() {
        let (_d, s) = store();
        let secret = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        s.write_durable(KEY_FILE, secret.as_bytes(), 0o600).unwrap();
        let k = load_or_create(&s, NewKeys::Allowed).unwrap();
        assert_eq!((k.provider, k.secret.as_str()), (Provider::Aescbc, secret));
        assert!(!s.root().join(PROVIDER_FILE).exists(), "nothing is written: the cluster is not switched");
        // A record kubeforge cannot read stops the run instead of guessing.
        s.write_durable(PROVIDER_FILE, b"aesgcm\n", 0o600).unwrap();
        let e = load_or_create(&s, NewKeys::Allowed).unwrap_err().report();
        assert!(e.contains("\"aesgcm\" is not a provider kubeforge renders"), "{e}");
        s.write_durable(PROVIDER_FILE, b"aescbc\n", 0o600).unwrap();
        assert_eq!(load_or_create(&s, NewKeys::Refused).unwrap().provider, Provider::Aescbc);
    }
}
