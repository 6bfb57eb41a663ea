//! The node-local API load balancer: a TCP proxy that kubelets and kube-proxy on every node reach at
//! `127.0.0.1:7443` and that forwards each connection to a healthy kube-apiserver.
//!
//! It runs as the `kube-api-lb` service from its own small binary, `kubeforge-apilb` (built from this
//! module alone: the standard library and rustls, no async runtime), so an HA cluster needs no extra
//! package on its nodes and each node receives a few megabytes instead of the whole kubeforge binary.
//! `kubeforge api-lb` runs the same code. It is TCP-level: TLS passes through untouched, so clients still
//! verify the apiserver certificate (which carries `127.0.0.1` as a SAN in this mode) and authenticate with
//! their own certs. Backends are tried round-robin; one that refuses or times out is skipped for a short
//! back-off, and a connection only fails when every backend fails.
//!
//! With `--ca-file`, the balancer also asks every backend's `/readyz` (HTTPS, verified against the cluster
//! CA, on a kept-alive connection) every `--health-interval`, and sends new connections only to backends
//! that answered `200` while any does: an apiserver that is starting, stopping or cut off from etcd leaves
//! the rotation within one interval (as HAProxy's `httpchk` does in front of control planes), which is what
//! keeps the API answering while control planes restart one at a time during an upgrade.
//!
//! One thread per direction of each proxied connection, with small stacks: a node holds a few dozen
//! long-lived connections (watches), which this serves in a few megabytes of memory. Bounds: at most
//! [`MAX_CONNECTIONS`] proxied connections at once (a connection beyond is closed at once, and said so), a
//! connection with no byte in either direction for [`IDLE_TIMEOUT`] is closed (watches are never that quiet:
//! the apiserver's bookmarks and the clients' HTTP/2 pings cross it every minute or so), and the `/readyz`
//! answers are read with bounded lines and bodies.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a backend that failed is skipped.
const BACKOFF: Duration = Duration::from_secs(5);
/// Connect timeout per backend attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// After the client has closed its side, how long the apiserver's remaining answer is waited for.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Stack of each proxying thread (a copy loop with a 16 KiB buffer).
const STACK: usize = 128 * 1024;
/// The largest `/readyz` answer body read.
const MAX_BODY: u64 = 1 << 20;
/// The longest line of a `/readyz` answer read (status line, a header, a chunk size).
const MAX_LINE: u64 = 8 * 1024;
/// Proxied connections at once; beyond, new ones are closed (two threads each).
pub const MAX_CONNECTIONS: usize = 2048;
/// A proxied connection with no byte in either direction for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// How often a quiet connection checks whether it has been idle too long.
const IDLE_CHECK: Duration = Duration::from_secs(30);

/// Balancer state shared by all connections.
#[derive(Debug)]
pub struct Balancer {
    backends: Vec<SocketAddr>,
    down_until: Mutex<Vec<Option<Instant>>>,
    /// The last `/readyz` answer per backend (all ready until checked).
    ready: Mutex<Vec<bool>>,
    next: AtomicUsize,
    /// Proxied connections now.
    active: AtomicUsize,
    /// At most this many at once.
    max_connections: usize,
    /// Closed after this long with no byte either way.
    idle_timeout: Duration,
}

impl Balancer {
    /// A balancer over `backends` (at least one).
    pub fn new(backends: Vec<SocketAddr>) -> Arc<Self> {
        Self::with_limits(backends, MAX_CONNECTIONS, IDLE_TIMEOUT)
    }

    /// A balancer with other bounds than [`MAX_CONNECTIONS`] and [`IDLE_TIMEOUT`] (tests).
    pub fn with_limits(
        backends: Vec<SocketAddr>,
        max_connections: usize,
        idle_timeout: Duration,
    ) -> Arc<Self> {
        let n = backends.len();
        Arc::new(Balancer {
            backends,
            down_until: Mutex::new(vec![None; n]),
            ready: Mutex::new(vec![true; n]),
            next: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            max_connections,
            idle_timeout,
        })
    }

    /// Proxied connections now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Connects to a healthy backend: round-robin, skipping backends in back-off unless all are.
    pub fn connect(&self) -> std::io::Result<(SocketAddr, TcpStream)> {
        let n = self.backends.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let down = self.down_until.lock().expect("lock").clone();
        let ready = self.ready();
        // Ready backends first, then those not ready or in back-off (better a retry than no answer).
        let mut order: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
        order.sort_by_key(|&i| (!ready[i], down[i].is_some_and(|t| t > now)));
        let mut last_err = None;
        for i in order {
            let addr = self.backends[i];
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(s) => {
                    self.down_until.lock().expect("lock")[i] = None;
                    return Ok((addr, s));
                }
                Err(e) => last_err = Some(e),
            }
            self.down_until.lock().expect("lock")[i] = Some(Instant::now() + BACKOFF);
        }
        Err(last_err.unwrap_or_else(|| std::io::Error::other("no backends")))
    }

    /// The last `/readyz` answer of every backend, in order.
    pub fn ready(&self) -> Vec<bool> {
        self.ready.lock().expect("lock").clone()
    }

    /// Records a backend's `/readyz` answer; says so when it changes.
    pub fn set_ready(&self, i: usize, ok: bool, why: &str) {
        let mut r = self.ready.lock().expect("lock");
        if r[i] != ok {
            if ok {
                eprintln!("api-lb: {} is ready again, back in rotation", self.backends[i]);
            } else {
                eprintln!("api-lb: {} is not ready ({why}), out of rotation", self.backends[i]);
            }
            r[i] = ok;
        }
    }

    /// Asks every backend's `/readyz` every `interval` (one thread each), verifying its certificate
    /// against `ca_pem`.
    pub fn spawn_health_checks(self: &Arc<Self>, ca_pem: &[u8], interval: Duration) -> Result<(), String> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
            let cert = cert.map_err(|e| format!("the CA for the health checks does not parse: {e}"))?;
            roots.add(cert).map_err(|e| format!("the CA for the health checks is not usable: {e}"))?;
        }
        if roots.is_empty() {
            return Err("the CA file for the health checks holds no certificate".into());
        }
        let config =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS set-up for the health checks: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let config = Arc::new(config);
        // A check waits for its answer on a kept-alive connection: a slow `/readyz` must not cost a new TLS
        // handshake every interval.
        let timeout = interval.max(Duration::from_secs(5));
        for (i, addr) in self.backends.iter().copied().enumerate() {
            let (me, config) = (self.clone(), config.clone());
            std::thread::Builder::new()
                .name(format!("readyz {addr}"))
                .stack_size(4 * STACK)
                .spawn(move || {
                    let mut conn = None;
                    loop {
                        let started = Instant::now();
                        match readyz(&mut conn, addr, &config, timeout) {
                            Ok(code) if (200..300).contains(&code) => me.set_ready(i, true, ""),
                            Ok(code) => me.set_ready(i, false, &format!("/readyz answered {code}")),
                            Err(e) => {
                                conn = None;
                                me.set_ready(i, false, &e);
                            }
                        }
                        std::thread::sleep(interval.saturating_sub(started.elapsed()));
                    }
                })
                .map_err(|e| format!("starting the health check of {addr}: {e}"))?;
        }
        Ok(())
    }

    /// Serves connections from `listener` (one thread per direction of each) until accepting fails.
    pub fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (client, peer) = match listener.accept() {
                Ok(c) => c,
                // Out of file descriptors or a connection reset before it was accepted: keep serving.
                Err(e) if e.raw_os_error().is_some() && e.kind() != std::io::ErrorKind::InvalidInput => {
                    eprintln!("api-lb: accept: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                Err(e) => return Err(e),
            };
            if self.active.fetch_add(1, Ordering::SeqCst) >= self.max_connections {
                self.active.fetch_sub(1, Ordering::SeqCst);
                eprintln!(
                    "api-lb: {} connections already, closing the one from {peer}",
                    self.max_connections
                );
                drop(client);
                continue;
            }
            let me = self.clone();
            let spawned = std::thread::Builder::new().stack_size(STACK).spawn(move || {
                let _ = client.set_nodelay(true);
                match me.connect() {
                    Ok((_, upstream)) => {
                        let _ = upstream.set_nodelay(true);
                        proxy(client, upstream, me.idle_timeout);
                    }
                    Err(e) => eprintln!("api-lb: no apiserver reachable for {peer}: {e}"),
                }
                me.active.fetch_sub(1, Ordering::SeqCst);
            });
            if let Err(e) = spawned {
                self.active.fetch_sub(1, Ordering::SeqCst);
                eprintln!("api-lb: cannot start a thread for {peer}: {e}");
            }
        }
    }
}

/// Copies both ways until either side is done. The apiserver closing (or failing) ends the whole
/// connection; the client closing its side leaves the answer in flight [`DRAIN_TIMEOUT`] to arrive.
fn proxy(client: TcpStream, upstream: TcpStream, idle_timeout: Duration) {
    let (Ok(mut client_r), Ok(mut upstream_w)) = (client.try_clone(), upstream.try_clone()) else {
        return;
    };
    // The last byte either way: each direction's reads wake every IDLE_CHECK to look at it.
    let started = Instant::now();
    let last = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let check = IDLE_CHECK.min(idle_timeout).min(DRAIN_TIMEOUT);
    let _ = client.set_read_timeout(Some(check));
    let _ = upstream.set_read_timeout(Some(check));
    let drain = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let idle = Idle { started, last: last.clone(), timeout: idle_timeout, drain: drain.clone() };
    let idle_up = Idle { started, last, timeout: idle_timeout, drain };
    let to_upstream = std::thread::Builder::new().stack_size(STACK).spawn(move || {
        let clean = copy(&mut client_r, &mut upstream_w, &idle_up).is_ok();
        if clean {
            let _ = upstream_w.shutdown(Shutdown::Write);
            // The answer in flight gets DRAIN_TIMEOUT of silence at most.
            idle_up.drain.store(true, Ordering::Relaxed);
        } else {
            let _ = upstream_w.shutdown(Shutdown::Both);
        }
    });
    let (mut upstream_r, mut client_w) = (upstream, client);
    let _ = copy(&mut upstream_r, &mut client_w, &idle);
    // Whatever ended this direction, the client gets nothing more: wake the other thread too.
    let _ = client_w.shutdown(Shutdown::Both);
    let _ = upstream_r.shutdown(Shutdown::Both);
    if let Ok(t) = to_upstream {
        let _ = t.join();
    }
}

/// When a proxied connection last carried a byte, either way (milliseconds since it started).
struct Idle {
    started: Instant,
    last: Arc<std::sync::atomic::AtomicU64>,
    timeout: Duration,
    /// The client has closed its side: the answer still coming may be quiet for [`DRAIN_TIMEOUT`] only.
    drain: Arc<std::sync::atomic::AtomicBool>,
}

impl Idle {
    fn touch(&self) {
        self.last.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn expired(&self) -> bool {
        let quiet = self.started.elapsed().as_millis() as u64 - self.last.load(Ordering::Relaxed);
        let limit =
            if self.drain.load(Ordering::Relaxed) { self.timeout.min(DRAIN_TIMEOUT) } else { self.timeout };
        quiet >= limit.as_millis() as u64
    }
}

/// `std::io::copy` with a heap buffer (the threads' stacks are small); `Ok` on end of stream. A read that
/// times out (the socket's read timeout) goes on unless the connection has been idle both ways too long.
fn copy(r: &mut TcpStream, w: &mut TcpStream, idle: &Idle) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if idle.expired() {
                    return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "idle"));
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        idle.touch();
        w.write_all(&buf[..n])?;
    }
}

type TlsConn = BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

/// One `GET /readyz` on `conn` (opened when `None`; left `None` when the server closes it). Returns the
/// HTTP status.
fn readyz(
    conn: &mut Option<TlsConn>,
    addr: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<u16, String> {
    if conn.is_none() {
        let tcp = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
        tcp.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        tcp.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let tls = rustls::ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
        *conn = Some(BufReader::new(rustls::StreamOwned::new(tls, tcp)));
    }
    let c = conn.as_mut().expect("opened above");
    let request =
        format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kubeforge-apilb\r\nAccept: */*\r\n\r\n");
    c.get_mut().write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    c.get_mut().flush().map_err(|e| e.to_string())?;
    let (status, keep) = read_response(c)?;
    if !keep {
        *conn = None;
    }
    Ok(status)
}

/// Reads one HTTP/1.1 response: its status, and whether the connection can carry another request.
fn read_response<R: BufRead>(r: &mut R) -> Result<(u16, bool), String> {
    let mut line = String::new();
    let line_of = |r: &mut R, line: &mut String| -> Result<(), String> {
        line.clear();
        match r.by_ref().take(MAX_LINE).read_line(line) {
            Ok(0) => Err("connection closed".to_string()),
            Ok(_) if !line.ends_with('\n') => Err(format!("a line longer than {MAX_LINE} bytes")),
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    };
    line_of(r, &mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .filter(|_| line.starts_with("HTTP/1."))
        .ok_or_else(|| format!("not an HTTP answer: {:?}", line.trim_end()))?;
    let (mut length, mut chunked, mut keep) = (None, false, true);
    loop {
        line_of(r, &mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
            match k.as_str() {
                "content-length" => length = v.parse::<u64>().ok(),
                "transfer-encoding" => chunked = v.contains("chunked"),
                "connection" => keep = !v.contains("close"),
                _ => {}
            }
        }
    }
    let mut sink = std::io::sink();
    if chunked {
        loop {
            line_of(r, &mut line)?;
            let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| format!("bad chunk size {:?}", line.trim()))?;
            if size > MAX_BODY {
                return Err("answer too large".into());
            }
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    line_of(r, &mut line)?;
                    if line.trim_end().is_empty() {
                        break;
                    }
                }
                break;
            }
            let got = std::io::copy(&mut r.by_ref().take(size + 2), &mut sink).map_err(|e| e.to_string())?;
            if got != size + 2 {
                return Err("connection closed inside a chunk".into());
            }
        }
    } else if let Some(n) = length {
        if n > MAX_BODY {
            return Err("answer too large".into());
        }
        let got = std::io::copy(&mut r.by_ref().take(n), &mut sink).map_err(|e| e.to_string())?;
        if got != n {
            return Err("connection closed inside the answer".into());
        }
    } else {
        // No length: the body runs to the end of the connection.
        std::io::copy(&mut r.by_ref().take(MAX_BODY), &mut sink).map_err(|e| e.to_string())?;
        keep = false;
    }
    Ok((status, keep))
}

/// Runs the balancer in the foreground (the `kube-api-lb` systemd service). Returns only on error.
pub fn run(
    listen: SocketAddr,
    backends: Vec<SocketAddr>,
    ca_file: Option<&std::path::Path>,
    health_interval: Duration,
) -> Result<(), String> {
    if backends.is_empty() {
        return Err(
            "api-lb needs at least one --backend (pass --backend IP:6443 once per control plane)".into()
        );
    }
    let listener = TcpListener::bind(listen).map_err(|e| format!("listening on {listen}: {e}"))?;
    eprintln!("api-lb: listening on {listen}, backends {backends:?}");
    let lb = Balancer::new(backends);
    if let Some(ca) = ca_file {
        let pem = std::fs::read(ca).map_err(|e| format!("reading {}: {e}", ca.display()))?;
        lb.spawn_health_checks(&pem, health_interval)?;
        eprintln!("api-lb: checking each backend's /readyz every {}ms", health_interval.as_millis());
    }
    lb.serve(listener).map_err(|e| format!("accepting connections: {e}"))
}

/// `kubeforge-apilb`'s command line: `[--listen ADDR] --backend ADDR... [--ca-file PATH]
/// [--health-interval DURATION]` (the flags of `kubeforge api-lb`). Returns the process exit code.
pub fn main_with_args(args: impl IntoIterator<Item = String>) -> i32 {
    const USAGE: &str =
        "usage: kubeforge-apilb [--listen IP:PORT] --backend IP:PORT [--backend IP:PORT ...] \
                         [--ca-file PATH] [--health-interval DURATION]\n\
                         The node-local API load balancer of kubeforge (the kube-api-lb service).";
    let mut listen: SocketAddr = "127.0.0.1:7443".parse().expect("literal");
    let (mut backends, mut ca_file, mut interval) = (Vec::new(), None, Duration::from_secs(2));
    let mut it = args.into_iter();
    let parsed: Result<(), String> = (|| {
        while let Some(a) = it.next() {
            let (flag, inline) = match a.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (a.clone(), None),
            };
            if flag == "--help" || flag == "-h" {
                return Err(String::new());
            }
            if flag == "--version" || flag == "-V" {
                println!("kubeforge-apilb {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            let mut value =
                || inline.clone().or_else(|| it.next()).ok_or_else(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--listen" => listen = value()?.parse().map_err(|e| format!("--listen: {e}"))?,
                "--backend" => backends.push(value()?.parse().map_err(|e| format!("--backend: {e}"))?),
                "--ca-file" => ca_file = Some(std::path::PathBuf::from(value()?)),
                "--health-interval" => {
                    interval =
                        humantime::parse_duration(&value()?).map_err(|e| format!("--health-interval: {e}"))?
                }
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(())
    })();
    match parsed {
        Ok(()) => match run(listen, backends, ca_file.as_deref(), interval) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: {e}");
                1
            }
        },
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            0
        }
        Err(e) => {
            eprintln!("error: {e}\n{USAGE}");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_server(tag: u8) -> (SocketAddr, Arc<std::sync::atomic::AtomicBool>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    // Dropping the listener (by returning) makes the port refuse connections.
                    return;
                }
                let Ok(mut s) = s else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4];
                    if s.read_exact(&mut buf).is_ok() {
                        let _ = s.write_all(&[tag]);
                        let _ = s.write_all(&buf);
                    }
                });
            }
        });
        (addr, stop)
    }

    fn ask(lb: SocketAddr) -> Option<u8> {
        let mut s = TcpStream::connect(lb).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        s.write_all(b"ping").ok()?;
        let mut out = [0u8; 5];
        s.read_exact(&mut out).ok()?;
        assert_eq!(&out[1..], b"ping");
        Some(out[0])
    }

    fn start(backends: Vec<SocketAddr>) -> (Arc<Balancer>, SocketAddr) {
        let bal = Balancer::new(backends);
        let addr = serving(&bal);
        (bal, addr)
    }

    /// Serves `bal` on a free loopback port; its address.
    fn serving(bal: &Arc<Balancer>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let b = bal.clone();
        std::thread::spawn(move || b.serve(l));
        addr
    }

    #[test]
    fn backends_that_are_not_ready_get_no_connections_while_others_are() {
        let (a, _) = echo_server(b'a');
        let (b, _) = echo_server(b'b');
        let (bal, lb) = start(vec![a, b]);
        bal.set_ready(0, false, "/readyz answered 500");
        for _ in 0..6 {
            assert_eq!(ask(lb), Some(b'b'), "a is out of rotation");
        }
        // With no backend ready, connections still go somewhere rather than fail.
        bal.set_ready(1, false, "timeout");
        assert!(ask(lb).is_some());
        bal.set_ready(0, true, "");
        for _ in 0..4 {
            assert_eq!(ask(lb), Some(b'a'));
        }
    }

    /// An HTTPS server on 127.0.0.1 whose `/readyz` answers each request on a kept-alive connection with
    /// `status` (chunked when `chunked`), with a certificate from a fresh CA. Counts TLS handshakes.
    fn https_readyz(status: &'static str, chunked: bool) -> (SocketAddr, Vec<u8>, Arc<AtomicUsize>) {
        let ca = TestCa::new("kubeforge-apilb-test-ca");
        let (addr, handshakes) = https_readyz_of(&ca, status, chunked);
        (addr, ca.pem.into_bytes(), handshakes)
    }

    /// A self-signed CA for the health-check tests.
    struct TestCa {
        params: rcgen::CertificateParams,
        key: rcgen::KeyPair,
        pem: String,
    }

    impl TestCa {
        fn new(cn: &str) -> Self {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(rcgen::DnType::CommonName, cn);
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let pem = params.self_signed(&key).unwrap().pem();
            Self { params, key, pem }
        }
    }

    /// [`https_readyz`] with a serving certificate of `ca`; its address and handshake count.
    fn https_readyz_of(ca: &TestCa, status: &'static str, chunked: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let issuer = rcgen::Issuer::from_params(&ca.params, &ca.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(
                    vec![cert.der().clone()],
                    rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
                )
                .unwrap();
        let config = Arc::new(config);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let count = handshakes.clone();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                let (config, count) = (config.clone(), count.clone());
                std::thread::spawn(move || {
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    let mut tls = BufReader::new(rustls::StreamOwned::new(conn, s));
                    count.fetch_add(1, Ordering::SeqCst);
                    loop {
                        let mut line = String::new();
                        // The request: lines up to the empty one.
                        loop {
                            line.clear();
                            match tls.read_line(&mut line) {
                                Ok(0) | Err(_) => return,
                                Ok(_) if line.trim_end().is_empty() => break,
                                Ok(_) => {}
                            }
                        }
                        let resp = if chunked {
                            format!(
                                "HTTP/1.1 {status}\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                            )
                        } else {
                            format!("HTTP/1.1 {status}\r\ncontent-length: 2\r\n\r\nok")
                        };
                        if tls.get_mut().write_all(resp.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, handshakes)
    }

    /// During a CA rotation `--ca-file` holds the old and the new cluster CA (same subject `kubernetes`,
    /// different keys): a backend serving a cert of either is checked and ready, one of a third CA with the
    /// same subject fails verification and stays out of rotation.
    #[test]
    fn health_checks_trust_every_ca_of_a_bundle_and_no_other() {
        let (old, new, other) =
            (TestCa::new("kubernetes"), TestCa::new("kubernetes"), TestCa::new("kubernetes"));
        let (by_old, _) = https_readyz_of(&old, "200 OK", false);
        let (by_new, _) = https_readyz_of(&new, "200 OK", false);
        let (by_other, _) = https_readyz_of(&other, "200 OK", false);
        let bundle = format!("{}{}", new.pem, old.pem);
        let bal = Balancer::new(vec![by_old, by_new, by_other]);
        // Start the two that must come in out of rotation, and the one that must go out in it.
        bal.set_ready(0, false, "start out of rotation");
        bal.set_ready(1, false, "start out of rotation");
        bal.spawn_health_checks(bundle.as_bytes(), Duration::from_millis(100)).unwrap();
        assert!(wait_for(&bal, &[true, true, false]), "ready: {:?}", bal.ready());
        // The new CA alone: the old CA's backend is refused like the third.
        let bal = Balancer::new(vec![by_old, by_new]);
        bal.set_ready(1, false, "start out of rotation");
        bal.spawn_health_checks(new.pem.as_bytes(), Duration::from_millis(100)).unwrap();
        assert!(wait_for(&bal, &[false, true]), "ready: {:?}", bal.ready());
    }

    fn wait_for(bal: &Balancer, want: &[bool]) -> bool {
        for _ in 0..100 {
            if bal.ready() == want {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    #[test]
    fn health_checks_take_a_backend_that_is_not_ready_out_and_keep_their_connection() {
        let (good, ca_good, handshakes) = https_readyz("200 OK", false);
        let (bad, _, _) = https_readyz("500 Internal Server Error", false);
        let bal = Balancer::new(vec![good, bad]);
        // The CA of `good` only: `bad` also fails verification, which counts as not ready too.
        bal.spawn_health_checks(&ca_good, Duration::from_millis(100)).unwrap();
        assert!(wait_for(&bal, &[true, false]), "ready: {:?}", bal.ready());
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(handshakes.load(Ordering::SeqCst), 1, "several checks on one kept-alive TLS connection");

        let (bad500, ca500, _) = https_readyz("500 Internal Server Error", true);
        let bal = Balancer::new(vec![bad500]);
        bal.spawn_health_checks(&ca500, Duration::from_millis(100)).unwrap();
        assert!(wait_for(&bal, &[false]), "a verified backend answering 500 is out of rotation");
        let (chunked, ca_chunked, handshakes) = https_readyz("200 OK", true);
        let bal = Balancer::new(vec![chunked]);
        bal.set_ready(0, false, "start out of rotation");
        bal.spawn_health_checks(&ca_chunked, Duration::from_millis(100)).unwrap();
        assert!(wait_for(&bal, &[true]), "a chunked 200 puts it back");
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(handshakes.load(Ordering::SeqCst), 1, "chunked answers keep the connection too");
    }

    #[test]
    fn balances_and_fails_over() {
        let (a, stop_a) = echo_server(b'a');
        let (b, _) = echo_server(b'b');
        // A port with nothing listening: bind and drop to get one.
        let dead = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let (_, lb) = start(vec![dead, a, b]);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..6 {
            seen.insert(ask(lb).expect("answered despite a dead backend"));
        }
        assert_eq!(seen, [b'a', b'b'].into_iter().collect(), "both live backends take connections");
        // Lose a backend: every connection still succeeds, through the other.
        stop_a.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(a); // wakes the accept loop so it sees the flag and closes
        std::thread::sleep(Duration::from_millis(50));
        for _ in 0..4 {
            assert_eq!(ask(lb), Some(b'b'));
        }
    }

    #[test]
    fn the_answer_in_flight_arrives_after_the_client_closes_its_side() {
        // A backend that answers only once the request stream has ended (as a half-closing client expects).
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut all = Vec::new();
            s.read_to_end(&mut all).unwrap();
            s.write_all(&all).unwrap();
        });
        let (_, lb) = start(vec![addr]);
        let mut s = TcpStream::connect(lb).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"whole request").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"whole request");
    }

    #[test]
    fn responses_are_parsed_for_status_and_keep_alive() {
        let parse = |s: &str| read_response(&mut BufReader::new(s.as_bytes()));
        assert_eq!(parse("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"), Ok((200, true)));
        assert_eq!(
            parse("HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\ncontent-length: 0\r\n\r\n"),
            Ok((503, false))
        );
        assert_eq!(parse("HTTP/1.1 200 OK\r\n\r\nok"), Ok((200, false)), "no length: read to the end");
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;x=y\r\nok\r\n0\r\n\r\n"),
            Ok((200, true))
        );
        assert!(parse("SSH-2.0-OpenSSH\r\n").is_err());
        assert!(parse("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nok").is_err(), "short body");
        assert!(parse("").is_err());
    }

    #[test]
    fn the_command_line_is_checked() {
        let run = |a: &[&str]| main_with_args(a.iter().map(|s| s.to_string()));
        assert_eq!(run(&["--backend"]), 2);
        assert_eq!(run(&["--backend", "not-an-address"]), 2);
        assert_eq!(run(&["--bogus"]), 2);
        assert_eq!(run(&["--health-interval=soon", "--backend", "127.0.0.1:1"]), 2);
        assert_eq!(run(&["--help"]), 0);
        // Valid flags but nothing to balance.
        assert_eq!(run(&["--listen", "127.0.0.1:0"]), 1);
    }

    /// A server that answers nothing and keeps every connection open (a quiet watch).
    fn silent_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in l.incoming().flatten() {
                held.push(s);
            }
        });
        addr
    }

    /// Waits until `f` holds (up to 10 s).
    fn eventually(what: &str, f: impl Fn() -> bool) {
        let t = Instant::now();
        while !f() {
            assert!(t.elapsed() < Duration::from_secs(10), "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn connections_beyond_the_cap_are_closed_and_the_others_served() {
        let (a, _) = echo_server(b'a');
        // (Idle connections close after 2 s: after the client closes, the quiet backend's answer is waited
        // for that long at most.)
        let bal = Balancer::with_limits(vec![a, silent_server()], 2, Duration::from_secs(2));
        // Both slots held by quiet connections to the silent backend... (the echo backend answers and
        // closes, so it is taken out of the count by sending to it last).
        bal.set_ready(0, false, "test");
        let lb = serving(&bal);
        let held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(lb).unwrap()).collect();
        eventually("two connections proxied", || bal.active() == 2);
        // ...a third is closed at once.
        let mut third = TcpStream::connect(lb).unwrap();
        third.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 1];
        assert_eq!(third.read(&mut buf).unwrap(), 0, "closed without an answer");
        assert_eq!(bal.active(), 2);
        // A slot freed is a slot served again.
        drop(held);
        eventually("the held connections are gone", || bal.active() == 0);
        bal.set_ready(0, true, "");
        bal.set_ready(1, false, "test");
        assert_eq!(ask(lb), Some(b'a'));
    }

    #[test]
    fn a_connection_quiet_both_ways_is_closed_and_a_busy_one_is_not() {
        // A backend that streams a byte every 100 ms to whoever connects (a watch with events).
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let streaming = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut s = s;
                    while s.write_all(b".").is_ok() {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                });
            }
        });
        let quiet = silent_server();
        let idle = Duration::from_millis(600);
        let (bq, bs) =
            (Balancer::with_limits(vec![quiet], 8, idle), Balancer::with_limits(vec![streaming], 8, idle));
        let (q_addr, s_addr) = (serving(&bq), serving(&bs));
        let mut q = TcpStream::connect(q_addr).unwrap();
        let mut busy = TcpStream::connect(s_addr).unwrap();
        q.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        busy.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let t = Instant::now();
        let mut buf = [0u8; 64];
        // The quiet one ends (end of stream) after about the idle timeout.
        assert_eq!(q.read(&mut buf).unwrap_or(0), 0);
        assert!(t.elapsed() >= idle, "closed after {:?}", t.elapsed());
        // The busy one, whose client never sends a byte, still streams after several idle timeouts.
        let mut got = 0;
        while t.elapsed() < 4 * idle {
            got += busy.read(&mut buf).unwrap();
        }
        assert!(got > 10, "{got} bytes");
        eventually("the quiet connection left the count", || bq.active() == 0);
        assert_eq!(bs.active(), 1);
    }

    #[test]
    fn a_readyz_answer_is_read_with_bounded_lines() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec();
        assert_eq!(read_response(&mut &ok[..]).unwrap(), (200, true));
        let mut long = b"HTTP/1.1 200 OK\r\nX-Pad: ".to_vec();
        long.extend(std::iter::repeat_n(b'a', 64 * 1024));
        long.extend(b"\r\n\r\n");
        let e = read_response(&mut &long[..]).unwrap_err();
        assert!(e.contains("longer than 8192 bytes"), "{e}");
    }
}
