//! Kubeconfig reading (current context, embedded or file CA/cert/key) and the mTLS API client the node
//! and control-plane doubles use to authenticate to the apiserver.

use base64::Engine;
use serde_yaml::Value;

use crate::pki::{self, Cert, Usage};

/// A problem with a kubeconfig, worded like client-go's.
#[derive(Debug)]
pub struct KubeconfigError(pub String);

impl std::fmt::Display for KubeconfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An authenticated client for the apiserver named in a kubeconfig.
#[derive(Clone)]
pub struct ApiClient {
    /// Server URL (`https://host:port`).
    pub server: String,
    /// Client certificate identity.
    pub cert: Cert,
    http: reqwest::Client,
}

fn named<'a>(doc: &'a Value, list: &str, name: &str, inner: &str) -> Option<&'a Value> {
    doc.get(list)?
        .as_sequence()?
        .iter()
        .find(|e| e.get("name").and_then(Value::as_str) == Some(name))?
        .get(inner)
}

fn data_or_file(
    section: &Value,
    data_key: &str,
    file_key: &str,
    base: &std::path::Path,
) -> Result<Option<Vec<u8>>, KubeconfigError> {
    if let Some(d) = section.get(data_key).and_then(Value::as_str) {
        return base64::engine::general_purpose::STANDARD
            .decode(d.trim())
            .map(Some)
            .map_err(|e| KubeconfigError(format!("illegal base64 data in {data_key}: {e}")));
    }
    if let Some(f) = section.get(file_key).and_then(Value::as_str) {
        let path = base.join(f);
        return std::fs::read(&path)
            .map(Some)
            .map_err(|e| KubeconfigError(format!("unable to read {file_key} {}: {e}", path.display())));
    }
    Ok(None)
}

impl ApiClient {
    /// Loads `path`, checks the client cert/key pair and usage and the CA, and builds the client.
    pub fn from_kubeconfig(path: &str) -> Result<Self, KubeconfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            KubeconfigError(format!("invalid configuration: stat {path}: {}", pki::go_io_error(&e)))
        })?;
        let doc: Value = serde_yaml::from_str(&text)
            .map_err(|e| KubeconfigError(format!("error loading config file {path:?}: {e}")))?;
        if doc.get("kind").and_then(Value::as_str) != Some("Config") {
            return Err(KubeconfigError(format!("error loading config file {path:?}: kind is not Config")));
        }
        let ctx_name = doc.get("current-context").and_then(Value::as_str).unwrap_or("");
        let ctx = named(&doc, "contexts", ctx_name, "context").ok_or_else(|| {
            KubeconfigError(format!(
                "invalid configuration: context was not found for specified context: {ctx_name:?} ({path})"
            ))
        })?;
        let cluster_name = ctx.get("cluster").and_then(Value::as_str).unwrap_or("");
        let user_name = ctx.get("user").and_then(Value::as_str).unwrap_or("");
        let cluster = named(&doc, "clusters", cluster_name, "cluster").ok_or_else(|| {
            KubeconfigError(format!("invalid configuration: cluster {cluster_name:?} not found ({path})"))
        })?;
        let user = named(&doc, "users", user_name, "user").ok_or_else(|| {
            KubeconfigError(format!("invalid configuration: user {user_name:?} not found ({path})"))
        })?;
        let server = cluster
            .get("server")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                KubeconfigError(format!(
                    "invalid configuration: no server found for cluster {cluster_name:?}"
                ))
            })?
            .trim_end_matches('/')
            .to_string();
        let base = std::path::Path::new(path).parent().unwrap_or(std::path::Path::new("."));
        let ca = data_or_file(cluster, "certificate-authority-data", "certificate-authority", base)?
            .ok_or_else(|| {
                KubeconfigError(format!("{path}: cluster {cluster_name:?} has no certificate-authority"))
            })?;
        let cert_pem = data_or_file(user, "client-certificate-data", "client-certificate", base)?
            .ok_or_else(|| {
                KubeconfigError(format!("{path}: user {user_name:?} has no client certificate"))
            })?;
        let key_pem = data_or_file(user, "client-key-data", "client-key", base)?
            .ok_or_else(|| KubeconfigError(format!("{path}: user {user_name:?} has no client key")))?;
        let cas = pki::certs_from_pem(&ca, &format!("{path} certificate-authority"))
            .map_err(|e| KubeconfigError(e.to_string()))?;
        let certs = pki::certs_from_pem(&cert_pem, &format!("{path} client-certificate"))
            .map_err(|e| KubeconfigError(e.to_string()))?;
        let key = pki::key_from_pem(&String::from_utf8_lossy(&key_pem), &format!("{path} client-key"))
            .map_err(|e| KubeconfigError(e.to_string()))?;
        pki::check_pair(&certs[0], &key).map_err(|e| KubeconfigError(e.to_string()))?;
        pki::check_usage(&certs[0], Usage::Client).map_err(|e| KubeconfigError(e.to_string()))?;
        let http = build_client(&ca, &cert_pem, key.pem.as_bytes())
            .map_err(|e| KubeconfigError(format!("{path}: {e}")))?;
        let _ = cas;
        Ok(Self { server, cert: certs[0].clone(), http })
    }

    /// Sends a request; returns status and parsed JSON body (Null when not JSON).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, serde_json::Value)>,
    ) -> Result<(u16, serde_json::Value), String> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|e| e.to_string())?;
        let mut req = self.http.request(method, format!("{}{}", self.server, path));
        if let Some((ct, v)) = body {
            req = req.header("content-type", ct).body(serde_json::to_vec(&v).unwrap_or_default());
        }
        let resp = req.send().await.map_err(|e| format!("{e:?}"))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
        Ok((status, serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)))
    }
}

impl ApiClient {
    /// Opens a long-running request (a watch) and returns the response to read in chunks; the client's
    /// 10 s request timeout does not apply.
    pub async fn stream(&self, path: &str) -> Result<reqwest::Response, String> {
        self.http
            .get(format!("{}{}", self.server, path))
            .timeout(std::time::Duration::from_secs(3600))
            .send()
            .await
            .map_err(|e| crate::etcd::error_chain(&e))
    }
}

/// A reqwest client trusting only `ca_pem`, presenting `cert_pem` + `key_pem`.
pub fn build_client(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .timeout(std::time::Duration::from_secs(10))
        .connect_timeout(std::time::Duration::from_secs(3));
    for cert in reqwest::Certificate::from_pem_bundle(ca_pem).map_err(|e| e.to_string())? {
        builder = builder.add_root_certificate(cert);
    }
    let mut ident = cert_pem.to_vec();
    ident.extend_from_slice(b"\n");
    ident.extend_from_slice(key_pem);
    builder = builder.identity(reqwest::Identity::from_pem(&ident).map_err(|e| e.to_string())?);
    builder.build().map_err(|e| e.to_string())
}
