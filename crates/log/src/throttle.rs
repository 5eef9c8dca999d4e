//! Rate-limited logging of one recurring condition: a full disk makes every write fail,
//! and one line per failure would flood the operator's log (and its disk).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Allows one log line per `every` for one condition, counting the occurrences between.
/// `const`, so each call site can keep one in a `static`.
pub struct Throttle {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub const fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(n)`: log this occurrence, mentioning the `n` left unlogged since the last
    /// line. `None`: stay quiet (it is counted).
    pub fn allow(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match state.0 {
            Some(last) if now.duration_since(last) < self.every => {
                state.1 += 1;
                None
            }
            _ => {
                let skipped = state.1;
                *state = (Some(now), 0);
                Some(skipped)
            }
        }
    }
}

/// How often a recurring storage failure is logged.
pub const STORAGE_WARNING_EVERY: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_with_the_count_between() {
        let t = Throttle::new(Duration::from_secs(3600));
        assert_eq!(t.allow(), Some(0));
        assert_eq!(t.allow(), None);
        assert_eq!(t.allow(), None);
        let t0 = Throttle::new(Duration::ZERO);
        assert_eq!(t0.allow(), Some(0));
        assert_eq!(t0.allow(), Some(0));
    }
}
