//! Guards for following `next` links (Cloud): a link is followed only when it stays on the
//! origin the client was configured for and has not been seen before, so a misbehaving server
//! (or a proxy rewriting links) can neither loop us forever nor receive our credential on
//! another host (Bitbucket documents `next` as opaque: api-facts §A.5). No I/O.

use std::collections::HashSet;

use url::{Origin, Url};

use super::error::Error;

/// More pages than any real listing needs (10,000 pages of 100 is a million repositories).
const MAX_PAGES: usize = 10_000;

pub(crate) struct NextLinks {
    origin: Origin,
    seen: HashSet<String>,
}

impl NextLinks {
    /// Starts from the first page's URL.
    pub fn new(first: &Url) -> Self {
        Self {
            origin: first.origin(),
            seen: HashSet::from([first.as_str().to_owned()]),
        }
    }

    /// Checks `next` and returns it as the URL to fetch.
    pub fn follow(&mut self, next: &str) -> Result<Url, Error> {
        let url = Url::parse(next).map_err(|_| Error::PagingLoop {
            reason: "the next link is not an absolute URL".into(),
        })?;
        if url.origin() != self.origin {
            return Err(Error::PagingLoop {
                reason: format!(
                    "the next link points at {} instead of {}",
                    url.origin().ascii_serialization(),
                    self.origin.ascii_serialization()
                ),
            });
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(Error::PagingLoop {
                reason: "the next link carries credentials".into(),
            });
        }
        if !self.seen.insert(url.as_str().to_owned()) {
            return Err(Error::PagingLoop {
                reason: format!("page {} repeats an earlier page", self.seen.len() + 1),
            });
        }
        if self.seen.len() > MAX_PAGES {
            return Err(Error::PagingLoop {
                reason: format!("more than {MAX_PAGES} pages"),
            });
        }
        Ok(url)
    }
}

/// Data Center pages by offset: `nextPageStart` must move forward (api-facts §D.5).
pub(crate) fn next_start(
    current: u64,
    next: Option<u64>,
    is_last: bool,
) -> Result<Option<u64>, Error> {
    if is_last {
        return Ok(None);
    }
    match next {
        Some(next) if next > current => Ok(Some(next)),
        Some(next) => Err(Error::PagingLoop {
            reason: format!("nextPageStart {next} does not move past start {current}"),
        }),
        None => Err(Error::PagingLoop {
            reason: "a page that is not the last has no nextPageStart".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first() -> Url {
        Url::parse("https://api.bitbucket.org/2.0/repositories/acme?pagelen=100").unwrap()
    }

    proptest::proptest! {
        /// Whatever `next` links a server sends, in any order: a followed link is on the first
        /// page's origin, carries no credentials, and was never followed before — so a listing
        /// can neither loop nor send the credential elsewhere.
        #[test]
        fn links_are_followed_once_and_only_on_the_same_origin(
            links in proptest::collection::vec((0..4usize, 0..6u8, proptest::bool::ANY), 0..60)
        ) {
            let origins = [
                "https://api.bitbucket.org",
                "https://api.bitbucket.org:8443",
                "http://api.bitbucket.org",
                "https://evil.example",
            ];
            let mut guard = NextLinks::new(&first());
            let mut followed = std::collections::HashSet::from([first().to_string()]);
            for (origin, page, credentials) in links {
                let mut link = format!("{}/2.0/repositories/acme?pagelen=100&page={page}", origins[origin]);
                if credentials {
                    link = link.replacen("://", "://jdoe:secret@", 1);
                }
                if let Ok(url) = guard.follow(&link) {
                    proptest::prop_assert_eq!(url.origin(), first().origin());
                    proptest::prop_assert!(url.username().is_empty() && url.password().is_none());
                    proptest::prop_assert!(followed.insert(url.to_string()), "{} twice", url);
                }
            }
        }

        /// Any text as a `next` link is a link or an error, never a panic.
        #[test]
        fn any_text_as_a_link_never_panics(link in ".{0,200}") {
            let _ = NextLinks::new(&first()).follow(&link);
        }
    }

    #[test]
    fn a_new_link_on_the_same_origin_is_followed() {
        let mut links = NextLinks::new(&first());
        let next = "https://api.bitbucket.org/2.0/repositories/acme?pagelen=100&page=2";
        assert_eq!(links.follow(next).unwrap().as_str(), next);
    }

    #[test]
    fn a_repeated_link_is_refused() {
        let mut links = NextLinks::new(&first());
        let error = links.follow(first().as_str()).unwrap_err();
        assert!(
            error.to_string().contains("repeats an earlier page"),
            "{error}"
        );
    }

    #[test]
    fn a_link_to_another_host_is_refused() {
        let mut links = NextLinks::new(&first());
        for next in [
            "https://evil.example/2.0/repositories/acme?page=2",
            "http://api.bitbucket.org/2.0/repositories/acme?page=2",
            "https://api.bitbucket.org:8443/2.0/repositories/acme?page=2",
        ] {
            assert!(
                matches!(links.follow(next), Err(Error::PagingLoop { .. })),
                "{next}"
            );
        }
    }

    #[test]
    fn data_center_offsets_must_advance() {
        assert_eq!(next_start(0, Some(100), false).unwrap(), Some(100));
        assert_eq!(next_start(100, None, true).unwrap(), None);
        assert!(next_start(100, Some(100), false).is_err());
        assert!(next_start(100, None, false).is_err());
    }
}
