//! Host key verification against OpenSSH `known_hosts` files (plain, wildcard-free patterns, `[host]:port`,
//! hashed `|1|salt|hash` entries, `@revoked`) or a key pinned in the inventory, and recording of newly
//! accepted keys. This module only decides; the SSH handler turns its verdict into a refusal.

use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use russh::keys::{HashAlg, PublicKey};
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
    /// Only this key is accepted (`ssh.hostKey` in the inventory, `ssh-ed25519 AAAA...`).
    Pinned(String),
}

/// The outcome of a check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The key matches a recorded one.
    Known,
    /// The host has no recorded key.
    Unknown,
    /// The host has recorded keys and this one is not among them (or it is revoked).
    Changed {
        /// `file:line` or `the inventory`.
        recorded_in: String,
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

/// Whether one comma-separated host entry of a known_hosts line names `pattern`.
fn entry_matches(entry: &str, pattern: &str) -> bool {
    if let Some(rest) = entry.strip_prefix("|1|") {
        let mut parts = rest.splitn(2, '|');
        let (Some(salt), Some(hash)) = (parts.next(), parts.next()) else { return false };
        let b64 = base64::engine::general_purpose::STANDARD;
        let (Ok(salt), Ok(hash)) = (b64.decode(salt), b64.decode(hash)) else { return false };
        let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(&salt) else { return false };
        mac.update(pattern.as_bytes());
        mac.verify_slice(&hash).is_ok()
    } else {
        // Negated and wildcard patterns are rare in files kubeforge reads; an exact match is required.
        entry.eq_ignore_ascii_case(pattern)
    }
}

/// Checks `key` for `host:port` in the known_hosts text `content` (named `file` in messages).
pub fn check_text(content: &str, file: &str, host: &str, port: u16, key: &PublicKey) -> Verdict {
    let pattern = host_pattern(host, port);
    let Some(offered) = key_blob(key) else { return Verdict::Changed { recorded_in: file.into() } };
    let mut first_other: Option<String> = None;
    let mut known = false;
    for (i, line) in content.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields: Vec<&str> = line.split_whitespace().collect();
        let mut revoked = false;
        if let Some(m) = fields.first().filter(|f| f.starts_with('@')) {
            match *m {
                "@revoked" => revoked = true,
                // Certificate authorities are not supported: such lines neither accept nor reject.
                _ => continue,
            }
            fields.remove(0);
        }
        let Some(hosts) = fields.first() else { continue };
        let matches = if revoked { true } else { hosts.split(',').any(|e| entry_matches(e, &pattern)) };
        if !matches {
            continue;
        }
        let Some(recorded) = parse_key_line(&fields[1..]) else { continue };
        let at = format!("{file}:{}", i + 1);
        if recorded == offered {
            if revoked {
                return Verdict::Changed { recorded_in: format!("{at} (@revoked)") };
            }
            known = true;
        } else if !revoked && first_other.is_none() {
            first_other = Some(at);
        }
    }
    match (known, first_other) {
        (true, _) => Verdict::Known,
        // OpenSSH would negotiate a recorded algorithm first; we compare every recorded key, and a host
        // with recorded keys none of which match is treated as changed: refusing is the safe side.
        (false, Some(at)) => Verdict::Changed { recorded_in: at },
        (false, None) => Verdict::Unknown,
    }
}

/// Checks `key` against a known_hosts file (a missing file means every host is unknown).
pub fn check_file(path: &Path, host: &str, port: u16, key: &PublicKey) -> std::io::Result<Verdict> {
    let content = match std::fs::read_to_string(path) {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    Ok(check_text(&content, &path.display().to_string(), host, port, key))
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
        let text = format!("@revoked * {K1}\nh {K1}\n");
        assert!(matches!(check_text(&text, "kh", "h", 22, &key(K1)), Verdict::Changed { .. }));
        assert_eq!(check_pinned(K1, &key(K1)), Verdict::Known);
        assert!(matches!(check_pinned(K2, &key(K1)), Verdict::Changed { .. }));
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
