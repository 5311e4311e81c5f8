//! Reading rows of `keys` (with their effective policy and stored usage): as the counters file needs
//! them ([`load_entries`]) and as the admin API shows them ([`key_record_from_row`]).

use rusqlite::{Connection, Row};
use serde_json::{Map, Value};

use crate::counters::{KeyEntry, SharedCounters, Tally};
use crate::error::{Error, Result};
use crate::gcra::{checked_rate, RateLimit};
use crate::key::KeyDigest;
use crate::key_state::{idle_revocation_at, state_at, Lifecycle};
use crate::period::Period;
use crate::policy::{KeyPolicy, Quota, Usage};
use crate::spec::{KeyRecord, QuotaJson, RateJson, UsageJson};

/// Which keys [`load_entries`] reads.
pub(super) enum Keys<'a> {
    All,
    Row(i64),
    Plan(&'a str),
}

/// Keys as the counters file needs them: effective policy (their own or their plan's), stored counts
/// (a rotated key's successor counts with the key it replaced).
pub(super) fn load_entries(conn: &Connection, which: Keys) -> Result<Vec<KeyEntry>> {
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
            tally: stored_tally(row, 11)?,
            shares_with: row.get::<_, Option<Vec<u8>>>(18)?.map(|_| digest_of(row, 18)).transpose()?,
        });
    }
    Ok(out)
}

fn digest_of(row: &Row, at: usize) -> Result<KeyDigest> {
    let digest: Vec<u8> = row.get(at)?;
    digest.try_into().map_err(|_| Error::store("corrupt store: a key digest is not 32 bytes"))
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
            checked_rate(limit, window_ms, burst).map(Some).map_err(|_| corrupt("rate limit"))
        }
        (None, None, None) => Ok(None),
        _ => Err(corrupt("rate limit")),
    }
}

fn stored_tally(row: &Row, at: usize) -> Result<Tally> {
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

/// The columns of a key record, and last the row (at [`RECORD_ROW`]), where the key list's cursor is.
pub(super) const RECORD_SELECT: &str =
    "SELECT k.digest, k.id, k.prefix, k.env, k.name, k.plan, k.created_at_ms, k.expires_at_ms,
        k.revoked_at_ms, k.revoked_reason, e.quota_limit, e.quota_period, e.rate_limit, e.rate_window_ms,
        e.rate_burst, k.meta, u.period_start_ms, u.used, u.total, u.last_used_at_ms, u.rate_tat_ns,
        k.revoke_at_ms, k.rotated_from, k.rotated_to, k.quota_from_plan, k.rate_from_plan, k.row
     FROM keys k JOIN key_policy e ON e.row = k.row LEFT JOIN usage u ON u.key_row = COALESCE(k.counts_with, k.row)";

pub(super) const RECORD_ROW: usize = 26;

/// What a key record is read with beyond its row: the counters file, whose counts are live (the
/// database lags it by up to a flush interval), the idle policy, and the instant its state is for.
pub(super) struct RecordContext<'a> {
    pub live: &'a SharedCounters,
    pub idle_ms: i64,
    pub now_ms: i64,
}

/// Reads a row of [`RECORD_SELECT`]; the outer `rusqlite::Result` is SQLite's, the inner one ours.
pub(super) fn key_record_from_row(row: &Row, cx: &RecordContext) -> rusqlite::Result<Result<KeyRecord>> {
    let build = || -> Result<KeyRecord> {
        let meta: String = row.get(15)?;
        let meta: Map<String, Value> = serde_json::from_str(&meta).map_err(|_| corrupt("meta"))?;
        let tally = cx.live.tally(&digest_of(row, 0)?).unwrap_or(stored_tally(row, 16)?);
        let (created_at_ms, revoked_reason): (i64, Option<String>) = (row.get(6)?, row.get(9)?);
        let lifecycle = Lifecycle {
            revoked_at_ms: row.get(8)?,
            revoked_reason: revoked_reason.as_deref(),
            revoke_at_ms: row.get(21)?,
            expires_at_ms: row.get(7)?,
            idle_at_ms: idle_revocation_at(created_at_ms, tally.last_used_at_ms, cx.idle_ms),
        };
        let state = state_at(&lifecycle, cx.now_ms);
        Ok(KeyRecord {
            id: row.get(1)?,
            prefix: row.get(2)?,
            env: row.get(3)?,
            name: row.get(4)?,
            plan: row.get(5)?,
            created_at_ms,
            expires_at_ms: lifecycle.expires_at_ms,
            revoked_at_ms: lifecycle.revoked_at_ms,
            revoked_reason: revoked_reason.clone(),
            quota: quota_of(row, 10)?.map(QuotaJson::from),
            rate_limit: rate_of(row, 12)?.map(RateJson::from),
            usage: UsageJson {
                period_start_ms: tally.usage.period_start_ms,
                used: tally.usage.used,
                total: tally.total,
                last_used_at_ms: tally.last_used_at_ms,
            },
            meta,
            revoke_at_ms: lifecycle.revoke_at_ms,
            rotated_from: row.get(22)?,
            rotated_to: row.get(23)?,
            follows_plan: [("quota", row.get::<_, i64>(24)?), ("rate_limit", row.get::<_, i64>(25)?)]
                .into_iter()
                .filter(|(_, follows)| *follows == 1)
                .map(|(what, _)| what)
                .collect(),
            state,
        })
    };
    Ok(build())
}
