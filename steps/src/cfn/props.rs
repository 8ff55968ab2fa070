//! Property tests of package building and validation (seed properties 7, 8, 20).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use proptest::prelude::*;
use serde_json::{json, Value};

use super::build::build;
use super::validate::{check_package, Finding};
use crate::requirements::Requirements;

fn templates() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates")
}

fn baseline() -> Vec<PathBuf> {
    vec![templates().join("rules/baseline")]
}

/// Valid requirements: 1–4 accounts, 1–3 regions, a private block, AZs and NAT mode.
fn requirements() -> impl Strategy<Value = Requirements> {
    let regions = prop::sample::subsequence(
        vec![
            "us-east-1",
            "us-west-2",
            "eu-west-1",
            "eu-central-1",
            "ap-southeast-2",
        ],
        1..=3,
    );
    (
        "[a-z][a-z0-9]{2,10}",
        // Free text that must survive escaping.
        "[A-Za-z0-9 '\":&#{}|>-]{1,40}",
        prop::collection::btree_set("[a-z]{3,8}", 1..=4),
        regions,
        prop_oneof![Just("10.0.0.0/16"), Just("10.200.0.0/20"), Just("172.20.0.0/16"), Just("192.168.4.0/24")],
        1u8..=3,
        prop_oneof![Just("none"), Just("single"), Just("per-az")],
        prop::collection::btree_map("[a-z][a-z-]{0,10}", "[A-Za-z0-9 :/'\"-]{0,20}", 0..3),
    )
        .prop_map(|(customer, display, names, regions, cidr, azs, nat, tags)| {
            let envs = ["production", "staging", "development", "sandbox"];
            let accounts: Vec<Value> = names
                .iter()
                .enumerate()
                .map(|(i, n)| json!({ "name": format!("{customer}-{n}"), "email": format!("aws+{n}@{customer}.example"), "environment": envs[i % 4] }))
                .collect();
            let v = json!({
                "customer": customer,
                "display_name": display.trim().to_string() + "x",
                "contact_email": format!("cloud@{customer}.example"),
                "accounts": accounts,
                "regions": regions,
                "network": { "cidr": cidr, "availability_zones": azs, "nat_gateways": nat },
                "compliance": ["baseline"],
                "tags": tags,
            });
            match Requirements::from_inputs(v.as_object().unwrap(), None) {
                Ok(r) => r,
                Err(e) => panic!("generator made invalid requirements: {e:?} from {v}"),
            }
        })
}

fn errors(f: &[Finding]) -> Vec<String> {
    f.iter()
        .map(|f| {
            format!(
                "{} {}/{}: {}",
                f.rule,
                f.stack,
                f.resource.clone().unwrap_or_default(),
                f.message
            )
        })
        .collect()
}

/// Defects a validator must catch, each as (name, rule expected, edit of the network stack).
fn defects() -> Vec<(&'static str, &'static str)> {
    vec![
        ("dangling-ref", "dangling-reference"),
        ("broken-default", "bad-default"),
        ("open-ssh", "no_open_admin_ports"),
        ("unencrypted-bucket", "s3_bucket_encrypted"),
        ("wildcard-iam", "iam_policy_no_wildcard_admin"),
    ]
}

/// Injects `defect` into the stack `stack` (edits of the network stack's own text go to it);
/// `variant` picks one of the forms the defect takes. Returns the stack it went into.
fn inject(
    defect: &str,
    stack: &str,
    variant: usize,
    files: &mut BTreeMap<String, String>,
) -> String {
    // New resources go at the end of `Resources:`, right before `Outputs:`.
    let add = |files: &mut BTreeMap<String, String>, text: &str| {
        let t = files
            .get_mut(&format!("stacks/{stack}.yaml"))
            .expect("the stack");
        let at = t.find("\nOutputs:").expect("an Outputs section") + 1;
        t.insert_str(at, text);
        stack.to_string()
    };
    let net = || "network".to_string();
    match defect {
        "dangling-ref" => {
            let t = files.get_mut("stacks/network.yaml").expect("network stack");
            *t = t.replacen("{\"Ref\": \"Vpc\"}", "{\"Ref\": \"Vcp\"}", 1);
            net()
        }
        "broken-default" => {
            let t = files.get_mut("stacks/network.yaml").expect("network stack");
            let at = t.find("Default:").expect("a default");
            let end = at + t[at..].find('\n').expect("line end");
            // The first default is the customer name's (`^[a-z][a-z0-9-]{1,30}$`).
            let bad = ["999.1.1.0/33", "Upper Case", "x"][variant % 3];
            t.replace_range(at..end, &format!("Default: \"{bad}\""));
            net()
        }
        "open-ssh" => {
            let (from, to) = [(22, 22), (3389, 3389), (0, 65535)][variant % 3];
            add(
                files,
                &format!("  OpenAdmin:\n    Type: AWS::EC2::SecurityGroup\n    Properties:\n      GroupDescription: admin\n      SecurityGroupIngress:\n        - {{ IpProtocol: tcp, FromPort: {from}, ToPort: {to}, CidrIp: \"0.0.0.0/0\" }}\n"),
            )
        }
        "unencrypted-bucket" => add(
            files,
            "  PlainBucket:\n    Type: AWS::S3::Bucket\n    Properties:\n      VersioningConfiguration: { Status: Enabled }\n      PublicAccessBlockConfiguration: { BlockPublicAcls: true, BlockPublicPolicy: true, IgnorePublicAcls: true, RestrictPublicBuckets: true }\n",
        ),
        "wildcard-iam" => {
            let action = ["\"*\"", "[\"*\"]", "[\"s3:GetObject\", \"*\"]"][variant % 3];
            add(
                files,
                &format!("  AdminPolicy:\n    Type: AWS::IAM::ManagedPolicy\n    Properties:\n      PolicyDocument:\n        Version: \"2012-10-17\"\n        Statement:\n          - {{ Effect: Allow, Action: {action}, Resource: \"*\" }}\n"),
            )
        }
        other => panic!("unknown defect {other}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    /// Feature: agent-onboarding-provisioning, Property 7: CFN Package Assembly Correctness.
    /// Every requested account is a target with all requested regions, every requested AZ
    /// has a public and a private subnet inside the VPC block, the stacks come in the declared
    /// order, and each template digest matches its file.
    #[test]
    fn prop7_package_assembly(req in requirements()) {
        let built = build(&templates(), &req, None, None).unwrap();
        let m = &built.manifest;
        let targets = m["targets"].as_array().unwrap();
        prop_assert_eq!(targets.len(), req.accounts.len());
        for (t, a) in targets.iter().zip(&req.accounts) {
            prop_assert_eq!(t["account"].as_str(), Some(a.name.as_str()));
            prop_assert_eq!(&t["regions"], &json!(req.regions));
        }
        let net = &built.files["stacks/network.yaml"];
        let doc: Value = serde_yaml::from_str(net).unwrap();
        let vpc: Ipv4Net = req.network.cidr.parse().unwrap();
        for i in 0..req.network.availability_zones {
            for kind in ["Public", "Private"] {
                let cidr = doc["Resources"][format!("{kind}Subnet{i}")]["Properties"]["CidrBlock"].as_str().unwrap();
                prop_assert!(vpc.contains(&cidr.parse::<Ipv4Net>().unwrap()));
            }
        }
        let one_too_many = format!("PublicSubnet{}", req.network.availability_zones);
        prop_assert!(doc["Resources"].get(&one_too_many).is_none());
        let nats = doc["Resources"].as_object().unwrap().values().filter(|r| r["Type"] == "AWS::EC2::NatGateway").count();
        let want = match req.network.nat_gateways {
            crate::requirements::NatGateways::None => 0,
            crate::requirements::NatGateways::Single => 1,
            crate::requirements::NatGateways::PerAz => req.network.availability_zones as usize,
        };
        prop_assert_eq!(nats, want);
        for s in m["stacks"].as_array().unwrap() {
            let file = &built.files[s["template"].as_str().unwrap()];
            prop_assert_eq!(s["template_digest"].as_str().unwrap(), landfall_engine::sha256_hex(file.as_bytes()));
        }
        let order: Vec<&str> = m["stacks"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
        prop_assert_eq!(order, ["security-baseline", "network", "access"]);
    }

    /// Feature: agent-onboarding-provisioning, Property 20: Security Best Practices Compliance.
    /// Every package Landfall generates passes its own structure, parameter and limit checks
    /// and the baseline Guard rules with no finding at all.
    #[test]
    fn prop20_generated_packages_comply(req in requirements()) {
        let built = build(&templates(), &req, None, None).unwrap();
        let f = check_package(&built.files, &built.manifest, &baseline());
        prop_assert!(f.is_empty(), "{:#?}", errors(&f));
    }

    /// Feature: agent-onboarding-provisioning, Property 8: Package Validation Accuracy.
    /// Any mix of defects (dangling Ref, broken parameter default, open admin port, unencrypted
    /// bucket, wildcard IAM), in any of their forms and in any stack, is caught: each by the
    /// rule made for it, naming the stack it is in, and no rule fires for a defect that is not
    /// there; the same package without defects has no findings.
    #[test]
    fn prop8_validation_accuracy(
        req in requirements(),
        mix in 1u32..32,
        placement in any::<u64>(),
    ) {
        let built = build(&templates(), &req, None, None).unwrap();
        prop_assert!(check_package(&built.files, &built.manifest, &baseline()).is_empty());
        let stacks: Vec<String> = built
            .files
            .keys()
            .filter_map(|k| k.strip_prefix("stacks/")?.strip_suffix(".yaml"))
            .map(str::to_string)
            .collect();
        let mut files = built.files.clone();
        let mut want = BTreeSet::new();
        for (i, (defect, rule)) in defects().into_iter().enumerate() {
            if mix & (1 << i) == 0 {
                continue;
            }
            let pick = (placement >> (i * 8)) as usize;
            let stack = inject(defect, &stacks[pick % stacks.len()], pick / 7, &mut files);
            want.insert((rule.to_string(), stack));
        }
        let f = check_package(&files, &built.manifest, &baseline());
        let got: BTreeSet<(String, String)> =
            f.iter().map(|x| (x.rule.to_string(), x.stack.clone())).collect();
        prop_assert_eq!(&got, &want, "{:#?}", errors(&f));
        prop_assert!(f.iter().all(|x| !x.fix.is_empty()));
    }
}
