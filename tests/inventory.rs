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
        &["inventory", "init", "--from-ssh-config", "-", "--cluster-name", "vag", "--out", o],
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
        kubeforge_stdin(tmp.path(), &["inventory", "init", "--from-ssh-config", "-", "--out", o], &cfg);
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

    // VirtualBox: both machines on 127.0.0.1, each behind its own forwarded port.
    let forwarded = cfg
        .replace(
            "HostName 192.168.121.10\n  User vagrant\n  Port 22",
            "HostName 127.0.0.1\n  User vagrant\n  Port 2222",
        )
        .replace(
            "HostName 192.168.121.11\n  User vagrant\n  Port 22",
            "HostName 127.0.0.1\n  User vagrant\n  Port 2200",
        );
    assert_eq!(forwarded.matches("127.0.0.1").count(), 2, "{forwarded}");
    let init = |extra: &[&str], text: &str| {
        let mut args = vec!["inventory", "init", "--from-ssh-config", "-"];
        args.extend_from_slice(extra);
        kubeforge_stdin(tmp.path(), &args, text)
    };
    let (code, _, err) = init(&["--internal-address", "cp=192.168.56.10"], &forwarded);
    assert_eq!(code, 2);
    assert!(err.contains("hosts cp, node_2 share the address 127.0.0.1"), "{err}");
    assert!(err.contains("hint: give each its address on the network the machines share (e.g. a VirtualBox host-only network): --internal-address node_2=IP\n"), "{err}");
    let (code, _, err) = init(&["--internal-address", "node2=192.168.56.11"], &forwarded);
    assert_eq!(code, 2);
    assert!(
        err.contains("the ssh config has no host `node2`\n  hint: did you mean `node_2`? hosts: cp, node_2"),
        "{err}"
    );
    let both = ["--internal-address", "cp=192.168.56.10", "--internal-address", "node_2=192.168.56.11"];
    let (code, out, err) = init(&both, &forwarded);
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    let doc: serde_yaml::Value = serde_yaml::from_str(&out).unwrap();
    let h = &doc["hosts"][1];
    assert_eq!(
        (h["address"].as_str(), h["internalAddress"].as_str(), h["ssh"]["port"].as_u64()),
        (Some("127.0.0.1"), Some("192.168.56.11"), Some(2200)),
        "{out}"
    );
    let forwarded_file = tmp.path().join("forwarded.yaml");
    std::fs::write(&forwarded_file, &out).unwrap();
    let v = validate(&forwarded_file);
    assert!(v.status.success(), "{out}\n{}", String::from_utf8_lossy(&v.stderr));
    // The same port twice is one machine.
    let (code, _, err) = init(&both, &forwarded.replace("Port 2200", "Port 2222"));
    assert_eq!(code, 2);
    assert!(
        err.contains("hosts cp, node_2 are one machine: each is reached at 127.0.0.1 port 2222"),
        "{err}"
    );

    // A key file that does not exist yet: the inventory is written, with a warning.
    let missing = cfg.replace("node_2/private_key", "node_3/private_key");
    let (code, out, err) = init(&[], &missing);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("node_3/private_key"), "{out}");
    assert!(
        err.starts_with("warning: hosts[1].ssh.identityFile: identity file `")
            && err.contains("node_3/private_key` does not exist yet"),
        "{err}"
    );
}

fn validate_timed(path: &Path) -> (std::process::Output, std::time::Duration) {
    let t0 = std::time::Instant::now();
    let out = validate(path);
    (out, t0.elapsed())
}

/// Fast enough to mean "refused before any real work": the cases below took 5 s to forever before.
const PROMPT: std::time::Duration = std::time::Duration::from_secs(3);

/// An inventory whose SSH key is a relative path (`keys/id`), for the tests of inventories read from streams.
const RELATIVE_KEY: &str = "cluster: {name: demo, kubernetesVersion: v1.35.7}\nssh: {identityFile: keys/id, knownHosts: kh}\nhosts:\n  - {name: cp1, address: 10.0.0.1, roles: [control-plane, etcd, worker]}\n";

/// `validate -i ARG` run in `cwd` with `stdin` as its standard input: (exit code, stdout, stderr).
fn validate_in(cwd: &Path, arg: &str, stdin: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubeforge"))
        .args(["validate", "-i", arg])
        .current_dir(cwd)
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

/// A directory with the key file and known_hosts that [`RELATIVE_KEY`] names.
fn key_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("keys")).unwrap();
    std::fs::write(dir.path().join("keys/id"), "-----BEGIN OPENSSH PRIVATE KEY-----\n").unwrap();
    std::fs::write(dir.path().join("kh"), "").unwrap();
    dir
}

#[test]
fn an_inventory_from_standard_input_resolves_relative_paths_in_the_current_directory() {
    let dir = key_dir();
    let (code, out, err) = validate_in(dir.path(), "-", RELATIVE_KEY);
    assert_eq!((code, err.as_str()), (0, ""), "{out}");
    // Elsewhere, `keys/id` is looked for in that directory, and problems are placed in `<stdin>`.
    let other = tempfile::tempdir().unwrap();
    let (code, _, err) = validate_in(other.path(), "-", RELATIVE_KEY);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("<stdin>:2:21: identity file `keys/id` does not exist (looked at ./keys/id)"),
        "{err}"
    );
    let (code, _, err) = validate_in(other.path(), "-", "cluster: [\n");
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with("error: <stdin> has 1 problem\n  <stdin>:1:10: "), "{err}");
}

#[test]
fn an_inventory_from_a_fifo_or_process_substitution_is_read() {
    let dir = key_dir();
    let fifo = dir.path().join("fifo.yaml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    // The writer comes after kubeforge has opened the FIFO, as with `mkfifo` and a second shell.
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::write(fifo, RELATIVE_KEY).unwrap())
    };
    let (code, _, err) = validate_in(dir.path(), "fifo.yaml", "");
    // Checked before joining: a writer whose reader failed would wait for one forever.
    assert_eq!((code, err.as_str()), (0, ""));
    writer.join().unwrap();
    // `-i <(...)`: bash passes /dev/fd/63, whose directory means nothing; `keys/id` is in the current one.
    std::fs::write(dir.path().join("inv.yaml"), RELATIVE_KEY).unwrap();
    let o = Command::new("bash")
        .arg("-c")
        .arg(format!("exec '{}' validate -i <(cat inv.yaml)", env!("CARGO_BIN_EXE_kubeforge")))
        .current_dir(dir.path())
        .output()
        .expect("run bash");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stderr), "");
}

#[test]
fn endless_streams_stop_at_the_size_limit_and_directories_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for (path, message) in [
        (
            Path::new("/dev/zero").to_owned(),
            "error: inventory /dev/zero is larger than 4 MiB\n  hint: an inventory is a few kilobytes, even for thousands of hosts; check that the path names the inventory\n".to_string(),
        ),
        (
            dir.path().to_owned(),
            format!(
                "error: inventory {} is a directory, not a file\n  hint: give the path of a YAML inventory file; see inventories/ for examples\n",
                dir.path().display()
            ),
        ),
    ] {
        let (out, took) = validate_timed(&path);
        assert_eq!(out.status.code(), Some(2), "{}", path.display());
        assert_eq!(String::from_utf8_lossy(&out.stderr), message);
        assert!(took < PROMPT, "{} took {took:?}", path.display());
    }
    // Standard input past the limit.
    let big = format!("{RELATIVE_KEY}{}", "#\n".repeat(2 * 1024 * 1024 + 1));
    let (code, _, err) = validate_in(dir.path(), "-", &big);
    assert_eq!(code, 2);
    assert!(err.starts_with("error: inventory <stdin> is larger than 4 MiB\n"), "{err}");
}

#[test]
fn an_oversized_inventory_is_refused_before_parsing() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.yaml");
    let mut text = String::from("cluster: {name: demo, kubernetesVersion: v1.35.7}\nhosts: []\n");
    let line = format!("# {}\n", "x".repeat(1021));
    while text.len() <= 4 * 1024 * 1024 {
        text.push_str(&line);
    }
    std::fs::write(&big, &text).unwrap();
    let (out, took) = validate_timed(&big);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "error: inventory {} is larger than 4 MiB\n  hint: an inventory is a few kilobytes, even for thousands of hosts; check that the path names the inventory\n",
            big.display()
        )
    );
    assert!(took < PROMPT, "took {took:?}");
}

/// Inputs too large to keep in the catalogue: deep nesting (quadratic in both YAML parsers) and an alias
/// bomb whose every value is valid (one host with 1000 labels, repeated 10000 times through an alias).
#[test]
fn hostile_shapes_are_refused_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let head = "cluster:\n  name: demo\n  kubernetesVersion: v1.35.7\nhosts:\n";
    let host = "  - name: cp1\n    address: 10.0.0.1\n    roles: [control-plane, etcd, worker]\n";
    let n = 50_000;
    let mut bomb =
        format!("{head}  - &h\n    name: cp1\n    address: 10.0.0.1\n    roles: [worker]\n    labels:\n");
    for i in 0..1000 {
        bomb.push_str(&format!("      k{i}: v\n"));
    }
    bomb.push_str(&"  - *h\n".repeat(10_000));
    let cases = [
        (
            "flow.yaml",
            format!("{head}{host}    labels: {}{}\n", "[".repeat(n), "]".repeat(n)),
            "8:77: the document nests mappings and sequences more than 64 levels deep",
        ),
        (
            "block.yaml",
            format!("{head}{host}    taints:\n      {}x\n", "- ".repeat(n)),
            "9:129: the document nests mappings and sequences more than 64 levels deep",
        ),
        (
            "bomb.yaml",
            bomb,
            "1506:5: the document expands to more than 1000000 values through aliases (`*name`)",
        ),
    ];
    for (name, text, problem) in cases {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let (out, took) = validate_timed(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            stderr.starts_with(&format!(
                "error: {} has 1 problem\n  {}:{problem}\n",
                path.display(),
                path.display()
            )),
            "{name}: {stderr}"
        );
        assert!(took < PROMPT, "{name} took {took:?}");
    }
}

#[test]
fn every_warning_inventory_is_valid_and_prints_exactly_its_warnings() {
    let cases = files("tests/inventories/warn", "yaml");
    assert!(cases.len() >= 3, "warning catalogue too small: {}", cases.len());
    let mut failures = Vec::new();
    for f in &cases {
        let out = Command::new(env!("CARGO_BIN_EXE_kubeforge"))
            .args(["validate", "-i"])
            .arg(f)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("KUBEFORGE_TEST_UNSET_SUDO_PASSWORD")
            .output()
            .expect("run kubeforge");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let expected_path = Path::new(env!("CARGO_MANIFEST_DIR")).join(f.with_extension("expected"));
        let expected = std::fs::read_to_string(&expected_path)
            .unwrap_or_else(|_| panic!("{} has no .expected file; it would print:\n{stderr}", f.display()));
        if !out.status.success() {
            failures.push(format!("{}: exit {:?}, expected 0", f.display(), out.status.code()));
        }
        if stderr != expected {
            failures.push(format!("{}:\n--- expected\n{expected}--- got\n{stderr}", f.display()));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
