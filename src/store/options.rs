//! How a store is opened: [`StoreOptions`] (from the C ABI's options JSON) and [`Durability`].

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::counters::MAX_FLUSH_INTERVAL;
use crate::error::{Error, Result};
use crate::gcra::RateLimit;
use crate::spec;

pub const DEFAULT_LIFETIME_MS: i64 = 365 * 86_400_000;
pub const DEFAULT_RATE: RateLimit = RateLimit { limit: 60, window_ms: 60_000, burst: 60 };

#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Counts are written to the database at most this often (and on close).
    pub flush_interval: Duration,
    /// Lifetime of a key created without `expires_at_ms`; `None`: such keys never expire.
    pub default_lifetime_ms: Option<i64>,
    /// Rate limit of a key created without `rate_limit`; `None`: no rate limit.
    pub default_rate: Option<RateLimit>,
    /// How long a write waits for another process's write lock before failing with `MS_ERR_STORE`.
    pub busy_timeout: Duration,
    /// When counts reach the database.
    pub durability: Durability,
    /// Whether a path with no store yet gets a new one (the default); `false` opens an existing store
    /// only, and refuses any other path with `ErrStore` naming it, so that a mistyped path is an error
    /// rather than a new empty store.
    pub create: bool,
    /// Fleet mode: how long a check that finds this host out of lease of a quota the fleet has room in
    /// may wait for the agent to lease it some (it waits only while the agent is responsive, and usually
    /// for one Redis round trip); `Duration::ZERO`: never wait, answer `rate_limit_exceeded` at once.
    pub lease_wait: Duration,
}

/// The longest `lease_wait` a store accepts: a check must stay a short affair.
pub const MAX_LEASE_WAIT: Duration = Duration::from_millis(1000);

/// The options JSON of `ms_store_open_v2`: `{"flush_interval_ms": N, "durability": "batched" | "strict",
/// "busy_timeout_ms": N, "create": true | false, "lease_wait_ms": N}`, each optional (`null` is refused:
/// it is not a value of any of them).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreOptionsJson {
    pub flush_interval_ms: spec::Field<Value>,
    pub durability: spec::Field<Value>,
    pub busy_timeout_ms: spec::Field<Value>,
    pub create: spec::Field<Value>,
    pub lease_wait_ms: spec::Field<Value>,
}

/// Fields are checked in declaration order; the first wrong one is reported.
impl TryFrom<StoreOptionsJson> for StoreOptions {
    type Error = Error;

    fn try_from(json: StoreOptionsJson) -> Result<StoreOptions> {
        let mut options = StoreOptions::default();
        let ms = |v: Value, name: &str, max: u64| -> Result<Duration> {
            match v.as_u64() {
                Some(n) if n <= max => Ok(Duration::from_millis(n)),
                _ => Err(Error::invalid(format!("{name} must be an integer from 0 to {max}"))),
            }
        };
        if let Some(v) = json.flush_interval_ms.given() {
            options.flush_interval = ms(v, "flush_interval_ms", MAX_FLUSH_INTERVAL.as_millis() as u64)?;
        }
        if let Some(v) = json.durability.given() {
            options.durability = match v.as_str() {
                Some("batched") => Durability::Batched,
                Some("strict") => Durability::Strict,
                _ => return Err(Error::invalid("durability must be \"batched\" or \"strict\"")),
            }
        }
        if let Some(v) = json.busy_timeout_ms.given() {
            options.busy_timeout = ms(v, "busy_timeout_ms", 600_000)?;
        }
        if let Some(v) = json.create.given() {
            options.create = v.as_bool().ok_or_else(|| Error::invalid("create must be true or false"))?;
        }
        if let Some(v) = json.lease_wait_ms.given() {
            options.lease_wait = ms(v, "lease_wait_ms", MAX_LEASE_WAIT.as_millis() as u64)?;
        }
        Ok(options)
    }
}

impl StoreOptions {
    pub fn from_json(text: &str) -> Result<StoreOptions> {
        spec::parse_shape::<StoreOptionsJson>(text, "store options", "store options")?.try_into()
    }
}

impl Default for StoreOptions {
    fn default() -> StoreOptions {
        StoreOptions {
            flush_interval: Duration::from_secs(1),
            default_lifetime_ms: Some(DEFAULT_LIFETIME_MS),
            default_rate: Some(DEFAULT_RATE),
            busy_timeout: Duration::from_secs(5),
            durability: Durability::Batched,
            create: true,
            lease_wait: Duration::from_millis(50),
        }
    }
}

/// How counts reach the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Counts are in the shared counters file at once (they survive any process crash) and in the
    /// database at most one flush interval later (what a power loss can take).
    Batched,
    /// Every admitted check is also written to the database in its own transaction before it returns.
    Strict,
}
