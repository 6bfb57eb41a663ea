//! kubelet double: reads its KubeletConfiguration and kubeconfig, checks its certificates, registers its
//! Node with the apiserver and heart-beats it, serves 10250 (TLS) and 10248 (healthz), and reports
//! NotReady while the container runtime socket (real containerd) does not answer. The pods bound to its
//! node are reported running without running anything ([`pods`]).

pub mod pods;

use std::{net::IpAddr, sync::Arc, time::Duration};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    config::{self, lookup, string_at},
    flags::Flags,
    http::{self, Request, Response},
    kubeconfig::ApiClient,
    log,
    pki::{self, Usage},
    version::KubeVersion,
    Component,
};

const SRC: &str = "kubelet_node_status.go:1";

/// Checks the CRI socket answers: an HTTP/2 (gRPC) server replies to the client preface with SETTINGS.
pub async fn runtime_answers(endpoint: &str) -> Result<(), String> {
    let path = endpoint.strip_prefix("unix://").unwrap_or(endpoint);
    let attempt = async {
        let mut s = tokio::net::UnixStream::connect(path)
            .await
            .map_err(|e| format!("dial unix {path}: connect: {e}"))?;
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .map_err(|e| e.to_string())?;
        let mut head = [0u8; 9];
        s.read_exact(&mut head).await.map_err(|e| format!("no HTTP/2 answer on {path}: {e}"))?;
        if head[3] != 0x04 {
            return Err(format!("{path} did not answer like a gRPC server"));
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .map_err(|_| format!("timeout dialing {path}"))?
}

fn pick_node_ip(flags: &Flags, address: &str) -> Result<IpAddr, String> {
    if let Some(ip) = flags.get("node-ip").and_then(|s| s.split(',').next()) {
        return ip.parse().map_err(|e| format!("failed to parse --node-ip {ip:?}: {e}"));
    }
    if let Ok(ip) = address.parse::<IpAddr>() {
        if !ip.is_unspecified() {
            return Ok(ip);
        }
    }
    // Like the real kubelet: the address of the default-route interface (no packet is sent).
    let sock = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    sock.connect("192.0.2.1:9").map_err(|e| format!("unable to determine node IP: {e}"))?;
    Ok(sock.local_addr().map_err(|e| e.to_string())?.ip())
}

/// Runs the kubelet double.
pub async fn run(flags: Flags, version: KubeVersion) -> Result<(), String> {
    let doc = match flags.get("config") {
        Some(path) => {
            let d = config::load(Component::Kubelet, version.minor, path)
                .map_err(|e| format!("failed to load kubelet config file, path: {path}, error: {e}"))?;
            for complaint in &d.lenient {
                log::warn(
                    "codec.go:1",
                    "Using lenient decoding as strict decoding failed",
                    &[("err", format!("strict decoding error: {complaint}"))],
                );
            }
            d.doc
        }
        None => json_to_yaml(json!({})),
    };
    if let Some(driver) = string_at(&doc, "cgroupDriver") {
        if !matches!(driver.as_str(), "systemd" | "cgroupfs") {
            return Err(format!(
                "invalid configuration: cgroupDriver ({driver:?}) must be one of: systemd, cgroupfs"
            ));
        }
    }
    let labels = node_labels(&flags.list("node-labels"))?;
    let taints = lookup(&doc, "registerWithTaints")
        .map(|t| serde_json::to_value(t).unwrap_or(Value::Null))
        .unwrap_or(Value::Null);
    let kubeconfig = flags
        .get("kubeconfig")
        .ok_or("--kubeconfig must be specified (standalone mode is not supported by the double)")?;
    let client = ApiClient::from_kubeconfig(kubeconfig)
        .map_err(|e| format!("failed to run Kubelet: invalid kubeconfig: {e}"))?;

    let s = |p: &str| string_at(&doc, p);
    let int = |p: &str, d: i64| lookup(&doc, p).and_then(serde_yaml::Value::as_i64).unwrap_or(d);
    let address =
        flags.get("address").map(String::from).or_else(|| s("address")).unwrap_or_else(|| "0.0.0.0".into());
    let port = flags.get("port").and_then(|p| p.parse().ok()).unwrap_or(int("port", 10250));
    let healthz_port =
        flags.get("healthz-port").and_then(|p| p.parse().ok()).unwrap_or(int("healthzPort", 10248));
    let healthz_bind = flags
        .get("healthz-bind-address")
        .map(String::from)
        .or_else(|| s("healthzBindAddress"))
        .unwrap_or_else(|| "127.0.0.1".into());
    let anonymous = lookup(&doc, "authentication.anonymous.enabled")
        .and_then(serde_yaml::Value::as_bool)
        .unwrap_or(false);
    let runtime = flags
        .get("container-runtime-endpoint")
        .map(String::from)
        .or_else(|| s("containerRuntimeEndpoint"))
        .unwrap_or_else(|| "unix:///run/containerd/containerd.sock".into());
    let freq =
        s("nodeStatusUpdateFrequency").and_then(|d| config::parse_go_duration(&d)).unwrap_or(10.0).max(0.2);
    let node_name =
        flags.get("hostname-override").map(String::from).unwrap_or_else(nix_hostname).to_lowercase();
    let node_ip = pick_node_ip(&flags, &address)?;

    let client_ca =
        match flags.get("client-ca-file").map(String::from).or_else(|| s("authentication.x509.clientCAFile"))
        {
            Some(p) => Some(pki::load_ca(&p).map_err(|e| format!("unable to load client CA file {p}: {e}"))?),
            None => None,
        };
    let cert_file = flags.get("tls-cert-file").map(String::from).or_else(|| s("tlsCertFile"));
    let key_file = flags.get("tls-private-key-file").map(String::from).or_else(|| s("tlsPrivateKeyFile"));
    let (chain, key) = match (cert_file, key_file) {
        (Some(c), Some(k)) => {
            let (chain, key) = pki::load_leaf(&c, &k, Usage::Server, client_ca.as_deref())
                .map_err(|e| format!("failed to load serving certificate: {e}"))?;
            if !pki::covers_ip(&chain[0], node_ip) {
                return Err(format!(
                    "serving certificate {c} does not cover the node address {node_ip}: x509: certificate is valid for {:?}, not {node_ip}",
                    chain[0].ips
                ));
            }
            (chain, key)
        }
        (None, None) => crate::components::self_signed(
            &format!("{node_name}@{}", std::process::id()),
            std::slice::from_ref(&node_name),
        )?,
        _ => return Err("tlsCertFile and tlsPrivateKeyFile must be set together".into()),
    };
    let tls = http::server_tls(&chain, &key, client_ca.as_deref())?;
    let bind: IpAddr = address.parse().map_err(|e| format!("invalid address {address:?}: {e}"))?;
    let listener = http::bind((bind, port as u16).into()).await?;
    let hz_bind: IpAddr = healthz_bind.parse().map_err(|e| format!("invalid healthzBindAddress: {e}"))?;
    let hz_listener = http::bind((hz_bind, healthz_port as u16).into()).await?;
    let name_for_api = node_name.clone();
    let served = Arc::new(std::sync::Mutex::new(Vec::<Value>::new()));
    let served_for_api = served.clone();
    let api: http::Handler = Arc::new(move |req: Request| {
        let node = name_for_api.clone();
        let pods = served_for_api.lock().expect("not poisoned").clone();
        Box::pin(async move {
            if req.auth_error.is_some() || (req.identity.is_none() && !anonymous) {
                return Response::text(401, "Unauthorized");
            }
            match req.path.as_str() {
                "/healthz" | "/healthz/ping" | "/healthz/syncloop" => Response::text(200, "ok"),
                "/pods" | "/pods/" => Response::json(
                    200,
                    &json!({"kind":"PodList","apiVersion":"v1","metadata":{},"items":pods}),
                ),
                _ => Response::text(404, &format!("404 page not found (node {node})")),
            }
        })
    });
    tokio::spawn(http::serve(listener, Some((tls, client_ca.unwrap_or_default())), api));
    let hz: http::Handler = Arc::new(|_req| Box::pin(async { Response::text(200, "ok") }));
    tokio::spawn(http::serve(hz_listener, None, hz));
    log::info(
        "server.go:1",
        "Started kubelet",
        &[("node", node_name.clone()), ("address", format!("{bind}:{port}"))],
    );
    tokio::spawn(
        pods::PodWorker {
            client: client.clone(),
            node: node_name.clone(),
            node_ip,
            runtime: runtime.clone(),
            served,
            seen: Default::default(),
        }
        .run(),
    );

    let mut registered = false;
    loop {
        let runtime_ok = runtime_answers(&runtime).await;
        if let Err(e) = &runtime_ok {
            log::error(
                "kubelet.go:1",
                "Container runtime not ready",
                &[("endpoint", runtime.clone()), ("err", e.clone())],
            );
        }
        let mut node = node_object(&node_name, node_ip, version, runtime_ok.as_ref().err());
        for (k, v) in &labels {
            node["metadata"]["labels"][k] = json!(v);
        }
        if !taints.is_null() {
            node["spec"]["taints"] = taints.clone();
        }
        if !registered {
            match client.call("POST", "/api/v1/nodes", Some(("application/json", node.clone()))).await {
                Ok((201, _)) => {
                    log::info(SRC, "Successfully registered node", &[("node", node_name.clone())]);
                    registered = true;
                }
                Ok((409, _)) => registered = true,
                Ok((code, body)) => log::error(
                    SRC,
                    "Unable to register node with API server",
                    &[
                        ("err", format!("{} ({code})", body["message"].as_str().unwrap_or(""))),
                        ("node", node_name.clone()),
                    ],
                ),
                Err(e) => log::error(
                    SRC,
                    "Unable to register node with API server",
                    &[("err", e), ("node", node_name.clone())],
                ),
            }
        }
        if registered {
            let patch = json!({"status": node["status"].clone()});
            match client
                .call(
                    "PATCH",
                    &format!("/api/v1/nodes/{node_name}/status"),
                    Some(("application/strategic-merge-patch+json", patch)),
                )
                .await
            {
                Ok((200, _)) => {}
                Ok((code, body)) => log::error(
                    SRC,
                    "Error updating node status, will retry",
                    &[("err", format!("{} ({code})", body["message"].as_str().unwrap_or("")))],
                ),
                Err(e) => log::error(SRC, "Error updating node status, will retry", &[("err", e)]),
            }
        }
        tokio::time::sleep(Duration::from_secs_f64(freq)).await;
    }
}

/// `--node-labels` parsed and checked like the real kubelet: labels in the `kubernetes.io` / `k8s.io`
/// namespaces are refused unless NodeRestriction lets a kubelet set them (e.g. `node-role.kubernetes.io/*`
/// must be set by an admin, not by the kubelet).
pub fn node_labels(items: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for item in items {
        let (k, v) = item.split_once('=').ok_or_else(|| {
            format!("invalid argument {item:?} for \"--node-labels\" flag: must be formatted as key=value")
        })?;
        let ns = k.split_once('/').map(|(p, _)| p).unwrap_or("");
        let restricted = ns == "kubernetes.io"
            || ns == "k8s.io"
            || ns.ends_with(".kubernetes.io")
            || ns.ends_with(".k8s.io");
        let allowed = matches!(
            k,
            "kubernetes.io/hostname"
                | "kubernetes.io/arch"
                | "kubernetes.io/os"
                | "beta.kubernetes.io/arch"
                | "beta.kubernetes.io/os"
                | "beta.kubernetes.io/instance-type"
                | "node.kubernetes.io/instance-type"
                | "failure-domain.beta.kubernetes.io/region"
                | "failure-domain.beta.kubernetes.io/zone"
                | "topology.kubernetes.io/region"
                | "topology.kubernetes.io/zone"
        ) || ns == "kubelet.kubernetes.io"
            || ns.ends_with(".kubelet.kubernetes.io")
            || ns == "node.kubernetes.io"
            || ns.ends_with(".node.kubernetes.io");
        if restricted && !allowed {
            bad.push(k.to_string());
        }
        out.push((k.to_string(), v.to_string()));
    }
    if !bad.is_empty() {
        return Err(format!(
            "failed to validate kubelet flags: unknown 'kubernetes.io' or 'k8s.io' labels specified with --node-labels: {bad:?}\n--node-labels in the 'kubernetes.io' namespace must begin with an allowed prefix (kubelet.kubernetes.io, node.kubernetes.io) or be in the specifically allowed set (beta.kubernetes.io/arch, beta.kubernetes.io/instance-type, beta.kubernetes.io/os, failure-domain.beta.kubernetes.io/region, failure-domain.beta.kubernetes.io/zone, kubernetes.io/arch, kubernetes.io/hostname, kubernetes.io/os, node.kubernetes.io/instance-type, topology.kubernetes.io/region, topology.kubernetes.io/zone)"
        ));
    }
    Ok(out)
}

fn json_to_yaml(v: Value) -> serde_yaml::Value {
    serde_yaml::to_value(v).unwrap_or(serde_yaml::Value::Null)
}

fn nix_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

fn node_object(name: &str, ip: IpAddr, version: KubeVersion, runtime_err: Option<&String>) -> Value {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let cond = |t: &str, status: &str, reason: &str, msg: &str| json!({"type":t,"status":status,"reason":reason,"message":msg,"lastHeartbeatTime":now,"lastTransitionTime":now});
    let ready = match runtime_err {
        None => cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
        Some(e) => cond("Ready", "False", "KubeletNotReady", &format!("container runtime is down: {e}")),
    };
    json!({
        "apiVersion":"v1","kind":"Node",
        "metadata":{"name":name,"labels":{"kubernetes.io/hostname":name,"kubernetes.io/os":"linux","kubernetes.io/arch":"amd64","beta.kubernetes.io/os":"linux","beta.kubernetes.io/arch":"amd64"}},
        "spec":{},
        "status":{
            "addresses":[{"type":"InternalIP","address":ip.to_string()},{"type":"Hostname","address":name}],
            "conditions":[
                cond("MemoryPressure","False","KubeletHasSufficientMemory","kubelet has sufficient memory available"),
                cond("DiskPressure","False","KubeletHasNoDiskPressure","kubelet has no disk pressure"),
                cond("PIDPressure","False","KubeletHasSufficientPID","kubelet has sufficient PID available"),
                ready],
            "nodeInfo":{"kubeletVersion":version.to_string(),"kubeProxyVersion":"","operatingSystem":"linux","architecture":"amd64","containerRuntimeVersion":"containerd://unknown","osImage":"","kernelVersion":"","machineID":"","systemUUID":"","bootID":""},
            "daemonEndpoints":{"kubeletEndpoint":{"Port":10250}}
        }
    })
}
