//! Kubeconfig files, built with serde (never YAML from string templates), CA and credentials embedded so a
//! file is self-contained.

use base64::Engine;
use serde::{Deserialize, Serialize};

/// A kubeconfig (`apiVersion: v1`, `kind: Config`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct Kubeconfig {
    /// Always `v1`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// Always `Config`.
    pub kind: String,
    /// Clusters.
    pub clusters: Vec<Named<Cluster>>,
    /// Users.
    pub users: Vec<Named<User>>,
    /// Contexts.
    pub contexts: Vec<Named<Context>>,
    /// The context kubectl uses.
    pub current_context: String,
    /// Unused; present because kubectl writes it.
    pub preferences: serde_yaml::Mapping,
}

/// A named entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Named<T> {
    /// Name.
    pub name: String,
    /// The entry, under the key kubectl expects (`cluster`, `user`, `context`).
    #[serde(flatten)]
    pub item: T,
}

/// `cluster:` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Cluster {
    /// The cluster.
    pub cluster: ClusterData,
}

/// Server and CA.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct ClusterData {
    /// `https://host:port`.
    pub server: String,
    /// base64 PEM of the cluster CA.
    pub certificate_authority_data: String,
}

/// `user:` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct User {
    /// The credentials.
    pub user: UserData,
}

/// Client certificate credentials.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct UserData {
    /// base64 PEM certificate.
    pub client_certificate_data: String,
    /// base64 PEM key.
    pub client_key_data: String,
}

/// `context:` entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Context {
    /// Cluster and user.
    pub context: ContextData,
}

/// Which cluster with which user.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContextData {
    /// Cluster name.
    pub cluster: String,
    /// User name.
    pub user: String,
}

impl Kubeconfig {
    /// A kubeconfig for `user` on `cluster` at `server`, authenticating with a client certificate.
    pub fn with_client_cert(
        cluster: &str,
        server: &str,
        ca_pem: &[u8],
        user: &str,
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Self {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let context = format!("{user}@{cluster}");
        Kubeconfig {
            api_version: "v1".into(),
            kind: "Config".into(),
            clusters: vec![Named {
                name: cluster.into(),
                item: Cluster {
                    cluster: ClusterData { server: server.into(), certificate_authority_data: b64(ca_pem) },
                },
            }],
            users: vec![Named {
                name: user.into(),
                item: User {
                    user: UserData { client_certificate_data: b64(cert_pem), client_key_data: b64(key_pem) },
                },
            }],
            contexts: vec![Named {
                name: context.clone(),
                item: Context { context: ContextData { cluster: cluster.into(), user: user.into() } },
            }],
            current_context: context,
            preferences: serde_yaml::Mapping::new(),
        }
    }

    /// YAML text.
    pub fn to_yaml(&self) -> String {
        serde_yaml::to_string(self).expect("kubeconfig serializes")
    }
}
