//! The certificate table: every certificate of a cluster as data (name, signing CA, subject, usage, SANs),
//! in the style of kubeadm's cert list. Issuing, reuse and renewal all work from this one table.

use super::PkiInputs;
use std::net::IpAddr;

/// The three certificate authorities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CaId {
    /// `ca`: the cluster CA (apiserver, every client of the apiserver, kubelets).
    Cluster,
    /// `etcd/ca`: etcd server, peer and client certificates.
    Etcd,
    /// `front-proxy-ca`: the aggregation layer's client certificate.
    FrontProxy,
}

impl CaId {
    /// All of them.
    pub const ALL: [CaId; 3] = [CaId::Cluster, CaId::Etcd, CaId::FrontProxy];

    /// Store name (file stem).
    pub fn name(self) -> &'static str {
        match self {
            CaId::Cluster => "ca",
            CaId::Etcd => "etcd/ca",
            CaId::FrontProxy => "front-proxy-ca",
        }
    }

    /// Subject common name (kubeadm's).
    pub fn common_name(self) -> &'static str {
        match self {
            CaId::Cluster => "kubernetes",
            CaId::Etcd => "etcd-ca",
            CaId::FrontProxy => "front-proxy-ca",
        }
    }
}

/// Extended key usage of a leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// serverAuth.
    Server,
    /// clientAuth.
    Client,
    /// serverAuth + clientAuth (etcd members).
    ServerAndClient,
}

/// One leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertSpec {
    /// Store name (file stem, may contain `/`): `apiserver`, `etcd/cp1/server`, `nodes/w1/kubelet-client`.
    pub name: String,
    /// Signing CA.
    pub ca: CaId,
    /// Subject CN.
    pub common_name: String,
    /// Subject O (groups).
    pub organizations: Vec<String>,
    /// Usage.
    pub usage: Usage,
    /// DNS SANs.
    pub dns: Vec<String>,
    /// IP SANs.
    pub ips: Vec<IpAddr>,
}

fn leaf(name: impl Into<String>, ca: CaId, cn: impl Into<String>, orgs: &[&str], usage: Usage) -> CertSpec {
    CertSpec {
        name: name.into(),
        ca,
        common_name: cn.into(),
        organizations: orgs.iter().map(|o| o.to_string()).collect(),
        usage,
        dns: Vec::new(),
        ips: Vec::new(),
    }
}

fn push_unique<T: PartialEq>(v: &mut Vec<T>, x: T) {
    if !v.contains(&x) {
        v.push(x);
    }
}

/// The apiserver's SANs: node names, the `kubernetes` Service names, the first Service IP, every control
/// plane address, the endpoint and the extra SANs.
fn apiserver(i: &PkiInputs) -> CertSpec {
    let mut c = leaf("apiserver", CaId::Cluster, "kube-apiserver", &[], Usage::Server);
    for d in ["kubernetes", "kubernetes.default", "kubernetes.default.svc"] {
        push_unique(&mut c.dns, d.to_string());
    }
    push_unique(&mut c.dns, format!("kubernetes.default.svc.{}", i.cluster_domain));
    push_unique(&mut c.ips, i.first_service_ip);
    for n in &i.control_planes {
        push_unique(&mut c.dns, n.name.clone());
        for h in &n.hostnames {
            push_unique(&mut c.dns, h.clone());
        }
        for a in &n.addresses {
            push_unique(&mut c.ips, *a);
        }
    }
    for s in std::iter::once(&i.api_endpoint_host).chain(&i.extra_apiserver_sans) {
        match s.parse::<IpAddr>() {
            Ok(ip) => push_unique(&mut c.ips, ip),
            Err(_) => push_unique(&mut c.dns, s.clone()),
        }
    }
    c
}

fn etcd_member(i: &super::NodeIdentity, kind: &str) -> CertSpec {
    let mut c =
        leaf(format!("etcd/{}/{kind}", i.name), CaId::Etcd, i.name.clone(), &[], Usage::ServerAndClient);
    c.dns = vec![i.name.clone(), "localhost".into()];
    c.dns.extend(i.hostnames.iter().cloned());
    c.ips = i.addresses.clone();
    push_unique(&mut c.ips, "127.0.0.1".parse().expect("ip"));
    push_unique(&mut c.ips, "::1".parse().expect("ip"));
    c
}

/// Every leaf certificate of the cluster, in a stable order.
pub fn leaf_specs(i: &PkiInputs) -> Vec<CertSpec> {
    let mut v = vec![
        apiserver(i),
        leaf(
            "apiserver-kubelet-client",
            CaId::Cluster,
            "kube-apiserver-kubelet-client",
            &["kubeadm:cluster-admins"],
            Usage::Client,
        ),
        leaf("front-proxy-client", CaId::FrontProxy, "front-proxy-client", &[], Usage::Client),
        leaf("apiserver-etcd-client", CaId::Etcd, "kube-apiserver-etcd-client", &[], Usage::Client),
        leaf("etcd/healthcheck-client", CaId::Etcd, "kube-etcd-healthcheck-client", &[], Usage::Client),
        leaf("admin", CaId::Cluster, "kubernetes-admin", &["kubeadm:cluster-admins"], Usage::Client),
        leaf("super-admin", CaId::Cluster, "kubernetes-super-admin", &["system:masters"], Usage::Client),
        leaf("controller-manager", CaId::Cluster, "system:kube-controller-manager", &[], Usage::Client),
        leaf("scheduler", CaId::Cluster, "system:kube-scheduler", &[], Usage::Client),
        leaf("kube-proxy", CaId::Cluster, "system:kube-proxy", &[], Usage::Client),
    ];
    for m in &i.etcd_members {
        v.push(etcd_member(m, "server"));
        v.push(etcd_member(m, "peer"));
    }
    for n in &i.nodes {
        let cn = format!("system:node:{}", n.name);
        v.push(leaf(
            format!("nodes/{}/kubelet-client", n.name),
            CaId::Cluster,
            cn.clone(),
            &["system:nodes"],
            Usage::Client,
        ));
        let mut s = leaf(
            format!("nodes/{}/kubelet-serving", n.name),
            CaId::Cluster,
            cn,
            &["system:nodes"],
            Usage::Server,
        );
        s.dns = std::iter::once(n.name.clone()).chain(n.hostnames.iter().cloned()).collect();
        s.ips = n.addresses.clone();
        v.push(s);
    }
    v
}
