//! The C ABI v1 (`include/ms_auth.h`, generated from this file and its parts in `src/ffi/` by cbindgen).
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

use crate::counters::KeyView;
use crate::error::{Error, Result};
use crate::policy::Decision;
use crate::spec::{KeyFilter, KeyPatch, KeySpec};
use crate::status::Status;
use crate::store::Store;

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
// Each code above is its `Status` (whose discriminants are the same numbers, written in the core): checked at compile time.
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

/// An admin answer as the C ABI's JSON: the types' field order is the contract's.
fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("an admin answer always serializes")
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

// The functions, in parts along the ABI's seams. Each part is named by path because cbindgen reads this
// file as a crate root (it would look for `src/<part>.rs`), and the header lists the parts' functions in
// the order of these declarations: one per group, so that rustfmt keeps the order and the header stays.
#[path = "ffi/global.rs"]
mod global;

#[path = "ffi/handles.rs"]
mod handles;

#[path = "ffi/keys.rs"]
mod keys;

#[path = "ffi/admin.rs"]
mod admin;

#[path = "ffi/strings.rs"]
mod strings;

pub use admin::*;
pub use global::*;
pub use handles::*;
pub use keys::*;
pub use strings::*;

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
}
