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
//! the job of `kubeforge rotate encryption-key` ([`crate::rotate`]); `kubeforge audit` reports aescbc as a
//! finding (CIS 1.2.28, WARN) that names it. aescbc still encrypts: nothing is stored in the clear.
//!
//! A rotation's keys ([`Keys`]). The current key's name is recorded in `secrets/encryption-key-name` (absent:
//! `kubeforge-1`, the name of every key made before rotations existed). While a rotation runs, one record,
//! `secrets/encryption-rotation.json` (0600, written atomically and forced to disk), holds the old key, the
//! new one and the step the rotation reached; as long as it exists it alone decides what the
//! EncryptionConfiguration lists ([`Keys::rendered`]), so `apply` in the middle of a rotation renders what
//! the rotation last rolled out and never rolls it back, and a backup taken then carries both keys. The
//! rotation ends by keeping the old key aside (`secrets/retired/<name>.json`, for restoring older backups),
//! writing the new key as the current one, and removing the record last: an interrupt anywhere leaves the
//! record, and a re-run finishes the same rotation.

use crate::pki::store::{NewKeys, Store};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};

/// Where the key is, relative to the store.
pub const KEY_FILE: &str = "secrets/encryption-key";
/// Where the provider the key is for is recorded, relative to the store.
pub const PROVIDER_FILE: &str = "secrets/encryption-provider";
/// Where the current key's name is recorded (absent: [`KEY_NAME`]).
pub const NAME_FILE: &str = "secrets/encryption-key-name";
/// A rotation in progress: the old key, the new key and the step reached.
pub const ROTATION_FILE: &str = "secrets/encryption-rotation.json";
/// Where the keys a rotation replaced are kept (`<name>.json`), for backups made before it.
pub const RETIRED_DIR: &str = "secrets/retired";
/// The name of a cluster's first key in the EncryptionConfiguration (written into every encrypted value's
/// prefix); a rotation names its key `kubeforge-<n+1>`.
pub const KEY_NAME: &str = "kubeforge-1";

/// The resources the EncryptionConfiguration encrypts (a rotation rewrites every object of each).
pub const RESOURCES: &[&str] = &["secrets"];

/// An encrypting provider kubeforge renders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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

/// One key that encrypts Secrets at rest.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionKey {
    /// The provider it is for.
    pub provider: Provider,
    /// Its name in the EncryptionConfiguration (`kubeforge-1`): every value it writes carries it.
    pub name: String,
    /// Base64 of the 32 secret bytes, as the EncryptionConfiguration carries it.
    pub secret: String,
}

impl EncryptionKey {
    /// A cluster's first key (`kubeforge-1`).
    pub fn first(provider: Provider, secret: impl Into<String>) -> Self {
        EncryptionKey { provider, name: KEY_NAME.into(), secret: secret.into() }
    }

    /// The prefix of every value this key writes (`k8s:enc:secretbox:v1:kubeforge-1:`).
    pub fn prefix(&self) -> String {
        format!("k8s:enc:{}:v1:{}:", self.provider.name(), self.name)
    }

    /// A new secretbox key named `name` (32 random bytes).
    pub fn generate(name: String) -> Self {
        use base64::Engine;
        let key: [u8; 32] = rand::random();
        EncryptionKey {
            provider: Provider::Secretbox,
            name,
            secret: base64::engine::general_purpose::STANDARD.encode(key),
        }
    }

    /// The number in a `kubeforge-<n>` name.
    fn number(name: &str) -> Option<u64> {
        name.strip_prefix("kubeforge-").and_then(|n| n.parse().ok())
    }
}

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptionKey")
            .field("provider", &self.provider)
            .field("name", &self.name)
            .field("secret", &"REDACTED")
            .finish()
    }
}

/// How far a rotation got: each step is an EncryptionConfiguration rolled out to every control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// The old key writes, both read: every apiserver must be able to read the new key's values before any
    /// apiserver writes one.
    ReadBoth,
    /// The new key writes, both read; every Secret is then rewritten and the rewrite proven from etcd.
    WriteNew,
    /// Every value carries the new key (proven): the new key alone; then the store switches to it.
    DropOld,
}

impl Step {
    /// The step's name in reports and the record.
    pub fn name(self) -> &'static str {
        match self {
            Step::ReadBoth => "read-both",
            Step::WriteNew => "write-new",
            Step::DropOld => "drop-old",
        }
    }
}

/// A rotation in progress, as `secrets/encryption-rotation.json` records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rotation {
    /// The step whose configuration is (being) rolled out.
    pub step: Step,
    /// The key being replaced (the store's current key when the rotation began).
    pub old: EncryptionKey,
    /// The key replacing it.
    pub new: EncryptionKey,
}

/// The cluster's keys: the current one, and a rotation when one is in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// The store's current key (while a rotation finishes, possibly already the new one).
    pub current: EncryptionKey,
    /// A rotation in progress.
    pub rotation: Option<Rotation>,
}

impl From<EncryptionKey> for Keys {
    fn from(current: EncryptionKey) -> Self {
        Keys { current, rotation: None }
    }
}

impl Keys {
    /// The keys the EncryptionConfiguration lists, the writing key first: the current key alone, or the
    /// rotation's step (old then new; new then old; new alone).
    pub fn rendered(&self) -> Vec<&EncryptionKey> {
        match &self.rotation {
            None => vec![&self.current],
            Some(r) => match r.step {
                Step::ReadBoth => vec![&r.old, &r.new],
                Step::WriteNew => vec![&r.new, &r.old],
                Step::DropOld => vec![&r.new],
            },
        }
    }
}

/// The cluster's keys: read from the store, or, for a new cluster only, a key created once for secretbox
/// (the provider record first, then the key, each 0600 and forced to disk). A key that cannot be read, is
/// not 32 bytes of base64, or whose provider record names no provider stops the run: every Secret of a live
/// cluster is encrypted with it, so it is never replaced by a new one. A rotation record that cannot be
/// read, or that does not hold the store's current key, stops the run too.
pub fn load_or_create(store: &Store, new_keys: NewKeys) -> Result<Keys> {
    let current = load_current(store, new_keys)?;
    let rotation = load_rotation(store)?;
    if let Some(r) = &rotation {
        if current.secret != r.old.secret && current.secret != r.new.secret {
            return Err(damaged(
                store,
                ROTATION_FILE,
                "the rotation it records is not of the store's current key".into(),
            ));
        }
    }
    Ok(Keys { current, rotation })
}

fn damaged(store: &Store, file: &str, why: String) -> Error {
    Error::msg(
        format!("{}: {why}", store.root().join(file).display()),
        Some("bring the store back from a backup (`kubeforge restore --from ARCHIVE`); a new key would leave every Secret unreadable"),
    )
}

/// 32 bytes of base64, or why not.
fn check_secret(text: &str) -> std::result::Result<(), String> {
    use base64::Engine;
    match base64::engine::general_purpose::STANDARD.decode(text) {
        Ok(b) if b.len() == 32 => Ok(()),
        Ok(b) => Err(format!("the key is {} bytes, not 32", b.len())),
        Err(e) => Err(format!("not base64 ({e})")),
    }
}

fn read_optional(store: &Store, rel: &str) -> Result<Option<String>> {
    match std::fs::read(store.root().join(rel)) {
        Ok(text) => Ok(Some(String::from_utf8_lossy(&text).trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("reading {}", store.root().join(rel).display()), e)),
    }
}

fn load_current(store: &Store, new_keys: NewKeys) -> Result<EncryptionKey> {
    let provider = match read_optional(store, PROVIDER_FILE)? {
        Some(text) => Some(Provider::parse(&text).ok_or_else(|| {
            damaged(
                store,
                PROVIDER_FILE,
                format!("{text:?} is not a provider kubeforge renders (secretbox, aescbc)"),
            )
        })?),
        None => None,
    };
    let name = read_optional(store, NAME_FILE)?.unwrap_or_else(|| KEY_NAME.to_owned());
    if EncryptionKey::number(&name).is_none() {
        return Err(damaged(
            store,
            NAME_FILE,
            format!("{name:?} is not a key name kubeforge gives (kubeforge-N)"),
        ));
    }
    match read_optional(store, KEY_FILE)? {
        Some(text) => {
            check_secret(&text).map_err(|why| damaged(store, KEY_FILE, why))?;
            // A key without a record was made by a kubeforge that knew only aescbc.
            Ok(EncryptionKey { provider: provider.unwrap_or(Provider::Aescbc), name, secret: text })
        }
        None => {
            if new_keys == NewKeys::Refused {
                return Err(damaged(
                    store,
                    KEY_FILE,
                    "missing, and the cluster is not new: refusing to create a new encryption key".into(),
                ));
            }
            let key = EncryptionKey::generate(KEY_NAME.into());
            // The record first: a key on disk without one would be taken for an aescbc key.
            store.write_durable(PROVIDER_FILE, format!("{}\n", key.provider.name()).as_bytes(), 0o600)?;
            store.write_durable(KEY_FILE, key.secret.as_bytes(), 0o600)?;
            Ok(key)
        }
    }
}

fn load_rotation(store: &Store) -> Result<Option<Rotation>> {
    let Some(text) = read_optional(store, ROTATION_FILE)? else { return Ok(None) };
    let r: Rotation = serde_json::from_str(&text)
        .map_err(|e| damaged(store, ROTATION_FILE, format!("not a rotation record ({e})")))?;
    for k in [&r.old, &r.new] {
        check_secret(&k.secret).map_err(|why| damaged(store, ROTATION_FILE, format!("{}: {why}", k.name)))?;
    }
    if r.old.name == r.new.name {
        return Err(damaged(store, ROTATION_FILE, format!("both keys are named {}", r.new.name)));
    }
    Ok(Some(r))
}

/// The names of the keys kept aside by earlier rotations.
fn retired_names(store: &Store) -> Result<Vec<String>> {
    let dir = store.root().join(RETIRED_DIR);
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("reading {}", dir.display()), e)),
    };
    let mut names = Vec::new();
    for e in entries {
        let e = e.map_err(|e| Error::io(format!("reading {}", dir.display()), e))?;
        if let Some(n) = e.file_name().to_string_lossy().strip_suffix(".json") {
            names.push(n.to_owned());
        }
    }
    Ok(names)
}

/// Starts a rotation of `keys`' current key to a new secretbox key, named after every key the store has
/// known (`kubeforge-<highest + 1>`): the record is written (0600, forced to disk) at step
/// [`Step::ReadBoth`]. Nothing else in the store changes.
pub fn begin(store: &Store, keys: &Keys) -> Result<Rotation> {
    let rotation = plan_rotation(store, keys)?;
    record(store, &rotation)?;
    Ok(rotation)
}

/// The rotation [`begin`] would start (a dry run shows it without writing).
pub fn plan_rotation(store: &Store, keys: &Keys) -> Result<Rotation> {
    if let Some(r) = &keys.rotation {
        return Ok(r.clone());
    }
    let highest = retired_names(store)?
        .iter()
        .chain(std::iter::once(&keys.current.name))
        .filter_map(|n| EncryptionKey::number(n))
        .max()
        .unwrap_or(1);
    Ok(Rotation {
        step: Step::ReadBoth,
        old: keys.current.clone(),
        new: EncryptionKey::generate(format!("kubeforge-{}", highest + 1)),
    })
}

/// Records `rotation` (its step moved on): atomically, 0600, forced to disk.
pub fn record(store: &Store, rotation: &Rotation) -> Result<()> {
    let mut json = serde_json::to_vec_pretty(rotation).expect("a rotation serializes");
    json.push(b'\n');
    Ok(store.write_durable(ROTATION_FILE, &json, 0o600)?)
}

/// Ends `rotation` (every apiserver runs with the new key alone): the old key is kept in
/// `secrets/retired/<name>.json`, the new key becomes the current one (provider, name, key), and the record
/// is removed last. Each write is atomic and forced to disk; an interrupt before the removal leaves the
/// record, and running this again completes the same end.
pub fn finish(store: &Store, rotation: &Rotation) -> Result<()> {
    let mut old = serde_json::to_vec_pretty(&rotation.old).expect("a key serializes");
    old.push(b'\n');
    store.write_durable(&format!("{RETIRED_DIR}/{}.json", rotation.old.name), &old, 0o600)?;
    let new = &rotation.new;
    store.write_durable(PROVIDER_FILE, format!("{}\n", new.provider.name()).as_bytes(), 0o600)?;
    store.write_durable(NAME_FILE, format!("{}\n", new.name).as_bytes(), 0o600)?;
    store.write_durable(KEY_FILE, new.secret.as_bytes(), 0o600)?;
    let path = store.root().join(ROTATION_FILE);
    std::fs::remove_file(&path).map_err(|e| Error::io(format!("removing {}", path.display()), e))?;
    let dir = path.parent().expect("inside the store");
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("syncing {}", dir.display()), e))
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
        assert_eq!((k.current.provider, k.current.name.as_str()), (Provider::Secretbox, KEY_NAME));
        assert_eq!(k.rotation, None);
        assert_eq!(std::fs::read_to_string(s.root().join(PROVIDER_FILE)).unwrap(), "secretbox\n");
        assert_eq!(std::fs::read_to_string(s.root().join(KEY_FILE)).unwrap(), k.current.secret);
        assert!(!s.root().join(NAME_FILE).exists(), "the first key's name is not written");
        assert_eq!(load_or_create(&s, NewKeys::Refused).unwrap(), k, "read back, never made again");
        assert!(!format!("{k:?}").contains(&k.current.secret), "Debug never shows the key");
    }

    #[test]
    fn a_store_from_before_the_record_keeps_its_aescbc_key() {
        let (_d, s) = store();
        let secret = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        s.write_durable(KEY_FILE, secret.as_bytes(), 0o600).unwrap();
        let k = load_or_create(&s, NewKeys::Allowed).unwrap().current;
        assert_eq!((k.provider, k.secret.as_str(), k.name.as_str()), (Provider::Aescbc, secret, KEY_NAME));
        assert!(!s.root().join(PROVIDER_FILE).exists(), "nothing is written: the cluster is not switched");
        // A record kubeforge cannot read stops the run instead of guessing.
        s.write_durable(PROVIDER_FILE, b"aesgcm\n", 0o600).unwrap();
        let e = load_or_create(&s, NewKeys::Allowed).unwrap_err().report();
        assert!(e.contains("\"aesgcm\" is not a provider kubeforge renders"), "{e}");
        s.write_durable(PROVIDER_FILE, b"aescbc\n", 0o600).unwrap();
        assert_eq!(load_or_create(&s, NewKeys::Refused).unwrap().current.provider, Provider::Aescbc);
    }

    fn mode(s: &Store, rel: &str) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(s.root().join(rel)).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_rotation_is_recorded_beside_the_current_key_and_its_end_switches_the_store() {
        let (_d, s) = store();
        let secret = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        s.write_durable(KEY_FILE, secret.as_bytes(), 0o600).unwrap();
        let keys = load_or_create(&s, NewKeys::Refused).unwrap();
        let old = keys.current.clone();
        // A dry run's plan writes nothing.
        let planned = plan_rotation(&s, &keys).unwrap();
        assert!(!s.root().join(ROTATION_FILE).exists());
        assert_eq!((planned.new.name.as_str(), planned.new.provider), ("kubeforge-2", Provider::Secretbox));
        let mut r = begin(&s, &keys).unwrap();
        assert_eq!(mode(&s, ROTATION_FILE), 0o600);
        assert_eq!(std::fs::read_to_string(s.root().join(KEY_FILE)).unwrap(), secret, "current key kept");
        assert_ne!(r.new.secret, secret);
        // Each step lists the writing key first.
        let names = |k: &Keys| k.rendered().iter().map(|k| k.name.clone()).collect::<Vec<_>>();
        let k = load_or_create(&s, NewKeys::Refused).unwrap();
        assert_eq!(k.rotation.as_ref(), Some(&r), "read back as recorded");
        assert_eq!(names(&k), ["kubeforge-1", "kubeforge-2"]);
        assert_eq!(plan_rotation(&s, &k).unwrap(), r, "a run in the middle resumes the same rotation");
        r.step = Step::WriteNew;
        record(&s, &r).unwrap();
        assert_eq!(names(&load_or_create(&s, NewKeys::Refused).unwrap()), ["kubeforge-2", "kubeforge-1"]);
        r.step = Step::DropOld;
        record(&s, &r).unwrap();
        assert_eq!(names(&load_or_create(&s, NewKeys::Refused).unwrap()), ["kubeforge-2"]);
        // The end, interrupted after the new key was written: the record still decides, a re-run finishes.
        s.write_durable(KEY_FILE, r.new.secret.as_bytes(), 0o600).unwrap();
        let k = load_or_create(&s, NewKeys::Refused).unwrap();
        assert_eq!(names(&k), ["kubeforge-2"]);
        finish(&s, &r).unwrap();
        let k = load_or_create(&s, NewKeys::Refused).unwrap();
        assert_eq!(k, Keys::from(r.new.clone()), "the new key is the current one, no rotation");
        let retired: EncryptionKey = serde_json::from_str(
            &std::fs::read_to_string(s.root().join("secrets/retired/kubeforge-1.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(retired, old, "the old key kept aside");
        assert_eq!(mode(&s, "secrets/retired/kubeforge-1.json"), 0o600);
        // The next rotation names its key after every key the store has known.
        assert_eq!(plan_rotation(&s, &k).unwrap().new.name, "kubeforge-3");
    }

    #[test]
    fn a_rotation_record_that_does_not_fit_the_store_stops_the_run() {
        let (_d, s) = store();
        let keys = load_or_create(&s, NewKeys::Allowed).unwrap();
        let mut r = begin(&s, &keys).unwrap();
        // Neither key of the record is the store's: another store's record.
        r.old.secret = EncryptionKey::generate("x".into()).secret;
        r.new.secret = EncryptionKey::generate("y".into()).secret;
        record(&s, &r).unwrap();
        let e = load_or_create(&s, NewKeys::Refused).unwrap_err().report();
        assert!(e.contains("not of the store's current key"), "{e}");
        s.write_durable(ROTATION_FILE, b"{", 0o600).unwrap();
        let e = load_or_create(&s, NewKeys::Refused).unwrap_err().report();
        assert!(e.contains("not a rotation record"), "{e}");
    }
}
