//! The interrupt policy through the binary: a read-only command stops at once on Ctrl-C (exit 130) or
//! SIGTERM (exit 143), and the scratch copy of the PKI store it made (CA and service-account keys inside)
//! is gone afterwards. The command is held where the scratch copy exists: fetching release checksums from a
//! mirror on 127.0.0.1 that accepts connections and never answers.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn scratch_dirs(pki: &Path) -> Vec<String> {
    std::fs::read_dir(pki)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".scratch-"))
                .collect()
        })
        .unwrap_or_default()
}

fn interrupted_status(signal: nix::sys::signal::Signal) -> (i32, Vec<String>, String) {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    // Accept and hold every connection, never answering.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming().flatten() {
            held.push(c);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("inv.yaml");
    std::fs::write(
        &inv,
        format!(
            "cluster:\n  name: sig\n  kubernetesVersion: v1.35.7\n  releaseSource: {{type: mirror, url: \"https://127.0.0.1:{port}\"}}\nhosts:\n  - {{name: n1, address: 127.0.0.1, internalAddress: 10.20.0.11, roles: [control-plane, etcd, worker]}}\n"
        ),
    )
    .unwrap();
    let me = env!("CARGO_BIN_EXE_kubeforge");
    let gen = Command::new(me).args(["certs", "generate", "-i"]).arg(&inv).output().unwrap();
    assert!(gen.status.success(), "{}", String::from_utf8_lossy(&gen.stderr));
    let pki = dir.path().join("pki");
    let mut child = Command::new(me)
        .args(["status", "-i"])
        .arg(&inv)
        .env("KUBEFORGE_CACHE_DIR", dir.path().join("cache"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while scratch_dirs(&pki).is_empty() {
        assert!(t.elapsed() < Duration::from_secs(30), "status never made its scratch copy");
        assert!(child.try_wait().unwrap().is_none(), "status ended before it could be interrupted");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The copy holds the keys.
    let copy = pki.join(&scratch_dirs(&pki)[0]).join("sig/ca.key");
    let t = Instant::now();
    while !copy.exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(copy.exists(), "the scratch copy holds the CA key");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "a read-only command stops at once");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    use std::io::Read;
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (status.code().unwrap_or(-1), scratch_dirs(&pki), err)
}

#[test]
fn ctrl_c_stops_a_read_only_command_at_once_and_removes_its_scratch_keys() {
    let (code, left, err) = interrupted_status(nix::sys::signal::Signal::SIGINT);
    assert_eq!(code, 130, "{err}");
    assert!(left.is_empty(), "scratch copies left: {left:?}");
    assert!(err.contains("interrupted: stopping now"), "{err}");
}

#[test]
fn sigterm_stops_at_once_and_removes_the_scratch_keys() {
    let (code, left, err) = interrupted_status(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(code, 143, "{err}");
    assert!(left.is_empty(), "scratch copies left: {left:?}");
}
