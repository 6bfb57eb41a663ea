//! Pinned manifests fetched by URL (the CNI manifest of `cni.plugin: manifest`): applied as cluster-admin,
//! so they are fetched over `https://` only, by kubeforge rather than by `kubectl apply -f URL` on a host,
//! and held to their sha256 pin. A verified manifest is kept in the artifact cache under its digest
//! (`<cache>/manifests/<sha256>.yaml`); every use reads it back and checks the digest again.

use super::download::{Downloader, RetryPolicy};
use super::extract::sha256_file;
use super::progress::Progress;
use super::ArtifactError;
use std::path::{Path, PathBuf};

/// Where the manifest with digest `sha256` is kept in the cache rooted at `cache_dir`.
pub fn cached_path(cache_dir: &Path, sha256: &str) -> PathBuf {
    cache_dir.join("manifests").join(format!("{sha256}.yaml"))
}

/// The bytes of `path` when their sha256 is `sha256`; a mismatch names `what` and both digests.
pub fn read_verified(path: &Path, sha256: &str, what: &str) -> Result<Vec<u8>, ArtifactError> {
    let data =
        std::fs::read(path).map_err(|e| ArtifactError::io(format!("cannot read {}", path.display()), e))?;
    let actual = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data));
    if !actual.eq_ignore_ascii_case(sha256) {
        return Err(ArtifactError::ChecksumMismatch {
            what: what.to_owned(),
            expected: sha256.to_owned(),
            actual,
        });
    }
    Ok(data)
}

/// Makes the manifest at `url` with digest `sha256` available in the cache and returns its path: a cached
/// copy whose digest still matches is used as it is; otherwise it is downloaded and kept only if it matches
/// (a mismatch is reported with both digests and nothing is kept). Anything but `https://` is refused
/// before any request.
pub async fn fetch(
    url: &str,
    sha256: &str,
    cache_dir: &Path,
    retry: RetryPolicy,
    progress: &dyn Progress,
) -> Result<PathBuf, ArtifactError> {
    if !url.starts_with("https://") {
        return Err(ArtifactError::ManifestNotHttps(url.to_owned()));
    }
    let sha256 = sha256.to_ascii_lowercase();
    let path = cached_path(cache_dir, &sha256);
    if sha256_file(&path).is_ok_and(|d| d == sha256) {
        return Ok(path);
    }
    let dir = path.parent().expect("inside manifests/");
    std::fs::create_dir_all(dir)
        .map_err(|e| ArtifactError::io(format!("cannot create {}", dir.display()), e))?;
    let part = path.with_extension("yaml.part");
    // A stale partial file of another content would be resumed; a manifest is small, start over.
    let _ = std::fs::remove_file(&part);
    Downloader::new(retry).fetch_file(url, &part, &sha256, progress).await?;
    std::fs::rename(&part, &path)
        .map_err(|e| ArtifactError::io(format!("cannot write {}", path.display()), e))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_https_is_fetched() {
        let cache = tempfile::tempdir().unwrap();
        for url in ["http://127.0.0.1:1/cni.yaml", "ftp://example.com/cni.yaml", "cni.yaml"] {
            let e = fetch(url, &"ab".repeat(32), cache.path(), RetryPolicy::default(), &super::super::Silent)
                .await
                .unwrap_err();
            assert!(matches!(&e, ArtifactError::ManifestNotHttps(u) if u == url), "{e:?}");
        }
        assert!(!cache.path().join("manifests").exists(), "nothing was attempted");
    }

    #[test]
    fn a_cached_manifest_is_read_only_with_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let good = b"kind: DaemonSet\n";
        let pin = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(good));
        let path = cached_path(dir.path(), &pin);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, good).unwrap();
        assert_eq!(read_verified(&path, &pin, "m").unwrap(), good);
        assert_eq!(read_verified(&path, &pin.to_uppercase(), "m").unwrap(), good);
        std::fs::write(&path, b"kind: ClusterRoleBinding\n").unwrap();
        let actual = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"kind: ClusterRoleBinding\n"));
        let e = read_verified(&path, &pin, "CNI manifest https://example.com/cni.yaml").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "sha256 mismatch for CNI manifest https://example.com/cni.yaml: expected {pin}, got {actual}"
            )
        );
    }

    /// A cached copy is used only while its digest is the pin: a matching one makes no request (the URL here
    /// reaches nothing), a changed one is fetched again (and here fails to connect) rather than used.
    #[tokio::test]
    async fn a_cached_manifest_is_used_only_while_it_matches_the_pin() {
        let cache = tempfile::tempdir().unwrap();
        let good = b"kind: DaemonSet\n";
        let pin = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(good));
        let path = cached_path(cache.path(), &pin);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, good).unwrap();
        let once = RetryPolicy { attempts: 1, initial_backoff: std::time::Duration::from_millis(1) };
        let url = "https://127.0.0.1:1/cni.yaml";
        let silent = super::super::Silent;
        assert_eq!(fetch(url, &pin.to_uppercase(), cache.path(), once, &silent).await.unwrap(), path);
        std::fs::write(&path, b"kind: ClusterRoleBinding\n").unwrap();
        let e = fetch(url, &pin, cache.path(), once, &silent).await.unwrap_err();
        assert!(matches!(e, ArtifactError::Unreachable { .. }), "{e:?}");
    }
}
