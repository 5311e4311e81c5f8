//! Plans: named quotas, rate limits and lifetimes that keys follow where they set none of their own.

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::rows::{load_entries, Keys};
use super::Store;
use crate::error::{Error, Result};
use crate::period::{check_time_ms, Period};
use crate::spec::{self, QuotaJson, RateJson};
use crate::text;

/// A named plan: the quota, rate limit and lifetime of the keys on it that set none of their own.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlanSpec {
    pub name: String,
    pub quota: Option<QuotaJson>,
    pub rate_limit: Option<RateJson>,
    pub lifetime_ms: Option<i64>,
}

/// The plan JSON of `ms_plan_put`: `{"name": "pro", "quota": {...} | null, "rate_limit": {...} | null,
/// "lifetime_ms": N | null}`; an absent quota or lifetime means none, an absent rate limit the store
/// default (60 per minute).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlanSpecJson {
    pub name: spec::Field<Value>,
    pub quota: spec::Field<Value>,
    pub rate_limit: spec::Field<Value>,
    pub lifetime_ms: spec::Field<Value>,
}

/// Fields are checked in declaration order; the first wrong one is reported.
impl TryFrom<PlanSpecJson> for PlanSpec {
    type Error = Error;

    fn try_from(json: PlanSpecJson) -> Result<PlanSpec> {
        let name = match json.name {
            spec::Field::Set(Value::String(n)) if !n.is_empty() && n.len() <= spec::MAX_PLAN_LEN => n,
            _ => return Err(Error::invalid("plan.name must be a string of 1..=63 bytes")),
        };
        text::check("plan.name", &name)?;
        // Checked as a key spec's are, so both accept exactly the same shapes.
        let quota = spec::quota_field(json.quota)?.or(None);
        let rate_limit = spec::rate_field(json.rate_limit)?;
        let lifetime_ms = match json.lifetime_ms.or(None) {
            None => None,
            Some(v) => match v.as_i64() {
                Some(ms) if ms > 0 => Some(ms),
                _ => return Err(Error::invalid("plan.lifetime_ms must be a positive integer or null")),
            },
        };
        Ok(PlanSpec {
            name,
            quota: quota.map(QuotaJson::from),
            rate_limit: rate_limit.or(Some(super::DEFAULT_RATE)).map(RateJson::from),
            lifetime_ms,
        })
    }
}

impl PlanSpec {
    pub fn from_json(text: &str) -> Result<PlanSpec> {
        spec::parse_shape::<PlanSpecJson>(text, "plan", "plan")?.try_into()
    }
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

/// The plan a key is put on by name: a defined plan, or `None` for a label that names none, which is
/// allowed only while no plan is defined or when the caller asked for a new label (`new_plan`): once
/// plans are defined, a name that is none of them is almost always a typo that would leave the key
/// without its plan's quota.
pub(crate) fn plan_for_key(conn: &Connection, name: &str, new_plan: bool) -> Result<Option<StoredPlan>> {
    const NAMED: usize = 20;
    let plan = plan_of(conn, name)?;
    if plan.is_some() || new_plan {
        return Ok(plan);
    }
    let mut stmt = conn.prepare_cached("SELECT name FROM plans ORDER BY name")?;
    let known: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    if known.is_empty() {
        return Ok(None);
    }
    let mut listed = known.iter().take(NAMED).map(|n| text::visible(n)).collect::<Vec<_>>().join(", ");
    if known.len() > NAMED {
        listed.push_str(&format!(" and {} more", known.len() - NAMED));
    }
    Err(Error::invalid(format!(
        "no plan named {name:?}; the plans are: {listed}. To put the key on a plan not defined yet, say so: \
         \"new_plan\": true (CLI: --new-plan)"
    )))
}

/// A plan as the admin calls answer it (`ms_plan_put`, `ms_plan_list`): the spec with when it was last
/// written and how many keys are on it. The field order is the C ABI's.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlanRecord {
    pub name: String,
    pub quota: Option<QuotaJson>,
    pub rate_limit: Option<RateJson>,
    pub lifetime_ms: Option<i64>,
    pub updated_at_ms: i64,
    /// How many keys are on the plan.
    pub keys: i64,
}

impl Store {
    /// Creates or replaces a plan; its keys that set no limit of their own follow it from their next check.
    pub fn put_plan(&self, plan: &PlanSpec, now_ms: i64) -> Result<PlanRecord> {
        check_time_ms("now_ms", now_ms)?;
        text::check("plan.name", &plan.name)?;
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
            .find(|p| p.name == plan.name)
            .ok_or_else(|| Error::internal("a plan just written is missing"))
    }

    /// Every plan, with how many keys are on it.
    pub fn list_plans(&self) -> Result<Vec<PlanRecord>> {
        let db = self.db()?;
        let mut stmt = db.conn.prepare_cached(
            "SELECT p.name, p.quota_limit, p.quota_period, p.rate_limit, p.rate_window_ms, p.rate_burst, p.lifetime_ms,
                    p.updated_at_ms, (SELECT COUNT(*) FROM keys k WHERE k.plan = p.name)
             FROM plans p ORDER BY p.name",
        )?;
        let mut rows = stmt.query([])?;
        let mut plans = Vec::new();
        while let Some(r) = rows.next()? {
            // A quota or rate limit stored in part reads as none, as it always has.
            let quota = match (r.get::<_, Option<i64>>(1)?, r.get::<_, Option<String>>(2)?) {
                (Some(limit), Some(period)) => {
                    // Every writer of `plans` checks the period, so another one is a corrupt store.
                    let period = Period::parse(&period)
                        .map_err(|_| Error::store("corrupt store: a plan's quota_period is inconsistent"))?;
                    Some(QuotaJson { limit, period: period.as_str() })
                }
                _ => None,
            };
            let rate_limit = match (r.get(3)?, r.get(4)?, r.get(5)?) {
                (Some(limit), Some(window_ms), Some(burst)) => Some(RateJson { limit, window_ms, burst }),
                _ => None,
            };
            plans.push(PlanRecord {
                name: r.get(0)?,
                quota,
                rate_limit,
                lifetime_ms: r.get(6)?,
                updated_at_ms: r.get(7)?,
                keys: r.get(8)?,
            });
        }
        Ok(plans)
    }
}
