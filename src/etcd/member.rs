//! What `kubeforge etcd` reads from each member and decides, with no side effects beyond the reads: the
//! scripts run on a member's own host (etcdctl over TLS against `https://127.0.0.1:2379` with the
//! health-check client certificate, through [`crate::phase::install::ETCDCTL_FN`]), the parsing of
//! etcdctl's JSON (`endpoint status -w json`, `endpoint health -w json`, `alarm list -w json`, in the
//! shapes etcd 3.4 to 3.6 print), and the pure decisions: which members a defragmentation takes and in which
//! order (leader last), what keeps a member from being worked on, and the quota check of an alarm recovery.

use serde::{Deserialize, Serialize};

/// Reads one member on its own host: prints `status `, `health ` and `alarms ` lines (etcdctl's JSON, or its
/// error) and `quota BYTES` (the backend quota, from the member's local metrics listener).
pub const READ: &str = r#"eps=https://127.0.0.1:2379
st=$(e endpoint status -w json 2>&1)
printf '%s\n' "$st" | sed 's/^/status /'
# A member that does not answer its status does not answer the rest either: one timeout, not three.
case $st in *'"Endpoint"'*) ;; *) exit 0 ;; esac
e endpoint health -w json 2>&1 | sed 's/^/health /'
e alarm list -w json 2>&1 | sed 's/^/alarms /'
q=$(curl -s --max-time 5 http://127.0.0.1:2381/metrics 2>/dev/null | awk '$1 == "etcd_server_quota_backend_bytes" {print $2; exit}')
echo "quota $q"
true"#;

/// Defragments the member on this host: `$1` etcdctl's command timeout (`300s`; a large db takes a while
/// and the member answers nothing meanwhile).
pub const DEFRAG: &str = r#"eps=https://127.0.0.1:2379
e defrag --command-timeout="$1""#;

/// Compacts the key space to the current revision (read on the member, as etcd's maintenance guide does),
/// through the member on this host; prints `compacted REV`. A revision already compacted is not an error
/// (a second run).
pub const COMPACT: &str = r#"eps=https://127.0.0.1:2379
rev=$(e endpoint status -w json | grep -o '"revision":[0-9]*' | head -1 | cut -d: -f2)
[ -n "$rev" ] || { echo "cannot read the current revision" >&2; exit 1; }
if ! out=$(e compact "$rev" 2>&1); then
  case $out in *"has been compacted"*) ;; *) printf '%s\n' "$out" >&2; exit 1 ;; esac
fi
echo "compacted $rev""#;

/// Disarms every active alarm through the member on this host.
pub const DISARM: &str = r#"eps=https://127.0.0.1:2379
e alarm disarm >/dev/null"#;

/// One entry of `etcdctl endpoint status -w json`.
#[derive(Debug, Deserialize)]
struct EndpointEntry {
    #[serde(rename = "Endpoint")]
    endpoint: String,
    #[serde(rename = "Status")]
    status: RawStatus,
}

#[derive(Debug, Deserialize)]
struct Header {
    #[serde(default)]
    member_id: u64,
    #[serde(default)]
    revision: u64,
}

/// etcd's `StatusResponse` as etcdctl prints it (protobuf JSON names; zero values are left out).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawStatus {
    header: Header,
    #[serde(default)]
    version: String,
    #[serde(default)]
    db_size: u64,
    #[serde(default)]
    leader: u64,
    #[serde(default)]
    raft_index: u64,
    #[serde(default)]
    raft_term: u64,
    #[serde(default)]
    errors: Vec<String>,
    #[serde(default)]
    db_size_in_use: Option<u64>,
    #[serde(default)]
    is_learner: bool,
    /// etcd 3.6 and later.
    #[serde(default)]
    db_size_quota: Option<u64>,
}

/// One member's status, as it reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    /// The endpoint etcdctl asked.
    pub endpoint: String,
    /// The member's id (etcdctl shows it in hex).
    #[serde(serialize_with = "hex_id")]
    pub member_id: u64,
    /// The leader's id as this member knows it (0: no leader).
    #[serde(serialize_with = "hex_id")]
    pub leader: u64,
    /// The key space's revision.
    pub revision: u64,
    /// The raft log index.
    pub raft_index: u64,
    /// The raft term.
    pub raft_term: u64,
    /// The backend file's size in bytes.
    pub db_size: u64,
    /// The bytes of it in use (etcd 3.4 and later).
    pub db_size_in_use: Option<u64>,
    /// A learner (not voting).
    pub is_learner: bool,
    /// etcd's version.
    pub version: String,
    /// The errors the member reports (active alarms: `memberID:N alarm:NOSPACE`).
    pub errors: Vec<String>,
    /// The backend quota, when the member reports it (etcd 3.6).
    #[serde(skip)]
    pub quota: Option<u64>,
}

fn hex_id<S: serde::Serializer>(id: &u64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{id:x}"))
}

impl EndpointStatus {
    /// `dbSizeInUse / dbSize` (1 when the member does not say).
    pub fn in_use_ratio(&self) -> f64 {
        match self.db_size_in_use {
            Some(u) if self.db_size > 0 => u as f64 / self.db_size as f64,
            _ => 1.0,
        }
    }

    /// `1 - in use / db size`: the share of the file a defragmentation gives back.
    pub fn fragmentation(&self) -> f64 {
        1.0 - self.in_use_ratio()
    }

    /// Whether this member is the leader it reports.
    pub fn is_leader(&self) -> bool {
        self.leader != 0 && self.leader == self.member_id
    }
}

/// Parses `etcdctl endpoint status -w json` (one endpoint asked: its entry).
pub fn parse_status(json: &str) -> Result<EndpointStatus, String> {
    parse_statuses(json)?.into_iter().next().ok_or_else(|| "the member did not answer its status".into())
}

/// Parses `etcdctl endpoint status -w json` with several endpoints: one entry per endpoint that answered
/// (etcdctl leaves out the others).
pub fn parse_statuses(json: &str) -> Result<Vec<EndpointStatus>, String> {
    let entries: Vec<EndpointEntry> =
        serde_json::from_str(json.trim()).map_err(|e| format!("unreadable endpoint status ({e})"))?;
    Ok(entries
        .into_iter()
        .map(|e| {
            let s = e.status;
            EndpointStatus {
                endpoint: e.endpoint,
                member_id: s.header.member_id,
                leader: s.leader,
                revision: s.header.revision,
                raft_index: s.raft_index,
                raft_term: s.raft_term,
                db_size: s.db_size,
                db_size_in_use: s.db_size_in_use,
                is_learner: s.is_learner,
                version: s.version,
                errors: s.errors,
                quota: s.db_size_quota,
            }
        })
        .collect())
}

/// One entry of `etcdctl endpoint health -w json`.
#[derive(Debug, Deserialize)]
struct HealthEntry {
    health: bool,
    #[serde(default)]
    error: Option<String>,
}

/// Parses `etcdctl endpoint health -w json`: healthy, or why not (`Active Alarm(s): NOSPACE`).
pub fn parse_health(json: &str) -> Result<(), String> {
    let entries: Vec<HealthEntry> =
        serde_json::from_str(json.trim()).map_err(|e| format!("unreadable endpoint health ({e})"))?;
    match entries.into_iter().next() {
        Some(HealthEntry { health: true, .. }) => Ok(()),
        Some(HealthEntry { error, .. }) => {
            Err(error.map(|e| e.trim().to_owned()).unwrap_or_else(|| "unhealthy".into()))
        }
        None => Err("the member did not answer its health check".into()),
    }
}

/// An etcd alarm type (etcd's `AlarmType`: 1 NOSPACE, 2 CORRUPT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AlarmKind {
    /// The backend exceeded its quota: the cluster takes only reads and deletes.
    Nospace,
    /// A member's data differs from the others'.
    Corrupt,
    /// A type this kubeforge does not know.
    Other(u32),
}

impl Serialize for AlarmKind {
    /// As etcdctl names it (`NOSPACE`).
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl AlarmKind {
    fn of(n: u32) -> Self {
        match n {
            1 => AlarmKind::Nospace,
            2 => AlarmKind::Corrupt,
            n => AlarmKind::Other(n),
        }
    }
}

impl std::fmt::Display for AlarmKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AlarmKind::Nospace => f.write_str("NOSPACE"),
            AlarmKind::Corrupt => f.write_str("CORRUPT"),
            AlarmKind::Other(n) => write!(f, "alarm type {n}"),
        }
    }
}

/// An active alarm: which member raised it, and what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Alarm {
    /// The member that raised it.
    #[serde(serialize_with = "hex_id")]
    pub member_id: u64,
    /// What it is.
    pub alarm: AlarmKind,
}

#[derive(Debug, Deserialize)]
struct AlarmList {
    #[serde(default)]
    alarms: Vec<RawAlarm>,
}

#[derive(Debug, Deserialize)]
struct RawAlarm {
    #[serde(default, rename = "memberID")]
    member_id: u64,
    #[serde(default)]
    alarm: u32,
}

/// Parses `etcdctl alarm list -w json` (no `alarms` key: none active).
pub fn parse_alarms(json: &str) -> Result<Vec<Alarm>, String> {
    let list: AlarmList =
        serde_json::from_str(json.trim()).map_err(|e| format!("unreadable alarm list ({e})"))?;
    Ok(list
        .alarms
        .into_iter()
        .filter(|a| a.alarm != 0)
        .map(|a| Alarm { member_id: a.member_id, alarm: AlarmKind::of(a.alarm) })
        .collect())
}

/// One member as read on its host.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// The inventory host.
    pub name: String,
    /// Its client URL.
    pub endpoint: String,
    /// Its status; `None` when it did not answer (see `error`).
    pub status: Option<EndpointStatus>,
    /// Its health check passed.
    pub healthy: bool,
    /// Why it is not healthy or could not be read.
    pub error: Option<String>,
    /// The backend quota in bytes (`--quota-backend-bytes`), when known.
    pub quota: Option<u64>,
    /// The alarms this member listed (the cluster's, as it knows them).
    #[serde(skip)]
    pub alarms: Option<Vec<Alarm>>,
}

impl Member {
    /// A member that could not be read at all (its host did not answer).
    pub fn unreachable(name: &str, endpoint: String, why: String) -> Self {
        Member {
            name: name.into(),
            endpoint,
            status: None,
            healthy: false,
            error: Some(format!("unreachable: {why}")),
            quota: None,
            alarms: None,
        }
    }

    /// Parses the output of [`READ`] on member `name`.
    pub fn parse(name: &str, endpoint: String, out: &str) -> Self {
        let section = |tag: &str| -> Vec<&str> {
            out.lines().filter_map(|l| l.strip_prefix(tag).and_then(|r| r.strip_prefix(' '))).collect()
        };
        // etcdctl prints the JSON on one line; its complaints (a log line, `Error: ...`) on others.
        let json =
            |lines: &[&str], open: char| lines.iter().find(|l| l.starts_with(open)).map(|l| l.to_string());
        let why = |lines: &[&str]| {
            lines
                .iter()
                .rev()
                .find(|l| l.starts_with("Error:") || l.starts_with("Failed"))
                .map(|l| l.trim_start_matches("Error:").trim().to_owned())
        };
        let st = section("status");
        let status = match json(&st, '[').map(|j| parse_status(&j)) {
            Some(Ok(s)) => Ok(s),
            // etcdctl's own words (`Failed to get the status of endpoint ... (context deadline exceeded)`)
            // say more than an empty list.
            Some(Err(e)) => Err(why(&st).unwrap_or(e)),
            None => Err(why(&st).unwrap_or_else(|| "the member did not answer its status".into())),
        };
        let he = section("health");
        let health = match json(&he, '[') {
            Some(j) => parse_health(&j),
            None => Err(why(&he).unwrap_or_else(|| "no health answer".into())),
        };
        let alarms = json(&section("alarms"), '{').and_then(|j| parse_alarms(&j).ok());
        let quota = section("quota")
            .first()
            .and_then(|q| q.trim().parse::<f64>().ok())
            .filter(|q| *q > 0.0)
            .map(|q| q as u64)
            .or_else(|| status.as_ref().ok().and_then(|s| s.quota));
        let mut error = None;
        let mut status = match status {
            Ok(s) => Some(s),
            Err(e) => {
                error = Some(format!("does not answer: {e}"));
                None
            }
        };
        if let Some(s) = status.as_mut() {
            s.quota = quota;
        }
        let leads = status.as_ref().is_some_and(|s| s.leader != 0);
        if error.is_none() {
            if let Err(e) = &health {
                error = Some(format!("unhealthy: {e}"));
            } else if !leads {
                error = Some("has no leader".into());
            }
        }
        // Healthy: it answers, knows a leader and passes etcd's own health check.
        let healthy = leads && health.is_ok();
        Member { name: name.into(), endpoint, status, healthy, error, quota, alarms }
    }

    /// Whether the member answers its status with a leader (it serves, even when an alarm makes its health
    /// check fail).
    pub fn answers(&self) -> bool {
        self.status.as_ref().is_some_and(|s| s.leader != 0)
    }
}

/// Every member's reading, in inventory order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reading {
    /// The members read.
    pub members: Vec<Member>,
}

impl Reading {
    /// The active alarms, as any member listed them, each once.
    pub fn alarms(&self) -> Vec<Alarm> {
        let mut all: Vec<Alarm> =
            self.members.iter().filter_map(|m| m.alarms.as_ref()).flatten().copied().collect();
        all.sort();
        all.dedup();
        all
    }

    /// The member name of an etcd member id, when one of the members read has it.
    pub fn name_of(&self, id: u64) -> String {
        self.members
            .iter()
            .find(|m| m.status.as_ref().is_some_and(|s| s.member_id == id))
            .map(|m| m.name.clone())
            .unwrap_or_else(|| format!("member {id:x}"))
    }

    /// The leader's host, as the members that answer agree on it.
    pub fn leader(&self) -> Option<&Member> {
        self.members.iter().find(|m| m.status.as_ref().is_some_and(EndpointStatus::is_leader))
    }

    /// What keeps the cluster from being worked on, each naming its member: one that is unreachable, does
    /// not answer, has no leader or (unless `alarms_expected`, during an alarm recovery) fails its health
    /// check.
    pub fn problems(&self, alarms_expected: bool) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| if alarms_expected { !m.answers() } else { !m.healthy })
            .map(|m| format!("{}: {}", m.name, m.error.as_deref().unwrap_or("unhealthy")))
            .collect()
    }
}

/// Why a member is or is not defragmented.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Choice {
    /// The member.
    pub name: String,
    /// It is defragmented.
    pub defrag: bool,
    /// It leads (it goes last).
    pub leader: bool,
    /// Why, for people.
    pub reason: String,
}

/// The members a defragmentation takes among `selected` (names), in order: every member whose in-use share
/// is below `threshold` (or all with `force`), one at a time, followers in inventory order and the leader
/// last. Members not taken are listed with the reason.
pub fn defrag_plan(reading: &Reading, selected: &[String], threshold: f64, force: bool) -> Vec<Choice> {
    let mut out: Vec<Choice> = Vec::new();
    for m in reading.members.iter().filter(|m| selected.contains(&m.name)) {
        let Some(s) = &m.status else {
            out.push(Choice {
                name: m.name.clone(),
                defrag: false,
                leader: false,
                reason: m.error.clone().unwrap_or_default(),
            });
            continue;
        };
        let ratio = s.in_use_ratio();
        let sizes = format!(
            "{} of {} in use ({:.0}%)",
            crate::plan::human_size(s.db_size_in_use.unwrap_or(s.db_size)),
            crate::plan::human_size(s.db_size),
            ratio * 100.0
        );
        let (defrag, reason) = if force {
            (true, format!("{sizes}; --force"))
        } else if ratio < threshold {
            (true, format!("{sizes}, below the threshold {:.0}%", threshold * 100.0))
        } else {
            (false, format!("{sizes}, not below the threshold {:.0}%: skipped", threshold * 100.0))
        };
        out.push(Choice { name: m.name.clone(), defrag, leader: s.is_leader(), reason });
    }
    // Stable: followers keep their order, the leader moves behind them.
    out.sort_by_key(|c| c.defrag && c.leader);
    out
}

/// The next member to work on among `pending` (in plan order): the first that does not lead now, or the
/// leader when it is the only one left. Leadership can move during a run; the leader stays last.
pub fn next_member<'a>(pending: &'a [String], leader: Option<&str>) -> Option<&'a String> {
    pending.iter().find(|n| Some(n.as_str()) != leader).or_else(|| pending.first())
}

/// The members whose backend is still at or above its quota (after a recovery's defragmentation): a
/// disarmed NOSPACE alarm would be raised again at the next write. Members whose quota is unknown are named
/// too: disarming blind is refused.
pub fn above_quota(reading: &Reading) -> Vec<String> {
    reading
        .members
        .iter()
        .filter_map(|m| {
            let s = m.status.as_ref()?;
            match m.quota {
                Some(q) if s.db_size < q => None,
                Some(q) => Some(format!(
                    "{}: {} is still at or above its quota of {}",
                    m.name,
                    crate::plan::human_size(s.db_size),
                    crate::plan::human_size(q)
                )),
                None => Some(format!("{}: its quota could not be read (metrics on 127.0.0.1:2381)", m.name)),
            }
        })
        .collect()
}
