//! The inventory: loading a YAML file into [`schema::Inventory`] and validating it before anything touches a
//! machine. Every problem is reported with file, line and column, what is wrong and how to fix it.

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
    /// The path names a directory, FIFO, device or socket: reading it could block or never end.
    #[error("inventory {path} is {kind}, not a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
        /// `a directory`, `a FIFO (named pipe)`, `a character device`, ...
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
    /// The directory relative paths in it resolve against.
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
        eprint!("{}", render_warnings(path, &warnings));
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
    problems.sort_by_key(|p| (p.line, p.column));
    (Err(InventoryError::Invalid { path: path.to_owned(), problems }), warnings)
}

/// Reads an inventory file: a regular file of at most [`MAX_BYTES`] of UTF-8. The file is opened without
/// blocking and checked before anything is read, so a FIFO or `/dev/zero` is refused at once.
pub fn read(path: &Path) -> Result<String, InventoryError> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let io = |source| InventoryError::Read { path: path.to_owned(), source };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    let t = meta.file_type();
    let kind = if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        Some("not a file")
    };
    if let Some(kind) = kind {
        return Err(InventoryError::NotAFile { path: path.to_owned(), kind });
    }
    if meta.len() > MAX_BYTES {
        return Err(InventoryError::TooLarge { path: path.to_owned() });
    }
    let mut bytes = Vec::new();
    // The size can change between the check and the read; the limit holds either way.
    file.take(MAX_BYTES + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(InventoryError::TooLarge { path: path.to_owned() });
    }
    String::from_utf8(bytes).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = good.len() - good.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) + 1;
        InventoryError::NotText { path: path.to_owned(), line, column }
    })
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
    let dir = path
        .parent()
        .map(|d| if d.as_os_str().is_empty() { Path::new(".") } else { d })
        .unwrap_or(Path::new("."))
        .to_owned();
    let scan = position::scan(text, &position::Limits::default());
    if let Some(limit) = &scan.limit {
        return Err(InventoryError::Invalid { path: path.to_owned(), problems: vec![limit_problem(limit)] });
    }
    let duplicates: Vec<Problem> = scan.duplicates.iter().map(duplicate_problem).collect();
    match serde_yaml::from_str::<Inventory>(text) {
        Ok(inventory) => Ok(Loaded {
            inventory,
            path: path.to_owned(),
            dir,
            positions: scan.positions,
            parse_problems: duplicates,
            warnings: Vec::new(),
        }),
        Err(e) => {
            let mut problems = duplicates;
            let (message, hint) = explain_serde_error(&e);
            // serde's own "duplicate field" names neither the key's position nor the first one.
            if problems.is_empty() || !message.contains("duplicate field") {
                problems.push(Problem {
                    line: e.location().map(|l| l.line()),
                    column: e.location().map(|l| l.column()),
                    message,
                    hint,
                });
            }
            problems.sort_by_key(|p| (p.line, p.column));
            Err(InventoryError::Invalid { path: path.to_owned(), problems })
        }
    }
}

/// Turns serde_yaml's message into ours: no duplicated position, and a "did you mean" for unknown fields.
fn explain_serde_error(e: &serde_yaml::Error) -> (String, Option<String>) {
    let mut msg = e.to_string();
    if let Some(cut) = msg.find(" at line ") {
        msg.truncate(cut);
    }
    let msg = clip_quoted(&msg);
    // serde: "<path>: unknown field `x`, expected one of `a`, `b`" or "expected `a` or `b`".
    if let Some(i) = msg.find("unknown field `") {
        let rest = &msg[i + "unknown field `".len()..];
        let field = rest.split('`').next().unwrap_or("").to_owned();
        let expected: Vec<String> = rest
            .split('`')
            .skip(1)
            .enumerate()
            .filter(|(k, _)| k % 2 == 1)
            .map(|(_, s)| s.to_owned())
            .collect();
        let where_ = msg[..i].trim_end_matches([':', ' ']).to_owned();
        let message = if where_.is_empty() || where_ == "." {
            format!("unknown field `{field}`")
        } else {
            format!("unknown field `{field}` in `{where_}`")
        };
        let best = expected
            .iter()
            .map(|c| (strsim::jaro_winkler(&c.to_lowercase(), &field.to_lowercase()), c))
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .filter(|(score, _)| *score > 0.8)
            .map(|(_, c)| c.clone());
        let list = expected.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ");
        let hint = match best {
            Some(b) => format!("did you mean `{b}`? Valid fields here: {list}"),
            None => format!("valid fields here: {list}"),
        };
        return (message, Some(hint));
    }
    if let Some(i) = msg.find("missing field `") {
        let field = msg[i..].to_owned();
        let where_ = msg[..i].trim_end_matches([':', ' ']);
        let message = if where_.is_empty() { field } else { format!("{field} in `{where_}`") };
        return (message, Some("add the field; see inventories/ for complete examples".into()));
    }
    (msg, None)
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
}
