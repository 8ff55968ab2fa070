//! Many runs at once in one process, durable (issue 16): 1,000 concurrent runs of a 5-step
//! chain whose steps wait (as steps waiting on AWS do), on the redb store.
//!
//! `cargo bench -p landfall-engine --bench runs` (release build). Prints the wall time, runs
//! and steps per second, the process's peak memory (VmHWM) while the runs wait, and the
//! machine's raw fdatasync latency and one durable redb commit, measured in the same run: the
//! chain cost each step pays (its transitions are committed before a dependent starts).
//! `BENCH_RUNS` (1,000), `BENCH_STEP_MS` (200: how long each step waits), `BENCH_ROUNDS` (3).

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use landfall_engine::state::{RunStatus, Trigger};
use landfall_engine::store::{Batch, RedbStore, Store};
use landfall_engine::{compile, Engine, NewRun, Registry, RunControl, Source};
use serde_json::{json, Value};

mod common;
use common::{chain, Pause};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The process's peak resident memory so far (`VmHWM`), in MB.
fn peak_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let runs = env_u64("BENCH_RUNS", 1000) as usize;
    let ms = env_u64("BENCH_STEP_MS", 200);
    let rounds = env_u64("BENCH_ROUNDS", 3).max(1);
    let dir = tempfile::tempdir().expect("temp dir");
    let fsync = {
        let mut f = std::fs::File::create(dir.path().join("probe")).expect("probe");
        let start = Instant::now();
        for _ in 0..200 {
            f.write_all(&[7u8; 4096]).expect("write");
            f.sync_data().expect("fdatasync");
        }
        start.elapsed() / 200
    };
    let commit = {
        let store = RedbStore::open(&dir.path().join("commit.redb")).expect("open");
        let start = Instant::now();
        for i in 0..100 {
            let mut b = Batch::default();
            b.annotations.push((format!("p{i}"), "k".into(), json!(i)));
            store.commit(b).expect("commit");
        }
        start.elapsed() / 100
    };
    println!(
        "raw fdatasync (4 KiB): {:.0} µs; durable redb commit of one small row: {:.0} µs",
        fsync.as_secs_f64() * 1e6,
        commit.as_secs_f64() * 1e6
    );
    println!("== {runs} concurrent runs of a 5-step chain, each step waiting {ms} ms, redb");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut reg = Registry::new();
    reg.register(Pause);
    let reg = Arc::new(reg);
    let wf = Arc::new(
        compile(&Source::new("chain.yaml", chain(ms)), &reg)
            .workflow
            .expect("the bench workflow compiles"),
    );
    let before = peak_mb();
    for round in 0..rounds {
        let path = dir.path().join(format!("runs-{round}.redb"));
        let store: Arc<dyn Store> = if std::env::var("BENCH_STORE").as_deref() == Ok("mem") {
            Arc::new(landfall_engine::store::MemStore::new())
        } else {
            Arc::new(RedbStore::open(&path).expect("open"))
        };
        let engine = Arc::new(Engine::new(Arc::clone(&reg), store));
        let start = Instant::now();
        let statuses = rt.block_on(async {
            let mut handles = Vec::with_capacity(runs);
            for _ in 0..runs {
                let rec = engine
                    .create_run(
                        &wf,
                        NewRun {
                            run_id: None,
                            inputs: Default::default(),
                            trigger: Trigger {
                                source: "bench".into(),
                                actor: "bench".into(),
                                details: Value::Null,
                            },
                            max_parallel: 1,
                            plan: None,
                        },
                    )
                    .expect("create run");
                let (engine, wf) = (Arc::clone(&engine), Arc::clone(&wf));
                handles.push(tokio::spawn(async move {
                    engine
                        .execute(wf, rec, RunControl::default(), &[])
                        .await
                        .map(|o| o.status)
                }));
            }
            let mut out = Vec::with_capacity(runs);
            for h in handles {
                out.push(h.await.expect("join").expect("execute"));
            }
            out
        });
        let wall = start.elapsed();
        assert!(statuses.iter().all(|s| *s == RunStatus::Succeeded));
        let steps = (runs * 5) as f64;
        let waiting = Duration::from_millis(ms * 5);
        println!(
            "round {round}: {:.2} s wall ({:.2} s of it the steps' own waiting), {:.0} runs/s, {:.0} steps/s, peak memory {:.1} MB (before the runs: {:.1} MB)",
            wall.as_secs_f64(),
            waiting.as_secs_f64(),
            runs as f64 / wall.as_secs_f64(),
            steps / wall.as_secs_f64(),
            peak_mb(),
            before,
        );
    }
}
