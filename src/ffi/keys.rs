//! Key administration, JSON in and JSON out: create, revoke, update, get, list (v1), then the audit
//! actor and rotation (added after v1; nothing of v1 changed).

use super::*;

/// Creates a key from a JSON spec (every field optional: `env`, `name`, `plan`, `expires_at_ms`, `quota`,
/// `rate_limit`, `meta`, `key` to import an existing key; see docs/c-abi.md) and writes the record with the
/// plaintext `"key"` (shown this once; only its SHA-256 digest is stored) to `*out_json`.
/// A rate limit must refill its whole bucket within ten years (`burst` × `window_ms` / `limit` at most
/// 315619200000 ms, `window_ms` at most 366 days): a larger one is refused with the largest burst that
/// fits, never stored inexactly. Times (`expires_at_ms`) are Unix ms from 1973 up to 2200.
/// Once any plan is defined (`ms_plan_put`), a `plan` that names none of them is refused with their names
/// unless the spec also says `"new_plan": true` (added after v1). `name`, `plan` and meta field names may
/// not hold control characters, bidirectional controls (U+202E...) or invisible characters.
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

/// Revokes a key as `ms_key_revoke` does, recording `reason` (what people read in the key's record and
/// the audit log, e.g. `"leaked in a public repository"`: at most 256 bytes, no control, bidirectional
/// or invisible characters) instead of "manual"; NULL records "manual". Revoking a revoked key keeps its
/// first reason. Returns `MS_OK`, `MS_ERR_NOT_FOUND`, `MS_ERR_INVALID_ARGUMENT` (an empty or refused
/// reason, named by `ms_last_error()`), `MS_ERR_STORE`. Added after v1.
#[no_mangle]
pub unsafe extern "C" fn ms_key_revoke_v2(
    store: *mut ms_store,
    key_id: *const c_char,
    reason: *const c_char,
    now_ms: i64,
) -> i32 {
    ffi_boundary(|| {
        let store = store_arg(store)?;
        let id = str_arg(key_id, "key_id")?;
        let reason = if reason.is_null() { None } else { Some(str_arg(reason, "reason")?) };
        if reason == Some("") {
            return Err(Error::invalid("reason is empty: pass NULL to record \"manual\""));
        }
        store.revoke_key(id, now_ms, reason)?;
        Ok(MS_OK)
    })
}

/// Changes a key: `patch_json` may set `name`, `plan`, `expires_at_ms`, `quota`, `rate_limit`, `meta`
/// (null clears a field: no plan, never expires, no quota, no rate limit), and `"new_plan": true` as in
/// `ms_key_create`'s spec. A revoked key stays revoked.
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

/// Writes the record of key `key_id` to `*out_json` on `MS_OK` (free with `ms_string_free`). Every record
/// (here and in every other answer) ends with the key's `"state"` as of the store's clock: "active",
/// "expiring" (within 7 days), "rotating" (with `"grace_ends_at_ms"`), "revoked" (with `"state_reason"`:
/// the recorded reason, or "rotated" / "idle" when a check already refuses it), "expired"; what a check
/// at that instant decides (see docs/c-abi.md).
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

/// Writes `{"keys": [record, ...], "next": null}` to `*out_json` on `MS_OK` (free with `ms_string_free`):
/// the keys in the order they were created, their states as of the store's clock.
/// `filter_json`: NULL for every key, or an object whose fields are each optional (null is absent):
/// `"plan"`, `"env"` ("live", "test"), `"expiring_before_ms"` (admitted keys that expire by then), and,
/// added after v1, `"state"`: one state's name or a list of them (keys in any of them: "active",
/// "expiring", "rotating", "revoked", "expired", "suspended"), `"limit"`: a page of at most that many keys
/// (1 to 1000; absent: every key), `"after"`: the `"next"` of the page before. `"next"` (added after v1)
/// is the cursor of the next page, null when no matching key follows. Pages are keyset pages: a key
/// created meanwhile comes on a later page, and none is listed twice. A key whose state changes between
/// pages is listed or not by its state when its page is read.
/// An unknown field, a bad state, limit or cursor (anything but a `"next"` passed back unchanged) is
/// `MS_ERR_INVALID_ARGUMENT`, named in `ms_last_error()`.
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
        let page = store.list_key_page(&filter)?;
        Ok(give_string(out_json, page.to_json()))
    })
}

// ---------------------------------------------------------------------------------------------------
// Key lifecycle and monitoring (added after v1; nothing above changed).

/// Names the actor that the audit log records for this handle's admin calls (default: the program,
/// its pid and uid). `actor`: NUL-terminated UTF-8, at most 200 bytes; copied. Control characters,
/// bidirectional controls (U+202E...) and invisible characters are `MS_ERR_INVALID_ARGUMENT`, as in
/// names and plans (see docs/c-abi.md).
#[no_mangle]
pub unsafe extern "C" fn ms_store_set_actor(store: *mut ms_store, actor: *const c_char) -> i32 {
    ffi_boundary(|| {
        let store = store_arg(store)?;
        store.set_actor(str_arg(actor, "actor")?)?;
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
