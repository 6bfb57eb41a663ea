//! Client for the real etcd's v3 JSON gateway (`/v3/kv/*`, base64 keys and values) over HTTPS with the
//! apiserver's etcd client certificate. Tries each `--etcd-servers` URL in turn. Values pass through the
//! encryption-at-rest transformers ([`crate::encryption::AtRest`]) on the way in and out, as the real
//! apiserver's storage layer does: a value that cannot be read is an error, never skipped.

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use serde_json::{json, Value};

use crate::encryption::AtRest;

/// An etcd client over the JSON gateway.
#[derive(Clone)]
pub struct Etcd {
    urls: Vec<String>,
    http: reqwest::Client,
    at_rest: std::sync::Arc<AtRest>,
}

/// One key's value and its modification revision.
#[derive(Debug, Clone)]
pub struct Kv {
    /// Key.
    pub key: String,
    /// JSON value stored.
    pub value: Value,
    /// etcd mod_revision (used as resourceVersion).
    pub mod_revision: i64,
    /// Stored otherwise than the configuration would store it now (another key or provider than the first;
    /// upstream's transformers report it "stale"): an update writes it again even when the object did not
    /// change.
    pub stale: bool,
}

fn rev(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// `range_end` for a prefix scan: the prefix with its last byte incremented.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Etcd {
    /// A client for `urls` with the given HTTP client (carrying CA + client identity).
    pub fn new(urls: Vec<String>, http: reqwest::Client) -> Self {
        Self { urls, http, at_rest: Default::default() }
    }

    /// The same client, storing values through `at_rest` (`--encryption-provider-config`).
    pub fn with_at_rest(self, at_rest: AtRest) -> Self {
        Self { at_rest: std::sync::Arc::new(at_rest), ..self }
    }

    /// The bytes stored for `value` under `key`.
    fn encode(&self, key: &str, value: &Value) -> Result<String, String> {
        let data = serde_json::to_vec(value).map_err(|e| e.to_string())?;
        Ok(B64.encode(self.at_rest.to_storage(key, data)?))
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, String> {
        let mut last = String::from("no etcd servers");
        for url in &self.urls {
            let full = format!("{}/v3/{path}", url.trim_end_matches('/'));
            match self
                .http
                .post(&full)
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&body).unwrap_or_default())
                .send()
                .await
            {
                Ok(resp) if resp.status().is_success() => {
                    let bytes = resp.bytes().await.map_err(|e| format!("etcd {url}: {e}"))?;
                    return serde_json::from_slice(&bytes)
                        .map_err(|e| format!("etcd {url}: bad response: {e}"));
                }
                Ok(resp) => {
                    last = format!(
                        "etcd {url}: HTTP {}: {}",
                        resp.status(),
                        resp.text().await.unwrap_or_default()
                    )
                }
                Err(e) => last = format!("etcd {url}: {}", error_chain(&e)),
            }
        }
        Err(last)
    }

    /// Checks one specific endpoint answers a read (used at startup for every URL).
    pub async fn probe(&self, url: &str) -> Result<(), String> {
        let full = format!("{}/v3/kv/range", url.trim_end_matches('/'));
        let body = json!({"key": B64.encode("/registry/health"), "count_only": true});
        match self
            .http
            .post(&full)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).unwrap_or_default())
            .send()
            .await
        {
            Ok(resp) if resp.status().is_success() => Ok(()),
            Ok(resp) => Err(format!("HTTP {}", resp.status())),
            Err(e) => Err(error_chain(&e)),
        }
    }

    /// Reads one key.
    pub async fn get(&self, key: &str) -> Result<Option<Kv>, String> {
        let r = self.post("kv/range", json!({"key": B64.encode(key)})).await?;
        Ok(kvs(&r, &self.at_rest)?.into_iter().next())
    }

    /// Reads every key under a prefix; returns the items and the store revision.
    pub async fn list(&self, prefix: &str) -> Result<(Vec<Kv>, i64), String> {
        let r = self
            .post("kv/range", json!({"key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix))}))
            .await?;
        Ok((kvs(&r, &self.at_rest)?, rev(&r["header"]["revision"])))
    }

    /// Writes a key; returns the new revision.
    pub async fn put(&self, key: &str, value: &Value) -> Result<i64, String> {
        let data = self.encode(key, value)?;
        let r = self.post("kv/put", json!({"key": B64.encode(key), "value": data})).await?;
        Ok(rev(&r["header"]["revision"]))
    }

    /// Writes a key only if it still has `mod_revision` (a transaction comparing the key's MOD revision, as
    /// the real apiserver's optimistic concurrency does); returns the new revision, or `None` when the key
    /// changed in between.
    pub async fn put_if(&self, key: &str, value: &Value, mod_revision: i64) -> Result<Option<i64>, String> {
        let data = self.encode(key, value)?;
        let k = B64.encode(key);
        let r = self
            .post(
                "kv/txn",
                json!({
                    "compare": [{"key": k, "target": "MOD", "result": "EQUAL", "mod_revision": mod_revision.to_string()}],
                    "success": [{"request_put": {"key": k, "value": data}}],
                }),
            )
            .await?;
        Ok(if r["succeeded"].as_bool() == Some(true) { Some(rev(&r["header"]["revision"])) } else { None })
    }

    /// Deletes a key, or a prefix when `prefix` is set; returns how many were deleted.
    pub async fn delete(&self, key: &str, prefix: bool) -> Result<i64, String> {
        let mut body = json!({"key": B64.encode(key)});
        if prefix {
            body["range_end"] = json!(B64.encode(prefix_end(key)));
        }
        let r = self.post("kv/deleterange", body).await?;
        Ok(rev(&r["deleted"]))
    }
}

/// One change seen by a watch.
#[derive(Debug, Clone)]
pub struct Event {
    /// The key.
    pub key: String,
    /// The new value (`None` for a deletion).
    pub value: Option<Value>,
    /// The value before the change, when there was one.
    pub prev: Option<Value>,
    /// Revision of the change.
    pub mod_revision: i64,
    /// Whether this put created the key.
    pub created: bool,
}

/// A watch stream from etcd's gateway (`/v3/watch`, newline-delimited JSON messages).
pub struct WatchStream {
    resp: reqwest::Response,
    buf: Vec<u8>,
    at_rest: std::sync::Arc<AtRest>,
}

/// What a watch stream yields.
#[derive(Debug)]
pub enum WatchMessage {
    /// Changes, in revision order.
    Events(Vec<Event>),
    /// The start revision was compacted away; the watch is over.
    Compacted(i64),
    /// The stream ended or failed.
    Closed(String),
    /// A value could not be read (encryption at rest: no provider or key for it); the watch is over.
    Unreadable(String),
}

impl WatchStream {
    /// The next batch of changes (or the end of the stream).
    pub async fn next(&mut self) -> WatchMessage {
        loop {
            if let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=nl).collect();
                let Ok(msg) = serde_json::from_slice::<Value>(&line) else { continue };
                let result = &msg["result"];
                if !msg["error"].is_null() {
                    return WatchMessage::Closed(format!("etcd watch: {}", msg["error"]));
                }
                let compact = rev(&result["compact_revision"]);
                if compact > 0 {
                    return WatchMessage::Compacted(compact);
                }
                if result["canceled"] == true {
                    return WatchMessage::Closed("etcd watch canceled".into());
                }
                let events: Result<Vec<Event>, String> = result["events"]
                    .as_array()
                    .map(|evs| evs.iter().filter_map(|e| event(e, &self.at_rest).transpose()).collect())
                    .unwrap_or(Ok(Vec::new()));
                let events = match events {
                    Ok(events) => events,
                    Err(e) => return WatchMessage::Unreadable(e),
                };
                if !events.is_empty() {
                    return WatchMessage::Events(events);
                }
                continue;
            }
            match self.resp.chunk().await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk),
                Ok(None) => return WatchMessage::Closed("etcd closed the watch".into()),
                Err(e) => return WatchMessage::Closed(error_chain(&e)),
            }
        }
    }
}

/// One watch event; `Ok(None)` for one that is not an event of a readable key, `Err` for a value nothing can
/// read.
fn event(e: &Value, at_rest: &AtRest) -> Result<Option<Event>, String> {
    let Some(key) = e["kv"]["key"].as_str().and_then(|k| String::from_utf8(B64.decode(k).ok()?).ok()) else {
        return Ok(None);
    };
    let decode = |kv: &Value| -> Result<Option<Value>, String> {
        let Some(raw) = kv["value"].as_str().and_then(|v| B64.decode(v).ok()) else { return Ok(None) };
        if raw.is_empty() {
            return Ok(None);
        }
        let plain = at_rest.from_storage(&key, raw).map_err(|e| format!("{key}: {e}"))?;
        Ok(serde_json::from_slice(&plain).ok())
    };
    let kv = &e["kv"];
    let deleted = e["type"] == "DELETE";
    Ok(Some(Event {
        value: if deleted { None } else { decode(kv)? },
        prev: decode(&e["prev_kv"])?,
        mod_revision: rev(&kv["mod_revision"]),
        created: !deleted && rev(&kv["create_revision"]) == rev(&kv["mod_revision"]),
        key,
    }))
}

impl Etcd {
    /// Deletes a key only if it still has `mod_revision`; `false` when it changed (or is gone) in between.
    pub async fn delete_if(&self, key: &str, mod_revision: i64) -> Result<bool, String> {
        let k = B64.encode(key);
        let r = self
            .post(
                "kv/txn",
                json!({
                    "compare": [{"key": k, "target": "MOD", "result": "EQUAL", "mod_revision": mod_revision.to_string()}],
                    "success": [{"request_delete_range": {"key": k}}],
                }),
            )
            .await?;
        Ok(r["succeeded"].as_bool() == Some(true))
    }

    /// Watches every key under `prefix` from revision `start` on (with previous values), like the real
    /// apiserver's watch on etcd. The first server that answers serves the stream.
    pub async fn watch(&self, prefix: &str, start: i64) -> Result<WatchStream, String> {
        let body = json!({"create_request": {
            "key": B64.encode(prefix), "range_end": B64.encode(prefix_end(prefix)),
            "start_revision": start.to_string(), "prev_kv": true}});
        let mut last = String::from("no etcd servers");
        for url in &self.urls {
            let full = format!("{}/v3/watch", url.trim_end_matches('/'));
            match self
                .http
                .post(&full)
                .header("content-type", "application/json")
                .timeout(std::time::Duration::from_secs(24 * 3600))
                .body(serde_json::to_vec(&body).unwrap_or_default())
                .send()
                .await
            {
                Ok(resp) if resp.status().is_success() => {
                    return Ok(WatchStream { resp, buf: Vec::new(), at_rest: self.at_rest.clone() })
                }
                Ok(resp) => last = format!("etcd {url}: HTTP {}", resp.status()),
                Err(e) => last = format!("etcd {url}: {}", error_chain(&e)),
            }
        }
        Err(last)
    }
}

/// The key-values of a range response, read through `at_rest`: a value it cannot read fails the whole
/// read, as the real apiserver's get and list do.
fn kvs(r: &Value, at_rest: &AtRest) -> Result<Vec<Kv>, String> {
    let mut out = Vec::new();
    for kv in r["kvs"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let Some(key) = kv["key"].as_str().and_then(|k| String::from_utf8(B64.decode(k).ok()?).ok()) else {
            continue;
        };
        let Ok(raw) = B64.decode(kv["value"].as_str().unwrap_or("")) else { continue };
        let stale = at_rest.is_stale(&key, &raw);
        let plain = at_rest.from_storage(&key, raw).map_err(|e| format!("{key}: {e}"))?;
        if let Ok(value) = serde_json::from_slice(&plain) {
            out.push(Kv { key, value, mod_revision: rev(&kv["mod_revision"]), stale });
        }
    }
    Ok(out)
}

/// An error with its causes, so TLS alerts from etcd (`bad certificate`) show up in the message.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}
