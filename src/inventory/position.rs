//! Source positions of every node in a YAML document, by path (`hosts[1].roles[0]`), so that a validation
//! problem found on the typed inventory can name the line and column the user has to edit.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    /// Line, from 1.
    pub line: usize,
    /// Column, from 1.
    pub column: usize,
}

/// Positions of values and keys by path.
#[derive(Debug, Default, Clone)]
pub struct Positions {
    values: HashMap<String, Pos>,
    keys: HashMap<String, Pos>,
}

impl Positions {
    /// Indexes a YAML text. A text that does not parse yields an empty index (serde reports the syntax error).
    pub fn index(text: &str) -> Self {
        let mut rec = Recorder::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut rec, false).is_err() {
            return Positions::default();
        }
        rec.positions
    }

    /// The position of the value at `path`, else of its key, else of the nearest ancestor that has one.
    pub fn find(&self, path: &str) -> Option<Pos> {
        let mut p = path.to_owned();
        loop {
            if let Some(pos) = self.values.get(&p).or_else(|| self.keys.get(&p)) {
                return Some(*pos);
            }
            p = parent(&p)?;
        }
    }

    /// The position of the key of `path` (for "this field should not be here"), else [`Self::find`].
    pub fn find_key(&self, path: &str) -> Option<Pos> {
        self.keys.get(path).copied().or_else(|| self.find(path))
    }
}

fn parent(path: &str) -> Option<String> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '['])?;
    Some(path[..cut].to_owned())
}

enum Frame {
    Map { path: String, key: Option<(String, Pos)>, keys_seen: usize },
    Seq { path: String, next: usize },
}

#[derive(Default)]
struct Recorder {
    stack: Vec<Frame>,
    positions: Positions,
}

impl Recorder {
    /// Path of the node that starts now, and whether it is a mapping key. Advances the parent's state.
    fn begin_node(&mut self, mark: Marker, scalar: Option<&str>) -> Option<String> {
        let pos = Pos { line: mark.line(), column: mark.col() + 1 };
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                self.positions.values.insert(p.clone(), pos);
                Some(p)
            }
            Some(Frame::Map { path, key, keys_seen }) => match key.take() {
                None => {
                    // This node is a key. Complex keys (maps as keys) are not used by the inventory.
                    let name = scalar.unwrap_or("?").to_owned();
                    let full = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
                    self.positions.keys.insert(full, pos);
                    // The parser marks a block mapping's start after its first key has been scanned, so the
                    // first key is the better anchor for the mapping itself.
                    if *keys_seen == 0 && !path.is_empty() {
                        self.positions.values.insert(path.clone(), pos);
                    }
                    *keys_seen += 1;
                    *key = Some((name, pos));
                    None
                }
                Some((name, _)) => {
                    let p = if path.is_empty() { name } else { format!("{path}.{name}") };
                    self.positions.values.insert(p.clone(), pos);
                    Some(p)
                }
            },
        }
    }
}

impl MarkedEventReceiver for Recorder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => {
                self.begin_node(mark, Some(&value));
            }
            Event::Alias(_) => {
                self.begin_node(mark, None);
            }
            Event::MappingStart(..) => {
                let path = self.begin_node(mark, None).unwrap_or_default();
                self.stack.push(Frame::Map { path, key: None, keys_seen: 0 });
            }
            Event::SequenceStart(..) => {
                let path = self.begin_node(mark, None).unwrap_or_default();
                self.stack.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_to_lines() {
        let text = "cluster:\n  name: demo\nhosts:\n  - name: a\n    roles: [worker, etcd]\n  - name: b\n    labels:\n      x: y\n";
        let p = Positions::index(text);
        assert_eq!(p.find("cluster.name"), Some(Pos { line: 2, column: 9 }));
        assert_eq!(p.find("hosts[1].name"), Some(Pos { line: 6, column: 11 }));
        assert_eq!(p.find("hosts[0].roles[1]"), Some(Pos { line: 5, column: 21 }));
        assert_eq!(p.find("hosts[1].labels.x"), Some(Pos { line: 8, column: 10 }));
        assert_eq!(p.find_key("hosts[1].labels"), Some(Pos { line: 7, column: 5 }));
        // A path that does not exist falls back to its nearest ancestor.
        assert_eq!(p.find("hosts[1].taints[3]"), Some(Pos { line: 6, column: 5 }));
    }
}
