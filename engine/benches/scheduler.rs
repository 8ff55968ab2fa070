//! Scheduler throughput on a 10,000-node layered DAG of no-op steps.
//!
//! `cargo bench -p landfall-engine --bench scheduler` (release build). Prints µs per node with
//! (a) the in-memory store and (b) the durable redb store, and the machine's raw fsync
//! latency for comparison; with `BENCH_STORE=pg` (or `all`: the three) (c) the PostgreSQL
//! store, on the server `scripts/postgres.sh` starts. Results go to BENCHMARKS.md by hand,
//! with this command.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use landfall_engine::compile;
use landfall_engine::state::{RunStatus, Trigger};
use landfall_engine::store::{Batch, MemStore, RedbStore, Store};
use landfall_engine::Source;
use landfall_engine::Workflow;
use landfall_engine::{Engine, NewRun, Plugin, Registry, RunControl, StepContext, StepError};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

// The allocator the `landfall` binary uses: the scheduler allocates per node, and glibc's
// malloc under two threads costs more than the scheduler itself.
#[global_allocator]
static GLOBAL: Counting = Counting;

/// mimalloc, counting allocations (printed per node: allocation churn is what the scheduler's
/// time mostly goes to).
struct Counting;

static ALLOCS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Counting only with `BENCH_ALLOCS` set: a shared counter would slow the timed runs.
static COUNT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn count() {
    if COUNT.load(std::sync::atomic::Ordering::Relaxed) {
        ALLOCS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        count();
        unsafe { mimalloc::MiMalloc.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        unsafe { mimalloc::MiMalloc.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, n: usize) -> *mut u8 {
        count();
        unsafe { mimalloc::MiMalloc.realloc(p, l, n) }
    }
}

struct Noop;

#[derive(Deserialize, JsonSchema)]
struct NoConfig {}

#[async_trait]
impl Plugin for Noop {
    const NAME: &'static str = "noop";
    const SUMMARY: &'static str = "does nothing";
    type Config = NoConfig;
    async fn run(&self, _c: NoConfig, _ctx: StepContext) -> Result<Value, StepError> {
        Ok(json!({}))
    }
}

/// `echo`: returns its `value` (a rendered template).
struct Echo;

#[derive(Deserialize, JsonSchema)]
struct EchoConfig {
    value: Value,
}

#[async_trait]
impl Plugin for Echo {
    const NAME: &'static str = "echo";
    const SUMMARY: &'static str = "returns its value";
    type Config = EchoConfig;
    async fn run(&self, c: EchoConfig, _ctx: StepContext) -> Result<Value, StepError> {
        Ok(json!({ "value": c.value }))
    }
}

/// Two `for_each` steps of `n` instances each, the second after the first, both rendering
/// their `with:` per instance.
fn fan_out(n: usize) -> String {
    let items: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    format!(
        "name: fan\nsteps:\n  - id: first\n    uses: echo\n    for_each: [{items}]\n    with: {{ value: \"{{{{ item }}}}\" }}\n  - id: second\n    uses: echo\n    needs: [first]\n    for_each: [{items}]\n    with: {{ value: \"{{{{ item }}}} of {{{{ index }}}}\" }}\n",
        items = items.join(", ")
    )
}

/// `layers` × `width` steps; each step needs up to 3 steps of the layer before.
fn layered(layers: usize, width: usize) -> String {
    let mut y = String::from("name: bench\nsteps:\n");
    for l in 0..layers {
        for w in 0..width {
            y.push_str(&format!("  - id: s{l}_{w}\n    uses: noop\n"));
            if l > 0 {
                let needs: Vec<String> = [w, (w + 1) % width, (w * 7 + 3) % width]
                    .iter()
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .map(|k| format!("s{}_{k}", l - 1))
                    .collect();
                y.push_str(&format!("    needs: [{}]\n", needs.join(", ")));
            }
        }
    }
    y
}

fn run(
    store: Arc<dyn Store>,
    reg: &Arc<Registry>,
    wf: &Arc<Workflow>,
    max_parallel: usize,
) -> (Duration, usize, u64) {
    let reg = Arc::clone(reg);
    let wf = Arc::clone(wf);
    let n = wf.steps.len();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let engine = Engine::new(reg, store);
    let allocs = ALLOCS.load(std::sync::atomic::Ordering::Relaxed);
    let start = Instant::now();
    let out = rt.block_on(async {
        let rec = engine
            .create_run(
                &wf,
                NewRun {
                    run_id: None,
                    plan: None,
                    inputs: Default::default(),
                    trigger: Trigger {
                        source: "bench".into(),
                        actor: "bench".into(),
                        details: Value::Null,
                    },
                    max_parallel,
                },
            )
            .expect("create run");
        engine
            .execute(Arc::clone(&wf), rec, RunControl::default(), &[])
            .await
            .expect("execute")
    });
    assert_eq!(out.status, RunStatus::Succeeded);
    let elapsed = start.elapsed();
    // Nodes, not steps: a `for_each` step is one node per instance.
    let n = engine.store.nodes(&out.run_id).map_or(n, |v| v.len());
    let allocs = ALLOCS.load(std::sync::atomic::Ordering::Relaxed) - allocs;
    if std::env::var_os("BENCH_ALLOCS").is_some() {
        println!("  {:.1} allocations per node", allocs as f64 / n as f64);
    }
    let commits = engine
        .store
        .audit(&out.run_id)
        .expect("audit")
        .iter()
        .rev()
        .find(|e| e.draft.kind == "run_finished")
        .and_then(|e| e.draft.details["commits"].as_u64())
        .unwrap_or(0);
    (elapsed, n, commits)
}

/// The floor under (a): the same shape with nothing but a tokio task per node reporting over
/// a channel, layer by layer, spawned from `block_on` like the scheduler does.
fn spawn_floor(layers: usize, width: usize) -> f64 {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let start = Instant::now();
    rt.block_on(async {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Value)>();
        for _ in 0..layers {
            for w in 0..width {
                let tx = tx.clone();
                let node = format!("s_{w}");
                tokio::spawn(async move {
                    let _ = tx.send((node, json!({})));
                });
            }
            for _ in 0..width {
                let _ = rx.recv().await;
            }
        }
    });
    start.elapsed().as_secs_f64() * 1e6 / (layers * width) as f64
}

fn fsync_latency(dir: &std::path::Path) -> Duration {
    let path = dir.join("fsync.probe");
    let mut f = std::fs::File::create(&path).expect("probe file");
    let block = [7u8; 4096];
    let rounds = 200;
    let start = Instant::now();
    for _ in 0..rounds {
        f.write_all(&block).expect("write");
        f.sync_data().expect("fsync");
    }
    start.elapsed() / rounds
}

/// The cost of a durable commit that writes almost nothing, in the mode `landfall` uses
/// (redb `MultiWriter`): the price of each scheduler turn that must be on disk.
fn empty_commit_latency(dir: &std::path::Path) -> Duration {
    let store = RedbStore::open(&dir.join("commit-probe.redb")).expect("open redb");
    let rounds = 100;
    let start = Instant::now();
    for i in 0..rounds {
        let mut b = Batch::default();
        b.annotations
            .push((format!("probe-{i}"), "k".into(), json!(i)));
        store.commit(b).expect("commit");
    }
    start.elapsed() / rounds
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// One DAG shape: `layers` × `width` no-op steps, at most `max_parallel` at once.
struct Shape {
    name: &'static str,
    layers: usize,
    width: usize,
    max_parallel: usize,
    /// Two `for_each` steps of `width` instances with templates, instead of a layered DAG.
    fan: bool,
}

fn main() {
    COUNT.store(
        std::env::var_os("BENCH_ALLOCS").is_some(),
        std::sync::atomic::Ordering::Relaxed,
    );
    // Three shapes of 10,000 nodes: square (100 layers, so 100 turns that must each be
    // durable), wide (10 layers of 1,000: group commit amortizes each durable turn over 1,000
    // nodes), and fan-out (two `for_each` steps of 5,000 instances rendering templates; the
    // second step's context holds the first's 5,000 outputs). `BENCH_LAYERS` /
    // `BENCH_WIDTH` / `BENCH_MAX_PARALLEL` measure one other layered shape instead.
    let shapes = match (env_usize("BENCH_LAYERS"), env_usize("BENCH_WIDTH")) {
        (None, None) => vec![
            Shape {
                name: "square",
                layers: 100,
                width: 100,
                max_parallel: 100,
                fan: false,
            },
            Shape {
                name: "wide",
                layers: 10,
                width: 1000,
                max_parallel: 1000,
                fan: false,
            },
            Shape {
                name: "fan-out",
                layers: 2,
                width: 5000,
                max_parallel: 100,
                fan: true,
            },
        ],
        (layers, width) => {
            let (layers, width) = (layers.unwrap_or(100), width.unwrap_or(100));
            vec![Shape {
                name: "custom",
                layers,
                width,
                max_parallel: env_usize("BENCH_MAX_PARALLEL").unwrap_or(width),
                fan: false,
            }]
        }
    };
    let which = std::env::var("BENCH_STORE").unwrap_or_default();
    let rounds = env_usize("BENCH_ROUNDS").unwrap_or(5).max(1);
    let dir = tempfile::tempdir().expect("temp dir");
    println!(
        "raw fsync latency (4 KiB write + fdatasync): {:.0} µs",
        fsync_latency(dir.path()).as_secs_f64() * 1e6
    );
    if which != "mem" && which != "pg" {
        println!(
            "durable redb commit of one small row (MultiWriter): {:.0} µs",
            empty_commit_latency(dir.path()).as_secs_f64() * 1e6
        );
    }
    // The VM's neighbours make single rounds noisy: each round is printed, and the median
    // is the figure BENCHMARKS.md records.
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for shape in shapes {
        let Shape {
            name,
            layers,
            width,
            max_parallel,
            fan,
        } = shape;
        let yaml = if fan {
            println!("== {name}: {layers} for_each steps x {width} instances, max_parallel {max_parallel}");
            fan_out(width)
        } else {
            println!("== {name}: {layers} layers x {width} steps, max_parallel {max_parallel}");
            layered(layers, width)
        };
        let t = Instant::now();
        let mut reg = Registry::new();
        reg.register(Noop).register(Echo);
        let reg = Arc::new(reg);
        let c = compile(&Source::new("bench.yaml", yaml), &reg);
        // Compiled once: each round runs the same workflow, as a server runs a file many
        // times.
        let wf = Arc::new(c.workflow.expect("bench workflow compiles"));
        println!(
            "compile {} steps: {:.1} ms",
            wf.steps.len(),
            t.elapsed().as_secs_f64() * 1e3
        );
        let floor: Vec<f64> = (0..5).map(|_| spawn_floor(layers, width)).collect();
        println!(
            "floor: one tokio task per node + a channel, no scheduler: {:.2} µs/node (best of 5)",
            floor.iter().copied().fold(f64::INFINITY, f64::min)
        );
        let mut mem = Vec::new();
        for round in 0..rounds {
            if which == "redb" || which == "pg" {
                break;
            }
            let (d, n, commits) = run(Arc::new(MemStore::new()), &reg, &wf, max_parallel);
            mem.push(d.as_secs_f64() * 1e6 / n as f64);
            println!(
                "(a) {name}, in-memory store, round {round}: {n} nodes in {:.1} ms = {:.2} µs/node ({commits} commits)",
                d.as_secs_f64() * 1e3,
                d.as_secs_f64() * 1e6 / n as f64
            );
        }
        if !mem.is_empty() {
            println!(
                "(a) {name}, in-memory store: median {:.2} µs/node over {rounds} rounds",
                median(mem)
            );
        }
        let mut durable = Vec::new();
        for round in 0..rounds {
            if which == "mem" || which == "pg" {
                break;
            }
            let db = dir.path().join(format!("bench-{name}-{round}.redb"));
            let store = Arc::new(RedbStore::open(&db).expect("open redb"));
            let (d, n, commits) = run(store, &reg, &wf, max_parallel);
            let size = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0);
            durable.push(d.as_secs_f64() * 1e6 / n as f64);
            println!(
                "(b) {name}, redb store, durable, round {round}: {n} nodes in {:.1} ms = {:.2} µs/node ({commits} commits, file {:.1} MiB)",
                d.as_secs_f64() * 1e3,
                d.as_secs_f64() * 1e6 / n as f64,
                size as f64 / 1048576.0
            );
        }
        if !durable.is_empty() {
            println!(
                "(b) {name}, redb store, durable: median {:.2} µs/node over {rounds} rounds",
                median(durable)
            );
        }
        let mut shared = Vec::new();
        for round in 0..rounds {
            if which != "pg" && which != "all" {
                break;
            }
            // A database of its own per round, on the server `scripts/postgres.sh` starts
            // (or `LANDFALL_TEST_DB`'s).
            let url = landfall_engine::store::pg_testing::database();
            let store = Arc::new(
                landfall_engine::store::PgStore::open(&url, landfall_engine::store::DEFAULT_LEASE)
                    .expect("open PostgreSQL"),
            );
            let (d, n, commits) = run(store, &reg, &wf, max_parallel);
            shared.push(d.as_secs_f64() * 1e6 / n as f64);
            println!(
                "(c) {name}, PostgreSQL store, durable, round {round}: {n} nodes in {:.1} ms = {:.2} µs/node ({commits} commits)",
                d.as_secs_f64() * 1e3,
                d.as_secs_f64() * 1e6 / n as f64
            );
        }
        if !shared.is_empty() {
            println!(
                "(c) {name}, PostgreSQL store, durable: median {:.2} µs/node over {rounds} rounds",
                median(shared)
            );
        }
    }
}
