//! Rate limits, in families as Synapse's `rc_*` settings: per client
//! address (login, registration), per account (logins, failed logins), and
//! per user (messages, joins, invites, room creation, password checks in
//! User-Interactive Auth, space hierarchy pages). Each is a token bucket per key
//! ([`RateLimiter`]); exceeding one is 429 `M_LIMIT_EXCEEDED` with
//! `retry_after_ms`.

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
    pub(crate) hierarchy_per_user: RateLimiter,
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
            hierarchy_per_user: family(&config.hierarchy_per_user),
        }
    }
}
