//! `landfall-fuzz TARGET SECONDS [SEED]`: one target for a while, from its corpus; prints the
//! executions, the panics (inputs kept in `fuzz/crashes/TARGET/`) and the peak memory. Exit 1
//! when an input panicked, 2 on bad arguments. `scripts/fuzz.sh` is the usual way in.

use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = || {
        eprintln!(
            "usage: landfall-fuzz TARGET SECONDS [SEED]\ntargets: {}",
            landfall_fuzz::TARGETS.join(", ")
        );
        std::process::exit(2);
    };
    let (Some(name), Some(secs)) = (
        args.first(),
        args.get(1).and_then(|s| s.parse::<u64>().ok()),
    ) else {
        usage();
        return;
    };
    let Some(target) = landfall_fuzz::target(name) else {
        usage();
        return;
    };
    let seed = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(0);
    let root = landfall_fuzz::repo().join("fuzz");
    let seeds = landfall_fuzz::corpus(&root.join("corpus").join(name));
    let out = landfall_fuzz::run(
        target,
        &seeds,
        Duration::from_secs(secs),
        seed,
        Some(&root.join("crashes").join(name)),
    );
    println!(
        "{name}: {} executions in {secs} s ({:.0}/s) from {} seeds, seed {seed}; {} panicking input(s); peak memory {}",
        out.executions,
        out.executions as f64 / secs.max(1) as f64,
        seeds.len(),
        out.panics.len(),
        out.peak_kib
            .map_or_else(|| "unknown".into(), |k| format!("{:.1} MB", k as f64 / 1024.0))
    );
    for p in &out.panics {
        println!("  panicked: {}", p.display());
    }
    if !out.panics.is_empty() {
        std::process::exit(1);
    }
}
