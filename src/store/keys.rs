//! Key administration: create (or import), read, update, revoke, rotate (the list is in [`super::list`]).
//! Each change is one admin transaction (see [`super::sync`]) with its audit entry.

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::Deserialize;
use serde_json::{json, Value};

use super::plans::plan_for_key;
use super::policies::load_policies;
use super::rows::{key_record_from_row, RecordContext, RECORD_SELECT};
use super::{clock_ms, Created, Store};
use crate::counters::SharedCounters;
use crate::error::{Error, Result};
use crate::key::{self, Env};
use crate::period::{check_time_ms, DAY_MS};
use crate::spec::{self, KeyPatch, KeyRecord, KeySpec};
use crate::text;

pub const DEFAULT_GRACE_MS: i64 = 86_400_000;

/// The options of a rotation (`ms_key_rotate`'s `opts_json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RotateOptions {
    /// How long the old key keeps working: [`DEFAULT_GRACE_MS`] unless given.
    pub grace_ms: i64,
}

impl Default for RotateOptions {
    fn default() -> RotateOptions {
        RotateOptions { grace_ms: DEFAULT_GRACE_MS }
    }
}

/// `{"grace_ms": N}`, the field optional (`null` is not an integer).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateOptionsJson {
    #[serde(default)]
    grace_ms: spec::Field<Value>,
}

impl TryFrom<RotateOptionsJson> for RotateOptions {
    type Error = Error;

    fn try_from(json: RotateOptionsJson) -> Result<RotateOptions> {
        let grace_ms = match json.grace_ms {
            spec::Field::Absent => DEFAULT_GRACE_MS,
            spec::Field::Null => return Err(Error::invalid("grace_ms must be an integer")),
            spec::Field::Set(v) => v.as_i64().ok_or_else(|| Error::invalid("grace_ms must be an integer"))?,
        };
        Ok(RotateOptions { grace_ms })
    }
}

impl RotateOptions {
    /// Anything but a JSON object whose only field is `grace_ms` is refused as a whole; a `grace_ms`
    /// that is not an integer, by name. The range is checked by [`Store::rotate_key`].
    pub fn from_json(text: &str) -> Result<RotateOptions> {
        let not_options = || Error::invalid("opts_json must be {\"grace_ms\": N}");
        let value: Value = serde_json::from_str(text).map_err(|_| not_options())?;
        if !value.is_object() {
            return Err(not_options()); // serde would take an array for the struct's fields in order
        }
        serde_json::from_value::<RotateOptionsJson>(value).map_err(|_| not_options())?.try_into()
    }
}

impl Store {
    pub fn create_key(&self, spec: &KeySpec, now_ms: i64) -> Result<Created> {
        check_time_ms("now_ms", now_ms)?;
        spec.check_text()?;
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
                Some(name) => plan_for_key(tx, name, spec.new_plan)?,
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

    /// A key's record, its state as of the store's clock.
    pub fn get_key(&self, id: &str) -> Result<KeyRecord> {
        let db = self.db()?;
        let live = self.shared.load();
        let cx = self.record_context(&db.conn, &live, clock_ms())?;
        let record = db
            .conn
            .prepare_cached(&format!("{RECORD_SELECT} WHERE k.id = ?1"))?
            .query_row([id], |row| key_record_from_row(row, &cx))
            .optional()?;
        record.ok_or_else(|| Error::not_found(format!("no key with id {id:?}")))?
    }

    pub(super) fn record_context<'a>(
        &self,
        conn: &Connection,
        live: &'a SharedCounters,
        now_ms: i64,
    ) -> Result<RecordContext<'a>> {
        Ok(RecordContext { live, idle_ms: load_policies(conn)?.idle_ms, now_ms })
    }

    pub fn update_key(&self, id: &str, patch: &KeyPatch) -> Result<KeyRecord> {
        patch.check_text()?;
        self.admin(|tx| {
            let row = row_of_key(tx, id)?;
            let set = |column: &str, value: &dyn rusqlite::ToSql| -> Result<()> {
                tx.execute(&format!("UPDATE keys SET {column} = ?1 WHERE row = ?2"), params![value, row])?;
                Ok(())
            };
            if let Some(name) = patch.name.clone().into_change() {
                set("name", &name)?;
            }
            if let Some(plan) = patch.plan.clone().into_change() {
                if let Some(name) = &plan {
                    plan_for_key(tx, name, patch.new_plan)?;
                }
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
            same_period_as_rotation(tx, row, id)?;
            self.audit(tx, clock_ms(), "key.update", Some(id), patch.to_json())?;
            Ok(vec![row])
        })?;
        self.get_key(id)
    }

    /// Revokes a key; it is refused from the next check on. Revoking a revoked key keeps the first
    /// revocation's time and reason.
    pub fn revoke_key(&self, id: &str, now_ms: i64, reason: Option<&str>) -> Result<KeyRecord> {
        check_time_ms("now_ms", now_ms)?;
        if let Some(reason) = reason {
            if reason.len() > spec::MAX_REASON_LEN {
                return Err(Error::invalid(format!("reason is longer than {} bytes", spec::MAX_REASON_LEN)));
            }
            text::check("reason", reason)?;
        }
        {
            let mut db = self.db()?;
            self.revoke_as(&mut db.conn, id, now_ms, reason.unwrap_or("manual"), "key.revoke")?;
        }
        self.get_key(id)
    }

    pub(super) fn revoke_as(
        &self,
        conn: &mut Connection,
        id: &str,
        at_ms: i64,
        reason: &str,
        action: &str,
    ) -> Result<()> {
        self.admin_on(conn, |tx| {
            let row = row_of_key(tx, id)?;
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

    /// Replaces a key with a new one of the same policy, plan and meta that counts against the same
    /// quota; the old key keeps working for `grace_ms`, then answers `api_key_revoked` (reason
    /// "rotated"). Returns the new key (its plaintext shown this once).
    pub fn rotate_key(&self, id: &str, grace_ms: i64, now_ms: i64) -> Result<Created> {
        check_time_ms("now_ms", now_ms)?;
        if !(0..=366 * DAY_MS).contains(&grace_ms) {
            return Err(Error::invalid("grace_ms must be between 0 and a year"));
        }
        let new_id = new_key_id()?;
        let mut plaintext = String::new();
        self.admin(|tx| {
            let old = row_of_key(tx, id)?;
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

fn new_key_id() -> Result<String> {
    Ok(format!("key_{}", String::from_utf8(key::random_base62(20)?).expect("base62 is ASCII")))
}

/// Keys of one rotation still in force count in one counter, which holds one period's count: a daily and
/// a monthly quota on it would each reset the other's count at every check. So a change that gives the
/// key at `row` a quota period other than a live rotation partner's is refused.
fn same_period_as_rotation(tx: &Transaction, row: i64, id: &str) -> Result<()> {
    type Link = (String, Option<String>, Option<String>, Option<String>, bool);
    let key = |by: &str, value: &dyn rusqlite::ToSql| -> Result<Option<Link>> {
        Ok(tx
            .query_row(
                &format!(
                    "SELECT k.id, e.quota_period, k.rotated_from, k.rotated_to, k.revoked_at_ms IS NULL
                     FROM keys k JOIN key_policy e ON e.row = k.row WHERE k.{by} = ?1"
                ),
                [value],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?)
    };
    let Some((_, Some(period), back, ahead, _)) = key("row", &row)? else { return Ok(()) }; // no quota: it leaves the count alone
                                                                                            // A rotation chain is short; walk it both ways, past revoked links (two live keys may sit beyond one).
    let mut partners = Vec::new();
    for (mut next, backwards) in [(back, true), (ahead, false)] {
        while let Some(other) = next.take().filter(|_| partners.len() < 64) {
            let Some(link) = key("id", &other)? else { break };
            next = if backwards { link.2.clone() } else { link.3.clone() };
            partners.push(link);
        }
    }
    for (other_id, other_period, _, _, live) in partners {
        if let Some(other_period) = other_period.filter(|p| live && *p != period) {
            return Err(Error::invalid(format!(
                "key {id} shares its quota counter with key {other_id} (a rotation in its grace), whose quota is \
                 {other_period}: keys sharing a counter count in one period; give both the same period, or \
                 change it once the grace has ended"
            )));
        }
    }
    Ok(())
}

fn row_of_key(tx: &Transaction, id: &str) -> Result<i64> {
    tx.query_row("SELECT row FROM keys WHERE id = ?1", [id], |r| r.get(0))
        .optional()?
        .ok_or_else(|| Error::not_found(format!("no key with id {id:?}")))
}
