//! The `org` plugin end to end: the real `landfall` binary and AWS SDK against moto.

use crate::support::*;

const ORG_STEPS: &str = r#"
steps:
  - id: org
    uses: org
    with:
      customer: "{{ inputs.customer }}"
      accounts: "{{ inputs.accounts }}"
      tags: "{{ inputs.tags }}"
"#;

const POLICY_STEP: &str = r#"
  - id: policy
    uses: policy
    needs: [org]
    with:
      customer: "{{ inputs.customer }}"
      target_id: "{{ steps.org.outputs.ou_id }}"
      regions: "{{ inputs.regions }}"
"#;

fn org_workflow(more_steps: &str) -> String {
    format!("name: org-only{REQUIREMENTS_INPUTS}{ORG_STEPS}{more_steps}")
}

fn run_org(sb: &Sandbox, emu: &Emulator) -> serde_json::Value {
    let mut cmd = sb.cmd(&["run", "org.yaml", "--input", "acme.yaml", "--json"]);
    emu.apply(&mut cmd);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_creates_the_ou_and_accounts_once_and_a_second_run_changes_nothing() {
    let emu = Emulator::start();
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.path("templates/rules/baseline")).unwrap();
    sb.write("org.yaml", &org_workflow(""));
    sb.copy("examples/customers/acme.yaml");

    let first = run_org(&sb, &emu);
    let out = &node(&first, "org")["outputs"];
    assert_eq!(out["ou_path"], "Customers/acme");
    let accounts = out["accounts"].as_array().unwrap();
    assert_eq!(accounts.len(), 2);
    assert!(accounts.iter().all(|a| a["created"] == true));

    // Check what exists, with the SDK, not with what Landfall says.
    let orgs = emu.organizations().await;
    let root = orgs.list_roots().send().await.unwrap().roots()[0]
        .id()
        .unwrap()
        .to_string();
    let top = orgs
        .list_organizational_units_for_parent()
        .parent_id(&root)
        .send()
        .await
        .unwrap();
    let customers: Vec<_> = top
        .organizational_units()
        .iter()
        .filter(|o| o.name() == Some("Customers"))
        .collect();
    assert_eq!(customers.len(), 1);
    let under = orgs
        .list_organizational_units_for_parent()
        .parent_id(customers[0].id().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(under.organizational_units().len(), 1);
    let ou_id = under.organizational_units()[0].id().unwrap().to_string();
    assert_eq!(out["ou_id"], ou_id.as_str());
    let in_ou = orgs
        .list_accounts_for_parent()
        .parent_id(&ou_id)
        .send()
        .await
        .unwrap();
    let mut emails: Vec<String> = in_ou
        .accounts()
        .iter()
        .map(|a| a.email().unwrap().to_string())
        .collect();
    emails.sort();
    assert_eq!(
        emails,
        ["aws+acme-dev@acme.example", "aws+acme-prod@acme.example"]
    );
    let prod_id = accounts[0]["id"].as_str().unwrap();
    let tags = orgs
        .list_tags_for_resource()
        .resource_id(prod_id)
        .send()
        .await
        .unwrap();
    let tag = |k: &str| {
        tags.tags()
            .iter()
            .find(|t| t.key() == k)
            .map(|t| t.value().to_string())
    };
    assert_eq!(tag("customer").as_deref(), Some("acme"));
    assert_eq!(tag("environment").as_deref(), Some("production"));
    assert_eq!(tag("cost-center").as_deref(), Some("CC-1234"));
    let total_before = orgs.list_accounts().send().await.unwrap().accounts().len();

    // Running it again changes nothing.
    let second = run_org(&sb, &emu);
    let out2 = &node(&second, "org")["outputs"];
    assert_eq!(out2["ou_id"], out["ou_id"]);
    assert!(out2["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["created"] == false));
    assert_eq!(
        orgs.list_accounts().send().await.unwrap().accounts().len(),
        total_before
    );
    let top = orgs
        .list_organizational_units_for_parent()
        .parent_id(&root)
        .send()
        .await
        .unwrap();
    assert_eq!(top.organizational_units().len(), 1);
}

async fn attached(orgs: &aws_sdk_organizations::Client, target: &str) -> Vec<(String, String)> {
    let page = orgs
        .list_policies_for_target()
        .target_id(target)
        .filter(aws_sdk_organizations::types::PolicyType::ServiceControlPolicy)
        .send()
        .await
        .unwrap();
    let mut out = Vec::new();
    for p in page.policies() {
        let d = orgs
            .describe_policy()
            .policy_id(p.id().unwrap())
            .send()
            .await
            .unwrap();
        out.push((
            p.name().unwrap().to_string(),
            d.policy().unwrap().content().unwrap().to_string(),
        ));
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_attaches_exactly_the_intended_scps_and_removes_stale_ones() {
    let emu = Emulator::start();
    let sb = Sandbox::new();
    std::fs::create_dir_all(sb.path("templates/rules/baseline")).unwrap();
    let scp_dir = sb.path("templates/scp");
    std::fs::create_dir_all(&scp_dir).unwrap();
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates/scp");
    for e in std::fs::read_dir(&repo).unwrap().flatten() {
        std::fs::copy(e.path(), scp_dir.join(e.file_name())).unwrap();
    }
    sb.write("org.yaml", &org_workflow(POLICY_STEP));
    sb.copy("examples/customers/acme.yaml");

    let first = run_org(&sb, &emu);
    let ou = node(&first, "org")["outputs"]["ou_id"]
        .as_str()
        .unwrap()
        .to_string();
    let policies = node(&first, "policy")["outputs"]["policies"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(policies.len(), 4);
    let orgs = emu.organizations().await;
    let now = attached(&orgs, &ou).await;
    let ours: Vec<&(String, String)> = now
        .iter()
        .filter(|(n, _)| n.starts_with("landfall-acme-"))
        .collect();
    assert_eq!(ours.len(), 4, "{now:?}");
    // AWS's quota: at most 5 SCPs on the OU, FullAWSAccess still among them.
    assert_eq!(now.len(), 5, "{now:?}");
    assert!(now.iter().any(|(n, _)| n == "FullAWSAccess"), "{now:?}");
    let guard = ours
        .iter()
        .find(|(n, _)| n == "landfall-acme-region-guard")
        .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&guard.1).unwrap();
    assert_eq!(
        doc["Statement"][0]["Condition"]["StringNotEquals"]["aws:RequestedRegion"],
        serde_json::json!(["us-east-1", "eu-west-1"])
    );

    // Again: nothing changes.
    run_org(&sb, &emu);
    assert_eq!(attached(&orgs, &ou).await, now);

    // A template removed from the set is detached from the OU.
    std::fs::remove_file(scp_dir.join("data-protection.json.j2")).unwrap();
    run_org(&sb, &emu);
    let after = attached(&orgs, &ou).await;
    assert!(
        !after
            .iter()
            .any(|(n, _)| n == "landfall-acme-data-protection"),
        "{after:?}"
    );
    assert_eq!(
        after
            .iter()
            .filter(|(n, _)| n.starts_with("landfall-acme-"))
            .count(),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboarding_end_to_end_is_idempotent_and_versions_packages() {
    let emu = Emulator::start();
    let sb = Sandbox::new();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = |input: &str| {
        let mut cmd = sb.cmd(&[
            "run",
            root.join("workflows/onboarding.yaml").to_str().unwrap(),
            "--input",
            input,
            "--json",
        ]);
        cmd.env("LANDFALL_TEMPLATES_DIR", root.join("templates"));
        emu.apply(&mut cmd);
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        (
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
            stderr(&out),
        )
    };
    let acme = root.join("examples/customers/acme.yaml");
    let (first, log) = run(acme.to_str().unwrap());
    assert!(log.contains("Acme Corp (acme) is onboarded"), "{log}");
    assert_eq!(node(&first, "notify_failure")["status"], "skipped");
    let publish = &node(&first, "publish")["outputs"];
    assert_eq!(publish["ref"], "acme-baseline@1");

    let orgs = emu.organizations().await;
    let ou = node(&first, "org")["outputs"]["ou_id"]
        .as_str()
        .unwrap()
        .to_string();
    let attached = orgs
        .list_policies_for_target()
        .target_id(&ou)
        .filter(aws_sdk_organizations::types::PolicyType::ServiceControlPolicy)
        .send()
        .await
        .unwrap();
    assert_eq!(
        attached
            .policies()
            .iter()
            .filter(|p| p.name().unwrap().starts_with("landfall-acme-"))
            .count(),
        4
    );
    // Roles exist in each member account, trust only the management account, and the
    // deployer grants no wildcard action; they do not exist in the management account.
    let mgmt = node(&first, "org")["outputs"]["management_account_id"]
        .as_str()
        .unwrap()
        .to_string();
    for a in node(&first, "org")["outputs"]["accounts"]
        .as_array()
        .unwrap()
    {
        let iam = emu.iam_in(a["id"].as_str().unwrap()).await;
        for role in ["landfall-deployer", "landfall-verifier"] {
            let r = iam.get_role().role_name(role).send().await.unwrap();
            let trust = r.role().unwrap().assume_role_policy_document().unwrap();
            let trust = percent_decode(trust);
            assert!(
                trust.contains(&format!("arn:aws:iam::{mgmt}:root")),
                "{trust}"
            );
        }
        let p = iam
            .get_role_policy()
            .role_name("landfall-deployer")
            .policy_name("landfall-deployer-permissions")
            .send()
            .await
            .unwrap();
        let doc: serde_json::Value =
            serde_json::from_str(&percent_decode(p.policy_document())).unwrap();
        for st in doc["Statement"].as_array().unwrap() {
            for action in st["Action"].as_array().unwrap() {
                assert!(!action.as_str().unwrap().contains('*'), "{action}");
            }
        }
    }
    assert!(emu
        .iam()
        .get_role()
        .role_name("landfall-deployer")
        .send()
        .await
        .is_err());
    let accounts_before = orgs.list_accounts().send().await.unwrap().accounts().len();
    let policies_before = orgs
        .list_policies()
        .filter(aws_sdk_organizations::types::PolicyType::ServiceControlPolicy)
        .send()
        .await
        .unwrap()
        .policies()
        .len();

    // Again: nothing is duplicated, the package version stays.
    let (second, _) = run(acme.to_str().unwrap());
    assert_eq!(
        node(&second, "publish")["outputs"]["ref"],
        "acme-baseline@1"
    );
    assert_eq!(node(&second, "publish")["outputs"]["new"], false);
    assert_eq!(
        orgs.list_accounts().send().await.unwrap().accounts().len(),
        accounts_before
    );
    let policies_after = orgs
        .list_policies()
        .filter(aws_sdk_organizations::types::PolicyType::ServiceControlPolicy)
        .send()
        .await
        .unwrap()
        .policies()
        .len();
    assert_eq!(policies_after, policies_before);

    // Changed requirements: a new version appears.
    let changed = std::fs::read_to_string(&acme)
        .unwrap()
        .replace("availability_zones: 2", "availability_zones: 3");
    sb.write("acme-3az.yaml", &changed);
    let (third, _) = run(sb.path("acme-3az.yaml").to_str().unwrap());
    assert_eq!(node(&third, "publish")["outputs"]["ref"], "acme-baseline@2");
    let diff = sb.run(&["packages", "diff", "acme-baseline@1", "acme-baseline@2"]);
    assert_eq!(diff.status.code(), Some(1));
    assert!(stdout(&diff).contains("PublicSubnet2"), "{}", stdout(&diff));
}

fn percent_decode(s: &str) -> String {
    // IAM returns policy documents URL-encoded.
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .to_string()
}

/// The default package deploys cleanly on the emulator: every stack of every example reaches
/// CREATE_COMPLETE with every declared resource. (moto skips resource types it does not know
/// silently, so the count matters; see templates/cfn for what was chosen instead.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_package_deploys_cleanly_on_the_emulator() {
    use aws_sdk_cloudformation::types::{Parameter, StackStatus};
    let emu = Emulator::start_with(false);
    let cfn = emu.cloudformation();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for e in std::fs::read_dir(root.join("examples/customers"))
        .unwrap()
        .flatten()
    {
        let text = std::fs::read_to_string(e.path()).unwrap();
        let (doc, _) = landfall_engine::parse_document(&landfall_engine::Source::new(
            e.path().display().to_string(),
            text,
        ))
        .unwrap();
        let req = landfall_steps::Requirements::from_inputs(doc.value.as_object().unwrap(), None)
            .unwrap();
        let built =
            landfall_steps::build_package(&root.join("templates"), &req, None, None).unwrap();
        for stack in built.manifest["stacks"].as_array().unwrap() {
            let body = &built.files[stack["template"].as_str().unwrap()];
            let declared = serde_yaml::from_str::<serde_json::Value>(body).unwrap()["Resources"]
                .as_object()
                .unwrap()
                .len();
            let name = format!("{}-{}", req.customer, stack["name"].as_str().unwrap());
            let mut create = cfn
                .create_stack()
                .stack_name(&name)
                .template_body(body)
                .parameters(
                    Parameter::builder()
                        .parameter_key("Environment")
                        .parameter_value("production")
                        .build(),
                );
            if stack["deploy_parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p == "ManagementAccountId")
            {
                create = create.parameters(
                    Parameter::builder()
                        .parameter_key("ManagementAccountId")
                        .parameter_value("123456789012")
                        .build(),
                );
            }
            create
                .send()
                .await
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
            let described = cfn
                .describe_stacks()
                .stack_name(&name)
                .send()
                .await
                .unwrap();
            assert_eq!(
                described.stacks()[0].stack_status(),
                Some(&StackStatus::CreateComplete),
                "{name}"
            );
            let resources = cfn
                .list_stack_resources()
                .stack_name(&name)
                .send()
                .await
                .unwrap();
            assert_eq!(
                resources.stack_resource_summaries().len(),
                declared,
                "{name}: a resource was skipped"
            );
        }
    }
}
