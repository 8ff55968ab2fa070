//! Scheduler behaviour, example by example: failure branches, conditions, fan-out, retries,
//! critical errors, time-outs, interrupt and resume, cancel, run ids, breakers, signals.

use super::*;
use crate::state::{RunStatus, SkipReason};
use crate::store::{verify_chain, AuditDraft};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_branch_runs_and_dependents_of_the_failure_are_skipped() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = workflow(
        r#"
name: t
defaults: { retry: { max_attempts: 1 } }
steps:
  - { id: a, uses: test }
  - { id: b, uses: test, needs: [a], with: { fail_times: 5, class: permanent } }
  - { id: c, uses: test, needs: [b] }
  - { id: d, uses: test, needs: [c] }
  - id: on_error
    uses: test
    needs: [d]
    when: failure()
    with: { deps: ["{{ steps.b.error.message }}"] }
  - { id: always_, uses: test, needs: [b], when: always() }
"#,
        &reg,
    );
    let (out, _) = run_to_end(&eng, wf, 4).await;
    assert_eq!(out.status, RunStatus::Failed);
    let st = statuses(store.as_ref(), &out.run_id);
    assert_eq!(st["a"], NodeStatus::Succeeded);
    assert_eq!(st["b"], NodeStatus::Failed);
    assert_eq!(st["c"], NodeStatus::Skipped);
    assert_eq!(st["d"], NodeStatus::Skipped);
    assert_eq!(st["on_error"], NodeStatus::Succeeded);
    assert_eq!(st["always_"], NodeStatus::Succeeded);
    let nodes = store.nodes(&out.run_id).unwrap();
    let on_error = nodes.iter().find(|n| &*n.node_id == "on_error").unwrap();
    assert_eq!(
        on_error.outputs.as_ref().unwrap()["value"],
        json!("on_error(\"planned failure 1\")")
    );
    let c = nodes.iter().find(|n| &*n.node_id == "c").unwrap();
    assert_eq!(c.skip_reason, Some(SkipReason::UpstreamFailed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_false_condition_skips_only_that_step() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = workflow(
        r#"
name: t
steps:
  - { id: a, uses: test }
  - { id: b, uses: test, needs: [a], when: "{{ steps.a.status == 'failed' }}" }
  - { id: c, uses: test, needs: [b] }
  - { id: handler, uses: test, needs: [c], when: failure() }
"#,
        &reg,
    );
    let (out, _) = run_to_end(&eng, wf, 4).await;
    assert_eq!(out.status, RunStatus::Succeeded);
    let st = statuses(store.as_ref(), &out.run_id);
    assert_eq!(st["b"], NodeStatus::Skipped);
    assert_eq!(st["c"], NodeStatus::Succeeded);
    assert_eq!(st["handler"], NodeStatus::Skipped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn for_each_fans_out_and_later_steps_see_a_list() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = workflow(
        r#"
name: t
inputs:
  regions: { type: array, default: [x, y, z] }
steps:
  - { id: per, uses: test, for_each: "{{ inputs.regions }}", with: { deps: ["{{ item }}", "{{ index }}"] } }
  - { id: after, uses: test, needs: [per], with: { deps: ["{{ steps.per.outputs | length }}", "{{ steps.per.outputs[2].value }}"] } }
  - { id: none, uses: test, for_each: [] }
  - { id: after_none, uses: test, needs: [none], with: { deps: ["{{ steps.none.outputs | length }}"] } }
"#,
        &reg,
    );
    let (out, _) = run_to_end(&eng, wf, 2).await;
    let nodes = store.nodes(&out.run_id).unwrap();
    assert_eq!(out.status, RunStatus::Succeeded, "{nodes:#?}");
    let get = |id: &str| nodes.iter().find(|n| &*n.node_id == id).unwrap().clone();
    assert_eq!(
        get("per[1]").outputs.unwrap()["value"],
        json!("per(\"y\",1)")
    );
    assert_eq!(get("per[2]").item, Some(json!("z")));
    assert_eq!(
        get("after").outputs.unwrap()["value"],
        json!("after(3,\"per(\\\"z\\\",2)\")")
    );
    assert_eq!(
        get("after_none").outputs.unwrap()["value"],
        json!("after_none(0)")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_retry_permanent_ones_do_not() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = workflow(
        r#"
name: t
# Five transient failures in a row would open the shared breaker for 30 s: not this test's subject.
defaults: { retry: { max_attempts: 3, initial_delay: 1ms, max_delay: 2ms }, circuit_breaker: { failure_threshold: 100 } }
steps:
  - { id: flaky, uses: test, with: { fail_times: 2 } }
  - { id: broken, uses: test, with: { fail_times: 1, class: permanent } }
  - { id: hopeless, uses: test, with: { fail_times: 9 } }
"#,
        &reg,
    );
    let (out, _) = run_to_end(&eng, wf, 4).await;
    assert_eq!(out.status, RunStatus::Failed);
    assert_eq!(probe.count("flaky"), 3);
    assert_eq!(probe.count("broken"), 1);
    assert_eq!(probe.count("hopeless"), 3);
    let nodes = store.nodes(&out.run_id).unwrap();
    let flaky = nodes.iter().find(|n| &*n.node_id == "flaky").unwrap();
    assert_eq!((flaky.status, flaky.attempts), (NodeStatus::Succeeded, 3));
    // The idempotency key is the same for every attempt of a node.
    let keys = probe.keys.lock().unwrap();
    assert!(keys["flaky"].windows(2).all(|w| w[0] == w[1]));
    assert_ne!(keys["flaky"][0], keys["broken"][0]);
    let audit = store.audit(&out.run_id).unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(
                |e| e.draft.kind == "retry_scheduled" && e.draft.node.as_deref() == Some("flaky")
            )
            .count(),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_failure_stops_the_run_and_cancels_running_nodes() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = workflow(
        r#"
name: t
steps:
  - { id: slow, uses: test, with: { sleep_ms: 30000 } }
  - { id: bad, uses: test, with: { fail_times: 1, class: critical, sleep_ms: 20 } }
  - { id: later, uses: test, needs: [bad] }
  - { id: handler, uses: test, needs: [bad], when: failure() }
"#,
        &reg,
    );
    let started = std::time::Instant::now();
    let (out, _) = run_to_end(&eng, wf, 4).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "did not cancel `slow`"
    );
    assert_eq!(out.status, RunStatus::Failed);
    let st = statuses(store.as_ref(), &out.run_id);
    assert_eq!(st["bad"], NodeStatus::Failed);
    assert_eq!(st["slow"], NodeStatus::Cancelled);
    assert_eq!(st["later"], NodeStatus::Skipped);
    assert_eq!(st["handler"], NodeStatus::Skipped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempt_and_step_time_outs() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = workflow(
        r#"
name: t
defaults: { retry: { max_attempts: 2, initial_delay: 1ms, max_delay: 1ms } }
steps:
  - { id: per_attempt, uses: test, attempt_timeout: 50ms, with: { sleep_ms: 10000 } }
  - { id: whole_step, uses: test, timeout: 80ms, retry: { max_attempts: 100 }, with: { sleep_ms: 30, fail_times: 1000 } }
"#,
        &reg,
    );
    let (out, _) = run_to_end(&eng, wf, 4).await;
    assert_eq!(out.status, RunStatus::Failed);
    let nodes = store.nodes(&out.run_id).unwrap();
    let pa = nodes.iter().find(|n| &*n.node_id == "per_attempt").unwrap();
    assert_eq!(pa.attempts, 2);
    assert!(pa.error.as_ref().unwrap().message.contains("timed out"));
    let ws = nodes.iter().find(|n| &*n.node_id == "whole_step").unwrap();
    assert!(ws.attempts < 100, "{}", ws.attempts);
    assert_eq!(ws.status, NodeStatus::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupt_leaves_a_resumable_run_and_resume_finishes_it() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = Arc::new(workflow(
        r#"
name: t
steps:
  - { id: a, uses: test }
  - { id: b, uses: test, needs: [a], with: { sleep_ms: 30000 } }
  - { id: c, uses: test, needs: [b] }
"#,
        &reg,
    ));
    let rec = eng.create_run(&wf, new_run(2)).unwrap();
    let control = RunControl {
        grace: Duration::from_millis(50),
        ..RunControl::default()
    };
    let stop = control.interrupt.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.cancel();
    });
    let out = eng
        .execute(Arc::clone(&wf), rec, control, &[])
        .await
        .unwrap();
    assert_eq!(out.status, RunStatus::Interrupted);
    let st = statuses(store.as_ref(), &out.run_id);
    assert_eq!(st["a"], NodeStatus::Succeeded);
    assert_eq!(st["b"], NodeStatus::Pending);

    // Resume with a quick `b`: same run, a is not run again.
    let quick = Arc::new(workflow(
        &wf.source.text.replace("sleep_ms: 30000", "sleep_ms: 1"),
        &reg,
    ));
    let rec = store.run(&out.run_id).unwrap().unwrap();
    let out2 = eng
        .execute(quick, rec, RunControl::default(), &[])
        .await
        .unwrap();
    assert_eq!(out2.status, RunStatus::Succeeded);
    assert_eq!(probe.count("a"), 1);
    assert_eq!(probe.count("b"), 2);
    let keys = probe.keys.lock().unwrap();
    assert_eq!(
        keys["b"][0], keys["b"][1],
        "resume keeps the idempotency key"
    );
    assert_eq!(verify_chain(&store.audit(&out.run_id).unwrap()), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_ends_the_run_cancelled() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = Arc::new(workflow(
        r#"
name: t
steps:
  - { id: a, uses: test, with: { sleep_ms: 30000 } }
  - { id: b, uses: test, needs: [a] }
"#,
        &reg,
    ));
    let rec = eng.create_run(&wf, new_run(2)).unwrap();
    let control = RunControl::default();
    let c = control.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.cancel();
    });
    let out = eng.execute(wf, rec, control, &[]).await.unwrap();
    assert_eq!(out.status, RunStatus::Cancelled);
    let st = statuses(store.as_ref(), &out.run_id);
    assert_eq!(st["a"], NodeStatus::Cancelled);
    assert!(!st.contains_key("b"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_run_id_same_inputs_is_the_same_run_other_inputs_are_refused() {
    let probe = Arc::new(Probe::default());
    let (eng, _store, reg) = engine(&probe);
    let wf = workflow(
        "name: t\ninputs: { x: { type: integer } }\nsteps: [ { id: a, uses: test } ]\n",
        &reg,
    );
    let mut new = new_run(1);
    new.run_id = Some("fixed-1".into());
    new.inputs.insert("x".into(), json!(1));
    let a = eng.create_run(&wf, new.clone()).unwrap();
    let b = eng.create_run(&wf, new.clone()).unwrap();
    assert_eq!(a.started_at, b.started_at);
    new.inputs.insert("x".into(), json!(2));
    assert!(matches!(
        eng.create_run(&wf, new.clone()),
        Err(crate::EngineError::Conflict { .. })
    ));
    new.run_id = Some("../x".into());
    assert!(matches!(
        eng.create_run(&wf, new),
        Err(crate::EngineError::BadRunId(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_makes_attempts_wait_not_hammer() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = workflow(
        r#"
name: t
defaults:
  retry: { max_attempts: 4, initial_delay: 1ms, max_delay: 1ms, jitter: none }
  circuit_breaker: { failure_threshold: 2, cool_down: 200ms }
steps:
  - { id: a, uses: test, with: { fail_times: 3 } }
"#,
        &reg,
    );
    let started = std::time::Instant::now();
    let (out, _) = run_to_end(&eng, wf, 1).await;
    assert_eq!(out.status, RunStatus::Succeeded);
    // Two failures open the circuit; the third attempt waits for the cool-down (probe).
    assert!(started.elapsed() >= Duration::from_millis(200));
    let kinds: Vec<String> = store
        .audit(&out.run_id)
        .unwrap()
        .into_iter()
        .filter(|e| e.draft.kind == "breaker_changed")
        .map(|e| {
            e.draft.details["to"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert!(kinds.contains(&"open".to_string()), "{kinds:?}");
    assert!(kinds.contains(&"half_open".to_string()), "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breakers_are_kept_per_scope_and_their_wait_ends_at_the_attempt_limit() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    // `a`'s account opens its circuit for a minute; `b`, the same plugin in another account,
    // fails too but never meets an open circuit; `a`'s third attempt gives up waiting when its
    // 300 ms are spent instead of sleeping out the cool-down.
    let wf = workflow(
        r#"
name: t
defaults:
  retry: { max_attempts: 3, initial_delay: 1ms, max_delay: 1ms, jitter: none }
  circuit_breaker: { failure_threshold: 2, cool_down: 60s }
steps:
  - { id: a, uses: test, attempt_timeout: 300ms, with: { scope: "111111111111/eu-west-1", fail_times: 5 } }
  - { id: b, uses: test, with: { scope: "222222222222/eu-west-1", fail_times: 1 } }
"#,
        &reg,
    );
    let started = std::time::Instant::now();
    let (out, _) = run_to_end(&eng, wf, 2).await;
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(out.status, RunStatus::Failed);
    let nodes = store.nodes(&out.run_id).unwrap();
    let get = |id: &str| nodes.iter().find(|n| &*n.node_id == id).unwrap();
    assert_eq!(get("b").status, NodeStatus::Succeeded);
    assert_eq!(get("a").status, NodeStatus::Failed);
    assert_eq!(
        probe.count("a"),
        2,
        "the third attempt never ran: the circuit was open"
    );
    let why = &get("a").error.as_ref().unwrap().message;
    assert!(
        why.contains("`test@111111111111/eu-west-1` circuit stayed open past the attempt's time limit (300ms)"),
        "{why}"
    );
    let opened: Vec<String> = store
        .audit(&out.run_id)
        .unwrap()
        .into_iter()
        .filter(|e| e.draft.kind == "breaker_changed" && e.draft.details["to"] == "open")
        .map(|e| {
            e.draft.details["key"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(opened, ["test@111111111111/eu-west-1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_render_error_fails_the_node_without_an_attempt() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = workflow(
        r#"
name: t
steps:
  - { id: a, uses: test }
  - { id: b, uses: test, needs: [a], with: { deps: ["{{ steps.a.outputs.nope }}"] } }
"#,
        &reg,
    );
    let (out, _) = run_to_end(&eng, wf, 2).await;
    assert_eq!(out.status, RunStatus::Failed);
    assert_eq!(probe.count("b"), 0);
    let b = store
        .nodes(&out.run_id)
        .unwrap()
        .into_iter()
        .find(|n| &*n.node_id == "b")
        .unwrap();
    assert!(b.error.unwrap().message.contains("cannot render"));
}

async fn wait_for_status(store: &MemStore, run: &str, node: &str, want: NodeStatus) {
    for _ in 0..500 {
        if statuses(store, run).get(node) == Some(&want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{node} never became {want}");
}

fn approval(actor: &str) -> crate::state::Signal {
    crate::state::Signal {
        actor: actor.into(),
        at: chrono::Utc::now(),
        value: json!({ "decision": "approve", "digest": "abc" }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_node_frees_its_slot_and_a_signal_resumes_it() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = Arc::new(workflow(
        r#"
name: t
steps:
  - { id: gate, uses: waiter }
  - { id: other, uses: test, with: { sleep_ms: 20 } }
  - { id: after, uses: test, needs: [gate] }
"#,
        &reg,
    ));
    let rec = eng.create_run(&wf, new_run(1)).unwrap();
    let run_id = rec.run_id.clone();
    let e2 = eng.clone();
    let task = tokio::spawn(async move { e2.execute(wf, rec, RunControl::default(), &[]).await });
    wait_for_status(&store, &run_id, "gate", NodeStatus::Waiting).await;
    // With max_parallel 1, `other` can only run because `gate` holds no slot.
    wait_for_status(&store, &run_id, "other", NodeStatus::Succeeded).await;
    assert!(matches!(
        eng.signal(&run_id, "nope", approval("U1")),
        Err(crate::EngineError::NoSuchNode(..))
    ));
    eng.signal(&run_id, "gate", approval("U0123ABCD")).unwrap();
    let out = task.await.unwrap().unwrap();
    assert_eq!(out.status, RunStatus::Succeeded);
    let gate = store
        .nodes(&run_id)
        .unwrap()
        .into_iter()
        .find(|n| &*n.node_id == "gate")
        .unwrap();
    assert_eq!(gate.outputs.unwrap()["actor"], "U0123ABCD");
    let audit = store.audit(&run_id).unwrap();
    let sig = audit
        .iter()
        .find(|e| e.draft.kind == "signal_received")
        .unwrap();
    assert_eq!(sig.draft.actor, "U0123ABCD");
    assert_eq!(sig.draft.node.as_deref(), Some("gate"));
    assert!(matches!(
        eng.signal(&run_id, "gate", approval("U1")),
        Err(crate::EngineError::Finished(..))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_sent_while_landfall_was_down_is_found_on_resume() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = Arc::new(workflow(
        "name: t\nsteps: [ { id: gate, uses: waiter } ]\n",
        &reg,
    ));
    let rec = eng.create_run(&wf, new_run(1)).unwrap();
    let run_id = rec.run_id.clone();
    let control = RunControl {
        grace: Duration::from_millis(10),
        ..RunControl::default()
    };
    let stop = control.interrupt.clone();
    let e2 = eng.clone();
    let w2 = Arc::clone(&wf);
    let task = tokio::spawn(async move { e2.execute(w2, rec, control, &[]).await });
    wait_for_status(&store, &run_id, "gate", NodeStatus::Waiting).await;
    stop.cancel();
    assert_eq!(task.await.unwrap().unwrap().status, RunStatus::Interrupted);
    eng.signal(&run_id, "gate", approval("cli:alice")).unwrap();
    let rec = store.run(&run_id).unwrap().unwrap();
    let out = eng
        .execute(wf, rec, RunControl::default(), &[])
        .await
        .unwrap();
    assert_eq!(out.status, RunStatus::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_times_out_and_annotations_are_kept() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = workflow(
        "name: t\nsteps: [ { id: gate, uses: waiter, with: { timeout_ms: 50 } } ]\n",
        &reg,
    );
    let (out, _) = run_to_end(&eng, wf, 1).await;
    assert_eq!(out.status, RunStatus::Failed);
    eng.annotate(
        &out.run_id,
        "slack",
        json!({ "channel": "C1", "ts": "1.2" }),
    )
    .unwrap();
    eng.annotate(&out.run_id, "other", json!(1)).unwrap();
    let a = store.annotations(&out.run_id).unwrap();
    assert_eq!(a["slack"]["ts"], "1.2");
    assert_eq!(a.len(), 2);
}

/// A plugin bug fails its node, whether it panics in the first poll (which runs in the
/// scheduler's task) or later in a task of its own; the run ends instead of waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_plugin_fails_its_node_not_the_scheduler() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = workflow(
        r#"
name: t
steps:
  - { id: at_once, uses: panics }
  - { id: later, uses: panics, with: { after_ms: 20 } }
  - { id: fine, uses: test }
  - { id: after, uses: test, needs: [at_once] }
  - { id: handler, uses: test, needs: [at_once, later], when: failure() }
"#,
        &reg,
    );
    let (out, _) = tokio::time::timeout(Duration::from_secs(10), run_to_end(&eng, wf, 4))
        .await
        .expect("the run ends");
    assert_eq!(out.status, RunStatus::Failed);
    let nodes = store.nodes(&out.run_id).unwrap();
    let get = |id: &str| nodes.iter().find(|n| &*n.node_id == id).unwrap();
    for (id, ms) in [("at_once", 0), ("later", 20)] {
        let n = get(id);
        assert_eq!(n.status, NodeStatus::Failed, "{id}");
        assert_eq!(n.attempts, 1, "a panic is not retried");
        let e = n.error.as_ref().unwrap();
        assert_eq!(e.class, ErrorClass::Permanent);
        assert_eq!(
            e.message,
            format!("the `panics` plugin panicked: index out of bounds (after {ms} ms)")
        );
    }
    assert_eq!(get("fine").status, NodeStatus::Succeeded);
    assert_eq!(get("after").status, NodeStatus::Skipped);
    assert_eq!(get("handler").status, NodeStatus::Succeeded);
    assert_eq!(verify_chain(&store.audit(&out.run_id).unwrap()), None);
}

/// Templates render in a context shared between turns: a step that finishes later must be
/// visible to the nodes that render after it (the shared context is rebuilt, never stale).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_template_context_follows_the_run() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = workflow(
        r#"
name: t
steps:
  - { id: slow, uses: test, with: { sleep_ms: 50 } }
  - { id: fast, uses: test }
  - { id: after_fast, uses: test, needs: [fast], for_each: [1, 2], with: { deps: ["{{ steps.fast.outputs.value }}", "{{ item }}"] } }
  - { id: after_slow, uses: test, needs: [slow], for_each: [3], with: { deps: ["{{ steps.slow.outputs.value }}", "{{ index }}"] } }
"#,
        &reg,
    );
    let (out, _) = run_to_end(&eng, wf, 4).await;
    let nodes = store.nodes(&out.run_id).unwrap();
    assert_eq!(out.status, RunStatus::Succeeded, "{nodes:#?}");
    let value = |id: &str| {
        nodes
            .iter()
            .find(|n| &*n.node_id == id)
            .unwrap()
            .outputs
            .clone()
            .unwrap()["value"]
            .clone()
    };
    assert_eq!(value("after_fast[1]"), json!("after_fast(\"fast()\",2)"));
    assert_eq!(value("after_slow[0]"), json!("after_slow(\"slow()\",0)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_finished_by_another_process_after_the_callers_look_is_not_run_again() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = Arc::new(workflow(
        "name: t\nsteps: [ { id: a, uses: test } ]\n",
        &reg,
    ));
    let stale = eng.create_run(&wf, new_run(1)).unwrap();
    // Another process runs it to its end between this caller's read and its lock.
    let done = eng
        .execute(Arc::clone(&wf), stale.clone(), RunControl::default(), &[])
        .await
        .unwrap();
    assert_eq!(done.status, RunStatus::Succeeded);
    assert_eq!(
        stale.status,
        RunStatus::Running,
        "the caller's copy is stale"
    );
    let again = eng.execute(wf, stale, RunControl::default(), &[]).await;
    assert!(
        matches!(
            again,
            Err(crate::EngineError::Finished(_, RunStatus::Succeeded))
        ),
        "{again:?}"
    );
    assert_eq!(probe.count("a"), 1, "a finished step ran again");
    assert_eq!(
        statuses(store.as_ref(), &done.run_id)["a"],
        NodeStatus::Succeeded
    );
}

/// Observers hear of a transition only once it is durable: whatever an event says, the store
/// already holds when the observer looks (from inside `on_event`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observers_are_told_only_what_the_store_already_holds() {
    use crate::events::{Observer, RunEvent};
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = Arc::new(workflow(
        r#"
name: t
defaults: { retry: { max_attempts: 3, initial_delay: 1ms, max_delay: 1ms }, circuit_breaker: { failure_threshold: 100 } }
steps:
  - { id: a, uses: test }
  - { id: b, uses: test, needs: [a], with: { fail_times: 1 }, for_each: [1, 2, 3] }
  - { id: c, uses: test, needs: [a], with: { fail_times: 1, class: permanent } }
  - { id: d, uses: test, needs: [b] }
"#,
        &reg,
    ));
    let seen = Arc::new(std::sync::Mutex::new((0usize, Vec::<String>::new())));
    let (s, st) = (Arc::clone(&seen), Arc::clone(&store));
    let observer: Arc<dyn Observer> = Arc::new(move |e: &RunEvent| {
        let node_now = |run: &str, node: &str| {
            st.nodes(run)
                .unwrap()
                .into_iter()
                .find(|n| &*n.node_id == node)
        };
        let mut s = s.lock().unwrap();
        s.0 += 1;
        let wrong = match e {
            RunEvent::NodeStarted {
                run_id,
                node,
                attempt,
            } => match node_now(run_id, node) {
                Some(n) if n.status == NodeStatus::Running && n.attempts == *attempt => None,
                other => Some(format!(
                    "{node} started (attempt {attempt}), store: {other:?}"
                )),
            },
            RunEvent::NodeFinished {
                run_id,
                node,
                status,
                ..
            } => match node_now(run_id, node) {
                Some(n) if n.status == *status => None,
                other => Some(format!(
                    "{node} {status:?}, store: {:?}",
                    other.map(|n| n.status)
                )),
            },
            RunEvent::RunFinished { run_id, status } => {
                let now = st.run(run_id).unwrap().map(|r| r.status);
                (now != Some(*status)).then(|| format!("run {status:?}, store: {now:?}"))
            }
            _ => None,
        };
        s.1.extend(wrong);
    });
    let rec = eng.create_run(&wf, new_run(4)).unwrap();
    let out = eng
        .execute(wf, rec, RunControl::default(), &[observer])
        .await
        .unwrap();
    assert_eq!(out.status, RunStatus::Failed);
    let (events, wrong) = &*seen.lock().unwrap();
    assert!(*events > 10, "{events} events");
    assert!(wrong.is_empty(), "told before the commit: {wrong:#?}");
}

/// Two executors of one run on one state file (two processes, as far as the file locks can
/// tell: each open of the lock file is its own): the second is refused with `Busy` and runs
/// nothing; once the first lets go, the run can be executed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_held_by_another_executor_is_busy_and_runs_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(crate::store::RedbStore::open(&dir.path().join("state.redb")).unwrap());
    let probe = Arc::new(Probe::default());
    let reg = registry(&probe);
    let eng = Engine::new(Arc::new(reg.clone()), store.clone());
    let wf = Arc::new(workflow(
        "name: t\nsteps: [ { id: a, uses: test } ]\n",
        &reg,
    ));
    let rec = eng.create_run(&wf, new_run(1)).unwrap();
    let held = store
        .lease(&rec.run_id)
        .unwrap()
        .expect("the first executor's lease");
    assert!(store.is_live(&rec.run_id));
    let second = eng
        .execute(Arc::clone(&wf), rec.clone(), RunControl::default(), &[])
        .await;
    assert!(
        matches!(second, Err(crate::EngineError::Busy(ref id)) if *id == rec.run_id),
        "{second:?}"
    );
    assert_eq!(probe.count("a"), 0, "a busy run ran a step");
    drop(held);
    let out = eng
        .execute(wf, rec, RunControl::default(), &[])
        .await
        .unwrap();
    assert_eq!(out.status, RunStatus::Succeeded);
}

/// A process killed during a step is not the step failing: the cut-off attempts do not use up
/// its tries. Here a node was cut off three times (two earlier resumes recorded it, the third
/// is found running now) with `max_attempts: 3`; the attempt after the resume fails once
/// (transient) and still gets its retry. Counting the kills, the run failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_cut_off_by_a_crash_do_not_use_up_the_retries() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = Arc::new(workflow(
        r#"
name: t
steps:
  - id: a
    uses: test
    with: { fail_times: 1 }
    retry: { max_attempts: 3, initial_delay: 1ms, max_delay: 1ms, jitter: none }
"#,
        &reg,
    ));
    let rec = eng.create_run(&wf, new_run(1)).unwrap();
    let run_id = rec.run_id.clone();
    let id: Arc<str> = "a".into();
    let mut node = crate::state::NodeRecord::new(Arc::clone(&id), id);
    node.status = NodeStatus::Running;
    node.attempts = 3;
    let earlier: Vec<_> = (1..=2)
        .map(|a| {
            AuditDraft::new("cli:x", &run_id, "attempt_cut_off", json!({ "attempt": a }))
                .node("a")
                .into()
        })
        .collect();
    store
        .commit(Batch {
            nodes: vec![(run_id.as_str().into(), vec![Arc::new(node)])],
            audit: earlier,
            ..Batch::default()
        })
        .unwrap();
    let rec = store.run(&run_id).unwrap().unwrap();
    let out = eng
        .execute(Arc::clone(&wf), rec, RunControl::default(), &[])
        .await
        .unwrap();
    assert_eq!(out.status, RunStatus::Succeeded);
    let node = &store.nodes(&run_id).unwrap()[0];
    assert_eq!(node.attempts, 5, "3 cut off, 1 failed, 1 succeeded");
    assert_eq!(probe.count("a"), 2);
    let cut: Vec<_> = store
        .audit(&run_id)
        .unwrap()
        .into_iter()
        .filter(|e| e.draft.kind == "attempt_cut_off")
        .map(|e| e.draft.details["attempt"].clone())
        .collect();
    assert_eq!(cut, [json!(1), json!(2), json!(3)]);
}

/// A step's own `max_parallel` bounds its instances even when the run allows more, while
/// another step's nodes still use the run's room; a wrong value is refused at load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steps_max_parallel_bounds_its_instances_not_the_others() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = workflow(
        r#"
name: t
steps:
  - id: one_at_a_time
    uses: test
    for_each: [1, 2, 3, 4, 5, 6]
    max_parallel: 2
    with: { sleep_ms: 40 }
"#,
        &reg,
    );
    let (out, _) = run_to_end(&eng, wf, 10).await;
    assert_eq!(out.status, RunStatus::Succeeded);
    assert_eq!(probe.max_running.load(Ordering::SeqCst), 2);
    assert_eq!(statuses(store.as_ref(), &out.run_id).len(), 6);

    // Without the step's limit the same fan-out uses the run's room.
    let probe = Arc::new(Probe::default());
    let (eng, _, reg) = engine(&probe);
    let wf = workflow(
        "name: t\nsteps:\n  - { id: all, uses: test, for_each: [1, 2, 3, 4, 5, 6], with: { sleep_ms: 200 } }\n",
        &reg,
    );
    let (out, _) = run_to_end(&eng, wf, 10).await;
    assert_eq!(out.status, RunStatus::Succeeded);
    assert!(probe.max_running.load(Ordering::SeqCst) > 2);

    let c = compile(
        &Source::new(
            "t.yaml",
            "name: t\nsteps:\n  - { id: a, uses: test, max_parallel: 0 }\n",
        ),
        &reg,
    );
    assert!(c.workflow.is_none(), "{:?}", c.report.diagnostics);
}
