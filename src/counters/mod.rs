//! The counter state shared by every process that opens a store: one file beside the database
//! (`<db>-counters`), mapped `MAP_SHARED`, holding an index of every key's digest, each key's policy, and
//! each key's usage (quota period and count, GCRA arrival time, totals).
//!
//! Layout: a header page; an open-addressing hash index of 8-byte slots (a 24-bit digest tag and a block
//! number); then 384-byte blocks, each a 128-byte counter cell and a 224-byte policy record. A key's first
//! block holds both its cell (for the life of the file) and its first record, so a check touches two
//! places in memory: the index slot and one block. Records are immutable once published. An admin change writes a new record and swaps the key's index slot to it
//! with one atomic store, so a check sees either the old policy or the new one, never half of each.
//! A check decides and charges with one 128-bit compare-and-swap over (quota word, arrival time): quota and
//! rate are charged together or not at all, and no lock exists that a killed process could leave held.
//!
//! The database stays the source of truth: the store writes these counts to it at most every flush
//! interval, and rebuilds this file from it when the file is missing, damaged, or from another boot.
//!
//! The parts, each readable on its own:
//! - `layout.rs`: the file format and its life: header, geometry, opening, building, superseding;
//! - `index.rs`: finding and publishing keys: index slots and the immutable policy records;
//! - `cell.rs`: the counter cell and the decision that charges it with one compare-and-swap;
//! - `flush.rs`: what reaches the database, and which process writes it when;
//! - `carry.rs`: growth: every cell's state carried exactly into a larger file;
//! - `lease.rs` and `cue.rs`: fleet mode, a host's leases of its keys' quotas, and a check's cue to the
//!   agent when it runs out (and its bounded wait for the answer).
//! - `settle.rs`: a fleet lease lowered to the count exactly, with checks in flight.
//!
//! This file holds the public surface: [`SharedCounters`] (its methods are spread over the parts) and
//! the types the store exchanges with it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};

use memmap2::MmapRaw;

use crate::key::KeyDigest;
use crate::policy::{Decision, KeyPolicy, Usage};

mod carry;
mod cell;
mod cue;
mod flush;
mod index;
mod layout;
mod lease;
mod seal;
mod settle;
mod share;

pub use cue::{CueReader, CuedCells};
pub(crate) use flush::MAX_FLUSH_INTERVAL;
use index::NO_PLAN;
pub use index::{MAX_ID_LEN, MAX_PLAN_LEN};
pub use layout::Build;
use layout::Layout;
pub use lease::QuotaCell;
#[doc(hidden)]
pub use seal::reseal_image;
pub use seal::Content;
pub use settle::Settled;

/// Everything counted for one key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub usage: Usage,
    pub total: i64,
    pub last_used_at_ms: Option<i64>,
}

/// A key as the store describes it to this file: for building it and for admin changes.
#[derive(Clone, Debug)]
pub struct KeyEntry {
    pub row: i64,
    pub digest: KeyDigest,
    pub id: String,
    pub plan: Option<String>,
    pub policy: KeyPolicy,
    pub created_at_ms: i64,
    /// Counts to start from when the key is new to this file.
    pub tally: Tally,
    /// The key whose counters this one shares (a rotated key's successor counts with it).
    pub shares_with: Option<KeyDigest>,
}

/// A key's decisions on one UTC day.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DayCounts {
    /// Days since 1970-01-01 (UTC).
    pub day: i64,
    pub admitted: i64,
    pub expired: i64,
    pub revoked: i64,
    pub quota_exceeded: i64,
    pub rate_limited: i64,
}

/// The store-wide revocation policies, kept in the file so every check applies them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Policies {
    /// Revoke keys unused for this long (0: off).
    pub idle_ms: i64,
    /// Revoke keys rate-limited more than this many times within `abuse_window_ms` (0: off).
    pub abuse_limit: i64,
    pub abuse_window_ms: i64,
    /// Fleet mode: keys with a quota count only within the leases this host's agent holds.
    pub fleet_leases: bool,
}

/// What a check of a known key found. Small, so that it is cheap to return: the key's id and plan stay
/// in the file, read in place through [`SharedCounters::key_view`].
#[derive(Clone, Copy, Debug)]
pub struct Admission {
    pub decision: Decision,
    /// This refusal took the key over the abuse policy's limit: the store revokes it.
    pub abusive: bool,
    /// The record the check applied (validated) and the cell it charged.
    record: u64,
    cell: u64,
    /// The rate window this host enforces (a fleet member's share), which the answer's RateLimit describes.
    rate_window_ms: Option<i64>,
}

/// The key a check matched, read in place from its record in the mapping (records are immutable once
/// published; every length is bounded again here, since the file may be hostile).
#[derive(Clone, Copy)]
pub struct KeyView<'a> {
    record: &'a index::Record,
    cell: u64,
    rate_window_ms: Option<i64>,
}

/// The matched key's id and plan, copied out of the file without allocating: a [`KeyView`] that outlives
/// the mapping.
#[derive(Clone, Copy, Debug)]
pub struct KeyRef {
    id: [u8; 48],
    id_len: u8,
    plan: [u8; 64],
    plan_len: u8,
    /// The windows of the policy this check applied, for the answer's RateLimit fields.
    quota_period: Option<crate::period::Period>,
    rate_window_ms: Option<i64>,
}

impl KeyRef {
    /// The quota period the check counted against; None: no quota.
    pub fn quota_period(&self) -> Option<crate::period::Period> {
        self.quota_period
    }
    /// The rate limit's window in ms; None: no rate limit.
    pub fn rate_window_ms(&self) -> Option<i64> {
        self.rate_window_ms
    }
    pub fn id(&self) -> &str {
        text(&self.id[..self.id_len as usize])
    }
    pub fn plan(&self) -> Option<&str> {
        (self.plan_len != NO_PLAN).then(|| text(&self.plan[..self.plan_len as usize]))
    }
}

/// An id or plan as text ("" when the file holds bytes that are not UTF-8: it may be hostile). Ids and
/// plans are ASCII in practice, and checking that is cheaper than a full UTF-8 validation on every check.
pub(super) fn text(bytes: &[u8]) -> &str {
    if bytes.is_ascii() {
        // SAFETY: ASCII is UTF-8.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    } else {
        std::str::from_utf8(bytes).unwrap_or("")
    }
}

/// One row of counts to write to the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dirty {
    pub row: i64,
    pub tally: Tally,
    /// The days whose decisions changed since the database last had them (of the two the cell holds:
    /// today and yesterday).
    pub days: [Option<DayCounts>; 2],
    cell: u64,
    /// The day words as read: what the database has once this is written.
    day_words: [u128; 2],
}

/// Everything a counter cell holds, copied out of a file being replaced so that a larger file carries it
/// exactly: the quota and rate word, totals, the abuse window, and the day slots with what the database
/// has of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CellState {
    state: u128,
    total: u64,
    last_used_ms: i64,
    abuse: u64,
    days: [u128; 2],
    flushed_days: [u128; 2],
    leases: [u64; 2],
}

/// Every cell of a file about to be replaced, and which keys count in each.
#[derive(Debug, Default)]
pub struct Snapshot {
    cells: std::collections::HashMap<u64, CellState>,
    owners: std::collections::HashMap<KeyDigest, u64>,
}

impl Snapshot {
    /// The state of the cell this key counts in.
    pub fn cell_of(&self, digest: &KeyDigest) -> Option<CellState> {
        self.owners.get(digest).and_then(|c| self.cells.get(c)).copied()
    }
}

/// The file is full: the store rebuilds it larger.
#[derive(Debug)]
pub struct Full;

/// A mapped counters file.
pub struct SharedCounters {
    map: MmapRaw,
    /// The geometry, validated once and copied out of the shared header: later writes to the header by
    /// another process cannot move what this process reads.
    layout: Layout,
    path: PathBuf,
    inode: u64,
    file: File,
    /// Set in this process once the file was found shorter than its layout (truncated by someone): from
    /// then on nothing of the mapping is touched, since a page past the end would raise SIGBUS. Also set
    /// once the file was found abandoned (no longer at the path, never superseded).
    unusable: AtomicBool,
    /// When (CLOCK_MONOTONIC) this process next compares the file's size with its layout.
    next_size_check_ns: AtomicU64,
    /// Lets a check whose flush turn and size check are not due skip reading the clock.
    clock_gate: flush::ClockGate,
}

/// What [`SharedCounters::claim_flush`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Turn {
    /// Not due, or another process claimed it.
    NotDue,
    /// This process writes the counts now.
    Claimed,
    /// The file is shorter than its layout: map the one at the path (or rebuild) before touching it.
    Unusable,
}

/// What a check found in the counters file.
#[derive(Clone, Copy, Debug)]
pub enum Found {
    Key(Admission),
    /// No key has this digest.
    Unknown,
    /// This file was superseded by a larger one while the check ran: map the new one and ask again.
    Moved,
    /// The file is damaged (it was marked superseded, so the next check rebuilds it from the database).
    Damaged(&'static str),
}

/// What [`SharedCounters::open_checked`] found at a path.
pub enum Opened {
    /// A complete file of this boot, in use, whose index and records match their checksum.
    Sound(SharedCounters),
    /// A complete file of this boot, in use, built before content checksums existed: its counts can be
    /// carried into a new file, which the store builds in its place.
    Unsealed(SharedCounters),
    /// A file whose index or records do not match their checksum (the reason): the store marks it
    /// superseded and rebuilds it from the database, carrying nothing from it.
    Damaged(SharedCounters, &'static str),
    /// Nothing that needs repair (why not in use: none there, from an earlier boot, superseded): the store
    /// builds one when it needs it.
    Absent(&'static str),
    /// A file that cannot be what it claims (why): a bad header, a symbolic link, the wrong size.
    Unusable(&'static str),
}

// The mapping is only reached through atomics and immutable-once-published records.
unsafe impl Send for SharedCounters {}
unsafe impl Sync for SharedCounters {}

/// The path of the counters file of the database at `db`, from the database's resolved path, so that
/// every name of one database (a symbolic link, a relative path) shares one counters file.
pub fn path_for(db: &Path) -> PathBuf {
    let db = std::fs::canonicalize(db).unwrap_or_else(|_| db.to_path_buf());
    let mut name = db.into_os_string();
    name.push("-counters");
    PathBuf::from(name)
}

/// CLOCK_MONOTONIC in nanoseconds: system-wide, so processes agree on when a flush is due; read
/// through the vDSO, not a system call.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod testing {
    //! What the unit tests of every part build on: a key entry and a freshly built file.
    use super::*;

    pub(super) fn entry(n: u8, shares_with: Option<KeyDigest>) -> KeyEntry {
        KeyEntry {
            row: n as i64 + 1,
            digest: crate::key::digest(&[n; 16]),
            id: format!("key_{n}"),
            plan: None,
            policy: KeyPolicy { revoked: false, revoke_at_ms: None, expires_at_ms: None, quota: None, rate: None },
            created_at_ms: 1_800_000_000_000,
            tally: Tally::default(),
            shares_with,
        }
    }

    /// Key `n` with a daily quota of `limit`.
    pub(super) fn entry_with_daily_quota(n: u8, limit: i64) -> KeyEntry {
        let mut e = entry(n, None);
        e.policy.quota = Some(crate::policy::Quota { limit, period: crate::period::Period::Daily });
        e
    }

    pub(super) fn built(dir: &tempfile::TempDir, entries: &[KeyEntry]) -> (PathBuf, SharedCounters) {
        let path = dir.path().join("c");
        let db = dir.path().join("db");
        std::fs::write(&db, b"").unwrap();
        let plan = Build {
            path: &path,
            entries,
            room: entries.len(),
            generation: 1,
            policies: &Policies::default(),
            owner_of: &db,
        };
        let c = SharedCounters::build(&plan).unwrap();
        (path, c)
    }
}
