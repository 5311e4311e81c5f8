//! The content checksum: damage behind an intact header (a torn write, a stray writer, a bad disk) is
//! found and the file rebuilt from the database, rather than read as "no such key" or as another policy.
//!
//! It covers what a decision is made from besides the counts: every index slot, every record in use
//! (blocks below `blocks_used`) with the row number of the cell in the same block (which a flush writes
//! the counts under), and the header's `cells_used`, `blocks_used` and store-wide policies. Not covered:
//! the counts in the cells (they change on every check, and the database is their source of truth), and
//! the header's flush schedule, generation, state, fleet rate share, and the lease thread's cue and
//! liveness (`cue.rs`).
//!
//! The checksum is a wrapping sum of one 64-bit part per non-empty slot, per block in use (a CRC-32 of
//! its record and row) and for the header, each part mixed with its position: an admin change, which
//! changes a slot, appends a block and bumps the counts in place, amends the sum by what it changed
//! (O(1), under the database's write lock like every change of what it covers), and verifying is one pass
//! over the index and the records (see docs/counters-file.md for when that pass runs). It is meant to
//! find accidents; anyone who can write the file can recompute it (see docs/security.md).

use std::mem::{offset_of, size_of};
use std::sync::atomic::{AtomicU64, Ordering};

use super::cell::Cell;
use super::index::Record;
use super::layout::{Block, Header};
use super::{monotonic_ns, SharedCounters};

/// The checksum the header's `content_sum` holds; 0 (files built by ms-auth 1.1.0 and before): none.
pub(super) const SEAL_VERSION: u32 = 1;

const SLOT_SALT: u64 = 0x736c_6f74_5f73_616c;
const BLOCK_SALT: u64 = 0x626c_6f63_6b5f_7361;
const HEADER_SALT: u64 = 0x6865_6164_6572_5f73;

/// What the index and records of a mapped file were found to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Content {
    /// They match the header's checksum.
    Sound,
    /// Built before content checksums existed: nothing to check it against.
    Unsealed,
    /// They do not match: never decided from, never carried into a new file.
    Damaged(&'static str),
}

/// splitmix64's finalizer: a bijection that spreads every input bit over the output.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The part of index slot `i` holding `v` (an empty slot adds nothing).
pub(super) fn slot_part(i: u64, v: u64) -> u64 {
    if v == 0 {
        0
    } else {
        mix(mix(i ^ SLOT_SALT) ^ v)
    }
}

/// The part of block `b`: its record's bytes and its cell's row.
fn block_part(b: u64, record: &[u8], row: i64) -> u64 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(record);
    crc.update(&row.to_le_bytes());
    mix(mix(b ^ BLOCK_SALT) ^ u64::from(crc.finalize()))
}

/// The header's part: its counts of cells and blocks and the store-wide policies.
fn header_part(fields: [u64; 6]) -> u64 {
    fields.iter().fold(HEADER_SALT, |acc, f| mix(acc ^ f))
}

impl SharedCounters {
    pub(super) fn header_part(&self) -> u64 {
        let h = self.header();
        header_part([
            h.cells_used.load(Ordering::Acquire),
            h.blocks_used.load(Ordering::Acquire),
            h.idle_ms.load(Ordering::Acquire) as u64,
            h.abuse_limit.load(Ordering::Acquire) as u64,
            h.abuse_window_ms.load(Ordering::Acquire) as u64,
            u64::from(h.fleet_leases.load(Ordering::Acquire)),
        ])
    }

    /// Block `b`'s part (`b < max_blocks`); its record is immutable once counted (`b < blocks_used`).
    pub(super) fn block_part(&self, b: u64) -> u64 {
        let block = self.block(b);
        let record = unsafe {
            std::slice::from_raw_parts(std::ptr::addr_of!((*block).record) as *const u8, size_of::<Record>())
        };
        block_part(b, record, self.cell(b).row.load(Ordering::Acquire))
    }

    /// Amends the checksum for a change in place whose parts were `before` and are now `after`. Only with
    /// the database's write lock held (or on a file no other process can see yet).
    pub(super) fn amend_seal(&self, before: u64, after: u64) {
        self.header().content_sum.fetch_add(after.wrapping_sub(before), Ordering::AcqRel);
    }

    /// Checks the index and the records against the checksum: one pass over both (see `tests/scale.rs` for
    /// its cost with a million keys). Conclusive under the database's write lock; without it, an admin
    /// change in progress makes a sound file look damaged, never the reverse.
    pub fn content(&self) -> Content {
        let h = self.header();
        if h.seal_version != SEAL_VERSION {
            return Content::Unsealed;
        }
        let blocks = h.blocks_used.load(Ordering::Acquire);
        if blocks > self.layout.max_blocks {
            return Content::Damaged("its header counts more blocks than it holds");
        }
        let expected = h.content_sum.load(Ordering::Acquire);
        let index = unsafe {
            std::slice::from_raw_parts(
                self.map.as_ptr().add(self.layout.index_off as usize) as *const AtomicU64,
                self.layout.index_slots as usize,
            )
        };
        let mut sum = self.header_part();
        for (i, slot) in index.iter().enumerate() {
            sum = sum.wrapping_add(slot_part(i as u64, slot.load(Ordering::Relaxed)));
        }
        for b in 0..blocks {
            sum = sum.wrapping_add(self.block_part(b));
        }
        if sum == expected {
            Content::Sound
        } else {
            Content::Damaged("its index or records do not match their checksum")
        }
    }

    /// True when this file's content should be verified again: its generation changed since it last was,
    /// or that was `every_ns` ago or more.
    pub fn verification_due(&self, every_ns: u64) -> bool {
        let h = self.header();
        let generation = h.generation.load(Ordering::Acquire);
        let changed = generation != -1 && generation != h.verified_generation.load(Ordering::Acquire);
        // CLOCK_MONOTONIC is the boot's, as the file is: a verification later than now is damage (the
        // field is in no checksum), and must not put the next one off for good.
        let (now, verified_at) = (monotonic_ns(), h.verified_at_ns.load(Ordering::Acquire));
        changed || verified_at > now || now - verified_at >= every_ns
    }

    /// Records that the content was found sound at the current generation, now (under the write lock).
    pub fn mark_verified(&self) {
        let h = self.header();
        h.verified_generation.store(h.generation.load(Ordering::Acquire), Ordering::Release);
        h.verified_at_ns.store(monotonic_ns(), Ordering::Release);
    }
}

/// Recomputes the content checksum of a counters file held in memory, as anyone who can write the file
/// can: for the `counters` fuzz target, whose forged files must get past it to reach the readers behind
/// it. Does nothing to an image whose geometry does not fit it.
#[doc(hidden)]
pub fn reseal_image(image: &mut [u8]) {
    let u64_at = |image: &[u8], at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(image.get(at..at.checked_add(8)?)?.try_into().ok()?))
    };
    let sum = (|| -> Option<u64> {
        let index_slots = u64_at(image, offset_of!(Header, index_slots))?;
        let index_off = u64_at(image, offset_of!(Header, index_off))?;
        let blocks_off = u64_at(image, offset_of!(Header, blocks_off))?;
        let blocks_used = u64_at(image, offset_of!(Header, blocks_used))?;
        let fleet_leases = u32::from_le_bytes(
            image.get(offset_of!(Header, fleet_leases)..offset_of!(Header, fleet_leases) + 4)?.try_into().ok()?,
        );
        let mut sum = header_part([
            u64_at(image, offset_of!(Header, cells_used))?,
            blocks_used,
            u64_at(image, offset_of!(Header, idle_ms))?,
            u64_at(image, offset_of!(Header, abuse_limit))?,
            u64_at(image, offset_of!(Header, abuse_window_ms))?,
            u64::from(fleet_leases),
        ]);
        for i in 0..index_slots {
            let at = usize::try_from(index_off.checked_add(i.checked_mul(8)?)?).ok()?;
            sum = sum.wrapping_add(slot_part(i, u64_at(image, at)?));
        }
        let block_len = size_of::<Block>() as u64;
        for b in 0..blocks_used {
            let at = usize::try_from(blocks_off.checked_add(b.checked_mul(block_len)?)?).ok()?;
            let record_at = at.checked_add(offset_of!(Block, record))?;
            let record = image.get(record_at..record_at.checked_add(size_of::<Record>())?)?;
            let row = u64_at(image, at.checked_add(offset_of!(Block, cell) + offset_of!(Cell, row))?)? as i64;
            sum = sum.wrapping_add(block_part(b, record, row));
        }
        Some(sum)
    })();
    if let Some(sum) = sum {
        image[offset_of!(Header, content_sum)..][..8].copy_from_slice(&sum.to_le_bytes());
        image[offset_of!(Header, seal_version)..][..4].copy_from_slice(&SEAL_VERSION.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{built, entry, entry_with_daily_quota};
    use super::super::{Found, Policies};
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    #[test]
    fn every_change_in_place_keeps_the_file_sound() {
        let dir = tempfile::tempdir().unwrap();
        let first = entry(1, None);
        let (_, c) = built(&dir, &[first.clone(), entry(2, None)]);
        assert_eq!(c.content(), Content::Sound, "as built");
        c.upsert(&entry(3, None)).unwrap();
        assert_eq!(c.content(), Content::Sound, "a key added");
        c.upsert(&entry_with_daily_quota(1, 7)).unwrap();
        assert_eq!(c.content(), Content::Sound, "a key's policy changed");
        c.upsert(&entry(4, Some(first.digest))).unwrap();
        assert_eq!(c.content(), Content::Sound, "a successor sharing its predecessor's cell");
        c.tombstone(&entry(2, None).digest).unwrap();
        assert_eq!(c.content(), Content::Sound, "a tombstone (its cell's row cleared)");
        c.set_policies(&Policies { idle_ms: 5, abuse_limit: 3, abuse_window_ms: 60_000, fleet_leases: true });
        assert_eq!(c.content(), Content::Sound, "store-wide policies");
        for _ in 0..3 {
            assert!(matches!(c.admit(&first.digest, NOW), Found::Key(_)));
        }
        assert_eq!(c.content(), Content::Sound, "counts are not covered: they change on every check");
    }

    #[test]
    fn damage_to_anything_covered_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let e = entry_with_daily_quota(1, 5);
        let (_, c) = built(&dir, std::slice::from_ref(&e));
        let (slot, v, r) = c.find(&e.digest).unwrap();
        let empty_slot = (0..c.layout.index_slots).find(|&i| c.slot(i).load(Ordering::Relaxed) == 0).unwrap();
        let h = c.header();
        // The record's quota limit, 72 bytes into it (see `Record`).
        let quota = unsafe { (std::ptr::addr_of_mut!((*c.block(r)).record) as *mut u8).add(72) as *mut i64 };
        // What is damaged, and how (on) or undone (off).
        type Damage<'a> = (&'static str, Box<dyn Fn(bool) + 'a>);
        let damages: [Damage; 6] = [
            ("a record's quota", Box::new(|on| unsafe { *quota = if on { 6 } else { 5 } })),
            ("the key's slot", Box::new(|on| c.slot(slot).store(if on { v ^ 1 << 50 } else { v }, Ordering::Relaxed))),
            ("an empty slot", Box::new(|on| c.slot(empty_slot).store(on as u64 * 0x1234, Ordering::Relaxed))),
            ("a cell's row", Box::new(|on| c.cell(r).row.store(if on { 99 } else { e.row }, Ordering::Relaxed))),
            ("the blocks in use", Box::new(|on| h.blocks_used.store(1 + on as u64, Ordering::Relaxed))),
            ("the idle policy", Box::new(|on| h.idle_ms.store(on as i64, Ordering::Relaxed))),
        ];
        assert_eq!(unsafe { *quota }, 5, "the offset of the quota limit");
        for (what, damage) in &damages {
            damage(true);
            assert!(matches!(c.content(), Content::Damaged(_)), "{what}");
            damage(false);
            assert_eq!(c.content(), Content::Sound, "{what} restored");
        }
    }

    #[test]
    fn a_file_is_due_for_verification_when_its_generation_changed_or_after_the_period() {
        let dir = tempfile::tempdir().unwrap();
        let (_, c) = built(&dir, &[entry(1, None)]);
        let hour = 3_600_000_000_000;
        assert!(!c.verification_due(hour), "verified as built");
        assert!(c.verification_due(0), "the period passed");
        c.set_generation(-1);
        assert!(!c.verification_due(hour), "an admin change in progress is not a new generation");
        c.set_generation(2);
        assert!(c.verification_due(hour), "a new generation");
        c.mark_verified();
        assert!(!c.verification_due(hour));
    }

    /// Review of issue 21, item 2: the time of the last verification is in the header's page but not in
    /// any checksum; one flipped high bit there put it centuries ahead, and no period ever came due again
    /// (damage a check cannot see was then answered from until the next admin change).
    #[test]
    fn a_time_of_last_verification_later_than_now_does_not_put_verification_off_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let (_, c) = built(&dir, &[entry(1, None)]);
        let minute = 60_000_000_000;
        assert!(!c.verification_due(minute), "verified as built");
        let h = c.header();
        h.verified_at_ns.store(h.verified_at_ns.load(Ordering::Relaxed) | 1 << 62, Ordering::Relaxed);
        assert!(c.verification_due(minute), "a verification that happened later than now is damage: due");
    }

    #[test]
    fn a_resealed_image_is_the_file_as_maintained_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let (path, c) = built(&dir, &[entry(1, None), entry(2, None)]);
        c.upsert(&entry(3, None)).unwrap();
        c.tombstone(&entry(1, None).digest).unwrap();
        let file = std::fs::read(&path).unwrap();
        let mut image = file.clone();
        image[offset_of!(Header, content_sum)..][..8].fill(0);
        reseal_image(&mut image);
        assert_eq!(image, file);
        reseal_image(&mut image[..200]); // a geometry that does not fit: left alone, no panic
    }
}
