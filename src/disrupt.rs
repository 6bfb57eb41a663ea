//! Taking nodes out of service and back, for the commands that change hosts one step at a time (`upgrade
//! apply`, `maintain`): cordon the step's nodes (all of them before the first drain, so no evicted pod lands
//! on a node about to be drained), drain through the eviction API (PodDisruptionBudgets hold), hand etcd
//! leadership away from a member about to restart, uncordon, and wait until every workload controller has
//! its Ready pods of before the drain again. kubectl runs on a control plane with the admin kubeconfig,
//! through the session's transports.

use crate::model::ClusterModel;
use crate::session::Session;
use crate::transport::Command;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Run on an etcd member (after `ETCDCTL_FN`): when the local member is the leader, hands leadership to
/// the first other started voting member and prints `moved NAME`; prints nothing otherwise.
pub const MOVE_LEADER: &str = r#"eps=https://127.0.0.1:2379
st=$(e endpoint status) || exit 1
me=$(printf '%s\n' "$st" | awk -F', ' '{print $2; exit}')
leader=$(printf '%s\n' "$st" | awk -F', ' '{print $5; exit}')
[ "$leader" = true ] || exit 0
to=$(e member list | awk -F', ' -v me="$me" '$1 != me && $2 == "started" && $6 == "false" {print $1 " " $3; exit}')
[ -n "$to" ] || exit 0
e move-leader "${to%% *}" >/dev/null || exit 1
echo "moved ${to#* }""#;

/// Parses `ns/Kind/name True|False` lines into Ready counts per controller (bare pods left out).
pub fn ready_counts(out: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for l in out.lines() {
        let mut it = l.split_whitespace();
        let (Some(owner), ready) = (it.next(), it.next()) else { continue };
        if owner.ends_with("//") {
            continue;
        }
        let e = m.entry(owner.to_owned()).or_insert(0);
        if ready == Some("True") {
            *e += 1;
        }
    }
    m.retain(|_, n| *n > 0);
    m
}

/// Nodes taken out of service and put back through one control plane.
pub struct Disruption<'a> {
    /// The command's session (its transports).
    pub session: &'a Session,
    /// The control plane kubectl runs on.
    pub api: String,
    /// How long one drain, and the workloads' return, may take.
    pub drain_timeout: Duration,
    /// Between two readings of the workloads (tests: none).
    pub poll: Duration,
    /// The command, for messages (`upgrade`).
    pub tag: &'static str,
}

impl Disruption<'_> {
    /// kubectl `args` on the API host; transient API errors are retried, except for a drain, whose own
    /// timeout must stand.
    pub async fn kubectl(&self, what: &str, args: &[&str], timeout: Duration) -> Result<String> {
        let t = self.session.transport(&self.api)?;
        let cmd = if what == "drain" {
            crate::lifecycle::kubectl(args)
        } else {
            crate::lifecycle::kubectl_retrying(args)
        };
        let cmd = cmd.timeout(timeout + Duration::from_secs(if what == "drain" { 30 } else { 120 }));
        let out = crate::plan::run_checked(t.as_ref(), what, &cmd)
            .await
            .map_err(|e| Error::msg(format!("{what} (through {}): {e}", self.api), None))?;
        Ok(out.stdout_str())
    }

    /// Ready pods per owning controller (`namespace/Kind/name`), cluster-wide.
    pub async fn ready_by_owner(&self) -> Result<BTreeMap<String, usize>> {
        let out = self
            .kubectl(
                "count Ready pods",
                &[
                    "get",
                    "pods",
                    "-A",
                    "-o",
                    r#"jsonpath={range .items[*]}{.metadata.namespace}{"/"}{.metadata.ownerReferences[0].kind}{"/"}{.metadata.ownerReferences[0].name}{" "}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}"#,
                ],
                Duration::from_secs(30),
            )
            .await?;
        Ok(ready_counts(&out))
    }

    /// Waits until every controller has at least as many Ready pods as in `before` (the pods a drain
    /// evicted are back), up to the drain timeout.
    pub async fn workload_gate(&self, before: &BTreeMap<String, usize>) -> Result<()> {
        let start = Instant::now();
        loop {
            let now = self.ready_by_owner().await.unwrap_or_default();
            let short: Vec<String> = before
                .iter()
                .filter(|(k, n)| now.get(*k).copied().unwrap_or(0) < **n)
                .map(|(k, n)| format!("{k} {}/{n} Ready", now.get(k).copied().unwrap_or(0)))
                .collect();
            if short.is_empty() {
                return Ok(());
            }
            if start.elapsed() > self.drain_timeout {
                return Err(Error::msg(
                    format!("the workloads did not come back: {}", short.join(", ")),
                    Some(&format!(
                        "check the pods with kubectl; re-run `kubeforge {}` to continue",
                        self.tag
                    )),
                ));
            }
            tokio::time::sleep(self.poll).await;
        }
    }

    /// Cordons `nodes` (`why`: for the interrupt report). A failure uncordons the ones cordoned so far.
    pub async fn cordon(&self, nodes: &[String], why: &str) -> Result<Vec<String>> {
        let mut cordoned: Vec<String> = Vec::new();
        for h in nodes {
            if let Err(e) = self.kubectl("cordon", &["cordon", h], Duration::from_secs(30)).await {
                self.uncordon(&cordoned).await;
                return Err(e);
            }
            cordoned.push(h.clone());
            crate::cleanup::host_doing(
                h,
                format!("cordoned for {why} (`kubectl uncordon {h}` puts it back in service)"),
            );
        }
        Ok(cordoned)
    }

    /// Drains the `cordoned` nodes one after the other (stops early when the run is interrupted). A drain
    /// that cannot finish uncordons them all and stops.
    pub async fn drain(&self, cordoned: &[String]) -> Result<()> {
        let drain_secs = format!("--timeout={}s", self.drain_timeout.as_secs().max(1));
        for h in cordoned {
            if self.session.executor.stopping() {
                break;
            }
            let clock = Instant::now();
            eprintln!("[{}] {h}: cordoned; draining (eviction API)", self.tag);
            if let Err(e) = self
                .kubectl(
                    "drain",
                    &["drain", h, "--ignore-daemonsets", "--delete-emptydir-data", &drain_secs],
                    self.drain_timeout,
                )
                .await
            {
                self.uncordon(cordoned).await;
                return Err(Error::msg(
                    format!("{h}: the drain did not finish, nothing was changed on it and it is uncordoned again: {e}"),
                    Some("check the PodDisruptionBudgets that block it, or raise --drain-timeout; then re-run"),
                ));
            }
            eprintln!("[{}] {h}: drained ({:.1}s)", self.tag, clock.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// Uncordons `nodes` (cleanup: best effort, every node tried, each failure printed).
    pub async fn uncordon(&self, nodes: &[String]) {
        for h in nodes {
            match self.kubectl("uncordon", &["uncordon", h], Duration::from_secs(30)).await {
                Ok(_) => {
                    crate::cleanup::host_doing(h, "uncordoned".into());
                    eprintln!("[{}] {h}: uncordoned", self.tag)
                }
                Err(e) => eprintln!(
                    "[{}] {h}: warning: still cordoned, the uncordon failed: {e} (run `kubectl uncordon {h}`)",
                    self.tag
                ),
            }
        }
    }

    /// Before a host's step: when its etcd member leads a cluster of several members, leadership moves to
    /// another started voting member (`etcdctl move-leader`), so that the busy host (services restarting,
    /// a reboot) does not hold every write and every linearizable read of the cluster up, and its restart
    /// costs no election. A failure only warns: the step does not need it.
    pub async fn hand_over_etcd_leadership(&self, model: &ClusterModel, hosts: &[String]) {
        if model.etcd_members().count() < 2 {
            return;
        }
        for h in hosts {
            if !model.host(h).is_some_and(|m| m.roles.etcd) {
                continue;
            }
            let Ok(t) = self.session.transport(h) else { continue };
            let clock = Instant::now();
            let cmd =
                Command::shell(format!("{}\n{}", crate::phase::install::ETCDCTL_FN, MOVE_LEADER)).sudo();
            match t.exec(&cmd).await {
                Ok(o) if o.success() => {
                    if let Some(to) = o.stdout_str().lines().find_map(|l| l.strip_prefix("moved ")) {
                        eprintln!(
                            "[{}] {h}: etcd leadership handed to {} ({:.1}s)",
                            self.tag,
                            to.trim(),
                            clock.elapsed().as_secs_f64()
                        );
                    }
                }
                Ok(o) => eprintln!(
                    "[{}] {h}: warning: etcd leadership not handed over: {}",
                    self.tag,
                    o.stderr_str().trim()
                ),
                Err(e) => eprintln!("[{}] {h}: warning: etcd leadership not handed over: {e}", self.tag),
            }
        }
    }
}
