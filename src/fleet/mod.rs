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
//! log, `quota.rs` leases quotas, `usage.rs` exchanges daily usage, and `agent.rs` runs them in a loop;
//! in `src/bin/ms-auth/fleet.rs`, the `ms-auth fleet` commands start the agent and show its status.

pub mod agent;
mod changelog;
mod connect;
mod link;
pub mod quota;
pub mod usage;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};
pub use crate::store::{Change, KINDS};
use crate::text::{hex, unhex};
pub use link::Config;

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

/// The fields a change's signature covers, in order.
fn change_parts(change: &Change) -> [&str; 4] {
    [&change.kind, &change.id, &change.body, &change.origin]
}

/// A fleet's secret, read from a file named on the command line.
pub struct Secret(Vec<u8>);

impl Secret {
    /// At least 16 bytes (surrounding whitespace ignored): a short secret could be guessed offline from
    /// one signed change.
    pub fn from_file(path: &std::path::Path) -> Result<Secret> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::invalid(format!("cannot read the fleet secret {}: {e}", path.display())))?;
        let text = String::from_utf8_lossy(&bytes);
        let trimmed = text.trim();
        if trimmed.len() < 16 {
            return Err(Error::invalid(format!(
                "the fleet secret in {} is shorter than 16 bytes (generate one with `head -c 32 /dev/urandom | base64`)",
                path.display()
            )));
        }
        Ok(Secret(trimmed.as_bytes().to_vec()))
    }

    pub fn new(bytes: &[u8]) -> Secret {
        Secret(bytes.to_vec())
    }

    fn mac(&self, fleet: &str, parts: &[&str]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length");
        // Length-prefixed fields: no two different messages sign the same bytes.
        for part in std::iter::once(&fleet).chain(parts) {
            mac.update(&(part.len() as u64).to_le_bytes());
            mac.update(part.as_bytes());
        }
        mac
    }

    /// The signature of a change in a fleet, hex.
    pub fn sign(&self, fleet: &str, change: &Change) -> String {
        self.sign_parts(fleet, &change_parts(change))
    }

    /// True when `signature` is this secret's signature of the change (compared in constant time).
    pub fn verify(&self, fleet: &str, change: &Change, signature: &str) -> bool {
        self.verify_parts(fleet, &change_parts(change), signature)
    }

    /// The signature of any message made of `parts` (a usage report), hex.
    pub fn sign_parts(&self, fleet: &str, parts: &[&str]) -> String {
        hex(&self.mac(fleet, parts).finalize().into_bytes())
    }

    pub fn verify_parts(&self, fleet: &str, parts: &[&str], signature: &str) -> bool {
        match unhex(signature) {
            Some(bytes) => self.mac(fleet, parts).verify_slice(&bytes).is_ok(),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change() -> Change {
        Change { kind: "key".into(), id: "key_1".into(), body: r#"{"revoked_at_ms":null}"#.into(), origin: "a".into() }
    }

    #[test]
    fn a_signature_covers_every_field_and_the_fleet() {
        let secret = Secret::new(b"0123456789abcdef");
        let sig = secret.sign("prod", &change());
        assert!(secret.verify("prod", &change(), &sig));
        assert!(!secret.verify("staging", &change(), &sig));
        assert!(!Secret::new(b"another secret!!").verify("prod", &change(), &sig));
        for tamper in [
            |c: &mut Change| c.kind = "plan".into(),
            |c: &mut Change| c.id = "key_2".into(),
            |c: &mut Change| c.body = r#"{"revoked_at_ms":1}"#.into(),
            |c: &mut Change| c.origin = "b".into(),
        ] {
            let mut c = change();
            tamper(&mut c);
            assert!(!secret.verify("prod", &c, &sig));
        }
        assert!(!secret.verify("prod", &change(), ""));
        assert!(!secret.verify("prod", &change(), "zz"));
    }
}
