//! The transitions file (`scheduler/transitions.rs`) claim by claim, each test written against
//! a mutant `cargo mutants` found alive (RELIABILITY.md, "Mutation testing of the core"): what
//! a transition's audit entry says, when a retry still fits the step's time-out, what a
//! time-out says, what observers hear, and what a stop does to nodes that never started.

use super::*;
use crate::events::{Observer, RunEvent};
use crate::state::RunStatus;

fn engine(probe: &Arc<Probe>) -> (Engine, Arc<MemStore>, Registry) {
    let store = Arc::new(MemStore::new());
    let reg = registry(probe);
    (
        Engine::new(Arc::new(reg.clone()), store.clone()),
        store,
        reg,
    )
}

fn transitions_of<'a>(
    audit: &'a [crate::store::AuditEntry],
    node: &str,
) -> Vec<&'a crate::store::AuditEntry> {
    audit
        .iter()
        .filter(|e| e.draft.kind == "node_transition" && e.draft.node.as_deref() == Some(node))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_nodes_audit_entry_carries_its_error_and_a_skipped_ones_its_reason() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = workflow(
        r#"
name: t
defaults: { retry: { max_attempts: 1 } }
steps:
  - { id: bad, uses: test, with: { fail_times: 1, class: permanent, context: { stack: net, reason: "quota" } } }
  - { id: after, uses: test, needs: [bad] }
  - { id: fine, uses: test }
"#,
        &reg,
    );
    let (out, _) = run_to_end(&eng, wf, 2).await;
    assert_eq!(out.status, RunStatus::Failed);
    let audit = store.audit(&out.run_id).unwrap();
    let failed = transitions_of(&audit, "bad")
        .into_iter()
        .find(|e| e.draft.details["to"] == "failed")
        .expect("the failure is audited");
    assert_eq!(
        failed.draft.details["error"],
        json!({ "class": "permanent", "message": "planned failure 1", "context": { "stack": "net", "reason": "quota" } })
    );
    let skipped = transitions_of(&audit, "after");
    assert_eq!(skipped.len(), 1, "created skipped, in one entry");
    assert_eq!(skipped[0].draft.details["reason"], "upstream_failed");
    // A plain transition says from, to and attempt, and nothing else.
    let plain = transitions_of(&audit, "fine");
    assert!(!plain.is_empty());
    for e in plain {
        assert!(e.draft.details.get("error").is_none(), "{:?}", e.draft);
        assert!(e.draft.details.get("reason").is_none(), "{:?}", e.draft);
    }
    // A failure without context has none in its entry either.
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = workflow(
        "name: t\ndefaults: { retry: { max_attempts: 1 } }\nsteps:\n  - { id: bad, uses: test, with: { fail_times: 1, class: permanent } }\n",
        &reg,
    );
    let (out, _) = run_to_end(&eng, wf, 1).await;
    let audit = store.audit(&out.run_id).unwrap();
    let failed = transitions_of(&audit, "bad")
        .into_iter()
        .find(|e| e.draft.details["to"] == "failed")
        .unwrap();
    assert_eq!(
        failed.draft.details["error"],
        json!({ "class": "permanent", "message": "planned failure 1" })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_scheduled_only_when_it_fits_before_the_steps_time_out() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = workflow(
        r#"
name: t
defaults: { circuit_breaker: { failure_threshold: 100 } }
steps:
  # Plenty of time: the retry happens and the node succeeds.
  - { id: roomy, uses: test, timeout: 60s, retry: { max_attempts: 3, initial_delay: 5ms, max_delay: 5ms }, with: { fail_times: 1 } }
  # The retry's wait would end past the step's time-out: no retry, the node fails now. No
  # jitter: with the default full jitter the wait is anywhere from 0 to 5 s, and one below
  # 300 ms (6 % of runs) fits, which made this test fail now and then.
  - { id: tight, uses: test, timeout: 300ms, retry: { max_attempts: 3, initial_delay: 5s, max_delay: 5s, jitter: none }, with: { fail_times: 5 } }
"#,
        &reg,
    );
    let started = std::time::Instant::now();
    let (out, _) = run_to_end(&eng, wf, 2).await;
    assert!(started.elapsed() < Duration::from_secs(4), "no 5 s wait");
    let nodes = store.nodes(&out.run_id).unwrap();
    let get = |id: &str| nodes.iter().find(|n| &*n.node_id == id).unwrap().clone();
    assert_eq!(
        (get("roomy").status, get("roomy").attempts),
        (NodeStatus::Succeeded, 2)
    );
    let tight = get("tight");
    assert_eq!((tight.status, tight.attempts), (NodeStatus::Failed, 1));
    // The deadline had not passed when it failed: its own error, not a time-out.
    assert_eq!(tight.error.unwrap().message, "planned failure 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_past_the_steps_time_out_says_so_and_others_do_not() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = workflow(
        r#"
name: t
defaults: { circuit_breaker: { failure_threshold: 100 } }
steps:
  - { id: late, uses: test, timeout: 100ms, retry: { max_attempts: 2, initial_delay: 1ms, max_delay: 1ms }, with: { sleep_ms: 150, fail_times: 5 } }
  - { id: refused, uses: test, timeout: 100ms, retry: { max_attempts: 1 }, with: { fail_times: 5, class: permanent } }
  - { id: spent, uses: test, timeout: 60s, retry: { max_attempts: 1 }, with: { fail_times: 5 } }
"#,
        &reg,
    );
    let (out, _) = run_to_end(&eng, wf, 3).await;
    let nodes = store.nodes(&out.run_id).unwrap();
    let message = |id: &str| {
        nodes
            .iter()
            .find(|n| &*n.node_id == id)
            .and_then(|n| n.error.clone())
            .map(|e| e.message)
            .unwrap_or_default()
    };
    assert!(
        message("late").starts_with("step timed out; last error: "),
        "{}",
        message("late")
    );
    assert!(
        !message("refused").starts_with("step timed out"),
        "{}",
        message("refused")
    );
    assert_eq!(message("spent"), "planned failure 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observers_hear_every_start_and_every_end() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = Arc::new(workflow(
        r#"
name: t
defaults: { retry: { max_attempts: 3, initial_delay: 1ms, max_delay: 1ms }, circuit_breaker: { failure_threshold: 100 } }
steps:
  - { id: a, uses: test, with: { fail_times: 1 } }
  - { id: b, uses: test, needs: [a], for_each: [1, 2] }
  - { id: c, uses: test, needs: [b], when: "false" }
"#,
        &reg,
    ));
    let heard = Arc::new(Mutex::new(Vec::<String>::new()));
    let h = Arc::clone(&heard);
    let observer: Arc<dyn Observer> = Arc::new(move |e: &RunEvent| {
        let line = match e {
            RunEvent::NodeStarted { node, attempt, .. } => format!("start {node} {attempt}"),
            RunEvent::NodeFinished { node, status, .. } => format!("end {node} {status}"),
            _ => return,
        };
        h.lock().unwrap().push(line);
    });
    let rec = eng.create_run(&wf, new_run(1)).unwrap();
    let out = eng
        .execute(wf, rec, RunControl::default(), &[observer])
        .await
        .unwrap();
    assert_eq!(out.status, RunStatus::Succeeded);
    let mut heard = heard.lock().unwrap().clone();
    heard.sort();
    assert_eq!(
        heard,
        [
            "end a succeeded",
            "end b[0] succeeded",
            "end b[1] succeeded",
            "end c skipped",
            "start a 1",
            "start a 2",
            "start b[0] 1",
            "start b[1] 1",
        ]
    );
    assert_eq!(statuses(store.as_ref(), &out.run_id).len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_cancels_the_nodes_that_never_started() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = Arc::new(workflow(
        r#"
name: t
steps:
  - { id: fan, uses: test, for_each: [1, 2, 3], with: { sleep_ms: 30000 } }
  - { id: after, uses: test, needs: [fan] }
"#,
        &reg,
    ));
    let rec = eng.create_run(&wf, new_run(1)).unwrap();
    let control = RunControl::default();
    let c = control.cancel.clone();
    let st = Arc::clone(&store);
    let run_id = rec.run_id.clone();
    tokio::spawn(async move {
        // Once fan[0] runs (fan[1] and fan[2] wait for the one slot), cancel.
        loop {
            let running = st
                .nodes(&run_id)
                .unwrap()
                .iter()
                .any(|n| n.status == NodeStatus::Running);
            if running {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        c.cancel();
    });
    let out = eng.execute(wf, rec, control, &[]).await.unwrap();
    assert_eq!(out.status, RunStatus::Cancelled);
    let st = statuses(store.as_ref(), &out.run_id);
    for n in ["fan[0]", "fan[1]", "fan[2]"] {
        assert_eq!(st[n], NodeStatus::Cancelled, "{n}: {st:?}");
    }
    assert!(
        !st.contains_key("after"),
        "a step never activated has no record"
    );
    assert_eq!(probe.count("fan[1]") + probe.count("fan[2]"), 0);
}

/// `run.failures` lists a failed node at once, before its step is done: a node rendered
/// while the failed node's siblings still run sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_is_in_run_failures_before_its_step_is_done() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = workflow(
        r#"
name: t
defaults: { retry: { max_attempts: 1 } }
steps:
  - id: fan
    uses: test
    for_each: [1, 2]
    with: { fail_times: "{{ 1 if item == 1 else 0 }}", class: permanent, sleep_ms: "{{ 0 if item == 1 else 400 }}" }
  - { id: other, uses: test, with: { deps: ["{{ run.failures | length }}"] } }
"#,
        &reg,
    );
    // Two slots: fan[0] and fan[1] start; `other` takes the slot fan[0] frees by failing,
    // while fan[1] still runs.
    let (out, _) = run_to_end(&eng, wf, 2).await;
    let nodes = store.nodes(&out.run_id).unwrap();
    let other = nodes.iter().find(|n| &*n.node_id == "other").unwrap();
    assert_eq!(other.outputs.as_ref().unwrap()["value"], json!("other(1)"));
    let fan1 = nodes.iter().find(|n| &*n.node_id == "fan[1]").unwrap();
    assert!(
        fan1.finished_at > other.started_at,
        "other started while fan[1] still ran"
    );
}
