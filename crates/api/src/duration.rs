//! The one duration syntax of the project: Go's `time.ParseDuration` for the non-negative values
//! the CRDs' CEL format rule ([`crate::common::interval_format_rule`]) admits. Both the
//! intervals of the custom resources (`validationInterval`, `syncInterval`) and the plugin's
//! `--timeout` read durations with [`parse_duration`], so a text is accepted in both places or in
//! neither. No I/O.

use std::time::Duration;

/// The longest duration: Go's (an `int64` of nanoseconds, about 292 years). Go and CEL's
/// `duration()` refuse anything longer, and so does [`parse_duration`].
pub const MAX_DURATION: Duration = Duration::new(9_223_372_036, 854_775_807);

/// [`MAX_DURATION`] as Go writes it.
const MAX_DURATION_TEXT: &str = "2562047h47m16.854775807s";

/// The accepted form, for error messages.
const ACCEPTED: &str = "one or more <number><unit>, such as 45s, 2m, 1h30m or 1.5h \
                        (units: ns, us, µs, ms, s, m, h)";

/// Why a text is not a duration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing was written.
    #[error("a duration is required: write {ACCEPTED}")]
    Empty,
    /// Not the duration syntax (no unit, an unknown unit, a sign, spaces, ...).
    #[error("`{0}` is not a duration: write {ACCEPTED}")]
    Malformed(String),
    /// The syntax is right but the value is longer than [`MAX_DURATION`].
    #[error("`{0}` is too long: at most {MAX_DURATION_TEXT} (about 292 years)")]
    TooLong(String),
}

/// Parses a Go-style duration: one or more `<number><unit>` where the number is digits with
/// an optional fraction (`1.5h`) and the unit one of `ns`, `us`, `µs`, `ms`, `s`, `m`, `h`
/// (`30m`, `1h30m`, `90s`, `250ms`).
///
/// Exactly the texts that the CRDs' CEL pattern (`DURATION_PATTERN`) matches are accepted, up to
/// [`MAX_DURATION`]; longer ones are refused with [`DurationError::TooLong`] rather than
/// wrapped or saturated. Go accepts a few more forms that the pattern refuses, and so does not
/// this parser: a sign (`-5m`, `+5m`), a bare `0`, a fraction without digits on one side
/// (`.5h`, `1.h`) and the Greek letter mu (`μs`). Fractions are exact to the nanosecond,
/// truncated below it.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let malformed = || DurationError::Malformed(text.to_owned());
    let too_long = || DurationError::TooLong(text.to_owned());
    let limit = u64::try_from(MAX_DURATION.as_nanos()).expect("Go's limit fits in u64");

    let mut rest = text;
    // `None` once past the limit; the rest is still read, so that a malformed text is called
    // malformed whatever its numbers.
    let mut total = Some(0u64);
    while !rest.is_empty() {
        let (whole, after) = split_digits(rest);
        if whole.is_empty() {
            return Err(malformed());
        }
        let (fraction, after) = match after.strip_prefix('.') {
            Some(after) => match split_digits(after) {
                ("", _) => return Err(malformed()),
                split => split,
            },
            None => ("", after),
        };
        let (unit, after) = split_unit(after).ok_or_else(malformed)?;
        rest = after;

        let whole = whole.bytes().try_fold(0u64, |value, digit| {
            value.checked_mul(10)?.checked_add(u64::from(digit - b'0'))
        });
        // `unit * 0.<fraction>`, truncated: folding the digits from the last one keeps every
        // step below `unit`, and floor((floor(x) + n) / 10) = floor((x + n) / 10) keeps it exact.
        let fraction = fraction.bytes().rev().fold(0u64, |acc, digit| {
            (acc + u64::from(digit - b'0') * unit) / 10
        });
        total = whole
            .and_then(|whole| whole.checked_mul(unit))
            .and_then(|term| term.checked_add(fraction))
            .zip(total)
            .and_then(|(term, total)| total.checked_add(term))
            .filter(|&total| total <= limit);
    }
    total.map(Duration::from_nanos).ok_or_else(too_long)
}

/// The leading ASCII digits of `text` and the rest.
fn split_digits(text: &str) -> (&str, &str) {
    text.split_at(text.bytes().take_while(u8::is_ascii_digit).count())
}

/// The unit at the start of `text`, in nanoseconds, and the rest. The two-letter units are
/// tried first: after `1m`, an `s` could not start another `<number><unit>`, so `1ms` is a
/// millisecond in both this parser and the pattern.
fn split_unit(text: &str) -> Option<(u64, &str)> {
    const UNITS: [(&str, u64); 7] = [
        ("ns", 1),
        ("us", 1_000),
        ("\u{b5}s", 1_000), // U+00B5 MICRO SIGN, as in the pattern (not U+03BC, Greek mu)
        ("ms", 1_000_000),
        ("s", 1_000_000_000),
        ("m", 60_000_000_000),
        ("h", 3_600_000_000_000),
    ];
    UNITS
        .iter()
        .find_map(|&(unit, nanos)| text.strip_prefix(unit).map(|rest| (nanos, rest)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::common::DURATION_PATTERN;

    fn pattern() -> regex::Regex {
        regex::Regex::new(DURATION_PATTERN).unwrap()
    }

    #[test]
    fn go_durations_parse_to_their_value() {
        let cases = [
            ("1h30m", Duration::from_secs(5400)),
            ("2m", Duration::from_secs(120)),
            ("45s", Duration::from_secs(45)),
            ("90s", Duration::from_secs(90)),
            ("10m", Duration::from_secs(600)),
            ("1.5h", Duration::from_secs(5400)),
            ("0.5s", Duration::from_millis(500)),
            ("1m30s", Duration::from_secs(90)),
            ("1h1h", Duration::from_secs(7200)),
            ("250ms", Duration::from_millis(250)),
            ("1ms1s", Duration::from_millis(1001)),
            ("3us", Duration::from_micros(3)),
            ("3\u{b5}s", Duration::from_micros(3)),
            ("7ns", Duration::from_nanos(7)),
            ("0s", Duration::ZERO),
            ("007m", Duration::from_secs(420)),
            ("1.000000001s", Duration::from_nanos(1_000_000_001)),
            ("1.9999999999s", Duration::from_nanos(1_999_999_999)),
            ("0.1ns", Duration::ZERO),
            ("0.333333333333h", Duration::from_nanos(1_199_999_999_998)),
            (MAX_DURATION_TEXT, MAX_DURATION),
            ("9223372036854775807ns", MAX_DURATION),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
    }

    /// For every text, the parser and the CEL format rule's pattern agree (the pattern does not
    /// know the upper bound; no text here exceeds it).
    #[test]
    fn the_parser_accepts_exactly_what_the_cel_pattern_admits() {
        let pattern = pattern();
        let texts = [
            // admitted
            "1h30m",
            "2m",
            "45s",
            "1.5h",
            "90s",
            "10m",
            "30m",
            "1h",
            "0s",
            "250ms",
            "3us",
            "3\u{b5}s",
            "7ns",
            "1m30s",
            "1h1h",
            "0.5s",
            "007m",
            "1ms1s",
            "1.25m",
            // refused
            "",
            "30",
            "0",
            "1.5",
            ".5h",
            "1.h",
            "1..5h",
            "1.5.5h",
            "-5m",
            "+5m",
            " 5m",
            "5m ",
            "5 m",
            "5M",
            "5H",
            "1d",
            "1w",
            "soon",
            "30 minutes",
            "5mm",
            "5ss",
            "h",
            "m30",
            "1hm",
            "1m30",
            "1e3s",
            "1_000s",
            "1,5h",
            "3\u{3bc}s",
            "\u{663}s",
            "5m\n",
            "inf",
            "NaN",
            "1h-30m",
            "0x10s",
        ];
        for text in texts {
            let parsed = parse_duration(text);
            assert_eq!(
                parsed.is_ok(),
                pattern.is_match(text),
                "{text:?}: the parser says {parsed:?}"
            );
        }
    }

    proptest::proptest! {
        /// On texts made of the pattern's own pieces (and a few wrong ones), the parser accepts
        /// what the pattern admits, refuses what it does not, and never panics.
        #[test]
        fn the_parser_and_the_cel_pattern_agree_on_any_text(
            text in "([0-9]{0,22}([.][0-9]{0,12})?(ns|us|\u{b5}s|\u{3bc}s|ms|s|m|h|d|M| |-|)){0,4}",
        ) {
            match parse_duration(&text) {
                Err(DurationError::TooLong(_)) => proptest::prop_assert!(pattern().is_match(&text)),
                parsed => proptest::prop_assert_eq!(parsed.is_ok(), pattern().is_match(&text), "{:?}", parsed),
            }
        }

        /// A sum of terms is the sum of their durations, up to the maximum.
        #[test]
        fn terms_add_up(hours in 0u64..3_000_000, minutes in 0u64..100_000, seconds in 0u64..100_000) {
            let text = format!("{hours}h{minutes}m{seconds}s");
            let expected = Duration::from_secs(hours * 3600 + minutes * 60 + seconds);
            match parse_duration(&text) {
                Ok(parsed) => proptest::prop_assert_eq!(parsed, expected),
                Err(error) => {
                    proptest::prop_assert!(expected > MAX_DURATION);
                    proptest::prop_assert_eq!(error, DurationError::TooLong(text));
                }
            }
        }
    }

    #[test]
    fn too_long_durations_are_refused_not_wrapped() {
        for text in [
            "99999999999999h",
            "2562047h47m16.854775808s",
            "9223372036854775808ns",
            "18446744073709551616ns",
            "99999999999999999999999999999s",
            "2562047h2562047h",
            "2562048h",
        ] {
            assert_eq!(
                parse_duration(text),
                Err(DurationError::TooLong(text.to_owned())),
                "{text}"
            );
            assert!(pattern().is_match(text), "{text}");
        }
        assert_eq!(
            parse_duration("99999999999999h soon"),
            Err(DurationError::Malformed("99999999999999h soon".to_owned())),
            "malformed first, whatever the numbers"
        );
        assert_eq!(
            parse_duration("99999999999999h").unwrap_err().to_string(),
            "`99999999999999h` is too long: at most 2562047h47m16.854775807s (about 292 years)"
        );
    }

    #[test]
    fn errors_name_the_accepted_form() {
        let malformed = parse_duration("soon").unwrap_err().to_string();
        assert!(
            malformed.starts_with("`soon` is not a duration: "),
            "{malformed}"
        );
        assert!(
            malformed.contains("such as 45s, 2m, 1h30m or 1.5h"),
            "{malformed}"
        );
        let empty = parse_duration("").unwrap_err().to_string();
        assert!(empty.contains("such as 45s, 2m, 1h30m or 1.5h"), "{empty}");
    }

    #[test]
    fn the_maximum_is_what_go_writes() {
        assert_eq!(
            MAX_DURATION.as_nanos(),
            u128::try_from(i64::MAX).unwrap(),
            "Go's time.Duration is an int64 of nanoseconds"
        );
        assert_eq!(parse_duration(MAX_DURATION_TEXT), Ok(MAX_DURATION));
    }
}
