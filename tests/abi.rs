//! The C ABI called as C would call it: argument checks, ownership, static strings, error reporting.

use std::ffi::{c_char, CStr, CString};
use std::ptr::{null, null_mut};

use ms_auth::ffi::*;

const NOW: i64 = 1_800_000_000_000;

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn last_error() -> String {
    unsafe { CStr::from_ptr(ms_last_error()) }.to_str().unwrap().to_string()
}

fn take(s: *mut c_char) -> serde_json::Value {
    assert!(!s.is_null());
    let v = serde_json::from_str(unsafe { CStr::from_ptr(s) }.to_str().unwrap()).unwrap();
    unsafe { ms_string_free(s) };
    v
}

/// A handle and the directory that holds its file (kept alive as long as the handle).
struct Handle(*mut ms_store, tempfile::TempDir);

fn open() -> Handle {
    let dir = tempfile::tempdir().unwrap();
    let path = c(dir.path().join("keys.db").to_str().unwrap());
    let mut store = null_mut();
    assert_eq!(unsafe { ms_store_open(path.as_ptr(), &mut store) }, MS_OK);
    Handle(store, dir)
}

impl Drop for Handle {
    fn drop(&mut self) {
        unsafe { ms_store_close(self.0) };
    }
}

fn create(h: &Handle, spec: &str) -> (String, String) {
    let mut out = null_mut();
    assert_eq!(unsafe { ms_key_create(h.0, c(spec).as_ptr(), NOW, &mut out) }, MS_OK, "{}", last_error());
    let v = take(out);
    (v["key"].as_str().unwrap().to_string(), v["id"].as_str().unwrap().to_string())
}

fn check(h: &Handle, key: &[u8], now: i64) -> (i32, ms_check_result) {
    let mut r: ms_check_result = unsafe { std::mem::zeroed() };
    let rc = unsafe { ms_store_check(h.0, key.as_ptr() as *const c_char, key.len(), now, &mut r) };
    (rc, r)
}

fn cstr(bytes: &[c_char]) -> String {
    unsafe { CStr::from_ptr(bytes.as_ptr()) }.to_str().unwrap().to_string()
}

#[test]
fn check_result_carries_every_figure() {
    let h = open();
    let (key, id) = create(
        &h,
        r#"{"plan": "pro", "quota": {"limit": 10, "period": "daily"}, "rate_limit": {"limit": 5, "window_ms": 1000}}"#,
    );
    let (rc, r) = check(&h, key.as_bytes(), NOW);
    assert_eq!((rc, r.status, r.http_status, r.retry_after_ms), (MS_OK, MS_OK, 200, 0));
    assert_eq!((r.quota_limit, r.quota_remaining), (10, 9));
    assert_eq!(r.quota_reset_ms, (NOW / 86_400_000 + 1) * 86_400_000);
    assert_eq!((r.rate_limit, r.rate_remaining, r.rate_reset_ms), (5, 4, NOW + 200));
    assert_eq!((cstr(&r.key_id), cstr(&r.plan)), (id, "pro".to_string()));

    for _ in 0..4 {
        check(&h, key.as_bytes(), NOW);
    }
    let (rc, r) = check(&h, key.as_bytes(), NOW);
    assert_eq!((rc, r.http_status, r.retry_after_ms, r.rate_remaining), (MS_RATE_LIMIT_EXCEEDED, 429, 200, 0));
    assert_eq!(r.quota_remaining, 5, "a refused request takes no quota");

    let (rc, r) = check(&h, b"not-a-key-at-all", NOW);
    assert_eq!((rc, r.http_status, r.quota_limit, r.rate_limit), (MS_API_KEY_INVALID, 401, -1, -1));
    assert_eq!((cstr(&r.key_id), cstr(&r.plan)), (String::new(), String::new()));

    // The key is taken with its length: no NUL needed, and bytes past key_len are not read.
    let mut padded = key.clone().into_bytes();
    padded.extend_from_slice(b"garbage");
    assert_eq!(check(&h, &padded[..key.len()], NOW + 1000).0, MS_OK);
    assert_eq!(check(&h, &padded, NOW + 1000).0, MS_API_KEY_INVALID);
    // An embedded NUL is a control character, not the end of the key.
    assert_eq!(check(&h, format!("{key}\0").as_bytes(), NOW).0, MS_API_KEY_INVALID);
    // NULL key: missing, whatever the length; out may be NULL.
    assert_eq!(unsafe { ms_store_check(h.0, null(), 99, NOW, null_mut()) }, MS_API_KEY_MISSING);
}

#[test]
fn every_pointer_is_checked() {
    let h = open();
    let mut out: *mut c_char = null_mut();
    let mut store: *mut ms_store = null_mut();
    let out_p: *mut *mut c_char = &mut out;
    let store_p: *mut *mut ms_store = &mut store;
    let spec = c("{}");
    let path = c("/tmp/x.db");
    let id = c("k");
    // Each case runs on its own so that ms_last_error() is read right after it.
    type Call<'a> = Box<dyn Fn() -> i32 + 'a>;
    let cases: Vec<(&str, Call)> = vec![
        ("path is NULL", Box::new(|| unsafe { ms_store_open(null(), store_p) })),
        ("out_store is NULL", Box::new(|| unsafe { ms_store_open(path.as_ptr(), null_mut()) })),
        ("store is NULL", Box::new(|| unsafe { ms_store_check(null_mut(), null(), 0, NOW, null_mut()) })),
        ("store is NULL", Box::new(|| unsafe { ms_key_create(null_mut(), spec.as_ptr(), NOW, out_p) })),
        ("spec_json is NULL", Box::new(|| unsafe { ms_key_create(h.0, null(), NOW, out_p) })),
        ("out_json is NULL", Box::new(|| unsafe { ms_key_create(h.0, spec.as_ptr(), NOW, null_mut()) })),
        ("not valid JSON", Box::new(|| unsafe { ms_key_create(h.0, c("{").as_ptr(), NOW, out_p) })),
        ("quota must be", Box::new(|| unsafe { ms_key_create(h.0, c(r#"{"quota": 5}"#).as_ptr(), NOW, out_p) })),
        ("key_id is NULL", Box::new(|| unsafe { ms_key_revoke(h.0, null(), NOW) })),
        ("patch_json is NULL", Box::new(|| unsafe { ms_key_update(h.0, id.as_ptr(), null(), out_p) })),
        ("out_json is NULL", Box::new(|| unsafe { ms_key_get(h.0, id.as_ptr(), null_mut()) })),
        ("must be a JSON object", Box::new(|| unsafe { ms_key_list(h.0, c("[]").as_ptr(), out_p) })),
        ("store is NULL", Box::new(|| unsafe { ms_key_list(null_mut(), null(), out_p) })),
        ("not seconds", Box::new(|| unsafe { ms_store_check(h.0, null(), 0, 1_700_000_000, null_mut()) })),
        ("not seconds", Box::new(|| unsafe { ms_key_revoke(h.0, id.as_ptr(), 1_700_000_000) })),
    ];
    for (expected, call) in &cases {
        assert_eq!(call(), MS_ERR_INVALID_ARGUMENT, "{expected}");
        let explained = last_error();
        assert!(explained.starts_with("invalid_argument: ") && explained.contains(expected), "{expected}: {explained}");
    }
    drop(cases);
    assert!(out.is_null(), "outputs are written only on success");
    assert!(store.is_null());

    // Each failure explains itself.
    let bad_utf8 = [0xffu8 as c_char, 0];
    assert_eq!(unsafe { ms_key_get(h.0, bad_utf8.as_ptr(), &mut out) }, MS_ERR_INVALID_ARGUMENT);
    assert!(last_error().contains("key_id is not valid UTF-8"), "{}", last_error());
    assert_eq!(unsafe { ms_key_get(h.0, c("key_missing").as_ptr(), &mut out) }, MS_ERR_NOT_FOUND);
    assert!(last_error().contains("key_missing"), "{}", last_error());
    assert_eq!(
        unsafe { ms_key_update(h.0, c("k").as_ptr(), c(r#"{"revoked_at_ms": null}"#).as_ptr(), &mut out,) },
        MS_ERR_INVALID_ARGUMENT
    );
    assert!(last_error().contains("un-revoked"), "{}", last_error());
    unsafe {
        ms_store_close(null_mut());
        ms_string_free(null_mut());
    }
}

#[test]
fn admin_calls_answer_the_documented_json() {
    let h = open();
    let (key, id) = create(&h, r#"{"name": "billing", "plan": "pro", "meta": {"a": 1}}"#);
    assert!(key.starts_with("ms_live_"));
    let mut out = null_mut();
    assert_eq!(unsafe { ms_key_get(h.0, c(&id).as_ptr(), &mut out) }, MS_OK);
    let record = take(out);
    let fields: Vec<&str> = record.as_object().unwrap().keys().map(String::as_str).collect();
    // The contract's fields, in its order; later versions only add fields after them.
    assert_eq!(
        fields[..13],
        [
            "id",
            "prefix",
            "env",
            "name",
            "plan",
            "created_at_ms",
            "expires_at_ms",
            "revoked_at_ms",
            "revoked_reason",
            "quota",
            "rate_limit",
            "usage",
            "meta"
        ]
    );
    assert_eq!(
        record["usage"],
        serde_json::json!({"period_start_ms": 0, "used": 0, "total": 0, "last_used_at_ms": null})
    );
    assert!(record.get("key").is_none(), "the plaintext is shown only at creation");

    assert_eq!(unsafe { ms_key_update(h.0, c(&id).as_ptr(), c(r#"{"plan": "free"}"#).as_ptr(), &mut out,) }, MS_OK);
    assert_eq!(take(out)["plan"], "free");
    assert_eq!(unsafe { ms_key_list(h.0, c(r#"{"plan": "free"}"#).as_ptr(), &mut out) }, MS_OK);
    assert_eq!(take(out)["keys"][0]["id"], id.as_str());
    assert_eq!(unsafe { ms_key_list(h.0, null(), &mut out) }, MS_OK);
    assert_eq!(take(out)["keys"].as_array().unwrap().len(), 1);
    assert_eq!(unsafe { ms_key_revoke(h.0, c(&id).as_ptr(), NOW) }, MS_OK);
    assert_eq!(check(&h, key.as_bytes(), NOW).0, MS_API_KEY_REVOKED);
    assert_eq!(unsafe { ms_key_get(h.0, c(&id).as_ptr(), &mut out) }, MS_OK);
    assert_eq!(take(out)["revoked_reason"], "manual");
}

#[test]
fn status_strings_and_bodies() {
    let table = [
        (MS_OK, 200, "ok", "OK."),
        (MS_API_KEY_MISSING, 401, "api_key_missing", "API key is missing."),
        (MS_API_KEY_INVALID, 401, "api_key_invalid", "API key is invalid."),
        (MS_API_KEY_EXPIRED, 401, "api_key_expired", "API key has expired."),
        (MS_API_KEY_REVOKED, 401, "api_key_revoked", "API key has been revoked."),
        (MS_API_KEY_QUOTA_EXCEEDED, 429, "api_key_quota_exceeded", "API key quota has been exceeded."),
        (MS_RATE_LIMIT_EXCEEDED, 429, "rate_limit_exceeded", "Too many requests. Please try again later."),
        (MS_ERR_INVALID_ARGUMENT, 500, "invalid_argument", "Invalid argument."),
        (MS_ERR_NOT_OPEN, 503, "store_not_open", "Authentication store is not open."),
        (MS_ERR_STORE, 503, "store_unavailable", "Authentication store is unavailable."),
        (MS_ERR_NOT_FOUND, 404, "not_found", "Not found."),
        (MS_ERR_INTERNAL, 500, "internal_error", "Internal error."),
        (7, 500, "unknown", "Unknown status."),
        (-1, 500, "unknown", "Unknown status."),
    ];
    for (status, http, code, message) in table {
        assert_eq!(ms_status_http(status), http);
        assert_eq!(unsafe { CStr::from_ptr(ms_status_code(status)) }.to_str().unwrap(), code);
        assert_eq!(unsafe { CStr::from_ptr(ms_status_message(status)) }.to_str().unwrap(), message);
    }
    let expected =
        r#"{"success":false,"error":{"code":"api_key_missing","message":"API key is missing.","httpStatus":401}}"#;
    let needed = unsafe { ms_error_json(MS_API_KEY_MISSING, null_mut(), 0) };
    assert_eq!(needed, expected.len());
    let mut buf = vec![b'#' as c_char; 200];
    assert_eq!(unsafe { ms_error_json(MS_API_KEY_MISSING, buf.as_mut_ptr(), buf.len()) }, expected.len());
    assert_eq!(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_str().unwrap(), expected);
    // Too small: truncated and still terminated, never written past buf_len.
    let mut small = [b'#' as c_char; 12];
    assert_eq!(unsafe { ms_error_json(MS_API_KEY_MISSING, small.as_mut_ptr(), 10) }, expected.len());
    assert_eq!(unsafe { CStr::from_ptr(small.as_ptr()) }.to_str().unwrap(), &expected[..9]);
    assert_eq!(small[10..], [b'#' as c_char; 2]);

    assert_eq!(unsafe { CStr::from_ptr(ms_version()) }.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
    assert_eq!(ms_abi_version(), MS_ABI_VERSION);
}

#[test]
fn the_process_wide_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = c(dir.path().join("global.db").to_str().unwrap());
    let other = c(dir.path().join("other.db").to_str().unwrap());
    unsafe {
        assert_eq!(ms_auth_check(c("anything-at-all").as_ptr(), NOW), MS_ERR_NOT_OPEN);
        assert!(last_error().contains("before a successful ms_open"), "{}", last_error());
        assert_eq!(ms_open(null()), MS_ERR_INVALID_ARGUMENT);
        assert_eq!(ms_open(path.as_ptr()), MS_OK);
        assert_eq!(ms_open(path.as_ptr()), MS_OK, "the same path again is a no-op");
        assert_eq!(ms_open(other.as_ptr()), MS_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains("ms_close"), "{}", last_error());

        let mut admin = null_mut();
        assert_eq!(ms_store_open(path.as_ptr(), &mut admin), MS_OK);
        let mut out = null_mut();
        assert_eq!(
            ms_key_create(admin, c(r#"{"quota": {"limit": 1, "period": "monthly"}}"#).as_ptr(), NOW, &mut out),
            MS_OK
        );
        let key = c(take(out)["key"].as_str().unwrap());

        assert_eq!(ms_auth_check(null(), NOW), MS_API_KEY_MISSING);
        assert_eq!(ms_auth_check(c("").as_ptr(), NOW), MS_API_KEY_MISSING);
        assert_eq!(ms_auth_check(key.as_ptr(), NOW), MS_OK);
        assert_eq!(ms_auth_check(key.as_ptr(), NOW), MS_API_KEY_QUOTA_EXCEEDED);
        ms_close();
        ms_close();
        assert_eq!(ms_auth_check(key.as_ptr(), NOW), MS_ERR_NOT_OPEN);
        assert_eq!(ms_open(other.as_ptr()), MS_OK, "another path after ms_close");
        ms_close();
        ms_store_close(admin);
    }
}

#[test]
fn store_errors_explain_themselves() {
    let mut store = null_mut();
    let rc = unsafe { ms_store_open(c("/nonexistent-dir/keys.db").as_ptr(), &mut store) };
    assert_eq!(rc, MS_ERR_STORE);
    assert!(store.is_null());
    assert!(
        last_error().starts_with("store_unavailable: cannot open store /nonexistent-dir/keys.db"),
        "{}",
        last_error()
    );
}

/// The plan and policy answers are typed values serialized by the ffi layer; their bytes (field order
/// included) are the contract's and must not move.
#[test]
fn plan_and_policy_answers_keep_their_exact_json() {
    let h = open();
    let mut out = null_mut();
    let text = |s: *mut c_char| {
        let t = unsafe { CStr::from_ptr(s) }.to_str().unwrap().to_string();
        unsafe { ms_string_free(s) };
        t
    };
    unsafe {
        let plan = c(r#"{"name": "pro", "quota": {"limit": 3, "period": "daily"}, "lifetime_ms": 86400000}"#);
        assert_eq!(ms_plan_put(h.0, plan.as_ptr(), NOW, &mut out), MS_OK);
        let pro = format!(
            r#"{{"name":"pro","quota":{{"limit":3,"period":"daily"}},"rate_limit":{{"limit":60,"window_ms":60000,"burst":60}},"lifetime_ms":86400000,"updated_at_ms":{NOW},"keys":0}}"#
        );
        assert_eq!(text(out), pro);
        assert_eq!(ms_plan_put(h.0, c(r#"{"name": "free", "rate_limit": null}"#).as_ptr(), NOW, &mut out), MS_OK);
        let free = format!(
            r#"{{"name":"free","quota":null,"rate_limit":null,"lifetime_ms":null,"updated_at_ms":{NOW},"keys":0}}"#
        );
        assert_eq!(text(out), free);
        assert_eq!(ms_plan_list(h.0, &mut out), MS_OK);
        assert_eq!(text(out), format!(r#"{{"plans":[{free},{pro}]}}"#));

        assert_eq!(ms_policy_get(h.0, &mut out), MS_OK);
        assert_eq!(text(out), r#"{"idle":null,"abuse":null,"rotated":"always"}"#);
        let policy = c(r#"{"idle": {"days": 7}, "abuse": {"limit": 3, "window_ms": 60000}}"#);
        assert_eq!(ms_policy_put(h.0, policy.as_ptr(), NOW, &mut out), MS_OK);
        assert_eq!(text(out), r#"{"idle":{"days":7},"abuse":{"limit":3,"window_ms":60000},"rotated":"always"}"#);
    }
}

#[test]
fn lifecycle_functions_through_the_abi() {
    let h = open();
    let mut out = null_mut();
    unsafe {
        assert_eq!(ms_store_set_actor(h.0, c("nginx-worker-3").as_ptr()), MS_OK);
        assert_eq!(ms_store_set_actor(h.0, null()), MS_ERR_INVALID_ARGUMENT);
        assert_eq!(
            ms_plan_put(h.0, c(r#"{"name": "pro", "quota": {"limit": 3, "period": "daily"}}"#).as_ptr(), NOW, &mut out),
            MS_OK
        );
        let plan = take(out);
        assert_eq!(
            (plan["name"].as_str(), plan["quota"]["limit"].as_i64(), plan["keys"].as_i64()),
            (Some("pro"), Some(3), Some(0))
        );
        assert_eq!(ms_plan_put(h.0, c(r#"{"name": ""}"#).as_ptr(), NOW, &mut out), MS_ERR_INVALID_ARGUMENT);
        assert_eq!(ms_plan_list(h.0, &mut out), MS_OK);
        assert_eq!(take(out)["plans"][0]["name"], "pro");

        let (key, id) = create(&h, r#"{"plan": "pro"}"#);
        assert_eq!(check(&h, key.as_bytes(), NOW).1.quota_limit, 3, "the plan's quota");
        assert_eq!(ms_key_rotate(h.0, c(&id).as_ptr(), c(r#"{"grace_ms": 1000}"#).as_ptr(), NOW, &mut out), MS_OK);
        let rotated = take(out);
        let new_key = rotated["key"].as_str().unwrap().to_string();
        assert_eq!(rotated["rotated_from"], id.as_str());
        assert_eq!(check(&h, new_key.as_bytes(), NOW).1.quota_remaining, 1, "one quota for both keys");
        assert_eq!(check(&h, key.as_bytes(), NOW + 1000).0, MS_API_KEY_REVOKED, "grace over");
        assert_eq!(ms_key_rotate(h.0, c(&id).as_ptr(), null(), NOW, &mut out), MS_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains("already rotated"), "{}", last_error());
        assert_eq!(
            ms_key_rotate(h.0, c(&id).as_ptr(), c(r#"{"grace": 1}"#).as_ptr(), NOW, &mut out),
            MS_ERR_INVALID_ARGUMENT
        );

        assert_eq!(ms_policy_put(h.0, c(r#"{"idle": {"days": 7}}"#).as_ptr(), NOW, &mut out), MS_OK);
        assert_eq!(take(out)["idle"]["days"], 7);
        assert_eq!(ms_policy_get(h.0, &mut out), MS_OK);
        assert_eq!(take(out)["rotated"], "always");
        assert_eq!(ms_policy_put(h.0, c(r#"{"idle": 7}"#).as_ptr(), NOW, &mut out), MS_ERR_INVALID_ARGUMENT);

        assert_eq!(ms_audit(h.0, c(&format!(r#"{{"key_id": "{id}"}}"#)).as_ptr(), &mut out), MS_OK);
        let events = take(out);
        assert_eq!(events["events"][0]["action"], "key.create");
        assert_eq!(events["events"][0]["actor"], "nginx-worker-3");
        assert_eq!(ms_audit(h.0, null(), &mut out), MS_OK);
        let all = take(out);
        let actions: Vec<&str> =
            all["events"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
        assert_eq!(actions, ["plan.put", "key.create", "key.rotate", "policy.set"]);

        assert_eq!(ms_usage(h.0, c(&id).as_ptr(), NOW, NOW, &mut out), MS_OK);
        let usage = take(out);
        assert_eq!(usage["days"][0]["admitted"], 2, "both keys' admissions");
        assert_eq!(usage["days"][0]["rejected"]["api_key_revoked"], 1);
        assert_eq!(ms_usage(h.0, c(&id).as_ptr(), NOW, NOW - 1, &mut out), MS_ERR_INVALID_ARGUMENT);
        assert_eq!(ms_usage(h.0, c("key_nope").as_ptr(), NOW, NOW, &mut out), MS_ERR_NOT_FOUND);

        assert_eq!(ms_metrics_text(h.0, &mut out), MS_OK);
        let text = CStr::from_ptr(out).to_str().unwrap().to_string();
        ms_string_free(out);
        assert!(text.contains("# TYPE ms_auth_keys gauge"), "{text}");
        assert_eq!(ms_metrics_text(h.0, null_mut()), MS_ERR_INVALID_ARGUMENT);
    }
}

#[test]
fn open_v2_takes_durability_and_flush_options() {
    let dir = tempfile::tempdir().unwrap();
    let path = c(dir.path().join("keys.db").to_str().unwrap());
    let mut store = null_mut();
    unsafe {
        for bad in [r#"{"durability": "sometimes"}"#, r#"{"flush_interval_ms": -1}"#, r#"{"flush": 1}"#, "[]"] {
            assert_eq!(ms_store_open_v2(path.as_ptr(), c(bad).as_ptr(), &mut store), MS_ERR_INVALID_ARGUMENT, "{bad}");
            assert!(store.is_null());
        }
        let opts = c(r#"{"durability": "strict", "flush_interval_ms": 60000, "busy_timeout_ms": 100}"#);
        assert_eq!(ms_store_open_v2(path.as_ptr(), opts.as_ptr(), &mut store), MS_OK, "{}", last_error());
        let h = Handle(store, dir);
        let (key, id) = create(&h, r#"{"quota": {"limit": 5, "period": "daily"}}"#);
        assert_eq!(check(&h, key.as_bytes(), NOW).0, MS_OK);
        // Strict: the count is in the database before the check returns, whatever the flush interval.
        let conn = rusqlite::Connection::open(h.1.path().join("keys.db")).unwrap();
        let used: i64 = conn
            .query_row("SELECT u.used FROM usage u JOIN keys k ON k.row = u.key_row WHERE k.id = ?1", [&id], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(used, 1);
        let mut plain = null_mut();
        assert_eq!(ms_store_open_v2(path.as_ptr(), null(), &mut plain), MS_OK);
        ms_store_close(plain);
    }
}

#[test]
fn open_v2_with_create_false_opens_only_an_existing_store() {
    let dir = tempfile::tempdir().unwrap();
    let at = |name: &str| dir.path().join(name);
    let must_exist = c(r#"{"create": false}"#);
    let open_existing = |name: &str| {
        let mut store = null_mut();
        let rc = unsafe { ms_store_open_v2(c(at(name).to_str().unwrap()).as_ptr(), must_exist.as_ptr(), &mut store) };
        (rc, store)
    };
    let files = || {
        let mut names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    };

    // No file, an empty file, a database ms-auth never initialised: refused, naming the path, and left as
    // they were (no store, no counters file).
    let (rc, store) = open_existing("typo.db");
    assert_eq!((rc, store.is_null()), (MS_ERR_STORE, true));
    let why = last_error();
    assert!(why.contains(at("typo.db").to_str().unwrap()) && why.contains("no store"), "{why}");
    std::fs::write(at("empty.db"), b"").unwrap();
    assert_eq!(open_existing("empty.db").0, MS_ERR_STORE);
    assert!(last_error().contains("empty"), "{}", last_error());
    let foreign = rusqlite::Connection::open(at("other.db")).unwrap();
    foreign.execute_batch("CREATE TABLE t (x)").unwrap();
    drop(foreign);
    assert_eq!(open_existing("other.db").0, MS_ERR_STORE);
    assert!(last_error().contains("not an ms-auth store"), "{}", last_error());
    let foreign = rusqlite::Connection::open(at("other.db")).unwrap();
    let mode: String = foreign.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "delete", "nothing was written to it");
    assert_eq!(files(), ["empty.db", "other.db"]);
    assert_eq!(std::fs::metadata(at("empty.db")).unwrap().len(), 0);

    // A store: opened as ever.
    let path = c(at("keys.db").to_str().unwrap());
    let mut created = null_mut();
    unsafe {
        assert_eq!(ms_store_open(path.as_ptr(), &mut created), MS_OK, "a plain open creates the store, as in v1");
        let h = Handle(created, tempfile::tempdir().unwrap());
        let (_, id) = create(&h, "{}");
        drop(h);
        let (rc, store) = open_existing("keys.db");
        assert_eq!(rc, MS_OK, "{}", last_error());
        let mut out = null_mut();
        assert_eq!(ms_key_get(store, c(&id).as_ptr(), &mut out), MS_OK);
        assert_eq!(take(out)["id"], id.as_str());
        ms_store_close(store);
        let mut also = null_mut();
        let creating = c(r#"{"create": true}"#);
        assert_eq!(ms_store_open_v2(c(at("new.db").to_str().unwrap()).as_ptr(), creating.as_ptr(), &mut also), MS_OK);
        ms_store_close(also);
        for bad in [r#"{"create": 0}"#, r#"{"create": null}"#, r#"{"create": "no"}"#] {
            let mut store = null_mut();
            assert_eq!(ms_store_open_v2(path.as_ptr(), c(bad).as_ptr(), &mut store), MS_ERR_INVALID_ARGUMENT, "{bad}");
            assert_eq!(last_error(), "invalid_argument: create must be true or false");
        }
    }
}

fn check_http(h: &Handle, key: Option<&[u8]>, now: i64, buf: &mut [c_char]) -> (i32, ms_check_result, usize) {
    let mut r: ms_check_result = unsafe { std::mem::zeroed() };
    let mut needed = usize::MAX;
    let (k, n) = key.map_or((null(), 0), |k| (k.as_ptr() as *const c_char, k.len()));
    let rc = unsafe { ms_store_check_http(h.0, k, n, now, &mut r, buf.as_mut_ptr(), buf.len(), &mut needed) };
    (rc, r, needed)
}

#[test]
fn check_http_writes_the_answers_fields_like_snprintf() {
    let h = open();
    // NOW is 2027-01-15T08:00:00Z: 57600 s to the day's end.
    let (key, _) =
        create(&h, r#"{"quota": {"limit": 2, "period": "daily"}, "rate_limit": {"limit": 5, "window_ms": 60000}}"#);
    let mut buf = [1 as c_char; MS_HTTP_FIELDS_MAX];
    let (rc, r, needed) = check_http(&h, Some(key.as_bytes()), NOW, &mut buf);
    assert_eq!((rc, r.status, r.quota_remaining, r.rate_remaining), (MS_OK, MS_OK, 1, 4));
    let want = "RateLimit-Policy: \"quota\";q=2;w=86400, \"rate\";q=5;w=60\r\n\
                RateLimit: \"quota\";r=1;t=57600, \"rate\";r=4;t=12\r\n";
    assert_eq!((cstr(&buf), needed), (want.to_string(), want.len()));

    // Too small a buffer: cut and terminated, the length it needed returned; the check counted once.
    let mut small = [1 as c_char; 12];
    let (rc, r, needed) = check_http(&h, Some(key.as_bytes()), NOW, &mut small);
    assert_eq!((rc, r.quota_remaining), (MS_OK, 0));
    assert_eq!(cstr(&small), "RateLimit-P");
    assert!(needed > 12);

    // A quota refusal: Retry-After first.
    let (rc, _, needed) = check_http(&h, Some(key.as_bytes()), NOW, &mut buf);
    assert_eq!(rc, MS_API_KEY_QUOTA_EXCEEDED);
    let text = cstr(&buf);
    assert!(text.starts_with("Retry-After: 57600\r\nRateLimit-Policy: \"quota\";q=2;w=86400,"), "{text}");
    assert_eq!(needed, text.len());

    // No buffer at all: only the length.
    let mut needed = usize::MAX;
    let rc = unsafe { ms_store_check_http(h.0, null(), 0, NOW, null_mut(), null_mut(), 0, &mut needed) };
    assert_eq!((rc, needed), (MS_API_KEY_MISSING, 0));
    // A 401 has no fields: "".
    let (rc, _, needed) = check_http(&h, Some(b"ms_live_nope"), NOW, &mut buf);
    assert_eq!((rc, cstr(&buf), needed), (MS_API_KEY_INVALID, String::new(), 0));
}

#[test]
fn check_http_checks_its_pointers_and_writes_nothing_on_a_failure() {
    let h = open();
    let mut buf = [b'x' as c_char; 8];
    let mut needed = 7usize;
    let rc = unsafe { ms_store_check_http(h.0, null(), 0, NOW, null_mut(), null_mut(), 8, &mut needed) };
    assert_eq!(rc, MS_ERR_INVALID_ARGUMENT);
    assert!(last_error().contains("fields"), "{}", last_error());
    let rc = unsafe { ms_store_check_http(null_mut(), null(), 0, NOW, null_mut(), buf.as_mut_ptr(), 8, &mut needed) };
    assert_eq!(rc, MS_ERR_INVALID_ARGUMENT);
    // A time in seconds is refused: buffer and length untouched.
    let rc = unsafe { ms_store_check_http(h.0, null(), 0, NOW / 1000, null_mut(), buf.as_mut_ptr(), 8, &mut needed) };
    assert_eq!((rc, buf[0], needed), (MS_ERR_INVALID_ARGUMENT, b'x' as c_char, 7));
}

#[test]
fn check_http_gives_a_monthly_quota_its_months_length() {
    let h = open();
    let (key, _) = create(&h, r#"{"quota": {"limit": 10000, "period": "monthly"}, "rate_limit": null}"#);
    let mut buf = [0 as c_char; MS_HTTP_FIELDS_MAX];
    let (rc, _, _) = check_http(&h, Some(key.as_bytes()), NOW, &mut buf);
    assert_eq!(rc, MS_OK);
    // January: 31 days; 16 days and 16 hours left to 2027-02-01.
    assert_eq!(
        cstr(&buf),
        "RateLimit-Policy: \"quota\";q=10000;w=2678400\r\nRateLimit: \"quota\";r=9999;t=1440000\r\n"
    );
}

/// Issue 21, item 3: every key record the ABI answers carries its state, worked out by the one function
/// every view uses; a rotated key past its grace is revoked (rotated) before any flush records it.
#[test]
fn key_answers_carry_the_computed_state() {
    let h = open();
    // States are of the present: this test runs on the wall clock.
    let now = ms_auth::store::clock_ms();
    let mut out = null_mut();
    let record = |id: &str| {
        let mut out = null_mut();
        assert_eq!(unsafe { ms_key_get(h.0, c(id).as_ptr(), &mut out) }, MS_OK);
        take(out)
    };
    let listed = |id: &str| {
        let mut out = null_mut();
        assert_eq!(unsafe { ms_key_list(h.0, null(), &mut out) }, MS_OK);
        take(out)["keys"].as_array().unwrap().iter().find(|k| k["id"] == id).unwrap().clone()
    };
    let state = |r: &serde_json::Value| {
        (r["state"].as_str().map(str::to_string), r["state_reason"].clone(), r["grace_ends_at_ms"].clone())
    };
    let mut spec_create = |spec: &str, at: i64| {
        assert_eq!(unsafe { ms_key_create(h.0, c(spec).as_ptr(), at, &mut out) }, MS_OK, "{}", last_error());
        take(out)["id"].as_str().unwrap().to_string()
    };
    let past = spec_create("{}", now - 60_000);
    let rotating = spec_create("{}", now - 60_000);
    let soon = spec_create(&format!(r#"{{"expires_at_ms": {}}}"#, now + 86_400_000), now);
    let gone = spec_create(&format!(r#"{{"expires_at_ms": {}}}"#, now - 1), now - 60_000);
    let mut out = null_mut();
    unsafe {
        let grace = c(r#"{"grace_ms": 1000}"#);
        assert_eq!(ms_key_rotate(h.0, c(&past).as_ptr(), grace.as_ptr(), now - 10_000, &mut out), MS_OK);
        let successor = take(out);
        assert_eq!(successor["state"], "active", "a create or rotate answer carries the state too");
        assert_eq!(ms_key_rotate(h.0, c(&rotating).as_ptr(), null(), now, &mut out), MS_OK);
        take(out);
    }
    let none = serde_json::Value::Null;
    for r in [record(&past), listed(&past)] {
        assert_eq!(state(&r), (Some("revoked".into()), "rotated".into(), none.clone()), "{r}");
        assert_eq!(r["revoked_at_ms"], none, "not recorded yet: the state says what a check decides");
    }
    let day = serde_json::Value::from(now + 86_400_000);
    for r in [record(&rotating), listed(&rotating)] {
        assert_eq!(state(&r), (Some("rotating".into()), none.clone(), day.clone()), "{r}");
    }
    assert_eq!(state(&record(&soon)), (Some("expiring".into()), none.clone(), none.clone()));
    assert_eq!(state(&record(&gone)), (Some("expired".into()), none.clone(), none.clone()));
    assert_eq!(unsafe { ms_key_revoke(h.0, c(&soon).as_ptr(), now) }, MS_OK);
    assert_eq!(state(&listed(&soon)), (Some("revoked".into()), "manual".into(), none.clone()));
}

/// Issue 21, item 6: once plans are defined, a key spec or patch naming none of them is refused with
/// the plans' names, unless `"new_plan": true` asks for a new label.
#[test]
fn an_unknown_plan_is_refused_once_plans_are_defined() {
    let h = open();
    let (_, early) = create(&h, r#"{"plan": "beta"}"#); // no plan defined: any label
    let mut out = null_mut();
    unsafe {
        for name in ["pro", "free"] {
            let plan = c(&format!(r#"{{"name": "{name}", "quota": {{"limit": 5, "period": "daily"}}}}"#));
            assert_eq!(ms_plan_put(h.0, plan.as_ptr(), NOW, &mut out), MS_OK);
            take(out);
        }
        assert_eq!(ms_key_create(h.0, c(r#"{"plan": "prp"}"#).as_ptr(), NOW, &mut out), MS_ERR_INVALID_ARGUMENT);
        let e = last_error();
        assert!(e.contains("\"prp\"") && e.contains("free, pro") && e.contains("new_plan"), "{e}");
        let patch = c(r#"{"plan": "prp"}"#);
        assert_eq!(ms_key_update(h.0, c(&early).as_ptr(), patch.as_ptr(), &mut out), MS_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains("free, pro"), "{}", last_error());
        let bad = c(r#"{"plan": "prp", "new_plan": "yes"}"#);
        assert_eq!(ms_key_create(h.0, bad.as_ptr(), NOW, &mut out), MS_ERR_INVALID_ARGUMENT);
        assert!(last_error().contains("new_plan must be true or false"), "{}", last_error());
    }
    let (_, id) = create(&h, r#"{"plan": "prp", "new_plan": true}"#);
    unsafe {
        assert_eq!(ms_key_update(h.0, c(&id).as_ptr(), c(r#"{"plan": "pro"}"#).as_ptr(), &mut out), MS_OK);
        assert_eq!(take(out)["quota"]["limit"], 5);
        let patch = c(r#"{"plan": "gold", "new_plan": true}"#);
        assert_eq!(ms_key_update(h.0, c(&id).as_ptr(), patch.as_ptr(), &mut out), MS_OK);
        assert_eq!(take(out)["plan"], "gold");
        assert_eq!(ms_key_list(h.0, null(), &mut out), MS_OK);
        assert_eq!(take(out)["keys"].as_array().unwrap().len(), 2, "nothing created by the refusals");
    }
}

/// Issue 21, item 9: bidirectional controls and invisible characters are refused in names, plans, meta
/// field names, plan names and actors, with the field and the code point.
#[test]
fn bidi_controls_are_refused_naming_the_field_and_code_point() {
    let h = open();
    let (_, id) = create(&h, r#"{"name": "acme"}"#);
    let mut out = null_mut();
    let refused = |rc: i32, field: &str, code_point: &str| {
        assert_eq!(rc, MS_ERR_INVALID_ARGUMENT, "{field}");
        let e = last_error();
        assert!(e.contains(&format!(": {field} contains U+{code_point} (")), "{e}");
    };
    unsafe {
        for (json, field, cp) in [
            (r#"{"name": "invoice\u202efdp.exe"}"#, "name", "202E"),
            (r#"{"plan": "pro\u2066"}"#, "plan", "2066"),
            (r#"{"name": "ac\u200bme"}"#, "name", "200B"),
            (r#"{"meta": {"team": {"a\u200fb": 1}}}"#, "a meta field name", "200F"),
        ] {
            refused(ms_key_create(h.0, c(json).as_ptr(), NOW, &mut out), field, cp);
            refused(ms_key_update(h.0, c(&id).as_ptr(), c(json).as_ptr(), &mut out), field, cp);
        }
        refused(ms_plan_put(h.0, c(r#"{"name": "pro\u061c"}"#).as_ptr(), NOW, &mut out), "plan.name", "061C");
        refused(ms_store_set_actor(h.0, c("ops:\u{202E}nimda").as_ptr()), "actor", "202E");
        assert_eq!(ms_store_set_actor(h.0, c("ops:مدير").as_ptr()), MS_OK, "other scripts are names like any");
        assert_eq!(ms_key_list(h.0, null(), &mut out), MS_OK);
        let keys = take(out);
        assert_eq!((keys["keys"].as_array().unwrap().len(), keys["keys"][0]["name"].as_str()), (1, Some("acme")));
    }
}

#[test]
fn revoke_v2_records_the_reason_people_read() {
    let h = open();
    let (key, id) = create(&h, "{}");
    let mut out = null_mut();
    let reason = c("leaked in a public repository");
    assert_eq!(unsafe { ms_key_revoke_v2(h.0, c(&id).as_ptr(), reason.as_ptr(), NOW) }, MS_OK);
    assert_eq!(check(&h, key.as_bytes(), NOW).0, MS_API_KEY_REVOKED);
    assert_eq!(unsafe { ms_key_get(h.0, c(&id).as_ptr(), &mut out) }, MS_OK);
    let record = take(out);
    assert_eq!(
        (&record["revoked_reason"], &record["state_reason"]),
        (&reason.to_str().unwrap().into(), &record["revoked_reason"])
    );
    // Revoking again keeps the first reason.
    assert_eq!(unsafe { ms_key_revoke_v2(h.0, c(&id).as_ptr(), c("another").as_ptr(), NOW + 1) }, MS_OK);
    assert_eq!(unsafe { ms_key_get(h.0, c(&id).as_ptr(), &mut out) }, MS_OK);
    assert_eq!(take(out)["revoked_reason"], "leaked in a public repository");
    // NULL records "manual", like ms_key_revoke; an empty or spoofing reason is refused, naming why.
    let (_, other) = create(&h, "{}");
    assert_eq!(unsafe { ms_key_revoke_v2(h.0, c(&other).as_ptr(), c("").as_ptr(), NOW) }, MS_ERR_INVALID_ARGUMENT);
    assert!(last_error().contains("reason is empty"), "{}", last_error());
    assert_eq!(
        unsafe { ms_key_revoke_v2(h.0, c(&other).as_ptr(), c("evil\u{202E}txt").as_ptr(), NOW) },
        MS_ERR_INVALID_ARGUMENT
    );
    assert!(last_error().contains("U+202E"), "{}", last_error());
    assert_eq!(unsafe { ms_key_get(h.0, c(&other).as_ptr(), &mut out) }, MS_OK);
    assert_eq!(take(out)["revoked_at_ms"], serde_json::Value::Null, "a refused revocation changes nothing");
    assert_eq!(unsafe { ms_key_revoke_v2(h.0, c(&other).as_ptr(), null(), NOW) }, MS_OK);
    assert_eq!(unsafe { ms_key_get(h.0, c(&other).as_ptr(), &mut out) }, MS_OK);
    assert_eq!(take(out)["revoked_reason"], "manual");
    assert_eq!(unsafe { ms_key_revoke_v2(h.0, null(), null(), NOW) }, MS_ERR_INVALID_ARGUMENT);
    assert!(last_error().contains("key_id is NULL"));
}
