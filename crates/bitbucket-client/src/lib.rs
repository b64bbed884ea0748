//! The Bitbucket client: proves a credential works (who it is, its scopes) and lists the
//! repositories it can see, on Bitbucket Cloud (REST 2.0) and Data Center (REST 1.0).
//!
//! No kube imports: the controllers translate between this module's plain types and the CRDs.
//! Facts about Bitbucket's behaviour are cited from `testdata/bitbucket/API-FACTS.md`
//! (api-facts §…). Does network I/O.

pub mod budget;
mod cloud;
pub mod credentials;
mod datacenter;
pub mod error;
mod hooks;
pub mod model;
mod oauth;
mod paging;
pub mod reach;
pub mod transport;
pub mod webhook;

use secrecy::{ExposeSecret, SecretString};
use tracing::Instrument as _;
use url::Url;

pub use budget::{Budget, Priority};
pub use credentials::Credentials;
pub use error::{Error, ErrorClass};
pub use hooks::{Hook, HookSpec};
pub use model::{Identity, IdentityKind, ListScope, ListingSummary, Repository};
pub use paging::{Bound, ListingLimits};
pub use reach::{AllowList, RefusedNetworks};
pub use transport::{
    HttpClients, RequestObserver, RetryPolicy, TransportConfig, equal_jitter, exponential_backoff,
};

use oauth::OAuthConsumer;
pub use oauth::{RotationSaver, authorize_url, exchange_code};
use transport::{Redactor, Response, Transport};

/// Which Bitbucket to talk to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Server {
    /// Bitbucket Cloud; `api_url` is the REST base, `https://api.bitbucket.org/2.0` normally.
    Cloud { api_url: Url },
    /// Bitbucket Data Center; `base_url` is the instance's base URL, without `/rest`.
    DataCenter { base_url: Url },
}

impl Server {
    /// Bitbucket Cloud at its public address.
    pub fn cloud() -> Self {
        Self::Cloud {
            api_url: Url::parse("https://api.bitbucket.org/2.0").expect("a valid URL"),
        }
    }
}

/// A client for one credential on one Bitbucket. Cheap to share (`Arc`); reuses connections.
pub struct Client {
    server: Server,
    credentials: Credentials,
    transport: Transport,
    /// Boxed: 928 bytes inline, which a client of any other credential would carry empty (about
    /// 9 MiB at 10,000 integrations).
    oauth: Option<Box<OAuthConsumer>>,
    redact: Redactor,
    /// Data Center: the username this credential turned out to be, so that later validations
    /// ask for that user alone (see `datacenter::whoami`).
    found_user: std::sync::Mutex<Option<String>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.server)
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Builds a client. Fails when the credential kind does not fit the server (e.g. Basic on
    /// Cloud) or the CA bundle is unusable.
    pub fn new(
        server: Server,
        credentials: Credentials,
        config: TransportConfig,
    ) -> Result<Self, Error> {
        if credentials.is_cloud() != matches!(server, Server::Cloud { .. }) {
            return Err(Error::Config {
                message: format!(
                    "a {} cannot be used with Bitbucket {}",
                    credentials.kind(),
                    if credentials.is_cloud() {
                        "Data Center"
                    } else {
                        "Cloud"
                    }
                ),
            });
        }
        let oauth = match (&server, &credentials) {
            (
                Server::Cloud { api_url },
                Credentials::CloudOAuthConsumer {
                    client_id,
                    client_secret,
                },
            ) => Some(Box::new(OAuthConsumer::new(
                api_url,
                client_id,
                client_secret,
                None,
            )?)),
            (
                Server::Cloud { api_url },
                Credentials::CloudOAuthUser {
                    client_id,
                    client_secret,
                    refresh_token,
                },
            ) => Some(Box::new(OAuthConsumer::new(
                api_url,
                client_id,
                client_secret,
                Some(refresh_token.clone()),
            )?)),
            _ => None,
        };
        let redact = Redactor::new(secrets_of(&credentials));
        Ok(Self {
            server,
            transport: Transport::new(config)?,
            credentials,
            oauth,
            redact,
            found_user: std::sync::Mutex::default(),
        })
    }

    /// Saves each refresh token Bitbucket rotates to (for signed-in OAuth users), before the
    /// access token that came with it is used; see [`RotationSaver`].
    pub fn on_rotation(mut self, saver: RotationSaver) -> Self {
        if let Some(oauth) = &mut self.oauth {
            oauth.saver = Some(saver);
        }
        self
    }

    /// The newest refresh token of a signed-in OAuth user (rotated by each grant).
    pub async fn refresh_token(&self) -> Option<SecretString> {
        match &self.oauth {
            Some(oauth) => oauth.refresh_token().await,
            None => None,
        }
    }

    /// The server this client talks to.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Where this client sends the credential, each with how a user would name it: the server's
    /// URL, and for an OAuth consumer the token endpoint derived from it.
    pub fn endpoints(&self) -> Vec<(&'static str, Url)> {
        let base = match &self.server {
            Server::Cloud { api_url } => api_url.clone(),
            Server::DataCenter { base_url } => base_url.clone(),
        };
        let mut endpoints = vec![("server", base)];
        if let Some(oauth) = &self.oauth {
            endpoints.push((
                "the OAuth token endpoint derived from server.url",
                oauth.token_url().clone(),
            ));
        }
        endpoints
    }

    /// Proves the credential works and says who it is. `workspace` is required for Cloud access
    /// tokens, which are not users and can only be checked against their workspace
    /// (api-facts §B.6).
    pub async fn whoami(&self, workspace: Option<&str>) -> Result<Identity, Error> {
        match &self.server {
            Server::Cloud { .. } => cloud::whoami(self, workspace).await,
            Server::DataCenter { .. } => datacenter::whoami(self).await,
        }
    }

    /// Every repository in `scope` the credential can see, sorted by full name; within the
    /// bounds of [`TransportConfig::listing`], whatever the server answers.
    pub async fn list_repositories(&self, scope: &ListScope) -> Result<Vec<Repository>, Error> {
        let limits = self.transport.listing();
        let mut tally = paging::Tally::new(limits);
        let listing = async {
            match (&self.server, scope) {
                (
                    Server::Cloud { .. },
                    ListScope::CloudWorkspace {
                        workspace,
                        projects,
                    },
                ) => cloud::list(self, workspace, projects, &mut tally).await,
                (Server::DataCenter { .. }, ListScope::DataCenter { projects }) => {
                    datacenter::list(self, projects, &mut tally).await
                }
                _ => Err(Error::Config {
                    message:
                        "a workspace applies to Bitbucket Cloud, projects alone to Data Center"
                            .into(),
                }),
            }
        };
        let mut repositories = tokio::time::timeout(limits.deadline, listing)
            .await
            .map_err(|_| Error::ListingTooLarge {
                bound: Bound::Deadline(limits.deadline),
                after: "the time allowed".into(),
            })??;
        repositories.sort_by(|a, b| a.full_name.cmp(&b.full_name));
        repositories.dedup_by(|a, b| a.full_name == b.full_name);
        Ok(repositories)
    }

    /// One repository by its full name (`workspace/slug` on Cloud, `PROJECT/slug` on Data
    /// Center), as a listing shows it: one request. `None` when Bitbucket answers that it does
    /// not exist (deleted, renamed or moved out of the credential's sight).
    pub async fn repository(&self, full_name: &str) -> Result<Option<Repository>, Error> {
        let Some((owner, slug)) = full_name.split_once('/') else {
            return Err(Error::Config {
                message: "a repository is named workspace/slug or PROJECT/slug".into(),
            });
        };
        let found = match &self.server {
            Server::Cloud { .. } => cloud::repository(self, owner, slug).await,
            Server::DataCenter { .. } => datacenter::repository(self, owner, slug).await,
        };
        match found {
            Ok(repository) => Ok(Some(repository)),
            Err(Error::NotFound { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// A one-request summary of what `list_repositories(scope)` would return, where Bitbucket
    /// can give one (Cloud: `size` and the newest `updated_on`); `None` on Data Center, whose
    /// repository JSON carries no change time.
    pub async fn summarize(&self, scope: &ListScope) -> Result<Option<ListingSummary>, Error> {
        match (&self.server, scope) {
            (
                Server::Cloud { .. },
                ListScope::CloudWorkspace {
                    workspace,
                    projects,
                },
            ) => cloud::summarize(self, workspace, projects).await.map(Some),
            _ => Ok(None),
        }
    }

    /// A URL under the server's API base: `segments` are appended (and percent-encoded).
    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = match &self.server {
            Server::Cloud { api_url } => api_url.clone(),
            Server::DataCenter { base_url } => base_url.clone(),
        };
        url.path_segments_mut()
            .expect("http(s) URLs have a path")
            .pop_if_empty()
            .extend(segments);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// GETs `url` with the credential. An OAuth token Bitbucket refuses is renewed once. In a
    /// `bitbucket` span (debug, named by `operation`: where a reconcile's time goes).
    async fn get(&self, operation: &'static str, url: &Url) -> Result<Response, Error> {
        let span = tracing::debug_span!("bitbucket", operation);
        self.get_with_renewal(operation, url).instrument(span).await
    }

    async fn get_with_renewal(
        &self,
        operation: &'static str,
        url: &Url,
    ) -> Result<Response, Error> {
        let authorization = self.authorization().await?;
        let redact = self.redact.with(&authorization);
        let result = self
            .transport
            .get(operation, url, Some(&authorization), &redact)
            .await;
        match (&self.oauth, result) {
            (Some(oauth), Err(Error::Unauthorized { .. })) => {
                oauth.invalidate().await;
                let authorization = self.authorization().await?;
                let redact = self.redact.with(&authorization);
                self.transport
                    .get(operation, url, Some(&authorization), &redact)
                    .await
            }
            (_, result) => result,
        }
    }

    /// Sends a write (`method` with a JSON `body`) with the credential, once; `secret` (what the
    /// body carries that must never show) is redacted from errors along with the credential. An
    /// OAuth token Bitbucket refuses is renewed, and the write sent again: it was not made.
    async fn write(
        &self,
        operation: &'static str,
        method: reqwest::Method,
        url: &Url,
        body: Option<Vec<u8>>,
        secret: Option<&SecretString>,
    ) -> Result<Response, Error> {
        let send = |authorization: SecretString| {
            let mut redact = self.redact.with(&authorization);
            if let Some(secret) = secret.filter(|s| !s.expose_secret().is_empty()) {
                redact = redact.with(secret);
            }
            let request = transport::Request {
                method: method.clone(),
                url,
                body: body.clone(),
            };
            async move {
                (self.transport)
                    .write(operation, request, Some(&authorization), &redact)
                    .await
            }
        };
        let result = send(self.authorization().await?).await;
        match (&self.oauth, result) {
            (Some(oauth), Err(Error::Unauthorized { .. })) => {
                oauth.invalidate().await;
                send(self.authorization().await?).await
            }
            (_, result) => result,
        }
    }

    /// The `next` link of a page at `current`, when it stays on the same origin.
    fn next_page(&self, current: &Url, next: &str) -> Result<Url, Error> {
        let url = Url::parse(next).map_err(|_| Error::PagingLoop {
            reason: "the next link is not an absolute URL".into(),
        })?;
        if url.origin() != current.origin() || url == *current {
            return Err(Error::PagingLoop {
                reason: format!(
                    "the next link points at {} instead of a further page",
                    url.origin().ascii_serialization()
                ),
            });
        }
        Ok(url)
    }

    async fn authorization(&self) -> Result<SecretString, Error> {
        match (&self.oauth, self.credentials.static_authorization()) {
            (_, Some(authorization)) => Ok(authorization),
            (Some(oauth), None) => oauth.authorization(&self.transport, &self.redact).await,
            (None, None) => unreachable!("OAuth consumers always have a token source"),
        }
    }
}

fn secrets_of(credentials: &Credentials) -> Vec<SecretString> {
    let mut secrets = Vec::new();
    match credentials {
        Credentials::CloudApiToken { token, .. }
        | Credentials::CloudAccessToken { token }
        | Credentials::DataCenterAccessToken { token } => secrets.push(token.clone()),
        Credentials::CloudOAuthConsumer { client_secret, .. } => {
            secrets.push(client_secret.clone())
        }
        Credentials::CloudOAuthUser {
            client_secret,
            refresh_token,
            ..
        } => secrets.extend([client_secret.clone(), refresh_token.clone()]),
        Credentials::DataCenterBasic { password, .. } => secrets.push(password.clone()),
    }
    if let Some(header) = credentials.static_authorization() {
        // The encoded form too: "Basic <base64>" would not contain the raw secret.
        if let Some((_, value)) = header.expose_secret().split_once(' ') {
            secrets.push(value.to_owned().into());
        }
    }
    secrets
}

/// The scopes of an `X-OAuth-Scopes` header (`a, b, c`), sorted.
fn scopes(response: &Response) -> Vec<String> {
    let mut scopes: Vec<String> = response
        .header("x-oauth-scopes")
        .map(|value| {
            value
                .split([',', ' '])
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    scopes.sort();
    scopes.dedup();
    scopes
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_client_of_any_credential_stays_small() {
        // The operator keeps one client per integration (10,000 at figure 14's size). An OAuth
        // consumer's token state held inline made every client 1,336 bytes, OAuth or not.
        let size = std::mem::size_of::<super::Client>();
        assert!(size <= 416, "Client is {size} bytes");
    }
}
