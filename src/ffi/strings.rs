//! Strings: freeing the ones the library hands out, and describing a status (static, never freed).

use super::*;

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
