//! Which versions to install and which artifacts each host needs for its roles.
//!
//! Default component versions are keyed by Kubernetes minor. They are defaults only: the inventory
//! (`cluster.components`) or a command-line option overrides each one, and digests are never part of
//! this table (they come from the release source).

use super::{normalize_version, ArtifactError, Component, Requirement};
use crate::inventory::{ClusterSpec, HostSpec};
use std::collections::BTreeSet;

/// The version of every component for one cluster, all normalized with a leading `v`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versions {
    /// Kubernetes (`v1.35.7`).
    pub kubernetes: String,
    /// kubectl (default: the Kubernetes version).
    pub kubectl: String,
    /// etcd.
    pub etcd: String,
    /// containerd.
    pub containerd: String,
    /// runc.
    pub runc: String,
    /// CNI plugins.
    pub cni_plugins: String,
    /// crictl.
    pub crictl: String,
}

/// Per-component version overrides (e.g. from command-line options); `None` = inventory or default.
#[derive(Debug, Clone, Default)]
pub struct VersionOverrides {
    /// etcd.
    pub etcd: Option<String>,
    /// containerd.
    pub containerd: Option<String>,
    /// runc.
    pub runc: Option<String>,
    /// CNI plugins.
    pub cni_plugins: Option<String>,
    /// crictl.
    pub crictl: Option<String>,
}

/// Default versions of the non-Kubernetes components for a Kubernetes minor (`(1, 35)`), or `None` when
/// the minor is unknown. One row per minor, kept as data; docs/reference/k8s-1.36-1.37.md names the source
/// of each value. etcd follows kubeadm's supported etcd per minor; crictl the cri-tools release the
/// minor's notes name; containerd, runc and CNI plugins are the releases the test bundle installs (real
/// binaries, containerd 2.x: kubeforge refuses containerd 1.x from v1.36 on). v1.33/v1.34 are kept for
/// clusters upgraded from them.
pub const DEFAULTS: &[((u32, u32), [&str; 5])] = &[
    //           etcd       containerd runc      CNI       crictl
    ((1, 33), ["v3.5.24", "v2.0.6", "v1.2.6", "v1.7.1", "v1.33.0"]),
    ((1, 34), ["v3.6.5", "v2.1.4", "v1.3.0", "v1.7.1", "v1.34.0"]),
    ((1, 35), ["v3.6.6", "v2.1.5", "v1.3.3", "v1.8.0", "v1.35.0"]),
    // etcd: kubeadm's v3.6.11 for control planes v1.34-v1.36 (PR 138746).
    ((1, 36), ["v3.6.11", "v2.1.9", "v1.3.6", "v1.9.1", "v1.36.0"]),
    // etcd: 1.37 ships etcd v3.7.0 (PR 139427 moved the default to 3.7; v3.7.1 was left for 1.38, PR 141032);
    // crictl: the newest cri-tools the 1.37 notes name (PR 138613).
    ((1, 37), ["v3.7.0", "v2.1.9", "v1.3.6", "v1.9.1", "v1.36.0"]),
];

/// The defaults of one minor, from [`DEFAULTS`].
pub fn default_versions(major: u32, minor: u32) -> Option<VersionOverrides> {
    let [etcd, containerd, runc, cni, crictl] =
        DEFAULTS.iter().find(|(k, _)| *k == (major, minor)).map(|(_, row)| *row)?;
    Some(VersionOverrides {
        etcd: Some(etcd.into()),
        containerd: Some(containerd.into()),
        runc: Some(runc.into()),
        cni_plugins: Some(cni.into()),
        crictl: Some(crictl.into()),
    })
}

impl Versions {
    /// Resolves every version: override, else `cluster.components`, else the default for the
    /// Kubernetes minor.
    pub fn resolve(cluster: &ClusterSpec, overrides: &VersionOverrides) -> Result<Self, ArtifactError> {
        let kubernetes = normalize_version(&cluster.kubernetes_version)?;
        let mut parts = kubernetes[1..].split('.').map(|p| p.parse::<u32>());
        let (major, minor) = match (parts.next(), parts.next()) {
            (Some(Ok(a)), Some(Ok(b))) => (a, b),
            _ => return Err(ArtifactError::BadVersion(cluster.kubernetes_version.clone())),
        };
        let defaults = default_versions(major, minor).unwrap_or_default();
        let c = &cluster.components;
        let pick = |name: &'static str,
                    o: &Option<String>,
                    inv: &Option<String>,
                    d: &Option<String>|
         -> Result<String, ArtifactError> {
            match o.as_ref().or(inv.as_ref()).or(d.as_ref()) {
                Some(v) => normalize_version(v),
                None => Err(ArtifactError::NoDefault { component: name, minor: format!("{major}.{minor}") }),
            }
        };
        Ok(Versions {
            etcd: pick("etcd", &overrides.etcd, &c.etcd, &defaults.etcd)?,
            containerd: pick("containerd", &overrides.containerd, &c.containerd, &defaults.containerd)?,
            runc: pick("runc", &overrides.runc, &c.runc, &defaults.runc)?,
            cni_plugins: pick("cni-plugins", &overrides.cni_plugins, &c.cni_plugins, &defaults.cni_plugins)?,
            crictl: pick("crictl", &overrides.crictl, &c.crictl, &defaults.crictl)?,
            kubectl: match &c.kubectl {
                Some(k) => normalize_version(k)?,
                None => kubernetes.clone(),
            },
            kubernetes,
        })
    }

    /// The version of one component.
    pub fn of(&self, c: Component) -> &str {
        match c {
            Component::Etcd | Component::Etcdctl => &self.etcd,
            Component::Kubectl => &self.kubectl,
            Component::Containerd => &self.containerd,
            Component::Runc => &self.runc,
            Component::CniPlugins => &self.cni_plugins,
            Component::Crictl => &self.crictl,
            _ => &self.kubernetes,
        }
    }
}

/// The components a host needs for its roles (etcd members always carry the `etcd` role explicitly:
/// validation requires it, so stacking is spelled out in the inventory).
pub fn components_for_roles(roles: &[String]) -> BTreeSet<Component> {
    let has = |r: &str| roles.iter().any(|x| x == r);
    let mut out = BTreeSet::new();
    let control_plane = has("control-plane");
    if control_plane {
        out.extend([
            Component::KubeApiserver,
            Component::KubeControllerManager,
            Component::KubeScheduler,
            Component::Kubectl,
        ]);
    }
    if has("etcd") {
        out.extend([Component::Etcd, Component::Etcdctl]);
    }
    // Control-plane hosts are nodes too: they run kubelet and the container runtime.
    if control_plane || has("worker") {
        out.extend([
            Component::Kubelet,
            Component::KubeProxy,
            Component::Containerd,
            Component::Runc,
            Component::CniPlugins,
            Component::Crictl,
        ]);
    }
    out
}

/// The requirements of one host.
pub fn requirements_for_host(
    host: &HostSpec,
    versions: &Versions,
) -> Result<Vec<Requirement>, ArtifactError> {
    let arch = host.arch.as_deref().unwrap_or("amd64");
    components_for_roles(&host.roles).into_iter().map(|c| Requirement::new(c, versions.of(c), arch)).collect()
}

/// The union of every host's requirements, sorted and without duplicates.
pub fn requirements_for_hosts(
    hosts: &[HostSpec],
    versions: &Versions,
) -> Result<Vec<Requirement>, ArtifactError> {
    let mut all = BTreeSet::new();
    for h in hosts {
        all.extend(requirements_for_host(h, versions)?);
    }
    Ok(all.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &str, roles: &[&str], arch: Option<&str>) -> HostSpec {
        HostSpec {
            name: name.into(),
            address: "10.0.0.1".into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            arch: arch.map(str::to_owned),
            ..Default::default()
        }
    }

    fn cluster(v: &str) -> ClusterSpec {
        ClusterSpec { name: "c".into(), kubernetes_version: v.into(), ..Default::default() }
    }

    #[test]
    fn defaults_follow_the_kubernetes_minor_and_overrides_win() {
        let mut c = cluster("1.35.7");
        c.components.runc = Some("1.2.0".into());
        let o = VersionOverrides { crictl: Some("v1.35.9".into()), ..Default::default() };
        let v = Versions::resolve(&c, &o).unwrap();
        assert_eq!(v.kubernetes, "v1.35.7");
        assert_eq!(v.etcd, "v3.6.6");
        assert_eq!(v.runc, "v1.2.0");
        assert_eq!(v.crictl, "v1.35.9");
        let e = Versions::resolve(&cluster("v1.99.0"), &VersionOverrides::default()).unwrap_err();
        assert!(e.to_string().contains("no default etcd version is known for Kubernetes 1.99"), "{e}");
    }

    #[test]
    fn every_minor_validation_accepts_has_a_row_and_the_default_is_the_newest_supported() {
        use crate::inventory::validate::*;
        for minor in *UPGRADE_SOURCE_MINORS.start()..=*SUPPORTED_MINORS.end() {
            assert!(default_versions(1, minor).is_some(), "no defaults for v1.{minor}");
        }
        let d: Version = DEFAULT_KUBERNETES_VERSION.parse().unwrap();
        assert_eq!((d.major, d.minor), (1, *SUPPORTED_MINORS.end()));
        assert_eq!(minor_support(&d), MinorSupport::Supported);
        assert_eq!(minor_support(&"v1.34.11".parse().unwrap()), MinorSupport::UpgradeSourceOnly);
        assert_eq!(minor_support(&"v1.33.13".parse().unwrap()), MinorSupport::UpgradeSourceOnly);
        assert_eq!(minor_support(&"v1.32.9".parse().unwrap()), MinorSupport::Unsupported);
        assert_eq!(minor_support(&"v1.38.0".parse().unwrap()), MinorSupport::Unsupported);
        assert_eq!(minor_support(&"v2.35.0".parse().unwrap()), MinorSupport::Unsupported);
        // From v1.36 on the defaults are containerd 2 (preflight refuses 1.x there).
        for minor in 36..=*SUPPORTED_MINORS.end() {
            assert!(default_versions(1, minor).unwrap().containerd.unwrap().starts_with("v2."), "v1.{minor}");
        }
    }

    #[test]
    fn each_host_gets_only_what_its_roles_need() {
        let v = Versions::resolve(&cluster("v1.35.7"), &VersionOverrides::default()).unwrap();
        let hosts =
            vec![host("cp1", &["control-plane", "etcd"], None), host("w1", &["worker"], Some("arm64"))];
        let names = |h: &HostSpec| -> Vec<String> {
            requirements_for_host(h, &v).unwrap().iter().map(|r| r.to_string()).collect()
        };
        assert_eq!(
            names(&hosts[0]),
            [
                "kube-apiserver v1.35.7 linux/amd64",
                "kube-controller-manager v1.35.7 linux/amd64",
                "kube-scheduler v1.35.7 linux/amd64",
                "kubectl v1.35.7 linux/amd64",
                "kubelet v1.35.7 linux/amd64",
                "kube-proxy v1.35.7 linux/amd64",
                "etcd v3.6.6 linux/amd64",
                "etcdctl v3.6.6 linux/amd64",
                "containerd v2.1.5 linux/amd64",
                "runc v1.3.3 linux/amd64",
                "cni-plugins v1.8.0 linux/amd64",
                "crictl v1.35.0 linux/amd64",
            ]
        );
        assert_eq!(
            names(&hosts[1]),
            [
                "kubelet v1.35.7 linux/arm64",
                "kube-proxy v1.35.7 linux/arm64",
                "containerd v2.1.5 linux/arm64",
                "runc v1.3.3 linux/arm64",
                "cni-plugins v1.8.0 linux/arm64",
                "crictl v1.35.0 linux/arm64",
            ]
        );
        assert_eq!(requirements_for_hosts(&hosts, &v).unwrap().len(), 18);
    }

    #[test]
    fn only_etcd_members_get_etcd() {
        let v = Versions::resolve(&cluster("v1.34.1"), &VersionOverrides::default()).unwrap();
        let hosts = [host("cp1", &["control-plane"], None), host("e1", &["etcd"], None)];
        let cp: Vec<_> = requirements_for_host(&hosts[0], &v).unwrap();
        assert!(!cp.iter().any(|r| r.component == Component::Etcd));
        let e: Vec<_> =
            requirements_for_host(&hosts[1], &v).unwrap().into_iter().map(|r| r.component).collect();
        assert_eq!(e, [Component::Etcd, Component::Etcdctl]);
    }
}
