//! The cluster's identity, and the guard that keeps one cluster's material off another's hosts.
//!
//! Every host kubeforge installs carries a marker, [`MARKER_PATH`]: the cluster's name, a cluster UID made
//! once, and the sha256 fingerprint of the cluster CA. Before a command writes anything, locally or on a
//! host, it reads each host's marker (and, for hosts installed before markers existed or by another tool,
//! the CA at `/etc/kubernetes/pki/ca.crt`) in one round trip per host, and [`decide`] compares what it
//! found with the local store:
//!
//! - a host of another cluster, or whose CA is not the store's, is refused, naming both fingerprints;
//! - an empty store in front of a live cluster is refused: new CAs, a new service-account key and a new
//!   encryption key would replace the cluster's (the store is elsewhere, or must be restored);
//! - new keys are made only when the store has none of its own **and** the cluster is new (no host carries
//!   anything, and the state file records no installed host): [`Verified::fresh`].
//!
//! The decision is a pure function of what was read, so every case is a unit test.

use crate::exec::{Executor, HostPlan, Step};
use crate::transport::{Command, Transport};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Where the marker lives on every host kubeforge installs.
pub const MARKER_PATH: &str = "/var/lib/kubeforge/cluster.json";
/// The cluster CA as kubeforge (and kubeadm) place it on control planes and nodes.
pub const HOST_CA_PATH: &str = "/etc/kubernetes/pki/ca.crt";

/// What a marker says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Marker {
    /// The cluster's name.
    pub cluster: String,
    /// The cluster UID (random, made once when the cluster is first installed).
    pub uid: String,
    /// The cluster CA's fingerprint.
    pub ca_sha256: Fingerprint,
}

impl Marker {
    /// The file content: one line of JSON.
    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("a marker serializes");
        v.push(b'\n');
        v
    }
}

/// The sha256 of a certificate's DER encoding, written `sha256:<hex>` (what `openssl x509 -fingerprint
/// -sha256` shows, without colons).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fingerprint(pub String);

impl Fingerprint {
    /// The fingerprint of the first certificate in `pem`, or `None` when there is none.
    pub fn of_pem(pem: &[u8]) -> Option<Fingerprint> {
        use sha2::Digest;
        let (_, p) = x509_parser::pem::parse_x509_pem(pem).ok()?;
        if p.label != "CERTIFICATE" {
            return None;
        }
        Some(Fingerprint(format!("sha256:{}", hex::encode(sha2::Sha256::digest(&p.contents)))))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the local store says about the cluster.
#[derive(Debug, Clone, Default)]
pub struct Local {
    /// The cluster name (the inventory's).
    pub cluster: String,
    /// The store directory (for messages).
    pub store: String,
    /// The store's CA fingerprint; `None` when the store has no `ca.crt`.
    pub ca: Option<Fingerprint>,
    /// The UID the state file records.
    pub uid: Option<String>,
    /// Hosts the state file records as installed.
    pub installed: Vec<String>,
    /// While a CA rotation runs: the old and the new cluster CA's fingerprints, which a host may carry.
    pub rotating: Vec<Fingerprint>,
}

impl Local {
    /// Whether a host's CA fingerprint is this store's (or one a rotation in progress moves between).
    fn accepts(&self, ca: &Fingerprint, host: &Fingerprint) -> bool {
        ca == host || self.rotating.contains(host)
    }
}

impl Local {
    /// Reads the store `<pki_root>/<cluster>/` and its state file. A `ca.crt` that cannot be read or parsed
    /// is an error, never "no CA".
    pub fn read(pki_root: &Path, cluster: &str) -> Result<Local> {
        let store = pki_root.join(cluster);
        let crt = store.join("ca.crt");
        let ca = match std::fs::read(&crt) {
            Ok(pem) => Some(Fingerprint::of_pem(&pem).ok_or_else(|| {
                Error::msg(
                    format!("{} is not a PEM certificate", crt.display()),
                    Some("restore the store from a backup (`kubeforge restore`); never re-create a live cluster's CA"),
                )
            })?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(format!("reading {}", crt.display()), e)),
        };
        let state = crate::state::ClusterState::load(pki_root, cluster)?;
        let rotating = match ca {
            Some(_) => crate::pki::store::Store::new(pki_root, cluster)
                .ca_rotation()?
                .map(|r| r.cluster_fingerprints().into_iter().map(Fingerprint).collect())
                .unwrap_or_default(),
            None => Vec::new(),
        };
        Ok(Local {
            cluster: cluster.to_owned(),
            store: store.display().to_string(),
            ca,
            uid: state.uid.clone(),
            installed: state.hosts.keys().cloned().collect(),
            rotating,
        })
    }
}

/// What one host carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Remote {
    /// Its marker, when it has one (`Err` when the file is there but is not a marker).
    pub marker: Option<std::result::Result<Marker, String>>,
    /// The fingerprint of `/etc/kubernetes/pki/ca.crt`, when there is one.
    pub ca: Option<Fingerprint>,
}

impl Remote {
    /// Whether the host carries anything of a cluster.
    pub fn is_empty(&self) -> bool {
        self.marker.is_none() && self.ca.is_none()
    }
}

/// The outcome of a passed check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The cluster UID to write in markers (the recorded one, the hosts' one, or a new one).
    pub uid: String,
    /// The cluster is new: no host carries anything and the state records no installed host, so missing
    /// keys may be created.
    pub fresh: bool,
    /// Hosts that carry the store's CA but no marker yet (installed before markers, or the marker was
    /// lost): the run writes theirs.
    pub adopted: Vec<String>,
}

impl Verified {
    /// For tests and offline commands that work on a store alone: a new cluster, a new UID.
    pub fn offline_new() -> Verified {
        Verified { uid: new_uid(), fresh: true, adopted: Vec::new() }
    }
}

/// For commands that only read (`status`): what the local store alone allows, without asking the hosts;
/// `None` when the store knows nothing of the cluster (no CA, no installed host).
pub fn local_only(local: &Local) -> Option<Verified> {
    if local.ca.is_none() && local.installed.is_empty() {
        return None;
    }
    Some(Verified {
        uid: local.uid.clone().unwrap_or_else(|| "unrecorded".into()),
        fresh: false,
        adopted: Vec::new(),
    })
}

/// A new random cluster UID (a v4 UUID).
pub fn new_uid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// Why a run was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// A host belongs to a cluster of another name.
    OtherCluster {
        /// The host.
        host: String,
        /// The cluster its marker names.
        cluster: String,
    },
    /// A host's cluster CA is not the store's.
    OtherCa {
        /// The host.
        host: String,
        /// The host's CA fingerprint.
        host_ca: Fingerprint,
        /// The store's.
        store_ca: Fingerprint,
    },
    /// A host's marker carries another cluster UID (a cluster of the same name and CA re-created).
    OtherUid {
        /// The host.
        host: String,
        /// The host's UID.
        host_uid: String,
        /// The recorded one.
        store_uid: String,
    },
    /// The store has no CA, but hosts carry a cluster.
    EmptyStoreLiveCluster {
        /// The hosts, each with the CA fingerprint it carries (when known).
        hosts: Vec<(String, Option<Fingerprint>)>,
    },
    /// The state file records installed hosts, but the store has no CA.
    StoreLost {
        /// The hosts the state records.
        installed: Vec<String>,
    },
    /// A host's marker file is not a marker.
    BadMarker {
        /// The host.
        host: String,
        /// Why.
        why: String,
    },
    /// Hosts disagree about the cluster UID.
    UidsDisagree {
        /// Host and UID.
        hosts: Vec<(String, String)>,
    },
}

impl Refusal {
    fn text(&self, local: &Local) -> (String, String) {
        let store = &local.store;
        let fix_store =
            "point --pki-dir at this cluster's store (the default is `pki/` beside the inventory \
             file), or bring it back from a backup (`kubeforge restore --from ARCHIVE`); never let a store \
             of other keys replace a live cluster's"
                .to_string();
        match self {
            Refusal::OtherCluster { host, cluster } => (
                format!(
                    "host `{host}` belongs to cluster `{cluster}` (its {MARKER_PATH}), not `{}`",
                    local.cluster
                ),
                "check the host's address in the inventory: kubeforge never touches another cluster's hosts"
                    .into(),
            ),
            Refusal::OtherCa { host, host_ca, store_ca } => (
                format!(
                    "host `{host}` runs a cluster whose CA is {host_ca}, but the store {store} holds CA \
                     {store_ca}: refusing to replace the cluster's CA"
                ),
                fix_store,
            ),
            Refusal::OtherUid { host, host_uid, store_uid } => (
                format!(
                    "host `{host}` carries cluster UID {host_uid}, but the state in {store} records \
                     {store_uid}: it belongs to another installation of `{}`",
                    local.cluster
                ),
                fix_store,
            ),
            Refusal::EmptyStoreLiveCluster { hosts } => {
                // Hosts grouped by the CA they carry: `a`, `b` (CA sha256:...).
                let mut by_ca: BTreeMap<Option<&Fingerprint>, Vec<String>> = BTreeMap::new();
                for (h, ca) in hosts {
                    by_ca.entry(ca.as_ref()).or_default().push(format!("`{h}`"));
                }
                let named = by_ca
                    .iter()
                    .map(|(ca, hs)| match ca {
                        Some(ca) => format!("{} (CA {ca})", hs.join(", ")),
                        None => hs.join(", "),
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                (
                    format!(
                        "the store {store} has no CA, but {named} already run{} cluster `{}`: refusing to create \
                         new CAs, service-account and encryption keys in front of a live cluster",
                        if hosts.len() == 1 { "s" } else { "" },
                        local.cluster
                    ),
                    fix_store,
                )
            }
            Refusal::StoreLost { installed } => (
                format!(
                    "the state in {store} records installed hosts ({}), but the store has no CA: the \
                     cluster's keys are missing, and new ones would lock every host out",
                    installed.join(", ")
                ),
                fix_store,
            ),
            Refusal::BadMarker { host, why } => (
                format!("host `{host}`: {MARKER_PATH} is not a kubeforge marker ({why})"),
                "check what wrote that file; kubeforge does not overwrite it".into(),
            ),
            Refusal::UidsDisagree { hosts } => (
                format!(
                    "the hosts carry different cluster UIDs: {}",
                    hosts.iter().map(|(h, u)| format!("{h} {u}")).collect::<Vec<_>>().join(", ")
                ),
                "hosts of two installations are listed in one inventory; remove the foreign ones".into(),
            ),
        }
    }
}

/// Compares the local store with what the hosts carry. Hosts with nothing are new hosts.
pub fn decide(local: &Local, remotes: &[(String, Remote)]) -> std::result::Result<Verified, Vec<Refusal>> {
    let mut refusals = Vec::new();
    let mut uids: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut adopted = Vec::new();
    let mut live: Vec<(String, Option<Fingerprint>)> = Vec::new();
    for (host, r) in remotes {
        match &r.marker {
            Some(Err(why)) => refusals.push(Refusal::BadMarker { host: host.clone(), why: why.clone() }),
            Some(Ok(m)) => {
                if m.cluster != local.cluster {
                    refusals.push(Refusal::OtherCluster { host: host.clone(), cluster: m.cluster.clone() });
                    continue;
                }
                live.push((host.clone(), Some(m.ca_sha256.clone())));
                if let Some(ca) = &local.ca {
                    if !local.accepts(ca, &m.ca_sha256) {
                        refusals.push(Refusal::OtherCa {
                            host: host.clone(),
                            host_ca: m.ca_sha256.clone(),
                            store_ca: ca.clone(),
                        });
                        continue;
                    }
                }
                if let Some(uid) = &local.uid {
                    if *uid != m.uid {
                        refusals.push(Refusal::OtherUid {
                            host: host.clone(),
                            host_uid: m.uid.clone(),
                            store_uid: uid.clone(),
                        });
                        continue;
                    }
                }
                uids.entry(m.uid.clone()).or_default().push(host.clone());
            }
            None => {
                let Some(host_ca) = &r.ca else { continue };
                live.push((host.clone(), Some(host_ca.clone())));
                match &local.ca {
                    Some(ca) if local.accepts(ca, host_ca) => adopted.push(host.clone()),
                    Some(ca) => refusals.push(Refusal::OtherCa {
                        host: host.clone(),
                        host_ca: host_ca.clone(),
                        store_ca: ca.clone(),
                    }),
                    None => {}
                }
            }
        }
    }
    if local.ca.is_none() {
        if !live.is_empty() {
            refusals.retain(|r| !matches!(r, Refusal::OtherCa { .. } | Refusal::OtherUid { .. }));
            refusals.push(Refusal::EmptyStoreLiveCluster { hosts: live.clone() });
        } else if !local.installed.is_empty() {
            refusals.push(Refusal::StoreLost { installed: local.installed.clone() });
        }
    }
    if uids.len() > 1 && local.uid.is_none() {
        refusals.push(Refusal::UidsDisagree {
            hosts: uids.iter().flat_map(|(u, hs)| hs.iter().map(move |h| (h.clone(), u.clone()))).collect(),
        });
    }
    if !refusals.is_empty() {
        return Err(refusals);
    }
    let uid = local.uid.clone().or_else(|| uids.keys().next().cloned()).unwrap_or_else(new_uid);
    Ok(Verified { uid, fresh: live.is_empty() && local.installed.is_empty(), adopted })
}

/// The error for refusals: every refusal on its own line, the fix of the first.
pub fn refusal_error(local: &Local, refusals: &[Refusal]) -> Error {
    let texts: Vec<(String, String)> = refusals.iter().map(|r| r.text(local)).collect();
    let message = if texts.len() == 1 {
        texts[0].0.clone()
    } else {
        format!(
            "refusing to touch the cluster:\n  {}",
            texts.iter().map(|t| t.0.as_str()).collect::<Vec<_>>().join("\n  ")
        )
    };
    Error::msg(message, Some(&texts[0].1))
}

/// One round trip: the marker, then the CA, each between delimiter lines.
const PROBE: &str = r#"echo '--- marker'
[ -f "$1" ] && cat -- "$1"
echo; echo '--- ca'
[ -f "$2" ] && cat -- "$2"
echo; echo '--- end'"#;

/// The probe command.
pub fn probe_command() -> Command {
    Command::shell(PROBE).arg(MARKER_PATH).arg(HOST_CA_PATH).sudo()
}

/// Parses the probe's output.
pub fn parse_probe(out: &str) -> Remote {
    let section = |start: &str, end: &str| -> Option<String> {
        let a = out.find(start)? + start.len();
        let b = a + out[a..].find(end)?;
        let s = out[a..b].trim();
        (!s.is_empty()).then(|| s.to_owned())
    };
    let marker = section("--- marker\n", "\n--- ca").map(|m| {
        serde_json::from_str::<Marker>(&m).map_err(|e| format!("{e}; it holds {:?}", truncate(&m, 80)))
    });
    let ca = section("--- ca\n", "\n--- end").and_then(|pem| Fingerprint::of_pem(pem.as_bytes()));
    Remote { marker, ca }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}...", s.chars().take(n).collect::<String>())
    }
}

/// Reads every host in `hosts` (one round trip each, `--concurrency` at a time) and decides. A host that
/// cannot be read fails the run: kubeforge does not write where it could not look.
pub async fn check(
    local: &Local,
    hosts: &[String],
    transports: &BTreeMap<String, Arc<dyn Transport>>,
    executor: &Executor,
) -> Result<(Verified, Vec<(String, Remote)>)> {
    let found = read_hosts(hosts, transports, executor).await?;
    let verified = decide(local, &found).map_err(|r| refusal_error(local, &r))?;
    Ok((verified, found))
}

/// Reads what every host in `hosts` carries (one round trip each, `--concurrency` at a time), sorted by
/// host. A host that cannot be read fails the call.
pub async fn read_hosts(
    hosts: &[String],
    transports: &BTreeMap<String, Arc<dyn Transport>>,
    executor: &Executor,
) -> Result<Vec<(String, Remote)>> {
    let found: Arc<Mutex<Vec<(String, Remote)>>> = Default::default();
    let mut plans = Vec::new();
    for host in hosts {
        let t = transports
            .get(host)
            .cloned()
            .ok_or_else(|| Error::msg(format!("no connection for host {host}"), None))?;
        let (out, name) = (found.clone(), host.clone());
        let step = Step::custom("read the cluster marker", move |t: &dyn Transport| {
            Box::pin(async move {
                let o = crate::plan::run_checked(t, "read the cluster marker", &probe_command()).await?;
                out.lock().expect("lock").push((name, parse_probe(&o.stdout_str())));
                Ok(false)
            })
        });
        plans.push(HostPlan { transport: t, steps: vec![step] });
    }
    if !plans.is_empty() {
        let report = executor.run("cluster-check", plans).await;
        if !report.failures.is_empty() || report.interrupted {
            return Err(report.into_result().expect_err("hosts failed").into());
        }
    }
    let mut found = found.lock().expect("lock").clone();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(c: char) -> Fingerprint {
        Fingerprint(format!("sha256:{}", c.to_string().repeat(64)))
    }
    fn local(ca: Option<char>, uid: Option<&str>, installed: &[&str]) -> Local {
        Local {
            cluster: "prod".into(),
            store: "inv/pki/prod".into(),
            ca: ca.map(fp),
            uid: uid.map(str::to_owned),
            installed: installed.iter().map(|s| s.to_string()).collect(),
            rotating: Vec::new(),
        }
    }
    fn marked(cluster: &str, uid: &str, ca: char) -> Remote {
        Remote {
            marker: Some(Ok(Marker { cluster: cluster.into(), uid: uid.into(), ca_sha256: fp(ca) })),
            ca: Some(fp(ca)),
        }
    }
    fn hosts(r: &[(&str, Remote)]) -> Vec<(String, Remote)> {
        r.iter().map(|(h, r)| (h.to_string(), r.clone())).collect()
    }

    /// During a CA rotation the hosts carry the old or the new cluster CA (markers and `ca.crt` move at
    /// `issue`): both are this cluster's; any other CA is still refused.
    #[test]
    fn a_ca_rotation_in_progress_accepts_its_old_and_new_ca_and_nothing_else() {
        let rotating =
            Local { rotating: vec![fp('a'), fp('b')], ..local(Some('a'), Some("u1"), &["n1", "n2"]) };
        let v = decide(
            &rotating,
            &hosts(&[("n1", marked("prod", "u1", 'a')), ("n2", marked("prod", "u1", 'b'))]),
        )
        .unwrap();
        assert_eq!(v.uid, "u1");
        let unmarked = Remote { marker: None, ca: Some(fp('b')) };
        assert_eq!(decide(&rotating, &hosts(&[("n3", unmarked)])).unwrap().adopted, ["n3"]);
        let r = decide(&rotating, &hosts(&[("n1", marked("prod", "u1", 'c'))])).unwrap_err();
        assert!(matches!(r[0], Refusal::OtherCa { .. }), "{r:?}");
        let plain = local(Some('a'), Some("u1"), &["n1"]);
        assert!(
            decide(&plain, &hosts(&[("n1", marked("prod", "u1", 'b'))])).is_err(),
            "no rotation: refused"
        );
    }

    #[test]
    fn a_new_store_in_front_of_new_hosts_may_make_keys() {
        let v = decide(&local(None, None, &[]), &hosts(&[("a", Remote::default())])).unwrap();
        assert!(v.fresh);
        assert_eq!(v.uid.len(), 36);
    }

    #[test]
    fn an_empty_store_in_front_of_a_live_cluster_is_refused_naming_hosts_and_ca() {
        let r = decide(&local(None, None, &[]), &hosts(&[("a", marked("prod", "u1", 'a'))])).unwrap_err();
        assert_eq!(r, vec![Refusal::EmptyStoreLiveCluster { hosts: vec![("a".into(), Some(fp('a')))] }]);
        let e = refusal_error(&local(None, None, &[]), &r).to_string();
        assert!(e.contains(&fp('a').0) && e.contains("inv/pki/prod") && e.contains("`a`"), "{e}");
        // A CA without a marker (a cluster installed before markers, or by another tool) counts too.
        let legacy = Remote { marker: None, ca: Some(fp('b')) };
        assert!(decide(&local(None, None, &[]), &hosts(&[("a", legacy)])).is_err());
    }

    #[test]
    fn a_store_whose_state_records_hosts_but_lost_its_ca_is_refused() {
        let r = decide(&local(None, None, &["a"]), &hosts(&[("a", Remote::default())])).unwrap_err();
        assert_eq!(r, vec![Refusal::StoreLost { installed: vec!["a".into()] }]);
    }

    #[test]
    fn another_ca_another_uid_or_another_cluster_is_refused() {
        let l = local(Some('a'), Some("u1"), &["a"]);
        let r = decide(&l, &hosts(&[("a", marked("prod", "u1", 'b'))])).unwrap_err();
        assert!(matches!(&r[0], Refusal::OtherCa { host, .. } if host == "a"));
        let e = refusal_error(&l, &r).to_string();
        assert!(e.contains(&fp('a').0) && e.contains(&fp('b').0), "both fingerprints: {e}");
        let r = decide(&l, &hosts(&[("a", marked("prod", "u2", 'a'))])).unwrap_err();
        assert!(matches!(&r[0], Refusal::OtherUid { .. }));
        let r = decide(&l, &hosts(&[("a", marked("test", "u1", 'a'))])).unwrap_err();
        assert!(matches!(&r[0], Refusal::OtherCluster { cluster, .. } if cluster == "test"));
    }

    #[test]
    fn matching_hosts_pass_and_unmarked_hosts_with_the_stores_ca_are_adopted() {
        let l = local(Some('a'), Some("u1"), &["a", "b"]);
        let legacy = Remote { marker: None, ca: Some(fp('a')) };
        let v =
            decide(&l, &hosts(&[("a", marked("prod", "u1", 'a')), ("b", legacy), ("c", Remote::default())]))
                .unwrap();
        assert_eq!(v, Verified { uid: "u1".into(), fresh: false, adopted: vec!["b".into()] });
        // A store without a recorded UID takes the hosts' UID.
        let v = decide(&local(Some('a'), None, &[]), &hosts(&[("a", marked("prod", "u9", 'a'))])).unwrap();
        assert_eq!(v.uid, "u9");
        assert!(!v.fresh);
        // Certificates generated ahead of the first apply: the cluster is still new.
        assert!(decide(&local(Some('a'), None, &[]), &hosts(&[("a", Remote::default())])).unwrap().fresh);
    }

    #[test]
    fn the_probe_output_is_parsed_and_a_foreign_file_is_not_a_marker() {
        let m = Marker { cluster: "prod".into(), uid: "u1".into(), ca_sha256: fp('a') };
        let out = format!("--- marker\n{}\n--- ca\n\n--- end\n", String::from_utf8(m.to_json()).unwrap());
        assert_eq!(parse_probe(&out), Remote { marker: Some(Ok(m)), ca: None });
        let r = parse_probe("--- marker\nhello\n\n--- ca\n\n--- end\n");
        assert!(matches!(r.marker, Some(Err(_))));
        assert!(parse_probe("--- marker\n\n--- ca\n\n--- end\n").is_empty());
    }
}
