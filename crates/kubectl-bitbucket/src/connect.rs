//! `connect` (the "add integration" page) and `edit` (rename, rotate). The credential is checked
//! against Bitbucket with the operator's own client before anything is saved; then the Secret
//! and the integration are applied server-side (field manager `kubectl-bitbucket`), the Secret
//! owned by the integration so the two go together, and the command waits for the operator's
//! `Ready`.
//!
//! Secret values are never arguments (they would show in `ps` and shell history): they are
//! asked for without echo on a terminal or read from `--secret-file` (`-` for standard input).

use std::{collections::BTreeMap, fmt::Write as _, path::PathBuf, str::FromStr, time::Duration};

use clap::Args;
use k8s_openapi::{
    ByteString,
    api::core::v1::Secret,
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
};
use secrecy::{ExposeSecret, SecretString};

use super::{Outcome, show, sign_in, sync, terminal::Terminal};
use crate::{
    api::{
        ALLOWED_SERVERS_ANNOTATION, BitbucketIntegration, BitbucketIntegrationSpec, CLOUD_API_URL,
        CREDENTIAL_TYPE_LABEL, CredentialType, Credentials, EXPIRES_AT_ANNOTATION, SecretReference,
        Server, ServerType,
        conditions::{READY, STALLED},
        credential::{self, REFRESH_TOKEN_KEY, SecretCredential},
    },
    bitbucket::{self, AllowList, TransportConfig},
};

/// The field manager of everything the plugin applies, and the `managed-by` label it sets.
const MANAGER: &str = "kubectl-bitbucket";
const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The field manager of the Secret's owner reference alone.
const OWNER_MANAGER: &str = "kubectl-bitbucket-owner";

#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The integration's name.
    name: String,
    /// Bitbucket Cloud or Data Center [asked on a terminal; default Cloud].
    #[arg(long, value_parser = ["Cloud", "DataCenter"])]
    server_type: Option<String>,
    /// The server's URL: the Data Center base URL, or a Cloud API proxy (default
    /// https://api.bitbucket.org/2.0).
    #[arg(long)]
    url: Option<String>,
    /// The credential type [asked on a terminal]. OAuthUser is --sign-in.
    #[arg(long = "type", value_parser = ["ApiToken", "AccessToken", "OAuthConsumer", "OAuthUser", "Basic"])]
    credential_type: Option<String>,
    /// Sign in with Bitbucket (Cloud): authorize the OAuth consumer --client-id in a browser and
    /// save the signed-in user's refresh token (credential type OAuthUser).
    #[arg(long, conflicts_with = "credential_type")]
    sign_in: bool,
    /// --sign-in: the loopback port Bitbucket sends the browser back to (the consumer's
    /// callback URL must be http://127.0.0.1:PORT/callback); 0 picks a free one.
    #[arg(long, default_value_t = 0, requires = "sign_in")]
    callback_port: u16,
    /// --sign-in: print the address to open instead of opening a browser.
    #[arg(long, requires = "sign_in")]
    no_browser: bool,
    /// ApiToken: the Atlassian account's email.
    #[arg(long)]
    email: Option<String>,
    /// Basic: the Data Center username.
    #[arg(long)]
    username: Option<String>,
    /// OAuthConsumer, --sign-in: the consumer's key.
    #[arg(long)]
    client_id: Option<String>,
    /// Cloud: the workspace (required for AccessToken).
    #[arg(long)]
    workspace: Option<String>,
    /// A friendly name shown beside the integration.
    #[arg(long)]
    display_name: Option<String>,
    /// The Secret to keep the credential in (default NAME-bitbucket).
    #[arg(long)]
    secret_name: Option<String>,
    /// When the credential expires (RFC 3339, e.g. 2027-06-30T00:00:00Z), written on its Secret
    /// (scm.shippable.io/expires-at): the operator warns 30, 7 and 1 days before.
    #[arg(long, value_name = "TIME", value_parser = parse_expiry, conflicts_with = "expires_in_days")]
    expires_at: Option<String>,
    /// The credential's lifetime in days from now (what Bitbucket asked when it was made), in
    /// place of --expires-at.
    #[arg(long, value_name = "DAYS", value_parser = clap::value_parser!(u16).range(1..=3660))]
    expires_in_days: Option<u16>,
    #[command(flatten)]
    secret: SecretInput,
}

/// An RFC 3339 time, to the second, as the Secret's annotation keeps it.
fn parse_expiry(text: &str) -> Result<String, String> {
    let at = (text.parse::<jiff::Timestamp>())
        .map_err(|_| format!("{text:?} is not an RFC 3339 time such as 2027-06-30T00:00:00Z"))?;
    Ok(jiff::Timestamp::from_second(at.as_second())
        .map_err(|e| e.to_string())?
        .to_string())
}

impl ConnectArgs {
    /// When the credential expires, as the flags say (to the second).
    fn expiry(&self) -> Option<String> {
        let at = match (&self.expires_at, self.expires_in_days) {
            (Some(at), _) => return Some(at.clone()),
            (None, Some(days)) => {
                jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * i64::from(days))
            }
            (None, None) => return None,
        };
        jiff::Timestamp::from_second(at.as_second())
            .ok()
            .map(|at| at.to_string())
    }
}

#[derive(Debug, Args)]
pub struct EditArgs {
    /// The integration.
    name: String,
    /// A new friendly name.
    #[arg(long)]
    display_name: Option<String>,
    /// Rotate the credential: asks for the new token (or password, or client secret).
    #[arg(long)]
    token: bool,
    #[command(flatten)]
    secret: SecretInput,
}

/// Where a secret value comes from, and what to do before and after saving it.
#[derive(Debug, Args)]
struct SecretInput {
    /// Read the token (password, client secret) from this file; - for standard input.
    #[arg(long, value_name = "PATH")]
    secret_file: Option<PathBuf>,
    /// Save without checking the credential against Bitbucket first.
    #[arg(long)]
    skip_check: bool,
    /// How long to wait for the operator to report the integration Ready.
    #[arg(long, default_value = "2m", value_parser = super::duration)]
    timeout: Duration,
}

impl ConnectArgs {
    fn browser(&self) -> sign_in::Browser {
        sign_in::Browser {
            port: self.callback_port,
            open: !self.no_browser,
        }
    }
}

/// A merge patch by the plugin's field manager (for edits of objects others may have applied).
fn merge_params() -> PatchParams {
    PatchParams {
        field_manager: Some(MANAGER.into()),
        ..PatchParams::default()
    }
}

/// A value the user must give: a flag, else a prompt, else a usage error naming the flag.
fn needed(
    terminal: &Terminal,
    given: Option<String>,
    prompt: &str,
    default: Option<&str>,
    flag: &str,
) -> Result<String, Outcome> {
    match given {
        Some(value) => Ok(value),
        None if terminal.interactive => terminal
            .ask(prompt, default)
            .map_err(|e| Outcome::failed(format!("{e}\n"))),
        None => default.map(str::to_owned).ok_or_else(|| {
            Outcome::usage(format!(
                "{flag} is required when not on a terminal (see --help)\n"
            ))
        }),
    }
}

impl SecretInput {
    /// The secret value: from the file, or asked for without echo.
    fn read(&self, terminal: &Terminal, what: &str) -> Result<SecretString, Outcome> {
        let value = match self.secret_file.as_deref() {
            Some(path) if path.as_os_str() == "-" => std::io::read_to_string(std::io::stdin())
                .map_err(|e| Outcome::failed(format!("reading the {what} from stdin: {e}\n")))?,
            Some(path) => std::fs::read_to_string(path).map_err(|e| {
                Outcome::failed(format!("reading the {what} from {}: {e}\n", path.display()))
            })?,
            None if terminal.interactive => terminal
                .ask_secret(&capitalized(what))
                .map_err(|e| Outcome::failed(format!("{e}\n")))?
                .expose_secret()
                .to_owned(),
            None => {
                return Err(Outcome::usage(format!(
                    "no terminal to ask for the {what} on: pass --secret-file PATH, or \
                     --secret-file - to read it from standard input\n"
                )));
            }
        };
        let value = value.trim_end_matches(['\n', '\r']);
        if value.is_empty() {
            return Err(Outcome::usage(format!("the {what} is empty\n")));
        }
        Ok(value.to_owned().into())
    }
}

fn capitalized(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or(String::new(), |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

/// How a user names the secret value of each credential type.
fn secret_word(kind: CredentialType) -> &'static str {
    match kind {
        CredentialType::ApiToken => "API token",
        CredentialType::AccessToken => "access token",
        CredentialType::OAuthConsumer | CredentialType::OAuthUser => "client secret",
        CredentialType::Basic => "password or personal token",
    }
}

/// The servers the Secret consents to its credential going to: Bitbucket Cloud, the origin of
/// a Cloud proxy (its API and token endpoint), or the Data Center base URL.
fn consent(server: &Server) -> String {
    match (server.server_type, server.url.as_deref()) {
        (ServerType::Cloud, None | Some(CLOUD_API_URL)) => "cloud".to_owned(),
        (ServerType::Cloud, Some(url)) => {
            url::Url::parse(url).map_or(url.to_owned(), |u| u.origin().ascii_serialization())
        }
        (ServerType::DataCenter, url) => url.unwrap_or_default().to_owned(),
    }
}

pub async fn connect(
    client: &Client,
    namespace: &str,
    args: ConnectArgs,
) -> anyhow::Result<Outcome> {
    let terminal = Terminal::detect();
    let (integration, secret, value) = match plan(&terminal, &args) {
        Ok(plan) => plan,
        Err(outcome) => return Ok(outcome),
    };
    let integrations: Api<BitbucketIntegration> = Api::namespaced(client.clone(), namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    if let Err(outcome) = refuse_overwrite(&integrations, &secrets, &integration, &secret).await? {
        return Ok(outcome);
    }
    let secret = match complete_credential(&terminal, &args, &integration, secret, &value).await {
        Ok(secret) => secret,
        Err(outcome) => return Ok(outcome),
    };
    let created = apply(&integrations, &secrets, &integration, &secret).await?;
    own_secret(&secrets, &secret.name_any(), &created).await?;
    let started = std::time::Instant::now();
    let ready = wait_ready(&terminal, &integrations, &created, args.secret.timeout).await?;
    Ok(match ready {
        Ok(ready) => Outcome::ok(ready_report(&terminal, ready, &secret, started.elapsed())),
        Err(outcome) => outcome,
    })
}

/// `Err` when connecting would overwrite what is there: an integration of that name, or a
/// Secret of that name the plugin did not write.
async fn refuse_overwrite(
    integrations: &Api<BitbucketIntegration>,
    secrets: &Api<Secret>,
    integration: &BitbucketIntegration,
    secret: &Secret,
) -> anyhow::Result<Result<(), Outcome>> {
    let name = integration.name_any();
    if integrations.get_opt(&name).await?.is_some() {
        return Ok(Err(Outcome::failed(format!(
            "BitbucketIntegration {name} already exists; change it with kubectl bitbucket edit \
             {name}, or delete it first\n"
        ))));
    }
    let secret_name = secret.name_any();
    if let Some(existing) = secrets.get_opt(&secret_name).await?
        && existing.labels().get(MANAGED_BY).map(String::as_str) != Some(MANAGER)
    {
        return Ok(Err(Outcome::failed(format!(
            "Secret {secret_name} exists and was not written by kubectl bitbucket; choose \
             another with --secret-name\n"
        ))));
    }
    Ok(Ok(()))
}

/// `secret` with `value` and, for a signed-in user, the refresh token from signing in; checked
/// against Bitbucket unless `--skip-check`. `Err` is the outcome to print, nothing saved.
async fn complete_credential(
    terminal: &Terminal,
    args: &ConnectArgs,
    integration: &BitbucketIntegration,
    mut secret: Secret,
    value: &SecretString,
) -> Result<Secret, Outcome> {
    if integration.spec.credentials.credential_type == CredentialType::OAuthUser {
        let refresh_token =
            sign_in::sign_in(terminal, integration, &secret, value, &args.browser()).await?;
        put(&mut secret, REFRESH_TOKEN_KEY, &refresh_token);
    }
    let mut secret = with_value(secret, integration, value);
    // The check's grant rotated the refresh token: keep the newest.
    if !args.secret.skip_check
        && let Some(newest) = check(terminal, integration, &secret).await?
    {
        put(&mut secret, REFRESH_TOKEN_KEY, &newest);
    }
    Ok(secret)
}

/// Applies the Secret first, so the operator never sees the integration without it; then the
/// integration, which it returns as created.
async fn apply(
    integrations: &Api<BitbucketIntegration>,
    secrets: &Api<Secret>,
    integration: &BitbucketIntegration,
    secret: &Secret,
) -> anyhow::Result<BitbucketIntegration> {
    let apply = PatchParams::apply(MANAGER).force();
    secrets
        .patch(&secret.name_any(), &apply, &Patch::Apply(secret))
        .await?;
    Ok(integrations
        .patch(&integration.name_any(), &apply, &Patch::Apply(integration))
        .await?)
}

/// Makes the Secret `secret_name` owned by `created`, so the two are deleted together.
async fn own_secret(
    secrets: &Api<Secret>,
    secret_name: &str,
    created: &BitbucketIntegration,
) -> anyhow::Result<()> {
    // Only the owner reference, under a field manager of its own: applying the whole Secret
    // again could put back a refresh token the operator has rotated meanwhile.
    let owned = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret_name,
            "ownerReferences": [OwnerReference {
                api_version: BitbucketIntegration::api_version(&()).into_owned(),
                kind: BitbucketIntegration::kind(&()).into_owned(),
                name: created.name_any(),
                uid: created.uid().unwrap_or_default(),
                ..OwnerReference::default()
            }],
        },
    });
    secrets
        .patch(
            secret_name,
            &PatchParams::apply(OWNER_MANAGER).force(),
            &Patch::Apply(&owned),
        )
        .await?;
    Ok(())
}

/// What `connect` prints once the integration is Ready, `waited` after it was saved.
fn ready_report(
    terminal: &Terminal,
    integration: BitbucketIntegration,
    secret: &Secret,
    waited: Duration,
) -> String {
    let mut text = format!(
        "BitbucketIntegration {} is {} ({:.1}s)\n",
        integration.name_any(),
        terminal.good("Ready"),
        waited.as_secs_f64()
    );
    let status = integration.status.unwrap_or_default();
    if let Some(account) = &status.account {
        let _ = writeln!(text, "  account: {}", show::account_of(account));
    }
    let scopes = if status.scopes.is_empty() {
        "none reported".to_owned()
    } else {
        status.scopes.join(", ")
    };
    let _ = writeln!(text, "  scopes:  {scopes}");
    let _ = writeln!(
        text,
        "  secret:  {} (deleted with the integration)",
        secret.name_any()
    );
    text
}

/// The integration and Secret (without the secret value yet) that `args` describe, and the
/// value: from the flags, asking for what is missing on a terminal.
fn plan(
    terminal: &Terminal,
    args: &ConnectArgs,
) -> Result<(BitbucketIntegration, Secret, SecretString), Outcome> {
    let server = choose_server(terminal, args)?;
    let kind = choose_credential_type(terminal, args, server.server_type)?;
    let identity = ask_identity(terminal, args, kind)?;
    let workspace = ask_workspace(terminal, args, server.server_type, kind)?;
    let display_name = ask_display_name(terminal, args)?;
    let value = args.secret.read(terminal, secret_word(kind))?;

    let secret_name = args
        .secret_name
        .clone()
        .unwrap_or_else(|| format!("{}-bitbucket", args.name));
    let mut secret = credential_secret(&secret_name, kind, &server, identity);
    if let Some(at) = args.expiry() {
        (secret.metadata.annotations.get_or_insert_default())
            .insert(EXPIRES_AT_ANNOTATION.into(), at);
    }
    let integration = BitbucketIntegration::new(
        &args.name,
        BitbucketIntegrationSpec {
            display_name,
            server,
            credentials: Credentials {
                credential_type: kind,
                secret_ref: SecretReference { name: secret_name },
            },
            workspace,
            validation_interval: "30m".into(),
            webhook: None,
            request_budget: None,
        },
    );
    Ok((integration, secret, value))
}

/// The server: `--server-type` (asked on a terminal, else Cloud) and its URL (`--url`, asked
/// for Data Center; Bitbucket Cloud's API by default).
fn choose_server(terminal: &Terminal, args: &ConnectArgs) -> Result<Server, Outcome> {
    let server_type = match args.server_type.as_deref() {
        Some("DataCenter") => ServerType::DataCenter,
        Some(_) => ServerType::Cloud,
        None if terminal.interactive => {
            let items = ["Bitbucket Cloud", "Bitbucket Data Center"].map(String::from);
            match terminal.choose("Server", &items) {
                Ok(0) => ServerType::Cloud,
                Ok(_) => ServerType::DataCenter,
                Err(e) => return Err(Outcome::failed(format!("{e}\n"))),
            }
        }
        None => ServerType::Cloud,
    };
    let url = match server_type {
        ServerType::Cloud => args.url.clone(),
        ServerType::DataCenter => Some(needed(
            terminal,
            args.url.clone(),
            "Data Center URL (https://bitbucket.example.com)",
            None,
            "--url",
        )?),
    };
    Ok(Server {
        server_type,
        url: Some(url.unwrap_or_else(|| CLOUD_API_URL.to_owned())),
        ca_bundle_secret_ref: None,
    })
}

/// The credential type: OAuthUser for `--sign-in`, else `--type` (asked on a terminal), one of
/// those `server_type` takes.
fn choose_credential_type(
    terminal: &Terminal,
    args: &ConnectArgs,
    server_type: ServerType,
) -> Result<CredentialType, Outcome> {
    let allowed = server_type.credential_types();
    match args.credential_type.as_deref() {
        _ if args.sign_in => {
            if server_type != ServerType::Cloud {
                return Err(Outcome::usage(
                    "--sign-in is for Bitbucket Cloud; Data Center takes an access token or a \
                     password\n"
                        .into(),
                ));
            }
            Ok(CredentialType::OAuthUser)
        }
        Some(kind) => {
            let kind: CredentialType = serde_json::from_value(kind.into())
                .map_err(|e| Outcome::usage(format!("--type: {e}\n")))?;
            if !allowed.contains(&kind) {
                return Err(Outcome::usage(format!(
                    "--type {} does not work with Bitbucket {server_type:?}: use one of {}\n",
                    kind.name(),
                    names(allowed)
                )));
            }
            Ok(kind)
        }
        None if terminal.interactive => {
            let items: Vec<String> = allowed.iter().map(|k| describe(*k).to_owned()).collect();
            let chosen = terminal
                .choose("Credential", &items)
                .map_err(|e| Outcome::failed(format!("{e}\n")))?;
            Ok(allowed[chosen])
        }
        None => Err(Outcome::usage(format!(
            "--type is required when not on a terminal: one of {}\n",
            names(allowed)
        ))),
    }
}

/// The value that is not secret (email, consumer key, username), under its key, if credentials
/// of `kind` have one.
fn ask_identity(
    terminal: &Terminal,
    args: &ConnectArgs,
    kind: CredentialType,
) -> Result<Option<(&'static str, String)>, Outcome> {
    let Some(key) = kind.secret_keys().identity else {
        return Ok(None);
    };
    let (given, prompt, flag) = match kind {
        CredentialType::ApiToken => (&args.email, "Atlassian account email", "--email"),
        CredentialType::OAuthConsumer | CredentialType::OAuthUser => {
            (&args.client_id, "OAuth consumer key", "--client-id")
        }
        CredentialType::AccessToken | CredentialType::Basic => {
            (&args.username, "Username", "--username")
        }
    };
    let value = needed(terminal, given.clone(), prompt, None, flag)?;
    Ok(Some((key, value)))
}

/// `--workspace`: asked for when a Cloud access token needs one.
fn ask_workspace(
    terminal: &Terminal,
    args: &ConnectArgs,
    server_type: ServerType,
    kind: CredentialType,
) -> Result<Option<String>, Outcome> {
    Ok(match (server_type, kind, &args.workspace) {
        (ServerType::Cloud, CredentialType::AccessToken, None) => Some(needed(
            terminal,
            None,
            "Workspace the access token belongs to",
            None,
            "--workspace",
        )?),
        _ => args.workspace.clone(),
    })
}

/// `--display-name`, asked for on a terminal; none when it would be the integration's name.
fn ask_display_name(terminal: &Terminal, args: &ConnectArgs) -> Result<Option<String>, Outcome> {
    Ok(match &args.display_name {
        Some(display) => Some(display.clone()),
        None if terminal.interactive => Some(needed(
            terminal,
            None,
            "Friendly name",
            Some(&args.name),
            "",
        )?)
        .filter(|d| d != &args.name),
        None => None,
    })
}

/// The Secret `secret_name` for credentials of `kind` on `server`, holding `identity` (the
/// secret value goes in later), labelled as the plugin's and consenting to `server`.
fn credential_secret(
    secret_name: &str,
    kind: CredentialType,
    server: &Server,
    identity: Option<(&str, String)>,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name.to_owned()),
            labels: Some(BTreeMap::from([
                (MANAGED_BY.into(), MANAGER.into()),
                (CREDENTIAL_TYPE_LABEL.into(), kind.name().to_owned()),
            ])),
            annotations: Some(BTreeMap::from([(
                ALLOWED_SERVERS_ANNOTATION.into(),
                consent(server),
            )])),
            ..ObjectMeta::default()
        },
        string_data: None,
        data: Some(
            identity
                .into_iter()
                .map(|(k, v)| (k.to_owned(), ByteString(v.into_bytes())))
                .collect(),
        ),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

/// `secret` with `value` under the key the integration's credential type keeps it in.
fn with_value(
    mut secret: Secret,
    integration: &BitbucketIntegration,
    value: &SecretString,
) -> Secret {
    let key = integration
        .spec
        .credentials
        .credential_type
        .secret_keys()
        .secret;
    put(&mut secret, key, value);
    secret
}

fn put(secret: &mut Secret, key: &str, value: &SecretString) {
    secret.data.get_or_insert_default().insert(
        key.to_owned(),
        ByteString(value.expose_secret().as_bytes().to_vec()),
    );
}

fn names(kinds: &[CredentialType]) -> String {
    kinds
        .iter()
        .map(|k| k.name())
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe(kind: CredentialType) -> &'static str {
    match kind {
        CredentialType::ApiToken => "ApiToken: an Atlassian API token with its account's email",
        CredentialType::AccessToken => "AccessToken: a workspace, project or repository token",
        CredentialType::OAuthConsumer => "OAuthConsumer: an OAuth consumer's key and secret",
        CredentialType::OAuthUser => {
            "OAuthUser: sign in with Bitbucket through an OAuth consumer (opens a browser)"
        }
        CredentialType::Basic => "Basic: a username with a password or personal token",
    }
}

/// Asks Bitbucket who the credential is, with the operator's own client, sending it only to the
/// integration's server. `Err` is the outcome to print: what Bitbucket said, nothing saved.
/// `Ok(Some(token))`: a signed-in user's refresh token, rotated by the check's own grant.
async fn check(
    terminal: &Terminal,
    integration: &BitbucketIntegration,
    secret: &Secret,
) -> Result<Option<SecretString>, Outcome> {
    let refused = |message: String| {
        Outcome::failed(format!(
            "{}: {message}\nNothing was saved (--skip-check saves without this check).\n",
            terminal.bad("The credential does not work")
        ))
    };
    let spec = &integration.spec;
    let server = credential::server(&spec.server).map_err(refused)?;
    let credentials =
        SecretCredential::read(spec.credentials.credential_type, secret, &secret.name_any())
            .map_err(|e| refused(e.to_string()))?
            .for_server(spec.server.server_type);
    let transport = TransportConfig {
        allowed: AllowList::from_str(&consent(&spec.server)).map_err(refused)?,
        ..TransportConfig::default()
    };
    let client = bitbucket::Client::new(server, credentials, transport)
        .map_err(|e| refused(e.to_string()))?;
    let mut progress = terminal.progress("Checking the credential");
    progress.show("asking Bitbucket who it is");
    let identity = client.whoami(spec.workspace.as_deref()).await;
    progress.done();
    identity.map_err(|e| refused(e.to_string()))?;
    Ok(client.refresh_token().await)
}

/// Waits until the operator reports `created` (at its generation) Ready, showing its progress.
/// `Ok(Err(outcome))` when it is Stalled or the time runs out.
async fn wait_ready(
    terminal: &Terminal,
    integrations: &Api<BitbucketIntegration>,
    created: &BitbucketIntegration,
    timeout: Duration,
) -> anyhow::Result<Result<BitbucketIntegration, Outcome>> {
    let name = created.name_any();
    let generation = created.metadata.generation;
    let mut progress = terminal.progress(&format!("Waiting for {name}"));
    let wait = async {
        loop {
            let now = integrations.get(&name).await?;
            let status = now.status.clone().unwrap_or_default();
            let current = status.observed_generation >= generation;
            let condition = |type_: &str| {
                status
                    .conditions
                    .iter()
                    .find(|c| c.type_ == type_ && c.status == "True")
                    .cloned()
            };
            if current && condition(READY).is_some() {
                return anyhow::Ok(Ok(now));
            }
            if current && let Some(stalled) = condition(STALLED) {
                return Ok(Err(Outcome::failed(format!(
                    "BitbucketIntegration {name} is {}: {} ({})\n",
                    terminal.bad("Stalled"),
                    stalled.message,
                    stalled.reason
                ))));
            }
            let ready = status.conditions.iter().find(|c| c.type_ == READY);
            progress.show(&ready.map_or("waiting for the operator".to_owned(), |r| {
                format!("{} {}", r.reason, r.message)
            }));
            tokio::time::sleep(sync::POLL).await;
        }
    };
    let waited = tokio::time::timeout(timeout, wait).await;
    progress.done();
    match waited {
        Ok(result) => result,
        Err(_) => Ok(Err(Outcome::failed(format!(
            "BitbucketIntegration {name} was saved but is not Ready after {}s (is the operator \
             running? kubectl bitbucket get {name} shows why)\n",
            timeout.as_secs()
        )))),
    }
}

pub async fn edit(client: &Client, namespace: &str, args: EditArgs) -> anyhow::Result<Outcome> {
    let terminal = Terminal::detect();
    let name = &args.name;
    if args.display_name.is_none() && !args.token {
        return Ok(Outcome::usage(
            "nothing to change: pass --display-name NAME and/or --token\n".into(),
        ));
    }
    let integrations: Api<BitbucketIntegration> = Api::namespaced(client.clone(), namespace);
    let integration = integrations.get(name).await?;
    let mut text = String::new();
    if args.token {
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let secret_name = &integration.spec.credentials.secret_ref.name;
        let secret = secrets.get(secret_name).await?;
        let kind = integration.spec.credentials.credential_type;
        if kind == CredentialType::OAuthUser {
            return Ok(Outcome::usage(format!(
                "an OAuthUser credential is renewed by signing in again: kubectl bitbucket \
                 delete {name}, then kubectl bitbucket connect {name} --sign-in\n"
            )));
        }
        let word = secret_word(kind);
        let value = match args.secret.read(&terminal, &format!("new {word}")) {
            Ok(value) => value,
            Err(outcome) => return Ok(outcome),
        };
        let rotated = with_value(secret, &integration, &value);
        if !args.secret.skip_check
            && let Err(refused) = check(&terminal, &integration, &rotated).await
        {
            return Ok(refused);
        }
        let key = kind.secret_keys().secret;
        let patch = serde_json::json!({"data": {key: ByteString(value.expose_secret().as_bytes().to_vec())}});
        secrets
            .patch(secret_name, &merge_params(), &Patch::Merge(&patch))
            .await?;
        let _ = writeln!(text, "The {word} in Secret {secret_name} was replaced");
    }
    if let Some(display_name) = &args.display_name {
        let patch = serde_json::json!({"spec": {"displayName": display_name}});
        let edited = integrations
            .patch(name, &merge_params(), &Patch::Merge(&patch))
            .await?;
        let _ = writeln!(
            text,
            "BitbucketIntegration {name} is now called {display_name:?}"
        );
        if !args.token {
            return Ok(
                match wait_ready(&terminal, &integrations, &edited, args.secret.timeout).await? {
                    Ok(_) => Outcome::ok(text),
                    Err(outcome) => outcome,
                },
            );
        }
    }
    // A rotated credential: ask for validation now and wait for its answer.
    let validated =
        sync::sync::<BitbucketIntegration>(client, namespace, name, args.secret.timeout).await?;
    Ok(Outcome {
        text: text + &validated.text,
        code: validated.code,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_consent_to_the_server_they_are_connected_to() {
        let server = |server_type, url: &str| Server {
            server_type,
            url: Some(url.to_owned()),
            ca_bundle_secret_ref: None,
        };
        assert_eq!(consent(&server(ServerType::Cloud, CLOUD_API_URL)), "cloud");
        assert_eq!(
            consent(&server(ServerType::Cloud, "http://127.0.0.1:8080/2.0")),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            consent(&server(
                ServerType::DataCenter,
                "https://git.example.com/bb"
            )),
            "https://git.example.com/bb"
        );
    }
}
