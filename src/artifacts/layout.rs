//! Where each component lives on the upstream release servers and on a mirror, and how each project's
//! published checksum file is read.
//!
//! Relative paths (identical on a mirror):
//!
//! | component | file | checksum file |
//! |---|---|---|
//! | kube-* , kubectl, kubelet | `release/<v>/bin/linux/<arch>/<bin>` | `<bin>.sha256` (bare digest) |
//! | etcd (+etcdctl) | `etcd-io/etcd/releases/download/<v>/etcd-<v>-linux-<arch>.tar.gz` | `SHA256SUMS` |
//! | containerd | `containerd/containerd/releases/download/v<x>/containerd-<x>-linux-<arch>.tar.gz` | `<file>.sha256sum` |
//! | runc | `opencontainers/runc/releases/download/v<x>/runc.<arch>` | `runc.sha256sum` |
//! | cni-plugins | `containernetworking/plugins/releases/download/v<x>/cni-plugins-linux-<arch>-v<x>.tgz` | `<file>.sha256` |
//! | crictl | `kubernetes-sigs/cri-tools/releases/download/v<x>/crictl-v<x>-linux-<arch>.tar.gz` | `<file>.sha256` |
//!
//! Kubernetes paths hang off the Kubernetes base (`https://dl.k8s.io` or `<mirror>`), the others off
//! the GitHub base (`https://github.com` or `<mirror>/github.com`).

use super::{Component, Requirement};

/// Upstream base URL of the Kubernetes release binaries.
pub const OFFICIAL_KUBERNETES_BASE: &str = "https://dl.k8s.io";
/// Upstream base URL of the GitHub release downloads.
pub const OFFICIAL_GITHUB_BASE: &str = "https://github.com";

/// Whether a file is an executable as is, or a tarball the executables are extracted from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A single executable.
    Binary,
    /// A `.tar.gz` holding the executables.
    Tarball,
}

/// The two base URLs a source resolves relative paths against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bases {
    /// Base for Kubernetes binaries.
    pub kubernetes: String,
    /// Base for GitHub release downloads.
    pub github: String,
}

impl Bases {
    /// The upstream servers.
    pub fn official() -> Self {
        Bases { kubernetes: OFFICIAL_KUBERNETES_BASE.into(), github: OFFICIAL_GITHUB_BASE.into() }
    }

    /// A mirror rooted at `url`.
    pub fn mirror(url: &str) -> Self {
        let base = url.trim_end_matches('/');
        Bases { kubernetes: base.to_owned(), github: format!("{base}/github.com") }
    }
}

/// Where one download unit lives upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    /// File name (last path segment).
    pub file_name: String,
    /// Full URL of the file.
    pub url: String,
    /// Full URL of its checksum file.
    pub checksum_url: String,
    /// Binary or tarball.
    pub kind: Kind,
}

/// The upstream location of a requirement's download unit.
pub fn remote_file(req: &Requirement, bases: &Bases) -> RemoteFile {
    let v = &req.version; // always `v`-prefixed
    let x = &v[1..];
    let a = &req.arch;
    let unit = req.component.download_unit();
    let gh = |path: String, file: String, sum: String, kind| RemoteFile {
        url: format!("{}/{path}/{file}", bases.github),
        checksum_url: format!("{}/{path}/{sum}", bases.github),
        file_name: file,
        kind,
    };
    match unit {
        c if c.is_kubernetes() => {
            let dir = format!("{}/release/{v}/bin/linux/{a}", bases.kubernetes);
            RemoteFile {
                url: format!("{dir}/{c}"),
                checksum_url: format!("{dir}/{c}.sha256"),
                file_name: c.name().to_owned(),
                kind: Kind::Binary,
            }
        }
        Component::Etcd => gh(
            format!("etcd-io/etcd/releases/download/{v}"),
            format!("etcd-{v}-linux-{a}.tar.gz"),
            "SHA256SUMS".into(),
            Kind::Tarball,
        ),
        Component::Containerd => {
            let f = format!("containerd-{x}-linux-{a}.tar.gz");
            gh(
                format!("containerd/containerd/releases/download/{v}"),
                f.clone(),
                format!("{f}.sha256sum"),
                Kind::Tarball,
            )
        }
        Component::Runc => gh(
            format!("opencontainers/runc/releases/download/{v}"),
            format!("runc.{a}"),
            "runc.sha256sum".into(),
            Kind::Binary,
        ),
        Component::CniPlugins => {
            let f = format!("cni-plugins-linux-{a}-{v}.tgz");
            gh(
                format!("containernetworking/plugins/releases/download/{v}"),
                f.clone(),
                format!("{f}.sha256"),
                Kind::Tarball,
            )
        }
        Component::Crictl => {
            let f = format!("crictl-{v}-linux-{a}.tar.gz");
            gh(
                format!("kubernetes-sigs/cri-tools/releases/download/{v}"),
                f.clone(),
                format!("{f}.sha256"),
                Kind::Tarball,
            )
        }
        // `download_unit` never returns etcdctl, and Kubernetes binaries matched the first arm.
        _ => unreachable!("{unit} is not a download unit"),
    }
}

/// Finds the digest for `file_name` in a checksum file. Accepts a bare digest (Kubernetes `.sha256`)
/// and `sha256sum` lines `<hex>  <name>` / `<hex> *<name>` (names may carry a `./` or directory prefix).
/// Returns lower-case hex.
pub fn parse_checksum(text: &str, file_name: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    for line in &lines {
        let mut parts = line.split_whitespace();
        let (Some(digest), name) = (parts.next(), parts.next()) else { continue };
        if !is_sha256_hex(digest) {
            continue;
        }
        match name {
            // A bare digest is only meaningful when it is the whole file.
            None if lines.len() == 1 => return Some(digest.to_ascii_lowercase()),
            Some(n) => {
                let n = n.trim_start_matches('*');
                let base = n.rsplit('/').next().unwrap_or(n);
                if base == file_name {
                    return Some(digest.to_ascii_lowercase());
                }
            }
            None => {}
        }
    }
    None
}

/// True for 64 hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(c: Component, v: &str, a: &str) -> Requirement {
        Requirement::new(c, v, a).unwrap()
    }

    #[test]
    fn official_urls_follow_each_projects_release_layout() {
        let b = Bases::official();
        let cases = [
            (req(Component::Kubelet, "1.35.7", "arm64"), "https://dl.k8s.io/release/v1.35.7/bin/linux/arm64/kubelet", "https://dl.k8s.io/release/v1.35.7/bin/linux/arm64/kubelet.sha256"),
            (req(Component::Etcdctl, "3.6.6", "amd64"), "https://github.com/etcd-io/etcd/releases/download/v3.6.6/etcd-v3.6.6-linux-amd64.tar.gz", "https://github.com/etcd-io/etcd/releases/download/v3.6.6/SHA256SUMS"),
            (req(Component::Containerd, "2.1.5", "amd64"), "https://github.com/containerd/containerd/releases/download/v2.1.5/containerd-2.1.5-linux-amd64.tar.gz", "https://github.com/containerd/containerd/releases/download/v2.1.5/containerd-2.1.5-linux-amd64.tar.gz.sha256sum"),
            (req(Component::Runc, "1.3.3", "arm64"), "https://github.com/opencontainers/runc/releases/download/v1.3.3/runc.arm64", "https://github.com/opencontainers/runc/releases/download/v1.3.3/runc.sha256sum"),
            (req(Component::CniPlugins, "1.8.0", "amd64"), "https://github.com/containernetworking/plugins/releases/download/v1.8.0/cni-plugins-linux-amd64-v1.8.0.tgz", "https://github.com/containernetworking/plugins/releases/download/v1.8.0/cni-plugins-linux-amd64-v1.8.0.tgz.sha256"),
            (req(Component::Crictl, "1.35.0", "amd64"), "https://github.com/kubernetes-sigs/cri-tools/releases/download/v1.35.0/crictl-v1.35.0-linux-amd64.tar.gz", "https://github.com/kubernetes-sigs/cri-tools/releases/download/v1.35.0/crictl-v1.35.0-linux-amd64.tar.gz.sha256"),
        ];
        for (r, url, sum) in cases {
            let f = remote_file(&r, &b);
            assert_eq!((f.url.as_str(), f.checksum_url.as_str()), (url, sum), "{r}");
        }
    }

    #[test]
    fn mirror_serves_the_same_relative_paths() {
        let b = Bases::mirror("http://mirror.lan/k8s/");
        let f = remote_file(&req(Component::KubeProxy, "1.35.7", "amd64"), &b);
        assert_eq!(f.url, "http://mirror.lan/k8s/release/v1.35.7/bin/linux/amd64/kube-proxy");
        let f = remote_file(&req(Component::Etcd, "3.6.6", "arm64"), &b);
        assert_eq!(
            f.url,
            "http://mirror.lan/k8s/github.com/etcd-io/etcd/releases/download/v3.6.6/etcd-v3.6.6-linux-arm64.tar.gz"
        );
    }

    #[test]
    fn checksum_files_in_every_published_format() {
        let d1 = "a".repeat(64);
        let d2 = "B".repeat(64);
        assert_eq!(parse_checksum(&format!("{d1}\n"), "kubelet"), Some(d1.clone()));
        let sums = format!("{d1}  etcd-v3.6.6-linux-amd64.tar.gz\n{d2}  etcd-v3.6.6-linux-arm64.tar.gz\n");
        assert_eq!(parse_checksum(&sums, "etcd-v3.6.6-linux-arm64.tar.gz"), Some("b".repeat(64)));
        let runc = format!("{d1} *runc.amd64\n{d2} *runc.arm64\n");
        assert_eq!(parse_checksum(&runc, "runc.amd64"), Some(d1.clone()));
        assert_eq!(parse_checksum(&format!("{d1}  ./bin/crictl.tgz"), "crictl.tgz"), Some(d1.clone()));
        assert_eq!(parse_checksum(&sums, "etcd-v3.6.6-linux-s390x.tar.gz"), None);
        assert_eq!(parse_checksum("<html>not found</html>", "kubelet"), None);
        assert_eq!(parse_checksum(&format!("{d1}\n{d2}\n"), "kubelet"), None);
    }
}
