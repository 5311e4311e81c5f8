//! The usage state of every key (quota period and count, GCRA arrival time, totals), behind one narrow
//! boundary so that where it lives can change without touching the store or the policy.
//!
//! This version keeps the state in process memory: exact for any number of threads sharing one store
//! (each key's state is decided and charged under that key's own lock), and written to SQLite by the
//! store as deltas, so processes that share a file add their counts up rather than overwrite them.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::policy::{self, Decision, KeyPolicy, Usage};

/// The store's row id of a key: what the counters are keyed on.
pub type Slot = i64;

/// Everything counted for one key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub usage: Usage,
    pub total: i64,
    pub last_used_at_ms: Option<i64>,
}

/// Counts admitted since the last flush: what must be added to the store's copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delta {
    pub slot: Slot,
    /// The quota period the `used` delta counts in.
    pub period_start_ms: i64,
    pub used: i64,
    pub total: i64,
    pub last_used_at_ms: Option<i64>,
    pub tat_ns: i64,
}

#[derive(Default)]
struct Cell {
    tally: Tally,
    unflushed_used: i64,
    unflushed_total: i64,
}

#[derive(Default)]
pub struct Counters {
    cells: RwLock<HashMap<Slot, Arc<Mutex<Cell>>>>,
}

impl Counters {
    pub fn new() -> Counters {
        Counters::default()
    }

    /// Decides one request for `slot` and charges it if admitted, atomically with respect to every other
    /// thread deciding for the same slot. `seed` gives the stored state the first time a slot is seen.
    pub fn admit(
        &self,
        slot: Slot,
        seed: impl FnOnce() -> Tally,
        policy: &KeyPolicy,
        now_ms: i64,
    ) -> Decision {
        let cell = self.cell(slot, seed);
        let mut cell = cell.lock();
        let (decision, next) = policy::decide(policy, &cell.tally.usage, now_ms);
        if let Some(next) = next {
            if next.period_start_ms != cell.tally.usage.period_start_ms {
                // Counts of an ended period no longer matter for the quota (the total keeps them).
                cell.unflushed_used = 0;
            }
            if policy.quota.is_some() {
                cell.unflushed_used += 1;
            }
            cell.tally.usage = next;
            cell.tally.total += 1;
            cell.unflushed_total += 1;
            cell.tally.last_used_at_ms =
                Some(cell.tally.last_used_at_ms.map_or(now_ms, |t| t.max(now_ms)));
        }
        decision
    }

    fn cell(&self, slot: Slot, seed: impl FnOnce() -> Tally) -> Arc<Mutex<Cell>> {
        if let Some(cell) = self.cells.read().get(&slot) {
            return cell.clone();
        }
        let mut cells = self.cells.write();
        cells
            .entry(slot)
            .or_insert_with(|| {
                Arc::new(Mutex::new(Cell {
                    tally: seed(),
                    ..Cell::default()
                }))
            })
            .clone()
    }

    /// The current tally of a slot this process has counted for, if any.
    pub fn tally(&self, slot: Slot) -> Option<Tally> {
        self.cells.read().get(&slot).map(|c| c.lock().tally)
    }

    /// Takes the counts not yet written to the store. Give them back with [`Counters::restore`] if writing fails.
    pub fn take_unflushed(&self) -> Vec<Delta> {
        let cells = self.cells.read();
        let mut out = Vec::new();
        for (slot, cell) in cells.iter() {
            let mut c = cell.lock();
            if c.unflushed_total == 0 {
                continue;
            }
            out.push(Delta {
                slot: *slot,
                period_start_ms: c.tally.usage.period_start_ms,
                used: c.unflushed_used,
                total: c.unflushed_total,
                last_used_at_ms: c.tally.last_used_at_ms,
                tat_ns: c.tally.usage.tat_ns,
            });
            c.unflushed_used = 0;
            c.unflushed_total = 0;
        }
        out
    }

    /// Puts back deltas whose write failed, so that no count is lost.
    pub fn restore(&self, deltas: &[Delta]) {
        let cells = self.cells.read();
        for d in deltas {
            if let Some(cell) = cells.get(&d.slot) {
                let mut c = cell.lock();
                if c.tally.usage.period_start_ms == d.period_start_ms {
                    c.unflushed_used += d.used;
                }
                c.unflushed_total += d.total;
            }
        }
    }
}
