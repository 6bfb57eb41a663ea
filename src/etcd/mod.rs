//! `kubeforge etcd status | defrag | alarms`: etcd care on the members kubeforge installed, as the stages of
//! [`ETCD_STATUS`], [`ETCD_DEFRAG`] and [`ETCD_ALARMS`] on one [`Session`] (one connection per host, the
//! fake transport in tests).
//!
//! Every etcdctl call runs on the member's own host against `https://127.0.0.1:2379` with the health-check
//! client certificate ([`member`] holds the scripts, the parsing of etcdctl's JSON and the decisions), so a
//! dead host or a dead member is reported by its name.
//!
//! - `status`: per member its endpoint, id, leadership, raft index and term, db size, in-use size,
//!   fragmentation (`1 - in use / db size`), quota and alarms; exit 1 when a member is unhealthy or an alarm
//!   is active.
//! - `defrag`: the selected members whose in-use share is below `--threshold` (Talos uses 0.5), or all with
//!   `--force`, one at a time, the leader last (chosen again before each member, since leadership can move).
//!   Before each member every member must answer and be healthy; after it the member must be healthy again
//!   before the next one. A Ctrl-C lets the member in progress finish and stops before the next; a re-run
//!   finds the defragmented members above the threshold and skips them.
//! - `alarms`: lists the active alarms. `--disarm` recovers from NOSPACE as etcd's maintenance guide says:
//!   compact to the current revision, defragment every member (leader last), check every db is below its
//!   quota again (otherwise the alarm stays: disarming would only let the next write raise it again), disarm,
//!   and check no alarm is left.

pub mod member;
#[cfg(test)]
mod tests;

use crate::output::Format;
use crate::prompt::Consent;
use crate::session::Session;
use crate::transport::Command;
use crate::workflow::{Workflow, ETCD_ALARMS, ETCD_DEFRAG, ETCD_STATUS};
use crate::{Error, Result};
use member::{Alarm, AlarmKind, Member, Reading};
use serde::Serialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long a member may take to be healthy again after its defragmentation.
const GATE_TIMEOUT: Duration = Duration::from_secs(120);

/// `kubeforge etcd`.
#[derive(Debug, clap::Subcommand)]
pub enum EtcdCommand {
    /// Per member: endpoint, member id, leader, raft index and term, db size, in-use size, fragmentation
    /// (1 - in use / db size), quota and alarms. Read-only, one round trip per member; exits 1 when a member
    /// is unhealthy or an alarm is active.
    Status(StatusArgs),
    /// Defragment the members whose in-use share of the db is below --threshold (or every selected member
    /// with --force), one at a time, the leader last, every member healthy before each and the member
    /// healthy again after it. Shows the members and why first.
    Defrag(DefragArgs),
    /// List the active alarms (exit 1 when there is one). With --disarm, recover from NOSPACE: compact to
    /// the current revision, defragment every member (leader last), check every db is below its quota,
    /// disarm, check the alarm is gone; the steps are shown first.
    Alarms(AlarmsArgs),
}

/// Arguments of `etcd status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The inventory file (`-`: standard input).
    #[arg(short, long)]
    pub inventory: PathBuf,
    /// Only these members: host names, roles (`@etcd`) or `all`, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub hosts: Option<Vec<String>>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Format,
    /// Connection, PKI and cache settings.
    #[command(flatten)]
    pub common: crate::args::ClusterArgs,
}

/// Arguments of `etcd defrag`.
#[derive(Debug, clap::Args)]
pub struct DefragArgs {
    /// The inventory file (`-`: standard input).
    #[arg(short, long)]
    pub inventory: PathBuf,
    /// Only these members: host names, roles (`@etcd`) or `all`, comma-separated (every member must still
    /// be healthy).
    #[arg(long, value_delimiter = ',')]
    pub hosts: Option<Vec<String>>,
    /// Defragment a member when the share of its db in use is below this (0 < T <= 1).
    #[arg(long, default_value = "0.5", value_parser = threshold)]
    pub threshold: f64,
    /// Defragment every selected member, whatever its share in use.
    #[arg(long)]
    pub force: bool,
    /// How long one member's defragmentation may take.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Show the members and why; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask (without it, the members are shown and a terminal is asked; without a terminal it
    /// refuses).
    #[arg(short, long)]
    pub yes: bool,
    /// Connection, PKI and cache settings.
    #[command(flatten)]
    pub common: crate::args::ClusterArgs,
}

/// Arguments of `etcd alarms`.
#[derive(Debug, clap::Args)]
pub struct AlarmsArgs {
    /// The inventory file (`-`: standard input).
    #[arg(short, long)]
    pub inventory: PathBuf,
    /// Recover from a NOSPACE alarm: compact, defragment every member (leader last), disarm.
    #[arg(long)]
    pub disarm: bool,
    /// With --disarm: how long one member's defragmentation may take.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration, requires = "disarm")]
    pub timeout: Duration,
    /// With --disarm: show the steps; change nothing.
    #[arg(long, requires = "disarm")]
    pub dry_run: bool,
    /// With --disarm: do not ask (without it, the steps are shown and a terminal is asked; without a
    /// terminal it refuses).
    #[arg(short, long, requires = "disarm")]
    pub yes: bool,
    /// Output format of the list.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Format,
    /// Connection, PKI and cache settings.
    #[command(flatten)]
    pub common: crate::args::ClusterArgs,
}

/// `--threshold`: a share in (0, 1].
fn threshold(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(t) if t > 0.0 && t <= 1.0 => Ok(t),
        _ => Err(format!("`{s}` is not a share between 0 and 1 (Talos and kubeforge use 0.5)")),
    }
}

/// Settings of `etcd defrag`.
#[derive(Debug, Clone)]
pub struct DefragOptions {
    /// `--hosts`.
    pub hosts: Option<Vec<String>>,
    /// `--threshold`.
    pub threshold: f64,
    /// `--force`.
    pub force: bool,
    /// One member's defragmentation limit.
    pub timeout: Duration,
    /// Preview, go ahead, or ask.
    pub consent: Consent,
}

/// Settings of `etcd alarms`.
#[derive(Debug, Clone)]
pub struct AlarmsOptions {
    /// `None`: list only; `Some`: recover (preview, go ahead, or ask).
    pub disarm: Option<Consent>,
    /// One member's defragmentation limit.
    pub timeout: Duration,
    /// Output format of the list.
    pub output: Format,
}

/// Runs a parsed `etcd` command: flags are checked first, then one session serves the whole command.
pub fn run(cmd: EtcdCommand) -> Result<i32> {
    match cmd {
        EtcdCommand::Status(a) => {
            let session = Session::open(&a.inventory, a.common.options(&a.inventory)?)?;
            status_in(&session, a.hosts.as_deref(), a.output)
        }
        EtcdCommand::Defrag(a) => {
            let consent = Consent::from_flags("etcd defrag", a.dry_run, a.yes)?;
            let session = Session::open(&a.inventory, a.common.options(&a.inventory)?)?;
            let o = DefragOptions {
                hosts: a.hosts,
                threshold: a.threshold,
                force: a.force,
                timeout: a.timeout,
                consent,
            };
            defrag_in(&session, &o)
        }
        EtcdCommand::Alarms(a) => {
            let disarm = match a.disarm {
                true => Some(Consent::from_flags("etcd alarms --disarm", a.dry_run, a.yes)?),
                false => None,
            };
            let session = Session::open(&a.inventory, a.common.options(&a.inventory)?)?;
            alarms_in(&session, &AlarmsOptions { disarm, timeout: a.timeout, output: a.output })
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Reading

/// The etcd members `hosts` selects (every member when `None`), in inventory order. A selected host that is
/// not a member is a usage error naming the members.
pub fn members(session: &Session, hosts: Option<&[String]>) -> Result<Vec<String>> {
    let model = session.model();
    let all: Vec<String> = model.etcd_members().map(|h| h.name.clone()).collect();
    if all.is_empty() {
        return Err(Error::usage(
            format!("{} has no etcd member", session.loaded.path.display()),
            Some("etcd runs on the hosts with the `etcd` role"),
        ));
    }
    let Some(chosen) = crate::selector::names(&session.loaded.inventory.hosts, hosts)? else {
        return Ok(all);
    };
    // A host named on its own must be a member; a role or `all` picks the members among its hosts.
    let named: Vec<&String> = hosts
        .unwrap_or_default()
        .iter()
        .flat_map(|s| s.split(','))
        .map(str::trim)
        .filter(|s| !s.starts_with('@') && !s.starts_with("role=") && *s != "all" && !s.is_empty())
        .filter_map(|s| chosen.iter().find(|c| c.as_str() == s))
        .filter(|c| !all.contains(c))
        .collect();
    if !named.is_empty() {
        return Err(Error::usage(
            format!(
                "{} {} not an etcd member",
                named.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", "),
                if named.len() == 1 { "is" } else { "are" }
            ),
            Some(&format!("the members are {}", all.join(", "))),
        ));
    }
    let picked: Vec<String> = all.iter().filter(|m| chosen.contains(m)).cloned().collect();
    if picked.is_empty() {
        return Err(Error::usage(
            "--hosts selects no etcd member",
            Some(&format!("the members are {}", all.join(", "))),
        ));
    }
    Ok(picked)
}

/// Reads `names` (etcd members), each on its own host, `--concurrency` at a time, one round trip each.
pub async fn read(session: &Session, names: &[String]) -> Reading {
    let model = session.model();
    let script = format!("{}\n{}", crate::phase::install::ETCDCTL_FN, member::READ);
    let members = session
        .executor
        .each(names, |name| {
            let endpoint =
                model.host(name).map(|h| crate::model::url(h.internal_ip, 2379)).unwrap_or_default();
            let t = session.transport(name);
            let cmd = Command::shell(script.clone()).sudo().timeout(Duration::from_secs(60));
            async move {
                let t = match t {
                    Ok(t) => t,
                    Err(e) => return Member::unreachable(name, endpoint, e.to_string()),
                };
                match t.exec(&cmd).await {
                    Ok(o) => Member::parse(name, endpoint, &o.stdout_str()),
                    Err(e) => Member::unreachable(name, endpoint, e.to_string()),
                }
            }
        })
        .await;
    Reading { members }
}

// ---------------------------------------------------------------------------------------------------------
// status

/// One member in the `EtcdStatus` document.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberRow {
    /// The inventory host.
    pub name: String,
    /// Its client URL.
    pub endpoint: String,
    /// Its member id (hex, as etcdctl shows it).
    pub member_id: Option<String>,
    /// It leads.
    pub leader: bool,
    /// Raft index.
    pub raft_index: Option<u64>,
    /// Raft term.
    pub raft_term: Option<u64>,
    /// Key space revision.
    pub revision: Option<u64>,
    /// The db file's size in bytes.
    pub db_size: Option<u64>,
    /// Bytes in use.
    pub db_size_in_use: Option<u64>,
    /// `1 - in use / db size`, rounded to 3 digits.
    pub fragmentation: Option<f64>,
    /// The backend quota in bytes.
    pub quota: Option<u64>,
    /// The alarms this member raised.
    pub alarms: Vec<AlarmKind>,
    /// Healthy (answers, has a leader, passes etcd's health check).
    pub healthy: bool,
    /// Why not.
    pub error: Option<String>,
}

/// The `EtcdStatus` document.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EtcdStatus {
    /// Every member healthy and no alarm active (the exit code's reason).
    pub healthy: bool,
    /// The members read.
    pub members: Vec<MemberRow>,
    /// The active alarms.
    pub alarms: Vec<AlarmRow>,
}

/// One active alarm in a document.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AlarmRow {
    /// The member that raised it (its host, or its id when no member read has it).
    pub member: String,
    /// Its id (hex).
    pub member_id: String,
    /// What it is.
    pub alarm: AlarmKind,
}

fn alarm_rows(reading: &Reading) -> Vec<AlarmRow> {
    reading
        .alarms()
        .into_iter()
        .map(|a| AlarmRow {
            member: reading.name_of(a.member_id),
            member_id: format!("{:x}", a.member_id),
            alarm: a.alarm,
        })
        .collect()
}

impl EtcdStatus {
    /// The document of a reading.
    pub fn of(reading: &Reading) -> Self {
        let alarms = reading.alarms();
        let members: Vec<MemberRow> = reading
            .members
            .iter()
            .map(|m| {
                let s = m.status.as_ref();
                MemberRow {
                    name: m.name.clone(),
                    endpoint: m.endpoint.clone(),
                    member_id: s.map(|s| format!("{:x}", s.member_id)),
                    leader: s.is_some_and(|s| s.is_leader()),
                    raft_index: s.map(|s| s.raft_index),
                    raft_term: s.map(|s| s.raft_term),
                    revision: s.map(|s| s.revision),
                    db_size: s.map(|s| s.db_size),
                    db_size_in_use: s.and_then(|s| s.db_size_in_use),
                    fragmentation: s
                        .filter(|s| s.db_size_in_use.is_some())
                        .map(|s| (s.fragmentation() * 1000.0).round() / 1000.0),
                    quota: m.quota,
                    alarms: s
                        .map(|s| {
                            alarms.iter().filter(|a| a.member_id == s.member_id).map(|a| a.alarm).collect()
                        })
                        .unwrap_or_default(),
                    healthy: m.healthy,
                    error: m.error.clone(),
                }
            })
            .collect();
        let healthy = members.iter().all(|m| m.healthy) && alarms.is_empty();
        EtcdStatus { healthy, members, alarms: alarm_rows(reading) }
    }

    /// The table for people.
    pub fn table(&self) -> String {
        let size = |n: Option<u64>| n.map(crate::plan::human_size).unwrap_or_else(|| "-".into());
        let num = |n: Option<u64>| n.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
        let mut s = format!(
            "{:<12} {:<26} {:<17} {:<6} {:>10} {:>5} {:>10} {:>10} {:>5} {:>10} {:<8} {}\n",
            "MEMBER",
            "ENDPOINT",
            "ID",
            "LEADER",
            "RAFT INDEX",
            "TERM",
            "DB SIZE",
            "IN USE",
            "FRAG",
            "QUOTA",
            "ALARMS",
            "HEALTH"
        );
        for m in &self.members {
            let alarms: Vec<String> = m.alarms.iter().map(|a| a.to_string()).collect();
            s.push_str(&format!(
                "{:<12} {:<26} {:<17} {:<6} {:>10} {:>5} {:>10} {:>10} {:>5} {:>10} {:<8} {}\n",
                m.name,
                m.endpoint,
                m.member_id.as_deref().unwrap_or("-"),
                if m.leader { "yes" } else { "-" },
                num(m.raft_index),
                num(m.raft_term),
                size(m.db_size),
                size(m.db_size_in_use),
                m.fragmentation.map(|f| format!("{:.0}%", f * 100.0)).unwrap_or_else(|| "-".into()),
                size(m.quota),
                if alarms.is_empty() { "-".into() } else { alarms.join(",") },
                match (&m.error, m.healthy) {
                    (_, true) => "healthy".to_string(),
                    (Some(e), false) => e.clone(),
                    (None, false) => "unhealthy".into(),
                }
            ));
        }
        for a in &self.alarms {
            s.push_str(&format!("alarm: {} on {} (member {})\n", a.alarm, a.member, a.member_id));
        }
        s.push_str(if self.healthy { "etcd: healthy\n" } else { "etcd: UNHEALTHY\n" });
        s
    }
}

/// `etcd status` in a session: exit 0 when every selected member is healthy and no alarm is active, else 1.
pub fn status_in(session: &Session, hosts: Option<&[String]>, format: Format) -> Result<i32> {
    let names = members(session, hosts)?;
    session.enter(&ETCD_STATUS, "read");
    let reading = session.block_on(read(session, &names));
    let doc = EtcdStatus::of(&reading);
    if format.is_document() {
        session.say(crate::output::render(format, "EtcdStatus", &doc)?);
    } else {
        session.say(doc.table());
    }
    Ok(if doc.healthy { 0 } else { 1 })
}

// ---------------------------------------------------------------------------------------------------------
// defrag (and the recovery's defragmentation)

/// One member defragmented.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Defragmented {
    /// The member.
    pub name: String,
    /// db size before, bytes.
    pub before: u64,
    /// db size after, bytes.
    pub after: u64,
    /// in use after, bytes.
    pub in_use: Option<u64>,
    /// How long the member took (defragmentation and gate).
    pub seconds: f64,
}

fn report(done: &[Defragmented], took: Duration) -> String {
    let mut s = format!("{:<12} {:>10} {:>10} {:>10} {:>8}\n", "MEMBER", "BEFORE", "AFTER", "IN USE", "TIME");
    let mut freed: u64 = 0;
    for d in done {
        freed += d.before.saturating_sub(d.after);
        s.push_str(&format!(
            "{:<12} {:>10} {:>10} {:>10} {:>8}\n",
            d.name,
            crate::plan::human_size(d.before),
            crate::plan::human_size(d.after),
            d.in_use.map(crate::plan::human_size).unwrap_or_else(|| "-".into()),
            crate::report::fmt_dur(Duration::from_secs_f64(d.seconds))
        ));
    }
    s.push_str(&format!(
        "etcd defrag: {} member(s) defragmented, {} given back, in {}\n",
        done.len(),
        crate::plan::human_size(freed),
        crate::report::fmt_dur(took)
    ));
    s
}

/// Defragments `order` one member at a time through `workflow`'s repeated stages (`quorum`, `defrag`,
/// `gate`): before each, every member in `all` must answer (and be healthy unless `alarms_expected`); the
/// next member is the first pending one that does not lead now. Stops cleanly between members after an
/// interrupt. Returns what each member went from and to.
async fn defragment(
    session: &Session,
    workflow: &'static Workflow,
    all: &[String],
    order: Vec<String>,
    timeout: Duration,
    alarms_expected: bool,
    started: Instant,
) -> Result<Vec<Defragmented>> {
    let mut pending = order;
    let mut done: Vec<Defragmented> = Vec::new();
    let names = |d: &[Defragmented]| {
        if d.is_empty() {
            "none".to_string()
        } else {
            d.iter().map(|d| d.name.clone()).collect::<Vec<_>>().join(", ")
        }
    };
    while !pending.is_empty() {
        if let Err(e) = session.boundary(workflow, "quorum") {
            session.say(report(&done, started.elapsed()));
            return Err(e);
        }
        session.enter(workflow, "quorum");
        let now = read(session, all).await;
        let problems = now.problems(alarms_expected);
        if !problems.is_empty() {
            return Err(Error::msg(
                format!(
                    "etcd: stopped before the next member, the cluster is not healthy: {}; defragmented so far: {}",
                    problems.join("; "),
                    names(&done)
                ),
                Some("bring the member back (`kubeforge etcd status` shows each one), then run the same command again: members already defragmented are skipped"),
            ));
        }
        let leader = now.leader().map(|m| m.name.clone());
        let next = member::next_member(&pending, leader.as_deref()).cloned().expect("pending is not empty");
        pending.retain(|n| *n != next);
        let before = now
            .members
            .iter()
            .find(|m| m.name == next)
            .and_then(|m| m.status.as_ref())
            .map(|s| s.db_size)
            .unwrap_or(0);
        session.enter(workflow, "defrag");
        let clock = Instant::now();
        let t = session.transport(&next)?;
        let cmd = Command::shell(format!("{}\n{}", crate::phase::install::ETCDCTL_FN, member::DEFRAG))
            .arg(format!("{}s", timeout.as_secs().max(1)))
            .sudo()
            .timeout(timeout + Duration::from_secs(30));
        let step = crate::exec::Step::exec(
            format!("defragment{}", if leader.as_deref() == Some(&next) { " (leader)" } else { "" }),
            cmd,
        );
        let r = session
            .executor
            .run("etcd-defrag", vec![crate::exec::HostPlan { transport: t, steps: vec![step] }])
            .await;
        if r.hosts.is_empty() && session.executor.stopping() {
            // Stopped before the member's step began: nothing was done to it.
            session.say(report(&done, started.elapsed()));
            return session.boundary(workflow, "defrag").map(|()| done);
        }
        // A Ctrl-C during the member's step lets it finish: the gate and the record follow, the next
        // boundary stops.
        if !r.failures.is_empty() {
            let e = r.into_result().expect_err("a failure");
            return Err(Error::msg(
                format!("{next}: the defragmentation failed: {e}; defragmented before it: {}", names(&done)),
                Some(
                    "`kubeforge etcd status` shows the member; run the same command again once it is healthy",
                ),
            ));
        }
        session.enter(workflow, "gate");
        let after = gate(session, &next, alarms_expected).await?;
        done.push(Defragmented {
            name: next.clone(),
            before,
            after: after.db_size,
            in_use: after.db_size_in_use,
            seconds: (clock.elapsed().as_secs_f64() * 10.0).round() / 10.0,
        });
        eprintln!(
            "[etcd] {next}: {} → {} ({:.1}s)",
            crate::plan::human_size(before),
            crate::plan::human_size(after.db_size),
            clock.elapsed().as_secs_f64()
        );
    }
    Ok(done)
}

/// Waits until `name` answers (and is healthy, unless `alarms_expected`) again; its status then.
async fn gate(session: &Session, name: &str, alarms_expected: bool) -> Result<member::EndpointStatus> {
    let start = Instant::now();
    loop {
        let r = read(session, &[name.to_string()]).await;
        let m = &r.members[0];
        let ok = if alarms_expected { m.answers() } else { m.healthy };
        if ok {
            return Ok(m.status.clone().expect("an answering member has a status"));
        }
        if start.elapsed() > GATE_TIMEOUT {
            return Err(Error::msg(
                format!(
                    "{name}: not healthy {}s after its defragmentation: {}",
                    GATE_TIMEOUT.as_secs(),
                    m.error.as_deref().unwrap_or("unhealthy")
                ),
                Some("see `journalctl -u etcd` on the host; the members after it were not touched"),
            ));
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// `etcd defrag` in a session.
pub fn defrag_in(session: &Session, o: &DefragOptions) -> Result<i32> {
    let selected = members(session, o.hosts.as_deref())?;
    let all = members(session, None)?;
    let started = Instant::now();
    session.block_on(async {
        session.enter(&ETCD_DEFRAG, "read");
        let reading = read(session, &all).await;
        session.enter(&ETCD_DEFRAG, "plan");
        let problems = reading.problems(false);
        if !problems.is_empty() {
            return Err(Error::msg(
                format!("etcd defrag: the cluster is not healthy, nothing was changed: {}", problems.join("; ")),
                Some(if reading.alarms().is_empty() {
                    "a member busy with a defragmentation cannot be spared; bring it back first (`kubeforge etcd status`)"
                } else {
                    "an alarm is active: `kubeforge etcd alarms --disarm` compacts, defragments and disarms"
                }),
            ));
        }
        let alarms = reading.alarms();
        if !alarms.is_empty() {
            return Err(Error::msg(
                format!("etcd defrag: an alarm is active, nothing was changed: {}", describe(&reading, &alarms)),
                Some("`kubeforge etcd alarms --disarm` compacts, defragments every member and disarms NOSPACE"),
            ));
        }
        let plan = member::defrag_plan(&reading, &selected, o.threshold, o.force);
        session.enter(&ETCD_DEFRAG, "preview");
        let order: Vec<String> = plan.iter().filter(|c| c.defrag).map(|c| c.name.clone()).collect();
        let mut s = String::new();
        if order.is_empty() {
            s.push_str("etcd defrag: no member to defragment\n");
        } else {
            s.push_str(&format!(
                "etcd defrag: {} member(s), one at a time, the leader last (each after every member is healthy):\n",
                order.len()
            ));
        }
        let mut i = 0;
        for c in &plan {
            let lead = if c.leader { " (leader)" } else { "" };
            if c.defrag {
                i += 1;
                s.push_str(&format!("  {i}. {}{lead}: {}\n", c.name, c.reason));
            } else {
                s.push_str(&format!("  -  {}{lead}: {}\n", c.name, c.reason));
            }
        }
        session.say(&s);
        if order.is_empty() {
            if !o.force {
                session.say("etcd defrag: nothing to do (--force defragments anyway)\n");
            }
            return Ok(0);
        }
        if o.consent == Consent::Preview {
            session.say("etcd defrag --dry-run: nothing was changed; run with --yes to defragment\n");
            return Ok(0);
        }
        session.enter(&ETCD_DEFRAG, "identity");
        crate::apply::guard(&session.model(), &session.options, &all, &session.transports, &session.executor)
            .await?;
        if o.consent == Consent::Ask {
            session.enter(&ETCD_DEFRAG, "confirm");
            if !crate::prompt::ask(&format!("Defragment {}?", order.join(", ")))? {
                session.say("etcd defrag: nothing was changed\n");
                return Ok(0);
            }
        }
        crate::cleanup::writing();
        let done = defragment(session, &ETCD_DEFRAG, &all, order, o.timeout, false, started).await?;
        session.enter(&ETCD_DEFRAG, "report");
        session.say(report(&done, started.elapsed()));
        Ok(0)
    })
}

fn describe(reading: &Reading, alarms: &[Alarm]) -> String {
    alarms
        .iter()
        .map(|a| format!("{} on {}", a.alarm, reading.name_of(a.member_id)))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------------------------
// alarms

/// The `EtcdAlarms` document.
#[derive(Debug, Clone, Serialize)]
struct AlarmsDocument {
    alarms: Vec<AlarmRow>,
}

/// The steps of a NOSPACE recovery, for people.
fn recovery_steps(reading: &Reading, order: &[String], compact_on: &str) -> String {
    let mut s = String::from("etcd alarms --disarm: the recovery, step by step:\n");
    let rev = reading.members.iter().filter_map(|m| m.status.as_ref()).map(|s| s.revision).max().unwrap_or(0);
    s.push_str(&format!(
        "  1. compact the key space to the current revision (now {rev}) through {compact_on}: old revisions go\n"
    ));
    s.push_str(&format!(
        "  2. defragment every member, one at a time, the leader last: {}\n",
        order.join(" → ")
    ));
    s.push_str("  3. check every member's db is below its quota (otherwise stop: the alarm stays)\n");
    s.push_str("  4. disarm the NOSPACE alarm\n");
    s.push_str("  5. check no alarm is left and every member is healthy\n");
    s
}

/// `etcd alarms [--disarm]` in a session.
pub fn alarms_in(session: &Session, o: &AlarmsOptions) -> Result<i32> {
    let all = members(session, None)?;
    let started = Instant::now();
    session.block_on(async {
        session.enter(&ETCD_ALARMS, "read");
        let reading = read(session, &all).await;
        session.enter(&ETCD_ALARMS, "preview");
        let alarms = reading.alarms();
        let answering = reading.members.iter().any(|m| m.alarms.is_some());
        if !answering {
            return Err(Error::msg(
                format!(
                    "etcd alarms: no member answered: {}",
                    reading.problems(true).join("; ")
                ),
                Some("`kubeforge etcd status` shows each member"),
            ));
        }
        if o.output.is_document() {
            session.say(crate::output::render(o.output, "EtcdAlarms", &AlarmsDocument { alarms: alarm_rows(&reading) })?);
        } else if alarms.is_empty() {
            session.say("etcd alarms: no alarm is active\n");
        } else {
            for a in alarm_rows(&reading) {
                session.say(format!("alarm: {} on {} (member {})\n", a.alarm, a.member, a.member_id));
            }
        }
        let Some(consent) = o.disarm else {
            return Ok(if alarms.is_empty() { 0 } else { 1 });
        };
        if alarms.is_empty() {
            session.say("etcd alarms --disarm: nothing to do\n");
            return Ok(0);
        }
        let others: Vec<&Alarm> = alarms.iter().filter(|a| a.alarm != AlarmKind::Nospace).collect();
        if !others.is_empty() {
            let others: Vec<Alarm> = others.into_iter().copied().collect();
            return Err(Error::msg(
                format!("etcd alarms --disarm recovers from NOSPACE only; active: {}", describe(&reading, &others)),
                Some("a CORRUPT alarm means a member's data differs: replace that member's data from the others or restore a backup (`kubeforge restore`); disarming hides it"),
            ));
        }
        let problems = reading.problems(true);
        if !problems.is_empty() {
            return Err(Error::msg(
                format!("etcd alarms --disarm: a member does not answer, nothing was changed: {}", problems.join("; ")),
                Some("every member is defragmented: bring it back first (`kubeforge etcd status`)"),
            ));
        }
        let leader = reading.leader().map(|m| m.name.clone());
        let plan = member::defrag_plan(&reading, &all, 1.0, true);
        let order: Vec<String> = plan.iter().map(|c| c.name.clone()).collect();
        let compact_on = leader.clone().unwrap_or_else(|| all[0].clone());
        session.say(recovery_steps(&reading, &order, &compact_on));
        if consent == Consent::Preview {
            session.say("etcd alarms --disarm --dry-run: nothing was changed; run with --yes to recover\n");
            return Ok(1);
        }
        session.enter(&ETCD_ALARMS, "identity");
        crate::apply::guard(&session.model(), &session.options, &all, &session.transports, &session.executor)
            .await?;
        if consent == Consent::Ask {
            session.enter(&ETCD_ALARMS, "confirm");
            if !crate::prompt::ask("Compact, defragment every member and disarm NOSPACE?")? {
                session.say("etcd alarms: nothing was changed\n");
                return Ok(1);
            }
        }
        crate::cleanup::writing();
        session.enter(&ETCD_ALARMS, "compact");
        let t = session.transport(&compact_on)?;
        let cmd = Command::shell(format!("{}\n{}", crate::phase::install::ETCDCTL_FN, member::COMPACT))
            .sudo()
            .timeout(Duration::from_secs(120));
        let out = crate::plan::run_checked(t.as_ref(), "compact", &cmd)
            .await
            .map_err(|e| Error::msg(format!("{compact_on}: the compaction failed: {e}"), None))?;
        session.say(format!("etcd: {} on {compact_on}\n", out.stdout_str().trim()));
        let done = defragment(session, &ETCD_ALARMS, &all, order, o.timeout, true, started).await?;
        session.say(report(&done, started.elapsed()));
        session.boundary(&ETCD_ALARMS, "quota")?;
        session.enter(&ETCD_ALARMS, "quota");
        let now = read(session, &all).await;
        let full = member::above_quota(&now);
        if !full.is_empty() {
            return Err(Error::msg(
                format!("etcd alarms --disarm: NOSPACE stays armed: {}", full.join("; ")),
                Some("the data itself is too large: delete what is not needed (old Events, unused objects) or raise the quota (cluster.extraArgs.etcd `quota-backend-bytes`, at most 8 GiB), then run again"),
            ));
        }
        session.enter(&ETCD_ALARMS, "disarm");
        let t = session.transport(&compact_on)?;
        let cmd = Command::shell(format!("{}\n{}", crate::phase::install::ETCDCTL_FN, member::DISARM))
            .sudo()
            .timeout(Duration::from_secs(60));
        crate::plan::run_checked(t.as_ref(), "disarm", &cmd)
            .await
            .map_err(|e| Error::msg(format!("{compact_on}: disarming failed: {e}"), None))?;
        session.enter(&ETCD_ALARMS, "verify");
        let after = read(session, &all).await;
        let left = after.alarms();
        let problems = after.problems(false);
        if !left.is_empty() || !problems.is_empty() {
            let mut what: Vec<String> = Vec::new();
            if !left.is_empty() {
                what.push(format!("still active: {}", describe(&after, &left)));
            }
            what.extend(problems);
            return Err(Error::msg(
                format!("etcd alarms --disarm: after the disarm, {}", what.join("; ")),
                Some("`kubeforge etcd status` shows each member"),
            ));
        }
        session.say(format!(
            "etcd alarms --disarm: NOSPACE disarmed, every member healthy ({})\n",
            crate::report::fmt_dur(started.elapsed())
        ));
        Ok(0)
    })
}
