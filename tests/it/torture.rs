//! The crash-and-fault harness: onboarding and provisioning of three customers (two at a time)
//! through the strict AWS layer with account creation taking seconds and a quarter of the
//! calls faulted, the engine `kill -9`ed at random instants and started again each time, then
//! compared with the same work done without kills.
//!
//! What must hold: every run succeeds; the AWS state (OUs, accounts, SCPs and their
//! attachments, roles, stacks) is the uninterrupted run's, with no duplicate; no step that
//! succeeded ran again; every audit chain verifies; no permanent error was retried; no process
//! of a killed engine outlived it.
//!
//! `LANDFALL_TORTURE_KILLS` (default 12, CI's short run), `LANDFALL_TORTURE_SEED` (1),
//! `LANDFALL_TORTURE_FAULTS` (0.2), `LANDFALL_TORTURE_ACCOUNT_DELAY` (1 s). The full run
//! (`scripts/torture.sh`: 200 kills, 25% faults, 2 s per account) writes the figures that are
//! in RELIABILITY.md.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{stdout, Emulator, Sandbox};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A seeded xorshift: the kill instants of a run are reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// One `landfall run` to carry to its end: the same command starts it and, with its run id,
/// continues it after a kill (before the run exists as well as after).
#[derive(Clone)]
struct Job {
    run_id: String,
    args: Vec<String>,
    /// The exit code it must end with.
    expect: i32,
}

/// A customer whose account email is acme's: its onboarding must fail at `org` with a
/// permanent error, once, however often it is killed and started again.
const DOOMED: &str = r#"
customer: doomed
display_name: Doomed
contact_email: it@doomed.example
accounts:
  - { name: doomed-prod, email: aws+acme-prod@acme.example, environment: production }
regions: [us-west-2]
network: { cidr: 192.168.32.0/24, availability_zones: 1, nat_gateways: none }
compliance: [baseline]
"#;

const CUSTOMERS: [(&str, &str); 3] = [
    ("acme", "examples/customers/acme.yaml"),
    ("globex", "examples/customers/globex.toml"),
    ("initech", "examples/customers/initech.yaml"),
];

/// The exec workflow beside the AWS ones: its steps leave a grandchild behind when killed, and
/// write their idempotency key as a program should, once per key. A kill after the write and
/// before the success is committed runs the step again (at least once is all any engine can
/// give a program): with the same key it writes nothing new; with another it would.
const CHILDREN: &str = r#"
name: children
steps:
  - id: a
    uses: exec
    with: { argv: [sh, -c, 'sleep 1 & sleep 1.2; wait; grep -qxF "$LANDFALL_IDEMPOTENCY_KEY" a.log 2>/dev/null || echo "$LANDFALL_IDEMPOTENCY_KEY" >> a.log'] }
  - id: b
    uses: exec
    needs: [a]
    with: { argv: [sh, -c, 'sleep 1 & sleep 1.2; wait; grep -qxF "$LANDFALL_IDEMPOTENCY_KEY" b.log 2>/dev/null || echo "$LANDFALL_IDEMPOTENCY_KEY" >> b.log'] }
  - id: c
    uses: exec
    needs: [b]
    with: { argv: [sh, -c, 'sleep 1 & sleep 1.2; wait; grep -qxF "$LANDFALL_IDEMPOTENCY_KEY" c.log 2>/dev/null || echo "$LANDFALL_IDEMPOTENCY_KEY" >> c.log'] }
"#;

fn onboarding(customer: &str, input: &str) -> Job {
    Job {
        run_id: format!("onboard-{customer}"),
        args: vec![
            "run".into(),
            root()
                .join("workflows/onboarding.yaml")
                .display()
                .to_string(),
            "--input".into(),
            // Inputs of the repository by their path in it; the doomed one is the sandbox's.
            if input.starts_with("examples/") {
                root().join(input).display().to_string()
            } else {
                input.to_string()
            },
            "--run-id".into(),
            format!("onboard-{customer}"),
            "--quiet".into(),
        ],
        expect: 0,
    }
}

fn provisioning(customer: &str, run_id: &str) -> Job {
    Job {
        run_id: run_id.to_string(),
        args: vec![
            "run".into(),
            root()
                .join("workflows/provisioning.yaml")
                .display()
                .to_string(),
            "--set".into(),
            format!("package={customer}-baseline@latest"),
            "--set".into(),
            format!("customer={customer}"),
            "--set".into(),
            "poll_initial=1s".into(),
            "--run-id".into(),
            run_id.to_string(),
            "--quiet".into(),
        ],
        expect: 0,
    }
}

/// The work, in waves: the jobs of a wave run at the same time.
fn waves() -> Vec<Vec<Job>> {
    let [a, b, c] = CUSTOMERS;
    vec![
        vec![onboarding(a.0, a.1), onboarding(b.0, b.1)],
        vec![
            onboarding(c.0, c.1),
            provisioning(a.0, "provision-acme"),
            Job {
                run_id: "children".into(),
                args: vec![
                    "run".into(),
                    "children.yaml".into(),
                    "--run-id".into(),
                    "children".into(),
                    "--quiet".into(),
                ],
                expect: 0,
            },
        ],
        vec![
            provisioning(b.0, "provision-globex"),
            provisioning(c.0, "provision-initech"),
            Job {
                expect: 1,
                ..onboarding("doomed", "doomed.yaml")
            },
        ],
    ]
}

fn command(sb: &Sandbox, emu: &Emulator, job: &Job) -> Command {
    let args: Vec<&str> = job.args.iter().map(String::as_str).collect();
    let mut cmd = sb.cmd(&args);
    cmd.env("LANDFALL_TEMPLATES_DIR", root().join("templates"));
    emu.apply(&mut cmd);
    cmd
}

#[derive(Default, Debug)]
struct Carried {
    kills: u32,
    starts: u32,
}

/// Carries a job to its end, killing it up to `kills` times at random instants (0.1–2 s after
/// each start). Returns the exit code of the start that finished.
fn carry(sb: &Sandbox, emu: &Emulator, job: &Job, kills: u32, seed: u64) -> (Option<i32>, Carried) {
    let mut rng = Rng(seed | 1);
    let mut c = Carried::default();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(sb.path(&format!("{}.log", job.run_id)))
        .unwrap();
    loop {
        c.starts += 1;
        let mut child = command(sb, emu, job)
            .stdout(Stdio::null())
            .stderr(log.try_clone().unwrap())
            .spawn()
            .unwrap();
        if c.kills >= kills {
            return (child.wait().unwrap().code(), c);
        }
        let at = Instant::now() + Duration::from_millis(100 + rng.next() % 1900);
        let finished = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() >= at {
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        match finished {
            Some(status) => return (status.code(), c),
            None => {
                child.kill().unwrap(); // SIGKILL
                child.wait().unwrap();
                c.kills += 1;
            }
        }
    }
}

/// Runs every wave, the kills spread over its jobs; a job that ends before its share is spent
/// gives the rest back. While kills are left, acme, globex and initech are provisioned again
/// (a re-run changes nothing, so the state to compare with stays the same).
fn work(sb: &Sandbox, emu: &Emulator, kills: u32, seed: u64) -> BTreeMap<String, Carried> {
    sb.write("children.yaml", CHILDREN);
    sb.write("doomed.yaml", DOOMED);
    let jobs: usize = waves().iter().map(Vec::len).sum();
    let share = kills.div_ceil(jobs as u32);
    let mut left = kills;
    let mut all = BTreeMap::new();
    let mut n = 0u64;
    let mut waves = waves();
    let mut again = 0;
    while !waves.is_empty() || (left > 0 && again < 30) {
        let wave = if waves.is_empty() {
            // Two re-provisionings at a time, in turn.
            let wave = (0..2)
                .map(|i| {
                    let customer = CUSTOMERS[(again + i) % CUSTOMERS.len()].0;
                    provisioning(customer, &format!("reprovision-{customer}-{}", again + i))
                })
                .collect();
            again += 2;
            wave
        } else {
            waves.remove(0)
        };
        let budgets: Vec<u32> = wave
            .iter()
            .map(|_| {
                let b = share.min(left);
                left -= b;
                b
            })
            .collect();
        let results: Vec<(Job, Option<i32>, Carried, u32)> = std::thread::scope(|s| {
            let handles: Vec<_> = wave
                .into_iter()
                .zip(budgets)
                .map(|(job, budget)| {
                    n += 1;
                    let job_seed = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(n);
                    s.spawn(move || {
                        let (code, c) = carry(sb, emu, &job, budget, job_seed);
                        (job, code, c, budget)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (job, code, c, budget) in results {
            left += budget - c.kills;
            let log = std::fs::read_to_string(sb.path(&format!("{}.log", job.run_id)))
                .unwrap_or_default();
            // The sandbox goes with the panic: say what the run recorded first.
            let status = if code != Some(job.expect) {
                stdout(&sb.run(&["status", &job.run_id, "--json"]))
            } else {
                String::new()
            };
            assert_eq!(
                code,
                Some(job.expect),
                "{} ended with {code:?} after {c:?}; its log:\n{}\nits status:\n{}",
                job.run_id,
                tail(&log),
                tail(&status)
            );
            all.insert(job.run_id, c);
        }
    }
    all
}

fn tail(s: &str) -> &str {
    let mut start = s.len().saturating_sub(6000);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// The AWS state as facts, one line each, names instead of ids (ids differ between runs).
async fn aws_state(emu: &Emulator) -> Vec<String> {
    let org = emu.organizations().await;
    let mut facts = Vec::new();
    let root_id = org.list_roots().send().await.unwrap().roots()[0]
        .id()
        .unwrap()
        .to_string();
    // Targets by id → path, for accounts' parents and policy attachments.
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    names.insert(root_id.clone(), "/".into());
    let mut queue = vec![(root_id.clone(), String::new())];
    while let Some((id, path)) = queue.pop() {
        let ous = org
            .list_organizational_units_for_parent()
            .parent_id(&id)
            .send()
            .await
            .unwrap();
        for ou in ous.organizational_units() {
            let p = format!("{path}/{}", ou.name().unwrap());
            facts.push(format!("ou {p}"));
            names.insert(ou.id().unwrap().to_string(), p.clone());
            queue.push((ou.id().unwrap().to_string(), p));
        }
    }
    let mut accounts = Vec::new();
    let mut pages = org.list_accounts().into_paginator().send();
    while let Some(page) = pages.next().await {
        for a in page.unwrap().accounts() {
            accounts.push((
                a.id().unwrap().to_string(),
                a.name().unwrap_or_default().to_string(),
                a.email().unwrap_or_default().to_string(),
            ));
        }
    }
    for (id, name, email) in &accounts {
        let parent = org.list_parents().child_id(id).send().await.unwrap();
        let parent = parent.parents()[0].id().unwrap();
        facts.push(format!(
            "account {name} <{email}> in {}",
            names.get(parent).map_or("?", String::as_str)
        ));
        names.insert(id.clone(), format!("account {name}"));
    }
    let policies = org
        .list_policies()
        .filter(aws_sdk_organizations::types::PolicyType::ServiceControlPolicy)
        .send()
        .await
        .unwrap();
    for p in policies.policies() {
        let d = org
            .describe_policy()
            .policy_id(p.id().unwrap())
            .send()
            .await
            .unwrap();
        let content = d.policy().unwrap().content().unwrap_or_default();
        facts.push(format!(
            "scp {} ({} characters)",
            p.name().unwrap(),
            content.len()
        ));
        let targets = org
            .list_targets_for_policy()
            .policy_id(p.id().unwrap())
            .send()
            .await
            .unwrap();
        for t in targets.targets() {
            facts.push(format!(
                "scp {} attached to {}",
                p.name().unwrap(),
                names
                    .get(t.target_id().unwrap())
                    .map_or("?", String::as_str)
            ));
        }
    }
    let management = org
        .describe_organization()
        .send()
        .await
        .unwrap()
        .organization()
        .unwrap()
        .master_account_id()
        .unwrap()
        .to_string();
    for (id, name, _) in accounts.iter().filter(|a| a.0 != management) {
        let iam = emu.iam_in(id).await;
        for r in iam.list_roles().send().await.unwrap().roles() {
            facts.push(format!("role {} in {name}", r.role_name()));
        }
        for region in ["us-east-1", "eu-west-1", "eu-central-1", "us-west-2"] {
            let cfn = emu.cloudformation_in(id, region).await;
            for s in cfn.list_stacks().send().await.unwrap().stack_summaries() {
                facts.push(format!(
                    "stack {} in {name}/{region} {}",
                    s.stack_name().unwrap(),
                    s.stack_status().unwrap().as_str()
                ));
            }
        }
    }
    facts.sort();
    facts
}

fn duplicates(facts: &[String]) -> Vec<String> {
    facts
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0].clone())
        .collect()
}

/// Per run: (chain verifies, succeeded nodes started again, permanent errors retried or
/// repeated, nodes that failed).
fn audit_findings(sb: &Sandbox, run_id: &str) -> (bool, Vec<String>, Vec<String>, Vec<String>) {
    let verify = sb.run(&["audit", run_id, "--verify"]);
    let entries: Value =
        serde_json::from_slice(&sb.run(&["audit", run_id, "--json"]).stdout).unwrap();
    let mut succeeded = std::collections::BTreeSet::new();
    let mut again = Vec::new();
    let mut retried = Vec::new();
    let mut failed = Vec::new();
    for e in entries.as_array().unwrap() {
        let node = e["node"].as_str().unwrap_or_default().to_string();
        match e["kind"].as_str() {
            Some("node_transition") => match e["details"]["to"].as_str() {
                Some("succeeded") => {
                    succeeded.insert(node);
                }
                Some("running") if succeeded.contains(&node) => {
                    again.push(format!("{run_id}/{node}"))
                }
                // A node fails once, for good: a second failure (or a start after the
                // first) is a permanent error that took more than one attempt.
                Some("running") if failed.contains(&node) => {
                    retried.push(format!("{run_id}/{node} started again after it failed"))
                }
                Some("failed") => {
                    if failed.contains(&node) {
                        retried.push(format!("{run_id}/{node} failed twice"));
                    }
                    failed.push(node);
                }
                _ => {}
            },
            Some("retry_scheduled") if e["details"]["error"]["class"] != "transient" => {
                retried.push(format!("{run_id}/{node}: {}", e["details"]["error"]))
            }
            _ => {}
        }
    }
    (verify.status.code() == Some(0), again, retried, failed)
}

/// Processes still carrying one of these runs in their environment.
fn orphans(run_ids: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        for id in run_ids {
            let marker = format!("LANDFALL_RUN_ID={id}");
            if env.split(|b| *b == 0).any(|kv| kv == marker.as_bytes()) {
                out.push(format!("pid {pid} of {id}"));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_instants_under_faults_leaves_the_state_of_an_uninterrupted_run() {
    let kills: u32 = env_or("LANDFALL_TORTURE_KILLS", 12);
    let seed: u64 = env_or("LANDFALL_TORTURE_SEED", 1);
    let faults: f64 = env_or("LANDFALL_TORTURE_FAULTS", 0.2);
    let delay: f64 = env_or("LANDFALL_TORTURE_ACCOUNT_DELAY", 1.0);
    let emu = Emulator::start();
    let knobs = json!({
        "fault_rate": faults, "account_delay": delay, "seed": seed, "account_quota": 20,
    });
    let started = Instant::now();

    // Without kills, for the state to compare with.
    emu.reset();
    emu.set_knobs(knobs.clone());
    let calm = Sandbox::new();
    let calm_runs = tokio::task::block_in_place(|| work(&calm, &emu, 0, seed));
    // Faults are meant to be absorbed at the call: how often a whole node had to be retried.
    let node_retries: usize = calm_runs
        .keys()
        .map(|id| {
            let entries: Value =
                serde_json::from_slice(&calm.run(&["audit", id, "--json"]).stdout).unwrap();
            entries
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["kind"] == "retry_scheduled")
                .count()
        })
        .sum();
    emu.set_knobs(json!({ "fault_rate": 0.0 }));
    let expected = aws_state(&emu).await;
    let calm_time = started.elapsed();

    emu.reset();
    emu.set_knobs(knobs);
    let before = emu.stats();
    let sb = Sandbox::new();
    let carried = tokio::task::block_in_place(|| work(&sb, &emu, kills, seed));
    let after = emu.stats();
    // The layer counts since it started: this phase's share is the difference.
    let since = |what: &str| -> BTreeMap<String, u64> {
        let count = |v: &Value, k: &str| v[what][k].as_u64().unwrap_or(0);
        after[what]
            .as_object()
            .map(|m| {
                m.keys()
                    .map(|k| (k.clone(), count(&after, k) - count(&before, k)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let faults_injected = since("faults");
    let calls: u64 = since("calls").values().sum();
    emu.set_knobs(json!({ "fault_rate": 0.0 }));
    let got = aws_state(&emu).await;

    let total_kills: u32 = carried.values().map(|c| c.kills).sum();
    let starts: u32 = carried.values().map(|c| c.starts).sum();
    let run_ids: Vec<String> = carried.keys().cloned().collect();
    let mut broken_chains = Vec::new();
    let mut again = Vec::new();
    let mut retried = Vec::new();
    let mut failed_nodes = Vec::new();
    for id in &run_ids {
        let (ok, a, r, f) = audit_findings(&sb, id);
        if !ok {
            broken_chains.push(id.clone());
        }
        again.extend(a);
        retried.extend(r);
        failed_nodes.extend(f.into_iter().map(|n| format!("{id}/{n}")));
    }
    // The doomed onboarding failed where it must, and only there (the failure branch ran).
    assert_eq!(failed_nodes, ["onboard-doomed/org"], "failed nodes");
    // The exec workflow's steps each ran to the end with one key across every attempt (a
    // succeeded node run again is caught by `again`, from the audit).
    for step in ["a", "b", "c"] {
        let lines = std::fs::read_to_string(sb.path(&format!("{step}.log"))).unwrap();
        assert_eq!(
            lines.lines().count(),
            1,
            "step {step} of children ran with more than one idempotency key: {lines}"
        );
    }
    let left = orphans(&run_ids);
    let dups = duplicates(&got);
    let report = json!({
        "kills": total_kills, "starts": starts, "runs": run_ids.len(),
        "fault_rate": faults, "account_delay_s": delay, "seed": seed,
        "aws_calls": calls, "faults_injected": faults_injected,
        "aws_facts": got.len(), "duplicates": dups.len(),
        "succeeded_steps_run_again": again.len(), "audit_chains_broken": broken_chains.len(),
        "permanent_errors_retried": retried.len(), "orphans": left.len(),
        "same_state_as_uninterrupted": got == expected,
        "uninterrupted_node_retries": node_retries,
        "uninterrupted_s": calm_time.as_secs(), "total_s": started.elapsed().as_secs(),
    });
    println!("TORTURE {report}");
    assert_eq!(total_kills, kills, "not every kill landed: {report}");
    assert!(dups.is_empty(), "duplicates: {dups:#?}");
    assert!(again.is_empty(), "succeeded steps ran again: {again:#?}");
    assert!(broken_chains.is_empty(), "chains: {broken_chains:?}");
    assert!(retried.is_empty(), "permanent errors retried: {retried:#?}");
    assert!(left.is_empty(), "orphans: {left:?}");
    if got != expected {
        let only_calm: Vec<_> = expected.iter().filter(|f| !got.contains(f)).collect();
        let only_torture: Vec<_> = got.iter().filter(|f| !expected.contains(f)).collect();
        panic!("the AWS state differs: only uninterrupted {only_calm:#?}; only with kills {only_torture:#?}");
    }
}
