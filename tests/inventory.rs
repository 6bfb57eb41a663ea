//! Inventory validation, end to end through the binary: every example under `inventories/` is valid, and
//! every file in the catalogue `tests/inventories/bad/` fails with exit code 2 and exactly the message in
//! its `.expected` file (file, line, column, what is wrong, how to fix it).

use std::path::Path;
use std::process::Command;

fn validate(path: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kubeforge"))
        .args(["validate", "-i"])
        .arg(path)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run kubeforge")
}

fn files(dir: &str, ext: &str) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .map(|p| Path::new(dir).join(p.file_name().unwrap()))
        .collect();
    v.sort();
    v
}

#[test]
fn every_example_inventory_is_valid() {
    let examples = files("inventories", "yaml");
    assert!(examples.len() >= 3, "examples missing: {examples:?}");
    for f in examples {
        let out = validate(&f);
        assert!(
            out.status.success(),
            "{} should be valid:\n{}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_bad_inventory_fails_with_its_exact_message() {
    let bad = files("tests/inventories/bad", "yaml");
    assert!(bad.len() >= 20, "catalogue too small: {}", bad.len());
    let mut failures = Vec::new();
    for f in &bad {
        let out = validate(f);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let expected_path = Path::new(env!("CARGO_MANIFEST_DIR")).join(f.with_extension("expected"));
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("{} has no .expected file; it would print:\n{stderr}", f.display()));
        if out.status.code() != Some(2) {
            failures.push(format!("{}: exit {:?}, expected 2", f.display(), out.status.code()));
        }
        if stderr != expected {
            failures.push(format!("{}:\n--- expected\n{expected}--- got\n{stderr}", f.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn kubeforge_stdin(home: &Path, args: &[&str], stdin: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubeforge"))
        .args(args)
        .env("HOME", home)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run kubeforge");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

/// `vagrant ssh-config` for a two-machine Vagrantfile (keys under `keys`).
fn vagrant_ssh_config(keys: &Path) -> String {
    let host = |name: &str, ip: &str| {
        format!(
            "Host {name}\n  HostName {ip}\n  User vagrant\n  Port 22\n  UserKnownHostsFile /dev/null\n  \
             StrictHostKeyChecking no\n  PasswordAuthentication no\n  IdentityFile {}/{name}/private_key\n  \
             IdentitiesOnly yes\n  LogLevel FATAL\n  PubkeyAcceptedKeyTypes +ssh-rsa\n  HostKeyAlgorithms +ssh-rsa\n\n",
            keys.display()
        )
    };
    format!("{}{}", host("cp", "192.168.121.10"), host("node_2", "192.168.121.11"))
}

#[test]
fn inventory_init_from_vagrant_ssh_config_writes_a_valid_commented_inventory() {
    let tmp = tempfile::tempdir().unwrap();
    for m in ["cp", "node_2"] {
        std::fs::create_dir_all(tmp.path().join("keys").join(m)).unwrap();
        std::fs::write(tmp.path().join("keys").join(m).join("private_key"), "not read by validate").unwrap();
    }
    let cfg = vagrant_ssh_config(&tmp.path().join("keys"));
    let out_file = tmp.path().join("cluster.yaml");
    let o = out_file.to_str().unwrap();
    let (code, out, err) = kubeforge_stdin(
        tmp.path(),
        &["inventory", "init", "--from-ssh-config", "-", "--cluster-name", "vag", "-o", o],
        &cfg,
    );
    assert_eq!(code, 0, "{out}{err}");
    let text = std::fs::read_to_string(&out_file).unwrap();
    assert!(text.contains("no --roles were given, so the first host is the control plane"), "{text}");
    assert!(text.contains("kubeforge always checks host keys"), "{text}");
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(doc["cluster"]["name"].as_str(), Some("vag"));
    assert_eq!(doc["ssh"]["user"].as_str(), Some("vagrant"), "the common user is a default: {text}");
    let h = &doc["hosts"][1];
    assert_eq!(
        (h["name"].as_str(), h["address"].as_str()),
        (Some("node-2"), Some("192.168.121.11")),
        "{text}"
    );
    assert_eq!(h["roles"][0].as_str(), Some("worker"));
    assert_eq!(doc["hosts"][0]["roles"].as_sequence().unwrap().len(), 2, "control-plane, etcd: {text}");
    assert!(h["ssh"]["identityFile"].as_str().unwrap().ends_with("keys/node_2/private_key"), "{text}");
    assert!(doc["ssh"]["knownHosts"].is_null(), "/dev/null is not carried over: {text}");
    let out = validate(&out_file);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));

    // --roles, and standard output.
    let (code, out, err) = kubeforge_stdin(
        tmp.path(),
        &["inventory", "init", "--from-ssh-config", "-", "--roles", "node_2=control-plane,etcd,worker"],
        &cfg,
    );
    assert_eq!(code, 0, "{err}");
    let doc: serde_yaml::Value = serde_yaml::from_str(&out).unwrap();
    assert_eq!(doc["hosts"][0]["roles"][0].as_str(), Some("worker"));
    assert_eq!(doc["hosts"][1]["roles"].as_sequence().unwrap().len(), 3);

    // Input errors exit 2 and write nothing: an existing file, an unknown host in --roles, roles that
    // make an invalid inventory, forwarded ports on one address.
    let (code, _, err) =
        kubeforge_stdin(tmp.path(), &["inventory", "init", "--from-ssh-config", "-", "-o", o], &cfg);
    assert_eq!(code, 2);
    assert!(err.contains("exists already"), "{err}");
    let (code, _, err) = kubeforge_stdin(
        tmp.path(),
        &["inventory", "init", "--from-ssh-config", "-", "--roles", "cp2=worker"],
        &cfg,
    );
    assert_eq!(code, 2);
    assert!(err.contains("no host `cp2`") && err.contains("hosts: cp, node_2"), "{err}");
    let (code, _, err) = kubeforge_stdin(
        tmp.path(),
        &["inventory", "init", "--from-ssh-config", "-", "--roles", "cp=etcd", "--roles", "node_2=etcd"],
        &cfg,
    );
    assert_eq!(code, 2);
    assert!(err.contains("would not be valid") && err.contains("control-plane"), "{err}");
    // A host that another is reached through (ProxyJump) is its bastion, not a cluster host.
    let with_jump = format!("{cfg}Host bastion\n  HostName 192.168.121.2\n  Port 2200\n")
        .replace("Host node_2\n", "Host node_2\n  ProxyJump bastion\n");
    let (code, out, err) =
        kubeforge_stdin(tmp.path(), &["inventory", "init", "--from-ssh-config", "-"], &with_jump);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("# Jump hosts (ProxyJump) are not cluster hosts: bastion."), "{out}");
    let doc: serde_yaml::Value = serde_yaml::from_str(&out).unwrap();
    assert_eq!(doc["hosts"].as_sequence().unwrap().len(), 2, "{out}");
    let b = &doc["hosts"][1]["ssh"]["bastion"];
    assert_eq!((b["address"].as_str(), b["port"].as_u64()), (Some("192.168.121.2"), Some(2200)), "{out}");

    let forwarded = cfg.replace("192.168.121.10", "127.0.0.1").replace("192.168.121.11", "127.0.0.1");
    let (code, _, err) =
        kubeforge_stdin(tmp.path(), &["inventory", "init", "--from-ssh-config", "-"], &forwarded);
    assert_eq!(code, 2);
    assert!(err.contains("hosts cp, node_2 share the address 127.0.0.1"), "{err}");
}
