//! Concurrency keys across runs: a second run of a taken key waits `queued` and starts when
//! the first ends, or is refused; a run stopped while it waits leaves the line.

use super::*;
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
