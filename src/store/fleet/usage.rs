//! Fleet-wide usage (the agent's side is `fleet::usage`): each host's daily counts per key, as its agent
//! publishes them, kept in `fleet_usage` by host id (the name is a label: two hosts may share one) so
//! that `usage` and `metrics` on any host show the fleet's totals. A host's own rows there are what its
//! agent last published, so that only what changed since is sent again. Counts are absolute and only
//! grow (a host's database counts never go down), so merging keeps the larger: a report arriving twice,
//! or late, changes nothing. Rows a store held by host name before (migration 8) are in
//! `fleet_usage_by_name`, each until a row by id of a host of that name replaces it; the view
//! `fleet_usage_counted` reads both.

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::Result;
use crate::store::Store;

/// One host's decisions about one key (the key its rotations count with) on one UTC day.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetUsageRow {
    pub key_id: String,
    /// Days since 1970-01-01 (UTC).
    pub day: i64,
    /// admitted, expired, revoked, quota exceeded, rate limited.
    pub counts: [i64; 5],
    /// The key's last use on that host, when the row was published.
    pub last_used_at_ms: Option<i64>,
}

impl Store {
    /// This host's daily counts from `since_day` on that differ from what it last published as `host_id`
    /// (or that it published under another name than `host`), at most `limit`. Counts of every process
    /// are written to the database first.
    pub fn fleet_usage_changed(
        &self,
        host_id: &str,
        host: &str,
        since_day: i64,
        limit: usize,
    ) -> Result<Vec<FleetUsageRow>> {
        self.flush()?;
        let db = self.db()?;
        let mut stmt = db.conn.prepare_cached(
            "SELECT k.id, d.day, d.admitted, d.expired, d.revoked, d.quota_exceeded, d.rate_limited, u.last_used_at_ms
             FROM usage_daily d JOIN keys k ON k.row = d.key_row LEFT JOIN usage u ON u.key_row = d.key_row
             LEFT JOIN fleet_usage f ON f.host_id = ?1 AND f.key_id = k.id AND f.day = d.day
             WHERE d.day >= ?3 AND (f.host_id IS NULL OR f.host != ?2 OR f.admitted != d.admitted
                   OR f.expired != d.expired OR f.revoked != d.revoked OR f.quota_exceeded != d.quota_exceeded
                   OR f.rate_limited != d.rate_limited)
             LIMIT ?4",
        )?;
        let rows = stmt.query_map(params![host_id, host, since_day, limit as i64], |r| {
            Ok(FleetUsageRow {
                key_id: r.get(0)?,
                day: r.get(1)?,
                counts: [r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?],
                last_used_at_ms: r.get(7)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records the counts a host (its id, and its name as a label) published (this host's: what it
    /// published), keeping the larger of each; the label is the latest. A row replaces for good the row
    /// held by name (before migration 8) of a host of that name for the same key and day.
    pub fn fleet_usage_merge(&self, host_id: &str, host: &str, rows: &[FleetUsageRow]) -> Result<()> {
        let mut db = self.db()?;
        let tx = db.conn.transaction()?;
        {
            let mut replaced =
                tx.prepare_cached("DELETE FROM fleet_usage_by_name WHERE host = ?1 AND key_id = ?2 AND day = ?3")?;
            let mut stmt = tx.prepare_cached(
                "INSERT INTO fleet_usage (host_id, host, key_id, day, admitted, expired, revoked, quota_exceeded,
                                          rate_limited, last_used_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (host_id, key_id, day) DO UPDATE SET host = excluded.host,
                    admitted = MAX(admitted, excluded.admitted), expired = MAX(expired, excluded.expired),
                    revoked = MAX(revoked, excluded.revoked),
                    quota_exceeded = MAX(quota_exceeded, excluded.quota_exceeded),
                    rate_limited = MAX(rate_limited, excluded.rate_limited),
                    last_used_at_ms = MAX(COALESCE(last_used_at_ms, excluded.last_used_at_ms),
                                          COALESCE(excluded.last_used_at_ms, last_used_at_ms))",
            )?;
            for r in rows {
                let [a, e, v, q, l] = r.counts;
                stmt.execute(params![host_id, host, r.key_id, r.day, a, e, v, q, l, r.last_used_at_ms])?;
                replaced.execute(params![host, r.key_id, r.day])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Forgets what this host published as `host_id` (Redis lost it: everything is published again).
    pub fn fleet_usage_forget(&self, host_id: &str) -> Result<()> {
        let db = self.db()?;
        db.conn.execute("DELETE FROM fleet_usage WHERE host_id = ?1", [host_id])?;
        Ok(())
    }

    /// True when this host has published anything as `host_id`.
    pub fn fleet_usage_published_any(&self, host_id: &str) -> Result<bool> {
        let db = self.db()?;
        Ok(db
            .conn
            .query_row("SELECT 1 FROM fleet_usage WHERE host_id = ?1 LIMIT 1", [host_id], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// The position in the fleet's usage stream up to which this store took it in.
    pub fn fleet_usage_position(&self) -> Result<Option<String>> {
        let db = self.db()?;
        Ok(db
            .conn
            .query_row("SELECT value FROM settings WHERE name = 'fleet_usage_position'", [], |r| r.get(0))
            .optional()?)
    }

    pub fn fleet_set_usage_position(&self, position: &str) -> Result<()> {
        let db = self.db()?;
        db.conn.execute(
            "INSERT INTO settings (name, value) VALUES ('fleet_usage_position', ?1)
             ON CONFLICT (name) DO UPDATE SET value = ?1",
            [position],
        )?;
        Ok(())
    }

    /// Drops this host's published rows of days before `before_day` and returns them (key id, day), for
    /// the agent to drop from Redis too: Redis keeps a bounded history.
    pub fn fleet_usage_retire(&self, host_id: &str, before_day: i64) -> Result<Vec<(String, i64)>> {
        let mut db = self.db()?;
        let tx = db.conn.transaction()?;
        let retired = {
            let mut stmt = tx.prepare_cached("SELECT key_id, day FROM fleet_usage WHERE host_id = ?1 AND day < ?2")?;
            let rows = stmt.query_map(params![host_id, before_day], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<Vec<(String, i64)>>>()?
        };
        tx.execute("DELETE FROM fleet_usage WHERE host_id = ?1 AND day < ?2", params![host_id, before_day])?;
        tx.commit()?;
        Ok(retired)
    }
}

/// This host in its fleet, if it is a member: (its id, its name). Its own rows in `fleet_usage` are not
/// counted twice: its database has them.
pub(crate) fn this_host(conn: &Connection) -> Result<Option<(String, String)>> {
    let member: Option<(Option<String>, Option<String>)> = conn
        .query_row(
            "SELECT json_extract(value, '$.host_id'), json_extract(value, '$.host') FROM settings WHERE name = 'fleet'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    Ok(match member {
        Some((Some(id), Some(name))) => Some((id, name)),
        _ => None,
    })
}

/// A day (days since 1970-01-01) and its counts by status.
pub(crate) type DayCounts = (i64, [i64; 5]);

/// The other hosts' counts of a key (by the id its rotations count with) per day from `first` to `last`,
/// and their latest use.
pub(crate) fn others_usage(
    conn: &Connection,
    key_id: &str,
    first: i64,
    last: i64,
) -> Result<(Vec<DayCounts>, Option<i64>)> {
    let Some((here, _)) = this_host(conn)? else { return Ok((vec![], None)) };
    let mut stmt = conn.prepare_cached(
        "SELECT f.day, SUM(f.admitted), SUM(f.expired), SUM(f.revoked), SUM(f.quota_exceeded), SUM(f.rate_limited)
         FROM keys k LEFT JOIN keys o ON o.row = k.counts_with
         JOIN fleet_usage_counted f ON f.key_id = COALESCE(o.id, k.id)
         WHERE k.id = ?1 AND f.host_id != ?2 AND f.day BETWEEN ?3 AND ?4 GROUP BY f.day",
    )?;
    let days = stmt
        .query_map(params![key_id, here, first, last], |r| {
            Ok((r.get::<_, i64>(0)?, [r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?]))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    // The latest use of any other host, even outside the range asked for.
    let latest: Option<i64> = conn.query_row(
        "SELECT MAX(f.last_used_at_ms) FROM keys k LEFT JOIN keys o ON o.row = k.counts_with
         JOIN fleet_usage_counted f ON f.key_id = COALESCE(o.id, k.id) WHERE k.id = ?1 AND f.host_id != ?2",
        params![key_id, here],
        |r| r.get(0),
    )?;
    Ok((days, latest))
}

/// One other host's decisions in all: its name, its id (empty for rows a store held by name before
/// migration 8), and its counts by status (admitted, expired, revoked, quota exceeded, rate limited).
pub(crate) type HostTotals = (String, String, [i64; 5]);

/// Every other host's decisions in all, for the fleet's metrics: one entry per host id (labelled with
/// the name of its newest row: SQLite takes bare columns from the row of the query's one MAX), and one per
/// name for rows held by name.
pub(crate) fn others_totals(conn: &Connection) -> Result<Vec<HostTotals>> {
    let Some((here, _)) = this_host(conn)? else { return Ok(vec![]) };
    let mut stmt = conn.prepare_cached(
        "SELECT host, host_id, MAX(day), SUM(admitted), SUM(expired), SUM(revoked), SUM(quota_exceeded),
                SUM(rate_limited)
         FROM fleet_usage_counted WHERE host_id != ?1
         GROUP BY host_id, CASE WHEN host_id = '' THEN host END",
    )?;
    let rows = stmt
        .query_map([here], |r| Ok((r.get(0)?, r.get(1)?, [r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?])))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Every other host's decisions about all keys per day from `first` to `last`.
pub(crate) fn others_days(conn: &Connection, first: i64, last: i64) -> Result<Vec<DayCounts>> {
    let Some((here, _)) = this_host(conn)? else { return Ok(vec![]) };
    let mut stmt = conn.prepare_cached(
        "SELECT day, SUM(admitted), SUM(expired), SUM(revoked), SUM(quota_exceeded), SUM(rate_limited)
         FROM fleet_usage_counted WHERE host_id != ?1 AND day BETWEEN ?2 AND ?3 GROUP BY day",
    )?;
    let rows = stmt.query_map(params![here, first, last], |r| {
        Ok((r.get(0)?, [r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?]))
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}
