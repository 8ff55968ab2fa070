//! `plan` and `plans`: what a workflow would change, computed by reading only, stored with its
//! digest; and the stored plans.

use std::sync::Arc;

use landfall_engine::{NewPlan, Plan, PlanStatus, PlannedNode};
use serde_json::Value;

use super::{cli_trigger, print_json, App, Failure, Res, EXIT_OK};
use crate::cli::{PlanArgs, PlansCommand};

impl App {
    pub(super) async fn plan(&self, args: PlanArgs) -> Res<i32> {
        let wf = self.load_workflow(&args.file)?;
        let inputs = self.read_inputs(&wf, args.input.as_deref(), &args.sets)?;
        let store = self.open_store()?;
        let engine = self.engine(Arc::clone(&store))?;
        let plan = engine
            .plan(
                &wf,
                NewPlan {
                    inputs,
                    requester: cli_trigger().actor,
                    ttl: args.expires_in,
                },
            )
            .await?;
        if args.json {
            print_json(&serde_json::to_value(&plan).unwrap_or(Value::Null));
        } else {
            print!("{}", show(&plan));
        }
        if plan.failed() {
            return Err(Failure::failed(format!(
                "plan {} is incomplete: a node could not be planned (marked x)",
                plan.plan_id
            )));
        }
        if !args.json && !self.quiet() {
            eprintln!(
                "apply exactly this plan with: landfall run {} --plan {}",
                args.file.display(),
                plan.plan_id
            );
        }
        Ok(EXIT_OK)
    }

    pub(super) fn plans(&self, command: PlansCommand) -> Res<i32> {
        let store = self
            .existing_store()?
            .ok_or_else(|| self.no_state("plans"))?;
        match command {
            PlansCommand::List { json } => {
                let mut plans = store.plans()?;
                plans.reverse();
                if json {
                    let list: Vec<Value> = plans
                        .iter()
                        .map(|p| {
                            serde_json::json!({
                                "plan_id": p.plan_id, "workflow": p.workflow,
                                "digest": p.digest, "requester": p.requester,
                                "created_at": p.created_at, "expires_at": p.expires_at,
                                "changing": p.changing(), "failed": p.failed(),
                            })
                        })
                        .collect();
                    print_json(&Value::Array(list));
                } else if plans.is_empty() {
                    println!("no plans yet (landfall plan FILE)");
                } else {
                    for p in &plans {
                        println!(
                            "{}  {:<16} {} node(s) change  digest {}  by {}  {}",
                            p.plan_id,
                            p.workflow,
                            p.changing(),
                            short(&p.digest),
                            p.requester,
                            p.created_at.format("%Y-%m-%d %H:%M UTC"),
                        );
                    }
                }
            }
            PlansCommand::Show { plan_id, json } => {
                let plan = store
                    .plan(&plan_id)?
                    .ok_or_else(|| Failure::invalid(format!("no plan `{plan_id}`")))?;
                if json {
                    print_json(&serde_json::to_value(&plan).unwrap_or(Value::Null));
                } else {
                    print!("{}", show(&plan));
                }
            }
        }
        Ok(EXIT_OK)
    }
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

fn mark(n: &PlannedNode) -> &'static str {
    match n.status {
        PlanStatus::Changes => "~",
        PlanStatus::NoChanges => "=",
        PlanStatus::Unknown => "?",
        PlanStatus::Skipped => "-",
        PlanStatus::Failed => "x",
    }
}

/// A plan as people read it: a header, one line per node (its changes below it), the digest.
pub(crate) fn show(plan: &Plan) -> String {
    let mut out = format!(
        "Plan {} of {}: {} of {} node(s) would change something\n",
        plan.plan_id,
        plan.workflow,
        plan.changing(),
        plan.nodes.len()
    );
    let width = plan.nodes.iter().map(|n| n.node.len()).max().unwrap_or(0);
    for n in &plan.nodes {
        out.push_str(&format!(
            "  {} {:<width$}  {}{}\n",
            mark(n),
            n.node,
            n.summary,
            if n.maybe {
                " (maybe: its condition reads a value known after apply)"
            } else {
                ""
            },
        ));
        for c in &n.changes {
            out.push_str(&format!("      {}\n", change_line(c)));
            // A document's JSON Patch (an SCP or IAM policy to update), one operation a line.
            for op in c["diff"].as_array().into_iter().flatten() {
                let value = match &op["value"] {
                    Value::Null => String::new(),
                    v => format!(" {v}"),
                };
                out.push_str(&format!(
                    "          {} {}{value}\n",
                    op["op"].as_str().unwrap_or("?"),
                    op["path"].as_str().unwrap_or("")
                ));
            }
        }
    }
    out.push_str(&format!(
        "digest {} · by {} · expires {}\n",
        plan.digest,
        plan.requester,
        plan.expires_at.format("%Y-%m-%d %H:%M UTC")
    ));
    out
}

/// One change record: its `action`, then its plain fields as `key=value` (lists and records,
/// such as a change set's resources, are in `--json`).
fn change_line(c: &Value) -> String {
    let Some(o) = c.as_object() else {
        return c.to_string();
    };
    let action = o.get("action").and_then(Value::as_str).unwrap_or("change");
    let rest: Vec<String> = o
        .iter()
        .filter(|(k, _)| k.as_str() != "action")
        .filter_map(|(k, v)| match v {
            Value::String(s) => Some(format!("{k}={s}")),
            Value::Number(_) | Value::Bool(_) => Some(format!("{k}={v}")),
            _ => None,
        })
        .collect();
    format!("{action} {}", rest.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(node: &str, status: PlanStatus, summary: &str, changes: Vec<Value>) -> PlannedNode {
        PlannedNode {
            node: node.into(),
            step: node.split('[').next().unwrap_or(node).into(),
            plugin: "deploy".into(),
            status,
            maybe: false,
            summary: summary.into(),
            changes,
            outputs: Value::Null,
        }
    }

    /// `landfall plan`'s two outputs, pinned: the text people read and the JSON machines do.
    #[test]
    fn a_plan_reads_as_pinned() {
        let at = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let mut plan = Plan {
            plan_id: "p-01kexample".into(),
            workflow: "provisioning".into(),
            workflow_file: "workflows/provisioning.yaml".into(),
            workflow_text: String::new(),
            workflow_digest: "w".into(),
            inputs: json!({ "customer": "acme" }),
            inputs_digest: "i".into(),
            requester: "cli:bob".into(),
            created_at: at,
            expires_at: at + chrono::Duration::hours(24),
            nodes: vec![
                node("fetch", PlanStatus::NoChanges, "no changes (reads only)", vec![]),
                node(
                    "plan[0]",
                    PlanStatus::Changes,
                    "acme-prod/us-east-1: update acme-network: 2 to add, 0 to modify, 0 to remove (0 replacements)",
                    vec![json!({ "action": "update", "stack": "acme-network", "adds": 2, "change_set": { "id": "arn:cs/1" } })],
                ),
                PlannedNode {
                    plugin: "policy".into(),
                    ..node(
                        "policy",
                        PlanStatus::Changes,
                        "SCPs: 1 update",
                        vec![json!({
                            "action": "update", "policy": "landfall-acme-region-guard", "id": "p-1",
                            "diff": [
                                { "op": "replace", "path": "/Statement/0/Action", "value": "s3:*" },
                                { "op": "remove", "path": "/Statement/0/Condition" },
                            ],
                        })],
                    )
                },
                node("exec_it", PlanStatus::Unknown, "changes unknown until apply: `exec` does not plan", vec![]),
                node("rollback", PlanStatus::Skipped, "skipped: runs only when an earlier step fails", vec![]),
            ],
            digest: String::new(),
        };
        plan.nodes[3].maybe = true;
        plan.digest = plan.compute_digest();
        insta::assert_snapshot!(show(&plan));
        insta::assert_json_snapshot!(plan);
    }
}
