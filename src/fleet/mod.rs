//! Fleet mode: several hosts, each with its own store, kept to one policy through Redis (or Valkey).
//!
//! Server processes never talk to the network: they check against their host's store as always. One
//! agent per host (`ms-auth fleet sync`, [`agent`]) is the host's only connection to Redis. Every admin
//! change made on a member host is caught in the database by triggers (an outbox, in the change's own
//! transaction), given its place before it is sent (its origin's next seq, 1, 2, 3…, and its record's
//! next version), published by that host's agent to one Redis Stream (the fleet's change log), and
//! applied by every agent to its own store, its own changes included. A change is the whole new state of
//! one record (a key, a plan, the policies), and it is applied only if its `(version, origin)` is newer
//! than what the host holds of the record: a change replayed, sent again, or added back out of order
//! changes nothing, and every host ends with the same newest change; a revocation is never undone (a
//! revoked key stays revoked). Redis also keeps the newest change of every record in a hash: a host that
//! is new, or whose position the log has trimmed past, starts from it and the whole log. Per origin, the
//! seqs applied and the origin's announced newest seq show entries deleted from the log (a gap, shown by
//! `fleet status` and the metrics), which the origin sends again from its journal; every agent sweeps
//! the state hash and puts back the newest signed change where it finds an older one.
//!
//! Every change is signed with the fleet's secret (HMAC-SHA256), what orders it included, and agents
//! refuse what is unsigned or badly signed: write access to Redis alone cannot mint a key, lift a
//! revocation or roll a record back. The log carries key digests, never a plaintext key.
//!
//! A host is known to the fleet by a random id its store made when it joined (its name is a label): its
//! leases and member entry are keyed by it, and one agent at a time may run with it (`members`).
//!
//! Fleet mode across the layers (imports point down): in the core, `gcra` shares a key's rate among
//! the live hosts (`RateLimit::share_among`) and `policy` counts a quota only within this host's lease
//! (`Allowance`, `decide_within`); in `counters`, `lease.rs` keeps each cell's two lease words, `cue.rs`
//! the checks' cue to the agent's lease thread and their bounded wait for it, and `share.rs` the
//! header's share of rates (how many live hosts share, until when: it lapses when the agent stops
//! renewing it); in `store`, `schema.rs` holds the migrations whose triggers fill the outbox, and
//! `store/fleet/` the `Change` this log carries, membership (`replica.rs`), the journal of what this
//! host sent (`journal.rs`), applying changes when newer and the gaps (`versions.rs`, `apply.rs`), this
//! host's identity and share of rates (`host.rs`), the lease thread's side of the counters file
//! (`lease.rs`) and the other hosts' daily usage (`usage.rs`); here, `link.rs` holds what the agent's
//! parts share (`Config`, the Redis names and scripts, `Health`, `Failure`, and `Link`, all that one
//! round works with), `connect.rs` reaches Redis, `secret.rs` holds the fleet's secret, `members.rs`
//! claims this host's identity and keeps the member list, `changelog.rs` publishes the journal and
//! applies the log, `repair.rs` catches up from the state hash and keeps the log whole, `quota.rs`
//! sizes quota leases by demand, `lease_hash.rs` keeps them in Redis (signed, checked for loss and
//! rollback; their content in `lease_state.rs`, the recovery in `lease_epoch.rs`) (`lease_thread.rs` runs it beside the agent's loop, woken by a check that runs out),
//! `usage.rs` exchanges daily usage, and `agent.rs` runs them in a loop; in `src/bin/ms-auth/fleet.rs`,
//! the `ms-auth fleet` commands start the agent, show its status and give a copied store a new identity.

pub mod agent;
mod changelog;
mod connect;
mod lease_epoch;
mod lease_hash;
mod lease_state;
mod lease_thread;
mod link;
mod members;
pub mod quota;
mod repair;
mod round;
mod secret;
pub mod usage;

pub use crate::store::{Change, KINDS};
pub use link::Config;
pub use secret::{private_file, Secret};

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
