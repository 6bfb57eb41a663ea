//! The kube-scheduler double's scheduling: every pod without `spec.nodeName` (for `default-scheduler`, not
//! being deleted) is bound through the `pods/binding` subresource, as the real scheduler does, to a feasible
//! node with the fewest pods (ties by name). Feasible, after the real filter plugins in their order:
//! NodeUnschedulable (a cordoned node, unless the pod tolerates `node.kubernetes.io/unschedulable`),
//! TaintToleration (NoSchedule and NoExecute taints), NodeAffinity (`nodeSelector`, required node affinity).
//! A node whose Ready condition is not True counts as tainted `node.kubernetes.io/not-ready` (False) or
//! `node.kubernetes.io/unreachable` (Unknown) with NoSchedule: the taints the real node lifecycle controller
//! would put on it. A pod that fits nowhere gets `PodScheduled=False` (`Unschedulable`) with the real
//! message ("0/2 nodes are available: 2 node(s) were unschedulable. preemption: ..."). No resources,
//! ports, volumes, spreading constraints or preemption.

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use serde_json::{json, Value};

use crate::{
    informer::Wakeup,
    kubeconfig::ApiClient,
    log,
    objects::{self, str_at},
};

/// Runs the scheduling loop forever.
pub async fn run(client: ApiClient) {
    let wake = Wakeup::new(&client, &["/api/v1/pods".to_string(), "/api/v1/nodes".to_string()]);
    // Last unschedulable message per pod UID: logged and written once, not on every pass.
    let mut unschedulable: HashMap<String, String> = HashMap::new();
    // Watches on pods and nodes wake the loop; the periodic pass is a safety net, kept long (see the
    // controllers' loop).
    loop {
        wake.wait(Duration::from_secs(30)).await;
        if let Err(e) = pass(&client, &mut unschedulable).await {
            log::error("schedule_one.go:1", "Error scheduling pods", &[("err", e)]);
        }
    }
}

async fn list(client: &ApiClient, path: &str) -> Result<Vec<Value>, String> {
    match client.call("GET", path, None).await? {
        (200, body) => Ok(body["items"].as_array().cloned().unwrap_or_default()),
        (code, body) => Err(format!("list {path}: {} ({code})", body["message"].as_str().unwrap_or(""))),
    }
}

/// Whether this scheduler is responsible for `pod` now.
fn wants(pod: &Value) -> bool {
    str_at(pod, "spec.nodeName").is_empty()
        && !objects::is_deleting(pod)
        && !matches!(str_at(pod, "status.phase"), "Succeeded" | "Failed")
        && matches!(str_at(pod, "spec.schedulerName"), "" | "default-scheduler")
}

async fn pass(client: &ApiClient, unschedulable: &mut HashMap<String, String>) -> Result<(), String> {
    let nodes = list(client, "/api/v1/nodes").await?;
    let pods = list(client, "/api/v1/pods").await?;
    let mut load: BTreeMap<String, usize> =
        nodes.iter().map(|n| (str_at(n, "metadata.name").to_string(), 0)).collect();
    for p in &pods {
        if let Some(n) = load.get_mut(str_at(p, "spec.nodeName")) {
            if !matches!(str_at(p, "status.phase"), "Succeeded" | "Failed") {
                *n += 1;
            }
        }
    }
    let mut queue: Vec<&Value> = pods.iter().filter(|p| wants(p)).collect();
    // The real queue's PrioritySort: higher priority first, then older first.
    queue.sort_by_key(|p| {
        (-p["spec"]["priority"].as_i64().unwrap_or(0), str_at(p, "metadata.creationTimestamp").to_string())
    });
    for pod in queue {
        let uid = str_at(pod, "metadata.uid").to_string();
        let name = objects::key(pod);
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let feasible: Vec<&str> = nodes
            .iter()
            .filter(|n| match fits(pod, n) {
                Ok(()) => true,
                Err(reason) => {
                    *reasons.entry(reason).or_default() += 1;
                    false
                }
            })
            .map(|n| str_at(n, "metadata.name"))
            .collect();
        let Some(best) = feasible.iter().min_by_key(|n| (load.get(**n).copied().unwrap_or(0), **n)) else {
            let msg = fit_error(nodes.len(), &reasons);
            if unschedulable.get(&uid) != Some(&msg) {
                log::info(
                    "schedule_one.go:1",
                    "Unable to schedule pod; no fit; waiting",
                    &[("pod", name.clone()), ("err", msg.clone())],
                );
                if mark_unschedulable(client, pod, &msg).await {
                    unschedulable.insert(uid, msg);
                }
            }
            continue;
        };
        let binding = json!({"apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": pod["metadata"]["name"], "namespace": pod["metadata"]["namespace"], "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": best}});
        let url = format!(
            "/api/v1/namespaces/{}/pods/{}/binding",
            str_at(pod, "metadata.namespace"),
            str_at(pod, "metadata.name")
        );
        match client.call("POST", &url, Some(("application/json", binding))).await {
            Ok((201, _)) => {
                *load.entry(best.to_string()).or_default() += 1;
                unschedulable.remove(&uid);
                log::info(
                    "schedule_one.go:1",
                    "Successfully bound pod to node",
                    &[
                        ("pod", name),
                        ("node", best.to_string()),
                        ("evaluatedNodes", nodes.len().to_string()),
                        ("feasibleNodes", feasible.len().to_string()),
                    ],
                );
            }
            Ok((code, body)) => log::error(
                "schedule_one.go:1",
                "Error scheduling pod; retrying",
                &[("pod", name), ("err", format!("{} ({code})", body["message"].as_str().unwrap_or("")))],
            ),
            Err(e) => log::error(
                "schedule_one.go:1",
                "Error scheduling pod; retrying",
                &[("pod", name), ("err", e)],
            ),
        }
    }
    unschedulable.retain(|uid, _| pods.iter().any(|p| str_at(p, "metadata.uid") == uid && wants(p)));
    Ok(())
}

/// The filter plugins in the real order; Err = the first failing plugin's reason for this node.
pub fn fits(pod: &Value, node: &Value) -> Result<(), String> {
    // NodeUnschedulable
    let cordon = json!({"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"});
    if node["spec"]["unschedulable"] == true && !objects::pod_tolerates(pod, &cordon) {
        return Err("node(s) were unschedulable".into());
    }
    // TaintToleration, with the taints the node lifecycle controller would add for readiness.
    let mut taints: Vec<Value> = node["spec"]["taints"].as_array().cloned().unwrap_or_default();
    match objects::node_ready_status(node) {
        "True" => {}
        "False" => taints.push(json!({"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"})),
        _ => taints.push(json!({"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"})),
    }
    for taint in taints.iter().filter(|t| matches!(str_at(t, "effect"), "NoSchedule" | "NoExecute")) {
        if !objects::pod_tolerates(pod, taint) {
            return Err(format!(
                "node(s) had untolerated taint {{{}: {}}}",
                str_at(taint, "key"),
                str_at(taint, "value")
            ));
        }
    }
    // NodeAffinity
    if !node_affinity(pod, node) {
        return Err("node(s) didn't match Pod's node affinity/selector".into());
    }
    Ok(())
}

/// `nodeSelector` and `requiredDuringSchedulingIgnoredDuringExecution` node affinity.
fn node_affinity(pod: &Value, node: &Value) -> bool {
    let labels = &node["metadata"]["labels"];
    let by_selector = pod["spec"]["nodeSelector"]
        .as_object()
        .is_none_or(|m| m.iter().all(|(k, v)| labels[k].as_str() == v.as_str()));
    let terms = &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    let by_affinity = terms.as_array().is_none_or(|terms| {
        terms.iter().any(|term| {
            let exprs = objects::selector_matches(
                &json!({"matchExpressions": term["matchExpressions"].as_array().cloned().unwrap_or_default()}),
                labels,
            );
            let fields = term["matchFields"].as_array().into_iter().flatten().all(|f| {
                let name = str_at(node, "metadata.name");
                let values: Vec<&str> =
                    f["values"].as_array().map(|v| v.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
                match (str_at(f, "key"), str_at(f, "operator")) {
                    ("metadata.name", "In") => values.contains(&name),
                    ("metadata.name", "NotIn") => !values.contains(&name),
                    _ => false,
                }
            });
            let empty = term["matchExpressions"].as_array().is_none_or(|a| a.is_empty())
                && term["matchFields"].as_array().is_none_or(|a| a.is_empty());
            !empty && exprs && fields
        })
    });
    by_selector && by_affinity
}

/// `FitError.Error()` with the default preemption plugin's post-filter message.
pub fn fit_error(nodes: usize, reasons: &BTreeMap<String, usize>) -> String {
    let mut histogram: Vec<String> = reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
    histogram.sort();
    let mut msg = format!("0/{nodes} nodes are available");
    if !histogram.is_empty() {
        msg.push_str(&format!(": {}", histogram.join(", ")));
    }
    msg.push_str(&format!(
        ". preemption: 0/{nodes} nodes are available: {nodes} Preemption is not helpful for scheduling."
    ));
    msg
}

/// Writes `PodScheduled=False` (`Unschedulable`) with the fit error, as the real scheduler's failure handler.
async fn mark_unschedulable(client: &ApiClient, pod: &Value, msg: &str) -> bool {
    let mut with = json!({"status": {"conditions": pod["status"]["conditions"].clone()}});
    objects::set_condition(
        &mut with,
        json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": msg,
            "lastProbeTime": null, "lastTransitionTime": objects::now()}),
    );
    let url = format!(
        "/api/v1/namespaces/{}/pods/{}/status",
        str_at(pod, "metadata.namespace"),
        str_at(pod, "metadata.name")
    );
    let patch = json!({"metadata": {"uid": pod["metadata"]["uid"]}, "status": {"conditions": with["status"]["conditions"]}});
    match client.call("PATCH", &url, Some(("application/strategic-merge-patch+json", patch))).await {
        Ok((200, _)) => true,
        Ok((code, body)) => {
            log::error(
                "schedule_one.go:1",
                "Error updating pod",
                &[
                    ("pod", objects::key(pod)),
                    ("err", format!("{} ({code})", body["message"].as_str().unwrap_or(""))),
                ],
            );
            false
        }
        Err(e) => {
            log::error("schedule_one.go:1", "Error updating pod", &[("pod", objects::key(pod)), ("err", e)]);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ready: &str, extra: Value) -> Value {
        let mut n = json!({"metadata": {"name": name, "labels": {"kubernetes.io/os": "linux"}}, "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": ready}]}});
        objects_merge(&mut n, &extra);
        n
    }

    fn objects_merge(a: &mut Value, b: &Value) {
        if let (Some(a), Some(b)) = (a.as_object_mut(), b.as_object()) {
            for (k, v) in b {
                match a.get_mut(k) {
                    Some(x) if x.is_object() && v.is_object() => objects_merge(x, v),
                    _ => {
                        a.insert(k.clone(), v.clone());
                    }
                }
            }
        }
    }

    #[test]
    fn filters_in_order() {
        let pod = json!({"spec": {"tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}]}});
        assert!(fits(&pod, &node("a", "True", json!({}))).is_ok());
        assert_eq!(
            fits(&pod, &node("a", "True", json!({"spec": {"unschedulable": true}}))).unwrap_err(),
            "node(s) were unschedulable"
        );
        assert_eq!(
            fits(&pod, &node("a", "False", json!({}))).unwrap_err(),
            "node(s) had untolerated taint {node.kubernetes.io/not-ready: }"
        );
        assert_eq!(
            fits(&pod, &node("a", "Unknown", json!({}))).unwrap_err(),
            "node(s) had untolerated taint {node.kubernetes.io/unreachable: }"
        );
        let cp = node(
            "cp",
            "True",
            json!({"spec": {"taints": [{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]}}),
        );
        assert_eq!(
            fits(&pod, &cp).unwrap_err(),
            "node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }"
        );
        let tolerant = json!({"spec": {"tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"},
            {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}]}});
        assert!(fits(&tolerant, &cp).is_ok());
        assert!(fits(&tolerant, &node("a", "True", json!({"spec": {"unschedulable": true}}))).is_ok());
        let prefer =
            node("p", "True", json!({"spec": {"taints": [{"key": "x", "effect": "PreferNoSchedule"}]}}));
        assert!(fits(&pod, &prefer).is_ok());
        let linux = json!({"spec": {"nodeSelector": {"kubernetes.io/os": "linux"}}});
        assert!(fits(&linux, &node("a", "True", json!({}))).is_ok());
        let windows = json!({"spec": {"nodeSelector": {"kubernetes.io/os": "windows"}}});
        assert_eq!(
            fits(&windows, &node("a", "True", json!({}))).unwrap_err(),
            "node(s) didn't match Pod's node affinity/selector"
        );
        let affinity = json!({"spec": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["windows"]}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]}]}}}}});
        assert!(fits(&affinity, &node("a", "True", json!({}))).is_err());
        assert!(fits(&affinity, &node("b", "True", json!({}))).is_ok());
    }

    #[test]
    fn fit_error_wording() {
        let mut reasons = BTreeMap::new();
        reasons.insert("node(s) were unschedulable".to_string(), 2);
        reasons
            .insert("node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }".to_string(), 1);
        assert_eq!(
            fit_error(3, &reasons),
            "0/3 nodes are available: 1 node(s) had untolerated taint {node-role.kubernetes.io/control-plane: }, 2 node(s) were unschedulable. preemption: 0/3 nodes are available: 3 Preemption is not helpful for scheduling."
        );
        assert_eq!(
            fit_error(0, &BTreeMap::new()),
            "0/0 nodes are available. preemption: 0/0 nodes are available: 0 Preemption is not helpful for scheduling."
        );
    }
}
