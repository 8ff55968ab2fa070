//! What every [`Store`] promises, run against each of them: the in-memory store, redb, and
//! PostgreSQL (a database of its own per test, on the server `scripts/postgres.sh` starts).
//! PostgreSQL's own promises (leases that fence a worker that lost its run, commits tried
//! again after a lost answer) follow.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::concurrency::Claim;
use crate::package::PackageContent;
use crate::state::{NodeStatus, RunStatus, Trigger};

fn run(id: &str, at: i64) -> RunRecord {
    RunRecord {
        run_id: id.into(),
        workflow: "w".into(),
        workflow_file: "w.yaml".into(),
        workflow_text: "name: w\nsteps: []\n".into(),
        workflow_digest: "d".into(),
        inputs: json!({ "customer": "acme", "n": [1, 2.5, null] }),
        inputs_digest: "i".into(),
        trigger: Trigger {
            source: "cli".into(),
            actor: "me".into(),
            details: json!({}),
        },
        status: RunStatus::Running,
        max_parallel: 4,
        started_at: chrono::DateTime::from_timestamp(1_764_000_000 + at, 0).unwrap(),
        finished_at: None,
        plan_id: None,
    }
}

fn node(id: &str, status: NodeStatus) -> Arc<NodeRecord> {
    let mut n = NodeRecord::new(id, id.split('[').next().unwrap_or(id));
    n.status = status;
    n.outputs = Some(json!({ "id": id, "x": 1.5 }));
    Arc::new(n)
}

fn signal(v: &str) -> Signal {
    Signal {
        actor: "U1".into(),
        at: chrono::Utc::now(),
        value: json!(v),
    }
}

fn entry(run: &str, kind: &str, details: Value) -> Draft {
    AuditDraft::new("me", run, kind, details).into()
}

/// Records written in one batch read back as written; later batches replace by key; a
/// dropped node takes its signal with it; runs list newest first.
fn records_round_trip(s: &dyn Store) {
    s.commit(Batch {
        runs: vec![run("r1", 0), run("r2", 10)],
        nodes: vec![(
            "r1".into(),
            vec![
                node("a", NodeStatus::Succeeded),
                node("b[0]", NodeStatus::Running),
            ],
        )],
        audit: vec![entry("r1", "run_started", json!({ "f": 0.1 }))],
        signals: vec![("r1".into(), "b[0]".into(), signal("approve"))],
        annotations: vec![("r1".into(), "slack/thread".into(), json!({ "ts": "1.2" }))],
        secrets: vec![("token".into(), vec![1, 2, 3])],
        dropped_nodes: Vec::new(),
    })
    .unwrap();
    assert_eq!(s.run("r1").unwrap(), Some(run("r1", 0)));
    assert_eq!(s.run("nope").unwrap(), None);
    let ids: Vec<String> = s.runs().unwrap().into_iter().map(|r| r.run_id).collect();
    assert_eq!(ids, ["r2", "r1"], "newest first");
    let nodes = s.nodes("r1").unwrap();
    assert_eq!(nodes.len(), 2);
    assert_eq!(nodes[0], *node("a", NodeStatus::Succeeded));
    assert_eq!(
        s.signal("r1", "b[0]").unwrap().unwrap().value,
        json!("approve")
    );
    assert_eq!(
        s.annotations("r1").unwrap(),
        BTreeMap::from([("slack/thread".to_string(), json!({ "ts": "1.2" }))])
    );
    assert_eq!(s.secret("token").unwrap(), Some(vec![1, 2, 3]));
    assert_eq!(
        s.secrets().unwrap(),
        vec![("token".to_string(), vec![1, 2, 3])]
    );

    let mut r1 = run("r1", 0);
    r1.status = RunStatus::Failed;
    s.commit(Batch {
        runs: vec![r1.clone()],
        nodes: vec![("r1".into(), vec![node("a", NodeStatus::Failed)])],
        dropped_nodes: vec![("r1".into(), "b[0]".into())],
        ..Batch::default()
    })
    .unwrap();
    assert_eq!(s.run("r1").unwrap(), Some(r1));
    let nodes = s.nodes("r1").unwrap();
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    assert_eq!(nodes[0].status, NodeStatus::Failed);
    assert_eq!(
        s.signal("r1", "b[0]").unwrap(),
        None,
        "dropped with its node"
    );
}

/// Entries of many commits, also of commits made at once from several threads, form one
/// chain per run that verifies.
fn audit_chains_hold_across_commits(s: Arc<dyn Store>) {
    s.commit(Batch {
        runs: vec![run("c1", 0)],
        audit: vec![
            entry("c1", "run_started", json!(null)),
            entry("c2", "other_run", json!(1)),
            entry("c1", "second", json!({ "n": [1, 2] })),
        ],
        ..Batch::default()
    })
    .unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                for i in 0..10 {
                    s.commit(Batch {
                        audit: vec![entry("c1", "tick", json!({ "t": t, "i": i }))],
                        ..Batch::default()
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let chain = s.audit("c1").unwrap();
    assert_eq!(chain.len(), 42);
    assert_eq!(verify_chain(&chain), None);
    assert_eq!(chain[1].draft.kind, "second");
    assert_eq!(verify_chain(&s.audit("c2").unwrap()), None);
}

fn packages_version_by_content(s: &dyn Store) {
    let content = |n: u64| PackageContent {
        manifest: json!({ "n": n }),
        files: BTreeMap::from([("stacks/a.yaml".to_string(), format!("n: {n}\n"))]),
    };
    let p1 = s.publish_package("base", &content(1), Some("r1")).unwrap();
    assert!(p1.new && p1.version == 1);
    let again = s.publish_package("base", &content(1), None).unwrap();
    assert!(
        !again.new && again.version == 1,
        "same content, same version"
    );
    let p2 = s.publish_package("base", &content(2), None).unwrap();
    assert_eq!(p2.version, 2);
    assert_eq!(s.package("base", None).unwrap().unwrap().version, 2);
    let one = s.package("base", Some(1)).unwrap().unwrap();
    assert_eq!((one.content, one.run_id), (content(1), Some("r1".into())));
    assert_eq!(s.package("other", None).unwrap(), None);
    assert_eq!(s.packages().unwrap().len(), 2);
}

fn slots_take_turns(s: &dyn Store) {
    s.commit(Batch {
        runs: vec![run("s1", 0), run("s2", 1)],
        ..Batch::default()
    })
    .unwrap();
    assert_eq!(s.claim_slot("k", 1, "s1", true).unwrap(), Claim::Held);
    assert!(matches!(
        s.claim_slot("k", 1, "s2", false).unwrap(),
        Claim::Refused { holders } if holders == ["s1"]
    ));
    s.release_slot("k", "s1").unwrap();
    assert_eq!(s.claim_slot("k", 1, "s2", true).unwrap(), Claim::Held);
    assert_eq!(s.slots("k").unwrap().holders, ["s2"]);
    // A holder whose run ended no longer holds the key.
    let mut done = run("s2", 1);
    done.status = RunStatus::Succeeded;
    s.commit(Batch {
        runs: vec![done],
        ..Batch::default()
    })
    .unwrap();
    assert_eq!(s.claim_slot("k", 1, "s1", true).unwrap(), Claim::Held);
}

fn plans_are_kept(s: &dyn Store) {
    let plan: crate::plan::Plan = serde_json::from_value(json!({
        "plan_id": "p1", "workflow": "w", "workflow_file": "w.yaml", "workflow_text": "",
        "workflow_digest": "d", "inputs": {}, "inputs_digest": "i", "requester": "cli:me",
        "created_at": "2026-12-01T00:00:00Z", "expires_at": "2026-12-02T00:00:00Z",
        "nodes": [], "digest": "x"
    }))
    .unwrap();
    s.save_plan(&plan).unwrap();
    assert_eq!(s.plan("p1").unwrap(), Some(plan.clone()));
    assert_eq!(s.plans().unwrap(), vec![plan]);
}

fn leases_are_exclusive(s: &dyn Store) {
    let lease = s.lease("l1").unwrap().expect("the first lease");
    assert!(s.is_live("l1"));
    assert!(s.lease("l1").unwrap().is_none(), "held");
    drop(lease);
    assert!(!s.is_live("l1"));
    assert!(s.lease("l1").unwrap().is_some(), "given back");
}

fn every_promise(s: Arc<dyn Store>, leases: bool) {
    records_round_trip(s.as_ref());
    audit_chains_hold_across_commits(Arc::clone(&s));
    packages_version_by_content(s.as_ref());
    slots_take_turns(s.as_ref());
    plans_are_kept(s.as_ref());
    if leases {
        leases_are_exclusive(s.as_ref());
    }
}

#[test]
fn the_memory_store_keeps_every_promise() {
    every_promise(Arc::new(MemStore::new()), false);
}

#[test]
fn the_redb_store_keeps_every_promise() {
    let dir = tempfile::tempdir().unwrap();
    let s = RedbStore::open(&dir.path().join("state.redb")).unwrap();
    every_promise(Arc::new(s), true);
}

#[test]
fn the_postgres_store_keeps_every_promise() {
    let s = PgStore::open(&pg::testing::database(), DEFAULT_LEASE).unwrap();
    every_promise(Arc::new(s), true);
}

/// A worker whose lease ran out (paused past it: its renewals stopped) and was taken over
/// writes nothing when it wakes; the worker that took the run over writes on.
#[test]
fn a_worker_that_lost_its_lease_writes_nothing() {
    let url = pg::testing::database();
    let a = PgStore::open(&url, Duration::from_secs(30)).unwrap();
    let b = PgStore::open(&url, Duration::from_secs(30)).unwrap();
    a.commit(Batch {
        runs: vec![run("f1", 0)],
        ..Batch::default()
    })
    .unwrap();
    let held = a.lease("f1").unwrap().expect("a takes the run");
    assert!(b.lease("f1").unwrap().is_none(), "a holds it");
    a.commit(Batch {
        audit: vec![entry("f1", "by_a", json!(null))],
        ..Batch::default()
    })
    .unwrap();
    // A is paused past its lease.
    pg::testing::expire(&url, "f1");
    let taken = b.lease("f1").unwrap().expect("b takes the run over");
    let err = a
        .commit(Batch {
            audit: vec![entry("f1", "late_a", json!(null))],
            ..Batch::default()
        })
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::LeaseLost(r) if r == "f1"),
        "{err}"
    );
    b.commit(Batch {
        audit: vec![entry("f1", "by_b", json!(null))],
        ..Batch::default()
    })
    .unwrap();
    let kinds: Vec<String> = b
        .audit("f1")
        .unwrap()
        .into_iter()
        .map(|e| e.draft.kind)
        .collect();
    assert_eq!(kinds, ["by_a", "by_b"]);
    // A's late lease, given back, does not free B's.
    drop(held);
    assert!(a.lease("f1").unwrap().is_none());
    drop(taken);
    assert!(a.lease("f1").unwrap().is_some());
}

/// A run's chain copied from redb verifies in PostgreSQL, and later entries chain on.
#[test]
fn a_chain_moved_from_redb_verifies_and_grows() {
    let dir = tempfile::tempdir().unwrap();
    let redb = RedbStore::open(&dir.path().join("state.redb")).unwrap();
    redb.commit(Batch {
        runs: vec![run("m1", 0)],
        audit: (0..5)
            .map(|i| entry("m1", "e", json!({ "i": i, "f": 0.1 })))
            .collect(),
        ..Batch::default()
    })
    .unwrap();
    let entries = redb.audit("m1").unwrap();
    let pg = PgStore::open(&pg::testing::database(), DEFAULT_LEASE).unwrap();
    assert!(pg.is_empty().unwrap());
    pg.import_audit("m1", &entries).unwrap();
    pg.commit(Batch {
        runs: vec![run("m1", 0)],
        audit: vec![entry("m1", "after_the_move", json!(null))],
        ..Batch::default()
    })
    .unwrap();
    assert!(!pg.is_empty().unwrap());
    let moved = pg.audit("m1").unwrap();
    assert_eq!(&moved[..5], &entries[..]);
    assert_eq!(moved.len(), 6);
    assert_eq!(verify_chain(&moved), None);
}

/// Workers share runs: each unfinished run of a source that nobody executes goes to one of
/// them (new, or left when its lease was given back), each Slack delivery counts once.
#[test]
fn workers_take_different_runs_and_deliveries_count_once() {
    let url = pg::testing::database();
    let a = PgStore::open(&url, Duration::from_secs(30)).unwrap();
    let b = PgStore::open(&url, Duration::from_secs(30)).unwrap();
    let mut runs: Vec<RunRecord> = (0..4)
        .map(|i| {
            let mut r = run(&format!("q{i}"), i);
            r.trigger.source = "slack".into();
            r
        })
        .collect();
    runs[3].status = RunStatus::Succeeded;
    runs.push(run("cli-run", 9));
    a.commit(Batch {
        runs,
        ..Batch::default()
    })
    .unwrap();
    assert!(a.shares_work());
    let mine = a.take_runs("slack", 2).unwrap();
    assert_eq!(mine, ["q0", "q1"]);
    assert_eq!(
        b.take_runs("slack", 10).unwrap(),
        ["q2"],
        "finished and CLI runs are not taken"
    );
    assert!(b.take_runs("slack", 10).unwrap().is_empty());
    let lease = a.lease("q0").unwrap().expect("taken for a");
    assert!(b.lease("q0").unwrap().is_none());
    assert!(b.is_live("q0"));
    drop(lease);
    assert_eq!(
        b.take_runs("slack", 10).unwrap(),
        ["q0"],
        "given back unfinished: taken again"
    );

    assert_eq!(a.first_delivery("trigger:1").unwrap(), Some(true));
    assert_eq!(b.first_delivery("trigger:1").unwrap(), Some(false));
    assert_eq!(MemStore::new().first_delivery("trigger:1").unwrap(), None);

    assert!(a
        .put_shared("install:s1", &json!({ "by": "cli:me" }))
        .unwrap());
    let long = Duration::from_secs(600);
    assert_eq!(
        b.take_shared("install:s1", long).unwrap(),
        Some(json!({ "by": "cli:me" }))
    );
    assert_eq!(
        a.take_shared("install:s1", long).unwrap(),
        None,
        "taken once"
    );
    assert!(a.put_shared("install:s2", &json!(1)).unwrap());
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        b.take_shared("install:s2", Duration::from_millis(1))
            .unwrap(),
        None,
        "too old"
    );
    assert!(!MemStore::new().put_shared("k", &json!(1)).unwrap());
}
