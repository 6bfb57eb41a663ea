//! The local artifact cache: one directory per download unit,
//! `<root>/<component>/<version>/<arch>/`, holding the downloaded file, the executables extracted from a
//! tarball under `bin/`, and `artifact.json` (written last, atomically), whose presence marks a complete
//! entry. Lookups re-hash the executables, so a corrupted cache is detected and refilled, and never
//! touch the network.

use super::extract::sha256_file;
use super::layout::Kind;
use super::{ArtifactError, Requirement};
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

/// Name of the metadata file of a cache entry.
pub const ENTRY_FILE: &str = "artifact.json";

/// The metadata of one complete cache entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheEntry {
    /// Download unit (`etcd` also for etcdctl).
    pub component: String,
    /// Version, `v`-prefixed.
    pub version: String,
    /// Architecture.
    pub arch: String,
    /// File name of the downloaded file inside the entry directory.
    pub file: String,
    /// sha256 of the downloaded file (verified against the checksum file or pin).
    pub sha256: String,
    /// Binary or tarball.
    pub kind: Kind,
    /// Where it came from.
    pub source: String,
    /// The executables, paths relative to the entry directory.
    pub executables: Vec<CachedExecutable>,
}

/// One executable of a cache entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CachedExecutable {
    /// Install name (`etcdctl`, `runc`).
    pub name: String,
    /// Path relative to the entry directory.
    pub file: String,
    /// sha256.
    pub sha256: String,
}

/// The cache root.
#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// A cache rooted at `root` (created on first store).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Cache { root: root.into() }
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The entry directory of a download unit.
    pub fn dir(&self, unit: &Requirement) -> PathBuf {
        self.root.join(unit.component.name()).join(&unit.version).join(&unit.arch)
    }

    /// The complete, intact entry for `unit`, or `None`. A damaged entry (missing or altered file) is
    /// removed so the next fetch starts clean.
    pub fn lookup(&self, unit: &Requirement) -> Option<CacheEntry> {
        let dir = self.dir(unit);
        let text = fs::read_to_string(dir.join(ENTRY_FILE)).ok()?;
        let intact = serde_json::from_str::<CacheEntry>(&text).ok().filter(|e| {
            e.component == unit.component.name()
                && e.version == unit.version
                && e.arch == unit.arch
                && dir.join(&e.file).is_file()
                && e.executables
                    .iter()
                    .all(|x| sha256_file(&dir.join(&x.file)).ok().as_deref() == Some(&x.sha256))
        });
        if intact.is_none() {
            let _ = fs::remove_file(dir.join(ENTRY_FILE));
        }
        intact
    }

    /// Records a complete entry (atomically: temp file + rename).
    pub fn store(&self, unit: &Requirement, entry: &CacheEntry) -> Result<(), ArtifactError> {
        let dir = self.dir(unit);
        let tmp = dir.join(format!("{ENTRY_FILE}.tmp"));
        let json = serde_json::to_vec_pretty(entry).expect("cache entries always serialize");
        fs::write(&tmp, json).map_err(|e| ArtifactError::io(format!("cannot write {}", tmp.display()), e))?;
        fs::rename(&tmp, dir.join(ENTRY_FILE))
            .map_err(|e| ArtifactError::io(format!("cannot write {}", dir.join(ENTRY_FILE).display()), e))
    }

    /// Takes an exclusive lock on a unit, blocking until another kubeforge process (or task) releases
    /// it. Lock files live in `<root>/.locks/` and are never deleted, so every process locks the same
    /// inode even while an entry directory is being evicted and recreated.
    pub fn lock(&self, unit: &Requirement) -> Result<UnitLock, ArtifactError> {
        let dir = self.root.join(".locks");
        fs::create_dir_all(&dir)
            .map_err(|e| ArtifactError::io(format!("cannot create {}", dir.display()), e))?;
        let path = dir.join(format!("{}-{}-{}.lock", unit.component, unit.version, unit.arch));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| ArtifactError::io(format!("cannot open {}", path.display()), e))?;
        let lock =
            nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, errno)| {
                ArtifactError::io(format!("cannot lock {}", path.display()), errno.into())
            })?;
        Ok(UnitLock { _lock: lock })
    }

    /// Removes a unit's entry directory entirely, then the parents that became empty.
    pub fn evict(&self, unit: &Requirement) {
        let dir = self.dir(unit);
        let _ = fs::remove_dir_all(&dir);
        let mut p = dir.parent();
        while let Some(d) = p {
            if d == self.root || fs::remove_dir(d).is_err() {
                break;
            }
            p = d.parent();
        }
    }
}

/// A held per-unit lock; released on drop.
#[derive(Debug)]
pub struct UnitLock {
    _lock: nix::fcntl::Flock<fs::File>,
}
