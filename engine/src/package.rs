//! Packages: versioned, immutable, content-addressed sets of files (CloudFormation templates
//! and a manifest), stored in the run state file.
//!
//! The digest is SHA-256 over the canonical JSON of `{manifest, files}`. Publishing content
//! that already exists under an id returns the existing version; new content gets the next
//! version number, which only goes up. Every fetch recomputes the digest: a record that does
//! not match is corrupt, and callers must treat that as critical.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What is published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackageContent {
    /// Stacks, their order and parameters, template digests, the requirements digest…
    pub manifest: Value,
    /// File path (`stacks/network.yaml`) → text.
    pub files: BTreeMap<String, String>,
}

impl PackageContent {
    pub fn digest(&self) -> String {
        crate::digest::digest_of(self)
    }
}

/// A stored package version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Package {
    pub id: String,
    pub version: u64,
    pub digest: String,
    pub created_at: DateTime<Utc>,
    /// The run that published it, if any.
    #[serde(default)]
    pub run_id: Option<String>,
    pub content: PackageContent,
}

/// What `publish` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Published {
    pub id: String,
    pub version: u64,
    pub digest: String,
    /// False when identical content already existed (its version is returned).
    pub new: bool,
}

/// `id@3` or `id@latest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageRef {
    pub id: String,
    /// `None` = latest.
    pub version: Option<u64>,
}

impl std::str::FromStr for PackageRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (id, v) = s.split_once('@').unwrap_or((s, "latest"));
        if !valid_package_id(id) {
            return Err(format!(
                "`{id}` is not a package id (lowercase letters, digits and `-`, like `acme-baseline`)"
            ));
        }
        let version = match v {
            "latest" => None,
            n => Some(
                n.trim_start_matches('v')
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        format!("`{v}` is not a version: use a number ≥ 1 or `latest`")
                    })?,
            ),
        };
        Ok(PackageRef {
            id: id.to_string(),
            version,
        })
    }
}

impl fmt::Display for PackageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.version {
            Some(v) => write!(f, "{}@{v}", self.id),
            None => write!(f, "{}@latest", self.id),
        }
    }
}

pub fn valid_package_id(id: &str) -> bool {
    let mut c = id.chars();
    c.next().is_some_and(|f| f.is_ascii_lowercase())
        && id.len() <= 64
        && c.all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || x == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_parse() {
        assert_eq!(
            "acme-baseline@3".parse::<PackageRef>().unwrap().version,
            Some(3)
        );
        assert_eq!(
            "acme-baseline@v3".parse::<PackageRef>().unwrap().version,
            Some(3)
        );
        assert_eq!(
            "acme-baseline@latest"
                .parse::<PackageRef>()
                .unwrap()
                .version,
            None
        );
        assert_eq!("acme-baseline".parse::<PackageRef>().unwrap().version, None);
        assert!("acme@0".parse::<PackageRef>().is_err());
        assert!("Acme@1".parse::<PackageRef>().is_err());
        assert!("../x@1".parse::<PackageRef>().is_err());
    }
}
