//! The inventory file format: serde types only, exactly as a user writes them.
//!
//! Field names are camelCase like Kubernetes objects. Every struct rejects unknown fields so a typo is an
//! error with a "did you mean" rather than a silently ignored setting. Defaults live in
//! [`crate::model`], not here, so "not set" stays visible to validation. Merge keys and top-level `x-`
//! fields are resolved before these types see the document (see [`super::parse`]).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A whole inventory file.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Inventory {
    /// Cluster-wide settings.
    pub cluster: ClusterSpec,
    /// SSH defaults for every host (each host may override them).
    #[serde(default)]
    pub ssh: SshSpec,
    /// The machines.
    pub hosts: Vec<HostSpec>,
}

/// Cluster-wide settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterSpec {
    /// Cluster name: a DNS-1123 label; names `pki/<name>/` and the kubeconfig contexts.
    pub name: String,
    /// Kubernetes version, `v1.35.7` (a patch version; the `v` is optional).
    pub kubernetes_version: String,
    /// Where clients reach the API. Default: the first control plane, or a node-local balancer with
    /// more than one control plane.
    #[serde(default)]
    pub api_endpoint: Option<ApiEndpointSpec>,
    /// Pod network CIDR. Default `10.244.0.0/16`.
    #[serde(default, rename = "podCIDR")]
    pub pod_cidr: Option<String>,
    /// Service network CIDR. Default `10.96.0.0/12`.
    #[serde(default, rename = "serviceCIDR")]
    pub service_cidr: Option<String>,
    /// Cluster DNS domain. Default `cluster.local`.
    #[serde(default)]
    pub cluster_domain: Option<String>,
    /// Pod network plugin. Default `bridge`.
    #[serde(default)]
    pub cni: Option<CniSpec>,
    /// Certificate settings.
    #[serde(default)]
    pub certificates: CertificatesSpec,
    /// Where release binaries come from. Default `official`.
    #[serde(default)]
    pub release_source: Option<ReleaseSourceSpec>,
    /// Versions of the non-Kubernetes components; each defaults from the Kubernetes version.
    #[serde(default)]
    pub components: ComponentVersions,
    /// Let control-plane nodes run ordinary workloads (no NoSchedule taint). Default false.
    #[serde(default)]
    pub control_plane_schedulable: Option<bool>,
    /// Extra flags per component, `component: {flag: value}`; validated against the component's flag list.
    #[serde(default)]
    pub extra_args: BTreeMap<String, BTreeMap<String, String>>,
}

/// How clients reach the Kubernetes API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApiEndpointSpec {
    /// `local-lb` (a balancer on every node, the HA default), `vip`, `external` or `direct`
    /// (the first control plane; the single-control-plane default).
    #[serde(default)]
    pub mode: Option<String>,
    /// DNS name or IP address of the VIP or external balancer. Required for `vip` and `external`.
    #[serde(default)]
    pub host: Option<String>,
    /// Port. Default 6443.
    #[serde(default)]
    pub port: Option<u16>,
}

/// The pod network plugin.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CniSpec {
    /// `bridge` (built-in host-local bridge config), `none` (bring your own), or `manifest`.
    pub plugin: String,
    /// With `manifest`: a local file path or an `https://` URL applied by the addons phase.
    #[serde(default)]
    pub manifest: Option<String>,
    /// The manifest's sha256 (64 hex digits): required for a URL, optional for a file. kubeforge fetches the
    /// URL itself and applies the manifest only when its digest is this one.
    #[serde(default)]
    pub sha256: Option<String>,
}

/// Certificate settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CertificatesSpec {
    /// Leaf validity as a duration (`8760h`, `365d`). Default one year.
    #[serde(default)]
    pub validity: Option<String>,
    /// CA validity. Default ten years.
    #[serde(default)]
    pub ca_validity: Option<String>,
    /// `ecdsa-p256` (default), `ecdsa-p384`, `rsa-2048`, `rsa-3072`, `rsa-4096`.
    #[serde(default)]
    pub key_algorithm: Option<String>,
    /// Extra subject alternative names for the apiserver certificate.
    #[serde(default, rename = "extraSANs")]
    pub extra_sans: Vec<String>,
}

/// Where release binaries come from.
///
/// Written `type: official|mirror|bundle` with the fields of that type. It is read through
/// [`RawReleaseSource`], a plain struct, rather than serde's internally tagged enums: those buffer the
/// mapping and lose its path, so a missing `url` was reported at `cluster` instead of at `releaseSource`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase", tag = "type", try_from = "RawReleaseSource")]
pub enum ReleaseSourceSpec {
    /// The upstream release servers with their published checksum files.
    #[serde(rename = "official")]
    Official {
        /// Pinned digests that override the published checksum: `component/arch: sha256:<hex>`.
        #[serde(default)]
        pins: BTreeMap<String, String>,
    },
    /// A mirror with the same layout as the upstream servers.
    #[serde(rename = "mirror")]
    Mirror {
        /// Base URL of the mirror.
        url: String,
        /// Pinned digests, as for `official`.
        #[serde(default)]
        pins: BTreeMap<String, String>,
        /// A PEM file of CA certificates (relative to the inventory file) that an `https://` mirror's
        /// certificate may also chain to: a mirror behind a private CA. The public roots stay trusted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_file: Option<String>,
    },
    /// A local directory or archive with a `manifest.json` (component, version, arch, file, sha256).
    #[serde(rename = "bundle")]
    Bundle {
        /// Path of the bundle directory or `.tar.gz`, relative to the inventory file.
        path: String,
    },
}

/// The kinds of [`ReleaseSourceSpec`], as written in `type:`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ReleaseSourceType {
    /// `official`.
    Official,
    /// `mirror`.
    Mirror,
    /// `bundle`.
    Bundle,
}

/// `releaseSource` as written, before its `type` decides which fields it needs: every field of every type,
/// so that serde reports each problem with its own path and position.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawReleaseSource {
    /// `official`, `mirror` or `bundle`.
    #[serde(rename = "type")]
    pub kind: ReleaseSourceType,
    /// The mirror's base URL (`mirror`).
    #[serde(default)]
    pub url: Option<String>,
    /// Pinned digests (`official`, `mirror`).
    #[serde(default)]
    pub pins: Option<BTreeMap<String, String>>,
    /// The bundle (`bundle`).
    #[serde(default)]
    pub path: Option<String>,
    /// CA certificates for an https mirror (`mirror`).
    #[serde(default)]
    pub ca_file: Option<String>,
}

impl TryFrom<RawReleaseSource> for ReleaseSourceSpec {
    /// Worded as serde words its own errors (`missing field`, `unknown field ..., expected ...`), which the
    /// loader turns into a problem with a fix.
    type Error = String;
    fn try_from(r: RawReleaseSource) -> Result<Self, String> {
        let (allowed, kind): (&[&str], &str) = match r.kind {
            ReleaseSourceType::Official => (&["type", "pins"], "official"),
            ReleaseSourceType::Mirror => (&["type", "url", "pins", "caFile"], "mirror"),
            ReleaseSourceType::Bundle => (&["type", "path"], "bundle"),
        };
        let given = [
            ("url", r.url.is_some()),
            ("pins", r.pins.is_some()),
            ("path", r.path.is_some()),
            ("caFile", r.ca_file.is_some()),
        ];
        if let Some((field, _)) = given.iter().find(|(f, set)| *set && !allowed.contains(f)) {
            let expected = allowed.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(", ");
            return Err(format!(
                "{}unknown field `{field}` (with `type: {kind}`), expected one of {expected}",
                super::explain::RELEASE_SOURCE
            ));
        }
        Ok(match r.kind {
            ReleaseSourceType::Official => ReleaseSourceSpec::Official { pins: r.pins.unwrap_or_default() },
            ReleaseSourceType::Mirror => ReleaseSourceSpec::Mirror {
                url: r.url.ok_or_else(|| format!("{}missing field `url`", super::explain::RELEASE_SOURCE))?,
                pins: r.pins.unwrap_or_default(),
                ca_file: r.ca_file,
            },
            ReleaseSourceType::Bundle => ReleaseSourceSpec::Bundle {
                path: r
                    .path
                    .ok_or_else(|| format!("{}missing field `path`", super::explain::RELEASE_SOURCE))?,
            },
        })
    }
}

/// Versions of the components that are not Kubernetes itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ComponentVersions {
    /// etcd version, `v3.6.6`.
    #[serde(default)]
    pub etcd: Option<String>,
    /// containerd version (used when the distribution has no package).
    #[serde(default)]
    pub containerd: Option<String>,
    /// runc version.
    #[serde(default)]
    pub runc: Option<String>,
    /// CNI plugins version.
    #[serde(default)]
    pub cni_plugins: Option<String>,
    /// crictl version.
    #[serde(default)]
    pub crictl: Option<String>,
    /// kubectl version (installed on control planes for the addons phase). Default: the Kubernetes version;
    /// the skew policy allows one minor newer or older.
    #[serde(default)]
    pub kubectl: Option<String>,
}

/// SSH connection settings. At the top level they are the defaults; under a host, overrides.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SshSpec {
    /// Login user. Default `root`.
    #[serde(default)]
    pub user: Option<String>,
    /// Port. Default 22.
    #[serde(default)]
    pub port: Option<u16>,
    /// Private key file, relative to the inventory file or with `~/`.
    #[serde(default)]
    pub identity_file: Option<String>,
    /// Use ssh-agent (`SSH_AUTH_SOCK`). Default true when no identity file is given.
    #[serde(default)]
    pub agent: Option<bool>,
    /// A jump host reached first; the target is reached through it (`direct-tcpip`).
    #[serde(default)]
    pub bastion: Option<BastionSpec>,
    /// Run privileged commands through `sudo -n` (implied for a non-root user unless set to false).
    #[serde(default)]
    pub sudo: Option<bool>,
    /// Name of an environment variable that holds the sudo password, when sudo needs one.
    #[serde(default)]
    pub sudo_password_env: Option<String>,
    /// An OpenSSH `known_hosts` file. Default `~/.ssh/known_hosts`.
    #[serde(default)]
    pub known_hosts: Option<String>,
    /// A pinned host key (`ssh-ed25519 AAAA...`), checked instead of known_hosts. Per host only.
    #[serde(default)]
    pub host_key: Option<String>,
    /// How long connecting (TCP, SSH handshake, authentication) may take, e.g. `60s`. Default 15s, or the
    /// ssh config's `ConnectTimeout`. Slow or emulated machines need more.
    pub connect_timeout: Option<String>,
    /// An OpenSSH client config whose settings fill what the inventory leaves unset (relative to the
    /// inventory file or with `~/`). Default `~/.ssh/config` when it exists; `none` reads no file.
    #[serde(default)]
    pub config_file: Option<String>,
}

/// A jump host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BastionSpec {
    /// Address of the jump host.
    pub address: String,
    /// Port. Default 22.
    #[serde(default)]
    pub port: Option<u16>,
    /// Login user. Default: the target's user.
    #[serde(default)]
    pub user: Option<String>,
    /// Private key for the jump host. Default: the target's.
    #[serde(default)]
    pub identity_file: Option<String>,
    /// A pinned host key for the jump host.
    #[serde(default)]
    pub host_key: Option<String>,
}

/// One machine.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HostSpec {
    /// Node name: a DNS-1123 subdomain, lower case; the Kubernetes Node name.
    pub name: String,
    /// Address kubeforge connects to over SSH (IP or DNS name).
    pub address: String,
    /// Address the cluster uses (advertise address, node IP). Default: `address` when it is an IP.
    #[serde(default)]
    pub internal_address: Option<String>,
    /// `control-plane`, `etcd`, `worker`.
    pub roles: Vec<String>,
    /// Node labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Node taints, `key[=value]:Effect`.
    #[serde(default)]
    pub taints: Vec<String>,
    /// CPU architecture (`amd64`, `arm64`). Default `amd64`; `check` reports the real one.
    #[serde(default)]
    pub arch: Option<String>,
    /// Per-host SSH overrides.
    #[serde(default)]
    pub ssh: Option<SshSpec>,
}
