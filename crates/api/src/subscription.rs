//! `Subscription`: a workspace (Cloud) or projects (Data Center) seen through an integration;
//! the operator keeps the list of repositories it can see in `status`. Types and admission
//! rules only.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, core::Rule};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{
    Interval, LocalObjectReference, interval_format_rule, interval_minimum_rule, workspace_rule,
};

/// The most repositories kept in `status.repositories`; `status.repositoryCount` has the total.
pub const MAX_LISTED_REPOSITORIES: usize = 1000;

/// A project key: a letter, then letters, digits or `_` (`API`); or a Data Center personal
/// project, `~` and a user slug (`~jdoe`).
const PROJECT_KEY_PATTERN: &str = r"^([A-Za-z][A-Za-z0-9_]*|~[A-Za-z0-9_.@-]+)$";

/// A glob on repository slugs: slug characters with `*`, `?` and `[...]` classes (`[!...]`
/// negates). Brackets are written as `[[]` and `[]]`: CEL strings have no `\[` escape.
const GLOB_PATTERN: &str = r"^([A-Za-z0-9._-]|[*]|[?]|[[]!?[A-Za-z0-9._-]+[]])+$";

/// Repositories of one Bitbucket workspace or set of projects, seen through an integration.
// Each printcolumn(...) repeats `type_ = "string"`, which clippy mistakes for a duplicate.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, kube::KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "scm.shippable.io",
    version = "v1alpha1",
    kind = "Subscription",
    namespaced,
    doc = "The repositories a BitbucketIntegration can see in a Bitbucket Cloud workspace or in Data Center projects, kept in status and refreshed on an interval or on demand.",
    status = "SubscriptionStatus",
    shortname = "bbsub",
    category = "shippable",
    category = "scm",
    selectable = ".spec.integrationRef.name",
    printcolumn(
        name = "Integration",
        type_ = "string",
        json_path = ".spec.integrationRef.name"
    ),
    printcolumn(name = "Workspace", type_ = "string", json_path = ".spec.workspace"),
    printcolumn(
        name = "Repos",
        type_ = "integer",
        json_path = ".status.repositoryCount"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionSpec {
    /// The BitbucketIntegration (same namespace) whose credential lists the repositories.
    pub integration_ref: LocalObjectReference,

    /// Bitbucket Cloud: the workspace slug (or `{uuid}`); required there. Must be absent for
    /// Bitbucket Data Center.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    #[x_kube(validation = workspace_rule())]
    pub workspace: Option<String>,

    /// Project keys. Cloud: only repositories in these projects of the workspace. Data Center:
    /// the projects to list (`~user` for a personal project). Empty: every repository the
    /// credential can see.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100), inner(length(min = 1, max = 128)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    #[x_kube(validation = Rule::new(format!("self.all(p, p.matches('{PROJECT_KEY_PATTERN}'))"))
        .message("each entry must be a project key (a letter, then letters, digits or '_', e.g. API) or a personal project (~username)"))]
    pub projects: Vec<String>,

    /// Filters on the listed repositories, applied by the operator after listing.
    #[serde(default)]
    pub repositories: RepositoryFilter,

    /// How often the repository list is refreshed (a Go duration: 10m, 1h; at least 1m). A
    /// change to the spec or the sync annotation refreshes it at once.
    #[serde(default = "default_sync_interval")]
    #[schemars(length(min = 2, max = 32))]
    #[x_kube(validation = interval_format_rule())]
    #[x_kube(validation = interval_minimum_rule("1m"))]
    pub sync_interval: Interval,

    /// Stop refreshing; the last list stays in status.
    #[serde(default)]
    pub suspend: bool,
}

fn default_sync_interval() -> Interval {
    "10m".into()
}

/// Which of the listed repositories to keep.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryFilter {
    /// Globs on the repository slug (`api-*`, `svc-?`, `[!x]*`); a repository is kept when it
    /// matches any. Empty: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50), inner(length(min = 1, max = 128)))]
    #[x_kube(validation = glob_rule())]
    pub include: Vec<String>,

    /// Globs on the repository slug; a repository matching any is dropped, even when included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50), inner(length(min = 1, max = 128)))]
    #[x_kube(validation = glob_rule())]
    pub exclude: Vec<String>,

    /// `All`, or only `Private` or only `Public` repositories.
    #[serde(default)]
    pub visibility: Visibility,
}

fn glob_rule() -> Rule {
    Rule::new(format!("self.all(g, g.matches('{GLOB_PATTERN}'))")).message(
        "each entry must be a glob on repository slugs: letters, digits, '.', '_', '-', with * (any run), ? (one character) and [abc] or [!abc] classes",
    )
}

/// Repository visibility filter.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Visibility {
    /// Private and public repositories.
    #[default]
    All,
    /// Only private repositories.
    Private,
    /// Only public repositories.
    Public,
}

/// What the operator last observed about the subscription.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, kube::KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Ready, Reconciling and Stalled, one entry per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// The integration used for the last listing and the account it authenticated as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integration: Option<IntegrationSummary>,

    /// How many repositories match, even when `repositories` is truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_count: Option<i32>,

    /// The matching repositories, sorted by fullName; at most 1000 entries. Kept while Bitbucket
    /// is temporarily unreachable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub repositories: Vec<Repository>,

    /// True when more repositories matched than `repositories` holds.
    #[serde(default)]
    pub repositories_truncated: bool,

    /// The RepositorySlices that hold the whole list (every repository once, however many),
    /// each with a digest of its entries: written after the slices, so a reader that finds
    /// other entries is looking at an update under way and keeps the last complete list.
    /// Absent until the first complete listing; empty for an empty list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slices: Option<Vec<crate::SliceRef>>,

    /// When the repository list last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_change_time: Option<Time>,

    /// The interval the Subscription is synced at when its `syncInterval` cannot be kept
    /// within the integration's request budget (a Go duration); absent when it is kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub stretched_sync_interval: Option<String>,

    /// The last value of the `scm.shippable.io/sync-requested-at` annotation acted upon.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_sync_request: Option<String>,
}

/// The integration behind a subscription's last listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntegrationSummary {
    /// The BitbucketIntegration's name.
    pub name: String,
    /// The username (or display name) its credential authenticates as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
}

/// One repository the subscription can see.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Repository {
    /// `workspace/slug` (Cloud) or `PROJECT/slug` (Data Center).
    pub full_name: String,
    /// Bitbucket's id of the repository, kept across renames and moves: the Cloud `uuid`, the
    /// Data Center `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The repository slug.
    pub name: String,
    /// The repository's display name, when it differs from the slug.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// The key of the project the repository belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Whether the repository is private.
    pub private: bool,
    /// The main branch; absent for empty repositories.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub main_branch: Option<String>,
    /// Clone URLs, without credentials or usernames.
    #[serde(default)]
    pub clone_urls: CloneUrls,
    /// The repository's web page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub html_url: Option<String>,
    /// When the repository last changed, as Bitbucket reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Time>,
}

/// How to clone a repository.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloneUrls {
    /// HTTPS clone URL (no userinfo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https: Option<String>,
    /// SSH clone URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<String>,
}
