//! This host in its fleet: its identity (a random id made at its first join, kept in the store; its
//! name is only a label), a new one for a store that turns out to be a copy of another member's, and
//! the share of each key's rate limit its agent keeps for its checks.

use rusqlite::{OptionalExtension, TransactionBehavior};
use serde_json::Value;

use super::replica::new_host_id;
use crate::error::{Error, Result};
use crate::store::Store;

impl Store {
    /// Gives this store a new identity in its fleet (it is a copy of another member's store: a cloned
    /// machine, a copied database) and forgets the quota leases its counters file holds: they were
    /// granted to the identity it copied, which still counts them. Returns (the old id, the new one).
    /// Run with no agent on this store (the agent reads its identity when it starts).
    pub fn fleet_new_identity(&self) -> Result<(String, String)> {
        let mut db = self.db()?;
        let tx = db.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: Option<String> =
            tx.query_row("SELECT value FROM settings WHERE name = 'fleet'", [], |r| r.get(0)).optional()?;
        let Some(current) = current else {
            return Err(Error::invalid("this store is not a member of a fleet: it has no identity to replace"));
        };
        let mut member: Value = serde_json::from_str(&current).map_err(|_| Error::store("corrupt fleet setting"))?;
        let old = member["host_id"].as_str().unwrap_or_default().to_string();
        let new = new_host_id()?;
        member["host_id"] = Value::String(new.clone());
        tx.execute("UPDATE settings SET value = ?1 WHERE name = 'fleet'", [member.to_string()])?;
        // What the agent last reported was about the old identity.
        tx.execute("DELETE FROM settings WHERE name = 'fleet_status'", [])?;
        tx.commit()?;
        drop(db);
        self.counters()?.forget_leases();
        Ok((old, new))
    }

    /// Fleet mode: each key's rate limit is shared by `hosts` live hosts, on this host for `holds_for`
    /// from now (this boot's monotonic clock, whatever clock callers stamp checks with), from its next
    /// check on; after that its checks refuse keys with a rate limit until the share is renewed.
    pub fn fleet_set_rate_share(&self, hosts: u32, holds_for: std::time::Duration) -> Result<()> {
        self.counters()?.set_rate_share(hosts, Some(holds_for.as_millis() as i64));
        Ok(())
    }

    /// Withholds this host's share of rates until the agent renews it, unless the agent already keeps
    /// it (a share with no end: the store just joined, or its counters file predates shares that lapse).
    pub fn fleet_withhold_rate_share_until_renewed(&self) -> Result<()> {
        self.counters()?.withhold_rate_share_until_renewed();
        Ok(())
    }

    /// How many hosts share each key's rate limit now (0 or 1: this host has all of it); `None` when
    /// this host's share lapsed (its agent is not running): its checks refuse keys with a rate limit.
    pub fn fleet_rate_share(&self) -> Result<Option<u32>> {
        Ok(self.counters()?.rate_share())
    }

    /// Forgets every quota lease this host's counters file holds: its checks count no quota past what
    /// they counted until the agent is granted leases again (an agent refused because another runs with
    /// this identity: those leases are the other's).
    pub fn fleet_forget_leases(&self) -> Result<()> {
        self.counters()?.forget_leases();
        Ok(())
    }
}
