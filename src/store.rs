//! The SQLite store: one file in WAL mode holding keys (as SHA-256 digests) and their stored usage;
//! schema migrations; the admin operations; and `check`, which decides a request from an in-memory
//! index of the keys and the [`Counters`]. Only this module knows about SQL.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use rusqlite::{
    params, Connection, OpenFlags, OptionalExtension, Row, Transaction, TransactionBehavior,
};
use serde_json::{Map, Value};

use crate::counters::{Counters, Delta, Slot, Tally};
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
    /// Counts are written to the file at most this often (and on close).
    pub flush_interval: Duration,
    /// Lifetime of a key created without `expires_at_ms`; `None`: such keys never expire.
    pub default_lifetime_ms: Option<i64>,
    /// Rate limit of a key created without `rate_limit`; `None`: no rate limit.
    pub default_rate: Option<RateLimit>,
    /// How long a write waits for another process's write lock before failing with `MS_ERR_STORE`.
    pub busy_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            flush_interval: Duration::from_secs(1),
            default_lifetime_ms: Some(DEFAULT_LIFETIME_MS),
            default_rate: Some(DEFAULT_RATE),
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// A key as the hot path sees it.
#[derive(Debug)]
pub struct IndexedKey {
    pub slot: Slot,
    pub id: String,
    pub plan: Option<String>,
    pub policy: KeyPolicy,
    stored: Tally,
}

#[derive(Default)]
struct KeyIndex {
    by_digest: HashMap<KeyDigest, Arc<IndexedKey>>,
    generation: i64,
}

struct Db {
    conn: Connection,
    data_version: i64,
}

/// The answer to a check: the decision and the key it matched, if any.
#[derive(Debug)]
pub struct Checked {
    pub decision: Decision,
    pub key: Option<Arc<IndexedKey>>,
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

/// An open store. Safe to share between threads (`Arc<Store>`).
pub struct Store {
    path: PathBuf,
    options: StoreOptions,
    db: Mutex<Db>,
    index: RwLock<Arc<KeyIndex>>,
    counters: Counters,
    last_flush: Mutex<Instant>,
}

impl Store {
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        Store::open_with(path, StoreOptions::default())
    }

    /// Opens or creates the store at `path` (a new file gets mode 0600), migrating an older schema.
    pub fn open_with(path: impl AsRef<Path>, options: StoreOptions) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        let conn = open_connection(&path, options.busy_timeout).map_err(|e| {
            Error::store(format!(
                "cannot open store {}: {}",
                path.display(),
                e.message
            ))
        })?;
        let store = Store {
            path,
            options,
            db: Mutex::new(Db {
                conn,
                data_version: 0,
            }),
            index: RwLock::new(Arc::new(KeyIndex::default())),
            counters: Counters::new(),
            last_flush: Mutex::new(Instant::now()),
        };
        {
            let mut db = store.db.lock();
            db.data_version = data_version(&db.conn)?;
            store.reload(&db.conn)?;
        }
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Decides one request. `key` is the raw header value (`None` when absent); `now_ms` is Unix ms.
    pub fn check(&self, key: Option<&[u8]>, now_ms: i64) -> Result<Checked> {
        spec::check_time_ms("now_ms", now_ms)?;
        let candidate = match key::classify(key) {
            Presented::Missing => return Ok(no_key(Status::ApiKeyMissing)),
            Presented::Malformed => return Ok(no_key(Status::ApiKeyInvalid)),
            Presented::Candidate(c) => c,
        };
        self.flush_if_due()?;
        let index = self.current_index()?;
        let Some(found) = index.by_digest.get(&key::digest(candidate)) else {
            return Ok(no_key(Status::ApiKeyInvalid));
        };
        let decision = self
            .counters
            .admit(found.slot, || found.stored, &found.policy, now_ms);
        Ok(Checked {
            decision,
            key: Some(found.clone()),
        })
    }

    /// The key index, reloaded first if another connection (the CLI, another process) changed the keys.
    fn current_index(&self) -> Result<Arc<KeyIndex>> {
        let mut db = self.db.lock();
        let version = data_version(&db.conn)?;
        if version != db.data_version {
            db.data_version = version;
            let generation: i64 = db.conn.query_row(
                "SELECT value FROM meta WHERE name = 'generation'",
                [],
                |r| r.get(0),
            )?;
            if generation != self.index.read().generation {
                self.reload(&db.conn)?;
            }
        }
        Ok(self.index.read().clone())
    }

    fn reload(&self, conn: &Connection) -> Result<()> {
        let generation: i64 = conn.query_row(
            "SELECT value FROM meta WHERE name = 'generation'",
            [],
            |r| r.get(0),
        )?;
        let mut stmt = conn.prepare_cached(
            "SELECT k.row, k.id, k.digest, k.plan, k.expires_at_ms, k.revoked_at_ms, k.quota_limit, k.quota_period,
                    k.rate_limit, k.rate_window_ms, k.rate_burst,
                    u.period_start_ms, u.used, u.total, u.last_used_at_ms, u.rate_tat_ns
             FROM keys k LEFT JOIN usage u ON u.key_row = k.row",
        )?;
        let mut by_digest = HashMap::new();
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let digest: Vec<u8> = row.get(2)?;
            let digest: KeyDigest = digest
                .try_into()
                .map_err(|_| Error::store("corrupt store: a key digest is not 32 bytes"))?;
            let key = IndexedKey {
                slot: row.get(0)?,
                id: row.get(1)?,
                plan: row.get(3)?,
                policy: KeyPolicy {
                    revoked: row.get::<_, Option<i64>>(5)?.is_some(),
                    expires_at_ms: row.get(4)?,
                    quota: quota_of(row, 6)?,
                    rate: rate_of(row, 8)?,
                },
                stored: tally_of(row, 11)?,
            };
            by_digest.insert(digest, Arc::new(key));
        }
        *self.index.write() = Arc::new(KeyIndex {
            by_digest,
            generation,
        });
        Ok(())
    }

    fn flush_if_due(&self) -> Result<()> {
        let Some(mut last) = self.last_flush.try_lock() else {
            return Ok(());
        };
        if last.elapsed() < self.options.flush_interval {
            return Ok(());
        }
        self.flush()?;
        *last = Instant::now();
        Ok(())
    }

    /// Writes the counts not yet in the file, in one transaction. On failure they stay counted in memory
    /// and are written by a later flush.
    pub fn flush(&self) -> Result<()> {
        let deltas = self.counters.take_unflushed();
        if deltas.is_empty() {
            return Ok(());
        }
        let mut db = self.db.lock();
        let written = write_deltas(&mut db.conn, &deltas);
        if let Err(e) = written {
            self.counters.restore(&deltas);
            return Err(Error::store(format!(
                "cannot write usage counts to {}: {}",
                self.path.display(),
                e.message
            )));
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
                other => other.map(|_| ()).map_err(Error::from),
            }
        })?;
        let record = self.get_key(&id)?;
        Ok(Created {
            key: plaintext,
            record,
        })
    }

    pub fn get_key(&self, id: &str) -> Result<KeyRecord> {
        let db = self.db.lock();
        let record = db
            .conn
            .prepare_cached(&format!("{RECORD_SELECT} WHERE k.id = ?1"))?
            .query_row([id], record_of)
            .optional()?;
        let record = record.ok_or_else(|| Error::not_found(format!("no key with id {id:?}")))?;
        Ok(self.with_live_usage(record?))
    }

    pub fn list_keys(&self, filter: &KeyFilter) -> Result<Vec<KeyRecord>> {
        let db = self.db.lock();
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
            Ok(())
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
            Ok(())
        })?;
        self.get_key(id)
    }

    /// Runs an admin change in one transaction that also bumps the generation, then reloads the index so
    /// the change is in force on this handle's next check (other handles see the new generation).
    fn admin(&self, change: impl FnOnce(&Transaction) -> Result<()>) -> Result<()> {
        let mut db = self.db.lock();
        let tx = db
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        change(&tx)?;
        tx.execute(
            "UPDATE meta SET value = value + 1 WHERE name = 'generation'",
            [],
        )?;
        tx.commit()?;
        self.reload(&db.conn)
    }

    /// A record's usage with the counts of this process that are not yet in the file.
    fn with_live_usage(&self, (slot, mut record): (Slot, KeyRecord)) -> KeyRecord {
        if let Some(t) = self.counters.tally(slot) {
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

fn data_version(conn: &Connection) -> Result<i64> {
    Ok(conn
        .prepare_cached("PRAGMA data_version")?
        .query_row([], |r| r.get(0))?)
}

fn write_deltas(conn: &mut Connection, deltas: &[Delta]) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut stmt = tx.prepare_cached(
            "INSERT INTO usage (key_row, period_start_ms, used, total, last_used_at_ms, rate_tat_ns)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE EXISTS (SELECT 1 FROM keys WHERE row = ?1)
             ON CONFLICT (key_row) DO UPDATE SET
                used = CASE WHEN period_start_ms = excluded.period_start_ms THEN used + excluded.used
                            WHEN period_start_ms < excluded.period_start_ms THEN excluded.used
                            ELSE used END,
                period_start_ms = MAX(period_start_ms, excluded.period_start_ms),
                total = total + excluded.total,
                last_used_at_ms = MAX(COALESCE(last_used_at_ms, 0), COALESCE(excluded.last_used_at_ms, 0)),
                rate_tat_ns = MAX(rate_tat_ns, excluded.rate_tat_ns)",
        )?;
        for d in deltas {
            stmt.execute(params![
                d.slot,
                d.period_start_ms,
                d.used,
                d.total,
                d.last_used_at_ms,
                d.tat_ns
            ])?;
        }
    }
    tx.commit()?;
    Ok(())
}

fn slot_of(tx: &Transaction, id: &str) -> Result<Slot> {
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

const RECORD_SELECT: &str = "SELECT k.row, k.id, k.prefix, k.env, k.name, k.plan, k.created_at_ms, k.expires_at_ms,
        k.revoked_at_ms, k.revoked_reason, k.quota_limit, k.quota_period, k.rate_limit, k.rate_window_ms,
        k.rate_burst, k.meta, u.period_start_ms, u.used, u.total, u.last_used_at_ms, u.rate_tat_ns
     FROM keys k LEFT JOIN usage u ON u.key_row = k.row";

/// Reads a row of [`RECORD_SELECT`]; the outer `rusqlite::Result` is SQLite's, the inner one ours.
fn record_of(row: &Row) -> rusqlite::Result<Result<(Slot, KeyRecord)>> {
    let build = || -> Result<(Slot, KeyRecord)> {
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
        Ok((row.get(0)?, record))
    };
    Ok(build())
}
