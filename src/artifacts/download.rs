//! HTTP downloads: streaming to a `.part` file with sha256 computed on the fly, resume with `Range`
//! where the server allows it, retries with exponential backoff for transient failures. Permanent
//! failures (404 and other client errors) are not retried: retrying cannot fix them.

use super::progress::Progress;
use super::ArtifactError;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How often and how patiently transient failures are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts per URL (at least 1).
    pub attempts: u32,
    /// Wait before the second attempt; doubled for each further one.
    pub initial_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { attempts: 5, initial_backoff: Duration::from_millis(500) }
    }
}

/// Checksum files are tiny; anything bigger is an error page or the wrong URL.
const MAX_CHECKSUM_FILE: usize = 1 << 20;

enum Failure {
    /// Worth another attempt; the `reqwest::Error` is set for a connection failure (nothing reached
    /// the server), so the final error can say the server is unreachable.
    Retry(Box<dyn std::error::Error + Send + Sync>, Option<reqwest::Error>),
    /// Retrying cannot help.
    Fatal(ArtifactError),
}

pub(crate) struct Downloader {
    client: reqwest::Client,
    retry: RetryPolicy,
}

/// The CA certificates of a PEM file (`releaseSource.caFile`): at least one, each one a certificate that
/// parses. Nothing else in the file is read.
pub fn read_ca_file(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot be read: {e}"))?;
    let ders = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("is not PEM: {e}"))?;
    if ders.is_empty() {
        return Err("holds no certificate (no `-----BEGIN CERTIFICATE-----` block)".into());
    }
    ders.iter()
        .enumerate()
        .map(|(i, der)| {
            x509_parser::parse_x509_certificate(der)
                .map_err(|e| format!("certificate {} does not parse: {e}", i + 1))?;
            reqwest::Certificate::from_der(der).map_err(|e| format!("certificate {}: {e}", i + 1))
        })
        .collect()
}

/// Why a redirect to `next` after `previous` is not followed: from `https://` down to anything else (a
/// checksum file or manifest fetched over https must not continue in the clear), or too many hops.
fn refused_redirect(previous: &[reqwest::Url], next: &reqwest::Url) -> Option<String> {
    if previous.iter().any(|u| u.scheme() == "https") && next.scheme() != "https" {
        Some(format!("refusing a redirect from https:// to {next}, which is not https://"))
    } else if previous.len() >= 10 {
        Some(format!("too many redirects (stopped at {next})"))
    } else {
        None
    }
}

fn classify_send_error(e: reqwest::Error) -> Failure {
    if e.is_redirect() {
        // The same answer on every attempt.
        let url = e.url().map(|u| u.to_string()).unwrap_or_default();
        return Failure::Fatal(ArtifactError::Transfer { url, attempts: 1, source: Box::new(e) });
    }
    if e.is_connect() {
        Failure::Retry(Box::new(std::io::Error::other(e.to_string())), Some(e))
    } else {
        Failure::Retry(Box::new(e), None)
    }
}

fn classify_status(url: &str, status: reqwest::StatusCode) -> Failure {
    let e = ArtifactError::Http { url: url.to_owned(), status: status.as_u16() };
    if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
        Failure::Retry(Box::new(e), None)
    } else {
        Failure::Fatal(e)
    }
}

/// The first byte of a `Content-Range: bytes N-M/T` header.
fn content_range_start(resp: &reqwest::Response) -> Option<u64> {
    let v = resp.headers().get(reqwest::header::CONTENT_RANGE)?.to_str().ok()?;
    v.trim().strip_prefix("bytes ")?.split('-').next()?.trim().parse().ok()
}

impl Downloader {
    pub(crate) fn new(retry: RetryPolicy) -> Self {
        Self::with_roots(retry, Vec::new())
    }

    /// Replaces the retry policy; the client (and the CAs it trusts) stays.
    pub(crate) fn set_retry(&mut self, retry: RetryPolicy) {
        self.retry = RetryPolicy { attempts: retry.attempts.max(1), ..retry };
    }

    /// A downloader that also trusts `extra_roots` (a mirror behind a private CA) beside the public roots.
    pub(crate) fn with_roots(retry: RetryPolicy, extra_roots: Vec<reqwest::Certificate>) -> Self {
        let mut builder = reqwest::Client::builder();
        for root in extra_roots {
            builder = builder.add_root_certificate(root);
        }
        let client = builder
            .connect_timeout(Duration::from_secs(15))
            // A stalled transfer fails and is resumed rather than hanging forever.
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("kubeforge/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::custom(|a| match refused_redirect(a.previous(), a.url()) {
                Some(why) => a.error(why),
                None => a.follow(),
            }))
            .build()
            .expect("a reqwest client with static settings always builds");
        Downloader { client, retry: RetryPolicy { attempts: retry.attempts.max(1), ..retry } }
    }

    async fn with_retries<T, F, Fut>(
        &self,
        url: &str,
        progress: &dyn Progress,
        mut op: F,
    ) -> Result<T, ArtifactError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match op().await {
                Ok(v) => return Ok(v),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry(e, connect)) => {
                    if attempt >= self.retry.attempts {
                        return Err(match connect {
                            Some(source) => {
                                ArtifactError::Unreachable { url: url.to_owned(), attempts: attempt, source }
                            }
                            None => {
                                ArtifactError::Transfer { url: url.to_owned(), attempts: attempt, source: e }
                            }
                        });
                    }
                    let wait = self.retry.initial_backoff.saturating_mul(1 << (attempt - 1).min(16));
                    progress.message(&format!(
                        "retry: {url}: {e} (attempt {attempt}/{}, next in {}ms)",
                        self.retry.attempts,
                        wait.as_millis()
                    ));
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Fetches a small text file (a checksum file) into memory.
    pub(crate) async fn fetch_text(
        &self,
        url: &str,
        progress: &dyn Progress,
    ) -> Result<String, ArtifactError> {
        self.with_retries(url, progress, || async {
            let resp = self.client.get(url).send().await.map_err(classify_send_error)?;
            if !resp.status().is_success() {
                return Err(classify_status(url, resp.status()));
            }
            let mut body = Vec::new();
            let mut stream = resp.bytes_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| Failure::Retry(Box::new(e), None))?;
                body.extend_from_slice(&chunk);
                if body.len() > MAX_CHECKSUM_FILE {
                    return Err(Failure::Fatal(ArtifactError::ChecksumMissing {
                        url: url.to_owned(),
                        file: "(checksum file larger than 1 MiB)".into(),
                    }));
                }
            }
            Ok(String::from_utf8_lossy(&body).into_owned())
        })
        .await
    }

    /// Downloads `url` into `part` (resuming what is already there), then checks the digest. On a
    /// mismatch `part` is deleted. Returns the size in bytes.
    pub(crate) async fn fetch_file(
        &self,
        url: &str,
        part: &Path,
        expected_sha256: &str,
        progress: &dyn Progress,
    ) -> Result<u64, ArtifactError> {
        let (digest, size) =
            self.with_retries(url, progress, || self.fetch_once(url, part, progress)).await?;
        if digest != expected_sha256 {
            let _ = tokio::fs::remove_file(part).await;
            return Err(ArtifactError::ChecksumMismatch {
                what: url.to_owned(),
                expected: expected_sha256.to_owned(),
                actual: digest,
            });
        }
        Ok(size)
    }

    async fn fetch_once(
        &self,
        url: &str,
        part: &Path,
        progress: &dyn Progress,
    ) -> Result<(String, u64), Failure> {
        let io = |what: &str, e: std::io::Error| {
            Failure::Fatal(ArtifactError::io(format!("{what} {}", part.display()), e))
        };
        let have = match tokio::fs::metadata(part).await {
            Ok(m) => m.len(),
            Err(_) => 0,
        };
        let mut request = self.client.get(url);
        if have > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let resp = request.send().await.map_err(classify_send_error)?;
        let status = resp.status();
        let mut hasher = Sha256::new();
        if have > 0
            && status == reqwest::StatusCode::PARTIAL_CONTENT
            && content_range_start(&resp) != Some(have)
        {
            // A 206 for some other range than the one asked for cannot be appended; start over.
            let _ = tokio::fs::remove_file(part).await;
            return Err(Failure::Retry(
                Box::new(std::io::Error::other(format!(
                    "server answered a different range than bytes={have}-"
                ))),
                None,
            ));
        }
        let (file, mut done) = if have > 0 && status == reqwest::StatusCode::PARTIAL_CONTENT {
            // Resuming: the digest must cover the bytes already on disk too.
            let mut f = tokio::fs::File::open(part).await.map_err(|e| io("cannot read", e))?;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                let n = f.read(&mut buf).await.map_err(|e| io("cannot read", e))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            let f = tokio::fs::OpenOptions::new()
                .append(true)
                .open(part)
                .await
                .map_err(|e| io("cannot append to", e))?;
            (f, have)
        } else if status.is_success() {
            // A full body (the server ignored or was not sent a Range): start over.
            (tokio::fs::File::create(part).await.map_err(|e| io("cannot create", e))?, 0)
        } else if status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE {
            // The partial file is as long as (or longer than) the resource: it cannot be trusted.
            let _ = tokio::fs::remove_file(part).await;
            return Err(classify_status(url, status));
        } else {
            return Err(classify_status(url, status));
        };
        // Network chunks are small; writing each through tokio's blocking pool costs more than hashing.
        let mut file = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let expected_len = resp.content_length().map(|l| l + done);
        let mut bar = progress.begin(url, expected_len, done);
        let mut stream = resp.bytes_stream();
        let result = async {
            while let Some(chunk) = stream.next().await {
                let chunk = match chunk {
                    Ok(c) => c,
                    Err(e) => {
                        // Flush what arrived so the next attempt resumes from the real length.
                        let _ = file.flush().await;
                        let _ = file.get_ref().sync_all().await;
                        return Err(Failure::Retry(Box::new(e), None));
                    }
                };
                hasher.update(&chunk);
                file.write_all(&chunk).await.map_err(|e| io("cannot write", e))?;
                done += chunk.len() as u64;
                bar.advance(chunk.len() as u64);
            }
            file.flush().await.map_err(|e| io("cannot write", e))?;
            file.get_ref().sync_all().await.map_err(|e| io("cannot sync", e))?;
            if let Some(len) = expected_len {
                if done != len {
                    return Err(Failure::Retry(
                        Box::new(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            format!("connection closed after {done} of {len} bytes"),
                        )),
                        None,
                    ));
                }
            }
            Ok(())
        }
        .await;
        bar.finish();
        result?;
        Ok((hex::encode(hasher.finalize()), done))
    }
}

#[cfg(test)]
mod tests {
    use super::refused_redirect;
    use reqwest::Url;

    #[test]
    fn a_redirect_never_leaves_https() {
        let u = |s: &str| Url::parse(s).unwrap();
        let https = [u("https://mirror.example.com/release/v1.35.7/bin/linux/amd64/kubelet.sha256")];
        let why = refused_redirect(&https, &u("http://cdn.example.com/kubelet.sha256")).unwrap();
        assert_eq!(why, "refusing a redirect from https:// to http://cdn.example.com/kubelet.sha256, which is not https://");
        // Through an https hop too.
        let two = [https[0].clone(), u("https://cdn.example.com/a")];
        assert!(refused_redirect(&two, &u("http://cdn.example.com/b")).is_some());
        assert_eq!(refused_redirect(&https, &u("https://cdn.example.com/kubelet.sha256")), None);
        // A plain-HTTP mirror (every file pinned) may redirect as it likes, within the hop limit.
        let http = [u("http://127.0.0.1:8080/kubelet")];
        assert_eq!(refused_redirect(&http, &u("http://127.0.0.1:8080/cdn/1")), None);
        let many: Vec<Url> = (0..10).map(|i| u(&format!("http://127.0.0.1:8080/{i}"))).collect();
        assert!(refused_redirect(&many, &u("http://127.0.0.1:8080/x"))
            .unwrap()
            .starts_with("too many redirects"));
    }
}
