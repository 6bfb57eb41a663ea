//! Server-side printing: the `meta.k8s.io/v1` Table the real apiserver returns when kubectl asks for
//! `as=Table`, with the columns of the real printers (`pkg/printers/internalversion`) for nodes, pods,
//! deployments, replicasets and PodDisruptionBudgets (wide columns have priority 1). Other resources are
//! answered as plain lists, which kubectl prints as NAME/AGE.

use serde_json::{json, Value};

use super::Resource;
use crate::{
    http::Response,
    objects::{self, str_at},
};

/// Content type of a Table response.
pub(super) const TABLE_CONTENT_TYPE: &str = "application/json;as=Table;v=v1;g=meta.k8s.io";

/// A Table of `items`, or `None` when the double has no printer for `r`.
pub(super) fn table(r: &Resource, items: &[Value], rv: &str) -> Option<Value> {
    let columns = columns(r)?;
    let rows: Vec<Value> = items.iter().filter_map(|o| row(r, o)).collect();
    Some(json!({"kind":"Table","apiVersion":"meta.k8s.io/v1","metadata":{"resourceVersion":rv},
        "columnDefinitions": columns, "rows": rows}))
}

/// The HTTP response for a Table.
pub(super) fn response(table: &Value) -> Response {
    let mut resp = Response::json(200, table);
    resp.content_type = TABLE_CONTENT_TYPE.into();
    resp
}

fn col(name: &str, kind: &str, description: &str, priority: u8) -> Value {
    let format = if name == "Name" { "name" } else { "" };
    json!({"name": name, "type": kind, "format": format, "description": description, "priority": priority})
}

fn columns(r: &Resource) -> Option<Vec<Value>> {
    let name = col("Name", "string", "Name must be unique within a namespace.", 0);
    let age = col(
        "Age",
        "string",
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
        0,
    );
    Some(match r.plural {
        "nodes" => vec![
            name,
            col("Status", "string", "The status of the node", 0),
            col("Roles", "string", "The roles of the node", 0),
            age,
            col("Version", "string", "Kubelet Version reported by the node.", 0),
            col("Internal-IP", "string", "List of addresses reachable to the node.", 1),
            col("External-IP", "string", "List of addresses reachable to the node.", 1),
            col("OS-Image", "string", "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).", 1),
            col("Kernel-Version", "string", "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).", 1),
            col("Container-Runtime", "string", "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).", 1),
        ],
        "pods" => vec![
            name,
            col("Ready", "string", "The aggregate readiness state of this pod for accepting traffic.", 0),
            col("Status", "string", "The aggregate status of the containers in this pod.", 0),
            col("Restarts", "string", "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.", 0),
            age,
            col("IP", "string", "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.", 1),
            col("Node", "string", "NodeName is a request to schedule this pod onto a specific node.", 1),
            col("Nominated Node", "string", "nominatedNodeName is set only when this pod preempts other pods on the node, but it cannot be scheduled right away as preemption victims receive their graceful termination periods.", 1),
            col("Readiness Gates", "string", "If specified, all readiness gates will be evaluated for pod readiness.", 1),
        ],
        "deployments" => vec![
            name,
            col("Ready", "string", "Number of the pod with ready state", 0),
            col("Up-to-date", "integer", "Total number of non-terminated pods targeted by this deployment that have the desired template spec.", 0),
            col("Available", "integer", "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.", 0),
            age,
            col("Containers", "string", "Names of each container in the template.", 1),
            col("Images", "string", "Images referenced by each container in the template.", 1),
            col("Selector", "string", "Label selector for pods. Existing ReplicaSets whose pods are selected by this will be the ones affected by this deployment.", 1),
        ],
        "replicasets" => vec![
            name,
            col("Desired", "integer", "Replicas is the number of desired pods.", 0),
            col("Current", "integer", "Replicas is the most recently observed number of replicas.", 0),
            col("Ready", "integer", "The number of ready replicas for this replica set.", 0),
            age,
            col("Containers", "string", "Names of each container in the template.", 1),
            col("Images", "string", "Images referenced by each container in the template.", 1),
            col("Selector", "string", "Selector is a label query over pods that should match the replica count.", 1),
        ],
        "poddisruptionbudgets" => vec![
            name,
            col("Min Available", "string", "The minimum number of pods that must be available simultaneously.", 0),
            col("Max Unavailable", "string", "The maximum number of pods that may be unavailable simultaneously.", 0),
            col("Allowed Disruptions", "integer", "Calculated number of pods that may be disrupted at this time.", 0),
            age,
        ],
        _ => return None,
    })
}

/// One row (cells + the object's metadata, as `PartialObjectMetadata`).
pub(super) fn row(r: &Resource, o: &Value) -> Option<Value> {
    let name = o["metadata"]["name"].clone();
    let age = age_of(str_at(o, "metadata.creationTimestamp"));
    let int = |path: &str| path.split('.').fold(o, |v, p| &v[p]).as_i64().unwrap_or(0);
    let cells = match r.plural {
        "nodes" => node_cells(o, name, age),
        "pods" => pod_cells(o, name, age),
        "deployments" => {
            let (containers, images) = template_containers(o);
            let desired = o["spec"]["replicas"].as_i64().unwrap_or(1);
            json!([
                name,
                format!("{}/{desired}", int("status.readyReplicas")),
                int("status.updatedReplicas"),
                int("status.availableReplicas"),
                age,
                containers,
                images,
                objects::selector_string(&o["spec"]["selector"])
            ])
        }
        "replicasets" => {
            let (containers, images) = template_containers(o);
            json!([
                name,
                o["spec"]["replicas"].as_i64().unwrap_or(1),
                int("status.replicas"),
                int("status.readyReplicas"),
                age,
                containers,
                images,
                objects::selector_string(&o["spec"]["selector"])
            ])
        }
        "poddisruptionbudgets" => {
            let show = |v: &Value| match v {
                Value::Null => "N/A".to_string(),
                Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            json!([
                name,
                show(&o["spec"]["minAvailable"]),
                show(&o["spec"]["maxUnavailable"]),
                int("status.disruptionsAllowed"),
                age
            ])
        }
        _ => return None,
    };
    Some(json!({"cells": cells,
        "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}}))
}

fn node_cells(n: &Value, name: Value, age: String) -> Value {
    let ready = match objects::node_ready_status(n) {
        "True" => "Ready",
        "False" | "Unknown" => "NotReady",
        _ => "Unknown",
    };
    let status = if n["spec"]["unschedulable"] == json!(true) {
        format!("{ready},SchedulingDisabled")
    } else {
        ready.to_string()
    };
    let roles: Vec<String> = n["metadata"]["labels"]
        .as_object()
        .map(|l| {
            l.keys().filter_map(|k| k.strip_prefix("node-role.kubernetes.io/").map(String::from)).collect()
        })
        .unwrap_or_default();
    let roles = if roles.is_empty() { "<none>".to_string() } else { roles.join(",") };
    let address = |kind: &str| {
        n["status"]["addresses"]
            .as_array()
            .and_then(|a| a.iter().find(|a| a["type"] == kind))
            .and_then(|a| a["address"].as_str())
            .unwrap_or("<none>")
            .to_string()
    };
    let info = |k: &str| match n["status"]["nodeInfo"][k].as_str() {
        Some(s) if !s.is_empty() => s.to_string(),
        _ => "<unknown>".to_string(),
    };
    json!([
        name,
        status,
        roles,
        age,
        n["status"]["nodeInfo"]["kubeletVersion"],
        address("InternalIP"),
        address("ExternalIP"),
        info("osImage"),
        info("kernelVersion"),
        info("containerRuntimeVersion")
    ])
}

/// The READY and STATUS of `kubectl get pods` (after the real `printPod`, without init-container detail).
fn pod_cells(p: &Value, name: Value, age: String) -> Value {
    let total = p["spec"]["containers"].as_array().map_or(0, Vec::len);
    let statuses = p["status"]["containerStatuses"].as_array().cloned().unwrap_or_default();
    let ready = statuses.iter().filter(|c| c["ready"] == true).count();
    let restarts: i64 = statuses.iter().map(|c| c["restartCount"].as_i64().unwrap_or(0)).sum();
    let mut reason = match str_at(p, "status.reason") {
        "" => str_at(p, "status.phase").to_string(),
        r => r.to_string(),
    };
    for c in statuses.iter().rev() {
        if let Some(w) = c["state"]["waiting"]["reason"].as_str().filter(|w| !w.is_empty()) {
            reason = w.to_string();
        } else if let Some(t) = c["state"]["terminated"]["reason"].as_str().filter(|t| !t.is_empty()) {
            reason = t.to_string();
        }
    }
    if objects::is_deleting(p) {
        reason =
            if str_at(p, "status.reason") == "NodeLost" { "Unknown".into() } else { "Terminating".into() };
    }
    let or_none = |s: &str| if s.is_empty() { "<none>".to_string() } else { s.to_string() };
    let gates = p["spec"]["readinessGates"].as_array().map_or(0, Vec::len);
    let gates = if gates == 0 { "<none>".to_string() } else { format!("0/{gates}") };
    json!([
        name,
        format!("{ready}/{total}"),
        reason,
        restarts.to_string(),
        age,
        or_none(str_at(p, "status.podIP")),
        or_none(str_at(p, "spec.nodeName")),
        or_none(str_at(p, "status.nominatedNodeName")),
        gates
    ])
}

fn template_containers(o: &Value) -> (String, String) {
    let containers = o["spec"]["template"]["spec"]["containers"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = containers.iter().filter_map(|c| c["name"].as_str()).collect();
    let images: Vec<&str> = containers.iter().filter_map(|c| c["image"].as_str()).collect();
    (names.join(","), images.join(","))
}

/// `translateTimestampSince` / `duration.HumanDuration` (coarse).
fn age_of(ts: &str) -> String {
    let Some(t) = objects::parse_time(ts) else { return "<unknown>".into() };
    let secs = (time::OffsetDateTime::now_utc() - t).whole_seconds().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 10800 => format!("{}m", s / 60),
        s if s < 172800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(plural: &str) -> &'static Resource {
        super::super::RESOURCES.iter().find(|r| r.plural == plural).unwrap()
    }

    #[test]
    fn pod_and_deployment_rows() {
        let pod = json!({"metadata": {"name": "web-1", "creationTimestamp": objects::now()},
            "spec": {"nodeName": "node1", "containers": [{"name": "w"}]},
            "status": {"phase": "Running", "podIP": "10.244.1.2", "containerStatuses": [{"ready": true, "restartCount": 0}]}});
        let row = row(res("pods"), &pod).unwrap();
        assert_eq!(row["cells"][1], "1/1");
        assert_eq!(row["cells"][2], "Running");
        assert_eq!(row["cells"][5], "10.244.1.2");
        assert_eq!(row["cells"][6], "node1");
        let mut gone = pod.clone();
        gone["metadata"]["deletionTimestamp"] = json!(objects::now());
        assert_eq!(super::row(res("pods"), &gone).unwrap()["cells"][2], "Terminating");
        let pending = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "w"}]}, "status": {"phase": "Pending"}});
        let row = super::row(res("pods"), &pending).unwrap();
        assert_eq!(
            (row["cells"][1].as_str(), row["cells"][2].as_str(), row["cells"][6].as_str()),
            (Some("0/1"), Some("Pending"), Some("<none>"))
        );

        let d = json!({"metadata": {"name": "web"}, "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
            "template": {"spec": {"containers": [{"name": "w", "image": "i:1"}]}}},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}});
        let row = super::row(res("deployments"), &d).unwrap();
        assert_eq!(row["cells"], json!(["web", "2/3", 3, 2, "<unknown>", "w", "i:1", "app=web"]));
        let pdb = json!({"metadata": {"name": "web"}, "spec": {"minAvailable": 2}, "status": {"disruptionsAllowed": 1}});
        assert_eq!(
            super::row(res("poddisruptionbudgets"), &pdb).unwrap()["cells"],
            json!(["web", "2", "N/A", 1, "<unknown>"])
        );
        assert!(table(res("configmaps"), &[], "1").is_none());
    }
}
