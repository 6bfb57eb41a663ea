//! OpenSSH client configuration (`ssh_config(5)`): parsing and the per-host lookup, with OpenSSH's rules.
//!
//! Written here rather than taken from a crate because kubeforge needs three things together that no
//! maintained parser offered: `Match` blocks (evaluated, not folded into the preceding `Host`), `Include`
//! with OpenSSH's scoping, and the `file:line` every value came from (shown by `kubeforge check
//! --show-ssh`). Only the keywords kubeforge acts on are interpreted; every other keyword is accepted and
//! ignored, as a config written for OpenSSH contains many.
//!
//! The lookup follows `readconf.c`:
//! - lines before the first `Host`/`Match` apply to every host; a `Host` line applies when one of its
//!   patterns (`*`, `?`, case-insensitive) matches the name looked up and no negated (`!pattern`) one does;
//! - the first value obtained for a keyword wins; `IdentityFile` accumulates;
//! - `ProxyJump` and `ProxyCommand` compete: whichever is obtained first wins;
//! - `Include` (globs, `~`, relative to `~/.ssh`) reads files in place, inheriting the state of the
//!   enclosing block; a `Host`/`Match` inside an included file only affects the rest of that file, and
//!   nothing in a file included from a block that does not apply can apply;
//! - `Match` supports `all`, `host`, `originalhost`, `user`, `localuser`, `tagged`, `canonical`/`final`
//!   (a second pass, as OpenSSH does), each negatable with `!`. `exec`, `localnetwork`, `version` and
//!   `command` are never evaluated (kubeforge runs no commands from a config file): they do not match,
//!   and a note says so.
//!
//! The system-wide `/etc/ssh/ssh_config` is not read.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a value was written: a file and a 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file.
    pub file: Arc<PathBuf>,
    /// The line, 1-based.
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// A value and where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct At<T> {
    /// The value.
    pub value: T,
    /// Where it was written.
    pub at: Origin,
}

/// A config file that cannot be read, or a line that cannot be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", at.as_ref().map(|a| format!("{a}: ")).unwrap_or_default())]
pub struct ConfigError {
    /// Where, when a line is at fault.
    pub at: Option<Origin>,
    /// What is wrong.
    pub message: String,
}

impl ConfigError {
    fn new(at: Option<&Origin>, message: impl Into<String>) -> Self {
        ConfigError { at: at.cloned(), message: message.into() }
    }
}

/// How the host is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proxy {
    /// `ProxyJump none` / `ProxyCommand none`: directly.
    None,
    /// `ProxyJump a,b`: through these jump hosts, in order (`[user@]host[:port]` each).
    Jump(Vec<String>),
    /// `ProxyCommand ...` (not supported by kubeforge; kept to say so).
    Command(String),
}

/// `StrictHostKeyChecking`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrictHostKeyChecking {
    /// `yes`: unknown keys are refused.
    Yes,
    /// `ask`: like `yes` for a program that cannot ask.
    Ask,
    /// `accept-new`: unknown keys are recorded, changed keys refused.
    AcceptNew,
    /// `no` / `off`: OpenSSH accepts unknown and even changed keys.
    No,
}

/// The settings a config gives one host (only the keywords kubeforge acts on), values as written
/// (`%` tokens and `~` are expanded by the caller, which knows the final user and address).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostConfig {
    /// `HostName`.
    pub hostname: Option<At<String>>,
    /// `User`.
    pub user: Option<At<String>>,
    /// `Port`.
    pub port: Option<At<u16>>,
    /// Every `IdentityFile`, in order.
    pub identity_files: Vec<At<String>>,
    /// `ProxyJump` or `ProxyCommand`, whichever came first.
    pub proxy: Option<At<Proxy>>,
    /// `UserKnownHostsFile` (one or more files).
    pub user_known_hosts_files: Option<At<Vec<String>>>,
    /// `GlobalKnownHostsFile` (one or more files; read, never written).
    pub global_known_hosts_files: Option<At<Vec<String>>>,
    /// `StrictHostKeyChecking`.
    pub strict_host_key_checking: Option<At<StrictHostKeyChecking>>,
    /// `IdentitiesOnly`.
    pub identities_only: Option<At<bool>>,
    /// `ConnectTimeout`, in seconds.
    pub connect_timeout: Option<At<u64>>,
    /// `Tag` (for `Match tagged`).
    pub tag: Option<At<String>>,
    /// Things the caller should tell the user (criteria that were not evaluated).
    pub notes: Vec<String>,
}

/// What is known of the connection before the config is read.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// The login user when it is already decided (the inventory's), for `Match user`.
    pub user: Option<String>,
    /// The user `Match user` sees when neither the caller nor the config set one.
    pub default_user: String,
    /// The local user, for `Match localuser`.
    pub local_user: String,
}

#[derive(Debug, Clone)]
enum Item {
    Host(Vec<String>),
    Match(Vec<String>),
    Include(Vec<File>),
    Option { key: String, args: Vec<String> },
}

#[derive(Debug, Clone)]
struct Entry {
    at: Origin,
    item: Item,
}

#[derive(Debug, Clone)]
struct File {
    entries: Vec<Entry>,
}

/// A parsed config file with everything it includes.
#[derive(Debug, Clone)]
pub struct SshConfig {
    path: PathBuf,
    root: File,
}

/// OpenSSH's `READCONF_MAX_DEPTH`.
const MAX_INCLUDE_DEPTH: usize = 16;

impl SshConfig {
    /// Reads `path` and the files it includes (relative `Include` paths are under `home/.ssh`, as for
    /// a user's config).
    pub fn load(path: &Path, home: &Path) -> Result<SshConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(None, format!("cannot read ssh config {}: {e}", path.display())))?;
        Self::parse(&text, path, home)
    }

    /// Parses config text; `name` is how its lines are cited (a path, or `-` for standard input).
    pub fn parse(text: &str, name: &Path, home: &Path) -> Result<SshConfig, ConfigError> {
        let root = parse_file(text, Arc::new(name.to_path_buf()), home, 0)?;
        Ok(SshConfig { path: name.to_path_buf(), root })
    }

    /// The file it was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The settings for `host` (the name as given: an inventory `address`, or an alias).
    pub fn lookup(&self, host: &str, q: &Query) -> Result<HostConfig, ConfigError> {
        let mut st = Walk { host, q, final_pass: false, wants_final: false, out: HostConfig::default() };
        st.file(&self.root, true, false)?;
        if st.wants_final {
            st.final_pass = true;
            st.file(&self.root, true, false)?;
        }
        let mut out = st.out;
        out.notes.dedup();
        Ok(out)
    }

    /// The names of `Host` lines that name one host (no wildcard, no negation), in file order, each once.
    /// `Include`d files are searched too.
    pub fn concrete_hosts(&self) -> Vec<String> {
        fn walk(f: &File, out: &mut Vec<String>) {
            for e in &f.entries {
                match &e.item {
                    Item::Host(pats) => {
                        for p in pats {
                            if !p.contains(['*', '?', '!']) && !out.iter().any(|o| o.eq_ignore_ascii_case(p))
                            {
                                out.push(p.clone());
                            }
                        }
                    }
                    Item::Include(files) => files.iter().for_each(|f| walk(f, out)),
                    _ => {}
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &mut out);
        out
    }
}

/// Splits one line into its keyword (lower-cased) and arguments: `Key value`, `Key=value`,
/// `Key = "a b"`; `"` and `'` quote, `\` escapes, `#` at the start of a word ends the line.
fn split_line(line: &str) -> Result<Option<(String, Vec<String>)>, String> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    let end = line.find(|c: char| c.is_whitespace() || c == '=').unwrap_or(line.len());
    let key = line[..end].to_ascii_lowercase();
    let mut rest = line[end..].trim_start();
    if let Some(r) = rest.strip_prefix('=') {
        rest = r.trim_start();
    }
    let mut args = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.peek() {
            None | Some('#') => break,
            _ => {}
        }
        let mut word = String::new();
        let mut quote: Option<char> = None;
        while let Some(&c) = chars.peek() {
            match (quote, c) {
                (None, c) if c.is_whitespace() => break,
                (None, '"' | '\'') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (_, '\\') => {
                    chars.next();
                    match chars.peek() {
                        Some(&n) if n == '\\' || n == '"' || n == '\'' || n.is_whitespace() => word.push(n),
                        Some(&n) => {
                            word.push('\\');
                            word.push(n);
                        }
                        None => word.push('\\'),
                    }
                }
                (_, c) => word.push(c),
            }
            chars.next();
        }
        if quote.is_some() {
            return Err("unterminated quoted string".into());
        }
        args.push(word);
    }
    Ok(Some((key, args)))
}

fn parse_file(text: &str, name: Arc<PathBuf>, home: &Path, depth: usize) -> Result<File, ConfigError> {
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let at = Origin { file: name.clone(), line: i + 1 };
        let Some((key, args)) = split_line(line).map_err(|m| ConfigError::new(Some(&at), m))? else {
            continue;
        };
        let item = match key.as_str() {
            "host" | "match" if args.is_empty() => {
                return Err(ConfigError::new(Some(&at), format!("`{key}` needs at least one argument")))
            }
            "host" => Item::Host(args),
            "match" => Item::Match(args),
            "include" => {
                if depth + 1 > MAX_INCLUDE_DEPTH {
                    return Err(ConfigError::new(
                        Some(&at),
                        format!("`Include` nested more than {MAX_INCLUDE_DEPTH} deep (a loop?)"),
                    ));
                }
                let mut files = Vec::new();
                for arg in &args {
                    let pattern = include_path(arg, home);
                    for path in glob(&pattern) {
                        let text = match std::fs::read_to_string(&path) {
                            Ok(t) => t,
                            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                            Err(e) => {
                                return Err(ConfigError::new(
                                    Some(&at),
                                    format!("cannot read included file {}: {e}", path.display()),
                                ))
                            }
                        };
                        files.push(parse_file(&text, Arc::new(path), home, depth + 1)?);
                    }
                }
                Item::Include(files)
            }
            _ => Item::Option { key, args },
        };
        entries.push(Entry { at, item });
    }
    Ok(File { entries })
}

fn include_path(arg: &str, home: &Path) -> PathBuf {
    if arg == "~" {
        home.to_path_buf()
    } else if let Some(rest) = arg.strip_prefix("~/") {
        home.join(rest)
    } else if Path::new(arg).is_absolute() {
        PathBuf::from(arg)
    } else {
        home.join(".ssh").join(arg)
    }
}

/// The existing files matching `pattern` (`*` and `?` in any component), sorted as glob(3) sorts.
fn glob(pattern: &Path) -> Vec<PathBuf> {
    use std::path::Component;
    if !pattern.to_string_lossy().contains(['*', '?']) {
        return vec![pattern.to_path_buf()];
    }
    let mut found = vec![PathBuf::new()];
    for comp in pattern.components() {
        let part = comp.as_os_str().to_string_lossy();
        if !matches!(comp, Component::Normal(_)) || !part.contains(['*', '?']) {
            found.iter_mut().for_each(|p| p.push(comp.as_os_str()));
            continue;
        }
        let mut next = Vec::new();
        for dir in &found {
            let Ok(rd) = std::fs::read_dir(dir) else { continue };
            let mut names: Vec<String> = rd.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect();
            names.sort();
            for n in names {
                // A leading dot is only matched by a pattern that starts with one, as with glob(3).
                if (!n.starts_with('.') || part.starts_with('.')) && wildcard(&part, &n, false) {
                    next.push(dir.join(n));
                }
            }
        }
        found = next;
    }
    found.retain(|p| p.is_file());
    found
}

/// OpenSSH's `match_pattern`: `*` any run, `?` one character.
pub fn wildcard(pattern: &str, text: &str, ignore_case: bool) -> bool {
    let norm = |s: &str| -> Vec<char> {
        if ignore_case {
            s.to_lowercase().chars().collect()
        } else {
            s.chars().collect()
        }
    };
    let (p, t) = (norm(pattern), norm(text));
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// OpenSSH's `match_pattern_list`: a comma-separated list; 1 when a positive entry matches and no
/// negated one does, -1 when a negated one matches, 0 otherwise. Also the host-name matching of
/// `known_hosts` lines (OpenSSH's `match_hostname`).
pub fn pattern_list(text: &str, list: &str) -> i32 {
    let mut got = 0;
    for p in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (neg, p) = match p.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, p),
        };
        if wildcard(p, text, true) {
            if neg {
                return -1;
            }
            got = 1;
        }
    }
    got
}

/// A `Host` line's patterns against `host`.
fn host_line_matches(patterns: &[String], host: &str) -> bool {
    let mut matched = false;
    for p in patterns {
        match p.strip_prefix('!') {
            Some(neg) if wildcard(neg, host, true) => return false,
            Some(_) => {}
            None => matched |= wildcard(p, host, true),
        }
    }
    matched
}

struct Walk<'a> {
    host: &'a str,
    q: &'a Query,
    final_pass: bool,
    wants_final: bool,
    out: HostConfig,
}

fn set_once<T>(slot: &mut Option<At<T>>, value: T, at: &Origin) {
    if slot.is_none() {
        *slot = Some(At { value, at: at.clone() });
    }
}

fn yes_no(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "true" => Some(true),
        "no" | "false" => Some(false),
        _ => None,
    }
}

impl Walk<'_> {
    /// Walks one file starting in state `active`; `never` is OpenSSH's `SSHCONF_NEVERMATCH`.
    fn file(&mut self, f: &File, mut active: bool, never: bool) -> Result<(), ConfigError> {
        for e in &f.entries {
            match &e.item {
                Item::Host(pats) => active = !never && host_line_matches(pats, self.host),
                Item::Match(crit) => {
                    let m = self.match_line(crit, &e.at)?;
                    active = !never && m;
                }
                Item::Include(files) => {
                    for inc in files {
                        self.file(inc, active, never || !active)?;
                    }
                }
                Item::Option { key, args } if active => self.option(key, args, &e.at)?,
                Item::Option { .. } => {}
            }
        }
        Ok(())
    }

    fn note(&mut self, at: &Origin, text: String) {
        let n = format!("{at}: {text}");
        if !self.out.notes.contains(&n) {
            self.out.notes.push(n);
        }
    }

    fn match_line(&mut self, crit: &[String], at: &Origin) -> Result<bool, ConfigError> {
        let mut result = true;
        let mut i = 0;
        while i < crit.len() {
            let raw = crit[i].to_ascii_lowercase();
            let (negate, name) = match raw.strip_prefix('!') {
                Some(n) => (true, n.to_string()),
                None => (false, raw.clone()),
            };
            i += 1;
            let r = match name.as_str() {
                "all" => true,
                "canonical" | "final" => {
                    self.wants_final = true;
                    self.final_pass
                }
                "host" | "originalhost" | "user" | "localuser" | "tagged" | "exec" | "localnetwork"
                | "version" | "sessiontype" | "command" => {
                    let Some(arg) = crit.get(i) else {
                        return Err(ConfigError::new(Some(at), format!("`Match {name}` needs an argument")));
                    };
                    i += 1;
                    match name.as_str() {
                        "host" => {
                            let h = match &self.out.hostname {
                                Some(h) => h.value.replace("%h", self.host).replace("%%", "%"),
                                None => self.host.to_string(),
                            };
                            pattern_list(&h, arg) == 1
                        }
                        "originalhost" => pattern_list(self.host, arg) == 1,
                        "user" => {
                            let u = self
                                .q
                                .user
                                .clone()
                                .or_else(|| self.out.user.as_ref().map(|u| u.value.clone()))
                                .unwrap_or_else(|| self.q.default_user.clone());
                            pattern_list(&u, arg) == 1
                        }
                        "localuser" => pattern_list(&self.q.local_user, arg) == 1,
                        "tagged" => {
                            let t = self.out.tag.as_ref().map(|t| t.value.clone()).unwrap_or_default();
                            pattern_list(&t, arg) == 1
                        }
                        "sessiontype" => pattern_list("exec", arg) == 1,
                        other => {
                            self.note(
                                at,
                                format!("`Match {other}` is not evaluated by kubeforge; the block is taken as not matching"),
                            );
                            // A negated criterion that was not evaluated must not match either.
                            result = false;
                            false
                        }
                    }
                }
                other => {
                    return Err(ConfigError::new(
                        Some(at),
                        format!("unsupported `Match` criterion `{other}`"),
                    ))
                }
            };
            result &= r != negate;
        }
        Ok(result)
    }

    fn option(&mut self, key: &str, args: &[String], at: &Origin) -> Result<(), ConfigError> {
        const USED: [&str; 12] = [
            "globalknownhostsfile",
            "connecttimeout",
            "hostname",
            "user",
            "port",
            "identityfile",
            "proxyjump",
            "proxycommand",
            "userknownhostsfile",
            "stricthostkeychecking",
            "identitiesonly",
            "tag",
        ];
        if !USED.contains(&key) {
            return Ok(());
        }
        let Some(first) = args.first() else {
            return Err(ConfigError::new(Some(at), format!("`{key}` needs a value")));
        };
        let o = &mut self.out;
        match key {
            "hostname" => set_once(&mut o.hostname, first.clone(), at),
            "user" => set_once(&mut o.user, first.clone(), at),
            "tag" => set_once(&mut o.tag, first.clone(), at),
            "port" => {
                let p = first
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| ConfigError::new(Some(at), format!("`Port {first}` is not a port")))?;
                set_once(&mut o.port, p, at);
            }
            "identityfile"
                if !first.eq_ignore_ascii_case("none")
                    && !o.identity_files.iter().any(|f| &f.value == first) =>
            {
                o.identity_files.push(At { value: first.clone(), at: at.clone() });
            }
            "proxyjump" => {
                let v = if first.eq_ignore_ascii_case("none") {
                    Proxy::None
                } else {
                    Proxy::Jump(first.split(',').map(|s| s.trim().to_string()).collect())
                };
                set_once(&mut o.proxy, v, at);
            }
            "proxycommand" => {
                let v = if first.eq_ignore_ascii_case("none") {
                    Proxy::None
                } else {
                    Proxy::Command(args.join(" "))
                };
                set_once(&mut o.proxy, v, at);
            }
            "userknownhostsfile" => set_once(&mut o.user_known_hosts_files, args.to_vec(), at),
            "globalknownhostsfile" => set_once(&mut o.global_known_hosts_files, args.to_vec(), at),
            "stricthostkeychecking" => {
                let v = match first.to_ascii_lowercase().as_str() {
                    "yes" | "true" => StrictHostKeyChecking::Yes,
                    "ask" => StrictHostKeyChecking::Ask,
                    "accept-new" => StrictHostKeyChecking::AcceptNew,
                    "no" | "false" | "off" => StrictHostKeyChecking::No,
                    _ => {
                        return Err(ConfigError::new(
                            Some(at),
                            format!("`StrictHostKeyChecking {first}`: use yes, accept-new, no or ask"),
                        ))
                    }
                };
                set_once(&mut o.strict_host_key_checking, v, at);
            }
            "connecttimeout" => {
                let v = first.parse::<u64>().ok().filter(|s| *s > 0).ok_or_else(|| {
                    ConfigError::new(Some(at), format!("`ConnectTimeout {first}`: give a number of seconds"))
                })?;
                set_once(&mut o.connect_timeout, v, at);
            }
            "identitiesonly" => {
                let v = yes_no(first).ok_or_else(|| {
                    ConfigError::new(Some(at), format!("`IdentitiesOnly {first}`: use yes or no"))
                })?;
                set_once(&mut o.identities_only, v, at);
            }
            _ => {}
        }
        Ok(())
    }
}

/// One `ProxyJump` entry: `[user@]host[:port]` or `ssh://[user@]host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JumpSpec {
    /// The user, when given.
    pub user: Option<String>,
    /// The host (looked up in the config like any host).
    pub host: String,
    /// The port, when given.
    pub port: Option<u16>,
}

impl JumpSpec {
    /// Parses one entry.
    pub fn parse(s: &str) -> Result<JumpSpec, String> {
        let s = s.strip_prefix("ssh://").unwrap_or(s);
        let (user, hostport) = match s.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_string()).filter(|u| !u.is_empty()), h),
            None => (None, s),
        };
        let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
            // [v6]:port
            match rest.split_once(']') {
                Some((h, p)) => (h.to_string(), p.strip_prefix(':')),
                None => return Err(format!("`{s}`: unbalanced `[`")),
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h.to_string(), Some(p)),
                _ => (hostport.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(format!("`{s}` names no host"));
        }
        let port = match port {
            None => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("`{s}`: `{p}` is not a port"))?,
            ),
        };
        Ok(JumpSpec { user, host, port })
    }
}

/// Values for `%` tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    /// `%d`: the local home directory.
    pub home: String,
    /// `%h`: the remote host name (after `HostName`).
    pub host: String,
    /// `%n`: the name as given.
    pub original_host: String,
    /// `%p`: the port.
    pub port: u16,
    /// `%r`: the remote user.
    pub remote_user: String,
    /// `%u`: the local user.
    pub local_user: String,
}

/// Expands `~` and the `%` tokens `%% %d %h %n %p %r %u %i %l %L` of a path-like value.
pub fn expand(value: &str, t: &Tokens) -> Result<String, String> {
    let value = if value == "~" {
        t.home.clone()
    } else if let Some(rest) = value.strip_prefix("~/") {
        format!("{}/{rest}", t.home.trim_end_matches('/'))
    } else {
        value.to_string()
    };
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('d') => out.push_str(&t.home),
            Some('h') => out.push_str(&t.host),
            Some('n') => out.push_str(&t.original_host),
            Some('p') => out.push_str(&t.port.to_string()),
            Some('r') => out.push_str(&t.remote_user),
            Some('u') => out.push_str(&t.local_user),
            Some('i') => out.push_str(&nix::unistd::getuid().to_string()),
            Some('l') => out.push_str(&local_hostname()),
            Some('L') => out.push_str(local_hostname().split('.').next().unwrap_or_default()),
            Some(other) => return Err(format!("`%{other}` in `{value}` is not a token kubeforge expands")),
            None => return Err(format!("`{value}` ends with a lone `%`")),
        }
    }
    Ok(out)
}

fn local_hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_default()
}

/// The name of the user running kubeforge.
pub fn local_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> SshConfig {
        SshConfig::parse(text, Path::new("cfg"), Path::new("/nonexistent-home")).unwrap()
    }

    fn q() -> Query {
        Query { user: None, default_user: "root".into(), local_user: "me".into() }
    }

    fn look(c: &SshConfig, host: &str) -> HostConfig {
        c.lookup(host, &q()).unwrap()
    }

    fn v<T: Clone>(a: &Option<At<T>>) -> Option<T> {
        a.as_ref().map(|a| a.value.clone())
    }

    #[test]
    fn wildcards_question_marks_and_case() {
        assert!(wildcard("node-*", "node-12", true));
        assert!(wildcard("node-??", "NODE-12", true));
        assert!(!wildcard("node-?", "node-12", true));
        assert!(wildcard("*", "", true));
        assert!(wildcard("*.example.*", "a.example.com", true));
        assert!(!wildcard("a*b", "acbd", true));
        assert!(wildcard("a*b*", "acbd", true));
        assert!(!wildcard("File", "file", false));
    }

    #[test]
    fn the_first_obtained_value_wins_and_identity_files_accumulate() {
        let c = cfg("User global\n\nHost node1\n  HostName 127.0.0.5\n  Port 2201\n  IdentityFile ~/a\n\
                     Host node*\n  User nodes\n  Port 2299\n  IdentityFile ~/b\nHost *\n  User all\n  IdentityFile ~/a\n");
        let h = look(&c, "node1");
        assert_eq!(v(&h.user).as_deref(), Some("global"), "a line before any Host applies first");
        assert_eq!(v(&h.port), Some(2201));
        assert_eq!(v(&h.hostname).as_deref(), Some("127.0.0.5"));
        assert_eq!(h.identity_files.iter().map(|f| f.value.as_str()).collect::<Vec<_>>(), ["~/a", "~/b"]);
        assert_eq!(h.port.unwrap().at.to_string(), "cfg:5");
        let h = look(&c, "node2");
        assert_eq!((v(&h.port), v(&h.hostname)), (Some(2299), None));
        let h = look(&c, "other");
        assert_eq!(h.identity_files.len(), 1);
    }

    #[test]
    fn a_negated_pattern_excludes_the_host_whatever_else_matches() {
        let c = cfg("Host *.prod !db.prod\n  User deploy\nHost *\n  User fallback\n");
        assert_eq!(v(&look(&c, "web.prod").user).as_deref(), Some("deploy"));
        assert_eq!(v(&look(&c, "db.prod").user).as_deref(), Some("fallback"));
        // A negation alone matches nothing.
        let c = cfg("Host !bastion\n  ProxyJump bastion\n");
        assert_eq!(look(&c, "node").proxy, None);
    }

    #[test]
    fn proxyjump_chains_none_and_the_competition_with_proxycommand() {
        let c = cfg("Host direct\n  ProxyJump none\nHost cmd\n  ProxyCommand nc %h %p\n\
                     Host *\n  ProxyJump j1,admin@j2:2222\n");
        assert_eq!(v(&look(&c, "x").proxy), Some(Proxy::Jump(vec!["j1".into(), "admin@j2:2222".into()])));
        assert_eq!(v(&look(&c, "direct").proxy), Some(Proxy::None));
        assert_eq!(v(&look(&c, "cmd").proxy), Some(Proxy::Command("nc %h %p".into())));
        assert_eq!(
            JumpSpec::parse("admin@j2:2222").unwrap(),
            JumpSpec { user: Some("admin".into()), host: "j2".into(), port: Some(2222) }
        );
        assert_eq!(JumpSpec::parse("ssh://[::1]:22").unwrap().host, "::1");
        assert!(JumpSpec::parse("j:0").is_err());
    }

    #[test]
    fn match_blocks_are_evaluated_not_folded_into_the_previous_host() {
        let c = cfg("Host a\n  User from-host\nMatch host 10.0.0.* !host 10.0.0.9\n  Port 2022\n\
                     Match originalhost b user admin\n  Port 2023\nMatch all\n  IdentitiesOnly yes\n");
        // `a` maps to nothing: the Match lines after its block are separate conditions.
        let h = look(&c, "a");
        assert_eq!((v(&h.user).as_deref(), v(&h.port)), (Some("from-host"), None));
        assert_eq!(v(&h.identities_only), Some(true));
        assert_eq!(v(&look(&c, "10.0.0.1").port), Some(2022));
        assert_eq!(v(&look(&c, "10.0.0.9").port), None);
        assert_eq!(v(&look(&c, "b").port), None, "user is root, not admin");
        let as_admin = Query { user: Some("admin".into()), ..q() };
        assert_eq!(v(&c.lookup("b", &as_admin).unwrap().port), Some(2023));
        // `Match host` sees HostName; `Match final` applies in the second pass.
        let c =
            cfg("Host alias\n  HostName 10.1.2.3\nMatch host 10.1.2.*\n  User net\nMatch final\n  Port 2\n");
        let h = look(&c, "alias");
        assert_eq!((v(&h.user).as_deref(), v(&h.port)), (Some("net"), Some(2)));
        // exec is never run: not matching, with a note.
        let c = cfg("Match exec \"true\"\n  User x\n");
        let h = look(&c, "h");
        assert_eq!(v(&h.user), None);
        assert!(h.notes[0].contains("`Match exec` is not evaluated"), "{:?}", h.notes);
        let e = cfg("Match nonsense x\n").lookup("h", &q()).unwrap_err();
        assert_eq!(e.to_string(), "cfg:1: unsupported `Match` criterion `nonsense`");
    }

    #[test]
    fn include_reads_files_in_place_with_the_enclosing_scope() {
        let home = tempfile::tempdir().unwrap();
        let ssh = home.path().join(".ssh");
        std::fs::create_dir_all(ssh.join("conf.d")).unwrap();
        std::fs::write(ssh.join("conf.d/10-nodes.conf"), "Host node*\n  User nodes\n").unwrap();
        std::fs::write(ssh.join("conf.d/20-late.conf"), "Host node1\n  User late\n  Port 2020\n").unwrap();
        std::fs::write(ssh.join("scoped.conf"), "Port 3030\nHost *\n  IdentityFile ~/.ssh/scoped\n").unwrap();
        let top = ssh.join("config");
        std::fs::write(
            &top,
            "Include conf.d/*.conf\nHost web\n  Include scoped.conf missing.conf\nHost *\n  IdentityFile ~/.ssh/all\n",
        )
        .unwrap();
        let c = SshConfig::load(&top, home.path()).unwrap();
        let h = c.lookup("node1", &q()).unwrap();
        assert_eq!(v(&h.user).as_deref(), Some("nodes"), "files are read in glob order, first wins");
        assert_eq!(
            h.user.unwrap().at.to_string(),
            format!("{}:2", ssh.join("conf.d/10-nodes.conf").display())
        );
        assert_eq!(v(&h.port), Some(2020));
        // An include under `Host web` applies only to web, and its own `Host *` cannot widen it.
        let h = c.lookup("node1", &q()).unwrap();
        assert_eq!(h.identity_files.iter().map(|f| f.value.as_str()).collect::<Vec<_>>(), ["~/.ssh/all"]);
        let h = c.lookup("web", &q()).unwrap();
        assert_eq!(v(&h.port), Some(3030));
        assert_eq!(
            h.identity_files.iter().map(|f| f.value.as_str()).collect::<Vec<_>>(),
            ["~/.ssh/scoped", "~/.ssh/all"]
        );
        assert_eq!(c.concrete_hosts(), ["node1", "web"]);
        // A self-include is a clear error, not a stack overflow.
        std::fs::write(ssh.join("loop"), "Include loop\n").unwrap();
        let e = SshConfig::load(&ssh.join("loop"), home.path()).unwrap_err();
        assert!(e.to_string().contains("nested more than 16 deep"), "{e}");
    }

    #[test]
    fn lines_keywords_quotes_and_errors() {
        assert_eq!(
            split_line("  HostName=10.0.0.1 # comment").unwrap(),
            Some(("hostname".into(), vec!["10.0.0.1".into()]))
        );
        assert_eq!(
            split_line("IdentityFile = \"/a b/key\" 'c'").unwrap(),
            Some(("identityfile".into(), vec!["/a b/key".into(), "c".into()]))
        );
        assert_eq!(split_line("# only a comment").unwrap(), None);
        assert!(split_line("User \"x").is_err());
        let e = cfg("Host a\n  Port abc\n").lookup("a", &q()).unwrap_err();
        assert_eq!(e.to_string(), "cfg:2: `Port abc` is not a port");
        // The same bad line does not matter to a host it does not apply to.
        assert!(cfg("Host a\n  Port abc\n").lookup("b", &q()).is_ok());
        assert!(SshConfig::parse("Host\n", Path::new("cfg"), Path::new("/")).is_err());
    }

    #[test]
    fn tokens_and_tilde() {
        let t = Tokens {
            home: "/home/me".into(),
            host: "10.0.0.5".into(),
            original_host: "node1".into(),
            port: 2222,
            remote_user: "admin".into(),
            local_user: "me".into(),
        };
        assert_eq!(expand("~/.ssh/id_%h_%r", &t).unwrap(), "/home/me/.ssh/id_10.0.0.5_admin");
        assert_eq!(expand("%d/keys/%n-%p-%u-100%%", &t).unwrap(), "/home/me/keys/node1-2222-me-100%");
        assert!(expand("%C", &t).is_err());
    }
}
