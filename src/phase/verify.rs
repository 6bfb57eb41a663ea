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
fn checks(host: &HostModel, first_cp: bool, node_names: &[String]) -> Vec<(String, String, String)> {
    let mut v = Vec::new();
    for c in &host.components {
        let unit = c.unit().to_string();
        v.push((format!("{unit} active"), unit.clone(), format!("systemctl is-active --quiet {unit}")));
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
        let names = node_names.join(" ");
        v.push((
            "all nodes Ready".into(),
            "kubelet".into(),
            format!(
                "for n in {names}; do kubectl --kubeconfig /etc/kubernetes/admin.conf get node \"$n\" \
                 -o jsonpath='{{range .status.conditions[?(@.type==\"Ready\")]}}{{.status}}{{end}}' | grep -qx True \
                 || {{ echo \"node $n is not Ready\"; exit 1; }}; done"
            ),
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
    for (name, unit, cmd) in checks {
        s.push_str(&format!(
            "ok=0; while :; do if out=$({cmd} 2>&1); then ok=1; break; fi; \
             [ \"$(date +%s)\" -ge \"$deadline\" ] && break; sleep 2; done\n\
             if [ $ok = 1 ]; then echo 'ok {name}'; else echo 'FAIL {name}'; echo \"$out\" | tail -n 5 | sed 's/^/    /'; \
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
    Command::shell(script(&checks(host, false, &[]), VERIFY_BUDGET_SECS)).sudo()
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
        let checks = checks(host, first_cp, &nodes);
        let cmd = Command::shell(script(&checks, VERIFY_BUDGET_SECS)).sudo();
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
            checks(m.host(h).unwrap(), first, &["cp1".into(), "w1".into()]).into_iter().map(|c| c.0).collect()
        };
        let cp = names("cp1", true);
        assert!(cp.contains(&"etcd health".to_string()) && cp.contains(&"kube-apiserver health".to_string()));
        assert!(cp.contains(&"all nodes Ready".to_string()));
        let w = names("w1", false);
        assert!(w.contains(&"kubelet health".to_string()) && !w.iter().any(|c| c.starts_with("etcd")));
        let s = script(&checks(m.host("w1").unwrap(), false, &[]), 3);
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
}
