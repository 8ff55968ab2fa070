//! The strict AWS layer through the real SDK (its rules refuse what AWS refuses, with AWS's
//! codes and reasons), and the AWS plugins against it: races between runs, and injected faults.

use std::collections::BTreeSet;

use landfall_engine::{ErrorClass, Plugin, StepContext};
use landfall_steps::step_error;
use landfall_steps::{Org, OrgConfig};
use landfall_steps::{Policy, PolicyConfig};
use serde_json::json;

use crate::support::Emulator;

fn org_config(customer: &str, accounts: usize) -> OrgConfig {
    serde_json::from_value(json!({
        "customer": customer,
        "accounts": (0..accounts).map(|i| json!({
            "name": format!("{customer}-{i}"),
            "email": format!("aws+{i}@{customer}.example"),
            "environment": "production",
        })).collect::<Vec<_>>(),
    }))
    .unwrap()
}

fn quick_org(emu: &Emulator) -> Org {
    let mut org = Org::new(emu.landfall_aws());
    org.first_poll = std::time::Duration::from_millis(100);
    org
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_refuses_what_aws_refuses_with_its_reasons() {
    let emu = Emulator::start_with(false);
    let orgs = emu.organizations().await;
    orgs.create_organization()
        .feature_set(aws_sdk_organizations::types::OrganizationFeatureSet::All)
        .send()
        .await
        .unwrap();
    let root = orgs.list_roots().send().await.unwrap().roots()[0]
        .id()
        .unwrap()
        .to_string();

    // Duplicate OU names under one parent.
    orgs.create_organizational_unit()
        .parent_id(&root)
        .name("Customers")
        .send()
        .await
        .unwrap();
    let e = orgs
        .create_organizational_unit()
        .parent_id(&root)
        .name("Customers")
        .send()
        .await
        .unwrap_err();
    let e = step_error("CreateOrganizationalUnit", e);
    assert_eq!(e.context["code"], "DuplicateOrganizationalUnitException");
    assert_eq!(e.class, ErrorClass::Permanent);

    // FullAWSAccess plus four more fit on the root; a sixth SCP does not.
    let doc = |i: usize| {
        format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Deny","Action":"s3:Get{i}","Resource":"*"}}]}}"#
        )
    };
    for i in 0..5 {
        let p = orgs
            .create_policy()
            .name(format!("p{i}"))
            .description("d")
            .content(doc(i))
            .r#type(aws_sdk_organizations::types::PolicyType::ServiceControlPolicy)
            .send()
            .await
            .unwrap();
        let id = p
            .policy()
            .unwrap()
            .policy_summary()
            .unwrap()
            .id()
            .unwrap()
            .to_string();
        let attached = orgs
            .attach_policy()
            .policy_id(&id)
            .target_id(&root)
            .send()
            .await;
        if i < 4 {
            attached.unwrap();
        } else {
            let e = step_error("AttachPolicy", attached.unwrap_err());
            assert_eq!(e.context["code"], "ConstraintViolationException");
            assert_eq!(
                e.context["reason"],
                "MAX_POLICY_TYPE_ATTACHMENT_LIMIT_EXCEEDED"
            );
            assert_eq!(e.class, ErrorClass::Permanent, "a quota is not critical");
        }
    }
    // An SCP over 5,120 characters.
    let big = format!(
        r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Deny","Action":"s3:GetObject","Resource":"arn:aws:s3:::{}"}}]}}"#,
        "b".repeat(5200)
    );
    let e = orgs
        .create_policy()
        .name("big")
        .description("d")
        .content(big)
        .r#type(aws_sdk_organizations::types::PolicyType::ServiceControlPolicy)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        step_error("CreatePolicy", e).context["reason"],
        "POLICY_CONTENT_LIMIT_EXCEEDED"
    );

    // Account creation is asynchronous: IN_PROGRESS, unlisted, then SUCCEEDED and listed; a
    // second request for the same email fails later with EMAIL_ALREADY_EXISTS.
    emu.set_knobs(json!({ "account_delay": 1.0, "finalize_delay": 0 }));
    let started = orgs
        .create_account()
        .email("one@acme.example")
        .account_name("one")
        .send()
        .await
        .unwrap();
    let s = started.create_account_status().unwrap();
    assert_eq!(s.state().unwrap().as_str(), "IN_PROGRESS");
    assert!(s.account_id().is_none());
    let listed = |out: aws_sdk_organizations::operation::list_accounts::ListAccountsOutput| {
        out.accounts()
            .iter()
            .map(|a| a.email().unwrap().to_string())
            .collect::<BTreeSet<_>>()
    };
    assert!(!listed(orgs.list_accounts().send().await.unwrap()).contains("one@acme.example"));
    let pending = orgs
        .list_create_account_status()
        .states(aws_sdk_organizations::types::CreateAccountState::InProgress)
        .send()
        .await
        .unwrap();
    assert_eq!(
        pending.create_account_statuses()[0].account_name(),
        Some("one")
    );
    let again = orgs
        .create_account()
        .email("one@acme.example")
        .account_name("one")
        .send()
        .await
        .unwrap();
    let again_id = again
        .create_account_status()
        .unwrap()
        .id()
        .unwrap()
        .to_string();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert!(listed(orgs.list_accounts().send().await.unwrap()).contains("one@acme.example"));
    let failed = orgs
        .describe_create_account_status()
        .create_account_request_id(&again_id)
        .send()
        .await
        .unwrap();
    let f = failed.create_account_status().unwrap();
    assert_eq!(f.state().unwrap().as_str(), "FAILED");
    assert_eq!(f.failure_reason().unwrap().as_str(), "EMAIL_ALREADY_EXISTS");

    // The organization's account quota (10 by default, the management account included).
    emu.set_knobs(json!({ "account_quota": 2 }));
    let e = orgs
        .create_account()
        .email("two@acme.example")
        .account_name("two")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        step_error("CreateAccount", e).context["reason"],
        "ACCOUNT_NUMBER_LIMIT_EXCEEDED"
    );
    let refusals = &emu.stats()["refusals"];
    for rule in [
        "DuplicateOrganizationalUnit",
        "PolicyAttachment",
        "PolicyContentLimit",
        "EmailAlreadyExists",
        "AccountQuota",
    ] {
        assert!(
            refusals[rule].as_u64().unwrap_or(0) >= 1,
            "{rule} never refused: {refusals}"
        );
    }
}

/// Three customers onboarded at once on a fresh organization: every run succeeds, with one
/// organization and one `Customers` OU (the races answer "already exists" and are adopted).
/// Their writes go out one at a time (one process); another writer of the organization (a
/// console user, another Landfall process) tags the organization all along, so writes do
/// collide and are waited out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_onboardings_on_a_fresh_organization_share_one_customers_ou() {
    let emu = Emulator::start_with(false);
    let org = std::sync::Arc::new(quick_org(&emu));
    let stop = tokio_util::sync::CancellationToken::new();
    let other_writer =
        {
            let orgs = emu.organizations().await;
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let root =
                        orgs.list_roots().send().await.ok().and_then(|r| {
                            r.roots().first().and_then(|r| r.id()).map(str::to_string)
                        });
                    if let Some(root) = root {
                        let tag = aws_sdk_organizations::types::Tag::builder()
                            .key("touched-by")
                            .value("console")
                            .build()
                            .unwrap();
                        let _ = orgs.tag_resource().resource_id(root).tags(tag).send().await;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                }
            })
        };
    let runs = ["acme", "globex", "initech"].map(|c| {
        let org = org.clone();
        tokio::spawn(async move {
            org.run(org_config(c, 1), StepContext::detached("org"))
                .await
        })
    });
    let mut ous = BTreeSet::new();
    for r in runs {
        let out = r
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("an onboarding failed: {e:?}"));
        ous.insert(out["ou_path"].as_str().unwrap().to_string());
    }
    stop.cancel();
    other_writer.await.unwrap();
    assert_eq!(ous.len(), 3);
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
    let names: Vec<_> = top
        .organizational_units()
        .iter()
        .filter_map(|o| o.name())
        .collect();
    assert_eq!(names, ["Customers"], "one Customers OU");
    // The writes did collide with the other writer's (every overlapping write is refused by
    // default) and were waited out, so the test covers the contention it is about.
    assert!(
        emu.stats()["refusals"]["ConcurrentModification"]
            .as_u64()
            .unwrap_or(0)
            >= 1,
        "no write was refused as concurrent: {}",
        emu.stats()
    );
}

/// With 30% of calls answered by throttling, 5xx or a reset connection, `org` and `policy`
/// still complete in one attempt each: faults are retried at the call, where they happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_and_policy_ride_out_thirty_percent_faults_at_the_call() {
    let emu = Emulator::start_with(false);
    emu.set_knobs(json!({ "fault_rate": 0.3, "seed": 7 }));
    let org = quick_org(&emu);
    let out = org
        .run(org_config("acme", 2), StepContext::detached("org"))
        .await
        .unwrap_or_else(|e| panic!("org failed under faults: {e:?}"));
    let policy = Policy {
        aws: emu.landfall_aws(),
        templates_dir: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"),
        policies: Default::default(),
    };
    let cfg: PolicyConfig = serde_json::from_value(json!({
        "customer": "acme", "target_id": out["ou_id"], "regions": ["us-east-1"],
    }))
    .unwrap();
    policy
        .run(cfg, StepContext::detached("policy"))
        .await
        .unwrap_or_else(|e| panic!("policy failed under faults: {e:?}"));
    let faults: u64 = emu.stats()["faults"]
        .as_object()
        .unwrap()
        .values()
        .filter_map(|v| v.as_u64())
        .sum();
    assert!(faults >= 5, "too few faults to prove anything: {faults}");
    // Nothing doubled: two accounts plus the management account, one OU per name.
    emu.set_knobs(json!({ "fault_rate": 0 }));
    let orgs = emu.organizations().await;
    assert_eq!(
        orgs.list_accounts().send().await.unwrap().accounts().len(),
        3
    );
}

/// An email that belongs to another customer's account is refused, never a reason to move
/// that account into this customer's OU: both while it waits at the root (told by its tags)
/// and once it sits in its own OU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_customers_account_is_never_adopted_by_its_email() {
    let emu = Emulator::start_with(false);
    let org = quick_org(&emu);
    let acme = org
        .run(org_config("acme", 1), StepContext::detached("org"))
        .await
        .unwrap();
    let acme_id = acme["accounts"][0]["id"].as_str().unwrap().to_string();
    let acme_ou = acme["ou_id"].as_str().unwrap().to_string();
    let mut thief = org_config("globex", 1);
    thief.accounts[0].email = "aws+0@acme.example".into();
    let e = org
        .run(thief, StepContext::detached("org"))
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::Permanent, "{}", e.message);
    assert!(e.message.contains("of customer acme"), "{}", e.message);

    // The same without the tag: an account in another OU is left where it is.
    let orgs = emu.organizations().await;
    orgs.untag_resource()
        .resource_id(&acme_id)
        .tag_keys("customer")
        .send()
        .await
        .unwrap();
    let mut thief = org_config("initech", 1);
    thief.accounts[0].email = "aws+0@acme.example".into();
    let e = org
        .run(thief, StepContext::detached("org"))
        .await
        .unwrap_err();
    assert_eq!(e.class, ErrorClass::Permanent, "{}", e.message);
    assert!(
        e.message.contains("which is in the OU acme"),
        "{}",
        e.message
    );
    let parents = orgs.list_parents().child_id(&acme_id).send().await.unwrap();
    assert_eq!(parents.parents()[0].id(), Some(acme_ou.as_str()));
}
