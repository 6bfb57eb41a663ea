//! A workload on a two-node cluster of doubles, driven by the real `kubectl` the way the `kubeforge upgrade`
//! tests drive lab clusters: the real etcd, the apiserver, controller-manager and scheduler doubles, two
//! kubelet doubles (node1 at 127.0.0.4, node2 at 127.0.0.5) on the real containerd. A Deployment (3
//! replicas) and a PodDisruptionBudget (minAvailable 2): scheduling and readiness, `kubectl rollout status`,
//! the PDB's status, `kubectl drain` evicting through the eviction API with its 429 retries, a drain the
//! budget refuses, cordoned nodes getting no pods, other budget shapes, a rolling update, and pods staying
//! put (and terminating only when it comes back) while a kubelet is down.

#[path = "support/bins.rs"]
mod bins;
#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/kubectl.rs"]
mod kubectl;
#[path = "support/pki.rs"]
mod pki;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use bins::wait_for;
use cluster::{Env, V35};
use kubectl::Kubectl;
use serde_json::Value;

const WORKLOAD: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: 3
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: registry.invalid/web:1
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: web
  namespace: default
spec:
  minAvailable: 2
  selector:
    matchLabels: {app: web}
"#;

const PDB_MESSAGE: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

fn is_ready(obj: &Value) -> bool {
    obj["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

fn web_pods(k: &Kubectl) -> Vec<Value> {
    k.json(&["get", "pods", "-n", "default", "-l", "app=web"])["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn name(o: &Value) -> String {
    o["metadata"]["name"].as_str().unwrap_or("").to_string()
}

fn node_of(p: &Value) -> String {
    p["spec"]["nodeName"].as_str().unwrap_or("").to_string()
}

/// Pods per node (live pods only; "" = unscheduled).
fn spread(pods: &[Value]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for p in pods.iter().filter(|p| p["metadata"]["deletionTimestamp"].is_null()) {
        *m.entry(node_of(p)).or_default() += 1;
    }
    m
}

fn pdb_status(k: &Kubectl) -> Value {
    k.json(&["get", "pdb", "web", "-n", "default"])
}

/// Waits until the PDB reports exactly these numbers for its current generation.
fn wait_pdb(k: &Kubectl, healthy: i64, desired: i64, allowed: i64, expected: i64, logs: &dyn Fn() -> String) {
    let got = wait_for(Duration::from_secs(20), || {
        let p = pdb_status(k);
        let s = &p["status"];
        (s["currentHealthy"] == healthy
            && s["desiredHealthy"] == desired
            && s["disruptionsAllowed"] == allowed
            && s["expectedPods"] == expected
            && s["observedGeneration"] == p["metadata"]["generation"])
            .then_some(p)
    });
    assert!(
        got.is_some(),
        "PDB should be healthy={healthy} desired={desired} allowed={allowed} expected={expected}, is {}\n{}",
        pdb_status(k)["status"],
        logs()
    );
}

#[test]
fn deployment_pdb_drain_on_two_nodes() {
    let started = Instant::now();
    let env = Env::new("127.0.0.4");
    let (_etcd, url) = env.start_etcd();
    let mut api = env.start_apiserver(V35, &env.apiserver_flags(&url), "apiserver.log");
    assert!(api.exited().is_none(), "apiserver exited:\n{}", api.log_text());
    let (_containerd, runtime) = cluster::start_containerd(env.tmp.path());
    let mut kubelet1 = env.start_kubelet(V35, "node1", "127.0.0.4", &runtime);
    let _kubelet2 = env.start_kubelet(V35, "node2", "127.0.0.5", &runtime);
    let k = Kubectl {
        kubeconfig: env.pki.p("admin.conf"),
        cache: env.path("kubectl-cache").to_string_lossy().into_owned(),
    };
    let log = |f: &str| std::fs::read_to_string(env.path(f)).unwrap_or_default();
    let logs = || {
        ["apiserver.log", "controller-manager.log", "scheduler.log", "kubelet-node1.log", "kubelet-node2.log"]
            .iter()
            .map(|f| format!("---- {f}\n{}", log(f)))
            .collect::<String>()
    };
    for node in ["node1", "node2"] {
        let ok = wait_for(Duration::from_secs(30), || {
            let (code, out, _) = k.run(&["get", "node", node, "-o", "json"]);
            (code == 0 && serde_json::from_str::<Value>(&out).is_ok_and(|n| is_ready(&n))).then_some(())
        });
        assert!(ok.is_some(), "{node} never Ready\n{}", logs());
    }
    // Pod subnets, as an installer assigns them.
    for (node, cidr) in [("node1", "10.244.1.0/24"), ("node2", "10.244.2.0/24")] {
        let patch = format!(r#"{{"spec":{{"podCIDR":"{cidr}","podCIDRs":["{cidr}"]}}}}"#);
        k.ok(&["patch", "node", node, "-p", &patch]);
    }
    let _kcm = env.start_controller_manager(V35);
    let mut scheduler = env.start_scheduler(V35);

    // The workload rolls out: Deployment -> ReplicaSet -> 3 pods, scheduled, running, ready.
    let manifest = env.path("web.yaml");
    std::fs::write(&manifest, WORKLOAD).unwrap();
    let out = k.ok(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(
        out.contains("deployment.apps/web created") && out.contains("poddisruptionbudget.policy/web created"),
        "{out}"
    );
    let (code, out, err) = k.run(&["rollout", "status", "deployment/web", "-n", "default", "--timeout=60s"]);
    assert_eq!(code, 0, "rollout status failed:\n{out}\n{err}\n{}", logs());
    assert!(out.contains("deployment \"web\" successfully rolled out"), "{out}");

    let rs = k.json(&["get", "rs", "-n", "default", "-l", "app=web"])["items"].as_array().cloned().unwrap();
    assert_eq!(rs.len(), 1, "{rs:?}");
    let rs = &rs[0];
    let hash = rs["metadata"]["labels"]["pod-template-hash"].as_str().unwrap().to_string();
    assert_eq!(name(rs), format!("web-{hash}"));
    assert_eq!(rs["spec"]["selector"]["matchLabels"]["pod-template-hash"], hash.as_str());
    assert_eq!(rs["metadata"]["ownerReferences"][0]["kind"], "Deployment");
    assert_eq!(rs["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "1");
    for f in ["replicas", "readyReplicas", "availableReplicas", "fullyLabeledReplicas"] {
        assert_eq!(rs["status"][f], 3, "{f}: {}", rs["status"]);
    }
    assert_eq!(rs["status"]["observedGeneration"], 1);

    let d = k.json(&["get", "deployment", "web", "-n", "default"]);
    for f in ["replicas", "readyReplicas", "availableReplicas", "updatedReplicas"] {
        assert_eq!(d["status"][f], 3, "{f}: {}", d["status"]);
    }
    assert_eq!(d["status"]["observedGeneration"], d["metadata"]["generation"]);
    assert_eq!(d["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "1");
    let table = k.ok(&["get", "deployment", "web", "-n", "default"]);
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert!(table.starts_with("NAME") && table.contains("UP-TO-DATE"), "{table}");
    assert_eq!(row[..4], ["web", "3/3", "3", "3"], "{table}");

    let pods = web_pods(&k);
    assert_eq!(pods.len(), 3);
    let cidrs = [("node1", "10.244.1.", "127.0.0.4"), ("node2", "10.244.2.", "127.0.0.5")];
    for p in &pods {
        assert!(
            name(p).starts_with(&format!("web-{hash}-")) && name(p).len() == format!("web-{hash}-").len() + 5
        );
        assert_eq!(p["metadata"]["labels"]["pod-template-hash"], hash.as_str());
        let owner = &p["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["kind"].as_str(), owner["name"].as_str()),
            (Some("ReplicaSet"), Some(name(rs).as_str()))
        );
        assert_eq!(p["status"]["phase"], "Running");
        assert!(is_ready(p), "{p}");
        assert_eq!(p["status"]["containerStatuses"][0]["ready"], true);
        let (_, prefix, host) = cidrs.iter().find(|(n, _, _)| *n == node_of(p)).expect("bound to a node");
        assert!(p["status"]["podIP"].as_str().unwrap().starts_with(prefix), "{}", p["status"]);
        assert_eq!(p["status"]["hostIP"], *host);
        let scheduled =
            p["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "PodScheduled");
        assert_eq!(scheduled.unwrap()["status"], "True");
    }
    // Spread: least pods first.
    let by_node = spread(&pods);
    let mut counts: Vec<usize> = by_node.values().copied().collect();
    counts.sort();
    assert_eq!((by_node.len(), counts), (2, vec![1, 2]), "{by_node:?}");
    let busy = by_node.iter().find(|(_, n)| **n == 2).map(|(k, _)| k.clone()).unwrap();
    let other = if busy == "node1" { "node2" } else { "node1" }.to_string();
    assert!(log("scheduler.log").contains("Successfully bound pod to node"));
    assert!(log("controller-manager.log").contains("Created pod"));

    // `kubectl get pods -o wide`: READY and NODE from the server-side table.
    let wide = k.ok(&["get", "pods", "-n", "default", "-o", "wide"]);
    let header = wide.lines().next().unwrap();
    for col in ["NAME", "READY", "STATUS", "IP", "NODE"] {
        assert!(header.split_whitespace().any(|h| h == col), "{wide}");
    }
    for p in &pods {
        let line = wide.lines().find(|l| l.starts_with(&name(p))).unwrap_or_else(|| panic!("{wide}"));
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells[1..3], ["1/1", "Running"], "{wide}");
        assert!(
            cells.contains(&node_of(p).as_str()) && cells.contains(&p["status"]["podIP"].as_str().unwrap()),
            "{wide}"
        );
    }

    // Authorization: a kubelet writes only its own pods; the scheduler and controller-manager only what
    // their default roles allow.
    let foreign = pods.iter().find(|p| node_of(p) == "node1").map(name).unwrap();
    let kubelet2 = env.pki.p("kubelet-node2.conf");
    for args in [
        vec![
            "patch",
            "pod",
            &foreign,
            "-n",
            "default",
            "--subresource=status",
            "-p",
            r#"{"status":{"phase":"Failed"}}"#,
        ],
        vec!["delete", "pod", &foreign, "-n", "default", "--wait=false"],
    ] {
        let (code, _, err) = k.run_as(&kubelet2, &args);
        assert!(
            code != 0 && err.contains("no relationship found between node 'node2' and this object"),
            "{err}"
        );
    }
    for (conf, args, what) in [
        (
            "scheduler.conf",
            vec!["delete", "deployment", "web", "-n", "default"],
            "cannot delete resource \"deployments\"",
        ),
        (
            "scheduler.conf",
            vec!["scale", "rs", &name(rs), "-n", "default", "--replicas=1"],
            "cannot patch resource \"replicasets/scale\"",
        ),
        (
            "controller-manager.conf",
            vec!["delete", "pdb", "web", "-n", "default"],
            "cannot delete resource \"poddisruptionbudgets\"",
        ),
        ("controller-manager.conf", vec!["label", "node", "node1", "x=y"], "cannot patch resource \"nodes\""),
    ] {
        let (code, _, err) = k.run_as(&env.pki.p(conf), &args);
        assert!(code != 0 && err.contains(what), "{conf} {args:?}: {err}");
    }
    assert_eq!(web_pods(&k).len(), 3);

    // `kubectl get -w` prints rows from the watch (one-row Tables), here for a label change.
    let watcher = std::process::Command::new(cluster::kubectl())
        .args([&format!("--kubeconfig={}", k.kubeconfig), &format!("--cache-dir={}", k.cache)])
        .args(["get", "pods", "-n", "default", "-w", "--request-timeout=4s"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let watched = name(&pods[0]);
    k.ok(&["label", "pod", &watched, "-n", "default", "watched=yes"]);
    let out = String::from_utf8_lossy(&watcher.wait_with_output().unwrap().stdout).into_owned();
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with(&watched)).collect();
    assert_eq!(rows.len(), 2, "the list row and the watch row:\n{out}");
    assert_eq!(
        rows[1].split_whitespace().take(3).collect::<Vec<_>>(),
        [watched.as_str(), "1/1", "Running"],
        "{out}"
    );

    // kubectl wait watches the pods' conditions.
    let out =
        k.ok(&["wait", "--for=condition=Ready", "pod", "-l", "app=web", "-n", "default", "--timeout=30s"]);
    assert_eq!(out.matches("condition met").count(), 3, "{out}");

    // The PDB: 3 healthy, 2 desired, 1 disruption allowed.
    wait_pdb(&k, 3, 2, 1, 3, &logs);
    let pdb_table = k.ok(&["get", "pdb", "web", "-n", "default"]);
    assert!(pdb_table.contains("ALLOWED DISRUPTIONS"), "{pdb_table}");
    assert_eq!(
        pdb_table.lines().nth(1).unwrap().split_whitespace().take(4).collect::<Vec<_>>(),
        ["web", "2", "N/A", "1"]
    );

    // Drain the node with two pods: the first eviction takes the one allowed disruption, the second gets
    // 429 until the replacement runs on the other node; kubectl retries every 5 s.
    let before: Vec<String> = pods.iter().filter(|p| node_of(p) == busy).map(name).collect();
    let (code, out, err) = k.run(&["drain", &busy, "--ignore-daemonsets", "--timeout=90s"]);
    assert_eq!(code, 0, "drain failed:\n{out}\n{err}\n{}", logs());
    assert!(
        out.contains(&format!("node/{busy} cordoned")) && out.contains(&format!("node/{busy} drained")),
        "{out}"
    );
    for p in &before {
        assert!(out.contains(&format!("pod/{p} evicted")), "{out}");
        let (code, _, err) = k.run(&["get", "pod", p, "-n", "default"]);
        assert!(code != 0 && err.contains("NotFound"), "{p} should be gone: {err}");
    }
    assert!(err.contains("will retry after 5s") && err.contains(PDB_MESSAGE), "expected a 429 retry:\n{err}");
    assert!(log("apiserver.log").contains("\"Evicted pod\""));
    assert_eq!(k.json(&["get", "node", &busy])["spec"]["unschedulable"], true);
    let (code, out, err) = k.run(&["rollout", "status", "deployment/web", "-n", "default", "--timeout=60s"]);
    assert_eq!(code, 0, "{out}\n{err}\n{}", logs());
    let pods = web_pods(&k);
    assert_eq!(spread(&pods), BTreeMap::from([(other.clone(), 3)]), "all pods on {other}");
    assert!(pods.iter().all(|p| is_ready(p) && !before.contains(&name(p))));
    wait_pdb(&k, 3, 2, 1, 3, &logs);

    // Draining the other node too would leave fewer than 2 healthy pods: one pod goes, its replacement
    // finds only cordoned nodes, and the budget refuses the rest until the drain times out.
    let (code, out, err) = k.run(&["drain", &other, "--ignore-daemonsets", "--timeout=12s"]);
    assert_ne!(code, 0, "drain must not complete:\n{out}\n{err}");
    assert!(err.contains(PDB_MESSAGE) && err.contains("global timeout reached"), "{err}");
    let pods = web_pods(&k);
    let pending: Vec<&Value> = pods.iter().filter(|p| node_of(p).is_empty()).collect();
    assert_eq!(pending.len(), 1, "{pods:?}");
    assert_eq!(pending[0]["status"]["phase"], "Pending");
    let cond = pending[0]["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "PodScheduled")
        .unwrap();
    assert_eq!((cond["status"].as_str(), cond["reason"].as_str()), (Some("False"), Some("Unschedulable")));
    assert!(
        cond["message"]
            .as_str()
            .unwrap()
            .starts_with("0/2 nodes are available: 2 node(s) were unschedulable."),
        "{cond}"
    );
    assert!(log("scheduler.log").contains("Unable to schedule pod; no fit; waiting"));
    assert_eq!(spread(&pods).get(&other), Some(&2));
    wait_pdb(&k, 2, 2, 0, 3, &logs);
    let row = k.ok(&["get", "deployment", "web", "-n", "default", "--no-headers"]);
    assert_eq!(row.split_whitespace().nth(1), Some("2/3"), "{row}");
    // The eviction API itself answers 429 while no disruption is allowed.
    let victim = name(pods.iter().find(|p| node_of(p) == other).unwrap());
    let eviction = env.path("eviction.json");
    std::fs::write(
        &eviction,
        format!(r#"{{"apiVersion":"policy/v1","kind":"Eviction","metadata":{{"name":"{victim}","namespace":"default"}}}}"#),
    )
    .unwrap();
    let path = format!("/api/v1/namespaces/default/pods/{victim}/eviction");
    let (code, _, err) = k.run(&["create", "--raw", &path, "-f", eviction.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("TooManyRequests") && err.contains(PDB_MESSAGE), "{err}");
    assert!(k.json(&["get", "pod", &victim, "-n", "default"])["metadata"]["deletionTimestamp"].is_null());

    // Uncordon: the pending pod lands on that node and the workload is whole again.
    k.ok(&["uncordon", &busy]);
    let (code, out, err) = k.run(&["rollout", "status", "deployment/web", "-n", "default", "--timeout=60s"]);
    assert_eq!(code, 0, "{out}\n{err}\n{}", logs());
    let pods = web_pods(&k);
    assert_eq!(spread(&pods).get(&busy), Some(&1), "{pods:?}");
    wait_pdb(&k, 3, 2, 1, 3, &logs);
    k.ok(&["uncordon", &other]);

    // Other budget shapes; a spec change bumps the generation and the status follows it.
    for (patch, healthy, desired, allowed) in [
        (r#"{"spec":{"minAvailable":null,"maxUnavailable":1}}"#, 3, 2, 1),
        (r#"{"spec":{"maxUnavailable":"50%"}}"#, 3, 1, 2),
        (r#"{"spec":{"maxUnavailable":null,"minAvailable":"100%"}}"#, 3, 3, 0),
    ] {
        k.ok(&["patch", "pdb", "web", "-n", "default", "--type=merge", "-p", patch]);
        wait_pdb(&k, healthy, desired, allowed, 3, &logs);
    }
    assert_eq!(pdb_status(&k)["metadata"]["generation"], 4);

    // A rolling update: a second ReplicaSet takes over, the first is scaled to 0.
    k.ok(&["set", "image", "deployment/web", "-n", "default", "web=registry.invalid/web:2"]);
    let (code, out, err) = k.run(&["rollout", "status", "deployment/web", "-n", "default", "--timeout=60s"]);
    assert_eq!(code, 0, "{out}\n{err}\n{}", logs());
    let all_rs =
        k.json(&["get", "rs", "-n", "default", "-l", "app=web"])["items"].as_array().cloned().unwrap();
    assert_eq!(all_rs.len(), 2);
    let old = all_rs.iter().find(|r| r["metadata"]["labels"]["pod-template-hash"] == hash.as_str()).unwrap();
    let new = all_rs.iter().find(|r| r["metadata"]["labels"]["pod-template-hash"] != hash.as_str()).unwrap();
    assert_eq!((old["spec"]["replicas"].as_i64(), new["spec"]["replicas"].as_i64()), (Some(0), Some(3)));
    assert_eq!(new["metadata"]["annotations"]["deployment.kubernetes.io/revision"], "2");
    let ok = wait_for(Duration::from_secs(20), || {
        let pods = web_pods(&k);
        (pods.len() == 3
            && pods
                .iter()
                .all(|p| p["spec"]["containers"][0]["image"] == "registry.invalid/web:2" && is_ready(p)))
        .then_some(())
    });
    assert!(ok.is_some(), "{:?}\n{}", web_pods(&k), logs());

    // kubectl scale goes through the scale subresource; the budget follows the new scale.
    let out = k.ok(&["scale", "deployment/web", "-n", "default", "--replicas=4"]);
    assert!(out.contains("deployment.apps/web scaled"), "{out}");
    let scale: Value = serde_json::from_str(&k.ok(&[
        "get",
        "--raw",
        "/apis/apps/v1/namespaces/default/deployments/web/scale",
    ]))
    .unwrap();
    assert_eq!(scale["spec"]["replicas"], 4, "{scale}");
    let (code, out, err) = k.run(&["rollout", "status", "deployment/web", "-n", "default", "--timeout=60s"]);
    assert_eq!(code, 0, "{out}\n{err}\n{}", logs());
    let row = k.ok(&["get", "deployment", "web", "-n", "default", "--no-headers"]);
    assert_eq!(row.split_whitespace().nth(1), Some("4/4"), "{row}");
    wait_pdb(&k, 4, 4, 0, 4, &logs);

    // A kubelet that stops leaves its pods as they are. A pod deleted meanwhile stays Terminating (its
    // replacement runs on the other node, node1 being cordoned) until the kubelet is back and confirms.
    let _ = kubelet1.child.kill();
    let _ = kubelet1.child.wait();
    std::thread::sleep(Duration::from_secs(2));
    let on_node1: Vec<Value> = web_pods(&k).into_iter().filter(|p| node_of(p) == "node1").collect();
    assert!(!on_node1.is_empty(), "{:?}", web_pods(&k));
    assert!(on_node1.iter().all(|p| p["status"]["phase"] == "Running"
        && is_ready(p)
        && p["metadata"]["deletionTimestamp"].is_null()));
    k.ok(&["cordon", "node1"]);
    let gone = name(&on_node1[0]);
    k.ok(&["delete", "pod", &gone, "-n", "default", "--wait=false"]);
    let replaced = wait_for(Duration::from_secs(20), || {
        let pods = web_pods(&k);
        (pods.iter().filter(|p| p["metadata"]["deletionTimestamp"].is_null() && is_ready(p)).count() == 4)
            .then_some(pods)
    });
    assert!(replaced.is_some(), "a replacement should run\n{}", logs());
    let terminating = k.json(&["get", "pod", &gone, "-n", "default"]);
    assert!(!terminating["metadata"]["deletionTimestamp"].is_null());
    assert!(k.ok(&["get", "pod", &gone, "-n", "default"]).contains("Terminating"));
    let _kubelet1 = env.start_kubelet(V35, "node1", "127.0.0.4", &runtime);
    let removed = wait_for(Duration::from_secs(20), || {
        (k.run(&["get", "pod", &gone, "-n", "default"]).0 != 0).then_some(())
    });
    assert!(removed.is_some(), "the kubelet should remove {gone} once back\n{}", logs());
    assert!(log("kubelet-node1.log").contains("SyncLoop REMOVE"));
    k.ok(&["uncordon", "node1"]);

    // `kubectl delete pod` waits (watching) until the kubelet has removed it; the ReplicaSet replaces it.
    let one = name(&web_pods(&k)[0]);
    let out = k.ok(&["delete", "pod", &one, "-n", "default", "--timeout=30s"]);
    assert!(out.contains(&format!("pod \"{one}\" deleted")), "{out}");
    assert_ne!(k.run(&["get", "pod", &one, "-n", "default"]).0, 0);
    let (code, out, err) = k.run(&["rollout", "status", "deployment/web", "-n", "default", "--timeout=60s"]);
    assert_eq!(code, 0, "{out}\n{err}\n{}", logs());

    // Deleting the Deployment: the garbage collector removes its ReplicaSets, then their pods.
    k.ok(&["delete", "deployment", "web", "-n", "default"]);
    let collected = wait_for(Duration::from_secs(30), || {
        let rs = k.json(&["get", "rs", "-n", "default"])["items"].as_array().map_or(0, Vec::len);
        (rs == 0 && web_pods(&k).is_empty()).then_some(())
    });
    assert!(collected.is_some(), "ReplicaSets and pods should be collected\n{}", logs());
    assert!(log("controller-manager.log").contains("\"Deleting item\""));

    assert!(scheduler.exited().is_none() && api.exited().is_none());
    eprintln!("workload test took {:?}", started.elapsed());
}
