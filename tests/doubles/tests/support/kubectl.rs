//! The real kubectl, run with a kubeconfig and a private cache dir.
#![allow(dead_code)]

use std::process::Command;

use serde_json::Value;

use crate::cluster;

/// kubectl with one kubeconfig.
pub struct Kubectl {
    /// Kubeconfig path.
    pub kubeconfig: String,
    /// `--cache-dir` (discovery cache per test).
    pub cache: String,
}

impl Kubectl {
    /// Runs `kubectl args`: (exit code, stdout, stderr).
    pub fn run(&self, args: &[&str]) -> (i32, String, String) {
        self.run_as(&self.kubeconfig, args)
    }
    /// Runs with another kubeconfig.
    pub fn run_as(&self, kubeconfig: &str, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(cluster::kubectl())
            .arg(format!("--kubeconfig={kubeconfig}"))
            .arg(format!("--cache-dir={}", self.cache))
            .arg("--request-timeout=20s")
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args);
        assert_eq!(code, 0, "kubectl {args:?} failed:\n{out}\n{err}");
        out
    }
    /// `-o json` of a successful run.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }
}
