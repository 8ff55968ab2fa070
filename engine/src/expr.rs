//! Expressions and templates in workflow files (minijinja, strict undefined).
//!
//! A string in `with:` is one of three things ([`Template::classify`]): plain text (no
//! markers, used as is), exactly one expression (`"{{ inputs.regions }}"`, which yields the
//! native value: a list stays a list) or a text template (always a string). Rendering is
//! strict: an undefined variable is an error, never an empty string.

use std::collections::BTreeSet;
use std::sync::OnceLock;

use minijinja::{Environment, State, UndefinedBehavior};
use serde_json::Value;

/// Context variable that carries the status-function answers into `when` conditions.
const STATUS_VAR: &str = "__landfall_status";

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Template<'a> {
    Literal(&'a str),
    /// The text between `{{` and `}}`.
    Expr(&'a str),
    Text(&'a str),
}

impl<'a> Template<'a> {
    pub(crate) fn classify(s: &'a str) -> Template<'a> {
        if !(s.contains("{{") || s.contains("{%") || s.contains("{#")) {
            return Template::Literal(s);
        }
        let t = s.trim();
        if let Some(inner) = t.strip_prefix("{{").and_then(|r| r.strip_suffix("}}")) {
            if !inner.contains("{{") && !inner.contains("}}") && !inner.contains("{%") {
                return Template::Expr(inner.trim());
            }
        }
        Template::Text(s)
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ExprError {
    pub message: String,
}

impl From<minijinja::Error> for ExprError {
    fn from(e: minijinja::Error) -> Self {
        let mut message = match e.detail() {
            Some(d) => format!("{}: {d}", kind_text(e.kind())),
            None => kind_text(e.kind()).to_string(),
        };
        if let Some(src) = std::error::Error::source(&e) {
            message.push_str(&format!(" ({src})"));
        }
        ExprError { message }
    }
}

fn kind_text(k: minijinja::ErrorKind) -> String {
    match k {
        minijinja::ErrorKind::UndefinedError => "undefined value".into(),
        minijinja::ErrorKind::SyntaxError => "syntax error".into(),
        minijinja::ErrorKind::OutOfFuel => format!(
            "the template took more than {} evaluation steps (limits.template_fuel in landfall.toml): does it loop over a huge range?",
            crate::limits::get().template_fuel
        ),
        other => other.to_string(),
    }
}

fn status_flag(state: &State, name: &str) -> bool {
    state
        .lookup(STATUS_VAR)
        .and_then(|v| v.get_attr(name).ok())
        .is_some_and(|v| v.is_true())
}

/// The shared, configured environment.
pub(crate) fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // Bounded evaluation: a template looping over `range(10**6)` twice runs out of fuel
        // in milliseconds with an error, instead of holding a worker for hours.
        env.set_fuel(Some(crate::limits::get().template_fuel));
        env.add_function("success", |state: &State| !status_flag(state, "failure"));
        env.add_function("failure", |state: &State| status_flag(state, "failure"));
        env.add_function("always", |_state: &State| true);
        env.add_function("cancelled", |state: &State| status_flag(state, "cancelled"));
        // `{{ steps.plan.outputs | digest }}`: SHA-256 of the value's canonical JSON, the same
        // digest a plugin computes with `digest_of` (how an approval names what it approves).
        env.add_filter(
            "digest",
            |v: minijinja::Value| -> Result<String, minijinja::Error> {
                let json: Value = serde_json::to_value(&v).map_err(|e| {
                    minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string())
                })?;
                Ok(crate::digest::digest_of(&json))
            },
        );
        env
    })
}

/// A serde value as a template context.
pub fn ctx_value<T: serde::Serialize>(v: T) -> minijinja::Value {
    minijinja::Value::from(minijinja::value::Serde(v))
}

/// A `for_each` instance's context: `base` (shared by every instance of the step, built once)
/// with its `item` and `index` in front. The merge is lazy: nothing of `base` is copied.
pub(crate) fn with_item(
    base: &minijinja::Value,
    item: &Value,
    index: Option<usize>,
) -> minijinja::Value {
    minijinja::context! { item => ctx_value(item), index => index, ..base.clone() }
}

/// The names of the status functions a `when` may use.
pub(crate) const STATUS_FUNCTIONS: [&str; 4] = ["success", "failure", "always", "cancelled"];

/// Which status functions a condition calls. A condition that calls none of them implies
/// `success()`, as in GitHub Actions.
pub(crate) fn status_functions_used(condition: &str) -> BTreeSet<&'static str> {
    static RE: OnceLock<regex::Regex> = OnceLock::new();
    let re = RE.get_or_init(|| {
        regex::Regex::new(r"\b(success|failure|always|cancelled)\s*\(\s*\)").expect("static regex")
    });
    re.captures_iter(condition)
        .filter_map(|c| {
            let name = c.get(1)?.as_str();
            STATUS_FUNCTIONS.iter().copied().find(|f| *f == name)
        })
        .collect()
}

/// The expression text of a `when`, with or without `{{ }}`.
pub(crate) fn condition_expr(when: &str) -> &str {
    match Template::classify(when) {
        Template::Expr(e) => e,
        Template::Literal(l) => l.trim(),
        Template::Text(t) => t.trim(),
    }
}

/// Names the environment itself provides (functions), which are not context variables.
const GLOBALS: [&str; 10] = [
    "success",
    "failure",
    "always",
    "cancelled",
    "range",
    "dict",
    "namespace",
    "debug",
    "lipsum",
    "cycler",
];

fn context_vars(vars: std::collections::HashSet<String>) -> BTreeSet<String> {
    vars.into_iter()
        .filter(|v| !GLOBALS.contains(&v.split('.').next().unwrap_or_default()))
        .collect()
}

/// Runs `f`, turning a panic inside the template engine into an error about the template:
/// fuzzing found minijinja 3.1 panicking on printf-style `format` keys that hold a multi-byte
/// character (`{{ "%(é" | format(1) }}`), and a user's expression must never stop a run or
/// `landfall validate`.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, ExprError>) -> Result<T, ExprError> {
    catching_template_panics(f).unwrap_or_else(|why| {
        Err(ExprError {
            message: format!(
                "the template engine failed on `{}` ({why}); rewrite the expression",
                what.chars().take(80).collect::<String>()
            ),
        })
    })
}

/// Runs `f`, which uses the template engine, and returns what a panic inside it said instead
/// of unwinding further (the process's panic hook prints no backtrace for it). For every
/// minijinja call on text a person wrote: workflow expressions here, operator templates in
/// the plugins.
pub fn catching_template_panics<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let outer = GUARDED.with(|g| g.replace(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(outer));
    r.map_err(|p| {
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default()
    })
}

thread_local! {
    static GUARDED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a panic now would be caught and reported as an error about a template (for a
/// process's panic hook: such a panic needs no backtrace on the terminal).
pub fn panic_is_caught_as_template_error() -> bool {
    GUARDED.with(|g| g.get())
}

/// Variables a template or expression reads, as dotted paths (`steps.a.outputs`).
pub(crate) fn referenced(s: &str) -> Result<BTreeSet<String>, ExprError> {
    guarded(s, || referenced_unguarded(s))
}

fn referenced_unguarded(s: &str) -> Result<BTreeSet<String>, ExprError> {
    let env = env();
    let vars = match Template::classify(s) {
        Template::Literal(_) => return Ok(BTreeSet::new()),
        Template::Expr(e) => env.compile_expression(e)?.undeclared_variables(true),
        Template::Text(t) => env.template_from_str(t)?.undeclared_variables(true),
    };
    Ok(context_vars(vars))
}

/// Variables a bare expression (a `when` condition) reads.
pub(crate) fn referenced_in_expr(expr: &str) -> Result<BTreeSet<String>, ExprError> {
    guarded(expr, || {
        Ok(context_vars(
            env().compile_expression(expr)?.undeclared_variables(true),
        ))
    })
}

/// Evaluates one string of a `with:` block.
pub fn render_str(s: &str, ctx: &minijinja::Value) -> Result<Value, ExprError> {
    guarded(s, || render_str_unguarded(s, ctx))
}

fn render_str_unguarded(s: &str, ctx: &minijinja::Value) -> Result<Value, ExprError> {
    let env = env();
    match Template::classify(s) {
        Template::Literal(l) => Ok(Value::String(l.to_string())),
        Template::Expr(e) => {
            let v = env.compile_expression(e)?.eval(ctx.clone())?;
            to_json(v, e)
        }
        Template::Text(t) => Ok(Value::String(env.render_str(t, ctx.clone())?)),
    }
}

fn to_json(v: minijinja::Value, expr: &str) -> Result<Value, ExprError> {
    if v.is_undefined() {
        return Err(ExprError {
            message: format!("undefined value: `{expr}` names nothing that exists"),
        });
    }
    serde_json::to_value(&v).map_err(|e| ExprError {
        message: format!("`{expr}` gave a value that is not plain data: {e}"),
    })
}

/// Renders every string inside `value` (keys are left alone).
pub(crate) fn render_value(value: &Value, ctx: &minijinja::Value) -> Result<Value, ExprError> {
    Ok(match value {
        Value::String(s) => render_str(s, ctx)?,
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| render_value(i, ctx))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), render_value(v, ctx)?)))
                .collect::<Result<_, ExprError>>()?,
        ),
        other => other.clone(),
    })
}

/// Whether `value` contains any template at all (the scheduler skips rendering otherwise).
pub(crate) fn has_templates(value: &Value) -> bool {
    match value {
        Value::String(s) => !matches!(Template::classify(s), Template::Literal(_)),
        Value::Array(items) => items.iter().any(has_templates),
        Value::Object(map) => map.values().any(has_templates),
        _ => false,
    }
}

/// Evaluates a `when` condition. `failure` tells whether an earlier step failed.
pub(crate) fn eval_condition(
    when: &str,
    ctx: &Value,
    failure: bool,
    cancelled: bool,
) -> Result<bool, ExprError> {
    let mut full = ctx.clone();
    if let Some(obj) = full.as_object_mut() {
        obj.insert(
            STATUS_VAR.into(),
            serde_json::json!({ "failure": failure, "cancelled": cancelled }),
        );
    }
    let expr = condition_expr(when);
    let v = guarded(expr, || {
        Ok(env().compile_expression(expr)?.eval(ctx_value(&full))?)
    })?;
    if v.is_undefined() {
        return Err(ExprError {
            message: format!("undefined value: `{expr}` names nothing that exists"),
        });
    }
    Ok(v.is_true())
}

#[cfg(test)]
mod guarded_tests {
    /// Inputs the fuzzer found panicking inside minijinja: an error, never a panic.
    #[test]
    fn a_panic_in_the_template_engine_is_an_error_about_the_template() {
        let ctx = super::ctx_value(serde_json::json!({}));
        for t in [
            "{{ \"%(é\" | format(1) }}",
            "{{ \"%s-%(d&\u{e0}\" | format(\"a\", 1) }}",
        ] {
            let e = super::render_str(t, &ctx).unwrap_err();
            assert!(
                e.message.contains("template engine failed"),
                "{t}: {}",
                e.message
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx(v: Value) -> minijinja::Value {
        ctx_value(&v)
    }

    #[test]
    fn classifies_strings() {
        assert_eq!(Template::classify("plain"), Template::Literal("plain"));
        assert_eq!(Template::classify(" {{ a.b }} "), Template::Expr("a.b"));
        assert_eq!(
            Template::classify("{{ a }} and {{ b }}"),
            Template::Text("{{ a }} and {{ b }}")
        );
        assert_eq!(Template::classify("x {{ a }}"), Template::Text("x {{ a }}"));
    }

    #[test]
    fn a_single_expression_keeps_its_native_type() {
        let c = ctx(json!({"inputs": {"regions": ["a", "b"], "n": 3}}));
        assert_eq!(
            render_str("{{ inputs.regions }}", &c).unwrap(),
            json!(["a", "b"])
        );
        assert_eq!(render_str("{{ inputs.n + 1 }}", &c).unwrap(), json!(4));
        assert_eq!(
            render_str("{{ inputs.regions | length }} regions", &c).unwrap(),
            json!("2 regions")
        );
    }

    #[test]
    fn undefined_is_an_error_never_empty() {
        let c = ctx(json!({"inputs": {}}));
        assert!(render_str("{{ inputs.nope }}", &c).is_err());
        assert!(render_str("x {{ inputs.nope }} y", &c).is_err());
        assert!(render_str("{{ nothing }}", &c).is_err());
    }

    #[test]
    fn finds_references() {
        let r = referenced("{{ steps.a.outputs | length }} of {{ inputs.customer }}").unwrap();
        assert!(r.contains("steps.a.outputs"), "{r:?}");
        assert!(r.contains("inputs.customer"), "{r:?}");
        assert!(referenced("{{ oops( }}").is_err());
    }

    #[test]
    fn status_functions() {
        assert!(status_functions_used("failure()").contains("failure"));
        assert!(status_functions_used("{{ steps.a.status == 'x' }}").is_empty());
        let c = json!({});
        assert!(eval_condition("failure()", &c, true, false).unwrap());
        assert!(!eval_condition("failure()", &c, false, false).unwrap());
        assert!(eval_condition("always()", &c, false, false).unwrap());
        assert!(eval_condition("{{ 1 == 1 }}", &c, false, false).unwrap());
    }
}
