//! Store-wide revocation policies (idle keys, abuse), kept in `settings` and published to the counters
//! file, where checks apply them. ("policy" alone is the pure decision, [`crate::policy`].)

use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::Store;
use crate::counters::Policies;
use crate::error::{Error, Result};
use crate::period::{check_time_ms, DAY_MS};
use crate::spec;

/// Store-wide revocation policies. `None` fields are left as they are.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PolicySpec {
    /// Revoke keys unused for this many ms (`Some(0)`: off).
    pub idle_ms: Option<i64>,
    /// Revoke keys rate-limited more than `limit` times within `window_ms` (`Some((0, 0))`: off).
    pub abuse: Option<(i64, i64)>,
}

/// The policy JSON of `ms_policy_put`: `{"idle": {"days": 90} | null, "abuse": {"limit": 100,
/// "window_ms": 600000} | null}`, each optional; `null` turns a policy off.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySpecJson {
    pub idle: spec::Field<Value>,
    pub abuse: spec::Field<Value>,
}

/// The idle policy, `{"days": N}`, as set and as shown. Typed, since any fault in it is reported as one.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdlePolicy {
    pub days: i64,
}

/// The abuse policy, `{"limit": N, "window_ms": N}`, as set and as shown. Typed, since any fault in it
/// is reported as one.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AbusePolicy {
    pub limit: i64,
    pub window_ms: i64,
}

/// The policies in force as the admin calls answer them (`ms_policy_get`, `ms_policy_put`); `None`:
/// off. The field order is the C ABI's.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PoliciesInForce {
    pub idle: Option<IdlePolicy>,
    pub abuse: Option<AbusePolicy>,
    /// Rotated keys are always revoked when their grace ends: `"always"`.
    pub rotated: &'static str,
}

impl From<&Policies> for PoliciesInForce {
    fn from(p: &Policies) -> PoliciesInForce {
        PoliciesInForce {
            idle: (p.idle_ms > 0).then_some(IdlePolicy { days: p.idle_ms / DAY_MS }),
            abuse: (p.abuse_limit > 0).then_some(AbusePolicy { limit: p.abuse_limit, window_ms: p.abuse_window_ms }),
            rotated: "always",
        }
    }
}

/// Fields are checked in declaration order; the first wrong one is reported.
impl TryFrom<PolicySpecJson> for PolicySpec {
    type Error = Error;

    fn try_from(json: PolicySpecJson) -> Result<PolicySpec> {
        let mut out = PolicySpec::default();
        match json.idle {
            spec::Field::Absent => {}
            spec::Field::Null => out.idle_ms = Some(0),
            spec::Field::Set(o @ Value::Object(_)) => match IdlePolicy::deserialize(&o) {
                Ok(IdlePolicy { days }) if (1..=36_500).contains(&days) => out.idle_ms = Some(days * DAY_MS),
                _ => return Err(Error::invalid("policy.idle must be {\"days\": 1..36500} or null")),
            },
            spec::Field::Set(_) => return Err(Error::invalid("policy.idle must be {\"days\": N} or null")),
        }
        match json.abuse {
            spec::Field::Absent => {}
            spec::Field::Null => out.abuse = Some((0, 0)),
            spec::Field::Set(o @ Value::Object(_)) => match AbusePolicy::deserialize(&o) {
                Ok(AbusePolicy { limit, window_ms })
                    if (1..=1_000_000_000).contains(&limit) && (1_000..=31 * DAY_MS).contains(&window_ms) =>
                {
                    out.abuse = Some((limit, window_ms))
                }
                _ => {
                    return Err(Error::invalid(
                        "policy.abuse must be {\"limit\": N >= 1, \"window_ms\": 1000..=2678400000} or null",
                    ))
                }
            },
            spec::Field::Set(_) => return Err(Error::invalid("policy.abuse must be an object or null")),
        }
        Ok(out)
    }
}

impl PolicySpec {
    pub fn from_json(text: &str) -> Result<PolicySpec> {
        spec::parse_shape::<PolicySpecJson>(text, "policy", "policy (\"rotated\" always applies)")?.try_into()
    }
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

impl Store {
    /// Changes the store-wide revocation policies; every process applies them from its next check on.
    pub fn set_policies(&self, change: &PolicySpec, now_ms: i64) -> Result<PoliciesInForce> {
        check_time_ms("now_ms", now_ms)?;
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
            let in_force = serde_json::to_value(PoliciesInForce::from(&p)).unwrap_or(Value::Null);
            self.audit(tx, now_ms, "policy.set", None, in_force)?;
            Ok(vec![])
        })?;
        self.policies()
    }

    pub fn policies(&self) -> Result<PoliciesInForce> {
        Ok(PoliciesInForce::from(&load_policies(&self.db()?.conn)?))
    }
}
