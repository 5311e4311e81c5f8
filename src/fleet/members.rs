//! This host among the fleet's members: its claim on its identity (one running agent per host id), its
//! heartbeat into the member list, and who is live, by Redis's clock, so that hosts whose clocks
//! disagree count the same members.
//!
//! Redis keys, for fleet F: `ms-auth:{F}:members` (a hash: host id → the host's last report, its
//! `last_seen_ms` stamped with Redis's TIME) and `ms-auth:{F}:agent:ID` (the claim on identity ID: the
//! running agent's nonce and whereabouts, with a time to live of [`LIVE_HEARTBEATS`] heartbeats that
//! each heartbeat renews). A second agent with the same identity (a copy of a store: a cloned machine, a
//! copied database) finds the claim held and stops, saying why, instead of being granted the same
//! leases twice.

use std::time::{Duration, Instant};

use redis::Commands;
use serde_json::{json, Value};

use super::link::{Config, Failure, Link};
use crate::error::{Error, Result};

/// A member is live while its last report is at most this many heartbeats old, and an identity's claim
/// lapses after as many heartbeats without renewal.
pub(super) const LIVE_HEARTBEATS: u32 = 3;

/// Members not seen for this long leave the member list (a host retired without a clean stop).
const FORGET_AFTER_MS: i64 = 86_400_000;

/// Takes the claim on an identity. KEYS[1]: the claim. ARGV: this agent's claim, its time to live (ms),
/// a claim it may replace (its predecessor on this machine died), or ''. Returns '' when taken, else
/// the claim that holds it.
const CLAIM: &str = r#"
local held = redis.call('GET', KEYS[1])
if (not held) or held == ARGV[1] or held == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ''
end
return held
"#;

/// One heartbeat: renews this agent's claim (or reports who took it) and its report in the member list,
/// stamped with Redis's clock. KEYS: members, claim. ARGV: host id, report (a JSON object), this agent's
/// claim, its time to live (ms). Returns {Redis's time in ms, '', the member list} or {-1, the claim that
/// holds the identity, {}}.
const HEARTBEAT: &str = r#"
local held = redis.call('GET', KEYS[2])
if held and held ~= ARGV[3] then return {-1, held, {}} end
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local report = cjson.decode(ARGV[2])
report['last_seen_ms'] = now
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(report))
return {now, '', redis.call('HGETALL', KEYS[1])}
"#;

/// Gives up the claim at a clean stop, if it is still this agent's. KEYS[1]: the claim; ARGV[1]: ours.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"#;

/// This agent as its claim names it: a random nonce, and where it runs (so that an agent restarted on
/// the same machine can tell its dead predecessor from a live agent elsewhere).
pub(super) struct Claimant {
    value: String,
    key: String,
    scripts: [redis::Script; 3],
}

/// What the claim of another agent says about it.
struct Holder<'a> {
    boot: &'a str,
    pid_ns: &'a str,
    pid: i32,
    machine: &'a str,
}

/// Whether this agent holds its identity.
pub(super) enum Claimed {
    Ours,
    /// Another running agent holds it: who.
    HeldBy(String),
    /// The agent was asked to stop while waiting.
    Stopping,
}

impl Claimant {
    pub(super) fn new(cfg: &Config) -> Result<Claimant> {
        let mut nonce = [0u8; 16];
        getrandom::getrandom(&mut nonce).map_err(|e| Error::internal(format!("no randomness: {e}")))?;
        let value = format!(
            "{} {} {} {} {}",
            crate::text::hex(&nonce),
            first_word(&read_trimmed("/proc/sys/kernel/random/boot_id")),
            pid_namespace(),
            std::process::id(),
            first_word(&read_trimmed("/proc/sys/kernel/hostname")),
        );
        Ok(Claimant {
            value,
            key: format!("ms-auth:{{{}}}:agent:{}", cfg.fleet, cfg.host_id),
            scripts: [redis::Script::new(CLAIM), redis::Script::new(HEARTBEAT), redis::Script::new(RELEASE)],
        })
    }

    fn ttl(cfg: &Config) -> Duration {
        cfg.heartbeat * LIVE_HEARTBEATS
    }

    /// Claims this host's identity once connected. A claim held by another agent is waited on for its
    /// time to live and a heartbeat: a live agent renews it meanwhile (then it is refused), a dead one's
    /// lapses; one that died on this machine is replaced at once.
    pub(super) fn claim(
        &self,
        c: &mut redis::Connection,
        cfg: &Config,
        stop: &std::sync::atomic::AtomicBool,
        log: &mut dyn FnMut(&str),
    ) -> std::result::Result<Claimed, Failure> {
        let ttl = Self::ttl(cfg);
        let started = Instant::now();
        let mut replace = String::new();
        let mut said = false;
        loop {
            let held: String =
                self.scripts[0].key(&self.key).arg(&self.value).arg(ttl.as_millis() as u64).arg(&replace).invoke(c)?;
            if held.is_empty() {
                if !replace.is_empty() {
                    log(&format!(
                        "took this host's identity over from its previous agent ({}), which died",
                        describe(&replace)
                    ));
                }
                return Ok(Claimed::Ours);
            }
            if Holder::of(&held).is_some_and(|h| h.died_here()) {
                replace = held;
                continue;
            }
            if started.elapsed() > ttl + cfg.heartbeat {
                return Ok(Claimed::HeldBy(describe(&held)));
            }
            if !said {
                log(&format!(
                    "this host's identity (host id {}) is held by another agent ({}): waiting up to {} s for its \
                     claim to lapse",
                    cfg.host_id,
                    describe(&held),
                    (ttl + cfg.heartbeat).as_secs()
                ));
                said = true;
            }
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(Claimed::Stopping);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Gives the claim up (a clean stop): a restarted agent need not wait for it to lapse.
    pub(super) fn release(&self, c: &mut redis::Connection) -> redis::RedisResult<()> {
        let _: i64 = self.scripts[2].key(&self.key).arg(&self.value).invoke(c)?;
        Ok(())
    }
}

impl<'a> Holder<'a> {
    fn of(claim: &'a str) -> Option<Holder<'a>> {
        let mut words = claim.split(' ').skip(1);
        let (boot, pid_ns, pid, machine) = (words.next()?, words.next()?, words.next()?, words.next()?);
        Some(Holder { boot, pid_ns, pid: pid.parse().ok()?, machine })
    }

    /// The agent ran on this machine (this boot, this PID namespace) and its process is gone.
    fn died_here(&self) -> bool {
        let alive = unsafe { libc::kill(self.pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        self.boot == first_word(&read_trimmed("/proc/sys/kernel/random/boot_id"))
            && self.pid_ns == pid_namespace()
            && self.pid > 0
            && !alive
    }
}

/// A claim, as people read it: the agent's process and machine.
fn describe(claim: &str) -> String {
    match Holder::of(claim) {
        Some(h) => format!("pid {} on machine {:?}", h.pid, h.machine),
        None => "an agent of an older version".into(),
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_default()
}

/// A word with no spaces (the claim's fields are separated by spaces); `-` for nothing.
fn first_word(text: &str) -> String {
    text.split_whitespace().next().unwrap_or("-").to_string()
}

fn pid_namespace() -> String {
    std::fs::read_link("/proc/self/ns/pid").map_or_else(|_| "-".into(), |p| first_word(&p.to_string_lossy()))
}

/// What one heartbeat learned.
pub(super) enum Beat {
    /// The member list (each report with its `host_id` and whether it is `live`), how many are live.
    Members(Vec<Value>, usize),
    /// Another agent took this host's identity: who.
    IdentityTaken(String),
}

/// Reports this host in the member list (renewing its claim) and reads who is live, by Redis's clock.
pub(super) fn heartbeat(link: &mut Link, claimant: &Claimant) -> std::result::Result<Beat, Failure> {
    let Link { store, cfg, names, conn: c, .. } = link;
    let report = json!({
        "host": cfg.host,
        "position": store.fleet_position()?,
        "version": env!("CARGO_PKG_VERSION"),
    });
    let (now, held, fields): (i64, String, Vec<String>) = claimant.scripts[1]
        .key(&names.members)
        .key(&claimant.key)
        .arg(&cfg.host_id)
        .arg(report.to_string())
        .arg(&claimant.value)
        .arg(Claimant::ttl(cfg).as_millis() as u64)
        .invoke(*c)?;
    if now < 0 {
        return Ok(Beat::IdentityTaken(describe(&held)));
    }
    let (members, stale) = member_list(fields, now, cfg.heartbeat);
    if !stale.is_empty() {
        let _: i64 = c.hdel(&names.members, stale)?;
    }
    let live = members.iter().filter(|m| m["live"] == true).count();
    Ok(Beat::Members(members, live))
}

/// The member list from HGETALL's fields, each report with its `host_id` and whether it is `live` at
/// Redis's `now_ms`, sorted by name then id; and the ids of members to forget.
fn member_list(fields: Vec<String>, now_ms: i64, heartbeat: Duration) -> (Vec<Value>, Vec<String>) {
    let live_after = now_ms - i64::from(LIVE_HEARTBEATS) * heartbeat.as_millis() as i64;
    let mut stale = Vec::new();
    let mut list: Vec<Value> = Vec::new();
    let mut fields = fields.into_iter();
    while let (Some(id), Some(text)) = (fields.next(), fields.next()) {
        let mut v: Value = serde_json::from_str(&text).unwrap_or(json!({}));
        let seen = v["last_seen_ms"].as_i64();
        if seen.is_some_and(|t| t < now_ms - FORGET_AFTER_MS) {
            stale.push(id);
            continue;
        }
        if !v.is_object() {
            v = json!({});
        }
        if v["host"].is_null() {
            // A member list entry of an agent before 1.2: keyed by its name.
            v["host"] = json!(id);
        }
        v["host_id"] = json!(id);
        v["live"] = json!(seen.is_some_and(|t| t >= live_after));
        list.push(v);
    }
    list.sort_by(|a, b| (a["host"].as_str(), a["host_id"].as_str()).cmp(&(b["host"].as_str(), b["host_id"].as_str())));
    (list, stale)
}

/// Removes this host from the member list (a clean stop): the others stop counting it at their next
/// heartbeat.
pub(super) fn leave(link: &mut Link, claimant: &Claimant) -> redis::RedisResult<()> {
    let _: i64 = link.conn.hdel(&link.names.members, &link.cfg.host_id)?;
    claimant.release(link.conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_is_judged_by_redis_clock_and_old_members_are_forgotten() {
        let now = 1_800_000_000_000;
        let report = |name: &str, seen: i64| json!({"host": name, "last_seen_ms": seen}).to_string();
        let fields = vec![
            "id-b".into(),
            report("web", now - 500),
            "id-a".into(),
            report("web", now - 3_500),
            "gone".into(),
            report("old", now - FORGET_AFTER_MS - 1),
            "web2".into(),
            json!({"last_seen_ms": now}).to_string(),
        ];
        let (list, stale) = member_list(fields, now, Duration::from_secs(1));
        assert_eq!(stale, ["gone"]);
        let summary: Vec<(&str, &str, bool)> = list
            .iter()
            .map(|m| (m["host"].as_str().unwrap(), m["host_id"].as_str().unwrap(), m["live"] == true))
            .collect();
        assert_eq!(summary, [("web", "id-a", false), ("web", "id-b", true), ("web2", "web2", true)]);
    }

    #[test]
    fn a_claim_names_its_process_and_machine() {
        let cfg = Config {
            redis_url: String::new(),
            redis_password: None,
            ca_file: None,
            fleet: "prod".into(),
            host: "a".into(),
            host_id: "0123".into(),
            secret: super::super::Secret::new(b"0123456789abcdef"),
            max_log: 100,
            heartbeat: Duration::from_secs(1),
            when_down: super::super::WhenDown::Refuse,
            allow_evicting_redis: false,
        };
        let me = Claimant::new(&cfg).unwrap();
        assert_eq!(me.key, "ms-auth:{prod}:agent:0123");
        let holder = Holder::of(&me.value).unwrap();
        assert_eq!(holder.pid, std::process::id() as i32);
        assert!(!holder.died_here(), "this process is alive");
        let dead = me.value.replace(&format!(" {} ", std::process::id()), " 999999999 ");
        assert!(Holder::of(&dead).unwrap().died_here(), "{dead}");
        let elsewhere =
            me.value.replacen(' ', " another-boot-id-", 1).replace(&format!(" {} ", std::process::id()), " 999999999 ");
        assert!(!Holder::of(&elsewhere).unwrap().died_here(), "another machine's agent is never taken for dead");
        assert!(describe(&me.value).starts_with(&format!("pid {} on machine", std::process::id())));
    }
}
