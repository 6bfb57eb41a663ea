//! The node-local API load balancer (`kubeforge api-lb`): a TCP proxy that kubelets and kube-proxy on every
//! node reach at `127.0.0.1:7443` and that forwards each connection to a healthy kube-apiserver.
//!
//! kubeforge ships it inside its own binary (as k0s does) so that an HA cluster needs no extra package on
//! its nodes. It is TCP-level: TLS passes through untouched, so clients still verify the apiserver
//! certificate (which carries `127.0.0.1` as a SAN in this mode) and authenticate with their own certs.
//! Backends are tried round-robin; one that refuses or times out is skipped for a short back-off, and a
//! connection only fails when every backend fails.

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
    next: AtomicUsize,
}

impl Balancer {
    /// A balancer over `backends` (at least one).
    pub fn new(backends: Vec<SocketAddr>) -> Arc<Self> {
        let n = backends.len();
        Arc::new(Balancer { backends, down_until: Mutex::new(vec![None; n]), next: AtomicUsize::new(0) })
    }

    /// Connects to a healthy backend: round-robin, skipping backends in back-off unless all are.
    pub async fn connect(&self) -> std::io::Result<(SocketAddr, TcpStream)> {
        let n = self.backends.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let down = self.down_until.lock().expect("lock").clone();
        // Healthy backends first, then the ones in back-off (better a retry than no answer).
        let mut order: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
        order.sort_by_key(|&i| down[i].is_some_and(|t| t > now));
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
pub fn run(listen: SocketAddr, backends: Vec<SocketAddr>) -> crate::Result<i32> {
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
        Balancer::new(backends)
            .serve(listener)
            .await
            .map_err(|e| crate::Error::io("accepting connections", e))?;
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
