//! `kubeforge rotate encryption-key`: a new key for encryption at rest, with the API up the whole time and
//! proof from etcd that no value carries the old key any more, as the stages of
//! [`crate::workflow::ROTATE_ENCRYPTION_KEY`] on one [`Session`].
//!
//! The keys and the rotation's record live in the PKI store ([`crate::at_rest`]): the record (old key, new
//! key, step) is written before each step's configuration is rolled out, and the EncryptionConfiguration
//! every path renders (`apply` too) follows it, so a step is rolled out by the apply engine itself: the
//! `control-plane` phase on one control plane at a time, which writes the file, restarts kube-apiserver and
//! waits for its `/readyz`, then a gate (every apiserver ready, every etcd member healthy, read through
//! another control plane). The steps:
//! 1. `read-both`: the old key writes, the new one is listed second: once every apiserver has it, any of them
//!    can read what another writes with the new key;
//! 2. `write-new`: the new key first;
//! 3. `rewrite`: every object of the encrypted resources is read and written back through the API
//!    (`kubectl get -o json | kubectl replace`), one namespace at a time, on one control plane;
//! 4. `prove`: etcd is read over TLS (`etcdctl get --prefix /registry/secrets/`) and every value's prefix
//!    (`k8s:enc:secretbox:v1:<key>:`) counted; any value without the new key's prefix stops the rotation,
//!    naming the objects;
//! 5. `drop-old`: the new key alone; then the store switches to it (the old key kept in
//!    `secrets/retired/`), removing the record last.
//!
//! Resuming: an interrupted or failed run leaves the record; the next `rotate encryption-key` continues that
//! rotation at the step recorded (configurations already on a host converge to 0 changes: no restart). Once
//! a rotation has finished there is no record, and the next run is a new rotation (`kubeforge-3`, ...).
//! A cluster on aescbc moves to secretbox by the same operation: the new key is always secretbox.
//!
//! Users' kubeconfigs, certificates and service-account tokens are not touched: only the apiservers'
//! EncryptionConfiguration and the stored form of the encrypted objects change.

use crate::at_rest::{self, Keys, Rotation, Step};
use crate::model::ClusterModel;
use crate::prompt::Consent;
use crate::session::Session;
use crate::transport::{Command, Transport};
use crate::workflow::ROTATE_ENCRYPTION_KEY as WF;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

mod ca;
mod service_account;
pub use ca::{ca_in, CaChoice};
pub use service_account::service_account_key_in;

/// `kubeforge rotate`.
#[derive(Debug, clap::Subcommand)]
pub enum RotateCommand {
    /// Replace the key that encrypts Secrets at rest (an aescbc cluster moves to secretbox): the new key is
    /// added for reading on every control plane, then made the writing key, every Secret is rewritten
    /// through the API, etcd is read to prove that every value carries the new key, and the old key is
    /// dropped. Control planes change one at a time, each gated on its apiserver's readiness; an
    /// interrupted rotation resumes where it stopped. Users' kubeconfigs are not touched.
    EncryptionKey(EncryptionKeyArgs),
    /// Replace the service-account signing key: the new public key is trusted beside the old one on every
    /// control plane, then the apiservers and controller-managers sign with the new key; the old key stays
    /// trusted until every token it signed has expired (a bound computed from the apiserver's flags, 1h 5m 7s by
    /// default: the run stops and says when; run it again after then), and is then dropped. Control planes
    /// change one at a time, each gated; an interrupted rotation resumes where it stopped. Legacy token
    /// Secrets signed with the old key stop working.
    ServiceAccountKey(ServiceAccountKeyArgs),
    /// Replace the cluster, etcd and front-proxy CAs (or those `--only` names): every trust file and
    /// kubeconfig on every host trusts the old and the new CA, then every leaf is re-issued by the new CA,
    /// then the old CA is distrusted and the store switches to the new ones (the old ones kept in
    /// secrets/retired/). Control planes and etcd members change one at a time, then workers, each gated;
    /// an interrupted rotation resumes where it stopped. Users' kubeconfigs the old cluster CA issued stop
    /// working (their CA data from issue on, their certificates at distrust): the preview names them.
    Ca(CaArgs),
}

/// Arguments of `rotate ca`.
#[derive(Debug, clap::Args)]
pub struct CaArgs {
    /// The inventory file.
    #[arg(short, long)]
    pub inventory: std::path::PathBuf,
    /// The CAs to rotate (default: all three); a rotation in progress goes on with the CAs it records.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "CA,...")]
    pub only: Vec<CaChoice>,
    /// Show the cluster's health, each CA's old and new fingerprint, where a rotation stands, the hosts in
    /// rollout order and the users' kubeconfigs that stop working; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask (without it, the rotation is shown and a terminal is asked; without a terminal it
    /// refuses).
    #[arg(short, long)]
    pub yes: bool,
    /// How long the cluster may take to be healthy again after a host's certificates changed.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub gate_timeout: Duration,
    /// Connection, PKI and cache settings.
    #[command(flatten)]
    pub common: crate::args::ClusterArgs,
}

/// Arguments of `rotate service-account-key`.
#[derive(Debug, clap::Args)]
pub struct ServiceAccountKeyArgs {
    /// The inventory file.
    #[arg(short, long)]
    pub inventory: std::path::PathBuf,
    /// Show the cluster's health, where a rotation stands (and until when the old key must stay trusted)
    /// and the stages that would run; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask (without it, the rotation is shown and a terminal is asked; without a terminal it
    /// refuses).
    #[arg(short, long)]
    pub yes: bool,
    /// How long a control plane may take to be ready again after its keys changed.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub gate_timeout: Duration,
    /// For a leaked key: drop the old key as soon as the new one signs on every control plane, without
    /// waiting for the tokens it signed to expire (also ends a rotation that is waiting). Every token the
    /// old key signed stops working at once: pods get 401 from the API until their kubelets renew their
    /// tokens (within the hour), legacy token Secrets for good.
    #[arg(long)]
    pub drop_old_now: bool,
    /// Connection, PKI and cache settings.
    #[command(flatten)]
    pub common: crate::args::ClusterArgs,
}

/// Arguments of `rotate encryption-key`.
#[derive(Debug, clap::Args)]
pub struct EncryptionKeyArgs {
    /// The inventory file.
    #[arg(short, long)]
    pub inventory: std::path::PathBuf,
    /// Show the cluster's health, the count of Secrets per key in etcd and the stages that would run;
    /// change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask (without it, the rotation is shown and a terminal is asked; without a terminal it
    /// refuses).
    #[arg(short, long)]
    pub yes: bool,
    /// How long a control plane may take to be ready again after its configuration changed.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub gate_timeout: Duration,
    /// Connection, PKI and cache settings.
    #[command(flatten)]
    pub common: crate::args::ClusterArgs,
}

/// Settings of `rotate encryption-key` (connection, PKI and cache settings are the session's).
#[derive(Debug, Clone)]
pub struct RotateOptions {
    /// Preview (`--dry-run`), go ahead (`--yes`), or show then ask.
    pub consent: Consent,
    /// How long a control plane may take to pass its gate.
    pub gate_timeout: Duration,
    /// Between two readings of a gate (tests: none).
    pub poll: Duration,
    /// The time now (tests: a clock they move).
    pub clock: Clock,
    /// `rotate service-account-key --drop-old-now`: no wait before the old key goes.
    pub drop_old_now: bool,
}

/// Where a command reads the time (the service-account rotation's wait): the system clock, or one a test
/// sets.
#[derive(Clone)]
pub struct Clock(std::sync::Arc<dyn Fn() -> std::time::SystemTime + Send + Sync>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Clock(std::sync::Arc::new(std::time::SystemTime::now))
    }

    /// A clock that reads `f`.
    pub fn from_fn(f: impl Fn() -> std::time::SystemTime + Send + Sync + 'static) -> Self {
        Clock(std::sync::Arc::new(f))
    }

    /// The time now.
    pub fn now(&self) -> std::time::SystemTime {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

/// Runs a parsed `rotate` command: flags first, then one session for the whole command.
pub fn run(cmd: RotateCommand) -> Result<i32> {
    match cmd {
        RotateCommand::EncryptionKey(a) => {
            let consent = Consent::from_flags("rotate encryption-key", a.dry_run, a.yes)?;
            let o = a.common.options(&a.inventory)?;
            let session = Session::open(&a.inventory, o)?;
            encryption_key_in(
                &session,
                &RotateOptions {
                    consent,
                    gate_timeout: a.gate_timeout,
                    poll: Duration::from_secs(3),
                    clock: Clock::system(),
                    drop_old_now: false,
                },
            )
        }
        RotateCommand::ServiceAccountKey(a) => {
            let consent = Consent::from_flags("rotate service-account-key", a.dry_run, a.yes)?;
            let o = a.common.options(&a.inventory)?;
            let session = Session::open(&a.inventory, o)?;
            service_account::service_account_key_in(
                &session,
                &RotateOptions {
                    consent,
                    gate_timeout: a.gate_timeout,
                    poll: Duration::from_secs(3),
                    clock: Clock::system(),
                    drop_old_now: a.drop_old_now,
                },
            )
        }
        RotateCommand::Ca(a) => {
            let consent = Consent::from_flags("rotate ca", a.dry_run, a.yes)?;
            let o = a.common.options(&a.inventory)?;
            let session = Session::open(&a.inventory, o)?;
            ca::ca_in(
                &session,
                &RotateOptions {
                    consent,
                    gate_timeout: a.gate_timeout,
                    poll: Duration::from_secs(3),
                    clock: Clock::system(),
                    drop_old_now: false,
                },
                &a.only,
            )
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// What etcd holds

/// How the values of the encrypted resources are stored, read from etcd: per key (`secretbox:kubeforge-2`,
/// or `identity` for values in the clear), the objects' etcd keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Census {
    /// Objects per key label.
    pub by_key: BTreeMap<String, Vec<String>>,
}

impl Census {
    /// Every object counted.
    pub fn total(&self) -> usize {
        self.by_key.values().map(Vec::len).sum()
    }

    /// The objects stored with anything but `key`.
    pub fn not_with(&self, key: &at_rest::EncryptionKey) -> Vec<(&str, &str)> {
        let label = label_of(key);
        self.by_key
            .iter()
            .filter(|(l, _)| **l != label)
            .flat_map(|(l, ks)| ks.iter().map(move |k| (l.as_str(), k.as_str())))
            .collect()
    }

    /// One line per key with its count (`secretbox:kubeforge-1 12`), or `none`.
    pub fn summary(&self) -> String {
        if self.by_key.is_empty() {
            return "no objects".into();
        }
        self.by_key.iter().map(|(l, ks)| format!("{l}: {}", ks.len())).collect::<Vec<_>>().join(", ")
    }
}

/// The census label of the values `key` writes (`secretbox:kubeforge-2`).
pub fn label_of(key: &at_rest::EncryptionKey) -> String {
    format!("{}:{}", key.provider.name(), key.name)
}

/// The label of one stored value: `<provider>:<key name>` from its `k8s:enc:<provider>:v1:<name>:` prefix,
/// `identity` for a value in the clear, `unknown` for an encrypted value whose prefix is cut short.
pub fn classify(value: &[u8]) -> String {
    let Some(rest) = value.strip_prefix(b"k8s:enc:".as_slice()) else { return "identity".into() };
    let mut parts = rest.splitn(4, |b| *b == b':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(provider), Some(b"v1"), Some(name), Some(_)) => {
            format!("{}:{}", String::from_utf8_lossy(provider), String::from_utf8_lossy(name))
        }
        _ => "unknown".into(),
    }
}

/// Parses `etcdctl get --prefix -w json` output (one document per resource) into a census.
pub fn parse_census(out: &str) -> Result<Census> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut census = Census::default();
    let bad = |why: String| Error::msg(format!("reading etcd's values: {why}"), None);
    for doc in serde_json::Deserializer::from_str(out).into_iter::<serde_json::Value>() {
        let doc = doc.map_err(|e| bad(format!("etcdctl's answer is not JSON ({e})")))?;
        for kv in doc["kvs"].as_array().into_iter().flatten() {
            let key =
                kv["key"].as_str().and_then(|k| b64.decode(k).ok()).ok_or_else(|| bad("a key".into()))?;
            let value = b64
                .decode(kv["value"].as_str().unwrap_or_default())
                .map_err(|e| bad(format!("a value: {e}")))?;
            census
                .by_key
                .entry(classify(&value))
                .or_default()
                .push(String::from_utf8_lossy(&key).into_owned());
        }
    }
    Ok(census)
}

/// A failed remote command on `host` as an error that shows its last stderr lines.
fn failed(host: &str, e: crate::exec::StepError, hint: Option<&str>) -> Error {
    let mut text = format!("{host}: {e}");
    if let crate::exec::StepError::Command { output, .. } = &e {
        for l in output.last_stderr_lines(5) {
            text.push_str(&format!("\n  stderr: {l}"));
        }
    }
    Error::msg(text, hint)
}

/// `$1` the etcd client URLs, then one key prefix per resource: `etcdctl get --prefix -w json` of each.
const READ_VALUES: &str = r#"eps=$1; shift
for p in "$@"; do e get "$p" --prefix -w json || exit 1; echo; done"#;

/// Reads how every encrypted resource's values are stored, through `t` (a control plane).
async fn census(model: &ClusterModel, t: &dyn Transport) -> Result<Census> {
    let mut cmd = Command::shell(format!("{}\n{READ_VALUES}", crate::phase::install::ETCDCTL_FN))
        .arg(model.etcd_client_urls());
    for r in at_rest::RESOURCES {
        cmd = cmd.arg(format!("/registry/{r}/"));
    }
    let out = crate::plan::run_checked(t, "read the encrypted values from etcd", &cmd.sudo())
        .await
        .map_err(|e| failed(t.host(), e, None))?;
    parse_census(&out.stdout_str())
}

// ---------------------------------------------------------------------------------------------------------
// The rewrite

/// `$1` a namespace, `$2` a resource: every object of it read and written back (`replace`), which stores
/// it again with the writing key; a conflict (the object changed in between) or a transient API error is
/// retried with a fresh read, five times. Prints the number of objects written (0 for an empty namespace).
pub const REWRITE: &str = r#"ns=$1; res=$2; i=0
k() { kubectl --kubeconfig /etc/kubernetes/admin.conf --request-timeout=60s "$@"; }
while :; do
  out=$(k get "$res" -n "$ns" -o json) && {
    printf '%s' "$out" | grep -q '"items": \[\]' && { echo 0; exit 0; }
    n=$(printf '%s' "$out" | k replace --validate=false -f - | grep -c ' replaced$') && { echo "$n"; exit 0; }
  }
  i=$((i+1)); [ $i -ge 5 ] && exit 1
  sleep 2
done"#;

/// The namespaces that hold objects of `resource`, each with its count.
fn parse_namespaces(out: &str) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for ns in out.lines().map(str::trim).filter(|l| !l.is_empty()) {
        *m.entry(ns.to_owned()).or_insert(0) += 1;
    }
    m
}

// ---------------------------------------------------------------------------------------------------------
// The command

/// A rotation's consent, then its `begin` stage: a dry run says so and ends (`false`: nothing was written);
/// otherwise the terminal is asked `question` when consent is to be asked (a no cancels, nothing written), and
/// the run enters `begin`, from which it writes (`true`).
fn consent_then_begin(
    session: &Session,
    wf: &'static crate::workflow::Workflow,
    consent: Consent,
    question: impl FnOnce() -> String,
) -> Result<bool> {
    match consent {
        Consent::Preview => {
            session.say(format!("{} --dry-run: nothing was changed; run with --yes to rotate\n", wf.command));
            return Ok(false);
        }
        Consent::Ask => {
            session.enter(wf, "confirm");
            if !crate::prompt::ask(&question())? {
                return Err(Error::msg("rotation cancelled, nothing was changed", None));
            }
        }
        Consent::Given => {}
    }
    session.boundary(wf, "begin")?;
    crate::cleanup::writing();
    session.enter(wf, "begin");
    Ok(true)
}

/// The stage that rolls out `step`'s configuration.
fn stage_of(step: Step) -> &'static str {
    match step {
        Step::ReadBoth => "read-both",
        Step::WriteNew => "write-new",
        Step::DropOld => "drop-old",
    }
}

/// A rotation's work on the hosts, shared by `rotate encryption-key`, `rotate service-account-key` and
/// `rotate ca`: health, gates, and a step's files rolled out by the apply engine.
struct Rotator<'a> {
    session: &'a Session,
    model: ClusterModel,
    options: &'a RotateOptions,
    verified: crate::identity::Verified,
    store: crate::pki::store::Store,
    /// The command line, for hints (`rotate encryption-key`).
    command: &'static str,
    /// The files a step may change on a host (anything else stops the rotation until `apply`); an entry
    /// ending in `/` stands for every file under that directory.
    files: &'static [&'static str],
    /// The apply phases that carry those files (`control-plane`); the cluster state's copy is added.
    phases: &'static [&'static str],
    /// How a refusal names what a step may change (`None`: the [`Rotator::files`] themselves).
    material: Option<&'static str>,
}

/// What `rotate encryption-key` changes on a control plane.
const ENCRYPTION_FILES: &[&str] = &["/etc/kubernetes/encryption-config.yaml"];

/// The apply phase that carries the keys the encryption-key and service-account-key rotations change.
const CONTROL_PLANE_PHASE: &[&str] = &["control-plane"];

impl Rotator<'_> {
    /// Whether a step may change `dest` (one of [`Rotator::files`], or under one of its directories).
    fn rotates(&self, dest: &str) -> bool {
        self.files.iter().any(|f| if f.ends_with('/') { dest.starts_with(f) } else { dest == *f })
    }

    fn control_planes(&self) -> Vec<String> {
        self.model.control_planes().map(|h| h.name.clone()).collect()
    }

    /// The control plane that reads health, etcd and the API while `busy` change: another one when there is
    /// one.
    fn api_host(&self, busy: &[String]) -> Result<String> {
        let cps = self.control_planes();
        cps.iter()
            .find(|c| !busy.contains(c))
            .or(cps.first())
            .cloned()
            .ok_or_else(|| Error::msg("the inventory has no control plane", None))
    }

    /// Every apiserver ready, every etcd member healthy (empty = healthy), as `api` sees them.
    async fn problems(&self, api: &str) -> Result<Vec<String>> {
        let t = self.session.transport(api)?;
        let health = crate::upgrade::policy::read_health(&self.model, t.as_ref()).await?;
        let mut p = Vec::new();
        for m in self.model.etcd_members() {
            let url = crate::model::url(m.internal_ip, 2379);
            if health.etcd.get(&url) != Some(&true) {
                p.push(format!("{}: etcd member {url} is not healthy", m.name));
            }
        }
        for cp in self.model.control_planes() {
            if !matches!(health.api.get(&cp.internal_ip.to_string()), Some((true, _))) {
                p.push(format!("{}: kube-apiserver is not ready (/readyz)", cp.name));
            }
        }
        Ok(p)
    }

    /// Waits for [`Rotator::problems`] to be empty, up to the gate timeout, read through a control plane
    /// outside `busy` when there is one.
    async fn gate(&self, busy: &[String]) -> Result<()> {
        let api = self.api_host(busy)?;
        let busy = busy.join(", ");
        let start = Instant::now();
        loop {
            let p = self.problems(&api).await.unwrap_or_else(|e| vec![e.to_string()]);
            if p.is_empty() {
                return Ok(());
            }
            if start.elapsed() >= self.options.gate_timeout {
                return Err(Error::msg(
                    format!(
                        "{busy}: the gate was not passed within {}s: {}",
                        self.options.gate_timeout.as_secs(),
                        p.join("; ")
                    ),
                    Some(format!("the rotation stopped here and is recorded in the store: fix the control plane (`journalctl -u kube-apiserver` on it), then run `kubeforge {}` again to go on", self.command).as_str()),
                ));
            }
            tokio::time::sleep(self.options.poll).await;
        }
    }

    /// The apply engine's [`Rotator::phases`] on `hosts` alone (and the state copy on the control planes),
    /// with the material the store records now. Refuses (before writing) when anything but the rotation's
    /// files would change there: the rotation changes nothing else. Returns whether one of its files
    /// changed.
    async fn converge(&self, hosts: &[String]) -> Result<bool> {
        let session = self.session;
        let mut model = self.model.clone();
        let mut o = session.options.clone();
        o.hosts = Some(hosts.to_vec());
        // With the cluster state's copy on the control planes, which records each phase's checkpoint.
        let mut only: Vec<String> = self.phases.iter().map(|p| p.to_string()).collect();
        only.push(crate::phase::state::ID.into());
        o.only = Some(only);
        o.dry_run = false;
        o.follow_changes = false;
        o.ignore_preflight = vec!["all".into()];
        let (mut material, previous) =
            session.prepare(&mut model, &session.loaded.inventory, &o, None, &self.verified).await?;
        let phases = crate::workflow::apply();
        let planned = crate::apply::plan_workflow(
            &model,
            &mut material,
            &previous,
            &phases,
            &session.transports,
            &session.executor,
        )
        .await?;
        let mut changed = false;
        let mut other: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for pp in planned.summary.plan.phases.iter().filter(|p| self.phases.contains(&p.phase.as_str())) {
            for (h, c) in pp.hosts.iter().filter(|(h, _)| hosts.contains(h)) {
                for f in &c.files {
                    if self.rotates(&f.file.upload.dest) {
                        changed = true;
                    } else if !f.file.upload.dest.starts_with(crate::plan::MARKER_DIR) {
                        // (the phase's converged marker follows its digest)
                        other.entry(h).or_default().push(f.file.upload.dest.clone());
                    }
                }
                other.entry(h).or_default().extend(c.remove_files.iter().cloned());
            }
        }
        other.retain(|_, files| !files.is_empty());
        if !other.is_empty() {
            let (what, beyond) = match self.material {
                Some(m) => ("it differs", m.to_string()),
                None => ("its control plane differs", self.files.join(", ")),
            };
            let each: Vec<String> = other
                .iter()
                .map(|(h, files)| {
                    format!("{h}: {what} from what kubeforge renders beyond {beyond} ({})", files.join(", "))
                })
                .collect();
            return Err(Error::msg(
                format!("{}; the rotation changes nothing else", each.join("; ")),
                Some(format!("run `kubeforge apply` first (`apply --dry-run` shows the differences), then `kubeforge {}` again: the rotation is recorded and goes on", self.command).as_str()),
            ));
        }
        if planned.summary.total_changes() == 0 {
            return Ok(false);
        }
        crate::apply::execute_workflow(
            &model,
            &material,
            &previous,
            &phases,
            &session.transports,
            &session.executor,
            planned,
        )
        .await?;
        Ok(changed)
    }

    /// Rolls out the configuration of `rotation`'s step (recorded first) to every control plane, one at a
    /// time, each gated.
    async fn roll_out(&self, rotation: &Rotation) -> Result<()> {
        let stage = stage_of(rotation.step);
        // An interrupt between two steps stops before the next step is recorded.
        self.session.boundary(&WF, stage)?;
        at_rest::record(&self.store, rotation)?;
        self.session.enter(&WF, stage);
        let keys: Vec<String> = Keys { current: rotation.old.clone(), rotation: Some(rotation.clone()) }
            .rendered()
            .iter()
            .map(|k| k.name.clone())
            .collect();
        eprintln!("[rotate] {stage}: keys {} (the first writes)", keys.join(", "));
        self.each_control_plane(&WF, stage).await
    }

    /// The files of the recorded step, converged on every control plane one at a time, each gated.
    async fn each_control_plane(
        &self,
        wf: &'static crate::workflow::Workflow,
        stage: &'static str,
    ) -> Result<()> {
        let one_at_a_time: Vec<Vec<String>> = self.control_planes().into_iter().map(|cp| vec![cp]).collect();
        self.each_batch(wf, stage, &one_at_a_time).await
    }

    /// The files of the recorded step, converged on each batch of hosts in turn, each batch gated (through
    /// a control plane outside it when there is one).
    async fn each_batch(
        &self,
        wf: &'static crate::workflow::Workflow,
        stage: &'static str,
        batches: &[Vec<String>],
    ) -> Result<()> {
        for batch in batches {
            self.session.boundary(wf, stage)?;
            let clock = Instant::now();
            let cp = batch.join(", ");
            for h in batch {
                crate::cleanup::host_doing(h, format!("{}: {stage}", self.command));
            }
            let changed = self.converge(batch).await?;
            self.gate(batch).await?;
            eprintln!(
                "[rotate] {cp}: {} ({:.1}s)",
                if changed {
                    "configuration written, services restarted, gate passed"
                } else {
                    "already on this configuration"
                },
                clock.elapsed().as_secs_f64()
            );
            for h in batch {
                crate::cleanup::host_doing(h, format!("{}: {stage} done", self.command));
            }
        }
        Ok(())
    }

    /// Every object of every encrypted resource written back through the API, one namespace at a time.
    async fn rewrite(&self) -> Result<usize> {
        let api = self.api_host(&[])?;
        let t = self.session.transport(&api)?;
        let mut total = 0;
        for r in at_rest::RESOURCES {
            let list = crate::lifecycle::kubectl_retrying(&[
                "get",
                r,
                "-A",
                "--request-timeout=60s",
                "-o",
                r#"jsonpath={range .items[*]}{.metadata.namespace}{"\n"}{end}"#,
            ]);
            let out = crate::plan::run_checked(t.as_ref(), &format!("list {r}"), &list)
                .await
                .map_err(|e| failed(&api, e, None))?;
            for (ns, n) in parse_namespaces(&out.stdout_str()) {
                self.session.boundary(&WF, "rewrite")?;
                let clock = Instant::now();
                let cmd = Command::shell(REWRITE).arg(&ns).arg(*r).sudo().timeout(Duration::from_secs(600));
                let out = crate::plan::run_checked(t.as_ref(), &format!("rewrite {r} in {ns}"), &cmd)
                    .await
                    .map_err(|e| {
                        failed(
                            &api,
                            e,
                            Some("the rotation stopped and is recorded: run `kubeforge rotate encryption-key` again to rewrite and prove again"),
                        )
                    })?;
                let written: usize = out.stdout_str().trim().parse().unwrap_or(0);
                eprintln!(
                    "[rotate] rewrite: {ns}: {written} of {n} {r} written back ({:.1}s)",
                    clock.elapsed().as_secs_f64()
                );
                total += written;
            }
        }
        Ok(total)
    }
}

/// `kubeforge rotate encryption-key` in a session (fake transports in tests).
pub fn encryption_key_in(session: &Session, options: &RotateOptions) -> Result<i32> {
    let model = session.model();
    let started = Instant::now();
    let result = session.block_on(run_stages(session, &model, options));
    eprint!("{}", crate::apply::host_stats(&session.transports));
    let said = result?;
    if let Some((before, after, new)) = said {
        session.say(format!(
            "rotate encryption-key: {} now encrypts with {} ({} {})\n  before: {}\n  after:  {}\n  wall time {:.0}s\n",
            model.name,
            new,
            after.total(),
            if after.total() == 1 { "object" } else { "objects" },
            before.summary(),
            after.summary(),
            started.elapsed().as_secs_f64()
        ));
    }
    Ok(0)
}

/// The stages; `Some((census before, census after, new key label))` once a rotation finished.
/// The identity stage every rotation starts with: the control planes (refused when there is none), the
/// store checked against them, or against every host when `every_host` (a rotation that writes to every
/// host; a cluster kubeforge has not installed has no key to rotate), and the store.
pub(super) async fn identity(
    session: &Session,
    model: &ClusterModel,
    wf: &'static crate::workflow::Workflow,
    every_host: bool,
) -> Result<(Vec<String>, crate::identity::Verified, crate::pki::store::Store)> {
    let cps: Vec<String> = model.control_planes().map(|h| h.name.clone()).collect();
    if cps.is_empty() {
        return Err(Error::msg("the inventory has no control plane", None));
    }
    session.enter(wf, "identity");
    // A rotation that writes to every host checks every host's marker first.
    let guarded = crate::apply::guarded_hosts(model, (!every_host).then_some(&cps[..]));
    let verified =
        crate::apply::guard(model, &session.options, &guarded, &session.transports, &session.executor)
            .await?;
    if verified.fresh {
        return Err(Error::msg(
            format!("cluster `{}` is not installed: there is no key to rotate", model.name),
            Some("install it with `kubeforge apply` first"),
        ));
    }
    Ok((cps, verified, crate::pki::store::Store::new(&session.options.pki_root, &model.name)))
}

async fn run_stages(
    session: &Session,
    model: &ClusterModel,
    options: &RotateOptions,
) -> Result<Option<(Census, Census, String)>> {
    let (cps, verified, store) = identity(session, model, &WF, false).await?;
    let keys = at_rest::load_or_create(&store, crate::pki::store::NewKeys::Refused)?;
    let r = Rotator {
        session,
        model: model.clone(),
        options,
        verified,
        store,
        command: WF.command,
        files: ENCRYPTION_FILES,
        phases: CONTROL_PLANE_PHASE,
        material: None,
    };

    session.enter(&WF, "health");
    let clock = Instant::now();
    let api = r.api_host(&[])?;
    let problems = r.problems(&api).await?;
    if !problems.is_empty() {
        return Err(Error::msg(
            format!("the cluster is not healthy, nothing was changed: {}", problems.join("; ")),
            Some("fix these first (`kubeforge status` shows the details); a rotation restarts every apiserver and starts from a healthy cluster"),
        ));
    }
    let before = census(model, r.session.transport(&api)?.as_ref()).await?;
    eprintln!(
        "[rotate] healthy; etcd holds {} encrypted-resource value(s): {} ({:.1}s)",
        before.total(),
        before.summary(),
        clock.elapsed().as_secs_f64()
    );

    session.enter(&WF, "preview");
    let rotation = at_rest::plan_rotation(&r.store, &keys)?;
    let resuming = keys.rotation.is_some();
    let steps: Vec<&str> = [Step::ReadBoth, Step::WriteNew, Step::DropOld]
        .into_iter()
        .filter(|s| *s >= rotation.step)
        .map(|s| match s {
            Step::WriteNew => "write-new, rewrite, prove",
            s => stage_of(s),
        })
        .collect();
    session.say(format!(
        "rotate encryption-key on {}: {} {} → {} (secretbox){}\n  stages: {}, finish\n  control planes, one at a time: {}\n  objects in etcd now: {}\n",
        model.name,
        if resuming { "resuming the rotation of" } else { "key" },
        label_of(&rotation.old),
        rotation.new.name,
        if resuming { format!(" at {}", rotation.step.name()) } else { String::new() },
        steps.join(", "),
        cps.join(", "),
        before.summary()
    ));
    let question = || {
        format!(
            "Rotate the encryption key of cluster `{}` (every apiserver restarts three times, one at a time)?",
            model.name
        )
    };
    if !consent_then_begin(session, &WF, options.consent, question)? {
        return Ok(None);
    }
    let mut rotation = if resuming { rotation } else { at_rest::begin(&r.store, &keys)? };
    eprintln!(
        "[rotate] {} key {} recorded beside {} in {}",
        if resuming { "pending" } else { "new" },
        rotation.new.name,
        rotation.old.name,
        r.store.root().join(at_rest::ROTATION_FILE).display()
    );
    if rotation.step == Step::ReadBoth {
        r.roll_out(&rotation).await?;
        rotation.step = Step::WriteNew;
    }
    if rotation.step == Step::WriteNew {
        r.roll_out(&rotation).await?;
        session.boundary(&WF, "rewrite")?;
        session.enter(&WF, "rewrite");
        let clock = Instant::now();
        let n = r.rewrite().await?;
        eprintln!("[rotate] rewrite: {n} object(s) written back ({:.1}s)", clock.elapsed().as_secs_f64());
        session.boundary(&WF, "prove")?;
        session.enter(&WF, "prove");
        let after = census(model, r.session.transport(&api)?.as_ref()).await?;
        let left = after.not_with(&rotation.new);
        if !left.is_empty() {
            let mut by: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for (l, k) in &left {
                by.entry(l).or_default().push(k);
            }
            let detail: Vec<String> = by
                .iter()
                .map(|(l, ks)| {
                    let shown: Vec<&str> = ks.iter().take(5).copied().collect();
                    format!(
                        "{} with {l} ({}{})",
                        ks.len(),
                        shown.join(", "),
                        if ks.len() > 5 { ", ..." } else { "" }
                    )
                })
                .collect();
            return Err(Error::msg(
                format!(
                    "not proven: {} of {} value(s) in etcd do not carry the new key {}: {}; the old key stays",
                    left.len(),
                    after.total(),
                    label_of(&rotation.new),
                    detail.join("; ")
                ),
                Some("an object that cannot be written back (an admission webhook, a failing apiserver) keeps its old value: fix that, then run `kubeforge rotate encryption-key` again (it rewrites and proves again)"),
            ));
        }
        eprintln!("[rotate] proven: all {} value(s) carry {}", after.total(), label_of(&rotation.new));
        rotation.step = Step::DropOld;
    }
    r.roll_out(&rotation).await?;
    session.boundary(&WF, "finish")?;
    session.enter(&WF, "finish");
    at_rest::finish(&r.store, &rotation)?;
    eprintln!(
        "[rotate] the store's key is now {}; {} kept in {}/{}.json",
        rotation.new.name,
        rotation.old.name,
        at_rest::RETIRED_DIR,
        rotation.old.name
    );
    let after = census(model, r.session.transport(&api)?.as_ref()).await?;
    Ok(Some((before, after, label_of(&rotation.new))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_counted_by_the_key_their_prefix_names() {
        assert_eq!(classify(b"k8s:enc:secretbox:v1:kubeforge-2:\x00\x01:"), "secretbox:kubeforge-2");
        assert_eq!(classify(b"k8s:enc:aescbc:v1:kubeforge-1:xyz"), "aescbc:kubeforge-1");
        assert_eq!(classify(b"{\"kind\":\"Secret\"}"), "identity");
        assert_eq!(classify(b"k8s:enc:secretbox:v1:cut"), "unknown");
        use base64::Engine;
        let b = |s: &[u8]| base64::engine::general_purpose::STANDARD.encode(s);
        let out = format!(
            "{{\"header\":{{}},\"kvs\":[{{\"key\":\"{}\",\"value\":\"{}\"}},{{\"key\":\"{}\",\"value\":\"{}\"}}],\"count\":2}}\n{{\"header\":{{}}}}\n",
            b(b"/registry/secrets/default/a"),
            b(b"k8s:enc:secretbox:v1:kubeforge-1:zz"),
            b(b"/registry/secrets/kube-system/b"),
            b(b"k8s:enc:secretbox:v1:kubeforge-2:zz"),
        );
        let c = parse_census(&out).unwrap();
        assert_eq!(c.total(), 2);
        assert_eq!(c.summary(), "secretbox:kubeforge-1: 1, secretbox:kubeforge-2: 1");
        let new = at_rest::EncryptionKey {
            provider: at_rest::Provider::Secretbox,
            name: "kubeforge-2".into(),
            secret: String::new(),
        };
        assert_eq!(c.not_with(&new), [("secretbox:kubeforge-1", "/registry/secrets/default/a")]);
        assert!(parse_census("not json").is_err());
        assert_eq!(parse_census("").unwrap().summary(), "no objects");
    }

    #[test]
    fn namespaces_are_counted_from_the_list() {
        let m = parse_namespaces("default\nkube-system\ndefault\n\n");
        assert_eq!(
            m.into_iter().collect::<Vec<_>>(),
            [("default".to_string(), 2), ("kube-system".to_string(), 1)]
        );
    }
}
