//! The provisioning workflow's failure wiring, with stand-in plugins: the real
//! `workflows/provisioning.yaml`, the real engine, no AWS (the plugins themselves are tested
//! against recorded and emulated AWS elsewhere).

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use landfall_engine::compile;
use landfall_engine::state::{RunStatus, Trigger};
use landfall_engine::store::MemStore;
use landfall_engine::RunControl;
use landfall_engine::Source;
use landfall_engine::{ConfigProblem, DynPlugin, PluginInfo};
use landfall_engine::{Engine, NewRun, Registry, StepContext, StepError};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

/// How the stand-ins behave in one case, and what they saw.
#[derive(Default)]
struct Script {
    targets: usize,
    targets_fail: bool,
    /// None: no approval asked; Some(false): rejected.
    approval: Option<bool>,
    deploy_fail: BTreeSet<usize>,
    verify_fail: BTreeSet<usize>,
    /// (target index, `failures` given to it) per rollback node.
    rollbacks: Mutex<Vec<(usize, Vec<Value>)>>,
    notified: Mutex<Vec<String>>,
}

struct Stand {
    name: &'static str,
    script: Arc<Script>,
}

fn index(ctx: &StepContext) -> usize {
    ctx.node_id
        .split_once('[')
        .and_then(|(_, r)| r.trim_end_matches(']').parse().ok())
        .unwrap_or(0)
}

#[async_trait]
impl DynPlugin for Stand {
    fn info(&self) -> PluginInfo {
        PluginInfo {
            name: self.name,
            summary: "stand-in",
            schema: json!({}),
        }
    }

    fn check(&self, _with: &Value) -> Vec<ConfigProblem> {
        Vec::new()
    }

    async fn run(&self, with: Value, ctx: StepContext) -> Result<Value, StepError> {
        let s = &self.script;
        // The target's index: from the target a node works on (a rollback's nodes are only
        // the failed targets'), else the node's own index.
        let i = with["target"]["account"]
            .as_str()
            .and_then(|a| a.strip_prefix('a'))
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| index(&ctx));
        let failure = |what: &str| {
            StepError::permanent(format!("{what} failed in target {i}"))
                .with_context(json!({ "account_id": format!("{i:012}"), "region": "us-east-1" }))
        };
        match self.name {
            "package" => Ok(
                json!({ "id": "acme-baseline", "version": 1, "digest": "d", "manifest": { "stacks": [] } }),
            ),
            "targets" if s.targets_fail => Err(StepError::permanent("account missing")),
            "targets" => Ok(json!({
                "management_account_id": "000000000000",
                "targets": (0..s.targets).map(|i| json!({ "account": format!("a{i}"), "region": "us-east-1" })).collect::<Vec<_>>(),
            })),
            "approval" if s.approval == Some(false) => Err(StepError::permanent("rejected by U1")),
            "approval" => Ok(json!({ "approved": true, "by": "U1" })),
            "deploy" if s.deploy_fail.contains(&i) => Err(failure("deploy")),
            "verify" if s.verify_fail.contains(&i) => Err(failure("verify")),
            "deploy" | "verify" => {
                Ok(json!({ "account": format!("a{i}"), "region": "us-east-1", "stacks": [] }))
            }
            "rollback" => {
                let failures = with["failures"].as_array().cloned().unwrap_or_default();
                s.rollbacks.lock().unwrap().push((i, failures));
                Ok(
                    json!({ "account": format!("a{i}"), "region": "us-east-1", "stacks": [], "causes": [], "left_behind": [] }),
                )
            }
            "notify" => {
                s.notified
                    .lock()
                    .unwrap()
                    .push(with["template"].as_str().unwrap_or_default().to_string());
                Ok(json!({}))
            }
            other => Err(StepError::permanent(format!("no stand-in for {other}"))),
        }
    }
}

fn run(script: Arc<Script>) -> RunStatus {
    let mut r = Registry::new();
    for name in [
        "package", "targets", "approval", "deploy", "verify", "rollback", "notify",
    ] {
        r.register_plugin(
            name,
            Arc::new(Stand {
                name,
                script: Arc::clone(&script),
            }),
        );
    }
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows/provisioning.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let compiled = compile(&Source::new("provisioning.yaml", text), &r);
    let wf = Arc::new(
        compiled
            .workflow
            .unwrap_or_else(|| panic!("{:#?}", compiled.report.diagnostics)),
    );
    let engine = Engine::new(Arc::new(r), Arc::new(MemStore::default()));
    let mut inputs = Map::new();
    inputs.insert("package".into(), json!("acme-baseline@latest"));
    inputs.insert("customer".into(), json!("acme"));
    inputs.insert("require_approval".into(), json!(script.approval.is_some()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let rec = engine
            .create_run(
                &wf,
                NewRun {
                    run_id: None,
                    plan: None,
                    inputs,
                    trigger: Trigger {
                        source: "test".into(),
                        actor: "tester".into(),
                        details: Value::Null,
                    },
                    max_parallel: 8,
                },
            )
            .unwrap();
        engine
            .execute(Arc::clone(&wf), rec, RunControl::default(), &[])
            .await
            .unwrap()
            .status
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    /// Feature: agent-onboarding-provisioning, Property 14: Rollback Initiation on Failure.
    /// Whichever deploy or verify nodes fail, the workflow rolls back exactly the targets that
    /// failed (issue 16: the others keep their stacks), gives each rollback the run's failures
    /// (the causes), fails the run and sends the failure message; the first target is a
    /// canary, so when it fails no other target is deployed (nor rolled back); without a
    /// failure, or when nothing was deployed (a rejection), nothing is rolled back.
    #[test]
    fn every_failure_path_rolls_back_the_failed_targets_with_the_cause(
        targets in 1usize..5,
        targets_fail in prop::bool::weighted(0.1),
        approval in prop::option::of(prop::bool::weighted(0.8)),
        deploy_fail in prop::collection::btree_set(0usize..5, 0..3),
        verify_fail in prop::collection::btree_set(0usize..5, 0..3),
    ) {
        let deploy_fail: BTreeSet<usize> = deploy_fail.into_iter().filter(|i| *i < targets).collect();
        let verify_fail: BTreeSet<usize> = verify_fail.into_iter().filter(|i| *i < targets).collect();
        let script = Arc::new(Script { targets, targets_fail, approval, deploy_fail: deploy_fail.clone(), verify_fail: verify_fail.clone(), ..Script::default() });
        let status = run(Arc::clone(&script));
        let notified = script.notified.lock().unwrap().clone();
        let rollbacks = script.rollbacks.lock().unwrap().clone();
        // The targets that fail: a failing canary stops the others; a failed deploy skips
        // verify.
        let failing: BTreeSet<usize> = if targets_fail || approval == Some(false) {
            BTreeSet::new()
        } else if deploy_fail.contains(&0) {
            [0].into()
        } else if !deploy_fail.is_empty() {
            deploy_fail.clone()
        } else {
            verify_fail.clone()
        };
        let expected: BTreeSet<String> = if approval == Some(false) && !targets_fail {
            ["rejected by U1".to_string()].into()
        } else if !deploy_fail.is_empty() {
            failing.iter().map(|i| format!("deploy failed in target {i}")).collect()
        } else {
            failing.iter().map(|i| format!("verify failed in target {i}")).collect()
        };
        let failed = targets_fail || !expected.is_empty();
        prop_assert_eq!(status, if failed { RunStatus::Failed } else { RunStatus::Succeeded });
        prop_assert_eq!(notified.contains(&"provisioning-failed".to_string()), failed);
        prop_assert_eq!(notified.contains(&"provisioning-succeeded".to_string()), !failed);
        let mut seen: Vec<usize> = rollbacks.iter().map(|(i, _)| *i).collect();
        seen.sort();
        prop_assert_eq!(seen, failing.iter().copied().collect::<Vec<_>>(), "each failed target rolled back once, no other");
        for (_, failures) in &rollbacks {
            let messages: BTreeSet<String> = failures.iter().filter_map(|f| f["message"].as_str().map(str::to_string)).collect();
            prop_assert_eq!(&messages, &expected, "each rollback is given every cause");
            prop_assert!(failures.iter().all(|f| f["context"]["region"] == "us-east-1"), "with its context");
        }
    }
}
