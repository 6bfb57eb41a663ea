//! `kubeforge inventory init --from-ssh-config FILE|-`: writes a commented inventory from an OpenSSH client
//! config, such as the one `vagrant ssh-config` prints. Every `Host` entry that names one host (not a
//! pattern) becomes a host, with the settings the whole config gives it (first value wins, `Host *` and
//! `Match` included), written out in full so the inventory does not depend on the config afterwards.
//!
//! Roles come from `--roles NAME=ROLE,ROLE`; without any, the first host is the control plane and etcd
//! member and the others are workers (a single host gets all three roles). The text is validated before
//! it is written. With `--accept-new-host-keys` each host (and its jump host) is contacted once and its
//! host key is pinned as `ssh.hostKey`; without it, nothing is contacted.

use super::schema::{BastionSpec, ClusterSpec, HostSpec, Inventory, SshSpec};
use crate::sshconfig::{self, HostConfig, JumpSpec, Proxy, SshConfig, StrictHostKeyChecking};
use crate::transport::known_hosts;
use crate::transport::ssh::{ConnectOptions, SshTarget, SshTransport};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `kubeforge inventory ...`.
#[derive(Debug, clap::Subcommand)]
pub enum InventoryCommand {
    /// Write an inventory from an OpenSSH client config (what `vagrant ssh-config` prints, or
    /// ~/.ssh/config). Nothing is contacted unless --accept-new-host-keys is given.
    Init(InitArgs),
}

/// Arguments of `kubeforge inventory init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The OpenSSH client config to read, or `-` for standard input.
    #[arg(long, value_name = "FILE|-")]
    pub from_ssh_config: PathBuf,
    /// A host's roles, `NAME=ROLE,ROLE` (NAME is the `Host` alias or the node name); repeat per host.
    /// Without any, the first host is `control-plane,etcd` and the others are `worker`.
    #[arg(long = "roles", value_name = "NAME=ROLES")]
    pub roles: Vec<String>,
    /// A host's address on the network the nodes share, `NAME=IP`, when its `HostName` is not (a forwarded
    /// port on 127.0.0.1, as VirtualBox machines have); repeat per host.
    #[arg(long = "internal-address", value_name = "NAME=IP")]
    pub internal_addresses: Vec<String>,
    /// The cluster name.
    #[arg(long, default_value = "kubeforge")]
    pub cluster_name: String,
    /// The Kubernetes version.
    #[arg(long, default_value = crate::inventory::validate::DEFAULT_KUBERNETES_VERSION)]
    pub kubernetes_version: String,
    /// Write the inventory to this file (it must not exist yet) instead of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Connect once to every host and pin its host key (`ssh.hostKey`) in the inventory.
    #[arg(long)]
    pub accept_new_host_keys: bool,
    /// Install from this release bundle (a directory or `.tar.gz` with a `manifest.json`, as for an
    /// air-gapped site) and pin the etcd and kubectl versions it holds.
    #[arg(long, value_name = "DIR")]
    pub bundle: Option<PathBuf>,
    /// The hosts are VMs under software emulation (QEMU without KVM, e.g. Vagrant's libvirt `qemu` driver):
    /// allow 60 s to connect and relax etcd's raft timing and the apiserver's etcd readiness timeout, as
    /// `kubeforge lab up` does for its own emulated VMs.
    #[arg(long)]
    pub emulated: bool,
}

/// Runs `kubeforge inventory ...`; returns the exit code.
pub fn run(c: InventoryCommand) -> Result<i32> {
    match c {
        InventoryCommand::Init(a) => match init(&a) {
            Ok(code) => Ok(code),
            Err(Invalid(e)) => {
                eprintln!("{}", e.report());
                Ok(crate::error::EXIT_INVALID_INPUT)
            }
        },
    }
}

/// An error in the input: reported with exit code 2.
struct Invalid(Error);

impl From<Error> for Invalid {
    fn from(e: Error) -> Self {
        Invalid(e)
    }
}

fn invalid(message: impl Into<String>, hint: Option<&str>) -> Invalid {
    Invalid(Error::msg(message, hint))
}

/// One host as read from the config.
#[derive(Debug, Clone)]
struct Found {
    alias: String,
    name: String,
    address: String,
    port: u16,
    user: Option<String>,
    identity_files: Vec<String>,
    bastion: Option<BastionSpec>,
    /// The `Host` alias of the jump host, when there is one.
    jump_alias: Option<String>,
    known_hosts: Option<String>,
    /// What the config says that turns host key checking off (for a comment).
    unchecked: Vec<String>,
}

/// A node name from a `Host` alias: lower case, other characters as `-`.
fn node_name(alias: &str) -> String {
    let s: String = alias
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '-' })
        .collect();
    s.trim_matches(|c| c == '-' || c == '.').to_string()
}

fn absolute(p: &str) -> String {
    let path = Path::new(p);
    if path.is_absolute() || p.starts_with("~/") {
        return p.to_string();
    }
    std::env::current_dir().map(|d| d.join(path).display().to_string()).unwrap_or_else(|_| p.to_string())
}

fn tokens(home: &Path, original: &str, address: &str, port: u16, user: &str) -> sshconfig::Tokens {
    sshconfig::Tokens {
        home: home.display().to_string(),
        host: address.into(),
        original_host: original.into(),
        port,
        remote_user: user.into(),
        local_user: sshconfig::local_user(),
    }
}

fn hostname(alias: &str, hc: &HostConfig) -> std::result::Result<String, Invalid> {
    match &hc.hostname {
        Some(h) => {
            sshconfig::expand(&h.value, &sshconfig::Tokens { host: alias.into(), ..Default::default() })
                .map_err(|m| invalid(format!("{}: {m}", h.at), None))
        }
        None => Ok(alias.to_string()),
    }
}

fn read_host(cfg: &SshConfig, alias: &str, home: &Path) -> std::result::Result<Found, Invalid> {
    let q = sshconfig::Query { user: None, default_user: "root".into(), local_user: sshconfig::local_user() };
    let hc = cfg.lookup(alias, &q).map_err(|e| invalid(e.to_string(), None))?;
    let address = hostname(alias, &hc)?;
    let port = hc.port.as_ref().map(|p| p.value).unwrap_or(22);
    let user = hc.user.as_ref().map(|u| u.value.clone());
    let t = tokens(home, alias, &address, port, user.as_deref().unwrap_or("root"));
    let expand = |v: &sshconfig::At<String>| {
        sshconfig::expand(&v.value, &t)
            .map(|p| absolute(&p))
            .map_err(|m| invalid(format!("{}: {m}", v.at), None))
    };
    let mut identity_files = Vec::new();
    for f in &hc.identity_files {
        identity_files.push(expand(f)?);
    }
    let mut unchecked = Vec::new();
    if let Some(s) = &hc.strict_host_key_checking {
        if s.value == StrictHostKeyChecking::No {
            unchecked.push("StrictHostKeyChecking no".to_string());
        }
    }
    let known_hosts = match &hc.user_known_hosts_files {
        Some(f) if f.value[0] == "/dev/null" => {
            unchecked.push("UserKnownHostsFile /dev/null".to_string());
            None
        }
        Some(f) => Some(expand(&sshconfig::At { value: f.value[0].clone(), at: f.at.clone() })?),
        None => None,
    };
    let mut jump_alias = None;
    let bastion = match &hc.proxy {
        None | Some(sshconfig::At { value: Proxy::None, .. }) => None,
        Some(sshconfig::At { value: Proxy::Command(c), at }) => {
            return Err(invalid(
                format!(
                    "{at}: host `{alias}` is reached with `ProxyCommand {c}`, which kubeforge does not run"
                ),
                Some("use ProxyJump, or write the inventory by hand"),
            ))
        }
        Some(sshconfig::At { value: Proxy::Jump(list), at }) => {
            let chain = || {
                invalid(
                    format!("{at}: host `{alias}` is reached through a chain of jump hosts ({}), which an inventory's `bastion` cannot hold", list.join(",")),
                    Some("write the inventory by hand with `ssh.configFile` pointing at this config: kubeforge follows ProxyJump chains from it"),
                )
            };
            if list.len() != 1 {
                return Err(chain());
            }
            let spec =
                JumpSpec::parse(&list[0]).map_err(|m| invalid(format!("{at}: ProxyJump {m}"), None))?;
            let jq = sshconfig::Query { user: spec.user.clone(), ..q.clone() };
            let jc = cfg.lookup(&spec.host, &jq).map_err(|e| invalid(e.to_string(), None))?;
            if matches!(&jc.proxy, Some(sshconfig::At { value: Proxy::Jump(_) | Proxy::Command(_), .. })) {
                return Err(chain());
            }
            jump_alias = Some(spec.host.clone());
            let jaddr = hostname(&spec.host, &jc)?;
            let jport = spec.port.or(jc.port.as_ref().map(|p| p.value));
            let juser = spec.user.clone().or(jc.user.as_ref().map(|u| u.value.clone()));
            let jt =
                tokens(home, &spec.host, &jaddr, jport.unwrap_or(22), juser.as_deref().unwrap_or("root"));
            let jid = match jc.identity_files.first() {
                Some(f) => Some(
                    sshconfig::expand(&f.value, &jt)
                        .map(|p| absolute(&p))
                        .map_err(|m| invalid(format!("{}: {m}", f.at), None))?,
                ),
                None => None,
            };
            Some(BastionSpec {
                address: jaddr,
                port: jport.filter(|p| *p != 22),
                user: juser,
                identity_file: jid.filter(|j| identity_files.first() != Some(j)),
                host_key: None,
            })
        }
    };
    Ok(Found {
        alias: alias.to_string(),
        name: node_name(alias),
        address,
        port,
        user,
        identity_files,
        bastion,
        jump_alias,
        known_hosts,
        unchecked,
    })
}

/// `NAME=ROLE,ROLE` arguments by name.
fn parse_roles(
    args: &[String],
    found: &[Found],
) -> std::result::Result<BTreeMap<usize, Vec<String>>, Invalid> {
    let mut out = BTreeMap::new();
    for a in args {
        let Some((name, roles)) = a.split_once('=') else {
            return Err(invalid(
                format!("--roles {a}: write NAME=ROLE,ROLE"),
                Some("e.g. --roles node1=control-plane,etcd"),
            ));
        };
        let Some(i) = found.iter().position(|f| f.alias == name || f.name == name) else {
            let names = found.iter().map(|f| f.alias.as_str()).collect::<Vec<_>>().join(", ");
            return Err(invalid(
                format!("--roles {a}: the ssh config has no host `{name}`"),
                Some(&format!("hosts: {names}")),
            ));
        };
        let roles: Vec<String> =
            roles.split(',').map(|r| r.trim().to_string()).filter(|r| !r.is_empty()).collect();
        if out.insert(i, roles).is_some() {
            return Err(invalid(format!("--roles names `{name}` twice"), None));
        }
    }
    Ok(out)
}

/// `--internal-address NAME=IP`, by host index: each names a host of the ssh config, once, with an IP.
fn parse_internal_addresses(
    args: &[String],
    found: &[Found],
) -> std::result::Result<BTreeMap<usize, String>, Invalid> {
    let mut out = BTreeMap::new();
    for a in args {
        let Some((name, ip)) = a.split_once('=') else {
            return Err(invalid(
                format!("--internal-address {a}: write NAME=IP"),
                Some("e.g. --internal-address node1=192.168.56.11"),
            ));
        };
        let Some(i) = found.iter().position(|f| f.alias == name || f.name == name) else {
            let names: Vec<&str> = found.iter().map(|f| f.alias.as_str()).collect();
            let guess = super::explain::did_you_mean(name, &names, &[]);
            return Err(invalid(
                format!("--internal-address {a}: the ssh config has no host `{name}`"),
                Some(&format!("{guess}hosts: {}", names.join(", "))),
            ));
        };
        if ip.trim().parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(
                format!("--internal-address {a}: `{}` is not an IP address", ip.trim()),
                Some("give the IP address the machine has on the network the nodes share"),
            ));
        }
        if out.insert(i, ip.trim().to_owned()).is_some() {
            return Err(invalid(format!("--internal-address names `{name}` twice"), None));
        }
    }
    Ok(out)
}

fn build(a: &InitArgs, found: &[Found], roles: &BTreeMap<usize, Vec<String>>) -> Inventory {
    let common = |f: &dyn Fn(&Found) -> Option<String>| -> Option<String> {
        let first = f(&found[0])?;
        found.iter().all(|h| f(h).as_ref() == Some(&first)).then_some(first)
    };
    let user = common(&|h| h.user.clone());
    let identity = common(&|h| h.identity_files.first().cloned());
    let known = common(&|h| h.known_hosts.clone());
    let hosts = found
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let r = match roles.get(&i) {
                Some(r) => r.clone(),
                None if !roles.is_empty() => vec!["worker".into()],
                None if found.len() == 1 => vec!["control-plane".into(), "etcd".into(), "worker".into()],
                None if i == 0 => vec!["control-plane".into(), "etcd".into()],
                None => vec!["worker".into()],
            };
            let ssh = SshSpec {
                user: if user.is_some() { None } else { f.user.clone() },
                port: Some(f.port).filter(|p| *p != 22),
                identity_file: if identity.is_some() { None } else { f.identity_files.first().cloned() },
                known_hosts: if known.is_some() { None } else { f.known_hosts.clone() },
                bastion: f.bastion.clone(),
                ..Default::default()
            };
            let internal = a.internal_addresses.iter().find_map(|x| {
                let (n, ip) = x.split_once('=')?;
                (n == f.alias || n == f.name).then(|| ip.trim().to_owned())
            });
            HostSpec {
                name: f.name.clone(),
                address: f.address.clone(),
                internal_address: internal,
                roles: r,
                ssh: Some(ssh).filter(|s| *s != SshSpec::default()),
                ..Default::default()
            }
        })
        .collect();
    Inventory {
        cluster: ClusterSpec {
            name: a.cluster_name.clone(),
            kubernetes_version: a.kubernetes_version.clone(),
            extra_args: if a.emulated { crate::lab::emulation_extra_args() } else { BTreeMap::new() },
            ..Default::default()
        },
        ssh: SshSpec {
            user,
            identity_file: identity,
            known_hosts: known,
            connect_timeout: a.emulated.then(|| crate::lab::EMULATED_CONNECT_TIMEOUT.to_owned()),
            ..Default::default()
        },
        hosts,
    }
}

/// A YAML scalar, quoted when plain text would not read back as the same string.
fn scalar(s: &str) -> String {
    serde_yaml::to_string(s).map(|t| t.trim_end().to_string()).unwrap_or_else(|_| format!("{s:?}"))
}

fn ssh_lines(out: &mut String, ssh: &SshSpec, indent: &str) {
    if let Some(u) = &ssh.user {
        let _ = writeln!(out, "{indent}user: {}", scalar(u));
    }
    if let Some(p) = ssh.port {
        let _ = writeln!(out, "{indent}port: {p}");
    }
    if let Some(f) = &ssh.identity_file {
        let _ = writeln!(out, "{indent}identityFile: {}", scalar(f));
    }
    if let Some(k) = &ssh.known_hosts {
        let _ = writeln!(out, "{indent}knownHosts: {}", scalar(k));
    }
    if let Some(b) = &ssh.bastion {
        let _ = writeln!(out, "{indent}bastion:");
        let _ = writeln!(out, "{indent}  address: {}", scalar(&b.address));
        if let Some(p) = b.port {
            let _ = writeln!(out, "{indent}  port: {p}");
        }
        if let Some(u) = &b.user {
            let _ = writeln!(out, "{indent}  user: {}", scalar(u));
        }
        if let Some(f) = &b.identity_file {
            let _ = writeln!(out, "{indent}  identityFile: {}", scalar(f));
        }
        if let Some(k) = &b.host_key {
            let _ = writeln!(out, "{indent}  hostKey: {}", scalar(k));
        }
    }
    if let Some(k) = &ssh.host_key {
        let _ = writeln!(out, "{indent}hostKey: {}", scalar(k));
    }
}

fn render(
    a: &InitArgs,
    source: &str,
    inv: &Inventory,
    found: &[Found],
    jumps: &[String],
    fingerprints: &BTreeMap<String, String>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# Written by `kubeforge inventory init` from the OpenSSH client config {source}.");
    let _ = writeln!(
        out,
        "# Each `Host` entry that names one host became a host here, with every setting the config gives it."
    );
    if !jumps.is_empty() {
        let _ = writeln!(out, "# Jump hosts (ProxyJump) are not cluster hosts: {}.", jumps.join(", "));
    }
    if a.roles.is_empty() {
        let _ = writeln!(
            out,
            "# Roles: no --roles were given, so the first host is the control plane and etcd member and the\n\
             # others are workers (a single host gets all three roles). Adjust them to your cluster."
        );
    } else {
        let _ = writeln!(out, "# Roles: from --roles; hosts not named there are workers.");
    }
    let _ = writeln!(out, "cluster:");
    let _ = writeln!(out, "  name: {}", scalar(&inv.cluster.name));
    let _ = writeln!(out, "  kubernetesVersion: {}", scalar(&inv.cluster.kubernetes_version));
    if let Some(super::schema::ReleaseSourceSpec::Bundle { path }) = &inv.cluster.release_source {
        let _ = writeln!(
            out,
            "  # --bundle: binaries from this release bundle, and the versions it holds pinned"
        );
        let _ = writeln!(out, "  releaseSource:\n    type: bundle\n    path: {}", scalar(path));
        let c = &inv.cluster.components;
        if c.etcd.is_some() || c.kubectl.is_some() {
            let _ = writeln!(out, "  components:");
            for (k, v) in [("etcd", &c.etcd), ("kubectl", &c.kubectl)] {
                if let Some(v) = v {
                    let _ = writeln!(out, "    {k}: {}", scalar(v));
                }
            }
        }
    }
    if !inv.cluster.extra_args.is_empty() {
        let _ = writeln!(
            out,
            "  # --emulated: software-emulated VMs are starved of CPU for seconds at a time; etcd's raft timing\n\
             \x20 # and the apiserver's wait for etcd are relaxed so that a busy member stalls nothing"
        );
        let _ = writeln!(out, "  extraArgs:");
        for (component, flags) in &inv.cluster.extra_args {
            let _ = writeln!(out, "    {component}:");
            for (k, v) in flags {
                let _ = writeln!(out, "      {k}: {}", scalar(v));
            }
        }
    }
    let _ = writeln!(out, "ssh:");
    let _ = writeln!(
        out,
        "  # configFile is not set: ~/.ssh/config, when it exists, fills what is left unset here (these\n\
         \x20 # values win over it). Set `configFile: none` to read no OpenSSH config."
    );
    let mut unchecked: Vec<&str> =
        found.iter().flat_map(|f| f.unchecked.iter().map(String::as_str)).collect();
    unchecked.sort();
    unchecked.dedup();
    if !unchecked.is_empty() {
        let pinned = found.iter().all(|f| fingerprints.contains_key(&f.name));
        let _ = writeln!(
            out,
            "  # The ssh config turns host key checking off:\n  #   {}.\n  # kubeforge always checks host keys: {}",
            unchecked.join(", "),
            if pinned {
                "every host's key is pinned below (ssh.hostKey)."
            } else {
                "pin them with `kubeforge inventory init\n  # --accept-new-host-keys`, or record them in ~/.ssh/known_hosts with the first\n  \
                 # `kubeforge apply --accept-new-host-keys`."
            }
        );
    }
    ssh_lines(&mut out, &inv.ssh, "  ");
    if let Some(t) = &inv.ssh.connect_timeout {
        let _ =
            writeln!(out, "  connectTimeout: {}  # --emulated: the SSH handshake is slow there", scalar(t));
    }
    let _ = writeln!(out, "hosts:");
    for (h, f) in inv.hosts.iter().zip(found) {
        let _ = writeln!(out, "  - name: {}", scalar(&h.name));
        if f.alias != h.name {
            out.truncate(out.len() - 1);
            let _ = writeln!(out, "  # `Host {}` in the ssh config", f.alias);
        }
        let _ = writeln!(out, "    address: {}", scalar(&h.address));
        if let Some(ip) = &h.internal_address {
            let _ = writeln!(out, "    internalAddress: {}", scalar(ip));
        }
        let _ = writeln!(out, "    roles: [{}]", h.roles.join(", "));
        if let Some(ssh) = &h.ssh {
            let _ = writeln!(out, "    ssh:");
            if let Some(fp) = fingerprints.get(&h.name) {
                let _ = writeln!(
                    out,
                    "      # host key {fp}, read from the host by `inventory init --accept-new-host-keys`"
                );
            }
            ssh_lines(&mut out, ssh, "      ");
        }
        if f.identity_files.len() > 1 {
            let _ = writeln!(
                out,
                "    # the ssh config also lists {} for this host; an inventory holds one identityFile",
                f.identity_files[1..].join(", ")
            );
        }
    }
    out
}

/// Connects once to every host (and jump host) of `inv` and returns the host keys they presented,
/// by `[address]:port` pattern, with their fingerprints.
fn capture_keys(inv: &Inventory, dir: &Path) -> Result<BTreeMap<String, String>> {
    let tmp = tempfile_dir()?;
    let kh = tmp.join("known_hosts");
    let mut probe = inv.clone();
    probe.ssh.known_hosts = Some(kh.display().to_string());
    for h in &mut probe.hosts {
        if let Some(s) = &mut h.ssh {
            s.known_hosts = None;
            s.host_key = None;
        }
    }
    let opts = ConnectOptions {
        accept_new_host_keys: true,
        connect_timeout: Duration::from_secs(15),
        ..Default::default()
    };
    let targets: Vec<SshTarget> = probe
        .hosts
        .iter()
        .map(|h| SshTarget::from_inventory(&probe, dir, h, &opts))
        .collect::<std::result::Result<_, _>>()?;
    let rt = tokio::runtime::Runtime::new().map_err(|e| Error::io("starting the async runtime", e))?;
    let results = rt.block_on(futures::future::join_all(targets.into_iter().map(|t| async move {
        let name = t.name.clone();
        let r = SshTransport::connect(t).await;
        if let Ok(c) = &r {
            c.close().await;
        }
        (name, r.err())
    })));
    for (name, err) in results {
        if let Some(e) = err {
            eprintln!("note: {name}: {e} (the host key, if one was presented, is pinned all the same)");
        }
    }
    let text = std::fs::read_to_string(&kh).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&tmp);
    let mut keys = BTreeMap::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        if let (Some(pat), Some(kind), Some(b64)) = (f.next(), f.next(), f.next()) {
            keys.entry(pat.to_string()).or_insert_with(|| format!("{kind} {b64}"));
        }
    }
    Ok(keys)
}

fn tempfile_dir() -> Result<PathBuf> {
    let p =
        std::env::temp_dir().join(format!("kubeforge-init-{}-{}", std::process::id(), rand::random::<u32>()));
    std::fs::create_dir_all(&p).map_err(|e| Error::io(format!("creating {}", p.display()), e))?;
    Ok(p)
}

fn fingerprint(key: &str) -> String {
    russh::keys::PublicKey::from_openssh(key).map(|k| known_hosts::fingerprint(&k)).unwrap_or_default()
}

fn init(a: &InitArgs) -> std::result::Result<i32, Invalid> {
    let home = dirs::home_dir().unwrap_or_default();
    let from_stdin = a.from_ssh_config.as_os_str() == "-";
    let (text, source) = if from_stdin {
        let mut t = String::new();
        std::io::stdin()
            .read_to_string(&mut t)
            .map_err(|e| Error::io("reading the ssh config from standard input", e))?;
        (t, "read from standard input".to_string())
    } else {
        let p = &a.from_ssh_config;
        let t = std::fs::read_to_string(p).map_err(|e| Error::io(format!("reading {}", p.display()), e))?;
        (t, absolute(&p.display().to_string()))
    };
    let cfg = SshConfig::parse(&text, &a.from_ssh_config, &home).map_err(|e| invalid(e.to_string(), None))?;
    let aliases = cfg.concrete_hosts();
    if aliases.is_empty() {
        return Err(invalid(
            format!("the ssh config {source} has no `Host` entry that names one host"),
            Some("give it `Host NAME` entries with HostName, User, Port, IdentityFile (as `vagrant ssh-config` prints)"),
        ));
    }
    let mut found = Vec::new();
    for alias in &aliases {
        let f = read_host(&cfg, alias, &home)?;
        if f.name.is_empty() || !super::validate::is_dns1123_subdomain(&f.name) {
            return Err(invalid(
                format!("`Host {alias}` gives no usable node name"),
                Some("rename the Host entry to letters, digits and `-`"),
            ));
        }
        if let Some(o) = found.iter().find(|o: &&Found| o.name == f.name) {
            return Err(invalid(
                format!("`Host {}` and `Host {alias}` give the same node name `{}`", o.alias, f.name),
                None,
            ));
        }
        found.push(f);
    }
    // A host that others are reached through is a jump host, not a cluster host (unless --roles names it).
    let named = |f: &Found| {
        a.roles.iter().any(|r| r.split_once('=').is_some_and(|(n, _)| n == f.alias || n == f.name))
    };
    let jump_aliases: Vec<String> = found.iter().filter_map(|f| f.jump_alias.clone()).collect();
    let (jumps, found): (Vec<Found>, Vec<Found>) = found
        .into_iter()
        .partition(|f| jump_aliases.iter().any(|j| j.eq_ignore_ascii_case(&f.alias)) && !named(f));
    let jumps: Vec<String> = jumps.into_iter().map(|f| f.alias).collect();
    if found.is_empty() {
        return Err(invalid("every host of the ssh config is a jump host", None));
    }
    let internal = parse_internal_addresses(&a.internal_addresses, &found)?;
    // Hosts are told apart by address and port: machines behind ports forwarded on one address (VirtualBox,
    // the usual Vagrant provider) are distinct, but the cluster cannot use that address, so each needs the
    // address it has on the network the nodes share.
    let mut by_endpoint: BTreeMap<(&str, u16), Vec<&str>> = BTreeMap::new();
    let mut by_addr: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, f) in found.iter().enumerate() {
        by_endpoint.entry((&f.address, f.port)).or_default().push(&f.alias);
        by_addr.entry(&f.address).or_default().push(i);
    }
    if let Some(((addr, port), names)) = by_endpoint.iter().find(|(_, n)| n.len() > 1) {
        return Err(invalid(
            format!("hosts {} are one machine: each is reached at {addr} port {port}", names.join(", ")),
            Some("give each `Host` its own HostName, or its own Port when ports are forwarded"),
        ));
    }
    if let Some((addr, hosts)) =
        by_addr.iter().find(|(_, h)| h.len() > 1 && h.iter().any(|i| !internal.contains_key(i)))
    {
        let missing: Vec<&str> =
            hosts.iter().filter(|i| !internal.contains_key(i)).map(|&i| found[i].alias.as_str()).collect();
        let names: Vec<&str> = hosts.iter().map(|&i| found[i].alias.as_str()).collect();
        return Err(invalid(
            format!(
                "hosts {} share the address {addr} (ports forwarded to each machine); the cluster needs each \
                 machine's own address, which the ssh config does not give for {}",
                names.join(", "),
                missing.join(", ")
            ),
            Some(&format!(
                "give each its address on the network the machines share (e.g. a VirtualBox host-only network): {}",
                missing.iter().map(|m| format!("--internal-address {m}=IP")).collect::<Vec<_>>().join(" ")
            )),
        ));
    }
    let roles = parse_roles(&a.roles, &found)?;
    let mut inv = build(a, &found, &roles);
    if let Some(b) = &a.bundle {
        let path = b.canonicalize().map_err(|e| Error::io(format!("bundle {}", b.display()), e))?;
        inv.cluster.components = crate::lab::bundle_components(&path, &a.kubernetes_version)?;
        inv.cluster.release_source =
            Some(super::schema::ReleaseSourceSpec::Bundle { path: path.display().to_string() });
    }

    let out_dir = match &a.out {
        Some(o) => o
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
        None => PathBuf::from("."),
    };
    if let Some(o) = &a.out {
        if o.exists() {
            return Err(invalid(
                format!("{} exists already", o.display()),
                Some("remove it, or choose another -o"),
            ));
        }
    }
    let mut fingerprints = BTreeMap::new();
    if a.accept_new_host_keys {
        let keys = capture_keys(&inv, &out_dir)?;
        let mut missing = Vec::new();
        for h in &mut inv.hosts {
            let port = h.ssh.as_ref().and_then(|s| s.port).unwrap_or(22);
            let mut ssh = h.ssh.clone().unwrap_or_default();
            match keys.get(&known_hosts::host_pattern(&h.address, port)) {
                Some(k) => {
                    let fp = fingerprint(k);
                    eprintln!("{}: pinned host key {fp} ({}:{port})", h.name, h.address);
                    fingerprints.insert(h.name.clone(), fp);
                    ssh.host_key = Some(k.clone());
                }
                None => missing.push(h.name.clone()),
            }
            if let Some(b) = &mut ssh.bastion {
                if let Some(k) = keys.get(&known_hosts::host_pattern(&b.address, b.port.unwrap_or(22))) {
                    b.host_key = Some(k.clone());
                }
            }
            h.ssh = Some(ssh);
        }
        if !missing.is_empty() {
            let e = Error::msg(
                format!("no host key could be read from {}", missing.join(", ")),
                Some("check that the hosts are up and reachable with these settings; nothing was written"),
            );
            eprintln!("{}", e.report());
            return Ok(crate::error::EXIT_FAILURE);
        }
    }
    let text = render(a, &source, &inv, &found, &jumps, &fingerprints);

    // The text must read back as the inventory it was built from, and be valid.
    let name = a.out.clone().unwrap_or_else(|| PathBuf::from("inventory.yaml"));
    let loaded = super::parse(&name, &text).map_err(|e| Invalid(e.into()))?;
    debug_assert_eq!(loaded.inventory, inv);
    // Key files that do not exist yet are warnings: the machines' keys are often made after the inventory.
    let (warnings, problems): (Vec<_>, Vec<_>) =
        super::validate::validate_new(&loaded.inventory, &out_dir).into_iter().partition(|p| p.warning);
    let line = |p: &super::validate::PathProblem| match &p.hint {
        Some(h) => format!("{}: {}\n    fix: {h}", p.path, p.message),
        None => format!("{}: {}", p.path, p.message),
    };
    for w in &warnings {
        eprintln!("warning: {}", line(w));
    }
    if !problems.is_empty() {
        let list = problems.iter().map(|p| format!("\n  {}", line(p))).collect::<String>();
        return Err(invalid(
            format!("the inventory would not be valid (nothing was written):{list}"),
            Some("fix the ssh config, or the --roles / --internal-address given, as each problem says"),
        ));
    }
    match &a.out {
        Some(o) => {
            std::fs::write(o, &text).map_err(|e| Error::io(format!("writing {}", o.display()), e))?;
            eprintln!(
                "wrote {} ({} host(s)); `kubeforge validate -i {0}` checks it, `kubeforge check -i {0}` connects",
                o.display(),
                inv.hosts.len()
            );
        }
        None => print!("{text}"),
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VAGRANT: &str = "Host default\n  HostName 192.168.121.10\n  User vagrant\n  Port 22\n  \
        UserKnownHostsFile /dev/null\n  StrictHostKeyChecking no\n  PasswordAuthentication no\n  \
        IdentityFile /k/default/private_key\n  IdentitiesOnly yes\n  LogLevel FATAL\n  PubkeyAcceptedKeyTypes +ssh-rsa\n  \
        HostKeyAlgorithms +ssh-rsa\n\n\
        Host worker_1\n  HostName 192.168.121.11\n  User vagrant\n  Port 22\n  \
        UserKnownHostsFile /dev/null\n  StrictHostKeyChecking no\n  IdentityFile /k/worker_1/private_key\n  IdentitiesOnly yes\n";

    fn args(roles: &[&str]) -> InitArgs {
        InitArgs {
            from_ssh_config: "-".into(),
            roles: roles.iter().map(|s| s.to_string()).collect(),
            cluster_name: "lab".into(),
            internal_addresses: Vec::new(),
            kubernetes_version: "v1.35.7".into(),
            out: None,
            accept_new_host_keys: false,
            bundle: None,
            emulated: false,
        }
    }

    fn found(text: &str) -> Vec<Found> {
        let cfg = SshConfig::parse(text, Path::new("-"), Path::new("/nonexistent")).unwrap();
        cfg.concrete_hosts()
            .iter()
            .map(|a| read_host(&cfg, a, Path::new("/nonexistent")).ok().unwrap())
            .collect()
    }

    #[test]
    fn vagrant_hosts_become_hosts_with_default_roles_and_common_settings_at_the_top() {
        let f = found(VAGRANT);
        let inv = build(&args(&[]), &f, &BTreeMap::new());
        assert_eq!(inv.ssh.user.as_deref(), Some("vagrant"));
        assert_eq!(inv.hosts.iter().map(|h| h.name.as_str()).collect::<Vec<_>>(), ["default", "worker-1"]);
        assert_eq!(inv.hosts[0].roles, ["control-plane", "etcd"]);
        assert_eq!(inv.hosts[1].roles, ["worker"]);
        assert_eq!(
            inv.hosts[1].ssh.as_ref().unwrap().identity_file.as_deref(),
            Some("/k/worker_1/private_key")
        );
        assert_eq!(f[0].unchecked, ["StrictHostKeyChecking no", "UserKnownHostsFile /dev/null"]);
        let text = render(&args(&[]), "-", &inv, &f, &[], &BTreeMap::new());
        assert!(text.contains("# `Host worker_1` in the ssh config"), "{text}");
        assert!(text.contains("kubeforge always checks host keys"), "{text}");
        let back = crate::inventory::parse(Path::new("x.yaml"), &text).unwrap();
        assert_eq!(back.inventory, inv, "{text}");
    }

    /// `--emulated` and `--bundle`: the settings `kubeforge lab up` writes for its own emulated VMs, and the
    /// release bundle with its pinned versions, written with comments that say why, and read back alike.
    #[test]
    fn emulated_machines_and_a_bundle_are_written_and_read_back() {
        let f = found(VAGRANT);
        let mut a = args(&[]);
        a.emulated = true;
        let mut inv = build(&a, &f, &BTreeMap::new());
        inv.cluster.release_source =
            Some(crate::inventory::schema::ReleaseSourceSpec::Bundle { path: "/srv/bundle".into() });
        inv.cluster.components.etcd = Some("v3.6.6".into());
        inv.cluster.components.kubectl = Some("v1.35.7".into());
        assert_eq!(inv.ssh.connect_timeout.as_deref(), Some("60s"));
        assert_eq!(inv.cluster.extra_args, crate::lab::emulation_extra_args());
        assert_eq!(inv.cluster.extra_args["etcd"]["election-timeout"], "5000");
        let text = render(&a, "-", &inv, &f, &[], &BTreeMap::new());
        assert!(text.contains("# --emulated: software-emulated VMs"), "{text}");
        assert!(text.contains("  releaseSource:\n    type: bundle\n    path: /srv/bundle\n"), "{text}");
        let back = crate::inventory::parse(Path::new("x.yaml"), &text).unwrap();
        assert_eq!(back.inventory, inv, "{text}");
        // Without the flags none of it is written.
        let plain =
            render(&args(&[]), "-", &build(&args(&[]), &f, &BTreeMap::new()), &f, &[], &BTreeMap::new());
        assert!(
            !plain.contains("extraArgs")
                && !plain.contains("connectTimeout")
                && !plain.contains("releaseSource")
        );
    }

    #[test]
    fn roles_from_the_command_line_and_errors() {
        let f = found(VAGRANT);
        let r = parse_roles(&["worker_1=control-plane,etcd,worker".into()], &f).ok().unwrap();
        let inv = build(&args(&["x"]), &f, &r);
        assert_eq!(inv.hosts[1].roles, ["control-plane", "etcd", "worker"]);
        assert_eq!(inv.hosts[0].roles, ["worker"]);
        let e = parse_roles(&["nope=worker".into()], &f).err().unwrap();
        assert!(e.0.to_string().contains("no host `nope`"));
        // A single host gets every role, so the inventory can run workloads.
        let one = found("Host solo\n  HostName 10.0.0.9\n");
        assert_eq!(
            build(&args(&[]), &one, &BTreeMap::new()).hosts[0].roles,
            ["control-plane", "etcd", "worker"]
        );
    }

    #[test]
    fn a_single_proxyjump_becomes_the_bastion_and_a_chain_is_refused() {
        let f = found(
            "Host n1\n  HostName 10.0.0.1\n  ProxyJump ops@jump:2200\nHost jump\n  HostName 10.9.9.9\n",
        );
        let b = f[0].bastion.as_ref().unwrap();
        assert_eq!((b.address.as_str(), b.port, b.user.as_deref()), ("10.9.9.9", Some(2200), Some("ops")));
        let cfg = SshConfig::parse("Host n1\n  ProxyJump a,b\n", Path::new("-"), Path::new("/")).unwrap();
        let e = read_host(&cfg, "n1", Path::new("/")).err().unwrap();
        assert!(e.0.to_string().contains("chain of jump hosts"), "{}", e.0);
    }
}
