//! The one clock: milliseconds since the Unix epoch, as Matrix counts time.

/// Now, in milliseconds since the Unix epoch (0 for a clock before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `age` ago, in milliseconds since the Unix epoch.
pub fn ago_ms(age: std::time::Duration) -> i64 {
    now_ms().saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX))
}
