//! Workers sharing one PostgreSQL store (issue 17): 300 concurrent runs of a 5-step chain,
//! taken and executed by 1 and then 3 worker processes, as `serve` workers take them
//! (`Store::take_runs`, `FOR UPDATE SKIP LOCKED`, a lease per run).
//!
//! `cargo bench -p landfall-engine --bench workers` (release build). Prints, per worker count,
//! the wall time from the first take to the last run finished and the steps per second, and
//! how many runs each worker executed. The server is the one `scripts/postgres.sh` starts
//! (or `LANDFALL_TEST_DB`'s); each round fills a database of its own. `BENCH_RUNS` (300),
//! `BENCH_STEP_MS` (0: steps do nothing, so the store is what is measured), `BENCH_ROUNDS` (3).

use std::sync::Arc;
use std::time::{Duration, Instant};

use landfall_engine::state::{RunStatus, Trigger};
use landfall_engine::store::{PgStore, Store, DEFAULT_LEASE};
use landfall_engine::{compile, Engine, NewRun, Registry, RunControl, Source};
use serde_json::Value;

mod common;
use common::{chain, Pause};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn registry() -> Arc<Registry> {
    let mut reg = Registry::new();
    reg.register(Pause);
    Arc::new(reg)
}

/// One worker process: takes runs until every run of the database has finished; prints how
/// many it executed.
fn worker(url: &str) {
    let store: Arc<dyn Store> = Arc::new(PgStore::open(url, DEFAULT_LEASE).expect("open"));
    let reg = registry();
    let engine = Arc::new(Engine::new(Arc::clone(&reg), Arc::clone(&store)));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let executed = rt.block_on(async {
        let mut handles = Vec::new();
        loop {
            let s = Arc::clone(&store);
            let taken = tokio::task::spawn_blocking(move || s.take_runs("bench", 32))
                .await
                .expect("join")
                .expect("take runs");
            if taken.is_empty() {
                let s = Arc::clone(&store);
                let open = tokio::task::spawn_blocking(move || s.runs())
                    .await
                    .expect("join")
                    .expect("runs")
                    .iter()
                    .any(|r| !r.status.is_terminal());
                if !open {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            for run in taken {
                let (engine, store, reg) =
                    (Arc::clone(&engine), Arc::clone(&store), Arc::clone(&reg));
                handles.push(tokio::spawn(async move {
                    let Ok(Some(rec)) = store.run(&run) else {
                        return;
                    };
                    let src = Source::new(rec.workflow_file.clone(), rec.workflow_text.clone());
                    let wf = Arc::new(compile(&src, &reg).workflow.expect("compiles"));
                    let out = engine.execute(wf, rec, RunControl::default(), &[]).await;
                    assert_eq!(out.expect("executes").status, RunStatus::Succeeded);
                }));
            }
        }
        let n = handles.len();
        for h in handles {
            h.await.expect("run task");
        }
        n
    });
    println!("executed {executed}");
}

fn main() {
    if let Ok(url) = std::env::var("BENCH_WORKER_DB") {
        return worker(&url);
    }
    let runs = env_u64("BENCH_RUNS", 300) as usize;
    let ms = env_u64("BENCH_STEP_MS", 0);
    let rounds = env_u64("BENCH_ROUNDS", 3).max(1);
    let reg = registry();
    let wf = compile(&Source::new("chain.yaml", chain(ms)), &reg)
        .workflow
        .expect("bench workflow compiles");
    println!("{runs} runs of a 5-step chain, steps waiting {ms} ms, on PostgreSQL");
    for workers in [1usize, 3] {
        let mut rates = Vec::new();
        for round in 0..rounds {
            let url = landfall_engine::store::pg_testing::database();
            {
                let store: Arc<dyn Store> =
                    Arc::new(PgStore::open(&url, DEFAULT_LEASE).expect("open"));
                let engine = Engine::new(Arc::clone(&reg), store);
                for _ in 0..runs {
                    engine
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
                                max_parallel: 4,
                            },
                        )
                        .expect("create run");
                }
            }
            let exe = std::env::current_exe().expect("own path");
            let t = Instant::now();
            let children: Vec<_> = (0..workers)
                .map(|_| {
                    std::process::Command::new(&exe)
                        .env("BENCH_WORKER_DB", &url)
                        .stdout(std::process::Stdio::piped())
                        .spawn()
                        .expect("spawn worker")
                })
                .collect();
            let mut shares = Vec::new();
            for c in children {
                let out = c.wait_with_output().expect("worker");
                assert!(out.status.success(), "a worker failed");
                shares.push(
                    String::from_utf8_lossy(&out.stdout)
                        .trim()
                        .replace("executed ", ""),
                );
            }
            let d = t.elapsed();
            let rate = (runs * 5) as f64 / d.as_secs_f64();
            rates.push(rate);
            println!(
                "{workers} worker(s), round {round}: {runs} runs in {:.2} s = {rate:.0} steps/s (runs per worker: {})",
                d.as_secs_f64(),
                shares.join(", ")
            );
        }
        rates.sort_by(f64::total_cmp);
        println!(
            "{workers} worker(s): median {:.0} steps/s over {rounds} rounds",
            rates[rates.len() / 2]
        );
    }
}
