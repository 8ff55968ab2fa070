//! The approval request as Slack shows it: the title, the digest, what the operators'
//! policies ask, and the plan (Block Kit: a section per target, each stack's changes, IAM
//! flagged) with Approve / Reject buttons that carry the digest; the text is the fallback
//! notifications and screen readers use.

use landfall_steps::approval::Request;
use serde_json::{json, Value};

use super::thread::{escape, truncate};

/// The message asking for a decision on `r`: its text and its blocks.
pub(crate) fn request(r: &Request, run_id: &str, node: &str) -> (String, Value) {
    let value = json!({ "run": run_id, "node": node, "digest": r.digest }).to_string();
    let mut text = format!(
        ":raised_hand: Approval needed: *{}*\ndigest `{}`",
        escape(&r.title),
        escape(&r.digest)
    );
    let asks = r.asks();
    let policies: Vec<String> = asks
        .iter()
        .filter(|a| a.policy != landfall_steps::approval::policy::WORKFLOW_ASK)
        .map(|a| {
            format!(
                "{} approval{} under policy {}{}",
                a.min_approvals,
                if a.min_approvals == 1 { "" } else { "s" },
                a.policy,
                if a.forbid_requester {
                    " (not the requester)"
                } else {
                    ""
                }
            )
        })
        .collect();
    if !policies.is_empty() {
        text.push_str(&format!("\nneeds {}", escape(&policies.join(", "))));
    }
    let header = text.clone();
    // The plan's own records, when the request carries them (`details.plan`), are
    // shown as blocks; the lines of the other details are the text fallback.
    let mut rest = r.details.clone();
    let planned = rest.as_object_mut().and_then(|m| m.remove("plan"));
    if rest.as_object().is_some_and(|m| !m.is_empty()) || !rest.is_object() && !rest.is_null() {
        text.push('\n');
        text.push_str(&escape(&truncate(&details_text(&rest), 2500)));
    }
    let mut blocks = match planned.as_ref().and_then(plan_blocks) {
        Some(plan) => {
            let mut b =
                vec![json!({ "type": "section", "text": { "type": "mrkdwn", "text": header } })];
            b.extend(plan);
            b
        }
        None => vec![json!({ "type": "section", "text": { "type": "mrkdwn", "text": text } })],
    };
    blocks.push(json!({ "type": "actions", "elements": [
        { "type": "button", "action_id": "approve", "style": "primary",
          "text": { "type": "plain_text", "text": "Approve" }, "value": value },
        { "type": "button", "action_id": "reject", "style": "danger",
          "text": { "type": "plain_text", "text": "Reject" }, "value": value },
    ]}));
    (text, Value::Array(blocks))
}

/// A stored plan as Slack shows it: one line per node that changes something (or may), the
/// deploy plans as blocks per target, the digest and expiry, and an Apply button carrying the
/// plan's id and digest (none when a node could not be planned, or nothing would change).
pub(crate) fn plan(plan: &landfall_engine::Plan) -> (String, Value) {
    use landfall_engine::PlanStatus;
    let mut lines = vec![format!(
        ":clipboard: Plan `{}` of *{}*: {} of {} node(s) would change something",
        escape(&plan.plan_id),
        escape(&plan.workflow),
        plan.changing(),
        plan.nodes.len()
    )];
    for n in &plan.nodes {
        let mark = match n.status {
            PlanStatus::Changes => "~",
            PlanStatus::Unknown => "?",
            PlanStatus::Failed => ":x:",
            PlanStatus::NoChanges | PlanStatus::Skipped => continue,
        };
        lines.push(format!(
            "{mark} `{}` {}",
            escape(&n.node),
            escape(&n.summary)
        ));
    }
    lines.push(format!(
        "digest `{}` · expires {}",
        escape(&plan.digest),
        plan.expires_at.format("%Y-%m-%d %H:%M UTC")
    ));
    let text = truncate(&lines.join("\n"), 2900);
    let mut blocks = vec![json!({ "type": "section", "text": { "type": "mrkdwn", "text": text } })];
    // The stack plans of `plan: true` deploy nodes, per target.
    let stacks: Vec<Value> = plan
        .nodes
        .iter()
        .filter(|n| n.plugin == "deploy" && n.outputs["changes"].is_array())
        .map(|n| n.outputs.clone())
        .collect();
    if let Some(more) = plan_blocks(&Value::Array(stacks)) {
        blocks.extend(more);
    }
    if plan.failed() {
        blocks.push(json!({ "type": "context", "elements": [{ "type": "mrkdwn",
            "text": "A node could not be planned (marked :x:): fix what it says and plan again." }] }));
    } else if plan.changing() > 0 {
        let value = json!({ "plan": plan.plan_id, "digest": plan.digest }).to_string();
        blocks.push(json!({ "type": "actions", "elements": [
            { "type": "button", "action_id": "apply", "style": "primary",
              "text": { "type": "plain_text", "text": "Apply" }, "value": value },
        ]}));
    }
    (text, Value::Array(blocks))
}

/// What an approver reads of a request's details: each list of lines (a plan's summaries) as
/// bullets under its name, anything else as JSON.
fn details_text(details: &Value) -> String {
    let Some(map) = details.as_object() else {
        return details.to_string();
    };
    let mut out = Vec::new();
    for (k, v) in map {
        match v.as_array() {
            Some(items) if items.iter().all(Value::is_string) => {
                out.push(format!("{k}:"));
                for i in items {
                    out.push(format!("• {}", i.as_str().unwrap_or_default()));
                }
            }
            _ => out.push(format!("{k}: {v}")),
        }
    }
    out.join("\n")
}

/// Most targets shown one section each: Slack takes 50 blocks per message, and the header,
/// the divider and the buttons need three.
const PLAN_TARGETS_SHOWN: usize = 40;

/// A plan as Block Kit: one section per target (a deploy plan node's outputs: `summary`,
/// `changes`), each stack a line with what it adds, modifies and removes, replacements said,
/// IAM changes flagged. `None` when `plan` is not such a list (the text stands alone).
fn plan_blocks(plan: &Value) -> Option<Vec<Value>> {
    let targets = plan.as_array()?;
    if targets.is_empty() || !targets.iter().all(|t| t["changes"].is_array()) {
        return None;
    }
    let mut blocks = vec![json!({ "type": "divider" })];
    for t in targets.iter().take(PLAN_TARGETS_SHOWN) {
        let summary = t["summary"].as_str().unwrap_or_default();
        let label = summary.split_once(':').map_or(summary, |(l, _)| l);
        let changes = t["changes"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let mut lines = vec![format!("*{}*", escape(label))];
        if changes.is_empty() {
            lines.push("no changes".into());
        }
        for c in changes {
            lines.push(stack_line(c));
        }
        blocks.push(json!({
            "type": "section",
            "text": { "type": "mrkdwn", "text": truncate(&lines.join("\n"), 2900) },
        }));
    }
    if targets.len() > PLAN_TARGETS_SHOWN {
        blocks.push(
            json!({ "type": "context", "elements": [{ "type": "mrkdwn", "text": format!(
            "and {} more targets: `landfall status` of this run shows every one",
            targets.len() - PLAN_TARGETS_SHOWN
        ) }] }),
        );
    }
    Some(blocks)
}

/// One stack of a target's plan: `• update *acme-network*: +4 ~1 -0 · 1 replacement` and
/// `:warning: IAM: OperatorRole` when roles or policies change.
fn stack_line(c: &Value) -> String {
    let stack = escape(c["stack"].as_str().unwrap_or("?"));
    let names = |k: &str| -> Vec<String> {
        c[k].as_array()
            .map(|a| a.iter().filter_map(Value::as_str).map(escape).collect())
            .unwrap_or_default()
    };
    let iam = names("iam");
    let mut line = match c["action"].as_str().unwrap_or_default() {
        "create" => format!("• create *{stack}*: {} resources", c["resources"]),
        "update" if c["known"] == false => {
            format!("• update *{stack}*: changes known after apply")
        }
        "update" => {
            let mut l = format!(
                "• update *{stack}*: +{} ~{} -{}",
                c["adds"], c["modifies"], c["removes"]
            );
            let replaced = c["replacements"].as_u64().unwrap_or(0);
            let maybe = c["conditional_replacements"].as_u64().unwrap_or(0);
            if replaced > 0 {
                l.push_str(&format!(
                    " · :warning: {replaced} replacement{}",
                    if replaced == 1 { "" } else { "s" }
                ));
            }
            if maybe > 0 {
                l.push_str(&format!(
                    " · {maybe} conditional replacement{}",
                    if maybe == 1 { "" } else { "s" }
                ));
            }
            let params: Vec<String> = c["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["name"].as_str().map(escape))
                .collect();
            if !params.is_empty() {
                l.push_str(&format!(" · parameters: {}", params.join(", ")));
            }
            l
        }
        other => format!("• {} *{stack}*", escape(other)),
    };
    if !iam.is_empty() {
        line.push_str(&format!("\n    :warning: *IAM*: {}", iam.join(", ")));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use landfall_engine::RunEvent;

    /// The approval request for a provisioning plan under a production policy: the plan's
    /// summaries one per line, the policy's ask, buttons that carry the plan's digest.
    #[test]
    fn an_approval_request_shows_the_plan_and_the_policy() {
        let e = RunEvent::Milestone {
            run_id: "r-1".into(),
            node: "approve".into(),
            kind: "approval_requested".into(),
            data: json!({
                "title": "Deploy acme-baseline@2 to acme",
                "digest": "c202b04509b9d1e8f0a7c6b5a4938271605f4e3d2c1b0a9f8e7d6c5b4a392817",
                "details": {
                    "changes": [
                        "acme-prod/us-east-1: acme-security-baseline unchanged; update acme-network: 4 to add, 0 to modify, 0 to remove (0 replacements); acme-access unchanged",
                        "acme-dev/us-east-1: create acme-network (21 resources)",
                    ],
                    "plan": [
                        { "status": "changes", "summary": "acme-prod/us-east-1: acme-security-baseline unchanged; update acme-network: 4 to add, 1 to modify, 0 to remove (1 replacement, 2 conditional); update acme-access: 1 to add, 1 to modify, 1 to remove (0 replacements, IAM: OperatorRole, AuditorRole, BreakGlassRole)",
                          "changes": [
                            { "action": "update", "stack": "acme-network", "adds": 4, "modifies": 1, "removes": 0, "replacements": 1, "conditional_replacements": 2, "iam": [], "parameters": [{ "name": "VpcCidr", "from": "10.20.0.0/16", "to": "10.30.0.0/16" }] },
                            { "action": "update", "stack": "acme-access", "adds": 1, "modifies": 1, "removes": 1, "replacements": 0, "conditional_replacements": 0, "iam": ["OperatorRole", "AuditorRole", "BreakGlassRole"], "parameters": [] },
                          ] },
                        { "status": "changes", "summary": "acme-dev/us-east-1: create acme-network (21 resources)",
                          "changes": [{ "action": "create", "stack": "acme-network", "resources": 21, "iam": [] }] },
                        { "status": "no_changes", "summary": "acme-dev/eu-west-1: acme-network unchanged", "changes": [] },
                    ],
                },
                "timeout_s": 86400,
                "requester": "U1",
                "asks": [{ "policy": "production", "min_approvals": 2, "approvers": ["U2", "S0PLATFORM"], "forbid_requester": true, "expires_after_s": 86400 }],
            }),
        };
        let (text, blocks) = super::super::thread::reply_for(&e, "r-1").unwrap();
        insta::assert_snapshot!(text);
        insta::assert_json_snapshot!(blocks.unwrap());
    }

    /// A plan posted in answer to `/landfall plan`: the nodes that change, the deploy plan
    /// per target, and an Apply button carrying the plan's id and digest.
    #[test]
    fn a_plan_reads_as_pinned_with_its_apply_button() {
        use landfall_engine::{Plan, PlanStatus, PlannedNode};
        let at = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let node = |id: &str, plugin: &str, status, summary: &str, outputs: Value| PlannedNode {
            node: id.into(),
            step: id.split('[').next().unwrap_or(id).into(),
            plugin: plugin.into(),
            status,
            maybe: false,
            summary: summary.into(),
            changes: outputs["changes"].as_array().cloned().unwrap_or_default(),
            outputs,
        };
        let mut plan = Plan {
            plan_id: "p-01kexample".into(),
            workflow: "provisioning".into(),
            workflow_file: "workflows/provisioning.yaml".into(),
            workflow_text: String::new(),
            workflow_digest: "w".into(),
            inputs: json!({ "customer": "acme" }),
            inputs_digest: "i".into(),
            requester: "U1".into(),
            created_at: at,
            expires_at: at + chrono::Duration::hours(24),
            nodes: vec![
                node("fetch", "package", PlanStatus::NoChanges, "no changes (reads only)", Value::Null),
                node(
                    "plan[0]",
                    "deploy",
                    PlanStatus::Changes,
                    "acme-prod/us-east-1: update acme-network: 2 to add, 0 to modify, 0 to remove (0 replacements)",
                    json!({ "status": "changes", "summary": "acme-prod/us-east-1: update acme-network: 2 to add, 0 to modify, 0 to remove (0 replacements)",
                            "changes": [{ "action": "update", "stack": "acme-network", "adds": 2, "modifies": 0, "removes": 0, "replacements": 0, "conditional_replacements": 0, "iam": [], "parameters": [] }] }),
                ),
                node("notify", "notify", PlanStatus::Unknown, "changes unknown until apply: `notify` does not plan", Value::Null),
            ],
            digest: String::new(),
        };
        plan.digest = plan.compute_digest();
        let (text, blocks) = super::plan(&plan);
        insta::assert_snapshot!(text);
        insta::assert_json_snapshot!(blocks);
        // A plan that could not be planned whole offers nothing to apply.
        plan.nodes[2].status = PlanStatus::Failed;
        let (_, blocks) = super::plan(&plan);
        assert!(!blocks.to_string().contains("\"apply\""), "{blocks:#}");
    }
}
