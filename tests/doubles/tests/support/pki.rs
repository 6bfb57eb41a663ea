//! Test PKI in the kubeadm file layout (reference/pki.md), generated with rcgen: CAs, leaf certs,
//! SA key pair and kubeconfigs with embedded data. Stand-in until the tests switch to
//! `kubeforge certs generate`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose as Eku, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A CA that can sign leaves.
pub struct Ca {
    /// PEM certificate.
    pub cert_pem: String,
    /// PEM key.
    pub key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// A new self-signed CA.
    pub fn new(cn: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let key_pem = key.serialize_pem();
        Self { cert_pem: cert.pem(), key_pem, issuer: Issuer::new(params, key) }
    }

    /// A leaf signed by this CA: (cert PEM, key PEM).
    pub fn leaf(&self, cn: &str, orgs: &[&str], ekus: &[Eku], sans: &[&str]) -> (String, String) {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        for o in orgs {
            params.distinguished_name.push(DnType::OrganizationName, *o);
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = ekus.to_vec();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Cluster facts the certs are made for.
#[derive(Clone)]
pub struct Layout {
    /// Control-plane node name.
    pub node: String,
    /// Advertise address of the apiserver.
    pub advertise: String,
    /// First Service IP.
    pub service_ip: String,
    /// Cluster domain.
    pub domain: String,
    /// API server URL written into kubeconfigs.
    pub server: String,
}

/// The generated PKI directory.
pub struct Pki {
    /// Root dir (`pki/` below holds the kubeadm cert dir; kubeconfigs beside it).
    pub dir: PathBuf,
    /// Cluster CA.
    pub ca: Ca,
    /// etcd CA.
    pub etcd_ca: Ca,
    /// front-proxy CA.
    pub front_ca: Ca,
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A kubeconfig with embedded CA and client cert/key.
pub fn kubeconfig(server: &str, ca_pem: &str, cert_pem: &str, key_pem: &str, user: &str) -> String {
    let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let doc = serde_json::json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "kubernetes", "cluster": {"server": server, "certificate-authority-data": b(ca_pem)}}],
        "users": [{"name": user, "user": {"client-certificate-data": b(cert_pem), "client-key-data": b(key_pem)}}],
        "contexts": [{"name": format!("{user}@kubernetes"), "context": {"cluster": "kubernetes", "user": user}}],
        "current-context": format!("{user}@kubernetes"),
        "preferences": {}
    });
    serde_yaml::to_string(&doc).unwrap()
}

impl Pki {
    /// Path below the root.
    pub fn p(&self, rel: &str) -> String {
        self.dir.join(rel).to_string_lossy().into_owned()
    }

    /// Generates the full layout under `dir`.
    pub fn generate(dir: &Path, l: &Layout) -> Self {
        let ca = Ca::new("kubernetes");
        let etcd_ca = Ca::new("etcd-ca");
        let front_ca = Ca::new("front-proxy-ca");
        let pki = Self { dir: dir.to_path_buf(), ca, etcd_ca, front_ca };
        let w = |rel: &str, text: &str| write(&dir.join(rel), text);
        w("pki/ca.crt", &pki.ca.cert_pem);
        w("pki/ca.key", &pki.ca.key_pem);
        w("pki/etcd/ca.crt", &pki.etcd_ca.cert_pem);
        w("pki/etcd/ca.key", &pki.etcd_ca.key_pem);
        w("pki/front-proxy-ca.crt", &pki.front_ca.cert_pem);
        w("pki/front-proxy-ca.key", &pki.front_ca.key_pem);
        let svc = format!("kubernetes.default.svc.{}", l.domain);
        let (c, k) = pki.ca.leaf(
            "kube-apiserver",
            &[],
            &[Eku::ServerAuth],
            &[
                &l.node,
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                &svc,
                &l.service_ip,
                &l.advertise,
            ],
        );
        w("pki/apiserver.crt", &c);
        w("pki/apiserver.key", &k);
        let (c, k) = pki.ca.leaf(
            "kube-apiserver-kubelet-client",
            &["kubeadm:cluster-admins"],
            &[Eku::ClientAuth],
            &[],
        );
        w("pki/apiserver-kubelet-client.crt", &c);
        w("pki/apiserver-kubelet-client.key", &k);
        let (c, k) = pki.front_ca.leaf("front-proxy-client", &[], &[Eku::ClientAuth], &[]);
        w("pki/front-proxy-client.crt", &c);
        w("pki/front-proxy-client.key", &k);
        for name in ["server", "peer"] {
            let (c, k) = pki.etcd_ca.leaf(
                &l.node,
                &[],
                &[Eku::ServerAuth, Eku::ClientAuth],
                &[&l.node, "localhost", &l.advertise, "127.0.0.1", "::1"],
            );
            w(&format!("pki/etcd/{name}.crt"), &c);
            w(&format!("pki/etcd/{name}.key"), &k);
        }
        let (c, k) = pki.etcd_ca.leaf("kube-etcd-healthcheck-client", &[], &[Eku::ClientAuth], &[]);
        w("pki/etcd/healthcheck-client.crt", &c);
        w("pki/etcd/healthcheck-client.key", &k);
        let (c, k) = pki.etcd_ca.leaf("kube-apiserver-etcd-client", &[], &[Eku::ClientAuth], &[]);
        w("pki/apiserver-etcd-client.crt", &c);
        w("pki/apiserver-etcd-client.key", &k);
        let sa = KeyPair::generate().unwrap();
        w("pki/sa.key", &sa.serialize_pem());
        w("pki/sa.pub", &sa.public_key_pem());
        for (file, cn, orgs) in [
            ("admin.conf", "kubernetes-admin", vec!["kubeadm:cluster-admins"]),
            ("super-admin.conf", "kubernetes-super-admin", vec!["system:masters"]),
            ("controller-manager.conf", "system:kube-controller-manager", vec![]),
            ("scheduler.conf", "system:kube-scheduler", vec![]),
            ("kube-proxy.conf", "system:kube-proxy", vec![]),
        ] {
            let (c, k) = pki.ca.leaf(cn, &orgs, &[Eku::ClientAuth], &[]);
            w(file, &kubeconfig(&l.server, &pki.ca.cert_pem, &c, &k, cn));
        }
        pki
    }

    /// A kubelet's client kubeconfig and serving cert for `node` at `ip` (files `kubelet-<node>.conf`,
    /// `kubelet-<node>.crt/.key`).
    pub fn kubelet(&self, l: &Layout, node: &str, ip: &str) {
        let (c, k) = self.ca.leaf(&format!("system:node:{node}"), &["system:nodes"], &[Eku::ClientAuth], &[]);
        write(
            &self.dir.join(format!("kubelet-{node}.conf")),
            &kubeconfig(&l.server, &self.ca.cert_pem, &c, &k, &format!("system:node:{node}")),
        );
        let (c, k) = self.ca.leaf(node, &["system:nodes"], &[Eku::ServerAuth], &[node, ip]);
        write(&self.dir.join(format!("kubelet-{node}.crt")), &c);
        write(&self.dir.join(format!("kubelet-{node}.key")), &k);
    }
}
