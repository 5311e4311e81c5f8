//! The counters file's side of the fleet's quota leases, for the agent's Redis side
//! (`crate::fleet::lease_hash`): each read and write names the file's incarnation, so that a lease
//! reconciled with one file is never recorded in another (rebuilt from the database meanwhile).

use crate::counters::Settled;
use crate::error::Result;
use crate::key::KeyDigest;
use crate::store::Store;

impl Store {
    /// The counters file's incarnation (see `SharedCounters::incarnation`), as a non-negative integer.
    pub fn fleet_incarnation(&self) -> Result<i64> {
        Ok(self.counters()?.incarnation() as i64)
    }

    /// (incarnation, counted, lease held) of a key's quota in the period starting at `period_start_ms`,
    /// all from one counters file, as a check at `now_ms` would see them; `None` when that period is
    /// neither the current one nor the next (or the file does not hold the key).
    pub fn fleet_lease_cell(
        &self,
        digest: &KeyDigest,
        period_start_ms: i64,
        now_ms: i64,
    ) -> Result<Option<(i64, i64, i64)>> {
        let shared = self.counters()?;
        let Some(q) = shared.quota_cell(digest, now_ms) else { return Ok(None) };
        let inc = shared.incarnation() as i64;
        Ok(if q.period_start_ms == period_start_ms {
            Some((inc, q.used, q.lease))
        } else if q.period_end_ms == period_start_ms {
            Some((inc, 0, q.next_lease))
        } else {
            None
        })
    }

    /// Records a lease granted against the counters file of incarnation `inc`; false (nothing recorded)
    /// when the file in use is another.
    pub fn fleet_set_lease_in(
        &self,
        inc: i64,
        digest: &KeyDigest,
        period_start_ms: i64,
        up_to: i64,
        spent: bool,
    ) -> Result<bool> {
        let shared = self.counters()?;
        if shared.incarnation() as i64 != inc {
            return Ok(false);
        }
        Ok(shared.set_lease(digest, period_start_ms, up_to, spent, false))
    }

    /// Lowers this host's lease of a key's quota to its count, exactly (see `SharedCounters::settle_lease`),
    /// in the counters file in use; with that file's incarnation.
    pub fn fleet_settle_lease(&self, digest: &KeyDigest, period_start_ms: i64, spent: bool) -> Result<(i64, Settled)> {
        let mut last = (0, Settled::Elsewhere);
        for _ in 0..3 {
            let shared = self.counters()?;
            last = (shared.incarnation() as i64, shared.settle_lease(digest, period_start_ms, spent));
            if last.1 != Settled::Elsewhere {
                break;
            }
        }
        Ok(last)
    }
}
