//! A run's inputs: merged from an input file and `--set` flags, checked against the workflow's
//! declared inputs before anything runs.

use indexmap::IndexMap;
use serde_json::{Map, Value};

use crate::diag::codes;
use crate::spec::{InputSpec, InputType};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("input `{field}`: {message}")]
pub struct InputError {
    /// The diagnostic code: [`codes::INPUT_INVALID`], [`codes::INPUT_MISSING`] or
    /// [`codes::INPUT_UNKNOWN`].
    pub code: &'static str,
    /// The input's name, or a path inside it (`accounts[1].email`).
    pub field: String,
    pub message: String,
}

impl InputError {
    /// A value that is there but wrong (the usual case, and what input checks report).
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        InputError {
            code: codes::INPUT_INVALID,
            field: field.into(),
            message: message.into(),
        }
    }
}

pub(crate) fn has_type(v: &Value, t: InputType) -> bool {
    match t {
        InputType::String => v.is_string(),
        InputType::Integer => v.is_i64() || v.is_u64(),
        InputType::Number => v.is_number(),
        InputType::Boolean => v.is_boolean(),
        InputType::Array => v.is_array(),
        InputType::Object => v.is_object(),
    }
}

fn type_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_f64() => "a number",
        Value::Number(_) => "an integer",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks one value against its declaration.
pub(crate) fn check_value(_name: &str, spec: &InputSpec, v: &Value) -> Result<(), String> {
    if !has_type(v, spec.kind) {
        return Err(format!("expected {}, got {}", spec.kind.name(), type_of(v)));
    }
    if let (Some(pattern), Some(s)) = (&spec.pattern, v.as_str()) {
        let anchored = format!("^(?:{pattern})$");
        match regex::Regex::new(&anchored) {
            Ok(re) if !re.is_match(s) => {
                return Err(format!("{s:?} does not match the pattern `{pattern}`"));
            }
            Ok(_) => {}
            Err(e) => return Err(format!("the declared pattern is invalid: {e}")),
        }
    }
    if let Some(allowed) = &spec.allowed {
        if !allowed.contains(v) {
            let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
            return Err(format!("{v} is not one of {}", list.join(", ")));
        }
    }
    Ok(())
}

/// Parses a `--set key=value` value by the input's declared type: strings stay verbatim, other
/// types are read as YAML (`--set count=3`, `--set regions=[us-east-1,eu-west-1]`).
pub(crate) fn parse_set_value(spec: Option<&InputSpec>, raw: &str) -> Value {
    match spec.map(|s| s.kind) {
        Some(InputType::String) => Value::String(raw.to_string()),
        _ => serde_yaml::from_str::<Value>(raw).unwrap_or_else(|_| Value::String(raw.to_string())),
    }
}

/// Merges `provided` (file) and `sets` (flags, which win), applies defaults, and checks every
/// input. Returns every problem, not just the first.
pub(crate) fn resolve(
    declared: &IndexMap<String, InputSpec>,
    provided: Map<String, Value>,
    sets: &[(String, String)],
) -> Result<Map<String, Value>, Vec<InputError>> {
    let mut errors = Vec::new();
    let mut values = provided;
    for (k, raw) in sets {
        values.insert(k.clone(), parse_set_value(declared.get(k), raw));
    }
    for k in values.keys() {
        if !declared.contains_key(k) {
            let hint = match crate::diag::did_you_mean(k, declared.keys().map(String::as_str)) {
                Some(x) => format!("did you mean `{x}`?"),
                None if declared.is_empty() => "the workflow declares no inputs".to_string(),
                None => format!(
                    "declared inputs: {}",
                    declared.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            };
            errors.push(InputError {
                code: codes::INPUT_UNKNOWN,
                field: k.clone(),
                message: format!("the workflow has no such input; {hint}"),
            });
        }
    }
    let mut out = Map::new();
    for (name, spec) in declared {
        match values.remove(name) {
            // `null` is how an optional input says "not given".
            Some(Value::Null) if spec.required == Some(false) && spec.default.is_none() => {
                out.insert(name.clone(), Value::Null);
            }
            Some(v) => {
                if let Err(message) = check_value(name, spec, &v) {
                    errors.push(InputError::invalid(name.clone(), message));
                }
                out.insert(name.clone(), v);
            }
            None => match &spec.default {
                Some(d) => {
                    out.insert(name.clone(), d.clone());
                }
                None if spec.required == Some(false) => {
                    out.insert(name.clone(), Value::Null);
                }
                None => errors.push(InputError {
                    code: codes::INPUT_MISSING,
                    field: name.clone(),
                    message: format!(
                        "required {} input is missing; give it in the input file or with `--set {name}=…`",
                        spec.kind.name()
                    ),
                }),
            },
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The same map with secret inputs replaced by `"***"`, for events, logs and `status`.
pub fn redacted(declared: &IndexMap<String, InputSpec>, values: &Value) -> Value {
    let mut v = values.clone();
    if let Some(obj) = v.as_object_mut() {
        for (name, spec) in declared {
            if spec.secret {
                if let Some(x) = obj.get_mut(name) {
                    *x = Value::String("***".into());
                }
            }
        }
    }
    v
}

/// [`resolve`], then the workflow's `input_check`, if any: everything a run's inputs must pass
/// before the run exists.
pub fn resolve_and_check(
    wf: &crate::workflow::Workflow,
    registry: &crate::plugin::Registry,
    provided: Map<String, Value>,
    sets: &[(String, String)],
) -> Result<Map<String, Value>, Vec<InputError>> {
    let values = resolve(&wf.inputs, provided, sets)?;
    if let Some(check) = wf
        .input_check
        .as_deref()
        .and_then(|n| registry.input_check(n))
    {
        let problems = check(&values);
        if !problems.is_empty() {
            return Err(problems);
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn declared() -> IndexMap<String, InputSpec> {
        serde_yaml::from_str(
            r#"
customer: { type: string, pattern: "[a-z][a-z0-9-]{2,30}" }
regions: { type: array, default: [us-east-1] }
count: { type: integer, required: false }
tier: { type: string, enum: [gold, silver] , default: silver }
"#,
        )
        .unwrap()
    }

    #[test]
    fn defaults_and_sets_apply() {
        let m = resolve(
            &declared(),
            json!({"customer": "acme"}).as_object().unwrap().clone(),
            &[
                ("count".into(), "3".into()),
                ("customer".into(), "acme-2".into()),
            ],
        )
        .unwrap();
        assert_eq!(m["customer"], json!("acme-2"));
        assert_eq!(m["regions"], json!(["us-east-1"]));
        assert_eq!(m["count"], json!(3));
        assert_eq!(m["tier"], json!("silver"));
    }

    #[test]
    fn every_problem_is_named() {
        let errs = resolve(
            &declared(),
            json!({"customer": "A!", "tier": "bronze", "regoins": []})
                .as_object()
                .unwrap()
                .clone(),
            &[("count".into(), "many".into())],
        )
        .unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["regoins", "customer", "count", "tier"]);
        assert!(errs[0].message.contains("did you mean `regions`"));
    }

    #[test]
    fn patterns_match_the_whole_value() {
        let d = declared();
        assert!(check_value("customer", &d["customer"], &json!("acme")).is_ok());
        assert!(check_value("customer", &d["customer"], &json!("acme!")).is_err());
    }
}
