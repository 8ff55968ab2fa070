//! Rollout controls of a `for_each` step, run by the scheduler: failures within and beyond
//! `tolerate`, waves (a failing canary stops the rest), and the context dependents see.

use super::*;
use crate::state::{NodeRecord, RunStatus, SkipReason};

fn node(store: &dyn Store, run: &str, id: &str) -> NodeRecord {
    store
        .nodes(run)
        .unwrap()
        .into_iter()
        .find(|n| &*n.node_id == id)
        .unwrap_or_else(|| panic!("no node {id}"))
}

/// The order in which the step's nodes started and ended, from the audit.
fn transitions(store: &dyn Store, run: &str) -> Vec<(String, String)> {
    store
        .audit(run)
        .unwrap()
        .into_iter()
        .filter(|e| e.draft.kind == "node_transition")
        .map(|e| {
            (
                e.draft.node.clone().unwrap_or_default(),
                e.draft.details["to"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_within_tolerance_let_the_step_and_the_run_succeed() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = workflow(
        r#"
name: t
defaults: { retry: { max_attempts: 1 } }
steps:
  - id: d
    uses: test
    for_each: [1, 2, 3, 4, 5]
    tolerate: { count: 1 }
    with: { fail_times: "{{ 1 if item == 3 else 0 }}", class: permanent }
  # Sees the step as succeeded, with its one failure and the item it worked on.
  - id: after
    uses: test
    needs: [d]
    when: "{{ steps.d.status == 'succeeded' and steps.d.failures | length == 1 and steps.d.failures[0].item == 3 }}"
  - { id: on_failure, uses: test, needs: [d], when: failure() }
"#,
        &reg,
    );
    let (out, _) = run_to_end(&eng, wf, 10).await;
    assert_eq!(out.status, RunStatus::Succeeded);
    let st = statuses(store.as_ref(), &out.run_id);
    assert_eq!(st["d[2]"], NodeStatus::Failed);
    assert_eq!(st["d[4]"], NodeStatus::Succeeded);
    assert_eq!(st["after"], NodeStatus::Succeeded, "{st:?}");
    assert_eq!(st["on_failure"], NodeStatus::Skipped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_beyond_tolerance_fail_the_step_and_skip_what_had_not_started() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    // One at a time, so instances 3 and 4 have not started when the second failure comes.
    let wf = workflow(
        r#"
name: t
defaults: { retry: { max_attempts: 1 } }
steps:
  - id: d
    uses: test
    for_each: [0, 1, 2, 3, 4]
    max_parallel: 1
    tolerate: { percent: 20 }
    with: { fail_times: "{{ 1 if item in [1, 2] else 0 }}", class: permanent }
  - { id: after, uses: test, needs: [d] }
  - id: on_failure
    uses: test
    needs: [d]
    when: "{{ failure() and steps.d.failures | map(attribute='item') | list == [1, 2] }}"
"#,
        &reg,
    );
    let (out, _) = run_to_end(&eng, wf, 10).await;
    assert_eq!(out.status, RunStatus::Failed);
    let st = statuses(store.as_ref(), &out.run_id);
    assert_eq!(st["d[0]"], NodeStatus::Succeeded);
    assert_eq!(st["d[1]"], NodeStatus::Failed);
    assert_eq!(st["d[2]"], NodeStatus::Failed);
    assert_eq!(st["d[3]"], NodeStatus::Skipped);
    assert_eq!(st["d[4]"], NodeStatus::Skipped);
    assert_eq!(probe.count("d[3]"), 0, "a skipped instance never runs");
    let skipped = node(store.as_ref(), &out.run_id, "d[3]");
    assert_eq!(skipped.skip_reason, Some(SkipReason::RolloutStopped));
    assert_eq!(st["after"], NodeStatus::Skipped);
    assert_eq!(st["on_failure"], NodeStatus::Succeeded, "{st:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_stops_the_later_waves() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = workflow(
        r#"
name: t
defaults: { retry: { max_attempts: 1 } }
steps:
  - id: d
    uses: test
    for_each: [a, b, c, d]
    waves: [1, "50%"]
    with: { fail_times: "{{ 1 if index == 0 else 0 }}", class: permanent }
  - { id: undo, uses: test, needs: [d], when: failure(), for_each: "{{ steps.d.failures | map(attribute='item') | list }}" }
"#,
        &reg,
    );
    let (out, _) = run_to_end(&eng, wf, 10).await;
    assert_eq!(out.status, RunStatus::Failed);
    let st = statuses(store.as_ref(), &out.run_id);
    assert_eq!(st["d[0]"], NodeStatus::Failed);
    for k in 1..4 {
        assert_eq!(st[&format!("d[{k}]")], NodeStatus::Skipped);
        assert_eq!(probe.count(&format!("d[{k}]")), 0);
    }
    // The failure handler works on the failed instance's item only.
    assert_eq!(st["undo[0]"], NodeStatus::Succeeded);
    assert!(!st.contains_key("undo[1]"), "{st:?}");
    let undo = node(store.as_ref(), &out.run_id, "undo[0]");
    assert_eq!(undo.item, Some(json!("a")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_wave_starts_after_the_one_before_it_ended() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = workflow(
        r#"
name: t
steps:
  - id: d
    uses: test
    for_each: [0, 1, 2, 3, 4, 5, 6, 7]
    waves: [1, "50%", "100%"]
    with: { sleep_ms: 20 }
"#,
        &reg,
    );
    let (out, _) = run_to_end(&eng, wf, 10).await;
    assert_eq!(out.status, RunStatus::Succeeded);
    let order = transitions(store.as_ref(), &out.run_id);
    let at = |node: &str, to: &str| {
        order
            .iter()
            .position(|(n, t)| n == node && t == to)
            .unwrap_or_else(|| panic!("{node} never became {to}: {order:?}"))
    };
    // Wave 1: d[0]; wave 2: d[1..4]; wave 3: d[4..8].
    for k in 1..8 {
        assert!(at("d[0]", "succeeded") < at(&format!("d[{k}]"), "running"));
    }
    for early in 1..4 {
        for late in 4..8 {
            assert!(
                at(&format!("d[{early}]"), "succeeded") < at(&format!("d[{late}]"), "running"),
                "{order:?}"
            );
        }
    }
    // The waves are in the audit.
    let expanded = store
        .audit(&out.run_id)
        .unwrap()
        .into_iter()
        .find(|e| e.draft.kind == "step_expanded")
        .unwrap();
    assert_eq!(expanded.draft.details["waves"], json!([1, 4, 8]));
}

#[test]
fn rollout_fields_are_checked_where_they_are_written() {
    let probe = Arc::new(Probe::default());
    let reg = registry(&probe);
    let check = |yaml: &str| {
        let c = compile(&Source::new("t.yaml", yaml), &reg);
        c.report
            .diagnostics
            .iter()
            .map(|d| (d.path.as_ref().map(|p| p.to_string()), d.message.clone()))
            .collect::<Vec<_>>()
    };
    let found = check("name: t\nsteps:\n  - { id: a, uses: test, tolerate: { count: 1 } }\n");
    assert!(
        found
            .iter()
            .any(|(p, m)| p.as_deref() == Some("steps[0].tolerate") && m.contains("for_each")),
        "{found:?}"
    );
    let found = check(
        "name: t\nsteps:\n  - { id: a, uses: test, for_each: [1], tolerate: { count: 1, percent: 5 }, waves: [1, \"x%\", 0] }\n",
    );
    assert!(
        found
            .iter()
            .any(|(p, _)| p.as_deref() == Some("steps[0].tolerate")),
        "{found:?}"
    );
    for wave in ["wave 2:", "wave 3:"] {
        assert!(
            found
                .iter()
                .any(|(p, m)| p.as_deref() == Some("steps[0].waves") && m.starts_with(wave)),
            "{found:?}"
        );
    }
    let found = check(
        "name: t\nsteps:\n  - { id: a, uses: test, for_each: [1], tolerate: { percent: 150 } }\n",
    );
    assert!(
        found
            .iter()
            .any(|(p, _)| p.as_deref() == Some("steps[0].tolerate.percent")),
        "{found:?}"
    );
    // Expressions are read when the step fans out.
    assert!(check("name: t\ninputs: { n: { type: integer, default: 1 } }\nsteps:\n  - { id: a, uses: test, for_each: [1], tolerate: { count: \"{{ inputs.n }}\" }, waves: \"{{ [1] }}\" }\n").is_empty());
    assert!(check("name: t\nsteps:\n  - { id: a, uses: test, for_each: [1], tolerate: { percent: 10 }, waves: [1, \"25%\"] }\n").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tolerance_and_waves_may_come_from_inputs() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = workflow(
        r#"
name: t
defaults: { retry: { max_attempts: 1 } }
inputs:
  tolerate: { type: integer, default: 2 }
  canary: { type: boolean, default: true }
steps:
  - id: d
    uses: test
    for_each: [0, 1, 2, 3]
    tolerate: { count: "{{ inputs.tolerate }}" }
    waves: "{{ [1] if inputs.canary else [] }}"
    with: { fail_times: "{{ 1 if item in [2, 3] else 0 }}", class: permanent }
"#,
        &reg,
    );
    let (out, _) = run_to_end(&eng, wf, 10).await;
    assert_eq!(
        out.status,
        RunStatus::Succeeded,
        "two failures of two tolerated"
    );
    let expanded = store
        .audit(&out.run_id)
        .unwrap()
        .into_iter()
        .find(|e| e.draft.kind == "step_expanded")
        .unwrap();
    assert_eq!(expanded.draft.details["waves"], json!([1, 4]));

    // An expression that gives no count fails the step, saying why.
    let wf = workflow(
        r#"
name: t
steps:
  - { id: d, uses: test, for_each: [0, 1], tolerate: { count: "{{ 'many' }}" } }
"#,
        &reg,
    );
    let (out, _) = run_to_end(&eng, wf, 10).await;
    assert_eq!(out.status, RunStatus::Failed);
    let d = node(store.as_ref(), &out.run_id, "d");
    let message = d.error.unwrap().message;
    assert!(
        message.contains("tolerate.count") && message.contains("many"),
        "{message}"
    );
}

/// A process that takes over a run (resume) rebuilds the rollout from the records: the
/// failure the first process saw still counts against the tolerance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_run_keeps_its_rollout() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = Arc::new(workflow(
        r#"
name: t
defaults: { retry: { max_attempts: 1 } }
steps:
  - id: d
    uses: test
    for_each: [0, 1, 2, 3, 4]
    max_parallel: 1
    tolerate: { count: 1 }
    waves: [2]
    with: { fail_times: "{{ 1 if item in [0, 3] else 0 }}", class: permanent, sleep_ms: 100 }
"#,
        &reg,
    ));
    let rec = eng.create_run(&wf, new_run(10)).unwrap();
    // A grace long enough for d[1] to end: the first process sees it succeed.
    let control = RunControl {
        grace: Duration::from_secs(5),
        ..Default::default()
    };
    let interrupt = control.clone();
    // Interrupt once d[0] failed and d[1] is under way.
    let watcher = {
        let store = Arc::clone(&store);
        let run = rec.run_id.clone();
        tokio::spawn(async move {
            loop {
                let st = statuses(store.as_ref(), &run);
                if st.get("d[1]") == Some(&NodeStatus::Running) {
                    interrupt.interrupt.cancel();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let out = eng
        .execute(Arc::clone(&wf), rec.clone(), control, &[])
        .await
        .unwrap();
    watcher.await.unwrap();
    assert_eq!(out.status, RunStatus::Interrupted);
    let st = statuses(store.as_ref(), &out.run_id);
    assert_eq!(st["d[0]"], NodeStatus::Failed);

    let rec = store.run(&out.run_id).unwrap().unwrap();
    let out = eng
        .execute(Arc::clone(&wf), rec, RunControl::default(), &[])
        .await
        .unwrap();
    // d[0]'s failure (first process) and d[3]'s (second) are two: beyond the tolerance, so
    // d[4] never starts.
    assert_eq!(out.status, RunStatus::Failed);
    let st = statuses(store.as_ref(), &out.run_id);
    assert_eq!(st["d[3]"], NodeStatus::Failed);
    assert_eq!(st["d[4]"], NodeStatus::Skipped, "{st:?}");
    assert_eq!(probe.count("d[4]"), 0);
}

fn decision(value: &str) -> crate::state::Signal {
    crate::state::Signal {
        actor: "cli:alice".into(),
        at: chrono::Utc::now(),
        value: json!(value),
    }
}

async fn until(store: &MemStore, run: &str, node: &str, want: NodeStatus) {
    for _ in 0..500 {
        if statuses(store, run).get(node) == Some(&want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{node} never became {want}: {:?}", statuses(store, run));
}

const GATED: &str = r#"
name: t
defaults: { retry: { max_attempts: 1 } }
steps:
  - id: d
    uses: test
    for_each: [a, b, c, d]
    waves: [1]
    approve_waves: { approvers: [cli:alice] }
    with: { sleep_ms: 50 }
"#;

/// `approve_waves`: the canary runs, then the next wave's first instance asks and waits
/// (`waiting`, its plugin not started, the rest of its wave held); an approval lets the wave
/// run, a refusal stops the rollout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wave_waits_for_its_approval_and_a_refusal_stops_the_rollout() {
    for (answer, want) in [("approve", RunStatus::Succeeded), ("no", RunStatus::Failed)] {
        let probe = Arc::new(Probe::default());
        let (eng, store, reg) = engine(&probe);
        let eng = Arc::new(eng);
        let wf = Arc::new(workflow(GATED, &reg));
        let rec = eng.create_run(&wf, new_run(10)).unwrap();
        let run = rec.run_id.clone();
        let h = {
            let (eng, wf) = (Arc::clone(&eng), Arc::clone(&wf));
            tokio::spawn(async move { eng.execute(wf, rec, RunControl::default(), &[]).await })
        };
        until(&store, &run, "d[1]", NodeStatus::Waiting).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let st = statuses(store.as_ref(), &run);
        assert_eq!(st["d[0]"], NodeStatus::Succeeded, "the canary ran first");
        assert_eq!(st["d[2]"], NodeStatus::Pending, "{st:?}");
        assert_eq!(probe.count("d[1]"), 0, "asking comes before the work");
        eng.signal(&run, "d[1]", decision(answer)).unwrap();
        let out = h.await.unwrap().unwrap();
        assert_eq!(out.status, want, "{answer}");
        let st = statuses(store.as_ref(), &run);
        let kinds: Vec<String> = store
            .audit(&run)
            .unwrap()
            .into_iter()
            .map(|e| e.draft.kind)
            .collect();
        if answer == "approve" {
            assert!((0..4).all(|k| probe.count(&format!("d[{k}]")) == 1));
            assert!(kinds.contains(&"progress_saved".to_string()), "{kinds:?}");
        } else {
            assert_eq!(st["d[1]"], NodeStatus::Failed);
            for k in [2, 3] {
                let n = node(store.as_ref(), &run, &format!("d[{k}]"));
                assert_eq!(n.skip_reason, Some(SkipReason::RolloutStopped), "d[{k}]");
            }
            assert_eq!(probe.count("d[1]"), 0);
        }
    }
}

/// A run resumed after its wave was approved does not ask again (nor stop the rollout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approved_wave_stays_approved_across_a_resume() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let eng = Arc::new(eng);
    let wf = Arc::new(workflow(
        &GATED.replace(
            "with: { sleep_ms: 50 }",
            "max_parallel: 1\n    with: { sleep_ms: 300 }",
        ),
        &reg,
    ));
    let rec = eng.create_run(&wf, new_run(10)).unwrap();
    let run = rec.run_id.clone();
    let control = RunControl {
        grace: Duration::from_millis(10),
        ..Default::default()
    };
    let stop = control.clone();
    let h = {
        let (eng, wf, rec) = (Arc::clone(&eng), Arc::clone(&wf), rec.clone());
        tokio::spawn(async move { eng.execute(wf, rec, control, &[]).await })
    };
    until(&store, &run, "d[1]", NodeStatus::Waiting).await;
    eng.signal(&run, "d[1]", decision("approve")).unwrap();
    // Cut off while the approved wave's first instance does its own work.
    until(&store, &run, "d[1]", NodeStatus::Running).await;
    while probe.count("d[1]") == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.interrupt.cancel();
    assert_eq!(h.await.unwrap().unwrap().status, RunStatus::Interrupted);
    assert_eq!(
        node(store.as_ref(), &run, "d[1]").status,
        NodeStatus::Pending
    );

    let rec = store.run(&run).unwrap().unwrap();
    let out = eng
        .execute(Arc::clone(&wf), rec, RunControl::default(), &[])
        .await
        .unwrap();
    assert_eq!(
        out.status,
        RunStatus::Succeeded,
        "{:?}",
        statuses(store.as_ref(), &run)
    );
    assert_eq!(probe.count("d[1]"), 2, "cut off once, then done");
    let asked: Vec<Value> = store
        .audit(&run)
        .unwrap()
        .into_iter()
        .filter(|e| e.draft.kind == "milestone" && e.draft.details["kind"] == "wave_approved")
        .map(|e| e.draft.details["data"].clone())
        .collect();
    assert_eq!(asked, vec![json!({ "wave": 2, "by": ["cli:alice"] })]);
}

#[test]
fn approve_waves_is_checked_where_it_is_written() {
    let reg = registry(&Arc::new(Probe::default()));
    let c = compile(
        &Source::new(
            "t.yaml",
            r#"
name: t
steps:
  - { id: a, uses: test, for_each: [1, 2], approve_waves: {} }
  - { id: b, uses: test, for_each: [1, 2], waves: [1], approve_waves: { approverz: [x] } }
  - { id: c, uses: test, concurrency: { key: "", limit: 0 } }
  - { id: e, uses: test, concurrency: { key: "{{ inputs.token }}" } }
inputs: { token: { type: string, secret: true } }
"#
            .to_string(),
        ),
        &reg,
    );
    let text: Vec<String> = c
        .report
        .diagnostics
        .iter()
        .map(|d| format!("{:?} {}", d.path, d.message))
        .collect();
    assert!(c.workflow.is_none());
    assert_eq!(text.len(), 5, "{text:#?}");
    assert!(text[0].contains("no `waves`"), "{text:#?}");
    assert!(text[1].contains("approverz"), "{text:#?}");
    assert!(
        text.iter()
            .any(|t| t.contains("`limit` must be at least 1")),
        "{text:#?}"
    );
    assert!(
        text.iter().any(|t| t.contains("key` is empty")),
        "{text:#?}"
    );
}

/// `approve_waves` may come from the inputs: `none` asks nothing, a mapping asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_between_waves_may_be_turned_off_by_an_input() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = Arc::new(workflow(
        &GATED
            .replace("name: t", "name: t\ninputs: { ask: { type: boolean } }")
            .replace(
                "approve_waves: { approvers: [cli:alice] }",
                "approve_waves: \"{{ {'approvers': ['cli:alice']} if inputs.ask else none }}\"",
            ),
        &reg,
    ));
    let mut off = new_run(10);
    off.inputs.insert("ask".into(), json!(false));
    let rec = eng.create_run(&wf, off).unwrap();
    let out = eng
        .execute(Arc::clone(&wf), rec, RunControl::default(), &[])
        .await
        .unwrap();
    assert_eq!(out.status, RunStatus::Succeeded);

    let mut on = new_run(10);
    on.inputs.insert("ask".into(), json!(true));
    let rec = eng.create_run(&wf, on).unwrap();
    let run = rec.run_id.clone();
    let eng = Arc::new(eng);
    let h = {
        let (eng, wf) = (Arc::clone(&eng), Arc::clone(&wf));
        tokio::spawn(async move { eng.execute(wf, rec, RunControl::default(), &[]).await })
    };
    until(&store, &run, "d[1]", NodeStatus::Waiting).await;
    eng.signal(&run, "d[1]", decision("approve")).unwrap();
    assert_eq!(h.await.unwrap().unwrap().status, RunStatus::Succeeded);
}
