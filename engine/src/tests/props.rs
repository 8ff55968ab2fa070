//! Property tests of the seed's engine properties (15, 16, 17, 21) and scheduler invariants.

use std::collections::{BTreeMap, HashSet};

use proptest::prelude::*;

use super::*;
use crate::error::ErrorClass;
use crate::retry::RetryPolicy;
use crate::spec::Jitter;
use crate::state::{NodeRecord, RunRecord, RunStatus, SkipReason};
use crate::store::{verify_chain, RedbStore};

/// A random DAG: for each step, its needs among earlier steps, whether it fans out, and how
/// its first attempts fail.
#[derive(Debug, Clone)]
struct Dag {
    steps: Vec<DagStep>,
}

#[derive(Debug, Clone)]
struct DagStep {
    needs: Vec<usize>,
    fan_out: Option<usize>,
    fail_times: u32,
    class: ErrorClass,
    sleep_ms: u64,
}

fn dag(max_steps: usize, failures: bool) -> impl Strategy<Value = Dag> {
    prop::collection::vec(
        (
            any::<u32>(),
            prop::option::weighted(0.25, 0..3usize),
            if failures {
                (0..3u32).boxed()
            } else {
                Just(0u32).boxed()
            },
            prop::bool::ANY,
            0..3u64,
        ),
        1..=max_steps,
    )
    .prop_map(|raw| Dag {
        steps: raw
            .into_iter()
            .enumerate()
            .map(|(i, (mask, fan, fail, transient, sleep))| DagStep {
                needs: (0..i).filter(|k| mask & (1 << (k % 32)) != 0).collect(),
                fan_out: fan,
                fail_times: fail,
                class: if transient {
                    ErrorClass::Transient
                } else {
                    ErrorClass::Permanent
                },
                sleep_ms: sleep,
            })
            .collect(),
    })
}

impl Dag {
    /// Steps with nodes to run on the longest chain of `needs` (a fan-out over no items has
    /// none: it ends in the commit that expands it).
    fn longest_chain(&self) -> usize {
        let mut depth = vec![0usize; self.steps.len()];
        for (i, s) in self.steps.iter().enumerate() {
            let runs = usize::from(s.fan_out != Some(0));
            depth[i] = runs + s.needs.iter().map(|k| depth[*k]).max().unwrap_or(0);
        }
        depth.into_iter().max().unwrap_or(0)
    }

    fn yaml(&self) -> String {
        self.yaml_with("")
    }

    /// The workflow, with `extra` added to every step's `with:` (e.g. `durable_failures: true`).
    fn yaml_with(&self, extra: &str) -> String {
        let mut y = String::from(
            // The breaker opens now and then (3 transient failures in a row) and must stay out
            // of the way: a short cool-down, not the default 30 s.
            "name: p\ndefaults: { retry: { max_attempts: 2, initial_delay: 1ms, max_delay: 1ms }, circuit_breaker: { failure_threshold: 3, cool_down: 2ms } }\nsteps:\n",
        );
        for (i, s) in self.steps.iter().enumerate() {
            let needs: Vec<String> = s.needs.iter().map(|k| format!("s{k}")).collect();
            let deps: Vec<String> = s
                .needs
                .iter()
                .map(|k| format!("\"{{{{ steps.s{k}.outputs }}}}\""))
                .collect();
            y.push_str(&format!(
                "  - id: s{i}\n    uses: test\n    needs: [{}]\n    with: {{ deps: [{}], fail_times: {}, class: {}, sleep_ms: {}{extra} }}\n",
                needs.join(", "),
                deps.join(", "),
                s.fail_times,
                s.class.as_str(),
                s.sleep_ms
            ));
            if let Some(n) = s.fan_out {
                let items: Vec<String> = (0..n).map(|k| k.to_string()).collect();
                y.push_str(&format!("    for_each: [{}]\n", items.join(", ")));
            }
        }
        y
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn outputs(store: &dyn Store, run: &str) -> BTreeMap<String, Option<Value>> {
    store
        .nodes(run)
        .unwrap()
        .into_iter()
        .map(|n| (n.node_id.to_string(), n.outputs))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    /// Feature: agent-onboarding-provisioning, Property 17: Checkpoint Recovery.
    /// For random DAGs and a crash at a random transition (a commit that never lands),
    /// resuming completes the run; every node whose success was recorded is not run again,
    /// every other node runs exactly once more, and the outputs equal an uninterrupted run's.
    #[test]
    fn prop17_checkpoint_recovery(d in dag(8, false), crash_at in 0.0f64..1.0) {
        rt().block_on(async {
            let yaml = d.yaml();
            // Uninterrupted baseline.
            let p0 = Arc::new(Probe::default());
            let reg0 = registry(&p0);
            let s0 = Arc::new(MemStore::new());
            let e0 = Engine::new(Arc::new(reg0.clone()), s0.clone());
            let (base, _) = run_to_end(&e0, workflow(&yaml, &reg0), 3).await;
            prop_assert_eq!(base.status, RunStatus::Succeeded);
            let want = outputs(s0.as_ref(), &base.run_id);

            // A run whose process "dies" at commit number `crash_after`, always inside the
            // run: a run makes at least one commit to create it, one to start, and one per
            // step of its longest chain of needs (a node starts only after the commit that
            // records its predecessor's success), so a crash at or before that is certain.
            let chain = d.longest_chain();
            let crash_after = 1 + (crash_at * (chain + 1) as f64) as usize;
            let inner = Arc::new(MemStore::new());
            let crashing = Arc::new(CrashingStore { inner: inner.clone(), budget: AtomicUsize::new(crash_after) });
            let p1 = Arc::new(Probe::default());
            let reg1 = registry(&p1);
            let e1 = Engine::new(Arc::new(reg1.clone()), crashing);
            let wf = Arc::new(workflow(&yaml, &reg1));
            let rec = e1.create_run(&wf, new_run(3)).unwrap();
            let crashed = e1.execute(Arc::clone(&wf), rec.clone(), RunControl::default(), &[]).await;
            prop_assert!(crashed.is_err(), "no crash at commit {} of a chain of {}: {:?}", crash_after, chain, crashed.map(|o| o.status));

            let durable: HashSet<String> = inner.nodes(&rec.run_id).unwrap().into_iter()
                .filter(|n| n.status == NodeStatus::Succeeded).map(|n| n.node_id.to_string()).collect();

            // A new process resumes from what is on "disk".
            let p2 = Arc::new(Probe::default());
            let reg2 = registry(&p2);
            let e2 = Engine::new(Arc::new(reg2.clone()), inner.clone());
            let stored = inner.run(&rec.run_id).unwrap().unwrap();
            if !stored.status.is_terminal() {
                let out = e2.execute(Arc::new(workflow(&yaml, &reg2)), stored, RunControl::default(), &[]).await.unwrap();
                prop_assert_eq!(out.status, RunStatus::Succeeded);
            }
            let got = outputs(inner.as_ref(), &rec.run_id);
            prop_assert_eq!(&got, &want);
            for node in got.keys() {
                let expected = if durable.contains(node) { 0 } else { 1 };
                // A zero-item fan-out has no attempt at all.
                let is_empty_fan = want[node] == Some(json!([]));
                if !is_empty_fan {
                    prop_assert_eq!(p2.count(node), expected, "node {}", node);
                }
            }
            Ok(())
        })?;
    }

    /// Property 17 on DAGs whose steps fail (permanently, or transiently a few times, counted
    /// by the outside world so a cut-off attempt uses no failure up), with a crash inside the
    /// run: the resumed run ends; what had succeeded durably is not run again; a crash never
    /// turns a success into a failure (every node the uninterrupted run succeeded succeeds,
    /// with the same outputs: cut-off attempts do not use up `max_attempts`); a node that fails
    /// permanently fails again. (A transient failure whose record the crash lost may give its
    /// node one more try than the uninterrupted run had, so an uninterrupted failure may end
    /// succeeded.)
    #[test]
    fn prop17_checkpoint_recovery_with_failures(d in dag(8, true), crash_at in 0.0f64..1.0) {
        rt().block_on(async {
            let yaml = d.yaml_with(", durable_failures: true");
            let p0 = Arc::new(Probe::default());
            let reg0 = registry(&p0);
            let s0 = Arc::new(MemStore::new());
            let e0 = Engine::new(Arc::new(reg0.clone()), s0.clone());
            let (base, _) = run_to_end(&e0, workflow(&yaml, &reg0), 3).await;
            let base_nodes: BTreeMap<String, NodeRecord> = s0.nodes(&base.run_id).unwrap().into_iter().map(|n| (n.node_id.to_string(), n)).collect();

            let chain = d.longest_chain();
            let crash_after = 1 + (crash_at * (chain + 1) as f64) as usize;
            let inner = Arc::new(MemStore::new());
            let crashing = Arc::new(CrashingStore { inner: inner.clone(), budget: AtomicUsize::new(crash_after) });
            let p1 = Arc::new(Probe::default());
            let reg1 = registry(&p1);
            let e1 = Engine::new(Arc::new(reg1.clone()), crashing);
            let wf = Arc::new(workflow(&yaml, &reg1));
            let rec = e1.create_run(&wf, new_run(3)).unwrap();
            // A failure can end the run before the crash point (its dependents are skipped
            // in fewer commits); the checks below hold for such a run too.
            if let Ok(out) = e1.execute(Arc::clone(&wf), rec.clone(), RunControl::default(), &[]).await {
                prop_assert_eq!(out.status, base.status, "a run that met no crash ends as the uninterrupted one");
            }
            let durable: HashSet<String> = inner.nodes(&rec.run_id).unwrap().into_iter()
                .filter(|n| n.status == NodeStatus::Succeeded).map(|n| n.node_id.to_string()).collect();

            // The next process shares the outside world (failures already met stay met).
            let p2 = Arc::new(Probe { failures: Arc::clone(&p1.failures), ..Probe::default() });
            let reg2 = registry(&p2);
            let e2 = Engine::new(Arc::new(reg2.clone()), inner.clone());
            let stored = inner.run(&rec.run_id).unwrap().unwrap();
            if !stored.status.is_terminal() {
                let out = e2.execute(Arc::new(workflow(&yaml, &reg2)), stored, RunControl::default(), &[]).await.unwrap();
                prop_assert!(out.status.is_terminal());
                if base.status == RunStatus::Succeeded {
                    prop_assert_eq!(out.status, RunStatus::Succeeded, "a crash turned a success into a failure");
                }
            }
            let after: BTreeMap<String, NodeRecord> = inner.nodes(&rec.run_id).unwrap().into_iter().map(|n| (n.node_id.to_string(), n)).collect();
            for node in &durable {
                prop_assert_eq!(p2.count(node), 0, "{} had succeeded durably and ran again", node);
            }
            for (id, b) in &base_nodes {
                let Some(a) = after.get(id) else { continue };
                if b.status == NodeStatus::Succeeded {
                    prop_assert_eq!(a.status, NodeStatus::Succeeded, "{} succeeded uninterrupted", id);
                    prop_assert_eq!(&a.outputs, &b.outputs, "{}", id);
                }
                let permanent = b.error.as_ref().is_some_and(|e| e.class == ErrorClass::Permanent);
                if b.status == NodeStatus::Failed && permanent {
                    prop_assert_eq!(a.status, NodeStatus::Failed, "{} fails permanently", id);
                }
            }
            Ok(())
        })?;
    }

    /// Scheduler invariants on random DAGs: a node starts only after every node of every
    /// step it needs has succeeded durably, and `max_parallel` is never exceeded.
    #[test]
    fn scheduler_invariants(d in dag(10, false), max_parallel in 1usize..5) {
        rt().block_on(async {
            let p = Arc::new(Probe::default());
            let reg = registry(&p);
            let store = Arc::new(MemStore::new());
            let eng = Engine::new(Arc::new(reg.clone()), store.clone());
            let wf = Arc::new(workflow(&d.yaml(), &reg));
            let rec = eng.create_run(&wf, new_run(max_parallel)).unwrap();
            let needs: HashMap<String, Vec<String>> = wf.steps.iter()
                .map(|s| (s.id.clone(), s.needs.iter().map(|&k| wf.steps[k].id.clone()).collect()))
                .collect();
            let violations = Arc::new(Mutex::new(Vec::<String>::new()));
            {
                let store = store.clone();
                let run_id = rec.run_id.clone();
                let violations = violations.clone();
                *p.on_start.lock().unwrap() = Some(Box::new(move |ctx: &StepContext| {
                    let nodes = store.nodes(&run_id).unwrap();
                    for need in &needs[&*ctx.step_id] {
                        let of_need: Vec<&NodeRecord> = nodes.iter().filter(|n| *n.step_id == **need).collect();
                        if of_need.is_empty() || of_need.iter().any(|n| n.status != NodeStatus::Succeeded) {
                            violations.lock().unwrap().push(format!("{} started before {need} succeeded durably", ctx.node_id));
                        }
                    }
                }));
            }
            let out = eng.execute(wf, rec, RunControl::default(), &[]).await.unwrap();
            prop_assert_eq!(out.status, RunStatus::Succeeded);
            let v = violations.lock().unwrap().clone();
            prop_assert!(v.is_empty(), "{:?}", v);
            prop_assert!(p.max_running.load(Ordering::SeqCst) <= max_parallel);
            Ok(())
        })?;
    }

    /// Feature: agent-onboarding-provisioning, Property 21: Audit Trail Completeness.
    /// Every node transition has an audit entry, in order, ending at the node's stored state;
    /// every attempt has its `running` entry; the run's start and end are recorded; the hash
    /// chain verifies.
    #[test]
    fn prop21_audit_trail_completeness(d in dag(8, true)) {
        rt().block_on(async {
            let p = Arc::new(Probe::default());
            let reg = registry(&p);
            let store = Arc::new(MemStore::new());
            let eng = Engine::new(Arc::new(reg.clone()), store.clone());
            let (out, _) = run_to_end(&eng, workflow(&d.yaml(), &reg), 3).await;
            let audit = store.audit(&out.run_id).unwrap();
            prop_assert_eq!(verify_chain(&audit), None);
            prop_assert_eq!(audit.iter().filter(|e| e.draft.kind == "run_started").count(), 1);
            prop_assert_eq!(audit.iter().filter(|e| e.draft.kind == "run_finished").count(), 1);
            prop_assert!(audit.iter().all(|e| e.draft.actor == "tester"));
            for n in store.nodes(&out.run_id).unwrap() {
                let mine: Vec<&crate::store::AuditEntry> = audit.iter()
                    .filter(|e| e.draft.kind == "node_transition" && e.draft.node.as_deref() == Some(&*n.node_id))
                    .collect();
                prop_assert!(!mine.is_empty(), "no entry for {}", n.node_id);
                // A node starts as `pending` (not a transition) or goes straight to a final
                // state from `new` (skipped, failed to start).
                let mut prev = match mine[0].draft.details["from"].as_str() {
                    Some("new") => "new".to_string(),
                    _ => "pending".to_string(),
                };
                for e in &mine {
                    prop_assert_eq!(e.draft.details["from"].as_str().unwrap_or_default(), prev.as_str());
                    prev = e.draft.details["to"].as_str().unwrap_or_default().to_string();
                }
                prop_assert_eq!(prev.as_str(), n.status.as_str());
                let running = mine.iter().filter(|e| e.draft.details["to"] == "running").count();
                prop_assert_eq!(running as u32, n.attempts);
            }
            Ok(())
        })?;
    }

    /// Feature: agent-onboarding-provisioning, Property 16: Retry with Exponential Backoff.
    /// Delays never exceed `max_delay`, never decrease without jitter, number
    /// `max_attempts - 1`, and only transient errors are retried.
    #[test]
    fn prop16_retry_with_exponential_backoff(
        max_attempts in 1u32..12,
        initial_ms in 0u64..5_000,
        multiplier in 1.0f64..5.0,
        max_ms in 0u64..60_000,
        jitter in prop_oneof![Just(Jitter::None), Just(Jitter::Full), Just(Jitter::Equal)],
        attempt in 1u32..15,
    ) {
        let p = RetryPolicy {
            max_attempts,
            initial_delay: Duration::from_millis(initial_ms),
            multiplier,
            max_delay: Duration::from_millis(max_ms),
            jitter,
        };
        let delays: Vec<Duration> = p.delays().collect();
        prop_assert_eq!(delays.len() as u32, max_attempts - 1);
        // The oracle, by hand: delay k (from 0) is initial × multiplierᵏ, capped at max_delay,
        // then jittered: none keeps it, full takes [0, it], equal takes [it/2, it].
        for (k, d) in delays.iter().enumerate() {
            let uncapped = initial_ms as f64 * multiplier.powi(k as i32);
            let cap_ms = uncapped.min(max_ms as f64);
            let got_ms = d.as_secs_f64() * 1000.0;
            let (lo, hi) = match jitter {
                Jitter::None => (cap_ms, cap_ms),
                Jitter::Full => (0.0, cap_ms),
                Jitter::Equal => (cap_ms / 2.0, cap_ms),
            };
            // A microsecond of slack for float and Duration rounding.
            prop_assert!(
                got_ms >= lo - 1e-3 && got_ms <= hi + 1e-3,
                "delay {} is {} ms, not in [{}, {}] ({:?})", k, got_ms, lo, hi, jitter
            );
        }
        let transient = StepError::transient("x");
        match p.should_retry(attempt, &transient) {
            Some(d) => {
                prop_assert!(attempt < max_attempts);
                prop_assert!(d <= p.max_delay);
            }
            None => prop_assert!(attempt >= max_attempts),
        }
        prop_assert_eq!(p.should_retry(attempt, &StepError::permanent("x")), None);
        prop_assert_eq!(p.should_retry(attempt, &StepError::critical("x")), None);
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        (-1e12f64..1e12).prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn node_record() -> impl Strategy<Value = NodeRecord> {
    (
        "[a-z][a-z0-9_]{0,8}",
        prop::option::of(0usize..5),
        prop::sample::select(vec![
            NodeStatus::Pending,
            NodeStatus::Running,
            NodeStatus::Waiting,
            NodeStatus::Succeeded,
            NodeStatus::Failed,
            NodeStatus::Skipped,
            NodeStatus::Cancelled,
        ]),
        0u32..10,
        prop::option::of(json_value()),
        prop::option::of(".{0,20}"),
        prop::option::of(prop::sample::select(vec![
            SkipReason::Condition,
            SkipReason::UpstreamFailed,
            SkipReason::NoFailure,
            SkipReason::RunStopped,
            SkipReason::RolloutStopped,
        ])),
    )
        .prop_map(|(step, index, status, attempts, outputs, err, skip)| {
            let node_id = match index {
                Some(i) => format!("{step}[{i}]"),
                None => step.clone(),
            };
            let mut n = NodeRecord::new(node_id, step);
            n.index = index;
            n.item = index.map(|i| json!(i));
            n.fan_out = index.map(|i| i + 1);
            n.status = status;
            n.attempts = attempts;
            n.started_at = Some(chrono::Utc::now());
            n.outputs = outputs;
            n.error = err.map(|m| StepError::permanent(m).with_context(json!({"k": 1})));
            n.skip_reason = skip;
            n
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    /// Feature: agent-onboarding-provisioning, Property 15: Workflow State Persistence.
    /// Runs and node checkpoints written to the redb file read back equal, also after the
    /// file is closed and opened again (schema version kept).
    #[test]
    fn prop15_workflow_state_persistence(
        run_id in "[a-z0-9-]{1,20}",
        inputs in json_value(),
        nodes in prop::collection::vec(node_record(), 0..8),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let run = RunRecord {
            run_id: run_id.clone(),
            workflow: "w".into(),
            workflow_file: "w.yaml".into(),
            workflow_text: "name: w\nsteps: []\n".into(),
            workflow_digest: "d".into(),
            inputs_digest: crate::digest::digest_of(&inputs),
            inputs,
            trigger: Trigger { source: "cli".into(), actor: "me".into(), details: json!({"c": "x"}) },
            status: RunStatus::Running,
            max_parallel: 3,
            started_at: chrono::Utc::now(),
            finished_at: None,
            plan_id: None,
        };
        // Last write wins per node id, as in the store.
        let mut want: BTreeMap<String, NodeRecord> = BTreeMap::new();
        for n in &nodes {
            want.insert(n.node_id.to_string(), n.clone());
        }
        {
            let s = RedbStore::open(&path).unwrap();
            s.commit(Batch {
                runs: vec![run.clone()],
                nodes: vec![(run_id.as_str().into(), nodes.iter().map(|n| std::sync::Arc::new(n.clone())).collect())],
                ..Batch::default()
            }).unwrap();
            prop_assert_eq!(s.run(&run_id).unwrap(), Some(run.clone()));
        }
        let s = RedbStore::open(&path).unwrap();
        prop_assert_eq!(s.schema_version().unwrap(), crate::store::SCHEMA_VERSION);
        prop_assert_eq!(s.run(&run_id).unwrap(), Some(run));
        let got: BTreeMap<String, NodeRecord> =
            s.nodes(&run_id).unwrap().into_iter().map(|n| (n.node_id.to_string(), n)).collect();
        prop_assert_eq!(got, want);
    }
}

fn package_content() -> impl Strategy<Value = crate::package::PackageContent> {
    (
        json_value(),
        prop::collection::btree_map("[a-z]{1,8}\\.yaml", ".{0,40}", 0..4),
    )
        .prop_map(|(manifest, files)| crate::package::PackageContent { manifest, files })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    /// Feature: agent-onboarding-provisioning, Property 9: Package Versioning Uniqueness.
    /// For any sequence of publications, each package id's versions are 1, 2, 3… in order of
    /// first publication of distinct content; publishing identical content returns the
    /// existing version; no (id, version) ever names two contents.
    #[test]
    fn prop9_package_versioning_uniqueness(
        contents in prop::collection::vec(package_content(), 1..5),
        ops in prop::collection::vec((0usize..3, 0usize..5), 1..20),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(&dir.path().join("state.redb")).unwrap();
        let ids = ["acme-baseline", "globex-baseline", "initech-net"];
        let mut model: HashMap<&str, Vec<String>> = HashMap::new();
        for (i, c) in ops {
            let content = &contents[c % contents.len()];
            let id = ids[i];
            let got = s.publish_package(id, content, Some("r-1")).unwrap();
            let versions = model.entry(id).or_default();
            let digest = content.digest();
            match versions.iter().position(|d| *d == digest) {
                Some(pos) => {
                    prop_assert!(!got.new);
                    prop_assert_eq!(got.version, pos as u64 + 1);
                }
                None => {
                    versions.push(digest.clone());
                    prop_assert!(got.new);
                    prop_assert_eq!(got.version, versions.len() as u64);
                }
            }
            prop_assert_eq!(got.digest, digest);
        }
        let all = s.packages().unwrap();
        let keys: HashSet<(String, u64)> = all.iter().map(|p| (p.id.clone(), p.version)).collect();
        prop_assert_eq!(keys.len(), all.len());
    }

    /// Feature: agent-onboarding-provisioning, Property 10: Package Retrieval Correctness.
    /// Fetching `id@version` returns exactly what was published, `id@latest` the highest
    /// version, and a record whose content was changed after publication is reported as
    /// corrupt, never returned.
    #[test]
    fn prop10_package_retrieval_correctness(
        contents in prop::collection::vec(package_content(), 1..5),
        tamper in any::<prop::sample::Index>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let s = RedbStore::open(&dir.path().join("state.redb")).unwrap();
        let mut published = Vec::new();
        for c in &contents {
            let p = s.publish_package("acme-baseline", c, None).unwrap();
            if p.new {
                published.push((p.version, c.clone()));
            }
        }
        for (v, c) in &published {
            let got = s.package("acme-baseline", Some(*v)).unwrap().unwrap();
            prop_assert_eq!(&got.content, c);
        }
        let latest = s.package("acme-baseline", None).unwrap().unwrap();
        prop_assert_eq!(latest.version, published.len() as u64);
        prop_assert_eq!(s.package("acme-baseline", Some(99)).unwrap(), None);
        prop_assert_eq!(s.package("nobody", None).unwrap(), None);

        let (v, _) = &published[tamper.index(published.len())];
        let mut p = s.package("acme-baseline", Some(*v)).unwrap().unwrap();
        p.content.files.insert("injected.yaml".into(), "Resources: {}".into());
        s.tamper_package(&p).unwrap();
        let fetched = s.package("acme-baseline", Some(*v));
        prop_assert!(matches!(fetched, Err(crate::store::StoreError::Corrupt { .. })), "{:?}", fetched);
    }
}
