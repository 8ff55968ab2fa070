//! Property tests of deploying, tracking, verifying and rolling back (seed properties 11–14;
//! the workflow half of 14 is in `tests/it/props_provisioning.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_cloudformation::operation::create_stack::CreateStackOutput;
use aws_sdk_cloudformation::operation::describe_stack_events::DescribeStackEventsOutput;
use aws_sdk_cloudformation::operation::describe_stacks::{
    DescribeStacksError, DescribeStacksOutput,
};
use aws_sdk_cloudformation::operation::get_template::GetTemplateOutput;
use aws_sdk_cloudformation::types::{Parameter, Stack, StackStatus, Tag};
use aws_sdk_cloudformation::Client;
use aws_smithy_mocks::{mock, mock_client, MockResponse, RuleMode};
use aws_smithy_types::error::ErrorMetadata;
use landfall_engine::StepContext;
use proptest::prelude::*;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::deploy::{Job, TagSet};
use super::monitor::{Board, Ev, Poll};
use super::plan::{plan, Target, TemplateFacts};
use super::rollback::{decide, Decision};
use super::verify::{discrepancies, Actual};

/// One account and region of CloudFormation, as far as `deploy` sees it.
#[derive(Default)]
struct World {
    stacks: BTreeMap<String, (Vec<Parameter>, Vec<Tag>, String)>,
    creates: Vec<(String, BTreeMap<String, String>)>,
    writes: usize,
}

fn world_client(w: &Arc<Mutex<World>>) -> Client {
    let x = w.clone();
    let describe = mock!(Client::describe_stacks).then_compute_response(move |req| {
        let w = x.lock().unwrap();
        let name = req.stack_name().unwrap_or_default();
        match w.stacks.get(name) {
            None => MockResponse::Error(DescribeStacksError::generic(
                ErrorMetadata::builder()
                    .code("ValidationError")
                    .message(format!("Stack with id {name} does not exist"))
                    .build(),
            )),
            Some((params, tags, _)) => MockResponse::Output(
                DescribeStacksOutput::builder()
                    .stacks(
                        Stack::builder()
                            .stack_name(name)
                            .stack_id(name)
                            .stack_status(StackStatus::CreateComplete)
                            .set_parameters(Some(params.clone()))
                            .set_tags(Some(tags.clone()))
                            .build(),
                    )
                    .build(),
            ),
        }
    });
    let x = w.clone();
    let create = mock!(Client::create_stack).then_compute_response(move |req| {
        let mut w = x.lock().unwrap();
        let name = req.stack_name().unwrap_or_default().to_string();
        let params: BTreeMap<String, String> = req
            .parameters()
            .iter()
            .map(|p| {
                (
                    p.parameter_key().unwrap_or_default().to_string(),
                    p.parameter_value().unwrap_or_default().to_string(),
                )
            })
            .collect();
        w.writes += 1;
        w.creates.push((name.clone(), params));
        let body = req.template_body().unwrap_or_default().to_string();
        // Like CloudFormation, the stack lists every declared parameter, defaults included.
        let mut all = req.parameters().to_vec();
        if let Ok(facts) = TemplateFacts::parse(&name, &body) {
            for (k, default) in facts.parameters {
                if !all.iter().any(|p| p.parameter_key() == Some(k.as_str())) {
                    all.push(
                        Parameter::builder()
                            .parameter_key(k)
                            .set_parameter_value(default)
                            .build(),
                    );
                }
            }
        }
        w.stacks
            .insert(name.clone(), (all, req.tags().to_vec(), body));
        MockResponse::Output(CreateStackOutput::builder().stack_id(name).build())
    });
    let events = mock!(Client::describe_stack_events)
        .then_output(|| DescribeStackEventsOutput::builder().build());
    let x = w.clone();
    let template = mock!(Client::get_template).then_compute_response(move |req| {
        let w = x.lock().unwrap();
        let body = w
            .stacks
            .get(req.stack_name().unwrap_or_default())
            .map(|s| s.2.clone())
            .unwrap_or_default();
        MockResponse::Output(GetTemplateOutput::builder().template_body(body).build())
    });
    mock_client!(
        aws_sdk_cloudformation,
        RuleMode::MatchAny,
        &[&describe, &create, &events, &template],
        |c| c.retry_config(aws_sdk_cloudformation::config::retry::RetryConfig::disabled())
    )
}

/// A package: stacks with orders (ties deploy side by side), package parameters, whether
/// they take `Environment` from the target and whether they are account-wide.
fn package() -> impl Strategy<Value = (Value, BTreeMap<String, String>)> {
    prop::collection::vec(
        (
            1u32..=3,
            prop::collection::btree_map("P[a-z]{1,4}", "[a-z0-9 ,]{0,8}", 0..3),
            any::<bool>(),
            any::<bool>(),
        ),
        1..5,
    )
    .prop_map(|stacks| {
        let mut files = BTreeMap::new();
        let mut entries = Vec::new();
        for (i, (order, params, env, account)) in stacks.into_iter().enumerate() {
            let mut declared: Vec<String> = params.keys().cloned().collect();
            if env {
                declared.push("Environment".into());
            }
            declared.push("Unset".into());
            let mut t = String::from("Parameters:\n");
            for p in &declared {
                t.push_str(&format!("  {p}: {{ Type: String, Default: d }}\n"));
            }
            t.push_str("Resources:\n  Topic: { Type: AWS::SNS::Topic }\n");
            let path = format!("s{i}.yaml");
            files.insert(path.clone(), t);
            entries.push(json!({
                "name": format!("s{i}"),
                "order": order,
                "template": path,
                "parameters": params,
                "target_parameters": if env { vec!["Environment"] } else { vec![] },
                "scope": if account { "account" } else { "region" },
            }));
        }
        (json!({ "customer": "acme", "stacks": entries }), files)
    })
}

fn targets() -> impl Strategy<Value = Vec<Target>> {
    prop::collection::vec(("[a-z]{3}", any::<bool>()), 1..4).prop_map(|ts| {
        ts.into_iter()
            .enumerate()
            .map(|(i, (env, home))| Target {
                account: format!("a{i}"),
                account_id: format!("{i:012}"),
                region: "us-east-1".into(),
                home,
                environment: None,
                parameters: [("Environment".to_string(), env)].into(),
            })
            .collect()
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(100))]

    /// Feature: agent-onboarding-provisioning, Property 11: Stack Deployment Initiation.
    /// Every stack of the package is started exactly once per target (account-wide stacks
    /// only in the home region), with exactly the package's parameters for it; running the
    /// deployment again (a re-run, or a resume after a crash) starts nothing more.
    #[test]
    fn every_stack_is_started_once_per_target_with_exactly_its_parameters(
        (manifest, files) in package(),
        targets in targets(),
    ) {
        let rt = runtime();
        for t in &targets {
            let world = Arc::new(Mutex::new(World::default()));
            let plans = plan(&manifest, &files, t, &BTreeMap::new()).unwrap();
            let ctx = StepContext::new("run-1", "deploy[0]", "deploy", 1, CancellationToken::new(), None);
            let job = Job {
                cfn: world_client(&world),
                target: t.clone(),
                tags: TagSet { customer: "acme".into(), package: "p".into(), version: "1".into(), run: "run-1".into() },
                poll: Poll { initial: Duration::from_secs(1), max: Duration::from_secs(30) },
                ctx,
                board: Arc::new(Mutex::new(Board::default())),
            };
            rt.block_on(job.deploy_all(&plans)).unwrap();
            let mut expected: Vec<(String, BTreeMap<String, String>)> = Vec::new();
            for s in manifest["stacks"].as_array().unwrap() {
                if s["scope"] == "account" && !t.home {
                    continue;
                }
                let mut params: BTreeMap<String, String> = serde_json::from_value(s["parameters"].clone()).unwrap();
                if !s["target_parameters"].as_array().unwrap().is_empty() {
                    params.insert("Environment".into(), t.parameters["Environment"].clone());
                }
                expected.push((format!("acme-{}", s["name"].as_str().unwrap()), params));
            }
            let mut got = world.lock().unwrap().creates.clone();
            // Waves: no stack starts before every stack of a lower order was created.
            let order_of = |name: &str| manifest["stacks"].as_array().unwrap().iter()
                .find(|s| format!("acme-{}", s["name"].as_str().unwrap()) == name)
                .and_then(|s| s["order"].as_u64()).unwrap();
            let orders: Vec<u64> = got.iter().map(|(n, _)| order_of(n)).collect();
            prop_assert!(orders.windows(2).all(|w| w[0] <= w[1]), "{:?}", orders);
            got.sort();
            expected.sort();
            prop_assert_eq!(&got, &expected);
            // The same run again (a resume after a crash): the stacks are adopted.
            let resumed = Job { board: Arc::new(Mutex::new(Board::default())), ..job.clone() };
            let results = rt.block_on(resumed.deploy_all(&plans)).unwrap();
            prop_assert!(results.iter().all(|r| r.action == super::deploy::Action::Adopted));
            // A later run: nothing to do.
            let ctx = StepContext::new("run-2", "deploy[0]", "deploy", 1, CancellationToken::new(), None);
            let later = Job {
                board: Arc::new(Mutex::new(Board::default())),
                tags: TagSet { run: "run-2".into(), ..job.tags.clone() },
                ctx,
                ..job.clone()
            };
            let results = rt.block_on(later.deploy_all(&plans)).unwrap();
            prop_assert!(results.iter().all(|r| r.action == super::deploy::Action::Unchanged));
            prop_assert_eq!(world.lock().unwrap().writes, expected.len(), "neither wrote anything");
        }
    }

    /// Feature: agent-onboarding-provisioning, Property 12: Deployment Status Tracking.
    /// For any stream of resource events across a node's stacks, the percentage stays within
    /// 0–100, never decreases, and is 100 only when every stack succeeded.
    #[test]
    fn progress_is_bounded_monotone_and_complete_only_on_success(
        sizes in prop::collection::vec(1usize..6, 1..4),
        events in prop::collection::vec((0usize..4, 0usize..6, prop::sample::select(vec![
            "CREATE_IN_PROGRESS", "CREATE_COMPLETE", "CREATE_FAILED", "UPDATE_IN_PROGRESS",
            "UPDATE_COMPLETE", "DELETE_IN_PROGRESS", "DELETE_COMPLETE", "UPDATE_FAILED",
        ])), 0..60),
        outcomes in prop::collection::vec(any::<bool>(), 4),
    ) {
        let mut board = Board::default();
        for (i, n) in sizes.iter().enumerate() {
            let declared = (0..*n).map(|r| (format!("R{r}"), "AWS::SNS::Topic".to_string())).collect();
            board.add(&format!("s{i}"), declared);
        }
        let mut last = 0.0;
        let mut check = |b: &Board| -> Result<(), TestCaseError> {
            let p = b.percent();
            prop_assert!((0.0..=100.0).contains(&p), "{}", p);
            prop_assert!(p >= last, "went down from {} to {}", last, p);
            last = p;
            Ok(())
        };
        for (k, (s, r, status)) in events.iter().enumerate() {
            let slot = s % sizes.len();
            let e = Ev { id: k.to_string(), logical_id: format!("R{r}"), resource_type: "AWS::SNS::Topic".into(), status: status.to_string(), reason: None, timestamp: None };
            board.stacks[slot].1.observe(&e);
            check(&board)?;
            prop_assert!(board.percent() < 100.0, "100% before any stack succeeded");
        }
        for (slot, ok) in outcomes.iter().take(sizes.len()).enumerate() {
            board.stacks[slot].1.finish(*ok);
            check(&board)?;
        }
        let all_ok = outcomes.iter().take(sizes.len()).all(|o| *o);
        prop_assert_eq!(board.percent() == 100.0, all_ok);
    }

    /// Feature: agent-onboarding-provisioning, Property 13: Resource Verification Completeness.
    /// Any missing, failed or mistyped resource, undeclared extra resource or missing output
    /// is reported under its logical id, and nothing else is.
    #[test]
    fn every_discrepancy_is_reported_and_nothing_else(
        resources in prop::collection::btree_map("[A-Z][a-zA-Z]{2,8}", prop::sample::select(vec![
            "AWS::S3::Bucket", "AWS::SNS::Topic", "AWS::EC2::VPC", "AWS::IAM::Role",
        ]), 1..8),
        faults in prop::collection::vec(0u8..5, 8),
        extra in prop::option::of("Extra[0-9]{1,3}"),
        outputs in prop::collection::btree_map("Out[a-z]{1,4}", any::<bool>(), 0..4),
    ) {
        let mut facts = TemplateFacts::default();
        let mut actual = Vec::new();
        let mut expected = BTreeSet::new();
        for (i, (id, ty)) in resources.iter().enumerate() {
            facts.resources.insert(id.clone(), ty.to_string());
            match faults[i % faults.len()] {
                0 => { expected.insert(id.clone()); }
                1 => {
                    expected.insert(id.clone());
                    actual.push(Actual { logical_id: id.clone(), resource_type: "AWS::SQS::Queue".into(), status: "CREATE_COMPLETE".into() });
                }
                2 => {
                    expected.insert(id.clone());
                    actual.push(Actual { logical_id: id.clone(), resource_type: ty.to_string(), status: "CREATE_FAILED".into() });
                }
                _ => actual.push(Actual { logical_id: id.clone(), resource_type: ty.to_string(), status: "UPDATE_COMPLETE".into() }),
            }
        }
        if let Some(x) = &extra {
            expected.insert(x.clone());
            actual.push(Actual { logical_id: x.clone(), resource_type: "AWS::SNS::Topic".into(), status: "CREATE_COMPLETE".into() });
        }
        let mut present = BTreeMap::new();
        for (o, there) in &outputs {
            facts.outputs.insert(o.clone());
            if *there {
                present.insert(o.clone(), "v".to_string());
            } else {
                expected.insert(o.clone());
            }
        }
        let (found, _) = discrepancies("s", &facts, &actual, &present);
        let ids: BTreeSet<String> = found.iter().map(|d| d.logical_id.clone()).collect();
        prop_assert_eq!(ids, expected);
    }

    /// Feature: agent-onboarding-provisioning, Property 14: Rollback Initiation on Failure.
    /// Whatever state a failed deployment left a stack in, the rollback acts on it (deletes,
    /// cancels, continues, or waits for it first) when this run started it or it is broken;
    /// it never deletes a healthy stack another run created, nor cancels or deletes another
    /// run's work in progress.
    #[test]
    fn every_failed_state_gets_a_rollback_action(
        status in prop::sample::select(vec![
            "CREATE_IN_PROGRESS", "CREATE_FAILED", "CREATE_COMPLETE", "ROLLBACK_IN_PROGRESS",
            "ROLLBACK_FAILED", "ROLLBACK_COMPLETE", "DELETE_FAILED", "UPDATE_IN_PROGRESS",
            "UPDATE_COMPLETE_CLEANUP_IN_PROGRESS", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_IN_PROGRESS",
            "UPDATE_ROLLBACK_FAILED", "UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS",
            "UPDATE_ROLLBACK_COMPLETE", "REVIEW_IN_PROGRESS", "IMPORT_COMPLETE",
        ]),
        created in any::<bool>(),
        updated in any::<bool>(),
        delete_created in any::<bool>(),
    ) {
        let d = decide(status, created, updated || created, delete_created);
        // From AWS's stack status list: a failed creation or a failed update rollback.
        let broken = status.ends_with("_FAILED") || status == "ROLLBACK_COMPLETE";
        // An operation CloudFormation is carrying out (a change set under review is not one).
        let running = status.ends_with("_IN_PROGRESS") && !status.starts_with("REVIEW");
        if broken || running {
            prop_assert!(d != Decision::Nothing && d != Decision::LeaveUpdated, "{} → {:?}", status, d);
        }
        if !(updated || created) {
            prop_assert!(d != Decision::CancelUpdate, "cancelled another run's update ({})", status);
        }
        if !created && status == "REVIEW_IN_PROGRESS" {
            prop_assert!(d != Decision::Delete, "deleted another run's change set under review");
        }
        if created && delete_created && status.ends_with("_COMPLETE") && !status.contains("ROLLBACK") {
            prop_assert_eq!(d, Decision::Delete);
        }
        if !created && matches!(status, "CREATE_COMPLETE" | "UPDATE_COMPLETE" | "IMPORT_COMPLETE" | "UPDATE_ROLLBACK_COMPLETE") {
            prop_assert!(d != Decision::Delete, "never deletes a healthy stack it did not create");
        }
    }
}
