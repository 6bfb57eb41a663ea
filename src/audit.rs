//! `kubeforge audit`: the checks of the CIS Kubernetes Benchmark, as kube-bench runs them, against a running
//! cluster, mapped to kubeforge's layout: systemd unit files where kubeadm has static-pod manifests, the
//! running processes' own command lines for flags (what is in effect, as kube-bench reads `ps`), and the
//! kubelet's and the scheduler's configuration files for the fields that replaced flags.
//!
//! One read-only round trip per host. Every check says PASS or FAIL; a check kubeforge deliberately
//! answers otherwise says DEVIATION with the reason (the README's security section lists them), and a check
//! the benchmark marks *Manual* says WARN instead of FAIL. The exit status is 1 when a scored (*Automated*)
//! check fails or a host cannot be read.

use crate::model::{ClusterModel, Component, HostModel};
use crate::transport::{Command, Transport};
use crate::Result;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

/// What one check looks at and when it passes.
#[derive(Debug, Clone, Copy)]
pub enum Test {
    /// Every file matching the glob has at most these permission bits. No file at all fails, as with
    /// kube-bench (the benchmark asks for the file to exist with these permissions; kubeforge renders every
    /// file these checks name on the hosts of their component, so an absent one is a broken host).
    Mode(&'static str, u32),
    /// Every file matching the glob is owned by `user:group`; no file at all fails, as [`Test::Mode`].
    Owner(&'static str, &'static str),
    /// [`Test::Mode`] for a check the benchmark words "if the file exists": no file passes.
    ModeIfPresent(&'static str, u32),
    /// [`Test::Owner`] for a check the benchmark words "if the file exists": no file passes.
    OwnerIfPresent(&'static str, &'static str),
    /// A flag of the component's running process.
    Flag(&'static str, Cond),
    /// A field of the component's configuration file (dotted path), or the flag that sets it.
    Config {
        /// The configuration file.
        file: &'static str,
        /// The field's dotted path (a number indexes a list).
        field: &'static str,
        /// The flag that overrides the field, if any.
        flag: Option<&'static str>,
        /// When it passes.
        cond: Cond,
    },
    /// Encryption at rest of Secrets (CIS 1.2.28): the running apiserver's `--encryption-provider-config`
    /// is the file the audit reads ([`ENCRYPTION_CONFIG`]), that file lists `secrets` (by name or by a
    /// wildcard, with the apiserver's precedence), and the first provider for them encrypts with a provider
    /// upstream rates strong (secretbox, kms). identity (plain text), aescbc (weak: CBC padding oracles) and
    /// aesgcm (safe only with automatic key rotation) do not pass.
    EncryptionAtRest,
}

/// A condition on a flag or field value (`None`: not set).
#[derive(Debug, Clone, Copy)]
pub enum Cond {
    /// Set to exactly this.
    Eq(&'static str),
    /// Set to this, or not set when this is the default.
    EqOrDefault(&'static str),
    /// Not set to this (unset passes).
    NotEq(&'static str),
    /// Set, to anything.
    Set,
    /// Not set.
    Unset,
    /// A comma-separated list that includes this.
    Has(&'static str),
    /// Not a comma-separated list that includes this (unset passes).
    HasNot(&'static str),
    /// A number at least this.
    AtLeast(i64),
    /// A comma-separated list, set, every element of which is in this list.
    AllIn(&'static [&'static str]),
    /// Contains this text, or not set.
    ContainsOrUnset(&'static str),
}

/// One benchmark check.
#[derive(Debug, Clone, Copy)]
pub struct Check {
    /// The benchmark's number.
    pub id: &'static str,
    /// Scored (*Automated*) or not (*Manual*).
    pub scored: bool,
    /// The component whose host it applies to.
    pub component: Component,
    /// The benchmark's title, shortened.
    pub title: &'static str,
    /// The test.
    pub test: Test,
    /// Why kubeforge deliberately does otherwise (reported as DEVIATION instead of FAIL).
    pub deviation: Option<&'static str>,
}

/// The apiserver's TLS cipher suites the benchmark accepts (CIS 1.2.29, as kube-bench tests it).
pub const APISERVER_CIPHERS: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];

/// The kubelet's TLS cipher suites the benchmark accepts (CIS 4.2.12, as kube-bench tests it). It holds the
/// same six names kubeforge sets (`render::TLS12_CIPHER_SUITES`) but is kept apart on purpose: the audit
/// checks against the benchmark's list, not against kubeforge's own choice.
pub const KUBELET_CIPHERS: &[&str] = &[
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
];

/// The kubelet's configuration file.
pub const KUBELET_CONFIG: &str = "/var/lib/kubelet/config.yaml";
/// The scheduler's configuration file.
pub const SCHEDULER_CONFIG: &str = "/etc/kubernetes/scheduler-config.yaml";
/// The kube-proxy configuration file.
pub const KUBE_PROXY_CONFIG: &str = "/var/lib/kube-proxy/config.yaml";
/// The apiserver's encryption-at-rest configuration.
pub const ENCRYPTION_CONFIG: &str = "/etc/kubernetes/encryption-config.yaml";
/// etcd's data directory where kubeforge puts it.
pub const ETCD_DATA_DIR: &str = "/var/lib/etcd";

/// The paths a check names that a running process chooses by a flag: the check reads the file (or
/// directory) the process was started with, and the path here only when the process does not say (it is
/// not running, or runs without the flag and so with this default). `(path, unit, flag)`.
pub const FROM_PROCESS: &[(&str, &str, &str)] = &[
    (KUBELET_CONFIG, "kubelet", "config"),
    (SCHEDULER_CONFIG, "kube-scheduler", "config"),
    (KUBE_PROXY_CONFIG, "kube-proxy", "config"),
    (ENCRYPTION_CONFIG, "kube-apiserver", "encryption-provider-config"),
    (ETCD_DATA_DIR, "etcd", "data-dir"),
];

/// A path as the facts script takes it: `PATH|UNIT|FLAG` when a process chooses it ([`FROM_PROCESS`]),
/// else the path itself.
fn path_spec(path: &str) -> String {
    match FROM_PROCESS.iter().find(|(p, ..)| *p == path) {
        Some((p, unit, flag)) => format!("{p}|{unit}|{flag}"),
        None => path.to_owned(),
    }
}

/// The result of one check on one host.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    /// The host.
    pub host: String,
    /// The check's number.
    pub id: String,
    /// PASS, FAIL, WARN (a *Manual* check that does not pass) or DEVIATION.
    pub result: String,
    /// The check's title.
    pub title: String,
    /// What was seen.
    pub seen: String,
    /// For a deviation, why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    /// For a finding kubeforge has a way out of, what to do.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// What one read of a host found.
#[derive(Debug, Default, Clone)]
pub struct Facts {
    /// Command line of each component's running process (`None`: not running).
    pub args: BTreeMap<String, Option<Vec<String>>>,
    /// Glob -> (path, mode, `user:group`) of each file it matched.
    pub files: BTreeMap<String, Vec<(String, u32, String)>>,
    /// Configuration file -> content.
    pub configs: BTreeMap<String, String>,
    /// Configuration file as a check names it -> the file its process was started with, where they differ.
    pub read_from: BTreeMap<String, String>,
}

/// The read-only facts script. Arguments: units, `--`, globs (each one or more space-separated patterns,
/// or a [`path_spec`]), `--`, configuration files (each a [`path_spec`]). Prints `args UNIT` + the
/// process's arguments separated by 0x1f (or `-`), `file GLOB-INDEX MODE OWNER PATH` per matching file, and
/// `config PATH READ-FROM BASE64` (PATH as the check names it, READ-FROM the file the process uses).
const FACTS: &str = r#"units=""
while [ $# -gt 0 ] && [ "$1" != -- ]; do units="$units $1.service"; shift; done; shift
pids=""
if [ -n "$units" ]; then
  pids=$(systemctl show -p Id -p MainPID $units 2>/dev/null |
  awk 'BEGIN { RS = ""; FS = "\n" } { id = ""; pid = ""
    for (i = 1; i <= NF; i++) { if ($i ~ /^Id=/) id = substr($i, 4); if ($i ~ /^MainPID=/) pid = substr($i, 9) }
    sub(/\.service$/, "", id); print id, pid }')
  printf '%s\n' "$pids" | while read -r u pid; do
    [ -n "$u" ] || continue
    if [ -n "$pid" ] && [ "$pid" != 0 ] && [ -r "/proc/$pid/cmdline" ]; then
      printf 'args %s ' "$u"; tr '\000' '\037' < "/proc/$pid/cmdline"; echo
    else
      echo "args $u -"
    fi
  done
fi
# resolve SPEC: `PATH|UNIT|FLAG` is the value of --FLAG on UNIT's running process (the last one, as with
# pflag; UNIT is among the units read above), or PATH when the process does not name one; a plain PATH is
# itself.
resolve() {
  case $1 in
    *"|"*) ;;
    *) echo "$1"; return ;;
  esac
  p=${1%%|*}; rest=${1#*|}; u=${rest%%|*}; fl=${rest#*|}
  pid=$(printf '%s\n' "$pids" | awk -v u="$u" '$1 == u { print $2; exit }')
  v=""
  if [ -n "$pid" ] && [ "$pid" != 0 ] && [ -r "/proc/$pid/cmdline" ]; then
    v=$(tr '\000' '\n' < "/proc/$pid/cmdline" | awk -v f="--$fl" 'take { v = $0; take = 0; next }
      $0 == f { take = 1; next } index($0, f "=") == 1 { v = substr($0, length(f) + 2) } END { print v }')
  fi
  echo "${v:-$p}"
}
i=0
while [ $# -gt 0 ] && [ "$1" != -- ]; do
  for f in $(resolve "$1"); do [ -e "$f" ] && printf 'file %s %s\n' "$i" "$(stat -c '%a %U:%G %n' -- "$f")"; done
  i=$((i+1)); shift
done; shift
for spec in "$@"; do
  f=$(resolve "$spec")
  [ -r "$f" ] && printf 'config %s %s %s\n' "${spec%%|*}" "$f" "$(base64 -w0 < "$f")"
done
true"#;

impl Facts {
    /// Parses the facts script's output; `globs` are the ones it was given, in order.
    pub fn parse(out: &str, globs: &[&str]) -> Facts {
        use base64::Engine;
        let mut f = Facts::default();
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("args ") {
                let (unit, argv) = rest.split_once(' ').unwrap_or((rest, "-"));
                let argv = (argv != "-").then(|| {
                    argv.trim_end_matches('\u{1f}').split('\u{1f}').map(str::to_owned).collect::<Vec<_>>()
                });
                f.args.insert(unit.to_owned(), argv);
            } else if let Some(rest) = line.strip_prefix("file ") {
                let mut it = rest.splitn(4, ' ');
                let (Some(i), Some(mode), Some(owner), Some(path)) =
                    (it.next(), it.next(), it.next(), it.next())
                else {
                    continue;
                };
                let (Some(glob), Ok(mode)) =
                    (i.parse::<usize>().ok().and_then(|i| globs.get(i)), u32::from_str_radix(mode, 8))
                else {
                    continue;
                };
                f.files.entry((*glob).to_owned()).or_default().push((
                    path.to_owned(),
                    mode,
                    owner.to_owned(),
                ));
            } else if let Some(rest) = line.strip_prefix("config ") {
                let mut it = rest.splitn(3, ' ');
                let (Some(path), Some(from), b64) = (it.next(), it.next(), it.next().unwrap_or("")) else {
                    continue;
                };
                if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) {
                    f.configs.insert(path.to_owned(), String::from_utf8_lossy(&bytes).into_owned());
                    if from != path {
                        f.read_from.insert(path.to_owned(), from.to_owned());
                    }
                }
            }
        }
        f
    }

    /// The value of `--flag` on `unit`'s command line: `Some("true")` for a bare boolean flag, `None` when
    /// absent. The last occurrence wins, as with pflag.
    pub fn flag(&self, unit: &str, flag: &str) -> Option<String> {
        let argv = self.args.get(unit)?.as_ref()?;
        let mut out = None;
        let mut it = argv.iter().skip(1).peekable();
        while let Some(a) = it.next() {
            let Some(rest) = a.strip_prefix("--") else { continue };
            match rest.split_once('=') {
                Some((k, v)) if k == flag => out = Some(v.to_owned()),
                None if rest == flag => {
                    out = Some(match it.peek() {
                        Some(next) if !next.starts_with('-') => it.next().cloned().unwrap_or_default(),
                        _ => "true".to_owned(),
                    })
                }
                _ => {}
            }
        }
        out
    }

    /// A field of a YAML configuration file by dotted path, as text (`None`: file or field absent).
    pub fn field(&self, file: &str, path: &str) -> Option<String> {
        let doc: serde_yaml::Value = serde_yaml::from_str(self.configs.get(file)?).ok()?;
        let mut v = &doc;
        for k in path.split('.') {
            v = match k.parse::<usize>() {
                Ok(i) if v.is_sequence() => v.get(i)?,
                _ => v.get(k)?,
            };
        }
        Some(match v {
            serde_yaml::Value::String(s) => s.clone(),
            serde_yaml::Value::Bool(b) => b.to_string(),
            serde_yaml::Value::Number(n) => n.to_string(),
            serde_yaml::Value::Sequence(s) => s
                .iter()
                .map(|x| serde_yaml::to_string(x).unwrap_or_default().trim().to_owned())
                .collect::<Vec<_>>()
                .join(","),
            serde_yaml::Value::Null => return None,
            // A mapping's first key only: never echo nested values (they may be secrets).
            serde_yaml::Value::Mapping(m) => match m.keys().next() {
                Some(serde_yaml::Value::String(k)) => format!("{k}:"),
                _ => "{}".to_owned(),
            },
            serde_yaml::Value::Tagged(_) => "(tagged value)".to_owned(),
        })
    }
}

impl Cond {
    fn holds(self, v: Option<&str>) -> bool {
        let list = |v: &str| v.split(',').map(str::trim).map(str::to_owned).collect::<Vec<_>>();
        match self {
            Cond::Eq(x) => v == Some(x),
            Cond::EqOrDefault(x) => v.is_none_or(|v| v == x),
            Cond::NotEq(x) => v != Some(x),
            Cond::Set => v.is_some_and(|v| !v.is_empty()),
            Cond::Unset => v.is_none(),
            Cond::Has(x) => v.is_some_and(|v| list(v).iter().any(|i| i == x)),
            Cond::HasNot(x) => v.is_none_or(|v| !list(v).iter().any(|i| i == x)),
            Cond::AtLeast(n) => v.and_then(|v| v.parse::<i64>().ok()).is_some_and(|v| v >= n),
            Cond::AllIn(allowed) => {
                v.is_some_and(|v| !v.is_empty() && list(v).iter().all(|c| allowed.contains(&c.as_str())))
            }
            Cond::ContainsOrUnset(x) => v.is_none_or(|v| v.contains(x)),
        }
    }
}

/// Evaluates `check` against `facts`: whether it passes, and what was seen.
pub fn evaluate(check: &Check, facts: &Facts) -> (bool, String) {
    let unit = check.component.unit();
    match check.test {
        Test::Mode(glob, max) | Test::ModeIfPresent(glob, max) => {
            let files = facts.files.get(glob).map(Vec::as_slice).unwrap_or_default();
            if files.is_empty() {
                return (matches!(check.test, Test::ModeIfPresent(..)), "absent".into());
            }
            let bad: Vec<String> = files
                .iter()
                .filter(|(_, m, _)| m & !max != 0)
                .map(|(p, m, _)| format!("{p} {m:o}"))
                .collect();
            if bad.is_empty() {
                let modes: std::collections::BTreeSet<String> =
                    files.iter().map(|(_, m, _)| format!("{m:o}")).collect();
                (true, modes.into_iter().collect::<Vec<_>>().join(","))
            } else {
                (false, bad.join(", "))
            }
        }
        Test::Owner(glob, owner) | Test::OwnerIfPresent(glob, owner) => {
            let files = facts.files.get(glob).map(Vec::as_slice).unwrap_or_default();
            if files.is_empty() {
                return (matches!(check.test, Test::OwnerIfPresent(..)), "absent".into());
            }
            let bad: Vec<String> =
                files.iter().filter(|(_, _, o)| o != owner).map(|(p, _, o)| format!("{p} {o}")).collect();
            if bad.is_empty() {
                (true, owner.to_owned())
            } else {
                (false, bad.join(", "))
            }
        }
        Test::Flag(flag, cond) => {
            if facts.args.get(unit).is_none_or(Option::is_none) {
                return (false, format!("{unit} is not running"));
            }
            let v = facts.flag(unit, flag);
            let seen = match &v {
                Some(v) => format!("--{flag}={v}"),
                None => format!("--{flag} not set"),
            };
            (cond.holds(v.as_deref()), seen)
        }
        Test::Config { file, field, flag, cond } => {
            if facts.args.get(unit).is_none_or(Option::is_none) {
                return (false, format!("{unit} is not running"));
            }
            // A flag overrides the file, as in the components themselves.
            if let Some(v) = flag.and_then(|f| facts.flag(unit, f)) {
                return (cond.holds(Some(&v)), format!("--{}={v}", flag.unwrap_or_default()));
            }
            if !facts.configs.contains_key(file) {
                return (false, format!("{file} unreadable"));
            }
            let v = facts.field(file, field);
            let seen = match &v {
                Some(v) => format!("{field}: {v}"),
                None => format!("{field} not set"),
            };
            (cond.holds(v.as_deref()), seen)
        }
        Test::EncryptionAtRest => {
            let (ok, seen, _) = encryption_at_rest(facts);
            (ok, seen)
        }
    }
}

/// What to do about aescbc, the provider of clusters made before kubeforge defaulted to secretbox.
const AESCBC_FIX: &str = "this cluster's key was made for aescbc, which kubeforge keeps until a deliberate \
    rotation (a silent switch would need every Secret rewritten): `kubeforge rotate encryption-key -i \
    INVENTORY` moves it to secretbox, with every Secret rewritten and proven from etcd; aescbc still \
    encrypts, nothing is stored in the clear";

/// CIS 1.2.28 on the apiserver's EncryptionConfiguration: whether it passes, what was seen (provider names
/// only, never a key), and the fix kubeforge has for it.
fn encryption_at_rest(facts: &Facts) -> (bool, String, Option<&'static str>) {
    let unit = Component::KubeApiserver.unit();
    if facts.args.get(unit).is_none_or(Option::is_none) {
        return (false, format!("{unit} is not running"), None);
    }
    let named = match facts.flag(unit, "encryption-provider-config") {
        None => {
            return (
                false,
                "--encryption-provider-config not set: Secrets are stored in the clear".into(),
                None,
            )
        }
        Some(f) => f,
    };
    // The facts script reads the file the running apiserver names ([`FROM_PROCESS`]); facts read from
    // anywhere else do not count.
    let read = facts.read_from.get(ENCRYPTION_CONFIG).map(String::as_str).unwrap_or(ENCRYPTION_CONFIG);
    let doc = (read == named)
        .then(|| facts.configs.get(ENCRYPTION_CONFIG))
        .flatten()
        .and_then(|t| serde_yaml::from_str::<serde_yaml::Value>(t).ok());
    let Some(doc) = doc else {
        return (false, format!("{named} unreadable"), None);
    };
    let entries = doc.get("resources").and_then(serde_yaml::Value::as_sequence).cloned().unwrap_or_default();
    let lists = |entry: &serde_yaml::Value, name: &str| {
        entry
            .get("resources")
            .and_then(serde_yaml::Value::as_sequence)
            .is_some_and(|names| names.iter().any(|n| n.as_str() == Some(name)))
    };
    // The apiserver's precedence: the exact name, then every core resource (`*.`), then everything (`*.*`).
    let Some((i, entry)) = ["secrets", "*.", "*.*"]
        .iter()
        .find_map(|name| entries.iter().enumerate().find(|(_, e)| lists(e, name)))
    else {
        return (false, "secrets are not among resources[].resources: stored in the clear".into(), None);
    };
    let first = entry
        .get("providers")
        .and_then(serde_yaml::Value::as_sequence)
        .and_then(|p| p.first())
        .and_then(serde_yaml::Value::as_mapping)
        .and_then(|m| m.keys().next())
        .and_then(serde_yaml::Value::as_str)
        .unwrap_or("(none)");
    let seen = |why: &str| format!("resources.{i} (secrets): first provider {first}{why}");
    match first {
        "secretbox" | "kms" => (true, seen(""), None),
        "aescbc" => (false, seen(" (upstream rates it weak: CBC padding oracles)"), Some(AESCBC_FIX)),
        "aesgcm" => (false, seen(" (safe only with a key rotated every 200,000 writes)"), None),
        "identity" => (false, seen(": Secrets are written in the clear"), None),
        _ => (false, seen(""), None),
    }
}

/// The checks that apply to `h` (by the components it runs).
pub fn checks_for(h: &HostModel) -> Vec<&'static Check> {
    CHECKS.iter().filter(|c| h.components.contains(&c.component)).collect()
}

/// Every check's findings on one host.
pub fn findings(host: &str, checks: &[&Check], facts: &Facts) -> Vec<Finding> {
    checks
        .iter()
        .map(|c| {
            let (ok, seen) = evaluate(c, facts);
            let fix = match c.test {
                Test::EncryptionAtRest if !ok => encryption_at_rest(facts).2.map(str::to_owned),
                _ => None,
            };
            let (result, why) = match (ok, c.deviation) {
                (true, _) => ("PASS", None),
                (false, Some(why)) => ("DEVIATION", Some(why.to_owned())),
                (false, None) if c.scored => ("FAIL", None),
                (false, None) => ("WARN", None),
            };
            Finding {
                host: host.to_owned(),
                id: c.id.to_owned(),
                result: result.to_owned(),
                title: c.title.to_owned(),
                seen,
                why,
                fix,
            }
        })
        .collect()
}

/// What the facts script is given for `checks` (units, globs and configuration files), and the globs.
fn facts_command(checks: &[&Check]) -> (Command, Vec<&'static str>) {
    let mut units: Vec<&str> = Vec::new();
    let mut globs: Vec<&str> = Vec::new();
    let mut configs: Vec<&str> = Vec::new();
    for c in checks {
        match c.test {
            Test::Mode(g, _) | Test::Owner(g, _) | Test::ModeIfPresent(g, _) | Test::OwnerIfPresent(g, _) => {
                globs.push(g);
                // A path its process names: that process's command line is read too.
                if let Some((_, unit, _)) = FROM_PROCESS.iter().find(|(p, ..)| *p == g) {
                    units.push(unit);
                }
            }
            Test::Flag(..) => units.push(c.component.unit()),
            Test::Config { file, .. } => {
                units.push(c.component.unit());
                configs.push(file);
            }
            Test::EncryptionAtRest => {
                units.push(c.component.unit());
                configs.push(ENCRYPTION_CONFIG);
            }
        }
    }
    for v in [&mut units, &mut globs, &mut configs] {
        v.sort_unstable();
        v.dedup();
    }
    let cmd = Command::shell(FACTS)
        .args(units)
        .arg("--")
        .args(globs.iter().map(|g| path_spec(g)))
        .arg("--")
        .args(configs.iter().map(|c| path_spec(c)));
    (cmd.with_sudo(true), globs)
}

/// `kubeforge audit`.
pub fn run(
    inventory: &Path,
    options: crate::apply::ApplyOptions,
    format: crate::output::Format,
) -> Result<i32> {
    let session = crate::session::Session::open(inventory, options)?;
    let model = session.model();
    let (all, unreachable) = session.block_on(audit(&model, &session.transports, &session.executor));
    eprint!("{}", crate::apply::host_stats(&session.transports));
    let count = |r: &str| all.iter().filter(|f| f.result == r).count();
    let (fail, dev, warn, pass) = (count("FAIL"), count("DEVIATION"), count("WARN"), count("PASS"));
    if format.is_document() {
        let v = serde_json::json!({
            "cluster": model.name,
            "passed": fail == 0 && unreachable.is_empty(),
            "counts": {"pass": pass, "fail": fail, "warn": warn, "deviation": dev},
            "findings": all,
            "unreachable": unreachable,
        });
        crate::output::print(format, "Audit", &v)?;
    } else {
        print!("{}", table(&all));
        for (h, e) in &unreachable {
            println!("{h}: not audited: {e}");
        }
        let deviations: BTreeMap<&str, &str> =
            all.iter().filter_map(|f| f.why.as_deref().map(|w| (f.id.as_str(), w))).collect();
        if !deviations.is_empty() {
            println!("\ndeliberate deviations:");
            for (id, why) in deviations {
                println!("  {id}: {why}");
            }
        }
        let fixes: BTreeMap<&str, &str> =
            all.iter().filter_map(|f| f.fix.as_deref().map(|w| (f.id.as_str(), w))).collect();
        if !fixes.is_empty() {
            println!("\nwhat to do:");
            for (id, fix) in fixes {
                println!("  {id}: {fix}");
            }
        }
        println!(
            "\naudit: {} check(s) on {} host(s): {pass} pass, {fail} fail, {warn} warn (manual checks), {dev} deviation(s)",
            all.len(),
            model.hosts.len() - unreachable.len(),
        );
    }
    Ok(if fail > 0 || !unreachable.is_empty() { 1 } else { 0 })
}

/// Reads every host (one round trip each, in parallel) and evaluates its checks.
pub async fn audit(
    model: &ClusterModel,
    transports: &BTreeMap<String, Arc<dyn Transport>>,
    executor: &crate::exec::Executor,
) -> (Vec<Finding>, BTreeMap<String, String>) {
    let reads = executor.each(&model.hosts, |h| async move {
        let checks = checks_for(h);
        let t = transports.get(&h.name).expect("a transport per host");
        let (cmd, globs) = facts_command(&checks);
        let out = t.exec(&cmd).await;
        (h, checks, globs, out)
    });
    let mut all = Vec::new();
    let mut unreachable = BTreeMap::new();
    for (h, checks, globs, out) in reads.await {
        match out {
            Ok(o) if o.success() => {
                all.extend(findings(&h.name, &checks, &Facts::parse(&o.stdout_str(), &globs)))
            }
            Ok(o) => {
                unreachable.insert(h.name.clone(), o.last_stderr_lines(3).join(" | "));
            }
            Err(e) => {
                unreachable.insert(h.name.clone(), e.to_string());
            }
        }
    }
    (all, unreachable)
}

/// The findings as a table, failures first.
pub fn table(findings: &[Finding]) -> String {
    let rank = |r: &str| match r {
        "FAIL" => 0,
        "WARN" => 1,
        "DEVIATION" => 2,
        _ => 3,
    };
    let mut rows: Vec<&Finding> = findings.iter().collect();
    rows.sort_by(|a, b| {
        (rank(&a.result), &a.host, id_key(&a.id)).cmp(&(rank(&b.result), &b.host, id_key(&b.id)))
    });
    let mut out = format!("{:<8} {:<8} {:<10} {:<64} SEEN\n", "HOST", "ID", "RESULT", "CHECK");
    for f in rows {
        let mut seen = f.seen.clone();
        if seen.chars().count() > 70 {
            seen = seen.chars().take(67).collect::<String>() + "...";
        }
        out += &format!("{:<8} {:<8} {:<10} {:<64} {seen}\n", f.host, f.id, f.result, f.title);
    }
    out
}

/// `1.2.10` sorts after `1.2.9`.
fn id_key(id: &str) -> Vec<u32> {
    id.split('.').map(|p| p.parse().unwrap_or(0)).collect()
}

use Component::{
    Etcd as E, KubeApiserver as A, KubeControllerManager as CM, KubeProxy as P, KubeScheduler as S,
    Kubelet as K,
};

const fn c(id: &'static str, scored: bool, component: Component, title: &'static str, test: Test) -> Check {
    Check { id, scored, component, title, test, deviation: None }
}

const fn d(
    id: &'static str,
    scored: bool,
    component: Component,
    title: &'static str,
    test: Test,
    why: &'static str,
) -> Check {
    Check { id, scored, component, title, test, deviation: Some(why) }
}

/// The unit files kubeforge writes, in the place of kubeadm's static-pod manifests.
const UNIT_APISERVER: &str = "/etc/systemd/system/kube-apiserver.service";
const UNIT_CM: &str = "/etc/systemd/system/kube-controller-manager.service";
const UNIT_SCHEDULER: &str = "/etc/systemd/system/kube-scheduler.service";
const UNIT_ETCD: &str = "/etc/systemd/system/etcd.service";
const UNIT_KUBELET: &str = "/etc/systemd/system/kubelet.service";

/// The checks (CIS Kubernetes Benchmark v1.12 numbering, as kube-bench's `cis-1.12` profile has them).
pub static CHECKS: &[Check] = CHECKS_TABLE;

/// The checks, in the numbering of the CIS Kubernetes Benchmark as kube-bench's configuration for it has
/// them. Files: unit files stand for the static-pod manifests.
const CHECKS_TABLE: &[Check] = &[
    c("1.1.1", true, A, "API server unit file permissions 600 or more restrictive", Test::Mode(UNIT_APISERVER, 0o600)),
    c("1.1.2", true, A, "API server unit file owned by root:root", Test::Owner(UNIT_APISERVER, "root:root")),
    c("1.1.3", true, CM, "controller manager unit file permissions 600 or more restrictive", Test::Mode(UNIT_CM, 0o600)),
    c("1.1.4", true, CM, "controller manager unit file owned by root:root", Test::Owner(UNIT_CM, "root:root")),
    c("1.1.5", true, S, "scheduler unit file permissions 600 or more restrictive", Test::Mode(UNIT_SCHEDULER, 0o600)),
    c("1.1.6", true, S, "scheduler unit file owned by root:root", Test::Owner(UNIT_SCHEDULER, "root:root")),
    c("1.1.7", true, E, "etcd unit file permissions 600 or more restrictive", Test::Mode(UNIT_ETCD, 0o600)),
    c("1.1.8", true, E, "etcd unit file owned by root:root", Test::Owner(UNIT_ETCD, "root:root")),
    c("1.1.9", false, K, "CNI configuration permissions 600 or more restrictive", Test::Mode("/etc/cni/net.d/*", 0o600)),
    c("1.1.10", false, K, "CNI configuration owned by root:root", Test::Owner("/etc/cni/net.d/*", "root:root")),
    c("1.1.11", true, E, "etcd data directory permissions 700 or more restrictive", Test::Mode(ETCD_DATA_DIR, 0o700)),
    d(
        "1.1.12",
        true,
        E,
        "etcd data directory owned by etcd:etcd",
        Test::Owner(ETCD_DATA_DIR, "etcd:etcd"),
        "etcd runs as root, as kubeadm's stacked etcd does; the directory is root's, mode 0700",
    ),
    c("1.1.13", true, A, "admin.conf permissions 600", Test::Mode("/etc/kubernetes/admin.conf", 0o600)),
    c("1.1.14", true, A, "admin.conf owned by root:root", Test::Owner("/etc/kubernetes/admin.conf", "root:root")),
    c("1.1.15", true, S, "scheduler.conf permissions 600 or more restrictive", Test::Mode("/etc/kubernetes/scheduler.conf", 0o600)),
    c("1.1.16", true, S, "scheduler.conf owned by root:root", Test::Owner("/etc/kubernetes/scheduler.conf", "root:root")),
    c(
        "1.1.17",
        true,
        CM,
        "controller-manager.conf permissions 600 or more restrictive",
        Test::Mode("/etc/kubernetes/controller-manager.conf", 0o600),
    ),
    c(
        "1.1.18",
        true,
        CM,
        "controller-manager.conf owned by root:root",
        Test::Owner("/etc/kubernetes/controller-manager.conf", "root:root"),
    ),
    c("1.1.19", true, A, "PKI directory and files owned by root:root", Test::Owner("/etc/kubernetes/pki /etc/kubernetes/pki/* /etc/kubernetes/pki/*/*", "root:root")),
    c("1.1.20", false, A, "PKI certificate permissions 644 or more restrictive", Test::Mode("/etc/kubernetes/pki/*.crt /etc/kubernetes/pki/*/*.crt", 0o644)),
    c("1.1.21", false, A, "PKI key permissions 600", Test::Mode("/etc/kubernetes/pki/*.key /etc/kubernetes/pki/*/*.key", 0o600)),
    d(
        "1.2.1",
        false,
        A,
        "--anonymous-auth is false",
        Test::Flag("anonymous-auth", Cond::Eq("false")),
        "left at the default (true): balancers and the node-local balancer ask /readyz without credentials; \
         RBAC lets anonymous requests read only the health and version endpoints (system:public-info-viewer)",
    ),
    c("1.2.2", true, A, "--token-auth-file is not set", Test::Flag("token-auth-file", Cond::Unset)),
    c("1.2.3", false, A, "DenyServiceExternalIPs admission plugin is set", Test::Flag("enable-admission-plugins", Cond::Has("DenyServiceExternalIPs"))),
    c("1.2.4", true, A, "--kubelet-client-certificate is set", Test::Flag("kubelet-client-certificate", Cond::Set)),
    c("1.2.4", true, A, "--kubelet-client-key is set", Test::Flag("kubelet-client-key", Cond::Set)),
    c("1.2.5", true, A, "--kubelet-certificate-authority is set", Test::Flag("kubelet-certificate-authority", Cond::Set)),
    c("1.2.6", true, A, "--authorization-mode is not AlwaysAllow", Test::Flag("authorization-mode", Cond::HasNot("AlwaysAllow"))),
    c("1.2.6", true, A, "--authorization-mode is set", Test::Flag("authorization-mode", Cond::Set)),
    c("1.2.7", true, A, "--authorization-mode includes Node", Test::Flag("authorization-mode", Cond::Has("Node"))),
    c("1.2.8", true, A, "--authorization-mode includes RBAC", Test::Flag("authorization-mode", Cond::Has("RBAC"))),
    c("1.2.9", false, A, "EventRateLimit admission plugin is set", Test::Flag("enable-admission-plugins", Cond::Has("EventRateLimit"))),
    c("1.2.10", true, A, "AlwaysAdmit admission plugin is not set", Test::Flag("enable-admission-plugins", Cond::HasNot("AlwaysAdmit"))),
    c("1.2.11", false, A, "AlwaysPullImages admission plugin is set", Test::Flag("enable-admission-plugins", Cond::Has("AlwaysPullImages"))),
    c("1.2.12", true, A, "ServiceAccount admission plugin is not disabled", Test::Flag("disable-admission-plugins", Cond::HasNot("ServiceAccount"))),
    c("1.2.13", true, A, "NamespaceLifecycle admission plugin is not disabled", Test::Flag("disable-admission-plugins", Cond::HasNot("NamespaceLifecycle"))),
    c("1.2.14", true, A, "NodeRestriction admission plugin is set", Test::Flag("enable-admission-plugins", Cond::Has("NodeRestriction"))),
    c("1.2.15", true, A, "--profiling is false", Test::Flag("profiling", Cond::Eq("false"))),
    c("1.2.16", true, A, "--audit-log-path is set", Test::Flag("audit-log-path", Cond::Set)),
    c("1.2.17", true, A, "--audit-log-maxage is 30 or more", Test::Flag("audit-log-maxage", Cond::AtLeast(30))),
    c("1.2.18", true, A, "--audit-log-maxbackup is 10 or more", Test::Flag("audit-log-maxbackup", Cond::AtLeast(10))),
    c("1.2.19", true, A, "--audit-log-maxsize is 100 or more", Test::Flag("audit-log-maxsize", Cond::AtLeast(100))),
    c("1.2.21", true, A, "--service-account-lookup is true", Test::Flag("service-account-lookup", Cond::EqOrDefault("true"))),
    c("1.2.22", true, A, "--service-account-key-file is set", Test::Flag("service-account-key-file", Cond::Set)),
    c("1.2.23", true, A, "--etcd-certfile is set", Test::Flag("etcd-certfile", Cond::Set)),
    c("1.2.23", true, A, "--etcd-keyfile is set", Test::Flag("etcd-keyfile", Cond::Set)),
    c("1.2.24", true, A, "--tls-cert-file is set", Test::Flag("tls-cert-file", Cond::Set)),
    c("1.2.24", true, A, "--tls-private-key-file is set", Test::Flag("tls-private-key-file", Cond::Set)),
    c("1.2.25", true, A, "--client-ca-file is set", Test::Flag("client-ca-file", Cond::Set)),
    c("1.2.26", true, A, "--etcd-cafile is set", Test::Flag("etcd-cafile", Cond::Set)),
    c("1.2.27", false, A, "--encryption-provider-config is set", Test::Flag("encryption-provider-config", Cond::Set)),
    c("1.2.28", false, A, "Secrets are encrypted at rest with a strong provider", Test::EncryptionAtRest),
    c("1.2.29", false, A, "only strong TLS cipher suites", Test::Flag("tls-cipher-suites", Cond::AllIn(APISERVER_CIPHERS))),
    c(
        "1.2.30",
        true,
        A,
        "--service-account-extend-token-expiration is false",
        Test::Flag("service-account-extend-token-expiration", Cond::Eq("false")),
    ),
    c("1.3.1", false, CM, "--terminated-pod-gc-threshold is set", Test::Flag("terminated-pod-gc-threshold", Cond::Set)),
    c("1.3.2", true, CM, "--profiling is false", Test::Flag("profiling", Cond::Eq("false"))),
    c("1.3.3", true, CM, "--use-service-account-credentials is true", Test::Flag("use-service-account-credentials", Cond::Eq("true"))),
    c("1.3.4", true, CM, "--service-account-private-key-file is set", Test::Flag("service-account-private-key-file", Cond::Set)),
    c("1.3.5", true, CM, "--root-ca-file is set", Test::Flag("root-ca-file", Cond::Set)),
    c(
        "1.3.6",
        true,
        CM,
        "RotateKubeletServerCertificate is not turned off",
        Test::Flag("feature-gates", Cond::HasNot("RotateKubeletServerCertificate=false")),
    ),
    c("1.3.7", true, CM, "--bind-address is 127.0.0.1", Test::Flag("bind-address", Cond::EqOrDefault("127.0.0.1"))),
    c(
        "1.4.1",
        true,
        S,
        "profiling is off (enableProfiling / --profiling)",
        Test::Config { file: SCHEDULER_CONFIG, field: "enableProfiling", flag: Some("profiling"), cond: Cond::Eq("false") },
    ),
    c("1.4.2", true, S, "--bind-address is 127.0.0.1", Test::Flag("bind-address", Cond::EqOrDefault("127.0.0.1"))),
    c("2.1", true, E, "--cert-file is set", Test::Flag("cert-file", Cond::Set)),
    c("2.1", true, E, "--key-file is set", Test::Flag("key-file", Cond::Set)),
    c("2.2", true, E, "--client-cert-auth is true", Test::Flag("client-cert-auth", Cond::Eq("true"))),
    c("2.3", true, E, "--auto-tls is not true", Test::Flag("auto-tls", Cond::EqOrDefault("false"))),
    c("2.4", true, E, "--peer-cert-file is set", Test::Flag("peer-cert-file", Cond::Set)),
    c("2.4", true, E, "--peer-key-file is set", Test::Flag("peer-key-file", Cond::Set)),
    c("2.5", true, E, "--peer-client-cert-auth is true", Test::Flag("peer-client-cert-auth", Cond::Eq("true"))),
    c("2.6", true, E, "--peer-auto-tls is not true", Test::Flag("peer-auto-tls", Cond::EqOrDefault("false"))),
    c("2.7", false, E, "a trusted CA is set for etcd", Test::Flag("trusted-ca-file", Cond::Set)),
    c("4.1.1", true, K, "kubelet unit file permissions 600 or more restrictive", Test::Mode(UNIT_KUBELET, 0o600)),
    c("4.1.2", true, K, "kubelet unit file owned by root:root", Test::Owner(UNIT_KUBELET, "root:root")),
    c("4.1.3", false, P, "kube-proxy kubeconfig, if it exists, permissions 600 or more restrictive", Test::ModeIfPresent("/etc/kubernetes/kube-proxy.conf", 0o600)),
    c("4.1.4", false, P, "kube-proxy kubeconfig, if it exists, owned by root:root", Test::OwnerIfPresent("/etc/kubernetes/kube-proxy.conf", "root:root")),
    c("4.1.5", true, K, "kubelet.conf permissions 600 or more restrictive", Test::Mode("/etc/kubernetes/kubelet.conf", 0o600)),
    c("4.1.6", true, K, "kubelet.conf owned by root:root", Test::Owner("/etc/kubernetes/kubelet.conf", "root:root")),
    c("4.1.7", false, K, "client CA file permissions 644 or more restrictive", Test::Mode("/etc/kubernetes/pki/ca.crt", 0o644)),
    c("4.1.8", false, K, "client CA file owned by root:root", Test::Owner("/etc/kubernetes/pki/ca.crt", "root:root")),
    c("4.1.9", true, K, "kubelet config.yaml permissions 600 or more restrictive", Test::Mode(KUBELET_CONFIG, 0o600)),
    c("4.1.10", true, K, "kubelet config.yaml owned by root:root", Test::Owner(KUBELET_CONFIG, "root:root")),
    c(
        "4.2.1",
        true,
        K,
        "anonymous requests to the kubelet are off",
        Test::Config { file: KUBELET_CONFIG, field: "authentication.anonymous.enabled", flag: Some("anonymous-auth"), cond: Cond::Eq("false") },
    ),
    c(
        "4.2.2",
        true,
        K,
        "kubelet authorization is not AlwaysAllow",
        Test::Config { file: KUBELET_CONFIG, field: "authorization.mode", flag: Some("authorization-mode"), cond: Cond::HasNot("AlwaysAllow") },
    ),
    c(
        "4.2.3",
        true,
        K,
        "kubelet client CA file is set",
        Test::Config { file: KUBELET_CONFIG, field: "authentication.x509.clientCAFile", flag: Some("client-ca-file"), cond: Cond::Set },
    ),
    c(
        "4.2.4",
        false,
        K,
        "kubelet read-only port is 0",
        Test::Config { file: KUBELET_CONFIG, field: "readOnlyPort", flag: Some("read-only-port"), cond: Cond::EqOrDefault("0") },
    ),
    c(
        "4.2.5",
        false,
        K,
        "streaming connection idle timeout is not 0",
        Test::Config {
            file: KUBELET_CONFIG,
            field: "streamingConnectionIdleTimeout",
            flag: Some("streaming-connection-idle-timeout"),
            cond: Cond::NotEq("0"),
        },
    ),
    c(
        "4.2.6",
        true,
        K,
        "iptables utility chains are made",
        Test::Config { file: KUBELET_CONFIG, field: "makeIPTablesUtilChains", flag: Some("make-iptables-util-chains"), cond: Cond::EqOrDefault("true") },
    ),
    d(
        "4.2.7",
        false,
        K,
        "--hostname-override is not set",
        Test::Flag("hostname-override", Cond::Unset),
        "node names come from the inventory, which need not equal the machines' hostnames",
    ),
    c(
        "4.2.8",
        false,
        K,
        "event record QPS is set",
        Test::Config { file: KUBELET_CONFIG, field: "eventRecordQPS", flag: Some("event-qps"), cond: Cond::AtLeast(0) },
    ),
    c(
        "4.2.9",
        false,
        K,
        "kubelet serving certificate is set",
        Test::Config { file: KUBELET_CONFIG, field: "tlsCertFile", flag: Some("tls-cert-file"), cond: Cond::Set },
    ),
    d(
        "4.2.10",
        true,
        K,
        "kubelet certificate rotation is not off",
        Test::Config { file: KUBELET_CONFIG, field: "rotateCertificates", flag: Some("rotate-certificates"), cond: Cond::EqOrDefault("true") },
        "kubeforge renews the kubelet's certificates itself (apply re-issues any certificate with less than a \
         third of its validity left, at most 30 days before expiry; certs renew --apply at any time), so the \
         admin machine's store stays the one source of truth and check-expiration sees the real dates",
    ),
    c(
        "4.2.11",
        false,
        K,
        "RotateKubeletServerCertificate is not turned off",
        Test::Config {
            file: KUBELET_CONFIG,
            field: "featureGates.RotateKubeletServerCertificate",
            flag: None,
            cond: Cond::EqOrDefault("true"),
        },
    ),
    c(
        "4.2.12",
        false,
        K,
        "kubelet offers only strong TLS cipher suites",
        Test::Config { file: KUBELET_CONFIG, field: "tlsCipherSuites", flag: Some("tls-cipher-suites"), cond: Cond::AllIn(KUBELET_CIPHERS) },
    ),
    c(
        "4.2.13",
        false,
        K,
        "a pod PID limit is set",
        Test::Config { file: KUBELET_CONFIG, field: "podPidsLimit", flag: Some("pod-max-pids"), cond: Cond::Set },
    ),
    c(
        "4.2.14",
        false,
        K,
        "seccomp RuntimeDefault is the default profile",
        Test::Config { file: KUBELET_CONFIG, field: "seccompDefault", flag: Some("seccomp-default"), cond: Cond::Eq("true") },
    ),
    c(
        "4.3.1",
        true,
        P,
        "kube-proxy metrics bound to localhost",
        Test::Config { file: KUBE_PROXY_CONFIG, field: "metricsBindAddress", flag: Some("metrics-bind-address"), cond: Cond::ContainsOrUnset("127.0.0.1") },
    ),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::at_rest::{EncryptionKey, Provider};
    use crate::render;

    fn key(provider: Provider) -> EncryptionKey {
        EncryptionKey::first(provider, "c2VjcmV0LWtleS1ub3Qtc2hvd24tMDEyMzQ1Njc4OWFi")
    }

    fn model() -> ClusterModel {
        let text = "cluster: {name: t, kubernetesVersion: v1.35.7}\nhosts:\n  - {name: cp1, address: 10.0.0.1, roles: [control-plane, etcd, worker]}\n";
        let loaded = crate::inventory::parse(Path::new("inventory.yaml"), text).unwrap();
        ClusterModel::derive(&loaded)
    }

    fn argv(bin: &str, f: &render::Flags) -> Option<Vec<String>> {
        Some(
            std::iter::once(format!("/usr/local/bin/{bin}"))
                .chain(f.iter().map(|(k, v)| format!("--{k}={v}")))
                .collect(),
        )
    }

    /// What a host kubeforge installed looks like to the audit: the flags and configuration files kubeforge
    /// renders. The file modes here are stand-ins for the flag and config tests; the modes the phases
    /// really write are audited by `the_files_the_phases_write_pass_the_audits_file_checks` (apply's tests,
    /// on the simulated hosts).
    fn kubeforge_host(m: &ClusterModel) -> Facts {
        let h = &m.hosts[0];
        let mut f = Facts::default();
        f.args.insert("kube-apiserver".into(), argv("kube-apiserver", &render::apiserver_flags(m, h)));
        f.args.insert(
            "kube-controller-manager".into(),
            argv("kube-controller-manager", &render::controller_manager_flags(m)),
        );
        f.args.insert("kube-scheduler".into(), argv("kube-scheduler", &render::scheduler_flags(m)));
        f.args.insert("etcd".into(), argv("etcd", &render::etcd_flags(m, h, "new")));
        f.args.insert("kubelet".into(), argv("kubelet", &render::kubelet_flags(m, h)));
        f.args.insert("kube-proxy".into(), argv("kube-proxy", &render::kube_proxy_flags(m)));
        f.configs.insert(KUBELET_CONFIG.into(), render::kubelet_config(m));
        f.configs.insert(SCHEDULER_CONFIG.into(), render::scheduler_config());
        f.configs.insert(KUBE_PROXY_CONFIG.into(), render::kube_proxy_config(m, h));
        f.configs
            .insert(ENCRYPTION_CONFIG.into(), render::encryption_config(&key(Provider::Secretbox).into()));
        for c in CHECKS {
            if let Test::Mode(g, _)
            | Test::Owner(g, _)
            | Test::ModeIfPresent(g, _)
            | Test::OwnerIfPresent(g, _) = c.test
            {
                let mode = if g.contains(".crt") || g.ends_with("ca.crt") {
                    0o644
                } else if g == ETCD_DATA_DIR {
                    0o700
                } else {
                    0o600
                };
                f.files
                    .insert(g.into(), vec![(g.split(' ').next().unwrap().into(), mode, "root:root".into())]);
            }
        }
        f
    }

    #[test]
    fn the_flags_and_configuration_kubeforge_renders_pass_every_scored_check() {
        let m = model();
        let f = kubeforge_host(&m);
        let checks = checks_for(&m.hosts[0]);
        assert!(checks.len() > 80, "every section applies to a host with every role: {}", checks.len());
        let found = findings("cp1", &checks, &f);
        let failed: Vec<_> = found.iter().filter(|x| x.result == "FAIL").collect();
        assert!(failed.is_empty(), "{failed:#?}");
        let deviations: Vec<&str> =
            found.iter().filter(|x| x.result == "DEVIATION").map(|x| x.id.as_str()).collect();
        assert_eq!(deviations, ["1.1.12", "1.2.1", "4.2.7", "4.2.10"], "only the documented ones");
        let warned: Vec<&str> = found.iter().filter(|x| x.result == "WARN").map(|x| x.id.as_str()).collect();
        assert_eq!(
            warned,
            ["1.2.3", "1.2.9", "1.2.11", "4.2.13", "4.2.14"],
            "manual checks left to the admin"
        );
        // The encryption check names the provider and never echoes the key.
        let enc = found.iter().find(|x| x.id == "1.2.28").unwrap();
        assert_eq!(
            (enc.result.as_str(), enc.seen.as_str(), enc.fix.as_deref()),
            ("PASS", "resources.0 (secrets): first provider secretbox", None)
        );
        assert!(!table(&found).contains("c2VjcmV0"), "no secret in the report");
    }

    /// As kube-bench: a file a check names that is not there fails the check (the benchmark asks for it to
    /// exist with those permissions), except where the benchmark says "if it exists".
    #[test]
    fn an_absent_file_fails_its_checks_unless_the_benchmark_says_if_it_exists() {
        let m = model();
        let mut f = kubeforge_host(&m);
        f.files.remove(UNIT_APISERVER);
        f.files.remove("/etc/kubernetes/kube-proxy.conf");
        let found = findings("cp1", &checks_for(&m.hosts[0]), &f);
        let result =
            |id: &str| found.iter().find(|x| x.id == id).map(|x| (x.result.clone(), x.seen.clone())).unwrap();
        assert_eq!(result("1.1.1"), ("FAIL".into(), "absent".into()));
        assert_eq!(result("1.1.2"), ("FAIL".into(), "absent".into()));
        assert_eq!(result("4.1.3"), ("PASS".into(), "absent".into()));
        assert_eq!(result("4.1.4"), ("PASS".into(), "absent".into()));
    }

    #[test]
    fn encryption_at_rest_passes_only_when_secrets_are_written_with_a_strong_provider() {
        let m = model();
        let check: Vec<&Check> = CHECKS.iter().filter(|c| c.id == "1.2.28").collect();
        let with = |config: Option<String>, flag: Option<&str>| {
            let mut f = kubeforge_host(&m);
            match config {
                Some(c) => f.configs.insert(ENCRYPTION_CONFIG.into(), c),
                None => f.configs.remove(ENCRYPTION_CONFIG),
            };
            if let Some(flag) = flag {
                let api = f.args.get_mut("kube-apiserver").unwrap().as_mut().unwrap();
                api.retain(|a| !a.starts_with("--encryption-provider-config"));
                if !flag.is_empty() {
                    api.push(format!("--encryption-provider-config={flag}"));
                }
            }
            let found = findings("cp1", &check, &f).remove(0);
            (found.result, found.seen, found.fix)
        };
        let doc = |resources: &str, providers: &str| {
            Some(format!(
                "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n{resources}- resources: [secrets]\n  providers: [{providers}]\n"
            ))
        };
        // A cluster made before secretbox: aescbc, reported with the way out.
        let (result, seen, fix) = with(Some(render::encryption_config(&key(Provider::Aescbc).into())), None);
        assert_eq!(result, "WARN", "a manual check");
        assert!(
            seen.starts_with("resources.0 (secrets): first provider aescbc (upstream rates it weak"),
            "{seen}"
        );
        assert!(fix.as_deref().is_some_and(|f| f.contains("kubeforge rotate encryption-key")), "{fix:?}");
        // identity first writes Secrets in the clear, even when a key follows.
        let (result, seen, fix) =
            with(doc("", "{identity: {}}, {secretbox: {keys: [{name: a, secret: x}]}}"), None);
        assert_eq!((result.as_str(), fix), ("WARN", None));
        assert!(seen.ends_with("first provider identity: Secrets are written in the clear"), "{seen}");
        assert!(with(doc("", "{aesgcm: {keys: []}}"), None)
            .1
            .contains("aesgcm (safe only with a key rotated"));
        // The entry for secrets is the one that counts, wherever it is, and wildcards count too.
        let other_first = "- resources: [configmaps]\n  providers: [{identity: {}}]\n";
        assert_eq!(
            with(doc(other_first, "{secretbox: {keys: []}}"), None).1,
            "resources.1 (secrets): first provider secretbox"
        );
        let everything = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: ['*.*']\n  providers: [{kms: {name: k}}]\n";
        assert_eq!(with(Some(everything.into()), None).0, "PASS");
        let only_configmaps = "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [configmaps]\n  providers: [{secretbox: {keys: []}}]\n";
        assert_eq!(
            with(Some(only_configmaps.into()), None).1,
            "secrets are not among resources[].resources: stored in the clear"
        );
        // The file audited must be the one the apiserver runs with.
        assert_eq!(with(None, None).1, format!("{ENCRYPTION_CONFIG} unreadable"));
        assert_eq!(
            with(None, Some("")).1,
            "--encryption-provider-config not set: Secrets are stored in the clear"
        );
        // The apiserver runs with another file: that one is audited, and only when it was read.
        assert_eq!(
            with(doc("", "{secretbox: {keys: []}}"), Some("/etc/other.yaml")).1,
            "/etc/other.yaml unreadable"
        );
        let mut f = kubeforge_host(&m);
        let api = f.args.get_mut("kube-apiserver").unwrap().as_mut().unwrap();
        api.push("--encryption-provider-config=/etc/other.yaml".into());
        f.configs.insert(ENCRYPTION_CONFIG.into(), doc("", "{secretbox: {keys: []}}").unwrap());
        f.read_from.insert(ENCRYPTION_CONFIG.into(), "/etc/other.yaml".into());
        assert_eq!(findings("cp1", &check, &f).remove(0).result, "PASS");
    }

    #[test]
    fn weakened_settings_fail_the_checks_that_cover_them() {
        let m = model();
        let mut f = kubeforge_host(&m);
        // An apiserver with profiling on (the last flag wins), AlwaysAllow, an unreadable unit file mode...
        let api = f.args.get_mut("kube-apiserver").unwrap().as_mut().unwrap();
        api.push("--profiling=true".into());
        api.push("--authorization-mode=AlwaysAllow".into());
        api.push("--token-auth-file".into());
        api.push("/etc/tokens.csv".into());
        f.files.insert(UNIT_APISERVER.into(), vec![(UNIT_APISERVER.into(), 0o644, "root:root".into())]);
        f.files.insert(
            "/etc/kubernetes/admin.conf".into(),
            vec![("/etc/kubernetes/admin.conf".into(), 0o600, "admin:admin".into())],
        );
        // ...a kubelet that allows anonymous requests by flag although its file says no, and whose scheduler
        // has no configuration file to read.
        f.args.get_mut("kubelet").unwrap().as_mut().unwrap().push("--anonymous-auth=true".into());
        f.configs.remove(SCHEDULER_CONFIG);
        f.args.insert("kube-proxy".into(), None);
        let found = findings("cp1", &checks_for(&m.hosts[0]), &f);
        let result = |id: &str, title: &str| {
            found
                .iter()
                .find(|x| x.id == id && x.title.contains(title))
                .map(|x| (x.result.clone(), x.seen.clone()))
                .unwrap_or_else(|| panic!("{id} {title}"))
        };
        assert_eq!(result("1.2.15", "profiling"), ("FAIL".into(), "--profiling=true".into()));
        assert_eq!(result("1.2.6", "not AlwaysAllow").0, "FAIL");
        assert_eq!(result("1.2.7", "Node").0, "FAIL");
        assert_eq!(result("1.2.2", "token").1, "--token-auth-file=/etc/tokens.csv");
        assert_eq!(result("1.1.1", "permissions"), ("FAIL".into(), format!("{UNIT_APISERVER} 644")));
        assert_eq!(result("1.1.14", "owned").0, "FAIL");
        assert_eq!(result("4.2.1", "anonymous"), ("FAIL".into(), "--anonymous-auth=true".into()));
        assert_eq!(result("1.4.1", "profiling"), ("FAIL".into(), format!("{SCHEDULER_CONFIG} unreadable")));
        assert_eq!(result("4.3.1", "metrics").0, "FAIL", "a component that is not running fails its checks");
        assert!(table(&found).lines().nth(1).unwrap().contains("FAIL"), "failures first:\n{}", table(&found));
    }

    #[test]
    fn the_facts_script_reads_the_running_processes_command_lines_in_one_systemctl_call() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // systemd prints a unit's properties in its own order, not the order asked for.
        let me = std::process::id();
        std::fs::write(
            d.join("systemctl"),
            format!(
                "#!/bin/sh\necho \"$*\" >> \"$D/calls\"\n\
                 printf 'MainPID={me}\\nId=kubelet.service\\n\\nId=etcd.service\\nMainPID=0\\n'\n"
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.join("systemctl"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let checks: Vec<&Check> = CHECKS.iter().filter(|c| c.id == "4.2.1" || c.id == "2.2").collect();
        let (cmd, globs) = facts_command(&checks);
        assert!(globs.is_empty());
        let o = crate::test_support::run_with_fakes(&cmd.argv(), d);
        assert!(o.status.success(), "{o:?}");
        let f = Facts::parse(&String::from_utf8_lossy(&o.stdout), &globs);
        let mine: Vec<String> = std::env::args().collect();
        assert_eq!(f.args["kubelet"].as_ref(), Some(&mine), "this test's own command line, read from /proc");
        assert_eq!(f.args["etcd"], None, "a unit with no process");
        assert_eq!(
            std::fs::read_to_string(d.join("calls")).unwrap(),
            "show -p Id -p MainPID etcd.service kubelet.service\n"
        );
        assert!(f.configs.is_empty() || f.configs.contains_key(KUBELET_CONFIG));
    }

    #[test]
    fn the_facts_script_output_is_parsed_and_runs_in_a_real_shell() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.conf");
        std::fs::write(&a, "x: {y: [1, 2]}\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o640)).unwrap();
        let glob = format!("{}/*.conf {}/missing", dir.path().display(), dir.path().display());
        // No units: the script must not call systemctl (not there in every test environment).
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(FACTS)
            .arg("sh")
            .args(["--", &glob, "--", a.to_str().unwrap(), "/nonexistent"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut f = Facts::parse(&String::from_utf8_lossy(&out.stdout), &[&glob]);
        let files = &f.files[&glob];
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!((files[0].0.as_str(), files[0].1), (a.to_str().unwrap(), 0o640));
        assert_eq!(f.field(a.to_str().unwrap(), "x.y"), Some("1,2".into()));
        assert_eq!(f.field(a.to_str().unwrap(), "x.y.1"), Some("2".into()));
        assert_eq!(f.field(a.to_str().unwrap(), "x.z"), None);
        assert!(!f.configs.contains_key("/nonexistent"));
        // Command lines: 0x1f-separated, bare boolean flags, a value in the next word, the last one wins.
        f = Facts::parse("file 7 600 root:root /x\nargs kubelet /bin/kubelet\x1f--v=2\x1f--anonymous-auth\x1f--config\x1f/c.yaml\x1f--v=4\x1f\nargs etcd -\n", &[]);
        assert_eq!(f.flag("kubelet", "anonymous-auth"), Some("true".into()));
        assert_eq!(f.flag("kubelet", "config"), Some("/c.yaml".into()));
        assert_eq!(f.flag("kubelet", "v"), Some("4".into()));
        assert_eq!(f.flag("kubelet", "nope"), None);
        assert_eq!(f.args["etcd"], None);
        assert!(f.files.is_empty(), "an index out of range is ignored");
        assert_eq!(f.flag("etcd", "name"), None);
    }

    /// A configuration file and a data directory are read where the running process says they are
    /// (`--config FILE`, the last occurrence), not at the path kubeforge would have used; a process that
    /// does not name one is read at the default path. Real shell, a real process, a stand-in `systemctl`.
    #[test]
    fn paths_come_from_the_running_processes_flags() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let real = d.join("elsewhere.yaml");
        std::fs::write(&real, "authentication: {anonymous: {enabled: true}}\n").unwrap();
        let default = d.join("default.yaml");
        std::fs::write(&default, "authentication: {anonymous: {enabled: false}}\n").unwrap();
        let mut proc = std::process::Command::new("sh")
            .args(["-c", "sleep 30", "sh", "--config", "/first.yaml", "--config"])
            .arg(&real)
            .spawn()
            .unwrap();
        std::fs::create_dir_all(d.join("bin")).unwrap();
        let systemctl = d.join("bin/systemctl");
        // `systemctl show -p Id -p MainPID UNITS`: the process for kubelet, none for kube-proxy.
        std::fs::write(
            &systemctl,
            format!(
                "#!/bin/sh\nfor u; do case $u in kubelet.service) printf 'Id=kubelet.service\\nMainPID={}\\n\\n' ;; *.service) printf 'Id=%s\\nMainPID=0\\n\\n' \"$u\" ;; esac; done\n",
                proc.id()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&systemctl, std::fs::Permissions::from_mode(0o755)).unwrap();
        let (dflt, realp) = (default.to_str().unwrap(), real.to_str().unwrap());
        let by_kubelet = format!("{dflt}|kubelet|config");
        let by_proxy = format!("{dflt}|kube-proxy|config");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(FACTS)
            .arg("sh")
            .args(["kubelet", "--", &by_kubelet, "--", &by_kubelet])
            .env("PATH", format!("{}:{}", d.join("bin").display(), std::env::var("PATH").unwrap()))
            .output()
            .unwrap();
        let proxy = std::process::Command::new("sh")
            .arg("-c")
            .arg(FACTS)
            .arg("sh")
            .args(["kube-proxy", "--", "--", &by_proxy])
            .env("PATH", format!("{}:{}", d.join("bin").display(), std::env::var("PATH").unwrap()))
            .output()
            .unwrap();
        let _ = proc.kill();
        let _ = proc.wait();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let f = Facts::parse(&String::from_utf8_lossy(&out.stdout), &[by_kubelet.as_str()]);
        assert_eq!(f.read_from.get(dflt).map(String::as_str), Some(realp), "{f:?}");
        assert_eq!(f.field(dflt, "authentication.anonymous.enabled"), Some("true".into()));
        assert_eq!(f.files[&by_kubelet][0].0, realp);
        // No process names one: the default path.
        let f = Facts::parse(&String::from_utf8_lossy(&proxy.stdout), &[]);
        assert_eq!(f.field(dflt, "authentication.anonymous.enabled"), Some("false".into()));
        assert!(f.read_from.is_empty());
        assert_eq!(path_spec(KUBELET_CONFIG), format!("{KUBELET_CONFIG}|kubelet|config"));
        assert_eq!(path_spec("/etc/kubernetes/admin.conf"), "/etc/kubernetes/admin.conf");
    }
}
