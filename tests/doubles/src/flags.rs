//! Command-line parsing with the real binaries' flag tables (`reference/flags/<version>/<component>.txt`):
//! pflag rules (`--f=v`, `--f v`, bools only `--f` or `--f=true|false`, `_` normalised to `-`, `-h`, `-v N`).

use std::collections::BTreeMap;

use crate::Component;

/// One flag of a component's table.
#[derive(Debug, Clone)]
pub struct FlagSpec {
    /// Name without dashes.
    pub name: String,
    /// Type as the reference prints it (`bool`, `string`, `strings`, `int32`, `duration`, ...).
    pub kind: String,
    /// Default text (`-` = none).
    pub default: String,
    /// `no`, `deprecated`, `deprecated:use-config-file`.
    pub deprecated: String,
}

fn table_text(component: Component, minor: u32) -> Option<&'static str> {
    use Component::*;
    Some(match (minor, component) {
        (34, ApiServer) => include_str!("../reference/flags/v1.34/kube-apiserver.txt"),
        (34, ControllerManager) => include_str!("../reference/flags/v1.34/kube-controller-manager.txt"),
        (34, Scheduler) => include_str!("../reference/flags/v1.34/kube-scheduler.txt"),
        (34, Kubelet) => include_str!("../reference/flags/v1.34/kubelet.txt"),
        (34, Proxy) => include_str!("../reference/flags/v1.34/kube-proxy.txt"),
        (35, ApiServer) => include_str!("../reference/flags/v1.35/kube-apiserver.txt"),
        (35, ControllerManager) => include_str!("../reference/flags/v1.35/kube-controller-manager.txt"),
        (35, Scheduler) => include_str!("../reference/flags/v1.35/kube-scheduler.txt"),
        (35, Kubelet) => include_str!("../reference/flags/v1.35/kubelet.txt"),
        (35, Proxy) => include_str!("../reference/flags/v1.35/kube-proxy.txt"),
        (36, ApiServer) => include_str!("../reference/flags/v1.36/kube-apiserver.txt"),
        (36, ControllerManager) => include_str!("../reference/flags/v1.36/kube-controller-manager.txt"),
        (36, Scheduler) => include_str!("../reference/flags/v1.36/kube-scheduler.txt"),
        (36, Kubelet) => include_str!("../reference/flags/v1.36/kubelet.txt"),
        (36, Proxy) => include_str!("../reference/flags/v1.36/kube-proxy.txt"),
        (37, ApiServer) => include_str!("../reference/flags/v1.37/kube-apiserver.txt"),
        (37, ControllerManager) => include_str!("../reference/flags/v1.37/kube-controller-manager.txt"),
        (37, Scheduler) => include_str!("../reference/flags/v1.37/kube-scheduler.txt"),
        (37, Kubelet) => include_str!("../reference/flags/v1.37/kubelet.txt"),
        (37, Proxy) => include_str!("../reference/flags/v1.37/kube-proxy.txt"),
        _ => return None,
    })
}

/// The flag table of `component` at Kubernetes minor `minor` (34 to 37).
pub fn table(component: Component, minor: u32) -> Option<BTreeMap<String, FlagSpec>> {
    let text = table_text(component, minor)?;
    let mut map = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("--")) {
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() < 4 {
            continue;
        }
        // Registered names may use `_` (kube-proxy's klog flags); pflag normalises both sides.
        let name = cols[0].trim_start_matches('-').replace('_', "-");
        map.insert(
            name.clone(),
            FlagSpec { name, kind: cols[1].into(), default: cols[2].into(), deprecated: cols[3].into() },
        );
    }
    Some(map)
}

/// Parsed command line: every flag given (normalised name → values in order).
#[derive(Debug, Default, Clone)]
pub struct Flags {
    values: BTreeMap<String, Vec<String>>,
    /// Positional arguments (the real binaries reject them; kept for the error message).
    pub positional: Vec<String>,
}

impl Flags {
    /// Last value of a flag, if it was given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).and_then(|v| v.last()).map(String::as_str)
    }
    /// Whether the flag was given at all.
    pub fn has(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }
    /// A bool flag's value (`--f` = true), or `default`.
    pub fn bool_or(&self, name: &str, default: bool) -> bool {
        self.get(name).map(|v| v == "true").unwrap_or(default)
    }
    /// A `duration` flag (Go syntax: `2s`, `500ms`, `1m30s`), or `default`; a malformed value is an error
    /// naming the flag, as the real binaries' flag parsing fails.
    pub fn duration_or(
        &self,
        name: &str,
        default: std::time::Duration,
    ) -> Result<std::time::Duration, String> {
        let Some(v) = self.get(name) else { return Ok(default) };
        parse_go_duration(v).ok_or_else(|| {
            format!("invalid argument {v:?} for \"--{name}\" flag: time: invalid duration {v:?}")
        })
    }
    /// A list flag (`strings`): all occurrences, comma-split.
    pub fn list(&self, name: &str) -> Vec<String> {
        self.values
            .get(name)
            .map(|vs| {
                vs.iter().flat_map(|v| v.split(',')).filter(|s| !s.is_empty()).map(String::from).collect()
            })
            .unwrap_or_default()
    }
}

/// Why parsing stopped.
#[derive(Debug)]
pub enum ParseOutcome {
    /// Flags parsed; start the component.
    Run(Flags),
    /// `-h/--help`: print usage and exit 0.
    Help,
    /// `--version[=raw]`.
    Version(String),
    /// A pflag error, printed as `Error: <msg>` after the usage.
    Error(String),
}

fn is_bool(kind: &str) -> bool {
    kind == "bool"
}

/// Checks a value against the flag's declared type, with pflag's error texts.
fn check_value(spec: &FlagSpec, value: &str) -> Result<(), String> {
    let bad = |what: &str| Err(format!("invalid argument {value:?} for \"--{}\" flag: {what}", spec.name));
    match spec.kind.as_str() {
        "bool" => match value {
            "true" | "false" | "1" | "0" | "t" | "f" | "TRUE" | "FALSE" | "True" | "False" => Ok(()),
            _ => bad(&format!("strconv.ParseBool: parsing {value:?}: invalid syntax")),
        },
        "int" | "int32" | "int64" => match value.parse::<i64>() {
            Ok(_) => Ok(()),
            Err(_) => bad(&format!("strconv.ParseInt: parsing {value:?}: invalid syntax")),
        },
        "uint" | "uint32" | "uint64" => match value.parse::<u64>() {
            Ok(_) => Ok(()),
            Err(_) => bad(&format!("strconv.ParseUint: parsing {value:?}: invalid syntax")),
        },
        "float" | "float32" => match value.parse::<f64>() {
            Ok(_) => Ok(()),
            Err(_) => bad(&format!("strconv.ParseFloat: parsing {value:?}: invalid syntax")),
        },
        "duration" => match crate::config::parse_go_duration(value) {
            Some(_) => Ok(()),
            None => bad(&format!("time: invalid duration {value:?}")),
        },
        "ipport" => {
            if value.parse::<std::net::SocketAddr>().is_ok() || value.parse::<std::net::IpAddr>().is_ok() {
                Ok(())
            } else {
                bad("must be IP or IP:port")
            }
        }
        _ => Ok(()),
    }
}

/// Parses `args` (without argv[0]) against `table`.
pub fn parse(args: &[String], table: &BTreeMap<String, FlagSpec>) -> ParseOutcome {
    let mut flags = Flags::default();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            flags.positional.extend(args[i..].iter().cloned());
            break;
        }
        let (name, inline) = if let Some(rest) = arg.strip_prefix("--") {
            match rest.split_once('=') {
                Some((n, v)) => (n.replace('_', "-"), Some(v.to_string())),
                None => (rest.replace('_', "-"), None),
            }
        } else if let Some(rest) = arg.strip_prefix('-').filter(|r| !r.is_empty()) {
            // Shorthands: -h, -v N / -v=N / -vN.
            let (short, tail) = rest.split_at(1);
            let long = match short {
                "h" => "help",
                "v" => "v",
                _ => return ParseOutcome::Error(format!("unknown shorthand flag: '{short}' in {arg}")),
            };
            let inline = tail.strip_prefix('=').unwrap_or(tail);
            (long.to_string(), if inline.is_empty() { None } else { Some(inline.to_string()) })
        } else {
            flags.positional.push(arg.clone());
            continue;
        };
        if name == "help" {
            return ParseOutcome::Help;
        }
        let Some(spec) = table.get(&name) else {
            return ParseOutcome::Error(format!("unknown flag: --{name}"));
        };
        if spec.kind.starts_with("version") {
            return ParseOutcome::Version(inline.unwrap_or_else(|| "true".into()));
        }
        let value = if is_bool(&spec.kind) {
            inline.unwrap_or_else(|| "true".into())
        } else if let Some(v) = inline {
            v
        } else if i < args.len() {
            i += 1;
            args[i - 1].clone()
        } else {
            return ParseOutcome::Error(format!("flag needs an argument: --{name}"));
        };
        if let Err(e) = check_value(spec, &value) {
            return ParseOutcome::Error(e);
        }
        let value = if is_bool(&spec.kind) {
            matches!(value.as_str(), "true" | "1" | "t" | "TRUE" | "True").to_string()
        } else {
            value
        };
        flags.values.entry(name).or_default().push(value);
    }
    ParseOutcome::Run(flags)
}

/// Usage text printed before a parse error, like cobra does.
pub fn usage(component: Component, table: &BTreeMap<String, FlagSpec>) -> String {
    let mut out = format!("Usage:\n  {} [flags]\n\nFlags:\n", component.binary_name());
    for spec in table.values() {
        let kind = if spec.kind == "bool" { String::new() } else { format!(" {}", spec.kind) };
        out.push_str(&format!("      --{}{}\n", spec.name, kind));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn each_supported_minor_has_its_own_tables() {
        use Component::*;
        for minor in 34..=37 {
            for c in [ApiServer, ControllerManager, Scheduler, Kubelet, Proxy] {
                assert!(table(c, minor).is_some_and(|t| t.len() > 40), "{c:?} v1.{minor}");
            }
        }
        assert!(table(Scheduler, 38).is_none());
        assert!(!table(ApiServer, 35).unwrap().contains_key("tls-curve-preferences"));
        assert!(table(ApiServer, 36).unwrap().contains_key("tls-curve-preferences"));
        assert!(table(ControllerManager, 36).unwrap().contains_key("concurrent-service-syncs"));
        assert!(!table(ControllerManager, 37).unwrap().contains_key("concurrent-service-syncs"));
        let t = table(ControllerManager, 37).unwrap();
        let ParseOutcome::Error(e) = parse(&args(&["--concurrent-service-syncs=2"]), &t) else {
            panic!("a flag removed in 1.37 must be refused")
        };
        assert!(e.contains("unknown flag: --concurrent-service-syncs"), "{e}");
        let t = table(Scheduler, 36).unwrap();
        assert!(matches!(parse(&args(&["--tls-curve-preferences=23,29"]), &t), ParseOutcome::Run(_)));
    }

    #[test]
    fn pflag_rules() {
        let t = table(Component::ApiServer, 35).unwrap();
        let ParseOutcome::Run(f) = parse(
            &args(&[
                "--secure_port",
                "6443",
                "--anonymous-auth=false",
                "--allow-privileged",
                "--etcd-servers=a,b",
                "--etcd-servers",
                "c",
                "-v",
                "2",
            ]),
            &t,
        ) else {
            panic!("should parse")
        };
        assert_eq!(f.get("secure-port"), Some("6443"));
        assert!(!f.bool_or("anonymous-auth", true));
        assert!(f.bool_or("allow-privileged", false));
        assert_eq!(f.list("etcd-servers"), vec!["a", "b", "c"]);
        assert_eq!(f.get("v"), Some("2"));
        // A bool never swallows the next argument.
        let ParseOutcome::Run(f) = parse(&args(&["--allow-privileged", "x"]), &t) else { panic!() };
        assert_eq!(f.positional, vec!["x"]);
        assert!(
            matches!(parse(&args(&["--nope"]), &t), ParseOutcome::Error(e) if e == "unknown flag: --nope")
        );
        assert!(matches!(parse(&args(&["--version=raw"]), &t), ParseOutcome::Version(v) if v == "raw"));
        assert!(matches!(parse(&args(&["-h"]), &t), ParseOutcome::Help));
    }

    #[test]
    fn tables_differ_by_version() {
        let k34 = table(Component::Kubelet, 34).unwrap();
        let k35 = table(Component::Kubelet, 35).unwrap();
        assert!(k34.contains_key("pod-infra-container-image"));
        assert!(!k35.contains_key("pod-infra-container-image"));
        assert!(table(Component::Kubelet, 38).is_none());
        // kube-proxy's klog flags are registered with `_` and still match `-`.
        assert!(
            table(Component::Proxy, 35).unwrap().contains_key("log-dir")
                || table(Component::Proxy, 35).unwrap().contains_key("add-dir-header")
        );
    }
}

/// Go's `time.ParseDuration` for the units flags use (`h`, `m`, `s`, `ms`, `us`, `ns`), e.g. `1m30s`.
pub fn parse_go_duration(v: &str) -> Option<std::time::Duration> {
    if v == "0" {
        return Some(std::time::Duration::ZERO);
    }
    if v.is_empty() {
        return None;
    }
    let mut rest = v;
    let mut total = 0f64;
    while !rest.is_empty() {
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).filter(|&n| n > 0)?;
        let num: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let unit = match &rest[..u] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        total += num * unit;
        rest = &rest[u..];
    }
    Some(std::time::Duration::from_secs_f64(total))
}

#[cfg(test)]
mod duration_tests {
    use super::parse_go_duration as d;
    use std::time::Duration;

    #[test]
    fn go_durations() {
        assert_eq!(d("2s"), Some(Duration::from_secs(2)));
        assert_eq!(d("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(d("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(d("0"), Some(Duration::ZERO));
        assert_eq!(d("10"), None, "a unit is required");
        assert_eq!(d("5x"), None);
        assert_eq!(d(""), None);
    }
}
