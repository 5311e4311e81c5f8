//! Properties over arbitrary input: bad bytes never crash or match, and no request sequence beats a limit.

mod common;

use common::*;
use ms_auth::gcra::RateLimit;
use ms_auth::period::Period;
use ms_auth::policy::{decide, KeyPolicy, Quota, Usage};
use ms_auth::Status;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn arbitrary_bytes_are_missing_or_invalid(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
        let (_dir, store) = temp_store();
        store.create_key(&spec("{}"), NOW).unwrap();
        let status = store.check(Some(&bytes), NOW).unwrap().decision.status;
        prop_assert!(status == Status::ApiKeyMissing || status == Status::ApiKeyInvalid);
    }

    #[test]
    fn no_sequence_of_requests_beats_the_quota_or_the_bucket(
        gaps in proptest::collection::vec(0i64..400, 1..300),
        quota in 1i64..50,
        limit in 1i64..20,
        window_ms in 100i64..5000,
        burst in 1i64..10,
    ) {
        let policy = KeyPolicy {
            revoked: false,
            revoke_at_ms: None,
            expires_at_ms: None,
            quota: Some(Quota { limit: quota, period: Period::Daily }),
            rate: Some(RateLimit { limit, window_ms, burst }),
        };
        let mut usage = Usage::default();
        let mut now = NOW;
        let mut admitted_at = Vec::new();
        for gap in gaps {
            now += gap;
            let (d, next) = decide(&policy, &usage, now);
            match next {
                Some(n) => { usage = n; admitted_at.push(now); prop_assert_eq!(d.status, Status::Ok); }
                None => prop_assert!(d.retry_after_ms > 0),
            }
            prop_assert!(d.quota_remaining >= 0 && d.rate_remaining >= 0);
        }
        prop_assert!(admitted_at.len() as i64 <= quota);
        // In any span of t ms the bucket admits at most burst + t * limit / window_ms requests.
        for (i, start) in admitted_at.iter().enumerate() {
            for (j, end) in admitted_at.iter().enumerate().skip(i) {
                let allowed = burst + (end - start) * limit / window_ms;
                prop_assert!((j - i + 1) as i64 <= allowed, "{} requests in {} ms", j - i + 1, end - start);
            }
        }
    }
}
