//! Durable state: runs, node checkpoints and the audit log.
//!
//! Every state change goes through [`Store::commit`]: one [`Batch`] is one atomic, durable
//! transaction (the scheduler's group commit). The audit log is append-only and hash-chained
//! per run; the store, not the caller, assigns sequence numbers and hashes inside the same
//! transaction, so a chain can never fork.

mod mem;
mod redb_store;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use mem::MemStore;
pub use redb_store::RedbStore;

use crate::lock::RunLease;
use crate::package::{Package, PackageContent, Published};
use crate::state::{NodeRecord, RunRecord, Signal};
use std::collections::BTreeMap;

/// The on-disk schema version this build writes. Bump it with a migration in
/// `redb_store::MIGRATIONS`.
pub const SCHEMA_VERSION: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the state file {path}: {message}")]
    Open { path: String, message: String },
    #[error("the state file {path} was written by a newer Landfall (schema {found}, this build knows up to {known}); upgrade landfall")]
    TooNew {
        path: String,
        found: u64,
        known: u64,
    },
    #[error("state file error: {0}")]
    Backend(String),
    #[error("a stored record is corrupt ({what}): {message}")]
    Corrupt { what: String, message: String },
    #[error("run `{0}` does not exist")]
    NoSuchRun(String),
}

macro_rules! backend_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Backend(e.to_string())
            }
        }
    )*};
}
backend_errors!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// An audit entry before the store has placed it in its chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditDraft {
    pub at: DateTime<Utc>,
    pub actor: String,
    /// Empty for entries that belong to no run (a refused Slack request, a breaker).
    pub run_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// `run_started`, `node_transition`, `retry_scheduled`, `breaker_opened`, …
    pub kind: String,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub details: Value,
}

impl AuditDraft {
    pub fn new(actor: &str, run_id: &str, kind: &str, details: Value) -> Self {
        AuditDraft {
            at: Utc::now(),
            actor: actor.to_string(),
            run_id: run_id.to_string(),
            node: None,
            kind: kind.to_string(),
            details,
        }
    }

    pub fn node(mut self, node: &str) -> Self {
        self.node = Some(node.to_string());
        self
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    #[serde(flatten)]
    pub draft: AuditDraft,
    /// Hash of the previous entry of the same run ("" for the first).
    pub prev: String,
    /// Sha-256 over `prev` and the canonical JSON of `seq` and `draft`.
    pub hash: String,
}

impl AuditEntry {
    pub fn chain(seq: u64, draft: AuditDraft, prev: String) -> Self {
        let hash = Self::compute_hash(seq, &draft, &prev);
        AuditEntry {
            seq,
            draft,
            prev,
            hash,
        }
    }

    /// Sha-256 over `prev`, `seq` and every field of the draft, each length-prefixed, with
    /// `details` walked in sorted key order. Independent of how JSON maps order their keys
    /// (a dependency may switch serde_json to insertion order), and cheap: no intermediate
    /// JSON is built.
    fn compute_hash(seq: u64, draft: &AuditDraft, prev: &str) -> String {
        use sha2::{Digest, Sha256};
        fn field(h: &mut Sha256, s: &str) {
            h.update((s.len() as u64).to_le_bytes());
            h.update(s.as_bytes());
        }
        fn value(h: &mut Sha256, v: &Value) {
            match v {
                Value::Null => h.update(b"n"),
                Value::Bool(b) => h.update(if *b { b"t" } else { b"f" }),
                Value::Number(n) => {
                    h.update(b"#");
                    // Formatted on the stack: a number is at most a few dozen bytes.
                    let mut buf = [0u8; 64];
                    let mut w = std::io::Cursor::new(&mut buf[..]);
                    match std::io::Write::write_fmt(&mut w, format_args!("{n}")) {
                        Ok(()) => {
                            let len = w.position() as usize;
                            h.update((len as u64).to_le_bytes());
                            h.update(&buf[..len]);
                        }
                        Err(_) => field(h, &n.to_string()),
                    }
                }
                Value::String(s) => {
                    h.update(b"s");
                    field(h, s);
                }
                Value::Array(items) => {
                    h.update(b"[");
                    h.update((items.len() as u64).to_le_bytes());
                    for i in items {
                        value(h, i);
                    }
                }
                Value::Object(map) => {
                    h.update(b"{");
                    h.update((map.len() as u64).to_le_bytes());
                    // serde_json's map is sorted already unless a dependency turns on
                    // `preserve_order`; only then is a sorted copy of the keys needed.
                    if map.keys().is_sorted() {
                        for (k, v) in map {
                            field(h, k);
                            value(h, v);
                        }
                    } else {
                        let mut keys: Vec<&String> = map.keys().collect();
                        keys.sort();
                        for k in keys {
                            field(h, k);
                            value(h, &map[k]);
                        }
                    }
                }
            }
        }
        let mut h = Sha256::new();
        field(&mut h, prev);
        h.update(seq.to_le_bytes());
        field(
            &mut h,
            &draft.at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        );
        field(&mut h, &draft.actor);
        field(&mut h, &draft.run_id);
        match &draft.node {
            Some(n) => {
                h.update(b"1");
                field(&mut h, n);
            }
            None => h.update(b"0"),
        }
        field(&mut h, &draft.kind);
        value(&mut h, &draft.details);
        const_hex::encode(h.finalize())
    }
}

/// Checks a stored package against its digest.
pub fn verify_package(p: Package) -> Result<Package, StoreError> {
    let actual = p.content.digest();
    if actual != p.digest {
        return Err(StoreError::Corrupt {
            what: format!("package {}@{}", p.id, p.version),
            message: format!(
                "its content hashes to {actual}, not to the recorded digest {}",
                p.digest
            ),
        });
    }
    Ok(p)
}

/// Where a chain first breaks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChainBreak {
    pub seq: u64,
    pub reason: String,
}

/// Checks a run's audit chain, in order; `None` when it is intact.
pub fn verify_chain(entries: &[AuditEntry]) -> Option<ChainBreak> {
    let mut prev = String::new();
    for (i, e) in entries.iter().enumerate() {
        if e.seq != i as u64 {
            return Some(ChainBreak {
                seq: e.seq,
                reason: format!(
                    "expected entry #{i}, found #{} (an entry is missing)",
                    e.seq
                ),
            });
        }
        if e.prev != prev {
            return Some(ChainBreak {
                seq: e.seq,
                reason: "its link to the previous entry does not match".into(),
            });
        }
        if AuditEntry::compute_hash(e.seq, &e.draft, &e.prev) != e.hash {
            return Some(ChainBreak {
                seq: e.seq,
                reason: "its content does not match its hash (it was changed)".into(),
            });
        }
        prev = e.hash.clone();
    }
    None
}

/// One atomic, durable change.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub runs: Vec<RunRecord>,
    pub nodes: Vec<(String, NodeRecord)>,
    pub audit: Vec<AuditDraft>,
    /// (run, node, signal): replaces an earlier signal of the same node.
    pub signals: Vec<(String, String, Signal)>,
    /// (run, key, value): data observers keep with a run (the Slack thread), by key.
    pub annotations: Vec<(String, String, Value)>,
    /// (name, sealed bytes): secrets, sealed by the caller (see [`crate::crypto`]); the store
    /// never sees them in clear.
    pub secrets: Vec<(String, Vec<u8>)>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
            && self.nodes.is_empty()
            && self.audit.is_empty()
            && self.signals.is_empty()
            && self.annotations.is_empty()
            && self.secrets.is_empty()
    }
}

pub trait Store: Send + Sync {
    /// Applies the batch atomically and durably (it is on disk when this returns).
    fn commit(&self, batch: Batch) -> Result<(), StoreError>;
    fn run(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError>;
    /// Every run, newest first.
    fn runs(&self) -> Result<Vec<RunRecord>, StoreError>;
    fn nodes(&self, run_id: &str) -> Result<Vec<NodeRecord>, StoreError>;
    fn audit(&self, run_id: &str) -> Result<Vec<AuditEntry>, StoreError>;
    /// The signal delivered to a node, if any.
    fn signal(&self, run_id: &str, node_id: &str) -> Result<Option<Signal>, StoreError>;
    /// Every annotation of a run, by key.
    fn annotations(&self, run_id: &str) -> Result<BTreeMap<String, Value>, StoreError>;
    /// A sealed secret by name.
    fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every sealed secret, by name (for re-sealing them under a new data key).
    fn secrets(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// Publishes a package: identical content returns its existing version, new content the
    /// next version. One transaction.
    fn publish_package(
        &self,
        id: &str,
        content: &PackageContent,
        run_id: Option<&str>,
    ) -> Result<Published, StoreError>;
    /// A package version (`None` = latest), its digest verified: a mismatch is
    /// [`StoreError::Corrupt`].
    fn package(&self, id: &str, version: Option<u64>) -> Result<Option<Package>, StoreError>;
    /// Every package version, without file contents' check (for listings).
    fn packages(&self) -> Result<Vec<Package>, StoreError>;
    /// Claims the right to execute a run; `None` while another live process has it.
    fn lease(&self, run_id: &str) -> Result<Option<RunLease>, StoreError>;
    /// Whether a live process is executing the run.
    fn is_live(&self, run_id: &str) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_verify_and_detect_each_kind_of_tampering() {
        let mut entries = Vec::new();
        let mut prev = String::new();
        for i in 0..4 {
            let e = AuditEntry::chain(i, AuditDraft::new("me", "r", "k", Value::from(i)), prev);
            prev = e.hash.clone();
            entries.push(e);
        }
        assert_eq!(verify_chain(&entries), None);

        let mut changed = entries.clone();
        changed[2].draft.actor = "mallory".into();
        assert_eq!(verify_chain(&changed).unwrap().seq, 2);

        let mut removed = entries.clone();
        removed.remove(1);
        assert_eq!(verify_chain(&removed).unwrap().seq, 2);

        let mut relinked = entries.clone();
        relinked[3].prev = "x".into();
        assert_eq!(verify_chain(&relinked).unwrap().seq, 3);
    }

    /// Stored chains must keep verifying: the hash of a fixed entry never changes, however
    /// it is computed.
    #[test]
    fn the_hash_format_is_stable() {
        let mut d = AuditDraft::new(
            "U1",
            "01JRUN",
            "node_transition",
            serde_json::json!({ "to": "running", "from": "pending", "attempt": 3, "x": [1.5, -2, null, true, "s"], "nested": { "b": 1, "a": 2 } }),
        );
        d.at = chrono::DateTime::from_timestamp(1_764_000_000, 123_456_789).unwrap();
        d.node = Some("deploy[2]".into());
        let e = AuditEntry::chain(7, d, "ab".repeat(32));
        assert_eq!(
            e.hash,
            "e9b92ad29b14aee8734547b0ed461891721951ea4397461c44d803ae07d280b9"
        );
    }
}
