//! Benchmark (not a test): issuing the full PKI of a 3-control-plane + 100-worker cluster with kubeforge
//! (in process, rcgen) versus the same certificate set made with the openssl command line, for ECDSA P-256
//! and RSA-2048. Prints a table with the ratio. Run: `cargo bench --bench pki`.

use kubeforge::pki::spec::{leaf_specs, CaId, Usage};
use kubeforge::pki::store::Store;
use kubeforge::pki::{KeyAlgorithm, NodeIdentity, PkiInputs};
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn inputs(alg: KeyAlgorithm, workers: usize) -> PkiInputs {
    let node = |name: String, i: usize| NodeIdentity {
        name,
        addresses: vec![IpAddr::from([10, 0, (i / 250) as u8, (i % 250 + 1) as u8])],
        hostnames: vec![],
    };
    let cps: Vec<NodeIdentity> = (0..3).map(|i| node(format!("cp{i}"), i)).collect();
    let mut nodes = cps.clone();
    nodes.extend((0..workers).map(|i| node(format!("w{i}"), 10 + i)));
    PkiInputs {
        cluster_name: "bench".into(),
        cluster_domain: "cluster.local".into(),
        first_service_ip: "10.96.0.1".parse().unwrap(),
        api_endpoint_host: "10.0.0.1".into(),
        api_server_url: "https://10.0.0.1:6443".into(),
        node_api_url: "https://127.0.0.1:7443".into(),
        control_planes: cps.clone(),
        etcd_members: cps,
        nodes,
        extra_apiserver_sans: vec![],
        key_algorithm: alg,
        validity: Duration::from_secs(365 * 86400),
        ca_validity: Duration::from_secs(3650 * 86400),
    }
}

fn kubeforge(alg: KeyAlgorithm, workers: usize) -> (Duration, usize) {
    let dir = tempfile::tempdir().unwrap();
    let i = inputs(alg, workers);
    let t = Instant::now();
    let r = Store::new(dir.path(), "bench").ensure(&i, kubeforge::pki::store::NewKeys::Allowed).unwrap();
    (t.elapsed(), r.issued.len() + r.cas_created.len())
}

fn sh(args: &[&str], dir: &Path) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The same set with the openssl CLI: one key + CSR + signature per certificate, SANs and EKUs included.
fn openssl(alg: KeyAlgorithm, workers: usize) -> (Duration, usize) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let i = inputs(alg, workers);
    let keyargs: Vec<&str> = match alg {
        KeyAlgorithm::Rsa2048 => {
            vec!["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out"]
        }
        _ => vec!["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out"],
    };
    let t = Instant::now();
    let mut n = 0;
    for ca in CaId::ALL {
        let stem = ca.name().replace('/', "-");
        sh(&[&keyargs[..], &[&format!("{stem}.key")]].concat(), d);
        sh(
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                &format!("{stem}.key"),
                "-subj",
                &format!("/CN={}", ca.common_name()),
                "-days",
                "3650",
                "-out",
                &format!("{stem}.crt"),
            ],
            d,
        );
        n += 1;
    }
    sh(&[&keyargs[..], &["sa.key"]].concat(), d);
    n += 1;
    for s in leaf_specs(&i) {
        let stem = s.name.replace('/', "-");
        let ca = s.ca.name().replace('/', "-");
        sh(&[&keyargs[..], &[&format!("{stem}.key")]].concat(), d);
        let subj = s.organizations.iter().map(|o| format!("/O={o}")).collect::<String>()
            + &format!("/CN={}", s.common_name);
        sh(
            &["req", "-new", "-key", &format!("{stem}.key"), "-subj", &subj, "-out", &format!("{stem}.csr")],
            d,
        );
        let eku = match s.usage {
            Usage::Server => "serverAuth",
            Usage::Client => "clientAuth",
            Usage::ServerAndClient => "serverAuth,clientAuth",
        };
        let mut ext = format!("keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage={eku}\n");
        let sans: Vec<String> =
            s.dns.iter().map(|x| format!("DNS:{x}")).chain(s.ips.iter().map(|x| format!("IP:{x}"))).collect();
        if !sans.is_empty() {
            ext.push_str(&format!("subjectAltName={}\n", sans.join(",")));
        }
        std::fs::write(d.join(format!("{stem}.ext")), ext).unwrap();
        sh(
            &[
                "x509",
                "-req",
                "-in",
                &format!("{stem}.csr"),
                "-CA",
                &format!("{ca}.crt"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-days",
                "365",
                "-extfile",
                &format!("{stem}.ext"),
                "-out",
                &format!("{stem}.crt"),
            ],
            d,
        );
        n += 1;
    }
    (t.elapsed(), n)
}

fn main() {
    let workers = std::env::var("BENCH_WORKERS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    println!("certs generate: 3 control planes (stacked etcd) + {workers} workers\n");
    println!("| key algorithm | certs+keys | kubeforge | openssl CLI | openssl / kubeforge |");
    println!("|---|---|---|---|---|");
    for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Rsa2048] {
        let (k, n) = kubeforge(alg, workers);
        let (o, m) = openssl(alg, workers);
        assert_eq!(n, m, "both sides make the same set");
        println!(
            "| {alg} | {n} | {:.1} ms | {:.2} s | {:.0}x |",
            k.as_secs_f64() * 1e3,
            o.as_secs_f64(),
            o.as_secs_f64() / k.as_secs_f64()
        );
    }
}
