//! Property tests that need AWS: the `org` and `policy` plugins against the emulator
//! (seed properties 5 and 6).

use std::collections::BTreeSet;
use std::path::Path;

use landfall_engine::{Plugin, StepContext};
use landfall_steps::{Org, OrgConfig};
use landfall_steps::{Policy, PolicyConfig};
use proptest::prelude::*;
use serde_json::json;

use crate::support::Emulator;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn accounts() -> impl Strategy<Value = Vec<(String, &'static str)>> {
    prop::collection::btree_set("[a-z]{3,6}", 1..=4).prop_flat_map(|names| {
        let n = names.len();
        (
            Just(names.into_iter().collect::<Vec<_>>()),
            prop::collection::vec(
                prop::sample::select(vec!["production", "staging", "development", "sandbox"]),
                n,
            ),
        )
            .prop_map(|(names, envs)| names.into_iter().zip(envs).collect())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    /// Feature: agent-onboarding-provisioning, Property 5: Organization Creation Consistency.
    /// For any customer and set of accounts, `org` leaves exactly one `Customers/<customer>` OU
    /// holding every requested account, each existing exactly once in the organization (by
    /// email) and tagged with its customer and environment; running it again returns the same
    /// ids and creates nothing. (Accounts are never removed: an OU may hold earlier ones.)
    #[test]
    fn prop5_organization_creation_consistency(customer in "[a-z][a-z0-9]{2,8}", accts in accounts()) {
        // Reset before each case: the organization's account quota (10) holds across cases.
        let emu = EMU.with(|e| e.clone());
        emu.reset();
        rt().block_on(async {
            let mut org = Org::new(emu.landfall_aws());
            org.first_poll = std::time::Duration::from_millis(50);
            let cfg = || -> OrgConfig {
                serde_json::from_value(json!({
                    "customer": customer,
                    "accounts": accts.iter().map(|(n, e)| json!({
                        "name": format!("{customer}-{n}"), "email": format!("aws+{n}@{customer}.example"), "environment": e,
                    })).collect::<Vec<_>>(),
                })).unwrap()
            };
            let first = org.run(cfg(), StepContext::detached("org")).await.unwrap();
            let second = org.run(cfg(), StepContext::detached("org")).await.unwrap();
            prop_assert_eq!(&first["ou_id"], &second["ou_id"]);
            let ids = |v: &serde_json::Value| v["accounts"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap().to_string()).collect::<Vec<_>>();
            prop_assert_eq!(ids(&first), ids(&second));
            prop_assert!(second["accounts"].as_array().unwrap().iter().all(|a| a["created"] == false));

            let orgs = emu.organizations().await;
            let ou = first["ou_id"].as_str().unwrap();
            let mut emails = BTreeSet::new();
            let mut pages = orgs.list_accounts_for_parent().parent_id(ou).into_paginator().send();
            while let Some(page) = pages.next().await {
                emails.extend(page.unwrap().accounts().iter().map(|a| a.email().unwrap().to_string()));
            }
            let want: BTreeSet<String> = accts.iter().map(|(n, _)| format!("aws+{n}@{customer}.example")).collect();
            prop_assert!(want.is_subset(&emails), "{:?} not all in {:?}", want, emails);
            let root = orgs.list_roots().send().await.unwrap().roots()[0].id().unwrap().to_string();
            let top = orgs.list_organizational_units_for_parent().parent_id(&root).send().await.unwrap();
            prop_assert_eq!(top.organizational_units().iter().filter(|o| o.name() == Some("Customers")).count(), 1);
            let customers = top.organizational_units().iter().find(|o| o.name() == Some("Customers")).unwrap().id().unwrap().to_string();
            let mut named = 0;
            let mut pages = orgs.list_organizational_units_for_parent().parent_id(&customers).into_paginator().send();
            while let Some(page) = pages.next().await {
                named += page.unwrap().organizational_units().iter().filter(|o| o.name() == Some(customer.as_str())).count();
            }
            prop_assert_eq!(named, 1);
            let mut all = Vec::new();
            let mut pages = orgs.list_accounts().into_paginator().send();
            while let Some(page) = pages.next().await {
                all.extend(page.unwrap().accounts().iter().filter_map(|a| a.email().map(str::to_string)));
            }
            for email in &want {
                prop_assert_eq!(all.iter().filter(|a| *a == email).count(), 1);
            }
            for (a, (_, env)) in first["accounts"].as_array().unwrap().iter().zip(&accts) {
                let tags = orgs.list_tags_for_resource().resource_id(a["id"].as_str().unwrap()).send().await.unwrap();
                let get = |k: &str| tags.tags().iter().find(|t| t.key() == k).map(|t| t.value().to_string());
                prop_assert_eq!(get("customer"), Some(customer.clone()));
                prop_assert_eq!(get("environment"), Some(env.to_string()));
            }
            Ok(())
        })?;
    }

    /// Feature: agent-onboarding-provisioning, Property 6: Policy Application Completeness.
    /// For any allowed regions and any subset of the guard-rail templates, after `policy` the
    /// OU carries exactly those Landfall SCPs with exactly the rendered content; applying a
    /// smaller set afterwards detaches the rest.
    #[test]
    fn prop6_policy_application_completeness(
        customer in "[a-z][a-z0-9]{2,8}",
        regions in prop::sample::subsequence(vec!["us-east-1", "eu-west-1", "ap-southeast-2", "us-west-2"], 1..=4),
        first_set in prop::sample::subsequence(TEMPLATES.to_vec(), 1..=4),
        keep in 0usize..4,
    ) {
        let emu = EMU.with(|e| e.clone());
        emu.reset();
        rt().block_on(async {
            let aws = emu.landfall_aws();
            let mut org = Org::new(aws.clone());
            org.first_poll = std::time::Duration::from_millis(50);
            let out = org.run(serde_json::from_value(json!({
                "customer": customer,
                "accounts": [{ "name": format!("{customer}-prod"), "email": format!("aws+prod@{customer}.example"), "environment": "production" }],
            })).unwrap(), StepContext::detached("org")).await.unwrap();
            let ou = out["ou_id"].as_str().unwrap().to_string();
            let policy = Policy { aws, templates_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("templates"), policies: Default::default() };
            let admins = vec![format!("arn:aws:iam::*:role/{customer}-admin")];
            let protected = vec!["arn:aws:iam::*:role/Landfall*".to_string()];
            let cfg = |set: &[&str]| -> PolicyConfig {
                serde_json::from_value(json!({ "customer": customer, "target_id": ou, "regions": regions, "templates": set, "admin_principals": admins, "protected_roles": protected })).unwrap()
            };
            let orgs = emu.organizations().await;
            let second_set: Vec<&str> = first_set.iter().copied().take(keep.min(first_set.len()).max(1)).collect();
            for set in [&first_set[..], &second_set[..]] {
                policy.run(cfg(set), StepContext::detached("policy")).await.unwrap();
                // A second implementation of the rendering, not `policy::render`: the template
                // text, comments cut, each placeholder replaced by the JSON of its value.
                let want: Vec<(String, serde_json::Value)> = set
                    .iter()
                    .map(|t| {
                        let text = std::fs::read_to_string(policy.templates_dir.join(format!("scp/{t}.json.j2"))).unwrap();
                        let text = match text.find("-#}") { Some(i) => &text[i + 3..], None => &text[..] };
                        let text = text
                            .replace("{{ regions }}", &json!(regions).to_string())
                            .replace("{{ admin_principals }}", &json!(admins).to_string())
                            .replace("{{ protected_roles }}", &json!(protected).to_string());
                        assert!(!text.contains("{{"), "{t}: a placeholder this test does not know");
                        (format!("landfall-{customer}-{t}"), serde_json::from_str(&text).unwrap())
                    })
                    .collect();
                let attached = orgs
                    .list_policies_for_target()
                    .target_id(&ou)
                    .filter(aws_sdk_organizations::types::PolicyType::ServiceControlPolicy)
                    .send()
                    .await
                    .unwrap();
                let prefix = format!("landfall-{customer}-");
                let ours: Vec<_> = attached.policies().iter().filter(|p| p.name().unwrap().starts_with(&prefix)).collect();
                let names: BTreeSet<&str> = ours.iter().map(|p| p.name().unwrap()).collect();
                let want_names: BTreeSet<&str> = want.iter().map(|(n, _)| n.as_str()).collect();
                prop_assert_eq!(names, want_names);
                for p in ours {
                    let d = orgs.describe_policy().policy_id(p.id().unwrap()).send().await.unwrap();
                    let content: serde_json::Value = serde_json::from_str(d.policy().unwrap().content().unwrap()).unwrap();
                    let (_, w) = want.iter().find(|(n, _)| Some(n.as_str()) == p.name()).unwrap();
                    prop_assert_eq!(&content, w);
                }
            }
            Ok(())
        })?;
    }
}

const TEMPLATES: [&str; 4] = [
    "data-protection",
    "organization-integrity",
    "region-guard",
    "security-baseline",
];

thread_local! {
    /// One emulator per test thread, shared by that thread's cases (reset before each).
    static EMU: std::rc::Rc<Emulator> = std::rc::Rc::new({
        let emu = Emulator::start_with(false);
        // Still asynchronous, but quick: a hundred cases create hundreds of accounts.
        emu.set_knobs(serde_json::json!({ "account_delay": 0.1 }));
        emu
    });
}
