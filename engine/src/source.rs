//! Loading a user's file (YAML, TOML or JSON) into a plain JSON value plus a [`SourceMap`].
//!
//! One parser per format produces both the value and the byte span of every key and value, so
//! a diagnostic found much later (a `needs` naming a missing step) can still point at the exact
//! text. JSON files go through the YAML parser (JSON is YAML 1.2).

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use saphyr_parser::{Event, Parser, ScalarStyle, Span as YSpan};
use serde_json::{Map, Number, Value};

use crate::diag::{codes, Diagnostic};
use crate::path::Path;

/// A file's name (as the user gave it) and its full text.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub text: Arc<str>,
}

impl Source {
    /// Reads a file, refusing one larger than `limits.max_file_bytes` before reading it whole.
    pub fn read(path: &std::path::Path) -> Result<Source, String> {
        use std::io::Read;
        let name = path.display().to_string();
        let max = crate::limits::get().max_file_bytes;
        let too_big = || {
            format!(
                "{name} is larger than {max} bytes, the most Landfall reads as a workflow, inputs or requirements (limits.max_file_bytes in landfall.toml): is it the right file?"
            )
        };
        let file = std::fs::File::open(path).map_err(|e| format!("cannot read {name}: {e}"))?;
        if file.metadata().is_ok_and(|m| m.len() > max) {
            return Err(too_big());
        }
        let mut text = String::new();
        // Bounded even where the length lies (a pipe, a file still growing).
        file.take(max.saturating_add(1))
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read {name}: {e}"))?;
        if text.len() as u64 > max {
            return Err(too_big());
        }
        Ok(Source::new(name, text))
    }

    pub fn new(name: impl Into<String>, text: impl Into<Arc<str>>) -> Self {
        Source {
            name: name.into(),
            text: text.into(),
        }
    }

    pub fn format(&self) -> Format {
        Format::from_name(&self.name)
    }

    /// 1-based line and column of a byte offset, for plain-text and JSON output.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let col = before
            .rsplit('\n')
            .next()
            .map(|l| l.chars().count())
            .unwrap_or(0)
            + 1;
        (line, col)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Toml,
    Json,
}

impl Format {
    pub fn from_name(name: &str) -> Format {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".toml") {
            Format::Toml
        } else if lower.ends_with(".json") {
            Format::Json
        } else {
            Format::Yaml
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Entry {
    key: Option<Range<usize>>,
    value: Range<usize>,
}

/// Byte spans of every key and value in a document, by [`Path`].
#[derive(Debug, Clone, Default)]
pub struct SourceMap {
    entries: HashMap<Path, Entry>,
}

impl SourceMap {
    /// The span of the value at `path`, or of its nearest ancestor that has one.
    pub fn value_span(&self, path: &Path) -> Option<Range<usize>> {
        let mut p = Some(path.clone());
        while let Some(cur) = p {
            if let Some(e) = self.entries.get(&cur) {
                return Some(e.value.clone());
            }
            p = cur.parent();
        }
        None
    }

    /// The span of the key naming `path` (falls back to the value's span).
    pub fn key_span(&self, path: &Path) -> Option<Range<usize>> {
        match self.entries.get(path) {
            Some(Entry { key: Some(k), .. }) => Some(k.clone()),
            _ => self.value_span(path),
        }
    }

    fn insert(&mut self, path: Path, key: Option<Range<usize>>, value: Range<usize>) {
        self.entries.insert(path, Entry { key, value });
    }
}

/// A parsed document: its value, where each part of it came from, and the problems found that
/// did not stop parsing (duplicate keys).
#[derive(Debug, Clone)]
pub struct Document {
    pub source: Source,
    pub value: Value,
    pub map: SourceMap,
}

/// Parses `source` by its file extension. A syntax error is returned as a located diagnostic.
pub fn parse(source: &Source) -> Result<(Document, Vec<Diagnostic>), Diagnostic> {
    let (value, map, issues) = match source.format() {
        Format::Toml => parse_toml(&source.text)?,
        Format::Yaml | Format::Json => parse_yaml(&source.text)?,
    };
    Ok((
        Document {
            source: source.clone(),
            value,
            map,
        },
        issues,
    ))
}

fn parse_toml(text: &str) -> Result<(Value, SourceMap, Vec<Diagnostic>), Diagnostic> {
    use toml::de::{DeTable, DeValue};
    let table = DeTable::parse(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        Diagnostic::error(codes::SYNTAX, format!("invalid TOML: {}", e.message()))
            .with_span(span, "here")
            .with_help("fix the TOML syntax at the marked place")
    })?;
    let mut map = SourceMap::default();

    fn conv(v: &toml::Spanned<DeValue<'_>>, path: &Path, map: &mut SourceMap) -> Value {
        match v.get_ref() {
            DeValue::String(s) => Value::String(s.to_string()),
            DeValue::Integer(i) => {
                let text = i.as_str().replace('_', "");
                let parsed = match i.radix() {
                    10 => text.parse::<i64>().ok(),
                    r => i64::from_str_radix(text.trim_start_matches(['0', 'x', 'o', 'b']), r)
                        .ok()
                        .or(Some(0)),
                };
                parsed
                    .map(|n| Value::Number(n.into()))
                    .unwrap_or(Value::String(text))
            }
            DeValue::Float(f) => {
                let text = f.as_str().replace('_', "");
                text.parse::<f64>()
                    .ok()
                    .and_then(Number::from_f64)
                    .map(Value::Number)
                    .unwrap_or(Value::String(text))
            }
            DeValue::Boolean(b) => Value::Bool(*b),
            DeValue::Datetime(d) => Value::String(d.to_string()),
            DeValue::Array(items) => Value::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        let p = path.index(i);
                        map.insert(p.clone(), None, item.span());
                        conv(item, &p, map)
                    })
                    .collect(),
            ),
            DeValue::Table(t) => {
                let mut out = Map::new();
                for (k, val) in t.iter() {
                    let p = path.key(k.get_ref().to_string());
                    map.insert(p.clone(), Some(k.span()), val.span());
                    out.insert(k.get_ref().to_string(), conv(val, &p, map));
                }
                Value::Object(out)
            }
        }
    }

    let root_span = table.span();
    let root = toml::Spanned::new(root_span.clone(), DeValue::Table(table.into_inner()));
    map.insert(Path::root(), None, 0..0);
    let value = conv(&root, &Path::root(), &mut map);
    Ok((value, map, Vec::new()))
}

/// Char index → byte offset (saphyr's markers count characters).
struct Offsets {
    ascii: bool,
    starts: Vec<usize>,
    len: usize,
}

impl Offsets {
    fn new(text: &str) -> Self {
        let ascii = text.is_ascii();
        let starts = if ascii {
            Vec::new()
        } else {
            text.char_indices().map(|(b, _)| b).collect()
        };
        Offsets {
            ascii,
            starts,
            len: text.len(),
        }
    }

    fn byte(&self, char_index: usize) -> usize {
        if self.ascii {
            char_index.min(self.len)
        } else {
            self.starts.get(char_index).copied().unwrap_or(self.len)
        }
    }

    fn range(&self, s: YSpan) -> Range<usize> {
        self.byte(s.start.index())..self.byte(s.end.index())
    }
}

struct YamlBuilder<'a> {
    events: std::iter::Peekable<Parser<'a, saphyr_parser::StrInput<'a>>>,
    offsets: Offsets,
    map: SourceMap,
    /// Anchored values with how many values each holds (what an alias to it adds).
    anchors: HashMap<usize, (Value, usize)>,
    issues: Vec<Diagnostic>,
    /// Values built so far, aliases expanded: bounded by `limits.max_yaml_nodes`.
    nodes: usize,
    depth: usize,
}

fn scan_error(e: saphyr_parser::ScanError, off: &Offsets) -> Diagnostic {
    let at = off.byte(e.marker().index());
    Diagnostic::error(codes::SYNTAX, format!("invalid YAML: {}", e.info()))
        .with_span(at..at, "here")
        .with_help("fix the YAML syntax at the marked place (check indentation and quoting)")
}

impl<'a> YamlBuilder<'a> {
    fn next(&mut self) -> Result<Option<(Event<'a>, YSpan)>, Diagnostic> {
        match self.events.next() {
            None => Ok(None),
            Some(Ok(ev)) => Ok(Some(ev)),
            Some(Err(e)) => Err(scan_error(e, &self.offsets)),
        }
    }

    /// Reads one node whose first event is `first`; returns its value and the span to show for
    /// it (a collection is shown by its first line, not its whole extent).
    fn node(
        &mut self,
        first: (Event<'a>, YSpan),
        path: &Path,
    ) -> Result<(Value, Range<usize>), Diagnostic> {
        let (ev, span) = first;
        let here = self.offsets.range(span);
        let before = self.nodes;
        self.count(1, &here)?;
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let v = resolve_scalar(&text, style, tag.as_deref().map(|t| t.suffix.as_str()));
                if anchor > 0 {
                    self.anchors.insert(anchor, (v.clone(), 1));
                }
                Ok((v, here))
            }
            Event::Alias(id) => {
                let Some((v, size)) = self.anchors.get(&id) else {
                    return Ok((Value::Null, here));
                };
                let (v, size) = (v.clone(), *size);
                // Counted before the copy is made: the copy is what would exhaust memory.
                self.count(size.saturating_sub(1), &here)?;
                Ok((v, here))
            }
            Event::SequenceStart(..) | Event::MappingStart(..)
                if self.depth >= crate::limits::get().max_yaml_depth =>
            {
                Err(Diagnostic::error(
                    codes::SYNTAX,
                    format!(
                        "the YAML nests deeper than {} levels (limits.max_yaml_depth)",
                        crate::limits::get().max_yaml_depth
                    ),
                )
                .with_span(here, "too deep from here")
                .with_help("flatten the document; no workflow or inputs file needs this"))
            }
            Event::SequenceStart(anchor, _) => {
                self.depth += 1;
                let mut items = Vec::new();
                let mut head = None;
                loop {
                    let ev = self.next()?.ok_or_else(|| eof(&here))?;
                    if matches!(ev.0, Event::SequenceEnd) {
                        break;
                    }
                    let p = path.index(items.len());
                    let (v, s) = self.node(ev, &p)?;
                    head.get_or_insert(s.clone());
                    self.map.insert(p, None, s);
                    items.push(v);
                }
                self.depth -= 1;
                let v = Value::Array(items);
                if anchor > 0 {
                    self.anchors
                        .insert(anchor, (v.clone(), self.nodes - before));
                }
                Ok((v, head.unwrap_or(here)))
            }
            Event::MappingStart(anchor, _) => {
                self.depth += 1;
                let mut obj = Map::new();
                let mut head = None;
                loop {
                    let kev = self.next()?.ok_or_else(|| eof(&here))?;
                    if matches!(kev.0, Event::MappingEnd) {
                        break;
                    }
                    let kspan = self.offsets.range(kev.1);
                    let key = match kev.0 {
                        Event::Scalar(ref t, ..) => t.to_string(),
                        _ => {
                            return Err(Diagnostic::error(
                                codes::SYNTAX,
                                "a mapping key must be a plain string",
                            )
                            .with_span(kspan, "complex key")
                            .with_help("use a string key"))
                        }
                    };
                    head.get_or_insert(kspan.clone());
                    let p = path.key(key.clone());
                    let vev = self.next()?.ok_or_else(|| eof(&here))?;
                    let (v, vspan) = self.node(vev, &p)?;
                    if obj.contains_key(&key) {
                        self.issues.push(
                            Diagnostic::error(
                                codes::DUPLICATE_KEY,
                                format!("key `{key}` appears twice in the same mapping"),
                            )
                            .with_path(p.clone())
                            .with_span(kspan.clone(), "second occurrence")
                            .with_help("remove one of the two entries; only one can take effect"),
                        );
                    }
                    self.map.insert(p, Some(kspan), vspan);
                    obj.insert(key, v);
                }
                self.depth -= 1;
                let v = Value::Object(obj);
                if anchor > 0 {
                    self.anchors
                        .insert(anchor, (v.clone(), self.nodes - before));
                }
                Ok((v, head.unwrap_or(here)))
            }
            other => Err(Diagnostic::error(
                codes::SYNTAX,
                format!("unexpected YAML event {other:?}"),
            )
            .with_span(here, "here")),
        }
    }
}

impl YamlBuilder<'_> {
    /// Counts `n` more values, refusing past `limits.max_yaml_nodes`.
    fn count(&mut self, n: usize, at: &Range<usize>) -> Result<(), Diagnostic> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > crate::limits::get().max_yaml_nodes {
            return Err(Diagnostic::error(
                codes::SYNTAX,
                format!(
                    "the YAML expands to more than {} values (aliases of aliases: a \"billion laughs\" document?; limits.max_yaml_nodes)",
                    crate::limits::get().max_yaml_nodes
                ),
            )
            .with_span(at.clone(), "the limit is passed here")
            .with_help("write the values out, or use fewer nested aliases"));
        }
        Ok(())
    }
}

fn eof(at: &Range<usize>) -> Diagnostic {
    Diagnostic::error(codes::SYNTAX, "unexpected end of the document")
        .with_span(at.clone(), "this is not closed")
}

fn parse_yaml(text: &str) -> Result<(Value, SourceMap, Vec<Diagnostic>), Diagnostic> {
    let mut b = YamlBuilder {
        events: Parser::new_from_str(text).peekable(),
        offsets: Offsets::new(text),
        map: SourceMap::default(),
        anchors: HashMap::new(),
        issues: Vec::new(),
        nodes: 0,
        depth: 0,
    };
    let mut value = None;
    while let Some((ev, span)) = b.next()? {
        match ev {
            Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart(_)
            | Event::DocumentEnd
            | Event::Nothing => {}
            _ => {
                if value.is_some() {
                    let at = b.offsets.range(span);
                    return Err(Diagnostic::error(
                        codes::SYNTAX,
                        "the file holds more than one YAML document",
                    )
                    .with_span(at, "a second document starts here")
                    .with_help("keep one workflow per file; remove the `---` separator"));
                }
                let (v, s) = b.node((ev, span), &Path::root())?;
                b.map.insert(Path::root(), None, s);
                value = Some(v);
            }
        }
    }
    Ok((value.unwrap_or(Value::Null), b.map, b.issues))
}

/// YAML 1.2 core schema resolution of a scalar.
fn resolve_scalar(text: &str, style: ScalarStyle, tag: Option<&str>) -> Value {
    if style != ScalarStyle::Plain {
        return Value::String(text.to_string());
    }
    if tag == Some("str") {
        return Value::String(text.to_string());
    }
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Value::String(text.to_string())
        }
        _ => {}
    }
    let looks_numeric = text
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_digit() || c == '-' || c == '+' || c == '.');
    if looks_numeric {
        if let Some(hex) = text.strip_prefix("0x") {
            if let Ok(n) = i64::from_str_radix(hex, 16) {
                return Value::Number(n.into());
            }
        }
        if let Some(oct) = text.strip_prefix("0o") {
            if let Ok(n) = i64::from_str_radix(oct, 8) {
                return Value::Number(n.into());
            }
        }
        let is_int = {
            let t = text.strip_prefix(['-', '+']).unwrap_or(text);
            !t.is_empty() && t.chars().all(|c| c.is_ascii_digit())
        };
        if is_int {
            if let Ok(n) = text.parse::<i64>() {
                return Value::Number(n.into());
            }
            if let Ok(n) = text.parse::<u64>() {
                return Value::Number(n.into());
            }
        } else if text
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
        {
            if let Some(n) = text.parse::<f64>().ok().and_then(Number::from_f64) {
                return Value::Number(n);
            }
        }
    }
    Value::String(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn yaml(text: &str) -> Document {
        parse(&Source::new("t.yaml", text)).unwrap().0
    }

    #[test]
    fn yaml_values_follow_the_core_schema() {
        let d = yaml("a: 1\nb: '1'\nc: true\nd: ~\ne: 1.5\nf: [x, 2]\ng: 0x10\nh: 1.2.3\n");
        assert_eq!(
            d.value,
            json!({"a":1,"b":"1","c":true,"d":null,"e":1.5,"f":["x",2],"g":16,"h":"1.2.3"})
        );
    }

    #[test]
    fn spans_point_at_keys_and_values_even_after_unicode() {
        let text = "name: \"Ünïcödé\"\nsteps:\n  - id: a\n    uses: log\n";
        let d = yaml(text);
        let p = Path::root().key("steps").index(0).key("uses");
        let v = d.map.value_span(&p).unwrap();
        assert_eq!(&text[v], "log");
        let k = d.map.key_span(&p).unwrap();
        assert_eq!(&text[k], "uses");
        assert_eq!(
            d.source.line_col(d.map.value_span(&p).unwrap().start),
            (4, 11)
        );
    }

    #[test]
    fn toml_spans_and_values() {
        let text = "name = \"x\"\n[[steps]]\nid = \"a\"\nuses = \"log\"\nwith = { n = 3 }\n";
        let (d, _) = parse(&Source::new("t.toml", text)).unwrap();
        assert_eq!(
            d.value,
            json!({"name":"x","steps":[{"id":"a","uses":"log","with":{"n":3}}]})
        );
        let p = Path::root().key("steps").index(0).key("uses");
        assert_eq!(&text[d.map.value_span(&p).unwrap()], "\"log\"");
    }

    #[test]
    fn duplicate_keys_are_reported_not_silently_overwritten() {
        let (_, issues) = parse(&Source::new("t.yaml", "a: 1\na: 2\n")).unwrap();
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].code, codes::DUPLICATE_KEY);
    }

    #[test]
    fn syntax_errors_are_located() {
        let err = parse(&Source::new("t.yaml", "a: [1, 2\nb: 3\n")).unwrap_err();
        assert_eq!(err.code, codes::SYNTAX);
        assert!(err.span.is_some());
        let err = parse(&Source::new("t.toml", "a = \n")).unwrap_err();
        assert_eq!(err.code, codes::SYNTAX);
    }

    #[test]
    fn anchors_and_aliases_copy_values() {
        let d = yaml("base: &b {x: 1}\nother: *b\n");
        assert_eq!(d.value["other"], json!({"x": 1}));
    }

    /// The "billion laughs": nine levels of ten aliases each name 10⁹ values in under 1 KB.
    pub(crate) const LAUGHS: &str = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f, *f]
h: &h [*g, *g, *g, *g, *g, *g, *g, *g, *g, *g]
i: &i [*h, *h, *h, *h, *h, *h, *h, *h, *h, *h]
";

    #[test]
    fn alias_bombs_and_deep_nesting_are_refused_located() {
        let e = parse(&Source::new("bomb.yaml", LAUGHS)).unwrap_err();
        assert_eq!(e.code, codes::SYNTAX);
        assert!(
            e.message.contains("more than 400000 values"),
            "{}",
            e.message
        );
        // Five levels (10⁵ values) load.
        let five: String = LAUGHS.lines().take(5).collect::<Vec<_>>().join("\n");
        assert!(parse(&Source::new("ok.yaml", five)).is_ok());
        let deep = format!("x: {}1{}", "[".repeat(200), "]".repeat(200));
        let e = parse(&Source::new("deep.yaml", deep)).unwrap_err();
        assert!(e.message.contains("deeper than 128"), "{}", e.message);
        let fine = format!("x: {}1{}", "[".repeat(100), "]".repeat(100));
        assert!(parse(&Source::new("fine.yaml", fine)).is_ok());
    }

    #[test]
    fn files_past_the_size_limit_are_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.yaml");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(crate::limits::get().max_file_bytes + 1).unwrap(); // sparse: no disk, no time
        let e = Source::read(&big).unwrap_err();
        assert!(e.contains("larger than 16777216 bytes"), "{e}");
        let small = dir.path().join("small.yaml");
        std::fs::write(&small, "a: 1\n").unwrap();
        assert_eq!(&*Source::read(&small).unwrap().text, "a: 1\n");
    }
}
