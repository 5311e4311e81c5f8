//! The key list (issue 27, item 5): filters by state, pages with an opaque cursor, through the Rust API
//! and the C ABI. States depend on the clock, so keys here are placed days away from every boundary
//! of the real clock that the store reads.

mod common;

use std::ffi::{c_char, CStr, CString};
use std::ptr::{null, null_mut};

use common::*;
use ms_auth::ffi::*;
use ms_auth::key::Env;
use ms_auth::key_state::KeyState;
use ms_auth::period::DAY_MS;
use ms_auth::spec::KeyPage;
use ms_auth::store::{clock_ms, PolicySpec};
use ms_auth::{KeyFilter, KeyRecord, Store};
use proptest::prelude::*;

/// How a test key is made, each giving one state at the real clock (`kind` 7 is idle, so revoked,
/// only under an idle policy).
fn make_key(store: &Store, kind: u8, plan: Option<&str>, env: Env) -> String {
    let t = clock_ms();
    let mut spec = spec("{}");
    spec.plan = plan.map(str::to_string);
    spec.new_plan = true;
    spec.env = Some(env);
    let (expires, created) = match kind {
        0 | 4 | 5 | 6 => (Some(t + 30 * DAY_MS), t),
        1 => (None, t),
        2 => (Some(t + 3 * DAY_MS), t),
        3 | 8 => (Some(t - DAY_MS), t - 10 * DAY_MS),
        7 => (None, t - 100 * DAY_MS),
        _ => unreachable!(),
    };
    spec.expires_at_ms = expires.map_or(ms_auth::spec::Field::Null, ms_auth::spec::Field::Set);
    let id = store.create_key(&spec, created).unwrap().record.id;
    match kind {
        4 | 8 => drop(store.revoke_key(&id, t, Some("test")).unwrap()),
        5 => drop(store.rotate_key(&id, DAY_MS, t).unwrap()),
        6 => drop(store.rotate_key(&id, 0, t).unwrap()),
        _ => {}
    }
    id
}

fn ids(records: &[KeyRecord]) -> Vec<String> {
    records.iter().map(|r| r.id.clone()).collect()
}

/// Every page of `filter`, following `next` until it is null.
fn pages(store: &Store, filter: &KeyFilter) -> Vec<KeyPage> {
    let mut out: Vec<KeyPage> = Vec::new();
    let mut filter = filter.clone();
    loop {
        let page = store.list_key_page(&filter).unwrap();
        let next = page.next;
        out.push(page);
        match next {
            Some(cursor) => filter.after = Some(cursor),
            None => return out,
        }
        assert!(out.len() < 1000, "paging does not end");
    }
}

#[test]
fn a_state_filter_gives_the_keys_in_those_states_as_every_view_computes_them() {
    let (_dir, store) = temp_store();
    let mut made = Vec::new();
    for kind in 0..=8 {
        made.push((kind, make_key(&store, kind, None, Env::Live)));
    }
    store.set_policies(&PolicySpec::from_json(r#"{"idle": {"days": 30}}"#).unwrap(), clock_ms()).unwrap();
    let state_of = |id: &str| store.get_key(id).unwrap().state.state;
    let expected = [
        (0, KeyState::Active),
        (1, KeyState::Active),
        (2, KeyState::Expiring),
        (3, KeyState::Expired),
        (4, KeyState::Revoked),
        (5, KeyState::Rotating),
        (6, KeyState::Revoked), // its grace (0) is over: revoked (rotated) before any flush records it
        (7, KeyState::Revoked), // idle
        (8, KeyState::Revoked),
    ];
    for ((kind, id), (k, state)) in made.iter().zip(expected) {
        assert_eq!((*kind, state_of(id)), (k, state));
    }
    let listed = |states: &[KeyState]| {
        let filter = KeyFilter { states: Some(states.to_vec()), ..KeyFilter::default() };
        let mut got: Vec<String> = ids(&store.list_keys(&filter).unwrap());
        got.sort();
        got
    };
    let all = store.list_keys(&KeyFilter::default()).unwrap();
    assert_eq!(all.len(), 11, "9 keys and the 2 rotations' successors");
    for states in [
        &[KeyState::Revoked][..],
        &[KeyState::Active],
        &[KeyState::Expiring, KeyState::Expired],
        &[KeyState::Rotating],
        &[KeyState::Suspended],
        &KeyState::ALL,
    ] {
        let mut want: Vec<String> =
            all.iter().filter(|r| states.contains(&r.state.state)).map(|r| r.id.clone()).collect();
        want.sort();
        assert_eq!(listed(states), want, "{states:?}");
    }
    assert_eq!(listed(&[KeyState::Revoked]).len(), 4);
    let reasons: Vec<Option<String>> = store
        .list_keys(&KeyFilter::from_json(r#"{"state": "revoked"}"#).unwrap())
        .unwrap()
        .into_iter()
        .map(|r| r.state.state_reason)
        .collect();
    assert_eq!(reasons, [Some("test".into()), Some("rotated".into()), Some("idle".into()), Some("test".into())]);
}

#[test]
fn pages_follow_the_cursor_to_the_end_and_the_v1_answer_only_gains_next() {
    let (_dir, store) = temp_store();
    let mut made: Vec<String> = (0..7).map(|i| make_key(&store, [0, 4][i % 2], None, Env::Live)).collect();
    let revoked: Vec<String> = made.iter().skip(1).step_by(2).cloned().collect();
    let filter = KeyFilter { limit: Some(2), ..KeyFilter::from_json(r#"{"state": ["revoked"]}"#).unwrap() };
    let got = pages(&store, &filter);
    assert_eq!(got.iter().map(|p| p.keys.len()).collect::<Vec<_>>(), [2, 1], "3 revoked keys, 2 a page");
    assert_eq!(got.iter().flat_map(|p| ids(&p.keys)).collect::<Vec<_>>(), revoked);
    // A page of exactly the keys that are left says so: no empty last page.
    let exact = pages(&store, &KeyFilter { limit: Some(3), ..filter.clone() });
    assert_eq!(exact.len(), 1);
    // No limit: every key, in the order they were created, and `next` null.
    let page = store.list_key_page(&KeyFilter::default()).unwrap();
    assert_eq!((ids(&page.keys), page.next), (made.clone(), None));
    let json: serde_json::Value = serde_json::from_str(&page.to_json()).unwrap();
    assert_eq!(json.as_object().unwrap().keys().collect::<Vec<_>>(), ["keys", "next"]);
    assert_eq!(json["next"], serde_json::Value::Null);
    // A cursor stays valid while keys are added: the next page starts after the last key shown.
    let first = store.list_key_page(&KeyFilter { limit: Some(4), ..KeyFilter::default() }).unwrap();
    made.push(make_key(&store, 0, None, Env::Live));
    let rest = store.list_key_page(&KeyFilter { after: first.next, ..KeyFilter::default() }).unwrap();
    assert_eq!([ids(&first.keys), ids(&rest.keys)].concat(), made);
    // The cursor's text round-trips through JSON.
    let text = first.next.unwrap().to_string();
    let again = KeyFilter::from_json(&format!(r#"{{"after": "{text}", "limit": 1000}}"#)).unwrap();
    assert_eq!(ids(&store.list_key_page(&again).unwrap().keys), ids(&rest.keys));
}

#[test]
fn bad_filters_and_cursors_are_refused_naming_the_field() {
    let err = |json: &str| KeyFilter::from_json(json).unwrap_err();
    for (json, says) in [
        (r#"{"limit": 0}"#, "limit must be an integer from 1 to 1000"),
        (r#"{"limit": 1001}"#, "limit must be an integer from 1 to 1000"),
        (r#"{"limit": -1}"#, "limit must be an integer from 1 to 1000"),
        (r#"{"limit": "10"}"#, "limit must be an integer from 1 to 1000"),
        (r#"{"limit": 1.5}"#, "limit must be an integer from 1 to 1000"),
        (r#"{"state": "actve"}"#, "state must be one of active, expiring, rotating, revoked, expired"),
        (r#"{"state": ["revoked", 3]}"#, "state must be a state's name or a list of them"),
        (r#"{"state": []}"#, "state names no state"),
        (r#"{"state": 1}"#, "state must be a state's name or a list of them"),
        (r#"{"after": 12}"#, "after must be a cursor"),
        (r#"{"cursor": "x"}"#, r#"unknown field "cursor" in key filter"#),
    ] {
        let e = err(json);
        assert_eq!(e.status, ms_auth::Status::ErrInvalidArgument, "{json}");
        assert!(e.message.contains(says), "{json}: {}", e.message);
    }
    for cursor in [
        "",
        "nope",
        "k1",
        "k1.",
        "k1.zz",
        "k1.-1",
        "k1.+1",
        "k1. 1",
        "K1.1",
        "k1.1ffffffffffffffff",
        "k1.8000000000000000",
        "k2.1",
        "k1.ü",
    ] {
        let e = err(&format!(r#"{{"after": {}}}"#, serde_json::json!(cursor)));
        assert!(e.message.contains("after is not a cursor this list gave"), "{cursor:?}: {}", e.message);
    }
    // null is absent, as in every filter field.
    assert_eq!(KeyFilter::from_json(r#"{"state": null, "limit": null, "after": null}"#).unwrap(), KeyFilter::default());
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn abi_list(h: *mut ms_store, filter: Option<&str>) -> Result<serde_json::Value, String> {
    let filter = filter.map(c);
    let mut out: *mut c_char = null_mut();
    let rc = unsafe { ms_key_list(h, filter.as_ref().map_or(null(), |f| f.as_ptr()), &mut out) };
    if rc != MS_OK {
        assert!(out.is_null(), "nothing written on a failure");
        assert_eq!(rc, MS_ERR_INVALID_ARGUMENT);
        return Err(unsafe { CStr::from_ptr(ms_last_error()) }.to_str().unwrap().to_string());
    }
    let v = serde_json::from_str(unsafe { CStr::from_ptr(out) }.to_str().unwrap()).unwrap();
    unsafe { ms_string_free(out) };
    Ok(v)
}

#[test]
fn ms_key_list_takes_state_limit_and_after() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.db");
    {
        let store = Store::open(&path).unwrap();
        for kind in [0, 4, 4, 2, 4] {
            make_key(&store, kind, Some("pro"), Env::Live);
        }
    }
    let mut h = null_mut();
    assert_eq!(unsafe { ms_store_open(c(path.to_str().unwrap()).as_ptr(), &mut h) }, MS_OK);
    let v1 = abi_list(h, None).unwrap();
    assert_eq!((v1["keys"].as_array().unwrap().len(), &v1["next"]), (5, &serde_json::Value::Null));
    let mut seen = Vec::new();
    let mut filter = r#"{"plan": "pro", "state": "revoked", "limit": 2}"#.to_string();
    loop {
        let page = abi_list(h, Some(&filter)).unwrap();
        seen.extend(page["keys"].as_array().unwrap().iter().map(|k| k["state"].as_str().unwrap().to_string()));
        match page["next"].as_str() {
            Some(next) => filter = format!(r#"{{"plan": "pro", "state": "revoked", "limit": 2, "after": "{next}"}}"#),
            None => break,
        }
    }
    assert_eq!(seen, ["revoked"; 3]);
    let both = abi_list(h, Some(r#"{"state": ["active", "expiring"]}"#)).unwrap();
    assert_eq!(both["keys"].as_array().unwrap().len(), 2);
    let refused = |f: &str| abi_list(h, Some(f)).unwrap_err();
    assert!(refused(r#"{"after": "c1.zz"}"#).contains("after is not a cursor this list gave"));
    assert!(refused(r#"{"limit": 5000}"#).contains("limit must be an integer from 1 to 1000"));
    assert!(refused(r#"{"page": 2}"#).contains(r#"unknown field "page" in key filter"#));
    unsafe { ms_store_close(h) };
}

/// Which keys a filter selects, worked out from the unfiltered list: the specification the store's SQL
/// and its finishing in Rust must meet together.
fn selected(all: &[KeyRecord], f: &KeyFilter) -> Vec<String> {
    all.iter()
        .filter(|r| f.plan.as_deref().is_none_or(|p| r.plan.as_deref() == Some(p)))
        .filter(|r| f.env.is_none_or(|e| r.env == e.as_str()))
        .filter(|r| f.states.as_ref().is_none_or(|s| s.contains(&r.state.state)))
        .filter(|r| {
            f.expiring_before_ms.is_none_or(|t| {
                r.expires_at_ms.is_some_and(|e| e <= t) && r.revoked_at_ms.is_none() && r.state.state.admits()
            })
        })
        .map(|r| r.id.clone())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// Paging through any filter, any page size, yields exactly the unpaged list, each key once, in order;
    /// and the unpaged list is the keys the filter selects, state by state.
    #[test]
    fn paging_through_any_filter_yields_exactly_the_unpaged_list(
        keys in proptest::collection::vec((0u8..=8, 0usize..3, any::<bool>()), 0..24),
        idle in any::<bool>(),
        states in 0u32..64,
        plan in 0usize..4,
        env in 0usize..3,
        expiring in 0usize..3,
        limit in 1usize..8,
    ) {
        let (_dir, store) = temp_store();
        let plans = [None, Some("free"), Some("pro")];
        for (kind, p, test_env) in &keys {
            make_key(&store, *kind, plans[*p], if *test_env { Env::Test } else { Env::Live });
        }
        if idle {
            store.set_policies(&PolicySpec::from_json(r#"{"idle": {"days": 30}}"#).unwrap(), clock_ms()).unwrap();
        }
        let t = clock_ms();
        let filter = KeyFilter {
            plan: [None, Some("free"), Some("pro"), Some("none")][plan].map(str::to_string),
            env: [None, Some(Env::Live), Some(Env::Test)][env],
            expiring_before_ms: [None, Some(t + 5 * DAY_MS), Some(t + 60 * DAY_MS)][expiring],
            states: (states > 0).then(|| {
                KeyState::ALL.iter().enumerate().filter(|(i, _)| states & (1 << i) != 0).map(|(_, s)| *s).collect()
            }),
            ..KeyFilter::default()
        };
        let all = store.list_keys(&KeyFilter::default()).unwrap();
        let unpaged = store.list_key_page(&filter).unwrap();
        prop_assert_eq!(unpaged.next, None);
        prop_assert_eq!(ids(&unpaged.keys), selected(&all, &filter));
        let got = pages(&store, &KeyFilter { limit: Some(limit), ..filter.clone() });
        let (last, full) = got.split_last().unwrap();
        prop_assert!(full.iter().all(|p| p.keys.len() == limit), "every page but the last is full");
        prop_assert!(!last.keys.is_empty() || got.len() == 1, "no empty page after a full one");
        prop_assert!(last.keys.len() <= limit);
        let paged: Vec<String> = got.iter().flat_map(|p| ids(&p.keys)).collect();
        prop_assert_eq!(paged, ids(&unpaged.keys));
    }
}
