//! The node-local API load balancer (`kubeforge api-lb`): a TCP proxy that kubelets and kube-proxy on every
//! node reach at `127.0.0.1:7443` and that forwards each connection to a healthy kube-apiserver.
//!
//! kubeforge ships it inside its own binary (as k0s does) so that an HA cluster needs no extra package on
//! its nodes. It is TCP-level: TLS passes through untouched, so clients still verify the apiserver
//! certificate (which carries `127.0.0.1` as a SAN in this mode) and authenticate with their own certs.
//! Backends are tried round-robin; one that refuses or times out is skipped for a short back-off, and a
//! connection only fails when every backend fails.
//!
//! With `--ca-file`, the balancer also asks every backend's `/readyz` (HTTPS, verified against the cluster
//! CA) every `--health-interval`, and sends new connections only to backends that answered `200` while
//! any does: an apiserver that is starting, stopping or cut off from etcd leaves the rotation within one
//! interval (as HAProxy's `httpchk` does in front of control planes), which is what keeps the API answering
//! while control planes restart one at a time during an upgrade.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

/// How long a backend that failed is skipped.
const BACKOFF: Duration = Duration::from_secs(5);
/// Connect timeout per backend attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Balancer state shared by all connections.
#[derive(Debug)]
pub struct Balancer {
    backends: Vec<SocketAddr>,
    down_until: Mutex<Vec<Option<Instant>>>,
    /// The last `/readyz` answer per backend (all ready until checked).
    ready: Mutex<Vec<bool>>,
    next: AtomicUsize,
}

impl Balancer {
    /// A balancer over `backends` (at least one).
    pub fn new(backends: Vec<SocketAddr>) -> Arc<Self> {
        let n = backends.len();
        Arc::new(Balancer {
            backends,
            down_until: Mutex::new(vec![None; n]),
            ready: Mutex::new(vec![true; n]),
            next: AtomicUsize::new(0),
        })
    }

    /// Connects to a healthy backend: round-robin, skipping backends in back-off unless all are.
    pub async fn connect(&self) -> std::io::Result<(SocketAddr, TcpStream)> {
        let n = self.backends.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let down = self.down_until.lock().expect("lock").clone();
        let ready = self.ready.lock().expect("lock").clone();
        // Ready backends first, then those not ready or in back-off (better a retry than no answer).
        let mut order: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
        order.sort_by_key(|&i| (!ready[i], down[i].is_some_and(|t| t > now)));
        let mut last_err = None;
        for i in order {
            let addr = self.backends[i];
            match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => {
                    self.down_until.lock().expect("lock")[i] = None;
                    return Ok((addr, s));
                }
                Ok(Err(e)) => last_err = Some(e),
                Err(_) => {
                    last_err = Some(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("connect to {addr} timed out"),
                    ))
                }
            }
            self.down_until.lock().expect("lock")[i] = Some(Instant::now() + BACKOFF);
        }
        Err(last_err.unwrap_or_else(|| std::io::Error::other("no backends")))
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

    /// Asks every backend's `/readyz` every `interval`, verifying its certificate against `ca_pem`.
    pub fn spawn_health_checks(self: &Arc<Self>, ca_pem: &[u8], interval: Duration) -> crate::Result<()> {
        let ca = reqwest::Certificate::from_pem(ca_pem).map_err(|e| {
            crate::Error::msg(format!("the CA for the health checks does not parse: {e}"), None)
        })?;
        let client = reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            // A check waits for its answer (one at a time per backend, on a kept-alive connection): a slow
            // `/readyz` must not abort the connection and cost a new TLS handshake every interval.
            .timeout(interval.max(Duration::from_secs(5)))
            .no_proxy()
            .build()
            .map_err(|e| crate::Error::msg(format!("building the health-check client: {e}"), None))?;
        for (i, addr) in self.backends.iter().enumerate() {
            let (me, client, url) = (self.clone(), client.clone(), format!("https://{addr}/readyz"));
            tokio::spawn(async move {
                loop {
                    let started = Instant::now();
                    match client.get(&url).send().await {
                        Ok(r) if r.status().is_success() => me.set_ready(i, true, ""),
                        Ok(r) => me.set_ready(i, false, &format!("/readyz answered {}", r.status().as_u16())),
                        Err(e) => me.set_ready(i, false, &e.to_string()),
                    }
                    tokio::time::sleep(interval.saturating_sub(started.elapsed())).await;
                }
            });
        }
        Ok(())
    }

    /// Serves connections from `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (mut client, peer) = listener.accept().await?;
            let me = self.clone();
            tokio::spawn(async move {
                let _ = client.set_nodelay(true);
                match me.connect().await {
                    Ok((_, mut upstream)) => {
                        let _ = upstream.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                    Err(e) => eprintln!("api-lb: no apiserver reachable for {peer}: {e}"),
                }
            });
        }
    }
}

/// Runs the balancer in the foreground (the `kube-api-lb` systemd service).
pub fn run(
    listen: SocketAddr,
    backends: Vec<SocketAddr>,
    ca_file: Option<std::path::PathBuf>,
    health_interval: Duration,
) -> crate::Result<i32> {
    if backends.is_empty() {
        return Err(crate::Error::msg(
            "api-lb needs at least one --backend",
            Some("pass --backend IP:6443 once per control plane"),
        ));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| crate::Error::io("starting the async runtime", e))?;
    rt.block_on(async move {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| crate::Error::io(format!("listening on {listen}"), e))?;
        eprintln!("api-lb: listening on {listen}, backends {backends:?}");
        let lb = Balancer::new(backends);
        if let Some(ca) = &ca_file {
            let pem =
                std::fs::read(ca).map_err(|e| crate::Error::io(format!("reading {}", ca.display()), e))?;
            lb.spawn_health_checks(&pem, health_interval)?;
            eprintln!("api-lb: checking each backend's /readyz every {}ms", health_interval.as_millis());
        }
        lb.serve(listener).await.map_err(|e| crate::Error::io("accepting connections", e))?;
        Ok(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_server(tag: u8) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let h = tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4];
                    if s.read_exact(&mut buf).await.is_ok() {
                        let _ = s.write_all(&[tag]).await;
                        let _ = s.write_all(&buf).await;
                    }
                });
            }
        });
        (addr, h)
    }

    async fn ask(lb: SocketAddr) -> Option<u8> {
        let mut s = TcpStream::connect(lb).await.ok()?;
        s.write_all(b"ping").await.ok()?;
        let mut out = [0u8; 5];
        s.read_exact(&mut out).await.ok()?;
        assert_eq!(&out[1..], b"ping");
        Some(out[0])
    }

    #[tokio::test]
    async fn backends_that_are_not_ready_get_no_connections_while_others_are() {
        let (a, _ha) = echo_server(b'a').await;
        let (b, _hb) = echo_server(b'b').await;
        let lb_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let lb = lb_listener.local_addr().unwrap();
        let bal = Balancer::new(vec![a, b]);
        tokio::spawn(bal.clone().serve(lb_listener));
        bal.set_ready(0, false, "/readyz answered 500");
        for _ in 0..6 {
            assert_eq!(ask(lb).await, Some(b'b'), "a is out of rotation");
        }
        // With no backend ready, connections still go somewhere rather than fail.
        bal.set_ready(1, false, "timeout");
        assert!(ask(lb).await.is_some());
        bal.set_ready(0, true, "");
        for _ in 0..4 {
            assert_eq!(ask(lb).await, Some(b'a'));
        }
    }

    /// An HTTPS server on 127.0.0.1 whose `/readyz` answers `status`, with a certificate from a fresh CA.
    async fn https_readyz(status: &'static str) -> (SocketAddr, Vec<u8>) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(s).await {
                        let mut buf = [0u8; 1024];
                        let _ = tls.read(&mut buf).await;
                        let body = "ok";
                        let resp = format!(
                            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = tls.write_all(resp.as_bytes()).await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        (addr, ca.pem().into_bytes())
    }

    #[tokio::test]
    async fn health_checks_take_a_backend_that_is_not_ready_out_and_back() {
        let (good, ca_good) = https_readyz("200 OK").await;
        let (bad, _) = https_readyz("500 Internal Server Error").await;
        let bal = Balancer::new(vec![good, bad]);
        // The CA of `good` only: `bad` also fails verification, which counts as not ready too.
        bal.spawn_health_checks(&ca_good, Duration::from_millis(200)).unwrap();
        let mut ok = false;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if *bal.ready.lock().unwrap() == [true, false] {
                ok = true;
                break;
            }
        }
        assert!(ok, "ready: {:?}", bal.ready.lock().unwrap());
        let (bad500, ca500) = https_readyz("500 Internal Server Error").await;
        let bal = Balancer::new(vec![bad500]);
        bal.spawn_health_checks(&ca500, Duration::from_millis(200)).unwrap();
        let mut out = false;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if *bal.ready.lock().unwrap() == [false] {
                out = true;
                break;
            }
        }
        assert!(out, "a verified backend answering 500 is out of rotation");
    }

    #[tokio::test]
    async fn balances_and_fails_over() {
        let (a, ha) = echo_server(b'a').await;
        let (b, _hb) = echo_server(b'b').await;
        // A port with nothing listening: bind and drop to get one.
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let lb_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let lb = lb_listener.local_addr().unwrap();
        tokio::spawn(Balancer::new(vec![dead, a, b]).serve(lb_listener));

        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..6 {
            seen.insert(ask(lb).await.expect("answered despite a dead backend"));
        }
        assert_eq!(seen, [b'a', b'b'].into_iter().collect(), "both live backends take connections");

        // Lose a backend: every connection still succeeds, through the other.
        ha.abort();
        tokio::time::sleep(Duration::from_millis(50)).await;
        for _ in 0..4 {
            assert_eq!(ask(lb).await, Some(b'b'));
        }
    }
}
