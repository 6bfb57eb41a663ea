//! The PKI, end to end through the binary and checked with real tools: `openssl verify` for every
//! certificate, parsed fields against the kubeadm table (snapshot of summaries, never raw PEM), exact
//! re-issue when an address changes, file modes, a real mutual-TLS handshake, real `kubectl` on every
//! kubeconfig, and the client bundle's env scripts in real bash and fish.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn kubeforge(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kubeforge")).args(args).current_dir(dir).output().expect("run kubeforge")
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const INVENTORY: &str = "cluster:
  name: demo
  kubernetesVersion: v1.35.7
  certificates: {keyAlgorithm: KEYALG, extraSANs: [api.demo.example]}
hosts:
  - {name: cp1, address: 10.20.0.11, roles: [control-plane, etcd]}
  - {name: cp2, address: 10.20.0.12, roles: [control-plane, etcd]}
  - {name: cp3, address: 10.20.0.13, roles: [control-plane, etcd]}
  - {name: w1, address: WORKER_IP, roles: [worker]}
";

fn setup(alg: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("inv.yaml");
    std::fs::write(&inv, INVENTORY.replace("KEYALG", alg).replace("WORKER_IP", "10.20.0.21")).unwrap();
    (dir, inv)
}

fn kubectl() -> String {
    std::env::var("KUBEFORGE_TEST_KUBECTL").unwrap_or_else(|_| "kubectl".into())
}

fn ca_of(name: &str) -> &'static str {
    if name.starts_with("etcd/") || name == "apiserver-etcd-client" {
        "etcd/ca.crt"
    } else if name == "front-proxy-client" {
        "front-proxy-ca.crt"
    } else {
        "ca.crt"
    }
}

fn leaves(root: &Path) -> Vec<String> {
    let mut v = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "crt") {
                let rel = p.strip_prefix(root).unwrap().with_extension("").to_string_lossy().into_owned();
                if !rel.ends_with("ca") {
                    v.push(rel);
                }
            }
        }
    }
    v.sort();
    v
}

/// The fields that matter, as openssl prints them: subject, issuer, key usage, EKU, SANs.
fn summary(path: &Path) -> String {
    let out = Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-subject",
            "-issuer",
            "-ext",
            "keyUsage,extendedKeyUsage,subjectAltName,basicConstraints",
            "-in",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_certificate_verifies_and_matches_the_kubeadm_table() {
    let (dir, inv) = setup("ecdsa-p256");
    ok(kubeforge(dir.path(), &["certs", "generate", "-i", inv.to_str().unwrap()]));
    let root = dir.path().join("pki/demo");
    let names = leaves(&root);
    assert_eq!(names.len(), 10 + 2 * 3 + 2 * 4, "{names:?}");
    let mut all = String::new();
    for n in &names {
        let out = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(root.join(ca_of(n)))
            .arg(root.join(format!("{n}.crt")))
            .output()
            .unwrap();
        assert!(out.status.success(), "{n}: {}", String::from_utf8_lossy(&out.stdout));
        all.push_str(&format!("== {n}\n{}\n", summary(&root.join(format!("{n}.crt")))));
    }
    for ca in ["ca", "etcd/ca", "front-proxy-ca"] {
        all.push_str(&format!("== {ca}\n{}\n", summary(&root.join(format!("{ca}.crt")))));
    }
    insta::assert_snapshot!("pki_summaries", all);
}

#[test]
fn keys_are_private_and_a_second_run_reuses_everything() {
    let (dir, inv) = setup("ecdsa-p256");
    let inv = inv.to_str().unwrap();
    ok(kubeforge(dir.path(), &["certs", "generate", "-i", inv]));
    let root = dir.path().join("pki/demo");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for k in [
        "ca.key",
        "sa.key",
        "etcd/ca.key",
        "apiserver.key",
        "nodes/w1/kubelet-client.key",
        "admin.conf",
        "nodes/w1/kubelet.conf",
    ] {
        assert_eq!(mode(&root.join(k)), 0o600, "{k}");
    }
    for d in ["", "etcd", "nodes", "nodes/w1", "etcd/cp1"] {
        assert_eq!(mode(&root.join(d)), 0o700, "dir {d}");
    }
    let before: Vec<Vec<u8>> =
        leaves(&root).iter().map(|n| std::fs::read(root.join(format!("{n}.crt"))).unwrap()).collect();
    let out = ok(kubeforge(dir.path(), &["certs", "generate", "-i", inv]));
    assert!(out.contains("0 issued, 24 reused, 0 CA/key pair(s) created"), "{out}");
    let after: Vec<Vec<u8>> =
        leaves(&root).iter().map(|n| std::fs::read(root.join(format!("{n}.crt"))).unwrap()).collect();
    assert_eq!(before, after);
}

#[test]
fn a_changed_address_reissues_exactly_the_certificates_that_carry_it() {
    let (dir, inv) = setup("ecdsa-p256");
    ok(kubeforge(dir.path(), &["certs", "generate", "-i", inv.to_str().unwrap()]));
    let root = dir.path().join("pki/demo");
    let ca_before = std::fs::read(root.join("ca.crt")).unwrap();
    let ca_key_before = std::fs::read(root.join("ca.key")).unwrap();
    // The worker moves to a new address, and cp1 gets a separate internal address.
    let text = INVENTORY.replace("KEYALG", "ecdsa-p256").replace("WORKER_IP", "10.20.0.22").replace(
        "{name: cp1, address: 10.20.0.11,",
        "{name: cp1, address: 10.20.0.11, internalAddress: 10.30.0.11,",
    );
    std::fs::write(&inv, text).unwrap();
    let out = ok(kubeforge(dir.path(), &["certs", "generate", "-i", inv.to_str().unwrap()]));
    let issued: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("issued    "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    assert_eq!(
        issued,
        [
            "apiserver",
            "etcd/cp1/server",
            "etcd/cp1/peer",
            "nodes/cp1/kubelet-serving",
            "nodes/w1/kubelet-serving"
        ],
        "{out}"
    );
    assert!(out.contains("SANs changed (+[10.20.0.22] -[10.20.0.21])"), "{out}");
    assert_eq!(std::fs::read(root.join("ca.crt")).unwrap(), ca_before, "the CA is never touched");
    assert_eq!(std::fs::read(root.join("ca.key")).unwrap(), ca_key_before);
}

#[test]
fn rsa_keys_are_issued_on_request_and_renew_keeps_the_key() {
    let (dir, inv) = setup("rsa-2048");
    let inv = inv.to_str().unwrap();
    ok(kubeforge(dir.path(), &["certs", "generate", "-i", inv]));
    let root = dir.path().join("pki/demo");
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(root.join("apiserver.crt"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("Public-Key: (2048 bit)"));
    let serial = |p: &Path| {
        String::from_utf8_lossy(
            &Command::new("openssl")
                .args(["x509", "-noout", "-serial", "-in"])
                .arg(p)
                .output()
                .unwrap()
                .stdout,
        )
        .into_owned()
    };
    let s1 = serial(&root.join("apiserver.crt"));
    let key1 = std::fs::read(root.join("apiserver.key")).unwrap();
    let out = ok(kubeforge(dir.path(), &["certs", "renew", "apiserver", "-i", inv]));
    assert!(out.contains("renewed   apiserver"));
    assert_ne!(serial(&root.join("apiserver.crt")), s1);
    assert_eq!(std::fs::read(root.join("apiserver.key")).unwrap(), key1);
    let bad = kubeforge(dir.path(), &["certs", "renew", "nope", "-i", inv]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no certificate named `nope`"));
    let table = ok(kubeforge(dir.path(), &["certs", "check-expiration", "-i", inv]));
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("apiserver ") && l.contains("kubernetes") && l.contains("rsa-2048")),
        "{table}"
    );
    let warn = kubeforge(dir.path(), &["certs", "check-expiration", "-i", inv, "--warn-within", "400d"]);
    assert_eq!(warn.status.code(), Some(1), "every leaf expires within 400 days");
    let doc = kubeforge(
        dir.path(),
        &["certs", "check-expiration", "-i", inv, "--warn-within", "400d", "-o", "json"],
    );
    assert_eq!(doc.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&doc.stdout).expect("a CertificateExpiration document");
    assert_eq!((v["kind"].as_str(), v["problems"].as_bool()), (Some("CertificateExpiration"), Some(true)));
    let certs = v["certificates"].as_array().unwrap();
    let api = certs.iter().find(|c| c["name"] == "apiserver").expect("apiserver listed");
    assert_eq!(
        (api["withinWarning"].as_bool(), api["keyAlgorithm"].as_str()),
        (Some(true), Some("rsa-2048"))
    );
    let ca = certs.iter().find(|c| c["name"] == "ca").expect("ca listed");
    assert_eq!(ca["withinWarning"], false, "a ten-year CA is not within 400 days");
}

#[test]
fn real_kubectl_accepts_every_kubeconfig() {
    let (dir, inv) = setup("ecdsa-p256");
    ok(kubeforge(dir.path(), &["certs", "generate", "-i", inv.to_str().unwrap()]));
    let root = dir.path().join("pki/demo");
    for (f, user, server) in [
        ("admin.conf", "kubernetes-admin", "https://10.20.0.11:6443"),
        ("super-admin.conf", "kubernetes-super-admin", "https://10.20.0.11:6443"),
        ("controller-manager.conf", "system:kube-controller-manager", "https://10.20.0.11:6443"),
        ("scheduler.conf", "system:kube-scheduler", "https://10.20.0.11:6443"),
        ("kube-proxy.conf", "system:kube-proxy", "https://127.0.0.1:7443"),
        ("nodes/w1/kubelet.conf", "system:node:w1", "https://127.0.0.1:7443"),
    ] {
        let out = Command::new(kubectl())
            .args([
                "config",
                "view",
                "--minify",
                "--raw",
                "-o",
                "jsonpath={.users[0].name} {.clusters[0].cluster.server}",
                "--kubeconfig",
            ])
            .arg(root.join(f))
            .output()
            .expect("kubectl on PATH or KUBEFORGE_TEST_KUBECTL");
        assert!(out.status.success(), "{f}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{user} {server}"), "{f}");
    }
}

#[tokio::test]
async fn a_real_tls_handshake_accepts_the_admin_and_rejects_another_ca() {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::sync::Arc;
    let (dir, inv) = setup("ecdsa-p256");
    ok(kubeforge(dir.path(), &["certs", "generate", "-i", inv.to_str().unwrap()]));
    let (other, other_inv) = setup("ecdsa-p256");
    ok(kubeforge(other.path(), &["certs", "generate", "-i", other_inv.to_str().unwrap()]));
    let root = dir.path().join("pki/demo");
    let certs = |p: &Path| -> Vec<CertificateDer<'static>> {
        rustls_pemfile::certs(&mut std::io::BufReader::new(std::fs::File::open(p).unwrap()))
            .map(|c| c.unwrap())
            .collect()
    };
    let key = |p: &Path| -> PrivateKeyDer<'static> {
        rustls_pemfile::private_key(&mut std::io::BufReader::new(std::fs::File::open(p).unwrap()))
            .unwrap()
            .unwrap()
    };
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certs(&root.join("ca.crt")).remove(0)).unwrap();
    let roots = Arc::new(roots);
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(&root.join("apiserver.crt")), key(&root.join("apiserver.key")))
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let acc = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acc.accept(s).await {
                    use tokio::io::AsyncWriteExt;
                    let _ = tls.write_all(b"ok").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    let connect = |client_root: PathBuf, name: &'static str| {
        let (roots, provider) = (roots.clone(), provider.clone());
        async move {
            let cfg = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_client_auth_cert(
                    certs(&client_root.join(format!("{name}.crt"))),
                    key(&client_root.join(format!("{name}.key"))),
                )
                .unwrap();
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            // The apiserver certificate must be valid for the first Service IP, as in-cluster clients dial it.
            let sni = rustls::pki_types::ServerName::try_from("10.96.0.1").unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(sni, tcp).await?;
            use tokio::io::AsyncReadExt;
            let mut buf = Vec::new();
            tls.read_to_end(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        }
    };
    assert_eq!(connect(root.clone(), "admin").await.unwrap(), b"ok");
    let other_root = other.path().join("pki/demo");
    assert!(
        connect(other_root, "admin").await.is_err(),
        "a client certificate from another CA must be refused"
    );
}

#[test]
fn the_client_bundle_works_in_bash_and_fish() {
    let (dir, inv) = setup("ecdsa-p256");
    let inv = inv.to_str().unwrap();
    ok(kubeforge(dir.path(), &["certs", "generate", "-i", inv]));
    ok(kubeforge(
        dir.path(),
        &[
            "kubeconfig",
            "bundle",
            "-i",
            inv,
            "--user",
            "alice",
            "--group",
            "dev",
            "--ttl",
            "12h",
            "--out",
            "alice.tar.gz",
        ],
    ));
    let out = Command::new("tar").args(["xzf", "alice.tar.gz"]).current_dir(dir.path()).output().unwrap();
    assert!(out.status.success());
    let b = dir.path().join("demo-alice");
    for f in [
        "README.txt",
        "kubeconfig",
        "ca.pem",
        "alice.crt",
        "alice.key",
        "env.sh",
        "env.fish",
        "env.ps1",
        "env.cmd",
    ] {
        assert!(b.join(f).is_file(), "{f} missing");
    }
    assert_eq!(std::fs::metadata(b.join("alice.key")).unwrap().permissions().mode() & 0o777, 0o600);
    let subj = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-in"])
        .arg(b.join("alice.crt"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&subj.stdout).trim(), "subject=O = dev, CN = alice");
    let check = format!("{} config view --minify -o jsonpath='{{.users[0].name}}'", kubectl());
    // Sourced from another directory: the scripts must find the bundle relative to themselves.
    for (shell, script) in [("bash", "env.sh"), ("fish", "env.fish")] {
        let cmd = format!("source {}/{script}; and echo $KUBECONFIG; and {check}", b.display())
            .replace("; and", if shell == "bash" { " &&" } else { "; and" });
        let out = Command::new(shell)
            .arg("-c")
            .arg(&cmd)
            .current_dir("/")
            .output()
            .unwrap_or_else(|e| panic!("{shell}: {e}"));
        assert!(out.status.success(), "{shell}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with(&format!("{}/kubeconfig\n", b.display())), "{shell}: {text}");
        assert!(text.ends_with("alice"), "{shell}: {text}");
    }
    let ledger: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("pki/demo/ledger.json")).unwrap()).unwrap();
    assert_eq!(ledger[0]["user"], "alice");
    assert_eq!(ledger[0]["groups"][0], "dev");
}

/// `kubeconfig admin --merge` into a kubeconfig that already holds another cluster, read back by the real
/// kubectl: both contexts are there, the other one stays current, the file is 0600, and a second merge
/// replaces its own entries instead of adding more.
#[test]
fn the_admin_kubeconfig_merges_into_an_existing_one_that_kubectl_reads() {
    let (dir, inv) = setup("ecdsa-p256");
    let inv = inv.to_str().unwrap();
    ok(kubeforge(dir.path(), &["certs", "generate", "-i", inv]));
    let printed = ok(kubeforge(dir.path(), &["kubeconfig", "admin", "-i", inv]));
    assert!(printed.contains("client-key-data"), "{printed}");
    let kc = dir.path().join("kube/config");
    std::fs::create_dir_all(kc.parent().unwrap()).unwrap();
    std::fs::write(
        &kc,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: other\n  cluster: {server: 'https://10.9.9.9:6443'}\n\
         users:\n- name: other-user\n  user: {token: secret}\ncontexts:\n- name: other\n  context: {cluster: other, user: other-user}\n\
         current-context: other\npreferences: {}\n",
    )
    .unwrap();
    let kc_s = kc.to_str().unwrap();
    for _ in 0..2 {
        let said = ok(kubeforge(dir.path(), &["kubeconfig", "admin", "-i", inv, "--merge", kc_s]));
        assert!(said.contains("context `demo-admin@demo` merged"), "{said}");
    }
    assert_eq!(std::fs::metadata(&kc).unwrap().permissions().mode() & 0o777, 0o600);
    let get = |args: &str| {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("{} --kubeconfig {kc_s} {args}", kubectl()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{args}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(
        get("config get-contexts -o name").split_whitespace().collect::<Vec<_>>(),
        ["demo-admin@demo", "other"]
    );
    assert_eq!(get("config current-context").trim(), "other");
    let users = get("config view -o jsonpath={.users[*].name}");
    let mut users: Vec<&str> = users.split_whitespace().collect();
    users.sort();
    assert_eq!(users, ["demo-admin", "other-user"], "one entry each, after two merges");
    // Written with --out: the same bytes as the store's, 0600.
    ok(kubeforge(dir.path(), &["kubeconfig", "admin", "-i", inv, "--out", "admin.conf"]));
    assert_eq!(std::fs::read_to_string(dir.path().join("admin.conf")).unwrap(), printed);
    assert_eq!(std::fs::metadata(dir.path().join("admin.conf")).unwrap().permissions().mode() & 0o777, 0o600);
}
