//! A per-connection token bucket for client events (Pusher: 10 per second per connection).
//!
//! Small enough to live inline in every session; a shared crate like `governor` would cost more
//! memory per connection than this whole struct.

use std::time::Instant;

#[derive(Debug)]
pub struct TokenBucket {
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(per_second: u32) -> TokenBucket {
        let per_second = f64::from(per_second.max(1));
        TokenBucket {
            per_second,
            tokens: per_second,
            last: Instant::now(),
        }
    }

    /// Takes one token if available.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.per_second);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn allows_burst_then_refills() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10);
        let allowed = (0..15).filter(|_| bucket.try_take(start)).count();
        assert_eq!(allowed, 10);
        assert!(bucket.try_take(start + Duration::from_millis(150)));
    }
}
