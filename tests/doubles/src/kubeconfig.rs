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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use base64::Engine;
    use rcgen::ExtendedKeyUsagePurpose as Eku;

    use super::ApiClient;
    use crate::http::{self, Response};
    use crate::pki::{
        self,
        test_ca::{write, TestCa},
    };

    /// An HTTPS server on 127.0.0.1 with a serving cert of `ca`, verifying client certs against
    /// `client_ca_pem` like the apiserver and the kubelet: 200 with the user, 401 for a cert that chains to
    /// none of its CAs, 403 for none. Its URL.
    async fn server(ca: &TestCa, client_ca_pem: &str) -> String {
        let (c, k) = ca.leaf("kube-apiserver", &[Eku::ServerAuth], &["127.0.0.1"]);
        let chain = pki::certs_from_pem(c.as_bytes(), "serving").unwrap();
        let key = pki::key_from_pem(&k, "serving").unwrap();
        let cas = pki::certs_from_pem(client_ca_pem.as_bytes(), "client CA").unwrap();
        let tls = http::server_tls(&chain, &key, Some(&cas)).unwrap();
        let listener = http::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handler: http::Handler = Arc::new(|req| {
            Box::pin(async move {
                match (req.identity, req.auth_error) {
                    (_, Some(e)) => Response::text(401, &e),
                    (Some(id), None) => Response::json(200, &serde_json::json!({"user": id.user})),
                    (None, None) => Response::text(403, "anonymous"),
                }
            })
        });
        tokio::spawn(http::serve(listener, Some((tls, cas)), handler));
        format!("https://{addr}")
    }

    /// A kubeconfig for `server` trusting `ca_pem` (embedded, or as a file when `as_file`), with a client
    /// cert of `client`.
    fn kubeconfig(
        dir: &std::path::Path,
        name: &str,
        server: &str,
        ca_pem: &str,
        as_file: bool,
        client: &TestCa,
    ) -> String {
        let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let (c, k) = client.leaf(&format!("user-{name}"), &[Eku::ClientAuth], &[]);
        let ca = if as_file {
            format!("certificate-authority: {}", write(dir, &format!("{name}-ca.crt"), ca_pem))
        } else {
            format!("certificate-authority-data: {}", b(ca_pem))
        };
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    {ca}\nusers:\n- name: u\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n",
            b(&c),
            b(&k)
        );
        write(dir, &format!("{name}.conf"), &text)
    }

    /// During a CA rotation every kubeconfig's CA data and every client CA file hold the old and the new
    /// cluster CA (same subject, different keys): a server cert and a client cert of either must be
    /// accepted, and those of a third CA refused.
    #[tokio::test]
    async fn kubeconfig_ca_data_and_client_ca_files_with_two_cas_trust_either_and_not_a_third() {
        http::init_crypto();
        let dir = tempfile::tempdir().unwrap();
        let (old, new, other) =
            (TestCa::new("kubernetes"), TestCa::new("kubernetes"), TestCa::new("kubernetes"));
        let bundle = format!("{}{}", new.cert_pem, old.cert_pem);
        let cas = [("old", &old), ("new", &new), ("other", &other)];
        let mut servers = Vec::new();
        for (name, ca) in cas {
            servers.push((name, server(ca, &bundle).await));
        }
        for (i, (server_ca, url)) in servers.iter().enumerate() {
            for (client_ca, client) in cas {
                let name = format!("{server_ca}-{client_ca}");
                let conf = kubeconfig(dir.path(), &name, url, &bundle, i == 0, client);
                let api = ApiClient::from_kubeconfig(&conf).unwrap();
                let got = api.call("GET", "/whoami", None).await;
                match (*server_ca, client_ca) {
                    ("other", _) => {
                        let err = got.expect_err("a server cert of a third CA must be refused");
                        assert!(untrusted(&err), "{name}: {err}");
                    }
                    (_, "other") => {
                        let (code, _) = got.unwrap();
                        assert_eq!(code, 401, "{name}: a client cert of a third CA gets 401");
                    }
                    _ => {
                        let (code, body) = got.unwrap();
                        assert_eq!(
                            (code, body["user"].as_str()),
                            (200, Some(format!("user-{name}").as_str())),
                            "{name}"
                        );
                    }
                }
            }
        }
        // The bundle is what makes both work: CA data with the new CA alone refuses the old CA's server.
        let conf = kubeconfig(dir.path(), "new-only", &servers[0].1, &new.cert_pem, false, &new);
        let err = ApiClient::from_kubeconfig(&conf).unwrap().call("GET", "/whoami", None).await.unwrap_err();
        assert!(untrusted(&err), "{err}");
    }

    /// rustls' verdict on a server cert no trusted CA signed: a CA with the issuer's subject whose key did
    /// not sign it (`BadSignature`: the same CN, as here) or none with that subject (`UnknownIssuer`).
    fn untrusted(err: &str) -> bool {
        err.contains("InvalidCertificate(BadSignature)") || err.contains("InvalidCertificate(UnknownIssuer)")
    }
}
