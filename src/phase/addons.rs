//! `addons`: the cluster objects every cluster needs, applied with kubectl on the first control plane:
//! RBAC (`kubeadm:cluster-admins` → cluster-admin, the apiserver's access to the kubelet API), CoreDNS
//! (ServiceAccount, RBAC, ConfigMap, Deployment, the `kube-dns` Service on the DNS Service IP), node labels
//! and taints (NodeRestriction keeps kubelets from setting `node-role.kubernetes.io/*` on themselves), and a
//! CNI manifest when the inventory names one. Manifests are built with serde, uploaded to
//! `/etc/kubernetes/addons/`, and applied only when one of them changed.

use super::{Context, HostWork, Phase};
use crate::model::{ClusterModel, Cni, CniManifest, HostModel};
use crate::plan::{DesiredFile, HostDesired};
use crate::transport::Command;
use serde_json::{json, Value};
use std::path::Path;

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

/// Makes every node carry its labels and taints, reading the live Nodes first: one `kubectl get nodes`, then
/// `kubectl label` / `kubectl taint --overwrite` only for the nodes that miss one (a join labels the new
/// node alone). A node that has not registered yet is waited for (polling, up to 180 s). Arguments: per
/// node `N name`, then `L key=value` and `T key[=value]:Effect` items (label and taint syntax is checked by
/// the inventory's validation, so they hold no spaces).
const SYNC_NODE_METADATA: &str = r#"kc=$1; shift
k() { kubectl --kubeconfig "$kc" "$@"; }
tpl='{{range .items}}N {{.metadata.name}}{{"\n"}}{{range $k, $v := .metadata.labels}}L {{$k}}={{$v}}{{"\n"}}{{end}}{{range .spec.taints}}T {{.key}}{{with .value}}={{.}}{{end}}:{{.effect}}{{"\n"}}{{end}}{{end}}'
cur=$(k get nodes -o go-template="$tpl") || exit 1
sync() {
  [ -n "$node" ] || return 0
  if ! printf '%s\n' "$cur" | grep -qxF "N $node"; then
    i=0; until k get node "$node" >/dev/null 2>&1; do i=$((i+1)); [ $i -ge 90 ] && { echo "node $node did not register within 180 s" >&2; exit 1; }; sleep 2; done
    cur=$(k get nodes -o go-template="$tpl") || exit 1
  fi
  b=$(printf '%s\n' "$cur" | awk -v n="N $node" '$0 == n {f=1; next} /^N / {f=0} f')
  ml=""; for l in $labels; do printf '%s\n' "$b" | grep -qxF "L $l" || ml="$ml $l"; done
  if [ -n "$ml" ]; then k label node --overwrite "$node" $ml >/dev/null || exit 1; echo "labelled $node:$ml"; fi
  for t in $taints; do
    printf '%s\n' "$b" | grep -qxF "T $t" && continue
    k taint node --overwrite "$node" "$t" >/dev/null || exit 1; echo "tainted $node: $t"
  done
}
node=""; labels=""; taints=""
for a in "$@"; do
  case "$a" in
    "N "*) sync; node=${a#N }; labels=""; taints="" ;;
    "L "*) labels="$labels ${a#L }" ;;
    "T "*) taints="$taints ${a#T }" ;;
  esac
done
sync"#;

/// The command that makes every node carry its labels and taints (idempotent; it changes only what is
/// missing on the live Nodes), retried on transient API errors.
pub fn node_metadata_command(model: &ClusterModel) -> Command {
    let mut argv: Vec<String> = vec![
        "sh".into(),
        "-c".into(),
        SYNC_NODE_METADATA.into(),
        "sh".into(),
        "/etc/kubernetes/admin.conf".into(),
    ];
    for h in model.nodes() {
        argv.push(format!("N {}", h.name));
        for (k, v) in &h.labels {
            argv.push(format!("L {k}={v}"));
        }
        for t in &h.taints {
            argv.push(if t.value.is_empty() {
                format!("T {}:{}", t.key, t.effect)
            } else {
                format!("T {}={}:{}", t.key, t.value, t.effect)
            });
        }
    }
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    retrying(&argv)
}

/// `kubectl apply -f DIR` (retried on transient API errors), skipped when the manifests are byte for byte
/// those of the last successful apply (their digest is kept in `APPLIED`): a join or a label change rewrites
/// the node metadata file, not the manifests, and must not re-apply every addon.
fn apply_manifests(dir: &str, applied: &str) -> Command {
    let script = format!(
        "now=$(cat {dir}/*.yaml | sha256sum | cut -d' ' -f1)\n\
         if [ \"$(cat {applied} 2>/dev/null)\" = \"$now\" ]; then echo 'addon manifests unchanged since their last apply'; exit 0; fi\n\
         {RETRY_TRANSIENT}\n\
         mkdir -p \"$(dirname {applied})\" && printf '%s\\n' \"$now\" > {applied}"
    );
    Command::shell(script)
        .args(["kubectl", "--kubeconfig", "/etc/kubernetes/admin.conf", "apply", "-f", dir])
        .sudo()
}

/// The commands that apply the addon manifests already on the first control plane, then the node labels and
/// taints (`restore` runs them after the etcd data changed under the cluster).
pub fn reapply_commands(model: &ClusterModel) -> Vec<(String, Command)> {
    vec![
        ("apply addon manifests".into(), apply_manifests(DIR, APPLIED)),
        ("node labels and taints".into(), node_metadata_command(model)),
    ]
}

/// The digest of the addon manifests last applied with success.
pub const APPLIED: &str = "/etc/kubernetes/kubeforge/addons.applied";

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
            let data = cni_manifest(source, &model.inventory_dir, &ctx.material.options.cache_dir)?;
            files.push(DesiredFile::bytes(&format!("{DIR}/30-cni.yaml"), 0o644, data, "CNI manifest"));
        }
        let meta = DesiredFile::bytes(
            "/etc/kubernetes/kubeforge/node-metadata.json",
            0o644,
            node_metadata(model),
            "node labels and taints",
        );
        files.push(meta);
        let mut after = vec![("apply addon manifests".to_string(), apply_manifests(DIR, APPLIED))];
        after.push(("node labels and taints".into(), node_metadata_command(model)));
        Ok(Some(HostWork::Converge(HostDesired { files, after_change: after, ..Default::default() })))
    }
}

/// The CNI manifest to place with the other addons: a file read now, or a URL's copy that
/// [`crate::apply::prepare_artifacts`] fetched into the artifact cache (`cache_dir`). Either is held to its
/// sha256 pin here, just before it is uploaded and applied: a mismatch refuses with both digests.
pub fn cni_manifest(source: &CniManifest, inventory_dir: &Path, cache_dir: &Path) -> crate::Result<Vec<u8>> {
    use crate::artifacts::manifest;
    match source {
        CniManifest::File { path, sha256 } => {
            let full = crate::inventory::validate::resolve_path(inventory_dir, path);
            match sha256 {
                Some(pin) => {
                    Ok(manifest::read_verified(&full, pin, &format!("CNI manifest {}", full.display()))?)
                }
                None => std::fs::read(&full)
                    .map_err(|e| crate::Error::io(format!("cannot read CNI manifest {}", full.display()), e)),
            }
        }
        CniManifest::Url { url, sha256 } => {
            let cached = manifest::cached_path(cache_dir, sha256);
            if !cached.is_file() {
                return Err(crate::Error::msg(
                    format!("CNI manifest {url} was not fetched (no {})", cached.display()),
                    Some("run `kubeforge apply`, which fetches it into the artifact cache and checks its sha256"),
                ));
            }
            Ok(manifest::read_verified(
                &cached,
                sha256,
                &format!("CNI manifest {url} (cached at {})", cached.display()),
            )?)
        }
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

    /// The manifests are applied once per content: a second run with the same files does not call kubectl,
    /// a changed file is applied again, and a failed apply leaves no record (the next run applies).
    #[test]
    fn addon_manifests_are_applied_once_per_content() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let addons = d.join("addons");
        std::fs::create_dir(&addons).unwrap();
        std::fs::write(addons.join("10-rbac.yaml"), "a: 1\n").unwrap();
        let applied = d.join("state/applied");
        std::fs::write(d.join("kubectl"), "#!/bin/sh\necho \"$*\" >> \"$D/log\"; [ ! -e \"$D/fail\" ]\n")
            .unwrap();
        std::fs::set_permissions(d.join("kubectl"), std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let argv = apply_manifests(addons.to_str().unwrap(), applied.to_str().unwrap()).argv();
        let run = || {
            let o = crate::test_support::run_with_fakes(&argv, d);
            let calls = std::fs::read_to_string(d.join("log")).unwrap_or_default().lines().count();
            (o.status.success(), calls)
        };
        assert_eq!(run(), (true, 1));
        assert_eq!(run(), (true, 1), "unchanged manifests are not applied again");
        std::fs::write(addons.join("20-coredns.yaml"), "b: 2\n").unwrap();
        std::fs::write(d.join("fail"), "").unwrap();
        assert_eq!(run(), (false, 2));
        std::fs::remove_file(d.join("fail")).unwrap();
        assert_eq!(run(), (true, 3), "a failed apply is retried by the next run");
        assert_eq!(run(), (true, 3));
    }

    /// The node metadata script, run by a real shell against a fake kubectl that serves the Nodes as the
    /// script's go-template renders them: only what a node misses is labelled or tainted, an existing
    /// label with another value is overwritten, and an unregistered node is waited for.
    #[test]
    fn node_metadata_changes_only_what_the_live_nodes_miss() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(
            d.join("nodes"),
            "N cp1\nL kubernetes.io/hostname=cp1\nL node-role.kubernetes.io/control-plane=\n\
             T node-role.kubernetes.io/control-plane:NoSchedule\nN w1\nL pool=cpu\n",
        )
        .unwrap();
        // `get nodes` prints the state; `get node X` succeeds once X is registered (w2 registers on the
        // second look); label/taint are logged.
        let fake = r#"#!/bin/sh
shift 2
case "$1 $2" in
  "get nodes") cat "$D/nodes" ;;
  "get node") n=$(cat "$D/looks" 2>/dev/null || echo 0); echo $((n+1)) > "$D/looks"
    if [ "$3" = w2 ] && [ "$n" -ge 1 ]; then printf 'N w2\n' >> "$D/nodes"; fi
    grep -qx "N $3" "$D/nodes" ;;
  label*|taint*) echo "$*" >> "$D/log" ;;
  *) exit 2 ;;
esac
"#;
        std::fs::write(d.join("kubectl"), fake).unwrap();
        std::fs::set_permissions(d.join("kubectl"), std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let text = "cluster: {name: c, kubernetesVersion: v1.35.7}\nhosts:\n\
            - {name: cp1, address: 10.0.0.1, roles: [control-plane, etcd]}\n\
            - {name: w1, address: 10.0.0.2, roles: [worker], labels: {pool: gpu}, taints: [\"gpu=yes:NoSchedule\"]}\n\
            - {name: w2, address: 10.0.0.3, roles: [worker], labels: {pool: cpu}}\n";
        let m = ClusterModel::derive(&crate::inventory::parse(std::path::Path::new("t.yaml"), text).unwrap());
        let argv: Vec<String> =
            node_metadata_command(&m).argv().iter().map(|a| a.replace("sleep 2", "sleep 0")).collect();
        let o = crate::test_support::run_with_fakes(&argv, d);
        assert!(o.status.success(), "{o:?}");
        let log = std::fs::read_to_string(d.join("log")).unwrap();
        assert_eq!(
            log,
            "label node --overwrite w1 pool=gpu\ntaint node --overwrite w1 gpu=yes:NoSchedule\n\
             label node --overwrite w2 pool=cpu\n",
            "cp1 already carries its role label and taint"
        );
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains("labelled w1: pool=gpu") && out.contains("tainted w1: gpu=yes:NoSchedule"),
            "{out}"
        );
        assert!(node_metadata(&m).contains("\"pool\": \"gpu\""));
    }

    /// The CNI manifest placed with the addons is held to its pin at the point of use: a URL's cached copy
    /// (fetched by `prepare_artifacts`) or a pinned file whose content is not the pinned one is refused with
    /// both digests, and a URL that was never fetched is an error, not a `kubectl apply -f URL`.
    #[test]
    fn the_cni_manifest_is_applied_only_with_its_pinned_digest() {
        use super::{cni_manifest, CniManifest};
        use crate::artifacts::manifest::cached_path;
        let sha = |b: &[u8]| hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b));
        let (inv, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let reviewed = b"apiVersion: apps/v1\nkind: DaemonSet\n".to_vec();
        let changed = b"apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\n".to_vec();
        let pin = sha(&reviewed);
        let url = "https://example.com/cni.yaml".to_owned();
        let from_url = CniManifest::Url { url: url.clone(), sha256: pin.clone() };

        let e = cni_manifest(&from_url, inv.path(), cache.path()).unwrap_err().report();
        assert!(e.contains("CNI manifest https://example.com/cni.yaml was not fetched"), "{e}");
        assert!(e.contains("hint: run `kubeforge apply`"), "{e}");

        let cached = cached_path(cache.path(), &pin);
        std::fs::create_dir_all(cached.parent().unwrap()).unwrap();
        std::fs::write(&cached, &reviewed).unwrap();
        assert_eq!(cni_manifest(&from_url, inv.path(), cache.path()).unwrap(), reviewed);
        std::fs::write(&cached, &changed).unwrap();
        let e = cni_manifest(&from_url, inv.path(), cache.path()).unwrap_err().report();
        assert!(
            e.contains(&format!("sha256 mismatch for CNI manifest {url} (cached at {})", cached.display()))
                && e.contains(&format!("expected {pin}, got {}", sha(&changed))),
            "{e}"
        );

        std::fs::write(inv.path().join("cni.yaml"), &changed).unwrap();
        let file = |sha256: Option<String>| CniManifest::File { path: "cni.yaml".into(), sha256 };
        assert_eq!(cni_manifest(&file(None), inv.path(), cache.path()).unwrap(), changed);
        assert_eq!(cni_manifest(&file(Some(sha(&changed))), inv.path(), cache.path()).unwrap(), changed);
        let e = cni_manifest(&file(Some(pin.clone())), inv.path(), cache.path()).unwrap_err().report();
        assert!(e.contains(&format!("expected {pin}, got {}", sha(&changed))), "{e}");
    }
}
