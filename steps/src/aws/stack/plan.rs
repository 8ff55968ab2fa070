//! What to deploy where: a package's manifest and one target → the stacks in order, each with
//! exactly the parameters it gets. Pure (no AWS), so property 11 is tested here.
//!
//! A stack's parameters come from three places, each named in the manifest: the package itself
//! (`parameters`, a value or `{ from: "<stack>.<Output>" }` for an earlier stack's output), the
//! target (`target_parameters`, e.g. `Environment`), and the workflow (`deploy_parameters`,
//! e.g. `ManagementAccountId`). Every parameter must be declared by the template; nothing else
//! is passed.

use std::collections::{BTreeMap, BTreeSet};

use landfall_engine::StepError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One account and region to deploy into (what the `targets` step outputs per item).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Target {
    /// The account's name in the requirements.
    pub account: String,
    /// Its 12-digit id.
    pub account_id: String,
    pub region: String,
    /// The customer's home region: account-wide stacks (IAM) deploy only there.
    #[serde(default)]
    pub home: bool,
    #[serde(default)]
    pub environment: Option<String>,
    /// Values for the stacks' `target_parameters`.
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
}

impl Target {
    pub(crate) fn label(&self) -> String {
        format!("{}/{}", self.account, self.region)
    }
}

/// Where a stack is deployed: in every region, or once per account (global resources such
/// as IAM), in the home region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Scope {
    #[default]
    Region,
    Account,
}

#[derive(Debug, Clone, Deserialize)]
struct ManifestStack {
    name: String,
    order: u32,
    template: String,
    #[serde(default)]
    stack_name: Option<String>,
    #[serde(default)]
    parameters: BTreeMap<String, Value>,
    #[serde(default)]
    target_parameters: Vec<String>,
    #[serde(default)]
    deploy_parameters: Vec<String>,
    #[serde(default)]
    scope: Scope,
}

#[derive(Debug, Clone, Deserialize)]
struct Manifest {
    customer: String,
    stacks: Vec<ManifestStack>,
}

/// A parameter's value, or where it will come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub(crate) enum Param {
    Value(String),
    /// An output of an earlier stack in the same target.
    FromOutput {
        stack: String,
        output: String,
    },
}

/// What a template declares, as far as deploying and verifying it are concerned.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct TemplateFacts {
    /// Logical id → resource type.
    pub resources: BTreeMap<String, String>,
    /// Resources with a `Condition` (they may rightly be absent).
    pub conditional: BTreeSet<String>,
    /// Resources CloudFormation keeps when the stack is deleted (`DeletionPolicy: Retain`).
    pub retained: BTreeSet<String>,
    pub outputs: BTreeSet<String>,
    /// Declared parameters and their defaults.
    pub parameters: BTreeMap<String, Option<String>>,
}

impl TemplateFacts {
    pub(crate) fn parse(name: &str, body: &str) -> Result<Self, StepError> {
        let doc: Value = serde_yaml::from_str(body).map_err(|e| {
            StepError::permanent(format!("template of stack `{name}` is not valid YAML: {e}"))
        })?;
        let mut facts = TemplateFacts::default();
        let resources = doc
            .get("Resources")
            .and_then(Value::as_object)
            .ok_or_else(|| {
                StepError::permanent(format!("template of `{name}` has no Resources"))
            })?;
        for (id, r) in resources {
            let t = r.get("Type").and_then(Value::as_str).ok_or_else(|| {
                StepError::permanent(format!("resource {id} of `{name}` has no Type"))
            })?;
            facts.resources.insert(id.clone(), t.to_string());
            if r.get("Condition").is_some() {
                facts.conditional.insert(id.clone());
            }
            if matches!(
                r.get("DeletionPolicy").and_then(Value::as_str),
                Some("Retain" | "RetainExceptOnCreate")
            ) {
                facts.retained.insert(id.clone());
            }
        }
        if let Some(o) = doc.get("Outputs").and_then(Value::as_object) {
            facts.outputs = o.keys().cloned().collect();
        }
        if let Some(p) = doc.get("Parameters").and_then(Value::as_object) {
            for (k, v) in p {
                facts
                    .parameters
                    .insert(k.clone(), v.get("Default").map(scalar_text));
            }
        }
        Ok(facts)
    }
}

/// One stack to deploy into one target.
#[derive(Debug, Clone)]
pub(crate) struct StackPlan {
    /// The package's name for it (`network`).
    pub name: String,
    /// The CloudFormation stack name (`acme-network`).
    pub stack_name: String,
    pub order: u32,
    pub template_body: String,
    pub facts: TemplateFacts,
    pub parameters: BTreeMap<String, Param>,
}

impl StackPlan {
    /// The parameters with earlier stacks' outputs filled in.
    pub(crate) fn resolve(
        &self,
        outputs: &BTreeMap<String, BTreeMap<String, String>>,
    ) -> Result<BTreeMap<String, String>, StepError> {
        self.parameters
            .iter()
            .map(|(k, p)| match p {
                Param::Value(v) => Ok((k.clone(), v.clone())),
                Param::FromOutput { stack, output } => outputs
                    .get(stack)
                    .and_then(|o| o.get(output))
                    .map(|v| (k.clone(), v.clone()))
                    .ok_or_else(|| {
                        StepError::permanent(format!(
                            "parameter {k} of stack `{}` needs output {output} of stack `{stack}`, which it does not have",
                            self.name
                        ))
                    }),
            })
            .collect()
    }

    /// What the stack's parameters will be once deployed: ours, else the template's default.
    pub(crate) fn effective(
        &self,
        resolved: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        self.facts
            .parameters
            .iter()
            .filter_map(|(k, default)| {
                resolved
                    .get(k)
                    .cloned()
                    .or_else(|| default.clone())
                    .map(|v| (k.clone(), v))
            })
            .collect()
    }
}

/// The stacks of `manifest` for `target`, in deployment order (ties keep the manifest's
/// order and may deploy side by side). Account-wide stacks are planned in the home region only.
pub(crate) fn plan(
    manifest: &Value,
    files: &BTreeMap<String, String>,
    target: &Target,
    supplied: &BTreeMap<String, String>,
) -> Result<Vec<StackPlan>, StepError> {
    let m: Manifest = serde_json::from_value(manifest.clone())
        .map_err(|e| StepError::permanent(format!("the package's manifest is malformed: {e}")))?;
    let mut stacks = m.stacks.clone();
    stacks.sort_by_key(|s| s.order);
    let mut names = BTreeSet::new();
    let mut earlier: BTreeMap<String, (u32, BTreeSet<String>)> = BTreeMap::new();
    let mut out = Vec::new();
    for s in &stacks {
        if !names.insert(s.name.clone()) {
            return Err(StepError::permanent(format!(
                "the manifest lists stack `{}` twice",
                s.name
            )));
        }
        let body = files.get(&s.template).ok_or_else(|| {
            StepError::permanent(format!(
                "stack `{}` names template {}, which the package does not contain",
                s.name, s.template
            ))
        })?;
        let facts = TemplateFacts::parse(&s.name, body)?;
        let mut parameters = BTreeMap::new();
        for (k, v) in &s.parameters {
            let p = match v {
                Value::Object(o) => {
                    let from = o.get("from").and_then(Value::as_str).ok_or_else(|| {
                        StepError::permanent(format!(
                            "parameter {k} of stack `{}`: an object must be {{ from: \"<stack>.<Output>\" }}",
                            s.name
                        ))
                    })?;
                    let (stack, output) = from.split_once('.').ok_or_else(|| {
                        StepError::permanent(format!(
                            "parameter {k} of stack `{}`: `{from}` is not `<stack>.<Output>`",
                            s.name
                        ))
                    })?;
                    match earlier.get(stack) {
                        Some((order, outs)) if *order < s.order && outs.contains(output) => {}
                        _ => {
                            return Err(StepError::permanent(format!(
                                "parameter {k} of stack `{}` takes {from}, but no earlier stack `{stack}` declares output {output}",
                                s.name
                            )))
                        }
                    }
                    Param::FromOutput {
                        stack: stack.to_string(),
                        output: output.to_string(),
                    }
                }
                other => Param::Value(scalar_text(other)),
            };
            parameters.insert(k.clone(), p);
        }
        for (list, source, what) in [
            (&s.target_parameters, &target.parameters, "the target"),
            (
                &s.deploy_parameters,
                supplied,
                "the workflow (deploy `parameters`)",
            ),
        ] {
            for k in list {
                let v = source.get(k).ok_or_else(|| {
                    StepError::permanent(format!(
                        "stack `{}` needs parameter {k} from {what}, which does not give it",
                        s.name
                    ))
                })?;
                parameters.insert(k.clone(), Param::Value(v.clone()));
            }
        }
        if let Some(k) = parameters
            .keys()
            .find(|k| !facts.parameters.contains_key(*k))
        {
            return Err(StepError::permanent(format!(
                "stack `{}` is given parameter {k}, which its template does not declare",
                s.name
            )));
        }
        earlier.insert(s.name.clone(), (s.order, facts.outputs.clone()));
        if s.scope == Scope::Account && !target.home {
            continue;
        }
        out.push(StackPlan {
            stack_name: s
                .stack_name
                .clone()
                .unwrap_or_else(|| format!("{}-{}", m.customer, s.name)),
            name: s.name.clone(),
            order: s.order,
            template_body: body.clone(),
            facts,
            parameters,
        });
    }
    Ok(out)
}

/// Groups of stacks that may deploy side by side, in order.
pub(crate) fn waves(plans: &[StackPlan]) -> Vec<Vec<&StackPlan>> {
    let mut out: Vec<Vec<&StackPlan>> = Vec::new();
    for p in plans {
        match out.last_mut() {
            Some(w) if w[0].order == p.order => w.push(p),
            _ => out.push(vec![p]),
        }
    }
    out
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(scalar_text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NET: &str =
        "Resources:\n  Vpc: { Type: AWS::EC2::VPC }\nOutputs:\n  VpcId: { Value: x }\n";
    const APP: &str = "Parameters:\n  VpcId: { Type: String }\n  Environment: { Type: String }\n  Owner: { Type: String, Default: ops }\nResources:\n  Sg: { Type: AWS::EC2::SecurityGroup }\n";

    fn files() -> BTreeMap<String, String> {
        [("net.yaml", NET), ("app.yaml", APP)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn target(home: bool) -> Target {
        Target {
            account: "a".into(),
            account_id: "111111111111".into(),
            region: "us-east-1".into(),
            home,
            environment: None,
            parameters: [("Environment".to_string(), "production".to_string())].into(),
        }
    }

    fn manifest(from: &str, app_order: u32) -> Value {
        json!({
            "customer": "acme",
            "stacks": [
                { "name": "app", "order": app_order, "template": "app.yaml",
                  "parameters": { "VpcId": { "from": from } },
                  "target_parameters": ["Environment"], "scope": "account" },
                { "name": "net", "order": 1, "template": "net.yaml" },
            ],
        })
    }

    #[test]
    fn parameters_come_from_the_package_the_target_and_earlier_outputs() {
        let plans = plan(
            &manifest("net.VpcId", 2),
            &files(),
            &target(true),
            &BTreeMap::new(),
        )
        .unwrap();
        let names: Vec<&str> = plans.iter().map(|p| p.stack_name.as_str()).collect();
        assert_eq!(names, ["acme-net", "acme-app"], "in order");
        let app = &plans[1];
        let outputs = [(
            "net".to_string(),
            [("VpcId".to_string(), "vpc-1".to_string())].into(),
        )]
        .into();
        let resolved = app.resolve(&outputs).unwrap();
        assert_eq!(
            resolved,
            [("Environment", "production"), ("VpcId", "vpc-1")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        );
        assert_eq!(app.effective(&resolved)["Owner"], "ops", "defaults count");
        // Account-wide stacks are left out away from the home region.
        let plans = plan(
            &manifest("net.VpcId", 2),
            &files(),
            &target(false),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(plans.len(), 1);
    }

    #[test]
    fn outputs_of_later_or_unknown_stacks_are_refused() {
        for (from, order, want) in [
            ("net.VpcId", 1, "no earlier stack `net`"),
            ("net.Nope", 2, "declares output Nope"),
            ("nodot", 2, "is not `<stack>.<Output>`"),
        ] {
            let err = plan(
                &manifest(from, order),
                &files(),
                &target(true),
                &BTreeMap::new(),
            )
            .unwrap_err();
            assert!(err.message.contains(want), "{from}: {}", err.message);
        }
        let mut m = manifest("net.VpcId", 2);
        m["stacks"][0]["target_parameters"] = json!(["Region"]);
        let err = plan(&m, &files(), &target(true), &BTreeMap::new()).unwrap_err();
        assert!(
            err.message
                .contains("needs parameter Region from the target"),
            "{}",
            err.message
        );
        m["stacks"][0]["target_parameters"] = json!([]);
        m["stacks"][0]["parameters"]["Extra"] = json!("x");
        let err = plan(&m, &files(), &target(true), &BTreeMap::new()).unwrap_err();
        assert!(err.message.contains("does not declare"), "{}", err.message);
    }
}
