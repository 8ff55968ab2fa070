//! A customer's requirements: the onboarding workflow's inputs, checked before anything
//! touches AWS. Every problem is reported with its field path (`accounts[1].email`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;
use landfall_engine::InputError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Regions Landfall knows, with their number of availability zones (commercial partition).
pub(crate) const REGIONS: &[(&str, u8)] = &[
    ("us-east-1", 6),
    ("us-east-2", 3),
    ("us-west-1", 2),
    ("us-west-2", 4),
    ("ca-central-1", 3),
    ("eu-west-1", 3),
    ("eu-west-2", 3),
    ("eu-west-3", 3),
    ("eu-central-1", 3),
    ("eu-central-2", 3),
    ("eu-north-1", 3),
    ("eu-south-1", 3),
    ("eu-south-2", 3),
    ("ap-northeast-1", 3),
    ("ap-northeast-2", 4),
    ("ap-northeast-3", 3),
    ("ap-southeast-1", 3),
    ("ap-southeast-2", 3),
    ("ap-southeast-3", 3),
    ("ap-south-1", 3),
    ("ap-south-2", 3),
    ("ap-east-1", 3),
    ("sa-east-1", 3),
    ("me-south-1", 3),
    ("me-central-1", 3),
    ("af-south-1", 3),
    ("il-central-1", 3),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    Production,
    Staging,
    Development,
    Sandbox,
}

impl Environment {
    /// The name used in files, tags and parameters.
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Production => "production",
            Environment::Staging => "staging",
            Environment::Development => "development",
            Environment::Sandbox => "sandbox",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum NatGateways {
    None,
    Single,
    PerAz,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Account {
    /// Account name, also its OU-unique key: lowercase letters, digits, `-`.
    pub name: String,
    /// The account's root email; unique across the organization.
    pub email: String,
    pub environment: Environment,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// A private IPv4 block (RFC 1918) from /16 to /24.
    pub cidr: String,
    /// Availability zones per region (1 to the region's count, at most 4).
    pub availability_zones: u8,
    /// NAT gateways: none, single or per-az.
    pub nat_gateways: NatGateways,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub monthly_usd: f64,
    #[serde(default)]
    pub alert_emails: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Stakeholders {
    /// Slack channels (`#name` or an id) told about this customer's runs.
    #[serde(default)]
    pub slack: Vec<String>,
}

/// Everything onboarding needs to know about a customer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Requirements {
    /// Short name: `^[a-z][a-z0-9-]{1,30}$`; names the OU, the package and resources.
    pub customer: String,
    /// Free text (quotes, colons and unicode are fine).
    pub display_name: String,
    pub contact_email: String,
    pub accounts: Vec<Account>,
    /// Allowed regions; the first is home.
    pub regions: Vec<String>,
    pub network: Network,
    #[serde(default)]
    pub budget: Option<Budget>,
    /// Compliance rule packs (directories under `templates/rules/`).
    #[serde(default)]
    pub compliance: Vec<String>,
    #[serde(default)]
    pub stakeholders: Stakeholders,
    /// Tags applied to accounts and resources.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// Reads `v` (found at `at`) as a `T`; a problem names the full path of the bad value.
fn read<T: serde::de::DeserializeOwned>(
    at: &landfall_engine::Path,
    v: &Value,
) -> Result<T, InputError> {
    serde_path_to_error::deserialize(v.clone()).map_err(|e| {
        let path = at.join(&landfall_engine::Path::from_serde(e.path()));
        err(path.to_string(), plain(&e.inner().to_string()))
    })
}

/// serde's message with Rust's type names said as a user would say them.
fn plain(message: &str) -> String {
    [
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected f64", "expected a number"),
        ("expected a map", "expected a mapping (`key: value` lines)"),
    ]
    .iter()
    .fold(message.to_string(), |m, (rust, said)| m.replace(rust, said))
}

/// The inputs with every unreadable part (a wrong type, an unknown value, a missing field)
/// replaced by a stand-in that reads, and the problems found: each field is read on its own,
/// down to each account's and the network's fields, so one bad environment hides neither a
/// bad network nor the checks of the values that did read. Unknown fields are dropped.
fn lenient(inputs: &Map<String, Value>) -> (Map<String, Value>, Vec<InputError>) {
    use landfall_engine::Path;
    use serde_json::json;
    /// `v` at `at` if it reads as a `T`, else the problem and `stand_in`.
    fn field<T: serde::de::DeserializeOwned>(
        at: &Path,
        v: Option<&Value>,
        stand_in: Value,
        out: &mut Vec<InputError>,
    ) -> Value {
        match v {
            None => {
                out.push(missing(at));
                stand_in
            }
            Some(v) => match read::<T>(at, v) {
                Ok(_) => v.clone(),
                Err(e) => {
                    out.push(e);
                    stand_in
                }
            },
        }
    }
    /// An object read field by field (`fields`: name, reader), unknown keys reported.
    #[allow(clippy::type_complexity)]
    fn object(
        at: &Path,
        v: Option<&Value>,
        fields: &[(
            &str,
            &dyn Fn(&Path, Option<&Value>, &mut Vec<InputError>) -> Value,
        )],
        out: &mut Vec<InputError>,
    ) -> Value {
        let Some(m) = v.and_then(Value::as_object) else {
            match v {
                None => out.push(missing(at)),
                Some(_) => out.push(err(
                    at.to_string(),
                    "expected a mapping (`key: value` lines)",
                )),
            }
            let mut blank = Vec::new();
            let stand_in: Map<String, Value> = fields
                .iter()
                .map(|(k, f)| (k.to_string(), f(&at.key(*k), None, &mut blank)))
                .collect();
            return Value::Object(stand_in);
        };
        for k in m.keys() {
            if !fields.iter().any(|(f, _)| f == k) {
                let hint = landfall_engine::diag::did_you_mean(k, fields.iter().map(|(f, _)| *f))
                    .map(|x| format!(" (did you mean `{x}`?)"))
                    .unwrap_or_default();
                out.push(err(
                    at.key(k.as_str()).to_string(),
                    format!("unknown field `{k}`{hint}"),
                ));
            }
        }
        Value::Object(
            fields
                .iter()
                .map(|(k, f)| (k.to_string(), f(&at.key(*k), m.get(*k), out)))
                .collect(),
        )
    }
    fn missing(at: &Path) -> InputError {
        let name = match at.0.last() {
            Some(landfall_engine::Seg::Key(k)) => k.clone(),
            _ => at.to_string(),
        };
        err(at.to_string(), format!("missing field `{name}`"))
    }
    let text = |stand_in: &'static str| {
        move |at: &Path, v: Option<&Value>, out: &mut Vec<InputError>| {
            field::<String>(at, v, json!(stand_in), out)
        }
    };
    let optional = |reader: fn(&Path, &Value, &mut Vec<InputError>) -> Value| {
        move |at: &Path, v: Option<&Value>, out: &mut Vec<InputError>| match v {
            None => Value::Null,
            Some(v) => reader(at, v, out),
        }
    };
    let account = |at: &Path, v: Option<&Value>, out: &mut Vec<InputError>| {
        object(
            at,
            v,
            &[
                ("name", &text("stand-in")),
                ("email", &text("stand-in@example.com")),
                ("environment", &|at, v, out| {
                    field::<Environment>(at, v, json!("sandbox"), out)
                }),
            ],
            out,
        )
    };
    let accounts = |at: &Path, v: Option<&Value>, out: &mut Vec<InputError>| match v {
        Some(Value::Array(items)) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, a)| account(&at.index(i), Some(a), out))
                .collect(),
        ),
        other => field::<Vec<Account>>(at, other, json!([]), out),
    };
    let network = |at: &Path, v: Option<&Value>, out: &mut Vec<InputError>| {
        object(
            at,
            v,
            &[
                ("cidr", &text("10.0.0.0/16")),
                ("availability_zones", &|at, v, out| {
                    field::<u8>(at, v, json!(1), out)
                }),
                ("nat_gateways", &|at, v, out| {
                    field::<NatGateways>(at, v, json!("none"), out)
                }),
            ],
            out,
        )
    };
    let mut out = Vec::new();
    let top = object(
        &Path::root(),
        Some(&Value::Object(inputs.clone())),
        &[
            ("customer", &text("stand-in")),
            ("display_name", &text("stand-in")),
            ("contact_email", &text("stand-in@example.com")),
            ("accounts", &accounts),
            ("regions", &|at, v, out| {
                field::<Vec<String>>(at, v, json!([]), out)
            }),
            ("network", &network),
            (
                "budget",
                &optional(|at, v, out| field::<Option<Budget>>(at, Some(v), Value::Null, out)),
            ),
            (
                "compliance",
                &optional(|at, v, out| field::<Vec<String>>(at, Some(v), json!([]), out)),
            ),
            (
                "stakeholders",
                &optional(|at, v, out| field::<Stakeholders>(at, Some(v), json!({}), out)),
            ),
            (
                "tags",
                &optional(|at, v, out| {
                    field::<BTreeMap<String, String>>(at, Some(v), json!({}), out)
                }),
            ),
        ],
        &mut out,
    );
    // Optional fields left out stay out (their defaults apply).
    let map = match top {
        Value::Object(m) => m.into_iter().filter(|(_, v)| !v.is_null()).collect(),
        _ => Map::new(),
    };
    (map, out)
}

/// Whether problem `p` is about a value under a path already reported as unreadable (its
/// check ran on a stand-in, so it says nothing about the file).
fn under(p: &str, unreadable: &[String]) -> bool {
    unreadable.iter().any(|u| {
        p == u || p.starts_with(&format!("{u}.")) || p.starts_with(&format!("{u}[")) || u.is_empty()
    })
}

fn err(field: impl Into<String>, message: impl Into<String>) -> InputError {
    InputError::invalid(field, message)
}

fn valid_email(s: &str) -> bool {
    // The address must also be one AWS accepts: ASCII, at most 64 characters.
    s.is_ascii() && s.len() <= 64 && email_address::EmailAddress::is_valid(s) && s.contains('.')
}

fn name_ok(s: &str, max: usize) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_lowercase())
        && s.len() >= 2
        && s.len() <= max
        && c.all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || x == '-')
}

/// The AZ count of a known region.
pub(crate) fn region_azs(region: &str) -> Option<u8> {
    REGIONS.iter().find(|(r, _)| *r == region).map(|(_, n)| *n)
}

fn private(net: &Ipv4Net) -> bool {
    let blocks: [(Ipv4Addr, u8); 3] = [
        (Ipv4Addr::new(10, 0, 0, 0), 8),
        (Ipv4Addr::new(172, 16, 0, 0), 12),
        (Ipv4Addr::new(192, 168, 0, 0), 16),
    ];
    blocks
        .iter()
        .any(|(a, p)| Ipv4Net::new(*a, *p).is_ok_and(|b| b.contains(net)))
}

impl Requirements {
    /// Parses and checks the inputs map; returns every problem.
    pub fn from_inputs(
        inputs: &Map<String, Value>,
        rules_dir: Option<&Path>,
    ) -> Result<Requirements, Vec<InputError>> {
        let (readable, mut problems) = lenient(inputs);
        let unreadable: Vec<String> = problems.iter().map(|p| p.field.clone()).collect();
        let req: Requirements = read(&landfall_engine::Path::root(), &Value::Object(readable))
            .map_err(|e| {
                let mut all = problems.clone();
                all.push(e);
                all
            })?;
        problems.extend(
            req.problems(rules_dir)
                .into_iter()
                .filter(|p| !under(&p.field, &unreadable)),
        );
        if problems.is_empty() {
            Ok(req)
        } else {
            Err(problems)
        }
    }

    /// Every problem, by field path.
    pub fn problems(&self, rules_dir: Option<&Path>) -> Vec<InputError> {
        let mut out = Vec::new();
        if !name_ok(&self.customer, 31) {
            out.push(err(
                "customer",
                format!(
                    "{:?} must match ^[a-z][a-z0-9-]{{1,30}}$ (lowercase letters, digits, `-`)",
                    self.customer
                ),
            ));
        }
        if self.display_name.trim().is_empty() || self.display_name.chars().count() > 128 {
            out.push(err("display_name", "must be 1 to 128 characters"));
        }
        if !valid_email(&self.contact_email) {
            out.push(err(
                "contact_email",
                format!("{:?} is not a valid email address", self.contact_email),
            ));
        }
        if self.accounts.is_empty() {
            out.push(err("accounts", "at least one account is needed"));
        }
        let mut names = BTreeSet::new();
        let mut emails = BTreeSet::new();
        for (i, a) in self.accounts.iter().enumerate() {
            if !name_ok(&a.name, 50) {
                out.push(err(
                    format!("accounts[{i}].name"),
                    format!("{:?} must be 2–50 lowercase letters, digits or `-`, starting with a letter", a.name),
                ));
            }
            if !names.insert(a.name.as_str()) {
                out.push(err(
                    format!("accounts[{i}].name"),
                    format!("{:?} is used by an earlier account", a.name),
                ));
            }
            if !valid_email(&a.email) {
                out.push(err(
                    format!("accounts[{i}].email"),
                    format!("{:?} is not a valid email address", a.email),
                ));
            } else if !emails.insert(a.email.to_ascii_lowercase()) {
                out.push(err(
                    format!("accounts[{i}].email"),
                    format!(
                        "{:?} is used by an earlier account (AWS requires one email per account)",
                        a.email
                    ),
                ));
            }
        }
        if self.regions.is_empty() {
            out.push(err(
                "regions",
                "at least one region is needed (the first is home)",
            ));
        }
        let mut seen = BTreeSet::new();
        let mut min_azs = u8::MAX;
        for (i, r) in self.regions.iter().enumerate() {
            match region_azs(r) {
                Some(n) => min_azs = min_azs.min(n),
                None => {
                    let known: Vec<&str> = REGIONS.iter().map(|(r, _)| *r).collect();
                    let hint = landfall_engine::diag::did_you_mean(r, known.iter().copied())
                        .map(|x| format!("; did you mean {x}?"))
                        .unwrap_or_default();
                    out.push(err(
                        format!("regions[{i}]"),
                        format!("{r:?} is not a region Landfall knows{hint}"),
                    ));
                }
            }
            if !seen.insert(r.as_str()) {
                out.push(err(
                    format!("regions[{i}]"),
                    format!("{r:?} is listed twice"),
                ));
            }
        }
        match self.network.cidr.parse::<Ipv4Net>() {
            Err(_) => out.push(err(
                "network.cidr",
                format!(
                    "{:?} is not an IPv4 CIDR block like 10.20.0.0/16",
                    self.network.cidr
                ),
            )),
            Ok(net) => {
                if net.network() != net.addr() {
                    out.push(err(
                        "network.cidr",
                        format!(
                            "{} has host bits set; the block is {}",
                            self.network.cidr,
                            net.trunc()
                        ),
                    ));
                }
                if !(16..=24).contains(&net.prefix_len()) {
                    out.push(err(
                        "network.cidr",
                        format!("the prefix must be /16 to /24, not /{}", net.prefix_len()),
                    ));
                }
                if !private(&net) {
                    out.push(err(
                        "network.cidr",
                        format!("{net} is not a private (RFC 1918) block"),
                    ));
                }
            }
        }
        let azs = self.network.availability_zones;
        let max_azs = min_azs.min(crate::cfn::build::MAX_AZS as u8);
        if azs == 0 || (min_azs != u8::MAX && azs > max_azs) {
            out.push(err(
                "network.availability_zones",
                format!(
                    "{azs} is not possible here: 1 to {} (limited by the smallest region and by 4)",
                    if min_azs == u8::MAX { 4 } else { max_azs }
                ),
            ));
        }
        if let Some(b) = &self.budget {
            if !(b.monthly_usd.is_finite() && b.monthly_usd > 0.0) {
                out.push(err("budget.monthly_usd", "must be a positive amount"));
            }
            for (i, e) in b.alert_emails.iter().enumerate() {
                if !valid_email(e) {
                    out.push(err(
                        format!("budget.alert_emails[{i}]"),
                        format!("{e:?} is not a valid email address"),
                    ));
                }
            }
        }
        for (i, pack) in self.compliance.iter().enumerate() {
            let safe = name_ok(pack, 64)
                || pack
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            let exists = rules_dir.is_none_or(|d| d.join(pack).is_dir());
            if !safe || !exists {
                let known = rules_dir
                    .and_then(|d| std::fs::read_dir(d).ok())
                    .map(|rd| {
                        rd.flatten()
                            .filter(|e| e.path().is_dir())
                            .map(|e| e.file_name().to_string_lossy().to_string())
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default();
                out.push(err(
                    format!("compliance[{i}]"),
                    format!(
                        "unknown rule pack {pack:?}; known: {}",
                        if known.is_empty() {
                            "none".into()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
        }
        for (i, why) in crate::stakeholder::problems(&self.stakeholders.slack) {
            out.push(err(format!("stakeholders.slack[{i}]"), why));
        }
        for (k, v) in &self.tags {
            if k.is_empty() || k.chars().count() > 128 || k.starts_with("aws:") {
                out.push(err(
                    format!("tags.{k}"),
                    "tag keys are 1–128 characters and may not start with `aws:`",
                ));
            }
            if v.chars().count() > 256 {
                out.push(err(
                    format!("tags.{k}"),
                    "tag values are at most 256 characters",
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn acme() -> Value {
        json!({
            "customer": "acme",
            "display_name": "O'Brien: \"Ops\" & Co",
            "contact_email": "cloud@acme.example",
            "accounts": [
                { "name": "acme-prod", "email": "aws+acme-prod@acme.example", "environment": "production" },
                { "name": "acme-dev", "email": "aws+acme-dev@acme.example", "environment": "development" }
            ],
            "regions": ["us-east-1", "eu-west-1"],
            "network": { "cidr": "10.20.0.0/16", "availability_zones": 2, "nat_gateways": "single" },
            "budget": { "monthly_usd": 5000, "alert_emails": ["finance@acme.example"] },
            "compliance": ["baseline"],
            "stakeholders": { "slack": ["#acme-onboarding"] },
            "tags": { "cost-center": "CC-1234" }
        })
    }

    fn check(v: Value) -> Vec<(String, String)> {
        match Requirements::from_inputs(v.as_object().unwrap(), None) {
            Ok(_) => Vec::new(),
            Err(e) => e.into_iter().map(|e| (e.field, e.message)).collect(),
        }
    }

    #[test]
    fn the_example_is_valid() {
        assert_eq!(check(acme()), Vec::new());
    }

    #[test]
    fn each_problem_names_its_field() {
        let mut v = acme();
        v["accounts"][1]["email"] = json!("not-an-email");
        v["accounts"][0]["name"] = json!("acme-dev");
        v["network"]["cidr"] = json!("8.8.0.0/16");
        v["regions"] = json!(["us-east-1", "mars-north-1", "us-west-1"]);
        v["network"]["availability_zones"] = json!(3);
        let fields: Vec<String> = check(v).into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "accounts[1].name",
                "accounts[1].email",
                "regions[1]",
                "network.cidr",
                "network.availability_zones"
            ]
        );
    }

    #[test]
    fn duplicate_emails_are_caught_case_insensitively() {
        let mut v = acme();
        v["accounts"][1]["email"] = json!("AWS+acme-prod@acme.example");
        let p = check(v);
        assert_eq!(p[0].0, "accounts[1].email");
    }

    #[test]
    fn cidr_rules() {
        for (cidr, ok) in [
            ("10.0.0.0/16", true),
            ("192.168.1.0/24", true),
            ("172.16.0.0/12", false),
            ("10.0.0.1/16", false),
            ("10.0.0.0/25", false),
            ("11.0.0.0/16", false),
        ] {
            let mut v = acme();
            v["network"]["cidr"] = json!(cidr);
            assert_eq!(check(v).is_empty(), ok, "{cidr}");
        }
    }

    #[test]
    fn unknown_fields_and_wrong_enums_are_named() {
        let mut v = acme();
        v["accounts"][0]["environment"] = json!("prod");
        let p = check(v);
        assert_eq!(p[0].0, "accounts[0].environment");
        let mut v = acme();
        v["colour"] = json!("red");
        assert!(check(v)[0].1.contains("unknown field `colour`"));
    }

    #[test]
    fn every_shape_problem_is_named_not_only_the_first() {
        let mut v = acme();
        v["accounts"][0]["environment"] = json!("prod");
        v["accounts"][1]["email"] = json!(7);
        v["network"]["availability_zones"] = json!("two");
        v["regions"] = json!("us-east-1");
        v["tag"] = json!({ "team": "platform" });
        v.as_object_mut().unwrap().shift_remove("contact_email");
        // A semantic problem too: checks of the values that did read still run.
        v["network"]["cidr"] = json!("8.8.0.0/16");
        let p = check(v);
        let mut fields: Vec<&str> = p.iter().map(|(f, _)| f.as_str()).collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "accounts[0].environment",
                "accounts[1].email",
                "contact_email",
                "network.availability_zones",
                "network.cidr",
                "regions",
                "tag",
            ],
            "{p:#?}"
        );
        let said = |f: &str| p.iter().find(|(x, _)| x == f).unwrap().1.clone();
        assert!(
            said("tag").contains("unknown field `tag` (did you mean `tags`?)"),
            "{p:#?}"
        );
        assert!(
            said("contact_email").contains("missing field `contact_email`"),
            "{p:#?}"
        );
        assert!(said("network.cidr").contains("not a private"), "{p:#?}");
    }

    /// The per-field reading knows every field of the struct, and which have no default: a
    /// field added to `Requirements` and not to `lenient` fails here.
    #[test]
    fn the_shape_check_knows_every_field_of_the_schema() {
        let schema = serde_json::to_value(schemars::schema_for!(Requirements)).unwrap();
        let mut required: Vec<&str> = schema["required"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        required.sort_unstable();
        let (_, empty) = lenient(&Map::new());
        let mut ours: Vec<&str> = empty.iter().map(|p| p.field.as_str()).collect();
        ours.sort_unstable();
        assert_eq!(required, ours);
        for field in schema["properties"].as_object().unwrap().keys() {
            // A number is the wrong shape for every field: each must be read as its own type.
            let (_, problems) = lenient(json!({ field.as_str(): 12345 }).as_object().unwrap());
            let own = problems
                .iter()
                .find(|p| p.field == *field || p.field.starts_with(&format!("{field}.")));
            let own = own.unwrap_or_else(|| panic!("{field}: {problems:?}"));
            assert!(!own.message.contains("unknown field"), "{field}: {own:?}");
        }
    }

    #[test]
    fn rule_packs_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("baseline")).unwrap();
        let v = acme();
        assert!(Requirements::from_inputs(v.as_object().unwrap(), Some(dir.path())).is_ok());
        let mut v = acme();
        v["compliance"] = json!(["baseline", "../etc"]);
        let e = Requirements::from_inputs(v.as_object().unwrap(), Some(dir.path())).unwrap_err();
        assert_eq!(e[0].field, "compliance[1]");
        assert!(e[0].message.contains("known: baseline"));
    }
}

#[cfg(test)]
mod examples {
    use super::*;
    use landfall_engine::{parse_document, Source};

    /// The shipped customer examples are valid against the shipped rule packs.
    #[test]
    fn shipped_examples_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let rules = root.join("templates/rules");
        let mut seen = 0;
        for e in std::fs::read_dir(root.join("examples/customers"))
            .unwrap()
            .flatten()
        {
            let p = e.path();
            let text = std::fs::read_to_string(&p).unwrap();
            let (doc, _) = parse_document(&Source::new(p.display().to_string(), text)).unwrap();
            let map = doc.value.as_object().unwrap().clone();
            if let Err(problems) = Requirements::from_inputs(&map, Some(&rules)) {
                panic!("{}: {problems:?}", p.display());
            }
            seen += 1;
        }
        assert!(seen >= 3, "expected three customer examples, found {seen}");
    }
}
