//! How a store is opened: [`StoreOptions`] (from the C ABI's options JSON) and [`Durability`].

use std::time::Duration;

use serde_json::Value;

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
}

impl StoreOptions {
    /// `{"flush_interval_ms": N, "durability": "batched" | "strict", "busy_timeout_ms": N}`, each optional.
    pub fn from_json(text: &str) -> Result<StoreOptions> {
        let obj = spec::parse_object(text, "store options")?;
        let mut options = StoreOptions::default();
        let ms = |v: &Value, name: &str, max: u64| -> Result<Duration> {
            match v.as_u64() {
                Some(n) if n <= max => Ok(Duration::from_millis(n)),
                _ => Err(Error::invalid(format!("{name} must be an integer from 0 to {max}"))),
            }
        };
        for (name, value) in &obj {
            match name.as_str() {
                "flush_interval_ms" => options.flush_interval = ms(value, name, 3_600_000)?,
                "busy_timeout_ms" => options.busy_timeout = ms(value, name, 600_000)?,
                "durability" => {
                    options.durability = match value.as_str() {
                        Some("batched") => Durability::Batched,
                        Some("strict") => Durability::Strict,
                        _ => return Err(Error::invalid("durability must be \"batched\" or \"strict\"")),
                    }
                }
                other => return Err(Error::invalid(format!("unknown field {other:?} in store options"))),
            }
        }
        Ok(options)
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
