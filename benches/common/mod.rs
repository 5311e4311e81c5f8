//! Shared by the benchmarks: a store with many keys, and the reference point every figure is compared
//! with, a SQLite-transaction-per-check implementation of the same policy.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ms_auth::policy::{decide, KeyPolicy, Usage};
use ms_auth::{KeySpec, Status, Store};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

pub const NOW: i64 = 1_800_000_000_000;

/// The importable key number `i` of a fixture.
pub fn fixture_key(i: usize) -> String {
    format!("bench-key-{i:012}")
}

/// A store at `dir/bench.db` with `n` keys (no rate limit, no expiry, a huge quota), written in one
/// transaction straight into the schema so that a million keys take seconds, not an hour of admin calls.
/// The store builds its counters file from them when it is opened.
pub fn fixture(dir: &Path, n: usize) -> PathBuf {
    let db = dir.join("bench.db");
    let store = Store::open(&db).unwrap();
    store
        .create_key(&KeySpec::from_json(&format!(r#"{{"key": "{}", "rate_limit": null, "expires_at_ms": null, "quota": {{"limit": 1000000000000, "period": "monthly"}}}}"#, fixture_key(0))).unwrap(), NOW)
        .unwrap();
    store.close().unwrap();
    let mut conn = Connection::open(&db).unwrap();
    let tx = conn.transaction().unwrap();
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO keys (id, digest, prefix, env, created_at_ms, quota_limit, quota_period)
                 VALUES (?1, ?2, 'bench', 'live', ?3, 1000000000000, 'monthly')",
            )
            .unwrap();
        for i in 1..n {
            let key = fixture_key(i);
            insert
                .execute(params![format!("key_bench{i}"), ms_auth::key::digest(key.as_bytes()).to_vec(), NOW])
                .unwrap();
        }
    }
    tx.execute("UPDATE meta SET value = value + 1 WHERE name = 'generation'", []).unwrap();
    tx.commit().unwrap();
    // As after an import: the first open builds the counters file for all the keys at once.
    std::fs::remove_file(ms_auth::counters::path_for(&db)).unwrap();
    db
}

/// The obvious design: one SQLite write transaction per check (what the issue measured at ~49k/s).
pub struct SqlitePerCheck {
    conn: Connection,
}

impl SqlitePerCheck {
    pub fn open(db: &Path) -> SqlitePerCheck {
        let conn = Connection::open(db).unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(30)).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;").unwrap();
        SqlitePerCheck { conn }
    }

    pub fn check(&mut self, key: &[u8], now_ms: i64) -> Status {
        let digest = ms_auth::key::digest(key);
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate).unwrap();
        let found = tx
            .query_row(
                "SELECT k.row, k.revoked_at_ms, k.expires_at_ms, k.quota_limit, k.quota_period,
                        u.period_start_ms, u.used, u.rate_tat_ns
                 FROM keys k LEFT JOIN usage u ON u.key_row = k.row WHERE k.digest = ?1",
                [digest.to_vec()],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, Option<i64>>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                        r.get::<_, Option<i64>>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, Option<i64>>(5)?,
                        r.get::<_, Option<i64>>(6)?,
                        r.get::<_, Option<i64>>(7)?,
                    ))
                },
            )
            .optional()
            .unwrap();
        let Some((row, revoked, expires, limit, period, start, used, tat)) = found else {
            return Status::ApiKeyInvalid;
        };
        let policy = KeyPolicy {
            revoked: revoked.is_some(),
            revoke_at_ms: None,
            expires_at_ms: expires,
            quota: limit.map(|limit| ms_auth::policy::Quota {
                limit,
                period: ms_auth::period::Period::parse(period.as_deref().unwrap_or("daily")).unwrap(),
            }),
            rate: None,
        };
        let usage = Usage { period_start_ms: start.unwrap_or(0), used: used.unwrap_or(0), tat_ns: tat.unwrap_or(0) };
        let (decision, next) = decide(&policy, &usage, now_ms);
        if let Some(n) = next {
            tx.execute(
                "INSERT INTO usage (key_row, period_start_ms, used, total, last_used_at_ms, rate_tat_ns)
                 VALUES (?1, ?2, ?3, 1, ?4, ?5)
                 ON CONFLICT (key_row) DO UPDATE SET period_start_ms = ?2, used = ?3, total = total + 1,
                    last_used_at_ms = ?4, rate_tat_ns = ?5",
                params![row, n.period_start_ms, n.used, now_ms, n.tat_ns],
            )
            .unwrap();
        }
        tx.commit().unwrap();
        decision.status
    }
}
