//! Provisioning end to end against the emulator, through the real binary: onboarding, then
//! `workflows/provisioning.yaml`; stacks checked inside the member accounts through the SDK.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use aws_sdk_cloudformation::types::StackStatus;
use serde_json::Value;

use crate::support::{node, stderr, Emulator, Sandbox};

pub(crate) fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) fn landfall(sb: &Sandbox, emu: &Emulator, args: &[&str]) -> std::process::Command {
    let mut cmd = sb.cmd(args);
    cmd.env("LANDFALL_TEMPLATES_DIR", root().join("templates"));
    emu.apply(&mut cmd);
    cmd
}

/// Onboards acme; returns account name → id.
pub(crate) fn onboard(sb: &Sandbox, emu: &Emulator) -> BTreeMap<String, String> {
    let wf = root().join("workflows/onboarding.yaml");
    let input = root().join("examples/customers/acme.yaml");
    let out = landfall(
        sb,
        emu,
        &[
            "run",
            wf.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--json",
        ],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    node(&doc, "org")["outputs"]["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_string(),
                a["id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

pub(crate) fn provision_args(extra: &[&str]) -> Vec<String> {
    let wf = root().join("workflows/provisioning.yaml");
    let mut v: Vec<String> = [
        "run",
        wf.to_str().unwrap(),
        "--set",
        "package=acme-baseline@latest",
        "--set",
        "customer=acme",
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn provision(sb: &Sandbox, emu: &Emulator, extra: &[&str]) -> (Output, Value) {
    let args = provision_args(extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = landfall(sb, emu, &args).output().unwrap();
    let doc = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out, doc)
}

/// The stacks a node deployed: (stack, action).
fn actions(doc: &Value) -> Vec<(String, String, String)> {
    doc["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["id"].as_str().unwrap().starts_with("deploy["))
        .flat_map(|n| {
            let o = &n["outputs"];
            o["stacks"].as_array().unwrap().iter().map(move |s| {
                (
                    format!(
                        "{}/{}",
                        o["account"].as_str().unwrap(),
                        o["region"].as_str().unwrap()
                    ),
                    s["stack_name"].as_str().unwrap().to_string(),
                    s["action"].as_str().unwrap().to_string(),
                )
            })
        })
        .collect()
}

/// Every stack summary (deleted ones too) in a member account's region, as an operator
/// would list them.
pub(crate) async fn stacks_in(
    emu: &Emulator,
    account: &str,
    region: &str,
) -> Vec<(String, String, String)> {
    let cfn = emu.cloudformation_in(account, region).await;
    let out = cfn.list_stacks().send().await.unwrap();
    out.stack_summaries()
        .iter()
        .map(|s| {
            (
                s.stack_name().unwrap().to_string(),
                s.stack_status().unwrap().as_str().to_string(),
                s.stack_id().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_deploys_verifies_in_member_accounts_and_a_rerun_changes_nothing() {
    let emu = Emulator::start();
    let sb = Sandbox::new();
    let accounts = onboard(&sb, &emu);
    let (out, doc) = provision(&sb, &emu, &["--set", "poll_initial=1s"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(
        log.contains("acme is provisioned with acme-baseline@1"),
        "{log}"
    );
    assert!(log.contains("deploy[0] 100%"), "progress is shown: {log}");
    let first = actions(&doc);
    // 2 accounts × 2 regions; IAM (access) only in the home region.
    assert_eq!(first.len(), 2 * 2 * 2 + 2, "{first:?}");
    assert!(first.iter().all(|(_, _, a)| a == "created"), "{first:?}");
    let run_id = doc["run_id"].as_str().unwrap().to_string();

    for (name, id) in &accounts {
        for region in ["us-east-1", "eu-west-1"] {
            let cfn = emu.cloudformation_in(id, region).await;
            let mut expected = vec!["acme-security-baseline", "acme-network"];
            if region == "us-east-1" {
                expected.push("acme-access");
            }
            for stack in &expected {
                let d = cfn
                    .describe_stacks()
                    .stack_name(*stack)
                    .send()
                    .await
                    .unwrap();
                let s = &d.stacks()[0];
                assert_eq!(
                    s.stack_status(),
                    Some(&StackStatus::CreateComplete),
                    "{name}/{region}/{stack}"
                );
                let tags: BTreeMap<&str, &str> = s
                    .tags()
                    .iter()
                    .map(|t| (t.key().unwrap(), t.value().unwrap()))
                    .collect();
                assert_eq!(tags["landfall:customer"], "acme");
                assert_eq!(tags["landfall:package"], "acme-baseline");
                assert_eq!(tags["landfall:version"], "1");
                assert_eq!(tags["landfall:run"], run_id);
                let env = s
                    .parameters()
                    .iter()
                    .find(|p| p.parameter_key() == Some("Environment"))
                    .and_then(|p| p.parameter_value());
                let want = if name == "acme-prod" {
                    "production"
                } else {
                    "development"
                };
                assert_eq!(env, Some(want), "{name}/{stack}");
            }
            let listed = stacks_in(&emu, id, region).await;
            assert_eq!(listed.len(), expected.len(), "{name}/{region}: {listed:?}");
        }
    }

    let (out, doc) = provision(&sb, &emu, &["--set", "poll_initial=1s"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let again = actions(&doc);
    assert_eq!(again.len(), first.len());
    assert!(again.iter().all(|(_, _, a)| a == "unchanged"), "{again:?}");
    // Nothing was written: the stacks still carry the first run's tag.
    let cfn = emu
        .cloudformation_in(&accounts["acme-dev"], "eu-west-1")
        .await;
    let d = cfn
        .describe_stacks()
        .stack_name("acme-network")
        .send()
        .await
        .unwrap();
    assert!(d.stacks()[0]
        .tags()
        .iter()
        .any(|t| t.value() == Some(run_id.as_str())));
    assert!(d.stacks()[0].last_updated_time().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_create_is_rolled_back_and_the_run_fails_with_its_cause() {
    let emu = Emulator::start();
    let sb = Sandbox::new();
    let accounts = onboard(&sb, &emu);
    let prod = accounts["acme-prod"].clone();
    // Someone else already owns the name of the package's log bucket (bucket names are
    // global), so creating the security-baseline stack fails.
    let squat = format!("landfall-logs-acme-{prod}-us-east-1");
    emu.cloudformation()
        .create_stack()
        .stack_name("squatter")
        .template_body(format!(
            "Resources:\n  B:\n    Type: AWS::S3::Bucket\n    Properties:\n      BucketName: {squat}\n"
        ))
        .send()
        .await
        .unwrap();

    let (out, doc) = provision(
        &sb,
        &emu,
        &[
            "--set",
            "poll_initial=1s",
            "--set",
            r#"accounts=["acme-prod"]"#,
            "--set",
            r#"regions=["us-east-1"]"#,
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(log.contains("BucketAlreadyExists"), "{log}");
    assert!(
        log.contains("acme-security-baseline delete → DELETE_COMPLETE"),
        "the failure message says what rollback did: {log}"
    );
    assert_eq!(doc["status"], "failed");
    assert_eq!(node(&doc, "deploy[0]")["status"], "failed");
    assert_eq!(node(&doc, "verify")["status"], "skipped");
    assert_eq!(node(&doc, "rollback[0]")["status"], "succeeded");

    // The partial stack is gone from the member account.
    let cfn = emu.cloudformation_in(&prod, "us-east-1").await;
    let err = cfn
        .describe_stacks()
        .stack_name("acme-security-baseline")
        .send()
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("does not exist"), "{err:?}");
    let listed = stacks_in(&emu, &prod, "us-east-1").await;
    assert!(
        listed.iter().all(|(_, st, _)| st == "DELETE_COMPLETE"),
        "{listed:?}"
    );

    // The cause is in the audit log: the failed transition's context and the rollback's.
    let run_id = doc["run_id"].as_str().unwrap();
    let audit: Value =
        serde_json::from_slice(&sb.run(&["audit", run_id, "--json"]).stdout).unwrap();
    let entries = audit.as_array().unwrap();
    let failed = entries
        .iter()
        .find(|e| e["kind"] == "node_transition" && e["details"]["to"] == "failed")
        .unwrap();
    assert_eq!(
        failed["details"]["error"]["context"]["create_attempted"],
        true
    );
    assert_eq!(
        failed["details"]["error"]["context"]["api_error"]["code"],
        "BucketAlreadyExists"
    );
    let rollback = entries
        .iter()
        .find(|e| e["kind"] == "milestone" && e["details"]["kind"] == "rollback")
        .unwrap();
    let causes = rollback["details"]["data"]["causes"].to_string();
    assert!(causes.contains("BucketAlreadyExists"), "{causes}");
    let verify = sb.run(&["audit", run_id, "--verify"]);
    assert_eq!(verify.status.code(), Some(0));
}

/// Rollback never deletes a healthy stack another run created, whatever it is told: run A
/// provisions acme-prod; its security-baseline stack is then deleted, and its retained log
/// bucket makes run B's re-create fail. B's rollback removes B's failed stack and
/// keeps A's network and access stacks, found A's by their tags (no ownership is passed in).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_keeps_the_healthy_stacks_another_run_created() {
    let emu = Emulator::start();
    let sb = Sandbox::new();
    let accounts = onboard(&sb, &emu);
    let prod = accounts["acme-prod"].clone();
    let only = [
        "--set",
        "poll_initial=1s",
        "--set",
        r#"accounts=["acme-prod"]"#,
        "--set",
        r#"regions=["us-east-1"]"#,
    ];
    let (out, a) = provision(&sb, &emu, &only);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let run_a = a["run_id"].as_str().unwrap().to_string();
    let cfn = emu.cloudformation_in(&prod, "us-east-1").await;
    cfn.delete_stack()
        .stack_name("acme-security-baseline")
        .send()
        .await
        .unwrap();
    let gone = |cfn: aws_sdk_cloudformation::Client| async move {
        cfn.describe_stacks()
            .stack_name("acme-security-baseline")
            .send()
            .await
            .is_err()
    };
    let start = std::time::Instant::now();
    while !gone(cfn.clone()).await {
        assert!(start.elapsed().as_secs() < 60, "the stack was not deleted");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // The stack's log bucket is kept when the stack goes (`DeletionPolicy: Retain`), and its
    // name is taken: run B's re-create fails on it.
    let (out, b) = provision(&sb, &emu, &only);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    for stack in ["acme-network", "acme-access"] {
        let d = cfn.describe_stacks().stack_name(stack).send().await;
        let d = d.unwrap_or_else(|e| panic!("{stack} was deleted: {e:?}"));
        let s = &d.stacks()[0];
        let status = s.stack_status().unwrap().as_str();
        assert!(
            status.ends_with("_COMPLETE") && !status.starts_with("DELETE"),
            "{stack}: {status}"
        );
        let created_by = s
            .tags()
            .iter()
            .find(|t| t.key() == Some("landfall:created-by-run"))
            .and_then(|t| t.value());
        assert_eq!(created_by, Some(run_a.as_str()), "{stack} is A's");
    }
    assert_eq!(node(&b, "rollback[0]")["status"], "succeeded");
    assert!(gone(cfn.clone()).await, "B's failed stack is rolled back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_provisioning_then_resume_creates_no_stack_twice() {
    let emu = Emulator::start();
    let sb = Sandbox::new();
    let accounts = onboard(&sb, &emu);
    let mut args = provision_args(&["--set", "poll_initial=2s", "--run-id", "prov-1"]);
    args.retain(|a| a != "--json");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut child = landfall(&sb, &emu, &args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until a stack exists in AWS (CreateStack was answered), then kill while it is
    // being watched (the first look comes 2 s after CreateStack).
    let started = tokio::time::Instant::now();
    'created: loop {
        for id in accounts.values() {
            if !stacks_in(&emu, id, "us-east-1").await.is_empty() {
                break 'created;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no stack was created"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let status: Value =
        serde_json::from_slice(&sb.run(&["status", "prov-1", "--json"]).stdout).unwrap();
    assert_eq!(status["status"], "interrupted", "{status}");

    let out = landfall(&sb, &emu, &["resume", "prov-1", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["status"], "succeeded");
    let done = actions(&doc);
    assert_eq!(done.len(), 10, "{done:?}");
    assert!(
        done.iter().any(|(_, _, a)| a == "adopted"),
        "a stack started before the kill was adopted: {done:?}"
    );
    assert!(
        done.iter()
            .all(|(_, _, a)| a == "adopted" || a == "created"),
        "{done:?}"
    );
    // No stack was created twice: one stack (and one stack id) per name, none deleted.
    for id in accounts.values() {
        for region in ["us-east-1", "eu-west-1"] {
            let listed = stacks_in(&emu, id, region).await;
            let names: std::collections::BTreeSet<&str> =
                listed.iter().map(|(n, _, _)| n.as_str()).collect();
            assert_eq!(names.len(), listed.len(), "{listed:?}");
            assert!(
                listed.iter().all(|(_, st, _)| st == "CREATE_COMPLETE"),
                "{listed:?}"
            );
        }
    }
    let verify = sb.run(&["audit", "prov-1", "--verify"]);
    assert_eq!(verify.status.code(), Some(0));
}

/// Squats the name of the log bucket the security-baseline stack makes in `account`/`region`
/// (bucket names are global), so that stack's creation fails there.
async fn squat_log_bucket(emu: &Emulator, name: &str, account: &str, region: &str) {
    emu.cloudformation()
        .create_stack()
        .stack_name(name)
        .template_body(format!(
            "Resources:\n  B:\n    Type: AWS::S3::Bucket\n    Properties:\n      BucketName: landfall-logs-acme-{account}-{region}\n"
        ))
        .send()
        .await
        .unwrap();
}

/// Canary and rollback scope (issue 16): the first target deploys alone; a failure after it
/// rolls back that target only, the others keep their stacks; a failing canary keeps the other
/// targets from starting at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_stops_the_rest_and_rollback_touches_only_failed_targets() {
    let emu = Emulator::start();
    let sb = Sandbox::new();
    let accounts = onboard(&sb, &emu);
    let (prod, dev) = (accounts["acme-prod"].clone(), accounts["acme-dev"].clone());

    // us-east-1: the canary (acme-prod) deploys; acme-dev fails after it.
    squat_log_bucket(&emu, "squatter-dev", &dev, "us-east-1").await;
    let (out, doc) = provision(
        &sb,
        &emu,
        &[
            "--set",
            "poll_initial=1s",
            "--set",
            r#"regions=["us-east-1"]"#,
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(node(&doc, "deploy[0]")["status"], "succeeded");
    assert_eq!(node(&doc, "deploy[1]")["status"], "failed");
    assert_eq!(node(&doc, "rollback[0]")["outputs"]["account"], "acme-dev");
    assert!(
        doc["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["id"] != "rollback[1]"),
        "one target failed, one is rolled back: {doc}"
    );
    let kept = stacks_in(&emu, &prod, "us-east-1").await;
    for stack in ["acme-security-baseline", "acme-network", "acme-access"] {
        assert!(
            kept.iter()
                .any(|(n, s, _)| n == stack && s == "CREATE_COMPLETE"),
            "the canary's {stack} stays: {kept:?}"
        );
    }
    let rolled = stacks_in(&emu, &dev, "us-east-1").await;
    assert!(
        rolled.iter().all(|(_, s, _)| s == "DELETE_COMPLETE"),
        "the failed target is rolled back: {rolled:?}"
    );

    // The same failure within `tolerate`: the run succeeds, the failed target is rolled back
    // again and named in the success message.
    let (out, doc) = provision(
        &sb,
        &emu,
        &[
            "--set",
            "poll_initial=1s",
            "--set",
            r#"regions=["us-east-1"]"#,
            "--set",
            "tolerate=1",
            "--set",
            r##"stakeholders=["#acme"]"##,
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(doc["status"], "succeeded");
    assert_eq!(node(&doc, "deploy[1]")["status"], "failed");
    assert_eq!(node(&doc, "verify[0]")["status"], "succeeded");
    assert!(
        doc["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["id"] != "verify[1]"),
        "a failed target is not verified: {doc}"
    );
    assert_eq!(node(&doc, "rollback[0]")["outputs"]["account"], "acme-dev");
    assert_eq!(node(&doc, "notify")["status"], "succeeded");
    assert_eq!(node(&doc, "notify_failure")["status"], "skipped");
    let told = stderr(&out);
    assert!(
        told.contains("1 target(s) failed within the run's tolerance"),
        "{told}"
    );

    // eu-west-1: the canary (acme-prod) fails; acme-dev never starts.
    squat_log_bucket(&emu, "squatter-prod", &prod, "eu-west-1").await;
    let (out, doc) = provision(
        &sb,
        &emu,
        &[
            "--set",
            "poll_initial=1s",
            "--set",
            r#"regions=["eu-west-1"]"#,
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(node(&doc, "deploy[0]")["status"], "failed");
    assert_eq!(node(&doc, "deploy[1]")["status"], "skipped");
    assert_eq!(node(&doc, "deploy[1]")["attempts"], 0);
    assert_eq!(node(&doc, "rollback[0]")["outputs"]["account"], "acme-prod");
    assert!(
        stacks_in(&emu, &dev, "eu-west-1").await.is_empty(),
        "nothing was deployed after the failing canary"
    );
}
