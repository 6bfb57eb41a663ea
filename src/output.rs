//! How reporting commands print: `-o/--output table|json|yaml` on every command that reports (status,
//! audit, check, validate, version, `certs check-expiration`, plans). A *format* is `-o`; a *file* a
//! command writes is always `--out`.
//!
//! One JSON schema style for every document: camelCase keys, a `kind` naming the document
//! (`Status`, `Audit`, `Check`, `Validation`, `Version`, `CertificateExpiration`) and an `apiVersion`
//! (`kubeforge/v1`), so tools can tell what they read. YAML is the same document.

use crate::{Error, Result};
use serde::Serialize;

/// The version of every JSON/YAML document kubeforge prints.
pub const API_VERSION: &str = "kubeforge/v1";

/// How a reporting command prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    #[default]
    Table,
    /// A JSON document for tools.
    Json,
    /// The same document as YAML.
    Yaml,
}

impl Format {
    /// True for the machine-readable formats.
    pub fn is_document(self) -> bool {
        !matches!(self, Format::Table)
    }
}

/// A document with its `apiVersion` and `kind` in front of the command's own fields.
#[derive(Serialize)]
struct Envelope<'a, T: Serialize> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'a str,
    #[serde(flatten)]
    body: &'a T,
}

/// Renders `body` as a `kind` document in `format` (JSON or YAML; `Table` is the caller's own).
pub fn render<T: Serialize>(format: Format, kind: &str, body: &T) -> Result<String> {
    let doc = Envelope { api_version: API_VERSION, kind, body };
    match format {
        Format::Json => serde_json::to_string_pretty(&doc)
            .map(|s| s + "\n")
            .map_err(|e| Error::msg(format!("cannot render the {kind} document as JSON: {e}"), None)),
        Format::Yaml => serde_yaml::to_string(&doc)
            .map_err(|e| Error::msg(format!("cannot render the {kind} document as YAML: {e}"), None)),
        Format::Table => Err(Error::msg(format!("the {kind} table is printed by its command"), None)),
    }
}

/// Prints `body` as a `kind` document in `format` on standard output.
pub fn print<T: Serialize>(format: Format, kind: &str, body: &T) -> Result<()> {
    print!("{}", render(format, kind, body)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Body {
        cluster_name: &'static str,
        healthy: bool,
    }

    #[test]
    fn documents_carry_their_kind_and_version_in_both_formats() {
        let b = Body { cluster_name: "c", healthy: true };
        let json: serde_json::Value =
            serde_json::from_str(&render(Format::Json, "Status", &b).unwrap()).unwrap();
        assert_eq!(json["apiVersion"], API_VERSION);
        assert_eq!(json["kind"], "Status");
        assert_eq!(json["clusterName"], "c");
        let yaml: serde_json::Value =
            serde_yaml::from_str(&render(Format::Yaml, "Status", &b).unwrap()).unwrap();
        assert_eq!(yaml, json);
        assert!(render(Format::Table, "Status", &b).is_err());
    }
}
