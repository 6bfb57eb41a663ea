//! The runner against simulated hosts: fake transports that keep the files they receive and the units they
//! were told to start, and answer the state probe from them. Golden dry-run plans for every example
//! inventory; a full apply followed by a dry run with 0 changes; a dry run that leaves `pki/` untouched;
//! the saved-plan round trip; rolling restarts of running control planes; pod subnets kept by node name.

use super::*;
use crate::exec::Executor;
use crate::report::{Event, Recorder};
use crate::transport::fake::{FakeTransport, Reply};
use std::collections::BTreeSet;

/// Where a simulated API host remembers deleted Nodes (a fake file per Node).
const SIM_DELETED: &str = "/sim/deleted-nodes";

/// A fake host that behaves like a machine for the runner: probes read its files and started units.
fn simulated(name: &str) -> Arc<FakeTransport> {
    let t = Arc::new(FakeTransport::new(name));
    let units: Arc<Mutex<BTreeSet<String>>> = Default::default();
    let u = units.clone();
    t.handle("sha256sum < \"$1\"", move |argv, fake| {
        // sh -c SCRIPT sh required... -- files... -- units...
        let args = &argv[4..];
        let mut parts = args.split(|a| a == "--");
        let _required = parts.next();
        let files = parts.next().unwrap_or_default();
        let unit_names = parts.next().unwrap_or_default();
        let mut out = String::new();
        for f in files {
            match fake.file(f) {
                Some(data) => {
                    use sha2::Digest;
                    out.push_str(&hex::encode(sha2::Sha256::digest(&data)));
                }
                None => out.push('-'),
            }
            out.push('\n');
        }
        let running = u.lock().unwrap();
        for n in unit_names {
            out.push_str(if running.contains(n) { "enabled active\n" } else { "missing inactive\n" });
        }
        Reply::ok(out)
    });
    // The identity probe: the marker and the CA, as the host holds them.
    t.handle("--- marker", |_, fake| {
        let show =
            |p: &str| fake.file(p).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        Reply::ok(format!(
            "--- marker\n{}\n--- ca\n{}\n--- end\n",
            show(crate::identity::MARKER_PATH),
            show(crate::identity::HOST_CA_PATH)
        ))
    });
    let u = units.clone();
    t.handle("systemctl restart --no-block", move |argv, _| {
        let args = &argv[4..];
        if let Some(pos) = args.iter().position(|a| a == "--") {
            u.lock().unwrap().extend(args[pos + 1..].iter().cloned());
        }
        Reply::ok("")
    });
    let u = units.clone();
    t.handle("disable --now", move |argv, fake| {
        let args = &argv[4..];
        let pos = args.iter().position(|a| a == "--").unwrap_or(args.len());
        let mut running = u.lock().unwrap();
        for unit in &args[..pos] {
            running.remove(unit);
        }
        for f in args.iter().skip(pos + 1) {
            fake.remove_file(f);
        }
        Reply::ok("")
    });
    // The API's Nodes: every name exists until a `delete node NAME` (remove-node's look-up); a deleted
    // Node is remembered as the fake file `SIM_DELETED/NAME`.
    t.handle("--ignore-not-found", move |argv, fake| {
        let after = |w: &str| argv.iter().position(|a| a == w).and_then(|i| argv.get(i + 1)).cloned();
        match (argv.iter().any(|a| a == "delete"), after("node")) {
            (true, Some(n)) => {
                fake.put_file(format!("{SIM_DELETED}/{n}"), Vec::new());
                Reply::ok("")
            }
            (false, Some(n)) if fake.file(&format!("{SIM_DELETED}/{n}")).is_none() => {
                Reply::ok(format!("node/{n}"))
            }
            _ => Reply::ok(""),
        }
    });
    t.permissive();
    t
}

/// Artifacts as small local files, one per executable, for every component and arch the model needs.
fn fake_artifacts(model: &ClusterModel, dir: &Path) -> BTreeMap<(Art, String), LocalArtifact> {
    fake_artifacts_padded(model, dir, 0)
}

/// [`fake_artifacts`] with every executable padded by `pad` bytes (real binaries are megabytes: a test about
/// transfers wants them large).
fn fake_artifacts_padded(
    model: &ClusterModel,
    dir: &Path,
    pad: usize,
) -> BTreeMap<(Art, String), LocalArtifact> {
    let mut out = BTreeMap::new();
    let arches: BTreeSet<String> = model.hosts.iter().map(|h| h.arch.clone()).collect();
    for arch in arches {
        for c in Art::ALL {
            let names: Vec<&str> = match c.executables() {
                Some(n) => n.to_vec(),
                None if c == Art::Containerd => vec!["containerd", "containerd-shim-runc-v2", "ctr"],
                None => vec!["bridge", "host-local", "loopback", "portmap"],
            };
            let version = match c {
                Art::Etcd | Art::Etcdctl => model.versions.etcd.to_string(),
                Art::Containerd => model.versions.containerd.to_string(),
                Art::Runc => model.versions.runc.to_string(),
                Art::CniPlugins => model.versions.cni_plugins.to_string(),
                Art::Crictl => model.versions.crictl.to_string(),
                Art::Kubectl => model.versions.kubectl.to_string(),
                _ => model.versions.kubernetes.to_string(),
            };
            let executables = names
                .iter()
                .map(|n| {
                    let path = dir.join(format!("{n}-{version}-{arch}"));
                    let mut content = format!("{n} {version} {arch}\n").into_bytes();
                    content.resize(content.len() + pad, 0);
                    std::fs::write(&path, &content).unwrap();
                    use sha2::Digest;
                    crate::artifacts::Executable {
                        name: n.to_string(),
                        path,
                        sha256: hex::encode(sha2::Sha256::digest(&content)),
                    }
                })
                .collect();
            let requirement = Requirement::new(c, &version, &arch).unwrap();
            let origin = crate::artifacts::source::Origin {
                component: c.name().into(),
                version: version.clone(),
                arch: arch.clone(),
                file_name: c.name().into(),
                path: dir.to_path_buf(),
                sha256: String::new(),
                kind: crate::artifacts::layout::Kind::Binary,
                source: "test".into(),
            };
            out.insert((c, arch.clone()), LocalArtifact { requirement, executables, origin, note: None });
        }
    }
    out
}

struct Harness {
    dir: tempfile::TempDir,
    hosts: BTreeMap<String, Arc<FakeTransport>>,
    /// Bytes added to every fake executable (0: tiny binaries).
    binary_pad: usize,
}

impl Harness {
    fn new(model: &ClusterModel) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("artifacts")).unwrap();
        let hosts = model.hosts.iter().map(|h| (h.name.clone(), simulated(&h.name))).collect();
        Harness { dir, hosts, binary_pad: 0 }
    }

    fn options(&self) -> ApplyOptions {
        let mut o = ApplyOptions::new(self.dir.path().join("pki"), self.dir.path().join("cache"));
        o.ignore_preflight = vec!["all".into()];
        // Balancer binaries for every architecture the example inventories use.
        let lb = self.dir.path().join("apilb");
        std::fs::create_dir_all(&lb).unwrap();
        for arch in ["amd64", "arm64"] {
            std::fs::write(lb.join(format!("kubeforge-apilb-linux-{arch}")), format!("apilb for {arch}"))
                .unwrap();
        }
        o.api_lb_dir = Some(lb);
        o
    }

    /// The session a command gets, on the simulated hosts and the fake artifacts, reporting to `rec`.
    fn session(&self, text: &str, options: ApplyOptions, rec: Arc<Recorder>) -> crate::session::Session {
        // The inventory as a file beside the store, as a user keeps it (`backup` archives its text).
        let path = self.dir.path().join("inventory.yaml");
        std::fs::write(&path, text).unwrap();
        let loaded = crate::inventory::parse(&path, text).unwrap();
        let model = ClusterModel::derive(&loaded);
        let transports: BTreeMap<String, Arc<dyn Transport>> =
            self.hosts.iter().map(|(n, t)| (n.clone(), t.clone() as Arc<dyn Transport>)).collect();
        let _ = model;
        // Each model's own versions (an upgrade moves between them).
        let (dir, pad) = (self.dir.path().join("artifacts"), self.binary_pad);
        crate::session::Session::new(loaded, transports, options, rec)
            .unwrap()
            .with_artifacts_from(Arc::new(move |m: &ClusterModel| fake_artifacts_padded(m, &dir, pad)))
    }

    /// One run, as `kubeforge apply` does it (the identity check, the material, the workflow), with the given
    /// options; returns the summary and the events.
    fn run(&self, text: &str, options: ApplyOptions) -> (Result<RunSummary>, Vec<Event>) {
        let rec = Arc::new(Recorder::default());
        let session = self.session(text, options.clone(), rec.clone());
        let result = session.block_on(execute(&session, &session.loaded, session.model(), &options));
        (result, rec.events())
    }
}

/// What the identity check says of the harness's hosts for `m`.
fn verified_of(h: &Harness, m: &ClusterModel) -> crate::identity::Verified {
    let transports: BTreeMap<String, Arc<dyn Transport>> =
        h.hosts.iter().map(|(n, t)| (n.clone(), t.clone() as Arc<dyn Transport>)).collect();
    let ex = Executor::new(4, Arc::new(crate::report::Silent));
    let names: Vec<String> = m.hosts.iter().map(|x| x.name.clone()).collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(guard(m, &h.options(), &names, &transports, &ex)).unwrap()
}

/// Every example inventory under `inventories/`, sorted (at least the three the README names).
fn example_inventories() -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("inventories");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 3, "examples missing: {files:?}");
    files
}

/// The dry-run text with what differs between runs (fresh keys, this test binary) masked.
fn masked(text: &str) -> String {
    text.lines()
        .map(|l| {
            let volatile =
                [".crt ", "sa.pub", "/converged/", "(cluster marker;"].iter().any(|v| l.contains(v));
            if volatile {
                match l.find(" (") {
                    Some(i) => format!("{} (<varies per run>)", &l[..i]),
                    None => l.to_owned(),
                }
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn golden_dry_run_plans_for_every_example_inventory() {
    for f in example_inventories() {
        let text = std::fs::read_to_string(&f).unwrap();
        let loaded = crate::inventory::parse(&f, &text).unwrap();
        let model = ClusterModel::derive(&loaded);
        let h = Harness::new(&model);
        let mut o = h.options();
        o.dry_run = true;
        let (summary, _) = h.run(&text, o);
        let summary = summary.unwrap_or_else(|e| panic!("{}: {}", f.display(), e.report()));
        let name = f.file_stem().unwrap().to_string_lossy().into_owned();
        insta::assert_snapshot!(format!("dry_run_{name}"), masked(&summary.plan.text_verbose()));
        for t in h.hosts.values() {
            assert!(
                t.calls().iter().all(|c| matches!(c, crate::transport::fake::Call::Exec(_))),
                "{}: a dry run uploaded something",
                f.display()
            );
        }
    }
}

const SINGLE: &str = "cluster: {name: sim, kubernetesVersion: v1.35.7}\nhosts:\n\
    - {name: n1, address: 10.0.0.1, roles: [control-plane, etcd, worker]}\n";

#[test]
fn a_dry_run_writes_nothing_under_pki_and_nothing_on_hosts() {
    let model = ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), SINGLE).unwrap());
    let h = Harness::new(&model);
    let mut o = h.options();
    o.dry_run = true;
    let (summary, _) = h.run(SINGLE, o.clone());
    assert!(summary.unwrap().total_changes() > 50);
    assert!(!o.pki_root.exists(), "a dry run on a new cluster created {}", o.pki_root.display());
    let n1 = &h.hosts["n1"];
    assert!(n1.file("/usr/local/bin/etcd").is_none());
    assert!(n1.commands().iter().all(|c| !c.contains("systemctl restart")), "{:?}", n1.commands());
}

#[test]
fn apply_then_a_second_run_has_nothing_to_do_and_the_state_file_records_the_cluster() {
    let model = ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), SINGLE).unwrap());
    let h = Harness::new(&model);
    let (first, _) = h.run(SINGLE, h.options());
    let first = first.unwrap_or_else(|e| panic!("{}", e.report()));
    assert!(first.total_changes() > 50);
    let n1 = &h.hosts["n1"];
    assert_eq!(n1.file("/usr/local/bin/etcd").as_deref(), Some(&b"etcd v3.6.6 amd64\n"[..]));
    let st = ClusterState::load(&h.options().pki_root, "sim").unwrap();
    assert_eq!(st.pod_subnets["n1"], "10.244.0.0/24");
    assert_eq!(st.hosts["n1"].versions["kube-apiserver"], "v1.35.7");
    assert!(st.phases.contains_key("etcd") && !st.phases.contains_key("state"), "{:?}", st.phases.keys());
    let remote: ClusterState =
        serde_json::from_slice(&n1.file(crate::state::REMOTE_PATH).expect("state copy on the control plane"))
            .unwrap();
    assert_eq!(remote, st, "the control plane holds the same state as the admin machine");

    let calls_before = n1.calls().len();
    let (second, _) = h.run(SINGLE, h.options());
    let second = second.unwrap();
    assert_eq!(second.total_changes(), 0, "{}", second.plan.text());
    let new_calls = &n1.calls()[calls_before..];
    // the identity check + preflight facts + one state probe for every phase + verify: nothing else.
    assert_eq!(new_calls.len(), 4, "{new_calls:?}");
    assert!(matches!(&new_calls[0], crate::transport::fake::Call::Exec(c) if c.contains("--- marker")));
}

#[test]
fn a_saved_plan_applies_as_reviewed_and_is_refused_when_a_host_changed() {
    let model = ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), SINGLE).unwrap());
    let h = Harness::new(&model);
    h.run(SINGLE, h.options()).0.unwrap();
    let changed = SINGLE.replace(
        "roles: [control-plane, etcd, worker]}",
        "roles: [control-plane, etcd, worker], labels: {tier: a}}",
    );
    let plan_file = h.dir.path().join("plan.json");
    let mut o = h.options();
    o.dry_run = true;
    o.plan_out = Some(plan_file.clone());
    h.run(&changed, o).0.unwrap();
    let saved = std::fs::read_to_string(&plan_file).unwrap();
    assert!(saved.contains("node-metadata.json") && !saved.contains("BEGIN"), "{saved}");

    // Someone edits a file the plan touches: the saved plan is refused, nothing is written.
    let n1 = &h.hosts["n1"];
    n1.put_file("/etc/kubernetes/kubeforge/node-metadata.json", b"[]".to_vec());
    let mut o = h.options();
    o.plan_in = Some(plan_file.clone());
    let err = h.run(&changed, o.clone()).0.err().expect("refused").to_string();
    assert!(err.contains("node-metadata.json changed on the host since the plan"), "{err}");

    // A fresh plan, applied exactly.
    let mut d = h.options();
    d.dry_run = true;
    d.plan_out = Some(plan_file.clone());
    h.run(&changed, d).0.unwrap();
    let done = h.run(&changed, o).0.unwrap();
    assert!(done.total_changes() >= 1);
    assert!(String::from_utf8(n1.file("/etc/kubernetes/kubeforge/node-metadata.json").unwrap())
        .unwrap()
        .contains("tier"));
}

const HA: &str = "cluster: {name: ha, kubernetesVersion: v1.35.7}\nhosts:\n\
    - {name: cp1, address: 10.0.0.1, roles: [control-plane, etcd]}\n\
    - {name: cp2, address: 10.0.0.2, roles: [control-plane, etcd]}\n\
    - {name: cp3, address: 10.0.0.3, roles: [control-plane, etcd]}\n\
    - {name: w1, address: 10.0.0.4, roles: [worker]}\n";

/// The host counts of each start of `phase` (one per batch).
fn batches(events: &[Event], phase: &str) -> Vec<usize> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::PhaseStarted { phase: p, hosts } if p == phase => Some(*hosts),
            _ => None,
        })
        .collect()
}

#[test]
fn running_control_planes_restart_one_at_a_time_while_a_fresh_install_goes_at_once() {
    let model = ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), HA).unwrap());
    let h = Harness::new(&model);
    let (first, events) = h.run(HA, h.options());
    first.unwrap();
    assert_eq!(batches(&events, "etcd"), vec![3], "a new etcd cluster starts together (quorum)");
    assert_eq!(batches(&events, "control-plane"), vec![3]);

    // A flag change reaches every apiserver: one control plane at a time, each gated on its health wait.
    let changed = HA.replace(
        "kubernetesVersion: v1.35.7}",
        "kubernetesVersion: v1.35.7, extraArgs: {kube-apiserver: {audit-log-maxage: \"9\"}}}",
    );
    let (second, events) = h.run(&changed, h.options());
    let second = second.unwrap();
    assert_eq!(batches(&events, "control-plane"), vec![1, 1, 1]);
    assert!(batches(&events, "etcd").is_empty(), "etcd has nothing to do");
    let cp = second.plan.phase("control-plane").unwrap();
    assert!(cp.hosts.iter().all(|(_, c)| c.disrupts && c.restart == vec!["kube-apiserver"]));

    // --batch 2: two at a time.
    let again = changed.replace("\"9\"", "\"10\"");
    let mut o = h.options();
    o.batch = 2;
    let (_, events) = h.run(&again, o);
    assert_eq!(batches(&events, "control-plane"), vec![2, 1]);
}

/// The first control plane's apiserver refuses a new flag's value at start: its files go back to what it
/// ran, it restarts and passes its health wait again, the run stops, and the other control planes never
/// receive the change. With the inventory fixed, the next run has nothing left to put back.
#[test]
fn a_control_plane_that_fails_its_health_wait_after_a_change_is_reverted_and_the_others_never_change() {
    const UNIT: &str = "/etc/systemd/system/kube-apiserver.service";
    let model = ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), HA).unwrap());
    let h = Harness::new(&model);
    h.run(HA, h.options()).0.unwrap();
    let before: BTreeMap<String, Vec<u8>> =
        h.hosts.iter().filter_map(|(n, t)| Some((n.clone(), t.file(UNIT)?))).collect();
    // cp1's apiserver does not start with `--audit-log-maxage=-1` (its wait fails, as with a real one).
    h.hosts["cp1"].handle("kube-apiserver keeps failing", |_, fake| {
        let unit = String::from_utf8_lossy(&fake.file(UNIT).unwrap_or_default()).into_owned();
        if unit.contains("audit-log-maxage=-1") {
            Reply::fail(1, "kube-apiserver keeps failing (5 automatic restarts)")
        } else {
            Reply::ok("")
        }
    });
    h.hosts["cp1"].handle("# kubeforge-revert", |argv, fake| {
        let mut out = String::new();
        for d in argv.iter().skip(4) {
            let prev = format!("{d}.kubeforge-prev");
            match fake.file(&prev) {
                Some(old) => {
                    fake.put_file(d.clone(), old);
                    fake.remove_file(&prev);
                    out.push_str(&format!("restored {d}\n"));
                }
                None => out.push_str(&format!("no-copy {d}\n")),
            }
        }
        Reply::ok(out)
    });
    let bad = HA.replace(
        "kubernetesVersion: v1.35.7}",
        "kubernetesVersion: v1.35.7, extraArgs: {kube-apiserver: {audit-log-maxage: \"-1\"}}}",
    );
    let (r, events) = h.run(&bad, h.options());
    let Err(e) = r else { panic!("cp1 refuses the flag: the run must fail") };
    let e = e.report();
    assert!(e.contains("cp1") && e.contains("kube-apiserver keeps failing"), "{e}");
    assert!(
        e.contains("REVERTED: 1 file(s) put back")
            && e.contains("healthy again on the previous configuration"),
        "{e}"
    );
    assert_eq!(batches(&events, "control-plane"), vec![1], "the run stopped after cp1");
    for (host, unit) in &before {
        assert_eq!(&h.hosts[host].file(UNIT).unwrap(), unit, "{host} runs its previous unit");
    }
    assert!(h.hosts["cp1"].file(&format!("{UNIT}.kubeforge-prev")).is_none());
    // The restart on the previous files happened on cp1 after the revert.
    let cmds = h.hosts["cp1"].commands();
    let revert = cmds.iter().position(|c| c.contains("kubeforge-revert")).unwrap();
    assert!(cmds[revert..]
        .iter()
        .any(|c| c.contains("systemctl restart --no-block") && c.contains("kube-apiserver")));
}

#[test]
fn renewed_certificates_restart_the_services_that_read_them_one_control_plane_at_a_time_but_never_etcd() {
    let model = ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), HA).unwrap());
    let h = Harness::new(&model);
    h.run(HA, h.options()).0.unwrap();
    let store = crate::pki::store::Store::new(&h.options().pki_root, &model.name);
    let renewed = store.renew(&model.pki_inputs(), &["all".to_string()]).unwrap();
    assert!(renewed.iter().any(|n| n.contains("etcd") && n.contains("server")), "{renewed:?}");
    let (run, events) = h.run(HA, h.options());
    let run = run.unwrap();
    // etcd reads its key pairs on every new connection: the renewed server and peer certificates are
    // written, and no member restarts (two members of three would otherwise drop out in turn).
    let etcd = run.plan.phase("etcd").unwrap();
    assert!(etcd.hosts.iter().all(|(_, c)| c.restart.is_empty() && !c.files.is_empty()), "{etcd:?}");
    assert_eq!(batches(&events, "etcd"), vec![3], "nothing restarts: the members are written at once");
    // The control plane restarts on every host, one at a time.
    let cp = run.plan.phase("control-plane").unwrap();
    for (host, c) in &cp.hosts {
        for u in ["kube-apiserver", "kube-controller-manager", "kube-scheduler"] {
            assert!(c.restart.iter().any(|r| r == u), "{host}: {u} restarts: {c}");
        }
    }
    assert_eq!(batches(&events, "control-plane"), vec![1, 1, 1]);
    // A new key for an etcd member restarts that member.
    std::fs::remove_file(store.root().join("etcd/cp2/server.key")).unwrap();
    std::fs::remove_file(store.root().join("etcd/cp2/server.crt")).unwrap();
    let (run, _) = h.run(HA, h.options());
    let etcd = run.unwrap().plan.phase("etcd").unwrap().clone();
    let restarted: Vec<&str> = etcd
        .hosts
        .iter()
        .filter(|(_, c)| c.restart.iter().any(|u| u == "etcd"))
        .map(|(n, _)| n.as_str())
        .collect();
    assert_eq!(restarted, ["cp2"], "{etcd:?}");
}

#[test]
fn hosts_targeting_touches_only_those_hosts_and_the_first_control_plane() {
    let model = ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), HA).unwrap());
    let h = Harness::new(&model);
    h.run(HA, h.options()).0.unwrap();
    let grown = format!("{HA}- {{name: w2, address: 10.0.0.5, roles: [worker]}}\n");
    let model = ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), &grown).unwrap());
    let mut h2 = Harness::new(&model);
    h2.dir = h.dir;
    for (n, t) in &h.hosts {
        h2.hosts.insert(n.clone(), t.clone());
    }
    let before: BTreeMap<String, usize> =
        h2.hosts.iter().map(|(n, t)| (n.clone(), t.calls().len())).collect();
    let mut o = h2.options();
    o.hosts = Some(vec!["w2".into()]);
    let (summary, _) = h2.run(&grown, o);
    let summary = summary.unwrap_or_else(|e| panic!("{}", e.report()));
    assert!(summary.total_changes() > 10);
    let touched: Vec<&String> = h2
        .hosts
        .iter()
        .filter(|(n, t)| t.calls().len() > before.get(*n).copied().unwrap_or(0))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        touched,
        ["cp1", "cp2", "cp3", "w2"],
        "the target, the first control plane (addons, checks) and the control planes' state copies"
    );
    let st = ClusterState::load(&h2.options().pki_root, "ha").unwrap();
    assert_eq!(st.pod_subnets["w2"], "10.244.4.0/24");
    assert!(st.hosts.contains_key("w2") && st.hosts.contains_key("cp2"));

    let mut bad = h2.options();
    bad.hosts = Some(vec!["nope".into()]);
    let err = h2.run(&grown, bad).0.err().unwrap().to_string();
    assert!(err.contains("`nope` not in the inventory"), "{err}");
}

#[test]
fn a_misspelled_phase_is_refused_with_the_valid_ones() {
    let phases = crate::workflow::apply();
    let err = select_phases(&phases, Some(&["etdc".to_string()])).err().unwrap();
    assert_eq!(err.to_string(), "unknown phase `etdc`");
    assert!(err.hint().unwrap().contains("preflight, identity, os-prep, runtime, etcd"), "{:?}", err.hint());
    let ok = select_phases(&phases, Some(&["etcd".to_string(), "verify".to_string()])).unwrap();
    assert_eq!(ok.iter().map(|p| p.id()).collect::<Vec<_>>(), ["etcd", "verify"]);
}

#[test]
fn removing_a_node_from_the_middle_keeps_the_others_pod_subnets() {
    let three = "cluster: {name: sub, kubernetesVersion: v1.35.7}\nhosts:\n\
        - {name: n1, address: 10.0.0.1, roles: [control-plane, etcd, worker]}\n\
        - {name: n2, address: 10.0.0.2, roles: [worker]}\n\
        - {name: n3, address: 10.0.0.3, roles: [worker]}\n";
    let model = ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), three).unwrap());
    let h = Harness::new(&model);
    h.run(three, h.options()).0.unwrap();
    let n3_conf = h.hosts["n3"].file("/etc/cni/net.d/10-kubeforge.conflist").unwrap();
    assert!(String::from_utf8_lossy(&n3_conf).contains("10.244.2.0/24"));
    // n2 leaves (remove-node forgets it); n3 keeps its subnet although it is now the second node.
    let mut st = ClusterState::load(&h.options().pki_root, "sub").unwrap();
    st.forget_host("n2");
    st.save(&h.options().pki_root).unwrap();
    let two = three.replace("- {name: n2, address: 10.0.0.2, roles: [worker]}\n", "");
    let (summary, _) = h.run(&two, h.options());
    let summary = summary.unwrap();
    let runtime = summary.plan.phase("runtime").unwrap();
    let n3 = &runtime.hosts.iter().find(|(n, _)| n == "n3").unwrap().1;
    assert!(
        n3.files.iter().all(|f| !f.file.upload.dest.ends_with(".conflist")),
        "n3's CNI config is unchanged:\n{n3}"
    );
}

fn grow(h: &Harness, text: &str) -> Harness {
    let model = ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), text).unwrap());
    let mut n = Harness::new(&model);
    for (name, t) in &h.hosts {
        n.hosts.insert(name.clone(), t.clone());
    }
    n
}

fn calls(h: &Harness) -> BTreeMap<String, usize> {
    h.hosts.iter().map(|(n, t)| (n.clone(), t.calls().len())).collect()
}

fn touched(h: &Harness, before: &BTreeMap<String, usize>) -> Vec<String> {
    h.hosts
        .iter()
        .filter(|(n, t)| t.calls().len() > before.get(*n).copied().unwrap_or(0))
        .map(|(n, _)| n.clone())
        .collect()
}

const SMALL: &str = "cluster: {name: j, kubernetesVersion: v1.35.7CNI}\nhosts:\n\
    - {name: cp1, address: 10.0.0.1, roles: [control-plane, etcd]}\n\
    - {name: w1, address: 10.0.0.2, roles: [worker]}\n";

#[test]
fn a_join_touches_the_new_host_the_first_control_plane_and_only_hosts_whose_state_moves() {
    for (cni, expect) in [("", vec!["cp1", "w1", "w2"]), (", cni: {plugin: none}", vec!["cp1", "w2"])] {
        let base = SMALL.replace("CNI", cni);
        let model = ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), &base).unwrap());
        let mut h = Harness::new(&model);
        h.run(&base, h.options()).0.unwrap();
        let grown_text = format!("{base}- {{name: w2, address: 10.0.0.3, roles: [worker]}}\n");
        let g = grow(&h, &grown_text);
        let (dir, _) = (std::mem::replace(&mut h.dir, tempfile::tempdir().unwrap()), ());
        let mut g = g;
        g.dir = dir;
        let st = ClusterState::load(&g.options().pki_root, "j").unwrap();
        let new = crate::lifecycle::hosts_to_join(
            &ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), &grown_text).unwrap()),
            &st,
            None,
        )
        .unwrap();
        assert_eq!(new, ["w2"]);
        let before = calls(&g);
        let mut o = g.options();
        o.hosts = Some(new);
        o.follow_changes = true;
        let (summary, _) = g.run(&grown_text, o);
        let summary = summary.unwrap_or_else(|e| panic!("{}", e.report()));
        assert_eq!(touched(&g, &before), expect, "cni `{cni}`:\n{}", summary.plan.text());
        if cni.is_empty() {
            // w1 only gets its route to w2's pod subnet.
            let w1: Vec<String> = summary
                .plan
                .phases
                .iter()
                .flat_map(|p| {
                    p.hosts
                        .iter()
                        .filter(|(n, c)| n == "w1" && !c.is_empty())
                        .map(move |(_, c)| (p.phase.clone(), c))
                })
                .flat_map(|(p, c)| c.files.iter().map(move |f| format!("{p} {}", f.file.upload.dest)))
                .collect();
            assert_eq!(
                w1,
                [
                    "runtime /etc/systemd/system/kubeforge-pod-routes.service",
                    "runtime /var/lib/kubeforge/converged/runtime"
                ]
            );
        }
        let st = ClusterState::load(&g.options().pki_root, "j").unwrap();
        assert!(st.hosts.contains_key("w2"));
        // A second join has nothing to join; an apply has nothing to do.
        assert!(crate::lifecycle::hosts_to_join(
            &ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), &grown_text).unwrap()),
            &st,
            None
        )
        .unwrap()
        .is_empty());
        let (again, _) = g.run(&grown_text, g.options());
        assert_eq!(again.unwrap().total_changes(), 0);
    }
}

#[test]
fn removing_what_kubeforge_owns_leaves_no_file_of_it_on_the_host() {
    let model = ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), SINGLE).unwrap());
    let h = Harness::new(&model);
    h.run(SINGLE, h.options()).0.unwrap();
    let n1 = &h.hosts["n1"];
    // A second version of one file: its rollback copy exists too.
    n1.put_file("/usr/local/bin/kubelet.kubeforge-prev", b"old".to_vec());
    assert!(n1.paths().len() > 60);
    let loaded = crate::inventory::parse(Path::new("i.yaml"), SINGLE).unwrap();
    let mut m = ClusterModel::derive(&loaded);
    let artifacts = fake_artifacts(&m, &h.dir.path().join("artifacts"));
    let verified = verified_of(&h, &m);
    let (material, _) = prepare_with(&mut m, &h.options(), None, artifacts, &verified).unwrap();
    let ctx = Context { model: &m, material: &material };
    let owned = crate::lifecycle::owned(&ctx, m.host("n1").unwrap()).unwrap();
    assert!(
        owned.absent_units.contains(&"kubelet".to_string())
            && owned.absent_units.contains(&"etcd".to_string())
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let changes = rt.block_on(async {
        let actual = crate::plan::probe(n1.as_ref(), &owned).await.unwrap();
        let ch = crate::plan::diff(&owned, &actual);
        crate::plan::apply_changes(n1.as_ref(), &ch).await.unwrap();
        ch
    });
    assert!(changes.remove_units.len() >= 7, "{changes}");
    assert_eq!(n1.paths(), Vec::<String>::new(), "every file kubeforge placed is gone");
    // Removing again finds nothing to do.
    let again = rt.block_on(async {
        crate::plan::diff(&owned, &crate::plan::probe(n1.as_ref(), &owned).await.unwrap())
    });
    assert!(again.is_empty(), "{again}");
}

#[test]
fn control_planes_join_as_etcd_learners_one_at_a_time_and_running_members_keep_their_flags() {
    let one = "cluster: {name: grow, kubernetesVersion: v1.35.7, apiEndpoint: {mode: local-lb}}\nhosts:\n\
        - {name: cp1, address: 10.0.0.1, roles: [control-plane, etcd, worker]}\n";
    let model = ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), one).unwrap());
    let mut h = Harness::new(&model);
    h.run(one, h.options()).0.unwrap();
    let three = format!(
        "{one}- {{name: cp2, address: 10.0.0.2, roles: [control-plane, etcd, worker]}}\n\
         - {{name: cp3, address: 10.0.0.3, roles: [control-plane, etcd, worker]}}\n"
    );
    let mut g = grow(&h, &three);
    g.dir = std::mem::replace(&mut h.dir, tempfile::tempdir().unwrap());
    let mut o = g.options();
    o.hosts = Some(vec!["cp2".into(), "cp3".into()]);
    o.follow_changes = true;
    let (summary, events) = g.run(&three, o);
    let summary = summary.unwrap_or_else(|e| panic!("{}", e.report()));
    assert_eq!(batches(&events, "etcd"), vec![1, 1], "one learner at a time");
    let etcd = summary.plan.phase("etcd").unwrap();
    assert!(
        etcd.hosts.iter().all(|(n, _)| n != "cp1"),
        "the running member is not touched: {:?}",
        etcd.hosts
    );
    let cp2 = &etcd.hosts.iter().find(|(n, _)| n == "cp2").unwrap().1;
    let text = cp2.to_string();
    assert!(
        text.contains("run: add the member as an etcd learner")
            && text.contains("run: promote the etcd learner"),
        "{text}"
    );
    let unit = String::from_utf8(g.hosts["cp3"].file("/etc/systemd/system/etcd.service").unwrap()).unwrap();
    assert!(unit.contains("--initial-cluster-state=existing"), "{unit}");
    assert!(
        unit.contains("cp1=https://10.0.0.1:2380,cp2=https://10.0.0.2:2380,cp3=https://10.0.0.3:2380"),
        "{unit}"
    );
    let cmds = g.hosts["cp2"].commands();
    let add = cmds.iter().position(|c| c.contains("member add")).expect("learner added");
    let start =
        cmds.iter().position(|c| c.contains("systemctl restart --no-block") && c.contains("etcd")).unwrap();
    let promote = cmds.iter().position(|c| c.contains("member promote")).expect("promoted");
    assert!(add < start && start < promote, "add, start, promote: {cmds:?}");
    // cp1's apiserver learns the new etcd members and its balancer the new backends, in a rolling restart.
    let cp = summary.plan.phase("control-plane").unwrap();
    let cp1 = &cp.hosts.iter().find(|(n, _)| n == "cp1").unwrap().1;
    assert!(cp1.disrupts && cp1.restart == vec!["kube-apiserver"], "{cp1}");
    let st = ClusterState::load(&g.options().pki_root, "grow").unwrap();
    assert_eq!(st.etcd_members, ["cp1", "cp2", "cp3"]);
    assert_eq!(st.etcd_bootstrap["cp1"].state, "new");
    let (again, _) = g.run(&three, g.options());
    assert_eq!(again.unwrap().total_changes(), 0);
}

#[test]
fn status_reads_one_probe_per_host_and_reports_drift_stopped_units_and_unreachable_hosts() {
    let text = "cluster: {name: st, kubernetesVersion: v1.35.7}\nhosts:\n\
        - {name: cp1, address: 10.0.0.1, roles: [control-plane, etcd]}\n\
        - {name: w1, address: 10.0.0.2, roles: [worker]}\n";
    let model = ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), text).unwrap());
    let h = Harness::new(&model);
    h.run(text, h.options()).0.unwrap();
    // The first control plane answers the cluster query like etcdctl and kubectl would.
    h.hosts["cp1"].on(
        "etcdjson",
        Reply::ok("etcdjson [{\"Endpoint\":\"https://10.0.0.1:2379\",\"Status\":{\"header\":{\"member_id\":2},\"dbSize\":4272128,\"leader\":2,\"dbSizeInUse\":3518464}}]\netcdhealth https://10.0.0.1:2379: healthy\nnode cp1 True\nnode w1 True\n"),
    );
    let status = |h: &Harness| {
        let loaded = crate::inventory::parse(Path::new("i.yaml"), text).unwrap();
        let mut m = ClusterModel::derive(&loaded);
        let artifacts = fake_artifacts(&m, &h.dir.path().join("artifacts"));
        let mut o = h.options();
        o.dry_run = true;
        let scratch = scratch_for(&o, &m.name).unwrap();
        let local = crate::identity::Local::read(&o.pki_root, &m.name).unwrap();
        let verified = crate::identity::local_only(&local).expect("the cluster is installed");
        let (material, state) =
            prepare_with(&mut m, &o, scratch.as_ref().map(|t| t.path()), artifacts, &verified).unwrap();
        let transports: BTreeMap<String, Arc<dyn Transport>> =
            h.hosts.iter().map(|(n, t)| (n.clone(), t.clone() as Arc<dyn Transport>)).collect();
        let ex = Executor::new(4, Arc::new(crate::report::Silent));
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(crate::status::gather(&m, &material, &state, &transports, &ex)).unwrap()
    };
    let before: BTreeMap<String, usize> = calls(&h);
    let pki_before = tree(&h.options().pki_root);
    let s = status(&h);
    assert!(s.ok(), "{}", s.table());
    assert_eq!(s.hosts[0].etcd.as_deref(), Some("healthy,leader"));
    assert_eq!(s.hosts[1].versions["kubelet"], "v1.35.7");
    let after = calls(&h);
    assert_eq!(after["w1"] - before["w1"], 1, "one round trip per host");
    assert_eq!(after["cp1"] - before["cp1"], 2, "plus the cluster query on the first control plane");
    assert_eq!(tree(&h.options().pki_root), pki_before, "status writes nothing under pki/");

    // A tampered kubelet config and a stopped kube-proxy on w1: drift, unit down, unhealthy.
    h.hosts["w1"].put_file("/var/lib/kubelet/config.yaml", b"tampered".to_vec());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(
        h.hosts["w1"]
            .exec(&crate::transport::Command::shell("systemctl disable --now").arg("kube-proxy").arg("--")),
    )
    .unwrap();
    let s = status(&h);
    let w = s.hosts.iter().find(|x| x.name == "w1").unwrap();
    assert_eq!(w.drift, ["/var/lib/kubelet/config.yaml"], "{}", s.table());
    assert_eq!(w.units_down, ["kube-proxy: inactive"], "{}", s.table());
    assert!(
        !s.ok()
            && s.table().contains("drift /var/lib/kubelet/config.yaml")
            && s.table().contains("UNHEALTHY")
    );
    assert!(s.hosts[0].ok(), "cp1 is fine: {}", s.table());

    // An unreachable host is a row with its reason.
    h.hosts["w1"].on("sha256sum", Reply::Disconnect);
    let s = status(&h);
    let w = s.hosts.iter().find(|x| x.name == "w1").unwrap();
    assert!(!w.reachable && w.error.as_deref().unwrap_or("").contains("connection lost"), "{}", s.table());
    assert!(s.table().contains("UNREACHABLE"));
}

/// Every file under `dir` with its size and modification time.
fn tree(dir: &Path) -> BTreeMap<std::path::PathBuf, (u64, std::time::SystemTime)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                out.insert(e.path(), (m.len(), m.modified().unwrap()));
            }
        }
    }
    out
}

const ONE_CP_TWO_WORKERS: &str = "cluster: {name: rt, kubernetesVersion: v1.35.7}\nhosts:\n\
    - {name: cp1, address: 10.0.0.1, roles: [control-plane, etcd]}\n\
    - {name: w1, address: 10.0.0.2, roles: [worker]}\n\
    - {name: w2, address: 10.0.0.3, roles: [worker]}\n";

/// Round trips of a cold apply of one control plane and two workers, per phase and host, with binaries of
/// realistic size (over the batch threshold): printed as a table (`--nocapture`), and bounded.
#[test]
fn a_cold_apply_needs_few_round_trips_per_host_and_phase() {
    let model =
        ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), ONE_CP_TWO_WORKERS).unwrap());
    let mut h = Harness::new(&model);
    h.binary_pad = 1 << 20;
    let (summary, _) = h.run(ONE_CP_TWO_WORKERS, h.options());
    let summary = summary.unwrap_or_else(|e| panic!("{}", e.report()));
    let mut table = String::new();
    let mut per: BTreeMap<(String, String), u64> = BTreeMap::new();
    for p in &summary.traffic {
        for (host, rt, _) in &p.hosts {
            *per.entry((p.phase.clone(), host.clone())).or_default() += rt;
        }
    }
    for ((phase, host), rt) in &per {
        table.push_str(&format!("{phase:<14} {host:<4} {rt:>3}\n"));
    }
    let totals: BTreeMap<&str, u64> =
        h.hosts.iter().map(|(n, t)| (n.as_str(), t.stats().round_trips)).collect();
    println!("{table}totals: {totals:?}");
    // What a converge costs besides its commands: one batch for every file, binaries included, with the
    // start folded in (the start is a round trip of its own when commands must run before it), and the
    // completion marker.
    for pp in &summary.plan.phases {
        for (host, ch) in pp.hosts.iter().filter(|(_, c)| !c.is_empty()) {
            let binaries =
                ch.files.iter().filter(|f| f.file.upload.size > crate::transport::BATCH_MAX_FILE).count();
            let commands = (ch.before_start.len() + ch.after_change.len()) as u64
                + u64::from(!ch.remove_units.is_empty() || !ch.remove_files.is_empty());
            let rt = per[&(pp.phase.clone(), host.clone())];
            println!(
                "{:<14} {host:<4} binaries {binaries:>2}, commands {commands}, round trips {rt}",
                pp.phase
            );
            assert!(
                rt <= commands + 2,
                "[{}] {host}: {rt} round trips (binaries: {binaries}, commands: {commands})\n{table}",
                pp.phase
            );
        }
    }
    // Measured before batching: cp1 89, w1 38, w2 38 (one round trip per file); with binaries one transfer
    // each: cp1 41, w1 23, w2 23; then cp1 24, w1 12, w2 12 before the identity check (one probe per host)
    // and the `identity` phase (marker batch, the record of what the host had, completion marker).
    assert_eq!(totals, BTreeMap::from([("cp1", 28), ("w1", 16), ("w2", 16)]), "{table}");
}

#[test]
fn a_node_whose_architecture_has_no_balancer_binary_is_refused_before_any_host_is_touched() {
    let f = Path::new(env!("CARGO_MANIFEST_DIR")).join("inventories/ha.yaml");
    let text = std::fs::read_to_string(&f).unwrap();
    let loaded = crate::inventory::parse(&f, &text).unwrap();
    let model = ClusterModel::derive(&loaded);
    let h = Harness::new(&model);
    let o = h.options();
    // Only the amd64 balancer: the inventory's arm64 worker has none.
    let dir = o.api_lb_dir.clone().unwrap();
    std::fs::remove_file(dir.join("kubeforge-apilb-linux-arm64")).unwrap();
    let (summary, _) = h.run(&text, o);
    let err = summary.err().expect("refused").report();
    assert!(err.contains("`worker-2`") && err.contains("linux/arm64"), "{err}");
    assert!(err.contains(&format!("{}/kubeforge-apilb-linux-arm64", dir.display())), "{err}");
    for t in h.hosts.values() {
        // Only the identity check read the host; nothing was written.
        let calls = t.calls();
        assert!(
            calls.len() == 1
                && matches!(&calls[0], crate::transport::fake::Call::Exec(c) if c.contains("--- marker")),
            "nothing but the identity check ran on a host: {calls:?}"
        );
    }
}

/// Every call a host has received so far.
fn call_counts(h: &Harness) -> BTreeMap<String, usize> {
    h.hosts.iter().map(|(n, t)| (n.clone(), t.calls().len())).collect()
}

/// Whether any call after `before` wrote to the host (an upload, or a command other than the identity check).
fn wrote_since(h: &Harness, before: &BTreeMap<String, usize>) -> Vec<String> {
    let mut out = Vec::new();
    for (n, t) in &h.hosts {
        for c in &t.calls()[before[n]..] {
            match c {
                crate::transport::fake::Call::Exec(cmd) if cmd.contains("--- marker") => {}
                other => out.push(format!("{n}: {other:?}")),
            }
        }
    }
    out
}

#[test]
fn apply_with_an_empty_store_in_front_of_a_live_cluster_is_refused_and_nothing_is_written() {
    let model = ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), SINGLE).unwrap());
    let h = Harness::new(&model);
    h.run(SINGLE, h.options()).0.unwrap();
    let ca = h.hosts["n1"].file(crate::identity::HOST_CA_PATH).unwrap();
    // `cd /elsewhere && kubeforge apply -i /path/inv.yaml`: another PKI directory, with nothing in it.
    let mut elsewhere = h.options();
    elsewhere.pki_root = h.dir.path().join("elsewhere/pki");
    for dry_run in [true, false] {
        let before = call_counts(&h);
        let mut o = elsewhere.clone();
        o.dry_run = dry_run;
        let err = h.run(SINGLE, o).0.err().expect("refused").report();
        assert!(err.contains("has no CA") && err.contains("`n1`"), "{err}");
        let fp = crate::identity::Fingerprint::of_pem(&ca).unwrap();
        assert!(err.contains(&fp.0), "names the cluster's CA: {err}");
        assert!(wrote_since(&h, &before).is_empty(), "{:?}", wrote_since(&h, &before));
        assert!(!elsewhere.pki_root.join("sim/ca.key").exists(), "no CA was made");
        assert!(
            !elsewhere.pki_root.join("sim/secrets/encryption-key").exists(),
            "no encryption key was made"
        );
    }
    assert_eq!(h.hosts["n1"].file(crate::identity::HOST_CA_PATH).unwrap(), ca, "the host keeps its CA");
}

#[test]
fn a_store_of_another_cluster_with_the_same_name_is_refused_naming_both_cas() {
    let model = ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), SINGLE).unwrap());
    let h = Harness::new(&model);
    h.run(SINGLE, h.options()).0.unwrap();
    // Another installation's store: its own CA (made with `certs generate` elsewhere).
    let mut other = h.options();
    other.pki_root = h.dir.path().join("other/pki");
    let store = crate::pki::store::Store::new(&other.pki_root, "sim");
    store.ensure(&model.pki_inputs(), crate::pki::store::NewKeys::Allowed).unwrap();
    let before = call_counts(&h);
    let err = h.run(SINGLE, other).0.err().expect("refused").report();
    let ours = crate::identity::Fingerprint::of_pem(&store.read("ca.crt").unwrap()).unwrap();
    let theirs =
        crate::identity::Fingerprint::of_pem(&h.hosts["n1"].file(crate::identity::HOST_CA_PATH).unwrap())
            .unwrap();
    assert!(err.contains(&ours.0) && err.contains(&theirs.0), "{err}");
    assert!(wrote_since(&h, &before).is_empty());
}

#[test]
fn a_lost_encryption_key_or_service_account_key_is_never_made_anew_for_a_live_cluster() {
    let model = ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), SINGLE).unwrap());
    let h = Harness::new(&model);
    h.run(SINGLE, h.options()).0.unwrap();
    let store = h.options().pki_root.join("sim");
    for (file, says) in [("secrets/encryption-key", "encryption key"), ("sa.key", "sa.key")] {
        let kept = std::fs::read(store.join(file)).unwrap();
        std::fs::remove_file(store.join(file)).unwrap();
        let before = call_counts(&h);
        let err = h.run(SINGLE, h.options()).0.err().expect("refused").report();
        assert!(err.contains(says) && err.contains("not new"), "{err}");
        assert!(!store.join(file).exists(), "nothing made in its place");
        assert!(wrote_since(&h, &before).is_empty());
        std::fs::write(store.join(file), kept).unwrap();
    }
    // A truncated key stops the run too.
    std::fs::write(store.join("secrets/encryption-key"), "c2hvcnQ=\n").unwrap();
    let err = h.run(SINGLE, h.options()).0.err().expect("refused").report();
    assert!(err.contains("5 bytes, not 32"), "{err}");
}

#[test]
fn an_unmarked_host_with_the_stores_ca_is_adopted_and_marked() {
    let model = ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), SINGLE).unwrap());
    let h = Harness::new(&model);
    h.run(SINGLE, h.options()).0.unwrap();
    let marker = h.hosts["n1"].file(crate::identity::MARKER_PATH).unwrap();
    // A cluster installed before markers: the marker is not there, the CA is.
    h.hosts["n1"].remove_file(crate::identity::MARKER_PATH);
    let (s, _) = h.run(SINGLE, h.options());
    let s = s.unwrap();
    assert!(s.plan.text().contains("/var/lib/kubeforge/cluster.json"), "{}", s.plan.text());
    assert_eq!(h.hosts["n1"].file(crate::identity::MARKER_PATH).unwrap(), marker, "same UID, same CA");
}

#[test]
fn reset_refuses_hosts_of_no_or_another_cluster_and_etcd_members_that_would_leave_a_quorum() {
    use crate::identity::{Fingerprint, Local, Marker, Remote};
    let text = "cluster: {name: c1, kubernetesVersion: v1.35.7}\nhosts:\n- {name: a, address: 10.0.0.1, roles: [control-plane, etcd]}\n- {name: b, address: 10.0.0.2, roles: [control-plane, etcd]}\n- {name: w, address: 10.0.0.3, roles: [worker]}\n";
    let model = ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), text).unwrap());
    let fp = Fingerprint(format!("sha256:{}", "a".repeat(64)));
    let local = Local { cluster: "c1".into(), ca: Some(fp.clone()), ..Default::default() };
    let ours = Remote {
        marker: Some(Ok(Marker { cluster: "c1".into(), uid: "u".into(), ca_sha256: fp.clone() })),
        ca: Some(fp.clone()),
    };
    let found =
        |w: Remote| vec![("a".to_string(), ours.clone()), ("b".into(), ours.clone()), ("w".into(), w)];
    let all: Vec<String> = ["a", "b", "w"].map(String::from).to_vec();
    assert!(crate::lifecycle::reset_refusals(&model, &local, &found(ours.clone()), &all).is_empty());
    // Nothing of any cluster on `w`: left out (reset already, or never installed) unless the state records
    // it, which points at a wrong address.
    let r = crate::lifecycle::reset_refusals(&model, &local, &found(Remote::default()), &all);
    assert!(r.is_empty(), "{r:?}");
    assert_eq!(crate::lifecycle::reset_skips(&local, &found(Remote::default())), ["w"]);
    let recorded = Local { installed: vec!["w".into()], ..local.clone() };
    let r = crate::lifecycle::reset_refusals(&model, &recorded, &found(Remote::default()), &all);
    assert!(r.len() == 1 && r[0].contains("`w` carries nothing of cluster `c1`"), "{r:?}");
    assert!(crate::lifecycle::reset_skips(&recorded, &found(Remote::default())).is_empty());
    let kubeadm = Remote { marker: None, ca: Some(Fingerprint(format!("sha256:{}", "b".repeat(64)))) };
    let r = crate::lifecycle::reset_refusals(&model, &local, &found(kubeadm), &all);
    assert!(r[0].contains("kubeforge did not mark"), "{r:?}");
    // One etcd member of two, its peer staying: refused (remove-node takes it out of the member list).
    let r = crate::lifecycle::reset_refusals(&model, &local, &found(ours.clone())[..1], &["a".to_string()]);
    assert!(r.len() == 1 && r[0].contains("remove-node a"), "{r:?}");
}

#[test]
fn what_a_host_had_before_kubeforge_is_not_removed() {
    let before = crate::phase::identity::Preexisting::parse(
        "unit containerd enabled active\nfile /etc/containerd/config.toml\n",
    );
    let owned = HostDesired {
        absent_units: vec!["containerd".into(), "kubelet".into()],
        absent_files: vec![
            "/etc/containerd/config.toml".into(),
            "/etc/containerd/config.toml.kubeforge-prev".into(),
            "/usr/local/bin/kubelet".into(),
        ],
        ..Default::default()
    };
    let left = crate::lifecycle::without_preexisting(owned, &before);
    assert_eq!(left.absent_units, vec!["kubelet".to_string()]);
    assert_eq!(
        left.absent_files,
        vec!["/etc/containerd/config.toml.kubeforge-prev".to_string(), "/usr/local/bin/kubelet".into()]
    );
}

// Lifecycle commands on the simulated hosts: each command's own code (`reset_in`, `remove_node_in`) in a
// session on fake transports, as the binary runs it over SSH; the VM tier then proves the real components.

const TRIO: &str = "cluster: {name: trio, kubernetesVersion: v1.35.7}\nhosts:\n\
    - {name: cp1, address: 10.0.0.1, roles: [control-plane, etcd]}\n\
    - {name: w1, address: 10.0.0.2, roles: [worker]}\n\
    - {name: w2, address: 10.0.0.3, roles: [worker]}\n";

const KUBELET: &str = "/usr/local/bin/kubelet";

/// A harness whose hosts carry an installed `text` cluster.
fn installed(text: &str) -> Harness {
    let model = ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), text).unwrap());
    let h = Harness::new(&model);
    h.run(text, h.options()).0.unwrap_or_else(|e| panic!("{}", e.report()));
    h
}

/// `kubeforge reset` in a session on the harness; the result and the stages it entered.
fn reset_staged(
    h: &Harness,
    consent: crate::prompt::Consent,
    hosts: Option<&[&str]>,
    force: bool,
) -> (Result<i32>, Vec<String>) {
    let mut o = h.options();
    o.hosts = hosts.map(|hs| hs.iter().map(|s| s.to_string()).collect());
    let session = h.session(TRIO, o.clone(), Arc::new(Recorder::default()));
    let r = crate::lifecycle::reset_in(&session, crate::lifecycle::ResetOptions { consent, force, apply: o });
    (r, session.stages())
}

fn reset(h: &Harness, consent: crate::prompt::Consent, hosts: Option<&[&str]>, force: bool) -> Result<i32> {
    reset_staged(h, consent, hosts, force).0
}

fn command_counts(h: &Harness) -> BTreeMap<String, usize> {
    h.hosts.iter().map(|(n, t)| (n.clone(), t.commands().len())).collect()
}

fn new_commands(h: &Harness, host: &str, before: &BTreeMap<String, usize>) -> Vec<String> {
    h.hosts[host].commands()[before[host]..].to_vec()
}

#[test]
fn reset_dry_run_changes_nothing_and_reset_removes_what_kubeforge_installed_from_the_selected_hosts() {
    use crate::prompt::Consent;
    let h = installed(TRIO);
    let before = command_counts(&h);
    let (r, stages) = reset_staged(&h, Consent::Preview, None, false);
    assert_eq!(r.unwrap(), 0);
    assert_eq!(stages, ["reset/identity", "reset/material", "reset/preview"]);
    for (name, t) in &h.hosts {
        assert!(t.file(KUBELET).is_some(), "{name}: a dry run removed the kubelet");
        let cmds = new_commands(&h, name, &before);
        assert!(
            cmds.iter().all(|c| !c.contains("disable --now") && !c.contains("rm -rf")),
            "{name}: {cmds:?}"
        );
    }
    // `@worker`: the selector grammar of every command.
    let (r, stages) = reset_staged(&h, Consent::Given, Some(&["@worker"]), false);
    assert_eq!(r.unwrap(), 0);
    assert_eq!(stages, ["reset/identity", "reset/material", "reset/remove", "reset/state"]);
    for w in ["w1", "w2"] {
        assert!(h.hosts[w].file(KUBELET).is_none(), "{w} keeps the kubelet");
        assert!(h.hosts[w].file(crate::identity::MARKER_PATH).is_none(), "{w} keeps the cluster marker");
    }
    assert!(h.hosts["cp1"].file(KUBELET).is_some(), "cp1 was not selected");
    let st = ClusterState::load(&h.options().pki_root, "trio").unwrap();
    assert_eq!(st.hosts.keys().collect::<Vec<_>>(), ["cp1"], "the reset hosts are forgotten");
}

#[test]
fn a_host_that_drops_during_reset_fails_by_name_and_stays_in_the_state_while_the_others_are_reset() {
    use crate::prompt::Consent;
    let h = installed(TRIO);
    h.hosts["w2"].on("crictl --runtime-endpoint", Reply::Disconnect);
    let e = reset(&h, Consent::Given, Some(&["w1", "w2"]), false).unwrap_err();
    assert!(e.to_string().contains("w2"), "{}", e.report());
    assert!(h.hosts["w1"].file(KUBELET).is_none(), "w1 was reset");
    assert!(h.hosts["w2"].file(KUBELET).is_some(), "w2 dropped before anything was removed");
    let st = ClusterState::load(&h.options().pki_root, "trio").unwrap();
    assert!(!st.hosts.contains_key("w1") && st.hosts.contains_key("w2"), "{:?}", st.hosts.keys());
}

#[test]
fn reset_refuses_a_host_of_another_cluster_before_touching_any_host() {
    use crate::prompt::Consent;
    let h = installed(TRIO);
    let other = crate::identity::Marker {
        cluster: "other".into(),
        uid: "u-other".into(),
        ca_sha256: crate::identity::Fingerprint("ab".repeat(32)),
    };
    h.hosts["w1"].put_file(crate::identity::MARKER_PATH, other.to_json());
    let before = command_counts(&h);
    let e = reset(&h, Consent::Given, None, false).unwrap_err();
    assert!(e.to_string().contains("refusing to reset") && e.to_string().contains("w1"), "{}", e.report());
    for name in h.hosts.keys() {
        let cmds = new_commands(&h, name, &before);
        assert_eq!(cmds.len(), 1, "{name}: only the identity read: {cmds:?}");
        assert!(cmds[0].contains("--- marker"), "{cmds:?}");
        assert!(h.hosts[name].file(KUBELET).is_some());
    }
}

fn remove(h: &Harness, text: &str, node: &str, force: bool) -> Result<i32> {
    remove_staged(h, text, node, force).0
}

/// `kubeforge remove-node --yes` in a session on the harness; the result and the stages it entered.
fn remove_staged(h: &Harness, text: &str, node: &str, force: bool) -> (Result<i32>, Vec<String>) {
    let options = removal(h, node, force);
    let session = h.session(text, options.apply.clone(), Arc::new(Recorder::default()));
    let r = crate::lifecycle::remove_node_in(&session, options);
    (r, session.stages())
}

/// The options of `kubeforge remove-node NODE --yes` on the harness (preflight as remove-node runs it).
fn removal(h: &Harness, node: &str, force: bool) -> crate::lifecycle::RemoveOptions {
    let mut apply = h.options();
    apply.ignore_preflight = vec!["all".into()];
    crate::lifecycle::RemoveOptions {
        node: node.into(),
        force,
        drain_timeout: std::time::Duration::from_secs(60),
        apply,
        replacing: false,
        skip_drain: false,
    }
}

#[test]
fn remove_node_drains_through_a_control_plane_cleans_the_host_and_converges_the_rest() {
    let h = installed(TRIO);
    let before = command_counts(&h);
    let (r, stages) = remove_staged(&h, TRIO, "w2", false);
    assert_eq!(r.unwrap(), 0);
    let listed: Vec<String> = crate::workflow::REMOVE_NODE
        .stages
        .iter()
        .filter(|s| s.id != "etcd-member")
        .map(|s| format!("remove-node/{}", s.id))
        .collect();
    assert_eq!(stages, listed, "a worker's removal runs every listed stage but the etcd member's, in order");
    let api = new_commands(&h, "cp1", &before);
    let pos =
        |what: &str| api.iter().position(|c| c.contains(what)).unwrap_or_else(|| panic!("{what}: {api:?}"));
    assert!(pos("cordon w2") < pos("drain w2") && pos("drain w2") < pos("delete node w2"), "{api:?}");
    assert!(h.hosts["w2"].file(KUBELET).is_none(), "w2 was cleaned");
    assert!(h.hosts["w1"].file(KUBELET).is_some());
    let st = ClusterState::load(&h.options().pki_root, "trio").unwrap();
    assert!(!st.hosts.contains_key("w2") && !st.pod_subnets.contains_key("w2"), "{:?}", st.hosts.keys());
    // The rest converged without it: a run of the smaller inventory has nothing left to do.
    let rest = TRIO.lines().filter(|l| !l.contains("name: w2")).collect::<Vec<_>>().join("\n") + "\n";
    let mut dry = h.options();
    dry.dry_run = true;
    let (again, _) = h.run(&rest, dry);
    assert_eq!(again.unwrap().total_changes(), 0);
}

#[test]
fn a_drain_that_fails_stops_remove_node_before_the_host_or_the_state_is_touched() {
    let h = installed(TRIO);
    h.hosts["cp1"].on(
        "drain w2",
        Reply::fail(1, "error: cannot evict pod as it would violate the pod's disruption budget"),
    );
    let (r, stages) = remove_staged(&h, TRIO, "w2", false);
    let e = r.unwrap_err();
    let said = e.to_string();
    assert!(said.contains("the drain did not finish") && said.contains("uncordoned again"), "{}", e.report());
    assert_eq!(stages.last().map(String::as_str), Some("remove-node/drain"));
    assert!(
        h.hosts["cp1"].commands().iter().any(|c| c.contains("uncordon w2")),
        "the node was left cordoned"
    );
    assert!(h.hosts["w2"].file(KUBELET).is_some(), "w2 was cleaned although its drain failed");
    let st = ClusterState::load(&h.options().pki_root, "trio").unwrap();
    assert!(st.hosts.contains_key("w2"));
    assert!(!h.hosts["cp1"].commands().iter().any(|c| c.contains("delete node w2")), "the Node was deleted");
    // --force goes on past the drain.
    assert_eq!(remove(&h, TRIO, "w2", true).unwrap(), 0);
    assert!(h.hosts["w2"].file(KUBELET).is_none());
}

/// `h`'s hosts and store, plus simulated hosts for the ones `text` adds.
fn grown(h: Harness, text: &str) -> Harness {
    let mut g = grow(&h, text);
    g.dir = h.dir;
    g
}

fn join(h: &Harness, text: &str) -> (Result<i32>, Vec<String>) {
    let session = h.session(text, h.options(), Arc::new(Recorder::default()));
    let r = crate::lifecycle::join_in(&session, h.options());
    (r, session.stages())
}

#[test]
fn join_installs_only_the_new_host_and_a_failed_etcd_join_removes_the_learner_it_left() {
    let h = installed(TRIO);
    let with_w3 = format!("{TRIO}- {{name: w3, address: 10.0.0.4, roles: [worker]}}\n");
    let g = grown(h, &with_w3);
    let (r, stages) = join(&g, &with_w3);
    assert_eq!(r.unwrap_or_else(|e| panic!("{}", e.report())), 0);
    assert_eq!(stages, ["join/select", "join/apply"]);
    assert!(g.hosts["w3"].file(KUBELET).is_some(), "w3 was installed");
    let (r, _) = join(&g, &with_w3);
    assert_eq!(r.unwrap(), 0, "a second join has nothing to join");

    // A control plane with an etcd member whose start fails: the join fails by name and the member it
    // added through cp1 is removed again, so it never counts against the quorum.
    let with_cp2 = format!("{with_w3}- {{name: cp2, address: 10.0.0.5, roles: [control-plane, etcd]}}\n");
    let g = grown(g, &with_cp2);
    g.hosts["cp2"].on("systemctl restart --no-block", Reply::fail(1, "Job for etcd.service failed"));
    let before = command_counts(&g);
    let (r, stages) = join(&g, &with_cp2);
    let e = r.unwrap_err();
    assert!(e.report().contains("cp2"), "{}", e.report());
    assert_eq!(stages, ["join/select", "join/apply", "join/learners"]);
    let on_cp1 = new_commands(&g, "cp1", &before);
    assert!(
        on_cp1.iter().any(|c| c.contains("member remove") && c.contains("https://10.0.0.5:2380")),
        "the learner was not removed through cp1: {on_cp1:?}"
    );
    let st = ClusterState::load(&g.options().pki_root, "trio").unwrap();
    assert!(
        !st.hosts.contains_key("cp2") || st.etcd_members.iter().all(|m| m != "cp2"),
        "{:?}",
        st.etcd_members
    );
}

/// An interrupt during `reset` (the executor's stop flag, as Ctrl-C sets it): the host in progress finishes
/// its reset, the next one is not started, the command fails as interrupted, and the state says where each
/// host stands (the finished one forgotten, the other still recorded); a re-run finishes the rest.
#[test]
fn an_interrupted_reset_finishes_the_host_in_progress_leaves_the_next_untouched_and_resumes() {
    use crate::prompt::Consent;
    let h = installed(TRIO);
    let mut o = h.options();
    o.concurrency = 1;
    o.hosts = Some(vec!["w1".into(), "w2".into()]);
    let session = h.session(TRIO, o.clone(), Arc::new(Recorder::default()));
    let stop = session.executor.stop_flag();
    h.hosts["w1"].handle("crictl --runtime-endpoint", move |_, _| {
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        Reply::ok("")
    });
    let options = crate::lifecycle::ResetOptions { consent: Consent::Given, force: false, apply: o.clone() };
    let before = command_counts(&h);
    let e = crate::lifecycle::reset_in(&session, options.clone()).unwrap_err();
    assert!(e.to_string().contains("interrupted"), "{}", e.report());
    assert!(h.hosts["w1"].file(KUBELET).is_none(), "the host in progress finished its reset");
    assert!(h.hosts["w2"].file(KUBELET).is_some(), "the next host was not started");
    let on_w2 = new_commands(&h, "w2", &before);
    assert!(on_w2.iter().all(|c| c.contains("--- marker")), "w2 got more than the identity read: {on_w2:?}");
    let st = ClusterState::load(&o.pki_root, "trio").unwrap();
    assert!(!st.hosts.contains_key("w1") && st.hosts.contains_key("w2"), "{:?}", st.hosts.keys());
    // The re-run (a new process: a new session) resets what is left; the finished host is not refused.
    let again = h.session(TRIO, o.clone(), Arc::new(Recorder::default()));
    assert_eq!(crate::lifecycle::reset_in(&again, options).unwrap(), 0);
    assert!(h.hosts["w2"].file(KUBELET).is_none());
}

/// An interrupt during remove-node's drain: the drain step finishes, the node is uncordoned (it is not
/// removed: back in service), nothing after it runs (the Node is not deleted, the host not cleaned, the
/// state unchanged).
#[test]
fn an_interrupted_remove_node_stops_after_the_step_in_progress() {
    let h = installed(TRIO);
    let options = removal(&h, "w2", false);
    let o = options.apply.clone();
    let session = h.session(TRIO, o.clone(), Arc::new(Recorder::default()));
    let stop = session.executor.stop_flag();
    h.hosts["cp1"].handle("drain w2", move |_, _| {
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        Reply::ok("node/w2 drained")
    });
    let e = crate::lifecycle::remove_node_in(&session, options).unwrap_err();
    assert!(e.to_string().contains("interrupted"), "{}", e.report());
    let api = h.hosts["cp1"].commands();
    assert!(!api.iter().any(|c| c.contains("delete node w2")), "the Node was deleted");
    let at = |n: &str| api.iter().position(|c| c.contains(n));
    assert!(at("uncordon w2") > at("drain w2"), "w2 left cordoned: {api:#?}");
    assert!(h.hosts["w2"].file(KUBELET).is_some(), "w2 was cleaned");
    assert!(ClusterState::load(&o.pki_root, "trio").unwrap().hosts.contains_key("w2"));
}

/// Interrupted right after the Node was deleted: the command stops before cleaning the host (exit 130,
/// saying what finished); the re-run finds the Node gone, skips the API stages and finishes.
#[test]
fn remove_node_interrupted_after_the_node_was_deleted_resumes_without_it() {
    let h = installed(TRIO);
    let options = removal(&h, "w2", false);
    let o = options.apply.clone();
    let session = h.session(TRIO, o.clone(), Arc::new(Recorder::default()));
    let stop = session.executor.stop_flag();
    // The Node is deleted (the simulated API remembers it), then the interrupt comes.
    h.hosts["cp1"].handle("delete node w2", move |_, fake| {
        fake.put_file(format!("{SIM_DELETED}/w2"), Vec::new());
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        Reply::ok("node \"w2\" deleted")
    });
    let e = crate::lifecycle::remove_node_in(&session, options.clone()).unwrap_err();
    assert_eq!(e.exit_code(), 130, "{}", e.report());
    assert!(
        e.to_string().contains("interrupted before `clean`") && e.to_string().contains("delete-node"),
        "{e}"
    );
    assert!(h.hosts["w2"].file(KUBELET).is_some(), "the host was cleaned after the interrupt");
    // The next process: the Node is gone (the simulated API remembers the delete).
    let again = h.session(TRIO, o.clone(), Arc::new(Recorder::default()));
    assert_eq!(crate::lifecycle::remove_node_in(&again, options).unwrap(), 0);
    assert_eq!(
        again.stages(),
        ["remove-node/identity", "remove-node/clean", "remove-node/forget", "remove-node/converge"]
    );
    assert!(h.hosts["w2"].file(KUBELET).is_none());
    assert!(!ClusterState::load(&o.pki_root, "trio").unwrap().hosts.contains_key("w2"));
}

/// An archive of the harness's installed `trio` cluster (its real store, a stand-in snapshot file), as
/// `kubeforge backup` writes it.
fn archive_of(h: &Harness) -> std::path::PathBuf {
    let o = h.options();
    let snap = h.dir.path().join("snapshot.db");
    std::fs::write(&snap, b"etcd snapshot bytes").unwrap();
    let snapshot = crate::backup::Snapshot {
        path: snap,
        member: "cp1".into(),
        sha256: {
            use sha2::Digest;
            hex::encode(sha2::Sha256::digest(b"etcd snapshot bytes"))
        },
        bytes: 19,
        revision: 42,
        total_keys: 7,
    };
    let out = h.dir.path().join("trio.backup.tar.gz");
    crate::backup::write_archive(
        &out,
        "trio",
        "v1.35.7",
        Default::default(),
        &snapshot,
        &o.pki_root.join("trio"),
        TRIO.as_bytes(),
        None,
    )
    .unwrap();
    out
}

fn restore(h: &Harness, archive: &Path, session: &crate::session::Session) -> Result<i32> {
    let mut o = h.options();
    o.ignore_preflight = vec!["all".into()];
    crate::restore::restore_in(
        session,
        crate::restore::RestoreOptions {
            from: archive.to_path_buf(),
            passphrase_env: None,
            consent: crate::prompt::Consent::Given,
            replace_pki: false,
            apply: o,
        },
    )
}

#[test]
fn restore_stops_the_control_plane_replaces_every_member_from_the_snapshot_then_starts_and_checks() {
    let h = installed(TRIO);
    let archive = archive_of(&h);
    let before = command_counts(&h);
    let session = h.session(TRIO, h.options(), Arc::new(Recorder::default()));
    assert_eq!(restore(&h, &archive, &session).unwrap_or_else(|e| panic!("{}", e.report())), 0);
    let listed: Vec<String> = crate::workflow::RESTORE
        .stages
        .iter()
        .filter(|s| s.id != "confirm")
        .map(|s| format!("restore/{}", s.id))
        .collect();
    assert_eq!(session.stages(), listed, "every listed stage but the confirmation (--yes), in order");
    let cp1 = new_commands(&h, "cp1", &before);
    let at =
        |what: &str| cp1.iter().position(|c| c.contains(what)).unwrap_or_else(|| panic!("{what}: {cp1:?}"));
    assert!(at("kube-apiserver kube-controller-manager kube-scheduler") < at("snapshot restore"), "{cp1:?}");
    assert!(at("snapshot restore") < at("systemctl start --no-block etcd"), "{cp1:?}");
    let sent =
        h.hosts["cp1"].paths().into_iter().find(|p| p.contains("/restore-")).expect("snapshot uploaded");
    assert_eq!(h.hosts["cp1"].file(&sent).as_deref(), Some(&b"etcd snapshot bytes"[..]));
    for w in ["w1", "w2"] {
        assert!(
            !new_commands(&h, w, &before).iter().any(|c| c.contains("snapshot restore")),
            "{w} is no member"
        );
    }
}

#[test]
fn an_interrupted_restore_stops_after_the_members_and_says_what_finished() {
    let h = installed(TRIO);
    let archive = archive_of(&h);
    let session = h.session(TRIO, h.options(), Arc::new(Recorder::default()));
    let stop = session.executor.stop_flag();
    h.hosts["cp1"].handle("snapshot restore", move |_, _| {
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        Reply::ok("aside /var/lib/etcd.before-restore-x")
    });
    let e = restore(&h, &archive, &session).unwrap_err();
    assert_eq!(e.exit_code(), 130, "{}", e.report());
    assert!(e.to_string().contains("interrupted before `etcd`") && e.to_string().contains("members"), "{e}");
    assert!(!h.hosts["cp1"].commands().iter().any(|c| c.contains("systemctl start --no-block etcd")));
}

/// cp1 answers the snapshot script as etcd would: the file appears under the backups directory, the status
/// line and its sha256 follow (`corrupt`: the reported sha256 is not the file's, as after a bad copy).
fn etcd_snapshots_on(h: &Harness, corrupt: bool) {
    h.hosts["cp1"].handle("snapshot save", move |argv, fake| snapshot_saved(argv, fake, corrupt));
}

/// What cp1 answers the snapshot script (see [`etcd_snapshots_on`]).
fn snapshot_saved(argv: &[String], fake: &FakeTransport, corrupt: bool) -> Reply {
    let name = argv.last().cloned().unwrap_or_default();
    let body = b"etcd snapshot bytes".to_vec();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(if corrupt { b"other".to_vec() } else { body.clone() }))
    };
    fake.put_file(format!("{}/{name}", crate::backup::REMOTE_DIR), body);
    Reply::ok(format!("{{\"hash\":1,\"revision\":42,\"totalKey\":7,\"totalSize\":19}}\nsha256 {sha}\n"))
}

fn backup(h: &Harness, out: &Path) -> (Result<i32>, Vec<String>) {
    let session = h.session(TRIO, h.options(), Arc::new(Recorder::default()));
    let r = crate::restore::backup_in(
        &session,
        crate::restore::BackupOptions {
            output: Some(out.to_path_buf()),
            passphrase_env: None,
            unencrypted: true,
            apply: h.options(),
        },
    );
    (r, session.stages())
}

#[test]
fn backup_takes_a_checked_snapshot_removes_it_from_the_host_and_writes_an_archive_restore_opens() {
    let h = installed(TRIO);
    etcd_snapshots_on(&h, false);
    let out = h.dir.path().join("b.tar.gz");
    let (r, stages) = backup(&h, &out);
    assert_eq!(r.unwrap_or_else(|e| panic!("{}", e.report())), 0);
    assert_eq!(stages, ["backup/snapshot", "backup/archive"]);
    let opened = crate::backup::open_archive(&out, None, h.dir.path()).unwrap();
    assert_eq!((opened.manifest.etcd.revision, opened.manifest.etcd.total_keys), (42, 7));
    assert_eq!(
        std::fs::read(opened.path(crate::backup::Manifest::SNAPSHOT)).unwrap(),
        b"etcd snapshot bytes"
    );
    let cmds = h.hosts["cp1"].commands();
    assert!(
        cmds.iter().any(|c| c.starts_with("sudo rm -f -- /var/lib/kubeforge/backups/etcd-trio-")),
        "{cmds:?}"
    );
}

#[test]
fn a_snapshot_that_changed_in_transit_writes_no_archive_and_leaves_no_copy_on_the_host() {
    let h = installed(TRIO);
    etcd_snapshots_on(&h, true);
    let out = h.dir.path().join("b.tar.gz");
    let (r, stages) = backup(&h, &out);
    let e = r.unwrap_err();
    assert!(e.report().contains("changed in transit"), "{}", e.report());
    assert_eq!(stages, ["backup/snapshot"]);
    assert!(!out.exists(), "an archive was written");
    let cmds = h.hosts["cp1"].commands();
    assert!(
        cmds.iter().any(|c| c.starts_with("sudo rm -f -- /var/lib/kubeforge/backups/etcd-trio-")),
        "{cmds:?}"
    );
    let backups = crate::backup::local_dir(&h.options().pki_root, "trio");
    let left: Vec<_> =
        std::fs::read_dir(&backups).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "a partial copy stayed: {left:?}");
}

/// Golden previews of the lifecycle commands for every example inventory, on hosts an apply installed:
/// `reset --dry-run` of every host and `remove-node --dry-run` of the last worker. What they would do is
/// reviewed here as the apply plans are; nothing is written by either.
#[test]
fn golden_previews_of_reset_and_remove_node_for_every_example_inventory() {
    for f in example_inventories() {
        let text = std::fs::read_to_string(&f).unwrap();
        let model = ClusterModel::derive(&crate::inventory::parse(&f, &text).unwrap());
        let h = Harness::new(&model);
        h.run(&text, h.options()).0.unwrap_or_else(|e| panic!("{}: {}", f.display(), e.report()));
        let name = f.file_stem().unwrap().to_string_lossy().into_owned();
        let before = calls(&h);
        let session = h.session(&text, h.options(), Arc::new(Recorder::default())).capturing();
        let options = crate::lifecycle::ResetOptions {
            consent: crate::prompt::Consent::Preview,
            force: false,
            apply: h.options(),
        };
        crate::lifecycle::reset_in(&session, options)
            .unwrap_or_else(|e| panic!("{}: {}", f.display(), e.report()));
        insta::assert_snapshot!(format!("reset_preview_{name}"), masked(&session.said()));
        let worker =
            model.hosts.iter().rev().find(|h| h.roles.worker && !h.roles.control_plane && !h.roles.etcd);
        if let Some(w) = worker {
            let mut o = h.options();
            o.ignore_preflight = vec!["all".into()];
            o.dry_run = true;
            let session = h.session(&text, o.clone(), Arc::new(Recorder::default())).capturing();
            let options = crate::lifecycle::RemoveOptions {
                node: w.name.clone(),
                force: false,
                drain_timeout: std::time::Duration::from_secs(300),
                apply: o,
                replacing: false,
                skip_drain: false,
            };
            crate::lifecycle::remove_node_in(&session, options)
                .unwrap_or_else(|e| panic!("{}: {}", f.display(), e.report()));
            insta::assert_snapshot!(format!("remove_node_preview_{name}"), masked(&session.said()));
        }
        for (host, t) in &h.hosts {
            let new = &t.calls()[before[host]..];
            assert!(
                new.iter().all(|c| matches!(c, crate::transport::fake::Call::Exec(x) if !x.contains("disable --now") && !x.contains("rm -rf"))),
                "{}: a preview changed {host}: {new:?}",
                f.display()
            );
        }
    }
}

/// A member whose restore fails: the error names the host, the step and the cause, and says how to go on.
#[test]
fn a_failed_member_restore_names_the_host_the_step_and_the_cause() {
    let h = installed(TRIO);
    let archive = archive_of(&h);
    h.hosts["cp1"].on("snapshot restore", Reply::fail(1, "Error: data-dir \"/var/lib/etcd.restore\" exists"));
    let session = h.session(TRIO, h.options(), Arc::new(Recorder::default()));
    let e = restore(&h, &archive, &session).unwrap_err();
    let report = e.report();
    assert!(report.contains("cp1: restoring the etcd data"), "{report}");
    assert!(
        report.contains("data-dir") && report.contains("hint: run the same `kubeforge restore` again"),
        "{report}"
    );
    assert_eq!(e.exit_code(), 1);
}

// `upgrade` on the simulated hosts: its own code (`upgrade::apply_in`, `plan_in`) in a session.

/// What the simulated cluster's API says: nodes cordoned, and nodes whose new kubelet never gets Ready.
#[derive(Default, Clone)]
struct SimApi {
    cordoned: Arc<Mutex<BTreeSet<String>>>,
    /// A node listed here is NotReady while its kubelet runs another version than the one listed.
    refuses: Arc<Mutex<BTreeMap<String, String>>>,
}

impl SimApi {
    /// What `kubectl cordon|uncordon NODE` does to the simulated API.
    fn kubectl_cordon(&self, argv: &[String]) {
        let at = |w: &str| argv.iter().position(|x| x == w).and_then(|i| argv.get(i + 1)).cloned();
        if let Some(n) = at("uncordon") {
            self.cordoned.lock().unwrap().remove(&n);
        } else if let Some(n) = at("cordon") {
            self.cordoned.lock().unwrap().insert(n);
        }
    }
}

/// The version a simulated host's binary reports (the fake artifacts say theirs).
fn sim_version(fake: &FakeTransport, bin: &str) -> Option<String> {
    let b = fake.file(&format!("/usr/local/bin/{bin}"))?;
    String::from_utf8_lossy(&b).split_whitespace().nth(1).map(str::to_owned)
}

/// The simulated hosts answer what an upgrade reads: each host's binaries' `--version`s, and on every
/// control plane the health script (each etcd member healthy, each apiserver ready at its binary's
/// version, each node Ready with its kubelet's version unless it `refuses` it) and kubectl's cordon and
/// uncordon; cp1 takes etcd snapshots.
fn simulate_upgrades(h: &Harness, text: &str) -> SimApi {
    let model = ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), text).unwrap());
    let api = SimApi::default();
    for t in h.hosts.values() {
        t.handle("for b in kube-apiserver kube-controller-manager", |_, fake| {
            let mut out = String::new();
            for b in crate::upgrade::policy::KUBE_BINARIES.iter().chain(&["etcd", "containerd"]) {
                if let Some(v) = sim_version(fake, b) {
                    out.push_str(&format!("{b} {v}\n"));
                }
            }
            Reply::ok(out)
        });
    }
    for cp in model.control_planes() {
        let (hosts, model, a) = (h.hosts.clone(), model.clone(), api.clone());
        h.hosts[&cp.name].handle("endpoint health", move |_, _| {
            let mut out = String::new();
            for m in model.etcd_members() {
                out.push_str(&format!("etcd {} healthy\n", crate::model::url(m.internal_ip, 2379)));
            }
            for c in model.control_planes() {
                let v = sim_version(&hosts[&c.name], "kube-apiserver").unwrap_or("unknown".into());
                out.push_str(&format!("api {} ok {v}\n", c.internal_ip));
            }
            for n in model.nodes() {
                let v = sim_version(&hosts[&n.name], "kubelet").unwrap_or_default();
                let ready = a.refuses.lock().unwrap().get(&n.name).is_none_or(|ok| *ok == v);
                let cordoned = a.cordoned.lock().unwrap().contains(&n.name);
                out.push_str(&format!(
                    "node {}|{v}|{cordoned}|{}\n",
                    n.name,
                    if ready { "True" } else { "False" }
                ));
            }
            Reply::ok(out)
        });
        let a = api.clone();
        h.hosts[&cp.name].handle("cordon", move |argv, _| {
            a.kubectl_cordon(argv);
            Reply::ok("")
        });
    }
    if let Some(m) = model.etcd_members().next() {
        h.hosts[&m.name].handle("snapshot save", |argv, fake| snapshot_saved(argv, fake, false));
    }
    api
}

fn upgrade_options(to: &str) -> crate::upgrade::UpgradeOptions {
    crate::upgrade::UpgradeOptions {
        to: Some(to.parse().unwrap()),
        consent: crate::prompt::Consent::Given,
        batch: crate::upgrade::Batch::Nodes(1),
        drain_timeout: std::time::Duration::from_secs(60),
        gate_timeout: std::time::Duration::from_secs(0),
        edit_inventory: false,
    }
}

/// `upgrade apply` in a new session on the harness: the result, the stages entered and what it said.
fn upgrade(h: &Harness, o: &crate::upgrade::UpgradeOptions) -> (Result<i32>, Vec<String>, String) {
    let session = h.session(TRIO, h.options(), Arc::new(Recorder::default())).capturing();
    let r = crate::upgrade::apply_in(&session, o);
    (r, session.stages(), session.said())
}

/// The stages entered, each `step` followed by the step's stages, as one line per step.
fn rounds(stages: &[String]) -> Vec<String> {
    let mut out: Vec<String> = vec![String::new()];
    for s in stages {
        let s = s.strip_prefix("upgrade/").unwrap_or(s);
        if s == "step" || s == "report" {
            out.push(String::new());
        }
        let line = out.last_mut().unwrap();
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(s);
    }
    out
}

/// The calls since `before` other than an upgrade's reads (the marker, the versions, the health,
/// preflight's facts, the state probe).
fn not_reads(h: &Harness, before: &BTreeMap<String, usize>) -> Vec<String> {
    let reads = ["for b in kube-apiserver", "endpoint health", "os-release", "sha256sum <"];
    wrote_since(h, before)
        .into_iter()
        .filter(|c| !(c.contains(": Exec(") && reads.iter().any(|r| c.contains(r))))
        .collect()
}

fn kubelet_of(h: &Harness, host: &str) -> String {
    sim_version(&h.hosts[host], "kubelet").unwrap_or_default()
}

#[test]
fn an_upgrade_moves_one_host_at_a_time_draining_workers_and_a_second_run_has_nothing_to_do() {
    let h = installed(TRIO);
    let api = simulate_upgrades(&h, TRIO);
    let before = command_counts(&h);
    let (r, stages, said) = upgrade(&h, &upgrade_options("v1.36.4"));
    r.unwrap_or_else(|e| panic!("{}\n{said}", e.report()));
    assert_eq!(
        rounds(&stages),
        [
            "read path preview identity artifacts snapshot",
            "step cordon drain leadership converge gate uncordon workloads",
            "step cordon drain leadership converge gate uncordon workloads",
            "step cordon drain leadership converge gate uncordon workloads",
            "report",
        ],
        "{stages:?}"
    );
    for host in ["cp1", "w1", "w2"] {
        assert_eq!(kubelet_of(&h, host), "v1.36.4", "{host}");
    }
    assert_eq!(sim_version(&h.hosts["cp1"], "kube-apiserver").as_deref(), Some("v1.36.4"));
    // One worker at a time: w1 is back in service before w2 is cordoned; nothing stays cordoned.
    let api_calls = new_commands(&h, "cp1", &before);
    let at = |needle: &str| {
        api_calls
            .iter()
            .position(|c| c.contains(needle))
            .unwrap_or_else(|| panic!("{needle}: {api_calls:#?}"))
    };
    assert!(at("snapshot save") < at("cordon cp1") && at("uncordon cp1") < at("cordon w1"));
    assert!(at("cordon w1") < at("drain w1") && at("drain w1") < at("uncordon w1"));
    assert!(at("uncordon w1") < at("cordon w2"), "{api_calls:#?}");
    assert!(api.cordoned.lock().unwrap().is_empty());
    assert!(said.contains("upgrade: trio now runs v1.36.4"), "{said}");
    assert!(said.contains("next: set `kubernetesVersion: v1.36.4`"), "{said}");
    let state = ClusterState::load(&h.options().pki_root, "trio").unwrap();
    assert_eq!(state.hosts["w1"].previous_kubernetes.as_deref(), Some("v1.35.7"));
    // Again: every host runs the target, nothing is touched.
    let before = call_counts(&h);
    let (r, stages, said) = upgrade(&h, &upgrade_options("v1.36.4"));
    assert_eq!(r.unwrap(), 0);
    assert!(said.contains("upgrade: 0 changes (every host runs v1.36.4)"), "{said}");
    assert_eq!(rounds(&stages), ["read path preview"]);
    let writes = not_reads(&h, &before);
    assert!(writes.is_empty(), "{writes:#?}");
}

#[test]
fn upgrade_plan_prints_the_steps_upgrade_apply_runs_and_writes_nothing() {
    let h = installed(TRIO);
    let _api = simulate_upgrades(&h, TRIO);
    let before = call_counts(&h);
    let session = h.session(TRIO, h.options(), Arc::new(Recorder::default())).capturing();
    let code = crate::upgrade::plan_in(
        &session,
        Some("v1.36.4".parse().unwrap()),
        crate::upgrade::Batch::Nodes(2),
        crate::output::Format::Json,
    )
    .unwrap_or_else(|e| panic!("{}", e.report()));
    assert_eq!(code, 0, "{}", session.said());
    let writes = not_reads(&h, &before);
    assert!(writes.is_empty(), "the plan wrote on a host: {writes:#?}");
    let doc: serde_json::Value = serde_json::from_str(&session.said()).unwrap();
    assert_eq!(doc["kind"], "UpgradePlan");
    let plan = &doc["plans"][0];
    assert_eq!((plan["current"].as_str(), plan["target"].as_str()), (Some("v1.35.7"), Some("v1.36.4")));
    let steps = &plan["hops"][0]["steps"];
    assert_eq!(
        steps,
        &serde_json::json!([
            {"kind": "control-plane", "hosts": ["cp1"]},
            {"kind": "workers", "hosts": ["w1", "w2"]},
        ])
    );
    let touched: Vec<(&str, bool)> = plan["touches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["host"].as_str().unwrap(), t["drains"].as_bool().unwrap()))
        .collect();
    assert_eq!(touched, [("cp1", true), ("w1", true), ("w2", true)]);
    // apply with the same batch runs those steps: both workers drained in one step.
    let mut o = upgrade_options("v1.36.4");
    o.batch = crate::upgrade::Batch::Nodes(2);
    let (r, stages, _) = upgrade(&h, &o);
    r.unwrap_or_else(|e| panic!("{}", e.report()));
    assert_eq!(
        rounds(&stages)[2],
        "step cordon drain leadership converge gate uncordon workloads",
        "{stages:?}"
    );
}

#[test]
fn an_interrupt_during_a_drain_uncordons_the_node_changes_nothing_more_and_a_rerun_finishes() {
    let h = installed(TRIO);
    let api = simulate_upgrades(&h, TRIO);
    let session = h.session(TRIO, h.options(), Arc::new(Recorder::default())).capturing();
    let stop = session.executor.stop_flag();
    h.hosts["cp1"].handle("drain w1", move |_, _| {
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        Reply::ok("node/w1 drained")
    });
    let e = crate::upgrade::apply_in(&session, &upgrade_options("v1.36.4")).unwrap_err();
    assert_eq!(e.exit_code(), 130, "{}", e.report());
    assert!(e.to_string().contains("interrupted before `converge`"), "{e}");
    assert_eq!(session.stages().last().map(String::as_str), Some("upgrade/drain"));
    assert_eq!(kubelet_of(&h, "w1"), "v1.35.7", "w1 was not changed");
    assert!(api.cordoned.lock().unwrap().is_empty(), "w1 left cordoned");
    // The re-run skips cp1 (on the target) and finishes the workers.
    h.hosts["cp1"].handle("drain w1", |_, _| Reply::ok("node/w1 drained"));
    let (r, stages, said) = upgrade(&h, &upgrade_options("v1.36.4"));
    r.unwrap_or_else(|e| panic!("{}\n{said}", e.report()));
    assert_eq!(rounds(&stages)[1], "step", "cp1 has nothing to do: {stages:?}");
    assert_eq!((kubelet_of(&h, "w1"), kubelet_of(&h, "w2")), ("v1.36.4".into(), "v1.36.4".into()));
    assert!(api.cordoned.lock().unwrap().is_empty());
}

#[test]
fn a_node_that_fails_its_gate_is_rolled_back_uncordoned_and_the_upgrade_stops_there() {
    let h = installed(TRIO);
    let api = simulate_upgrades(&h, TRIO);
    api.refuses.lock().unwrap().insert("w1".into(), "v1.35.7".into());
    let (r, stages, said) = upgrade(&h, &upgrade_options("v1.36.4"));
    let e = r.unwrap_err();
    assert_eq!(e.exit_code(), 1);
    let text = e.to_string();
    assert!(text.contains("w1: failed and rolled back to v1.35.7"), "{text}\n{said}");
    assert!(text.contains("w1: Node not Ready with kubelet v1.36.4"), "{text}");
    assert!(text.contains("versions now:"), "{text}");
    assert_eq!(rounds(&stages).last().unwrap(), "step cordon drain leadership converge gate rollback");
    assert_eq!(kubelet_of(&h, "w1"), "v1.35.7");
    assert_eq!(kubelet_of(&h, "w2"), "v1.35.7", "the upgrade stopped before w2");
    assert!(api.cordoned.lock().unwrap().is_empty(), "w1 runs what it ran: back in service");
}

/// An interrupt (the executor's stop flag, as the first Ctrl-C raises it) at each stage of an upgrade: the
/// step in progress finishes or is rolled back, no node stays cordoned, every host runs one whole version,
/// and a re-run finishes the upgrade.
#[test]
fn an_interrupt_at_any_stage_of_an_upgrade_leaves_no_node_cordoned_and_a_rerun_finishes() {
    use std::sync::atomic::{AtomicBool, Ordering};
    // (host, a command the stage runs there, the stage it interrupts)
    let points = [
        ("cp1", "snapshot save", "snapshot"),
        ("cp1", "cordon w1", "cordon"),
        ("cp1", "drain w1", "drain"),
        ("w1", "10248/healthz", "converge"),
        ("cp1", "uncordon w1", "uncordon"),
    ];
    for (host, needle, stage) in points {
        let h = installed(TRIO);
        let api = simulate_upgrades(&h, TRIO);
        let session = h.session(TRIO, h.options(), Arc::new(Recorder::default())).capturing();
        let stop: Arc<AtomicBool> = session.executor.stop_flag();
        let a = api.clone();
        h.hosts[host].handle(needle, move |argv, fake| {
            stop.store(true, Ordering::SeqCst);
            a.kubectl_cordon(argv);
            if argv.iter().any(|x| x.contains("snapshot save")) {
                return snapshot_saved(argv, fake, false);
            }
            Reply::ok("")
        });
        let e = crate::upgrade::apply_in(&session, &upgrade_options("v1.36.4")).unwrap_err();
        assert_eq!(e.exit_code(), 130, "{stage}: {}", e.report());
        assert!(session.stages().contains(&format!("upgrade/{stage}")), "{stage}: {:?}", session.stages());
        assert!(api.cordoned.lock().unwrap().is_empty(), "{stage}: a node stayed cordoned");
        for n in ["cp1", "w1", "w2"] {
            let t = &h.hosts[n];
            let versions: BTreeSet<String> =
                ["kubelet", "kube-proxy"].iter().filter_map(|b| sim_version(t, b)).collect();
            assert_eq!(versions.len(), 1, "{stage}: {n} runs {versions:?}");
        }
        // After a converge is interrupted its host is back on what it ran.
        if stage == "converge" {
            assert_eq!(kubelet_of(&h, "w1"), "v1.35.7", "{stage}");
            assert!(session.stages().contains(&"upgrade/rollback".to_string()), "{stage}");
        }
        let _ = h.hosts[host].handle(needle, |argv, fake| {
            if argv.iter().any(|x| x.contains("snapshot save")) {
                return snapshot_saved(argv, fake, false);
            }
            Reply::ok("")
        });
        // The cordon bookkeeping comes back with the simulation's own handler.
        let a = api.clone();
        h.hosts["cp1"].handle("cordon", move |argv, _| {
            a.kubectl_cordon(argv);
            Reply::ok("")
        });
        let (r, _, said) = upgrade(&h, &upgrade_options("v1.36.4"));
        r.unwrap_or_else(|e| panic!("{stage}: the re-run: {}\n{said}", e.report()));
        for n in ["cp1", "w1", "w2"] {
            assert_eq!(kubelet_of(&h, n), "v1.36.4", "{stage}: {n} after the re-run");
        }
        assert!(api.cordoned.lock().unwrap().is_empty(), "{stage}");
    }
}

/// `upgrade plan` for every example inventory, installed on the simulated hosts, to the next minor: the
/// versions per host, the path, each hop's numbered steps and checks, and what the hop touches.
#[test]
fn golden_upgrade_plans_for_every_example_inventory() {
    for f in example_inventories() {
        let text = std::fs::read_to_string(&f).unwrap();
        let model = ClusterModel::derive(&crate::inventory::parse(&f, &text).unwrap());
        let h = Harness::new(&model);
        h.run(&text, h.options()).0.unwrap_or_else(|e| panic!("{}: {}", f.display(), e.report()));
        let _api = simulate_upgrades(&h, &text);
        let v = model.versions.kubernetes;
        let to: crate::inventory::validate::Version = if v.minor >= 37 {
            format!("v1.{}.{}", v.minor, v.patch + 1)
        } else {
            format!("v1.{}.4", v.minor + 1)
        }
        .parse()
        .unwrap();
        let session = h.session(&text, h.options(), Arc::new(Recorder::default())).capturing();
        let code = crate::upgrade::plan_in(
            &session,
            Some(to),
            crate::upgrade::Batch::Nodes(2),
            crate::output::Format::Table,
        )
        .unwrap_or_else(|e| panic!("{}: {}", f.display(), e.report()));
        assert_eq!(code, 0, "{}: {}", f.display(), session.said());
        // Key and certificate sizes vary by a byte between runs.
        let shown: String = session
            .said()
            .lines()
            .map(|l| match l.find(" change(s), ") {
                Some(i) if l.contains(" bytes") => {
                    let rest = &l[i + " change(s), ".len()..];
                    let after = rest.find(" bytes").map(|j| &rest[j..]).unwrap_or("");
                    format!("{} change(s), N{after}\n", &l[..i])
                }
                _ => format!("{l}\n"),
            })
            .collect();
        let name = f.file_stem().unwrap().to_string_lossy().into_owned();
        insta::assert_snapshot!(format!("upgrade_plan_{name}"), shown);
    }
}

/// Whether `path` matches one of the space-separated `glob` patterns (`*` within one path component).
fn glob_matches(glob: &str, path: &str) -> bool {
    fn part(p: &str, s: &str) -> bool {
        match p.split_once('*') {
            None => p == s,
            Some((head, tail)) => {
                s.starts_with(head)
                    && (head.len()..=s.len()).any(|i| s.is_char_boundary(i) && part(tail, &s[i..]))
            }
        }
    }
    glob.split_whitespace().any(|g| {
        let (gs, ps): (Vec<&str>, Vec<&str>) = (g.split('/').collect(), path.split('/').collect());
        gs.len() == ps.len() && gs.iter().zip(&ps).all(|(g, p)| part(g, p))
    })
}

/// The CIS audit's file checks against the files the phases really write, with the modes they write them
/// with (not modes a test sets): every file check of a host with every role finds its files among what an
/// install uploaded, and they pass.
#[test]
fn the_files_the_phases_write_pass_the_audits_file_checks() {
    use crate::audit::Test;
    let h = installed(SINGLE);
    let mut written: BTreeMap<String, u32> = BTreeMap::new();
    for c in h.hosts["n1"].calls() {
        if let crate::transport::fake::Call::Upload { dest, mode, .. } = c {
            written.insert(dest, mode);
        }
    }
    let model = ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), SINGLE).unwrap());
    let checks = crate::audit::checks_for(&model.hosts[0]);
    let mut facts = crate::audit::Facts::default();
    let mut globs = Vec::new();
    for c in &checks {
        match c.test {
            Test::Mode(g, _) | Test::Owner(g, _) | Test::ModeIfPresent(g, _) | Test::OwnerIfPresent(g, _) => {
                // A directory (etcd's data) is made by its service, not uploaded.
                if g == crate::audit::ETCD_DATA_DIR {
                    continue;
                }
                let files: Vec<(String, u32, String)> = written
                    .iter()
                    .filter(|(p, _)| glob_matches(g, p))
                    .map(|(p, m)| (p.clone(), *m, "root:root".to_string()))
                    .collect();
                assert!(!files.is_empty(), "{} ({g}): the phases write no such file", c.id);
                facts.files.insert(g.to_string(), files);
                globs.push(c);
            }
            _ => {}
        }
    }
    assert!(globs.len() > 20, "{}", globs.len());
    for c in globs {
        let (ok, seen) = crate::audit::evaluate(c, &facts);
        assert!(ok || c.deviation.is_some(), "{} {}: {seen}", c.id, c.title);
    }
}

/// Two minors in one `upgrade apply`: the release source (a bundle offering v1.36.4) gives the hop between;
/// every host goes through v1.36.4 (the runtime moving to containerd 2 there) before v1.37.1, and the
/// plan's second hop sees the runtime already moved.
#[test]
fn an_upgrade_two_minors_ahead_goes_through_the_newest_patch_between_hop_by_hop() {
    let bundle = tempfile::tempdir().unwrap();
    std::fs::write(bundle.path().join("kube-apiserver"), b"kube-apiserver v1.36.4\n").unwrap();
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b"kube-apiserver v1.36.4\n"))
    };
    std::fs::write(
        bundle.path().join("manifest.json"),
        format!(
            r#"{{"schema": 1, "artifacts": [{{"component": "kube-apiserver", "version": "v1.36.4", "os": "linux", "arch": "amd64", "file": "kube-apiserver", "sha256": "{sha}", "kind": "binary"}}]}}"#
        ),
    )
    .unwrap();
    let text = TRIO.replace(
        "kubernetesVersion: v1.35.7}",
        &format!(
            "kubernetesVersion: v1.35.7, releaseSource: {{type: bundle, path: {}}}}}",
            bundle.path().display()
        ),
    );
    let model = ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), &text).unwrap());
    let h = Harness::new(&model);
    h.run(&text, h.options()).0.unwrap_or_else(|e| panic!("{}", e.report()));
    let api = simulate_upgrades(&h, &text);
    // The plan: two hops, the runtime moving in the first only.
    let session = h.session(&text, h.options(), Arc::new(Recorder::default())).capturing();
    crate::upgrade::plan_in(
        &session,
        Some("v1.37.1".parse().unwrap()),
        crate::upgrade::Batch::Nodes(1),
        crate::output::Format::Table,
    )
    .unwrap_or_else(|e| panic!("{}", e.report()));
    let plan = session.said();
    assert!(plan.contains("path: v1.35.7 → v1.36.4 → v1.37.1 (2 hops)"), "{plan}");
    let second = &plan[plan.find("hop to v1.37.1:").unwrap()..];
    assert!(!second.contains("container runtime →"), "the runtime moved in the first hop:\n{plan}");
    // The upgrade: every host at v1.36.4 before any at v1.37.1.
    let session = h.session(&text, h.options(), Arc::new(Recorder::default())).capturing();
    let o = upgrade_options("v1.37.1");
    crate::upgrade::apply_in(&session, &o).unwrap_or_else(|e| panic!("{}\n{}", e.report(), session.said()));
    let kubelets: Vec<(String, String)> = h.hosts["w2"]
        .calls()
        .iter()
        .filter_map(|c| match c {
            crate::transport::fake::Call::Upload { dest, sha256, .. } if dest == KUBELET => {
                Some((dest.clone(), sha256.clone()))
            }
            _ => None,
        })
        .collect();
    assert!(kubelets.len() >= 3, "w2's kubelet: installed, then each hop's: {kubelets:?}");
    for host in ["cp1", "w1", "w2"] {
        assert_eq!(kubelet_of(&h, host), "v1.37.1", "{host}");
    }
    let steps = rounds(&session.stages());
    assert_eq!(steps.iter().filter(|s| s.starts_with("step")).count(), 6, "3 steps per hop: {steps:?}");
    assert!(api.cordoned.lock().unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------------------
// `maintain` on the simulated hosts: its own code (`maintain::maintain_in`) in a session.

/// Fake files through which a simulated host plays its part in a maintenance.
const SIM_BOOT: &str = "/sim/boot-id";
const SIM_REBOOT_REQUIRED: &str = "/sim/reboot-required";
/// `apt-get -s upgrade` lines (`Inst name [old] (new ...)`), one per pending package.
const SIM_PACKAGES: &str = "/sim/packages";
/// Present: the packages install a new kernel (a reboot is required afterwards).
const SIM_KERNEL: &str = "/sim/kernel";
/// Present: the host does not come back from its reboot.
const SIM_STUCK: &str = "/sim/stuck";

/// The simulated hosts answer what an upgrade reads (health, versions, cordons) and what a maintenance
/// does: the read (boot id, apt, pending packages, reboot required), the package upgrade, the reboot (a
/// new boot id, unless the host is stuck) and the boot id.
fn simulate_maintenance(h: &Harness, text: &str) -> SimApi {
    let api = simulate_upgrades(h, text);
    for t in h.hosts.values() {
        let show = |fake: &FakeTransport, p: &str| {
            fake.file(p).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
        };
        t.put_file(SIM_BOOT, b"boot-0".to_vec());
        t.handle("cat /proc/sys/kernel/random/boot_id", move |_, fake| Reply::ok(show(fake, SIM_BOOT)));
        t.handle("Debug::NoLocking", move |argv, fake| {
            let mut out = format!("boot {}\npm apt\n", show(fake, SIM_BOOT));
            let required = fake.file(SIM_REBOOT_REQUIRED).is_some();
            out.push_str(if required { "reboot-required yes\n" } else { "reboot-required no\n" });
            if argv.iter().any(|a| a == "patch") {
                out.push_str("lists 1765000000\n");
                for l in show(fake, SIM_PACKAGES).lines() {
                    out.push_str(&format!("apt {l}\n"));
                }
            }
            Reply::ok(out)
        });
        t.handle("force-confold", |_, fake| {
            fake.remove_file(SIM_PACKAGES);
            if fake.file(SIM_KERNEL).is_some() {
                fake.put_file(SIM_REBOOT_REQUIRED, Vec::new());
                return Reply::ok("reboot-required yes\n");
            }
            Reply::ok("reboot-required no\n")
        });
        t.handle("kubeforge maintain: reboot", move |_, fake| {
            if fake.file(SIM_STUCK).is_none() {
                let n: u32 = show(fake, SIM_BOOT).trim_start_matches("boot-").parse().unwrap_or(0);
                fake.put_file(SIM_BOOT, format!("boot-{}", n + 1).into_bytes());
                fake.remove_file(SIM_REBOOT_REQUIRED);
            }
            Reply::ok("")
        });
    }
    api
}

fn maintain_options(patch: bool, reboot: crate::maintain::Reboot) -> crate::maintain::MaintainOptions {
    crate::maintain::MaintainOptions {
        hosts: None,
        patch,
        reboot,
        batch: crate::upgrade::Batch::Nodes(1),
        consent: crate::prompt::Consent::Given,
        drain_timeout: std::time::Duration::from_secs(60),
        reboot_timeout: std::time::Duration::from_millis(300),
        gate_timeout: std::time::Duration::from_secs(0),
        poll: std::time::Duration::ZERO,
    }
}

/// `maintain` in a new session on the harness: the result, the stages entered and what it said.
fn maintain(h: &Harness, o: &crate::maintain::MaintainOptions) -> (Result<i32>, Vec<String>, String) {
    let session = h.session(TRIO, h.options(), Arc::new(Recorder::default())).capturing();
    let r = crate::maintain::maintain_in(&session, o);
    (r, session.stages(), session.said())
}

fn boot_of(h: &Harness, host: &str) -> String {
    String::from_utf8(h.hosts[host].file(SIM_BOOT).unwrap_or_default()).unwrap()
}

fn maintain_rounds(stages: &[String]) -> Vec<String> {
    rounds(&stages.iter().map(|s| s.replace("maintain/", "upgrade/")).collect::<Vec<_>>())
}

#[test]
fn maintain_reboots_every_host_one_node_at_a_time_and_a_second_run_reboots_again_only_when_asked() {
    use crate::maintain::Reboot;
    let h = installed(TRIO);
    let api = simulate_maintenance(&h, TRIO);
    let before = command_counts(&h);
    let (r, stages, said) = maintain(&h, &maintain_options(false, Reboot::Always));
    r.unwrap_or_else(|e| panic!("{}\n{said}", e.report()));
    let step = "step cordon drain leadership reboot back gate uncordon workloads";
    assert_eq!(maintain_rounds(&stages), ["identity read preview", step, step, step, "report"], "{stages:?}");
    for host in ["cp1", "w1", "w2"] {
        assert_eq!(boot_of(&h, host), "boot-1", "{host} rebooted once");
    }
    // One node out of service at a time: each is uncordoned before the next is cordoned.
    let api_calls = new_commands(&h, "cp1", &before);
    let at = |needle: &str| {
        api_calls
            .iter()
            .position(|c| c.contains(needle))
            .unwrap_or_else(|| panic!("{needle}: {api_calls:#?}"))
    };
    assert!(at("cordon cp1") < at("drain cp1") && at("uncordon cp1") < at("cordon w1"));
    assert!(at("uncordon w1") < at("cordon w2") && at("drain w2") < at("uncordon w2"), "{api_calls:#?}");
    assert!(api.cordoned.lock().unwrap().is_empty());
    assert!(said.contains("the only control plane: the API is down while it reboots"), "{said}");
    assert!(said.contains("maintain: trio maintained"), "{said}");
    // The record is gone: the maintenance finished.
    let state = ClusterState::load(&h.options().pki_root, "trio").unwrap();
    assert_eq!(state.maintenance, None);
    // `--reboot auto` with nothing required and no packages: nothing to do, nothing touched.
    let before = call_counts(&h);
    let (r, stages, said) = maintain(&h, &maintain_options(true, Reboot::Auto));
    assert_eq!(r.unwrap(), 0);
    assert!(said.contains("maintain: nothing to do"), "{said}");
    assert_eq!(maintain_rounds(&stages), ["identity read preview"]);
    let writes = not_reads(&h, &before);
    let writes: Vec<&String> =
        writes.iter().filter(|c| !c.contains("Debug::NoLocking") && !c.contains("--- marker")).collect();
    assert!(writes.is_empty(), "{writes:#?}");
}

#[test]
fn maintain_patches_lists_the_packages_and_reboots_only_the_host_whose_kernel_asks_for_it() {
    use crate::maintain::Reboot;
    let h = installed(TRIO);
    let _api = simulate_maintenance(&h, TRIO);
    h.hosts["w1"].put_file(
        SIM_PACKAGES,
        b"linux-image-amd64 [6.1.153-1] (6.1.158-1 Debian-Security:12/stable-security [amd64])\n\
          openssl [3.0.17-1~deb12u2] (3.0.17-1~deb12u3 Debian:12.12/stable [amd64])\n"
            .to_vec(),
    );
    h.hosts["w1"].put_file(SIM_KERNEL, Vec::new());
    h.hosts["w2"].put_file(
        SIM_PACKAGES,
        b"tzdata [2025a-0+deb12u1] (2025b-0+deb12u1 Debian:12.12/stable [all])\n".to_vec(),
    );
    // The dry run shows each host's packages and writes nothing.
    let before = call_counts(&h);
    let mut o = maintain_options(true, Reboot::Auto);
    o.consent = crate::prompt::Consent::Preview;
    let (r, _, said) = maintain(&h, &o);
    assert_eq!(r.unwrap(), 0);
    assert!(said.contains("linux-image-amd64 6.1.153-1 -> 6.1.158-1"), "{said}");
    assert!(said.contains("reboot if the packages require it"), "{said}");
    assert!(said.contains("cp1            nothing to do"), "{said}");
    assert!(said.contains("package lists as of"), "{said}");
    assert!(said.contains("maintain --dry-run: nothing was changed"), "{said}");
    let writes: Vec<String> = not_reads(&h, &before)
        .into_iter()
        .filter(|c| !c.contains("Debug::NoLocking") && !c.contains("--- marker"))
        .collect();
    assert!(writes.is_empty(), "{writes:#?}");
    assert!(
        !not_reads(&h, &before).iter().any(|c| c.contains("patch refresh")),
        "a dry run does not refresh the lists"
    );
    // The run: w1 is patched and reboots (its kernel asks), w2 is patched and does not, cp1 is untouched.
    let before = command_counts(&h);
    let (r, stages, said) = maintain(&h, &maintain_options(true, Reboot::Auto));
    r.unwrap_or_else(|e| panic!("{}\n{said}", e.report()));
    assert_eq!(
        maintain_rounds(&stages),
        [
            "identity read preview",
            "step",
            "step cordon drain leadership patch reboot back gate uncordon workloads",
            "step cordon drain leadership patch gate uncordon workloads",
            "report"
        ],
        "{stages:?}"
    );
    assert_eq!(
        (boot_of(&h, "cp1"), boot_of(&h, "w1"), boot_of(&h, "w2")),
        ("boot-0".into(), "boot-1".into(), "boot-0".into())
    );
    assert!(new_commands(&h, "cp1", &before).iter().all(|c| !c.contains("cordon cp1")));
    assert!(h.hosts["w1"].file(SIM_PACKAGES).is_none() && h.hosts["w2"].file(SIM_PACKAGES).is_none());
    let row = |host: &str| said.lines().find(|l| l.starts_with(host)).unwrap_or_default().to_owned();
    assert!(row("w1").contains(" 2 ") && row("w1").contains("yes"), "{said}");
    assert!(row("w2").contains(" 1 ") && row("w2").contains(" no "), "{said}");
    assert!(row("cp1").contains("nothing to do"), "{said}");
}

#[test]
fn a_host_that_does_not_come_back_stops_the_run_cordoned_and_a_re_run_resumes_after_the_hosts_done() {
    use crate::maintain::Reboot;
    let h = installed(TRIO);
    let api = simulate_maintenance(&h, TRIO);
    h.hosts["w1"].put_file(SIM_STUCK, Vec::new());
    let (r, stages, said) = maintain(&h, &maintain_options(false, Reboot::Always));
    let e = r.expect_err("w1 never comes back").report();
    assert!(e.contains("maintenance stopped at `back`") && e.contains("w1: did not come back"), "{e}");
    assert!(e.contains("run `kubeforge maintain` again with the same settings"), "{e}");
    assert_eq!(
        maintain_rounds(&stages).last().unwrap(),
        "step cordon drain leadership reboot back",
        "{said}"
    );
    // w1 stays out of service; w2 was never touched.
    assert_eq!(api.cordoned.lock().unwrap().iter().cloned().collect::<Vec<_>>(), ["w1"]);
    assert_eq!(boot_of(&h, "w2"), "boot-0");
    let state = ClusterState::load(&h.options().pki_root, "trio").unwrap();
    let m = state.maintenance.clone().expect("the maintenance is recorded");
    assert_eq!(m.settings, "--reboot always");
    assert_eq!(m.done.keys().cloned().collect::<Vec<_>>(), ["cp1"]);
    // The admin fixes w1 (it boots) and uncordons it: the re-run skips cp1, reboots w1 and w2.
    h.hosts["w1"].remove_file(SIM_STUCK);
    h.hosts["w1"].put_file(SIM_BOOT, b"boot-7".to_vec());
    api.cordoned.lock().unwrap().clear();
    let (r, stages, said) = maintain(&h, &maintain_options(false, Reboot::Always));
    r.unwrap_or_else(|e| panic!("{}\n{said}", e.report()));
    assert!(said.contains("resuming the maintenance started"), "{said}");
    assert!(said.contains("done earlier in this maintenance (rebooted)"), "{said}");
    let step = "step cordon drain leadership reboot back gate uncordon workloads";
    assert_eq!(maintain_rounds(&stages), ["identity read preview", "step", step, step, "report"]);
    assert_eq!(
        (boot_of(&h, "cp1"), boot_of(&h, "w1"), boot_of(&h, "w2")),
        ("boot-1".into(), "boot-8".into(), "boot-1".into())
    );
    assert_eq!(ClusterState::load(&h.options().pki_root, "trio").unwrap().maintenance, None);
}

#[test]
fn a_drain_that_cannot_finish_stops_maintain_before_the_host_is_touched_and_uncordons_it() {
    use crate::maintain::Reboot;
    let h = installed(TRIO);
    let api = simulate_maintenance(&h, TRIO);
    h.hosts["cp1"]
        .on("drain w1", Reply::fail(1, "Cannot evict pod as it would violate the pod's disruption budget."));
    let (r, _, _) = maintain(&h, &maintain_options(false, Reboot::Always));
    let e = r.expect_err("the PDB holds").report();
    assert!(e.contains("w1: the drain did not finish") && e.contains("disruption budget"), "{e}");
    assert_eq!(boot_of(&h, "w1"), "boot-0", "w1 was not rebooted");
    assert_eq!(boot_of(&h, "w2"), "boot-0", "w2 was not touched");
    assert!(api.cordoned.lock().unwrap().is_empty(), "w1 is uncordoned again");
}

#[test]
fn an_interrupt_during_a_reboot_lets_the_host_finish_and_stops_before_the_next_which_a_re_run_does() {
    use crate::maintain::Reboot;
    let h = installed(TRIO);
    let api = simulate_maintenance(&h, TRIO);
    let session = h.session(TRIO, h.options(), Arc::new(Recorder::default())).capturing();
    let stop = session.executor.stop_flag();
    h.hosts["w1"].handle("kubeforge maintain: reboot", move |_, fake| {
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        fake.put_file(SIM_BOOT, b"boot-1".to_vec());
        Reply::ok("")
    });
    let e = crate::maintain::maintain_in(&session, &maintain_options(false, Reboot::Always)).unwrap_err();
    assert_eq!(e.exit_code(), 130, "{}", e.report());
    assert!(e.to_string().contains("interrupted before `step`"), "{}", e.report());
    // w1 came back, passed its gate and is in service again; w2 was not touched.
    assert!(api.cordoned.lock().unwrap().is_empty());
    assert_eq!((boot_of(&h, "w1"), boot_of(&h, "w2")), ("boot-1".into(), "boot-0".into()));
    let m = ClusterState::load(&h.options().pki_root, "trio").unwrap().maintenance.unwrap();
    assert_eq!(m.done.keys().cloned().collect::<Vec<_>>(), ["cp1", "w1"]);
    // The re-run does w2 only.
    let (r, stages, said) = maintain(&h, &maintain_options(false, Reboot::Always));
    r.unwrap_or_else(|e| panic!("{}\n{said}", e.report()));
    let step = "step cordon drain leadership reboot back gate uncordon workloads";
    assert_eq!(maintain_rounds(&stages), ["identity read preview", "step", "step", step, "report"]);
    assert_eq!(boot_of(&h, "w2"), "boot-1");
}

// ---------------------------------------------------------------------------------------------------------
// `replace-node` on the simulated hosts.

/// A session on `text` whose hosts are the harness's, except those given in `swap`.
fn session_with(h: &Harness, text: &str, swap: &[(&str, Arc<FakeTransport>)]) -> crate::session::Session {
    let path = h.dir.path().join("inventory.yaml");
    std::fs::write(&path, text).unwrap();
    let loaded = crate::inventory::parse(&path, text).unwrap();
    let mut transports: BTreeMap<String, Arc<dyn Transport>> =
        h.hosts.iter().map(|(n, t)| (n.clone(), t.clone() as Arc<dyn Transport>)).collect();
    for (n, t) in swap {
        transports.insert(n.to_string(), t.clone() as Arc<dyn Transport>);
    }
    let (dir, pad) = (h.dir.path().join("artifacts"), h.binary_pad);
    crate::session::Session::new(loaded, transports, h.options(), Arc::new(Recorder::default()))
        .unwrap()
        .with_artifacts_from(Arc::new(move |m: &ClusterModel| fake_artifacts_padded(m, &dir, pad)))
        .capturing()
}

fn replace_options(
    node: &str,
    address: &str,
    consent: crate::prompt::Consent,
) -> crate::replace::ReplaceOptions {
    crate::replace::ReplaceOptions {
        node: node.into(),
        address: address.into(),
        internal_address: None,
        force: false,
        drain_timeout: std::time::Duration::from_secs(60),
        edit_inventory: true,
        consent,
    }
}

#[test]
fn a_dead_worker_is_replaced_on_a_new_machine_under_its_name_with_its_pod_subnet() {
    let h = installed(TRIO);
    let _api = simulate_upgrades(&h, TRIO);
    let before = ClusterState::load(&h.options().pki_root, "trio").unwrap();
    // The old w2 does not answer any more; the new machine is empty.
    let dead = Arc::new(FakeTransport::new("w2"));
    dead.on("", Reply::Disconnect);
    let fresh = simulated("w2");
    let old = session_with(&h, TRIO, &[("w2", dead.clone())]);
    let o = replace_options("w2", "10.0.0.9", crate::prompt::Consent::Given);
    let (moved, text) = crate::replace::moved_inventory(&old.loaded, &o).unwrap();
    assert!(text.contains("{name: w2, address: 10.0.0.9, roles: [worker]}"), "{text}");
    let new = session_with(&h, &text, &[("w2", fresh.clone())]);
    assert_eq!(new.loaded.inventory.hosts, moved.inventory.hosts);
    let cp1 = command_counts(&h)["cp1"];
    std::fs::write(h.dir.path().join("inventory.yaml"), TRIO).unwrap();
    let r = crate::replace::replace_node_in(&old, &new, &o, &text);
    r.unwrap_or_else(|e| panic!("{}\n{}\n{}", e.report(), old.said(), new.said()));
    let said = format!("{}{}", old.said(), new.said());
    assert!(said.contains("does not answer: its Node is deleted without a drain"), "{said}");
    assert_eq!(
        old.stages().into_iter().filter(|s| s.starts_with("replace-node/")).collect::<Vec<_>>(),
        ["replace-node/select", "replace-node/preview", "replace-node/remove", "replace-node/join"]
    );
    // Through cp1: the Node deleted, never drained.
    let api: Vec<String> = h.hosts["cp1"].commands()[cp1..].to_vec();
    assert!(api.iter().any(|c| c.contains("delete node w2")), "{api:#?}");
    assert!(!api.iter().any(|c| c.contains("drain w2")), "{api:#?}");
    // The new machine runs the node's services; the state has it at its new address with its pod subnet.
    assert!(fresh.file(KUBELET).is_some(), "the kubelet is installed on the new machine");
    let after = ClusterState::load(&h.options().pki_root, "trio").unwrap();
    assert_eq!(after.hosts["w2"].internal_address, "10.0.0.9");
    assert_eq!(after.pod_subnets["w2"], before.pod_subnets["w2"], "the pod subnet stays");
    assert_eq!(after.pod_subnets.len(), before.pod_subnets.len());
    // --edit-inventory: the file says where w2 is now, every other byte as it was.
    let file = std::fs::read_to_string(h.dir.path().join("inventory.yaml")).unwrap();
    assert_eq!(file, TRIO.replace("address: 10.0.0.3", "address: 10.0.0.9"));
    assert!(said.contains("replace-node: w2 runs on 10.0.0.9"), "{said}");
}

#[test]
fn replace_node_refuses_the_only_etcd_member_a_name_not_in_the_inventory_and_the_same_address() {
    let h = installed(TRIO);
    let old = session_with(&h, TRIO, &[]);
    let e = crate::replace::moved_inventory(
        &old.loaded,
        &replace_options("w9", "10.0.0.9", crate::prompt::Consent::Given),
    )
    .unwrap_err();
    assert!(e.to_string().contains("`w9` is not in"), "{e}");
    let e = crate::replace::moved_inventory(
        &old.loaded,
        &replace_options("w2", "10.0.0.3", crate::prompt::Consent::Given),
    )
    .unwrap_err();
    assert!(e.to_string().contains("w2 is at 10.0.0.3 already"), "{e}");
    let e = crate::replace::moved_inventory(
        &old.loaded,
        &replace_options("w2", "10.0.0.1", crate::prompt::Consent::Given),
    )
    .unwrap_err();
    assert!(e.to_string().contains("w2 at 10.0.0.1"), "the address of another host is refused: {e}");
    let o = replace_options("cp1", "10.0.0.9", crate::prompt::Consent::Given);
    let (_, text) = crate::replace::moved_inventory(&old.loaded, &o).unwrap();
    let new = session_with(&h, &text, &[]);
    let e = crate::replace::replace_node_in(&old, &new, &o, &text).unwrap_err();
    assert!(e.to_string().contains("cp1 is the only etcd member"), "{e}");
}

#[test]
fn a_dead_control_plane_is_replaced_its_etcd_member_removed_first_and_the_new_one_joins_as_a_learner() {
    let h = installed(HA);
    let before = ClusterState::load(&h.options().pki_root, "ha").unwrap();
    let dead = Arc::new(FakeTransport::new("cp3"));
    dead.on("", Reply::Disconnect);
    let fresh = simulated("cp3");
    let old = session_with(&h, HA, &[("cp3", dead)]);
    let o = replace_options("cp3", "10.0.0.9", crate::prompt::Consent::Given);
    let (_, text) = crate::replace::moved_inventory(&old.loaded, &o).unwrap();
    let new = session_with(&h, &text, &[("cp3", fresh.clone())]);
    let (cp1, cp2) = (command_counts(&h)["cp1"], command_counts(&h)["cp2"]);
    crate::replace::replace_node_in(&old, &new, &o, &text)
        .unwrap_or_else(|e| panic!("{}\n{}\n{}", e.report(), old.said(), new.said()));
    // The member left first, through a member that stays, with the quorum check.
    let on_cp1 = h.hosts["cp1"].commands()[cp1..].to_vec();
    let removed = on_cp1
        .iter()
        .position(|c| c.contains("e member remove") && c.contains("https://10.0.0.3:2380"))
        .unwrap_or_else(|| panic!("{on_cp1:#?}"));
    assert!(on_cp1[removed].contains("need=$((remaining / 2 + 1))"));
    // The new machine joined as an etcd learner at its own address, and the apiservers that stay list it.
    let _ = cp2;
    let learner =
        fresh.commands().into_iter().any(|c| c.contains("--learner") && c.contains("https://10.0.0.9:2380"));
    assert!(learner, "{:#?}", fresh.commands());
    let unit = |t: &FakeTransport, u: &str| {
        String::from_utf8(t.file(&format!("/etc/systemd/system/{u}.service")).unwrap()).unwrap()
    };
    // Every node's API balancer sends to the new machine, not the old one.
    for n in ["cp1", "cp2", "w1"] {
        let u = unit(&h.hosts[n], "kube-api-lb");
        assert!(u.contains("--backend=10.0.0.9:6443") && !u.contains("10.0.0.3:6443"), "{n}: {u}");
    }
    assert!(unit(&fresh, "kube-apiserver").contains("--advertise-address=10.0.0.9"));
    let after = ClusterState::load(&h.options().pki_root, "ha").unwrap();
    assert_eq!(after.hosts["cp3"].internal_address, "10.0.0.9");
    assert_eq!(after.etcd_members, before.etcd_members);
    assert_eq!(after.pod_subnets["cp3"], before.pod_subnets["cp3"]);
}

#[test]
fn maintain_refuses_to_start_when_a_host_cannot_refresh_its_package_lists() {
    use crate::maintain::Reboot;
    let h = installed(TRIO);
    let _api = simulate_maintenance(&h, TRIO);
    h.hosts["w2"].handle("Debug::NoLocking", |_, _| {
        Reply::ok("boot boot-0\npm apt\nreboot-required no\nerror apt-get update failed\n")
    });
    let before = call_counts(&h);
    let (r, stages, _) = maintain(&h, &maintain_options(true, Reboot::Auto));
    let e = r.expect_err("w2 cannot refresh").report();
    assert!(e.contains("maintenance cannot start, nothing was changed: w2: apt-get update failed"), "{e}");
    assert_eq!(maintain_rounds(&stages), ["identity read preview"]);
    let writes: Vec<String> = not_reads(&h, &before)
        .into_iter()
        .filter(|c| !c.contains("Debug::NoLocking") && !c.contains("--- marker"))
        .collect();
    assert!(writes.is_empty(), "{writes:#?}");
}
/// `rotate encryption-key` on these simulated hosts (its tests live beside the command).
#[path = "../rotate/simulated.rs"]
mod rotate_simulated;

/// `rotate service-account-key` on these simulated hosts (its tests live beside the command).
#[path = "../rotate/simulated_sa.rs"]
mod rotate_sa_simulated;

/// `rotate ca` on these simulated hosts (its tests live beside the command).
#[path = "../rotate/simulated_ca.rs"]
mod rotate_ca_simulated;
