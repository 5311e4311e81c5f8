//! Growth: when a file is full the store builds a larger one and carries every cell's whole state into
//! it. The old file is superseded and frozen before its cells are copied (see [`SharedCounters::grow`]);
//! statistics a check bumped after its compare-and-swap landed but after the copy are merged once more.
//! `read_cell` and `write_cell` copy a cell's whole state out and in (`upsert` also starts a new key's
//! cell with `write_cell`).

use std::sync::atomic::Ordering;

use super::cell::{decode, encode, field, Cell, DAY_FIELDS, FROZEN, USED_MASK};
use super::flush::STALE;
use super::index::RECORD_MASK;
use super::layout::Build;
use super::{CellState, KeyEntry, SharedCounters, Snapshot};
use crate::error::Result;
use crate::policy::Usage;

impl SharedCounters {
    /// Builds a larger file in place of `old` (see [`SharedCounters::build`]) that carries every cell's
    /// whole state exactly.
    ///
    /// The new file's index and records are written first (the long part) while `old` is in use. Then
    /// `old` is superseded and frozen: from there on checks on it answer Moved and wait for the new file
    /// (see `Store::check_with`), so nothing is charged twice and nothing after the snapshot is lost,
    /// and no check on the new file is decided on counts that miss some. The cells are copied in one
    /// pass and the file put in place. If this process dies after the freeze, the frozen file at the
    /// path is final, and the next process to take the write lock builds from it
    /// ([`SharedCounters::open_superseded`]): a growth loses no count whenever it is interrupted.
    pub fn grow(old: &SharedCounters, plan: &Build) -> Result<SharedCounters> {
        let mut before = Snapshot::default();
        let built = Self::build_with(plan, |new| {
            new.adopt_incarnation(old);
            old.supersede();
            old.freeze();
            before = old.snapshot();
            new.carry_cells(plan.entries, &before);
        })?;
        // A check whose compare-and-swap landed just before the freeze may bump its statistics (total,
        // day counts) after the snapshot: those are carried now.
        old.carry_late_counts(&before, &built);
        built.carry_rate_share(old);
        Ok(built)
    }

    /// Gives each entry's cell the state its cell had in the file being replaced. Only before the file
    /// is put in place, when no reader can reach it.
    fn carry_cells(&self, entries: &[KeyEntry], before: &Snapshot) {
        for entry in entries {
            let Some(state) = before.cell_of(&entry.digest) else { continue };
            let Some((_, _, r)) = self.find(&entry.digest) else { continue };
            write_cell(self.cell(self.record(r).cell), &state);
        }
    }

    /// Every counter cell's whole state and the keys that count in each (a rotated key and its successor
    /// share one), to carry them into a rebuilt file. Only records reached through the index and found
    /// valid are read: the file may be damaged.
    pub fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for i in 0..self.layout.index_slots {
            let v = self.slot(i).load(Ordering::Acquire);
            let r = (v & RECORD_MASK).wrapping_sub(1);
            if v == 0 || r >= self.layout.max_blocks || self.valid_record(self.record(r)).is_err() {
                continue;
            }
            let record = self.record(r);
            snapshot.owners.insert(record.digest, record.cell);
            snapshot.cells.entry(record.cell).or_insert_with(|| read_cell(self.cell(record.cell)));
        }
        snapshot
    }

    /// Stops every counter of this (superseded) file: a check that reads a frozen counter maps the new
    /// file instead, so the counts carried over from this one are final.
    pub fn freeze(&self) {
        for c in 0..self.blocks_used() {
            let cell = self.cell(c);
            let mut current = cell.state.load(Ordering::Acquire);
            while current as u64 & FROZEN == 0 {
                match cell.state.compare_exchange_weak(
                    current,
                    current | FROZEN as u128,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => break,
                    Err(seen) => current = seen,
                }
            }
        }
    }

    /// Adds what checks charged to this (superseded, frozen) file after `before` was taken to the cells
    /// of `to` that the same keys count in: each cell's change exactly once, compared on the whole state
    /// (a check's compare-and-swap may have landed before its statistics were bumped).
    pub fn carry_late_counts(&self, before: &Snapshot, to: &SharedCounters) {
        let mut owner_of_cell = std::collections::HashMap::new();
        for (digest, cell) in &before.owners {
            owner_of_cell.entry(*cell).or_insert(*digest);
        }
        for (c, then) in &before.cells {
            let now = read_cell(self.cell(*c));
            let same = now.state == then.state && now.total == then.total && now.days == then.days;
            if same && now.abuse == then.abuse && now.leases == then.leases {
                continue;
            }
            let Some((_, _, r)) = owner_of_cell.get(c).and_then(|d| to.find(d)) else { continue };
            if r == u64::MAX || to.valid_record(to.record(r)).is_err() {
                continue;
            }
            merge_late(to.cell(to.record(r).cell), then, &now);
        }
    }
}

/// A cell's state as a copy; the frozen mark of a superseded file is not part of it.
fn read_cell(cell: &Cell) -> CellState {
    CellState {
        state: cell.state.load(Ordering::Acquire) & !(FROZEN as u128),
        total: cell.total.load(Ordering::Acquire),
        last_used_ms: cell.last_used_ms.load(Ordering::Acquire),
        abuse: cell.abuse.load(Ordering::Acquire),
        days: [0, 1].map(|i| cell.days[i].load(Ordering::Acquire)),
        flushed_days: [0, 1].map(|i| cell.flushed_days[i].load(Ordering::Acquire)),
        leases: [0, 1].map(|i| cell.leases[i].load(Ordering::Acquire)),
    }
}

/// Only for a cell no reader can reach yet (a new file, or a new key before its index slot is stored).
pub(super) fn write_cell(cell: &Cell, s: &CellState) {
    cell.state.store(s.state, Ordering::Relaxed);
    cell.total.store(s.total, Ordering::Relaxed);
    cell.last_used_ms.store(s.last_used_ms, Ordering::Relaxed);
    cell.abuse.store(s.abuse, Ordering::Relaxed);
    for i in 0..2 {
        cell.days[i].store(s.days[i], Ordering::Relaxed);
        cell.flushed_days[i].store(s.flushed_days[i], Ordering::Relaxed);
        cell.leases[i].store(s.leases[i], Ordering::Relaxed);
    }
}

/// Adds the change from `then` to `now` (of a cell in the old file) to a live cell of the new file, which
/// checks may be charging at the same time.
fn merge_late(cell: &Cell, then: &CellState, now: &CellState) {
    let (was, is) = (decode(then.state), decode(now.state));
    let extra_used = if was.period_start_ms == is.period_start_ms { (is.used - was.used).max(0) } else { is.used };
    let mut current = cell.state.load(Ordering::Acquire);
    loop {
        let mut usage = decode(current);
        if usage.period_start_ms == is.period_start_ms {
            usage.used = (usage.used + extra_used).min(USED_MASK as i64);
        } else if usage.period_start_ms < is.period_start_ms {
            usage = Usage { period_start_ms: is.period_start_ms, used: extra_used, ..usage };
        }
        usage.tat_ns = usage.tat_ns.max(is.tat_ns);
        match cell.state.compare_exchange(current, encode(&usage), Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => break,
            Err(seen) => current = seen,
        }
    }
    cell.total.fetch_add(now.total.wrapping_sub(then.total), Ordering::AcqRel);
    cell.last_used_ms.fetch_max(now.last_used_ms, Ordering::AcqRel);
    cell.abuse.fetch_max(now.abuse, Ordering::AcqRel);
    for word in now.leases {
        super::lease::merge_word(cell, word, false);
    }
    for i in 0..2 {
        if now.days[i] == then.days[i] {
            continue;
        }
        let same_day = then.days[i] != 0 && field(then.days[i], DAY_FIELDS[0]) == field(now.days[i], DAY_FIELDS[0]);
        let mut current = cell.days[i].load(Ordering::Acquire);
        loop {
            let day = field(now.days[i], DAY_FIELDS[0]);
            let cur_day = field(current, DAY_FIELDS[0]);
            if current != 0 && cur_day > day {
                break; // a later day already took this slot
            }
            let mut next = if current != 0 && cur_day == day { current } else { day };
            for f in &DAY_FIELDS[1..] {
                let extra = field(now.days[i], *f)
                    - if same_day { field(then.days[i], *f).min(field(now.days[i], *f)) } else { 0 };
                let max = (1u128 << f.1) - 1;
                let sum = (field(next, *f) + extra).min(max);
                next = next & !(max << f.0) | sum << f.0;
            }
            match cell.days[i].compare_exchange(current, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break,
                Err(seen) => current = seen,
            }
        }
    }
    // The database lacks these counts: the next flush writes the cell (absolute values, so at most twice).
    cell.flushed_days[0].store(STALE, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::super::testing::{built, entry, entry_with_daily_quota};
    use super::super::{Found, Policies};
    use super::*;

    #[test]
    fn keys_sharing_a_cell_are_carried_once() {
        let dir = tempfile::tempdir().unwrap();
        let first = entry(1, None);
        let (_, c) = built(&dir, &[first.clone(), entry(2, Some(first.digest))]);
        let snapshot = c.snapshot();
        assert_eq!((snapshot.cells.len(), snapshot.owners.len()), (1, 2), "one cell, counted in by two keys");
    }

    /// Review (issue 9, item 5): a check whose compare-and-swap landed before `freeze()` but whose
    /// statistics were not bumped yet was dropped by the carry, which compared `total`.
    #[test]
    fn a_late_charge_whose_statistics_lag_is_carried() {
        let dir = tempfile::tempdir().unwrap();
        let e = entry_with_daily_quota(1, 10);
        let (_, old) = built(&dir, std::slice::from_ref(&e));
        let now = 1_800_000_000_000;
        assert!(matches!(old.admit(&e.digest, now), Found::Key(_)));
        let before = old.snapshot();
        // The charge of a check in flight: its CAS on the state word, and nothing else yet.
        let (_, _, r) = old.find(&e.digest).unwrap();
        let cell = old.cell(old.record(r).cell);
        let mut usage = decode(cell.state.load(Ordering::Acquire));
        usage.used += 1;
        cell.state.store(encode(&usage), Ordering::Release);
        let dir2 = tempfile::tempdir().unwrap();
        let (_, new) = built(&dir2, std::slice::from_ref(&e));
        new.carry_cells(std::slice::from_ref(&e), &before);
        old.supersede();
        old.freeze();
        old.carry_late_counts(&before, &new);
        assert_eq!(new.tally(&e.digest).unwrap().usage.used, 2, "the late charge counts in the new file");
    }

    #[test]
    fn a_frozen_file_sends_checks_to_its_successor() {
        let dir = tempfile::tempdir().unwrap();
        let e = entry(1, None);
        let (_, c) = built(&dir, std::slice::from_ref(&e));
        c.supersede();
        c.freeze();
        assert!(matches!(c.admit(&e.digest, 1_800_000_000_000), Found::Moved));
    }

    /// A growth whose process died after freezing the old file and before putting the new one in place
    /// leaves the frozen file at the path: it is found as such and grown from, every count carried.
    #[test]
    fn a_growth_that_died_after_the_freeze_is_finished_from_the_frozen_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = entry_with_daily_quota(1, 10);
        let (path, old) = built(&dir, std::slice::from_ref(&e));
        let now = 1_800_000_000_000;
        for _ in 0..3 {
            assert!(matches!(old.admit(&e.digest, now), Found::Key(_)));
        }
        old.supersede();
        old.freeze(); // ... and the process growing it dies here.
        assert!(SharedCounters::open_existing(&path).unwrap().is_none(), "no usable file at the path");
        let frozen = SharedCounters::open_superseded(&path).unwrap().expect("the frozen file is found");
        let db = dir.path().join("db");
        let policies = Policies::default();
        let entries = std::slice::from_ref(&e);
        let plan = Build { path: &path, entries, room: 2, generation: 1, policies: &policies, owner_of: &db };
        let grown = SharedCounters::grow(&frozen, &plan).unwrap();
        let t = grown.tally(&e.digest).unwrap();
        assert_eq!((t.usage.used, t.total), (3, 3), "every count carried");
        assert!(SharedCounters::open_existing(&path).unwrap().is_some());
        assert!(matches!(grown.admit(&e.digest, now), Found::Key(a) if a.decision.quota_remaining == 6));
    }
}
