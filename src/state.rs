//! The cluster state file, `pki/<cluster>/state.json`: what kubeforge knows about a cluster beyond the
//! inventory. The hosts it installed with their roles and component versions, the etcd members, the pod
//! subnet allocated to each node, and per phase and host the digest of the last converged desired state
//! (the phase checkpoints). It is written atomically (temporary file + rename, 0600) after every phase that
//! changed something, and a copy lives on every control plane (`/var/lib/kubeforge/state.json`), so
//! another admin machine with the PKI can take over.
//!
//! Every lifecycle command reads it: `apply` keeps pod subnets stable (a node keeps its subnet while it
//! exists, whatever its position in the inventory), `join` finds the hosts not yet installed, `upgrade`
//! reads the versions per host, `remove-node` and `reset` drop hosts from it.

use crate::model::ClusterModel;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The file name under `pki/<cluster>/`.
pub const FILE: &str = "state.json";
/// Where the copy lives on control planes.
pub const REMOTE_PATH: &str = "/var/lib/kubeforge/state.json";

/// One host as kubeforge installed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct HostState {
    /// Roles (`control-plane`, `etcd`, `worker`).
    pub roles: Vec<String>,
    /// The address the cluster uses.
    pub internal_address: String,
    /// CPU architecture.
    pub arch: String,
    /// Installed version per component (`kubelet`: `v1.35.7`), as of the last successful phase.
    pub versions: BTreeMap<String, String>,
    /// The Kubernetes version the host ran before its last upgrade (what `upgrade rollback` returns to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_kubernetes: Option<String>,
}

/// The state of one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct ClusterState {
    /// Format version.
    pub format: u32,
    /// Cluster name.
    pub cluster: String,
    /// The cluster UID, made once when the cluster is first installed; every host's marker carries it
    /// (see [`crate::identity`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Hosts kubeforge installed, by name.
    pub hosts: BTreeMap<String, HostState>,
    /// etcd members (host names), as kubeforge last configured them.
    pub etcd_members: Vec<String>,
    /// Pod subnet per node name (the bridge CNI's per-node ranges). Never reused while the node exists.
    pub pod_subnets: BTreeMap<String, String>,
    /// Phase checkpoints: per phase, per host, the digest of the desired state it last converged to.
    pub phases: BTreeMap<String, BTreeMap<String, String>>,
    /// How each etcd member bootstrapped (kept so that membership changes never rewrite running members).
    #[serde(default)]
    pub etcd_bootstrap: BTreeMap<String, crate::model::EtcdBootstrap>,
    /// A `kubeforge maintain` run that has not finished: a re-run with the same settings skips the hosts
    /// it already did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<Maintenance>,
}

/// The progress of a `kubeforge maintain` run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Maintenance {
    /// When it started (Unix seconds).
    pub started: i64,
    /// Its settings (`--patch --reboot always`), which a re-run must repeat to resume it.
    pub settings: String,
    /// The hosts it finished, with what was done on each.
    pub done: BTreeMap<String, String>,
}

/// Errors of the state file.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing failed.
    #[error("{context}: {source}")]
    Io {
        /// What was done.
        context: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a state file.
    #[error("{path} is not a kubeforge state file: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// The pod CIDR has no free subnet left for a node.
    #[error("the pod CIDR {cidr} has no free /{prefix} left for node {node}")]
    PodCidrExhausted {
        /// The pod CIDR.
        cidr: String,
        /// The per-node prefix.
        prefix: u8,
        /// The node that got none.
        node: String,
    },
}

impl ClusterState {
    /// The current format.
    pub const FORMAT: u32 = 1;

    /// The path of the state file of `cluster` under `pki_root`.
    pub fn path(pki_root: &Path, cluster: &str) -> PathBuf {
        pki_root.join(cluster).join(FILE)
    }

    /// Reads the state of `cluster`; a cluster kubeforge has not installed yet has an empty state.
    pub fn load(pki_root: &Path, cluster: &str) -> Result<Self, StateError> {
        let path = Self::path(pki_root, cluster);
        match std::fs::read(&path) {
            Ok(bytes) => Self::parse(&path, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok(ClusterState { format: Self::FORMAT, cluster: cluster.to_owned(), ..Default::default() })
            }
            Err(source) => Err(StateError::Io { context: format!("reading {}", path.display()), source }),
        }
    }

    /// Parses state file content.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Self, StateError> {
        let st: ClusterState = serde_json::from_slice(bytes)
            .map_err(|e| StateError::Corrupt { path: path.to_owned(), message: e.to_string() })?;
        if st.format != Self::FORMAT {
            return Err(StateError::Corrupt {
                path: path.to_owned(),
                message: format!("format {} (this kubeforge reads format {})", st.format, Self::FORMAT),
            });
        }
        Ok(st)
    }

    /// The file content: pretty JSON, stable for the same state (maps are ordered), so an unchanged state
    /// is an unchanged file on every control plane.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("state always serializes");
        v.push(b'\n');
        v
    }

    /// Writes the state atomically (temporary file in the same directory, fsync, rename), mode 0600.
    pub fn save(&self, pki_root: &Path) -> Result<(), StateError> {
        let path = Self::path(pki_root, &self.cluster);
        let dir = path.parent().expect("state path has a parent");
        let io = |context: String| move |source| StateError::Io { context, source };
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        crate::fsutil::replace_file(&path, &self.to_json(), 0o600, true)
            .map_err(io(format!("writing {}", path.display())))
    }

    /// Gives every node of `model` a pod subnet: the one it already has, or the lowest free one. Nodes the
    /// state knows that are no longer in the inventory keep theirs (they may still run: only
    /// `remove-node` frees a subnet). Returns the allocation per node of the model.
    pub fn allocate_pod_subnets(
        &mut self,
        model: &ClusterModel,
    ) -> Result<BTreeMap<String, IpNet>, StateError> {
        let prefix = crate::render::pod_subnet_prefix(&model.pod_cidr);
        let fits =
            |n: &IpNet| n.prefix_len() == prefix && model.pod_cidr.contains(n) && n.network() == n.addr();
        // Forget allocations that no longer fit the pod CIDR (the CIDR itself changed).
        self.pod_subnets.retain(|_, s| s.parse::<IpNet>().is_ok_and(|n| fits(&n)));
        let mut used: BTreeSet<IpNet> = self.pod_subnets.values().filter_map(|s| s.parse().ok()).collect();
        let mut out = BTreeMap::new();
        for h in model.nodes() {
            if let Some(n) = self.pod_subnets.get(&h.name).and_then(|s| s.parse::<IpNet>().ok()) {
                out.insert(h.name.clone(), n);
                continue;
            }
            let free = model
                .pod_cidr
                .subnets(prefix)
                .ok()
                .and_then(|mut it| it.find(|n| !used.contains(n)))
                .ok_or_else(|| StateError::PodCidrExhausted {
                    cidr: model.pod_cidr.to_string(),
                    prefix,
                    node: h.name.clone(),
                })?;
            used.insert(free);
            self.pod_subnets.insert(h.name.clone(), free.to_string());
            out.insert(h.name.clone(), free);
        }
        Ok(out)
    }

    /// Records `model`'s hosts as installed: roles, address, arch, and the versions of what their roles run.
    pub fn record_hosts<'a>(&mut self, model: &ClusterModel, hosts: impl IntoIterator<Item = &'a str>) {
        for name in hosts {
            let Some(h) = model.host(name) else { continue };
            let roles = h.roles.names();
            let v = &model.versions;
            let mut versions = BTreeMap::new();
            for c in &h.components {
                let version = match c {
                    crate::model::Component::Etcd => v.etcd.to_string(),
                    crate::model::Component::ContainerRuntime => v.containerd.to_string(),
                    crate::model::Component::ApiLoadBalancer => format!("v{}", env!("CARGO_PKG_VERSION")),
                    _ => v.kubernetes.to_string(),
                };
                versions.insert(c.unit().to_owned(), version);
            }
            let previous_kubernetes = self.hosts.get(name).and_then(|s| s.previous_kubernetes.clone());
            self.hosts.insert(
                name.to_owned(),
                HostState {
                    roles,
                    internal_address: h.internal_ip.to_string(),
                    arch: h.arch.clone(),
                    versions,
                    previous_kubernetes,
                },
            );
        }
        self.etcd_members = model.etcd_members().map(|h| h.name.clone()).collect();
    }

    /// Forgets a host (after `remove-node` or `reset`): its record, its pod subnet, its checkpoints.
    pub fn forget_host(&mut self, name: &str) {
        self.hosts.remove(name);
        self.pod_subnets.remove(name);
        self.etcd_members.retain(|m| m != name);
        self.etcd_bootstrap.remove(name);
        for hosts in self.phases.values_mut() {
            hosts.remove(name);
        }
        self.phases.retain(|_, h| !h.is_empty());
    }
}

/// Picks the state among the control planes' copies: the one most of them hold (the first control plane's
/// on a tie). Returns it with the hosts that hold another copy.
pub fn consensus(copies: &[(String, Vec<u8>)]) -> Option<(Vec<u8>, Vec<String>)> {
    let mut counts: Vec<(&Vec<u8>, usize)> = Vec::new();
    for (_, c) in copies {
        match counts.iter_mut().find(|(x, _)| *x == c) {
            Some(e) => e.1 += 1,
            None => counts.push((c, 1)),
        }
    }
    // `max_by_key` keeps the last of equal maxima: search from the end so the first copy wins a tie.
    let (best, _) = counts.iter().rev().max_by_key(|(_, n)| *n)?;
    let best = (*best).clone();
    let others = copies.iter().filter(|(_, c)| *c != best).map(|(h, _)| h.clone()).collect();
    Some((best, others))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(hosts: &[&str], pod_cidr: &str) -> ClusterModel {
        let mut text =
            format!("cluster: {{name: c, kubernetesVersion: v1.35.7, podCIDR: {pod_cidr}}}\nhosts:\n");
        for (i, h) in hosts.iter().enumerate() {
            let roles = if i == 0 { "[control-plane, etcd, worker]" } else { "[worker]" };
            text.push_str(&format!("- {{name: {h}, address: 10.0.0.{}, roles: {roles}}}\n", i + 1));
        }
        ClusterModel::derive(&crate::inventory::parse(Path::new("t.yaml"), &text).unwrap())
    }

    #[test]
    fn a_node_keeps_its_subnet_when_another_leaves_and_a_new_one_gets_the_lowest_free() {
        let mut st = ClusterState::default();
        let a = st.allocate_pod_subnets(&model(&["n1", "n2", "n3"], "10.244.0.0/16")).unwrap();
        assert_eq!(a["n1"].to_string(), "10.244.0.0/24");
        assert_eq!(a["n3"].to_string(), "10.244.2.0/24");
        // n2 is removed: n3 keeps its subnet even though it is now second in the inventory.
        st.forget_host("n2");
        let b = st.allocate_pod_subnets(&model(&["n1", "n3"], "10.244.0.0/16")).unwrap();
        assert_eq!(b["n3"].to_string(), "10.244.2.0/24");
        // A new node takes the freed subnet, not one that collides.
        let c = st.allocate_pod_subnets(&model(&["n1", "n3", "n4"], "10.244.0.0/16")).unwrap();
        assert_eq!(c["n4"].to_string(), "10.244.1.0/24");
        // A node dropped from the inventory without remove-node keeps its subnet reserved.
        let d = st.allocate_pod_subnets(&model(&["n1", "n5"], "10.244.0.0/16")).unwrap();
        assert_eq!(d["n5"].to_string(), "10.244.3.0/24");
    }

    #[test]
    fn an_exhausted_pod_cidr_names_the_node() {
        let mut st = ClusterState::default();
        let e = st.allocate_pod_subnets(&model(&["n1", "n2", "n3"], "10.244.0.0/23")).unwrap_err();
        assert_eq!(e.to_string(), "the pod CIDR 10.244.0.0/23 has no free /24 left for node n3");
    }

    #[test]
    fn saves_atomically_with_mode_0600_and_reads_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let m = model(&["n1", "n2"], "10.244.0.0/16");
        let mut st = ClusterState::load(dir.path(), "c").unwrap();
        assert!(st.hosts.is_empty());
        st.allocate_pod_subnets(&m).unwrap();
        st.record_hosts(&m, ["n1", "n2"]);
        st.save(dir.path()).unwrap();
        let path = ClusterState::path(dir.path(), "c");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let back = ClusterState::load(dir.path(), "c").unwrap();
        assert_eq!(back, st);
        assert_eq!(back.hosts["n1"].versions["kubelet"], "v1.35.7");
        assert_eq!(back.etcd_members, vec!["n1"]);
        std::fs::write(&path, b"{\"format\": 9}").unwrap();
        assert!(ClusterState::load(dir.path(), "c")
            .unwrap_err()
            .to_string()
            .contains("not a kubeforge state file"));
    }

    #[test]
    fn pull_takes_the_copy_most_control_planes_hold() {
        let c = |h: &str, b: &str| (h.to_owned(), b.as_bytes().to_vec());
        assert_eq!(consensus(&[]), None);
        let (best, others) = consensus(&[c("cp1", "old"), c("cp2", "new"), c("cp3", "new")]).unwrap();
        assert_eq!((best, others), (b"new".to_vec(), vec!["cp1".to_owned()]));
        let (best, others) = consensus(&[c("cp1", "a"), c("cp2", "b")]).unwrap();
        assert_eq!((best, others), (b"a".to_vec(), vec!["cp2".to_owned()]), "a tie goes to the first");
        let (best, others) = consensus(&[c("cp1", "a")]).unwrap();
        assert_eq!((best, others), (b"a".to_vec(), vec![]));
    }
}
