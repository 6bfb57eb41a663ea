//! A loopback HTTP/1.1 file server for tests: serves an in-memory tree, honours `Range: bytes=N-`,
//! logs every request, and injects faults on demand (truncated body, error status, dropped connection,
//! ignored Range). One request per connection (`Connection: close`) keeps it simple and predictable.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// A fault applied to the next request of a path (queued, one per request).
#[derive(Debug, Clone)]
pub enum Fault {
    /// Announce the full length but close the connection after this many body bytes.
    Truncate(usize),
    /// Answer with this status and an empty body.
    Status(u16),
    /// Close the connection without any response.
    Drop,
    /// Answer 200 with the full body even when a Range was asked for.
    IgnoreRange,
    /// Answer a Range request with `206` but the whole body from byte 0 (a broken cache or proxy).
    RangeFromStart,
    /// Answer `302 Found` with this `Location` (how the upstream servers send clients to their CDN).
    Redirect(String),
}

/// One logged request.
#[derive(Debug, Clone, PartialEq)]
pub struct Logged {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// The Range header, if sent.
    pub range: Option<String>,
    /// The status answered (0 = dropped).
    pub status: u16,
}

#[derive(Default)]
struct State {
    files: HashMap<String, Vec<u8>>,
    faults: HashMap<String, VecDeque<Fault>>,
    log: Vec<Logged>,
}

/// The running server; stops when dropped.
pub struct TestServer {
    addr: SocketAddr,
    tls: bool,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    /// Binds 127.0.0.1:0 and starts serving.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// The same server over TLS (rustls), with this certificate chain and key (PEM); `url()` is `https://`.
    pub async fn start_tls(cert_chain_pem: &str, key_pem: &str) -> Self {
        let certs: Vec<_> =
            rustls_pemfile::certs(&mut cert_chain_pem.as_bytes()).collect::<Result<_, _>>().unwrap();
        let key = rustls_pemfile::private_key(&mut key_pem.as_bytes()).unwrap().expect("a private key");
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .expect("the test certificate and key");
        Self::start_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start_with(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let is_tls = tls.is_some();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let st = st.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let _ = match tls {
                        // A client that refuses the certificate ends the handshake: nothing is served.
                        Some(acceptor) => match acceptor.accept(sock).await {
                            Ok(s) => serve(s, st).await,
                            Err(_) => Ok(()),
                        },
                        None => serve(sock, st).await,
                    };
                });
            }
        });
        TestServer { addr, tls: is_tls, state, task }
    }

    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.addr)
    }

    pub fn put(&self, path: &str, bytes: impl Into<Vec<u8>>) {
        self.state.lock().unwrap().files.insert(path.to_owned(), bytes.into());
    }

    /// Stops serving `path` (404 from now on).
    pub fn remove(&self, path: &str) {
        self.state.lock().unwrap().files.remove(path);
    }

    /// Queues a fault for the next request of `path`.
    pub fn fault(&self, path: &str, fault: Fault) {
        self.state.lock().unwrap().faults.entry(path.to_owned()).or_default().push_back(fault);
    }

    /// Every request so far.
    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    /// Forgets the log.
    pub fn clear_log(&self) {
        self.state.lock().unwrap().log.clear();
    }
}

/// A loopback port nothing listens on (bound, then released).
pub fn unused_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut sock: S, st: Arc<Mutex<State>>) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut buf).await?;
        if n == 0 || head.len() > 64 * 1024 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_owned();
    let path = first.next().unwrap_or("").to_owned();
    let range = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("range"))
        .map(|(_, v)| v.trim().to_owned());

    let (fault, body) = {
        let mut s = st.lock().unwrap();
        let fault = s.faults.get_mut(&path).and_then(|q| q.pop_front());
        (fault, s.files.get(&path).cloned())
    };
    let log = |status: u16| {
        st.lock().unwrap().log.push(Logged {
            method: method.clone(),
            path: path.clone(),
            range: range.clone(),
            status,
        })
    };
    match (&fault, body) {
        (Some(Fault::Drop), _) => {
            log(0);
            return Ok(());
        }
        (Some(Fault::Redirect(to)), _) => {
            log(302);
            let resp = format!(
                "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            sock.write_all(resp.as_bytes()).await?;
        }
        (Some(Fault::Status(code)), _) => {
            log(*code);
            let resp = format!("HTTP/1.1 {code} Injected\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            sock.write_all(resp.as_bytes()).await?;
        }
        (_, None) => {
            log(404);
            let msg = b"not found";
            let resp = format!(
                "HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                msg.len()
            );
            sock.write_all(resp.as_bytes()).await?;
            sock.write_all(msg).await?;
        }
        (_, Some(body)) => {
            let start = match (&range, &fault) {
                (Some(r), f) if !matches!(f, Some(Fault::IgnoreRange)) => r
                    .strip_prefix("bytes=")
                    .and_then(|r| r.strip_suffix('-'))
                    .and_then(|n| n.parse::<usize>().ok()),
                _ => None,
            };
            if let Some(start) = start {
                if start >= body.len() {
                    log(416);
                    let resp = format!("HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", body.len());
                    sock.write_all(resp.as_bytes()).await?;
                    return sock.shutdown().await;
                }
            }
            let start =
                if matches!(fault, Some(Fault::RangeFromStart)) && start.is_some() { Some(0) } else { start };
            let (status, part) = match start {
                Some(s) => (206, &body[s..]),
                None => (200, &body[..]),
            };
            log(status);
            let mut resp = format!(
                "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n",
                if status == 206 { "Partial Content" } else { "OK" },
                part.len()
            );
            if let Some(s) = start {
                resp.push_str(&format!("Content-Range: bytes {s}-{}/{}\r\n", body.len() - 1, body.len()));
            }
            resp.push_str("\r\n");
            sock.write_all(resp.as_bytes()).await?;
            match fault {
                Some(Fault::Truncate(n)) => {
                    sock.write_all(&part[..n.min(part.len())]).await?;
                    sock.flush().await?;
                    // Close abruptly: the client sees fewer bytes than Content-Length announced.
                    return Ok(());
                }
                _ => sock.write_all(part).await?,
            }
        }
    }
    sock.shutdown().await
}
