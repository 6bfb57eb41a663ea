//! End to end on real VMs (the lab) with the test artifact bundle: `kubeforge apply` installs a single-node
//! cluster, a second apply reports 0 changes, and the cluster is checked with real tools only: kubectl from
//! inside the lab network, etcdctl over TLS, systemctl, openssl s_client against 6443. The lab is always torn
//! down, also when an assertion fails.
//!
//! Runs when `KUBEFORGE_E2E=1` (the test command sets it, and then a missing prerequisite fails the test);
//! plain `cargo test` prints that it was not run. Needs root, the lab host tools
//! (`tests/lab/install-host-deps.sh`) and `KUBEFORGE_TEST_BUNDLE` (built by `tests/bundle/build.sh`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

struct Lab {
    dir: PathBuf,
    name: String,
}

impl Lab {
    fn kf(&self, args: &[&str]) -> std::process::Output {
        Command::new(env!("CARGO_BIN_EXE_kubeforge"))
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("run kubeforge")
    }
    /// Runs `argv` inside the lab's network namespace.
    fn exec(&self, argv: &[&str]) -> std::process::Output {
        let mut a = vec!["lab", "exec", "--name", &self.name, "--"];
        a.extend_from_slice(argv);
        self.kf(&a)
    }
    fn ssh(&self, node: &str, cmd: &str) -> std::process::Output {
        self.kf(&["lab", "ssh", "--name", &self.name, node, "--", cmd])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let out = self.kf(&["lab", "down", "--name", &self.name]);
        eprintln!(
            "[e2e] lab down: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn text(o: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn must(o: std::process::Output, what: &str) -> String {
    assert!(o.status.success(), "{what} failed ({}):\n{}", o.status, text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn apply_installs_a_single_node_cluster_and_reapply_changes_nothing() {
    if std::env::var("KUBEFORGE_E2E").as_deref() != Ok("1") {
        eprintln!("not run: set KUBEFORGE_E2E=1 (root, lab host tools, KUBEFORGE_TEST_BUNDLE)");
        return;
    }
    let bundle = PathBuf::from(
        std::env::var("KUBEFORGE_TEST_BUNDLE").expect("KUBEFORGE_TEST_BUNDLE must name the test bundle"),
    );
    assert!(bundle.join("manifest.json").is_file(), "{} is not a bundle", bundle.display());
    let kubectl = bundle.join(
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(bundle.join("manifest.json")).unwrap())
            .unwrap()["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["component"] == "kubectl")
            .expect("kubectl in the bundle")["file"]
            .as_str()
            .unwrap(),
    );
    let work = tempfile::tempdir().unwrap();
    let name = format!("e2e{}", std::process::id() % 10000);
    let t = Instant::now();
    let lab = Lab { dir: work.path().to_path_buf(), name: name.clone() };
    let bundle_s = bundle.to_str().unwrap();
    let up = lab.kf(&[
        "lab",
        "up",
        "--name",
        &name,
        "--nodes",
        "1",
        "--topology",
        "single",
        "--bundle",
        bundle_s,
        "--timings",
        "--ssh-timeout",
        "600",
    ]);
    eprintln!("[e2e] lab up ({:.0}s):\n{}", t.elapsed().as_secs_f64(), text(&up));
    assert!(up.status.success(), "lab up failed");
    let inv = format!("lab/{name}/inventory.yaml");
    let me = env!("CARGO_BIN_EXE_kubeforge");
    let apply = |extra: &[&str]| {
        let mut a = vec![me, "apply", "-i", &inv, "--ignore-preflight-errors=cpu,memory"];
        a.extend_from_slice(extra);
        let t = Instant::now();
        let o = lab.exec(&a);
        eprintln!("[e2e] apply {extra:?} ({:.0}s):\n{}", t.elapsed().as_secs_f64(), text(&o));
        o
    };

    let dry = must(apply(&["--dry-run"]), "apply --dry-run");
    assert!(
        dry.contains("[etcd] node1:") && dry.contains("+ /usr/local/bin/etcd"),
        "dry-run shows the plan:\n{dry}"
    );
    assert!(!dry.contains("BEGIN"), "no key material in the plan");
    let check = lab.ssh("node1", "test -e /usr/local/bin/etcd && echo present || echo absent");
    assert_eq!(String::from_utf8_lossy(&check.stdout).trim(), "absent", "the dry-run wrote nothing");

    let first = must(apply(&[]), "apply");
    assert!(first.contains("apply: ") && !first.contains("apply: 0 changes"), "{first}");
    let second = must(apply(&[]), "second apply");
    assert!(second.contains("apply: 0 changes"), "a converged cluster must report 0 changes:\n{second}");

    // Real kubectl, from the lab network, with the admin kubeconfig kubeforge issued.
    let admin = work.path().join(format!("pki/{name}/admin.conf"));
    let nodes = must(
        lab.exec(&[
            kubectl.to_str().unwrap(),
            "--kubeconfig",
            admin.to_str().unwrap(),
            "get",
            "nodes",
            "-o",
            "json",
        ]),
        "kubectl get nodes",
    );
    let v: serde_json::Value = serde_json::from_str(&nodes).unwrap();
    let items = v["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    let node = &items[0];
    assert_eq!(node["metadata"]["name"], "node1");
    let ready =
        node["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
    assert_eq!(ready["status"], "True");
    assert!(node["metadata"]["labels"].get("node-role.kubernetes.io/control-plane").is_some(), "{node}");
    assert_eq!(node["status"]["nodeInfo"]["kubeletVersion"], "v1.35.7");

    // Every unit active; etcd healthy over TLS with the health-check client certificate.
    must(lab.ssh("node1", "systemctl is-active etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy containerd"), "units active");
    let health = must(
        lab.ssh("node1", "ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 --cacert=/etc/kubernetes/pki/etcd/ca.crt --cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt --key=/etc/kubernetes/pki/etcd/healthcheck-client.key endpoint health --cluster"),
        "etcdctl endpoint health",
    );
    assert!(health.contains("is healthy"), "{health}");
    let mode = must(
        lab.ssh("node1", "stat -c %a /etc/kubernetes/pki/apiserver.key /etc/kubernetes/pki/ca.key"),
        "key modes",
    );
    assert_eq!(mode.split_whitespace().collect::<Vec<_>>(), ["600", "600"]);

    // The API presents a certificate that chains to the cluster CA.
    let ca = work.path().join(format!("pki/{name}/ca.crt"));
    let s = must(
        lab.exec(&[
            "sh",
            "-c",
            &format!(
                "openssl s_client -connect 10.77.0.11:6443 -CAfile {} -verify_return_error </dev/null 2>&1",
                ca.display()
            ),
        ]),
        "openssl s_client",
    );
    assert!(s.contains("Verify return code: 0 (ok)"), "{s}");
    eprintln!("[e2e] total {:.0}s", t.elapsed().as_secs_f64());
    let _ = Path::new("");
}
