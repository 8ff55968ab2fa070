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
