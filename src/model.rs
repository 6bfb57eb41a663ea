//! The derived cluster model: addresses, CIDRs, endpoints and the component set of every host, computed
//! once from a validated inventory. Every later phase reads this instead of recomputing, so a value such as
//! the first Service IP or the etcd client URLs has exactly one definition.

use crate::inventory::validate::{parse_duration, parse_taint, Taint, Version};
use crate::inventory::{self, ApiEndpointSpec, Loaded, ReleaseSourceSpec, SshSpec};
use ipnet::IpNet;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

/// Port of the node-local API load balancer (mode `local-lb`): every node reaches the API at
/// `https://127.0.0.1:LOCAL_LB_PORT`, which balances over all control planes. Not 6443, so that it
/// never collides with an apiserver on a control-plane node.
pub const LOCAL_LB_PORT: u16 = 7443;

/// How clients reach the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointMode {
    /// The first control plane's address (single control plane).
    Direct,
    /// A balancer on every node at 127.0.0.1:[`LOCAL_LB_PORT`]; external clients use the first control plane.
    LocalLb,
    /// A virtual IP kept alive on the control planes.
    Vip,
    /// A load balancer the user runs.
    External,
}

impl std::fmt::Display for EndpointMode {
    /// The inventory's spelling (`local-lb`), never the Rust name.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EndpointMode::Direct => "direct",
            EndpointMode::LocalLb => "local-lb",
            EndpointMode::Vip => "vip",
            EndpointMode::External => "external",
        })
    }
}

/// The API endpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiEndpoint {
    /// Mode.
    pub mode: EndpointMode,
    /// Host (IP or DNS name) that admins and kubeconfigs for people use.
    pub host: String,
    /// Port.
    pub port: u16,
}

impl ApiEndpoint {
    /// `https://host:port` for people and tools outside the cluster.
    pub fn external_url(&self) -> String {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("https://[{ip}]:{}", self.port),
            _ => format!("https://{}:{}", self.host, self.port),
        }
    }

    /// The URL kubelets and kube-proxy use on a node: the local balancer in `local-lb` mode.
    pub fn node_url(&self) -> String {
        match self.mode {
            EndpointMode::LocalLb => format!("https://127.0.0.1:{LOCAL_LB_PORT}"),
            _ => self.external_url(),
        }
    }
}

/// Roles of a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Roles {
    /// Runs kube-apiserver, kube-controller-manager, kube-scheduler.
    pub control_plane: bool,
    /// Runs an etcd member.
    pub etcd: bool,
    /// Takes ordinary workloads.
    pub worker: bool,
}

impl Roles {
    /// The role names as the inventory writes them, in a fixed order.
    pub fn names(&self) -> Vec<String> {
        [(self.control_plane, "control-plane"), (self.etcd, "etcd"), (self.worker, "worker")]
            .into_iter()
            .filter(|(on, _)| *on)
            .map(|(_, n)| n.to_owned())
            .collect()
    }
}

/// A service kubeforge installs on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Component {
    /// containerd + runc + CNI plugins.
    ContainerRuntime,
    /// etcd member.
    Etcd,
    /// kube-apiserver.
    KubeApiserver,
    /// kube-controller-manager.
    KubeControllerManager,
    /// kube-scheduler.
    KubeScheduler,
    /// Node-local API load balancer.
    ApiLoadBalancer,
    /// kubelet.
    Kubelet,
    /// kube-proxy.
    KubeProxy,
}

impl Component {
    /// The systemd unit name.
    pub fn unit(self) -> &'static str {
        match self {
            Component::ContainerRuntime => "containerd",
            Component::Etcd => "etcd",
            Component::KubeApiserver => "kube-apiserver",
            Component::KubeControllerManager => "kube-controller-manager",
            Component::KubeScheduler => "kube-scheduler",
            Component::ApiLoadBalancer => "kube-api-lb",
            Component::Kubelet => "kubelet",
            Component::KubeProxy => "kube-proxy",
        }
    }
}

/// One host, as the phases see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostModel {
    /// Node name.
    pub name: String,
    /// Address kubeforge connects to.
    pub ssh_address: String,
    /// Address the cluster uses (advertise address, node IP, etcd URLs).
    pub internal_ip: IpAddr,
    /// Roles.
    pub roles: Roles,
    /// Is a Kubernetes Node (runs kubelet and kube-proxy): control planes and workers.
    pub is_node: bool,
    /// Takes ordinary workloads (no control-plane NoSchedule taint).
    pub schedulable: bool,
    /// Labels to set on the Node (inventory labels plus the control-plane role label).
    pub labels: BTreeMap<String, String>,
    /// Taints to set on the Node (inventory taints plus the control-plane taint when not schedulable).
    pub taints: Vec<Taint>,
    /// CPU architecture (Kubernetes name).
    pub arch: String,
    /// Services installed here, in start order.
    pub components: Vec<Component>,
    /// The node's pod subnet (bridge CNI). [`ClusterModel::derive`] gives nodes consecutive subnets in
    /// inventory order; a run replaces them with the allocation recorded in the cluster state
    /// ([`ClusterModel::set_pod_subnets`]), which keeps a node's subnet when others come and go.
    pub pod_subnet: Option<IpNet>,
    /// How this etcd member bootstraps (`--initial-cluster`, `--initial-cluster-state`): fixed when the
    /// member is first installed and kept in the cluster state, so later membership changes never rewrite
    /// (and restart) the members that already run. `None`: a member of a new cluster (all members, `new`).
    pub etcd_bootstrap: Option<EtcdBootstrap>,
    /// The host's SSH settings (defaults merged with overrides), still unresolved paths.
    #[serde(skip)]
    pub ssh: SshSpec,
}

/// How an etcd member bootstraps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdBootstrap {
    /// `--initial-cluster`.
    pub initial_cluster: String,
    /// `--initial-cluster-state`: `new` (founding member) or `existing` (joined as a learner).
    pub state: String,
}

/// Versions of everything kubeforge installs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Versions {
    /// Kubernetes.
    pub kubernetes: Version,
    /// etcd.
    pub etcd: Version,
    /// containerd (when installed from the release source).
    pub containerd: Version,
    /// runc.
    pub runc: Version,
    /// CNI plugins.
    pub cni_plugins: Version,
    /// crictl.
    pub crictl: Version,
    /// kubectl.
    pub kubectl: Version,
}

/// Default versions of the other components for a Kubernetes minor. The table itself lives in
/// [`crate::artifacts::default_versions`] (one source of defaults); every entry can be overridden in
/// `cluster.components`.
pub fn default_versions(k8s: Version) -> Versions {
    let table = crate::artifacts::default_versions(k8s.major, k8s.minor).unwrap_or_default();
    let parse = |v: Option<String>, fallback: Version| v.and_then(|s| s.parse().ok()).unwrap_or(fallback);
    let v = |major, minor, patch| Version { major, minor, patch };
    Versions {
        kubernetes: k8s,
        etcd: parse(table.etcd, v(3, 6, 6)),
        containerd: parse(table.containerd, v(2, 1, 5)),
        runc: parse(table.runc, v(1, 3, 3)),
        cni_plugins: parse(table.cni_plugins, v(1, 8, 0)),
        crictl: parse(table.crictl, v(1, k8s.minor, 0)),
        kubectl: k8s,
    }
}

/// Certificate settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CertSettings {
    /// Leaf validity.
    pub validity: Duration,
    /// CA validity.
    pub ca_validity: Duration,
    /// `ecdsa-p256`, `ecdsa-p384`, `rsa-2048`, `rsa-3072`, `rsa-4096`.
    pub key_algorithm: String,
    /// Extra apiserver SANs from the inventory, plus the ones the endpoint mode needs.
    pub extra_apiserver_sans: Vec<String>,
}

/// The CNI choice.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "plugin")]
pub enum Cni {
    /// Built-in bridge + host-local configuration written by kubeforge.
    Bridge,
    /// Nothing: the user brings a network plugin.
    None,
    /// A manifest applied by the addons phase.
    Manifest {
        /// Where it comes from.
        source: CniManifest,
    },
}

/// Where a CNI manifest comes from (validation admits these two shapes only).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CniManifest {
    /// A local file, as written (relative to the inventory file or with `~/`), checked against `sha256` when
    /// one is given.
    File {
        /// The path.
        path: String,
        /// Its pinned sha256 (hex, lower case), if any.
        sha256: Option<String>,
    },
    /// An `https://` URL, fetched by kubeforge into the artifact cache and held to its pin.
    Url {
        /// The URL.
        url: String,
        /// Its pinned sha256 (hex, lower case).
        sha256: String,
    },
}

/// The whole derived model.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterModel {
    /// Cluster name.
    pub name: String,
    /// The inventory file.
    pub inventory_path: PathBuf,
    /// Directory relative inventory paths resolve against.
    pub inventory_dir: PathBuf,
    /// Versions.
    pub versions: Versions,
    /// Pod network.
    pub pod_cidr: IpNet,
    /// Service network.
    pub service_cidr: IpNet,
    /// First address of the service network: the `kubernetes` Service.
    pub first_service_ip: IpAddr,
    /// Tenth address of the service network: the cluster DNS Service (kubeadm's convention).
    pub dns_service_ip: IpAddr,
    /// Cluster DNS domain.
    pub cluster_domain: String,
    /// The API endpoint.
    pub endpoint: ApiEndpoint,
    /// The pod network plugin.
    pub cni: Cni,
    /// Certificate settings.
    pub certs: CertSettings,
    /// Where binaries come from.
    #[serde(skip)]
    pub release_source: ReleaseSourceSpec,
    /// Extra flags per component.
    pub extra_args: BTreeMap<String, BTreeMap<String, String>>,
    /// Hosts, in inventory order.
    pub hosts: Vec<HostModel>,
}

fn nth_ip(net: &IpNet, n: u128) -> IpAddr {
    match net {
        IpNet::V4(n4) => IpAddr::V4(Ipv4Addr::from(u32::from(n4.network()).wrapping_add(n as u32))),
        IpNet::V6(n6) => IpAddr::V6(Ipv6Addr::from(u128::from(n6.network()).wrapping_add(n))),
    }
}

impl ClusterModel {
    /// Loads, validates and derives the model from an inventory file.
    pub fn load(path: &std::path::Path) -> Result<Self, inventory::InventoryError> {
        Ok(Self::derive(&inventory::load(path)?))
    }

    /// Derives the model from an inventory that passed validation.
    pub fn derive(loaded: &Loaded) -> Self {
        let inv = &loaded.inventory;
        let cl = &inv.cluster;
        // Validation guarantees these parse; the fallbacks only keep this function total.
        let k8s: Version = cl.kubernetes_version.parse().unwrap_or(Version { major: 1, minor: 35, patch: 0 });
        let mut versions = default_versions(k8s);
        let c = &cl.components;
        let over = |slot: &mut Version, v: &Option<String>| {
            if let Some(parsed) = v.as_deref().and_then(|s| s.parse().ok()) {
                *slot = parsed;
            }
        };
        over(&mut versions.etcd, &c.etcd);
        over(&mut versions.containerd, &c.containerd);
        over(&mut versions.runc, &c.runc);
        over(&mut versions.cni_plugins, &c.cni_plugins);
        over(&mut versions.crictl, &c.crictl);
        over(&mut versions.kubectl, &c.kubectl);

        let pod_cidr: IpNet = cl.pod_cidr.as_deref().unwrap_or("10.244.0.0/16").parse().expect("validated");
        let service_cidr: IpNet =
            cl.service_cidr.as_deref().unwrap_or("10.96.0.0/12").parse().expect("validated");
        let cp_sched = cl.control_plane_schedulable.unwrap_or(false);

        let hosts: Vec<HostModel> = inv
            .hosts
            .iter()
            .map(|h| {
                let has = |r: &str| h.roles.iter().any(|x| x == r);
                let roles =
                    Roles { control_plane: has("control-plane"), etcd: has("etcd"), worker: has("worker") };
                let is_node = roles.control_plane || roles.worker;
                let schedulable = roles.worker || (roles.control_plane && cp_sched);
                let internal_ip = h
                    .internal_address
                    .as_deref()
                    .unwrap_or(&h.address)
                    .parse()
                    .expect("validated: internal address is an IP");
                let mut labels = h.labels.clone();
                let mut taints: Vec<Taint> = h.taints.iter().filter_map(|t| parse_taint(t).ok()).collect();
                if roles.control_plane {
                    labels.insert("node-role.kubernetes.io/control-plane".into(), String::new());
                    if !schedulable {
                        taints.push(Taint {
                            key: "node-role.kubernetes.io/control-plane".into(),
                            value: String::new(),
                            effect: "NoSchedule".into(),
                        });
                    }
                }
                let mut components = Vec::new();
                if is_node {
                    components.push(Component::ContainerRuntime);
                }
                if roles.etcd {
                    components.push(Component::Etcd);
                }
                if roles.control_plane {
                    components.extend([
                        Component::KubeApiserver,
                        Component::KubeControllerManager,
                        Component::KubeScheduler,
                    ]);
                }
                HostModel {
                    name: h.name.clone(),
                    ssh_address: h.address.clone(),
                    internal_ip,
                    roles,
                    is_node,
                    schedulable,
                    labels,
                    taints,
                    arch: h.arch.clone().unwrap_or_else(|| "amd64".into()),
                    components,
                    pod_subnet: None,
                    etcd_bootstrap: None,
                    ssh: merge_ssh(&inv.ssh, h.ssh.as_ref()),
                }
            })
            .collect();

        let control_planes: Vec<&HostModel> = hosts.iter().filter(|h| h.roles.control_plane).collect();
        let ep_spec =
            cl.api_endpoint.clone().unwrap_or(ApiEndpointSpec { mode: None, host: None, port: None });
        let mode = match ep_spec.mode.as_deref() {
            Some("direct") => EndpointMode::Direct,
            Some("local-lb") => EndpointMode::LocalLb,
            Some("vip") => EndpointMode::Vip,
            Some("external") => EndpointMode::External,
            _ if control_planes.len() > 1 => EndpointMode::LocalLb,
            _ => EndpointMode::Direct,
        };
        let first_cp = control_planes.first().map(|h| h.internal_ip.to_string()).unwrap_or_default();
        let endpoint = ApiEndpoint {
            mode,
            // Validation requires a host for `vip` and `external`; otherwise people reach the first control plane.
            host: ep_spec.host.clone().unwrap_or(first_cp),
            port: ep_spec.port.unwrap_or(6443),
        };
        let mut hosts = hosts;
        if mode == EndpointMode::LocalLb {
            for h in hosts.iter_mut().filter(|h| h.is_node) {
                h.components.push(Component::ApiLoadBalancer);
            }
        }
        for h in hosts.iter_mut().filter(|h| h.is_node) {
            h.components.extend([Component::Kubelet, Component::KubeProxy]);
        }

        let mut extra_sans = cl.certificates.extra_sans.clone();
        if mode == EndpointMode::LocalLb {
            for s in ["127.0.0.1", "localhost"] {
                if !extra_sans.iter().any(|x| x == s) {
                    extra_sans.push(s.to_owned());
                }
            }
        }
        let certs = CertSettings {
            validity: cl
                .certificates
                .validity
                .as_deref()
                .and_then(|v| parse_duration(v).ok())
                .unwrap_or(Duration::from_secs(365 * 86_400)),
            ca_validity: cl
                .certificates
                .ca_validity
                .as_deref()
                .and_then(|v| parse_duration(v).ok())
                .unwrap_or(Duration::from_secs(3650 * 86_400)),
            key_algorithm: cl.certificates.key_algorithm.clone().unwrap_or_else(|| "ecdsa-p256".into()),
            extra_apiserver_sans: extra_sans,
        };
        let cni = match cl.cni.as_ref().map(|c| c.plugin.as_str()) {
            Some("none") => Cni::None,
            Some("manifest") => {
                let spec = cl.cni.as_ref();
                let given = spec.and_then(|c| c.manifest.clone()).unwrap_or_default();
                let sha256 = spec.and_then(|c| c.sha256.as_deref()).map(str::to_ascii_lowercase);
                let hex = sha256
                    .as_deref()
                    .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
                let source = match (given.starts_with("https://") && hex, sha256) {
                    // The digest names the cached copy's file: hex digits only.
                    (true, Some(sha256)) => CniManifest::Url { url: given, sha256 },
                    // Validation refuses a URL without a valid pin, and any http:// one; should one get here,
                    // the addons phase reads it as a file and finds none.
                    (_, sha256) => CniManifest::File { path: given, sha256 },
                };
                Cni::Manifest { source }
            }
            _ => Cni::Bridge,
        };
        let mut model = ClusterModel {
            name: cl.name.clone(),
            inventory_path: loaded.path.clone(),
            inventory_dir: loaded.dir.clone(),
            versions,
            first_service_ip: nth_ip(&service_cidr, 1),
            dns_service_ip: nth_ip(&service_cidr, 10),
            pod_cidr,
            service_cidr,
            cluster_domain: cl.cluster_domain.clone().unwrap_or_else(|| "cluster.local".into()),
            endpoint,
            cni,
            certs,
            release_source: cl
                .release_source
                .clone()
                .unwrap_or(ReleaseSourceSpec::Official { pins: BTreeMap::new() }),
            extra_args: cl.extra_args.clone(),
            hosts,
        };
        let prefix = crate::render::pod_subnet_prefix(&model.pod_cidr);
        let mut subnets = model.pod_cidr.subnets(prefix).ok();
        for h in model.hosts.iter_mut().filter(|h| h.is_node) {
            h.pod_subnet = subnets.as_mut().and_then(|it| it.next());
        }
        model
    }

    /// Fixes how every etcd member bootstraps, from the cluster state: a recorded member keeps its record;
    /// a member of a cluster whose state lists none yet founds it (`new`, every member); a member the state
    /// does not list while others run joins (`existing`, the running members plus itself). Returns the
    /// records to keep.
    pub fn set_etcd_bootstrap(
        &mut self,
        recorded: &BTreeMap<String, EtcdBootstrap>,
        running: &[String],
    ) -> BTreeMap<String, EtcdBootstrap> {
        let founding = self.etcd_initial_cluster();
        let running: Vec<&HostModel> =
            self.etcd_members().filter(|h| running.contains(&h.name)).collect::<Vec<_>>();
        let mut out = BTreeMap::new();
        let mut joined: Vec<(String, IpAddr)> =
            running.iter().map(|h| (h.name.clone(), h.internal_ip)).collect();
        let names: Vec<String> = self.etcd_members().map(|h| h.name.clone()).collect();
        for name in names {
            let h = self.host(&name).expect("member").clone();
            let b = if let Some(r) = recorded.get(&name) {
                r.clone()
            } else if joined.is_empty() || joined.iter().any(|(n, _)| *n == name) {
                EtcdBootstrap { initial_cluster: founding.clone(), state: "new".into() }
            } else {
                // Members join one at a time, each seeing the ones before it.
                joined.push((name.clone(), h.internal_ip));
                EtcdBootstrap {
                    initial_cluster: joined
                        .iter()
                        .map(|(n, ip)| format!("{n}={}", url(*ip, 2380)))
                        .collect::<Vec<_>>()
                        .join(","),
                    state: "existing".into(),
                }
            };
            out.insert(name.clone(), b.clone());
            if let Some(hm) = self.hosts.iter_mut().find(|x| x.name == name) {
                hm.etcd_bootstrap = Some(b);
            }
        }
        out
    }

    /// Replaces the nodes' pod subnets with an allocation (from the cluster state).
    pub fn set_pod_subnets(&mut self, subnets: &BTreeMap<String, IpNet>) {
        for h in self.hosts.iter_mut().filter(|h| h.is_node) {
            h.pod_subnet = subnets.get(&h.name).copied();
        }
    }

    /// Hosts with the control-plane role.
    pub fn control_planes(&self) -> impl Iterator<Item = &HostModel> {
        self.hosts.iter().filter(|h| h.roles.control_plane)
    }

    /// Hosts with the etcd role.
    pub fn etcd_members(&self) -> impl Iterator<Item = &HostModel> {
        self.hosts.iter().filter(|h| h.roles.etcd)
    }

    /// Hosts that are Kubernetes Nodes.
    pub fn nodes(&self) -> impl Iterator<Item = &HostModel> {
        self.hosts.iter().filter(|h| h.is_node)
    }

    /// A host by name.
    pub fn host(&self, name: &str) -> Option<&HostModel> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// etcd client URLs, comma-separated, for `--etcd-servers` and `etcdctl --endpoints`.
    pub fn etcd_client_urls(&self) -> String {
        self.etcd_members().map(|h| url(h.internal_ip, 2379)).collect::<Vec<_>>().join(",")
    }

    /// etcd `--initial-cluster` value.
    pub fn etcd_initial_cluster(&self) -> String {
        self.etcd_members()
            .map(|h| format!("{}={}", h.name, url(h.internal_ip, 2380)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The service-account issuer.
    pub fn service_account_issuer(&self) -> String {
        format!("https://kubernetes.default.svc.{}", self.cluster_domain)
    }
}

/// `https://ip:port` with IPv6 brackets.
pub fn url(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("https://{v4}:{port}"),
        IpAddr::V6(v6) => format!("https://[{v6}]:{port}"),
    }
}

/// Merges the top-level SSH defaults with a host's overrides (a set override wins field by field).
pub fn merge_ssh(defaults: &SshSpec, host: Option<&SshSpec>) -> SshSpec {
    let Some(h) = host else { return defaults.clone() };
    SshSpec {
        user: h.user.clone().or_else(|| defaults.user.clone()),
        port: h.port.or(defaults.port),
        identity_file: h.identity_file.clone().or_else(|| defaults.identity_file.clone()),
        agent: h.agent.or(defaults.agent),
        bastion: h.bastion.clone().or_else(|| defaults.bastion.clone()),
        sudo: h.sudo.or(defaults.sudo),
        sudo_password_env: h.sudo_password_env.clone().or_else(|| defaults.sudo_password_env.clone()),
        known_hosts: h.known_hosts.clone().or_else(|| defaults.known_hosts.clone()),
        host_key: h.host_key.clone(),
        config_file: h.config_file.clone().or_else(|| defaults.config_file.clone()),
        connect_timeout: h.connect_timeout.clone().or_else(|| defaults.connect_timeout.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(text: &str) -> ClusterModel {
        let loaded = inventory::parse(std::path::Path::new("t.yaml"), text).unwrap();
        let problems = inventory::validate::validate(&loaded.inventory, &loaded.dir);
        // Warnings allowed: v1.33/v1.34 inventories warn that they are upgrade sources only.
        assert!(problems.iter().all(|p| p.warning), "{problems:?}");
        ClusterModel::derive(&loaded)
    }

    const HA: &str = "cluster: {name: c, kubernetesVersion: v1.34.10, serviceCIDR: 10.32.0.0/16}\nhosts:\n\
        - {name: cp1, address: 10.0.0.1, roles: [control-plane, etcd]}\n\
        - {name: cp2, address: 10.0.0.2, roles: [control-plane, etcd]}\n\
        - {name: cp3, address: 10.0.0.3, roles: [control-plane, etcd]}\n\
        - {name: w1, address: 192.168.1.5, internalAddress: 10.0.0.4, roles: [worker], labels: {a: b}}\n";

    #[test]
    fn service_addresses_come_from_the_service_cidr() {
        let m = model(HA);
        assert_eq!(m.first_service_ip.to_string(), "10.32.0.1");
        assert_eq!(m.dns_service_ip.to_string(), "10.32.0.10");
        assert_eq!(m.service_account_issuer(), "https://kubernetes.default.svc.cluster.local");
    }

    #[test]
    fn ha_defaults_to_a_node_local_balancer() {
        let m = model(HA);
        assert_eq!(m.endpoint.mode, EndpointMode::LocalLb);
        assert_eq!(m.endpoint.node_url(), "https://127.0.0.1:7443");
        assert_eq!(m.endpoint.external_url(), "https://10.0.0.1:6443");
        assert!(m.certs.extra_apiserver_sans.contains(&"127.0.0.1".to_string()));
        let w = m.host("w1").unwrap();
        assert_eq!(w.internal_ip.to_string(), "10.0.0.4");
        assert_eq!(w.ssh_address, "192.168.1.5");
        assert_eq!(
            w.components,
            vec![
                Component::ContainerRuntime,
                Component::ApiLoadBalancer,
                Component::Kubelet,
                Component::KubeProxy
            ]
        );
    }

    #[test]
    fn control_planes_are_tainted_unless_schedulable() {
        let m = model(HA);
        let cp = m.host("cp1").unwrap();
        assert!(!cp.schedulable);
        assert_eq!(cp.taints[0].key, "node-role.kubernetes.io/control-plane");
        assert_eq!(cp.labels.get("node-role.kubernetes.io/control-plane"), Some(&String::new()));
        assert_eq!(
            m.etcd_initial_cluster(),
            "cp1=https://10.0.0.1:2380,cp2=https://10.0.0.2:2380,cp3=https://10.0.0.3:2380"
        );
        assert_eq!(m.etcd_client_urls(), "https://10.0.0.1:2379,https://10.0.0.2:2379,https://10.0.0.3:2379");
        let single = model("cluster: {name: s, kubernetesVersion: v1.35.7}\nhosts:\n- {name: n, address: 10.1.0.1, roles: [control-plane, etcd, worker]}\n");
        let n = single.host("n").unwrap();
        assert!(n.schedulable && n.taints.is_empty());
        assert_eq!(single.endpoint.mode, EndpointMode::Direct);
        assert_eq!(single.endpoint.node_url(), "https://10.1.0.1:6443");
    }

    #[test]
    fn component_versions_default_by_minor_and_can_be_overridden() {
        let m = model(HA);
        assert_eq!(m.versions.etcd.to_string(), "v3.6.5");
        assert_eq!(m.versions.crictl.to_string(), "v1.34.0");
        let o = model("cluster: {name: s, kubernetesVersion: v1.33.2, components: {etcd: v3.5.21}}\nhosts:\n- {name: n, address: 10.1.0.1, roles: [control-plane, etcd, worker]}\n");
        assert_eq!(o.versions.etcd.to_string(), "v3.5.21");
    }

    #[test]
    fn etcd_members_found_a_cluster_join_one_by_one_and_keep_their_bootstrap() {
        let mut m = model(HA);
        // A new cluster: every member founds it.
        let founding = m.set_etcd_bootstrap(&BTreeMap::new(), &[]);
        assert!(founding.values().all(|b| b.state == "new" && b.initial_cluster == m.etcd_initial_cluster()));
        // cp1 runs alone; cp2 and cp3 join, each seeing the members before it.
        let recorded: BTreeMap<String, EtcdBootstrap> =
            founding.iter().filter(|(k, _)| *k == "cp1").map(|(k, v)| (k.clone(), v.clone())).collect();
        let b = m.set_etcd_bootstrap(&recorded, &["cp1".to_string()]);
        assert_eq!(b["cp1"], founding["cp1"], "a running member keeps its flags (no restart)");
        assert_eq!(b["cp2"].state, "existing");
        assert_eq!(b["cp2"].initial_cluster, "cp1=https://10.0.0.1:2380,cp2=https://10.0.0.2:2380");
        assert_eq!(
            b["cp3"].initial_cluster,
            "cp1=https://10.0.0.1:2380,cp2=https://10.0.0.2:2380,cp3=https://10.0.0.3:2380"
        );
        assert_eq!(m.host("cp3").unwrap().etcd_bootstrap.as_ref(), Some(&b["cp3"]));
        let flags = crate::render::etcd_flags(&m, m.host("cp2").unwrap(), "new");
        assert_eq!(flags["initial-cluster-state"], "existing");
    }
}
