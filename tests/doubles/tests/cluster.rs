//! End to end on loopback: the real etcd (TLS), the apiserver double, a kubelet double with the real
//! containerd, and the real `kubectl` with `admin.conf`: version, get nodes (Ready), cordon/drain,
//! apply/delete of addon objects, Node authorizer refusal, NotReady without runtime, /readyz without etcd.

#[path = "support/bins.rs"]
mod bins;
#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/kubectl.rs"]
mod kubectl;
#[path = "support/pki.rs"]
mod pki;

use std::{process::Command, time::Duration};

use bins::{free_port, wait_for, Proc};
use cluster::{Env, V34, V35};
use kubectl::Kubectl;
use serde_json::Value;

fn ready(node: &Value) -> Option<String> {
    node["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
        .and_then(|c| c["status"].as_str().map(String::from))
}

const ADDON: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: addon-test
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: coredns
  namespace: addon-test
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: coredns
  namespace: addon-test
data:
  Corefile: ".:53 { forward . /etc/resolv.conf }"
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: addon-test:coredns
rules:
- apiGroups: [""]
  resources: ["endpoints", "services", "pods", "namespaces"]
  verbs: ["list", "watch"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: addon-test:coredns
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: ClusterRole
  name: addon-test:coredns
subjects:
- kind: ServiceAccount
  name: coredns
  namespace: addon-test
---
apiVersion: v1
kind: Service
metadata:
  name: kube-dns
  namespace: addon-test
  labels: {k8s-app: kube-dns}
spec:
  clusterIP: 10.96.0.10
  selector: {k8s-app: kube-dns}
  ports:
  - {name: dns, port: 53, protocol: UDP}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: coredns
  namespace: addon-test
spec:
  replicas: 2
  selector:
    matchLabels: {k8s-app: kube-dns}
  template:
    metadata:
      labels: {k8s-app: kube-dns}
    spec:
      serviceAccountName: coredns
      containers:
      - name: coredns
        image: registry.invalid/coredns:1.11
---
apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: flannel
  namespace: addon-test
spec:
  selector:
    matchLabels: {app: flannel}
  template:
    metadata:
      labels: {app: flannel}
    spec:
      containers:
      - name: flannel
        image: registry.invalid/flannel:0.25
"#;

#[test]
fn kubectl_against_etcd_apiserver_and_kubelet() {
    let env = Env::new("127.0.0.3");
    let (mut etcd, url) = env.start_etcd();
    let mut api = env.start_apiserver(V35, &env.apiserver_flags(&url), "apiserver.log");
    assert!(api.exited().is_none(), "apiserver exited:\n{}", api.log_text());
    let (mut containerd, runtime) = cluster::start_containerd(env.tmp.path());

    // kubelet for node1 at 127.0.0.3, as an installer would configure it.
    env.pki.kubelet(&env.layout, "node1", "127.0.0.3");
    env.pki.kubelet(&env.layout, "node2", "127.0.0.3");
    let p = |r: &str| env.pki.p(r);
    let port = free_port("127.0.0.3");
    let hport = free_port("127.0.0.3");
    let cfg = env.path("kubelet-config.yaml");
    std::fs::write(
        &cfg,
        format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.3
port: {port}
healthzBindAddress: 127.0.0.3
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
            crt = p("kubelet-node1.crt"),
            key = p("kubelet-node1.key"),
        ),
    )
    .unwrap();
    let kubelet_args = vec![
        format!("--config={}", cfg.display()),
        format!("--kubeconfig={}", p("kubelet-node1.conf")),
        "--hostname-override=node1".into(),
        "--node-ip=127.0.0.3".into(),
        "--node-labels=kubeforge.test/pool=a,node.kubernetes.io/exclude-from-external-load-balancers=true"
            .into(),
    ];
    // The kubelet one minor behind the apiserver (allowed skew; the upgrade tests start here).
    let mut kubelet = Proc::start(&env.bin("kubelet", V34), &kubelet_args, &env.path("kubelet.log"));

    let k = Kubectl {
        kubeconfig: p("admin.conf"),
        cache: env.path("kubectl-cache").to_string_lossy().into_owned(),
    };
    let v = k.json(&["version"]);
    assert_eq!(v["serverVersion"]["gitVersion"], V35, "{v}");

    // The node registers and becomes Ready (containerd answers).
    let node = wait_for(Duration::from_secs(30), || {
        let (code, out, _) = k.run(&["get", "node", "node1", "-o", "json"]);
        let n: Value = serde_json::from_str(&out).ok()?;
        (code == 0 && ready(&n).as_deref() == Some("True")).then_some(n)
    })
    .unwrap_or_else(|| {
        panic!("node1 never Ready; kubelet log:\n{}\napiserver log:\n{}", kubelet.log_text(), api.log_text())
    });
    assert_eq!(node["status"]["nodeInfo"]["kubeletVersion"], V34);
    assert_eq!(node["metadata"]["labels"]["kubeforge.test/pool"], "a");
    assert_eq!(node["status"]["addresses"][0]["address"], "127.0.0.3");
    let table = k.ok(&["get", "nodes"]);
    assert!(table.contains("node1") && table.contains("Ready"), "{table}");
    let nodes = k.json(&["get", "nodes"]);
    assert_eq!(nodes["items"].as_array().unwrap().len(), 1);

    // Writers racing on one Node (16 kubectl processes at once, while the kubelet heart-beats every second)
    // lose nothing: every write is a compare-and-swap on the object's revision, as in the real apiserver.
    std::thread::scope(|s| {
        for i in 0..16 {
            let k = &k;
            s.spawn(move || {
                k.ok(&["label", "node", "node1", "--overwrite", &format!("kubeforge.test/race-{i}=v")])
            });
        }
    });
    let labels = k.json(&["get", "node", "node1"])["metadata"]["labels"].clone();
    for i in 0..16 {
        assert_eq!(labels[format!("kubeforge.test/race-{i}")], "v", "a concurrent write was lost: {labels}");
    }

    // kubelet ports: 10250-equivalent needs a client cert; healthz answers plainly.
    {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("127.0.0.3", hport)).unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut resp = String::new();
        c.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 200") && resp.ends_with("ok"), "{resp}");
    }

    // cordon survives heart-beats; uncordon clears it.
    k.ok(&["cordon", "node1"]);
    std::thread::sleep(Duration::from_millis(2500));
    let n = k.json(&["get", "node", "node1"]);
    assert_eq!(n["spec"]["unschedulable"], true, "{n}");
    assert!(k.ok(&["get", "nodes"]).contains("SchedulingDisabled"));
    k.ok(&["uncordon", "node1"]);
    assert!(k.json(&["get", "node", "node1"])["spec"]["unschedulable"].is_null());

    // Addon objects: apply, re-apply, read back, delete.
    let addon = env.path("addon.yaml");
    std::fs::write(&addon, ADDON).unwrap();
    let out = k.ok(&["apply", "-f", addon.to_str().unwrap()]);
    assert!(out.contains("deployment.apps/coredns created"), "{out}");
    let out = k.ok(&["apply", "-f", addon.to_str().unwrap()]);
    assert!(out.contains("unchanged") || out.contains("configured"), "{out}");
    let d = k.json(&["get", "deployment", "coredns", "-n", "addon-test"]);
    assert_eq!(d["spec"]["replicas"], 2);
    k.ok(&["get", "daemonset,serviceaccount,configmap,service", "-n", "addon-test"]);
    k.ok(&["get", "clusterrole,clusterrolebinding", "addon-test:coredns"]);

    // drain: a bare pod on node1 is evicted (needs --force, like the real kubectl says).
    let pod = env.path("pod.yaml");
    std::fs::write(
        &pod,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: addon-test\nspec:\n  nodeName: node1\n  containers:\n  - name: web\n    image: registry.invalid/web:1\n",
    )
    .unwrap();
    k.ok(&["apply", "-f", pod.to_str().unwrap()]);
    let (code, _, err) = k.run(&["drain", "node1", "--ignore-daemonsets", "--timeout=30s"]);
    assert_ne!(code, 0, "drain of an unmanaged pod without --force must fail");
    assert!(err.contains("--force"), "{err}");
    let out = k.ok(&["drain", "node1", "--ignore-daemonsets", "--force", "--timeout=30s"]);
    assert!(out.contains("evicted") && out.contains("drained"), "{out}");
    let (code, _, _) = k.run(&["get", "pod", "web", "-n", "addon-test"]);
    assert_ne!(code, 0, "pod must be gone after drain");
    assert_eq!(k.json(&["get", "node", "node1"])["spec"]["unschedulable"], true);
    k.ok(&["uncordon", "node1"]);

    // Node authorizer / NodeRestriction: node1's kubelet cert may not touch node2.
    let n2 = env.path("node2.yaml");
    std::fs::write(&n2, "apiVersion: v1\nkind: Node\nmetadata:\n  name: node2\n").unwrap();
    k.ok(&["create", "-f", n2.to_str().unwrap()]);
    let (code, _, err) = k.run_as(&p("kubelet-node1.conf"), &["label", "node", "node2", "evil=yes"]);
    assert_ne!(code, 0);
    assert!(err.contains("Forbidden") || err.contains("forbidden"), "{err}");
    assert!(err.contains("not allowed to modify node \"node2\""), "{err}");
    k.run_as(&p("kubelet-node1.conf"), &["label", "node", "node1", "ok=yes"]);
    // Read-only identity: kube-proxy may list but not delete.
    k.run_as(&p("kube-proxy.conf"), &["get", "nodes"]);
    let (code, _, err) = k.run_as(&p("kube-proxy.conf"), &["delete", "node", "node2"]);
    assert_ne!(code, 0);
    assert!(err.contains("cannot delete resource \"nodes\""), "{err}");

    // Delete the addon (namespace deletion takes its objects along).
    k.ok(&["delete", "-f", addon.to_str().unwrap(), "--wait=false"]);
    assert!(
        wait_for(Duration::from_secs(15), || (k.run(&["get", "namespace", "addon-test"]).0 != 0)
            .then_some(()))
        .is_some(),
        "namespace addon-test should go away"
    );

    // Objects really live in etcd under /registry/.
    let etcdctl = Command::new(cluster::which("etcdctl"))
        .env("ETCDCTL_API", "3")
        .args([
            &format!("--endpoints={url}"),
            &format!("--cacert={}", p("pki/etcd/ca.crt")),
            &format!("--cert={}", p("pki/etcd/healthcheck-client.crt")),
            &format!("--key={}", p("pki/etcd/healthcheck-client.key")),
            "get",
            "/registry/minions/node1",
            "--print-value-only",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&etcdctl.stdout).contains("\"kubeletVersion\":\"v1.34.10\""),
        "{etcdctl:?}"
    );

    // Runtime down → NotReady.
    drop(containerd.child.kill());
    let _ = containerd.child.wait();
    let nr = wait_for(Duration::from_secs(20), || {
        let n = k.json(&["get", "node", "node1"]);
        (ready(&n).as_deref() == Some("False")).then_some(n)
    });
    assert!(nr.is_some(), "node1 should go NotReady without containerd:\n{}", kubelet.log_text());
    assert!(kubelet.exited().is_none());

    // etcd down → /readyz fails, /livez still ok.
    let _ = etcd.child.kill();
    let _ = etcd.child.wait();
    let failed = wait_for(Duration::from_secs(20), || {
        let (code, out, err) = k.run(&["get", "--raw", "/readyz"]);
        (code != 0).then_some(format!("{out}{err}"))
    });
    assert!(failed.is_some(), "/readyz should fail without etcd");
    assert_eq!(k.ok(&["get", "--raw", "/livez"]), "ok");
    assert!(api.exited().is_none());
}
