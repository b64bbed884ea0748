//! The one error type of the Bitbucket client. Every variant says what went wrong in words a
//! user can act on, never contains a secret, and knows its class: whether retrying can help.
//! No I/O.

use std::time::Duration;

/// What the client can do about an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The credential or its permissions are wrong: retrying cannot help until the Secret or the
    /// spec changes (and repeated bad logins lock Data Center accounts).
    Credentials,
    /// The request names something that does not exist or is not allowed: fix the spec.
    Request,
    /// Bitbucket is slow, overloaded or unreachable: retry with backoff.
    Transient,
}

/// An error talking to Bitbucket.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 401: Bitbucket did not accept the credential.
    #[error("Bitbucket rejected the credential (401): {message}")]
    Unauthorized { message: String },

    /// 403 naming the scopes the credential lacks.
    #[error(
        "the credential lacks required scopes: needs {}, has {}",
        list(required),
        list(granted)
    )]
    InsufficientScopes {
        required: Vec<String>,
        granted: Vec<String>,
    },

    /// 403 for another reason (no permission on the resource).
    #[error("Bitbucket refused access (403): {message}")]
    Forbidden { message: String },

    /// 404: the workspace, project or endpoint does not exist, or is invisible to the credential.
    #[error("not found (404): {message}")]
    NotFound { message: String },

    /// 410: Atlassian removed the endpoint.
    #[error("the endpoint {endpoint} was removed by Atlassian (410): {message}")]
    Gone { endpoint: String, message: String },

    /// 429: too many requests.
    #[error("rate limited by Bitbucket (429){}", retry_after.map(|d| format!("; retry after {}s", d.as_secs())).unwrap_or_default())]
    RateLimited { retry_after: Option<Duration> },

    /// The credential's request budget has no room for this request now; nothing was sent.
    #[error(
        "the credential's request budget is spent: {used} of {limit} requests in the last {} ({}); the next fits in {}s",
        crate::budget::humanize(*window),
        match planned { true => "the share for interval syncs", false => "all of it" },
        retry_after.as_secs().max(1)
    )]
    OverBudget {
        used: u32,
        limit: u32,
        window: Duration,
        /// Whether the planned share (not the whole budget) is what is spent.
        planned: bool,
        retry_after: Duration,
    },

    /// 5xx: Bitbucket failed.
    #[error("Bitbucket is unavailable ({status}){}", excerpt_suffix(excerpt))]
    Unavailable { status: u16, excerpt: String },

    /// No complete answer within the timeout.
    #[error("Bitbucket did not answer within {}s", timeout.as_secs())]
    Timeout { timeout: Duration },

    /// The connection failed (DNS, TCP, TLS).
    #[error("could not reach Bitbucket: {message}")]
    Transport { message: String },

    /// The answer was not what the API documents (malformed JSON, unexpected shape).
    #[error(
        "unexpected answer from Bitbucket ({status}): {message}{}",
        excerpt_suffix(excerpt)
    )]
    Decode {
        status: u16,
        message: String,
        excerpt: String,
    },

    /// Another status the operation does not expect (e.g. 400).
    #[error("Bitbucket answered {status}{}", excerpt_suffix(excerpt))]
    UnexpectedStatus { status: u16, excerpt: String },

    /// A paging link repeated itself or pointed at another host; it was not followed (and no
    /// credential was sent there).
    #[error("refused to follow a paging link: {reason}")]
    PagingLoop { reason: String },

    /// A listing passed one of its bounds ([`crate::ListingLimits`]); what it read is dropped.
    #[error("the listing passed its bound of {bound} (after {after})")]
    ListingTooLarge {
        bound: crate::paging::Bound,
        after: String,
    },

    /// The URL is not a server this credential may be sent to; nothing was sent.
    #[error("{url} is not an allowed Bitbucket server for this credential")]
    NotAllowed { url: String },

    /// The server's address is one the client never connects to; nothing was sent.
    #[error("refusing to connect: {0}; the operator does not connect there (--refused-networks)")]
    AddressRefused(#[from] super::reach::AddressRefused),

    /// The answer was longer than the client reads; the rest was not read.
    #[error("Bitbucket's answer is longer than {limit} bytes; it was not read")]
    TooLarge { limit: usize },

    /// Bitbucket rotated an OAuth refresh token and the new one could not be saved: the client
    /// holds it and tries to save it again before anything else.
    #[error("could not save the rotated OAuth refresh token: {message}")]
    RotationNotSaved { message: String },

    /// The client cannot be built from its configuration (bad URL, bad CA bundle).
    #[error("invalid Bitbucket client configuration: {message}")]
    Config { message: String },
}

impl Error {
    /// Whether retrying can help, and who must act otherwise.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Unauthorized { .. }
            | Self::InsufficientScopes { .. }
            | Self::Forbidden { .. } => ErrorClass::Credentials,
            Self::NotFound { .. }
            | Self::Gone { .. }
            | Self::Config { .. }
            | Self::NotAllowed { .. }
            | Self::AddressRefused(_) => ErrorClass::Request,
            // Bigger than allowed: only a higher bound or a narrower scope helps. Slower than
            // allowed: perhaps not next time.
            Self::ListingTooLarge {
                bound: crate::paging::Bound::Deadline(_),
                ..
            } => ErrorClass::Transient,
            Self::ListingTooLarge { .. } => ErrorClass::Request,
            Self::RateLimited { .. }
            | Self::OverBudget { .. }
            | Self::Unavailable { .. }
            | Self::Timeout { .. }
            | Self::Transport { .. }
            | Self::Decode { .. }
            | Self::UnexpectedStatus { .. }
            | Self::PagingLoop { .. }
            | Self::RotationNotSaved { .. }
            | Self::TooLarge { .. } => ErrorClass::Transient,
        }
    }

    /// How long Bitbucket asked us to wait, when it said.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after } => *retry_after,
            Self::OverBudget { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

fn list(scopes: &[String]) -> String {
    if scopes.is_empty() {
        "none".to_owned()
    } else {
        scopes.join(", ")
    }
}

fn excerpt_suffix(excerpt: &str) -> String {
    if excerpt.is_empty() {
        String::new()
    } else {
        format!(": {excerpt}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_errors_name_what_is_missing_and_what_was_granted() {
        let error = Error::InsufficientScopes {
            required: vec!["read:user:bitbucket".into()],
            granted: vec![
                "read:repository:bitbucket".into(),
                "read:workspace:bitbucket".into(),
            ],
        };
        assert_eq!(
            error.to_string(),
            "the credential lacks required scopes: needs read:user:bitbucket, has read:repository:bitbucket, read:workspace:bitbucket"
        );
        assert_eq!(error.class(), ErrorClass::Credentials);
    }

    #[test]
    fn rate_limits_say_when_to_come_back() {
        let error = Error::RateLimited {
            retry_after: Some(Duration::from_secs(30)),
        };
        assert_eq!(
            error.to_string(),
            "rate limited by Bitbucket (429); retry after 30s"
        );
        assert_eq!(error.class(), ErrorClass::Transient);
        assert_eq!(error.retry_after(), Some(Duration::from_secs(30)));
    }

    #[test]
    fn removed_endpoints_say_atlassian_removed_them() {
        let error = Error::Gone {
            endpoint: "/2.0/workspaces".into(),
            message: "CHANGE-2770 - Functionality has been deprecated".into(),
        };
        assert!(error.to_string().contains("removed by Atlassian"));
        assert_eq!(error.class(), ErrorClass::Request);
    }
}
