//! Quotas exact fleet-wide, by leases (the agent's side; the check's side is `policy::Allowance`).
//!
//! For each key with a quota and each period, Redis holds one hash, `ms-auth:FLEET:quota:KEY:PERIOD`, with
//! per host `lease:HOST` (how much of the quota the host may count, cumulative, never lowered except by
//! the host handing back what it did not use) and `used:HOST` (what it counted, absolute: replays and
//! restarts never double count). One script grants atomically, so the leases of all hosts never add up
//! to more than the quota, and a host's checks never count past its lease: **the fleet never admits more
//! than the quota**, with or without Redis, across partitions and crashes. The price is under-admission:
//! at most the leases outstanding and unused at the period's end (each host's last chunk).
//!
//! Chunks follow each host's demand: the agent measures how fast each key is used on its host and asks for
//! about a second of it (1% of the quota at first, doubling each round the host ran out), topping up when
//! less than half a chunk is left; the script gives at most half of what is left of the quota, so the last
//! units are shared among the hosts that ask.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use crate::store::{FleetQuota, Store};

/// Grants a host more of a key's quota for one period. KEYS[1]: the period's hash. ARGV: host, amount
/// wanted, the quota, what the host has counted, what the host holds locally (re-asserted after Redis
/// lost its data), the hash's time to live in seconds. Returns {the host's lease, 1 if the quota is spent,
/// the leases of all hosts}.
pub const GRANT: &str = r#"
local host, want, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local used, held, ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local total, mine = 0, 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, 6) == 'lease:' then
    local v = tonumber(fields[i + 1])
    total = total + v
    if fields[i] == 'lease:' .. host then mine = v end
  end
end
-- A lease is never below what the host holds or has counted (Redis may have lost it).
local floor = math.max(mine, held, used)
total = total - mine + floor
local left = limit - total
local grant = 0
if left > 0 and want > 0 then grant = math.min(want, math.max(1, math.floor(left / 2))) end
local lease = floor + grant
redis.call('HSET', KEYS[1], 'lease:' .. host, lease, 'used:' .. host, used)
redis.call('EXPIRE', KEYS[1], ttl)
local spent = 0
if left - grant <= 0 then spent = 1 end
return {lease, spent, total + grant}
"#;

/// Hands back what a host holds beyond what it counted (at SIGTERM).
pub const HAND_BACK: &str = r#"
redis.call('HSET', KEYS[1], 'lease:' .. ARGV[1], ARGV[2], 'used:' .. ARGV[1], ARGV[2])
return 1
"#;

/// The agent's side of every lease this host holds: how much to ask for next, from demand.
#[derive(Default)]
pub struct Leases {
    /// (owner, period start) → (chunk, used at the last round, when)
    seen: HashMap<(String, i64), (i64, i64, Instant)>,
    /// When a spent quota is asked again (another host may have handed some back).
    next_retry_of_spent: HashMap<(String, i64), Instant>,
    /// Set on every (re)connection: every lease held is re-asserted once (asking for nothing more), so
    /// that a Redis that lost its data learns them before it grants anyone else more.
    pub reassert_all: bool,
    /// The keys with a quota, and the admin generation they were read at (read again when it changes).
    pub owners: Vec<(String, crate::key::KeyDigest)>,
    pub owners_generation: Option<i64>,
    /// (owner, period start) → the leases of all hosts when this host last heard (for `WhenDown::Share`).
    pub fleet_leased: HashMap<(String, i64), i64>,
    /// The quotas whose unleased rest this host took its share of during the current outage.
    shared_while_down: HashSet<(String, i64)>,
    no_asking_until: Option<Instant>,
}

/// A first ask takes 1% of the quota, at most this much: a big quota is not tied up by a quiet host (the
/// chunk then follows the host's rate).
pub const FIRST_CHUNK_MAX: i64 = 1000;

/// After an outage, how long hosts only re-assert their leases: longer than an agent's longest
/// reconnection backoff (2 s) and a round.
pub const REASSERT_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// The leases' Redis hash of a key's quota in one period.
pub fn hash_name(fleet: &str, owner: &str, period_start_ms: i64) -> String {
    format!("ms-auth:{fleet}:quota:{owner}:{period_start_ms}")
}

impl Leases {
    /// How much to ask for: a second of this host's recent rate for the key, doubled each round the host
    /// ran out (so a burst ramps up in a few rounds); a first ask takes 1% of the quota, at least 1 and at
    /// most [`FIRST_CHUNK_MAX`].
    pub fn chunk(&mut self, q: &FleetQuota) -> i64 {
        let now = Instant::now();
        let c = &q.quota;
        let first = (c.limit / 100).clamp(1, FIRST_CHUNK_MAX);
        if !c.wanted {
            // Not used here this period: nothing to learn (and an empty lease is not a host running out).
            return first;
        }
        let entry = self.seen.entry((q.owner.clone(), c.period_start_ms)).or_insert((first, c.used, now));
        let elapsed = now.duration_since(entry.2).as_secs_f64();
        if elapsed >= 0.05 {
            let per_second = ((c.used - entry.1).max(0) as f64 / elapsed).ceil() as i64;
            let ran_out = c.used >= c.lease;
            entry.0 = if ran_out { (entry.0 * 2).max(per_second) } else { per_second.max(1) };
            entry.0 = entry.0.clamp(1, c.limit.max(1));
            entry.1 = c.used;
            entry.2 = now;
        }
        entry.0
    }

    /// True when the host should ask for more of this key now.
    pub fn wants_more(&mut self, q: &FleetQuota, chunk: i64) -> bool {
        let c = &q.quota;
        if !c.wanted || c.lease - c.used > chunk / 2 {
            return false;
        }
        if !c.spent {
            return true;
        }
        // Spent: ask again now and then, in case another host handed some back.
        let key = (q.owner.clone(), c.period_start_ms);
        let now = Instant::now();
        match self.next_retry_of_spent.get(&key) {
            Some(at) if *at > now => false,
            _ => {
                self.next_retry_of_spent.insert(key, now + std::time::Duration::from_secs(1));
                true
            }
        }
    }

    /// `WhenDown::Share`, Redis unreachable: raises this host's lease of every quota it counts by its
    /// share (1/`members`) of what the fleet had not leased when this host last heard, once per outage
    /// and period, for the keys its checks use. A quota this host never asked about counts as wholly
    /// unleased. Returns how many
    /// leases were raised.
    pub fn share_while_down(&mut self, store: &Store, members: usize, now_ms: i64) -> crate::error::Result<usize> {
        let mut raised = 0;
        for q in store.fleet_quota_view(now_ms)? {
            let c = &q.quota;
            let key = (q.owner.clone(), c.period_start_ms);
            if !c.wanted || !self.shared_while_down.insert(key.clone()) {
                continue;
            }
            let leased = self.fleet_leased.get(&key).copied().unwrap_or(c.lease).max(c.lease);
            let share = (c.limit - leased).max(0) / members.max(1) as i64;
            if share > 0 {
                store.fleet_set_lease(&q.digest, c.period_start_ms, c.lease + share, false, false)?;
                self.fleet_leased.insert(key, leased + share);
                raised += 1;
            }
        }
        Ok(raised)
    }

    /// Connected to Redis: every lease held is re-asserted (see `reassert_all`). After an outage (not at
    /// the agent's start) no more is asked for during [`REASSERT_GRACE`], so that the other hosts, which
    /// reconnect within their backoff, re-assert what they hold (a lease raised by `share_while_down`, or
    /// one a Redis restarted empty or from an older AOF lost) before anyone is granted more.
    pub fn reconnected(&mut self, after_outage: bool) {
        self.reassert_all = true;
        self.shared_while_down.clear();
        if after_outage {
            self.no_asking_until = Some(Instant::now() + REASSERT_GRACE);
        }
    }

    /// False while the hosts re-assert their leases after an outage.
    pub fn may_ask(&mut self) -> bool {
        match self.no_asking_until {
            Some(until) if Instant::now() < until => false,
            _ => {
                self.no_asking_until = None;
                true
            }
        }
    }

    /// Forgets periods that ended.
    pub fn forget_before(&mut self, period_start_ms: i64) {
        self.seen.retain(|(_, start), _| *start >= period_start_ms);
        self.fleet_leased.retain(|(_, start), _| *start >= period_start_ms);
        self.next_retry_of_spent.retain(|(_, start), _| *start >= period_start_ms);
    }
}
