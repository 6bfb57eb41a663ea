//! Stamps the binary with the commit it was built from (`kubeforge version`); `unknown` outside a git
//! checkout (a crate tarball).
fn main() {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "unknown".into());
    // `--no-optional-locks`: a plain `git status` refreshes the index's stat cache and writes `.git/index`,
    // which this script watches: every cargo command after a fresh clone would then run it again and rebuild
    // the crate and everything built on it (three times in the test suite).
    let dirty = std::process::Command::new("git")
        .args(["--no-optional-locks", "status", "--porcelain", "--untracked-files=no"])
        .output()
        .ok()
        .is_some_and(|o| o.status.success() && !o.stdout.is_empty());
    println!(
        "cargo:rustc-env=KUBEFORGE_COMMIT={commit}{}",
        if dirty && commit != "unknown" { "-dirty" } else { "" }
    );
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/index");
}
