//! Text from outside made safe before it is stored or printed (issue 25): what Bitbucket says
//! (its error messages, display names, scopes) on its way into the API server, and what the
//! plugin prints onto a terminal. Control characters (C0, DEL, C1), which can move a terminal's
//! cursor or write its clipboard (OSC 52), and the bidi controls, which can show text in another
//! order than it is stored, are escaped as `\uXXXX` (valid in JSON and YAML strings too); and
//! each piece is capped, so a status write cannot fail because of what Bitbucket said. Pure.

use std::borrow::Cow;

/// The longest condition message stored (a status write of a multi-MiB message fails).
pub const MAX_MESSAGE_BYTES: usize = 32 * 1024;
/// The longest single value quoted from Bitbucket (a display name, a scope, a branch name).
pub const MAX_QUOTED_BYTES: usize = 1024;

/// Whether `c` must not reach a terminal or a reader as it is.
fn unsafe_char(c: char) -> bool {
    c.is_control() // C0, DEL and C1
        || matches!(
            c,
            '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

/// `text` with every unsafe character escaped, except those `keep` lets through, and cut at
/// `max_bytes` (on a character boundary, marked with `…`).
fn escaped(text: &str, max_bytes: usize, keep: impl Fn(char) -> bool) -> Cow<'_, str> {
    if text.len() <= max_bytes && !text.chars().any(|c| unsafe_char(c) && !keep(c)) {
        return Cow::Borrowed(text);
    }
    let mut safe = String::with_capacity(text.len().min(max_bytes) + 8);
    for c in text.chars() {
        let piece = if unsafe_char(c) && !keep(c) {
            format!("\\u{:04X}", u32::from(c))
        } else {
            c.to_string()
        };
        if safe.len() + piece.len() > max_bytes.saturating_sub('…'.len_utf8()) {
            safe.push('…');
            break;
        }
        safe.push_str(&piece);
    }
    Cow::Owned(safe)
}

/// Text on its way into the API server (a condition message, an Event note, a value in
/// status): one line, every unsafe character escaped, at most `max_bytes`.
pub fn for_the_api(text: &str, max_bytes: usize) -> Cow<'_, str> {
    escaped(text, max_bytes, |_| false)
}

/// Text on its way onto a terminal: lines stay lines, every other unsafe character is escaped.
/// `colours` are escape sequences the caller wrote itself and lets through (the plugin's own
/// colours); any other escape sequence is shown, not obeyed.
pub fn for_a_terminal(text: &str, colours: &[&str]) -> String {
    let mut safe = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('\x1b') {
        safe.push_str(&escaped(&rest[..at], usize::MAX, |c| c == '\n'));
        rest = &rest[at..];
        match colours.iter().find(|colour| rest.starts_with(**colour)) {
            Some(colour) => {
                safe.push_str(colour);
                rest = &rest[colour.len()..];
            }
            None => {
                safe.push_str("\\u001B");
                rest = &rest[1..];
            }
        }
    }
    safe.push_str(&escaped(rest, usize::MAX, |c| c == '\n'));
    safe
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a hostile server may say: a clipboard write (OSC 52), a cursor move and screen
    /// clear (CSI), the 8-bit CSI (C1), DEL, a right-to-left override and an isolate.
    const HOSTILE: &str = "x\x1b]52;c;ZWNobyBwd25lZA==\x07y\x1b[2J\x1b[H\u{9b}31m\x7f\u{202E}gnp.exe\u{2066}z\r\nnext";

    #[test]
    fn nothing_unsafe_reaches_the_api_and_what_is_shown_says_what_was_there() {
        let safe = for_the_api(HOSTILE, MAX_MESSAGE_BYTES);
        assert!(!safe.chars().any(unsafe_char), "{safe:?}");
        assert_eq!(
            safe,
            "x\\u001B]52;c;ZWNobyBwd25lZA==\\u0007y\\u001B[2J\\u001B[H\\u009B31m\\u007F\\u202Egnp.exe\\u2066z\\u000D\\u000Anext"
        );
        assert!(matches!(for_the_api("plain text", 100), Cow::Borrowed(_)));
    }

    #[test]
    fn a_huge_message_is_cut_on_a_character_boundary() {
        let huge = "é".repeat(2 * 1024 * 1024); // 4 MiB
        let safe = for_the_api(&huge, MAX_MESSAGE_BYTES);
        assert!(safe.len() <= MAX_MESSAGE_BYTES, "{}", safe.len());
        assert!(safe.ends_with('…'));
        let escapes = "\u{7}".repeat(100_000);
        assert!(for_the_api(&escapes, MAX_QUOTED_BYTES).len() <= MAX_QUOTED_BYTES);
    }

    #[test]
    fn a_terminal_gets_lines_and_the_callers_colours_and_nothing_else() {
        let red = "\x1b[31m";
        let reset = "\x1b[0m";
        let text = format!("{red}Stalled{reset}: {HOSTILE}\n");
        let safe = for_a_terminal(&text, &[red, reset]);
        assert!(
            safe.starts_with("\x1b[31mStalled\x1b[0m: x\\u001B]52"),
            "{safe:?}"
        );
        assert_eq!(safe.matches('\x1b').count(), 2, "{safe:?}");
        assert!(safe.ends_with("z\\u000D\nnext\n"), "{safe:?}");
        assert!(
            !safe
                .chars()
                .any(|c| unsafe_char(c) && c != '\n' && c != '\x1b')
        );
    }

    proptest::proptest! {
        /// Whatever the text, nothing unsafe is left and the cap holds.
        #[test]
        fn any_text_is_made_safe_and_short(text in ".{0,300}", cap in 4usize..200) {
            let safe = for_the_api(&text, cap);
            proptest::prop_assert!(safe.len() <= cap);
            proptest::prop_assert!(!safe.chars().any(unsafe_char));
            let shown = for_a_terminal(&text, &[]);
            proptest::prop_assert!(!shown.chars().any(|c| unsafe_char(c) && c != '\n'));
        }
    }
}
