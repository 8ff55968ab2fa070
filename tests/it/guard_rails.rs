//! The guard rails deny what they denied before they were merged to fit AWS's quota of five
//! SCPs per target. moto does not evaluate SCPs, so this test does, with a small evaluator of
//! its own (Deny statements: `Action`/`NotAction`, `Resource`, and the condition operators the
//! guard rails use, with AWS's semantics for absent keys). Oracles: the eight documents as the
//! first wave attached them (`tests/fixtures/scp-v1/`), and hand-written cases per guard rail.

use landfall_steps::{render_scps, PolicyConfig};
use serde_json::{json, Value};

#[derive(Debug, Clone)]
struct Request {
    action: &'static str,
    resource: &'static str,
    principal: &'static str,
    region: &'static str,
    secure: bool,
    imds: Option<&'static str>,
}

fn glob(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

fn key(r: &Request, k: &str) -> Option<String> {
    match k {
        "aws:PrincipalArn" => Some(r.principal.to_string()),
        "aws:RequestedRegion" => Some(r.region.to_string()),
        "aws:SecureTransport" => Some(r.secure.to_string()),
        "ec2:MetadataHttpTokens" => r.imds.map(str::to_string),
        other => panic!("the evaluator does not know condition key {other}: extend it"),
    }
}

fn condition_holds(cond: &Value, r: &Request) -> bool {
    let Some(ops) = cond.as_object() else {
        return true;
    };
    ops.iter().all(|(op, pairs)| {
        pairs.as_object().unwrap().iter().all(|(k, want)| {
            let want = strings(want);
            let have = key(r, k);
            match op.as_str() {
                // Negated operators match when the key is absent (IAM's documented behaviour).
                "StringNotEquals" => have.is_none_or(|h| !want.contains(&h)),
                "ArnNotLike" => have.is_none_or(|h| !want.iter().any(|w| glob(w, &h))),
                "StringLike" => have.is_some_and(|h| want.iter().any(|w| glob(w, &h))),
                "Bool" => have.is_some_and(|h| want.iter().any(|w| w.eq_ignore_ascii_case(&h))),
                other => panic!("the evaluator does not know operator {other}: extend it"),
            }
        })
    })
}

fn denies(statement: &Value, r: &Request) -> bool {
    if statement["Effect"] != "Deny" {
        return false;
    }
    let action = if let Some(a) = statement.get("Action") {
        strings(a).iter().any(|p| glob(p, r.action))
    } else {
        !strings(&statement["NotAction"])
            .iter()
            .any(|p| glob(p, r.action))
    };
    action
        && strings(&statement["Resource"])
            .iter()
            .any(|p| glob(p, r.resource))
        && condition_holds(&statement["Condition"], r)
}

/// The Sids of every statement that denies the request (empty: allowed, as far as SCPs go).
fn denied_by(docs: &[Value], r: &Request) -> std::collections::BTreeSet<String> {
    docs.iter()
        .flat_map(|d| d["Statement"].as_array().unwrap().iter())
        .filter(|s| denies(s, r))
        .map(|s| s["Sid"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn merged() -> Vec<Value> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let cfg: PolicyConfig = serde_json::from_value(json!({
        "customer": "acme", "target_id": "ou-x", "regions": ["us-east-1", "eu-west-1"],
    }))
    .unwrap();
    let scps = render_scps(&root.join("templates"), &cfg).unwrap();
    assert!(
        scps.len() <= 4,
        "FullAWSAccess needs one of the five places"
    );
    scps.into_iter().map(|s| s.document).collect()
}

fn first_wave() -> Vec<Value> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/scp-v1");
    let mut docs = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "json") {
            docs.push(serde_json::from_str(&std::fs::read_to_string(e.path()).unwrap()).unwrap());
        }
    }
    assert_eq!(docs.len(), 8);
    docs
}

const ROOT: &str = "arn:aws:iam::111122223333:root";
const ADMIN: &str = "arn:aws:iam::111122223333:role/OrganizationAccountAccessRole";
const DEV: &str = "arn:aws:iam::111122223333:role/developer";

fn req(action: &'static str, principal: &'static str) -> Request {
    Request {
        action,
        resource: "arn:aws:s3:::data",
        principal,
        region: "us-east-1",
        secure: true,
        imds: None,
    }
}

#[test]
fn each_guard_rail_still_denies_what_it_is_for() {
    let docs = merged();
    let cases: Vec<(&str, Request, bool)> = vec![
        (
            "leave the organization",
            req("organizations:LeaveOrganization", DEV),
            true,
        ),
        ("anything as root", req("s3:ListBucket", ROOT), true),
        (
            "act outside the regions",
            Request {
                region: "ap-south-1",
                ..req("ec2:DescribeVpcs", DEV)
            },
            true,
        ),
        (
            "global services anywhere",
            Request {
                region: "ap-south-1",
                ..req("iam:ListRoles", DEV)
            },
            false,
        ),
        (
            "admin outside the regions",
            Request {
                region: "ap-south-1",
                ..req("ec2:DescribeVpcs", ADMIN)
            },
            false,
        ),
        ("stop CloudTrail", req("cloudtrail:StopLogging", DEV), true),
        (
            "admin stops CloudTrail",
            req("cloudtrail:StopLogging", ADMIN),
            false,
        ),
        (
            "drop the public access block",
            req("s3:DeleteAccountPublicAccessBlock", DEV),
            true,
        ),
        (
            "disable EBS encryption",
            req("ec2:DisableEbsEncryptionByDefault", DEV),
            true,
        ),
        (
            "S3 without TLS",
            Request {
                secure: false,
                ..req("s3:GetObject", DEV)
            },
            true,
        ),
        ("S3 with TLS", req("s3:GetObject", DEV), false),
        (
            "launch without IMDSv2",
            Request {
                resource: "arn:aws:ec2:us-east-1:111122223333:instance/i-1",
                imds: Some("optional"),
                ..req("ec2:RunInstances", DEV)
            },
            true,
        ),
        (
            "launch with IMDSv2",
            Request {
                resource: "arn:aws:ec2:us-east-1:111122223333:instance/i-1",
                imds: Some("required"),
                ..req("ec2:RunInstances", DEV)
            },
            false,
        ),
        (
            "weaken IMDS",
            req("ec2:ModifyInstanceMetadataOptions", DEV),
            true,
        ),
        (
            "change Landfall's deployer",
            Request {
                resource: "arn:aws:iam::111122223333:role/landfall-deployer",
                ..req("iam:PutRolePolicy", DEV)
            },
            true,
        ),
        (
            "change another role",
            Request {
                resource: "arn:aws:iam::111122223333:role/app",
                ..req("iam:PutRolePolicy", DEV)
            },
            false,
        ),
    ];
    for (what, r, deny) in cases {
        assert_eq!(!denied_by(&docs, &r).is_empty(), deny, "{what}: {r:?}");
    }
}

#[test]
fn the_merged_set_decides_every_request_as_the_eight_policies_did() {
    let (old, new) = (first_wave(), merged());
    let mut actions: Vec<String> = old
        .iter()
        .flat_map(|d| d["Statement"].as_array().unwrap().clone())
        .flat_map(|s| {
            strings(&s["Action"])
                .into_iter()
                .chain(strings(&s["NotAction"]))
        })
        .map(|a| a.replace('*', "Anything"))
        .collect();
    actions.extend(
        [
            "s3:GetObject",
            "ec2:RunInstances",
            "ec2:DescribeVpcs",
            "iam:CreateRole",
            "sts:AssumeRole",
            "cloudtrail:LookupEvents",
            "lambda:InvokeFunction",
        ]
        .map(str::to_string),
    );
    actions.sort();
    actions.dedup();
    let actions: Vec<&'static str> = actions
        .into_iter()
        .map(|a| &*Box::leak(a.into_boxed_str()))
        .collect();
    let resources = [
        "arn:aws:s3:::data",
        "arn:aws:ec2:us-east-1:111122223333:instance/i-1",
        "arn:aws:iam::111122223333:role/landfall-deployer",
        "arn:aws:iam::111122223333:role/app",
    ];
    let (mut checked, mut denied) = (0, 0);
    for action in &actions {
        for resource in resources {
            for principal in [ROOT, ADMIN, DEV] {
                for region in ["us-east-1", "eu-west-1", "ap-south-1"] {
                    for secure in [true, false] {
                        for imds in [None, Some("required"), Some("optional")] {
                            let r = Request {
                                action,
                                resource,
                                principal,
                                region,
                                secure,
                                imds,
                            };
                            // Statements kept their Sids: the same rails decide, not only
                            // the same verdict.
                            let (a, b) = (denied_by(&old, &r), denied_by(&new, &r));
                            assert_eq!(a, b, "{r:?}: denied before by {a:?}, now by {b:?}");
                            checked += 1;
                            denied += usize::from(!a.is_empty());
                        }
                    }
                }
            }
        }
    }
    assert!(
        denied > checked / 4 && denied < checked,
        "{denied} of {checked} denied: a vacuous corpus"
    );
}
