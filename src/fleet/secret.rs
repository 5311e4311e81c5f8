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

/// A fleet's secret, read from a file named on the command line; during a rotation, with the secret it
/// replaces, still accepted (see docs/fleet.md, "Rotating the secret").
pub struct Secret {
    current: Vec<u8>,
    /// Also accepted, never signed with.
    previous: Option<Vec<u8>>,
}

/// The shortest secret accepted: a shorter one could be guessed offline from one signed change.
const MIN_LEN: usize = 16;

impl Secret {
    /// The secret's bytes: a text file (valid UTF-8) without the whitespace around it (a base64 line and
    /// its newline), any other file as it is; at least 16 bytes. Refused when the file may be read by
    /// its group or others, as ssh refuses such a private key: whoever reads it can sign for the fleet.
    pub fn from_file(path: &std::path::Path) -> Result<Secret> {
        let bytes = private_file(path, "the fleet secret")?;
        if bytes.len() < MIN_LEN {
            return Err(Error::invalid(format!(
                "the fleet secret in {} is shorter than {MIN_LEN} bytes (generate one with \
                 `head -c 32 /dev/urandom | base64`)",
                path.display()
            )));
        }
        Ok(Secret { current: bytes, previous: None })
    }

    /// A rotation's transition: signs with `self`, accepts what `previous` signed too.
    pub fn with_previous(self, previous: Secret) -> Secret {
        Secret { current: self.current, previous: Some(previous.current) }
    }

    pub fn new(bytes: &[u8]) -> Secret {
        Secret { current: bytes.to_vec(), previous: None }
    }

    fn keys(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(self.current.as_slice()).chain(self.previous.as_deref())
    }

    fn mac(key: &[u8], fleet: &str, parts: &[&str]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
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

    /// True when `signature` is this secret's signature of the change, or, in a rotation, the previous
    /// secret's (compared in constant time).
    pub fn verify(&self, fleet: &str, change: &Change, signature: &str) -> bool {
        let (seq, version) = (change.seq.to_string(), change.version.to_string());
        self.verify_parts(fleet, &change_parts(change, &seq, &version), signature)
    }

    /// The signature of any message made of `parts` (a usage report), hex.
    pub fn sign_parts(&self, fleet: &str, parts: &[&str]) -> String {
        hex(&Self::mac(&self.current, fleet, parts).finalize().into_bytes())
    }

    pub fn verify_parts(&self, fleet: &str, parts: &[&str], signature: &str) -> bool {
        match unhex(signature) {
            Some(bytes) => self.keys().any(|key| Self::mac(key, fleet, parts).verify_slice(&bytes).is_ok()),
            None => false,
        }
    }
}

/// The contents of a file that holds a secret (the fleet's, Redis's password), read only if its group
/// and others may not read it; a text file without the whitespace around it; never empty.
pub fn private_file(path: &std::path::Path, what: &str) -> Result<Vec<u8>> {
    use std::os::unix::fs::MetadataExt;
    let cannot = |e: std::io::Error| Error::invalid(format!("cannot read {what} {}: {e}", path.display()));
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mode = file.metadata().map_err(cannot)?.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(Error::invalid(format!(
            "{what} {} is readable by others (mode {mode:04o}): refused, as whoever reads it can use it; \
             `chmod 600 {}` (owned by the user the agent runs as)",
            path.display(),
            path.display()
        )));
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut &file, &mut bytes).map_err(cannot)?;
    // Text loses its surrounding whitespace (a line end is not part of a base64 secret); anything else is
    // taken byte for byte: decoding it as text would make different files one key.
    if std::str::from_utf8(&bytes).is_ok() {
        let start = bytes.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(bytes.len());
        let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |i| i + 1);
        bytes = bytes[start..end].to_vec();
    }
    if bytes.is_empty() {
        return Err(Error::invalid(format!("{what} {} is empty", path.display())));
    }
    Ok(bytes)
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

    #[test]
    fn in_a_rotation_the_new_secret_signs_and_both_are_accepted() {
        let (old, new) = (b"the old secret, 16+ bytes", b"the new secret, 16+ bytes");
        let rotating = Secret::new(new).with_previous(Secret::new(old));
        let by_old = Secret::new(old).sign("prod", &change());
        let by_new = Secret::new(new).sign("prod", &change());
        assert_eq!(rotating.sign("prod", &change()), by_new);
        assert!(rotating.verify("prod", &change(), &by_old) && rotating.verify("prod", &change(), &by_new));
        assert!(!Secret::new(new).verify("prod", &change(), &by_old), "after the rotation the old one is refused");
        assert!(!rotating.verify("prod", &change(), &Secret::new(b"a third secret, 16+").sign("prod", &change())));
    }
}
