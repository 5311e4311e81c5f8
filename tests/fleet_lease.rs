//! Quota leases seen from the check (issue 22, item 1), against a real redis-server with 3 hosts, each with
//! its agent: `api_key_quota_exceeded` only once the fleet's quota is spent; a host out of lease while the
//! fleet has room waits a bounded time for its agent (one Redis round trip) or answers
//! `rate_limit_exceeded` with a Retry-After of at most 1 s; never more than the quota fleet-wide.

mod common;

use std::time::{Duration, Instant};

use common::fleet::*;
use common::*;
use ms_auth::{Status, Store};

/// These tests run one at a time: each starts a Redis, agents and busy checking threads, and their
/// figures are about the product, not about sharing 2 cores with each other.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn clock() -> i64 {
    ms_auth::store::clock_ms()
}

/// Until every store of `hosts` has the key (read from the database: no check, so no lease is asked).
fn until_everywhere(hosts: &[Host], id: &str) {
    for h in hosts {
        let s = h.store();
        assert!(within(Duration::from_secs(10), || s.get_key(id).is_ok()).is_some(), "{}: {}", h.name, h.log());
    }
}

#[test]
fn a_hosts_first_request_on_a_key_whose_fleet_quota_has_room_is_admitted() {
    let _serial = serial();
    let (_dir, _redis, hosts) = fleet(3);
    let keys: Vec<_> = (0..5)
        .map(|_| {
            hosts[0]
                .store()
                .create_key(&spec(r#"{"quota": {"limit": 1000, "period": "daily"}, "rate_limit": null}"#), clock())
                .unwrap()
        })
        .collect();
    for k in &keys {
        until_everywhere(&hosts, &k.record.id);
    }
    let stores: Vec<Store> = hosts.iter().map(Host::store).collect();
    let mut answers = Vec::new();
    for k in &keys {
        for s in &stores {
            let started = Instant::now();
            let d = s.check(Some(k.key.as_bytes()), clock()).unwrap().decision;
            answers.push((d.status, d.retry_after_ms, started.elapsed()));
        }
    }
    let admitted = answers.iter().filter(|a| a.0 == Status::Ok).count();
    let mut waits: Vec<Duration> = answers.iter().map(|a| a.2).collect();
    waits.sort();
    eprintln!(
        "first requests, 5 keys x 3 hosts, quota 1,000/day: {admitted} of 15 admitted; check time p50 {:?}, max {:?}",
        waits[waits.len() / 2],
        waits.last().unwrap()
    );
    assert_eq!(admitted, 15, "every first request admitted: {answers:?}\n{}", hosts[0].log());
}
