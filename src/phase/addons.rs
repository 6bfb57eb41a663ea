//! `addons`: the cluster objects every cluster needs, applied with kubectl on the first control plane:
//! RBAC (`kubeadm:cluster-admins` → cluster-admin, the apiserver's access to the kubelet API), CoreDNS
//! (ServiceAccount, RBAC, ConfigMap, Deployment, the `kube-dns` Service on the DNS Service IP), node labels
//! and taints (NodeRestriction keeps kubelets from setting `node-role.kubernetes.io/*` on themselves), and a
//! CNI manifest when the inventory names one. Manifests are built with serde, uploaded to
//! `/etc/kubernetes/addons/`, and applied only when one of them changed.

use super::{Context, HostWork, Phase};
use crate::model::{ClusterModel, Cni, HostModel};
use crate::plan::{DesiredFile, HostDesired};
use crate::transport::Command;
use serde_json::{json, Value};

/// Phase `addons`.
pub struct Addons;

/// Where manifests go on the first control plane.
pub const DIR: &str = "/etc/kubernetes/addons";
/// CoreDNS image (pulled by the nodes' container runtime from the registry the user's nodes can reach).
pub const COREDNS_IMAGE: &str = "registry.k8s.io/coredns/coredns:v1.12.1";

/// A multi-document manifest (one object per document, the usual addon format).
fn list(items: Vec<Value>) -> String {
    items.iter().map(|i| format!("---\n{}", serde_yaml::to_string(i).expect("yaml"))).collect()
}

/// RBAC objects kubeforge's identities rely on.
pub fn rbac() -> String {
    list(vec![
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "kubeadm:cluster-admins"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "kubeadm:cluster-admins"}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
            "metadata": {"name": "kubeforge:apiserver-kubelet-api-admin"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:kubelet-api-admin"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "kube-apiserver-kubelet-client"}]}),
    ])
}

/// CoreDNS objects for `model`.
pub fn coredns(model: &ClusterModel) -> String {
    let labels = json!({"k8s-app": "kube-dns"});
    let corefile = format!(
        ".:53 {{\n    errors\n    health {{\n       lameduck 5s\n    }}\n    ready\n    kubernetes {domain} in-addr.arpa ip6.arpa {{\n       pods insecure\n       fallthrough in-addr.arpa ip6.arpa\n       ttl 30\n    }}\n    prometheus :9153\n    forward . /etc/resolv.conf {{\n       max_concurrent 1000\n    }}\n    cache 30\n    loop\n    reload\n    loadbalance\n}}\n",
        domain = model.cluster_domain
    );
    list(vec![
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "coredns", "namespace": "kube-system"}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "system:coredns"},
            "rules": [
                {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"], "verbs": ["list", "watch"]},
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "system:coredns"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
            "subjects": [{"kind": "ServiceAccount", "name": "coredns", "namespace": "kube-system"}]}),
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "coredns", "namespace": "kube-system"},
            "data": {"Corefile": corefile}}),
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "coredns", "namespace": "kube-system", "labels": labels},
            "spec": {"replicas": 2, "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {
                    "serviceAccountName": "coredns", "priorityClassName": "system-cluster-critical",
                    "tolerations": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}],
                    "containers": [{"name": "coredns", "image": COREDNS_IMAGE, "args": ["-conf", "/etc/coredns/Corefile"],
                        "ports": [{"containerPort": 53, "name": "dns", "protocol": "UDP"}, {"containerPort": 53, "name": "dns-tcp", "protocol": "TCP"}],
                        "volumeMounts": [{"name": "config-volume", "mountPath": "/etc/coredns", "readOnly": true}],
                        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}}}],
                    "volumes": [{"name": "config-volume", "configMap": {"name": "coredns", "items": [{"key": "Corefile", "path": "Corefile"}]}}]}}}}),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels},
            "spec": {"selector": labels, "clusterIP": model.dns_service_ip.to_string(),
                "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}}),
    ])
}

/// The node metadata file: labels and taints per node, the desired state the label/taint commands enforce.
pub fn node_metadata(model: &ClusterModel) -> String {
    let nodes: Vec<Value> =
        model.nodes().map(|h| json!({"name": h.name, "labels": h.labels, "taints": h.taints})).collect();
    serde_json::to_string_pretty(&nodes).expect("json") + "\n"
}

/// Commands that make every node carry its labels and taints (idempotent, `--overwrite`). Each waits for
/// its Node to be registered first (polling: it needs no watch support).
pub fn node_metadata_commands(model: &ClusterModel) -> Vec<(String, Command)> {
    let kc = "/etc/kubernetes/admin.conf";
    let mut v = Vec::new();
    for h in model.nodes() {
        let wait = Command::shell(
            r#"i=0; until kubectl --kubeconfig "$1" get node "$2" >/dev/null 2>&1; do i=$((i+1)); [ $i -ge 90 ] && { echo "node $2 did not register within 180 s" >&2; exit 1; }; sleep 2; done"#,
        )
        .arg(kc)
        .arg(h.name.clone())
        .sudo();
        v.push((format!("wait for node {}", h.name), wait));
        if !h.labels.is_empty() {
            let mut c = Command::new("kubectl")
                .args(["--kubeconfig", kc, "label", "node", "--overwrite"])
                .arg(h.name.clone());
            for (k, val) in &h.labels {
                c = c.arg(format!("{k}={val}"));
            }
            v.push((format!("label node {}", h.name), c.sudo()));
        }
        for t in &h.taints {
            let spec = if t.value.is_empty() {
                format!("{}:{}", t.key, t.effect)
            } else {
                format!("{}={}:{}", t.key, t.value, t.effect)
            };
            let c = Command::new("kubectl")
                .args(["--kubeconfig", kc, "taint", "node", "--overwrite"])
                .arg(h.name.clone())
                .arg(spec);
            v.push((format!("taint node {}", h.name), c.sudo()));
        }
    }
    v
}

impl Phase for Addons {
    fn id(&self) -> &'static str {
        "addons"
    }
    fn title(&self) -> &'static str {
        "Cluster RBAC, CoreDNS, CNI manifest, node labels and taints"
    }
    fn cluster_wide(&self) -> bool {
        true
    }
    fn work(&self, ctx: &Context<'_>, host: &HostModel) -> crate::Result<Option<HostWork>> {
        let model = ctx.model;
        if model.control_planes().next().map(|h| h.name.as_str()) != Some(host.name.as_str()) {
            return Ok(None);
        }
        let mut files = vec![
            DesiredFile::bytes(&format!("{DIR}/10-rbac.yaml"), 0o644, rbac(), "cluster RBAC"),
            DesiredFile::bytes(&format!("{DIR}/20-coredns.yaml"), 0o644, coredns(model), "CoreDNS"),
        ];
        if let Cni::Manifest { source } = &model.cni {
            if !source.starts_with("http://") && !source.starts_with("https://") {
                let path = crate::inventory::validate::resolve_path(&model.inventory_dir, source);
                let data = std::fs::read(&path).map_err(|e| {
                    crate::Error::io(format!("cannot read CNI manifest {}", path.display()), e)
                })?;
                files.push(DesiredFile::bytes(&format!("{DIR}/30-cni.yaml"), 0o644, data, "CNI manifest"));
            }
        }
        let meta = DesiredFile::bytes(
            "/etc/kubernetes/kubeforge/node-metadata.json",
            0o644,
            node_metadata(model),
            "node labels and taints",
        );
        files.push(meta);
        let mut after = vec![(
            "apply addon manifests".to_string(),
            retrying(&["kubectl", "--kubeconfig", "/etc/kubernetes/admin.conf", "apply", "-f", DIR]),
        )];
        if let Cni::Manifest { source } = &model.cni {
            if source.starts_with("http://") || source.starts_with("https://") {
                after.push((
                    "apply CNI manifest".into(),
                    retrying(&[
                        "kubectl",
                        "--kubeconfig",
                        "/etc/kubernetes/admin.conf",
                        "apply",
                        "-f",
                        source,
                    ]),
                ));
            }
        }
        after.extend(node_metadata_commands(model));
        Ok(Some(HostWork::Converge(HostDesired { files, after_change: after, ..Default::default() })))
    }
}

/// Runs `argv` again when it failed the way an API server fails for a moment (an etcd leader election, a
/// restarting apiserver behind the endpoint, a timeout): up to six attempts over about 75 s. Any other
/// failure (a rejected manifest, say) fails at once. `kubectl apply` is idempotent, so a retry is safe.
const RETRY_TRANSIENT: &str = concat!(
    r#"i=0; until out=$("$@" 2>&1); do i=$((i+1)); case "$out" in "#,
    r#"*InternalError*|*"timed out"*|*[Tt]imeout*|*"connection refused"*|*"connection reset"*|*ServiceUnavailable*|*etcdserver*|*"unable to handle the request"*|*TooManyRequests*|*EOF*) ;; "#,
    r#"*) printf '%s\n' "$out" >&2; exit 1 ;; esac; "#,
    r#"if [ $i -ge 6 ]; then printf '%s\n' "$out" >&2; exit 1; fi; "#,
    r#"echo "transient API error, retrying in $((i * 5)) s: $(printf '%s' "$out" | tail -n 1)" >&2; sleep $((i * 5)); "#,
    r#"done; printf '%s\n' "$out""#
);

/// `argv` under `RETRY_TRANSIENT`, as root.
pub fn retrying(argv: &[&str]) -> Command {
    Command::shell(RETRY_TRANSIENT).args(argv.iter().map(|a| a.to_string())).sudo()
}

#[cfg(test)]
mod tests {
    /// The retry wrapper, run by a real shell: a transient API error is retried until the command succeeds;
    /// a rejected manifest fails at once with its message.
    #[test]
    fn kubectl_is_retried_only_on_transient_api_errors() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("n");
        let run = |fake: &str| {
            let argv = retrying(&["sh", "-c", fake, "fake", count.to_str().unwrap()]).argv();
            let argv: Vec<String> = argv.iter().map(|a| a.replace("sleep $((i * 5))", "sleep 0")).collect();
            let _ = std::fs::remove_file(&count);
            std::process::Command::new(&argv[0]).args(&argv[1..]).output().unwrap()
        };
        let flaky = r#"echo x >> "$1"; [ $(wc -l < "$1") -ge 3 ] && { echo applied; exit 0; }; echo 'Error from server (InternalError): etcd: operation timed out' >&2; exit 1"#;
        let o = run(flaky);
        assert!(o.status.success(), "{o:?}");
        assert_eq!(String::from_utf8_lossy(&o.stdout), "applied\n");
        assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 3);
        let invalid = r#"echo x >> "$1"; echo 'error: error validating "x.yaml": unknown field' >&2; exit 1"#;
        let o = run(invalid);
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).contains("unknown field"), "{o:?}");
        assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 1, "not retried");
    }

    use super::*;
    use serde::Deserialize;

    fn model() -> ClusterModel {
        let text = "cluster: {name: c, kubernetesVersion: v1.35.7, serviceCIDR: 10.32.0.0/16}\nhosts:\n\
            - {name: cp1, address: 10.0.0.1, roles: [control-plane, etcd]}\n\
            - {name: w1, address: 10.0.0.2, roles: [worker], labels: {pool: gpu}, taints: [\"gpu=yes:NoSchedule\"]}\n";
        ClusterModel::derive(&crate::inventory::parse(std::path::Path::new("t.yaml"), text).unwrap())
    }

    #[test]
    fn coredns_serves_on_the_dns_service_ip_of_the_model() {
        let text = coredns(&model());
        let docs: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&text)
            .map(|d| serde_yaml::Value::deserialize(d).unwrap())
            .collect();
        assert_eq!(docs.len(), 6);
        let svc = docs.iter().find(|o| o["kind"] == "Service").unwrap();
        assert_eq!(svc["spec"]["clusterIP"], "10.32.0.10");
        let cm = docs.iter().find(|o| o["kind"] == "ConfigMap").unwrap();
        assert!(cm["data"]["Corefile"].as_str().unwrap().contains("kubernetes cluster.local in-addr.arpa"));
    }

    #[test]
    fn labels_and_taints_become_idempotent_kubectl_commands() {
        let cmds: Vec<String> = node_metadata_commands(&model()).iter().map(|(_, c)| c.to_string()).collect();
        assert!(
            cmds.iter()
                .any(|c| c.contains("label node --overwrite cp1 node-role.kubernetes.io/control-plane=")),
            "{cmds:?}"
        );
        assert!(cmds.iter().any(
            |c| c.contains("taint node --overwrite cp1 node-role.kubernetes.io/control-plane:NoSchedule")
        ));
        assert!(cmds.iter().any(|c| c.contains("label node --overwrite w1 pool=gpu")));
        assert!(cmds.iter().any(|c| c.contains("taint node --overwrite w1 gpu=yes:NoSchedule")));
        assert!(node_metadata(&model()).contains("\"pool\": \"gpu\""));
    }
}
