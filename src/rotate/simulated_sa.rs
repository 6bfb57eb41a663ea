//! `rotate service-account-key` on the simulated hosts of apply's tests (this module is a child of them, for
//! their harness): its own code ([`crate::rotate::service_account_key_in`]) in a session, with a clock the
//! tests move, against simulated apiservers that verify tokens with the keys of the `sa.pub` each control
//! plane really received and sign with its `sa.key`.

use super::*;
use crate::rotate::{service_account_key_in, Clock, RotateOptions};
use crate::sa_key::{self, SaStep};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, UNIX_EPOCH};

const SA_KEY: &str = "/etc/kubernetes/pki/sa.key";
const SA_PUB: &str = "/etc/kubernetes/pki/sa.pub";
/// The clock's start (2026-12-07T17:00:00Z).
const T0: u64 = 1_796_662_800;
/// What the command reads on the control planes: the health, the legacy token Secrets' key ids.
const READS: &[&str] = &["endpoint health", "type=kubernetes.io/service-account-token"];
/// The default wait: the kubelet's 3607 s plus 5 min for clocks.
const WAIT: u64 = 3607 + 300;

/// The key id of each public key in an `sa.pub` (SPKI PEM blocks), in order.
fn trusted(pem: &[u8]) -> Vec<String> {
    use base64::Engine;
    use sha2::Digest;
    let text = String::from_utf8_lossy(pem);
    text.split("-----BEGIN PUBLIC KEY-----")
        .skip(1)
        .map(|b| {
            let body: String = b
                .split("-----END PUBLIC KEY-----")
                .next()
                .unwrap()
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            let der = base64::engine::general_purpose::STANDARD.decode(body).unwrap();
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(der))
        })
        .collect()
}

/// What a control plane runs with: the id of the key it signs with, the ids it trusts.
type Keys = (String, Vec<String>);

fn keys_of(fake: &FakeTransport) -> Keys {
    let key = String::from_utf8(fake.file(SA_KEY).unwrap()).unwrap();
    (sa_key::key_id(&key).unwrap(), trusted(&fake.file(SA_PUB).unwrap()))
}

/// The simulated cluster a rotation works on.
#[derive(Default, Clone)]
struct SimCluster {
    /// Control planes whose apiserver is not ready.
    down: Arc<Mutex<BTreeSet<String>>>,
    /// Each control plane's keys at every health reading (the health stage and every gate).
    seen: Arc<Mutex<Vec<BTreeMap<String, Keys>>>>,
    /// Set when the Nth health reading happens (`usize::MAX`: never).
    stop_at_health: Arc<AtomicUsize>,
    health_reads: Arc<AtomicUsize>,
}

impl SimCluster {
    fn moves(&self) -> Vec<(String, Keys)> {
        let seen = self.seen.lock().unwrap().clone();
        seen.windows(2)
            .flat_map(|w| {
                w[1].iter()
                    .filter(|(h, k)| w[0].get(*h) != Some(*k))
                    .map(|(h, k)| (h.clone(), k.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// Health on every control plane: each etcd member healthy, each apiserver ready unless `down`; every
/// reading records each control plane's keys. `stop` is raised at the `stop_at_health`th reading.
fn simulate(h: &Harness, text: &str, stop: Option<Arc<AtomicBool>>) -> SimCluster {
    let model = ClusterModel::derive(&crate::inventory::parse(Path::new("i.yaml"), text).unwrap());
    let sim = SimCluster::default();
    sim.stop_at_health.store(usize::MAX, Ordering::SeqCst);
    // One legacy token Secret, signed with the key the cluster has now (its header only, as the script
    // cuts it on the host).
    let header = {
        use base64::Engine;
        let kid = store_kid(h);
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("{{\"alg\":\"ES256\",\"kid\":\"{kid}\"}}"))
    };
    for cp in model.control_planes() {
        let header = header.clone();
        h.hosts[&cp.name].handle("type=kubernetes.io/service-account-token", move |_, _| {
            Reply::ok(format!("default/legacy {header}\n"))
        });
        let (hosts, model2, s, stop) = (h.hosts.clone(), model.clone(), sim.clone(), stop.clone());
        h.hosts[&cp.name].handle("endpoint health", move |_, _| {
            let n = s.health_reads.fetch_add(1, Ordering::SeqCst) + 1;
            if n >= s.stop_at_health.load(Ordering::SeqCst) {
                if let Some(f) = &stop {
                    f.store(true, Ordering::SeqCst);
                }
            }
            s.seen
                .lock()
                .unwrap()
                .push(model2.control_planes().map(|c| (c.name.clone(), keys_of(&hosts[&c.name]))).collect());
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

/// A token any control plane signs is accepted by every apiserver: at every reading, each host's signing
/// key is trusted by every host.
fn assert_always_trusted(sim: &SimCluster) {
    for snapshot in sim.seen.lock().unwrap().iter() {
        for (h, (signer, _)) in snapshot {
            for (other, (_, trust)) in snapshot {
                assert!(
                    trust.contains(signer),
                    "{h} signs with {signer} that {other} does not trust: {snapshot:?}"
                );
            }
        }
    }
}

/// A clock the test moves (seconds since the epoch).
fn clock(at: &Arc<AtomicU64>) -> Clock {
    let at = at.clone();
    Clock::from_fn(move || UNIX_EPOCH + Duration::from_secs(at.load(Ordering::SeqCst)))
}

fn options(consent: crate::prompt::Consent, now: &Arc<AtomicU64>) -> RotateOptions {
    RotateOptions {
        consent,
        gate_timeout: Duration::from_secs(0),
        poll: Duration::ZERO,
        clock: clock(now),
        drop_old_now: false,
    }
}

/// `rotate service-account-key` in a new session at `now`: the result, the stages entered, what it said.
fn rotate(
    h: &Harness,
    consent: crate::prompt::Consent,
    now: &Arc<AtomicU64>,
) -> (Result<i32>, Vec<String>, String) {
    let session = h.session(HA, h.options(), Arc::new(Recorder::default())).capturing();
    let r = service_account_key_in(&session, &options(consent, now));
    (r, session.stages(), session.said())
}

/// Per control plane: how many times kube-apiserver and kube-controller-manager were restarted so far.
fn restarts(h: &Harness) -> BTreeMap<String, (usize, usize)> {
    ["cp1", "cp2", "cp3"]
        .iter()
        .map(|cp| {
            let cmds = h.hosts[*cp].commands();
            let n = |unit: &str| {
                cmds.iter().filter(|c| c.contains("systemctl restart --no-block") && c.contains(unit)).count()
            };
            (cp.to_string(), (n("kube-apiserver"), n("kube-controller-manager")))
        })
        .collect()
}

fn stage_ids(stages: &[String]) -> Vec<&str> {
    stages.iter().map(|s| s.strip_prefix("rotate-service-account-key/").unwrap_or(s)).collect()
}

fn store(h: &Harness) -> crate::pki::store::Store {
    crate::pki::store::Store::new(&h.options().pki_root, "ha")
}

fn store_kid(h: &Harness) -> String {
    sa_key::key_id(&String::from_utf8(store(h).read("sa.key").unwrap()).unwrap()).unwrap()
}

#[test]
fn a_rotation_trusts_both_signs_new_stops_for_the_wait_then_drops_the_old_key() {
    use crate::prompt::Consent;
    let h = installed(HA);
    let sim = simulate(&h, HA, None);
    let now = Arc::new(AtomicU64::new(T0));
    let old = store_kid(&h);
    assert_eq!(keys_of(&h.hosts["cp1"]), (old.clone(), vec![old.clone()]));
    let restarted = restarts(&h);
    let w1 = h.hosts["w1"].calls().len();
    let (r, stages, said) = rotate(&h, Consent::Given, &now);
    assert_eq!(r.unwrap_or_else(|e| panic!("{}\n{said}", e.report())), 0);
    assert_eq!(
        stage_ids(&stages),
        ["identity", "health", "preview", "begin", "trust-both", "sign-new", "wait"],
        "the run stops at the wait"
    );
    let rec = sa_key::load(&store(&h)).unwrap().rotation.expect("the rotation is recorded");
    let new = sa_key::key_id(&rec.new).unwrap();
    assert_eq!(
        (rec.step, rec.signing_new_since, rec.old_tokens_valid_until),
        (SaStep::SignNew, Some(T0), Some(T0 + WAIT))
    );
    assert!(
        said.contains(&format!(
            "tokens the old key signed may be valid until {}",
            sa_key::show_time(T0 + WAIT)
        )) && said.contains("run `kubeforge rotate service-account-key` again after then"),
        "{said}"
    );
    assert!(
        said.contains("legacy token Secrets signed with the old key: 1 (default/legacy) STOP WORKING"),
        "the preview says what stops working: {said}"
    );
    assert!(said.contains(&format!("key {old} → {new} (ecdsa-p256): a new rotation")), "{said}");
    assert_eq!(store_kid(&h), old, "the store's key changes only at the end");
    // One control plane at a time: first every sa.pub trusts both, then every sa.key signs with the new key.
    let both = vec![old.clone(), new.clone()];
    let mut expect = Vec::new();
    for cp in ["cp1", "cp2", "cp3"] {
        expect.push((cp.to_string(), (old.clone(), both.clone())));
    }
    for cp in ["cp1", "cp2", "cp3"] {
        expect.push((cp.to_string(), (new.clone(), both.clone())));
    }
    assert_eq!(sim.moves(), expect);
    assert_eq!(
        sim.seen.lock().unwrap().len(),
        1 + 6,
        "the health stage, then one gate per control plane and step"
    );
    assert_always_trusted(&sim);
    // trust-both restarts the apiserver (sa.pub), sign-new the apiserver and the controller-manager (sa.key).
    for (cp, (api, cm)) in restarts(&h) {
        assert_eq!((api, cm), (restarted[&cp].0 + 2, restarted[&cp].1 + 1), "{cp}");
    }
    assert_eq!(h.hosts["w1"].calls().len(), w1, "a worker is not touched");

    // A run before the bound changes nothing on the hosts and says when.
    now.store(T0 + WAIT - 60, Ordering::SeqCst);
    let calls = call_counts(&h);
    let (r, stages, said) = rotate(&h, Consent::Given, &now);
    r.unwrap_or_else(|e| panic!("{}\n{said}", e.report()));
    assert_eq!(stage_ids(&stages).last(), Some(&"wait"));
    assert!(said.contains("(in 1m)"), "{said}");
    let writes: Vec<String> = wrote_since(&h, &calls)
        .into_iter()
        .filter(|c| !(c.contains(": Exec(") && READS.iter().any(|r| c.contains(r))))
        .collect();
    assert!(writes.is_empty(), "only reads: {writes:?}");
    assert_eq!(sim.moves().len(), 6, "no host moved");

    // After the bound: drop-old, one control plane at a time, and the store switches.
    now.store(T0 + WAIT, Ordering::SeqCst);
    let (r, stages, said) = rotate(&h, Consent::Given, &now);
    r.unwrap_or_else(|e| panic!("{}\n{said}", e.report()));
    assert_eq!(stage_ids(&stages), ["identity", "health", "preview", "begin", "wait", "drop-old", "finish"]);
    let moves = sim.moves();
    assert_eq!(
        moves[6..],
        ["cp1", "cp2", "cp3"].map(|cp| (cp.to_string(), (new.clone(), vec![new.clone()])))
    );
    assert_always_trusted(&sim);
    // drop-old restarts the apiserver alone (sa.pub).
    for (cp, (api, cm)) in restarts(&h) {
        assert_eq!((api, cm), (restarted[&cp].0 + 3, restarted[&cp].1 + 1), "{cp}");
    }
    let s = store(&h);
    let keys = sa_key::load(&s).unwrap();
    assert_eq!((store_kid(&h), keys.rotation.is_none()), (new.clone(), true));
    assert_eq!(trusted(&keys.public), vec![new.clone()]);
    assert_eq!(
        sa_key::key_id(
            &String::from_utf8(s.read(&format!("secrets/retired/sa-{old}.key")).unwrap()).unwrap()
        )
        .unwrap(),
        old,
        "the old key kept aside"
    );
    assert!(said.contains(&format!("now signs and verifies tokens with key {new} alone")), "{said}");
    // A re-apply renders exactly what the rotation left.
    let (summary, _) = h.run(HA, h.options());
    let summary = summary.unwrap();
    assert_eq!(summary.total_changes(), 0, "apply after a rotation changes nothing: {}", summary.plan.text());
}

/// `--drop-old-now` (a leaked key): one run goes through to the end without the wait, and says before it
/// starts that the old key's tokens stop working at once; a rotation already waiting ends at once with it.
#[test]
fn drop_old_now_skips_the_wait_and_says_what_stops_working() {
    use crate::prompt::Consent;
    let now = Arc::new(AtomicU64::new(T0));
    let leaked = |h: &Harness, consent| {
        let session = h.session(HA, h.options(), Arc::new(Recorder::default())).capturing();
        let r =
            service_account_key_in(&session, &RotateOptions { drop_old_now: true, ..options(consent, &now) });
        (r, session.stages(), session.said())
    };

    let h = installed(HA);
    let sim = simulate(&h, HA, None);
    let old = store_kid(&h);
    let (r, _, said) = leaked(&h, Consent::Preview);
    r.unwrap();
    assert!(
        said.contains("stages: trust-both, sign-new, drop-old, finish")
            && said.contains("wait before the old key goes: none (--drop-old-now; without it 1h 5m 7s")
            && said.contains("EVERY TOKEN THE OLD KEY SIGNED STOPS WORKING"),
        "{said}"
    );
    assert!(sim.moves().is_empty(), "a dry run moves nothing");
    let (r, stages, said) = leaked(&h, Consent::Given);
    r.unwrap_or_else(|e| panic!("{}\n{said}", e.report()));
    assert_eq!(
        stage_ids(&stages),
        ["identity", "health", "preview", "begin", "trust-both", "sign-new", "wait", "drop-old", "finish"]
    );
    let new = store_kid(&h);
    assert_ne!(new, old);
    assert_eq!(sim.moves().len(), 9, "three steps on three control planes");
    assert_always_trusted(&sim);
    assert!(sa_key::load(&store(&h)).unwrap().rotation.is_none(), "finished");

    // A rotation stopped at the wait: a run with --drop-old-now before the bound drops the old key.
    let h = installed(HA);
    let sim = simulate(&h, HA, None);
    let (r, stages, _) = rotate(&h, Consent::Given, &now);
    r.unwrap();
    assert_eq!(stage_ids(&stages).last(), Some(&"wait"));
    let (r, stages, said) = leaked(&h, Consent::Given);
    r.unwrap_or_else(|e| panic!("{}\n{said}", e.report()));
    assert!(said.contains("stages: wait (skipped), drop-old, finish"), "{said}");
    assert_eq!(stage_ids(&stages), ["identity", "health", "preview", "begin", "wait", "drop-old", "finish"]);
    assert_eq!(sim.moves().len(), 9);
    assert!(sa_key::load(&store(&h)).unwrap().rotation.is_none(), "finished");
}

#[test]
fn a_dry_run_shows_where_a_rotation_stands_and_writes_nothing() {
    use crate::prompt::Consent;
    let h = installed(HA);
    let sim = simulate(&h, HA, None);
    let now = Arc::new(AtomicU64::new(T0));
    let pki = h.options().pki_root;
    let (before, calls) = (tree(&pki), call_counts(&h));
    let (r, stages, said) = rotate(&h, Consent::Preview, &now);
    assert_eq!(r.unwrap(), 0);
    assert_eq!(stage_ids(&stages), ["identity", "health", "preview"]);
    assert!(said.contains("a new rotation") && said.contains("nothing was changed"), "{said}");
    assert!(said.contains(" → a new ecdsa-p256 key: "), "no made-up key id: {said}");
    assert!(said.contains("stages: trust-both, sign-new, wait, drop-old, finish"), "{said}");
    assert!(said.contains("1h 5m 7s after sign-new ends"), "the wait bound: {said}");
    assert_eq!(tree(&pki), before, "nothing under pki/ was written");
    let writes: Vec<String> = wrote_since(&h, &calls)
        .into_iter()
        .filter(|c| !(c.contains(": Exec(") && READS.iter().any(|r| c.contains(r))))
        .collect();
    assert!(writes.is_empty(), "only reads: {writes:?}");
    // In the middle of a rotation, during the wait: where it stands, until when, and nothing written.
    rotate(&h, Consent::Given, &now).0.unwrap();
    now.store(T0 + 600, Ordering::SeqCst);
    let (before, calls, moves) = (tree(&pki), call_counts(&h), sim.moves());
    let (r, _, said) = rotate(&h, Consent::Preview, &now);
    assert_eq!(r.unwrap(), 0);
    assert!(
        said.contains(&format!(
            "resuming: every control plane signs with the new key since {}; tokens the old key signed may be valid until {} (in 55m 7s)",
            sa_key::show_time(T0),
            sa_key::show_time(T0 + WAIT)
        )) && said.contains("stages: wait, drop-old, finish"),
        "{said}"
    );
    assert_eq!(tree(&pki), before);
    assert_eq!(sim.moves(), moves);
    let writes: Vec<String> = wrote_since(&h, &calls)
        .into_iter()
        .filter(|c| !(c.contains(": Exec(") && READS.iter().any(|r| c.contains(r))))
        .collect();
    assert!(writes.is_empty(), "only reads: {writes:?}");
}

#[test]
fn an_unhealthy_cluster_is_refused_before_anything_is_written() {
    use crate::prompt::Consent;
    let h = installed(HA);
    let sim = simulate(&h, HA, None);
    sim.down.lock().unwrap().insert("cp3".into());
    let now = Arc::new(AtomicU64::new(T0));
    let before = tree(&h.options().pki_root);
    let (r, stages, _) = rotate(&h, Consent::Given, &now);
    let e = r.unwrap_err().report();
    assert!(
        e.contains("not healthy, nothing was changed") && e.contains("cp3: kube-apiserver is not ready"),
        "{e}"
    );
    assert_eq!(stage_ids(&stages), ["identity", "health"]);
    assert_eq!(tree(&h.options().pki_root), before, "no rotation recorded");
    assert!(sim.moves().is_empty());
}

/// An interrupt (the stop flag, as the first Ctrl-C raises it) at every health reading of both runs: the
/// health stage, each gate of trust-both and sign-new, then (after the wait) the health stage and each gate
/// of drop-old. The run stops at the next boundary with exit 130; `apply` in between renders the recorded
/// step (no control plane goes back); a backup then carries the record; re-runs finish the same rotation.
#[test]
fn an_interrupt_at_any_stage_boundary_resumes_the_same_rotation_and_apply_never_rolls_it_back() {
    use crate::prompt::Consent;
    // (which run: 0 the first, 1 the one after the wait; the Nth health reading in it)
    let points: Vec<(usize, usize)> = (1..=7).map(|n| (0, n)).chain((1..=4).map(|n| (1, n))).collect();
    for (run, point) in points {
        let h = installed(HA);
        let now = Arc::new(AtomicU64::new(T0));
        let session = h.session(HA, h.options(), Arc::new(Recorder::default())).capturing();
        let stop = session.executor.stop_flag();
        let sim = simulate(&h, HA, Some(stop.clone()));
        let old = store_kid(&h);
        if run == 1 {
            rotate(&h, Consent::Given, &now).0.unwrap();
            now.store(T0 + WAIT, Ordering::SeqCst);
            sim.health_reads.store(0, Ordering::SeqCst);
        }
        sim.stop_at_health.store(point, Ordering::SeqCst);
        let e = service_account_key_in(&session, &options(Consent::Given, &now)).unwrap_err();
        let at = format!("run {run}, reading {point}");
        assert_eq!(e.exit_code(), 130, "{at}: {}", e.report());
        assert!(
            e.report().contains("rotate service-account-key"),
            "{at}: the hint names the re-run: {}",
            e.report()
        );
        assert_always_trusted(&sim);
        sim.stop_at_health.store(usize::MAX, Ordering::SeqCst);
        let s = store(&h);
        let recorded = sa_key::load(&s).unwrap();
        // A backup taken now carries the rotation's record (both keys).
        let files = crate::backup::pki_files(s.root()).unwrap();
        assert_eq!(
            files.iter().any(|f| f == Path::new(sa_key::ROTATION_FILE)),
            recorded.rotation.is_some(),
            "{at}"
        );
        let new = recorded.rotation.as_ref().map(|r| sa_key::key_id(&r.new).unwrap());
        // apply in the middle converges each control plane to the recorded step; none goes back.
        if let Some(rot) = &recorded.rotation {
            let before: BTreeMap<String, Keys> =
                ["cp1", "cp2", "cp3"].iter().map(|c| (c.to_string(), keys_of(&h.hosts[*c]))).collect();
            let (summary, _) = h.run(HA, h.options());
            summary.unwrap_or_else(|e| panic!("{at}: {}", e.report()));
            let want = (
                sa_key::key_id(&String::from_utf8(recorded.signing_key()).unwrap()).unwrap(),
                trusted(&recorded.verifying_keys().unwrap()),
            );
            for (cp, b) in &before {
                let now_keys = keys_of(&h.hosts[cp]);
                assert_eq!(now_keys, want, "{at}: {cp} after apply (step {:?})", rot.step);
                // Only a host the interrupt left behind moves, and only forward.
                assert!(rank(&now_keys, &old) >= rank(b, &old), "{at}: {cp} {b:?} → {now_keys:?}");
            }
            assert_always_trusted(&sim);
        }
        // Re-runs finish the same rotation: the first may stop for the wait, the clock then passes it.
        let (r, _, said) = rotate(&h, Consent::Given, &now);
        r.unwrap_or_else(|e| panic!("{at}: the re-run: {}\n{said}", e.report()));
        if sa_key::load(&s).unwrap().rotation.is_some() {
            let until = sa_key::load(&s).unwrap().rotation.unwrap().old_tokens_valid_until;
            assert!(until.is_some(), "{at}: a run that did not finish stops at the wait");
            now.store(until.unwrap(), Ordering::SeqCst);
            let (r, _, said) = rotate(&h, Consent::Given, &now);
            r.unwrap_or_else(|e| panic!("{at}: after the wait: {}\n{said}", e.report()));
        }
        let done = sa_key::load(&s).unwrap();
        assert!(done.rotation.is_none(), "{at}");
        if let Some(new) = new {
            assert_eq!(store_kid(&h), new, "{at}: the same rotation finished");
        }
        for cp in ["cp1", "cp2", "cp3"] {
            let k = keys_of(&h.hosts[cp]);
            assert_eq!(k, (store_kid(&h), vec![store_kid(&h)]), "{at}: {cp}");
        }
        assert_ne!(store_kid(&h), old, "{at}");
        assert_always_trusted(&sim);
    }
}

/// How far a control plane is in a rotation away from `old`: 0 before it, 1 trust-both, 2 sign-new,
/// 3 drop-old.
fn rank(k: &Keys, old: &str) -> u8 {
    match (k.0 == old, k.1.len()) {
        (true, 1) => 0,
        (true, 2) => 1,
        (false, 2) => 2,
        (false, 1) => 3,
        _ => panic!("not a step of a rotation from {old}: {k:?}"),
    }
}

#[test]
fn a_control_plane_that_differs_beyond_the_keys_stops_the_rotation_until_apply() {
    use crate::prompt::Consent;
    let h = installed(HA);
    let sim = simulate(&h, HA, None);
    let now = Arc::new(AtomicU64::new(T0));
    h.hosts["cp2"].put_file("/etc/kubernetes/audit-policy.yaml", "edited by hand\n");
    let (r, _, _) = rotate(&h, Consent::Given, &now);
    let e = r.unwrap_err().report();
    assert!(
        e.contains("cp2: its control plane differs from what kubeforge renders beyond /etc/kubernetes/pki/sa.key, /etc/kubernetes/pki/sa.pub (/etc/kubernetes/audit-policy.yaml)")
            && e.contains("then `kubeforge rotate service-account-key` again"),
        "{e}"
    );
    assert_eq!(keys_of(&h.hosts["cp2"]).1.len(), 1, "nothing written on cp2");
    assert_always_trusted(&sim);
}
