//! The inventory: loading a YAML file into [`schema::Inventory`] and validating it before anything touches a
//! machine. Every problem is reported with file, line and column, what is wrong and how to fix it.

pub mod init;
pub mod position;
pub mod schema;
pub mod validate;

pub use schema::*;

use std::path::{Path, PathBuf};

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
    /// The hint of the first problem (each problem's own hint is already printed with it).
    pub fn hint(&self) -> Option<String> {
        None
    }
}

fn render_problems(path: &Path, problems: &[Problem]) -> String {
    let mut out = format!(
        "{} has {} problem{}",
        path.display(),
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        let loc = match (p.line, p.column) {
            (Some(l), Some(c)) => format!("{}:{l}:{c}", path.display()),
            (Some(l), None) => format!("{}:{l}", path.display()),
            _ => path.display().to_string(),
        };
        out.push_str(&format!("\n  {loc}: {}", p.message));
        if let Some(h) = &p.hint {
            out.push_str(&format!("\n    fix: {h}"));
        }
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
}

/// Reads, parses and validates an inventory file; every problem is reported at once.
pub fn load(path: &Path) -> Result<Loaded, InventoryError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| InventoryError::Read { path: path.to_owned(), source })?;
    let loaded = parse(path, &text)?;
    let problems = validate::validate(&loaded.inventory, &loaded.dir);
    if problems.is_empty() {
        return Ok(loaded);
    }
    let mut problems: Vec<Problem> = problems
        .into_iter()
        .map(|p| {
            let pos =
                if p.at_key { loaded.positions.find_key(&p.path) } else { loaded.positions.find(&p.path) };
            Problem {
                line: pos.map(|p| p.line),
                column: pos.map(|p| p.column),
                message: p.message,
                hint: p.hint,
            }
        })
        .collect();
    problems.sort_by_key(|p| (p.line, p.column));
    Err(InventoryError::Invalid { path: path.to_owned(), problems })
}

/// Parses inventory text (no cross-field validation).
pub fn parse(path: &Path, text: &str) -> Result<Loaded, InventoryError> {
    let dir = path
        .parent()
        .map(|d| if d.as_os_str().is_empty() { Path::new(".") } else { d })
        .unwrap_or(Path::new("."))
        .to_owned();
    match serde_yaml::from_str::<Inventory>(text) {
        Ok(inventory) => {
            Ok(Loaded { inventory, path: path.to_owned(), dir, positions: position::Positions::index(text) })
        }
        Err(e) => {
            let (message, hint) = explain_serde_error(&e);
            Err(InventoryError::Invalid {
                path: path.to_owned(),
                problems: vec![Problem {
                    line: e.location().map(|l| l.line()),
                    column: e.location().map(|l| l.column()),
                    message,
                    hint,
                }],
            })
        }
    }
}

/// Turns serde_yaml's message into ours: no duplicated position, and a "did you mean" for unknown fields.
fn explain_serde_error(e: &serde_yaml::Error) -> (String, Option<String>) {
    let mut msg = e.to_string();
    if let Some(cut) = msg.find(" at line ") {
        msg.truncate(cut);
    }
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
