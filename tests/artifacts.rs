//! Downloads from a mirror served by a loopback HTTP server: fetch, cache hits without any request,
//! checksum rejection, resume of a truncated transfer, 404, server down, pins. The server is plain HTTP, so
//! every artifact fetched from it needs a pin ([`pinned`]); one without is refused before any request. One
//! test serves the mirror over TLS with a certificate from a private CA (`releaseSource.caFile`).

#[path = "support/artifacts.rs"]
mod fixture;
#[path = "support/http.rs"]
mod http;

use fixture::*;
use http::{Fault, TestServer};
use kubeforge::artifacts::{
    requirements_for_hosts, versions::VersionOverrides, ArtifactError, ArtifactSource, Component,
    Requirement, RetryPolicy, Versions,
};
use kubeforge::inventory::{Inventory, ReleaseSourceSpec};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const FAST: RetryPolicy = RetryPolicy { attempts: 3, initial_backoff: Duration::from_millis(10) };

fn mirror(srv: &TestServer, pins: &[(&str, String)]) -> ReleaseSourceSpec {
    ReleaseSourceSpec::Mirror {
        url: format!("{}/", srv.url()),
        pins: pins.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
        ca_file: None,
    }
}

/// The fixture's mirror with a pin for every file it publishes, as a plain-HTTP mirror needs.
fn pinned(srv: &TestServer, fx: &Fixture) -> ReleaseSourceSpec {
    ReleaseSourceSpec::Mirror { url: format!("{}/", srv.url()), pins: fx.pins.clone(), ca_file: None }
}

fn source(spec: &ReleaseSourceSpec, cache: &Path) -> ArtifactSource {
    ArtifactSource::from_spec(Some(spec), Path::new("."), cache).unwrap().with_retry(FAST)
}

fn req(c: Component, v: &str, arch: &str) -> Requirement {
    Requirement::new(c, v, arch).unwrap()
}

/// Every file under `dir` except the empty per-unit lock files (`.locks/`), which hold no content.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.file_name().is_some_and(|n| n == ".locks") {
                continue;
            }
            if p.is_dir() {
                out.extend(files_under(&p));
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

#[tokio::test]
async fn fetch_every_host_requirement_then_hit_the_cache_without_a_request() {
    let srv = TestServer::start().await;
    let fx = publish_mirror(&srv);
    let cache = tempfile::tempdir().unwrap();
    let inv: Inventory = serde_yaml::from_str(&inventory_yaml("{type: mirror, url: x}")).unwrap();
    let versions = Versions::resolve(&inv.cluster, &VersionOverrides::default()).unwrap();
    let reqs = requirements_for_hosts(&inv.hosts, &versions).unwrap();
    // cp1 (amd64) needs all 12 components, w1 (arm64) only the 6 node ones.
    assert_eq!(reqs.len(), 18);
    assert_eq!(reqs.iter().filter(|r| r.arch == "arm64").count(), 6);

    let spec = pinned(&srv, &fx);
    let src = source(&spec, cache.path());
    let rec = Recorder::default();
    for r in &reqs {
        let a = src.ensure(r, &rec).await.unwrap_or_else(|e| panic!("{r}: {e}"));
        assert!(!a.executables.is_empty(), "{r}");
        for x in &a.executables {
            let want = &fx.executables[&(r.arch.clone(), x.name.clone())];
            assert_eq!(&std::fs::read(&x.path).unwrap(), want, "{r}: {}", x.name);
            assert_eq!(x.sha256, sha(want));
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&x.path).unwrap().permissions().mode() & 0o111, 0o111, "{}", x.name);
        }
        assert_eq!(a.note, None);
    }
    let cni = src.ensure(&req(Component::CniPlugins, CNI, "arm64"), &rec).await.unwrap();
    let cni: Vec<_> = cni.executables.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(cni, ["bridge", "host-local", "loopback", "portmap"], "LICENSE is not an executable");
    let etcd = src.ensure(&req(Component::Etcd, ETCD, "amd64"), &rec).await.unwrap();
    let etcd: Vec<_> = etcd.executables.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(etcd, ["etcd", "etcdutl"]);
    let ctr = src.ensure(&req(Component::Containerd, CONTAINERD, "amd64"), &rec).await.unwrap();
    let ctr: Vec<_> = ctr.executables.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(ctr, ["containerd", "containerd-shim-runc-v2", "ctr"]);

    // Each download unit was fetched once (etcd and etcdctl share a tarball): amd64 has 11 units, arm64 6;
    // one file each, and no checksum file: every one is pinned.
    let log = srv.log();
    assert_eq!(log.len(), 17, "{log:#?}");
    assert!(log.iter().all(|l| !l.path.contains("sha256") && !l.path.ends_with("SHA256SUMS")), "{log:#?}");
    assert!(log.iter().all(|l| l.status == 200));

    // Same source, and a fresh source as a new process would build: no request at all.
    srv.clear_log();
    let again = source(&spec, cache.path());
    for r in &reqs {
        src.ensure(r, &rec).await.unwrap();
        again.ensure(r, &rec).await.unwrap();
    }
    assert_eq!(srv.log(), vec![], "a cache hit makes no request");
}

#[tokio::test]
async fn a_corrupted_cache_entry_is_detected_and_fetched_again() {
    let srv = TestServer::start().await;
    let fx = publish_mirror(&srv);
    let cache = tempfile::tempdir().unwrap();
    let src = source(&pinned(&srv, &fx), cache.path());
    let r = req(Component::Kubelet, KUBE, "amd64");
    let a = src.ensure(&r, &Recorder::default()).await.unwrap();
    std::fs::write(&a.executables[0].path, b"evil").unwrap();
    srv.clear_log();
    let b = src.ensure(&r, &Recorder::default()).await.unwrap();
    assert_eq!(
        std::fs::read(&b.executables[0].path).unwrap(),
        fx.executables[&("amd64".into(), "kubelet".into())]
    );
    assert_eq!(srv.log().len(), 1, "the binary fetched again (held to its pin)");
}

#[tokio::test]
async fn wrong_checksum_is_rejected_with_both_digests_and_nothing_is_cached() {
    let srv = TestServer::start().await;
    let fx = publish_mirror(&srv);
    let path = &fx.kube_paths[&("amd64".into(), "kubelet".into())];
    srv.put(path, b"#!/bin/sh\necho replaced\n".to_vec());
    let cache = tempfile::tempdir().unwrap();
    let src = source(&pinned(&srv, &fx), cache.path());
    let err = src.ensure(&req(Component::Kubelet, KUBE, "amd64"), &Recorder::default()).await.unwrap_err();
    let want = sha(&fx.executables[&("amd64".into(), "kubelet".into())]);
    let got = sha(b"#!/bin/sh\necho replaced\n");
    assert!(
        matches!(&err, ArtifactError::ChecksumMismatch { expected, actual, .. } if *expected == want && *actual == got)
    );
    let msg = err.to_string();
    assert!(
        msg.contains(&want) && msg.contains(&got) && msg.contains(&format!("{}{path}", srv.url())),
        "{msg}"
    );
    assert_eq!(files_under(cache.path()), Vec::<String>::new(), "nothing of a rejected file is left");
}

#[tokio::test]
async fn a_truncated_transfer_is_resumed_with_a_range_request() {
    let srv = TestServer::start().await;
    let fx = publish_mirror(&srv);
    let path = fx.kube_paths[&("arm64".into(), "kube-apiserver".into())].clone();
    srv.fault(&path, Fault::Truncate(250_000));
    let cache = tempfile::tempdir().unwrap();
    let src = source(&pinned(&srv, &fx), cache.path());
    let rec = Recorder::default();
    let a = src.ensure(&req(Component::KubeApiserver, KUBE, "arm64"), &rec).await.unwrap();
    assert_eq!(
        std::fs::read(&a.executables[0].path).unwrap(),
        fx.executables[&("arm64".into(), "kube-apiserver".into())]
    );
    let gets: Vec<_> = srv.log().into_iter().filter(|l| l.path == path).collect();
    assert_eq!(gets.len(), 2, "{gets:#?}");
    assert_eq!((gets[0].range.as_deref(), gets[0].status), (None, 200));
    assert_eq!((gets[1].range.as_deref(), gets[1].status), (Some("bytes=250000-"), 206));
    assert!(rec.messages.lock().unwrap().iter().any(|m| m.starts_with("retry: ") && m.contains(&path)));
}

#[tokio::test]
async fn a_server_that_ignores_range_is_downloaded_again_from_the_start() {
    let srv = TestServer::start().await;
    let fx = publish_mirror(&srv);
    let path = fx.kube_paths[&("amd64".into(), "kube-apiserver".into())].clone();
    srv.fault(&path, Fault::Truncate(100_000));
    srv.fault(&path, Fault::IgnoreRange);
    let cache = tempfile::tempdir().unwrap();
    let src = source(&pinned(&srv, &fx), cache.path());
    let a = src.ensure(&req(Component::KubeApiserver, KUBE, "amd64"), &Recorder::default()).await.unwrap();
    assert_eq!(
        std::fs::read(&a.executables[0].path).unwrap(),
        fx.executables[&("amd64".into(), "kube-apiserver".into())]
    );
    let statuses: Vec<_> =
        srv.log().into_iter().filter(|l| l.path == path).map(|l| (l.range, l.status)).collect();
    assert_eq!(statuses, [(None, 200), (Some("bytes=100000-".into()), 200)]);
}

#[tokio::test]
async fn transient_failures_are_retried_and_then_given_up() {
    let srv = TestServer::start().await;
    let fx = publish_mirror(&srv);
    let cache = tempfile::tempdir().unwrap();
    let src = source(&pinned(&srv, &fx), cache.path());
    let path = fx.kube_paths[&("amd64".into(), "kube-proxy".into())].clone();
    srv.fault(&path, Fault::Status(503));
    srv.fault(&path, Fault::Drop);
    src.ensure(&req(Component::KubeProxy, KUBE, "amd64"), &Recorder::default()).await.unwrap();
    assert_eq!(srv.log().iter().filter(|l| l.path == path).count(), 3);

    let path = fx.kube_paths[&("amd64".into(), "kube-apiserver".into())].clone();
    for _ in 0..3 {
        srv.fault(&path, Fault::Truncate(1000));
    }
    let err =
        src.ensure(&req(Component::KubeApiserver, KUBE, "amd64"), &Recorder::default()).await.unwrap_err();
    let report = kubeforge::Error::from(err).report();
    assert!(report.contains(&format!("download of {}{path} failed after 3 attempts", srv.url())), "{report}");
    assert!(!src.cache().dir(&req(Component::KubeApiserver, KUBE, "amd64")).join("artifact.json").exists());
}

#[tokio::test]
async fn not_found_is_reported_with_the_url_and_not_retried() {
    let srv = TestServer::start().await;
    let fx = publish_mirror(&srv);
    let path = fx.kube_paths[&("arm64".into(), "kubelet".into())].clone();
    srv.remove(&path);
    let cache = tempfile::tempdir().unwrap();
    let src = source(&pinned(&srv, &fx), cache.path());
    let err = src.ensure(&req(Component::Kubelet, KUBE, "arm64"), &Recorder::default()).await.unwrap_err();
    let report = kubeforge::Error::from(err).report();
    assert!(report.starts_with(&format!("error: GET {}{path} returned HTTP 404", srv.url())), "{report}");
    assert!(report.contains("hint: check the version"), "{report}");
    assert_eq!(srv.log().iter().filter(|l| l.path == path).count(), 1);
    assert_eq!(files_under(cache.path()), Vec::<String>::new());
}

#[tokio::test]
async fn a_server_that_is_down_is_reported_clearly() {
    let port = http::unused_port();
    let pins = BTreeMap::from([("runc/amd64".to_owned(), format!("sha256:{}", "ab".repeat(32)))]);
    let spec = ReleaseSourceSpec::Mirror { url: format!("http://127.0.0.1:{port}"), pins, ca_file: None };
    let cache = tempfile::tempdir().unwrap();
    let src = source(&spec, cache.path());
    let err = src.ensure(&req(Component::Runc, RUNC, "amd64"), &Recorder::default()).await.unwrap_err();
    let report = kubeforge::Error::from(err).report();
    let url = format!(
        "http://127.0.0.1:{port}/github.com/opencontainers/runc/releases/download/v{RUNC}/runc.amd64"
    );
    assert!(report.starts_with(&format!("error: cannot reach {url} (tried 3 times)")), "{report}");
    assert!(report.contains("caused by:"), "{report}");
    assert!(report.contains("hint: check the network, the mirror URL"), "{report}");
}

#[tokio::test]
async fn a_pin_overrides_the_published_checksum() {
    let srv = TestServer::start().await;
    let fx = publish_mirror(&srv);
    // The published checksum file is wrong, the pin is right: the pin wins, the checksum file is not read.
    let bin = &fx.executables[&("arm64".into(), "runc".into())];
    srv.put(
        &format!("/github.com/opencontainers/runc/releases/download/v{RUNC}/runc.sha256sum"),
        "0".repeat(64),
    );
    let cache = tempfile::tempdir().unwrap();
    let src = source(&mirror(&srv, &[("runc/arm64", format!("sha256:{}", sha(bin)))]), cache.path());
    let a = src.ensure(&req(Component::Runc, RUNC, "arm64"), &Recorder::default()).await.unwrap();
    assert_eq!(a.executables[0].name, "runc");
    assert!(srv.log().iter().all(|l| !l.path.ends_with("sha256sum")));

    // A pin that does not match the file rejects it even though the published checksum would accept it.
    let etcd_pin = "ab".repeat(32);
    let src = source(&mirror(&srv, &[("etcd/amd64", format!("sha256:{etcd_pin}"))]), cache.path());
    let err = src.ensure(&req(Component::Etcdctl, ETCD, "amd64"), &Recorder::default()).await.unwrap_err();
    assert!(
        matches!(err, ArtifactError::ChecksumMismatch { ref expected, .. } if *expected == etcd_pin),
        "{err}"
    );

    // Malformed pins are refused up front.
    for (k, v) in
        [("runc", "sha256:00"), ("etcdctl/amd64", &format!("sha256:{etcd_pin}")), ("runc/amd64", "md5:00")]
    {
        let spec = mirror(&srv, &[(k, v.to_string())]);
        let e = ArtifactSource::from_spec(Some(&spec), Path::new("."), cache.path()).unwrap_err();
        assert!(e.to_string().starts_with(&format!("pin '{k}: ")), "{e}");
    }
}

#[tokio::test]
async fn a_partial_download_left_by_an_earlier_run_is_resumed() {
    let srv = TestServer::start().await;
    let fx = publish_mirror(&srv);
    let path = fx.kube_paths[&("amd64".into(), "kube-apiserver".into())].clone();
    srv.fault(&path, Fault::Truncate(300_000));
    let cache = tempfile::tempdir().unwrap();
    let spec = pinned(&srv, &fx);
    let r = req(Component::KubeApiserver, KUBE, "amd64");
    // The first run gives up after one attempt and leaves the partial file behind, not an entry.
    let once = RetryPolicy { attempts: 1, initial_backoff: Duration::from_millis(1) };
    let first =
        ArtifactSource::from_spec(Some(&spec), Path::new("."), cache.path()).unwrap().with_retry(once);
    assert!(matches!(
        first.ensure(&r, &Recorder::default()).await,
        Err(ArtifactError::Transfer { attempts: 1, .. })
    ));
    let part = first.cache().dir(&r).join("kube-apiserver.part");
    assert_eq!(std::fs::metadata(&part).unwrap().len(), 300_000);
    // The next run asks only for the rest.
    srv.clear_log();
    let a = source(&spec, cache.path()).ensure(&r, &Recorder::default()).await.unwrap();
    assert_eq!(
        std::fs::read(&a.executables[0].path).unwrap(),
        fx.executables[&("amd64".into(), "kube-apiserver".into())]
    );
    assert!(!part.exists());
    let gets: Vec<_> =
        srv.log().into_iter().filter(|l| l.path == path).map(|l| (l.range, l.status)).collect();
    assert_eq!(gets, [(Some("bytes=300000-".to_owned()), 206)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_for_one_tarball_download_it_once() {
    let srv = TestServer::start().await;
    let fx = publish_mirror(&srv);
    let cache = tempfile::tempdir().unwrap();
    let spec = pinned(&srv, &fx);
    // Two sources on one cache behave like two processes: the file lock serializes them.
    let (a, b) = (source(&spec, cache.path()), source(&spec, cache.path()));
    let (ra, rb) = (req(Component::Etcd, ETCD, "arm64"), req(Component::Etcdctl, ETCD, "arm64"));
    let rec = Recorder::default();
    let (x, y, z) = tokio::join!(a.ensure(&ra, &rec), b.ensure(&rb, &rec), a.ensure(&rb, &rec));
    assert_eq!(x.unwrap().executables.len(), 2);
    assert_eq!(y.unwrap().executables[0].name, "etcdctl");
    assert_eq!(z.unwrap().executables[0].name, "etcdctl");
    let tarball = srv.log().into_iter().filter(|l| l.path.ends_with("linux-arm64.tar.gz")).count();
    assert_eq!(tarball, 1);
}

#[tokio::test]
async fn redirects_to_another_host_path_are_followed() {
    let srv = TestServer::start().await;
    let fx = publish_mirror(&srv);
    let path = fx.kube_paths[&("arm64".into(), "kubectl".into())].clone();
    let want = fx.executables[&("arm64".into(), "kubectl".into())].clone();
    srv.put("/cdn/blob/1234", want.clone());
    srv.fault(&path, Fault::Redirect(format!("{}/cdn/blob/1234", srv.url())));
    let cache = tempfile::tempdir().unwrap();
    let a = source(&pinned(&srv, &fx), cache.path())
        .ensure(&req(Component::Kubectl, KUBE, "arm64"), &Recorder::default())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&a.executables[0].path).unwrap(), want);
    let log: Vec<_> = srv.log().into_iter().map(|l| (l.path, l.status)).collect();
    assert!(log.ends_with(&[(path, 302), ("/cdn/blob/1234".to_owned(), 200)]), "{log:?}");
}

#[test]
fn a_mirror_url_must_be_http() {
    for url in ["mirror.lan/k8s", "ftp://mirror.lan", "https://"] {
        let spec = ReleaseSourceSpec::Mirror { url: url.into(), pins: BTreeMap::new(), ca_file: None };
        let e =
            ArtifactSource::from_spec(Some(&spec), Path::new("."), Path::new("/nonexistent")).unwrap_err();
        assert_eq!(e.to_string(), format!("mirror URL '{url}' is not an http:// or https:// URL"));
    }
}

#[tokio::test]
async fn a_206_for_the_wrong_range_is_not_appended() {
    let srv = TestServer::start().await;
    let fx = publish_mirror(&srv);
    let path = fx.kube_paths[&("amd64".into(), "kube-apiserver".into())].clone();
    srv.fault(&path, Fault::Truncate(50_000));
    srv.fault(&path, Fault::RangeFromStart);
    let cache = tempfile::tempdir().unwrap();
    let rec = Recorder::default();
    let a = source(&pinned(&srv, &fx), cache.path())
        .ensure(&req(Component::KubeApiserver, KUBE, "amd64"), &rec)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(&a.executables[0].path).unwrap(),
        fx.executables[&("amd64".into(), "kube-apiserver".into())]
    );
    let statuses: Vec<_> =
        srv.log().into_iter().filter(|l| l.path == path).map(|l| (l.range, l.status)).collect();
    assert_eq!(statuses, [(None, 200), (Some("bytes=50000-".into()), 206), (None, 200)]);
    assert!(rec
        .messages
        .lock()
        .unwrap()
        .iter()
        .any(|m| m.contains("server answered a different range than bytes=50000-")));
}

#[tokio::test]
async fn a_plain_http_mirror_refuses_an_unpinned_artifact_before_any_request() {
    let srv = TestServer::start().await;
    let fx = publish_mirror(&srv);
    let cache = tempfile::tempdir().unwrap();
    let kubelet = req(Component::Kubelet, KUBE, "amd64");
    // Fetched and cached while pinned.
    source(&pinned(&srv, &fx), cache.path()).ensure(&kubelet, &Recorder::default()).await.unwrap();
    srv.clear_log();
    // The same mirror with the kubelet pin gone: refused, cache hit or not, and the server is never asked
    // (neither for the file nor for the checksum file an attacker could have replaced with it).
    let mut pins = fx.pins.clone();
    pins.remove("kubelet/amd64");
    let spec = ReleaseSourceSpec::Mirror { url: srv.url(), pins, ca_file: None };
    let src = source(&spec, cache.path());
    let err = src.ensure(&kubelet, &Recorder::default()).await.unwrap_err();
    let url = format!("{}{}", srv.url(), fx.kube_paths[&("amd64".into(), "kubelet".into())]);
    assert!(
        matches!(&err, ArtifactError::UnpinnedOverHttp { url: u, pin_key } if *u == url && pin_key == "kubelet/amd64"),
        "{err:?}"
    );
    let report = kubeforge::Error::from(err).report();
    assert!(
        report.starts_with(&format!(
            "error: refusing to download {url} over plain HTTP without a pin for `kubelet/amd64`"
        )),
        "{report}"
    );
    assert!(
        report.contains(
            "hint: use an https:// mirror, or add `kubelet/amd64: sha256:<hex>` to cluster.releaseSource.pins"
        ),
        "{report}"
    );
    assert_eq!(srv.log(), vec![], "nothing was asked of the server");
    // What is still pinned is fetched from the same source.
    src.ensure(&req(Component::Kubelet, KUBE, "arm64"), &Recorder::default()).await.unwrap();
    assert_eq!(srv.log().len(), 1);
}

/// A CA and a certificate it signed for 127.0.0.1 (PEM: the CA, the server's chain, its key).
fn private_ca_and_server_cert() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "mirror test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_cert.pem(), &ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut leaf = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.subject_alt_names.push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// An https mirror whose certificate chains to a private CA, nothing pinned (the checksums come from the
/// mirror, over TLS). With the public roots alone the handshake fails: no request is served and nothing is
/// cached. With `caFile` (relative to the inventory file) the artifact is fetched and verified. A `caFile`
/// with no certificate, or beside a plain-http mirror, is refused before any request.
#[tokio::test]
async fn an_https_mirror_behind_a_private_ca_is_trusted_through_ca_file_only() {
    let (ca_pem, chain_pem, key_pem) = private_ca_and_server_cert();
    let srv = TestServer::start_tls(&chain_pem, &key_pem).await;
    assert!(srv.url().starts_with("https://127.0.0.1:"));
    let fx = publish_mirror(&srv);
    let inv_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(inv_dir.path().join("certs")).unwrap();
    std::fs::write(inv_dir.path().join("certs/mirror-ca.pem"), &ca_pem).unwrap();
    let kubelet = req(Component::Kubelet, KUBE, "amd64");
    let spec = |ca_file: Option<&str>| ReleaseSourceSpec::Mirror {
        url: srv.url(),
        pins: BTreeMap::new(),
        ca_file: ca_file.map(str::to_owned),
    };
    let cache = tempfile::tempdir().unwrap();
    let open = |s: &ReleaseSourceSpec| ArtifactSource::from_spec(Some(s), inv_dir.path(), cache.path());

    let err =
        open(&spec(None)).unwrap().with_retry(FAST).ensure(&kubelet, &Recorder::default()).await.unwrap_err();
    let report = kubeforge::Error::from(err).report();
    assert!(report.contains("UnknownIssuer"), "the mirror's certificate is not trusted: {report}");
    assert_eq!(srv.log(), vec![], "no request got through the failed handshake");
    assert!(files_under(cache.path()).is_empty(), "{:?}", files_under(cache.path()));

    let src = open(&spec(Some("certs/mirror-ca.pem"))).unwrap().with_retry(FAST);
    assert_eq!(src.describe(), format!("mirror {}", srv.url()));
    let got = src.ensure(&kubelet, &Recorder::default()).await.unwrap();
    assert!(!got.executables.is_empty());
    let path = &fx.kube_paths[&("amd64".into(), "kubelet".into())];
    assert!(srv.log().iter().any(|l| &l.path == path && l.status == 200), "{:?}", srv.log());

    std::fs::write(inv_dir.path().join("certs/none.pem"), "no certificate here\n").unwrap();
    let e = open(&spec(Some("certs/none.pem"))).unwrap_err();
    assert!(e.to_string().contains("holds no certificate"), "{e}");
    let e = open(&spec(Some("certs/missing.pem"))).unwrap_err();
    assert!(e.to_string().contains("cannot be read"), "{e}");
    let http = ReleaseSourceSpec::Mirror {
        url: "http://127.0.0.1:9/".into(),
        pins: fx.pins.clone(),
        ca_file: Some("certs/mirror-ca.pem".into()),
    };
    let e = open(&http).unwrap_err();
    assert!(e.to_string().contains("is for an https:// mirror"), "{e}");
}
