//! Guards for paging. Following `next` links (Cloud): a link is followed only when it stays on
//! the origin the client was configured for and has not been seen before, so a misbehaving
//! server (or a proxy rewriting links) can neither loop us forever nor receive our credential on
//! another host (Bitbucket documents `next` as opaque: api-facts §A.5). Data Center offsets must
//! advance. And every listing is bounded ([`ListingLimits`], counted by [`Tally`]): however many
//! pages a server claims, a listing holds at most so many repositories, pages, bytes and
//! minutes, and pages that bring nothing yet are not the last end it. No I/O.

use std::{collections::HashSet, fmt, time::Duration};

use url::{Origin, Url};

use super::error::Error;

/// The bounds of one listing: what a server can make the client hold and wait for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListingLimits {
    /// The most repositories one listing may hold; pages and bytes are bounded from it.
    pub max_repositories: usize,
    /// The longest one listing may take, its pages and their retries included.
    pub deadline: Duration,
}

impl Default for ListingLimits {
    fn default() -> Self {
        Self {
            max_repositories: 100_000,
            deadline: Duration::from_secs(10 * 60),
        }
    }
}

/// Every page but the last holds at least this many repositories on a real server: Cloud pages
/// hold 100, Data Center's 25 by default and its administrators may lower the cap; 10 is below
/// any seen.
const MIN_FULL_PAGE: usize = 10;
/// More answer bytes per repository than any real page carries (Cloud's, with the fields the
/// client asks for, carry about 1 KiB).
const BYTES_PER_REPOSITORY: u64 = 16 * 1024;
/// Pages in a row without a repository, none of them the last, before paging counts as not
/// advancing (a server answering empty pages with the next offset one higher, forever).
pub(crate) const EMPTY_PAGES: usize = 3;

impl ListingLimits {
    /// The most pages one listing may take.
    pub fn max_pages(&self) -> usize {
        self.max_repositories.div_ceil(MIN_FULL_PAGE) + EMPTY_PAGES
    }

    /// The most answer bytes one listing may read.
    pub fn max_bytes(&self) -> u64 {
        u64::try_from(self.max_repositories)
            .unwrap_or(u64::MAX)
            .saturating_mul(BYTES_PER_REPOSITORY)
            .max(64 << 20)
    }
}

/// The bound a listing passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    Repositories(usize),
    Pages(usize),
    Bytes(u64),
    Deadline(Duration),
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Repositories(n) => write!(f, "at most {n} repositories"),
            Self::Pages(n) => write!(f, "at most {n} pages"),
            Self::Bytes(n) => write!(f, "at most {} MiB of answers", n >> 20),
            Self::Deadline(d) => write!(f, "at most {}s", d.as_secs()),
        }
    }
}

/// What one listing has read so far, against its [`ListingLimits`].
pub(crate) struct Tally {
    limits: ListingLimits,
    pages: usize,
    repositories: usize,
    bytes: u64,
    empty_in_a_row: usize,
}

impl Tally {
    pub fn new(limits: ListingLimits) -> Self {
        Self {
            limits,
            pages: 0,
            repositories: 0,
            bytes: 0,
            empty_in_a_row: 0,
        }
    }

    /// Counts a page of `repositories` read from `bytes` of answer, before they are kept: an
    /// error when the listing passes a bound, or when [`EMPTY_PAGES`] pages in a row brought
    /// nothing without being the last.
    pub fn count(&mut self, repositories: usize, bytes: usize, last: bool) -> Result<(), Error> {
        self.pages += 1;
        self.repositories += repositories;
        self.bytes += u64::try_from(bytes).unwrap_or(u64::MAX);
        self.empty_in_a_row = match (repositories, last) {
            (0, false) => self.empty_in_a_row + 1,
            _ => 0,
        };
        let limits = &self.limits;
        let bound = if self.repositories > limits.max_repositories {
            Some(Bound::Repositories(limits.max_repositories))
        } else if self.pages > limits.max_pages() {
            Some(Bound::Pages(limits.max_pages()))
        } else if self.bytes > limits.max_bytes() {
            Some(Bound::Bytes(limits.max_bytes()))
        } else {
            None
        };
        if let Some(bound) = bound {
            return Err(Error::ListingTooLarge {
                bound,
                after: format!("{} pages, {} repositories", self.pages, self.repositories),
            });
        }
        if self.empty_in_a_row >= EMPTY_PAGES {
            return Err(Error::PagingLoop {
                reason: format!(
                    "{EMPTY_PAGES} pages in a row held no repository, yet none was the last \
                     (page {})",
                    self.pages
                ),
            });
        }
        Ok(())
    }
}

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

        /// Whatever pages a server answers (any number of repositories and bytes each, any
        /// claim of being the last), the listing ends within its bounds: never more repositories
        /// kept than allowed, never more pages than the bound, never [`EMPTY_PAGES`] empty pages
        /// in a row that claim more is coming.
        #[test]
        fn any_sequence_of_pages_ends_within_the_bounds(
            max_repositories in 1usize..500,
            pages in proptest::collection::vec((0usize..120, 0usize..200_000, proptest::bool::weighted(0.05)), 1..400),
        ) {
            let limits = ListingLimits { max_repositories, deadline: std::time::Duration::from_secs(60) };
            let mut tally = Tally::new(limits);
            let (mut kept, mut fetched, mut empty) = (0usize, 0usize, 0usize);
            for (repositories, bytes, last) in pages {
                fetched += 1;
                if tally.count(repositories, bytes, last).is_err() {
                    break;
                }
                kept += repositories;
                empty = if repositories == 0 && !last { empty + 1 } else { 0 };
                proptest::prop_assert!(kept <= limits.max_repositories);
                proptest::prop_assert!(fetched <= limits.max_pages());
                proptest::prop_assert!(empty < EMPTY_PAGES);
                if last {
                    break;
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

    fn small() -> ListingLimits {
        ListingLimits {
            max_repositories: 100,
            deadline: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_listing_past_its_repositories_is_refused_before_it_holds_them() {
        let mut tally = Tally::new(small());
        tally.count(100, 100_000, false).unwrap();
        let error = tally.count(1, 1_000, true).unwrap_err();
        assert!(
            matches!(
                error,
                Error::ListingTooLarge {
                    bound: Bound::Repositories(100),
                    ..
                }
            ),
            "{error}"
        );
        assert_eq!(
            error.to_string(),
            "the listing passed its bound of at most 100 repositories (after 2 pages, 101 \
             repositories)"
        );
    }

    #[test]
    fn pages_and_bytes_are_bounded_too() {
        let mut pages = Tally::new(small());
        let allowed = small().max_pages();
        for _ in 0..allowed {
            pages.count(0, 10, true).unwrap();
        }
        assert!(matches!(
            pages.count(0, 10, true),
            Err(Error::ListingTooLarge {
                bound: Bound::Pages(_),
                ..
            })
        ));
        let mut bytes = Tally::new(small());
        assert!(matches!(
            bytes.count(1, 65 << 20, false),
            Err(Error::ListingTooLarge {
                bound: Bound::Bytes(_),
                ..
            })
        ));
    }

    #[test]
    fn empty_pages_that_are_not_the_last_end_the_listing() {
        let mut tally = Tally::new(small());
        tally.count(0, 10, false).unwrap();
        tally.count(5, 10, false).unwrap();
        for _ in 1..EMPTY_PAGES {
            tally.count(0, 10, false).unwrap();
        }
        let error = tally.count(0, 10, false).unwrap_err();
        assert!(matches!(error, Error::PagingLoop { .. }), "{error}");
        // An empty listing is one empty last page.
        Tally::new(small()).count(0, 10, true).unwrap();
    }

    #[test]
    fn data_center_offsets_must_advance() {
        assert_eq!(next_start(0, Some(100), false).unwrap(), Some(100));
        assert_eq!(next_start(100, None, true).unwrap(), None);
        assert!(next_start(100, Some(100), false).is_err());
        assert!(next_start(100, None, false).is_err());
    }
}
