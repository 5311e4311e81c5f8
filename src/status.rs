//! Status codes of the C ABI v1 and their documented texts (see `docs/c-abi.md`).
//! Codes 0..99 are decisions about a key; 100 and up are failures of the library.

/// A decision about a request (0..=6) or a failure of the library (100..=104). The numbers are part of
/// the C ABI v1: the C layer's `MS_*` constants (from which the header is generated) are asserted equal
/// to them at compile time, so the core does not depend on the C layer.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    Ok = 0,
    ApiKeyMissing = 1,
    ApiKeyInvalid = 2,
    ApiKeyExpired = 3,
    ApiKeyRevoked = 4,
    ApiKeyQuotaExceeded = 5,
    RateLimitExceeded = 6,
    ErrInvalidArgument = 100,
    ErrNotOpen = 101,
    ErrStore = 102,
    ErrNotFound = 103,
    ErrInternal = 104,
}

impl Status {
    pub const ALL: [Status; 12] = [
        Status::Ok,
        Status::ApiKeyMissing,
        Status::ApiKeyInvalid,
        Status::ApiKeyExpired,
        Status::ApiKeyRevoked,
        Status::ApiKeyQuotaExceeded,
        Status::RateLimitExceeded,
        Status::ErrInvalidArgument,
        Status::ErrNotOpen,
        Status::ErrStore,
        Status::ErrNotFound,
        Status::ErrInternal,
    ];

    pub fn from_code(value: i32) -> Option<Status> {
        Status::ALL.iter().copied().find(|s| *s as i32 == value)
    }

    /// True for the decisions (0..99); false for failures of the library.
    pub fn is_decision(self) -> bool {
        (self as i32) < 100
    }

    /// The code string of the documented JSON body, e.g. `api_key_missing`.
    pub fn code(self) -> &'static str {
        without_nul(self.code_nul())
    }

    /// The human message of the documented JSON body.
    pub fn message(self) -> &'static str {
        without_nul(self.message_nul())
    }

    /// [`Status::code`] with a terminating NUL, for the C ABI's static strings.
    pub fn code_nul(self) -> &'static str {
        match self {
            Status::Ok => "ok\0",
            Status::ApiKeyMissing => "api_key_missing\0",
            Status::ApiKeyInvalid => "api_key_invalid\0",
            Status::ApiKeyExpired => "api_key_expired\0",
            Status::ApiKeyRevoked => "api_key_revoked\0",
            Status::ApiKeyQuotaExceeded => "api_key_quota_exceeded\0",
            Status::RateLimitExceeded => "rate_limit_exceeded\0",
            Status::ErrInvalidArgument => "invalid_argument\0",
            Status::ErrNotOpen => "store_not_open\0",
            Status::ErrStore => "store_unavailable\0",
            Status::ErrNotFound => "not_found\0",
            Status::ErrInternal => "internal_error\0",
        }
    }

    /// [`Status::message`] with a terminating NUL.
    pub fn message_nul(self) -> &'static str {
        match self {
            Status::Ok => "OK.\0",
            Status::ApiKeyMissing => "API key is missing.\0",
            Status::ApiKeyInvalid => "API key is invalid.\0",
            Status::ApiKeyExpired => "API key has expired.\0",
            Status::ApiKeyRevoked => "API key has been revoked.\0",
            Status::ApiKeyQuotaExceeded => "API key quota has been exceeded.\0",
            Status::RateLimitExceeded => "Too many requests. Please try again later.\0",
            Status::ErrInvalidArgument => "Invalid argument.\0",
            Status::ErrNotOpen => "Authentication store is not open.\0",
            Status::ErrStore => "Authentication store is unavailable.\0",
            Status::ErrNotFound => "Not found.\0",
            Status::ErrInternal => "Internal error.\0",
        }
    }

    pub fn http(self) -> i32 {
        match self {
            Status::Ok => 200,
            Status::ApiKeyMissing | Status::ApiKeyInvalid | Status::ApiKeyExpired | Status::ApiKeyRevoked => 401,
            Status::ApiKeyQuotaExceeded | Status::RateLimitExceeded => 429,
            Status::ErrInvalidArgument | Status::ErrInternal => 500,
            Status::ErrNotOpen | Status::ErrStore => 503,
            Status::ErrNotFound => 404,
        }
    }

    /// The documented response body, e.g.
    /// `{"success":false,"error":{"code":"api_key_missing","message":"API key is missing.","httpStatus":401}}`.
    /// `Ok` answers `{"success":true}`.
    pub fn error_json(self) -> String {
        if self == Status::Ok {
            return r#"{"success":true}"#.to_string();
        }
        format!(
            r#"{{"success":false,"error":{{"code":"{}","message":"{}","httpStatus":{}}}}}"#,
            self.code(),
            self.message(),
            self.http()
        )
    }
}

fn without_nul(s: &'static str) -> &'static str {
    &s[..s.len() - 1]
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_bodies_are_exact() {
        let expected = [
            (
                Status::ApiKeyMissing,
                r#"{"success":false,"error":{"code":"api_key_missing","message":"API key is missing.","httpStatus":401}}"#,
            ),
            (
                Status::ApiKeyInvalid,
                r#"{"success":false,"error":{"code":"api_key_invalid","message":"API key is invalid.","httpStatus":401}}"#,
            ),
            (
                Status::ApiKeyExpired,
                r#"{"success":false,"error":{"code":"api_key_expired","message":"API key has expired.","httpStatus":401}}"#,
            ),
            (
                Status::ApiKeyRevoked,
                r#"{"success":false,"error":{"code":"api_key_revoked","message":"API key has been revoked.","httpStatus":401}}"#,
            ),
            (
                Status::ApiKeyQuotaExceeded,
                r#"{"success":false,"error":{"code":"api_key_quota_exceeded","message":"API key quota has been exceeded.","httpStatus":429}}"#,
            ),
            (
                Status::RateLimitExceeded,
                r#"{"success":false,"error":{"code":"rate_limit_exceeded","message":"Too many requests. Please try again later.","httpStatus":429}}"#,
            ),
        ];
        for (status, body) in expected {
            assert_eq!(status.error_json(), body);
        }
    }

    #[test]
    fn numeric_values_follow_the_contract() {
        let values: Vec<i32> = Status::ALL.iter().map(|s| *s as i32).collect();
        assert_eq!(values, [0, 1, 2, 3, 4, 5, 6, 100, 101, 102, 103, 104]);
        assert_eq!(Status::from_code(6), Some(Status::RateLimitExceeded));
        assert_eq!(Status::from_code(7), None);
        assert!(Status::RateLimitExceeded.is_decision());
        assert!(!Status::ErrNotOpen.is_decision());
    }
}
