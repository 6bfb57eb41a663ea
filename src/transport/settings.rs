//! Where a host's SSH settings come from: the inventory (host `ssh:` over top-level `ssh:`), then the
//! OpenSSH client config (`ssh.configFile`, default `~/.ssh/config`), then kubeforge's defaults. Each
//! effective setting keeps its source, which `kubeforge check --show-ssh` prints.
//!
//! The inventory `address` is the name looked up in the config (like the argument of `ssh`), so an alias
//! that exists only in the config works; its `HostName` is the address connected to. Jump hosts, from
//! the inventory's `bastion` or from `ProxyJump` (a chain `a,b` is reached in order), get their own
//! config settings; what neither gives them is inherited from the target, as for a bastion before.

use super::known_hosts::HostKeyPolicy;
use super::target::{ConnectOptions, Secret, SshTarget, SudoMode};
use super::TransportError;
use crate::inventory::schema::{BastionSpec, HostSpec, Inventory, SshSpec};
use crate::sshconfig::{self, At, HostConfig, JumpSpec, Proxy, SshConfig, StrictHostKeyChecking};
use std::path::{Path, PathBuf};

/// The value that turns the config file off: `ssh.configFile: none`.
pub const CONFIG_FILE_NONE: &str = "none";

/// One effective setting, as shown by `check --show-ssh`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Setting {
    /// Which hop: empty for the host itself, `jump 1`, `jump 2`, ... for jump hosts (first hop first).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hop: String,
    /// The setting (`address`, `port`, `user`, ...).
    pub setting: String,
    /// Its effective value.
    pub value: String,
    /// `inventory (hosts[0].ssh.port)`, `~/.ssh/config:12`, `default`, `--accept-new-host-keys`.
    pub source: String,
}

/// A host's resolved target with the source of every setting and the notes about the config.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// What the transport uses.
    pub target: SshTarget,
    /// Every effective setting with its source, the host's first, then each jump host's.
    pub settings: Vec<Setting>,
    /// Things the user should know (settings kubeforge maps differently from OpenSSH).
    pub notes: Vec<String>,
}

fn home() -> PathBuf {
    dirs::home_dir().unwrap_or_default()
}

fn expand_path(p: &str, base: &Path) -> PathBuf {
    if let Some(rest) = p.strip_prefix("~/") {
        home().join(rest)
    } else {
        base.join(p)
    }
}

/// The config file the host uses, with its source; `None` when it is turned off or the default is absent.
fn config_path(
    pick: Option<(String, String)>,
    inventory_dir: &Path,
) -> (Option<PathBuf>, String, String, bool) {
    match pick {
        Some((v, src)) if v == CONFIG_FILE_NONE => (None, "none".into(), src, true),
        Some((v, src)) => {
            let p = expand_path(&v, inventory_dir);
            (Some(p.clone()), p.display().to_string(), src, true)
        }
        None => {
            let p = home().join(".ssh/config");
            if p.is_file() {
                (Some(p.clone()), p.display().to_string(), "default".into(), false)
            } else {
                (None, format!("none ({} does not exist)", p.display()), "default".into(), false)
            }
        }
    }
}

struct Ctx<'a> {
    host: &'a HostSpec,
    cfg: Option<SshConfig>,
    opts: &'a ConnectOptions,
    local_user: String,
    settings: Vec<Setting>,
    notes: Vec<String>,
}

impl Ctx<'_> {
    fn err(&self, message: impl Into<String>) -> TransportError {
        TransportError::Config { host: self.host.name.clone(), message: message.into() }
    }

    fn push(&mut self, hop: &str, setting: &str, value: impl Into<String>, source: impl Into<String>) {
        self.settings.push(Setting {
            hop: hop.into(),
            setting: setting.into(),
            value: value.into(),
            source: source.into(),
        });
    }

    fn lookup(
        &mut self,
        name: &str,
        user: Option<&str>,
        default_user: &str,
    ) -> Result<HostConfig, TransportError> {
        let Some(cfg) = &self.cfg else { return Ok(HostConfig::default()) };
        let q = sshconfig::Query {
            user: user.map(str::to_owned),
            default_user: default_user.into(),
            local_user: self.local_user.clone(),
        };
        let hc = cfg.lookup(name, &q).map_err(|e| self.err(format!("ssh config: {e}")))?;
        for n in &hc.notes {
            if !self.notes.contains(n) {
                self.notes.push(n.clone());
            }
        }
        Ok(hc)
    }

    fn tokens(&self, original: &str, address: &str, port: u16, user: &str) -> sshconfig::Tokens {
        sshconfig::Tokens {
            home: home().display().to_string(),
            host: address.into(),
            original_host: original.into(),
            port,
            remote_user: user.into(),
            local_user: self.local_user.clone(),
        }
    }

    fn expand(&self, v: &At<String>, t: &sshconfig::Tokens) -> Result<String, TransportError> {
        sshconfig::expand(&v.value, t).map_err(|m| self.err(format!("ssh config {}: {m}", v.at)))
    }

    /// `HostName` with `%h` (the name as given) expanded, or the name itself.
    fn address(&self, name: &str, hc: &HostConfig) -> Result<(String, String), TransportError> {
        Ok(match &hc.hostname {
            Some(h) => {
                let t = sshconfig::Tokens { host: name.into(), ..Default::default() };
                let v = sshconfig::expand(&h.value.replace("%%", "\u{0}"), &t)
                    .map_err(|m| self.err(format!("ssh config {}: {m}", h.at)))?
                    .replace('\u{0}', "%");
                (v, format!("{} (HostName)", h.at))
            }
            None => (name.to_string(), String::new()),
        })
    }

    /// The files of a `UserKnownHostsFile` line: the first (where new keys are recorded) and the others
    /// (read too, as ssh reads them); `none` entries name no file.
    fn known_hosts_files(
        &self,
        files: &At<Vec<String>>,
        t: &sshconfig::Tokens,
    ) -> Result<(PathBuf, Vec<PathBuf>), TransportError> {
        let mut all = Vec::new();
        for f in &files.value {
            all.push(PathBuf::from(self.expand(&At { value: f.clone(), at: files.at.clone() }, t)?));
        }
        let first = all.remove(0);
        all.retain(|p| p != Path::new("none"));
        Ok((first, all))
    }

    /// The global known_hosts files: `GlobalKnownHostsFile`, default ssh's `/etc/ssh/ssh_known_hosts` and
    /// `/etc/ssh/ssh_known_hosts2`.
    fn global_known_hosts(
        &self,
        hc: &HostConfig,
        t: &sshconfig::Tokens,
    ) -> Result<Vec<PathBuf>, TransportError> {
        match &hc.global_known_hosts_files {
            Some(files) => {
                let mut out = Vec::new();
                for f in files.value.iter().filter(|f| *f != "none") {
                    out.push(PathBuf::from(self.expand(&At { value: f.clone(), at: files.at.clone() }, t)?));
                }
                Ok(out)
            }
            None => Ok(vec![
                PathBuf::from("/etc/ssh/ssh_known_hosts"),
                PathBuf::from("/etc/ssh/ssh_known_hosts2"),
            ]),
        }
    }

    /// The known_hosts policy from the config (when the inventory pins nothing and names no file).
    fn strict(&mut self, hc: &HostConfig) -> (bool, String) {
        if self.opts.accept_new_host_keys {
            return (true, "--accept-new-host-keys".into());
        }
        match &hc.strict_host_key_checking {
            Some(At { value: StrictHostKeyChecking::AcceptNew, at }) => {
                (true, format!("{at} (StrictHostKeyChecking accept-new)"))
            }
            Some(At { value: StrictHostKeyChecking::No, at }) => {
                let n = format!(
                    "{at}: StrictHostKeyChecking no: kubeforge never turns host key checking off; it records \
                     unknown keys (as accept-new) and still refuses changed ones"
                );
                if !self.notes.contains(&n) {
                    self.notes.push(n);
                }
                (true, format!("{at} (StrictHostKeyChecking no, taken as accept-new)"))
            }
            Some(At { value, at }) => {
                let word = if *value == StrictHostKeyChecking::Ask { "ask" } else { "yes" };
                (false, format!("{at} (StrictHostKeyChecking {word})"))
            }
            None => (false, "default (pass --accept-new-host-keys to record unknown keys)".into()),
        }
    }
}

/// Whether a known_hosts file can remember no key: `/dev/null` (or another character device) or
/// `UserKnownHostsFile none`.
pub fn remembers_nothing(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    path == Path::new("none")
        || path == Path::new("/dev/null")
        || std::fs::metadata(path).is_ok_and(|m| m.file_type().is_char_device())
}

/// The rule against blind trust: a hop whose key is not pinned in the inventory, whose known_hosts
/// remembers nothing (`remembers_nothing`) and which would accept unknown keys (`StrictHostKeyChecking no`
/// or `accept-new`, or `--accept-new-host-keys`) would trust whatever key it is shown on every
/// connection, an intercepted one included. OpenSSH does exactly that with `StrictHostKeyChecking no` and
/// `UserKnownHostsFile /dev/null`; kubeforge refuses, naming both settings and where they come from.
/// (Without accept-new such a hop is safe: every connection is refused as unknown.)
fn refuse_blind_trust(
    cx: &Ctx<'_>,
    hop: &str,
    (known_hosts, kh_src): (&Path, &str),
    (accept_new, accept_src): (bool, &str),
    pin: &str,
) -> Result<(), TransportError> {
    if !accept_new || !remembers_nothing(known_hosts) {
        return Ok(());
    }
    let who = if hop.is_empty() { String::new() } else { format!("{hop}: ") };
    Err(cx.err(format!(
        "{who}host key checking would be off: known_hosts is {} ({kh_src}), which remembers no key, and \
         unknown keys are accepted ({accept_src}), so every connection would trust whatever key the host \
         presents. Fix: {pin}, or use a real known_hosts file (remove that UserKnownHostsFile line, or set \
         ssh.knownHosts: ~/.ssh/known_hosts in the inventory)",
        known_hosts.display()
    )))
}

fn shown_list(files: &[PathBuf]) -> String {
    if files.is_empty() {
        "none".into()
    } else {
        files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    }
}

fn also_src(hc: &HostConfig) -> String {
    match &hc.global_known_hosts_files {
        Some(f) => format!("{} (GlobalKnownHostsFile) and UserKnownHostsFile", f.at),
        None => "default (as ssh: every UserKnownHostsFile, then the global files; none with ssh.knownHosts)"
            .into(),
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// What a jump hop inherits from the host it leads to.
#[derive(Clone)]
struct Inherit {
    user: String,
    identity_files: Vec<PathBuf>,
    agent: bool,
    known_hosts: PathBuf,
    also: Vec<PathBuf>,
    accept_new: bool,
}

/// Resolves `host` of `inv`: see the module documentation for the order.
pub fn resolve(
    inv: &Inventory,
    inventory_dir: &Path,
    host: &HostSpec,
    opts: &ConnectOptions,
) -> Result<Resolved, TransportError> {
    let d = &inv.ssh;
    let empty = SshSpec::default();
    let h = host.ssh.as_ref().unwrap_or(&empty);
    let idx = inv.hosts.iter().position(|x| x.name == host.name).unwrap_or(0);
    // An inventory value with its source: the host's own `ssh:` first, then the top-level one.
    macro_rules! pick {
        ($f:ident, $key:literal) => {
            h.$f.clone()
                .map(|v| (v, format!("inventory (hosts[{idx}].ssh.{})", $key)))
                .or_else(|| d.$f.clone().map(|v| (v, format!("inventory (ssh.{})", $key))))
        };
    }
    let (cfg_path, cfg_shown, cfg_src, explicit) =
        config_path(pick!(config_file, "configFile"), inventory_dir);
    let cfg = match &cfg_path {
        Some(p) if explicit && !p.is_file() => {
            return Err(TransportError::Config {
                host: host.name.clone(),
                message: format!("ssh.configFile {} does not exist", p.display()),
            })
        }
        Some(p) => Some(SshConfig::load(p, &home()).map_err(|e| TransportError::Config {
            host: host.name.clone(),
            message: format!("ssh config: {e}"),
        })?),
        None => None,
    };
    let mut cx =
        Ctx { host, cfg, opts, local_user: sshconfig::local_user(), settings: Vec::new(), notes: Vec::new() };
    cx.push("", "config file", cfg_shown, cfg_src);

    let inv_user = pick!(user, "user");
    let hc = cx.lookup(&host.address, inv_user.as_ref().map(|u| u.0.as_str()), "root")?;

    let (user, user_src) = match (&inv_user, &hc.user) {
        (Some((u, s)), _) => (u.clone(), s.clone()),
        (None, Some(u)) => (u.value.clone(), u.at.to_string()),
        (None, None) => ("root".into(), "default".into()),
    };
    let (address, addr_src) = cx.address(&host.address, &hc)?;
    let addr_src = if addr_src.is_empty() { format!("inventory (hosts[{idx}].address)") } else { addr_src };
    let (port, port_src) = match (pick!(port, "port"), &hc.port) {
        (Some((p, s)), _) => (p, s),
        (None, Some(p)) => (p.value, p.at.to_string()),
        (None, None) => (22, "default".into()),
    };
    cx.push("", "address", &address, addr_src);
    cx.push("", "port", port.to_string(), port_src);
    cx.push("", "user", &user, user_src);

    let tokens = cx.tokens(&host.address, &address, port, &user);
    let (identity_files, id_src) = match pick!(identity_file, "identityFile") {
        Some((p, s)) => (vec![expand_path(&p, inventory_dir)], vec![s]),
        None => {
            let mut files = Vec::new();
            let mut srcs = Vec::new();
            for f in &hc.identity_files {
                files.push(PathBuf::from(cx.expand(f, &tokens)?));
                srcs.push(f.at.to_string());
            }
            (files, srcs)
        }
    };
    if identity_files.is_empty() {
        cx.push("", "identity file", "none", "default");
    }
    for (f, s) in identity_files.iter().zip(&id_src) {
        cx.push("", "identity file", f.display().to_string(), s.clone());
    }
    let (agent, agent_src) = match (pick!(agent, "agent"), &hc.identities_only) {
        (Some((a, s)), _) => (a, s),
        (None, Some(io)) => (!io.value, format!("{} (IdentitiesOnly {})", io.at, yes(io.value))),
        (None, None) => (
            identity_files.is_empty(),
            format!(
                "default ({})",
                if identity_files.is_empty() { "no identity file" } else { "an identity file is set" }
            ),
        ),
    };
    cx.push("", "ssh-agent", yes(agent), agent_src);

    let (known_hosts, kh_src, user_rest) =
        match (pick!(known_hosts, "knownHosts"), &hc.user_known_hosts_files) {
            // The inventory's own file is the only one read: an inventory that names its known_hosts (the
            // lab's, `inventory init`'s key capture) means that file, whatever else the machine has.
            (Some((p, s)), _) => (expand_path(&p, inventory_dir), s, None),
            (None, Some(files)) => {
                let (first, rest) = cx.known_hosts_files(files, &tokens)?;
                (first, format!("{} (UserKnownHostsFile)", files.at), Some(rest))
            }
            // ssh's default: ~/.ssh/known_hosts (where new keys go) and ~/.ssh/known_hosts2.
            (None, None) => (
                home().join(".ssh/known_hosts"),
                "default".into(),
                Some(vec![home().join(".ssh/known_hosts2")]),
            ),
        };
    let also = match user_rest {
        // As ssh: the other user files, then the global ones.
        Some(mut rest) => {
            rest.extend(cx.global_known_hosts(&hc, &tokens)?);
            rest
        }
        None => Vec::new(),
    };
    let (accept_new, accept_src) = cx.strict(&hc);
    if h.host_key.is_none() {
        refuse_blind_trust(
            &cx,
            "",
            (&known_hosts, &kh_src),
            (accept_new, &accept_src),
            &format!("pin the host's key with hosts[{idx}].ssh.hostKey (`kubeforge inventory init --accept-new-host-keys` writes it)"),
        )?;
    }
    let host_key = match h.host_key.clone() {
        Some(k) => {
            cx.push(
                "",
                "host key",
                format!("pinned {}", short_key(&k)),
                format!("inventory (hosts[{idx}].ssh.hostKey)"),
            );
            HostKeyPolicy::Pinned(k)
        }
        None => {
            cx.push("", "known_hosts", known_hosts.display().to_string(), kh_src);
            cx.push("", "known_hosts also read", shown_list(&also), also_src(&hc));
            cx.push("", "record new keys", yes(accept_new), accept_src);
            HostKeyPolicy::KnownHostsFiles { path: known_hosts.clone(), accept_new, also: also.clone() }
        }
    };

    let connect_timeout = match (pick!(connect_timeout, "connectTimeout"), &hc.connect_timeout) {
        (Some((v, src)), _) => {
            let d = crate::inventory::validate::parse_duration(&v).ok().filter(|d| !d.is_zero()).ok_or_else(
                || TransportError::Config {
                    host: host.name.clone(),
                    message: format!("ssh.connectTimeout `{v}` is not a duration such as 60s"),
                },
            )?;
            cx.push("", "connect timeout", format!("{}s", d.as_secs()), src);
            d
        }
        (None, Some(t)) => {
            cx.push("", "connect timeout", format!("{}s", t.value), format!("{} (ConnectTimeout)", t.at));
            std::time::Duration::from_secs(t.value)
        }
        (None, None) => opts.connect_timeout,
    };

    let sudo = sudo_mode(
        &cx,
        &user,
        pick!(sudo, "sudo").map(|v| v.0),
        pick!(sudo_password_env, "sudoPasswordEnv").map(|v| v.0),
    )?;

    let inherit = Inherit {
        user: user.clone(),
        identity_files: identity_files.clone(),
        agent,
        known_hosts,
        also,
        accept_new,
    };
    // The hops, first first: each is reached through the one before it.
    let mut hops: Vec<SshTarget> = Vec::new();
    match pick!(bastion, "bastion") {
        Some((b, src)) => {
            cx.push("", "jump hosts", b.address.clone(), src);
            jump_chain(&mut cx, &inherit, Hop::Bastion(&b, inventory_dir), &mut hops, 0)?;
        }
        None => match &hc.proxy {
            Some(At { value: Proxy::Jump(list), at }) => {
                cx.push("", "jump hosts", list.join(","), format!("{at} (ProxyJump)"));
                for (i, entry) in list.iter().enumerate() {
                    let spec = JumpSpec::parse(entry)
                        .map_err(|m| cx.err(format!("ssh config {at}: ProxyJump {m}")))?;
                    // Only the first hop follows its own ProxyJump; later hops go through the previous one.
                    let recurse = i == 0;
                    jump_chain(&mut cx, &inherit, Hop::Spec(&spec, recurse), &mut hops, 0)?;
                }
            }
            Some(At { value: Proxy::Command(c), at }) => {
                return Err(cx.err(format!(
                    "ssh config {at} sets `ProxyCommand {c}` for this host, which kubeforge does not run; \
                     use ProxyJump or ssh.bastion, or set ssh.configFile: none"
                )))
            }
            Some(At { value: Proxy::None, at }) => {
                cx.push("", "jump hosts", "none", format!("{at} (ProxyJump none)"))
            }
            None => cx.push("", "jump hosts", "none", "default"),
        },
    }
    let bastion = link(hops);

    let target = SshTarget {
        name: host.name.clone(),
        address,
        port,
        user,
        identity_files,
        agent,
        host_key,
        sudo,
        bastion,
        connect_timeout,
        keepalive: opts.keepalive,
    };
    Ok(Resolved { target, settings: cx.settings, notes: cx.notes })
}

fn short_key(k: &str) -> String {
    let mut p = k.split_whitespace();
    match (p.next(), p.next()) {
        (Some(t), Some(b)) if b.len() > 16 => format!("{t} {}...{}", &b[..8], &b[b.len() - 8..]),
        _ => k.to_string(),
    }
}

fn sudo_mode(
    cx: &Ctx<'_>,
    user: &str,
    sudo: Option<bool>,
    env: Option<String>,
) -> Result<SudoMode, TransportError> {
    if !sudo.unwrap_or(user != "root") {
        return Ok(SudoMode::Off);
    }
    Ok(match env {
        Some(var) => match std::env::var(&var) {
            Ok(pw) if !pw.is_empty() => SudoMode::Password(Secret::new(pw)),
            _ => match &cx.opts.sudo_password {
                Some(pw) => SudoMode::Password(pw.clone()),
                None => {
                    return Err(cx.err(format!(
                        "ssh.sudoPasswordEnv names {var}, which is not set in the environment"
                    )))
                }
            },
        },
        None => match &cx.opts.sudo_password {
            Some(pw) => SudoMode::Password(pw.clone()),
            None => SudoMode::NoPassword,
        },
    })
}

enum Hop<'a> {
    /// The inventory's `bastion` (its own config settings apply, its fields win).
    Bastion(&'a BastionSpec, &'a Path),
    /// A `ProxyJump` entry; `true` when the hop may follow its own `ProxyJump`.
    Spec(&'a JumpSpec, bool),
}

/// Maximum number of jump hosts in front of one host.
const MAX_HOPS: usize = 8;

/// Resolves one hop (and, when it has its own `ProxyJump` and may follow it, the hops before it),
/// appending them to `hops` in connection order.
fn jump_chain(
    cx: &mut Ctx<'_>,
    inherit: &Inherit,
    hop: Hop<'_>,
    hops: &mut Vec<SshTarget>,
    depth: usize,
) -> Result<(), TransportError> {
    if hops.len() >= MAX_HOPS || depth > MAX_HOPS {
        return Err(cx.err(format!("more than {MAX_HOPS} jump hosts (a ProxyJump loop?)")));
    }
    let (name, spec_user, spec_port, spec_identity, spec_key, recurse) = match &hop {
        Hop::Bastion(b, dir) => (
            b.address.clone(),
            b.user.clone(),
            b.port,
            b.identity_file.as_ref().map(|p| expand_path(p, dir)),
            b.host_key.clone(),
            true,
        ),
        Hop::Spec(s, recurse) => (s.host.clone(), s.user.clone(), s.port, None, None, *recurse),
    };
    let hc = cx.lookup(&name, spec_user.as_deref(), &inherit.user)?;
    if recurse {
        if let Some(At { value: Proxy::Jump(list), at }) = &hc.proxy {
            let at = at.clone();
            for (i, entry) in list.clone().iter().enumerate() {
                let spec =
                    JumpSpec::parse(entry).map_err(|m| cx.err(format!("ssh config {at}: ProxyJump {m}")))?;
                jump_chain(cx, inherit, Hop::Spec(&spec, i == 0), hops, depth + 1)?;
            }
        } else if let Some(At { value: Proxy::Command(c), at }) = &hc.proxy {
            return Err(cx.err(format!(
                "ssh config {at} sets `ProxyCommand {c}` for jump host {name}, which kubeforge does not run"
            )));
        }
    }
    let n = hops.len() + 1;
    let label = format!("jump {n}");
    let (address, addr_src) = cx.address(&name, &hc)?;
    let addr_src = if addr_src.is_empty() {
        match &hop {
            Hop::Bastion(..) => "inventory (bastion.address)".to_string(),
            Hop::Spec(..) => "ProxyJump".to_string(),
        }
    } else {
        addr_src
    };
    let (port, port_src) = match (spec_port, &hc.port) {
        (Some(p), _) => (p, "inventory or ProxyJump".to_string()),
        (None, Some(p)) => (p.value, p.at.to_string()),
        (None, None) => (22, "default".into()),
    };
    let (user, user_src) = match (&spec_user, &hc.user) {
        (Some(u), _) => (u.clone(), "inventory or ProxyJump".to_string()),
        (None, Some(u)) => (u.value.clone(), u.at.to_string()),
        (None, None) => (inherit.user.clone(), "the host's user".into()),
    };
    let tokens = cx.tokens(&name, &address, port, &user);
    let (identity_files, id_src) = match spec_identity {
        Some(p) => (vec![p], "inventory (bastion.identityFile)".to_string()),
        None if !hc.identity_files.is_empty() => {
            let mut v = Vec::new();
            for f in &hc.identity_files {
                v.push(PathBuf::from(cx.expand(f, &tokens)?));
            }
            (v, hc.identity_files[0].at.to_string())
        }
        None => (inherit.identity_files.clone(), "the host's".into()),
    };
    let agent = match &hc.identities_only {
        Some(io) => !io.value,
        None => inherit.agent,
    };
    let (known_hosts, kh_src, also) = match &hc.user_known_hosts_files {
        Some(f) => {
            let (first, mut rest) = cx.known_hosts_files(f, &tokens)?;
            rest.extend(cx.global_known_hosts(&hc, &tokens)?);
            (first, format!("{} (UserKnownHostsFile)", f.at), rest)
        }
        None => (inherit.known_hosts.clone(), "the host's".into(), inherit.also.clone()),
    };
    let (accept_new, accept_src) = match &hc.strict_host_key_checking {
        Some(_) => cx.strict(&hc),
        None => (inherit.accept_new, "the host's".into()),
    };
    if spec_key.is_none() {
        let pin = match &hop {
            Hop::Bastion(..) => "pin the jump host's key with bastion.hostKey",
            Hop::Spec(..) => {
                "reach this jump host through the inventory's ssh.bastion and pin its key with bastion.hostKey"
            }
        };
        refuse_blind_trust(
            cx,
            &format!("jump host {name}"),
            (&known_hosts, &kh_src),
            (accept_new, &accept_src),
            pin,
        )?;
    }
    cx.push(&label, "address", &address, addr_src);
    cx.push(&label, "port", port.to_string(), port_src);
    cx.push(&label, "user", &user, user_src);
    let ids = identity_files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
    cx.push(&label, "identity file", if ids.is_empty() { "none".into() } else { ids }, id_src);
    let host_key = match spec_key {
        Some(k) => {
            cx.push(&label, "host key", format!("pinned {}", short_key(&k)), "inventory (bastion.hostKey)");
            HostKeyPolicy::Pinned(k)
        }
        None => {
            cx.push(&label, "known_hosts", known_hosts.display().to_string(), kh_src);
            cx.push(&label, "record new keys", yes(accept_new), accept_src);
            HostKeyPolicy::KnownHostsFiles { path: known_hosts, accept_new, also }
        }
    };
    let via = match &hop {
        Hop::Bastion(..) => format!("bastion {name}"),
        Hop::Spec(..) => format!("jump host {name}"),
    };
    hops.push(SshTarget {
        name: format!("{} (via {via})", cx.host.name),
        address,
        port,
        user,
        identity_files,
        agent,
        host_key,
        sudo: SudoMode::Off,
        bastion: None,
        connect_timeout: cx.opts.connect_timeout,
        keepalive: cx.opts.keepalive,
    });
    Ok(())
}

/// Links hops (first first) into the nested form the transport opens: the last hop is the target's
/// `bastion`, each hop's `bastion` is the one before it.
fn link(hops: Vec<SshTarget>) -> Option<Box<SshTarget>> {
    let mut prev: Option<Box<SshTarget>> = None;
    for mut h in hops {
        h.bastion = prev;
        prev = Some(Box::new(h));
    }
    prev
}

impl SshTarget {
    /// Resolves the settings of `host`: per-host `ssh` fields override the inventory's `ssh` defaults,
    /// which override the OpenSSH client config (`ssh.configFile`, default `~/.ssh/config`), which
    /// overrides kubeforge's defaults; relative inventory paths are relative to `inventory_dir`. A sudo
    /// password comes from the environment variable named by `sudoPasswordEnv`, else from
    /// `opts.sudo_password`. Notes about the config (settings mapped differently from OpenSSH) are
    /// printed to stderr once per process.
    pub fn from_inventory(
        inv: &Inventory,
        inventory_dir: &Path,
        host: &HostSpec,
        opts: &ConnectOptions,
    ) -> Result<SshTarget, TransportError> {
        let r = resolve(inv, inventory_dir, host, opts)?;
        static SHOWN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
        let mut shown = SHOWN.lock().unwrap_or_else(|p| p.into_inner());
        for n in r.notes {
            if !shown.contains(&n) {
                eprintln!("note: {n}");
                shown.push(n);
            }
        }
        Ok(r.target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(text: &str) -> Inventory {
        serde_yaml::from_str(text).unwrap()
    }

    fn resolve0(inv: &Inventory, dir: &Path) -> Result<Resolved, TransportError> {
        resolve(inv, dir, &inv.hosts[0], &ConnectOptions::default())
    }

    fn source<'a>(r: &'a Resolved, hop: &str, setting: &str) -> &'a str {
        r.settings
            .iter()
            .find(|s| s.hop == hop && s.setting == setting)
            .map(|s| s.source.as_str())
            .unwrap_or_else(|| panic!("no {setting} in {:#?}", r.settings))
    }

    const CFG: &str =
        "Host node1\n  HostName 127.0.0.5\n  User admin\n  Port 2201\n  IdentityFile /keys/%n-%r\n\
                       IdentityFile /keys/second\n  IdentitiesOnly yes\n  UserKnownHostsFile /kh/%h\n\
                       StrictHostKeyChecking accept-new\n  ProxyJump j1,ops@j2:2022\n\
                       Host j1\n  HostName 127.0.0.6\n  User jumper\n  Port 2301\n\
                       Host j2\n  HostName 127.0.0.7\n  ProxyJump ignored-because-not-first\n\
                       Host *\n  User everyone\n  Port 2999\n";

    fn setup(cfg: &str, ssh: &str) -> (tempfile::TempDir, Inventory) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ssh_config"), cfg).unwrap();
        let i = inv(&format!(
            "cluster: {{name: c, kubernetesVersion: v1.35.7}}\nssh: {{configFile: ssh_config{ssh}}}\n\
             hosts:\n- {{name: n1, address: node1, roles: [control-plane, etcd, worker]}}\n"
        ));
        (dir, i)
    }

    #[test]
    fn the_connect_timeout_comes_from_the_inventory_then_the_config_then_the_default() {
        let cfg = "Host node1\n  HostName 127.0.0.5\n  ConnectTimeout 45\n";
        let (dir, i) = setup(cfg, "");
        let r = resolve0(&i, dir.path()).unwrap();
        assert_eq!(r.target.connect_timeout, std::time::Duration::from_secs(45));
        assert!(source(&r, "", "connect timeout").ends_with(":3 (ConnectTimeout)"), "{:?}", r.settings);
        let (dir, i) = setup(cfg, ", connectTimeout: 2m");
        let r = resolve0(&i, dir.path()).unwrap();
        assert_eq!(r.target.connect_timeout, std::time::Duration::from_secs(120), "the inventory wins");
        assert_eq!(source(&r, "", "connect timeout"), "inventory (ssh.connectTimeout)");
        let (dir, i) = setup("Host node1\n  HostName 127.0.0.5\n", "");
        let r = resolve0(&i, dir.path()).unwrap();
        assert_eq!(r.target.connect_timeout, ConnectOptions::default().connect_timeout);
        let (dir, i) = setup("Host node1\n  ConnectTimeout soon\n", "");
        assert!(resolve0(&i, dir.path()).unwrap_err().to_string().contains("ConnectTimeout soon"));
    }

    #[test]
    fn an_alias_from_the_config_file_supplies_every_unset_setting() {
        let (dir, i) = setup(CFG, "");
        let r = resolve0(&i, dir.path()).unwrap();
        let t = &r.target;
        assert_eq!((t.address.as_str(), t.port, t.user.as_str()), ("127.0.0.5", 2201, "admin"));
        assert_eq!(t.identity_files, [PathBuf::from("/keys/node1-admin"), PathBuf::from("/keys/second")]);
        assert!(!t.agent, "IdentitiesOnly yes");
        match &t.host_key {
            HostKeyPolicy::KnownHostsFiles { path, accept_new, .. } => {
                assert_eq!((path.as_path(), *accept_new), (Path::new("/kh/127.0.0.5"), true))
            }
            other => panic!("{other:?}"),
        }
        let cfg = dir.path().join("ssh_config").display().to_string();
        assert_eq!(source(&r, "", "port"), format!("{cfg}:4"));
        assert_eq!(source(&r, "", "address"), format!("{cfg}:2 (HostName)"));
        assert_eq!(source(&r, "", "config file"), "inventory (ssh.configFile)");
        // ProxyJump j1,ops@j2:2022: j2 is the last hop, reached through j1; j2's own ProxyJump is not
        // followed (it is not the first hop), as with OpenSSH.
        let j2 = t.bastion.as_deref().unwrap();
        assert_eq!((j2.address.as_str(), j2.port, j2.user.as_str()), ("127.0.0.7", 2022, "ops"));
        let j1 = j2.bastion.as_deref().unwrap();
        assert_eq!((j1.address.as_str(), j1.port, j1.user.as_str()), ("127.0.0.6", 2301, "jumper"));
        assert!(j1.bastion.is_none());
        assert_eq!(j1.identity_files, t.identity_files, "a hop without its own key uses the host's");
        assert_eq!(source(&r, "jump 1", "port"), format!("{cfg}:14"));
    }

    #[test]
    fn the_inventory_wins_over_the_config_file() {
        let (dir, i) = setup(
            CFG,
            ", user: root, port: 22, identityFile: key, agent: true, knownHosts: kh, bastion: {address: b.example}",
        );
        std::fs::write(dir.path().join("key"), "").unwrap();
        let r = resolve0(&i, dir.path()).unwrap();
        let t = &r.target;
        assert_eq!((t.address.as_str(), t.port, t.user.as_str()), ("127.0.0.5", 22, "root"));
        assert_eq!(t.identity_files, [dir.path().join("key")]);
        assert!(t.agent);
        assert_eq!(source(&r, "", "user"), "inventory (ssh.user)");
        assert_eq!(source(&r, "", "port"), "inventory (ssh.port)");
        match &t.host_key {
            HostKeyPolicy::KnownHostsFiles { path, .. } => assert_eq!(path, &dir.path().join("kh")),
            other => panic!("{other:?}"),
        }
        // The inventory's bastion replaces the config's ProxyJump; the config's `Host *` still gives it a port.
        let b = t.bastion.as_deref().unwrap();
        assert_eq!((b.address.as_str(), b.port, b.user.as_str()), ("b.example", 2999, "everyone"));
        assert!(b.bastion.is_none());
        assert!(b.name.contains("via bastion b.example"), "{}", b.name);
    }

    #[test]
    fn defaults_apply_when_neither_says_anything_and_none_turns_the_file_off() {
        let (dir, i) = setup(CFG, "");
        let mut i = i;
        i.ssh.config_file = Some("none".into());
        let r = resolve0(&i, dir.path()).unwrap();
        let t = &r.target;
        assert_eq!((t.address.as_str(), t.port, t.user.as_str()), ("node1", 22, "root"));
        assert!(t.identity_files.is_empty() && t.agent && t.bastion.is_none());
        assert_eq!(source(&r, "", "port"), "default");
        assert_eq!(source(&r, "", "config file"), "inventory (ssh.configFile)");
        i.ssh.config_file = Some("missing".into());
        let e = resolve0(&i, dir.path()).unwrap_err();
        assert!(e.to_string().contains("ssh.configFile") && e.to_string().contains("does not exist"), "{e}");
    }

    #[test]
    fn strict_host_key_checking_no_is_accept_new_with_a_note_and_proxycommand_is_refused() {
        let (dir, i) = setup("Host node1\n  StrictHostKeyChecking no\n", "");
        let r = resolve0(&i, dir.path()).unwrap();
        assert!(matches!(&r.target.host_key, HostKeyPolicy::KnownHostsFiles { accept_new: true, .. }));
        assert!(r.notes[0].contains("never turns host key checking off"), "{:?}", r.notes);
        let (dir, i) = setup("Host node1\n  StrictHostKeyChecking yes\n", "");
        let r = resolve0(&i, dir.path()).unwrap();
        assert!(matches!(&r.target.host_key, HostKeyPolicy::KnownHostsFiles { accept_new: false, .. }));
        // The command-line flag wins over the file.
        let opts = ConnectOptions { accept_new_host_keys: true, ..Default::default() };
        let r = resolve(&i, dir.path(), &i.hosts[0], &opts).unwrap();
        assert!(matches!(&r.target.host_key, HostKeyPolicy::KnownHostsFiles { accept_new: true, .. }));
        let (dir, i) = setup("Host *\n  ProxyCommand nc %h %p\n", "");
        let e = resolve0(&i, dir.path()).unwrap_err();
        assert!(e.to_string().contains("does not run"), "{e}");
    }

    #[test]
    fn every_known_hosts_file_is_read_and_new_keys_go_to_the_first() {
        let (dir, i) =
            setup("Host node1\n  UserKnownHostsFile /kh/a none /kh/b\n  GlobalKnownHostsFile /g/%h\n", "");
        let r = resolve0(&i, dir.path()).unwrap();
        match &r.target.host_key {
            HostKeyPolicy::KnownHostsFiles { path, also, .. } => {
                assert_eq!(path, Path::new("/kh/a"));
                assert_eq!(also, &[PathBuf::from("/kh/b"), PathBuf::from("/g/node1")]);
            }
            other => panic!("{other:?}"),
        }
        assert!(r.notes.is_empty(), "{:?}", r.notes);
        let (dir, i) = setup("Host node1\n  UserKnownHostsFile /kh/a /kh/b\n", ", knownHosts: kh");
        match &resolve0(&i, dir.path()).unwrap().target.host_key {
            HostKeyPolicy::KnownHostsFiles { path, also, .. } => {
                assert_eq!((path, also.len()), (&dir.path().join("kh"), 0), "the inventory's file alone");
            }
            other => panic!("{other:?}"),
        }
        let (dir, i) = setup("Host other\n  User x\n", "");
        match &resolve0(&i, dir.path()).unwrap().target.host_key {
            HostKeyPolicy::KnownHostsFiles { path, also, .. } => {
                assert_eq!(path, &home().join(".ssh/known_hosts"));
                assert_eq!(
                    also,
                    &[
                        home().join(".ssh/known_hosts2"),
                        PathBuf::from("/etc/ssh/ssh_known_hosts"),
                        PathBuf::from("/etc/ssh/ssh_known_hosts2")
                    ]
                );
            }
            other => panic!("{other:?}"),
        }
    }

    /// The Vagrant/CI pair `StrictHostKeyChecking no` + `UserKnownHostsFile /dev/null` would trust any key
    /// on every connection: refused unless the key is pinned, with both config lines and the fixes named.
    #[test]
    fn a_known_hosts_that_remembers_nothing_with_accept_new_is_refused_unless_the_key_is_pinned() {
        let vagrant = "Host node1\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n";
        let (dir, i) = setup(vagrant, "");
        let cfg = dir.path().join("ssh_config").display().to_string();
        let e = resolve0(&i, dir.path()).unwrap_err().to_string();
        for want in [
            format!("known_hosts is /dev/null ({cfg}:3 (UserKnownHostsFile))"),
            format!("({cfg}:2 (StrictHostKeyChecking no, taken as accept-new))"),
            "hosts[0].ssh.hostKey".to_string(),
            "ssh.knownHosts: ~/.ssh/known_hosts".to_string(),
        ] {
            assert!(e.contains(&want), "missing `{want}` in: {e}");
        }
        // Pinned: known_hosts is not used at all.
        let mut pinned = i.clone();
        pinned.hosts[0].ssh = Some(SshSpec {
            host_key: Some(
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ".into(),
            ),
            ..Default::default()
        });
        assert!(matches!(resolve0(&pinned, dir.path()).unwrap().target.host_key, HostKeyPolicy::Pinned(_)));
        // A real known_hosts from the inventory wins over the config's /dev/null.
        let (dir, i) = setup(vagrant, ", knownHosts: kh");
        let r = resolve0(&i, dir.path()).unwrap();
        assert!(
            matches!(&r.target.host_key, HostKeyPolicy::KnownHostsFiles { accept_new: true, path, .. } if path == &dir.path().join("kh"))
        );
        // /dev/null without accept-new refuses every unpinned host as unknown: safe, so allowed; the flag
        // and `UserKnownHostsFile none` are refused the same way.
        let (dir, i) = setup("Host node1\n  UserKnownHostsFile /dev/null\n", "");
        assert!(resolve0(&i, dir.path()).is_ok());
        let opts = ConnectOptions { accept_new_host_keys: true, ..Default::default() };
        let e = resolve(&i, dir.path(), &i.hosts[0], &opts).unwrap_err().to_string();
        assert!(e.contains("(--accept-new-host-keys)"), "{e}");
        let (dir, i) =
            setup("Host node1\n  UserKnownHostsFile none\n  StrictHostKeyChecking accept-new\n", "");
        assert!(resolve0(&i, dir.path()).unwrap_err().to_string().contains("known_hosts is none"));
        // A jump host is held to the same rule (its own config block, or inherited from the host).
        let (dir, i) = setup(&format!("Host node1\n  ProxyJump j1\nHost j1\n{}", &vagrant[11..]), "");
        let e = resolve0(&i, dir.path()).unwrap_err().to_string();
        assert!(e.contains("jump host j1: host key checking would be off"), "{e}");
        let (dir, i) = setup(&format!("{vagrant}  ProxyJump j1\n"), ", knownHosts: /dev/null");
        let e = resolve0(&i, dir.path()).unwrap_err().to_string();
        assert!(e.contains("known_hosts is /dev/null (inventory (ssh.knownHosts))"), "{e}");
    }

    #[test]
    fn a_jump_host_that_has_its_own_proxyjump_is_reached_through_it_and_loops_end() {
        let (dir, i) = setup("Host node1\n  ProxyJump inner\nHost inner\n  ProxyJump outer\n", "");
        let r = resolve0(&i, dir.path()).unwrap();
        let inner = r.target.bastion.as_deref().unwrap();
        assert_eq!(inner.address, "inner");
        assert_eq!(inner.bastion.as_deref().unwrap().address, "outer");
        let (dir, i) = setup("Host node1\n  ProxyJump a\nHost a\n  ProxyJump b\nHost b\n  ProxyJump a\n", "");
        let e = resolve0(&i, dir.path()).unwrap_err();
        assert!(e.to_string().contains("jump hosts"), "{e}");
    }
}
