//! Air-gapped bundles: fetch → bundle → verify → install source reads it (through the real binary and
//! the library), tampering refused, notes surfaced, and the end-to-end test bundle read through exactly
//! this code.

#[path = "support/artifacts.rs"]
mod fixture;
#[path = "support/http.rs"]
mod http;

use fixture::*;
use http::TestServer;
use kubeforge::artifacts::{
    bundle::Bundle, requirements_for_hosts, versions::VersionOverrides, ArtifactError, ArtifactSource,
    Component, Requirement, Versions,
};
use kubeforge::inventory::{Inventory, ReleaseSourceSpec};
use std::path::{Path, PathBuf};

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn kubeforge(args: &[&str]) -> Out {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubeforge"))
        .args(args)
        .env_remove("KUBEFORGE_CACHE_DIR")
        .output()
        .await
        .unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_bundle_verify_then_install_from_the_bundle_without_network() {
    let srv = TestServer::start().await;
    let fx = publish_mirror(&srv);
    let tmp = tempfile::tempdir().unwrap();
    let inv = tmp.path().join("inventory.yaml");
    // A plain-HTTP mirror (this loopback server) is accepted with a pin for every file it serves.
    let source = format!("{{type: mirror, url: \"{}\", pins: {}}}", srv.url(), fx.pins_yaml());
    std::fs::write(&inv, inventory_yaml(&source)).unwrap();
    let cache = tmp.path().join("cache");

    let out = kubeforge(&["artifacts", "fetch", "-i", p(&inv), "--cache-dir", p(&cache)]).await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("18 artifacts ready"), "{}", out.stdout);
    assert!(
        out.stderr.contains("w1 (arm64): kubelet, kube-proxy, containerd, runc, cni-plugins, crictl"),
        "{}",
        out.stderr
    );
    let fetched = srv.log().len();
    assert_eq!(fetched, 17, "one request per file; no checksum file is read");

    // Bundling reads the cache only.
    let archive = tmp.path().join("lab-bundle.tar.gz");
    let dir = tmp.path().join("lab-bundle");
    for o in [&archive, &dir] {
        let out =
            kubeforge(&["artifacts", "bundle", "-i", p(&inv), "--cache-dir", p(&cache), "--out", p(o)]).await;
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        assert!(out.stdout.contains("(17 files from mirror"), "{}", out.stdout);
    }
    assert_eq!(srv.log().len(), fetched, "bundle made no request");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["schema"], 1);
    let etcd = manifest["artifacts"].as_array().unwrap().iter().find(|e| e["component"] == "etcd").unwrap();
    assert_eq!(etcd["file"], format!("etcd/{ETCD}/linux/amd64/etcd-{ETCD}-linux-amd64.tar.gz"));
    assert_eq!(etcd["kind"], "tarball");
    assert!(etcd.get("note").is_none());

    for b in [&archive, &dir] {
        let out = kubeforge(&["artifacts", "verify", p(b), "--cache-dir", p(&tmp.path().join("c2"))]).await;
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
        assert!(out.stdout.contains("verified: 17 files"), "{}", out.stdout);
    }

    // The mirror goes away; an inventory pointing at the bundle installs everything from it.
    drop(srv);
    for b in ["lab-bundle.tar.gz", "lab-bundle"] {
        let inv2 = tmp.path().join(format!("air-{b}.yaml"));
        std::fs::write(&inv2, inventory_yaml(&format!("{{type: bundle, path: {b}}}"))).unwrap();
        let inventory: Inventory = serde_yaml::from_str(&std::fs::read_to_string(&inv2).unwrap()).unwrap();
        let versions = Versions::resolve(&inventory.cluster, &VersionOverrides::default()).unwrap();
        let cache3 = tempfile::tempdir().unwrap();
        let src =
            ArtifactSource::from_spec(inventory.cluster.release_source.as_ref(), tmp.path(), cache3.path())
                .unwrap();
        assert_eq!(src.describe(), format!("bundle {}", tmp.path().join(b).display()));
        for r in requirements_for_hosts(&inventory.hosts, &versions).unwrap() {
            let a = src.ensure(&r, &Recorder::default()).await.unwrap_or_else(|e| panic!("{r}: {e}"));
            assert!(!a.executables.is_empty());
            for x in &a.executables {
                assert_eq!(
                    std::fs::read(&x.path).unwrap(),
                    fx.executables[&(r.arch.clone(), x.name.clone())]
                );
            }
        }
        let out = kubeforge(&["artifacts", "fetch", "-i", p(&inv2), "--cache-dir", p(cache3.path())]).await;
        assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    }

    // One altered byte in a bundled file: verify fails naming the file, the install source refuses it.
    let victim = format!("kubelet/{KUBE}/linux/arm64/kubelet");
    let mut bytes = std::fs::read(dir.join(&victim)).unwrap();
    let good = sha(&bytes);
    bytes[100] ^= 1;
    std::fs::write(dir.join(&victim), &bytes).unwrap();
    let out = kubeforge(&["artifacts", "verify", p(&dir)]).await;
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let line =
        format!("kubelet {KUBE} linux/arm64: {victim} has sha256 {}, manifest says {good}", sha(&bytes));
    assert!(out.stderr.contains(&line), "{}", out.stderr);
    assert!(out.stderr.contains("hint: the bundle was modified"), "{}", out.stderr);
    let src = ArtifactSource::from_spec(
        Some(&ReleaseSourceSpec::Bundle { path: "lab-bundle".into() }),
        tmp.path(),
        &tmp.path().join("c4"),
    )
    .unwrap();
    let err =
        src.ensure(&Requirement::new(Component::Kubelet, KUBE, "arm64").unwrap(), &Recorder::default()).await;
    assert!(matches!(err, Err(ArtifactError::ChecksumMismatch { .. })), "{err:?}");
}

/// A bundle shaped like the end-to-end test bundle: single binaries, notes on the doubles.
fn hand_made_bundle(root: &Path) {
    let mut entries = Vec::new();
    for (c, v, note) in [
        ("kube-apiserver", KUBE, Some("contract double of kube-apiserver, for tests only")),
        ("etcd", ETCD, None),
        ("etcdctl", ETCD, None),
    ] {
        let data = exe(c, "amd64", 1000);
        let rel = format!("{c}/{v}/linux/amd64/{c}");
        std::fs::create_dir_all(root.join(&rel).parent().unwrap()).unwrap();
        std::fs::write(root.join(&rel), &data).unwrap();
        let mut e = serde_json::json!({"component": c, "version": v, "os": "linux", "arch": "amd64",
            "file": rel, "sha256": sha(&data), "kind": "binary"});
        if let Some(n) = note {
            e["note"] = n.into();
        }
        entries.push(e);
    }
    let m = serde_json::json!({"schema": 1, "artifacts": entries});
    std::fs::write(root.join("manifest.json"), serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

#[tokio::test]
async fn bundle_notes_are_reported_on_every_use_and_missing_entries_list_the_contents() {
    let tmp = tempfile::tempdir().unwrap();
    let b = tmp.path().join("b");
    hand_made_bundle(&b);
    let src = ArtifactSource::from_spec(
        Some(&ReleaseSourceSpec::Bundle { path: "b".into() }),
        tmp.path(),
        &tmp.path().join("c"),
    )
    .unwrap();
    let rec = Recorder::default();
    let api = Requirement::new(Component::KubeApiserver, KUBE, "amd64").unwrap();
    for _ in 0..2 {
        let a = src.ensure(&api, &rec).await.unwrap();
        assert_eq!(a.note.as_deref(), Some("contract double of kube-apiserver, for tests only"));
        assert_eq!(a.executables[0].name, "kube-apiserver");
        assert_eq!(
            a.executables[0].path,
            b.join(format!("kube-apiserver/{KUBE}/linux/amd64/kube-apiserver"))
        );
    }
    let notes = rec.messages.lock().unwrap().clone();
    assert_eq!(notes.len(), 2);
    assert_eq!(
        notes[0],
        format!("note: kube-apiserver {KUBE} linux/amd64 is from bundle {}: contract double of kube-apiserver, for tests only", b.display())
    );
    // etcd and etcdctl as separate binaries (no etcdutl) work too.
    let etcd = src.ensure(&Requirement::new(Component::Etcd, ETCD, "amd64").unwrap(), &rec).await.unwrap();
    assert_eq!(etcd.executables.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(), ["etcd"]);
    let ctl = src.ensure(&Requirement::new(Component::Etcdctl, ETCD, "amd64").unwrap(), &rec).await.unwrap();
    assert_eq!(ctl.executables[0].path, b.join(format!("etcdctl/{ETCD}/linux/amd64/etcdctl")));

    let err =
        src.ensure(&Requirement::new(Component::Kubelet, KUBE, "arm64").unwrap(), &rec).await.unwrap_err();
    let report = kubeforge::Error::from(err).report();
    assert_eq!(
        report,
        format!(
            "error: bundle {} has no kubelet {KUBE} linux/arm64; it has: kube-apiserver {KUBE} linux/amd64, etcd {ETCD} linux/amd64, etcdctl {ETCD} linux/amd64\n  hint: rebuild the bundle with `kubeforge artifacts bundle -i INVENTORY --out FILE` for this inventory's versions",
            b.display()
        )
    );

    let out = kubeforge(&["artifacts", "verify", p(&b)]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.contains(&format!("ok  kube-apiserver {KUBE} linux/amd64  (note: contract double")),
        "{}",
        out.stdout
    );
}

#[tokio::test]
async fn malformed_manifests_are_refused_with_every_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let b = tmp.path().join("b");
    hand_made_bundle(&b);
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.join("manifest.json")).unwrap()).unwrap();
    m["artifacts"][0]["file"] = "../../etc/passwd".into();
    m["artifacts"][1]["sha256"] = "abc".into();
    std::fs::remove_file(b.join(format!("etcdctl/{ETCD}/linux/amd64/etcdctl"))).unwrap();
    std::fs::write(b.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    let err = Bundle::open(&b, tmp.path()).unwrap().verify().unwrap_err().to_string();
    assert!(err.contains(&format!("kube-apiserver {KUBE} linux/amd64: file '../../etc/passwd' is not a relative path inside the bundle")), "{err}");
    assert!(err.contains(&format!("etcd {ETCD} linux/amd64: sha256 'abc' is not 64 hex digits")), "{err}");
    assert!(
        err.contains(&format!(
            "etcdctl {ETCD} linux/amd64: file etcdctl/{ETCD}/linux/amd64/etcdctl is missing"
        )),
        "{err}"
    );

    m["schema"] = 2.into();
    std::fs::write(b.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    let err = Bundle::open(&b, tmp.path()).unwrap_err().to_string();
    assert!(err.contains("manifest schema 2 is not supported"), "{err}");
    std::fs::write(b.join("manifest.json"), b"{\"schema\":1}").unwrap();
    let err = kubeforge::Error::from(Bundle::open(&b, tmp.path()).unwrap_err()).report();
    assert!(
        err.contains("cannot read bundle manifest") && err.contains("missing field `artifacts`"),
        "{err}"
    );
}

/// The bundle the end-to-end tests install (real etcd, etcdctl, kubectl; doubles of the kube server
/// binaries), read through exactly the code `apply` uses.
#[tokio::test]
async fn the_end_to_end_test_bundle_is_read_through_this_code() {
    let Some(path) = std::env::var_os("KUBEFORGE_TEST_BUNDLE").filter(|p| !p.is_empty()) else {
        // The whole suite (`scripts/test-all.sh`, CI) always sets it: there a missing bundle is a failure,
        // never a pass. A developer's `cargo test` without the bundle says it did not run this test.
        assert!(
            std::env::var_os("CI").is_none(),
            "KUBEFORGE_TEST_BUNDLE is unset in CI: the end-to-end test bundle was not checked"
        );
        eprintln!(
            "NOT RUN: the_end_to_end_test_bundle_is_read_through_this_code (KUBEFORGE_TEST_BUNDLE unset)"
        );
        return;
    };
    assert!(
        std::path::Path::new(&path).join("manifest.json").is_file(),
        "KUBEFORGE_TEST_BUNDLE={} holds no manifest.json: build it with `bash tests/bundle/build.sh DIR`",
        path.to_string_lossy()
    );
    let path = std::path::PathBuf::from(path);
    let cache = tempfile::tempdir().unwrap();
    let bundle = Bundle::open(&path, cache.path())
        .unwrap_or_else(|e| panic!("{}", kubeforge::Error::from(e).report()));
    let n = bundle.verify().unwrap_or_else(|e| panic!("{}", kubeforge::Error::from(e).report()));
    assert!(n > 0, "the test bundle is empty");
    let spec = ReleaseSourceSpec::Bundle { path: path.display().to_string() };
    let src = ArtifactSource::from_spec(Some(&spec), Path::new("/"), cache.path()).unwrap();
    let mut seen = Vec::new();
    for e in &bundle.manifest.artifacts {
        let Ok(component) = e.component.parse::<Component>() else {
            panic!("test bundle entry {} is not a component kubeforge installs", e.label());
        };
        let req = Requirement::new(component, &e.version, &e.arch).unwrap();
        let rec = Recorder::default();
        let a = src
            .ensure(&req, &rec)
            .await
            .unwrap_or_else(|err| panic!("{req}: {}", kubeforge::Error::from(err).report()));
        assert_eq!(a.note, e.note, "{req}");
        if let Some(note) = &e.note {
            assert!(
                rec.messages.lock().unwrap().iter().any(|m| m.contains(note)),
                "{req}: note not reported"
            );
        }
        for x in &a.executables {
            let meta = std::fs::metadata(&x.path).unwrap();
            assert!(meta.is_file() && meta.len() > 0, "{req}: {} is empty", x.path.display());
            assert_eq!(x.sha256, sha(&std::fs::read(&x.path).unwrap()), "{req}");
        }
        seen.push(component);
    }
    for needed in [
        Component::Etcd,
        Component::Etcdctl,
        Component::Kubectl,
        Component::KubeApiserver,
        Component::Kubelet,
        Component::Containerd,
        Component::Runc,
        Component::CniPlugins,
    ] {
        assert!(
            seen.contains(&needed) || (needed == Component::Etcdctl && seen.contains(&Component::Etcd)),
            "the test bundle lacks {needed}"
        );
    }
    println!("test bundle {}: {n} artifacts verified and resolved", path.display());
}

/// `lab up --bundle` checks the bundle before it checks the host, builds an image or boots anything: a
/// missing bundle and one without the Kubernetes version asked for fail at once, and no lab is created.
#[tokio::test]
async fn lab_up_rejects_a_wrong_bundle_before_booting_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let b = tmp.path().join("b");
    hand_made_bundle(&b);
    // `lab up --name badb --bundle BUNDLE EXTRA...`, run in the temporary directory.
    let lab_up = |bundle: &Path, extra: &[&str]| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_kubeforge"));
        cmd.args(["lab", "up", "--name", "badb", "--bundle", p(bundle)]).args(extra).current_dir(tmp.path());
        async move {
            let out = cmd.output().await.unwrap();
            assert!(!out.status.success(), "lab up must fail");
            String::from_utf8_lossy(&out.stderr).into_owned()
        }
    };
    let err = lab_up(&tmp.path().join("no-such-bundle"), &[]).await;
    assert!(err.contains("no-such-bundle"), "the error names the bundle path:\n{err}");
    let err = lab_up(&b, &["--kubernetes-version", "v1.20.0"]).await;
    assert!(err.contains("has no Kubernetes v1.20.0"), "{err}");
    assert!(err.contains("--kubernetes-version"), "the error says how to fix it:\n{err}");
    assert!(!tmp.path().join("lab").exists(), "nothing of a lab is created");
}

/// The test bundle's real containerd 2 reads the configuration kubeforge renders for it (format version 3):
/// `containerd config dump` shows the values where the CRI plugins of containerd 2 look for them (a key in the
/// wrong table would be dropped without an error, so each value is checked in its table).
#[tokio::test]
async fn the_bundles_containerd_2_reads_the_rendered_config() {
    let Some(path) = std::env::var_os("KUBEFORGE_TEST_BUNDLE").filter(|p| !p.is_empty()) else {
        println!("not run: KUBEFORGE_TEST_BUNDLE unset");
        return;
    };
    let cache = tempfile::tempdir().unwrap();
    let spec = ReleaseSourceSpec::Bundle { path: PathBuf::from(&path).display().to_string() };
    let src = ArtifactSource::from_spec(Some(&spec), Path::new("/"), cache.path()).unwrap();
    let bundle = Bundle::open(Path::new(&path), cache.path()).unwrap();
    let entry = bundle
        .manifest
        .artifacts
        .iter()
        .find(|e| e.component == "containerd" && e.version.starts_with("v2."))
        .expect("the test bundle has a containerd 2");
    let req = Requirement::new(Component::Containerd, &entry.version, "amd64").unwrap();
    let a = src.ensure(&req, &Recorder::default()).await.unwrap();
    let bin = a.executables.iter().find(|x| x.name == "containerd").expect("bin/containerd");
    let version = std::process::Command::new(&bin.path).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    assert!(version.contains(&format!(" {}", entry.version.trim_start_matches('v'))), "{version}");
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("config.toml");
    let rendered = kubeforge::render::containerd_config(Some(&entry.version));
    assert!(rendered.contains("version = 3"), "{rendered}");
    std::fs::write(&conf, &rendered).unwrap();
    let out = std::process::Command::new(&bin.path)
        .arg("--config")
        .arg(&conf)
        .args(["config", "dump"])
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{}{dump}", String::from_utf8_lossy(&out.stderr));
    let table = |name: &str| -> String {
        let start = dump.find(&format!("[{name}]\n")).unwrap_or_else(|| panic!("no [{name}] in:\n{dump}"));
        let body = &dump[start + name.len() + 3..];
        body[..body.find("\n\n").unwrap_or(body.len())].to_owned()
    };
    assert!(dump.starts_with("version = 3"), "{dump}");
    let images = table("plugins.'io.containerd.cri.v1.images'.pinned_images");
    assert!(images.contains(&format!("sandbox = '{}'", kubeforge::render::SANDBOX_IMAGE)), "{images}");
    let rt = "plugins.'io.containerd.cri.v1.runtime'";
    assert!(table(&format!("{rt}.containerd")).contains("default_runtime_name = 'runc'"));
    let runc = table(&format!("{rt}.containerd.runtimes.runc"));
    assert!(runc.contains("runtime_type = 'io.containerd.runc.v2'"), "{runc}");
    assert!(table(&format!("{rt}.containerd.runtimes.runc.options")).contains("SystemdCgroup = true"));
    let cni = table(&format!("{rt}.cni"));
    assert!(
        cni.contains("bin_dirs = ['/opt/cni/bin']") && cni.contains("conf_dir = '/etc/cni/net.d'"),
        "{cni}"
    );
    // The version 2 file kubeforge writes for a containerd 1.x is no version 3 file.
    assert!(kubeforge::render::containerd_config(Some("v1.7.29")).contains("version = 2"));
}
