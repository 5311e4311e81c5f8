//! The store's side of fleet mode (the agent, which talks to Redis, is `crate::fleet`): the change
//! that the agent publishes and applies, membership and the agent's report (`replica`), what this host
//! sent to the change log (`journal`), applying changes only when they are newer than what this host
//! holds, and which origins' entries it misses (`versions`), checking and writing each kind of record
//! (`apply`), this host's identity and its share of rates (`host`), the lease thread's cue and liveness
//! (`lease`), the counters file's side of quota leases (`leases`), and the other hosts' daily usage (`usage`). Only SQL and the counters file here; the store
//! knows nothing of Redis.

mod apply;
mod host;
mod journal;
mod lease;
mod leases;
mod replica;
mod usage;
mod versions;

use serde::{Deserialize, Serialize};

pub use replica::FleetQuota;
pub use usage::FleetUsageRow;
pub(crate) use usage::{others_days, others_totals, others_usage, this_host};
pub(crate) use versions::log_health;
pub use versions::{Applied, Gap, Head, LogHealth, Refused, Stale};

/// What a change is about, in the order a host starting from the fleet's state applies them (the
/// policies and plans a key names first; audit events are in the log only, not in the state).
pub const KINDS: [&str; 4] = ["policies", "plan", "key", "audit"];

/// One record's new state, as published to the change log: everything here is signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// One of [`KINDS`].
    pub kind: String,
    /// The record: a key id, a plan name, `policies`, or the origin's audit sequence number.
    pub id: String,
    /// The record's whole state, a JSON object (see `apply` for each kind's fields).
    pub body: String,
    /// The identity of the host whose store made the change (its random id, `Store::fleet_host_id`).
    pub origin: String,
    /// That host's name when it made the change: a label for people (logs, the audit trail's host).
    pub host: String,
    /// The change's place among its origin's changes: 1, 2, 3… with no hole, so a host sees what it misses.
    pub seq: i64,
    /// The record's version: one more than the newest its origin held when it made the change (0 for an
    /// audit event, which is history, not a record). Of two changes of a record, the one with the higher
    /// `(version, origin)` wins on every host.
    pub version: i64,
}

impl Change {
    /// The order of two changes of one record: by version, ties by origin (every host decides alike).
    pub fn order(&self) -> (i64, &str) {
        (self.version, &self.origin)
    }
}

/// A change with its signature (hex HMAC-SHA256 with the fleet's secret, `fleet::Secret`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    pub change: Change,
    pub sig: String,
}
