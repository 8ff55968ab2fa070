//! Fleet scale across processes (issue 16): concurrency keys held in the state file, seen by
//! every `landfall` process that shares it.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{stderr, Sandbox};

const KEYED: &str = r#"
name: keyed
inputs: { customer: { type: string } }
concurrency: { key: "{{ inputs.customer }}", limit: 1, on_conflict: queue }
steps:
  - { id: work, uses: wait, with: { duration: 2s } }
"#;

fn status(sb: &Sandbox, run: &str) -> Value {
    let out = sb.cmd(&["status", run, "--json"]).output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// Two `landfall run` processes, one state file, one customer: the second waits `queued`
/// (as `status` shows from a third process) and runs once the first is done; a third run
/// for another customer is not held up; a refusing workflow ends with exit 4.
#[test]
fn a_second_process_queues_behind_the_first_for_the_same_key() {
    let sb = Sandbox::new();
    let wf = sb.write("keyed.yaml", KEYED);
    let wf = wf.to_str().unwrap();
    let start = |run: &str, customer: &str| {
        sb.cmd(&[
            "run",
            wf,
            "--set",
            &format!("customer={customer}"),
            "--run-id",
            run,
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
    };
    let began = Instant::now();
    let a = start("first", "acme");
    // The first holds the key before the second asks.
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(&sb, "first")["status"] != "running" {
        assert!(Instant::now() < deadline, "the first run never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let b = start("second", "acme");
    let other = start("other", "globex");
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(&sb, "second")["status"] != "queued" {
        assert!(Instant::now() < deadline, "{}", status(&sb, "second"));
        std::thread::sleep(Duration::from_millis(50));
    }
    let listed = sb.cmd(&["status"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("queued"),
        "{}",
        String::from_utf8_lossy(&listed.stdout)
    );

    let (a, b, other) = (
        a.wait_with_output().unwrap(),
        b.wait_with_output().unwrap(),
        other.wait_with_output().unwrap(),
    );
    for out in [&a, &b, &other] {
        assert_eq!(out.status.code(), Some(0), "{}", stderr(out));
    }
    assert!(
        stderr(&b).contains("queued: keyed/acme is taken by first"),
        "{}",
        stderr(&b)
    );
    let node = |doc: &Value| doc["nodes"][0].clone();
    let (a, b) = (status(&sb, "first"), status(&sb, "second"));
    assert!(
        node(&b)["started_at"].as_str() >= node(&a)["finished_at"].as_str(),
        "second started after first ended: {a} {b}"
    );
    // Two 2 s runs one after the other, the other customer's beside them.
    assert!(began.elapsed() >= Duration::from_secs(4));
    let other = status(&sb, "other");
    assert!(node(&other)["started_at"].as_str() < node(&a)["finished_at"].as_str());

    // `on_conflict: refuse`: nothing runs, exit 4, the holder named.
    let refusing = sb.write(
        "refusing.yaml",
        &KEYED.replace("on_conflict: queue", "on_conflict: refuse"),
    );
    let refusing = refusing.to_str().unwrap();
    let holder = sb
        .cmd(&[
            "run",
            refusing,
            "--set",
            "customer=acme",
            "--run-id",
            "holder",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while status(&sb, "holder")["status"] != "running" {
        assert!(Instant::now() < deadline, "the holder never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let refused = sb
        .cmd(&[
            "run",
            refusing,
            "--set",
            "customer=acme",
            "--run-id",
            "refused",
        ])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(4), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("run holder holds it"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(status(&sb, "refused")["status"], "cancelled");
    let mut holder = holder;
    assert!(holder.wait().unwrap().success());
}

/// `landfall redrive` (issue 16): a failed run runs again where it failed, through the
/// binary; a redrive killed with `kill -9` half-way is continued by `resume`.
#[test]
fn redrive_after_a_failure_and_after_a_crash() {
    let sb = Sandbox::new();
    sb.write(
        "flaky.yaml",
        r#"
name: flaky
defaults: { retry: { max_attempts: 1 } }
steps:
  - id: a
    uses: exec
    with: { argv: [sh, -c, 'echo "$LANDFALL_IDEMPOTENCY_KEY" >> a.log'] }
  - id: b
    uses: exec
    needs: [a]
    for_each: [one, two]
    with: { argv: [sh, -c, 'echo "{{ item }} $LANDFALL_IDEMPOTENCY_KEY" >> b.log; [ ! -e broken-{{ item }} ]'] }
  - id: c
    uses: exec
    needs: [b]
    with: { argv: [sh, -c, 'touch c.started; [ -e c.go ] || sleep 30; echo x >> c.log'] }
"#,
    );
    sb.write("broken-two", "");
    sb.write("c.go", "");
    let out = sb.run(&["run", "flaky.yaml", "--run-id", "r1"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));

    // A finished run is not resumed; it is redriven.
    let out = sb.run(&["resume", "r1"]);
    assert!(
        stderr(&out).contains("nothing to resume"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_file(sb.path("broken-two")).unwrap();
    std::fs::remove_file(sb.path("c.go")).unwrap();
    let mut child = sb.spawn(&["redrive", "r1", "--json"]);
    let started = sb.path("c.started");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !started.exists() {
        assert!(Instant::now() < deadline, "step c never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL mid-redrive
    child.wait().unwrap();
    assert_eq!(status(&sb, "r1")["status"], "interrupted");

    sb.write("c.go", "");
    let out = sb.run(&["resume", "r1", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["status"], "succeeded");
    let lines = |f: &str| crate::support::lines(&sb.path(f));
    assert_eq!(lines("a.log").len(), 1, "a succeeded: never run again");
    let b = lines("b.log");
    let ones: Vec<&String> = b.iter().filter(|l| l.starts_with("one ")).collect();
    let twos: Vec<&String> = b.iter().filter(|l| l.starts_with("two ")).collect();
    assert_eq!(ones.len(), 1, "b[0] keeps its result: {b:?}");
    assert_eq!(twos.len(), 2, "b[1] failed, so it ran again: {b:?}");
    assert_eq!(twos[0], twos[1], "with the same idempotency key");
    assert_eq!(lines("c.log").len(), 1);

    let audit = sb.run(&["audit", "r1", "--verify"]);
    assert_eq!(audit.status.code(), Some(0), "{}", stderr(&audit));
    let entries = sb.json(&["audit", "r1", "--json"]);
    let redriven: Vec<&Value> = entries
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "run_redriven")
        .collect();
    assert_eq!(redriven.len(), 1);
    assert_eq!(redriven[0]["details"]["reset"][0]["node"], "b[1]");

    // A succeeded run is redriven only from a named step.
    let out = sb.run(&["redrive", "r1"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = sb.run(&["redrive", "r1", "--from", "c"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(lines("c.log").len(), 2);
    assert_eq!(lines("a.log").len(), 1);
}

/// Runs that call runs (issue 16): `uses: workflow` starts a child run with its own
/// checkpoints and audit chain, linked both ways; the parent killed with `kill -9` while the
/// child runs is resumed, finds its child and continues it — no second child, no step of the
/// child done twice.
#[test]
fn a_parent_resumed_after_kill_9_continues_its_child_instead_of_starting_another() {
    let sb = Sandbox::new();
    sb.write(
        "child.yaml",
        r#"
name: child
inputs: { tag: { type: string } }
steps:
  - id: one
    uses: exec
    with: { argv: [sh, -c, 'echo "{{ inputs.tag }} $LANDFALL_RUN_ID" >> child-one.log'] }
  - id: two
    uses: exec
    needs: [one]
    with: { argv: [sh, -c, 'touch two.started; [ -e two.go ] || sleep 30; echo x >> child-two.log'] }
"#,
    );
    sb.write(
        "parent.yaml",
        r#"
name: parent
steps:
  - { id: before, uses: exec, with: { argv: [sh, -c, 'echo x >> before.log'] } }
  - id: child
    uses: workflow
    needs: [before]
    with: { file: child.yaml, inputs: { tag: hello } }
  - id: after
    uses: exec
    needs: [child]
    with: { argv: [sh, -c, 'echo "{{ steps.child.outputs.run_id }} {{ steps.child.outputs.status }}" >> after.log'] }
"#,
    );
    let mut parent = sb.spawn(&["run", "parent.yaml", "--run-id", "p1"]);
    let started = sb.path("two.started");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !started.exists() {
        assert!(
            Instant::now() < deadline,
            "the child's second step never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    parent.kill().unwrap(); // SIGKILL: parent and child die together (one process)
    parent.wait().unwrap();
    assert_eq!(status(&sb, "p1")["status"], "interrupted");
    let child = status(&sb, "p1--child");
    assert_eq!(child["status"], "interrupted", "{child}");
    assert_eq!(child["parent"]["run_id"], "p1");
    assert_eq!(status(&sb, "p1")["children"][0]["run_id"], "p1--child");

    sb.write("two.go", "");
    let out = sb.run(&["resume", "p1", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let runs = sb.json(&["status", "--json"]);
    let ids: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["run_id"].as_str())
        .collect();
    assert_eq!(ids.len(), 2, "one parent, one child: {ids:?}");
    assert_eq!(status(&sb, "p1--child")["status"], "succeeded");
    let lines = |f: &str| crate::support::lines(&sb.path(f));
    assert_eq!(lines("before.log").len(), 1);
    assert_eq!(lines("child-one.log"), vec!["hello p1--child".to_string()]);
    assert_eq!(lines("child-two.log").len(), 1);
    assert_eq!(lines("after.log"), vec!["p1--child succeeded".to_string()]);
    for run in ["p1", "p1--child"] {
        let v = sb.run(&["audit", run, "--verify"]);
        assert_eq!(v.status.code(), Some(0), "{run}: {}", stderr(&v));
    }
}
