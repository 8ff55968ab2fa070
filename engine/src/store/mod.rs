//! Durable state: runs, node checkpoints and the audit log.
//!
//! Every state change goes through [`Store::commit`]: one [`Batch`] is one atomic, durable
//! transaction (the scheduler's group commit). The audit log is append-only and hash-chained
//! per run; the store, not the caller, assigns sequence numbers and hashes inside the same
//! transaction, so a chain can never fork.

mod mem;
mod redb_store;
mod rows;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use mem::MemStore;
pub use redb_store::RedbStore;

use crate::lock::RunLease;
use crate::package::{Package, PackageContent, Published};
use crate::state::{NodeRecord, NodeStatus, RunRecord, Signal};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The on-disk schema version this build writes. Bump it with a migration in
/// `redb_store::MIGRATIONS`.
pub const SCHEMA_VERSION: u64 = 2;

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

/// A node's transition: the entry a run writes most (two per node at least). Kept typed
/// until it is stored, so the scheduler builds neither a JSON map nor owned copies of the
/// actor and run id per entry. It is the same entry, with the same hash, as the
/// [`AuditDraft`] that [`TransitionDraft::to_draft`] gives.
#[derive(Debug, Clone, PartialEq)]
pub struct TransitionDraft {
    pub at: DateTime<Utc>,
    pub actor: Arc<str>,
    pub run_id: Arc<str>,
    pub node: Arc<str>,
    /// `None`: the node was created in this state.
    pub from: Option<NodeStatus>,
    pub to: NodeStatus,
    pub attempt: u32,
}

impl TransitionDraft {
    pub const KIND: &'static str = "node_transition";

    fn old_state(&self) -> &'static str {
        self.from.map_or("new", NodeStatus::as_str)
    }

    pub fn to_draft(&self) -> AuditDraft {
        AuditDraft {
            at: self.at,
            actor: self.actor.to_string(),
            run_id: self.run_id.to_string(),
            node: Some(self.node.to_string()),
            kind: Self::KIND.to_string(),
            details: serde_json::json!({ "from": self.old_state(), "to": self.to, "attempt": self.attempt }),
        }
    }
}

/// An audit entry as a batch carries it.
#[derive(Debug, Clone, PartialEq)]
pub enum Draft {
    Entry(AuditDraft),
    Transition(TransitionDraft),
}

impl From<AuditDraft> for Draft {
    fn from(d: AuditDraft) -> Self {
        Draft::Entry(d)
    }
}

impl From<TransitionDraft> for Draft {
    fn from(t: TransitionDraft) -> Self {
        Draft::Transition(t)
    }
}

impl Draft {
    pub fn run_id(&self) -> &str {
        match self {
            Draft::Entry(d) => &d.run_id,
            Draft::Transition(t) => &t.run_id,
        }
    }

    pub fn to_draft(&self) -> AuditDraft {
        match self {
            Draft::Entry(d) => d.clone(),
            Draft::Transition(t) => t.to_draft(),
        }
    }

    pub fn into_draft(self) -> AuditDraft {
        match self {
            Draft::Entry(d) => d,
            Draft::Transition(t) => t.to_draft(),
        }
    }

    /// The entry's hash at `seq` after the entry whose raw hash is `prev` (`None` for a
    /// chain's first entry): what the stores chain with.
    pub fn digest_after(&self, seq: u64, prev: Option<&[u8; 32]>) -> [u8; 32] {
        let mut hex = [0u8; 64];
        let prev = match prev {
            Some(raw) => {
                // Hex of 32 bytes always fills 64.
                let _ = const_hex::encode_to_slice(raw, &mut hex);
                std::str::from_utf8(&hex).unwrap_or_default()
            }
            None => "",
        };
        self.digest(seq, prev)
    }

    /// The entry's hash at `seq` after `prev`: [`AuditEntry::chain`]'s, without building the
    /// entry.
    pub fn digest(&self, seq: u64, prev: &str) -> [u8; 32] {
        match self {
            Draft::Entry(d) => AuditEntry::digest(seq, d, prev),
            Draft::Transition(t) => HashStream::with(|s| {
                s.head(
                    prev,
                    seq,
                    t.at,
                    &t.actor,
                    &t.run_id,
                    Some(&t.node),
                    TransitionDraft::KIND,
                );
                // The details map `{attempt, from, to}`, keys in order, as `value` walks it.
                s.raw(b"{");
                s.raw(&3u64.to_le_bytes());
                s.field("attempt");
                s.raw(b"#");
                s.field(itoa::Buffer::new().format(t.attempt));
                s.field("from");
                s.raw(b"s");
                s.field(t.old_state());
                s.field("to");
                s.raw(b"s");
                s.field(t.to.as_str());
            }),
        }
    }
}

/// The stretches of consecutive drafts of one run, in order: each becomes one piece of its
/// run's chain (a segment, a chunk row) in a commit.
pub(crate) fn stretches(drafts: &[Draft]) -> Vec<std::ops::Range<usize>> {
    let mut out: Vec<std::ops::Range<usize>> = Vec::new();
    for (i, d) in drafts.iter().enumerate() {
        match out.last_mut() {
            Some(r) if drafts[r.start].run_id() == d.run_id() => r.end = i + 1,
            _ => out.push(i..i + 1),
        }
    }
    out
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
        const_hex::encode(Self::digest(seq, draft, prev))
    }

    /// The hash's bytes. The hashed stream is laid out in one buffer and hashed in one call:
    /// many small updates cost as much as the compression itself.
    pub fn digest(seq: u64, draft: &AuditDraft, prev: &str) -> [u8; 32] {
        HashStream::with(|s| {
            s.head(
                prev,
                seq,
                draft.at,
                &draft.actor,
                &draft.run_id,
                draft.node.as_deref(),
                &draft.kind,
            );
            s.value(&draft.details);
        })
    }
}

/// The byte stream an audit entry's hash covers (format 1, pinned by
/// `tests::the_hash_format_is_stable`): length-prefixed strings, tagged JSON values.
struct HashStream(Vec<u8>);

thread_local! {
    static HASH_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(512));
    /// The last timestamp written and its text: a commit's entries mostly share one (the
    /// scheduler stamps a turn's transitions alike).
    static LAST_AT: std::cell::Cell<Option<(DateTime<Utc>, [u8; 30])>> = const { std::cell::Cell::new(None) };
}

impl HashStream {
    /// Fills a reused buffer with `fill` and hashes it.
    fn with(fill: impl FnOnce(&mut HashStream)) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        HASH_BUF.with(|cell| {
            let mut buf = cell.take();
            buf.clear();
            let mut s = HashStream(buf);
            fill(&mut s);
            let out: [u8; 32] = Sha256::digest(&s.0).into();
            cell.replace(s.0);
            out
        })
    }

    fn raw(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }

    fn field(&mut self, s: &str) {
        self.raw(&(s.len() as u64).to_le_bytes());
        self.raw(s.as_bytes());
    }

    #[allow(clippy::too_many_arguments)]
    fn head(
        &mut self,
        prev: &str,
        seq: u64,
        at: DateTime<Utc>,
        actor: &str,
        run_id: &str,
        node: Option<&str>,
        kind: &str,
    ) {
        self.field(prev);
        self.raw(&seq.to_le_bytes());
        // `at` as RFC 3339 with nanoseconds: 30 bytes for every year this tool will see.
        self.raw(&30u64.to_le_bytes());
        let start = self.0.len();
        match LAST_AT.get() {
            Some((last, text)) if last == at => self.raw(&text),
            _ if rfc3339_nanos(at, &mut self.0) => {
                if let Ok(text) = <[u8; 30]>::try_from(&self.0[start..]) {
                    LAST_AT.set(Some((at, text)));
                }
            }
            _ => {
                self.0.truncate(start - 8);
                self.field(&at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true));
            }
        }
        self.field(actor);
        self.field(run_id);
        match node {
            Some(n) => {
                self.raw(b"1");
                self.field(n);
            }
            None => self.raw(b"0"),
        }
        self.field(kind);
    }

    fn value(&mut self, v: &Value) {
        match v {
            Value::Null => self.raw(b"n"),
            Value::Bool(b) => self.raw(if *b { b"t" } else { b"f" }),
            Value::Number(n) => {
                self.raw(b"#");
                let len_at = self.0.len();
                self.raw(&[0; 8]);
                let start = self.0.len();
                // Writing into a Vec cannot fail.
                let _ = std::io::Write::write_fmt(&mut self.0, format_args!("{n}"));
                let len = (self.0.len() - start) as u64;
                self.0[len_at..start].copy_from_slice(&len.to_le_bytes());
            }
            Value::String(s) => {
                self.raw(b"s");
                self.field(s);
            }
            Value::Array(items) => {
                self.raw(b"[");
                self.raw(&(items.len() as u64).to_le_bytes());
                for i in items {
                    self.value(i);
                }
            }
            Value::Object(map) => {
                self.raw(b"{");
                self.raw(&(map.len() as u64).to_le_bytes());
                // serde_json's map is sorted already unless a dependency turns on
                // `preserve_order`; only then is a sorted copy of the keys needed.
                if map.keys().is_sorted() {
                    for (k, v) in map {
                        self.field(k);
                        self.value(v);
                    }
                } else {
                    let mut keys: Vec<&String> = map.keys().collect();
                    keys.sort();
                    for k in keys {
                        self.field(k);
                        self.value(&map[k]);
                    }
                }
            }
        }
    }
}

/// Writes `at` exactly as `to_rfc3339_opts(Nanos, true)` does (`2026-11-25T04:18:47.123456789Z`)
/// without chrono's formatter, which was a fifth of an entry's hashing. `false` (nothing
/// written) outside years 0000–9999 or inside a leap second: the caller formats those.
fn rfc3339_nanos(at: DateTime<Utc>, out: &mut Vec<u8>) -> bool {
    use chrono::{Datelike, Timelike};
    let (date, time) = (at.date_naive(), at.time());
    let nanos = time.nanosecond();
    if !(0..=9999).contains(&date.year()) || nanos >= 1_000_000_000 {
        return false;
    }
    fn digits(out: &mut Vec<u8>, v: u32, width: usize) {
        let mut buf = [b'0'; 9];
        let mut v = v;
        for slot in buf[..width].iter_mut().rev() {
            *slot = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out.extend_from_slice(&buf[..width]);
    }
    digits(out, date.year() as u32, 4);
    out.push(b'-');
    digits(out, date.month(), 2);
    out.push(b'-');
    digits(out, date.day(), 2);
    out.push(b'T');
    digits(out, time.hour(), 2);
    out.push(b':');
    digits(out, time.minute(), 2);
    out.push(b':');
    digits(out, time.second(), 2);
    out.push(b'.');
    digits(out, nanos, 9);
    out.push(b'Z');
    true
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
    /// (run, its records): a turn writes hundreds of records of one run. Records are
    /// shared: the scheduler keeps each one it commits until it changes again
    /// (copy-on-write).
    pub nodes: Vec<(Arc<str>, Vec<Arc<NodeRecord>>)>,
    pub audit: Vec<Draft>,
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

    proptest::proptest! {
        /// The hand-written timestamp writer is byte-for-byte chrono's RFC 3339 (the hash
        /// format depends on it), and declines what it does not cover.
        #[test]
        fn timestamps_are_written_as_chrono_writes_them(
            secs in -70_000_000_000i64..300_000_000_000i64,
            nanos in 0u32..1_999_999_999u32,
        ) {
            if let Some(at) = chrono::DateTime::from_timestamp(secs, nanos) {
                let mut out = Vec::new();
                let chrono = at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
                if rfc3339_nanos(at, &mut out) {
                    proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), chrono);
                } else {
                    proptest::prop_assert!(out.is_empty());
                    proptest::prop_assert!(chrono.len() != 30 || nanos >= 1_000_000_000, "{}", chrono);
                }
            }
        }
    }

    /// A batch may interleave runs: each run's chain keeps its own order and verifies, in
    /// both stores, across commits.
    #[test]
    fn interleaved_runs_chain_separately_in_both_stores() {
        let dir = tempfile::tempdir().unwrap();
        let stores: Vec<Box<dyn Store>> = vec![
            Box::new(MemStore::new()),
            Box::new(RedbStore::open(&dir.path().join("s.redb")).unwrap()),
        ];
        for store in stores {
            for round in 0..2 {
                let audit = ["a", "b", "a", "a"]
                    .iter()
                    .enumerate()
                    .map(|(i, run)| {
                        AuditDraft::new("me", run, "k", Value::from(round * 10 + i)).into()
                    })
                    .collect();
                store
                    .commit(Batch {
                        audit,
                        ..Batch::default()
                    })
                    .unwrap();
            }
            let a = store.audit("a").unwrap();
            let details: Vec<Value> = a.iter().map(|e| e.draft.details.clone()).collect();
            assert_eq!(details, [0, 2, 3, 10, 12, 13].map(Value::from));
            assert_eq!(verify_chain(&a), None);
            let b = store.audit("b").unwrap();
            assert_eq!(b.len(), 2);
            assert_eq!(verify_chain(&b), None);
        }
    }

    /// A typed transition hashes, stores and reads back as the draft it stands for.
    #[test]
    fn a_typed_transition_is_the_entry_it_stands_for() {
        use NodeStatus::*;
        let all = [
            Pending, Running, Waiting, Succeeded, Failed, Skipped, Cancelled,
        ];
        for (i, to) in all.into_iter().enumerate() {
            for from in std::iter::once(None).chain(all.map(Some)) {
                let t = TransitionDraft {
                    at: chrono::DateTime::from_timestamp(1_764_000_000 + i as i64, 7).unwrap(),
                    actor: "U1".into(),
                    run_id: "01JRUN".into(),
                    node: "deploy[2]".into(),
                    from,
                    to,
                    attempt: [0, 1, 9, 10, 4_000_000_000][i % 5],
                };
                let typed = Draft::from(t.clone());
                let plain = Draft::from(t.to_draft());
                assert_eq!(
                    typed.digest(3, "ab"),
                    plain.digest(3, "ab"),
                    "{from:?} -> {to:?}"
                );
                assert_eq!(
                    AuditEntry::chain(3, t.to_draft(), "ab".into()).hash,
                    const_hex::encode(typed.digest(3, "ab"))
                );
            }
        }
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
