//! Component config files (`--config`) checked against the field tables in `reference/config/`:
//! apiVersion/kind exact, field names per version, value types. kube-scheduler is strict (unknown field =
//! startup error); kubelet and kube-proxy fall back to lenient decoding with a warning, but wrong types fail.

use std::collections::BTreeMap;

use serde_yaml::Value;

use crate::Component;

/// A config problem, worded like the real decoder's.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses a Go duration (`10s`, `2m0s`, `1h30m`, `100ms`, `0`). Returns seconds.
pub fn parse_go_duration(text: &str) -> Option<f64> {
    let text = text.trim();
    let (neg, mut rest) = match text.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Some(0.0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * factor;
    }
    Some(if neg { -total } else { total })
}

/// (apiVersion, kind, table text) for a component's config kind.
fn kind_of(component: Component) -> Option<(&'static str, &'static str, &'static str)> {
    match component {
        Component::Kubelet => Some((
            "kubelet.config.k8s.io/v1beta1",
            "KubeletConfiguration",
            include_str!("../reference/config/KubeletConfiguration.txt"),
        )),
        Component::Proxy => Some((
            "kubeproxy.config.k8s.io/v1alpha1",
            "KubeProxyConfiguration",
            include_str!("../reference/config/KubeProxyConfiguration.txt"),
        )),
        Component::Scheduler => Some((
            "kubescheduler.config.k8s.io/v1",
            "KubeSchedulerConfiguration",
            include_str!("../reference/config/KubeSchedulerConfiguration.txt"),
        )),
        _ => None,
    }
}

/// Whether a `versions` column entry (`all`, `untracked`, `1.36+`, `1.33-1.35`) covers `minor`.
fn version_covers(versions: &str, minor: u32) -> bool {
    let minor_of = |s: &str| s.trim().strip_prefix("1.").and_then(|m| m.parse::<u32>().ok());
    if let Some(from) = versions.strip_suffix('+') {
        return minor_of(from).is_some_and(|f| minor >= f);
    }
    if let Some((a, b)) = versions.split_once('-') {
        if let (Some(a), Some(b)) = (minor_of(a), minor_of(b)) {
            return minor >= a && minor <= b;
        }
    }
    true
}

/// Field path (`a.b`, `a[].b`, `a{}.b`) → type, for the fields that exist at `minor`.
fn fields(text: &str, minor: u32) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            (cols.len() >= 4 && version_covers(cols[3], minor))
                .then(|| (cols[0].to_string(), cols[1].to_string()))
        })
        .collect()
}

/// Result of decoding: the document and the unknown-field complaints (kubelet/kube-proxy only warn).
#[derive(Debug)]
pub struct Decoded {
    /// The parsed document.
    pub doc: Value,
    /// Strict-decoding complaints that were tolerated.
    pub lenient: Vec<String>,
}

struct Walker<'a> {
    fields: &'a BTreeMap<String, String>,
    unknown: Vec<String>,
}

impl Walker<'_> {
    fn has_children(&self, prefix: &str) -> bool {
        let dot = format!("{prefix}.");
        self.fields.range(dot.clone()..).next().is_some_and(|(k, _)| k.starts_with(&dot))
    }

    fn walk_map(&mut self, prefix: &str, map: &serde_yaml::Mapping) -> Result<(), ConfigError> {
        for (k, v) in map {
            let key = k.as_str().ok_or_else(|| ConfigError(format!("non-string key in {prefix}")))?;
            let path = if prefix.is_empty() { key.to_string() } else { format!("{prefix}.{key}") };
            match self.fields.get(&path) {
                None => self.unknown.push(format!("unknown field \"{path}\"")),
                Some(kind) => self.check(&path, kind, v)?,
            }
        }
        Ok(())
    }

    fn check(&mut self, path: &str, kind: &str, v: &Value) -> Result<(), ConfigError> {
        let kind = kind.split(" (").next().unwrap_or(kind);
        let wrong = |want: &str| {
            Err(ConfigError(format!(
                "json: cannot unmarshal {} into Go struct field .{path} of type {want}",
                yaml_type(v)
            )))
        };
        if v.is_null() {
            return Ok(());
        }
        match kind {
            "string" => {
                if !v.is_string() {
                    return wrong("string");
                }
            }
            "bool" => {
                if !v.is_bool() {
                    return wrong("bool");
                }
            }
            "int32" | "int64" | "int" | "uint32" | "*int32" => {
                if !(v.is_i64() || v.is_u64()) {
                    return wrong(kind);
                }
            }
            "float64" | "float32" => {
                if !v.is_number() {
                    return wrong(kind);
                }
            }
            "meta/v1.Duration" => match v.as_str() {
                Some(s) if parse_go_duration(s).is_some() => {}
                Some(s) => return Err(ConfigError(format!("time: invalid duration {s:?}"))),
                None => return wrong("string"),
            },
            "[]string" => match v.as_sequence() {
                Some(seq) if seq.iter().all(Value::is_string) => {}
                _ => return wrong("[]string"),
            },
            "map[string]string" => match v.as_mapping() {
                Some(m) if m.values().all(Value::is_string) => {}
                _ => return wrong("map[string]string"),
            },
            "map[string]bool" => match v.as_mapping() {
                Some(m) if m.values().all(Value::is_bool) => {}
                _ => return wrong("map[string]bool"),
            },
            _ => {
                // A struct type: recurse when the table documents its fields.
                if let Some(seq) = v.as_sequence() {
                    let elem = format!("{path}[]");
                    if self.has_children(&elem) {
                        for item in seq {
                            match item.as_mapping() {
                                Some(m) => self.walk_map(&elem, m)?,
                                None => return wrong(kind),
                            }
                        }
                    }
                } else if let Some(m) = v.as_mapping() {
                    if self.has_children(path) {
                        self.walk_map(path, m)?;
                    }
                } else if self.has_children(path) || self.has_children(&format!("{path}[]")) {
                    return wrong(kind);
                }
            }
        }
        Ok(())
    }
}

fn yaml_type(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "string",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::Sequence(_) => "array",
        Value::Mapping(_) => "object",
        _ => "value",
    }
}

/// Reads and checks the `--config` file of `component` at Kubernetes minor `minor`.
pub fn load(component: Component, minor: u32, path: &str) -> Result<Decoded, ConfigError> {
    let (api_version, kind, table) = kind_of(component)
        .ok_or_else(|| ConfigError(format!("{} has no config kind", component.binary_name())))?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("failed to read file {path:?}: {e}")))?;
    let doc: Value = serde_yaml::from_str(&text)
        .map_err(|e| ConfigError(format!("failed to decode config file {path:?}: {e}")))?;
    let map = doc
        .as_mapping()
        .ok_or_else(|| ConfigError(format!("failed to decode config file {path:?}: not an object")))?;
    let got_api = map.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let got_kind = map.get("kind").and_then(Value::as_str).unwrap_or("");
    if got_kind != kind || got_api != api_version {
        return Err(ConfigError(format!(
            "failed to decode config file {path:?}: no kind {got_kind:?} is registered for version {got_api:?}, want {api_version} {kind}"
        )));
    }
    let fields = fields(table, minor);
    let mut walker = Walker { fields: &fields, unknown: Vec::new() };
    walker
        .walk_map("", map)
        .map_err(|e| ConfigError(format!("failed to decode config file {path:?}: {e}")))?;
    if !walker.unknown.is_empty() && component == Component::Scheduler {
        return Err(ConfigError(format!(
            "couldn't decode as KubeSchedulerConfiguration, got {}: strict decoding error: {}",
            path,
            walker.unknown.join(", ")
        )));
    }
    Ok(Decoded { doc, lenient: walker.unknown })
}

/// Looks up a nested value by dotted path.
pub fn lookup<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(doc, |v, k| v.get(k))
}

/// A nested string value.
pub fn string_at(doc: &Value, path: &str) -> Option<String> {
    lookup(doc, path).and_then(Value::as_str).map(String::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("10s"), Some(10.0));
        assert_eq!(parse_go_duration("2m0s"), Some(120.0));
        assert_eq!(parse_go_duration("1h30m"), Some(5400.0));
        assert_eq!(parse_go_duration("100ms"), Some(0.1));
        assert_eq!(parse_go_duration("0"), Some(0.0));
        assert_eq!(parse_go_duration("10"), None);
        assert_eq!(parse_go_duration("ten seconds"), None);
        assert_eq!(parse_go_duration(""), None);
    }

    #[test]
    fn version_column() {
        assert!(version_covers("all", 34));
        assert!(version_covers("untracked", 35));
        assert!(!version_covers("1.36+", 35));
        assert!(version_covers("1.36+", 36));
        assert!(version_covers("1.33-1.35", 35));
        assert!(!version_covers("1.33-1.35", 36));
    }
}
