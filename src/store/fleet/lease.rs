//! The store's side of the agent's lease thread (the thread is `crate::fleet::lease_thread`): the checks'
//! cue, its answer and the thread's liveness, all in the counters file's header (see
//! `crate::counters`'s `cue.rs`). No SQL: the shared file only.

use std::time::Duration;

use crate::counters::{CueReader, CuedCells};
use crate::error::Result;
use crate::key::KeyDigest;
use crate::store::Store;

impl Store {
    /// The latest cue of this host's checks to the lease thread.
    pub fn fleet_lease_cue(&self) -> Result<u32> {
        Ok(self.counters()?.lease_cue())
    }

    /// Waits until a check cues past `served`, at most `timeout`; the latest cue.
    pub fn fleet_wait_for_lease_cue(&self, served: u32, timeout: Duration) -> Result<u32> {
        Ok(self.counters()?.wait_for_lease_cue(served, timeout))
    }

    /// The cells the checks cued since `reader` last looked (see `SharedCounters::take_cued_cells`).
    pub fn fleet_cued_cells(&self, reader: &mut CueReader, cue: u32) -> Result<CuedCells> {
        Ok(self.counters()?.take_cued_cells(reader, cue))
    }

    /// The counter cell of each key (what a check cues the lease thread with), `None` for one the
    /// counters file does not hold.
    pub fn fleet_cells_of(&self, owners: &[(String, KeyDigest)]) -> Result<Vec<Option<u64>>> {
        let shared = self.counters()?;
        Ok(owners.iter().map(|(_, d)| shared.cell_of(d)).collect())
    }

    /// Every cue up to `cue` is answered: the checks waiting for it decide again.
    pub fn fleet_answer_lease_cue(&self, cue: u32) -> Result<()> {
        self.counters()?.answer_lease_cue(cue);
        Ok(())
    }

    /// The lease thread looked, and could (or could not) reach Redis: checks wait for it only if it could,
    /// within the last second.
    pub fn fleet_lease_agent_reachable(&self, reachable: bool) -> Result<()> {
        self.counters()?.set_lease_agent_reachable(reachable);
        Ok(())
    }

    /// How many live hosts share each key's rate limit (and count as the fleet's members): the number the
    /// agent's heartbeat last set, at least 1.
    pub fn fleet_rate_sharers(&self) -> Result<u32> {
        Ok(self.counters()?.rate_sharers())
    }
}
