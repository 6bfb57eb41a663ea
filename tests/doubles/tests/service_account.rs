//! A service-account key rotation on loopback: the apiserver double started, at each step of `rotate
//! service-account-key`, with the `sa.key` and `sa.pub` kubeforge renders for that step
//! (`kubeforge::sa_key`), the real etcd and the real kubectl with a bearer token. A token the old key signed
//! is accepted before the rotation, during trust-both and sign-new, and refused (401) after drop-old; a token
//! the new key signed is refused before the rotation and accepted from trust-both on.

#[path = "support/bins.rs"]
mod bins;
#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/kubectl.rs"]
mod kubectl;
#[path = "support/pki.rs"]
mod pki;

use cluster::{Env, V35};
use kubectl::Kubectl;
use kubeforge::sa_key::{SaKeys, SaRotation, SaStep};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

#[test]
fn an_old_keys_token_is_accepted_until_drop_old_and_a_new_keys_token_from_trust_both_on() {
    let env = Env::new("127.0.0.6");
    let (_etcd, url) = env.start_etcd();
    let flags = env.apiserver_flags(&url);
    assert_eq!(flags["service-account-issuer"], ISSUER);
    let gen = || rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let (old, new) = (gen(), gen());
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let token = |k: &rcgen::KeyPair| {
        kubeforge_doubles::satoken::sign(&k.serialize_pem(), ISSUER, "default", "app", now - 10, 3607)
            .unwrap()
    };
    let k = Kubectl {
        kubeconfig: env.pki.p("admin.conf"),
        cache: env.path("kubectl-cache").to_string_lossy().into_owned(),
    };
    let kubeconfig = |name: &str, t: &str| {
        let path = env.path(name);
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://{}:{}\n    certificate-authority: {}\nusers:\n- name: u\n  user:\n    token: {t}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\n",
                env.ip,
                env.api_port,
                env.pki.p("pki/ca.crt")
            ),
        )
        .unwrap();
        path.to_string_lossy().into_owned()
    };
    let (old_conf, new_conf) = (kubeconfig("old.conf", &token(&old)), kubeconfig("new.conf", &token(&new)));
    // Accepted: authenticated (the discovery path is open to every authenticated user); refused: 401.
    let accepted = |conf: &str| -> bool {
        let (code, _, err) = k.run_as(conf, &["get", "--raw", "/api"]);
        assert!(code == 0 || err.contains("Unauthorized"), "neither accepted nor 401: {err}");
        code == 0
    };
    let before = SaKeys {
        key: old.serialize_pem().into_bytes(),
        public: old.public_key_pem().into_bytes(),
        rotation: None,
    };
    let at = |step| SaKeys {
        rotation: Some(SaRotation {
            step,
            old: old.serialize_pem(),
            new: new.serialize_pem(),
            signing_new_since: None,
            old_tokens_valid_until: None,
        }),
        ..before.clone()
    };
    for (name, keys, old_ok, new_ok) in [
        ("before", before.clone(), true, false),
        ("trust-both", at(SaStep::TrustBoth), true, true),
        ("sign-new", at(SaStep::SignNew), true, true),
        ("drop-old", at(SaStep::DropOld), false, true),
    ] {
        std::fs::write(env.pki.p("pki/sa.key"), keys.signing_key()).unwrap();
        std::fs::write(env.pki.p("pki/sa.pub"), keys.verifying_keys().unwrap()).unwrap();
        let mut api = env.start_apiserver(V35, &flags, &format!("apiserver-{name}.log"));
        assert!(api.exited().is_none(), "{name}: the apiserver did not start:\n{}", api.log_text());
        let up = bins::wait_for(std::time::Duration::from_secs(20), || {
            (k.run(&["get", "--raw", "/readyz"]).0 == 0).then_some(())
        });
        assert!(up.is_some(), "{name}: not ready:\n{}", api.log_text());
        assert_eq!(
            (accepted(&old_conf), accepted(&new_conf)),
            (old_ok, new_ok),
            "{name}: (old key's token, new key's token) accepted\n{}",
            api.log_text()
        );
        drop(api);
        bins::wait_for(std::time::Duration::from_secs(10), || {
            (!bins::listening(&env.ip, env.api_port)).then_some(())
        });
    }
}
