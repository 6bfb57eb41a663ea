//! `verify`: every host checks what its roles run, in one command: each unit active, each health endpoint
//! answering (etcd over TLS with the health-check client certificate, the apiserver's `/readyz`, the
//! controller-manager's and scheduler's `/healthz`, the kubelet's and kube-proxy's `/healthz`); on the first
//! control plane, every Node registered and Ready. Results print per host; any failure fails the phase with
//! the check, its output and the unit's last journal lines.

use super::{Context, HostWork, Phase};
use crate::exec::{Step, StepError};
use crate::model::{Component, HostModel};
use crate::transport::{Command, Transport};

/// Phase `verify`.
pub struct Verify;

/// How long a host's checks may keep retrying in total (services just restarted need some seconds; under
/// emulated lab VMs, tens of seconds).
const VERIFY_BUDGET_SECS: u64 = 180;

/// One check: a name, the unit whose journal explains a failure, and a shell command (run with retries,
/// since a just-restarted service may need a few seconds).
/// On the first control plane, the node names are the script's arguments (`"$@"`), never its text.
fn checks(host: &HostModel, first_cp: bool) -> Vec<(String, String, String)> {
    let mut v = Vec::new();
    for c in &host.components {
        let unit = c.unit().to_string();
        // Answered from the one `systemctl is-active` call the script starts with (`$active`) when the
        // unit was active then; asked again (and retried) only when it was not.
        v.push((
            format!("{unit} active"),
            unit.clone(),
            format!("case \"$active\" in *\" {unit}=active \"*) true ;; *) systemctl is-active --quiet {unit} ;; esac"),
        ));
        let probe = match c {
            Component::Etcd => Some(
                "ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 --cacert=/etc/kubernetes/pki/etcd/ca.crt \
                 --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt --key=/etc/kubernetes/pki/etcd/healthcheck-client.key \
                 --command-timeout=10s endpoint health"
                    .to_string(),
            ),
            Component::KubeApiserver => Some(format!(
                "curl -sSf --max-time 10 --cacert /etc/kubernetes/pki/ca.crt https://{}:6443/readyz",
                match host.internal_ip {
                    std::net::IpAddr::V6(ip) => format!("[{ip}]"),
                    ip => ip.to_string(),
                }
            )),
            Component::KubeControllerManager => Some("curl -sSfk --max-time 10 https://127.0.0.1:10257/healthz".into()),
            Component::KubeScheduler => Some("curl -sSfk --max-time 10 https://127.0.0.1:10259/healthz".into()),
            Component::Kubelet => Some("curl -sSf --max-time 10 http://127.0.0.1:10248/healthz".into()),
            Component::KubeProxy => Some("curl -sSf --max-time 10 http://127.0.0.1:10256/healthz".into()),
            Component::ApiLoadBalancer => Some(format!(
                "curl -sSf --max-time 10 --cacert /etc/kubernetes/pki/ca.crt https://127.0.0.1:{}/readyz",
                crate::model::LOCAL_LB_PORT
            )),
            Component::ContainerRuntime => Some("ctr --address /run/containerd/containerd.sock version".into()),
        };
        if let Some(p) = probe {
            v.push((format!("{unit} health"), unit, p));
        }
    }
    if first_cp {
        v.push((
            "all nodes Ready".into(),
            "kubelet".into(),
            // One `kubectl get nodes` per attempt, whatever the number of nodes.
            "st=$(kubectl --kubeconfig /etc/kubernetes/admin.conf get nodes --request-timeout=10s \
             -o jsonpath='{range .items[*]}{.metadata.name}{\" \"}{range .status.conditions[?(@.type==\"Ready\")]}{.status}{end}{\"\\n\"}{end}') \
             && for n in \"$@\"; do printf '%s\\n' \"$st\" | grep -qx -- \"$n True\" || { echo \"node $n is not Ready\"; false; } || exit 1; done"
                .into(),
        ));
    }
    v
}

/// The script: retries each check every 2 s until it passes or the run's shared deadline (`budget_secs` from
/// the start of the script) has passed, then prints `ok NAME` or `FAIL NAME` with output and journal. A check
/// that starts after the deadline gets exactly one try, so a host where everything is down reports every
/// failure within the budget instead of waiting the budget once per check.
fn script(checks: &[(String, String, String)], budget_secs: u64) -> String {
    let mut s = format!("fail=0; deadline=$(( $(date +%s) + {budget_secs} ))\n");
    // Every unit's state in one call: `$active` holds ` unit=state ` words.
    let units: Vec<&str> = checks.iter().filter(|c| c.0.ends_with(" active")).map(|c| c.1.as_str()).collect();
    if !units.is_empty() {
        s.push_str(&format!(
            "states() {{ active=\" \"; for st in $(systemctl is-active \"$@\" 2>/dev/null); do active=\"$active$1=$st \"; shift; done; }}; states {u}\n",
            u = units.join(" ")
        ));
    }
    for (name, unit, cmd) in checks {
        s.push_str(&format!(
            "ok=0; t0=$(date +%s); while :; do if out=$({cmd} 2>&1); then ok=1; break; fi; \
             [ \"$(date +%s)\" -ge \"$deadline\" ] && break; sleep 2; done; w=$(( $(date +%s) - t0 ))\n\
             if [ $ok = 1 ]; then if [ $w -ge 5 ]; then echo \"ok {name} (after ${{w}}s)\"; else echo 'ok {name}'; fi; \
             else echo 'FAIL {name} (after '$w's)'; echo \"$out\" | tail -n 5 | sed 's/^/    /'; \
             journalctl -u {unit} -n 8 --no-pager 2>/dev/null | sed 's/^/    journal: /'; fail=1; fi\n"
        ));
    }
    s.push_str("exit $fail\n");
    s
}

/// The checks of one host's own services (no cluster-wide check), as one command that exits non-zero and
/// prints `FAIL` lines with output and journal when a check does not pass within the budget. The upgrade
/// gates each host with it.
pub fn host_checks(host: &HostModel) -> Command {
    Command::shell(script(&checks(host, false), VERIFY_BUDGET_SECS)).sudo()
}

impl Phase for Verify {
    fn id(&self) -> &'static str {
        "verify"
    }
    fn title(&self) -> &'static str {
        "Check every component's health and every node's readiness"
    }
    fn cluster_wide(&self) -> bool {
        true
    }
    fn work(&self, ctx: &Context<'_>, host: &HostModel) -> crate::Result<Option<HostWork>> {
        // A dry run changed nothing, so there is nothing new to verify; on a fresh cluster every check would
        // only wait out its deadline.
        if ctx.material.options.dry_run {
            return Ok(None);
        }
        let first_cp = ctx.model.control_planes().next().is_some_and(|h| h.name == host.name);
        let nodes: Vec<String> = ctx.model.nodes().map(|h| h.name.clone()).collect();
        let checks = checks(host, first_cp);
        // The node names are arguments: the Ready check reads them as `"$@"`.
        let cmd = Command::shell(script(&checks, VERIFY_BUDGET_SECS)).args(nodes.iter().cloned()).sudo();
        let name = host.name.clone();
        Ok(Some(HostWork::Step(Step::custom("verify", move |t: &dyn Transport| {
            Box::pin(async move {
                let out = t.exec(&cmd).await?;
                for line in out.stdout_str().lines().filter(|l| l.starts_with("ok ")) {
                    eprintln!("[verify] {name}: {line}");
                }
                if out.success() {
                    Ok(false)
                } else {
                    Err(StepError::Other(format!("health checks failed:\n{}", out.stdout_str())))
                }
            })
        }))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_checks_its_own_services() {
        let text = "cluster: {name: c, kubernetesVersion: v1.35.7}\nhosts:\n\
            - {name: cp1, address: 10.0.0.1, roles: [control-plane, etcd]}\n\
            - {name: w1, address: 10.0.0.2, roles: [worker]}\n";
        let m = crate::model::ClusterModel::derive(
            &crate::inventory::parse(std::path::Path::new("t.yaml"), text).unwrap(),
        );
        let names = |h: &str, first: bool| -> Vec<String> {
            checks(m.host(h).unwrap(), first).into_iter().map(|c| c.0).collect()
        };
        let cp = names("cp1", true);
        assert!(cp.contains(&"etcd health".to_string()) && cp.contains(&"kube-apiserver health".to_string()));
        assert!(cp.contains(&"all nodes Ready".to_string()));
        let w = names("w1", false);
        assert!(w.contains(&"kubelet health".to_string()) && !w.iter().any(|c| c.starts_with("etcd")));
        let s = script(&checks(m.host("w1").unwrap(), false), 3);
        assert!(s.contains("journalctl -u kubelet"), "{s}");
    }

    #[tokio::test]
    async fn the_script_reports_each_check_in_a_real_shell() {
        let checks = vec![
            ("passes".to_string(), "none".to_string(), "true".to_string()),
            ("fails".to_string(), "none".to_string(), "echo boom; false".to_string()),
        ];
        let t = crate::transport::local::LocalTransport::new("local");
        let out = t.exec(&Command::shell(script(&checks, 0))).await.unwrap();
        assert_eq!(out.status, Some(1));
        let text = out.stdout_str();
        assert!(
            text.contains("ok passes") && text.contains("FAIL fails") && text.contains("    boom"),
            "{text}"
        );
    }

    /// Unit states come from one `systemctl is-active` for all units (a unit not active then is asked
    /// again and fails with its name); the Ready check reads every node in one `kubectl get nodes`.
    #[test]
    fn units_and_nodes_are_read_in_one_call_each() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let fake = |name: &str, body: &str| {
            std::fs::write(
                d.join(name),
                format!("#!/bin/sh\nprintf '%s\\n' \"{name} $*\" >> \"$D/calls\"\n{body}"),
            )
            .unwrap();
            std::fs::set_permissions(d.join(name), std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        };
        fake("systemctl", "[ \"$1\" = is-active ] && [ \"$2\" != --quiet ] && { echo active; echo failed; exit 3; }\nexit 3\n");
        fake("kubectl", "printf 'cp1 True\\nw1 False\\n'\n");
        let checks = vec![
            ("svc-a active".to_string(), "svc-a".to_string(), "case \"$active\" in *\" svc-a=active \"*) true ;; *) systemctl is-active --quiet svc-a ;; esac".to_string()),
            ("svc-b active".to_string(), "svc-b".to_string(), "case \"$active\" in *\" svc-b=active \"*) true ;; *) systemctl is-active --quiet svc-b ;; esac".to_string()),
        ];
        let text = "cluster: {name: c, kubernetesVersion: v1.35.7}\nhosts:\n\
            - {name: cp1, address: 10.0.0.1, roles: [control-plane, etcd]}\n\
            - {name: w1, address: 10.0.0.2, roles: [worker]}\n";
        let m = crate::model::ClusterModel::derive(
            &crate::inventory::parse(std::path::Path::new("t.yaml"), text).unwrap(),
        );
        let ready = checks_for_test(&m);
        let mut all = checks.clone();
        all.push(ready);
        let path = format!("{}:{}", d.display(), std::env::var("PATH").unwrap());
        // The node names as the phase passes them: arguments, one of them hostile (never executed).
        let o = std::process::Command::new("sh")
            .args(["-c", &script(&all, 0), "sh", "cp1", "w1", "x$(touch $D/pwned)"])
            .env("PATH", &path)
            .env("D", d)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(1), "{out}");
        assert!(out.contains("ok svc-a active") && out.contains("FAIL svc-b active"), "{out}");
        assert!(out.contains("FAIL all nodes Ready") && out.contains("node w1 is not Ready"), "{out}");
        assert!(!d.join("pwned").exists(), "a node name was executed");
        let calls = std::fs::read_to_string(d.join("calls")).unwrap();
        assert_eq!(
            calls.lines().collect::<Vec<_>>(),
            ["systemctl is-active svc-a svc-b", "systemctl is-active --quiet svc-b", "kubectl --kubeconfig /etc/kubernetes/admin.conf get nodes --request-timeout=10s -o jsonpath={range .items[*]}{.metadata.name}{\" \"}{range .status.conditions[?(@.type==\"Ready\")]}{.status}{end}{\"\\n\"}{end}"],
            "one call for all units, one again for the unit that was not active, one for all nodes"
        );
    }

    /// The first control plane's "all nodes Ready" check of `m`.
    fn checks_for_test(m: &crate::model::ClusterModel) -> (String, String, String) {
        checks(m.host("cp1").unwrap(), true).into_iter().find(|c| c.0 == "all nodes Ready").unwrap()
    }
}
