//! The shared store on PostgreSQL (`db = "postgres://…"`): the [`Store`] of several processes
//! on several hosts. Every invariant of the redb store holds: a [`Batch`] is one transaction;
//! audit entries are chained in the same hash format, under a per-run head row locked for
//! the transaction (commits of one run, from any process, append in turn); records are the
//! redb store's bytes (`rows.rs`) or JSON, so a run copied between stores verifies.
//!
//! Leases instead of file locks ([`Store::lease`]): a row per run with its owner (one id per
//! open store), an expiry and a fencing token that grows with every take-over. The store
//! renews the leases it holds every third of their time; a commit that touches a run this
//! store leased checks, in its transaction, that the lease is still its own and unexpired,
//! and writes nothing otherwise ([`StoreError::LeaseLost`]): a worker that was paused or cut
//! off past its lease cannot write when it wakes. A lease is given back, never deleted, so
//! its token never goes back.
//!
//! The trait is synchronous, as redb's calls are: each call runs on the store's own small
//! runtime and the caller's thread waits, which also keeps the database's I/O off the
//! scheduler's workers. A call that meets a lost connection (a restarted server) is tried
//! again on a new one for up to a minute; a commit tried again after an answer was lost is
//! recognised by its id and not applied twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use serde_json::Value;
use tokio_postgres::NoTls;

use super::{rows, AuditEntry, Batch, Store, StoreError, HASH_FORMAT};
use crate::concurrency::{Claim, Slots};
use crate::lock::RunLease;
use crate::package::{Package, PackageContent, Published};
use crate::plan::Plan;
use crate::state::{NodeRecord, RunRecord, Signal};

/// Schema versions, applied in order, each once, under an advisory lock (workers starting
/// together migrate once).
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE runs (run_id text PRIMARY KEY, status text NOT NULL, source text NOT NULL,
    body bytea NOT NULL);
CREATE INDEX runs_unfinished ON runs (source, run_id)
    WHERE status NOT IN ('succeeded', 'failed', 'cancelled');
CREATE TABLE deliveries (key text PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());
CREATE TABLE shared (key text PRIMARY KEY, body bytea NOT NULL,
    at timestamptz NOT NULL DEFAULT now());
CREATE TABLE nodes (run_id text NOT NULL, node_id text NOT NULL, body bytea NOT NULL,
    PRIMARY KEY (run_id, node_id));
CREATE TABLE audit (run_id text NOT NULL, seq bigint NOT NULL, body bytea NOT NULL,
    PRIMARY KEY (run_id, seq));
CREATE TABLE audit_heads (run_id text PRIMARY KEY, seq bigint NOT NULL, hash bytea NOT NULL);
CREATE TABLE signals (run_id text NOT NULL, node_id text NOT NULL, body bytea NOT NULL,
    PRIMARY KEY (run_id, node_id));
CREATE TABLE annotations (run_id text NOT NULL, key text NOT NULL, body bytea NOT NULL,
    PRIMARY KEY (run_id, key));
CREATE TABLE secrets (name text PRIMARY KEY, sealed bytea NOT NULL);
CREATE TABLE packages (id text NOT NULL, version bigint NOT NULL, digest text NOT NULL,
    body bytea NOT NULL, PRIMARY KEY (id, version), UNIQUE (id, digest));
CREATE TABLE plans (plan_id text PRIMARY KEY, body bytea NOT NULL);
CREATE TABLE slots (key text PRIMARY KEY, body bytea NOT NULL);
CREATE TABLE leases (run_id text PRIMARY KEY, owner text NOT NULL, token bigint NOT NULL,
    expires_at timestamptz NOT NULL);
CREATE TABLE commits (id text PRIMARY KEY, at timestamptz NOT NULL DEFAULT now());
"#];

/// Takes run `$1`'s lease for owner `$2` for `$3` seconds when nobody holds it (never held,
/// given back, or expired), with the next fencing token; no row when another holds it.
const TAKE_LEASE: &str = "INSERT INTO leases (run_id, owner, token, expires_at)
     VALUES ($1, $2, 1, now() + make_interval(secs => $3))
     ON CONFLICT (run_id) DO UPDATE
        SET owner = excluded.owner, token = leases.token + 1, expires_at = excluded.expires_at
      WHERE leases.owner = '' OR leases.expires_at <= now()
     RETURNING token";

/// How long a call keeps trying to reach a server that went away.
const RECONNECT_FOR: Duration = Duration::from_secs(60);

/// The default lease: a run of a worker that died resumes elsewhere within this.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);

pub struct PgStore {
    inner: Arc<Inner>,
    rt: Option<tokio::runtime::Runtime>,
}

struct Inner {
    handle: tokio::runtime::Handle,
    pool: Pool,
    /// This store's name in the leases it holds.
    owner: String,
    ttl: Duration,
    /// Runs this store leased, with their tokens.
    held: Mutex<HashMap<String, i64>>,
    /// Runs [`Store::take_runs`] leased and nobody has executed yet.
    taken: Mutex<HashSet<String>>,
}

/// What went wrong in one try of a call.
enum Fault {
    Db(tokio_postgres::Error),
    Pool(deadpool_postgres::PoolError),
    Store(StoreError),
}

impl From<tokio_postgres::Error> for Fault {
    fn from(e: tokio_postgres::Error) -> Self {
        Fault::Db(e)
    }
}
impl From<deadpool_postgres::PoolError> for Fault {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        Fault::Pool(e)
    }
}
impl From<StoreError> for Fault {
    fn from(e: StoreError) -> Self {
        Fault::Store(e)
    }
}

impl Fault {
    /// A lost or refused connection, a server shutting down, a serialization conflict:
    /// worth another try on a new connection.
    fn passing(&self) -> bool {
        match self {
            Fault::Pool(_) => true,
            Fault::Db(e) => match e.code() {
                None => true,
                Some(c) => {
                    let c = c.code();
                    c.starts_with("08") || c.starts_with("57P") || c == "40001" || c == "40P01"
                }
            },
            Fault::Store(_) => false,
        }
    }

    fn into_store(self) -> StoreError {
        match self {
            Fault::Store(e) => e,
            Fault::Db(e) => StoreError::Backend(format!("PostgreSQL: {}", db_message(&e))),
            Fault::Pool(e) => StoreError::Backend(format!("PostgreSQL: {e}")),
        }
    }
}

fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        None => e.to_string(),
    }
}

fn corrupt(what: String, e: impl std::fmt::Display) -> Fault {
    Fault::Store(StoreError::Corrupt {
        what,
        message: e.to_string(),
    })
}

fn json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, Fault> {
    serde_json::to_vec(v).map_err(|e| Fault::Store(StoreError::Backend(e.to_string())))
}

fn from_json<T: serde::de::DeserializeOwned>(
    what: impl FnOnce() -> String,
    b: &[u8],
) -> Result<T, Fault> {
    serde_json::from_slice(b).map_err(|e| corrupt(what(), e))
}

/// The URL without its password, for messages: the user part's (`user:pw@`) and a
/// `password` query parameter's are shown as `***`. Anything else (a state file's path) is
/// returned as it is; a PostgreSQL URL that does not parse is not shown at all, since where its
/// password sits cannot be told.
pub fn redacted(db: &str) -> String {
    if !is_postgres_url(db) {
        return db.to_string();
    }
    let Ok(mut url) = url::Url::parse(db) else {
        return "a PostgreSQL URL (not shown: it does not parse)".to_string();
    };
    if url.password().is_some() {
        // Only a URL that cannot be a base refuses a password; one that parsed as
        // `postgres://…` with a password can.
        let _ = url.set_password(Some("***"));
    }
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if k.eq_ignore_ascii_case("password") {
                    "***".to_string()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

/// Whether `db` names a PostgreSQL database rather than a state file.
pub fn is_postgres_url(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

impl PgStore {
    /// Connects, brings the schema up to date, and starts renewing leases (each `lease` long).
    pub fn open(url: &str, lease: Duration) -> Result<Self, StoreError> {
        let shown = redacted(url);
        let failed = |message: String| StoreError::Open {
            path: shown.clone(),
            message,
        };
        let (rt, pool) = connect(url, 2, 8)?;
        let inner = Arc::new(Inner {
            handle: rt.handle().clone(),
            pool,
            owner: format!(
                "{}:{}:{}",
                hostname(),
                std::process::id(),
                ulid::Ulid::new()
            ),
            ttl: lease.max(Duration::from_secs(1)),
            held: Mutex::new(HashMap::new()),
            taken: Mutex::new(HashSet::new()),
        });
        inner
            .call(|pool, _| async move { migrate(&pool).await })
            .map_err(|e| failed(e.to_string()))?;
        let renewing = Arc::downgrade(&inner);
        rt.spawn(async move {
            loop {
                let Some(ttl) = renewing.upgrade().map(|i| i.ttl) else {
                    return;
                };
                tokio::time::sleep(ttl / 3).await;
                let Some(inner) = renewing.upgrade() else {
                    return;
                };
                if let Err(e) = inner.renew().await {
                    tracing::warn!(error = %e.into_store(), "could not renew the leases of this worker's runs");
                }
            }
        });
        Ok(PgStore {
            inner,
            rt: Some(rt),
        })
    }

    /// Creates database `name` on the server of `url` (for tests: a database each).
    #[doc(hidden)]
    pub fn create_database(url: &str, name: &str) -> Result<String, StoreError> {
        let store = PgStore::open_without_schema(url)?;
        let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', ""));
        store.inner.call(move |pool, _| {
            let sql = sql.clone();
            async move {
                pool.get().await?.batch_execute(&sql).await?;
                Ok(())
            }
        })?;
        let base = url.rsplit_once('/').map_or(url, |(b, _)| b);
        Ok(format!("{base}/{name}"))
    }

    /// A store that runs statements only (no schema, no leases): for administration.
    fn open_without_schema(url: &str) -> Result<Self, StoreError> {
        let (rt, pool) = connect(url, 1, 1)?;
        Ok(PgStore {
            inner: Arc::new(Inner {
                handle: rt.handle().clone(),
                pool,
                owner: String::new(),
                ttl: DEFAULT_LEASE,
                held: Mutex::new(HashMap::new()),
                taken: Mutex::new(HashSet::new()),
            }),
            rt: Some(rt),
        })
    }

    /// Whether the store holds no run, package, plan or secret (`migrate` refuses others).
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        self.inner.call(|pool, _| async move {
            let c = pool.get().await?;
            let row = c
                .query_one(
                    "SELECT NOT EXISTS (SELECT 1 FROM runs) AND NOT EXISTS (SELECT 1 FROM packages)
                       AND NOT EXISTS (SELECT 1 FROM plans) AND NOT EXISTS (SELECT 1 FROM secrets)",
                    &[],
                )
                .await?;
            Ok(row.get::<_, bool>(0))
        })
    }

    /// Copies audit entries as they are (a run moved from another store keeps its chain,
    /// hashes and formats included). Only into a run that has none yet.
    pub fn import_audit(&self, run_id: &str, entries: &[AuditEntry]) -> Result<(), StoreError> {
        let run = run_id.to_string();
        let mut seqs = Vec::with_capacity(entries.len());
        let mut bodies = Vec::with_capacity(entries.len());
        for e in entries {
            seqs.push(e.seq as i64);
            bodies.push(json(e).map_err(Fault::into_store)?);
        }
        let head = entries
            .last()
            .map(|e| (e.seq as i64, const_hex::decode(&e.hash).unwrap_or_default()));
        self.inner.call(move |pool, _| {
            let (run, seqs, bodies, head) = (run.clone(), seqs.clone(), bodies.clone(), head.clone());
            async move {
                let mut c = pool.get().await?;
                let tx = c.transaction().await?;
                tx.execute(
                    "INSERT INTO audit (run_id, seq, body) SELECT $1, * FROM unnest($2::int8[], $3::bytea[])",
                    &[&run, &seqs, &bodies],
                )
                .await?;
                if let Some((seq, hash)) = head {
                    tx.execute(
                        "INSERT INTO audit_heads (run_id, seq, hash) VALUES ($1, $2, $3)",
                        &[&run, &seq, &hash],
                    )
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }
        })
    }
}

impl PgStore {
    /// Copies a package version as it is (its version, digest and time kept).
    pub fn import_package(&self, p: &Package) -> Result<(), StoreError> {
        let (id, version, digest) = (p.id.clone(), p.version as i64, p.digest.clone());
        let body = json(p).map_err(Fault::into_store)?;
        self.inner.call(move |pool, _| {
            let (id, digest, body) = (id.clone(), digest.clone(), body.clone());
            async move {
                pool.get()
                    .await?
                    .execute(
                        "INSERT INTO packages (id, version, digest, body) VALUES ($1, $2, $3, $4)",
                        &[&id, &version, &digest, &body],
                    )
                    .await?;
                Ok(())
            }
        })
    }
}

impl PgStore {
    /// The first row of `sql`, which selects one `bytea` by text parameters, read by `read`.
    fn one<T: Send + 'static>(
        &self,
        sql: &'static str,
        params: &[&str],
        read: impl Fn(&[u8]) -> Result<T, Fault> + Clone + Send + Sync + 'static,
    ) -> Result<Option<T>, StoreError> {
        let params: Vec<String> = params.iter().map(|p| p.to_string()).collect();
        self.inner.call(move |pool, _| {
            let (params, read) = (params.clone(), read.clone());
            async move {
                let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                    .iter()
                    .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                    .collect();
                Ok(all(&pool, sql, &refs, read).await?.into_iter().next())
            }
        })
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks; a store may be dropped inside another runtime's task.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The store's own runtime (`threads` workers) and a pool of up to `size` connections to
/// `url` (made when first needed).
fn connect(
    url: &str,
    threads: usize,
    size: usize,
) -> Result<(tokio::runtime::Runtime, Pool), StoreError> {
    let failed = |message: String| StoreError::Open {
        path: redacted(url),
        message,
    };
    let config: tokio_postgres::Config = url
        .parse()
        .map_err(|e| failed(format!("not a PostgreSQL URL: {e}")))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("landfall-postgres")
        .enable_all()
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .create_timeout(Some(Duration::from_secs(10)))
        .wait_timeout(Some(Duration::from_secs(30)))
        .build()
        .map_err(|e| failed(e.to_string()))?;
    Ok((rt, pool))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into())
}

async fn migrate(pool: &Pool) -> Result<(), Fault> {
    let mut c = pool.get().await?;
    let tx = c.transaction().await?;
    tx.batch_execute(
        "SELECT pg_advisory_xact_lock(7236001);
         CREATE TABLE IF NOT EXISTS landfall_schema (version integer NOT NULL);",
    )
    .await?;
    let found: i32 = tx
        .query_opt("SELECT version FROM landfall_schema", &[])
        .await?
        .map_or(0, |r| r.get(0));
    let known = MIGRATIONS.len() as i32;
    if found > known {
        return Err(Fault::Store(StoreError::TooNew {
            path: "(this PostgreSQL database)".into(),
            found: found as u64,
            known: known as u64,
        }));
    }
    for sql in &MIGRATIONS[found as usize..] {
        tx.batch_execute(sql).await?;
    }
    if found == 0 {
        tx.execute(
            "INSERT INTO landfall_schema (version) VALUES ($1)",
            &[&known],
        )
        .await?;
    } else if found < known {
        tx.execute("UPDATE landfall_schema SET version = $1", &[&known])
            .await?;
    }
    // Ids of commits are kept only to recognise a retried one, of deliveries only while
    // Slack may still retry them.
    tx.batch_execute(
        "DELETE FROM commits WHERE at < now() - interval '1 day';
         DELETE FROM deliveries WHERE at < now() - interval '1 day';
         DELETE FROM shared WHERE at < now() - interval '1 day';",
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

impl Inner {
    /// Runs `f` on the store's runtime and waits for it; `f` gets a pool and its try number
    /// (0 first), and is tried again while the server is out of reach.
    fn call<T, F, Fut>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(Pool, u32) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, Fault>> + Send,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let pool = self.pool.clone();
        self.handle.spawn(async move {
            let started = tokio::time::Instant::now();
            let mut nap = Duration::from_millis(100);
            let mut attempt = 0;
            let out = loop {
                match f(pool.clone(), attempt).await {
                    Err(e) if e.passing() && started.elapsed() < RECONNECT_FOR => {
                        tracing::debug!(error = %e.into_store(), "PostgreSQL out of reach; trying again");
                        tokio::time::sleep(nap).await;
                        nap = (nap * 2).min(Duration::from_secs(2));
                        attempt += 1;
                    }
                    other => break other.map_err(Fault::into_store),
                }
            };
            let _ = tx.send(out);
        });
        rx.recv()
            .map_err(|_| StoreError::Backend("the PostgreSQL store was closed".into()))?
    }

    async fn renew(&self) -> Result<(), Fault> {
        let runs: Vec<String> = match self.held.lock() {
            Ok(h) => h.keys().cloned().collect(),
            Err(_) => return Ok(()),
        };
        if runs.is_empty() {
            return Ok(());
        }
        let c = self.pool.get().await?;
        c.execute(
            "UPDATE leases SET expires_at = now() + make_interval(secs => $3)
              WHERE run_id = ANY($1) AND owner = $2 AND expires_at > now()",
            &[&runs, &self.owner, &self.ttl.as_secs_f64()],
        )
        .await?;
        Ok(())
    }

    fn held_tokens(&self, runs: &HashSet<&str>) -> Vec<(String, i64)> {
        match self.held.lock() {
            Ok(h) => runs
                .iter()
                .filter_map(|r| h.get(*r).map(|t| (r.to_string(), *t)))
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// A lease held by this store, given back when dropped.
struct Held {
    inner: Arc<Inner>,
    run_id: String,
    token: i64,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Ok(mut h) = self.inner.held.lock() {
            h.remove(&self.run_id);
        }
        let (run, owner, token) = (self.run_id.clone(), self.inner.owner.clone(), self.token);
        // Given back now rather than left to expire: another worker may resume at once.
        let given = self.inner.call(move |pool, _| {
            let (run, owner) = (run.clone(), owner.clone());
            async move {
                pool.get()
                    .await?
                    .execute(
                        "UPDATE leases SET owner = '', expires_at = now()
                          WHERE run_id = $1 AND owner = $2 AND token = $3",
                        &[&run, &owner, &token],
                    )
                    .await?;
                Ok(())
            }
        });
        if let Err(e) = given {
            tracing::warn!(run = %self.run_id, error = %e, "could not give a lease back; it expires by itself");
        }
    }
}

/// Every run a batch writes to.
fn runs_of(batch: &Batch) -> HashSet<&str> {
    let mut out: HashSet<&str> = HashSet::new();
    out.extend(batch.runs.iter().map(|r| r.run_id.as_str()));
    out.extend(batch.nodes.iter().map(|(r, _)| &**r));
    out.extend(batch.audit.iter().map(|d| d.run_id()));
    out.extend(batch.signals.iter().map(|(r, _, _)| r.as_str()));
    out.extend(batch.annotations.iter().map(|(r, _, _)| r.as_str()));
    out.extend(batch.dropped_nodes.iter().map(|(r, _)| r.as_str()));
    out
}

/// Parameters of a statement.
type Params<'a> = [&'a (dyn tokio_postgres::types::ToSql + Sync)];

/// Runs `sql` as a statement prepared once per connection: a statement sent as text costs two
/// round trips (parse, then bind and execute), a cached one only the second.
async fn exec(
    c: &impl deadpool_postgres::GenericClient,
    sql: &str,
    params: &Params<'_>,
) -> Result<u64, Fault> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.execute(&st, params).await?)
}

/// The rows of `sql`, prepared once per connection (see [`exec`]).
async fn select(
    c: &impl deadpool_postgres::GenericClient,
    sql: &str,
    params: &Params<'_>,
) -> Result<Vec<tokio_postgres::Row>, Fault> {
    let st = c.prepare_cached(sql).await?;
    Ok(c.query(&st, params).await?)
}

async fn apply(
    pool: &Pool,
    batch: &Batch,
    id: &str,
    retried: bool,
    owner: &str,
    fenced: &[(String, i64)],
) -> Result<(), Fault> {
    let mut c = pool.get().await?;
    let tx = c.transaction().await?;
    if retried
        && tx
            .query_opt("SELECT 1 FROM commits WHERE id = $1", &[&id])
            .await?
            .is_some()
    {
        // The first try went through; only its answer was lost.
        return Ok(());
    }
    if !fenced.is_empty() {
        let runs: Vec<&str> = fenced.iter().map(|(r, _)| r.as_str()).collect();
        let rows = select(
            &tx,
            "SELECT run_id, owner, token, expires_at > now() FROM leases
                  WHERE run_id = ANY($1) ORDER BY run_id FOR SHARE",
            &[&runs],
        )
        .await?;
        for (run, token) in fenced {
            let ok = rows.iter().any(|r| {
                r.get::<_, &str>(0) == run
                    && r.get::<_, &str>(1) == owner
                    && r.get::<_, i64>(2) == *token
                    && r.get::<_, bool>(3)
            });
            if !ok {
                return Err(Fault::Store(StoreError::LeaseLost(run.clone())));
            }
        }
    }
    let mut buf = Vec::with_capacity(1024);
    for r in &batch.runs {
        rows::encode_run(&mut buf, r)?;
        exec(
            &tx,
            "INSERT INTO runs (run_id, status, source, body) VALUES ($1, $2, $3, $4)
             ON CONFLICT (run_id) DO UPDATE
                SET status = excluded.status, source = excluded.source, body = excluded.body",
            &[&r.run_id, &r.status.as_str(), &r.trigger.source, &buf],
        )
        .await?;
    }
    for (run, node) in &batch.dropped_nodes {
        exec(
            &tx,
            "DELETE FROM nodes WHERE run_id = $1 AND node_id = $2",
            &[run, node],
        )
        .await?;
        exec(
            &tx,
            "DELETE FROM signals WHERE run_id = $1 AND node_id = $2",
            &[run, node],
        )
        .await?;
    }
    for (run, recs) in &batch.nodes {
        let mut ids: Vec<&str> = Vec::with_capacity(recs.len());
        let mut bodies: Vec<Vec<u8>> = Vec::with_capacity(recs.len());
        for n in recs {
            rows::encode_node(&mut buf, n)?;
            ids.push(&n.node_id);
            bodies.push(buf.clone());
        }
        exec(
            &tx,
            "INSERT INTO nodes (run_id, node_id, body) SELECT $1, * FROM unnest($2::text[], $3::bytea[])
             ON CONFLICT (run_id, node_id) DO UPDATE SET body = excluded.body",
            &[&&**run, &ids, &bodies],
        )
        .await?;
    }
    for (run, node, sig) in &batch.signals {
        exec(
            &tx,
            "INSERT INTO signals (run_id, node_id, body) VALUES ($1, $2, $3)
             ON CONFLICT (run_id, node_id) DO UPDATE SET body = excluded.body",
            &[run, node, &json(sig)?],
        )
        .await?;
    }
    for (run, key, value) in &batch.annotations {
        exec(
            &tx,
            "INSERT INTO annotations (run_id, key, body) VALUES ($1, $2, $3)
             ON CONFLICT (run_id, key) DO UPDATE SET body = excluded.body",
            &[run, key, &json(value)?],
        )
        .await?;
    }
    for (name, sealed) in &batch.secrets {
        exec(
            &tx,
            "INSERT INTO secrets (name, sealed) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET sealed = excluded.sealed",
            &[name, sealed],
        )
        .await?;
    }
    if !batch.audit.is_empty() {
        append_audit(&tx, batch).await?;
    }
    exec(&tx, "INSERT INTO commits (id) VALUES ($1)", &[&id]).await?;
    tx.commit().await?;
    Ok(())
}

/// Chains the batch's audit drafts onto their runs' heads, locked in run order (two commits
/// touching the same runs never wait for each other crosswise).
async fn append_audit(tx: &deadpool_postgres::Transaction<'_>, batch: &Batch) -> Result<(), Fault> {
    let mut runs: Vec<&str> = batch.audit.iter().map(|d| d.run_id()).collect();
    runs.sort_unstable();
    runs.dedup();
    exec(
        tx,
        "INSERT INTO audit_heads (run_id, seq, hash) SELECT r, -1, '' FROM unnest($1::text[]) AS r
         ORDER BY r ON CONFLICT (run_id) DO NOTHING",
        &[&runs],
    )
    .await?;
    let mut heads: HashMap<String, Option<(u64, [u8; 32])>> = HashMap::new();
    for row in select(
            tx,
            "SELECT run_id, seq, hash FROM audit_heads WHERE run_id = ANY($1) ORDER BY run_id FOR UPDATE",
            &[&runs],
        )
        .await?
    {
        let run: String = row.get(0);
        let seq: i64 = row.get(1);
        let hash: Vec<u8> = row.get(2);
        let head = if seq < 0 {
            None
        } else {
            let raw: [u8; 32] = hash
                .as_slice()
                .try_into()
                .map_err(|_| corrupt(format!("audit head of {run}"), "not a SHA-256"))?;
            Some((seq as u64, raw))
        };
        heads.insert(run, head);
    }
    for stretch in super::stretches(&batch.audit) {
        let drafts = &batch.audit[stretch];
        let Some(run) = drafts.first().map(|d| d.run_id()) else {
            continue;
        };
        let mut head = heads.get(run).copied().flatten();
        let mut seqs = Vec::with_capacity(drafts.len());
        let mut bodies = Vec::with_capacity(drafts.len());
        for draft in drafts {
            let seq = head.map_or(0, |(s, _)| s + 1);
            let prev = head.as_ref().map(|(_, raw)| raw);
            let hash = draft.digest_after(seq, prev);
            let entry = AuditEntry {
                seq,
                draft: draft.to_draft(),
                prev: prev.map(const_hex::encode).unwrap_or_default(),
                hash: const_hex::encode(hash),
                format: HASH_FORMAT,
            };
            seqs.push(seq as i64);
            bodies.push(json(&entry)?);
            head = Some((seq, hash));
        }
        exec(
            tx,
            "INSERT INTO audit (run_id, seq, body) SELECT $1, * FROM unnest($2::int8[], $3::bytea[])",
            &[&run, &seqs, &bodies],
        )
        .await?;
        if let Some((seq, hash)) = head {
            exec(
                tx,
                "UPDATE audit_heads SET seq = $2, hash = $3 WHERE run_id = $1",
                &[&run, &(seq as i64), &hash.as_slice()],
            )
            .await?;
            heads.insert(run.to_string(), Some((seq, hash)));
        }
    }
    Ok(())
}

/// Rows of one query, as `T`s read from column 0.
async fn all<T>(
    pool: &Pool,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    read: impl Fn(&[u8]) -> Result<T, Fault>,
) -> Result<Vec<T>, Fault> {
    let c = pool.get().await?;
    let rows = select(&c, sql, params).await?;
    rows.iter().map(|r| read(r.get::<_, &[u8]>(0))).collect()
}

impl Store for PgStore {
    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let fenced = self.inner.held_tokens(&runs_of(&batch));
        let batch = Arc::new(batch);
        let id = ulid::Ulid::new().to_string();
        let owner = self.inner.owner.clone();
        self.inner.call(move |pool, attempt| {
            let (batch, id, owner, fenced) = (
                Arc::clone(&batch),
                id.clone(),
                owner.clone(),
                fenced.clone(),
            );
            async move { apply(&pool, &batch, &id, attempt > 0, &owner, &fenced).await }
        })
    }

    fn run(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        let what = format!("run {run_id}");
        self.one(
            "SELECT body FROM runs WHERE run_id = $1",
            &[run_id],
            move |b| Ok(rows::decode_run(&|| what.clone(), b)?),
        )
    }

    fn runs(&self) -> Result<Vec<RunRecord>, StoreError> {
        let mut out = self.inner.call(|pool, _| async move {
            all(&pool, "SELECT body FROM runs", &[], |b| {
                Ok(rows::decode_run(&|| "a run".to_string(), b)?)
            })
            .await
        })?;
        out.sort_by(|a, b| {
            b.started_at
                .cmp(&a.started_at)
                .then(b.run_id.cmp(&a.run_id))
        });
        Ok(out)
    }

    fn nodes(&self, run_id: &str) -> Result<Vec<NodeRecord>, StoreError> {
        let run = run_id.to_string();
        self.inner.call(move |pool, _| {
            let run = run.clone();
            async move {
                all(
                    &pool,
                    "SELECT body FROM nodes WHERE run_id = $1 ORDER BY node_id COLLATE \"C\"",
                    &[&run],
                    |b| Ok(rows::decode_node(&|| format!("a node of {run}"), b)?),
                )
                .await
            }
        })
    }

    fn audit(&self, run_id: &str) -> Result<Vec<AuditEntry>, StoreError> {
        let run = run_id.to_string();
        self.inner.call(move |pool, _| {
            let run = run.clone();
            async move {
                all(
                    &pool,
                    "SELECT body FROM audit WHERE run_id = $1 ORDER BY seq",
                    &[&run],
                    |b| from_json(|| format!("an audit entry of {run}"), b),
                )
                .await
            }
        })
    }

    fn signal(&self, run_id: &str, node_id: &str) -> Result<Option<Signal>, StoreError> {
        let what = format!("signal {run_id}/{node_id}");
        self.one(
            "SELECT body FROM signals WHERE run_id = $1 AND node_id = $2",
            &[run_id, node_id],
            move |b| from_json(|| what.clone(), b),
        )
    }

    fn annotations(&self, run_id: &str) -> Result<BTreeMap<String, Value>, StoreError> {
        let run = run_id.to_string();
        self.inner.call(move |pool, _| {
            let run = run.clone();
            async move {
                let c = pool.get().await?;
                let mut out = BTreeMap::new();
                for r in c
                    .query(
                        "SELECT key, body FROM annotations WHERE run_id = $1",
                        &[&run],
                    )
                    .await?
                {
                    let key: String = r.get(0);
                    let value = from_json(|| format!("annotation {run}/{key}"), r.get(1))?;
                    out.insert(key, value);
                }
                Ok(out)
            }
        })
    }

    fn secret(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.one("SELECT sealed FROM secrets WHERE name = $1", &[name], |b| {
            Ok(b.to_vec())
        })
    }

    fn secrets(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.inner.call(|pool, _| async move {
            let c = pool.get().await?;
            Ok(c.query(
                "SELECT name, sealed FROM secrets ORDER BY name COLLATE \"C\"",
                &[],
            )
            .await?
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, Vec<u8>>(1)))
            .collect())
        })
    }

    fn publish_package(
        &self,
        id: &str,
        content: &PackageContent,
        run_id: Option<&str>,
    ) -> Result<Published, StoreError> {
        let (id, content, run_id) = (id.to_string(), content.clone(), run_id.map(str::to_string));
        self.inner.call(move |pool, _| {
            let (id, content, run_id) = (id.clone(), content.clone(), run_id.clone());
            async move {
                let digest = content.digest();
                let mut c = pool.get().await?;
                let tx = c.transaction().await?;
                // Publishers of one package take turns: versions are consecutive.
                tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&id])
                    .await?;
                if let Some(r) = tx
                    .query_opt(
                        "SELECT version FROM packages WHERE id = $1 AND digest = $2",
                        &[&id, &digest],
                    )
                    .await?
                {
                    return Ok(Published {
                        id,
                        version: r.get::<_, i64>(0) as u64,
                        digest,
                        new: false,
                    });
                }
                let last: i64 = tx
                    .query_one(
                        "SELECT coalesce(max(version), 0) FROM packages WHERE id = $1",
                        &[&id],
                    )
                    .await?
                    .get(0);
                let version = last as u64 + 1;
                let record = Package {
                    id: id.clone(),
                    version,
                    digest: digest.clone(),
                    created_at: chrono::Utc::now(),
                    run_id,
                    content,
                };
                tx.execute(
                    "INSERT INTO packages (id, version, digest, body) VALUES ($1, $2, $3, $4)",
                    &[&id, &(version as i64), &digest, &json(&record)?],
                )
                .await?;
                tx.commit().await?;
                Ok(Published {
                    id,
                    version,
                    digest,
                    new: true,
                })
            }
        })
    }

    fn package(&self, id: &str, version: Option<u64>) -> Result<Option<Package>, StoreError> {
        let id = id.to_string();
        let found = self.inner.call(move |pool, _| {
            let id = id.clone();
            async move {
                let read = |b: &[u8]| from_json::<Package>(|| format!("package {id}"), b);
                let found =
                    match version {
                        Some(v) => {
                            all(
                                &pool,
                                "SELECT body FROM packages WHERE id = $1 AND version = $2",
                                &[&id, &(v as i64)],
                                read,
                            )
                            .await?
                        }
                        None => all(
                            &pool,
                            "SELECT body FROM packages WHERE id = $1 ORDER BY version DESC LIMIT 1",
                            &[&id],
                            read,
                        )
                        .await?,
                    };
                Ok(found.into_iter().next())
            }
        })?;
        found.map(super::verify_package).transpose()
    }

    fn packages(&self) -> Result<Vec<Package>, StoreError> {
        self.inner.call(|pool, _| async move {
            all(
                &pool,
                "SELECT body FROM packages ORDER BY id COLLATE \"C\", version",
                &[],
                |b| from_json(|| "a package".to_string(), b),
            )
            .await
        })
    }

    fn lease(&self, run_id: &str) -> Result<Option<RunLease>, StoreError> {
        let taken = self
            .inner
            .taken
            .lock()
            .map(|mut t| t.remove(run_id))
            .unwrap_or(false);
        if taken {
            let token = self
                .inner
                .held
                .lock()
                .ok()
                .and_then(|h| h.get(run_id).copied());
            if let Some(token) = token {
                return Ok(Some(RunLease::held(Box::new(Held {
                    inner: Arc::clone(&self.inner),
                    run_id: run_id.to_string(),
                    token,
                }))));
            }
        }
        let (run, owner, ttl) = (
            run_id.to_string(),
            self.inner.owner.clone(),
            self.inner.ttl.as_secs_f64(),
        );
        let token = self.inner.call(move |pool, _| {
            let (run, owner) = (run.clone(), owner.clone());
            async move {
                let c = pool.get().await?;
                Ok(c.query_opt(TAKE_LEASE, &[&run, &owner, &ttl])
                    .await?
                    .map(|r| r.get::<_, i64>(0)))
            }
        })?;
        let Some(token) = token else {
            return Ok(None);
        };
        if let Ok(mut h) = self.inner.held.lock() {
            h.insert(run_id.to_string(), token);
        }
        Ok(Some(RunLease::held(Box::new(Held {
            inner: Arc::clone(&self.inner),
            run_id: run_id.to_string(),
            token,
        }))))
    }

    fn save_plan(&self, plan: &Plan) -> Result<(), StoreError> {
        let (id, body) = (plan.plan_id.clone(), json(plan).map_err(Fault::into_store)?);
        self.inner.call(move |pool, _| {
            let (id, body) = (id.clone(), body.clone());
            async move {
                pool.get()
                    .await?
                    .execute(
                        "INSERT INTO plans (plan_id, body) VALUES ($1, $2)
                         ON CONFLICT (plan_id) DO UPDATE SET body = excluded.body",
                        &[&id, &body],
                    )
                    .await?;
                Ok(())
            }
        })
    }

    fn plan(&self, plan_id: &str) -> Result<Option<Plan>, StoreError> {
        let what = format!("plan {plan_id}");
        self.one(
            "SELECT body FROM plans WHERE plan_id = $1",
            &[plan_id],
            move |b| from_json(|| what.clone(), b),
        )
    }

    fn plans(&self) -> Result<Vec<Plan>, StoreError> {
        let mut out: Vec<Plan> = self.inner.call(|pool, _| async move {
            all(&pool, "SELECT body FROM plans", &[], |b| {
                from_json(|| "a plan".to_string(), b)
            })
            .await
        })?;
        out.sort_by_key(|p| p.created_at);
        Ok(out)
    }

    fn is_live(&self, run_id: &str) -> bool {
        let run = run_id.to_string();
        self.inner
            .call(move |pool, _| {
                let run = run.clone();
                async move {
                    Ok(pool
                        .get()
                        .await?
                        .query_opt(
                            "SELECT 1 FROM leases WHERE run_id = $1 AND owner <> '' AND expires_at > now()",
                            &[&run],
                        )
                        .await?
                        .is_some())
                }
            })
            .unwrap_or(false)
    }

    fn claim_slot(
        &self,
        key: &str,
        limit: usize,
        run: &str,
        queue: bool,
    ) -> Result<Claim, StoreError> {
        let (key, run) = (key.to_string(), run.to_string());
        self.inner.call(move |pool, _| {
            let (key, run) = (key.clone(), run.clone());
            async move {
                let mut c = pool.get().await?;
                let tx = c.transaction().await?;
                let empty = json(&Slots::default())?;
                tx.execute(
                    "INSERT INTO slots (key, body) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING",
                    &[&key, &empty],
                )
                .await?;
                let row = tx
                    .query_one("SELECT body FROM slots WHERE key = $1 FOR UPDATE", &[&key])
                    .await?;
                let before: Slots = from_json(|| format!("slots of {key}"), row.get(0))?;
                let (finished, live) = holders_state(&tx, &before).await?;
                let mut after = before.clone();
                let claim = after.claim(&run, limit, queue, |h, waiting| {
                    finished.contains(h)
                        || (waiting && !live.contains(crate::concurrency::holder_parts(h).0))
                });
                if after != before {
                    tx.execute(
                        "UPDATE slots SET body = $2 WHERE key = $1",
                        &[&key, &json(&after)?],
                    )
                    .await?;
                }
                tx.commit().await?;
                Ok(claim)
            }
        })
    }

    fn release_slot(&self, key: &str, run: &str) -> Result<(), StoreError> {
        let (key, run) = (key.to_string(), run.to_string());
        self.inner.call(move |pool, _| {
            let (key, run) = (key.clone(), run.clone());
            async move {
                let mut c = pool.get().await?;
                let tx = c.transaction().await?;
                if let Some(row) = tx
                    .query_opt("SELECT body FROM slots WHERE key = $1 FOR UPDATE", &[&key])
                    .await?
                {
                    let mut slots: Slots = from_json(|| format!("slots of {key}"), row.get(0))?;
                    slots.release(&run);
                    if slots.is_empty() {
                        tx.execute("DELETE FROM slots WHERE key = $1", &[&key])
                            .await?;
                    } else {
                        tx.execute(
                            "UPDATE slots SET body = $2 WHERE key = $1",
                            &[&key, &json(&slots)?],
                        )
                        .await?;
                    }
                }
                tx.commit().await?;
                Ok(())
            }
        })
    }

    fn shares_work(&self) -> bool {
        true
    }

    fn take_runs(&self, source: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        let (source, owner, ttl) = (
            source.to_string(),
            self.inner.owner.clone(),
            self.inner.ttl.as_secs_f64(),
        );
        let limit = limit as i64;
        let taken: Vec<(String, i64)> = self.inner.call(move |pool, _| {
            let (source, owner) = (source.clone(), owner.clone());
            async move {
                let mut c = pool.get().await?;
                let tx = c.transaction().await?;
                // Oldest first; a run another worker is taking right now is skipped, not
                // waited for.
                let rows = tx
                    .query(
                        "SELECT r.run_id FROM runs r
                          WHERE r.source = $1 AND r.status NOT IN ('succeeded', 'failed', 'cancelled')
                            AND NOT EXISTS (SELECT 1 FROM leases l WHERE l.run_id = r.run_id
                                             AND l.owner <> '' AND l.expires_at > now())
                          ORDER BY r.run_id LIMIT $2
                          FOR UPDATE OF r SKIP LOCKED",
                        &[&source, &limit],
                    )
                    .await?;
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    let run: String = r.get(0);
                    if let Some(t) = tx
                        .query_opt(
                            TAKE_LEASE,
                            &[&run, &owner, &ttl],
                        )
                        .await?
                    {
                        out.push((run, t.get::<_, i64>(0)));
                    }
                }
                tx.commit().await?;
                Ok(out)
            }
        })?;
        if let (Ok(mut held), Ok(mut mine)) = (self.inner.held.lock(), self.inner.taken.lock()) {
            for (run, token) in &taken {
                held.insert(run.clone(), *token);
                mine.insert(run.clone());
            }
        }
        Ok(taken.into_iter().map(|(r, _)| r).collect())
    }

    fn put_shared(&self, key: &str, value: &Value) -> Result<bool, StoreError> {
        let (key, body) = (key.to_string(), json(value).map_err(Fault::into_store)?);
        self.inner.call(move |pool, _| {
            let (key, body) = (key.clone(), body.clone());
            async move {
                pool.get()
                    .await?
                    .execute(
                        "INSERT INTO shared (key, body) VALUES ($1, $2)
                         ON CONFLICT (key) DO UPDATE SET body = excluded.body, at = now()",
                        &[&key, &body],
                    )
                    .await?;
                Ok(true)
            }
        })
    }

    fn take_shared(&self, key: &str, max_age: Duration) -> Result<Option<Value>, StoreError> {
        let (key, secs) = (key.to_string(), max_age.as_secs_f64());
        self.inner.call(move |pool, _| {
            let key = key.clone();
            async move {
                let row = pool
                    .get()
                    .await?
                    .query_opt(
                        "DELETE FROM shared WHERE key = $1 RETURNING body,
                                at > now() - make_interval(secs => $2)",
                        &[&key, &secs],
                    )
                    .await?;
                match row {
                    Some(r) if r.get::<_, bool>(1) => {
                        Ok(Some(from_json(|| format!("shared {key}"), r.get(0))?))
                    }
                    _ => Ok(None),
                }
            }
        })
    }

    fn first_delivery(&self, key: &str) -> Result<Option<bool>, StoreError> {
        let key = key.to_string();
        self.inner.call(move |pool, _| {
            let key = key.clone();
            async move {
                let n = pool
                    .get()
                    .await?
                    .execute(
                        "INSERT INTO deliveries (key) VALUES ($1) ON CONFLICT (key) DO NOTHING",
                        &[&key],
                    )
                    .await?;
                Ok(Some(n == 1))
            }
        })
    }

    fn slots(&self, key: &str) -> Result<Slots, StoreError> {
        let what = format!("slots of {key}");
        let found = self.one("SELECT body FROM slots WHERE key = $1", &[key], move |b| {
            from_json(|| what.clone(), b)
        })?;
        Ok(found.unwrap_or_default())
    }
}

/// Which holders and waiters of a key ended (their run, or their node, ended or is unknown),
/// and which runs a live process executes.
async fn holders_state(
    tx: &deadpool_postgres::Transaction<'_>,
    slots: &Slots,
) -> Result<(HashSet<String>, HashSet<String>), Fault> {
    let holders: Vec<&String> = slots.holders.iter().chain(&slots.queue).collect();
    let runs: Vec<&str> = holders
        .iter()
        .map(|h| crate::concurrency::holder_parts(h).0)
        .collect();
    let mut status: HashMap<String, bool> = HashMap::new();
    for r in tx
        .query(
            "SELECT run_id, body FROM runs WHERE run_id = ANY($1)",
            &[&runs],
        )
        .await?
    {
        let id: String = r.get(0);
        let rec = rows::decode_run(&|| format!("run {id}"), r.get(1))?;
        status.insert(id, rec.status.is_terminal());
    }
    let mut finished = HashSet::new();
    for h in &holders {
        let (run, node) = crate::concurrency::holder_parts(h);
        let mut gone = status.get(run).copied().unwrap_or(true);
        if let (false, Some(n)) = (gone, node) {
            gone = match tx
                .query_opt(
                    "SELECT body FROM nodes WHERE run_id = $1 AND node_id = $2",
                    &[&run, &n],
                )
                .await?
            {
                Some(r) => rows::decode_node(&|| format!("node {n} of {run}"), r.get(0))?
                    .status
                    .is_terminal(),
                None => true,
            };
        }
        if gone {
            finished.insert((*h).clone());
        }
    }
    let live = tx
        .query(
            "SELECT run_id FROM leases WHERE run_id = ANY($1) AND owner <> '' AND expires_at > now()",
            &[&runs],
        )
        .await?
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect();
    Ok((finished, live))
}

/// A PostgreSQL for tests: the server `scripts/postgres.sh` starts (once per test process),
/// or `LANDFALL_TEST_DB`'s, and a database of its own per caller.
#[doc(hidden)]
pub mod testing {
    use std::sync::OnceLock;

    /// The server's URL (its `landfall` database).
    pub fn server() -> String {
        static URL: OnceLock<String> = OnceLock::new();
        URL.get_or_init(|| {
            if let Ok(url) = std::env::var("LANDFALL_TEST_DB") {
                return url;
            }
            let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
            let target =
                std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| format!("{root}/target"));
            let out = std::process::Command::new("bash")
                .arg(format!("{root}/scripts/postgres.sh"))
                .arg("start")
                .arg(format!("{target}/postgres-test"))
                .output()
                .unwrap_or_else(|e| panic!("cannot run scripts/postgres.sh: {e}"));
            let text = String::from_utf8_lossy(&out.stdout);
            match text.lines().find_map(|l| l.strip_prefix("LANDFALL_DB=")) {
                Some(url) if out.status.success() => url.to_string(),
                _ => panic!(
                    "scripts/postgres.sh start failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
            }
        })
        .clone()
    }

    /// A new, empty database on the test server.
    pub fn database() -> String {
        let name = format!("t_{}", ulid::Ulid::new().to_string().to_lowercase());
        match super::PgStore::create_database(&server(), &name) {
            Ok(url) => url,
            Err(e) => panic!("cannot create a test database: {e}"),
        }
    }

    /// Ends the lease of `run` now, as if its holder had stopped renewing it.
    pub fn expire(url: &str, run: &str) {
        let store = match super::PgStore::open_without_schema(url) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        let run = run.to_string();
        let done = store.inner.call(move |pool, _| {
            let run = run.clone();
            async move {
                pool.get()
                    .await?
                    .execute(
                        "UPDATE leases SET expires_at = now() - interval '1 second' WHERE run_id = $1",
                        &[&run],
                    )
                    .await?;
                Ok(())
            }
        });
        if let Err(e) = done {
            panic!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn a_password_is_never_shown_wherever_the_url_keeps_it() {
        for (url, shown) in [
            (
                "postgres://landfall:s3cret@db:5432/landfall",
                "postgres://landfall:***@db:5432/landfall",
            ),
            (
                "postgresql://landfall@db/landfall?password=s3cret&sslmode=require",
                "postgresql://landfall@db/landfall?password=***&sslmode=require",
            ),
            (
                "postgres://u:p%40ss@db/x?PASSWORD=s3cret",
                "postgres://u:***@db/x?PASSWORD=***",
            ),
            ("postgres://db/landfall", "postgres://db/landfall"),
            (".landfall/state.redb", ".landfall/state.redb"),
        ] {
            assert_eq!(redacted(url), shown, "{url}");
        }
        let odd = redacted("postgres://u:s3cret@[::1/landfall");
        assert!(!odd.contains("s3cret"), "{odd}");
    }
}
