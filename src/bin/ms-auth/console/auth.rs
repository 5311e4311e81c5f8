//! Who may use the console: access tokens (one printed at start, or named ones from a token file),
//! exchanged at login for a session cookie (HttpOnly, SameSite=Strict) and a CSRF token that every
//! state-changing request must carry in `X-CSRF-Token`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use ms_auth::Error;

pub const COOKIE: &str = "ms_console";
/// A session ends after this long without a request.
const IDLE: Duration = Duration::from_secs(12 * 3600);
/// Names go into the audit log as `console:NAME`: keep them short and printable.
const MAX_NAME: usize = 64;

/// The tokens that open a session, each with the name the audit log gives its user. Only their digests
/// are kept, and compared in constant time, so the comparison leaks nothing of a token by its timing.
pub struct Tokens(Vec<(String, [u8; 32])>);

impl Tokens {
    /// A token file: one `NAME:TOKEN` a line; blank lines and lines starting with `#` are ignored.
    pub fn from_file_text(text: &str) -> Result<Tokens, Error> {
        let mut out = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| Error::invalid(format!("token file, line {}: {why}", n + 1));
            let (name, token) = line.split_once(':').ok_or_else(|| bad("expected NAME:TOKEN"))?;
            check_name(name).map_err(|w| bad(&w))?;
            if token.len() < 16 {
                return Err(bad("the token must be at least 16 characters"));
            }
            out.push((name.to_string(), digest(token)));
        }
        if out.is_empty() {
            return Err(Error::invalid("the token file holds no NAME:TOKEN line"));
        }
        Ok(Tokens(out))
    }

    /// One token for `name`.
    pub fn single(name: &str, token: &str) -> Result<Tokens, Error> {
        check_name(name).map_err(Error::invalid)?;
        Ok(Tokens(vec![(name.to_string(), digest(token))]))
    }

    /// The name of the user whose token this is.
    pub fn user_of(&self, token: &str) -> Option<&str> {
        let d = digest(token);
        // Every entry is compared, whether or not an earlier one matched.
        let mut found = None;
        for (name, want) in &self.0 {
            if want.iter().zip(&d).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0 {
                found = Some(name.as_str());
            }
        }
        found
    }
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(format!("the name must be 1..={MAX_NAME} characters"));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c)) {
        return Err(format!("the name {name:?} may hold only letters, digits and . _ - @"));
    }
    Ok(())
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// 32 random bytes as hex: tokens, session ids and CSRF tokens.
pub fn random_hex() -> Result<String, Error> {
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b).map_err(|e| Error::internal(format!("no randomness: {e}")))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

#[derive(Clone)]
pub struct Session {
    pub user: String,
    pub csrf: String,
    seen: Instant,
}

/// Sessions in memory: a restart of the console logs everyone out, which is what one wants of a
/// process that may have been restarted with other tokens.
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<String, Session>>);

impl Sessions {
    /// Opens a session; returns its id (the cookie's value).
    pub fn open(&self, user: &str) -> Result<String, Error> {
        let id = random_hex()?;
        let session = Session { user: user.to_string(), csrf: random_hex()?, seen: Instant::now() };
        let mut all = self.0.lock();
        all.retain(|_, s| s.seen.elapsed() < IDLE);
        all.insert(id.clone(), session);
        Ok(id)
    }

    pub fn get(&self, id: &str) -> Option<Session> {
        let mut all = self.0.lock();
        let s = all.get_mut(id)?;
        if s.seen.elapsed() >= IDLE {
            all.remove(id);
            return None;
        }
        s.seen = Instant::now();
        Some(s.clone())
    }

    pub fn close(&self, id: &str) {
        self.0.lock().remove(id);
    }
}

/// The session cookie; `Secure` when the browser reaches the console over HTTPS (through a proxy).
pub fn cookie(id: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}", IDLE.as_secs())
}

pub fn expired_cookie(secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}")
}

/// Whether a request's CSRF header matches the session's token (constant time).
pub fn csrf_ok(session: &Session, sent: Option<&str>) -> bool {
    let Some(sent) = sent else { return false };
    sent.len() == session.csrf.len()
        && sent.bytes().zip(session.csrf.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_name_their_users() {
        let t = Tokens::from_file_text("# support\nalice:0123456789abcdef0\n\nbob:fedcba98765432100\n").unwrap();
        assert_eq!(t.user_of("0123456789abcdef0"), Some("alice"));
        assert_eq!(t.user_of("fedcba98765432100"), Some("bob"));
        assert_eq!(t.user_of("nope"), None);
        assert!(Tokens::from_file_text("alice:short").is_err());
        assert!(Tokens::from_file_text("no colon here at all").is_err());
        assert!(Tokens::from_file_text("al ice:0123456789abcdef0").is_err());
        assert!(Tokens::from_file_text("# nothing\n").is_err());
    }

    #[test]
    fn sessions_carry_a_csrf_token() {
        let sessions = Sessions::default();
        let id = sessions.open("alice").unwrap();
        let s = sessions.get(&id).unwrap();
        assert_eq!(s.user, "alice");
        assert!(csrf_ok(&s, Some(&s.csrf)));
        assert!(!csrf_ok(&s, Some("x")));
        assert!(!csrf_ok(&s, None));
        sessions.close(&id);
        assert!(sessions.get(&id).is_none());
    }
}
