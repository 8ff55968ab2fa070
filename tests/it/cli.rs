//! End-to-end tests of the `landfall` binary: exit codes, JSON shapes, crash and resume.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

#[test]
fn the_example_runs_and_reports_the_documented_json() {
    let sb = Sandbox::new();
    sb.copy("examples/hello.yaml");
    sb.copy("examples/hello-input.yaml");
    let out = sb.run(&["run", "hello.yaml", "--input", "hello-input.yaml", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in [
        "run_id",
        "workflow",
        "status",
        "started_at",
        "finished_at",
        "nodes",
    ] {
        assert!(doc.get(key).is_some(), "missing {key} in {doc}");
    }
    assert_eq!(doc["status"], "succeeded");
    let ids: Vec<&str> = doc["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "greet",
            "per_region[0]",
            "per_region[1]",
            "per_region[2]",
            "report",
            "on_error"
        ]
    );
    assert_eq!(
        node(&doc, "per_region[1]")["outputs"],
        json!({"stdout": "eu-west-1\n"})
    );
    assert_eq!(node(&doc, "report")["outputs"]["message"], "3 regions done");
    assert_eq!(node(&doc, "on_error")["status"], "skipped");
    for key in [
        "id",
        "status",
        "attempts",
        "started_at",
        "finished_at",
        "outputs",
        "error",
    ] {
        assert!(node(&doc, "greet").get(key).is_some(), "node lacks {key}");
    }
    assert!(stderr(&out).contains("greet: Onboarding acme"));
    assert_eq!(doc["inputs"]["customer"], "acme");

    let list = sb.json(&["status", "--json"]);
    assert_eq!(list[0]["run_id"], doc["run_id"]);
    let again = sb.json(&["status", doc["run_id"].as_str().unwrap(), "--json"]);
    assert_eq!(again["nodes"], doc["nodes"]);
}

#[test]
fn a_failed_step_fails_the_run_and_runs_the_failure_branch() {
    let sb = Sandbox::new();
    sb.write(
        "fail.yaml",
        r#"
name: fail
steps:
  - { id: boom, uses: exec, with: { argv: [sh, -c, "echo it broke >&2; exit 3"] } }
  - { id: after, uses: log, needs: [boom], with: { message: never } }
  - id: on_error
    uses: log
    needs: [after]
    when: failure()
    with: { message: "failed: {{ steps.boom.error.message }}" }
"#,
    );
    let out = sb.run(&["run", "fail.yaml", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["status"], "failed");
    let boom = node(&doc, "boom");
    assert_eq!(boom["error"]["class"], "permanent");
    assert!(boom["error"]["message"]
        .as_str()
        .unwrap()
        .contains("it broke"));
    assert_eq!(boom["attempts"], 1, "permanent errors are not retried");
    assert_eq!(node(&doc, "after")["status"], "skipped");
    assert_eq!(node(&doc, "on_error")["status"], "succeeded");
    assert!(node(&doc, "on_error")["outputs"]["message"]
        .as_str()
        .unwrap()
        .contains("it broke"));
}

#[test]
fn exit_75_is_retried() {
    let sb = Sandbox::new();
    sb.write(
        "flaky.yaml",
        r#"
name: flaky
defaults: { retry: { max_attempts: 3, initial_delay: 10ms, max_delay: 20ms } }
steps:
  - id: once
    uses: exec
    with: { argv: [sh, -c, "if [ -e tried ]; then echo '{\"ok\": true}'; else touch tried; exit 75; fi"] }
"#,
    );
    let out = sb.run(&["run", "flaky.yaml", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(node(&doc, "once")["attempts"], 2);
    assert_eq!(node(&doc, "once")["outputs"], json!({"ok": true}));
}

#[test]
fn invalid_input_is_refused_before_anything_runs() {
    let sb = Sandbox::new();
    sb.copy("examples/hello.yaml");
    let out = sb.run(&[
        "run",
        "hello.yaml",
        "--set",
        "customer=A!",
        "--set",
        "regoins=[x]",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("input `customer`"), "{err}");
    assert!(err.contains("did you mean `regions`"), "{err}");
    let out = sb.run(&["run", "hello.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("required string input is missing"),
        "{}",
        stderr(&out)
    );
    assert_eq!(sb.json(&["status", "--json"]), json!([]));
}

#[test]
fn validate_reports_every_error_and_exits_2() {
    let sb = Sandbox::new();
    sb.copy("examples/hello.yaml");
    let ok = sb.run(&["validate", "hello.yaml"]);
    assert_eq!(ok.status.code(), Some(0));
    let bad = sb.copy("tests/fixtures/invalid/LF0105-cycle.yaml");
    let out = sb.run(&["validate", "hello.yaml", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let out = sb.run(&["validate", "--json", "LF0105-cycle.yaml"]);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = &doc[0]["diagnostics"];
    assert_eq!(d.as_array().unwrap().len(), 2);
    assert_eq!(d[0]["code"], "LF0105");
    assert_eq!(d[0]["line"], 5);
    assert!(d[0]["message"].as_str().unwrap().contains("a → b → c → a"));
    let missing = sb.run(&["validate", "nope.yaml"]);
    assert_eq!(missing.status.code(), Some(2));
    // The one code without a corpus case (tests/it/diagnostics.rs): a file that cannot be read.
    let missing = sb.run(&["validate", "--json", "nope.yaml"]);
    let doc: serde_json::Value = serde_json::from_slice(&missing.stdout).unwrap();
    assert_eq!(doc[0]["diagnostics"][0]["code"], "LF0003");
}

#[test]
fn the_same_run_id_resumes_instead_of_duplicating() {
    let sb = Sandbox::new();
    sb.copy("examples/hello.yaml");
    let first = sb.run(&[
        "run",
        "hello.yaml",
        "--set",
        "customer=acme",
        "--run-id",
        "fixed",
    ]);
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    let again = sb.run(&[
        "run",
        "hello.yaml",
        "--set",
        "customer=acme",
        "--run-id",
        "fixed",
    ]);
    assert_eq!(again.status.code(), Some(0));
    assert!(
        stderr(&again).contains("already finished"),
        "{}",
        stderr(&again)
    );
    assert_eq!(sb.json(&["status", "--json"]).as_array().unwrap().len(), 1);
    let other = sb.run(&[
        "run",
        "hello.yaml",
        "--set",
        "customer=other",
        "--run-id",
        "fixed",
    ]);
    assert_eq!(other.status.code(), Some(2));
    assert!(
        stderr(&other).contains("different set of inputs"),
        "{}",
        stderr(&other)
    );
}

/// Whether a process lives (a zombie waiting to be reaped does not count).
/// The start time (clock ticks since boot) of live process `pid`; `None` once it is gone or a
/// zombie. With it, a pid the kernel gave to another process is not taken for the first.
fn process_started(pid: &str) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); the start time is field 22.
    (fields.first() != Some(&"Z"))
        .then(|| fields.get(19).map(|s| s.to_string()))
        .flatten()
}

fn process_alive(pid: &str) -> bool {
    process_started(pid).is_some()
}

fn crashy(sb: &Sandbox) {
    sb.write(
        "crashy.yaml",
        r#"
name: crashy
steps:
  - id: a
    uses: exec
    with: { argv: [sh, -c, 'echo "$LANDFALL_IDEMPOTENCY_KEY" >> a.log'] }
  - id: b
    uses: exec
    needs: [a]
    with: { argv: [sh, -c, 'echo $$ > b.sh.pid; [ -e b.go ] || { sleep 30 & echo $! > b.sleep.pid; }; echo "$LANDFALL_IDEMPOTENCY_KEY" >> b.log; wait; echo "{\"done\": \"$LANDFALL_ATTEMPT\"}"'] }
  - id: c
    uses: exec
    needs: [b]
    with: { argv: [sh, -c, 'echo x >> c.log'] }
"#,
    );
}

#[test]
fn kill_9_mid_step_then_resume_finishes_like_an_uninterrupted_run() {
    let sb = Sandbox::new();
    crashy(&sb);
    let mut child = sb.spawn(&["run", "crashy.yaml", "--run-id", "crash-1"]);
    let b_log = sb.path("b.log");
    wait_until("step b to start", Duration::from_secs(60), || {
        b_log.exists()
    });
    child.kill().unwrap(); // SIGKILL: no cleanup of any kind
    child.wait().unwrap();
    // The step's program dies with the engine (its parent-death signal); its own child has
    // no such signal and lives on until the resumed run ends it before b starts again.
    let pid = |f: &str| {
        std::fs::read_to_string(sb.path(f))
            .unwrap()
            .trim()
            .to_string()
    };
    let (sh, sleep) = (pid("b.sh.pid"), pid("b.sleep.pid"));
    wait_until(
        "b's program to die with the engine",
        Duration::from_secs(10),
        || !process_alive(&sh),
    );
    let sleep_started = process_started(&sleep);
    assert!(
        sleep_started.is_some(),
        "the premise: a grandchild outlives kill -9"
    );

    let doc = sb.json(&["status", "crash-1", "--json"]);
    assert_eq!(doc["status"], "interrupted", "{doc}");
    assert_eq!(node(&doc, "a")["status"], "succeeded");
    assert_eq!(node(&doc, "b")["status"], "running");

    // Today's file changes; resume must run the workflow as it was.
    sb.write("crashy.yaml", "name: changed\nsteps: []\n");
    sb.write("b.go", "");
    let out = sb.run(&["resume", "crash-1", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["workflow"], "crashy");
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(
        lines(&sb.path("a.log")).len(),
        1,
        "a succeeded durably: never run again"
    );
    let b = lines(&b_log);
    assert_eq!(b.len(), 2, "b was cut off, so it runs again");
    assert_eq!(b[0], b[1], "with the same idempotency key");
    assert_eq!(lines(&sb.path("c.log")).len(), 1);
    assert_eq!(node(&doc, "b")["attempts"], 2);
    // Killed when the run resumed; a SIGKILL lands when the kernel next schedules the
    // process, which a loaded machine may take a moment to do.
    wait_until(
        "the first attempt's grandchild to be gone",
        Duration::from_secs(10),
        || process_started(&sleep) != sleep_started,
    );
    let audit = sb.run(&["audit", "crash-1", "--verify"]);
    assert_eq!(audit.status.code(), Some(0), "{}", stdout(&audit));
}

#[test]
fn ctrl_c_interrupts_with_a_grace_period_and_resume_continues() {
    let sb = Sandbox::new();
    crashy(&sb);
    let mut cmd = sb.cmd(&["run", "crashy.yaml", "--run-id", "int-1"]);
    cmd.env("LANDFALL_GRACE", "300ms");
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let b_log = sb.path("b.log");
    wait_until("step b to start", Duration::from_secs(60), || {
        b_log.exists()
    });
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("landfall resume int-1"),
        "{}",
        stderr(&out)
    );
    let doc = sb.json(&["status", "int-1", "--json"]);
    assert_eq!(doc["status"], "interrupted");
    assert_eq!(node(&doc, "b")["status"], "pending");
    sb.write("b.go", "");
    let out = sb.run(&["resume", "int-1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(lines(&sb.path("a.log")).len(), 1);
    assert_eq!(lines(&sb.path("c.log")).len(), 1);
}

#[test]
fn audit_verify_finds_the_first_tampered_entry() {
    let sb = Sandbox::new();
    sb.copy("examples/hello.yaml");
    let out = sb.run(&[
        "run",
        "hello.yaml",
        "--set",
        "customer=acme",
        "--run-id",
        "aud",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let ok = sb.run(&["audit", "aud", "--verify", "--json"]);
    assert_eq!(ok.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(v["intact"], true);
    assert!(v["entries"].as_u64().unwrap() > 10);

    let shown = sb.run(&["audit", "aud"]);
    assert!(stdout(&shown).contains("node_transition"));
    {
        use landfall_engine::store::{RedbStore, Store};
        let store = RedbStore::open(&sb.path(".landfall/state.redb")).unwrap();
        let mut entries = store.audit("aud").unwrap();
        entries[4].draft.actor = "mallory".into();
        store.tamper_audit("aud", 4, &entries[4]).unwrap();
    }
    let bad = sb.run(&["audit", "aud", "--verify"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stdout(&bad).contains("BROKEN at entry #4"),
        "{}",
        stdout(&bad)
    );
}

#[test]
fn two_processes_share_the_state_file() {
    let sb = Sandbox::new();
    sb.write(
        "slow.yaml",
        "name: slow\nsteps:\n  - { id: pause, uses: wait, with: { duration: 4s } }\n",
    );
    sb.copy("examples/hello.yaml");
    let slow = sb.spawn(&["run", "slow.yaml", "--run-id", "slow-1"]);
    wait_until(
        "the slow run to be recorded",
        Duration::from_secs(60),
        || {
            let out = sb.run(&["status", "slow-1", "--json"]);
            out.status.success()
                && serde_json::from_slice::<serde_json::Value>(&out.stdout)
                    .is_ok_and(|d| node(&d, "pause")["status"] == "running")
        },
    );
    assert_eq!(
        sb.json(&["status", "slow-1", "--json"])["status"],
        "running"
    );
    // While the first process executes it, another may not.
    let busy = sb.run(&["resume", "slow-1"]);
    assert_eq!(busy.status.code(), Some(3), "{}", stderr(&busy));
    assert!(
        stderr(&busy).contains("slow-1"),
        "the refusal names the run: {}",
        stderr(&busy)
    );
    let other = sb.run(&["run", "hello.yaml", "--set", "customer=acme"]);
    assert_eq!(other.status.code(), Some(0), "{}", stderr(&other));
    let out = slow.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(sb.json(&["status", "--json"]).as_array().unwrap().len(), 2);
    let finished = sb.run(&["resume", "slow-1"]);
    assert_eq!(
        finished.status.code(),
        Some(0),
        "a finished run resumes to nothing"
    );
}

#[test]
fn introspection_commands() {
    let sb = Sandbox::new();
    sb.copy("examples/hello.yaml");
    let steps = sb.run(&["steps"]);
    let text = stdout(&steps);
    for want in [
        "exec",
        "with.argv: list of string (required)",
        "wait",
        "assert",
        "log",
    ] {
        assert!(text.contains(want), "`{want}` missing from:\n{text}");
    }
    let schema = sb.json(&["schema"]);
    assert!(schema["properties"]["steps"].is_object());
    assert!(schema["$defs"]["StepSpec"]["properties"]["needs"]["description"].is_string());
    let graph = sb.run(&["graph", "hello.yaml", "--format", "mermaid"]);
    insta::assert_snapshot!("graph_mermaid", stdout(&graph));
    let dot = sb.run(&["graph", "hello.yaml", "--format", "dot"]);
    assert!(stdout(&dot).contains("\"greet\" -> \"per_region\""));
}

#[test]
fn config_layers_and_show() {
    let sb = Sandbox::new();
    sb.write(
        "landfall.toml",
        "max_parallel = 3\n[slack]\nbot_token = \"xoxb-very-secret\"\n[env.ci]\nmax_parallel = 5\n",
    );
    let out = sb.run(&["config", "show", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let get = |v: &serde_json::Value, k: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|s| s["key"] == k)
            .unwrap()
            .clone()
    };
    assert_eq!(get(&v, "max_parallel")["value"], 3);
    assert_eq!(get(&v, "max_parallel")["source"], "landfall.toml");
    assert_eq!(get(&v, "slack.bot_token")["value"], "***");
    assert!(!stdout(&out).contains("very-secret"));
    let out = sb.run(&["--env", "ci", "config", "show", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(get(&v, "max_parallel")["value"], 5);
    let mut cmd = sb.cmd(&["--env", "ci", "config", "show", "--json"]);
    cmd.env("LANDFALL_MAX_PARALLEL", "6");
    let v: serde_json::Value = serde_json::from_slice(&cmd.output().unwrap().stdout).unwrap();
    assert_eq!(get(&v, "max_parallel")["value"], 6);
    sb.write("landfall.toml", "max_paralel = 3\n");
    let out = sb.run(&["config", "show"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("landfall.toml:1:1"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn secret_inputs_are_never_shown() {
    let sb = Sandbox::new();
    sb.write(
        "secret.yaml",
        r#"
name: secret
inputs:
  token: { type: string, secret: true }
  user: { type: string }
steps:
  - { id: a, uses: log, with: { message: "hello {{ inputs.user }}" } }
"#,
    );
    let out = sb
        .cmd(&[
            "run",
            "secret.yaml",
            "--set",
            "token=xoxb-hunter2",
            "--set",
            "user=bob",
            "--json",
        ])
        .env("LANDFALL_DATA_KEY", "5a".repeat(32))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = format!("{}{}", stdout(&out), stderr(&out));
    assert!(!text.contains("hunter2"), "{text}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["inputs"]["token"], "***");
    assert_eq!(doc["inputs"]["user"], "bob");
    let audit = sb.run(&["audit", doc["run_id"].as_str().unwrap(), "--json"]);
    assert!(!stdout(&audit).contains("hunter2"));
}

const REQUIREMENTS_STEPS: &str = r#"
steps:
  - { id: hello, uses: log, with: { message: "{{ inputs.display_name }} has {{ inputs.accounts | length }} accounts" } }
"#;

#[test]
fn invalid_customer_requirements_are_refused_with_field_paths() {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.path("templates/rules/baseline")).unwrap();
    sb.write(
        "req.yaml",
        &format!("name: requirements-only{REQUIREMENTS_INPUTS}{REQUIREMENTS_STEPS}"),
    );
    let good = sb.copy("examples/customers/acme.yaml");
    let out = sb.run(&["run", "req.yaml", "--input", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Acme Corp has 2 accounts"),
        "{}",
        stderr(&out)
    );
    let toml = sb.copy("examples/customers/globex.toml");
    let out = sb.run(&["run", "req.yaml", "--input", toml.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let bad = std::fs::read_to_string(&good)
        .unwrap()
        .replace("aws+acme-dev@acme.example", "not-an-email")
        .replace("10.20.0.0/16", "8.8.0.0/16")
        .replace("[baseline]", "[baseline, pci]");
    sb.write("bad.yaml", &bad);
    let out = sb.run(&["run", "req.yaml", "--input", "bad.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    for want in [
        "input `accounts[1].email`",
        "input `network.cidr`",
        "input `compliance[1]`",
        "nothing ran",
    ] {
        assert!(err.contains(want), "`{want}` missing from:\n{err}");
    }
    let runs: serde_json::Value = sb.json(&["status", "--json"]);
    assert_eq!(
        runs.as_array().unwrap().len(),
        2,
        "the refused run was not recorded"
    );
}

#[test]
fn reading_commands_never_create_a_state_file() {
    let sb = Sandbox::new();
    assert_eq!(sb.json(&["status", "--json"]), json!([]));
    assert_eq!(sb.json(&["packages", "list", "--json"]), json!([]));
    let out = sb.run(&["status", "r-nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("no state file"), "{}", stderr(&out));
    assert_eq!(
        sb.run(&["audit", "r-nope", "--verify"]).status.code(),
        Some(2)
    );
    assert_eq!(sb.run(&["resume", "r-nope"]).status.code(), Some(2));
    assert!(!sb.path(".landfall").exists());
}

fn gated(sb: &Sandbox) {
    sb.write(
        "gated.yaml",
        r#"
name: gated
steps:
  - id: approve
    uses: approval
    with: { title: "Ship build 7", digest: "abc123def456789", timeout: 10m }
  - id: ship
    uses: log
    needs: [approve]
    with: { message: "approved by {{ steps.approve.outputs.by }}" }
"#,
    );
}

/// The status of a node, or "" while its run is not recorded yet (the spawned process may not
/// have created it when the state file first appears).
fn node_status(sb: &Sandbox, run: &str, node_id: &str) -> String {
    let out = sb.run(&["status", run, "--json"]);
    if !out.status.success() {
        assert!(stderr(&out).contains("no run"), "{}", stderr(&out));
        return String::new();
    }
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    node(&doc, node_id)["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn an_approval_from_another_process_binds_to_the_digest_and_survives_a_kill() {
    let sb = Sandbox::new();
    gated(&sb);
    let mut child = sb.spawn(&["run", "gated.yaml", "--run-id", "gate-1"]);
    wait_until("the approval to wait", Duration::from_secs(60), || {
        sb.path(".landfall/state.redb").exists()
            && node_status(&sb, "gate-1", "approve") == "waiting"
    });
    // The request changed since the approver looked: refused, nothing recorded.
    let stale = sb.run(&["approve", "gate-1", "approve", "--digest", "0000"]);
    assert_eq!(stale.status.code(), Some(1), "{}", stderr(&stale));
    assert!(
        stderr(&stale).contains("now for digest abc123def456789"),
        "{}",
        stderr(&stale)
    );
    assert_eq!(
        sb.run(&["approve", "gate-1", "ship"]).status.code(),
        Some(2)
    );

    // Landfall dies while waiting; the decision is given while it is down.
    child.kill().unwrap();
    child.wait().unwrap();
    let ok = sb.run(&[
        "approve",
        "gate-1",
        "approve",
        "--digest",
        "abc123",
        "--comment",
        "lgtm",
    ]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    assert!(
        stdout(&ok).contains("approved Ship build 7 (abc123def456)"),
        "{}",
        stdout(&ok)
    );

    let out = sb.run(&["resume", "gate-1", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let by = node(&doc, "approve")["outputs"]["by"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(by.starts_with("cli:"), "{by}");
    assert_eq!(
        node(&doc, "approve")["outputs"]["digest"],
        "abc123def456789"
    );
    let audit = sb.json(&["audit", "gate-1", "--json"]);
    let decided = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "signal_received")
        .unwrap();
    assert_eq!(decided["actor"], by.as_str(), "the audit names who decided");
    assert_eq!(decided["details"]["value"]["comment"], "lgtm");
}

#[test]
fn a_rejection_fails_the_run_and_says_who() {
    let sb = Sandbox::new();
    gated(&sb);
    let mut child = sb.spawn(&["run", "gated.yaml", "--run-id", "gate-2"]);
    wait_until("the approval to wait", Duration::from_secs(60), || {
        sb.path(".landfall/state.redb").exists()
            && node_status(&sb, "gate-2", "approve") == "waiting"
    });
    let no = sb.run(&[
        "reject",
        "gate-2",
        "approve",
        "--comment",
        "not on a Friday",
    ]);
    assert_eq!(no.status.code(), Some(0), "{}", stderr(&no));
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    let doc = sb.json(&["status", "gate-2", "--json"]);
    let err = node(&doc, "approve")["error"]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        err.contains("Ship build 7 was rejected by cli:") && err.ends_with("not on a Friday"),
        "{err}"
    );
    assert_eq!(node(&doc, "ship")["status"], "skipped");
}

/// `approve_waves` with the real `approval` plugin: the canary runs, the second wave's first
/// instance asks (shown by `landfall approve`'s own look-up of the request) and waits; an
/// approval from another process starts the rest of the wave.
#[test]
fn a_second_wave_starts_once_approved_from_another_process() {
    let sb = Sandbox::new();
    sb.write(
        "waves.yaml",
        r#"
name: waves
steps:
  - id: deploy
    uses: log
    for_each: [canary, b, c]
    waves: [1]
    approve_waves: { timeout: 10m }
    with: { message: "deployed {{ item }}" }
"#,
    );
    let mut child = sb.spawn(&["run", "waves.yaml", "--run-id", "waves-1"]);
    // The fan-out's nodes appear after the run does.
    wait_until("the second wave to ask", Duration::from_secs(60), || {
        sb.path(".landfall/state.redb").exists()
            && sb.run(&["status", "waves-1", "--json"]).status.success()
            && serde_json::from_slice::<serde_json::Value>(
                &sb.run(&["status", "waves-1", "--json"]).stdout,
            )
            .ok()
            .and_then(|d| d["nodes"].as_array().cloned())
            .is_some_and(|ns| {
                ns.iter()
                    .any(|n| n["id"] == "deploy[1]" && n["status"] == "waiting")
            })
    });
    assert_eq!(node_status(&sb, "waves-1", "deploy[0]"), "succeeded");
    assert_eq!(node_status(&sb, "waves-1", "deploy[2]"), "pending");
    let ok = sb.run(&["approve", "waves-1", "deploy[1]"]);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    assert!(
        stdout(&ok).contains("Start wave 2 of 2 of `deploy` (2 instances)"),
        "{}",
        stdout(&ok)
    );
    assert_eq!(child.wait().unwrap().code(), Some(0));
    let doc = sb.json(&["status", "waves-1", "--json"]);
    for k in 0..3 {
        assert_eq!(node(&doc, &format!("deploy[{k}]"))["status"], "succeeded");
    }
}

#[test]
fn rotate_key_reseals_every_secret_or_changes_nothing() {
    use landfall::slack::tokens::{load_grant, save_grant, Grant};
    use landfall_engine::store::RedbStore;
    use landfall_engine::DataKey;
    let sb = Sandbox::new();
    let (old_hex, new_hex, wrong_hex) = ("11".repeat(32), "22".repeat(32), "33".repeat(32));
    sb.write("old.key", &old_hex);
    sb.write("new.key", &new_hex);
    sb.write("wrong.key", &wrong_hex);
    let key = |h: &str| DataKey::from_hex(h).unwrap();
    let grant = Grant {
        access_token: "xoxe.xoxb-1-sealed-token".into(),
        refresh_token: Some("xoxe-1-refresh".into()),
        expires_at: Some(4_000_000_000),
        team_id: Some("T1".into()),
        enterprise_id: None,
        revoked: false,
    };
    {
        std::fs::create_dir_all(sb.path(".landfall")).unwrap();
        let store = RedbStore::open(&sb.path(".landfall/state.redb")).unwrap();
        save_grant(&store, &key(&old_hex), &grant).unwrap();
    }
    let load = |h: &str| {
        let store = RedbStore::open(&sb.path(".landfall/state.redb")).unwrap();
        load_grant(&store, &key(h))
    };

    // The wrong current key: refused, nothing changed.
    let out = sb.run(&[
        "rotate-key",
        "--data-key-file",
        "wrong.key",
        "--new-key-file",
        "new.key",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("nothing was changed"),
        "{}",
        stderr(&out)
    );
    assert!(load(&old_hex).unwrap().is_some());

    let out = sb.run(&[
        "rotate-key",
        "--data-key-file",
        "old.key",
        "--new-key-file",
        "new.key",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("re-sealed 1 secret"),
        "{}",
        stdout(&out)
    );
    let opened = load(&new_hex)
        .unwrap()
        .expect("the grant opens with the new key");
    assert_eq!(opened.access_token, grant.access_token);
    assert!(load(&old_hex).is_err(), "the old key no longer opens it");
    // Audited without key material or tokens.
    let audit = sb.json(&["audit", "-", "--json"]);
    let entry = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "data_key_rotated")
        .expect("the rotation is audited")
        .to_string();
    assert!(!entry.contains(&old_hex) && !entry.contains(&new_hex) && !entry.contains("xoxe"));
}

/// A state file of schema 1 (JSON rows) opens with this build: its runs read as they were,
/// their chains verify, and its interrupted run resumes, the chain going on in version 2 rows
/// and hash format 2. The fixture (`tests/fixtures/state-v1/`) was written by the last schema
/// 1 build: `run` of examples/hello.yaml for two regions, then `run` of pause.yaml killed with
/// SIGKILL mid-wait.
#[test]
fn a_schema_1_state_file_upgrades_and_its_interrupted_run_resumes() {
    old_state_file_upgrades(
        "state-v1",
        br#"{"node_id":"per_region[1]""#,
        ("01V1FIXTUREHELLO00000000000", "01V1FIXTUREPAUSE00000000000"),
    );
}

/// The same for schema 2 (MessagePack rows, audit entries hashed in format 1): the fixture
/// (`tests/fixtures/state-v2/`) was written the same way by the last schema 2 build.
#[test]
fn a_schema_2_state_file_upgrades_and_its_interrupted_run_resumes() {
    // A MessagePack map key `node_id` (fixstr of 7 bytes), where schema 1 wrote JSON.
    old_state_file_upgrades(
        "state-v2",
        b"\xa7node_id",
        ("01V2FIXTUREHELLO00000000000", "01V2FIXTUREPAUSE00000000000"),
    );
}

fn old_state_file_upgrades(fixture: &str, row_marker: &[u8], (hello, pause): (&str, &str)) {
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.path(".landfall")).unwrap();
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture)
        .join("state.redb");
    let bytes = std::fs::read(&fixture).unwrap();
    assert!(
        bytes.windows(row_marker.len()).any(|w| w == row_marker),
        "the fixture holds the rows of its version"
    );
    std::fs::copy(fixture, sb.path(".landfall/state.redb")).unwrap();

    let doc = sb.json(&["status", hello, "--json"]);
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(
        node(&doc, "per_region[1]")["outputs"],
        json!({"stdout": "eu-west-1\n"})
    );
    assert_eq!(node(&doc, "on_error")["status"], "skipped");
    let doc = sb.json(&["status", pause, "--json"]);
    assert_eq!(doc["status"], "interrupted");
    assert_eq!(node(&doc, "pause")["status"], "running");
    let before = sb.json(&["audit", pause, "--json"]);
    let before = before.as_array().map_or(0, Vec::len);
    assert!(before > 0, "the fixture's chain reads");

    let out = sb.run(&["resume", pause, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(
        node(&doc, "first")["attempts"],
        1,
        "a success is not run again"
    );
    assert_eq!(
        node(&doc, "pause")["attempts"],
        2,
        "the cut-off attempt runs again"
    );
    assert_eq!(node(&doc, "last")["status"], "succeeded");

    for run in [hello, pause] {
        let audit = sb.run(&["audit", run, "--verify"]);
        assert_eq!(audit.status.code(), Some(0), "{run}: {}", stdout(&audit));
    }
    let after = sb.json(&["audit", pause, "--json"]);
    let after = after.as_array().cloned().unwrap_or_default();
    assert!(after.len() > before);
    // The resumed run's chain: the old build's entries in hash format 1, this build's in 2.
    let formats: Vec<u64> = after.iter().filter_map(|e| e["format"].as_u64()).collect();
    assert_eq!(formats.len(), after.len());
    assert!(formats[..before].iter().all(|&f| f == 1), "{formats:?}");
    assert!(formats[before..].iter().all(|&f| f == 2), "{formats:?}");
}

#[test]
fn an_empty_state_file_is_refused_not_replaced() {
    let sb = Sandbox::new();
    sb.copy("examples/hello.yaml");
    std::fs::create_dir_all(sb.path(".landfall")).unwrap();
    std::fs::write(sb.path(".landfall/state.redb"), "").unwrap();
    for args in [
        &["status"][..],
        &["run", "hello.yaml", "--set", "customer=acme"],
    ] {
        let out = sb.run(args);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("is not a Landfall state file: it is empty (0 bytes)"),
            "{}",
            stderr(&out)
        );
    }
    let len = std::fs::metadata(sb.path(".landfall/state.redb"))
        .unwrap()
        .len();
    assert_eq!(len, 0, "the empty file was turned into a new store");
}

#[test]
fn status_and_audit_never_write_to_the_state_file() {
    let sb = Sandbox::new();
    sb.copy("examples/hello.yaml");
    let out = sb.run(&[
        "run",
        "hello.yaml",
        "--set",
        "customer=acme",
        "--run-id",
        "ro",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let db = sb.path(".landfall/state.redb");
    let before = std::fs::read(&db).unwrap();
    for args in [
        &["status", "ro", "--json"][..],
        &["status"],
        &["audit", "ro", "--verify"],
        &["packages", "list"],
    ] {
        let out = sb.run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    }
    assert!(
        std::fs::read(&db).unwrap() == before,
        "a read-only command changed the file"
    );
}

/// Damage anywhere in the state file ends in a sentence and exit 3 (or, where the damage
/// misses what is read, a normal answer), never in a panic's exit 101.
#[test]
fn a_damaged_state_file_never_ends_in_a_panic() {
    let sb = Sandbox::new();
    sb.copy("examples/hello.yaml");
    let out = sb.run(&[
        "run",
        "hello.yaml",
        "--set",
        "customer=acme",
        "--run-id",
        "dmg",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let db = sb.path(".landfall/state.redb");
    let good = std::fs::read(&db).unwrap();
    // Seeded positions over the whole file, denser in the header and the first pages.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut codes = std::collections::BTreeMap::new();
    for i in 0..40 {
        let mut bad = good.clone();
        let span = if i % 2 == 0 {
            4096.min(bad.len())
        } else {
            bad.len()
        };
        for _ in 0..8 {
            let at = (next() as usize) % span;
            bad[at] ^= (next() as u8) | 1;
        }
        std::fs::write(&db, &bad).unwrap();
        for args in [&["status", "dmg"][..], &["audit", "dmg", "--verify"]] {
            let out = sb.run(args);
            let code = out.status.code();
            assert!(
                matches!(code, Some(0..=3)),
                "{args:?} on damaged copy {i} ended with {code:?}: {}",
                stderr(&out)
            );
            assert!(!stderr(&out).contains("panicked at"), "{}", stderr(&out));
            *codes.entry(code).or_insert(0) += 1;
        }
    }
    // The damage was real: some copies were refused.
    assert!(codes.get(&Some(3)).copied().unwrap_or(0) > 0, "{codes:?}");
}

/// Input files cannot exhaust memory: a "billion laughs" YAML (as a workflow or as inputs) and
/// a file past the size limit are refused with exit 2 before anything runs. (Time and memory
/// of the refusals: RELIABILITY.md.)
#[test]
fn alias_bombs_and_huge_files_are_refused_before_anything_runs() {
    let sb = Sandbox::new();
    let mut bomb = String::from(
        "name: bomb\nx:\n  a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n",
    );
    for (prev, cur) in "abcdefgh".chars().zip("bcdefghi".chars()) {
        bomb.push_str(&format!(
            "  {cur}: &{cur} [{}]\n",
            vec![format!("*{prev}"); 10].join(", ")
        ));
    }
    bomb.push_str("steps: [{ id: a, uses: log, with: { message: hi } }]\n");
    sb.write("bomb.yaml", &bomb);
    let out = sb.run(&["validate", "bomb.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("expands to more than"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("bomb.yaml:"),
        "located: {}",
        stderr(&out)
    );
    sb.write(
        "hello.yaml",
        "name: hello\nsteps: [{ id: a, uses: log, with: { message: hi } }]\n",
    );
    let out = sb.run(&["run", "hello.yaml", "--input", "bomb.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("expands to more than"),
        "{}",
        stderr(&out)
    );
    let big = std::fs::File::create(sb.path("big.yaml")).unwrap();
    big.set_len(100 * 1024 * 1024).unwrap(); // sparse: 100 MB that cost nothing to make
    let out = sb.run(&["run", "hello.yaml", "--input", "big.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("larger than 16777216 bytes"),
        "{}",
        stderr(&out)
    );
    assert!(!sb.path(".landfall/state.redb").exists(), "nothing ran");
}

/// `argv: [echo, "{{ item }}"]` over numbers: the template gives an integer where `exec`
/// wants text, and the integer's text is what runs (every node used to fail).
#[test]
fn a_rendered_number_in_a_text_field_runs_as_its_text() {
    let sb = Sandbox::new();
    sb.write(
        "numbers.yaml",
        r#"
name: numbers
steps:
  - id: each
    uses: exec
    for_each: [1, 2, 3]
    with: { argv: [sh, -c, 'echo "$0" >> seen.log', "{{ item }}"] }
"#,
    );
    let out = sb.run(&["run", "numbers.yaml", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut seen = lines(&sb.path("seen.log"));
    seen.sort();
    assert_eq!(seen, ["1", "2", "3"]);
}

/// A `secret: true` input is sealed at rest: refused without a data key (nothing ran), never
/// in the state file in clear, re-sealed by `rotate-key`, opened again only with the key to
/// resume.
#[test]
fn secret_inputs_are_sealed_at_rest_and_follow_the_data_key() {
    let sb = Sandbox::new();
    let value = "hunter2-sealed-input-value";
    sb.write(
        "secret.yaml",
        r#"
name: secret
inputs:
  password: { type: string, secret: true }
steps:
  - id: approve
    uses: approval
    with: { title: "Use the password", digest: "d-secret", timeout: 10m }
  - id: use
    uses: exec
    needs: [approve]
    with: { argv: ["sh", "-c", "test \"$0\" = \"$(cat expected.txt)\"", "{{ inputs.password }}"] }
"#,
    );
    // Not in the workflow's text (which the run record keeps): in a file the step reads.
    sb.write("expected.txt", value);
    let set = format!("password={value}");
    let refused = sb.run(&["run", "secret.yaml", "--set", &set, "--run-id", "s-1"]);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains("LANDFALL_DATA_KEY"),
        "{}",
        stderr(&refused)
    );
    assert!(
        stderr(&refused).contains("password"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(
        sb.run(&["status", "s-1"]).status.code(),
        Some(2),
        "no run was made"
    );

    let (old, new) = ("21".repeat(32), "43".repeat(32));
    sb.write("old.key", &old);
    sb.write("new.key", &new);
    let mut child = sb
        .cmd(&["run", "secret.yaml", "--set", &set, "--run-id", "s-1"])
        .env("LANDFALL_DATA_KEY", &old)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the approval to wait", Duration::from_secs(60), || {
        sb.path(".landfall/state.redb").exists() && node_status(&sb, "s-1", "approve") == "waiting"
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let in_clear = |what: &str| {
        let db = std::fs::read(sb.path(".landfall/state.redb")).unwrap();
        db.windows(what.len()).any(|w| w == what.as_bytes())
    };
    assert!(!in_clear(value), "the secret is in the state file in clear");
    let shown = sb.run(&["status", "s-1", "--json"]);
    assert!(!String::from_utf8_lossy(&shown.stdout).contains(value));

    let rotated = sb.run(&[
        "rotate-key",
        "--data-key-file",
        "old.key",
        "--new-key-file",
        "new.key",
    ]);
    assert_eq!(rotated.status.code(), Some(0), "{}", stderr(&rotated));
    let approved = sb.run(&["approve", "s-1", "approve"]);
    assert_eq!(approved.status.code(), Some(0), "{}", stderr(&approved));
    // The old key no longer opens it; the new one does, and the step sees the value.
    let with_old = sb
        .cmd(&["resume", "s-1"])
        .env("LANDFALL_DATA_KEY", &old)
        .output()
        .unwrap();
    assert_eq!(with_old.status.code(), Some(2), "{}", stderr(&with_old));
    assert!(
        stderr(&with_old).contains("does not open"),
        "{}",
        stderr(&with_old)
    );
    let with_new = sb
        .cmd(&["resume", "s-1"])
        .env("LANDFALL_DATA_KEY", &new)
        .output()
        .unwrap();
    assert_eq!(with_new.status.code(), Some(0), "{}", stderr(&with_new));
    assert!(!in_clear(value), "resuming wrote the secret in clear");
}

fn runs_of(sb: &Sandbox, workflow: &str) -> usize {
    let out = sb.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array().map_or(0, |a| {
        a.iter().filter(|r| r["workflow"] == workflow).count()
    })
}

/// The limits on what files and templates may hold are enforced with errors that name the
/// setting, and `[limits]` (here through `LANDFALL_LIMITS__*`) changes them.
#[test]
fn fan_out_template_and_yaml_limits_stop_with_clear_errors() {
    let sb = Sandbox::new();
    sb.write(
        "fan.yaml",
        "name: fan\nsteps:\n  - id: each\n    uses: log\n    for_each: \"{{ range(20) | list }}\"\n    with: { message: \"{{ item }}\" }\n",
    );
    let out = sb
        .cmd(&["run", "fan.yaml"])
        .env("LANDFALL_LIMITS__MAX_FAN_OUT", "10")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        said.contains("`for_each` gave 20 items; at most 10"),
        "{said}"
    );
    assert!(said.contains("limits.max_fan_out"), "{said}");
    // Within the default limit the same file runs.
    assert_eq!(sb.run(&["run", "fan.yaml"]).status.code(), Some(0));
    // A list written out in the file is refused before anything runs.
    sb.write(
        "listed.yaml",
        "name: listed\nsteps:\n  - id: each\n    uses: log\n    for_each: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]\n    with: { message: \"{{ item }}\" }\n",
    );
    let out = sb
        .cmd(&["run", "listed.yaml"])
        .env("LANDFALL_LIMITS__MAX_FAN_OUT", "10")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("lists 11 items; at most 10"),
        "{}",
        stderr(&out)
    );
    assert!(!sb.path(".landfall/state.redb").exists() || runs_of(&sb, "listed") == 0);

    // 10¹⁰ iterations: out of fuel at once, not hours of a worker.
    sb.write(
        "spin.yaml",
        "name: spin\nsteps:\n  - id: spin\n    uses: log\n    with: { message: \"{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}done\" }\n",
    );
    let out = sb.run(&["run", "spin.yaml"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let said = format!("{}{}", stdout(&out), stderr(&out));
    assert!(said.contains("limits.template_fuel"), "{said}");

    sb.write(
        "deep.yaml",
        "name: deep\nsteps:\n  - id: a\n    uses: log\n    with: { message: {a: {b: {c: {d: x}}}} }\n",
    );
    let out = sb
        .cmd(&["validate", "deep.yaml"])
        .env("LANDFALL_LIMITS__MAX_YAML_DEPTH", "4")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("limits.max_yaml_depth"),
        "{}",
        stderr(&out)
    );
    let out = sb
        .cmd(&["validate", "deep.yaml"])
        .env("LANDFALL_LIMITS__MAX_FILE_BYTES", "20")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("limits.max_file_bytes"),
        "{}",
        stderr(&out)
    );
}
