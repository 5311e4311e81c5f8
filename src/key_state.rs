//! A key's state as people read it (active, expiring, rotating, revoked, expired), worked out from its
//! record and an instant. The one place every view takes it from: key records (CLI, console, C ABI
//! answers, bindings), the metrics' keys by state, the console's filters. No I/O, no clock.
//!
//! It agrees with the check ([`crate::policy::decide`]): a key is `revoked` exactly when a check at that
//! instant answers `api_key_revoked`, and `expired` exactly when it answers `api_key_expired`, whether
//! or not a flush has recorded the revocation yet (a rotation's grace end, the idle policy).

use serde::Serialize;

use crate::error::{Error, Result};
use crate::period::DAY_MS;

/// A key that expires within this long is `expiring` (still admitted): long enough to renew it before a
/// weekend and a holiday, short enough that the list is the keys that need action now. Looking further
/// ahead is the key list's `--expiring` filter.
pub const EXPIRING_WITHIN_MS: i64 = 7 * DAY_MS;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Admitted (within its limits).
    Active,
    /// Admitted, and expires within [`EXPIRING_WITHIN_MS`].
    Expiring,
    /// Replaced by a rotation, admitted until its grace ends (`grace_ends_at_ms`).
    Rotating,
    /// Refused with `api_key_revoked`; `state_reason` says why.
    Revoked,
    /// Refused with `api_key_expired`.
    Expired,
    /// Reserved for keys of a suspended customer (no version has customers yet; none is suspended).
    Suspended,
}

impl KeyState {
    /// Every state, in the order views list them.
    pub const ALL: [KeyState; 6] = [
        KeyState::Active,
        KeyState::Expiring,
        KeyState::Rotating,
        KeyState::Revoked,
        KeyState::Expired,
        KeyState::Suspended,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Expiring => "expiring",
            KeyState::Rotating => "rotating",
            KeyState::Revoked => "revoked",
            KeyState::Expired => "expired",
            KeyState::Suspended => "suspended",
        }
    }

    pub fn parse(text: &str) -> Result<KeyState> {
        KeyState::ALL.into_iter().find(|s| s.as_str() == text).ok_or_else(|| {
            let names: Vec<&str> = KeyState::ALL.iter().map(|s| s.as_str()).collect();
            Error::invalid(format!("state must be one of {}, not {text:?}", names.join(", ")))
        })
    }

    /// Whether a check admits the key (within its limits).
    pub fn admits(self) -> bool {
        matches!(self, KeyState::Active | KeyState::Expiring | KeyState::Rotating)
    }
}

/// What a key's state is worked out from: its record's lifecycle fields and, under the store's idle
/// policy, when it becomes idle ([`idle_revocation_at`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Lifecycle<'a> {
    pub revoked_at_ms: Option<i64>,
    pub revoked_reason: Option<&'a str>,
    /// The end of a rotation's grace.
    pub revoke_at_ms: Option<i64>,
    pub expires_at_ms: Option<i64>,
    pub idle_at_ms: Option<i64>,
}

/// A key's state at an instant, with what explains it: the computed fields of every key record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StateAt {
    pub state: KeyState,
    /// Why a revoked key is: the reason its revocation recorded ("manual" when none was), or "rotated" /
    /// "idle" for one the policies decided that no flush has recorded yet. `None` in other states.
    pub state_reason: Option<String>,
    /// When a rotating key's grace ends: from then on it is revoked (rotated). `None` in other states.
    pub grace_ends_at_ms: Option<i64>,
}

/// The state of a key at `now_ms`, in the check's order: revoked (recorded, a rotation's grace over,
/// idle), expired, rotating, expiring, active. The key list narrows rows by state in SQL before it keeps
/// those this function places (`store/list.rs`, `state_sql`): a change of these rules changes that SQL
/// too, which `tests/list.rs`'s property checks against this function.
pub fn state_at(key: &Lifecycle, now_ms: i64) -> StateAt {
    let plain = |state| StateAt { state, state_reason: None, grace_ends_at_ms: None };
    let revoked = |reason: &str| StateAt {
        state: KeyState::Revoked,
        state_reason: Some(reason.to_string()),
        grace_ends_at_ms: None,
    };
    let due = |at: Option<i64>| at.is_some_and(|at| now_ms >= at);
    if key.revoked_at_ms.is_some() {
        return revoked(key.revoked_reason.unwrap_or("manual"));
    }
    // Both due: a flush records the rotation first (store::flush), so this says so too.
    if due(key.revoke_at_ms) {
        return revoked("rotated");
    }
    if due(key.idle_at_ms) {
        return revoked("idle");
    }
    if due(key.expires_at_ms) {
        return plain(KeyState::Expired);
    }
    if let Some(grace_end) = key.revoke_at_ms {
        return StateAt { grace_ends_at_ms: Some(grace_end), ..plain(KeyState::Rotating) };
    }
    if key.expires_at_ms.is_some_and(|at| at - now_ms <= EXPIRING_WITHIN_MS) {
        return plain(KeyState::Expiring);
    }
    plain(KeyState::Active)
}

/// When the idle policy (`idle_ms`, 0 for none) revokes a key: `idle_ms` after its last use, or after
/// its creation if it was never used. The check (`counters`) and [`state_at`] both take it from here.
pub fn idle_revocation_at(created_at_ms: i64, last_used_at_ms: Option<i64>, idle_ms: i64) -> Option<i64> {
    (idle_ms > 0).then(|| last_used_at_ms.unwrap_or(0).max(created_at_ms).saturating_add(idle_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{decide, KeyPolicy, Usage};
    use crate::status::Status;

    const NOW: i64 = 1_800_000_000_000;

    fn at(key: &Lifecycle, now: i64) -> (KeyState, Option<String>, Option<i64>) {
        let s = state_at(key, now);
        (s.state, s.state_reason, s.grace_ends_at_ms)
    }

    #[test]
    fn each_state_with_what_explains_it() {
        let none = Lifecycle::default();
        assert_eq!(at(&none, NOW), (KeyState::Active, None, None));
        let rotated = Lifecycle { revoke_at_ms: Some(NOW + 1), ..none };
        assert_eq!(at(&rotated, NOW), (KeyState::Rotating, None, Some(NOW + 1)));
        assert_eq!(at(&rotated, NOW + 1), (KeyState::Revoked, Some("rotated".into()), None));
        let manual = Lifecycle { revoked_at_ms: Some(NOW), ..rotated };
        assert_eq!(at(&manual, NOW), (KeyState::Revoked, Some("manual".into()), None));
        let leaked = Lifecycle { revoked_reason: Some("leaked"), ..manual };
        assert_eq!(at(&leaked, NOW), (KeyState::Revoked, Some("leaked".into()), None));
        let idle = Lifecycle { idle_at_ms: Some(NOW), ..none };
        assert_eq!(at(&idle, NOW - 1).0, KeyState::Active);
        assert_eq!(at(&idle, NOW), (KeyState::Revoked, Some("idle".into()), None));
        let both = Lifecycle { idle_at_ms: Some(NOW - 5), revoke_at_ms: Some(NOW), ..none };
        assert_eq!(at(&both, NOW).1.as_deref(), Some("rotated"), "the reason a flush records");
        let expires = Lifecycle { expires_at_ms: Some(NOW + EXPIRING_WITHIN_MS), ..none };
        assert_eq!(at(&expires, NOW - 1).0, KeyState::Active);
        assert_eq!(at(&expires, NOW).0, KeyState::Expiring);
        assert_eq!(at(&expires, NOW + EXPIRING_WITHIN_MS).0, KeyState::Expired);
        let rotating_and_expiring = Lifecycle { revoke_at_ms: Some(NOW + 5), ..expires };
        assert_eq!(at(&rotating_and_expiring, NOW).0, KeyState::Rotating, "the sooner end is the grace's");
    }

    #[test]
    fn names_round_trip_and_unknown_ones_are_listed() {
        for s in KeyState::ALL {
            assert_eq!(KeyState::parse(s.as_str()).unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        let e = KeyState::parse("actve").unwrap_err().message;
        assert!(e.contains("active, expiring, rotating, revoked, expired, suspended"), "{e}");
    }

    #[test]
    fn idle_counts_from_the_last_use_or_the_creation() {
        assert_eq!(idle_revocation_at(NOW, None, 0), None, "no idle policy");
        assert_eq!(idle_revocation_at(NOW, None, DAY_MS), Some(NOW + DAY_MS));
        assert_eq!(idle_revocation_at(NOW, Some(NOW + 7), DAY_MS), Some(NOW + 7 + DAY_MS));
        assert_eq!(idle_revocation_at(NOW, Some(NOW - 7), DAY_MS), Some(NOW + DAY_MS), "a successor's older use");
    }

    /// Over every arrangement of the lifecycle's instants around `now`: revoked and expired exactly when
    /// the check refuses the key as revoked and as expired (the check counts idleness into `revoke_at_ms`,
    /// as `counters` does), and every other state is admitted.
    #[test]
    fn agrees_with_the_check_everywhere() {
        let instants = [None, Some(NOW - 1), Some(NOW), Some(NOW + 1), Some(NOW + 8 * DAY_MS)];
        for revoked_at_ms in [None, Some(NOW - 1), Some(NOW + 1)] {
            for revoke_at_ms in instants {
                for expires_at_ms in instants {
                    for idle_at_ms in instants {
                        let key =
                            Lifecycle { revoked_at_ms, revoked_reason: None, revoke_at_ms, expires_at_ms, idle_at_ms };
                        let check_at = match (revoke_at_ms, idle_at_ms) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                        let policy = KeyPolicy {
                            revoked: revoked_at_ms.is_some(),
                            revoke_at_ms: check_at,
                            expires_at_ms,
                            quota: None,
                            rate: None,
                        };
                        let status = decide(&policy, &Usage::default(), NOW).0.status;
                        let state = state_at(&key, NOW).state;
                        assert_eq!(state == KeyState::Revoked, status == Status::ApiKeyRevoked, "{key:?}");
                        assert_eq!(state == KeyState::Expired, status == Status::ApiKeyExpired, "{key:?}");
                        assert_eq!(state.admits(), status == Status::Ok, "{key:?}");
                    }
                }
            }
        }
    }
}
