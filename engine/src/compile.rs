//! Workflow file → [`Workflow`], returning **every** problem at once.
//!
//! Named phases, each reporting what it finds and handing the next only what was sound:
//! parse (syntax) → unknown fields (from the format's JSON Schema, with suggestions) →
//! `phase_header` (each bad top-level key reported and dropped) → `phase_inputs` (entry by
//! entry) → `phase_steps` (one step at a time) → `phase_ids` → `phase_plugins` →
//! `phase_needs` → cycles (`topo_order`) → expressions (syntax and what they name) and each
//! plugin's check of its `with:` block, step by step.

use std::collections::{BTreeSet, HashMap};

use petgraph::graph::DiGraph;
use serde_json::Value;

use crate::breaker::BreakerConfig;
use crate::diag::{codes, did_you_mean, Diagnostic, Report};
use crate::expr::{self, Template};
use crate::path::Path;
use crate::plugin::Registry;
use crate::retry::RetryPolicy;
use crate::source::{self, Source};
use crate::spec::{InputSpec, InputType, StepSpec, WorkflowSpec};
use crate::workflow::{Condition, RunsOn, Step, Workflow};

/// The result of compiling one file: the workflow if there were no errors, and the report
/// (errors and warnings) either way.
pub struct Compiled {
    pub workflow: Option<Workflow>,
    pub report: Report,
}

pub fn compile(source: &Source, registry: &Registry) -> Compiled {
    let (doc, mut diags) = match source::parse(source) {
        Ok(x) => x,
        Err(d) => {
            return Compiled {
                workflow: None,
                report: Report::new(source.clone(), None, vec![d]),
            }
        }
    };
    let mut value = doc.value.clone();
    let schema = crate::spec::json_schema();
    unknown_fields(&schema, &schema, &mut value, &Path::root(), &mut diags);
    let workflow = build(source, &value, registry, &mut diags);
    let ok = !diags.iter().any(Diagnostic::is_error);
    Compiled {
        workflow: if ok { workflow } else { None },
        report: Report::new(source.clone(), Some(&doc.map), diags),
    }
}

/// Reports keys the format does not know (with the nearest known one) and removes them, so
/// later phases see only known fields.
fn unknown_fields(
    root: &Value,
    schema: &Value,
    v: &mut Value,
    path: &Path,
    out: &mut Vec<Diagnostic>,
) {
    let schema = deref(root, schema);
    match v {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let extra = schema.get("additionalProperties");
            let mut unknown = Vec::new();
            for (k, val) in map.iter_mut() {
                let p = path.key(k.clone());
                if let Some(s) = props.and_then(|ps| ps.get(k)) {
                    unknown_fields(root, s, val, &p, out);
                } else if let Some(s @ Value::Object(_)) = extra {
                    unknown_fields(root, s, val, &p, out);
                } else if matches!(extra, Some(Value::Bool(false))) {
                    let known: Vec<&str> = props
                        .map(|ps| ps.keys().map(String::as_str).collect())
                        .unwrap_or_default();
                    let help = match did_you_mean(k, known.iter().copied()) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!("known fields here: {}", known.join(", ")),
                    };
                    out.push(
                        Diagnostic::error(codes::UNKNOWN_FIELD, format!("unknown field `{k}`"))
                            .with_path(p)
                            .at_key()
                            .with_label("not a field here")
                            .with_help(help),
                    );
                    unknown.push(k.clone());
                }
            }
            for k in unknown {
                map.remove(&k);
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    unknown_fields(root, item_schema, item, &path.index(i), out);
                }
            }
        }
        _ => {}
    }
}

fn deref<'a>(root: &'a Value, schema: &'a Value) -> &'a Value {
    let mut s = schema;
    for _ in 0..8 {
        let next = s
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/"))
            .and_then(|r| r.split('/').try_fold(root, |acc, seg| acc.get(seg)));
        if let Some(n) = next {
            s = n;
            continue;
        }
        // `Option<T>` is `anyOf: [T, null]`.
        if let Some(b) = s.get("anyOf").and_then(Value::as_array) {
            if let Some(x) = b
                .iter()
                .find(|x| x.get("type").and_then(Value::as_str) != Some("null"))
            {
                s = x;
                continue;
            }
        }
        break;
    }
    s
}

fn serde_problem(e: serde_path_to_error::Error<serde_json::Error>, base: &Path) -> Diagnostic {
    let path = base.join(&Path::from_serde(e.path()));
    let msg = e.inner().to_string();
    let (code, help) = if msg.starts_with("missing field") {
        (codes::INVALID_VALUE, "add the field".to_string())
    } else {
        (
            codes::INVALID_VALUE,
            "see `landfall schema` for the expected shape".to_string(),
        )
    };
    Diagnostic::error(code, msg)
        .with_path(path)
        .with_label("here")
        .with_help(help)
}

fn valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn build(
    source: &Source,
    value: &Value,
    registry: &Registry,
    diags: &mut Vec<Diagnostic>,
) -> Option<Workflow> {
    let Value::Object(top) = value else {
        diags.push(
            Diagnostic::error(codes::INVALID_VALUE, "a workflow file must be a mapping")
                .with_path(Path::root())
                .with_help("start with `name:` and `steps:`"),
        );
        return None;
    };

    // Each phase reports what it finds and hands the next what was sound, so one problem
    // never hides another.
    let header = phase_header(top, diags);
    let inputs = phase_inputs(top.get("inputs"), diags);
    let specs = phase_steps(top, diags);
    let index = phase_ids(&specs, diags);
    phase_plugins(&specs, registry, diags);
    let needs = phase_needs(&specs, &index, diags);
    // A cycle stops the workflow from compiling, but the other checks still run so every
    // problem is reported at once.
    let order = topo_order(&specs, &needs, diags);
    let n = specs.len();
    let ids: Vec<&str> = specs.iter().map(|(_, s)| s.id.as_str()).collect();
    let mut spec = header?;
    spec.inputs = inputs;
    if specs.is_empty() && value.get("steps").is_some_and(Value::is_array) {
        diags.push(
            Diagnostic::error(codes::INVALID_VALUE, "a workflow needs at least one step")
                .with_path(Path::root().key("steps"))
                .with_help("add a step (`- { id: hello, uses: log, with: { message: hi } }`)"),
        );
    }
    if spec.max_parallel == Some(0) {
        diags.push(
            Diagnostic::error(codes::INVALID_VALUE, "`max_parallel` must be at least 1")
                .with_path(Path::root().key("max_parallel"))
                .with_help("remove it to use the configured default, or give a number ≥ 1"),
        );
    }
    if let Some(c) = &spec.concurrency {
        check_concurrency(c, &spec.inputs, &Path::root().key("concurrency"), diags);
    }
    let default_retry = RetryPolicy::default().merged(spec.defaults.retry.as_ref());
    for (field, problem) in default_retry.problems() {
        diags.push(
            Diagnostic::error(codes::INVALID_VALUE, problem)
                .with_path(Path::root().key("defaults").key("retry").key(field))
                .with_help(
                    "delays start at `initial_delay` and grow by `multiplier` up to `max_delay`",
                ),
        );
    }
    let breaker = {
        let d = BreakerConfig::default();
        let b = spec.defaults.circuit_breaker.as_ref();
        BreakerConfig {
            failure_threshold: b
                .and_then(|b| b.failure_threshold)
                .unwrap_or(d.failure_threshold)
                .max(1),
            cool_down: b.and_then(|b| b.cool_down).unwrap_or(d.cool_down),
        }
    };

    let mut steps = Vec::with_capacity(n);
    for (i, (p, s)) in specs.iter().enumerate() {
        let scope = Scope {
            inputs: &spec.inputs,
            ids: &ids,
            needs: &needs,
            ancestors: std::cell::OnceCell::new(),
            self_index: i,
            has_item: s.for_each.is_some(),
        };
        let with = s.with.clone().unwrap_or(Value::Object(Default::default()));
        check_templates(&with, &p.key("with"), &scope, diags);
        if let Some(fe) = &s.for_each {
            let fe_scope = Scope {
                inputs: scope.inputs,
                ids: scope.ids,
                needs: scope.needs,
                ancestors: scope.ancestors.clone(),
                self_index: i,
                has_item: false,
            };
            match fe {
                // A list written out in the file is known now: over the fan-out limit, the
                // file is refused before anything runs (an expression's list is checked when
                // it is rendered).
                Value::Array(items) if items.len() > crate::limits::get().max_fan_out => diags
                    .push(
                        Diagnostic::error(
                            codes::INVALID_VALUE,
                            format!(
                                "`for_each` lists {} items; at most {} instances per step",
                                items.len(),
                                crate::limits::get().max_fan_out
                            ),
                        )
                        .with_path(p.key("for_each"))
                        .with_help("split the step, or raise limits.max_fan_out in landfall.toml"),
                    ),
                Value::String(_) | Value::Array(_) => {
                    check_templates(fe, &p.key("for_each"), &fe_scope, diags)
                }
                _ => diags.push(
                    Diagnostic::error(
                        codes::INVALID_VALUE,
                        "`for_each` must be a list or an expression that gives one",
                    )
                    .with_path(p.key("for_each"))
                    .with_help("e.g. `for_each: \"{{ inputs.regions }}\"`"),
                ),
            }
        }
        let when = match &s.when {
            None => Condition {
                expr: None,
                runs_on: RunsOn::Success,
            },
            Some(w) => {
                let e = expr::condition_expr(w);
                let wp = p.key("when");
                match expr::referenced_in_expr(e) {
                    Err(err) => diags.push(
                        Diagnostic::error(
                            codes::EXPRESSION_SYNTAX,
                            format!("`when` is not a valid expression: {err}"),
                        )
                        .with_path(wp)
                        .with_help("write a condition such as `{{ steps.a.status == 'succeeded' }}` or `failure()`"),
                    ),
                    Ok(vars) => scope.check_vars(&vars, &wp, diags),
                }
                let used = expr::status_functions_used(e);
                let runs_on = if used.contains("failure")
                    || used.contains("always")
                    || used.contains("cancelled")
                {
                    RunsOn::Any
                } else {
                    RunsOn::Success
                };
                Condition {
                    expr: Some(e.to_string()),
                    runs_on,
                }
            }
        };
        if let Some(plugin) = registry.get(&s.uses) {
            if !matches!(&with, Value::String(x) if matches!(Template::classify(x), Template::Expr(_)))
            {
                for problem in plugin.check(&with) {
                    diags.push(
                        Diagnostic::error(
                            codes::INVALID_WITH,
                            format!("invalid `with` for `{}`: {}", s.uses, problem.message),
                        )
                        .with_path(p.key("with").join(&problem.path))
                        .with_label("here")
                        .with_help(format!(
                            "`landfall steps` shows the fields `{}` takes",
                            s.uses
                        )),
                    );
                }
            }
        }
        let retry = default_retry.merged(s.retry.as_ref());
        if s.retry.is_some() {
            for (field, problem) in retry.problems() {
                diags.push(
                    Diagnostic::error(codes::INVALID_VALUE, problem)
                        .with_path(p.key("retry").key(field))
                        .with_help("delays start at `initial_delay` and grow by `multiplier` up to `max_delay`"),
                );
            }
        }
        if s.max_parallel == Some(0) {
            diags.push(
                Diagnostic::error(codes::INVALID_VALUE, "`max_parallel` must be at least 1")
                    .with_path(p.key("max_parallel"))
                    .with_help(
                        "remove it to let the run's `max_parallel` decide, or give a number ≥ 1",
                    ),
            );
        }
        if let Some(c) = &s.concurrency {
            check_concurrency(c, &spec.inputs, &p.key("concurrency"), diags);
        }
        check_approve_waves(s, p, registry, diags);
        let rollout = rollout_of(s, p, diags);
        steps.push(Step {
            id: s.id.clone(),
            uses: s.uses.clone(),
            name: s.name.clone(),
            needs: needs[i].clone(),
            with_has_templates: expr::has_templates(&with),
            with,
            when,
            for_each: s.for_each.clone(),
            max_parallel: s.max_parallel,
            rollout,
            approve_waves: s.approve_waves.clone(),
            concurrency: s.concurrency.clone(),
            retry,
            timeout: s.timeout.or(spec.defaults.timeout),
            attempt_timeout: s.attempt_timeout.or(spec.defaults.attempt_timeout),
            circuit: s.circuit.clone().unwrap_or_else(|| s.uses.clone()),
            plan: s.plan,
            path: p.clone(),
        });
    }

    let input_check = spec.input_check.clone();
    if let Some(name) = &input_check {
        if registry.input_check(name).is_none() {
            let known: Vec<&str> = registry.input_check_names().collect();
            diags.push(
                Diagnostic::error(
                    codes::UNKNOWN_INPUT_CHECK,
                    format!("unknown input check `{name}`"),
                )
                .with_path(Path::root().key("input_check"))
                .with_label("no check has this name")
                .with_help(if known.is_empty() {
                    "this build has no input checks".to_string()
                } else {
                    format!("known checks: {}", known.join(", "))
                }),
            );
        }
    }
    let slack = spec.trigger.as_ref().and_then(|t| t.slack.clone());
    if let Some(t) = &slack {
        check_slack_trigger(t, &spec.inputs, diags);
    }
    let mut wf = Workflow::new(
        spec.name,
        spec.description,
        source.clone(),
        spec.inputs,
        spec.max_parallel,
        steps,
        order?,
        breaker,
    );
    wf.input_check = input_check;
    wf.slack = slack;
    wf.concurrency = spec.concurrency.clone();
    Some(wf)
}

/// Phase 1, the header: every top-level key but `inputs` and `steps`. A key whose value is
/// wrong is reported and left out (its default used), and the rest is read again, so each bad
/// key is reported.
fn phase_header(
    top: &serde_json::Map<String, Value>,
    diags: &mut Vec<Diagnostic>,
) -> Option<WorkflowSpec> {
    let mut header = top.clone();
    header.insert("steps".into(), Value::Array(Vec::new()));
    header.insert("inputs".into(), Value::Object(Default::default()));
    if !top.contains_key("steps") {
        diags.push(
            Diagnostic::error(codes::INVALID_VALUE, "missing field `steps`")
                .with_path(Path::root())
                .with_help("add `steps:` with at least one step"),
        );
    }
    // Each round removes one key, so this ends.
    loop {
        match serde_path_to_error::deserialize::<_, WorkflowSpec>(Value::Object(header.clone())) {
            Ok(s) => return Some(s),
            Err(e) => {
                let key = match e.path().iter().next() {
                    Some(serde_path_to_error::Segment::Map { key }) => Some(key.clone()),
                    _ => None,
                };
                diags.push(serde_problem(e, &Path::root()));
                match key {
                    // `name` is required: a stand-in lets the other keys be read.
                    Some(k) if k == "name" => {
                        header.insert(k, Value::String(String::new()));
                    }
                    Some(k) if header.remove(&k).is_some() => {}
                    // A missing required field, or a problem of the whole: nothing to drop.
                    _ => return None,
                }
            }
        }
    }
}

/// Phase 2, inputs: each entry read on its own, then checked (pattern, default, enum); an
/// entry that cannot be read is reported and left out.
fn phase_inputs(
    raw: Option<&Value>,
    diags: &mut Vec<Diagnostic>,
) -> indexmap::IndexMap<String, InputSpec> {
    let mut out = indexmap::IndexMap::new();
    let entries = match raw {
        None | Some(Value::Null) => return out,
        Some(Value::Object(m)) => m,
        Some(_) => {
            diags.push(
                Diagnostic::error(
                    codes::INVALID_VALUE,
                    "`inputs` must be a mapping of input names to their types",
                )
                .with_path(Path::root().key("inputs"))
                .with_help("e.g. `inputs: { customer: { type: string } }`"),
            );
            return out;
        }
    };
    for (name, v) in entries {
        let p = Path::root().key("inputs").key(name.clone());
        match serde_path_to_error::deserialize::<_, InputSpec>(v.clone()) {
            Ok(spec) => {
                out.insert(name.clone(), spec);
            }
            Err(e) => diags.push(serde_problem(e, &p)),
        }
    }
    check_inputs(&out, diags);
    out
}

/// Phase 3, steps: each read on its own, so one bad step does not hide the others.
fn phase_steps(
    top: &serde_json::Map<String, Value>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<(Path, StepSpec)> {
    let steps_path = Path::root().key("steps");
    let raw: &[Value] = match top.get("steps") {
        Some(Value::Array(s)) => s,
        Some(_) => {
            diags.push(
                Diagnostic::error(codes::INVALID_VALUE, "`steps` must be a list of steps")
                    .with_path(steps_path)
                    .with_help("write each step as `- id: …`"),
            );
            return Vec::new();
        }
        None => return Vec::new(),
    };
    let mut specs = Vec::new();
    for (i, raw) in raw.iter().enumerate() {
        let p = steps_path.index(i);
        match serde_path_to_error::deserialize::<_, StepSpec>(raw.clone()) {
            Ok(s) => specs.push((p, s)),
            Err(e) => diags.push(serde_problem(e, &p)),
        }
    }
    specs
}

/// Phase 4, ids: valid in expressions, and each used once. Returns id → position.
fn phase_ids(specs: &[(Path, StepSpec)], diags: &mut Vec<Diagnostic>) -> HashMap<String, usize> {
    let mut index: HashMap<String, usize> = HashMap::new();
    for (i, (p, s)) in specs.iter().enumerate() {
        let id_path = p.key("id");
        if !valid_id(&s.id) {
            diags.push(
                Diagnostic::error(
                    codes::INVALID_ID,
                    format!("`{}` is not a valid step id", s.id),
                )
                .with_path(id_path.clone())
                .with_label("invalid id")
                .with_help(
                    "use letters, digits and `_`, starting with a letter, so that \
                         `steps.<id>` works in expressions",
                ),
            );
        }
        if let Some(&first) = index.get(&s.id) {
            diags.push(
                Diagnostic::error(
                    codes::DUPLICATE_ID,
                    format!("step id `{}` is used twice", s.id),
                )
                .with_path(id_path)
                .with_label("second step with this id")
                .with_help(format!(
                    "the first one is {}; give each step its own id",
                    specs[first].0
                )),
            );
        } else {
            index.insert(s.id.clone(), i);
        }
    }
    index
}

/// Phase 5, plugins: every `uses` names one this build has.
fn phase_plugins(specs: &[(Path, StepSpec)], registry: &Registry, diags: &mut Vec<Diagnostic>) {
    let names: Vec<&str> = registry.names().collect();
    for (p, s) in specs {
        if registry.get(&s.uses).is_none() {
            let help = match did_you_mean(&s.uses, names.iter().copied()) {
                Some(n) => format!("did you mean `{n}`? (`landfall steps` lists every plugin)"),
                None => format!("known plugins: {}", names.join(", ")),
            };
            diags.push(
                Diagnostic::error(
                    codes::UNKNOWN_PLUGIN,
                    format!("unknown plugin `{}`", s.uses),
                )
                .with_path(p.key("uses"))
                .with_label("no plugin has this name")
                .with_help(help),
            );
        }
    }
}

/// Phase 6, needs: every edge names a step. Returns each step's dependencies by position.
fn phase_needs(
    specs: &[(Path, StepSpec)],
    index: &HashMap<String, usize>,
    diags: &mut Vec<Diagnostic>,
) -> Vec<Vec<usize>> {
    let mut needs: Vec<Vec<usize>> = vec![Vec::new(); specs.len()];
    let ids: Vec<&str> = specs.iter().map(|(_, s)| s.id.as_str()).collect();
    for (i, (p, s)) in specs.iter().enumerate() {
        for (j, need) in s.needs.iter().enumerate() {
            match index.get(need) {
                Some(&k) => {
                    if !needs[i].contains(&k) {
                        needs[i].push(k)
                    }
                }
                None => {
                    let help = match did_you_mean(need, ids.iter().copied()) {
                        Some(x) => format!("did you mean `{x}`?"),
                        None => "`needs` lists ids of steps in this file".to_string(),
                    };
                    diags.push(
                        Diagnostic::error(
                            codes::UNKNOWN_NEED,
                            format!("`needs` names `{need}`, which is not a step"),
                        )
                        .with_path(p.key("needs").index(j))
                        .with_label("no step has this id")
                        .with_help(help),
                    );
                }
            }
        }
    }
    needs
}

fn check_slack_trigger(
    t: &crate::spec::SlackTrigger,
    inputs: &indexmap::IndexMap<String, crate::spec::InputSpec>,
    diags: &mut Vec<Diagnostic>,
) {
    let base = Path::root().key("trigger").key("slack");
    let word_ok = !t.command.is_empty()
        && t.command.len() <= 32
        && t.command.starts_with(|c: char| c.is_ascii_lowercase())
        && t.command
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !word_ok {
        diags.push(
            Diagnostic::error(
                codes::INVALID_TRIGGER,
                format!("`{}` is not a command word", t.command),
            )
            .with_path(base.clone().key("command"))
            .with_help(
                "use lowercase letters, digits and `-`, starting with a letter (e.g. `onboard`)",
            ),
        );
    } else if crate::spec::BUILTIN_COMMANDS.contains(&t.command.as_str()) {
        diags.push(
            Diagnostic::error(
                codes::INVALID_TRIGGER,
                format!("`{}` is a built-in /landfall command", t.command),
            )
            .with_path(base.clone().key("command"))
            .with_help(format!(
                "choose another word; built-in: {}",
                crate::spec::BUILTIN_COMMANDS.join(", ")
            )),
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, a) in t.args.iter().enumerate() {
        let p = base.clone().key("args").index(i);
        if !inputs.contains_key(a) {
            let declared: Vec<&str> = inputs.keys().map(String::as_str).collect();
            diags.push(
                Diagnostic::error(codes::INVALID_TRIGGER, format!("`{a}` is not an input"))
                    .with_path(p)
                    .with_help(if declared.is_empty() {
                        "declare it under `inputs:`".to_string()
                    } else {
                        format!("declared inputs: {}", declared.join(", "))
                    }),
            );
        } else if !seen.insert(a) {
            diags.push(
                Diagnostic::error(codes::INVALID_TRIGGER, format!("`{a}` is listed twice"))
                    .with_path(p),
            );
        }
    }
    if let Some(f) = &t.input_file {
        let p = base.clone().key("input_file");
        match crate::expr::referenced(f) {
            Err(e) => {
                diags.push(Diagnostic::error(codes::EXPRESSION_SYNTAX, e.to_string()).with_path(p))
            }
            Ok(vars) => {
                for v in vars {
                    let mut parts = v.split('.');
                    let ok = parts.next() == Some("args")
                        && parts.next().is_none_or(|a| t.args.iter().any(|x| x == a));
                    if !ok {
                        diags.push(
                            Diagnostic::error(
                                codes::INVALID_TRIGGER,
                                format!("`{v}` is not available here"),
                            )
                            .with_path(p.clone())
                            .with_help(format!(
                                "the file name may use the positional args only: {}",
                                t.args
                                    .iter()
                                    .map(|a| format!("args.{a}"))
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )),
                        );
                    }
                }
            }
        }
    }
}

/// A topological order (file order among independent steps), or a diagnostic per cycle.
fn topo_order(
    specs: &[(Path, StepSpec)],
    needs: &[Vec<usize>],
    diags: &mut Vec<Diagnostic>,
) -> Option<Vec<usize>> {
    let n = specs.len();
    let mut g: DiGraph<usize, ()> = DiGraph::with_capacity(n, n);
    let nodes: Vec<_> = (0..n).map(|i| g.add_node(i)).collect();
    for (i, ns) in needs.iter().enumerate() {
        for &k in ns {
            g.add_edge(nodes[k], nodes[i], ());
        }
    }
    let mut cyclic = false;
    for scc in petgraph::algo::tarjan_scc(&g) {
        let members: BTreeSet<usize> = scc.iter().map(|ix| g[*ix]).collect();
        let self_loop = members.len() == 1 && {
            let m = *members.iter().next().unwrap_or(&0);
            needs[m].contains(&m)
        };
        if members.len() < 2 && !self_loop {
            continue;
        }
        cyclic = true;
        let start = *members.iter().next().unwrap_or(&0);
        let cycle = cycle_path(start, &members, needs);
        let text = cycle
            .iter()
            .map(|&i| specs[i].1.id.as_str())
            .collect::<Vec<_>>()
            .join(" → ");
        // Point at the `needs` entry that closes the cycle.
        let (from, to) = (cycle[cycle.len() - 2], cycle[cycle.len() - 1]);
        let need_pos = specs[to]
            .1
            .needs
            .iter()
            .position(|x| *x == specs[from].1.id)
            .unwrap_or(0);
        diags.push(
            Diagnostic::error(codes::CYCLE, format!("the steps form a cycle: {text}"))
                .with_path(specs[to].0.key("needs").index(need_pos))
                .with_label("this edge closes the cycle")
                .with_help(
                    "a step cannot (even indirectly) need itself; remove one of these `needs`",
                ),
        );
    }
    if cyclic {
        return None;
    }
    // Kahn's algorithm with a min-heap on file position keeps the order stable.
    let mut indeg: Vec<usize> = needs.iter().map(Vec::len).collect();
    let mut dependents = vec![Vec::new(); n];
    for (i, ns) in needs.iter().enumerate() {
        for &k in ns {
            dependents[k].push(i);
        }
    }
    let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> = (0..n)
        .filter(|&i| indeg[i] == 0)
        .map(std::cmp::Reverse)
        .collect();
    let mut order = Vec::with_capacity(n);
    while let Some(std::cmp::Reverse(i)) = ready.pop() {
        order.push(i);
        for &d in &dependents[i] {
            indeg[d] -= 1;
            if indeg[d] == 0 {
                ready.push(std::cmp::Reverse(d));
            }
        }
    }
    Some(order)
}

/// A cycle through `start` inside a strongly connected component, following dependency edges
/// (`a → b` means b needs a), ending where it began.
fn cycle_path(start: usize, members: &BTreeSet<usize>, needs: &[Vec<usize>]) -> Vec<usize> {
    // Walk "is needed by" edges with a BFS back to start.
    let n = needs.len();
    let mut dependents = vec![Vec::new(); n];
    for (i, ns) in needs.iter().enumerate() {
        for &k in ns {
            if members.contains(&i) && members.contains(&k) {
                dependents[k].push(i);
            }
        }
    }
    let mut prev = vec![usize::MAX; n];
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(cur) = queue.pop_front() {
        for &d in &dependents[cur] {
            if d == start {
                let mut back = vec![cur];
                let mut x = cur;
                while x != start {
                    x = prev[x];
                    back.push(x);
                }
                back.reverse();
                back.push(start);
                return back;
            }
            if prev[d] == usize::MAX && d != start {
                prev[d] = cur;
                queue.push_back(d);
            }
        }
    }
    vec![start, start]
}

/// What an expression of one step may read.
struct Scope<'a> {
    inputs: &'a indexmap::IndexMap<String, InputSpec>,
    ids: &'a [&'a str],
    needs: &'a [Vec<usize>],
    /// Transitive needs, computed on first use (most steps read no other step).
    ancestors: std::cell::OnceCell<Vec<bool>>,
    self_index: usize,
    has_item: bool,
}

impl Scope<'_> {
    fn is_ancestor(&self, k: usize) -> bool {
        let anc = self.ancestors.get_or_init(|| {
            let mut seen = vec![false; self.needs.len()];
            let mut stack: Vec<usize> = self.needs[self.self_index].clone();
            while let Some(x) = stack.pop() {
                if !std::mem::replace(&mut seen[x], true) {
                    stack.extend(self.needs[x].iter().copied());
                }
            }
            seen
        });
        anc[k]
    }

    fn check_vars(&self, vars: &BTreeSet<String>, path: &Path, diags: &mut Vec<Diagnostic>) {
        for var in vars {
            let mut parts = var.split('.');
            let root = parts.next().unwrap_or_default();
            let second = parts.next();
            match root {
                "inputs" => {
                    if let Some(name) = second {
                        if !self.inputs.contains_key(name) {
                            let help =
                                match did_you_mean(name, self.inputs.keys().map(String::as_str)) {
                                    Some(x) => format!("did you mean `inputs.{x}`?"),
                                    None if self.inputs.is_empty() => {
                                        "this workflow declares no inputs; add it under `inputs:`"
                                            .into()
                                    }
                                    None => format!(
                                        "declared inputs: {}",
                                        self.inputs.keys().cloned().collect::<Vec<_>>().join(", ")
                                    ),
                                };
                            diags.push(
                                Diagnostic::error(
                                    codes::UNKNOWN_INPUT_REF,
                                    format!("`inputs.{name}` is not a declared input"),
                                )
                                .with_path(path.clone())
                                .with_label("used here")
                                .with_help(help),
                            );
                        }
                    }
                }
                "steps" => {
                    let Some(id) = second else { continue };
                    match self.ids.iter().position(|x| *x == id) {
                        None => {
                            let help = match did_you_mean(id, self.ids.iter().copied()) {
                                Some(x) => format!("did you mean `steps.{x}`?"),
                                None => "`steps.<id>` names a step of this file".into(),
                            };
                            diags.push(
                                Diagnostic::error(
                                    codes::STEP_NOT_IN_NEEDS,
                                    format!("`steps.{id}` names no step"),
                                )
                                .with_path(path.clone())
                                .with_label("used here")
                                .with_help(help),
                            );
                        }
                        Some(k) if k == self.self_index => {
                            diags.push(
                                Diagnostic::error(
                                    codes::STEP_NOT_IN_NEEDS,
                                    format!("step `{id}` reads its own `steps.{id}`"),
                                )
                                .with_path(path.clone())
                                .with_label("not known until the step has finished")
                                .with_help("a step can read the steps it needs, not itself"),
                            );
                        }
                        Some(k) if !self.is_ancestor(k) => {
                            let me = self.ids[self.self_index];
                            diags.push(
                                Diagnostic::error(
                                    codes::STEP_NOT_IN_NEEDS,
                                    format!(
                                        "step `{me}` reads `steps.{id}`, but `{id}` is not among its needs"
                                    ),
                                )
                                .with_path(path.clone())
                                .with_label("may not have run yet")
                                .with_help(format!(
                                    "add `{id}` to `needs` of `{me}` (directly or through a step it needs)"
                                )),
                            );
                        }
                        Some(_) => {
                            if let Some(field) = parts.next() {
                                if !["outputs", "status", "error", "failures"].contains(&field) {
                                    diags.push(
                                        Diagnostic::error(
                                            codes::UNKNOWN_VARIABLE,
                                            format!("`steps.{id}.{field}` does not exist"),
                                        )
                                        .with_path(path.clone())
                                        .with_help("a step has `outputs`, `status`, `error` and `failures`"),
                                    );
                                }
                            }
                        }
                    }
                }
                "item" | "index" if self.has_item => {}
                "item" | "index" => diags.push(
                    Diagnostic::error(
                        codes::UNKNOWN_VARIABLE,
                        format!("`{root}` exists only inside a `for_each` step"),
                    )
                    .with_path(path.clone())
                    .with_help("add `for_each:` to this step, or remove the reference"),
                ),
                "run" => {
                    if let Some(field) = second {
                        if !["id", "started_at", "workflow", "failures"].contains(&field) {
                            diags.push(
                                Diagnostic::error(
                                    codes::UNKNOWN_VARIABLE,
                                    format!("`run.{field}` does not exist"),
                                )
                                .with_path(path.clone())
                                .with_help(
                                    "`run` has `id`, `started_at`, `workflow` and `failures`",
                                ),
                            );
                        }
                    }
                }
                other => {
                    let roots = ["inputs", "steps", "run", "item", "index"];
                    let help = match did_you_mean(other, roots) {
                        Some(x) => format!("did you mean `{x}`?"),
                        None => "expressions can read `inputs`, `steps.<id>`, `run`, and `item`/`index` in a `for_each` step".into(),
                    };
                    diags.push(
                        Diagnostic::error(
                            codes::UNKNOWN_VARIABLE,
                            format!("unknown variable `{other}`"),
                        )
                        .with_path(path.clone())
                        .with_label("used here")
                        .with_help(help),
                    );
                }
            }
        }
    }
}

fn check_templates(v: &Value, path: &Path, scope: &Scope<'_>, diags: &mut Vec<Diagnostic>) {
    match v {
        Value::String(s) => match expr::referenced(s) {
            Ok(vars) => scope.check_vars(&vars, path, diags),
            Err(e) => diags.push(
                Diagnostic::error(codes::EXPRESSION_SYNTAX, format!("invalid template: {e}"))
                    .with_path(path.clone())
                    .with_label("in this string")
                    .with_help("templates use minijinja syntax: `{{ inputs.name }}`"),
            ),
        },
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_templates(item, &path.index(i), scope, diags);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                check_templates(item, &path.key(k.clone()), scope, diags);
            }
        }
        _ => {}
    }
}

fn check_inputs(inputs: &indexmap::IndexMap<String, InputSpec>, diags: &mut Vec<Diagnostic>) {
    for (name, spec) in inputs {
        let p = Path::root().key("inputs").key(name.clone());
        if let Some(pattern) = &spec.pattern {
            if spec.kind != InputType::String {
                diags.push(
                    Diagnostic::error(
                        codes::INVALID_INPUT_SPEC,
                        format!(
                            "`pattern` applies only to string inputs, and `{name}` is {}",
                            spec.kind.name()
                        ),
                    )
                    .with_path(p.key("pattern"))
                    .with_help("remove `pattern`, or use `enum` or a string input"),
                );
            } else if let Err(e) = regex::Regex::new(pattern) {
                diags.push(
                    Diagnostic::error(
                        codes::INVALID_INPUT_SPEC,
                        format!("`pattern` is not a valid regular expression: {e}"),
                    )
                    .with_path(p.key("pattern"))
                    .with_help("the syntax is Rust's `regex` crate (like RE2)"),
                );
            }
        }
        if let Some(default) = &spec.default {
            if let Err(msg) = crate::inputs::check_value(name, spec, default) {
                diags.push(
                    Diagnostic::error(
                        codes::INVALID_INPUT_SPEC,
                        format!("the default of `{name}` is invalid: {msg}"),
                    )
                    .with_path(p.key("default"))
                    .with_help("the default must satisfy the input's own type, pattern and enum"),
                );
            }
        }
        if let Some(values) = &spec.allowed {
            for (i, v) in values.iter().enumerate() {
                if !crate::inputs::has_type(v, spec.kind) {
                    diags.push(
                        Diagnostic::error(
                            codes::INVALID_INPUT_SPEC,
                            format!("this `enum` value is not a {}", spec.kind.name()),
                        )
                        .with_path(p.key("enum").index(i))
                        .with_help(format!(
                            "every allowed value must be a {}",
                            spec.kind.name()
                        )),
                    );
                }
            }
        }
        if spec.required == Some(true) && spec.default.is_some() {
            diags.push(
                Diagnostic::warning(
                    codes::INVALID_INPUT_SPEC,
                    format!("`{name}` is required and has a default; the default is never used"),
                )
                .with_path(p.key("required"))
                .with_help("remove `required: true` or the default"),
            );
        }
    }
}

/// A `concurrency:` (workflow or step): a key that can say something, reads no secret (keys
/// are shown by `status`, in the audit and in Slack), and room for one.
fn check_concurrency(
    c: &crate::concurrency::Concurrency,
    inputs: &indexmap::IndexMap<String, crate::spec::InputSpec>,
    p: &Path,
    diags: &mut Vec<Diagnostic>,
) {
    if let Ok(read) = expr::referenced(&c.key) {
        let secret = inputs.iter().find(|(name, spec)| {
            spec.secret
                && read.iter().any(|v| {
                    v == "inputs"
                        || *v == format!("inputs.{name}")
                        || v.starts_with(&format!("inputs.{name}."))
                })
        });
        if let Some((name, _)) = secret {
            diags.push(
                Diagnostic::error(
                    codes::INVALID_VALUE,
                    format!("the concurrency key reads the secret input `{name}`"),
                )
                .with_path(p.key("key"))
                .with_help("keys are shown by `status`, in the audit and in Slack: key on something public (a customer, an account id)"),
            );
        }
    }
    if c.limit == 0 {
        diags.push(
            Diagnostic::error(codes::INVALID_VALUE, "`limit` must be at least 1")
                .with_path(p.key("limit"))
                .with_help("`limit: 1` lets one at a time run per key"),
        );
    }
    if c.key.trim().is_empty() {
        diags.push(
            Diagnostic::error(codes::INVALID_VALUE, "the concurrency `key` is empty")
                .with_path(p.key("key"))
                .with_help("name what competes, e.g. `key: \"{{ inputs.customer }}\"`"),
        );
    }
}

/// `approve_waves`: settings of the `approval` plugin, on a step that has waves to approve.
fn check_approve_waves(
    s: &crate::spec::StepSpec,
    p: &Path,
    registry: &Registry,
    diags: &mut Vec<Diagnostic>,
) {
    let Some(with) = &s.approve_waves else {
        return;
    };
    let at = p.key("approve_waves");
    if s.waves.is_none() {
        diags.push(
            Diagnostic::error(
                codes::INVALID_VALUE,
                "`approve_waves` asks before each wave, and this step has no `waves`",
            )
            .with_path(at.clone())
            .with_help("add `waves: [1, \"100%\"]` (a canary, then the rest), or remove it"),
        );
    }
    if !with.is_object() && !expr::has_templates(with) {
        diags.push(
            Diagnostic::error(
                codes::INVALID_VALUE,
                "`approve_waves` takes the approval's settings as a mapping",
            )
            .with_path(at.clone())
            .with_help("e.g. `approve_waves: { approvers: [U0123ABCD], timeout: 4h }` (`{}`: anyone may approve)"),
        );
    }
    let Some(plugin) = registry.get(WAVE_APPROVAL) else {
        diags.push(
            Diagnostic::error(
                codes::UNKNOWN_PLUGIN,
                format!("`approve_waves` needs the `{WAVE_APPROVAL}` plugin, which this build does not have"),
            )
            .with_path(at)
            .with_help("remove `approve_waves`, or put an approval step between two steps"),
        );
        return;
    };
    if with.is_object() {
        let filled = crate::rollout::wave_approval(with, &s.id, 1, 2, &[]);
        for problem in plugin.check(&filled) {
            diags.push(
                Diagnostic::error(
                    codes::INVALID_WITH,
                    format!("invalid `approve_waves`: {}", problem.message),
                )
                .with_path(at.join(&problem.path))
                .with_label("here")
                .with_help(format!(
                    "it takes the fields of `{WAVE_APPROVAL}` (`landfall steps` shows them); `title` and `digest` default to the wave"
                )),
            );
        }
    }
}

/// The plugin that approves a wave.
pub(crate) const WAVE_APPROVAL: &str = "approval";

/// A step's `tolerate` and `waves`. Without expressions they are checked here, each problem
/// where it is written; with one, when the step fans out (a problem then fails the step).
fn rollout_of(
    s: &crate::spec::StepSpec,
    p: &Path,
    diags: &mut Vec<Diagnostic>,
) -> crate::rollout::RolloutSpec {
    let spec = crate::rollout::RolloutSpec {
        tolerate: s.tolerate.clone(),
        waves: s.waves.clone(),
    };
    if spec.is_empty() {
        return spec;
    }
    for (field, set) in [
        ("tolerate", s.tolerate.is_some()),
        ("waves", s.waves.is_some()),
    ] {
        if set && s.for_each.is_none() {
            diags.push(
                Diagnostic::error(
                    codes::INVALID_VALUE,
                    format!("`{field}` applies to the instances of a `for_each` step; this step has none"),
                )
                .with_path(p.key(field))
                .with_help("add `for_each:`, or remove it"),
            );
        }
    }
    // An expression is read when the step fans out; here it stands for a valid value.
    let mut written = spec.clone();
    if let Some(t) = &mut written.tolerate {
        for v in [&mut t.count, &mut t.percent].into_iter().flatten() {
            if expr::has_templates(v) {
                *v = Value::from(0);
            }
        }
    }
    if written.waves.as_ref().is_some_and(expr::has_templates) {
        written.waves = None;
    }
    if let Err(problems) = written.resolve(|v| Ok(v.clone())) {
        for (field, message) in problems {
            let mut at = p.clone();
            for part in field.split('.') {
                at = at.key(part);
            }
            diags.push(
                Diagnostic::error(codes::INVALID_VALUE, message)
                    .with_path(at)
                    .with_help("e.g. `tolerate: { count: 1 }` or `{ percent: 10 }`; `waves: [1, \"25%\", \"100%\"]` (sizes count from the first instance)"),
            );
        }
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycle_paths_read_in_dependency_order() {
        // a needs c, b needs a, c needs b: a → b → c → a.
        let needs = vec![vec![2], vec![0], vec![1]];
        let members: BTreeSet<usize> = [0, 1, 2].into();
        assert_eq!(cycle_path(0, &members, &needs), vec![0, 1, 2, 0]);
        let self_loop = vec![vec![0]];
        assert_eq!(cycle_path(0, &[0].into(), &self_loop), vec![0, 0]);
    }

    #[test]
    fn ids_must_work_in_expressions() {
        assert!(valid_id("per_region"));
        assert!(!valid_id("per-region"));
        assert!(!valid_id("1st"));
        assert!(!valid_id(""));
    }
}
