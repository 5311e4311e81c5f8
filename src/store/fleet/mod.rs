//! The store's side of fleet mode (the agent, which talks to Redis, is `crate::fleet`): the change
//! that the agent publishes and applies, membership, the outbox and applying changes (`replica`), the
//! other hosts' daily usage (`usage`), and the counters file's side of quota leases (`leases`). Only SQL
//! and the counters file here; the store knows nothing of Redis.

mod leases;
mod replica;
mod usage;

use serde::{Deserialize, Serialize};

pub use replica::{FleetQuota, Refused};
pub use usage::FleetUsageRow;
pub(crate) use usage::{others_days, others_totals, others_usage, this_host};

/// What a change is about, in the order a host starting from the fleet's state applies them (the
/// policies and plans a key names first; audit events are in the log only, not in the state).
pub const KINDS: [&str; 4] = ["policies", "plan", "key", "audit"];

/// One record's new state, as published to the change log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// One of [`KINDS`].
    pub kind: String,
    /// The record: a key id, a plan name, `policies`, or the origin's audit sequence number.
    pub id: String,
    /// The record's whole state, a JSON object (see `replica` for each kind's fields).
    pub body: String,
    /// The host whose store made the change.
    pub origin: String,
}
