//! Explicit handles: opening and closing a store, and checking a key against it.

use super::*;

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
/// `{"flush_interval_ms": N, "durability": "batched" | "strict", "busy_timeout_ms": N, "create": B,
/// "lease_wait_ms": N}`, each optional.
/// `flush_interval_ms` (default 1000, 0..=3600000): counts reach the database at most this often (and
/// on close); they are in the shared counters file at once, so only a power loss can take that window.
/// `durability: "strict"` also writes every admitted check to the database in its own transaction
/// before answering (about 13 us a check instead of 0.2 us). `busy_timeout_ms` (default 5000): how long a
/// write waits for another process's write lock. `create` (default true, as `ms_store_open`): `false`
/// opens an existing store only; a path with no store (no file, an empty file, a SQLite database ms-auth
/// never initialised) is refused with `MS_ERR_STORE`, `ms_last_error()` naming the path, and
/// nothing is written (for tools that only read, where a mistyped path must not become an empty store).
/// `lease_wait_ms` (default 50, 0..=1000), fleet mode only: how long a check that finds this host out of
/// its lease of a key's quota, while the fleet's quota has room, may block waiting for the host's agent to
/// lease more (usually one Redis round trip, under 1 ms; only while the agent is running and reaching
/// Redis; at most once per key, host and period, plus once each time a lease runs out); 0 never blocks
/// (an event-loop server such as nginx may want that): such a check answers `MS_RATE_LIMIT_EXCEEDED`
/// with `retry_after_ms` of at most 1000 at once.
/// Ownership and other errors as `ms_store_open`.
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
/// `ms_auth_flush_failures_total`; the request is decided from the shared counters all the same. The one
/// wait: while another process puts a larger counters file in place (the keys outgrew it), checks wait
/// for it (one pass over the cells, at most the busy timeout) rather than decide on counts not yet final.
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
        store.check_with(key_arg(key, key_len)?, now_ms, |decision, key| {
            if let Some(out) = out.as_mut() {
                write_result(decision, key, out);
            }
            decision.status as i32
        })
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
        store.check_with(key_arg(key, key_len)?, now_ms, |decision, key| {
            let windows = key.map_or(crate::headers::Windows::default(), |k| crate::headers::Windows {
                quota: k.quota_period(),
                rate_window_ms: k.rate_window_ms(),
            });
            let built = crate::headers::build(decision, windows, now_ms);
            let text = built.as_str();
            write_c(fields, fields_len, text);
            if let Some(needed) = fields_needed.as_mut() {
                *needed = text.len();
            }
            if let Some(out) = out.as_mut() {
                write_result(decision, key, out);
            }
            decision.status as i32
        })
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

/// Fills the caller's result in place, field by field, with exactly the bytes it always had (the string
/// arrays zero past their text): no temporary of the whole struct copied over it.
fn write_result(d: &Decision, key: Option<KeyView>, r: &mut ms_check_result) {
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
    let (id, plan) = key.map_or(("", ""), |key| (key.id(), key.plan().unwrap_or("")));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_ids_and_plans_are_truncated_and_terminated() {
        let mut buf = [1 as c_char; 8];
        copy_c(&mut buf, "abcdefghijkl");
        assert_eq!(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap(), "abcdefg");
    }
}
