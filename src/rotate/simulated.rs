//! `rotate encryption-key` on the simulated hosts of apply's tests (this module is a child of them, for their
//! harness): its own code ([`crate::rotate::encryption_key_in`]) in a session, against a simulated
//! apiserver that stores Secrets with the keys of the EncryptionConfiguration each control plane really
//! received, and a simulated etcd that the rotation reads back.

use super::*;
use crate::at_rest::{self, Step};
use crate::rotate::{encryption_key_in, RotateOptions};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

const CONFIG: &str = "/etc/kubernetes/encryption-config.yaml";

/// The keys a host's EncryptionConfiguration lists for Secrets, in order, as `provider:name`.
fn config_keys(fake: &FakeTransport) -> Vec<String> {
    let Some(text) = fake.file(CONFIG) else { return Vec::new() };
    let doc: serde_yaml::Value = serde_yaml::from_slice(&text).unwrap();
    let mut out = Vec::new();
    for p in doc["resources"][0]["providers"].as_sequence().unwrap() {
        let (provider, body) = p.as_mapping().unwrap().iter().next().unwrap();
        for k in body["keys"].as_sequence().into_iter().flatten() {
            out.push(format!("{}:{}", provider.as_str().unwrap(), k["name"].as_str().unwrap()));
        }
    }
    out
}

/// The keys a host's apiserver can read values of, as upstream reads them: a value goes to the first
/// provider whose prefix (`k8s:enc:secretbox:v1:`) it carries, and only that provider's keys can read it (a
/// second entry of the same provider is never reached).
fn readable_keys(fake: &FakeTransport) -> Vec<String> {
    let Some(text) = fake.file(CONFIG) else { return Vec::new() };
    let doc: serde_yaml::Value = serde_yaml::from_slice(&text).unwrap();
    let mut seen_providers = BTreeSet::new();
    let mut out = Vec::new();
    for p in doc["resources"][0]["providers"].as_sequence().unwrap() {
        let (provider, body) = p.as_mapping().unwrap().iter().next().unwrap();
        let provider = provider.as_str().unwrap().to_owned();
        if !seen_providers.insert(provider.clone()) {
            continue;
        }
        for k in body["keys"].as_sequence().into_iter().flatten() {
            out.push(format!("{provider}:{}", k["name"].as_str().unwrap()));
        }
    }
    out
}

/// Each control plane's configured keys (`provider:name`, in order).
type Configs = BTreeMap<String, Vec<String>>;

/// The simulated cluster a rotation works on.
#[derive(Default, Clone)]
struct SimCluster {
    /// etcd: Secret key → the stored value's prefix label (`secretbox:kubeforge-1`, `identity`).
    etcd: Arc<Mutex<BTreeMap<String, String>>>,
    /// Secrets a rewrite leaves as they are (a write the apiserver skipped).
    stuck: Arc<Mutex<BTreeSet<String>>>,
    /// Control planes whose apiserver is not ready.
    down: Arc<Mutex<BTreeSet<String>>>,
    /// Each control plane's configured keys at every health reading (every gate).
    seen: Arc<Mutex<Vec<Configs>>>,
    /// Each control plane's readable keys ([`readable_keys`]) at the same readings.
    readers: Arc<Mutex<Vec<Configs>>>,
    /// Set when the Nth health reading happens (`usize::MAX`: never).
    stop_at_health: Arc<AtomicUsize>,
    health_reads: Arc<AtomicUsize>,
}

impl SimCluster {
    fn labels(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for l in self.etcd.lock().unwrap().values() {
            *m.entry(l.clone()).or_insert(0) += 1;
        }
        m
    }
}

fn value_of(label: &str) -> Vec<u8> {
    match label.split_once(':') {
        Some((p, n)) => format!("k8s:enc:{p}:v1:{n}:\x00sealed").into_bytes(),
        None => b"{\"kind\":\"Secret\"}".to_vec(),
    }
}

/// The simulation on `h`'s control planes: health (each etcd member healthy, each apiserver ready unless
/// `down`), the Secrets' namespaces, the rewrite (each Secret read with the keys the API host is configured
/// with, then written with its first key), and etcd's values. Five Secrets, written with the key the
/// installed configuration writes with. `stop` is raised at the `stop_at_health`th health reading.
fn simulate_rotation(h: &Harness, text: &str, stop: Option<Arc<AtomicBool>>) -> SimCluster {
    let model = ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), text).unwrap());
    let sim = SimCluster::default();
    sim.stop_at_health.store(usize::MAX, Ordering::SeqCst);
    let first = model.control_planes().next().unwrap().name.clone();
    let writer = config_keys(&h.hosts[&first])[0].clone();
    for (ns, name) in
        [("default", "a"), ("default", "b"), ("default", "c"), ("kube-system", "d"), ("team", "e")]
    {
        sim.etcd.lock().unwrap().insert(format!("/registry/secrets/{ns}/{name}"), writer.clone());
    }
    for cp in model.control_planes() {
        let (hosts, model2, s, stop) = (h.hosts.clone(), model.clone(), sim.clone(), stop.clone());
        h.hosts[&cp.name].handle("endpoint health", move |_, _| {
            let n = s.health_reads.fetch_add(1, Ordering::SeqCst) + 1;
            if n >= s.stop_at_health.load(Ordering::SeqCst) {
                if let Some(f) = &stop {
                    f.store(true, Ordering::SeqCst);
                }
            }
            s.seen.lock().unwrap().push(
                model2.control_planes().map(|c| (c.name.clone(), config_keys(&hosts[&c.name]))).collect(),
            );
            s.readers.lock().unwrap().push(
                model2.control_planes().map(|c| (c.name.clone(), readable_keys(&hosts[&c.name]))).collect(),
            );
            let mut out = String::new();
            for m in model2.etcd_members() {
                out.push_str(&format!("etcd {} healthy\n", crate::model::url(m.internal_ip, 2379)));
            }
            for c in model2.control_planes() {
                let ready = if s.down.lock().unwrap().contains(&c.name) { "down" } else { "ok" };
                out.push_str(&format!("api {} {ready} v1.35.7\n", c.internal_ip));
            }
            Reply::ok(out)
        });
        let s = sim.clone();
        h.hosts[&cp.name].handle("jsonpath={range .items[*]}{.metadata.namespace}", move |_, _| {
            let etcd = s.etcd.lock().unwrap();
            let nss: Vec<String> =
                etcd.keys().map(|k| k.split('/').nth(3).unwrap_or_default().to_owned()).collect();
            Reply::ok(nss.join("\n") + "\n")
        });
        let s = sim.clone();
        h.hosts[&cp.name].handle("replace --validate=false", move |argv, fake| {
            let (ns, res) = (&argv[argv.len() - 2], &argv[argv.len() - 1]);
            assert_eq!(res, "secrets");
            let keys = config_keys(fake);
            let readable = readable_keys(fake);
            let mut etcd = s.etcd.lock().unwrap();
            let stuck = s.stuck.lock().unwrap();
            let mut n = 0;
            for (k, label) in
                etcd.iter_mut().filter(|(k, _)| k.starts_with(&format!("/registry/secrets/{ns}/")))
            {
                // The apiserver reads with any key it lists (identity last), then writes with the first.
                if label != "identity" && !readable.contains(label) {
                    return Reply::fail(1, format!("Internal error occurred: no key for {label} ({k})"));
                }
                if !stuck.contains(k) {
                    *label = keys[0].clone();
                }
                n += 1;
            }
            Reply::ok(format!("{n}\n"))
        });
        let s = sim.clone();
        h.hosts[&cp.name].handle("--prefix -w json", move |_, _| {
            use base64::Engine;
            let b = |x: &[u8]| base64::engine::general_purpose::STANDARD.encode(x);
            let kvs: Vec<serde_json::Value> = s
                .etcd
                .lock()
                .unwrap()
                .iter()
                .map(|(k, l)| serde_json::json!({"key": b(k.as_bytes()), "value": b(&value_of(l))}))
                .collect();
            Reply::ok(format!("{}\n", serde_json::json!({"header": {}, "kvs": kvs, "count": kvs.len()})))
        });
    }
    sim
}

fn rotate_options(consent: crate::prompt::Consent) -> RotateOptions {
    RotateOptions {
        consent,
        gate_timeout: std::time::Duration::from_secs(0),
        poll: std::time::Duration::ZERO,
        clock: crate::rotate::Clock::system(),
        drop_old_now: false,
    }
}

/// `rotate encryption-key` in a new session on the harness: the result, the stages entered, what it said.
fn rotate(h: &Harness, text: &str, consent: crate::prompt::Consent) -> (Result<i32>, Vec<String>, String) {
    let session = h.session(text, h.options(), Arc::new(Recorder::default())).capturing();
    let r = encryption_key_in(&session, &rotate_options(consent));
    (r, session.stages(), session.said())
}

fn store_of(h: &Harness, cluster: &str) -> crate::pki::store::Store {
    crate::pki::store::Store::new(&h.options().pki_root, cluster)
}

/// No apiserver ever writes with a key that another apiserver cannot read: at every reading, each host's
/// writing key is listed by every host.
fn assert_always_readable(sim: &SimCluster) {
    let readers = sim.readers.lock().unwrap().clone();
    for (snapshot, reads) in sim.seen.lock().unwrap().iter().zip(&readers) {
        for (h, keys) in snapshot {
            let Some(writer) = keys.first() else { continue };
            for (other, theirs) in reads {
                assert!(
                    theirs.contains(writer),
                    "{h} writes with {writer} that {other} cannot read: {snapshot:?}"
                );
            }
        }
    }
}

fn stage_ids(stages: &[String]) -> Vec<&str> {
    stages.iter().map(|s| s.strip_prefix("rotate-encryption-key/").unwrap_or(s)).collect()
}

#[test]
fn a_rotation_rolls_each_step_out_one_control_plane_at_a_time_proves_and_switches_the_store() {
    use crate::prompt::Consent;
    let h = installed(HA);
    let sim = simulate_rotation(&h, HA, None);
    assert_eq!(sim.labels(), BTreeMap::from([("secretbox:kubeforge-1".to_string(), 5)]));
    let (r, stages, said) = rotate(&h, HA, Consent::Given);
    r.unwrap_or_else(|e| panic!("{}\n{said}", e.report()));
    assert_eq!(
        stage_ids(&stages),
        [
            "identity",
            "health",
            "preview",
            "begin",
            "read-both",
            "write-new",
            "rewrite",
            "prove",
            "drop-old",
            "finish"
        ],
        "every listed stage but the confirmation (--yes), in order"
    );
    assert_eq!(
        sim.labels(),
        BTreeMap::from([("secretbox:kubeforge-2".to_string(), 5)]),
        "every Secret rewritten"
    );
    assert!(
        said.contains("before: secretbox:kubeforge-1: 5")
            && said.contains("after:  secretbox:kubeforge-2: 5"),
        "{said}"
    );
    // One control plane at a time: between two gates, exactly one host's configuration moved.
    let seen = sim.seen.lock().unwrap().clone();
    let moves: Vec<(String, Vec<String>)> = seen
        .windows(2)
        .flat_map(|w| {
            w[1].iter()
                .filter(|(h, k)| w[0].get(*h) != Some(*k))
                .map(|(h, k)| (h.clone(), k.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let mut expect = Vec::new();
    for keys in [
        &["secretbox:kubeforge-1", "secretbox:kubeforge-2"][..],
        &["secretbox:kubeforge-2", "secretbox:kubeforge-1"],
        &["secretbox:kubeforge-2"],
    ] {
        for cp in ["cp1", "cp2", "cp3"] {
            expect.push((cp.to_string(), s(keys)));
        }
    }
    assert_eq!(moves, expect);
    assert_eq!(seen.len(), 1 + 9, "the health stage, then one gate per control plane and step");
    assert_always_readable(&sim);
    // The store: the new key is current, the old one kept aside, no rotation record.
    let store = store_of(&h, "ha");
    let keys = at_rest::load_or_create(&store, crate::pki::store::NewKeys::Refused).unwrap();
    assert_eq!((keys.current.name.as_str(), keys.rotation.is_none()), ("kubeforge-2", true));
    assert!(store.root().join("secrets/retired/kubeforge-1.json").exists());
    // A re-apply renders exactly what the rotation left: nothing to do on the control planes.
    let (summary, _) = h.run(HA, h.options());
    let summary = summary.unwrap();
    assert_eq!(summary.total_changes(), 0, "apply after a rotation changes nothing: {}", summary.plan.text());
    // A second run is a new rotation, to kubeforge-3.
    let (r, _, said) = rotate(&h, HA, Consent::Given);
    r.unwrap_or_else(|e| panic!("{}\n{said}", e.report()));
    assert_eq!(sim.labels(), BTreeMap::from([("secretbox:kubeforge-3".to_string(), 5)]));
}

#[test]
fn a_dry_run_reads_the_count_per_key_and_writes_nothing() {
    use crate::prompt::Consent;
    let h = installed(HA);
    let sim = simulate_rotation(&h, HA, None);
    let pki = h.options().pki_root;
    let (store_before, calls_before) = (tree(&pki), call_counts(&h));
    let (r, stages, said) = rotate(&h, HA, Consent::Preview);
    assert_eq!(r.unwrap(), 0);
    assert_eq!(stage_ids(&stages), ["identity", "health", "preview"]);
    assert!(
        said.contains("key secretbox:kubeforge-1 → kubeforge-2")
            && said.contains("objects in etcd now: secretbox:kubeforge-1: 5"),
        "{said}"
    );
    assert!(said.contains("nothing was changed"), "{said}");
    assert_eq!(tree(&pki), store_before, "nothing under pki/ was written");
    let writes: Vec<String> = wrote_since(&h, &calls_before)
        .into_iter()
        .filter(|c| {
            !(c.contains(": Exec(")
                && ["--- marker", "endpoint health", "--prefix -w json"].iter().any(|r| c.contains(r)))
        })
        .collect();
    assert!(writes.is_empty(), "only reads: {writes:?}");
    assert_eq!(sim.labels(), BTreeMap::from([("secretbox:kubeforge-1".to_string(), 5)]));
}

#[test]
fn an_unhealthy_cluster_is_refused_before_anything_is_written() {
    use crate::prompt::Consent;
    let h = installed(HA);
    let sim = simulate_rotation(&h, HA, None);
    sim.down.lock().unwrap().insert("cp2".into());
    let pki = h.options().pki_root;
    let before = tree(&pki);
    let (r, stages, _) = rotate(&h, HA, Consent::Given);
    let e = r.unwrap_err().report();
    assert!(
        e.contains("not healthy, nothing was changed") && e.contains("cp2: kube-apiserver is not ready"),
        "{e}"
    );
    assert_eq!(stage_ids(&stages), ["identity", "health"]);
    assert_eq!(tree(&pki), before, "no rotation recorded");
}

#[test]
fn the_proof_refuses_while_an_object_keeps_the_old_key_and_a_rerun_finishes() {
    use crate::prompt::Consent;
    let h = installed(HA);
    let sim = simulate_rotation(&h, HA, None);
    sim.stuck.lock().unwrap().insert("/registry/secrets/team/e".into());
    let (r, stages, _) = rotate(&h, HA, Consent::Given);
    let e = r.unwrap_err().report();
    assert!(
        e.contains("not proven: 1 of 5 value(s) in etcd do not carry the new key secretbox:kubeforge-2")
            && e.contains("1 with secretbox:kubeforge-1 (/registry/secrets/team/e)"),
        "{e}"
    );
    assert_eq!(stage_ids(&stages).last(), Some(&"prove"));
    // The old key stays everywhere (second, reading), and in the store.
    for cp in ["cp1", "cp2", "cp3"] {
        assert_eq!(config_keys(&h.hosts[cp]), ["secretbox:kubeforge-2", "secretbox:kubeforge-1"], "{cp}");
    }
    let keys = at_rest::load_or_create(&store_of(&h, "ha"), crate::pki::store::NewKeys::Refused).unwrap();
    assert_eq!(keys.current.name, "kubeforge-1");
    assert_eq!(keys.rotation.as_ref().map(|r| r.step), Some(Step::WriteNew));
    sim.stuck.lock().unwrap().clear();
    let (r, stages, said) = rotate(&h, HA, Consent::Given);
    r.unwrap_or_else(|e| panic!("{}\n{said}", e.report()));
    assert!(
        said.contains(
            "resuming the rotation of secretbox:kubeforge-1 → kubeforge-2 (secretbox) at write-new"
        ),
        "{said}"
    );
    assert!(!stage_ids(&stages).contains(&"read-both"), "{stages:?}");
    assert_eq!(sim.labels(), BTreeMap::from([("secretbox:kubeforge-2".to_string(), 5)]));
    assert_always_readable(&sim);
}

#[test]
fn an_aescbc_cluster_moves_to_secretbox_by_the_same_rotation() {
    use crate::prompt::Consent;
    let h = installed(HA);
    // A cluster made before secretbox: an aescbc key without a provider record.
    let store = store_of(&h, "ha");
    std::fs::remove_file(store.root().join(at_rest::PROVIDER_FILE)).unwrap();
    let (summary, _) = h.run(HA, h.options());
    summary.unwrap();
    assert_eq!(config_keys(&h.hosts["cp1"]), ["aescbc:kubeforge-1"]);
    let sim = simulate_rotation(&h, HA, None);
    assert_eq!(sim.labels(), BTreeMap::from([("aescbc:kubeforge-1".to_string(), 5)]));
    let (r, _, said) = rotate(&h, HA, Consent::Given);
    r.unwrap_or_else(|e| panic!("{}\n{said}", e.report()));
    assert_eq!(sim.labels(), BTreeMap::from([("secretbox:kubeforge-2".to_string(), 5)]));
    for cp in ["cp1", "cp2", "cp3"] {
        assert_eq!(config_keys(&h.hosts[cp]), ["secretbox:kubeforge-2"], "{cp}");
    }
    assert_eq!(std::fs::read_to_string(store.root().join(at_rest::PROVIDER_FILE)).unwrap(), "secretbox\n");
    let retired: at_rest::EncryptionKey = serde_json::from_slice(
        &std::fs::read(store.root().join("secrets/retired/kubeforge-1.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(retired.provider, at_rest::Provider::Aescbc);
    assert_always_readable(&sim);
}

/// An interrupt (the stop flag, as the first Ctrl-C raises it) at every gate and during the rewrite: the
/// run stops at the next boundary with exit 130, `apply` in between renders what the rotation last rolled
/// out (0 changes on the control planes), a backup then carries the rotation, and a re-run finishes the same
/// rotation (kubeforge-2, not a new one).
#[test]
fn an_interrupt_at_any_stage_boundary_resumes_the_same_rotation_and_apply_never_rolls_it_back() {
    use crate::prompt::Consent;
    // The Nth health reading: 1 is the health stage, 2..=10 the gates (three steps, three control planes).
    let points: Vec<Option<usize>> = (1..=10).map(Some).chain([None]).collect();
    for point in points {
        let h = installed(HA);
        let session = h.session(HA, h.options(), Arc::new(Recorder::default())).capturing();
        let stop = session.executor.stop_flag();
        let sim = simulate_rotation(&h, HA, Some(stop.clone()));
        match point {
            Some(n) => sim.stop_at_health.store(n, Ordering::SeqCst),
            // During the rewrite (the first namespace).
            None => {
                let (s, stop) = (sim.clone(), stop.clone());
                h.hosts["cp1"].handle("replace --validate=false", move |argv, fake| {
                    stop.store(true, Ordering::SeqCst);
                    let ns = &argv[argv.len() - 2];
                    let w = config_keys(fake)[0].clone();
                    let mut n = 0;
                    for (_, l) in
                        s.etcd.lock().unwrap().iter_mut().filter(|(k, _)| k.contains(&format!("/{ns}/")))
                    {
                        *l = w.clone();
                        n += 1;
                    }
                    Reply::ok(format!("{n}\n"))
                });
            }
        }
        let e = encryption_key_in(&session, &rotate_options(Consent::Given)).unwrap_err();
        assert_eq!(e.exit_code(), 130, "{point:?}: {}", e.report());
        assert!(
            e.report().contains("rotate encryption-key"),
            "{point:?}: the hint names the re-run: {}",
            e.report()
        );
        assert_always_readable(&sim);
        let configs: BTreeMap<String, Vec<String>> =
            ["cp1", "cp2", "cp3"].iter().map(|c| (c.to_string(), config_keys(&h.hosts[*c]))).collect();
        let store = store_of(&h, "ha");
        let recorded = at_rest::load_or_create(&store, crate::pki::store::NewKeys::Refused).unwrap();
        // A backup taken now carries the rotation's record (both keys).
        let files = crate::backup::pki_files(store.root()).unwrap();
        assert_eq!(
            files.iter().any(|f| f == Path::new(at_rest::ROTATION_FILE)),
            recorded.rotation.is_some(),
            "{point:?}"
        );
        // apply in the middle converges each control plane to the recorded step: the hosts already there
        // keep their file; none goes back.
        sim.stop_at_health.store(usize::MAX, Ordering::SeqCst);
        if recorded.rotation.is_some() {
            let (summary, _) = h.run(HA, h.options());
            summary.unwrap_or_else(|e| panic!("{point:?}: {}", e.report()));
            let want: Vec<String> = recorded.rendered().iter().map(|k| crate::rotate::label_of(k)).collect();
            for (cp, before) in &configs {
                let now = config_keys(&h.hosts[cp]);
                assert_eq!(now, want, "{point:?}: {cp} after apply");
                if *before != now {
                    // Only a host the interrupt left behind moves, and only forward.
                    assert!(before.len() <= 2, "{point:?}: {cp} {before:?} → {now:?}");
                }
            }
            assert_always_readable(&sim);
        }
        let (r, _, said) = rotate(&h, HA, Consent::Given);
        r.unwrap_or_else(|e| panic!("{point:?}: the re-run: {}\n{said}", e.report()));
        assert_eq!(
            sim.labels(),
            BTreeMap::from([("secretbox:kubeforge-2".to_string(), 5)]),
            "{point:?}: the same rotation finished"
        );
        for cp in ["cp1", "cp2", "cp3"] {
            assert_eq!(config_keys(&h.hosts[cp]), ["secretbox:kubeforge-2"], "{point:?}: {cp}");
        }
        let keys = at_rest::load_or_create(&store, crate::pki::store::NewKeys::Refused).unwrap();
        assert_eq!((keys.current.name.as_str(), keys.rotation.is_none()), ("kubeforge-2", true), "{point:?}");
        assert_always_readable(&sim);
    }
}

#[test]
fn a_control_plane_that_differs_beyond_the_encryption_config_stops_the_rotation_until_apply() {
    use crate::prompt::Consent;
    let h = installed(HA);
    let sim = simulate_rotation(&h, HA, None);
    h.hosts["cp2"].put_file("/etc/kubernetes/audit-policy.yaml", "edited by hand\n");
    let (r, _, _) = rotate(&h, HA, Consent::Given);
    let e = r.unwrap_err().report();
    assert!(
        e.contains("cp2: its control plane differs from what kubeforge renders beyond /etc/kubernetes/encryption-config.yaml (/etc/kubernetes/audit-policy.yaml)")
            && e.contains("run `kubeforge apply` first"),
        "{e}"
    );
    assert_eq!(config_keys(&h.hosts["cp2"]), ["secretbox:kubeforge-1"], "nothing written on cp2");
    assert_eq!(config_keys(&h.hosts["cp1"]), ["secretbox:kubeforge-1", "secretbox:kubeforge-2"]);
    assert_eq!(
        h.hosts["cp2"].file("/etc/kubernetes/audit-policy.yaml").as_deref(),
        Some(&b"edited by hand\n"[..])
    );
    // apply puts the file back and brings cp2 to the recorded step; the rotation then finishes.
    let (summary, _) = h.run(HA, h.options());
    summary.unwrap_or_else(|e| panic!("{}", e.report()));
    assert_eq!(config_keys(&h.hosts["cp2"]), ["secretbox:kubeforge-1", "secretbox:kubeforge-2"]);
    let (r, _, said) = rotate(&h, HA, Consent::Given);
    r.unwrap_or_else(|e| panic!("{}\n{said}", e.report()));
    assert_eq!(sim.labels(), BTreeMap::from([("secretbox:kubeforge-2".to_string(), 5)]));
    assert_always_readable(&sim);
}

#[test]
fn a_backup_from_before_a_rotation_in_progress_is_restored_only_with_its_own_store() {
    let h = installed(TRIO);
    let archive = archive_of(&h);
    // A rotation begun after the backup: the kept store would render keys the snapshot was not written with.
    let store = store_of(&h, "trio");
    let keys = at_rest::load_or_create(&store, crate::pki::store::NewKeys::Refused).unwrap();
    let mut r = at_rest::begin(&store, &keys).unwrap();
    r.step = Step::DropOld;
    at_rest::record(&store, &r).unwrap();
    let session = h.session(TRIO, h.options(), Arc::new(Recorder::default()));
    let e = restore(&h, &archive, &session).unwrap_err().report();
    assert!(
        e.contains("holds other encryption-at-rest keys than the backup")
            && e.contains("secrets/encryption-rotation.json")
            && e.contains("--replace-pki"),
        "{e}"
    );
    assert!(store.root().join(at_rest::ROTATION_FILE).exists(), "the store is untouched");
}
