//! kube-controller-manager, kube-scheduler and kube-proxy doubles: check flags/config/certificates,
//! authenticate to the apiserver with their kubeconfig, and serve their health ports. The
//! controller-manager runs the workload controllers ([`crate::controllers`]), the scheduler binds pods
//! ([`crate::scheduler`]).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use serde_json::json;

use crate::{
    config::{self, string_at},
    flags::Flags,
    http::{self, Response},
    kubeconfig::ApiClient,
    log,
    pki::{self, Cert, Key, Usage},
    version::KubeVersion,
    Component,
};

/// A self-signed serving cert, as the real components make in `--cert-dir` when given none.
pub fn self_signed(cn: &str, names: &[String]) -> Result<(Vec<Cert>, Key), String> {
    let mut all = names.to_vec();
    all.push("localhost".into());
    let ck = rcgen::generate_simple_self_signed(all).map_err(|e| e.to_string())?;
    let _ = cn;
    let certs = pki::certs_from_pem(ck.cert.pem().as_bytes(), "self-signed").map_err(|e| e.0)?;
    let key = pki::key_from_pem(&ck.signing_key.serialize_pem(), "self-signed").map_err(|e| e.0)?;
    Ok((certs, key))
}

/// Proves the kubeconfig identity is accepted: reads what the real components read at startup
/// (the `extension-apiserver-authentication` ConfigMap). 401/403 is fatal, as in the real binaries.
async fn authenticate(client: &ApiClient, component: Component) -> Result<(), String> {
    let path = "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication";
    let mut last = String::new();
    for _ in 0..30 {
        match client.call("GET", path, None).await {
            Ok((200 | 404, _)) => {
                log::info(
                    "authentication.go:1",
                    "Authenticated to the apiserver",
                    &[("user", client.cert.cn.clone()), ("server", client.server.clone())],
                );
                return Ok(());
            }
            Ok((code @ (401 | 403), body)) => {
                return Err(format!(
                    "unable to load configmap based request-header-client-ca-file: {} ({code}) [{}]",
                    body["message"].as_str().unwrap_or("Unauthorized"),
                    component.binary_name()
                ))
            }
            Ok((code, _)) => last = format!("HTTP {code}"),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!("unable to reach the apiserver at {}: {last}", client.server))
}

fn tls_pair(flags: &Flags, default_cn: &str) -> Result<(Vec<Cert>, Key), String> {
    match (flags.get("tls-cert-file"), flags.get("tls-private-key-file")) {
        (Some(c), Some(k)) => pki::load_leaf(c, k, Usage::Server, None).map_err(|e| e.0),
        (None, None) => self_signed(default_cn, &[]),
        _ => Err("--tls-cert-file and --tls-private-key-file must be given together".into()),
    }
}

/// Serves the secure port: `/healthz`, `/livez`, `/readyz` to anyone authenticated or anonymous, 403 for
/// the rest. With `client_cas` (`--client-ca-file`, every certificate of it), a client certificate is
/// requested and verified like the real delegated authentication: one that chains to none of them gets
/// 401 on every path (upstream's union authenticator fails on an error before anonymous is considered).
async fn serve_healthz(
    addr: SocketAddr,
    chain: &[Cert],
    key: &Key,
    client_cas: Vec<Cert>,
) -> Result<(), String> {
    let tls = http::server_tls(chain, key, Some(&client_cas))?;
    let listener = http::bind(addr).await?;
    log::info("secure_serving.go:213", "Serving securely on", &[("address", addr.to_string())]);
    let handler: http::Handler = Arc::new(|req| {
        Box::pin(async move {
            if req.auth_error.is_some() {
                return Response::json(
                    401,
                    &json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"Unauthorized","reason":"Unauthorized","code":401}),
                );
            }
            let user = req.identity.map(|i| i.user).unwrap_or_else(|| "system:anonymous".into());
            match req.path.as_str() {
                "/healthz" | "/livez" | "/readyz" => Response::text(200, "ok"),
                p => Response::json(
                    403,
                    &json!({"kind":"Status","apiVersion":"v1","status":"Failure","message":format!("forbidden: User \"{user}\" cannot get path \"{p}\""),"reason":"Forbidden","code":403}),
                ),
            }
        })
    });
    http::serve(listener, Some((tls, client_cas)), handler).await;
    Ok(())
}

fn addr(flags: &Flags, default_port: u16) -> Result<SocketAddr, String> {
    let bind = flags.get("bind-address").unwrap_or("0.0.0.0");
    let port = flags
        .get("secure-port")
        .map(|p| p.parse::<u16>())
        .transpose()
        .map_err(|e| format!("invalid --secure-port: {e}"))?
        .unwrap_or(default_port);
    Ok(SocketAddr::new(bind.parse().map_err(|e| format!("invalid --bind-address {bind:?}: {e}"))?, port))
}

/// kube-controller-manager double.
pub async fn controller_manager(flags: Flags, _version: KubeVersion) -> Result<(), String> {
    let e = |e: pki::PkiError| e.0;
    // Trust files: every certificate of each is a trust anchor (a bundle during a CA rotation).
    if let Some(ca) = flags.get("root-ca-file") {
        pki::load_ca(ca).map_err(e)?;
    }
    if let Some(ca) = flags.get("requestheader-client-ca-file") {
        pki::load_ca(ca).map_err(e)?;
    }
    let client_cas = match flags.get("client-ca-file") {
        Some(ca) => pki::load_ca(ca).map_err(e)?,
        None => Vec::new(),
    };
    match (flags.get("cluster-signing-cert-file"), flags.get("cluster-signing-key-file")) {
        (Some(c), Some(k)) => {
            pki::load_signing_pair(c, k).map_err(e)?;
        }
        (None, None) => {}
        _ => {
            return Err(
                "--cluster-signing-cert-file and --cluster-signing-key-file must be given together".into()
            )
        }
    }
    let kubeconfig = flags.get("kubeconfig").ok_or("invalid configuration: no configuration has been provided, try setting KUBERNETES_MASTER environment variable")?;
    let client = ApiClient::from_kubeconfig(kubeconfig).map_err(|e| e.0)?;
    for f in ["authentication-kubeconfig", "authorization-kubeconfig"] {
        if let Some(p) = flags.get(f) {
            ApiClient::from_kubeconfig(p).map_err(|e| format!("--{f}: {e}"))?;
        }
    }
    let (chain, key) = tls_pair(&flags, "kube-controller-manager")?;
    authenticate(&client, Component::ControllerManager).await?;
    if let Some(k) = flags.get("service-account-private-key-file") {
        let sa = pki::load_key(k).map_err(e)?;
        let want = pki::jwk_of_spki(&sa.spki).ok_or("unsupported service account key type")?;
        let (code, jwks) = client.call("GET", "/openid/v1/jwks", None).await?;
        let served: Vec<serde_json::Value> = jwks["keys"].as_array().cloned().unwrap_or_default();
        if code != 200 || !served.iter().any(|k| k["kid"] == want["kid"]) {
            return Err(format!(
                "--service-account-private-key-file {k} does not pair with any --service-account-key-file of the apiserver: tokens it signs would be rejected"
            ));
        }
    }
    tokio::spawn(crate::controllers::run(client));
    serve_healthz(addr(&flags, 10257)?, &chain, &key, client_cas).await
}

/// kube-scheduler double.
pub async fn scheduler(flags: Flags, version: KubeVersion) -> Result<(), String> {
    let mut kubeconfig = flags.get("kubeconfig").map(String::from);
    if let Some(path) = flags.get("config") {
        let d = config::load(Component::Scheduler, version.minor, path).map_err(|e| e.0)?;
        if let Some(k) = string_at(&d.doc, "clientConnection.kubeconfig") {
            kubeconfig = Some(k);
        }
    }
    let kubeconfig = kubeconfig.ok_or("invalid configuration: no configuration has been provided")?;
    let client = ApiClient::from_kubeconfig(&kubeconfig).map_err(|e| e.0)?;
    let (chain, key) = tls_pair(&flags, "kube-scheduler")?;
    authenticate(&client, Component::Scheduler).await?;
    tokio::spawn(crate::scheduler::run(client));
    serve_healthz(addr(&flags, 10259)?, &chain, &key, Vec::new()).await
}

fn ipport(text: &str, default_port: u16) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, default_port)))
        .map_err(|_| format!("invalid address {text:?}: must be IP or IP:port"))
}

/// kube-proxy double.
pub async fn proxy(flags: Flags, version: KubeVersion) -> Result<(), String> {
    let mut kubeconfig = flags.get("kubeconfig").map(String::from);
    let mut healthz = flags.get("healthz-bind-address").unwrap_or("0.0.0.0:10256").to_string();
    let mut metrics = flags.get("metrics-bind-address").unwrap_or("127.0.0.1:10249").to_string();
    if let Some(path) = flags.get("config") {
        let d = config::load(Component::Proxy, version.minor, path).map_err(|e| e.0)?;
        for complaint in &d.lenient {
            log::warn(
                "codec.go:1",
                "Using lenient decoding as strict decoding failed",
                &[("err", format!("strict decoding error: {complaint}"))],
            );
        }
        if let Some(mode) = string_at(&d.doc, "mode") {
            if !matches!(mode.as_str(), "" | "iptables" | "ipvs" | "nftables") {
                return Err(format!(
                    "invalid configuration: KubeProxyConfiguration.Mode: Invalid value: {mode:?}: must be iptables, ipvs or nftables"
                ));
            }
        }
        kubeconfig = string_at(&d.doc, "clientConnection.kubeconfig").or(kubeconfig);
        healthz = string_at(&d.doc, "healthzBindAddress").unwrap_or(healthz);
        metrics = string_at(&d.doc, "metricsBindAddress").unwrap_or(metrics);
    }
    let kubeconfig = kubeconfig.ok_or("invalid configuration: no configuration has been provided")?;
    let client = ApiClient::from_kubeconfig(&kubeconfig).map_err(|e| e.0)?;
    // kube-proxy lists Services and EndpointSlices at startup; a forbidden list is fatal here.
    let (code, body) = client
        .call("GET", "/api/v1/services?limit=1", None)
        .await
        .map_err(|e| format!("unable to reach the apiserver: {e}"))?;
    if code != 200 {
        return Err(format!(
            "failed to list *v1.Service: {} ({code})",
            body["message"].as_str().unwrap_or("")
        ));
    }
    let hz = http::bind(ipport(&healthz, 10256)?).await?;
    let mt = http::bind(ipport(&metrics, 10249)?).await?;
    let handler: http::Handler = Arc::new(|req| {
        Box::pin(async move {
            let now = time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            match req.path.as_str() {
                "/healthz" | "/livez" => Response::json(
                    200,
                    &json!({"lastUpdated": now, "currentTime": now, "nodeEligible": true}),
                ),
                "/proxyMode" => Response::text(200, "iptables"),
                _ => Response::text(404, "404 page not found"),
            }
        })
    });
    log::info("server.go:1", "Serving healthz", &[("address", healthz.clone())]);
    tokio::spawn(http::serve(mt, None, handler.clone()));
    http::serve(hz, None, handler).await;
    Ok(())
}
