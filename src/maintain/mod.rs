//! `kubeforge maintain`: rolling host maintenance (issue #32). Per step, in the upgrade's order (etcd-only
//! members, control planes one at a time, then workers in batches): cordon, drain through the eviction API,
//! hand etcd leadership away, optionally upgrade the OS packages, reboot when required (or always), wait for
//! SSH with a new boot id and the host's services, gate on the apiserver, the etcd member and the Node, then
//! uncordon and wait for the workloads. A host that fails stops the run there, the others untouched; the
//! hosts done are recorded in the cluster state ([`crate::state::Maintenance`]) so a re-run with the same
//! settings resumes. The stages are [`crate::workflow::MAINTAIN`].

use crate::disrupt::Disruption;
use crate::model::ClusterModel;
use crate::prompt::Consent;
use crate::session::Session;
use crate::state::{ClusterState, Maintenance};
use crate::transport::{Command, Transport};
use crate::upgrade::policy::{self, HostFacts};
use crate::upgrade::{Batch, PlannedStep, StepKind};
use crate::workflow::MAINTAIN;
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// When a host reboots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum Reboot {
    /// When the host says it needs one (`/var/run/reboot-required`, `needs-restarting -r`).
    #[default]
    Auto,
    /// Every selected host (kernel settings, firmware, a test of the cluster's resilience).
    Always,
    /// Never (a host that needs one is named in the report).
    Never,
}

impl Reboot {
    fn name(self) -> &'static str {
        match self {
            Reboot::Auto => "auto",
            Reboot::Always => "always",
            Reboot::Never => "never",
        }
    }
}

/// Arguments of `kubeforge maintain`.
#[derive(Debug, clap::Args)]
pub struct MaintainArgs {
    /// The inventory file.
    #[arg(short, long)]
    pub inventory: PathBuf,
    /// Maintain these hosts only: host names, roles (`@worker` or `role=worker`) or `all`, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub hosts: Option<Vec<String>>,
    /// Upgrade the OS packages (apt-get upgrade or dnf upgrade; the plan lists them).
    #[arg(long)]
    pub patch: bool,
    /// Reboot when the host requires it (`auto`), every host (`always`), or never.
    #[arg(long, value_enum, default_value_t)]
    pub reboot: Reboot,
    /// Workers maintained at once: a count (`2`) or a share of the workers (`20%`).
    #[arg(long, default_value = "1")]
    pub batch: Batch,
    /// How long draining one node may take.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// How long a host may take to answer SSH again after its reboot, with its services healthy.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub reboot_timeout: Duration,
    /// How long a host may take to pass its health gate (apiserver, etcd member, Node Ready).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub gate_timeout: Duration,
    /// Show what would be done per host; change nothing (package lists are not refreshed).
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask (without it, the plan is shown and a terminal is asked; without a terminal it refuses).
    #[arg(short, long)]
    pub yes: bool,
    /// Connection, PKI and cache settings.
    #[command(flatten)]
    pub common: crate::args::ClusterArgs,
}

/// Settings of a maintenance run (the connection, PKI and cache settings are the session's).
#[derive(Debug, Clone)]
pub struct MaintainOptions {
    /// The selected hosts (`None`: every host).
    pub hosts: Option<Vec<String>>,
    /// Upgrade the OS packages.
    pub patch: bool,
    /// When to reboot.
    pub reboot: Reboot,
    /// Worker batch size.
    pub batch: Batch,
    /// Preview, go ahead, or ask.
    pub consent: Consent,
    /// Drain limit per node (and the workloads' return).
    pub drain_timeout: Duration,
    /// Limit for a host to come back from its reboot with its services healthy.
    pub reboot_timeout: Duration,
    /// Limit of a host's health gate.
    pub gate_timeout: Duration,
    /// Between two readings of a gate (tests: none).
    pub poll: Duration,
}

impl MaintainOptions {
    /// The settings a resumed run must repeat (`--patch --reboot always`).
    fn settings(&self) -> String {
        format!("{}--reboot {}", if self.patch { "--patch " } else { "" }, self.reboot.name())
    }
}

/// Runs a parsed `kubeforge maintain`.
pub fn run(a: MaintainArgs) -> Result<i32> {
    let consent = Consent::from_flags("maintain", a.dry_run, a.yes)?;
    let o = a.common.options(&a.inventory)?;
    let session = Session::open(&a.inventory, o)?;
    maintain_in(
        &session,
        &MaintainOptions {
            hosts: a.hosts,
            patch: a.patch,
            reboot: a.reboot,
            batch: a.batch,
            consent,
            drain_timeout: a.drain_timeout,
            reboot_timeout: a.reboot_timeout,
            gate_timeout: a.gate_timeout,
            poll: Duration::from_secs(3),
        },
    )
}

// ---------------------------------------------------------------------------------------------------------
// What a host needs

/// Prints what `maintain` needs to know of a host. `$1`: `patch` to list package upgrades; `$2`: `refresh`
/// to refresh the package lists first.
const READ: &str = r#"echo "boot $(cat /proc/sys/kernel/random/boot_id)"
if command -v apt-get >/dev/null 2>&1; then pm=apt; elif command -v dnf >/dev/null 2>&1; then pm=dnf; else pm=none; fi
echo "pm $pm"
if [ -e /var/run/reboot-required ]; then echo "reboot-required yes"
elif [ "$pm" = dnf ] && command -v needs-restarting >/dev/null 2>&1 && ! needs-restarting -r >/dev/null 2>&1; then echo "reboot-required yes"
else echo "reboot-required no"; fi
[ "$1" = patch ] || exit 0
case $pm in
apt)
  if [ "$2" = refresh ]; then apt-get -q update >/dev/null 2>&1 || echo "error apt-get update failed"; fi
  echo "lists $(stat -c %Y /var/lib/apt/lists 2>/dev/null)"
  apt-get -s -q -o Debug::NoLocking=1 upgrade 2>/dev/null | sed -n 's/^Inst /apt /p' ;;
dnf)
  if [ "$2" = refresh ]; then dnf -q makecache >/dev/null 2>&1 || echo "error dnf makecache failed"; fi
  dnf -q check-update 2>/dev/null | awk 'NF == 3 && $1 ~ /\./ {print "dnf " $0}' ;;
esac
true"#;

/// Upgrades the packages, non-interactively, keeping changed configuration files; then says whether a
/// reboot is required.
const PATCH: &str = r#"case "$1" in
apt) DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=a apt-get -q -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold upgrade ;;
dnf) dnf -q -y upgrade ;;
*) echo "no package manager kubeforge knows (apt, dnf)" >&2; exit 1 ;;
esac || exit 1
if [ -e /var/run/reboot-required ]; then echo "reboot-required yes"
elif [ "$1" = dnf ] && command -v needs-restarting >/dev/null 2>&1 && ! needs-restarting -r >/dev/null 2>&1; then echo "reboot-required yes"
else echo "reboot-required no"; fi"#;

/// Reboots in two seconds, from systemd rather than the SSH session, so the command returns first.
const REBOOT: &str = r#"systemd-run --quiet --collect --on-active=2 --unit="kubeforge-reboot-$(date +%s)" --description="kubeforge maintain: reboot" /bin/systemctl reboot"#;

/// The host's boot id.
const BOOT_ID: &str = "cat /proc/sys/kernel/random/boot_id";

/// One package upgrade.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    /// Its name.
    pub name: String,
    /// The version installed (empty: a new package).
    pub from: String,
    /// The version it moves to.
    pub to: String,
}

/// What a host is and needs, read live.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostNeeds {
    /// Its boot id.
    pub boot: String,
    /// Its package manager (`apt`, `dnf`, `none`).
    pub pm: String,
    /// It says it needs a reboot.
    pub reboot_required: bool,
    /// Package upgrades pending (with `--patch`).
    pub packages: Vec<Package>,
    /// When the package lists were last refreshed (Unix seconds), when known.
    pub lists: Option<i64>,
    /// Why it could not be read.
    pub error: Option<String>,
}

/// Parses [`READ`] output.
pub fn parse_needs(out: &str) -> HostNeeds {
    let mut n = HostNeeds::default();
    for line in out.lines() {
        let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "boot" => n.boot = rest.trim().to_owned(),
            "pm" => n.pm = rest.trim().to_owned(),
            "reboot-required" => n.reboot_required = rest.trim() == "yes",
            "lists" => n.lists = rest.trim().parse().ok(),
            "error" => n.error = Some(rest.trim().to_owned()),
            // `Inst name [old] (new suite [arch])`; a new package has no `[old]`.
            "apt" => {
                let mut it = rest.split_whitespace();
                let Some(name) = it.next() else { continue };
                let mut from = String::new();
                let mut to = String::new();
                for tok in it {
                    if let Some(v) = tok.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
                        if from.is_empty() && to.is_empty() {
                            from = v.to_owned();
                        }
                    } else if let Some(v) = tok.strip_prefix('(') {
                        to = v.to_owned();
                        break;
                    }
                }
                n.packages.push(Package { name: name.to_owned(), from, to });
            }
            // `name.arch version repo`
            "dnf" => {
                let f: Vec<&str> = rest.split_whitespace().collect();
                if let [name, version, _repo] = f.as_slice() {
                    let name = name.rsplit_once('.').map(|(n, _)| n).unwrap_or(name);
                    n.packages.push(Package {
                        name: name.to_owned(),
                        from: String::new(),
                        to: version.to_string(),
                    });
                }
            }
            _ => {}
        }
    }
    n
}

/// Reads a host's needs (one round trip).
async fn read_needs(t: &dyn Transport, patch: bool, refresh: bool) -> HostNeeds {
    let mut cmd = Command::shell(READ).arg(if patch { "patch" } else { "-" });
    if refresh {
        cmd = cmd.arg("refresh");
    }
    match t.exec(&cmd.sudo().timeout(Duration::from_secs(600))).await {
        Ok(o) if o.success() => {
            let n = parse_needs(&o.stdout_str());
            if n.boot.is_empty() {
                HostNeeds { error: Some("no boot id".into()), ..n }
            } else {
                n
            }
        }
        Ok(o) => HostNeeds { error: Some(o.stderr_str().trim().to_owned()), ..Default::default() },
        Err(e) => HostNeeds { error: Some(e.to_string()), ..Default::default() },
    }
}

// ---------------------------------------------------------------------------------------------------------
// The plan

/// What is done to one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostWork {
    /// The host.
    pub host: String,
    /// Package upgrades to install.
    pub packages: Vec<Package>,
    /// Its package manager (`apt`, `dnf`, `none`).
    pub pm: String,
    /// The boot id it runs.
    pub boot: String,
    /// The reboot: `Some(why)` when it reboots for sure; `None` when not (or only if the packages ask).
    pub reboot: Option<&'static str>,
    /// It may reboot after its packages, if they ask (`--reboot auto` with packages).
    pub reboot_if_asked: bool,
    /// It needs a reboot that `--reboot never` forbids.
    pub reboot_withheld: bool,
    /// Done earlier in this maintenance (what was done).
    pub done: Option<String>,
    /// It is a node (cordoned and drained).
    pub node: bool,
}

impl HostWork {
    /// Something to do.
    pub fn busy(&self) -> bool {
        self.done.is_none() && (!self.packages.is_empty() || self.reboot.is_some())
    }
}

/// The steps of a maintenance, with each host's work.
#[derive(Debug, Clone)]
pub struct MaintainPlan {
    /// Steps in order, each with its hosts' work (selected hosts only).
    pub steps: Vec<(StepKind, Vec<HostWork>)>,
    /// What keeps the cluster from being maintained (unhealthy, unreachable).
    pub problems: Vec<String>,
    /// The maintenance resumed (started at, hosts done).
    pub resumed: Option<Maintenance>,
    /// Package lists as old as this (a dry run does not refresh them).
    pub lists: Option<i64>,
}

/// Each host's work from what was read.
fn work(
    model: &ClusterModel,
    steps: &[PlannedStep],
    needs: &BTreeMap<String, HostNeeds>,
    o: &MaintainOptions,
    resumed: Option<&Maintenance>,
) -> Vec<(StepKind, Vec<HostWork>)> {
    let mut out = Vec::new();
    for s in steps {
        let mut hosts = Vec::new();
        for h in &s.hosts {
            let Some(n) = needs.get(h) else { continue };
            let packages = if o.patch { n.packages.clone() } else { Vec::new() };
            let (reboot, reboot_if_asked, reboot_withheld) = match o.reboot {
                Reboot::Always => (Some("--reboot always"), false, false),
                Reboot::Auto if n.reboot_required => (Some("the host requires it"), false, false),
                Reboot::Auto => (None, !packages.is_empty(), false),
                Reboot::Never => (None, false, n.reboot_required),
            };
            hosts.push(HostWork {
                host: h.clone(),
                packages,
                pm: n.pm.clone(),
                boot: n.boot.clone(),
                reboot,
                reboot_if_asked,
                reboot_withheld,
                done: resumed.and_then(|m| m.done.get(h).cloned()),
                node: model.host(h).is_some_and(|m| m.is_node),
            });
        }
        if !hosts.is_empty() {
            out.push((s.kind, hosts));
        }
    }
    out
}

impl MaintainPlan {
    /// The plan as people read it.
    pub fn table(&self, model: &ClusterModel) -> String {
        let mut s = format!("maintenance of cluster `{}`:\n", model.name);
        if let Some(m) = &self.resumed {
            s.push_str(&format!(
                "  resuming the maintenance started {} ({} host(s) done: {})\n",
                crate::report::unix_time(m.started),
                m.done.len(),
                m.done.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        let cps = model.control_planes().count();
        for (i, (kind, hosts)) in self.steps.iter().enumerate() {
            let what = match kind {
                StepKind::EtcdMember => "etcd member",
                StepKind::ControlPlane => "control plane",
                StepKind::Workers => "workers",
            };
            s.push_str(&format!("  step {}: {what}\n", i + 1));
            for w in hosts {
                let mut parts = Vec::new();
                if let Some(d) = &w.done {
                    parts.push(format!("done earlier in this maintenance ({d})"));
                } else if !w.busy() {
                    parts.push("nothing to do".into());
                } else {
                    if !w.packages.is_empty() {
                        let names: Vec<String> = w
                            .packages
                            .iter()
                            .map(|p| {
                                if p.from.is_empty() {
                                    format!("{} {}", p.name, p.to)
                                } else {
                                    format!("{} {} -> {}", p.name, p.from, p.to)
                                }
                            })
                            .collect();
                        parts.push(format!("{} package(s): {}", w.packages.len(), names.join(", ")));
                    }
                    match (w.reboot, w.reboot_if_asked) {
                        (Some(why), _) => parts.push(format!("reboot ({why})")),
                        (None, true) => parts.push("reboot if the packages require it".into()),
                        (None, false) => parts.push("no reboot".into()),
                    }
                    if w.node {
                        parts.push("cordon and drain first".into());
                    }
                    if *kind == StepKind::ControlPlane && cps == 1 && w.reboot.is_some() {
                        parts.push("the only control plane: the API is down while it reboots".into());
                    }
                }
                if w.reboot_withheld {
                    parts.push("needs a reboot (--reboot never)".into());
                }
                s.push_str(&format!("    {:<14} {}\n", w.host, parts.join("; ")));
            }
        }
        if let Some(t) = self.lists {
            s.push_str(&format!(
                "  package lists as of {} (a dry run does not refresh them; the run does)\n",
                crate::report::unix_time(t)
            ));
        }
        s
    }

    fn busy(&self) -> usize {
        self.steps.iter().flat_map(|(_, h)| h).filter(|w| w.busy()).count()
    }
}

/// The selected hosts, in inventory order.
fn selected(session: &Session, o: &MaintainOptions) -> Result<Vec<String>> {
    let model = session.model();
    Ok(crate::selector::names(&session.loaded.inventory.hosts, o.hosts.as_deref())?
        .unwrap_or_else(|| model.hosts.iter().map(|h| h.name.clone()).collect()))
}

/// Stages `read`: every selected host's needs and the cluster's health; the plan.
async fn assess(session: &Session, o: &MaintainOptions, selected: &[String]) -> Result<MaintainPlan> {
    session.enter(&MAINTAIN, "read");
    let model = session.model();
    let refresh = o.patch && o.consent != Consent::Preview;
    let needs: BTreeMap<String, HostNeeds> = session
        .executor
        .each(selected, |h| async move {
            let n = match session.transport(h) {
                Ok(t) => read_needs(t.as_ref(), o.patch, refresh).await,
                Err(e) => HostNeeds { error: Some(e.to_string()), ..Default::default() },
            };
            (h.clone(), n)
        })
        .await
        .into_iter()
        .collect();
    let mut problems: Vec<String> =
        needs.iter().filter_map(|(h, n)| Some(format!("{h}: {}", n.error.as_ref()?))).collect();
    let facts = policy::read_facts(&model, &session.transports, &session.executor).await;
    let api = model.control_planes().next().map(|h| h.name.clone()).unwrap_or_default();
    let health = policy::read_health(&model, session.transport(&api)?.as_ref()).await?;
    problems.extend(policy::problems(&model, &health, &facts));
    let state = ClusterState::load(&session.options.pki_root, &model.name)?;
    let resumed = state.maintenance.filter(|m| m.settings == o.settings());
    let steps = crate::upgrade::steps(&model, o.batch);
    let lists = if refresh { None } else { needs.values().filter_map(|n| n.lists).min() };
    Ok(MaintainPlan { steps: work(&model, &steps, &needs, o, resumed.as_ref()), problems, resumed, lists })
}

// ---------------------------------------------------------------------------------------------------------
// The run

/// How one host's maintenance went, for the report.
#[derive(Debug, Clone, Default)]
struct Done {
    patched: usize,
    rebooted: bool,
    drain: Duration,
    patch: Duration,
    back: Duration,
    gate: Duration,
    total: Duration,
    note: String,
}

/// `kubeforge maintain` in a session: the stages of [`MAINTAIN`], in order.
pub fn maintain_in(session: &Session, o: &MaintainOptions) -> Result<i32> {
    let model = session.model();
    let started = Instant::now();
    let selected = selected(session, o)?;
    let result = session.block_on(async {
        session.enter(&MAINTAIN, "identity");
        let guarded = crate::apply::guarded_hosts(&model, Some(&selected));
        crate::apply::guard(&model, &session.options, &guarded, &session.transports, &session.executor).await?;
        let plan = assess(session, o, &selected).await?;
        session.enter(&MAINTAIN, "preview");
        session.say(plan.table(&model));
        if !plan.problems.is_empty() {
            return Err(Error::msg(
                format!("maintenance cannot start, nothing was changed: {}", plan.problems.join("; ")),
                Some("fix these first (`kubeforge status` shows the cluster's health); maintenance starts from a healthy cluster whose hosts all answer"),
            ));
        }
        if plan.busy() == 0 {
            let mut st = ClusterState::load(&session.options.pki_root, &model.name)?;
            if st.maintenance.take().is_some() && o.consent != Consent::Preview {
                st.save(&session.options.pki_root)?;
            }
            session.say("maintain: nothing to do\n");
            return Ok(BTreeMap::new());
        }
        if o.consent == Consent::Preview {
            session.say("maintain --dry-run: nothing was changed; run with --yes to maintain the hosts\n");
            return Ok(BTreeMap::new());
        }
        if o.consent == Consent::Ask {
            session.enter(&MAINTAIN, "confirm");
            if !crate::prompt::ask(&format!("Maintain {} host(s) of cluster `{}`?", plan.busy(), model.name))? {
                return Err(Error::msg("maintenance cancelled, nothing was changed", None));
            }
        }
        // The record a re-run resumes from, before the first host is touched.
        let mut st = ClusterState::load(&session.options.pki_root, &model.name)?;
        if plan.resumed.is_none() {
            st.maintenance = Some(Maintenance {
                started: crate::report::now_unix(),
                settings: o.settings(),
                done: BTreeMap::new(),
            });
            st.save(&session.options.pki_root)?;
        }
        crate::cleanup::writing();
        let mut report: BTreeMap<String, Done> = BTreeMap::new();
        for (_, hosts) in &plan.steps {
            session.boundary(&MAINTAIN, "step")?;
            session.enter(&MAINTAIN, "step");
            let busy: Vec<&HostWork> = hosts.iter().filter(|w| w.busy()).collect();
            for w in hosts.iter().filter(|w| !w.busy()) {
                let note = w.done.clone().map(|d| format!("done earlier ({d})")).unwrap_or("nothing to do".into());
                report.insert(w.host.clone(), Done { note, ..Default::default() });
            }
            if busy.is_empty() {
                continue;
            }
            let done = step(session, o, &model, &busy).await?;
            let mut st = ClusterState::load(&session.options.pki_root, &model.name)?;
            let m = st.maintenance.get_or_insert_with(Default::default);
            for (h, d) in &done {
                m.done.insert(h.clone(), d.note.clone());
            }
            st.save(&session.options.pki_root)?;
            report.extend(done);
        }
        let mut st = ClusterState::load(&session.options.pki_root, &model.name)?;
        st.maintenance = None;
        st.save(&session.options.pki_root)?;
        Ok(report)
    });
    eprint!("{}", crate::apply::host_stats(&session.transports));
    let report = result?;
    if report.is_empty() {
        return Ok(0);
    }
    session.enter(&MAINTAIN, "report");
    session.say(report_table(&report));
    session.say(format!("maintain: {} maintained ({:.0}s)\n", model.name, started.elapsed().as_secs_f64()));
    Ok(0)
}

fn report_table(report: &BTreeMap<String, Done>) -> String {
    let mut s = format!(
        "{:<14} {:<9} {:<9} {:>7} {:>7} {:>7} {:>7} {:>7}\n",
        "HOST", "PATCHED", "REBOOTED", "DRAIN", "PATCH", "BACK", "GATE", "TOTAL"
    );
    let secs = |d: Duration| format!("{:.0}s", d.as_secs_f64());
    for (h, d) in report {
        if d.total.is_zero() {
            s.push_str(&format!("{h:<14} {}\n", d.note));
            continue;
        }
        s.push_str(&format!(
            "{:<14} {:<9} {:<9} {:>7} {:>7} {:>7} {:>7} {:>7}\n",
            h,
            d.patched,
            if d.rebooted { "yes" } else { "no" },
            secs(d.drain),
            secs(d.patch),
            secs(d.back),
            secs(d.gate),
            secs(d.total)
        ));
    }
    s
}

/// The control plane that runs kubectl and the gates while `busy` hosts are maintained: another one when
/// there is one.
fn api_host(model: &ClusterModel, busy: &[String]) -> String {
    let cps: Vec<&str> = model.control_planes().map(|h| h.name.as_str()).collect();
    cps.iter()
        .find(|c| !busy.iter().any(|b| b == *c))
        .or(cps.first())
        .map(|s| s.to_string())
        .unwrap_or_default()
}

/// One step: its busy hosts through the stages `cordon` to `workloads`. An error stops the run: the hosts
/// that failed are named with the stage and the cause; a host that is healthy again is uncordoned, one
/// that is not stays cordoned.
async fn step(
    session: &Session,
    o: &MaintainOptions,
    model: &ClusterModel,
    work: &[&HostWork],
) -> Result<BTreeMap<String, Done>> {
    let names: Vec<String> = work.iter().map(|w| w.host.clone()).collect();
    let api = api_host(model, &names);
    let d = Disruption {
        session,
        api: api.clone(),
        drain_timeout: o.drain_timeout,
        poll: o.poll,
        tag: "maintain",
    };
    let t0 = Instant::now();
    let mut done: BTreeMap<String, Done> = names.iter().map(|h| (h.clone(), Done::default())).collect();
    let nodes: Vec<String> = work.iter().filter(|w| w.node).map(|w| w.host.clone()).collect();
    let before = if nodes.is_empty() { BTreeMap::new() } else { d.ready_by_owner().await? };
    let mut cordoned = Vec::new();
    if !nodes.is_empty() && !session.executor.stopping() {
        session.enter(&MAINTAIN, "cordon");
        cordoned = d.cordon(&nodes, "maintenance").await?;
        session.enter(&MAINTAIN, "drain");
    }
    let clock = Instant::now();
    d.drain(&cordoned).await?;
    for h in &cordoned {
        done.get_mut(h).expect("host").drain = clock.elapsed();
    }
    if session.executor.stopping() {
        d.uncordon(&cordoned).await;
        return Err(session.boundary(&MAINTAIN, "patch").expect_err("stopping"));
    }
    session.enter(&MAINTAIN, "leadership");
    d.hand_over_etcd_leadership(model, &names).await;
    // From here on, a failure leaves the hosts to `recover`: uncordoned when healthy, named either way.
    let failed = |stage: &str, errors: Vec<String>| {
        Error::msg(
            format!("maintenance stopped at `{stage}`: {}", errors.join("; ")),
            Some("fix the cause on that host, then run `kubeforge maintain` again with the same settings: the hosts done are skipped"),
        )
    };
    let mut reboot: Vec<String> =
        work.iter().filter(|w| w.reboot.is_some()).map(|w| w.host.clone()).collect();
    let patching: Vec<&HostWork> = work.iter().filter(|w| !w.packages.is_empty()).copied().collect();
    if !patching.is_empty() {
        session.enter(&MAINTAIN, "patch");
        let results = session
            .executor
            .each(&patching, |w| async move {
                let clock = Instant::now();
                let t = session.transport(&w.host).map_err(|e| e.to_string())?;
                let cmd = Command::shell(PATCH).arg(&w.pm).sudo().timeout(Duration::from_secs(3600));
                eprintln!("[maintain] {}: upgrading {} package(s)", w.host, w.packages.len());
                let out = crate::plan::run_checked(t.as_ref(), "upgrade the packages", &cmd)
                    .await
                    .map_err(|e| format!("{}: {e}", w.host))?;
                let asks = out.stdout_str().contains("reboot-required yes");
                eprintln!(
                    "[maintain] {}: {} package(s) upgraded ({:.0}s){}",
                    w.host,
                    w.packages.len(),
                    clock.elapsed().as_secs_f64(),
                    if asks { "; it requires a reboot" } else { "" }
                );
                Ok::<_, String>((w.host.clone(), asks, clock.elapsed()))
            })
            .await;
        let mut errors = Vec::new();
        for r in results {
            match r {
                Ok((h, asks, took)) => {
                    let w = work.iter().find(|w| w.host == h).expect("host");
                    let dn = done.get_mut(&h).expect("host");
                    dn.patched = w.packages.len();
                    dn.patch = took;
                    if asks && w.reboot_if_asked && !reboot.contains(&h) {
                        reboot.push(h);
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            recover(session, o, model, &d, &names, &cordoned).await;
            return Err(failed("patch", errors));
        }
    }
    if session.executor.stopping() {
        recover(session, o, model, &d, &names, &cordoned).await;
        return Err(session.boundary(&MAINTAIN, "reboot").expect_err("stopping"));
    }
    if !reboot.is_empty() {
        session.enter(&MAINTAIN, "reboot");
        // The boot each host runs (read in stage `read`; packages do not change it).
        let boots: BTreeMap<String, String> = work.iter().map(|w| (w.host.clone(), w.boot.clone())).collect();
        let results = session
            .executor
            .each(&reboot, |h| async move {
                let t = session.transport(h).map_err(|e| e.to_string())?;
                crate::plan::run_checked(t.as_ref(), "reboot", &Command::shell(REBOOT).sudo())
                    .await
                    .map_err(|e| format!("{h}: {e}"))?;
                crate::cleanup::host_doing(
                    h,
                    format!("rebooting for maintenance, cordoned (`kubectl uncordon {h}` once it is back)"),
                );
                eprintln!("[maintain] {h}: rebooting");
                t.drop_connection().await;
                Ok::<_, String>(())
            })
            .await;
        let errors: Vec<String> = results.into_iter().filter_map(|r| r.err()).collect();
        if !errors.is_empty() {
            recover(session, o, model, &d, &names, &cordoned).await;
            return Err(failed("reboot", errors));
        }
        session.enter(&MAINTAIN, "back");
        let boots = &boots;
        let results = session
            .executor
            .each(&reboot, |h| async move {
                let clock = Instant::now();
                let r = come_back(session, o, model, h, &boots[h]).await;
                (h.clone(), r.map(|()| clock.elapsed()))
            })
            .await;
        let mut errors = Vec::new();
        let mut lost = Vec::new();
        for (h, r) in results {
            match r {
                Ok(took) => {
                    let dn = done.get_mut(&h).expect("host");
                    dn.rebooted = true;
                    dn.back = took;
                    eprintln!(
                        "[maintain] {h}: back with a new boot id, services healthy ({:.0}s)",
                        took.as_secs_f64()
                    );
                }
                Err(e) => {
                    errors.push(format!("{h}: {e}"));
                    eprintln!("[maintain] {h}: left cordoned: it did not come back from its reboot");
                    lost.push(h);
                }
            }
        }
        if !errors.is_empty() {
            // The hosts that came back are put back in service when healthy; the lost ones stay out.
            let back: Vec<String> = names.iter().filter(|h| !lost.contains(h)).cloned().collect();
            recover(session, o, model, &d, &back, &cordoned).await;
            return Err(failed("back", errors));
        }
    }
    session.enter(&MAINTAIN, "gate");
    let clock = Instant::now();
    if let Err(e) = gate(session, o, model, &api, &names).await {
        return Err(failed("gate", vec![format!("{e} (cordoned hosts stay cordoned)")]));
    }
    for dn in done.values_mut() {
        dn.gate = clock.elapsed();
    }
    if !cordoned.is_empty() {
        session.enter(&MAINTAIN, "uncordon");
        for h in &cordoned {
            d.kubectl("uncordon", &["uncordon", h], Duration::from_secs(30)).await?;
            crate::cleanup::host_doing(h, "maintained and uncordoned".into());
            eprintln!("[maintain] {h}: uncordoned");
        }
        session.enter(&MAINTAIN, "workloads");
        let clock = Instant::now();
        d.workload_gate(&before).await?;
        eprintln!(
            "[maintain] workloads back to Ready ({} controller(s), {:.1}s)",
            before.len(),
            clock.elapsed().as_secs_f64()
        );
    }
    for (h, dn) in done.iter_mut() {
        dn.total = t0.elapsed();
        dn.note = match (dn.patched, dn.rebooted) {
            (0, true) => "rebooted".into(),
            (n, true) => format!("{n} package(s), rebooted"),
            (n, false) => format!("{n} package(s)"),
        };
        eprintln!("[maintain] {h}: done ({}, {:.0}s)", dn.note, dn.total.as_secs_f64());
    }
    Ok(done)
}

async fn read_boot_id(t: &dyn Transport) -> Option<String> {
    let out = t.exec(&Command::shell(BOOT_ID).timeout(Duration::from_secs(30))).await.ok()?;
    let id = out.stdout_str().trim().to_owned();
    (out.success() && !id.is_empty()).then_some(id)
}

/// Waits until `host` answers SSH with a boot id other than `before`, then until its services pass their
/// health checks, within `--reboot-timeout`.
async fn come_back(
    session: &Session,
    o: &MaintainOptions,
    model: &ClusterModel,
    host: &str,
    before: &str,
) -> Result<()> {
    let t = session.transport(host)?;
    let start = Instant::now();
    let mut last: String;
    loop {
        match read_boot_id(t.as_ref()).await {
            Some(id) if id != before => break,
            Some(_) => last = "still running the boot it had before the reboot".into(),
            None => {
                t.drop_connection().await;
                last = "SSH does not answer".into();
            }
        }
        if start.elapsed() >= o.reboot_timeout {
            return Err(Error::msg(
                format!("did not come back within {}s of its reboot: {last}", o.reboot_timeout.as_secs()),
                Some("look at its console; it stays cordoned"),
            ));
        }
        tokio::time::sleep(o.poll.max(Duration::from_millis(100))).await;
    }
    let h = model.host(host).ok_or_else(|| Error::msg(format!("{host} is not in the inventory"), None))?;
    loop {
        let out = t.exec(&crate::phase::verify::host_checks(h)).await;
        match out {
            Ok(o) if o.success() => return Ok(()),
            Ok(o) => last = o.stdout_str().trim().to_owned(),
            Err(e) => last = e.to_string(),
        }
        if start.elapsed() >= o.reboot_timeout {
            return Err(Error::msg(
                format!(
                    "back from its reboot, but its services are not healthy within {}s: {last}",
                    o.reboot_timeout.as_secs()
                ),
                Some("look at `journalctl -b` on the host; it stays cordoned"),
            ));
        }
        tokio::time::sleep(o.poll).await;
    }
}

/// Waits until `hosts` pass their gate (any version): apiserver ready, etcd member healthy, Node Ready.
async fn gate(
    session: &Session,
    o: &MaintainOptions,
    model: &ClusterModel,
    api: &str,
    hosts: &[String],
) -> Result<()> {
    let start = Instant::now();
    let t = session.transport(api)?;
    loop {
        let health = policy::read_health(model, t.as_ref()).await.unwrap_or_default();
        let facts: BTreeMap<String, HostFacts> = session
            .executor
            .each(hosts, |h| async move {
                let f = match session.transport(h) {
                    Ok(tr) => policy::host_facts(tr.as_ref()).await,
                    Err(e) => HostFacts { error: Some(e.to_string()), ..Default::default() },
                };
                (h.clone(), f)
            })
            .await
            .into_iter()
            .collect();
        let problems = policy::gate_problems(model, hosts, None, &health, &facts);
        if problems.is_empty() {
            return Ok(());
        }
        if start.elapsed() >= o.gate_timeout {
            return Err(Error::msg(
                format!(
                    "health gate not passed within {}s: {}",
                    o.gate_timeout.as_secs(),
                    problems.join("; ")
                ),
                None,
            ));
        }
        tokio::time::sleep(o.poll).await;
    }
}

/// After a failure past the drain: each host that passes its gate now is uncordoned; the others stay
/// cordoned (something is wrong there: no pods belong on it), and say so.
async fn recover(
    session: &Session,
    o: &MaintainOptions,
    model: &ClusterModel,
    d: &Disruption<'_>,
    hosts: &[String],
    cordoned: &[String],
) {
    let quick = MaintainOptions { gate_timeout: Duration::ZERO, ..o.clone() };
    for h in cordoned.iter().filter(|h| hosts.contains(h)) {
        if gate(session, &quick, model, &d.api, std::slice::from_ref(h)).await.is_ok() {
            d.uncordon(std::slice::from_ref(h)).await;
        } else {
            eprintln!("[maintain] {h}: left cordoned: it does not pass its health gate (`kubectl uncordon {h}` once it is fixed)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_and_dnf_upgrades_are_read_with_their_versions() {
        let out = "boot 4b3c\npm apt\nreboot-required no\nlists 1765000000\n\
                   apt libc6 [2.36-9+deb12u9] (2.36-9+deb12u10 Debian:12.12/stable [amd64])\n\
                   apt linux-image-6.1.0-41-amd64 (6.1.158-1 Debian-Security:12/stable-security [amd64])\n";
        let n = parse_needs(out);
        assert_eq!(n.boot, "4b3c");
        assert_eq!(n.pm, "apt");
        assert!(!n.reboot_required);
        assert_eq!(n.lists, Some(1765000000));
        assert_eq!(
            n.packages,
            [
                Package { name: "libc6".into(), from: "2.36-9+deb12u9".into(), to: "2.36-9+deb12u10".into() },
                Package {
                    name: "linux-image-6.1.0-41-amd64".into(),
                    from: String::new(),
                    to: "6.1.158-1".into()
                },
            ]
        );
        let n = parse_needs("boot x\npm dnf\nreboot-required yes\ndnf kernel.x86_64 5.14.0-570.el9 baseos\n");
        assert!(n.reboot_required);
        assert_eq!(
            n.packages,
            [Package { name: "kernel".into(), from: String::new(), to: "5.14.0-570.el9".into() }]
        );
    }

    #[test]
    fn the_read_script_is_valid_shell_and_reads_a_real_debian_simulation_line() {
        for s in [READ, PATCH, REBOOT] {
            let st = std::process::Command::new("sh").args(["-n", "-c", s]).status().unwrap();
            assert!(st.success(), "{s}");
        }
    }
}
