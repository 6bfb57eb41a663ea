//! Rendering: the content of every file kubeforge places on a host, as a pure function of the cluster
//! model (and the few generated secrets passed in), so output is deterministic and an unchanged inventory
//! gives byte-identical files, which is what makes a re-apply a no-op.
//!
//! Text formats (systemd units, sysctl, modules-load, containerd TOML) come from Tera templates embedded
//! in the binary; YAML/JSON configs (KubeletConfiguration, KubeProxyConfiguration, EncryptionConfiguration,
//! the audit Policy, the CNI conflist) are serde values. Flags are chosen from those every supported
//! Kubernetes version accepts; `extraArgs` from the inventory override or extend them.

use crate::model::{ClusterModel, Component, HostModel, LOCAL_LB_PORT};
use ipnet::IpNet;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// Remote paths, in one place.
pub mod paths {
    /// Binaries.
    pub const BIN: &str = "/usr/local/bin";
    /// Kubernetes configuration.
    pub const KUBE: &str = "/etc/kubernetes";
    /// PKI.
    pub const PKI: &str = "/etc/kubernetes/pki";
    /// etcd data.
    pub const ETCD_DATA: &str = "/var/lib/etcd";
    /// systemd units.
    pub const UNITS: &str = "/etc/systemd/system";
    /// Audit log.
    pub const AUDIT_LOG: &str = "/var/log/kubernetes/audit.log";
    /// containerd's socket.
    pub const CONTAINERD_SOCK: &str = "unix:///run/containerd/containerd.sock";
}
use paths::*;

/// Pause image for pod sandboxes (what containerd pulls for every pod).
pub const SANDBOX_IMAGE: &str = "registry.k8s.io/pause:3.10";

fn tera() -> &'static tera::Tera {
    static T: OnceLock<tera::Tera> = OnceLock::new();
    T.get_or_init(|| {
        let mut t = tera::Tera::default();
        t.add_raw_templates([
            ("unit", include_str!("../../templates/systemd/component.service.tera")),
            ("pod-routes", include_str!("../../templates/systemd/pod-routes.service.tera")),
            ("modules", include_str!("../../templates/os/modules-load.conf.tera")),
            ("sysctl", include_str!("../../templates/os/sysctl.conf.tera")),
            ("containerd", include_str!("../../templates/containerd/config.toml.tera")),
            ("containerd-v3", include_str!("../../templates/containerd/config-v3.toml.tera")),
        ])
        .expect("embedded templates parse");
        t
    })
}

fn render(name: &str, ctx: &tera::Context) -> String {
    tera().render(name, ctx).unwrap_or_else(|e| panic!("template {name}: {e:?}"))
}

/// Flags as an ordered map (name without dashes → value), so `extraArgs` can override by name.
pub type Flags = BTreeMap<String, String>;

fn flags(pairs: &[(&str, String)], extra: Option<&BTreeMap<String, String>>) -> Flags {
    let mut m: Flags = pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    if let Some(e) = extra {
        for (k, v) in e {
            m.insert(k.replace('_', "-"), v.clone());
        }
    }
    m
}

/// `--name=value` arguments as words of a systemd `ExecStart=` line: `%` and `$` escaped (systemd expands
/// specifiers and variables), and a value with spaces, quotes, backslashes or control characters quoted
/// as one word, so that no value can split into further arguments or lines.
pub fn to_args(f: &Flags) -> Vec<String> {
    f.iter().map(|(k, v)| systemd_word(&format!("--{k}={v}"))).collect()
}

fn systemd_word(arg: &str) -> String {
    let escaped = arg.replace('%', "%%").replace('$', "$$");
    if !escaped.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '\\' | ';')) {
        return escaped;
    }
    let mut out = String::from("\"");
    for c in escaped.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c if c.is_ascii_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A systemd unit for a component.
pub fn unit(component: Component, exec: &str, args: Vec<String>, docs: &str) -> String {
    let mut c = tera::Context::new();
    let (desc, after, wants, notify, oom): (&str, Vec<&str>, Vec<&str>, bool, Option<i32>) = match component {
        Component::Etcd => (
            "etcd key-value store (kubeforge)",
            vec!["network-online.target"],
            vec!["network-online.target"],
            true,
            Some(-900),
        ),
        Component::KubeApiserver => (
            "Kubernetes API server (kubeforge)",
            vec!["network-online.target", "etcd.service"],
            vec!["network-online.target"],
            false,
            Some(-900),
        ),
        Component::KubeControllerManager => {
            ("Kubernetes controller manager (kubeforge)", vec!["kube-apiserver.service"], vec![], false, None)
        }
        Component::KubeScheduler => {
            ("Kubernetes scheduler (kubeforge)", vec!["kube-apiserver.service"], vec![], false, None)
        }
        Component::ApiLoadBalancer => (
            "Node-local Kubernetes API load balancer (kubeforge)",
            vec!["network-online.target"],
            vec!["network-online.target"],
            false,
            Some(-900),
        ),
        Component::Kubelet => (
            "Kubernetes node agent (kubeforge)",
            vec!["containerd.service", "kube-api-lb.service"],
            vec!["containerd.service"],
            false,
            Some(-999),
        ),
        Component::KubeProxy => (
            "Kubernetes network proxy (kubeforge)",
            vec!["network-online.target", "kube-api-lb.service"],
            vec![],
            false,
            None,
        ),
        Component::ContainerRuntime => (
            "containerd container runtime (kubeforge)",
            vec!["network-online.target"],
            vec![],
            true,
            Some(-999),
        ),
    };
    c.insert("description", desc);
    c.insert("documentation", docs);
    c.insert("after", &after);
    c.insert("wants", &wants);
    c.insert("notify", &notify);
    c.insert("oom_score_adjust", &oom);
    // etcd's heartbeats, fsyncs and the quorum reads behind every apiserver's readiness must not wait behind
    // a node's other work (a kubelet pulling images, binaries being replaced during an upgrade): its CPU and
    // disk priority are raised, as etcd's tuning guide advises for disk (`ionice -c2 -n0`).
    c.insert("priority", &matches!(component, Component::Etcd));
    c.insert("runtime", &matches!(component, Component::ContainerRuntime));
    c.insert("exec", exec);
    c.insert("args", &args);
    render("unit", &c)
}

/// etcd flags for a member. Timing is relaxed (250 ms heartbeat, 2.5 s election) because members on slow or
/// busy machines otherwise lose leadership under load; it costs only slower failover.
pub fn etcd_flags(m: &ClusterModel, h: &HostModel, initial_state: &str) -> Flags {
    let ip = h.internal_ip;
    flags(
        &[
            ("name", h.name.clone()),
            ("data-dir", ETCD_DATA.into()),
            ("listen-client-urls", format!("{},https://127.0.0.1:2379", crate::model::url(ip, 2379))),
            ("advertise-client-urls", crate::model::url(ip, 2379)),
            ("listen-peer-urls", crate::model::url(ip, 2380)),
            ("initial-advertise-peer-urls", crate::model::url(ip, 2380)),
            (
                "initial-cluster",
                h.etcd_bootstrap
                    .as_ref()
                    .map(|b| b.initial_cluster.clone())
                    .unwrap_or_else(|| m.etcd_initial_cluster()),
            ),
            (
                "initial-cluster-state",
                h.etcd_bootstrap.as_ref().map(|b| b.state.clone()).unwrap_or_else(|| initial_state.into()),
            ),
            ("initial-cluster-token", format!("kubeforge-{}", m.name)),
            ("cert-file", format!("{PKI}/etcd/server.crt")),
            ("key-file", format!("{PKI}/etcd/server.key")),
            ("trusted-ca-file", format!("{PKI}/etcd/ca.crt")),
            ("client-cert-auth", "true".into()),
            ("peer-cert-file", format!("{PKI}/etcd/peer.crt")),
            ("peer-key-file", format!("{PKI}/etcd/peer.key")),
            ("peer-trusted-ca-file", format!("{PKI}/etcd/ca.crt")),
            ("peer-client-cert-auth", "true".into()),
            ("listen-metrics-urls", "http://127.0.0.1:2381".into()),
            ("heartbeat-interval", "250".into()),
            ("election-timeout", "2500".into()),
        ],
        m.extra_args.get("etcd"),
    )
}

/// The TLS 1.2 cipher suites the apiserver and the kubelet offer: ECDHE key exchange with AEAD ciphers only,
/// the strong set of the CIS benchmark (TLS 1.3 suites are not configurable and all strong).
pub const TLS12_CIPHER_SUITES: &[&str] = &[
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
];

/// kube-apiserver flags.
pub fn apiserver_flags(m: &ClusterModel, h: &HostModel) -> Flags {
    flags(
        &[
            ("advertise-address", h.internal_ip.to_string()),
            ("allow-privileged", "true".into()),
            ("audit-log-maxage", "30".into()),
            ("audit-log-maxbackup", "10".into()),
            ("audit-log-maxsize", "100".into()),
            ("audit-log-path", AUDIT_LOG.into()),
            ("audit-policy-file", format!("{KUBE}/audit-policy.yaml")),
            ("authorization-mode", "Node,RBAC".into()),
            ("bind-address", "0.0.0.0".into()),
            ("client-ca-file", format!("{PKI}/ca.crt")),
            ("enable-admission-plugins", "NodeRestriction".into()),
            ("encryption-provider-config", format!("{KUBE}/encryption-config.yaml")),
            ("etcd-cafile", format!("{PKI}/etcd/ca.crt")),
            ("etcd-certfile", format!("{PKI}/apiserver-etcd-client.crt")),
            ("etcd-keyfile", format!("{PKI}/apiserver-etcd-client.key")),
            // A control plane that is an etcd member talks to its own member only, as kubeadm's stacked
            // topology does: its readiness reflects its own member (the balancers route around a host whose
            // member is sick, and a busy host does not slow the others' apiservers), and a member joining or
            // leaving restarts no apiserver. A control plane without a member gets every member.
            (
                "etcd-servers",
                if h.roles.etcd {
                    crate::model::url(std::net::Ipv4Addr::LOCALHOST.into(), 2379)
                } else {
                    m.etcd_client_urls()
                },
            ),
            // The kubelets' serving certificates are signed by the cluster CA: verify them (CIS 1.2.5).
            ("kubelet-certificate-authority", format!("{PKI}/ca.crt")),
            ("kubelet-client-certificate", format!("{PKI}/apiserver-kubelet-client.crt")),
            ("kubelet-client-key", format!("{PKI}/apiserver-kubelet-client.key")),
            ("kubelet-preferred-address-types", "InternalIP,Hostname".into()),
            ("profiling", "false".into()),
            ("proxy-client-cert-file", format!("{PKI}/front-proxy-client.crt")),
            ("proxy-client-key-file", format!("{PKI}/front-proxy-client.key")),
            ("requestheader-allowed-names", "front-proxy-client".into()),
            ("requestheader-client-ca-file", format!("{PKI}/front-proxy-ca.crt")),
            ("requestheader-extra-headers-prefix", "X-Remote-Extra-".into()),
            ("requestheader-group-headers", "X-Remote-Group".into()),
            ("requestheader-username-headers", "X-Remote-User".into()),
            ("secure-port", "6443".into()),
            // Projected tokens expire when they say (no year-long extension for old clients; CIS 1.2.30).
            ("service-account-extend-token-expiration", "false".into()),
            ("service-account-issuer", m.service_account_issuer()),
            ("service-account-key-file", format!("{PKI}/sa.pub")),
            ("service-account-signing-key-file", format!("{PKI}/sa.key")),
            ("service-cluster-ip-range", m.service_cidr.to_string()),
            ("tls-cert-file", format!("{PKI}/apiserver.crt")),
            ("tls-cipher-suites", TLS12_CIPHER_SUITES.join(",")),
            ("tls-min-version", "VersionTLS12".into()),
            ("tls-private-key-file", format!("{PKI}/apiserver.key")),
        ],
        m.extra_args.get("kube-apiserver"),
    )
}

/// kube-controller-manager flags. Node CIDRs are not allocated by it: with the bridge CNI kubeforge assigns
/// each node its pod subnet itself ([`pod_subnet`]); with a manifest CNI the plugin does its own IPAM.
pub fn controller_manager_flags(m: &ClusterModel) -> Flags {
    let kc = format!("{KUBE}/controller-manager.conf");
    flags(
        &[
            ("authentication-kubeconfig", kc.clone()),
            ("authorization-kubeconfig", kc.clone()),
            ("bind-address", "127.0.0.1".into()),
            ("client-ca-file", format!("{PKI}/ca.crt")),
            ("cluster-name", m.name.clone()),
            // One certificate, the CA that signs now: kube-controller-manager refuses a file with more
            // (`ca.crt` holds two during a CA rotation).
            ("cluster-signing-cert-file", format!("{PKI}/ca-signer.crt")),
            ("cluster-signing-key-file", format!("{PKI}/ca.key")),
            ("kubeconfig", kc),
            ("leader-elect", "true".into()),
            ("profiling", "false".into()),
            ("requestheader-client-ca-file", format!("{PKI}/front-proxy-ca.crt")),
            ("root-ca-file", format!("{PKI}/ca.crt")),
            ("service-account-private-key-file", format!("{PKI}/sa.key")),
            ("service-cluster-ip-range", m.service_cidr.to_string()),
            // The default, written out: the benchmark asks for a deliberate value (CIS 1.3.1).
            ("terminated-pod-gc-threshold", "12500".into()),
            ("use-service-account-credentials", "true".into()),
        ],
        m.extra_args.get("kube-controller-manager"),
    )
}

/// kube-scheduler flags; its own kubeconfig and leader election are in its configuration file, because the
/// `--kubeconfig` flag is deprecated for the scheduler.
pub fn scheduler_flags(m: &ClusterModel) -> Flags {
    let kc = format!("{KUBE}/scheduler.conf");
    flags(
        &[
            ("authentication-kubeconfig", kc.clone()),
            ("authorization-kubeconfig", kc),
            ("bind-address", "127.0.0.1".into()),
            ("config", format!("{KUBE}/scheduler-config.yaml")),
        ],
        m.extra_args.get("kube-scheduler"),
    )
}

/// The KubeSchedulerConfiguration (the scheduler decodes it strictly: only fields of the v1 API).
pub fn scheduler_config() -> String {
    let v = json!({
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": format!("{KUBE}/scheduler.conf")},
        // The `--profiling` flag is deprecated for the scheduler; this field replaces it (CIS 1.4.1).
        "enableProfiling": false,
        "leaderElection": {"leaderElect": true},
    });
    serde_yaml::to_string(&v).expect("yaml")
}

/// kubelet flags (everything else is in its configuration file).
pub fn kubelet_flags(m: &ClusterModel, h: &HostModel) -> Flags {
    flags(
        &[
            ("config", "/var/lib/kubelet/config.yaml".into()),
            ("kubeconfig", format!("{KUBE}/kubelet.conf")),
            ("node-ip", h.internal_ip.to_string()),
            ("hostname-override", h.name.clone()),
        ],
        m.extra_args.get("kubelet"),
    )
}

/// kube-proxy flags.
pub fn kube_proxy_flags(m: &ClusterModel) -> Flags {
    flags(&[("config", "/var/lib/kube-proxy/config.yaml".into())], m.extra_args.get("kube-proxy"))
}

/// The KubeletConfiguration. Node labels and the control-plane taint are not set here: NodeRestriction
/// forbids kubelets to label themselves `node-role.kubernetes.io/*`; the addons phase applies them.
pub fn kubelet_config(m: &ClusterModel) -> String {
    serde_yaml::to_string(&kubelet_config_value(m)).expect("yaml")
}

fn kubelet_config_value(m: &ClusterModel) -> serde_json::Value {
    json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": true},
            "x509": {"clientCAFile": format!("{PKI}/ca.crt")}
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "systemd",
        "clusterDNS": [m.dns_service_ip.to_string()],
        "clusterDomain": m.cluster_domain,
        "containerRuntimeEndpoint": CONTAINERD_SOCK,
        // The default, written out: the benchmark asks for a deliberate value (CIS 4.2.8).
        "eventRecordQPS": 50,
        "failSwapOn": true,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "makeIPTablesUtilChains": true,
        // The kubelet refuses to start when the kernel settings it relies on differ (os-prep sets them).
        "protectKernelDefaults": true,
        "readOnlyPort": 0,
        // kubeforge renews the kubelet's certificates itself (`apply`, a third of their validity before
        // they expire, and `certs renew`): the store stays the one source of truth (see the README).
        "rotateCertificates": false,
        "serverTLSBootstrap": false,
        "tlsCertFile": "/var/lib/kubelet/pki/kubelet.crt",
        "tlsCipherSuites": TLS12_CIPHER_SUITES,
        "tlsMinVersion": "VersionTLS12",
        "tlsPrivateKeyFile": "/var/lib/kubelet/pki/kubelet.key",
    })
}

/// The KubeProxyConfiguration for a node.
pub fn kube_proxy_config(m: &ClusterModel, h: &HostModel) -> String {
    let v = json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": format!("{KUBE}/kube-proxy.conf")},
        "clusterCIDR": m.pod_cidr.to_string(),
        "healthzBindAddress": "0.0.0.0:10256",
        "hostnameOverride": h.name,
        "metricsBindAddress": "127.0.0.1:10249",
        "mode": "iptables",
    });
    serde_yaml::to_string(&v).expect("yaml")
}

/// Encryption at rest for Secrets with the cluster's key and the provider it is for (secretbox for new
/// clusters, aescbc for clusters made before; see [`crate::at_rest`]), or, during a rotation, the keys of
/// the rotation's step, the writing key first ([`crate::at_rest::Keys::rendered`]); identity last so data
/// written before encryption was enabled stays readable.
///
/// Keys of one provider that follow each other go into that provider's one `keys` list (a secretbox →
/// secretbox rotation: one `secretbox` entry with both keys). Two entries of the same provider would not
/// work: the apiserver hands a value to the first provider whose prefix (`k8s:enc:secretbox:v1:`) it
/// carries, and that provider's error (no key of that name) is final.
pub fn encryption_config(keys: &crate::at_rest::Keys) -> String {
    let mut grouped: Vec<(&str, Vec<serde_json::Value>)> = Vec::new();
    for k in keys.rendered() {
        let key = json!({"name": k.name, "secret": k.secret});
        match grouped.last_mut() {
            Some((p, ks)) if *p == k.provider.name() => ks.push(key),
            _ => grouped.push((k.provider.name(), vec![key])),
        }
    }
    let mut providers: Vec<serde_json::Value> =
        grouped.into_iter().map(|(p, ks)| json!({p: {"keys": ks}})).collect();
    providers.push(json!({"identity": {}}));
    let v = json!({
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "EncryptionConfiguration",
        "resources": [{
            "resources": crate::at_rest::RESOURCES,
            "providers": providers
        }]
    });
    serde_yaml::to_string(&v).expect("yaml")
}

/// The audit policy: metadata for everything, no bodies (Secrets never reach the log), health and read-only
/// node noise left out.
pub fn audit_policy() -> String {
    let v = json!({
        "apiVersion": "audit.k8s.io/v1",
        "kind": "Policy",
        "omitStages": ["RequestReceived"],
        "rules": [
            {"level": "None", "nonResourceURLs": ["/healthz*", "/livez*", "/readyz*", "/version"]},
            {"level": "None", "users": ["system:kube-proxy"], "verbs": ["watch"]},
            {"level": "Metadata"}
        ]
    });
    serde_yaml::to_string(&v).expect("yaml")
}

/// The size of each node's pod subnet with the bridge CNI: a /24 (IPv4) or /64 (IPv6) of the pod CIDR.
pub fn pod_subnet_prefix(pod_cidr: &IpNet) -> u8 {
    let prefix = match pod_cidr {
        IpNet::V4(_) => 24,
        IpNet::V6(_) => 64,
    };
    prefix.max(pod_cidr.prefix_len())
}

/// The node's pod subnet with the bridge CNI: allocated per node name and recorded in the cluster state
/// ([`crate::state::ClusterState::allocate_pod_subnets`]), so it never moves while the node exists.
pub fn pod_subnet(_m: &ClusterModel, h: &HostModel) -> Option<IpNet> {
    h.pod_subnet
}

/// The bridge CNI conflist for a node.
pub fn cni_conflist(m: &ClusterModel, h: &HostModel) -> Option<String> {
    let subnet = pod_subnet(m, h)?;
    let v = json!({
        "cniVersion": "0.4.0",
        "name": "kubeforge",
        "plugins": [
            {"type": "bridge", "bridge": "kf0", "isGateway": true, "ipMasq": true, "hairpinMode": true,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet.to_string()}]], "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "loopback"}
        ]
    });
    Some(serde_json::to_string_pretty(&v).expect("json") + "\n")
}

/// The unit that routes the other nodes' pod subnets via those nodes.
pub fn pod_routes_unit(m: &ClusterModel, h: &HostModel) -> String {
    let routes: Vec<serde_json::Value> = m
        .nodes()
        .filter(|n| n.name != h.name)
        .filter_map(|n| {
            pod_subnet(m, n).map(|s| json!({"subnet": s.to_string(), "via": n.internal_ip.to_string()}))
        })
        .collect();
    let mut c = tera::Context::new();
    c.insert("routes", &routes);
    render("pod-routes", &c)
}

/// `/etc/modules-load.d/kubeforge.conf`.
pub fn modules_load() -> String {
    render("modules", &tera::Context::new())
}

/// `/etc/sysctl.d/99-kubeforge.conf`.
pub fn sysctl() -> String {
    render("sysctl", &tera::Context::new())
}

/// `/etc/containerd/config.toml` for the containerd kubeforge installs (`Some(version)`, from the release
/// source) or the host's own (`None`). containerd 2.x gets its own format, version 3 (CRI split into the
/// `io.containerd.cri.v1.images` and `io.containerd.cri.v1.runtime` plugins; `bin_dirs` from 2.1 on, where
/// `bin_dir` is deprecated); containerd 1.x and a distribution's containerd of unknown version get version
/// 2, which 1.6/1.7 read and 2.x migrates when it starts. A move from 1.7 to 2.x (a runtime upgrade)
/// therefore rewrites the file in the new format.
pub fn containerd_config(release: Option<&str>) -> String {
    let mut c = tera::Context::new();
    c.insert("sandbox_image", SANDBOX_IMAGE);
    let parts: Vec<u32> = release
        .unwrap_or("")
        .trim_start_matches('v')
        .split('.')
        .take(2)
        .filter_map(|p| p.parse().ok())
        .collect();
    match parts.as_slice() {
        [major, minor] if *major >= 2 => {
            c.insert("cni_bin_dirs", &(*major > 2 || *minor >= 1));
            render("containerd-v3", &c)
        }
        _ => render("containerd", &c),
    }
}

/// `/etc/crictl.yaml`.
pub fn crictl_config() -> String {
    serde_yaml::to_string(
        &json!({"runtime-endpoint": CONTAINERD_SOCK, "image-endpoint": CONTAINERD_SOCK, "timeout": 10}),
    )
    .expect("yaml")
}

/// Where the node-local balancer reads the cluster CA that its `/readyz` checks verify backends with.
pub const API_LB_CA: &str = "/etc/kubernetes/kube-api-lb/ca.crt";

/// The node-local balancer's flags: every control plane's apiserver, each asked for `/readyz` (verified
/// against the cluster CA) every 2 s, so a backend that is starting, stopping or cut off from etcd leaves
/// the rotation.
pub fn api_lb_args(m: &ClusterModel) -> Vec<String> {
    let mut v = vec![
        format!("--listen=127.0.0.1:{LOCAL_LB_PORT}"),
        format!("--ca-file={API_LB_CA}"),
        "--health-interval=2s".to_string(),
    ];
    v.extend(m.control_planes().map(|h| match h.internal_ip {
        std::net::IpAddr::V6(ip) => format!("--backend=[{ip}]:6443"),
        ip => format!("--backend={ip}:6443"),
    }));
    v
}

/// Flags kubeforge sets that `extraArgs` may still override: defaults that tune a component rather than
/// hold the cluster together or keep it secure.
pub const TUNABLE_FLAGS: &[(&str, &str)] = &[
    ("etcd", "heartbeat-interval"),
    ("etcd", "election-timeout"),
    ("kube-apiserver", "audit-log-maxage"),
    ("kube-apiserver", "audit-log-maxbackup"),
    ("kube-apiserver", "audit-log-maxsize"),
    ("kube-apiserver", "kubelet-preferred-address-types"),
    ("kubelet", "fail-swap-on"),
];

/// The flags kubeforge sets for a component (by its `extraArgs` name), without dashes: the names the
/// `*_flags` functions above produce, and for the kubelet also the flags that would override a field of
/// the KubeletConfiguration kubeforge writes (kubelet flags take precedence over its config file). The
/// names do not depend on the cluster, so they are computed once on a minimal model.
pub fn owned_flags(component: &str) -> &'static std::collections::BTreeSet<String> {
    use std::collections::BTreeSet;
    static OWNED: OnceLock<BTreeMap<&'static str, BTreeSet<String>>> = OnceLock::new();
    static NONE: BTreeSet<String> = BTreeSet::new();
    let all = OWNED.get_or_init(|| {
        use crate::inventory::{ClusterSpec, HostSpec, Inventory, Loaded};
        let inventory = Inventory {
            cluster: ClusterSpec {
                name: "c".into(),
                kubernetes_version: "v1.35.0".into(),
                ..Default::default()
            },
            ssh: Default::default(),
            hosts: vec![HostSpec {
                name: "n".into(),
                address: "10.0.0.1".into(),
                roles: vec!["control-plane".into(), "etcd".into(), "worker".into()],
                ..Default::default()
            }],
        };
        let loaded = Loaded {
            inventory,
            path: "owned-flags.yaml".into(),
            dir: ".".into(),
            positions: Default::default(),
            parse_problems: Vec::new(),
            warnings: Vec::new(),
        };
        let m = ClusterModel::derive(&loaded);
        let h = &m.hosts[0];
        let names = |f: Flags| f.into_keys().collect::<BTreeSet<String>>();
        let mut kubelet = names(kubelet_flags(&m, h));
        kubelet.extend(config_flag_names(&kubelet_config_value(&m)));
        BTreeMap::from([
            ("etcd", names(etcd_flags(&m, h, "new"))),
            ("kube-apiserver", names(apiserver_flags(&m, h))),
            ("kube-controller-manager", names(controller_manager_flags(&m))),
            ("kube-scheduler", names(scheduler_flags(&m))),
            ("kubelet", kubelet),
            ("kube-proxy", names(kube_proxy_flags(&m))),
        ])
    });
    all.get(component).unwrap_or(&NONE)
}

/// The kubelet flags that set the fields of a KubeletConfiguration: nested fields by the kubelet's own
/// names for them, top-level ones by their kebab-case (`clusterDNS` → `cluster-dns`).
fn config_flag_names(config: &serde_json::Value) -> Vec<String> {
    fn kebab(camel: &str) -> String {
        let chars: Vec<char> = camel.chars().collect();
        let mut out = String::new();
        for (i, &c) in chars.iter().enumerate() {
            if c.is_ascii_uppercase() && i > 0 {
                let prev_lower = chars[i - 1].is_ascii_lowercase() || chars[i - 1].is_ascii_digit();
                let next_lower = chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
                if prev_lower || (chars[i - 1].is_ascii_uppercase() && next_lower) {
                    out.push('-');
                }
            }
            out.push(c.to_ascii_lowercase());
        }
        out
    }
    let nested = [
        ("authentication", "anonymous", "anonymous-auth"),
        ("authentication", "webhook", "authentication-token-webhook"),
        ("authentication", "x509", "client-ca-file"),
        ("authorization", "mode", "authorization-mode"),
    ];
    let mut out = Vec::new();
    let Some(obj) = config.as_object() else { return out };
    for (k, v) in obj {
        match k.as_str() {
            "apiVersion" | "kind" => {}
            "serverTLSBootstrap" => out.push("rotate-server-certificates".into()),
            // Fields whose flags are not their kebab-case.
            "eventRecordQPS" => out.push("event-qps".into()),
            "makeIPTablesUtilChains" => out.push("make-iptables-util-chains".into()),
            _ if v.is_object() => {
                for (top, field, flag) in nested {
                    if k == top && v.get(field).is_some() {
                        out.push(flag.into());
                    }
                }
            }
            _ => out.push(kebab(k)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn model(version: &str) -> ClusterModel {
        let text = format!(
            "cluster: {{name: c, kubernetesVersion: {version}}}\nhosts:\n\
             - {{name: cp1, address: 10.0.0.1, roles: [control-plane, etcd]}}\n\
             - {{name: cp2, address: 10.0.0.2, roles: [control-plane, etcd]}}\n\
             - {{name: cp3, address: 10.0.0.3, roles: [control-plane, etcd]}}\n\
             - {{name: w1, address: 10.0.0.4, roles: [worker]}}\n"
        );
        ClusterModel::derive(&crate::inventory::parse(std::path::Path::new("t.yaml"), &text).unwrap())
    }

    /// A service-account key rotation changes what `sa.key` and `sa.pub` hold, never the flags: at every
    /// step the apiserver verifies with every key of `sa.pub` and signs with `sa.key`, and the
    /// controller-manager signs legacy tokens with the same `sa.key`. The wait before the old key goes is
    /// computed from these flags: projected tokens are not extended, so it is the kubelet's 3607 s (plus 5
    /// min for clocks).
    #[test]
    fn the_service_account_flags_name_the_files_a_rotation_rewrites_and_bound_its_wait() {
        let m = model("v1.35.7");
        let cp = m.control_planes().next().unwrap();
        let api = apiserver_flags(&m, cp);
        let cm = controller_manager_flags(&m);
        assert_eq!(api["service-account-key-file"], "/etc/kubernetes/pki/sa.pub");
        assert_eq!(api["service-account-signing-key-file"], "/etc/kubernetes/pki/sa.key");
        assert_eq!(cm["service-account-private-key-file"], "/etc/kubernetes/pki/sa.key");
        assert_eq!(api["service-account-extend-token-expiration"], "false");
        assert!(!api.contains_key("service-account-max-token-expiration"));
        let (wait, why) = crate::sa_key::token_wait(&api);
        assert_eq!((wait.as_secs(), why.contains("3607 s")), (3607 + 300, true), "{why}");
        // An extraArgs cap is the bound instead.
        let text = "cluster: {name: c, kubernetesVersion: v1.35.7, \
             extraArgs: {kube-apiserver: {service-account-max-token-expiration: 2h}}}\nhosts:\n\
             - {name: cp1, address: 10.0.0.1, roles: [control-plane, etcd]}\n";
        let m = ClusterModel::derive(&crate::inventory::parse(std::path::Path::new("t.yaml"), text).unwrap());
        let api = apiserver_flags(&m, m.control_planes().next().unwrap());
        assert_eq!(api["service-account-max-token-expiration"], "2h");
        assert_eq!(crate::sa_key::token_wait(&api).0.as_secs(), 7200 + 300);
    }

    #[test]
    fn containerd_2_gets_config_version_3_and_a_unit_that_keeps_containers_across_restarts() {
        let v3 = containerd_config(Some("v2.1.9"));
        assert!(v3.contains("\nversion = 3\n") && !v3.contains("io.containerd.grpc.v1.cri"), "{v3}");
        assert!(v3.contains(
            "[plugins.'io.containerd.cri.v1.images'.pinned_images]\n  sandbox = \"registry.k8s.io/pause:"
        ));
        assert!(v3.contains("[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]"));
        assert!(v3.contains("bin_dirs = [\"/opt/cni/bin\"]") && !v3.contains("bin_dir ="), "{v3}");
        // containerd 2.0 has no `bin_dirs` yet.
        let v20 = containerd_config(Some("v2.0.6"));
        assert!(v20.contains("version = 3") && v20.contains("bin_dir = \"/opt/cni/bin\""), "{v20}");
        for old in [Some("v1.7.29"), None] {
            let v2 = containerd_config(old);
            assert!(
                v2.contains("\nversion = 2\n") && v2.contains("[plugins.\"io.containerd.grpc.v1.cri\"]"),
                "{v2}"
            );
        }
        let unit =
            unit(Component::ContainerRuntime, "/usr/local/bin/containerd", vec![], "https://containerd.io");
        assert!(
            unit.contains("\nKillMode=process\nDelegate=yes\n") && unit.contains("Type=notify"),
            "{unit}"
        );
        let kubelet = unit_for_test(Component::Kubelet);
        assert!(!kubelet.contains("KillMode"), "{kubelet}");
    }

    fn unit_for_test(c: Component) -> String {
        unit(c, "/usr/local/bin/x", vec![], "https://kubernetes.io")
    }

    #[test]
    fn encryption_at_rest_uses_the_stores_provider_and_an_old_clusters_file_is_unchanged() {
        use crate::at_rest::{EncryptionKey, Provider};
        let secret = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".to_owned();
        // A cluster made before secretbox (its store has an aescbc key) gets, byte for byte, the file
        // kubeforge wrote for it then: its apiservers are not restarted and a re-apply changes nothing.
        let aescbc = encryption_config(&EncryptionKey::first(Provider::Aescbc, secret.clone()).into());
        assert_eq!(
            aescbc,
            format!(
                "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- providers:\n  \
                 - aescbc:\n      keys:\n      - name: kubeforge-1\n        secret: {secret}\n  - identity: {{}}\n  \
                 resources:\n  - secrets\n"
            )
        );
        let secretbox = encryption_config(&EncryptionKey::first(Provider::Secretbox, secret.clone()).into());
        assert_eq!(
            secretbox,
            aescbc.replace("- aescbc:", "- secretbox:"),
            "the same file with secretbox first"
        );
    }

    #[test]
    fn a_rotation_lists_keys_of_one_provider_in_one_entry_the_writing_key_first() {
        use crate::at_rest::{EncryptionKey, Keys, Provider, Rotation, Step};
        let secret = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let providers = |old: Provider, step: Step| {
            let old = EncryptionKey::first(old, secret);
            let new = EncryptionKey {
                name: "kubeforge-2".into(),
                ..EncryptionKey::first(Provider::Secretbox, secret)
            };
            let keys = Keys { current: old.clone(), rotation: Some(Rotation { step, old, new }) };
            let doc: serde_yaml::Value = serde_yaml::from_str(&encryption_config(&keys)).unwrap();
            doc["resources"][0]["providers"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|p| {
                    let (name, body) = p.as_mapping().unwrap().iter().next().unwrap();
                    let keys: Vec<&str> = body["keys"]
                        .as_sequence()
                        .into_iter()
                        .flatten()
                        .map(|k| k["name"].as_str().unwrap())
                        .collect();
                    format!("{}{keys:?}", name.as_str().unwrap())
                })
                .collect::<Vec<_>>()
        };
        let sb = Provider::Secretbox;
        assert_eq!(
            providers(sb, Step::ReadBoth),
            ["secretbox[\"kubeforge-1\", \"kubeforge-2\"]", "identity[]"]
        );
        assert_eq!(
            providers(sb, Step::WriteNew),
            ["secretbox[\"kubeforge-2\", \"kubeforge-1\"]", "identity[]"]
        );
        assert_eq!(providers(sb, Step::DropOld), ["secretbox[\"kubeforge-2\"]", "identity[]"]);
        assert_eq!(
            providers(Provider::Aescbc, Step::WriteNew),
            ["secretbox[\"kubeforge-2\"]", "aescbc[\"kubeforge-1\"]", "identity[]"]
        );
    }

    #[test]
    fn the_kubelet_event_qps_is_written_out_and_never_zero() {
        // v1.37 changed the meaning of `eventRecordQPS: 0` from "the default, 50" to "no limit" (Urgent
        // Upgrade Note, PR 117119). kubeforge writes the value itself, so the change cannot reach its
        // clusters as long as it is not 0; and `--event-qps` cannot be set through extraArgs.
        for v in ["v1.35.8", "v1.36.4", "v1.37.1"] {
            let c: serde_yaml::Value = serde_yaml::from_str(&kubelet_config(&model(v))).unwrap();
            assert_eq!(c["eventRecordQPS"].as_u64(), Some(50), "{v}");
        }
        assert!(owned_flags("kubelet").contains("event-qps"));
        assert!(!TUNABLE_FLAGS.contains(&("kubelet", "event-qps")));
    }

    /// The flag names a component of `minor` accepts, from the reference lists the doubles also enforce.
    fn known(component: &str, minor: u32) -> BTreeSet<String> {
        let path = format!(
            "{}/tests/doubles/reference/flags/v1.{minor}/{component}.txt",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        text.lines()
            .filter(|l| l.starts_with("--"))
            .filter(|l| l.split('\t').nth(3).is_none_or(|d| d != "deprecated"))
            .map(|l| l.split('\t').next().unwrap().trim_start_matches('-').to_owned())
            .collect()
    }

    #[test]
    fn every_rendered_flag_exists_and_is_not_deprecated_in_each_version() {
        for (version, minor) in [("v1.34.10", 34), ("v1.35.7", 35)] {
            let m = model(version);
            let cp = m.host("cp1").unwrap();
            for (component, f) in [
                ("kube-apiserver", apiserver_flags(&m, cp)),
                ("kube-controller-manager", controller_manager_flags(&m)),
                ("kube-scheduler", scheduler_flags(&m)),
                ("kubelet", kubelet_flags(&m, cp)),
                ("kube-proxy", kube_proxy_flags(&m)),
            ] {
                let k = known(component, minor);
                for name in f.keys() {
                    assert!(k.contains(name), "{component} {version}: --{name} is not a valid, current flag");
                }
            }
        }
    }

    #[test]
    fn flags_come_from_the_model() {
        let m = model("v1.35.7");
        let cp = m.host("cp2").unwrap();
        let a = apiserver_flags(&m, cp);
        assert_eq!(a["advertise-address"], "10.0.0.2");
        assert_eq!(
            a["etcd-servers"], "https://127.0.0.1:2379",
            "a stacked control plane uses its own member"
        );
        // A control plane without a member of its own uses every member.
        let text = "cluster: {name: c, kubernetesVersion: v1.35.7}\nhosts:\n\
             - {name: e1, address: 10.0.0.1, roles: [etcd]}\n\
             - {name: e2, address: 10.0.0.2, roles: [etcd]}\n\
             - {name: e3, address: 10.0.0.3, roles: [etcd]}\n\
             - {name: cp1, address: 10.0.0.4, roles: [control-plane]}\n";
        let ext =
            ClusterModel::derive(&crate::inventory::parse(std::path::Path::new("t.yaml"), text).unwrap());
        assert_eq!(
            apiserver_flags(&ext, ext.host("cp1").unwrap())["etcd-servers"],
            "https://10.0.0.1:2379,https://10.0.0.2:2379,https://10.0.0.3:2379"
        );
        assert_eq!(a["service-cluster-ip-range"], "10.96.0.0/12");
        let e = etcd_flags(&m, cp, "new");
        assert_eq!(
            e["initial-cluster"],
            "cp1=https://10.0.0.1:2380,cp2=https://10.0.0.2:2380,cp3=https://10.0.0.3:2380"
        );
        assert_eq!(
            api_lb_args(&m),
            [
                "--listen=127.0.0.1:7443",
                "--ca-file=/etc/kubernetes/kube-api-lb/ca.crt",
                "--health-interval=2s",
                "--backend=10.0.0.1:6443",
                "--backend=10.0.0.2:6443",
                "--backend=10.0.0.3:6443"
            ]
        );
        let k: serde_yaml::Value = serde_yaml::from_str(&kubelet_config(&m)).unwrap();
        assert_eq!(k["clusterDNS"][0], "10.96.0.10");
        assert_eq!(k["cgroupDriver"], "systemd");
    }

    #[test]
    fn every_node_gets_its_own_pod_subnet_and_routes_to_the_others() {
        let m = model("v1.35.7");
        let subnets: Vec<String> = m.nodes().map(|n| pod_subnet(&m, n).unwrap().to_string()).collect();
        assert_eq!(subnets, ["10.244.0.0/24", "10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24"]);
        let routes = pod_routes_unit(&m, m.host("w1").unwrap());
        assert!(routes.contains("ExecStart=/sbin/ip route replace 10.244.0.0/24 via 10.0.0.1"), "{routes}");
        assert!(!routes.contains("10.244.3.0/24"), "no route to its own subnet");
        assert!(cni_conflist(&m, m.host("w1").unwrap()).unwrap().contains("10.244.3.0/24"));
    }

    #[test]
    fn extra_args_override_and_units_escape_percent() {
        let text = "cluster: {name: c, kubernetesVersion: v1.35.7, extraArgs: {kube-apiserver: {audit-log-maxage: \"7\", v: \"2\"}}}\nhosts:\n\
                    - {name: n, address: 10.0.0.1, roles: [control-plane, etcd, worker]}\n";
        let m = ClusterModel::derive(&crate::inventory::parse(std::path::Path::new("t.yaml"), text).unwrap());
        let f = apiserver_flags(&m, m.host("n").unwrap());
        assert_eq!(f["audit-log-maxage"], "7");
        assert_eq!(f["v"], "2");
        let u = unit(
            Component::KubeApiserver,
            "/usr/local/bin/kube-apiserver",
            vec!["--x=100%".into()],
            "https://kubernetes.io/docs/",
        );
        assert!(u.contains("ExecStart=/usr/local/bin/kube-apiserver \\\n  --x=100%"), "{u}");
        assert!(!u.contains("Nice="), "only etcd runs at a raised priority: {u}");
        let e = unit(Component::Etcd, "/usr/local/bin/etcd", vec![], "https://etcd.io/docs/");
        assert!(e.contains("\nNice=-10\nIOSchedulingClass=best-effort\nIOSchedulingPriority=0\n"), "{e}");
        let _ = to_args(&f);
        assert_eq!(to_args(&[("a".to_string(), "5%".to_string())].into_iter().collect()), ["--a=5%%"]);
    }

    #[test]
    fn a_value_never_splits_into_more_arguments_or_lines() {
        let args = |v: &str| to_args(&[("a".to_string(), v.to_string())].into_iter().collect());
        assert_eq!(args("x --anonymous-auth=true"), ["\"--a=x --anonymous-auth=true\""]);
        assert_eq!(args("$HOME"), ["--a=$$HOME"]);
        assert_eq!(args("say \"hi\" \\o/"), [r#""--a=say \"hi\" \\o/""#]);
        assert_eq!(args("a\nExecStartPre=/bin/sh"), [r#""--a=a\x0aExecStartPre=/bin/sh""#]);
        assert_eq!(args("a;b"), ["\"--a=a;b\""]);
    }

    #[test]
    fn owned_flags_come_from_the_rendered_flags_and_the_kubelet_config() {
        let api = owned_flags("kube-apiserver");
        for f in [
            "service-cluster-ip-range",
            "authorization-mode",
            "etcd-servers",
            "client-ca-file",
            "tls-cert-file",
        ] {
            assert!(api.contains(f), "{f}");
        }
        assert!(!api.contains("anonymous-auth") && !api.contains("v"));
        let kubelet = owned_flags("kubelet");
        for f in [
            "node-ip",
            "anonymous-auth",
            "authorization-mode",
            "client-ca-file",
            "cluster-dns",
            "rotate-server-certificates",
            "authentication-token-webhook",
        ] {
            assert!(kubelet.contains(f), "{f}");
        }
        assert!(owned_flags("etcd").contains("initial-cluster"));
        assert!(owned_flags("kube-proxy").contains("config"));
        assert!(owned_flags("nope").is_empty());
        for (c, f) in TUNABLE_FLAGS {
            assert!(owned_flags(c).contains(*f), "{c} {f} is not set by kubeforge");
        }
    }

    fn field_paths(prefix: &str, v: &serde_yaml::Value, out: &mut Vec<String>) {
        if let serde_yaml::Value::Mapping(m) = v {
            for (k, val) in m {
                let k = k.as_str().unwrap();
                let p = if prefix.is_empty() { k.to_owned() } else { format!("{prefix}.{k}") };
                if val.is_mapping() {
                    field_paths(&p, val, out);
                } else {
                    out.push(p);
                }
            }
        }
    }

    #[test]
    fn every_config_field_exists_in_the_reference() {
        let m = model("v1.35.7");
        for (kind, text) in [
            ("KubeletConfiguration", kubelet_config(&m)),
            ("KubeProxyConfiguration", kube_proxy_config(&m, m.host("w1").unwrap())),
            ("KubeSchedulerConfiguration", scheduler_config()),
        ] {
            let path = format!("{}/tests/doubles/reference/config/{kind}.txt", env!("CARGO_MANIFEST_DIR"));
            let reference = std::fs::read_to_string(&path).unwrap();
            let known: BTreeSet<&str> = reference
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.split('\t').next())
                .collect();
            let mut fields = Vec::new();
            field_paths("", &serde_yaml::from_str(&text).unwrap(), &mut fields);
            for f in fields {
                assert!(known.contains(f.as_str()), "{kind}: field `{f}` is not in the reference");
            }
        }
    }
}
