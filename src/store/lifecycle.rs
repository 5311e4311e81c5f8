//! Key lifecycle and monitoring: rotation, plans, store-wide revocation policies, the audit log, daily
//! usage history and Prometheus metrics. Part of the store because all of it is SQL.

use std::fmt::Write as _;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::{load_entries, new_key_id, slot_of, Created, Keys, Store};
use crate::counters::Policies;
use crate::error::{Error, Result};
use crate::key::{self, Env};
use crate::period::{Period, DAY_MS};
use crate::spec::{self, QuotaJson, RateJson};

pub const DEFAULT_GRACE_MS: i64 = 86_400_000;

/// A named plan: the quota, rate limit and lifetime of the keys on it that set none of their own.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlanSpec {
    pub name: String,
    pub quota: Option<QuotaJson>,
    pub rate_limit: Option<RateJson>,
    pub lifetime_ms: Option<i64>,
}

impl PlanSpec {
    /// `{"name": "pro", "quota": {...} | null, "rate_limit": {...} | null, "lifetime_ms": N | null}`;
    /// an absent quota or lifetime means none, an absent rate limit the store default (60 per minute).
    pub fn from_json(text: &str) -> Result<PlanSpec> {
        let mut obj = spec::parse_object(text, "plan")?;
        let name = match obj.remove("name") {
            Some(Value::String(n)) if !n.is_empty() && n.len() <= spec::MAX_PLAN_LEN => n,
            _ => return Err(Error::invalid("plan.name must be a string of 1..=63 bytes")),
        };
        // The key-spec parser knows these fields; reuse it so both accept exactly the same shapes.
        let mut fields = Map::new();
        for f in ["quota", "rate_limit"] {
            if let Some(v) = obj.remove(f) {
                fields.insert(f.to_string(), v);
            }
        }
        let parsed = spec::KeySpec::from_json(&Value::Object(fields).to_string())?;
        let lifetime_ms = match obj.remove("lifetime_ms") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_i64() {
                Some(ms) if ms > 0 => Some(ms),
                _ => return Err(Error::invalid("plan.lifetime_ms must be a positive integer or null")),
            },
        };
        if let Some(k) = obj.keys().next() {
            return Err(Error::invalid(format!("unknown field {k:?} in plan")));
        }
        Ok(PlanSpec {
            name,
            quota: parsed.quota.map(QuotaJson::from),
            rate_limit: parsed.rate_limit.or(Some(super::DEFAULT_RATE)).map(RateJson::from),
            lifetime_ms,
        })
    }
}

/// Store-wide revocation policies. `None` fields are left as they are.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicySpec {
    /// Revoke keys unused for this many ms (`Some(0)`: off).
    pub idle_ms: Option<i64>,
    /// Revoke keys rate-limited more than `limit` times within `window_ms` (`Some((0, 0))`: off).
    pub abuse: Option<(i64, i64)>,
}

impl PolicySpec {
    /// `{"idle": {"days": 90} | null, "abuse": {"limit": 100, "window_ms": 600000} | null}`.
    pub fn from_json(text: &str) -> Result<PolicySpec> {
        let mut obj = spec::parse_object(text, "policy")?;
        let mut out = PolicySpec::default();
        match obj.remove("idle") {
            None => {}
            Some(Value::Null) => out.idle_ms = Some(0),
            Some(Value::Object(o)) => match (o.get("days").and_then(Value::as_i64), o.len()) {
                (Some(days), 1) if (1..=36_500).contains(&days) => out.idle_ms = Some(days * DAY_MS),
                _ => return Err(Error::invalid("policy.idle must be {\"days\": 1..36500} or null")),
            },
            Some(_) => return Err(Error::invalid("policy.idle must be {\"days\": N} or null")),
        }
        match obj.remove("abuse") {
            None => {}
            Some(Value::Null) => out.abuse = Some((0, 0)),
            Some(Value::Object(o)) => {
                let limit = o.get("limit").and_then(Value::as_i64).filter(|n| (1..=1_000_000_000).contains(n));
                let window = o.get("window_ms").and_then(Value::as_i64).filter(|n| (1_000..=31 * DAY_MS).contains(n));
                match (limit, window, o.len()) {
                    (Some(l), Some(w), 2) => out.abuse = Some((l, w)),
                    _ => {
                        return Err(Error::invalid(
                            "policy.abuse must be {\"limit\": N >= 1, \"window_ms\": 1000..=2678400000} or null",
                        ))
                    }
                }
            }
            Some(_) => return Err(Error::invalid("policy.abuse must be an object or null")),
        }
        if let Some(k) = obj.keys().next() {
            return Err(Error::invalid(format!("unknown field {k:?} in policy (\"rotated\" always applies)")));
        }
        Ok(out)
    }
}

/// The policies in force, as JSON.
pub fn policies_json(p: &Policies) -> Value {
    json!({
        "idle": (p.idle_ms > 0).then(|| json!({"days": p.idle_ms / DAY_MS})),
        "abuse": (p.abuse_limit > 0).then(|| json!({"limit": p.abuse_limit, "window_ms": p.abuse_window_ms})),
        "rotated": "always",
    })
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditEvent {
    pub seq: i64,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub key_id: Option<String>,
    pub detail: Value,
    /// In a fleet: the host where the change was made (events of every member are in every host's log).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct AuditFilter {
    pub key_id: Option<String>,
    pub since_ms: Option<i64>,
    pub limit: Option<i64>,
}

impl AuditFilter {
    /// `{"key_id": "...", "since_ms": N, "limit": N}`, each optional.
    pub fn from_json(text: &str) -> Result<AuditFilter> {
        let obj = spec::parse_object(text, "audit filter")?;
        let mut out = AuditFilter::default();
        for (k, v) in obj {
            match (k.as_str(), v) {
                ("key_id", Value::String(s)) => out.key_id = Some(s),
                ("since_ms", v) if v.is_i64() => out.since_ms = v.as_i64(),
                ("limit", v) if v.as_i64().is_some_and(|n| n > 0) => out.limit = v.as_i64(),
                (k, _) => return Err(Error::invalid(format!("bad or unknown field {k:?} in audit filter"))),
            }
        }
        Ok(out)
    }
}

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

pub(crate) fn load_policies(conn: &Connection) -> Result<Policies> {
    let text: Option<String> =
        conn.query_row("SELECT value FROM settings WHERE name = 'policies'", [], |r| r.get(0)).optional()?;
    let v: Value = text.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or(Value::Null);
    let n = |k: &str| v.get(k).and_then(Value::as_i64).unwrap_or(0);
    // A member of a fleet counts quotas only within the leases its agent holds.
    let fleet_leases =
        conn.query_row("SELECT 1 FROM settings WHERE name = 'fleet'", [], |_| Ok(())).optional()?.is_some();
    Ok(Policies {
        idle_ms: n("idle_ms"),
        abuse_limit: n("abuse_limit"),
        abuse_window_ms: n("abuse_window_ms"),
        fleet_leases,
    })
}

pub(crate) struct StoredPlan {
    pub lifetime_ms: Option<i64>,
}

pub(crate) fn plan_of(conn: &Connection, name: &str) -> Result<Option<StoredPlan>> {
    Ok(conn
        .query_row("SELECT lifetime_ms FROM plans WHERE name = ?1", [name], |r| {
            Ok(StoredPlan { lifetime_ms: r.get(0)? })
        })
        .optional()?)
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
    /// Replaces a key with a new one of the same policy, plan and meta that counts against the same
    /// quota; the old key keeps working for `grace_ms`, then answers `api_key_revoked` (reason
    /// "rotated"). Returns the new key (its plaintext shown this once).
    pub fn rotate_key(&self, id: &str, grace_ms: i64, now_ms: i64) -> Result<Created> {
        spec::check_time_ms("now_ms", now_ms)?;
        if !(0..=366 * DAY_MS).contains(&grace_ms) {
            return Err(Error::invalid("grace_ms must be between 0 and a year"));
        }
        let new_id = new_key_id()?;
        let mut plaintext = String::new();
        self.admin(|tx| {
            let old = slot_of(tx, id)?;
            let (env, revoked, rotated_to, owner): (String, Option<i64>, Option<String>, i64) = tx.query_row(
                "SELECT env, revoked_at_ms, rotated_to, COALESCE(counts_with, row) FROM keys WHERE row = ?1",
                [old],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )?;
            if revoked.is_some() {
                return Err(Error::invalid(format!("key {id} is revoked: a revoked key cannot be rotated")));
            }
            if let Some(next) = rotated_to {
                return Err(Error::invalid(format!("key {id} was already rotated to {next}")));
            }
            plaintext = key::generate(Env::parse(&env)?)?;
            tx.execute(
                "INSERT INTO keys (id, digest, prefix, env, name, plan, created_at_ms, expires_at_ms, quota_limit,
                                   quota_period, rate_limit, rate_window_ms, rate_burst, meta, quota_from_plan,
                                   rate_from_plan, rotated_from, counts_with)
                 SELECT ?1, ?2, ?3, env, name, plan, ?4,
                        CASE WHEN expires_at_ms IS NULL THEN NULL ELSE ?4 + (expires_at_ms - created_at_ms) END,
                        quota_limit, quota_period, rate_limit, rate_window_ms, rate_burst, meta, quota_from_plan,
                        rate_from_plan, id, ?5
                 FROM keys WHERE row = ?6",
                params![
                    new_id,
                    key::digest(plaintext.as_bytes()).to_vec(),
                    key::display_prefix(&plaintext),
                    now_ms,
                    owner,
                    old
                ],
            )?;
            let new_row = tx.last_insert_rowid();
            tx.execute(
                "UPDATE keys SET rotated_to = ?1, revoke_at_ms = ?2 WHERE row = ?3",
                params![new_id, now_ms + grace_ms, old],
            )?;
            self.audit(tx, now_ms, "key.rotate", Some(id), json!({"new_key_id": new_id, "grace_ms": grace_ms}))?;
            Ok(vec![old, new_row])
        })?;
        let record = self.get_key(&new_id)?;
        Ok(Created { key: plaintext, record })
    }

    /// Creates or replaces a plan; its keys that set no limit of their own follow it from their next check.
    pub fn put_plan(&self, plan: &PlanSpec, now_ms: i64) -> Result<Value> {
        spec::check_time_ms("now_ms", now_ms)?;
        self.admin(|tx| {
            tx.execute(
                "INSERT INTO plans (name, quota_limit, quota_period, rate_limit, rate_window_ms, rate_burst, lifetime_ms, updated_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (name) DO UPDATE SET quota_limit = ?2, quota_period = ?3, rate_limit = ?4,
                    rate_window_ms = ?5, rate_burst = ?6, lifetime_ms = ?7, updated_at_ms = ?8",
                params![
                    plan.name,
                    plan.quota.as_ref().map(|q| q.limit),
                    plan.quota.as_ref().map(|q| q.period),
                    plan.rate_limit.as_ref().map(|r| r.limit),
                    plan.rate_limit.as_ref().map(|r| r.window_ms),
                    plan.rate_limit.as_ref().map(|r| r.burst),
                    plan.lifetime_ms,
                    now_ms
                ],
            )?;
            self.audit(tx, now_ms, "plan.put", None, serde_json::to_value(plan).unwrap_or(Value::Null))?;
            Ok(load_entries(tx, Keys::Plan(&plan.name))?.iter().map(|e| e.row).collect())
        })?;
        self.list_plans()?
            .into_iter()
            .find(|p| p["name"] == plan.name.as_str())
            .ok_or_else(|| Error::internal("a plan just written is missing"))
    }

    /// Every plan, with how many keys are on it.
    pub fn list_plans(&self) -> Result<Vec<Value>> {
        let db = self.db()?;
        let mut stmt = db.conn.prepare_cached(
            "SELECT p.name, p.quota_limit, p.quota_period, p.rate_limit, p.rate_window_ms, p.rate_burst, p.lifetime_ms,
                    p.updated_at_ms, (SELECT COUNT(*) FROM keys k WHERE k.plan = p.name)
             FROM plans p ORDER BY p.name",
        )?;
        let rows = stmt.query_map([], |r| {
            let quota = match (r.get::<_, Option<i64>>(1)?, r.get::<_, Option<String>>(2)?) {
                (Some(limit), Some(period)) => json!({"limit": limit, "period": period}),
                _ => Value::Null,
            };
            let rate = match (r.get::<_, Option<i64>>(3)?, r.get::<_, Option<i64>>(4)?, r.get::<_, Option<i64>>(5)?) {
                (Some(limit), Some(window_ms), Some(burst)) => {
                    json!({"limit": limit, "window_ms": window_ms, "burst": burst})
                }
                _ => Value::Null,
            };
            Ok(json!({
                "name": r.get::<_, String>(0)?, "quota": quota, "rate_limit": rate,
                "lifetime_ms": r.get::<_, Option<i64>>(6)?, "updated_at_ms": r.get::<_, i64>(7)?,
                "keys": r.get::<_, i64>(8)?,
            }))
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Changes the store-wide revocation policies; every process applies them from its next check on.
    pub fn set_policies(&self, change: &PolicySpec, now_ms: i64) -> Result<Value> {
        spec::check_time_ms("now_ms", now_ms)?;
        self.admin(|tx| {
            let mut p = load_policies(tx)?;
            if let Some(idle) = change.idle_ms {
                p.idle_ms = idle;
            }
            if let Some((limit, window)) = change.abuse {
                (p.abuse_limit, p.abuse_window_ms) = (limit, window);
            }
            let stored = json!({"idle_ms": p.idle_ms, "abuse_limit": p.abuse_limit, "abuse_window_ms": p.abuse_window_ms});
            tx.execute(
                "INSERT INTO settings (name, value) VALUES ('policies', ?1) ON CONFLICT (name) DO UPDATE SET value = ?1",
                [stored.to_string()],
            )?;
            self.audit(tx, now_ms, "policy.set", None, policies_json(&p))?;
            Ok(vec![])
        })?;
        self.policies()
    }

    pub fn policies(&self) -> Result<Value> {
        Ok(policies_json(&load_policies(&self.db()?.conn)?))
    }

    /// The audit log, oldest first.
    pub fn audit_events(&self, filter: &AuditFilter) -> Result<Vec<AuditEvent>> {
        let db = self.db()?;
        let mut stmt = db.conn.prepare_cached(
            "SELECT seq, at_ms, actor, action, key_id, detail,
                    COALESCE(host, (SELECT json_extract(value, '$.host') FROM settings WHERE name = 'fleet'))
             FROM audit WHERE (?1 IS NULL OR key_id = ?1) AND (?2 IS NULL OR at_ms >= ?2)
             ORDER BY seq DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![filter.key_id, filter.since_ms, filter.limit.unwrap_or(1000)], |r| {
            Ok(AuditEvent {
                seq: r.get(0)?,
                at_ms: r.get(1)?,
                actor: r.get(2)?,
                action: r.get(3)?,
                key_id: r.get(4)?,
                detail: serde_json::from_str(&r.get::<_, String>(5)?).unwrap_or(Value::Null),
                host: r.get(6)?,
            })
        })?;
        let mut events: Vec<AuditEvent> = rows.collect::<rusqlite::Result<_>>()?;
        events.reverse();
        Ok(events)
    }

    /// A key's decisions per UTC day from `from_ms` to `to_ms` (days with none included, as zeros). A
    /// rotated key's successor shares its history, as it shares its quota.
    pub fn usage(&self, id: &str, from_ms: i64, to_ms: i64) -> Result<UsageHistory> {
        spec::check_time_ms("from_ms", from_ms)?;
        spec::check_time_ms("to_ms", to_ms)?;
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
        let (others, others_last_used) = super::fleet_usage::others_usage(&db.conn, id, first, last)?;
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
        spec::check_time_ms("from_ms", from_ms)?;
        spec::check_time_ms("to_ms", to_ms)?;
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
        for (day, counts) in super::fleet_usage::others_days(&db.conn, first, last)? {
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
        let others = super::fleet_usage::others_totals(&db.conn)?;
        if let Some(here) = super::fleet_usage::this_host(&db.conn)? {
            out.push_str(
                "# HELP ms_auth_fleet_checks_total Decisions about requests that matched a key, by host of the \
                 fleet and status: this host's from its database, the others' as their agents last published \
                 them (within a few seconds). Sum over hosts for the fleet's totals.\n",
            );
            out.push_str("# TYPE ms_auth_fleet_checks_total counter\n");
            let mut hosts = vec![(here, totals)];
            hosts.extend(others);
            hosts.sort();
            for (host, counts) in &hosts {
                for (status, n) in
                    ["ok", "api_key_expired", "api_key_revoked", "api_key_quota_exceeded", "rate_limit_exceeded"]
                        .iter()
                        .zip(counts)
                {
                    let _ = writeln!(
                        out,
                        "ms_auth_fleet_checks_total{{host=\"{}\",status=\"{status}\"}} {n}",
                        escape_label(host)
                    );
                }
            }
        }
        let states: [i64; 3] = db.conn.query_row(
            "SELECT COALESCE(SUM(revoked_at_ms IS NULL AND (revoke_at_ms IS NULL OR revoke_at_ms > ?1)
                         AND (expires_at_ms IS NULL OR expires_at_ms > ?1)), 0),
                    COALESCE(SUM(revoked_at_ms IS NULL AND (revoke_at_ms IS NULL OR revoke_at_ms > ?1)
                         AND expires_at_ms <= ?1), 0),
                    COALESCE(SUM(revoked_at_ms IS NOT NULL OR revoke_at_ms <= ?1), 0)
             FROM keys",
            [now_ms],
            |r| Ok([r.get(0)?, r.get(1)?, r.get(2)?]),
        )?;
        out.push_str("# HELP ms_auth_keys Keys by state.\n# TYPE ms_auth_keys gauge\n");
        for (state, n) in ["active", "expired", "revoked"].iter().zip(states) {
            let _ = writeln!(out, "ms_auth_keys{{state=\"{state}\"}} {n}");
        }
        let mut per_plan: std::collections::BTreeMap<String, (i64, i64)> = Default::default();
        let mut stmt = db.conn.prepare_cached(
            "SELECT COALESCE(k.plan, ''), e.quota_limit, e.quota_period, u.period_start_ms, u.used
             FROM keys k JOIN key_policy e ON e.row = k.row LEFT JOIN usage u ON u.key_row = COALESCE(k.counts_with, k.row)
             WHERE e.quota_limit IS NOT NULL AND k.revoked_at_ms IS NULL",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<i64>>(3)?,
                r.get::<_, Option<i64>>(4)?,
            ))
        })?;
        for row in rows {
            let (plan, limit, period, start, used) = row?;
            let current = Period::parse(&period).map(|p| p.bounds(now_ms).0).ok();
            let used = if start.is_some() && start == current { used.unwrap_or(0) } else { 0 };
            let entry = per_plan.entry(plan).or_default();
            entry.0 += used;
            entry.1 += limit;
        }
        out.push_str(
            "# HELP ms_auth_quota_used Requests counted in the current quota period, by plan (\"\" for none).\n",
        );
        out.push_str("# TYPE ms_auth_quota_used gauge\n");
        for (plan, (used, _)) in &per_plan {
            let _ = writeln!(out, "ms_auth_quota_used{{plan=\"{}\"}} {used}", escape_label(plan));
        }
        out.push_str(
            "# HELP ms_auth_quota_limit Sum of the quotas of active keys, by plan.\n# TYPE ms_auth_quota_limit gauge\n",
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
