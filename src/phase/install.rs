//! The install phases of `apply`, each a desired state per host built from the render module, the PKI
//! placement and the prepared binaries: `os-prep`, `runtime`, `etcd`, `control-plane`, `api-endpoint`,
//! `nodes`. Health waits run only after a change; `verify` checks everything at the end.

use super::{pki_files, Context, HostWork, Phase};
use crate::artifacts::Component as Art;
use crate::model::{Component, EndpointMode, HostModel};
use crate::plan::{DesiredFile, HostDesired};
use crate::render::{self, paths::*};
use crate::transport::Command;
use crate::Result;

fn binary(ctx: &Context<'_>, h: &HostModel, c: Art, name: &str) -> Result<DesiredFile> {
    let e = ctx.material.executable(c, &h.arch, name)?;
    let size = std::fs::metadata(&e.path)
        .map_err(|err| crate::Error::io(format!("reading {}", e.path.display()), err))?
        .len();
    let version = ctx
        .material
        .artifacts
        .get(&(c, h.arch.clone()))
        .map(|a| a.requirement.version.clone())
        .unwrap_or_default();
    Ok(DesiredFile::local(
        &format!("{BIN}/{name}"),
        0o755,
        e.path.clone(),
        e.sha256.clone(),
        size,
        format!("{name} {version}"),
    ))
}

fn unit_file(component: Component, exec: &str, args: Vec<String>, docs: &str) -> DesiredFile {
    let name = component.unit();
    // 0600: the benchmark's permissions for the static-pod manifests these units stand for (CIS 1.1.1-1.1.8,
    // 4.1.1); systemd reads them as root.
    DesiredFile::bytes(
        &format!("{UNITS}/{name}.service"),
        0o600,
        render::unit(component, exec, args, docs),
        format!("{name} unit"),
    )
    .restarts(&[name])
}

/// A shell loop that retries `check` every 2 s for up to `seconds`, then fails with `what`.
fn wait(what: &str, check: &str, seconds: u32) -> (String, Command) {
    let tries = seconds / 2;
    // A unit that systemd keeps restarting (it exits, `Restart=always` starts it again) will not become
    // ready: fail after its fifth automatic restart, with its journal, instead of waiting out the limit.
    // `NRestarts` counts from the last explicit start, which the converge just made.
    let script = format!(
        "i=0; until {check} >/dev/null 2>&1; do i=$((i+1)); if [ $i -ge {tries} ]; then echo \"{what} not ready after {seconds} s\" >&2; exit 1; fi; \
         n=$(systemctl show -p NRestarts --value {what} 2>/dev/null); if [ \"${{n:-0}}\" -ge 5 ] 2>/dev/null; then \
         echo \"{what} keeps failing ($n automatic restarts)\" >&2; journalctl -u {what} -n 5 --no-pager >&2 2>/dev/null; exit 1; fi; sleep 2; done"
    );
    (format!("wait for {what}"), Command::shell(script).sudo())
}

/// `os-prep`: kernel modules, sysctls, swap off.
pub struct OsPrep;
impl Phase for OsPrep {
    fn id(&self) -> &'static str {
        "os-prep"
    }
    fn title(&self) -> &'static str {
        "Kernel modules, sysctls, swap off"
    }
    fn work(&self, _ctx: &Context<'_>, h: &HostModel) -> Result<Option<HostWork>> {
        if !h.is_node {
            return Ok(None);
        }
        let files = vec![
            DesiredFile::bytes(
                "/etc/modules-load.d/kubeforge.conf",
                0o644,
                render::modules_load(),
                "kernel modules",
            ),
            DesiredFile::bytes("/etc/sysctl.d/99-kubeforge.conf", 0o644, render::sysctl(), "sysctls"),
        ];
        let apply = Command::shell(
            "modprobe overlay && modprobe br_netfilter && sysctl --system >/dev/null && swapoff -a && \
             sed -i.kubeforge-bak -E 's|^([^#].*[[:space:]]swap[[:space:]].*)$|# \\1|' /etc/fstab",
        )
        .sudo();
        Ok(Some(HostWork::Converge(HostDesired {
            files,
            after_change: vec![("load modules, apply sysctls, turn swap off".into(), apply)],
            ..Default::default()
        })))
    }
}

/// `runtime`: containerd + runc + CNI plugins (the release source's when it has them, else the distribution's
/// packages, which must then be installed), containerd configured for the systemd cgroup driver, crictl
/// config, the bridge CNI config and the pod routes.
pub struct Runtime;
impl Phase for Runtime {
    fn id(&self) -> &'static str {
        "runtime"
    }
    fn title(&self) -> &'static str {
        "Container runtime (containerd, runc, CNI plugins)"
    }
    fn work(&self, ctx: &Context<'_>, h: &HostModel) -> Result<Option<HostWork>> {
        if !h.is_node {
            return Ok(None);
        }
        let m = ctx.model;
        let mut d = HostDesired::default();
        let release = ctx.material.artifacts.get(&(Art::Containerd, h.arch.clone()));
        if let Some(a) = release {
            for e in &a.executables {
                d.files.push(binary(ctx, h, Art::Containerd, &e.name)?.restarts(&["containerd"]));
            }
            d.files.push(unit_file(
                Component::ContainerRuntime,
                &format!("{BIN}/containerd"),
                vec![],
                "https://containerd.io",
            ));
        } else {
            d.require.push(("containerd".into(), "the release source has no containerd; install the distribution's package (`apt-get install containerd`)".into()));
        }
        if ctx.material.artifacts.contains_key(&(Art::Runc, h.arch.clone())) {
            d.files.push(binary(ctx, h, Art::Runc, "runc")?);
        } else {
            d.require.push(("runc".into(), "install the distribution's `runc` package".into()));
        }
        if let Some(a) = ctx.material.artifacts.get(&(Art::CniPlugins, h.arch.clone())) {
            for e in &a.executables {
                let size = std::fs::metadata(&e.path)
                    .map_err(|err| crate::Error::io("reading CNI plugin", err))?
                    .len();
                d.files.push(DesiredFile::local(
                    &format!("/opt/cni/bin/{}", e.name),
                    0o755,
                    e.path.clone(),
                    e.sha256.clone(),
                    size,
                    format!("CNI plugin {}", e.name),
                ));
            }
        } else {
            // Debian and Ubuntu install the plugins under /usr/lib/cni; containerd is pointed at /opt/cni/bin.
            d.after_change.push((
                "link the distribution's CNI plugins".into(),
                Command::shell("mkdir -p /opt/cni/bin && for p in /usr/lib/cni/*; do [ -e \"$p\" ] || continue; [ -e \"/opt/cni/bin/${p##*/}\" ] || ln -s \"$p\" /opt/cni/bin/; done; [ -e /opt/cni/bin/bridge ] || { echo 'no CNI plugins found (install containernetworking-plugins)' >&2; exit 1; }").sudo(),
            ));
        }
        if ctx.material.artifacts.contains_key(&(Art::Crictl, h.arch.clone())) {
            d.files.push(binary(ctx, h, Art::Crictl, "crictl")?);
        }
        d.files.push(
            DesiredFile::bytes(
                "/etc/containerd/config.toml",
                0o644,
                render::containerd_config(release.map(|a| a.requirement.version.as_str())),
                "containerd config",
            )
            .restarts(&["containerd"]),
        );
        d.files.push(DesiredFile::bytes("/etc/crictl.yaml", 0o644, render::crictl_config(), "crictl config"));
        if let Some(conf) = render::cni_conflist(m, h).filter(|_| m.cni == crate::model::Cni::Bridge) {
            d.files.push(DesiredFile::bytes(
                "/etc/cni/net.d/10-kubeforge.conflist",
                0o600,
                conf,
                "bridge CNI config",
            ));
            d.files.push(
                DesiredFile::bytes(
                    &format!("{UNITS}/kubeforge-pod-routes.service"),
                    0o644,
                    render::pod_routes_unit(m, h),
                    "pod routes unit",
                )
                .restarts(&["kubeforge-pod-routes"]),
            );
            d.units.push("kubeforge-pod-routes".into());
        }
        d.units.insert(0, "containerd".into());
        d.after_change.push(wait("containerd", "ctr --address /run/containerd/containerd.sock version", 60));
        Ok(Some(HostWork::Converge(d)))
    }
}

/// `etcd`: a TLS etcd member on every etcd host; waits for the cluster to be healthy.
pub struct Etcd;
impl Phase for Etcd {
    fn id(&self) -> &'static str {
        "etcd"
    }
    fn title(&self) -> &'static str {
        "etcd cluster (client and peer TLS)"
    }
    fn rollout(&self) -> super::Rollout {
        super::Rollout::SerialWhenRunning
    }
    fn work(&self, ctx: &Context<'_>, h: &HostModel) -> Result<Option<HostWork>> {
        if !h.roles.etcd {
            return Ok(None);
        }
        let m = ctx.model;
        let mut d = HostDesired::default();
        d.files.push(binary(ctx, h, Art::Etcd, "etcd")?.restarts(&["etcd"]));
        d.files.push(binary(ctx, h, Art::Etcdctl, "etcdctl")?);
        d.files.extend(pki_files::etcd(ctx, h)?);
        let args = render::to_args(&render::etcd_flags(m, h, "new"));
        d.files.push(unit_file(Component::Etcd, &format!("{BIN}/etcd"), args, "https://etcd.io/docs/"));
        d.units.push("etcd".into());
        if let Some(b) = h.etcd_bootstrap.as_ref().filter(|b| b.state == "existing") {
            // A member joining a running cluster: added as a learner before it starts (after a quorum check),
            // promoted once it caught up, removed again when it does not. Members join one at a time.
            let peer = crate::model::url(h.internal_ip, 2380);
            let others: Vec<String> = b
                .initial_cluster
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .filter(|(n, _)| *n != h.name)
                .filter_map(|(n, _)| m.host(n))
                .map(|o| crate::model::url(o.internal_ip, 2379))
                .collect();
            let endpoints = others.join(",");
            d.before_start.push((
                "add the member as an etcd learner".into(),
                Command::shell(format!("{ETCDCTL_FN}\n{ADD_LEARNER}"))
                    .arg(h.name.clone())
                    .arg(peer.clone())
                    .arg(endpoints.clone())
                    .sudo(),
            ));
            d.after_change.push((
                "promote the etcd learner".into(),
                Command::shell(format!("{ETCDCTL_FN}\n{PROMOTE_LEARNER}")).arg(peer).arg(endpoints).sudo(),
            ));
            d.serial = true;
        }
        let check = format!(
            "ETCDCTL_API=3 {BIN}/etcdctl --endpoints=https://127.0.0.1:2379 --cacert={PKI}/etcd/ca.crt \
             --cert={PKI}/etcd/healthcheck-client.crt --key={PKI}/etcd/healthcheck-client.key --command-timeout=5s endpoint health"
        );
        d.after_change.push(wait("etcd", &check, 300));
        Ok(Some(HostWork::Converge(d)))
    }
}

/// `e ARGS`: etcdctl over TLS with the health-check client certificate against `$eps` (the scripts that
/// use it set `eps` before calling it).
pub const ETCDCTL_FN: &str = r#"e() { ETCDCTL_API=3 /usr/local/bin/etcdctl --endpoints="$eps" --cacert=/etc/kubernetes/pki/etcd/ca.crt --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt --key=/etc/kubernetes/pki/etcd/healthcheck-client.key --command-timeout=10s "$@"; }"#;

/// Adds this host as a learner: `$1` name, `$2` peer URL, `$3` the running members' client URLs. A re-run
/// finds the member already there. Refuses when any running member is unhealthy, naming it.
const ADD_LEARNER: &str = r#"name=$1; peer=$2; eps=$3
set -u
if e member list | awk -F', ' -v p="$peer" '$4 == p {f=1} END {exit !f}'; then exit 0; fi
bad=$(e endpoint health 2>&1 | grep -v 'is healthy' || true)
if [ -n "$bad" ]; then echo "etcd is not healthy, refusing to add $name: $bad" >&2; exit 1; fi
# Data of an earlier attempt belongs to a member ID the cluster no longer knows: it is moved aside, never
# deleted (the host passed the identity check and preflight, so it is this cluster's).
if [ -d /var/lib/etcd/member ]; then
  systemctl stop etcd 2>/dev/null || true
  aside=/var/lib/etcd.member.before-join-$(date +%s)
  mv /var/lib/etcd/member "$aside" && echo "the data of an earlier attempt is kept in $aside" >&2
fi
e member add "$name" --peer-urls="$peer" --learner >/dev/null"#;

/// Promotes this host's learner once it caught up: `$1` peer URL, `$2` the other members' client URLs.
/// After 300 s the learner is removed again (no stale member), the member stopped and its data wiped.
const PROMOTE_LEARNER: &str = r#"peer=$1; eps=$2
line=$(e member list | awk -F', ' -v p="$peer" '$4 == p')
[ -n "$line" ] || { echo "this host is not an etcd member" >&2; exit 1; }
id=${line%%,*}
case "$line" in *", false") exit 0 ;; esac
i=0
until e member promote "$id" >/dev/null 2>&1; do
  i=$((i+1))
  if [ $i -ge 150 ]; then
    echo "the etcd learner did not catch up within 300 s: removing it again" >&2
    e member remove "$id" >&2 || true
    systemctl stop etcd; rm -rf /var/lib/etcd/member
    exit 1
  fi
  sleep 2
done"#;

/// `control-plane`: kube-apiserver, kube-controller-manager, kube-scheduler; waits for `/readyz`.
pub struct ControlPlane;
impl Phase for ControlPlane {
    fn id(&self) -> &'static str {
        "control-plane"
    }
    fn title(&self) -> &'static str {
        "kube-apiserver, kube-controller-manager, kube-scheduler"
    }
    fn rollout(&self) -> super::Rollout {
        super::Rollout::SerialWhenRunning
    }
    fn work(&self, ctx: &Context<'_>, h: &HostModel) -> Result<Option<HostWork>> {
        if !h.roles.control_plane {
            return Ok(None);
        }
        let m = ctx.model;
        let mut d = HostDesired::default();
        for (c, name) in [
            (Art::KubeApiserver, "kube-apiserver"),
            (Art::KubeControllerManager, "kube-controller-manager"),
            (Art::KubeScheduler, "kube-scheduler"),
        ] {
            d.files.push(binary(ctx, h, c, name)?.restarts(&[name]));
        }
        d.files.push(binary(ctx, h, Art::Kubectl, "kubectl")?);
        d.files.extend(pki_files::control_plane(ctx, h)?);
        d.files.push(
            DesiredFile::bytes(
                &format!("{KUBE}/encryption-config.yaml"),
                0o600,
                render::encryption_config(&ctx.material.encryption_key),
                "encryption at rest config",
            )
            .secret()
            .restarts(&["kube-apiserver"]),
        );
        d.files.push(
            DesiredFile::bytes(
                &format!("{KUBE}/audit-policy.yaml"),
                0o644,
                render::audit_policy(),
                "audit policy",
            )
            .restarts(&["kube-apiserver"]),
        );
        d.files.push(
            DesiredFile::bytes(
                &format!("{KUBE}/scheduler-config.yaml"),
                0o644,
                render::scheduler_config(),
                "scheduler config",
            )
            .restarts(&["kube-scheduler"]),
        );
        let docs = "https://kubernetes.io/docs/reference/command-line-tools-reference/";
        d.files.push(unit_file(
            Component::KubeApiserver,
            &format!("{BIN}/kube-apiserver"),
            render::to_args(&render::apiserver_flags(m, h)),
            docs,
        ));
        d.files.push(unit_file(
            Component::KubeControllerManager,
            &format!("{BIN}/kube-controller-manager"),
            render::to_args(&render::controller_manager_flags(m)),
            docs,
        ));
        d.files.push(unit_file(
            Component::KubeScheduler,
            &format!("{BIN}/kube-scheduler"),
            render::to_args(&render::scheduler_flags(m)),
            docs,
        ));
        d.units = vec!["kube-apiserver".into(), "kube-controller-manager".into(), "kube-scheduler".into()];
        let url = format!("{}/readyz", crate::model::url(h.internal_ip, 6443));
        d.after_change.push(wait(
            "kube-apiserver",
            &format!("curl -sf --max-time 5 --cacert {PKI}/ca.crt {url}"),
            300,
        ));
        Ok(Some(HostWork::Converge(d)))
    }
}

/// `api-endpoint`: the node-local API balancer on every node (mode `local-lb`).
pub struct ApiEndpoint;
impl Phase for ApiEndpoint {
    fn id(&self) -> &'static str {
        "api-endpoint"
    }
    fn title(&self) -> &'static str {
        "Node-local API load balancer (HA)"
    }
    fn rollout(&self) -> super::Rollout {
        super::Rollout::SerialWhenRunning
    }
    fn work(&self, ctx: &Context<'_>, h: &HostModel) -> Result<Option<HostWork>> {
        if ctx.model.endpoint.mode != EndpointMode::LocalLb || !h.is_node {
            return Ok(None);
        }
        let lb = ctx.material.api_lb_binary(&h.arch)?;
        let mut d = HostDesired::default();
        d.files.push(
            DesiredFile::local(
                &format!("{BIN}/kubeforge-apilb"),
                0o755,
                lb.path.clone(),
                lb.sha256.clone(),
                lb.size,
                "kubeforge-apilb",
            )
            .restarts(&["kube-api-lb"]),
        );
        // The cluster CA the balancer's `/readyz` checks verify every backend with (its own copy: this phase
        // runs before the node's certificates are placed).
        d.files.push(
            DesiredFile::bytes(
                render::API_LB_CA,
                0o644,
                ctx.material.pki.trust_pem(crate::pki::spec::CaId::Cluster)?,
                "cluster CA for the balancer's checks",
            )
            .restarts(&["kube-api-lb"]),
        );
        d.files.push(unit_file(
            Component::ApiLoadBalancer,
            &format!("{BIN}/kubeforge-apilb"),
            render::api_lb_args(ctx.model),
            "kubeforge-apilb --help",
        ));
        d.units.push("kube-api-lb".into());
        Ok(Some(HostWork::Converge(d)))
    }
}

/// `nodes`: kubelet and kube-proxy on every node; waits for the kubelet's health endpoint.
pub struct Nodes;
impl Phase for Nodes {
    fn id(&self) -> &'static str {
        "nodes"
    }
    fn title(&self) -> &'static str {
        "kubelet and kube-proxy on every node"
    }
    fn work(&self, ctx: &Context<'_>, h: &HostModel) -> Result<Option<HostWork>> {
        if !h.is_node {
            return Ok(None);
        }
        let m = ctx.model;
        let mut d = HostDesired::default();
        d.files.push(binary(ctx, h, Art::Kubelet, "kubelet")?.restarts(&["kubelet"]));
        d.files.push(binary(ctx, h, Art::KubeProxy, "kube-proxy")?.restarts(&["kube-proxy"]));
        d.files.extend(pki_files::node(ctx, h)?);
        d.files.push(
            DesiredFile::bytes(
                "/var/lib/kubelet/config.yaml",
                0o600,
                render::kubelet_config(m),
                "kubelet config",
            )
            .restarts(&["kubelet"]),
        );
        d.files.push(
            DesiredFile::bytes(
                "/var/lib/kube-proxy/config.yaml",
                0o644,
                render::kube_proxy_config(m, h),
                "kube-proxy config",
            )
            .restarts(&["kube-proxy"]),
        );
        let docs = "https://kubernetes.io/docs/reference/command-line-tools-reference/";
        d.files.push(unit_file(
            Component::Kubelet,
            &format!("{BIN}/kubelet"),
            render::to_args(&render::kubelet_flags(m, h)),
            docs,
        ));
        d.files.push(unit_file(
            Component::KubeProxy,
            &format!("{BIN}/kube-proxy"),
            render::to_args(&render::kube_proxy_flags(m)),
            docs,
        ));
        d.units = vec!["kubelet".into(), "kube-proxy".into()];
        d.after_change.push(wait("kubelet", "curl -sf --max-time 5 http://127.0.0.1:10248/healthz", 180));
        Ok(Some(HostWork::Converge(d)))
    }
}
