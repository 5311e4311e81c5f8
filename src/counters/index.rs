//! Finding and publishing keys: the open-addressing index of digests (8-byte slots: a 24-bit tag and a
//! record number, never more than half full) and the 224-byte policy records it points to. A record is
//! immutable once published: an admin change writes a new one and swaps the key's slot to it with one
//! atomic store. Every number read from the file is checked before it is followed: it may be damaged.

use std::sync::atomic::{AtomicU64, Ordering};

use super::carry::write_cell;
use super::cell::encode;
use super::seal::slot_part;
use super::{text, Admission, CellState, Full, KeyEntry, KeyRef, KeyView, SharedCounters, Tally};
use crate::gcra::{checked_rate, RateLimit};
use crate::key::KeyDigest;
use crate::period::Period;
use crate::policy::{KeyPolicy, Quota};

const RECORD_BITS: u32 = 40;
pub(super) const RECORD_MASK: u64 = (1 << RECORD_BITS) - 1;
const NEVER: i64 = i64::MAX;
pub(super) const NO_PLAN: u8 = u8::MAX;
pub const MAX_ID_LEN: usize = 47;
pub const MAX_PLAN_LEN: usize = 63;
/// Probes longer than this compare their length with the number of records (rare in a sound index).
const LONG_PROBE: u64 = 32;

#[repr(C)]
pub(super) struct Record {
    pub(super) digest: [u8; 32],
    row: i64,
    pub(super) cell: u64,
    expires_at_ms: i64,
    revoke_at_ms: i64,
    pub(super) created_at_ms: i64,
    quota_limit: i64,
    rate_limit: i64,
    rate_window_ms: i64,
    rate_burst: i64,
    revoked: u8,
    quota_period: u8,
    id_len: u8,
    plan_len: u8,
    _pad: [u8; 4],
    id: [u8; 48],
    plan: [u8; 64],
}

const _: () = assert!(std::mem::size_of::<Record>() == 224);

impl SharedCounters {
    /// Callers pass `i < index_slots` (a masked hash).
    pub(super) fn slot(&self, i: u64) -> &AtomicU64 {
        let l = &self.layout;
        assert!(i < l.index_slots, "index slot out of range");
        unsafe { &*(self.map.as_ptr().add((l.index_off + i * 8) as usize) as *const AtomicU64) }
    }

    /// Checks what a record read from the file says before it is trusted.
    /// The published record of a digest, if the index holds one and it is valid.
    pub(super) fn valid_record_of(&self, digest: &KeyDigest) -> Option<&Record> {
        let (_, _, r) = self.find(digest)?;
        let record = (r != u64::MAX).then(|| self.record(r))?;
        self.valid_record(record).ok()?;
        Some(record)
    }

    pub(super) fn valid_record(&self, r: &Record) -> std::result::Result<(), &'static str> {
        let rate_ok = r.rate_limit == 0 || checked_rate(r.rate_limit, r.rate_window_ms, r.rate_burst).is_ok();
        let quota_ok = r.quota_period == 0 || (r.quota_period <= 2 && r.quota_limit >= 1);
        match () {
            _ if r.cell >= self.layout.max_blocks => Err("a record names a cell outside the file"),
            _ if !quota_ok => Err("a record has an impossible quota"),
            _ if !rate_ok => Err("a record has an impossible rate limit"),
            _ if r.id_len as usize > MAX_ID_LEN => Err("a record has an impossible id"),
            _ if r.plan_len != NO_PLAN && r.plan_len as usize > MAX_PLAN_LEN => Err("a record has an impossible plan"),
            _ => Ok(()),
        }
    }

    pub(super) fn record(&self, i: u64) -> &Record {
        unsafe { &(*self.block(i)).record }
    }

    /// Finds the published record of a digest: (index slot, slot value, record number).
    pub(super) fn find(&self, digest: &KeyDigest) -> Option<(u64, u64, u64)> {
        let slots = self.layout.index_slots;
        let mask = slots - 1;
        let hash = u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"));
        let tag = u64::from(u32::from_le_bytes(digest[8..12].try_into().expect("4 bytes")) & 0xFF_FFFF);
        let mut i = hash & mask;
        // The index is never more than half full, so an empty slot ends every probe. Each key's slot names
        // a record of its own, so a probe past more full slots than there are records is in a damaged
        // index (random bytes leave no slot empty): said so, not read as "no such key".
        for probe in 0..slots {
            let v = self.slot(i).load(Ordering::Acquire);
            if v == 0 {
                return None;
            }
            if probe >= LONG_PROBE && probe >= self.blocks_used() {
                return Some((i, v, u64::MAX));
            }
            if v >> RECORD_BITS == tag {
                let r = (v & RECORD_MASK).wrapping_sub(1);
                if r >= self.layout.max_blocks {
                    // A damaged slot: say so rather than read outside the file.
                    return Some((i, v, u64::MAX));
                }
                // The record's digest decides, and the rest of the block is read next.
                self.prefetch_block(r);
                if self.record(r).digest == *digest {
                    return Some((i, v, r));
                }
            }
            i = (i + 1) & mask;
        }
        None
    }

    /// Makes a digest refuse every request (revoked) and never be written to the database: for a key
    /// this file holds that the database does not (an admin change that failed to commit).
    pub fn tombstone(&self, digest: &KeyDigest) -> std::result::Result<(), Full> {
        let Some((_, _, r)) = self.find(digest) else { return Ok(()) };
        if r == u64::MAX {
            return Ok(());
        }
        let record = self.record(r);
        let entry = KeyEntry {
            row: 0,
            digest: *digest,
            id: String::new(),
            plan: None,
            policy: KeyPolicy { revoked: true, revoke_at_ms: None, expires_at_ms: None, quota: None, rate: None },
            created_at_ms: record.created_at_ms,
            tally: Tally::default(),
            shares_with: None,
        };
        let cell = record.cell;
        self.upsert(&entry)?;
        // Its row number may be handed to another key: never flush this cell under it.
        if cell < self.layout.max_blocks && self.shares_no_cell(digest, cell) {
            let sealed = cell < self.blocks_used();
            let before = if sealed { self.block_part(cell) } else { 0 };
            self.cell(cell).row.store(0, Ordering::Release);
            if sealed {
                self.amend_seal(before, self.block_part(cell));
            }
        }
        Ok(())
    }

    /// True when the file refuses this digest because a change that added it did not commit (see
    /// [`SharedCounters::tombstone`]): a record of a key the database rightly does not have.
    pub fn is_tombstone(&self, digest: &KeyDigest) -> bool {
        self.valid_record_of(digest).is_some_and(|r| r.row == 0 && r.revoked != 0 && r.id_len == 0)
    }

    /// True when no other key's current record counts in `cell`.
    fn shares_no_cell(&self, digest: &KeyDigest, cell: u64) -> bool {
        (0..self.layout.index_slots).all(|i| {
            let v = self.slot(i).load(Ordering::Acquire);
            let r = (v & RECORD_MASK).wrapping_sub(1);
            v == 0 || r >= self.layout.max_blocks || {
                let record = self.record(r);
                record.cell != cell || record.digest == *digest
            }
        })
    }

    /// The digests of every key this file answers for.
    pub fn digests(&self) -> Vec<KeyDigest> {
        (0..self.layout.index_slots)
            .filter_map(|i| {
                let v = self.slot(i).load(Ordering::Acquire);
                let r = (v & RECORD_MASK).wrapping_sub(1);
                (v != 0 && r < self.layout.max_blocks).then(|| self.record(r).digest)
            })
            .collect()
    }

    /// Adds or changes a key. Only one process at a time may call it (the store holds the database's
    /// write lock); checks run concurrently and see the old record or the new one.
    pub fn upsert(&self, entry: &KeyEntry) -> std::result::Result<(), Full> {
        let h = self.header();
        let found = self.find(&entry.digest);
        let b = h.blocks_used.load(Ordering::Acquire);
        if b >= self.layout.max_blocks {
            return Err(Full);
        }
        // Numbers read from the file are checked before use: it may be damaged or hostile.
        let in_file = |(_, _, r): &(u64, u64, u64)| *r != u64::MAX && self.record(*r).cell < self.layout.max_blocks;
        let found = found.filter(in_file);
        let shared_cell =
            entry.shares_with.and_then(|d| self.find(&d)).filter(in_file).map(|(_, _, r)| self.record(r).cell);
        // Where the key goes in the index. A damaged index may have no empty slot: the probe is bounded,
        // and a full index is reported as a full file (the store rebuilds it) rather than looped over.
        let slot = match found {
            Some((i, _, _)) => i,
            None => {
                let mask = self.layout.index_slots - 1;
                let start = u64::from_le_bytes(entry.digest[..8].try_into().expect("8 bytes"));
                (0..self.layout.index_slots)
                    .map(|n| start.wrapping_add(n) & mask)
                    .find(|&i| self.slot(i).load(Ordering::Acquire) == 0)
                    .ok_or(Full)?
            }
        };
        // What the change alters of the content checksum: the slot and the header's counts, and the new
        // block (not counted before).
        let sealed_before = self.header_part().wrapping_add(slot_part(slot, self.slot(slot).load(Ordering::Acquire)));
        let cell = match (found, shared_cell) {
            (Some((_, _, r)), _) => self.record(r).cell,
            (None, Some(cell)) => cell,
            (None, None) => {
                let c = h.cells_used.load(Ordering::Acquire);
                if c >= self.layout.max_cells {
                    return Err(Full);
                }
                let cell = self.cell(b);
                let t = &entry.tally;
                let start = CellState {
                    state: encode(&t.usage),
                    total: t.total as u64,
                    last_used_ms: t.last_used_at_ms.unwrap_or(0),
                    abuse: 0,
                    days: [0; 2],
                    flushed_days: [0; 2],
                    leases: [0; 2],
                };
                write_cell(cell, &start);
                cell.row.store(entry.row, Ordering::Relaxed);
                h.cells_used.store(c + 1, Ordering::Release);
                b
            }
        };
        // Not yet reachable by any reader: it is published afterwards by the index store (Release).
        unsafe { std::ptr::addr_of_mut!((*self.block(b)).record).write(record_of(entry, cell)) };
        h.blocks_used.store(b + 1, Ordering::Release);
        let tag = u64::from(u32::from_le_bytes(entry.digest[8..12].try_into().expect("4 bytes")) & 0xFF_FFFF);
        let published = tag << RECORD_BITS | (b + 1);
        self.slot(slot).store(published, Ordering::Release);
        let sealed_after = self.header_part().wrapping_add(slot_part(slot, published)).wrapping_add(self.block_part(b));
        self.amend_seal(sealed_before, sealed_after);
        Ok(())
    }

    /// True when the file holds exactly this key's policy, id and plan.
    /// A damaged slot or record never "holds" anything: the caller rewrites it or rebuilds the file.
    pub fn holds(&self, entry: &KeyEntry) -> bool {
        let Some((_, _, r)) = self.find(&entry.digest) else {
            return false;
        };
        if r == u64::MAX || self.valid_record(self.record(r)).is_err() {
            return false;
        }
        let record = self.record(r);
        let k = KeyView { record, cell: record.cell, rate_window_ms: None };
        policy_of(record) == entry.policy
            && k.id() == entry.id
            && k.plan() == entry.plan.as_deref()
            && record.row == entry.row
    }
}

fn record_of(entry: &KeyEntry, cell: u64) -> Record {
    let mut id = [0u8; 48];
    let id_len = entry.id.len().min(MAX_ID_LEN);
    id[..id_len].copy_from_slice(&entry.id.as_bytes()[..id_len]);
    let mut plan = [0u8; 64];
    let plan_len = match &entry.plan {
        Some(p) => {
            let n = p.len().min(MAX_PLAN_LEN);
            plan[..n].copy_from_slice(&p.as_bytes()[..n]);
            n as u8
        }
        None => NO_PLAN,
    };
    let p = &entry.policy;
    Record {
        digest: entry.digest,
        row: entry.row,
        cell,
        expires_at_ms: p.expires_at_ms.unwrap_or(NEVER),
        revoke_at_ms: p.revoke_at_ms.unwrap_or(NEVER),
        created_at_ms: entry.created_at_ms,
        quota_limit: p.quota.map_or(0, |q| q.limit),
        rate_limit: p.rate.map_or(0, |r| r.limit),
        rate_window_ms: p.rate.map_or(0, |r| r.window_ms),
        rate_burst: p.rate.map_or(0, |r| r.burst),
        revoked: p.revoked as u8,
        quota_period: match p.quota.map(|q| q.period) {
            None => 0,
            Some(Period::Daily) => 1,
            Some(Period::Monthly) => 2,
        },
        id_len: id_len as u8,
        plan_len,
        _pad: [0; 4],
        id,
        plan,
    }
}

pub(super) fn policy_of(r: &Record) -> KeyPolicy {
    KeyPolicy {
        revoked: r.revoked != 0,
        revoke_at_ms: (r.revoke_at_ms != NEVER).then_some(r.revoke_at_ms),
        expires_at_ms: (r.expires_at_ms != NEVER).then_some(r.expires_at_ms),
        quota: match r.quota_period {
            1 => Some(Quota { limit: r.quota_limit, period: Period::Daily }),
            2 => Some(Quota { limit: r.quota_limit, period: Period::Monthly }),
            _ => None,
        },
        rate: (r.rate_limit > 0).then_some(RateLimit {
            limit: r.rate_limit,
            window_ms: r.rate_window_ms,
            burst: r.rate_burst,
        }),
    }
}

impl SharedCounters {
    /// The key an admission matched, read in place; `admission` comes from this file's `admit`.
    pub fn key_view(&self, admission: &Admission) -> KeyView<'_> {
        KeyView {
            record: self.record(admission.record),
            cell: admission.cell,
            rate_window_ms: admission.rate_window_ms,
        }
    }
}

impl<'a> KeyView<'a> {
    pub fn id(&self) -> &'a str {
        let r = self.record;
        text(&r.id[..(r.id_len as usize).min(MAX_ID_LEN)])
    }
    pub fn plan(&self) -> Option<&'a str> {
        let r = self.record;
        (r.plan_len != NO_PLAN).then(|| text(&r.plan[..(r.plan_len as usize).min(MAX_PLAN_LEN)]))
    }
    /// The quota period the check counted against; None: no quota.
    pub fn quota_period(&self) -> Option<Period> {
        policy_of(self.record).quota.map(|q| q.period)
    }
    /// The rate window the check enforced (this host's share in a fleet); None: no rate limit.
    pub fn rate_window_ms(&self) -> Option<i64> {
        self.rate_window_ms
    }
    pub(super) fn cell(&self) -> u64 {
        self.cell
    }
    /// A copy that outlives the mapping.
    pub fn to_key_ref(&self) -> KeyRef {
        let r = self.record;
        KeyRef {
            id: r.id,
            id_len: r.id_len.min(MAX_ID_LEN as u8),
            plan: r.plan,
            plan_len: if r.plan_len == NO_PLAN { NO_PLAN } else { r.plan_len.min(MAX_PLAN_LEN as u8) },
            quota_period: self.quota_period(),
            rate_window_ms: self.rate_window_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{built, entry};
    use super::super::Found;
    use super::*;
    use crate::status::Status;

    #[test]
    fn a_damaged_record_is_reported_and_the_file_given_up() {
        let dir = tempfile::tempdir().unwrap();
        let e = entry(1, None);
        let (_, c) = built(&dir, std::slice::from_ref(&e));
        assert!(matches!(c.admit(&e.digest, 1_800_000_000_000), Found::Key(_)));
        let (_, _, r) = c.find(&e.digest).unwrap();
        unsafe { (*c.block(r)).record.plan_len = 200 };
        assert!(matches!(c.admit(&e.digest, 1_800_000_000_000), Found::Damaged(_)));
        assert!(c.is_superseded(), "the next check rebuilds it from the database");
    }

    /// Review (issue 9, item 7): `holds` and the shared-cell path of `upsert` trusted numbers read from
    /// the file, and panicked on a slot naming a block past the end.
    #[test]
    fn damaged_slots_are_neither_held_nor_followed() {
        let dir = tempfile::tempdir().unwrap();
        let first = entry(1, None);
        let (_, c) = built(&dir, std::slice::from_ref(&first));
        let (i, v, _) = c.find(&first.digest).unwrap();
        c.slot(i).store(v & !RECORD_MASK | (c.layout.max_blocks + 5), Ordering::Release);
        assert!(!c.holds(&first));
        let successor = entry(2, Some(first.digest));
        assert!(c.upsert(&successor).is_ok(), "a damaged predecessor is not followed");
        assert!(c.holds(&successor));
        let (_, _, r) = c.find(&first.digest).unwrap();
        assert_eq!(r, u64::MAX, "still reported as damaged, for the check to say so");
    }

    #[test]
    fn a_tombstoned_key_is_refused_and_never_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let e = entry(1, None);
        let (_, c) = built(&dir, std::slice::from_ref(&e));
        assert!(matches!(c.admit(&e.digest, 1_800_000_000_000), Found::Key(_)));
        c.tombstone(&e.digest).unwrap();
        match c.admit(&e.digest, 1_800_000_000_000) {
            Found::Key(a) => assert_eq!(a.decision.status, Status::ApiKeyRevoked),
            other => panic!("{other:?}"),
        }
        assert!(c.dirty().is_empty(), "its counts are never written under a row another key may get");
    }

    /// The C ABI reads a matched key's id and plan in place, after the check validated the record: what
    /// another process writes there meanwhile is bounded again, and bytes that are not UTF-8 read as "".
    #[test]
    fn a_key_read_in_place_is_bounded_and_text_whatever_the_file_says_after_the_check() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = entry(1, None);
        e.plan = Some("pro".into());
        let (_, c) = built(&dir, std::slice::from_ref(&e));
        let Found::Key(a) = c.admit(&e.digest, 1_800_000_000_000) else { panic!("not found") };
        let view = c.key_view(&a);
        assert_eq!((view.id(), view.plan()), (e.id.as_str(), Some("pro")));
        assert_eq!(view.to_key_ref().id(), e.id);
        let record = unsafe { &mut (*c.block(a.record)).record };
        record.plan[..4].copy_from_slice("plä".as_bytes());
        record.plan_len = 4;
        assert_eq!(c.key_view(&a).plan(), Some("plä"), "UTF-8 beyond ASCII is read as it is");
        record.id[0] = 0xff;
        record.id_len = 200;
        record.plan_len = 200;
        let view = c.key_view(&a);
        assert_eq!(view.id(), "", "not UTF-8: empty");
        assert_eq!(view.plan().map(str::len), Some(MAX_PLAN_LEN), "a length past the field is bounded");
        let copy = view.to_key_ref();
        assert_eq!((copy.id(), copy.plan()), (view.id(), view.plan()));
    }
}
