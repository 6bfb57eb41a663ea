//! Command-line definitions (clap) and dispatch. Only argument shapes live here; each command's work is in
//! its own module.

pub use crate::args::{at_least_one, connect_options, preflight_check, ClusterArgs};
use crate::prompt::Consent;
use crate::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// kubeforge: install and operate self-hosted Kubernetes clusters over SSH.
#[derive(Debug, Parser)]
#[command(name = "kubeforge", version, about, long_about = None)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Every command.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Install or converge the cluster described by an inventory (idempotent; `--dry-run` prints the plan).
    Apply(ApplyArgs),
    /// Add hosts to a running cluster: the inventory hosts the cluster state does not know yet (or
    /// `--hosts`), touching other hosts only where their desired state changes (routes, labels, state copy).
    Join(ApplyArgs),
    /// Remove a node from the cluster: cordon, drain (eviction API), delete the Node, remove what kubeforge
    /// installed on the host (a dead host is reported, not waited for), converge the others without it.
    RemoveNode(RemoveNodeArgs),
    /// Move a node to a new machine under the same name: its etcd member leaves (quorum checked), its Node is
    /// deleted (drained first when the old machine answers), the old machine is cleaned when it answers; the
    /// new one joins with the node's pod subnet, an etcd member as a learner; the other hosts converge.
    ReplaceNode(crate::replace::ReplaceNodeArgs),
    /// Remove everything kubeforge installed from the hosts (units, binaries, configs, certificates, data,
    /// CNI bridge and routes, kube-proxy's iptables chains), then check each host is clean. Without `--yes`
    /// it only shows what it would remove.
    Reset(ResetArgs),
    /// Per host: reachable, roles, versions, units down, drift (files that differ from what apply would
    /// write), Node readiness, etcd health, leader, db size and fragmentation; the earliest certificate
    /// expiry. Read-only, one round trip per host; exits 1 when anything is unhealthy.
    Status(StatusArgs),
    /// Audit the running cluster against the CIS Kubernetes Benchmark's checks (as kube-bench runs them),
    /// mapped to kubeforge's layout: file permissions and owners, the flags of the running processes, the
    /// kubelet's and scheduler's configuration. PASS, FAIL, WARN (a manual check) or DEVIATION (deliberately
    /// different, with the reason) per check and host. Read-only, one round trip per host; exits 1 when a
    /// scored check fails.
    Audit(StatusArgs),
    /// Back up the cluster into one archive: an etcd snapshot (taken over TLS, checked), the whole PKI (CAs,
    /// service-account keys, encryption-at-rest key), the inventory, the cluster state and the versions
    /// installed, with a manifest of sha256 digests; 0600, optionally encrypted (age, passphrase).
    Backup(BackupArgs),
    /// Restore a backup onto the inventory's hosts (the same ones, or new ones with other addresses):
    /// install them, replace every etcd member's data with the snapshot, start and check. Without `--yes`
    /// it checks the archive and shows what it would do.
    Restore(RestoreArgs),
    /// The cluster state file: `pull` fetches the copy kept on the control planes (another admin machine
    /// with the PKI takes over).
    #[command(subcommand)]
    State(StateCommand),
    /// Upgrade Kubernetes: `plan` shows the path and the version-skew checks; `apply` takes an etcd snapshot,
    /// then upgrades control planes one at a time and workers in drained batches, each host health-gated
    /// and rolled back when it fails; `rollback` returns hosts to their previous version.
    #[command(subcommand)]
    Upgrade(crate::upgrade::UpgradeCommand),
    /// Rolling host maintenance: per step (etcd-only members, control planes one at a time, workers in
    /// batches) cordon, drain, optionally upgrade the OS packages (`--patch`), reboot when required or
    /// always (`--reboot`), wait for SSH, the services, etcd and Node Ready, uncordon. A failing host stops
    /// the run; a re-run with the same settings resumes. Without `--yes` it shows the plan and asks.
    Maintain(crate::maintain::MaintainArgs),
    /// etcd care: `status` per member (leader, raft index, db size, in use, fragmentation, alarms),
    /// `defrag` one member at a time with the leader last, `alarms` (`--disarm`: the NOSPACE recovery).
    #[command(subcommand)]
    Etcd(crate::etcd::EtcdCommand),
    /// Rotate the cluster's keys with the API up: `encryption-key` replaces the key that encrypts Secrets at
    /// rest, proves from etcd that every Secret carries the new key, then drops the old one;
    /// `service-account-key` replaces the key that signs service-account tokens (trust both, sign with the
    /// new one, wait for the old tokens to expire, drop the old one); `ca` replaces the cluster, etcd and
    /// front-proxy CAs (trust both, re-issue every leaf, distrust the old ones).
    #[command(subcommand)]
    Rotate(crate::rotate::RotateCommand),
    /// Certificates: generate, check expiration, renew.
    #[command(subcommand)]
    Certs(crate::certs::CertsCommand),
    /// Kubeconfigs: the cluster's admin kubeconfig (print, write, merge), a person's short-lived one, or a
    /// person's client bundle.
    #[command(subcommand)]
    Kubeconfig(crate::certs::KubeconfigCommand),
    /// Local VMs to try kubeforge and to test it end to end.
    #[command(subcommand)]
    Lab(crate::lab::LabCommand),
    /// Print kubeforge's version, the commit it was built from and the Kubernetes versions it installs.
    Version {
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: crate::output::Format,
    },
    /// Print a shell completion script (`kubeforge completion bash > /etc/bash_completion.d/kubeforge`).
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages for kubeforge and every command into a directory (`man -l DIR/kubeforge.1`).
    Man {
        /// The directory to write `kubeforge.1`, `kubeforge-apply.1`, ... into (made when missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// List the phases of a workflow (`apply`) or the stages of a lifecycle command (`reset`, `restore`,
    /// ...), in the order they run.
    Phases {
        /// The workflow: apply, join, remove-node, reset, backup, restore, upgrade, maintain, replace-node,
        /// rotate-encryption-key, rotate-service-account-key, rotate-ca, etcd-status, etcd-defrag, etcd-alarms.
        #[arg(default_value = "apply")]
        workflow: String,
    },
    /// Node-local API load balancer (runs as the `kube-api-lb` service on nodes; not for interactive use).
    #[command(hide = true)]
    ApiLb {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7443")]
        listen: std::net::SocketAddr,
        /// An apiserver address, `IP:PORT`; repeat once per control plane.
        #[arg(long = "backend", required = true)]
        backends: Vec<std::net::SocketAddr>,
        /// The cluster CA: with it, each backend's `/readyz` is checked and backends that are not ready get
        /// no new connections while another one is.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// How often each backend's `/readyz` is asked.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        health_interval: std::time::Duration,
    },
    /// Run a command on the selected hosts in parallel; print each host's output and exit status.
    Exec(ExecArgs),
    /// Connect to the selected hosts and show their facts (OS, kernel, CPUs, memory, systemd, swap, ports).
    Check(CheckArgs),
    /// Validate an inventory without connecting to any host.
    Validate {
        /// The inventory file (`-`: standard input).
        #[arg(short, long)]
        inventory: PathBuf,
        /// Output format.
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: crate::output::Format,
    },
    /// Inventories: write one from an OpenSSH client config (`inventory init --from-ssh-config`).
    #[command(subcommand)]
    Inventory(crate::inventory::init::InventoryCommand),
    /// Release binaries: fill the cache, write or verify an air-gapped bundle.
    Artifacts {
        /// What to do.
        #[command(subcommand)]
        command: crate::artifacts::command::ArtifactsCommand,
    },
}

/// Arguments of `kubeforge apply`.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// The inventory file (`-`: standard input).
    #[arg(short, long)]
    pub inventory: PathBuf,
    /// Probe the hosts and print what would change, per host; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Hosts worked on at once.
    #[arg(long, default_value_t = 10, value_parser = at_least_one)]
    pub concurrency: usize,
    /// Record host keys that are not yet in known_hosts (changed keys are always refused).
    #[arg(long)]
    pub accept_new_host_keys: bool,
    /// Preflight checks to report as warnings instead of errors (`cpu,memory`, or `all`).
    #[arg(long, value_delimiter = ',', value_parser = preflight_check)]
    pub ignore_preflight_errors: Vec<String>,
    /// Run only these phases (see `kubeforge phases apply`).
    #[arg(long, value_delimiter = ',')]
    pub phases: Option<Vec<String>>,
    /// Work on these hosts only: host names, roles (`@worker` or `role=worker`) or `all`, comma-separated;
    /// cluster-wide phases (addons, the all-nodes check, the state copy) still run on the first control
    /// plane.
    #[arg(long, value_delimiter = ',')]
    pub hosts: Option<Vec<String>>,
    /// Running etcd members and control planes whose services restart go this many at a time, each batch
    /// gated on its health checks.
    #[arg(long, default_value_t = 1, value_parser = at_least_one)]
    pub batch: usize,
    /// With --dry-run: show the script behind every command of the plan.
    #[arg(short, long, requires = "dry_run")]
    pub verbose: bool,
    /// With --dry-run: save the plan to this file, to apply it later exactly as reviewed (`--plan`).
    #[arg(long, requires = "dry_run")]
    pub out: Option<PathBuf>,
    /// Carry out a plan saved with `--dry-run --out`; refused when a host or the inventory changed since.
    #[arg(long, conflicts_with = "dry_run")]
    pub plan: Option<PathBuf>,
    /// Directory holding `<cluster>/` PKI directories (default: `pki/` beside the inventory file).
    #[arg(long)]
    pub pki_dir: Option<PathBuf>,
    /// Artifact cache directory (default: the user cache dir, or $KUBEFORGE_CACHE_DIR).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
}

/// Arguments of `kubeforge remove-node`.
#[derive(Debug, clap::Args)]
pub struct RemoveNodeArgs {
    /// The inventory file (still listing the node: its SSH address is needed to clean it).
    #[arg(short, long)]
    pub inventory: PathBuf,
    /// The node to remove.
    pub node: String,
    /// Go on when the node cannot be drained (PodDisruptionBudgets, a dead kubelet).
    #[arg(long)]
    pub force: bool,
    /// How long the drain may take.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub drain_timeout: std::time::Duration,
    /// Print what would be done; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask (without it, the steps are shown and a terminal is asked; without a terminal it refuses).
    #[arg(short, long)]
    pub yes: bool,
    /// Connection, PKI and cache settings.
    #[command(flatten)]
    pub common: ClusterArgs,
}

/// Arguments of `kubeforge status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The inventory file (`-`: standard input).
    #[arg(short, long)]
    pub inventory: PathBuf,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: crate::output::Format,
    /// Connection, PKI and cache settings.
    #[command(flatten)]
    pub common: ClusterArgs,
}

/// Arguments of `kubeforge backup`.
#[derive(Debug, clap::Args)]
pub struct BackupArgs {
    /// The inventory file (`-`: standard input).
    #[arg(short, long)]
    pub inventory: PathBuf,
    /// The archive to write (default `pki/<cluster>/backups/<cluster>-<UTC time>.backup.tar.gz`, `.age` when
    /// encrypted).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Encrypt the archive (age, scrypt) with the passphrase in this environment variable (required unless
    /// --unencrypted: the archive holds every CA key).
    #[arg(long, value_name = "VAR")]
    pub passphrase_env: Option<String>,
    /// Write the archive in the clear (it holds the CA, service-account and encryption keys, and nothing
    /// authenticates its manifest).
    #[arg(long, conflicts_with = "passphrase_env")]
    pub unencrypted: bool,
    /// Connection, PKI and cache settings.
    #[command(flatten)]
    pub common: ClusterArgs,
}

/// Arguments of `kubeforge restore`.
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// The inventory file: the hosts to restore onto.
    #[arg(short, long)]
    pub inventory: PathBuf,
    /// The backup archive.
    #[arg(long)]
    pub from: PathBuf,
    /// The environment variable holding the archive's passphrase (when it is encrypted).
    #[arg(long, value_name = "VAR")]
    pub passphrase_env: Option<String>,
    /// Check the archive and show the steps; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask (without it, the steps are shown and a terminal is asked; without a terminal it refuses).
    #[arg(short, long)]
    pub yes: bool,
    /// When `pki/<cluster>/` holds other CAs than the backup: move it aside and use the backup's.
    #[arg(long)]
    pub replace_pki: bool,
    /// Preflight checks to report as warnings instead of errors (`cpu,memory`, or `all`).
    #[arg(long, value_delimiter = ',', value_parser = preflight_check)]
    pub ignore_preflight_errors: Vec<String>,
    /// Connection, PKI and cache settings.
    #[command(flatten)]
    pub common: ClusterArgs,
}

/// `kubeforge state ...`.
#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Fetch the cluster state from the control planes into `pki/<cluster>/state.json` (the newest copy
    /// that parses; a local file that differs is kept as `state.json.before-pull`).
    Pull {
        /// The inventory file (`-`: standard input).
        #[arg(short, long)]
        inventory: PathBuf,
        /// Connection, PKI and cache settings.
        #[command(flatten)]
        common: ClusterArgs,
    },
}

/// Arguments of `kubeforge reset`.
#[derive(Debug, clap::Args)]
pub struct ResetArgs {
    /// The inventory file (`-`: standard input).
    #[arg(short, long)]
    pub inventory: PathBuf,
    /// Only these hosts: host names, roles (`@worker` or `role=worker`) or `all`, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub hosts: Option<Vec<String>>,
    /// Show what would be removed, per host; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask (without it, what would go is shown and a terminal is asked; without a terminal it
    /// refuses).
    #[arg(short, long)]
    pub yes: bool,
    /// Also reset hosts that carry no marker of this cluster (or another cluster's), and etcd members whose
    /// cluster stays (their data goes without `member remove`).
    #[arg(long)]
    pub force: bool,
    /// Connection, PKI and cache settings.
    #[command(flatten)]
    pub common: ClusterArgs,
}

/// Arguments of `kubeforge exec`.
#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// The inventory file (`-`: standard input).
    #[arg(short, long)]
    pub inventory: PathBuf,
    /// Hosts to run on: comma-separated host names, roles (`@worker` or `role=worker`), or `all`.
    #[arg(long, default_value = "all")]
    pub hosts: String,
    /// Hosts worked on at once.
    #[arg(long, default_value_t = 10, value_parser = at_least_one)]
    pub concurrency: usize,
    /// Record host keys that are not yet in known_hosts (changed keys are always refused).
    #[arg(long)]
    pub accept_new_host_keys: bool,
    /// Run the command as root (through sudo when the login user is not root).
    #[arg(long)]
    pub sudo: bool,
    /// Stop the command on a host that runs longer than this (`30s`, `5m`).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<std::time::Duration>,
    /// The command, after `--`. One argument is a shell script (`'df -h | tail -n1'`); several are a
    /// program and its arguments, passed literally.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Arguments of `kubeforge check`.
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The inventory file (`-`: standard input).
    #[arg(short, long)]
    pub inventory: PathBuf,
    /// Hosts to check: comma-separated host names, roles (`@worker` or `role=worker`), or `all`.
    #[arg(long, default_value = "all")]
    pub hosts: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: crate::output::Format,
    /// Hosts worked on at once.
    #[arg(long, default_value_t = 10, value_parser = at_least_one)]
    pub concurrency: usize,
    /// Record host keys that are not yet in known_hosts (changed keys are always refused).
    #[arg(long)]
    pub accept_new_host_keys: bool,
    /// Limit for gathering one host's facts.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
    /// Also show each host's effective SSH settings and where each came from (inventory, ssh config
    /// file:line, default).
    #[arg(long)]
    pub show_ssh: bool,
}

fn apply_options(a: ApplyArgs) -> Result<crate::apply::ApplyOptions> {
    let cache_dir = a.cache_dir.unwrap_or_else(crate::artifacts::default_cache_dir);
    let pki_root = crate::pki::resolve_root(&a.inventory, a.pki_dir.as_deref())?;
    Ok(crate::apply::ApplyOptions {
        dry_run: a.dry_run,
        concurrency: a.concurrency,
        connect: connect_options(a.accept_new_host_keys),
        only: a.phases,
        ignore_preflight: a.ignore_preflight_errors,
        hosts: a.hosts,
        batch: a.batch,
        plan_out: a.out,
        plan_in: a.plan,
        verbose: a.verbose,
        ..crate::apply::ApplyOptions::new(pki_root, cache_dir)
    })
}

/// The inventory and PKI directory of a command that works on a cluster (for the expiry warning every such
/// command prints first).
fn cluster_of(c: &Command) -> Option<(&std::path::Path, Option<&std::path::Path>)> {
    use crate::upgrade::UpgradeCommand as U;
    Some(match c {
        Command::Apply(a) | Command::Join(a) => (&a.inventory, a.pki_dir.as_deref()),
        Command::RemoveNode(a) => (&a.inventory, a.common.pki_dir.as_deref()),
        Command::Reset(a) => (&a.inventory, a.common.pki_dir.as_deref()),
        Command::Status(a) | Command::Audit(a) => (&a.inventory, a.common.pki_dir.as_deref()),
        Command::Backup(a) => (&a.inventory, a.common.pki_dir.as_deref()),
        Command::Restore(a) => (&a.inventory, a.common.pki_dir.as_deref()),
        Command::State(StateCommand::Pull { inventory, common }) => (inventory, common.pki_dir.as_deref()),
        Command::Upgrade(U::Plan(a)) => (&a.inventory, a.common.pki_dir.as_deref()),
        Command::Upgrade(U::Apply(a)) => (&a.inventory, a.common.pki_dir.as_deref()),
        Command::Upgrade(U::Rollback(a)) => (&a.inventory, a.common.pki_dir.as_deref()),
        Command::Maintain(a) => (&a.inventory, a.common.pki_dir.as_deref()),
        Command::ReplaceNode(a) => (&a.inventory, a.common.pki_dir.as_deref()),
        Command::Etcd(e) => {
            use crate::etcd::EtcdCommand as E;
            match e {
                E::Status(a) => (&a.inventory, a.common.pki_dir.as_deref()),
                E::Defrag(a) => (&a.inventory, a.common.pki_dir.as_deref()),
                E::Alarms(a) => (&a.inventory, a.common.pki_dir.as_deref()),
            }
        }
        Command::Rotate(crate::rotate::RotateCommand::EncryptionKey(a)) => {
            (&a.inventory, a.common.pki_dir.as_deref())
        }
        Command::Rotate(crate::rotate::RotateCommand::ServiceAccountKey(a)) => {
            (&a.inventory, a.common.pki_dir.as_deref())
        }
        Command::Rotate(crate::rotate::RotateCommand::Ca(a)) => (&a.inventory, a.common.pki_dir.as_deref()),
        Command::Kubeconfig(k) => {
            use crate::certs::KubeconfigCommand as K;
            let t = match k {
                K::Admin(a) => &a.target,
                K::User(a) | K::Bundle(a) => &a.target,
            };
            (&t.inventory, t.pki_dir.as_deref())
        }
        _ => return None,
    })
}

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> Result<i32> {
    if let Some((inventory, pki_dir)) = cluster_of(&cli.command) {
        if let Ok(root) = crate::pki::resolve_root(inventory, pki_dir) {
            crate::certs::warn_expiring(inventory, &root);
        }
    }
    match cli.command {
        Command::Apply(a) => crate::apply::run(&a.inventory.clone(), apply_options(a)?),
        Command::Join(a) => crate::lifecycle::join(&a.inventory.clone(), apply_options(a)?),
        Command::Status(a) => crate::status::run(&a.inventory, a.common.options(&a.inventory)?, a.output),
        Command::Audit(a) => crate::audit::run(&a.inventory, a.common.options(&a.inventory)?, a.output),
        Command::Reset(a) => {
            let consent = Consent::from_flags("reset", a.dry_run, a.yes)?;
            let mut apply = a.common.options(&a.inventory)?;
            apply.hosts = a.hosts;
            crate::lifecycle::reset(
                &a.inventory,
                crate::lifecycle::ResetOptions { consent, force: a.force, apply },
            )
        }
        Command::RemoveNode(a) => {
            let consent = Consent::from_flags("remove-node", a.dry_run, a.yes)?;
            let mut apply = a.common.options(&a.inventory)?;
            apply.ignore_preflight = vec!["all".into()];
            let mut options = crate::lifecycle::RemoveOptions {
                node: a.node,
                force: a.force,
                drain_timeout: a.drain_timeout,
                apply,
                replacing: false,
                skip_drain: false,
            };
            options.apply.dry_run = consent != Consent::Given;
            // One session (one connection per host) for the preview and the removal it asks about.
            let session = crate::session::Session::open(&a.inventory, options.apply.clone())?;
            let shown = crate::lifecycle::remove_node_in(&session, options.clone())?;
            match consent {
                Consent::Preview => Ok(shown),
                Consent::Ask
                    if !crate::prompt::ask(&format!("Remove {} from the cluster?", options.node))? =>
                {
                    println!("remove-node: nothing was changed");
                    Ok(0)
                }
                Consent::Ask => {
                    options.apply.dry_run = false;
                    session.next_pass();
                    crate::lifecycle::remove_node_in(&session, options)
                }
                Consent::Given => Ok(shown),
            }
        }
        Command::Backup(a) => crate::restore::run_backup(
            &a.inventory,
            crate::restore::BackupOptions {
                output: a.out,
                passphrase_env: a.passphrase_env,
                unencrypted: a.unencrypted,
                apply: a.common.options(&a.inventory)?,
            },
        ),
        Command::Restore(a) => {
            let consent = Consent::from_flags("restore", a.dry_run, a.yes)?;
            let mut apply = a.common.options(&a.inventory)?;
            apply.ignore_preflight = a.ignore_preflight_errors;
            crate::restore::run_restore(
                &a.inventory,
                crate::restore::RestoreOptions {
                    from: a.from,
                    passphrase_env: a.passphrase_env,
                    consent,
                    replace_pki: a.replace_pki,
                    apply,
                },
            )
        }
        Command::State(StateCommand::Pull { inventory, common }) => {
            crate::lifecycle::state_pull(&inventory, &common.options(&inventory)?)
        }
        Command::Upgrade(c) => crate::upgrade::run(c),
        Command::Maintain(a) => crate::maintain::run(a),
        Command::ReplaceNode(a) => crate::replace::run(a),
        Command::Etcd(c) => crate::etcd::run(c),
        Command::Rotate(c) => crate::rotate::run(c),
        Command::Certs(c) => crate::certs::run_certs(c),
        Command::Lab(c) => crate::lab::run_command(c),
        Command::Kubeconfig(c) => crate::certs::run_kubeconfig(c),
        Command::Phases { workflow } => {
            let lines = crate::workflow::listing(&workflow).ok_or_else(|| {
                crate::Error::usage(
                    format!("unknown workflow `{workflow}`"),
                    Some(&format!("workflows: {}", crate::workflow::NAMES.join(", "))),
                )
            })?;
            for l in lines {
                println!("{l}");
            }
            Ok(0)
        }
        Command::ApiLb { listen, backends, ca_file, health_interval } => {
            crate::apilb::run(listen, backends, ca_file.as_deref(), health_interval)
                .map(|()| 0)
                .map_err(|e| crate::Error::msg(e, None))
        }
        Command::Version { output } => print_version(output),
        Command::Completion { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "kubeforge", &mut std::io::stdout());
            Ok(0)
        }
        Command::Man { out } => write_man_pages(&out),
        Command::Validate { inventory, output } => {
            let model = crate::model::ClusterModel::load(&inventory)?;
            if output.is_document() {
                crate::output::print(output, "Validation", &ValidationDocument::of(&inventory, &model))?;
                return Ok(0);
            }
            println!(
                "{}: valid — cluster `{}`, Kubernetes {}, {} control plane(s), {} etcd member(s), {} node(s), endpoint {} ({})",
                crate::inventory::display_path(&inventory).display(),
                model.name,
                model.versions.kubernetes,
                model.control_planes().count(),
                model.etcd_members().count(),
                model.nodes().count(),
                model.endpoint.external_url(),
                model.endpoint.mode,
            );
            Ok(0)
        }
        Command::Artifacts { command } => crate::artifacts::command::run(command),
        Command::Inventory(c) => crate::inventory::init::run(c),
        Command::Exec(a) => crate::adhoc::run_exec(crate::adhoc::ExecOptions {
            inventory: a.inventory,
            hosts: a.hosts,
            concurrency: a.concurrency,
            connect: connect_options(a.accept_new_host_keys),
            sudo: a.sudo,
            timeout: a.timeout,
            command: a.command,
        }),
        Command::Check(a) => crate::adhoc::check::run(crate::adhoc::check::CheckOptions {
            inventory: a.inventory,
            hosts: a.hosts,
            concurrency: a.concurrency,
            connect: connect_options(a.accept_new_host_keys),
            timeout: a.timeout,
            output: a.output,
            show_ssh: a.show_ssh,
        }),
    }
}

/// The `Validation` document of `validate -o json|yaml` (errors go to standard error and exit 2, as in
/// the table form).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ValidationDocument {
    inventory: String,
    valid: bool,
    cluster: String,
    kubernetes_version: String,
    control_planes: Vec<String>,
    etcd_members: Vec<String>,
    nodes: Vec<String>,
    endpoint: String,
    endpoint_mode: String,
}

impl ValidationDocument {
    fn of(inventory: &std::path::Path, m: &crate::model::ClusterModel) -> Self {
        let names =
            |it: &mut dyn Iterator<Item = &crate::model::HostModel>| it.map(|h| h.name.clone()).collect();
        ValidationDocument {
            inventory: crate::inventory::display_path(inventory).display().to_string(),
            valid: true,
            cluster: m.name.clone(),
            kubernetes_version: m.versions.kubernetes.to_string(),
            control_planes: names(&mut m.control_planes()),
            etcd_members: names(&mut m.etcd_members()),
            nodes: names(&mut m.nodes()),
            endpoint: m.endpoint.external_url(),
            endpoint_mode: m.endpoint.mode.to_string(),
        }
    }
}

/// The `Version` document.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct VersionDocument {
    version: &'static str,
    commit: &'static str,
    /// The Kubernetes minors kubeforge installs, oldest first (`v1.35`).
    kubernetes_minors: Vec<String>,
}

fn print_version(format: crate::output::Format) -> Result<i32> {
    let doc = VersionDocument {
        version: env!("CARGO_PKG_VERSION"),
        commit: env!("KUBEFORGE_COMMIT"),
        kubernetes_minors: crate::inventory::validate::SUPPORTED_MINORS.map(|m| format!("v1.{m}")).collect(),
    };
    if format.is_document() {
        crate::output::print(format, "Version", &doc)?;
    } else {
        println!("kubeforge {} (commit {})", doc.version, doc.commit);
        println!("installs Kubernetes {}", doc.kubernetes_minors.join(", "));
    }
    Ok(0)
}

/// `kubeforge man --out DIR`: one page for the program and one per command (`kubeforge-upgrade-apply.1`).
fn write_man_pages(dir: &std::path::Path) -> Result<i32> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(format!("creating {}", dir.display()), e))?;
    fn write(cmd: clap::Command, name: String, dir: &std::path::Path, n: &mut usize) -> Result<()> {
        let cmd = cmd.name(name.clone()).bin_name(name.replace('-', " "));
        let path = dir.join(format!("{name}.1"));
        let mut file = std::fs::File::create(&path)
            .map_err(|e| crate::Error::io(format!("writing {}", path.display()), e))?;
        clap_mangen::Man::new(cmd.clone())
            .render(&mut file)
            .map_err(|e| crate::Error::io(format!("writing {}", path.display()), e))?;
        *n += 1;
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            write(sub.clone(), format!("{name}-{}", sub.get_name()), dir, n)?;
        }
        Ok(())
    }
    let mut n = 0;
    let mut root = Cli::command();
    root.build();
    write(root, "kubeforge".into(), dir, &mut n)?;
    println!("man: {n} page(s) written to {}", dir.display());
    Ok(0)
}
