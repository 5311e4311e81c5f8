//! Store-wide revocation policies (idle keys, abuse), kept in `settings` and published to the counters
//! file, where checks apply them. ("policy" alone is the pure decision, [`crate::policy`].)

use rusqlite::{Connection, OptionalExtension};
use serde_json::{json, Value};

use super::Store;
use crate::counters::Policies;
use crate::error::{Error, Result};
use crate::period::DAY_MS;
use crate::spec;

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
}
