//! HTTP for the Bitbucket client: one `reqwest` client per integration (its own CA roots,
//! timeouts, connection pool and proxy settings from the standard environment variables), GET
//! with authorization, bounded retries of transient failures, and the mapping of Bitbucket's
//! error answers (Cloud JSON, Data Center JSON, `text/plain`) to [`Error`]. Does network I/O.

use std::{
    collections::HashMap,
    sync::{Arc, Weak},
    time::Duration,
};

use http::{HeaderMap, StatusCode, header};
use rustls_pki_types::{CertificateDer, pem::PemObject};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

use super::{
    error::Error,
    reach::{
        AddressRefused, AllowList, Guarded, Lookup, RefusedNetworks, literal_refused,
        system_lookup, without_query,
    },
};

/// How often and how long a request is retried when Bitbucket is overloaded or failing.
#[derive(Clone, Copy, Debug)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 disables retrying).
    pub max_retries: u32,
    /// The first backoff; it doubles with each retry, with jitter.
    pub base_delay: Duration,
    /// The longest the client waits in one go. A `Retry-After` longer than this is not waited
    /// out here: the error is returned so the caller can requeue instead of holding a worker.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 2,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `attempt` (0-based): exponential with "equal jitter", so
    /// clients that failed together do not retry together.
    pub fn backoff(&self, attempt: u32) -> Duration {
        exponential_backoff(self.base_delay, self.max_delay, attempt)
    }
}

/// The wait before retry number `attempt` (0-based) of anything that backs off: `base` doubled
/// `attempt` times, at most `max`, with [`equal_jitter`]. Saturates instead of overflowing,
/// whatever `attempt`. Used by [`RetryPolicy::backoff`] and by the operator's per-object backoff.
pub fn exponential_backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    equal_jitter(base.saturating_mul(2u32.saturating_pow(attempt)).min(max))
}

/// "Equal jitter": a random wait between half of `ceiling` and `ceiling`, so that clients (or
/// objects) that failed together do not retry together, while none retries at once.
pub fn equal_jitter(ceiling: Duration) -> Duration {
    let half = ceiling / 2;
    half + half.mul_f64(fastrand::f64())
}

/// Called once per HTTP attempt with the operation, the status (`None` when no answer came)
/// and how long until the answer's headers came (or the attempt failed), e.g. to count requests
/// in metrics. Never sees URLs or headers.
pub type RequestObserver = Arc<dyn Fn(&'static str, Option<u16>, Duration) + Send + Sync>;

/// Settings of the HTTP layer.
#[derive(Clone)]
pub struct TransportConfig {
    /// PEM bundle of the CAs to trust instead of the public web roots.
    pub ca_bundle_pem: Option<Vec<u8>>,
    /// Whole-request timeout.
    pub timeout: Duration,
    /// Retry policy for transient failures.
    pub retry: RetryPolicy,
    /// Metrics hook.
    pub observer: Option<RequestObserver>,
    /// The credential's request budget, which every request is admitted by (`None`: none).
    pub budget: Option<Arc<crate::budget::BudgetSlot>>,
    /// The servers the credential may be sent to; every request is checked.
    pub allowed: AllowList,
    /// Addresses never connected to, whatever `allowed` says.
    pub refused: Arc<RefusedNetworks>,
    /// How host names are looked up (the system resolver); the answers are then checked
    /// against `refused`.
    pub lookup: Lookup,
    /// The bounds of each repository listing.
    pub listing: crate::ListingLimits,
    /// Whether whoever joins `allowed` with a Secret's consent (the operator) lets the consent
    /// alone name a loopback or cluster-internal server ([`crate::reach::internal`]). Off by
    /// default: only the administrator's list may; for a local simulator, on.
    pub internal_by_consent: bool,
    /// Where HTTP clients are shared: every transport built from configs that share it (clones
    /// of one) and connect the same way uses one connection pool and one TLS set-up.
    pub http: HttpClients,
}

/// HTTP clients shared by the credentials that connect the same way: the same trusted CAs,
/// timeout, refused networks and resolver. One pool of connections and one TLS configuration
/// (roots, session cache) per way, not per integration: with a thousand integrations on one
/// Bitbucket that was a thousand of each, 55 KB apiece. No credential rides on a connection:
/// every request carries its own `Authorization`, and redirects are never followed.
#[derive(Clone, Default)]
pub struct HttpClients(Arc<Shared>);

#[derive(Default)]
struct Shared {
    clients: std::sync::Mutex<HashMap<HttpKey, Weak<reqwest::Client>>>,
    built: std::sync::atomic::AtomicUsize,
}

/// What an HTTP client is built from. The pointers name the refused networks and resolver the
/// client holds (so they stay alive, and unique, as long as the entry can be upgraded).
#[derive(Clone, PartialEq, Eq, Hash)]
struct HttpKey {
    ca_bundle: Option<[u8; 32]>,
    timeout: Duration,
    refused: usize,
    lookup: usize,
}

impl HttpClients {
    /// The client for `config`: a live one built for the same key, or a new one.
    fn get(&self, config: &TransportConfig) -> Result<Arc<reqwest::Client>, Error> {
        let key = HttpKey {
            ca_bundle: config.ca_bundle_pem.as_deref().map(|pem| {
                let digest = ring::digest::digest(&ring::digest::SHA256, pem);
                digest.as_ref().try_into().expect("SHA-256 is 32 bytes")
            }),
            timeout: config.timeout,
            refused: Arc::as_ptr(&config.refused) as usize,
            lookup: Arc::as_ptr(&config.lookup).cast::<()>() as usize,
        };
        let mut clients = self.0.clients.lock().expect("HTTP clients lock");
        if let Some(client) = clients.get(&key).and_then(Weak::upgrade) {
            return Ok(client);
        }
        let client = Arc::new(http_client(config)?);
        (self.0.built).fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        clients.retain(|_, client| client.strong_count() > 0);
        clients.insert(key, Arc::downgrade(&client));
        Ok(client)
    }

    /// How many distinct clients are alive.
    pub fn live(&self) -> usize {
        let clients = self.0.clients.lock().expect("HTTP clients lock");
        clients.values().filter(|c| c.strong_count() > 0).count()
    }

    /// How many clients were built.
    pub fn built(&self) -> usize {
        self.0.built.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            ca_bundle_pem: None,
            timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            observer: None,
            budget: None,
            allowed: AllowList::cloud(),
            refused: Arc::new(RefusedNetworks::default()),
            lookup: system_lookup(),
            listing: crate::ListingLimits::default(),
            internal_by_consent: false,
            http: HttpClients::default(),
        }
    }
}

impl std::fmt::Debug for TransportConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportConfig")
            .field(
                "ca_bundle_pem",
                &self.ca_bundle_pem.as_ref().map(|b| b.len()),
            )
            .field("timeout", &self.timeout)
            .field("retry", &self.retry)
            .field("allowed", &self.allowed.to_string())
            .field("refused", &self.refused.to_string())
            .finish_non_exhaustive()
    }
}

/// A successful (2xx) answer.
pub(crate) struct Response {
    pub headers: HeaderMap,
    pub status: u16,
    pub body: bytes::Bytes,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Parses the body as JSON, or says (without secrets) why it is not what was expected.
    pub fn json<T: serde::de::DeserializeOwned>(&self, redact: &Redactor) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| Error::Decode {
            status: self.status,
            message: format!("{} in the JSON body", e.classify_name()),
            excerpt: redact.excerpt(&self.body),
        })
    }
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "an I/O error",
            serde_json::error::Category::Syntax => "a syntax error",
            serde_json::error::Category::Data => "an unexpected value",
            serde_json::error::Category::Eof => "a truncated body",
        }
    }
}

/// The most bytes of one answer that are read. A page of 100 Cloud repositories is about
/// 300 KB and a Data Center page of 1,000 about 1.5 MB; a server that sends more is cut off
/// rather than buffered (a body of gigabytes would otherwise take the operator's memory). The
/// soak found 16 MiB too generous: with eight reconciles reading oversized answers at once,
/// glibc's allocator kept some 90 MB after them; 4 MiB still leaves more than twice the largest
/// real page.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// Reads `response`'s body, stopping as soon as it is longer than `limit`.
pub(crate) async fn read_bounded(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<bytes::Bytes, BodyError> {
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Read)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// Why a body could not be read.
pub(crate) enum BodyError {
    TooLarge,
    Read(reqwest::Error),
}

/// The most characters of an answer's body that an error message quotes.
pub const EXCERPT_CHARS: usize = 120;

/// Removes the integration's secrets from text taken out of responses, in case a server (or a
/// proxy) echoes them back.
#[derive(Clone, Default)]
pub(crate) struct Redactor {
    secrets: Vec<SecretString>,
}

impl Redactor {
    pub fn new(secrets: impl IntoIterator<Item = SecretString>) -> Self {
        Self {
            secrets: secrets
                .into_iter()
                .filter(|s| !s.expose_secret().is_empty())
                .collect(),
        }
    }

    /// Also redacts `authorization` (an `Authorization` header value) and its token part.
    pub fn with(&self, authorization: &SecretString) -> Self {
        let mut secrets = self.secrets.clone();
        if let Some((_, token)) = authorization.expose_secret().split_once(' ') {
            secrets.push(token.to_owned().into());
        }
        secrets.push(authorization.clone());
        Self { secrets }
    }

    /// The start of a body as one short line (at most [`EXCERPT_CHARS`] characters) of
    /// printable text, secrets replaced: all of an answer that may reach status, whoever the
    /// server is. Control characters (terminal escapes, NULs) become spaces.
    pub fn excerpt(&self, body: &[u8]) -> String {
        let text = String::from_utf8_lossy(body);
        let printable: String = text
            .chars()
            .map(|c| {
                // Control characters, bidi controls (which reorder what a reader sees) and what
                // was not UTF-8.
                let bidi = matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}');
                if c.is_control() || bidi || c == '\u{FFFD}' {
                    ' '
                } else {
                    c
                }
            })
            .collect();
        let mut line: String = printable.split_whitespace().collect::<Vec<_>>().join(" ");
        line = self.scrub(line);
        if line.chars().count() > EXCERPT_CHARS {
            line = line.chars().take(EXCERPT_CHARS).collect::<String>() + "…";
        }
        line
    }

    pub fn scrub(&self, mut text: String) -> String {
        for secret in &self.secrets {
            let secret = secret.expose_secret();
            if text.contains(secret) {
                text = text.replace(secret, "<redacted>");
            }
        }
        text
    }
}

/// The HTTP client of one integration.
pub(crate) struct Transport {
    http: Arc<reqwest::Client>,
    config: TransportConfig,
}

/// A new HTTP client connecting as `config` says.
fn http_client(config: &TransportConfig) -> Result<reqwest::Client, Error> {
    let tls = tls_config(config.ca_bundle_pem.as_deref())?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(config.timeout)
        .connect_timeout(config.timeout.min(Duration::from_secs(10)))
        .pool_idle_timeout(Duration::from_secs(90))
        // Never follow redirects: a redirect to another host would carry the credential
        // there, and Bitbucket's API does not redirect the calls we make.
        .redirect(reqwest::redirect::Policy::none())
        // Host names resolve only to addresses outside the refused networks.
        .dns_resolver(Arc::new(Guarded {
            refused: Arc::clone(&config.refused),
            lookup: Arc::clone(&config.lookup),
        }))
        .user_agent(concat!("bitbucket-operator/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| Error::Config {
            message: format!("building the HTTP client: {e}"),
        })
}

impl Transport {
    /// The bounds of each repository listing.
    pub fn listing(&self) -> crate::ListingLimits {
        self.config.listing
    }

    pub fn new(config: TransportConfig) -> Result<Self, Error> {
        let http = config.http.get(&config)?;
        Ok(Self { http, config })
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Whether the credential may be sent to `url`: an allowed server, not at a refused
    /// address. Called before every request; host names are checked again when connecting.
    pub fn permit(&self, url: &Url) -> Result<(), Error> {
        if !self.config.allowed.permits(url) {
            return Err(Error::NotAllowed {
                url: without_query(url),
            });
        }
        match literal_refused(url, &self.config.refused) {
            Some(refused) => Err(refused.into()),
            None => Ok(()),
        }
    }

    /// GETs `url`, retrying transient failures as the policy allows; returns the 2xx answer or
    /// the classified error of the last attempt.
    pub async fn get(
        &self,
        operation: &'static str,
        url: &Url,
        authorization: Option<&SecretString>,
        redact: &Redactor,
    ) -> Result<Response, Error> {
        let policy = self.config.retry;
        let mut attempt = 0;
        loop {
            let result = self.get_once(operation, url, authorization, redact).await;
            let wait = match &result {
                Err(Error::RateLimited {
                    retry_after: Some(after),
                }) if *after > policy.max_delay => None,
                Err(Error::RateLimited {
                    retry_after: Some(after),
                }) => Some(*after),
                Err(Error::RateLimited { retry_after: None })
                | Err(Error::Unavailable { .. })
                | Err(Error::Timeout { .. })
                | Err(Error::Transport { .. }) => Some(policy.backoff(attempt)),
                _ => None,
            };
            match wait {
                Some(wait) if attempt < policy.max_retries => {
                    tracing::debug!(operation, attempt, ?wait, error = %result.as_ref().err().unwrap(), "retrying Bitbucket request");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                _ => return result,
            }
        }
    }

    async fn get_once(
        &self,
        operation: &'static str,
        url: &Url,
        authorization: Option<&SecretString>,
        redact: &Redactor,
    ) -> Result<Response, Error> {
        let request = Request {
            method: reqwest::Method::GET,
            url,
            body: None,
        };
        self.send_once(operation, request, authorization, redact)
            .await
    }

    /// Sends `request` (a write: POST, PUT or DELETE with a JSON body) once: never retried, so
    /// a write that may have happened is not made twice; the caller looks again before it
    /// writes again.
    pub async fn write(
        &self,
        operation: &'static str,
        request: Request<'_>,
        authorization: Option<&SecretString>,
        redact: &Redactor,
    ) -> Result<Response, Error> {
        self.send_once(operation, request, authorization, redact)
            .await
    }

    async fn send_once(
        &self,
        operation: &'static str,
        request: Request<'_>,
        authorization: Option<&SecretString>,
        redact: &Redactor,
    ) -> Result<Response, Error> {
        let url = request.url;
        self.permit(url)?;
        // The budget this request counts against (one look: it may be repointed meanwhile).
        let budget = self.config.budget.as_ref().map(|slot| slot.get());
        admit(budget.as_deref(), self.config.retry.max_delay).await?;
        let mut request = match request.body {
            Some(body) => self
                .http
                .request(request.method, url.clone())
                .header(header::CONTENT_TYPE, "application/json")
                .body(body),
            None => self.http.request(request.method, url.clone()),
        }
        .header(header::ACCEPT, "application/json");
        if let Some(value) = authorization {
            let mut value =
                http::HeaderValue::from_str(value.expose_secret()).map_err(|_| Error::Config {
                    message: "the credential contains characters not allowed in an HTTP header"
                        .into(),
                })?;
            value.set_sensitive(true);
            request = request.header(header::AUTHORIZATION, value);
        }
        let began = std::time::Instant::now();
        let sent = request.send().await;
        let response = match sent {
            Ok(response) => response,
            Err(e) => {
                self.observe(operation, None, began.elapsed());
                return Err(self.transport_error(&e, redact));
            }
        };
        let status = response.status();
        self.observe(operation, Some(status.as_u16()), began.elapsed());
        let headers = response.headers().clone();
        if let Some(budget) = &budget {
            budget.learn(&headers, std::time::Instant::now());
        }
        let body = read_bounded(response, MAX_BODY_BYTES)
            .await
            .map_err(|e| match e {
                BodyError::TooLarge => Error::TooLarge {
                    limit: MAX_BODY_BYTES,
                },
                BodyError::Read(e) => self.transport_error(&e, redact),
            })?;
        if status.is_success() {
            return Ok(Response {
                headers,
                status: status.as_u16(),
                body,
            });
        }
        let error = classify(status, &headers, &body, url, redact);
        if let (Error::RateLimited { retry_after }, Some(budget)) = (&error, &budget) {
            budget.refused(*retry_after, std::time::Instant::now());
        }
        Err(error)
    }

    pub fn timeout(&self) -> Duration {
        self.config.timeout
    }
}

/// Waits until `budget` admits a request of the current work's priority (at most `max_wait`,
/// the retry policy's longest wait), and counts it; a longer wait is returned as
/// [`Error::OverBudget`], so the caller requeues instead of holding a worker.
async fn admit(budget: Option<&crate::budget::Budget>, max_wait: Duration) -> Result<(), Error> {
    use crate::budget::Priority;
    if let Some(budget) = budget {
        let priority = Priority::current();
        loop {
            let wait = match budget.admit(priority, std::time::Instant::now()) {
                Ok(()) => break,
                Err(wait) => wait,
            };
            if wait > max_wait {
                let snapshot = budget.snapshot(std::time::Instant::now());
                let planned = priority == Priority::Planned;
                let cap = if planned {
                    snapshot.planned
                } else {
                    snapshot.limit
                };
                return Err(match cap.filter(|cap| snapshot.used >= *cap) {
                    Some(cap) => Error::OverBudget {
                        used: snapshot.used,
                        limit: cap,
                        window: snapshot.window,
                        planned,
                        retry_after: wait,
                    },
                    // Not spent: planned work waits out a 429 Bitbucket sent.
                    None => Error::RateLimited {
                        retry_after: Some(wait),
                    },
                });
            }
            tokio::time::sleep(wait).await;
        }
    }
    crate::budget::count_request();
    Ok(())
}

/// One request: its method, URL and JSON body.
pub struct Request<'a> {
    pub method: reqwest::Method,
    pub url: &'a Url,
    pub body: Option<Vec<u8>>,
}

impl Transport {
    pub fn observe(&self, operation: &'static str, status: Option<u16>, took: Duration) {
        if let Some(observer) = &self.config.observer {
            observer(operation, status, took);
        }
    }

    fn transport_error(&self, error: &reqwest::Error, redact: &Redactor) -> Error {
        if error.is_timeout() {
            return Error::Timeout {
                timeout: self.config.timeout,
            };
        }
        if let Some(refused) = address_refused(error) {
            return refused.into();
        }
        // reqwest's message names the URL (which never carries credentials) and the cause.
        let mut message = error.without_url_ref().to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            message = format!("{message}: {cause}");
            source = cause.source();
        }
        Error::Transport {
            message: redact.scrub(message),
        }
    }
}

/// The refusal of the resolver behind a failed request, if that is why it failed.
pub(crate) fn address_refused(error: &reqwest::Error) -> Option<AddressRefused> {
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(refused) = cause.downcast_ref::<AddressRefused>() {
            return Some(refused.clone());
        }
        source = cause.source();
    }
    None
}

trait WithoutUrlRef {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrlRef for reqwest::Error {
    fn without_url_ref(&self) -> String {
        let mut text = self.to_string();
        if let Some(url) = self.url() {
            text = text.replace(&format!(" ({url})"), "");
        }
        text
    }
}

fn tls_config(ca_bundle_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, Error> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_bundle_pem {
        Some(pem) => {
            for certificate in CertificateDer::pem_slice_iter(pem) {
                let certificate = certificate.map_err(|e| Error::Config {
                    message: format!("the CA bundle is not valid PEM: {e}"),
                })?;
                roots.add(certificate).map_err(|e| Error::Config {
                    message: format!("the CA bundle holds an unusable certificate: {e}"),
                })?;
            }
            if roots.is_empty() {
                return Err(Error::Config {
                    message: "the CA bundle holds no certificate".into(),
                });
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config {
            message: format!("TLS set-up: {e}"),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Bitbucket's error bodies: Cloud `{"type":"error","error":{...}}`, Data Center
/// `{"errors":[{...}]}`; anything else (e.g. Cloud's `text/plain` 401 and 429) is read as text.
#[derive(Deserialize, Default)]
struct ErrorBody {
    error: Option<CloudError>,
    #[serde(default)]
    errors: Vec<DataCenterError>,
}

#[derive(Deserialize, Default)]
struct CloudError {
    #[serde(default)]
    message: String,
    // A string in most errors, an object with required/granted scopes in the 403 for missing
    // scopes (api-facts §C.1): parse leniently.
    #[serde(default)]
    detail: serde_json::Value,
}

#[derive(Deserialize, Default)]
struct DataCenterError {
    #[serde(default)]
    message: String,
    #[serde(default, rename = "exceptionName")]
    exception_name: Option<String>,
}

fn classify(
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    url: &Url,
    redact: &Redactor,
) -> Error {
    let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
    let message = parsed
        .error
        .as_ref()
        .map(|e| e.message.clone())
        .filter(|m| !m.is_empty())
        .or_else(|| parsed.errors.first().map(|e| e.message.clone()))
        .filter(|m| !m.is_empty())
        .map(|m| redact.scrub(m))
        .unwrap_or_else(|| redact.excerpt(body));
    let excerpt = redact.excerpt(body);
    match status.as_u16() {
        401 => {
            // Data Center answers 401 also when it knows the caller but the caller lacks
            // permission (api-facts §D.7).
            let permission = parsed.errors.iter().any(|e| {
                e.exception_name
                    .as_deref()
                    .is_some_and(|n| n.ends_with("AuthorisationException"))
            });
            if permission {
                Error::Forbidden { message }
            } else {
                Error::Unauthorized { message }
            }
        }
        403 => match parsed.error.as_ref().map(|e| &e.detail) {
            Some(detail) if detail.get("required").is_some() => Error::InsufficientScopes {
                required: strings(&detail["required"]),
                granted: strings(&detail["granted"]),
            },
            _ => Error::Forbidden { message },
        },
        404 => Error::NotFound { message },
        410 => Error::Gone {
            endpoint: url.path().to_owned(),
            message,
        },
        429 => Error::RateLimited {
            retry_after: headers
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_retry_after),
        },
        500..=599 => Error::Unavailable {
            status: status.as_u16(),
            excerpt,
        },
        other => Error::UnexpectedStatus {
            status: other,
            excerpt,
        },
    }
}

fn strings(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// `Retry-After` is either delta-seconds or an HTTP date (RFC 9110 §10.2.3).
pub(crate) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let when = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let now = jiff::Timestamp::now();
    Some(
        when.duration_since(now)
            .try_into()
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Whatever a server answers: an error message holds no secret, at most one short
        /// excerpt of the body, and no control characters (nothing to break a terminal, a log
        /// line or a condition).
        #[test]
        fn any_answer_is_classified_without_a_secret_and_in_one_short_line(
            status in 400u16..600,
            prefix in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            suffix in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            secret in "[A-Za-z0-9_-]{12,40}",
        ) {
            let body = [prefix.as_slice(), secret.as_bytes(), suffix.as_slice()].concat();
            let error = classify(
                StatusCode::from_u16(status).unwrap(),
                &HeaderMap::new(),
                &body,
                &Url::parse("https://api.bitbucket.org/2.0/user").unwrap(),
                &Redactor::new([SecretString::from(secret.clone())]),
            );
            let shown = error.to_string();
            proptest::prop_assert!(!shown.contains(&secret), "{}", shown);
            proptest::prop_assert!(!shown.chars().any(char::is_control), "{:?}", shown);
            proptest::prop_assert!(shown.chars().count() <= EXCERPT_CHARS + 200, "{}", shown);
        }

        /// Any `Retry-After` value is a duration or nothing, never a panic.
        #[test]
        fn any_retry_after_parses_or_is_ignored(value in ".{0,64}") {
            let _ = parse_retry_after(&value);
        }
    }

    fn classify_body(status: u16, body: &str) -> Error {
        classify(
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            body.as_bytes(),
            &Url::parse("https://api.bitbucket.org/2.0/workspaces").unwrap(),
            &Redactor::new([SecretString::from("tok3n")]),
        )
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn backoff_grows_and_stays_within_the_ceiling() {
        let policy = RetryPolicy {
            max_retries: 5,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(350),
        };
        for attempt in 0..6 {
            let ceiling = (Duration::from_millis(100) * 2u32.pow(attempt)).min(policy.max_delay);
            let wait = policy.backoff(attempt);
            assert!(
                wait >= ceiling / 2 && wait <= ceiling,
                "{attempt}: {wait:?}"
            );
        }
    }

    #[test]
    fn equal_jitter_stays_between_half_the_ceiling_and_the_ceiling() {
        assert_eq!(equal_jitter(Duration::ZERO), Duration::ZERO);
        for ceiling in [
            Duration::from_nanos(1),
            Duration::from_nanos(3),
            Duration::from_millis(250),
            Duration::from_secs(3600),
            Duration::MAX,
        ] {
            for _ in 0..100 {
                let wait = equal_jitter(ceiling);
                assert!(
                    wait >= ceiling / 2 && wait <= ceiling,
                    "{ceiling:?}: {wait:?}"
                );
            }
        }
    }

    proptest::proptest! {
        /// However many attempts and whatever the delays, the wait is within
        /// [ceiling / 2, ceiling] with ceiling = min(base * 2^attempt, max), and never panics.
        #[test]
        fn exponential_backoff_is_bounded(
            base in 0u64..=u64::MAX,
            max in 0u64..=u64::MAX,
            attempt in proptest::num::u32::ANY,
        ) {
            let (base, max) = (Duration::from_nanos(base), Duration::from_nanos(max));
            let ceiling = base
                .checked_mul(2u32.saturating_pow(attempt))
                .map_or(max, |grown| grown.min(max));
            let wait = exponential_backoff(base, max, attempt);
            proptest::prop_assert!(wait >= ceiling / 2 && wait <= ceiling, "{:?} of {:?}", wait, ceiling);
        }
    }

    #[test]
    fn a_text_plain_401_is_unauthorized_with_its_text() {
        match classify_body(401, "Invalid credentials\n") {
            Error::Unauthorized { message } => assert_eq!(message, "Invalid credentials"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_data_center_permission_401_is_forbidden() {
        let body = r#"{"errors":[{"context":null,"message":"You are not permitted to access this resource","exceptionName":"com.atlassian.bitbucket.AuthorisationException"}]}"#;
        assert!(matches!(classify_body(401, body), Error::Forbidden { .. }));
    }

    #[test]
    fn an_excerpt_is_one_short_printable_line() {
        let body = format!(
            "<html>\x1b[31mInternal\x00 admin\r\n panel</html>\u{7}{}",
            "x".repeat(500)
        );
        let excerpt = Redactor::default().excerpt(body.as_bytes());
        assert!(
            excerpt.starts_with("<html> [31mInternal admin panel</html> xxx"),
            "{excerpt}"
        );
        assert!(!excerpt.chars().any(char::is_control), "{excerpt:?}");
        assert_eq!(
            excerpt.chars().count(),
            EXCERPT_CHARS + 1,
            "120 characters and …"
        );
        let binary = Redactor::default().excerpt(&[0xff, 0xfe, b'o', b'k']);
        assert_eq!(binary, "ok");
        let reordered = Redactor::default().excerpt("user \u{202e}nimda\u{2066}x".as_bytes());
        assert_eq!(reordered, "user nimda x", "bidi controls are not passed on");
    }

    #[test]
    fn an_echoed_secret_is_redacted_from_error_text() {
        let error = classify_body(502, "<html>bad gateway for Bearer tok3n</html>");
        assert!(!error.to_string().contains("tok3n"), "{error}");
        assert!(error.to_string().contains("<redacted>"));
    }
}
