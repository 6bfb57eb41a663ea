//! Which PKI files each host gets, where, and which services they restart. CA keys go only where a component
//! needs them: the cluster CA key to control planes (the controller-manager's signer), no other CA key
//! anywhere. Kubeconfigs of control-plane components point at their own host's apiserver, as kubeadm does.

use super::Context;
use crate::model::HostModel;
use crate::pki::spec::CaId;
use crate::plan::DesiredFile;
use crate::Result;

/// Remote PKI directory.
pub const PKI: &str = "/etc/kubernetes/pki";

fn file(
    ctx: &Context<'_>,
    local: &str,
    remote: &str,
    secret: bool,
    restarts: &[&str],
    label: &str,
) -> Result<DesiredFile> {
    let data = ctx.material.pki.read(local)?;
    let mode = if secret { 0o600 } else { 0o644 };
    let f = DesiredFile::bytes(remote, mode, data, label).restarts(restarts);
    Ok(if secret { f.secret() } else { f })
}

/// A CA's trust file: the store's CA certificate, or the certificates a CA rotation's step trusts.
fn trust(ctx: &Context<'_>, ca: CaId, remote: &str, restarts: &[&str], label: &str) -> Result<DesiredFile> {
    let data = ctx.material.pki.trust_pem(ca)?;
    Ok(DesiredFile::bytes(remote, 0o644, data, label).restarts(restarts))
}

fn pair(
    ctx: &Context<'_>,
    local: &str,
    remote: &str,
    restarts: &[&str],
    label: &str,
) -> Result<Vec<DesiredFile>> {
    Ok(vec![
        file(
            ctx,
            &format!("{local}.crt"),
            &format!("{remote}.crt"),
            false,
            restarts,
            &format!("{label} certificate"),
        )?,
        file(
            ctx,
            &format!("{local}.key"),
            &format!("{remote}.key"),
            true,
            restarts,
            &format!("{label} key"),
        )?,
    ])
}

/// etcd members: the etcd CA certificate, the member's server and peer pairs, the health-check client.
///
/// etcd reads its serving and peer key pairs again on every new TLS connection, so a renewed certificate
/// (same key) needs no restart: the member keeps its leadership and quorum while certificates are renewed,
/// which matters most where two members make the quorum. A new key restarts it (the certificate and key
/// must change together), and so does the CA, which etcd reads only at start.
pub fn etcd(ctx: &Context<'_>, host: &HostModel) -> Result<Vec<DesiredFile>> {
    let r = &["etcd"];
    let mut v = vec![trust(ctx, CaId::Etcd, &format!("{PKI}/etcd/ca.crt"), r, "etcd CA certificate")?];
    for (local, remote, label) in [
        (format!("etcd/{}/server", host.name), format!("{PKI}/etcd/server"), "etcd server"),
        (format!("etcd/{}/peer", host.name), format!("{PKI}/etcd/peer"), "etcd peer"),
    ] {
        let mut p = pair(ctx, &local, &remote, r, label)?;
        p[0].restarts.clear();
        v.extend(p);
    }
    v.extend(pair(
        ctx,
        "etcd/healthcheck-client",
        &format!("{PKI}/etcd/healthcheck-client"),
        &[],
        "etcd health-check client",
    )?);
    Ok(v)
}

/// Control planes: everything kube-apiserver, kube-controller-manager and kube-scheduler read, plus
/// `admin.conf` for the addons phase and for admins on the host.
pub fn control_plane(ctx: &Context<'_>, host: &HostModel) -> Result<Vec<DesiredFile>> {
    let api = &["kube-apiserver"];
    let cm = &["kube-controller-manager"];
    let all = &["kube-apiserver", "kube-controller-manager", "kube-scheduler"];
    let mut v = vec![
        trust(ctx, CaId::Cluster, &format!("{PKI}/ca.crt"), all, "cluster CA certificate")?,
        // The controller-manager's CSR signer: the CA that signs now, one certificate (the real component
        // refuses a file with more, and `ca.crt` holds two during a CA rotation), and its key.
        DesiredFile::bytes(
            &format!("{PKI}/ca-signer.crt"),
            0o644,
            ctx.material.pki.issuing_ca_pem(CaId::Cluster)?,
            "cluster CA certificate (controller-manager signer)",
        )
        .restarts(cm),
        DesiredFile::bytes(
            &format!("{PKI}/ca.key"),
            0o600,
            ctx.material.pki.issuing_ca_key_pem(CaId::Cluster)?,
            "cluster CA key (controller-manager signer)",
        )
        .restarts(cm)
        .secret(),
        trust(
            ctx,
            CaId::FrontProxy,
            &format!("{PKI}/front-proxy-ca.crt"),
            &["kube-apiserver", "kube-controller-manager"],
            "front-proxy CA certificate",
        )?,
        trust(ctx, CaId::Etcd, &format!("{PKI}/etcd/ca.crt"), api, "etcd CA certificate")?,
        // The service-account pair as the store holds it, or the step of a rotation in progress
        // (`crate::sa_key`): the key signs (apiserver tokens, controller-manager legacy tokens), every key of
        // `sa.pub` verifies.
        DesiredFile::bytes(
            &format!("{PKI}/sa.key"),
            0o600,
            ctx.material.service_account.signing_key(),
            "service-account signing key",
        )
        .restarts(&["kube-apiserver", "kube-controller-manager"])
        .secret(),
        DesiredFile::bytes(
            &format!("{PKI}/sa.pub"),
            0o644,
            ctx.material.service_account.verifying_keys()?,
            "service-account public key",
        )
        .restarts(api),
    ];
    v.extend(pair(ctx, "apiserver", &format!("{PKI}/apiserver"), api, "apiserver serving")?);
    v.extend(pair(
        ctx,
        "apiserver-kubelet-client",
        &format!("{PKI}/apiserver-kubelet-client"),
        api,
        "apiserver kubelet client",
    )?);
    v.extend(pair(
        ctx,
        "front-proxy-client",
        &format!("{PKI}/front-proxy-client"),
        api,
        "front-proxy client",
    )?);
    v.extend(pair(
        ctx,
        "apiserver-etcd-client",
        &format!("{PKI}/apiserver-etcd-client"),
        api,
        "apiserver etcd client",
    )?);
    let local = crate::model::url(host.internal_ip, 6443);
    let i = &ctx.material.pki_inputs;
    let store = &ctx.material.pki;
    for (cert, user, remote, restarts, label) in [
        (
            "controller-manager",
            "system:kube-controller-manager",
            "controller-manager.conf",
            &["kube-controller-manager"][..],
            "controller-manager kubeconfig",
        ),
        (
            "scheduler",
            "system:kube-scheduler",
            "scheduler.conf",
            &["kube-scheduler"][..],
            "scheduler kubeconfig",
        ),
        ("admin", "kubernetes-admin", "admin.conf", &[][..], "admin kubeconfig"),
    ] {
        let y = store.kubeconfig_for(i, cert, user, &local)?;
        v.push(
            DesiredFile::bytes(&format!("/etc/kubernetes/{remote}"), 0o600, y, label)
                .restarts(restarts)
                .secret(),
        );
    }
    Ok(v)
}

/// Nodes: the cluster CA, the node's kubelet kubeconfig and serving pair, and kube-proxy's kubeconfig.
pub fn node(ctx: &Context<'_>, host: &HostModel) -> Result<Vec<DesiredFile>> {
    let kubelet = &["kubelet"];
    let mut v = vec![
        trust(ctx, CaId::Cluster, &format!("{PKI}/ca.crt"), &["kubelet"], "cluster CA certificate")?,
        file(
            ctx,
            &format!("nodes/{}/kubelet.conf", host.name),
            "/etc/kubernetes/kubelet.conf",
            true,
            kubelet,
            "kubelet kubeconfig",
        )?,
        file(
            ctx,
            "kube-proxy.conf",
            "/etc/kubernetes/kube-proxy.conf",
            true,
            &["kube-proxy"],
            "kube-proxy kubeconfig",
        )?,
    ];
    v.extend(pair(
        ctx,
        &format!("nodes/{}/kubelet-serving", host.name),
        "/var/lib/kubelet/pki/kubelet",
        kubelet,
        "kubelet serving",
    )?);
    Ok(v)
}
