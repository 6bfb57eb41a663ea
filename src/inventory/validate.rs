//! Validation of a parsed inventory: every rule that can be checked without touching a machine. All
//! problems are collected (not just the first) and each names the path it concerns; the caller maps paths
//! to lines with [`super::position::Positions`].

use super::explain::{
    did_you_mean, fix_line, ARCH_ALIASES, ENDPOINT_MODE_ALIASES, KEY_ALGORITHM_ALIASES, ROLE_ALIASES,
};
use super::schema::*;
use super::shown;
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

/// Kubernetes minor versions kubeforge installs: upstream's three newest, which it supports with patches.
pub const SUPPORTED_MINORS: std::ops::RangeInclusive<u32> = 35..=37;
/// Older minors accepted only as the version a running cluster is upgraded *from* (out of upstream
/// support): validation warns, and preflight refuses to install them on a host that runs no cluster.
pub const UPGRADE_SOURCE_MINORS: std::ops::RangeInclusive<u32> = 33..=34;
/// The version a new inventory or lab gets: the newest patch of the newest supported minor
/// (see docs/reference/k8s-1.36-1.37.md for where each newest patch was read).
pub const DEFAULT_KUBERNETES_VERSION: &str = "v1.37.1";

/// How this kubeforge treats a Kubernetes minor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinorSupport {
    /// Installed, upgraded to and from.
    Supported,
    /// Only a running cluster's version, to upgrade from.
    UpgradeSourceOnly,
    /// Neither.
    Unsupported,
}

/// How `v` is supported.
pub fn minor_support(v: &Version) -> MinorSupport {
    match (v.major, v.minor) {
        (1, m) if SUPPORTED_MINORS.contains(&m) => MinorSupport::Supported,
        (1, m) if UPGRADE_SOURCE_MINORS.contains(&m) => MinorSupport::UpgradeSourceOnly,
        _ => MinorSupport::Unsupported,
    }
}

/// The supported range in words, for messages: "v1.35.x to v1.37.x".
pub fn supported_range() -> String {
    format!("v1.{}.x to v1.{}.x", SUPPORTED_MINORS.start(), SUPPORTED_MINORS.end())
}
/// Roles a host may have.
pub const ROLES: [&str; 3] = ["control-plane", "etcd", "worker"];
/// API endpoint modes.
pub const ENDPOINT_MODES: [&str; 4] = ["local-lb", "vip", "external", "direct"];
/// CNI choices.
pub const CNI_PLUGINS: [&str; 3] = ["bridge", "none", "manifest"];
/// Key algorithms.
pub const KEY_ALGORITHMS: [&str; 5] = ["ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096"];
/// CPU architectures with official release binaries.
pub const ARCHES: [&str; 4] = ["amd64", "arm64", "ppc64le", "s390x"];
/// Components whose flags `extraArgs` may set.
pub const EXTRA_ARGS_COMPONENTS: [&str; 6] =
    ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"];
/// Longest certificate validity accepted (CA or leaf): 100 years, as `100y` parses.
pub const MAX_CA_VALIDITY: Duration = Duration::from_secs(100 * 31_557_600);
/// Leaf certificate validity when the inventory sets none (one year).
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(365 * 86_400);
/// CA validity when the inventory sets none (ten years).
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(3650 * 86_400);
/// Taint effects.
pub const TAINT_EFFECTS: [&str; 3] = ["NoSchedule", "PreferNoSchedule", "NoExecute"];

/// A problem at a path of the document (positions are attached by the caller).
#[derive(Debug, Clone, PartialEq)]
pub struct PathProblem {
    /// Where: `hosts[2].roles[0]`.
    pub path: String,
    /// Point at the key rather than the value (for "remove this field").
    pub at_key: bool,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
    /// Only a warning: the value may be legitimate, and loading goes on.
    pub warning: bool,
}

/// The problems found so far; `.1`: files the inventory names may not exist yet (an inventory being
/// written by `inventory init`), so a missing one is a warning.
struct Collector(Vec<PathProblem>, bool);

impl Collector {
    fn add(&mut self, path: impl Into<String>, message: impl Into<String>, hint: impl Into<Option<String>>) {
        self.0.push(PathProblem {
            path: path.into(),
            at_key: false,
            message: message.into(),
            hint: hint.into(),
            warning: false,
        });
    }
    fn warn(&mut self, path: impl Into<String>, message: impl Into<String>, hint: impl Into<Option<String>>) {
        self.0.push(PathProblem {
            path: path.into(),
            at_key: false,
            message: message.into(),
            hint: hint.into(),
            warning: true,
        });
    }
    fn add_key(
        &mut self,
        path: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<Option<String>>,
    ) {
        self.0.push(PathProblem {
            path: path.into(),
            at_key: true,
            message: message.into(),
            hint: hint.into(),
            warning: false,
        });
    }
}

fn family(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() {
        "IPv4"
    } else {
        "IPv6"
    }
}

fn one_of(values: &[&str]) -> String {
    values.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(", ")
}

/// Is `s` a DNS-1123 label (lower case, digits, `-`, 1..=63, alphanumeric at both ends)?
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// Is `s` a DNS-1123 subdomain (dot-separated labels, at most 253 characters)?
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// A Kubernetes "qualified name" part: 1..=63 of `[A-Za-z0-9-_.]`, alphanumeric at both ends.
fn is_qualified_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
}

/// Checks a label or taint key (`[prefix/]name`); returns why it is invalid.
pub fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if !is_dns1123_subdomain(p) {
            return Err(format!(
                "prefix `{}` must be a DNS subdomain (lower case, like `example.com`)",
                shown(p)
            ));
        }
    }
    if !is_qualified_name_part(name) {
        return Err(format!(
            "name `{}` must be 1-63 characters of letters, digits, `-`, `_`, `.`, starting and ending with a letter or digit",
            shown(name)
        ));
    }
    Ok(())
}

/// Checks a label value (empty, or a qualified name part).
pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_qualified_name_part(value) {
        Ok(())
    } else {
        Err(format!(
            "value `{}` must be at most 63 characters of letters, digits, `-`, `_`, `.`, starting and ending with a letter or digit",
            shown(value)
        ))
    }
}

/// A parsed taint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Taint {
    /// Key.
    pub key: String,
    /// Value (may be empty).
    pub value: String,
    /// `NoSchedule`, `PreferNoSchedule` or `NoExecute`.
    pub effect: String,
}

/// Parses `key[=value]:Effect`.
pub fn parse_taint(s: &str) -> Result<Taint, String> {
    let (kv, effect) = s.rsplit_once(':').ok_or_else(|| format!("taint `{}` has no effect", shown(s)))?;
    if !TAINT_EFFECTS.contains(&effect) {
        return Err(format!(
            "taint effect `{}` is not one of {}{}",
            shown(effect),
            one_of(&TAINT_EFFECTS),
            did_you_mean(effect, &TAINT_EFFECTS, &[])
                .strip_suffix("? ")
                .map(|d| format!(" ({d}?)"))
                .unwrap_or_default()
        ));
    }
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    check_label_key(key)?;
    check_label_value(value)?;
    Ok(Taint { key: key.into(), value: value.into(), effect: effect.into() })
}

/// A parsed `vMAJOR.MINOR.PATCH` version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Major.
    pub major: u32,
    /// Minor.
    pub minor: u32,
    /// Patch.
    pub patch: u32,
}

impl serde::Serialize for Version {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl std::str::FromStr for Version {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.strip_prefix('v').unwrap_or(s);
        let parts: Vec<&str> = t.split('.').collect();
        let num =
            |p: &str| p.parse::<u32>().ok().filter(|_| !p.is_empty() && (p == "0" || !p.starts_with('0')));
        match parts.as_slice() {
            [a, b, c] => match (num(a), num(b), num(c)) {
                (Some(major), Some(minor), Some(patch)) => Ok(Version { major, minor, patch }),
                _ => Err(format!("`{}` is not a version like v1.35.7", shown(s))),
            },
            [_, _] => Err(format!(
                "`{s}` names a minor release, not a patch release (write e.g. `{s}.0`)",
                s = shown(s)
            )),
            _ => Err(format!("`{}` is not a version like v1.35.7", shown(s))),
        }
    }
}

/// Parses a duration such as `8760h`, `365d`, `90m`, `1y`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|_| format!("`{}` is not a duration like 8760h or 365d", shown(s)))
}

/// `cluster.releaseSource.caFile`: only with an `https://` mirror, and a readable PEM file of CA
/// certificates.
fn check_mirror_ca_file(c: &mut Collector, dir: &Path, url: &str, file: &str) {
    const AT: &str = "cluster.releaseSource.caFile";
    if !url.starts_with("https://") {
        c.add(
            AT,
            format!("`caFile` is for an https:// mirror; `{}` is not one", shown(url)),
            Some("serve the mirror over https:// with a certificate from this CA, or remove `caFile`".into()),
        );
        return;
    }
    let full = expand_path(dir, file);
    match crate::artifacts::read_ca_file(&full) {
        Ok(_) => {}
        Err(why) => c.add(
            AT,
            format!("CA file `{}`: {why}", shown(&full.display().to_string())),
            Some("give a PEM file with the mirror's CA certificate(s) (`-----BEGIN CERTIFICATE-----`), relative to the inventory file".into()),
        ),
    }
}

fn expand_path(base: &Path, p: &str) -> std::path::PathBuf {
    if let Some(rest) = p.strip_prefix("~/") {
        if let Some(home) = dirs::home_dir() {
            return home.join(rest);
        }
    }
    base.join(p)
}

/// Resolves a path written in the inventory (relative to the inventory's directory, `~/` expanded).
pub fn resolve_path(inventory_dir: &Path, p: &str) -> std::path::PathBuf {
    expand_path(inventory_dir, p)
}

fn check_version(c: &mut Collector, path: &str, v: &str) -> Option<Version> {
    match v.parse::<Version>() {
        Ok(v) => Some(v),
        Err(e) => {
            c.add(path, e, Some("write a full release version such as `v3.6.6`".to_string()));
            None
        }
    }
}

/// An identity file must exist and be a private key: the `.pub` beside it is what people paste by mistake.
fn check_identity_file(c: &mut Collector, path: &str, id: &str, dir: &Path) {
    let full = expand_path(dir, id);
    let shown_full = shown(&full.display().to_string());
    if !full.is_file() {
        let what = match std::fs::metadata(&full) {
            Err(_) => "does not exist",
            Ok(m) if m.is_dir() => "is a directory",
            Ok(_) => "is not a regular file",
        };
        if what == "does not exist" && c.1 {
            c.warn(
                path,
                format!("identity file `{}` does not exist yet (looked at {shown_full})", shown(id)),
                Some("create the key there before `kubeforge check` or `apply` connect".into()),
            );
        } else {
            c.add(
                path,
                format!("identity file `{}` {what} (looked at {shown_full})", shown(id)),
                Some("give the path of an existing private key, relative to the inventory file or starting with ~/".into()),
            );
        }
        return;
    }
    let mut head = Vec::new();
    let read = std::fs::File::open(&full)
        .and_then(|f| std::io::Read::read_to_end(&mut std::io::Read::take(f, 4096), &mut head));
    if read.is_ok() && head.iter().all(u8::is_ascii_whitespace) {
        c.add(
            path,
            format!("identity file `{}` is empty (looked at {shown_full})", shown(id)),
            Some("give the path of the private key, e.g. `~/.ssh/id_ed25519`".into()),
        );
        return;
    }
    if id.ends_with(".pub") || looks_public(&String::from_utf8_lossy(&head)) {
        c.add(
            path,
            format!("identity file `{}` is a public key", shown(id)),
            Some(match id.strip_suffix(".pub") {
                Some(private) => {
                    format!("give the private key instead, usually the same path without `.pub` (`{}`)", shown(private))
                }
                None => "give the private key instead: its file starts with a `-----BEGIN ... PRIVATE KEY-----` line".to_string(),
            }),
        );
    }
}

/// Whether a key file's first line is a public key: OpenSSH (`ssh-ed25519 AAAA...`, possibly with
/// authorized_keys options before it), PEM (`-----BEGIN PUBLIC KEY-----`), RFC 4716 (`---- BEGIN SSH2
/// PUBLIC KEY ----`), or an X.509 certificate.
fn looks_public(head: &str) -> bool {
    let Some(line) = head.lines().map(str::trim).find(|l| !l.is_empty()) else { return false };
    let pem = [
        "-----BEGIN PUBLIC KEY",
        "-----BEGIN RSA PUBLIC KEY",
        "---- BEGIN SSH2 PUBLIC KEY",
        "-----BEGIN CERTIFICATE",
    ];
    if pem.iter().any(|p| line.starts_with(p)) {
        return true;
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    words.windows(2).any(|w| {
        ["ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-"].iter().any(|p| w[0].starts_with(p))
            && w[1].starts_with("AAAA")
    }) || words
        .first()
        .is_some_and(|w| ["ssh-", "ecdsa-sha2-", "sk-ssh-", "sk-ecdsa-"].iter().any(|p| w.starts_with(p)))
}

/// Why `name` is not an RFC 1123 host name (dot-separated labels of ASCII letters, digits and `-`, each
/// 1-63 characters and not starting or ending with `-`; at most 253 characters; one trailing dot allowed);
/// `None` when it is one. An address ends up in certificate SANs, known_hosts lines and messages, so
/// nothing else is accepted.
pub fn host_name_problem(name: &str) -> Option<String> {
    let bare = name.strip_suffix('.').unwrap_or(name);
    if bare.is_empty() {
        return Some("is empty".into());
    }
    if bare.len() > 253 {
        return Some(format!("is {} characters long; a host name has at most 253", bare.len()));
    }
    if let Some(c) = bare.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '.')) {
        return Some(format!(
            "contains `{}`; a host name has only letters, digits, `-` and `.`",
            shown(&c.to_string())
        ));
    }
    for label in bare.split('.') {
        if label.is_empty() {
            return Some("has an empty label (two dots in a row, or a dot at the start)".into());
        }
        if label.len() > 63 {
            return Some(format!("has a label of {} characters; each label has at most 63", label.len()));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Some(format!("has the label `{label}`, which starts or ends with `-`"));
        }
    }
    None
}

/// Why an address (SSH target or bastion) written as `a` cannot be used, with a fix, for the usual slips: a
/// port, a user, brackets or a URL around the address, spaces. `None` when it is an IP address or none of
/// these; [`address_problem`] then checks that it is a host name.
fn address_slip(a: &str, port_field: &str) -> Option<(String, String)> {
    if a.parse::<IpAddr>().is_ok() {
        return None;
    }
    let q = shown(a);
    if a.chars().any(char::is_control) {
        return Some((
            format!("address `{q}` contains a control character"),
            "write only the IP address or DNS name".into(),
        ));
    }
    if a.chars().any(char::is_whitespace) {
        return Some((
            format!("address `{q}` contains a space"),
            "write only the IP address or DNS name, without spaces".into(),
        ));
    }
    if a.contains("://") {
        return Some((
            format!("address `{q}` is a URL"),
            format!("write only the IP address or DNS name; the port goes in `{port_field}`"),
        ));
    }
    if let Some((user, _)) = a.split_once('@') {
        return Some((
            format!("address `{q}` contains a user name"),
            format!("write only the address, and set `ssh.user: {}`", shown(user)),
        ));
    }
    if let Some(inner) = a.strip_prefix('[') {
        let (ip, port) = match inner.split_once(']') {
            Some((ip, rest)) => (ip, rest.strip_prefix(':')),
            None => (inner, None),
        };
        if ip.parse::<IpAddr>().is_ok() {
            return Some((
                format!("address `{q}` has brackets{}", if port.is_some() { " and a port" } else { "" }),
                match port {
                    Some(p) => format!(
                        "write the IPv6 address alone (`{ip}`) and the port as `{port_field}: {}`",
                        shown(p)
                    ),
                    None => format!("write the IPv6 address without brackets: `{ip}`"),
                },
            ));
        }
    }
    if let Some((ip, len)) = a.split_once('/') {
        if ip.parse::<IpAddr>().is_ok() {
            return Some((
                format!("address `{q}` has a prefix length (`/{}`)", shown(len)),
                format!("write the address alone: `{ip}`"),
            ));
        }
    }
    if a.contains('.') && a.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        // Not an IP address, and not a host name either (no top-level domain is numeric).
        let parts: Vec<&str> = a.split('.').collect();
        let octets: Vec<Option<u8>> = parts.iter().map(|p| p.parse::<u8>().ok()).collect();
        if parts.len() == 4 && octets.iter().all(Option::is_some) {
            let plain = octets.iter().map(|o| o.unwrap_or(0).to_string()).collect::<Vec<_>>().join(".");
            return Some((
                format!("address `{q}` has a leading zero, which some tools read as octal"),
                format!("write it in plain decimal: `{plain}`"),
            ));
        }
        return Some((
            format!("address `{q}` is not an IPv4 address"),
            "write four numbers from 0 to 255, e.g. `10.0.0.5`".into(),
        ));
    }
    if let Some((host, port)) = a.rsplit_once(':') {
        if !host.contains(':') && !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
            return Some((
                format!("address `{q}` has a port"),
                format!(
                    "write the address alone (`{}`) and the port as `{port_field}: {}`",
                    shown(host),
                    shown(port)
                ),
            ));
        }
    }
    None
}

/// [`address_slip`], then anything else that is neither an IP address nor an RFC 1123 host name.
fn address_problem(a: &str, port_field: &str) -> Option<(String, String)> {
    if a.parse::<IpAddr>().is_ok() {
        return None;
    }
    address_slip(a, port_field).or_else(|| {
        let why = host_name_problem(a)?;
        // `node_1` is the usual one: an ssh config alias written with `_`.
        let dashed = a.replace('_', "-");
        let guess = if dashed != a && host_name_problem(&dashed).is_none() {
            format!("did you mean `{}`? ", shown(&dashed))
        } else {
            String::new()
        };
        let write = if guess.is_empty() { "write" } else { "Write" };
        Some((
            format!("address `{}` is neither an IP address nor a host name: it {why}", shown(a)),
            format!("{guess}{write} the host's IP address or DNS name (letters, digits, `-` and `.`, e.g. `node-1.example.com`); an ssh config `Host` alias must be such a name too (rename it, or write its `HostName` here)"),
        ))
    })
}

fn check_address(c: &mut Collector, path: &str, a: &str, port_field: &str) {
    if a.trim().is_empty() {
        c.add(path, "the address is empty", Some("write the host's IP address or DNS name".to_string()));
    } else if let Some((message, hint)) = address_problem(a, port_field) {
        c.add(path, message, Some(hint));
    }
}

/// Whether an address reaches only its own network segment (169.254.0.0/16, fe80::/10).
fn is_link_local(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    }
}

/// Why an address cannot be a node's cluster address: loopback, unspecified, multicast or broadcast.
fn not_a_node_address(ip: IpAddr) -> Option<&'static str> {
    // `::ffff:127.0.0.1` is 127.0.0.1.
    let ip = ip.to_canonical();
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    let this_network = matches!(ip, IpAddr::V4(v4) if v4.octets()[0] == 0 && !v4.is_unspecified());
    if this_network {
        Some("in 0.0.0.0/8 (\"this network\"), which no host can have")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_unspecified() {
        Some("the unspecified address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if broadcast {
        Some("the broadcast address")
    } else {
        None
    }
}

fn check_ssh(c: &mut Collector, path: &str, ssh: &SshSpec, dir: &Path, per_host: bool) {
    if ssh.port == Some(0) {
        c.add(
            format!("{path}.port"),
            "SSH port 0 is not a port",
            Some("use 1-65535; the default is 22".into()),
        );
    }
    if let Some(id) = &ssh.identity_file {
        check_identity_file(c, &format!("{path}.identityFile"), id, dir);
    }
    if let Some(user) = &ssh.user {
        if user.is_empty()
            || user.contains(|ch: char| ch.is_whitespace() || ch.is_control() || ch == '@' || ch == ':')
        {
            c.add(
                format!("{path}.user"),
                format!("`{}` is not a valid login name", shown(user)),
                Some(
                    "write the user name alone, without spaces, `@` or `:` (the address goes in `address`)"
                        .into(),
                ),
            );
        }
    }
    if let Some(t) = &ssh.connect_timeout {
        match parse_duration(t) {
            Ok(d) if d.as_secs() >= 1 && d.as_secs() <= 3600 => {}
            _ => c.add(
                format!("{path}.connectTimeout"),
                format!("`{}` is not a connect timeout between 1s and 1h", shown(t)),
                Some("give a duration such as `60s`; the default is 15s".into()),
            ),
        }
    }
    if let Some(var) = &ssh.sudo_password_env {
        if var.is_empty()
            || !var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            || var.as_bytes()[0].is_ascii_digit()
        {
            c.add(
                format!("{path}.sudoPasswordEnv"),
                format!("`{}` is not an environment variable name", shown(var)),
                Some("name the variable, e.g. `KUBEFORGE_SUDO_PASSWORD`, not its value".into()),
            );
        } else if std::env::var_os(var).is_some_and(|v| v.is_empty()) {
            c.warn(
                format!("{path}.sudoPasswordEnv"),
                format!("environment variable `{var}` (the sudo password) is set but empty"),
                Some(format!("export the password in `{var}` before commands that connect, or remove `sudoPasswordEnv` if sudo needs none")),
            );
        } else if std::env::var_os(var).is_none() {
            // It may well be set in the shell that runs `apply`: a warning, not an error.
            c.warn(
                format!("{path}.sudoPasswordEnv"),
                format!("environment variable `{var}` (the sudo password) is not set"),
                Some(format!("export `{var}` before commands that connect; a host whose sudo asks for a password fails without it")),
            );
        }
    }
    if let Some(kh) = &ssh.known_hosts {
        // kubeforge creates a missing known_hosts file (and its directory) when it records a key under
        // --accept-new-host-keys, so a missing file is a first run, not necessarily a mistake.
        let full = expand_path(dir, kh);
        if full.is_dir() {
            c.add(
                format!("{path}.knownHosts"),
                format!("known_hosts `{}` is a directory", shown(kh)),
                Some("name the known_hosts file itself, e.g. `~/.ssh/known_hosts`".into()),
            );
        } else if !full.exists() {
            c.warn(
                format!("{path}.knownHosts"),
                format!("known_hosts file `{}` does not exist (looked at {})", shown(kh), shown(&full.display().to_string())),
                Some("run with --accept-new-host-keys once to create it; without it every host not pinned with `hostKey` is refused".into()),
            );
        }
    }
    if let Some(key) = &ssh.host_key {
        if !per_host {
            c.add_key(
                format!("{path}.hostKey"),
                "a pinned host key belongs to one host",
                Some("move `hostKey` under the host's own `ssh:` section".into()),
            );
        } else {
            check_host_key(c, &format!("{path}.hostKey"), key);
        }
    }
    if let Some(b) = &ssh.bastion {
        if b.address.trim().is_empty() {
            c.add(
                format!("{path}.bastion.address"),
                "the bastion address is empty",
                Some("write the jump host's IP address or DNS name, or remove `bastion`".to_string()),
            );
        } else {
            check_address(c, &format!("{path}.bastion.address"), &b.address, "bastion.port");
        }
        if b.port == Some(0) {
            c.add(
                format!("{path}.bastion.port"),
                "SSH port 0 is not a port",
                Some("use 1-65535; the default is 22".to_string()),
            );
        }
        if let Some(id) = &b.identity_file {
            check_identity_file(c, &format!("{path}.bastion.identityFile"), id, dir);
        }
        if let Some(key) = &b.host_key {
            check_host_key(c, &format!("{path}.bastion.hostKey"), key);
        }
    }
    if let Some(f) = ssh.config_file.as_deref().filter(|f| *f != "none") {
        let full = expand_path(dir, f);
        if !full.is_file() {
            c.add(
                format!("{path}.configFile"),
                format!("ssh config file `{f}` does not exist (looked at {})", full.display()),
                Some("give the path of an OpenSSH client config, relative to the inventory file or starting with ~/, or `none` to read no config file".into()),
            );
        }
    }
}

fn check_host_key(c: &mut Collector, path: &str, key: &str) {
    let mut parts = key.split_whitespace();
    let ok = match (parts.next(), parts.next()) {
        (Some(kind), Some(data)) => {
            let kind_ok =
                kind.starts_with("ssh-") || kind.starts_with("ecdsa-sha2-") || kind.starts_with("sk-");
            let data_ok = data.len() > 16
                && data.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=');
            kind_ok && data_ok
        }
        _ => false,
    };
    if !ok {
        c.add(
            path,
            "the pinned host key is not in OpenSSH public key format",
            Some(
                "copy one line of the host's /etc/ssh/ssh_host_*_key.pub, e.g. `ssh-ed25519 AAAAC3...`"
                    .into(),
            ),
        );
    }
}

/// Validates an inventory; `dir` is the directory of the inventory file (relative paths resolve there).
pub fn validate(inv: &Inventory, dir: &Path) -> Vec<PathProblem> {
    validate_with(inv, dir, false)
}

/// [`validate`] for an inventory being written (`inventory init`): a key file it names that does not exist
/// yet is a warning, since the machines' keys are often made after the inventory.
pub fn validate_new(inv: &Inventory, dir: &Path) -> Vec<PathProblem> {
    validate_with(inv, dir, true)
}

fn validate_with(inv: &Inventory, dir: &Path, files_may_be_missing: bool) -> Vec<PathProblem> {
    let mut c = Collector(Vec::new(), files_may_be_missing);
    let cl = &inv.cluster;

    if !is_dns1123_label(&cl.name) {
        c.add(
            "cluster.name",
            format!("cluster name `{}` is not a DNS-1123 label", shown(&cl.name)),
            Some("use lower-case letters, digits and `-`, at most 63 characters, e.g. `prod-eu1`".into()),
        );
    }
    // The Kubernetes version, when it is one this kubeforge supports (flag lists and skew depend on it).
    let k8s = match cl.kubernetes_version.parse::<Version>() {
        Ok(v) if minor_support(&v) == MinorSupport::Unsupported => {
            c.add(
                "cluster.kubernetesVersion",
                format!("Kubernetes {v} is not supported by this kubeforge"),
                Some(format!(
                    "kubeforge installs {} (upstream's supported minors; the newest is {DEFAULT_KUBERNETES_VERSION}); a running v1.{}.x or v1.{}.x cluster is accepted only to upgrade from",
                    supported_range(),
                    UPGRADE_SOURCE_MINORS.start(),
                    UPGRADE_SOURCE_MINORS.end()
                )),
            );
            None
        }
        Ok(v) if minor_support(&v) == MinorSupport::UpgradeSourceOnly => {
            c.warn(
                "cluster.kubernetesVersion",
                format!("Kubernetes v{}.{} is out of upstream support; kubeforge accepts {v} only as the version of a running cluster to upgrade from", v.major, v.minor),
                Some(format!(
                    "upgrade with `kubeforge upgrade apply --to v1.{}.x` (one minor per hop); a new host or cluster is not installed at {v}",
                    SUPPORTED_MINORS.start()
                )),
            );
            Some(v)
        }
        Ok(v) => Some(v),
        Err(e) => {
            c.add(
                "cluster.kubernetesVersion",
                e,
                Some("write a Kubernetes patch release such as `v1.35.7`".into()),
            );
            None
        }
    };

    // A network with host bits set is reported and then checked as the network it names, so that its
    // other problems (overlap, size, family) are not hidden behind the first.
    let net = |c: &mut Collector, path: &str, v: &Option<String>, default: &str| -> Option<IpNet> {
        let s = v.as_deref().unwrap_or(default);
        match s.parse::<IpNet>() {
            Ok(n) if n.network() != n.addr() => {
                c.add(
                    path,
                    format!("`{s}` has host bits set"),
                    Some(format!("write the network address: `{}`", n.trunc())),
                );
                Some(n.trunc())
            }
            Ok(n) => Some(n),
            Err(_) => {
                c.add(
                    path,
                    format!("`{}` is not a CIDR", shown(s)),
                    Some("write a network in CIDR notation, e.g. `10.244.0.0/16`".into()),
                );
                None
            }
        }
    };
    let pod = net(&mut c, "cluster.podCIDR", &cl.pod_cidr, "10.244.0.0/16");
    let svc = net(&mut c, "cluster.serviceCIDR", &cl.service_cidr, "10.96.0.0/12");
    if let Some(s) = svc {
        let (max_bits, min_prefix) = match s {
            IpNet::V4(_) => (32, 12),
            IpNet::V6(_) => (128, 108),
        };
        if s.prefix_len() < min_prefix {
            c.add(
                "cluster.serviceCIDR",
                format!("service CIDR `{s}` is larger than the apiserver allows (/{min_prefix} at most)"),
                Some(format!("use a prefix of /{min_prefix} or longer, e.g. `10.96.0.0/12`")),
            );
        } else if max_bits - s.prefix_len() < 4 {
            c.add(
                "cluster.serviceCIDR",
                format!("service CIDR `{s}` is too small for the API and DNS service addresses"),
                Some("use at least a /28".into()),
            );
        }
    }
    if let (Some(p), Some(s)) = (pod, svc) {
        if family(&p.addr()) != family(&s.addr()) {
            c.add(
                "cluster.serviceCIDR",
                format!(
                    "service CIDR `{s}` is {} but pod CIDR `{p}` is {}",
                    family(&s.addr()),
                    family(&p.addr())
                ),
                Some("kubeforge builds single-stack clusters: use two IPv4 or two IPv6 networks".into()),
            );
        } else if p.contains(&s.network()) || s.contains(&p.network()) {
            c.add(
                "cluster.serviceCIDR",
                format!("service CIDR `{s}` overlaps pod CIDR `{p}`"),
                Some(
                    "pick two disjoint ranges, e.g. pods `10.244.0.0/16` and services `10.96.0.0/12`".into(),
                ),
            );
        }
    }
    let bridge = cl.cni.as_ref().is_none_or(|c| c.plugin == "bridge");
    if let (Some(p), true) = (pod, bridge) {
        // The bridge CNI gives every node a /24 (IPv4) or /64 (IPv6) of the pod CIDR (render::pod_subnet).
        let node_prefix: u8 = if p.addr().is_ipv4() { 24 } else { 64 };
        let nodes = inv
            .hosts
            .iter()
            .filter(|h| h.roles.iter().any(|r| r == "control-plane" || r == "worker"))
            .count() as u128;
        let room: u128 =
            1u128.checked_shl(u32::from(node_prefix.saturating_sub(p.prefix_len()))).unwrap_or(u128::MAX);
        if p.prefix_len() > node_prefix {
            c.add(
                "cluster.podCIDR",
                format!("pod CIDR `{p}` is smaller than one node's pod subnet (a /{node_prefix})"),
                Some(format!(
                    "every node takes a /{node_prefix} of the pod CIDR; use e.g. `{}`",
                    if node_prefix == 24 { "10.244.0.0/16" } else { "fd00:10:244::/56" }
                )),
            );
        } else if nodes > room {
            let bits = 128 - (nodes - 1).leading_zeros();
            c.add(
                "cluster.podCIDR",
                format!(
                    "pod CIDR `{p}` holds {room} node pod subnet{} (a /{node_prefix} each), and the inventory has {nodes} nodes",
                    if room == 1 { "" } else { "s" }
                ),
                Some(format!(
                    "use a /{} or larger pod CIDR",
                    u32::from(node_prefix).saturating_sub(bits)
                )),
            );
        }
    }
    if let Some(d) = &cl.cluster_domain {
        if !is_dns1123_subdomain(d) {
            c.add(
                "cluster.clusterDomain",
                format!("cluster domain `{}` is not a DNS subdomain", shown(d)),
                Some("the usual value is `cluster.local`".into()),
            );
        }
    }

    // API endpoint.
    let control_planes = inv.hosts.iter().filter(|h| h.roles.iter().any(|r| r == "control-plane")).count();
    if let Some(ep) = &cl.api_endpoint {
        if let Some(mode) = &ep.mode {
            if !ENDPOINT_MODES.contains(&mode.as_str()) {
                c.add(
                    "cluster.apiEndpoint.mode",
                    format!("unknown endpoint mode `{}`", shown(mode)),
                    Some(fix_line(
                        mode,
                        &ENDPOINT_MODES,
                        &ENDPOINT_MODE_ALIASES,
                        &format!("use one of {}", one_of(&ENDPOINT_MODES)),
                    )),
                );
            } else if (mode == "vip" || mode == "external") && ep.host.is_none() {
                c.add(
                    "cluster.apiEndpoint",
                    format!("endpoint mode `{mode}` needs a `host`"),
                    Some("set `host:` to the VIP or load balancer address".into()),
                );
            } else if mode == "direct" && control_planes > 1 {
                c.add("cluster.apiEndpoint.mode", format!("endpoint mode `direct` with {control_planes} control planes makes every node depend on the first one"), Some("use `local-lb` (the default for HA), `vip` or `external`".into()));
            }
        }
        if let Some(h) = &ep.host {
            if h.parse::<IpAddr>().is_err() && !is_dns1123_subdomain(h) {
                c.add(
                    "cluster.apiEndpoint.host",
                    format!("`{}` is neither an IP address nor a DNS name", shown(h)),
                    Some("write the VIP or balancer address alone, e.g. `10.0.0.100` or `k8s-api.example.com`, without scheme or port".into()),
                );
            }
        }
        if ep.port == Some(0) {
            c.add("cluster.apiEndpoint.port", "port 0 is not a port", Some("the default is 6443".into()));
        }
    }

    if let Some(cni) = &cl.cni {
        if !CNI_PLUGINS.contains(&cni.plugin.as_str()) {
            c.add(
                "cluster.cni.plugin",
                format!("unknown CNI plugin `{}`", shown(&cni.plugin)),
                Some(match did_you_mean(&cni.plugin, &CNI_PLUGINS, &[]) {
                    d if !d.is_empty() => fix_line(&cni.plugin, &CNI_PLUGINS, &[], &format!("use one of {}", one_of(&CNI_PLUGINS))),
                    _ => format!(
                        "use one of {}; for another plugin (Calico, Cilium, Flannel, ...) set `plugin: manifest` and `manifest:` to its manifest file or URL",
                        one_of(&CNI_PLUGINS)
                    ),
                }),
            );
        } else if cni.plugin == "manifest" && cni.manifest.is_none() {
            c.add(
                "cluster.cni",
                "CNI plugin `manifest` needs a `manifest:` file or URL",
                Some("add `manifest:` with the plugin's manifest, a file path (relative to the inventory) or an https:// URL".to_string()),
            );
        } else if cni.plugin != "manifest" && cni.manifest.is_some() {
            c.add_key(
                "cluster.cni.manifest",
                format!("`manifest` is only used with plugin `manifest`, not `{}`", shown(&cni.plugin)),
                Some("remove it, or set `plugin: manifest`".into()),
            );
        }
        check_cni_manifest(&mut c, cni, dir);
    }

    // Certificates. Both validities are bounded so that issuing never overflows a date, and a leaf never
    // outlives its CA; the defaults take part in the comparison.
    let certs = &cl.certificates;
    let validity = certs
        .validity
        .as_deref()
        .map(|v| {
            parse_duration(v)
                .map_err(|e| {
                    c.add("cluster.certificates.validity", e, Some("e.g. `8760h` (one year)".to_string()))
                })
                .ok()
        })
        .unwrap_or(None);
    let ca_validity = certs
        .ca_validity
        .as_deref()
        .map(|v| {
            parse_duration(v)
                .map_err(|e| {
                    c.add("cluster.certificates.caValidity", e, Some("e.g. `87600h` (ten years)".to_string()))
                })
                .ok()
        })
        .unwrap_or(None);
    let day = Duration::from_secs(86_400);
    let mut ca_ok = true;
    if let Some(ca) = ca_validity {
        if ca > MAX_CA_VALIDITY {
            ca_ok = false;
            c.add(
                "cluster.certificates.caValidity",
                format!(
                    "CA validity `{}` is longer than 100 years",
                    shown(certs.ca_validity.as_deref().unwrap_or(""))
                ),
                Some("the default is 87600h (ten years); rotate CAs rather than making them eternal".into()),
            );
        } else if ca < day {
            ca_ok = false;
            c.add(
                "cluster.certificates.caValidity",
                "a CA valid for less than a day would expire before the cluster is up",
                Some("the default is 87600h (ten years)".into()),
            );
        }
    }
    if let Some(v) = validity {
        if v < day {
            c.add(
                "cluster.certificates.validity",
                "certificates valid for less than a day would expire before the cluster is up",
                Some("the default is 8760h (one year)".into()),
            );
        } else if v > MAX_CA_VALIDITY {
            c.add(
                "cluster.certificates.validity",
                format!(
                    "certificate validity `{}` is longer than 100 years",
                    shown(certs.validity.as_deref().unwrap_or(""))
                ),
                Some("the default is 8760h (one year); `kubeforge certs renew` renews them".into()),
            );
        }
    }
    if ca_ok && (validity.is_some() || ca_validity.is_some()) {
        let leaf = validity.unwrap_or(DEFAULT_VALIDITY);
        let ca = ca_validity.unwrap_or(DEFAULT_CA_VALIDITY);
        if leaf > ca {
            if validity.is_some() {
                c.add(
                    "cluster.certificates.validity",
                    "leaf certificates would outlive the CA that signs them",
                    Some("make `validity` shorter than `caValidity` (default 87600h)".into()),
                );
            } else {
                c.add(
                    "cluster.certificates.caValidity",
                    "the CA would expire before the leaf certificates it signs (8760h by default)",
                    Some("make `caValidity` longer than `validity`, or set a shorter `validity`".into()),
                );
            }
        }
    }
    if let Some(alg) = &certs.key_algorithm {
        if !KEY_ALGORITHMS.contains(&alg.as_str()) {
            c.add(
                "cluster.certificates.keyAlgorithm",
                format!("unknown key algorithm `{}`", shown(alg)),
                Some(fix_line(
                    alg,
                    &KEY_ALGORITHMS,
                    &KEY_ALGORITHM_ALIASES,
                    &format!("use one of {}", one_of(&KEY_ALGORITHMS)),
                )),
            );
        }
    }
    for (i, san) in certs.extra_sans.iter().enumerate() {
        if san.parse::<IpAddr>().is_err() && !is_dns1123_subdomain(san.strip_prefix("*.").unwrap_or(san)) {
            c.add(
                format!("cluster.certificates.extraSANs[{i}]"),
                format!("`{}` is neither an IP address nor a DNS name", shown(san)),
                Some(
                    "write an IP address or a DNS name (`*.` allowed at the start), without scheme or port"
                        .into(),
                ),
            );
        }
    }

    // Release source.
    match &cl.release_source {
        Some(ReleaseSourceSpec::Mirror { url, pins, ca_file }) => {
            if let Some(f) = ca_file {
                check_mirror_ca_file(&mut c, dir, url, f);
            }
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                c.add(
                    "cluster.releaseSource.url",
                    format!("mirror URL `{}` must start with https:// or http://", shown(url)),
                    Some("write the mirror's base URL, e.g. `https://mirror.example.com/kubernetes`".into()),
                );
            } else if url.starts_with("http://") {
                check_plain_http_pins(&mut c, url, pins, &inv.hosts);
            }
            check_pins(&mut c, pins);
        }
        Some(ReleaseSourceSpec::Official { pins }) => check_pins(&mut c, pins),
        Some(ReleaseSourceSpec::Bundle { path }) => {
            let full = expand_path(dir, path);
            if !full.exists() {
                c.add("cluster.releaseSource.path", format!("bundle `{}` does not exist (looked at {})", shown(path), shown(&full.display().to_string())), Some("create it with `kubeforge artifacts bundle`, or fix the path (relative to the inventory file)".into()));
            }
        }
        None => {}
    }
    let comps = &cl.components;
    let mut etcd_version = None;
    for (name, v) in [
        ("etcd", &comps.etcd),
        ("containerd", &comps.containerd),
        ("runc", &comps.runc),
        ("cniPlugins", &comps.cni_plugins),
        ("crictl", &comps.crictl),
    ] {
        if let Some(v) = v {
            let parsed = check_version(&mut c, &format!("cluster.components.{name}"), v);
            if name == "etcd" {
                etcd_version = parsed;
            }
        }
    }
    if let Some(v) = &comps.kubectl {
        let parsed = check_version(&mut c, "cluster.components.kubectl", v);
        if let (Some(kv), Some(k)) = (parsed, k8s) {
            // A warning: kubectl outside the supported skew mostly works, and an air-gapped bundle may only
            // hold a newer one; the admin decides.
            if kv.major != k.major || kv.minor.abs_diff(k.minor) > 1 {
                c.warn(
                    "cluster.components.kubectl",
                    format!("kubectl {kv} is more than one minor version away from Kubernetes {k}"),
                    Some(format!(
                        "the version skew policy allows kubectl v1.{}.x to v1.{}.x; leave `kubectl` unset to use {k}",
                        k.minor.saturating_sub(1),
                        k.minor + 1
                    )),
                );
            }
        }
    }
    let etcd_minor =
        etcd_version.or_else(|| k8s.map(|k| crate::model::default_versions(k).etcd)).map(|v| v.minor);
    for (comp, flags) in &cl.extra_args {
        let known = EXTRA_ARGS_COMPONENTS.contains(&comp.as_str());
        if !known {
            let guess = EXTRA_ARGS_COMPONENTS
                .iter()
                .map(|k| (strsim::jaro_winkler(k, &comp.to_lowercase().replace('_', "-")), k))
                .max_by(|a, b| a.0.total_cmp(&b.0))
                .filter(|(score, _)| *score > 0.9)
                .map(|(_, k)| format!("did you mean `{k}`? Use one of "))
                .unwrap_or_else(|| "use one of ".to_string());
            c.add_key(
                format!("cluster.extraArgs.{comp}"),
                format!("unknown component `{}`", shown(comp)),
                Some(format!("{guess}{}", one_of(&EXTRA_ARGS_COMPONENTS))),
            );
        }
        check_extra_args(&mut c, comp, flags, known, k8s, etcd_minor);
    }
    check_ssh(&mut c, "ssh", &inv.ssh, dir, false);

    // Hosts.
    if inv.hosts.is_empty() {
        c.add(
            "hosts",
            "the inventory has no hosts",
            Some("list at least one host with the `control-plane` and `etcd` roles".into()),
        );
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    // Cluster addresses, and SSH endpoints (bastion, address, port), with the first host that has each.
    let mut cluster_addrs: HashMap<IpAddr, (usize, &'static str, &str)> = HashMap::new();
    let mut ssh_endpoints: HashMap<(String, String, u16), (usize, &str)> = HashMap::new();
    let mut internal_ips: Vec<(usize, &'static str, IpAddr)> = Vec::new();
    let mut sudo_reported: BTreeSet<String> = BTreeSet::new();
    let mut etcd = 0usize;
    let mut cp = 0usize;
    let mut schedulable = 0usize;
    // A misspelt role makes every count below wrong; report the spelling alone.
    let mut unknown_roles = false;
    let cp_sched = cl.control_plane_schedulable.unwrap_or(false);
    for (i, h) in inv.hosts.iter().enumerate() {
        let hp = format!("hosts[{i}]");
        if !is_dns1123_subdomain(&h.name) {
            c.add(
                format!("{hp}.name"),
                format!("host name `{}` is not a valid Kubernetes node name", shown(&h.name)),
                Some("use lower-case letters, digits, `-` and `.`, e.g. `cp-1`".into()),
            );
        }
        if let Some(first) = names.insert(&h.name, i) {
            c.add(
                format!("{hp}.name"),
                format!("host name `{}` is used twice (also hosts[{first}])", shown(&h.name)),
                Some("give every host its own name".into()),
            );
        }
        let slip = address_problem(&h.address, "ssh.port").is_some();
        check_address(&mut c, &format!("{hp}.address"), &h.address, "ssh.port");
        let internal_field = if h.internal_address.is_some() { "internalAddress" } else { "address" };
        let internal: Option<IpAddr> = match &h.internal_address {
            Some(a) => match a.parse() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    let hint = match address_slip(a, "ssh.port") {
                        Some((_, _)) if a.contains(char::is_whitespace) || a.contains(char::is_control) => {
                            "write the IP address alone, without spaces".to_string()
                        }
                        Some(_) => "write the IP address alone: the cluster's ports are fixed".to_string(),
                        None => {
                            "the internal address is what the cluster advertises; write the host's IP".into()
                        }
                    };
                    c.add(
                        format!("{hp}.internalAddress"),
                        format!("internal address `{}` is not an IP address", shown(a)),
                        Some(hint),
                    );
                    None
                }
            },
            None => match h.address.parse() {
                Ok(ip) => Some(ip),
                Err(_) if slip || h.address.trim().is_empty() => None,
                Err(_) => {
                    c.add(
                        format!("{hp}.address"),
                        format!("`{}` is a name, and the host has no `internalAddress`", shown(&h.address)),
                        Some(
                            "add `internalAddress:` with the IP the cluster should use for this host".into(),
                        ),
                    );
                    None
                }
            },
        };
        if let Some(ip) = internal {
            if let Some(what) = not_a_node_address(ip) {
                c.add(
                    format!("{hp}.{internal_field}"),
                    format!("host address `{ip}` is {what}"),
                    Some(if h.internal_address.is_some() {
                        "the cluster advertises this address to every other node; write the host's address on the network the nodes share".into()
                    } else {
                        "the cluster advertises this address to every other node; add `internalAddress:` with the host's address on the network the nodes share".into()
                    }),
                );
            }
            if is_link_local(ip) {
                c.warn(
                    format!("{hp}.{internal_field}"),
                    format!("host address `{ip}` is link-local"),
                    Some("link-local addresses reach only one network segment and are often reassigned; give the host's routable address as `internalAddress`".into()),
                );
            }
            internal_ips.push((i, internal_field, ip));
        }
        // Addresses compare as addresses, not as text: `fd00::1` and `fd00:0::01` are one host. What must be
        // unique is the address the cluster uses (the internal address); hosts are reached by address and
        // port (and bastion), so several hosts behind ports forwarded on one address (VirtualBox, Vagrant)
        // are distinct machines.
        let same = |j: usize, f: &str, v: &str, first: &str| {
            if first == v {
                format!("address `{}` is also hosts[{j}].{f}", shown(v))
            } else {
                format!("address `{}` is also hosts[{j}].{f} (written `{}` there)", shown(v), shown(first))
            }
        };
        let mut reported = false;
        if let Some(ip) = internal {
            let written = h.internal_address.as_deref().unwrap_or(&h.address);
            match cluster_addrs.get(&ip.to_canonical()) {
                Some((j, f, first)) => {
                    c.add(
                        format!("{hp}.{internal_field}"),
                        same(*j, f, written, first),
                        Some(if h.internal_address.is_some() {
                            "every host needs its own internal address: the cluster reaches the host there"
                                .into()
                        } else {
                            "every host needs its own address".into()
                        }),
                    );
                    reported = internal_field == "address";
                }
                None => {
                    cluster_addrs.insert(ip.to_canonical(), (i, internal_field, written));
                }
            }
        }
        let own = h.ssh.as_ref();
        let port = own.and_then(|s| s.port).or(inv.ssh.port).unwrap_or(22);
        let via = own
            .and_then(|s| s.bastion.as_ref())
            .or(inv.ssh.bastion.as_ref())
            .map(|b| b.address.trim().to_ascii_lowercase())
            .unwrap_or_default();
        let endpoint = match h.address.parse::<IpAddr>() {
            Ok(ip) => ip.to_canonical().to_string(),
            Err(_) => h.address.trim().trim_end_matches('.').to_ascii_lowercase(),
        };
        match ssh_endpoints.get(&(via.clone(), endpoint.clone(), port)) {
            Some(_) if reported => {}
            Some((j, first)) if port == 22 => c.add(
                format!("{hp}.address"),
                same(*j, "address", &h.address, first),
                Some("every host needs its own address (or, behind ports forwarded on one address, its own `ssh.port` and an `internalAddress`)".into()),
            ),
            Some((j, first)) => c.add(
                format!("{hp}.address"),
                format!("{}, on the same port {port}", same(*j, "address", &h.address, first)),
                Some("hosts behind ports forwarded on one address each need their own `ssh.port`".into()),
            ),
            None => {
                ssh_endpoints.insert((via, endpoint, port), (i, h.address.as_str()));
            }
        }
        if let Some(ip) = internal {
            for (path, n) in [("cluster.podCIDR", pod), ("cluster.serviceCIDR", svc)] {
                if let Some(n) = n {
                    if n.contains(&ip) {
                        c.add(
                            format!("{hp}.{internal_field}"),
                            format!("host address `{ip}` lies inside {path} `{n}`"),
                            Some(format!("choose a {path} that does not contain any host address")),
                        );
                    }
                }
            }
        }
        // A non-root login without sudo can install nothing; report it where `sudo: false` is written.
        let top = &inv.ssh;
        let own = h.ssh.as_ref();
        let user = own.and_then(|s| s.user.as_deref()).or(top.user.as_deref()).unwrap_or("root");
        let sudo_path = match own.and_then(|s| s.sudo) {
            Some(v) => Some((v, format!("{hp}.ssh.sudo"))),
            None => top.sudo.map(|v| (v, "ssh.sudo".to_string())),
        };
        if let Some((false, path)) = sudo_path {
            if user != "root" && !sudo_reported.contains(&path) {
                c.add(
                    &path,
                    format!("`sudo: false` with the non-root user `{}`: kubeforge could not install anything", shown(user)),
                    Some("remove `sudo: false` (a non-root user runs privileged commands through sudo), or log in as root".into()),
                );
                sudo_reported.insert(path);
            }
        }

        // Roles.
        if h.roles.is_empty() {
            c.add(
                format!("{hp}.roles"),
                format!("host `{}` has no roles", shown(&h.name)),
                Some(format!("give it one or more of {}", one_of(&ROLES))),
            );
        }
        let mut seen = Vec::new();
        for (j, r) in h.roles.iter().enumerate() {
            if !ROLES.contains(&r.as_str()) {
                unknown_roles = true;
                c.add(
                    format!("{hp}.roles[{j}]"),
                    format!("unknown role `{}`", shown(r)),
                    Some(fix_line(r, &ROLES, &ROLE_ALIASES, &format!("roles are {}", one_of(&ROLES)))),
                );
            } else if seen.contains(&r) {
                c.add(
                    format!("{hp}.roles[{j}]"),
                    format!("role `{}` is listed twice", shown(r)),
                    Some("remove one of them".to_string()),
                );
            }
            seen.push(r);
        }
        let has = |r: &str| h.roles.iter().any(|x| x == r);
        let all_known = h.roles.iter().all(|r| ROLES.contains(&r.as_str()));
        if has("etcd") {
            etcd += 1;
            if all_known && has("worker") && !has("control-plane") {
                c.add(format!("{hp}.roles"), format!("host `{}` is a dedicated etcd member and a worker", shown(&h.name)), Some("workloads on a dedicated etcd host compete with etcd for disk and CPU; drop `worker`, or add `control-plane` to stack etcd there".into()));
            }
        }
        if has("control-plane") {
            cp += 1;
        }
        if has("worker") || (has("control-plane") && cp_sched) {
            schedulable += 1;
        }
        if let Some(a) = &h.arch {
            if !ARCHES.contains(&a.as_str()) {
                c.add(
                    format!("{hp}.arch"),
                    format!("unknown architecture `{}`", shown(a)),
                    Some(fix_line(
                        a,
                        &ARCHES,
                        &ARCH_ALIASES,
                        &format!("use one of {} (Kubernetes names, not `x86_64`/`aarch64`)", one_of(&ARCHES)),
                    )),
                );
            }
        }
        for (k, v) in &h.labels {
            if let Err(e) = check_label_key(k) {
                c.add_key(
                    format!("{hp}.labels.{k}"),
                    format!("label key `{}`: {e}", shown(k)),
                    Some("Kubernetes label keys are `[prefix/]name`, e.g. `example.com/zone`".into()),
                );
            }
            if let Err(e) = check_label_value(v) {
                c.add(
                    format!("{hp}.labels.{k}"),
                    format!("label `{}`: {e}", shown(k)),
                    Some("use a short value such as `lab-a`, or an empty one".into()),
                );
            }
        }
        let mut taint_keys: BTreeMap<(String, String), usize> = BTreeMap::new();
        for (j, t) in h.taints.iter().enumerate() {
            match parse_taint(t) {
                Ok(t) => {
                    if taint_keys.insert((t.key.clone(), t.effect.clone()), j).is_some() {
                        c.add(
                            format!("{hp}.taints[{j}]"),
                            format!("taint `{}:{}` is listed twice", shown(&t.key), t.effect),
                            Some("remove one of them".into()),
                        );
                    }
                }
                Err(e) => c.add(
                    format!("{hp}.taints[{j}]"),
                    e,
                    Some("write taints as `key[=value]:Effect`, e.g. `dedicated=gpu:NoSchedule`".into()),
                ),
            }
        }
        if let Some(ssh) = &h.ssh {
            check_ssh(&mut c, &format!("{hp}.ssh"), ssh, dir, true);
        }
    }
    // Address families: kubeforge builds single-stack clusters, so every node address is of the family of
    // both networks. Reported once per network, at the first host that differs.
    for (path, n) in [("cluster.podCIDR", pod), ("cluster.serviceCIDR", svc)] {
        let Some(n) = n else { continue };
        let off: Vec<_> =
            internal_ips.iter().filter(|(_, _, ip)| ip.is_ipv4() != n.addr().is_ipv4()).collect();
        if let Some((i, field, ip)) = off.first() {
            let more = match off.len() {
                1 => String::new(),
                k => format!(" (and {} more host{})", k - 1, if k == 2 { "" } else { "s" }),
            };
            let example = match (ip.is_ipv4(), path) {
                (true, "cluster.podCIDR") => "10.244.0.0/16",
                (true, _) => "10.96.0.0/12",
                (false, "cluster.podCIDR") => "fd00:10:244::/56",
                (false, _) => "fd00:10:96::/112",
            };
            c.add(
                format!("hosts[{i}].{field}"),
                format!("host address `{ip}` is {}, but {path} `{n}` is {}{more}", family(ip), family(&n.addr())),
                Some(format!(
                    "kubeforge builds single-stack clusters: set `{path}` to an {} network (e.g. `{example}`), or give the hosts {} addresses",
                    family(ip),
                    family(&n.addr())
                )),
            );
        }
    }

    // A VIP or external balancer address must be reachable from every node and belong to no host (a VIP)
    // or at least not collide with a service on it (an external balancer).
    if let Some(ep) = &cl.api_endpoint {
        let ip = ep.host.as_deref().and_then(|h| h.parse::<IpAddr>().ok());
        if let (Some(mode @ ("vip" | "external")), Some(ip)) = (ep.mode.as_deref(), ip) {
            let what = if mode == "vip" { "VIP" } else { "external load balancer address" };
            let at = "cluster.apiEndpoint.host";
            if let Some(bad) = not_a_node_address(ip) {
                c.add(
                    at,
                    format!("the {what} `{ip}` is {bad}"),
                    Some("every node and every client reaches the API there; use an address on the nodes' network".into()),
                );
            }
            // Single stack: the endpoint is of the nodes' family (the service network's, which the
            // apiserver's own service address and certificate SANs come from).
            if let Some((i, field, node)) = internal_ips
                .iter()
                .find(|(_, _, a)| a.to_canonical().is_ipv4() != ip.to_canonical().is_ipv4())
            {
                c.add(
                    at,
                    format!(
                        "the {what} `{ip}` is {}, but hosts[{i}].{field} `{node}` is {}",
                        family(&ip),
                        family(node)
                    ),
                    Some(format!(
                        "kubeforge builds single-stack clusters: use an {} address on the nodes' network",
                        family(node)
                    )),
                );
            }
            for (path, n) in [("cluster.podCIDR", pod), ("cluster.serviceCIDR", svc)] {
                if let Some(n) = n.filter(|n| n.contains(&ip)) {
                    c.add(
                        at,
                        format!("the {what} `{ip}` lies inside {path} `{n}`"),
                        Some(format!("addresses in {path} exist only inside the cluster; use an address on the nodes' network")),
                    );
                }
            }
            let port = ep.port.unwrap_or(6443);
            let same = inv.hosts.iter().enumerate().find_map(|(i, h)| {
                let internal = h.internal_address.as_deref().and_then(|a| a.parse::<IpAddr>().ok());
                let ssh = h.address.parse::<IpAddr>().ok();
                if internal.is_some_and(|a| a.to_canonical() == ip.to_canonical()) {
                    Some((i, h, "internalAddress"))
                } else if ssh.is_some_and(|a| a.to_canonical() == ip.to_canonical()) {
                    Some((i, h, "address"))
                } else {
                    None
                }
            });
            if let Some((i, h, field)) = same {
                let cp = h.roles.iter().any(|r| r == "control-plane");
                if mode == "vip" {
                    c.add(
                        at,
                        format!("the VIP `{ip}` is also hosts[{i}].{field}"),
                        Some("a VIP moves between the control planes and must be an address no host has; pick a free address on the nodes' network".into()),
                    );
                } else if cp && port == 6443 {
                    c.add(
                        at,
                        format!("the external load balancer address `{ip}` is also hosts[{i}].{field}, where kube-apiserver listens on port 6443"),
                        Some("run the balancer on a machine of its own, or give it another `port`".into()),
                    );
                } else {
                    c.warn(
                        at,
                        format!("the external load balancer address `{ip}` is also hosts[{i}].{field}"),
                        Some("this works only while the balancer runs on that host beside the cluster; usually it is a machine of its own".into()),
                    );
                }
            }
        }
    }

    if !inv.hosts.is_empty() && !unknown_roles {
        if cp == 0 {
            c.add(
                "hosts",
                "no host has the `control-plane` role",
                Some("add `control-plane` to the roles of one host (or three, for high availability)".into()),
            );
        }
        if etcd == 0 {
            c.add("hosts", "no host has the `etcd` role", Some("add `etcd` to the roles of your control-plane hosts (stacked etcd) or list dedicated etcd hosts".into()));
        } else if etcd % 2 == 0 {
            // A warning, not an error: a cluster passes through an even count while a member is replaced
            // (`remove-node`, then `join`), and etcd runs fine with it.
            c.warn("hosts", format!("{etcd} hosts have the `etcd` role; an even number of members tolerates no more failures than one member fewer"), Some(format!("use an odd number of etcd members: {} or {}", etcd - 1, etcd + 1)));
        }
        if cp > 0 && schedulable == 0 {
            c.add(
                "hosts",
                "no host can run workloads (no `worker` role, and control planes are tainted)",
                Some("add `worker` to a host's roles, or set `cluster.controlPlaneSchedulable: true`".into()),
            );
        }
    }
    c.0
}

/// A CNI manifest is applied as cluster-admin: a URL must be `https://` and pinned with `sha256`, since its
/// content could otherwise change between runs (or on the way); a file may be pinned too.
fn check_cni_manifest(c: &mut Collector, cni: &CniSpec, dir: &Path) {
    match &cni.sha256 {
        Some(_) if cni.manifest.is_none() || cni.plugin != "manifest" => {
            c.add_key(
                "cluster.cni.sha256",
                "`sha256` pins the manifest of plugin `manifest`, and there is none",
                Some("remove it, or set `plugin: manifest` and `manifest:`".into()),
            );
        }
        Some(p) if !is_sha256_hex(p) => {
            let hint = match p.strip_prefix("sha256:").filter(|h| is_sha256_hex(h)) {
                Some(hex) => format!("write the hex digits alone: `sha256: {hex}`"),
                None => {
                    "write the manifest's sha256 as 64 hex digits (what `sha256sum FILE` prints first)".into()
                }
            };
            c.add(
                "cluster.cni.sha256",
                format!("`{}` is not a sha256 (64 hex digits)", shown(p)),
                Some(hint),
            );
        }
        _ => {}
    }
    let Some(m) = &cni.manifest else { return };
    let at = "cluster.cni.manifest";
    if let Some(rest) = m.strip_prefix("http://") {
        c.add(
            at,
            format!(
                "manifest URL `{}` is plain HTTP, and the manifest is applied as cluster-admin",
                shown(m)
            ),
            Some(format!(
                "anyone on the path could change it: use `https://{}` and pin its content with `sha256:`",
                shown(rest)
            )),
        );
    } else if m.starts_with("https://") {
        if cni.sha256.is_none() {
            c.add(
                at,
                format!("manifest URL `{}` has no `sha256` pin; it is applied as cluster-admin, and what the URL serves can change between runs", shown(m)),
                Some("download the manifest, review it, and add `sha256:` beside `manifest:` with its digest (what `sha256sum FILE` prints first)".into()),
            );
        }
    } else if !expand_path(dir, m).is_file() {
        c.add(
            at,
            format!("manifest `{}` is neither an https:// URL nor an existing file", shown(m)),
            Some("give an https:// URL (with `sha256:`), or the path of an existing file relative to the inventory file or starting with ~/".into()),
        );
    }
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Where the value of a flag kubeforge owns comes from, where an inventory setting decides it.
fn owned_flag_source(flag: &str) -> Option<&'static str> {
    Some(match flag {
        "service-cluster-ip-range" => "`cluster.serviceCIDR`",
        "cluster-cidr" => "`cluster.podCIDR`",
        "cluster-dns" => "`cluster.serviceCIDR` (the DNS Service is its tenth address)",
        "cluster-domain" | "service-account-issuer" => "`cluster.clusterDomain`",
        "cluster-name" | "initial-cluster-token" => "`cluster.name`",
        "advertise-address"
        | "node-ip"
        | "advertise-client-urls"
        | "listen-client-urls"
        | "listen-peer-urls"
        | "initial-advertise-peer-urls" => "each host's `internalAddress`",
        "name" | "hostname-override" => "each host's `name`",
        "etcd-servers" | "initial-cluster" => "the hosts with the `etcd` role",
        f if f.contains("cert")
            || f.contains("-key")
            || f.starts_with("key")
            || f.contains("ca-file")
            || f.contains("cafile") =>
        {
            "the certificates it issues and places itself (`cluster.certificates`)"
        }
        _ => return None,
    })
}

/// One component's `extraArgs`: flag names, values that would break the systemd unit, flags the
/// component's version does not have, and flags kubeforge sets itself.
fn check_extra_args(
    c: &mut Collector,
    comp: &str,
    flags: &BTreeMap<String, String>,
    known: bool,
    k8s: Option<Version>,
    etcd_minor: Option<u32>,
) {
    let accepted = match (known, comp, k8s, etcd_minor) {
        (false, ..) => None,
        (true, "etcd", _, Some(m)) => super::flags::accepted("etcd", 0, m),
        (true, "etcd", _, None) => None,
        (true, _, Some(k), _) => super::flags::accepted(comp, k.minor, 0),
        (true, _, None, _) => None,
    };
    let owned = crate::render::owned_flags(comp);
    let mut seen: HashMap<String, &str> = HashMap::new();
    for (flag, value) in flags {
        let path = format!("cluster.extraArgs.{comp}.{flag}");
        if flag.chars().any(char::is_control) {
            c.add_key(
                &path,
                format!("flag name `{}` contains a control character", shown(flag)),
                Some("flags are written into the component's systemd unit, one per line; write the flag name alone, e.g. `audit-log-maxage`".into()),
            );
        } else if flag.starts_with('-')
            || flag.is_empty()
            || !flag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            let hint = match flag.trim_start_matches('-').split_once('=') {
                Some((name, value)) => format!(
                    "write the flag's name as the key and its value as the value: `{}: \"{}\"`",
                    shown(name),
                    shown(value)
                ),
                None => "write the flag without leading dashes, e.g. `audit-log-maxage: \"30\"`".into(),
            };
            c.add_key(&path, format!("`{}` is not a flag name", shown(flag)), Some(hint));
            continue;
        }
        if value.chars().any(char::is_control) {
            c.add(
                &path,
                format!("the value of `{comp}` flag `{}` contains a control character", shown(flag)),
                Some("flags are written into the component's systemd unit, one per line: a line break would add unit settings. Write the value on one line".into()),
            );
        }
        if flag.chars().any(char::is_control) {
            continue;
        }
        let name = super::flags::normalize(flag);
        if let Some(first) = seen.insert(name.clone(), flag) {
            c.add_key(
                &path,
                format!("`{flag}` and `{first}` are the same flag `--{name}`"),
                Some("keep one: components treat `_` and `-` in flag names alike".into()),
            );
        }
        if let Some((list, version)) = &accepted {
            let removed =
                super::flags::removed_in(comp, &name).filter(|(m, _)| k8s.is_some_and(|k| *m <= k.minor));
            if let (false, Some((m, note))) = (list.contains(&name), removed) {
                c.add_key(
                    &path,
                    format!("{comp} {version} has no flag `--{name}`: v1.{m} removed it ({note})"),
                    Some(format!("remove `{flag}` from `cluster.extraArgs.{comp}`")),
                );
                continue;
            }
            if !list.contains(&name) {
                let hint = match super::flags::closest(&name, list) {
                    Some(g) => format!("did you mean `{g}`? `{comp} --help` lists the flags of {version}"),
                    None => format!("`{comp} --help` lists the flags of {version}"),
                };
                c.add_key(&path, format!("{comp} {version} has no flag `--{name}`"), Some(hint));
                continue;
            }
        }
        for n in k8s.map(|k| super::flags::value_notes(comp, &name, value, k.minor)).unwrap_or_default() {
            c.warn(&path, format!("`{}`: {}", shown(value), n.note), Some(n.fix.to_string()));
        }
        let tunable = crate::render::TUNABLE_FLAGS.iter().any(|(tc, tf)| *tc == comp && *tf == name);
        if owned.contains(&name) && !tunable {
            if name == "enable-admission-plugins" {
                if !value.split(',').any(|p| p.trim() == "NodeRestriction") {
                    c.add(
                        &path,
                        "`--enable-admission-plugins` must keep `NodeRestriction`, which kubeforge enables",
                        Some(
                            "list it with the plugins you add, e.g. `NodeRestriction,AlwaysPullImages`"
                                .into(),
                        ),
                    );
                }
                continue;
            }
            let hint = match owned_flag_source(&name) {
                Some(source) => format!("remove it; kubeforge derives it from {source}"),
                None => "remove it: kubeforge sets it, and the cluster's security or operation depends on that value"
                    .into(),
            };
            c.add_key(&path, format!("`{comp}` flag `--{name}` is set by kubeforge"), Some(hint));
        }
    }
}

/// The pin keys (`component/arch`, by download unit) of everything the hosts install, in a stable order.
fn needed_pins(hosts: &[HostSpec]) -> BTreeSet<String> {
    use crate::artifacts::versions::components_for_roles;
    hosts
        .iter()
        .filter_map(|h| {
            let arch = h.arch.as_deref().unwrap_or("amd64");
            // An unknown architecture is reported at the host; it downloads nothing.
            ARCHES.contains(&arch).then(|| (arch, components_for_roles(&h.roles)))
        })
        .flat_map(|(arch, comps)| comps.into_iter().map(move |x| format!("{}/{arch}", x.download_unit())))
        .collect()
}

/// A plain-HTTP mirror is trusted for nothing: anyone on the path can replace a file and the checksum file
/// beside it, and the binaries run as root on every node. So every artifact the hosts install needs a pin;
/// the checksum files are then never read.
fn check_plain_http_pins(c: &mut Collector, url: &str, pins: &BTreeMap<String, String>, hosts: &[HostSpec]) {
    let missing: Vec<String> = needed_pins(hosts).into_iter().filter(|k| !pins.contains_key(k)).collect();
    if missing.is_empty() {
        return;
    }
    let n = missing.len();
    c.add(
        "cluster.releaseSource.url",
        format!(
            "mirror `{}` is plain HTTP, and {n} artifact{} the hosts install {} no pin: {}",
            shown(url),
            if n == 1 { "" } else { "s" },
            if n == 1 { "has" } else { "have" },
            missing.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
        ),
        Some(format!(
            "anyone on the path could replace them and their checksum files: use an https:// mirror, or pin each file's sha256 (from a source you trust) under `releaseSource.pins`, e.g. `{}: sha256:<64 hex digits>`",
            missing[0]
        )),
    );
}

fn check_pins(c: &mut Collector, pins: &BTreeMap<String, String>) {
    for (k, v) in pins {
        if k.split_once('/').is_none_or(|(comp, arch)| comp.is_empty() || !ARCHES.contains(&arch)) {
            c.add_key(
                format!("cluster.releaseSource.pins.{k}"),
                format!("pin key `{}` is not `component/arch`", shown(k)),
                Some("write e.g. `kubelet/amd64: sha256:<64 hex digits>`".into()),
            );
        } else if let Some((comp, arch)) = k.split_once('/') {
            // Pins are keyed by the unit that is downloaded: etcdctl comes in etcd's archive.
            use crate::artifacts::Component;
            let units: Vec<&str> =
                Component::ALL.iter().filter(|x| x.download_unit() == **x).map(|x| x.name()).collect();
            if !units.contains(&comp) {
                let (message, hint) = match comp.parse::<Component>() {
                    Ok(x) => (
                        format!("`{comp}` is not downloaded by itself"),
                        format!("{comp} comes in {0}'s archive; pin `{0}/{arch}`", x.download_unit()),
                    ),
                    Err(_) => (
                        format!("pin for unknown component `{}`", shown(comp)),
                        format!("pinnable components: {}", one_of(&units)),
                    ),
                };
                c.add_key(format!("cluster.releaseSource.pins.{k}"), message, Some(hint));
            }
        }
        let ok = v
            .strip_prefix("sha256:")
            .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if !ok {
            c.add(
                format!("cluster.releaseSource.pins.{k}"),
                format!("pin `{}` is not `sha256:<64 hex digits>`", shown(v)),
                Some("copy the digest from the release's .sha256 file and write it as `sha256:<hex>`".into()),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_rfc_1123_and_nothing_else() {
        let l63 = "a".repeat(63);
        let long = [l63.as_str(); 4].join("."); // 255 characters
        let max = format!("{}.{}", [l63.as_str(); 3].join("."), "b".repeat(61)); // 253
        for ok in
            ["node1", "Node-1.Example.COM", "node1.example.com.", "1a", "xn--bcher-kva.example", &l63, &max]
        {
            assert_eq!(host_name_problem(ok), None, "{ok}");
        }
        for (bad, why) in [
            ("", "is empty"),
            (".", "is empty"),
            ("a..b", "empty label"),
            (".a", "empty label"),
            ("a.b..", "empty label"),
            ("-a", "starts or ends with `-`"),
            ("a-.b", "starts or ends with `-`"),
            ("a_b", "contains `_`"),
            ("x$(id)", "contains `$`"),
            ("n\u{e9}ud", "contains `\u{e9}`"),
            ("a*", "contains `*`"),
        ] {
            let got = host_name_problem(bad).unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(got.contains(why), "{bad:?}: {got}");
        }
        assert!(host_name_problem(&format!("{l63}a")).unwrap().contains("label of 64 characters"));
        assert!(host_name_problem(&format!("{max}b")).unwrap().contains("254 characters long"));
        assert!(host_name_problem(&long).unwrap().contains("at most 253"));
    }

    #[test]
    fn an_address_is_an_ip_or_a_host_name() {
        for ok in ["10.0.0.1", "fd00::1", "::ffff:10.0.0.1", "node-1", "cp1.lab.example.com."] {
            assert_eq!(address_problem(ok, "ssh.port"), None, "{ok}");
        }
        let (message, hint) = address_problem("node_1", "ssh.port").unwrap();
        assert_eq!(message, "address `node_1` is neither an IP address nor a host name: it contains `_`; a host name has only letters, digits, `-` and `.`");
        assert!(hint.starts_with("did you mean `node-1`? Write "), "{hint}");
        // The known slips keep their own fix.
        assert!(address_problem("root@node1", "ssh.port").unwrap().0.contains("contains a user name"));
    }

    fn mirror_problems(url: &str, pins: &[&str]) -> Vec<PathProblem> {
        let pins: String = pins.iter().map(|k| format!("      {k}: sha256:{}\n", "ab".repeat(32))).collect();
        let yaml = format!(
            "cluster:\n  name: demo\n  kubernetesVersion: v1.35.7\n  releaseSource:\n    type: mirror\n    url: {url}\n    pins:{}\n{pins}hosts:\n  - {{name: cp1, address: 10.0.0.1, roles: [control-plane, etcd]}}\n  - {{name: w1, address: 10.0.0.2, roles: [worker], arch: arm64}}\n",
            if pins.is_empty() { " {}" } else { "" }
        );
        let inv: Inventory = serde_yaml::from_str(&yaml).unwrap();
        validate(&inv, Path::new("."))
            .into_iter()
            .filter(|p| p.path.starts_with("cluster.releaseSource"))
            .collect()
    }

    #[test]
    fn a_plain_http_mirror_needs_a_pin_for_every_artifact_the_hosts_install() {
        let amd64 = ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "etcd"];
        let node = ["kubelet", "kube-proxy", "containerd", "runc", "cni-plugins", "crictl"];
        let all: Vec<String> = amd64
            .iter()
            .chain(&node)
            .map(|c| format!("{c}/amd64"))
            .chain(node.iter().map(|c| format!("{c}/arm64")))
            .collect();
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        assert_eq!(needed_pins(&serde_yaml::from_str::<Inventory>("cluster: {name: d, kubernetesVersion: v1.35.7}\nhosts:\n  - {name: cp1, address: 10.0.0.1, roles: [control-plane, etcd]}\n  - {name: w1, address: 10.0.0.2, roles: [worker], arch: arm64}\n").unwrap().hosts).len(), all.len());
        // Every one pinned: accepted, on the loopback address as anywhere else.
        for url in ["http://127.0.0.1:8080", "http://mirror.example.com/k8s"] {
            assert_eq!(mirror_problems(url, &all), vec![], "{url}");
        }
        // One missing (etcdctl comes in etcd's archive, so `etcd/amd64` covers both): refused, naming it.
        let fewer: Vec<&str> = all.iter().copied().filter(|k| *k != "etcd/amd64").collect();
        let p = mirror_problems("http://127.0.0.1:8080", &fewer);
        assert_eq!(p.len(), 1, "{p:#?}");
        assert_eq!(p[0].path, "cluster.releaseSource.url");
        assert!(
            p[0].message.ends_with("1 artifact the hosts install has no pin: `etcd/amd64`"),
            "{}",
            p[0].message
        );
        assert!(p[0].hint.as_deref().unwrap().contains("use an https:// mirror"));
        // https needs no pins: the checksum files come over an authenticated connection.
        assert_eq!(mirror_problems("https://mirror.example.com/k8s", &[]), vec![]);
    }
}
