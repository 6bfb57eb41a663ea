//! A CA rotation's trust files on loopback: every CA file and every kubeconfig's CA data holds two CAs with
//! one subject (the new one first, then the old one), as kubeforge renders them while a CA rotation runs.
//! The real etcd, the apiserver, kubelet and controller-manager doubles and the real kubectl accept the
//! certificates either CA signed and refuse a third CA's (same subject, another key). The certificates
//! that matter are the old CA's, second in each bundle: a reader that kept only the first certificate
//! would refuse them. The controller-manager refuses a bundle as its CSR signer, as the real one does.

#[path = "support/bins.rs"]
mod bins;
#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/kubectl.rs"]
mod kubectl;
#[path = "support/pki.rs"]
mod pki;

use std::time::Duration;

use base64::Engine;
use bins::{free_port, run, wait_for, Proc};
use cluster::{Env, V35};
use kubectl::Kubectl;
use pki::Ca;
use rcgen::ExtendedKeyUsagePurpose as Eku;

const IP: &str = "127.0.0.7";
/// What kubectl says about a 401 answer.
const UNAUTHORIZED: &str = "error: You must be logged in to the server";

/// A kubeconfig for `server` with a client cert and key, trusting `ca` (PEM), or any server cert without.
fn raw_kubeconfig(server: &str, ca: Option<&str>, cert: &str, key: &str) -> String {
    let b = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let trust = match ca {
        Some(ca) => format!("certificate-authority-data: {}", b(ca)),
        None => "insecure-skip-tls-verify: true".into(),
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    {trust}\nusers:\n- name: u\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n",
        b(cert),
        b(key)
    )
}

#[test]
fn trust_bundles_of_two_cas_with_one_subject_accept_either_and_refuse_a_third() {
    let env = Env::new(IP);
    let write = |rel: &str, text: &str| {
        let p = env.path(rel);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    };
    let (old, old_etcd, old_front) = (&env.pki.ca, &env.pki.etcd_ca, &env.pki.front_ca);
    let (new, other) = (Ca::new("kubernetes"), Ca::new("kubernetes"));
    let (new_etcd, other_etcd) = (Ca::new("etcd-ca"), Ca::new("etcd-ca"));
    let new_front = Ca::new("front-proxy-ca");
    let other_front = Ca::new("front-proxy-ca");
    // The trust files of a rotation: the new CA first. The leaves generated with the environment are the
    // old CAs'.
    let bundle = format!("{}{}", new.cert_pem, old.cert_pem);
    write("pki/ca.crt", &bundle);
    write("pki/etcd/ca.crt", &format!("{}{}", new_etcd.cert_pem, old_etcd.cert_pem));
    write("pki/front-proxy-ca.crt", &format!("{}{}", new_front.cert_pem, old_front.cert_pem));
    // The apiserver's etcd client cert is the new etcd CA's (the real etcd checks it against the bundle).
    let (c, k) = new_etcd.leaf("kube-apiserver-etcd-client", &[], &[Eku::ClientAuth], &[]);
    write("pki/apiserver-etcd-client.crt", &c);
    write("pki/apiserver-etcd-client.key", &k);

    // --etcd-cafile: etcd serving a cert of a third etcd CA is refused.
    let mut flags = env.apiserver_flags("");
    flags.insert("kubelet-certificate-authority".into(), env.pki.p("pki/ca.crt"));
    let api_bin = env.bin("kube-apiserver", V35);
    {
        let (c, k) = other_etcd.leaf("cp1", &[], &[Eku::ServerAuth, Eku::ClientAuth], &[IP, "127.0.0.1"]);
        write("pki/etcd/other-server.crt", &c);
        write("pki/etcd/other-server.key", &k);
        let (_etcd, url) = env.start_etcd_as("etcd-other", "pki/etcd/other-server");
        let mut f = flags.clone();
        f.insert("etcd-servers".into(), url);
        let (code, _, err) = run(&api_bin, &cluster::to_args(&f), Duration::from_secs(60));
        assert_eq!(code, 1, "an etcd serving a third CA's cert must be refused:\n{err}");
        assert!(
            err.contains("failed to connect to etcd server") && err.contains("invalid peer certificate"),
            "{err}"
        );
    }
    // --requestheader-client-ca-file and --client-ca-file: a third CA's proxy client or serving cert is
    // refused at startup.
    let api_sans = [
        "cp1",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "10.96.0.1",
        IP,
    ];
    let refused_at_startup = |changes: &[(&str, String)]| {
        let mut f = flags.clone();
        f.insert("etcd-servers".into(), format!("https://{IP}:1"));
        for (k, v) in changes {
            f.insert(k.to_string(), v.clone());
        }
        let (code, _, err) = run(&api_bin, &cluster::to_args(&f), Duration::from_secs(30));
        assert_eq!(code, 1, "{changes:?} must be refused:\n{err}");
        assert!(err.contains("x509: certificate signed by unknown authority"), "{changes:?}:\n{err}");
    };
    let (c, k) = other_front.leaf("front-proxy-client", &[], &[Eku::ClientAuth], &[]);
    refused_at_startup(&[
        ("proxy-client-cert-file", write("other-front.crt", &c)),
        ("proxy-client-key-file", write("other-front.key", &k)),
    ]);
    let (c, k) = other.leaf("kube-apiserver", &[], &[Eku::ServerAuth], &api_sans);
    refused_at_startup(&[
        ("tls-cert-file", write("other-api.crt", &c)),
        ("tls-private-key-file", write("other-api.key", &k)),
    ]);

    // The apiserver with every trust file a bundle: its serving cert, kubelet client cert and front-proxy
    // client cert are the old CAs' and etcd's serving cert the old etcd CA's.
    let (_etcd, url) = env.start_etcd();
    flags.insert("etcd-servers".into(), url);
    let mut api = env.start_apiserver(V35, &flags, "apiserver.log");
    assert!(api.exited().is_none(), "apiserver exited:\n{}", api.log_text());

    // --client-ca-file, and kubectl's CA data: admins of the old and the new CA are let in, a third CA's
    // gets 401; CA data with the new CA alone refuses the apiserver's cert (the old CA's).
    let server = env.layout.server.clone();
    let k = Kubectl {
        kubeconfig: String::new(),
        cache: env.path("kubectl-cache").to_string_lossy().into_owned(),
    };
    for (name, ca, trusted) in [("old", old, true), ("new", &new, true), ("other", &other, false)] {
        let (c, key) = ca.leaf("kubernetes-admin", &["kubeadm:cluster-admins"], &[Eku::ClientAuth], &[]);
        let conf =
            write(&format!("admin-{name}.conf"), &pki::kubeconfig(&server, &bundle, &c, &key, "admin"));
        let (code, out, err) = k.run_as(&conf, &["get", "--raw", "/api/v1/namespaces/default"]);
        if trusted {
            assert_eq!(code, 0, "an admin of the {name} CA must be let in:\n{out}{err}\n{}", api.log_text());
        } else {
            assert!(code != 0 && err.contains(UNAUTHORIZED), "a third CA's admin gets 401: {code}\n{err}");
        }
    }
    let (c, key) = new.leaf("kubernetes-admin", &["kubeadm:cluster-admins"], &[Eku::ClientAuth], &[]);
    let conf = write("admin-new-ca-only.conf", &pki::kubeconfig(&server, &new.cert_pem, &c, &key, "admin"));
    let (code, _, err) = k.run_as(&conf, &["get", "--raw", "/api"]);
    assert!(code != 0 && err.contains("certificate signed by unknown authority"), "{code}\n{err}");

    // The kubelet: its kubeconfig's CA data (the apiserver's cert is the old CA's) and clientCAFile.
    let (_containerd, runtime) = cluster::start_containerd(env.tmp.path());
    let (c, key) = new.leaf("system:node:node1", &["system:nodes"], &[Eku::ClientAuth], &[]);
    let kubelet_conf = write("kubelet-node1.conf", &pki::kubeconfig(&server, &bundle, &c, &key, "node1"));
    let (c, key) = new.leaf("node1", &["system:nodes"], &[Eku::ServerAuth], &["node1", IP]);
    let (crt, key) = (write("kubelet-node1.crt", &c), write("kubelet-node1.key", &key));
    let (port, hport) = (free_port(IP), free_port(IP));
    let cfg = write(
        "kubelet-node1.yaml",
        &format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\naddress: {IP}\nport: {port}\nhealthzBindAddress: {IP}\nhealthzPort: {hport}\nauthentication:\n  anonymous:\n    enabled: false\n  webhook:\n    enabled: true\n  x509:\n    clientCAFile: {ca}\nauthorization:\n  mode: Webhook\ntlsCertFile: {crt}\ntlsPrivateKeyFile: {key}\ncgroupDriver: systemd\nclusterDNS: [10.96.0.10]\nclusterDomain: cluster.local\ncontainerRuntimeEndpoint: {runtime}\nnodeStatusUpdateFrequency: 1s\nrotateCertificates: false\n",
            ca = env.pki.p("pki/ca.crt"),
        ),
    );
    let args = vec![
        format!("--config={cfg}"),
        format!("--kubeconfig={kubelet_conf}"),
        "--hostname-override=node1".into(),
        format!("--node-ip={IP}"),
    ];
    let mut kubelet = Proc::start(&env.bin("kubelet", V35), &args, &env.path("kubelet.log"));
    let admin = env.path("admin-old.conf").to_string_lossy().into_owned();
    let registered = wait_for(Duration::from_secs(30), || {
        (k.run_as(&admin, &["get", "--raw", "/api/v1/nodes/node1"]).0 == 0).then_some(())
    });
    assert!(
        registered.is_some() && kubelet.exited().is_none(),
        "node1 never registered:\n{}",
        kubelet.log_text()
    );
    let kubelet_url = format!("https://{IP}:{port}");
    for (name, ca, trusted) in [("old", old, true), ("new", &new, true), ("other", &other, false)] {
        let (c, key) =
            ca.leaf("kube-apiserver-kubelet-client", &["kubeadm:cluster-admins"], &[Eku::ClientAuth], &[]);
        let conf =
            write(&format!("to-kubelet-{name}.conf"), &raw_kubeconfig(&kubelet_url, Some(&bundle), &c, &key));
        let (code, out, err) = k.run_as(&conf, &["get", "--raw", "/pods"]);
        if trusted {
            assert!(
                code == 0 && out.contains("PodList"),
                "kubelet, client of the {name} CA: {code}\n{out}{err}"
            );
        } else {
            assert!(code != 0 && err.contains(UNAUTHORIZED), "kubelet, a third CA's client: {code}\n{err}");
        }
    }

    // The controller-manager: a bundle as its CSR signer is refused like the real one does.
    let cm_bin = env.bin("kube-controller-manager", V35);
    let cm_conf = write("controller-manager.conf", &{
        let (c, key) = old.leaf("system:kube-controller-manager", &[], &[Eku::ClientAuth], &[]);
        pki::kubeconfig(&server, &bundle, &c, &key, "system:kube-controller-manager")
    });
    let cm_port = free_port(IP);
    let cm_args = |signer: &str, key: &str| {
        vec![
            format!("--kubeconfig={cm_conf}"),
            format!("--authentication-kubeconfig={cm_conf}"),
            format!("--authorization-kubeconfig={cm_conf}"),
            format!("--bind-address={IP}"),
            format!("--secure-port={cm_port}"),
            format!("--client-ca-file={}", env.pki.p("pki/ca.crt")),
            format!("--requestheader-client-ca-file={}", env.pki.p("pki/front-proxy-ca.crt")),
            format!("--root-ca-file={}", env.pki.p("pki/ca.crt")),
            format!("--cluster-signing-cert-file={signer}"),
            format!("--cluster-signing-key-file={key}"),
            format!("--service-account-private-key-file={}", env.pki.p("pki/sa.key")),
            "--service-cluster-ip-range=10.96.0.0/12".into(),
            "--use-service-account-credentials=true".into(),
            "--leader-elect=true".into(),
        ]
    };
    let new_key = write("pki/ca-new.key", &new.key_pem);
    let (code, _, err) = run(&cm_bin, &cm_args(&env.pki.p("pki/ca.crt"), &new_key), Duration::from_secs(30));
    assert_eq!(code, 1, "a CA bundle as --cluster-signing-cert-file must be refused:\n{err}");
    assert!(err.contains("expected 1 certificate, found 2"), "{err}");
    // With the new CA alone as its signer, it starts; its secure port authenticates clients against the
    // bundle of --client-ca-file.
    let signer = write("pki/ca-signer.crt", &new.cert_pem);
    let mut cm = Proc::start(&cm_bin, &cm_args(&signer, &new_key), &env.path("controller-manager.log"));
    let up = wait_for(Duration::from_secs(20), || {
        (cm.exited().is_some() || bins::listening(IP, cm_port)).then_some(())
    });
    assert!(up.is_some() && cm.exited().is_none(), "controller-manager:\n{}", cm.log_text());
    let cm_url = format!("https://{IP}:{cm_port}");
    for (name, ca, trusted) in [("old", old, true), ("new", &new, true), ("other", &other, false)] {
        let (c, key) = ca.leaf("prober", &[], &[Eku::ClientAuth], &[]);
        let conf = write(&format!("to-cm-{name}.conf"), &raw_kubeconfig(&cm_url, None, &c, &key));
        let (code, out, err) = k.run_as(&conf, &["get", "--raw", "/healthz"]);
        if trusted {
            assert_eq!((code, out.trim()), (0, "ok"), "controller-manager, client of the {name} CA:\n{err}");
        } else {
            assert!(
                code != 0 && err.contains(UNAUTHORIZED),
                "controller-manager, a third CA's client: {code}\n{err}"
            );
        }
    }
    assert!(cm.exited().is_none(), "controller-manager:\n{}", cm.log_text());
    assert!(api.exited().is_none(), "apiserver:\n{}", api.log_text());
}
