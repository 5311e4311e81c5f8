//! Key format and digests.
//!
//! A generated key is `ms_live_` or `ms_test_`, 30 random base62 characters from the OS CSPRNG (178 bits),
//! and a 6-character base62 CRC32 of everything before it, the way GitHub tokens carry one. A key of that
//! exact shape whose checksum does not match is rejected before any lookup, and secret scanners can find
//! our keys with one regex: [`KEY_REGEX`]. Imported keys may have any printable-ASCII shape (8..=512 bytes).
//! The store keeps only the SHA-256 digest of a key and a short display prefix.

use sha2::digest::generic_array::GenericArray;
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
    // The fast path: a key of the generated shape (what nearly every request carries) is decided by one
    // pass over its 36 characters and a table CRC from the prefix's precomputed state; printable ASCII
    // follows from alphanumeric.
    if let Some(prefix_state) = generated_prefix_state(key) {
        return if checksum_matches_fast(key, prefix_state) { Presented::Candidate(key) } else { Presented::Malformed };
    }
    if key.len() > MAX_KEY_LEN
        || key.len() < MIN_IMPORTED_KEY_LEN
        || !key.iter().fold(true, |ok, &b| ok & (b.wrapping_sub(0x21) < 0x7e - 0x21 + 1))
    {
        return Presented::Malformed;
    }
    // Not of the generated shape (else the fast path had it): an imported key, looked up as it is.
    Presented::Candidate(key)
}

/// The CRC32 state after the first bytes of the key's `ms_live_` / `ms_test_` prefix when `key` has the generated shape
/// (44 bytes, that prefix, 36 alphanumeric characters), else None.
#[inline]
fn generated_prefix_state(key: &[u8]) -> Option<u32> {
    let key: &[u8; 8 + RANDOM_CHARS + CHECKSUM_CHARS] = key.try_into().ok()?;
    let state = match &key[..8] {
        b"ms_live_" => LIVE_STATE,
        b"ms_test_" => TEST_STATE,
        _ => return None,
    };
    // Branch-free over a fixed length, so that it compiles to a few vector compares.
    let alnum =
        key[8..].iter().fold(true, |ok, &b| ok & ((b.wrapping_sub(b'0') < 10) | ((b | 0x20).wrapping_sub(b'a') < 26)));
    alnum.then_some(state)
}

/// Whether a key of the generated shape carries its checksum: the 6 checksum characters decoded to a
/// number (each is alphanumeric, so base62; the encoding is unique below 62^6 > 2^32) against the CRC32 of
/// the body, from the prefix's state. Equal to comparing them with `checksum(body)`, which `generate` uses.
#[inline]
fn checksum_matches_fast(key: &[u8], prefix_state: u32) -> bool {
    let (body, sum) = key.split_at(key.len() - CHECKSUM_CHARS);
    // From the state after the prefix's first 6 bytes, the remaining 32.
    let rest: &[u8; 32] = body[PREFIX_STATE_LEN..].try_into().expect("a generated body is 38 bytes");
    let crc = !crc32_update_32(prefix_state, rest);
    // Two halves of three digits each, so that the two multiply chains run side by side.
    let half = |h: &[u8]| h.iter().fold(0u64, |v, &b| v * 62 + BASE62_VALUE[b as usize] as u64);
    let decoded = half(&sum[..3]) * (62 * 62 * 62) + half(&sum[3..]);
    decoded == crc as u64
}

/// The value of each base62 character (unused for other bytes, which the caller has excluded).
const BASE62_VALUE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 62 {
        t[BASE62[i] as usize] = i as u8;
        i += 1;
    }
    t
};

/// Slice-by-8 tables of the IEEE CRC32 (reflected polynomial 0xEDB88320), the checksum of `crc32fast`.
const CRC_TABLES: [[u32; 256]; 8] = {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut s = 1;
    while s < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[s - 1][i];
            t[s][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        s += 1;
    }
    t
};

/// Runs the CRC32 register `state` (not inverted at the end) over `data`.
const fn crc32_update(mut state: u32, data: &[u8]) -> u32 {
    let t = &CRC_TABLES;
    let mut i = 0;
    while i + 8 <= data.len() {
        let lo = state ^ u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
        state = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][data[i + 4] as usize]
            ^ t[2][data[i + 5] as usize]
            ^ t[1][data[i + 6] as usize]
            ^ t[0][data[i + 7] as usize];
        i += 8;
    }
    while i < data.len() {
        state = (state >> 8) ^ t[0][((state ^ data[i] as u32) & 0xff) as usize];
        i += 1;
    }
    state
}

/// The CRC32 register after `state` runs over 32 bytes: by carry-less multiplication where the CPU has
/// it (one 128-bit fold and a Barrett reduction, six multiplications, where the table takes four dependent
/// rounds of eight lookups: most of the time of classifying a key), else by the table.
#[inline]
fn crc32_update_32(state: u32, data: &[u8; 32]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("pclmulqdq") && std::arch::is_x86_feature_detected!("sse4.1") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { crc32_update_32_clmul(state, data) };
    }
    crc32_update(state, data)
}

/// [`crc32_update_32`] with PCLMULQDQ: the folding and reduction of Intel's "Fast CRC Computation for
/// Generic Polynomials Using PCLMULQDQ Instruction" for the reflected IEEE polynomial, with the
/// constants crc32fast and Linux use, for exactly two 128-bit blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "pclmulqdq,sse2,sse4.1")]
unsafe fn crc32_update_32_clmul(state: u32, data: &[u8; 32]) -> u32 {
    use std::arch::x86_64::*;
    const K3: i64 = 0x1_7519_97d0; // x^(128+32) mod P and x^(128-32) mod P, bit-reflected
    const K4: i64 = 0x0_ccaa_009e;
    const K5: i64 = 0x1_63cd_6124; // x^64 mod P, bit-reflected
    const P_X: i64 = 0x1_DB71_0641; // P, bit-reflected
    const U_PRIME: i64 = 0x1_F701_1641; // floor(x^64 / P), bit-reflected
    let low32 = _mm_set_epi32(0, 0, 0, !0);
    let k3k4 = _mm_set_epi64x(K4, K3);
    let first = _mm_loadu_si128(data.as_ptr() as *const __m128i);
    let second = _mm_loadu_si128(data.as_ptr().add(16) as *const __m128i);
    // The register goes into the first 4 bytes; the first block is folded onto the second.
    let x = _mm_xor_si128(first, _mm_cvtsi32_si128(state as i32));
    let x =
        _mm_xor_si128(_mm_xor_si128(second, _mm_clmulepi64_si128(x, k3k4, 0x00)), _mm_clmulepi64_si128(x, k3k4, 0x11));
    // 128 bits to 64, then a Barrett reduction to 32.
    let x = _mm_xor_si128(_mm_clmulepi64_si128(x, k3k4, 0x10), _mm_srli_si128(x, 8));
    let x =
        _mm_xor_si128(_mm_clmulepi64_si128(_mm_and_si128(x, low32), _mm_set_epi64x(0, K5), 0x00), _mm_srli_si128(x, 4));
    let pu = _mm_set_epi64x(U_PRIME, P_X);
    let t1 = _mm_clmulepi64_si128(_mm_and_si128(x, low32), pu, 0x10);
    let t2 = _mm_clmulepi64_si128(_mm_and_si128(t1, low32), pu, 0x00);
    _mm_extract_epi32(_mm_xor_si128(x, t2), 1) as u32
}

/// The CRC32 register after the first 6 bytes of each generated prefix ("ms_liv", "ms_tes": the rest of
/// the body is then 32 bytes, a whole number of slice-by-8 rounds).
const PREFIX_STATE_LEN: usize = 6;
const LIVE_STATE: u32 = crc32_update(!0, b"ms_liv");
const TEST_STATE: u32 = crc32_update(!0, b"ms_tes");

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

/// The SHA-256 of `key`. A key of at most 55 bytes (every generated key) fits one padded block, which is
/// compressed directly (SHA-NI where the CPU has it, as `Sha256` does), without the streaming buffer.
pub fn digest(key: &[u8]) -> KeyDigest {
    if key.len() > 55 {
        return Sha256::digest(key).into();
    }
    let mut block = [0u8; 64];
    block[..key.len()].copy_from_slice(key);
    block[key.len()] = 0x80;
    block[56..].copy_from_slice(&(key.len() as u64 * 8).to_be_bytes());
    let mut state = SHA256_H0;
    sha2::compress256(&mut state, std::slice::from_ref(GenericArray::from_slice(&block)));
    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

const SHA256_H0: [u32; 8] =
    [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

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

    /// The classification before the fast path, kept as the reference: shape check, then the checksum
    /// through crc32fast and the base62 encoding that `generate` uses.
    fn classify_reference(raw: &[u8]) -> Presented<'_> {
        let key = trim_http_whitespace(raw);
        if key.is_empty() {
            return Presented::Missing;
        }
        if key.len() > MAX_KEY_LEN || key.len() < MIN_IMPORTED_KEY_LEN || !key.iter().all(|b| (0x21..=0x7e).contains(b))
        {
            return Presented::Malformed;
        }
        if has_generated_shape(key) && key[key.len() - CHECKSUM_CHARS..] != checksum(&key[..key.len() - CHECKSUM_CHARS])
        {
            return Presented::Malformed;
        }
        Presented::Candidate(key)
    }

    #[test]
    fn the_fast_classification_agrees_with_the_reference() {
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut malformed = 0;
        for round in 0..20_000 {
            let env = if round % 2 == 0 { Env::Live } else { Env::Test };
            let mut key = generate(env).unwrap().into_bytes();
            assert_eq!(classify(Some(&key)), Presented::Candidate(&key[..]));
            // One to three random bytes changed anywhere (prefix, body, checksum), sometimes outside base62.
            for _ in 0..1 + next() % 3 {
                let i = (next() % key.len() as u64) as usize;
                key[i] = match next() % 4 {
                    0 => (next() % 256) as u8,
                    1 => b"-_ .\x7f"[(next() % 5) as usize],
                    _ => BASE62[(next() % 62) as usize],
                };
            }
            let fast = classify(Some(&key));
            assert_eq!(fast, classify_reference(&key), "{:?}", String::from_utf8_lossy(&key));
            malformed += (fast == Presented::Malformed) as u32;
        }
        assert!(malformed > 10_000, "the mutations mostly break the checksum ({malformed})");
        // A right checksum on a body that is not the generated prefix: an imported key, looked up.
        let key = generate(Env::Live).unwrap().replacen("ms_live_", "ms_lixe_", 1);
        assert_eq!(classify(Some(key.as_bytes())), Presented::Candidate(key.as_bytes()));
        // Every 6-character base62 checksum that decodes past 2^32 is refused, never wrapped.
        let body = &generate(Env::Test).unwrap().into_bytes()[..38];
        let mut key = body.to_vec();
        key.extend_from_slice(b"zzzzzz");
        assert_eq!(classify(Some(&key)), Presented::Malformed);
    }

    #[test]
    fn the_table_crc_is_crc32() {
        let data: Vec<u8> = (0..300u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for len in 0..data.len() {
            assert_eq!(!crc32_update(!0, &data[..len]), crc32fast::hash(&data[..len]), "{len}");
        }
        assert_eq!(!crc32_update(LIVE_STATE, b"e_abc"), crc32fast::hash(b"ms_live_abc"));
        assert_eq!(!crc32_update(TEST_STATE, b"t_abc"), crc32fast::hash(b"ms_test_abc"));
    }

    /// Both ways of running the register over 32 bytes (carry-less multiplication where the CPU has it,
    /// the table) agree for any state and bytes.
    #[test]
    fn the_32_byte_crc_is_the_table_crc() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..20_000 {
            let state = match round {
                0 => 0,
                1 => !0,
                _ => next() as u32,
            };
            let mut data = [0u8; 32];
            for chunk in data.chunks_mut(8) {
                chunk.copy_from_slice(&next().to_le_bytes()[..chunk.len()]);
            }
            if round == 2 {
                data = [0xFF; 32];
            }
            assert_eq!(crc32_update_32(state, &data), crc32_update(state, &data), "{state:#x} {data:?}");
        }
        let body = b"ms_live_0123456789abcdefghijklmnopqrst";
        assert_eq!(!crc32_update_32(LIVE_STATE, body[6..].try_into().unwrap()), crc32fast::hash(body));
    }

    #[test]
    fn the_one_block_digest_is_sha256() {
        let data: Vec<u8> = (0..200u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8).collect();
        for len in 0..data.len() {
            let want: KeyDigest = Sha256::digest(&data[..len]).into();
            assert_eq!(digest(&data[..len]), want, "{len}");
        }
    }
}
