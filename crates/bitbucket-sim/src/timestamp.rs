//! The two things about timestamps the simulator needs beyond [`jiff::Timestamp`]: Bitbucket
//! Cloud's way of writing them (`2025-01-27T14:15:58.600540+00:00`) and the `q` language's bare
//! dates (`2024-02-29` for midnight UTC), which jiff parses only as a civil date. Everything else
//! (the clock, arithmetic, ordering, offsets, `Z`) is jiff's. Pure; no I/O.

use jiff::{
    RoundMode, Timestamp, TimestampRound, Unit,
    civil::Date,
    fmt::temporal::DateTimePrinter,
    tz::{Offset, TimeZone},
};

/// Six fractional digits, as Bitbucket Cloud writes them; jiff's printer truncates.
const BITBUCKET: DateTimePrinter = DateTimePrinter::new().precision(Some(6));

/// Parses an RFC 3339 / ISO-8601 timestamp with any offset or `Z` and an optional fraction, or a
/// date alone (`YYYY-MM-DD`), which means midnight UTC as in Bitbucket's `q` language. Returns
/// `None` for anything else. The result is truncated to microseconds, Bitbucket's precision, so
/// two times that print the same also compare equal.
pub(crate) fn parse(text: &str) -> Option<Timestamp> {
    let text = text.trim();
    let at = match text.parse::<Timestamp>() {
        Ok(at) => at,
        // Only the exact `YYYY-MM-DD` shape: jiff's date parser would also take a datetime
        // without an offset (dropping its clock) or a compact `YYYYMMDD`, which would make such
        // strings compare as times when `sort=` and `q=` order field values.
        Err(_) if text.len() == 10 && text.as_bytes()[4] == b'-' && text.as_bytes()[7] == b'-' => {
            text.parse::<Date>()
                .ok()?
                .to_zoned(TimeZone::UTC)
                .ok()?
                .timestamp()
        }
        Err(_) => return None,
    };
    at.round(
        TimestampRound::new()
            .smallest(Unit::Microsecond)
            .mode(RoundMode::Trunc),
    )
    .ok()
}

/// Bitbucket Cloud's own format: UTC, six fractional digits, `+00:00` (never `Z`).
pub(crate) fn format(at: Timestamp) -> String {
    BITBUCKET.timestamp_with_offset_to_string(&at, Offset::UTC)
}

#[cfg(test)]
mod tests {
    use jiff::SignedDuration;

    use super::*;

    #[test]
    fn a_bitbucket_timestamp_round_trips() {
        let text = "2025-01-27T14:15:58.600540+00:00";
        assert_eq!(format(parse(text).unwrap()), text);
    }

    #[test]
    fn offsets_and_zulu_are_normalised_to_utc() {
        let a = parse("2026-01-01T01:00:00+01:00").unwrap();
        let b = parse("2026-01-01T00:00:00Z").unwrap();
        assert_eq!(a, b);
        assert_eq!(format(b), "2026-01-01T00:00:00.000000+00:00");
    }

    #[test]
    fn a_bare_date_means_midnight_utc_and_garbage_is_rejected() {
        assert_eq!(parse("2024-02-29"), parse("2024-02-29T00:00:00+00:00"));
        assert!(parse("yesterday").is_none());
        assert!(parse("2024-13-01").is_none());
        // A clock without an offset is not a point in time, and not a bare date either.
        assert!(parse("2024-02-29T10:00:00").is_none());
        assert!(parse("20240229").is_none());
    }

    #[test]
    fn fractions_finer_than_microseconds_are_truncated() {
        let fine = parse("2026-01-01T00:00:00.9999999Z").unwrap();
        assert_eq!(fine, parse("2026-01-01T00:00:00.999999Z").unwrap());
        assert_eq!(format(fine), "2026-01-01T00:00:00.999999+00:00");
    }

    #[test]
    fn later_times_compare_greater() {
        let early = parse("1999-12-31T23:59:59.999999+00:00").unwrap();
        let later = early + SignedDuration::from_secs(1);
        assert!(later > early);
        assert_eq!(format(later), "2000-01-01T00:00:00.999999+00:00");
    }
}
