//! Kubernetes object semantics on plain JSON, shared by the apiserver double and the controller-manager,
//! scheduler and kubelet doubles: label selectors, pod readiness and activity, owner references,
//! int-or-percent values, conditions, taints and tolerations, and the name/hash alphabets of the real
//! components.

use serde_json::{json, Value};

/// The alphabet of `k8s.io/apimachinery/pkg/util/rand` (no vowels, no ambiguous characters): used for
/// `generateName` suffixes and `pod-template-hash` values.
const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Now as RFC 3339 with seconds precision (`metav1.Time`).
pub fn now() -> String {
    rfc3339(time::OffsetDateTime::now_utc())
}

/// A time as RFC 3339 with seconds precision.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Parses an RFC 3339 time.
pub fn parse_time(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// `n` random characters of the apimachinery alphabet (`utilrand.String`), e.g. the `xk2p9` of
/// `web-7d9c5b8f4-xk2p9`.
pub fn random_suffix(n: usize) -> String {
    use sha2::Digest;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let c = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seed = format!("{:?}{}{c}", std::time::SystemTime::now(), std::process::id());
    let digest = sha2::Sha256::digest(seed.as_bytes());
    digest.iter().cycle().take(n).map(|b| ALPHANUMS[*b as usize % ALPHANUMS.len()] as char).collect()
}

/// `rand.SafeEncodeString`: every byte mapped into the alphabet (how the real controllers turn a hash
/// number into a label value without vowels).
pub fn safe_encode(s: &str) -> String {
    s.bytes().map(|b| ALPHANUMS[b as usize % ALPHANUMS.len()] as char).collect()
}

/// JSON with object keys sorted at every level: a stable input for hashing.
pub fn canonical_json(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let inner: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::String(k.clone()), canonical_json(&m[k])))
                .collect();
            format!("{{{}}}", inner.join(","))
        }
        Value::Array(a) => format!("[{}]", a.iter().map(canonical_json).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

/// FNV-1a, 32 bit (the hash the Deployment controller uses for `pod-template-hash`).
pub fn fnv32a(data: &[u8]) -> u32 {
    data.iter().fold(0x811c9dc5u32, |h, b| (h ^ u32::from(*b)).wrapping_mul(0x01000193))
}

/// The `pod-template-hash` of a pod template: FNV-32a of the template (the double hashes its canonical
/// JSON; the real controller hashes the Go struct) plus the collision count, safe-encoded like the real one.
pub fn pod_template_hash(template: &Value, collision_count: Option<i64>) -> String {
    let mut data = canonical_json(template).into_bytes();
    if let Some(c) = collision_count {
        data.extend_from_slice(c.to_string().as_bytes());
    }
    safe_encode(&fnv32a(&data).to_string())
}

/// `metav1.LabelSelector` (`matchLabels` + `matchExpressions` with In, NotIn, Exists, DoesNotExist, and the
/// node selector's Gt/Lt) against a label map. A null selector matches nothing; an empty one matches everything (callers that want the
/// eviction API's "empty matches nothing" check [`selector_is_empty`] first).
pub fn selector_matches(selector: &Value, labels: &Value) -> bool {
    if selector.is_null() {
        return false;
    }
    let label = |k: &str| labels.get(k).and_then(Value::as_str);
    let by_labels =
        selector["matchLabels"].as_object().is_none_or(|m| m.iter().all(|(k, v)| label(k) == v.as_str()));
    let by_expressions = selector["matchExpressions"].as_array().is_none_or(|exprs| {
        exprs.iter().all(|e| {
            let key = e["key"].as_str().unwrap_or("");
            let values: Vec<&str> = e["values"]
                .as_array()
                .map(|v| v.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            match e["operator"].as_str().unwrap_or("") {
                "In" => label(key).is_some_and(|v| values.contains(&v)),
                "NotIn" => label(key).is_none_or(|v| !values.contains(&v)),
                "Exists" => label(key).is_some(),
                "DoesNotExist" => label(key).is_none(),
                // Node selector requirements only.
                op @ ("Gt" | "Lt") => {
                    let have = label(key).and_then(|v| v.parse::<i64>().ok());
                    let bound = values.first().and_then(|v| v.parse::<i64>().ok());
                    match (have, bound) {
                        (Some(h), Some(b)) => {
                            if op == "Gt" {
                                h > b
                            } else {
                                h < b
                            }
                        }
                        _ => false,
                    }
                }
                _ => false,
            }
        })
    });
    by_labels && by_expressions
}

/// Whether a selector selects everything (no labels, no expressions) or is null.
pub fn selector_is_empty(selector: &Value) -> bool {
    selector.is_null()
        || (selector["matchLabels"].as_object().is_none_or(|m| m.is_empty())
            && selector["matchExpressions"].as_array().is_none_or(|a| a.is_empty()))
}

/// A selector as `kubectl` prints it (`app=web,tier in (a,b)`).
pub fn selector_string(selector: &Value) -> String {
    let mut parts: Vec<String> = selector["matchLabels"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect())
        .unwrap_or_default();
    for e in selector["matchExpressions"].as_array().into_iter().flatten() {
        let key = e["key"].as_str().unwrap_or("");
        let values: Vec<&str> =
            e["values"].as_array().map(|v| v.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        parts.push(match e["operator"].as_str().unwrap_or("") {
            "In" => format!("{key} in ({})", values.join(",")),
            "NotIn" => format!("{key} notin ({})", values.join(",")),
            "Exists" => key.to_string(),
            "DoesNotExist" => format!("!{key}"),
            op => format!("{key} {op}"),
        });
    }
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

/// `namespace/name` of an object.
pub fn key(obj: &Value) -> String {
    format!("{}/{}", str_at(obj, "metadata.namespace"), str_at(obj, "metadata.name"))
}

/// A string at a dotted path, "" when missing.
pub fn str_at<'a>(obj: &'a Value, path: &str) -> &'a str {
    path.split('.').fold(obj, |o, p| &o[p]).as_str().unwrap_or("")
}

/// A condition of `status.conditions` by type.
pub fn condition<'a>(obj: &'a Value, kind: &str) -> Option<&'a Value> {
    obj["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == kind)
}

/// `podutil.IsPodReady`: the Ready condition is True.
pub fn pod_ready(pod: &Value) -> bool {
    condition(pod, "Ready").is_some_and(|c| c["status"] == "True")
}

/// `podutil.IsPodAvailable`: Ready for at least `min_ready_seconds`.
pub fn pod_available(pod: &Value, min_ready_seconds: i64, now: time::OffsetDateTime) -> bool {
    let Some(c) = condition(pod, "Ready").filter(|c| c["status"] == "True") else { return false };
    if min_ready_seconds <= 0 {
        return true;
    }
    c["lastTransitionTime"]
        .as_str()
        .and_then(parse_time)
        .is_some_and(|t| (now - t).whole_seconds() >= min_ready_seconds)
}

/// Not terminal (Succeeded/Failed) and not being deleted: what controllers count as a live replica.
pub fn pod_active(pod: &Value) -> bool {
    !matches!(str_at(pod, "status.phase"), "Succeeded" | "Failed") && !is_deleting(pod)
}

/// `metadata.deletionTimestamp` is set.
pub fn is_deleting(obj: &Value) -> bool {
    !obj["metadata"]["deletionTimestamp"].is_null()
}

/// The owner reference with `controller: true`, if any.
pub fn controller_of(obj: &Value) -> Option<&Value> {
    obj["metadata"]["ownerReferences"].as_array()?.iter().find(|r| r["controller"] == true)
}

/// An owner reference to `owner` (controller, blockOwnerDeletion), as controllers set on what they create.
pub fn owner_ref(owner: &Value, api_version: &str, kind: &str) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
        "controller": true, "blockOwnerDeletion": true})
}

/// `intstr.GetScaledValueFromIntOrPercent`: an int as is, `"N%"` of `total` rounded up or down.
pub fn scaled_value(v: &Value, total: i64, round_up: bool) -> Result<i64, String> {
    if let Some(i) = v.as_i64() {
        return Ok(i);
    }
    let s = v.as_str().ok_or_else(|| format!("invalid value for IntOrString: {v}"))?;
    let pct: i64 = s.strip_suffix('%').and_then(|p| p.parse().ok()).ok_or_else(|| {
        "invalid value for IntOrString: invalid type: string is not a percentage".to_string()
    })?;
    let scaled = pct * total;
    Ok(if round_up { (scaled + 99).div_euclid(100) } else { scaled.div_euclid(100) })
}

/// Sets a condition in `status.conditions` (creating the list), keeping `lastTransitionTime` when the status
/// did not change, like the real helpers. Returns whether anything changed apart from timestamps.
pub fn set_condition(obj: &mut Value, mut cond: Value) -> bool {
    if !obj["status"]["conditions"].is_array() {
        obj["status"]["conditions"] = json!([]);
    }
    let list = obj["status"]["conditions"].as_array_mut().expect("array");
    match list.iter_mut().find(|c| c["type"] == cond["type"]) {
        Some(existing) => {
            let same = existing["status"] == cond["status"]
                && existing["reason"] == cond["reason"]
                && existing["message"] == cond["message"];
            if existing["status"] == cond["status"] {
                cond["lastTransitionTime"] = existing["lastTransitionTime"].clone();
            }
            if same {
                return false;
            }
            *existing = cond;
            true
        }
        None => {
            list.push(cond);
            true
        }
    }
}

/// `Toleration.ToleratesTaint`.
pub fn tolerates(toleration: &Value, taint: &Value) -> bool {
    let t_effect = str_at(toleration, "effect");
    if !t_effect.is_empty() && t_effect != str_at(taint, "effect") {
        return false;
    }
    let t_key = str_at(toleration, "key");
    if !t_key.is_empty() && t_key != str_at(taint, "key") {
        return false;
    }
    match str_at(toleration, "operator") {
        "" | "Equal" => str_at(toleration, "value") == str_at(taint, "value"),
        "Exists" => true,
        _ => false,
    }
}

/// Whether any of a pod's tolerations tolerates `taint`.
pub fn pod_tolerates(pod: &Value, taint: &Value) -> bool {
    pod["spec"]["tolerations"].as_array().is_some_and(|ts| ts.iter().any(|t| tolerates(t, taint)))
}

/// Node readiness as the apiserver serves it: the Ready condition's status ("True", "False", "Unknown").
pub fn node_ready_status(node: &Value) -> &str {
    condition(node, "Ready").and_then(|c| c["status"].as_str()).unwrap_or("Unknown")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let labels = json!({"app": "web", "tier": "front"});
        assert!(selector_matches(&json!({"matchLabels": {"app": "web"}}), &labels));
        assert!(!selector_matches(&json!({"matchLabels": {"app": "db"}}), &labels));
        assert!(selector_matches(&json!({}), &labels));
        assert!(!selector_matches(&Value::Null, &labels));
        let exprs = json!({"matchExpressions": [
            {"key": "tier", "operator": "In", "values": ["front", "back"]},
            {"key": "gone", "operator": "DoesNotExist"},
            {"key": "app", "operator": "NotIn", "values": ["db"]}]});
        assert!(selector_matches(&exprs, &labels));
        let exprs = json!({"matchExpressions": [{"key": "tier", "operator": "Exists"}, {"key": "app", "operator": "In", "values": ["db"]}]});
        assert!(!selector_matches(&exprs, &labels));
        assert!(selector_is_empty(&json!({})) && selector_is_empty(&json!({"matchLabels": {}})));
        assert!(!selector_is_empty(&json!({"matchLabels": {"a": "b"}})));
        assert_eq!(
            selector_string(
                &json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "t", "operator": "In", "values": ["a", "b"]}]})
            ),
            "app=web,t in (a,b)"
        );
    }

    #[test]
    fn int_or_percent() {
        assert_eq!(scaled_value(&json!(2), 3, true).unwrap(), 2);
        assert_eq!(scaled_value(&json!("50%"), 3, true).unwrap(), 2);
        assert_eq!(scaled_value(&json!("50%"), 3, false).unwrap(), 1);
        assert_eq!(scaled_value(&json!("25%"), 3, true).unwrap(), 1);
        assert_eq!(scaled_value(&json!("25%"), 3, false).unwrap(), 0);
        assert_eq!(scaled_value(&json!("100%"), 3, false).unwrap(), 3);
        assert!(scaled_value(&json!("x"), 3, true).is_err());
    }

    #[test]
    fn hashes_and_names() {
        // FNV-1a 32 reference values.
        assert_eq!(fnv32a(b""), 0x811c9dc5);
        assert_eq!(fnv32a(b"a"), 0xe40c292c);
        let t1 = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "w", "image": "i"}]}});
        let t2: Value = serde_json::from_str(
            r#"{"spec": {"containers": [{"image": "i", "name": "w"}]}, "metadata": {"labels": {"app": "web"}}}"#,
        )
        .unwrap();
        let h = pod_template_hash(&t1, None);
        assert_eq!(h, pod_template_hash(&t2, None), "key order must not matter");
        assert_ne!(h, pod_template_hash(&t1, Some(1)));
        assert!(h.bytes().all(|b| ALPHANUMS.contains(&b)) && !h.is_empty() && h.len() <= 10, "{h}");
        let s = random_suffix(5);
        assert_eq!(s.len(), 5);
        assert!(s.bytes().all(|b| ALPHANUMS.contains(&b)));
        assert_ne!(random_suffix(5), random_suffix(5));
    }

    #[test]
    fn taints_and_conditions() {
        let taint = json!({"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"});
        assert!(tolerates(
            &json!({"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}),
            &taint
        ));
        assert!(tolerates(&json!({"operator": "Exists"}), &taint));
        assert!(!tolerates(
            &json!({"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoExecute"}),
            &taint
        ));
        assert!(!tolerates(&json!({"key": "other", "operator": "Exists"}), &taint));
        assert!(tolerates(
            &json!({"key": "k", "value": "v"}),
            &json!({"key": "k", "value": "v", "effect": "NoSchedule"})
        ));
        assert!(!tolerates(
            &json!({"key": "k", "value": "w"}),
            &json!({"key": "k", "value": "v", "effect": "NoSchedule"})
        ));

        let mut obj = json!({});
        assert!(set_condition(
            &mut obj,
            json!({"type": "Ready", "status": "True", "lastTransitionTime": "t1"})
        ));
        assert!(!set_condition(
            &mut obj,
            json!({"type": "Ready", "status": "True", "lastTransitionTime": "t2"})
        ));
        assert!(set_condition(
            &mut obj,
            json!({"type": "Ready", "status": "False", "lastTransitionTime": "t3"})
        ));
        assert_eq!(obj["status"]["conditions"][0]["lastTransitionTime"], "t3");
        assert!(pod_ready(&json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})));
        assert!(!pod_active(
            &json!({"metadata": {"deletionTimestamp": "x"}, "status": {"phase": "Running"}})
        ));
        assert!(!pod_active(&json!({"status": {"phase": "Succeeded"}})));
        assert!(pod_active(&json!({"status": {"phase": "Pending"}})));
    }
}
