//! The six fixed windows of Kong's `rate-limiting`, aligned on UTC calendar boundaries as Kong's
//! `kong.tools.timestamp` aligns them (a minute starts at :00, a month on its first day), with
//! Kong's expirations (a month is 30 days, a year 365, for the reset countdown and Redis expiry).

use crate::plugin_api::HeaderName;

/// One window length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// One second.
    Second,
    /// One minute.
    Minute,
    /// One hour.
    Hour,
    /// One UTC day.
    Day,
    /// One UTC calendar month.
    Month,
    /// One UTC calendar year.
    Year,
}

/// Every period, shortest first: the order of Kong's checks and of the config fields.
pub const PERIODS: [Period; 6] = [
    Period::Second,
    Period::Minute,
    Period::Hour,
    Period::Day,
    Period::Month,
    Period::Year,
];

impl Period {
    /// The config field and the name in counter keys.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Second => "second",
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Month => "month",
            Self::Year => "year",
        }
    }

    /// Position in [`PERIODS`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// Kong's `expiration.lua`: seconds a window lasts for the reset countdown and Redis expiry.
    pub const fn expiration(self) -> u64 {
        match self {
            Self::Second => 1,
            Self::Minute => 60,
            Self::Hour => 3_600,
            Self::Day => 86_400,
            Self::Month => 2_592_000,
            Self::Year => 31_536_000,
        }
    }

    /// `X-RateLimit-Limit-<Window>`.
    pub fn limit_header(self) -> HeaderName {
        HeaderName::from_static(match self {
            Self::Second => "x-ratelimit-limit-second",
            Self::Minute => "x-ratelimit-limit-minute",
            Self::Hour => "x-ratelimit-limit-hour",
            Self::Day => "x-ratelimit-limit-day",
            Self::Month => "x-ratelimit-limit-month",
            Self::Year => "x-ratelimit-limit-year",
        })
    }

    /// `X-RateLimit-Remaining-<Window>`.
    pub fn remaining_header(self) -> HeaderName {
        HeaderName::from_static(match self {
            Self::Second => "x-ratelimit-remaining-second",
            Self::Minute => "x-ratelimit-remaining-minute",
            Self::Hour => "x-ratelimit-remaining-hour",
            Self::Day => "x-ratelimit-remaining-day",
            Self::Month => "x-ratelimit-remaining-month",
            Self::Year => "x-ratelimit-remaining-year",
        })
    }

    /// Unix time (seconds, UTC) at which the window holding `now` began.
    pub fn start(self, now: i64) -> i64 {
        let day = now.div_euclid(86_400) * 86_400;
        match self {
            Self::Second => now,
            Self::Minute => now - now.rem_euclid(60),
            Self::Hour => now - now.rem_euclid(3_600),
            Self::Day => day,
            Self::Month | Self::Year => {
                let (year, month, _) = civil_from_days(now.div_euclid(86_400));
                let month = if self == Self::Year { 1 } else { month };
                days_from_civil(year, month, 1) * 86_400
            }
        }
    }

    /// Kong's `RateLimit-Reset`: seconds left in the window by its expiration, at least 1.
    pub fn reset(self, now: i64) -> u64 {
        let elapsed = u64::try_from(now - self.start(now)).unwrap_or(0);
        self.expiration().saturating_sub(elapsed).max(1)
    }
}

/// (year, month 1–12, day 1–31) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Day count since 1970-01-01 of a civil date (the inverse of [`civil_from_days`]).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-02-29T13:45:30Z.
    const LEAP_DAY: i64 = 1_709_214_330;

    #[test]
    fn windows_start_on_utc_calendar_boundaries() {
        assert_eq!(Period::Second.start(LEAP_DAY), LEAP_DAY);
        assert_eq!(Period::Minute.start(LEAP_DAY), LEAP_DAY - 30);
        assert_eq!(Period::Hour.start(LEAP_DAY), LEAP_DAY - 45 * 60 - 30);
        assert_eq!(Period::Day.start(LEAP_DAY), 1_709_164_800);
        // 2024-02-01T00:00:00Z and 2024-01-01T00:00:00Z.
        assert_eq!(Period::Month.start(LEAP_DAY), 1_706_745_600);
        assert_eq!(Period::Year.start(LEAP_DAY), 1_704_067_200);
        assert_eq!(Period::Year.start(0), 0);
    }

    #[test]
    fn reset_counts_down_kongs_expiration_and_never_reaches_zero() {
        assert_eq!(Period::Second.reset(LEAP_DAY), 1);
        assert_eq!(Period::Minute.reset(LEAP_DAY), 30);
        assert_eq!(Period::Hour.reset(LEAP_DAY), 3_600 - 45 * 60 - 30);
        // Kong counts a month as 30 days: late in a 31-day month the countdown stops at 1.
        let jan_31 = 1_706_659_200 + 3_600;
        assert_eq!(Period::Month.reset(jan_31), 1);
    }

    #[test]
    fn calendar_conversions_round_trip() {
        for days in [-800_000, -1, 0, 59, 10_000, 19_782, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }
}
