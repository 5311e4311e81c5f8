//! Key format and digests.
//!
//! A generated key is `ms_live_` or `ms_test_`, 30 random base62 characters from the OS CSPRNG (178 bits),
//! and a 6-character base62 CRC32 of everything before it, the way GitHub tokens carry one. A key of that
//! exact shape whose checksum does not match is rejected before any lookup, and secret scanners can find
//! our keys with one regex: [`KEY_REGEX`]. Imported keys may have any printable-ASCII shape (8..=512 bytes).
//! The store keeps only the SHA-256 digest of a key and a short display prefix.

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// Matches every generated key (documented in the README for secret scanners).
pub const KEY_REGEX: &str = r"\bms_(live|test)_[0-9A-Za-z]{36}\b";
pub const MAX_KEY_LEN: usize = 512;
pub const MIN_IMPORTED_KEY_LEN: usize = 8;
const RANDOM_CHARS: usize = 30;
const CHECKSUM_CHARS: usize = 6;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

pub type KeyDigest = [u8; 32];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Env {
    Live,
    Test,
}

impl Env {
    pub fn as_str(self) -> &'static str {
        match self {
            Env::Live => "live",
            Env::Test => "test",
        }
    }
    pub fn parse(s: &str) -> Result<Env> {
        match s {
            "live" => Ok(Env::Live),
            "test" => Ok(Env::Test),
            _ => Err(Error::invalid(format!("env must be \"live\" or \"test\", not {s:?}"))),
        }
    }
    fn prefix(self) -> &'static str {
        match self {
            Env::Live => "ms_live_",
            Env::Test => "ms_test_",
        }
    }
}

/// What a presented key is, before any lookup.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented<'a> {
    /// Absent, or empty after trimming HTTP whitespace.
    Missing,
    /// Cannot be a key: too long or short, control or non-ASCII bytes, inner spaces, a bad checksum.
    Malformed,
    /// Worth looking up: the trimmed bytes.
    Candidate(&'a [u8]),
}

/// Classifies raw header bytes following steps 1 and 2 of the decision order.
pub fn classify(raw: Option<&[u8]>) -> Presented<'_> {
    let Some(raw) = raw else {
        return Presented::Missing;
    };
    let key = trim_http_whitespace(raw);
    if key.is_empty() {
        return Presented::Missing;
    }
    if key.len() > MAX_KEY_LEN || key.len() < MIN_IMPORTED_KEY_LEN || !key.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Presented::Malformed;
    }
    if has_generated_shape(key) && !checksum_matches(key) {
        return Presented::Malformed;
    }
    Presented::Candidate(key)
}

fn trim_http_whitespace(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn has_generated_shape(key: &[u8]) -> bool {
    key.len() == 8 + RANDOM_CHARS + CHECKSUM_CHARS
        && (key.starts_with(b"ms_live_") || key.starts_with(b"ms_test_"))
        && key[8..].iter().all(u8::is_ascii_alphanumeric)
}

fn checksum_matches(key: &[u8]) -> bool {
    let (body, sum) = key.split_at(key.len() - CHECKSUM_CHARS);
    sum == checksum(body)
}

fn checksum(body: &[u8]) -> [u8; CHECKSUM_CHARS] {
    let mut value = crc32fast::hash(body) as u64;
    let mut out = [b'0'; CHECKSUM_CHARS];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(value % 62) as usize];
        value /= 62;
    }
    out
}

/// A new key from the OS CSPRNG.
pub fn generate(env: Env) -> Result<String> {
    let mut key = env.prefix().as_bytes().to_vec();
    key.extend(random_base62(RANDOM_CHARS)?);
    let sum = checksum(&key);
    key.extend_from_slice(&sum);
    Ok(String::from_utf8(key).expect("base62 is ASCII"))
}

/// `len` uniformly random base62 characters (rejection sampling keeps them unbiased).
pub fn random_base62(len: usize) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        getrandom::getrandom(&mut buf).map_err(|e| Error::internal(format!("OS random source failed: {e}")))?;
        for b in buf {
            // 248 = 4 * 62: bytes at or above it would favour the first characters.
            if b < 248 && out.len() < len {
                out.push(BASE62[(b % 62) as usize]);
            }
        }
    }
    Ok(out)
}

/// Checks a plaintext key given for import: printable ASCII, 8..=512 bytes, and a valid checksum if it
/// has the generated shape (otherwise it could never be admitted).
pub fn validate_import(key: &str) -> Result<()> {
    match classify(Some(key.as_bytes())) {
        Presented::Candidate(trimmed) if trimmed.len() == key.len() => Ok(()),
        Presented::Candidate(_) => Err(Error::invalid("an imported key must not start or end with whitespace")),
        _ if has_generated_shape(key.as_bytes()) => {
            Err(Error::invalid("the imported key has the ms_live_/ms_test_ shape but a wrong checksum"))
        }
        _ => Err(Error::invalid(format!(
            "an imported key must be {MIN_IMPORTED_KEY_LEN}..={MAX_KEY_LEN} bytes of printable ASCII without spaces"
        ))),
    }
}

pub fn digest(key: &[u8]) -> KeyDigest {
    Sha256::digest(key).into()
}

/// The part of a key shown in listings: enough to recognise it, never enough to use it.
/// At most a third of the secret part is shown; the public `ms_live_`/`ms_test_` prefix does not count.
pub fn display_prefix(key: &str) -> String {
    let public = if env_of(key).is_some() { 8 } else { 0 };
    let shown = public + 4.max(12 - public).min((key.len() - public) / 3);
    key[..shown].to_string()
}

/// The env of an imported key, from its prefix when it has one.
pub fn env_of(key: &str) -> Option<Env> {
    if key.starts_with("ms_live_") {
        Some(Env::Live)
    } else if key.starts_with("ms_test_") {
        Some(Env::Test)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_documented_shape() {
        let re_like = |k: &str| {
            (k.starts_with("ms_live_") || k.starts_with("ms_test_"))
                && k.len() == 44
                && k[8..].bytes().all(|b| b.is_ascii_alphanumeric())
        };
        let live = generate(Env::Live).unwrap();
        let test = generate(Env::Test).unwrap();
        assert!(re_like(&live) && live.starts_with("ms_live_"), "{live}");
        assert!(re_like(&test) && test.starts_with("ms_test_"), "{test}");
        assert_ne!(generate(Env::Live).unwrap(), live);
        assert_eq!(classify(Some(live.as_bytes())), Presented::Candidate(live.as_bytes()));
    }

    #[test]
    fn a_wrong_checksum_is_malformed() {
        let key = generate(Env::Live).unwrap();
        let mut bad = key.clone().into_bytes();
        let i = 20;
        bad[i] = if bad[i] == b'a' { b'b' } else { b'a' };
        assert_eq!(classify(Some(&bad)), Presented::Malformed);
        assert!(validate_import(std::str::from_utf8(&bad).unwrap()).is_err());
        assert!(validate_import(&key).is_ok());
    }

    #[test]
    fn decision_steps_one_and_two() {
        assert_eq!(classify(None), Presented::Missing);
        assert_eq!(classify(Some(b"")), Presented::Missing);
        assert_eq!(classify(Some(b" \t \t")), Presented::Missing);
        assert_eq!(classify(Some(b"  abcdefgh\t")), Presented::Candidate(b"abcdefgh"));
        assert_eq!(classify(Some(b"abc defgh")), Presented::Malformed);
        assert_eq!(classify(Some(b"abcd\x01efgh")), Presented::Malformed);
        assert_eq!(classify(Some("abcdéfgh".as_bytes())), Presented::Malformed);
        assert_eq!(classify(Some(b"short")), Presented::Malformed);
        assert_eq!(classify(Some(&[b'a'; 513])), Presented::Malformed);
        assert_eq!(classify(Some(&[b'a'; 512])), Presented::Candidate(&[b'a'; 512]));
        // The seed's example is not of the generated shape, so it is importable.
        assert!(validate_import("ms_live_1a2b3c4d5e6f7g8h9i0j").is_ok());
        assert!(validate_import(" leading-space").is_err());
        assert!(validate_import("short").is_err());
    }

    #[test]
    fn prefixes_never_reveal_a_short_key() {
        assert_eq!(display_prefix("ms_live_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789"), "ms_live_AbCd");
        assert_eq!(display_prefix("ms_live_1a2b3c4d5e6f7g8h9i0j"), "ms_live_1a2b");
        assert_eq!(display_prefix("ms_test_abcdefgh"), "ms_test_ab");
        assert_eq!(display_prefix("abcdefgh"), "ab");
    }
}
