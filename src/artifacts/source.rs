//! [`ArtifactSource`]: the one API installers call. It turns a [`Requirement`] into verified local
//! executables, from the cache, the upstream servers, a mirror or a bundle, without the caller caring
//! which.

use super::bundle::Bundle;
use super::cache::{Cache, CacheEntry, CachedExecutable};
use super::download::Downloader;
pub use super::download::RetryPolicy;
use super::extract::{extract, sha256_file};
use super::layout::{is_sha256_hex, parse_checksum, remote_file, Bases, Kind};
use super::progress::Progress;
use super::{normalize_version, ArtifactError, Component, Requirement};
use crate::inventory::ReleaseSourceSpec;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One verified executable ready to install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executable {
    /// Install name (`kube-apiserver`, `runc`, `containerd-shim-runc-v2`, `bridge`).
    pub name: String,
    /// Local path (in the cache or the bundle).
    pub path: PathBuf,
    /// sha256 of the executable, hex (what an upload compares against the host's copy).
    pub sha256: String,
}

/// The release file an artifact came from (what a bundle stores).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Download unit name (`etcd` for etcdctl).
    pub component: String,
    /// Version.
    pub version: String,
    /// Architecture.
    pub arch: String,
    /// File name (`etcd-v3.6.6-linux-amd64.tar.gz`, `kubelet`).
    pub file_name: String,
    /// Local path of that file.
    pub path: PathBuf,
    /// Its verified sha256.
    pub sha256: String,
    /// Binary or tarball.
    pub kind: Kind,
    /// URL or bundle path it came from.
    pub source: String,
}

/// A requirement satisfied locally: verified executables plus where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalArtifact {
    /// What was asked for.
    pub requirement: Requirement,
    /// The executables to install, sorted by name.
    pub executables: Vec<Executable>,
    /// The release file they came from.
    pub origin: Origin,
    /// The bundle's note for this artifact (marks test doubles); printed on every use.
    pub note: Option<String>,
}

/// The configured source: remote (official or mirror, with pins) or a bundle opened on first use.
enum SourceKind {
    /// `plain_http`: the mirror is an `http://` URL, so nothing it serves is trusted: every artifact needs a
    /// pin, and its checksum file is never read.
    Remote {
        bases: Bases,
        pins: BTreeMap<String, String>,
        label: String,
        plain_http: bool,
    },
    Bundle {
        path: PathBuf,
        opened: tokio::sync::OnceCell<Arc<Bundle>>,
    },
}

/// Where artifacts come from, plus the cache they land in.
pub struct ArtifactSource {
    kind: SourceKind,
    cache: Cache,
    downloader: Downloader,
    // Serializes work on one download unit (etcd and etcdctl share a tarball and a cache entry).
    locks: Mutex<HashMap<Requirement, Arc<tokio::sync::Mutex<()>>>>,
}

impl fmt::Debug for ArtifactSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ArtifactSource({}, cache {})", self.describe(), self.cache.root().display())
    }
}

fn parse_pins(pins: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>, ArtifactError> {
    pins.iter()
        .map(|(k, v)| {
            let bad = || ArtifactError::BadPin { key: k.clone(), value: v.clone() };
            let (c, a) = k.split_once('/').ok_or_else(bad)?;
            let c: Component = c.parse().map_err(|_| bad())?;
            if c.download_unit() != c || !super::ARCHES.contains(&a) {
                return Err(bad());
            }
            let hex = v.strip_prefix("sha256:").filter(|h| is_sha256_hex(h)).ok_or_else(bad)?;
            Ok((k.clone(), hex.to_ascii_lowercase()))
        })
        .collect()
}

impl ArtifactSource {
    /// Builds a source from the inventory's `cluster.releaseSource` (`None` = official). A bundle path is
    /// relative to `inventory_dir`; downloads land in `cache_dir`. Pins are checked here.
    pub fn from_spec(
        spec: Option<&ReleaseSourceSpec>,
        inventory_dir: &Path,
        cache_dir: &Path,
    ) -> Result<Self, ArtifactError> {
        let kind = match spec {
            None => SourceKind::Remote {
                bases: Bases::official(),
                pins: BTreeMap::new(),
                label: "official release servers".into(),
                plain_http: false,
            },
            Some(ReleaseSourceSpec::Official { pins }) => SourceKind::Remote {
                bases: Bases::official(),
                pins: parse_pins(pins)?,
                label: "official release servers".into(),
                plain_http: false,
            },
            Some(ReleaseSourceSpec::Mirror { url, .. })
                if !(url.starts_with("http://") || url.starts_with("https://"))
                    || url.len() <= "https://".len() =>
            {
                return Err(ArtifactError::BadMirrorUrl(url.clone()));
            }
            Some(ReleaseSourceSpec::Mirror { url, pins, .. }) => SourceKind::Remote {
                bases: Bases::mirror(url),
                pins: parse_pins(pins)?,
                label: format!("mirror {url}"),
                plain_http: url.starts_with("http://"),
            },
            Some(ReleaseSourceSpec::Bundle { path }) => {
                SourceKind::Bundle { path: inventory_dir.join(path), opened: tokio::sync::OnceCell::new() }
            }
        };
        let roots = match spec {
            Some(ReleaseSourceSpec::Mirror { url, ca_file: Some(f), .. }) => {
                // As validation resolves it (`~/` expanded).
                let path = crate::inventory::validate::resolve_path(inventory_dir, f);
                let bad = |why: String| ArtifactError::BadCaFile { path: path.display().to_string(), why };
                if !url.starts_with("https://") {
                    return Err(bad(format!("is for an https:// mirror; {url} is not one")));
                }
                super::read_ca_file(&path).map_err(bad)?
            }
            _ => Vec::new(),
        };
        Ok(ArtifactSource {
            kind,
            cache: Cache::new(cache_dir),
            downloader: Downloader::with_roots(RetryPolicy::default(), roots),
            locks: Mutex::new(HashMap::new()),
        })
    }

    /// Replaces the retry policy (tests use short backoffs).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.downloader.set_retry(retry);
        self
    }

    /// `official release servers`, `mirror <url>` or `bundle <path>`.
    pub fn describe(&self) -> String {
        match &self.kind {
            SourceKind::Remote { label, .. } => label.clone(),
            SourceKind::Bundle { path, .. } => format!("bundle {}", path.display()),
        }
    }

    /// The cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Makes `req` available locally and verified, and returns its executables. Remote sources use the
    /// cache first (no network on a hit); bundles are re-hashed on every use. A bundle note is reported
    /// through `progress` each time.
    pub async fn ensure(
        &self,
        req: &Requirement,
        progress: &dyn Progress,
    ) -> Result<LocalArtifact, ArtifactError> {
        let unit = req.unit();
        let lock = {
            let mut locks = self.locks.lock().expect("lock map never poisoned: no panics while held");
            locks.entry(unit.clone()).or_default().clone()
        };
        let _guard = lock.lock().await;
        // Then across processes: two `kubeforge` runs sharing a cache must not write one entry at once.
        let cache = self.cache.clone();
        let u = unit.clone();
        let _file_lock = blocking(move || cache.lock(&u)).await?;
        let artifact = match &self.kind {
            SourceKind::Remote { bases, pins, plain_http, .. } => {
                let pin = pins.get(&req.pin_key());
                if *plain_http && pin.is_none() {
                    // Validation refuses such an inventory; this holds for every other caller too (`artifacts
                    // fetch` with another version or architecture). Not even a cache hit is used: it may have
                    // been fetched, unpinned, by an older kubeforge.
                    return Err(ArtifactError::UnpinnedOverHttp {
                        url: remote_file(&unit, bases).url,
                        pin_key: req.pin_key(),
                    });
                }
                let entry = self.ensure_remote(&unit, bases, pin, progress).await?;
                select(req, &self.cache.dir(&unit), &entry)?
            }
            SourceKind::Bundle { path, opened } => {
                let bundle = self.open_bundle(path, opened).await?;
                self.ensure_bundle(req, &bundle).await?
            }
        };
        if let Some(note) = &artifact.note {
            progress.message(&format!("note: {req} is from {}: {note}", self.describe()));
        }
        Ok(artifact)
    }

    async fn ensure_remote(
        &self,
        unit: &Requirement,
        bases: &Bases,
        pin: Option<&String>,
        progress: &dyn Progress,
    ) -> Result<CacheEntry, ArtifactError> {
        let cache = self.cache.clone();
        let u = unit.clone();
        if let Some(hit) = blocking(move || Ok(cache.lookup(&u))).await? {
            if pin.is_none_or(|p| *p == hit.sha256) {
                return Ok(hit);
            }
            // The pin changed since this was cached: fetch again and hold it to the pin.
            self.cache.evict(unit);
        }
        let remote = remote_file(unit, bases);
        let expected = match pin {
            Some(p) => p.clone(),
            None => {
                let text = self.downloader.fetch_text(&remote.checksum_url, progress).await?;
                parse_checksum(&text, &remote.file_name).ok_or_else(|| ArtifactError::ChecksumMissing {
                    url: remote.checksum_url.clone(),
                    file: remote.file_name.clone(),
                })?
            }
        };
        let dir = self.cache.dir(unit);
        std::fs::create_dir_all(&dir)
            .map_err(|e| ArtifactError::io(format!("cannot create {}", dir.display()), e))?;
        // Anything but a partial download is stale once the entry file is gone.
        let _ = std::fs::remove_dir_all(dir.join("bin"));
        let part = dir.join(format!("{}.part", remote.file_name));
        match self.downloader.fetch_file(&remote.url, &part, &expected, progress).await {
            Ok(_) => {}
            Err(e) => {
                if matches!(e, ArtifactError::ChecksumMismatch { .. } | ArtifactError::Http { .. }) {
                    // Nothing of a rejected or missing file stays in the cache.
                    self.cache.evict(unit);
                }
                return Err(e);
            }
        }
        let file = dir.join(&remote.file_name);
        std::fs::rename(&part, &file)
            .map_err(|e| ArtifactError::io(format!("cannot write {}", file.display()), e))?;
        let (u, d, f, url, kind) = (unit.clone(), dir.clone(), file.clone(), remote.url.clone(), remote.kind);
        let entry = blocking(move || {
            let executables = executables_of(&u, &f, kind, &d.join("bin"))?
                .into_iter()
                .map(|x| CachedExecutable {
                    name: x.name,
                    file: x.path.strip_prefix(&d).expect("inside the entry").to_string_lossy().into_owned(),
                    sha256: x.sha256,
                })
                .collect();
            Ok(CacheEntry {
                component: u.component.name().into(),
                version: u.version.clone(),
                arch: u.arch.clone(),
                file: f.file_name().expect("has a name").to_string_lossy().into_owned(),
                sha256: expected,
                kind,
                source: url,
                executables,
            })
        })
        .await;
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                self.cache.evict(unit);
                return Err(e);
            }
        };
        self.cache.store(unit, &entry)?;
        Ok(entry)
    }

    /// The bundle, opened (and for an archive extracted) once.
    async fn open_bundle(
        &self,
        path: &Path,
        opened: &tokio::sync::OnceCell<Arc<Bundle>>,
    ) -> Result<Arc<Bundle>, ArtifactError> {
        Ok(opened
            .get_or_try_init(|| async {
                let (p, root) = (path.to_owned(), self.cache.root().to_owned());
                blocking(move || Bundle::open(&p, &root)).await.map(Arc::new)
            })
            .await?
            .clone())
    }

    /// The newest Kubernetes patch release of `v<major>.<minor>` this source offers, `None` when it offers
    /// none: a bundle's newest `kube-apiserver` of that minor; the official servers' (or a mirror's)
    /// `release/stable-<major>.<minor>.txt`. `upgrade plan` proposes from it and multi-minor upgrades pick
    /// each intermediate hop with it.
    pub async fn latest_kubernetes(
        &self,
        major: u32,
        minor: u32,
        progress: &dyn Progress,
    ) -> Result<Option<String>, ArtifactError> {
        match &self.kind {
            SourceKind::Remote { bases, .. } => {
                let url = format!("{}/release/stable-{major}.{minor}.txt", bases.kubernetes);
                match self.downloader.fetch_text(&url, progress).await {
                    Ok(text) => {
                        let v = text.trim();
                        normalize_version(v).map(Some)
                    }
                    Err(ArtifactError::Http { status: 404, .. }) => Ok(None),
                    Err(e) => Err(e),
                }
            }
            SourceKind::Bundle { path, opened } => {
                let bundle = self.open_bundle(path, opened).await?;
                Ok(newest_patch(
                    bundle
                        .manifest
                        .artifacts
                        .iter()
                        .filter(|a| a.component == Component::KubeApiserver.name())
                        .map(|a| a.version.as_str()),
                    major,
                    minor,
                ))
            }
        }
    }

    async fn ensure_bundle(
        &self,
        req: &Requirement,
        bundle: &Bundle,
    ) -> Result<LocalArtifact, ArtifactError> {
        let entry = bundle.find(req)?.clone();
        let path = bundle.file_path(&entry)?;
        let p = path.clone();
        let actual = blocking(move || sha256_file(&p)).await?;
        if !actual.eq_ignore_ascii_case(&entry.sha256) {
            return Err(ArtifactError::ChecksumMismatch {
                what: path.display().to_string(),
                expected: entry.sha256.clone(),
                actual,
            });
        }
        let unit_component: Component = entry.component.parse()?;
        let unit = Requirement { component: unit_component, ..req.clone() };
        let origin = Origin {
            component: entry.component.clone(),
            version: req.version.clone(),
            arch: req.arch.clone(),
            file_name: path.file_name().expect("a file").to_string_lossy().into_owned(),
            path: path.clone(),
            sha256: actual.clone(),
            kind: entry.kind,
            source: bundle.path.display().to_string(),
        };
        // Tarball contents are extracted into a directory named by the tarball's digest, so two bundles
        // (or a bundle and a download) never share extracted files unless the bytes are identical.
        let out_dir = self.cache.root().join("from-bundle").join(&actual);
        let kind = entry.kind;
        let executables = blocking(move || executables_of(&unit, &path, kind, &out_dir)).await?;
        let executables = executables
            .into_iter()
            .map(|x| Executable { name: x.name, path: x.path, sha256: x.sha256 })
            .collect();
        let cached =
            LocalArtifact { requirement: req.clone(), executables, origin, note: entry.note.clone() };
        filter(req, cached)
    }
}

/// The executables of a unit's release file: the file itself for a binary (installed under the
/// component's name), the extracted files for a tarball.
fn executables_of(
    unit: &Requirement,
    file: &Path,
    kind: Kind,
    bin_dir: &Path,
) -> Result<Vec<super::extract::Extracted>, ArtifactError> {
    match kind {
        Kind::Tarball => extract(unit.component, file, bin_dir),
        Kind::Binary => {
            // Only files in our own cache are made executable; a bundle is the user's and stays
            // untouched (uploads set the mode on the host anyway).
            if file.starts_with(bin_dir.parent().unwrap_or(bin_dir)) {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o755))
                    .map_err(|e| ArtifactError::io(format!("cannot chmod {}", file.display()), e))?;
            }
            let name = unit
                .component
                .executables()
                .and_then(|n| n.first())
                .copied()
                .unwrap_or(unit.component.name());
            Ok(vec![super::extract::Extracted {
                name: name.to_owned(),
                path: file.to_owned(),
                sha256: sha256_file(file)?,
            }])
        }
    }
}

/// A downloaded cache entry as the artifact `req` asked for (downloads never carry a note).
fn select(req: &Requirement, dir: &Path, e: &CacheEntry) -> Result<LocalArtifact, ArtifactError> {
    let executables = e
        .executables
        .iter()
        .map(|x| Executable { name: x.name.clone(), path: dir.join(&x.file), sha256: x.sha256.clone() })
        .collect();
    let origin = Origin {
        component: e.component.clone(),
        version: e.version.clone(),
        arch: e.arch.clone(),
        file_name: e.file.clone(),
        path: dir.join(&e.file),
        sha256: e.sha256.clone(),
        kind: e.kind,
        source: e.source.clone(),
    };
    filter(req, LocalArtifact { requirement: req.clone(), executables, origin, note: None })
}

/// Keeps the executables `req` installs; the first listed one must be there.
fn filter(req: &Requirement, mut a: LocalArtifact) -> Result<LocalArtifact, ArtifactError> {
    if let Some(names) = req.component.executables() {
        a.executables.retain(|x| names.contains(&x.name.as_str()));
        if !a.executables.iter().any(|x| x.name == names[0]) {
            return Err(ArtifactError::MissingInArchive {
                archive: a.origin.path.clone(),
                name: names[0].to_owned(),
            });
        }
    }
    a.executables.sort_by(|x, y| x.name.cmp(&y.name));
    Ok(a)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ArtifactError> + Send + 'static,
) -> Result<T, ArtifactError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ArtifactError::io("a background task failed", std::io::Error::other(e.to_string())))?
}

/// The newest `v<major>.<minor>.<patch>` among `versions` (others and pre-releases ignored).
pub fn newest_patch<'a>(versions: impl Iterator<Item = &'a str>, major: u32, minor: u32) -> Option<String> {
    versions
        .filter_map(|v| {
            let mut it = v.strip_prefix('v')?.split('.');
            let (a, b, c) = (it.next()?.parse::<u32>().ok()?, it.next()?.parse::<u32>().ok()?, it.next()?);
            let patch = c.parse::<u32>().ok()?;
            (a == major && b == minor).then_some((patch, v))
        })
        .max_by_key(|(p, _)| *p)
        .map(|(_, v)| v.to_owned())
}
