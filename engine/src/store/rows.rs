//! How node records and audit entries are laid out in the state file.
//!
//! Version 1 rows (schema 1) are JSON. Version 2 rows (written since schema 2) are MessagePack
//! maps with named fields, so adding a field with a default is still not a migration, with
//! timestamps as (seconds, nanoseconds) and hashes as raw bytes: JSON's text timestamps, hex
//! hashes and string escaping were most of a durable commit's CPU time. A JSON row starts with
//! `{`, a MessagePack map never does, so both are read without a migration of old rows.
//!
//! The encoders destructure the public structs and the decoders build them with struct
//! literals, so a field added to [`NodeRecord`] or [`AuditDraft`] fails to compile here until
//! it is stored too.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::{AuditDraft, AuditEntry, Draft, StoreError, TransitionDraft};
use crate::error::StepError;
use crate::state::{NodeRecord, NodeStatus, RunRecord, SkipReason};

/// Seconds and nanoseconds since the epoch: exact, and cheap to write.
type Stamp = (i64, u32);

fn stamp(t: &DateTime<Utc>) -> Stamp {
    (t.timestamp(), t.timestamp_subsec_nanos())
}

fn unstamp(what: &dyn Fn() -> String, (secs, nanos): Stamp) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp(secs, nanos).ok_or_else(|| StoreError::Corrupt {
        what: what(),
        message: format!("timestamp {secs}.{nanos:09} is out of range"),
    })
}

fn is_json(bytes: &[u8]) -> bool {
    bytes.first() == Some(&b'{')
}

/// Appends `v` to `buf`.
fn encode_into<T: Serialize>(buf: &mut Vec<u8>, v: &T) -> Result<(), StoreError> {
    rmp_serde::encode::write_named(buf, v).map_err(|e| StoreError::Backend(e.to_string()))
}

fn corrupt(what: &dyn Fn() -> String, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what: what(),
        message: e.to_string(),
    }
}

/// 32 raw bytes (a hash), or none (the link of a chain's first entry).
struct Raw<'a>(&'a [u8]);

impl Serialize for Raw<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

struct RawOwned(Vec<u8>);

impl<'de> Deserialize<'de> for RawOwned {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RawOwned;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<RawOwned, E> {
                Ok(RawOwned(v.to_vec()))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// A key that is present is `Some`, even when its value is nil (a step may output null).
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

#[derive(Serialize)]
struct NodeOut<'a> {
    node_id: &'a str,
    step_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    item: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fan_out: Option<usize>,
    status: NodeStatus,
    attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    started_at: Option<Stamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_at: Option<Stamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outputs: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a StepError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    skip_reason: Option<SkipReason>,
}

#[derive(Deserialize)]
struct NodeIn {
    node_id: String,
    step_id: String,
    #[serde(default)]
    index: Option<usize>,
    #[serde(default, deserialize_with = "present")]
    item: Option<Value>,
    #[serde(default)]
    fan_out: Option<usize>,
    status: NodeStatus,
    attempts: u32,
    #[serde(default)]
    started_at: Option<Stamp>,
    #[serde(default)]
    finished_at: Option<Stamp>,
    #[serde(default, deserialize_with = "present")]
    outputs: Option<Value>,
    #[serde(default)]
    error: Option<StepError>,
    #[serde(default)]
    skip_reason: Option<SkipReason>,
}

/// A run record as a version 2 row, in `buf` (cleared first). It keeps its own field types
/// (timestamps as text: two per run); what it gains is its workflow text stored without JSON
/// escaping, twice per run.
pub(super) fn encode_run(buf: &mut Vec<u8>, r: &RunRecord) -> Result<(), StoreError> {
    buf.clear();
    encode_into(buf, r)
}

/// A run record from a row of either version.
pub(super) fn decode_run(what: &dyn Fn() -> String, bytes: &[u8]) -> Result<RunRecord, StoreError> {
    Ok(decode_row::<RunRecord, RunRecord>(what, bytes)?.unwrap_or_else(|r| r))
}

/// A row of either version: version 1 (JSON) as the public type `T`, version 2 (MessagePack)
/// as its row type `V2`.
fn decode_row<T: serde::de::DeserializeOwned, V2: serde::de::DeserializeOwned>(
    what: &dyn Fn() -> String,
    bytes: &[u8],
) -> Result<Result<T, V2>, StoreError> {
    if is_json(bytes) {
        serde_json::from_slice(bytes)
            .map(Ok)
            .map_err(|e| corrupt(what, e))
    } else {
        rmp_serde::from_slice(bytes)
            .map(Err)
            .map_err(|e| corrupt(what, e))
    }
}

/// A node record as a version 2 row, in `buf` (cleared first).
pub(super) fn encode_node(buf: &mut Vec<u8>, n: &NodeRecord) -> Result<(), StoreError> {
    buf.clear();
    let NodeRecord {
        node_id,
        step_id,
        index,
        item,
        fan_out,
        status,
        attempts,
        started_at,
        finished_at,
        outputs,
        error,
        skip_reason,
    } = n;
    encode_into(
        buf,
        &NodeOut {
            node_id,
            step_id,
            index: *index,
            item: item.as_ref(),
            fan_out: *fan_out,
            status: *status,
            attempts: *attempts,
            started_at: started_at.as_ref().map(stamp),
            finished_at: finished_at.as_ref().map(stamp),
            outputs: outputs.as_ref(),
            error: error.as_ref(),
            skip_reason: *skip_reason,
        },
    )
}

/// A node record from a row of either version.
pub(super) fn decode_node(
    what: &dyn Fn() -> String,
    bytes: &[u8],
) -> Result<NodeRecord, StoreError> {
    let n: NodeIn = match decode_row(what, bytes)? {
        Ok(v1) => return Ok(v1),
        Err(v2) => v2,
    };
    Ok(NodeRecord {
        node_id: n.node_id.into(),
        step_id: n.step_id.into(),
        index: n.index,
        item: n.item,
        fan_out: n.fan_out,
        status: n.status,
        attempts: n.attempts,
        started_at: n.started_at.map(|s| unstamp(what, s)).transpose()?,
        finished_at: n.finished_at.map(|s| unstamp(what, s)).transpose()?,
        outputs: n.outputs,
        error: n.error,
        skip_reason: n.skip_reason,
    })
}

/// A transition's details, written without building a JSON map.
#[derive(Serialize)]
struct TransitionDetails<'a> {
    attempt: u32,
    from: &'a str,
    to: NodeStatus,
}

#[derive(Serialize)]
#[serde(untagged)]
enum DetailsOut<'a> {
    Value(&'a Value),
    Transition(TransitionDetails<'a>),
}

#[derive(Serialize)]
struct EntryOut<'a> {
    seq: u64,
    at: Stamp,
    actor: &'a str,
    run_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<&'a str>,
    kind: &'a str,
    details: DetailsOut<'a>,
    prev: Raw<'a>,
    hash: Raw<'a>,
    format: u8,
}

#[derive(Deserialize)]
struct EntryIn {
    seq: u64,
    at: Stamp,
    actor: String,
    run_id: String,
    #[serde(default)]
    node: Option<String>,
    kind: String,
    #[serde(default)]
    details: Value,
    prev: RawOwned,
    hash: RawOwned,
    /// Absent in rows written before hash format 2.
    #[serde(default = "super::format_1")]
    format: u8,
}

/// An audit entry (drafted, placed at `seq` after `prev`, hashed to `hash` in the current
/// [`super::HASH_FORMAT`]) as a version 2 row, appended to `buf`. `prev` is empty for a
/// chain's first entry.
pub(super) fn encode_entry(
    buf: &mut Vec<u8>,
    seq: u64,
    draft: &Draft,
    prev: &[u8],
    hash: &[u8; 32],
) -> Result<(), StoreError> {
    let row = match draft {
        Draft::Entry(d) => {
            let AuditDraft {
                at,
                actor,
                run_id,
                node,
                kind,
                details,
            } = d;
            EntryOut {
                seq,
                at: stamp(at),
                actor,
                run_id,
                node: node.as_deref(),
                kind,
                details: DetailsOut::Value(details),
                prev: Raw(prev),
                hash: Raw(hash),
                format: super::HASH_FORMAT,
            }
        }
        Draft::Transition(t) => {
            let TransitionDraft {
                at,
                actor,
                run_id,
                node,
                from,
                to,
                attempt,
            } = t;
            EntryOut {
                seq,
                at: stamp(at),
                actor,
                run_id,
                node: Some(node),
                kind: TransitionDraft::KIND,
                details: DetailsOut::Transition(TransitionDetails {
                    attempt: *attempt,
                    from: from.map_or("new", NodeStatus::as_str),
                    to: *to,
                }),
                prev: Raw(prev),
                hash: Raw(hash),
                format: super::HASH_FORMAT,
            }
        }
    };
    encode_into(buf, &row)
}

/// Appends one row to a chunk: its length (u32, little-endian), then its bytes, written by
/// `row` at the end of `chunk`.
pub(super) fn push_row(
    chunk: &mut Vec<u8>,
    row: impl FnOnce(&mut Vec<u8>) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let at = chunk.len();
    chunk.extend_from_slice(&[0; 4]);
    row(chunk)?;
    let len = u32::try_from(chunk.len() - at - 4)
        .map_err(|_| StoreError::Backend("an audit entry is over 4 GiB".into()))?;
    chunk[at..at + 4].copy_from_slice(&len.to_le_bytes());
    Ok(())
}

/// The rows of a chunk, in order.
pub(super) fn chunk_rows<'a>(
    what: &'a dyn Fn() -> String,
    mut chunk: &'a [u8],
) -> impl Iterator<Item = Result<&'a [u8], StoreError>> + 'a {
    std::iter::from_fn(move || {
        if chunk.is_empty() {
            return None;
        }
        let Some((len, rest)) = chunk.split_first_chunk::<4>() else {
            chunk = &[];
            return Some(Err(corrupt(what, "a chunk ends inside a row's length")));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            chunk = &[];
            return Some(Err(corrupt(what, "a chunk ends inside a row")));
        }
        let (row, rest) = rest.split_at(len);
        chunk = rest;
        Some(Ok(row))
    })
}

/// An audit entry from a row of either version.
pub(super) fn decode_entry(
    what: &dyn Fn() -> String,
    bytes: &[u8],
) -> Result<AuditEntry, StoreError> {
    let e: EntryIn = match decode_row(what, bytes)? {
        Ok(v1) => return Ok(v1),
        Err(v2) => v2,
    };
    Ok(AuditEntry {
        seq: e.seq,
        draft: AuditDraft {
            at: unstamp(what, e.at)?,
            actor: e.actor,
            run_id: e.run_id,
            node: e.node,
            kind: e.kind,
            details: e.details,
        },
        prev: const_hex::encode(e.prev.0),
        hash: const_hex::encode(e.hash.0),
        format: e.format,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (-1e9f64..1e9).prop_map(Value::from),
            "[a-z\"\\\\{ é]{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn stamp_strategy() -> impl Strategy<Value = DateTime<Utc>> {
        (0i64..4_000_000_000, 0u32..1_000_000_000)
            .prop_map(|(s, n)| DateTime::from_timestamp(s, n).unwrap_or_default())
    }

    fn node_record() -> impl Strategy<Value = NodeRecord> {
        (
            ("[a-z_]{1,8}(\\[[0-9]\\])?", "[a-z_]{1,8}"),
            (
                proptest::option::of(0usize..50),
                proptest::option::of(json_value()),
            ),
            (
                0u32..9,
                proptest::option::of(stamp_strategy()),
                proptest::option::of(stamp_strategy()),
            ),
            proptest::option::of(json_value()),
            proptest::option::of(("[ -~]{0,20}", json_value())),
            prop::sample::select(vec![
                NodeStatus::Pending,
                NodeStatus::Running,
                NodeStatus::Failed,
                NodeStatus::Skipped,
            ]),
            proptest::option::of(prop::sample::select(vec![
                SkipReason::Condition,
                SkipReason::UpstreamFailed,
            ])),
        )
            .prop_map(
                |(
                    (node_id, step_id),
                    (index, item),
                    (attempts, started_at, finished_at),
                    outputs,
                    error,
                    status,
                    skip_reason,
                )| NodeRecord {
                    node_id: node_id.into(),
                    step_id: step_id.into(),
                    index,
                    item,
                    fan_out: index.map(|i| i + 1),
                    status,
                    attempts,
                    started_at,
                    finished_at,
                    outputs,
                    error: error.map(|(m, context)| StepError {
                        class: ErrorClass::Transient,
                        message: m,
                        causes: vec!["because".into()],
                        context,
                    }),
                    skip_reason,
                },
            )
    }

    proptest! {
        /// Every node record reads back as it was written, `null` outputs and items included
        /// (present-but-null is not absent).
        #[test]
        fn node_rows_round_trip(n in node_record()) {
            let mut buf = Vec::new();
            encode_node(&mut buf, &n).unwrap();
            prop_assert!(!is_json(&buf));
            prop_assert_eq!(decode_node(&|| "n".into(), &buf).unwrap(), n);
        }

        /// Every audit entry reads back as the entry the store chained, typed transitions
        /// included, and its hash still verifies.
        #[test]
        fn entry_rows_round_trip(
            details in json_value(),
            at in stamp_strategy(),
            seq in 0u64..1000,
            first in any::<bool>(),
            typed in any::<bool>(),
        ) {
            let draft = if typed {
                Draft::Transition(TransitionDraft {
                    at,
                    actor: "U1".into(),
                    run_id: "01JRUN".into(),
                    node: "deploy[2]".into(),
                    from: Some(NodeStatus::Running),
                    to: NodeStatus::Succeeded,
                    attempt: seq as u32,
                })
            } else {
                let mut d = AuditDraft::new("U1", "01JRUN", "milestone", details);
                d.at = at;
                d.node = first.then(|| "x".to_string());
                Draft::Entry(d)
            };
            let prev_raw = if first { Vec::new() } else { vec![7u8; 32] };
            let prev = const_hex::encode(&prev_raw);
            let hash = draft.digest_after(seq, (!first).then_some(&[7u8; 32]));
            let mut buf = Vec::new();
            encode_entry(&mut buf, seq, &draft, &prev_raw, &hash).unwrap();
            let back = decode_entry(&|| "e".into(), &buf).unwrap();
            let expected = AuditEntry::chain(seq, draft.into_draft(), prev);
            prop_assert_eq!(&back.hash, &expected.hash);
            prop_assert_eq!(back.draft.details.clone(), expected.draft.details.clone());
            prop_assert_eq!(back, expected);
        }
    }

    #[test]
    fn chunks_split_into_their_rows_and_truncation_is_corruption() {
        let mut chunk = Vec::new();
        for row in [&b"{}"[..], b"", b"\x81\xa1a\x01"] {
            push_row(&mut chunk, |b| {
                b.extend_from_slice(row);
                Ok(())
            })
            .unwrap();
        }
        let rows: Vec<&[u8]> = chunk_rows(&|| "c".into(), &chunk)
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows, [&b"{}"[..], b"", b"\x81\xa1a\x01"]);
        for cut in 1..chunk.len() {
            let ok: Result<Vec<&[u8]>, _> = chunk_rows(&|| "c".into(), &chunk[..cut]).collect();
            if ok.is_ok() {
                // Only a cut between rows still splits cleanly.
                assert!([6, 10].contains(&cut), "cut at {cut}");
            }
        }
    }

    #[test]
    fn run_rows_round_trip() {
        let r = RunRecord {
            run_id: "01JRUN".into(),
            workflow: "w".into(),
            workflow_file: "w.yaml".into(),
            workflow_text: "name: w\nsteps: [] # \"quoted\" é\n".into(),
            workflow_digest: "ab".into(),
            inputs: serde_json::json!({ "customer": "acme", "n": [1, 2.5, null] }),
            inputs_digest: "cd".into(),
            trigger: crate::state::Trigger {
                source: "slack".into(),
                actor: "U1".into(),
                details: serde_json::json!({ "channel": "C1" }),
            },
            status: crate::state::RunStatus::Interrupted,
            max_parallel: 8,
            started_at: DateTime::from_timestamp(1_764_000_000, 5).unwrap(),
            finished_at: None,
            plan_id: None,
        };
        let mut buf = Vec::new();
        encode_run(&mut buf, &r).unwrap();
        assert!(!is_json(&buf));
        assert_eq!(decode_run(&|| "r".into(), &buf).unwrap(), r);
        let json = serde_json::to_vec(&r).unwrap();
        assert_eq!(decode_run(&|| "r".into(), &json).unwrap(), r);
    }

    #[test]
    fn version_1_rows_still_read() {
        let node = br#"{"node_id":"a","step_id":"a","status":"succeeded","attempts":1,"started_at":"2026-11-25T04:57:57.123Z","finished_at":null,"outputs":null}"#;
        let n = decode_node(&|| "n".into(), node).unwrap();
        assert_eq!(n.outputs, Some(Value::Null));
        assert_eq!(n.started_at.unwrap().timestamp_subsec_millis(), 123);
        let entry = br#"{"seq":0,"at":"2026-11-25T04:57:57Z","actor":"me","run_id":"r","kind":"run_started","prev":"","hash":"ab"}"#;
        let e = decode_entry(&|| "e".into(), entry).unwrap();
        assert_eq!(
            (e.seq, e.draft.kind.as_str(), e.hash.as_str()),
            (0, "run_started", "ab")
        );
    }
}
