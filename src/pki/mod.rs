//! The PKI: kubeforge is the cluster's certificate authority. This module owns the certificate table
//! ([`spec`], kubeadm's cert list plus the per-node certificates of a "hard way" layout), issuing
//! ([`issue`], the only rcgen user), the store under `pki/<cluster>/` ([`store`]: 0700 directories, 0600
//! keys, atomic writes, reuse of every still-valid certificate), kubeconfigs ([`kubeconfig`]), the client
//! bundle and the ledger of certificates issued to people ([`users`]), and the `certs` commands
//! ([`command`]).
//!
//! It depends on nothing but its inputs ([`PkiInputs`]), which the cluster model derives, so that the
//! same code serves `certs generate`, `apply`, `join` and `certs renew`.

pub mod issue;
pub mod kubeconfig;
pub mod rotation;
pub mod spec;
pub mod store;
pub mod users;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Errors from certificate and kubeconfig handling.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file in the store could not be read or written.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Key generation or signing failed.
    #[error("cannot issue {name}: {message}")]
    Issue {
        /// The certificate.
        name: String,
        /// What rcgen said.
        message: String,
    },
    /// A file in the store is not what it should be.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A CA certificate exists without its key.
    #[error("{path} exists but its private key does not")]
    CaKeyMissing {
        /// The CA certificate.
        path: PathBuf,
    },
    /// A CA or the service-account key is missing from the store of a cluster that is (or may be) live.
    #[error("{path} is missing, and the cluster is not new: refusing to create a new key in its place")]
    KeyOfLiveCluster {
        /// The missing file.
        path: PathBuf,
    },
    /// A name that is not in the certificate table.
    #[error("no certificate named `{0}`")]
    UnknownCert(String),
}

impl PkiError {
    /// How to fix it, if known.
    pub fn hint(&self) -> Option<String> {
        match self {
            PkiError::CaKeyMissing { .. } => Some(
                "kubeforge signs node and component certificates itself and needs the CA key; restore it from a backup".into(),
            ),
            PkiError::KeyOfLiveCluster { .. } => Some(
                "a new CA or service-account key would lock every host, component and user out; bring the store back from a backup (`kubeforge restore --from ARCHIVE`) or point --pki-dir at the cluster's store".into(),
            ),
            PkiError::UnknownCert(_) => Some("`kubeforge certs check-expiration` lists every name".into()),
            PkiError::Invalid { .. } => Some("move the file away and run `kubeforge certs generate` to issue it again".into()),
            _ => None,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        PkiError::Io { context: context.into(), source }
    }
}

/// Key algorithms kubeforge can issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    /// ECDSA on P-256 with SHA-256 (default: fast, accepted by every component).
    EcdsaP256,
    /// ECDSA on P-384 with SHA-384.
    EcdsaP384,
    /// RSA 2048 with SHA-256 (kubeadm's default).
    Rsa2048,
    /// RSA 3072.
    Rsa3072,
    /// RSA 4096.
    Rsa4096,
}

impl std::str::FromStr for KeyAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "ecdsa-p256" => KeyAlgorithm::EcdsaP256,
            "ecdsa-p384" => KeyAlgorithm::EcdsaP384,
            "rsa-2048" => KeyAlgorithm::Rsa2048,
            "rsa-3072" => KeyAlgorithm::Rsa3072,
            "rsa-4096" => KeyAlgorithm::Rsa4096,
            _ => return Err(format!("unknown key algorithm `{s}`")),
        })
    }
}

impl std::fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::EcdsaP384 => "ecdsa-p384",
            KeyAlgorithm::Rsa2048 => "rsa-2048",
            KeyAlgorithm::Rsa3072 => "rsa-3072",
            KeyAlgorithm::Rsa4096 => "rsa-4096",
        })
    }
}

/// One machine's identity in certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// Node name (also the etcd member name).
    pub name: String,
    /// Addresses, the internal address first.
    pub addresses: Vec<IpAddr>,
    /// Extra DNS names (the SSH address when it is a name).
    pub hostnames: Vec<String>,
}

/// Everything the PKI needs to know about a cluster.
#[derive(Debug, Clone)]
pub struct PkiInputs {
    /// Cluster name (kubeconfig cluster and context names).
    pub cluster_name: String,
    /// Cluster DNS domain.
    pub cluster_domain: String,
    /// First Service IP (the `kubernetes` Service), a SAN of the apiserver certificate.
    pub first_service_ip: IpAddr,
    /// The API endpoint host people use (IP or DNS name), a SAN of the apiserver certificate.
    pub api_endpoint_host: String,
    /// URL for people and control-plane components (`https://host:port`).
    pub api_server_url: String,
    /// URL for kubelets and kube-proxy (the node-local balancer in `local-lb` mode).
    pub node_api_url: String,
    /// Control-plane hosts.
    pub control_planes: Vec<NodeIdentity>,
    /// etcd members.
    pub etcd_members: Vec<NodeIdentity>,
    /// Kubernetes nodes (each gets kubelet client and serving certificates).
    pub nodes: Vec<NodeIdentity>,
    /// Extra apiserver SANs.
    pub extra_apiserver_sans: Vec<String>,
    /// Key algorithm.
    pub key_algorithm: KeyAlgorithm,
    /// Leaf validity.
    pub validity: Duration,
    /// CA validity.
    pub ca_validity: Duration,
}

impl crate::model::ClusterModel {
    /// The PKI inputs of this cluster.
    pub fn pki_inputs(&self) -> PkiInputs {
        let ident = |h: &crate::model::HostModel| NodeIdentity {
            name: h.name.clone(),
            addresses: {
                let mut a = vec![h.internal_ip];
                if let Ok(ip) = h.ssh_address.parse::<IpAddr>() {
                    if ip != h.internal_ip {
                        a.push(ip);
                    }
                }
                a
            },
            // A host name (validation admits nothing else), without the trailing dot of an absolute name,
            // which a certificate's dNSName does not carry.
            hostnames: if h.ssh_address.parse::<IpAddr>().is_err() {
                vec![h.ssh_address.strip_suffix('.').unwrap_or(&h.ssh_address).to_owned()]
            } else {
                vec![]
            },
        };
        PkiInputs {
            cluster_name: self.name.clone(),
            cluster_domain: self.cluster_domain.clone(),
            first_service_ip: self.first_service_ip,
            api_endpoint_host: self.endpoint.host.clone(),
            api_server_url: self.endpoint.external_url(),
            node_api_url: self.endpoint.node_url(),
            control_planes: self.control_planes().map(ident).collect(),
            etcd_members: self.etcd_members().map(ident).collect(),
            nodes: self.nodes().map(ident).collect(),
            extra_apiserver_sans: self.certs.extra_apiserver_sans.clone(),
            key_algorithm: self.certs.key_algorithm.parse().unwrap_or(KeyAlgorithm::EcdsaP256),
            validity: self.certs.validity,
            ca_validity: self.certs.ca_validity,
        }
    }
}

/// The PKI directory of a command: `--pki-dir` when given, else `pki/` beside the inventory file, so the
/// store is found from whatever directory kubeforge runs in; for an inventory read from a stream (`-i -`,
/// `-i <(...)`, a `/dev/fd/N` path, a FIFO), `pki/` in the current directory. When that directory does not
/// exist but the current directory holds a `pki/` with a store in it (where kubeforge before 0.2 kept it by default), the
/// command stops and says so: it never starts a second store beside the first.
pub fn resolve_root(
    inventory: &std::path::Path,
    given: Option<&std::path::Path>,
) -> crate::Result<std::path::PathBuf> {
    if let Some(g) = given {
        return Ok(g.to_path_buf());
    }
    // An inventory read from a stream (`-i -`, `-i <(...)`, a FIFO) has no directory of its own: its
    // store is `pki/` in the current directory, where its relative paths resolve too.
    let dir = crate::inventory::base_dir(inventory);
    let dir = dir.as_path();
    let root = dir.join("pki");
    let old = std::path::Path::new("pki");
    let same = |a: &std::path::Path, b: &std::path::Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    };
    let holds_store = |d: &std::path::Path| {
        std::fs::read_dir(d)
            .map(|es| es.flatten().any(|e| e.path().join("ca.crt").is_file()))
            .unwrap_or(false)
    };
    if !root.exists() && old.is_dir() && !same(old, dir) && holds_store(old) {
        return Err(crate::Error::msg(
            format!(
                "the PKI store is kept beside the inventory by default ({}), which does not exist, but this \
                 directory has a store in ./pki (the default of earlier kubeforge versions)",
                root.display()
            ),
            Some(&format!("move it there (`mv pki {}`), or name it with `--pki-dir pki`", root.display())),
        ));
    }
    Ok(root)
}
