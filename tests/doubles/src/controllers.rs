//! The kube-controller-manager double's workload controllers, after the real ones in
//! `pkg/controller/{deployment,replicaset,disruption,garbagecollector}`:
//! - **ReplicaSet**: keeps `spec.replicas` live pods (creates them from the template with `generateName`
//!   `<rs>-` and a controller owner reference, deletes the surplus unscheduled/pending/unready/newest first),
//!   adopts matching orphans, and writes `status` (replicas, fullyLabeledReplicas, readyReplicas,
//!   availableReplicas with `minReadySeconds`, observedGeneration).
//! - **Deployment**: one ReplicaSet per pod template (`<deployment>-<pod-template-hash>`, the hash label in
//!   its selector and template, revision annotations), RollingUpdate (maxSurge/maxUnavailable, ints and
//!   percentages) and Recreate, and `status` (replicas, updatedReplicas, readyReplicas, availableReplicas,
//!   unavailableReplicas, observedGeneration, Available/Progressing conditions) as `kubectl rollout status`
//!   reads it.
//! - **Disruption**: PodDisruptionBudget `status` (currentHealthy, desiredHealthy, disruptionsAllowed,
//!   expectedPods, observedGeneration, disruptedPods, DisruptionAllowed condition) for `minAvailable` and
//!   `maxUnavailable`, ints and percentages (expected pods from the owning Deployment/ReplicaSet/StatefulSet
//!   scale, as the real controller's finders do).
//! - **Garbage collection** of ReplicaSets and pods whose owners (Deployment/ReplicaSet) are gone.
//!
//! Level-triggered: every change to deployments, replicasets, pods or PDBs (and every 5 s) starts a pass
//! that lists them all through the apiserver with the controller-manager's credentials and reconciles.
//! Not modelled: progress deadlines, proportional scaling in the middle of a rollout, revision history
//! cleanup, paused rollouts beyond "no new ReplicaSet", orphan/foreground deletion propagation.

use std::{collections::HashSet, time::Duration};

use serde_json::{json, Value};

use crate::{
    informer::Wakeup,
    kubeconfig::ApiClient,
    log,
    objects::{self, str_at},
};

const HASH_LABEL: &str = "pod-template-hash";
const REVISION: &str = "deployment.kubernetes.io/revision";
/// How long the disruption controller waits for a pod the eviction API admitted to disappear.
const DELETION_TIMEOUT_SECS: i64 = 120;

/// Runs the controllers forever.
pub async fn run(client: ApiClient) {
    let paths = [
        "/apis/apps/v1/deployments",
        "/apis/apps/v1/replicasets",
        "/api/v1/pods",
        "/apis/policy/v1/poddisruptionbudgets",
    ]
    .map(String::from);
    let wake = Wakeup::new(&client, &paths);
    // Watches wake the loop on every change; the periodic pass only catches what no event announces (time
    // passing, a missed watch). Kept long: every pass lists five collections, and three controller
    // managers (no leader election here) on emulated VMs make that a steady load on etcd.
    loop {
        wake.wait(Duration::from_secs(30)).await;
        match World::load(&client).await {
            Ok(mut world) => world.sync(&client).await,
            Err(e) => log::error("controllermanager.go:1", "Error listing workloads", &[("err", e)]),
        }
    }
}

/// Everything one pass looks at, listed at its start.
struct World {
    deployments: Vec<Value>,
    replicasets: Vec<Value>,
    statefulsets: Vec<Value>,
    pods: Vec<Value>,
    pdbs: Vec<Value>,
    now: time::OffsetDateTime,
}

async fn list(client: &ApiClient, path: &str) -> Result<Vec<Value>, String> {
    match client.call("GET", path, None).await? {
        (200, body) => Ok(body["items"].as_array().cloned().unwrap_or_default()),
        (code, body) => Err(format!("list {path}: {} ({code})", body["message"].as_str().unwrap_or(""))),
    }
}

fn ns_of(o: &Value) -> &str {
    str_at(o, "metadata.namespace")
}

fn uid_of(o: &Value) -> &str {
    str_at(o, "metadata.uid")
}

fn replicas_of(o: &Value) -> i64 {
    o["spec"]["replicas"].as_i64().unwrap_or(1)
}

fn status_int(o: &Value, field: &str) -> i64 {
    o["status"][field].as_i64().unwrap_or(0)
}

fn owned_by(o: &Value, owner: &Value) -> bool {
    objects::controller_of(o).is_some_and(|r| r["uid"] == owner["metadata"]["uid"])
}

/// Sets an int status field, leaving it out when 0 (the Go types' `omitempty`).
fn put_count(status: &mut Value, field: &str, n: i64) {
    if n == 0 {
        if let Some(m) = status.as_object_mut() {
            m.remove(field);
        }
    } else {
        status[field] = json!(n);
    }
}

fn api_path(kind: &str, ns: &str, name: &str) -> String {
    match kind {
        "Pod" => format!("/api/v1/namespaces/{ns}/pods/{name}"),
        "ReplicaSet" => format!("/apis/apps/v1/namespaces/{ns}/replicasets/{name}"),
        "Deployment" => format!("/apis/apps/v1/namespaces/{ns}/deployments/{name}"),
        "StatefulSet" => format!("/apis/apps/v1/namespaces/{ns}/statefulsets/{name}"),
        "PodDisruptionBudget" => format!("/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/{name}"),
        _ => String::new(),
    }
}

fn path_of(kind: &str, o: &Value) -> String {
    api_path(kind, ns_of(o), str_at(o, "metadata.name"))
}

fn failed(source: &str, msg: &str, what: String, code: u16, body: &Value) {
    log::error(
        source,
        msg,
        &[("object", what), ("err", format!("{} ({code})", body["message"].as_str().unwrap_or("")))],
    );
}

/// PUT of `obj` (with its resourceVersion: a conflict means someone else wrote first; the next pass retries).
async fn put(client: &ApiClient, path: &str, obj: &Value) -> Option<Value> {
    match client.call("PUT", path, Some(("application/json", obj.clone()))).await {
        Ok((200, body)) => Some(body),
        Ok((409, _)) => None,
        Ok((code, body)) => {
            failed("controller_utils.go:1", "Failed to update", path.to_string(), code, &body);
            None
        }
        Err(e) => {
            log::error(
                "controller_utils.go:1",
                "Failed to update",
                &[("object", path.to_string()), ("err", e)],
            );
            None
        }
    }
}

impl World {
    async fn load(client: &ApiClient) -> Result<Self, String> {
        Ok(Self {
            deployments: list(client, "/apis/apps/v1/deployments").await?,
            replicasets: list(client, "/apis/apps/v1/replicasets").await?,
            statefulsets: list(client, "/apis/apps/v1/statefulsets").await?,
            pods: list(client, "/api/v1/pods").await?,
            pdbs: list(client, "/apis/policy/v1/poddisruptionbudgets").await?,
            now: time::OffsetDateTime::now_utc(),
        })
    }

    async fn sync(&mut self, client: &ApiClient) {
        self.collect_garbage(client).await;
        for i in 0..self.replicasets.len() {
            self.sync_replica_set(client, i).await;
        }
        for i in 0..self.deployments.len() {
            self.sync_deployment(client, i).await;
        }
        for i in 0..self.pdbs.len() {
            self.sync_pdb(client, i).await;
        }
    }

    // ---------------------------------------------------------------- garbage collector

    /// Deletes ReplicaSets and pods all of whose owners (Deployments/ReplicaSets) are gone, after checking
    /// each owner once more with a live read, as the real garbage collector does (background propagation).
    async fn collect_garbage(&mut self, client: &ApiClient) {
        let live: HashSet<String> =
            self.deployments.iter().chain(&self.replicasets).map(|o| uid_of(o).to_string()).collect();
        let candidates: Vec<(&str, Value)> = self
            .replicasets
            .iter()
            .map(|o| ("ReplicaSet", o))
            .chain(self.pods.iter().map(|o| ("Pod", o)))
            .filter(|(_, o)| !objects::is_deleting(o))
            .filter(|(_, o)| {
                o["metadata"]["ownerReferences"].as_array().is_some_and(|refs| {
                    !refs.is_empty()
                        && refs.iter().all(|r| {
                            matches!(r["kind"].as_str(), Some("Deployment" | "ReplicaSet"))
                                && !live.contains(r["uid"].as_str().unwrap_or(""))
                        })
                })
            })
            .map(|(k, o)| (k, o.clone()))
            .collect();
        for (kind, obj) in candidates {
            let mut owner_gone = true;
            for r in obj["metadata"]["ownerReferences"].as_array().into_iter().flatten() {
                let path =
                    api_path(r["kind"].as_str().unwrap_or(""), ns_of(&obj), r["name"].as_str().unwrap_or(""));
                match client.call("GET", &path, None).await {
                    Ok((404, _)) => {}
                    Ok((200, owner)) if owner["metadata"]["uid"] != r["uid"] => {}
                    _ => owner_gone = false,
                }
            }
            if !owner_gone {
                continue;
            }
            let what = format!(
                "[{}/{kind}, namespace: {}, name: {}, uid: {}]",
                if kind == "Pod" { "v1" } else { "apps/v1" },
                ns_of(&obj),
                str_at(&obj, "metadata.name"),
                uid_of(&obj)
            );
            log::info(
                "garbagecollector.go:1",
                "Deleting item",
                &[("item", what.clone()), ("propagationPolicy", "Background".into())],
            );
            let opts = json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background",
                "preconditions": {"uid": uid_of(&obj)}});
            match client.call("DELETE", &path_of(kind, &obj), Some(("application/json", opts))).await {
                Ok((200 | 202 | 404 | 409, _)) => {}
                Ok((code, body)) => failed("garbagecollector.go:1", "Failed to delete", what, code, &body),
                Err(e) => {
                    log::error("garbagecollector.go:1", "Failed to delete", &[("item", what), ("err", e)])
                }
            }
        }
    }

    // ---------------------------------------------------------------- ReplicaSet controller

    async fn sync_replica_set(&mut self, client: &ApiClient, i: usize) {
        let rs = self.replicasets[i].clone();
        if objects::is_deleting(&rs) {
            return;
        }
        let rs_key = objects::key(&rs);
        let selector = &rs["spec"]["selector"];
        // Adopt orphans the selector matches.
        let orphans: Vec<usize> = (0..self.pods.len())
            .filter(|&j| {
                let p = &self.pods[j];
                ns_of(p) == ns_of(&rs)
                    && objects::controller_of(p).is_none()
                    && objects::pod_active(p)
                    && !objects::selector_is_empty(selector)
                    && objects::selector_matches(selector, &p["metadata"]["labels"])
            })
            .collect();
        for j in orphans {
            let mut refs =
                self.pods[j]["metadata"]["ownerReferences"].as_array().cloned().unwrap_or_default();
            refs.push(objects::owner_ref(&rs, "apps/v1", "ReplicaSet"));
            let patch =
                json!({"metadata": {"ownerReferences": refs, "uid": self.pods[j]["metadata"]["uid"]}});
            let path = path_of("Pod", &self.pods[j]);
            if let Ok((200, pod)) =
                client.call("PATCH", &path, Some(("application/merge-patch+json", patch))).await
            {
                log::info(
                    "replica_set.go:1",
                    "Adopted pod",
                    &[("pod", objects::key(&pod)), ("replicaSet", rs_key.clone())],
                );
                self.pods[j] = pod;
            }
        }
        let active: Vec<&Value> =
            self.pods.iter().filter(|p| owned_by(p, &rs) && objects::pod_active(p)).collect();
        let want = replicas_of(&rs);
        let mut status = self.replica_set_status(&rs, &active);
        let diff = active.len() as i64 - want;
        if diff < 0 {
            let template = &rs["spec"]["template"];
            for _ in 0..-diff {
                let mut meta = json!({"generateName": format!("{}-", str_at(&rs, "metadata.name")),
                    "namespace": ns_of(&rs), "ownerReferences": [objects::owner_ref(&rs, "apps/v1", "ReplicaSet")]});
                for k in ["labels", "annotations"] {
                    if !template["metadata"][k].is_null() {
                        meta[k] = template["metadata"][k].clone();
                    }
                }
                let pod =
                    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"]});
                let path = format!("/api/v1/namespaces/{}/pods", ns_of(&rs));
                match client.call("POST", &path, Some(("application/json", pod))).await {
                    Ok((201, created)) => {
                        log::info(
                            "controller_utils.go:1",
                            "Created pod",
                            &[("pod", objects::key(&created)), ("replicaSet", rs_key.clone())],
                        );
                    }
                    Ok((code, body)) => {
                        let msg = body["message"].as_str().unwrap_or("").to_string();
                        failed("replica_set.go:1", "Failed to create pod", rs_key.clone(), code, &body);
                        objects::set_condition(
                            &mut status,
                            json!({"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": msg,
                                "lastTransitionTime": objects::now()}),
                        );
                        break;
                    }
                    Err(e) => {
                        log::error(
                            "replica_set.go:1",
                            "Failed to create pod",
                            &[("replicaSet", rs_key.clone()), ("err", e)],
                        );
                        break;
                    }
                }
            }
        } else if diff > 0 {
            let mut victims = active.clone();
            // The real ranking: unassigned < assigned, Pending < Unknown < Running, not ready < ready,
            // then the newest first.
            victims.sort_by_key(|p| {
                let phase = match str_at(p, "status.phase") {
                    "Pending" => 0,
                    "Unknown" => 1,
                    _ => 2,
                };
                (
                    !str_at(p, "spec.nodeName").is_empty(),
                    phase,
                    objects::pod_ready(p),
                    std::cmp::Reverse(str_at(p, "metadata.creationTimestamp").to_string()),
                )
            });
            for p in victims.into_iter().take(diff as usize) {
                let opts =
                    json!({"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": uid_of(p)}});
                match client.call("DELETE", &path_of("Pod", p), Some(("application/json", opts))).await {
                    Ok((200 | 404, _)) => log::info(
                        "controller_utils.go:1",
                        "Deleted pod",
                        &[("pod", objects::key(p)), ("replicaSet", rs_key.clone())],
                    ),
                    Ok((code, body)) => {
                        failed("replica_set.go:1", "Failed to delete pod", objects::key(p), code, &body)
                    }
                    Err(e) => log::error(
                        "replica_set.go:1",
                        "Failed to delete pod",
                        &[("pod", objects::key(p)), ("err", e)],
                    ),
                }
            }
        }
        if status != rs["status"] {
            let mut updated = rs.clone();
            updated["status"] = status;
            if let Some(written) =
                put(client, &format!("{}/status", path_of("ReplicaSet", &rs)), &updated).await
            {
                self.replicasets[i] = written;
            }
        }
    }

    /// `calculateStatus` of the real ReplicaSet controller, from the live pods it owns.
    fn replica_set_status(&self, rs: &Value, active: &[&Value]) -> Value {
        let min_ready = rs["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
        let template_labels = &rs["spec"]["template"]["metadata"]["labels"];
        let labeled = active
            .iter()
            .filter(|p| {
                template_labels
                    .as_object()
                    .is_none_or(|m| m.iter().all(|(k, v)| p["metadata"]["labels"][k] == *v))
            })
            .count();
        let ready = active.iter().filter(|p| objects::pod_ready(p)).count();
        let available = active.iter().filter(|p| objects::pod_available(p, min_ready, self.now)).count();
        let mut status = rs["status"].clone();
        if !status.is_object() {
            status = json!({});
        }
        status["replicas"] = json!(active.len());
        put_count(&mut status, "fullyLabeledReplicas", labeled as i64);
        put_count(&mut status, "readyReplicas", ready as i64);
        put_count(&mut status, "availableReplicas", available as i64);
        put_count(&mut status, "observedGeneration", rs["metadata"]["generation"].as_i64().unwrap_or(0));
        // A ReplicaFailure clears once the ReplicaSet has what it wants.
        if active.len() as i64 == replicas_of(rs) {
            if let Some(list) = status["conditions"].as_array_mut() {
                list.retain(|c| c["type"] != "ReplicaFailure");
                if list.is_empty() {
                    status.as_object_mut().expect("object").remove("conditions");
                }
            }
        }
        status
    }

    // ---------------------------------------------------------------- Deployment controller

    async fn scale(&mut self, client: &ApiClient, j: usize, d: &Value, to: i64, surge: i64) -> bool {
        let rs = &self.replicasets[j];
        let replicas = replicas_of(d);
        let desired = replicas.to_string();
        let max = (replicas + surge).to_string();
        let ann = &rs["metadata"]["annotations"];
        if replicas_of(rs) == to
            && ann["deployment.kubernetes.io/desired-replicas"] == json!(desired)
            && ann["deployment.kubernetes.io/max-replicas"] == json!(max)
        {
            return false;
        }
        let from = replicas_of(rs);
        let mut updated = rs.clone();
        updated["spec"]["replicas"] = json!(to);
        updated["metadata"]["annotations"]["deployment.kubernetes.io/desired-replicas"] = json!(desired);
        updated["metadata"]["annotations"]["deployment.kubernetes.io/max-replicas"] = json!(max);
        let Some(written) = put(client, &path_of("ReplicaSet", rs), &updated).await else { return false };
        if from != to {
            let (verb, name) = (if to > from { "up" } else { "down" }, str_at(&written, "metadata.name"));
            event(
                d,
                "Deployment",
                "ScalingReplicaSet",
                &format!("Scaled {verb} replica set {name} from {from} to {to}"),
            );
        }
        self.replicasets[j] = written;
        from != to
    }

    async fn sync_deployment(&mut self, client: &ApiClient, i: usize) {
        let d = self.deployments[i].clone();
        if objects::is_deleting(&d) {
            return;
        }
        let selector = &d["spec"]["selector"];
        // Adopt orphan ReplicaSets the selector matches.
        for j in 0..self.replicasets.len() {
            let rs = &self.replicasets[j];
            if ns_of(rs) == ns_of(&d)
                && objects::controller_of(rs).is_none()
                && !objects::is_deleting(rs)
                && !objects::selector_is_empty(selector)
                && objects::selector_matches(selector, &rs["metadata"]["labels"])
            {
                let mut refs = rs["metadata"]["ownerReferences"].as_array().cloned().unwrap_or_default();
                refs.push(objects::owner_ref(&d, "apps/v1", "Deployment"));
                let patch = json!({"metadata": {"ownerReferences": refs, "uid": rs["metadata"]["uid"]}});
                let path = path_of("ReplicaSet", rs);
                if let Ok((200, adopted)) =
                    client.call("PATCH", &path, Some(("application/merge-patch+json", patch))).await
                {
                    self.replicasets[j] = adopted;
                }
            }
        }
        let owned: Vec<usize> =
            (0..self.replicasets.len()).filter(|&j| owned_by(&self.replicasets[j], &d)).collect();
        let template = &d["spec"]["template"];
        let new_idx = owned
            .iter()
            .copied()
            .find(|&j| same_template(&self.replicasets[j]["spec"]["template"], template));
        let replicas = replicas_of(&d);
        let rolling = str_at(&d, "spec.strategy.type") != "Recreate";
        let (surge, max_unavailable) = if rolling { fenceposts(&d, replicas) } else { (0, 0) };
        let revision = |rs: &Value| -> i64 {
            rs["metadata"]["annotations"][REVISION].as_str().and_then(|r| r.parse().ok()).unwrap_or(0)
        };
        let max_old_revision = owned
            .iter()
            .filter(|j| Some(**j) != new_idx)
            .map(|&j| revision(&self.replicasets[j]))
            .max()
            .unwrap_or(0);
        let mut created_new = false;
        let new_idx = match new_idx {
            Some(j) => {
                // A template rolled back to: its ReplicaSet becomes the newest revision.
                if revision(&self.replicasets[j]) <= max_old_revision {
                    let mut updated = self.replicasets[j].clone();
                    updated["metadata"]["annotations"][REVISION] = json!((max_old_revision + 1).to_string());
                    if let Some(w) = put(client, &path_of("ReplicaSet", &updated), &updated).await {
                        self.replicasets[j] = w;
                    }
                }
                Some(j)
            }
            None if d["spec"]["paused"] == true => None,
            None => {
                let all: i64 = owned.iter().map(|&j| replicas_of(&self.replicasets[j])).sum();
                let initial = if rolling {
                    let max_total = replicas + surge;
                    if all >= max_total {
                        0
                    } else {
                        (max_total - all).min(replicas)
                    }
                } else if owned.iter().any(|&j| replicas_of(&self.replicasets[j]) > 0) {
                    0
                } else {
                    replicas
                };
                match self.create_replica_set(client, &d, initial, surge, max_old_revision + 1).await {
                    Some(rs) => {
                        created_new = true;
                        self.replicasets.push(rs);
                        Some(self.replicasets.len() - 1)
                    }
                    None => None,
                }
            }
        };
        let old: Vec<usize> = owned.iter().copied().filter(|j| Some(*j) != new_idx).collect();
        if let Some(n) = new_idx.filter(|_| d["spec"]["paused"] != true) {
            if rolling {
                self.roll(client, &d, n, &old, replicas, surge, max_unavailable).await;
            } else {
                self.recreate(client, &d, n, &old, replicas).await;
            }
        }
        self.write_deployment_status(client, i, new_idx, created_new, max_unavailable).await;
    }

    async fn create_replica_set(
        &mut self,
        client: &ApiClient,
        d: &Value,
        replicas: i64,
        surge: i64,
        revision: i64,
    ) -> Option<Value> {
        let collision = d["status"]["collisionCount"].as_i64();
        let hash = objects::pod_template_hash(&d["spec"]["template"], collision);
        let name = format!("{}-{hash}", str_at(d, "metadata.name"));
        let mut template = d["spec"]["template"].clone();
        template["metadata"]["labels"][HASH_LABEL] = json!(hash);
        let mut selector = d["spec"]["selector"].clone();
        selector["matchLabels"][HASH_LABEL] = json!(hash);
        let mut annotations = d["spec"]["template"]["metadata"]["annotations"].clone();
        if !annotations.is_object() {
            annotations = json!({});
        }
        annotations["deployment.kubernetes.io/desired-replicas"] = json!(replicas_of(d).to_string());
        annotations["deployment.kubernetes.io/max-replicas"] = json!((replicas_of(d) + surge).to_string());
        annotations[REVISION] = json!(revision.to_string());
        let mut spec = json!({"replicas": replicas, "selector": selector, "template": template});
        if let Some(m) = d["spec"]["minReadySeconds"].as_i64() {
            spec["minReadySeconds"] = json!(m);
        }
        let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": name, "namespace": ns_of(d), "labels": template["metadata"]["labels"],
                "annotations": annotations, "ownerReferences": [objects::owner_ref(d, "apps/v1", "Deployment")]},
            "spec": spec});
        let path = format!("/apis/apps/v1/namespaces/{}/replicasets", ns_of(d));
        match client.call("POST", &path, Some(("application/json", rs))).await {
            Ok((201, created)) => {
                event(
                    d,
                    "Deployment",
                    "ScalingReplicaSet",
                    &format!("Scaled up replica set {name} from 0 to {replicas}"),
                );
                Some(created)
            }
            Ok((code, body)) => {
                failed(
                    "deployment_controller.go:1",
                    "Failed to create new replica set",
                    objects::key(d),
                    code,
                    &body,
                );
                None
            }
            Err(e) => {
                log::error(
                    "deployment_controller.go:1",
                    "Failed to create new replica set",
                    &[("deployment", objects::key(d)), ("err", e)],
                );
                None
            }
        }
    }

    /// `rolloutRolling`: scale the new ReplicaSet up within maxSurge, then the old ones down within
    /// maxUnavailable (unhealthy old replicas first).
    #[allow(clippy::too_many_arguments)]
    async fn roll(
        &mut self,
        client: &ApiClient,
        d: &Value,
        n: usize,
        old: &[usize],
        replicas: i64,
        surge: i64,
        max_unavailable: i64,
    ) {
        let spec_sum =
            |w: &World, idx: &[usize]| idx.iter().map(|&j| replicas_of(&w.replicasets[j])).sum::<i64>();
        let new_replicas = replicas_of(&self.replicasets[n]);
        // reconcileNewReplicaSet
        let target = if new_replicas >= replicas {
            replicas
        } else {
            let all = spec_sum(self, old) + new_replicas;
            let max_total = replicas + surge;
            if all >= max_total {
                new_replicas
            } else {
                new_replicas + (max_total - all).min(replicas - new_replicas)
            }
        };
        if self.scale(client, n, d, target, surge).await {
            return;
        }
        // reconcileOldReplicaSets
        if spec_sum(self, old) == 0 {
            return;
        }
        let all = spec_sum(self, old) + replicas_of(&self.replicasets[n]);
        let min_available = replicas - max_unavailable;
        let new_unavailable =
            replicas_of(&self.replicasets[n]) - status_int(&self.replicasets[n], "availableReplicas");
        let max_scaled_down = all - min_available - new_unavailable;
        if max_scaled_down <= 0 {
            return;
        }
        let mut olds = old.to_vec();
        olds.sort_by_key(|&j| str_at(&self.replicasets[j], "metadata.creationTimestamp").to_string());
        // cleanupUnhealthyReplicas
        let mut cleaned = 0;
        for &j in &olds {
            if cleaned >= max_scaled_down {
                break;
            }
            let rs = &self.replicasets[j];
            let unhealthy = replicas_of(rs) - status_int(rs, "availableReplicas");
            if unhealthy <= 0 {
                continue;
            }
            let down = unhealthy.min(max_scaled_down - cleaned);
            let to = replicas_of(rs) - down;
            self.scale(client, j, d, to, surge).await;
            cleaned += down;
        }
        // scaleDownOldReplicaSetsForRollingUpdate
        let available: i64 = olds
            .iter()
            .chain(std::iter::once(&n))
            .map(|&j| status_int(&self.replicasets[j], "availableReplicas"))
            .sum();
        if available <= min_available {
            return;
        }
        let total = available - min_available;
        let mut done = 0;
        for &j in &olds {
            if done >= total {
                break;
            }
            let current = replicas_of(&self.replicasets[j]);
            if current == 0 {
                continue;
            }
            let down = current.min(total - done);
            self.scale(client, j, d, current - down, surge).await;
            done += down;
        }
    }

    /// `rolloutRecreate`: all old pods go first, then the new ReplicaSet scales up.
    async fn recreate(&mut self, client: &ApiClient, d: &Value, n: usize, old: &[usize], replicas: i64) {
        let mut scaled_down = false;
        for &j in old {
            scaled_down |= self.scale(client, j, d, 0, 0).await;
        }
        if scaled_down {
            return;
        }
        let old_pods_left = self.pods.iter().any(|p| {
            old.iter().any(|&j| owned_by(p, &self.replicasets[j]))
                && !matches!(str_at(p, "status.phase"), "Succeeded" | "Failed")
        });
        if !old_pods_left {
            self.scale(client, n, d, replicas, 0).await;
        }
    }

    /// `calculateStatus` + `syncRolloutStatus` of the real Deployment controller.
    async fn write_deployment_status(
        &mut self,
        client: &ApiClient,
        i: usize,
        new_idx: Option<usize>,
        created_new: bool,
        max_unavailable: i64,
    ) {
        let d = self.deployments[i].clone();
        let owned: Vec<&Value> = self.replicasets.iter().filter(|rs| owned_by(rs, &d)).collect();
        let sum = |f: &str| owned.iter().map(|rs| status_int(rs, f)).sum::<i64>();
        let spec_total: i64 = owned.iter().map(|rs| replicas_of(rs)).sum();
        let replicas = replicas_of(&d);
        let available = sum("availableReplicas");
        let updated = new_idx.map(|n| status_int(&self.replicasets[n], "replicas")).unwrap_or(0);
        let mut status = d["status"].clone();
        if !status.is_object() {
            status = json!({});
        }
        put_count(&mut status, "observedGeneration", d["metadata"]["generation"].as_i64().unwrap_or(0));
        put_count(&mut status, "replicas", sum("replicas"));
        put_count(&mut status, "updatedReplicas", updated);
        put_count(&mut status, "readyReplicas", sum("readyReplicas"));
        put_count(&mut status, "availableReplicas", available);
        put_count(&mut status, "unavailableReplicas", (spec_total - available).max(0));
        let now = objects::now();
        let mut with = json!({"status": status});
        let (s, reason, message) = if available >= replicas - max_unavailable {
            ("True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
        } else {
            ("False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.")
        };
        set_deployment_condition(&mut with, "Available", s, reason, message, &now);
        if let Some(n) = new_idx {
            let rs_name = str_at(&self.replicasets[n], "metadata.name").to_string();
            let complete = updated == replicas && sum("replicas") == replicas && available == replicas;
            let (reason, message) = if created_new {
                ("NewReplicaSetCreated", format!("Created new replica set \"{rs_name}\""))
            } else if complete {
                ("NewReplicaSetAvailable", format!("ReplicaSet \"{rs_name}\" has successfully progressed."))
            } else {
                ("ReplicaSetUpdated", format!("ReplicaSet \"{rs_name}\" is progressing."))
            };
            set_deployment_condition(&mut with, "Progressing", "True", reason, &message, &now);
        }
        let status = with["status"].take();
        if let Some(n) = new_idx {
            let rev = self.replicasets[n]["metadata"]["annotations"][REVISION].clone();
            if !rev.is_null() && d["metadata"]["annotations"][REVISION] != rev {
                let mut annotated = d.clone();
                annotated["metadata"]["annotations"][REVISION] = rev;
                if let Some(w) = put(client, &path_of("Deployment", &d), &annotated).await {
                    self.deployments[i] = w;
                }
            }
        }
        let d = self.deployments[i].clone();
        if status != d["status"] {
            let mut updated = d.clone();
            updated["status"] = status;
            if let Some(w) = put(client, &format!("{}/status", path_of("Deployment", &d)), &updated).await {
                self.deployments[i] = w;
            }
        }
    }

    // ---------------------------------------------------------------- disruption controller

    async fn sync_pdb(&mut self, client: &ApiClient, i: usize) {
        let pdb = self.pdbs[i].clone();
        if objects::is_deleting(&pdb) {
            return;
        }
        let selector = &pdb["spec"]["selector"];
        let pods: Vec<&Value> = self
            .pods
            .iter()
            .filter(|p| {
                ns_of(p) == ns_of(&pdb) && objects::selector_matches(selector, &p["metadata"]["labels"])
            })
            .collect();
        let generation = pdb["metadata"]["generation"].as_i64().unwrap_or(0);
        let mut status = match self.expected_pods(&pdb, &pods) {
            Ok((expected, desired)) => {
                let disrupted = self.disrupted_pods(&pdb, &pods);
                let healthy = pods
                    .iter()
                    .filter(|p| !objects::is_deleting(p))
                    .filter(|p| !disrupted.contains_key(str_at(p, "metadata.name")))
                    .filter(|p| objects::pod_ready(p))
                    .count() as i64;
                let allowed = if expected <= 0 || healthy - desired <= 0 { 0 } else { healthy - desired };
                let mut s = json!({"currentHealthy": healthy, "desiredHealthy": desired, "disruptionsAllowed": allowed,
                    "expectedPods": expected, "conditions": pdb["status"]["conditions"]});
                if !disrupted.is_empty() {
                    s["disruptedPods"] = Value::Object(disrupted);
                }
                s
            }
            Err(e) => {
                log::warn(
                    "disruption.go:1",
                    "Failed to sync PodDisruptionBudget",
                    &[("pdb", objects::key(&pdb)), ("err", e.clone())],
                );
                // failSafe: no disruption allowed while the budget cannot be computed.
                let mut s = pdb["status"].clone();
                s["disruptionsAllowed"] = json!(0);
                s
            }
        };
        put_count(&mut status, "observedGeneration", generation);
        let mut with = json!({"status": status});
        let allowed = with["status"]["disruptionsAllowed"].as_i64().unwrap_or(0);
        let (s, reason) =
            if allowed > 0 { ("True", "SufficientPods") } else { ("False", "InsufficientPods") };
        objects::set_condition(
            &mut with,
            json!({"type": "DisruptionAllowed", "status": s, "reason": reason, "message": "",
                "observedGeneration": generation, "lastTransitionTime": objects::now()}),
        );
        // The condition carries the generation it was computed for.
        if let Some(c) = with["status"]["conditions"]
            .as_array_mut()
            .and_then(|l| l.iter_mut().find(|c| c["type"] == "DisruptionAllowed"))
        {
            c["observedGeneration"] = json!(generation);
        }
        let status = with["status"].take();
        if status != pdb["status"] {
            let mut updated = pdb.clone();
            updated["status"] = status;
            if let Some(w) =
                put(client, &format!("{}/status", path_of("PodDisruptionBudget", &pdb)), &updated).await
            {
                let s = &w["status"];
                log::info(
                    "disruption.go:1",
                    "Updated PodDisruptionBudget status",
                    &[
                        ("pdb", objects::key(&w)),
                        ("currentHealthy", s["currentHealthy"].to_string()),
                        ("desiredHealthy", s["desiredHealthy"].to_string()),
                        ("disruptionsAllowed", s["disruptionsAllowed"].to_string()),
                        ("expectedPods", s["expectedPods"].to_string()),
                    ],
                );
                self.pdbs[i] = w;
            }
        }
    }

    /// `getExpectedPodCount`: (expectedPods, desiredHealthy).
    fn expected_pods(&self, pdb: &Value, pods: &[&Value]) -> Result<(i64, i64), String> {
        let spec = &pdb["spec"];
        if !spec["maxUnavailable"].is_null() {
            let expected = self.expected_scale(pdb, pods)?;
            let max_unavailable = objects::scaled_value(&spec["maxUnavailable"], expected, true)?;
            return Ok((expected, (expected - max_unavailable).max(0)));
        }
        match &spec["minAvailable"] {
            Value::Number(n) => Ok((pods.len() as i64, n.as_i64().unwrap_or(0))),
            v @ Value::String(_) => {
                let expected = self.expected_scale(pdb, pods)?;
                Ok((expected, objects::scaled_value(v, expected, true)?))
            }
            _ => Ok((0, 0)),
        }
    }

    /// `getExpectedScale`: the sum of the scales of the pods' controllers (a ReplicaSet owned by a
    /// Deployment counts as the Deployment); pods without a controller are ignored with a warning.
    fn expected_scale(&self, pdb: &Value, pods: &[&Value]) -> Result<i64, String> {
        let mut seen = HashSet::new();
        let mut expected = 0;
        let mut unmanaged = Vec::new();
        for p in pods {
            let Some(r) = objects::controller_of(p) else {
                unmanaged.push(str_at(p, "metadata.name").to_string());
                continue;
            };
            let by_uid =
                |list: &[Value], uid: &Value| list.iter().find(|o| o["metadata"]["uid"] == *uid).cloned();
            let (uid, scale) = match r["kind"].as_str().unwrap_or("") {
                "ReplicaSet" => {
                    let rs = by_uid(&self.replicasets, &r["uid"]).ok_or_else(|| {
                        format!("found no controllers for pod {:?}", str_at(p, "metadata.name"))
                    })?;
                    match objects::controller_of(&rs).filter(|o| o["kind"] == "Deployment") {
                        Some(owner) => {
                            let d = by_uid(&self.deployments, &owner["uid"]).ok_or_else(|| {
                                format!("found no controllers for pod {:?}", str_at(p, "metadata.name"))
                            })?;
                            (uid_of(&d).to_string(), replicas_of(&d))
                        }
                        None => (uid_of(&rs).to_string(), replicas_of(&rs)),
                    }
                }
                "StatefulSet" => {
                    let s = by_uid(&self.statefulsets, &r["uid"]).ok_or_else(|| {
                        format!("found no controllers for pod {:?}", str_at(p, "metadata.name"))
                    })?;
                    (uid_of(&s).to_string(), replicas_of(&s))
                }
                _ => return Err(format!("found no controllers for pod {:?}", str_at(p, "metadata.name"))),
            };
            if seen.insert(uid) {
                expected += scale;
            }
        }
        if !unmanaged.is_empty() {
            log::warn(
                "disruption.go:1",
                "found unmanaged pods associated with this PDB",
                &[("pdb", objects::key(pdb)), ("pods", unmanaged.join(","))],
            );
        }
        Ok(expected)
    }

    /// `buildDisruptedPodMap`: pods the eviction API admitted, kept until they are being deleted or gone,
    /// or for at most two minutes.
    fn disrupted_pods(&self, pdb: &Value, pods: &[&Value]) -> serde_json::Map<String, Value> {
        let mut out = serde_json::Map::new();
        for (name, at) in pdb["status"]["disruptedPods"].as_object().into_iter().flatten() {
            let Some(pod) = pods.iter().find(|p| str_at(p, "metadata.name") == name) else { continue };
            if objects::is_deleting(pod) {
                continue;
            }
            let expired = at
                .as_str()
                .and_then(objects::parse_time)
                .is_none_or(|t| (self.now - t).whole_seconds() >= DELETION_TIMEOUT_SECS);
            if expired {
                log::info(
                    "disruption.go:1",
                    "Pod was expected to be deleted but it wasn't, updating PDB",
                    &[("pod", objects::key(pod)), ("pdb", objects::key(pdb))],
                );
                continue;
            }
            out.insert(name.clone(), at.clone());
        }
        out
    }
}

/// The real `ResolveFenceposts`: maxSurge rounds up, maxUnavailable down (defaults 25%); both 0 makes
/// maxUnavailable 1.
fn fenceposts(d: &Value, replicas: i64) -> (i64, i64) {
    let ru = &d["spec"]["strategy"]["rollingUpdate"];
    let surge_v = if ru["maxSurge"].is_null() { json!("25%") } else { ru["maxSurge"].clone() };
    let unavailable_v =
        if ru["maxUnavailable"].is_null() { json!("25%") } else { ru["maxUnavailable"].clone() };
    let surge = objects::scaled_value(&surge_v, replicas, true).unwrap_or(0);
    let mut unavailable = objects::scaled_value(&unavailable_v, replicas, false).unwrap_or(0);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable.min(replicas))
}

/// `EqualIgnoreHash`: templates equal once the pod-template-hash label is removed.
fn same_template(a: &Value, b: &Value) -> bool {
    let strip = |t: &Value| {
        let mut t = t.clone();
        if let Some(labels) = t["metadata"]["labels"].as_object_mut() {
            labels.remove(HASH_LABEL);
        }
        t
    };
    strip(a) == strip(b)
}

/// Deployment conditions carry lastUpdateTime as well; it moves only when the condition changes.
fn set_deployment_condition(
    with: &mut Value,
    kind: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: &str,
) {
    objects::set_condition(
        with,
        json!({"type": kind, "status": status, "reason": reason, "message": message,
            "lastUpdateTime": now, "lastTransitionTime": now}),
    );
}

/// A controller event, logged the way the real event broadcaster logs it.
fn event(obj: &Value, kind: &str, reason: &str, message: &str) {
    log::info(
        "event.go:1",
        "Event occurred",
        &[
            ("object", objects::key(obj)),
            ("kind", kind.to_string()),
            ("type", "Normal".into()),
            ("reason", reason.to_string()),
            ("message", message.to_string()),
        ],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_update_fenceposts() {
        let d = |ru: Value| json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": ru}}});
        assert_eq!(fenceposts(&d(json!({})), 3), (1, 0));
        assert_eq!(fenceposts(&d(json!({})), 4), (1, 1));
        assert_eq!(fenceposts(&d(json!({"maxSurge": 0, "maxUnavailable": 0})), 3), (0, 1));
        assert_eq!(fenceposts(&d(json!({"maxSurge": "50%", "maxUnavailable": "50%"})), 3), (2, 1));
        assert_eq!(fenceposts(&d(json!({"maxSurge": 1, "maxUnavailable": 5})), 3), (1, 3));
    }

    #[test]
    fn templates_compare_without_hash() {
        let a = json!({"metadata": {"labels": {"app": "web", "pod-template-hash": "abc"}}, "spec": {"x": 1}});
        let b = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"x": 1}});
        assert!(same_template(&a, &b));
        assert!(!same_template(&a, &json!({"metadata": {"labels": {"app": "web"}}, "spec": {"x": 2}})));
    }

    fn ready_pod(name: &str, rs_uid: &str) -> Value {
        json!({"metadata": {"name": name, "namespace": "default", "labels": {"app": "web"},
                "ownerReferences": [{"kind": "ReplicaSet", "uid": rs_uid, "controller": true}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}})
    }

    fn world(pods: Vec<Value>) -> World {
        World {
            deployments: vec![
                json!({"metadata": {"uid": "d1", "name": "web", "namespace": "default"}, "spec": {"replicas": 4}}),
            ],
            replicasets: vec![json!({"metadata": {"uid": "rs1", "name": "web-x", "namespace": "default",
                "ownerReferences": [{"kind": "Deployment", "uid": "d1", "controller": true}]}, "spec": {"replicas": 4}})],
            statefulsets: vec![],
            pods,
            pdbs: vec![],
            now: time::OffsetDateTime::now_utc(),
        }
    }

    #[test]
    fn pdb_arithmetic() {
        let w = world((0..3).map(|i| ready_pod(&format!("p{i}"), "rs1")).collect());
        let pods: Vec<&Value> = w.pods.iter().collect();
        let pdb = |spec: Value| json!({"metadata": {"name": "b", "namespace": "default"}, "spec": spec});
        // minAvailable int: expected = matching pods.
        assert_eq!(w.expected_pods(&pdb(json!({"minAvailable": 2})), &pods).unwrap(), (3, 2));
        // Percentages and maxUnavailable use the Deployment's scale (4 replicas), rounding up.
        assert_eq!(w.expected_pods(&pdb(json!({"minAvailable": "50%"})), &pods).unwrap(), (4, 2));
        assert_eq!(w.expected_pods(&pdb(json!({"minAvailable": "30%"})), &pods).unwrap(), (4, 2));
        assert_eq!(w.expected_pods(&pdb(json!({"maxUnavailable": 1})), &pods).unwrap(), (4, 3));
        assert_eq!(w.expected_pods(&pdb(json!({"maxUnavailable": "30%"})), &pods).unwrap(), (4, 2));
        assert_eq!(w.expected_pods(&pdb(json!({"maxUnavailable": 9})), &pods).unwrap(), (4, 0));
        // A pod whose ReplicaSet is unknown makes the budget fail safe.
        let mut stray = world(vec![ready_pod("q", "nope")]);
        stray.replicasets.clear();
        let q: Vec<&Value> = stray.pods.iter().collect();
        assert!(stray.expected_pods(&pdb(json!({"maxUnavailable": 1})), &q).is_err());

        // disruptedPods: kept while the pod lives and is young; dropped when terminating, gone or old.
        let mut terminating = ready_pod("p1", "rs1");
        terminating["metadata"]["deletionTimestamp"] = json!(objects::now());
        let w = world(vec![ready_pod("p0", "rs1"), terminating]);
        let pods: Vec<&Value> = w.pods.iter().collect();
        let old = objects::rfc3339(w.now - time::Duration::seconds(300));
        let b = json!({"metadata": {"name": "b", "namespace": "default"},
            "status": {"disruptedPods": {"p0": objects::now(), "p1": objects::now(), "gone": objects::now()}}});
        assert_eq!(w.disrupted_pods(&b, &pods).keys().collect::<Vec<_>>(), vec!["p0"]);
        let b = json!({"metadata": {"name": "b", "namespace": "default"}, "status": {"disruptedPods": {"p0": old}}});
        assert!(w.disrupted_pods(&b, &pods).is_empty());
    }
}
