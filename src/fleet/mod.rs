//! Fleet mode: several hosts, each with its own store, kept to one policy through Redis (or Valkey).
//!
//! Server processes never talk to the network: they check against their host's store as always. One
//! agent per host (`ms-auth fleet sync`, [`agent`]) is the host's only connection to Redis. Every admin
//! change made on a member host is caught in the database by triggers (an outbox, in the change's own
//! transaction), published by that host's agent to one Redis Stream (the fleet's change log, one total
//! order), and applied by every agent to its own store, its own changes included, in log order. A change
//! is the whole new state of one record (a key, a plan, the policies), so applying it twice changes
//! nothing and every host that applied the log up to a point holds the same records; a revocation is
//! never undone by an older change (a revoked key stays revoked). Redis also keeps the newest change of
//! every record in a hash: a host that is new, or whose position the log has trimmed past, starts from it.
//!
//! Every change is signed with the fleet's secret (HMAC-SHA256), and agents refuse what is unsigned or
//! badly signed: write access to Redis alone cannot mint a key or lift a revocation. The log carries key
//! digests, never a plaintext key.
//!
//! Fleet mode across the layers (imports point down): in the core, `gcra` shares a key's rate among
//! the live hosts (`RateLimit::share_among`) and `policy` counts a quota only within this host's lease
//! (`Allowance`, `decide_within`); in `counters`, `lease.rs` keeps each cell's two lease words and the
//! header the number of hosts sharing rates; in `store`, `schema.rs` holds the migrations whose triggers
//! fill the outbox, and `store/fleet/` the `Change` this log carries, membership, the outbox and applying
//! changes (`replica.rs`) and the other hosts' daily usage (`usage.rs`); here, `link.rs` holds what the
//! agent's parts share (`Config`, the Redis names and scripts, `Health`, `Failure`, and `Link`, all that
//! one round works with), `connect.rs` reaches Redis, `changelog.rs` publishes the outbox and applies the
//! log, `quota.rs` sizes quota leases by demand, `lease_hash.rs` keeps them in Redis (signed, checked
//! for loss and rollback; their content in `lease_state.rs`, the recovery in `lease_epoch.rs`), `usage.rs` exchanges daily usage, and
//! `agent.rs` runs them in a loop;
//! in `src/bin/ms-auth/fleet.rs`, the `ms-auth fleet` commands start the agent and show its status.

pub mod agent;
mod changelog;
mod connect;
mod lease_epoch;
mod lease_hash;
mod lease_state;
mod link;
pub mod quota;
mod secret;
pub mod usage;

pub use crate::store::{Change, KINDS};
pub use link::Config;
pub use secret::Secret;

/// What a host may admit while Redis is unreachable, once its quota leases run out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenDown {
    /// Refuse (the default): a host spends only what it holds, so the fleet never admits more than a
    /// quota, at the price of refusing once a host's lease is spent.
    Refuse,
    /// Each host adds its share (1/N of the live members) of what the fleet had not leased when the
    /// host last heard about the quota from Redis: exact when the hosts' views were current, else
    /// over by at most what other hosts were granted after this one last heard.
    Share,
}
