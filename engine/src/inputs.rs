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
    /// The problem as a diagnostic located by its field path, for a report on the file the
    /// value came from (`Report::new` with the file's source map finds the line and column).
    pub fn diagnostic(&self) -> crate::diag::Diagnostic {
        use crate::diag::Diagnostic;
        let d = Diagnostic::error(
            self.code,
            format!("input `{}`: {}", self.field, self.message),
        )
        .with_path(crate::Path::parse(&self.field));
        if self.code == codes::INPUT_MISSING || self.message.starts_with("missing field") {
            d.with_label("missing in here")
                .with_help("add it (or give it with `--set NAME=VALUE`)")
        } else if self.code == codes::INPUT_UNKNOWN || self.message.starts_with("unknown field") {
            d.at_key()
                .with_label("unknown")
                .with_help("remove it, or fix its spelling")
        } else {
            d.with_label("here")
        }
    }

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
    let check = wf
        .input_check
        .as_deref()
        .and_then(|n| registry.input_check(n));
    let values = match resolve(&wf.inputs, provided.clone(), sets) {
        Ok(v) => v,
        Err(mut errors) => {
            // The check still looks at what was given, so one unknown or missing input does
            // not hide the other problems; a field reported twice is reported once.
            if let Some(check) = check {
                let mut given = provided;
                given.retain(|k, _| wf.inputs.contains_key(k));
                for p in check(&given) {
                    if !errors.iter().any(|e| e.field == p.field) {
                        errors.push(p);
                    }
                }
            }
            return Err(errors);
        }
    };
    if let Some(check) = check {
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

/// How a sealed input is kept in a run or plan record: the name of its sealed value (in the
/// store's secrets, opened with the data key only to run).
pub(crate) const SEALED: &str = "$sealed";

/// Why secret inputs could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretInputError {
    #[error("the workflow's secret input(s) {} need a data key to be stored sealed: set LANDFALL_DATA_KEY (64 hex digits, e.g. `openssl rand -hex 32`; `serve` also takes --data-key-file); nothing ran", .0.join(", "))]
    NoKey(Vec<String>),
    #[error("secret input `{0}` is not in the state file")]
    Missing(String),
    #[error("secret input `{0}` does not open with this data key (another key, or `rotate-key` ran with a key this process does not have)")]
    Rejected(String),
}

/// A run's or plan's inputs as they are stored: secret values replaced by a reference to their
/// sealed value, the sealed values to commit with the record, and the digest of the inputs
/// (over keyed fingerprints of the secrets, never over their values).
pub(crate) struct Sealed {
    pub(crate) stored: Value,
    pub(crate) secrets: Vec<(String, Vec<u8>)>,
    pub(crate) digest: String,
}

fn secret_values<'a>(
    declared: &'a IndexMap<String, InputSpec>,
    values: &'a Value,
) -> impl Iterator<Item = (&'a String, &'a Value)> {
    declared
        .iter()
        .filter(|(_, spec)| spec.secret)
        .filter_map(move |(name, _)| values.get(name).map(|v| (name, v)))
        .filter(|(_, v)| !v.is_null())
}

/// The digest of `values` (plain), with secret values fingerprinted under `key`. Without
/// secret values it is the plain digest, as before secrets were sealed.
pub(crate) fn digest(
    declared: &IndexMap<String, InputSpec>,
    values: &Value,
    key: Option<&crate::DataKey>,
) -> Result<String, SecretInputError> {
    let secret: Vec<(&String, &Value)> = secret_values(declared, values).collect();
    if secret.is_empty() {
        return Ok(crate::digest::digest_of(values));
    }
    let key = key.ok_or_else(|| {
        SecretInputError::NoKey(secret.iter().map(|(n, _)| (*n).clone()).collect())
    })?;
    let mut form = values.clone();
    for (name, v) in secret {
        let fp = key.fingerprint(name.as_bytes(), v.to_string().as_bytes());
        form[name.as_str()] = serde_json::json!({ "$secret": fp });
    }
    Ok(crate::digest::digest_of(&form))
}

/// Seals the secret values of `values` (plain) for the record of `owner` (a run or plan id).
pub(crate) fn seal(
    declared: &IndexMap<String, InputSpec>,
    values: &Value,
    owner: &str,
    key: Option<&crate::DataKey>,
) -> Result<Sealed, SecretInputError> {
    let digest = digest(declared, values, key)?;
    let mut stored = values.clone();
    let mut secrets = Vec::new();
    if let Some(key) = key {
        for (name, v) in secret_values(declared, values) {
            let sealed_name = format!("input.{owner}.{name}");
            secrets.push((
                sealed_name.clone(),
                key.seal(v.to_string().as_bytes(), sealed_name.as_bytes()),
            ));
            stored[name.as_str()] = serde_json::json!({ SEALED: sealed_name });
        }
    }
    Ok(Sealed {
        stored,
        secrets,
        digest,
    })
}

/// `stored` inputs with each sealed value opened. Records written before inputs were sealed
/// hold plain values, which pass through.
pub(crate) fn open(
    stored: &Value,
    store: &dyn crate::store::Store,
    key: Option<&crate::DataKey>,
) -> Result<Value, OpenError> {
    let mut out = stored.clone();
    let Some(obj) = out.as_object_mut() else {
        return Ok(out);
    };
    let sealed: Vec<(String, String)> = obj
        .iter()
        .filter_map(|(k, v)| {
            let o = v.as_object()?;
            (o.len() == 1)
                .then(|| o.get(SEALED)?.as_str().map(|n| (k.clone(), n.to_string())))
                .flatten()
        })
        .collect();
    if sealed.is_empty() {
        return Ok(out);
    }
    let key = key.ok_or_else(|| {
        OpenError::Secret(SecretInputError::NoKey(
            sealed.iter().map(|(k, _)| k.clone()).collect(),
        ))
    })?;
    for (input, name) in sealed {
        let bytes = store
            .secret(&name)?
            .ok_or_else(|| OpenError::Secret(SecretInputError::Missing(input.clone())))?;
        let plain = key
            .open(&bytes, name.as_bytes())
            .map_err(|_| OpenError::Secret(SecretInputError::Rejected(input.clone())))?;
        let v: Value = serde_json::from_slice(&plain)
            .map_err(|_| OpenError::Secret(SecretInputError::Rejected(input.clone())))?;
        obj.insert(input, v);
    }
    Ok(out)
}

/// Why stored inputs could not be opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    #[error(transparent)]
    Secret(#[from] SecretInputError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

#[cfg(test)]
mod sealing_tests {
    use super::*;
    use crate::store::{Batch, MemStore, Store};
    use serde_json::json;

    fn declared() -> IndexMap<String, InputSpec> {
        serde_yaml::from_str("user: { type: string }\ntoken: { type: string, secret: true }\n")
            .unwrap()
    }

    fn key(b: u8) -> crate::DataKey {
        crate::DataKey::from_bytes(&[b; 32]).unwrap()
    }

    #[test]
    fn sealed_inputs_open_to_what_they_were_and_keep_no_value() {
        let plain = json!({ "user": "bob", "token": "xoxb-hunter2" });
        let s = seal(&declared(), &plain, "r-1", Some(&key(1))).unwrap();
        assert_eq!(s.stored["user"], "bob");
        assert_eq!(s.stored["token"], json!({ "$sealed": "input.r-1.token" }));
        assert!(!s.stored.to_string().contains("hunter2"));
        let store = MemStore::default();
        store
            .commit(Batch {
                secrets: s.secrets,
                ..Batch::default()
            })
            .unwrap();
        assert_eq!(open(&s.stored, &store, Some(&key(1))).unwrap(), plain);
        assert!(matches!(
            open(&s.stored, &store, Some(&key(2))),
            Err(OpenError::Secret(SecretInputError::Rejected(_)))
        ));
        assert!(matches!(
            open(&s.stored, &store, None),
            Err(OpenError::Secret(SecretInputError::NoKey(_)))
        ));
        // Records from before sealing hold plain values: they pass through.
        assert_eq!(open(&plain, &store, None).unwrap(), plain);
    }

    #[test]
    fn the_digest_is_keyed_for_secrets_and_plain_without_them() {
        let d = declared();
        let a = json!({ "user": "bob", "token": "t1" });
        let b = json!({ "user": "bob", "token": "t2" });
        let k = key(1);
        assert_eq!(digest(&d, &a, Some(&k)), digest(&d, &a, Some(&k)));
        assert_ne!(digest(&d, &a, Some(&k)), digest(&d, &b, Some(&k)));
        assert_ne!(
            digest(&d, &a, Some(&k)).unwrap(),
            crate::digest::digest_of(&a)
        );
        assert!(matches!(digest(&d, &a, None), Err(SecretInputError::NoKey(n)) if n == ["token"]));
        let no_secret = json!({ "user": "bob" });
        assert_eq!(
            digest(&d, &no_secret, None).unwrap(),
            crate::digest::digest_of(&no_secret)
        );
    }
}
