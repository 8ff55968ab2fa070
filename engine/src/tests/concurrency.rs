//! Concurrency keys across runs: a second run of a taken key waits `queued` and starts when
//! the first ends, or is refused; a run stopped while it waits leaves the line.

use super::*;
use crate::concurrency::Claim;
use crate::state::{RunRecord, RunStatus};
use crate::EngineError;

fn engine(probe: &Arc<Probe>) -> (Arc<Engine>, Arc<MemStore>, Registry) {
    let (engine, store, reg) = super::engine(probe);
    (Arc::new(engine), store, reg)
}

const KEYED: &str = r#"
name: t
inputs: { customer: { type: string } }
concurrency: { key: "{{ inputs.customer }}", limit: 1 }
steps:
  - { id: work, uses: test, with: { sleep_ms: 300 } }
"#;

fn run_for(customer: &str) -> NewRun {
    let mut r = new_run(4);
    r.inputs.insert("customer".into(), json!(customer));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_of_a_key_waits_queued_and_starts_when_the_first_ends() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = Arc::new(workflow(KEYED, &reg));
    let a = eng.create_run(&wf, run_for("acme")).unwrap();
    let b = eng.create_run(&wf, run_for("acme")).unwrap();
    let other = eng.create_run(&wf, run_for("globex")).unwrap();
    let run = |rec: RunRecord| {
        let (eng, wf) = (Arc::clone(&eng), Arc::clone(&wf));
        tokio::spawn(async move { eng.execute(wf, rec, RunControl::default(), &[]).await })
    };
    let ha = run(a.clone());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let hb = run(b.clone());
    let ho = run(other.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        store.run(&b.run_id).unwrap().unwrap().status,
        RunStatus::Queued
    );
    assert_eq!(
        probe.max_running.load(Ordering::SeqCst),
        2,
        "another customer's run is not held up"
    );
    for h in [ha, hb, ho] {
        assert_eq!(h.await.unwrap().unwrap().status, RunStatus::Succeeded);
    }
    // B's work started after A's ended.
    let nodes = |run: &str| store.nodes(run).unwrap().remove(0);
    assert!(nodes(&b.run_id).started_at >= nodes(&a.run_id).finished_at);
    let kinds: Vec<String> = store
        .audit(&b.run_id)
        .unwrap()
        .into_iter()
        .map(|e| e.draft.kind)
        .collect();
    assert!(kinds.contains(&"run_queued".to_string()), "{kinds:?}");
    assert!(kinds.contains(&"slot_taken".to_string()), "{kinds:?}");
    assert!(
        store.slots("t/acme").unwrap().is_empty(),
        "every slot given back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuse_ends_the_run_at_once_and_a_cancelled_waiter_leaves_the_line() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let refusing = Arc::new(workflow(
        &KEYED.replace("limit: 1 }", "limit: 1, on_conflict: refuse }"),
        &reg,
    ));
    let a = eng.create_run(&refusing, run_for("acme")).unwrap();
    let ha = {
        let (eng, wf, a) = (Arc::clone(&eng), Arc::clone(&refusing), a.clone());
        tokio::spawn(async move { eng.execute(wf, a, RunControl::default(), &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let b = eng.create_run(&refusing, run_for("acme")).unwrap();
    let err = eng
        .execute(Arc::clone(&refusing), b.clone(), RunControl::default(), &[])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, EngineError::Refused { holders, .. } if holders == &vec![a.run_id.clone()]),
        "{err}"
    );
    assert!(err.to_string().contains(&a.run_id), "{err}");
    assert_eq!(
        store.run(&b.run_id).unwrap().unwrap().status,
        RunStatus::Cancelled
    );
    assert_eq!(probe.count("work"), 1, "the refused run did nothing");

    // A queued run that is cancelled while it waits ends cancelled and frees its place.
    let queued = Arc::new(workflow(KEYED, &reg));
    let c = eng.create_run(&queued, run_for("acme")).unwrap();
    let control = RunControl::default();
    let cancel = control.cancel.clone();
    let hc = {
        let (eng, wf, c) = (Arc::clone(&eng), Arc::clone(&queued), c.clone());
        tokio::spawn(async move { eng.execute(wf, c, control, &[]).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(store.slots("t/acme").unwrap().queue.contains(&c.run_id));
    cancel.cancel();
    assert_eq!(hc.await.unwrap().unwrap().status, RunStatus::Cancelled);
    assert!(!store.slots("t/acme").unwrap().queue.contains(&c.run_id));
    assert_eq!(ha.await.unwrap().unwrap().status, RunStatus::Succeeded);
}

const STEP_KEYED: &str = r#"
name: t
steps:
  - id: deploy
    uses: test
    for_each: [x, y]
    concurrency: { key: "{{ item }}", limit: 1, scope: global }
    with: { sleep_ms: 200 }
"#;

/// A step's `concurrency` is held by its nodes, across runs, in the redb store: two runs
/// deploying to the same targets take turns per target and run side by side otherwise; a
/// holder whose node ended is dropped even if it never gave its slot back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steps_nodes_take_turns_per_key_across_runs() {
    let probe = Arc::new(Probe::default());
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(crate::store::RedbStore::open(&dir.path().join("state.redb")).unwrap());
    let reg = registry(&probe);
    let eng = Arc::new(Engine::new(Arc::new(reg.clone()), store.clone()));
    let wf = Arc::new(workflow(STEP_KEYED, &reg));
    let runs: Vec<RunRecord> = (0..2)
        .map(|_| eng.create_run(&wf, new_run(4)).unwrap())
        .collect();
    let handles: Vec<_> = runs
        .iter()
        .map(|rec| {
            let (eng, wf, rec) = (Arc::clone(&eng), Arc::clone(&wf), rec.clone());
            tokio::spawn(async move { eng.execute(wf, rec, RunControl::default(), &[]).await })
        })
        .collect();
    for h in handles {
        assert_eq!(h.await.unwrap().unwrap().status, RunStatus::Succeeded);
    }
    assert_eq!(
        probe.max_running.load(Ordering::SeqCst),
        2,
        "one node per target at once (4 without the key), both targets at once"
    );
    let queued = runs
        .iter()
        .flat_map(|r| store.audit(&r.run_id).unwrap())
        .filter(|e| e.draft.kind == "milestone" && e.draft.details["kind"] == "slot_queued")
        .count();
    assert_eq!(queued, 2, "one node per target waited its turn");
    assert!(store.slots("x").unwrap().is_empty() && store.slots("y").unwrap().is_empty());

    // A holder left behind (a crash between the end of the attempt and the release) whose
    // node ended no longer holds the key.
    let stale = crate::concurrency::node_holder(&runs[0].run_id, "deploy[0]");
    assert_eq!(store.claim_slot("x", 1, &stale, true).unwrap(), Claim::Held);
    assert_eq!(
        store.claim_slot("x", 1, "other#n", true).unwrap(),
        Claim::Held
    );
}

/// `on_conflict: refuse` at step level fails the node, saying who holds the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_step_fails_its_node_when_the_key_is_full() {
    let probe = Arc::new(Probe::default());
    let (eng, store, reg) = engine(&probe);
    let wf = Arc::new(workflow(
        &STEP_KEYED
            .replace("scope: global }", "on_conflict: refuse }")
            .replace("for_each: [x, y]", "for_each: [x, x]")
            .replace(
                "name: t",
                "name: t\ndefaults: { retry: { max_attempts: 1 } }",
            ),
        &reg,
    ));
    let rec = eng.create_run(&wf, new_run(4)).unwrap();
    let out = eng
        .execute(Arc::clone(&wf), rec, RunControl::default(), &[])
        .await
        .unwrap();
    assert_eq!(out.status, RunStatus::Failed);
    let failed: Vec<_> = store
        .nodes(&out.run_id)
        .unwrap()
        .into_iter()
        .filter(|n| n.status == NodeStatus::Failed)
        .collect();
    assert_eq!(failed.len(), 1, "one of the two got the key");
    let why = failed[0]
        .error
        .as_ref()
        .map(|e| e.message.clone())
        .unwrap_or_default();
    assert!(
        why.contains("t.deploy/x") && why.contains("refuses to wait"),
        "{why}"
    );
    assert_eq!(probe.count(&failed[0].node_id), 0);
}
