//! The SQLite store: one file in WAL mode holding keys (as SHA-256 digests) and their usage, the source
//! of truth; schema migrations; the admin operations; flushing counts; and `check`, which decides from
//! the shared counters file ([`SharedCounters`]) alone. Only this module knows about SQL.

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

use crate::counters::{self, Dirty, Found, KeyEntry, KeyRef, SharedCounters, Tally, Turn};

/// An audit event as fleet mode publishes it, from a row of `audit` (`$row` is `NEW.` in the trigger of
/// migration 6, empty where existing rows are published; `store::replica::AuditState` reads it).
macro_rules! audit_state {
    ($row:literal) => {
        concat!(
            "json_object('at_ms', ",
            $row,
            "at_ms, 'actor', ",
            $row,
            "actor, 'action', ",
            $row,
            "action, 'key_id', ",
            $row,
            "key_id, 'detail', ",
            $row,
            "detail)"
        )
    };
}

mod fleet_usage;
mod identity;
mod lifecycle;
mod replica;
use crate::error::{Error, Result};
use crate::gcra::RateLimit;
use crate::key::{self, Env, KeyDigest, Presented};
use crate::period::Period;
use crate::policy::{Decision, KeyPolicy, Quota, Usage};
use crate::spec::{self, KeyFilter, KeyPatch, KeyRecord, KeySpec, QuotaJson, RateJson, UsageJson};
use crate::status::Status;
pub use fleet_usage::FleetUsageRow;
use lifecycle::{load_policies, plan_of};
pub use lifecycle::{AuditEvent, AuditFilter, PlanSpec, PolicySpec, UsageDay, UsageHistory, DEFAULT_GRACE_MS};
pub use replica::{FleetQuota, Refused};

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Error {
        Error::store(format!("SQLite: {e}"))
    }
}

/// A key's whole state as fleet mode publishes it (SQLite has no trigger for insert *or* update, so the
/// insert and update triggers of migration 5 share this expression; `store::replica::KeyState` reads it).
macro_rules! key_state {
    () => {
        "json_object('id', NEW.id, 'digest', lower(hex(NEW.digest)), 'prefix', NEW.prefix, 'env', NEW.env,
            'name', NEW.name, 'plan', NEW.plan, 'created_at_ms', NEW.created_at_ms, 'expires_at_ms', NEW.expires_at_ms,
            'revoked_at_ms', NEW.revoked_at_ms, 'revoked_reason', NEW.revoked_reason, 'quota_limit', NEW.quota_limit,
            'quota_period', NEW.quota_period, 'rate_limit', NEW.rate_limit, 'rate_window_ms', NEW.rate_window_ms,
            'rate_burst', NEW.rate_burst, 'meta', NEW.meta, 'revoke_at_ms', NEW.revoke_at_ms,
            'rotated_from', NEW.rotated_from, 'rotated_to', NEW.rotated_to,
            'counts_with', (SELECT id FROM keys WHERE row = NEW.counts_with),
            'quota_from_plan', NEW.quota_from_plan, 'rate_from_plan', NEW.rate_from_plan)"
    };
}

/// A plan's whole state as fleet mode publishes it (`store::replica::PlanState` reads it).
macro_rules! plan_state {
    () => {
        "json_object('name', NEW.name, 'quota_limit', NEW.quota_limit, 'quota_period', NEW.quota_period,
            'rate_limit', NEW.rate_limit, 'rate_window_ms', NEW.rate_window_ms, 'rate_burst', NEW.rate_burst,
            'lifetime_ms', NEW.lifetime_ms, 'updated_at_ms', NEW.updated_at_ms)"
    };
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
    // 4: earlier versions accepted rate limits whose bucket takes more than ten years to refill, which
    // the limiter could not represent (it stopped limiting). Lower their burst to the largest that
    // refills within ten years (spec::MAX_REFILL_MS = 315,619,200,000 ms), exactly in integers where the
    // product fits in 64 bits.
    "UPDATE keys SET rate_burst = MAX(1, MIN(rate_burst, CASE WHEN rate_limit <= 29000000
            THEN rate_limit * 315619200000 / rate_window_ms
            ELSE CAST(315619200000.0 * rate_limit / rate_window_ms AS INTEGER) - 1 END))
        WHERE rate_limit > 0 AND rate_window_ms > 0 AND rate_burst > 0;
    UPDATE plans SET rate_burst = MAX(1, MIN(rate_burst, CASE WHEN rate_limit <= 29000000
            THEN rate_limit * 315619200000 / rate_window_ms
            ELSE CAST(315619200000.0 * rate_limit / rate_window_ms AS INTEGER) - 1 END))
        WHERE rate_limit > 0 AND rate_window_ms > 0 AND rate_burst > 0;",
    // 5: fleet mode. Once this store is a member of a fleet (a `fleet` setting), every change of a key, a
    // plan or the policies is captured, in its own transaction, as the record's whole new state, for the
    // fleet agent to publish (see `fleet` and `store::replica`).
    concat!(
        "CREATE TABLE fleet_outbox (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL);
    CREATE TRIGGER fleet_key_insert AFTER INSERT ON keys WHEN EXISTS (SELECT 1 FROM settings WHERE name = 'fleet')
    BEGIN INSERT INTO fleet_outbox (kind, id, body) VALUES ('key', NEW.id, ", key_state!(), "); END;
    CREATE TRIGGER fleet_key_update AFTER UPDATE ON keys WHEN EXISTS (SELECT 1 FROM settings WHERE name = 'fleet')
    BEGIN INSERT INTO fleet_outbox (kind, id, body) VALUES ('key', NEW.id, ", key_state!(), "); END;
    CREATE TRIGGER fleet_plan_insert AFTER INSERT ON plans WHEN EXISTS (SELECT 1 FROM settings WHERE name = 'fleet')
    BEGIN INSERT INTO fleet_outbox (kind, id, body) VALUES ('plan', NEW.name, ", plan_state!(), "); END;
    CREATE TRIGGER fleet_plan_update AFTER UPDATE ON plans WHEN EXISTS (SELECT 1 FROM settings WHERE name = 'fleet')
    BEGIN INSERT INTO fleet_outbox (kind, id, body) VALUES ('plan', NEW.name, ", plan_state!(), "); END;
    CREATE TRIGGER fleet_policies_insert AFTER INSERT ON settings
    WHEN NEW.name = 'policies' AND EXISTS (SELECT 1 FROM settings WHERE name = 'fleet')
    BEGIN INSERT INTO fleet_outbox (kind, id, body) VALUES ('policies', 'policies', NEW.value); END;
    CREATE TRIGGER fleet_policies_update AFTER UPDATE ON settings
    WHEN NEW.name = 'policies' AND EXISTS (SELECT 1 FROM settings WHERE name = 'fleet')
    BEGIN INSERT INTO fleet_outbox (kind, id, body) VALUES ('policies', 'policies', NEW.value); END;"
    ),
    // 6: fleet-wide audit and usage. Audit events made here go to the fleet's log like any change (the
    // others' arrive with their host and their own sequence number, once); `fleet_usage` holds each
    // host's daily counts as its agent published them (this host's too: what it last published).
    concat!(
        "ALTER TABLE audit ADD COLUMN host TEXT;
    ALTER TABLE audit ADD COLUMN origin_seq INTEGER;
    CREATE UNIQUE INDEX audit_origin ON audit(host, origin_seq) WHERE host IS NOT NULL;
    CREATE TRIGGER fleet_audit_insert AFTER INSERT ON audit
    WHEN NEW.host IS NULL AND EXISTS (SELECT 1 FROM settings WHERE name = 'fleet')
    BEGIN INSERT INTO fleet_outbox (kind, id, body) VALUES ('audit', CAST(NEW.seq AS TEXT), ",
        audit_state!("NEW."),
        "); END;
    CREATE TABLE fleet_usage (
        host            TEXT NOT NULL,
        key_id          TEXT NOT NULL,
        day             INTEGER NOT NULL,
        admitted        INTEGER NOT NULL,
        expired         INTEGER NOT NULL,
        revoked         INTEGER NOT NULL,
        quota_exceeded  INTEGER NOT NULL,
        rate_limited    INTEGER NOT NULL,
        last_used_at_ms INTEGER,
        PRIMARY KEY (host, key_id, day)
    ) WITHOUT ROWID;
    CREATE INDEX fleet_usage_key ON fleet_usage(key_id, day);"
    ),
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
    /// For admin calls, explicit flushes and strict durability: waits up to the busy timeout for the
    /// write lock.
    db: Mutex<Option<Db>>,
    /// For the work a check may do (its flush turn, mapping a rebuilt counters file): never waits, not
    /// for another thread of this process nor for another process's write lock.
    quick: Mutex<Option<Db>>,
}

static LIVE: Mutex<Vec<Weak<DbSlot>>> = Mutex::new(Vec::new());
static HELD_ACROSS_FORK: Mutex<Vec<Arc<DbSlot>>> = Mutex::new(Vec::new());
static ATFORK: Once = Once::new();

extern "C" fn before_fork() {
    identity::lock_for_fork();
    let live = LIVE.lock();
    let mut held = HELD_ACROSS_FORK.lock();
    for slot in live.iter().filter_map(Weak::upgrade) {
        for db in [&slot.db, &slot.quick] {
            let mut guard = db.lock();
            *guard = None; // closes the connection
            std::mem::forget(guard); // stays locked across the fork; released just after it
        }
        held.push(slot);
    }
    std::mem::forget(held);
    std::mem::forget(live);
}

extern "C" fn after_fork() {
    unsafe { HELD_ACROSS_FORK.force_unlock() };
    for slot in HELD_ACROSS_FORK.lock().drain(..) {
        unsafe { slot.db.force_unlock() };
        unsafe { slot.quick.force_unlock() };
    }
    unsafe { LIVE.force_unlock() };
    identity::unlock_after_fork();
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
    /// Keys the abuse policy revoked whose revocation is not in the database yet (the write lock was
    /// busy): retried at this process's next flush turn, explicit flush or close.
    pending_abuse: Mutex<Vec<(String, i64)>>,
    /// Flush turns of this process that could not write (lock busy, disk failing), and the last reason:
    /// a check never answers with them, so they are kept for `metrics_text` and `last_flush_error`.
    flush_failures: AtomicU64,
    last_flush_error: Mutex<Option<String>>,
    /// Marks the database file as opened by ms-auth in this process (see [`identity`]).
    _open: identity::OpenFile,
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
    /// The path is resolved (symbolic links, `..`) so that every name of one database shares one
    /// counters file; a database file with several hard links is refused, as SQLite cannot lock it safely.
    pub fn open_with(path: impl AsRef<Path>, options: StoreOptions) -> Result<Store> {
        ATFORK.call_once(|| unsafe {
            libc::pthread_atfork(Some(before_fork), Some(after_fork), Some(after_fork));
        });
        let given = path.as_ref().to_path_buf();
        let explain = |e: Error| Error {
            status: e.status,
            message: format!("cannot open store {}: {}", given.display(), e.message),
        };
        let opening = identity::check_not_held(&given).map_err(explain)?;
        let mut conn = open_connection(&given, options.busy_timeout).map_err(explain)?;
        let path = identity::resolve(&given).map_err(explain)?;
        let open = opening.register(&path).map_err(explain)?;
        let counters_path = counters::path_for(&path);
        let shared = map_counters(&mut conn, &path, &counters_path).map_err(explain)?;
        Ok(Store {
            path,
            counters_path,
            options,
            db: register(DbSlot { db: Mutex::new(Some(Db { conn })), quick: Mutex::new(None) }),
            shared: ArcSwap::from_pointee(shared),
            actor: ArcSwap::from_pointee(default_actor()),
            unmatched: [AtomicU64::new(0), AtomicU64::new(0)],
            last_idle_sweep_ms: AtomicI64::new(i64::MIN / 2),
            pending_abuse: Mutex::new(Vec::new()),
            flush_failures: AtomicU64::new(0),
            last_flush_error: Mutex::new(None),
            _open: open,
        })
    }

    /// The database file, resolved.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Decides one request. `key` is the raw header value (`None` when absent); `now_ms` is Unix ms.
    /// Touches no database and makes no system call unless a flush is due, and never waits for SQLite: a
    /// flush turn that cannot have the write lock at once is left to the next turn.
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
        // The flush turn comes first: it is also where a truncated file is noticed, before any other
        // read of the mapping.
        let mut shared = self.shared.load();
        let turn = shared.claim_flush(self.options.flush_interval.as_nanos() as u64);
        if turn == Turn::Claimed {
            self.flush_turn(&shared, now_ms);
        }
        if turn == Turn::Unusable || shared.is_superseded() {
            drop(shared);
            shared = self.remap_for_check()?;
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
                    drop(shared);
                    shared = self.remap_for_check()?;
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
            // Strict durability is the caller's choice to wait for the database on every admitted check.
            let mut db = self.db()?;
            write_counts(&mut db.conn, &[shared.dirty_one(&key)]).map_err(|e| {
                Error::store(format!("cannot write the count to {}: {}", self.path.display(), e.message))
            })?;
        }
        if admission.abusive {
            // This refusal went over the abuse policy's limit. The key is being refused by its rate limit
            // anyway; its revocation is written now if the write lock is free, else at a later flush.
            drop(shared);
            self.pending_abuse.lock().push((key.id().to_string(), now_ms));
            match self.quick_db() {
                Ok(Some(mut db)) => {
                    if let Err(e) = self.revoke_pending_abuse(&mut db.conn) {
                        self.note_flush_failure(e);
                    }
                }
                Ok(None) => {}
                Err(e) => self.note_flush_failure(e),
            }
        }
        Ok(Checked { decision, key: Some(key) })
    }

    /// For a check whose counters file was replaced (or found unusable): maps the one at the path. A
    /// complete file is used as it is (a flush brings it in line with the database if it is behind); only
    /// building a new one needs the write lock, and a check does not wait for it.
    fn remap_for_check(&self) -> Result<arc_swap::Guard<Arc<SharedCounters>>> {
        let fresh = match SharedCounters::open_existing(&self.counters_path)? {
            Some(existing) => existing,
            None => {
                let busy = || Error::store("the counters file is being rebuilt by another caller; try again");
                let mut db = self.quick_db()?.ok_or_else(busy)?;
                let tx = db.conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| match e {
                    rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DatabaseBusy => busy(),
                    other => other.into(),
                })?;
                let mapped = map_counters_locked(&tx, &self.path, &self.counters_path, None)?;
                tx.commit()?;
                mapped
            }
        };
        self.shared.store(Arc::new(fresh));
        Ok(self.shared.load())
    }

    /// The current counters file, for admin calls and explicit flushes (which may wait for the lock).
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

    /// The connection for a check's own work, if no other thread of this process is using it. It never
    /// waits for another process's write lock either (a busy timeout of zero).
    fn quick_db(&self) -> Result<Option<parking_lot::MappedMutexGuard<'_, Db>>> {
        let Some(mut guard) = self.db.quick.try_lock() else { return Ok(None) };
        if guard.is_none() {
            let conn = open_connection(&self.path, Duration::ZERO)?;
            *guard = Some(Db { conn });
        }
        Ok(Some(MutexGuard::map(guard, |db| db.as_mut().expect("opened above"))))
    }

    /// A check's flush turn: writes what it can without waiting and keeps any failure for metrics and
    /// [`Store::last_flush_error`]; the request is decided from the shared file whatever happens here.
    fn flush_turn(&self, shared: &SharedCounters, now_ms: i64) {
        let done = match self.quick_db() {
            Ok(Some(mut db)) => self.flush_on(&mut db.conn, shared, now_ms, Scan::Next),
            Ok(None) => Ok(()), // another thread of this process is flushing
            Err(e) => Err(e),
        };
        if let Err(e) = done {
            self.note_flush_failure(e);
        }
    }

    fn note_flush_failure(&self, e: Error) {
        self.flush_failures.fetch_add(1, Ordering::Relaxed);
        *self.last_flush_error.lock() = Some(e.message);
    }

    /// Why this process's last flush turn (or abuse revocation) on the check path could not write, if one
    /// failed: checks never answer with it. The next turn tries again.
    pub fn last_flush_error(&self) -> Option<String> {
        self.last_flush_error.lock().clone()
    }

    /// How many flush turns of this process's checks could not write.
    pub fn flush_failures(&self) -> u64 {
        self.flush_failures.load(Ordering::Relaxed)
    }

    /// Writes every count not yet in the database in one transaction, and brings the counters file up to
    /// date with admin changes another process committed but did not finish applying. Waits for the
    /// write lock (up to the busy timeout) and returns any failure.
    pub fn flush(&self) -> Result<()> {
        let shared = self.counters()?;
        let mut db = self.db()?;
        self.flush_on(&mut db.conn, &shared, clock_ms(), Scan::All)
    }

    /// Writes counts, then makes lasting the revocations that policies decided by `now_ms` (rotations
    /// past their grace, idle keys, abuse), which checks already enforce from the counters file.
    fn flush_on(&self, conn: &mut Connection, shared: &SharedCounters, now_ms: i64, scope: Scan) -> Result<()> {
        self.write_dirty(conn, shared, scope)?;
        self.revoke_pending_abuse(conn)?;
        self.persist_policy_revocations(conn, now_ms)
    }

    fn write_dirty(&self, conn: &mut Connection, shared: &SharedCounters, scope: Scan) -> Result<()> {
        let failed =
            |e: Error| Error::store(format!("cannot write usage counts to {}: {}", self.path.display(), e.message));
        let dirty = match scope {
            Scan::All => shared.dirty(),
            Scan::Next => shared.dirty_next(FLUSH_SLICE),
        };
        if !dirty.is_empty() {
            write_counts(conn, &dirty).map_err(failed)?;
            shared.mark_flushed(&dirty);
        }
        if generation(conn)? != shared.generation() {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let current = generation(&tx)?;
            // Under the write lock, look again: an admin that was committing has published by now.
            if current != shared.generation() {
                let mut shared = self.shared.load_full();
                self.bring_in_line(&tx, &mut shared, current)?;
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

    /// With the write lock held: makes the counters file hold exactly the database's keys and policies,
    /// marked with `generation`; rebuilds it larger (or undamaged) if that cannot be done in place.
    fn bring_in_line(&self, tx: &Transaction, shared: &mut Arc<SharedCounters>, generation: i64) -> Result<()> {
        if shared.is_superseded() || shared.is_replaced() {
            *shared = Arc::new(map_counters_locked(tx, &self.path, &self.counters_path, None)?);
            self.shared.store(shared.clone());
        }
        shared.set_policies(&load_policies(tx)?);
        if !resync_entries(&load_entries(tx, Keys::All)?, shared, generation)? {
            *shared = Arc::new(map_counters_locked(tx, &self.path, &self.counters_path, Some(shared))?);
            self.shared.store(shared.clone());
        }
        Ok(())
    }

    /// Writes the revocations the abuse policy decided in this process's checks; those that fail stay
    /// pending for the next try.
    fn revoke_pending_abuse(&self, conn: &mut Connection) -> Result<()> {
        let pending = std::mem::take(&mut *self.pending_abuse.lock());
        let mut result = Ok(());
        for (i, (id, at_ms)) in pending.iter().enumerate() {
            let revoked = self.revoke_as(conn, id, *at_ms, "abuse", "key.revoke.policy");
            if let Err(e) = revoked.or_else(|e| if e.status == Status::ErrNotFound { Ok(()) } else { Err(e) }) {
                self.pending_abuse.lock().extend(pending[i..].iter().cloned());
                result = Err(e);
                break;
            }
        }
        result
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
        {
            let mut db = self.db()?;
            self.revoke_as(&mut db.conn, id, now_ms, reason.unwrap_or("manual"), "key.revoke")?;
        }
        self.get_key(id)
    }

    fn revoke_as(&self, conn: &mut Connection, id: &str, at_ms: i64, reason: &str, action: &str) -> Result<()> {
        self.admin_on(conn, |tx| {
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
    fn persist_policy_revocations(&self, conn: &mut Connection, now_ms: i64) -> Result<()> {
        let mut due: Vec<(String, i64, &str)> = conn
            .prepare_cached(
                "SELECT id, revoke_at_ms FROM keys
                 WHERE revoke_at_ms IS NOT NULL AND revoked_at_ms IS NULL AND revoke_at_ms <= ?1",
            )?
            .query_map([now_ms], |r| Ok((r.get(0)?, r.get(1)?, "rotated")))?
            .collect::<rusqlite::Result<_>>()?;
        // Idle keys are refused by every check already; recording them takes a scan of every key, so
        // it runs at most once a minute (of the callers' clock) per process.
        let idle_ms = load_policies(conn)?.idle_ms;
        let last = self.last_idle_sweep_ms.load(Ordering::Relaxed);
        if idle_ms > 0 && (now_ms - last >= IDLE_SWEEP_MS || now_ms < last) {
            self.last_idle_sweep_ms.store(now_ms, Ordering::Relaxed);
            let idle = conn
                .prepare_cached(
                    "SELECT k.id, MAX(COALESCE(u.last_used_at_ms, 0), k.created_at_ms) + ?2 FROM keys k
                     LEFT JOIN usage u ON u.key_row = COALESCE(k.counts_with, k.row)
                     WHERE k.revoked_at_ms IS NULL AND MAX(COALESCE(u.last_used_at_ms, 0), k.created_at_ms) + ?2 <= ?1",
                )?
                .query_map(params![now_ms, idle_ms], |r| Ok((r.get(0)?, r.get(1)?, "idle")))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            due.extend(idle);
        }
        for (id, at_ms, reason) in due {
            self.revoke_as(conn, &id, at_ms, reason, "key.revoke.policy")?;
        }
        Ok(())
    }

    /// Runs an admin change in one write transaction (on this process's admin connection).
    fn admin(&self, change: impl FnOnce(&Transaction) -> Result<Vec<i64>>) -> Result<()> {
        let mut db = self.db()?;
        self.admin_on(&mut db.conn, change)
    }

    /// Runs an admin change in one write transaction that also gives the database a new generation (a
    /// random number, never reused), and applies it to the counters file before committing, so every
    /// process sees it from its next check on. `change` returns the rows it changed.
    ///
    /// The file carries the generation of the database it reflects. While a change is applied it carries
    /// none (-1); a file whose generation is not the committed one (an admin died between publishing and
    /// committing) is first brought in line with the database, so a later commit can never make a change
    /// that was not committed look current. If the commit fails, keys it added are tombstoned while the
    /// write lock is still held, or, if SQLite already released it, under a new one.
    fn admin_on(&self, conn: &mut Connection, change: impl FnOnce(&Transaction) -> Result<Vec<i64>>) -> Result<()> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let committed = generation(&tx)?;
        let rows = change(&tx)?;
        let policies = load_policies(&tx)?;
        let generation = new_generation(committed)?;
        tx.execute("UPDATE meta SET value = ?1 WHERE name = 'generation'", [generation])?;
        let mut shared = self.shared.load_full();
        let mut added = Vec::new();
        let applied = (|| -> Result<()> {
            if shared.is_superseded() || shared.is_replaced() || shared.generation() != committed {
                self.bring_in_line(&tx, &mut shared, generation)?;
            }
            shared.set_generation(-1);
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
            tx.execute_batch("COMMIT")?;
            Ok(())
        })();
        let Err(e) = applied else { return Ok(()) };
        shared.set_generation(-1);
        if !tx.is_autocommit() {
            // Still in the transaction, so still the only writer: nobody can take these blocks meanwhile.
            for digest in &added {
                let _ = shared.tombstone(digest);
            }
            drop(tx); // rolls back
        } else {
            drop(tx);
            // SQLite rolled back and released the lock: bring the file in line under a new one. If that
            // fails too, the next flush in any process does it (the file's generation is -1).
            let _ = self.resync_locked(conn);
        }
        Err(e)
    }

    /// Takes the write lock and brings the counters file in line with the committed database.
    fn resync_locked(&self, conn: &mut Connection) -> Result<()> {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let committed = generation(&tx)?;
        let mut shared = self.shared.load_full();
        self.bring_in_line(&tx, &mut shared, committed)?;
        tx.commit()?;
        Ok(())
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

/// Opens a connection; `busy_timeout` zero for the check path's connection, which never waits.
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
        // memory files the same mode. Another process starting at the same instant (nginx workers) may
        // create it first: then it is there, which is all this needs.
        match OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::store(format!("cannot create the file: {e}"))),
        }
    } else if path.is_dir() {
        return Err(Error::store("it is a directory"));
    }
    // Processes that start together on a store nobody has initialised yet (an empty file) race to turn
    // it into a WAL database; the losers see "locked" for an instant, whatever their busy timeout.
    let initialising = std::fs::metadata(path).is_ok_and(|m| m.len() == 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match set_up_connection(path, busy_timeout) {
            Err(e) if initialising && e.message.contains("locked") && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

fn set_up_connection(path: &Path, busy_timeout: Duration) -> Result<Connection> {
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
    migrate(&mut conn, !busy_timeout.is_zero())?;
    Ok(conn)
}

fn describe_open_failure(e: rusqlite::Error) -> String {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase) => "not an ms-auth store (file is not a database)".to_string(),
        Some(rusqlite::ErrorCode::ReadOnly) => "the file is read-only".to_string(),
        _ => e.to_string(),
    }
}

/// Applies the migrations this file lacks, all in one write transaction (which also proves the file is
/// writable). A file written by a newer ms-auth is refused rather than misread. With `prove_writable`
/// false and nothing to migrate, no write lock is taken: a connection opened on the check path (after a
/// fork) must not wait for another process's writer.
fn migrate(conn: &mut Connection, prove_writable: bool) -> Result<()> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if !prove_writable && current == MIGRATIONS.len() as i64 {
        return Ok(());
    }
    // With nothing to migrate nothing is written (the write lock alone proves the file can be written),
    // so a process can still open the store on a full disk and check keys.
    if conn.is_readonly(rusqlite::DatabaseName::Main)? {
        return Err(Error::store("the file is read-only"));
    }
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
    if version < MIGRATIONS.len() {
        tx.pragma_update(None, "user_version", MIGRATIONS.len() as i64)?;
    }
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

/// A generation for one admin attempt: random, so an attempt that died before committing can never share
/// its number with a later committed one (the counters file would then look current with its change).
fn new_generation(committed: i64) -> Result<i64> {
    loop {
        let mut bytes = [0u8; 8];
        getrandom::getrandom(&mut bytes).map_err(|e| Error::internal(format!("no randomness: {e}")))?;
        let g = i64::from_le_bytes(bytes) & i64::MAX;
        if g != committed && g > 0 {
            return Ok(g);
        }
    }
}

/// Writes absolute counts (so writing the same counts twice, or from two processes, changes nothing),
/// never moving a count back.
fn write_counts(conn: &mut Connection, counts: &[Dirty]) -> Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    write_counts_in(&tx, counts)?;
    tx.commit()?;
    Ok(())
}

/// [`write_counts`] inside a write transaction the caller holds.
fn write_counts_in(tx: &Transaction, counts: &[Dirty]) -> Result<()> {
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
    const SELECT: &str = "SELECT k.row, k.id, k.digest, k.plan, k.expires_at_ms, k.revoked_at_ms, e.quota_limit,
                e.quota_period, e.rate_limit, e.rate_window_ms, e.rate_burst,
                u.period_start_ms, u.used, u.total, u.last_used_at_ms, u.rate_tat_ns,
                k.revoke_at_ms, k.created_at_ms, o.digest
         FROM keys k JOIN key_policy e ON e.row = k.row
         LEFT JOIN usage u ON u.key_row = COALESCE(k.counts_with, k.row)
         LEFT JOIN keys o ON o.row = k.counts_with";
    // One statement per kind, not `(?1 IS NULL OR k.row = ?1)`: SQLite plans that as a scan of every key,
    // and an admin change loads each changed row under the write lock, so a plan change of N keys in a
    // store of M cost N × M row reads (seconds at 10,000 keys, while every opener's busy wait timed out).
    let (sql, arg) = match which {
        Keys::All => (format!("{SELECT} ORDER BY k.row"), None),
        Keys::Row(r) => (format!("{SELECT} WHERE k.row = ?1"), Some(rusqlite::types::Value::Integer(r))),
        Keys::Plan(p) => {
            (format!("{SELECT} WHERE k.plan = ?1 ORDER BY k.row"), Some(rusqlite::types::Value::Text(p.to_string())))
        }
    };
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = match arg {
        Some(arg) => stmt.query([arg])?,
        None => stmt.query([])?,
    };
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
            carry: None,
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
    // Each cell's whole state is carried, under every key that counts in it (a rotated key and its
    // successor share one): the database may lack what the file counted since its last flush.
    let before = grow_from.map(|old| old.snapshot()).unwrap_or_default();
    for entry in &mut entries {
        entry.carry = before.cell_of(&entry.digest);
    }
    // More room than the keys need now, so that growing is rare.
    let room = if grow_from.is_some() { entries.len() * 2 } else { entries.len() };
    let built = SharedCounters::build(path, &entries, room, generation, db_path)?;
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
/// database does not have are tombstoned. `false`: the file is full, or so damaged that some key of the
/// database would not be decidable after all (the caller builds a new one).
fn resync_entries(entries: &[KeyEntry], shared: &SharedCounters, generation: i64) -> Result<bool> {
    shared.set_generation(-1);
    for entry in entries {
        if !shared.holds(entry) && (shared.upsert(entry).is_err() || !shared.holds(entry)) {
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
