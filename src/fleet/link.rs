//! What the agent's parts share: its configuration, the names of the fleet's Redis keys, its Lua
//! scripts, what it counts, how a round fails, and [`Link`], everything one round works with. The parts
//! (`changelog`, `quota`, `lease_hash`, `usage`, `connect`, `agent`) import these from here, never from each other's
//! loop.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::{Secret, WhenDown};
use crate::error::Error;
use crate::store::Store;

pub struct Config {
    /// `redis://[user:password@]host:port[/db]` or `rediss://…` for TLS.
    pub redis_url: String,
    /// The CA certificate (PEM) that signed the server's, for `rediss://`.
    pub ca_file: Option<PathBuf>,
    pub fleet: String,
    pub host: String,
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
}

impl Names {
    pub(super) fn of(fleet: &str) -> Names {
        Names {
            log: format!("ms-auth:{fleet}:log"),
            state: format!("ms-auth:{fleet}:state"),
            members: format!("ms-auth:{fleet}:members"),
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
    /// The quota hashes: the fleet's epoch, the states last verified, forgeries and losses counted.
    pub(super) leases: super::lease_hash::LeaseWatch,
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
