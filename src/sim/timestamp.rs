//! ISO-8601 timestamps as Bitbucket Cloud writes them (`2025-01-27T14:15:58.600540+00:00`):
//! parsing (any offset, optional fraction, `Z`), formatting (always UTC, microseconds) and
//! ordering. Pure; no I/O. Hand-written because the simulator needs only this much and should
//! not pull a date crate into the operator's dependency set.

use std::{
    fmt,
    time::{SystemTime, UNIX_EPOCH},
};

/// A point in time with microsecond precision, ordered chronologically.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    micros: i64,
}

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            micros: i64::try_from(since.as_micros()).unwrap_or(i64::MAX),
        }
    }

    /// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)`; a date alone (`YYYY-MM-DD`) means midnight
    /// UTC, as in Bitbucket's `q` language. Returns `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let (date, rest) = text.split_at_checked(10)?;
        let mut parts = date.split('-');
        let year: i64 = parts.next()?.parse().ok()?;
        let month: u32 = parts.next()?.parse().ok()?;
        let day: u32 = parts.next()?.parse().ok()?;
        if parts.next().is_some() || !(1..=12).contains(&month) || !(1..=31).contains(&day) {
            return None;
        }
        let days = days_from_civil(year, month, day);
        if rest.is_empty() {
            return Some(Self {
                micros: days * 86_400 * 1_000_000,
            });
        }
        let rest = rest.strip_prefix(['T', 't', ' '])?;
        let (clock, offset_seconds) = split_offset(rest)?;
        let (hms, fraction) = match clock.split_once('.') {
            Some((hms, fraction)) => (hms, fraction),
            None => (clock, ""),
        };
        let mut hms = hms.split(':');
        let hour: i64 = hms.next()?.parse().ok()?;
        let minute: i64 = hms.next()?.parse().ok()?;
        let second: i64 = hms.next().unwrap_or("0").parse().ok()?;
        if hms.next().is_some() || hour > 23 || minute > 59 || second > 60 {
            return None;
        }
        if !fraction.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let micros_fraction: i64 = format!("{fraction:0<6}")[..6].parse().ok()?;
        let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second - offset_seconds;
        Some(Self {
            micros: seconds * 1_000_000 + micros_fraction,
        })
    }

    /// This time plus `seconds` (negative goes back).
    pub fn plus_seconds(self, seconds: i64) -> Self {
        Self {
            micros: self
                .micros
                .saturating_add(seconds.saturating_mul(1_000_000)),
        }
    }
}

/// Splits `HH:MM:SS.frac+01:00` into the clock part and the offset in seconds east of UTC.
fn split_offset(text: &str) -> Option<(&str, i64)> {
    if let Some(clock) = text.strip_suffix(['Z', 'z']) {
        return Some((clock, 0));
    }
    let sign_at = text.rfind(['+', '-'])?;
    let (clock, offset) = text.split_at(sign_at);
    let sign = if offset.starts_with('-') { -1 } else { 1 };
    let (hours, minutes) = offset[1..].split_once(':').unwrap_or((&offset[1..], "0"));
    let hours: i64 = hours.parse().ok()?;
    let minutes: i64 = minutes.parse().ok()?;
    Some((clock, sign * (hours * 3_600 + minutes * 60)))
}

impl fmt::Display for Timestamp {
    /// Bitbucket Cloud's own format: UTC, six fractional digits, `+00:00`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seconds = self.micros.div_euclid(1_000_000);
        let micros = self.micros.rem_euclid(1_000_000);
        let days = seconds.div_euclid(86_400);
        let of_day = seconds.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        write!(
            f,
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}+00:00",
            of_day / 3_600,
            of_day % 3_600 / 60,
            of_day % 60
        )
    }
}

// Howard Hinnant's civil-calendar algorithms (http://howardhinnant.github.io/date_algorithms.html).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bitbucket_timestamp_round_trips() {
        let text = "2025-01-27T14:15:58.600540+00:00";
        assert_eq!(Timestamp::parse(text).unwrap().to_string(), text);
    }

    #[test]
    fn offsets_and_zulu_are_normalised_to_utc() {
        let a = Timestamp::parse("2026-01-01T01:00:00+01:00").unwrap();
        let b = Timestamp::parse("2026-01-01T00:00:00Z").unwrap();
        assert_eq!(a, b);
        assert_eq!(b.to_string(), "2026-01-01T00:00:00.000000+00:00");
    }

    #[test]
    fn a_bare_date_means_midnight_utc_and_garbage_is_rejected() {
        assert_eq!(
            Timestamp::parse("2024-02-29"),
            Timestamp::parse("2024-02-29T00:00:00+00:00")
        );
        assert!(Timestamp::parse("yesterday").is_none());
        assert!(Timestamp::parse("2024-13-01").is_none());
    }

    #[test]
    fn later_times_compare_greater() {
        let early = Timestamp::parse("1999-12-31T23:59:59.999999+00:00").unwrap();
        assert!(early.plus_seconds(1) > early);
        assert_eq!(
            early.plus_seconds(1).to_string(),
            "2000-01-01T00:00:00.999999+00:00"
        );
    }
}
