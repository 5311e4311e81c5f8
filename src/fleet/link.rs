//! What the agent's parts share: its configuration, the names of the fleet's Redis keys, its Lua
//! scripts, what it counts, how a round fails, and [`Link`], everything one round works with. The parts
//! (`changelog`, `quota`, `lease_hash`, `usage`, `connect`, `agent`) import these from here, never from each other's
//! loop.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Secret, WhenDown};
use crate::error::Error;
use crate::store::Store;

pub struct Config {
    /// `redis://[user:password@]host:port[/db]` or `rediss://…` for TLS.
    pub redis_url: String,
    /// The password for Redis when it is not in the URL (read from a file or the environment, so that it
    /// is not on the agent's command line for `ps` to show).
    pub redis_password: Option<String>,
    /// The CA certificate (PEM) that signed the server's, for `rediss://`.
    pub ca_file: Option<PathBuf>,
    pub fleet: String,
    /// This host's name in the fleet: a label for people (two hosts may share one).
    pub host: String,
    /// This host's identity in the fleet (`Store::fleet_host_id`): what its leases, member entry and
    /// identity claim are keyed by.
    pub host_id: String,
    pub secret: Secret,
    /// Entries the log keeps (about; older ones are trimmed, the state hash covers them).
    pub max_log: usize,
    /// How often the agent reports itself (and reads the member list).
    pub heartbeat: Duration,
    /// What a host admits while Redis is unreachable, once its leases run out.
    pub when_down: WhenDown,
    /// Run against a Redis whose `maxmemory-policy` may evict keys (refused by default: an evicted quota
    /// hash is recovered, but a quota is then exact only if every host holding a lease re-asserts it).
    pub allow_evicting_redis: bool,
}

/// The Redis keys of the change log and the member list, for one fleet.
pub(super) struct Names {
    pub(super) log: String,
    pub(super) state: String,
    pub(super) members: String,
    /// Each origin's newest seq sent (signed), so that the deletion of its newest entries shows.
    pub(super) heads: String,
    /// Requests to an origin to send its entries again from a seq (a host misses them).
    pub(super) repair: String,
}

impl Names {
    pub(super) fn of(fleet: &str) -> Names {
        Names {
            log: format!("ms-auth:{{{fleet}}}:log"),
            state: format!("ms-auth:{{{fleet}}}:state"),
            members: format!("ms-auth:{{{fleet}}}:members"),
            heads: format!("ms-auth:{{{fleet}}}:heads"),
            repair: format!("ms-auth:{{{fleet}}}:repair"),
        }
    }
}

/// What the agent counts and reports (`ms-auth fleet status`).
#[derive(Default)]
pub(super) struct Health {
    pub(super) redis_ok: bool,
    pub(super) last_error: Option<String>,
    pub(super) published: u64,
    pub(super) applied: u64,
    pub(super) refused: u64,
    pub(super) last_id: Option<String>,
    pub(super) members: Value,
    /// Live members sharing each key's rate limit.
    pub(super) rate_sharers: usize,
    /// Whether the position was compared with the log since the last (re)connection.
    pub(super) position_checked: bool,
    /// The change log's upkeep: heads, gaps, repairs, the state hash's sweep (`changelog`, `repair`).
    pub(super) log: LogUpkeep,
    /// The quota hashes: the fleet's epoch, the states last verified, forgeries and losses counted.
    pub(super) leases: super::lease_hash::LeaseWatch,
    /// The lease thread's `leases.status()`, as the agent's loop last read it (for `fleet status`).
    pub(super) lease_report: Value,
}

/// What the agent keeps between rounds to look after the change log.
#[derive(Default)]
pub(super) struct LogUpkeep {
    /// This host's identity in the fleet (the origin of its changes), once read from the store.
    pub(super) origin: Option<String>,
    /// When the next upkeep round is due (about every second).
    pub(super) next_round: Option<Instant>,
    /// How many times a read of the log reached its end: an entry announced before then is in what was read.
    pub(super) reached_end: u64,
    /// The heads read at the previous upkeep round, with `reached_end` then: confirmed once the log was
    /// read to its end after.
    pub(super) heads_before: Vec<(crate::store::Head, u64)>,
    /// Origins whose entry in the heads hash was refused at the last round (logged once).
    pub(super) bad_heads: Vec<String>,
    /// This host's head (seq, floor) as last written to the heads hash.
    pub(super) announced: Option<(i64, i64)>,
    /// This host's highest seq sent, in this run.
    pub(super) sent_head: i64,
    /// When this host last asked each origin with a gap to send its entries again.
    pub(super) asked: std::collections::HashMap<String, Instant>,
    /// When this host last answered a request to send its entries again.
    pub(super) answered_at: Option<Instant>,
    /// When this host last published every record again for a host that asked.
    pub(super) republished_at: Option<Instant>,
    /// Where the sweep of the state hash is: in this host's records, and in the hash (HSCAN's cursor).
    pub(super) sweep_after: Option<(String, String)>,
    pub(super) scan_cursor: u64,
    /// The SHA-1 of the state hash's entry of each field as last verified (signed, not older than held).
    pub(super) verified: std::collections::HashMap<String, String>,
    /// Entries skipped as stale, in this run.
    pub(super) stale: u64,
    /// State entries repaired (put back) and applied (newer than held) by the sweep, in this run.
    pub(super) state_repaired: u64,
    pub(super) state_applied: u64,
}

/// The agent's Lua scripts (loaded once per connection by EVALSHA, sent whole when Redis lacks them).
pub(super) struct Scripts {
    pub(super) publish: redis::Script,
    pub(super) leases: super::lease_hash::LeaseScripts,
}

/// Why a round stopped: Redis (reconnect) or the store (wait and retry).
#[derive(Debug)]
pub(crate) enum Failure {
    Redis(redis::RedisError),
    Store(Error),
}

impl From<redis::RedisError> for Failure {
    fn from(e: redis::RedisError) -> Failure {
        Failure::Redis(e)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Store(e)
    }
}

/// Everything one round of the agent works with, while it holds a connection: the host's store, the
/// configuration, the fleet's Redis names and scripts, the connection, and what the agent counts.
pub(super) struct Link<'a> {
    pub(super) store: &'a Store,
    pub(super) cfg: &'a Config,
    pub(super) names: &'a Names,
    pub(super) scripts: &'a Scripts,
    pub(super) conn: &'a mut redis::Connection,
    pub(super) health: &'a mut Health,
}
