//! `rotate ca` on the simulated hosts of apply's tests (this module is a child of them, for their harness):
//! its own code ([`crate::rotate::ca_in`]) in a session, against simulated control planes whose every health
//! reading (the health stage and each gate) records what each host holds: the certificates of every trust
//! file and kubeconfig, and every leaf. The tests then say, from the hosts' files alone, which CA each host
//! trusted and which CA signed its leaves at every gate.

use super::*;
use crate::pki::rotation::{self, CaStep};
use crate::pki::spec::CaId;
use crate::rotate::{ca_in, CaChoice, Clock, RotateOptions};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// What a host holds that carries PKI: per file (a kubeconfig twice: `#ca` and `#client`), the certificates
/// it trusts (fingerprints, in order), or the leaf it presents (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Held {
    Trust(Vec<String>),
    Leaf(Vec<u8>),
}

type HostPki = BTreeMap<String, Held>;

fn fingerprints(pem: &[u8]) -> Vec<String> {
    use sha2::Digest;
    x509_parser::pem::Pem::iter_from_buffer(pem)
        .map(|p| format!("sha256:{}", hex::encode(sha2::Sha256::digest(&p.unwrap().contents))))
        .collect()
}

/// A kubeconfig field's value, decoded (`certificate-authority-data`, `client-certificate-data`).
fn kubeconfig_field(text: &str, field: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let line = text.lines().find(|l| l.trim_start().starts_with(&format!("{field}:")))?;
    let value = line.split_once(':')?.1.trim();
    base64::engine::general_purpose::STANDARD.decode(value).ok()
}

/// Everything `fake` holds that carries PKI (rollback copies aside).
fn pki_of(fake: &FakeTransport) -> HostPki {
    let mut out = HostPki::new();
    for path in fake.paths() {
        if path.contains(".kubeforge-") {
            continue;
        }
        let data = fake.file(&path).unwrap_or_default();
        let text = String::from_utf8_lossy(&data);
        if path.ends_with(".conf") && text.contains("certificate-authority-data") {
            let ca = kubeconfig_field(&text, "certificate-authority-data").unwrap();
            out.insert(format!("{path}#ca"), Held::Trust(fingerprints(&ca)));
            if let Some(client) = kubeconfig_field(&text, "client-certificate-data") {
                out.insert(format!("{path}#client"), Held::Leaf(client));
            }
        } else if text.contains("-----BEGIN CERTIFICATE-----") {
            if path.ends_with("ca.crt") {
                out.insert(path, Held::Trust(fingerprints(&data)));
            } else {
                out.insert(path, Held::Leaf(data));
            }
        }
    }
    out
}

/// The CAs of a rotation: per store name, the old and the new certificate (PEM).
#[derive(Debug, Clone)]
struct Cas(BTreeMap<String, (String, String)>);

impl Cas {
    /// The CA (`ca`, `etcd/ca`, ...) and whether it is the new one, of a fingerprint.
    fn of(&self, fp: &str) -> (String, bool) {
        for (name, (old, new)) in &self.0 {
            if rotation::fingerprint(old) == fp {
                return (name.clone(), false);
            }
            if rotation::fingerprint(new) == fp {
                return (name.clone(), true);
            }
        }
        panic!("{fp} is none of the rotation's CAs")
    }

    /// The CA that signed `leaf`, and whether it is the new one.
    fn issuer(&self, leaf: &[u8]) -> (String, bool) {
        for (name, (old, new)) in &self.0 {
            if crate::pki::store::signed_by(leaf, old.as_bytes()) {
                return (name.clone(), false);
            }
            if crate::pki::store::signed_by(leaf, new.as_bytes()) {
                return (name.clone(), true);
            }
        }
        panic!("a leaf none of the rotation's CAs signed")
    }
}

/// How far a host is in the rotation of `rotated`, from its files alone: 0 before it, 1 trust-both (old and
/// new trusted, the old first; leaves by the old CA), 2 issue (new first; leaves by the new CA), 3 distrust
/// (the new alone); `None` for a host that holds nothing of the rotated CAs. Every file must agree, and the
/// CAs not rotated must be the old ones throughout.
fn stage_of_host(host: &str, pki: &HostPki, cas: &Cas, rotated: &[&str]) -> Option<u8> {
    let mut stages: BTreeMap<u8, Vec<&str>> = BTreeMap::new();
    let mut leaves_new = BTreeSet::new();
    for (path, held) in pki {
        match held {
            Held::Trust(fps) => {
                let of: Vec<(String, bool)> = fps.iter().map(|f| cas.of(f)).collect();
                let ca = &of[0].0;
                assert!(of.iter().all(|(c, _)| c == ca), "{host}: {path} mixes CAs: {of:?}");
                let news: Vec<bool> = of.iter().map(|(_, n)| *n).collect();
                let stage = match news.as_slice() {
                    [false] => 0,
                    [false, true] => 1,
                    [true, false] => 2,
                    [true] => 3,
                    other => panic!("{host}: {path} trusts {other:?}"),
                };
                if rotated.contains(&ca.as_str()) {
                    stages.entry(stage).or_default().push(path);
                } else {
                    assert_eq!(stage, 0, "{host}: {path} of {ca}, which is not rotated, changed");
                }
            }
            Held::Leaf(pem) => {
                let (ca, new) = cas.issuer(pem);
                if rotated.contains(&ca.as_str()) {
                    leaves_new.insert(new);
                } else {
                    assert!(!new, "{host}: {path} of {ca}, which is not rotated, was re-issued");
                }
            }
        }
    }
    assert!(stages.len() <= 1, "{host}: its trust files are at different steps: {stages:?}");
    let stage = stages.into_keys().next()?;
    let want_new = stage >= 2;
    assert!(
        leaves_new.iter().all(|n| *n == want_new),
        "{host}: at step {stage} its leaves are signed by the {} CA",
        if want_new { "old" } else { "new" }
    );
    Some(stage)
}

/// The simulated cluster: health on every control plane (each etcd member healthy, each apiserver ready
/// unless `down`); every reading records each host's PKI. `stop` is raised at the `stop_at_health`th reading.
#[derive(Default, Clone)]
struct SimCluster {
    down: Arc<Mutex<BTreeSet<String>>>,
    seen: Arc<Mutex<Vec<BTreeMap<String, HostPki>>>>,
    stop_at_health: Arc<AtomicUsize>,
    health_reads: Arc<AtomicUsize>,
}

fn simulate(h: &Harness, text: &str, stop: Option<Arc<AtomicBool>>) -> SimCluster {
    let model = ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), text).unwrap());
    let sim = SimCluster::default();
    sim.stop_at_health.store(usize::MAX, Ordering::SeqCst);
    for cp in model.control_planes() {
        let (hosts, model2, s, stop) = (h.hosts.clone(), model.clone(), sim.clone(), stop.clone());
        // The health read (`crate::upgrade::policy::read_health`), not the etcd phase's own health wait.
        h.hosts[&cp.name].handle("$host:6443/readyz", move |_, _| {
            let n = s.health_reads.fetch_add(1, Ordering::SeqCst) + 1;
            if n >= s.stop_at_health.load(Ordering::SeqCst) {
                if let Some(f) = &stop {
                    f.store(true, Ordering::SeqCst);
                }
            }
            s.seen.lock().unwrap().push(hosts.iter().map(|(n, t)| (n.clone(), pki_of(t))).collect());
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
    }
    sim
}

impl SimCluster {
    /// Each reading's step per host.
    fn steps(&self, cas: &Cas, rotated: &[&str]) -> Vec<BTreeMap<String, u8>> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|r| {
                r.iter().filter_map(|(h, p)| Some((h.clone(), stage_of_host(h, p, cas, rotated)?))).collect()
            })
            .collect()
    }

    /// Which host moved to which step between two readings, in order.
    fn moves(&self, cas: &Cas, rotated: &[&str]) -> Vec<(String, u8)> {
        self.steps(cas, rotated)
            .windows(2)
            .flat_map(|w| {
                w[1].iter()
                    .filter(|(h, s)| w[0].get(*h) != Some(*s))
                    .map(|(h, s)| (h.clone(), *s))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

fn store(h: &Harness) -> crate::pki::store::Store {
    crate::pki::store::Store::new(&h.options().pki_root, "ha")
}

/// The store's CA certificates now.
fn store_cas(h: &Harness) -> BTreeMap<String, String> {
    CaId::ALL
        .iter()
        .map(|c| {
            (
                c.name().to_string(),
                String::from_utf8(store(h).read(&format!("{}.crt", c.name())).unwrap()).unwrap(),
            )
        })
        .collect()
}

/// The CAs of a rotation from the store's CAs before it and after it (or the record's new ones).
fn cas(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Cas {
    Cas(before.iter().map(|(n, old)| (n.clone(), (old.clone(), after[n].clone()))).collect())
}

/// The record's new CAs over the store's (the CAs a rotation in progress moves to).
fn recorded_new(h: &Harness) -> BTreeMap<String, String> {
    let mut m = store_cas(h);
    if let Some(r) = rotation::load(&store(h)).unwrap() {
        for (n, p) in r.cas {
            m.insert(n, p.new_cert);
        }
    }
    m
}

fn options(consent: crate::prompt::Consent) -> RotateOptions {
    RotateOptions {
        consent,
        gate_timeout: Duration::from_secs(0),
        poll: Duration::ZERO,
        clock: Clock::system(),
        drop_old_now: false,
    }
}

/// `rotate ca` in a new session: the result, the stages entered, what it said.
fn rotate(
    h: &Harness,
    consent: crate::prompt::Consent,
    only: &[CaChoice],
) -> (Result<i32>, Vec<String>, String) {
    rotate_on(h, HA, consent, only)
}

/// [`rotate`] on the cluster of inventory `text`.
fn rotate_on(
    h: &Harness,
    text: &str,
    consent: crate::prompt::Consent,
    only: &[CaChoice],
) -> (Result<i32>, Vec<String>, String) {
    let session = h.session(text, h.options(), Arc::new(Recorder::default())).capturing();
    let r = ca_in(&session, &options(consent), only);
    (r, session.stages(), session.said())
}

fn stage_ids(stages: &[String]) -> Vec<&str> {
    stages.iter().map(|s| s.strip_prefix("rotate-ca/").unwrap_or(s)).collect()
}

/// A user's kubeconfig issued (and recorded in the ledger) before the rotation.
fn issue_user(h: &Harness, user: &str) {
    let model = ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), HA).unwrap());
    crate::pki::users::issue_user(
        &store(h),
        &model.pki_inputs(),
        user,
        &["dev".to_string()],
        Duration::from_secs(3600),
    )
    .unwrap();
}

const ALL: &[&str] = &["ca", "etcd/ca", "front-proxy-ca"];
const ORDER: [&str; 4] = ["cp1", "cp2", "cp3", "w1"];

#[test]
fn a_rotation_trusts_both_then_issues_then_distrusts_host_by_host_and_switches_the_store() {
    use crate::prompt::Consent;
    let h = installed(HA);
    issue_user(&h, "alice");
    let sim = simulate(&h, HA, None);
    let before = store_cas(&h);
    let (r, stages, said) = rotate(&h, Consent::Given, &[]);
    assert_eq!(r.unwrap_or_else(|e| panic!("{}\n{said}", e.report())), 0);
    assert_eq!(
        stage_ids(&stages),
        ["identity", "health", "preview", "begin", "trust-both", "issue", "distrust", "finish"]
    );
    let after = store_cas(&h);
    for ca in ALL {
        assert_ne!(before[*ca], after[*ca], "the store's {ca}.crt is the new CA");
    }
    let cas = cas(&before, &after);
    // Every host moves one step at a time, in rollout order, each step everywhere before the next begins.
    let mut expect = Vec::new();
    for step in 1..=3u8 {
        expect.extend(ORDER.map(|host| (host.to_string(), step)));
    }
    assert_eq!(sim.moves(&cas, ALL), expect);
    let steps = sim.steps(&cas, ALL);
    assert_eq!(steps.len(), 1 + 3 * 4, "the health stage, then a gate per host and step");
    assert!(steps[0].values().all(|s| *s == 0));
    for (reading, step) in [(4, 1), (8, 2), (12, 3)] {
        assert!(steps[reading].values().all(|s| *s == step), "reading {reading}: {:?}", steps[reading]);
    }
    // The files the task names, at the end: the new CAs alone, kubelet.conf's CA data too.
    let w1 = pki_of(&h.hosts["w1"]);
    for (path, ca) in [
        ("/etc/kubernetes/pki/ca.crt", "ca"),
        ("/etc/kubernetes/kubelet.conf#ca", "ca"),
        ("/etc/kubernetes/kube-api-lb/ca.crt", "ca"),
    ] {
        assert_eq!(w1[path], Held::Trust(vec![rotation::fingerprint(&after[ca])]), "w1: {path}");
    }
    let cp2 = pki_of(&h.hosts["cp2"]);
    for (path, ca) in [
        ("/etc/kubernetes/pki/etcd/ca.crt", "etcd/ca"),
        ("/etc/kubernetes/pki/front-proxy-ca.crt", "front-proxy-ca"),
        ("/etc/kubernetes/admin.conf#ca", "ca"),
    ] {
        assert_eq!(cp2[path], Held::Trust(vec![rotation::fingerprint(&after[ca])]), "cp2: {path}");
    }
    let marker = String::from_utf8(h.hosts["cp3"].file(crate::identity::MARKER_PATH).unwrap()).unwrap();
    assert!(marker.contains(&rotation::fingerprint(&after["ca"])), "the marker names the new CA: {marker}");
    // The old CAs are kept aside; the record is gone.
    let s = store(&h);
    assert!(rotation::load(&s).unwrap().is_none());
    for ca in ALL {
        let pair = crate::pki::rotation::CaPair {
            old_cert: before[*ca].clone(),
            old_key: String::new(),
            new_cert: after[*ca].clone(),
            new_key: String::new(),
        };
        let (crt, key) = rotation::retired_paths(ca, &pair);
        assert_eq!(s.read(&crt).unwrap(), before[*ca].as_bytes(), "{ca}");
        assert!(!s.read(&key).unwrap().is_empty(), "{ca}");
        assert!(said.contains(&crt), "the end names {crt}: {said}");
    }
    // What it said about the user whose kubeconfig the old CA issued, before and after.
    assert!(
        said.contains("users' kubeconfigs the old cluster CA issued (ledger.json): 1 — alice (serial")
            && said.contains("STOP WORKING: from issue their CA data does not verify"),
        "{said}"
    );
    assert!(said.contains(" --user alice --group dev --out alice.conf"), "the re-issue command: {said}");
    assert!(said.contains("kubeforge kubeconfig admin -i "), "the admin's kubeconfig: {said}");
    assert!(said.contains("wall time"), "{said}");
    // A re-apply renders exactly what the rotation left.
    let (summary, _) = h.run(HA, h.options());
    let summary = summary.unwrap();
    assert_eq!(summary.total_changes(), 0, "apply after a rotation changes nothing: {}", summary.plan.text());
}

#[test]
fn only_etcd_rotates_the_etcd_ca_and_leaves_the_cluster_ca_files_alone() {
    use crate::prompt::Consent;
    let h = installed(HA);
    let sim = simulate(&h, HA, None);
    let before = store_cas(&h);
    let files = |host: &str| {
        [
            "/etc/kubernetes/pki/ca.crt",
            "/etc/kubernetes/kubelet.conf",
            "/etc/kubernetes/admin.conf",
            "/etc/kubernetes/pki/apiserver.crt",
        ]
        .map(|p| h.hosts[host].file(p))
    };
    let cluster_files: Vec<_> = ORDER.iter().map(|host| files(host)).collect();
    let (r, _, said) = rotate(&h, Consent::Given, &[CaChoice::Etcd]);
    r.unwrap_or_else(|e| panic!("{}\n{said}", e.report()));
    let after = store_cas(&h);
    assert_ne!(before["etcd/ca"], after["etcd/ca"]);
    assert_eq!((&before["ca"], &before["front-proxy-ca"]), (&after["ca"], &after["front-proxy-ca"]));
    assert_eq!(
        ORDER.iter().map(|host| files(host)).collect::<Vec<_>>(),
        cluster_files,
        "cluster CA files unchanged"
    );
    let cas = cas(&before, &after);
    // The etcd CA moves on the etcd members alone (a worker holds nothing of it).
    let mut expect = Vec::new();
    for step in 1..=3u8 {
        expect.extend(["cp1", "cp2", "cp3"].map(|host| (host.to_string(), step)));
    }
    assert_eq!(sim.moves(&cas, &["etcd/ca"]), expect);
    assert!(said.contains("users' kubeconfigs: not touched (the cluster CA is not rotated)"), "{said}");
    assert!(!said.contains("kubeconfig admin") && said.contains("etcd/ca: sha256:"), "{said}");
    let (summary, _) = h.run(HA, h.options());
    assert_eq!(summary.unwrap().total_changes(), 0);
}

#[test]
fn a_dry_run_says_a_new_ca_and_writes_nothing_and_an_unhealthy_cluster_is_refused() {
    use crate::prompt::Consent;
    let h = installed(HA);
    issue_user(&h, "bob");
    let sim = simulate(&h, HA, None);
    let pki = h.options().pki_root;
    let (before, calls) = (tree(&pki), call_counts(&h));
    let (r, stages, said) = rotate(&h, Consent::Preview, &[]);
    assert_eq!(r.unwrap(), 0);
    assert_eq!(stage_ids(&stages), ["identity", "health", "preview"]);
    let old = store_cas(&h);
    assert!(
        said.contains(&format!("ca: sha256:{}… → a new CA", &rotation::fingerprint(&old["ca"])[7..23]))
            && said.contains("a new rotation")
            && said.contains("nothing was changed"),
        "no made-up fingerprint: {said}"
    );
    assert!(said.contains("stages: trust-both, issue, distrust, finish"), "{said}");
    assert!(said.contains("cp1, cp2, cp3, w1"), "the hosts in rollout order: {said}");
    assert!(said.contains("1 — bob (serial"), "{said}");
    assert_eq!(tree(&pki), before, "nothing under pki/ was written");
    let writes: Vec<String> = wrote_since(&h, &calls)
        .into_iter()
        .filter(|c| !(c.contains(": Exec(") && c.contains("endpoint health")))
        .collect();
    assert!(writes.is_empty(), "only reads: {writes:?}");

    sim.down.lock().unwrap().insert("cp2".into());
    let (r, stages, _) = rotate(&h, Consent::Given, &[]);
    let e = r.unwrap_err().report();
    assert!(
        e.contains("not healthy, nothing was changed") && e.contains("cp2: kube-apiserver is not ready"),
        "{e}"
    );
    assert_eq!(stage_ids(&stages), ["identity", "health"]);
    assert_eq!(tree(&pki), before, "no rotation recorded");
    let writes: Vec<String> = wrote_since(&h, &calls)
        .into_iter()
        .filter(|c| !(c.contains(": Exec(") && c.contains("endpoint health")))
        .collect();
    assert!(writes.is_empty(), "only reads: {writes:?}");
}

/// An interrupt (the stop flag, as the first Ctrl-C raises it) at every health reading: the health stage and
/// each gate of each step. The run stops at the next boundary with exit 130, the record stays (a backup
/// carries it), `apply` in between brings every host to the recorded step (none goes back), and a re-run
/// finishes the same rotation (the same new CAs).
#[test]
fn an_interrupt_at_every_stage_boundary_resumes_the_same_rotation() {
    use crate::prompt::Consent;
    for point in 1..=13 {
        let h = installed(HA);
        let session = h.session(HA, h.options(), Arc::new(Recorder::default())).capturing();
        let stop = session.executor.stop_flag();
        let sim = simulate(&h, HA, Some(stop.clone()));
        let before = store_cas(&h);
        sim.stop_at_health.store(point, Ordering::SeqCst);
        let e = ca_in(&session, &options(Consent::Given), &[]).unwrap_err();
        assert_eq!(e.exit_code(), 130, "reading {point}: {}", e.report());
        assert!(
            e.report().contains("rotate ca"),
            "reading {point}: the hint names the re-run: {}",
            e.report()
        );
        sim.stop_at_health.store(usize::MAX, Ordering::SeqCst);
        let recorded = rotation::load(&store(&h)).unwrap();
        assert_eq!(recorded.is_some(), point > 1, "reading {point}: a rotation is recorded once begun");
        let files = crate::backup::pki_files(store(&h).root()).unwrap();
        assert_eq!(
            files.iter().any(|f| f == Path::new(rotation::ROTATION_FILE)),
            point > 1,
            "reading {point}: a backup taken now carries the record"
        );
        let new = recorded_new(&h);
        // apply in the middle brings every host to the recorded step; none goes back.
        if let Some(rec) = &recorded {
            let cas = cas(&before, &new);
            let at = |host: &str| stage_of_host(host, &pki_of(&h.hosts[host]), &cas, ALL);
            let was: Vec<Option<u8>> = ORDER.iter().map(|host| at(host)).collect();
            let (summary, _) = h.run(HA, h.options());
            summary.unwrap_or_else(|e| panic!("reading {point}: apply: {}", e.report()));
            let want = match rec.step {
                CaStep::TrustBoth => 1,
                CaStep::Issue => 2,
                CaStep::Distrust => 3,
            };
            for (host, was) in ORDER.iter().zip(was) {
                assert_eq!(at(host), Some(want), "reading {point}: {host} after apply (it was at {was:?})");
                assert!(was <= Some(want), "reading {point}: {host} went back");
            }
        }
        let (r, _, said) = rotate(&h, Consent::Given, &[]);
        r.unwrap_or_else(|e| panic!("reading {point}: the re-run: {}\n{said}", e.report()));
        assert!(rotation::load(&store(&h)).unwrap().is_none(), "reading {point}: finished");
        let after = store_cas(&h);
        if point > 1 {
            assert!(said.contains("resuming the recorded rotation at"), "reading {point}: {said}");
            assert_eq!(after, new, "reading {point}: the same rotation finished");
        }
        let cas = cas(&before, &after);
        let steps = sim.steps(&cas, ALL);
        assert!(steps.last().unwrap().values().all(|s| *s == 3), "reading {point}: {:?}", steps.last());
        for host in ORDER {
            assert_eq!(
                stage_of_host(host, &pki_of(&h.hosts[host]), &cas, ALL),
                Some(3),
                "reading {point}: {host}"
            );
        }
    }
}

#[test]
fn a_control_plane_that_differs_beyond_its_pki_stops_the_rotation_naming_the_file() {
    use crate::prompt::Consent;
    let h = installed(HA);
    let sim = simulate(&h, HA, None);
    let before = store_cas(&h);
    h.hosts["cp2"].put_file("/etc/kubernetes/audit-policy.yaml", "edited by hand\n");
    let (r, stages, _) = rotate(&h, Consent::Given, &[]);
    let e = r.unwrap_err().report();
    assert!(
        e.contains("cp2: it differs from what kubeforge renders beyond its PKI material")
            && e.contains("(/etc/kubernetes/audit-policy.yaml)")
            && e.contains("then `kubeforge rotate ca` again"),
        "{e}"
    );
    assert_eq!(stage_ids(&stages).last(), Some(&"trust-both"));
    let cas = cas(&before, &recorded_new(&h));
    let steps = sim.steps(&cas, ALL);
    let last = steps.last().unwrap();
    assert_eq!(
        (last["cp1"], last["cp2"], last["w1"]),
        (1, 0, 0),
        "cp1 went ahead, nothing was written on cp2"
    );
}

/// Two stacked control planes, an etcd-only member, a worker (the cluster keeps the name `ha`).
const WITH_ETCD_ONLY: &str = "cluster: {name: ha, kubernetesVersion: v1.35.7}\nhosts:\n\
    - {name: w1, address: 10.0.0.4, roles: [worker]}\n\
    - {name: e1, address: 10.0.0.3, roles: [etcd]}\n\
    - {name: cp1, address: 10.0.0.1, roles: [control-plane, etcd]}\n\
    - {name: cp2, address: 10.0.0.2, roles: [control-plane, etcd]}\n";

#[test]
fn an_etcd_only_member_moves_after_the_control_planes_and_before_the_workers() {
    use crate::prompt::Consent;
    let h = installed(WITH_ETCD_ONLY);
    let sim = simulate(&h, WITH_ETCD_ONLY, None);
    let before = store_cas(&h);
    let (r, _, said) = rotate_on(&h, WITH_ETCD_ONLY, Consent::Given, &[]);
    r.unwrap_or_else(|e| panic!("{}\n{said}", e.report()));
    assert!(said.contains("each gated: cp1, cp2, e1, w1"), "{said}");
    let cas = cas(&before, &store_cas(&h));
    let mut expect = Vec::new();
    for step in 1..=3u8 {
        expect.extend(["cp1", "cp2", "e1", "w1"].map(|host| (host.to_string(), step)));
    }
    assert_eq!(sim.moves(&cas, ALL), expect);
    let e1 = pki_of(&h.hosts["e1"]);
    assert_eq!(
        e1["/etc/kubernetes/pki/etcd/ca.crt"],
        Held::Trust(vec![rotation::fingerprint(&store_cas(&h)["etcd/ca"])])
    );
    let (summary, _) = h.run(WITH_ETCD_ONLY, h.options());
    assert_eq!(summary.unwrap().total_changes(), 0);
}
