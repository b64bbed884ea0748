//! Who is calling: turns an `Authorization` header into an [`Authentication`] for the product
//! the path belongs to (Cloud, Data Center, or the Cloud OAuth token endpoint), using the
//! credentials of the current fixture and the OAuth tokens issued so far. Only the credential's
//! non-secret id leaves this module; secrets are compared and dropped. Pure; no I/O.

use base64::{Engine, engine::general_purpose::STANDARD};
use http::{HeaderMap, header::AUTHORIZATION};
use jiff::Timestamp;

use super::{
    fixture::{CloudCredential, CloudCredentialKind, DcCredentialKind},
    timestamp,
    world::World,
};

/// Credential id recorded for requests without credentials.
pub const ANONYMOUS: &str = "anonymous";
/// Credential id recorded for requests whose credentials were rejected.
pub const INVALID: &str = "invalid";

/// Which simulated product a path belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Realm {
    /// `/2.0/…`
    Cloud,
    /// `/rest/…`
    DataCenter,
    /// `/site/oauth2/…`
    OAuth,
    /// `/_sim/…` and anything else: not simulated Bitbucket.
    Other,
}

impl Realm {
    pub(crate) fn of(path: &str) -> Self {
        if path == "/2.0" || path.starts_with("/2.0/") {
            Self::Cloud
        } else if path.starts_with("/rest/") {
            Self::DataCenter
        } else if path.starts_with("/site/oauth2/") {
            Self::OAuth
        } else {
            Self::Other
        }
    }
}

/// The outcome of looking at a request's credentials.
#[derive(Clone, Debug)]
pub(crate) struct Authentication {
    /// Non-secret credential id, [`ANONYMOUS`] or [`INVALID`]; OAuth tokens count against their
    /// consumer, as on Bitbucket Cloud.
    pub credential_id: String,
    /// Hourly request limit configured for the credential.
    pub rate_limit_per_hour: Option<u32>,
    /// Who the caller is.
    pub caller: Caller,
}

/// Who the caller is, per product.
#[derive(Clone, Debug)]
pub(crate) enum Caller {
    /// No `Authorization` header.
    Anonymous,
    /// Credentials were presented and rejected.
    Rejected(Rejection),
    /// An authenticated Cloud caller.
    Cloud(CloudCaller),
    /// An authenticated Data Center caller.
    DataCenter(DcCaller),
}

/// Why credentials were rejected; each has its own 401 shape on Cloud.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// Basic credentials (or an unknown scheme): `text/plain` + `WWW-Authenticate` on Cloud.
    Basic,
    /// Unknown or expired Bearer token.
    Bearer,
    /// An OAuth access token past its lifetime.
    ExpiredOAuthToken,
}

/// An authenticated Cloud caller.
#[derive(Clone, Debug)]
pub(crate) struct CloudCaller {
    /// A user, or an access token's pseudo-user.
    pub identity: CloudIdentity,
    /// Granted scopes, as configured.
    pub scopes: Vec<String>,
    /// Value of `X-Credential-Type`.
    pub credential_type: String,
}

/// Whom a Cloud credential acts as.
#[derive(Clone, Debug)]
pub(crate) enum CloudIdentity {
    /// An Atlassian account (API token, OAuth token).
    User {
        /// Username of the fixture user.
        username: String,
    },
    /// A workspace/project/repository access token.
    AccessToken {
        /// Workspace slug.
        workspace: String,
        /// Project restriction.
        project: Option<String>,
        /// Repository restriction.
        repository: Option<String>,
    },
}

impl CloudCaller {
    /// The name embedded in https clone URLs: the username, or `x-token-auth` for tokens
    /// (documented for OAuth tokens, commonly used for access tokens; UNCERTAIN for the latter).
    pub(crate) fn clone_username(&self) -> &str {
        match &self.identity {
            CloudIdentity::User { username } => username,
            CloudIdentity::AccessToken { .. } => "x-token-auth",
        }
    }

    /// Whether the credential holds `granular` or a classic scope that implies `classic`.
    pub(crate) fn has_scope(&self, granular: &str, classic: &str) -> bool {
        self.scopes.iter().any(|held| {
            held == granular
                || held == classic
                // Classic scopes imply their weaker forms (`repository:write` ⇒ `repository`);
                // granular scopes do not imply each other.
                || held
                    .strip_prefix(classic)
                    .is_some_and(|rest| rest.starts_with(':') && !held.ends_with(":bitbucket"))
        })
    }

    /// The scope name to report as required: granular if the credential uses granular scopes.
    pub(crate) fn scope_name<'a>(&self, granular: &'a str, classic: &'a str) -> &'a str {
        if self.scopes.iter().any(|s| s.ends_with(":bitbucket")) {
            granular
        } else {
            classic
        }
    }
}

/// An authenticated Data Center caller.
#[derive(Clone, Debug)]
pub(crate) struct DcCaller {
    /// Username (`X-AUSERNAME`).
    pub username: String,
    /// User id (`X-AUSERID`).
    pub user_id: u64,
    /// Readable project keys, when restricted.
    pub projects: Option<Vec<String>>,
}

impl DcCaller {
    /// Whether the caller may read `project` (public projects are checked by the caller).
    pub(crate) fn may_read(&self, project_key: &str) -> bool {
        let personal = project_key
            .strip_prefix('~')
            .is_some_and(|owner| owner.eq_ignore_ascii_case(&self.username));
        personal
            || self
                .projects
                .as_ref()
                .is_none_or(|keys| keys.iter().any(|k| k.eq_ignore_ascii_case(project_key)))
    }
}

enum Presented {
    None,
    Basic { user: String, secret: String },
    Bearer(String),
    Unreadable,
}

fn presented(headers: &HeaderMap) -> Presented {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Presented::None;
    };
    let Ok(value) = value.to_str() else {
        return Presented::Unreadable;
    };
    let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("bearer") {
        return Presented::Bearer(rest.trim().to_owned());
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return Presented::Unreadable;
    }
    let decoded = STANDARD
        .decode(rest.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok());
    match decoded.as_deref().and_then(|text| text.split_once(':')) {
        Some((user, secret)) => Presented::Basic {
            user: user.to_owned(),
            secret: secret.to_owned(),
        },
        None => Presented::Unreadable,
    }
}

fn expired(expires_at: Option<&str>, now: Timestamp) -> bool {
    expires_at
        .and_then(timestamp::parse)
        .is_some_and(|at| at <= now)
}

fn anonymous() -> Authentication {
    Authentication {
        credential_id: ANONYMOUS.to_owned(),
        rate_limit_per_hour: None,
        caller: Caller::Anonymous,
    }
}

fn rejected(why: Rejection) -> Authentication {
    Authentication {
        credential_id: INVALID.to_owned(),
        rate_limit_per_hour: None,
        caller: Caller::Rejected(why),
    }
}

/// An accepted Cloud credential acting as `identity`; `X-Credential-Type` is `default_type`
/// unless the fixture overrides it.
fn cloud_authenticated(
    credential: &CloudCredential,
    identity: CloudIdentity,
    default_type: &str,
) -> Authentication {
    Authentication {
        credential_id: credential.id.clone(),
        rate_limit_per_hour: credential.rate_limit_per_hour,
        caller: Caller::Cloud(CloudCaller {
            identity,
            scopes: credential.scopes.clone(),
            credential_type: credential
                .credential_type_header
                .clone()
                .unwrap_or_else(|| default_type.to_owned()),
        }),
    }
}

/// A known credential refused (expired or revoked): still counted as its own, so counters and
/// faults see who keeps knocking.
fn rejected_known(why: Rejection, credential_id: &str) -> Authentication {
    Authentication {
        credential_id: credential_id.to_owned(),
        ..rejected(why)
    }
}

impl World {
    /// Authenticates a request for `realm`. `form_client_id` is the `client_id` form field of
    /// a token-endpoint request, which may identify the consumer instead of HTTP Basic.
    pub(crate) fn authenticate(
        &self,
        realm: Realm,
        headers: &HeaderMap,
        form_client_id: Option<&str>,
    ) -> Authentication {
        let now = Timestamp::now();
        match realm {
            Realm::Cloud => self.authenticate_cloud(headers, now),
            Realm::DataCenter => self.authenticate_dc(headers, now),
            Realm::OAuth => self.identify_consumer(headers, form_client_id),
            Realm::Other => anonymous(),
        }
    }

    fn authenticate_cloud(&self, headers: &HeaderMap, now: Timestamp) -> Authentication {
        match presented(headers) {
            Presented::None => anonymous(),
            Presented::Unreadable => rejected(Rejection::Basic),
            Presented::Basic { user, secret } => self.cloud_api_token(&user, &secret, now),
            // Bearer tokens are access tokens from the fixture or OAuth tokens issued so far.
            Presented::Bearer(token) => self
                .cloud_access_token(&token, now)
                .unwrap_or_else(|| self.cloud_oauth_token(&token, now)),
        }
    }

    /// HTTP Basic on Cloud: an API token.
    fn cloud_api_token(&self, user: &str, secret: &str, now: Timestamp) -> Authentication {
        let cloud = &self.fixture.cloud;
        // API tokens authenticate with the account email, never the username.
        let found = cloud.credentials.iter().find_map(|c| match &c.kind {
            CloudCredentialKind::ApiToken { user: owner, token } if *token == secret => {
                let account = cloud.user(owner)?;
                account
                    .email
                    .eq_ignore_ascii_case(user)
                    .then_some((c, account))
            }
            _ => None,
        });
        match found {
            Some((credential, _)) if expired(credential.expires_at.as_deref(), now) => {
                rejected_known(Rejection::Basic, &credential.id)
            }
            Some((credential, account)) => cloud_authenticated(
                credential,
                CloudIdentity::User {
                    username: account.username.clone(),
                },
                "api_token",
            ),
            None => rejected(Rejection::Basic),
        }
    }

    /// A Bearer token that is a workspace, project or repository access token; `None` when no
    /// access token in the fixture has this secret.
    fn cloud_access_token(&self, token: &str, now: Timestamp) -> Option<Authentication> {
        let (credential, workspace, project, repository) = self
            .fixture
            .cloud
            .credentials
            .iter()
            .find_map(|c| match &c.kind {
                CloudCredentialKind::AccessToken {
                    workspace,
                    project,
                    repository,
                    token: t,
                    ..
                } if *t == token => Some((c, workspace, project, repository)),
                _ => None,
            })?;
        if expired(credential.expires_at.as_deref(), now) {
            return Some(rejected_known(Rejection::Bearer, &credential.id));
        }
        let kind = match (project, repository) {
            (_, Some(_)) => "repo_access_token",
            (Some(_), None) => "project_access_token",
            (None, None) => "workspace_access_token",
        };
        let identity = CloudIdentity::AccessToken {
            workspace: workspace.clone(),
            project: project.clone(),
            repository: repository.clone(),
        };
        Some(cloud_authenticated(credential, identity, kind))
    }

    /// A Bearer token issued by the OAuth token endpoint: it acts as the user who signed in
    /// (or the consumer's owner) and counts against its consumer.
    fn cloud_oauth_token(&self, token: &str, now: Timestamp) -> Authentication {
        let Some(issued) = self.oauth.access_tokens.get(token) else {
            return rejected(Rejection::Bearer);
        };
        let credentials = &self.fixture.cloud.credentials;
        let consumer = credentials.iter().find(|c| c.id == issued.consumer_id);
        let Some(consumer) = consumer else {
            return rejected(Rejection::Bearer);
        };
        let CloudCredentialKind::OauthConsumer { owner, .. } = &consumer.kind else {
            return rejected(Rejection::Bearer);
        };
        let owner = issued.user.as_ref().unwrap_or(owner);
        if issued.expires_at <= now || expired(consumer.expires_at.as_deref(), now) {
            // Still the consumer's request: counters and faults see whose token expired.
            return rejected_known(Rejection::ExpiredOAuthToken, &consumer.id);
        }
        let identity = CloudIdentity::User {
            username: owner.clone(),
        };
        cloud_authenticated(consumer, identity, "oauth2")
    }

    fn authenticate_dc(&self, headers: &HeaderMap, now: Timestamp) -> Authentication {
        let dc = &self.fixture.data_center;
        let credential = match presented(headers) {
            Presented::None => return anonymous(),
            Presented::Unreadable => return rejected(Rejection::Basic),
            Presented::Basic { user, secret } => dc.credentials.iter().find(|c| match &c.kind {
                DcCredentialKind::Basic { username, password } => {
                    *username == user && *password == secret
                }
                // Personal tokens also work as the Basic password of their user; project and
                // repository tokens only as Bearer.
                DcCredentialKind::AccessToken {
                    user: owner,
                    project: None,
                    token,
                } => *owner == user && *token == secret,
                DcCredentialKind::AccessToken { .. } => false,
            }),
            Presented::Bearer(token) => dc.credentials.iter().find(|c| {
                matches!(&c.kind, DcCredentialKind::AccessToken { token: t, .. } if *t == token)
            }),
        };
        let Some(credential) = credential else {
            return rejected(Rejection::Basic);
        };
        if expired(credential.expires_at.as_deref(), now) {
            return rejected_known(Rejection::Basic, &credential.id);
        }
        let username = match &credential.kind {
            DcCredentialKind::Basic { username, .. } => username,
            DcCredentialKind::AccessToken { user, .. } => user,
        };
        let Some(user) = dc.user(username) else {
            return rejected(Rejection::Basic);
        };
        let projects = match &credential.kind {
            DcCredentialKind::AccessToken {
                project: Some(key), ..
            } => Some(vec![key.clone()]),
            _ => credential.projects.clone(),
        };
        Authentication {
            credential_id: credential.id.clone(),
            rate_limit_per_hour: credential.rate_limit_per_hour,
            caller: Caller::DataCenter(DcCaller {
                username: user.name.clone(),
                user_id: user.id,
                projects,
            }),
        }
    }

    /// For the token endpoint only the consumer's id matters (counters, faults, limits); the
    /// handler checks the secret itself because it may also arrive in the form body.
    fn identify_consumer(
        &self,
        headers: &HeaderMap,
        form_client_id: Option<&str>,
    ) -> Authentication {
        let client_id = match presented(headers) {
            Presented::Basic { user, .. } => user,
            _ => match form_client_id {
                Some(id) => id.to_owned(),
                None => return anonymous(),
            },
        };
        self.consumer_by_client_id(&client_id)
            .map(|c| Authentication {
                credential_id: c.id.clone(),
                rate_limit_per_hour: c.rate_limit_per_hour,
                caller: Caller::Anonymous,
            })
            .unwrap_or_else(anonymous)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::Fixture;

    fn world() -> World {
        World::new(Fixture::demo().prepare().unwrap())
    }

    fn basic(user: &str, secret: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        let value = format!("Basic {}", STANDARD.encode(format!("{user}:{secret}")));
        headers.insert(AUTHORIZATION, value.parse().unwrap());
        headers
    }

    #[test]
    fn an_api_token_authenticates_with_the_email_but_not_the_username() {
        let world = world();
        let ok = world.authenticate(
            Realm::Cloud,
            &basic("jdoe@example.com", "FAKE-cloud-api-token-for-jdoe"),
            None,
        );
        assert_eq!(ok.credential_id, "jdoe-api-token");
        let wrong = world.authenticate(
            Realm::Cloud,
            &basic("jdoe", "FAKE-cloud-api-token-for-jdoe"),
            None,
        );
        assert!(matches!(wrong.caller, Caller::Rejected(Rejection::Basic)));
        assert_eq!(wrong.credential_id, INVALID);
    }

    #[test]
    fn classic_scopes_imply_their_weaker_forms_but_granular_ones_do_not() {
        let caller = |scopes: &[&str]| CloudCaller {
            identity: CloudIdentity::User {
                username: "u".into(),
            },
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            credential_type: "api_token".into(),
        };
        assert!(caller(&["repository:write"]).has_scope("read:repository:bitbucket", "repository"));
        assert!(
            !caller(&["write:repository:bitbucket"])
                .has_scope("read:repository:bitbucket", "repository")
        );
        assert!(
            caller(&["read:repository:bitbucket"])
                .has_scope("read:repository:bitbucket", "repository")
        );
    }

    #[test]
    fn a_personal_data_center_token_works_as_a_basic_password_but_a_project_token_does_not() {
        let world = world();
        let personal = world.authenticate(
            Realm::DataCenter,
            &basic("jdoe", "FAKE-dc-personal-access-token-jdoe"),
            None,
        );
        assert_eq!(personal.credential_id, "jdoe-pat");
        let project = world.authenticate(
            Realm::DataCenter,
            &basic("project-plat-bot", "FAKE-dc-project-access-token-plat"),
            None,
        );
        assert_eq!(project.credential_id, INVALID);
    }
}
