//! Starting the real etcd and the doubles with the flags and configs a correct installer writes.
#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    bins::{self, free_port, Proc},
    pki::{Layout, Pki},
};

/// The two versions the bundle carries.
pub const V34: &str = "v1.34.10";
/// Newest.
pub const V35: &str = "v1.35.7";

/// A test environment: temp dir, PKI, stamped binaries.
pub struct Env {
    /// Temp dir (kept alive).
    pub tmp: tempfile::TempDir,
    /// PKI.
    pub pki: Pki,
    /// Layout.
    pub layout: Layout,
    /// Loopback IP used by this env (apiserver advertise address).
    pub ip: String,
    /// apiserver port.
    pub api_port: u16,
}

impl Env {
    /// New env on loopback IP `ip` (use a distinct 127.0.0.x per test).
    pub fn new(ip: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let api_port = free_port(ip);
        let layout = Layout {
            node: "cp1".into(),
            advertise: ip.into(),
            service_ip: "10.96.0.1".into(),
            domain: "cluster.local".into(),
            server: format!("https://{ip}:{api_port}"),
        };
        let pki = Pki::generate(tmp.path(), &layout);
        Self { tmp, pki, layout, ip: ip.into(), api_port }
    }

    /// Stamped binary path.
    pub fn bin(&self, component: &str, version: &str) -> PathBuf {
        bins::stamped(&self.tmp.path().join("bin"), component, version)
    }

    /// Path in the temp dir.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    /// Starts the real etcd with TLS on client and peer URLs; returns the process and client URL.
    pub fn start_etcd(&self) -> (Proc, String) {
        self.start_etcd_as("etcd-data", "pki/etcd/server")
    }

    /// [`Env::start_etcd`] with its data in `data` (below the temp dir) and the serving cert and key
    /// `<server>.crt`/`<server>.key` (below the PKI root).
    pub fn start_etcd_as(&self, data: &str, server: &str) -> (Proc, String) {
        let client = free_port(&self.ip);
        let peer = free_port(&self.ip);
        let url = format!("https://{}:{client}", self.ip);
        let peer_url = format!("https://{}:{peer}", self.ip);
        let p = |r: &str| self.pki.p(r);
        let args = vec![
            "--name".into(),
            "cp1".into(),
            "--data-dir".into(),
            self.path(data).to_string_lossy().into_owned(),
            "--listen-client-urls".into(),
            url.clone(),
            "--advertise-client-urls".into(),
            url.clone(),
            "--listen-peer-urls".into(),
            peer_url.clone(),
            "--initial-advertise-peer-urls".into(),
            peer_url.clone(),
            "--initial-cluster".into(),
            format!("cp1={peer_url}"),
            "--cert-file".into(),
            p(&format!("{server}.crt")),
            "--key-file".into(),
            p(&format!("{server}.key")),
            "--trusted-ca-file".into(),
            p("pki/etcd/ca.crt"),
            "--client-cert-auth".into(),
            "--peer-cert-file".into(),
            p("pki/etcd/peer.crt"),
            "--peer-key-file".into(),
            p("pki/etcd/peer.key"),
            "--peer-trusted-ca-file".into(),
            p("pki/etcd/ca.crt"),
            "--peer-client-cert-auth".into(),
        ];
        let etcd = which("etcd");
        let proc_ = Proc::start(&etcd, &args, &self.path(&format!("{data}.log")));
        let ok = bins::wait_for(Duration::from_secs(20), || bins::listening(&self.ip, client).then_some(()));
        assert!(ok.is_some(), "etcd did not start:\n{}", proc_.log_text());
        (proc_, url)
    }

    /// The apiserver flags a correct installer writes (kubeadm-like), as an ordered map.
    pub fn apiserver_flags(&self, etcd_url: &str) -> BTreeMap<String, String> {
        let p = |r: &str| self.pki.p(r);
        let mut m = BTreeMap::new();
        let mut set = |k: &str, v: String| {
            m.insert(k.to_string(), v);
        };
        set("advertise-address", self.ip.clone());
        set("bind-address", self.ip.clone());
        set("secure-port", self.api_port.to_string());
        set("allow-privileged", "true".into());
        set("authorization-mode", "Node,RBAC".into());
        set("client-ca-file", p("pki/ca.crt"));
        set("enable-admission-plugins", "NodeRestriction".into());
        set("etcd-servers", etcd_url.into());
        set("etcd-cafile", p("pki/etcd/ca.crt"));
        set("etcd-certfile", p("pki/apiserver-etcd-client.crt"));
        set("etcd-keyfile", p("pki/apiserver-etcd-client.key"));
        set("kubelet-client-certificate", p("pki/apiserver-kubelet-client.crt"));
        set("kubelet-client-key", p("pki/apiserver-kubelet-client.key"));
        set("kubelet-preferred-address-types", "InternalIP,ExternalIP,Hostname".into());
        set("proxy-client-cert-file", p("pki/front-proxy-client.crt"));
        set("proxy-client-key-file", p("pki/front-proxy-client.key"));
        set("requestheader-client-ca-file", p("pki/front-proxy-ca.crt"));
        set("requestheader-allowed-names", "front-proxy-client".into());
        set("requestheader-extra-headers-prefix", "X-Remote-Extra-".into());
        set("requestheader-group-headers", "X-Remote-Group".into());
        set("requestheader-username-headers", "X-Remote-User".into());
        set("service-account-issuer", "https://kubernetes.default.svc.cluster.local".into());
        set("service-account-key-file", p("pki/sa.pub"));
        set("service-account-signing-key-file", p("pki/sa.key"));
        set("service-cluster-ip-range", "10.96.0.0/12".into());
        set("tls-cert-file", p("pki/apiserver.crt"));
        set("tls-private-key-file", p("pki/apiserver.key"));
        m
    }

    /// Starts the apiserver double with `flags`; waits until /livez answers or the process exits.
    pub fn start_apiserver(&self, version: &str, flags: &BTreeMap<String, String>, log: &str) -> Proc {
        let args = to_args(flags);
        let mut proc_ = Proc::start(&self.bin("kube-apiserver", version), &args, &self.path(log));
        let port = self.api_port;
        let ip = self.ip.clone();
        bins::wait_for(Duration::from_secs(20), || {
            (proc_.exited().is_some() || bins::listening(&ip, port)).then_some(())
        });
        proc_
    }
}

impl Env {
    /// Starts a kubelet double for `node` with node IP `ip` (serving on `ip`, its own client and serving
    /// certs, the KubeletConfiguration an installer writes) against the container runtime at `runtime`.
    pub fn start_kubelet(&self, version: &str, node: &str, ip: &str, runtime: &str) -> Proc {
        self.pki.kubelet(&self.layout, node, ip);
        let p = |r: &str| self.pki.p(r);
        let (port, hport) = (free_port(ip), free_port(ip));
        let cfg = self.path(&format!("kubelet-{node}.yaml"));
        std::fs::write(
            &cfg,
            format!(
                "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: {ip}
port: {port}
healthzBindAddress: {ip}
healthzPort: {hport}
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {ca}
authorization:
  mode: Webhook
tlsCertFile: {crt}
tlsPrivateKeyFile: {key}
cgroupDriver: systemd
clusterDNS: [10.96.0.10]
clusterDomain: cluster.local
containerRuntimeEndpoint: {runtime}
nodeStatusUpdateFrequency: 1s
rotateCertificates: false
",
                ca = p("pki/ca.crt"),
                crt = p(&format!("kubelet-{node}.crt")),
                key = p(&format!("kubelet-{node}.key")),
            ),
        )
        .unwrap();
        let args = vec![
            format!("--config={}", cfg.display()),
            format!("--kubeconfig={}", p(&format!("kubelet-{node}.conf"))),
            format!("--hostname-override={node}"),
            format!("--node-ip={ip}"),
        ];
        Proc::start(&self.bin("kubelet", version), &args, &self.path(&format!("kubelet-{node}.log")))
    }

    /// Starts the controller-manager double with the flags kubeforge writes; waits for its secure port.
    pub fn start_controller_manager(&self, version: &str) -> Proc {
        let p = |r: &str| self.pki.p(r);
        let port = free_port(&self.ip);
        let args = vec![
            format!("--kubeconfig={}", p("controller-manager.conf")),
            format!("--authentication-kubeconfig={}", p("controller-manager.conf")),
            format!("--authorization-kubeconfig={}", p("controller-manager.conf")),
            format!("--bind-address={}", self.ip),
            format!("--secure-port={port}"),
            format!("--client-ca-file={}", p("pki/ca.crt")),
            format!("--requestheader-client-ca-file={}", p("pki/front-proxy-ca.crt")),
            format!("--root-ca-file={}", p("pki/ca.crt")),
            format!("--cluster-signing-cert-file={}", p("pki/ca.crt")),
            format!("--cluster-signing-key-file={}", p("pki/ca.key")),
            format!("--service-account-private-key-file={}", p("pki/sa.key")),
            "--service-cluster-ip-range=10.96.0.0/12".into(),
            "--use-service-account-credentials=true".into(),
            "--leader-elect=true".into(),
        ];
        let mut proc_ = Proc::start(
            &self.bin("kube-controller-manager", version),
            &args,
            &self.path("controller-manager.log"),
        );
        let ok = bins::wait_for(Duration::from_secs(20), || {
            (proc_.exited().is_some() || bins::listening(&self.ip, port)).then_some(())
        });
        assert!(ok.is_some() && proc_.exited().is_none(), "controller-manager:\n{}", proc_.log_text());
        proc_
    }

    /// Starts the scheduler double with the configuration kubeforge writes; waits for its secure port.
    pub fn start_scheduler(&self, version: &str) -> Proc {
        let port = free_port(&self.ip);
        let cfg = self.path("scheduler-config.yaml");
        std::fs::write(
            &cfg,
            format!(
                "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nclientConnection:\n  kubeconfig: {}\nleaderElection:\n  leaderElect: true\n",
                self.pki.p("scheduler.conf")
            ),
        )
        .unwrap();
        let args = vec![
            format!("--config={}", cfg.display()),
            format!("--bind-address={}", self.ip),
            format!("--secure-port={port}"),
        ];
        let mut proc_ = Proc::start(&self.bin("kube-scheduler", version), &args, &self.path("scheduler.log"));
        let ok = bins::wait_for(Duration::from_secs(20), || {
            (proc_.exited().is_some() || bins::listening(&self.ip, port)).then_some(())
        });
        assert!(ok.is_some() && proc_.exited().is_none(), "scheduler:\n{}", proc_.log_text());
        proc_
    }
}

/// `--k=v` arguments from a map.
pub fn to_args(flags: &BTreeMap<String, String>) -> Vec<String> {
    flags.iter().map(|(k, v)| format!("--{k}={v}")).collect()
}

/// The real kubectl: `$KUBEFORGE_TEST_KUBECTL`, else `kubectl` on PATH.
pub fn kubectl() -> PathBuf {
    match std::env::var_os("KUBEFORGE_TEST_KUBECTL") {
        Some(p) => PathBuf::from(p),
        None => which("kubectl"),
    }
}

/// Absolute path of a program on PATH.
pub fn which(name: &str) -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} not found on PATH (CI installs it: see tests/doubles/README.md)");
}

/// Real containerd on a private socket (its own root/state), for the kubelet's runtime check.
pub fn start_containerd(dir: &Path) -> (Proc, String) {
    let sock = dir.join("containerd.sock");
    let args = vec![
        "--address".into(),
        sock.to_string_lossy().into_owned(),
        "--root".into(),
        dir.join("ctr-root").to_string_lossy().into_owned(),
        "--state".into(),
        dir.join("ctr-state").to_string_lossy().into_owned(),
    ];
    let proc_ = Proc::start(&which("containerd"), &args, &dir.join("containerd.log"));
    let ok = bins::wait_for(Duration::from_secs(20), || sock.exists().then_some(()));
    assert!(ok.is_some(), "containerd did not start:\n{}", proc_.log_text());
    (proc_, format!("unix://{}", sock.display()))
}
