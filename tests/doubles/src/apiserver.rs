//! kube-apiserver double: checks its flags, certificates and keys like the real one, stores objects in the
//! real etcd under `/registry/...`, serves mTLS with client-cert authentication and a small authorizer,
//! and answers the REST calls real `kubectl` makes for version, discovery, get, watch, cordon, drain,
//! rollout status and apply. Pod semantics (graceful deletion, binding, eviction with PodDisruptionBudgets)
//! are in [`pods`], watch streams in [`watch`], server-side printing (`kubectl get` columns) in [`tables`].

mod pods;
mod scale;
mod tables;
mod watch;

use std::{net::IpAddr, sync::Arc};

use serde_json::{json, Value};

use crate::{
    etcd::Etcd,
    flags::Flags,
    http::{self, Identity, Request, Response},
    log,
    pki::{self, Usage},
    version::KubeVersion,
};

const SRC: &str = "server.go:1";

/// One served resource.
#[derive(Debug, Clone, Copy)]
pub struct Resource {
    /// API group ("" = core).
    pub group: &'static str,
    /// Version.
    pub version: &'static str,
    /// Plural name.
    pub plural: &'static str,
    /// Kind.
    pub kind: &'static str,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Short names.
    pub short: &'static [&'static str],
    /// etcd key segment under /registry/.
    pub etcd: &'static str,
}

macro_rules! res {
    ($g:expr, $v:expr, $p:expr, $k:expr, $ns:expr, $s:expr, $e:expr) => {
        Resource { group: $g, version: $v, plural: $p, kind: $k, namespaced: $ns, short: $s, etcd: $e }
    };
}

/// Everything the double serves.
pub const RESOURCES: &[Resource] = &[
    res!("", "v1", "namespaces", "Namespace", false, &["ns"], "namespaces"),
    res!("", "v1", "nodes", "Node", false, &["no"], "minions"),
    res!("", "v1", "pods", "Pod", true, &["po"], "pods"),
    res!("", "v1", "services", "Service", true, &["svc"], "services/specs"),
    res!("", "v1", "endpoints", "Endpoints", true, &["ep"], "services/endpoints"),
    res!("", "v1", "configmaps", "ConfigMap", true, &["cm"], "configmaps"),
    res!("", "v1", "secrets", "Secret", true, &[], "secrets"),
    res!("", "v1", "serviceaccounts", "ServiceAccount", true, &["sa"], "serviceaccounts"),
    res!("apps", "v1", "deployments", "Deployment", true, &["deploy"], "deployments"),
    res!("apps", "v1", "daemonsets", "DaemonSet", true, &["ds"], "daemonsets"),
    res!("apps", "v1", "replicasets", "ReplicaSet", true, &["rs"], "replicasets"),
    res!("apps", "v1", "statefulsets", "StatefulSet", true, &["sts"], "statefulsets"),
    res!("rbac.authorization.k8s.io", "v1", "roles", "Role", true, &[], "roles"),
    res!("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", true, &[], "rolebindings"),
    res!("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", false, &[], "clusterroles"),
    res!(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
        &[],
        "clusterrolebindings"
    ),
    res!(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        true,
        &["pdb"],
        "poddisruptionbudgets"
    ),
    res!("coordination.k8s.io", "v1", "leases", "Lease", true, &[], "leases"),
];

fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

fn api_version(r: &Resource) -> String {
    if r.group.is_empty() {
        r.version.to_string()
    } else {
        format!("{}/{}", r.group, r.version)
    }
}

fn has_status(r: &Resource) -> bool {
    matches!(
        r.plural,
        "nodes"
            | "pods"
            | "deployments"
            | "daemonsets"
            | "replicasets"
            | "statefulsets"
            | "namespaces"
            | "services"
            | "poddisruptionbudgets"
    )
}

/// Resources whose `metadata.generation` the real registry sets to 1 on create and bumps on every `spec`
/// change (controllers report the generation they acted on as `status.observedGeneration`).
fn has_generation(r: &Resource) -> bool {
    matches!(r.plural, "deployments" | "daemonsets" | "replicasets" | "statefulsets" | "poddisruptionbudgets")
}

/// The status the real registry strategies reset to on create (`PrepareForCreate`): clients cannot create
/// an object that claims to be already reconciled.
fn initial_status(r: &Resource) -> Option<Value> {
    match r.plural {
        "deployments" | "daemonsets" | "statefulsets" => Some(json!({})),
        "replicasets" => Some(json!({"replicas": 0})),
        "poddisruptionbudgets" => Some(
            json!({"currentHealthy": 0, "desiredHealthy": 0, "disruptionsAllowed": 0, "expectedPods": 0}),
        ),
        _ => None,
    }
}

/// Checked startup settings.
struct Settings {
    version: KubeVersion,
    bind: IpAddr,
    port: u16,
    anonymous: bool,
    service_ip: IpAddr,
    sa_public: Vec<Vec<u8>>,
    /// `--service-account-issuer` (the first one issues).
    sa_issuers: Vec<String>,
    /// `--api-audiences` (default: the issuers).
    audiences: Vec<String>,
    /// `--etcd-readycheck-timeout`.
    ready_timeout: std::time::Duration,
}

struct State {
    s: Settings,
    etcd: Etcd,
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    Response::json(
        code,
        &json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":message,"reason":reason,"code":code}),
    )
}

fn required(flags: &Flags, names: &[&str]) -> Result<(), String> {
    let missing: Vec<String> =
        names.iter().filter(|n| flags.get(n).is_none_or(str::is_empty)).map(|n| format!("--{n}")).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("[{} must be specified]", missing.join(" must be specified, ")))
    }
}

/// First usable IP of a CIDR (the `kubernetes` Service IP).
pub fn first_service_ip(cidr: &str) -> Result<IpAddr, String> {
    let net: ipnet::IpNet =
        cidr.parse().map_err(|e| format!("invalid --service-cluster-ip-range {cidr:?}: {e}"))?;
    match net {
        ipnet::IpNet::V4(n) => Ok(IpAddr::from(std::net::Ipv4Addr::from(u32::from(n.network()) + 1))),
        ipnet::IpNet::V6(n) => Ok(IpAddr::from(std::net::Ipv6Addr::from(u128::from(n.network()) + 1))),
    }
}

/// Runs the apiserver double until killed.
pub async fn run(flags: Flags, version: KubeVersion) -> Result<(), String> {
    required(
        &flags,
        &[
            "etcd-servers",
            "client-ca-file",
            "tls-cert-file",
            "tls-private-key-file",
            "service-cluster-ip-range",
            "service-account-issuer",
            "service-account-key-file",
            "service-account-signing-key-file",
        ],
    )?;
    // Value sets the real option validation enforces.
    for mode in flags.list("authorization-mode") {
        if !matches!(mode.as_str(), "AlwaysAllow" | "AlwaysDeny" | "ABAC" | "Webhook" | "RBAC" | "Node") {
            return Err(format!(
                "[authorization-mode {mode:?} is not a valid mode, supported modes: AlwaysAllow, AlwaysDeny, ABAC, Webhook, RBAC, Node]"
            ));
        }
    }
    for t in flags.list("kubelet-preferred-address-types") {
        if !matches!(t.as_str(), "Hostname" | "InternalIP" | "ExternalIP" | "InternalDNS" | "ExternalDNS") {
            return Err(format!("[--kubelet-preferred-address-types: unsupported address type {t:?}]"));
        }
    }
    let e = |e: pki::PkiError| e.0;
    let client_ca = pki::load_ca(flags.get("client-ca-file").unwrap_or_default()).map_err(e)?;

    // Serving cert: key pair, serverAuth, chain to the cluster CA, and the SANs clients will dial.
    let (chain, key) = pki::load_leaf(
        flags.get("tls-cert-file").unwrap_or_default(),
        flags.get("tls-private-key-file").unwrap_or_default(),
        Usage::Server,
        Some(&client_ca),
    )
    .map_err(e)?;
    let leaf = &chain[0];
    let ranges = flags.list("service-cluster-ip-range");
    let service_ip = first_service_ip(ranges.first().map(String::as_str).unwrap_or(""))?;
    let cert_file = flags.get("tls-cert-file").unwrap_or_default();
    if !pki::covers_ip(leaf, service_ip) {
        return Err(format!(
            "serving certificate {cert_file} does not cover the first Service IP {service_ip} of --service-cluster-ip-range (in-cluster clients dial https://{service_ip}:443): x509: certificate is valid for {:?}, not {service_ip}",
            leaf.ips
        ));
    }
    let issuer = flags.get("service-account-issuer").unwrap_or_default();
    let issuer_host = issuer.trim_start_matches("https://").split(['/', ':']).next().unwrap_or("");
    let svc_name = if issuer_host.starts_with("kubernetes.default.svc.") {
        issuer_host.to_string()
    } else {
        leaf.dns
            .iter()
            .find(|d| d.starts_with("kubernetes.default.svc."))
            .cloned()
            .unwrap_or_else(|| "kubernetes.default.svc.<cluster-domain>".into())
    };
    for name in ["kubernetes", "kubernetes.default", "kubernetes.default.svc", svc_name.as_str()] {
        if !pki::covers_dns(leaf, name) {
            return Err(format!(
                "serving certificate {cert_file} does not cover {name:?}: x509: certificate is valid for {:?}, not {name}",
                leaf.dns
            ));
        }
    }
    let bind: IpAddr = flags
        .get("bind-address")
        .unwrap_or("0.0.0.0")
        .parse()
        .map_err(|e| format!("invalid --bind-address: {e}"))?;
    let advertise: Option<IpAddr> = match flags.get("advertise-address") {
        Some(a) => Some(a.parse().map_err(|e| format!("invalid --advertise-address {a:?}: {e}"))?),
        None => (!bind.is_unspecified()).then_some(bind),
    };
    if let Some(adv) = advertise {
        if !pki::covers_ip(leaf, adv) {
            return Err(format!(
                "serving certificate {cert_file} does not cover the advertise address {adv}: x509: certificate is valid for {:?}, not {adv}",
                leaf.ips
            ));
        }
    }

    // Service-account keys: the signing key must pair with one of the verification keys.
    let sa_public =
        pki::load_public_keys(flags.get("service-account-key-file").unwrap_or_default()).map_err(e)?;
    let signing =
        pki::load_key(flags.get("service-account-signing-key-file").unwrap_or_default()).map_err(e)?;
    if !sa_public.contains(&signing.spki) {
        return Err(format!(
            "service-account-signing-key-file {} does not match any key in --service-account-key-file {}",
            flags.get("service-account-signing-key-file").unwrap_or_default(),
            flags.get("service-account-key-file").unwrap_or_default()
        ));
    }
    // Optional client certs the apiserver presents: load and check them the same way.
    if let (Some(c), Some(k)) = (flags.get("kubelet-client-certificate"), flags.get("kubelet-client-key")) {
        pki::load_leaf(c, k, Usage::Client, Some(&client_ca)).map_err(e)?;
    }
    if let (Some(c), Some(k)) = (flags.get("proxy-client-cert-file"), flags.get("proxy-client-key-file")) {
        let front = match flags.get("requestheader-client-ca-file") {
            Some(f) => Some(pki::load_ca(f).map_err(e)?),
            None => None,
        };
        pki::load_leaf(c, k, Usage::Client, front.as_deref()).map_err(e)?;
    }
    if let Some(ca) = flags.get("kubelet-certificate-authority") {
        pki::load_ca(ca).map_err(e)?;
    }

    // etcd: every URL must answer with our client cert.
    let urls = flags.list("etcd-servers");
    // How long /readyz waits for etcd (the real flag and default); a request to etcd waits at least as long.
    let ready_timeout = flags.duration_or("etcd-readycheck-timeout", std::time::Duration::from_secs(2))?;
    let mut http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .timeout(std::time::Duration::from_secs(5).max(ready_timeout + std::time::Duration::from_secs(1)))
        .connect_timeout(std::time::Duration::from_secs(2));
    if urls.iter().any(|u| u.starts_with("https://")) {
        required(&flags, &["etcd-cafile", "etcd-certfile", "etcd-keyfile"])?;
        let etcd_ca = pki::load_ca(flags.get("etcd-cafile").unwrap_or_default()).map_err(e)?;
        let (etcd_chain, etcd_key) = pki::load_leaf(
            flags.get("etcd-certfile").unwrap_or_default(),
            flags.get("etcd-keyfile").unwrap_or_default(),
            Usage::Client,
            Some(&etcd_ca),
        )
        .map_err(e)?;
        let ca_pem =
            std::fs::read(flags.get("etcd-cafile").unwrap_or_default()).map_err(|e| e.to_string())?;
        let cert_pem = std::fs::read(&etcd_chain[0].origin).map_err(|e| e.to_string())?;
        for c in reqwest::Certificate::from_pem_bundle(&ca_pem).map_err(|e| e.to_string())? {
            http = http.add_root_certificate(c);
        }
        let mut ident = cert_pem;
        ident.push(b'\n');
        ident.extend_from_slice(etcd_key.pem.as_bytes());
        http = http.identity(reqwest::Identity::from_pem(&ident).map_err(|e| e.to_string())?);
    }
    let mut etcd = Etcd::new(urls.clone(), http.build().map_err(|e| e.to_string())?);
    // Encryption at rest: a configuration that does not load stops the apiserver, as upstream.
    if let Some(path) = flags.get("encryption-provider-config").filter(|p| !p.is_empty()) {
        let config = crate::encryption::Config::load(path)?;
        let served: Vec<(&str, &str, &str)> = RESOURCES.iter().map(|r| (r.group, r.plural, r.etcd)).collect();
        etcd = etcd.with_at_rest(crate::encryption::AtRest::new(&config, &served));
        log::info(SRC, "Loaded encryption provider configuration", &[("path", path.to_string())]);
    }
    for url in &urls {
        let mut attempt = 0;
        loop {
            match etcd.probe(url).await {
                Ok(()) => break,
                Err(err) if attempt < 10 => {
                    log::warn(
                        "logging.go:59",
                        "[core] grpc: addrConn.createTransport failed to connect",
                        &[("addr", url.clone()), ("err", err)],
                    );
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                Err(err) => return Err(format!("failed to connect to etcd server {url}: {err}")),
            }
        }
    }
    log::info(SRC, "etcd reachable", &[("servers", urls.join(","))]);

    let port: u16 = flags
        .get("secure-port")
        .unwrap_or("6443")
        .parse()
        .map_err(|e| format!("invalid --secure-port: {e}"))?;
    let anonymous = flags.bool_or("anonymous-auth", true);
    let tls = http::server_tls(&chain, &key, Some(&client_ca))?;
    let state = Arc::new(State {
        s: Settings {
            version,
            bind,
            port,
            anonymous,
            service_ip,
            sa_public,
            audiences: match flags.list("api-audiences") {
                a if a.is_empty() => flags.list("service-account-issuer"),
                a => a,
            },
            sa_issuers: flags.list("service-account-issuer"),
            ready_timeout,
        },
        etcd,
    });
    bootstrap(&state).await?;
    let listener = http::bind(std::net::SocketAddr::new(state.s.bind, state.s.port)).await?;
    log::info(
        "secure_serving.go:213",
        "Serving securely on",
        &[("address", format!("{}:{}", state.s.bind, state.s.port))],
    );
    let st = state.clone();
    let handler: http::Handler = Arc::new(move |req| {
        let st = st.clone();
        Box::pin(async move { handle(&st, req).await })
    });
    http::serve(listener, Some((tls, client_ca)), handler).await;
    Ok(())
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn new_uid() -> String {
    use sha2::Digest;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seed = format!("{:?}{}{}", std::time::SystemTime::now(), std::process::id(), n);
    let h = hex::encode(sha2::Sha256::digest(seed.as_bytes()));
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// Default namespaces and the `kubernetes` Service, as the real apiserver's bootstrap controllers create.
async fn bootstrap(st: &State) -> Result<(), String> {
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let key = format!("/registry/namespaces/{ns}");
        if st.etcd.get(&key).await?.is_none() {
            let obj = json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":ns,"uid":new_uid(),"creationTimestamp":now()},"spec":{"finalizers":["kubernetes"]},"status":{"phase":"Active"}});
            st.etcd.put(&key, &obj).await?;
        }
    }
    let key = "/registry/services/specs/default/kubernetes";
    if st.etcd.get(key).await?.is_none() {
        let obj = json!({"apiVersion":"v1","kind":"Service","metadata":{"name":"kubernetes","namespace":"default","uid":new_uid(),"creationTimestamp":now(),"labels":{"component":"apiserver","provider":"kubernetes"}},
            "spec":{"type":"ClusterIP","clusterIP":st.s.service_ip.to_string(),"clusterIPs":[st.s.service_ip.to_string()],"ports":[{"name":"https","port":443,"protocol":"TCP","targetPort":st.s.port}]}});
        st.etcd.put(key, &obj).await?;
    }
    Ok(())
}

fn is_health(path: &str) -> bool {
    matches!(path, "/healthz" | "/livez" | "/readyz" | "/version" | "/version/")
}

/// Parsed resource path.
#[derive(Debug)]
struct Target {
    res: &'static Resource,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_target(path: &str) -> Option<Result<Target, Response>> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] if !rest.is_empty() => ("", *v, rest),
        ["apis", g, v, rest @ ..] if !rest.is_empty() => (*g, *v, rest),
        _ => return None,
    };
    let (ns, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..] => {
            if find(group, version, plural).is_some_and(|r| r.namespaced) {
                (Some(ns.to_string()), &[&[*plural][..], tail].concat()[..])
            } else if group.is_empty() {
                (None, rest)
            } else {
                return Some(Err(status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                )));
            }
        }
        _ => (None, rest),
    };
    let Some(res) = find(group, version, rest[0]) else {
        return Some(Err(status(404, "NotFound", "the server could not find the requested resource")));
    };
    Some(Ok(Target {
        res,
        ns,
        name: rest.get(1).map(|s| s.to_string()),
        sub: rest.get(2).map(|s| s.to_string()),
    }))
}

fn verb_of(method: &str, target: &Target, watch: bool) -> &'static str {
    match (method, target.name.is_some()) {
        ("GET", _) if watch => "watch",
        ("GET", true) => "get",
        ("GET", false) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => "unknown",
    }
}

const ADMIN_GROUPS: &[&str] = &["system:masters", "kubeadm:cluster-admins"];
const READ_ONLY_USERS: &[&str] =
    &["system:kube-scheduler", "system:kube-controller-manager", "system:kube-proxy"];

/// The writes the default RBAC policy gives the scheduler (`system:kube-scheduler` ClusterRole): binding
/// pods, reporting why a pod cannot be scheduled, and deleting pods it preempts.
const SCHEDULER_WRITES: &[(&str, &[&str])] =
    &[("pods", &["delete"]), ("pods/binding", &["create"]), ("pods/status", &["patch", "update"])];

/// The writes the default RBAC policy gives the workload controllers of kube-controller-manager
/// (`system:controller:deployment-controller`, `replicaset-controller`, `disruption-controller`,
/// `generic-garbage-collector`) on these resources. The real KCM uses them through per-controller service
/// accounts (`--use-service-account-credentials`); the double has no service-account tokens, so its own
/// client certificate identity (`system:kube-controller-manager`) is granted exactly their union.
const CONTROLLER_MANAGER_WRITES: &[(&str, &[&str])] = &[
    ("pods", &["create", "delete", "patch", "update"]),
    ("replicasets", &["create", "delete", "patch", "update"]),
    ("replicasets/status", &["update"]),
    ("deployments", &["update"]),
    ("deployments/status", &["update"]),
    ("poddisruptionbudgets/status", &["update"]),
];

/// An authorization decision that allows the request.
#[derive(Debug, PartialEq, Eq)]
enum Allowed {
    /// Allowed as is.
    Yes,
    /// Allowed only for a pod bound to this node (node authorizer + NodeRestriction for kubelets).
    IfPodOnNode(String),
}

/// Authorization decision for a resource request; Err = 403 message.
fn authorize(id: &Identity, verb: &str, t: &Target) -> Result<Allowed, String> {
    if id.groups.iter().any(|g| ADMIN_GROUPS.contains(&g.as_str())) {
        return Ok(Allowed::Yes);
    }
    let read = matches!(verb, "get" | "list" | "watch");
    let scope = match &t.ns {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".into(),
    };
    let resource = match &t.sub {
        Some(s) => format!("{}/{s}", t.res.plural),
        None => t.res.plural.to_string(),
    };
    let denied = || {
        Err(format!(
            "{}{} is forbidden: User \"{}\" cannot {verb} resource \"{resource}\" in API group \"{}\" {scope}",
            resource,
            t.name.as_deref().map(|n| format!(" \"{n}\"")).unwrap_or_default(),
            id.user,
            t.res.group
        ))
    };
    if let Some(node) = id.user.strip_prefix("system:node:") {
        if !id.groups.iter().any(|g| g == "system:nodes") {
            return denied();
        }
        // Node authorizer + NodeRestriction: reads of what a kubelet needs; writes only to its own Node/Lease
        // and to the pods bound to it (their status, and deleting them once their containers stopped).
        if read
            && matches!(
                t.res.plural,
                "nodes" | "pods" | "services" | "endpoints" | "namespaces" | "configmaps" | "leases"
            )
        {
            return Ok(Allowed::Yes);
        }
        let own = t.name.as_deref() == Some(node);
        match (resource.as_str(), verb) {
            ("nodes" | "nodes/status", "create" | "update" | "patch")
            | ("leases", "create" | "update" | "patch" | "get") => {
                let name = t.name.clone().unwrap_or_default();
                if own || (verb == "create" && t.name.is_none()) {
                    return Ok(Allowed::Yes);
                }
                return Err(format!(
                    "{} \"{name}\" is forbidden: node \"{node}\" is not allowed to modify {} \"{name}\"",
                    t.res.plural,
                    t.res.kind.to_lowercase()
                ));
            }
            ("pods/status", "update" | "patch") | ("pods", "delete") if t.name.is_some() => {
                return Ok(Allowed::IfPodOnNode(node.to_string()))
            }
            _ => return denied(),
        }
    }
    let writes = match id.user.as_str() {
        "system:kube-scheduler" => SCHEDULER_WRITES,
        "system:kube-controller-manager" => CONTROLLER_MANAGER_WRITES,
        _ => &[],
    };
    if writes.iter().any(|(res, verbs)| *res == resource && verbs.contains(&verb)) {
        return Ok(Allowed::Yes);
    }
    if READ_ONLY_USERS.contains(&id.user.as_str()) && read {
        return Ok(Allowed::Yes);
    }
    denied()
}

async fn handle(st: &State, req: Request) -> Response {
    let path = req.path.clone();
    if let Some(err) = &req.auth_error {
        log::error("authentication.go:73", "Unable to authenticate the request", &[("err", err.clone())]);
        return status(401, "Unauthorized", "Unauthorized");
    }
    // Authentication: a verified client cert, a service-account token, or anonymous.
    let mut identity = req.identity.clone();
    if let (None, Some(token)) = (&identity, req.authorization.strip_prefix("Bearer ")) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let v = crate::satoken::Verifier {
            keys: &st.s.sa_public,
            issuers: &st.s.sa_issuers,
            audiences: &st.s.audiences,
            now,
        };
        match crate::satoken::verify(token.trim(), &v) {
            Ok(id) => identity = Some(id),
            Err(err) => {
                log::error("authentication.go:73", "Unable to authenticate the request", &[("err", err)]);
                return status(401, "Unauthorized", "Unauthorized");
            }
        }
    }
    let Some(id) = identity else {
        if is_health(&path) && st.s.anonymous {
            return non_resource(st, &req).await;
        }
        if !st.s.anonymous {
            return status(401, "Unauthorized", "Unauthorized");
        }
        return status(
            403,
            "Forbidden",
            &format!(
                "forbidden: User \"system:anonymous\" cannot {} path \"{path}\"",
                req.method.to_lowercase()
            ),
        );
    };
    match parse_target(&path) {
        None => non_resource(st, &req).await,
        Some(Err(resp)) => resp,
        Some(Ok(t)) => {
            let watch = req.param("watch").is_some_and(|w| w == "true" || w == "1");
            let verb = verb_of(&req.method, &t, watch);
            let decision = match authorize(&id, verb, &t) {
                Ok(Allowed::IfPodOnNode(node)) => pods::bound_to(st, &t, &node, verb).await,
                other => other.map(|_| ()),
            };
            if let Err(msg) = decision {
                log::info(
                    "authorization.go:1",
                    "Forbidden",
                    &[("user", id.user.clone()), ("verb", verb.to_string()), ("path", path.clone())],
                );
                return status(403, "Forbidden", &msg);
            }
            match resource(st, &req, &t, verb).await {
                Ok(r) => r,
                Err(e) => {
                    log::error(
                        "status.go:71",
                        "apiserver received an error that is not an metav1.Status",
                        &[("err", e.clone())],
                    );
                    status(500, "InternalError", &format!("Internal error occurred: {e}"))
                }
            }
        }
    }
}

async fn non_resource(st: &State, req: &Request) -> Response {
    let v = st.s.version;
    match req.path.as_str() {
        "/healthz" | "/livez" => Response::text(200, "ok"),
        "/readyz" => match tokio::time::timeout(st.s.ready_timeout, st.etcd.list("/registry/health")).await {
            Ok(Ok(_)) => Response::text(200, "ok"),
            _ => Response::text(
                500,
                "[+]ping ok\n[+]log ok\n[-]etcd failed: reason withheld\nreadyz check failed\n",
            ),
        },
        "/version" | "/version/" => Response::json(
            200,
            &json!({"major": v.major.to_string(), "minor": v.minor.to_string(), "emulationMajor": v.major.to_string(), "emulationMinor": v.minor.to_string(),
                "minCompatibilityMajor": v.major.to_string(), "minCompatibilityMinor": (v.minor - 1).to_string(),
                "gitVersion": v.to_string(), "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
                "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.25", "compiler": "gc", "platform": "linux/amd64"}),
        ),
        "/api" => Response::json(
            200,
            &json!({"kind":"APIVersions","versions":["v1"],"serverAddressByClientCIDRs":[{"clientCIDR":"0.0.0.0/0","serverAddress":format!("{}:{}", st.s.bind, st.s.port)}]}),
        ),
        "/apis" => {
            let mut groups: Vec<&str> = RESOURCES.iter().map(|r| r.group).filter(|g| !g.is_empty()).collect();
            groups.dedup();
            let list: Vec<Value> = groups
                .iter()
                .map(|g| json!({"name": g, "versions":[{"groupVersion": format!("{g}/v1"), "version":"v1"}], "preferredVersion": {"groupVersion": format!("{g}/v1"), "version":"v1"}}))
                .collect();
            Response::json(200, &json!({"kind":"APIGroupList","apiVersion":"v1","groups": list}))
        }
        "/openapi/v3" => {
            let mut gvs: Vec<String> = RESOURCES.iter().map(|r| gv_path(r.group, r.version)).collect();
            gvs.dedup();
            let paths: serde_json::Map<String, Value> = gvs
                .into_iter()
                .map(|gv| {
                    let url = format!("/openapi/v3/{gv}?hash={}", st.s.version);
                    (gv, json!({"serverRelativeURL": url}))
                })
                .collect();
            Response::json(200, &json!({"paths": paths}))
        }
        p if p.starts_with("/openapi/v3/") => openapi_gv(&p["/openapi/v3/".len()..]),
        "/openid/v1/jwks" => {
            let keys: Vec<Value> = st.s.sa_public.iter().filter_map(|k| pki::jwk_of_spki(k)).collect();
            Response::json(200, &json!({"keys": keys}))
        }
        p => {
            let segs: Vec<&str> = p.trim_matches('/').split('/').collect();
            let (group, version) = match segs.as_slice() {
                ["api", v] => ("", *v),
                ["apis", g, v] => (*g, *v),
                _ => return status(404, "NotFound", "the server could not find the requested resource"),
            };
            let rs: Vec<&Resource> =
                RESOURCES.iter().filter(|r| r.group == group && r.version == version).collect();
            if rs.is_empty() {
                return status(404, "NotFound", "the server could not find the requested resource");
            }
            let verbs = json!(["create", "delete", "get", "list", "patch", "update", "watch"]);
            let mut resources: Vec<Value> = rs
                .iter()
                .map(|r| json!({"name": r.plural, "singularName": r.kind.to_lowercase(), "namespaced": r.namespaced, "kind": r.kind, "verbs": verbs, "shortNames": r.short}))
                .collect();
            for r in rs.iter().filter(|r| has_status(r)) {
                resources.push(json!({"name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get","patch","update"]}));
            }
            for r in rs.iter().filter(|r| scale::has_scale(r.plural)) {
                resources.push(json!({"name": format!("{}/scale", r.plural), "singularName": "", "namespaced": r.namespaced, "group": "autoscaling", "version": "v1", "kind": "Scale", "verbs": ["get","patch","update"]}));
            }
            if group.is_empty() {
                resources.push(json!({"name":"pods/binding","singularName":"","namespaced":true,"kind":"Binding","verbs":["create"]}));
                resources.push(json!({"name":"pods/eviction","singularName":"","namespaced":true,"group":"policy","version":"v1","kind":"Eviction","verbs":["create"]}));
            }
            let gv = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
            Response::json(
                200,
                &json!({"kind":"APIResourceList","apiVersion":"v1","groupVersion": gv, "resources": resources}),
            )
        }
    }
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// A minimal OpenAPI v3 document per group-version: the operations with their GVK and the
/// `fieldValidation` query parameter, which is what kubectl checks before choosing server-side field
/// validation. Schemas are not published (the double does not validate fields).
fn openapi_gv(gv: &str) -> Response {
    let rs: Vec<&Resource> = RESOURCES.iter().filter(|r| gv_path(r.group, r.version) == gv).collect();
    if rs.is_empty() {
        return status(404, "NotFound", "the server could not find the requested resource");
    }
    let mut paths = serde_json::Map::new();
    for r in rs {
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let params = json!([{"name":"fieldValidation","in":"query","schema":{"type":"string","uniqueItems":true}},
            {"name":"dryRun","in":"query","schema":{"type":"string","uniqueItems":true}},
            {"name":"fieldManager","in":"query","schema":{"type":"string","uniqueItems":true}}]);
        let op = json!({"x-kubernetes-group-version-kind": gvk, "parameters": params, "responses": {}});
        let base = if r.namespaced {
            format!("/{gv}/namespaces/{{namespace}}/{}", r.plural)
        } else {
            format!("/{gv}/{}", r.plural)
        };
        paths.insert(base.clone(), json!({"post": op, "get": op}));
        paths.insert(format!("{base}/{{name}}"), json!({"get": op, "put": op, "patch": op, "delete": op}));
    }
    Response::json(
        200,
        &json!({"openapi":"3.0.0","info":{"title":"Kubernetes","version":"contract double"},"paths": paths,"components":{"schemas":{}}}),
    )
}

/// The etcd prefix a list or watch of `r` (in `ns`, or across namespaces) reads.
fn list_prefix(r: &Resource, ns: Option<&str>) -> String {
    match ns {
        Some(ns) if r.namespaced => format!("/registry/{}/{ns}/", r.etcd),
        _ => format!("/registry/{}/", r.etcd),
    }
}

/// Whether an etcd key under `prefix` is an object of the list: `/registry/services/specs/` must not pick up
/// a deeper prefix by accident.
fn in_scope(r: &Resource, ns: Option<&str>, prefix: &str, key: &str) -> bool {
    key.strip_prefix(prefix)
        .is_some_and(|rest| rest.split('/').count() == if r.namespaced && ns.is_none() { 2 } else { 1 })
}

/// An object as the apiserver serves it (Nodes with the node lifecycle controller's view of liveness).
fn served(r: &Resource, obj: Value, now: time::OffsetDateTime) -> Value {
    if r.plural == "nodes" {
        node_liveness(obj, now)
    } else {
        obj
    }
}

fn key_of(r: &Resource, ns: Option<&str>, name: &str) -> String {
    match ns {
        Some(ns) if r.namespaced => format!("/registry/{}/{ns}/{name}", r.etcd),
        _ => format!("/registry/{}/{name}", r.etcd),
    }
}

/// How long a Node may go without a heart-beat before it reads as `Ready=Unknown`
/// (kube-controller-manager's `--node-monitor-grace-period` default).
const NODE_GRACE_SECS: i64 = 40;

/// What the real node lifecycle controller (in kube-controller-manager) does to a Node whose kubelet
/// stopped posting status: its Ready condition turns Unknown. The double applies it when Nodes are read,
/// so a dead kubelet never looks Ready.
fn node_liveness(mut node: Value, now: time::OffsetDateTime) -> Value {
    let Some(conds) = node["status"]["conditions"].as_array_mut() else { return node };
    let stale = conds
        .iter()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["lastHeartbeatTime"].as_str())
        .is_some_and(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .is_ok_and(|t| (now - t).whole_seconds() > NODE_GRACE_SECS)
        });
    if stale {
        for c in conds.iter_mut() {
            c["status"] = json!("Unknown");
            c["reason"] = json!("NodeStatusUnknown");
            c["message"] = json!("Kubelet stopped posting node status.");
        }
    }
    node
}

fn with_rv(mut obj: Value, rv: i64) -> Value {
    obj["metadata"]["resourceVersion"] = json!(rv.to_string());
    obj
}

fn not_found(r: &Resource, name: &str) -> Response {
    let what = if r.group.is_empty() { r.plural.to_string() } else { format!("{}.{}", r.plural, r.group) };
    Response::json(
        404,
        &json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":format!("{what} \"{name}\" not found"),"reason":"NotFound","details":{"name":name,"group":r.group,"kind":r.plural},"code":404}),
    )
}

/// Label selector match: `a=b`, `a==b`, `a!=b`, `a`, `!a`.
fn labels_match(obj: &Value, selector: &str) -> bool {
    let labels = &obj["metadata"]["labels"];
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        if let Some((k, v)) = term.split_once("!=") {
            labels[k.trim()].as_str() != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            labels[k.trim()].as_str() == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            labels[k.trim()].is_null()
        } else {
            !labels[term.trim()].is_null()
        }
    })
}

/// Field selector match for the fields kubectl uses.
fn fields_match(obj: &Value, selector: &str) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (k, v, neg) = match term.split_once("!=") {
            Some((k, v)) => (k, v, true),
            None => match term.split_once("==").or_else(|| term.split_once('=')) {
                Some((k, v)) => (k, v, false),
                None => return false,
            },
        };
        let actual = k.trim().split('.').fold(obj, |o, p| &o[p]).as_str().unwrap_or("");
        (actual == v.trim()) != neg
    })
}

/// JSON merge patch (RFC 7386); strategic-merge directives (`$patch`, `$setElementOrder/...`,
/// `$retainKeys`) are dropped, lists are replaced.
fn merge_patch(target: &mut Value, patch: &Value) {
    match (target.as_object_mut(), patch.as_object()) {
        (Some(t), Some(p)) => {
            for (k, v) in p {
                if k.starts_with('$') {
                    continue;
                }
                if v.is_null() {
                    t.remove(k);
                } else if v.is_object() && t.get(k).is_some_and(Value::is_object) {
                    merge_patch(t.get_mut(k).expect("present"), v);
                } else {
                    let mut v = v.clone();
                    strip_directives(&mut v);
                    t.insert(k.clone(), v);
                }
            }
        }
        _ => {
            let mut v = patch.clone();
            strip_directives(&mut v);
            *target = v;
        }
    }
}

fn strip_directives(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !k.starts_with('$'));
            m.values_mut().for_each(strip_directives);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_directives),
        _ => {}
    }
}

fn parse_body(req: &Request) -> Result<Value, Response> {
    let parsed = if req.content_type.contains("yaml") {
        serde_yaml::from_slice::<Value>(&req.body).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice::<Value>(&req.body).map_err(|e| e.to_string())
    };
    parsed.map_err(|e| {
        status(400, "BadRequest", &format!("the body of the request was in an unknown format: {e}"))
    })
}

async fn resource(st: &State, req: &Request, t: &Target, verb: &str) -> Result<Response, String> {
    let r = t.res;
    let ns = t.ns.as_deref();
    if r.namespaced && ns.is_none() && t.name.is_some() {
        return Ok(status(404, "NotFound", "the server could not find the requested resource"));
    }
    match verb {
        "watch" => watch::serve(st, req, t).await,
        "get" | "update" | "patch" if t.sub.as_deref() == Some("scale") && scale::has_scale(r.plural) => {
            scale::serve(st, req, t, verb).await
        }
        "list" => {
            let prefix = list_prefix(r, ns);
            let (kvs, rv) = st.etcd.list(&prefix).await?;
            let label_sel = req.param("labelSelector").unwrap_or_default();
            let field_sel = req.param("fieldSelector").unwrap_or_default();
            let now = time::OffsetDateTime::now_utc();
            let items: Vec<Value> = kvs
                .into_iter()
                .filter(|kv| in_scope(r, ns, &prefix, &kv.key))
                .map(|kv| served(r, with_rv(kv.value, kv.mod_revision), now))
                .filter(|o| labels_match(o, &label_sel) && fields_match(o, &field_sel))
                .collect();
            if req.accept.contains("as=Table") {
                if let Some(table) = tables::table(r, &items, &rv.to_string()) {
                    return Ok(tables::response(&table));
                }
            }
            Ok(Response::json(
                200,
                &json!({"kind": format!("{}List", r.kind), "apiVersion": api_version(r), "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
            ))
        }
        "get" => {
            let name = t.name.as_deref().unwrap_or_default();
            let Some(kv) = st.etcd.get(&key_of(r, ns, name)).await? else { return Ok(not_found(r, name)) };
            let rv = kv.mod_revision.to_string();
            let obj = served(r, with_rv(kv.value, kv.mod_revision), time::OffsetDateTime::now_utc());
            if req.accept.contains("as=Table") && t.sub.is_none() {
                if let Some(table) = tables::table(r, std::slice::from_ref(&obj), &rv) {
                    return Ok(tables::response(&table));
                }
            }
            Ok(Response::json(200, &obj))
        }
        "create" if t.sub.as_deref() == Some("eviction") && r.plural == "pods" => {
            pods::evict(st, req, ns.unwrap_or_default(), t.name.as_deref().unwrap_or_default()).await
        }
        "create" if t.sub.as_deref() == Some("binding") && r.plural == "pods" => {
            pods::bind(st, req, ns.unwrap_or_default(), t.name.as_deref().unwrap_or_default()).await
        }
        "create" if t.sub.is_some() => Ok(status(
            405,
            "MethodNotAllowed",
            &format!("create of {}/{} is not supported", r.plural, t.sub.as_deref().unwrap_or_default()),
        )),
        "create" => {
            let mut obj = match parse_body(req) {
                Ok(o) => o,
                Err(resp) => return Ok(resp),
            };
            create(st, r, ns, &mut obj).await
        }
        "update" | "patch" => {
            let name = t.name.clone().unwrap_or_default();
            let key = key_of(r, ns, &name);
            let body = match parse_body(req) {
                Ok(o) => o,
                Err(resp) => return Ok(resp),
            };
            // Read, change, and write only if nobody wrote in between (retrying patches; an update that named
            // a resourceVersion gets 409), like the real apiserver's GuaranteedUpdate: a kubelet's status
            // heart-beat never loses a label that `kubectl label` set a moment before.
            for _attempt in 0..20 {
                let existing = st.etcd.get(&key).await?;
                let apply = req.content_type.contains("apply-patch");
                let Some(existing) = existing else {
                    if apply || (verb == "update" && t.sub.is_none()) {
                        let mut obj = body.clone();
                        obj["metadata"]["name"] = json!(name);
                        return create(st, r, ns, &mut obj).await;
                    }
                    return Ok(not_found(r, &name));
                };
                let mut obj = existing.value.clone();
                let conflict = || {
                    status(409, "Conflict", &format!("Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again", r.plural))
                };
                let named_rv = verb == "update" && body["metadata"]["resourceVersion"].as_str().is_some();
                if verb == "update" {
                    if let Some(rv) = body["metadata"]["resourceVersion"].as_str() {
                        if rv != existing.mod_revision.to_string() {
                            return Ok(conflict());
                        }
                    }
                    obj = body.clone();
                } else {
                    merge_patch(&mut obj, &body);
                }
                // Status subresource writes touch only status; main-resource writes never touch status.
                if t.sub.as_deref() == Some("status") {
                    let mut merged = existing.value.clone();
                    merged["status"] = obj["status"].clone();
                    obj = merged;
                } else if has_status(r) && !existing.value["status"].is_null() {
                    obj["status"] = existing.value["status"].clone();
                }
                for keep in ["uid", "creationTimestamp", "name", "namespace"] {
                    if !existing.value["metadata"][keep].is_null() {
                        obj["metadata"][keep] = existing.value["metadata"][keep].clone();
                    }
                }
                // Fields only the registry writes: deletion marks and the generation.
                for system in ["deletionTimestamp", "deletionGracePeriodSeconds", "generation"] {
                    match &existing.value["metadata"][system] {
                        Value::Null => {
                            if let Some(m) = obj["metadata"].as_object_mut() {
                                m.remove(system);
                            }
                        }
                        v => obj["metadata"][system] = v.clone(),
                    }
                }
                if has_generation(r) {
                    let generation = existing.value["metadata"]["generation"].as_i64().unwrap_or(1);
                    let changed = t.sub.is_none() && existing.value["spec"] != obj["spec"];
                    obj["metadata"]["generation"] = json!(generation + i64::from(changed));
                }
                obj["apiVersion"] = json!(api_version(r));
                obj["kind"] = json!(r.kind);
                if let Some(m) = obj["metadata"].as_object_mut() {
                    m.remove("resourceVersion");
                }
                // Upstream's GuaranteedUpdate: an update that changes nothing is not written, unless the
                // stored value is stale (written with another key or provider than the first).
                let mut stored = existing.value.clone();
                if let Some(m) = stored["metadata"].as_object_mut() {
                    m.remove("resourceVersion");
                }
                if obj == stored && !existing.stale {
                    return Ok(Response::json(200, &with_rv(obj, existing.mod_revision)));
                }
                match st.etcd.put_if(&key, &obj, existing.mod_revision).await? {
                    Some(rev) => return Ok(Response::json(200, &with_rv(obj, rev))),
                    None if named_rv => return Ok(conflict()),
                    None => continue,
                }
            }
            Ok(status(
                409,
                "Conflict",
                &format!("{} \"{name}\" kept changing while it was being written", r.plural),
            ))
        }
        "delete" if r.plural == "pods" => {
            let name = t.name.clone().unwrap_or_default();
            pods::delete(st, &key_of(r, ns, &name), &name, &pods::DeleteOptions::of(req)).await
        }
        "delete" => {
            let name = t.name.clone().unwrap_or_default();
            let key = key_of(r, ns, &name);
            let Some(existing) = st.etcd.get(&key).await? else { return Ok(not_found(r, &name)) };
            if r.plural == "namespaces" {
                // Like the real API: the namespace turns Terminating and its content goes away in the
                // background (the real namespace controller runs in kube-controller-manager; the double
                // does it here after a short delay so later deletes of its objects still find them).
                if matches!(name.as_str(), "default" | "kube-system" | "kube-public") {
                    return Ok(status(
                        403,
                        "Forbidden",
                        &format!("namespaces \"{name}\" is forbidden: this namespace may not be deleted"),
                    ));
                }
                let mut obj = existing.value.clone();
                obj["status"]["phase"] = json!("Terminating");
                obj["metadata"]["deletionTimestamp"] = json!(now());
                let rev = st.etcd.put(&key, &obj).await?;
                let etcd = st.etcd.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
                    for other in RESOURCES.iter().filter(|o| o.namespaced) {
                        let _ = etcd.delete(&format!("/registry/{}/{name}/", other.etcd), true).await;
                    }
                    let _ = etcd.delete(&key, false).await;
                });
                return Ok(Response::json(200, &with_rv(obj, rev)));
            }
            st.etcd.delete(&key, false).await?;
            Ok(Response::json(200, &with_rv(existing.value, existing.mod_revision)))
        }
        _ => Ok(status(
            405,
            "MethodNotAllowed",
            &format!("{verb} is not supported by the kube-apiserver contract double"),
        )),
    }
}

async fn create(st: &State, r: &Resource, ns: Option<&str>, obj: &mut Value) -> Result<Response, String> {
    if !obj.is_object() {
        return Ok(status(400, "BadRequest", "object expected"));
    }
    let body_kind = obj["kind"].as_str().unwrap_or(r.kind);
    if body_kind != r.kind {
        return Ok(status(
            400,
            "BadRequest",
            &format!(
                "the API version in the data ({}) does not match the expected API version ({})",
                obj["apiVersion"],
                api_version(r)
            ),
        ));
    }
    let mut name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    if name.is_empty() {
        match obj["metadata"]["generateName"].as_str() {
            Some(g) => name = format!("{g}{}", crate::objects::random_suffix(5)),
            None => {
                return Ok(status(
                    422,
                    "Invalid",
                    &format!(
                        "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                        r.kind
                    ),
                ))
            }
        }
    }
    if r.namespaced {
        let ns = ns
            .map(String::from)
            .or_else(|| obj["metadata"]["namespace"].as_str().map(String::from))
            .unwrap_or_else(|| "default".into());
        let ns_obj = st.etcd.get(&format!("/registry/namespaces/{ns}")).await?;
        if ns_obj.as_ref().is_some_and(|n| n.value["status"]["phase"] == "Terminating") {
            return Ok(Response::json(
                403,
                &json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":format!("{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated", r.plural),"reason":"Forbidden","details":{"name":name,"kind":r.plural,"causes":[{"reason":"NamespaceTerminating","message":format!("namespace {ns} is being terminated"),"field":"metadata.namespace"}]},"code":403}),
            ));
        }
        if ns_obj.is_none() {
            return Ok(Response::json(
                404,
                &json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":format!("namespaces \"{ns}\" not found"),"reason":"NotFound","details":{"name":ns,"kind":"namespaces"},"code":404}),
            ));
        }
        obj["metadata"]["namespace"] = json!(ns);
    }
    let key = key_of(r, obj["metadata"]["namespace"].as_str(), &name);
    if st.etcd.get(&key).await?.is_some() {
        let what =
            if r.group.is_empty() { r.plural.to_string() } else { format!("{}.{}", r.plural, r.group) };
        return Ok(Response::json(
            409,
            &json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":format!("{what} \"{name}\" already exists"),"reason":"AlreadyExists","details":{"name":name,"group":r.group,"kind":r.plural},"code":409}),
        ));
    }
    obj["metadata"]["name"] = json!(name);
    obj["metadata"]["uid"] = json!(new_uid());
    obj["metadata"]["creationTimestamp"] = json!(now());
    obj["apiVersion"] = json!(api_version(r));
    obj["kind"] = json!(r.kind);
    if let Some(m) = obj["metadata"].as_object_mut() {
        m.remove("resourceVersion");
        m.remove("generateName");
    }
    if r.plural == "namespaces" {
        obj["status"] = json!({"phase":"Active"});
    }
    if let Some(s) = initial_status(r) {
        obj["status"] = s;
    }
    if has_generation(r) {
        obj["metadata"]["generation"] = json!(1);
    }
    if r.plural == "pods" {
        pods::prepare_create(obj);
    }
    let rev = st.etcd.put(&key, obj).await?;
    Ok(Response::json(201, &with_rv(obj.clone(), rev)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_ip_and_selectors() {
        assert_eq!(first_service_ip("10.96.0.0/12").unwrap().to_string(), "10.96.0.1");
        assert_eq!(first_service_ip("fd00:10:96::/112").unwrap().to_string(), "fd00:10:96::1");
        assert!(first_service_ip("10.96.0.0").is_err());
        let pod =
            json!({"metadata":{"name":"a","namespace":"ns","labels":{"app":"x"}},"spec":{"nodeName":"n1"}});
        assert!(fields_match(&pod, "spec.nodeName=n1"));
        assert!(!fields_match(&pod, "spec.nodeName=n2"));
        assert!(fields_match(&pod, "metadata.name=a,metadata.namespace=ns"));
        assert!(labels_match(&pod, "app=x"));
        assert!(!labels_match(&pod, "app!=x"));
        assert!(labels_match(&pod, "!other"));
    }

    #[test]
    fn node_may_only_modify_itself() {
        let id = Identity { user: "system:node:a".into(), groups: vec!["system:nodes".into()] };
        let nodes = find("", "v1", "nodes").unwrap();
        let t = |name: &str| Target { res: nodes, ns: None, name: Some(name.into()), sub: None };
        assert!(authorize(&id, "patch", &t("a")).is_ok());
        assert!(authorize(&id, "patch", &t("b")).unwrap_err().contains("not allowed to modify node \"b\""));
        assert!(authorize(&id, "delete", &t("a")).is_err());
        assert!(authorize(&id, "get", &t("b")).is_ok());
        let proxy = Identity { user: "system:kube-proxy".into(), groups: vec![] };
        assert!(authorize(&proxy, "list", &t("b")).is_ok());
        assert!(authorize(&proxy, "delete", &t("b")).is_err());
        let admin =
            Identity { user: "kubernetes-admin".into(), groups: vec!["kubeadm:cluster-admins".into()] };
        assert!(authorize(&admin, "delete", &t("b")).is_ok());
        let nobody = Identity { user: "someone".into(), groups: vec!["system:nodes".into()] };
        assert!(authorize(&nobody, "get", &t("b")).is_err());
    }

    #[test]
    fn component_writes_are_those_of_the_default_roles() {
        let t = |g: &str, plural: &str, sub: Option<&str>| Target {
            res: find(g, "v1", plural).unwrap(),
            ns: Some("default".into()),
            name: Some("x".into()),
            sub: sub.map(String::from),
        };
        let sched = Identity { user: "system:kube-scheduler".into(), groups: vec![] };
        assert_eq!(authorize(&sched, "create", &t("", "pods", Some("binding"))), Ok(Allowed::Yes));
        assert_eq!(authorize(&sched, "patch", &t("", "pods", Some("status"))), Ok(Allowed::Yes));
        assert_eq!(authorize(&sched, "delete", &t("", "pods", None)), Ok(Allowed::Yes));
        assert!(authorize(&sched, "create", &t("", "pods", None)).is_err());
        assert!(authorize(&sched, "update", &t("apps", "replicasets", None)).is_err());
        assert!(authorize(&sched, "create", &t("", "pods", Some("eviction"))).is_err());
        let kcm = Identity { user: "system:kube-controller-manager".into(), groups: vec![] };
        for (g, plural, sub, verb) in [
            ("", "pods", None, "create"),
            ("", "pods", None, "delete"),
            ("apps", "replicasets", None, "create"),
            ("apps", "replicasets", None, "update"),
            ("apps", "replicasets", Some("status"), "update"),
            ("apps", "deployments", Some("status"), "update"),
            ("policy", "poddisruptionbudgets", Some("status"), "update"),
        ] {
            assert_eq!(
                authorize(&kcm, verb, &t(g, plural, sub)),
                Ok(Allowed::Yes),
                "{verb} {plural} {sub:?}"
            );
        }
        for (g, plural, sub, verb) in [
            ("", "pods", Some("binding"), "create"),
            ("apps", "deployments", None, "create"),
            ("apps", "deployments", None, "delete"),
            ("apps", "deployments", Some("status"), "patch"),
            ("policy", "poddisruptionbudgets", None, "update"),
            ("", "configmaps", None, "create"),
            ("", "nodes", None, "patch"),
        ] {
            let e = authorize(&kcm, verb, &t(g, plural, sub)).unwrap_err();
            assert!(e.contains("User \"system:kube-controller-manager\" cannot"), "{e}");
        }
        let node = Identity { user: "system:node:a".into(), groups: vec!["system:nodes".into()] };
        assert_eq!(
            authorize(&node, "patch", &t("", "pods", Some("status"))),
            Ok(Allowed::IfPodOnNode("a".into()))
        );
        assert_eq!(authorize(&node, "delete", &t("", "pods", None)), Ok(Allowed::IfPodOnNode("a".into())));
        assert!(authorize(&node, "create", &t("", "pods", Some("binding"))).is_err());
        assert!(authorize(&node, "update", &t("apps", "replicasets", None)).is_err());
    }

    #[test]
    fn silent_kubelet_turns_unknown() {
        let node = json!({"status":{"conditions":[
            {"type":"MemoryPressure","status":"False","lastHeartbeatTime":"2026-01-01T00:00:00Z"},
            {"type":"Ready","status":"True","lastHeartbeatTime":"2026-01-01T00:00:00Z"}]}});
        let t0 = time::macros::datetime!(2026-01-01 0:00:30 UTC);
        assert_eq!(node_liveness(node.clone(), t0)["status"]["conditions"][1]["status"], "True");
        let t1 = time::macros::datetime!(2026-01-01 0:00:41 UTC);
        let n = node_liveness(node, t1);
        assert_eq!(n["status"]["conditions"][1]["status"], "Unknown");
        assert_eq!(n["status"]["conditions"][0]["status"], "Unknown");
        assert_eq!(n["status"]["conditions"][1]["reason"], "NodeStatusUnknown");
    }

    #[test]
    fn merge_patch_semantics() {
        let mut node = json!({"spec":{"unschedulable":true,"podCIDR":"x"},"metadata":{"labels":{"a":"1"}}});
        merge_patch(
            &mut node,
            &json!({"spec":{"unschedulable":null},"metadata":{"labels":{"b":"2"}},"$setElementOrder/x":[1]}),
        );
        assert_eq!(node, json!({"spec":{"podCIDR":"x"},"metadata":{"labels":{"a":"1","b":"2"}}}));
    }
}
