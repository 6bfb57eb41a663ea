//! Fixture release trees for the artifacts tests: fake (but distinct, per arch) executables packed the way
//! each upstream project packs them, with checksum files in each project's own format, published on a
//! [`TestServer`] under the mirror layout.
#![allow(dead_code)]

use super::http::TestServer;
use kubeforge::artifacts::progress::{Bar, Progress};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Mutex;

pub const KUBE: &str = "v1.35.7";
pub const ETCD: &str = "v3.6.6";
pub const CONTAINERD: &str = "2.1.5";
pub const RUNC: &str = "1.3.3";
pub const CNI: &str = "1.8.0";
pub const CRICTL: &str = "v1.35.0";
pub const ARCHES: [&str; 2] = ["amd64", "arm64"];

pub fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Deterministic executable content, `size` bytes, unique per name and arch.
pub fn exe(name: &str, arch: &str, size: usize) -> Vec<u8> {
    let mut out = format!("#!/bin/sh\necho '{name} {arch}'\nexit 0\n#").into_bytes();
    let mut seed = Sha256::digest(format!("{name}/{arch}").as_bytes()).to_vec();
    while out.len() < size {
        seed = Sha256::digest(&seed).to_vec();
        out.extend_from_slice(&seed);
    }
    out.truncate(size.max(40));
    out
}

pub fn targz(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    for (path, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_cksum();
        b.append_data(&mut h, path, &data[..]).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// What the fixture published: every executable's expected bytes by `(arch, name)`.
pub struct Fixture {
    pub executables: BTreeMap<(String, String), Vec<u8>>,
    /// Path of each kube binary on the server, by `(arch, name)`.
    pub kube_paths: BTreeMap<(String, String), String>,
    /// A pin for every published release file (`component/arch` → `sha256:<hex>`), as a plain-HTTP mirror
    /// (which this server is) needs them.
    pub pins: BTreeMap<String, String>,
}

impl Fixture {
    /// The pins as a `releaseSource` YAML flow mapping: `{kubelet/amd64: "sha256:…", …}`.
    pub fn pins_yaml(&self) -> String {
        let items: Vec<String> = self.pins.iter().map(|(k, v)| format!("{k}: \"{v}\"")).collect();
        format!("{{{}}}", items.join(", "))
    }
}

pub const KUBE_BINS: [&str; 6] =
    ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kubelet", "kube-proxy"];

/// Publishes a complete mirror for both arches.
pub fn publish_mirror(srv: &TestServer) -> Fixture {
    let mut executables = BTreeMap::new();
    let mut kube_paths = BTreeMap::new();
    let mut pins = BTreeMap::new();
    let mut pin = |unit: &str, arch: &str, file: &[u8]| {
        pins.insert(format!("{unit}/{arch}"), format!("sha256:{}", sha(file)));
    };
    let mut put_exe = |arch: &str, name: &str, data: &Vec<u8>| {
        executables.insert((arch.to_owned(), name.to_owned()), data.clone());
    };
    let gh = "/github.com";
    let mut etcd_sums = String::new();
    let mut runc_sums = String::new();
    for arch in ARCHES {
        for (i, bin) in KUBE_BINS.iter().enumerate() {
            // kube-apiserver is large enough to be sent in several chunks, for the resume tests.
            let data = exe(bin, arch, if i == 0 { 600_000 } else { 2_000 + i });
            let p = format!("/release/{KUBE}/bin/linux/{arch}/{bin}");
            srv.put(&p, data.clone());
            srv.put(&format!("{p}.sha256"), sha(&data));
            pin(bin, arch, &data);
            put_exe(arch, bin, &data);
            kube_paths.insert((arch.to_owned(), bin.to_string()), p);
        }
        // etcd: one directory inside the tarball, SHA256SUMS covering every file of the release.
        let top = format!("etcd-{ETCD}-linux-{arch}");
        let files: Vec<(String, Vec<u8>)> = ["etcd", "etcdctl", "etcdutl"]
            .iter()
            .map(|n| (format!("{top}/{n}"), exe(n, arch, 3000)))
            .chain([(format!("{top}/README.md"), b"# etcd".to_vec())])
            .collect();
        for (p, d) in &files[..3] {
            put_exe(arch, p.rsplit('/').next().unwrap(), d);
        }
        let tgz = targz(&files.iter().map(|(p, d)| (p.as_str(), d.clone())).collect::<Vec<_>>());
        let name = format!("{top}.tar.gz");
        etcd_sums.push_str(&format!("{}  {name}\n", sha(&tgz)));
        pin("etcd", arch, &tgz);
        srv.put(&format!("{gh}/etcd-io/etcd/releases/download/{ETCD}/{name}"), tgz);

        // containerd: bin/*, `<file>.sha256sum` in sha256sum format.
        let files: Vec<(&str, Vec<u8>)> = ["containerd", "containerd-shim-runc-v2", "ctr"]
            .iter()
            .map(|n| {
                let d = exe(n, arch, 2500);
                put_exe(arch, n, &d);
                (
                    match *n {
                        "containerd" => "bin/containerd",
                        "ctr" => "bin/ctr",
                        _ => "bin/containerd-shim-runc-v2",
                    },
                    d,
                )
            })
            .collect();
        let tgz = targz(&files);
        let name = format!("containerd-{CONTAINERD}-linux-{arch}.tar.gz");
        let base = format!("{gh}/containerd/containerd/releases/download/v{CONTAINERD}");
        srv.put(&format!("{base}/{name}.sha256sum"), format!("{}  {name}\n", sha(&tgz)));
        pin("containerd", arch, &tgz);
        srv.put(&format!("{base}/{name}"), tgz);

        // runc: a bare binary per arch, one `runc.sha256sum` with `*` names.
        let d = exe("runc", arch, 2200);
        put_exe(arch, "runc", &d);
        runc_sums.push_str(&format!("{} *runc.{arch}\n", sha(&d)));
        pin("runc", arch, &d);
        srv.put(&format!("{gh}/opencontainers/runc/releases/download/v{RUNC}/runc.{arch}"), d);

        // CNI plugins: top-level `./<plugin>` plus a LICENSE that must not be installed.
        let mut files: Vec<(&str, Vec<u8>)> = Vec::new();
        for n in ["bridge", "host-local", "loopback", "portmap"] {
            let d = exe(n, arch, 2100);
            put_exe(arch, n, &d);
            files.push((Box::leak(format!("./{n}").into_boxed_str()), d));
        }
        files.push(("./LICENSE", b"Apache".to_vec()));
        let tgz = targz(&files);
        let name = format!("cni-plugins-linux-{arch}-v{CNI}.tgz");
        let base = format!("{gh}/containernetworking/plugins/releases/download/v{CNI}");
        srv.put(&format!("{base}/{name}.sha256"), format!("{}  {name}\n", sha(&tgz)));
        pin("cni-plugins", arch, &tgz);
        srv.put(&format!("{base}/{name}"), tgz);

        // crictl: a bare digest file.
        let d = exe("crictl", arch, 2300);
        put_exe(arch, "crictl", &d);
        let tgz = targz(&[("crictl", d)]);
        let name = format!("crictl-{CRICTL}-linux-{arch}.tar.gz");
        let base = format!("{gh}/kubernetes-sigs/cri-tools/releases/download/{CRICTL}");
        srv.put(&format!("{base}/{name}.sha256"), sha(&tgz));
        pin("crictl", arch, &tgz);
        srv.put(&format!("{base}/{name}"), tgz);
    }
    srv.put(&format!("{gh}/etcd-io/etcd/releases/download/{ETCD}/SHA256SUMS"), etcd_sums);
    srv.put(&format!("{gh}/opencontainers/runc/releases/download/v{RUNC}/runc.sha256sum"), runc_sums);
    Fixture { executables, kube_paths, pins }
}

/// An inventory: one amd64 control plane (stacked etcd) and one arm64 worker.
pub fn inventory_yaml(release_source: &str) -> String {
    format!(
        r#"cluster:
  name: lab
  kubernetesVersion: "{KUBE}"
  releaseSource: {release_source}
  components:
    etcd: "{ETCD}"
    containerd: "{CONTAINERD}"
    runc: "{RUNC}"
    cniPlugins: "{CNI}"
    crictl: "{CRICTL}"
hosts:
  - name: cp1
    address: 10.20.0.1
    roles: [control-plane, etcd]
  - name: w1
    address: 10.20.0.2
    roles: [worker]
    arch: arm64
"#
    )
}

/// Records every message; no bars.
#[derive(Default)]
pub struct Recorder {
    pub messages: Mutex<Vec<String>>,
}

struct NoBar;
impl Bar for NoBar {
    fn advance(&mut self, _: u64) {}
    fn finish(&mut self) {}
}

impl Progress for Recorder {
    fn begin(&self, _: &str, _: Option<u64>, _: u64) -> Box<dyn Bar> {
        Box::new(NoBar)
    }
    fn message(&self, line: &str) {
        self.messages.lock().unwrap().push(line.to_owned());
    }
}
