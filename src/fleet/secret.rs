//! The fleet's secret: what signs every change, usage row and lease the agents exchange through Redis
//! (HMAC-SHA256), so that write access to Redis alone cannot mint a key, lift a revocation or forge a
//! count.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};
use crate::store::Change;
use crate::text::{hex, unhex};

/// The format of the change log's entries this version writes and reads (their `v` field): every agent
/// of a fleet runs a version that speaks it (entries of another format are refused, unsigned for it).
pub(crate) const CHANGE_FORMAT: &str = "2";

/// The fields a change's signature covers, in order, after a tag that names the format (so no other
/// message the secret signs, a usage report or a head, can pass for a change): everything that orders it
/// (origin, seq, version) included, so that no entry can be moved to another place in the order.
fn change_parts<'a>(change: &'a Change, seq: &'a str, version: &'a str) -> [&'a str; 8] {
    ["change/2", &change.kind, &change.id, &change.body, &change.origin, &change.host, seq, version]
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
        let (seq, version) = (change.seq.to_string(), change.version.to_string());
        self.sign_parts(fleet, &change_parts(change, &seq, &version))
    }

    /// True when `signature` is this secret's signature of the change (compared in constant time).
    pub fn verify(&self, fleet: &str, change: &Change, signature: &str) -> bool {
        let (seq, version) = (change.seq.to_string(), change.version.to_string());
        self.verify_parts(fleet, &change_parts(change, &seq, &version), signature)
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
        Change {
            kind: "key".into(),
            id: "key_1".into(),
            body: r#"{"revoked_at_ms":null}"#.into(),
            origin: "a".into(),
            host: "web-1".into(),
            seq: 7,
            version: 3,
        }
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
            |c: &mut Change| c.host = "web-2".into(),
            |c: &mut Change| c.seq = 8,
            |c: &mut Change| c.version = 4,
            // Fields that run into each other are still told apart (length-prefixed).
            |c: &mut Change| {
                c.origin = "aw".into();
                c.host = "eb-1".into();
            },
        ] {
            let mut c = change();
            tamper(&mut c);
            assert!(!secret.verify("prod", &c, &sig));
        }
        // A change is not any other message the secret signs with the same fields.
        let c = change();
        let parts = [c.kind.as_str(), &c.id, &c.body, &c.origin, &c.host, "7", "3"];
        assert!(!secret.verify("prod", &c, &secret.sign_parts("prod", &parts)));
        assert!(!secret.verify("prod", &change(), ""));
        assert!(!secret.verify("prod", &change(), "zz"));
    }
}
