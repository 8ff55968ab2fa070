//! Diagnostics about a user's file: data, not rendering.
//!
//! A [`Diagnostic`] has a stable code, a message, the [`Path`] of the offending value, an
//! optional byte span (filled from the file's [`SourceMap`] by [`Report::new`]) and a `help`
//! line. [`Report`] groups every diagnostic of one file and implements [`miette::Diagnostic`]
//! so the binary can render it with carets; the engine itself never prints.

use std::fmt;
use std::ops::Range;

use miette::{LabeledSpan, NamedSource, SourceCode};
use serde::Serialize;

use crate::path::Path;
use crate::source::{Source, SourceMap};

/// Stable diagnostic codes. Never renumber: users search for them.
pub mod codes {
    macro_rules! codes {
        ($($name:ident = $code:literal;)*) => {
            $(pub const $name: &str = $code;)*
            /// Every code, in order: the broken-file corpus must hold a case for each.
            pub const ALL: &[&str] = &[$($code),*];
        };
    }

    codes! {
        SYNTAX = "LF0001";
        DUPLICATE_KEY = "LF0002";
        IO = "LF0003";
        UNKNOWN_PLUGIN = "LF0101";
        UNKNOWN_FIELD = "LF0102";
        DUPLICATE_ID = "LF0103";
        UNKNOWN_NEED = "LF0104";
        CYCLE = "LF0105";
        INVALID_WITH = "LF0106";
        EXPRESSION_SYNTAX = "LF0107";
        UNKNOWN_INPUT_REF = "LF0108";
        STEP_NOT_IN_NEEDS = "LF0109";
        INVALID_VALUE = "LF0110";
        INVALID_INPUT_SPEC = "LF0111";
        UNKNOWN_VARIABLE = "LF0112";
        INVALID_ID = "LF0113";
        UNKNOWN_INPUT_CHECK = "LF0114";
        INVALID_TRIGGER = "LF0115";
        INPUT_INVALID = "LF0201";
        INPUT_MISSING = "LF0202";
        INPUT_UNKNOWN = "LF0203";
        CONFIG_INVALID = "LF0301";
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, Serialize)]
pub struct Diagnostic {
    pub code: &'static str,
    pub severity: Severity,
    pub message: String,
    /// Where in the document, by structure (`steps[2].needs[0]`).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "ser_path")]
    pub path: Option<Path>,
    /// Point at the key rather than the value (unknown fields).
    #[serde(skip)]
    pub at_key: bool,
    #[serde(skip)]
    pub span: Option<Range<usize>>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub label: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub help: Option<String>,
}

fn ser_path<S: serde::Serializer>(p: &Option<Path>, s: S) -> Result<S::Ok, S::Error> {
    match p {
        Some(p) => s.serialize_str(&p.to_string()),
        None => s.serialize_none(),
    }
}

impl Diagnostic {
    pub fn error(code: &'static str, message: impl Into<String>) -> Self {
        Diagnostic {
            code,
            severity: Severity::Error,
            message: message.into(),
            path: None,
            at_key: false,
            span: None,
            label: String::new(),
            help: None,
        }
    }

    pub fn warning(code: &'static str, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(code, message)
        }
    }

    pub fn with_path(mut self, path: Path) -> Self {
        self.path = Some(path);
        self
    }

    pub fn at_key(mut self) -> Self {
        self.at_key = true;
        self
    }

    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    pub fn with_span(mut self, span: Range<usize>, label: impl Into<String>) -> Self {
        self.span = Some(span);
        self.label = label.into();
        self
    }

    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }

    fn locate(&mut self, map: &SourceMap) {
        if self.span.is_none() {
            if let Some(p) = &self.path {
                self.span = if self.at_key {
                    map.key_span(p)
                } else {
                    map.value_span(p)
                };
            }
        }
    }
}

/// "did you mean `x`?" for the nearest of `candidates`, if any is close enough.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// Every diagnostic of one file, located.
#[derive(Debug, Clone)]
pub struct Report {
    pub source: Source,
    pub diagnostics: Vec<Diagnostic>,
}

impl Report {
    pub fn new(source: Source, map: Option<&SourceMap>, mut diagnostics: Vec<Diagnostic>) -> Self {
        if let Some(map) = map {
            for d in &mut diagnostics {
                d.locate(map);
            }
        }
        // File order reads best; keep the original order among equals.
        diagnostics.sort_by_key(|d| d.span.as_ref().map(|s| s.start).unwrap_or(usize::MAX));
        Report {
            source,
            diagnostics,
        }
    }

    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    pub fn error_count(&self) -> usize {
        self.diagnostics.iter().filter(|d| d.is_error()).count()
    }

    /// One miette diagnostic per entry, sharing the file's text.
    pub fn items(&self) -> Vec<Located<'_>> {
        self.diagnostics
            .iter()
            .map(|d| Located {
                diagnostic: d,
                source: NamedSource::new(self.source.name.clone(), self.source.text.to_string()),
            })
            .collect()
    }

    /// `file:line:col` of a diagnostic, when it has a span.
    pub fn position(&self, d: &Diagnostic) -> Option<(usize, usize)> {
        d.span.as_ref().map(|s| self.source.line_col(s.start))
    }

    /// Machine-readable form (`--json`).
    pub fn to_json(&self) -> serde_json::Value {
        let items: Vec<_> = self
            .diagnostics
            .iter()
            .map(|d| {
                let mut v = serde_json::to_value(d).unwrap_or_default();
                if let (Some((line, col)), Some(obj)) = (self.position(d), v.as_object_mut()) {
                    obj.insert("line".into(), line.into());
                    obj.insert("column".into(), col.into());
                }
                v
            })
            .collect();
        serde_json::json!({ "file": self.source.name, "diagnostics": items })
    }
}

/// A diagnostic together with the file it points into, as miette wants it.
pub struct Located<'a> {
    pub diagnostic: &'a Diagnostic,
    source: NamedSource<String>,
}

impl fmt::Debug for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.diagnostic, f)
    }
}

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.diagnostic.message)
    }
}

impl std::error::Error for Located<'_> {}

impl miette::Diagnostic for Located<'_> {
    fn code<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        Some(Box::new(self.diagnostic.code))
    }

    fn severity(&self) -> Option<miette::Severity> {
        Some(match self.diagnostic.severity {
            Severity::Error => miette::Severity::Error,
            Severity::Warning => miette::Severity::Warning,
        })
    }

    fn help<'b>(&'b self) -> Option<Box<dyn fmt::Display + 'b>> {
        self.diagnostic
            .help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }

    fn source_code(&self) -> Option<&dyn SourceCode> {
        self.diagnostic
            .span
            .as_ref()
            .map(|_| &self.source as &dyn SourceCode)
    }

    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let span = self.diagnostic.span.clone()?;
        let label = if self.diagnostic.label.is_empty() {
            None
        } else {
            Some(self.diagnostic.label.clone())
        };
        Some(Box::new(std::iter::once(LabeledSpan::new(
            label,
            span.start,
            span.end - span.start,
        ))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_only_close_names() {
        assert_eq!(
            did_you_mean("nedds", ["needs", "uses", "with"]),
            Some("needs")
        );
        assert_eq!(did_you_mean("zzz", ["needs", "uses"]), None);
    }
}
