//! Bitbucket Cloud OAuth: consumers (the client-credentials grant) and users who signed in
//! through a consumer (the refresh-token grant, after the authorization-code grant that
//! `kubectl bitbucket connect --sign-in` runs). Grants go through the `oauth2` crate over the
//! integration's own HTTP client (one HTTP stack, same CA roots and proxy); the access token is
//! cached until shortly before `expires_in` runs out. Bitbucket rotates a user's refresh token
//! with every grant (api-facts §B.4): the new one is handed to a [`RotationSaver`] before the
//! access token is used, and held and offered again until it is saved. Does network I/O.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, EndpointNotSet, EndpointSet, HttpRequest,
    HttpResponse, RedirectUrl, RefreshToken, RequestTokenError, TokenResponse, TokenUrl,
    basic::BasicClient,
};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;
use url::Url;

use super::{
    TransportConfig,
    error::Error,
    reach::AddressRefused,
    transport::{
        BodyError, MAX_BODY_BYTES, Redactor, Transport, address_refused, parse_retry_after,
        read_bounded,
    },
};

/// Bitbucket's documentation says tokens last an hour; real answers carry `expires_in`, which
/// wins when present (api-facts §B.4).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

type Client =
    BasicClient<EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// Keeps a rotated refresh token where the credential lives (the operator: the Secret). `Err`
/// says why it could not; the token is then offered again before the next request.
pub type RotationSaver =
    Arc<dyn Fn(SecretString) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// An OAuth consumer (or a user signed in through one) and its cached access token.
pub(crate) struct OAuthConsumer {
    client: Client,
    /// Checked against the allowed servers before each grant, like every other URL.
    token_url: Url,
    state: Mutex<State>,
    pub saver: Option<RotationSaver>,
}

#[derive(Default)]
struct State {
    cached: Option<CachedToken>,
    /// A signed-in user's refresh token; `None` for the client-credentials grant.
    refresh: Option<Refresh>,
}

struct Refresh {
    token: SecretString,
    /// Rotated by Bitbucket and not saved yet.
    unsaved: bool,
}

struct CachedToken {
    authorization: SecretString,
    refresh_at: Instant,
}

/// An OAuth endpoint for a Cloud API base URL: bitbucket.org's for the real API, otherwise the
/// same scheme://host:port as the API (a proxy or simulator), as the design specifies.
fn endpoint(api_url: &Url, path: &str) -> String {
    if api_url.host_str() == Some("api.bitbucket.org") {
        format!("https://bitbucket.org/site/oauth2/{path}")
    } else {
        format!(
            "{}/site/oauth2/{path}",
            api_url.origin().ascii_serialization()
        )
    }
}

/// The token endpoint for a Cloud API base URL (bitbucket.org's: api-facts §B.4).
pub(crate) fn token_url(api_url: &Url) -> String {
    endpoint(api_url, "access_token")
}

/// Where a person signs in to authorize consumer `client_id` (the authorization-code grant,
/// RFC 6749 §4.1), to be sent back to `redirect` with a code and `state`.
pub fn authorize_url(api_url: &Url, client_id: &str, state: &str, redirect: &Url) -> Url {
    let mut url = Url::parse(&endpoint(api_url, "authorize")).expect("a valid URL");
    url.query_pairs_mut()
        .append_pair("client_id", client_id)
        .append_pair("response_type", "code")
        .append_pair("state", state)
        .append_pair("redirect_uri", redirect.as_str());
    url
}

/// Exchanges the code a sign-in sent back for the user's refresh token.
pub async fn exchange_code(
    api_url: &Url,
    client_id: &str,
    client_secret: &SecretString,
    code: &str,
    redirect: &Url,
    config: TransportConfig,
) -> Result<SecretString, Error> {
    let consumer = OAuthConsumer::new(api_url, client_id, client_secret, None)?;
    let transport = Transport::new(config)?;
    let redact = Redactor::new([client_secret.clone(), code.to_owned().into()]);
    transport.permit(&consumer.token_url)?;
    let config_error = |e: &dyn std::fmt::Display| Error::Config {
        message: format!("OAuth sign-in: {e}"),
    };
    let client = consumer
        .client
        .set_auth_uri(AuthUrl::new(endpoint(api_url, "authorize")).map_err(|e| config_error(&e))?)
        .set_redirect_uri(RedirectUrl::from_url(redirect.clone()));
    let response = client
        .exchange_code(AuthorizationCode::new(code.to_owned()))
        .request_async(&GrantClient(&transport))
        .await
        .map_err(|e| grant_error(e, transport.timeout(), &redact))?;
    response
        .refresh_token()
        .map(|t| t.secret().to_owned().into())
        .ok_or_else(|| Error::Decode {
            status: 200,
            message: "the OAuth token answer has no refresh_token".into(),
            excerpt: String::new(),
        })
}

impl OAuthConsumer {
    /// A consumer; with `refresh_token`, a user signed in through it.
    pub fn new(
        api_url: &Url,
        client_id: &str,
        client_secret: &SecretString,
        refresh_token: Option<SecretString>,
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
            state: Mutex::new(State {
                cached: None,
                refresh: refresh_token.map(|token| Refresh {
                    token,
                    unsaved: false,
                }),
            }),
            saver: None,
        })
    }

    pub fn token_url(&self) -> &Url {
        &self.token_url
    }

    /// The newest refresh token, for a signed-in user.
    pub async fn refresh_token(&self) -> Option<SecretString> {
        let state = self.state.lock().await;
        state.refresh.as_ref().map(|r| r.token.clone())
    }

    /// The `Authorization` header value, from the cache or a new grant. A rotated refresh token
    /// is saved first: an access token is never used while its refresh token could be lost.
    pub async fn authorization(
        &self,
        transport: &Transport,
        redact: &Redactor,
    ) -> Result<SecretString, Error> {
        let mut state = self.state.lock().await;
        self.save(&mut state).await?;
        if let Some(token) = state
            .cached
            .as_ref()
            .filter(|t| Instant::now() < t.refresh_at)
        {
            return Ok(token.authorization.clone());
        }
        let (token, rotated) = self.grant(&state, transport, redact).await?;
        let authorization = token.authorization.clone();
        state.cached = Some(token);
        if let (Some(refresh), Some(rotated)) = (state.refresh.as_mut(), rotated)
            && rotated.expose_secret() != refresh.token.expose_secret()
        {
            refresh.token = rotated;
            refresh.unsaved = true;
        }
        self.save(&mut state).await?;
        Ok(authorization)
    }

    /// Hands an unsaved rotated refresh token to the saver.
    async fn save(&self, state: &mut State) -> Result<(), Error> {
        let (Some(refresh), Some(saver)) = (state.refresh.as_mut(), &self.saver) else {
            return Ok(());
        };
        if refresh.unsaved {
            saver(refresh.token.clone())
                .await
                .map_err(|message| Error::RotationNotSaved { message })?;
            refresh.unsaved = false;
        }
        Ok(())
    }

    /// Forgets the cached token (after Bitbucket refused it), so the next call gets a new one.
    pub async fn invalidate(&self) {
        self.state.lock().await.cached = None;
    }

    /// A new access token, and the refresh token that came with it.
    async fn grant(
        &self,
        state: &State,
        transport: &Transport,
        redact: &Redactor,
    ) -> Result<(CachedToken, Option<SecretString>), Error> {
        transport.permit(&self.token_url)?;
        let http = GrantClient(transport);
        let response = match &state.refresh {
            None => {
                self.client
                    .exchange_client_credentials()
                    .request_async(&http)
                    .await
            }
            Some(refresh) => {
                let token = RefreshToken::new(refresh.token.expose_secret().to_owned());
                self.client
                    .exchange_refresh_token(&token)
                    .request_async(&http)
                    .await
            }
        }
        .map_err(|e| grant_error(e, transport.timeout(), redact))?;
        let lifetime = response.expires_in().unwrap_or(DEFAULT_LIFETIME);
        // Renew a little early so a token never expires between the check and the request.
        let margin = (lifetime / 5).min(Duration::from_secs(60));
        let rotated = response
            .refresh_token()
            .map(|t| SecretString::from(t.secret().to_owned()));
        Ok((
            CachedToken {
                authorization: super::credentials::bearer(response.access_token().secret()),
                refresh_at: Instant::now() + lifetime - margin,
            },
            rotated,
        ))
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
    let began = std::time::Instant::now();
    let response = match transport.http().execute(request).await {
        Ok(response) => response,
        Err(e) => {
            transport.observe("oauth_token", None, began.elapsed());
            return Err(transport_failure(e));
        }
    };
    let status = response.status();
    transport.observe("oauth_token", Some(status.as_u16()), began.elapsed());
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
    // A token answer is a few hundred bytes; the bound is the API's, more than enough.
    let body = read_bounded(response, MAX_BODY_BYTES)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge => GrantHttpError::Transport(
                format!("the token endpoint's answer is longer than {MAX_BODY_BYTES} bytes"),
                false,
            ),
            BodyError::Read(e) => transport_failure(e),
        })?;
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
        // What the endpoint says is quoted as a short printable excerpt: it is the server's
        // text, on its way to a terminal or a condition.
        RequestTokenError::ServerResponse(answer) => Error::Unauthorized {
            message: format!(
                "the OAuth token endpoint refused the consumer: {}{}",
                redact.excerpt(answer.error().to_string().as_bytes()),
                answer
                    .error_description()
                    .map(|d| format!(" ({})", redact.excerpt(d.as_bytes())))
                    .unwrap_or_default()
            ),
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
        // Nothing of the answer is quoted: it carries the new tokens, which the redactor does not
        // know yet (the chaos soak found one in an Event), and serde's message may quote a value.
        // Nor a position: a message that differs on every attempt is a new status every time.
        RequestTokenError::Parse(e, _) => Error::Decode {
            status: 200,
            message: format!(
                "the OAuth token answer is not a token ({} at {})",
                match e.inner().classify() {
                    serde_json::error::Category::Eof => "cut short",
                    serde_json::error::Category::Syntax => "not JSON",
                    serde_json::error::Category::Data => "a field of the wrong kind",
                    serde_json::error::Category::Io => "unreadable",
                },
                e.path()
            ),
            excerpt: String::new(),
        },
        RequestTokenError::Other(message) => Error::Transport {
            message: redact.scrub(message),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The token endpoint's answer, whatever its bytes, is read by the oauth2 crate's
        /// parser into a token or an error, never a panic.
        #[test]
        fn parsing_any_token_answer_never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = serde_json::from_slice::<oauth2::basic::BasicTokenResponse>(&body);
        }
    }

    #[test]
    fn a_token_endpoints_refusal_is_quoted_short_and_printable() {
        use oauth2::{StandardErrorResponse, basic::BasicErrorResponseType};
        let hostile = format!("\x1b]52;c;cHduZWQ=\x07\u{202e}{}", "x".repeat(1 << 20));
        let answer = StandardErrorResponse::new(
            BasicErrorResponseType::Extension(hostile.clone()),
            Some(format!("{hostile} FAKE-oauth-client-secret")),
            None,
        );
        let redact = Redactor::new([SecretString::from("FAKE-oauth-client-secret")]);
        let error = grant_error(
            RequestTokenError::ServerResponse(answer),
            Duration::from_secs(1),
            &redact,
        );
        let message = error.to_string();
        assert!(message.len() < 1024, "{} bytes", message.len());
        assert!(!message.chars().any(char::is_control), "{message:?}");
        assert!(!message.contains('\u{202e}'), "{message:?}");
        assert!(!message.contains("FAKE-oauth-client-secret"), "{message}");
        assert!(
            message.contains("refused the consumer: ]52;c;cHduZWQ="),
            "{message}"
        );
    }

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
