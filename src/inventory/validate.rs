//! Validation of a parsed inventory: every rule that can be checked without touching a machine. All
//! problems are collected (not just the first) and each names the path it concerns; the caller maps paths
//! to lines with [`super::position::Positions`].

use super::schema::*;
use super::shown;
use ipnet::IpNet;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;

/// Kubernetes minor versions this release of kubeforge knows flags and configs for.
pub const SUPPORTED_MINORS: std::ops::RangeInclusive<u32> = 33..=35;
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

struct Collector(Vec<PathProblem>);

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
        return Err(format!("taint effect `{}` is not one of {}", shown(effect), one_of(&TAINT_EFFECTS)));
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

fn check_ssh(c: &mut Collector, path: &str, ssh: &SshSpec, dir: &Path, per_host: bool) {
    if ssh.port == Some(0) {
        c.add(
            format!("{path}.port"),
            "SSH port 0 is not a port",
            Some("use 1-65535; the default is 22".into()),
        );
    }
    if let Some(id) = &ssh.identity_file {
        let full = expand_path(dir, id);
        if !full.is_file() {
            c.add(
                format!("{path}.identityFile"),
                format!("identity file `{}` does not exist (looked at {})", shown(id), shown(&full.display().to_string())),
                Some("give the path of an existing private key, relative to the inventory file or starting with ~/".into()),
            );
        }
    }
    if let Some(user) = &ssh.user {
        if user.is_empty() || user.contains(|ch: char| ch.is_whitespace() || ch == '@' || ch == ':') {
            c.add(format!("{path}.user"), format!("`{}` is not a valid login name", shown(user)), None);
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
            c.add(format!("{path}.bastion.address"), "the bastion address is empty", None);
        }
        if b.port == Some(0) {
            c.add(format!("{path}.bastion.port"), "SSH port 0 is not a port", None);
        }
        if let Some(id) = &b.identity_file {
            let full = expand_path(dir, id);
            if !full.is_file() {
                c.add(
                    format!("{path}.bastion.identityFile"),
                    format!(
                        "identity file `{}` does not exist (looked at {})",
                        shown(id),
                        shown(&full.display().to_string())
                    ),
                    None,
                );
            }
        }
        if let Some(key) = &b.host_key {
            check_host_key(c, &format!("{path}.bastion.hostKey"), key);
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
    let mut c = Collector(Vec::new());
    let cl = &inv.cluster;

    if !is_dns1123_label(&cl.name) {
        c.add(
            "cluster.name",
            format!("cluster name `{}` is not a DNS-1123 label", shown(&cl.name)),
            Some("use lower-case letters, digits and `-`, at most 63 characters, e.g. `prod-eu1`".into()),
        );
    }
    match cl.kubernetes_version.parse::<Version>() {
        Ok(v) if v.major != 1 || !SUPPORTED_MINORS.contains(&v.minor) => c.add(
            "cluster.kubernetesVersion",
            format!("Kubernetes {v} is not supported by this kubeforge"),
            Some(format!(
                "use a v1.{}.x to v1.{}.x release",
                SUPPORTED_MINORS.start(),
                SUPPORTED_MINORS.end()
            )),
        ),
        Ok(_) => {}
        Err(e) => c.add(
            "cluster.kubernetesVersion",
            e,
            Some("write a Kubernetes patch release such as `v1.35.7`".into()),
        ),
    }

    let net = |c: &mut Collector, path: &str, v: &Option<String>, default: &str| -> Option<IpNet> {
        let s = v.as_deref().unwrap_or(default);
        match s.parse::<IpNet>() {
            Ok(n) if n.network() != n.addr() => {
                c.add(
                    path,
                    format!("`{s}` has host bits set"),
                    Some(format!("write the network address: `{}`", n.trunc())),
                );
                None
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
        if p.contains(&s.network()) || s.contains(&p.network()) {
            c.add(
                "cluster.serviceCIDR",
                format!("service CIDR `{s}` overlaps pod CIDR `{p}`"),
                Some(
                    "pick two disjoint ranges, e.g. pods `10.244.0.0/16` and services `10.96.0.0/12`".into(),
                ),
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
                    Some(format!("use one of {}", one_of(&ENDPOINT_MODES))),
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
                    None,
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
                Some(format!("use one of {}", one_of(&CNI_PLUGINS))),
            );
        } else if cni.plugin == "manifest" && cni.manifest.is_none() {
            c.add("cluster.cni", "CNI plugin `manifest` needs a `manifest:` file or URL", None);
        } else if cni.plugin != "manifest" && cni.manifest.is_some() {
            c.add_key(
                "cluster.cni.manifest",
                format!("`manifest` is only used with plugin `manifest`, not `{}`", shown(&cni.plugin)),
                Some("remove it, or set `plugin: manifest`".into()),
            );
        }
        if let Some(m) = &cni.manifest {
            if !(m.starts_with("https://") || m.starts_with("http://") || expand_path(dir, m).is_file()) {
                c.add(
                    "cluster.cni.manifest",
                    format!("manifest `{}` is neither a URL nor an existing file", shown(m)),
                    None,
                );
            }
        }
    }

    // Certificates.
    let certs = &cl.certificates;
    let validity = certs
        .validity
        .as_deref()
        .map(|v| parse_duration(v).map_err(|e| c.add("cluster.certificates.validity", e, None)).ok())
        .unwrap_or(None);
    let ca_validity = certs
        .ca_validity
        .as_deref()
        .map(|v| parse_duration(v).map_err(|e| c.add("cluster.certificates.caValidity", e, None)).ok())
        .unwrap_or(None);
    let day = std::time::Duration::from_secs(86_400);
    if let Some(v) = validity {
        if v < day {
            c.add(
                "cluster.certificates.validity",
                "certificates valid for less than a day would expire before the cluster is up",
                Some("the default is 8760h (one year)".into()),
            );
        }
        let ca = ca_validity.unwrap_or(day * 3650);
        if v > ca {
            c.add(
                "cluster.certificates.validity",
                "leaf certificates would outlive the CA that signs them",
                Some("make `validity` shorter than `caValidity` (default 87600h)".into()),
            );
        }
    }
    if let Some(alg) = &certs.key_algorithm {
        if !KEY_ALGORITHMS.contains(&alg.as_str()) {
            c.add(
                "cluster.certificates.keyAlgorithm",
                format!("unknown key algorithm `{}`", shown(alg)),
                Some(format!("use one of {}", one_of(&KEY_ALGORITHMS))),
            );
        }
    }
    for (i, san) in certs.extra_sans.iter().enumerate() {
        if san.parse::<IpAddr>().is_err() && !is_dns1123_subdomain(san.strip_prefix("*.").unwrap_or(san)) {
            c.add(
                format!("cluster.certificates.extraSANs[{i}]"),
                format!("`{}` is neither an IP address nor a DNS name", shown(san)),
                None,
            );
        }
    }

    // Release source.
    match &cl.release_source {
        Some(ReleaseSourceSpec::Mirror { url, pins }) => {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                c.add(
                    "cluster.releaseSource.url",
                    format!("mirror URL `{}` must start with https:// or http://", shown(url)),
                    None,
                );
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
    for (name, v) in [
        ("etcd", &comps.etcd),
        ("containerd", &comps.containerd),
        ("runc", &comps.runc),
        ("cniPlugins", &comps.cni_plugins),
        ("crictl", &comps.crictl),
    ] {
        if let Some(v) = v {
            check_version(&mut c, &format!("cluster.components.{name}"), v);
        }
    }
    for (comp, flags) in &cl.extra_args {
        if !EXTRA_ARGS_COMPONENTS.contains(&comp.as_str()) {
            c.add_key(
                format!("cluster.extraArgs.{comp}"),
                format!("unknown component `{}`", shown(comp)),
                Some(format!("use one of {}", one_of(&EXTRA_ARGS_COMPONENTS))),
            );
            continue;
        }
        for flag in flags.keys() {
            if flag.starts_with('-')
                || flag.is_empty()
                || !flag.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                c.add_key(
                    format!("cluster.extraArgs.{comp}.{flag}"),
                    format!("`{}` is not a flag name", shown(flag)),
                    Some("write the flag without leading dashes, e.g. `audit-log-maxage: \"30\"`".into()),
                );
            }
        }
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
    let mut addrs: HashMap<String, (usize, &'static str)> = HashMap::new();
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
        if h.address.trim().is_empty() {
            c.add(format!("{hp}.address"), "the address is empty", None);
        }
        let internal: Option<IpAddr> = match &h.internal_address {
            Some(a) => match a.parse() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    c.add(
                        format!("{hp}.internalAddress"),
                        format!("internal address `{}` is not an IP address", shown(a)),
                        Some(
                            "the internal address is what the cluster advertises; write the host's IP".into(),
                        ),
                    );
                    None
                }
            },
            None => match h.address.parse() {
                Ok(ip) => Some(ip),
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
        for (field, value) in
            [("address", Some(h.address.clone())), ("internalAddress", h.internal_address.clone())]
        {
            let Some(v) = value else { continue };
            match addrs.get(&v) {
                Some((j, f)) if *j != i => c.add(
                    format!("{hp}.{field}"),
                    format!("address `{}` is also hosts[{j}].{f}", shown(&v)),
                    Some("every host needs its own address".into()),
                ),
                Some(_) => {}
                None => {
                    addrs.insert(v, (i, if field == "address" { "address" } else { "internalAddress" }));
                }
            }
        }
        if let Some(ip) = internal {
            for (path, n) in [("cluster.podCIDR", pod), ("cluster.serviceCIDR", svc)] {
                if let Some(n) = n {
                    if n.contains(&ip) {
                        c.add(
                            format!(
                                "{hp}.{}",
                                if h.internal_address.is_some() { "internalAddress" } else { "address" }
                            ),
                            format!("host address `{ip}` lies inside {path} `{n}`"),
                            Some(format!("choose a {path} that does not contain any host address")),
                        );
                    }
                }
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
                let guess = ROLES
                    .iter()
                    .max_by(|a, b| strsim::jaro_winkler(a, r).total_cmp(&strsim::jaro_winkler(b, r)))
                    .filter(|g| strsim::jaro_winkler(g, r) > 0.7);
                c.add(
                    format!("{hp}.roles[{j}]"),
                    format!("unknown role `{}`", shown(r)),
                    Some(match guess {
                        Some(g) => format!("did you mean `{g}`? Roles are {}", one_of(&ROLES)),
                        None => format!("roles are {}", one_of(&ROLES)),
                    }),
                );
            } else if seen.contains(&r) {
                c.add(format!("{hp}.roles[{j}]"), format!("role `{}` is listed twice", shown(r)), None);
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
                    Some(format!(
                        "use one of {} (Kubernetes names, not `x86_64`/`aarch64`)",
                        one_of(&ARCHES)
                    )),
                );
            }
        }
        for (k, v) in &h.labels {
            if let Err(e) = check_label_key(k) {
                c.add_key(format!("{hp}.labels.{k}"), format!("label key `{}`: {e}", shown(k)), None);
            }
            if let Err(e) = check_label_value(v) {
                c.add(format!("{hp}.labels.{k}"), format!("label `{}`: {e}", shown(k)), None);
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
                            None,
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
            c.add("hosts", format!("{etcd} hosts have the `etcd` role; an even number of members tolerates no more failures than one member fewer"), Some(format!("use an odd number of etcd members: {} or {}", etcd - 1, etcd + 1)));
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

fn check_pins(c: &mut Collector, pins: &BTreeMap<String, String>) {
    for (k, v) in pins {
        if k.split_once('/').is_none_or(|(comp, arch)| comp.is_empty() || !ARCHES.contains(&arch)) {
            c.add_key(
                format!("cluster.releaseSource.pins.{k}"),
                format!("pin key `{}` is not `component/arch`", shown(k)),
                Some("write e.g. `kubelet/amd64: sha256:<64 hex digits>`".into()),
            );
        }
        let ok = v
            .strip_prefix("sha256:")
            .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
        if !ok {
            c.add(
                format!("cluster.releaseSource.pins.{k}"),
                format!("pin `{}` is not `sha256:<64 hex digits>`", shown(v)),
                None,
            );
        }
    }
}
