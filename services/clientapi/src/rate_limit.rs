//! Rate limits, in families as Synapse's `rc_*` settings: per client
//! address (login, registration), per account (logins, failed logins), and
//! per user (messages, joins, invites, room creation, password checks in
//! User-Interactive Auth). Each is a token bucket per key; the keys are held
//! in a bounded map. Exceeding one is 429 `M_LIMIT_EXCEEDED` with
//! `retry_after_ms`.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use ganglion_base::MatrixError;
use ganglion_base::bounded::Bounded;
use ganglion_base::config::{RateLimit, RateLimitsConfig};

/// One family: a token bucket per key.
pub(crate) struct RateLimiter {
    per_second: f64,
    burst: f64,
    enabled: bool,
    buckets: Mutex<Bounded<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub(crate) fn new(limit: &RateLimit, enabled: bool, keys: usize) -> Self {
        RateLimiter {
            per_second: limit.per_second,
            burst: f64::from(limit.burst.max(1)),
            enabled,
            buckets: Mutex::new(Bounded::new(keys)),
        }
    }

    /// Takes one token for `key`, or says when one will be available.
    pub(crate) fn check(&self, key: &str) -> Result<(), MatrixError> {
        self.take(key, true)
    }

    /// Whether `key` has a token left, without taking it (for limits on
    /// failures, taken only once an attempt failed).
    pub(crate) fn peek(&self, key: &str) -> Result<(), MatrixError> {
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

/// Every family this service enforces.
pub(crate) struct RateLimits {
    pub(crate) login_per_address: RateLimiter,
    pub(crate) login_per_account: RateLimiter,
    pub(crate) failed_logins_per_account: RateLimiter,
    pub(crate) registration_per_address: RateLimiter,
    pub(crate) messages_per_user: RateLimiter,
    pub(crate) joins_per_user: RateLimiter,
    pub(crate) invites_per_user: RateLimiter,
    pub(crate) room_creation_per_user: RateLimiter,
    pub(crate) password_checks_per_user: RateLimiter,
}

impl RateLimits {
    pub(crate) fn new(config: &RateLimitsConfig, keys: usize) -> Self {
        let family = |limit: &RateLimit| RateLimiter::new(limit, config.enabled, keys);
        RateLimits {
            login_per_address: family(&config.login_per_address),
            login_per_account: family(&config.login_per_account),
            failed_logins_per_account: family(&config.failed_logins_per_account),
            registration_per_address: family(&config.registration_per_address),
            messages_per_user: family(&config.messages_per_user),
            joins_per_user: family(&config.joins_per_user),
            invites_per_user: family(&config.invites_per_user),
            room_creation_per_user: family(&config.room_creation_per_user),
            password_checks_per_user: family(&config.password_checks_per_user),
        }
    }
}

/// The address a request came from: the connection's peer, or, when the
/// peer is a trusted proxy (the gateway, a load balancer), the nearest
/// address in `X-Forwarded-For` that is not itself a trusted proxy.
pub(crate) fn client_address(
    peer: IpAddr,
    forwarded_for: Option<&str>,
    trusted: &[ipnet::IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let Some(forwarded_for) = forwarded_for else {
        return peer;
    };
    let mut nearest = peer;
    for hop in forwarded_for.rsplit(',') {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            // A hop we cannot read: trust nothing beyond it.
            return nearest;
        };
        nearest = ip;
        if !is_trusted(&ip) {
            return ip;
        }
    }
    nearest
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

    #[test]
    fn the_forwarded_address_counts_only_behind_a_trusted_proxy() {
        let trusted: Vec<ipnet::IpNet> = vec!["127.0.0.0/8".parse().expect("net")];
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        // A client talking to us directly cannot pick its address.
        assert_eq!(
            client_address(ip("203.0.113.9"), Some("198.51.100.1"), &trusted),
            ip("203.0.113.9")
        );
        // Behind the gateway: the client's address, not the gateway's.
        assert_eq!(
            client_address(ip("127.0.0.1"), Some("198.51.100.1"), &trusted),
            ip("198.51.100.1")
        );
        // A client's own forged entries sit left of what the proxy added.
        assert_eq!(
            client_address(ip("127.0.0.1"), Some("10.9.9.9, 198.51.100.1"), &trusted),
            ip("198.51.100.1")
        );
        assert_eq!(
            client_address(ip("127.0.0.1"), Some("nonsense"), &trusted),
            ip("127.0.0.1")
        );
        assert_eq!(
            client_address(ip("127.0.0.1"), None, &trusted),
            ip("127.0.0.1")
        );
    }
}
