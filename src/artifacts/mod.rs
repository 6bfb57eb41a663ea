//! Release artifacts: which binaries a host needs, where they come from, how they are verified and
//! cached. Owns the release-source model (`official`, `mirror`, `bundle`), the streaming download with
//! on-the-fly sha256, the local cache and the air-gapped bundle format.
//!
//! # Sources
//! * **official** — the upstream release servers. Kubernetes binaries from
//!   `https://dl.k8s.io/release/<ver>/bin/linux/<arch>/<bin>` with `<bin>.sha256`; etcd, containerd,
//!   runc, CNI plugins and crictl from their GitHub release pages with the checksum file each project
//!   publishes (see [`layout`]).
//! * **mirror** — a base URL `<m>` serving the *same relative paths*:
//!   `<m>/release/<ver>/bin/linux/<arch>/<bin>` (+ `.sha256`) for Kubernetes, and
//!   `<m>/github.com/<owner>/<repo>/releases/download/<tag>/<file>` (+ the project's checksum file) for
//!   everything else. A plain `wget --mirror`/`rsync` of the upstream files into that tree is a valid
//!   mirror.
//! * **bundle** — a directory or `.tar.gz` of one holding `manifest.json` (see [`bundle`]); nothing is
//!   downloaded.
//!
//! No checksum table is compiled in: the digest comes from the published checksum file, or from a pin
//! in the inventory (`pins: {"etcd/amd64": "sha256:<hex>"}`), which overrides it. A file whose digest does
//! not match is deleted and reported with both digests; it never reaches the cache. An `http://` mirror is
//! trusted for nothing: every artifact from it needs a pin (validation requires one for each the hosts
//! install, and [`ArtifactSource::ensure`] refuses an unpinned one before any request), and its checksum
//! files are never read.
//!
//! # Cache
//! `${XDG_CACHE_HOME:-~/.cache}/kubeforge/artifacts/<component>/<version>/<arch>/` (override with
//! `--cache-dir` or `KUBEFORGE_CACHE_DIR`) holds the downloaded file, the executables extracted from it
//! under `bin/`, and `artifact.json` written last, so its presence marks a complete entry. A cache hit
//! re-hashes the executables and makes no network request.
//!
//! The entry point for installers is [`ArtifactSource::from_spec`] + [`ArtifactSource::ensure`].

pub mod bundle;
pub mod cache;
pub mod command;
mod download;
mod extract;
pub mod layout;
pub mod manifest;
pub mod progress;
pub mod source;
pub mod versions;

pub use bundle::{Manifest, ManifestEntry};
pub use download::read_ca_file;
pub use progress::{Progress, Silent, TerminalProgress};
pub use source::{ArtifactSource, Executable, LocalArtifact, RetryPolicy};
pub use versions::{
    default_versions, requirements_for_host, requirements_for_hosts, VersionOverrides, Versions,
};

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// One installable component. `etcdctl` is separate from `etcd` because hosts need them for different
/// roles, although upstream ships both in one tarball.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    /// kube-apiserver.
    KubeApiserver,
    /// kube-controller-manager.
    KubeControllerManager,
    /// kube-scheduler.
    KubeScheduler,
    /// kubectl.
    Kubectl,
    /// kubelet.
    Kubelet,
    /// kube-proxy.
    KubeProxy,
    /// etcd server (and etcdutl, shipped alongside).
    Etcd,
    /// etcdctl.
    Etcdctl,
    /// containerd and its shims.
    Containerd,
    /// runc.
    Runc,
    /// The CNI reference plugins.
    CniPlugins,
    /// crictl.
    Crictl,
}

impl Component {
    /// Every component, in install order.
    pub const ALL: [Component; 12] = [
        Component::KubeApiserver,
        Component::KubeControllerManager,
        Component::KubeScheduler,
        Component::Kubectl,
        Component::Kubelet,
        Component::KubeProxy,
        Component::Etcd,
        Component::Etcdctl,
        Component::Containerd,
        Component::Runc,
        Component::CniPlugins,
        Component::Crictl,
    ];

    /// The name used in manifests, pins, cache paths and messages.
    pub fn name(self) -> &'static str {
        match self {
            Component::KubeApiserver => "kube-apiserver",
            Component::KubeControllerManager => "kube-controller-manager",
            Component::KubeScheduler => "kube-scheduler",
            Component::Kubectl => "kubectl",
            Component::Kubelet => "kubelet",
            Component::KubeProxy => "kube-proxy",
            Component::Etcd => "etcd",
            Component::Etcdctl => "etcdctl",
            Component::Containerd => "containerd",
            Component::Runc => "runc",
            Component::CniPlugins => "cni-plugins",
            Component::Crictl => "crictl",
        }
    }

    /// True for the binaries released by Kubernetes itself (versioned with the cluster).
    pub fn is_kubernetes(self) -> bool {
        matches!(
            self,
            Component::KubeApiserver
                | Component::KubeControllerManager
                | Component::KubeScheduler
                | Component::Kubectl
                | Component::Kubelet
                | Component::KubeProxy
        )
    }

    /// The component whose upstream file provides this one: `etcdctl` comes from the `etcd` tarball.
    /// Downloads, cache entries and pins are keyed by this unit.
    pub fn download_unit(self) -> Component {
        match self {
            Component::Etcdctl => Component::Etcd,
            c => c,
        }
    }

    /// The executables this component installs, by file name; `None` means every executable of the
    /// unit (containerd's `bin/`, the CNI plugin directory).
    pub fn executables(self) -> Option<&'static [&'static str]> {
        match self {
            Component::Etcd => Some(&["etcd", "etcdutl"]),
            Component::Etcdctl => Some(&["etcdctl"]),
            Component::Containerd | Component::CniPlugins => None,
            Component::KubeApiserver => Some(&["kube-apiserver"]),
            Component::KubeControllerManager => Some(&["kube-controller-manager"]),
            Component::KubeScheduler => Some(&["kube-scheduler"]),
            Component::Kubectl => Some(&["kubectl"]),
            Component::Kubelet => Some(&["kubelet"]),
            Component::KubeProxy => Some(&["kube-proxy"]),
            Component::Runc => Some(&["runc"]),
            Component::Crictl => Some(&["crictl"]),
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Component {
    type Err = ArtifactError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Component::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| ArtifactError::UnknownComponent(s.to_owned()))
    }
}

/// CPU architectures with upstream Linux release binaries for every component.
pub const ARCHES: [&str; 4] = ["amd64", "arm64", "ppc64le", "s390x"];

/// One thing a host needs: a component at a version for an architecture (always Linux).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    /// What.
    pub component: Component,
    /// Which version, normalized with a leading `v` (`v1.35.7`, `v2.1.4`).
    pub version: String,
    /// Which architecture (`amd64`, `arm64`, ...).
    pub arch: String,
}

impl Requirement {
    /// Builds a requirement, normalizing the version and checking the architecture.
    pub fn new(component: Component, version: &str, arch: &str) -> Result<Self, ArtifactError> {
        if !ARCHES.contains(&arch) {
            return Err(ArtifactError::UnsupportedArch(arch.to_owned()));
        }
        Ok(Requirement { component, version: normalize_version(version)?, arch: arch.to_owned() })
    }

    /// The download unit of this requirement (same version and arch).
    pub fn unit(&self) -> Requirement {
        Requirement { component: self.component.download_unit(), ..self.clone() }
    }

    /// The pin key of this requirement's download unit: `component/arch`.
    pub fn pin_key(&self) -> String {
        format!("{}/{}", self.component.download_unit(), self.arch)
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} linux/{}", self.component, self.version, self.arch)
    }
}

/// Normalizes `1.35.7` / `v1.35.7` to `v1.35.7`; rejects anything that is not a plain release version
/// (it ends up in URLs and paths, so no `/`, spaces or `..`).
pub fn normalize_version(v: &str) -> Result<String, ArtifactError> {
    let bare = v.strip_prefix('v').unwrap_or(v);
    let ok = !bare.is_empty()
        && bare.chars().next().is_some_and(|c| c.is_ascii_digit())
        && bare.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '+')
        && !bare.contains("..");
    if ok {
        Ok(format!("v{bare}"))
    } else {
        Err(ArtifactError::BadVersion(v.to_owned()))
    }
}

/// Everything that can go wrong while resolving, downloading, caching or bundling artifacts.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// A component name that kubeforge does not know.
    #[error("unknown component '{0}'")]
    UnknownComponent(String),
    /// An architecture without upstream binaries.
    #[error("unsupported architecture '{0}' (supported: amd64, arm64, ppc64le, s390x)")]
    UnsupportedArch(String),
    /// A version string that is not a release version.
    #[error("'{0}' is not a release version like v1.35.7")]
    BadVersion(String),
    /// No default component versions are known for this Kubernetes minor.
    #[error("no default {component} version is known for Kubernetes {minor}")]
    NoDefault {
        /// The component.
        component: &'static str,
        /// The Kubernetes minor, `1.38`.
        minor: String,
    },
    /// A pin in the inventory is malformed.
    #[error("pin '{key}: {value}' is not of the form 'component/arch: sha256:<64 hex digits>'")]
    BadPin {
        /// The pin key.
        key: String,
        /// The pin value.
        value: String,
    },
    /// A mirror URL that is not an http(s) URL.
    #[error("mirror URL '{0}' is not an http:// or https:// URL")]
    BadMirrorUrl(String),
    /// `releaseSource.caFile` cannot be used.
    #[error("CA file {path}: {why}")]
    BadCaFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        why: String,
    },
    /// An artifact from a plain-HTTP mirror without a pin: anyone on the path could replace both the file
    /// and the checksum file beside it.
    #[error("refusing to download {url} over plain HTTP without a pin for `{pin_key}`")]
    UnpinnedOverHttp {
        /// The file's URL.
        url: String,
        /// The pin it needs (`component/arch`).
        pin_key: String,
    },
    /// A manifest URL (applied as cluster-admin) that is not `https://`.
    #[error("refusing to fetch manifest {0}: only https:// URLs are fetched")]
    ManifestNotHttps(String),
    /// The server answered with an error status.
    #[error("GET {url} returned HTTP {status}")]
    Http {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The server could not be reached at all.
    #[error("cannot reach {url} (tried {attempts} times)")]
    Unreachable {
        /// The URL.
        url: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last error.
        #[source]
        source: reqwest::Error,
    },
    /// The transfer kept failing after it started.
    #[error("download of {url} failed after {attempts} attempts")]
    Transfer {
        /// The URL.
        url: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The downloaded or bundled file does not have the expected digest. A download is deleted; it never
    /// reaches the cache.
    #[error("sha256 mismatch for {what}: expected {expected}, got {actual}")]
    ChecksumMismatch {
        /// URL or path of the file.
        what: String,
        /// The digest from the checksum file, pin or manifest.
        expected: String,
        /// The digest of the bytes received.
        actual: String,
    },
    /// The checksum file has no usable digest for the file.
    #[error("checksum file {url} has no sha256 for {file}")]
    ChecksumMissing {
        /// The checksum file URL.
        url: String,
        /// The file name looked for.
        file: String,
    },
    /// A tarball lacks an executable it must contain.
    #[error("{archive} does not contain '{name}'")]
    MissingInArchive {
        /// The archive.
        archive: PathBuf,
        /// The missing executable.
        name: String,
    },
    /// A bundle manifest could not be read or parsed.
    #[error("cannot read bundle manifest {path}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The bundle has no entry for a requirement.
    #[error("bundle {bundle} has no {requirement}; it has: {}", if available.is_empty() { "nothing".to_owned() } else { available.join(", ") })]
    NotInBundle {
        /// The bundle path.
        bundle: PathBuf,
        /// What was looked for.
        requirement: String,
        /// What the bundle has (`component version linux/arch`).
        available: Vec<String>,
    },
    /// A bundle failed verification; every problem is listed.
    #[error("bundle {bundle} is invalid:\n  {}", problems.join("\n  "))]
    BundleInvalid {
        /// The bundle path.
        bundle: PathBuf,
        /// Every problem found.
        problems: Vec<String>,
    },
    /// A local file operation failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl ArtifactError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ArtifactError::Io { context: context.into(), source }
    }

    /// How to fix it, where known.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            ArtifactError::UnsupportedArch(_) => "set hosts[].arch to amd64 or arm64".into(),
            ArtifactError::NoDefault { component, .. } => format!(
                "set cluster.components.{} in the inventory or pass --{component}-version",
                match *component {
                    "cni-plugins" => "cniPlugins",
                    c => c,
                }
            ),
            ArtifactError::BadMirrorUrl(_) => {
                "set cluster.releaseSource.url to the mirror's base, e.g. https://mirror.example.internal/k8s".into()
            }
            ArtifactError::BadCaFile { .. } => {
                "set cluster.releaseSource.caFile to a PEM file of the mirror's CA certificate(s)".into()
            }
            ArtifactError::UnpinnedOverHttp { pin_key, .. } => format!(
                "use an https:// mirror, or add `{pin_key}: sha256:<hex>` to cluster.releaseSource.pins with the digest of that file, taken from a source you trust"
            ),
            ArtifactError::ManifestNotHttps(_) => {
                "serve the manifest over https://, or download it, check it, and give its file path".into()
            }
            ArtifactError::BadPin { .. } => {
                "pins look like `etcd/amd64: sha256:` followed by the 64 hex digits of the downloaded file (etcdctl is pinned through the etcd tarball)".into()
            }
            ArtifactError::Http { status: 404, .. } => {
                "check the version and, for a mirror, that it holds this file at this path (`kubeforge artifacts fetch --help` shows the mirror layout)".into()
            }
            ArtifactError::Unreachable { .. } => {
                "check the network, the mirror URL in cluster.releaseSource, or use an air-gapped bundle".into()
            }
            ArtifactError::ChecksumMismatch { .. } => {
                "the file was corrupted or replaced; if you trust the new file, pin its digest in cluster.releaseSource.pins".into()
            }
            ArtifactError::NotInBundle { .. } => {
                "rebuild the bundle with `kubeforge artifacts bundle -i INVENTORY --out FILE` for this inventory's versions".into()
            }
            ArtifactError::BundleInvalid { .. } => {
                "the bundle was modified or copied incompletely; rebuild or re-copy it".into()
            }
            _ => return None,
        })
    }
}

/// The default cache directory: `$KUBEFORGE_CACHE_DIR`, else `${XDG_CACHE_HOME:-~/.cache}/kubeforge/artifacts`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KUBEFORGE_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    dirs::cache_dir().unwrap_or_else(|| PathBuf::from(".cache")).join("kubeforge").join("artifacts")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_normalize_and_reject_path_tricks() {
        assert_eq!(normalize_version("1.35.7").unwrap(), "v1.35.7");
        assert_eq!(normalize_version("v3.6.6").unwrap(), "v3.6.6");
        assert_eq!(normalize_version("v1.36.0-rc.1").unwrap(), "v1.36.0-rc.1");
        for bad in ["", "v", "latest", "1.2/../x", "1.2 3", "v..1"] {
            assert!(normalize_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn component_names_round_trip() {
        for c in Component::ALL {
            assert_eq!(c.name().parse::<Component>().unwrap(), c);
        }
        assert!("kube-dns".parse::<Component>().is_err());
    }

    #[test]
    fn etcdctl_is_downloaded_with_etcd() {
        let r = Requirement::new(Component::Etcdctl, "3.6.6", "arm64").unwrap();
        assert_eq!(r.unit().component, Component::Etcd);
        assert_eq!(r.pin_key(), "etcd/arm64");
        assert!(Requirement::new(Component::Etcd, "3.6.6", "mips").is_err());
    }
}
