//! `kubeforge etcd` against simulated members: fake transports that answer the member read with etcdctl's
//! JSON as etcd 3.5 prints it (the shapes of `testdata/`, captured from a real etcd 3.5.1 and etcdctl),
//! and change their simulated db on `defrag`, `compact` and `alarm disarm`. The parsing tests read the
//! captured outputs themselves.

use super::member::*;
use super::*;
use crate::transport::fake::{FakeTransport, Reply};
use crate::transport::Transport;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// `READ` on a real etcd 3.5.1 (quota 4 MiB) after it raised NOSPACE and half its keys were deleted.
const NOSPACE: &str = include_str!("testdata/read-nospace.txt");
/// The same member after compact, defrag and disarm.
const RECOVERED: &str = include_str!("testdata/read-after.txt");
/// `READ` with the member stopped.
const DEAD: &str = include_str!("testdata/read-dead.txt");

#[test]
fn real_etcdctl_output_is_parsed_with_sizes_leader_alarms_and_quota() {
    let m = Member::parse("cp1", "https://10.0.0.1:2379".into(), NOSPACE);
    let s = m.status.as_ref().expect("status");
    assert_eq!(s.member_id, 13668033151171901709);
    assert!(s.is_leader());
    assert_eq!((s.db_size, s.db_size_in_use), (4272128, Some(3518464)));
    assert_eq!((s.revision, s.raft_index, s.raft_term), (1125, 1268, 2));
    assert_eq!(s.errors, ["memberID:13668033151171901709 alarm:NOSPACE "]);
    assert_eq!(m.quota, Some(4194304));
    assert_eq!(m.alarms, Some(vec![Alarm { member_id: 13668033151171901709, alarm: AlarmKind::Nospace }]));
    assert!(!m.healthy && m.answers(), "NOSPACE fails the health check, the member still answers");
    assert_eq!(m.error.as_deref(), Some("unhealthy: Active Alarm(s): NOSPACE"));
    assert!((s.fragmentation() - (1.0 - 3518464.0 / 4272128.0)).abs() < 1e-9);

    let m = Member::parse("cp1", "https://10.0.0.1:2379".into(), RECOVERED);
    assert!(m.healthy && m.error.is_none(), "{m:?}");
    assert_eq!(m.alarms, Some(vec![]));
    let s = m.status.unwrap();
    assert_eq!((s.db_size, s.db_size_in_use), (20480, Some(12288)));
    assert!((s.fragmentation() - 0.4).abs() < 1e-9);

    let m = Member::parse("cp1", "https://10.0.0.1:2379".into(), DEAD);
    assert!(m.status.is_none() && !m.healthy && !m.answers());
    let e = m.error.unwrap();
    assert!(
        e.starts_with("does not answer: Failed to get the status of endpoint") && e.contains("deadline"),
        "{e}"
    );
}

#[test]
fn alarm_lists_and_health_answers_parse_in_etcds_shapes() {
    let none = r#"{"header":{"cluster_id":1,"member_id":2,"revision":3,"raft_term":2}}"#;
    assert_eq!(parse_alarms(none).unwrap(), []);
    let both = r#"{"header":{},"alarms":[{"memberID":2,"alarm":1},{"memberID":3,"alarm":2},{"memberID":4,"alarm":7}]}"#;
    let a = parse_alarms(both).unwrap();
    assert_eq!(
        a.iter().map(|a| a.alarm).collect::<Vec<_>>(),
        [AlarmKind::Nospace, AlarmKind::Corrupt, AlarmKind::Other(7)]
    );
    assert_eq!(serde_json::to_string(&a[0]).unwrap(), r#"{"memberId":"2","alarm":"NOSPACE"}"#);
    assert!(parse_alarms("Error: context deadline exceeded").is_err());
    assert_eq!(parse_health(r#"[{"endpoint":"x","health":true,"took":"2ms"}]"#), Ok(()));
    assert_eq!(
        parse_health(r#"[{"endpoint":"x","health":false,"took":"10s","error":"context deadline exceeded"}]"#),
        Err("context deadline exceeded".into())
    );
    // etcd 3.4's status has no quota and may leave zero values out; 3.6 adds `dbSizeQuota`.
    let s = parse_status(r#"[{"Endpoint":"e","Status":{"header":{"member_id":5},"version":"3.4.23","dbSize":100,"leader":5,"raftIndex":1,"raftTerm":1}}]"#).unwrap();
    assert_eq!((s.db_size_in_use, s.quota, s.in_use_ratio()), (None, None, 1.0));
    let s = parse_status(r#"[{"Endpoint":"e","Status":{"header":{"member_id":5},"dbSize":100,"dbSizeInUse":25,"leader":5,"dbSizeQuota":2147483648}}]"#).unwrap();
    assert_eq!((s.quota, s.in_use_ratio()), (Some(2147483648), 0.25));
    assert!(parse_status("[]").is_err());
}

// ---------------------------------------------------------------------------------------------------------
// The simulated cluster

#[derive(Debug, Clone)]
struct SimMember {
    id: u64,
    db: u64,
    in_use: u64,
    /// Bytes of old revisions a compaction frees.
    garbage: u64,
    up: bool,
}

#[derive(Debug, Default)]
struct Sim {
    members: BTreeMap<String, SimMember>,
    leader: String,
    alarms: Vec<(u64, u32)>,
    quota: u64,
    revision: u64,
    /// What was done, in order (`defrag cp2 (leader cp1)`, `compact 900`, `disarm`).
    log: Vec<String>,
    /// After the defragmentation of the first name, the second member goes down.
    breaks: Option<(String, String)>,
    /// A member whose defragmentation frees nothing (the data itself is too large).
    full: Option<String>,
}

type Shared = Arc<Mutex<Sim>>;

fn read_output(sim: &Sim, host: &str) -> String {
    let m = &sim.members[host];
    if !m.up {
        return DEAD.to_string();
    }
    let leader = sim.members[&sim.leader].id;
    let errors: Vec<String> =
        sim.alarms.iter().map(|(id, _)| format!("\"memberID:{id} alarm:NOSPACE \"")).collect();
    let mut s = format!(
        "status [{{\"Endpoint\":\"https://127.0.0.1:2379\",\"Status\":{{\"header\":{{\"cluster_id\":15118495548433857066,\"member_id\":{},\"revision\":{},\"raft_term\":2}},\"version\":\"3.5.1\",\"dbSize\":{},\"leader\":{leader},\"raftIndex\":{},\"raftTerm\":2,\"raftAppliedIndex\":{}{},\"dbSizeInUse\":{}}}}}]\n",
        m.id,
        sim.revision,
        m.db,
        sim.revision + 7,
        sim.revision + 7,
        if errors.is_empty() { String::new() } else { format!(",\"errors\":[{}]", errors.join(",")) },
        m.in_use
    );
    if sim.alarms.is_empty() {
        s.push_str(
            "health [{\"endpoint\":\"https://127.0.0.1:2379\",\"health\":true,\"took\":\"2.561227ms\"}]\n",
        );
    } else {
        s.push_str("health [{\"endpoint\":\"https://127.0.0.1:2379\",\"health\":false,\"took\":\"2.163575ms\",\"error\":\"Active Alarm(s): NOSPACE \"}]\nhealth Error: unhealthy cluster\n");
    }
    let alarms: Vec<String> =
        sim.alarms.iter().map(|(id, a)| format!("{{\"memberID\":{id},\"alarm\":{a}}}")).collect();
    s.push_str(&format!(
        "alarms {{\"header\":{{\"cluster_id\":15118495548433857066,\"member_id\":{},\"revision\":{},\"raft_term\":2}}{}}}\n",
        m.id,
        sim.revision,
        if alarms.is_empty() { String::new() } else { format!(",\"alarms\":[{}]", alarms.join(",")) }
    ));
    s.push_str(&format!("quota {:e}\n", sim.quota as f64));
    s
}

/// A fake member host on the shared simulation; it carries `marker` and `ca` as kubeforge places them.
fn member_host(name: &str, sim: &Shared, marker: &[u8], ca: &str) -> Arc<FakeTransport> {
    let t = Arc::new(FakeTransport::new(name));
    t.put_file(crate::identity::MARKER_PATH, marker.to_vec());
    t.put_file(crate::identity::HOST_CA_PATH, ca.as_bytes().to_vec());
    t.handle("--- marker", |_, fake| {
        let show =
            |p: &str| fake.file(p).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
        Reply::ok(format!(
            "--- marker\n{}\n--- ca\n{}\n--- end\n",
            show(crate::identity::MARKER_PATH),
            show(crate::identity::HOST_CA_PATH)
        ))
    });
    let (s, h) = (sim.clone(), name.to_string());
    t.handle("st=$(e endpoint status -w json 2>&1)", move |_, _| {
        Reply::ok(read_output(&s.lock().unwrap(), &h))
    });
    let (s, h) = (sim.clone(), name.to_string());
    t.handle("e defrag --command-timeout", move |argv, _| {
        let mut sim = s.lock().unwrap();
        assert_eq!(argv.last().map(String::as_str), Some("300s"), "the timeout is etcdctl's: {argv:?}");
        let leader = sim.leader.clone();
        sim.log.push(format!("defrag {h} (leader {leader})"));
        let full = sim.full.as_deref() == Some(h.as_str());
        let m = sim.members.get_mut(&h).unwrap();
        if !full {
            // bbolt rounds the file up to its pages.
            m.db = m.in_use.div_ceil(4096) * 4096 + 8192;
        }
        if let Some((after, down)) = sim.breaks.clone() {
            if after == h {
                sim.members.get_mut(&down).unwrap().up = false;
            }
        }
        Reply::ok("Finished defragmenting etcd member[https://127.0.0.1:2379]\n")
    });
    let s = sim.clone();
    t.handle("e compact \"$rev\"", move |_, _| {
        let mut sim = s.lock().unwrap();
        let rev = sim.revision;
        sim.log.push(format!("compact {rev}"));
        for m in sim.members.values_mut() {
            m.in_use -= m.garbage;
            m.garbage = 0;
        }
        Reply::ok(format!("compacted {rev}\n"))
    });
    let s = sim.clone();
    t.handle("e alarm disarm", move |_, _| {
        let mut sim = s.lock().unwrap();
        sim.log.push("disarm".into());
        sim.alarms.clear();
        Reply::ok("")
    });
    t
}

const INV: &str = "cluster: {name: ec, kubernetesVersion: v1.35.7}\nhosts:\n\
    - {name: cp1, address: 10.0.0.1, roles: [control-plane, etcd]}\n\
    - {name: cp2, address: 10.0.0.2, roles: [control-plane, etcd]}\n\
    - {name: cp3, address: 10.0.0.3, roles: [control-plane, etcd]}\n\
    - {name: w1, address: 10.0.0.4, roles: [worker]}\n";

struct Lab {
    _dir: tempfile::TempDir,
    sim: Shared,
    hosts: BTreeMap<String, Arc<FakeTransport>>,
    path: std::path::PathBuf,
    pki: std::path::PathBuf,
}

impl Lab {
    /// Three members (cp1 leads) of `sizes` (db, in use) bytes, a worker, and a store whose CA the hosts
    /// carry.
    fn new(sizes: [(u64, u64); 3]) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        std::fs::create_dir_all(pki.join("ec")).unwrap();
        let key = crate::pki::issue::Key::generate(crate::pki::KeyAlgorithm::EcdsaP256).unwrap();
        let ca = crate::pki::issue::ca_certificate(
            crate::pki::spec::CaId::Cluster,
            &key,
            std::time::Duration::from_secs(86400),
        )
        .unwrap();
        std::fs::write(pki.join("ec/ca.crt"), &ca).unwrap();
        let marker = crate::identity::Marker {
            cluster: "ec".into(),
            uid: "uid-1".into(),
            ca_sha256: crate::identity::Fingerprint::of_pem(ca.as_bytes()).unwrap(),
        }
        .to_json();
        let mut sim = Sim { leader: "cp1".into(), quota: 2 << 30, revision: 900, ..Default::default() };
        for (i, (db, in_use)) in sizes.into_iter().enumerate() {
            let id = 0x8e9e05c52164694d + i as u64 * 0x1111;
            sim.members.insert(format!("cp{}", i + 1), SimMember { id, db, in_use, garbage: 0, up: true });
        }
        let sim: Shared = Arc::new(Mutex::new(sim));
        let mut hosts: BTreeMap<String, Arc<FakeTransport>> = (1..=3)
            .map(|i| format!("cp{i}"))
            .map(|n| (n.clone(), member_host(&n, &sim, &marker, &ca)))
            .collect();
        hosts.insert("w1".into(), Arc::new(FakeTransport::new("w1")));
        let path = dir.path().join("inventory.yaml");
        std::fs::write(&path, INV).unwrap();
        Lab { _dir: dir, sim, hosts, path, pki }
    }

    fn session(&self) -> Session {
        let loaded = crate::inventory::parse(&self.path, INV).unwrap();
        let transports: BTreeMap<String, Arc<dyn Transport>> =
            self.hosts.iter().map(|(n, t)| (n.clone(), t.clone() as Arc<dyn Transport>)).collect();
        let o = crate::apply::ApplyOptions::new(self.pki.clone(), self.pki.join("cache"));
        Session::new(loaded, transports, o, Arc::new(crate::report::Silent)).unwrap().capturing()
    }

    fn log(&self) -> Vec<String> {
        self.sim.lock().unwrap().log.clone()
    }

    fn defrag(
        &self,
        hosts: Option<&[&str]>,
        force: bool,
        consent: Consent,
    ) -> (Result<i32>, String, Vec<String>) {
        let s = self.session();
        let o = DefragOptions {
            hosts: hosts.map(|h| h.iter().map(|s| s.to_string()).collect()),
            threshold: 0.5,
            force,
            timeout: Duration::from_secs(300),
            consent,
        };
        let r = defrag_in(&s, &o);
        (r, s.said(), s.stages())
    }

    fn alarms(&self, disarm: Option<Consent>, output: Format) -> (Result<i32>, String) {
        let s = self.session();
        let r = alarms_in(&s, &AlarmsOptions { disarm, timeout: Duration::from_secs(300), output });
        (r, s.said())
    }

    fn writes(&self) -> usize {
        let reads = ["st=$(e endpoint status", "--- marker"];
        self.hosts
            .values()
            .flat_map(|h| h.commands())
            .filter(|c| !reads.iter().any(|r| c.contains(r)))
            .count()
    }
}

const MB: u64 = 1 << 20;

/// Only the digits that move between runs (times) are masked.
fn masked(s: &str) -> String {
    let is_time = |w: &str| {
        let digits = w.trim_end_matches("ms").trim_end_matches('s');
        w.ends_with('s')
            && !digits.is_empty()
            && digits.chars().all(|c| c.is_ascii_digit() || c == '.' || c == 'm')
    };
    s.lines()
        .map(|l| {
            l.split(' ')
                .map(|w| {
                    let core = w.trim_matches(|c| c == '(' || c == ')' || c == ',');
                    if is_time(core) {
                        w.replace(core, "<time>")
                    } else {
                        w.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

#[test]
fn the_plan_takes_members_below_the_threshold_followers_first_and_the_leader_last() {
    let lab = Lab::new([(100 * MB, 10 * MB), (100 * MB, 20 * MB), (100 * MB, 90 * MB)]);
    let s = lab.session();
    let all = members(&s, None).unwrap();
    let reading = s.block_on(read(&s, &all));
    let names = |p: &[Choice]| p.iter().filter(|c| c.defrag).map(|c| c.name.clone()).collect::<Vec<_>>();
    let plan = defrag_plan(&reading, &all, 0.5, false);
    assert_eq!(names(&plan), ["cp2", "cp1"], "cp3 uses 90%: {plan:?}");
    let by = |n: &str| plan.iter().find(|c| c.name == n).unwrap();
    assert!(
        by("cp1").leader && by("cp3").reason.contains("not below the threshold 50%: skipped"),
        "{plan:?}"
    );
    assert_eq!(names(&defrag_plan(&reading, &all, 0.5, true)), ["cp2", "cp3", "cp1"]);
    assert_eq!(names(&defrag_plan(&reading, &all, 0.95, false)), ["cp2", "cp3", "cp1"]);
    assert_eq!(names(&defrag_plan(&reading, &["cp1".into()], 0.5, false)), ["cp1"]);
    // Leadership can move during a run: the leader of the moment waits until it is the last one.
    let p: Vec<String> = ["cp2", "cp3", "cp1"].map(String::from).to_vec();
    assert_eq!(next_member(&p, Some("cp2")).unwrap(), "cp3");
    assert_eq!(next_member(&p[2..], Some("cp1")).unwrap(), "cp1");
    assert_eq!(next_member(&p, None).unwrap(), "cp2");
}

#[test]
fn defrag_goes_one_member_at_a_time_leader_last_and_a_second_run_has_nothing_to_do() {
    let lab = Lab::new([(100 * MB, 10 * MB), (100 * MB, 20 * MB), (100 * MB, 90 * MB)]);
    let (r, said, stages) = lab.defrag(None, false, Consent::Given);
    assert_eq!(r.unwrap(), 0, "{said}");
    assert_eq!(lab.log(), ["defrag cp2 (leader cp1)", "defrag cp1 (leader cp1)"], "{said}");
    let rounds = stages.iter().filter(|s| *s == "etcd-defrag/quorum").count();
    assert_eq!(rounds, 2, "a quorum check before each member: {stages:?}");
    assert!(stages.contains(&"etcd-defrag/identity".to_string()), "the markers are read first: {stages:?}");
    insta::assert_snapshot!("defrag_run", masked(&said));
    let sim = lab.sim.lock().unwrap();
    assert!(sim.members["cp1"].db < 11 * MB && sim.members["cp3"].db == 100 * MB);
    drop(sim);

    let before = lab.log().len();
    let (r, said, _) = lab.defrag(None, false, Consent::Given);
    assert_eq!(r.unwrap(), 0);
    assert!(said.contains("etcd defrag: nothing to do"), "{said}");
    assert_eq!(lab.log().len(), before, "a second run defragments nothing");
}

#[test]
fn a_dry_run_shows_the_members_and_why_and_changes_nothing() {
    let lab = Lab::new([(100 * MB, 10 * MB), (100 * MB, 20 * MB), (100 * MB, 90 * MB)]);
    let (r, said, stages) = lab.defrag(None, false, Consent::Preview);
    assert_eq!(r.unwrap(), 0);
    insta::assert_snapshot!("defrag_dry_run", said);
    assert_eq!(lab.writes(), 0, "a dry run runs only reads");
    assert_eq!(stages.last().map(String::as_str), Some("etcd-defrag/preview"));
    // --hosts narrows the members, never to a host that is not one.
    let (r, said, _) = lab.defrag(Some(&["cp3"]), true, Consent::Preview);
    assert_eq!(r.unwrap(), 0);
    assert!(said.contains("1. cp3: ") && !said.contains("cp1") && !said.contains("cp2"), "{said}");
    let (r, _, _) = lab.defrag(Some(&["w1"]), false, Consent::Preview);
    let e = r.unwrap_err();
    assert_eq!(e.exit_code(), 2);
    assert!(
        e.to_string().contains("`w1` is not an etcd member") && e.hint().unwrap().contains("cp1, cp2, cp3"),
        "{e}"
    );
    let (r, _, _) = lab.defrag(Some(&["cp9"]), false, Consent::Preview);
    assert_eq!(r.unwrap_err().exit_code(), 2);
}

#[test]
fn an_unhealthy_member_refuses_the_defrag_by_name_before_anything_is_done() {
    let lab = Lab::new([(100 * MB, 10 * MB), (100 * MB, 20 * MB), (100 * MB, 90 * MB)]);
    lab.sim.lock().unwrap().members.get_mut("cp3").unwrap().up = false;
    // Even when only cp2 is selected: its defragmentation would leave one member of three serving.
    let (r, said, _) = lab.defrag(Some(&["cp2"]), false, Consent::Given);
    let e = r.unwrap_err().to_string();
    assert!(e.contains("not healthy, nothing was changed") && e.contains("cp3: does not answer"), "{e}");
    assert!(said.is_empty() && lab.log().is_empty() && lab.writes() == 0, "{said}");
    // A dead host (no SSH) is named the same way.
    lab.sim.lock().unwrap().members.get_mut("cp3").unwrap().up = true;
    lab.hosts["cp2"].on("st=$(e endpoint status", Reply::Disconnect);
    let (r, _, _) = lab.defrag(None, false, Consent::Given);
    let e = r.unwrap_err().to_string();
    assert!(e.contains("cp2: unreachable: cp2: connection lost"), "{e}");
    assert!(lab.log().is_empty());
}

#[test]
fn a_member_lost_during_the_run_stops_it_before_the_next_member_naming_both() {
    let lab = Lab::new([(100 * MB, 10 * MB), (100 * MB, 20 * MB), (100 * MB, 30 * MB)]);
    lab.sim.lock().unwrap().breaks = Some(("cp2".into(), "cp3".into()));
    let (r, said, _) = lab.defrag(None, false, Consent::Given);
    let e = r.unwrap_err();
    let text = e.to_string();
    assert!(
        text.contains("stopped before the next member")
            && text.contains("cp3: does not answer")
            && text.contains("defragmented so far: cp2"),
        "{text}\n{said}"
    );
    assert_eq!(lab.log(), ["defrag cp2 (leader cp1)"], "cp3 and the leader were not touched");
    // Back again: a re-run skips cp2 (below the threshold no more) and does the rest, leader last.
    lab.sim.lock().unwrap().members.get_mut("cp3").unwrap().up = true;
    lab.sim.lock().unwrap().breaks = None;
    let (r, said, _) = lab.defrag(None, false, Consent::Given);
    assert_eq!(r.unwrap(), 0, "{said}");
    assert_eq!(lab.log()[1..], ["defrag cp3 (leader cp1)", "defrag cp1 (leader cp1)"]);
}

#[test]
fn an_interrupt_between_members_stops_cleanly_and_a_rerun_finishes() {
    let lab = Lab::new([(100 * MB, 10 * MB), (100 * MB, 20 * MB), (100 * MB, 30 * MB)]);
    let s = lab.session();
    let stop = s.executor.stop_flag();
    lab.hosts["cp2"].handle("e defrag --command-timeout", move |_, _| {
        // Ctrl-C while cp2 is being defragmented: cp2 finishes, nothing starts after it.
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        Reply::ok("Finished defragmenting etcd member[https://127.0.0.1:2379]\n")
    });
    let o = DefragOptions {
        hosts: None,
        threshold: 0.5,
        force: false,
        timeout: Duration::from_secs(300),
        consent: Consent::Given,
    };
    let e = defrag_in(&s, &o).unwrap_err();
    assert_eq!(e.exit_code(), 130, "{e}");
    assert!(e.to_string().contains("interrupted before `quorum`"), "{e}");
    let said = s.said();
    assert!(
        said.contains("cp2 ") && said.contains("1 member(s) defragmented"),
        "what was done is said: {said}"
    );
    assert!(lab.log().is_empty(), "the other members were not touched: {:?}", lab.log());
    let before = lab.hosts["cp2"].commands().iter().filter(|c| c.contains("e defrag")).count();
    assert_eq!(before, 1);
    // The re-run (cp2 still reads as fragmented in the simulation: its override did not shrink it) goes on.
    let (r, said, _) = lab.defrag(Some(&["cp3", "cp1"]), false, Consent::Given);
    assert_eq!(r.unwrap(), 0, "{said}");
    assert_eq!(lab.log(), ["defrag cp3 (leader cp1)", "defrag cp1 (leader cp1)"]);
}

#[test]
fn status_reports_every_member_as_a_table_and_a_document() {
    let lab = Lab::new([(4 * MB, 3 * MB), (4 * MB + 8192, 3 * MB), (MB, MB / 2)]);
    lab.sim.lock().unwrap().members.get_mut("cp3").unwrap().up = false;
    let s = lab.session();
    let code = status_in(&s, None, Format::Table).unwrap();
    assert_eq!(code, 1, "a member does not answer");
    insta::assert_snapshot!("status_table", s.said());
    let s = lab.session();
    assert_eq!(status_in(&s, Some(&["cp1".into(), "cp2".into()]), Format::Json).unwrap(), 0);
    insta::assert_snapshot!("status_json", s.said());
    // One round trip per member.
    for h in ["cp1", "cp2", "cp3"] {
        assert_eq!(lab.hosts[h].commands().len(), if h == "cp3" { 1 } else { 2 }, "{h}");
    }
    assert!(lab.hosts["w1"].commands().is_empty(), "the worker is no member");
}

/// A cluster in NOSPACE: 2 GiB quota, every member's db at it, most of it old revisions.
fn nospace() -> Lab {
    let lab = Lab::new([(2 << 30, 2 << 30), (2 << 30, (2 << 30) - MB), (2 << 30, 2 << 30)]);
    {
        let mut sim = lab.sim.lock().unwrap();
        let ids: Vec<u64> = sim.members.values().map(|m| m.id).collect();
        sim.alarms = ids.iter().take(2).map(|id| (*id, 1)).collect();
        for m in sim.members.values_mut() {
            m.garbage = m.in_use - 300 * MB;
        }
    }
    lab
}

#[test]
fn alarms_are_listed_and_a_dry_run_disarm_shows_the_recovery_steps_only() {
    let lab = nospace();
    let (r, said) = lab.alarms(None, Format::Table);
    assert_eq!(r.unwrap(), 1, "an active alarm is a problem found");
    assert_eq!(
        said,
        "alarm: NOSPACE on cp1 (member 8e9e05c52164694d)\nalarm: NOSPACE on cp2 (member 8e9e05c521647a5e)\n"
    );
    let (r, said) = lab.alarms(None, Format::Json);
    assert_eq!(r.unwrap(), 1);
    let v: serde_json::Value = serde_json::from_str(&said).unwrap();
    assert_eq!(
        (v["kind"].as_str(), v["alarms"][1]["member"].as_str()),
        (Some("EtcdAlarms"), Some("cp2")),
        "{v}"
    );
    let (r, said) = lab.alarms(Some(Consent::Preview), Format::Table);
    assert_eq!(r.unwrap(), 1);
    insta::assert_snapshot!("disarm_dry_run", said);
    assert_eq!(lab.writes(), 0);
}

#[test]
fn disarm_compacts_defragments_every_member_leader_last_disarms_and_checks() {
    let lab = nospace();
    let (r, said) = lab.alarms(Some(Consent::Given), Format::Table);
    assert_eq!(r.unwrap(), 0, "{said}");
    assert_eq!(
        lab.log(),
        [
            "compact 900",
            "defrag cp2 (leader cp1)",
            "defrag cp3 (leader cp1)",
            "defrag cp1 (leader cp1)",
            "disarm"
        ]
    );
    insta::assert_snapshot!("disarm_run", masked(&said));
    let (r, said) = lab.alarms(Some(Consent::Given), Format::Table);
    assert_eq!(r.unwrap(), 0);
    assert!(said.contains("no alarm is active") && said.contains("nothing to do"), "{said}");
    assert_eq!(lab.log().len(), 5, "a second run does nothing");
}

#[test]
fn disarm_is_refused_while_a_db_stays_above_its_quota_and_for_other_alarms() {
    let lab = nospace();
    lab.sim.lock().unwrap().full = Some("cp3".into());
    let (r, said) = lab.alarms(Some(Consent::Given), Format::Table);
    let e = r.unwrap_err();
    assert!(
        e.to_string().contains("NOSPACE stays armed: cp3: 2.0 GiB is still at or above its quota of 2.0 GiB"),
        "{e}\n{said}"
    );
    assert!(e.hint().unwrap().contains("quota-backend-bytes"));
    assert!(!lab.log().contains(&"disarm".to_string()), "{:?}", lab.log());

    let lab = nospace();
    lab.sim.lock().unwrap().alarms.push((0x8e9e05c52164694d + 0x2222, 2));
    let (r, _) = lab.alarms(Some(Consent::Given), Format::Table);
    let e = r.unwrap_err();
    assert!(e.to_string().contains("NOSPACE only; active: CORRUPT on cp3"), "{e}");
    assert_eq!(lab.writes(), 0);

    // With NOSPACE active, a plain defrag points at the recovery.
    let lab = nospace();
    let (r, _, _) = lab.defrag(None, false, Consent::Given);
    let e = r.unwrap_err();
    assert!(e.hint().unwrap().contains("etcd alarms --disarm"), "{e}");
}

#[test]
fn every_etcd_workflow_is_listed_with_its_stages() {
    for name in ["etcd-status", "etcd-defrag", "etcd-alarms"] {
        assert!(crate::workflow::NAMES.contains(&name));
        assert!(crate::workflow::listing(name).is_some_and(|l| !l.is_empty()), "{name}");
    }
    let l = crate::workflow::listing("etcd-defrag").unwrap();
    assert!(l.last().unwrap().contains("`quorum` to `gate` run once per member"), "{l:?}");
}
