//! The SSH transport (russh): resolved connection settings from the inventory and the OpenSSH client
//! config ([`SshTarget`], resolved by [`super::settings`]), one connection per host for the whole run
//! (reopened lazily after a drop), a channel per command, identity-file and ssh-agent authentication,
//! jump hosts (a chain, each hop tunnelled through the one before with `direct-tcpip`), host key
//! verification (known_hosts or a pinned key; host certificates are asked for when known_hosts trusts a
//! CA for the host), sudo (a configured password only reaches hosts whose sudo asks for one), timeouts
//! and keepalives.

use super::known_hosts::{self, HostKeyPolicy, Verdict};
use super::{
    pump, Command, ExecOutput, OutputCollector, OutputSink, Stats, StatsSnapshot, Stream, Transport,
    TransportError,
};
use futures::future::BoxFuture;
use russh::client;
use russh::keys::{PrivateKeyWithHashAlg, PublicKey};
use russh::ChannelMsg;
use std::fmt;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncRead;

pub use super::target::{ConnectOptions, Secret, SshTarget, SudoMode};

impl SshTarget {
    /// Whether the known_hosts file has a `@cert-authority` line for this host (an unreadable file is
    /// reported by the key check itself).
    fn wants_certificate(&self) -> bool {
        self.host_key.known_hosts().is_some_and(|(path, _, also)| {
            known_hosts::read_all(path, also)
                .is_ok_and(|files| known_hosts::trusts_a_ca_for(&files, &self.address, self.port))
        })
    }

    /// The algorithms of the keys this host is expected to present: the pinned key's, or those recorded in
    /// known_hosts for it.
    fn expected_algorithms(&self) -> Vec<russh::keys::Algorithm> {
        match (&self.host_key, self.host_key.known_hosts()) {
            (HostKeyPolicy::Pinned(k), _) => {
                PublicKey::from_openssh(k).map(|k| vec![k.algorithm()]).unwrap_or_default()
            }
            (_, Some((path, _, also))) => known_hosts::read_all(path, also)
                .map(|files| known_hosts::recorded_algorithms(&files, &self.address, self.port))
                .unwrap_or_default(),
            (_, None) => Vec::new(),
        }
    }

    fn addr(&self) -> String {
        format!("{}:{}", self.address, self.port)
    }

    fn config(&self) -> Arc<client::Config> {
        let mut preferred = russh::Preferred::default();
        let expected = self.expected_algorithms();
        if !expected.is_empty() {
            // The expected key types first (a stable sort keeps russh's order otherwise): the host then
            // presents the key that is recorded or pinned rather than another one of its keys.
            let same = |a: &russh::keys::Algorithm, b: &russh::keys::Algorithm| {
                a == b || (a.clone().is_rsa() && b.clone().is_rsa())
            };
            let mut key = preferred.key.to_vec();
            key.sort_by_key(|a| !expected.iter().any(|e| same(a, e)));
            preferred.key = std::borrow::Cow::Owned(key);
        }
        if self.wants_certificate() {
            // Ask for the host's certificate, as OpenSSH does: a certificate from a CA that known_hosts
            // trusts verifies the host; one from another CA is checked as the plain key it certifies.
            use russh::keys::{Algorithm, EcdsaCurve, HashAlg};
            preferred.host_key_certificates = std::borrow::Cow::Owned(vec![
                Algorithm::Ed25519,
                Algorithm::Ecdsa { curve: EcdsaCurve::NistP256 },
                Algorithm::Ecdsa { curve: EcdsaCurve::NistP384 },
                Algorithm::Ecdsa { curve: EcdsaCurve::NistP521 },
                Algorithm::Rsa { hash: Some(HashAlg::Sha512) },
                Algorithm::Rsa { hash: Some(HashAlg::Sha256) },
            ]);
        }
        Arc::new(client::Config {
            preferred,
            keepalive_interval: Some(self.keepalive),
            keepalive_max: 3,
            inactivity_timeout: None,
            // Bigger windows and packets: a 50 MB upload is window-bound on loopback with the defaults.
            window_size: 8 * 1024 * 1024,
            maximum_packet_size: 65535,
            channel_buffer_size: 256,
            nodelay: true,
            ..Default::default()
        })
    }
}

/// What the handler saw when it refused a host key; turned into a precise error after `connect` fails.
#[derive(Debug, Clone)]
struct KeyRefusal {
    verdict: Verdict,
    fingerprint: String,
}

struct Handler {
    host: String,
    address: String,
    port: u16,
    policy: HostKeyPolicy,
    refusal: Arc<Mutex<Option<KeyRefusal>>>,
}

impl Handler {
    fn verify(&self, presented: &russh::keys::PublicKeyOrCertificate) -> bool {
        use russh::keys::PublicKeyOrCertificate as P;
        let (key, cert) = match presented {
            P::PublicKey { key, .. } => (key.clone(), None),
            P::Certificate(c) => (PublicKey::new(c.public_key().clone(), ""), Some(c)),
        };
        let fp = known_hosts::fingerprint(&key);
        let verdict = match (&self.policy, self.policy.known_hosts()) {
            // A pinned key is compared with the key itself, also when it comes in a certificate.
            (HostKeyPolicy::Pinned(k), _) => known_hosts::check_pinned(k, &key),
            (_, Some((path, accept_new, also))) => match known_hosts::read_all(path, also) {
                Err(recorded_in) => Verdict::Changed { recorded_in },
                Ok(files) => {
                    let v = match cert {
                        Some(c) => {
                            let now = std::time::SystemTime::now()
                                .duration_since(std::time::UNIX_EPOCH)
                                .map(|d| d.as_secs())
                                .unwrap_or(0);
                            known_hosts::check_cert_sources(&files, &self.address, self.port, c, now)
                        }
                        None => known_hosts::check_sources(&files, &self.address, self.port, &key),
                    };
                    match v {
                        Verdict::Unknown if accept_new => {
                            match known_hosts::record(path, &self.address, self.port, &key) {
                                Ok(()) => {
                                    eprintln!(
                                        "{}: recorded new host key {fp} in {}",
                                        self.host,
                                        path.display()
                                    );
                                    Verdict::Known
                                }
                                Err(e) => Verdict::Changed {
                                    recorded_in: format!("{} (cannot record: {e})", path.display()),
                                },
                            }
                        }
                        v => v,
                    }
                }
            },
            (_, None) => Verdict::Changed { recorded_in: "no host key policy".into() },
        };
        if verdict == Verdict::Known {
            return true;
        }
        *self.refusal.lock().unwrap_or_else(|p| p.into_inner()) =
            Some(KeyRefusal { verdict, fingerprint: fp });
        false
    }
}

impl client::Handler for Handler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        // A certificate arrives only when known_hosts trusts a CA for this host (see `SshTarget::config`).
        Ok(self.verify(key))
    }
}

struct Conn {
    handle: client::Handle<Handler>,
    /// With a sudo password configured: whether this host's sudo asks for one (probed once per
    /// connection with `sudo -n true`, before the first privileged command).
    sudo_asks_password: tokio::sync::OnceCell<bool>,
    // Every jump host's session, kept alive so the tunnels stay open as long as the connection.
    _jumps: Vec<client::Handle<Handler>>,
}

/// A live SSH session to one host; cheap to share (`Arc`), safe to use from many tasks at once.
pub struct SshTransport {
    target: SshTarget,
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    stats: Stats,
}

impl SshTransport {
    /// A transport that connects on first use.
    pub fn new(target: SshTarget) -> Self {
        SshTransport { target, conn: tokio::sync::Mutex::new(None), stats: Stats::default() }
    }

    /// Connects now (useful to fail fast on host keys and auth before any work starts).
    pub async fn connect(target: SshTarget) -> Result<Self, TransportError> {
        let t = SshTransport::new(target);
        t.conn().await?;
        Ok(t)
    }

    /// The resolved settings.
    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    /// Closes the connection politely.
    pub async fn close(&self) {
        if let Some(c) = self.conn.lock().await.take() {
            let _ = c.handle.disconnect(russh::Disconnect::ByApplication, "", "en").await;
        }
    }

    async fn conn(&self) -> Result<Arc<Conn>, TransportError> {
        let mut g = self.conn.lock().await;
        if let Some(c) = g.as_ref() {
            if !c.handle.is_closed() {
                return Ok(c.clone());
            }
        }
        let t = &self.target;
        let c = match tokio::time::timeout(t.connect_timeout, open(t)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(TransportError::Connect {
                    host: t.name.clone(),
                    addr: t.addr(),
                    message: format!("timed out after {:?}", t.connect_timeout),
                    source: None,
                })
            }
        };
        self.stats.connects.fetch_add(1, Ordering::Relaxed);
        let c = Arc::new(c);
        *g = Some(c.clone());
        Ok(c)
    }

    /// `sudo_asks_password`: the probe's answer (only consulted with a password configured).
    fn wrap(&self, cmd: &Command, sudo_asks_password: bool) -> (String, Option<String>) {
        let mut line = cmd.to_shell();
        if let Some(limit) = cmd.get_timeout() {
            // The host enforces the limit too, a little after this side gives up: the `signal` request
            // sent on timeout is refused by OpenSSH for root logins ("session signalling requires
            // privilege separation") and could not reach a command running under sudo anyway, so without
            // this a timed-out command would keep running on the host. coreutils `timeout` kills the
            // command's whole process group (KILL 5 s after TERM), and runs inside sudo so it may.
            line = format!("timeout -k 5 {} {line}", limit.as_secs_f64().ceil() as u64 + 2);
        }
        if !cmd.needs_sudo() {
            return (line, None);
        }
        match &self.target.sudo {
            SudoMode::Off => (line, None),
            SudoMode::NoPassword => (format!("sudo -n -- {line}"), None),
            // A host whose sudo needs no password (NOPASSWD) would never read the password line: it would
            // become the command's first line of input. Such a host gets `sudo -n` and no password.
            SudoMode::Password(_) if !sudo_asks_password => (format!("sudo -n -- {line}"), None),
            // -k: never use a cached credential, so sudo always reads exactly one password line first
            // and the rest of stdin reaches the command unchanged.
            SudoMode::Password(pw) => {
                (format!("sudo -k -S -p '' -- {line}"), Some(format!("{}\n", pw.expose())))
            }
        }
    }

    /// Whether this connection's sudo asks for a password: `sudo -n true` fails on a host that does
    /// (and on one where the user may not use sudo at all, whose error then comes from the real
    /// command). Asked once per connection, before the first privileged command.
    async fn sudo_asks_password(&self, conn: &Conn) -> Result<bool, TransportError> {
        let cmd = Command::new("sudo").arg("-n").arg("true");
        let probe = async {
            let lost = |e: &dyn fmt::Display| TransportError::Disconnected {
                host: self.target.name.clone(),
                command: cmd.to_string(),
                message: e.to_string(),
            };
            self.stats.round_trips.fetch_add(1, Ordering::Relaxed);
            let mut ch = conn.handle.channel_open_session().await.map_err(|e| lost(&e))?;
            ch.exec(true, cmd.to_shell()).await.map_err(|e| lost(&e))?;
            let _ = ch.eof().await;
            let mut status = None;
            while let Some(msg) = ch.wait().await {
                match msg {
                    ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                    ChannelMsg::Close => break,
                    _ => {}
                }
            }
            match status {
                Some(s) => Ok(s != 0),
                None => Err(lost(&"the channel closed without an exit status")),
            }
        };
        conn.sudo_asks_password
            .get_or_try_init(|| async {
                match tokio::time::timeout(self.target.connect_timeout, probe).await {
                    Ok(r) => r,
                    Err(_) => Err(TransportError::Timeout {
                        host: self.target.name.clone(),
                        command: cmd.to_string(),
                        timeout: self.target.connect_timeout,
                    }),
                }
            })
            .await
            .copied()
    }

    async fn run(
        &self,
        cmd: &Command,
        stdin: Option<Box<dyn AsyncRead + Send + Unpin + '_>>,
        sink: Option<&OutputSink>,
    ) -> Result<ExecOutput, TransportError> {
        let host = &self.target.name;
        let conn = self.conn().await?;
        let lost = |e: &dyn fmt::Display| TransportError::Disconnected {
            host: host.clone(),
            command: cmd.to_string(),
            message: e.to_string(),
        };
        self.stats.round_trips.fetch_add(1, Ordering::Relaxed);
        let asks = match self.target.sudo {
            SudoMode::Password(_) if cmd.needs_sudo() => self.sudo_asks_password(&conn).await?,
            _ => false,
        };
        let channel = conn.handle.channel_open_session().await.map_err(|e| lost(&e))?;
        let (line, password) = self.wrap(cmd, asks);
        channel.exec(true, line).await.map_err(|e| lost(&e))?;
        let (mut read, write) = channel.split();

        let feed = async {
            if let Some(pw) = &password {
                write.data_bytes(pw.clone().into_bytes()).await.map_err(|e| e.to_string())?;
            }
            if let Some(r) = stdin {
                let sent = pump(r, |chunk| {
                    let n = chunk.len() as u64;
                    let w = &write;
                    async move {
                        w.data_bytes(chunk).await.map_err(std::io::Error::other)?;
                        self.stats.bytes_sent.fetch_add(n, Ordering::Relaxed);
                        Ok(())
                    }
                })
                .await;
                sent.map_err(|e| e.to_string())?;
            }
            write.eof().await.map_err(|e| e.to_string())
        };

        let collect = async {
            let mut out = OutputCollector::new(Stream::Stdout, cmd.get_output_cap())
                .with_progress(cmd.stdout_progress())
                .with_chunks(cmd.stdout_chunks());
            let mut err = OutputCollector::new(Stream::Stderr, cmd.get_output_cap());
            let mut status = None;
            let mut signal = None;
            while let Some(msg) = read.wait().await {
                match msg {
                    ChannelMsg::Data { data } => out.push(&data, sink),
                    ChannelMsg::ExtendedData { data, ext: 1 } => err.push(&data, sink),
                    ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                    ChannelMsg::ExitSignal { signal_name, .. } => signal = Some(format!("{signal_name:?}")),
                    ChannelMsg::Close => break,
                    _ => {}
                }
            }
            (out, err, status, signal)
        };

        let both = async {
            // Feeding stdin fails when the remote command exits early (e.g. sudo refused); the exit
            // status tells the real story, so a feed error only matters if no status arrives.
            // Once the channel is gone the feed is abandoned: a send waiting for window space is never
            // woken when the connection dies, so waiting for it would hang the run.
            tokio::pin!(feed, collect);
            let mut fed = None;
            let collected = loop {
                tokio::select! {
                    r = &mut feed, if fed.is_none() => fed = Some(r),
                    c = &mut collect => break c,
                }
            };
            let fed =
                fed.unwrap_or_else(|| Err("the channel closed while input was still being sent".into()));
            (fed, collected)
        };
        let (fed, (out, err, status, signal)) = match cmd.get_timeout() {
            Some(limit) => match tokio::time::timeout(limit, both).await {
                Ok(r) => r,
                Err(_) => {
                    // Ask sshd to kill the command, then close the channel; the connection stays usable.
                    let _ = write.signal(russh::Sig::KILL).await;
                    let _ = write.close().await;
                    return Err(TransportError::Timeout {
                        host: host.clone(),
                        command: cmd.to_string(),
                        timeout: limit,
                    });
                }
            },
            None => both.await,
        };
        let (stdout, t1, stdout_len) = out.finish(sink);
        let (stderr, t2, _) = err.finish(sink);
        if status.is_none() && signal.is_none() {
            let why = match fed {
                Err(e) => e,
                Ok(()) if conn.handle.is_closed() => "the connection closed".into(),
                Ok(()) => "the channel closed without an exit status".into(),
            };
            return Err(lost(&why));
        }
        let output = ExecOutput { status, signal, stdout, stderr, truncated: t1 || t2, stdout_len };
        if cmd.needs_sudo() && self.target.sudo != SudoMode::Off && output.status == Some(1) {
            let e = output.stderr_str();
            if let Some(l) = e.lines().find(|l| {
                l.starts_with("sudo: ")
                    && (l.contains("password") || l.contains("sudoers") || l.contains("not allowed"))
            }) {
                return Err(TransportError::Sudo {
                    host: host.clone(),
                    command: cmd.to_string(),
                    message: l.trim_start_matches("sudo: ").to_string(),
                });
            }
        }
        Ok(output)
    }
}

async fn open(t: &SshTarget) -> Result<Conn, TransportError> {
    match &t.bastion {
        None => {
            let tcp = tokio::net::TcpStream::connect((t.address.as_str(), t.port)).await.map_err(|e| {
                TransportError::Connect {
                    host: t.name.clone(),
                    addr: t.addr(),
                    message: e.to_string(),
                    source: Some(Box::new(e)),
                }
            })?;
            let _ = tcp.set_nodelay(true);
            let handle = handshake(t, tcp).await?;
            Ok(Conn { handle, sudo_asks_password: Default::default(), _jumps: Vec::new() })
        }
        Some(b) => {
            let Conn { handle: jump, _jumps: mut jumps, .. } = Box::pin(open(b)).await?;
            let ch = jump
                .channel_open_direct_tcpip(t.address.clone(), t.port as u32, "127.0.0.1", 0)
                .await
                .map_err(|e| TransportError::Connect {
                host: t.name.clone(),
                addr: format!("{} via {}", t.addr(), b.addr()),
                message: format!("the jump host refused to open a tunnel: {e}"),
                source: Some(Box::new(e)),
            })?;
            let handle = handshake(t, ch.into_stream()).await?;
            jumps.push(jump);
            Ok(Conn { handle, sudo_asks_password: Default::default(), _jumps: jumps })
        }
    }
}

async fn handshake<S>(t: &SshTarget, stream: S) -> Result<client::Handle<Handler>, TransportError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let refusal = Arc::new(Mutex::new(None));
    let handler = Handler {
        host: t.name.clone(),
        address: t.address.clone(),
        port: t.port,
        policy: t.host_key.clone(),
        refusal: refusal.clone(),
    };
    let mut handle = match client::connect_stream(t.config(), stream, handler).await {
        Ok(h) => h,
        Err(e) => {
            let addr = known_hosts::host_pattern(&t.address, t.port);
            let seen = refusal.lock().unwrap_or_else(|p| p.into_inner()).take();
            return Err(match seen {
                Some(KeyRefusal { verdict: Verdict::Unknown, fingerprint }) => {
                    TransportError::UnknownHostKey { host: t.name.clone(), addr, fingerprint }
                }
                Some(KeyRefusal { verdict: Verdict::Changed { recorded_in }, fingerprint }) => {
                    TransportError::HostKeyChanged { host: t.name.clone(), addr, fingerprint, recorded_in }
                }
                Some(KeyRefusal { verdict: Verdict::Refused { reason }, fingerprint }) => {
                    TransportError::Config {
                        host: t.name.clone(),
                        message: format!(
                        "host key {fingerprint} of {addr} refused: {reason}. Fix the host (a new host key, \
                         or a host certificate valid for it: `ssh-keygen -s CA_KEY -h -n {} ...`); \
                         --accept-new-host-keys never overrides this",
                        t.address
                    ),
                    }
                }
                _ => TransportError::Connect {
                    host: t.name.clone(),
                    addr: t.addr(),
                    message: format!("SSH handshake failed: {e}"),
                    source: Some(Box::new(e)),
                },
            });
        }
    };
    authenticate(t, &mut handle).await?;
    Ok(handle)
}

async fn authenticate(t: &SshTarget, handle: &mut client::Handle<Handler>) -> Result<(), TransportError> {
    let mut tried = Vec::new();
    let conn_err = |e: russh::Error| TransportError::Connect {
        host: t.name.clone(),
        addr: t.addr(),
        message: format!("authentication exchange failed: {e}"),
        source: Some(Box::new(e)),
    };
    for path in &t.identity_files {
        // As OpenSSH does, a listed key that does not exist is skipped (a config's `Host *` often names
        // several); the inventory's own identityFile is checked by validation.
        if !path.exists() {
            tried.push(format!("key {} (missing)", path.display()));
            continue;
        }
        let key = russh::keys::load_secret_key(path, None).map_err(|e| TransportError::Config {
            host: t.name.clone(),
            message: format!("cannot load identity file {}: {e}", path.display()),
        })?;
        let hash = handle.best_supported_rsa_hash().await.map_err(conn_err)?.flatten();
        let r = handle
            .authenticate_publickey(t.user.clone(), PrivateKeyWithHashAlg::new(Arc::new(key), hash))
            .await
            .map_err(conn_err)?;
        if r.success() {
            return Ok(());
        }
        tried.push(format!("key {}", path.display()));
    }
    if t.agent {
        match russh::keys::agent::client::AgentClient::connect_env().await {
            Ok(mut agent) => {
                let ids = agent.request_identities().await.unwrap_or_default();
                for id in ids {
                    let key = id.public_key().into_owned();
                    let hash = handle.best_supported_rsa_hash().await.map_err(conn_err)?.flatten();
                    if let Ok(r) =
                        handle.authenticate_publickey_with(t.user.clone(), key, hash, &mut agent).await
                    {
                        if r.success() {
                            return Ok(());
                        }
                    }
                }
                tried.push("ssh-agent keys".into());
            }
            Err(e) => tried.push(format!("ssh-agent unavailable: {e}")),
        }
    }
    if tried.is_empty() {
        tried.push("no identity file and agent disabled".into());
    }
    Err(TransportError::Auth { host: t.name.clone(), user: t.user.clone(), tried: tried.join(", ") })
}

impl Transport for SshTransport {
    fn host(&self) -> &str {
        &self.target.name
    }

    fn exec_io<'a>(
        &'a self,
        cmd: &'a Command,
        stdin: Option<Box<dyn AsyncRead + Send + Unpin + 'a>>,
        sink: Option<&'a OutputSink>,
    ) -> BoxFuture<'a, Result<ExecOutput, TransportError>> {
        Box::pin(self.run(cmd, stdin, sink))
    }

    fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    fn drop_connection(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.close())
    }
}
