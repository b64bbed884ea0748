//! Bitbucket Cloud OAuth consumers: the client-credentials grant through the `oauth2` crate,
//! sent over the integration's own HTTP client (one HTTP stack, same CA roots and proxy), with
//! the access token cached until shortly before `expires_in` runs out. Does network I/O.

use std::time::{Duration, Instant};

use oauth2::{
    ClientId, ClientSecret, EndpointNotSet, EndpointSet, HttpRequest, HttpResponse,
    RequestTokenError, TokenResponse, TokenUrl, basic::BasicClient,
};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;
use url::Url;

use super::{
    error::Error,
    reach::AddressRefused,
    transport::{Redactor, Transport, address_refused, parse_retry_after},
};

/// The token endpoint of bitbucket.org (api-facts §B.4).
const CLOUD_TOKEN_URL: &str = "https://bitbucket.org/site/oauth2/access_token";

/// Bitbucket's documentation says tokens last an hour; real answers carry `expires_in`, which
/// wins when present (api-facts §B.4).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

type Client =
    BasicClient<EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// An OAuth consumer and its cached access token.
pub(crate) struct OAuthConsumer {
    client: Client,
    /// Checked against the allowed servers before each grant, like every other URL.
    token_url: Url,
    cached: Mutex<Option<CachedToken>>,
}

struct CachedToken {
    authorization: SecretString,
    refresh_at: Instant,
}

/// The token endpoint for a Cloud API base URL: bitbucket.org's for the real API, otherwise the
/// same scheme://host:port as the API (a proxy or simulator), as the design specifies.
pub(crate) fn token_url(api_url: &Url) -> String {
    if api_url.host_str() == Some("api.bitbucket.org") {
        CLOUD_TOKEN_URL.to_owned()
    } else {
        format!(
            "{}/site/oauth2/access_token",
            api_url.origin().ascii_serialization()
        )
    }
}

impl OAuthConsumer {
    pub fn new(
        api_url: &Url,
        client_id: &str,
        client_secret: &SecretString,
    ) -> Result<Self, Error> {
        let config_error = |e: &dyn std::fmt::Display| Error::Config {
            message: format!("OAuth token URL: {e}"),
        };
        let url = token_url(api_url);
        let parsed = Url::parse(&url).map_err(|e| config_error(&e))?;
        let token_uri = TokenUrl::new(url).map_err(|e| config_error(&e))?;
        let client = BasicClient::new(ClientId::new(client_id.to_owned()))
            .set_client_secret(ClientSecret::new(client_secret.expose_secret().to_owned()))
            .set_token_uri(token_uri);
        Ok(Self {
            client,
            token_url: parsed,
            cached: Mutex::new(None),
        })
    }

    pub fn token_url(&self) -> &Url {
        &self.token_url
    }

    /// The `Authorization` header value, from the cache or a new grant.
    pub async fn authorization(
        &self,
        transport: &Transport,
        redact: &Redactor,
    ) -> Result<SecretString, Error> {
        let mut cached = self.cached.lock().await;
        if let Some(token) = cached.as_ref().filter(|t| Instant::now() < t.refresh_at) {
            return Ok(token.authorization.clone());
        }
        let token = self.grant(transport, redact).await?;
        let authorization = token.authorization.clone();
        *cached = Some(token);
        Ok(authorization)
    }

    /// Forgets the cached token (after Bitbucket refused it), so the next call gets a new one.
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }

    async fn grant(&self, transport: &Transport, redact: &Redactor) -> Result<CachedToken, Error> {
        transport.permit(&self.token_url)?;
        let response = self
            .client
            .exchange_client_credentials()
            .request_async(&GrantClient(transport))
            .await
            .map_err(|e| grant_error(e, transport.timeout(), redact))?;
        let lifetime = response.expires_in().unwrap_or(DEFAULT_LIFETIME);
        // Renew a little early so a token never expires between the check and the request.
        let margin = (lifetime / 5).min(Duration::from_secs(60));
        Ok(CachedToken {
            authorization: super::credentials::bearer(response.access_token().secret()),
            refresh_at: Instant::now() + lifetime - margin,
        })
    }
}

/// `oauth2`'s HTTP hook, over the integration's own HTTP client. A named type rather than a
/// closure: a closure here makes the future's `Send` unprovable (rust-lang/rust#102211).
struct GrantClient<'t>(&'t Transport);

impl<'c> oauth2::AsyncHttpClient<'c> for GrantClient<'_> {
    type Error = GrantHttpError;
    type Future = futures::future::BoxFuture<'c, Result<HttpResponse, GrantHttpError>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(send(self.0, request))
    }
}

/// Failures of the token endpoint that are not an OAuth error answer.
#[derive(Debug, thiserror::Error)]
enum GrantHttpError {
    #[error("{0}")]
    Status(u16, Option<Duration>),
    #[error("{0}")]
    Transport(String, bool),
    #[error("{0}")]
    Refused(AddressRefused),
}

async fn send(transport: &Transport, request: HttpRequest) -> Result<HttpResponse, GrantHttpError> {
    let request = reqwest::Request::try_from(request)
        .map_err(|e| GrantHttpError::Transport(e.to_string(), false))?;
    let response = match transport.http().execute(request).await {
        Ok(response) => response,
        Err(e) => {
            transport.observe("oauth_token", None);
            return Err(transport_failure(e));
        }
    };
    let status = response.status();
    transport.observe("oauth_token", Some(status.as_u16()));
    if status.as_u16() == 429 || status.is_server_error() {
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        return Err(GrantHttpError::Status(status.as_u16(), retry_after));
    }
    let mut builder = http::Response::builder().status(status);
    for (name, value) in response.headers() {
        builder = builder.header(name, value);
    }
    let body = response.bytes().await.map_err(transport_failure)?;
    builder
        .body(body.to_vec())
        .map_err(|e| GrantHttpError::Transport(e.to_string(), false))
}

fn transport_failure(error: reqwest::Error) -> GrantHttpError {
    if let Some(refused) = address_refused(&error) {
        return GrantHttpError::Refused(refused);
    }
    let timed_out = error.is_timeout();
    GrantHttpError::Transport(error.without_url().to_string(), timed_out)
}

fn grant_error(
    error: RequestTokenError<GrantHttpError, oauth2::basic::BasicErrorResponse>,
    timeout: Duration,
    redact: &Redactor,
) -> Error {
    match error {
        RequestTokenError::ServerResponse(answer) => Error::Unauthorized {
            message: redact.scrub(format!(
                "the OAuth token endpoint refused the consumer: {}{}",
                answer.error(),
                answer
                    .error_description()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            )),
        },
        RequestTokenError::Request(GrantHttpError::Status(429, retry_after)) => {
            Error::RateLimited { retry_after }
        }
        RequestTokenError::Request(GrantHttpError::Status(status, _)) => Error::Unavailable {
            status,
            excerpt: "from the OAuth token endpoint".into(),
        },
        RequestTokenError::Request(GrantHttpError::Transport(_, true)) => {
            Error::Timeout { timeout }
        }
        RequestTokenError::Request(GrantHttpError::Refused(refused)) => refused.into(),
        RequestTokenError::Request(GrantHttpError::Transport(message, false)) => Error::Transport {
            message: redact.scrub(message),
        },
        RequestTokenError::Parse(e, body) => Error::Decode {
            status: 200,
            message: format!("the OAuth token answer is not a token: {e}"),
            excerpt: redact.excerpt(&body),
        },
        RequestTokenError::Other(message) => Error::Transport {
            message: redact.scrub(message),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_real_api_uses_bitbucket_orgs_token_endpoint() {
        let api = Url::parse("https://api.bitbucket.org/2.0").unwrap();
        assert_eq!(
            token_url(&api),
            "https://bitbucket.org/site/oauth2/access_token"
        );
    }

    #[test]
    fn an_overridden_api_url_moves_the_token_endpoint_to_its_origin() {
        let api = Url::parse("http://127.0.0.1:8080/2.0").unwrap();
        assert_eq!(
            token_url(&api),
            "http://127.0.0.1:8080/site/oauth2/access_token"
        );
    }
}
