//! The shared store on PostgreSQL (a database of its own per test, on the server
//! `scripts/postgres.sh` starts): the CLI on it, and `migrate` from a state file.

use std::time::Duration;

use landfall_engine::store::pg_testing;

use crate::serve::{approval_click, command, oauth_app, signed, workflows};
use crate::support::{node, stderr, stdout, wait_until, Sandbox};

const GATED: &str = r#"
name: gated
steps:
  - id: build
    uses: log
    for_each: [a, b]
    with: { message: "built {{ item }}" }
  - id: approve
    uses: approval
    needs: [build]
    with: { title: "Ship", digest: "abc123def456789", timeout: 10m }
  - id: ship
    uses: log
    needs: [approve]
    with: { message: "shipped" }
"#;

/// A state file with a finished run and one killed while it waited for an approval moves to
/// PostgreSQL: every chain verifies there, the approval is given there, the killed run
/// resumes there and finishes; a second migration into the same database is refused.
#[test]
fn a_state_file_moves_to_postgres_and_its_runs_go_on_there() {
    let sb = Sandbox::new();
    sb.write("gated.yaml", GATED);
    sb.write(
        "hello.yaml",
        "name: hello\nsteps:\n  - { id: a, uses: log, with: { message: hi } }\n",
    );
    assert!(sb
        .run(&["run", "hello.yaml", "--run-id", "done-1"])
        .status
        .success());
    let mut child = sb.spawn(&["run", "gated.yaml", "--run-id", "gate-1"]);
    wait_until("the approval to wait", Duration::from_secs(60), || {
        let out = sb.run(&["status", "gate-1", "--json"]);
        out.status.success()
            && serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .ok()
                .and_then(|d| d["nodes"].as_array().cloned())
                .is_some_and(|ns| {
                    ns.iter()
                        .any(|n| n["id"] == "approve" && n["status"] == "waiting")
                })
    });
    child.kill().unwrap();
    child.wait().unwrap();

    let url = pg_testing::database();
    let out = sb.run(&[
        "migrate",
        "--from",
        ".landfall/state.redb",
        "--to",
        &url,
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let copied: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(copied["runs"], 2);
    assert_eq!(copied["broken_chains"], serde_json::json!([]));
    assert!(
        !stdout(&out).contains(url.split('@').next().unwrap().rsplit(':').next().unwrap()),
        "the password is not printed"
    );

    let on_pg = |args: &[&str]| {
        let mut a = vec!["--db", url.as_str()];
        a.extend_from_slice(args);
        sb.run(&a)
    };
    for run in ["done-1", "gate-1"] {
        let v = on_pg(&["audit", run, "--verify"]);
        assert_eq!(v.status.code(), Some(0), "{run}: {}", stderr(&v));
    }
    let ok = on_pg(&["approve", "gate-1", "approve", "--digest", "abc123"]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    let resumed = on_pg(&["resume", "gate-1", "--json"]);
    assert_eq!(resumed.status.code(), Some(0), "{}", stderr(&resumed));
    let doc: serde_json::Value = serde_json::from_slice(&resumed.stdout).unwrap();
    assert_eq!(node(&doc, "ship")["status"], "succeeded");
    assert_eq!(node(&doc, "build[1]")["status"], "succeeded");
    assert_eq!(
        on_pg(&["audit", "gate-1", "--verify"]).status.code(),
        Some(0)
    );

    let again = sb.run(&["migrate", "--from", ".landfall/state.redb", "--to", &url]);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        stderr(&again).contains("empty database"),
        "{}",
        stderr(&again)
    );
    // The source was left as it was.
    let st = sb.json(&["status", "gate-1", "--json"]);
    assert_ne!(st["status"], "succeeded");
}

const WORK: &str = r#"
name: work
trigger:
  slack: { command: work, args: [n] }
inputs:
  n: { type: string }
steps:
  - id: a
    uses: exec
    with: { argv: [sh, -c, "sleep 0.3; mkdir \"$LEDGER/$LANDFALL_IDEMPOTENCY_KEY\" 2>/dev/null && echo \"applied $LANDFALL_IDEMPOTENCY_KEY\" >> \"$LEDGER.log\"; echo '{}'"] }
  - id: b
    uses: exec
    needs: [a]
    with: { argv: [sh, -c, "sleep 0.3; mkdir \"$LEDGER/$LANDFALL_IDEMPOTENCY_KEY\" 2>/dev/null && echo \"applied $LANDFALL_IDEMPOTENCY_KEY\" >> \"$LEDGER.log\"; echo '{}'"] }
  - { id: c, uses: log, needs: [b], with: { message: "done {{ inputs.n }}" } }
"#;

/// A `serve` worker on the database `url` with a 2 s lease, allowing U1; `more` adds to its
/// command.
fn worker(
    sb: &Sandbox,
    url: &str,
    more: impl FnOnce(&mut std::process::Command),
) -> crate::serve::Server {
    let url = url.to_string();
    crate::serve::serve_with(sb, &["U1"], move |c| {
        c.env("LANDFALL_DB", &url).env("LANDFALL_LEASE", "2s");
        more(c);
    })
}

/// Whether `node` of `run` has started (its first transition is in the audit).
fn started(sb: &Sandbox, url: &str, run: &str, node: &str) -> bool {
    audit_of(sb, url, run)
        .iter()
        .any(|e| e["kind"] == "node_transition" && e["node"] == node)
}

fn runs_on(sb: &Sandbox, url: &str) -> Vec<serde_json::Value> {
    let out = sb.run(&["--db", url, "status", "--json", "--limit", "1000"]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// Three `serve` workers on one PostgreSQL, 30 runs asked for through Slack requests spread
/// over them, one worker killed with `kill -9` mid-way: every run finishes (the dead worker's
/// runs resumed by the others once its leases expired), each side effect applied once under
/// one idempotency key, every chain verifies; a delivery Slack retries on another worker
/// starts nothing twice.
#[test]
fn three_workers_share_thirty_runs_and_survive_losing_one() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.path("wf")).unwrap();
    sb.write("wf/work.yaml", WORK);
    let ledger = sb.path("ledger");
    std::fs::create_dir_all(&ledger).unwrap();
    let url = pg_testing::database();
    let start = || {
        let ledger = ledger.clone();
        worker(&sb, &url, move |c| {
            c.env("LEDGER", &ledger);
        })
    };
    let mut workers = [start(), start(), start()];
    for i in 0..30 {
        let w = &workers[i % 3];
        let (code, text) = signed(
            w,
            "/slack/commands",
            &command("U1", &format!("work {i}"), &format!("t{i}")),
        );
        assert_eq!(code, 200, "{text}");
        assert!(text.contains("Started work"), "{text}");
    }
    // Slack retries a delivery on another worker: it is recognised.
    let (_, again) = signed(
        &workers[1],
        "/slack/commands",
        &command("U1", "work 0", "t0"),
    );
    assert!(again.contains("Already on it"), "{again}");

    wait_until(
        "a third of the runs to finish",
        Duration::from_secs(120),
        || {
            runs_on(&sb, &url)
                .iter()
                .filter(|r| r["status"] == "succeeded")
                .count()
                >= 10
        },
    );
    workers[0].kill_9();
    wait_until("every run to finish", Duration::from_secs(180), || {
        let runs = runs_on(&sb, &url);
        runs.len() == 30 && runs.iter().all(|r| r["status"] == "succeeded")
    });
    let runs = runs_on(&sb, &url);
    assert_eq!(runs.len(), 30, "one run per request");
    let mut resumed = 0;
    for r in &runs {
        let id = r["run_id"].as_str().unwrap();
        let v = sb.run(&["--db", &url, "audit", id, "--verify"]);
        assert_eq!(v.status.code(), Some(0), "{id}: {}", stderr(&v));
        let audit = sb.run(&["--db", &url, "audit", id, "--json"]);
        let entries: serde_json::Value = serde_json::from_slice(&audit.stdout).unwrap();
        if entries
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "run_resumed")
        {
            resumed += 1;
        }
    }
    assert!(
        resumed > 0,
        "the killed worker's runs were resumed by the others"
    );
    let log = std::fs::read_to_string(sb.path("ledger.log")).unwrap();
    let mut applied: Vec<&str> = log.lines().collect();
    let n = applied.len();
    applied.sort_unstable();
    applied.dedup();
    assert_eq!(applied.len(), n, "a side effect applied twice");
    // One entry per key (a node run again under another key would add one); the log may
    // miss the line of an attempt killed between its effect and its line.
    let keys = std::fs::read_dir(&ledger).unwrap().count();
    assert_eq!(keys, 60, "two side effects per run, each under one key");
    assert!(n >= 58, "{n} effects logged");
    // For RELIABILITY.md (`--nocapture`).
    println!(
        "workers: 30 runs finished, {resumed} resumed after the kill, {keys} side effects under {keys} keys, 0 applied twice"
    );
}

const SLOW: &str = r#"
name: slow
trigger:
  slack: { command: slow }
steps:
  - id: a
    uses: exec
    with: { argv: [sh, -c, "sleep 3; echo '{}'"] }
  - { id: b, uses: log, needs: [a], with: { message: done } }
"#;

fn audit_of(sb: &Sandbox, url: &str, run: &str) -> Vec<serde_json::Value> {
    let out = sb.run(&["--db", url, "audit", run, "--json"]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

/// A worker stopped (SIGSTOP) past its lease while its run waits on a step: another worker
/// takes the run over and finishes it; the first, continued, writes nothing more (its
/// commit is refused: its lease is gone) and says so.
#[test]
fn a_worker_paused_past_its_lease_writes_nothing_when_it_wakes() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.path("wf")).unwrap();
    sb.write("wf/slow.yaml", SLOW);
    let url = pg_testing::database();
    let start = || worker(&sb, &url, |_| {});
    let a = start();
    let (_, text) = signed(&a, "/slack/commands", &command("U1", "slow", "s1"));
    assert!(text.contains("Started slow"), "{text}");
    let run = runs_on(&sb, &url)[0]["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_until("a to take the run", Duration::from_secs(30), || {
        started(&sb, &url, &run, "a")
    });
    a.signal("STOP");
    let b = start();
    wait_until("b to finish the run", Duration::from_secs(60), || {
        runs_on(&sb, &url)[0]["status"] == "succeeded"
    });
    let before = audit_of(&sb, &url, &run);
    a.signal("CONT");
    wait_until("a to find its lease gone", Duration::from_secs(30), || {
        a.log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("no longer holds the lease"))
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        audit_of(&sb, &url, &run),
        before,
        "nothing written after the take-over"
    );
    let v = sb.run(&["--db", &url, "audit", &run, "--verify"]);
    assert_eq!(v.status.code(), Some(0), "{}", stderr(&v));
    assert!(before.iter().any(|e| e["kind"] == "run_resumed"));
    drop(b);
}

/// PostgreSQL restarted while runs wait on their steps: workers reconnect, and every run
/// finishes.
#[test]
fn runs_finish_when_postgres_restarts_under_them() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.path("wf")).unwrap();
    sb.write("wf/slow.yaml", SLOW);
    // A server of this test's own: the shared one serves the other tests meanwhile.
    let dir = sb.path("pg");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/postgres.sh");
    let pg = |what: &str| {
        let out = std::process::Command::new("bash")
            .args([script, what, dir.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let url = pg("start")
        .lines()
        .find_map(|l| l.strip_prefix("LANDFALL_DB="))
        .unwrap()
        .to_string();
    let workers: Vec<_> = (0..2).map(|_| worker(&sb, &url, |_| {})).collect();
    for i in 0..6 {
        let (_, text) = signed(
            &workers[i % 2],
            "/slack/commands",
            &command("U1", "slow", &format!("r{i}")),
        );
        assert!(text.contains("Started slow"), "{text}");
    }
    std::thread::sleep(Duration::from_millis(1500));
    pg("stop");
    std::thread::sleep(Duration::from_secs(2));
    pg("start");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let runs = runs_on(&sb, &url);
        if runs.len() == 6 && runs.iter().all(|r| r["status"] == "succeeded") {
            break;
        }
        if std::time::Instant::now() > deadline {
            let logs: Vec<String> = workers
                .iter()
                .flat_map(|w| w.log.lock().unwrap().clone())
                .collect();
            let states: Vec<String> = runs
                .iter()
                .map(|r| format!("{} {}", r["run_id"], r["status"]))
                .collect();
            panic!("not every run finished: {states:#?}\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    for r in runs_on(&sb, &url) {
        let id = r["run_id"].as_str().unwrap();
        let v = sb.run(&["--db", &url, "audit", id, "--verify"]);
        assert_eq!(v.status.code(), Some(0), "{id}: {}", stderr(&v));
    }
    drop(workers);
    pg("stop");
}

/// `/landfall cancel` reaching a worker that does not execute the run: the worker that does
/// cancels it within a poll.
#[test]
fn a_cancel_reaching_another_worker_cancels_the_run() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.path("wf")).unwrap();
    sb.write("wf/slow.yaml", &SLOW.replace("sleep 3", "sleep 30"));
    let url = pg_testing::database();
    let start = || worker(&sb, &url, |_| {});
    let a = start();
    let (_, text) = signed(&a, "/slack/commands", &command("U1", "slow", "c1"));
    assert!(text.contains("Started slow"), "{text}");
    let run = runs_on(&sb, &url)[0]["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_until("a to run the step", Duration::from_secs(30), || {
        started(&sb, &url, &run, "a")
    });
    let b = start();
    let (_, text) = signed(
        &b,
        "/slack/commands",
        &command("U1", &format!("cancel {run}"), "c2"),
    );
    assert!(text.contains("on the worker that runs it"), "{text}");
    wait_until("the run to be cancelled", Duration::from_secs(20), || {
        runs_on(&sb, &url)[0]["status"] == "cancelled"
    });
    drop((a, b));
}

/// An OAuth install started at one worker completes at another (Slack's redirect may reach
/// any worker behind the balancer): the pending `state` lives in the store, used once.
#[test]
fn an_install_started_at_one_worker_completes_at_another() {
    let api = crate::slack_api::SlackApi::start(0);
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.path("wf")).unwrap();
    sb.write("wf/slow.yaml", SLOW);
    let url = pg_testing::database();
    let start = || worker(&sb, &url, |c| oauth_app(c, &api.url));
    let (a, b) = (start(), start());
    let mut link = sb.cmd(&[
        "--db",
        &url,
        "slack",
        "install-link",
        "--json",
        "--base-url",
        &a.base,
    ]);
    oauth_app(&mut link, &api.url);
    let out = link.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let link: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let r = agent.get(link["url"].as_str().unwrap()).call().unwrap();
    assert_eq!(r.status(), 302);
    let location = r.header("location").unwrap().to_string();
    let cookie = r
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let state = location
        .split("state=")
        .nth(1)
        .unwrap()
        .split('&')
        .next()
        .unwrap()
        .to_string();
    let callback = |base: &str| match agent
        .get(&format!("{base}/slack/oauth/callback?code=c&state={state}"))
        .set("Cookie", &cookie)
        .call()
    {
        Ok(r) => r.status(),
        Err(ureq::Error::Status(code, _)) => code,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(callback(&b.base), 200, "completed at the other worker");
    assert_eq!(
        callback(&a.base),
        403,
        "a state is used once, at any worker"
    );

    // One link presented to both workers at the same instant starts one install.
    for round in 0..12 {
        let mut make = sb.cmd(&["--db", &url, "slack", "install-link", "--json"]);
        oauth_app(&mut make, &api.url);
        let out = make.output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let query = made["url"]
            .as_str()
            .unwrap()
            .split_once("/slack/install")
            .unwrap()
            .1
            .to_string();
        let gate = std::sync::Barrier::new(2);
        let statuses: Vec<u16> = std::thread::scope(|s| {
            let tries: Vec<_> = [&a.base, &b.base]
                .into_iter()
                .map(|base| {
                    let (agent, gate, query) = (&agent, &gate, &query);
                    s.spawn(move || {
                        gate.wait();
                        match agent.get(&format!("{base}/slack/install{query}")).call() {
                            Ok(r) => r.status(),
                            Err(ureq::Error::Status(code, _)) => code,
                            Err(e) => panic!("{e}"),
                        }
                    })
                })
                .collect();
            tries.into_iter().map(|t| t.join().unwrap()).collect()
        });
        let mut sorted = statuses.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [302, 403], "round {round}: {statuses:?}");
    }
}

/// An approval button clicked in Slack may reach any worker: the worker that runs the run
/// picks the decision up from the store.
#[test]
fn an_approval_reaching_another_worker_resumes_the_run() {
    let sb = Sandbox::new();
    workflows(&sb);
    let url = pg_testing::database();
    let start = || worker(&sb, &url, |_| {});
    let a = start();
    let (_, reply) = signed(&a, "/slack/commands", &command("U1", "ship", "p1"));
    assert!(reply.contains("Started gated"), "{reply}");
    let run = runs_on(&sb, &url)[0]["run_id"]
        .as_str()
        .unwrap()
        .to_string();
    wait_until("the approval to wait", Duration::from_secs(60), || {
        let out = sb.run(&["--db", &url, "status", &run, "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .is_ok_and(|d| node(&d, "approve")["status"] == "waiting")
    });
    let b = start();
    let click = approval_click("U1", &run, "approve", "d-42");
    assert_eq!(signed(&b, "/slack/interactions", &click).0, 200);
    wait_until("the run to finish", Duration::from_secs(60), || {
        runs_on(&sb, &url)[0]["status"] == "succeeded"
    });
    let out = sb.run(&["--db", &url, "status", &run, "--json"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(node(&doc, "approve")["outputs"]["by"], "U1");
    drop((a, b));
}
