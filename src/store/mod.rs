//! The SQLite store: one file in WAL mode holding keys (as SHA-256 digests) and their usage, the source
//! of truth; schema migrations; the admin operations; flushing counts; and `check`, which decides from
//! the shared counters file ([`SharedCounters`]) alone. Only this module knows about SQL.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Once, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::{Mutex, MutexGuard};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, Transaction, TransactionBehavior};
use serde_json::{Map, Value};

use crate::counters::{self, Dirty, Found, KeyEntry, KeyRef, SharedCounters, Tally};

mod lifecycle;
use crate::error::{Error, Result};
use crate::gcra::RateLimit;
use crate::key::{self, Env, KeyDigest, Presented};
use crate::period::Period;
use crate::policy::{Decision, KeyPolicy, Quota, Usage};
use crate::spec::{self, KeyFilter, KeyPatch, KeyRecord, KeySpec, QuotaJson, RateJson, UsageJson};
use crate::status::Status;
use lifecycle::{load_policies, plan_of};
pub use lifecycle::{AuditEvent, AuditFilter, PlanSpec, PolicySpec, UsageDay, UsageHistory, DEFAULT_GRACE_MS};

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
    // 2: key lifecycle (rotation, plans, revocation by policy), the audit log and daily usage.
    "ALTER TABLE keys ADD COLUMN revoke_at_ms INTEGER;
    ALTER TABLE keys ADD COLUMN rotated_from TEXT;
    ALTER TABLE keys ADD COLUMN rotated_to TEXT;
    ALTER TABLE keys ADD COLUMN counts_with INTEGER REFERENCES keys(row);
    ALTER TABLE keys ADD COLUMN quota_from_plan INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE keys ADD COLUMN rate_from_plan INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE plans (
        name           TEXT PRIMARY KEY,
        quota_limit    INTEGER,
        quota_period   TEXT,
        rate_limit     INTEGER,
        rate_window_ms INTEGER,
        rate_burst     INTEGER,
        lifetime_ms    INTEGER,
        updated_at_ms  INTEGER NOT NULL
    );
    CREATE VIEW key_policy AS
        SELECT k.row AS row,
               CASE WHEN k.quota_from_plan = 1 AND p.name IS NOT NULL THEN p.quota_limit ELSE k.quota_limit END AS quota_limit,
               CASE WHEN k.quota_from_plan = 1 AND p.name IS NOT NULL THEN p.quota_period ELSE k.quota_period END AS quota_period,
               CASE WHEN k.rate_from_plan = 1 AND p.name IS NOT NULL THEN p.rate_limit ELSE k.rate_limit END AS rate_limit,
               CASE WHEN k.rate_from_plan = 1 AND p.name IS NOT NULL THEN p.rate_window_ms ELSE k.rate_window_ms END AS rate_window_ms,
               CASE WHEN k.rate_from_plan = 1 AND p.name IS NOT NULL THEN p.rate_burst ELSE k.rate_burst END AS rate_burst
        FROM keys k LEFT JOIN plans p ON p.name = k.plan;
    CREATE TABLE settings (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE audit (
        seq     INTEGER PRIMARY KEY,
        at_ms   INTEGER NOT NULL,
        actor   TEXT NOT NULL,
        action  TEXT NOT NULL,
        key_id  TEXT,
        detail  TEXT NOT NULL
    );
    CREATE INDEX audit_key ON audit(key_id, seq);
    CREATE TABLE usage_daily (
        key_row        INTEGER NOT NULL REFERENCES keys(row) ON DELETE CASCADE,
        day            INTEGER NOT NULL,
        admitted       INTEGER NOT NULL,
        expired        INTEGER NOT NULL,
        revoked        INTEGER NOT NULL,
        quota_exceeded INTEGER NOT NULL,
        rate_limited   INTEGER NOT NULL,
        PRIMARY KEY (key_row, day)
    );",
    // 3: flushes look for rotations past their grace every second: keep that lookup off a full scan.
    "CREATE INDEX keys_revoke_at ON keys(revoke_at_ms) WHERE revoke_at_ms IS NOT NULL AND revoked_at_ms IS NULL;",
];

pub const DEFAULT_LIFETIME_MS: i64 = 365 * 86_400_000;
pub const DEFAULT_RATE: RateLimit = RateLimit { limit: 60, window_ms: 60_000, burst: 60 };

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

impl StoreOptions {
    /// `{"flush_interval_ms": N, "durability": "batched" | "strict", "busy_timeout_ms": N}`, each optional.
    pub fn from_json(text: &str) -> Result<StoreOptions> {
        let obj = spec::parse_object(text, "store options")?;
        let mut options = StoreOptions::default();
        let ms = |v: &Value, name: &str, max: u64| -> Result<Duration> {
            match v.as_u64() {
                Some(n) if n <= max => Ok(Duration::from_millis(n)),
                _ => Err(Error::invalid(format!("{name} must be an integer from 0 to {max}"))),
            }
        };
        for (name, value) in &obj {
            match name.as_str() {
                "flush_interval_ms" => options.flush_interval = ms(value, name, 3_600_000)?,
                "busy_timeout_ms" => options.busy_timeout = ms(value, name, 600_000)?,
                "durability" => {
                    options.durability = match value.as_str() {
                        Some("batched") => Durability::Batched,
                        Some("strict") => Durability::Strict,
                        _ => return Err(Error::invalid("durability must be \"batched\" or \"strict\"")),
                    }
                }
                other => return Err(Error::invalid(format!("unknown field {other:?} in store options"))),
            }
        }
        Ok(options)
    }
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

/// A store's database connection, opened on first need. SQLite must never cross a `fork()`, not even
/// as its per-process lock bookkeeping: just before any fork, every store's connection is closed (under
/// its lock, so no thread is inside SQLite), and parent and child each open a fresh one when they next
/// need it. The shared counters mapping is inherited as is, which is what lets children check at once.
struct DbSlot {
    db: Mutex<Option<Db>>,
}

static LIVE: Mutex<Vec<Weak<DbSlot>>> = Mutex::new(Vec::new());
static HELD_ACROSS_FORK: Mutex<Vec<Arc<DbSlot>>> = Mutex::new(Vec::new());
static ATFORK: Once = Once::new();

extern "C" fn before_fork() {
    let live = LIVE.lock();
    let mut held = HELD_ACROSS_FORK.lock();
    for slot in live.iter().filter_map(Weak::upgrade) {
        let mut guard = slot.db.lock();
        *guard = None; // closes the connection
        std::mem::forget(guard); // stays locked across the fork; released just after it
        held.push(slot);
    }
    std::mem::forget(held);
    std::mem::forget(live);
}

extern "C" fn after_fork() {
    unsafe { HELD_ACROSS_FORK.force_unlock() };
    for slot in HELD_ACROSS_FORK.lock().drain(..) {
        unsafe { slot.db.force_unlock() };
    }
    unsafe { LIVE.force_unlock() };
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
    db: Arc<DbSlot>,
    shared: ArcSwap<SharedCounters>,
    /// Who the audit log names for this handle's admin calls.
    actor: ArcSwap<String>,
    /// Checks in this process that matched no key: missing, invalid (for metrics).
    unmatched: [AtomicU64; 2],
    /// When (callers' clock) this process last recorded idle revocations.
    last_idle_sweep_ms: AtomicI64,
}

const IDLE_SWEEP_MS: i64 = 60_000;

/// Cells a flush on the check path looks at: bounds the pause of the check that flushes, whatever the
/// number of keys (a store of up to this many keys is covered by every flush; a larger one in turns).
const FLUSH_SLICE: u64 = 65_536;

/// Which cells a flush writes.
#[derive(Clone, Copy)]
enum Scan {
    All,
    Next,
}

impl Store {
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        Store::open_with(path, StoreOptions::default())
    }

    /// Opens or creates the store at `path` (a new file gets mode 0600), migrating an older schema, and
    /// maps its shared counters file (built from the database if missing, damaged or from another boot).
    pub fn open_with(path: impl AsRef<Path>, options: StoreOptions) -> Result<Store> {
        ATFORK.call_once(|| unsafe {
            libc::pthread_atfork(Some(before_fork), Some(after_fork), Some(after_fork));
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
            db: register(DbSlot { db: Mutex::new(Some(Db { conn })) }),
            shared: ArcSwap::from_pointee(shared),
            actor: ArcSwap::from_pointee(default_actor()),
            unmatched: [AtomicU64::new(0), AtomicU64::new(0)],
            last_idle_sweep_ms: AtomicI64::new(i64::MIN / 2),
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
            Presented::Missing => {
                self.unmatched[0].fetch_add(1, Ordering::Relaxed);
                return Ok(no_key(Status::ApiKeyMissing));
            }
            Presented::Malformed => {
                self.unmatched[1].fetch_add(1, Ordering::Relaxed);
                return Ok(no_key(Status::ApiKeyInvalid));
            }
            Presented::Candidate(c) => c,
        };
        let digest = key::digest(candidate);
        let mut shared = self.counters()?;
        let interval_ns = self.options.flush_interval.as_nanos() as u64;
        if shared.claim_flush(interval_ns) {
            self.flush_counters(&shared, now_ms, Scan::Next)?;
            if shared.is_superseded() {
                shared = self.counters()?;
            }
        }
        // A file superseded by a larger one mid-check answers Moved: map the new one and ask again.
        let mut attempts = 0;
        let admission = loop {
            match shared.admit(&digest, now_ms) {
                Found::Key(admission) => break admission,
                Found::Unknown => {
                    self.unmatched[1].fetch_add(1, Ordering::Relaxed);
                    return Ok(no_key(Status::ApiKeyInvalid));
                }
                Found::Moved if attempts < 8 => {
                    attempts += 1;
                    shared = self.counters()?;
                }
                Found::Moved => return Err(Error::store("the counters file keeps being replaced; try again")),
                Found::Damaged(why) => {
                    return Err(Error::store(format!(
                        "the counters file {} is damaged ({why}); it is rebuilt from the database on the next check",
                        self.counters_path.display()
                    )))
                }
            }
        };
        let (decision, key) = (admission.decision, admission.key);
        if self.options.durability == Durability::Strict && decision.status == Status::Ok {
            let mut db = self.db()?;
            write_counts(&mut db.conn, &[shared.dirty_one(&key)]).map_err(|e| {
                Error::store(format!("cannot write the count to {}: {}", self.path.display(), e.message))
            })?;
        }
        if admission.abusive {
            // This refusal went over the abuse policy's limit: revoked from the next check on.
            drop(shared);
            self.revoke_by_policy(key.id(), now_ms, "abuse")?;
        }
        Ok(Checked { decision, key: Some(key) })
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
        let mut guard = self.db.db.lock();
        if guard.is_none() {
            let conn = open_connection(&self.path, self.options.busy_timeout)?;
            *guard = Some(Db { conn });
        }
        Ok(MutexGuard::map(guard, |db| db.as_mut().expect("opened above")))
    }

    /// Writes every count not yet in the database in one transaction, and brings the counters file up to
    /// date with admin changes another process committed but did not finish applying.
    pub fn flush(&self) -> Result<()> {
        let shared = self.counters()?;
        self.flush_counters(&shared, clock_ms(), Scan::All)
    }

    /// Writes counts, then makes lasting the revocations that policies decided by `now_ms` (rotations
    /// past their grace, idle keys), which checks already enforce from the counters file.
    fn flush_counters(&self, shared: &SharedCounters, now_ms: i64, scope: Scan) -> Result<()> {
        self.write_dirty(shared, scope)?;
        self.persist_policy_revocations(now_ms)
    }

    fn write_dirty(&self, shared: &SharedCounters, scope: Scan) -> Result<()> {
        let mut db = self.db()?;
        let failed =
            |e: Error| Error::store(format!("cannot write usage counts to {}: {}", self.path.display(), e.message));
        let dirty = match scope {
            Scan::All => shared.dirty(),
            Scan::Next => shared.dirty_next(FLUSH_SLICE),
        };
        if !dirty.is_empty() {
            write_counts(&mut db.conn, &dirty).map_err(failed)?;
            shared.mark_flushed(&dirty);
        }
        if generation(&db.conn)? != shared.generation() {
            let tx = db.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current = generation(&tx)?;
            // Under the write lock, look again: an admin that was committing has published by now.
            if current != shared.generation() {
                shared.set_policies(&load_policies(&tx)?);
                if !resync_entries(&load_entries(&tx, Keys::All)?, shared, current)? {
                    let grown = map_counters_locked(&tx, &self.path, &self.counters_path, Some(shared))?;
                    self.shared.store(Arc::new(grown));
                }
            }
            tx.commit()?;
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
        let id = new_key_id()?;
        let meta = Value::Object(spec.meta.clone().unwrap_or_default()).to_string();
        self.admin(|tx| {
            // A key on a plan follows the plan's quota, rate limit and lifetime where it sets none itself.
            let plan = match &spec.plan {
                Some(name) => plan_of(tx, name)?,
                None => None,
            };
            let lifetime = plan.as_ref().and_then(|p| p.lifetime_ms).or(self.options.default_lifetime_ms);
            let expires_at_ms = spec.expires_at_ms.clone().or(lifetime.map(|l| now_ms.saturating_add(l)));
            let rate = spec.rate_limit.clone().or(self.options.default_rate);
            let inserted = tx.execute(
                "INSERT INTO keys (id, digest, prefix, env, name, plan, created_at_ms, expires_at_ms,
                                   quota_limit, quota_period, rate_limit, rate_window_ms, rate_burst, meta,
                                   quota_from_plan, rate_from_plan)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
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
                    spec.quota.is_none() as i64,
                    matches!(spec.rate_limit, spec::Field::Absent) as i64,
                ],
            );
            let row = match inserted {
                Err(rusqlite::Error::SqliteFailure(e, Some(msg)))
                    if e.code == rusqlite::ErrorCode::ConstraintViolation && msg.contains("digest") =>
                {
                    return Err(Error::invalid("this key is already in the store"));
                }
                other => other.map(|_| tx.last_insert_rowid())?,
            };
            let detail = serde_json::json!({"env": env.as_str(), "plan": spec.plan, "name": spec.name, "imported": spec.key.is_some()});
            self.audit(tx, now_ms, "key.create", Some(&id), detail)?;
            Ok(vec![row])
        })?;
        let record = self.get_key(&id)?;
        Ok(Created { key: plaintext, record })
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
            "{RECORD_SELECT} WHERE (?1 IS NULL OR k.plan = ?1) AND (?2 IS NULL OR k.env = ?2)
               AND (?3 IS NULL OR (k.expires_at_ms IS NOT NULL AND k.expires_at_ms <= ?3 AND k.revoked_at_ms IS NULL))
             ORDER BY k.row"
        ))?;
        let rows =
            stmt.query_map(params![filter.plan, filter.env.map(Env::as_str), filter.expiring_before_ms], record_of)?;
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
                tx.execute(&format!("UPDATE keys SET {column} = ?1 WHERE row = ?2"), params![value, row])?;
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
            if patch.quota_follows_plan {
                set("quota_from_plan", &1)?;
            } else if let Some(quota) = patch.quota.clone().into_change() {
                set("quota_limit", &quota.map(|q| q.limit))?;
                set("quota_period", &quota.map(|q| q.period.as_str()))?;
                set("quota_from_plan", &0)?;
            }
            if patch.rate_follows_plan {
                set("rate_from_plan", &1)?;
            } else if let Some(rate) = patch.rate_limit.clone().into_change() {
                set("rate_limit", &rate.map(|r| r.limit))?;
                set("rate_window_ms", &rate.map(|r| r.window_ms))?;
                set("rate_burst", &rate.map(|r| r.burst))?;
                set("rate_from_plan", &0)?;
            }
            if let Some(meta) = patch.meta.clone().into_change() {
                set("meta", &Value::Object(meta.unwrap_or_default()).to_string())?;
            }
            self.audit(tx, clock_ms(), "key.update", Some(id), patch.to_json())?;
            Ok(vec![row])
        })?;
        self.get_key(id)
    }

    /// Revokes a key; it is refused from the next check on. Revoking a revoked key keeps the first
    /// revocation's time and reason.
    pub fn revoke_key(&self, id: &str, now_ms: i64, reason: Option<&str>) -> Result<KeyRecord> {
        spec::check_time_ms("now_ms", now_ms)?;
        self.revoke_as(id, now_ms, reason.unwrap_or("manual"), "key.revoke")?;
        self.get_key(id)
    }

    /// Revokes a key by a store policy ("idle", "abuse", "rotated"), recorded as such.
    pub(crate) fn revoke_by_policy(&self, id: &str, at_ms: i64, reason: &str) -> Result<()> {
        self.revoke_as(id, at_ms, reason, "key.revoke.policy")
    }

    fn revoke_as(&self, id: &str, at_ms: i64, reason: &str, action: &str) -> Result<()> {
        self.admin(|tx| {
            let row = slot_of(tx, id)?;
            let changed = tx.execute(
                "UPDATE keys SET revoked_at_ms = ?1, revoked_reason = ?2 WHERE row = ?3 AND revoked_at_ms IS NULL",
                params![at_ms, reason, row],
            )?;
            if changed > 0 {
                self.audit(tx, at_ms, action, Some(id), serde_json::json!({"reason": reason}))?;
            }
            Ok(vec![row])
        })
    }

    /// Makes lasting the revocations that checks already enforce: rotated keys past their grace, and
    /// keys idle for longer than the idle policy allows.
    fn persist_policy_revocations(&self, now_ms: i64) -> Result<()> {
        let due: Vec<(String, i64, &str)> = {
            let db = self.db()?;
            let mut due: Vec<(String, i64, &str)> = db
                .conn
                .prepare_cached(
                    "SELECT id, revoke_at_ms FROM keys
                     WHERE revoke_at_ms IS NOT NULL AND revoked_at_ms IS NULL AND revoke_at_ms <= ?1",
                )?
                .query_map([now_ms], |r| Ok((r.get(0)?, r.get(1)?, "rotated")))?
                .collect::<rusqlite::Result<_>>()?;
            // Idle keys are refused by every check already; recording them takes a scan of every key, so
            // it runs at most once a minute (of the callers' clock) per process.
            let idle_ms = load_policies(&db.conn)?.idle_ms;
            let last = self.last_idle_sweep_ms.load(Ordering::Relaxed);
            if idle_ms > 0 && (now_ms - last >= IDLE_SWEEP_MS || now_ms < last) {
                self.last_idle_sweep_ms.store(now_ms, Ordering::Relaxed);
                let idle = db
                    .conn
                    .prepare_cached(
                        "SELECT k.id, MAX(COALESCE(u.last_used_at_ms, 0), k.created_at_ms) + ?2 FROM keys k
                         LEFT JOIN usage u ON u.key_row = COALESCE(k.counts_with, k.row)
                         WHERE k.revoked_at_ms IS NULL AND MAX(COALESCE(u.last_used_at_ms, 0), k.created_at_ms) + ?2 <= ?1",
                    )?
                    .query_map(params![now_ms, idle_ms], |r| Ok((r.get(0)?, r.get(1)?, "idle")))?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                due.extend(idle);
            }
            due
        };
        for (id, at_ms, reason) in due {
            self.revoke_by_policy(&id, at_ms, reason)?;
        }
        Ok(())
    }

    /// Runs an admin change in one write transaction that also bumps the generation, and applies it to
    /// the counters file before committing, so every process sees it from its next check on. `change`
    /// returns the rows it changed. If anything fails after the file was touched, the file's generation
    /// no longer matches the database and the next flush (in any process) brings it back in line.
    fn admin(&self, change: impl FnOnce(&Transaction) -> Result<Vec<i64>>) -> Result<()> {
        let mut db = self.db()?;
        let tx = db.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let rows = change(&tx)?;
        let policies = load_policies(&tx)?;
        tx.execute("UPDATE meta SET value = value + 1 WHERE name = 'generation'", [])?;
        let generation = generation(&tx)?;
        let mut shared = self.shared.load_full();
        if shared.is_superseded() || shared.is_replaced() {
            shared = Arc::new(map_counters_locked(&tx, &self.path, &self.counters_path, None)?);
            self.shared.store(shared.clone());
        }
        // Until the commit succeeds the file does not match any committed generation.
        shared.set_generation(-1);
        let mut added = Vec::new();
        let applied = (|| -> Result<()> {
            for row in rows {
                let entry = load_entries(&tx, Keys::Row(row))?
                    .pop()
                    .ok_or_else(|| Error::internal("a changed key vanished"))?;
                if shared.tally(&entry.digest).is_none() {
                    added.push(entry.digest);
                }
                if shared.upsert(&entry).is_err() {
                    shared = Arc::new(map_counters_locked(&tx, &self.path, &self.counters_path, Some(&shared))?);
                    self.shared.store(shared.clone());
                    shared.upsert(&entry).map_err(|_| Error::internal("a rebuilt counters file is full"))?;
                }
            }
            // Published while the write lock is held, so no other admin can interleave.
            shared.set_policies(&policies);
            shared.set_generation(generation);
            Ok(tx.commit()?)
        })();
        if applied.is_err() {
            // Not committed: keys it added must not answer, and the next flush re-applies the database.
            shared.set_generation(-1);
            for digest in &added {
                let _ = shared.tombstone(digest);
            }
        }
        applied
    }

    /// Adds an entry to the audit log, in the admin change's own transaction.
    fn audit(&self, tx: &Transaction, at_ms: i64, action: &str, key_id: Option<&str>, detail: Value) -> Result<()> {
        let actor = self.actor.load_full();
        tx.execute(
            "INSERT INTO audit (at_ms, actor, action, key_id, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![at_ms, actor, action, key_id, detail.to_string()],
        )?;
        Ok(())
    }

    /// Names the actor the audit log records for this handle's admin calls (default: process and user).
    pub fn set_actor(&self, actor: &str) {
        self.actor.store(Arc::new(actor.to_string()));
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
    Checked { decision: Decision::without_key(status), key: None }
}

fn open_connection(path: &Path, busy_timeout: Duration) -> Result<Connection> {
    if path.as_os_str().is_empty() {
        return Err(Error::invalid("the path is empty"));
    }
    if !path.exists() {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.is_dir() {
                return Err(Error::store(format!("directory {} does not exist", dir.display())));
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
        return Err(Error::store(format!("cannot use WAL mode (journal mode is {mode})")));
    }
    conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")?;
    migrate(&mut conn)?;
    Ok(conn)
}

fn describe_open_failure(e: rusqlite::Error) -> String {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => "not an ms-auth store (file is not a database)".to_string(),
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
    tx.commit().map_err(|e| Error::store(describe_open_failure(e)))?;
    Ok(())
}

pub fn schema_version() -> usize {
    MIGRATIONS.len()
}

/// The wall clock, for admin calls and flushes that are given no time.
pub fn clock_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn default_actor() -> String {
    let exe = std::env::current_exe().ok().and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    format!("{} (pid {}, uid {})", exe.unwrap_or_else(|| "?".into()), std::process::id(), unsafe { libc::geteuid() })
}

fn register(slot: DbSlot) -> Arc<DbSlot> {
    let slot = Arc::new(slot);
    let mut live = LIVE.lock();
    live.retain(|w| w.strong_count() > 0);
    live.push(Arc::downgrade(&slot));
    slot
}

fn new_key_id() -> Result<String> {
    Ok(format!("key_{}", String::from_utf8(key::random_base62(20)?).expect("base62 is ASCII")))
}

fn generation(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row("SELECT value FROM meta WHERE name = 'generation'", [], |r| r.get(0))?)
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
        let mut daily = tx.prepare_cached(
            "INSERT INTO usage_daily (key_row, day, admitted, expired, revoked, quota_exceeded, rate_limited)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7 WHERE EXISTS (SELECT 1 FROM keys WHERE row = ?1)
             ON CONFLICT (key_row, day) DO UPDATE SET
                admitted = MAX(admitted, excluded.admitted), expired = MAX(expired, excluded.expired),
                revoked = MAX(revoked, excluded.revoked), quota_exceeded = MAX(quota_exceeded, excluded.quota_exceeded),
                rate_limited = MAX(rate_limited, excluded.rate_limited)",
        )?;
        for d in counts {
            for day in d.days.iter().flatten() {
                daily.execute(params![
                    d.row,
                    day.day,
                    day.admitted,
                    day.expired,
                    day.revoked,
                    day.quota_exceeded,
                    day.rate_limited
                ])?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}

/// Which keys [`load_entries`] reads.
pub(crate) enum Keys<'a> {
    All,
    Row(i64),
    Plan(&'a str),
}

/// Keys as the counters file needs them: effective policy (their own or their plan's), stored counts
/// (a rotated key's successor counts with the key it replaced).
pub(crate) fn load_entries(conn: &Connection, which: Keys) -> Result<Vec<KeyEntry>> {
    let (row, plan) = match which {
        Keys::All => (None, None),
        Keys::Row(r) => (Some(r), None),
        Keys::Plan(p) => (None, Some(p)),
    };
    let mut stmt = conn.prepare_cached(
        "SELECT k.row, k.id, k.digest, k.plan, k.expires_at_ms, k.revoked_at_ms, e.quota_limit, e.quota_period,
                e.rate_limit, e.rate_window_ms, e.rate_burst,
                u.period_start_ms, u.used, u.total, u.last_used_at_ms, u.rate_tat_ns,
                k.revoke_at_ms, k.created_at_ms, o.digest
         FROM keys k JOIN key_policy e ON e.row = k.row
         LEFT JOIN usage u ON u.key_row = COALESCE(k.counts_with, k.row)
         LEFT JOIN keys o ON o.row = k.counts_with
         WHERE (?1 IS NULL OR k.row = ?1) AND (?2 IS NULL OR k.plan = ?2)
         ORDER BY k.row",
    )?;
    let mut rows = stmt.query(params![row, plan])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(KeyEntry {
            row: row.get(0)?,
            id: row.get(1)?,
            digest: digest_of(row, 2)?,
            plan: row.get(3)?,
            policy: KeyPolicy {
                revoked: row.get::<_, Option<i64>>(5)?.is_some(),
                revoke_at_ms: row.get(16)?,
                expires_at_ms: row.get(4)?,
                quota: quota_of(row, 6)?,
                rate: rate_of(row, 8)?,
            },
            created_at_ms: row.get(17)?,
            tally: tally_of(row, 11)?,
            shares_with: row.get::<_, Option<Vec<u8>>>(18)?.map(|_| digest_of(row, 18)).transpose()?,
        });
    }
    Ok(out)
}

fn digest_of(row: &Row, at: usize) -> Result<KeyDigest> {
    let digest: Vec<u8> = row.get(at)?;
    digest.try_into().map_err(|_| Error::store("corrupt store: a key digest is not 32 bytes"))
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
    let existing = if grow_from.is_none() { SharedCounters::open_existing(path)? } else { None };
    if existing.as_ref().is_some_and(|e| e.generation() == generation) {
        return Ok(existing.expect("checked above"));
    }
    let mut entries = load_entries(tx, Keys::All)?;
    if let Some(e) = &existing {
        // An existing file that still has room is brought up to date in place.
        e.set_policies(&load_policies(tx)?);
        if e.has_room_for(entries.len() as u64) && resync_entries(&entries, e, generation)? {
            return Ok(existing.expect("checked above"));
        }
    }
    let grow_from = grow_from.or(existing.as_ref());
    let before = grow_from.map(|old| old.snapshot()).unwrap_or_default();
    let carried: HashMap<KeyDigest, Tally> = before.iter().copied().collect();
    for entry in &mut entries {
        if let Some(t) = carried.get(&entry.digest) {
            entry.tally = *t;
        }
    }
    // More room than the keys need now, so that growing is rare.
    let room = if grow_from.is_some() { entries.len() * 2 } else { entries.len() };
    let built = SharedCounters::build(path, &entries, room, generation, db_path, grow_from.is_some())?;
    built.set_policies(&load_policies(tx)?);
    if let Some(old) = grow_from {
        // From here on no check can charge the old file: it maps the new one instead.
        old.supersede();
        old.freeze();
        old.carry_late_counts(&before, &built);
    }
    Ok(built)
}

/// Brings the file's keys in line with the database: keys whose policy differs are rewritten, keys the
/// database does not have are tombstoned. `false`: the file is full (the caller grows it).
fn resync_entries(entries: &[KeyEntry], shared: &SharedCounters, generation: i64) -> Result<bool> {
    shared.set_generation(-1);
    for entry in entries {
        if !shared.holds(entry) && shared.upsert(entry).is_err() {
            return Ok(false);
        }
    }
    let known: std::collections::HashSet<KeyDigest> = entries.iter().map(|e| e.digest).collect();
    for digest in shared.digests() {
        if !known.contains(&digest) && shared.tombstone(&digest).is_err() {
            return Ok(false);
        }
    }
    shared.set_generation(generation);
    Ok(true)
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
        (Some(limit), Some(period)) => {
            Ok(Some(Quota { limit, period: Period::parse(&period).map_err(|_| corrupt("quota_period"))? }))
        }
        (None, None) => Ok(None),
        _ => Err(corrupt("quota")),
    }
}

fn rate_of(row: &Row, at: usize) -> Result<Option<RateLimit>> {
    let fields: (Option<i64>, Option<i64>, Option<i64>) = (row.get(at)?, row.get(at + 1)?, row.get(at + 2)?);
    match fields {
        (Some(limit), Some(window_ms), Some(burst)) => {
            spec::checked_rate(limit, window_ms, burst).map(Some).map_err(|_| corrupt("rate limit"))
        }
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
        k.revoked_at_ms, k.revoked_reason, e.quota_limit, e.quota_period, e.rate_limit, e.rate_window_ms,
        e.rate_burst, k.meta, u.period_start_ms, u.used, u.total, u.last_used_at_ms, u.rate_tat_ns,
        k.revoke_at_ms, k.rotated_from, k.rotated_to, k.quota_from_plan, k.rate_from_plan
     FROM keys k JOIN key_policy e ON e.row = k.row LEFT JOIN usage u ON u.key_row = COALESCE(k.counts_with, k.row)";

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
            revoke_at_ms: row.get(21)?,
            rotated_from: row.get(22)?,
            rotated_to: row.get(23)?,
            follows_plan: [("quota", row.get::<_, i64>(24)?), ("rate_limit", row.get::<_, i64>(25)?)]
                .into_iter()
                .filter(|(_, follows)| *follows == 1)
                .map(|(what, _)| what)
                .collect(),
        };
        Ok((digest_of(row, 0)?, record))
    };
    Ok(build())
}
