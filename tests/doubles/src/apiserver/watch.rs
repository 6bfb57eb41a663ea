//! Watch (`?watch=true`) on top of a real etcd watch, as the real apiserver does: newline-delimited
//! `{"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":{...}}` events in a chunked response.
//! Without a resourceVersion (or with "0") the current state comes first as ADDED events; with one, changes
//! after it. `sendInitialEvents=true` (client-go's watch-list) ends the initial state with a BOOKMARK
//! annotated `k8s.io/initial-events-end`. Label and field selectors filter events the way the real watch
//! cache does (an object that stops matching is DELETED for that watcher). Table output (`kubectl get -w`)
//! sends one-row Tables. The stream ends at `timeoutSeconds`, when the client goes away, or when etcd does.

use std::time::Duration;

use serde_json::{json, Value};

use super::{
    api_version, fields_match, in_scope, labels_match, list_prefix, served, status, tables, with_rv,
    Resource, State, Target,
};
use crate::{
    etcd::{Event, WatchMessage},
    http::{Request, Response},
};

/// What one watcher wants to see.
struct Filter {
    r: &'static Resource,
    ns: Option<String>,
    prefix: String,
    labels: String,
    fields: String,
    table: bool,
}

impl Filter {
    fn matches(&self, obj: &Value) -> bool {
        labels_match(obj, &self.labels) && fields_match(obj, &self.fields)
    }

    fn line(&self, kind: &str, obj: Value) -> Vec<u8> {
        let object = match self.table.then(|| tables::table(self.r, std::slice::from_ref(&obj), "")).flatten()
        {
            Some(mut t) => {
                t["metadata"]["resourceVersion"] = obj["metadata"]["resourceVersion"].clone();
                t
            }
            None => obj,
        };
        let mut line = serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
        line.push(b'\n');
        line
    }

    /// The event this watcher sees for one etcd change, if any.
    fn event(&self, e: Event) -> Option<Vec<u8>> {
        if !in_scope(self.r, self.ns.as_deref(), &self.prefix, &e.key) {
            return None;
        }
        let now = time::OffsetDateTime::now_utc();
        let cur = e.value.map(|v| served(self.r, with_rv(v, e.mod_revision), now));
        let prev = e.prev.map(|v| served(self.r, with_rv(v, e.mod_revision), now));
        let cur_ok = cur.as_ref().is_some_and(|o| self.matches(o));
        let prev_ok = !e.created && prev.as_ref().is_some_and(|o| self.matches(o));
        let (kind, obj) = match (cur, prev) {
            (Some(c), _) if cur_ok && prev_ok => ("MODIFIED", c),
            (Some(c), _) if cur_ok => ("ADDED", c),
            (Some(_), Some(p)) if prev_ok => ("DELETED", p),
            (None, Some(p)) if prev_ok => ("DELETED", p),
            _ => return None,
        };
        Some(self.line(kind, obj))
    }
}

/// Serves one watch request.
pub(super) async fn serve(st: &State, req: &Request, t: &Target) -> Result<Response, String> {
    let r = t.res;
    let mut fields = req.param("fieldSelector").unwrap_or_default();
    if let Some(name) = &t.name {
        if !fields.is_empty() {
            fields.push(',');
        }
        fields.push_str(&format!("metadata.name={name}"));
    }
    let filter = Filter {
        r,
        ns: t.ns.clone(),
        prefix: list_prefix(r, t.ns.as_deref()),
        labels: req.param("labelSelector").unwrap_or_default(),
        fields,
        table: req.accept.contains("as=Table") && tables::table(r, &[], "").is_some(),
    };
    let rv = req.param("resourceVersion").unwrap_or_default();
    let send_initial = req.param("sendInitialEvents").is_some_and(|v| v == "true");
    let timeout = req.param("timeoutSeconds").and_then(|s| s.parse::<u64>().ok()).unwrap_or(1800);

    let mut initial = Vec::new();
    let start = if send_initial || rv.is_empty() || rv == "0" {
        let (kvs, rev) = st.etcd.list(&filter.prefix).await?;
        let now = time::OffsetDateTime::now_utc();
        for kv in kvs.into_iter().filter(|kv| in_scope(r, t.ns.as_deref(), &filter.prefix, &kv.key)) {
            let obj = served(r, with_rv(kv.value, kv.mod_revision), now);
            if filter.matches(&obj) {
                initial.push(filter.line("ADDED", obj));
            }
        }
        if send_initial {
            let bookmark = json!({"kind": r.kind, "apiVersion": api_version(r), "metadata": {
                "resourceVersion": rev.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}});
            let mut line =
                serde_json::to_vec(&json!({"type": "BOOKMARK", "object": bookmark})).unwrap_or_default();
            line.push(b'\n');
            initial.push(line);
        }
        rev + 1
    } else {
        match rv.parse::<i64>() {
            Ok(n) => n + 1,
            Err(_) => {
                return Ok(status(
                    400,
                    "BadRequest",
                    &format!(
                    "invalid resource version \"{rv}\": strconv.ParseUint: parsing \"{rv}\": invalid syntax"
                ),
                ))
            }
        }
    };
    let mut stream = st.etcd.watch(&filter.prefix, start).await?;
    let content_type = if filter.table { tables::TABLE_CONTENT_TYPE } else { "application/json" };
    let (resp, tx) = Response::streaming(200, content_type);
    tokio::spawn(async move {
        for line in initial {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tx.closed() => return,
                msg = stream.next() => match msg {
                    WatchMessage::Events(events) => {
                        for e in events {
                            if let Some(line) = filter.event(e) {
                                if tx.send(line).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    WatchMessage::Compacted(compacted) => {
                        let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure", "message": format!("too old resource version: {} ({compacted})", start - 1),
                            "reason": "Expired", "code": 410}});
                        let mut line = serde_json::to_vec(&gone).unwrap_or_default();
                        line.push(b'\n');
                        let _ = tx.send(line).await;
                        return;
                    }
                    WatchMessage::Unreadable(e) => {
                        let err = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure", "message": format!("Internal error occurred: {e}"),
                            "reason": "InternalError", "code": 500}});
                        let mut line = serde_json::to_vec(&err).unwrap_or_default();
                        line.push(b'\n');
                        let _ = tx.send(line).await;
                        return;
                    }
                    WatchMessage::Closed(_) => return,
                }
            }
        }
    });
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(labels: &str) -> Filter {
        let r = super::super::RESOURCES.iter().find(|r| r.plural == "pods").unwrap();
        Filter {
            r,
            ns: Some("default".into()),
            prefix: "/registry/pods/default/".into(),
            labels: labels.into(),
            fields: String::new(),
            table: false,
        }
    }

    fn ev(value: Option<Value>, prev: Option<Value>, created: bool) -> Event {
        Event { key: "/registry/pods/default/a".into(), value, prev, mod_revision: 7, created }
    }

    fn kind(line: Option<Vec<u8>>) -> Option<String> {
        line.map(|l| serde_json::from_slice::<Value>(&l).unwrap()["type"].as_str().unwrap().to_string())
    }

    #[test]
    fn selector_transitions() {
        let web = json!({"metadata": {"name": "a", "labels": {"app": "web"}}});
        let other = json!({"metadata": {"name": "a", "labels": {"app": "db"}}});
        let f = filter("app=web");
        assert_eq!(kind(f.event(ev(Some(web.clone()), None, true))).as_deref(), Some("ADDED"));
        assert_eq!(
            kind(f.event(ev(Some(web.clone()), Some(web.clone()), false))).as_deref(),
            Some("MODIFIED")
        );
        assert_eq!(
            kind(f.event(ev(Some(other.clone()), Some(web.clone()), false))).as_deref(),
            Some("DELETED")
        );
        assert_eq!(
            kind(f.event(ev(Some(web.clone()), Some(other.clone()), false))).as_deref(),
            Some("ADDED")
        );
        assert_eq!(kind(f.event(ev(None, Some(web.clone()), false))).as_deref(), Some("DELETED"));
        assert_eq!(kind(f.event(ev(None, Some(other.clone()), false))), None);
        assert_eq!(kind(f.event(ev(Some(other), None, true))), None);
        let mut deeper = ev(Some(web), None, true);
        deeper.key = "/registry/pods/default/a/b".into();
        assert_eq!(kind(f.event(deeper)), None);
    }
}
