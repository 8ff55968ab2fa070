//! The redb-backed store: one file, shared by every `landfall` process on the machine.
//!
//! Opened in redb's `MultiWriter` mode so that two runs in two processes can write, and
//! `status`/`audit` can read while a run is going. Runs, node records and audit entries are
//! written as version 2 rows (MessagePack, see [`super::rows`]), the rest as JSON; both are
//! self-describing, so adding a field is not a migration. The schema version covers changes of
//! keys, tables and row formats.

use std::path::{Path, PathBuf};

use redb::{
    ConcurrencyMode, Database, ReadOnlyDatabase, ReadableDatabase, ReadableTable, TableDefinition,
    TableHandle,
};

use super::{rows, AuditEntry, Batch, Store, StoreError, SCHEMA_VERSION};
use crate::lock::{RunLease, RunLocks};
use crate::package::{Package, PackageContent, Published};
use crate::plan::Plan;
use crate::state::{NodeRecord, RunRecord, Signal};
use serde_json::Value;
use std::collections::BTreeMap;

const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const RUNS: TableDefinition<&str, &[u8]> = TableDefinition::new("runs");
const NODES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("nodes");
/// Audit entries one per row: schema 1's layout, still read.
const AUDIT: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("audit");
/// Audit entries since schema 2: one chunk per run and commit, keyed by its first entry's
/// `seq` (see [`rows::push_row`]). A commit of a hundred transitions is one insert, not two
/// hundred.
const AUDIT_CHUNKS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("audit_chunks");
/// Each run's chain head: its last `seq` (u64, little-endian) and that entry's hash (32 bytes).
const AUDIT_HEADS: TableDefinition<&str, &[u8]> = TableDefinition::new("audit_heads");
const SIGNALS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("signals");
const ANNOTATIONS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("annotations");
const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets");
const PACKAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("packages");
/// (package id, digest) → version: publishing identical content finds its version at once.
const PACKAGE_DIGESTS: TableDefinition<(&str, &str), u64> = TableDefinition::new("package_digests");
/// Plan id → the plan (JSON).
const PLANS: TableDefinition<&str, &[u8]> = TableDefinition::new("plans");
/// Concurrency keys → who holds and who waits for their slots (JSON `Slots`). Made by the
/// first claim; a file without it has no slots.
const SLOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("slots");

/// One migration: from `version - 1` to `version`.
type Migration = fn(&redb::WriteTransaction) -> Result<(), StoreError>;

/// Migrations by the version they produce. Version 1 is the first layout.
const MIGRATIONS: &[(u64, Migration)] = &[(2, rows_v2), (3, hash_format_2), (4, plans)];

/// Schema 4 keeps plans (`landfall plan`), one row per plan id. The table is created with the
/// others; the version keeps older builds, which know no plans, from a file that has them.
fn plans(_tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    Ok(())
}

/// Schema 2 writes node records and audit entries as version 2 rows (see [`rows`]), audit
/// entries in chunks with a chain head per run. Schema 1's rows stay readable where they are
/// (a run's head is found in them until it has one of its own), so nothing is rewritten: the
/// version only keeps older builds, which cannot read the new layout, away from the file.
fn rows_v2(_tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    Ok(())
}

/// Schema 3 hashes new audit entries in format 2 and stores each entry's format (see
/// [`super::HASH_FORMAT_2`]); entries without one are format 1, so nothing is rewritten. A
/// schema 2 build would check format 2 entries as format 1 and report every one as changed:
/// the version keeps it away from the file instead.
fn hash_format_2(_tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    Ok(())
}

pub struct RedbStore {
    db: Db,
    path: PathBuf,
    locks: RunLocks,
}

/// The database, opened for writing, or only for reading (`status`, `audit`: they never
/// change the file, so they work on a read-only copy and cannot make a damaged one worse).
enum Db {
    Write(Database),
    Read(ReadOnlyDatabase),
}

impl Db {
    fn begin_read(&self) -> Result<redb::ReadTransaction, redb::TransactionError> {
        match self {
            Db::Write(d) => d.begin_read(),
            Db::Read(d) => d.begin_read(),
        }
    }

    fn begin_write(&self) -> Result<redb::WriteTransaction, StoreError> {
        match self {
            Db::Write(d) => Ok(d.begin_write()?),
            Db::Read(_) => Err(StoreError::ReadOnly),
        }
    }
}

/// A path beside `path`, its name followed by `suffix` (`state.redb` → `state.redb.new-42`).
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Makes a new state file at `path`: built and migrated under another name, then renamed into
/// place, so the state file is either absent or whole. Two processes starting on a machine
/// without one (two runs at once) take turns through a lock file; the second finds the first's
/// file and uses it. A creation cut off by a crash leaves only a `.new-*` file, removed by the
/// next creation.
fn create(path: &Path) -> Result<(), StoreError> {
    let failed = |e: std::io::Error| StoreError::Open {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(beside(path, ".create-lock"))
        .map_err(failed)?;
    lock.lock().map_err(failed)?;
    if existing(path)? {
        return Ok(());
    }
    let prefix = beside(path, ".new-")
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    if let Some(dir) = path.parent().map(|d| {
        if d.as_os_str().is_empty() {
            Path::new(".")
        } else {
            d
        }
    }) {
        for e in std::fs::read_dir(dir).map_err(failed)?.flatten() {
            if e.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let fresh = beside(path, &format!(".new-{}", std::process::id()));
    {
        let db = Database::builder()
            .set_concurrency_mode(ConcurrencyMode::MultiWriter)
            .create(&fresh)
            .map_err(|e| StoreError::Open {
                path: fresh.display().to_string(),
                message: e.to_string(),
            })?;
        RedbStore {
            db: Db::Write(db),
            path: fresh.clone(),
            locks: RunLocks::beside(path),
        }
        .migrate()?;
    }
    std::fs::rename(&fresh, path).map_err(failed)?;
    // The rename is durable only once the directory is.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// The first bytes of every redb file.
const REDB_MAGIC: &[u8] = b"redb\x1A\x0A\xA9\x0D\x0A";

/// Whether a state file is at `path`; an existing file that cannot be one (empty, or not a redb
/// database) is refused before redb sees it: redb would take an empty file for a new database
/// and every run would seem to have vanished.
fn existing(path: &Path) -> Result<bool, StoreError> {
    let shown = || path.display().to_string();
    let not_ours = |why: &str| StoreError::NotAStateFile {
        path: shown(),
        why: why.to_string(),
    };
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            return Err(StoreError::Open {
                path: shown(),
                message: e.to_string(),
            })
        }
    };
    let mut head = [0u8; 9];
    let mut read = 0;
    while read < head.len() {
        match std::io::Read::read(&mut file, &mut head[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) => {
                return Err(StoreError::Open {
                    path: shown(),
                    message: e.to_string(),
                })
            }
        }
    }
    match read {
        0 => Err(not_ours(
            "it is empty (0 bytes), as a full disk or an interrupted copy leaves a file",
        )),
        _ if head[..read] != REDB_MAGIC[..read] || read < REDB_MAGIC.len() => {
            Err(not_ours("it is not a redb database"))
        }
        _ => Ok(true),
    }
}

fn corrupt(what: String, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what,
        message: e.to_string(),
    }
}

impl RedbStore {
    /// Opens (or creates) the state file, creating its directory, and brings its schema up to
    /// date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let shown = path.display().to_string();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
                path: shown.clone(),
                message: e.to_string(),
            })?;
        }
        if !existing(path)? {
            create(path)?;
        }
        {
            // Looked at without writing first: opening for writing changes the file's header,
            // and another program's database must be left exactly as it was. (A file that
            // needs recovery cannot be read so; opening it for writing recovers it, and it is
            // checked below.)
            if let Ok(ro) = Database::builder()
                .set_concurrency_mode(ConcurrencyMode::MultiWriter)
                .open_read_only(path)
            {
                RedbStore {
                    db: Db::Read(ro),
                    path: path.to_path_buf(),
                    locks: RunLocks::beside(path),
                }
                .check_ours()?;
            }
        }
        let db = Database::builder()
            .set_concurrency_mode(ConcurrencyMode::MultiWriter)
            .open(path)
            .map_err(|e| StoreError::Open {
                path: shown.clone(),
                message: e.to_string(),
            })?;
        let store = RedbStore {
            db: Db::Write(db),
            path: path.to_path_buf(),
            locks: RunLocks::beside(path),
        };
        store.check_ours()?;
        store.migrate()?;
        Ok(store)
    }

    /// Opens an existing state file without ever writing to it. Two exceptions are opened for
    /// writing: a file left by a process that was killed needs redb's recovery (the normal
    /// aftermath of a crash, not damage), and a file of an older schema its upgrade.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let shown = path.display().to_string();
        if !existing(path)? {
            return Err(StoreError::Open {
                path: shown,
                message: "there is no such file".into(),
            });
        }
        let db = match Database::builder()
            .set_concurrency_mode(ConcurrencyMode::MultiWriter)
            .open_read_only(path)
        {
            Ok(db) => db,
            Err(redb::DatabaseError::RepairAborted) => {
                tracing::info!(path = %shown, "the state file needs recovery after a crash; opening it for writing to recover it");
                return Self::open(path);
            }
            Err(e) => {
                return Err(StoreError::Open {
                    path: shown,
                    message: e.to_string(),
                })
            }
        };
        let store = RedbStore {
            db: Db::Read(db),
            path: path.to_path_buf(),
            locks: RunLocks::beside(path),
        };
        store.check_ours()?;
        let version = store.schema_version()?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: shown,
                found: version,
                known: SCHEMA_VERSION,
            });
        }
        if version < SCHEMA_VERSION {
            // An older layout lacks tables this build reads; it is upgraded once, as any
            // command of this build would (the version keeps older builds away afterwards).
            drop(store);
            tracing::info!(path = %shown, from = version, to = SCHEMA_VERSION, "upgrading the state file's schema");
            return Self::open(path);
        }
        Ok(store)
    }

    /// A redb file with tables but without Landfall's schema version belongs to another
    /// program. (One without any table is a state file whose creation was cut off.)
    fn check_ours(&self) -> Result<(), StoreError> {
        let tx = self.db.begin_read()?;
        let tables: Vec<String> = tx.list_tables()?.map(|t| t.name().to_string()).collect();
        if tables.is_empty() || tables.iter().any(|t| t == META.name()) {
            return Ok(());
        }
        Err(StoreError::NotAStateFile {
            path: self.path.display().to_string(),
            why: format!(
                "it is a redb database of another program (tables {}, no Landfall schema version)",
                tables.join(", ")
            ),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn schema_version(&self) -> Result<u64, StoreError> {
        let tx = self.db.begin_read()?;
        let v = match tx.open_table(META) {
            Ok(t) => t.get("schema_version")?.map(|v| v.value()).unwrap_or(0),
            Err(redb::TableError::TableDoesNotExist(_)) => 0,
            Err(e) => return Err(e.into()),
        };
        Ok(v)
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            let found = meta.get("schema_version")?.map(|v| v.value());
            let fresh = found.is_none();
            let mut version = found.unwrap_or(0);
            if version > SCHEMA_VERSION {
                return Err(StoreError::TooNew {
                    path: self.path.display().to_string(),
                    found: version,
                    known: SCHEMA_VERSION,
                });
            }
            // Create every table so readers never meet a missing one.
            tx.open_table(RUNS)?;
            tx.open_table(NODES)?;
            tx.open_table(AUDIT)?;
            tx.open_table(AUDIT_CHUNKS)?;
            tx.open_table(AUDIT_HEADS)?;
            tx.open_table(SIGNALS)?;
            tx.open_table(ANNOTATIONS)?;
            tx.open_table(SECRETS)?;
            tx.open_table(PACKAGES)?;
            tx.open_table(PACKAGE_DIGESTS)?;
            tx.open_table(PLANS)?;
            if fresh {
                version = SCHEMA_VERSION;
            }
            for (to, step) in MIGRATIONS {
                if *to > version {
                    step(&tx)?;
                    version = *to;
                }
            }
            meta.insert("schema_version", version.max(1))?;
        }
        tx.commit()?;
        Ok(())
    }
}

fn decode<T: serde::de::DeserializeOwned>(
    what: impl FnOnce() -> String,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| corrupt(what(), e))
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(v).map_err(|e| StoreError::Backend(e.to_string()))
}

/// A run's chain head (last seq, raw hash): from its head record, or, for a run of schema 1
/// that has none yet, from its last single row.
fn chain_head(
    heads: &redb::Table<&str, &[u8]>,
    audit: &redb::Table<(&str, u64), &[u8]>,
    run: &str,
) -> Result<Option<(u64, [u8; 32])>, StoreError> {
    let what = || format!("audit chain head of {run}");
    if let Some(v) = heads.get(run)? {
        let v = v.value();
        let (Some(seq), Some(hash)) = (v.first_chunk::<8>(), v.get(8..40)) else {
            return Err(corrupt(what(), "it is not 40 bytes long"));
        };
        let mut raw = [0u8; 32];
        raw.copy_from_slice(hash);
        return Ok(Some((u64::from_le_bytes(*seq), raw)));
    }
    let last = audit
        .range((run, 0)..=(run, u64::MAX))?
        .next_back()
        .transpose()?;
    match last {
        Some((_, v)) => {
            let e = rows::decode_entry(&what, v.value())?;
            let raw =
                const_hex::decode_to_array::<_, 32>(&e.hash).map_err(|err| corrupt(what(), err))?;
            Ok(Some((e.seq, raw)))
        }
        None => Ok(None),
    }
}

impl RedbStore {
    /// The slots of concurrency key `key` in an open `slots` table.
    /// Whether a process runs the holder's run (a waiting node waits in its run's process).
    fn holder_is_live(&self, holder: &str) -> bool {
        self.is_live(crate::concurrency::holder_parts(holder).0)
    }

    fn slots_in(
        &self,
        t: &impl ReadableTable<&'static str, &'static [u8]>,
        key: &str,
    ) -> Result<crate::concurrency::Slots, StoreError> {
        match t.get(key)? {
            Some(v) => serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                what: format!("slots of {key}"),
                message: e.to_string(),
            }),
            None => Ok(Default::default()),
        }
    }
}

/// The holders and waiters of a key that finished (or are unknown): runs, and nodes (`run#node`)
/// whose run or which itself ended.
fn finished_in(
    runs: &impl ReadableTable<&'static str, &'static [u8]>,
    nodes: &impl ReadableTable<(&'static str, &'static str), &'static [u8]>,
    slots: &crate::concurrency::Slots,
) -> Result<std::collections::HashSet<String>, StoreError> {
    let mut finished = std::collections::HashSet::new();
    for holder in slots.holders.iter().chain(&slots.queue) {
        let (r, node) = crate::concurrency::holder_parts(holder);
        let mut gone = match runs.get(r)? {
            Some(v) => rows::decode_run(&|| format!("run {r}"), v.value())?
                .status
                .is_terminal(),
            None => true,
        };
        if let (false, Some(n)) = (gone, node) {
            gone = match nodes.get((r, n))? {
                Some(v) => rows::decode_node(&|| format!("node {n} of run {r}"), v.value())?
                    .status
                    .is_terminal(),
                None => true,
            };
        }
        if gone {
            finished.insert(holder.clone());
        }
    }
    Ok(finished)
}

impl Store for RedbStore {
    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let tx = self.db.begin_write()?;
        let mut buf = Vec::with_capacity(1024);
        {
            let mut runs = tx.open_table(RUNS)?;
            for r in &batch.runs {
                rows::encode_run(&mut buf, r)?;
                runs.insert(r.run_id.as_str(), buf.as_slice())?;
            }
            let mut nodes = tx.open_table(NODES)?;
            {
                let mut signals = tx.open_table(SIGNALS)?;
                for (run, node) in &batch.dropped_nodes {
                    nodes.remove((run.as_str(), node.as_str()))?;
                    signals.remove((run.as_str(), node.as_str()))?;
                }
            }
            for (run, recs) in &batch.nodes {
                for n in recs {
                    rows::encode_node(&mut buf, n)?;
                    nodes.insert((&**run, &*n.node_id), buf.as_slice())?;
                }
            }
            let mut signals = tx.open_table(SIGNALS)?;
            for (run, node, sig) in &batch.signals {
                signals.insert((run.as_str(), node.as_str()), encode(sig)?.as_slice())?;
            }
            let mut annotations = tx.open_table(ANNOTATIONS)?;
            for (run, key, value) in &batch.annotations {
                annotations.insert((run.as_str(), key.as_str()), encode(value)?.as_slice())?;
            }
            let mut secrets = tx.open_table(SECRETS)?;
            for (name, sealed) in &batch.secrets {
                secrets.insert(name.as_str(), sealed.as_slice())?;
            }
            let audit = tx.open_table(AUDIT)?;
            let mut chunks = tx.open_table(AUDIT_CHUNKS)?;
            let mut heads_table = tx.open_table(AUDIT_HEADS)?;
            // Chain heads (seq, raw hash) of the runs this batch touches, read once.
            let mut heads: std::collections::HashMap<String, (u64, [u8; 32])> = Default::default();
            let mut chunk = Vec::with_capacity(256 * batch.audit.len().min(1024));
            for stretch in super::stretches(&batch.audit) {
                let drafts = &batch.audit[stretch];
                let Some(run) = drafts.first().map(|d| d.run_id()) else {
                    continue;
                };
                let mut head = match heads.get(run) {
                    Some(h) => Some(*h),
                    None => chain_head(&heads_table, &audit, run)?,
                };
                let first = head.map_or(0, |(seq, _)| seq + 1);
                chunk.clear();
                for draft in drafts {
                    let seq = head.map_or(0, |(seq, _)| seq + 1);
                    let prev = head.as_ref().map(|(_, raw)| raw);
                    let hash = draft.digest_after(seq, prev);
                    let prev_raw: &[u8] = prev.map_or(&[], |raw| &raw[..]);
                    rows::push_row(&mut chunk, |b| {
                        rows::encode_entry(b, seq, draft, prev_raw, &hash)
                    })?;
                    head = Some((seq, hash));
                }
                chunks.insert((run, first), chunk.as_slice())?;
                if let Some((seq, hash)) = head {
                    let mut v = [0u8; 40];
                    v[..8].copy_from_slice(&seq.to_le_bytes());
                    v[8..].copy_from_slice(&hash);
                    heads_table.insert(run, &v[..])?;
                    heads.insert(run.to_string(), (seq, hash));
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn run(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(RUNS)?;
        match t.get(run_id)? {
            Some(v) => Ok(Some(rows::decode_run(
                &|| format!("run {run_id}"),
                v.value(),
            )?)),
            None => Ok(None),
        }
    }

    fn runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(RUNS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            out.push(rows::decode_run(
                &|| format!("run {}", k.value()),
                v.value(),
            )?);
        }
        out.sort_by(|a, b| {
            b.started_at
                .cmp(&a.started_at)
                .then(b.run_id.cmp(&a.run_id))
        });
        Ok(out)
    }

    fn nodes(&self, run_id: &str) -> Result<Vec<NodeRecord>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(NODES)?;
        let mut out = Vec::new();
        for item in t.range((run_id, "")..=(run_id, "\u{10FFFF}"))? {
            let (k, v) = item?;
            out.push(rows::decode_node(
                &|| format!("node {run_id}/{}", k.value().1),
                v.value(),
            )?);
        }
        Ok(out)
    }

    fn signal(&self, run_id: &str, node_id: &str) -> Result<Option<Signal>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(SIGNALS)?;
        match t.get((run_id, node_id))? {
            Some(v) => Ok(Some(decode(
                || format!("signal {run_id}/{node_id}"),
                v.value(),
            )?)),
            None => Ok(None),
        }
    }

    fn save_plan(&self, plan: &Plan) -> Result<(), StoreError> {
        let bytes = encode(plan)?;
        let tx = self.db.begin_write()?;
        tx.open_table(PLANS)?
            .insert(plan.plan_id.as_str(), bytes.as_slice())?;
        tx.commit()?;
        Ok(())
    }

    fn plan(&self, plan_id: &str) -> Result<Option<Plan>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(PLANS)?;
        match t.get(plan_id)? {
            Some(v) => Ok(Some(decode(|| format!("plan {plan_id}"), v.value())?)),
            None => Ok(None),
        }
    }

    fn plans(&self) -> Result<Vec<Plan>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(PLANS)?;
        let mut out: Vec<Plan> = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            let id = k.value().to_string();
            out.push(decode(|| format!("plan {id}"), v.value())?);
        }
        out.sort_by_key(|p| p.created_at);
        Ok(out)
    }

    fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(SECRETS)?;
        Ok(t.get(name)?.map(|v| v.value().to_vec()))
    }

    fn secrets(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(SECRETS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            out.push((k.value().to_string(), v.value().to_vec()));
        }
        Ok(out)
    }

    fn annotations(&self, run_id: &str) -> Result<BTreeMap<String, Value>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(ANNOTATIONS)?;
        let mut out = BTreeMap::new();
        for item in t.range((run_id, "")..=(run_id, "\u{10FFFF}"))? {
            let (k, v) = item?;
            let key = k.value().1.to_string();
            out.insert(
                key.clone(),
                decode(|| format!("annotation {run_id}/{key}"), v.value())?,
            );
        }
        Ok(out)
    }

    fn publish_package(
        &self,
        id: &str,
        content: &PackageContent,
        run_id: Option<&str>,
    ) -> Result<Published, StoreError> {
        let digest = content.digest();
        let tx = self.db.begin_write()?;
        let published = {
            let mut digests = tx.open_table(PACKAGE_DIGESTS)?;
            let existing = digests.get((id, digest.as_str()))?.map(|v| v.value());
            match existing {
                Some(version) => Published {
                    id: id.into(),
                    version,
                    digest: digest.clone(),
                    new: false,
                },
                None => {
                    let mut packages = tx.open_table(PACKAGES)?;
                    let last = packages
                        .range((id, 0)..=(id, u64::MAX))?
                        .next_back()
                        .transpose()?
                        .map(|(k, _)| k.value().1)
                        .unwrap_or(0);
                    let version = last + 1;
                    let record = Package {
                        id: id.into(),
                        version,
                        digest: digest.clone(),
                        created_at: chrono::Utc::now(),
                        run_id: run_id.map(str::to_string),
                        content: content.clone(),
                    };
                    packages.insert((id, version), encode(&record)?.as_slice())?;
                    digests.insert((id, digest.as_str()), version)?;
                    Published {
                        id: id.into(),
                        version,
                        digest: digest.clone(),
                        new: true,
                    }
                }
            }
        };
        tx.commit()?;
        Ok(published)
    }

    fn package(&self, id: &str, version: Option<u64>) -> Result<Option<Package>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(PACKAGES)?;
        let bytes: Option<Vec<u8>> = match version {
            Some(v) => t.get((id, v))?.map(|x| x.value().to_vec()),
            None => t
                .range((id, 0)..=(id, u64::MAX))?
                .next_back()
                .transpose()?
                .map(|(_, x)| x.value().to_vec()),
        };
        match bytes {
            None => Ok(None),
            Some(b) => {
                let p: Package = decode(|| format!("package {id}"), &b)?;
                super::verify_package(p).map(Some)
            }
        }
    }

    fn packages(&self) -> Result<Vec<Package>, StoreError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(PACKAGES)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            let (id, version) = k.value();
            out.push(decode::<Package>(
                || format!("package {id}@{version}"),
                v.value(),
            )?);
        }
        Ok(out)
    }

    fn lease(&self, run_id: &str) -> Result<Option<RunLease>, StoreError> {
        self.locks
            .try_acquire(run_id)
            .map_err(|e| StoreError::Backend(format!("cannot lock run {run_id}: {e}")))
    }

    fn is_live(&self, run_id: &str) -> bool {
        self.locks.is_held(run_id)
    }

    fn claim_slot(
        &self,
        key: &str,
        limit: usize,
        run: &str,
        queue: bool,
    ) -> Result<crate::concurrency::Claim, StoreError> {
        // A run waiting in line asks again and again: when nothing would change (it still
        // waits, the line is as it was) the answer comes from a read, not a durable commit.
        {
            let tx = self.db.begin_read()?;
            match tx.open_table(SLOTS) {
                Ok(t) => {
                    let runs = tx.open_table(RUNS)?;
                    let nodes = tx.open_table(NODES)?;
                    let before = self.slots_in(&t, key)?;
                    let mut after = before.clone();
                    let finished = finished_in(&runs, &nodes, &before)?;
                    let claim = after.claim(run, limit, queue, |r, waiting| {
                        finished.contains(r) || (waiting && !self.holder_is_live(r))
                    });
                    if after == before && matches!(claim, crate::concurrency::Claim::Queued { .. })
                    {
                        return Ok(claim);
                    }
                }
                Err(redb::TableError::TableDoesNotExist(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let tx = self.db.begin_write()?;
        let claim = {
            let mut t = tx.open_table(SLOTS)?;
            let mut slots = self.slots_in(&t, key)?;
            let runs = tx.open_table(RUNS)?;
            let nodes = tx.open_table(NODES)?;
            let finished = finished_in(&runs, &nodes, &slots)?;
            let claim = slots.claim(run, limit, queue, |r, waiting| {
                finished.contains(r) || (waiting && !self.holder_is_live(r))
            });
            let bytes = serde_json::to_vec(&slots)
                .map_err(|e| StoreError::Backend(format!("slots of {key}: {e}")))?;
            t.insert(key, bytes.as_slice())?;
            claim
        };
        tx.commit()?;
        Ok(claim)
    }

    fn release_slot(&self, key: &str, run: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(SLOTS)?;
            let slots: Option<crate::concurrency::Slots> =
                match t.get(key)? {
                    Some(v) => Some(serde_json::from_slice(v.value()).map_err(|e| {
                        StoreError::Corrupt {
                            what: format!("slots of {key}"),
                            message: e.to_string(),
                        }
                    })?),
                    None => None,
                };
            if let Some(mut slots) = slots {
                slots.release(run);
                if slots.is_empty() {
                    t.remove(key)?;
                } else {
                    let bytes = serde_json::to_vec(&slots)
                        .map_err(|e| StoreError::Backend(format!("slots of {key}: {e}")))?;
                    t.insert(key, bytes.as_slice())?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn slots(&self, key: &str) -> Result<crate::concurrency::Slots, StoreError> {
        let tx = self.db.begin_read()?;
        let t = match tx.open_table(SLOTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Default::default()),
            Err(e) => return Err(e.into()),
        };
        match t.get(key)? {
            Some(v) => serde_json::from_slice(v.value()).map_err(|e| StoreError::Corrupt {
                what: format!("slots of {key}"),
                message: e.to_string(),
            }),
            None => Ok(Default::default()),
        }
    }

    fn audit(&self, run_id: &str) -> Result<Vec<AuditEntry>, StoreError> {
        let tx = self.db.begin_read()?;
        let mut out = Vec::new();
        // Schema 1's rows come first: a run's later entries are in chunks.
        let t = tx.open_table(AUDIT)?;
        for item in t.range((run_id, 0)..=(run_id, u64::MAX))? {
            let (k, v) = item?;
            out.push(rows::decode_entry(
                &|| format!("audit entry {run_id}#{}", k.value().1),
                v.value(),
            )?);
        }
        let t = tx.open_table(AUDIT_CHUNKS)?;
        for item in t.range((run_id, 0)..=(run_id, u64::MAX))? {
            let (k, v) = item?;
            let first = k.value().1;
            let what = || format!("audit chunk {run_id}#{first}");
            for row in rows::chunk_rows(&what, v.value()) {
                out.push(rows::decode_entry(&what, row?)?);
            }
        }
        Ok(out)
    }
}

impl RedbStore {
    /// Overwrites a stored package record's bytes. Only for tests of tamper detection.
    #[doc(hidden)]
    pub fn tamper_package(&self, p: &Package) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(PACKAGES)?;
            t.insert((p.id.as_str(), p.version), encode(p)?.as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Overwrites one audit entry's bytes (with its JSON, wherever it lies). Only for tests
    /// of `audit --verify`.
    #[doc(hidden)]
    pub fn tamper_audit(
        &self,
        run_id: &str,
        seq: u64,
        entry: &AuditEntry,
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_write()?;
        {
            let mut chunks = tx.open_table(AUDIT_CHUNKS)?;
            let found = chunks
                .range((run_id, 0)..=(run_id, seq))?
                .next_back()
                .transpose()?
                .map(|(k, v)| (k.value().1, v.value().to_vec()));
            match found {
                Some((first, bytes)) => {
                    let what = || format!("audit chunk {run_id}#{first}");
                    let mut chunk = Vec::new();
                    for (k, row) in rows::chunk_rows(&what, &bytes).enumerate() {
                        let row = row?;
                        rows::push_row(&mut chunk, |b| {
                            if first + k as u64 == seq {
                                b.extend_from_slice(&encode(entry)?);
                            } else {
                                b.extend_from_slice(row);
                            }
                            Ok(())
                        })?;
                    }
                    chunks.insert((run_id, first), chunk.as_slice())?;
                }
                None => {
                    let mut t = tx.open_table(AUDIT)?;
                    t.insert((run_id, seq), encode(entry)?.as_slice())?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(r: Result<RedbStore, StoreError>) -> String {
        match r {
            Err(e @ StoreError::NotAStateFile { .. }) => e.to_string(),
            Err(e) => panic!("refused for another reason: {e}"),
            Ok(_) => panic!("opened"),
        }
    }

    #[test]
    fn an_empty_or_foreign_file_is_refused_and_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.redb");
        std::fs::write(&empty, b"").unwrap();
        let why = refused(RedbStore::open(&empty));
        assert!(why.contains("it is empty (0 bytes)"), "{why}");
        refused(RedbStore::open_read_only(&empty));
        assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);

        let text = dir.path().join("notes.redb");
        std::fs::write(&text, b"runs: none\n").unwrap();
        let why = refused(RedbStore::open(&text));
        assert!(why.contains("not a redb database"), "{why}");
        assert_eq!(std::fs::read(&text).unwrap(), b"runs: none\n");

        // A redb database of another program.
        let other = dir.path().join("other.redb");
        {
            let db = Database::create(&other).unwrap();
            let tx = db.begin_write().unwrap();
            let t: TableDefinition<&str, u64> = TableDefinition::new("inventory");
            tx.open_table(t).unwrap().insert("apples", 3).unwrap();
            tx.commit().unwrap();
        }
        let before = std::fs::read(&other).unwrap();
        let why = refused(RedbStore::open(&other));
        assert!(why.contains("another program (tables inventory"), "{why}");
        refused(RedbStore::open_read_only(&other));
        assert!(std::fs::read(&other).unwrap() == before, "the file changed");

        // A state file whose creation was cut off before its first commit is fine.
        let cut = dir.path().join("cut.redb");
        drop(Database::create(&cut).unwrap());
        assert!(RedbStore::open(&cut).is_ok());
    }

    #[test]
    fn stores_created_at_once_are_one_file_and_a_cut_off_creation_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        // A creation cut off by a crash, before this build's creations rename into place.
        std::fs::write(dir.path().join("state.redb.new-999999"), b"redb").unwrap();
        let barrier = std::sync::Barrier::new(4);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    barrier.wait();
                    let store = RedbStore::open(&path).unwrap_or_else(|e| panic!("{e}"));
                    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
                });
            }
        });
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".locks"))
            .collect();
        let mut names = names;
        names.sort();
        assert_eq!(names, ["state.redb", "state.redb.create-lock"]);
    }

    #[test]
    fn a_read_only_store_reads_and_never_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        drop(RedbStore::open(&path).unwrap());
        let before = std::fs::read(&path).unwrap();
        let ro = RedbStore::open_read_only(&path).unwrap();
        assert!(ro.runs().unwrap().is_empty());
        assert!(matches!(ro.commit(Batch::default()), Ok(())));
        let mut batch = Batch::default();
        batch
            .annotations
            .push(("r".into(), "k".into(), serde_json::json!(1)));
        assert!(matches!(ro.commit(batch), Err(StoreError::ReadOnly)));
        drop(ro);
        assert!(std::fs::read(&path).unwrap() == before, "the file changed");
    }

    /// A file written by a newer build is refused with what to do, never misread.
    #[test]
    fn a_file_from_a_newer_build_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        {
            let store = RedbStore::open(&path).unwrap();
            assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
            let tx = store.db.begin_write().unwrap();
            tx.open_table(META)
                .unwrap()
                .insert("schema_version", SCHEMA_VERSION + 1)
                .unwrap();
            tx.commit().unwrap();
        }
        match RedbStore::open(&path) {
            Err(StoreError::TooNew { found, known, .. }) => {
                assert_eq!((found, known), (SCHEMA_VERSION + 1, SCHEMA_VERSION))
            }
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("a newer file was opened"),
        }
    }
}
