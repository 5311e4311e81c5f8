//! What each fuzz target does with one input. Shared by the libFuzzer targets (`fuzz/fuzz_targets/`,
//! nightly) and the stable regression test (`tests/fuzz_regressions.rs`), which runs every corpus file and
//! every crash input through the same code, so CI needs no nightly to keep what the fuzzer found.
//!
//! Each function panics when an invariant breaks (that is how both libFuzzer and `cargo test` notice).

#![allow(dead_code)]

use std::ffi::CString;
use std::path::{Path, PathBuf};

use ms_auth::ffi::{ms_check_result, ms_store, ms_store_check, ms_store_close, ms_store_open};
use ms_auth::store::{AuditFilter, PlanSpec, PolicySpec};
use ms_auth::{KeyFilter, KeyPatch, KeySpec, Status, Store, StoreOptions};

/// 2027-01-15T10:00:00Z, when the keys of the fixtures are created.
pub const NOW: i64 = 1_800_000_000_000;

/// Keys every fixture store holds, so a fuzzer can reach the paths of a known key (quota, rate, expiry).
const SPECS: [&str; 4] = [
    r#"{"quota": {"limit": 3, "period": "daily"}, "rate_limit": {"limit": 2, "window_ms": 1000}}"#,
    r#"{"key": "imported-secret-123", "expires_at_ms": 1800000060000, "rate_limit": null}"#,
    r#"{"env": "test", "quota": {"limit": 1000, "period": "monthly"}, "expires_at_ms": null}"#,
    r#"{"plan": "pro", "rate_limit": {"limit": 1, "window_ms": 60000, "burst": 5}}"#,
];

fn make_store(db: &Path) -> (Store, Vec<String>) {
    let store = Store::open(db).expect("open a fresh store");
    let keys = SPECS
        .iter()
        .map(|s| store.create_key(&KeySpec::from_json(s).expect("fixture spec"), NOW).expect("create key").key)
        .collect();
    (store, keys)
}

/// Splits off a little-endian i64, zero-padded when the input is short.
fn take_i64(data: &[u8]) -> (i64, &[u8]) {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    (i64::from_le_bytes(b), &data[n..])
}

// ---------------------------------------------------------------------------------------------------------
// Target `check`: the request path, through the Rust API and through the C ABI.

/// Two stores opened once per process (one per API: one database may be open only once per process).
pub struct CheckTarget {
    _dir: tempfile::TempDir,
    store: Store,
    abi: *mut ms_store,
    keys: Vec<String>,
    abi_keys: Vec<String>,
}

// The ABI handle is thread-safe (documented in `ms_auth.h`); libFuzzer keeps the fixture in a static.
unsafe impl Send for CheckTarget {}
unsafe impl Sync for CheckTarget {}

impl CheckTarget {
    pub fn new() -> CheckTarget {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, keys) = make_store(&dir.path().join("rust.db"));
        let abi_db = dir.path().join("abi.db");
        let (setup, abi_keys) = make_store(&abi_db);
        setup.close().expect("close");
        let path = CString::new(abi_db.to_str().expect("utf-8 temp path")).unwrap();
        let mut abi = std::ptr::null_mut();
        assert_eq!(unsafe { ms_store_open(path.as_ptr(), &mut abi) }, 0, "ms_store_open");
        CheckTarget { _dir: dir, store, abi, keys, abi_keys }
    }

    /// Input: byte 0 chooses the API (bit 0), how the key is made (bits 1..3) and which fixture key;
    /// bytes 1..9 are `now_ms`; the rest are key bytes (or whitespace and suffix around a known key).
    pub fn run(&self, data: &[u8]) {
        let Some((&mode, rest)) = data.split_first() else { return };
        let (raw_now, rest) = take_i64(rest);
        // Half the inputs keep now_ms within a few days of NOW, so quota periods and rate windows are hit.
        let now = if mode & 0x80 != 0 { NOW + raw_now % (7 * 86_400_000) } else { raw_now };
        let known = if mode & 1 == 0 { &self.keys } else { &self.abi_keys };
        let known = known[(mode as usize >> 4) % known.len()].as_bytes();
        let mut owned = Vec::new();
        let key: Option<&[u8]> = match (mode >> 1) & 3 {
            0 => Some(rest),
            1 => None,
            2 => Some(known),
            _ => {
                // A known key with arbitrary bytes around it: trimming and the checksum.
                let (pre, post) = rest.split_at(rest.len() / 2);
                owned.extend_from_slice(pre);
                owned.extend_from_slice(known);
                owned.extend_from_slice(post);
                Some(&owned)
            }
        };
        if mode & 1 == 0 {
            self.rust_check(key, now);
        } else {
            self.abi_check(key, now);
        }
    }

    fn rust_check(&self, key: Option<&[u8]>, now: i64) {
        match self.store.check(key, now) {
            Ok(checked) => {
                let status = checked.decision.status;
                assert!(status.is_decision(), "a check answered {status:?} as a decision");
                assert_eq!(checked.key.is_some(), status_has_key(status), "{status:?} with key {:?}", checked.key);
                if ms_auth::key::classify(key) == ms_auth::key::Presented::Missing {
                    assert_eq!(status, Status::ApiKeyMissing);
                }
            }
            // Only a time outside 1973..2200 is refused; this store's counters file is never damaged.
            Err(e) => assert_eq!(e.status, Status::ErrInvalidArgument, "check failed: {e}"),
        }
    }

    fn abi_check(&self, key: Option<&[u8]>, now: i64) {
        let mut out = std::mem::MaybeUninit::<ms_check_result>::zeroed();
        let (ptr, len) = match key {
            Some(k) => (k.as_ptr() as *const std::ffi::c_char, k.len()),
            None => (std::ptr::null(), 0),
        };
        let rc = unsafe { ms_store_check(self.abi, ptr, len, now, out.as_mut_ptr()) };
        let status = Status::from_code(rc).unwrap_or_else(|| panic!("ms_store_check returned {rc}"));
        if !status.is_decision() {
            assert_eq!(status, Status::ErrInvalidArgument, "ms_store_check failed");
            return;
        }
        let out = unsafe { out.assume_init() };
        assert_eq!(out.status, rc);
        assert_eq!(out.http_status, status.http());
        // The id and plan are NUL-terminated within their arrays.
        assert!(out.key_id.contains(&0) && out.plan.contains(&0));
        assert_eq!(out.key_id[0] != 0, status_has_key(status), "{status:?}");
    }
}

impl Drop for CheckTarget {
    fn drop(&mut self) {
        unsafe { ms_store_close(self.abi) };
    }
}

/// Decisions about a key that was found carry the key; the others (missing, invalid) do not.
fn status_has_key(status: Status) -> bool {
    !matches!(status, Status::ApiKeyMissing | Status::ApiKeyInvalid)
}

// ---------------------------------------------------------------------------------------------------------
// Target `json`: every JSON input of the ABI.

/// Input: byte 0 chooses the parser; the rest is the text (lossily UTF-8, as the ABI takes C strings).
/// A parser may refuse, but only with `MS_ERR_INVALID_ARGUMENT`, and what it accepts must be in range.
pub fn json(data: &[u8]) {
    let Some((&which, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    let text = text.split('\0').next().unwrap_or(""); // a C string ends at the first NUL
    let refused = |e: ms_auth::Error| assert_eq!(e.status, Status::ErrInvalidArgument, "{e}");
    match which % 7 {
        0 => match KeySpec::from_json(text) {
            Ok(spec) => {
                if let Some(q) = spec.quota {
                    assert!(q.limit >= 1, "{q:?}");
                }
                if let ms_auth::spec::Field::Set(r) = spec.rate_limit {
                    assert!(r.limit >= 1 && r.window_ms >= 1 && r.burst >= 1, "{r:?}");
                }
            }
            Err(e) => refused(e),
        },
        1 => KeyPatch::from_json(text).map(drop).unwrap_or_else(refused),
        2 => KeyFilter::from_json(text).map(drop).unwrap_or_else(refused),
        3 => match PlanSpec::from_json(text) {
            Ok(plan) => assert!(!plan.name.is_empty() && plan.name.len() <= 63, "{plan:?}"),
            Err(e) => refused(e),
        },
        4 => match PolicySpec::from_json(text) {
            Ok(p) => {
                assert!(p.idle_ms.is_none_or(|ms| ms >= 0), "{p:?}");
                assert!(p.abuse.is_none_or(|(l, w)| l >= 0 && w >= 0), "{p:?}");
            }
            Err(e) => refused(e),
        },
        5 => match StoreOptions::from_json(text) {
            Ok(o) => assert!(o.busy_timeout.as_millis() <= 600_000 && o.flush_interval.as_millis() <= 3_600_000),
            Err(e) => refused(e),
        },
        _ => match AuditFilter::from_json(text) {
            Ok(f) => assert!(f.limit.is_none_or(|n| n > 0), "{f:?}"),
            Err(e) => refused(e),
        },
    }
}

// ---------------------------------------------------------------------------------------------------------
// Target `counters`: a hostile `<db>-counters` file.

// Offsets in the counters header (`src/counters/layout.rs`, `#[repr(C)] struct Header`).
const MAGIC: u64 = u64::from_le_bytes(*b"MSAUTHC1");
const HEADER_LEN: usize = 4096;
const BLOCK_LEN: u64 = 384;
const OFF_VERSION: usize = 8;
const OFF_BOOT_ID: usize = 16;
const OFF_INDEX_SLOTS: usize = 64;
const OFF_MAX_CELLS: usize = 72;
const OFF_MAX_BLOCKS: usize = 80;
const OFF_INDEX_OFF: usize = 88;
const OFF_BLOCKS_OFF: usize = 96;
const OFF_FILE_LEN: usize = 104;
const OFF_CHECKSUM: usize = 112;
const OFF_INCARNATION: usize = 128;
const OFF_CELLS_USED: usize = 304;
const OFF_BLOCKS_USED: usize = 312;
/// A forged file is never larger than this (the fuzzer must not fill the disk).
const MAX_FORGED_LEN: u64 = 1 << 20;

fn get_u64(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().unwrap())
}

fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// The header checksum as `layout.rs` computes it (FNV-1a over the immutable fields, the incarnation and
/// the boot id):
/// anyone who can write the file can compute it, so the fuzzer must get past it too.
fn fix_checksum(buf: &mut [u8]) {
    let mut hash: u64 = 0xcbf29ce484222325;
    let fields = [0, OFF_VERSION, OFF_INDEX_SLOTS, OFF_MAX_CELLS, OFF_MAX_BLOCKS, OFF_INDEX_OFF, OFF_BLOCKS_OFF];
    let mut bytes: Vec<u8> = Vec::new();
    for at in fields {
        // layout_version is a u32, hashed as a u64.
        let v = if at == OFF_VERSION {
            u32::from_le_bytes(buf[at..at + 4].try_into().unwrap()) as u64
        } else {
            get_u64(buf, at)
        };
        bytes.extend(v.to_le_bytes());
    }
    bytes.extend(get_u64(buf, OFF_FILE_LEN).to_le_bytes());
    bytes.extend(get_u64(buf, OFF_INCARNATION).to_le_bytes());
    bytes.extend_from_slice(&buf[OFF_BOOT_ID..OFF_BOOT_ID + 48]);
    for b in bytes {
        hash = (hash ^ b as u64).wrapping_mul(0x100000001b3);
    }
    put_u64(buf, OFF_CHECKSUM, hash);
}

/// A valid database and its counters file, made once per process and kept in memory.
pub struct CountersTarget {
    db: Vec<u8>,
    counters: Vec<u8>,
    keys: Vec<String>,
}

impl CountersTarget {
    pub fn new() -> CountersTarget {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("keys.db");
        let (store, keys) = make_store(&db);
        store.close().expect("close");
        // Closing checkpoints the WAL: the database file alone is the whole store.
        let counters = std::fs::read(ms_auth::counters::path_for(&db)).expect("counters file");
        assert_eq!(get_u64(&counters, 0), MAGIC, "the header layout in fuzz/logic.rs is stale");
        let mut check = counters.clone();
        fix_checksum(&mut check);
        assert_eq!(check, counters, "the checksum in fuzz/logic.rs no longer matches layout.rs");
        ms_auth::counters::reseal_image(&mut check);
        assert_eq!(check, counters, "reseal_image no longer reproduces the content checksum");
        CountersTarget { db: std::fs::read(&db).expect("database"), counters, keys }
    }

    /// Input: byte 0 chooses how the file is made (low 2 bits) and which key is checked; the rest is
    /// - mode 0: the whole file, as is;
    /// - mode 1: patches on the valid file (`[u32 offset][u8 len][bytes]`...), checksums then recomputed
    ///   (the header's and the content's, as a hostile writer can);
    /// - mode 2: a forged header (geometry from the input, valid checksums, boot id and state), body from
    ///   the input;
    /// - mode 3: like 1 without recomputing the checksums (damage: the content checksum finds it).
    pub fn run(&self, data: &[u8]) {
        let Some((&mode, rest)) = data.split_first() else { return };
        let file = match mode & 3 {
            0 => rest.to_vec(),
            1 | 3 => {
                let mut file = self.counters.clone();
                patch(&mut file, rest);
                if mode & 3 == 1 {
                    fix_checksum(&mut file);
                    ms_auth::counters::reseal_image(&mut file);
                }
                file
            }
            _ => self.forged(rest),
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("keys.db");
        std::fs::write(&db, &self.db).expect("write database");
        std::fs::write(ms_auth::counters::path_for(&db), &file).expect("write counters");
        self.open_and_check(&db, (mode >> 2) as usize);
    }

    fn forged(&self, rest: &[u8]) -> Vec<u8> {
        let (index_slots, rest) = take_i64(rest);
        let (max_cells, rest) = take_i64(rest);
        let (max_blocks, rest) = take_i64(rest);
        let (blocks_off, rest) = take_i64(rest);
        let (file_len, rest) = take_i64(rest);
        let (cells_used, rest) = take_i64(rest);
        let (blocks_used, body) = take_i64(rest);
        let mut file = self.counters[..HEADER_LEN].to_vec();
        // Small values most of the time, so the geometry is often consistent and the body gets read.
        let small = |v: i64, max: u64| if v < 0 { v as u64 } else { v as u64 % max };
        put_u64(&mut file, OFF_INDEX_SLOTS, small(index_slots, 64));
        put_u64(&mut file, OFF_MAX_CELLS, small(max_cells, 32));
        put_u64(&mut file, OFF_MAX_BLOCKS, small(max_blocks, 64));
        put_u64(&mut file, OFF_INDEX_OFF, HEADER_LEN as u64);
        put_u64(&mut file, OFF_BLOCKS_OFF, small(blocks_off, 4096).wrapping_add(HEADER_LEN as u64));
        put_u64(&mut file, OFF_CELLS_USED, small(cells_used, 32));
        put_u64(&mut file, OFF_BLOCKS_USED, small(blocks_used, 64));
        // The length the geometry needs, unless the input asks for another (within the cap).
        let needed =
            get_u64(&file, OFF_BLOCKS_OFF).saturating_add(get_u64(&file, OFF_MAX_BLOCKS).saturating_mul(BLOCK_LEN));
        let len = if file_len <= 0 { needed } else { file_len as u64 % MAX_FORGED_LEN };
        let len = len.clamp(HEADER_LEN as u64, MAX_FORGED_LEN);
        put_u64(&mut file, OFF_FILE_LEN, len);
        fix_checksum(&mut file);
        // The body: the input repeated (so slots and blocks get arbitrary but structured content).
        let mut i = 0;
        while file.len() < len as usize {
            file.push(if body.is_empty() { 0 } else { body[i % body.len()] });
            i += 1;
        }
        ms_auth::counters::reseal_image(&mut file);
        file
    }

    fn open_and_check(&self, db: &Path, which: usize) {
        let store = match Store::open(db) {
            Ok(store) => store,
            // A file it cannot use is rebuilt; opening may only fail as a store error.
            Err(e) => return assert_eq!(e.status, Status::ErrStore, "open: {e}"),
        };
        let key = self.keys[which % self.keys.len()].as_bytes();
        for now in [NOW + 1, NOW + 2, NOW + 86_400_000] {
            match store.check(Some(key), now) {
                Ok(checked) => assert!(checked.decision.status.is_decision()),
                Err(e) => assert_eq!(e.status, Status::ErrStore, "check: {e}"),
            }
        }
        // An unknown key: a full probe of a (perhaps hostile) index.
        match store.check(Some(b"not-a-key-of-this-store"), NOW) {
            Ok(checked) => assert!(checked.decision.status.is_decision()),
            Err(e) => assert_eq!(e.status, Status::ErrStore, "check: {e}"),
        }
        if let Err(e) = store.close() {
            assert_eq!(e.status, Status::ErrStore, "close: {e}");
        }
    }
}

/// Applies `[u32 offset][u8 len][len bytes]`... to `file` (offsets wrap around its length).
fn patch(file: &mut [u8], mut ops: &[u8]) {
    while ops.len() >= 5 {
        let at = u32::from_le_bytes(ops[..4].try_into().unwrap()) as usize;
        let len = (ops[4] as usize).min(ops.len() - 5);
        // Most of the interest is in the header and the first slots and blocks: fold offsets there often.
        let at = if at & 0x8000_0000 != 0 { at % 8192 } else { at % file.len() };
        for (i, b) in ops[5..5 + len].iter().enumerate() {
            if let Some(slot) = file.get_mut(at + i) {
                *slot = *b;
            }
        }
        ops = &ops[5 + len..];
    }
}

// ---------------------------------------------------------------------------------------------------------
// Inputs as files, for the regression test.

// ---------------------------------------------------------------------------------------------------------
// Target `cli_values`: the CLI's value parsers (`ms_auth::cli_values`), on what a shell can pass (UTF-8).

/// Input: byte 0 chooses the parser; bytes 1..9 are `now_ms` (for `after`, `before`, `since`); the rest is
/// the text. Every parser must answer `Ok` or `ErrInvalidArgument`, and what it accepts must mean what it
/// says: a duration is never negative and reads back from its own spelling, a time reads back from its
/// RFC 3339 form, a quota or a rate has N ≥ 1.
pub fn cli_values(data: &[u8]) {
    use ms_auth::cli_values as cv;
    let Some((&which, rest)) = data.split_first() else { return };
    let (now, rest) = take_i64(rest);
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let refused = |e: ms_auth::Error| assert_eq!(e.status, Status::ErrInvalidArgument, "{text:?}: {e}");
    match which % 7 {
        0 => match cv::duration_ms(text) {
            Ok(ms) => {
                assert!(ms >= 0, "{text:?} -> {ms}");
                let unit = *text.as_bytes().last().unwrap() as char;
                let per = match unit {
                    'd' => 86_400_000,
                    'h' => 3_600_000,
                    'm' => 60_000,
                    's' => 1_000,
                    _ => panic!("{text:?} accepted with unit {unit:?}"),
                };
                assert_eq!(ms % per, 0, "{text:?}");
                assert_eq!(cv::duration_ms(&format!("{}{unit}", ms / per)).unwrap(), ms, "{text:?}");
            }
            Err(e) => refused(e),
        },
        1 => match cv::time_ms(text) {
            Ok(ms) => {
                // Whatever was accepted reads back from its own RFC 3339 spelling.
                if let Some(t) = chrono_from_ms(ms) {
                    assert_eq!(cv::time_ms(&t).unwrap(), ms, "{text:?} -> {t}");
                }
            }
            Err(e) => refused(e),
        },
        2 => match cv::quota(text) {
            Ok(q) => assert!(q.limit >= 1, "{text:?} -> {q:?}"),
            Err(e) => refused(e),
        },
        3 => match cv::rate(text) {
            Ok((n, window)) => assert!(n >= 1 && [1_000, 60_000, 3_600_000].contains(&window), "{text:?}"),
            Err(e) => refused(e),
        },
        4 => match cv::after(now, text) {
            Ok(t) => assert!(t >= now, "{text:?}"),
            Err(e) => refused(e),
        },
        5 => match cv::before(now, text) {
            Ok(t) => assert!(t <= now, "{text:?}"),
            Err(e) => refused(e),
        },
        _ => match cv::split_rate(text, "--abuse") {
            Ok((n, unit)) => {
                assert!(n >= 1, "{text:?}");
                assert_eq!(unit, unit.trim(), "{text:?}");
                if let Err(e) = cv::since(now, unit) {
                    refused(e);
                }
            }
            Err(e) => refused(e),
        },
    }
}

/// `ms` as RFC 3339 with milliseconds, or `None` outside the years 0..=9999 (RFC 3339 has four digits).
fn chrono_from_ms(ms: i64) -> Option<String> {
    use chrono::Datelike;
    let t = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)?;
    (0..=9999).contains(&t.year()).then(|| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// Every file under `fuzz/corpus/<target>` and `fuzz/regressions/<target>` (sorted, for stable output).
pub fn inputs(root: &Path, target: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for kind in ["corpus", "regressions"] {
        if let Ok(entries) = std::fs::read_dir(root.join(kind).join(target)) {
            files.extend(entries.flatten().map(|e| e.path()).filter(|p| p.is_file()));
        }
    }
    files.sort();
    files
}
