//! Each double started with the flags and configs a correct installer writes, and with one thing wrong:
//! it must start in the first case and fail, with the real binary's kind of message, in the others.

#[path = "support/bins.rs"]
mod bins;
#[path = "support/cluster.rs"]
mod cluster;
#[path = "support/pki.rs"]
mod pki;

use std::time::Duration;

use bins::{run, s};
use cluster::{Env, V34, V35};

const QUICK: Duration = Duration::from_secs(20);

fn fails_with(env: &Env, component: &str, version: &str, args: &[String], needle: &str) {
    let (code, _out, err) = run(&env.bin(component, version), args, QUICK);
    assert_eq!(code, 1, "{component} {args:?} should exit 1; stderr:\n{err}");
    assert!(err.contains(needle), "{component}: expected {needle:?} in stderr:\n{err}");
}

#[test]
fn version_flags_and_configs() {
    let env = Env::new("127.0.0.1");
    for c in ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"] {
        for v in [V34, V35] {
            let (code, out, _) = run(&env.bin(c, v), &s(&["--version"]), QUICK);
            assert_eq!((code, out.trim()), (0, format!("Kubernetes {v}").as_str()), "{c} {v}");
        }
        // Unknown flag: usage, then the pflag error, exit 1.
        fails_with(&env, c, V35, &s(&["--no-such-flag=1"]), "Error: unknown flag: --no-such-flag");
    }
    // A flag removed in 1.35 is accepted (with a deprecation warning) by 1.34 only.
    let (code, _, err) =
        run(&env.bin("kubelet", V34), &s(&["--pod-infra-container-image=x", "--version"]), QUICK);
    assert_eq!(code, 0, "{err}");
    fails_with(
        &env,
        "kubelet",
        V35,
        &s(&["--pod-infra-container-image=x"]),
        "Error: unknown flag: --pod-infra-container-image",
    );
    // `_` is normalised to `-`; a bool takes only true/false; a value flag needs a value.
    fails_with(
        &env,
        "kube-apiserver",
        V35,
        &s(&["--secure_port=x"]),
        "invalid argument \"x\" for \"--secure-port\" flag",
    );
    fails_with(&env, "kube-apiserver", V35, &s(&["--anonymous-auth=maybe"]), "invalid argument \"maybe\"");
    fails_with(
        &env,
        "kube-apiserver",
        V35,
        &s(&["--etcd-servers"]),
        "flag needs an argument: --etcd-servers",
    );
    fails_with(
        &env,
        "kube-apiserver",
        V35,
        &s(&[
            "--authorization-mode=Node,Rbac",
            "--etcd-servers=https://127.0.0.1:1",
            "--client-ca-file=x",
            "--tls-cert-file=x",
            "--tls-private-key-file=x",
            "--service-cluster-ip-range=10.96.0.0/12",
            "--service-account-issuer=x",
            "--service-account-key-file=x",
            "--service-account-signing-key-file=x",
        ]),
        "authorization-mode \"Rbac\" is not a valid mode",
    );
    // Required flags.
    fails_with(
        &env,
        "kube-apiserver",
        V35,
        &s(&["--secure-port", "6443"]),
        "--etcd-servers must be specified",
    );

    // Config files: scheduler strict, kubelet/kube-proxy lenient on unknown fields, all strict on types.
    let write = |name: &str, text: &str| {
        let p = env.path(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    };
    let sched_bad = write(
        "sched.yaml",
        "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nclientConnection:\n  kubeconfig: /nonexistent\nleaderElection:\n  leaderElect: false\nnoSuchField: 1\n",
    );
    fails_with(
        &env,
        "kube-scheduler",
        V35,
        &[format!("--config={sched_bad}")],
        "strict decoding error: unknown field \"noSuchField\"",
    );
    let sched_kind = write(
        "sched2.yaml",
        "apiVersion: kubescheduler.config.k8s.io/v1beta3\nkind: KubeSchedulerConfiguration\n",
    );
    fails_with(
        &env,
        "kube-scheduler",
        V35,
        &[format!("--config={sched_kind}")],
        "no kind \"KubeSchedulerConfiguration\" is registered for version",
    );
    let kubelet_unknown = write(
        "kubelet-unknown.yaml",
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nnoSuchField: true\n",
    );
    let (code, _, err) = run(&env.bin("kubelet", V35), &[format!("--config={kubelet_unknown}")], QUICK);
    assert_eq!(code, 1);
    assert!(err.contains("Using lenient decoding as strict decoding failed"), "{err}");
    assert!(
        err.contains("--kubeconfig must be specified"),
        "lenient decoding must go on to the next check:\n{err}"
    );
    let kubelet_type = write(
        "kubelet-type.yaml",
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nport: \"ten\"\n",
    );
    fails_with(
        &env,
        "kubelet",
        V35,
        &[format!("--config={kubelet_type}")],
        "cannot unmarshal string into Go struct field .port of type int32",
    );
    let kubelet_dur = write(
        "kubelet-dur.yaml",
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\nnodeStatusUpdateFrequency: tenseconds\n",
    );
    fails_with(&env, "kubelet", V35, &[format!("--config={kubelet_dur}")], "time: invalid duration");
    // A 1.36-only field is unknown to 1.35 (lenient: warning).
    let kubelet_new = write(
        "kubelet-136.yaml",
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\ntlsCurvePreferences: [23]\n",
    );
    let (_, _, err) = run(&env.bin("kubelet", V35), &[format!("--config={kubelet_new}")], QUICK);
    assert!(
        err.contains("unknown field \\\"tlsCurvePreferences\\\"")
            || err.contains("unknown field \"tlsCurvePreferences\""),
        "{err}"
    );
    // kubelet serving cert must cover the node IP.
    env.pki.kubelet(&env.layout, "node9", "127.0.0.9");
    let kcfg = write(
        "kubelet-serving.yaml",
        &format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\naddress: 127.0.0.1\nport: 0\nhealthzPort: 0\nauthentication:\n  x509:\n    clientCAFile: {}\ntlsCertFile: {}\ntlsPrivateKeyFile: {}\n",
            env.pki.p("pki/ca.crt"),
            env.pki.p("kubelet-node9.crt"),
            env.pki.p("kubelet-node9.key")
        ),
    );
    fails_with(
        &env,
        "kubelet",
        V34,
        &[
            format!("--config={kcfg}"),
            format!("--kubeconfig={}", env.pki.p("kubelet-node9.conf")),
            "--node-ip=127.0.0.1".into(),
        ],
        "does not cover the node address 127.0.0.1",
    );
    let kubelet_cg = write(
        "kubelet-cg.yaml",
        "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\ncgroupDriver: system\n",
    );
    fails_with(
        &env,
        "kubelet",
        V35,
        &[format!("--config={kubelet_cg}")],
        "cgroupDriver (\"system\") must be one of",
    );
    fails_with(
        &env,
        "kubelet",
        V35,
        &s(&["--node-labels=node-role.kubernetes.io/control-plane=,node.kubernetes.io/exclude-from-external-load-balancers="]),
        "unknown 'kubernetes.io' or 'k8s.io' labels specified with --node-labels: [\"node-role.kubernetes.io/control-plane\"]",
    );
    let proxy_mode = write(
        "proxy-mode.yaml",
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: ipables\n",
    );
    fails_with(
        &env,
        "kube-proxy",
        V35,
        &[format!("--config={proxy_mode}")],
        "KubeProxyConfiguration.Mode: Invalid value",
    );
    let proxy_type = write(
        "proxy.yaml",
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nconntrack:\n  maxPerCore: many\n",
    );
    fails_with(
        &env,
        "kube-proxy",
        V35,
        &[format!("--config={proxy_type}")],
        "conntrack.maxPerCore of type int32",
    );
}

#[test]
fn apiserver_checks_certs_and_etcd() {
    let env = Env::new("127.0.0.2");
    let (_etcd, url) = env.start_etcd();
    let good = env.apiserver_flags(&url);
    let other = pki::Ca::new("some-other-ca");
    let write = |name: &str, text: &str| {
        let p = env.path(name);
        std::fs::write(&p, text).unwrap();
        p.to_string_lossy().into_owned()
    };
    let bin = env.bin("kube-apiserver", V35);
    let try_with = |changes: &[(&str, String)], needle: &str| {
        let mut flags = good.clone();
        for (k, v) in changes {
            flags.insert(k.to_string(), v.clone());
        }
        let (code, _, err) = run(&bin, &cluster::to_args(&flags), Duration::from_secs(30));
        assert_eq!(code, 1, "apiserver should refuse {changes:?}; stderr:\n{err}");
        assert!(err.contains(needle), "expected {needle:?} for {changes:?}:\n{err}");
    };
    // Serving cert without the first Service IP.
    let (c, k) = env.pki.ca.leaf(
        "kube-apiserver",
        &[],
        &[rcgen::ExtendedKeyUsagePurpose::ServerAuth],
        &[
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "127.0.0.2",
        ],
    );
    try_with(
        &[("tls-cert-file", write("nosvc.crt", &c)), ("tls-private-key-file", write("nosvc.key", &k))],
        "does not cover the first Service IP 10.96.0.1",
    );
    // Serving cert without the advertise address.
    let (c, k) = env.pki.ca.leaf(
        "kube-apiserver",
        &[],
        &[rcgen::ExtendedKeyUsagePurpose::ServerAuth],
        &[
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "10.96.0.1",
        ],
    );
    try_with(
        &[("tls-cert-file", write("noadv.crt", &c)), ("tls-private-key-file", write("noadv.key", &k))],
        "does not cover the advertise address 127.0.0.2",
    );
    // Serving cert from another CA.
    let (c, k) = other.leaf(
        "kube-apiserver",
        &[],
        &[rcgen::ExtendedKeyUsagePurpose::ServerAuth],
        &[
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            "10.96.0.1",
            "127.0.0.2",
        ],
    );
    try_with(
        &[("tls-cert-file", write("other.crt", &c)), ("tls-private-key-file", write("other.key", &k))],
        "x509: certificate signed by unknown authority",
    );
    // Key that does not belong to the cert.
    try_with(
        &[("tls-private-key-file", env.pki.p("pki/apiserver-kubelet-client.key"))],
        "tls: private key does not match public key",
    );
    // A client cert where a server cert is needed.
    try_with(
        &[
            ("tls-cert-file", env.pki.p("pki/apiserver-kubelet-client.crt")),
            ("tls-private-key-file", env.pki.p("pki/apiserver-kubelet-client.key")),
        ],
        "incompatible key usage",
    );
    // Wrong etcd client cert: signed by the cluster CA, not etcd-ca.
    try_with(
        &[
            ("etcd-certfile", env.pki.p("pki/apiserver-kubelet-client.crt")),
            ("etcd-keyfile", env.pki.p("pki/apiserver-kubelet-client.key")),
        ],
        "certificate signed by unknown authority",
    );
    // An etcd client cert that passes local checks (other CA given as etcd CA) but that etcd rejects.
    let (c, k) =
        other.leaf("kube-apiserver-etcd-client", &[], &[rcgen::ExtendedKeyUsagePurpose::ClientAuth], &[]);
    try_with(
        &[
            ("etcd-cafile", write("other-ca.crt", &other.cert_pem)),
            ("etcd-certfile", write("oe.crt", &c)),
            ("etcd-keyfile", write("oe.key", &k)),
        ],
        "failed to connect to etcd server",
    );
    // Missing file.
    try_with(&[("client-ca-file", "/nonexistent/ca.crt".into())], "no such file or directory");
    // SA signing key that does not pair with the verification key.
    try_with(
        &[("service-account-signing-key-file", env.pki.p("pki/apiserver.key"))],
        "does not match any key in --service-account-key-file",
    );
    // Missing required flag.
    let mut flags = good.clone();
    flags.remove("service-account-issuer");
    let (code, _, err) = run(&bin, &cluster::to_args(&flags), QUICK);
    assert_eq!(code, 1);
    assert!(err.contains("--service-account-issuer must be specified"), "{err}");

    // And the correct set starts and serves; /readyz is ok; anonymous only on health paths.
    let mut api = env.start_apiserver(V35, &good, "apiserver.log");
    assert!(api.exited().is_none(), "apiserver exited:\n{}", api.log_text());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        kubeforge_doubles::http::init_crypto();
        let ca = std::fs::read(env.pki.p("pki/ca.crt")).unwrap();
        let anon = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .build()
            .unwrap();
        let base = format!("https://127.0.0.2:{}", env.api_port);
        let r = anon.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let r = anon.get(format!("{base}/version")).send().await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(v["gitVersion"], V35);
        let r = anon.get(format!("{base}/api/v1/nodes")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 403, "anonymous must not list nodes");
    });

    // Controller-manager, scheduler and kube-proxy against it.
    let p = |r: &str| env.pki.p(r);
    let kcm_port = bins::free_port("127.0.0.2");
    let kcm_args = |sa_key: &str| {
        vec![
            format!("--kubeconfig={}", p("controller-manager.conf")),
            format!("--authentication-kubeconfig={}", p("controller-manager.conf")),
            format!("--authorization-kubeconfig={}", p("controller-manager.conf")),
            "--bind-address=127.0.0.2".into(),
            format!("--secure-port={kcm_port}"),
            format!("--client-ca-file={}", p("pki/ca.crt")),
            format!("--requestheader-client-ca-file={}", p("pki/front-proxy-ca.crt")),
            format!("--root-ca-file={}", p("pki/ca.crt")),
            format!("--cluster-signing-cert-file={}", p("pki/ca.crt")),
            format!("--cluster-signing-key-file={}", p("pki/ca.key")),
            format!("--service-account-private-key-file={sa_key}"),
            "--use-service-account-credentials=true".into(),
            "--controllers=*,bootstrapsigner,tokencleaner".into(),
            "--leader-elect=true".into(),
            "--cluster-cidr=10.244.0.0/16".into(),
            "--allocate-node-cidrs=true".into(),
        ]
    };
    let kcm_bin = env.bin("kube-controller-manager", V35);
    let (code, _, err) = run(&kcm_bin, &kcm_args(&p("pki/apiserver.key")), QUICK);
    assert_eq!(code, 1);
    assert!(err.contains("does not pair with any --service-account-key-file"), "{err}");
    let mut bad_ca = kcm_args(&p("pki/sa.key"));
    bad_ca.push(format!("--cluster-signing-key-file={}", p("pki/etcd/ca.key")));
    let (code, _, err) = run(&kcm_bin, &bad_ca, QUICK);
    assert_eq!(code, 1);
    assert!(err.contains("private key does not match"), "{err}");
    let mut kcm = bins::Proc::start(&kcm_bin, &kcm_args(&p("pki/sa.key")), &env.path("kcm.log"));
    assert!(
        bins::wait_for(QUICK, || bins::listening("127.0.0.2", kcm_port).then_some(())).is_some(),
        "kcm: {}",
        kcm.log_text()
    );
    assert!(kcm.exited().is_none());

    let sched_port = bins::free_port("127.0.0.2");
    let cfg = env.path("scheduler.yaml");
    std::fs::write(
        &cfg,
        format!(
            "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nclientConnection:\n  kubeconfig: {}\nleaderElection:\n  leaderElect: true\n",
            p("scheduler.conf")
        ),
    )
    .unwrap();
    let sched_args = vec![
        format!("--config={}", cfg.display()),
        "--bind-address=127.0.0.2".into(),
        format!("--secure-port={sched_port}"),
    ];
    let mut sched = bins::Proc::start(&env.bin("kube-scheduler", V35), &sched_args, &env.path("sched.log"));
    assert!(
        bins::wait_for(QUICK, || bins::listening("127.0.0.2", sched_port).then_some(())).is_some(),
        "scheduler: {}",
        sched.log_text()
    );
    assert!(sched.exited().is_none());
    // A kubeconfig whose client cert comes from another CA is refused by the apiserver.
    let (c, k) = other.leaf("system:kube-scheduler", &[], &[rcgen::ExtendedKeyUsagePurpose::ClientAuth], &[]);
    let bad_conf = write(
        "bad-sched.conf",
        &pki::kubeconfig(&env.layout.server, &env.pki.ca.cert_pem, &c, &k, "system:kube-scheduler"),
    );
    let (code, _, err) = run(
        &env.bin("kube-scheduler", V35),
        &[format!("--kubeconfig={bad_conf}"), "--bind-address=127.0.0.2".into(), "--secure-port=0".into()],
        QUICK,
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("(401)") || err.contains("(403)"), "{err}");

    let hz = bins::free_port("127.0.0.2");
    let mt = bins::free_port("127.0.0.2");
    let proxy_cfg = env.path("proxy.yaml");
    std::fs::write(
        &proxy_cfg,
        format!(
            "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nclientConnection:\n  kubeconfig: {}\nmode: iptables\nclusterCIDR: 10.244.0.0/16\nhealthzBindAddress: 127.0.0.2:{hz}\nmetricsBindAddress: 127.0.0.2:{mt}\n",
            p("kube-proxy.conf")
        ),
    )
    .unwrap();
    let mut proxy = bins::Proc::start(
        &env.bin("kube-proxy", V35),
        &[format!("--config={}", proxy_cfg.display())],
        &env.path("proxy.log"),
    );
    assert!(
        bins::wait_for(QUICK, || bins::listening("127.0.0.2", hz).then_some(())).is_some(),
        "proxy: {}",
        proxy.log_text()
    );
    assert!(proxy.exited().is_none());
    // The apiserver double's log says it is running the stamped version.
    assert!(api.log_text().contains("v1.35.7"));
    assert!(api.exited().is_none());
}
