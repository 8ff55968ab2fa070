//! Change control end to end: the operators' approval policy (`landfall.toml`) decides who must
//! approve a provisioning run of a production target, and `deploy` refuses to write without
//! those approvals, whatever the workflow says. Real binary, emulator, CLI identities
//! (`cli:<USER>`).

use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::provisioning::{landfall, onboard, provision_args, stacks_in};
use crate::support::{node, stderr, stdout, wait_until, Emulator, Sandbox};

const POLICY: &str = r#"
[[approval.policies]]
name = "production"
match = { environment = ["production"] }
min_approvals = 2
approvers = ["cli:alice", "cli:bob", "cli:carol"]
"#;

/// `landfall approve RUN approve` as the OS user `user`.
fn approve_as(sb: &Sandbox, emu: &Emulator, user: &str, run: &str) -> Output {
    landfall(sb, emu, &["approve", run, "approve"])
        .env("USER", user)
        .output()
        .unwrap()
}

/// Starts `args` as the OS user bob and waits until its approval step waits for decisions.
fn started_by_bob(sb: &Sandbox, emu: &Emulator, args: &[&str], run: &str) -> std::process::Child {
    let child = landfall(sb, emu, args)
        .env("USER", "bob")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the approval to wait", Duration::from_secs(180), || {
        node_status(sb, emu, run, "approve") == "waiting"
    });
    child
}

/// What someone editing a guard rail by hand writes into acme's region guard.
const EDITED: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"s3:*","Resource":"*"}]}"#;

/// Edits acme's region guard by hand, as someone in the console would; its policy id.
async fn edit_region_guard(orgs: &aws_sdk_organizations::Client) -> String {
    let listed = orgs
        .list_policies()
        .filter(aws_sdk_organizations::types::PolicyType::ServiceControlPolicy)
        .send()
        .await
        .unwrap();
    let id = listed
        .policies()
        .iter()
        .find(|p| p.name() == Some("landfall-acme-region-guard"))
        .and_then(|p| p.id())
        .unwrap()
        .to_string();
    orgs.update_policy()
        .policy_id(&id)
        .content(EDITED)
        .send()
        .await
        .unwrap();
    id
}

/// An SCP's content as AWS holds it.
async fn scp_content(orgs: &aws_sdk_organizations::Client, id: &str) -> String {
    orgs.describe_policy()
        .policy_id(id)
        .send()
        .await
        .unwrap()
        .policy()
        .and_then(|p| p.content())
        .unwrap()
        .to_string()
}

/// The change sets a run executed, sorted: the ids its `stack_started` milestones name.
fn executed_change_sets(audit: &Value) -> Vec<String> {
    let mut ids: Vec<String> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "milestone" && e["details"]["kind"] == "stack_started")
        .filter_map(|e| {
            e["details"]["data"]["change_set"]["id"]
                .as_str()
                .map(str::to_string)
        })
        .collect();
    ids.sort();
    ids
}

fn node_status(sb: &Sandbox, emu: &Emulator, run: &str, id: &str) -> String {
    let out = landfall(sb, emu, &["status", run, "--json"])
        .output()
        .unwrap();
    if !out.status.success() {
        return String::new();
    }
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    doc["nodes"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["id"] == id))
        .and_then(|n| n["status"].as_str())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_production_target_deploys_only_after_two_approvers_other_than_the_requester() {
    let emu = Emulator::start();
    let sb = Sandbox::new();
    sb.write("landfall.toml", POLICY);
    let accounts = onboard(&sb, &emu);

    // bob starts the run; the policy covers acme-prod (tagged `production` at onboarding).
    let args = provision_args(&["--run-id", "cc-1", "--set", "poll_initial=1s"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = started_by_bob(&sb, &emu, &args, "cc-1");

    // The requester's approval is refused, and so is an outsider's; nothing is recorded.
    let own = approve_as(&sb, &emu, "bob", "cc-1");
    assert_eq!(own.status.code(), Some(1), "{}", stderr(&own));
    assert!(
        stderr(&own).contains("cli:bob started this run, and policy production needs someone else"),
        "{}",
        stderr(&own)
    );
    let outsider = approve_as(&sb, &emu, "mallory", "cc-1");
    assert_eq!(outsider.status.code(), Some(1), "{}", stderr(&outsider));
    assert!(
        stderr(&outsider).contains("cli:mallory is not among the approvers of policy production"),
        "{}",
        stderr(&outsider)
    );
    // One approval is not enough.
    let first = approve_as(&sb, &emu, "alice", "cc-1");
    assert_eq!(first.status.code(), Some(0), "{}", stderr(&first));
    assert!(
        stdout(&first).starts_with("recorded 1 of 2 approvals (policy production)"),
        "{}",
        stdout(&first)
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(node_status(&sb, &emu, "cc-1", "approve"), "waiting");
    // The second approver completes it.
    let second = approve_as(&sb, &emu, "carol", "cc-1");
    assert_eq!(second.status.code(), Some(0), "{}", stderr(&second));
    assert!(
        stdout(&second).starts_with("approved "),
        "{}",
        stdout(&second)
    );

    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let approved = &node(&doc, "approve")["outputs"];
    assert_eq!(
        approved["approvers"],
        serde_json::json!(["cli:alice", "cli:carol"])
    );
    assert_eq!(approved["policies"][0]["policy"], "production");
    // The decisions are audited with actor and digest.
    let audit = sb.json(&["audit", "cc-1", "--json"]);
    let decided: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "signal_received")
        .collect();
    let actors: Vec<&str> = decided.iter().filter_map(|e| e["actor"].as_str()).collect();
    assert_eq!(
        actors,
        ["cli:alice", "cli:carol"],
        "refused decisions are not recorded"
    );
    assert!(decided
        .iter()
        .all(|e| e["details"]["value"]["digest"] == approved["digest"]));
    let prod = &accounts["acme-prod"];
    assert!(
        !stacks_in(&emu, prod, "us-east-1").await.is_empty(),
        "acme-prod was deployed"
    );
}

/// The enforcement point is the write: a workflow without an approval step, even one that
/// hands `deploy` a target labelled `development`, cannot deploy into an account tagged
/// `production` at onboarding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_refuses_a_covered_target_without_approvals_whatever_the_workflow_says() {
    let emu = Emulator::start();
    let sb = Sandbox::new();
    sb.write("landfall.toml", POLICY);
    let accounts = onboard(&sb, &emu);
    let prod = accounts["acme-prod"].clone();
    sb.write(
        "sneaky.yaml",
        &format!(
            r#"
name: sneaky
steps:
  - id: fetch
    uses: package
    with: {{ action: fetch, ref: "acme-baseline@latest" }}
  - id: deploy
    uses: deploy
    needs: [fetch]
    with:
      package: "{{{{ steps.fetch.outputs.id }}}}@{{{{ steps.fetch.outputs.version }}}}"
      digest: "{{{{ steps.fetch.outputs.digest }}}}"
      target: {{ account: acme-prod, account_id: "{prod}", region: us-east-1, home: true, environment: development, parameters: {{ Environment: development }} }}
      parameters: {{ ManagementAccountId: "000000000000" }}
      poll: {{ initial: 1s }}
"#
        ),
    );
    let out = landfall(&sb, &emu, &["run", "sneaky.yaml", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let err = node(&doc, "deploy")["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        err.contains("target acme-prod/us-east-1 needs approval before Landfall may change it: recorded 0 of 2 approvals (policy production)"),
        "{err}"
    );
    assert!(
        stacks_in(&emu, &prod, "us-east-1").await.is_empty(),
        "nothing was written"
    );
}

/// `landfall plan` of provisioning: before the first deploy it shows the stacks to create and
/// writes nothing; after the customer's requirements gain an availability zone, it shows the
/// network stacks to update (subnets and route tables to add) through change sets that are
/// never executed, and the stacks stay as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_shows_what_would_change_changes_nothing_and_applies_as_planned() {
    let emu = Emulator::start();
    let sb = Sandbox::new();
    let accounts = onboard(&sb, &emu);
    let prod = accounts["acme-prod"].clone();
    let plan = |sb: &Sandbox| -> Value {
        let args = provision_args(&[]);
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args[0] = "plan";
        let out = landfall(sb, &emu, &args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}\n{}",
            stderr(&out),
            stdout(&out)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let summary = |p: &Value, node: &str| -> String {
        p["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == node)
            .and_then(|n| n["summary"].as_str())
            .unwrap_or_default()
            .to_string()
    };

    let first = plan(&sb);
    assert!(
        summary(&first, "plan[0]").contains("create acme-network ("),
        "{first:#}"
    );
    assert_eq!(
        first["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == "rollback")
            .unwrap()["status"],
        "skipped"
    );
    assert!(
        stacks_in(&emu, &prod, "us-east-1").await.is_empty(),
        "planning created no stack"
    );

    // Deploy for real, then give the customer a third availability zone.
    let args = provision_args(&["--set", "poll_initial=1s"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = landfall(&sb, &emu, &args).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let before = stacks_in(&emu, &prod, "us-east-1").await;
    let acme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/customers/acme.yaml"),
    )
    .unwrap()
    .replace("availability_zones: 2", "availability_zones: 3");
    sb.write("acme-3az.yaml", &acme);
    let wf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows/onboarding.yaml");
    let out = landfall(
        &sb,
        &emu,
        &["run", wf.to_str().unwrap(), "--input", "acme-3az.yaml"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let second = plan(&sb);
    let deploy0 = summary(&second, "plan[0]");
    assert!(deploy0.contains("update acme-network: "), "{second:#}");
    let network = second["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["changes"].as_array().cloned().unwrap_or_default())
        .find(|c| c["stack"] == "acme-network" && c["action"] == "update")
        .expect("an update of acme-network");
    assert!(network["adds"].as_u64().unwrap() > 0, "{network:#}");
    let added: Vec<&str> = network["resources"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "Add")
        .filter_map(|r| r["type"].as_str())
        .collect();
    assert!(added.contains(&"AWS::EC2::Subnet"), "{added:?}");
    assert!(network["change_set"]["id"].as_str().is_some());
    // The stacks did not move: same status, nothing executed.
    assert_eq!(stacks_in(&emu, &prod, "us-east-1").await, before);

    // Both plans are listed and shown.
    let list = sb.json(&["plans", "list", "--json"]);
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["plan_id"], second["plan_id"], "newest first");
    let shown = landfall(
        &sb,
        &emu,
        &["plans", "show", second["plan_id"].as_str().unwrap()],
    )
    .output()
    .unwrap();
    assert!(
        stdout(&shown).contains("update acme-network: "),
        "{}",
        stdout(&shown)
    );
    assert!(stdout(&shown).contains(second["digest"].as_str().unwrap()));

    // `landfall run --plan` applies that stored plan: refused for another workflow file...
    let plan_id = second["plan_id"].as_str().unwrap();
    let out = landfall(&sb, &emu, &["run", wf.to_str().unwrap(), "--plan", plan_id])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("another version of the workflow"),
        "{}",
        stderr(&out)
    );
    // ...and for the planned one executes exactly the planned change sets.
    let provisioning =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows/provisioning.yaml");
    let out = landfall(
        &sb,
        &emu,
        &[
            "run",
            provisioning.to_str().unwrap(),
            "--plan",
            plan_id,
            "--json",
        ],
    )
    .output()
    .unwrap();
    let run: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    // Not the run's exit code: on the emulator, `verify` after a network update meets moto
    // losing the internet gateway's logical id (docs/aws-fidelity.md); the deploys are what
    // apply the plan.
    for n in ["deploy[0]", "deploy[1]", "deploy[2]", "deploy[3]"] {
        assert_eq!(
            node(&run, n)["status"],
            "succeeded",
            "{n}: {}",
            stderr(&out)
        );
    }
    let mut planned: Vec<String> = second["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["changes"].as_array().cloned().unwrap_or_default())
        .filter_map(|c| c["change_set"]["id"].as_str().map(str::to_string))
        .collect();
    planned.sort();
    let audit = sb.json(&["audit", run["run_id"].as_str().unwrap(), "--json"]);
    let executed = executed_change_sets(&audit);
    assert!(!planned.is_empty());
    assert_eq!(executed, planned);
    let created = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "run_created")
        .unwrap();
    assert_eq!(created["details"]["plan_id"], plan_id);
}

/// Plan → approval → apply in one run: what is executed is exactly the planned change sets
/// (their ids in the audit), approved under the policy for the plan's digest; a stack changed
/// between plan and apply makes the apply refuse, writing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_executes_exactly_the_approved_plan_and_refuses_a_changed_stack() {
    let emu = Emulator::start();
    let sb = Sandbox::new();
    let accounts = onboard(&sb, &emu);
    let prod = accounts["acme-prod"].clone();
    let args = provision_args(&["--set", "poll_initial=1s"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = landfall(&sb, &emu, &args).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // From now on production needs two approvals; the customer gains an availability zone.
    sb.write("landfall.toml", POLICY);
    let acme = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/customers/acme.yaml"),
    )
    .unwrap()
    .replace("availability_zones: 2", "availability_zones: 3");
    sb.write("acme-3az.yaml", &acme);
    let wf = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("workflows/onboarding.yaml");
    let out = landfall(
        &sb,
        &emu,
        &["run", wf.to_str().unwrap(), "--input", "acme-3az.yaml"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // Without the canary: one target's refusal does not keep the others from applying.
    let start = |run: &str| {
        let args = provision_args(&[
            "--run-id",
            run,
            "--set",
            "poll_initial=1s",
            "--set",
            "canary=false",
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        started_by_bob(&sb, &emu, &args, run)
    };
    let planned_ids = |run: &str| -> Vec<String> {
        let doc = sb.json(&["status", run, "--json"]);
        doc["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["id"].as_str().unwrap().starts_with("plan["))
            .flat_map(|n| {
                n["outputs"]["changes"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|c| c["change_set"]["id"].as_str().map(str::to_string))
            .collect()
    };

    // The plan is made; then someone deletes a stack of one target by hand before the
    // approvals arrive.
    let child = start("cc-2");
    let planned = planned_ids("cc-2");
    assert!(!planned.is_empty(), "the plan has change sets to execute");
    let cfn = emu.cloudformation_in(&prod, "us-east-1").await;
    cfn.delete_stack()
        .stack_name("acme-security-baseline")
        .send()
        .await
        .unwrap();
    for who in ["alice", "carol"] {
        let o = approve_as(&sb, &emu, who, "cc-2");
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    // That target refuses, writing nothing...
    let err = node(&doc, "deploy[0]")["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        err.contains("acme-security-baseline changed since the plan (it was deleted): plan again"),
        "{err}"
    );
    let recreated = stacks_in(&emu, &prod, "us-east-1")
        .await
        .into_iter()
        .any(|(name, status, _)| name == "acme-security-baseline" && status != "DELETE_COMPLETE");
    assert!(!recreated, "the refused apply wrote nothing");
    // ...and the others executed exactly their planned change sets (ids in the audit).
    for n in ["deploy[1]", "deploy[2]", "deploy[3]"] {
        assert_eq!(
            node(&doc, n)["status"],
            "succeeded",
            "{n}: {}",
            node(&doc, n)
        );
    }
    let target0: Vec<String> = node(&doc, "plan[0]")["outputs"]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["change_set"]["id"].as_str().map(str::to_string))
        .collect();
    let mut expected: Vec<String> = planned
        .into_iter()
        .filter(|id| !target0.contains(id))
        .collect();
    expected.sort();
    let audit = sb.json(&["audit", "cc-2", "--json"]);
    // The approval request carried the plan's records, which Slack shows as blocks per target.
    let asked = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "milestone" && e["details"]["kind"] == "approval_requested")
        .expect("an approval request");
    let shown = asked["details"]["data"]["details"]["plan"]
        .as_array()
        .unwrap();
    assert_eq!(shown.len(), 4, "one per target");
    assert!(shown.iter().all(|t| t["changes"].is_array()));
    let executed = executed_change_sets(&audit);
    assert!(!expected.is_empty());
    assert_eq!(executed, expected);
}

/// `org`, `policy` and `iam` plan too: on a fresh organization the plan creates the
/// organization, OUs and accounts (what reads a new id is known after apply); once onboarded,
/// nothing; an SCP edited by hand is planned back with its JSON diff. Applying that plan puts
/// it back; applying it a second time is refused, since AWS no longer is what was planned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboarding_plans_org_policy_and_iam_and_applies_only_what_it_planned() {
    let emu = Emulator::start();
    let sb = Sandbox::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let wf = root.join("workflows/onboarding.yaml");
    let input = root.join("examples/customers/acme.yaml");
    let plan = |sb: &Sandbox| -> Value {
        let out = landfall(
            sb,
            &emu,
            &[
                "plan",
                wf.to_str().unwrap(),
                "--input",
                input.to_str().unwrap(),
                "--json",
            ],
        )
        .output()
        .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let planned = |p: &Value, id: &str| -> Value {
        p["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no {id} in {p:#}"))
    };

    let fresh = plan(&sb);
    let org = planned(&fresh, "org");
    assert_eq!(org["status"], "changes", "{org:#}");
    let created: Vec<&str> = org["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["action"] == "create")
        .filter_map(|c| c["what"].as_str())
        .collect();
    assert_eq!(created.iter().filter(|w| **w == "account").count(), 2);
    assert!(created.contains(&"OU"), "{created:?}");
    // The OU and accounts do not exist yet: what reads their ids is known after apply.
    for n in ["policy", "iam"] {
        assert_eq!(planned(&fresh, n)["status"], "unknown", "{n}");
    }
    let orgs = emu.organizations().await;
    let accounts = orgs.list_accounts().send().await.unwrap();
    assert!(
        accounts.accounts().len() <= 1,
        "planning created no account"
    );

    let accounts = onboard(&sb, &emu);
    let settled = plan(&sb);
    for n in ["org", "policy", "iam"] {
        let node = planned(&settled, n);
        assert_eq!(node["status"], "no_changes", "{n}: {node:#}");
    }

    // Someone edits a guard rail by hand.
    let guard = edit_region_guard(&orgs).await;
    // And widens the deployer's permissions in one account.
    let iam = emu.iam_in(&accounts["acme-dev"]).await;
    let wide =
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#;
    iam.put_role_policy()
        .role_name("landfall-deployer")
        .policy_name("landfall-deployer-permissions")
        .policy_document(wide)
        .send()
        .await
        .unwrap();
    let drift = plan(&sb);
    let roles = planned(&drift, "iam");
    assert_eq!(roles["status"], "changes", "{roles:#}");
    let changes = roles["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{roles:#}");
    assert_eq!(changes[0]["action"], "update");
    assert_eq!(changes[0]["account"], "acme-dev");
    assert_eq!(changes[0]["policy"], "landfall-deployer-permissions");
    assert!(!changes[0]["diff"].as_array().unwrap().is_empty());
    let policy = planned(&drift, "policy");
    assert_eq!(policy["status"], "changes", "{policy:#}");
    let update = &policy["changes"][0];
    assert_eq!(update["action"], "update");
    assert_eq!(update["policy"], "landfall-acme-region-guard");
    let ops: Vec<&str> = update["diff"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|op| op["op"].as_str())
        .collect();
    assert!(!ops.is_empty(), "{update:#}");
    assert_eq!(planned(&drift, "org")["status"], "no_changes");

    // Applying the plan puts the guard rail back...
    let plan_id = drift["plan_id"].as_str().unwrap();
    let apply = |sb: &Sandbox| {
        let out = landfall(
            sb,
            &emu,
            &["run", wf.to_str().unwrap(), "--plan", plan_id, "--json"],
        )
        .output()
        .unwrap();
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        (out, doc)
    };
    let (out, _) = apply(&sb);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let content = scp_content(&orgs, &guard).await;
    assert_ne!(content, EDITED);
    assert!(content.contains("aws:RequestedRegion"), "{content}");
    let restored = iam
        .get_role_policy()
        .role_name("landfall-deployer")
        .policy_name("landfall-deployer-permissions")
        .send()
        .await
        .unwrap();
    // IAM answers the document URL-encoded.
    let doc: Value = serde_json::from_str(
        &percent_encoding::percent_decode_str(restored.policy_document()).decode_utf8_lossy(),
    )
    .unwrap();
    let granted: Vec<&str> = doc["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["Action"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    assert!(granted.len() > 1, "{doc:#}");
    assert!(!granted.contains(&"*"), "{doc:#}");
    // ...and a second apply of the same plan is refused before it writes: AWS has moved.
    let (out, doc) = apply(&sb);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = node(&doc, "policy")["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        err.starts_with("changed since the plan: plan again"),
        "{err}"
    );
    assert!(err.contains("now: no changes"), "{err}");
}

/// `policy` (and `iam`) are enforcement points too: updating a guard rail of an OU that holds a
/// production account waits, in the onboarding workflow, for the production policy's
/// approvals of exactly that plan; and a workflow that skips the plan and the approval is
/// refused by the plugin before it writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changing_an_existing_production_guard_rail_needs_the_policys_approvals() {
    let emu = Emulator::start();
    let sb = Sandbox::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let wf = root.join("workflows/onboarding.yaml");
    let input = root.join("examples/customers/acme.yaml");
    let accounts = onboard(&sb, &emu);
    sb.write("landfall.toml", POLICY);
    let orgs = emu.organizations().await;
    let guard = edit_region_guard(&orgs).await;

    // Without a plan and an approval, the plugin refuses.
    let roots = orgs.list_roots().send().await.unwrap();
    let root_id = roots.roots()[0].id().unwrap().to_string();
    let ou_of = |parent: String, name: &'static str| {
        let orgs = orgs.clone();
        async move {
            orgs.list_organizational_units_for_parent()
                .parent_id(parent)
                .send()
                .await
                .unwrap()
                .organizational_units()
                .iter()
                .find(|o| o.name() == Some(name))
                .and_then(|o| o.id())
                .unwrap()
                .to_string()
        }
    };
    let customers = ou_of(root_id, "Customers").await;
    let acme_ou = ou_of(customers, "acme").await;
    let management = orgs
        .describe_organization()
        .send()
        .await
        .unwrap()
        .organization()
        .and_then(|o| o.master_account_id())
        .unwrap()
        .to_string();
    let prod = &accounts["acme-prod"];
    // The same guard rails as onboarding; a deployer confined to other resource types than
    // onboarding gave it, in the production account.
    let bare = sb.write(
        "rails.yaml",
        &format!(
            "name: rails\nsteps:\n  - id: policy\n    uses: policy\n    with: {{ customer: acme, target_id: {acme_ou}, regions: [eu-west-1, us-east-1] }}\n  - id: iam\n    uses: iam\n    with: {{ accounts: [{{ name: acme-prod, id: '{prod}' }}], management_account_id: '{management}', resource_types: ['AWS::EC2::VPC'], stack_prefix: acme- }}\n"
        ),
    );
    let out = landfall(&sb, &emu, &["run", bare.to_str().unwrap(), "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let err = node(&doc, "policy")["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(err.contains("approval policy production covers"), "{err}");
    assert!(err.contains("plan it first"), "{err}");
    assert_eq!(scp_content(&orgs, &guard).await, EDITED, "nothing written");
    let err = node(&doc, "iam")["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        err.starts_with("the roles in acme-prod would change what exists in accounts approval policy production covers"),
        "{err}"
    );

    // Onboarding again plans, asks the production policy, and applies once it is satisfied.
    let child = started_by_bob(
        &sb,
        &emu,
        &[
            "run",
            wf.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--run-id",
            "ob-2",
            "--json",
        ],
        "ob-2",
    );
    let o = approve_as(&sb, &emu, "alice", "ob-2");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        node_status(&sb, &emu, "ob-2", "approve"),
        "waiting",
        "one of two"
    );
    assert_eq!(scp_content(&orgs, &guard).await, EDITED);
    let o = approve_as(&sb, &emu, "carol", "ob-2");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let now = scp_content(&orgs, &guard).await;
    assert!(now.contains("aws:RequestedRegion"), "{now}");
    // The plugin said whose approvals let it write (the console shows step logs).
    assert!(
        stderr(&out).contains("approved under policy production by cli:alice, cli:carol"),
        "{}",
        stderr(&out)
    );
}
