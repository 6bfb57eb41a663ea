//! Pod semantics of the apiserver double, after the real pod registry (`pkg/registry/core/pod`): defaults and
//! status on create, graceful deletion (a pod bound to a node is only marked; its kubelet removes it), the
//! `binding` subresource the scheduler uses, and the `eviction` subresource that honours
//! PodDisruptionBudgets (429 while `disruptionsAllowed` is 0; otherwise decrement it, record the pod in
//! `disruptedPods`, mark the pod `DisruptionTarget` and delete it).

use serde_json::{json, Value};

use super::{find, key_of, list_prefix, not_found, now, parse_body, status, State};
use crate::{
    http::{Request, Response},
    log,
    objects::{self, pod_ready, str_at},
};

/// Retries of a compare-and-swap that lost a race (the real eviction code retries 20 times too).
const CAS_ATTEMPTS: usize = 20;

const PDB_MESSAGE: &str = "Cannot evict pod as it would violate the pod's disruption budget.";

/// Defaults the real apiserver fills in on pod create (API defaulting and the `DefaultTolerationSeconds`
/// admission plugin), and the initial status (`Pending`, QoS class).
pub(super) fn prepare_create(pod: &mut Value) {
    let spec = &mut pod["spec"];
    for (k, v) in [
        ("restartPolicy", json!("Always")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("dnsPolicy", json!("ClusterFirst")),
        ("schedulerName", json!("default-scheduler")),
        ("securityContext", json!({})),
        ("enableServiceLinks", json!(true)),
        ("priority", json!(0)),
    ] {
        if spec[k].is_null() {
            spec[k] = v;
        }
    }
    for list in ["containers", "initContainers"] {
        for c in spec[list].as_array_mut().into_iter().flatten() {
            if c["imagePullPolicy"].is_null() {
                let latest = c["image"].as_str().is_some_and(|i| i.ends_with(":latest") || !i.contains(':'));
                c["imagePullPolicy"] = json!(if latest { "Always" } else { "IfNotPresent" });
            }
            if c["terminationMessagePath"].is_null() {
                c["terminationMessagePath"] = json!("/dev/termination-log");
                c["terminationMessagePolicy"] = json!("File");
            }
            if c["resources"].is_null() {
                c["resources"] = json!({});
            }
        }
    }
    if !spec["tolerations"].is_array() {
        spec["tolerations"] = json!([]);
    }
    let tolerations = spec["tolerations"].as_array_mut().expect("array");
    for key in ["node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"] {
        let covered = tolerations.iter().any(|t| {
            (t["key"] == key || (t["key"].is_null() && t["operator"] == "Exists"))
                && (t["effect"].is_null() || t["effect"] == "NoExecute")
        });
        if !covered {
            tolerations.push(
                json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}),
            );
        }
    }
    let qos = qos_class(&pod["spec"]);
    pod["status"] = json!({"phase": "Pending", "qosClass": qos});
}

/// `qos.GetPodQOS`, simplified to the containers' requests and limits of cpu and memory.
fn qos_class(spec: &Value) -> &'static str {
    let containers: Vec<&Value> = ["containers", "initContainers"]
        .iter()
        .flat_map(|l| spec[*l].as_array().into_iter().flatten())
        .collect();
    let any = containers.iter().any(|c| {
        ["requests", "limits"].iter().any(|k| c["resources"][*k].as_object().is_some_and(|m| !m.is_empty()))
    });
    if !any {
        return "BestEffort";
    }
    let guaranteed = containers.iter().all(|c| {
        ["cpu", "memory"].iter().all(|r| {
            let limit = &c["resources"]["limits"][*r];
            let request = &c["resources"]["requests"][*r];
            !limit.is_null() && (request.is_null() || request == limit)
        })
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

/// `DeleteOptions` from the request body (JSON) or query: grace period and preconditions.
#[derive(Debug, Default, Clone)]
pub(super) struct DeleteOptions {
    grace: Option<i64>,
    uid: Option<String>,
    resource_version: Option<String>,
}

impl DeleteOptions {
    /// From a DELETE request.
    pub(super) fn of(req: &Request) -> Self {
        let body: Value = serde_json::from_slice(&req.body).unwrap_or(Value::Null);
        let mut o = Self::from_json(&body);
        if let Some(g) = req.param("gracePeriodSeconds").and_then(|g| g.parse().ok()) {
            o.grace = Some(g);
        }
        o
    }

    fn from_json(v: &Value) -> Self {
        Self {
            grace: v["gracePeriodSeconds"].as_i64(),
            uid: v["preconditions"]["uid"].as_str().map(String::from),
            resource_version: v["preconditions"]["resourceVersion"].as_str().map(String::from),
        }
    }
}

fn precondition_failed(what: &str, wanted: &str, actual: &str) -> Response {
    status(
        409,
        "Conflict",
        &format!("Operation cannot be fulfilled on pods: Precondition failed: {what} in precondition: {wanted}, {what} in object meta: {actual}"),
    )
}

/// Deletes the pod at `key` like the real registry's graceful deletion: a pod that is bound to a node and not
/// terminated gets `deletionTimestamp` = now + grace period (the request's, else the pod's
/// `terminationGracePeriodSeconds`) and stays until its kubelet confirms with a zero-grace delete; an
/// unscheduled or terminated pod, or a zero grace period, removes it at once.
pub(super) async fn delete(
    st: &State,
    key: &str,
    name: &str,
    opts: &DeleteOptions,
) -> Result<Response, String> {
    let pods = find("", "v1", "pods").expect("pods are served");
    for _ in 0..CAS_ATTEMPTS {
        let Some(existing) = st.etcd.get(key).await? else { return Ok(not_found(pods, name)) };
        let pod = &existing.value;
        if let Some(uid) = &opts.uid {
            if uid != str_at(pod, "metadata.uid") {
                return Ok(precondition_failed("UID", uid, str_at(pod, "metadata.uid")));
            }
        }
        if let Some(rv) = &opts.resource_version {
            if *rv != existing.mod_revision.to_string() {
                return Ok(precondition_failed("ResourceVersion", rv, &existing.mod_revision.to_string()));
            }
        }
        let mut grace =
            opts.grace.or_else(|| pod["spec"]["terminationGracePeriodSeconds"].as_i64()).unwrap_or(30).max(0);
        let terminated = matches!(str_at(pod, "status.phase"), "Succeeded" | "Failed");
        if str_at(pod, "spec.nodeName").is_empty() || terminated {
            grace = 0;
        }
        let mut obj = existing.value.clone();
        obj["metadata"]["resourceVersion"] = json!(existing.mod_revision.to_string());
        if grace == 0 {
            if st.etcd.delete_if(key, existing.mod_revision).await? {
                return Ok(Response::json(200, &obj));
            }
            continue;
        }
        // Already terminating: only a shorter grace period moves the deadline.
        let current = pod["metadata"]["deletionGracePeriodSeconds"].as_i64();
        if current.is_some_and(|c| c <= grace) {
            return Ok(Response::json(200, &obj));
        }
        let deadline = time::OffsetDateTime::now_utc() + time::Duration::seconds(grace);
        obj["metadata"]["deletionTimestamp"] = json!(objects::rfc3339(deadline));
        obj["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        if let Some(m) = obj["metadata"].as_object_mut() {
            m.remove("resourceVersion");
        }
        if let Some(rev) = st.etcd.put_if(key, &obj, existing.mod_revision).await? {
            obj["metadata"]["resourceVersion"] = json!(rev.to_string());
            return Ok(Response::json(200, &obj));
        }
    }
    Ok(status(409, "Conflict", &format!("pods \"{name}\" kept changing while it was being deleted")))
}

/// For kubelets: the pod the request names must be bound to `node` (the node authorizer and NodeRestriction
/// let a kubelet write only the status of, and delete only, its own pods).
pub(super) async fn bound_to(st: &State, t: &super::Target, node: &str, verb: &str) -> Result<(), String> {
    let name = t.name.as_deref().unwrap_or_default();
    let Ok(Some(kv)) = st.etcd.get(&key_of(t.res, t.ns.as_deref(), name)).await else {
        // Missing pods answer 404 further on.
        return Ok(());
    };
    if str_at(&kv.value, "spec.nodeName") == node {
        return Ok(());
    }
    let resource = match &t.sub {
        Some(s) => format!("pods/{s}"),
        None => "pods".into(),
    };
    Err(format!(
        "pods \"{name}\" is forbidden: User \"system:node:{node}\" cannot {verb} resource \"{resource}\" in API group \"\" in the namespace \"{}\": no relationship found between node '{node}' and this object",
        t.ns.as_deref().unwrap_or_default()
    ))
}

fn success() -> Response {
    Response::json(
        201,
        &json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Success","code":201}),
    )
}

/// `pods/binding`: assigns an unscheduled pod to a node (what the scheduler posts), and records the
/// `PodScheduled` condition.
pub(super) async fn bind(st: &State, req: &Request, ns: &str, name: &str) -> Result<Response, String> {
    let binding = match parse_body(req) {
        Ok(b) => b,
        Err(resp) => return Ok(resp),
    };
    let target = str_at(&binding, "target.name").to_string();
    if target.is_empty() || !matches!(str_at(&binding, "target.kind"), "" | "Node") {
        return Ok(status(
            422,
            "Invalid",
            &format!(
                "Binding.core \"{name}\" is invalid: target.name: Required value: a Node name is required"
            ),
        ));
    }
    let pods = find("", "v1", "pods").expect("pods are served");
    let key = key_of(pods, Some(ns), name);
    for _ in 0..CAS_ATTEMPTS {
        let Some(existing) = st.etcd.get(&key).await? else { return Ok(not_found(pods, name)) };
        let mut pod = existing.value.clone();
        if objects::is_deleting(&pod) {
            return Ok(status(
                500,
                "InternalError",
                &format!(
                    "Internal error occurred: pod {name} is being deleted, cannot be assigned to a host"
                ),
            ));
        }
        if let Some(uid) = binding["metadata"]["uid"].as_str() {
            if uid != str_at(&pod, "metadata.uid") {
                return Ok(precondition_failed("UID", uid, str_at(&pod, "metadata.uid")));
            }
        }
        let assigned = str_at(&pod, "spec.nodeName");
        if !assigned.is_empty() {
            return Ok(status(
                409,
                "Conflict",
                &format!("Operation cannot be fulfilled on pods/binding \"{name}\": pod {name} is already assigned to node \"{assigned}\""),
            ));
        }
        pod["spec"]["nodeName"] = json!(target);
        if let Some(a) = binding["metadata"]["annotations"].as_object() {
            for (k, v) in a {
                pod["metadata"]["annotations"][k] = v.clone();
            }
        }
        objects::set_condition(
            &mut pod,
            json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now()}),
        );
        if st.etcd.put_if(&key, &pod, existing.mod_revision).await?.is_some() {
            return Ok(success());
        }
    }
    Ok(status(409, "Conflict", &format!("pods \"{name}\" kept changing while it was being bound")))
}

/// A 429 the way the real eviction code words it, with the `DisruptionBudget` cause.
fn too_many_requests(cause: String, retry_after: i64) -> Response {
    let mut details = json!({"causes": [{"reason": "DisruptionBudget", "message": cause}]});
    if retry_after > 0 {
        details["retryAfterSeconds"] = json!(retry_after);
    }
    Response::json(
        429,
        &json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":PDB_MESSAGE,"reason":"TooManyRequests","details":details,"code":429}),
    )
}

/// `canIgnorePDB`: terminal, pending and already terminating pods are deleted without asking any budget.
fn can_ignore_pdb(pod: &Value) -> bool {
    matches!(str_at(pod, "status.phase"), "Succeeded" | "Failed" | "Pending") || objects::is_deleting(pod)
}

/// The eviction subresource, after the real `EvictionREST.Create`.
pub(super) async fn evict(st: &State, req: &Request, ns: &str, name: &str) -> Result<Response, String> {
    let eviction = match parse_body(req) {
        Ok(b) => b,
        Err(resp) => return Ok(resp),
    };
    let named = str_at(&eviction, "metadata.name");
    if !named.is_empty() && named != name {
        return Ok(status(400, "BadRequest", "name in URL does not match name in Eviction object"));
    }
    let mut opts = DeleteOptions::from_json(&eviction["deleteOptions"]);
    let pods = find("", "v1", "pods").expect("pods are served");
    let key = key_of(pods, Some(ns), name);
    let Some(existing) = st.etcd.get(&key).await? else { return Ok(not_found(pods, name)) };
    let pod = existing.value;
    if !can_ignore_pdb(&pod) {
        let pdbs = covering_budgets(st, &pod).await?;
        if pdbs.len() > 1 {
            return Ok(Response::json(
                500,
                &json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.","code":500}),
            ));
        }
        if let Some(pdb_key) = pdbs.first() {
            match check_and_decrement(st, pdb_key, &pod, name).await? {
                Budget::Refused(resp) => {
                    log::info(
                        "eviction.go:1",
                        "Eviction refused by PodDisruptionBudget",
                        &[
                            ("pod", format!("{ns}/{name}")),
                            (
                                "podDisruptionBudget",
                                pdb_key.trim_start_matches("/registry/poddisruptionbudgets/").to_string(),
                            ),
                        ],
                    );
                    return Ok(resp);
                }
                Budget::Decremented => {}
                Budget::UnhealthyPod => {
                    // Deleting an unready pod must not race with it turning ready: pin its revision.
                    if opts.resource_version.is_none() {
                        opts.resource_version = Some(existing.mod_revision.to_string());
                    }
                }
            }
        }
    }
    let pinned = opts.resource_version.is_some();
    let resp = match mark_disruption_target(st, &key, &mut opts).await? {
        Some(conflict) => conflict,
        None => delete(st, &key, name, &opts).await?,
    };
    if resp.status == 409 && pinned {
        return Ok(too_many_requests(
            format!("The disruption budget for pod {name} is still being processed by the server."),
            10,
        ));
    }
    if resp.status >= 300 {
        return Ok(resp);
    }
    log::info("eviction.go:1", "Evicted pod", &[("pod", format!("{ns}/{name}"))]);
    Ok(success())
}

/// The etcd keys of the PodDisruptionBudgets in the pod's namespace whose selector selects it (an empty
/// selector selects nothing here, as in the real eviction code).
async fn covering_budgets(st: &State, pod: &Value) -> Result<Vec<String>, String> {
    let pdbs = find("policy", "v1", "poddisruptionbudgets").expect("PDBs are served");
    let ns = str_at(pod, "metadata.namespace");
    let prefix = list_prefix(pdbs, Some(ns));
    let (kvs, _) = st.etcd.list(&prefix).await?;
    Ok(kvs
        .into_iter()
        .filter(|kv| super::in_scope(pdbs, Some(ns), &prefix, &kv.key))
        .filter(|kv| {
            let sel = &kv.value["spec"]["selector"];
            !objects::selector_is_empty(sel) && objects::selector_matches(sel, &pod["metadata"]["labels"])
        })
        .map(|kv| kv.key)
        .collect())
}

enum Budget {
    /// A disruption was taken from the budget.
    Decremented,
    /// The pod is not ready and the budget is met: it may go without using a disruption.
    UnhealthyPod,
    /// The budget does not allow it.
    Refused(Response),
}

/// `checkAndDecrement`, as a compare-and-swap on the PDB's status so concurrent evictions cannot both take
/// the last allowed disruption.
async fn check_and_decrement(
    st: &State,
    pdb_key: &str,
    pod: &Value,
    pod_name: &str,
) -> Result<Budget, String> {
    for _ in 0..CAS_ATTEMPTS {
        let Some(kv) = st.etcd.get(pdb_key).await? else { return Ok(Budget::Decremented) };
        let mut pdb = kv.value;
        let name = str_at(&pdb, "metadata.name").to_string();
        let st_ = &pdb["status"];
        let current = st_["currentHealthy"].as_i64().unwrap_or(0);
        let desired = st_["desiredHealthy"].as_i64().unwrap_or(0);
        if !pod_ready(pod) {
            let always = pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow";
            if always || (current >= desired && desired > 0) {
                return Ok(Budget::UnhealthyPod);
            }
        }
        let observed = st_["observedGeneration"].as_i64().unwrap_or(0);
        let generation = pdb["metadata"]["generation"].as_i64().unwrap_or(0);
        if observed < generation {
            return Ok(Budget::Refused(too_many_requests(
                format!("The disruption budget {name} is still being processed by the server."),
                10,
            )));
        }
        let allowed = st_["disruptionsAllowed"].as_i64().unwrap_or(0);
        if allowed < 0 {
            return Ok(Budget::Refused(status(
                403,
                "Forbidden",
                &format!("poddisruptionbudgets.policy \"{name}\" is forbidden: pdb disruptions allowed is negative"),
            )));
        }
        if allowed == 0 {
            return Ok(Budget::Refused(too_many_requests(
                format!(
                    "The disruption budget {name} needs {desired} healthy pods and has {current} currently"
                ),
                0,
            )));
        }
        pdb["status"]["disruptionsAllowed"] = json!(allowed - 1);
        if allowed - 1 == 0 {
            objects::set_condition(
                &mut pdb,
                json!({"type": "DisruptionAllowed", "status": "False", "reason": "InsufficientPods", "message": "",
                    "observedGeneration": observed, "lastTransitionTime": now()}),
            );
        }
        if !pdb["status"]["disruptedPods"].is_object() {
            pdb["status"]["disruptedPods"] = json!({});
        }
        pdb["status"]["disruptedPods"][pod_name] = json!(now());
        if st.etcd.put_if(pdb_key, &pdb, kv.mod_revision).await?.is_some() {
            return Ok(Budget::Decremented);
        }
    }
    Ok(Budget::Refused(status(504, "Timeout", "couldn't update PodDisruptionBudget due to conflicts")))
}

/// `addConditionAndDeletePod`'s first half: the `DisruptionTarget` condition (`EvictionByEvictionAPI`) on
/// the latest pod, checked against the delete preconditions; a pinned resourceVersion moves to the write's.
/// `Some` is the 409 of a failed precondition.
async fn mark_disruption_target(
    st: &State,
    key: &str,
    opts: &mut DeleteOptions,
) -> Result<Option<Response>, String> {
    for _ in 0..CAS_ATTEMPTS {
        let Some(kv) = st.etcd.get(key).await? else { return Ok(None) };
        let mut pod = kv.value;
        if let Some(uid) = &opts.uid {
            if uid != str_at(&pod, "metadata.uid") {
                return Ok(Some(precondition_failed("UID", uid, str_at(&pod, "metadata.uid"))));
            }
        }
        if let Some(rv) = &opts.resource_version {
            if *rv != kv.mod_revision.to_string() {
                return Ok(Some(precondition_failed("ResourceVersion", rv, &kv.mod_revision.to_string())));
            }
        }
        if objects::is_deleting(&pod) {
            return Ok(None);
        }
        let changed = objects::set_condition(
            &mut pod,
            json!({"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
                "message": "Eviction API: evicting", "lastProbeTime": null, "lastTransitionTime": now()}),
        );
        if !changed {
            return Ok(None);
        }
        if let Some(rev) = st.etcd.put_if(key, &pod, kv.mod_revision).await? {
            if opts.resource_version.is_some() {
                opts.resource_version = Some(rev.to_string());
            }
            return Ok(None);
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_defaults_and_qos() {
        let mut pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "img:1"}]},
            "status": {"phase": "Running"}});
        prepare_create(&mut pod);
        assert_eq!(pod["status"], json!({"phase": "Pending", "qosClass": "BestEffort"}));
        assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 30);
        assert_eq!(pod["spec"]["schedulerName"], "default-scheduler");
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "IfNotPresent");
        assert_eq!(pod["spec"]["tolerations"].as_array().unwrap().len(), 2);
        let burstable = json!({"containers": [{"resources": {"requests": {"cpu": "1"}}}]});
        assert_eq!(qos_class(&burstable), "Burstable");
        let guaranteed = json!({"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]});
        assert_eq!(qos_class(&guaranteed), "Guaranteed");
    }

    #[test]
    fn pdb_ignored_for_pending_terminal_and_terminating_pods() {
        assert!(can_ignore_pdb(&json!({"status": {"phase": "Pending"}})));
        assert!(can_ignore_pdb(&json!({"status": {"phase": "Succeeded"}})));
        assert!(can_ignore_pdb(
            &json!({"metadata": {"deletionTimestamp": "x"}, "status": {"phase": "Running"}})
        ));
        assert!(!can_ignore_pdb(&json!({"status": {"phase": "Running"}})));
    }
}
