//! Encryption at rest end to end on loopback: the apiserver double started with the EncryptionConfiguration
//! kubeforge renders, the real etcd and the real kubectl. A Secret created through the API is stored
//! encrypted (read raw with the real etcdctl) and read back in the clear through the API; a key rotation's
//! middle step still reads it; a configuration without its key makes it unreadable (HTTP 500), and a bad
//! configuration stops the apiserver. `rotate encryption-key`'s rewrite script, run with the real kubectl
//! against the double, stores every Secret again with the writing key, as the census read from etcd shows.

#[path = "support/bins.rs"]
mod bins;
#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/kubectl.rs"]
mod kubectl;
#[path = "support/pki.rs"]
mod pki;

use std::{process::Command, time::Duration};

use base64::Engine;
use cluster::{Env, V35};
use kubectl::Kubectl;
use kubeforge::at_rest::{EncryptionKey, Keys, Provider, Rotation, Step};

const PLAINTEXT: &str = "hunter2-the-plaintext";

/// The raw value of `key` in etcd, through the real etcdctl with the apiserver's etcd client certificate.
fn etcd_raw(env: &Env, url: &str, key: &str) -> Vec<u8> {
    let p = |r: &str| env.pki.p(r);
    let out = Command::new(cluster::which("etcdctl"))
        .env("ETCDCTL_API", "3")
        .args([
            &format!("--endpoints={url}"),
            &format!("--cacert={}", p("pki/etcd/ca.crt")),
            &format!("--cert={}", p("pki/apiserver-etcd-client.crt")),
            &format!("--key={}", p("pki/apiserver-etcd-client.key")),
            "get",
            key,
            "--print-value-only",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "etcdctl: {}", String::from_utf8_lossy(&out.stderr));
    let mut v = out.stdout;
    if v.last() == Some(&b'\n') {
        v.pop(); // etcdctl ends the value with a newline of its own
    }
    v
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn secrets_are_stored_with_the_configuration_kubeforge_renders() {
    let env = Env::new("127.0.0.5");
    let (_etcd, url) = env.start_etcd();
    let b64 = base64::engine::general_purpose::STANDARD;
    let new_key = EncryptionKey::first(Provider::Secretbox, b64.encode([0x5a; 32]));
    let old_key = EncryptionKey::first(Provider::Aescbc, b64.encode([0xa5; 32]));
    let write = |name: &str, text: &str| {
        let p = env.path(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    };
    let mut flags = env.apiserver_flags(&url);
    let start = |flags: &std::collections::BTreeMap<String, String>, log: &str| {
        let mut api = env.start_apiserver(V35, flags, log);
        assert!(api.exited().is_none(), "apiserver exited:\n{}", api.log_text());
        api
    };
    let k = Kubectl {
        kubeconfig: env.pki.p("admin.conf"),
        cache: env.path("kubectl-cache").to_string_lossy().into_owned(),
    };
    // `kubectl create secret` speaks protobuf, which the double does not: the objects go in as manifests.
    let create = |kind: &str, name: &str, data: &str| {
        let file = write(
            &format!("{name}.yaml"),
            &format!(
                "apiVersion: v1\nkind: {kind}\nmetadata: {{name: {name}, namespace: default}}\n{data}\n"
            ),
        );
        k.ok(&["create", "-f", &file]);
    };
    // (`data`, not `stringData`: the double does not turn one into the other as the real apiserver does.)
    let secret =
        |name: &str| create("Secret", name, &format!("data: {{password: {}}}", b64.encode(PLAINTEXT)));

    // 1. A cluster made before secretbox: kubeforge's aescbc configuration.
    flags.insert(
        "encryption-provider-config".into(),
        write("enc-aescbc.yaml", &kubeforge::render::encryption_config(&old_key.clone().into())),
    );
    let api = start(&flags, "apiserver-1.log");
    secret("old");
    let raw = etcd_raw(&env, &url, "/registry/secrets/default/old");
    assert!(raw.starts_with(b"k8s:enc:aescbc:v1:kubeforge-1:"), "{}", String::from_utf8_lossy(&raw));
    drop(api);

    // 2. kubeforge's configuration of a new cluster: secretbox. New Secrets are written with it.
    let rendered = kubeforge::render::encryption_config(&new_key.clone().into());
    flags.insert("encryption-provider-config".into(), write("enc-secretbox.yaml", &rendered));
    let api = start(&flags, "apiserver-2.log");
    secret("s1");
    let raw = etcd_raw(&env, &url, "/registry/secrets/default/s1");
    assert!(raw.starts_with(b"k8s:enc:secretbox:v1:kubeforge-1:"), "{}", String::from_utf8_lossy(&raw));
    assert!(!contains(&raw, PLAINTEXT.as_bytes()), "the plaintext is in etcd");
    assert!(!contains(&raw, b64.encode(PLAINTEXT).as_bytes()), "the Secret's base64 data is in etcd");
    assert!(!contains(&raw, b"\"kind\""), "no JSON in the clear");
    let read = k.ok(&["get", "secret", "s1", "-o", "jsonpath={.data.password}"]);
    assert_eq!(b64.decode(read.trim()).unwrap(), PLAINTEXT.as_bytes(), "readable through the API");
    // Objects that are not Secrets stay plain JSON, as the configuration lists only secrets.
    create("ConfigMap", "c1", "data: {k: v}");
    assert!(etcd_raw(&env, &url, "/registry/configmaps/default/c1").starts_with(b"{"));
    // The old Secret, written with a key this configuration does not have: an error for that object only.
    let (code, _, err) = k.run(&["get", "secret", "old"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("Internal error occurred")
            && err.contains("identity transformer tried to read encrypted data"),
        "{err}"
    );
    let (code, _, err) = k.run(&["get", "secrets"]);
    assert_ne!(code, 0, "a list holding an unreadable Secret fails too: {err}");
    drop(api);

    // 3. A rotation's middle step (secretbox writes, the aescbc key still reads): every Secret is readable.
    let both = rendered.replace(
        "  - identity: {}",
        &format!(
            "  - aescbc:\n      keys:\n      - name: kubeforge-1\n        secret: {}\n  - identity: {{}}",
            old_key.secret
        ),
    );
    assert!(both.contains("aescbc"), "{both}");
    flags.insert("encryption-provider-config".into(), write("enc-both.yaml", &both));
    let api = start(&flags, "apiserver-3.log");
    let read = k.ok(&["get", "secret", "old", "-o", "jsonpath={.data.password}"]);
    assert_eq!(b64.decode(read.trim()).unwrap(), PLAINTEXT.as_bytes());
    assert_eq!(k.json(&["get", "secrets"])["items"].as_array().unwrap().len(), 2);
    drop(api);

    // 4. A configuration the apiserver cannot load stops it, naming the field; nothing is served.
    let short = rendered.replace(&new_key.secret, &b64.encode([1u8; 16]));
    flags.insert("encryption-provider-config".into(), write("enc-short.yaml", &short));
    let (code, _, err) =
        bins::run(&env.bin("kube-apiserver", V35), &cluster::to_args(&flags), Duration::from_secs(30));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("secret is not of the expected length, got 16, expected one of [32]"), "{err}");
    assert!(!err.contains(&new_key.secret), "no key in the message");
}

/// All values under `/registry/secrets/`, counted per key by `rotate encryption-key`'s own census.
fn census(env: &Env, url: &str) -> kubeforge::rotate::Census {
    let p = |r: &str| env.pki.p(r);
    let out = Command::new(cluster::which("etcdctl"))
        .env("ETCDCTL_API", "3")
        .args([
            &format!("--endpoints={url}"),
            &format!("--cacert={}", p("pki/etcd/ca.crt")),
            &format!("--cert={}", p("pki/apiserver-etcd-client.crt")),
            &format!("--key={}", p("pki/apiserver-etcd-client.key")),
            "get",
            "/registry/secrets/",
            "--prefix",
            "-w",
            "json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "etcdctl: {}", String::from_utf8_lossy(&out.stderr));
    kubeforge::rotate::parse_census(&String::from_utf8_lossy(&out.stdout)).unwrap()
}

#[test]
fn the_rotations_rewrite_stores_every_secret_again_with_the_writing_key() {
    // secretbox → secretbox (both keys in one provider entry) and aescbc → secretbox (two providers).
    rotation_through_the_double("127.0.0.6", Provider::Secretbox);
    rotation_through_the_double("127.0.0.7", Provider::Aescbc);
}

fn rotation_through_the_double(ip: &str, first: Provider) {
    let env = Env::new(ip);
    let (_etcd, url) = env.start_etcd();
    let b64 = base64::engine::general_purpose::STANDARD;
    let k1 = EncryptionKey::first(first, b64.encode([0x11; 32]));
    let old_label = format!("{}:kubeforge-1", first.name());
    let k2 = EncryptionKey {
        name: "kubeforge-2".into(),
        ..EncryptionKey::first(Provider::Secretbox, b64.encode([0x22; 32]))
    };
    let config = |name: &str, keys: &Keys| {
        let p = env.path(name);
        std::fs::write(&p, kubeforge::render::encryption_config(keys)).unwrap();
        p.to_string_lossy().into_owned()
    };
    let at = |step: Step| Keys {
        current: k1.clone(),
        rotation: Some(Rotation { step, old: k1.clone(), new: k2.clone() }),
    };
    let mut flags = env.apiserver_flags(&url);
    let start = |flags: &std::collections::BTreeMap<String, String>, log: &str| {
        let mut api = env.start_apiserver(V35, flags, log);
        assert!(api.exited().is_none(), "apiserver exited:\n{}", api.log_text());
        api
    };
    let kubeconfig = env.pki.p("admin.conf");
    let k = Kubectl {
        kubeconfig: kubeconfig.clone(),
        cache: env.path("kubectl-cache").to_string_lossy().into_owned(),
    };
    flags.insert("encryption-provider-config".into(), config("enc-1.yaml", &k1.clone().into()));
    let api = start(&flags, "apiserver-1.log");
    for (ns, name) in [("default", "a"), ("default", "b"), ("kube-system", "c")] {
        let file = env.path(&format!("{name}.yaml"));
        std::fs::write(
            &file,
            format!(
                "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\ndata: {{password: {}}}\n",
                b64.encode(PLAINTEXT)
            ),
        )
        .unwrap();
        k.ok(&["create", "-f", &file.to_string_lossy()]);
    }
    let before = census(&env, &url);
    assert_eq!(before.summary(), format!("{old_label}: 3"));
    // As upstream: an update that changes nothing is not written when the value is current.
    let rv = |name: &str, ns: &str| {
        k.ok(&["get", "secret", name, "-n", ns, "-o", "jsonpath={.metadata.resourceVersion}"])
    };
    let unchanged = rv("a", "default");
    let json = k.ok(&["get", "secret", "a", "-o", "json"]);
    let file = env.path("a.json");
    std::fs::write(&file, json).unwrap();
    k.ok(&["replace", "-f", &file.to_string_lossy()]);
    assert_eq!(rv("a", "default"), unchanged, "a current value is not written again");
    drop(api);

    // read-both, then write-new: the old values still read; the rewrite stores them with the new key.
    flags.insert("encryption-provider-config".into(), config("enc-2.yaml", &at(Step::ReadBoth)));
    let api = start(&flags, "apiserver-2.log");
    assert_eq!(k.json(&["get", "secrets", "-A"])["items"].as_array().unwrap().len(), 3);
    drop(api);
    flags.insert("encryption-provider-config".into(), config("enc-3.yaml", &at(Step::WriteNew)));
    let api = start(&flags, "apiserver-3.log");
    let script = kubeforge::rotate::REWRITE.replace(
        "kubectl --kubeconfig /etc/kubernetes/admin.conf",
        &format!("{} --kubeconfig {kubeconfig}", cluster::kubectl().display()),
    );
    assert_ne!(script, kubeforge::rotate::REWRITE, "the script runs kubectl with the admin kubeconfig");
    let mut written = 0;
    for ns in ["default", "kube-system", "kube-public"] {
        let out = Command::new("sh").args(["-c", &script, "sh", ns, "secrets"]).output().unwrap();
        assert!(out.status.success(), "{ns}: {}", String::from_utf8_lossy(&out.stderr));
        written += String::from_utf8_lossy(&out.stdout).trim().parse::<usize>().unwrap();
    }
    assert_eq!(written, 3, "kube-public holds none: 0, not a failure");
    let after = census(&env, &url);
    assert_eq!(after.summary(), "secretbox:kubeforge-2: 3");
    assert_ne!(rv("a", "default"), unchanged, "a stale value is written again");
    assert!(after.not_with(&k2).is_empty());
    drop(api);

    // drop-old: the new key alone reads every Secret.
    flags.insert("encryption-provider-config".into(), config("enc-4.yaml", &at(Step::DropOld)));
    let _api = start(&flags, "apiserver-4.log");
    let read = k.ok(&["get", "secret", "c", "-n", "kube-system", "-o", "jsonpath={.data.password}"]);
    assert_eq!(b64.decode(read.trim()).unwrap(), PLAINTEXT.as_bytes());
}
