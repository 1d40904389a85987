//! Rate limits, in families as Synapse's `rc_*` settings: per client
//! address (login, registration), per account (logins, failed logins), and
//! per user (messages, joins, invites, room creation, password checks in
//! User-Interactive Auth). Each is a token bucket per key
//! ([`RateLimiter`]); exceeding one is 429 `M_LIMIT_EXCEEDED` with
//! `retry_after_ms`.

use std::net::IpAddr;

use ganglion_base::config::{RateLimit, RateLimitsConfig};
pub(crate) use ganglion_base::rate_limit::RateLimiter;

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
