//! `cfn-build`: a customer's requirements → a CloudFormation package (templates + manifest).
//!
//! Stacks are rendered from `templates/cfn/<stack>.yaml.j2` with every value JSON-escaped.
//! Subnet CIDRs are computed here (not with `Fn::Cidr`). The manifest lists the stacks in
//! deployment order with their parameters, the targets (account × regions, with per-account
//! parameters), each template's digest, the requirements' digest and the resource types used
//! (from which the `iam` step derives the deployer's permissions).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use async_trait::async_trait;
use ipnet::Ipv4Net;
use landfall_engine::{digest_of, sha256_hex};
use landfall_engine::{Plugin, StepContext, StepError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::requirements::Requirements;
use crate::templates::TemplateSet;

/// Stacks of the default package, in deployment order.
pub(crate) const DEFAULT_STACKS: [&str; 3] = ["security-baseline", "network", "access"];

/// Parameters `deploy` fills in from the organization, not from the package.
pub(crate) const DEPLOY_PARAMETERS: [&str; 1] = ["ManagementAccountId"];

pub(crate) struct CfnBuild {
    pub templates_dir: PathBuf,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CfnBuildConfig {
    /// The customer's requirements, usually `"{{ inputs }}"`.
    pub requirements: Value,
    /// The package's id (default `<customer>-baseline`).
    #[serde(default)]
    pub package_id: Option<String>,
    /// Stacks in deployment order, by template name (default: security-baseline, network,
    /// access).
    #[serde(default)]
    pub stacks: Option<Vec<String>>,
}

/// One AZ's subnets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct SubnetPair {
    pub index: usize,
    pub public: String,
    pub private: String,
}

/// The most availability zones a customer's network may span (the requirements check says so
/// too): the VPC block is always laid out for this many.
pub(crate) const MAX_AZS: usize = 4;

/// Splits the VPC block into `2 × MAX_AZS` equal slots: the public subnets first, then the
/// private ones; AZ `i` takes public slot `i` and private slot `MAX_AZS + i`. The layout does
/// not depend on how many AZs are used, so adding one only adds subnets: sized by the AZ count,
/// every existing subnet would move to a new CIDR, which CloudFormation can only do by
/// replacing it, and the replacement conflicts with the subnet it replaces (AWS refuses
/// overlapping CIDRs in one VPC). AWS's smallest subnet is /28.
pub(crate) fn subnet_plan(cidr: &str, azs: u8) -> Result<Vec<SubnetPair>, String> {
    let net: Ipv4Net = cidr
        .parse()
        .map_err(|_| format!("{cidr:?} is not an IPv4 CIDR block"))?;
    let azs = azs as usize;
    if azs == 0 {
        return Err("at least one availability zone is needed".into());
    }
    if azs > MAX_AZS {
        return Err(format!(
            "at most {MAX_AZS} availability zones are supported"
        ));
    }
    let bits = (2 * MAX_AZS).trailing_zeros() as u8;
    let prefix = net.prefix_len() + bits;
    if prefix > 28 {
        return Err(format!(
            "{net} is too small for {azs} public and {azs} private subnets (each would be /{prefix}; the smallest AWS allows is /28)"
        ));
    }
    let blocks: Vec<Ipv4Net> = net.subnets(prefix).map_err(|e| e.to_string())?.collect();
    Ok((0..azs)
        .map(|i| SubnetPair {
            index: i,
            public: blocks[i].to_string(),
            private: blocks[MAX_AZS + i].to_string(),
        })
        .collect())
}

/// A built package, before validation and publication.
#[derive(Debug, Clone, Serialize)]
pub struct Built {
    pub package_id: String,
    pub manifest: Value,
    pub files: BTreeMap<String, String>,
}

/// Renders the package for `req`. Pure: no AWS.
pub fn build(
    templates_dir: &std::path::Path,
    req: &Requirements,
    package_id: Option<&str>,
    stacks: Option<&[String]>,
) -> Result<Built, StepError> {
    let set = TemplateSet::load(&templates_dir.join("cfn"))
        .map_err(|e| StepError::permanent(e.to_string()))?;
    let stacks: Vec<String> = match stacks {
        Some(s) => s.to_vec(),
        None => DEFAULT_STACKS.iter().map(|s| s.to_string()).collect(),
    };
    let subnets = subnet_plan(&req.network.cidr, req.network.availability_zones)
        .map_err(StepError::permanent)?;
    let ctx = json!({
        "customer": req.customer,
        "display_name": req.display_name,
        "network": req.network,
        "regions": req.regions,
        "tags": req.tags,
        "subnets": subnets,
    });
    let package_id = package_id
        .map(str::to_string)
        .unwrap_or_else(|| format!("{}-baseline", req.customer));
    let mut files = BTreeMap::new();
    let mut stack_entries = Vec::new();
    let mut resource_types = BTreeSet::new();
    for (order, name) in stacks.iter().enumerate() {
        let file = format!("{name}.yaml.j2");
        if !set.names().contains(&file) {
            return Err(StepError::permanent(format!(
                "no CloudFormation template `{file}` in {}",
                set.dir().display()
            )));
        }
        let text = set
            .render(&file, &ctx)
            .map_err(|e| StepError::permanent(e.to_string()))?;
        let doc: Value = serde_yaml::from_str(&text).map_err(|e| {
            StepError::permanent(format!("template {file} did not render to valid YAML: {e}"))
        })?;
        let resources = doc
            .get("Resources")
            .and_then(Value::as_object)
            .ok_or_else(|| StepError::permanent(format!("template {file} has no Resources")))?;
        for r in resources.values() {
            if let Some(t) = r.get("Type").and_then(Value::as_str) {
                resource_types.insert(t.to_string());
            }
        }
        let params: Vec<String> = doc
            .get("Parameters")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect())
            .unwrap_or_default();
        // IAM is global: such a stack deploys once per account (in the home region), or its
        // named roles would collide between regions.
        let global = resources.values().any(|r| {
            r.get("Type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.starts_with("AWS::IAM::"))
        });
        let path = format!("stacks/{name}.yaml");
        stack_entries.push(json!({
            "name": name,
            "order": order + 1,
            "scope": if global { "account" } else { "region" },
            "template": path,
            "template_digest": sha256_hex(text.as_bytes()),
            "parameters": { "Customer": req.customer },
            "target_parameters": params.iter().filter(|p| *p == "Environment").collect::<Vec<_>>(),
            "deploy_parameters": params.iter().filter(|p| DEPLOY_PARAMETERS.contains(&p.as_str())).collect::<Vec<_>>(),
        }));
        files.insert(path, text);
    }
    let targets: Vec<Value> = req
        .accounts
        .iter()
        .map(|a| {
            json!({
                "account": a.name,
                "email": a.email,
                "environment": a.environment,
                "regions": req.regions,
                "parameters": { "Environment": a.environment.as_str() },
            })
        })
        .collect();
    let manifest = json!({
        "package_id": package_id,
        "customer": req.customer,
        "display_name": req.display_name,
        "requirements_digest": digest_of(req),
        "home_region": req.regions.first(),
        "stacks": stack_entries,
        "targets": targets,
        "resource_types": resource_types,
        "subnets": subnets,
    });
    Ok(Built {
        package_id,
        manifest,
        files,
    })
}

#[async_trait]
impl Plugin for CfnBuild {
    const NAME: &'static str = "cfn-build";
    const SUMMARY: &'static str =
        "Render a customer's CloudFormation package (templates + manifest) from requirements";
    type Config = CfnBuildConfig;

    async fn run(&self, c: CfnBuildConfig, _ctx: StepContext) -> Result<Value, StepError> {
        let map = c
            .requirements
            .as_object()
            .ok_or_else(|| StepError::permanent("`requirements` must be a mapping"))?;
        let req = Requirements::from_inputs(map, None).map_err(|problems| {
            StepError::permanent(format!(
                "invalid requirements: {}",
                problems
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            ))
        })?;
        // Reading and rendering templates is blocking work: off the runtime's threads (an
        // attempt's first poll runs on the scheduler's).
        let dir = self.templates_dir.clone();
        tokio::task::spawn_blocking(move || {
            let built = build(&dir, &req, c.package_id.as_deref(), c.stacks.as_deref())?;
            serde_json::to_value(built).map_err(|e| StepError::permanent(e.to_string()))
        })
        .await
        .map_err(|e| StepError::permanent(format!("building the templates failed: {e}")))?
    }

    /// Reads only (or computes, touching nothing): planning is running it.
    async fn plan(
        &self,
        c: CfnBuildConfig,
        ctx: StepContext,
    ) -> Result<Option<landfall_engine::PlanOutcome>, StepError> {
        self.run(c, ctx)
            .await
            .map(|o| Some(landfall_engine::PlanOutcome::reads_only(o)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_split_the_block_evenly() {
        let p = subnet_plan("10.20.0.0/16", 2).unwrap();
        assert_eq!(
            p,
            vec![
                SubnetPair {
                    index: 0,
                    public: "10.20.0.0/19".into(),
                    private: "10.20.128.0/19".into()
                },
                SubnetPair {
                    index: 1,
                    public: "10.20.32.0/19".into(),
                    private: "10.20.160.0/19".into()
                },
            ]
        );
        let p = subnet_plan("192.168.16.0/24", 3).unwrap();
        assert_eq!(p[2].private, "192.168.16.192/27");
        assert!(subnet_plan("10.0.0.0/26", 3).unwrap_err().contains("/28"));
        assert!(subnet_plan("10.0.0.0/16", 5).is_err());
    }

    /// Growing a network by an availability zone keeps every existing subnet where it is.
    #[test]
    fn adding_an_availability_zone_only_adds_subnets() {
        for cidr in ["10.0.0.0/16", "172.16.8.0/21", "192.168.1.0/24"] {
            for azs in 1..MAX_AZS as u8 {
                let before = subnet_plan(cidr, azs).unwrap();
                let after = subnet_plan(cidr, azs + 1).unwrap();
                assert_eq!(
                    &after[..before.len()],
                    &before[..],
                    "{cidr}: {azs} → {}",
                    azs + 1
                );
            }
        }
    }

    #[test]
    fn subnets_never_overlap_and_stay_inside() {
        for azs in 1..=4u8 {
            for cidr in ["10.0.0.0/16", "172.16.8.0/21", "192.168.1.0/24"] {
                let plan = subnet_plan(cidr, azs).unwrap();
                let vpc: Ipv4Net = cidr.parse().unwrap();
                let all: Vec<Ipv4Net> = plan
                    .iter()
                    .flat_map(|p| [p.public.parse().unwrap(), p.private.parse().unwrap()])
                    .collect();
                assert_eq!(all.len(), 2 * azs as usize);
                for (i, a) in all.iter().enumerate() {
                    assert!(vpc.contains(a));
                    for b in &all[i + 1..] {
                        assert!(!a.contains(b) && !b.contains(a), "{a} overlaps {b}");
                    }
                }
            }
        }
    }
}
