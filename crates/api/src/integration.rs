//! `BitbucketIntegration`: a Bitbucket credential (held in a Secret) that the operator proves
//! works, showing who it authenticates as. Types and admission rules only.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    Interval, SecretKeyReference, SecretReference, forbidden, interval_format_rule,
    interval_minimum_rule, name_rule, required, workspace_rule,
};

/// The Bitbucket Cloud REST API base URL.
pub const CLOUD_API_URL: &str = "https://api.bitbucket.org/2.0";

/// The most Subscription names kept in `status.usedBy`; `status.subscriptions` has the count.
pub const MAX_NAMED_USERS: usize = 10;

/// A Bitbucket credential and the Bitbucket it is for. The operator validates it against
/// Bitbucket and reports the account it authenticates as in `status`.
// Each printcolumn(...) repeats `type_ = "string"`, which clippy mistakes for a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, kube::KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "scm.shippable.io",
    version = "v1alpha1",
    kind = "BitbucketIntegration",
    namespaced,
    doc = "A Bitbucket credential (in a Secret) that the operator validates against Bitbucket Cloud or Data Center, reporting the account it authenticates as. Cannot be deleted while Subscriptions use it.",
    status = "BitbucketIntegrationStatus",
    shortname = "bbi",
    category = "shippable",
    category = "scm",
    printcolumn(
        name = "Display Name",
        type_ = "string",
        json_path = ".spec.displayName"
    ),
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.server.type"),
    printcolumn(
        name = "Account",
        type_ = "string",
        json_path = ".status.account.username"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "In Use",
        type_ = "integer",
        json_path = ".status.subscriptions"
    ),
    printcolumn(
        name = "Expires",
        type_ = "string",
        json_path = ".status.credential.expiresAt"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new(
    "self.credentials.type != 'Basic' || (has(self.server) && self.server.type == 'DataCenter')"
).field_path(".credentials.type").message(
    "Basic is for Bitbucket Data Center only (server.type: DataCenter); Bitbucket Cloud accepts ApiToken, AccessToken, OAuthConsumer or OAuthUser"
))]
#[x_kube(validation = Rule::new(
    "!(self.credentials.type in ['ApiToken', 'OAuthConsumer', 'OAuthUser']) || !has(self.server) || self.server.type == 'Cloud'"
).field_path(".credentials.type").message(
    "ApiToken, OAuthConsumer and OAuthUser are for Bitbucket Cloud only; Bitbucket Data Center accepts AccessToken or Basic"
))]
#[x_kube(validation = required(Rule::new(
    "self.credentials.type != 'AccessToken' || (has(self.server) && self.server.type == 'DataCenter') || has(self.workspace)"
).field_path(".workspace").message(
    "a Bitbucket Cloud AccessToken belongs to one workspace: set workspace to its slug"
)))]
#[x_kube(validation = forbidden(Rule::new(
    "!has(self.workspace) || !has(self.server) || self.server.type == 'Cloud'"
).field_path(".workspace").message(
    "workspace applies to Bitbucket Cloud only; remove it when server.type is DataCenter"
)))]
#[serde(rename_all = "camelCase")]
pub struct BitbucketIntegrationSpec {
    /// A friendly name for people, shown by `kubectl get` (1-128 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub display_name: Option<String>,

    /// Which Bitbucket the credential is for. Omitted: Bitbucket Cloud.
    #[serde(default)]
    pub server: Server,

    /// The credential: its type and the Secret holding it.
    pub credentials: Credentials,

    /// Bitbucket Cloud only. The workspace (slug or `{uuid}`) an AccessToken belongs to: required
    /// for AccessToken, optional otherwise. When set, Subscriptions using this integration may
    /// only use this workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    #[x_kube(validation = workspace_rule())]
    pub workspace: Option<String>,

    /// How often a credential that works is checked again (a Go duration: 30m, 1h; at least 1m).
    /// A change to the spec or the Secret, or the sync annotation, checks it at once.
    #[serde(default = "default_validation_interval")]
    #[schemars(length(min = 2, max = 32))]
    #[x_kube(validation = interval_format_rule())]
    #[x_kube(validation = interval_minimum_rule("1m"))]
    pub validation_interval: Interval,

    /// Signed Bitbucket webhooks for this integration: the operator then accepts deliveries at
    /// `POST /hooks/<namespace>/<name>` on its webhook port, signed with this secret
    /// (`X-Hub-Signature`), and refreshes what they name within seconds; the sync interval
    /// stays the safety net. Unset: deliveries for this integration are answered 404.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<Webhook>,

    /// How many requests an hour the credential may make, and how much of that interval syncs
    /// may plan for. Unset: what the credential type allows (Bitbucket Cloud: 1,000 an hour,
    /// or what Bitbucket reports in `X-RateLimit-Limit` to access tokens; Data Center: no
    /// limit). Every call made with the credential counts, and syncs are spread, and their
    /// interval stretched when needed, to stay within it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_budget: Option<RequestBudget>,
}

/// An integration's request budget.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestBudget {
    /// Requests an hour (1-1000000): what Bitbucket allows this credential, when it is not
    /// what the credential type says (e.g. a Data Center instance with rate limiting on, or a
    /// Cloud user whose other tools use part of the same allowance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub requests_per_hour: Option<u32>,
    /// The percent of the budget interval syncs may plan for (10-100, default 80); the rest
    /// is kept for validations, sync requests and webhook refreshes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 100))]
    pub planned_percent: Option<u8>,
}

/// How Bitbucket's webhook deliveries for an integration are accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    /// The Secret key holding the hook's secret: the same text is the hook's secret in
    /// Bitbucket, which signs each delivery with it (HMAC-SHA256).
    pub secret_ref: WebhookSecretReference,
    /// Let the operator create the hooks in Bitbucket and keep them (re-created when deleted,
    /// updated when the secret rotates, removed when no longer used or the integration goes):
    /// on Cloud a workspace hook for each workspace its Subscriptions list (the credential
    /// needs the `webhook` scope and a workspace owner), on Data Center a project hook for each
    /// project they list (PROJECT_ADMIN). The hooks point at the operator's `--webhook-url`.
    /// `status.webhooks` shows each; condition `WebhooksRegistered` says how it went.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub register: bool,
}

/// The Secret key holding a webhook's secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct WebhookSecretReference {
    /// Name of the Secret, in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = name_rule("a Secret"))]
    pub name: String,
    /// Key within the Secret holding the hook's secret.
    #[serde(default = "default_webhook_key")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[-._a-zA-Z0-9]+$')")
        .message("must be a Secret key: letters, digits, '-', '_' and '.'"))]
    pub key: String,
}

fn default_webhook_key() -> String {
    "secret".to_owned()
}

fn default_validation_interval() -> Interval {
    "30m".into()
}

/// Which Bitbucket to talk to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, kube::KubeSchema)]
#[x_kube(validation = required(Rule::new("self.type != 'DataCenter' || has(self.url)")
    .field_path(".url")
    .message("Bitbucket Data Center needs url: the base URL of the instance, e.g. https://bitbucket.example.com")))]
#[x_kube(validation = Rule::new(
    "self.type != 'DataCenter' || !has(self.url) || !self.url.matches('^[A-Za-z]+://[^/]+(/[^?#]*)?/rest(/.*)?$')"
).field_path(".url").message(
    "for Bitbucket Data Center, url is the base URL of the instance without /rest (e.g. https://bitbucket.example.com)"
))]
#[serde(rename_all = "camelCase")]
pub struct Server {
    /// `Cloud` (bitbucket.org) or `DataCenter` (a self-hosted instance; also Bitbucket Server).
    #[serde(rename = "type", default)]
    pub server_type: ServerType,

    /// Cloud: the REST API base URL (default https://api.bitbucket.org/2.0; override it only for
    /// a proxy or simulator, and the OAuth token endpoint moves to the same scheme://host:port).
    /// DataCenter: required; the base URL of the instance, without /rest. https only; plain http
    /// is accepted for loopback hosts. The credential is sent here only when the operator's
    /// allowed servers or the credential Secret's `scm.shippable.io/allowed-servers` annotation
    /// name it, and never to link-local or cloud-metadata addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // NB: CEL's url() and ip() functions cost too much for the CRD's rule budget at this
    // length; anchored regexes say the same thing cheaply.
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new("self.matches('^https?://[^/?#]+([/?#].*)?$') && isURL(self)")
        .message("must be an absolute http(s) URL such as https://bitbucket.example.com"))]
    #[x_kube(validation = Rule::new(
        "!self.startsWith('http://') || self.matches('^http://(localhost|127[.][0-9]+[.][0-9]+[.][0-9]+|[[]::1[]])(:[0-9]+)?([/?#].*)?$')"
    ).message("must use https: plain http is only accepted for loopback hosts (localhost, 127.0.0.1, ::1)"))]
    #[x_kube(validation = Rule::new(
        "!self.matches('^https?://(169[.]254[.][0-9]+[.][0-9]+|100[.]100[.]100[.]200|[[][fF][eE][89aAbB][0-9a-fA-F]*:[^]]*[]]|[[][fF][dD]00:[eE][cC]2::254[]])([:/?#].*)?$')"
    ).message("must not name a link-local or cloud-metadata address (169.254.0.0/16, fe80::/10, fd00:ec2::254, 100.100.100.200): the operator never connects there"))]
    #[x_kube(validation = Rule::new("!self.matches('^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@')")
        .message("must not contain credentials (user:password@): they belong in the Secret named by credentials.secretRef"))]
    #[x_kube(validation = Rule::new("!self.contains('?') && !self.contains('#')")
        .message("must not have a query (?) or fragment (#)"))]
    pub url: Option<String>,

    /// A Secret key holding a PEM bundle of the certificate authorities to trust for `url`, for
    /// instances behind a private CA. Replaces the system roots for this integration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_secret_ref: Option<SecretKeyReference>,
}

impl Default for Server {
    fn default() -> Self {
        Self {
            server_type: ServerType::Cloud,
            url: Some(CLOUD_API_URL.to_owned()),
            ca_bundle_secret_ref: None,
        }
    }
}

/// The kind of Bitbucket.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ServerType {
    /// Bitbucket Cloud (bitbucket.org).
    #[default]
    Cloud,
    /// Bitbucket Data Center (or Server), self-hosted.
    DataCenter,
}

/// A credential: its type and where it is kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    /// `ApiToken` (Cloud; Secret keys `email`, `token`), `AccessToken` (Cloud workspace, project
    /// or repository access token, or a Data Center HTTP access token; key `token`),
    /// `OAuthConsumer` (Cloud; keys `clientId`, `clientSecret`), `OAuthUser` (Cloud, a user who
    /// signed in through an OAuth consumer; keys `clientId`, `clientSecret`, `refreshToken`) or
    /// `Basic` (Data Center; keys `username`, `password`). Cloud app passwords were removed by
    /// Atlassian in 2026.
    #[serde(rename = "type")]
    pub credential_type: CredentialType,

    /// The Secret holding the credential, in the same namespace. The operator only reads it,
    /// except an `OAuthUser` Secret labelled `scm.shippable.io/credential-type: OAuthUser`,
    /// whose `refreshToken` it replaces each time Bitbucket rotates it.
    pub secret_ref: SecretReference,
}

/// The kind of credential, which decides the Secret keys and how it is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum CredentialType {
    /// Cloud API token with the account's email: Secret keys `email` and `token`.
    ApiToken,
    /// Bearer token: Cloud workspace/project/repository access token, or Data Center HTTP access
    /// token. Secret key `token`.
    AccessToken,
    /// Cloud OAuth consumer (client-credentials grant): Secret keys `clientId`, `clientSecret`.
    OAuthConsumer,
    /// Cloud user signed in through an OAuth consumer (`kubectl bitbucket connect --sign-in`;
    /// refresh-token grant): Secret keys `clientId`, `clientSecret`, `refreshToken`. The Secret
    /// must carry the label `scm.shippable.io/credential-type: OAuthUser`, which lets the
    /// operator write the refresh tokens Bitbucket rotates back to it.
    OAuthUser,
    /// Data Center username with password or personal token: Secret keys `username`, `password`.
    Basic,
}

/// What the operator last observed about the integration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct BitbucketIntegrationStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready, Reconciling, Stalled and DeletionBlocked, one entry per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// Who the credential authenticates as; kept while Bitbucket is temporarily unreachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<Account>,

    /// The OAuth scopes Bitbucket reports for the credential, when it reports them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,

    /// How many Subscriptions reference this integration now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriptions: Option<i32>,

    /// The names of the first ten of those Subscriptions, sorted. While it is not empty, the
    /// API server refuses to delete the integration (the ValidatingAdmissionPolicy
    /// `bitbucketintegration-in-use.scm.shippable.io`) with a message naming them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_NAMED_USERS), inner(length(max = 253)))]
    pub used_by: Vec<String>,

    /// The last value of the `scm.shippable.io/sync-requested-at` annotation acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_sync_request: Option<String>,

    /// What is known of the credential's lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<CredentialStatus>,

    /// The request budget the credential's calls are kept within.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_budget: Option<RequestBudgetStatus>,

    /// The hooks the operator keeps in Bitbucket for this integration
    /// (`spec.webhook.register`), one per workspace or project.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub webhooks: Vec<RegisteredWebhook>,
}

/// The request budget an integration's calls are kept within.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestBudgetStatus {
    /// Requests an hour.
    pub requests_per_hour: u32,
    /// Of them, what interval syncs plan for.
    pub planned_per_hour: u32,
    /// Where the size comes from: `credential type`, `reported by Bitbucket` or `set on the
    /// integration`.
    pub source: String,
}

/// What is known of a credential's lifetime.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialStatus {
    /// When the credential expires (RFC 3339), as its Secret declares with the annotation
    /// `scm.shippable.io/expires-at` (Bitbucket does not reveal it for API tokens, access tokens
    /// or Data Center tokens to the token itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The nearest warning given so far, in days before the expiry: 30, 7 or 1 (each is given
    /// once, as a Warning Event `CredentialExpiring`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warned_days: Option<u32>,
}

/// A hook the operator keeps in Bitbucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegisteredWebhook {
    /// The Cloud workspace or Data Center project it belongs to.
    pub owner: String,
    /// Bitbucket's id of the hook (Cloud: a UUID in braces; Data Center: a number), once made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `Registered` or `Failed`.
    pub state: WebhookState,
    /// The events it carries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    /// Why it failed, or the events Bitbucket would not let it carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Whether a hook is in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum WebhookState {
    Registered,
    Failed,
}

/// The identity behind a credential.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Account {
    /// `User` (Cloud user), `AccessToken` (Cloud access token: not a user), `OAuthConsumer`
    /// (Cloud OAuth consumer) or `DataCenterUser`.
    pub kind: AccountKind,
    /// The username, when Bitbucket reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// The account's display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// Cloud: the account UUID, in braces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Cloud: the Atlassian account ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
}

/// What kind of identity a credential is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum AccountKind {
    /// A Bitbucket Cloud user (API token or OAuth on behalf of a user).
    User,
    /// A Bitbucket Cloud workspace, project or repository access token.
    AccessToken,
    /// A Bitbucket Cloud OAuth consumer acting as itself.
    OAuthConsumer,
    /// A Bitbucket Data Center user.
    DataCenterUser,
}
