//! The monitoring, deploy and rollback state machines against recorded CloudFormation
//! sequences (what AWS really answers: per-resource events, `CREATE_FAILED` then
//! `ROLLBACK_IN_PROGRESS` → `ROLLBACK_COMPLETE`, `UPDATE_ROLLBACK_FAILED`, throttling in the
//! middle), served to the real SDK client by the SDK's own `aws-smithy-mocks`. The emulator
//! cannot show these: it completes stacks synchronously and emits no resource events.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_cloudformation::operation::cancel_update_stack::CancelUpdateStackOutput;
use aws_sdk_cloudformation::operation::continue_update_rollback::ContinueUpdateRollbackOutput;
use aws_sdk_cloudformation::operation::create_change_set::CreateChangeSetOutput;
use aws_sdk_cloudformation::operation::create_stack::CreateStackOutput;
use aws_sdk_cloudformation::operation::delete_stack::DeleteStackOutput;
use aws_sdk_cloudformation::operation::describe_change_set::{
    DescribeChangeSetError, DescribeChangeSetOutput,
};
use aws_sdk_cloudformation::operation::describe_stack_events::DescribeStackEventsOutput;
use aws_sdk_cloudformation::operation::describe_stacks::{
    DescribeStacksError, DescribeStacksOutput,
};
use aws_sdk_cloudformation::operation::execute_change_set::ExecuteChangeSetOutput;
use aws_sdk_cloudformation::operation::get_template::GetTemplateOutput;
use aws_sdk_cloudformation::operation::list_stack_resources::ListStackResourcesOutput;
use aws_sdk_cloudformation::types::error::ChangeSetNotFoundException;
use aws_sdk_cloudformation::types::{
    Change, ChangeAction, ChangeSetStatus, ExecutionStatus, Parameter, Replacement, ResourceChange,
    ResourceStatus, Stack, StackEvent, StackStatus, Tag,
};
use aws_sdk_cloudformation::Client;
use aws_smithy_mocks::{mock, mock_client, MockResponse, RuleMode};
use aws_smithy_types::error::ErrorMetadata;
use landfall_engine::StepReport;
use landfall_engine::{ErrorClass, StepContext};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::deploy::{client_token, Action, Job, TagSet, TAG_CREATED_BY, TAG_RUN};
use super::monitor::{Board, Poll};
use super::plan::{plan, StackPlan, Target};
use super::rollback::{roll_back_stack, Decision, RollbackConfig};

const STACK: &str = "acme-baseline";
const RUN: &str = "r-test";

/// One entry of a recorded sequence.
#[derive(Clone)]
enum Rec {
    /// The next `DescribeStacks` answer ("NONE": the stack does not exist).
    Status(&'static str),
    /// An event that becomes visible (newest last).
    Event(
        &'static str,
        &'static str,
        &'static str,
        Option<&'static str>,
    ),
    /// The next `DescribeStacks` call is throttled.
    Throttle,
}

use Rec::*;

#[derive(Default)]
struct Timeline {
    script: Vec<Rec>,
    pos: usize,
    last: Option<&'static str>,
    events: Vec<StackEvent>,
    /// Write operations, in order, with their token.
    writes: Vec<(String, Option<String>)>,
    describes: usize,
    tags: Vec<Tag>,
    parameters: Vec<Parameter>,
    template: String,
    /// How many `DescribeChangeSet` calls are throttled before any is answered.
    change_set_throttles: usize,
    change_set_calls: usize,
}

impl Timeline {
    fn describe(&mut self) -> MockResponse<DescribeStacksOutput, DescribeStacksError> {
        self.describes += 1;
        let status = loop {
            match self.script.get(self.pos).cloned() {
                Some(Event(logical, ty, status, reason)) => {
                    self.pos += 1;
                    let n = self.events.len();
                    self.events.push(
                        StackEvent::builder()
                            .stack_id(format!("arn:stack/{STACK}/1"))
                            .stack_name(STACK)
                            .event_id(format!("ev-{n}"))
                            .logical_resource_id(logical)
                            .resource_type(ty)
                            .resource_status(ResourceStatus::from(status))
                            .set_resource_status_reason(reason.map(str::to_string))
                            .timestamp(aws_smithy_types::DateTime::from_secs(
                                1_700_000_000 + n as i64,
                            ))
                            .build(),
                    );
                }
                Some(Status(s)) => {
                    self.pos += 1;
                    self.last = Some(s);
                    break s;
                }
                Some(Throttle) => {
                    self.pos += 1;
                    return MockResponse::Error(DescribeStacksError::generic(
                        ErrorMetadata::builder()
                            .code("Throttling")
                            .message("Rate exceeded")
                            .build(),
                    ));
                }
                None => break self.last.unwrap_or("NONE"),
            }
        };
        if status == "NONE" || status == "DELETE_COMPLETE" {
            return MockResponse::Error(DescribeStacksError::generic(
                ErrorMetadata::builder()
                    .code("ValidationError")
                    .message(format!("Stack with id {STACK} does not exist"))
                    .build(),
            ));
        }
        MockResponse::Output(
            DescribeStacksOutput::builder()
                .stacks(
                    Stack::builder()
                        .stack_name(STACK)
                        .stack_id(format!("arn:stack/{STACK}/1"))
                        .stack_status(StackStatus::from(status))
                        .set_tags(Some(self.tags.clone()))
                        .set_parameters(Some(self.parameters.clone()))
                        .creation_time(aws_smithy_types::DateTime::from_secs(1_700_000_000))
                        .build(),
                )
                .build(),
        )
    }

    fn events(&self) -> DescribeStackEventsOutput {
        DescribeStackEventsOutput::builder()
            .set_stack_events(Some(self.events.iter().rev().cloned().collect()))
            .build()
    }
}

/// A real CloudFormation client whose answers come from `tl`.
fn client(tl: &Arc<Mutex<Timeline>>) -> Client {
    let t = tl.clone();
    let describe =
        mock!(Client::describe_stacks).then_compute_response(move |_| t.lock().unwrap().describe());
    let t = tl.clone();
    let events = mock!(Client::describe_stack_events)
        .then_compute_response(move |_| MockResponse::Output(t.lock().unwrap().events()));
    let t = tl.clone();
    let create = mock!(Client::create_stack).then_compute_response(move |req| {
        let mut t = t.lock().unwrap();
        t.writes.push((
            "CreateStack".into(),
            req.client_request_token().map(str::to_string),
        ));
        t.tags = req.tags().to_vec();
        t.parameters = req.parameters().to_vec();
        MockResponse::Output(
            CreateStackOutput::builder()
                .stack_id(format!("arn:stack/{STACK}/1"))
                .build(),
        )
    });
    let t = tl.clone();
    let delete = mock!(Client::delete_stack).then_compute_response(move |req| {
        t.lock().unwrap().writes.push((
            "DeleteStack".into(),
            req.client_request_token().map(str::to_string),
        ));
        MockResponse::Output(DeleteStackOutput::builder().build())
    });
    let t = tl.clone();
    let cancel = mock!(Client::cancel_update_stack).then_compute_response(move |req| {
        t.lock().unwrap().writes.push((
            "CancelUpdateStack".into(),
            req.client_request_token().map(str::to_string),
        ));
        MockResponse::Output(CancelUpdateStackOutput::builder().build())
    });
    let t = tl.clone();
    let cont = mock!(Client::continue_update_rollback).then_compute_response(move |req| {
        t.lock().unwrap().writes.push((
            "ContinueUpdateRollback".into(),
            req.client_request_token().map(str::to_string),
        ));
        MockResponse::Output(ContinueUpdateRollbackOutput::builder().build())
    });
    let t = tl.clone();
    let template = mock!(Client::get_template).then_compute_response(move |_| {
        MockResponse::Output(
            GetTemplateOutput::builder()
                .template_body(t.lock().unwrap().template.clone())
                .build(),
        )
    });
    let t = tl.clone();
    let create_cs = mock!(Client::create_change_set).then_compute_response(move |req| {
        let mut t = t.lock().unwrap();
        t.writes.push((
            "CreateChangeSet".into(),
            req.client_token().map(str::to_string),
        ));
        t.parameters = req.parameters().to_vec();
        t.tags = req.tags().to_vec();
        MockResponse::Output(CreateChangeSetOutput::builder().id("cs-1").build())
    });
    let t = tl.clone();
    let describe_cs = mock!(Client::describe_change_set).then_compute_response(move |_| {
        let mut t = t.lock().unwrap();
        if t.change_set_throttles > 0 {
            t.change_set_throttles -= 1;
            return MockResponse::Error(DescribeChangeSetError::generic(
                ErrorMetadata::builder()
                    .code("Throttling")
                    .message("Rate exceeded")
                    .build(),
            ));
        }
        t.change_set_calls += 1;
        match t.change_set_calls {
            // As AWS answers (the query protocol's code for ChangeSetNotFoundException).
            1 => MockResponse::Error(DescribeChangeSetError::ChangeSetNotFoundException(
                ChangeSetNotFoundException::builder()
                    .message("ChangeSet does not exist")
                    .meta(
                        ErrorMetadata::builder()
                            .code("ChangeSetNotFound")
                            .message("ChangeSet does not exist")
                            .build(),
                    )
                    .build(),
            )),
            2 => MockResponse::Output(
                DescribeChangeSetOutput::builder()
                    .status(ChangeSetStatus::CreateInProgress)
                    .build(),
            ),
            _ => MockResponse::Output(
                DescribeChangeSetOutput::builder()
                    .status(ChangeSetStatus::CreateComplete)
                    .execution_status(ExecutionStatus::Available)
                    .changes(
                        Change::builder()
                            .resource_change(
                                ResourceChange::builder()
                                    .action(ChangeAction::Modify)
                                    .logical_resource_id("Topic")
                                    .resource_type("AWS::SNS::Topic")
                                    .replacement(Replacement::False)
                                    .build(),
                            )
                            .build(),
                    )
                    .build(),
            ),
        }
    });
    let t = tl.clone();
    let execute = mock!(Client::execute_change_set).then_compute_response(move |req| {
        t.lock().unwrap().writes.push((
            "ExecuteChangeSet".into(),
            req.client_request_token().map(str::to_string),
        ));
        MockResponse::Output(ExecuteChangeSetOutput::builder().build())
    });
    let resources = mock!(Client::list_stack_resources)
        .then_output(|| ListStackResourcesOutput::builder().build());
    mock_client!(
        aws_sdk_cloudformation,
        RuleMode::MatchAny,
        &[
            &describe,
            &events,
            &create,
            &delete,
            &cancel,
            &cont,
            &template,
            &create_cs,
            &describe_cs,
            &execute,
            &resources
        ],
        // As in production: the SDK never retries; our pollers and the engine do.
        |c| c.retry_config(aws_sdk_cloudformation::config::retry::RetryConfig::disabled())
    )
}

const TEMPLATE: &str = r#"
Parameters:
  Environment: { Type: String }
Resources:
  Bucket: { Type: AWS::S3::Bucket, DeletionPolicy: Retain }
  Topic: { Type: AWS::SNS::Topic }
Outputs:
  TopicArn: { Value: { Ref: Topic } }
"#;

fn target() -> Target {
    Target {
        account: "acme-prod".into(),
        account_id: "111111111111".into(),
        region: "us-east-1".into(),
        home: true,
        environment: Some("production".into()),
        parameters: [("Environment".to_string(), "production".to_string())].into(),
    }
}

fn stack_plan() -> StackPlan {
    let manifest = json!({
        "customer": "acme",
        "stacks": [{ "name": "baseline", "order": 1, "template": "t.yaml",
                     "target_parameters": ["Environment"] }],
    });
    let files = [("t.yaml".to_string(), TEMPLATE.to_string())].into();
    plan(&manifest, &files, &target(), &BTreeMap::new())
        .unwrap()
        .remove(0)
}

fn context(
    deadline: Option<Duration>,
) -> (
    StepContext,
    mpsc::UnboundedReceiver<(std::sync::Arc<str>, StepReport)>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let ctx = StepContext::new(
        RUN,
        "deploy[0]",
        "deploy",
        1,
        CancellationToken::new(),
        Some(tx),
    )
    .with_deadline(deadline.map(|d| tokio::time::Instant::now() + d));
    (ctx, rx)
}

fn job(cfn: Client, ctx: &StepContext) -> Job {
    Job {
        cfn,
        target: target(),
        tags: TagSet {
            customer: "acme".into(),
            package: "acme-baseline".into(),
            version: "1".into(),
            run: RUN.into(),
        },
        poll: Poll {
            initial: Duration::from_secs(5),
            max: Duration::from_secs(30),
        },
        ctx: ctx.clone(),
        board: Arc::new(Mutex::new(Board::default())),
    }
}

fn percents(rx: &mut mpsc::UnboundedReceiver<(std::sync::Arc<str>, StepReport)>) -> Vec<f64> {
    let mut out = Vec::new();
    while let Ok((_, s)) = rx.try_recv() {
        if let StepReport::Progress { percent, .. } = s {
            out.push(percent);
        }
    }
    out
}

fn timeline(script: Vec<Rec>) -> Arc<Mutex<Timeline>> {
    Arc::new(Mutex::new(Timeline {
        script,
        template: TEMPLATE.into(),
        ..Default::default()
    }))
}

#[tokio::test(start_paused = true)]
async fn a_create_is_followed_through_throttling_to_complete_with_rising_progress() {
    let tl = timeline(vec![
        Status("NONE"),
        Event(
            STACK,
            "AWS::CloudFormation::Stack",
            "CREATE_IN_PROGRESS",
            Some("User Initiated"),
        ),
        Event("Bucket", "AWS::S3::Bucket", "CREATE_IN_PROGRESS", None),
        Event("Topic", "AWS::SNS::Topic", "CREATE_IN_PROGRESS", None),
        Status("CREATE_IN_PROGRESS"),
        Event("Bucket", "AWS::S3::Bucket", "CREATE_COMPLETE", None),
        Status("CREATE_IN_PROGRESS"),
        Throttle,
        Throttle,
        Event("Topic", "AWS::SNS::Topic", "CREATE_COMPLETE", None),
        Event(STACK, "AWS::CloudFormation::Stack", "CREATE_COMPLETE", None),
        Status("CREATE_COMPLETE"),
    ]);
    let (ctx, mut rx) = context(None);
    let j = job(client(&tl), &ctx);
    let p = stack_plan();
    j.board
        .lock()
        .unwrap()
        .add(&p.name, p.facts.resources.clone());
    let started = tokio::time::Instant::now();
    let r = j
        .deploy_one(&p, p.resolve(&BTreeMap::new()).unwrap(), 0)
        .await
        .unwrap();
    assert_eq!(r.action, Action::Created);
    assert_eq!(r.status, "CREATE_COMPLETE");
    let t = tl.lock().unwrap();
    assert_eq!(
        t.writes,
        vec![(
            "CreateStack".to_string(),
            Some(client_token(ctx.idempotency_key(), STACK, "create"))
        )],
        "one CreateStack, with the node's token"
    );
    // Throttling made it wait longer, not fail: 5 s, 7.5 s, then 15 s and 30 s throttled.
    assert!(
        started.elapsed() >= Duration::from_secs(5 + 7 + 15 + 30),
        "{:?}",
        started.elapsed()
    );
    let seen = percents(&mut rx);
    assert_eq!(seen.last(), Some(&100.0), "{seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "never decreases: {seen:?}"
    );
    assert!(
        seen.contains(&50.0),
        "one of two resources done shows 50%: {seen:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_create_reports_the_failed_events_reason_and_the_rollback_deletes_it() {
    let tl = timeline(vec![
        Status("NONE"),
        Event(
            STACK,
            "AWS::CloudFormation::Stack",
            "CREATE_IN_PROGRESS",
            Some("User Initiated"),
        ),
        Event("Bucket", "AWS::S3::Bucket", "CREATE_IN_PROGRESS", None),
        Event("Topic", "AWS::SNS::Topic", "CREATE_IN_PROGRESS", None),
        Event(
            "Bucket",
            "AWS::S3::Bucket",
            "CREATE_FAILED",
            Some("landfall-logs-acme already exists"),
        ),
        Status("CREATE_IN_PROGRESS"),
        Event(
            STACK,
            "AWS::CloudFormation::Stack",
            "ROLLBACK_IN_PROGRESS",
            Some("The following resource(s) failed to create: [Bucket]."),
        ),
        Event("Topic", "AWS::SNS::Topic", "CREATE_COMPLETE", None),
        Event("Topic", "AWS::SNS::Topic", "DELETE_IN_PROGRESS", None),
        Status("ROLLBACK_IN_PROGRESS"),
        Event("Topic", "AWS::SNS::Topic", "DELETE_COMPLETE", None),
        Event(
            STACK,
            "AWS::CloudFormation::Stack",
            "ROLLBACK_COMPLETE",
            None,
        ),
        Status("ROLLBACK_COMPLETE"),
        // The rollback step: it finds the stack, deletes it, follows the deletion.
        Status("ROLLBACK_COMPLETE"),
        Status("DELETE_IN_PROGRESS"),
        Status("NONE"),
    ]);
    let (ctx, mut rx) = context(None);
    let j = job(client(&tl), &ctx);
    let p = stack_plan();
    j.board
        .lock()
        .unwrap()
        .add(&p.name, p.facts.resources.clone());
    let err = j
        .deploy_one(&p, p.resolve(&BTreeMap::new()).unwrap(), 0)
        .await
        .unwrap_err();
    assert!(
        err.message.contains("ended ROLLBACK_COMPLETE: Bucket (AWS::S3::Bucket) CREATE_FAILED: landfall-logs-acme already exists"),
        "{}",
        err.message
    );
    assert_eq!(err.context["failed_events"][0]["logical_id"], "Bucket");
    let seen = percents(&mut rx);
    assert!(
        seen.iter().all(|p| *p < 100.0),
        "100% only on success: {seen:?}"
    );
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");

    let cfn = client(&tl);
    let c = rollback_config();
    let r = roll_back_stack(&cfn, &p, &c, &ctx).await.unwrap();
    assert_eq!(r.decision, Decision::Delete);
    assert_eq!(r.before.as_deref(), Some("ROLLBACK_COMPLETE"));
    assert_eq!(r.after.as_deref(), Some("DELETE_COMPLETE"));
    assert!(
        r.causes
            .iter()
            .any(|c| c.contains("landfall-logs-acme already exists")),
        "{:?}",
        r.causes
    );
    assert_eq!(tl.lock().unwrap().writes.last().unwrap().0, "DeleteStack");
}

fn rollback_config() -> RollbackConfig {
    serde_json::from_value(json!({
        "package": "acme-baseline@1",
        "target": target(),
    }))
    .unwrap()
}

fn tagged(tl: &Arc<Mutex<Timeline>>, created_by: &str) {
    tl.lock().unwrap().tags = vec![
        Tag::builder().key(TAG_RUN).value(RUN).build(),
        Tag::builder().key(TAG_CREATED_BY).value(created_by).build(),
    ];
}

#[tokio::test(start_paused = true)]
async fn an_update_whose_rollback_failed_is_continued() {
    let tl = timeline(vec![
        Status("UPDATE_ROLLBACK_FAILED"),
        Status("UPDATE_ROLLBACK_IN_PROGRESS"),
        Throttle,
        Status("UPDATE_ROLLBACK_COMPLETE"),
    ]);
    tagged(&tl, "r-earlier");
    let (ctx, _rx) = context(None);
    let r = roll_back_stack(&client(&tl), &stack_plan(), &rollback_config(), &ctx)
        .await
        .unwrap();
    assert_eq!(r.decision, Decision::ContinueRollback);
    assert_eq!(r.after.as_deref(), Some("UPDATE_ROLLBACK_COMPLETE"));
    let writes: Vec<String> = tl
        .lock()
        .unwrap()
        .writes
        .iter()
        .map(|w| w.0.clone())
        .collect();
    assert_eq!(writes, ["ContinueUpdateRollback"]);
}

#[tokio::test(start_paused = true)]
async fn an_update_in_progress_is_cancelled_and_followed_to_its_rollback() {
    let tl = timeline(vec![
        Status("UPDATE_IN_PROGRESS"),
        Status("UPDATE_ROLLBACK_IN_PROGRESS"),
        Status("UPDATE_ROLLBACK_COMPLETE"),
    ]);
    tagged(&tl, "r-earlier");
    let (ctx, _rx) = context(None);
    let r = roll_back_stack(&client(&tl), &stack_plan(), &rollback_config(), &ctx)
        .await
        .unwrap();
    assert_eq!(r.decision, Decision::CancelUpdate);
    assert_eq!(r.after.as_deref(), Some("UPDATE_ROLLBACK_COMPLETE"));
    assert_eq!(tl.lock().unwrap().writes[0].0, "CancelUpdateStack");
}

#[tokio::test(start_paused = true)]
async fn another_runs_update_in_progress_is_waited_for_never_cancelled() {
    let tl = timeline(vec![
        Status("UPDATE_IN_PROGRESS"),
        Status("UPDATE_IN_PROGRESS"),
        Status("UPDATE_COMPLETE"),
    ]);
    {
        let mut t = tl.lock().unwrap();
        t.tags = vec![
            Tag::builder().key(TAG_RUN).value("r-other").build(),
            Tag::builder().key(TAG_CREATED_BY).value("r-other").build(),
        ];
    }
    let (ctx, _rx) = context(None);
    let r = roll_back_stack(&client(&tl), &stack_plan(), &rollback_config(), &ctx)
        .await
        .unwrap();
    assert_eq!(
        r.decision,
        Decision::Nothing,
        "the other run's stack is its own"
    );
    assert_eq!(r.before.as_deref(), Some("UPDATE_IN_PROGRESS"));
    assert!(tl.lock().unwrap().writes.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_throttled_change_set_lookup_fails_the_attempt_and_the_retry_creates_it_once() {
    let p = stack_plan();
    let tl = timeline(vec![
        Status("UPDATE_COMPLETE"),
        Status("UPDATE_COMPLETE"),
        Event(
            STACK,
            "AWS::CloudFormation::Stack",
            "UPDATE_IN_PROGRESS",
            Some("User Initiated"),
        ),
        Status("UPDATE_IN_PROGRESS"),
        Event(STACK, "AWS::CloudFormation::Stack", "UPDATE_COMPLETE", None),
        Status("UPDATE_COMPLETE"),
    ]);
    let (ctx, _rx) = context(None);
    let j = job(client(&tl), &ctx);
    {
        let mut t = tl.lock().unwrap();
        t.tags = TagSet {
            run: "r-earlier".into(),
            ..j.tags.clone()
        }
        .tags(Some("r-earlier"));
        t.parameters = super::deploy::cfn_parameters(
            &[("Environment".to_string(), "staging".to_string())].into(),
        );
        t.change_set_throttles = 1;
    }
    j.board
        .lock()
        .unwrap()
        .add(&p.name, p.facts.resources.clone());
    let params = p.resolve(&BTreeMap::new()).unwrap();
    // Throttled is not absent: no create on a guess.
    let e = j.deploy_one(&p, params.clone(), 0).await.unwrap_err();
    assert_eq!(e.class, ErrorClass::Transient, "{}", e.message);
    assert!(tl.lock().unwrap().writes.is_empty());
    let r = j.deploy_one(&p, params, 0).await.unwrap();
    assert_eq!(r.action, Action::Updated);
    let ops: Vec<String> = tl
        .lock()
        .unwrap()
        .writes
        .iter()
        .map(|w| w.0.clone())
        .collect();
    assert_eq!(ops, ["CreateChangeSet", "ExecuteChangeSet"]);
}

#[tokio::test(start_paused = true)]
async fn a_rollback_that_fails_again_is_an_error_naming_the_stack() {
    let tl = timeline(vec![
        Status("UPDATE_ROLLBACK_FAILED"),
        Status("UPDATE_ROLLBACK_IN_PROGRESS"),
        Event(
            "Topic",
            "AWS::SNS::Topic",
            "UPDATE_FAILED",
            Some("Resource is not in the state stackUpdateComplete"),
        ),
        Status("UPDATE_ROLLBACK_FAILED"),
    ]);
    tagged(&tl, "r-earlier");
    let (ctx, _rx) = context(None);
    let err = roll_back_stack(&client(&tl), &stack_plan(), &rollback_config(), &ctx)
        .await
        .unwrap_err();
    assert!(
        err.message
            .contains("acme-baseline ended UPDATE_ROLLBACK_FAILED while rolling back"),
        "{}",
        err.message
    );
}

#[tokio::test(start_paused = true)]
async fn a_stack_that_does_not_finish_in_time_fails_with_its_last_events() {
    let tl = timeline(vec![
        Status("NONE"),
        Event(
            STACK,
            "AWS::CloudFormation::Stack",
            "CREATE_IN_PROGRESS",
            Some("User Initiated"),
        ),
        Event(
            "Bucket",
            "AWS::S3::Bucket",
            "CREATE_IN_PROGRESS",
            Some("Resource creation Initiated"),
        ),
        Status("CREATE_IN_PROGRESS"),
    ]);
    let (ctx, _rx) = context(Some(Duration::from_secs(600)));
    let j = job(client(&tl), &ctx);
    let p = stack_plan();
    j.board
        .lock()
        .unwrap()
        .add(&p.name, p.facts.resources.clone());
    let started = tokio::time::Instant::now();
    let err = j
        .deploy_one(&p, p.resolve(&BTreeMap::new()).unwrap(), 0)
        .await
        .unwrap_err();
    assert!(
        err.message
            .contains("did not finish within the step's time-out"),
        "{}",
        err.message
    );
    assert_eq!(err.context["last_events"][1]["logical_id"], "Bucket");
    // It stopped before the engine's deadline, so its error is the one recorded.
    assert!(
        started.elapsed() < Duration::from_secs(600),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn a_stack_this_run_started_before_a_crash_is_adopted_not_created_again() {
    let p = stack_plan();
    let tl = timeline(vec![
        Status("CREATE_IN_PROGRESS"),
        Event("Bucket", "AWS::S3::Bucket", "CREATE_COMPLETE", None),
        Event("Topic", "AWS::SNS::Topic", "CREATE_COMPLETE", None),
        Event(STACK, "AWS::CloudFormation::Stack", "CREATE_COMPLETE", None),
        Status("CREATE_COMPLETE"),
    ]);
    let (ctx, _rx) = context(None);
    let j = job(client(&tl), &ctx);
    {
        let mut t = tl.lock().unwrap();
        t.tags = j.tags.tags(None);
        t.parameters = super::deploy::cfn_parameters(&p.resolve(&BTreeMap::new()).unwrap());
    }
    j.board
        .lock()
        .unwrap()
        .add(&p.name, p.facts.resources.clone());
    let r = j
        .deploy_one(&p, p.resolve(&BTreeMap::new()).unwrap(), 0)
        .await
        .unwrap();
    assert_eq!(r.action, Action::Adopted);
    assert!(
        tl.lock().unwrap().writes.is_empty(),
        "nothing created or updated"
    );
}

#[tokio::test(start_paused = true)]
async fn a_changed_stack_is_updated_through_a_change_set() {
    let p = stack_plan();
    let tl = timeline(vec![
        Status("UPDATE_COMPLETE"),
        // The change set is executed; the update runs.
        Event(
            STACK,
            "AWS::CloudFormation::Stack",
            "UPDATE_IN_PROGRESS",
            Some("User Initiated"),
        ),
        Event("Topic", "AWS::SNS::Topic", "UPDATE_IN_PROGRESS", None),
        Status("UPDATE_IN_PROGRESS"),
        Event("Topic", "AWS::SNS::Topic", "UPDATE_COMPLETE", None),
        Event(STACK, "AWS::CloudFormation::Stack", "UPDATE_COMPLETE", None),
        Status("UPDATE_COMPLETE"),
    ]);
    let (ctx, _rx) = context(None);
    let j = job(client(&tl), &ctx);
    {
        // Deployed by an earlier run with another Environment.
        let mut t = tl.lock().unwrap();
        t.tags = TagSet {
            run: "r-earlier".into(),
            ..j.tags.clone()
        }
        .tags(Some("r-earlier"));
        t.parameters = super::deploy::cfn_parameters(
            &[("Environment".to_string(), "staging".to_string())].into(),
        );
    }
    j.board
        .lock()
        .unwrap()
        .add(&p.name, p.facts.resources.clone());
    let r = j
        .deploy_one(&p, p.resolve(&BTreeMap::new()).unwrap(), 0)
        .await
        .unwrap();
    assert_eq!(r.action, Action::Updated);
    assert_eq!(r.status, "UPDATE_COMPLETE");
    assert_eq!(
        r.change_set.as_ref().unwrap()["changes"][0]["logical_id"],
        "Topic"
    );
    let t = tl.lock().unwrap();
    let ops: Vec<&str> = t.writes.iter().map(|w| w.0.as_str()).collect();
    assert_eq!(ops, ["CreateChangeSet", "ExecuteChangeSet"]);
    assert_eq!(
        t.writes[1].1.as_deref(),
        Some(client_token(ctx.idempotency_key(), STACK, "execute").as_str())
    );
    // The stack keeps who created it; the run tag names this run.
    let tag = |k: &str| {
        t.tags
            .iter()
            .find(|x| x.key() == Some(k))
            .and_then(|x| x.value())
            .map(str::to_string)
    };
    assert_eq!(tag(TAG_CREATED_BY).as_deref(), Some("r-earlier"));
    assert_eq!(tag(TAG_RUN).as_deref(), Some(RUN));
}
