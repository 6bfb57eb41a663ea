//! Extraction of the executables a component needs from its release tarball.
//!
//! Only regular files are extracted, each under its *base name* into one flat directory: a hostile or
//! odd archive can therefore never write outside that directory (no `..`, no absolute paths, no links).

use super::{ArtifactError, Component};
use flate2::read::GzDecoder;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The executables that must be present in a unit's tarball.
fn required(unit: Component) -> &'static [&'static str] {
    match unit {
        Component::Etcd => &["etcd", "etcdctl"],
        Component::Containerd => &["containerd"],
        Component::CniPlugins => &["bridge", "host-local", "loopback"],
        Component::Crictl => &["crictl"],
        _ => &[],
    }
}

/// The name to extract an archive entry under, if the unit wants it.
fn wanted(unit: Component, entry: &Path) -> Option<String> {
    let name = entry.file_name()?.to_str()?.to_owned();
    if name.starts_with('.') {
        return None;
    }
    let parent_is_bin = entry.parent().and_then(|p| p.file_name()).is_some_and(|p| p == "bin");
    let keep = match unit {
        Component::Etcd => ["etcd", "etcdctl", "etcdutl"].contains(&name.as_str()),
        Component::Containerd => parent_is_bin,
        // The plugins sit at the top level of the archive (`./bridge`); skip the LICENSE/README.
        Component::CniPlugins => {
            entry.components().filter(|c| c.as_os_str() != ".").count() == 1
                && !name.chars().any(|c| c.is_ascii_uppercase())
                && !name.contains('.')
        }
        Component::Crictl => name == "crictl",
        _ => false,
    };
    keep.then_some(name)
}

/// One extracted executable.
#[derive(Debug, Clone)]
pub(crate) struct Extracted {
    pub name: String,
    pub path: PathBuf,
    pub sha256: String,
}

/// Extracts the unit's executables from `archive` into `dir` (mode 0755), checking that the required
/// ones are there.
pub(crate) fn extract(unit: Component, archive: &Path, dir: &Path) -> Result<Vec<Extracted>, ArtifactError> {
    let io = |what: String| move |e: std::io::Error| ArtifactError::io(what.clone(), e);
    let file = fs::File::open(archive).map_err(io(format!("cannot open {}", archive.display())))?;
    fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
    let mut tar = tar::Archive::new(GzDecoder::new(file));
    let mut out: Vec<Extracted> = Vec::new();
    let bad = io(format!("cannot read archive {}", archive.display()));
    for entry in tar.entries().map_err(&bad)? {
        let mut entry = entry.map_err(&bad)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path().map_err(&bad)?.into_owned();
        let Some(name) = wanted(unit, &path) else { continue };
        if out.iter().any(|e| e.name == name) {
            continue;
        }
        let dest = dir.join(&name);
        let mut f = fs::File::create(&dest).map_err(io(format!("cannot write {}", dest.display())))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = entry.read(&mut buf).map_err(&bad)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            f.write_all(&buf[..n]).map_err(io(format!("cannot write {}", dest.display())))?;
        }
        f.set_permissions(fs::Permissions::from_mode(0o755))
            .map_err(io(format!("cannot chmod {}", dest.display())))?;
        out.push(Extracted { name, path: dest, sha256: hex::encode(hasher.finalize()) });
    }
    for r in required(unit) {
        if !out.iter().any(|e| e.name == *r) {
            return Err(ArtifactError::MissingInArchive {
                archive: archive.to_owned(),
                name: (*r).to_owned(),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// sha256 of a file, streamed.
pub(crate) fn sha256_file(path: &Path) -> Result<String, ArtifactError> {
    let mut f =
        fs::File::open(path).map_err(|e| ArtifactError::io(format!("cannot open {}", path.display()), e))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher)
        .map_err(|e| ArtifactError::io(format!("cannot read {}", path.display()), e))?;
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_picked_by_base_name_per_component() {
        let w = |u, p: &str| wanted(u, Path::new(p));
        assert_eq!(w(Component::Etcd, "etcd-v3.6.6-linux-amd64/etcdctl").as_deref(), Some("etcdctl"));
        assert_eq!(w(Component::Etcd, "etcd-v3.6.6-linux-amd64/README.md"), None);
        assert_eq!(
            w(Component::Containerd, "bin/containerd-shim-runc-v2").as_deref(),
            Some("containerd-shim-runc-v2")
        );
        assert_eq!(w(Component::Containerd, "LICENSE"), None);
        assert_eq!(w(Component::CniPlugins, "./host-local").as_deref(), Some("host-local"));
        assert_eq!(w(Component::CniPlugins, "./LICENSE"), None);
        assert_eq!(w(Component::CniPlugins, "./README.md"), None);
        assert_eq!(w(Component::Crictl, "crictl").as_deref(), Some("crictl"));
        // A traversal attempt only ever yields a base name.
        assert_eq!(w(Component::Crictl, "../../etc/crictl").as_deref(), Some("crictl"));
    }
}
