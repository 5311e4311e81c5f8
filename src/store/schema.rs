//! The schema: every migration, in order, and [`migrate`], which applies those a file lacks. Each
//! migration is SQL, kept whole and never edited once released; `PRAGMA user_version` counts how many
//! a file has. All the migrations a file lacks are applied together, in one write transaction.
//!
//! The `key_state!`, `plan_state!` and `audit_state!` macros are the JSON shapes fleet mode publishes,
//! shared by the triggers here and by `store::fleet::replica`, which reads them back (macros are in scope only
//! after their definition, so `store/mod.rs` declares this module first, with `#[macro_use]`).

use rusqlite::{Connection, TransactionBehavior};

use super::open::describe_open_failure;
use crate::error::{Error, Result};

/// An audit event as fleet mode publishes it, from a row of `audit` (`$row` is `NEW.` in the trigger of
/// migration 6, empty where existing rows are published; `store::fleet::replica::AuditState` reads it).
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

/// A key's whole state as fleet mode publishes it (SQLite has no trigger for insert *or* update, so the
/// insert and update triggers of migration 5 share this expression; `store::fleet::replica::KeyState` reads it).
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

/// A plan's whole state as fleet mode publishes it (`store::fleet::replica::PlanState` reads it).
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
    // refills within ten years (gcra::MAX_REFILL_MS = 315,619,200,000 ms), exactly in integers where the
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
    // fleet agent to publish (see `fleet` and `store::fleet::replica`).
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
    // 7: the change log's order (issue 22). Every change this host sends gets, before it is sent, its
    // place in this host's sequence (`seq`, 1, 2, 3… with no hole, per origin) and the record's next
    // version; `fleet_sent` keeps what was sent, signed, so that a restart sends it again unchanged and
    // a host that missed it can have it again. `fleet_versions` holds the newest signed change of every
    // record this store holds (a change is applied only if newer). `fleet_origins` holds, per origin, the
    // highest seq up to which this host has every entry (`applied`), the highest it knows of (`head`), the
    // seq below which the origin no longer needs its entries applied (`floor`: it published every record
    // again from there), and the entries skipped as stale; `fleet_seen`, the seqs applied above a gap.
    // The log position is forgotten: the agent starts again from the fleet's state and its whole log, in
    // the new format, and publishes the records the fleet holds in no version yet.
    "CREATE TABLE fleet_sent (
        n         INTEGER PRIMARY KEY,
        origin    TEXT NOT NULL,
        seq       INTEGER NOT NULL,
        kind      TEXT NOT NULL,
        id        TEXT NOT NULL,
        body      TEXT NOT NULL,
        host      TEXT NOT NULL,
        version   INTEGER NOT NULL,
        sig       TEXT NOT NULL,
        published INTEGER NOT NULL DEFAULT 0,
        UNIQUE (origin, seq)
    );
    CREATE TABLE fleet_versions (
        kind    TEXT NOT NULL,
        id      TEXT NOT NULL,
        version INTEGER NOT NULL,
        origin  TEXT NOT NULL,
        host    TEXT NOT NULL,
        seq     INTEGER NOT NULL,
        body    TEXT NOT NULL,
        sig     TEXT NOT NULL,
        PRIMARY KEY (kind, id)
    );
    CREATE TABLE fleet_origins (
        origin       TEXT PRIMARY KEY,
        host         TEXT NOT NULL,
        applied      INTEGER NOT NULL DEFAULT 0,
        head         INTEGER NOT NULL DEFAULT 0,
        floor        INTEGER NOT NULL DEFAULT 0,
        stale        INTEGER NOT NULL DEFAULT 0,
        gap_since_ms INTEGER
    ) WITHOUT ROWID;
    CREATE TABLE fleet_seen (origin TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (origin, seq)) WITHOUT ROWID;
    DELETE FROM settings WHERE name = 'fleet_position';",
    // 8: fleet usage by host id (issue 22). Two hosts may share a name (machines cloned from one image):
    // keyed by name, they overwrote each other's rows and each took the other's for its own. `fleet_usage`
    // is now keyed by the host's id, its name a label (`host`). The rows by name are kept, as history, in
    // `fleet_usage_by_name`, this host's own dropped (its database counts them; its agent publishes them
    // again by id), each until a row by id of a host of that name for the same key and day replaces it
    // (`fleet_usage_merge`); `fleet_usage_counted` counts both. The usage stream's position is forgotten:
    // the agent takes in every host's retained rows, by id, again.
    "ALTER TABLE fleet_usage RENAME TO fleet_usage_by_name;
    DROP INDEX fleet_usage_key;
    CREATE INDEX fleet_usage_by_name_key ON fleet_usage_by_name(key_id, day);
    DELETE FROM fleet_usage_by_name
        WHERE host = (SELECT json_extract(value, '$.host') FROM settings WHERE name = 'fleet');
    CREATE TABLE fleet_usage (
        host_id         TEXT NOT NULL,
        host            TEXT NOT NULL,
        key_id          TEXT NOT NULL,
        day             INTEGER NOT NULL,
        admitted        INTEGER NOT NULL,
        expired         INTEGER NOT NULL,
        revoked         INTEGER NOT NULL,
        quota_exceeded  INTEGER NOT NULL,
        rate_limited    INTEGER NOT NULL,
        last_used_at_ms INTEGER,
        PRIMARY KEY (host_id, key_id, day)
    ) WITHOUT ROWID;
    CREATE INDEX fleet_usage_key ON fleet_usage(key_id, day);
    CREATE VIEW fleet_usage_counted AS
        SELECT host_id, host, key_id, day, admitted, expired, revoked, quota_exceeded, rate_limited, last_used_at_ms
        FROM fleet_usage
        UNION ALL
        SELECT '', n.host, n.key_id, n.day, n.admitted, n.expired, n.revoked, n.quota_exceeded, n.rate_limited,
               n.last_used_at_ms
        FROM fleet_usage_by_name n;
    DELETE FROM settings WHERE name = 'fleet_usage_position';",
];

/// Applies the migrations this file lacks, all in one write transaction (whose write lock also proves the
/// file can be written). A file written by a newer ms-auth is refused rather than misread. With
/// `prove_writable` false and nothing to migrate, no write lock is taken: a connection opened on the check
/// path (after a fork) must not wait for another process's writer. With nothing to migrate nothing is
/// written, so a process can still open the store on a full disk and check keys. True when the file had
/// no schema at all: this call made it a store (of processes racing to, exactly one).
pub(super) fn migrate(conn: &mut Connection, prove_writable: bool) -> Result<bool> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if !prove_writable && current == MIGRATIONS.len() as i64 {
        return Ok(false);
    }
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
    Ok(version == 0)
}

pub fn schema_version() -> usize {
    MIGRATIONS.len()
}
