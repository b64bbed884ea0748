//! From a BitbucketIntegration and its Secrets to a ready [`bitbucket::Client`]: reads the
//! credential Secret (and the CA bundle Secret) from the API server, checks the keys the
//! credential type needs, and reuses the client — with its connection pool and OAuth token —
//! until the spec or a Secret changes (the client is kept in the integration's
//! [`Memory`](super::memory::Memory)). For a signed-in OAuth user, the client saves each refresh
//! token Bitbucket rotates back to the Secret ([`save_rotated`]); that write of the operator's
//! own does not count as a change. Shared by both controllers. Does API-server I/O.
//!
//! The Secrets' metadata watch (which wakes an integration when its Secret changes) also keeps
//! the version of each Secret in use ([`SecretVersions`]): while those are the versions the
//! remembered client was built from, a reconcile reuses it without reading the Secret again.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use k8s_openapi::{ByteString, api::core::v1::Secret};
use kube::{Api, ResourceExt, core::PartialObjectMeta};
use url::Url;

use super::{
    error::{Class, Reason},
    lock,
    memory::Memory,
};
use crate::{
    api::{
        ALLOWED_SERVERS_ANNOTATION, BitbucketIntegration, CREDENTIAL_TYPE_LABEL, CredentialType,
        conditions::reasons,
        credential::{self, SecretCredential, SecretError},
    },
    bitbucket::{self, AllowList, TransportConfig, reach},
};

/// Why no client could be made: a problem only the user can fix.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("Secret {0} not found")]
    SecretNotFound(String),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(
        "Secret {secret} has no key {key}: server.caBundleSecretRef names it for the CA bundle"
    )]
    CaBundleMissing { secret: String, key: String },
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
            Self::Secret(_) | Self::CaBundleMissing { .. } => reasons::SECRET_KEY_MISSING,
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

/// The client remembered for `integration`, when the Secrets' watch shows the versions it was
/// built from (no read: `None` when that is not known).
pub fn current(memory: &Memory, integration: &BitbucketIntegration) -> Option<Resolved> {
    let uid = integration.uid().unwrap_or_default();
    let cached = memory.integration(&uid, |m| m.client.clone())?;
    (memory.secret_versions)
        .unchanged(integration, &cached)
        .then_some(cached)
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
    /// When the credential expires, as its Secret declares.
    pub expiry: super::integration::expiry::Expiry,
}

/// The client for `integration`, reading its Secrets now (so rotation is seen at once) and
/// reusing the client remembered for it while neither the spec nor a Secret changed.
pub async fn resolve(
    kube: &kube::Client,
    memory: &Memory,
    integration: &BitbucketIntegration,
    mut transport: TransportConfig,
) -> Result<Resolved, ResolveError> {
    let secrets: Api<Secret> =
        Api::namespaced(kube.clone(), &integration.namespace().unwrap_or_default());
    // Every client of the integration counts against its one budget, kept across rebuilds.
    transport.budget = memory.budgets.for_clients(integration);
    if let Some(current) = current(memory, integration) {
        return Ok(current);
    }
    let uid = integration.uid().unwrap_or_default();
    let cached = memory.integration(&uid, |m| m.client.clone());
    let inputs = Inputs::read(&secrets, integration).await?;
    let (fingerprint, secret_version) = inputs.fingerprint(integration, cached.as_ref());
    if let Some(cached) = cached.as_ref().filter(|c| c.fingerprint == fingerprint) {
        return Ok(cached.clone());
    }
    tracing::debug!(
        integration = %integration.name_any(),
        was = cached.as_ref().map(|c| c.fingerprint.as_str()),
        now = %fingerprint,
        "building the Bitbucket client"
    );
    let resolved = build(
        secrets,
        integration,
        inputs,
        transport,
        fingerprint,
        secret_version,
    )?;
    memory.integration(&uid, |m| m.client = Some(resolved.clone()));
    Ok(resolved)
}

/// What a client is built from: the credential Secret and the CA bundle, read now.
struct Inputs {
    secret: Secret,
    /// The PEM bundle and the resourceVersion of the Secret holding it.
    ca: Option<(Vec<u8>, String)>,
}

impl Inputs {
    async fn read(
        secrets: &Api<Secret>,
        integration: &BitbucketIntegration,
    ) -> Result<Self, ResolveError> {
        let spec = &integration.spec;
        let secret = read(secrets, &spec.credentials.secret_ref.name).await?;
        let ca = match &spec.server.ca_bundle_secret_ref {
            Some(reference) => {
                let ca_secret = read(secrets, &reference.name).await?;
                let pem = credential::value_of(&ca_secret, &reference.key)
                    .filter(|pem| !pem.is_empty())
                    .ok_or_else(|| ResolveError::CaBundleMissing {
                        secret: reference.name.clone(),
                        key: reference.key.clone(),
                    })?;
                Some((pem, ca_secret.resource_version().unwrap_or_default()))
            }
            None => None,
        };
        Ok(Self { secret, ca })
    }

    /// The fingerprint of these inputs and the credential Secret's version it counts: a
    /// version the cached client wrote itself (a rotated refresh token) counts as the version
    /// it was built from, since the credential is the same.
    fn fingerprint(
        &self,
        integration: &BitbucketIntegration,
        cached: Option<&Resolved>,
    ) -> (String, String) {
        let secret_version = self.secret.resource_version().unwrap_or_default();
        let ca_version = self.ca.as_ref().map(|(_, rv)| rv.as_str());
        fingerprint(integration, secret_version, ca_version, cached)
    }
}

/// The fingerprint of a client built for `integration` from the credential Secret at
/// `secret_version` and the CA bundle Secret at `ca_version`, and the credential Secret's
/// version it counts: a version the cached client wrote itself (a rotated refresh token)
/// counts as the version it was built from, since the credential is the same.
fn fingerprint(
    integration: &BitbucketIntegration,
    mut secret_version: String,
    ca_version: Option<&str>,
    cached: Option<&Resolved>,
) -> (String, String) {
    if let Some(cached) = cached
        && lock(&cached.written).as_deref() == Some(secret_version.as_str())
    {
        secret_version.clone_from(&cached.secret_version);
    }
    let fingerprint = format!(
        "{}/{}/{}",
        integration.metadata.generation.unwrap_or_default(),
        secret_version,
        ca_version.unwrap_or("-")
    );
    (fingerprint, secret_version)
}

/// The resourceVersion of each Secret, as the Secrets' metadata watch last showed it. Kept as
/// hashes (of namespace and name, and of the version): 16 bytes a Secret, however many Secrets
/// the cluster holds. A Secret deleted, and every Secret while the watch lists again, is
/// unknown: its readers read it.
#[derive(Default)]
pub struct SecretVersions(Mutex<HashMap<u64, u64>>);

/// The key or version hash of [`SecretVersions`] (the same text always hashes the same).
fn hashed(parts: &[&str]) -> u64 {
    use std::hash::{BuildHasher as _, DefaultHasher};
    std::hash::BuildHasherDefault::<DefaultHasher>::default().hash_one(parts)
}

/// The key of `secret` in [`SecretVersions`].
fn key_of(secret: &PartialObjectMeta<Secret>) -> u64 {
    hashed(&[&secret.namespace().unwrap_or_default(), &secret.name_any()])
}

impl SecretVersions {
    /// The watch shows `secret`.
    pub fn seen(&self, secret: &PartialObjectMeta<Secret>) {
        let key = key_of(secret);
        let version = hashed(&[&secret.resource_version().unwrap_or_default()]);
        lock(&self.0).insert(key, version);
    }

    /// The watch shows `secret` deleted.
    pub fn gone(&self, secret: &PartialObjectMeta<Secret>) {
        lock(&self.0).remove(&key_of(secret));
    }

    /// The watch lists the Secrets again: what it showed before may have changed since.
    pub fn relisting(&self) {
        lock(&self.0).clear();
    }

    /// Whether the watch shows Secret `name` of `namespace` at `version`.
    fn at(&self, namespace: &str, name: &str, version: &str) -> bool {
        let key = hashed(&[namespace, name]);
        lock(&self.0).get(&key) == Some(&hashed(&[version]))
    }

    /// Whether the Secrets `integration` uses are at the versions `cached` was built from, as
    /// far as the watch shows them: then the client stands without reading them.
    fn unchanged(&self, integration: &BitbucketIntegration, cached: &Resolved) -> bool {
        let namespace = integration.namespace().unwrap_or_default();
        let spec = &integration.spec;
        // The fingerprint names what it was built from: generation/secret version/CA version.
        let mut parts = cached.fingerprint.splitn(3, '/');
        let (Some(generation), Some(_), Some(ca)) = (parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let generation_now = integration.metadata.generation.unwrap_or_default();
        let secret = &spec.credentials.secret_ref.name;
        // The version it was built from, or its own later write of a rotated refresh token.
        let written = lock(&cached.written).clone();
        let secret_unchanged = self.at(&namespace, secret, &cached.secret_version)
            || written.is_some_and(|w| self.at(&namespace, secret, &w));
        let ca_unchanged = match &spec.server.ca_bundle_secret_ref {
            Some(reference) => self.at(&namespace, &reference.name, ca),
            None => ca == "-",
        };
        generation == generation_now.to_string() && secret_unchanged && ca_unchanged
    }
}

/// A new client from `inputs`: the credential and server the spec names, sent only where the
/// operator's allow-list and the Secret's consent both permit; a signed-in user's client saves
/// the refresh tokens Bitbucket rotates.
fn build(
    secrets: Api<Secret>,
    integration: &BitbucketIntegration,
    Inputs { secret, ca }: Inputs,
    transport: TransportConfig,
    fingerprint: String,
    secret_version: String,
) -> Result<Resolved, ResolveError> {
    let spec = &integration.spec;
    let secret_name = &spec.credentials.secret_ref.name;
    let credential =
        SecretCredential::read(spec.credentials.credential_type, &secret, secret_name)?;
    writable(&secret, secret_name, credential.kind)?;
    let refresh_token = credential.refresh_token.clone();
    let server = credential::server(&spec.server).map_err(ResolveError::InvalidSpec)?;
    let consent = consent(&secret, secret_name)?;
    let operator = transport.allowed.clone();
    let internal_by_consent = transport.internal_by_consent;
    let transport = TransportConfig {
        ca_bundle_pem: ca.map(|(pem, _)| pem),
        allowed: consent
            .as_ref()
            .map_or(operator.clone(), |c| operator.and(c)),
        ..transport
    };
    let refused = Arc::clone(&transport.refused);
    let credentials = credential.for_server(spec.server.server_type);
    let new_client = |transport| {
        bitbucket::Client::new(server.clone(), credentials.clone(), transport)
            .map_err(|e| ResolveError::InvalidSpec(e.to_string()))
    };
    let mut client = new_client(transport.clone())?;
    let rule = Rule {
        operator: &operator,
        consent: consent.as_ref(),
        internal_by_consent,
        refused: &refused,
        secret_name,
    };
    let mut consent_only = false;
    for (what, url) in client.endpoints() {
        consent_only |= rule.check(what, &url)?;
    }
    if consent_only && !internal_by_consent {
        // A consented name must not resolve to the operator's own pod either.
        client = new_client(TransportConfig {
            refused: Arc::new(refused.and_loopback()),
            ..transport
        })?;
    }
    let expiry = super::integration::expiry::Expiry::of(
        secret
            .annotations()
            .get(crate::api::EXPIRES_AT_ANNOTATION)
            .map(String::as_str),
    );
    let written = Arc::new(Mutex::new(None));
    if let Some(refresh_token) = refresh_token {
        let saver = save_rotated(
            secrets,
            secret_name.clone(),
            secret_version.clone(),
            refresh_token,
            Arc::clone(&written),
        );
        client = client.on_rotation(saver);
    }
    Ok(Resolved {
        client: Arc::new(client),
        fingerprint,
        secret_version,
        written,
        expiry,
    })
}

/// A signed-in user's Secret must carry the label that lets the operator write the refresh
/// tokens Bitbucket rotates (admission refuses the write otherwise, and the user is locked out).
fn writable(secret: &Secret, secret_name: &str, kind: CredentialType) -> Result<(), ResolveError> {
    let labelled = secret
        .labels()
        .get(CREDENTIAL_TYPE_LABEL)
        .map(String::as_str);
    if kind == CredentialType::OAuthUser && labelled != Some(kind.name()) {
        return Err(ResolveError::SecretNotWritable(secret_name.to_owned()));
    }
    Ok(())
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
                let stored = credential::value_of(&secret, credential::REFRESH_TOKEN_KEY)
                    .unwrap_or_default();
                if stored != saved.1.expose_secret().as_bytes() {
                    return Ok(()); // replaced by someone else: theirs wins
                }
                let read_at = secret.resource_version().unwrap_or_default();
                let patch = serde_json::json!({
                    "metadata": {"resourceVersion": read_at},
                    "data": {credential::REFRESH_TOKEN_KEY: ByteString(rotated.expose_secret().as_bytes().to_vec())},
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
                            *lock(&written) = Some(now.clone());
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

/// Where the credential of one Secret may go: the operator's allow-list, the Secret's consent
/// and the refused networks.
struct Rule<'a> {
    operator: &'a AllowList,
    consent: Option<&'a AllowList>,
    internal_by_consent: bool,
    refused: &'a bitbucket::RefusedNetworks,
    secret_name: &'a str,
}

impl Rule<'_> {
    /// Refuses, before anything is sent, an endpoint that neither the operator nor the Secret
    /// allows, a loopback or cluster-internal one that only the Secret allows, or one that names
    /// a refused address; the message names the rule. `Ok(true)`: only the Secret's consent
    /// allows it.
    fn check(&self, what: &str, url: &Url) -> Result<bool, ResolveError> {
        let Rule {
            operator,
            consent,
            internal_by_consent,
            refused,
            secret_name,
        } = self;
        let shown = reach::without_query(url);
        let by_operator = operator.permits(url);
        if !by_operator && !consent.is_some_and(|c| c.permits(url)) {
            let secret_says = match consent {
                Some(_) => format!(
                    "Secret {secret_name}'s annotation {ALLOWED_SERVERS_ANNOTATION} does not name it"
                ),
                None => {
                    format!("Secret {secret_name} has no annotation {ALLOWED_SERVERS_ANNOTATION}")
                }
            };
            return Err(ResolveError::ServerNotAllowed(format!(
                "{what} {shown} is not allowed for the credential in Secret {secret_name}: it is \
                 not among the operator's allowed servers ({operator}) and {secret_says}"
            )));
        }
        if let Some(why) = reach::internal(url).filter(|_| !by_operator && !internal_by_consent) {
            return Err(ResolveError::ServerNotAllowed(format!(
                "{what} {shown} is {why}: only the operator's allowed servers \
                 (--allowed-servers, now {operator}) may name one, not Secret {secret_name}'s \
                 annotation {ALLOWED_SERVERS_ANNOTATION} alone"
            )));
        }
        match reach::literal_refused(url, refused) {
            Some(refusal) => Err(ResolveError::ServerNotAllowed(
                bitbucket::Error::from(refusal).to_string(),
            )),
            None => Ok(!by_operator),
        }
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

#[cfg(test)]
mod tests {
    use kube::{api::ObjectMeta, core::PartialObjectMetaExt as _};

    use super::*;
    use crate::api::BitbucketIntegrationSpec;

    fn integration() -> BitbucketIntegration {
        let yaml = "credentials: {type: ApiToken, secretRef: {name: creds}}";
        let spec: BitbucketIntegrationSpec = serde_saphyr::from_str(yaml).unwrap();
        let mut integration = BitbucketIntegration::new("acme", spec);
        integration.metadata.namespace = Some("ns".into());
        integration.metadata.generation = Some(1);
        integration
    }

    /// A client remembered as built from the credential Secret at `version`.
    fn built_from(integration: &BitbucketIntegration, version: &str) -> Resolved {
        let server = bitbucket::Server::Cloud {
            api_url: Url::parse("https://api.bitbucket.org/2.0").unwrap(),
        };
        let credentials = bitbucket::Credentials::CloudApiToken {
            email: "jdoe@example.com".into(),
            token: "FAKE".into(),
        };
        let client = bitbucket::Client::new(server, credentials, TransportConfig::default());
        Resolved {
            client: Arc::new(client.unwrap()),
            fingerprint: fingerprint(integration, version.into(), None, None).0,
            secret_version: version.into(),
            written: Arc::default(),
            expiry: super::super::integration::expiry::Expiry::Unknown,
        }
    }

    fn secret(name: &str, version: &str) -> PartialObjectMeta<Secret> {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            resource_version: Some(version.into()),
            ..ObjectMeta::default()
        }
        .into_response_partial()
    }

    #[test]
    fn the_secrets_watch_vouches_for_a_client_until_its_secret_changes_goes_or_is_listed_again() {
        let (integration, versions) = (integration(), SecretVersions::default());
        let cached = built_from(&integration, "5");
        let unchanged = || versions.unchanged(&integration, &cached);
        assert!(!unchanged(), "not seen yet: read");
        versions.seen(&secret("creds", "5"));
        assert!(unchanged(), "the version it was built from");
        versions.seen(&secret("other", "9"));
        assert!(unchanged(), "another Secret changed");
        versions.seen(&secret("creds", "6"));
        assert!(!unchanged(), "rotated: read");
        versions.seen(&secret("creds", "5"));
        versions.gone(&secret("creds", "5"));
        assert!(!unchanged(), "deleted: read (and find it missing)");
        versions.seen(&secret("creds", "5"));
        versions.relisting();
        assert!(!unchanged(), "the watch lists again: read");
        // The operator's own write of a rotated refresh token is the same credential.
        *lock(&cached.written) = Some("7".into());
        versions.seen(&secret("creds", "7"));
        assert!(unchanged(), "its own write");
        let mut edited = integration.clone();
        edited.metadata.generation = Some(2);
        assert!(!versions.unchanged(&edited, &cached), "a new spec: read");
    }
}
