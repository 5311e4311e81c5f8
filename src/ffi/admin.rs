//! Plans, store-wide policies, the audit log, usage and metrics (added after v1).

use super::*;

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
        Ok(give_string(out_json, to_json(&written)))
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
        Ok(give_string(out_json, to_json(&now)))
    })
}

/// Writes the policies in force, `{"idle": {"days": N} | null, "abuse": {...} | null, "rotated": "always"}`.
#[no_mangle]
pub unsafe extern "C" fn ms_policy_get(store: *mut ms_store, out_json: *mut *mut c_char) -> i32 {
    ffi_boundary(|| {
        let store = store_arg(store)?;
        check_out(out_json, "out_json")?;
        let policies = store.policies()?;
        Ok(give_string(out_json, to_json(&policies)))
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
/// `ms_auth_fleet_checks_total{host,host_id,status}` for every member host (its name and its id: two
/// hosts may share a name; sum over the hosts for the fleet's totals). Free it with `ms_string_free`.
#[no_mangle]
pub unsafe extern "C" fn ms_metrics_text(store: *mut ms_store, out_text: *mut *mut c_char) -> i32 {
    ffi_boundary(|| {
        let store = store_arg(store)?;
        check_out(out_text, "out_text")?;
        let text = store.metrics_text(crate::store::clock_ms())?;
        Ok(give_string(out_text, text))
    })
}
