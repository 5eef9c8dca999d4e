//! What to do after an attempt: the classifier (Segment's Actions rules) and the backoff
//! schedule (exponential, full jitter, bounded, honouring `Retry-After`).

use std::time::Duration;

use rand::Rng;

/// The verdict on one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Try again later; `after` is the server's `Retry-After`, if it sent one.
    Retry {
        after: Option<Duration>,
    },
    /// Never retried (other 4xx, 501, redirects, requests we cannot build).
    Permanent,
}

/// Classifies an HTTP answer: 2xx success; 408, 423, 429 and 5xx except 501 retry; every
/// other status (other 4xx, 501, 1xx, 3xx — redirects are not followed) is permanent.
pub fn classify_status(status: u16, retry_after: Option<Duration>) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        408 | 423 | 429 => Verdict::Retry { after: retry_after },
        501 => Verdict::Permanent,
        500..=599 => Verdict::Retry { after: retry_after },
        _ => Verdict::Permanent,
    }
}

/// Timeouts and connection errors: always retried.
pub fn classify_transport_error() -> Verdict {
    Verdict::Retry { after: None }
}

/// Parses `Retry-After`: delay-seconds or an HTTP date (relative to `now_ms`). Values in
/// the past give zero; unparsable values are ignored.
pub fn parse_retry_after(value: &str, now_ms: i64) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let ms = at.timestamp_millis() - now_ms;
    Some(Duration::from_millis(ms.max(0) as u64))
}

/// Backoff bounds and the retry window of one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Cap of the first retry's delay; each later retry doubles the cap.
    pub min_backoff: Duration,
    /// Largest cap.
    pub max_backoff: Duration,
    /// Retries stop this long after the first attempt; the event is dead-lettered.
    pub window: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(600),
            window: Duration::from_secs(4 * 3600),
        }
    }
}

impl RetryPolicy {
    /// The upper bound of the delay before retry number `retry` (1 = first retry):
    /// `min(max_backoff, min_backoff × 2^(retry-1))`.
    pub fn cap(&self, retry: u32) -> Duration {
        let factor = 1u64 << retry.saturating_sub(1).min(40);
        let ms = (self.min_backoff.as_millis() as u64).saturating_mul(factor);
        Duration::from_millis(ms).min(self.max_backoff)
    }

    /// Full jitter: uniform in `[0, cap(retry)]`, at least one millisecond. A
    /// `Retry-After` from the server is a floor (a server that asks for more than the
    /// backoff gets it; the window still bounds the total).
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>, rng: &mut impl Rng) -> Duration {
        let cap = self.cap(retry).as_millis() as u64;
        let jittered = Duration::from_millis(rng.gen_range(0..=cap).max(1));
        match retry_after {
            Some(after) => jittered.max(after),
            None => jittered,
        }
    }

    /// When the next attempt happens, or `None` when it would fall outside the window
    /// (the event is then dead-lettered).
    pub fn next_attempt_ms(
        &self,
        first_attempt_ms: i64,
        now_ms: i64,
        retry: u32,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Option<i64> {
        let next = now_ms + self.delay(retry, retry_after, rng).as_millis() as i64;
        let deadline = first_attempt_ms + self.window.as_millis() as i64;
        (next <= deadline).then_some(next)
    }
}

/// Every request of a catalog destination's event must succeed: delivered when all were;
/// else retried when any failure is retryable (the event is sent again as a whole, so
/// the actions that succeeded see it twice, same messageId); else permanent.
pub fn all_delivered(answers: &[crate::http::Answer]) -> Verdict {
    let mut retry: Option<Option<std::time::Duration>> = None;
    let mut permanent = false;
    for a in answers {
        match a.verdict {
            Verdict::Delivered => {}
            Verdict::Permanent => permanent = true,
            Verdict::Retry { after } => {
                retry = Some(match (retry.flatten(), after) {
                    (Some(x), Some(y)) => Some(x.max(y)),
                    (x, y) => x.or(y),
                })
            }
        }
    }
    match (retry, permanent) {
        (Some(after), _) => Verdict::Retry { after },
        (None, true) => Verdict::Permanent,
        (None, false) => Verdict::Delivered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    #[test]
    fn classifier_follows_the_actions_rules() {
        for s in [200, 201, 202, 204, 299] {
            assert_eq!(classify_status(s, None), Verdict::Delivered, "{s}");
        }
        for s in [408, 423, 429, 500, 502, 503, 504, 505, 507, 511, 599] {
            assert!(
                matches!(classify_status(s, None), Verdict::Retry { .. }),
                "{s}"
            );
        }
        for s in [
            100, 301, 302, 304, 400, 401, 403, 404, 409, 410, 413, 422, 451, 501,
        ] {
            assert_eq!(classify_status(s, None), Verdict::Permanent, "{s}");
        }
        let after = Some(Duration::from_secs(7));
        assert_eq!(classify_status(429, after), Verdict::Retry { after });
        assert_eq!(classify_transport_error(), Verdict::Retry { after: None });
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        assert_eq!(parse_retry_after("120", 0), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", 0), Some(Duration::ZERO));
        let now = chrono::DateTime::parse_from_rfc2822("Wed, 21 Oct 2015 07:28:00 GMT")
            .unwrap()
            .timestamp_millis();
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn window_ends_retries() {
        let p = RetryPolicy {
            min_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            window: Duration::from_secs(60),
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert!(p.next_attempt_ms(0, 1_000, 1, None, &mut rng).is_some());
        // Past the window: no more attempts, whatever the backoff.
        assert_eq!(p.next_attempt_ms(0, 60_001, 1, None, &mut rng), None);
        // A Retry-After beyond the window ends retries too.
        assert_eq!(
            p.next_attempt_ms(0, 1_000, 1, Some(Duration::from_secs(3600)), &mut rng),
            None
        );
    }

    proptest! {
        #[test]
        fn backoff_is_bounded_and_caps_grow(
            min_ms in 1u64..10_000,
            max_ms in 1u64..3_600_000,
            retry in 1u32..200,
            seed in any::<u64>(),
            after_ms in proptest::option::of(0u64..100_000),
        ) {
            let p = RetryPolicy {
                min_backoff: Duration::from_millis(min_ms),
                max_backoff: Duration::from_millis(max_ms),
                window: Duration::from_secs(4 * 3600),
            };
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let after = after_ms.map(Duration::from_millis);
            let d = p.delay(retry, after, &mut rng);
            let cap = p.cap(retry);
            prop_assert!(cap <= p.max_backoff);
            prop_assert!(p.cap(retry + 1) >= cap);
            prop_assert!(d >= Duration::from_millis(1));
            match after {
                Some(a) => prop_assert!(d >= a && d <= cap.max(a).max(Duration::from_millis(1))),
                None => prop_assert!(d <= cap.max(Duration::from_millis(1))),
            }
        }
    }
}
