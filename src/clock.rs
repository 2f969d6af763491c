//! The wall clock in unix seconds, the unit every stored timestamp uses (`created_at`, token
//! expiry). A leaf: the admin API, the plugins and the actors all read time here, so none of them
//! imports another for it.

/// Current unix time in seconds (0 if the system clock is before 1970, `i64::MAX` past year 292e9).
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}
