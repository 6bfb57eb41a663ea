//! Air-gapped bundles: a directory (or a `.tar.gz` of one) with `manifest.json` and the release files.
//!
//! ```json
//! {"schema":1,"artifacts":[{"component":"kube-apiserver","version":"v1.35.7","os":"linux",
//!   "arch":"amd64","file":"kube-apiserver/v1.35.7/linux/amd64/kube-apiserver",
//!   "sha256":"<hex>","kind":"binary","note":"..."}]}
//! ```
//! `file` is relative to the bundle root; `kind` is `binary` (the executable itself, installed under the
//! component's name) or `tarball` (extracted like the upstream tarball of that component); `note` is
//! optional and, when present, printed whenever the artifact is used (it marks test doubles).
//! Lookup is by component + version + arch; `etcdctl` is also found in an `etcd` tarball entry.
//! Every file is re-hashed each time it is used, so a tampered bundle is refused.

use super::extract::sha256_file;
use super::layout::{is_sha256_hex, Kind};
use super::{normalize_version, ArtifactError, Component, LocalArtifact, Requirement};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Component as PathPart, Path, PathBuf};

/// The manifest file name at the bundle root.
pub const MANIFEST: &str = "manifest.json";

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Format version; only 1 exists.
    pub schema: u32,
    /// The files.
    pub artifacts: Vec<ManifestEntry>,
}

/// One file of a bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestEntry {
    /// Component name (`kube-apiserver`, `etcd`, `cni-plugins`, ...).
    pub component: String,
    /// Version (`v1.35.7`).
    pub version: String,
    /// Always `linux`.
    pub os: String,
    /// Architecture.
    pub arch: String,
    /// Path relative to the bundle root.
    pub file: String,
    /// sha256 of the file, hex.
    pub sha256: String,
    /// Binary or tarball.
    pub kind: Kind,
    /// Printed whenever this artifact is used (marks test doubles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl ManifestEntry {
    /// `component version linux/arch`, as in error messages.
    pub fn label(&self) -> String {
        format!("{} {} {}/{}", self.component, self.version, self.os, self.arch)
    }

    fn matches(&self, component: Component, req: &Requirement) -> bool {
        self.component == component.name()
            && self.os == "linux"
            && self.arch == req.arch
            && normalize_version(&self.version).ok().as_deref() == Some(req.version.as_str())
    }
}

/// An opened bundle: its root directory and parsed manifest.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// What the user named (directory or archive), for messages.
    pub path: PathBuf,
    /// The directory holding `manifest.json` (the extraction directory for an archive).
    pub root: PathBuf,
    /// The manifest.
    pub manifest: Manifest,
}

fn is_archive(path: &Path) -> bool {
    let s = path.to_string_lossy();
    s.ends_with(".tar.gz") || s.ends_with(".tgz")
}

/// A manifest path must stay inside the bundle.
fn safe_relative(file: &str) -> bool {
    let p = Path::new(file);
    !file.is_empty() && p.components().all(|c| matches!(c, PathPart::Normal(_) | PathPart::CurDir))
}

impl Bundle {
    /// Opens a bundle directory, or extracts a `.tar.gz` bundle once into
    /// `<cache_root>/bundles/<sha256 of the archive>/` and opens that.
    pub fn open(path: &Path, cache_root: &Path) -> Result<Bundle, ArtifactError> {
        let root = if path.is_dir() {
            path.to_owned()
        } else if is_archive(path) {
            let digest = sha256_file(path)?;
            let dir = cache_root.join("bundles").join(&digest);
            let done = dir.join(".complete");
            if !done.exists() {
                let _ = fs::remove_dir_all(&dir);
                fs::create_dir_all(&dir)
                    .map_err(|e| ArtifactError::io(format!("cannot create {}", dir.display()), e))?;
                let f = fs::File::open(path)
                    .map_err(|e| ArtifactError::io(format!("cannot open {}", path.display()), e))?;
                // `unpack` refuses entries that would land outside `dir`.
                tar::Archive::new(flate2::read::GzDecoder::new(f))
                    .unpack(&dir)
                    .map_err(|e| ArtifactError::io(format!("cannot extract bundle {}", path.display()), e))?;
                fs::write(&done, b"")
                    .map_err(|e| ArtifactError::io(format!("cannot write {}", done.display()), e))?;
            }
            // An archive made with `tar czf b.tgz bundle/` has one top-level directory.
            if dir.join(MANIFEST).is_file() {
                dir
            } else {
                let subdirs: Vec<PathBuf> = fs::read_dir(&dir)
                    .map_err(|e| ArtifactError::io(format!("cannot read {}", dir.display()), e))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_dir())
                    .collect();
                match subdirs.as_slice() {
                    [one] if one.join(MANIFEST).is_file() => one.clone(),
                    _ => dir,
                }
            }
        } else if path.exists() {
            return Err(ArtifactError::BundleInvalid {
                bundle: path.to_owned(),
                problems: vec!["a bundle is a directory or a .tar.gz / .tgz archive".into()],
            });
        } else {
            return Err(ArtifactError::io(
                format!("bundle {} not found", path.display()),
                std::io::Error::from(std::io::ErrorKind::NotFound),
            ));
        };
        let mpath = root.join(MANIFEST);
        let text = fs::read_to_string(&mpath)
            .map_err(|e| ArtifactError::Manifest { path: mpath.clone(), source: Box::new(e) })?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| ArtifactError::Manifest { path: mpath.clone(), source: Box::new(e) })?;
        if manifest.schema != 1 {
            return Err(ArtifactError::BundleInvalid {
                bundle: path.to_owned(),
                problems: vec![format!(
                    "manifest schema {} is not supported (this kubeforge reads schema 1)",
                    manifest.schema
                )],
            });
        }
        Ok(Bundle { path: path.to_owned(), root, manifest })
    }

    /// The entry providing `req`: the component itself, or for etcdctl an `etcd` tarball.
    pub fn find(&self, req: &Requirement) -> Result<&ManifestEntry, ArtifactError> {
        let direct = self.manifest.artifacts.iter().find(|e| e.matches(req.component, req));
        let via_unit = || {
            self.manifest
                .artifacts
                .iter()
                .find(|e| e.kind == Kind::Tarball && e.matches(req.component.download_unit(), req))
        };
        direct.or_else(via_unit).ok_or_else(|| ArtifactError::NotInBundle {
            bundle: self.path.clone(),
            requirement: req.to_string(),
            available: self.manifest.artifacts.iter().map(ManifestEntry::label).collect(),
        })
    }

    /// The absolute path of an entry's file (after checking it stays inside the bundle).
    pub fn file_path(&self, entry: &ManifestEntry) -> Result<PathBuf, ArtifactError> {
        if !safe_relative(&entry.file) {
            return Err(ArtifactError::BundleInvalid {
                bundle: self.path.clone(),
                problems: vec![format!(
                    "{}: file '{}' is not a relative path inside the bundle",
                    entry.label(),
                    entry.file
                )],
            });
        }
        Ok(self.root.join(&entry.file))
    }

    /// Re-checks every entry: well-formed fields, file present, digest matching. All problems are
    /// collected; `Ok` returns the number of files checked.
    pub fn verify(&self) -> Result<usize, ArtifactError> {
        let mut problems = Vec::new();
        let mut seen = BTreeMap::new();
        for e in &self.manifest.artifacts {
            let label = e.label();
            if let Some(prev) = seen.insert(label.clone(), &e.file) {
                problems.push(format!("{label}: listed twice ({prev} and {})", e.file));
            }
            if e.os != "linux" {
                problems.push(format!("{label}: os must be linux"));
            }
            if normalize_version(&e.version).is_err() {
                problems.push(format!("{label}: '{}' is not a release version", e.version));
            }
            if !is_sha256_hex(&e.sha256) {
                problems.push(format!("{label}: sha256 '{}' is not 64 hex digits", e.sha256));
                continue;
            }
            let path = match self.file_path(e) {
                Ok(p) => p,
                Err(_) => {
                    problems
                        .push(format!("{label}: file '{}' is not a relative path inside the bundle", e.file));
                    continue;
                }
            };
            if !path.is_file() {
                problems.push(format!("{label}: file {} is missing", e.file));
                continue;
            }
            match sha256_file(&path) {
                Ok(d) if d.eq_ignore_ascii_case(&e.sha256) => {}
                Ok(d) => {
                    problems.push(format!("{label}: {} has sha256 {d}, manifest says {}", e.file, e.sha256))
                }
                Err(err) => problems.push(format!("{label}: {err}")),
            }
        }
        if problems.is_empty() {
            Ok(self.manifest.artifacts.len())
        } else {
            Err(ArtifactError::BundleInvalid { bundle: self.path.clone(), problems })
        }
    }
}

/// Writes a bundle with the original release file of every artifact (one entry per download unit) to
/// `out`: a directory (must not exist or be empty), or a `.tar.gz`/`.tgz` archive.
pub fn write_bundle(out: &Path, artifacts: &[LocalArtifact]) -> Result<Manifest, ArtifactError> {
    let io = |what: String| move |e: std::io::Error| ArtifactError::io(what.clone(), e);
    let archive = is_archive(out);
    let staging_holder;
    let stage: PathBuf = if archive {
        let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        staging_holder = tempfile_dir(parent)?;
        staging_holder.clone()
    } else {
        if out.exists()
            && fs::read_dir(out).map_err(io(format!("cannot read {}", out.display())))?.next().is_some()
        {
            return Err(ArtifactError::io(
                format!("bundle directory {} is not empty", out.display()),
                std::io::Error::from(std::io::ErrorKind::AlreadyExists),
            ));
        }
        out.to_owned()
    };
    let result = (|| {
        let mut entries: BTreeMap<(String, String, String), ManifestEntry> = BTreeMap::new();
        for a in artifacts {
            let o = &a.origin;
            let key = (o.component.clone(), o.version.clone(), o.arch.clone());
            if entries.contains_key(&key) {
                continue;
            }
            let rel = format!("{}/{}/linux/{}/{}", o.component, o.version, o.arch, o.file_name);
            let dest = stage.join(&rel);
            fs::create_dir_all(dest.parent().expect("has a parent"))
                .map_err(io(format!("cannot create {}", dest.display())))?;
            fs::copy(&o.path, &dest).map_err(io(format!(
                "cannot copy {} to {}",
                o.path.display(),
                dest.display()
            )))?;
            // Re-hash the copy: what goes into the manifest is what is on disk, not what we believe.
            let sha256 = sha256_file(&dest)?;
            if sha256 != o.sha256 {
                return Err(ArtifactError::ChecksumMismatch {
                    what: o.path.display().to_string(),
                    expected: o.sha256.clone(),
                    actual: sha256,
                });
            }
            entries.insert(
                key,
                ManifestEntry {
                    component: o.component.clone(),
                    version: o.version.clone(),
                    os: "linux".into(),
                    arch: o.arch.clone(),
                    file: rel,
                    sha256,
                    kind: o.kind,
                    note: a.note.clone(),
                },
            );
        }
        let manifest = Manifest { schema: 1, artifacts: entries.into_values().collect() };
        let json = serde_json::to_vec_pretty(&manifest).expect("manifests always serialize");
        fs::write(stage.join(MANIFEST), json)
            .map_err(io(format!("cannot write {}", stage.join(MANIFEST).display())))?;
        if archive {
            let tmp = out.with_extension("partial");
            let f = fs::File::create(&tmp).map_err(io(format!("cannot create {}", tmp.display())))?;
            let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(f, flate2::Compression::default()));
            tar.append_path_with_name(stage.join(MANIFEST), MANIFEST)
                .map_err(io(format!("cannot write {}", tmp.display())))?;
            for e in &manifest.artifacts {
                tar.append_path_with_name(stage.join(&e.file), &e.file)
                    .map_err(io(format!("cannot write {}", tmp.display())))?;
            }
            tar.into_inner()
                .and_then(|gz| gz.finish())
                .and_then(|f| f.sync_all())
                .map_err(io(format!("cannot write {}", tmp.display())))?;
            fs::rename(&tmp, out).map_err(io(format!("cannot write {}", out.display())))?;
        }
        Ok(manifest)
    })();
    if archive {
        let _ = fs::remove_dir_all(&stage);
    }
    result
}

/// A fresh private directory next to the output, so the final rename stays on one filesystem.
fn tempfile_dir(parent: &Path) -> Result<PathBuf, ArtifactError> {
    for _ in 0..16 {
        let dir = parent.join(format!(".kubeforge-bundle-{:016x}", rand::random::<u64>()));
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(ArtifactError::io(format!("cannot create {}", dir.display()), e)),
        }
    }
    Err(ArtifactError::io(
        "cannot create a staging directory",
        std::io::Error::from(std::io::ErrorKind::AlreadyExists),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_format_is_the_agreed_one() {
        let json = r#"{"schema":1,"artifacts":[{"component":"kube-apiserver","version":"v1.35.7","os":"linux",
            "arch":"amd64","file":"kube-apiserver/v1.35.7/linux/amd64/kube-apiserver","sha256":"00","kind":"binary",
            "note":"contract double"},{"component":"etcd","version":"3.6.6","os":"linux","arch":"arm64",
            "file":"etcd/v3.6.6/linux/arm64/etcd.tar.gz","sha256":"00","kind":"tarball"}]}"#;
        let m: Manifest = serde_json::from_str(json).unwrap();
        assert_eq!(m.artifacts[0].note.as_deref(), Some("contract double"));
        assert_eq!(m.artifacts[1].kind, Kind::Tarball);
        let b = Bundle { path: "b".into(), root: "b".into(), manifest: m };
        let r = Requirement::new(Component::Etcdctl, "v3.6.6", "arm64").unwrap();
        assert_eq!(b.find(&r).unwrap().component, "etcd");
        let r = Requirement::new(Component::Kubelet, "v1.35.7", "amd64").unwrap();
        let e = b.find(&r).unwrap_err().to_string();
        assert_eq!(
            e,
            "bundle b has no kubelet v1.35.7 linux/amd64; it has: kube-apiserver v1.35.7 linux/amd64, etcd 3.6.6 linux/arm64"
        );
    }

    #[test]
    fn manifest_paths_must_stay_inside() {
        assert!(safe_relative("a/b/c"));
        assert!(!safe_relative("../a"));
        assert!(!safe_relative("/etc/passwd"));
        assert!(!safe_relative("a/../../b"));
        assert!(!safe_relative(""));
    }
}
