//! What was decided: a key's or the whole store's decisions per UTC day (from `usage_daily`, plus the
//! fleet's other hosts), and the Prometheus metrics.

use std::fmt::Write as _;

use rusqlite::params;
use serde::Serialize;

use super::policies::load_policies;
use super::Store;
use crate::error::{Error, Result};
use crate::key_state::{idle_revocation_at, state_at, KeyState, Lifecycle};
use crate::period::{check_time_ms, Period, DAY_MS};

/// One UTC day of a key's decisions.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct UsageDay {
    pub date: String,
    pub start_ms: i64,
    pub admitted: i64,
    pub rejected: Rejected,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Rejected {
    pub api_key_expired: i64,
    pub api_key_revoked: i64,
    pub api_key_quota_exceeded: i64,
    pub rate_limit_exceeded: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UsageHistory {
    pub key_id: String,
    pub last_used_at_ms: Option<i64>,
    pub days: Vec<UsageDay>,
}

/// A day's counts in `usage_daily`'s column order: admitted, expired, revoked, quota exceeded, rate limited.
fn usage_day(day: i64, c: [i64; 5]) -> UsageDay {
    UsageDay {
        date: date_of(day),
        start_ms: day * DAY_MS,
        admitted: c[0],
        rejected: Rejected {
            api_key_expired: c[1],
            api_key_revoked: c[2],
            api_key_quota_exceeded: c[3],
            rate_limit_exceeded: c[4],
        },
    }
}

fn date_of(day: i64) -> String {
    chrono::DateTime::from_timestamp_millis(day * DAY_MS).map_or_else(String::new, |t| t.format("%Y-%m-%d").to_string())
}

impl Store {
    /// A key's decisions per UTC day from `from_ms` to `to_ms` (days with none included, as zeros). A
    /// rotated key's successor shares its history, as it shares its quota.
    pub fn usage(&self, id: &str, from_ms: i64, to_ms: i64) -> Result<UsageHistory> {
        check_time_ms("from_ms", from_ms)?;
        check_time_ms("to_ms", to_ms)?;
        if to_ms < from_ms || to_ms - from_ms > 3_660 * DAY_MS {
            return Err(Error::invalid("to_ms must be at or after from_ms, and at most ten years later"));
        }
        self.flush()?;
        let last_used_at_ms = self.get_key(id)?.usage.last_used_at_ms;
        let (first, last) = (from_ms.div_euclid(DAY_MS), to_ms.div_euclid(DAY_MS));
        let db = self.db()?;
        let mut stmt = db.conn.prepare_cached(
            "SELECT d.day, d.admitted, d.expired, d.revoked, d.quota_exceeded, d.rate_limited
             FROM keys k JOIN usage_daily d ON d.key_row = COALESCE(k.counts_with, k.row)
             WHERE k.id = ?1 AND d.day BETWEEN ?2 AND ?3",
        )?;
        let mut found: std::collections::HashMap<i64, [i64; 5]> = std::collections::HashMap::new();
        for row in stmt.query_map(params![id, first, last], |r| {
            Ok((r.get::<_, i64>(0)?, [r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?]))
        })? {
            let (day, counts): (i64, [i64; 5]) = row?;
            found.insert(day, counts);
        }
        // In a fleet: the other hosts' counts too, as their agents last published them.
        let (others, others_last_used) = super::fleet::others_usage(&db.conn, id, first, last)?;
        for (day, counts) in others {
            let total = found.entry(day).or_default();
            for (t, c) in total.iter_mut().zip(counts) {
                *t += c;
            }
        }
        let last_used_at_ms = last_used_at_ms.max(others_last_used);
        let days = (first..=last).map(|day| usage_day(day, found.get(&day).copied().unwrap_or_default())).collect();
        Ok(UsageHistory { key_id: id.to_string(), last_used_at_ms, days })
    }

    /// The whole store's decisions per UTC day from `from_ms` to `to_ms` (days with none included, as
    /// zeros): what [`Store::usage`] gives for one key, summed over every key (the console's overview); in
    /// a fleet, every host's.
    pub fn usage_totals(&self, from_ms: i64, to_ms: i64) -> Result<Vec<UsageDay>> {
        check_time_ms("from_ms", from_ms)?;
        check_time_ms("to_ms", to_ms)?;
        if to_ms < from_ms || to_ms - from_ms > 3_660 * DAY_MS {
            return Err(Error::invalid("to_ms must be at or after from_ms, and at most ten years later"));
        }
        self.flush()?;
        let (first, last) = (from_ms.div_euclid(DAY_MS), to_ms.div_euclid(DAY_MS));
        let db = self.db()?;
        let mut stmt = db.conn.prepare_cached(
            "SELECT day, SUM(admitted), SUM(expired), SUM(revoked), SUM(quota_exceeded), SUM(rate_limited)
             FROM usage_daily WHERE day BETWEEN ?1 AND ?2 GROUP BY day",
        )?;
        let mut found = std::collections::HashMap::new();
        for row in stmt.query_map(params![first, last], |r| {
            Ok((r.get::<_, i64>(0)?, [r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?]))
        })? {
            let (day, counts): (i64, [i64; 5]) = row?;
            found.insert(day, counts);
        }
        // In a fleet: the other hosts' counts too.
        for (day, counts) in super::fleet::others_days(&db.conn, first, last)? {
            let total = found.entry(day).or_default();
            for (t, c) in total.iter_mut().zip(counts) {
                *t += c;
            }
        }
        Ok((first..=last).map(|day| usage_day(day, found.get(&day).copied().unwrap_or_default())).collect())
    }

    /// Prometheus text exposition: decisions by status, keys by state, quota use per plan.
    pub fn metrics_text(&self, now_ms: i64) -> Result<String> {
        self.flush()?;
        let db = self.db()?;
        let mut out = String::new();
        let totals: [i64; 5] = db.conn.query_row(
            "SELECT COALESCE(SUM(admitted), 0), COALESCE(SUM(expired), 0), COALESCE(SUM(revoked), 0),
                    COALESCE(SUM(quota_exceeded), 0), COALESCE(SUM(rate_limited), 0) FROM usage_daily",
            [],
            |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?]),
        )?;
        out.push_str(
            "# HELP ms_auth_checks_total Decisions about requests that matched a key, by status (every process).\n",
        );
        out.push_str("# TYPE ms_auth_checks_total counter\n");
        for (status, n) in ["ok", "api_key_expired", "api_key_revoked", "api_key_quota_exceeded", "rate_limit_exceeded"]
            .iter()
            .zip(totals)
        {
            let _ = writeln!(out, "ms_auth_checks_total{{status=\"{status}\"}} {n}");
        }
        out.push_str("# HELP ms_auth_unmatched_checks_total Requests that matched no key, in this process.\n");
        out.push_str("# TYPE ms_auth_unmatched_checks_total counter\n");
        for (status, n) in ["api_key_missing", "api_key_invalid"].iter().zip(&self.unmatched) {
            let _ = writeln!(
                out,
                "ms_auth_unmatched_checks_total{{status=\"{status}\"}} {}",
                n.load(std::sync::atomic::Ordering::Relaxed)
            );
        }
        out.push_str(
            "# HELP ms_auth_flush_failures_total Flush turns of checks in this process that could not write to \
             the database (write lock busy, disk failing); each is retried at the next turn.\n",
        );
        out.push_str("# TYPE ms_auth_flush_failures_total counter\n");
        let _ = writeln!(out, "ms_auth_flush_failures_total {}", self.flush_failures());
        let others = super::fleet::others_totals(&db.conn)?;
        if let Some((here_id, here_name)) = super::fleet::this_host(&db.conn)? {
            out.push_str(
                "# HELP ms_auth_fleet_checks_total Decisions about requests that matched a key, by host of the \
                 fleet (its name, and its id: two hosts may share a name) and status: this host's from its \
                 database, the others' as their agents last published them (within a few seconds). Sum over \
                 hosts for the fleet's totals.\n",
            );
            out.push_str("# TYPE ms_auth_fleet_checks_total counter\n");
            let mut hosts = vec![(here_name, here_id, totals)];
            hosts.extend(others);
            hosts.sort();
            for (host, host_id, counts) in &hosts {
                for (status, n) in
                    ["ok", "api_key_expired", "api_key_revoked", "api_key_quota_exceeded", "rate_limit_exceeded"]
                        .iter()
                        .zip(counts)
                {
                    let _ = writeln!(
                        out,
                        "ms_auth_fleet_checks_total{{host=\"{}\",host_id=\"{}\",status=\"{status}\"}} {n}",
                        escape_label(host),
                        escape_label(host_id)
                    );
                }
            }
            let log = super::fleet::log_health(&db.conn)?;
            out.push_str(
                "# HELP ms_auth_fleet_log_caught_up 1 when this host holds every entry of the fleet's change log \
                 that its origins sent (no gap), 0 while entries are missing (deleted from the log, lost by Redis).\n\
                 # TYPE ms_auth_fleet_log_caught_up gauge\n",
            );
            let _ = writeln!(out, "ms_auth_fleet_log_caught_up {}", u8::from(log.gaps.is_empty()));
            out.push_str(
                "# HELP ms_auth_fleet_log_gaps Origins (hosts) of which this host misses change log entries.\n\
                 # TYPE ms_auth_fleet_log_gaps gauge\n",
            );
            let _ = writeln!(out, "ms_auth_fleet_log_gaps {}", log.gaps.len());
            out.push_str(
                "# HELP ms_auth_fleet_log_missing Change log entries this host misses, all origins.\n\
                 # TYPE ms_auth_fleet_log_missing gauge\n",
            );
            let _ = writeln!(out, "ms_auth_fleet_log_missing {}", log.gaps.iter().map(|g| g.missing).sum::<i64>());
            out.push_str(
                "# HELP ms_auth_fleet_log_stale_total Change log entries not applied because this host had them \
                 or held the record at that version or newer (replays, changes sent again, changes that lost \
                 to a newer one).\n# TYPE ms_auth_fleet_log_stale_total counter\n",
            );
            let _ = writeln!(out, "ms_auth_fleet_log_stale_total {}", log.stale);
        }
        // Keys by state from the function every view uses; the counts were just flushed, so the database's
        // last uses are the ones the idle policy counts from. Quota figures are of the keys checks admit.
        let idle_ms = load_policies(&db.conn)?.idle_ms;
        let mut states = [0i64; KeyState::ALL.len()];
        let mut per_plan: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
        let mut stmt = db.conn.prepare_cached(
            "SELECT k.revoked_at_ms, k.revoked_reason, k.revoke_at_ms, k.expires_at_ms, k.created_at_ms,
                    u.last_used_at_ms, COALESCE(k.plan, ''), e.quota_limit, e.quota_period, u.period_start_ms, u.used
             FROM keys k JOIN key_policy e ON e.row = k.row LEFT JOIN usage u ON u.key_row = COALESCE(k.counts_with, k.row)",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let reason: Option<String> = r.get(1)?;
            let key = Lifecycle {
                revoked_at_ms: r.get(0)?,
                revoked_reason: reason.as_deref(),
                revoke_at_ms: r.get(2)?,
                expires_at_ms: r.get(3)?,
                idle_at_ms: idle_revocation_at(r.get(4)?, r.get(5)?, idle_ms),
            };
            let state = state_at(&key, now_ms).state;
            states[KeyState::ALL.iter().position(|s| *s == state).unwrap_or(0)] += 1;
            let (Some(limit), Some(period)) = (r.get::<_, Option<i64>>(7)?, r.get::<_, Option<String>>(8)?) else {
                continue;
            };
            if !state.admits() {
                continue;
            }
            let (start, used): (Option<i64>, Option<i64>) = (r.get(9)?, r.get(10)?);
            let current = Period::parse(&period).map(|p| p.bounds(now_ms).0).ok();
            let used = if start.is_some() && start == current { used.unwrap_or(0) } else { 0 };
            let entry = per_plan.entry(r.get(6)?).or_default();
            entry.0 += used;
            entry.1 += limit;
        }
        out.push_str(
            "# HELP ms_auth_keys Keys by state, as key records show it (active, expiring within 7 days, rotating \
             in a grace period, revoked, expired).\n# TYPE ms_auth_keys gauge\n",
        );
        for (state, n) in KeyState::ALL.iter().zip(states) {
            // No version has customers yet, so none is suspended: the series would only ever be 0.
            if *state != KeyState::Suspended {
                let _ = writeln!(out, "ms_auth_keys{{state=\"{}\"}} {n}", state.as_str());
            }
        }
        out.push_str(
            "# HELP ms_auth_quota_used Requests counted in the current quota period by the keys checks admit, by plan (\"\" for none).\n",
        );
        out.push_str("# TYPE ms_auth_quota_used gauge\n");
        for (plan, (used, _)) in &per_plan {
            let _ = writeln!(out, "ms_auth_quota_used{{plan=\"{}\"}} {used}", escape_label(plan));
        }
        out.push_str(
            "# HELP ms_auth_quota_limit Sum of the quotas of the keys checks admit, by plan.\n# TYPE ms_auth_quota_limit gauge\n",
        );
        for (plan, (_, limit)) in &per_plan {
            let _ = writeln!(out, "ms_auth_quota_limit{{plan=\"{}\"}} {limit}", escape_label(plan));
        }
        Ok(out)
    }
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
