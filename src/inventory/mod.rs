//! The inventory: loading a YAML file into [`schema::Inventory`] and validating it before anything touches a
//! machine. Every problem is reported with file, line and column, what is wrong and how to fix it, and all
//! of them in one run: schema problems (unknown fields, wrong types, missing fields) and the checks across
//! fields on what remains once each schema problem is repaired in a copy.
//!
//! Inputs: a file; `-` for standard input; any stream such as a FIFO or process substitution
//! (`-i <(envsubst < inv.yaml)`), read up to [`MAX_BYTES`]. Relative paths in an inventory (key files,
//! bundles, manifests) resolve against its file's directory, or against the current directory for a stream,
//! which has none ([`base_dir`]). YAML anchors, aliases and merge keys (`<<: *defaults`) work; top-level
//! fields whose names start with `x-` are skipped, as a place to keep anchored defaults.

pub mod explain;
pub mod flags;
pub mod init;
pub mod position;
pub mod schema;
pub mod validate;

pub use schema::*;

use std::path::{Path, PathBuf};

/// Largest inventory file kubeforge reads: real ones are a few kilobytes.
pub const MAX_BYTES: u64 = 4 * 1024 * 1024;
/// Problems (and, separately, warnings) printed in full; the rest are counted.
pub const MAX_SHOWN: usize = 50;
/// Longest value echoed back in a message, in characters; longer ones end in `…`.
pub const MAX_VALUE_CHARS: usize = 80;

/// A value from the inventory as messages quote it: at most [`MAX_VALUE_CHARS`] characters.
pub fn shown(value: &str) -> String {
    match value.char_indices().nth(MAX_VALUE_CHARS) {
        Some((cut, _)) => format!("{}…", &value[..cut]),
        None => value.to_owned(),
    }
}

/// Control characters written as escapes, so that no message can break a line or drive the terminal.
fn printable(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { c.escape_debug().to_string() } else { c.to_string() }).collect()
}

/// Clips every backtick- or double-quoted part of a parser's message to [`MAX_VALUE_CHARS`].
fn clip_quoted(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len().min(1024));
    let mut open: Option<char> = None;
    let mut inside = 0usize;
    for c in msg.chars() {
        match open {
            Some(q) if c == q => {
                if inside > MAX_VALUE_CHARS {
                    out.push('…');
                }
                out.push(c);
                open = None;
            }
            Some(_) => {
                inside += 1;
                if inside <= MAX_VALUE_CHARS {
                    out.push(c);
                }
            }
            None => {
                if c == '`' || c == '"' {
                    open = Some(c);
                    inside = 0;
                }
                out.push(c);
            }
        }
    }
    if open.is_some() && inside > MAX_VALUE_CHARS {
        out.push('…');
    }
    out
}

/// One problem found in an inventory.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

impl Problem {
    fn at(pos: Option<position::Pos>, message: impl Into<String>, hint: impl Into<Option<String>>) -> Self {
        Problem {
            line: pos.map(|p| p.line),
            column: pos.map(|p| p.column),
            message: message.into(),
            hint: hint.into(),
        }
    }

    fn location(&self, path: &Path) -> String {
        match (self.line, self.column) {
            (Some(l), Some(c)) => format!("{}:{l}:{c}", path.display()),
            (Some(l), None) => format!("{}:{l}", path.display()),
            _ => path.display().to_string(),
        }
    }
}

/// Errors from loading or validating an inventory.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The file could not be read.
    #[error("cannot read inventory {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The path names a directory.
    #[error("inventory {path} is {kind}, not a file")]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// `a directory`.
        kind: &'static str,
    },
    /// The file is larger than [`MAX_BYTES`].
    #[error("inventory {path} is larger than {} MiB", MAX_BYTES / (1024 * 1024))]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The file is not UTF-8 text.
    #[error("inventory {path}:{line}:{column} is not UTF-8 text")]
    NotText {
        /// The file.
        path: PathBuf,
        /// Line of the first invalid byte.
        line: usize,
        /// Column (in bytes) of the first invalid byte.
        column: usize,
    },
    /// The file has problems; all of them are listed.
    #[error("{}", render_problems(path, problems))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        problems: Vec<Problem>,
    },
}

impl InventoryError {
    /// How to fix it, for the errors that are about the file as a whole (each listed problem carries
    /// its own hint).
    pub fn hint(&self) -> Option<String> {
        match self {
            InventoryError::NotAFile { .. } => {
                Some("give the path of a YAML inventory file; see inventories/ for examples".into())
            }
            InventoryError::TooLarge { .. } => Some(
                "an inventory is a few kilobytes, even for thousands of hosts; check that the path names the inventory".into(),
            ),
            InventoryError::NotText { .. } => Some("save the inventory as UTF-8 text".into()),
            InventoryError::Read { .. } | InventoryError::Invalid { .. } => None,
        }
    }
}

/// Problems in the order of the file, each once: a value merged into several mappings (`<<: *defaults`)
/// is written in one place, and one problem there is one fix.
fn in_order(problems: &mut Vec<Problem>) {
    problems.sort_by_key(|p| (p.line, p.column));
    let mut seen = std::collections::HashSet::new();
    problems.retain(|p| seen.insert((p.line, p.column, p.message.clone())));
}

fn render_problems(path: &Path, problems: &[Problem]) -> String {
    let mut out = format!(
        "{} has {} problem{}",
        path.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems.iter().take(MAX_SHOWN) {
        out.push_str(&format!("\n  {}: {}", p.location(path), printable(&p.message)));
        if let Some(h) = &p.hint {
            out.push_str(&format!("\n    fix: {}", printable(h)));
        }
    }
    if problems.len() > MAX_SHOWN {
        out.push_str(&format!("\n  ... and {} more problems", problems.len() - MAX_SHOWN));
    }
    out
}

/// The lines [`load`] prints for warnings: `warning: file:line:col: message`, each with its fix.
pub fn render_warnings(path: &Path, warnings: &[Problem]) -> String {
    let mut out = String::new();
    for w in warnings.iter().take(MAX_SHOWN) {
        out.push_str(&format!("warning: {}: {}\n", w.location(path), printable(&w.message)));
        if let Some(h) = &w.hint {
            out.push_str(&format!("  fix: {}\n", printable(h)));
        }
    }
    if warnings.len() > MAX_SHOWN {
        out.push_str(&format!("warning: ... and {} more warnings\n", warnings.len() - MAX_SHOWN));
    }
    out
}

/// A parsed inventory with where it came from and where each of its values stands in the file.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The typed inventory.
    pub inventory: Inventory,
    /// The file it was read from.
    pub path: PathBuf,
    /// The directory relative paths in it resolve against: the file's own, or the current directory for
    /// an inventory read from a stream (`-`, a FIFO, `<(...)`; see [`is_stream`]).
    pub dir: PathBuf,
    /// Positions of its values.
    pub positions: position::Positions,
    /// Problems found while parsing that do not stop validation (keys given twice); [`load`] reports them
    /// with the validation problems.
    pub parse_problems: Vec<Problem>,
    /// Values that may be legitimate but probably are not; [`load`] prints them and goes on.
    pub warnings: Vec<Problem>,
}

/// Reads, parses and validates an inventory file; every problem is reported at once. Warnings are printed
/// on stderr (`warning: file:line:col: ...`) whether or not the inventory is valid, and kept in
/// [`Loaded::warnings`].
pub fn load(path: &Path) -> Result<Loaded, InventoryError> {
    let (result, warnings) = load_quietly(path);
    if !warnings.is_empty() {
        eprint!("{}", render_warnings(&display_path(path), &warnings));
    }
    result
}

/// [`load`] without printing: the result, and the warnings found (also when the inventory is invalid).
pub fn load_quietly(path: &Path) -> (Result<Loaded, InventoryError>, Vec<Problem>) {
    let text = match read(path) {
        Ok(t) => t,
        Err(e) => return (Err(e), Vec::new()),
    };
    let mut loaded = match parse(path, &text) {
        Ok(l) => l,
        Err(e) => return (Err(e), Vec::new()),
    };
    let mut problems = std::mem::take(&mut loaded.parse_problems);
    let mut warnings = Vec::new();
    for p in validate::validate(&loaded.inventory, &loaded.dir) {
        let pos = if p.at_key { loaded.positions.find_key(&p.path) } else { loaded.positions.find(&p.path) };
        let problem = Problem::at(pos, p.message, p.hint);
        if p.warning {
            warnings.push(problem);
        } else {
            problems.push(problem);
        }
    }
    warnings.sort_by_key(|p| (p.line, p.column));
    loaded.warnings = warnings.clone();
    if problems.is_empty() {
        return (Ok(loaded), warnings);
    }
    in_order(&mut problems);
    (Err(InventoryError::Invalid { path: display_path(path), problems }), warnings)
}

/// The path that names standard input (`-i -`).
pub const STDIN: &str = "-";

/// How messages name an inventory: `<stdin>` for `-`, else the path as given.
pub fn display_path(path: &Path) -> PathBuf {
    if path.as_os_str() == STDIN {
        PathBuf::from("<stdin>")
    } else {
        path.to_owned()
    }
}

/// Texts already read from streams (standard input, FIFOs, `/dev/fd/N`), by path: a stream can be read
/// only once, and a command may load its inventory more than once.
fn streams() -> &'static std::sync::Mutex<std::collections::HashMap<PathBuf, String>> {
    static STREAMS: std::sync::OnceLock<std::sync::Mutex<std::collections::HashMap<PathBuf, String>>> =
        std::sync::OnceLock::new();
    STREAMS.get_or_init(Default::default)
}

/// Whether the inventory at `path` is a stream rather than a file in a directory: `-` (standard input), a
/// FIFO or process substitution (`<(...)`, a `/dev/fd/N` path), a character device. Relative paths in such
/// an inventory, and the default PKI store, resolve against the current directory, since the stream has
/// no directory of its own.
pub fn is_stream(path: &Path) -> bool {
    if path.as_os_str() == STDIN
        || path.starts_with("/dev/fd")
        || path.starts_with("/proc/self/fd")
        || streams().lock().map(|s| s.contains_key(path)).unwrap_or(false)
    {
        return true;
    }
    std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir())
}

/// The directory relative paths in the inventory at `path` resolve against: the file's directory, or the
/// current directory for a stream ([`is_stream`]).
pub fn base_dir(path: &Path) -> PathBuf {
    if is_stream(path) {
        return PathBuf::from(".");
    }
    path.parent()
        .map(|d| if d.as_os_str().is_empty() { Path::new(".") } else { d })
        .unwrap_or(Path::new("."))
        .to_owned()
}

/// Reads at most [`MAX_BYTES`] + 1 bytes, so that "too large" can be told from "exactly at the limit".
fn read_capped(r: impl std::io::Read) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::new();
    r.take(MAX_BYTES + 1).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Reads an inventory: a file, `-` for standard input, or any stream (a FIFO, process substitution such as
/// `-i <(envsubst < inv.yaml)`, a character device), of at most [`MAX_BYTES`] of UTF-8. A stream is read
/// up to the limit and no further, so `/dev/zero` is refused as too large rather than read forever; its
/// text is kept, so that reading the same path again in this process gives the same inventory. A
/// directory is refused.
pub fn read(path: &Path) -> Result<String, InventoryError> {
    use std::io::IsTerminal;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(text) = streams().lock().ok().and_then(|s| s.get(path).cloned()) {
        return Ok(text);
    }
    let shown_path = display_path(path);
    let io = |source| InventoryError::Read { path: shown_path.clone(), source };
    let (bytes, stream) = if path.as_os_str() == STDIN {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            eprintln!("reading the inventory from standard input; end it with Ctrl-D");
        }
        (read_capped(stdin.lock()).map_err(io)?, true)
    } else {
        // A FIFO is opened as `cat` opens it, waiting for a writer: opened without blocking, it would
        // count as a reader, let a writer write and go, and then read nothing. Anything else is opened
        // without blocking, so that a directory is told apart before any read.
        let fifo = std::fs::metadata(path).is_ok_and(|m| {
            use std::os::unix::fs::FileTypeExt;
            m.file_type().is_fifo()
        });
        let mut options = std::fs::OpenOptions::new();
        options.read(true);
        if !fifo {
            options.custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits());
        }
        let file = options.open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if meta.is_dir() {
            return Err(InventoryError::NotAFile { path: shown_path, kind: "a directory" });
        }
        if meta.is_file() {
            if meta.len() > MAX_BYTES {
                return Err(InventoryError::TooLarge { path: shown_path });
            }
            // The size can change between the check and the read; the limit holds either way.
            (read_capped(file).map_err(io)?, false)
        } else if fifo {
            (read_capped(file).map_err(io)?, true)
        } else {
            // A character device or socket: read blocking, as any program reads it.
            drop(file);
            (read_capped(std::fs::File::open(path).map_err(io)?).map_err(io)?, true)
        }
    };
    if bytes.len() as u64 > MAX_BYTES {
        return Err(InventoryError::TooLarge { path: shown_path });
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = good.len() - good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) + 1;
        InventoryError::NotText { path: shown_path.clone(), line, column }
    })?;
    if stream {
        if let Ok(mut s) = streams().lock() {
            s.insert(path.to_owned(), text.clone());
        }
    }
    Ok(text)
}

fn limit_problem(limit: &position::LimitExceeded) -> Problem {
    use position::LimitExceeded;
    match limit {
        LimitExceeded::Depth { max, at } => Problem::at(
            Some(*at),
            format!("the document nests mappings and sequences more than {max} levels deep"),
            Some("an inventory nests at most 5 levels; check that this file is the inventory".to_string()),
        ),
        LimitExceeded::Nodes { max, through_aliases: true, at } => Problem::at(
            Some(*at),
            format!("the document expands to more than {max} values through aliases (`*name`)"),
            Some(
                "every alias repeats the whole node its anchor (`&name`) marks; write the values out instead of nesting aliases"
                    .to_string(),
            ),
        ),
        LimitExceeded::Bytes { max, at } => Problem::at(
            Some(*at),
            format!(
                "the document expands to more than {} MiB of text through aliases (`*name`)",
                max / (1024 * 1024)
            ),
            Some(
                "every alias repeats the whole value its anchor (`&name`) marks; write the values out instead of repeating a long one"
                    .to_string(),
            ),
        ),
        LimitExceeded::Nodes { max, through_aliases: false, at } => Problem::at(
            Some(*at),
            format!("the document has more than {max} values"),
            Some("an inventory has a few thousand values; check that this file is the inventory".to_string()),
        ),
    }
}

fn duplicate_problem(d: &position::DuplicateKey) -> Problem {
    let within =
        if d.map.is_empty() { "at the top level".to_string() } else { format!("in `{}`", shown(&d.map)) };
    Problem::at(
        Some(d.again),
        format!(
            "key `{}` appears twice {within} (first at line {}, column {})",
            shown(&d.key),
            d.first.line,
            d.first.column
        ),
        Some(
            "keep one of them: only one value would be used, and YAML forbids a key twice in a mapping"
                .to_string(),
        ),
    )
}

/// Parses inventory text (no cross-field validation). Shape limits ([`position::Limits`]) are enforced
/// first; keys given twice are reported, not collapsed.
pub fn parse(path: &Path, text: &str) -> Result<Loaded, InventoryError> {
    let dir = base_dir(path);
    let scan = position::scan(text, &position::Limits::default());
    if let Some(limit) = &scan.limit {
        return Err(InventoryError::Invalid {
            path: display_path(path),
            problems: vec![limit_problem(limit)],
        });
    }
    let mut problems: Vec<Problem> = scan.duplicates.iter().map(duplicate_problem).collect();
    // Merge keys and `x-` fields are resolved in a tree of the document, which serde then reads as text
    // again; problems are placed by path, and the scan knows where merged values are written.
    let rewritten = if scan.syntax_error || scan.documents.len() > 1 {
        None
    } else {
        resolve_merges(text, &scan.positions, &mut problems)
    };
    let doc_text = rewritten.as_deref().unwrap_or(text);
    match serde_yaml::from_str::<Inventory>(doc_text) {
        Ok(inventory) => Ok(Loaded {
            inventory,
            path: path.to_owned(),
            dir,
            positions: scan.positions,
            parse_problems: problems,
            warnings: Vec::new(),
        }),
        Err(e) => {
            if scan.syntax_error {
                problems.push(syntax_problem(text, &e));
            } else if let Some(&second) = scan.documents.get(1) {
                problems.push(Problem::at(
                    Some(second),
                    "a second YAML document starts here: an inventory is one document",
                    Some(
                        "remove this `---` and what follows it, or move it to a file of its own".to_string(),
                    ),
                ));
            } else {
                // serde's own "duplicate field" names neither the key's position nor the first one; the
                // scan has reported it.
                let skip_duplicate = !scan.duplicates.is_empty();
                let relocated = rewritten.is_some();
                problems.extend(schema_problems(
                    doc_text,
                    &e,
                    &scan.positions,
                    skip_duplicate,
                    relocated,
                    &dir,
                ));
            }
            in_order(&mut problems);
            Err(InventoryError::Invalid { path: display_path(path), problems })
        }
    }
}

/// The document with its merge keys (`<<: *defaults`, `<<: [*a, *b]`) resolved and its top-level `x-`
/// fields (where anchors for merging are kept, as in Compose files) left out, as YAML text for serde; `None`
/// when it has neither (or does not read as a tree: the caller's parse then reports why). Merge keys follow
/// YAML's merge rule: a key written in the mapping wins, then the earlier of several merged mappings.
/// A merge key that names no mapping is reported and dropped.
fn resolve_merges(
    text: &str,
    positions: &position::Positions,
    problems: &mut Vec<Problem>,
) -> Option<String> {
    use serde_yaml::Value;
    if !text.contains("<<") && !text.contains("x-") {
        return None;
    }
    let Ok(Lenient(mut doc)) = serde_yaml::from_str::<Lenient>(text) else { return None };
    let mut changed = false;
    if let Value::Mapping(top) = &mut doc {
        let before = top.len();
        top.retain(|k, _| !matches!(k, Value::String(s) if s.starts_with("x-")));
        changed |= top.len() != before;
    }
    fn merge(
        v: &mut Value,
        path: &str,
        positions: &position::Positions,
        problems: &mut Vec<Problem>,
    ) -> bool {
        let mut changed = false;
        match v {
            Value::Mapping(m) => {
                for (k, child) in m.iter_mut() {
                    let name = key_text(k).unwrap_or_default();
                    let p = if path.is_empty() { name } else { format!("{path}.{name}") };
                    changed |= merge(child, &p, positions, problems);
                }
                let Some(sources) = m.shift_remove("<<") else { return changed };
                let at = if path.is_empty() { "<<".to_owned() } else { format!("{path}.<<") };
                let sources = match sources {
                    Value::Mapping(one) => vec![one],
                    Value::Sequence(items) if items.iter().all(Value::is_mapping) => items
                        .into_iter()
                        .filter_map(|i| if let Value::Mapping(x) = i { Some(x) } else { None })
                        .collect(),
                    _ => {
                        problems.push(Problem::at(
                            positions.find(&at),
                            "a merge key (`<<`) takes a mapping: an alias of one (`<<: *defaults`) or a list of them (`<<: [*a, *b]`)",
                            Some("anchor a mapping with `&defaults` and merge it with `<<: *defaults`".to_string()),
                        ));
                        return true;
                    }
                };
                for source in sources {
                    for (k, val) in source {
                        if !m.contains_key(&k) {
                            m.insert(k, val);
                        }
                    }
                }
                changed = true;
            }
            Value::Sequence(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    changed |= merge(item, &format!("{path}[{i}]"), positions, problems);
                }
            }
            _ => {}
        }
        changed
    }
    changed |= merge(&mut doc, "", positions, problems);
    if !changed {
        return None;
    }
    serde_yaml::to_string(&doc).ok()
}

/// A YAML document as a tree where a key given twice keeps its last value (the scan reports the duplicate),
/// so that schema problems can be looked for past the first one.
struct Lenient(serde_yaml::Value);

impl<'de> serde::Deserialize<'de> for Lenient {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde_yaml::Value;
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Lenient;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a YAML value")
            }
            fn visit_bool<E>(self, b: bool) -> Result<Lenient, E> {
                Ok(Lenient(Value::Bool(b)))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Lenient, E> {
                Ok(Lenient(Value::Number(n.into())))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Lenient, E> {
                Ok(Lenient(Value::Number(n.into())))
            }
            fn visit_f64<E>(self, n: f64) -> Result<Lenient, E> {
                Ok(Lenient(Value::Number(n.into())))
            }
            fn visit_str<E>(self, s: &str) -> Result<Lenient, E> {
                Ok(Lenient(Value::String(s.to_owned())))
            }
            fn visit_unit<E>(self) -> Result<Lenient, E> {
                Ok(Lenient(Value::Null))
            }
            fn visit_none<E>(self) -> Result<Lenient, E> {
                Ok(Lenient(Value::Null))
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Lenient, D::Error> {
                serde::Deserialize::deserialize(d)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut s: A) -> Result<Lenient, A::Error> {
                let mut v = Vec::new();
                while let Some(Lenient(x)) = s.next_element()? {
                    v.push(x);
                }
                Ok(Lenient(Value::Sequence(v)))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Lenient, A::Error> {
                let mut map = serde_yaml::Mapping::new();
                while let Some((Lenient(k), Lenient(v))) = m.next_entry()? {
                    map.insert(k, v);
                }
                Ok(Lenient(Value::Mapping(map)))
            }
        }
        d.deserialize_any(V)
    }
}

/// One step from a node to a child.
#[derive(Clone)]
enum Step {
    Key(serde_yaml::Value),
    Index(usize),
}

fn key_text(k: &serde_yaml::Value) -> Option<String> {
    match k {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The steps to the node at a serde_yaml path (`hosts[0].labels.example.com/zone`). Keys may contain `.`,
/// so at each mapping the longest key that fits is taken.
fn locate(root: &serde_yaml::Value, path: &str) -> Option<Vec<Step>> {
    let mut steps = Vec::new();
    let mut node = root;
    let mut rest = if path == "." { "" } else { path };
    while !rest.is_empty() {
        match node {
            serde_yaml::Value::Sequence(items) => {
                let inner = rest.strip_prefix('[')?;
                let close = inner.find(']')?;
                let i: usize = inner[..close].parse().ok()?;
                node = items.get(i)?;
                steps.push(Step::Index(i));
                rest = &inner[close + 1..];
            }
            serde_yaml::Value::Mapping(map) => {
                let (k, v, text) = map
                    .iter()
                    .filter_map(|(k, v)| key_text(k).map(|t| (k, v, t)))
                    .filter(|(_, _, t)| {
                        rest.strip_prefix(t.as_str())
                            .is_some_and(|r| r.is_empty() || r.starts_with(['.', '[']))
                    })
                    .max_by_key(|(_, _, t)| t.len())?;
                steps.push(Step::Key(k.clone()));
                node = v;
                rest = &rest[text.len()..];
            }
            _ => return None,
        }
        rest = rest.strip_prefix('.').unwrap_or(rest);
    }
    Some(steps)
}

fn walk<'a>(mut node: &'a mut serde_yaml::Value, steps: &[Step]) -> Option<&'a mut serde_yaml::Value> {
    for s in steps {
        node = match (s, node) {
            (Step::Index(i), serde_yaml::Value::Sequence(items)) => items.get_mut(*i)?,
            (Step::Key(k), serde_yaml::Value::Mapping(map)) => map.get_mut(k)?,
            _ => return None,
        };
    }
    Some(node)
}

/// What a schema error asks to change so that the search can go on past it.
enum Repair {
    /// Remove the key from the mapping at the path (an unknown field); when it is a misspelling of a field
    /// (`to`) that the mapping does not have, put its value there, so that the value is checked too.
    Remove { map: String, key: String, to: Option<String> },
    /// Put a stand-in at the path: remove it, then try an empty string, sequence, mapping (a value of the
    /// wrong type, or a missing field).
    StandIn { map: String, key: Option<String> },
    /// A single value where a list is wanted: read it as a list of that one value first (what the user
    /// meant, so that validation can check it), then stand in as for [`Repair::StandIn`].
    Wrap { map: String },
}

/// The path a serde_yaml message names and what to change there; `None` for messages it cannot act on.
fn repair_for(message: &str) -> Option<(String, Repair)> {
    let markers = [
        "unknown field `",
        "missing field `",
        "invalid type: ",
        "invalid value: ",
        "unknown variant `",
        "invalid length ",
    ];
    let (i, marker) =
        markers.iter().filter_map(|m| message.find(m).map(|i| (i, *m))).min_by_key(|(i, _)| *i)?;
    let path = message[..i].strip_suffix(": ").unwrap_or("").trim_end_matches('.').to_owned();
    let join = |k: &str| if path.is_empty() { k.to_owned() } else { format!("{path}.{k}") };
    let named = || message[i + marker.len()..].split('`').next().map(str::to_owned);
    match marker {
        "unknown field `" => {
            let key = named()?;
            let expected: Vec<&str> = message
                .split_once("expected ")
                .map(|(_, e)| e.split('`').skip(1).step_by(2).collect())
                .unwrap_or_default();
            let to = explain::suggest(&key, &expected, &[]).map(str::to_owned);
            Some((join(&key), Repair::Remove { map: path, key, to }))
        }
        "missing field `" => {
            let key = named()?;
            Some((join(&key), Repair::StandIn { map: path, key: Some(key) }))
        }
        _ if path.is_empty() => None,
        "invalid type: "
            if message.ends_with("expected a sequence")
                && message.contains("invalid type: string ")
                && explain::STRING_LISTS.iter().any(|k| path.ends_with(&format!(".{k}"))) =>
        {
            Some((path.clone(), Repair::Wrap { map: path }))
        }
        _ => Some((path.clone(), Repair::StandIn { map: path, key: None })),
    }
}

/// Applies `repair` for the `attempt`-th time; false when there is nothing left to try.
fn apply_repair(doc: &mut serde_yaml::Value, repair: &Repair, attempt: usize) -> bool {
    use serde_yaml::Value;
    if let Repair::Wrap { map } = repair {
        if attempt > 0 {
            return apply_repair(doc, &Repair::StandIn { map: map.clone(), key: None }, attempt - 1);
        }
        let Some(steps) = locate(doc, map) else { return false };
        let Some(node) = walk(doc, &steps) else { return false };
        let one = std::mem::take(node);
        *node = Value::Sequence(vec![one]);
        return true;
    }
    let (steps, key) = match repair {
        Repair::Remove { map, key, .. } | Repair::StandIn { map, key: Some(key) } => {
            (locate(doc, map), Some(Value::String(key.clone())))
        }
        Repair::Wrap { .. } => return false,
        Repair::StandIn { map, key: None } => match locate(doc, map) {
            Some(mut s) => match s.pop() {
                Some(Step::Key(k)) => (Some(s), Some(k)),
                Some(Step::Index(i)) => {
                    let stand_in = [
                        Value::String(String::new()),
                        Value::Sequence(Vec::new()),
                        Value::Mapping(Default::default()),
                    ];
                    let Some(v) = stand_in.get(attempt).cloned() else { return false };
                    return match walk(doc, &s) {
                        Some(Value::Sequence(items)) if i < items.len() => {
                            items[i] = v;
                            true
                        }
                        _ => false,
                    };
                }
                None => return false,
            },
            None => (None, None),
        },
    };
    let (Some(steps), Some(key)) = (steps, key) else { return false };
    let Some(Value::Mapping(map)) = walk(doc, &steps) else { return false };
    if let Repair::Remove { to, .. } = repair {
        if attempt != 0 {
            return false;
        }
        let Some(value) = map.shift_remove(&key) else { return false };
        if let Some(to) = to.clone().map(Value::String) {
            if !map.contains_key(&to) {
                map.insert(to, value);
            }
        }
        return true;
    }
    // A key that is there is first removed (its field may be optional), then replaced by stand-ins.
    let present = map.contains_key(&key);
    let rung = if present { attempt } else { attempt + 1 };
    match rung {
        0 => map.shift_remove(&key).is_some(),
        1..=3 => {
            let stand_in = match rung {
                1 => Value::String(String::new()),
                2 => Value::Sequence(Vec::new()),
                _ => Value::Mapping(Default::default()),
            };
            map.insert(key, stand_in);
            true
        }
        _ => false,
    }
}

/// Where a schema problem goes: by its path in the original text (which is also right when the text serde
/// read was rewritten, as for merge keys), else where serde stopped.
fn place(
    positions: &position::Positions,
    x: &explain::Explained,
    serde_at: Option<position::Pos>,
) -> Option<position::Pos> {
    let by_path = if x.path.is_empty() {
        None
    } else if x.at_key {
        positions.find_key(&x.path)
    } else {
        positions.find(&x.path)
    };
    by_path.or(serde_at).or_else(|| positions.root())
}

/// Whether `path` is `prefix` or lies under it.
fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix).is_some_and(|r| r.is_empty() || r.starts_with(['.', '[']))
}

/// Every schema problem (unknown fields, wrong types, missing fields), not only the first that serde meets,
/// and then every cross-field problem: after each schema problem the offending node is removed, wrapped
/// (`roles: worker` read as `[worker]`) or stood in for and the document is read again; once it reads,
/// the repaired inventory is validated, and what validation says about a stand-in (or about the host
/// counts, when a host's roles were stood in for) is left out as a consequence. Problems are placed by
/// their paths. The search is bounded in rounds and in text read.
fn schema_problems(
    text: &str,
    first: &serde_yaml::Error,
    positions: &position::Positions,
    skip_duplicate: bool,
    relocated: bool,
    dir: &Path,
) -> Vec<Problem> {
    let first_raw = explain::normalize(&first.to_string());
    let x = explain::explain(&first_raw);
    // serde's position is in the text it read, which is not the user's when merge keys were resolved.
    let serde_at =
        first.location().filter(|_| !relocated).map(|l| position::Pos { line: l.line(), column: l.column() });
    let mut problems = Vec::new();
    let duplicate = x.message.contains("duplicate field");
    if !(duplicate && skip_duplicate) {
        let pos = if duplicate { serde_at } else { place(positions, &x, serde_at) };
        problems.push(Problem::at(pos, x.message, x.hint));
    }
    let Ok(Lenient(mut doc)) = serde_yaml::from_str::<Lenient>(text) else { return problems };
    let mut attempts: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut pending = if duplicate { None } else { repair_for(&first_raw) };
    if pending.is_none() && !duplicate {
        return problems;
    }
    let mut budget = 2 * MAX_BYTES;
    // Paths where a stand-in was put.
    let mut stood_in: Vec<String> = Vec::new();
    // Unknown fields removed so far: (mapping path, key).
    let mut removed: Vec<(String, String)> = match &pending {
        Some((_, Repair::Remove { map, key, .. })) => vec![(map.clone(), key.clone())],
        _ => Vec::new(),
    };
    // Misspelt fields whose values were moved to the field meant: (written path, path of the field).
    let mut renamed: Vec<(String, String)> = Vec::new();
    let mut repaired = None;
    for _ in 0..4 * MAX_SHOWN {
        if let Some((mut target, mut repair)) = pending.take() {
            loop {
                if let Repair::Remove { map, key, to: Some(to) } = &repair {
                    let join = |k: &str| if map.is_empty() { k.to_owned() } else { format!("{map}.{k}") };
                    let taken = locate(&doc, &join(to)).is_some();
                    if !taken && !attempts.contains_key(&target) {
                        renamed.push((join(key), join(to)));
                    }
                }
                let n = attempts.entry(target.clone()).or_insert(0);
                if apply_repair(&mut doc, &repair, *n) {
                    // Wrapping a value in a list keeps it: only a stand-in is made up.
                    if matches!(repair, Repair::StandIn { .. })
                        || (*n > 0 && matches!(repair, Repair::Wrap { .. }))
                    {
                        stood_in.push(target);
                    }
                    *n += 1;
                    break;
                }
                // Nothing left to try here: stand in for the node that holds it (a section is optional,
                // a list item can be an empty mapping).
                let Some(cut) = target.rfind(['.', '[']) else { return problems };
                target.truncate(cut);
                repair = Repair::StandIn { map: target.clone(), key: None };
            }
        }
        let Ok(again) = serde_yaml::to_string(&doc) else { break };
        budget = budget.saturating_sub(again.len() as u64);
        if budget == 0 {
            break;
        }
        let e = match serde_yaml::from_str::<Inventory>(&again) {
            Ok(inv) => {
                repaired = Some(inv);
                break;
            }
            Err(e) => e,
        };
        let raw = explain::normalize(&e.to_string());
        let Some((target, mut repair)) = repair_for(&raw) else { break };
        // A stand-in is not the user's value: it is not wrapped in a list but stood in for again.
        if let Repair::Wrap { map } = &repair {
            if stood_in.iter().any(|p| p == &target) {
                repair = Repair::StandIn { map: map.clone(), key: None };
            }
        }
        // A field missing where a misspelling of it was removed is that misspelling's "did you mean".
        let misspelt = match &repair {
            Repair::StandIn { map, key: Some(key) } => removed
                .iter()
                .any(|(m, k)| m == map && strsim::jaro_winkler(&k.to_lowercase(), &key.to_lowercase()) > 0.8),
            _ => false,
        };
        if let Repair::Remove { map, key, .. } = &repair {
            removed.push((map.clone(), key.clone()));
        }
        // What a stand-in lacks (the fields of an empty mapping put in for a string) is no new problem.
        let inside_stand_in = stood_in.iter().any(|p| under(&target, p));
        if !attempts.contains_key(&target) && !misspelt && !inside_stand_in {
            // A new problem (not the consequence of a stand-in): placed by its path in the original text.
            let mut x = explain::explain(&raw);
            x.path = written_path(&x.path, &renamed);
            problems.push(Problem::at(place(positions, &x, None), x.message, x.hint));
        }
        pending = Some((target, repair));
    }
    if let Some(inv) = repaired {
        // Host counts (control planes, etcd members, workers) mean nothing once a host was stood in for.
        let hosts_made_up = stood_in.iter().any(|p| p == "hosts" || p.starts_with("hosts["));
        for p in validate::validate(&inv, dir) {
            let consequence = stood_in.iter().any(|s| under(&p.path, s) || (p.at_key && under(s, &p.path)))
                || (hosts_made_up && p.path == "hosts");
            if p.warning || consequence {
                continue;
            }
            let path = written_path(&p.path, &renamed);
            let pos = if p.at_key { positions.find_key(&path) } else { positions.find(&path) };
            problems.push(Problem::at(pos, p.message, p.hint));
        }
    }
    problems
}

/// The path as the user wrote it, for a path under a field whose misspelt key was corrected.
fn written_path(path: &str, renamed: &[(String, String)]) -> String {
    for (from, to) in renamed {
        if under(path, to) {
            return format!("{from}{}", &path[to.len()..]);
        }
    }
    path.to_owned()
}

/// A YAML syntax error. libyaml notices an unclosed quote or bracket only at the end of the file; the
/// problem is then placed where the construct it was reading starts, which is what has to be fixed.
fn syntax_problem(text: &str, e: &serde_yaml::Error) -> Problem {
    let raw = e.to_string();
    let (problem, rest) = raw.split_once(" at line ").unwrap_or((raw.as_str(), ""));
    let problem = clip_quoted(problem);
    // ", while parsing a flow sequence at line 7 column 12"
    let context = rest.split_once(", ").and_then(|(_, ctx)| {
        let (what, at) = ctx.split_once(" at line ")?;
        let (l, c) = at.split_once(" column ")?;
        Some((
            what.to_owned(),
            position::Pos { line: l.trim().parse().ok()?, column: c.trim().parse().ok()? },
        ))
    });
    let loc = e.location();
    let at_end = loc.as_ref().is_some_and(|l| l.index() >= text.trim_end().len());
    let tab = loc.as_ref().is_some_and(|l| text[l.index().min(text.len())..].starts_with('\t'));
    match context {
        Some((what, start)) if at_end => {
            let what = what
                .trim_start_matches("while ")
                .trim_start_matches("scanning ")
                .trim_start_matches("parsing ");
            let what = what.strip_prefix("a ").or_else(|| what.strip_prefix("an ")).unwrap_or(what);
            Problem::at(
                Some(start),
                format!("the {what} that starts here is not closed before the end of the file ({problem})"),
                Some("close it (a quote, `]` or `}`) where it should end; the lines after it were read as part of it".to_string()),
            )
        }
        ctx => Problem {
            line: loc.as_ref().map(|l| l.line()),
            column: loc.as_ref().map(|l| l.column()),
            message: match ctx {
                Some((what, start)) => {
                    format!("{problem} ({what} at line {}, column {})", start.line, start.column)
                }
                None => problem,
            },
            hint: tab.then(|| "indent with spaces: YAML does not allow tabs in indentation".to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echoed_values_are_clipped_and_control_characters_escaped() {
        assert_eq!(shown("short"), "short");
        assert_eq!(shown(&"é".repeat(100)), format!("{}…", "é".repeat(80)));
        let long = "k".repeat(200);
        assert_eq!(
            clip_quoted(&format!("unknown field `{long}`, x")),
            format!("unknown field `{}…`, x", "k".repeat(80))
        );
        assert_eq!(printable("a\nb\u{1b}[0m"), "a\\nb\\u{1b}[0m");
    }

    #[test]
    fn unknown_field_gets_a_suggestion() {
        let text = "cluster:\n  name: a\n  kubernetesVersion: v1.35.7\n  podCidr: 10.0.0.0/16\nhosts: []\n";
        let err = parse(Path::new("inv.yaml"), text).unwrap_err();
        let InventoryError::Invalid { problems, .. } = err else { panic!() };
        assert_eq!(problems[0].line, Some(4));
        assert_eq!(problems[0].message, "unknown field `podCidr` in `cluster`");
        assert!(
            problems[0].hint.as_deref().unwrap().starts_with("did you mean `podCIDR`?"),
            "{:?}",
            problems[0].hint
        );
    }

    #[test]
    fn a_streamed_inventory_resolves_paths_and_its_pki_store_in_the_current_directory() {
        for stream in ["-", "/dev/fd/63", "/proc/self/fd/0"] {
            assert!(is_stream(Path::new(stream)), "{stream}");
            assert_eq!(base_dir(Path::new(stream)), Path::new("."), "{stream}");
            assert_eq!(
                crate::pki::resolve_root(Path::new(stream), None).unwrap(),
                Path::new("./pki"),
                "{stream}"
            );
        }
        assert!(!is_stream(Path::new("inventories/ha.yaml")));
        assert_eq!(base_dir(Path::new("inventories/ha.yaml")), Path::new("inventories"));
        assert_eq!(base_dir(Path::new("ha.yaml")), Path::new("."));
        assert_eq!(
            crate::pki::resolve_root(Path::new("inventories/ha.yaml"), None).unwrap(),
            Path::new("inventories/pki")
        );
        assert_eq!(
            crate::pki::resolve_root(Path::new("-"), Some(Path::new("/x/pki"))).unwrap(),
            Path::new("/x/pki")
        );
    }

    #[test]
    fn merge_keys_read_as_the_mappings_written_out() {
        let merged = "x-defaults: &d\n  roles: [worker]\n  labels: {zone: a}\nx-more: &m\n  labels: {zone: b}\n  arch: arm64\n\
            cluster: {name: demo, kubernetesVersion: v1.35.7}\nhosts:\n\
            - {name: cp1, address: 10.0.0.1, roles: [control-plane, etcd, worker]}\n\
            - {<<: [*d, *m], name: w1, address: 10.0.0.2}\n\
            - {<<: *d, name: w2, address: 10.0.0.3, roles: [etcd]}\n";
        let written = "cluster: {name: demo, kubernetesVersion: v1.35.7}\nhosts:\n\
            - {name: cp1, address: 10.0.0.1, roles: [control-plane, etcd, worker]}\n\
            - {name: w1, address: 10.0.0.2, roles: [worker], labels: {zone: a}, arch: arm64}\n\
            - {name: w2, address: 10.0.0.3, roles: [etcd], labels: {zone: a}}\n";
        let a = parse(Path::new("m.yaml"), merged).unwrap();
        let b = parse(Path::new("w.yaml"), written).unwrap();
        assert_eq!(a.inventory, b.inventory);
        assert!(a.parse_problems.is_empty(), "{:?}", a.parse_problems);
        // `x-` is only skipped at the top level.
        let err = parse(Path::new("m.yaml"), &merged.replace("arch: arm64", "x-arch: arm64")).unwrap_err();
        let InventoryError::Invalid { problems, .. } = err else { panic!() };
        assert_eq!(problems[0].message, "unknown field `x-arch` in `hosts[1]`");
        assert_eq!((problems[0].line, problems[0].column), (Some(6), Some(3)));
    }
}
