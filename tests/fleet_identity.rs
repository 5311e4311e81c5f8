//! A fleet host's identity, its liveness and the fleet's secret (issue 22), against a real redis-server:
//! two stores given one host name are two hosts; a copy of a store (a cloned machine) is refused loudly
//! until it takes an identity of its own; hosts count the same members whatever their clocks say, and a
//! host whose agent died stops using its share of a rate before the others take it; the secret is its
//! bytes, kept private, and can be rotated; the Redis password stays off the command line.
//!
//! Children (this test binary run again) check keys as a host's servers would: `quota_child` until the
//! fleet's quota is spent, `rate_child` for a given time.

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::fleet::*;
use common::*;
use ms_auth::{Status, Store};

/// One at a time: each test starts a Redis, agents and busy checking processes on a small machine.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn clock() -> i64 {
    ms_auth::store::clock_ms()
}

fn checks_as(store: &Store, key: &str, wanted: Status) -> bool {
    store.check(Some(key.as_bytes()), clock()).is_ok_and(|c| c.decision.status == wanted)
}

/// A checking process: 2 threads check one key until the fleet's quota is spent (refusals that say to
/// wait for the period's end), then print how many they admitted.
#[test]
fn quota_child() {
    let (Ok(db), Ok(key)) = (std::env::var("MS_AUTH_ID_QUOTA_DB"), std::env::var("MS_AUTH_ID_KEY")) else { return };
    let store = std::sync::Arc::new(Store::open(&db).unwrap());
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (store, key) = (store.clone(), key.clone());
            std::thread::spawn(move || {
                let (mut admitted, mut spent_in_a_row) = (0u64, 0);
                let deadline = Instant::now() + Duration::from_secs(60);
                while spent_in_a_row < 200 && Instant::now() < deadline {
                    let d = store.check(Some(key.as_bytes()), clock()).unwrap().decision;
                    match d.status {
                        Status::Ok => {
                            admitted += 1;
                            spent_in_a_row = 0;
                        }
                        Status::ApiKeyQuotaExceeded if d.retry_after_ms > ms_auth::policy::TOP_UP_RETRY_MS => {
                            spent_in_a_row += 1;
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Status::ApiKeyQuotaExceeded => std::thread::sleep(Duration::from_millis(1)),
                        // Out of lease while the fleet's quota has room (a new fleet's first 3 s grant
                        // nothing): waiting for this host's share.
                        Status::RateLimitExceeded => std::thread::sleep(Duration::from_millis(1)),
                        other => panic!("{other:?}"),
                    }
                }
                admitted
            })
        })
        .collect();
    let admitted: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    println!("\nADMITTED {admitted}");
}

/// A checking process: checks one key as fast as it can for MS_AUTH_ID_RATE_MS, prints how many it admitted.
#[test]
fn rate_child() {
    let (Ok(db), Ok(key), Ok(ms)) =
        (std::env::var("MS_AUTH_ID_RATE_DB"), std::env::var("MS_AUTH_ID_KEY"), std::env::var("MS_AUTH_ID_RATE_MS"))
    else {
        return;
    };
    let store = Store::open(&db).unwrap();
    let how_long = Duration::from_millis(ms.parse().unwrap());
    let (started, mut admitted) = (Instant::now(), 0u64);
    while started.elapsed() < how_long {
        admitted += u64::from(checks_as(&store, &key, Status::Ok));
    }
    println!("\nADMITTED {admitted}");
}

fn child(vars: &[(&str, &OsStr)], test: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .envs(vars.iter().map(|(k, v)| (*k, *v)))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn quota_hammer(db: &Path, key: &str) -> Child {
    child(&[("MS_AUTH_ID_QUOTA_DB", db.as_os_str()), ("MS_AUTH_ID_KEY", key.as_ref())], "quota_child")
}

fn rate_hammer(db: &Path, key: &str, for_ms: u64, env: &[(&str, &OsStr)]) -> Child {
    let ms = for_ms.to_string();
    let mut vars = vec![
        ("MS_AUTH_ID_RATE_DB", db.as_os_str()),
        ("MS_AUTH_ID_KEY", key.as_ref()),
        ("MS_AUTH_ID_RATE_MS", ms.as_ref()),
    ];
    vars.extend_from_slice(env);
    child(&vars, "rate_child")
}

fn admitted_by(child: Child) -> u64 {
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|l| l.split_once("ADMITTED ").and_then(|(_, n)| n.trim().parse().ok())).expect("a count")
}

fn status_of(host: &Host) -> serde_json::Value {
    host.store().fleet_status().ok().flatten().unwrap_or(serde_json::Value::Null)
}

fn quota_key(on: &Host, limit: i64) -> ms_auth::store::Created {
    let json = format!(r#"{{"quota": {{"limit": {limit}, "period": "daily"}}, "rate_limit": null}}"#);
    on.store().create_key(&spec(&json), clock()).unwrap()
}

fn wait_for_key(host: &Host, id: &str) {
    let s = host.store();
    assert!(within(Duration::from_secs(5), || s.get_key(id).is_ok()).is_some(), "{}: {}", host.name, host.log());
}

/// The fields of the fleet's quota hashes in Redis.
fn lease_fields(redis: &Redis) -> Vec<String> {
    let mut conn = redis.conn();
    let hashes: Vec<String> = redis::cmd("KEYS").arg("ms-auth:{test}:quota:*").query(&mut conn).unwrap();
    let mut fields = Vec::new();
    for h in hashes {
        let all: Vec<String> = redis::cmd("HKEYS").arg(h).query(&mut conn).unwrap();
        fields.extend(all.into_iter().filter(|f| f.starts_with("lease:")));
    }
    fields
}

#[test]
fn two_stores_given_one_host_name_are_two_hosts_and_share_a_quota() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(&dir.path().join("redis"), None);
    // Two machines cloned from one image: the same hostname, so the same default --host.
    let mut hosts: Vec<Host> = ["a", "b"].iter().map(|d| Host::new(dir.path(), d)).collect();
    for h in &mut hosts {
        h.name = "web".into();
        h.start_agent(&redis.url());
    }
    for h in &hosts {
        h.wait_until_in_the_fleet();
    }
    let k = quota_key(&hosts[0], 300);
    wait_for_key(&hosts[1], &k.record.id);
    let children: Vec<Child> =
        hosts.iter().flat_map(|h| (0..2).map(|_| quota_hammer(&h.db, &k.key)).collect::<Vec<_>>()).collect();
    let total: u64 = children.into_iter().map(admitted_by).sum();
    eprintln!(
        "quota 300/day on two hosts both named \"web\": admitted {total}; lease fields {:?}",
        lease_fields(&redis)
    );
    assert!(total <= 300, "the fleet admitted {total} of a quota of 300\n{}\n{}", hosts[0].log(), hosts[1].log());
    assert!(total >= 280, "and about all of it: {total}");
    assert_eq!(lease_fields(&redis).len(), 2, "one lease per host, not per name");
    // `fleet status` shows two members of one name, told apart by their ids.
    let ids: Vec<String> = hosts.iter().map(|h| h.store().fleet_host_id().unwrap().unwrap()).collect();
    assert_ne!(ids[0], ids[1]);
    // (The agent reports once a heartbeat: wait for a report that lists both.)
    let lists_both = |text: &str| ids.iter().all(|id| text.lines().any(|l| l.contains("web") && l.contains(&id[..8])));
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let (ok, text, err) = hosts[0].fleet_command(&["status"]);
        assert!(ok, "{err}");
        if lists_both(&text) || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(lists_both(&text), "both ids {ids:?} in\n{text}");
    assert!(text.contains("another host has this name"), "{text}");
}

#[test]
fn a_copy_of_a_store_is_refused_loudly_until_it_takes_an_identity_of_its_own() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(&dir.path().join("redis"), None);
    let mut a = Host::new(dir.path(), "a");
    a.start_agent(&redis.url());
    a.wait_until_in_the_fleet();
    let k = quota_key(&a, 300);
    // Host a holds a lease and has used some of it when its machine is cloned (its agent killed, so that
    // nothing is handed back: the copy holds what a holds).
    let mut before = 0;
    {
        let store = a.store();
        while before < 20 {
            assert!(within(Duration::from_secs(5), || checks_as(&store, &k.key, Status::Ok)).is_some(), "{}", a.log());
            before += 1;
        }
    }
    a.kill_agent();
    let b_dir = dir.path().join("b");
    std::fs::create_dir_all(&b_dir).unwrap();
    for suffix in ["", "-wal", "-counters"] {
        let from = dir.path().join("a").join(format!("keys.db{suffix}"));
        if from.exists() {
            std::fs::copy(&from, b_dir.join(format!("keys.db{suffix}"))).unwrap();
        }
    }
    let mut b = Host::new(dir.path(), "b");
    let held = |h: &Host| h.store().fleet_quota_view(clock()).unwrap().iter().map(|q| q.quota.lease).sum::<i64>();
    assert!(held(&b) > 0, "the copy holds a's lease");
    a.start_agent_env(&redis.url(), &[], &[]);
    a.wait_until_in_the_fleet();
    // The copy's agent finds its identity held by a live agent: it stops, says why and what to do.
    b.start_agent(&redis.url());
    let exit = b.agent_exit_within(Duration::from_secs(15));
    let log = b.log();
    assert!(exit.is_some_and(|s| s.code() == Some(5)), "the copy's agent kept running: {exit:?}\n{log}");
    assert!(log.contains("another agent") && log.contains("fleet new-identity"), "{log}");
    assert!(!a.log().contains("another agent"), "the original runs on: {}", a.log());
    // A new identity: the copy is a host of its own, and drops the leases it copied (they are a's).
    let (ok, out, err) = b.fleet_command(&["new-identity"]);
    assert!(ok, "{out}{err}");
    let (id_a, id_b) = (a.store().fleet_host_id().unwrap().unwrap(), b.store().fleet_host_id().unwrap().unwrap());
    assert_ne!(id_a, id_b);
    assert!(out.contains(&id_b), "{out}");
    assert_eq!(held(&b), 0, "the copied leases are dropped");
    b.start_agent_env(&redis.url(), &[], &[]);
    b.wait_until_in_the_fleet();
    let children = vec![quota_hammer(&a.db, &k.key), quota_hammer(&b.db, &k.key)];
    let total = before + children.into_iter().map(admitted_by).sum::<u64>();
    eprintln!("a store and its copy with a new identity, quota 300/day: admitted {total}");
    assert!(total <= 300, "{total}\n{}\n{}", a.log(), b.log());
    assert!(total >= 250, "{total}");
    assert!(b.agent.as_mut().unwrap().try_wait().unwrap().is_none(), "the copy runs now: {}", b.log());
}

/// The rate children of every host for `ms`, started together: (admitted, seconds from the first start
/// to the last exit).
fn hammer_rates(hosts: &[Host], key: &str, ms: u64, skewed: Option<(usize, &[(&str, &OsStr)])>) -> (u64, f64) {
    let started = Instant::now();
    let children: Vec<Child> = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| match skewed {
            Some((j, env)) if j == i => rate_hammer(&h.db, key, ms, env),
            _ => rate_hammer(&h.db, key, ms, &[]),
        })
        .collect();
    let admitted = children.into_iter().map(admitted_by).sum();
    (admitted, started.elapsed().as_secs_f64())
}

#[test]
fn a_host_ten_minutes_behind_counts_the_same_members_and_the_fleet_burst_stays_within_its_bound() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let shift = clock_shift_library(dir.path());
    let redis = Redis::start(&dir.path().join("redis"), None);
    let mut hosts: Vec<Host> = (0..3).map(|i| Host::new(dir.path(), &format!("host{i}"))).collect();
    let behind: Vec<(&str, &OsStr)> =
        vec![("LD_PRELOAD", shift.as_os_str()), ("MS_AUTH_TEST_CLOCK_SHIFT_MS", "-600000".as_ref())];
    for (i, h) in hosts.iter_mut().enumerate() {
        h.start_agent_env(&redis.url(), &[], if i == 2 { &behind } else { &[] });
    }
    for h in &hosts {
        h.wait_until_in_the_fleet();
    }
    // host2's agent lives 10 minutes in the past (its reports are stamped by its clock).
    let skewed = within(Duration::from_secs(5), || {
        status_of(&hosts[2])["reported_at_ms"].as_i64().is_some_and(|t| (clock() - t - 600_000).abs() < 5_000)
    });
    assert!(skewed.is_some(), "the clock shift is in force: {}", status_of(&hosts[2]));
    let counts = || hosts.iter().map(|h| status_of(h)["rate_shared_by"].as_u64().unwrap_or(0)).collect::<Vec<_>>();
    let all_three = within(Duration::from_secs(5), || counts() == [3, 3, 3]);
    assert!(all_three.is_some(), "every host counts 3 members: {:?}", counts());
    let watched = Instant::now();
    while watched.elapsed() < Duration::from_secs(3) {
        assert_eq!(counts(), [3, 3, 3], "and keeps counting them");
        std::thread::sleep(Duration::from_millis(50));
    }
    // 600 a minute, burst 30: the fleet's rate is 10/s, its burst at most 30 + 3 - 1.
    let k = hosts[0]
        .store()
        .create_key(&spec(r#"{"rate_limit": {"limit": 600, "window_ms": 60000, "burst": 30}}"#), clock())
        .unwrap();
    for h in &hosts {
        wait_for_key(h, &k.record.id);
    }
    let (admitted, seconds) = hammer_rates(&hosts, &k.key, 3000, Some((2, &behind)));
    let bound = (10.0 * seconds).ceil() as u64 + 30 + 2;
    eprintln!("rate 600/min burst 30, 3 hosts, one 10 min behind, {seconds:.2} s: admitted {admitted} (bound {bound})");
    assert!(admitted <= bound, "{admitted} > {bound}");
    assert!(admitted >= 30, "the fleet still gets its rate: {admitted}");
}

#[test]
fn a_host_whose_agent_died_stops_using_its_share_before_the_others_take_it() {
    let _serial = serial();
    let (_dir, _redis, mut hosts) = fleet(3);
    let k = hosts[0]
        .store()
        .create_key(&spec(r#"{"rate_limit": {"limit": 600, "window_ms": 60000, "burst": 30}}"#), clock())
        .unwrap();
    for h in &hosts {
        wait_for_key(h, &k.record.id);
        let three = within(Duration::from_secs(5), || status_of(h)["rate_shared_by"] == 3);
        assert!(three.is_some(), "{}", h.log());
    }
    // A probe key whose rate never limits: refused on host2 only once its share is withheld.
    let probe = hosts[0]
        .store()
        .create_key(&spec(r#"{"rate_limit": {"limit": 1000000, "window_ms": 1000, "burst": 1000000}}"#), clock())
        .unwrap();
    let (dead, alive) = (hosts[2].store(), hosts[0].store());
    assert!(within(Duration::from_secs(5), || checks_as(&dead, &probe.key, Status::Ok)).is_some());
    hosts[2].kill_agent();
    let killed = Instant::now();
    // When host2's servers stop using its share, and when the others count it out.
    let (mut withheld_after, mut counted_out_after) = (None, None);
    while counted_out_after.is_none() && killed.elapsed() < Duration::from_secs(10) {
        if withheld_after.is_none() && checks_as(&dead, &probe.key, Status::RateLimitExceeded) {
            withheld_after = Some(killed.elapsed());
        }
        if alive.fleet_status().unwrap().unwrap()["rate_shared_by"] == 2 {
            counted_out_after = Some(killed.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    eprintln!(
        "agent killed: its host's share withheld after {withheld_after:?}, the others count 2 after {counted_out_after:?}"
    );
    let counted_out_after = counted_out_after.expect("the others count host2 out");
    let withheld_after = withheld_after.expect("host2's share is withheld");
    assert!(withheld_after < counted_out_after, "{withheld_after:?} vs {counted_out_after:?}");
    let others_two = within(Duration::from_secs(3), || status_of(&hosts[1])["rate_shared_by"] == 2);
    assert!(others_two.is_some(), "{}", hosts[1].log());
    let (admitted, seconds) = hammer_rates(&hosts, &k.key, 3000, None);
    // Two live hosts: a burst of at most 30 + 2 - 1, and the dead agent's host admits nothing of the rate.
    let bound = (10.0 * seconds).ceil() as u64 + 30 + 1;
    eprintln!("rate 600/min burst 30, 3 hosts, one agent dead, {seconds:.2} s: admitted {admitted} (bound {bound})");
    assert!(admitted <= bound, "{admitted} > {bound}");
    assert!(admitted >= 30, "the live hosts still get the fleet's rate: {admitted}");
    let refused = dead.check(Some(k.key.as_bytes()), clock()).unwrap().decision;
    assert_eq!(refused.status, Status::RateLimitExceeded);
    assert!(refused.retry_after_ms >= 1000, "{refused:?}");
}

#[test]
fn a_secret_file_others_may_read_is_refused() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(&dir.path().join("redis"), None);
    let mut h = Host::new(dir.path(), "a");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&h.secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    h.start_agent(&redis.url());
    let exit = h.agent_exit_within(Duration::from_secs(10));
    assert!(exit.is_some_and(|s| !s.success()), "{exit:?}\n{}", h.log());
    assert!(h.log().contains("0644") && h.log().contains("chmod 600"), "{}", h.log());
}

#[test]
fn a_secret_is_its_bytes_and_too_short_a_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        write_private(&path, bytes);
        path
    };
    let sign = |path: &Path| ms_auth::fleet::Secret::from_file(path).unwrap().sign_parts("f", &["a message"]);
    // Not UTF-8: decoded lossily, both would be 20 replacement characters, one key.
    let (ff, fe) = (file("ff", &[0xFF; 20]), file("fe", &[0xFE; 20]));
    assert_ne!(sign(&ff), sign(&fe), "two different files are two different secrets");
    // Six bytes are six bytes (lossily decoded they were 18, over the 16-byte minimum).
    let short = ms_auth::fleet::Secret::from_file(&file("short", &[0xFF; 6]));
    let e = short.err().expect("refused");
    assert!(e.message.contains("shorter than 16 bytes"), "{}", e.message);
    // A text secret's line end is not part of it.
    let (line, bare) = (
        file("line", b"c2VjcmV0IG9mIHRoaXJ0eS10d28gYnl0ZXM=\n"),
        file("bare", b"c2VjcmV0IG9mIHRoaXJ0eS10d28gYnl0ZXM="),
    );
    assert_eq!(sign(&line), sign(&bare));
}

#[test]
fn a_rotated_secret_accepts_both_during_the_transition_and_then_refuses_the_old_one() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start(&dir.path().join("redis"), None);
    let (old, new) = (dir.path().join("old.secret"), dir.path().join("new.secret"));
    write_private(&old, SECRET.as_bytes());
    write_private(&new, b"the fleet's next secret, 32 bytes or so");
    let mut hosts: Vec<Host> = (0..3).map(|i| Host::new(dir.path(), &format!("host{i}"))).collect();
    // host0 and host1 have the new secret (and still accept the old); host2, removed from the fleet, never
    // gets it.
    let transition = ["--accept-secret-file".as_ref(), old.as_os_str()];
    for (i, h) in hosts.iter_mut().enumerate() {
        h.secret = if i < 2 { new.clone() } else { old.clone() };
        h.start_agent_env(&redis.url(), if i < 2 { &transition } else { &[] }, &[]);
    }
    for h in &hosts {
        h.wait_until_in_the_fleet();
    }
    let on_old = hosts[2].store().create_key(&spec("{}"), clock()).unwrap();
    for h in &hosts[..2] {
        let s = h.store();
        let took = within(Duration::from_secs(5), || checks_as(&s, &on_old.key, Status::Ok));
        assert!(took.is_some(), "a change signed with the old secret is accepted in the transition\n{}", h.log());
    }
    let on_new = hosts[0].store().create_key(&spec("{}"), clock()).unwrap();
    let s1 = hosts[1].store();
    assert!(within(Duration::from_secs(5), || checks_as(&s1, &on_new.key, Status::Ok)).is_some(), "{}", hosts[1].log());
    // The rotation's end: host0 and host1 hold only the new secret.
    for h in &mut hosts[..2] {
        assert!(h.stop_agent().unwrap().success());
        // A clean stop leaves the member list and gives up the claim (the signal cuts the agent's
        // blocking read short: it reconnects to do so).
        let id = h.store().fleet_host_id().unwrap().unwrap();
        let mut conn = redis.conn();
        let member: bool = redis::cmd("HEXISTS").arg("ms-auth:{test}:members").arg(&id).query(&mut conn).unwrap();
        let claimed: bool = redis::cmd("EXISTS").arg(format!("ms-auth:{{test}}:agent:{id}")).query(&mut conn).unwrap();
        assert!(!member && !claimed, "member {member}, claimed {claimed}\n{}", h.log());
        h.start_agent_env(&redis.url(), &[], &[]);
        h.wait_until_in_the_fleet();
    }
    let after = hosts[2].store().create_key(&spec("{}"), clock()).unwrap();
    for h in &hosts[..2] {
        let refused = within(Duration::from_secs(5), || h.log().contains("not signed with this fleet's secret"));
        assert!(refused.is_some(), "{}", h.log());
        assert!(!checks_as(&h.store(), &after.key, Status::Ok), "a host holding only the old secret is refused");
        assert!(checks_as(&h.store(), &on_new.key, Status::Ok));
    }
}

#[test]
fn the_redis_password_comes_from_a_file_or_the_environment_never_the_command_line() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let password = "pw-kept-off-the-command-line";
    let redis = Redis::start(&dir.path().join("redis"), Some(password));
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let file = dir.path().join("redis.password");
    write_private(&file, format!("{password}\n").as_bytes());
    let (mut a, mut b) = (Host::new(dir.path(), "a"), Host::new(dir.path(), "b"));
    a.start_agent_env(&url, &["--redis-password-file".as_ref(), file.as_os_str()], &[]);
    b.start_agent_env(&url, &[], &[("MS_AUTH_REDIS_PASSWORD", password.as_ref())]);
    a.wait_until_in_the_fleet();
    b.wait_until_in_the_fleet();
    let k = a.store().create_key(&spec("{}"), clock()).unwrap();
    let sb = b.store();
    assert!(within(Duration::from_secs(5), || checks_as(&sb, &k.key, Status::Ok)).is_some(), "{}", b.log());
    for h in [&a, &b] {
        let pid = h.agent.as_ref().unwrap().id();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(!String::from_utf8_lossy(&cmdline).contains(password), "{}", String::from_utf8_lossy(&cmdline));
        assert!(!h.log().contains(password));
    }
    // A password file others may read is refused, like the secret.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let mut c = Host::new(dir.path(), "c");
    c.start_agent_env(&url, &["--redis-password-file".as_ref(), file.as_os_str()], &[]);
    let exit = c.agent_exit_within(Duration::from_secs(10));
    assert!(exit.is_some_and(|s| !s.success()) && c.log().contains("chmod 600"), "{exit:?} {}", c.log());
}
