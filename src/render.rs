//! Everything the binary shows people: diagnostics, progress, tables. Libraries return data;
//! only this module turns it into text and colour.

use std::io::IsTerminal;

use landfall_engine::diag::Report;
use miette::{GraphicalReportHandler, GraphicalTheme};

/// Renders a report with carets and help lines. `color` only on a terminal.
pub fn report(r: &Report, color: bool) -> String {
    let theme = if color {
        GraphicalTheme::unicode()
    } else {
        GraphicalTheme::unicode_nocolor()
    };
    let handler = GraphicalReportHandler::new_themed(theme)
        .with_width(100)
        .with_links(false);
    let mut out = String::new();
    for item in r.items() {
        // Rendering into a String cannot fail for lack of space; a formatting error would
        // only drop this one diagnostic's decoration.
        let _ = handler.render_report(&mut out, &item);
        out.push('\n');
    }
    let errors = r.error_count();
    let warnings = r.diagnostics.len() - errors;
    let mut summary = format!(
        "{}: {errors} error{}",
        r.source.name,
        if errors == 1 { "" } else { "s" }
    );
    if warnings > 0 {
        summary.push_str(&format!(
            ", {warnings} warning{}",
            if warnings == 1 { "" } else { "s" }
        ));
    }
    out.push_str(&summary);
    out.push('\n');
    out
}

/// A run's input problems, one line each, as `landfall run` prints them.
pub fn input_errors(errs: &[landfall_engine::InputError]) -> String {
    errs.iter()
        .map(|e| format!("error[{}]: input `{}`: {}\n", e.code, e.field, e.message))
        .collect()
}

/// Input problems: those about values of `doc` (an inputs or requirements file) as one report
/// on that file, each at its file:line:column; the rest (`--set`, defaults, missing inputs
/// when there is no file) one line each.
pub fn input_problems(
    doc: Option<&landfall_engine::Document>,
    errs: &[landfall_engine::InputError],
    color: bool,
) -> String {
    let in_file = |e: &landfall_engine::InputError| {
        doc.is_some_and(|d| {
            let path = landfall_engine::Path::parse(&e.field);
            match path.0.first() {
                Some(landfall_engine::Seg::Key(k)) => {
                    d.value.get(k).is_some() || e.message.starts_with("missing field")
                }
                _ => false,
            }
        })
    };
    let (located, plain): (Vec<_>, Vec<_>) = errs.iter().cloned().partition(|e| in_file(e));
    let mut out = String::new();
    if let (Some(d), false) = (doc, located.is_empty()) {
        let diags = located.iter().map(|e| e.diagnostic()).collect();
        out.push_str(&report(
            &landfall_engine::diag::Report::new(d.source.clone(), Some(&d.map), diags),
            color,
        ));
    }
    out.push_str(&input_errors(&plain));
    out
}

pub fn stderr_color() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Short human duration: `850ms`, `12.3s`, `4m05s`.
pub fn duration(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(12_345), "12.3s");
        assert_eq!(duration(245_000), "4m05s");
    }
}
