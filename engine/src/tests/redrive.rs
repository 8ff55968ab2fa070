//! Redrive: a failed run runs again where it failed, as a new attempt of the same run.

use super::*;
use crate::state::{RunStatus, SkipReason};
use crate::store::verify_chain;
use crate::EngineError;

/// `b[1]` fails once (permanently: no retry helps), then would succeed.
const FLAKY: &str = r#"
name: t
defaults: { retry: { max_attempts: 2 } }
steps:
  - { id: a, uses: test }
  - id: plan
    uses: planned
    plan: true
    needs: [a]
    with: { changes: [{ action: create }], outputs: { ok: true } }
  - id: b
    uses: test
    needs: [plan]
    for_each: [0, 1, 2]
    with: { fail_times: "{{ 1 if item == 1 else 0 }}", class: permanent }
  - { id: c, uses: test, needs: [b] }
  - { id: undo, uses: test, needs: [c], when: failure() }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_runs_the_failed_nodes_again_and_keeps_what_succeeded() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = Arc::new(workflow(FLAKY, &reg));
    let (out, _) = run_to_end(&eng, (*wf).clone(), 10).await;
    assert_eq!(out.status, RunStatus::Failed);
    assert_eq!(probe.count("undo"), 1, "the failure branch ran");

    let r = eng.redrive(&wf, &out.run_id, None, "cli:alice").unwrap();
    assert_eq!(r.number, 1);
    assert_eq!(r.reset, vec!["b[1]".to_string()]);
    // The plan is made again; what follows the failure is activated anew.
    assert_eq!(r.steps, vec!["plan".to_string(), "c".into(), "undo".into()]);
    assert_eq!(r.run.status, RunStatus::Interrupted);
    let out = eng
        .execute(Arc::clone(&wf), r.run, RunControl::default(), &[])
        .await
        .unwrap();
    assert_eq!(out.status, RunStatus::Succeeded);

    assert_eq!(probe.count("a"), 1, "a succeeded: not run again");
    assert_eq!(probe.count("b[0]"), 1, "b[0] succeeded: its output is kept");
    assert_eq!(probe.count("b[1]"), 2);
    assert_eq!(probe.count("c"), 1, "skipped before, runs now");
    assert_eq!(probe.count("undo"), 1, "nothing failed this time");
    let keys = probe.keys.lock().unwrap();
    assert_eq!(keys["b[1]"][0], keys["b[1]"][1], "the same idempotency key");
    drop(keys);
    let st = statuses(store.as_ref(), &out.run_id);
    assert_eq!(st["undo"], NodeStatus::Skipped);
    let b1 = store
        .nodes(&out.run_id)
        .unwrap()
        .into_iter()
        .find(|n| &*n.node_id == "b[1]")
        .unwrap();
    assert_eq!(b1.attempts, 2, "the attempt count goes on");
    let audit = store.audit(&out.run_id).unwrap();
    assert_eq!(verify_chain(&audit), None, "one chain, continued");
    let redriven = audit
        .iter()
        .find(|e| e.draft.kind == "run_redriven")
        .unwrap();
    assert_eq!(redriven.draft.actor, "cli:alice");
    assert_eq!(redriven.draft.details["reset"][0]["node"], "b[1]");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redriven_node_gets_its_tries_afresh() {
    let probe = Arc::new(Probe::default());
    let (eng, _store, reg) = engine(&probe);
    // Fails three times, transiently: two attempts per run are not enough, four are.
    let wf = Arc::new(workflow(
        "name: t\ndefaults: { retry: { max_attempts: 2, initial_delay: 10ms } }\nsteps:\n  - { id: x, uses: test, with: { fail_times: 3 } }\n",
        &reg,
    ));
    let (out, _) = run_to_end(&eng, (*wf).clone(), 4).await;
    assert_eq!(out.status, RunStatus::Failed);
    let r = eng.redrive(&wf, &out.run_id, None, "me").unwrap();
    assert_eq!(
        r.steps,
        vec!["x".to_string()],
        "a single-node step is activated anew"
    );
    let out = eng
        .execute(Arc::clone(&wf), r.run, RunControl::default(), &[])
        .await
        .unwrap();
    assert_eq!(out.status, RunStatus::Succeeded);
    assert_eq!(probe.count("x"), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_names_what_runs_again_and_unfinished_runs_are_resumed_not_redriven() {
    let probe = Arc::new(Probe::default());
    let (eng, _store, reg) = engine(&probe);
    let wf = Arc::new(workflow(
        "name: t\nsteps:\n  - { id: a, uses: test }\n  - { id: b, uses: test, needs: [a] }\n  - { id: c, uses: test, needs: [b] }\n",
        &reg,
    ));
    let (out, _) = run_to_end(&eng, (*wf).clone(), 4).await;
    assert_eq!(out.status, RunStatus::Succeeded);
    let err = eng.redrive(&wf, &out.run_id, None, "me").unwrap_err();
    assert!(matches!(err, EngineError::NotRedrivable { .. }), "{err}");
    let err = eng
        .redrive(&wf, &out.run_id, Some("nope"), "me")
        .unwrap_err();
    assert!(matches!(err, EngineError::NoSuchNode(..)), "{err}");

    let r = eng.redrive(&wf, &out.run_id, Some("b"), "me").unwrap();
    assert_eq!(r.steps, vec!["b".to_string(), "c".into()]);
    let out = eng
        .execute(Arc::clone(&wf), r.run, RunControl::default(), &[])
        .await
        .unwrap();
    assert_eq!(out.status, RunStatus::Succeeded);
    assert_eq!(
        (probe.count("a"), probe.count("b"), probe.count("c")),
        (1, 2, 2)
    );

    // A run that has not finished is resumed, not redriven.
    let rec = eng.create_run(&wf, new_run(4)).unwrap();
    let err = eng.redrive(&wf, &rec.run_id, None, "me").unwrap_err();
    assert!(err.to_string().contains("landfall resume"), "{err}");
}

/// A failing canary's skipped waves run again, canary first; a redrive stopped half-way is
/// resumed like any run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_of_a_stopped_rollout_starts_with_its_canary_and_survives_an_interrupt() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = Arc::new(workflow(
        r#"
name: t
defaults: { retry: { max_attempts: 1 } }
steps:
  - { id: a, uses: test }
  - id: d
    uses: test
    needs: [a]
    for_each: [0, 1, 2, 3]
    waves: [1]
    with: { fail_times: "{{ 1 if index == 0 else 0 }}", class: permanent, sleep_ms: 150 }
"#,
        &reg,
    ));
    let (out, _) = run_to_end(&eng, (*wf).clone(), 4).await;
    assert_eq!(out.status, RunStatus::Failed);
    let skipped = store
        .nodes(&out.run_id)
        .unwrap()
        .into_iter()
        .filter(|n| n.skip_reason == Some(SkipReason::RolloutStopped))
        .count();
    assert_eq!(skipped, 3);

    let r = eng.redrive(&wf, &out.run_id, None, "me").unwrap();
    // No instance succeeded: the step is activated anew, waves and all.
    assert_eq!(r.steps, vec!["d".to_string()]);
    // Interrupted while the canary runs again…
    let control = RunControl::default();
    let stop = control.interrupt.clone();
    let h = {
        let (eng, wf, run) = (Arc::new(eng), Arc::clone(&wf), r.run.clone());
        let e2 = Arc::clone(&eng);
        (
            tokio::spawn(async move { e2.execute(wf, run, control, &[]).await }),
            eng,
        )
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    stop.cancel();
    let (handle, eng) = h;
    let out = handle.await.unwrap().unwrap();
    assert_eq!(out.status, RunStatus::Interrupted);
    // …and resumed: the rest follows the canary.
    let rec = store.run(&out.run_id).unwrap().unwrap();
    let out = eng
        .execute(Arc::clone(&wf), rec, RunControl::default(), &[])
        .await
        .unwrap();
    assert_eq!(out.status, RunStatus::Succeeded);
    assert_eq!(probe.count("a"), 1);
    assert_eq!(probe.count("d[3]"), 1);
    assert_eq!(verify_chain(&store.audit(&out.run_id).unwrap()), None);
}

/// What a rollback undid is planned again, item by item: the plan of the failed target is
/// made again, the approval of the plan is asked again, the other targets keep their results.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failed_items_are_planned_again_and_the_plan_approved_again() {
    let probe = Arc::new(Probe::default());
    let (eng, _store, reg) = engine(&probe);
    let wf = Arc::new(workflow(
        r#"
name: t
defaults: { retry: { max_attempts: 1 } }
steps:
  - id: plan
    uses: planned
    plan: true
    for_each: [x, y, z]
    with: { changes: [{ action: create }], outputs: { ok: true } }
  - { id: approve, uses: test, needs: [plan] }
  - id: deploy
    uses: test
    needs: [approve]
    for_each: [x, y, z]
    with: { fail_times: "{{ 1 if item == 'y' else 0 }}", class: permanent }
  - id: rollback
    uses: test
    needs: [deploy]
    when: failure()
    for_each: "{{ steps.deploy.failures | map(attribute='item') | list }}"
"#,
        &reg,
    ));
    let (out, _) = run_to_end(&eng, (*wf).clone(), 4).await;
    assert_eq!(out.status, RunStatus::Failed);
    assert_eq!(probe.count("rollback[0]"), 1);
    let r = eng.redrive(&wf, &out.run_id, None, "me").unwrap();
    let mut reset = r.reset.clone();
    reset.sort();
    assert_eq!(reset, vec!["deploy[1]".to_string(), "plan[1]".into()]);
    assert_eq!(r.steps, vec!["approve".to_string(), "rollback".into()]);
    let out = eng
        .execute(Arc::clone(&wf), r.run, RunControl::default(), &[])
        .await
        .unwrap();
    assert_eq!(out.status, RunStatus::Succeeded);
    assert_eq!(probe.count("approve"), 2, "the new plan is approved again");
    assert_eq!((probe.count("deploy[0]"), probe.count("deploy[1]")), (1, 2));
    assert_eq!(
        probe.count("rollback[0]"),
        1,
        "nothing to roll back this time"
    );
}
