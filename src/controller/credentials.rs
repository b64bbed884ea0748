//! From a BitbucketIntegration and its Secrets to a ready [`bitbucket::Client`]: reads the
//! credential Secret (and the CA bundle Secret) from the API server, checks the keys the
//! credential type needs, and reuses the client — with its connection pool and OAuth token —
//! until the spec or a Secret changes (the client is kept in the integration's
//! [`Memory`](super::memory::Memory)). For a signed-in OAuth user, the client saves each refresh
//! token Bitbucket rotates back to the Secret ([`save_rotated`]); that write of the operator's
//! own does not count as a change. Shared by both controllers. Does API-server I/O.

use std::sync::{Arc, Mutex};

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{Api, ResourceExt};
use url::Url;

use super::{
    error::{Class, Reason},
    memory::Memory,
};
use crate::{
    api::{
        ALLOWED_SERVERS_ANNOTATION, BitbucketIntegration, CLOUD_API_URL, CREDENTIAL_TYPE_LABEL,
        CredentialType, ServerType, conditions::reasons,
    },
    bitbucket::{self, AllowList, Credentials, Server, TransportConfig, reach},
};

/// Why no client could be made: a problem only the user can fix.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("Secret {0} not found")]
    SecretNotFound(String),
    #[error("Secret {secret} has no key {key}: {kind} credentials need the keys {needed}")]
    SecretKeyMissing {
        secret: String,
        key: String,
        kind: &'static str,
        needed: String,
    },
    #[error("Secret {secret} key {key} is not UTF-8 text")]
    NotText { secret: String, key: String },
    #[error("{0}")]
    InvalidSpec(String),
    #[error("{0}")]
    ServerNotAllowed(String),
    #[error(
        "Secret {0} lacks the label {CREDENTIAL_TYPE_LABEL}: OAuthUser, which lets the operator save \
         the refresh tokens Bitbucket rotates (without it the credential would be locked out)"
    )]
    SecretNotWritable(String),
    #[error("reading Secret {secret}: {source}")]
    Kube {
        secret: String,
        #[source]
        source: kube::Error,
    },
}

impl Reason for ResolveError {
    fn reason(&self) -> &'static str {
        match self {
            Self::SecretNotFound(_) => reasons::SECRET_NOT_FOUND,
            Self::SecretKeyMissing { .. } | Self::NotText { .. } => reasons::SECRET_KEY_MISSING,
            Self::InvalidSpec(_) => reasons::INVALID_SPEC,
            Self::ServerNotAllowed(_) => reasons::SERVER_NOT_ALLOWED,
            Self::SecretNotWritable(_) => reasons::SECRET_NOT_WRITABLE,
            Self::Kube { .. } => reasons::KUBERNETES_ERROR,
        }
    }

    /// The Secrets' watch brings the fix of a missing Secret or key.
    fn class(&self) -> Class {
        match self {
            Self::Kube { .. } => Class::Transient,
            _ => Class::Stalled,
        }
    }
}

/// A client and what it was built from.
#[derive(Clone)]
pub struct Resolved {
    pub client: Arc<bitbucket::Client>,
    /// Changes whenever the spec or a referenced Secret changes (but not for the operator's
    /// own writes of rotated refresh tokens).
    pub fingerprint: String,
    /// The credential Secret's resourceVersion the client was built from.
    secret_version: String,
    /// The Secret's resourceVersion after the client's latest own write, if it wrote.
    written: Arc<Mutex<Option<String>>>,
}

/// The client for `integration`, reading its Secrets now (so rotation is seen at once) and
/// reusing the client remembered for it while neither the spec nor a Secret changed.
pub async fn resolve(
    kube: &kube::Client,
    memory: &Memory,
    integration: &BitbucketIntegration,
    transport: TransportConfig,
) -> Result<Resolved, ResolveError> {
    let namespace = integration.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(kube.clone(), &namespace);
    let spec = &integration.spec;
    let secret_name = &spec.credentials.secret_ref.name;
    let secret = read(&secrets, secret_name).await?;
    let ca = match &spec.server.ca_bundle_secret_ref {
        Some(reference) => {
            let ca_secret = read(&secrets, &reference.name).await?;
            let pem = key(
                &ca_secret,
                &reference.name,
                &reference.key,
                "CA bundle",
                "the bundle's key",
            )?;
            Some((
                pem.into_bytes(),
                ca_secret.resource_version().unwrap_or_default(),
            ))
        }
        None => None,
    };
    let uid = integration.uid().unwrap_or_default();
    let cached = memory.integration(&uid, |m| m.client.clone());
    let mut secret_version = secret.resource_version().unwrap_or_default();
    if let Some(cached) = &cached
        && crate::controller::lock(&cached.written).as_deref() == Some(secret_version.as_str())
    {
        // The Secret as the client itself last wrote it: the same credential.
        secret_version.clone_from(&cached.secret_version);
    }
    let fingerprint = format!(
        "{}/{}/{}",
        integration.metadata.generation.unwrap_or_default(),
        secret_version,
        ca.as_ref().map(|(_, rv)| rv.as_str()).unwrap_or("-")
    );
    if let Some(cached) = &cached
        && cached.fingerprint == fingerprint
    {
        return Ok(cached.clone());
    }
    tracing::debug!(
        integration = %integration.name_any(),
        was = cached.as_ref().map(|c| c.fingerprint.as_str()),
        now = %fingerprint,
        "building the Bitbucket client"
    );
    let credentials = credentials(
        spec.credentials.credential_type,
        spec.server.server_type,
        &secret,
        secret_name,
    )?;
    let server = server(integration)?;
    let consent = consent(&secret, secret_name)?;
    let oauth_user = spec.credentials.credential_type == CredentialType::OAuthUser;
    if oauth_user
        && secret
            .labels()
            .get(CREDENTIAL_TYPE_LABEL)
            .map(String::as_str)
            != Some("OAuthUser")
    {
        return Err(ResolveError::SecretNotWritable(secret_name.clone()));
    }
    let operator = transport.allowed.clone();
    let transport = TransportConfig {
        ca_bundle_pem: ca.map(|(pem, _)| pem),
        allowed: consent
            .as_ref()
            .map_or(operator.clone(), |c| operator.and(c)),
        ..transport
    };
    let refused = Arc::clone(&transport.refused);
    let refresh_token = match &credentials {
        Credentials::CloudOAuthUser { refresh_token, .. } => Some(refresh_token.clone()),
        _ => None,
    };
    let mut client = bitbucket::Client::new(server, credentials, transport)
        .map_err(|e| ResolveError::InvalidSpec(e.to_string()))?;
    let written = Arc::new(Mutex::new(None));
    if let Some(refresh_token) = refresh_token {
        client = client.on_rotation(save_rotated(
            Api::namespaced(kube.clone(), &namespace),
            secret_name.clone(),
            secret_version.clone(),
            refresh_token,
            Arc::clone(&written),
        ));
    }
    for (what, url) in client.endpoints() {
        reachable(
            what,
            &url,
            &operator,
            consent.as_ref(),
            &refused,
            secret_name,
        )?;
    }
    let resolved = Resolved {
        client: Arc::new(client),
        fingerprint,
        secret_version,
        written,
    };
    memory.integration(&uid, |m| m.client = Some(resolved.clone()));
    Ok(resolved)
}

/// Saves the refresh tokens Bitbucket rotates to the Secret the client was built from (read at
/// `version`, holding `current`): only `data.refreshToken` is written, on the version read just
/// before (a conflict reads again). A Secret whose refresh token someone else replaced meanwhile
/// (signed in again) is left alone: its token wins, and the next reconcile builds a client from
/// it. `written` learns the version of each write that followed the client's own, so that write
/// does not count as a change of the credential.
fn save_rotated(
    secrets: Api<Secret>,
    name: String,
    version: String,
    current: secrecy::SecretString,
    written: Arc<Mutex<Option<String>>>,
) -> bitbucket::RotationSaver {
    use secrecy::ExposeSecret as _;
    let saved = Arc::new(tokio::sync::Mutex::new((version, current)));
    Arc::new(move |rotated: secrecy::SecretString| {
        let (secrets, name, saved, written) = (
            secrets.clone(),
            name.clone(),
            Arc::clone(&saved),
            Arc::clone(&written),
        );
        Box::pin(async move {
            let mut saved = saved.lock().await;
            let failed = |e: kube::Error| format!("writing Secret {name}: {e}");
            for _ in 0..3 {
                let secret = secrets.get(&name).await.map_err(failed)?;
                let stored = value_of(&secret, "refreshToken").unwrap_or_default();
                if stored != saved.1.expose_secret().as_bytes() {
                    return Ok(()); // replaced by someone else: theirs wins
                }
                let read_at = secret.resource_version().unwrap_or_default();
                let patch = serde_json::json!({
                    "metadata": {"resourceVersion": read_at},
                    "data": {"refreshToken": ByteString(rotated.expose_secret().as_bytes().to_vec())},
                });
                let params = kube::api::PatchParams {
                    field_manager: Some("bitbucket-operator".into()),
                    ..kube::api::PatchParams::default()
                };
                match secrets
                    .patch(&name, &params, &kube::api::Patch::Merge(&patch))
                    .await
                {
                    Ok(now) => {
                        let now = now.resource_version().unwrap_or_default();
                        if read_at == saved.0 {
                            *crate::controller::lock(&written) = Some(now.clone());
                        }
                        *saved = (now, rotated);
                        return Ok(());
                    }
                    Err(kube::Error::Api(status)) if status.code == 409 => {}
                    Err(e) => return Err(failed(e)),
                }
            }
            Err(format!("writing Secret {name}: it kept changing"))
        })
    })
}

/// The servers the Secret consents to send its credential to (its annotation), if it says.
fn consent(secret: &Secret, secret_name: &str) -> Result<Option<AllowList>, ResolveError> {
    let Some(text) = secret.annotations().get(ALLOWED_SERVERS_ANNOTATION) else {
        return Ok(None);
    };
    text.parse().map(Some).map_err(|e| {
        ResolveError::ServerNotAllowed(format!(
            "Secret {secret_name}'s annotation {ALLOWED_SERVERS_ANNOTATION} is not a list of \
             servers: {e}"
        ))
    })
}

/// Refuses, before anything is sent, an endpoint that neither the operator nor the Secret
/// allows, or that names a refused address; the message names the rule.
fn reachable(
    what: &str,
    url: &Url,
    operator: &AllowList,
    consent: Option<&AllowList>,
    refused: &bitbucket::RefusedNetworks,
    secret_name: &str,
) -> Result<(), ResolveError> {
    let shown = reach::without_query(url);
    if !operator.permits(url) && !consent.is_some_and(|c| c.permits(url)) {
        let secret_says = match consent {
            Some(_) => format!(
                "Secret {secret_name}'s annotation {ALLOWED_SERVERS_ANNOTATION} does not name it"
            ),
            None => format!("Secret {secret_name} has no annotation {ALLOWED_SERVERS_ANNOTATION}"),
        };
        return Err(ResolveError::ServerNotAllowed(format!(
            "{what} {shown} is not allowed for the credential in Secret {secret_name}: it is not \
             among the operator's allowed servers ({operator}) and {secret_says}"
        )));
    }
    match reach::literal_refused(url, refused) {
        Some(refusal) => Err(ResolveError::ServerNotAllowed(
            bitbucket::Error::from(refusal).to_string(),
        )),
        None => Ok(()),
    }
}

async fn read(secrets: &Api<Secret>, name: &str) -> Result<Secret, ResolveError> {
    secrets
        .get_opt(name)
        .await
        .map_err(|source| ResolveError::Kube {
            secret: name.to_owned(),
            source,
        })?
        .ok_or_else(|| ResolveError::SecretNotFound(name.to_owned()))
}

/// Where the integration's Bitbucket is.
pub fn server(integration: &BitbucketIntegration) -> Result<Server, ResolveError> {
    let server = &integration.spec.server;
    let url = server.url.as_deref();
    let parse = |url: &str| {
        Url::parse(url).map_err(|e| ResolveError::InvalidSpec(format!("server.url {url:?}: {e}")))
    };
    Ok(match server.server_type {
        ServerType::Cloud => Server::Cloud {
            api_url: parse(url.unwrap_or(CLOUD_API_URL))?,
        },
        ServerType::DataCenter => Server::DataCenter {
            base_url: parse(url.ok_or_else(|| {
                ResolveError::InvalidSpec("server.url is required for DataCenter".into())
            })?)?,
        },
    })
}

/// The credential in `secret`, for the declared type and server.
pub fn credentials(
    kind: CredentialType,
    server: ServerType,
    secret: &Secret,
    secret_name: &str,
) -> Result<Credentials, ResolveError> {
    let (label, needed) = match kind {
        CredentialType::ApiToken => ("ApiToken", "email, token"),
        CredentialType::AccessToken => ("AccessToken", "token"),
        CredentialType::OAuthConsumer => ("OAuthConsumer", "clientId, clientSecret"),
        CredentialType::OAuthUser => ("OAuthUser", "clientId, clientSecret, refreshToken"),
        CredentialType::Basic => ("Basic", "username, password"),
    };
    let get = |name: &str| key(secret, secret_name, name, label, needed);
    Ok(match kind {
        CredentialType::ApiToken => Credentials::CloudApiToken {
            email: get("email")?,
            token: get("token")?.into(),
        },
        CredentialType::AccessToken => match server {
            ServerType::Cloud => Credentials::CloudAccessToken {
                token: get("token")?.into(),
            },
            ServerType::DataCenter => Credentials::DataCenterAccessToken {
                token: get("token")?.into(),
            },
        },
        CredentialType::OAuthConsumer => Credentials::CloudOAuthConsumer {
            client_id: get("clientId")?,
            client_secret: get("clientSecret")?.into(),
        },
        CredentialType::OAuthUser => Credentials::CloudOAuthUser {
            client_id: get("clientId")?,
            client_secret: get("clientSecret")?.into(),
            refresh_token: get("refreshToken")?.into(),
        },
        CredentialType::Basic => Credentials::DataCenterBasic {
            username: get("username")?,
            password: get("password")?.into(),
        },
    })
}

/// One key of a Secret as text, without the trailing newline files usually end with.
fn key(
    secret: &Secret,
    secret_name: &str,
    key: &str,
    kind: &'static str,
    needed: &str,
) -> Result<String, ResolveError> {
    let missing = || ResolveError::SecretKeyMissing {
        secret: secret_name.to_owned(),
        key: key.to_owned(),
        kind,
        needed: needed.to_owned(),
    };
    let value = value_of(secret, key).ok_or_else(missing)?;
    let text = String::from_utf8(value).map_err(|_| ResolveError::NotText {
        secret: secret_name.to_owned(),
        key: key.to_owned(),
    })?;
    let text = text.trim_end_matches(['\n', '\r']).to_owned();
    if text.is_empty() {
        Err(missing())
    } else {
        Ok(text)
    }
}

fn value_of(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .map(|ByteString(bytes)| bytes.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|data| data.get(key))
                .map(|text| text.clone().into_bytes())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(data: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())))
                    .collect(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn each_type_reads_its_keys_and_drops_a_trailing_newline() {
        let api = credentials(
            CredentialType::ApiToken,
            ServerType::Cloud,
            &secret(&[("email", "jane@example.com"), ("token", "t0k\n")]),
            "s",
        )
        .unwrap();
        assert_eq!(
            format!("{api:?}"),
            r#"CloudApiToken { email: "jane@example.com", token: "<redacted>" }"#
        );
        let dc = credentials(
            CredentialType::AccessToken,
            ServerType::DataCenter,
            &secret(&[("token", "t")]),
            "s",
        )
        .unwrap();
        assert!(matches!(dc, Credentials::DataCenterAccessToken { .. }));
    }

    #[test]
    fn a_missing_or_empty_key_is_named_with_the_keys_the_type_needs() {
        let error = credentials(
            CredentialType::OAuthConsumer,
            ServerType::Cloud,
            &secret(&[("clientId", "id"), ("clientSecret", "")]),
            "acme-oauth",
        )
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "Secret acme-oauth has no key clientSecret: OAuthConsumer credentials need the keys clientId, clientSecret"
        );
        assert_eq!(error.reason(), "SecretKeyMissing");
    }
}
