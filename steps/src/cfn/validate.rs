//! `cfn-validate`: checks a package before it is published.
//!
//! Per stack template: syntax; structure (every `Ref`, `Fn::GetAtt`, `Fn::Sub` target and
//! `DependsOn` exists, resources form no dependency cycle, outputs have values); parameters
//! (defaults and the package's supplied values satisfy `AllowedValues`, `AllowedPattern`,
//! `MinLength`/`MaxLength`, `MinValue`/`MaxValue`; every parameter gets a value); CloudFormation
//! limits; and security compliance: the CloudFormation Guard rules of the requested packs
//! under `templates/rules/<pack>/*.guard`, evaluated with the `cfn-guard` crate, so users add
//! rules without recompiling. Every finding names the check, the stack, the resource's logical
//! id when there is one, and the fix. Any error-level finding rejects the package.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use async_trait::async_trait;
use landfall_engine::{Plugin, StepContext, StepError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// CloudFormation's limits for a template passed as `TemplateBody`.
pub(crate) const MAX_BODY_BYTES: usize = 51_200;
pub(crate) const MAX_RESOURCES: usize = 500;
pub(crate) const MAX_PARAMETERS: usize = 200;
pub(crate) const MAX_OUTPUTS: usize = 200;

const PSEUDO: &[&str] = &[
    "AWS::AccountId",
    "AWS::NotificationARNs",
    "AWS::NoValue",
    "AWS::Partition",
    "AWS::Region",
    "AWS::StackId",
    "AWS::StackName",
    "AWS::URLSuffix",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem found in a package.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    /// `syntax`, `structure`, `parameters`, `limits` or `compliance`.
    pub check: &'static str,
    /// The rule (`s3_bucket_encrypted`, `dangling-ref`, …).
    pub rule: String,
    pub stack: String,
    /// The resource's logical id, when the finding is about one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    pub message: String,
    pub fix: String,
}

fn finding(
    check: &'static str,
    rule: &str,
    stack: &str,
    resource: Option<&str>,
    message: String,
    fix: &str,
) -> Finding {
    Finding {
        severity: Severity::Error,
        check,
        rule: rule.into(),
        stack: stack.into(),
        resource: resource.map(str::to_string),
        message,
        fix: fix.into(),
    }
}

/// References found inside a value: (kind, target) with kind `Ref`, `GetAtt`, `Sub`.
fn references(v: &Value, out: &mut Vec<(&'static str, String)>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(t)) = m.get("Ref") {
                out.push(("Ref", t.clone()));
            }
            match m.get("Fn::GetAtt") {
                Some(Value::Array(a)) => {
                    if let Some(Value::String(r)) = a.first() {
                        out.push(("GetAtt", r.clone()));
                    }
                }
                Some(Value::String(s)) => {
                    out.push((
                        "GetAtt",
                        s.split('.').next().unwrap_or_default().to_string(),
                    ));
                }
                _ => {}
            }
            if let Some(sub) = m.get("Fn::Sub") {
                let (text, vars) = match sub {
                    Value::String(s) => (s.as_str(), None),
                    Value::Array(a) => (
                        a.first().and_then(Value::as_str).unwrap_or_default(),
                        a.get(1).and_then(Value::as_object),
                    ),
                    _ => ("", None),
                };
                let mut rest = text;
                while let Some(start) = rest.find("${") {
                    let after = &rest[start + 2..];
                    let Some(end) = after.find('}') else { break };
                    let name = &after[..end];
                    rest = &after[end + 1..];
                    if name.starts_with('!') || vars.is_some_and(|v| v.contains_key(name)) {
                        continue;
                    }
                    let target = name.split('.').next().unwrap_or_default().to_string();
                    out.push(("Sub", target));
                }
            }
            for x in m.values() {
                references(x, out);
            }
        }
        Value::Array(a) => {
            for x in a {
                references(x, out);
            }
        }
        _ => {}
    }
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Checks a value against a parameter's constraints; returns the problem.
fn parameter_problem(name: &str, spec: &Value, value: &Value) -> Option<String> {
    let text = as_text(value);
    if let Some(allowed) = spec.get("AllowedValues").and_then(Value::as_array) {
        if !allowed.iter().any(|a| as_text(a) == text) {
            let list: Vec<String> = allowed.iter().map(as_text).collect();
            return Some(format!(
                "{name} = {text:?} is not one of {}",
                list.join(", ")
            ));
        }
    }
    if let Some(p) = spec.get("AllowedPattern").and_then(Value::as_str) {
        match regex::Regex::new(&format!("^(?:{p})$")) {
            Ok(re) if !re.is_match(&text) => {
                return Some(format!(
                    "{name} = {text:?} does not match AllowedPattern {p}"
                ))
            }
            Err(e) => {
                return Some(format!(
                    "{name}: AllowedPattern {p} is not a valid pattern: {e}"
                ))
            }
            Ok(_) => {}
        }
    }
    let len = text.chars().count() as f64;
    let num = |k: &str| spec.get(k).and_then(|v| as_text(v).parse::<f64>().ok());
    if let Some(min) = num("MinLength") {
        if len < min {
            return Some(format!("{name} = {text:?} is shorter than MinLength {min}"));
        }
    }
    if let Some(max) = num("MaxLength") {
        if len > max {
            return Some(format!("{name} = {text:?} is longer than MaxLength {max}"));
        }
    }
    let is_number = spec.get("Type").and_then(Value::as_str) == Some("Number");
    if is_number || spec.get("MinValue").is_some() || spec.get("MaxValue").is_some() {
        let Ok(n) = text.parse::<f64>() else {
            return Some(format!("{name} = {text:?} is not a number"));
        };
        if let Some(min) = num("MinValue") {
            if n < min {
                return Some(format!("{name} = {n} is below MinValue {min}"));
            }
        }
        if let Some(max) = num("MaxValue") {
            if n > max {
                return Some(format!("{name} = {n} is above MaxValue {max}"));
            }
        }
    }
    None
}

/// What the package supplies for a stack's parameters.
#[derive(Debug, Default, Clone)]
pub(crate) struct Supplied {
    /// Values that apply to every target.
    pub common: BTreeMap<String, Value>,
    /// Values per target (e.g. `Environment` per account).
    pub per_target: Vec<BTreeMap<String, Value>>,
    /// Filled in at deploy time (e.g. `ManagementAccountId`).
    pub at_deploy: BTreeSet<String>,
}

/// Syntax, structure, parameters and limits of one template.
pub(crate) fn check_template(stack: &str, text: &str, supplied: &Supplied) -> Vec<Finding> {
    let mut out = Vec::new();
    if text.len() > MAX_BODY_BYTES {
        out.push(finding(
            "limits",
            "template-size",
            stack,
            None,
            format!(
                "the template is {} bytes; TemplateBody allows {MAX_BODY_BYTES}",
                text.len()
            ),
            "split the stack, or upload the template to S3 and use TemplateURL",
        ));
    }
    let doc: Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            out.push(finding(
                "syntax",
                "yaml",
                stack,
                None,
                format!("not valid YAML: {e}"),
                "fix the template's syntax",
            ));
            return out;
        }
    };
    let empty = serde_json::Map::new();
    let resources = doc
        .get("Resources")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let params = doc
        .get("Parameters")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let outputs = doc
        .get("Outputs")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    if resources.is_empty() {
        out.push(finding(
            "structure",
            "no-resources",
            stack,
            None,
            "the template declares no resources".into(),
            "add at least one resource",
        ));
    }
    for (what, n, max) in [
        ("resources", resources.len(), MAX_RESOURCES),
        ("parameters", params.len(), MAX_PARAMETERS),
        ("outputs", outputs.len(), MAX_OUTPUTS),
    ] {
        if n > max {
            out.push(finding(
                "limits",
                "count",
                stack,
                None,
                format!("{n} {what}; CloudFormation allows {max}"),
                "split the stack",
            ));
        }
    }

    // References and the dependency graph between resources.
    let mut edges: HashMap<&str, BTreeSet<String>> = HashMap::new();
    let known =
        |t: &str| resources.contains_key(t) || params.contains_key(t) || PSEUDO.contains(&t);
    for (id, r) in resources {
        if r.get("Type").and_then(Value::as_str).is_none() {
            out.push(finding(
                "structure",
                "no-type",
                stack,
                Some(id),
                format!("resource {id} has no Type"),
                "give the resource a Type",
            ));
        }
        let mut refs = Vec::new();
        references(r, &mut refs);
        for (kind, target) in refs {
            let ok = match kind {
                "GetAtt" => resources.contains_key(&target),
                _ => known(&target),
            };
            if !ok {
                out.push(finding("structure", "dangling-reference", stack, Some(id), format!("{kind} names `{target}`, which is neither a resource, a parameter nor a pseudo parameter"), "fix the name or declare it"));
            } else if resources.contains_key(&target) {
                edges.entry(id.as_str()).or_default().insert(target);
            }
        }
        let depends: Vec<String> = match r.get("DependsOn") {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        };
        for d in depends {
            if resources.contains_key(&d) {
                edges.entry(id.as_str()).or_default().insert(d);
            } else {
                out.push(finding(
                    "structure",
                    "dangling-depends-on",
                    stack,
                    Some(id),
                    format!("DependsOn names `{d}`, which is not a resource"),
                    "fix the name or remove it",
                ));
            }
        }
    }
    // Cycle detection (iterative DFS with colours).
    let mut colour: HashMap<&str, u8> = HashMap::new();
    for start in resources.keys() {
        if colour.get(start.as_str()).copied().unwrap_or(0) != 0 {
            continue;
        }
        let mut stack_: Vec<(&str, Vec<&str>)> = vec![(
            start.as_str(),
            edges
                .get(start.as_str())
                .map(|e| e.iter().map(String::as_str).collect())
                .unwrap_or_default(),
        )];
        colour.insert(start.as_str(), 1);
        while let Some((node, pending)) = stack_.last_mut() {
            if let Some(next) = pending.pop() {
                match colour.get(next).copied().unwrap_or(0) {
                    0 => {
                        colour.insert(next, 1);
                        let nexts = edges
                            .get(next)
                            .map(|e| e.iter().map(String::as_str).collect())
                            .unwrap_or_default();
                        stack_.push((next, nexts));
                    }
                    1 => {
                        let node = node.to_string();
                        out.push(finding(
                            "structure",
                            "dependency-cycle",
                            stack,
                            Some(&node),
                            format!("resources {node} and {next} depend on each other (a cycle)"),
                            "break the cycle: remove a Ref/GetAtt/DependsOn",
                        ));
                    }
                    _ => {}
                }
            } else {
                colour.insert(node, 2);
                stack_.pop();
            }
        }
    }
    for (id, o) in outputs {
        match o.get("Value") {
            None => out.push(finding(
                "structure",
                "output-without-value",
                stack,
                None,
                format!("output {id} has no Value"),
                "give the output a Value",
            )),
            Some(v) => {
                let mut refs = Vec::new();
                references(v, &mut refs);
                for (kind, target) in refs {
                    let ok = if kind == "GetAtt" {
                        resources.contains_key(&target)
                    } else {
                        known(&target)
                    };
                    if !ok {
                        out.push(finding(
                            "structure",
                            "dangling-reference",
                            stack,
                            None,
                            format!("output {id}: {kind} names `{target}`, which does not exist"),
                            "fix the name",
                        ));
                    }
                }
            }
        }
    }

    // Parameters.
    for (name, spec) in params {
        if let Some(d) = spec.get("Default") {
            if let Some(p) = parameter_problem(name, spec, d) {
                out.push(finding(
                    "parameters",
                    "bad-default",
                    stack,
                    None,
                    format!("default: {p}"),
                    "change the default or the constraint",
                ));
            }
        }
        let mut any_value = spec.get("Default").is_some()
            || supplied.common.contains_key(name)
            || supplied.at_deploy.contains(name);
        if let Some(v) = supplied.common.get(name) {
            if let Some(p) = parameter_problem(name, spec, v) {
                out.push(finding(
                    "parameters",
                    "bad-value",
                    stack,
                    None,
                    p,
                    "change the value the package supplies",
                ));
            }
        }
        for t in &supplied.per_target {
            if let Some(v) = t.get(name) {
                any_value = true;
                if let Some(p) = parameter_problem(name, spec, v) {
                    out.push(finding(
                        "parameters",
                        "bad-value",
                        stack,
                        None,
                        p,
                        "change the value the package supplies",
                    ));
                }
            }
        }
        if !any_value {
            out.push(finding(
                "parameters",
                "no-value",
                stack,
                None,
                format!("parameter {name} has no Default and the package supplies no value"),
                "add a Default or supply the value in the manifest",
            ));
        }
    }
    out
}

/// Evaluates every `.guard` file of the packs against one template.
pub(crate) fn check_compliance(stack: &str, text: &str, packs: &[PathBuf]) -> Vec<Finding> {
    let mut out = Vec::new();
    for pack in packs {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(pack) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "guard"))
                .collect(),
            Err(e) => {
                out.push(finding(
                    "compliance",
                    "rule-pack",
                    stack,
                    None,
                    format!("cannot read rule pack {}: {e}", pack.display()),
                    "check the pack's directory",
                ));
                continue;
            }
        };
        files.sort();
        for file in files {
            let rules = match std::fs::read_to_string(&file) {
                Ok(r) => r,
                Err(e) => {
                    out.push(finding(
                        "compliance",
                        "rule-file",
                        stack,
                        None,
                        format!("cannot read {}: {e}", file.display()),
                        "check the file",
                    ));
                    continue;
                }
            };
            let name = file.display().to_string();
            // `verbose` returns the full evaluation record. The summary form (`false`) goes
            // through a BufWriter whose unflushed buffer is all that is returned, so reports
            // over 8 KiB come back truncated (cfn-guard 3.2.1).
            let result = cfn_guard::run_checks(
                cfn_guard::ValidateInput {
                    content: text,
                    file_name: stack,
                },
                cfn_guard::ValidateInput {
                    content: &rules,
                    file_name: &name,
                },
                true,
            );
            match result {
                Err(e) => out.push(finding(
                    "compliance",
                    "rule-file",
                    stack,
                    None,
                    format!("{name} could not be evaluated: {e}"),
                    "fix the rule file's syntax",
                )),
                // A file of comments only (the registry keeps one per AWS Config rule that a
                // template cannot show) evaluates nothing and reports nothing.
                Ok(json) if json.trim().is_empty() => out.push(Finding {
                    severity: Severity::Warning,
                    ..finding(
                        "compliance",
                        "rule-file",
                        "(rule packs)",
                        None,
                        format!("{name} holds no rules: it checks nothing"),
                        "remove it from the pack, or write its rules",
                    )
                }),
                Ok(json) => out.extend(guard_findings(stack, &name, &json)),
            }
        }
    }
    out
}

/// Turns cfn-guard's evaluation record into findings: one per failed clause, by resource.
fn guard_findings(stack: &str, file: &str, report: &str) -> Vec<Finding> {
    let Ok(root) = serde_json::from_str::<Value>(report) else {
        return vec![finding(
            "compliance",
            "rule-file",
            stack,
            None,
            format!("cfn-guard's report on {file} could not be read"),
            "report this as a Landfall bug, with the rule file",
        )];
    };
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for rule in root
        .get("children")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(check) = rule.pointer("/container/RuleCheck") else {
            continue;
        };
        if check.get("status").and_then(Value::as_str) != Some("FAIL") {
            continue;
        }
        let name = check
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string();
        let mut failed = Vec::new();
        let mut absolved = false;
        failed_clauses(rule, &mut failed, &mut absolved);
        // In `a or b << message >>` only the last clause carries the message: drop the
        // message-less twins of a resource that has a message.
        let with_message: BTreeSet<Option<String>> = failed
            .iter()
            .filter(|(_, m)| !m.trim().is_empty())
            .map(|(p, _)| resource_of(p.as_deref()))
            .collect();
        failed.retain(|(p, m)| {
            !m.trim().is_empty() || !with_message.contains(&resource_of(p.as_deref()))
        });
        if failed.is_empty() {
            if absolved {
                // Every resource satisfied one side of each `or`: cfn-guard's verdict over the
                // whole set, not a violation by any resource.
                continue;
            }
            failed.push((None, String::new()));
        }
        for (path, message) in failed {
            let resource = resource_of(path.as_deref());
            if !seen.insert((name.clone(), resource.clone(), message.clone())) {
                continue;
            }
            let (violation, fix) = split_message(&message);
            out.push(Finding {
                severity: Severity::Error,
                check: "compliance",
                rule: name.clone(),
                stack: stack.into(),
                resource,
                message: if violation.is_empty() {
                    format!("rule {name} is not satisfied")
                } else {
                    violation
                },
                fix: if fix.is_empty() {
                    "see the rule's file for what it requires".into()
                } else {
                    fix
                },
            });
        }
    }
    out
}

fn resource_of(path: Option<&str>) -> Option<String> {
    path.and_then(|p| p.strip_prefix("/Resources/"))
        .map(|p| p.split('/').next().unwrap_or_default().to_string())
}

/// (path of the offending value, custom message) of every failed clause under `node`.
/// `absolved` is set when an `or` failed as cfn-guard judges it (each side over the whole
/// set of resources) but every resource satisfied one of its sides.
fn failed_clauses(node: &Value, out: &mut Vec<(Option<String>, String)>, absolved: &mut bool) {
    // A filter (`Resources.*[ Type == … ]`) "fails" for every resource it leaves out; those
    // are selections, not violations.
    if node.pointer("/container/Filter").is_some() {
        return;
    }
    // `a or b` over a set of resources: cfn-guard fails it when `a` fails for some resources
    // and `b` for others. A resource violates it only if it fails on every side (the private
    // subnet without `MapPublicIpOnLaunch` passes `!exists` and fails `== false`: no
    // violation). Failures are kept only for resources found failing on all sides.
    if node.pointer("/container/Disjunction").is_some() {
        let branches: Vec<Vec<(Option<String>, String)>> = node
            .get("children")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|b| {
                let mut f = Vec::new();
                failed_clauses(b, &mut f, absolved);
                f
            })
            .collect();
        if branches.is_empty() || branches.iter().any(Vec::is_empty) {
            return;
        }
        let per_resource = |b: &Vec<(Option<String>, String)>| -> Option<BTreeSet<String>> {
            b.iter().map(|(p, _)| resource_of(p.as_deref())).collect()
        };
        let sets: Option<Vec<BTreeSet<String>>> = branches.iter().map(per_resource).collect();
        match sets {
            // A failure that names no resource: nothing to compare, keep them all.
            None => out.extend(branches.into_iter().flatten()),
            Some(sets) => {
                let mut violators = sets[0].clone();
                for s in &sets[1..] {
                    violators.retain(|r| s.contains(r));
                }
                if violators.is_empty() {
                    *absolved = true;
                }
                out.extend(branches.into_iter().flatten().filter(|(p, _)| {
                    resource_of(p.as_deref()).is_some_and(|r| violators.contains(&r))
                }));
            }
        }
        return;
    }
    if let Some(Value::Object(clause)) = node.pointer("/container/ClauseValueCheck") {
        for detail in clause.values() {
            // A comparison (`a == b`) keeps its record at the top; a unary check (`exists`,
            // `empty`) under `value`.
            let record = match detail.get("status") {
                Some(_) => detail,
                None => detail.get("value").unwrap_or(detail),
            };
            if record.get("status").and_then(Value::as_str) == Some("FAIL") {
                let path = [
                    "/from/Resolved/path",
                    "/from/UnResolved/traversed_to/path",
                    "/value/Resolved/path",
                    "/value/UnResolved/traversed_to/path",
                ]
                .iter()
                .find_map(|p| record.pointer(p).and_then(Value::as_str))
                .map(str::to_string);
                let message = record
                    .get("custom_message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string();
                out.push((path, message));
            }
        }
    }
    for child in node
        .get("children")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        failed_clauses(child, out, absolved);
    }
}

fn split_message(m: &str) -> (String, String) {
    let mut violation = String::new();
    let mut fix = String::new();
    for line in m.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Violation:") {
            violation = v.trim().to_string();
        } else if let Some(f) = line.strip_prefix("Fix:") {
            fix = f.trim().to_string();
        }
    }
    (violation, fix)
}

/// Every finding for a package: files by path, the manifest, the rule packs' directories.
pub fn check_package(
    files: &BTreeMap<String, String>,
    manifest: &Value,
    packs: &[PathBuf],
) -> Vec<Finding> {
    let mut out = Vec::new();
    let stacks = manifest
        .get("stacks")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if stacks.is_empty() {
        out.push(finding(
            "structure",
            "manifest",
            "(package)",
            None,
            "the manifest lists no stacks".into(),
            "list the stacks in the manifest",
        ));
    }
    let per_target: Vec<BTreeMap<String, Value>> = manifest
        .get("targets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|t| {
            t.get("parameters")
                .and_then(Value::as_object)
                .map(|m| m.clone().into_iter().collect())
                .unwrap_or_default()
        })
        .collect();
    for s in &stacks {
        let name = s.get("name").and_then(Value::as_str).unwrap_or("(unnamed)");
        let Some(path) = s.get("template").and_then(Value::as_str) else {
            out.push(finding(
                "structure",
                "manifest",
                name,
                None,
                "the stack names no template".into(),
                "set `template` in the manifest",
            ));
            continue;
        };
        let Some(text) = files.get(path) else {
            out.push(finding(
                "structure",
                "manifest",
                name,
                None,
                format!("the manifest names {path}, which is not in the package"),
                "add the file or fix the manifest",
            ));
            continue;
        };
        let supplied = Supplied {
            common: s
                .get("parameters")
                .and_then(Value::as_object)
                .map(|m| m.clone().into_iter().collect())
                .unwrap_or_default(),
            per_target: per_target.clone(),
            at_deploy: s
                .get("deploy_parameters")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
        };
        out.extend(check_template(name, text, &supplied));
        out.extend(check_compliance(name, text, packs));
    }
    // What is said about a rule file (not about a stack) is said once.
    let mut said = BTreeSet::new();
    out.retain(|f| f.rule != "rule-file" || said.insert(f.message.clone()));
    out
}

pub(crate) struct CfnValidate {
    pub templates_dir: PathBuf,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CfnValidateConfig {
    /// The package's files (`steps.<build>.outputs.files`).
    pub files: BTreeMap<String, String>,
    /// The package's manifest (`steps.<build>.outputs.manifest`).
    pub manifest: Value,
    /// Rule packs under `templates/rules/` (the requirements' `compliance`).
    #[serde(default)]
    pub rule_packs: Vec<String>,
}

#[async_trait]
impl Plugin for CfnValidate {
    const NAME: &'static str = "cfn-validate";
    const SUMMARY: &'static str =
        "Check a package: syntax, references, parameters, limits and cfn-guard compliance rules";
    type Config = CfnValidateConfig;

    async fn run(&self, c: CfnValidateConfig, ctx: StepContext) -> Result<Value, StepError> {
        let rules = self.templates_dir.join("rules");
        let mut packs = Vec::new();
        for p in &c.rule_packs {
            let dir = rules.join(p);
            if p.contains('/') || p.contains("..") || !dir.is_dir() {
                return Err(StepError::permanent(format!(
                    "unknown rule pack `{p}` (no directory {})",
                    dir.display()
                )));
            }
            packs.push(dir);
        }
        // cfn-guard is synchronous and CPU-bound.
        let findings =
            tokio::task::spawn_blocking(move || check_package(&c.files, &c.manifest, &packs))
                .await
                .map_err(|e| StepError::transient(format!("validation task failed: {e}")))?;
        let errors = findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count();
        for f in findings.iter().take(20) {
            ctx.warn(format!(
                "{} {}/{}: {} (fix: {})",
                f.rule,
                f.stack,
                f.resource.as_deref().unwrap_or("-"),
                f.message,
                f.fix
            ));
        }
        let report = json!({ "passed": errors == 0, "errors": errors, "findings": findings });
        if errors > 0 {
            let first = &findings[0];
            return Err(StepError::permanent(format!(
                "package rejected: {errors} error finding(s); first: {} in {}{}: {}",
                first.rule,
                first.stack,
                first
                    .resource
                    .as_deref()
                    .map(|r| format!("/{r}"))
                    .unwrap_or_default(),
                first.message
            ))
            .with_context(report));
        }
        Ok(report)
    }

    /// Reads only (or computes, touching nothing): planning is running it.
    async fn plan(
        &self,
        c: CfnValidateConfig,
        ctx: StepContext,
    ) -> Result<Option<landfall_engine::PlanOutcome>, StepError> {
        self.run(c, ctx)
            .await
            .map(|o| Some(landfall_engine::PlanOutcome::reads_only(o)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn path(p: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p)
    }

    const OK: &str = r#"
Parameters:
  Env: { Type: String, AllowedValues: [prod, dev], Default: dev }
Resources:
  Bucket:
    Type: AWS::S3::Bucket
    Properties:
      BucketName: {"Fn::Sub": "b-${Env}-${AWS::AccountId}"}
      BucketEncryption: { ServerSideEncryptionConfiguration: [ { ServerSideEncryptionByDefault: { SSEAlgorithm: "aws:kms" } } ] }
      VersioningConfiguration: { Status: Enabled }
      PublicAccessBlockConfiguration: { BlockPublicAcls: true, BlockPublicPolicy: true, IgnorePublicAcls: true, RestrictPublicBuckets: true }
Outputs:
  Name: { Value: {"Ref": "Bucket"} }
"#;

    fn rules(found: &[Finding]) -> Vec<String> {
        found.iter().map(|f| f.rule.clone()).collect()
    }

    #[test]
    fn a_clean_template_has_no_findings() {
        let f = check_template("s", OK, &Supplied::default());
        assert!(f.is_empty(), "{f:#?}");
        let f = check_compliance("s", OK, &[path("templates/rules/baseline")]);
        assert!(f.is_empty(), "{f:#?}");
    }

    #[test]
    fn structure_defects_are_found() {
        let t = OK.replace("{\"Ref\": \"Bucket\"}", "{\"Ref\": \"Buckt\"}");
        assert_eq!(
            rules(&check_template("s", &t, &Supplied::default())),
            ["dangling-reference"]
        );
        let t = r#"
Resources:
  A: { Type: "AWS::SNS::Topic", DependsOn: B }
  B: { Type: "AWS::SNS::Topic", Properties: { TopicName: {"Fn::GetAtt": ["A", "TopicName"]} } }
  C: { Type: "AWS::SNS::Topic", DependsOn: Nope }
"#;
        let r = rules(&check_template("s", t, &Supplied::default()));
        assert!(r.contains(&"dependency-cycle".to_string()), "{r:?}");
        assert!(r.contains(&"dangling-depends-on".to_string()), "{r:?}");
    }

    #[test]
    fn parameter_defects_are_found() {
        let t = OK.replace("Default: dev", "Default: test");
        assert_eq!(
            rules(&check_template("s", &t, &Supplied::default())),
            ["bad-default"]
        );
        let t = OK.replace(", Default: dev", "");
        assert_eq!(
            rules(&check_template("s", &t, &Supplied::default())),
            ["no-value"]
        );
        let mut s = Supplied::default();
        s.per_target.push([("Env".to_string(), json!("qa"))].into());
        assert_eq!(rules(&check_template("s", OK, &s)), ["bad-value"]);
    }

    #[test]
    fn compliance_defects_name_rule_resource_and_fix() {
        let t = OK.replace("Status: Enabled", "Status: Suspended");
        let f = check_compliance("s", &t, &[path("templates/rules/baseline")]);
        assert_eq!(rules(&f), ["s3_bucket_versioned"], "{f:#?}");
        assert_eq!(f[0].resource.as_deref(), Some("Bucket"));
        assert!(f[0].fix.contains("VersioningConfiguration"), "{f:#?}");
    }
}

#[cfg(test)]
mod rule_tests {
    use super::*;
    use std::path::Path;

    fn baseline() -> Vec<PathBuf> {
        vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates/rules/baseline")]
    }

    fn rules_of(t: &str) -> Vec<String> {
        check_compliance("s", t, &baseline())
            .into_iter()
            .map(|f| f.rule)
            .collect()
    }

    #[test]
    fn open_ssh_is_caught_closed_ports_are_not() {
        let sg = |from: u16, to: u16, cidr: &str| {
            format!(
            "Resources:\n  Sg:\n    Type: AWS::EC2::SecurityGroup\n    Properties:\n      GroupDescription: x\n      SecurityGroupIngress:\n        - {{ IpProtocol: tcp, FromPort: {from}, ToPort: {to}, CidrIp: \"{cidr}\" }}\n"
        )
        };
        assert_eq!(rules_of(&sg(22, 22, "0.0.0.0/0")), ["no_open_admin_ports"]);
        assert_eq!(rules_of(&sg(0, 65535, "0.0.0.0/0")).len(), 2);
        assert!(rules_of(&sg(443, 443, "0.0.0.0/0")).is_empty());
        assert!(rules_of(&sg(22, 22, "10.0.0.0/8")).is_empty());
    }

    #[test]
    fn wildcard_iam_is_caught_in_either_shape() {
        let role = |action: &str| {
            format!(
            "Resources:\n  R:\n    Type: AWS::IAM::Role\n    Properties:\n      AssumeRolePolicyDocument: {{}}\n      Policies:\n        - PolicyName: p\n          PolicyDocument:\n            Statement:\n              - {{ Effect: Allow, Action: {action}, Resource: \"*\" }}\n"
        )
        };
        assert_eq!(rules_of(&role("\"*\"")), ["iam_role_no_wildcard_admin"]);
        assert_eq!(
            rules_of(&role("[\"s3:GetObject\", \"*\"]")),
            ["iam_role_no_wildcard_admin"]
        );
        assert!(rules_of(&role("[\"s3:GetObject\"]")).is_empty());
        let policy = "Resources:\n  P:\n    Type: AWS::IAM::ManagedPolicy\n    Properties:\n      PolicyDocument:\n        Statement:\n          - { Effect: Allow, Action: \"*\", Resource: \"*\" }\n";
        assert_eq!(rules_of(policy), ["iam_policy_no_wildcard_admin"]);
    }

    #[test]
    fn unencrypted_buckets_and_unrotated_keys_are_caught() {
        let t = "Resources:\n  B:\n    Type: AWS::S3::Bucket\n    Properties:\n      VersioningConfiguration: { Status: Enabled }\n      PublicAccessBlockConfiguration: { BlockPublicAcls: true, BlockPublicPolicy: true, IgnorePublicAcls: true, RestrictPublicBuckets: true }\n  K:\n    Type: AWS::KMS::Key\n    Properties: { EnableKeyRotation: false }\n";
        let mut r = rules_of(t);
        r.sort();
        assert_eq!(r, ["kms_key_rotation", "s3_bucket_encrypted"]);
    }
}
