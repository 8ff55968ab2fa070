//! Plan mode: values known only after apply travel as unknowns, conditions on them are
//! "maybe", plugins without a plan say so, nothing runs, and the digest covers what would
//! change.

use super::*;
use crate::plan::{NewPlan, PlanStatus, UNKNOWN};
use crate::scheduler::EngineError;
use crate::state::RunStatus;
use chrono::Utc;

fn new_plan() -> NewPlan {
    NewPlan {
        inputs: Map::new(),
        requester: "cli:ann".into(),
        ttl: Duration::from_secs(3600),
    }
}

const WORKFLOW: &str = r#"
name: t
steps:
  - id: org
    uses: planned
    with:
      changes: [{ action: create, what: account }]
      outputs: { name: acme, id: "?" }
  - { id: by_name, uses: planned, needs: [org], with: { outputs: { got: "{{ steps.org.outputs.name }}" } } }
  - { id: by_id, uses: planned, needs: [org], with: { outputs: { got: "{{ steps.org.outputs.id }}" } } }
  - { id: if_id, uses: planned, needs: [org], when: "steps.org.outputs.id == 'x'", with: { changes: [{ action: tag }] } }
  - { id: opaque, uses: test, needs: [by_name] }
  - { id: after_opaque, uses: planned, needs: [opaque], with: { outputs: "{{ steps.opaque.outputs.value }}" } }
  - { id: each, uses: planned, needs: [opaque], for_each: "{{ [steps.opaque.outputs] }}", with: { outputs: 1 } }
  - { id: fan, uses: planned, needs: [org], for_each: [a, b], with: { changes: [{ action: create, item: "{{ item }}" }] } }
  - { id: on_failure, uses: planned, needs: [fan], when: failure() }
  - { id: off, uses: planned, needs: [org], when: "false" }
  - { id: after_off, uses: planned, needs: [off] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknowns_propagate_and_nothing_runs() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = workflow(WORKFLOW, &reg);
    let plan = eng.plan(&wf, new_plan()).await.unwrap();
    let node = |id: &str| plan.node(id).unwrap_or_else(|| panic!("no {id}")).clone();
    assert_eq!(node("org").status, PlanStatus::Changes);
    assert_eq!(node("by_name").status, PlanStatus::NoChanges);
    assert_eq!(node("by_name").outputs, json!({ "got": "acme" }));
    // Reads a value only apply knows: unknown, and so are its outputs.
    let by_id = node("by_id");
    assert_eq!(by_id.status, PlanStatus::Unknown);
    assert!(
        by_id.summary.contains("known only after apply"),
        "{}",
        by_id.summary
    );
    assert_eq!(by_id.outputs, json!(UNKNOWN));
    // A condition on an unknown: maybe, planned as if it ran.
    let if_id = node("if_id");
    assert!(if_id.maybe);
    assert_eq!(if_id.status, PlanStatus::Changes);
    // A plugin without a plan method.
    let opaque = node("opaque");
    assert_eq!(opaque.status, PlanStatus::Unknown);
    assert!(
        opaque.summary.contains("`test` does not plan"),
        "{}",
        opaque.summary
    );
    assert_eq!(node("after_opaque").status, PlanStatus::Unknown);
    assert!(node("each")
        .summary
        .contains("for each of (known after apply)"));
    // A fan-out plans each instance.
    assert_eq!(
        node("fan[0]").changes,
        [json!({ "action": "create", "item": "a" })]
    );
    assert_eq!(
        node("fan[1]").changes,
        [json!({ "action": "create", "item": "b" })]
    );
    // A plan assumes success: failure branches are off; a false condition skips its step only.
    assert_eq!(node("on_failure").status, PlanStatus::Skipped);
    assert!(node("on_failure")
        .summary
        .contains("runs only when an earlier step fails"));
    assert_eq!(node("off").status, PlanStatus::Skipped);
    assert_eq!(node("after_off").status, PlanStatus::NoChanges);
    // Nothing ran: the plugin without a plan was never called.
    assert_eq!(probe.count("opaque"), 0);
    assert!(store.runs().unwrap().is_empty(), "a plan is not a run");
    // Stored, with its digest.
    let stored = store.plan(&plan.plan_id).unwrap().unwrap();
    assert_eq!(stored, plan);
    assert_eq!(plan.digest, plan.compute_digest());
    assert_eq!(plan.requester, "cli:ann");
    assert!(plan.changing() >= 5, "{}", plan.changing());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_digest_covers_what_would_change_and_nothing_else() {
    let probe = Arc::new(Probe::default());
    let (eng, _store, reg) = engine(&probe);
    let wf = workflow(WORKFLOW, &reg);
    let one = eng.plan(&wf, new_plan()).await.unwrap();
    let two = eng.plan(&wf, new_plan()).await.unwrap();
    assert_ne!(one.plan_id, two.plan_id);
    assert_eq!(one.digest, two.digest, "ids and times are not digested");
    let other = workflow(&WORKFLOW.replace("action: tag", "action: untag"), &reg);
    let three = eng.plan(&other, new_plan()).await.unwrap();
    assert_ne!(one.digest, three.digest);
    let mut changed = one.clone();
    changed.nodes[0].changes.push(json!({ "action": "delete" }));
    assert_ne!(changed.compute_digest(), one.digest);
    let mut reworded = one.clone();
    reworded.nodes[0].summary = "said otherwise".into();
    assert_eq!(reworded.compute_digest(), one.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_be_planned_fails_the_plan_and_skips_its_dependents() {
    let probe = Arc::new(Probe::default());
    let (eng, _store, reg) = engine(&probe);
    let wf = workflow(
        r#"
name: t
steps:
  - { id: read, uses: planned, with: { fail: true } }
  - { id: next, uses: planned, needs: [read] }
  - { id: apart, uses: planned }
"#,
        &reg,
    );
    let plan = eng.plan(&wf, new_plan()).await.unwrap();
    assert!(plan.failed());
    assert_eq!(plan.node("read").unwrap().status, PlanStatus::Failed);
    assert_eq!(plan.node("read").unwrap().summary, "reading failed");
    assert_eq!(plan.node("next").unwrap().status, PlanStatus::Skipped);
    assert_eq!(plan.node("apart").unwrap().status, PlanStatus::NoChanges);
}

const APPLIED: &str = r#"
name: t
inputs:
  customer: { type: string }
steps:
  - id: plan
    uses: planned
    plan: true
    for_each: [a, b]
    with:
      changes: [{ action: create, what: "{{ inputs.customer }}-{{ item }}" }]
      outputs: { name: "{{ inputs.customer }}" }
  - { id: apply, uses: planned, needs: [plan], with: { outputs: "{{ steps.plan.outputs }}" } }
"#;

fn with_customer(name: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("customer".into(), json!(name));
    m
}

fn applying(plan_id: &str) -> NewRun {
    NewRun {
        plan: Some(plan_id.into()),
        ..new_run(4)
    }
}

/// `landfall run --plan`: the run's `plan: true` nodes answer with what the stored plan says
/// (not a new plan), and the run takes the plan's inputs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_applies_the_stored_plan_not_a_new_one() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = Arc::new(workflow(APPLIED, &reg));
    let mut plan = eng
        .plan(
            &wf,
            NewPlan {
                inputs: with_customer("acme"),
                ..new_plan()
            },
        )
        .await
        .unwrap();
    assert!(plan.node("plan[1]").unwrap().outputs["changes"][0]["what"] == "acme-b");
    // What is stored is what runs: mark the stored plan so a new plan would differ from it.
    plan.nodes[1].outputs["summary"] = json!("as approved");
    store.save_plan(&plan).unwrap();
    let rec = eng.create_run(&wf, applying(&plan.plan_id)).unwrap();
    assert_eq!(rec.plan_id.as_deref(), Some(plan.plan_id.as_str()));
    assert_eq!(
        rec.inputs,
        json!({ "customer": "acme" }),
        "the plan's inputs"
    );
    let out = eng
        .execute(Arc::clone(&wf), rec, RunControl::default(), &[])
        .await
        .unwrap();
    assert_eq!(out.status, RunStatus::Succeeded);
    let nodes = store.nodes(&out.run_id).unwrap();
    let outputs = |id: &str| {
        nodes
            .iter()
            .find(|n| &*n.node_id == id)
            .and_then(|n| n.outputs.clone())
            .unwrap()
    };
    assert_eq!(outputs("plan[0]"), plan.nodes[0].outputs);
    assert_eq!(outputs("plan[1]"), plan.nodes[1].outputs);
    assert_eq!(outputs("plan[1]")["summary"], "as approved");
    assert_eq!(outputs("apply")[1], plan.nodes[1].outputs);
    let created = store
        .audit(&out.run_id)
        .unwrap()
        .into_iter()
        .find(|e| e.draft.kind == "run_created")
        .unwrap();
    assert_eq!(created.draft.details["plan_id"], json!(plan.plan_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_is_applied_only_as_planned() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = workflow(APPLIED, &reg);
    let acme = NewPlan {
        inputs: with_customer("acme"),
        ..new_plan()
    };
    let plan = eng.plan(&wf, acme).await.unwrap();
    let why = |e: EngineError| match e {
        EngineError::PlanRefused { why, .. } => why,
        other => panic!("{other}"),
    };
    // Another version of the workflow.
    let edited = workflow(&APPLIED.replace("[a, b]", "[a, b, c]"), &reg);
    let e = eng
        .create_run(&edited, applying(&plan.plan_id))
        .unwrap_err();
    assert!(why(e).contains("another version of the workflow"));
    // Other inputs.
    let mut other = applying(&plan.plan_id);
    other.inputs = with_customer("globex");
    let e = eng.create_run(&wf, other).unwrap_err();
    assert!(why(e).contains("inputs given differ"));
    // The same inputs, given again: allowed.
    let mut same = applying(&plan.plan_id);
    same.inputs = with_customer("acme");
    eng.create_run(&wf, same).unwrap();
    // Expired.
    let mut old = plan.clone();
    old.plan_id = "p-old".into();
    old.expires_at = Utc::now() - chrono::Duration::seconds(1);
    store.save_plan(&old).unwrap();
    let e = eng.create_run(&wf, applying("p-old")).unwrap_err();
    assert!(why(e).contains("expired"));
    // Incomplete.
    let mut broken = plan.clone();
    broken.plan_id = "p-broken".into();
    broken.nodes[0].status = PlanStatus::Failed;
    store.save_plan(&broken).unwrap();
    let e = eng.create_run(&wf, applying("p-broken")).unwrap_err();
    assert!(why(e).contains("could not be planned"));
    // Unknown.
    let e = eng.create_run(&wf, applying("p-none")).unwrap_err();
    assert!(matches!(e, EngineError::NoSuchPlan(_)), "{e}");
    assert_eq!(
        store.runs().unwrap().len(),
        1,
        "only the allowed run exists"
    );
}

/// A node the plan does not hold fails for good instead of planning on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_missing_from_the_plan_fails_instead_of_planning_anew() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = Arc::new(workflow(APPLIED, &reg));
    let acme = NewPlan {
        inputs: with_customer("acme"),
        ..new_plan()
    };
    let mut plan = eng.plan(&wf, acme).await.unwrap();
    plan.nodes.retain(|n| n.node != "plan[1]");
    store.save_plan(&plan).unwrap();
    let rec = eng.create_run(&wf, applying(&plan.plan_id)).unwrap();
    let out = eng
        .execute(Arc::clone(&wf), rec, RunControl::default(), &[])
        .await
        .unwrap();
    assert_eq!(out.status, RunStatus::Failed);
    let node = store
        .nodes(&out.run_id)
        .unwrap()
        .into_iter()
        .find(|n| &*n.node_id == "plan[1]")
        .unwrap();
    let err = node.error.unwrap();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert!(err.message.contains("is not in plan"), "{}", err.message);
    assert_eq!(node.attempts, 1, "no retry of a missing plan");
}

/// Applying a plan re-plans each node whose plugin plans by reading only: an answer that is
/// not the approved one (AWS moved since) fails the node before it writes anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_changes_moved_since_the_plan_writes_nothing() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = Arc::new(workflow(
        r#"
name: t
steps:
  - { id: scp, uses: planned, with: { changes: [{ action: update, policy: guard }], outputs: done } }
  - { id: after, uses: test, needs: [scp] }
"#,
        &reg,
    ));
    let plan = eng.plan(&wf, new_plan()).await.unwrap();
    // As planned: it runs.
    let rec = eng.create_run(&wf, applying(&plan.plan_id)).unwrap();
    let out = eng
        .execute(Arc::clone(&wf), rec, RunControl::default(), &[])
        .await
        .unwrap();
    assert_eq!(out.status, RunStatus::Succeeded);
    // The approved plan said something else than what planning says now.
    let mut approved = plan.clone();
    approved.plan_id = "p-approved".into();
    approved.nodes[0].changes = vec![json!({ "action": "update", "policy": "other" })];
    store.save_plan(&approved).unwrap();
    let rec = eng.create_run(&wf, applying("p-approved")).unwrap();
    let out = eng
        .execute(Arc::clone(&wf), rec, RunControl::default(), &[])
        .await
        .unwrap();
    assert_eq!(out.status, RunStatus::Failed);
    let nodes = store.nodes(&out.run_id).unwrap();
    let scp = nodes.iter().find(|n| &*n.node_id == "scp").unwrap();
    let err = scp.error.as_ref().unwrap();
    assert_eq!(err.class, ErrorClass::Permanent);
    assert_eq!(
        err.message,
        "changed since the plan: plan again (plan `p-approved` approved 1 update; now: 1 update, with other content)"
    );
    assert_eq!(
        probe.count("after"),
        1,
        "only the first, as-planned run reached `after`"
    );
}

/// A plan of a workflow with a secret input keeps it sealed (in the plan and in the run that
/// applies it), and the run's steps see the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_keeps_secret_inputs_sealed_and_its_run_opens_them() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let eng = eng.with_data_key(Some(crate::DataKey::from_bytes(&[9; 32]).unwrap()));
    let wf = Arc::new(workflow(
        r#"
name: t
inputs:
  token: { type: string, secret: true }
steps:
  - { id: use, uses: planned, with: { outputs: "{{ inputs.token }}" } }
"#,
        &reg,
    ));
    let mut inputs = Map::new();
    inputs.insert("token".into(), json!("xoxb-hunter2"));
    let plan = eng
        .plan(
            &wf,
            NewPlan {
                inputs,
                ..new_plan()
            },
        )
        .await
        .unwrap();
    assert!(!serde_json::to_string(&plan.inputs)
        .unwrap()
        .contains("hunter2"));
    let rec = eng.create_run(&wf, applying(&plan.plan_id)).unwrap();
    assert!(
        !rec.inputs.to_string().contains("hunter2"),
        "{}",
        rec.inputs
    );
    let out = eng
        .execute(Arc::clone(&wf), rec, RunControl::default(), &[])
        .await
        .unwrap();
    assert_eq!(out.status, RunStatus::Succeeded);
    let stored = store.run(&out.run_id).unwrap().unwrap();
    assert!(
        !stored.inputs.to_string().contains("hunter2"),
        "{}",
        stored.inputs
    );
    let used = store
        .nodes(&out.run_id)
        .unwrap()
        .into_iter()
        .find(|n| &*n.node_id == "use")
        .and_then(|n| n.outputs)
        .unwrap();
    assert_eq!(used, json!("xoxb-hunter2"), "the step saw the value");
    // Without the key, neither a plan nor a run is made.
    let keyless = Engine::new(Arc::new(reg.clone()), store.clone());
    let mut inputs = Map::new();
    inputs.insert("token".into(), json!("x"));
    assert!(matches!(
        keyless
            .plan(
                &wf,
                NewPlan {
                    inputs,
                    ..new_plan()
                }
            )
            .await,
        Err(EngineError::SecretInputs(_))
    ));
}
