//! The C ABI v1 (`include/ms_auth.h`, generated from this file by cbindgen).
//!
//! Thin by design: each function checks its arguments, calls the Rust API, and converts the result.
//! Every function runs inside [`ffi_boundary`], so a panic becomes `MS_ERR_INTERNAL` instead of unwinding
//! into C; every `MS_ERR_*` leaves its explanation in `ms_last_error()`; out-parameters are written only
//! on success.
// The safety contract of every function is stated once, in the header: each pointer is NULL or valid for the call.
#![allow(non_camel_case_types, clippy::missing_safety_doc)]

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::error::{Error, Result};
use crate::spec::{list_json, KeyFilter, KeyPatch, KeySpec};
use crate::status::Status;
use crate::store::{Checked, Store};

/// Admitted: the request may proceed. HTTP 200, code "ok".
pub const MS_OK: i32 = 0;
/// No key: the key pointer was NULL, or the key was empty after trimming spaces and tabs. HTTP 401, "api_key_missing".
pub const MS_API_KEY_MISSING: i32 = 1;
/// Not a possible key (over 512 bytes, control or non-ASCII bytes, inner spaces, bad checksum) or no such key. HTTP 401, "api_key_invalid".
pub const MS_API_KEY_INVALID: i32 = 2;
/// The key's expiry instant has passed (`now_ms >= expires_at_ms`). HTTP 401, "api_key_expired".
pub const MS_API_KEY_EXPIRED: i32 = 3;
/// The key was revoked, manually or by policy. HTTP 401, "api_key_revoked".
pub const MS_API_KEY_REVOKED: i32 = 4;
/// The quota of the current UTC day or month is used up; `retry_after_ms` is the time to the period's end. HTTP 429, "api_key_quota_exceeded".
pub const MS_API_KEY_QUOTA_EXCEEDED: i32 = 5;
/// The rate limit bucket is empty; `retry_after_ms` is the time until one request is admitted. HTTP 429, "rate_limit_exceeded".
pub const MS_RATE_LIMIT_EXCEEDED: i32 = 6;
/// Library error: a NULL handle or out pointer, invalid UTF-8, malformed JSON, an out-of-range value (such as a time in seconds). HTTP 500, "invalid_argument".
pub const MS_ERR_INVALID_ARGUMENT: i32 = 100;
/// Library error: `ms_auth_check` before a successful `ms_open`. HTTP 503, "store_not_open".
pub const MS_ERR_NOT_OPEN: i32 = 101;
/// Library error: the file is missing, unreadable, not a store, from a newer version, read-only, full, or locked too long. HTTP 503, "store_unavailable".
pub const MS_ERR_STORE: i32 = 102;
/// Library error: an admin call named a key id that does not exist. HTTP 404, "not_found".
pub const MS_ERR_NOT_FOUND: i32 = 103;
/// Library error: a bug in ms-auth (a caught panic). HTTP 500, "internal_error".
pub const MS_ERR_INTERNAL: i32 = 104;
// Each code above is its `Status` (whose discriminants are these constants): checked at compile time.
const _: () = assert!(MS_OK == Status::Ok as i32);
const _: () = assert!(MS_API_KEY_MISSING == Status::ApiKeyMissing as i32);
const _: () = assert!(MS_API_KEY_INVALID == Status::ApiKeyInvalid as i32);
const _: () = assert!(MS_API_KEY_EXPIRED == Status::ApiKeyExpired as i32);
const _: () = assert!(MS_API_KEY_REVOKED == Status::ApiKeyRevoked as i32);
const _: () = assert!(MS_API_KEY_QUOTA_EXCEEDED == Status::ApiKeyQuotaExceeded as i32);
const _: () = assert!(MS_RATE_LIMIT_EXCEEDED == Status::RateLimitExceeded as i32);
const _: () = assert!(MS_ERR_INVALID_ARGUMENT == Status::ErrInvalidArgument as i32);
const _: () = assert!(MS_ERR_NOT_OPEN == Status::ErrNotOpen as i32);
const _: () = assert!(MS_ERR_STORE == Status::ErrStore as i32);
const _: () = assert!(MS_ERR_NOT_FOUND == Status::ErrNotFound as i32);
const _: () = assert!(MS_ERR_INTERNAL == Status::ErrInternal as i32);
/// The version of this C ABI; `ms_abi_version()` returns it.
pub const MS_ABI_VERSION: i32 = 1;
/// Bytes (with the NUL) that every `ms_store_check_http` fields text fits in.
pub const MS_HTTP_FIELDS_MAX: usize = 512;
const _: () = assert!(MS_HTTP_FIELDS_MAX == crate::headers::FIELDS_MAX);

/// An open store. Opaque: obtained from `ms_store_open`, released with `ms_store_close`.
/// A handle may be used by many threads at once.
pub struct ms_store {
    store: Store,
}

/// The full answer of `ms_store_check`. Fields in this order are part of the ABI v1.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ms_check_result {
    /// The decision: `MS_OK` or one of `MS_API_KEY_*` / `MS_RATE_LIMIT_EXCEEDED`.
    pub status: i32,
    /// The HTTP status to answer with: 200, 401 or 429.
    pub http_status: i32,
    /// Milliseconds to wait before retrying; > 0 only for 429s (send it as `Retry-After`, rounded up to seconds).
    pub retry_after_ms: i64,
    /// Requests allowed per quota period; -1: no quota (or no key matched).
    pub quota_limit: i64,
    /// Requests left in the current period after this one; -1: no quota.
    pub quota_remaining: i64,
    /// Unix ms at which the current quota period ends; 0: no quota.
    pub quota_reset_ms: i64,
    /// Requests per rate window; -1: no rate limit.
    pub rate_limit: i64,
    /// Requests that would be admitted right now, after this one; -1: no rate limit.
    pub rate_remaining: i64,
    /// Unix ms at which the rate bucket is full again; 0: no rate limit.
    pub rate_reset_ms: i64,
    /// NUL-terminated id of the matched key; "" when none matched.
    pub key_id: [c_char; 48],
    /// NUL-terminated plan label of the matched key; "" when none.
    pub plan: [c_char; 64],
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(e: &Error) {
    let text = format!("{}: {}", e.status.code(), e.message).replace('\0', " ");
    LAST_ERROR.with(|cell| *cell.borrow_mut() = CString::new(text).expect("NULs were replaced"));
}

/// Runs an ABI function body: converts its error into a status with `ms_last_error()` set, and a panic
/// into `MS_ERR_INTERNAL` (unwinding into C is undefined behaviour).
fn ffi_boundary(body: impl FnOnce() -> Result<i32>) -> i32 {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => {
            set_last_error(&e);
            e.status as i32
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            set_last_error(&Error::internal(format!("ms-auth bug, please report: {what}")));
            MS_ERR_INTERNAL
        }
    }
}

/// # Safety: `p` is NULL or a NUL-terminated string valid for the call.
unsafe fn str_arg<'a>(p: *const c_char, name: &str) -> Result<&'a str> {
    if p.is_null() {
        return Err(Error::invalid(format!("{name} is NULL")));
    }
    CStr::from_ptr(p).to_str().map_err(|_| Error::invalid(format!("{name} is not valid UTF-8")))
}

/// # Safety: `p` is NULL or a live handle from `ms_store_open`.
unsafe fn store_arg<'a>(p: *mut ms_store) -> Result<&'a Store> {
    p.as_ref().map(|h| &h.store).ok_or_else(|| Error::invalid("store is NULL"))
}

fn check_out<T>(p: *mut T, name: &str) -> Result<()> {
    if p.is_null() {
        Err(Error::invalid(format!("{name} is NULL")))
    } else {
        Ok(())
    }
}

/// # Safety: `out` was checked non-NULL and points to writable storage for a `char *`.
unsafe fn give_string(out: *mut *mut c_char, s: String) -> i32 {
    *out = CString::new(s).expect("JSON has no NUL byte").into_raw();
    MS_OK
}

// ---------------------------------------------------------------------------------------------------
// The process-wide store.

static GLOBAL: RwLock<Option<(PathBuf, Arc<Store>)>> = RwLock::new(None);

fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Opens (or creates) the process-wide store used by `ms_auth_check`.
///
/// `path`: NUL-terminated UTF-8 path of the SQLite file; a new file is created with mode 0600.
/// Opening the path that is already open is a no-op returning `MS_OK`; another path while one is open is
/// `MS_ERR_INVALID_ARGUMENT` (call `ms_close` first). Thread-safe, and usable across `fork()` like
/// `ms_store_open`'s handles.
/// Returns `MS_OK`, `MS_ERR_INVALID_ARGUMENT` (NULL or non-UTF-8 path) or `MS_ERR_STORE`.
#[no_mangle]
pub unsafe extern "C" fn ms_open(path: *const c_char) -> i32 {
    ffi_boundary(|| {
        let path = PathBuf::from(str_arg(path, "path")?);
        let mut global = GLOBAL.write();
        if let Some((open, _)) = global.as_ref() {
            if same_file(open, &path) {
                return Ok(MS_OK);
            }
            return Err(Error::invalid(format!(
                "{} is open; call ms_close before opening {}",
                open.display(),
                path.display()
            )));
        }
        let store = Store::open(&path)?;
        *global = Some((path, Arc::new(store)));
        Ok(MS_OK)
    })
}

/// Decides one request against the process-wide store opened by `ms_open`.
///
/// `key`: the NUL-terminated value of the X-API-Key header, or NULL when the request has none.
/// `now_ms`: Unix time in milliseconds, from 1973 up to (not including) 2200-01-01: a value below
/// 100000000000 is taken for seconds, one from 7258118400000 on for microseconds, and both are refused.
/// Returns the decision (0..6; `MS_OK` admits the request and counts it) or a library error:
/// `MS_ERR_NOT_OPEN` before `ms_open`, `MS_ERR_INVALID_ARGUMENT`, `MS_ERR_STORE`, `MS_ERR_INTERNAL`.
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn ms_auth_check(key: *const c_char, now_ms: i64) -> i32 {
    ffi_boundary(|| {
        let global = GLOBAL.read();
        let Some((_, store)) = global.as_ref() else {
            return Err(Error {
                status: Status::ErrNotOpen,
                message: "ms_auth_check was called before a successful ms_open".into(),
            });
        };
        let key = (!key.is_null()).then(|| CStr::from_ptr(key).to_bytes());
        Ok(store.check(key, now_ms)?.decision.status as i32)
    })
}

/// Closes the process-wide store, writing its counts to the file. A no-op when none is open.
/// Checks running in other threads finish first. If the final write fails, `ms_last_error()` says why.
#[no_mangle]
pub extern "C" fn ms_close() {
    ffi_boundary(|| {
        let taken = GLOBAL.write().take();
        if let Some((_, store)) = taken {
            match Arc::try_unwrap(store) {
                Ok(store) => store.close()?,
                Err(shared) => shared.flush()?,
            }
        }
        Ok(MS_OK)
    });
}

// ---------------------------------------------------------------------------------------------------
// Explicit handles.

/// Opens (or creates) a store and hands out a handle in `*out_store`.
///
/// `path`: NUL-terminated UTF-8 path; a new file is created with mode 0600, an older schema is migrated,
/// a file from a newer ms-auth is refused with `MS_ERR_STORE`. Beside it the store keeps `<path>-counters`,
/// the usage counters shared by every process that opens the same database (on a local filesystem), so
/// quotas and rate limits are exact across processes and admin changes apply on every process's next
/// check. The path is resolved first (symbolic links, `..`), so every name of one database shares one
/// counters file. Refused with `MS_ERR_STORE`, as SQLite documents them as ways to corrupt a database: a
/// database file with several hard links, and a database file that something else in this process
/// already holds open (another copy of SQLite, such as Python's `sqlite3` module: its locks and ours do
/// not see each other). The counters file is opened without following symbolic links; any process of the
/// same user can write it, so it is checked as it is read (a damaged file is rebuilt from the database),
/// but truncating it while in use can kill a process that touches it within the next 100 ms (SIGBUS).
/// `out_store` must not be NULL; it is written only on `MS_OK`. The handle is owned by the caller and
/// released with `ms_store_close`; it may be shared by threads, and it keeps working in the children of a
/// `fork()` (a master opens, workers check): each child opens its own database connection when it needs
/// one and never touches its parent's.
#[no_mangle]
pub unsafe extern "C" fn ms_store_open(path: *const c_char, out_store: *mut *mut ms_store) -> i32 {
    ms_store_open_v2(path, std::ptr::null(), out_store)
}

/// `ms_store_open` with options: `options_json` is NULL (all defaults) or
/// `{"flush_interval_ms": N, "durability": "batched" | "strict", "busy_timeout_ms": N}`, each optional.
/// `flush_interval_ms` (default 1000, 0..=3600000): counts reach the database at most this often (and
/// on close); they are in the shared counters file at once, so only a power loss can take that window.
/// `durability: "strict"` also writes every admitted check to the database in its own transaction
/// before answering (about 13 us a check instead of 0.2 us). `busy_timeout_ms` (default 5000): how long a
/// write waits for another process's write lock. Ownership and errors as `ms_store_open`.
#[no_mangle]
pub unsafe extern "C" fn ms_store_open_v2(
    path: *const c_char,
    options_json: *const c_char,
    out_store: *mut *mut ms_store,
) -> i32 {
    ffi_boundary(|| {
        let path = str_arg(path, "path")?;
        let options = match options_json.is_null() {
            true => crate::store::StoreOptions::default(),
            false => crate::store::StoreOptions::from_json(str_arg(options_json, "options_json")?)?,
        };
        check_out(out_store, "out_store")?;
        let store = Store::open_with(path, options)?;
        *out_store = Box::into_raw(Box::new(ms_store { store }));
        Ok(MS_OK)
    })
}

/// Writes the store's counts to the file and releases the handle. NULL is a no-op.
/// No other thread may use the handle during or after this call. If the final write fails,
/// `ms_last_error()` says why (the handle is released all the same).
#[no_mangle]
pub unsafe extern "C" fn ms_store_close(store: *mut ms_store) {
    ffi_boundary(|| {
        if !store.is_null() {
            Box::from_raw(store).store.close()?;
        }
        Ok(MS_OK)
    });
}

/// Decides one request and fills `*out` with the decision and its figures. A known key costs a SHA-256
/// and a few atomic operations on shared memory: no database query, no system call, no lock (except
/// when this process's turn to write counts to the database comes, at most once per flush interval).
/// A check never waits for SQLite: a turn that cannot have the database's write lock at once (another
/// process is writing) or fails to write is retried at the next turn, and counted in the metric
/// `ms_auth_flush_failures_total`; the request is decided from the shared counters all the same.
///
/// `key`: the header value, `key_len` bytes (need not be NUL-terminated; NULL means the header is absent).
/// `now_ms`: Unix ms, as for `ms_auth_check` (1973 up to 2200). `out`: may be NULL; written only when the
/// return value is a decision (0..6).
/// Returns the decision, or `MS_ERR_INVALID_ARGUMENT` (NULL store, time in seconds or microseconds),
/// `MS_ERR_STORE` (the counters file is damaged, or must be rebuilt while another process holds the
/// write lock; or, with strict durability, the count could not be written), `MS_ERR_INTERNAL`.
/// Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn ms_store_check(
    store: *mut ms_store,
    key: *const c_char,
    key_len: usize,
    now_ms: i64,
    out: *mut ms_check_result,
) -> i32 {
    ffi_boundary(|| {
        let store = store_arg(store)?;
        let checked = store.check(key_arg(key, key_len)?, now_ms)?;
        if let Some(out) = out.as_mut() {
            write_result(&checked, out);
        }
        Ok(checked.decision.status as i32)
    })
}

/// `ms_store_check`, which also writes the answer's rate-limit response fields: the one place every host
/// takes them from, so that one policy gives the same answer through every host.
///
/// The fields are lines `Name: value\r\n`, in this order and only when they apply:
/// `Retry-After: S` on 429s (`retry_after_ms` in whole seconds, rounded up); then, on admitted requests
/// and 429s of a key with a quota and/or a rate limit, the IETF draft-ietf-httpapi-ratelimit-headers
/// fields, one item per policy, quota first:
/// `RateLimit-Policy: "quota";q=LIMIT;w=WINDOW_S, "rate";q=LIMIT;w=WINDOW_S` and
/// `RateLimit: "quota";r=REMAINING;t=S, "rate";r=REMAINING;t=S`. `w` is the window in seconds: 86400 for
/// a daily quota, the current UTC month's length for a monthly one, the rate window (left out when that is
/// not a whole number of seconds). `t` is the seconds, rounded up, from `now_ms` to the item's reset
/// (`quota_reset_ms`, `rate_reset_ms`). 401s get no RateLimit fields; a 401 or an admitted request
/// without limits gets "" (length 0).
///
/// `store`, `key`, `key_len`, `now_ms`, `out` and the return value are as for `ms_store_check`; the
/// request is decided and counted once. `fields`: a buffer of `fields_len` bytes owned by the caller,
/// written like snprintf when the return value is a decision (0..6): at most `fields_len` bytes,
/// NUL-terminated; NULL is allowed when `fields_len` is 0. `MS_HTTP_FIELDS_MAX` bytes always suffice (the
/// request cannot be checked again for a larger buffer). `fields_needed`: may be NULL; when the return
/// value is a decision, receives the text's length without the NUL (it was cut short if this is at
/// least `fields_len`). Nothing is written on a library error. Thread-safe.
#[no_mangle]
pub unsafe extern "C" fn ms_store_check_http(
    store: *mut ms_store,
    key: *const c_char,
    key_len: usize,
    now_ms: i64,
    out: *mut ms_check_result,
    fields: *mut c_char,
    fields_len: usize,
    fields_needed: *mut usize,
) -> i32 {
    ffi_boundary(|| {
        let store = store_arg(store)?;
        if fields.is_null() && fields_len > 0 {
            return Err(Error::invalid("fields is NULL but fields_len is not 0"));
        }
        let checked = store.check(key_arg(key, key_len)?, now_ms)?;
        let windows = checked.key.map_or(crate::headers::Windows::default(), |k| crate::headers::Windows {
            quota: k.quota_period(),
            rate_window_ms: k.rate_window_ms(),
        });
        let built = crate::headers::build(&checked.decision, windows, now_ms);
        let text = built.as_str();
        write_c(fields, fields_len, text);
        if let Some(needed) = fields_needed.as_mut() {
            *needed = text.len();
        }
        if let Some(out) = out.as_mut() {
            write_result(&checked, out);
        }
        Ok(checked.decision.status as i32)
    })
}

/// The header value of a check: `key_len` bytes at `key` (not NUL-terminated), `None` when `key` is NULL.
/// # Safety: a non-NULL `key` is valid for `key_len` bytes.
unsafe fn key_arg<'a>(key: *const c_char, key_len: usize) -> Result<Option<&'a [u8]>> {
    if key_len > isize::MAX as usize {
        return Err(Error::invalid("key_len is larger than any object can be"));
    }
    Ok((!key.is_null()).then(|| std::slice::from_raw_parts(key as *const u8, key_len)))
}

/// Writes `text` to `buf` like snprintf: at most `buf_len` bytes, NUL-terminated; nothing when 0.
/// # Safety: `buf` is NULL only when `buf_len` is 0, else valid for `buf_len` bytes.
unsafe fn write_c(buf: *mut c_char, buf_len: usize, text: &str) {
    if !buf.is_null() && buf_len > 0 {
        let n = text.len().min(buf_len - 1);
        std::ptr::copy_nonoverlapping(text.as_ptr(), buf as *mut u8, n);
        *buf.add(n) = 0;
    }
}

/// Fills the caller's result in place, field by field, with exactly the bytes it always had (the string
/// arrays zero past their text): no temporary of the whole struct copied over it.
fn write_result(checked: &Checked, r: &mut ms_check_result) {
    let d = &checked.decision;
    r.status = d.status as i32;
    r.http_status = d.status.http();
    r.retry_after_ms = d.retry_after_ms;
    r.quota_limit = d.quota_limit;
    r.quota_remaining = d.quota_remaining;
    r.quota_reset_ms = d.quota_reset_ms;
    r.rate_limit = d.rate_limit;
    r.rate_remaining = d.rate_remaining;
    r.rate_reset_ms = d.rate_reset_ms;
    r.key_id = [0; 48];
    r.plan = [0; 64];
    let (id, plan) = checked.key.as_ref().map_or(("", ""), |key| (key.id(), key.plan().unwrap_or("")));
    copy_c(&mut r.key_id, id);
    copy_c(&mut r.plan, plan);
}

/// Copies `s` into a fixed C array, truncated to leave room for the NUL.
fn copy_c(dst: &mut [c_char], s: &str) {
    let n = s.len().min(dst.len() - 1);
    for (d, b) in dst.iter_mut().zip(&s.as_bytes()[..n]) {
        *d = *b as c_char;
    }
    dst[n] = 0;
}

// ---------------------------------------------------------------------------------------------------
// Administration: JSON in, JSON out.

/// Creates a key from a JSON spec (every field optional: `env`, `name`, `plan`, `expires_at_ms`, `quota`,
/// `rate_limit`, `meta`, `key` to import an existing key; see the README) and writes the record with the
/// plaintext `"key"` (shown this once; only its SHA-256 digest is stored) to `*out_json`.
/// A rate limit must refill its whole bucket within ten years (`burst` × `window_ms` / `limit` at most
/// 315619200000 ms, `window_ms` at most 366 days): a larger one is refused with the largest burst that
/// fits, never stored inexactly. Times (`expires_at_ms`) are Unix ms from 1973 up to 2200.
///
/// `spec_json`: NUL-terminated JSON object ("{}" for all defaults). `now_ms`: Unix ms of creation.
/// `*out_json` is written only on `MS_OK`; free it with `ms_string_free`.
/// Returns `MS_OK`, `MS_ERR_INVALID_ARGUMENT` (bad JSON or field, key already stored), `MS_ERR_STORE`.
#[no_mangle]
pub unsafe extern "C" fn ms_key_create(
    store: *mut ms_store,
    spec_json: *const c_char,
    now_ms: i64,
    out_json: *mut *mut c_char,
) -> i32 {
    ffi_boundary(|| {
        let store = store_arg(store)?;
        let spec = KeySpec::from_json(str_arg(spec_json, "spec_json")?)?;
        check_out(out_json, "out_json")?;
        let created = store.create_key(&spec, now_ms)?;
        Ok(give_string(out_json, created.to_json()))
    })
}

/// Revokes a key (reason "manual"); every handle refuses it from its next check on.
/// Revoking a revoked key changes nothing. Returns `MS_OK`, `MS_ERR_NOT_FOUND`, `MS_ERR_INVALID_ARGUMENT`,
/// `MS_ERR_STORE`.
#[no_mangle]
pub unsafe extern "C" fn ms_key_revoke(store: *mut ms_store, key_id: *const c_char, now_ms: i64) -> i32 {
    ffi_boundary(|| {
        let store = store_arg(store)?;
        store.revoke_key(str_arg(key_id, "key_id")?, now_ms, None)?;
        Ok(MS_OK)
    })
}

/// Changes a key: `patch_json` may set `name`, `plan`, `expires_at_ms`, `quota`, `rate_limit`, `meta`
/// (null clears a field: no plan, never expires, no quota, no rate limit). A revoked key stays revoked.
/// Writes the new record to `*out_json` on `MS_OK` (free with `ms_string_free`).
#[no_mangle]
pub unsafe extern "C" fn ms_key_update(
    store: *mut ms_store,
    key_id: *const c_char,
    patch_json: *const c_char,
    out_json: *mut *mut c_char,
) -> i32 {
    ffi_boundary(|| {
        let store = store_arg(store)?;
        let key_id = str_arg(key_id, "key_id")?;
        let patch = KeyPatch::from_json(str_arg(patch_json, "patch_json")?)?;
        check_out(out_json, "out_json")?;
        let record = store.update_key(key_id, &patch)?;
        Ok(give_string(out_json, record.to_json()))
    })
}

/// Writes the record of key `key_id` to `*out_json` on `MS_OK` (free with `ms_string_free`).
/// Returns `MS_OK`, `MS_ERR_NOT_FOUND`, `MS_ERR_INVALID_ARGUMENT`, `MS_ERR_STORE`.
#[no_mangle]
pub unsafe extern "C" fn ms_key_get(store: *mut ms_store, key_id: *const c_char, out_json: *mut *mut c_char) -> i32 {
    ffi_boundary(|| {
        let store = store_arg(store)?;
        let key_id = str_arg(key_id, "key_id")?;
        check_out(out_json, "out_json")?;
        let record = store.get_key(key_id)?;
        Ok(give_string(out_json, record.to_json()))
    })
}

/// Writes `{"keys": [record, ...]}` to `*out_json` on `MS_OK` (free with `ms_string_free`).
/// `filter_json`: NULL for every key, or `{"plan": "pro", "env": "live"}` (each field optional).
#[no_mangle]
pub unsafe extern "C" fn ms_key_list(
    store: *mut ms_store,
    filter_json: *const c_char,
    out_json: *mut *mut c_char,
) -> i32 {
    ffi_boundary(|| {
        let store = store_arg(store)?;
        let filter = match filter_json.is_null() {
            true => KeyFilter::default(),
            false => KeyFilter::from_json(str_arg(filter_json, "filter_json")?)?,
        };
        check_out(out_json, "out_json")?;
        let records = store.list_keys(&filter)?;
        Ok(give_string(out_json, list_json(&records)))
    })
}

// ---------------------------------------------------------------------------------------------------
// Key lifecycle and monitoring (added after v1; nothing above changed).

/// Names the actor that the audit log records for this handle's admin calls (default: the program,
/// its pid and uid). `actor`: NUL-terminated UTF-8, at most 200 bytes; copied.
#[no_mangle]
pub unsafe extern "C" fn ms_store_set_actor(store: *mut ms_store, actor: *const c_char) -> i32 {
    ffi_boundary(|| {
        let store = store_arg(store)?;
        let actor = str_arg(actor, "actor")?;
        if actor.len() > 200 {
            return Err(Error::invalid("actor is longer than 200 bytes"));
        }
        store.set_actor(actor);
        Ok(MS_OK)
    })
}

/// Rotates a key: creates a new key with the same policy, plan and meta that counts against the same
/// quota (the customer's quota is not reset), and schedules the old key's revocation (reason "rotated")
/// at `now_ms` + grace. `opts_json`: NULL or `{"grace_ms": N}` (default 86400000, 24 h; 0 ends it at
/// once). Writes the new key's create answer (record with the plaintext `"key"`, shown once; its
/// `"rotated_from"` names the old key, whose `"rotated_to"` names it) to `*out_json` on `MS_OK`.
/// A revoked or already rotated key is `MS_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub unsafe extern "C" fn ms_key_rotate(
    store: *mut ms_store,
    key_id: *const c_char,
    opts_json: *const c_char,
    now_ms: i64,
    out_json: *mut *mut c_char,
) -> i32 {
    ffi_boundary(|| {
        let store = store_arg(store)?;
        let key_id = str_arg(key_id, "key_id")?;
        let options = match opts_json.is_null() {
            true => crate::store::RotateOptions::default(),
            false => crate::store::RotateOptions::from_json(str_arg(opts_json, "opts_json")?)?,
        };
        check_out(out_json, "out_json")?;
        let created = store.rotate_key(key_id, options.grace_ms, now_ms)?;
        Ok(give_string(out_json, created.to_json()))
    })
}

/// Creates or replaces a plan: `{"name": "pro", "quota": {"limit": N, "period": "daily"|"monthly"} | null,
/// "rate_limit": {"limit": N, "window_ms": N, "burst": N} | null, "lifetime_ms": N | null}` (absent quota
/// or lifetime: none; absent rate limit: 60 per minute). Keys on the plan that set no quota or rate limit
/// of their own follow it from their next check; `lifetime_ms` sets the expiry of keys created on it
/// without one. Writes the plan (with `"updated_at_ms"` and `"keys"`, the number of keys on it) on `MS_OK`.
#[no_mangle]
pub unsafe extern "C" fn ms_plan_put(
    store: *mut ms_store,
    plan_json: *const c_char,
    now_ms: i64,
    out_json: *mut *mut c_char,
) -> i32 {
    ffi_boundary(|| {
        let store = store_arg(store)?;
        let plan = crate::store::PlanSpec::from_json(str_arg(plan_json, "plan_json")?)?;
        check_out(out_json, "out_json")?;
        let written = store.put_plan(&plan, now_ms)?;
        Ok(give_string(out_json, written.to_string()))
    })
}

/// Writes `{"plans": [plan, ...]}` to `*out_json` on `MS_OK`.
#[no_mangle]
pub unsafe extern "C" fn ms_plan_list(store: *mut ms_store, out_json: *mut *mut c_char) -> i32 {
    ffi_boundary(|| {
        let store = store_arg(store)?;
        check_out(out_json, "out_json")?;
        let plans = store.list_plans()?;
        Ok(give_string(out_json, serde_json::json!({ "plans": plans }).to_string()))
    })
}

/// Sets store-wide revocation policies: `{"idle": {"days": N} | null, "abuse": {"limit": X, "window_ms": Y}
/// | null}` (absent: unchanged; null: off). `idle` revokes keys unused for N days (reason "idle"); `abuse`
/// revokes a key refused by its rate limit more than X times within a window of Y ms (reason "abuse").
/// Rotated keys are always revoked when their grace ends (reason "rotated"). Every check enforces them,
/// in every process, from its next check on; no thread is started. Writes the policies now in force
/// (as `ms_policy_get`) on `MS_OK`.
#[no_mangle]
pub unsafe extern "C" fn ms_policy_put(
    store: *mut ms_store,
    policy_json: *const c_char,
    now_ms: i64,
    out_json: *mut *mut c_char,
) -> i32 {
    ffi_boundary(|| {
        let store = store_arg(store)?;
        let change = crate::store::PolicySpec::from_json(str_arg(policy_json, "policy_json")?)?;
        check_out(out_json, "out_json")?;
        let now = store.set_policies(&change, now_ms)?;
        Ok(give_string(out_json, now.to_string()))
    })
}

/// Writes the policies in force, `{"idle": {"days": N} | null, "abuse": {...} | null, "rotated": "always"}`.
#[no_mangle]
pub unsafe extern "C" fn ms_policy_get(store: *mut ms_store, out_json: *mut *mut c_char) -> i32 {
    ffi_boundary(|| {
        let store = store_arg(store)?;
        check_out(out_json, "out_json")?;
        let policies = store.policies()?;
        Ok(give_string(out_json, policies.to_string()))
    })
}

/// Writes the audit log, oldest first: `{"events": [{"seq", "at_ms", "actor", "action", "key_id",
/// "detail"}, ...]}`. Actions: key.create, key.update, key.revoke, key.revoke.policy, key.rotate, plan.put,
/// policy.set. In a fleet, the log holds every member's changes and each event also has `"host"`, the
/// host where it was made. `filter_json`: NULL or `{"key_id": "...", "since_ms": N, "limit": N}` (default: the last 1000).
#[no_mangle]
pub unsafe extern "C" fn ms_audit(store: *mut ms_store, filter_json: *const c_char, out_json: *mut *mut c_char) -> i32 {
    ffi_boundary(|| {
        let store = store_arg(store)?;
        let filter = match filter_json.is_null() {
            true => crate::store::AuditFilter::default(),
            false => crate::store::AuditFilter::from_json(str_arg(filter_json, "filter_json")?)?,
        };
        check_out(out_json, "out_json")?;
        let events = store.audit_events(&filter)?;
        Ok(give_string(out_json, serde_json::json!({ "events": events }).to_string()))
    })
}

/// Writes a key's decisions per UTC day from `from_ms` to `to_ms`: `{"key_id", "last_used_at_ms",
/// "days": [{"date": "2026-11-26", "start_ms", "admitted", "rejected": {"api_key_expired",
/// "api_key_revoked", "api_key_quota_exceeded", "rate_limit_exceeded"}}, ...]}`, every day in the range
/// included. Counts of every process are included (pending counts are written first); in a fleet, the
/// other hosts' counts too, as their agents last published them (about once a second).
#[no_mangle]
pub unsafe extern "C" fn ms_usage(
    store: *mut ms_store,
    key_id: *const c_char,
    from_ms: i64,
    to_ms: i64,
    out_json: *mut *mut c_char,
) -> i32 {
    ffi_boundary(|| {
        let store = store_arg(store)?;
        let key_id = str_arg(key_id, "key_id")?;
        check_out(out_json, "out_json")?;
        let history = store.usage(key_id, from_ms, to_ms)?;
        Ok(give_string(out_json, serde_json::to_string(&history).expect("history serializes")))
    })
}

/// Writes Prometheus text exposition (version 0.0.4) to `*out_text` on `MS_OK`, for a host to serve on
/// its own /metrics: `ms_auth_checks_total{status}` (decisions about known keys, every process),
/// `ms_auth_unmatched_checks_total{status}` (missing and invalid, this process), `ms_auth_keys{state}`,
/// `ms_auth_quota_used{plan}` and `ms_auth_quota_limit{plan}`; in a fleet also
/// `ms_auth_fleet_checks_total{host,status}` for every member host (sum over `host` for the fleet's
/// totals). Free it with `ms_string_free`.
#[no_mangle]
pub unsafe extern "C" fn ms_metrics_text(store: *mut ms_store, out_text: *mut *mut c_char) -> i32 {
    ffi_boundary(|| {
        let store = store_arg(store)?;
        check_out(out_text, "out_text")?;
        let text = store.metrics_text(crate::store::clock_ms())?;
        Ok(give_string(out_text, text))
    })
}

/// Frees a string returned by this library. NULL is a no-op; freeing twice is undefined behaviour.
#[no_mangle]
pub unsafe extern "C" fn ms_string_free(s: *mut c_char) {
    if !s.is_null() {
        // Wiped before it goes back to the allocator: a create or rotate answer holds a plaintext key,
        // which must not linger in freed heap for a core dump to keep (CString's drop clears one byte).
        let mut bytes = CString::from_raw(s).into_bytes_with_nul();
        for b in bytes.iter_mut() {
            std::ptr::write_volatile(b, 0);
        }
        drop(bytes);
    }
}

// ---------------------------------------------------------------------------------------------------
// Describing a status: static strings, never freed.

fn static_c(s: &'static str) -> *const c_char {
    s.as_ptr() as *const c_char
}

/// The code string of a status, e.g. "api_key_missing"; "unknown" for values not listed. Static.
#[no_mangle]
pub extern "C" fn ms_status_code(status: i32) -> *const c_char {
    static_c(Status::from_code(status).map_or("unknown\0", Status::code_nul))
}

/// The message of a status, e.g. "API key is missing."; "Unknown status." for values not listed. Static.
#[no_mangle]
pub extern "C" fn ms_status_message(status: i32) -> *const c_char {
    static_c(Status::from_code(status).map_or("Unknown status.\0", Status::message_nul))
}

/// The HTTP status of a status: 200, 401, 429, or for library errors 500/503/404; 500 for unknown values.
#[no_mangle]
pub extern "C" fn ms_status_http(status: i32) -> i32 {
    Status::from_code(status).map_or(500, Status::http)
}

/// Writes the documented JSON body of `status`, e.g.
/// `{"success":false,"error":{"code":"api_key_missing","message":"API key is missing.","httpStatus":401}}`
/// (`MS_OK` gives `{"success":true}`). Works like snprintf: returns the length the body needs (without the
/// NUL), writes at most `buf_len` bytes including a terminating NUL. `buf` may be NULL when `buf_len` is 0.
#[no_mangle]
pub unsafe extern "C" fn ms_error_json(status: i32, buf: *mut c_char, buf_len: usize) -> usize {
    let body = match Status::from_code(status) {
        Some(s) => s.error_json(),
        None => format!(
            r#"{{"success":false,"error":{{"code":"unknown","message":"Unknown status.","httpStatus":500,"status":{status}}}}}"#
        ),
    };
    write_c(buf, buf_len, &body);
    body.len()
}

/// The explanation of this thread's last `MS_ERR_*` ("" if none), as "code: detail". The string belongs
/// to the library and stays valid until this thread's next failing call; copy it to keep it.
#[no_mangle]
pub extern "C" fn ms_last_error() -> *const c_char {
    LAST_ERROR.with(|cell| cell.borrow().as_ptr())
}

/// The library version "MAJOR.MINOR.PATCH", the same as Cargo.toml's. Static.
#[no_mangle]
pub extern "C" fn ms_version() -> *const c_char {
    static_c(concat!(env!("CARGO_PKG_VERSION"), "\0"))
}

/// The C ABI version, `MS_ABI_VERSION` (1): bindings check it when they load the library.
#[no_mangle]
pub extern "C" fn ms_abi_version() -> i32 {
    MS_ABI_VERSION
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_internal_error_with_its_message() {
        let rc = ffi_boundary(|| panic!("boom at the boundary"));
        assert_eq!(rc, MS_ERR_INTERNAL);
        let explained = unsafe { CStr::from_ptr(ms_last_error()) }.to_str().unwrap().to_string();
        assert!(explained.starts_with("internal_error: ") && explained.contains("boom at the boundary"), "{explained}");
    }

    #[test]
    fn long_ids_and_plans_are_truncated_and_terminated() {
        let mut buf = [1 as c_char; 8];
        copy_c(&mut buf, "abcdefghijkl");
        assert_eq!(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap(), "abcdefg");
    }
}
