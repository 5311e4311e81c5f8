//! The process-wide store: `ms_open`, `ms_auth_check`, `ms_close`.

use super::*;

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
        store.check_with(key, now_ms, |decision, _| decision.status as i32)
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
