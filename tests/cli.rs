//! The command-line contract, through the binary (no machines): exit codes (0 ok, 1 a check found a
//! problem, 2 usage or input error), flags checked before any work, `-o table|json|yaml` documents,
//! `--dry-run`/`--yes` and the refusal to ask without a terminal, `version`, `completion`, `man`.
//!
//! The inventories here point at 127.0.0.1 ports nothing listens on: a command that wrongly went ahead
//! would fail to connect, and the tests check it never got that far (nothing written, exit 2).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn kubeforge(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubeforge"))
        .args(args)
        .current_dir(dir)
        .env("HOME", dir)
        .env("KUBEFORGE_CACHE_DIR", dir.join("cache"))
        .stdin(Stdio::null())
        .output()
        .expect("run kubeforge")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A two-host inventory on closed local ports, in a fresh directory.
fn lab() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("inv.yaml");
    std::fs::write(
        &inv,
        "cluster:\n  name: c\n  kubernetesVersion: v1.35.7\n\
         ssh:\n  user: root\n  port: 1\n  connectTimeout: 2s\n\
         hosts:\n\
         \x20 - {name: cp1, address: 127.0.0.1, internalAddress: 10.9.0.1, roles: [control-plane, etcd]}\n\
         \x20 - {name: w1, address: 127.0.0.2, internalAddress: 10.9.0.2, roles: [worker]}\n",
    )
    .unwrap();
    (dir, inv)
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

#[test]
fn the_inventory_used_here_is_valid() {
    let (dir, inv) = lab();
    let o = kubeforge(&["validate", "-i", inv.to_str().unwrap()], dir.path());
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    assert!(text(&o).contains("(direct)") || text(&o).contains("(local-lb)"), "no Debug names: {}", text(&o));
}

#[test]
fn bad_flag_values_are_usage_errors_found_before_any_work() {
    let (dir, inv) = lab();
    let i = inv.to_str().unwrap();
    for (args, says) in [
        (vec!["apply", "-i", i, "--concurrency", "0"], "at least 1"),
        (vec!["apply", "-i", i, "--batch", "0"], "at least 1"),
        (vec!["apply", "-i", i, "--ignore-preflight-errors=bogus"], "no preflight check is named `bogus`"),
        (vec!["apply", "-i", i, "--ignore-preflight-errors=memroy"], "did you mean `memory`"),
        (vec!["apply", "-i", i, "--phases", "bogus"], "unknown phase `bogus`"),
        (vec!["apply", "-i", i, "--hosts", "nosuch"], "no host named `nosuch`"),
        (vec!["apply", "-i", i, "--hosts", "@master"], "unknown role `master`"),
        (vec!["apply", "-i", i, "--plan", "missing.json"], "cannot read the plan missing.json"),
        (vec!["reset", "-i", i, "--hosts", "nosuch", "--yes"], "no host named `nosuch`"),
        (vec!["join", "-i", i, "--hosts", "@nosuch"], "unknown role `nosuch`"),
        (vec!["status", "-i", i, "-o", "xml"], "invalid value 'xml'"),
        (vec!["reset", "-i", i, "--dry-run", "--yes"], "contradict"),
    ] {
        let o = kubeforge(&args, dir.path());
        assert_eq!(code(&o), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(says), "{args:?} should say {says:?}:\n{}", text(&o));
        // Nothing was prepared: no PKI store, no cache, no connection attempt.
        assert!(!dir.path().join("pki").exists(), "{args:?} wrote a PKI store");
        assert!(!text(&o).contains("connect"), "{args:?} connected:\n{}", text(&o));
    }
}

#[test]
fn destructive_commands_refuse_to_ask_without_a_terminal() {
    let (dir, inv) = lab();
    let i = inv.to_str().unwrap();
    for args in [
        vec!["reset", "-i", i],
        vec!["remove-node", "-i", i, "w1"],
        vec!["restore", "-i", i, "--from", "missing.tar.gz"],
    ] {
        let o = kubeforge(&args, dir.path());
        assert_eq!(code(&o), Some(2), "{args:?}: {}", text(&o));
        let t = text(&o);
        assert!(t.contains("no terminal to ask on") && t.contains("--dry-run") && t.contains("--yes"), "{t}");
        assert!(!dir.path().join("pki").exists(), "{args:?} wrote a PKI store");
    }
}

#[test]
fn version_prints_the_commit_and_the_kubernetes_range_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let o = kubeforge(&["version"], dir.path());
    assert_eq!(code(&o), Some(0));
    assert!(
        text(&o).starts_with(&format!("kubeforge {} (commit ", env!("CARGO_PKG_VERSION"))),
        "{}",
        text(&o)
    );
    let o = kubeforge(&["version", "-o", "json"], dir.path());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["kind"], "Version");
    assert_eq!(v["apiVersion"], "kubeforge/v1");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["commit"].as_str().is_some_and(|c| !c.is_empty()), "{v}");
    let minors = v["kubernetesMinors"].as_array().unwrap();
    assert!(minors.iter().any(|m| m == "v1.35"), "{v}");
    let o = kubeforge(&["version", "-o", "yaml"], dir.path());
    let y: serde_json::Value = serde_yaml::from_slice(&o.stdout).unwrap();
    assert_eq!(y, v);
}

#[test]
fn validate_prints_a_document_with_every_role() {
    let (dir, inv) = lab();
    let o = kubeforge(&["validate", "-i", inv.to_str().unwrap(), "-o", "json"], dir.path());
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["kind"], "Validation");
    assert_eq!(v["valid"], true);
    assert_eq!(v["controlPlanes"], serde_json::json!(["cp1"]));
    assert_eq!(v["nodes"], serde_json::json!(["cp1", "w1"]));
    assert_eq!(v["kubernetesVersion"], "v1.35.7");
}

#[test]
fn completion_and_man_pages_cover_every_command() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let o = kubeforge(&["completion", shell], dir.path());
        assert_eq!(code(&o), Some(0), "{shell}");
        let script = String::from_utf8_lossy(&o.stdout);
        assert!(script.contains("kubeforge") && script.contains("remove-node"), "{shell}: {script:.200}");
    }
    let o = kubeforge(&["man", "--out", "man"], dir.path());
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    for page in ["kubeforge.1", "kubeforge-apply.1", "kubeforge-upgrade-apply.1", "kubeforge-certs-renew.1"] {
        let p = dir.path().join("man").join(page);
        let body = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(body.contains(".TH"), "{page} is not a man page");
    }
    assert!(!dir.path().join("man/kubeforge-api-lb.1").exists(), "hidden commands get no page");
}

#[test]
fn an_inventory_on_standard_input_is_named_stdin() {
    use std::io::Write;
    let (dir, inv) = lab();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubeforge"))
        .args(["validate", "-i", "-"])
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&std::fs::read(&inv).unwrap()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), Some(0), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("<stdin>: valid"), "{}", text(&o));
}
