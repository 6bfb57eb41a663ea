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
