//! Fleet membership (the fleet, this host's name and its random identity), the position in the fleet's
//! log up to which this store has applied it, putting every record in the outbox again, the agent's
//! report, and what the agent's quota leases read from the store and write to the counters. The outbox
//! is filled by triggers of migration 5, in each change's own transaction; `journal` takes changes from
//! it, `versions` applies the log's.

use rusqlite::{OptionalExtension, TransactionBehavior};
use serde_json::{json, Value};

use crate::counters::QuotaCell;
use crate::error::{Error, Result};
use crate::key::KeyDigest;
use crate::store::Store;

/// One key quota as this host counts it, for the fleet agent.
#[derive(Clone, Debug)]
pub struct FleetQuota {
    /// The id of the key that owns the counter cell: the quota's name in the fleet.
    pub owner: String,
    /// A digest of a key counting in the cell, to address it.
    pub digest: KeyDigest,
    pub quota: QuotaCell,
}

impl Store {
    /// Makes this store a member of `fleet`, as `host`. On first joining, the whole state of every plan,
    /// key and the policies is put in the outbox, so the fleet gets what this host held before. Returns
    /// true when it joined now. A store already in another fleet is refused.
    pub fn fleet_join(&self, fleet: &str, host: &str) -> Result<bool> {
        if fleet.is_empty() || host.is_empty() || fleet.len() > 64 || host.len() > 64 {
            return Err(Error::invalid("the fleet and host names must be 1 to 64 bytes"));
        }
        let mut db = self.db()?;
        let tx = db.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: Option<String> =
            tx.query_row("SELECT value FROM settings WHERE name = 'fleet'", [], |r| r.get(0)).optional()?;
        if let Some(current) = &current {
            let member: Value = serde_json::from_str(current).map_err(|_| Error::store("corrupt fleet setting"))?;
            if member["fleet"] != fleet {
                return Err(Error::invalid(format!(
                    "this store is a member of fleet {}; a store belongs to one fleet",
                    member["fleet"]
                )));
            }
        }
        // The host's identity in the fleet is a random id made at the first join and kept in the store; the
        // name is only a label (two hosts cloned from one image share a name, never an id they made).
        let host_id = match current.as_deref().map(serde_json::from_str::<Value>) {
            Some(Ok(member)) if member["host_id"].is_string() => {
                member["host_id"].as_str().unwrap_or_default().to_string()
            }
            _ => new_host_id()?,
        };
        let wanted = json!({"fleet": fleet, "host": host, "host_id": host_id}).to_string();
        tx.execute(
            "INSERT INTO settings (name, value) VALUES ('fleet', ?1) ON CONFLICT (name) DO UPDATE SET value = ?1",
            [&wanted],
        )?;
        if current.is_none() {
            // The audit trail of what this store did before it joined becomes the fleet's too (once: it
            // is history, not state, so it is not published again when Redis loses its data).
            tx.execute(
                concat!(
                    "INSERT INTO fleet_outbox (kind, id, body) SELECT 'audit', CAST(seq AS TEXT), ",
                    audit_state!(""),
                    " FROM audit WHERE host IS NULL ORDER BY seq"
                ),
                [],
            )?;
        }
        tx.commit()?;
        drop(db);
        if current.is_none() {
            self.fleet_republish()?;
        }
        // Every process learns fleet mode (quotas within leases) from its next check.
        self.admin(|_| Ok(vec![]))?;
        Ok(current.is_none())
    }

    /// Puts the whole state of every record in the outbox again (after Redis lost the fleet's state).
    pub fn fleet_republish(&self) -> Result<()> {
        let mut db = self.db()?;
        let tx = db.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // A no-op update fires each record's trigger: plans first, then keys oldest first, so that a key
        // is published after the plan it names and a rotated key after the one it counts with.
        tx.execute_batch(
            "UPDATE plans SET name = name;
             UPDATE keys SET id = id;
             UPDATE settings SET value = value WHERE name = 'policies';",
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The fleet and host this store is a member of, if any.
    pub fn fleet_membership(&self) -> Result<Option<(String, String)>> {
        let db = self.db()?;
        let value: Option<String> =
            db.conn.query_row("SELECT value FROM settings WHERE name = 'fleet'", [], |r| r.get(0)).optional()?;
        let Some(value) = value else { return Ok(None) };
        let member: Value = serde_json::from_str(&value).map_err(|_| Error::store("corrupt fleet setting"))?;
        match (member["fleet"].as_str(), member["host"].as_str()) {
            (Some(f), Some(h)) => Ok(Some((f.to_string(), h.to_string()))),
            _ => Err(Error::store("corrupt fleet setting")),
        }
    }

    /// This host's identity in its fleet (a random id made when it joined), if it is a member.
    pub fn fleet_host_id(&self) -> Result<Option<String>> {
        let db = self.db()?;
        let id: Option<Option<String>> = db
            .conn
            .query_row("SELECT json_extract(value, '$.host_id') FROM settings WHERE name = 'fleet'", [], |r| r.get(0))
            .optional()?;
        Ok(id.flatten())
    }

    /// The position in the fleet's log up to which this store has applied it.
    pub fn fleet_position(&self) -> Result<Option<String>> {
        let db = self.db()?;
        Ok(db
            .conn
            .query_row("SELECT value FROM settings WHERE name = 'fleet_position'", [], |r| r.get(0))
            .optional()?)
    }

    /// Every key quota this host counts, once per counter cell (a rotated key and its successor share
    /// one), named by the key that owns the cell (the one the others count with): for the fleet agent.
    pub fn fleet_quota_view(&self, now_ms: i64) -> Result<Vec<FleetQuota>> {
        self.fleet_quota_cells(&self.fleet_quota_owners()?, now_ms)
    }

    /// The keys with a quota, one per counter cell: (owner id, digest of a key counting in the cell). A
    /// database query: the agent keeps it until [`Store::admin_generation`] changes.
    pub fn fleet_quota_owners(&self) -> Result<Vec<(String, KeyDigest)>> {
        let db = self.db()?;
        let mut stmt = db.conn.prepare_cached(
            "SELECT COALESCE(o.id, k.id), MIN(k.digest) FROM keys k JOIN key_policy e ON e.row = k.row
             LEFT JOIN keys o ON o.row = k.counts_with
             WHERE e.quota_limit IS NOT NULL AND k.revoked_at_ms IS NULL
             GROUP BY COALESCE(o.id, k.id)",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (owner, digest) = row?;
            if let Ok(digest) = <[u8; 32]>::try_from(digest) {
                out.push((owner, digest));
            }
        }
        Ok(out)
    }

    /// These quotas as this host counts them at `now_ms`, from the shared counters (no query).
    pub fn fleet_quota_cells(&self, owners: &[(String, KeyDigest)], now_ms: i64) -> Result<Vec<FleetQuota>> {
        let shared = self.counters()?;
        Ok(owners
            .iter()
            .filter_map(|(owner, digest)| {
                let q = shared.quota_cell(digest, now_ms)?;
                Some(FleetQuota { owner: owner.clone(), digest: *digest, quota: q })
            })
            .collect())
    }

    /// A number that changes with every admin change (in any process): the counters file's generation.
    pub fn admin_generation(&self) -> Result<i64> {
        Ok(self.counters()?.generation())
    }

    /// Records this host's lease of a key's quota (see `SharedCounters::set_lease`).
    pub fn fleet_set_lease(
        &self,
        digest: &KeyDigest,
        period_start_ms: i64,
        up_to: i64,
        spent: bool,
        lower: bool,
    ) -> Result<()> {
        self.counters()?.set_lease(digest, period_start_ms, up_to, spent, lower);
        Ok(())
    }

    /// Fleet mode: how many live hosts share each key's rate limit, from this host's next check on.
    pub fn fleet_set_rate_sharers(&self, hosts: u32) -> Result<()> {
        self.counters()?.set_rate_sharers(hosts);
        Ok(())
    }

    /// What the agent last reported (for `ms-auth fleet status`).
    pub fn fleet_status(&self) -> Result<Option<Value>> {
        let db = self.db()?;
        let value: Option<String> =
            db.conn.query_row("SELECT value FROM settings WHERE name = 'fleet_status'", [], |r| r.get(0)).optional()?;
        value.map(|v| serde_json::from_str(&v).map_err(|_| Error::store("corrupt fleet status"))).transpose()
    }

    /// Records the agent's report.
    pub fn fleet_set_status(&self, status: &Value) -> Result<()> {
        let db = self.db()?;
        db.conn.execute(
            "INSERT INTO settings (name, value) VALUES ('fleet_status', ?1) ON CONFLICT (name) DO UPDATE SET value = ?1",
            [status.to_string()],
        )?;
        Ok(())
    }
}

/// A new host id: 16 random bytes, hex.
pub(super) fn new_host_id() -> Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).map_err(|e| Error::internal(format!("no randomness: {e}")))?;
    Ok(crate::text::hex(&bytes))
}
