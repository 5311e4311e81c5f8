//! The SQLite store: one file in WAL mode holding keys (as SHA-256 digests) and their usage, the source
//! of truth; schema migrations; the admin operations; flushing counts; and `check`, which decides from
//! the shared counters file ([`SharedCounters`]) alone. Only this module knows about SQL.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::{Mutex, MutexGuard};
use rusqlite::{
    params, Connection, OpenFlags, OptionalExtension, Row, Transaction, TransactionBehavior,
};
use serde_json::{Map, Value};

use crate::counters::{self, Dirty, KeyEntry, KeyRef, SharedCounters, Tally};
use crate::error::{Error, Result};
use crate::gcra::RateLimit;
use crate::key::{self, Env, KeyDigest, Presented};
use crate::period::Period;
use crate::policy::{Decision, KeyPolicy, Quota, Usage};
use crate::spec::{self, KeyFilter, KeyPatch, KeyRecord, KeySpec, QuotaJson, RateJson, UsageJson};
use crate::status::Status;

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Error {
        Error::store(format!("SQLite: {e}"))
    }
}

/// Append-only: a released migration is never edited; a new schema is a new entry. `PRAGMA user_version`
/// holds how many have been applied.
const MIGRATIONS: &[&str] = &[
    // 1: keys, their stored usage, and the generation that admin changes bump.
    "CREATE TABLE keys (
        row            INTEGER PRIMARY KEY,
        id             TEXT NOT NULL UNIQUE,
        digest         BLOB NOT NULL UNIQUE,
        prefix         TEXT NOT NULL,
        env            TEXT NOT NULL,
        name           TEXT,
        plan           TEXT,
        created_at_ms  INTEGER NOT NULL,
        expires_at_ms  INTEGER,
        revoked_at_ms  INTEGER,
        revoked_reason TEXT,
        quota_limit    INTEGER,
        quota_period   TEXT,
        rate_limit     INTEGER,
        rate_window_ms INTEGER,
        rate_burst     INTEGER,
        meta           TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX keys_plan ON keys(plan);
    CREATE TABLE usage (
        key_row         INTEGER PRIMARY KEY REFERENCES keys(row) ON DELETE CASCADE,
        period_start_ms INTEGER NOT NULL,
        used            INTEGER NOT NULL,
        total           INTEGER NOT NULL,
        last_used_at_ms INTEGER,
        rate_tat_ns     INTEGER NOT NULL
    );
    CREATE TABLE meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO meta (name, value) VALUES ('generation', 0);",
];

pub const DEFAULT_LIFETIME_MS: i64 = 365 * 86_400_000;
pub const DEFAULT_RATE: RateLimit = RateLimit {
    limit: 60,
    window_ms: 60_000,
    burst: 60,
};

#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Counts are written to the database at most this often (and on close).
    pub flush_interval: Duration,
    /// Lifetime of a key created without `expires_at_ms`; `None`: such keys never expire.
    pub default_lifetime_ms: Option<i64>,
    /// Rate limit of a key created without `rate_limit`; `None`: no rate limit.
    pub default_rate: Option<RateLimit>,
    /// How long a write waits for another process's write lock before failing with `MS_ERR_STORE`.
    pub busy_timeout: Duration,
    /// When counts reach the database.
    pub durability: Durability,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            flush_interval: Duration::from_secs(1),
            default_lifetime_ms: Some(DEFAULT_LIFETIME_MS),
            default_rate: Some(DEFAULT_RATE),
            busy_timeout: Duration::from_secs(5),
            durability: Durability::Batched,
        }
    }
}

struct Db {
    conn: Connection,
}

/// The database connection of one process. SQLite must never be used across `fork()`: a child gets a
/// fresh slot (and a fresh lock, in case another thread held the parent's) on first use.
struct DbSlot {
    fork_generation: u64,
    db: Mutex<Option<Db>>,
}

static FORK_GENERATION: AtomicU64 = AtomicU64::new(0);
static ATFORK: Once = Once::new();

extern "C" fn after_fork_in_child() {
    FORK_GENERATION.fetch_add(1, Ordering::SeqCst);
}

/// The answer to a check: the decision and the key it matched, if any.
#[derive(Debug)]
pub struct Checked {
    pub decision: Decision,
    pub key: Option<KeyRef>,
}

/// The answer of [`Store::create_key`]: the plaintext key (shown once) and the record.
#[derive(Debug)]
pub struct Created {
    pub key: String,
    pub record: KeyRecord,
}

impl Created {
    pub fn to_json(&self) -> String {
        self.record.to_json_with_key(&self.key)
    }
}

/// How counts reach the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Counts are in the shared counters file at once (they survive any process crash) and in the
    /// database at most one flush interval later (what a power loss can take).
    Batched,
    /// Every admitted check is also written to the database in its own transaction before it returns.
    Strict,
}

/// An open store. Safe to share between threads (`Arc<Store>`), and across `fork()`.
pub struct Store {
    path: PathBuf,
    counters_path: PathBuf,
    options: StoreOptions,
    db: ArcSwap<DbSlot>,
    shared: ArcSwap<SharedCounters>,
}

impl Store {
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        Store::open_with(path, StoreOptions::default())
    }

    /// Opens or creates the store at `path` (a new file gets mode 0600), migrating an older schema, and
    /// maps its shared counters file (built from the database if missing, damaged or from another boot).
    pub fn open_with(path: impl AsRef<Path>, options: StoreOptions) -> Result<Store> {
        ATFORK.call_once(|| unsafe {
            libc::pthread_atfork(None, None, Some(after_fork_in_child));
        });
        let path = path.as_ref().to_path_buf();
        let explain = |e: Error| Error {
            status: e.status,
            message: format!("cannot open store {}: {}", path.display(), e.message),
        };
        let mut conn = open_connection(&path, options.busy_timeout).map_err(explain)?;
        let counters_path = counters::path_for(&path);
        let shared = map_counters(&mut conn, &path, &counters_path).map_err(explain)?;
        Ok(Store {
            path: path.clone(),
            counters_path,
            options,
            db: ArcSwap::from_pointee(DbSlot {
                fork_generation: FORK_GENERATION.load(Ordering::SeqCst),
                db: Mutex::new(Some(Db { conn })),
            }),
            shared: ArcSwap::from_pointee(shared),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Decides one request. `key` is the raw header value (`None` when absent); `now_ms` is Unix ms.
    /// Touches no database and makes no system call unless a flush is due.
    pub fn check(&self, key: Option<&[u8]>, now_ms: i64) -> Result<Checked> {
        spec::check_time_ms("now_ms", now_ms)?;
        let candidate = match key::classify(key) {
            Presented::Missing => return Ok(no_key(Status::ApiKeyMissing)),
            Presented::Malformed => return Ok(no_key(Status::ApiKeyInvalid)),
            Presented::Candidate(c) => c,
        };
        let digest = key::digest(candidate);
        let mut shared = self.counters()?;
        let interval_ns = self.options.flush_interval.as_nanos() as u64;
        if shared.claim_flush(interval_ns) {
            self.flush_counters(&shared)?;
            if shared.is_superseded() {
                shared = self.counters()?;
            }
        }
        let Some((decision, key)) = shared.admit(&digest, now_ms) else {
            return Ok(no_key(Status::ApiKeyInvalid));
        };
        if self.options.durability == Durability::Strict && decision.status == Status::Ok {
            let mut db = self.db()?;
            write_counts(&mut db.conn, &[shared.dirty_one(&key)]).map_err(|e| {
                Error::store(format!(
                    "cannot write the count to {}: {}",
                    self.path.display(),
                    e.message
                ))
            })?;
        }
        Ok(Checked {
            decision,
            key: Some(key),
        })
    }

    /// The current counters file; maps the new one if another process replaced it.
    fn counters(&self) -> Result<arc_swap::Guard<Arc<SharedCounters>>> {
        let shared = self.shared.load();
        if !shared.is_superseded() {
            return Ok(shared);
        }
        drop(shared);
        let mut db = self.db()?;
        let fresh = map_counters(&mut db.conn, &self.path, &self.counters_path)?;
        self.shared.store(Arc::new(fresh));
        Ok(self.shared.load())
    }

    /// This process's database connection, opened again after a fork.
    fn db(&self) -> Result<parking_lot::MappedMutexGuard<'_, Db>> {
        let generation = FORK_GENERATION.load(Ordering::SeqCst);
        let mut slot = self.db.load_full();
        if slot.fork_generation != generation {
            // The parent's connection is left alone (never used, never closed) in the child.
            std::mem::forget(Arc::clone(&slot));
            let fresh = Arc::new(DbSlot {
                fork_generation: generation,
                db: Mutex::new(None),
            });
            self.db.store(fresh.clone());
            slot = fresh;
        }
        // The guard borrows the slot, which lives as long as `self` holds it or it was forgotten.
        let slot: &DbSlot = unsafe { &*Arc::as_ptr(&slot) };
        let mut guard = slot.db.lock();
        if guard.is_none() {
            let conn = open_connection(&self.path, self.options.busy_timeout)?;
            *guard = Some(Db { conn });
        }
        Ok(MutexGuard::map(guard, |db| {
            db.as_mut().expect("opened above")
        }))
    }

    /// Writes every count not yet in the database in one transaction, and brings the counters file up to
    /// date with admin changes another process committed but did not finish applying.
    pub fn flush(&self) -> Result<()> {
        let shared = self.counters()?;
        self.flush_counters(&shared)
    }

    fn flush_counters(&self, shared: &SharedCounters) -> Result<()> {
        let mut db = self.db()?;
        let failed = |e: Error| {
            Error::store(format!(
                "cannot write usage counts to {}: {}",
                self.path.display(),
                e.message
            ))
        };
        let dirty = shared.dirty();
        if !dirty.is_empty() {
            write_counts(&mut db.conn, &dirty).map_err(failed)?;
            shared.mark_flushed(&dirty);
        }
        if generation(&db.conn)? != shared.generation() {
            resync(&mut db.conn, shared)?;
        }
        if shared.is_replaced() {
            // Deleted or replaced under us: every process mapping this one moves to the file at the path
            // (rebuilt from the database, which now has these counts) on its next check.
            shared.supersede();
        }
        Ok(())
    }

    /// Flushes the counts and closes the file.
    pub fn close(self) -> Result<()> {
        self.flush()
    }

    pub fn create_key(&self, spec: &KeySpec, now_ms: i64) -> Result<Created> {
        spec::check_time_ms("now_ms", now_ms)?;
        let (plaintext, env) = match &spec.key {
            Some(imported) => {
                key::validate_import(imported)?;
                let env = match (spec.env, key::env_of(imported)) {
                    (Some(asked), Some(shaped)) if asked != shaped => {
                        return Err(Error::invalid(format!(
                            "env {:?} does not match the imported key's prefix ms_{}_",
                            asked.as_str(),
                            shaped.as_str()
                        )))
                    }
                    (asked, shaped) => asked.or(shaped).unwrap_or(Env::Live),
                };
                (imported.clone(), env)
            }
            None => {
                let env = spec.env.unwrap_or(Env::Live);
                (key::generate(env)?, env)
            }
        };
        let default_expiry = self
            .options
            .default_lifetime_ms
            .map(|l| now_ms.saturating_add(l));
        let expires_at_ms = spec.expires_at_ms.clone().or(default_expiry);
        let rate = spec.rate_limit.clone().or(self.options.default_rate);
        let id = format!(
            "key_{}",
            String::from_utf8(key::random_base62(20)?).expect("base62 is ASCII")
        );
        let meta = Value::Object(spec.meta.clone().unwrap_or_default()).to_string();

        self.admin(|tx| {
            let inserted = tx.execute(
                "INSERT INTO keys (id, digest, prefix, env, name, plan, created_at_ms, expires_at_ms,
                                   quota_limit, quota_period, rate_limit, rate_window_ms, rate_burst, meta)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                params![
                    id,
                    key::digest(plaintext.as_bytes()).to_vec(),
                    key::display_prefix(&plaintext),
                    env.as_str(),
                    spec.name,
                    spec.plan,
                    now_ms,
                    expires_at_ms,
                    spec.quota.map(|q| q.limit),
                    spec.quota.map(|q| q.period.as_str()),
                    rate.map(|r| r.limit),
                    rate.map(|r| r.window_ms),
                    rate.map(|r| r.burst),
                    meta,
                ],
            );
            match inserted {
                Err(rusqlite::Error::SqliteFailure(e, Some(msg)))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation && msg.contains("digest") =>
                {
                    Err(Error::invalid("this key is already in the store"))
                }
                other => other.map(|_| vec![tx.last_insert_rowid()]).map_err(Error::from),
            }
        })?;
        let record = self.get_key(&id)?;
        Ok(Created {
            key: plaintext,
            record,
        })
    }

    pub fn get_key(&self, id: &str) -> Result<KeyRecord> {
        let db = self.db()?;
        let record = db
            .conn
            .prepare_cached(&format!("{RECORD_SELECT} WHERE k.id = ?1"))?
            .query_row([id], record_of)
            .optional()?;
        let record = record.ok_or_else(|| Error::not_found(format!("no key with id {id:?}")))?;
        Ok(self.with_live_usage(record?))
    }

    pub fn list_keys(&self, filter: &KeyFilter) -> Result<Vec<KeyRecord>> {
        let db = self.db()?;
        let mut stmt = db.conn.prepare_cached(&format!(
            "{RECORD_SELECT} WHERE (?1 IS NULL OR k.plan = ?1) AND (?2 IS NULL OR k.env = ?2) ORDER BY k.row"
        ))?;
        let rows = stmt.query_map(params![filter.plan, filter.env.map(Env::as_str)], record_of)?;
        let mut out = Vec::new();
        for row in rows {
            out.push(self.with_live_usage(row??));
        }
        Ok(out)
    }

    pub fn update_key(&self, id: &str, patch: &KeyPatch) -> Result<KeyRecord> {
        self.admin(|tx| {
            let row = slot_of(tx, id)?;
            let set = |column: &str, value: &dyn rusqlite::ToSql| -> Result<()> {
                tx.execute(
                    &format!("UPDATE keys SET {column} = ?1 WHERE row = ?2"),
                    params![value, row],
                )?;
                Ok(())
            };
            if let Some(name) = patch.name.clone().into_change() {
                set("name", &name)?;
            }
            if let Some(plan) = patch.plan.clone().into_change() {
                set("plan", &plan)?;
            }
            if let Some(expires) = patch.expires_at_ms.clone().into_change() {
                set("expires_at_ms", &expires)?;
            }
            if let Some(quota) = patch.quota.clone().into_change() {
                set("quota_limit", &quota.map(|q| q.limit))?;
                set("quota_period", &quota.map(|q| q.period.as_str()))?;
            }
            if let Some(rate) = patch.rate_limit.clone().into_change() {
                set("rate_limit", &rate.map(|r| r.limit))?;
                set("rate_window_ms", &rate.map(|r| r.window_ms))?;
                set("rate_burst", &rate.map(|r| r.burst))?;
            }
            if let Some(meta) = patch.meta.clone().into_change() {
                set("meta", &Value::Object(meta.unwrap_or_default()).to_string())?;
            }
            Ok(vec![row])
        })?;
        self.get_key(id)
    }

    /// Revokes a key; it is refused from the next check on. Revoking a revoked key keeps the first
    /// revocation's time and reason.
    pub fn revoke_key(&self, id: &str, now_ms: i64, reason: Option<&str>) -> Result<KeyRecord> {
        spec::check_time_ms("now_ms", now_ms)?;
        self.admin(|tx| {
            let row = slot_of(tx, id)?;
            tx.execute(
                "UPDATE keys SET revoked_at_ms = ?1, revoked_reason = ?2 WHERE row = ?3 AND revoked_at_ms IS NULL",
                params![now_ms, reason.unwrap_or("manual"), row],
            )?;
            Ok(vec![row])
        })?;
        self.get_key(id)
    }

    /// Runs an admin change in one write transaction that also bumps the generation, and applies it to
    /// the counters file before committing, so every process sees it from its next check on. `change`
    /// returns the rows it changed. If anything fails after the file was touched, the file's generation
    /// no longer matches the database and the next flush (in any process) brings it back in line.
    fn admin(&self, change: impl FnOnce(&Transaction) -> Result<Vec<i64>>) -> Result<()> {
        let mut db = self.db()?;
        let tx = db
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let rows = change(&tx)?;
        tx.execute(
            "UPDATE meta SET value = value + 1 WHERE name = 'generation'",
            [],
        )?;
        let generation = generation(&tx)?;
        let mut shared = self.shared.load_full();
        if shared.is_superseded() {
            shared = Arc::new(map_counters_locked(
                &tx,
                &self.path,
                &self.counters_path,
                None,
            )?);
            self.shared.store(shared.clone());
        }
        shared.set_generation(-1);
        for row in rows {
            let entry = load_entries(&tx, Some(row))?
                .pop()
                .ok_or_else(|| Error::internal("a changed key vanished"))?;
            if shared.upsert(&entry).is_err() {
                shared = Arc::new(map_counters_locked(
                    &tx,
                    &self.path,
                    &self.counters_path,
                    Some(&shared),
                )?);
                self.shared.store(shared.clone());
                shared
                    .upsert(&entry)
                    .map_err(|_| Error::internal("a rebuilt counters file is full"))?;
            }
        }
        tx.commit()?;
        shared.set_generation(generation);
        Ok(())
    }

    /// A record's usage as counted in the shared file (the database lags it by up to a flush interval).
    fn with_live_usage(&self, (digest, mut record): (KeyDigest, KeyRecord)) -> KeyRecord {
        if let Some(t) = self.shared.load().tally(&digest) {
            record.usage = UsageJson {
                period_start_ms: t.usage.period_start_ms,
                used: t.usage.used,
                total: t.total,
                last_used_at_ms: t.last_used_at_ms,
            };
        }
        record
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Counts must survive a handle dropped without close(); a failure here has no caller to tell.
        let _ = self.flush();
    }
}

impl<T> spec::Field<T> {
    /// `None`: leave as is; `Some(None)`: clear; `Some(Some(v))`: set.
    fn into_change(self) -> Option<Option<T>> {
        match self {
            spec::Field::Absent => None,
            spec::Field::Null => Some(None),
            spec::Field::Set(v) => Some(Some(v)),
        }
    }
}

fn no_key(status: Status) -> Checked {
    Checked {
        decision: Decision::without_key(status),
        key: None,
    }
}

fn open_connection(path: &Path, busy_timeout: Duration) -> Result<Connection> {
    if path.as_os_str().is_empty() {
        return Err(Error::invalid("the path is empty"));
    }
    if !path.exists() {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(Error::store(format!(
                    "directory {} does not exist",
                    dir.display()
                )));
            }
        }
        // Create it ourselves so that it is private from the first byte; SQLite gives its WAL and shared
        // memory files the same mode.
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| Error::store(format!("cannot create the file: {e}")))?;
    } else if path.is_dir() {
        return Err(Error::store("it is a directory"));
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(busy_timeout)?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| Error::store(describe_open_failure(e)))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(Error::store(format!(
            "cannot use WAL mode (journal mode is {mode})"
        )));
    }
    conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")?;
    migrate(&mut conn)?;
    Ok(conn)
}

fn describe_open_failure(e: rusqlite::Error) -> String {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => {
            "not an ms-auth store (file is not a database)".to_string()
        }
        Some(rusqlite::ErrorCode::ReadOnly) => "the file is read-only".to_string(),
        _ => e.to_string(),
    }
}

/// Applies the migrations this file lacks, each in its own write transaction (which also proves the file is
/// writable). A file written by a newer ms-auth is refused rather than misread.
fn migrate(conn: &mut Connection) -> Result<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| Error::store(describe_open_failure(e)))?;
    let version: usize = tx.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    if version > MIGRATIONS.len() {
        return Err(Error::store(format!(
            "the file has schema version {version}, newer than this ms-auth {} understands ({}); upgrade ms-auth",
            env!("CARGO_PKG_VERSION"),
            MIGRATIONS.len()
        )));
    }
    for migration in &MIGRATIONS[version..] {
        tx.execute_batch(migration)?;
    }
    tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)?;
    tx.commit()
        .map_err(|e| Error::store(describe_open_failure(e)))?;
    Ok(())
}

pub fn schema_version() -> usize {
    MIGRATIONS.len()
}

fn generation(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row(
        "SELECT value FROM meta WHERE name = 'generation'",
        [],
        |r| r.get(0),
    )?)
}

/// Writes absolute counts (so writing the same counts twice, or from two processes, changes nothing),
/// never moving a count back.
fn write_counts(conn: &mut Connection, counts: &[Dirty]) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO usage (key_row, period_start_ms, used, total, last_used_at_ms, rate_tat_ns)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE EXISTS (SELECT 1 FROM keys WHERE row = ?1)
             ON CONFLICT (key_row) DO UPDATE SET
                used = CASE WHEN excluded.period_start_ms > period_start_ms THEN excluded.used
                            WHEN excluded.period_start_ms = period_start_ms THEN MAX(used, excluded.used)
                            ELSE used END,
                period_start_ms = MAX(period_start_ms, excluded.period_start_ms),
                total = MAX(total, excluded.total),
                last_used_at_ms = MAX(COALESCE(last_used_at_ms, 0), COALESCE(excluded.last_used_at_ms, 0)),
                rate_tat_ns = MAX(rate_tat_ns, excluded.rate_tat_ns)",
        )?;
        for d in counts {
            let t = &d.tally;
            stmt.execute(params![
                d.row,
                t.usage.period_start_ms,
                t.usage.used,
                t.total,
                t.last_used_at_ms,
                t.usage.tat_ns
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Every key (or the one at `row`) as the counters file needs it, with its stored counts.
fn load_entries(conn: &Connection, row: Option<i64>) -> Result<Vec<KeyEntry>> {
    let mut stmt = conn.prepare_cached(
        "SELECT k.row, k.id, k.digest, k.plan, k.expires_at_ms, k.revoked_at_ms, k.quota_limit, k.quota_period,
                k.rate_limit, k.rate_window_ms, k.rate_burst,
                u.period_start_ms, u.used, u.total, u.last_used_at_ms, u.rate_tat_ns
         FROM keys k LEFT JOIN usage u ON u.key_row = k.row WHERE ?1 IS NULL OR k.row = ?1",
    )?;
    let mut rows = stmt.query([row])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(KeyEntry {
            row: row.get(0)?,
            id: row.get(1)?,
            digest: digest_of(row, 2)?,
            plan: row.get(3)?,
            policy: KeyPolicy {
                revoked: row.get::<_, Option<i64>>(5)?.is_some(),
                expires_at_ms: row.get(4)?,
                quota: quota_of(row, 6)?,
                rate: rate_of(row, 8)?,
            },
            tally: tally_of(row, 11)?,
        });
    }
    Ok(out)
}

fn digest_of(row: &Row, at: usize) -> Result<KeyDigest> {
    let digest: Vec<u8> = row.get(at)?;
    digest
        .try_into()
        .map_err(|_| Error::store("corrupt store: a key digest is not 32 bytes"))
}

/// Maps the counters file, building it under the database's write lock when it is missing or unusable.
fn map_counters(conn: &mut Connection, db_path: &Path, path: &Path) -> Result<SharedCounters> {
    if let Some(existing) = SharedCounters::open_existing(path)? {
        if existing.generation() == generation(conn)? {
            return Ok(existing);
        }
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mapped = map_counters_locked(&tx, db_path, path, None)?;
    tx.commit()?;
    Ok(mapped)
}

/// With the write lock held: maps the counters file if it is usable (bringing its keys up to date), or
/// builds a new one from the database. With `grow_from`, always builds a larger one, carrying over the
/// counts of the file it replaces, including those charged while the new one was being built.
fn map_counters_locked(
    tx: &Transaction,
    db_path: &Path,
    path: &Path,
    grow_from: Option<&SharedCounters>,
) -> Result<SharedCounters> {
    let generation = generation(tx)?;
    if grow_from.is_none() {
        if let Some(existing) = SharedCounters::open_existing(path)? {
            if existing.generation() != generation {
                resync_entries(&load_entries(tx, None)?, &existing, generation)?;
            }
            return Ok(existing);
        }
    }
    let mut entries = load_entries(tx, None)?;
    let before = grow_from.map(|old| old.snapshot()).unwrap_or_default();
    let carried: HashMap<KeyDigest, Tally> = before.iter().copied().collect();
    for entry in &mut entries {
        if let Some(t) = carried.get(&entry.digest) {
            entry.tally = *t;
        }
    }
    // More room than the keys need now, so that growing is rare.
    let room = if grow_from.is_some() {
        entries.len() * 2
    } else {
        entries.len()
    };
    let built = SharedCounters::build(path, &entries, room, generation, db_path)?;
    if let Some(old) = grow_from {
        old.supersede();
        // Checks that read the old file just before it was superseded finish within microseconds.
        std::thread::sleep(Duration::from_millis(2));
        old.carry_late_counts(&before, &built);
    }
    Ok(built)
}

/// Applies to the counters file every key whose policy there differs from the database's.
fn resync(conn: &mut Connection, shared: &SharedCounters) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let generation = generation(&tx)?;
    resync_entries(&load_entries(&tx, None)?, shared, generation)?;
    tx.commit()?;
    Ok(())
}

fn resync_entries(entries: &[KeyEntry], shared: &SharedCounters, generation: i64) -> Result<()> {
    shared.set_generation(-1);
    for entry in entries {
        if !shared.holds(entry) && shared.upsert(entry).is_err() {
            // Full: mark it superseded so that the next check of every process maps a rebuilt one.
            shared.supersede();
            return Ok(());
        }
    }
    shared.set_generation(generation);
    Ok(())
}

fn slot_of(tx: &Transaction, id: &str) -> Result<i64> {
    tx.query_row("SELECT row FROM keys WHERE id = ?1", [id], |r| r.get(0))
        .optional()?
        .ok_or_else(|| Error::not_found(format!("no key with id {id:?}")))
}

fn quota_of(row: &Row, at: usize) -> Result<Option<Quota>> {
    let limit: Option<i64> = row.get(at)?;
    let period: Option<String> = row.get(at + 1)?;
    match (limit, period) {
        (Some(limit), Some(period)) => Ok(Some(Quota {
            limit,
            period: Period::parse(&period).map_err(|_| corrupt("quota_period"))?,
        })),
        (None, None) => Ok(None),
        _ => Err(corrupt("quota")),
    }
}

fn rate_of(row: &Row, at: usize) -> Result<Option<RateLimit>> {
    let fields: (Option<i64>, Option<i64>, Option<i64>) =
        (row.get(at)?, row.get(at + 1)?, row.get(at + 2)?);
    match fields {
        (Some(limit), Some(window_ms), Some(burst)) => spec::checked_rate(limit, window_ms, burst)
            .map(Some)
            .map_err(|_| corrupt("rate limit")),
        (None, None, None) => Ok(None),
        _ => Err(corrupt("rate limit")),
    }
}

fn tally_of(row: &Row, at: usize) -> Result<Tally> {
    Ok(Tally {
        usage: Usage {
            period_start_ms: row.get::<_, Option<i64>>(at)?.unwrap_or(0),
            used: row.get::<_, Option<i64>>(at + 1)?.unwrap_or(0),
            tat_ns: row.get::<_, Option<i64>>(at + 4)?.unwrap_or(0),
        },
        total: row.get::<_, Option<i64>>(at + 2)?.unwrap_or(0),
        last_used_at_ms: row.get(at + 3)?,
    })
}

fn corrupt(what: &str) -> Error {
    Error::store(format!("corrupt store: a key's {what} is inconsistent"))
}

const RECORD_SELECT: &str = "SELECT k.digest, k.id, k.prefix, k.env, k.name, k.plan, k.created_at_ms, k.expires_at_ms,
        k.revoked_at_ms, k.revoked_reason, k.quota_limit, k.quota_period, k.rate_limit, k.rate_window_ms,
        k.rate_burst, k.meta, u.period_start_ms, u.used, u.total, u.last_used_at_ms, u.rate_tat_ns
     FROM keys k LEFT JOIN usage u ON u.key_row = k.row";

/// Reads a row of [`RECORD_SELECT`]; the outer `rusqlite::Result` is SQLite's, the inner one ours.
fn record_of(row: &Row) -> rusqlite::Result<Result<(KeyDigest, KeyRecord)>> {
    let build = || -> Result<(KeyDigest, KeyRecord)> {
        let meta: String = row.get(15)?;
        let meta: Map<String, Value> = serde_json::from_str(&meta).map_err(|_| corrupt("meta"))?;
        let tally = tally_of(row, 16)?;
        let record = KeyRecord {
            id: row.get(1)?,
            prefix: row.get(2)?,
            env: row.get(3)?,
            name: row.get(4)?,
            plan: row.get(5)?,
            created_at_ms: row.get(6)?,
            expires_at_ms: row.get(7)?,
            revoked_at_ms: row.get(8)?,
            revoked_reason: row.get(9)?,
            quota: quota_of(row, 10)?.map(QuotaJson::from),
            rate_limit: rate_of(row, 12)?.map(RateJson::from),
            usage: UsageJson {
                period_start_ms: tally.usage.period_start_ms,
                used: tally.usage.used,
                total: tally.total,
                last_used_at_ms: tally.last_used_at_ms,
            },
            meta,
        };
        Ok((digest_of(row, 0)?, record))
    };
    Ok(build())
}
