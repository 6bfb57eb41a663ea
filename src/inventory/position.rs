//! Source positions of every node in a YAML document, by path (`hosts[1].roles[0]`), so that a validation
//! problem found on the typed inventory can name the line and column the user has to edit. The same single
//! pass finds duplicate keys (which serde would silently collapse in maps) and enforces [`Limits`] on the
//! document's shape before any other parser sees it.

use std::collections::HashMap;
use yaml_rust2::parser::{Event, Parser};
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
    /// Where values that an alias (`*name`) or a merge key (`<<: *name`) brings in are written: at their
    /// anchor. A key written in the mapping itself wins over one merged into it.
    merged_values: HashMap<String, Pos>,
    merged_keys: HashMap<String, Pos>,
    root: Option<Pos>,
}

impl Positions {
    /// Indexes a YAML text. A text that does not parse yields an empty index (serde reports the syntax error).
    pub fn index(text: &str) -> Self {
        scan(text, &Limits::default()).positions
    }

    /// The position of the value at `path`, else of its key, else of the nearest ancestor that has one.
    pub fn find(&self, path: &str) -> Option<Pos> {
        let mut p = path.to_owned();
        loop {
            if let Some(pos) = self
                .values
                .get(&p)
                .or_else(|| self.keys.get(&p))
                .or_else(|| self.merged_values.get(&p))
                .or_else(|| self.merged_keys.get(&p))
            {
                return Some(*pos);
            }
            p = parent(&p)?;
        }
    }

    /// Where the document's top-level node starts (line 1, column 1 for an empty text).
    pub fn root(&self) -> Option<Pos> {
        Some(self.root.unwrap_or(Pos { line: 1, column: 1 }))
    }

    /// The position of the key of `path` (for "this field should not be here"), else [`Self::find`].
    pub fn find_key(&self, path: &str) -> Option<Pos> {
        self.keys.get(path).or_else(|| self.merged_keys.get(path)).copied().or_else(|| self.find(path))
    }
}

/// Bounds on the shape of a document, checked while it is scanned, before serde sees it: the event parsers
/// take time quadratic in the nesting depth, and an alias (`*a`) makes the deserializer walk its anchored
/// node again, so a few kilobytes of anchors can stand for billions of nodes.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Deepest nesting of mappings and sequences.
    pub max_depth: usize,
    /// Most nodes, counting every node an alias repeats.
    pub max_nodes: u64,
    /// Most bytes of scalar text, counting what aliases repeat: one long value repeated through many
    /// aliases is a handful of nodes but as many copies in memory.
    pub max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_depth: 64, max_nodes: 1_000_000, max_bytes: 16 * 1024 * 1024 }
    }
}

/// A limit the document exceeded; scanning stopped there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitExceeded {
    /// Nesting deeper than [`Limits::max_depth`].
    Depth {
        /// The limit.
        max: usize,
        /// The node that went past it.
        at: Pos,
    },
    /// More nodes than [`Limits::max_nodes`].
    Nodes {
        /// The limit.
        max: u64,
        /// Whether aliases contributed (an alias bomb rather than a large file).
        through_aliases: bool,
        /// The node (often an alias) that went past it.
        at: Pos,
    },
    /// More scalar text than [`Limits::max_bytes`], which only aliases can produce from a file within
    /// [`crate::inventory::MAX_BYTES`].
    Bytes {
        /// The limit.
        max: u64,
        /// The node (often an alias) that went past it.
        at: Pos,
    },
}

/// A key that appears twice in one mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuplicateKey {
    /// Path of the mapping (`hosts[0].labels`, empty for the top level).
    pub map: String,
    /// The key.
    pub key: String,
    /// Where it first appears.
    pub first: Pos,
    /// Where it appears again.
    pub again: Pos,
}

/// What scanning a document found: positions, duplicate keys and whether a limit was exceeded.
#[derive(Debug, Default, Clone)]
pub struct Scan {
    /// Positions of keys and values (empty when the text does not parse).
    pub positions: Positions,
    /// Keys that appear twice in one mapping, in document order.
    pub duplicates: Vec<DuplicateKey>,
    /// The first limit exceeded, if any.
    pub limit: Option<LimitExceeded>,
    /// Whether the event parser reported a syntax error (serde then reports it in its own words).
    pub syntax_error: bool,
    /// Where each YAML document of the stream starts (an inventory is one).
    pub documents: Vec<Pos>,
}

/// Scans a YAML text once, event by event, stopping at the first exceeded limit. Time is linear in the
/// text for documents within the limits.
pub fn scan(text: &str, limits: &Limits) -> Scan {
    if let Some(at) = flow_depth_exceeded(text, limits.max_depth) {
        return Scan { limit: Some(LimitExceeded::Depth { max: limits.max_depth, at }), ..Scan::default() };
    }
    let mut rec = Recorder { limits: *limits, ..Recorder::default() };
    let mut parser = Parser::new_from_str(text);
    loop {
        match parser.next_token() {
            Ok((Event::StreamEnd, _)) => break,
            Ok((ev, mark)) => {
                rec.on_event(ev, mark);
                if rec.limit.is_some() {
                    break;
                }
            }
            Err(_) => {
                return Scan {
                    positions: Positions::default(),
                    duplicates: rec.duplicates,
                    limit: None,
                    syntax_error: true,
                    documents: rec.documents,
                }
            }
        }
    }
    Scan {
        positions: rec.positions,
        duplicates: rec.duplicates,
        limit: rec.limit,
        syntax_error: false,
        documents: rec.documents,
    }
}

/// Where flow brackets (`[`, `{`) first nest deeper than `max`, by a lexical pass over the text.
///
/// Both YAML parsers look ahead across a whole flow collection that could be a mapping key (`[[[...]]]`)
/// and re-check every open bracket on each token, so they take time quadratic in the nesting before
/// they produce the first event; this pass bounds that first. It counts a bracket only where a token can
/// start (not inside plain scalars such as `a[0]`), and skips quoted scalars and comments; it may
/// over-count inside block scalars, which an inventory does not use.
fn flow_depth_exceeded(text: &str, max: usize) -> Option<Pos> {
    let mut depth = 0usize;
    let (mut line, mut col) = (1usize, 0usize);
    let mut token_start = true; // at the start of a line, or after whitespace or an indicator
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        col += 1;
        match c {
            '\n' => {
                line += 1;
                col = 0;
                token_start = true;
                continue;
            }
            '#' if token_start => {
                // A comment runs to the end of the line.
                while chars.peek().is_some_and(|&n| n != '\n') {
                    chars.next();
                }
                continue;
            }
            '\'' | '"' if token_start => {
                // A quoted scalar, which may span lines: `''` and `\"` do not close it.
                let quote = c;
                while let Some(q) = chars.next() {
                    col += 1;
                    if q == '\n' {
                        line += 1;
                        col = 0;
                    } else if quote == '"' && q == '\\' {
                        if chars.next() == Some('\n') {
                            line += 1;
                            col = 0;
                        } else {
                            col += 1;
                        }
                    } else if q == quote {
                        if quote == '\'' && chars.peek() == Some(&'\'') {
                            chars.next();
                            col += 1;
                        } else {
                            break;
                        }
                    }
                }
                token_start = false;
                continue;
            }
            '[' | '{' if token_start => {
                depth += 1;
                if depth > max {
                    return Some(Pos { line, column: col });
                }
            }
            ']' | '}' if depth > 0 => depth -= 1,
            _ => {}
        }
        token_start = c.is_whitespace() || matches!(c, '[' | '{' | ',' | ':' | '-' | '?' | ']' | '}');
    }
    None
}

/// Whether `path` is the value of a merge key (`x.<<`, or `<<` at the top).
fn is_merge(path: &str) -> bool {
    path == "<<" || path.ends_with(".<<")
}

/// The mapping a merge key at `path` merges into.
fn merge_target(path: &str) -> String {
    path.strip_suffix(".<<").unwrap_or("").to_owned()
}

fn parent(path: &str) -> Option<String> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '['])?;
    Some(path[..cut].to_owned())
}

enum Frame {
    Map { path: String, key: Option<(String, Pos)>, keys_seen: usize, seen: HashMap<String, Pos> },
    Seq { path: String, next: usize },
}

/// An open collection's node count (with what its aliases repeat) and anchor, for alias expansion.
struct Size {
    nodes: u64,
    bytes: u64,
    anchor: usize,
}

#[derive(Default)]
struct Recorder {
    stack: Vec<Frame>,
    sizes: Vec<Size>,
    positions: Positions,
    duplicates: Vec<DuplicateKey>,
    limits: Limits,
    limit: Option<LimitExceeded>,
    /// Expanded size of each anchored node (nodes, scalar bytes), by anchor id.
    anchors: HashMap<usize, (u64, u64)>,
    /// Nodes so far, counting what aliases repeat.
    nodes: u64,
    /// Scalar bytes so far, counting what aliases repeat.
    bytes: u64,
    /// Where each document starts.
    documents: Vec<Pos>,
    aliased: bool,
    /// Every position recorded while an anchored node is open: (path, is a key, where).
    log: Vec<(String, bool, Pos)>,
    /// Anchored collections still open: (anchor id, path, where their entries start in `log`).
    open_anchors: Vec<(usize, String, usize)>,
    /// The positions inside each anchored node, by anchor id, with paths relative to the node.
    anchored: HashMap<usize, Vec<(String, bool, Pos)>>,
    /// Positions copied for aliases so far (see [`MAX_COPIED`]).
    copied: usize,
}

/// Most positions copied for aliases: a real inventory merges a few hundred values; an alias bomb would
/// copy millions before the node limit stops it. Past this, values an alias brings in are placed at the
/// alias.
const MAX_COPIED: usize = 20_000;

impl Recorder {
    /// Records where the value (or key) at `path` is written; `first` keeps an earlier position.
    fn put(&mut self, path: String, key: bool, pos: Pos, first: bool) {
        if !self.open_anchors.is_empty() {
            self.log.push((path.clone(), key, pos));
        }
        let map = if key { &mut self.positions.keys } else { &mut self.positions.values };
        if first {
            map.entry(path).or_insert(pos);
        } else {
            map.insert(path, pos);
        }
    }

    /// Positions brought to `to` by an alias of anchor `id`: what is written inside the anchored node, at
    /// `to` plus its path inside it. For a merge key, `to` is the mapping that holds `<<`.
    fn copy_anchored(&mut self, id: usize, to: &str) {
        let Some(entries) = self.anchored.get(&id) else { return };
        if self.copied + entries.len() > MAX_COPIED {
            return;
        }
        self.copied += entries.len();
        for (rel, key, pos) in entries.clone() {
            if rel.is_empty() {
                continue;
            }
            let path =
                if to.is_empty() { rel.trim_start_matches('.').to_owned() } else { format!("{to}{rel}") };
            if !self.open_anchors.is_empty() {
                self.log.push((path.clone(), key, pos));
            }
            let map = if key { &mut self.positions.merged_keys } else { &mut self.positions.merged_values };
            map.entry(path).or_insert(pos);
        }
    }

    /// Path of the node that starts now, and whether it is a mapping key. Advances the parent's state.
    fn begin_node(&mut self, mark: Marker, scalar: Option<&str>) -> Option<String> {
        let pos = Pos { line: mark.line(), column: mark.col() + 1 };
        match self.stack.last_mut() {
            None => {
                self.positions.root.get_or_insert(pos);
                Some(String::new())
            }
            Some(Frame::Seq { path, next }) => {
                let p = format!("{path}[{next}]");
                *next += 1;
                self.put(p.clone(), false, pos, false);
                Some(p)
            }
            Some(Frame::Map { path, key, keys_seen, seen }) => match key.take() {
                None => {
                    // This node is a key. Complex keys (maps as keys) are not used by the inventory.
                    let name = scalar.unwrap_or("?").to_owned();
                    let full = if path.is_empty() { name.clone() } else { format!("{path}.{name}") };
                    let mut record = Vec::new();
                    if let Some(s) = scalar {
                        match seen.get(s) {
                            Some(first) => self.duplicates.push(DuplicateKey {
                                map: path.clone(),
                                key: s.to_owned(),
                                first: *first,
                                again: pos,
                            }),
                            None => {
                                seen.insert(s.to_owned(), pos);
                                record.push((full, true));
                            }
                        }
                    }
                    // The parser marks a block mapping's start after its first key has been scanned, so the
                    // first key is the better anchor for the mapping itself.
                    if *keys_seen == 0 && !path.is_empty() {
                        record.push((path.clone(), false));
                    }
                    *keys_seen += 1;
                    *key = Some((name, pos));
                    for (p, is_key) in record {
                        self.put(p, is_key, pos, false);
                    }
                    None
                }
                Some((name, _)) => {
                    let p = if path.is_empty() { name } else { format!("{path}.{name}") };
                    // A duplicate key's value must not move the first one's position.
                    self.put(p.clone(), false, pos, true);
                    Some(p)
                }
            },
        }
    }

    /// Counts a finished node of `nodes` nodes and `bytes` bytes of scalar text (more than one node for an
    /// alias or a collection).
    fn count(&mut self, nodes: u64, bytes: u64, anchor: usize, leaf: bool, mark: Marker) {
        if anchor != 0 {
            self.anchors.insert(anchor, (nodes, bytes));
        }
        if let Some(parent) = self.sizes.last_mut() {
            parent.nodes = parent.nodes.saturating_add(nodes);
            parent.bytes = parent.bytes.saturating_add(bytes);
        }
        // A collection's nodes were counted as they came; only leaves (and aliases) add to the total.
        if leaf {
            self.nodes = self.nodes.saturating_add(nodes);
            self.bytes = self.bytes.saturating_add(bytes);
        } else {
            self.nodes = self.nodes.saturating_add(1);
        }
        let at = Pos { line: mark.line(), column: mark.col() + 1 };
        if self.limit.is_none() {
            if self.nodes > self.limits.max_nodes {
                self.limit = Some(LimitExceeded::Nodes {
                    max: self.limits.max_nodes,
                    through_aliases: self.aliased,
                    at,
                });
            } else if self.bytes > self.limits.max_bytes {
                self.limit = Some(LimitExceeded::Bytes { max: self.limits.max_bytes, at });
            }
        }
    }

    fn open(&mut self, frame: Frame, anchor: usize, mark: Marker) {
        if anchor != 0 {
            let path = match &frame {
                Frame::Map { path, .. } | Frame::Seq { path, .. } => path.clone(),
            };
            self.open_anchors.push((anchor, path, self.log.len()));
        }
        self.stack.push(frame);
        self.sizes.push(Size { nodes: 0, bytes: 0, anchor });
        if self.stack.len() > self.limits.max_depth && self.limit.is_none() {
            self.limit = Some(LimitExceeded::Depth {
                max: self.limits.max_depth,
                at: Pos { line: mark.line(), column: mark.col() + 1 },
            });
        }
    }

    fn close(&mut self, mark: Marker) {
        self.stack.pop();
        if self.sizes.last().is_some_and(|s| s.anchor != 0) {
            if let Some((id, path, start)) = self.open_anchors.pop() {
                let inside = self.log[start..]
                    .iter()
                    .filter_map(|(p, key, pos)| {
                        let rel = p.strip_prefix(path.as_str())?;
                        (rel.is_empty() || rel.starts_with(['.', '['])).then(|| (rel.to_owned(), *key, *pos))
                    })
                    .collect();
                self.anchored.insert(id, inside);
                if self.open_anchors.is_empty() {
                    self.log.clear();
                }
            }
        }
        if let Some(s) = self.sizes.pop() {
            self.count(s.nodes.saturating_add(1), s.bytes, s.anchor, false, mark);
        }
    }

    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, _, anchor, _) => {
                self.begin_node(mark, Some(&value));
                self.count(1, value.len() as u64, anchor, true, mark);
            }
            Event::Alias(id) => {
                // `<<: *a` (the alias is the value of `<<`) and `<<: [*a, *b]` (an item of that list) merge
                // into the mapping that holds `<<`; any other alias repeats the node where it stands.
                let in_merge_list =
                    matches!(self.stack.last(), Some(Frame::Seq { path, .. }) if is_merge(path));
                let list_path = match self.stack.last() {
                    Some(Frame::Seq { path, .. }) => path.clone(),
                    _ => String::new(),
                };
                if let Some(p) = self.begin_node(mark, None) {
                    let to = if is_merge(&p) {
                        merge_target(&p)
                    } else if in_merge_list {
                        merge_target(&list_path)
                    } else {
                        p
                    };
                    self.copy_anchored(id, &to);
                }
                self.aliased = true;
                let (n, bytes) = self.anchors.get(&id).copied().unwrap_or((1, 0));
                self.count(n, bytes, 0, true, mark);
            }
            Event::MappingStart(anchor, _) => {
                let path = self.begin_node(mark, None).unwrap_or_default();
                self.open(Frame::Map { path, key: None, keys_seen: 0, seen: HashMap::new() }, anchor, mark);
            }
            Event::SequenceStart(anchor, _) => {
                let path = self.begin_node(mark, None).unwrap_or_default();
                self.open(Frame::Seq { path, next: 0 }, anchor, mark);
            }
            Event::MappingEnd | Event::SequenceEnd => self.close(mark),
            Event::DocumentStart => self.documents.push(Pos { line: mark.line(), column: mark.col() + 1 }),
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

    #[test]
    fn a_duplicate_key_is_reported_where_it_repeats_and_keeps_the_first_position() {
        let s = scan("a:\n  x: 1\n  y: 2\n  x: 3\n", &Limits::default());
        assert_eq!(
            s.duplicates,
            vec![DuplicateKey {
                map: "a".into(),
                key: "x".into(),
                first: Pos { line: 2, column: 3 },
                again: Pos { line: 4, column: 3 }
            }]
        );
        assert_eq!(s.positions.find("a.x"), Some(Pos { line: 2, column: 6 }));
    }

    #[test]
    fn limits_count_nesting_and_what_aliases_repeat() {
        let small = Limits { max_depth: 3, max_nodes: 30, max_bytes: 1000 };
        assert!(scan("a: [[[x]]]\n", &small).limit.is_some());
        assert!(scan("a: [[x]]\n", &small).limit.is_none());
        // Brackets inside quotes, comments and plain scalars are not nesting.
        assert!(scan("a: '[[[[['\nb: x[[[[\n# [[[[[\nc: \"[[[[\"\n", &small).limit.is_none());
        // 1 + 10 anchored values, then 3 aliases of 11 each: over 30.
        let text = "a: &a [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]\nb: [*a, *a, *a]\n";
        assert!(matches!(scan(text, &small).limit, Some(LimitExceeded::Nodes { through_aliases: true, .. })));
        assert!(scan(text, &Limits::default()).limit.is_none());
        // One long value repeated through aliases: few nodes, many bytes.
        let long = format!("a: &a {}\nb: [*a, *a, *a]\n", "x".repeat(300));
        assert!(matches!(scan(&long, &small).limit, Some(LimitExceeded::Bytes { max: 1000, .. })));
        assert!(scan(&format!("a: {}\n", "x".repeat(900)), &small).limit.is_none());
    }

    #[test]
    fn merged_and_aliased_values_are_placed_where_they_are_written() {
        let text = "d: &d\n  roles: [worker]\n  ssh: &s\n    port: 22\nhosts:\n  - <<: *d\n    name: a\n  - <<: [*d]\n    roles: [etcd]\n    ssh: *s\n";
        let p = Positions::index(text);
        // Merged into hosts[0] from the anchor at line 1.
        assert_eq!(p.find("hosts[0].roles[0]"), Some(Pos { line: 2, column: 11 }));
        assert_eq!(p.find_key("hosts[0].ssh.port"), Some(Pos { line: 4, column: 5 }));
        assert_eq!(p.find("hosts[0].name"), Some(Pos { line: 7, column: 11 }));
        // A key written in the mapping wins over the merged one; a list of merges works too.
        assert_eq!(p.find("hosts[1].roles[0]"), Some(Pos { line: 9, column: 13 }));
        assert_eq!(p.find("hosts[1].ssh.port"), Some(Pos { line: 4, column: 11 }));
    }
}
