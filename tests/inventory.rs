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

fn validate_timed(path: &Path) -> (std::process::Output, std::time::Duration) {
    let t0 = std::time::Instant::now();
    let out = validate(path);
    (out, t0.elapsed())
}

/// Fast enough to mean "refused before any real work": the cases below took 5 s to forever before.
const PROMPT: std::time::Duration = std::time::Duration::from_secs(3);

#[test]
fn special_files_are_refused_without_reading_them() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.yaml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    for (path, kind) in [
        (Path::new("/dev/zero").to_owned(), "a character device"),
        (fifo.clone(), "a FIFO (named pipe)"),
        (dir.path().to_owned(), "a directory"),
    ] {
        let (out, took) = validate_timed(&path);
        assert_eq!(out.status.code(), Some(2), "{}", path.display());
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            format!(
                "error: inventory {} is {kind}, not a regular file\n  hint: give the path of a YAML inventory file; see inventories/ for examples\n",
                path.display()
            )
        );
        assert!(took < PROMPT, "{} took {took:?}", path.display());
    }
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
