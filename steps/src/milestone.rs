//! The milestones this build's plugins announce, as one typed enum.
//!
//! The engine carries a milestone as `kind` + `data` (it knows no plugin); the audit stores it
//! as `{"kind", "data"}`. Plugins emit a [`Milestone`] and observers (the console's progress,
//! the Slack thread, the server's console stand-in) parse one back and match it exhaustively,
//! so a renamed kind or field is a compile error on both sides instead of a message that
//! silently never renders. The serialised form is the stored form: changing a field's name or
//! type changes what old state files hold, so keep them stable.

use landfall_engine::StepContext;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::approval::{Request, Verdict};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "data", rename_all = "snake_case")]
pub enum Milestone {
    /// `org` created a member account (not when it found or adopted one).
    AccountCreated {
        name: String,
        email: String,
        id: String,
    },
    /// `policy` attached an SCP to a target.
    PolicyAttached { policy: String, target: String },
    /// `package` stored a new version (not when the content was already stored).
    PackagePublished {
        id: String,
        version: u64,
        digest: String,
    },
    /// `deploy` started a stack operation.
    StackStarted {
        stack: String,
        account: String,
        region: String,
        /// `create` or `update`.
        action: String,
        /// The change set's name and changes, when the operation went through one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        change_set: Option<Value>,
    },
    /// `deploy` saw a stack operation end.
    StackFinished {
        stack: String,
        account: String,
        region: String,
        status: String,
        /// `created`, `updated`, `unchanged` or `adopted`.
        action: String,
    },
    /// `rollback` is about to act on one stack.
    RollbackStarted {
        stack: String,
        status: String,
        action: String,
    },
    /// `rollback` finished with one target: what it did and what is left.
    Rollback(RollbackSummary),
    /// `notify` rendered a message for stakeholders.
    Notification {
        template: String,
        to: Vec<String>,
        text: String,
        /// Block Kit blocks, when the template has a `.blocks.json.j2`.
        blocks: Option<Value>,
    },
    /// `approval` asks for a decision.
    ApprovalRequested(Request),
    /// `approval` counted a decision.
    ApprovalDecided {
        actor: String,
        decision: Verdict,
        digest: String,
        comment: Option<String>,
        /// Where the request stands after it (`recorded 1 of 2 approvals (policy
        /// production)`, `approved`); empty in milestones stored before policies existed.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        standing: String,
    },
    /// `approval` received a decision that does not count, and why.
    ApprovalIgnored {
        actor: String,
        why: String,
        /// The signal's value as received.
        value: Value,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackSummary {
    pub account: String,
    pub account_id: String,
    pub region: String,
    /// One entry per stack looked at (before, decision, after).
    pub stacks: Value,
    pub causes: Vec<String>,
    pub left_behind: Vec<String>,
}

impl Milestone {
    /// The milestone an event carries, if it is one of ours (`None` for a kind this build
    /// does not know, e.g. one recorded by a newer build, or data that does not fit).
    pub fn parse(kind: &str, data: &Value) -> Option<Milestone> {
        serde_json::from_value(serde_json::json!({ "kind": kind, "data": data })).ok()
    }

    /// Announces it: checkpointed in the audit with the node, then told to observers.
    pub fn emit(self, ctx: &StepContext) {
        let (kind, data) = self.into_parts();
        ctx.milestone(kind, data);
    }

    /// Its stored form: the kind and the data.
    pub fn into_parts(self) -> (String, Value) {
        match serde_json::to_value(self) {
            Ok(Value::Object(mut m)) => {
                let kind = match m.remove("kind") {
                    Some(Value::String(k)) => k,
                    _ => String::new(),
                };
                (kind, m.remove("data").unwrap_or(Value::Null))
            }
            // Serialising plain strings and values cannot fail.
            _ => (String::new(), Value::Null),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The stored forms are what old state files hold and what observers parse: written out by
    /// hand, not derived from the enum.
    #[test]
    fn stored_forms_are_stable() {
        let cases = [
            (
                Milestone::AccountCreated {
                    name: "prod".into(),
                    email: "p@x".into(),
                    id: "123456789012".into(),
                },
                "account_created",
                json!({ "name": "prod", "email": "p@x", "id": "123456789012" }),
            ),
            (
                Milestone::StackStarted {
                    stack: "s".into(),
                    account: "prod".into(),
                    region: "eu-west-1".into(),
                    action: "create".into(),
                    change_set: None,
                },
                "stack_started",
                json!({ "stack": "s", "account": "prod", "region": "eu-west-1", "action": "create" }),
            ),
            (
                Milestone::ApprovalDecided {
                    actor: "U1".into(),
                    decision: Verdict::Reject,
                    digest: "d".into(),
                    comment: None,
                    standing: String::new(),
                },
                "approval_decided",
                json!({ "actor": "U1", "decision": "reject", "digest": "d", "comment": null }),
            ),
            (
                Milestone::PackagePublished {
                    id: "acme".into(),
                    version: 3,
                    digest: "d".into(),
                },
                "package_published",
                json!({ "id": "acme", "version": 3, "digest": "d" }),
            ),
        ];
        for (m, kind, data) in cases {
            assert_eq!(m.clone().into_parts(), (kind.to_string(), data.clone()));
            assert_eq!(Milestone::parse(kind, &data), Some(m));
        }
        assert_eq!(Milestone::parse("account_created", &json!({})), None);
        assert_eq!(Milestone::parse("no_such_kind", &json!({})), None);
    }
}
