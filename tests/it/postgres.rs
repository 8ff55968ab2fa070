//! The shared store on PostgreSQL (a database of its own per test, on the server
//! `scripts/postgres.sh` starts): the CLI on it, and `migrate` from a state file.

use std::time::Duration;

use landfall_engine::store::pg_testing;

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
