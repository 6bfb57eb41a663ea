//! Benchmark (not a test): download + hash + cache throughput over loopback, cache-hit cost, bundle
//! verification cost. Prints a table, asserts nothing about time.
//! Run: `cargo test --test artifacts_bench -- --ignored --nocapture` (env `BENCH_MIB`, default 128).

#[path = "support/artifacts.rs"]
mod fixture;
#[path = "support/http.rs"]
mod http;

use fixture::{exe, sha, Recorder};
use kubeforge::artifacts::{bundle::Bundle, ArtifactSource, Component, Requirement};
use kubeforge::inventory::ReleaseSourceSpec;
use std::path::Path;
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run with --ignored --nocapture"]
async fn bench_artifacts() {
    let mib: usize = std::env::var("BENCH_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(128);
    let srv = http::TestServer::start().await;
    let data = exe("kubelet", "amd64", mib << 20);
    let path = "/release/v1.35.7/bin/linux/amd64/kubelet";
    srv.put(path, data.clone());
    srv.put(&format!("{path}.sha256"), sha(&data));
    let cache = tempfile::tempdir().unwrap();
    // A plain-HTTP mirror needs a pin for what it serves.
    let pins = [("kubelet/amd64".to_owned(), format!("sha256:{}", sha(&data)))].into();
    let spec = ReleaseSourceSpec::Mirror { url: srv.url(), pins, ca_file: None };
    let src = ArtifactSource::from_spec(Some(&spec), Path::new("."), cache.path()).unwrap();
    let req = Requirement::new(Component::Kubelet, "v1.35.7", "amd64").unwrap();
    let rec = Recorder::default();
    let mut rows = Vec::new();

    let t = Instant::now();
    let a = src.ensure(&req, &rec).await.unwrap();
    rows.push(("download+sha256+cache (loopback)", t.elapsed()));
    let t = Instant::now();
    src.ensure(&req, &rec).await.unwrap();
    rows.push(("cache hit (re-hash, no request)", t.elapsed()));

    let b = tempfile::tempdir().unwrap();
    let out = b.path().join("bundle");
    kubeforge::artifacts::bundle::write_bundle(&out, std::slice::from_ref(&a)).unwrap();
    let t = Instant::now();
    Bundle::open(&out, cache.path()).unwrap().verify().unwrap();
    rows.push(("bundle verify (directory)", t.elapsed()));

    println!("\n| operation ({mib} MiB file) | time | MiB/s |\n|---|---|---|");
    for (name, d) in rows {
        println!("| {name} | {:.3} s | {:.0} |", d.as_secs_f64(), mib as f64 / d.as_secs_f64());
    }
}
