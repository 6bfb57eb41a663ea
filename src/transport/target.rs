//! The data of an SSH connection: the resolved settings of one host ([`SshTarget`]), the command-line
//! options ([`ConnectOptions`]) and sudo. A leaf of `transport`: [`super::settings`] resolves targets from
//! the inventory and the OpenSSH client config, [`super::ssh`] connects to them; neither imports the other.

use super::known_hosts::HostKeyPolicy;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A secret string (sudo password): never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret value; only for sending it to the host.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How privileged commands run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SudoMode {
    /// The login user is root (or sudo is disabled): commands run as they are.
    Off,
    /// `sudo -n` (passwordless sudo).
    NoPassword,
    /// `sudo -S` with this password written to its stdin (never on the command line), on hosts whose sudo
    /// asks for a password (probed once per connection with `sudo -n true`); `sudo -n` on the others.
    Password(Secret),
}

/// Options that come from the command line rather than the inventory.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Record unknown host keys (`--accept-new-host-keys`).
    pub accept_new_host_keys: bool,
    /// TCP connect + handshake + authentication limit.
    pub connect_timeout: Duration,
    /// Interval of SSH keepalives (a dead peer is detected after 3 missed ones).
    pub keepalive: Duration,
    /// Sudo password typed at a prompt, used when the inventory names no environment variable.
    pub sudo_password: Option<Secret>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            accept_new_host_keys: false,
            connect_timeout: Duration::from_secs(15),
            keepalive: Duration::from_secs(15),
            sudo_password: None,
        }
    }
}

/// Fully resolved connection settings for one host: the inventory, then the OpenSSH client config, then
/// kubeforge's defaults (see [`super::settings`]).
#[derive(Debug, Clone)]
pub struct SshTarget {
    /// Host name (inventory `name`), used in every message.
    pub name: String,
    /// Address connected to.
    pub address: String,
    /// Port.
    pub port: u16,
    /// Login user.
    pub user: String,
    /// Private key files, tried in order.
    pub identity_files: Vec<PathBuf>,
    /// Try keys from ssh-agent.
    pub agent: bool,
    /// How the host key is checked.
    pub host_key: HostKeyPolicy,
    /// Privilege escalation.
    pub sudo: SudoMode,
    /// The jump host this host is reached through, when one is used. A chain of jump hosts is nested:
    /// the jump host's own `bastion` is the hop before it, so the first hop is the innermost.
    pub bastion: Option<Box<SshTarget>>,
    /// Connect limit.
    pub connect_timeout: Duration,
    /// Keepalive interval.
    pub keepalive: Duration,
}
