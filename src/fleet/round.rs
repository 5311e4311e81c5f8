//! What one wake of the lease thread serves, so that its answer to a check does not wait for a pass over
//! every key with a quota (about 0.5 µs a key in a release build: 50 ms at 100,000 keys, as long as a
//! check waits). A check that cues puts its cell in a ring in the counters file's header (`cue.rs`); a
//! cued wake serves those cells first, mapped back to their owners (a map made when the owners are read,
//! checked against the file at each use). At each tick (every [`super::lease_thread::ROUND`]) it also
//! serves the cells cued or in use lately, then the next slice of a sweep over every key (at least
//! [`SWEEP_MIN`] keys, so a sweep takes at most [`SWEEP_TICKS`] ticks), in chunks of [`SWEEP_CHUNK`]
//! between which it serves and answers new cues. When the ring cannot say which cells were cued (it
//! overflowed, an older library cued), the wake serves every key, as every wake did before.

use std::time::{Duration, Instant};

use super::link::{Failure, Link};
use super::quota::{lease_round, Leases};
use crate::counters::CuedCells;
use crate::store::clock_ms;

/// A sweep covers every key within this many ticks (a second), whatever their number.
pub const SWEEP_TICKS: usize = 10;

/// A tick's slice of the sweep is at least this many keys (a store with fewer is swept whole each tick).
pub const SWEEP_MIN: usize = 4096;

/// New cues are served between chunks of this many keys of the sweep.
pub const SWEEP_CHUNK: usize = 512;

/// A cell cued or found in use is served at every tick for this long after.
const HOT_FOR: Duration = Duration::from_secs(2);

/// After an admin change, the owners are read again at a tick at most this often (at once when a check
/// cues a cell the map does not know: a new key).
const OWNERS_EVERY: Duration = Duration::from_secs(1);

/// A cell the map does not know makes it be made again, at most this often.
const REMAP_AFTER: Duration = Duration::from_secs(1);

/// One wake: serves the cells cued up to `cue` (read before), and at a `tick` the hot cells and a slice
/// of the sweep. Returns the latest cue answered or to answer (at least `cue`).
pub(super) fn serve(link: &mut Link, leases: &mut Leases, cue: u32, tick: bool) -> Result<u32, Failure> {
    let store = link.store;
    leases.members = i64::from(store.fleet_rate_sharers()?);
    if leases.owners_generation.is_none() {
        read_owners(link, leases)?;
    }
    // The cued cells first, with the owners as last read: reading them again is a query over every key.
    let unknown = serve_cued(link, leases, cue)?;
    let stale = leases.owners_generation != Some(store.admin_generation()?);
    let due = tick && leases.owners_read_at.is_none_or(|at| at.elapsed() >= OWNERS_EVERY);
    if stale && (due || !unknown.is_empty()) {
        read_owners(link, leases)?;
    } else if !unknown.is_empty() && leases.cells_mapped_at.is_none_or(|at| at.elapsed() >= REMAP_AFTER) {
        // A file rebuilt under the same generation numbers its cells anew.
        map_cells(link, leases)?;
    }
    serve_cells(link, leases, &unknown)?;
    if !tick {
        return Ok(cue);
    }
    let now = Instant::now();
    leases.hot.retain(|_, at| now.duration_since(*at) < HOT_FOR);
    let hot: Vec<u64> = leases.hot.keys().copied().collect();
    serve_cells(link, leases, &hot)?;
    let n = leases.owners.len();
    let end = (leases.sweep_at + n.div_ceil(SWEEP_TICKS).max(SWEEP_MIN)).min(n);
    let mut answered = cue;
    while leases.sweep_at < end {
        let to = (leases.sweep_at + SWEEP_CHUNK).min(end);
        let view = store.fleet_quota_cells(&leases.owners[leases.sweep_at..to], clock_ms())?;
        let oldest = lease_round(link, leases, &view)?;
        leases.sweep_oldest = Some(leases.sweep_oldest.map_or(oldest, |o| o.min(oldest)));
        leases.sweep_at = to;
        let latest = store.fleet_lease_cue()?;
        if latest != answered {
            let unknown = serve_cued(link, leases, latest)?;
            if !unknown.is_empty() {
                // New keys: answered at the next wake, after the owners are read again.
                leases.hot.extend(unknown.into_iter().map(|c| (c, Instant::now())));
                break;
            }
            store.fleet_answer_lease_cue(latest)?;
            answered = latest;
        }
    }
    if leases.sweep_at >= n {
        // Every key seen since the sweep started: every lease re-asserted, the periods before forgotten.
        leases.reassert_all = false;
        if let Some(oldest) = leases.sweep_oldest.take().filter(|o| *o != i64::MAX) {
            leases.forget_before(oldest);
        }
        leases.sweep_at = 0;
    }
    Ok(answered)
}

/// Reads the keys with a quota again (after an admin change), and maps their cells.
fn read_owners(link: &mut Link, leases: &mut Leases) -> Result<(), Failure> {
    let store = link.store;
    let generation = store.admin_generation()?;
    leases.owners = store.fleet_quota_owners()?;
    leases.owners_generation = Some(generation);
    leases.owners_read_at = Some(Instant::now());
    map_cells(link, leases)?;
    if leases.reassert_all {
        leases.sweep_at = 0;
    }
    Ok(())
}

/// Serves the cells the checks cued up to `cue`, or every key when the ring cannot say which; returns
/// the cells cued that the map does not know.
fn serve_cued(link: &mut Link, leases: &mut Leases, cue: u32) -> Result<Vec<u64>, Failure> {
    let store = link.store;
    match store.fleet_cued_cells(&mut leases.cues, cue)? {
        CuedCells::Lost => {
            let view = store.fleet_quota_cells(&leases.owners, clock_ms())?;
            lease_round(link, leases, &view)?;
            Ok(Vec::new())
        }
        CuedCells::Cells(mut cells) => {
            cells.sort_unstable();
            cells.dedup();
            let now = Instant::now();
            for cell in &cells {
                leases.hot.insert(*cell, now);
            }
            serve_cells(link, leases, &cells)
        }
    }
}

/// Tops up the leases of these cells (those the map knows, checked against the file); keeps those in
/// use hot; returns those it does not know.
fn serve_cells(link: &mut Link, leases: &mut Leases, cells: &[u64]) -> Result<Vec<u64>, Failure> {
    if cells.is_empty() {
        return Ok(Vec::new());
    }
    let store = link.store;
    let found = owners_of(link, leases, cells)?;
    let unknown = cells.iter().filter(|c| !found.iter().any(|(f, _)| f == *c)).copied().collect();
    let owners: Vec<_> = found.iter().map(|(_, i)| leases.owners[*i].clone()).collect();
    let view = store.fleet_quota_cells(&owners, clock_ms())?;
    lease_round(link, leases, &view)?;
    let now = Instant::now();
    for q in &view {
        if leases.in_use(q) {
            if let Some((cell, _)) = found.iter().find(|(_, i)| leases.owners[*i].1 == q.digest) {
                leases.hot.insert(*cell, now);
            }
        }
    }
    Ok(unknown)
}

/// (cell, owner index) of the cells the map knows and the file agrees with.
fn owners_of(link: &Link, leases: &Leases, cells: &[u64]) -> Result<Vec<(u64, usize)>, Failure> {
    let known: Vec<(u64, usize)> = cells
        .iter()
        .filter_map(|c| leases.by_cell.get(c).map(|i| (*c, *i)))
        .filter(|(_, i)| *i < leases.owners.len())
        .collect();
    let owners: Vec<_> = known.iter().map(|(_, i)| leases.owners[*i].clone()).collect();
    let now_cells = link.store.fleet_cells_of(&owners)?;
    Ok(known.into_iter().zip(now_cells).filter(|((c, _), now)| *now == Some(*c)).map(|(k, _)| k).collect())
}

fn map_cells(link: &Link, leases: &mut Leases) -> Result<(), Failure> {
    let cells = link.store.fleet_cells_of(&leases.owners)?;
    leases.by_cell = cells.into_iter().enumerate().filter_map(|(i, c)| c.map(|c| (c, i))).collect();
    leases.cells_mapped_at = Some(Instant::now());
    Ok(())
}
