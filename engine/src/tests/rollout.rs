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
