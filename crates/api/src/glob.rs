//! The glob syntax of a Subscription's `repositories.include`/`exclude` (and of
//! `kubectl bitbucket repos --match`): one matcher for the operator and the plugin, with the
//! grammar the CRD's admission rules accept. Pure; no I/O.

/// Matches `text` against a glob of `*` (any run), `?` (one character) and `[abc]`/`[!abc]`
/// classes with `a-z` ranges, case-insensitively (Bitbucket slugs are lowercase). Admission
/// only lets well-formed globs through; a malformed class matches nothing.
pub fn glob(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.to_ascii_lowercase().chars().collect();
    let text: Vec<char> = text.chars().collect();
    matches(&pattern, &text)
}

fn matches(pattern: &[char], text: &[char]) -> bool {
    // Iterative matching with backtracking to the last `*` only: linear in practice, no
    // exponential blow-up on patterns such as `*a*a*a*b`.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
                continue;
            }
            Some('?') => {
                p += 1;
                t += 1;
                continue;
            }
            Some('[') => {
                if let Some((true, next)) = class(pattern, p, text[t]) {
                    p = next;
                    t += 1;
                    continue;
                }
            }
            Some(c) if *c == text[t] => {
                p += 1;
                t += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((star_p, star_t)) => {
                p = star_p + 1;
                t = star_t + 1;
                star = Some((star_p, star_t + 1));
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

/// Evaluates the class starting at `pattern[open]` against `c`: whether it matched and where
/// the pattern continues. `None` for an unterminated class.
fn class(pattern: &[char], open: usize, c: char) -> Option<(bool, usize)> {
    let mut i = open + 1;
    let negated = pattern.get(i) == Some(&'!');
    if negated {
        i += 1;
    }
    let mut matched = false;
    let start = i;
    while let Some(&p) = pattern.get(i) {
        if p == ']' && i > start {
            return Some((matched != negated, i + 1));
        }
        if pattern.get(i + 1) == Some(&'-') && pattern.get(i + 2).is_some_and(|e| *e != ']') {
            matched |= (p..=pattern[i + 2]).contains(&c);
            i += 3;
        } else {
            matched |= p == c;
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An independent oracle: the glob translated into a regular expression.
    fn oracle(pattern: &str, text: &str) -> bool {
        let pattern: Vec<char> = pattern.to_ascii_lowercase().chars().collect();
        let mut regex = String::from("^");
        let mut i = 0;
        while i < pattern.len() {
            match pattern[i] {
                '*' => regex.push_str(".*"),
                '?' => regex.push('.'),
                '[' => {
                    let close = (i + 2..pattern.len()).find(|&j| pattern[j] == ']').unwrap();
                    let mut body: String = pattern[i + 1..close].iter().collect();
                    if let Some(rest) = body.strip_prefix('!') {
                        body = format!("^{rest}");
                    }
                    regex.push_str(&format!("[{}]", body.replace('.', "\\.")));
                    i = close;
                }
                c => regex.push_str(&regex::escape(&c.to_string())),
            }
            i += 1;
        }
        regex.push('$');
        regex::Regex::new(&regex).unwrap().is_match(text)
    }

    /// Globs of the grammar admission allows: literals, `*`, `?` and classes with ranges.
    fn globs() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        let token = prop_oneof![
            "[abAB1._-]".prop_map(String::from),
            Just("*".to_owned()),
            Just("?".to_owned()),
            "[ab1]{1,3}".prop_map(|members| format!("[{members}]")),
            "[ab1]{1,3}".prop_map(|members| format!("[!{members}]")),
            Just("[a-c]".to_owned()),
            Just("[!a-c]".to_owned()),
        ];
        proptest::collection::vec(token, 0..8).prop_map(|tokens| tokens.concat())
    }

    proptest::proptest! {
        /// The matcher agrees with a regular-expression translation on every glob the CRD
        /// admits and every slug, including the patterns that make naive backtracking slow.
        #[test]
        fn globs_match_exactly_what_their_regular_expression_matches(
            pattern in globs(),
            text in "[abc1._-]{0,12}",
        ) {
            proptest::prop_assert_eq!(glob(&pattern, &text), oracle(&pattern, &text), "{} on {}", pattern, text);
        }
    }

    #[test]
    fn globs_match_like_a_shell() {
        for (pattern, text) in [
            ("api-*", "api-gateway"),
            ("*-archive", "web-archive"),
            ("svc-?", "svc-1"),
            ("[!x]*", "api"),
            ("[a-c]pi", "api"),
            ("*", ""),
            ("API-*", "api-x"),
            ("*a*a*b", "aaaaaaaaaaaaaaaaaaaab"),
        ] {
            assert!(glob(pattern, text), "{pattern} should match {text}");
        }
        for (pattern, text) in [
            ("api-*", "web-api"),
            ("svc-?", "svc-10"),
            ("[!x]*", "xray"),
            ("[a-c]pi", "dpi"),
            ("api-[", "api-["),
            ("*a*a*b", "aaaaaaaaaaaaaaaaaaaaa"),
        ] {
            assert!(!glob(pattern, text), "{pattern} should not match {text}");
        }
    }
}
