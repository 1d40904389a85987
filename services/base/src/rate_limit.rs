//! Rate limiting: a token bucket per key (a user, an address), the keys
//! held in a bounded map. Exceeding one is 429 `M_LIMIT_EXCEEDED` with
//! `retry_after_ms`. The families (which limit applies where) are the
//! services' own: the clientapi's in its `rate_limit.rs`, the mediaapi's
//! uploads and previews.

use std::sync::Mutex;
use std::time::Instant;

use crate::MatrixError;
use crate::bounded::Bounded;
use crate::config::RateLimit;

/// One family: a token bucket per key.
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    enabled: bool,
    buckets: Mutex<Bounded<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(limit: &RateLimit, enabled: bool, keys: usize) -> Self {
        RateLimiter {
            per_second: limit.per_second,
            burst: f64::from(limit.burst.max(1)),
            enabled,
            buckets: Mutex::new(Bounded::new(keys)),
        }
    }

    /// Takes one token for `key`, or says when one will be available.
    pub fn check(&self, key: &str) -> Result<(), MatrixError> {
        self.take(key, true)
    }

    /// Whether `key` has a token left, without taking it (for limits on
    /// failures, taken only once an attempt failed).
    pub fn peek(&self, key: &str) -> Result<(), MatrixError> {
        self.take(key, false)
    }

    fn take(&self, key: &str, consume: bool) -> Result<(), MatrixError> {
        if !self.enabled {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = buckets.peek(key).copied().unwrap_or((self.burst, now));
        let tokens =
            (tokens + now.duration_since(last).as_secs_f64() * self.per_second).min(self.burst);
        if tokens >= 1.0 {
            let left = if consume { tokens - 1.0 } else { tokens };
            buckets.insert(key.to_owned(), (left, now));
            Ok(())
        } else {
            buckets.insert(key.to_owned(), (tokens, now));
            let wait_ms = ((1.0 - tokens) / self.per_second * 1000.0).ceil() as u64;
            Err(MatrixError::limit_exceeded(wait_ms.max(1)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(per_second: f64, burst: u32) -> RateLimit {
        RateLimit { per_second, burst }
    }

    #[test]
    fn burst_then_limited_with_retry_after() {
        let limiter = RateLimiter::new(&limit(0.5, 3), true, 100);
        for _ in 0..3 {
            assert!(limiter.check("127.0.0.1").is_ok());
        }
        let error = limiter.check("127.0.0.1").expect_err("limited");
        assert_eq!(error.errcode, "M_LIMIT_EXCEEDED");
        assert!(error.retry_after_ms.is_some_and(|ms| ms > 0 && ms <= 2000));
        assert!(limiter.check("10.0.0.1").is_ok(), "other keys unaffected");
        // Peeking takes nothing.
        let failures = RateLimiter::new(&limit(0.1, 2), true, 100);
        for _ in 0..5 {
            assert!(failures.peek("@a:x").is_ok());
        }
        let disabled = RateLimiter::new(&limit(0.1, 1), false, 100);
        for _ in 0..5 {
            assert!(disabled.check("k").is_ok());
        }
    }
}
