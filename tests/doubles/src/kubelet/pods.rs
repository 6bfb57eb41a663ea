//! The kubelet double's pod work. Contract double: **no container is run** (no sandbox, no image pull, no
//! process). For every pod bound to its node it reports what the real kubelet reports once the containers
//! run: phase Running, conditions PodReadyToStartContainers/Initialized/Ready/ContainersReady/PodScheduled
//! True, hostIP, a podIP, startTime and ready container statuses. A pod marked for deletion is "stopped" at
//! once and removed with a zero-grace delete (preconditioned on its UID), as the real kubelet does after its
//! containers exit. Nothing happens to pods while the kubelet is stopped, and it deletes none on shutdown.
//!
//! Pod IPs: the Node's `spec.podCIDR` when set, else the subnet of the CNI config containerd would use
//! (first `*.conflist`/`*.conf` in `/etc/cni/net.d`, host-local IPAM), else containerd's default
//! `10.88.0.0/16`; the lowest free address after the gateway, kept for the pod's lifetime.

use std::{
    collections::HashSet,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use ipnet::IpNet;
use serde_json::{json, Value};

use crate::{
    informer::Wakeup,
    kubeconfig::ApiClient,
    log,
    objects::{self, str_at},
};

const SRC: &str = "kubelet.go:1";

/// Where containerd reads CNI configs by default.
const CNI_CONF_DIR: &str = "/etc/cni/net.d";
/// containerd's default bridge CNI subnet.
const DEFAULT_POD_SUBNET: &str = "10.88.0.0/16";

/// The pod worker of one kubelet.
pub struct PodWorker {
    /// The kubelet's client.
    pub client: ApiClient,
    /// Node name.
    pub node: String,
    /// Node IP (hostIP of its pods).
    pub node_ip: IpAddr,
    /// CRI endpoint: pods start only while it answers.
    pub runtime: String,
    /// The pods last seen bound to this node (served on 10250 `/pods`).
    pub served: Arc<Mutex<Vec<Value>>>,
    /// Pod UIDs already announced in the log.
    pub seen: HashSet<String>,
}

impl PodWorker {
    /// Runs forever: on every change to the pods bound to this node (or every 10 s), reconcile them.
    pub async fn run(mut self) {
        let path = format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{}", self.node);
        let wake = Wakeup::new(&self.client, std::slice::from_ref(&path));
        loop {
            wake.wait(Duration::from_secs(10)).await;
            if let Err(e) = self.sync(&path).await {
                log::error(SRC, "Error syncing pods", &[("node", self.node.clone()), ("err", e)]);
            }
        }
    }

    async fn sync(&mut self, path: &str) -> Result<(), String> {
        let (code, list) = self.client.call("GET", path, None).await?;
        if code != 200 {
            return Err(format!("list pods: {} ({code})", list["message"].as_str().unwrap_or("")));
        }
        let pods: Vec<Value> = list["items"].as_array().cloned().unwrap_or_default();
        *self.served.lock().expect("not poisoned") = pods.clone();
        // Pods removed by others (namespace deletion, a forced delete) are forgotten too.
        self.seen.retain(|uid| pods.iter().any(|p| str_at(p, "metadata.uid") == uid));
        let subnet = self.pod_subnet().await;
        let mut used: HashSet<String> =
            pods.iter().map(|p| str_at(p, "status.podIP").to_string()).filter(|ip| !ip.is_empty()).collect();
        let runtime_ok = super::runtime_answers(&self.runtime).await.is_ok();
        for pod in &pods {
            let uid = str_at(pod, "metadata.uid").to_string();
            let name = objects::key(pod);
            if self.seen.insert(uid.clone()) {
                log::info(SRC, "SyncLoop ADD", &[("source", "api".into()), ("pods", format!("[{name:?}]"))]);
            }
            if objects::is_deleting(pod) {
                self.kill(pod, &uid, &name).await;
                continue;
            }
            if matches!(str_at(pod, "status.phase"), "Succeeded" | "Failed") || !runtime_ok {
                continue;
            }
            let ip = match str_at(pod, "status.podIP") {
                "" if pod["spec"]["hostNetwork"] == true => self.node_ip.to_string(),
                "" => match allocate(&subnet, &used) {
                    Some(ip) => ip,
                    None => {
                        log::error(SRC, "No free pod IP", &[("subnet", subnet.to_string()), ("pod", name)]);
                        continue;
                    }
                },
                ip => ip.to_string(),
            };
            used.insert(ip.clone());
            let Some(status) = running_status(pod, &self.node_ip.to_string(), &ip, &objects::now()) else {
                continue;
            };
            let patch = json!({"metadata": {"uid": uid}, "status": status});
            let url = format!(
                "/api/v1/namespaces/{}/pods/{}/status",
                str_at(pod, "metadata.namespace"),
                str_at(pod, "metadata.name")
            );
            match self
                .client
                .call("PATCH", &url, Some(("application/strategic-merge-patch+json", patch)))
                .await
            {
                Ok((200, _)) => log::info(
                    "kubelet_pods.go:1",
                    "Pod is running (contract double: no containers are started)",
                    &[("pod", name), ("podIP", ip)],
                ),
                Ok((code, body)) => log::error(
                    "status_manager.go:1",
                    "Failed to update status for pod",
                    &[("pod", name), ("err", format!("{} ({code})", body["message"].as_str().unwrap_or("")))],
                ),
                Err(e) => log::error(
                    "status_manager.go:1",
                    "Failed to update status for pod",
                    &[("pod", name), ("err", e)],
                ),
            }
        }
        Ok(())
    }

    /// Stops a pod marked for deletion: its (absent) containers are gone at once, so the pod is removed.
    async fn kill(&mut self, pod: &Value, uid: &str, name: &str) {
        let grace = pod["metadata"]["deletionGracePeriodSeconds"].as_i64().unwrap_or(0);
        log::info(SRC, "SyncLoop DELETE", &[("source", "api".into()), ("pods", format!("[{name:?}]"))]);
        for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
            log::info(
                "kuberuntime_container.go:1",
                "Killing container with a grace period",
                &[
                    ("pod", name.to_string()),
                    ("podUID", uid.to_string()),
                    ("containerName", str_at(c, "name").to_string()),
                    ("gracePeriod", grace.to_string()),
                ],
            );
        }
        let url = format!(
            "/api/v1/namespaces/{}/pods/{}",
            str_at(pod, "metadata.namespace"),
            str_at(pod, "metadata.name")
        );
        let opts = json!({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0, "preconditions": {"uid": uid}});
        match self.client.call("DELETE", &url, Some(("application/json", opts))).await {
            Ok((200 | 404, _)) => {
                self.seen.remove(uid);
                log::info(
                    SRC,
                    "SyncLoop REMOVE",
                    &[("source", "api".into()), ("pods", format!("[{name:?}]"))],
                );
            }
            Ok((code, body)) => log::error(
                "status_manager.go:1",
                "Failed to delete status for pod",
                &[
                    ("pod", name.to_string()),
                    ("err", format!("{} ({code})", body["message"].as_str().unwrap_or(""))),
                ],
            ),
            Err(e) => log::error(
                "status_manager.go:1",
                "Failed to delete status for pod",
                &[("pod", name.to_string()), ("err", e)],
            ),
        }
    }

    /// The Node's podCIDR, else the CNI config's subnet, else containerd's default.
    async fn pod_subnet(&self) -> IpNet {
        if let Ok((200, node)) = self.client.call("GET", &format!("/api/v1/nodes/{}", self.node), None).await
        {
            if let Ok(net) = str_at(&node, "spec.podCIDR").parse::<IpNet>() {
                return net;
            }
        }
        cni_subnet(std::path::Path::new(CNI_CONF_DIR))
            .unwrap_or_else(|| DEFAULT_POD_SUBNET.parse().expect("valid default subnet"))
    }
}

/// The host-local IPAM subnet of the first CNI config in `dir` (the one containerd loads).
pub fn cni_subnet(dir: &std::path::Path) -> Option<IpNet> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "conflist" || e == "conf" || e == "json"))
        .collect();
    files.sort();
    let doc: Value = serde_json::from_slice(&std::fs::read(files.first()?).ok()?).ok()?;
    let plugins = doc["plugins"].as_array().cloned().unwrap_or_else(|| vec![doc.clone()]);
    plugins.iter().find_map(|p| {
        let ipam = &p["ipam"];
        ipam["ranges"][0][0]["subnet"].as_str().or(ipam["subnet"].as_str())?.parse().ok()
    })
}

/// The lowest address of `subnet` after the gateway (the first host) that no pod on the node holds.
pub fn allocate(subnet: &IpNet, used: &HashSet<String>) -> Option<String> {
    subnet.hosts().skip(1).map(|ip| ip.to_string()).find(|ip| !used.contains(ip))
}

/// The status of a pod whose containers run, or `None` when the pod already reports exactly that.
pub fn running_status(pod: &Value, host_ip: &str, pod_ip: &str, now: &str) -> Option<Value> {
    let mut with = json!({"status": pod["status"].clone()});
    let mut changed = false;
    for kind in ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled"] {
        changed |= objects::set_condition(
            &mut with,
            json!({"type": kind, "status": "True", "lastProbeTime": null, "lastTransitionTime": now}),
        );
    }
    let mut status = with["status"].take();
    let start = match status["startTime"].as_str() {
        Some(t) => t.to_string(),
        None => now.to_string(),
    };
    let uid = str_at(pod, "metadata.uid");
    let statuses = |list: &str, init: bool| -> Vec<Value> {
        pod["spec"][list]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let cname = str_at(c, "name");
                let id = {
                    use sha2::Digest;
                    hex::encode(sha2::Sha256::digest(format!("{uid}/{cname}").as_bytes()))
                };
                let state = if init {
                    json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": start, "finishedAt": start, "containerID": format!("containerd://{id}")}})
                } else {
                    json!({"running": {"startedAt": start}})
                };
                json!({"name": cname, "image": c["image"], "imageID": "", "containerID": format!("containerd://{id}"),
                    "state": state, "lastState": {}, "ready": !init, "restartCount": 0, "started": !init})
            })
            .collect()
    };
    let containers = statuses("containers", false);
    let inits = statuses("initContainers", true);
    let want = [
        ("phase", json!("Running")),
        ("hostIP", json!(host_ip)),
        ("hostIPs", json!([{"ip": host_ip}])),
        ("podIP", json!(pod_ip)),
        ("podIPs", json!([{"ip": pod_ip}])),
        ("startTime", json!(start)),
    ];
    for (k, v) in want {
        if status[k] != v {
            status[k] = v;
            changed = true;
        }
    }
    let ready_containers = |s: &Value| {
        s.as_array().map(|a| a.iter().map(|c| (c["name"].clone(), c["ready"].clone())).collect::<Vec<_>>())
    };
    if ready_containers(&status["containerStatuses"]) != ready_containers(&json!(containers)) {
        status["containerStatuses"] = json!(containers);
        changed = true;
    }
    if !inits.is_empty() && status["initContainerStatuses"].as_array().map_or(0, Vec::len) != inits.len() {
        status["initContainerStatuses"] = json!(inits);
        changed = true;
    }
    changed.then_some(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_status_once() {
        let pod = json!({"metadata": {"uid": "u1"}, "spec": {"containers": [{"name": "web", "image": "img:1"}]},
            "status": {"phase": "Pending", "qosClass": "BestEffort",
                "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": "t0"}]}});
        let s = running_status(&pod, "192.0.2.10", "10.244.1.2", "t1").unwrap();
        assert_eq!(s["phase"], "Running");
        assert_eq!(s["podIP"], "10.244.1.2");
        assert_eq!(s["hostIP"], "192.0.2.10");
        assert_eq!(s["qosClass"], "BestEffort");
        assert_eq!(s["containerStatuses"][0]["ready"], true);
        let ready = objects::pod_ready(&json!({"status": s.clone()}));
        assert!(ready);
        let sched = s["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "PodScheduled").unwrap();
        assert_eq!(sched["lastTransitionTime"], "t0", "an unchanged condition keeps its transition time");
        let again = json!({"metadata": pod["metadata"], "spec": pod["spec"], "status": s});
        assert!(running_status(&again, "192.0.2.10", "10.244.1.2", "t2").is_none(), "no change, no write");
    }

    #[test]
    fn pod_ips() {
        let net: IpNet = "10.244.1.0/24".parse().unwrap();
        let mut used = HashSet::new();
        assert_eq!(allocate(&net, &used).as_deref(), Some("10.244.1.2"));
        used.insert("10.244.1.2".to_string());
        assert_eq!(allocate(&net, &used).as_deref(), Some("10.244.1.3"));
        let full: IpNet = "10.0.0.0/30".parse().unwrap();
        used.insert("10.0.0.2".to_string());
        assert_eq!(allocate(&full, &used), None);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("99-other.conf"),
            r#"{"type":"bridge","ipam":{"subnet":"10.1.0.0/16"}}"#,
        )
        .unwrap();
        std::fs::write(
            dir.path().join("10-kubeforge.conflist"),
            r#"{"plugins":[{"type":"bridge","ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.7.0/24"}]]}}]}"#,
        )
        .unwrap();
        assert_eq!(cni_subnet(dir.path()).unwrap().to_string(), "10.244.7.0/24");
        assert!(cni_subnet(&dir.path().join("missing")).is_none());
    }
}
