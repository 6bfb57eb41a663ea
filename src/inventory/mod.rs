//! The inventory: loading a YAML file into [`schema::Inventory`] and validating it before anything touches a
//! machine. Every problem is reported with file, line and column, what is wrong and how to fix it.

pub mod schema;

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

/// Reads and parses an inventory file (no cross-field validation yet).
pub fn load(path: &Path) -> Result<Inventory, InventoryError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| InventoryError::Read { path: path.to_owned(), source })?;
    serde_yaml::from_str(&text).map_err(|e| InventoryError::Invalid {
        path: path.to_owned(),
        problems: vec![Problem {
            line: e.location().map(|l| l.line()),
            column: e.location().map(|l| l.column()),
            message: e.to_string(),
            hint: None,
        }],
    })
}
