//! An in-memory store with the same semantics as the redb one, minus durability. For
//! benchmarks of the scheduler alone and for tests of pure logic.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use std::sync::{Arc, Mutex};

use super::{AuditEntry, Batch, Draft, Store, StoreError};
use crate::lock::RunLease;
use crate::package::{Package, PackageContent, Published};
use crate::plan::Plan;
use crate::state::{NodeRecord, RunRecord, Signal};
use serde_json::Value;

#[derive(Default)]
struct Inner {
    runs: BTreeMap<String, RunRecord>,
    // Per run, so that a commit of a big run neither compares run ids nor moves big entries
    // around a tree (this store is what the scheduler benchmark measures).
    // Records are shared with the scheduler, which copies one only when it changes again.
    nodes: FxHashMap<String, FxHashMap<Arc<str>, Arc<NodeRecord>>>,
    /// Each run's chain, as drafts and raw hashes (an entry's `seq` is its index, its `prev`
    /// the hash before it): entries are built when read, not at every commit.
    audit: FxHashMap<String, Chain>,
    signals: BTreeMap<(String, String), Signal>,
    annotations: BTreeMap<(String, String), Value>,
    secrets: BTreeMap<String, Vec<u8>>,
    packages: BTreeMap<(String, u64), Package>,
    /// Plans in the order they were made.
    plans: Vec<Plan>,
    slots: BTreeMap<String, crate::concurrency::Slots>,
}

/// A run's chain: each commit's drafts stay in the vector the batch brought (appending never
/// moves earlier entries), with their hashes.
#[derive(Default)]
struct Chain {
    segments: Vec<(Vec<Draft>, Vec<[u8; 32]>)>,
    len: u64,
}

impl Chain {
    fn last_hash(&self) -> Option<&[u8; 32]> {
        self.segments.last().and_then(|(_, h)| h.last())
    }
}

#[derive(Default)]
pub struct MemStore {
    inner: Mutex<Inner>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemStore {
    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        let mut g = self.lock();
        for r in batch.runs {
            g.runs.insert(r.run_id.clone(), r);
        }
        fn put(map: &mut FxHashMap<Arc<str>, Arc<NodeRecord>>, n: Arc<NodeRecord>) {
            match map.get_mut(&n.node_id) {
                Some(slot) => *slot = n,
                None => {
                    map.insert(n.node_id.clone(), n);
                }
            }
        }
        for (run, node) in batch.dropped_nodes {
            if let Some(map) = g.nodes.get_mut(run.as_str()) {
                map.remove(node.as_str());
            }
            g.signals.remove(&(run, node));
        }
        for (run, recs) in batch.nodes {
            let map = match g.nodes.get_mut(&*run) {
                Some(m) => m,
                None => g.nodes.entry(run.to_string()).or_default(),
            };
            for n in recs {
                put(map, n);
            }
        }
        for (run, node, sig) in batch.signals {
            g.signals.insert((run, node), sig);
        }
        for (run, key, value) in batch.annotations {
            g.annotations.insert((run, key), value);
        }
        for (name, sealed) in batch.secrets {
            g.secrets.insert(name, sealed);
        }
        // Each stretch of one run's drafts becomes a segment of its chain, moved, not copied.
        let mut rest = batch.audit;
        let mut pieces: Vec<Vec<Draft>> = super::stretches(&rest)
            .into_iter()
            .rev()
            .map(|r| rest.split_off(r.start))
            .collect();
        pieces.reverse();
        for drafts in pieces {
            let Some(run) = drafts.first().map(|d| d.run_id().to_string()) else {
                continue;
            };
            let chain = g.audit.entry(run).or_default();
            let mut last = chain.last_hash().copied();
            let mut hashes = Vec::with_capacity(drafts.len());
            for d in &drafts {
                let hash = d.digest_after(chain.len, last.as_ref());
                chain.len += 1;
                last = Some(hash);
                hashes.push(hash);
            }
            chain.segments.push((drafts, hashes));
        }
        Ok(())
    }

    fn run(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        Ok(self.lock().runs.get(run_id).cloned())
    }

    fn runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        let mut v: Vec<_> = self.lock().runs.values().cloned().collect();
        v.sort_by(|a, b| {
            b.started_at
                .cmp(&a.started_at)
                .then(b.run_id.cmp(&a.run_id))
        });
        Ok(v)
    }

    fn nodes(&self, run_id: &str) -> Result<Vec<NodeRecord>, StoreError> {
        let mut v: Vec<NodeRecord> = self
            .lock()
            .nodes
            .get(run_id)
            .map(|m| m.values().map(|r| NodeRecord::clone(r)).collect())
            .unwrap_or_default();
        v.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(v)
    }

    fn signal(&self, run_id: &str, node_id: &str) -> Result<Option<Signal>, StoreError> {
        Ok(self
            .lock()
            .signals
            .get(&(run_id.to_string(), node_id.to_string()))
            .cloned())
    }

    fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.lock().secrets.get(name).cloned())
    }

    fn secrets(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self
            .lock()
            .secrets
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn annotations(&self, run_id: &str) -> Result<BTreeMap<String, Value>, StoreError> {
        Ok(self
            .lock()
            .annotations
            .range((run_id.to_string(), String::new())..)
            .take_while(|((r, _), _)| r == run_id)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn publish_package(
        &self,
        id: &str,
        content: &PackageContent,
        run_id: Option<&str>,
    ) -> Result<Published, StoreError> {
        let mut g = self.lock();
        let digest = content.digest();
        let mut last = 0;
        for ((pid, v), p) in g
            .packages
            .range((id.to_string(), 0)..=(id.to_string(), u64::MAX))
        {
            debug_assert_eq!(pid, id);
            if p.digest == digest {
                return Ok(Published {
                    id: id.into(),
                    version: *v,
                    digest,
                    new: false,
                });
            }
            last = *v;
        }
        let version = last + 1;
        g.packages.insert(
            (id.to_string(), version),
            Package {
                id: id.into(),
                version,
                digest: digest.clone(),
                created_at: chrono::Utc::now(),
                run_id: run_id.map(str::to_string),
                content: content.clone(),
            },
        );
        Ok(Published {
            id: id.into(),
            version,
            digest,
            new: true,
        })
    }

    fn package(&self, id: &str, version: Option<u64>) -> Result<Option<Package>, StoreError> {
        let g = self.lock();
        let mut range = g
            .packages
            .range((id.to_string(), 0)..=(id.to_string(), u64::MAX));
        let found = match version {
            Some(v) => range.find(|((_, x), _)| *x == v).map(|(_, p)| p.clone()),
            None => range.next_back().map(|(_, p)| p.clone()),
        };
        found.map(super::verify_package).transpose()
    }

    fn packages(&self) -> Result<Vec<Package>, StoreError> {
        Ok(self.lock().packages.values().cloned().collect())
    }

    fn lease(&self, _run_id: &str) -> Result<Option<RunLease>, StoreError> {
        Ok(Some(RunLease::none()))
    }

    fn is_live(&self, _run_id: &str) -> bool {
        false
    }

    fn save_plan(&self, plan: &Plan) -> Result<(), StoreError> {
        // As the redb store: one plan per id, a second save replaces the first.
        let mut inner = self.lock();
        inner.plans.retain(|p| p.plan_id != plan.plan_id);
        inner.plans.push(plan.clone());
        Ok(())
    }

    fn plan(&self, plan_id: &str) -> Result<Option<Plan>, StoreError> {
        Ok(self
            .lock()
            .plans
            .iter()
            .find(|p| p.plan_id == plan_id)
            .cloned())
    }

    fn plans(&self) -> Result<Vec<Plan>, StoreError> {
        Ok(self.lock().plans.clone())
    }

    fn audit(&self, run_id: &str) -> Result<Vec<AuditEntry>, StoreError> {
        let g = self.lock();
        let Some(chain) = g.audit.get(run_id) else {
            return Ok(Vec::new());
        };
        let mut prev = String::new();
        Ok(chain
            .segments
            .iter()
            .flat_map(|(drafts, hashes)| drafts.iter().zip(hashes))
            .enumerate()
            .map(|(seq, (draft, hash))| {
                let hash = const_hex::encode(hash);
                AuditEntry {
                    seq: seq as u64,
                    draft: draft.to_draft(),
                    prev: std::mem::replace(&mut prev, hash.clone()),
                    hash,
                    format: super::HASH_FORMAT,
                }
            })
            .collect())
    }

    fn claim_slot(
        &self,
        key: &str,
        limit: usize,
        run: &str,
        queue: bool,
    ) -> Result<crate::concurrency::Claim, StoreError> {
        let mut g = self.lock();
        let inner = &mut *g;
        let runs = &inner.runs;
        let nodes = &inner.nodes;
        // One process: a waiting run is always waited for.
        let gone = |holder: &str, _waiting: bool| {
            let (r, node) = crate::concurrency::holder_parts(holder);
            runs.get(r).is_none_or(|r| r.status.is_terminal())
                || node.is_some_and(|n| {
                    nodes
                        .get(r)
                        .and_then(|ns| ns.get(n))
                        .is_none_or(|n| n.status.is_terminal())
                })
        };
        let slots = inner.slots.entry(key.to_string()).or_default();
        Ok(slots.claim(run, limit, queue, gone))
    }

    fn release_slot(&self, key: &str, run: &str) -> Result<(), StoreError> {
        let mut g = self.lock();
        if let Some(s) = g.slots.get_mut(key) {
            s.release(run);
            if s.is_empty() {
                g.slots.remove(key);
            }
        }
        Ok(())
    }

    fn slots(&self, key: &str) -> Result<crate::concurrency::Slots, StoreError> {
        Ok(self.lock().slots.get(key).cloned().unwrap_or_default())
    }
}
