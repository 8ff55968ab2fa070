//! Durable state: runs, node checkpoints and the audit log.
//!
//! Every state change goes through [`Store::commit`]: one [`Batch`] is one atomic, durable
//! transaction (the scheduler's group commit). The audit log is append-only and hash-chained
//! per run; the store, not the caller, assigns sequence numbers and hashes inside the same
//! transaction, so a chain can never fork.

#[cfg(test)]
mod contract;
mod mem;
mod pg;
mod redb_store;
mod rows;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use mem::MemStore;
pub use pg::{is_postgres_url, redacted, testing as pg_testing, PgStore, DEFAULT_LEASE};
pub use redb_store::RedbStore;

use crate::lock::RunLease;
use crate::package::{Package, PackageContent, Published};
use crate::plan::Plan;
use crate::state::{NodeRecord, NodeStatus, RunRecord, Signal};
use std::collections::BTreeMap;
use std::sync::Arc;

/// The on-disk schema version this build writes. Bump it with a migration in
/// `redb_store::MIGRATIONS`.
pub const SCHEMA_VERSION: u64 = 4;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the store {path}: {message}")]
    Open { path: String, message: String },
    #[error("{path} is not a Landfall state file: {why}. Nothing was changed; point --db (or LANDFALL_DB) at the state file, restore it from a backup, or move this file away to start an empty store")]
    NotAStateFile { path: String, why: String },
    #[error("the state file was opened read-only; this command cannot write to it")]
    ReadOnly,
    #[error("the store {path} was written by a newer Landfall (schema {found}, this build knows up to {known}); upgrade landfall")]
    TooNew {
        path: String,
        found: u64,
        known: u64,
    },
    #[error("store error: {0}")]
    Backend(String),
    #[error("a stored record is corrupt ({what}): {message}")]
    Corrupt { what: String, message: String },
    #[error("run `{0}` does not exist")]
    NoSuchRun(String),
    #[error("this worker no longer holds the lease of run `{0}` (it was paused or cut off past the lease, and another worker may have taken the run over): nothing was written")]
    LeaseLost(String),
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

    /// The entry's hash, in the current format ([`HASH_FORMAT`]), at `seq` after the entry
    /// whose raw hash is `prev` (`None` for a chain's first entry): what the stores chain
    /// with.
    pub fn digest_after(&self, seq: u64, prev: Option<&[u8; 32]>) -> [u8; 32] {
        let prev: &[u8] = prev.map_or(&[], |p| p);
        match self {
            Draft::Entry(d) => AuditEntry::digest_v2(seq, d, prev),
            Draft::Transition(t) => HashStream::with(|s| {
                s.head_v2(
                    prev,
                    seq,
                    t.at,
                    &t.actor,
                    &t.run_id,
                    Some(&t.node),
                    TransitionDraft::KIND,
                );
                // The details map `{attempt, from, to}`, keys in order, as `value_v2` walks
                // it.
                let l = Lengths::Varint;
                s.raw(b"{");
                s.len(l, 3);
                s.field(l, "attempt");
                s.raw(b"#");
                s.field(l, itoa::Buffer::new().format(t.attempt));
                s.field(l, "from");
                s.raw(b"s");
                s.field(l, t.old_state());
                s.field(l, "to");
                s.raw(b"s");
                s.field(l, t.to.as_str());
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

/// The format of the hash of entries written before format 2: `prev` as hex text, every
/// length as 8 bytes, the timestamp as RFC 3339 text (~290 bytes, 5 SHA-256 blocks, for a
/// node transition).
pub const HASH_FORMAT_1: u8 = 1;
/// The same fields, compactly (~155 bytes, 3 blocks, for a node transition: hashing was a
/// third of the scheduler's time per node). The stream, in order:
///
/// - eight `0xFF` bytes and the byte `2`. No format 1 stream starts so (it starts with the
///   8-byte length of `prev`), so no entry verifies in the other format;
/// - `prev`, the previous entry's raw hash (32 bytes, none for a chain's first entry), after
///   its length;
/// - `seq`; the timestamp as seconds since the epoch (8 bytes, signed) and nanoseconds
///   (4 bytes), both little-endian;
/// - `actor`, `run_id`; `1` and `node`, or `0` without one; `kind`;
/// - `details`, tagged: `n`, `t`, `f`, `#` and the number's JSON text, `s` and the string,
///   `[` and the count then each item, `{` and the count then each key and value in key
///   order.
///
/// Every length and count is an unsigned LEB128 varint before its bytes; strings are UTF-8.
pub const HASH_FORMAT_2: u8 = 2;
/// The format new entries are hashed in. Each entry is stored with its format and verified
/// in it: chains written before format 2 keep verifying, and a run resumed across the
/// upgrade has both in one chain.
pub const HASH_FORMAT: u8 = HASH_FORMAT_2;

fn format_1() -> u8 {
    HASH_FORMAT_1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: u64,
    #[serde(flatten)]
    pub draft: AuditDraft,
    /// Hash of the previous entry of the same run ("" for the first).
    pub prev: String,
    /// Sha-256 over `seq`, `draft` and `prev`, laid out as `format` says.
    pub hash: String,
    /// How `hash` was computed ([`HASH_FORMAT_1`] for entries stored without one).
    #[serde(default = "format_1")]
    pub format: u8,
}

impl AuditEntry {
    /// The entry at `seq` after the one whose hash is `prev`, hashed in the current format.
    pub fn chain(seq: u64, draft: AuditDraft, prev: String) -> Self {
        let raw = const_hex::decode(&prev).unwrap_or_default();
        let hash = const_hex::encode(Self::digest_v2(seq, &draft, &raw));
        AuditEntry {
            seq,
            draft,
            prev,
            hash,
            format: HASH_FORMAT,
        }
    }

    /// The entry hashed in format 1, as builds before format 2 wrote it (for tests of chains
    /// that span the upgrade).
    pub fn chain_v1(seq: u64, draft: AuditDraft, prev: String) -> Self {
        let hash = const_hex::encode(Self::digest_v1(seq, &draft, &prev));
        AuditEntry {
            seq,
            draft,
            prev,
            hash,
            format: HASH_FORMAT_1,
        }
    }

    /// The hash this entry should have, by its format; `None` for a format this build does
    /// not know (a newer build wrote it).
    pub fn expected_hash(&self) -> Option<String> {
        let raw = match self.format {
            HASH_FORMAT_1 => Self::digest_v1(self.seq, &self.draft, &self.prev),
            HASH_FORMAT_2 => {
                // A `prev` that is not hex cannot be any entry's hash: it fails as a link
                // before its content is looked at.
                let prev = const_hex::decode(&self.prev).unwrap_or_default();
                Self::digest_v2(self.seq, &self.draft, &prev)
            }
            _ => return None,
        };
        Some(const_hex::encode(raw))
    }

    /// Format 2: see [`HASH_FORMAT_2`]; `prev` is the previous entry's raw hash (empty for
    /// the first).
    pub fn digest_v2(seq: u64, draft: &AuditDraft, prev: &[u8]) -> [u8; 32] {
        HashStream::with(|s| {
            s.head_v2(
                prev,
                seq,
                draft.at,
                &draft.actor,
                &draft.run_id,
                draft.node.as_deref(),
                &draft.kind,
            );
            s.value(Lengths::Varint, &draft.details);
        })
    }

    /// Format 1: sha-256 over `prev`, `seq` and every field of the draft, each
    /// length-prefixed, with `details` walked in sorted key order. Independent of how JSON
    /// maps order their keys (a dependency may switch serde_json to insertion order). The
    /// stream is laid out in one buffer and hashed in one call: many small updates cost as
    /// much as the compression itself.
    pub fn digest_v1(seq: u64, draft: &AuditDraft, prev: &str) -> [u8; 32] {
        HashStream::with(|s| {
            s.head_v1(
                prev,
                seq,
                draft.at,
                &draft.actor,
                &draft.run_id,
                draft.node.as_deref(),
                &draft.kind,
            );
            s.value(Lengths::Fixed8, &draft.details);
        })
    }
}

/// The byte stream an audit entry's hash covers: length-prefixed strings, tagged JSON values.
/// Both formats write the same fields the same way but for lengths (see [`Lengths`]), `prev`
/// and the timestamp; golden tests pin each (`tests::the_hash_formats_are_stable`).
struct HashStream(Vec<u8>);

thread_local! {
    static HASH_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(512));
}

/// How a hash format writes a length or a count.
#[derive(Clone, Copy)]
enum Lengths {
    /// Format 1: 8 bytes, little-endian.
    Fixed8,
    /// Format 2: unsigned LEB128.
    Varint,
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

    fn len(&mut self, lengths: Lengths, mut n: u64) {
        match lengths {
            Lengths::Fixed8 => self.raw(&n.to_le_bytes()),
            Lengths::Varint => loop {
                let byte = (n & 0x7f) as u8;
                n >>= 7;
                if n == 0 {
                    self.0.push(byte);
                    return;
                }
                self.0.push(byte | 0x80);
            },
        }
    }

    fn field(&mut self, lengths: Lengths, s: &str) {
        self.len(lengths, s.len() as u64);
        self.raw(s.as_bytes());
    }

    /// Format 1's fields before `details`.
    #[allow(clippy::too_many_arguments)]
    fn head_v1(
        &mut self,
        prev: &str,
        seq: u64,
        at: DateTime<Utc>,
        actor: &str,
        run_id: &str,
        node: Option<&str>,
        kind: &str,
    ) {
        self.field(Lengths::Fixed8, prev);
        self.raw(&seq.to_le_bytes());
        // `at` as RFC 3339 with nanoseconds: 30 bytes for every year this tool will see.
        self.raw(&30u64.to_le_bytes());
        let start = self.0.len();
        if !rfc3339_nanos(at, &mut self.0) {
            self.0.truncate(start - 8);
            self.field(
                Lengths::Fixed8,
                &at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            );
        }
        self.names(Lengths::Fixed8, actor, run_id, node, kind);
    }

    /// Format 2's fields before `details` (see [`HASH_FORMAT_2`]).
    #[allow(clippy::too_many_arguments)]
    fn head_v2(
        &mut self,
        prev: &[u8],
        seq: u64,
        at: DateTime<Utc>,
        actor: &str,
        run_id: &str,
        node: Option<&str>,
        kind: &str,
    ) {
        self.raw(&[0xff; 8]);
        self.raw(&[HASH_FORMAT_2]);
        self.len(Lengths::Varint, prev.len() as u64);
        self.raw(prev);
        self.len(Lengths::Varint, seq);
        self.raw(&at.timestamp().to_le_bytes());
        self.raw(&at.timestamp_subsec_nanos().to_le_bytes());
        self.names(Lengths::Varint, actor, run_id, node, kind);
    }

    fn names(
        &mut self,
        lengths: Lengths,
        actor: &str,
        run_id: &str,
        node: Option<&str>,
        kind: &str,
    ) {
        self.field(lengths, actor);
        self.field(lengths, run_id);
        match node {
            Some(n) => {
                self.raw(b"1");
                self.field(lengths, n);
            }
            None => self.raw(b"0"),
        }
        self.field(lengths, kind);
    }

    fn value(&mut self, lengths: Lengths, v: &Value) {
        match v {
            Value::Null => self.raw(b"n"),
            Value::Bool(b) => self.raw(if *b { b"t" } else { b"f" }),
            Value::Number(n) => {
                self.raw(b"#");
                self.field(lengths, &n.to_string());
            }
            Value::String(s) => {
                self.raw(b"s");
                self.field(lengths, s);
            }
            Value::Array(items) => {
                self.raw(b"[");
                self.len(lengths, items.len() as u64);
                for i in items {
                    self.value(lengths, i);
                }
            }
            Value::Object(map) => {
                self.raw(b"{");
                self.len(lengths, map.len() as u64);
                // serde_json's map is sorted already unless a dependency turns on
                // `preserve_order`; only then is a sorted copy of the keys needed.
                if map.keys().is_sorted() {
                    for (k, v) in map {
                        self.field(lengths, k);
                        self.value(lengths, v);
                    }
                } else {
                    let mut keys: Vec<&String> = map.keys().collect();
                    keys.sort();
                    for k in keys {
                        self.field(lengths, k);
                        self.value(lengths, &map[k]);
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
/// Every signal recorded in a run's audit, oldest first, with the node it was sent to. The
/// store keeps a node's latest signal only; its audit keeps them all.
pub fn signals_in(entries: &[AuditEntry]) -> Vec<(String, Signal)> {
    entries
        .iter()
        .filter(|e| e.draft.kind == "signal_received")
        .filter_map(|e| {
            let node = e.draft.node.clone()?;
            let signal = Signal {
                actor: e.draft.actor.clone(),
                at: e.draft.at,
                value: e.draft.details.get("value").cloned().unwrap_or(Value::Null),
            };
            Some((node, signal))
        })
        .collect()
}

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
        match e.expected_hash() {
            None => {
                return Some(ChainBreak {
                    seq: e.seq,
                    reason: format!(
                        "its hash format {} is unknown to this build of Landfall (upgrade it to verify)",
                        e.format
                    ),
                })
            }
            Some(h) if h != e.hash => {
                return Some(ChainBreak {
                    seq: e.seq,
                    reason: "its content does not match its hash (it was changed)".into(),
                })
            }
            Some(_) => {}
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
    /// (run, node): node records removed with their signals (a redrive activates their steps
    /// anew). Applied before `nodes`.
    pub dropped_nodes: Vec<(String, String)>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
            && self.nodes.is_empty()
            && self.audit.is_empty()
            && self.signals.is_empty()
            && self.annotations.is_empty()
            && self.secrets.is_empty()
            && self.dropped_nodes.is_empty()
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
    /// Stores a plan (a plan is written once; its id is new).
    fn save_plan(&self, plan: &Plan) -> Result<(), StoreError>;
    fn plan(&self, plan_id: &str) -> Result<Option<Plan>, StoreError>;
    /// Every plan, oldest first.
    fn plans(&self) -> Result<Vec<Plan>, StoreError>;
    /// Whether a live process is executing the run.
    fn is_live(&self, run_id: &str) -> bool;
    /// Claims one of concurrency key `key`'s `limit` slots for `run`, or its place in line
    /// (`queue`), in one write transaction: runs that finished or are unknown are dropped from
    /// the key first (a process that died before it gave its slot back). See
    /// [`crate::concurrency`].
    fn claim_slot(
        &self,
        key: &str,
        limit: usize,
        run: &str,
        queue: bool,
    ) -> Result<crate::concurrency::Claim, StoreError>;
    /// `run` gives its slot or its place in line of `key` back.
    fn release_slot(&self, key: &str, run: &str) -> Result<(), StoreError>;
    /// Who holds and who waits for `key` (for `status`).
    fn slots(&self, key: &str) -> Result<crate::concurrency::Slots, StoreError>;

    /// Whether several processes share this store's work (`serve` workers on PostgreSQL):
    /// a new run is then left for [`Store::take_runs`] rather than executed where it was
    /// asked for.
    fn shares_work(&self) -> bool {
        false
    }

    /// Up to `limit` unfinished runs started from `source` (`slack`) that no live process
    /// executes (new, interrupted, or left by a worker that died), each now leased to this
    /// store: [`Store::lease`] of one of them returns that lease. Taken with `SKIP LOCKED`:
    /// workers polling at once take different runs. Stores of one process take none.
    fn take_runs(&self, _source: &str, _limit: usize) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    /// Whether delivery `key` (a Slack event or trigger id) is seen for the first time by any
    /// process sharing the store; `None` when the store does not keep deliveries (one process
    /// remembers its own).
    fn first_delivery(&self, _key: &str) -> Result<Option<bool>, StoreError> {
        Ok(None)
    }

    /// Keeps `value` under `key` for every process sharing the store (an OAuth install under
    /// way, whose callback may reach another worker); `false` when the store does not share
    /// work (one process keeps its own).
    fn put_shared(&self, _key: &str, _value: &Value) -> Result<bool, StoreError> {
        Ok(false)
    }

    /// Takes what [`Store::put_shared`] kept under `key`, once, if it is younger than
    /// `max_age`.
    fn take_shared(
        &self,
        _key: &str,
        _max_age: std::time::Duration,
    ) -> Result<Option<Value>, StoreError> {
        Ok(None)
    }
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
        let prev = [0xab; 32];
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
                for prev in [None, Some(&prev)] {
                    assert_eq!(
                        typed.digest_after(3, prev),
                        plain.digest_after(3, prev),
                        "{from:?} -> {to:?}"
                    );
                }
                assert_eq!(
                    AuditEntry::chain(3, t.to_draft(), const_hex::encode(prev)).hash,
                    const_hex::encode(typed.digest_after(3, Some(&prev)))
                );
            }
        }
    }

    /// Stored chains must keep verifying: the hash of a fixed entry never changes, however
    /// it is computed, in either format.
    #[test]
    fn the_hash_formats_are_stable() {
        let mut d = AuditDraft::new(
            "U1",
            "01JRUN",
            "node_transition",
            serde_json::json!({ "to": "running", "from": "pending", "attempt": 3, "x": [1.5, -2, null, true, "s"], "nested": { "b": 1, "a": 2 } }),
        );
        d.at = chrono::DateTime::from_timestamp(1_764_000_000, 123_456_789).unwrap();
        d.node = Some("deploy[2]".into());
        let v1 = AuditEntry::chain_v1(7, d.clone(), "ab".repeat(32));
        assert_eq!(
            v1.hash,
            "e9b92ad29b14aee8734547b0ed461891721951ea4397461c44d803ae07d280b9"
        );
        assert_eq!(v1.expected_hash(), Some(v1.hash.clone()));
        let v2 = AuditEntry::chain(7, d, "ab".repeat(32));
        assert_eq!(v2.format, HASH_FORMAT_2);
        // Also computed by a separate implementation of the layout documented at
        // `HASH_FORMAT_2` (a few lines of Python), not only by this code.
        assert_eq!(
            v2.hash,
            "c887a82fd84741a23bfcc60d2f0cc24dc9e6f2ee8cce80a4b87cacb6a3c346e7"
        );
        assert_ne!(v1.hash, v2.hash);
    }

    /// Lengths and counts of 128 and more take two varint bytes (the continuation bit set
    /// on the first); the expected hash comes from a separate implementation of the layout
    /// at `HASH_FORMAT_2` (a few lines of Python), not from this code.
    #[test]
    fn long_fields_hash_as_documented() {
        let mut d = AuditDraft::new(
            "U1",
            "01JRUN",
            "note",
            serde_json::json!({ "long": "x".repeat(200), "n": vec![1; 130] }),
        );
        d.at = chrono::DateTime::from_timestamp(1_764_000_000, 5).unwrap();
        let e = AuditEntry::chain(300, d, "ab".repeat(32));
        assert_eq!(
            e.hash,
            "19fd78af0fbb379f7d7e7fe093bb373c5a6277cad3bab98a3fa5b938d636bcf0"
        );
    }

    /// Format 1 writes a timestamp its fast path cannot (a year past 9999) as chrono's
    /// RFC 3339 text after its 8-byte length, like any other: the stream is built here by
    /// hand from the layout.
    #[test]
    fn format_1_hashes_timestamps_outside_the_fast_path_by_the_layout() {
        use sha2::{Digest, Sha256};
        let mut d = AuditDraft::new("U1", "r", "k", serde_json::Value::Null);
        d.at = chrono::NaiveDate::from_ymd_opt(10_000, 1, 2)
            .unwrap()
            .and_hms_nano_opt(3, 4, 5, 6)
            .unwrap()
            .and_utc();
        let field = |out: &mut Vec<u8>, s: &str| {
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        };
        let mut want = Vec::new();
        field(&mut want, "prev");
        want.extend_from_slice(&9u64.to_le_bytes());
        field(
            &mut want,
            &d.at.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        );
        field(&mut want, "U1");
        field(&mut want, "r");
        want.extend_from_slice(b"0");
        field(&mut want, "k");
        want.extend_from_slice(b"n");
        let want: [u8; 32] = Sha256::digest(&want).into();
        assert_eq!(AuditEntry::digest_v1(9, &d, "prev"), want);
    }

    /// Entries stored before formats existed read as format 1.
    #[test]
    fn an_entry_without_a_format_is_format_1() {
        let e = AuditEntry::chain_v1(
            0,
            AuditDraft::new("a", "r", "k", serde_json::Value::Null),
            String::new(),
        );
        let mut v = serde_json::to_value(&e).unwrap();
        v.as_object_mut().unwrap().remove("format");
        let back: AuditEntry = serde_json::from_value(v).unwrap();
        assert_eq!(back.format, HASH_FORMAT_1);
        assert_eq!(back.expected_hash(), Some(e.hash));
    }

    #[test]
    fn a_commits_drafts_split_into_stretches_of_one_run() {
        let d = |run: &str| Draft::from(AuditDraft::new("a", run, "k", serde_json::Value::Null));
        let drafts = [d("r1"), d("r1"), d("r2"), d("r1")];
        assert_eq!(stretches(&drafts), vec![0..2, 2..3, 3..4]);
        assert!(stretches(&[]).is_empty());
    }

    #[test]
    fn signals_are_read_from_the_audit_in_order_with_their_node() {
        let sig = |actor: &str, v: i64| {
            let mut d = AuditDraft::new(
                actor,
                "r",
                "signal_received",
                serde_json::json!({ "value": v }),
            );
            d.node = Some("approve".into());
            d
        };
        let entries = vec![
            AuditEntry::chain(0, sig("U1", 1), String::new()),
            AuditEntry::chain(
                1,
                AuditDraft::new("x", "r", "milestone", serde_json::Value::Null),
                String::new(),
            ),
            AuditEntry::chain(2, sig("U2", 2), String::new()),
        ];
        let got = signals_in(&entries);
        let seen: Vec<(&str, &str, &serde_json::Value)> = got
            .iter()
            .map(|(n, s)| (n.as_str(), s.actor.as_str(), &s.value))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("approve", "U1", &serde_json::json!(1)),
                ("approve", "U2", &serde_json::json!(2))
            ]
        );
    }

    /// A node transition's format 2 stream fits in three SHA-256 blocks (55 bytes of 64 in
    /// the last, for padding) with ids of ordinary length; format 1 took five.
    #[test]
    fn a_transition_hashes_in_three_blocks() {
        let t = TransitionDraft {
            at: chrono::Utc::now(),
            actor: "slack:U0123ABCDEF".into(),
            run_id: "r-01jrun0000000000000000000000".into(),
            node: "per_region[12]".into(),
            from: Some(NodeStatus::Waiting),
            to: NodeStatus::Cancelled,
            attempt: 12,
        };
        let mut len = 0;
        HashStream::with(|s| {
            s.head_v2(
                &[1; 32],
                1_000,
                t.at,
                &t.actor,
                &t.run_id,
                Some(&t.node),
                TransitionDraft::KIND,
            );
            s.value(Lengths::Varint, &t.to_draft().details);
            len = s.0.len();
        });
        assert!(len <= 3 * 64 - 9, "{len} bytes");
    }

    /// A run resumed across the upgrade has format 1 entries, then format 2 ones: the chain
    /// verifies, and an entry claiming the other format does not.
    #[test]
    fn a_chain_spanning_both_formats_verifies_and_formats_are_not_interchangeable() {
        let mut entries = Vec::new();
        let mut prev = String::new();
        for i in 0..6 {
            let d = AuditDraft::new("me", "r", "k", Value::from(i));
            let e = if i < 3 {
                AuditEntry::chain_v1(i, d, prev)
            } else {
                AuditEntry::chain(i, d, prev)
            };
            prev = e.hash.clone();
            entries.push(e);
        }
        assert_eq!(verify_chain(&entries), None);
        for (i, other) in [(1, HASH_FORMAT_2), (4, HASH_FORMAT_1)] {
            let mut flipped = entries.clone();
            flipped[i].format = other;
            assert_eq!(verify_chain(&flipped).unwrap().seq, i as u64);
        }
        let mut future = entries.clone();
        future[5].format = 3;
        let broken = verify_chain(&future).unwrap();
        assert_eq!(broken.seq, 5);
        assert!(broken.reason.contains("format 3"), "{}", broken.reason);
    }
}
