//! Host key verification against OpenSSH `known_hosts` files or a key pinned in the inventory, and
//! recording of newly accepted keys. This module only decides; the SSH handler turns its verdict into a
//! refusal.
//!
//! The file is read as `sshd(8)` (section SSH_KNOWN_HOSTS FILE FORMAT) and `ssh(1)` read it:
//! - the host is looked up as `host`, or `[host]:port` for another port than 22; when that finds nothing,
//!   `host` alone is tried, and only a match counts ("checking without port identifier" in `ssh -v`);
//! - the hosts field is either one hashed name (`|1|salt|hmac-sha1`) or a comma-separated pattern list
//!   (`*` and `?` wildcards, case-insensitive) in which a negated `!pattern` that matches excludes the
//!   line even when another pattern matches;
//! - `@revoked` lines (for the hosts they match) name keys that are refused whatever else the file says,
//!   also as the signing key of a host certificate;
//! - `@cert-authority` lines name a CA whose host certificates are trusted for the hosts they match: the
//!   certificate must be a host certificate signed by that CA, inside its validity window, list the host
//!   among its principals (or list none, which OpenSSH accepts) and carry no critical option. A
//!   certificate that fails any of these is refused, as by OpenSSH; a certificate from a CA the file does
//!   not trust is checked as the plain key it certifies (OpenSSH's "retry with plain key").
//! - the host is asked for the key types recorded for it first ([`recorded_algorithms`]), as `ssh` orders
//!   its `HostKeyAlgorithms`; a host whose recorded keys all differ from the offered one is "changed"
//!   (OpenSSH calls a host that offers only unrecorded types "new"; refusing is the safe side).

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use russh::keys::{Algorithm, Certificate, HashAlg, PublicKey};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where the expected key for a host comes from.
#[derive(Debug, Clone)]
pub enum HostKeyPolicy {
    /// Check against this known_hosts file; when the host is unknown and `accept_new` is set, append it.
    KnownHosts {
        /// The file (created on first accepted key).
        path: PathBuf,
        /// `--accept-new-host-keys`: record unknown hosts instead of refusing them.
        accept_new: bool,
    },
    /// [`HostKeyPolicy::KnownHosts`] reading further files too, as ssh does (what settings resolve to).
    KnownHostsFiles {
        /// The file new keys are recorded in (created on first accepted key).
        path: PathBuf,
        /// `--accept-new-host-keys`: record unknown hosts instead of refusing them.
        accept_new: bool,
        /// Further files read together with `path`, never written: the other `UserKnownHostsFile`
        /// entries and the global files (`GlobalKnownHostsFile`, default `/etc/ssh/ssh_known_hosts` and
        /// `/etc/ssh/ssh_known_hosts2`). A missing one is empty.
        also: Vec<PathBuf>,
    },
    /// Only this key is accepted (`ssh.hostKey` in the inventory, `ssh-ed25519 AAAA...`).
    Pinned(String),
}

impl HostKeyPolicy {
    /// For a known_hosts policy: the file new keys go to, whether unknown keys are recorded, and the
    /// files read besides it.
    pub fn known_hosts(&self) -> Option<(&Path, bool, &[PathBuf])> {
        match self {
            HostKeyPolicy::KnownHosts { path, accept_new } => Some((path, *accept_new, &[])),
            HostKeyPolicy::KnownHostsFiles { path, accept_new, also } => Some((path, *accept_new, also)),
            HostKeyPolicy::Pinned(_) => None,
        }
    }
}

/// The outcome of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The key matches a recorded one (or a certificate from a trusted CA is valid for the host).
    Known,
    /// The host has no recorded key.
    Unknown,
    /// The host has recorded keys and this one is not among them.
    Changed {
        /// `file:line` or `the inventory`.
        recorded_in: String,
    },
    /// The file refuses what the host presented: a `@revoked` key, or an invalid certificate from a CA it
    /// trusts. Never overridden by `--accept-new-host-keys`.
    Refused {
        /// What is wrong and where the file says so (`file:line`).
        reason: String,
    },
}

/// `host` for port 22, otherwise `[host]:port`: the name OpenSSH hashes and writes.
pub fn host_pattern(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// The OpenSSH-style fingerprint, `SHA256:...`.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

fn key_blob(key: &PublicKey) -> Option<Vec<u8>> {
    key.to_bytes().ok()
}

fn parse_key_line(alg_and_b64: &[&str]) -> Option<Vec<u8>> {
    // `keytype base64 [comment]`: compare the decoded wire blob, which also covers the key type.
    let b64 = alg_and_b64.get(1)?;
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// Whether the hosts field of a known_hosts line names `name` (OpenSSH's `match_maybe_hashed`): a hashed
/// field is one name; otherwise a pattern list, in which a matching negated pattern wins.
fn hosts_match(hosts: &str, name: &str) -> bool {
    if let Some(rest) = hosts.strip_prefix("|1|") {
        let mut parts = rest.splitn(2, '|');
        let (Some(salt), Some(hash)) = (parts.next(), parts.next()) else { return false };
        let b64 = base64::engine::general_purpose::STANDARD;
        let (Ok(salt), Ok(hash)) = (b64.decode(salt), b64.decode(hash)) else { return false };
        let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(&salt) else { return false };
        // ssh lowercases the host name before hashing it (and before matching patterns).
        mac.update(name.to_ascii_lowercase().as_bytes());
        mac.verify_slice(&hash).is_ok()
    } else {
        crate::sshconfig::pattern_list(name, hosts) == 1
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    None,
    Revoked,
    CertAuthority,
}

/// One line of a known_hosts file that applies to the host looked up.
struct Entry {
    at: String,
    marker: Marker,
    key: Vec<u8>,
}

/// The lines of `content` whose hosts field matches `name` (unparseable lines are skipped, as by ssh).
fn entries(content: &str, file: &str, name: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    for (i, line) in content.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields: Vec<&str> = line.split_whitespace().collect();
        let marker = match fields.first().copied() {
            Some("@revoked") => Marker::Revoked,
            Some("@cert-authority") => Marker::CertAuthority,
            // An unknown marker makes OpenSSH skip the line.
            Some(m) if m.starts_with('@') => continue,
            _ => Marker::None,
        };
        if marker != Marker::None {
            fields.remove(0);
        }
        let Some(hosts) = fields.first() else { continue };
        if !hosts_match(hosts, name) {
            continue;
        }
        let Some(key) = parse_key_line(&fields[1..]) else { continue };
        out.push(Entry { at: format!("{file}:{}", i + 1), marker, key });
    }
    out
}

/// The matching lines of every source (`(file name, text)`), in order.
fn entries_in(sources: &[(String, String)], name: &str) -> Vec<Entry> {
    sources.iter().flat_map(|(file, text)| entries(text, file, name)).collect()
}

fn revoked<'a>(entries: &'a [Entry], blob: &[u8]) -> Option<&'a Entry> {
    entries.iter().find(|e| e.marker == Marker::Revoked && e.key == blob)
}

fn check_key_entries(entries: &[Entry], offered: &[u8]) -> Verdict {
    if let Some(e) = revoked(entries, offered) {
        return Verdict::Refused { reason: format!("{} marks this host key @revoked", e.at) };
    }
    let plain = || entries.iter().filter(|e| e.marker == Marker::None);
    if plain().any(|e| e.key == offered) {
        return Verdict::Known;
    }
    match plain().next() {
        Some(e) => Verdict::Changed { recorded_in: e.at.clone() },
        None => Verdict::Unknown,
    }
}

/// `check` for `[host]:port`; for another port than 22, when that finds nothing, for `host` alone, of
/// which only a match (or, stricter than OpenSSH, a revocation) counts: a differing key recorded for the
/// bare name leaves the host unknown, as with ssh.
fn with_bare_fallback(host: &str, port: u16, check: impl Fn(&str) -> Verdict) -> Verdict {
    let v = check(&host_pattern(host, port));
    if v != Verdict::Unknown || port == 22 {
        return v;
    }
    match check(host) {
        v @ (Verdict::Known | Verdict::Refused { .. }) => v,
        _ => Verdict::Unknown,
    }
}

/// Checks the plain key `key` for `host:port` in the known_hosts text `content` (named `file` in messages).
pub fn check_text(content: &str, file: &str, host: &str, port: u16, key: &PublicKey) -> Verdict {
    check_sources(&[(file.to_string(), content.to_string())], host, port, key)
}

/// [`check_text`] over several files read together (`(file name, text)`), as ssh reads its user and
/// global known_hosts files: a key recorded in any of them is known, a revocation in any of them refuses.
pub fn check_sources(sources: &[(String, String)], host: &str, port: u16, key: &PublicKey) -> Verdict {
    let Some(offered) = key_blob(key) else {
        return Verdict::Changed { recorded_in: "the offered key (unencodable)".into() };
    };
    with_bare_fallback(host, port, |name| check_key_entries(&entries_in(sources, name), &offered))
}

/// The algorithms of the plain keys recorded for `host:port` (or, when there are none, for `host`), in file
/// order. kubeforge asks the host for these first, as `ssh` puts the algorithms of known keys first in its
/// `HostKeyAlgorithms`: a host recorded with only its ECDSA key then presents that one, not its Ed25519 key.
pub fn recorded_algorithms(sources: &[(String, String)], host: &str, port: u16) -> Vec<Algorithm> {
    let of = |name: &str| -> Vec<Algorithm> {
        entries_in(sources, name)
            .iter()
            .filter(|e| e.marker == Marker::None)
            .filter_map(|e| PublicKey::from_bytes(&e.key).ok().map(|k| k.algorithm()))
            .collect()
    };
    let found = of(&host_pattern(host, port));
    if found.is_empty() && port != 22 {
        of(host)
    } else {
        found
    }
}

/// Whether `content` has a `@cert-authority` line for `host:port` (or `host`): then kubeforge asks the
/// host for its certificate, as OpenSSH does.
pub fn trusts_a_ca_for(sources: &[(String, String)], host: &str, port: u16) -> bool {
    [host_pattern(host, port), host.to_string()]
        .iter()
        .any(|name| entries_in(sources, name).iter().any(|e| e.marker == Marker::CertAuthority))
}

/// Checks the host certificate `cert` for `host:port` at `now` (Unix seconds), as `ssh(1)` does: revoked
/// keys first, then a `@cert-authority` line for the host whose key signed it (the certificate must then be
/// valid for the host, or the host is refused); with no such line, the certified key is checked as a plain
/// key.
pub fn check_cert_text(
    content: &str,
    file: &str,
    host: &str,
    port: u16,
    cert: &Certificate,
    now: u64,
) -> Verdict {
    check_cert_sources(&[(file.to_string(), content.to_string())], host, port, cert, now)
}

/// [`check_cert_text`] over several files read together (see [`check_sources`]).
pub fn check_cert_sources(
    sources: &[(String, String)],
    host: &str,
    port: u16,
    cert: &Certificate,
    now: u64,
) -> Verdict {
    with_bare_fallback(host, port, |name| check_cert_entries(&entries_in(sources, name), host, cert, now))
}

fn check_cert_entries(es: &[Entry], host: &str, cert: &Certificate, now: u64) -> Verdict {
    let plain = PublicKey::new(cert.public_key().clone(), "");
    let ca = PublicKey::new(cert.signature_key().clone(), "");
    let (Some(plain_blob), Some(ca_blob)) = (key_blob(&plain), key_blob(&ca)) else {
        return Verdict::Changed { recorded_in: "the certificate (unencodable key)".into() };
    };
    if let Some(e) = revoked(es, &plain_blob) {
        return Verdict::Refused { reason: format!("{} marks the certified host key @revoked", e.at) };
    }
    if let Some(e) = revoked(es, &ca_blob) {
        return Verdict::Refused {
            reason: format!("{} marks the CA that signed the host certificate @revoked", e.at),
        };
    }
    let Some(trusted) = es.iter().find(|e| e.marker == Marker::CertAuthority && e.key == ca_blob) else {
        // OpenSSH: "No matching CA found. Retry with plain key".
        return check_key_entries(es, &plain_blob);
    };
    let problem = if cert.cert_type() != russh::keys::ssh_key::certificate::CertType::Host {
        Some("it is a user certificate, not a host certificate".to_string())
    } else if cert.validate_at(now, [&ca.fingerprint(HashAlg::Sha256)]).is_err() {
        Some(if now < cert.valid_after() || now >= cert.valid_before() {
            "it is outside its validity period (expired or not yet valid)".to_string()
        } else {
            "its signature does not verify with the CA key".to_string()
        })
    } else if !cert.valid_principals().is_empty()
        && !cert.valid_principals().iter().any(|p| *p == host.to_ascii_lowercase())
    {
        Some(format!("it is not valid for {host} (principals: {})", cert.valid_principals().join(", ")))
    } else if !cert.critical_options().is_empty() {
        Some("it carries critical options, which a host certificate must not".to_string())
    } else {
        None
    };
    match problem {
        None => Verdict::Known,
        Some(p) => Verdict::Refused {
            reason: format!("the host certificate from the CA trusted at {} is not valid: {p}", trusted.at),
        },
    }
}

/// Checks `key` against a known_hosts file (a missing file means every host is unknown).
pub fn check_file(path: &Path, host: &str, port: u16, key: &PublicKey) -> std::io::Result<Verdict> {
    Ok(check_text(&read(path)?, &path.display().to_string(), host, port, key))
}

/// The `(file name, text)` of `path` and then of each of `also`, as [`check_sources`] takes them; a
/// missing file is empty. The error names the file that cannot be read.
pub fn read_all(path: &Path, also: &[PathBuf]) -> Result<Vec<(String, String)>, String> {
    std::iter::once(path)
        .chain(also.iter().map(PathBuf::as_path))
        .map(|p| {
            read(p)
                .map(|t| (p.display().to_string(), t))
                .map_err(|e| format!("{} (unreadable: {e})", p.display()))
        })
        .collect()
}

/// The text of a known_hosts file; a missing file, or `none` (`UserKnownHostsFile none`), is empty (every
/// host is unknown).
pub fn read(path: &Path) -> std::io::Result<String> {
    if path == Path::new("none") {
        return Ok(String::new());
    }
    match std::fs::read_to_string(path) {
        Ok(c) => Ok(c),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(e),
    }
}

/// Checks `key` against a pinned `keytype base64` string.
pub fn check_pinned(pinned: &str, key: &PublicKey) -> Verdict {
    let fields: Vec<&str> = pinned.split_whitespace().collect();
    match (parse_key_line(&fields), key_blob(key)) {
        (Some(a), Some(b)) if a == b => Verdict::Known,
        _ => Verdict::Changed { recorded_in: "the inventory (ssh.hostKey)".into() },
    }
}

/// Appends `host:port key` to a known_hosts file (creating it and its directory, mode 0600 for a new file).
/// Serialized by a process-wide lock so parallel connections do not interleave lines.
pub fn record(path: &Path, host: &str, port: u16, key: &PublicKey) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let line = key.to_openssh().map_err(std::io::Error::other)?;
    let existing = std::fs::read(path).unwrap_or_default();
    let mut f = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
    let sep = if existing.is_empty() || existing.ends_with(b"\n") { "" } else { "\n" };
    writeln!(f, "{sep}{} {line}", host_pattern(host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
    const K2: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA6rWI3G2sz07DnfFlrouTcysQlj2P+jpNSOEWD9OJ3X";

    fn key(s: &str) -> PublicKey {
        PublicKey::from_openssh(s).unwrap()
    }

    fn hashed(pattern: &str) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        let salt = [7u8; 20];
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(&salt).unwrap();
        mac.update(pattern.as_bytes());
        format!("|1|{}|{}", b64.encode(salt), b64.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn plain_port_and_hashed_entries() {
        let text = format!("# c\nother {K2}\n[10.0.0.1]:2222 {K1}\n{} {K1}\n", hashed("node-a"));
        assert_eq!(check_text(&text, "kh", "10.0.0.1", 2222, &key(K1)), Verdict::Known);
        assert_eq!(check_text(&text, "kh", "10.0.0.1", 22, &key(K1)), Verdict::Unknown);
        assert_eq!(check_text(&text, "kh", "node-a", 22, &key(K1)), Verdict::Known);
        assert_eq!(
            check_text(&text, "kh", "node-a", 22, &key(K2)),
            Verdict::Changed { recorded_in: "kh:4".into() }
        );
        assert_eq!(check_text(&text, "kh", "node-b", 22, &key(K1)), Verdict::Unknown);
    }

    #[test]
    fn revoked_and_pinned() {
        // `@revoked` applies to the hosts its pattern matches (`*` here), whatever else the file says.
        let text = format!("@revoked * {K1}\nh {K1}\n");
        let v = check_text(&text, "kh", "h", 22, &key(K1));
        assert_eq!(v, Verdict::Refused { reason: "kh:1 marks this host key @revoked".into() });
        assert_eq!(
            check_text(&text, "kh", "h", 22, &key(K2)),
            Verdict::Changed { recorded_in: "kh:2".into() }
        );
        assert_eq!(
            check_text(&format!("@revoked other {K1}\nh {K1}\n"), "kh", "h", 22, &key(K1)),
            Verdict::Known
        );
        assert_eq!(check_pinned(K1, &key(K1)), Verdict::Known);
        assert!(matches!(check_pinned(K2, &key(K1)), Verdict::Changed { .. }));
    }

    #[test]
    fn wildcard_and_negated_patterns_match_as_in_openssh() {
        let text = format!(
            "*.example.org,!bad.example.org {K1}\n[10.0.0.?]:2222 {K1}\n10.1.*,!10.1.0.9 {K2}\nNODE-B {K1}\n"
        );
        let at = |h: &str, port: u16, k: &str| check_text(&text, "kh", h, port, &key(k));
        assert_eq!(at("a.example.org", 22, K1), Verdict::Known);
        assert_eq!(at("a.example.org", 22, K2), Verdict::Changed { recorded_in: "kh:1".into() });
        assert_eq!(at("bad.example.org", 22, K1), Verdict::Unknown, "a matching negation excludes the line");
        assert_eq!(at("example.org", 22, K1), Verdict::Unknown);
        assert_eq!(at("10.0.0.7", 2222, K1), Verdict::Known, "[host]:port with a wildcard");
        assert_eq!(at("10.0.0.7", 22, K1), Verdict::Unknown, "another port is another name");
        assert_eq!(at("10.0.0.17", 2222, K1), Verdict::Unknown, "? is one character");
        assert_eq!(at("10.1.4.4", 22, K2), Verdict::Known);
        assert_eq!(at("10.1.0.9", 22, K2), Verdict::Unknown);
        assert_eq!(at("node-b", 22, K1), Verdict::Known, "names are case-insensitive");
        // Another port: `[host]:port` first, then the bare name, of which only a match counts.
        assert_eq!(at("node-b", 2200, K1), Verdict::Known, "ssh: checking without port identifier");
        assert_eq!(at("node-b", 2200, K2), Verdict::Unknown, "a differing bare entry leaves it unknown");
        let both = format!("[node-b]:2200 {K2}\nnode-b {K1}\n");
        assert_eq!(
            check_text(&both, "kh", "node-b", 2200, &key(K1)),
            Verdict::Changed { recorded_in: "kh:1".into() },
            "the [host]:port entry decides when there is one"
        );
        // A hashed field is one name: its commas are not a list.
        let text = format!("{} {K1}\n", hashed("[h]:2200"));
        assert_eq!(check_text(&text, "kh", "h", 2200, &key(K1)), Verdict::Known);
        assert_eq!(
            check_text(&text, "kh", "H", 2200, &key(K1)),
            Verdict::Known,
            "hashed as ssh does: lower case"
        );
        let algs = recorded_algorithms(
            &[("kh".into(), format!("[n]:2200 {K1}\n@cert-authority * {CA}\n"))],
            "n",
            2200,
        );
        assert_eq!(algs, [Algorithm::Ed25519]);
        assert!(recorded_algorithms(&[("kh".into(), text.clone())], "n", 2200).is_empty());
        assert!(trusts_a_ca_for(
            &[("kh".into(), format!("@cert-authority *.example.org {CA}\n"))],
            "n.example.org",
            22
        ));
        assert!(!trusts_a_ca_for(
            &[("kh".into(), format!("@cert-authority *,!n.example.org {CA}\n"))],
            "n.example.org",
            22
        ));
        assert!(!trusts_a_ca_for(&[("kh".into(), format!("* {CA}\n"))], "n.example.org", 22));
    }

    /// Made with `ssh-keygen -s ca -h -n node-a -V always:forever` over the key `HOST` (`CERT_OK`),
    /// `-V 20200101:20200102` (`CERT_EXPIRED`), without `-h` (`CERT_USER`) and signed by `OTHER_CA`.
    const CA: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINWHPMI2iTntYGiaQ87zc+VEjQn1fdIAp1BDnDHFJg6m";
    const OTHER_CA: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJDtp350H3OjwcsczBJyOv4DOvzSpdaIfipJeeqGk05r";
    const HOST: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGdoOCTlsVahPxzp83rqVAlT5x9h30ake++HtMWmI5LR";
    const CERT_OK: &str = "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29tAAAAIP42tW1ieM4G71A2d2fc8SSB2uHaEmuFt/ogSefZUEkpAAAAIGdoOCTlsVahPxzp83rqVAlT5x9h30ake++HtMWmI5LRAAAAAAAAAAAAAAACAAAAAm9rAAAACgAAAAZub2RlLWEAAAAAAAAAAP//////////AAAAAAAAAAAAAAAAAAAAMwAAAAtzc2gtZWQyNTUxOQAAACDVhzzCNok57WBomkPO83PlRI0J9X3SAKdQQ5wxxSYOpgAAAFMAAAALc3NoLWVkMjU1MTkAAABAkJ4Cvbm8wsAvJOZrSqTOUHOOQpI0C4BfK1QeDdWjW5it3uDXtV3dumJJnroC2fvw6Ff+RrQ959JNY411MGbAAA==";
    const CERT_EXPIRED: &str = "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29tAAAAIDjEDrRUys/8++ccWL64y/xVs/iuw09UCutE7CY9nNESAAAAIGdoOCTlsVahPxzp83rqVAlT5x9h30ake++HtMWmI5LRAAAAAAAAAAAAAAACAAAAB2V4cGlyZWQAAAAKAAAABm5vZGUtYQAAAABeC+EAAAAAAF4NMoAAAAAAAAAAAAAAAAAAAAAzAAAAC3NzaC1lZDI1NTE5AAAAINWHPMI2iTntYGiaQ87zc+VEjQn1fdIAp1BDnDHFJg6mAAAAUwAAAAtzc2gtZWQyNTUxOQAAAED9/y/zX++VfMEWcX2Cz6KuXH59Ga0qkty0fBICf03ApSTG14PUY7zL2KSUxJ6gRta3Deus2yr+cSddjgxShYcB";
    const CERT_USER: &str = "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29tAAAAIBOzeb29TuuYTP0nK+DlN7KFivsHGohefu7kEzFPyclzAAAAIGdoOCTlsVahPxzp83rqVAlT5x9h30ake++HtMWmI5LRAAAAAAAAAAAAAAABAAAABHVzZXIAAAAKAAAABm5vZGUtYQAAAAAAAAAA//////////8AAAAAAAAAggAAABVwZXJtaXQtWDExLWZvcndhcmRpbmcAAAAAAAAAF3Blcm1pdC1hZ2VudC1mb3J3YXJkaW5nAAAAAAAAABZwZXJtaXQtcG9ydC1mb3J3YXJkaW5nAAAAAAAAAApwZXJtaXQtcHR5AAAAAAAAAA5wZXJtaXQtdXNlci1yYwAAAAAAAAAAAAAAMwAAAAtzc2gtZWQyNTUxOQAAACDVhzzCNok57WBomkPO83PlRI0J9X3SAKdQQ5wxxSYOpgAAAFMAAAALc3NoLWVkMjU1MTkAAABA3BHDgbgD99PJ4p4od1ZXrgrMj7sule5TvvJAGo3j9Kaxd5FYv1DQDT4a5Af6bOto/9Yfw03cb0FIl/KvPyVMBw==";
    const CERT_OTHER_CA: &str = "ssh-ed25519-cert-v01@openssh.com AAAAIHNzaC1lZDI1NTE5LWNlcnQtdjAxQG9wZW5zc2guY29tAAAAIFyXdtaQX087QRAOGRQyZSsOZDttB01fNVgDBiwwtMLqAAAAIGdoOCTlsVahPxzp83rqVAlT5x9h30ake++HtMWmI5LRAAAAAAAAAAAAAAACAAAAB290aGVyY2EAAAAKAAAABm5vZGUtYQAAAAAAAAAA//////////8AAAAAAAAAAAAAAAAAAAAzAAAAC3NzaC1lZDI1NTE5AAAAIJDtp350H3OjwcsczBJyOv4DOvzSpdaIfipJeeqGk05rAAAAUwAAAAtzc2gtZWQyNTUxOQAAAEBzUio1agH7Q26b8nee9mH7sjV7mNrWkaQ5wbncDRszC9JF4M+kCXC2FBzYGssHOL2Y8+sz06HOLRXE5ae+xHEE";
    const NOW: u64 = 1_796_000_000;

    fn cert(s: &str) -> Certificate {
        Certificate::from_openssh(s).unwrap()
    }

    #[test]
    fn a_host_certificate_from_a_trusted_ca_verifies_the_host_and_a_bad_one_is_refused() {
        let ca_line = format!("@cert-authority node-* {CA}\n");
        let check = |text: &str, host: &str, c: &str| check_cert_text(text, "kh", host, 22, &cert(c), NOW);
        assert_eq!(check(&ca_line, "node-a", CERT_OK), Verdict::Known);
        assert_eq!(check(&ca_line, "NODE-A", CERT_OK), Verdict::Known, "ssh compares the lower-cased name");
        let refused = |v: Verdict, want: &str| match v {
            Verdict::Refused { reason } => assert!(reason.contains(want), "{reason}"),
            other => panic!("expected a refusal ({want}), got {other:?}"),
        };
        refused(check(&ca_line, "node-b", CERT_OK), "not valid for node-b (principals: node-a)");
        refused(check(&ca_line, "node-a", CERT_EXPIRED), "outside its validity period");
        refused(check(&ca_line, "node-a", CERT_USER), "not a host certificate");
        // The CA line does not cover the host: the certified key is checked as a plain key.
        assert_eq!(check(&ca_line, "other", CERT_OK), Verdict::Unknown);
        assert_eq!(check(&format!("{ca_line}node-a {HOST}\n"), "other", CERT_OK), Verdict::Unknown);
        // A CA the file does not trust: plain key check (known, changed or unknown as for any key).
        assert_eq!(check(&ca_line, "node-a", CERT_OTHER_CA), Verdict::Unknown);
        assert_eq!(check(&format!("{ca_line}node-a {HOST}\n"), "node-a", CERT_OTHER_CA), Verdict::Known);
        assert_eq!(
            check(&format!("node-a {OTHER_CA}\n"), "node-a", CERT_OTHER_CA),
            Verdict::Changed { recorded_in: "kh:1".into() }
        );
        // Revoked: the certified key, or the CA that signed it.
        refused(
            check(&format!("{ca_line}@revoked * {HOST}\n"), "node-a", CERT_OK),
            "kh:2 marks the certified host key @revoked",
        );
        refused(check(&format!("@revoked * {CA}\n{ca_line}"), "node-a", CERT_OK), "kh:1 marks the CA");
    }

    #[test]
    fn several_files_are_read_together_as_ssh_reads_user_and_global_files() {
        let user = ("user".to_string(), format!("other {K2}\n"));
        let global = ("global".to_string(), format!("h {K1}\n@cert-authority * {CA}\n"));
        let both = [user.clone(), global.clone()];
        assert_eq!(check_sources(&both, "h", 22, &key(K1)), Verdict::Known, "recorded in the global file");
        assert_eq!(
            check_sources(&both, "h", 22, &key(K2)),
            Verdict::Changed { recorded_in: "global:1".into() }
        );
        assert!(trusts_a_ca_for(&both, "n", 22));
        assert_eq!(check_cert_sources(&both, "node-a", 22, &cert(CERT_OK), NOW), Verdict::Known);
        // `UserKnownHostsFile none` names no file, not a file called `none`.
        assert_eq!(read_all(Path::new("none"), &[]).unwrap(), [("none".to_string(), String::new())]);
        let revoked = [("user".to_string(), format!("@revoked * {K1}\n")), global];
        assert!(matches!(check_sources(&revoked, "h", 22, &key(K1)), Verdict::Refused { .. }));
    }

    #[test]
    fn record_then_known() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/known_hosts");
        record(&p, "127.0.0.2", 2200, &key(K1)).unwrap();
        assert_eq!(check_file(&p, "127.0.0.2", 2200, &key(K1)).unwrap(), Verdict::Known);
        assert!(std::fs::read_to_string(&p).unwrap().starts_with("[127.0.0.2]:2200 ssh-ed25519 "));
    }
}
