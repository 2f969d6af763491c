//! The wall clock in unix seconds, the unit every stored timestamp uses (`created_at`, token
//! expiry), and the kernel's coarse clocks for what the proxy path times in seconds. A leaf: the
//! admin API, the plugins, the proxy and the actors all read time here, so none of them imports
//! another for it.

use std::time::{Duration, Instant};

/// Current unix time in seconds (0 if the system clock is before 1970, `i64::MAX` past year 292e9).
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// Current unix time in seconds as of the kernel's last tick (a few milliseconds behind
/// [`now`] at most, as nginx's cached `ngx.time()` that Kong reads is): for the proxy path's
/// per-request checks, where a precise reading costs several times more on a VM.
pub fn now_coarse() -> i64 {
    rustix::time::clock_gettime(rustix::time::ClockId::RealtimeCoarse).tv_sec
}

thread_local! {
    /// Where the coarse monotonic readings start: a precise reading and the coarse clock's at
    /// the same moment (both count `CLOCK_MONOTONIC`, the coarse one as of the last tick).
    static COARSE_BASE: (Instant, Duration) = (Instant::now(), monotonic_coarse());
}

/// The monotonic clock as of the kernel's last tick, read without the TSC.
fn monotonic_coarse() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or_default(),
        u32::try_from(t.tv_nsec).unwrap_or_default(),
    )
}

/// An [`Instant`] to within the kernel's tick (a few milliseconds): for deadlines and ages in
/// seconds (hyper's request-head timeout, the upstream pool's idle time), where a precise reading
/// costs several times more on a VM than it tells.
pub fn instant_coarse() -> Instant {
    COARSE_BASE.with(|&(instant, coarse)| instant + monotonic_coarse().saturating_sub(coarse))
}

/// Current unix time in seconds with millisecond precision (Kong's `auto_timestamp_ms`, which
/// targets carry so that two changes within a second still order).
pub fn now_ms() -> f64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    #[expect(
        clippy::cast_precision_loss,
        reason = "milliseconds since 1970 stay far below 2^53"
    )]
    let seconds = (ms as f64) / 1000.0;
    seconds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_coarse_clock_is_the_wall_clock_within_a_tick() {
        let (before, coarse, after) = (now(), now_coarse(), now());
        // A tick behind at most: the same second, or the one before across a boundary.
        assert!(coarse <= after, "{coarse} > {after}");
        assert!(coarse >= before - 1, "{coarse} < {before} - 1");
    }

    #[test]
    fn the_coarse_instant_trails_the_precise_one_by_less_than_a_tick() {
        let coarse = instant_coarse();
        let precise = Instant::now();
        assert!(precise.saturating_duration_since(coarse) < Duration::from_millis(50));
        assert!(coarse.saturating_duration_since(precise) < Duration::from_millis(50));
    }
}
