//! serde_yaml's schema errors in the inventory's words: the path of the field, what is wrong with it in
//! YAML terms (a list, a mapping, a port number, not `u16` or `struct ClusterSpec`), and a fix line with a
//! "did you mean" wherever a spelling is close to a valid one. [`suggest`] is the one did-you-mean rule,
//! also used by validation for the values it checks (roles, endpoint modes, CNI plugins, ...).

use super::clip_quoted;

/// What the `releaseSource` conversion ([`super::schema::RawReleaseSource`]) puts before its own messages:
/// serde places them at the parent mapping, and [`normalize`] moves them to `releaseSource`.
pub(crate) const RELEASE_SOURCE: &str = "releaseSource: ";

/// Values of `releaseSource.type` (the only enum serde reads; the others are checked by validation).
const RELEASE_SOURCE_TYPES: [&str; 3] = ["official", "mirror", "bundle"];

/// serde_yaml's message without its position, and with the `releaseSource` conversion's messages at their
/// own path (`cluster.releaseSource: missing field `url``).
pub(crate) fn normalize(raw: &str) -> String {
    let mut msg = raw.to_owned();
    if let Some(cut) = msg.find(" at line ") {
        msg.truncate(cut);
    }
    if let Some(i) = msg.find(&format!(": {RELEASE_SOURCE}")) {
        msg = format!("{}.releaseSource: {}", &msg[..i], &msg[i + 2 + RELEASE_SOURCE.len()..]);
    } else if let Some(rest) = msg.strip_prefix(RELEASE_SOURCE) {
        msg = format!("releaseSource: {rest}");
    }
    msg
}

/// A schema error as the inventory's problem.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Explained {
    /// The path it concerns (the mapping, for a missing field; the field, for an unknown one).
    pub path: String,
    /// Place it at the key rather than the value (an unknown field).
    pub at_key: bool,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

/// Words other tools use for kubeforge's roles.
pub const ROLE_ALIASES: [(&str, &str); 6] = [
    ("master", "control-plane"),
    ("controller", "control-plane"),
    ("server", "control-plane"),
    ("cp", "control-plane"),
    ("node", "worker"),
    ("agent", "worker"),
];

/// Words other tools use for the CPU architectures (`uname -m`'s).
pub const ARCH_ALIASES: [(&str, &str); 4] =
    [("x86_64", "amd64"), ("x64", "amd64"), ("aarch64", "arm64"), ("armv8", "arm64")];

/// Short forms of the key algorithms.
pub const KEY_ALGORITHM_ALIASES: [(&str, &str); 5] = [
    ("ecdsa", "ecdsa-p256"),
    ("p256", "ecdsa-p256"),
    ("p384", "ecdsa-p384"),
    ("rsa", "rsa-2048"),
    ("rsa2048", "rsa-2048"),
];

/// Endpoint modes by other names.
pub const ENDPOINT_MODE_ALIASES: [(&str, &str); 4] =
    [("lb", "local-lb"), ("loadbalancer", "external"), ("keepalived", "vip"), ("none", "direct")];

/// The fields that are lists of strings: a single string written there is read as a list of it, so that the
/// rest of the inventory can be checked, and the fix is that list.
pub(crate) const STRING_LISTS: [&str; 3] = ["roles", "taints", "extraSANs"];

/// Lower case without `-`, `_`, `.` or spaces: `Control_Plane` and `control-plane` are one spelling.
fn squash(s: &str) -> String {
    s.chars().filter(|c| !matches!(c, '-' | '_' | ' ' | '.')).flat_map(char::to_lowercase).collect()
}

/// The valid value a user most likely meant by `value`: the same word spelt differently (`locallb`,
/// `Control_Plane`), a word other tools use for it (`aliases`: `master` → `control-plane`), or a close
/// misspelling (`offical`). `None` when nothing is close.
pub fn suggest<'a>(value: &str, candidates: &[&'a str], aliases: &[(&str, &'a str)]) -> Option<&'a str> {
    let v = squash(value);
    if v.is_empty() {
        return None;
    }
    if let Some(c) = candidates.iter().find(|c| squash(c) == v) {
        return Some(c);
    }
    if let Some((_, c)) = aliases.iter().find(|(a, _)| squash(a) == v) {
        return Some(c);
    }
    candidates
        .iter()
        .map(|c| (strsim::jaro_winkler(&squash(c), &v), *c))
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .filter(|(score, _)| *score > 0.8)
        .map(|(_, c)| c)
}

/// `did you mean `x`? ` when [`suggest`] finds one, else nothing: the start of a fix line.
pub fn did_you_mean(value: &str, candidates: &[&str], aliases: &[(&str, &str)]) -> String {
    suggest(value, candidates, aliases).map(|s| format!("did you mean `{s}`? ")).unwrap_or_default()
}

/// A fix line that starts with the did-you-mean for `value` when there is one: `did you mean `x`? Use one
/// of ...`, else `use one of ...` (`rest`).
pub fn fix_line(value: &str, candidates: &[&str], aliases: &[(&str, &str)], rest: &str) -> String {
    let guess = did_you_mean(value, candidates, aliases);
    if guess.is_empty() {
        return rest.to_owned();
    }
    let mut chars = rest.chars();
    let upper =
        chars.next().map(|c| c.to_uppercase().collect::<String>() + chars.as_str()).unwrap_or_default();
    format!("{guess}{upper}")
}

/// `a`, `b` and `c` as a list of code spans.
fn listed(values: &[String]) -> String {
    values.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
}

/// The backtick-quoted words of `s`.
fn quoted(s: &str) -> Vec<String> {
    s.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

/// The last key of a path: `roles` for `hosts[1].roles`, `port` for `ssh.port`.
fn last_key(path: &str) -> &str {
    let mut end = path;
    while end.ends_with(']') {
        match end.rfind('[') {
            Some(cut) => end = &end[..cut],
            None => break,
        }
    }
    end.rsplit('.').next().unwrap_or(end)
}

/// `in `path`` for a message, nothing at the top level.
fn within(path: &str) -> String {
    if path.is_empty() || path == "." {
        String::new()
    } else {
        format!(" in `{path}`")
    }
}

/// An example value for a required field, for the fix of "missing field".
fn example(field: &str, path: &str) -> Option<&'static str> {
    Some(match field {
        "name" if path == "cluster" => "name: demo",
        "cluster" => "cluster: {name: demo, kubernetesVersion: v1.35.7}",
        "hosts" => "hosts: [{name: cp1, address: 10.0.0.1, roles: [control-plane, etcd, worker]}]",
        "name" => "name: node1",
        "kubernetesVersion" => "kubernetesVersion: v1.35.7",
        "address" => "address: 10.0.0.1",
        "roles" => "roles: [worker]",
        "plugin" => "plugin: bridge",
        "type" => "type: official",
        "url" => "url: https://mirror.example.com/kubernetes",
        "path" => "path: bundle.tar.gz",
        _ => return None,
    })
}

/// What serde names a value (`string "worker"`, `sequence`, `integer `5``) in YAML words.
fn value_words(found: &str) -> String {
    let found = found.trim();
    if let Some(s) = found.strip_prefix("string ") {
        return format!("the string {s}");
    }
    match found {
        "sequence" => "a list".into(),
        "map" => "a mapping".into(),
        "unit value" => "empty".into(),
        _ => match found.split_once(' ') {
            Some(("integer" | "floating point", n)) => format!("the number {}", n.trim_matches('`')),
            Some(("boolean", b)) => format!("`{}`", b.trim_matches('`')),
            _ => found.to_owned(),
        },
    }
}

/// What serde expected, in YAML words, and how to write it: (what, fix).
fn expected_words(expected: &str, path: &str, found: &str) -> (String, String) {
    let key = last_key(path);
    let scalar = found.strip_prefix("string ").map(|s| s.trim_matches('"').to_owned());
    let expected = expected.trim();
    if expected == "a sequence" {
        let fix = match (&scalar, key) {
            (Some(v), k) if STRING_LISTS.contains(&k) => format!("write a list: `{k}: [{v}]`"),
            (_, "hosts") => "write one mapping per host, each on a line starting with `- `, e.g. \
                `- {name: node1, address: 10.0.0.1, roles: [control-plane, etcd, worker]}`"
                .into(),
            _ if !key.is_empty() => {
                format!("write a list: `{key}: [a, b]`, or one item per line starting with `- `")
            }
            _ => "write a list: `[a, b]`, or one item per line starting with `- `".into(),
        };
        return ("a list".into(), fix);
    }
    if expected == "u16" {
        if key.to_lowercase().ends_with("port") {
            return ("a port number".into(), "write a number from 1 to 65535, without quotes".into());
        }
        return ("a number from 0 to 65535".into(), "write a number without quotes".into());
    }
    if expected.starts_with("u") || expected.starts_with("i") && expected.len() <= 4 {
        return ("a whole number".into(), "write a number without quotes".into());
    }
    if expected == "a boolean" {
        return ("`true` or `false`".into(), format!("write `{key}: true` or `{key}: false`"));
    }
    if expected == "a string" {
        return ("a single value".into(), format!("write one value: `{key}: value`, not a list or mapping"));
    }
    if expected == "variant identifier" || expected.starts_with("a YAML tag") {
        let types = listed(&RELEASE_SOURCE_TYPES.map(String::from));
        return (format!("one of {types}"), format!("write one of them, e.g. `{key}: official`"));
    }
    if expected == "a map" || expected.starts_with("struct ") || expected.contains("tagged enum") {
        if path.is_empty() || path == "." {
            return (
                "a mapping".into(),
                "an inventory is a mapping with `cluster:`, `hosts:` and optionally `ssh:`; see inventories/ for examples".into(),
            );
        }
        if key == "releaseSource" {
            if let Some(t) = scalar.as_deref().and_then(|s| suggest(s, &RELEASE_SOURCE_TYPES, &[])) {
                return ("a mapping".into(), format!("write `releaseSource: {{type: {t}}}`"));
            }
        }
        return (
            "a mapping".into(),
            format!("write `{key}:` followed by indented `field: value` lines, or `{key}: {{field: value}}`"),
        );
    }
    (expected.to_owned(), String::new())
}

/// A schema error as a problem. `msg` is [`normalize`]d; quoted values in it are clipped here.
pub(crate) fn explain(msg: &str) -> Explained {
    let msg = clip_quoted(msg);
    let markers =
        ["unknown field `", "missing field `", "invalid type: ", "invalid value: ", "unknown variant `"];
    let Some((i, marker)) =
        markers.iter().filter_map(|m| msg.find(m).map(|i| (i, *m))).min_by_key(|(i, _)| *i)
    else {
        return Explained { path: String::new(), at_key: false, message: msg, hint: None };
    };
    let path = msg[..i].trim_end_matches([':', ' ']).trim_end_matches('.').to_owned();
    let rest = &msg[i + marker.len()..];
    match marker {
        "unknown field `" => {
            let field = rest.split('`').next().unwrap_or("").to_owned();
            let expected = rest.split_once("expected ").map(|(_, e)| quoted(e)).unwrap_or_default();
            let names: Vec<&str> = expected.iter().map(String::as_str).collect();
            let hint = match suggest(&field, &names, &[]) {
                Some(b) => format!("did you mean `{b}`? Valid fields here: {}", listed(&expected)),
                None if expected.is_empty() => "remove it: nothing can be set here".into(),
                None => format!("remove it, or use one of the valid fields here: {}", listed(&expected)),
            };
            let path_of = |f: &str| if path.is_empty() { f.to_owned() } else { format!("{path}.{f}") };
            // "(with `type: bundle`)", from the `releaseSource` conversion.
            let with = rest
                .split_once("` (with ")
                .and_then(|(_, w)| w.split_once(')'))
                .map(|(w, _)| format!(" (with {w})"))
                .unwrap_or_default();
            Explained {
                path: path_of(&field),
                at_key: true,
                message: format!("unknown field `{field}`{}{with}", within(&path)),
                hint: Some(hint),
            }
        }
        "missing field `" => {
            let field = rest.split('`').next().unwrap_or("").to_owned();
            let hint = match (example(&field, &path), path.is_empty()) {
                (Some(e), true) => format!("add it at the top level, e.g. `{e}`"),
                (Some(e), false) => format!("add `{e}` to `{path}`"),
                (None, true) => format!("add `{field}:` at the top level"),
                (None, false) => format!("add `{field}:` to `{path}`"),
            };
            let message = format!("missing field `{field}`{}", within(&path));
            Explained { path, at_key: false, message, hint: Some(hint) }
        }
        "unknown variant `" => {
            let value = rest.split('`').next().unwrap_or("").to_owned();
            let expected = rest.split_once("expected ").map(|(_, e)| quoted(e)).unwrap_or_default();
            let names: Vec<&str> = expected.iter().map(String::as_str).collect();
            let hint = format!("{}use one of {}", did_you_mean(&value, &names, &[]), listed(&expected));
            let message = if path.is_empty() {
                format!("unknown value `{value}`")
            } else {
                format!("unknown value `{value}` for `{path}`")
            };
            Explained { path, at_key: false, message, hint: Some(capitalize_after_question(hint)) }
        }
        "invalid type: " => {
            let (found, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
            let (what, fix) = expected_words(expected, &path, found);
            let subject = if path.is_empty() { "the inventory".to_owned() } else { format!("`{path}`") };
            let message = format!("{subject} must be {what}, not {}", value_words(found));
            Explained { path, at_key: false, message, hint: (!fix.is_empty()).then_some(fix) }
        }
        _ => {
            // "invalid value: integer `70000`, expected u16"
            let (found, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
            let (what, fix) = expected_words(expected, &path, found);
            let subject = if path.is_empty() { "the value".to_owned() } else { format!("`{path}`") };
            let message = format!("{subject} must be {what}, not {}", value_words(found));
            Explained { path, at_key: false, message, hint: (!fix.is_empty()).then_some(fix) }
        }
    }
}

/// `did you mean `x`? use one of` reads better as `did you mean `x`? Use one of`.
fn capitalize_after_question(s: String) -> String {
    s.replacen("? use", "? Use", 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_cover_spellings_other_tools_words_and_typos() {
        let roles = ["control-plane", "etcd", "worker"];
        let aliases = [("master", "control-plane"), ("node", "worker")];
        assert_eq!(suggest("master", &roles, &aliases), Some("control-plane"));
        assert_eq!(suggest("Control_Plane", &roles, &aliases), Some("control-plane"));
        assert_eq!(suggest("controlplane", &roles, &aliases), Some("control-plane"));
        assert_eq!(suggest("wrker", &roles, &aliases), Some("worker"));
        assert_eq!(suggest("gpu", &roles, &aliases), None);
        assert_eq!(suggest("locallb", &["local-lb", "vip", "external", "direct"], &[]), Some("local-lb"));
        assert_eq!(suggest("offical", &RELEASE_SOURCE_TYPES, &[]), Some("official"));
    }

    #[test]
    fn the_last_key_of_a_path_skips_list_indexes() {
        assert_eq!(last_key("hosts[1].roles"), "roles");
        assert_eq!(last_key("hosts[1]"), "hosts");
        assert_eq!(last_key("hosts[0].labels.zone1"), "zone1");
        assert_eq!(last_key("x[0][2]"), "x");
        assert_eq!(last_key(""), "");
    }

    #[test]
    fn schema_errors_name_the_field_in_yaml_words_with_a_fix() {
        let e = |m: &str| {
            let x = explain(&normalize(m));
            (x.path, x.message, x.hint)
        };
        assert_eq!(
            e("hosts[1].roles: invalid type: string \"worker\", expected a sequence at line 9 column 42"),
            (
                "hosts[1].roles".into(),
                "`hosts[1].roles` must be a list, not the string \"worker\"".into(),
                Some("write a list: `roles: [worker]`".into())
            )
        );
        assert_eq!(
            e("cluster.releaseSource.type: unknown variant `offical`, expected one of `official`, `mirror`, `bundle`"),
            (
                "cluster.releaseSource.type".into(),
                "unknown value `offical` for `cluster.releaseSource.type`".into(),
                Some("did you mean `official`? Use one of `official`, `mirror`, `bundle`".into())
            )
        );
        assert_eq!(
            e("cluster: releaseSource: missing field `url` at line 2 column 3"),
            (
                "cluster.releaseSource".into(),
                "missing field `url` in `cluster.releaseSource`".into(),
                Some("add `url: https://mirror.example.com/kubernetes` to `cluster.releaseSource`".into())
            )
        );
        assert_eq!(
            e("invalid type: sequence, expected struct Inventory"),
            (
                String::new(),
                "the inventory must be a mapping, not a list".into(),
                Some("an inventory is a mapping with `cluster:`, `hosts:` and optionally `ssh:`; see inventories/ for examples".into())
            )
        );
        assert_eq!(
            e("ssh.port: invalid type: string \"22a\", expected u16").1,
            "`ssh.port` must be a port number, not the string \"22a\""
        );
        assert_eq!(
            e("ssh.port: invalid value: integer `70000`, expected u16").1,
            "`ssh.port` must be a port number, not the number 70000"
        );
    }
}
