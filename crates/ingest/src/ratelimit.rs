//! A token bucket per source, counted in events.

use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained events per second.
    pub per_second: f64,
    /// Most events accepted at once after a quiet period.
    pub burst: f64,
}

#[derive(Debug)]
pub struct Bucket {
    limit: RateLimit,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    pub fn new(limit: RateLimit) -> Bucket {
        Bucket {
            limit,
            state: Mutex::new((limit.burst, Instant::now())),
        }
    }

    /// Takes `n` tokens, or answers how many whole seconds until they would be there.
    pub fn take(&self, n: usize, now: Instant) -> Result<(), u64> {
        let Ok(mut s) = self.state.lock() else {
            return Ok(());
        };
        let (tokens, last) = *s;
        let refilled = (tokens
            + now.saturating_duration_since(last).as_secs_f64() * self.limit.per_second)
            .min(self.limit.burst);
        let need = n as f64;
        if need <= refilled {
            *s = (refilled - need, now);
            return Ok(());
        }
        *s = (refilled, now);
        // A request larger than the burst can never pass; tell it to wait a full refill.
        let missing = need.min(self.limit.burst) - refilled;
        let wait = (missing / self.limit.per_second).ceil().max(1.0);
        Err(wait as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn refills_at_the_configured_rate() {
        let b = Bucket::new(RateLimit {
            per_second: 10.0,
            burst: 20.0,
        });
        let t0 = Instant::now();
        assert!(b.take(15, t0).is_ok());
        assert!(b.take(5, t0).is_ok());
        assert_eq!(b.take(10, t0), Err(1));
        assert!(b.take(10, t0 + Duration::from_secs(1)).is_ok());
        assert_eq!(b.take(100, t0 + Duration::from_secs(1)), Err(2));
    }
}
