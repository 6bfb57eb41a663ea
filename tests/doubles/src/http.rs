//! Small HTTP(S) server used by every double: TLS (optionally requesting client certs, verified against a
//! CA like the real `--client-ca-file`), HTTP/1.1 via hyper, one async handler per server.

use std::{future::Future, net::SocketAddr, pin::Pin, sync::Arc};

use http_body_util::{BodyExt, Either, Full};
use hyper::body::Bytes;
use tokio::net::TcpListener;

use crate::pki::{self, Cert, Key};

/// Authenticated client identity from its certificate (CN → user, O → groups).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User name (CN).
    pub user: String,
    /// Groups (O).
    pub groups: Vec<String>,
}

/// A request, fully read.
#[derive(Debug)]
pub struct Request {
    /// HTTP method.
    pub method: String,
    /// Path without query.
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// `Accept` header.
    pub accept: String,
    /// `Content-Type` header.
    pub content_type: String,
    /// Body bytes.
    pub body: Vec<u8>,
    /// `Authorization` header (a bearer token).
    pub authorization: String,
    /// Client-cert identity, if a verified cert was presented.
    pub identity: Option<Identity>,
    /// Why a presented client cert was rejected (the real servers answer 401 for such requests).
    pub auth_error: Option<String>,
}

impl Request {
    /// A query parameter (percent-decoded).
    pub fn param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k == name).then(|| percent_decode(v))
        })
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                Err(_) => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A response.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Content-Type.
    pub content_type: String,
    /// Body.
    pub body: Vec<u8>,
    /// A body sent in chunks as they arrive (chunked transfer encoding), instead of `body`: watch streams.
    pub stream: Option<tokio::sync::mpsc::Receiver<Vec<u8>>>,
}

impl Response {
    /// JSON response.
    pub fn json(status: u16, value: &serde_json::Value) -> Self {
        Self {
            status,
            content_type: "application/json".into(),
            body: serde_json::to_vec(value).unwrap_or_default(),
            stream: None,
        }
    }
    /// Plain-text response.
    pub fn text(status: u16, text: &str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8".into(),
            body: text.as_bytes().to_vec(),
            stream: None,
        }
    }
    /// A streamed response: every message sent into the returned sender goes out as it comes; the stream
    /// ends when the sender is dropped, and the sender sees the client going away as a closed channel.
    pub fn streaming(status: u16, content_type: &str) -> (Self, tokio::sync::mpsc::Sender<Vec<u8>>) {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        (Self { status, content_type: content_type.into(), body: Vec::new(), stream: Some(rx) }, tx)
    }
}

/// Response body fed by a channel.
struct ChannelBody(tokio::sync::mpsc::Receiver<Vec<u8>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|c| Ok(hyper::body::Frame::data(Bytes::from(c)))))
    }
}

/// The request handler type.
pub type Handler = Arc<dyn Fn(Request) -> Pin<Box<dyn Future<Output = Response> + Send>> + Send + Sync>;

/// Installs the process-wide rustls crypto provider (several are compiled in, so rustls cannot guess).
pub fn init_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Builds a server TLS config from a cert chain + key; when `client_cas` is given, client certs are
/// requested and verified against it (anonymous clients are still let in, like the real servers, and
/// decided on by the handler).
pub fn server_tls(
    chain: &[Cert],
    key: &Key,
    client_cas: Option<&[Cert]>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let certs: Vec<rustls::pki_types::CertificateDer<'static>> =
        chain.iter().map(|c| rustls::pki_types::CertificateDer::from(c.der.clone())).collect();
    let key_der = <rustls::pki_types::PrivateKeyDer as rustls::pki_types::pem::PemObject>::from_pem_slice(
        key.pem.as_bytes(),
    )
    .map_err(|e| format!("tls: failed to parse private key: {e}"))?;
    let builder = rustls::ServerConfig::builder();
    let builder = match client_cas.filter(|c| !c.is_empty()) {
        Some(cas) => {
            let hints = cas
                .iter()
                .filter_map(|ca| {
                    let (_, x) = x509_parser::parse_x509_certificate(&ca.der).ok()?;
                    Some(rustls::DistinguishedName::from(x.subject().as_raw().to_vec()))
                })
                .collect();
            builder.with_client_cert_verifier(Arc::new(RequestClientCert { hints }))
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key_der).map_err(|e| format!("tls: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Go's `tls.RequestClientCert`: the handshake accepts any client certificate (proof of key possession
/// is still checked); the chain is verified per request against the client CA, and a bad one gives 401.
#[derive(Debug)]
struct RequestClientCert {
    hints: Vec<rustls::DistinguishedName>,
}

impl rustls::server::danger::ClientCertVerifier for RequestClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &self.hints
    }
    fn verify_client_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algs = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, &algs)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        let algs = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, &algs)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

/// Verifies a presented client cert like the apiserver's x509 authenticator: chain to the client CA,
/// clientAuth usage, validity. Ok = identity from CN/O.
fn authenticate_cert(der: &[u8], cas: &[Cert]) -> Result<Identity, String> {
    let cert = pki::certs_from_pem(&pem_of(der), "client certificate").map_err(|e| e.0)?.remove(0);
    pki::check_chain(&cert, cas).map_err(|e| e.0)?;
    pki::check_usage(&cert, pki::Usage::Client).map_err(|e| e.0)?;
    Ok(Identity { user: cert.cn, groups: cert.orgs })
}

/// Binds `addr` (failing like the real binaries: `listen tcp ADDR: bind: address already in use`).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("failed to listen on {addr}: listen tcp {addr}: bind: {e}"))
}

/// Serves `handler` on `listener` forever, over TLS when `tls` is given.
pub async fn serve(
    listener: TcpListener,
    tls: Option<(Arc<rustls::ServerConfig>, Vec<Cert>)>,
    handler: Handler,
) {
    let (tls, cas) = match tls {
        Some((t, c)) => (Some(t), Arc::new(c)),
        None => (None, Arc::new(Vec::new())),
    };
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let acceptor = acceptor.clone();
        let handler = handler.clone();
        let cas = cas.clone();
        tokio::spawn(async move {
            match acceptor {
                Some(acceptor) => {
                    let Ok(tls) = acceptor.accept(stream).await else { return };
                    let auth = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                        None => None,
                        Some(_) if cas.is_empty() => None,
                        Some(c) => Some(authenticate_cert(c.as_ref(), &cas)),
                    };
                    serve_conn(hyper_util::rt::TokioIo::new(tls), auth, handler).await;
                }
                None => serve_conn(hyper_util::rt::TokioIo::new(stream), None, handler).await,
            }
        });
    }
}

fn pem_of(der: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n").into_bytes()
}

async fn serve_conn<I>(io: I, auth: Option<Result<Identity, String>>, handler: Handler)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let handler = handler.clone();
        let (identity, auth_error) = match auth.clone() {
            None => (None, None),
            Some(Ok(id)) => (Some(id), None),
            Some(Err(e)) => (None, Some(e)),
        };
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
            let header =
                |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            let request = Request {
                method: parts.method.to_string(),
                path: parts.uri.path().to_string(),
                query: parts.uri.query().unwrap_or("").to_string(),
                accept: header("accept"),
                content_type: header("content-type"),
                authorization: header("authorization"),
                body,
                identity,
                auth_error,
            };
            let resp = handler(request).await;
            let body = match resp.stream {
                Some(rx) => Either::Right(ChannelBody(rx)),
                None => Either::Left(Full::new(Bytes::from(resp.body))),
            };
            let out = hyper::Response::builder()
                .status(resp.status)
                .header("content-type", resp.content_type)
                .body(body)
                .expect("valid response");
            Ok::<_, std::convert::Infallible>(out)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
}
