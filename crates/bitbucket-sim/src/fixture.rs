//! The simulator's data: what exists in the simulated Bitbucket Cloud workspaces and Data Center
//! instance, who may sign in and how. A [`Fixture`] is read from YAML/JSON (camelCase) or built in
//! Rust; [`Fixture::prepare`] validates references, expands repository generators and fills in
//! derived values (UUIDs, ids) so the HTTP handlers only ever see complete data. Pure; no I/O.
//!
//! Every secret in [`Fixture::demo`] and [`Fixture::recorded`] is a fake made up for the
//! simulator (they all start with `FAKE`); none was ever valid anywhere.

use std::collections::BTreeSet;

use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use super::timestamp;

/// Everything the simulator serves. The two halves are independent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Fixture {
    /// Bitbucket Cloud (REST 2.0 and the OAuth token endpoint).
    #[serde(default)]
    pub cloud: CloudFixture,
    /// Bitbucket Data Center (REST 1.0).
    #[serde(default)]
    pub data_center: DataCenterFixture,
}

/// The simulated Bitbucket Cloud.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudFixture {
    /// Workspaces with their projects and repositories.
    #[serde(default)]
    pub workspaces: Vec<Workspace>,
    /// Atlassian accounts that API tokens and OAuth consumers act as.
    #[serde(default)]
    pub users: Vec<CloudUser>,
    /// Ways to authenticate.
    #[serde(default)]
    pub credentials: Vec<CloudCredential>,
    /// Largest `pagelen` honoured; larger values are clamped. The documented maximum is 100;
    /// whether Bitbucket clamps or rejects larger values is not documented (a guess).
    #[serde(default = "default_max_pagelen")]
    pub max_pagelen: u32,
    /// Status for an access token calling `GET /2.0/user` (reported as refused; code UNCERTAIN).
    #[serde(default = "default_access_token_on_user_status")]
    pub access_token_on_user_status: u16,
    /// Status for an access token calling user-level endpoints such as `/2.0/user/workspaces`
    /// (body documented by Atlassian, status not: UNCERTAIN).
    #[serde(default = "default_access_token_on_user_endpoints_status")]
    pub access_token_on_user_endpoints_status: u16,
}

impl Default for CloudFixture {
    fn default() -> Self {
        Self {
            workspaces: Vec::new(),
            users: Vec::new(),
            credentials: Vec::new(),
            max_pagelen: default_max_pagelen(),
            access_token_on_user_status: default_access_token_on_user_status(),
            access_token_on_user_endpoints_status: default_access_token_on_user_endpoints_status(),
        }
    }
}

fn default_max_pagelen() -> u32 {
    100
}
fn default_access_token_on_user_status() -> u16 {
    401
}
fn default_access_token_on_user_endpoints_status() -> u16 {
    403
}
fn yes() -> bool {
    true
}

/// A Cloud workspace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workspace {
    /// URL name, e.g. `acme`.
    pub slug: String,
    /// `{...}` UUID; derived from the slug when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Display name; the slug when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Whether the workspace itself is private.
    #[serde(default = "yes")]
    pub private: bool,
    /// Projects; every repository names one of them.
    #[serde(default)]
    pub projects: Vec<CloudProject>,
    /// Repositories in listing order (the default order of `GET /2.0/repositories/{ws}`).
    #[serde(default)]
    pub repositories: Vec<CloudRepository>,
    /// Generates more repositories after the listed ones; expanded by [`Fixture::prepare`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate: Option<Generator>,
}

/// A Cloud project.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudProject {
    /// Project key, e.g. `API`.
    pub key: String,
    /// Display name; the key when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `{...}` UUID; derived when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
}

/// A Cloud repository.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudRepository {
    /// URL name, unique in its workspace.
    pub slug: String,
    /// Display name; the slug when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Key of the project it belongs to.
    pub project: String,
    /// `is_private`.
    #[serde(default = "yes")]
    pub private: bool,
    /// Main branch name; absent or `null` means an empty repository (`"mainbranch": null`).
    #[serde(default)]
    pub main_branch: Option<String>,
    /// `updated_on` (ISO-8601); a fixed date when absent so listings stay deterministic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_on: Option<String>,
    /// `created_on`; the template's recorded value when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_on: Option<String>,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// `{...}` UUID; derived from workspace and slug when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
}

/// Produces `count` repositories named `{prefix}-{n}` (zero-padded), deterministically.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Generator {
    /// How many repositories to generate.
    pub count: usize,
    /// Slug prefix.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Project key (Cloud) the repositories belong to; ignored for Data Center projects.
    #[serde(default)]
    pub project: String,
    /// Whether generated repositories are private.
    #[serde(default = "yes")]
    pub private: bool,
}

fn default_prefix() -> String {
    "repo".to_owned()
}

/// An Atlassian account on Cloud.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudUser {
    /// Bitbucket username (appears in https clone URLs).
    pub username: String,
    /// `display_name` (and `nickname`).
    pub display_name: String,
    /// Atlassian account id.
    pub account_id: String,
    /// `{...}` UUID.
    pub uuid: String,
    /// Atlassian account email: the Basic-auth username for API tokens.
    pub email: String,
    /// Workspaces the user is a member of.
    #[serde(default)]
    pub workspaces: Vec<Membership>,
}

/// Membership of a workspace: a slug, or `{slug, administrator}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Membership {
    /// Plain member.
    Member(String),
    /// Member with an explicit administrator flag.
    Detailed {
        /// Workspace slug.
        slug: String,
        /// `administrator` in `/2.0/user/workspaces`.
        #[serde(default)]
        administrator: bool,
    },
}

impl Membership {
    /// The workspace slug.
    pub fn slug(&self) -> &str {
        match self {
            Self::Member(slug) | Self::Detailed { slug, .. } => slug,
        }
    }
    /// Whether the user administers the workspace.
    pub fn administrator(&self) -> bool {
        matches!(
            self,
            Self::Detailed {
                administrator: true,
                ..
            }
        )
    }
}

/// A way to authenticate against Cloud. `id` is a stable, non-secret name used by counters,
/// fault matching and rate limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CloudCredential {
    /// Non-secret identifier.
    pub id: String,
    /// What kind of credential, with its secret.
    #[serde(flatten)]
    pub kind: CloudCredentialKind,
    /// Granted scopes (granular `read:repository:bitbucket` or classic `repository`).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// After this instant the credential is rejected with 401.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Requests allowed per rolling hour; unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_hour: Option<u32>,
    /// Overrides the `X-Credential-Type` header value (the defaults are UNCERTAIN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_type_header: Option<String>,
}

/// The kinds of Cloud credential.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum CloudCredentialKind {
    /// Atlassian API token: HTTP Basic `email:token` for `user`.
    ApiToken {
        /// Username of the owning [`CloudUser`].
        user: String,
        /// The secret.
        token: String,
    },
    /// Workspace/project/repository access token: `Authorization: Bearer`, not a user.
    AccessToken {
        /// Pseudo-user display name, e.g. "CI token".
        name: String,
        /// The one workspace it belongs to.
        workspace: String,
        /// Restricts it to one project (a project access token).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        project: Option<String>,
        /// Restricts it to one repository slug (a repository access token).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        repository: Option<String>,
        /// The secret.
        token: String,
    },
    /// OAuth 2.0 consumer for the client-credentials grant.
    OauthConsumer {
        /// Username of the owning [`CloudUser`]; issued tokens act as this user.
        owner: String,
        /// Consumer key.
        client_id: String,
        /// Consumer secret.
        client_secret: String,
        /// `expires_in` of issued tokens.
        #[serde(default = "default_token_lifetime")]
        token_lifetime_seconds: u64,
    },
}

fn default_token_lifetime() -> u64 {
    7200
}

/// The simulated Bitbucket Data Center instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataCenterFixture {
    /// Accounts (normal and service users).
    #[serde(default)]
    pub users: Vec<DcUser>,
    /// Projects, including personal ones (`~slug`).
    #[serde(default)]
    pub projects: Vec<DcProject>,
    /// Ways to authenticate.
    #[serde(default)]
    pub credentials: Vec<DcCredential>,
    /// Server-side cap on `limit` (`page.max.repositories`; 1000 is commonly cited, UNCERTAIN).
    #[serde(default = "default_page_cap")]
    pub page_cap: u32,
    /// Status of `…/default-branch` for an empty repository (UNCERTAIN; 404 with an errors body,
    /// or 204 with no body like the deprecated `/branches/default`).
    #[serde(default = "default_empty_default_branch_status")]
    pub empty_default_branch_status: u16,
}

impl Default for DataCenterFixture {
    fn default() -> Self {
        Self {
            users: Vec::new(),
            projects: Vec::new(),
            credentials: Vec::new(),
            page_cap: default_page_cap(),
            empty_default_branch_status: default_empty_default_branch_status(),
        }
    }
}

fn default_page_cap() -> u32 {
    1000
}
fn default_empty_default_branch_status() -> u16 {
    404
}

/// A Data Center user.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DcUser {
    /// Username (`X-AUSERNAME`).
    pub name: String,
    /// URL slug; the name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slug: Option<String>,
    /// Numeric id (`X-AUSERID`).
    pub id: u64,
    /// Display name.
    pub display_name: String,
    /// Email address.
    #[serde(default)]
    pub email_address: String,
    /// `NORMAL` or `SERVICE`.
    #[serde(default, rename = "type")]
    pub kind: DcUserKind,
}

impl DcUser {
    /// The URL slug.
    pub fn slug(&self) -> &str {
        self.slug.as_deref().unwrap_or(&self.name)
    }
}

/// Data Center user type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DcUserKind {
    /// A person.
    #[default]
    Normal,
    /// A generated user behind project/repository tokens.
    Service,
}

/// A Data Center project. Keys starting with `~` are personal projects (`type: PERSONAL`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DcProject {
    /// Project key, e.g. `PLAT` or `~jdoe`.
    pub key: String,
    /// Display name; the key when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Numeric id; assigned when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Readable by everyone, including anonymous callers.
    #[serde(default)]
    pub public: bool,
    /// Repositories in listing order.
    #[serde(default)]
    pub repositories: Vec<DcRepository>,
    /// Generates more repositories (only `count`, `prefix` and `private` are used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate: Option<Generator>,
}

impl DcProject {
    /// Whether this is a personal project (`~slug`).
    pub fn is_personal(&self) -> bool {
        self.key.starts_with('~')
    }
}

/// A Data Center repository.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DcRepository {
    /// URL name, unique in its project.
    pub slug: String,
    /// Display name; the slug when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Numeric id; assigned when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Readable by everyone.
    #[serde(default)]
    pub public: bool,
    /// Archived (hidden from `/repos` unless `archived=ARCHIVED|ALL`).
    #[serde(default)]
    pub archived: bool,
    /// Default branch; absent means an empty repository.
    #[serde(default)]
    pub default_branch: Option<String>,
}

/// A way to authenticate against Data Center.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DcCredential {
    /// Non-secret identifier.
    pub id: String,
    /// What kind of credential, with its secret.
    #[serde(flatten)]
    pub kind: DcCredentialKind,
    /// Project keys this credential may read; every project when absent. The user's personal
    /// project and public projects are always readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projects: Option<Vec<String>>,
    /// After this instant the credential is rejected with 401.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// Requests allowed per rolling hour; unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_hour: Option<u32>,
}

/// The kinds of Data Center credential.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "kind",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum DcCredentialKind {
    /// HTTP Basic username + password.
    Basic {
        /// Username of a [`DcUser`].
        username: String,
        /// The secret.
        password: String,
    },
    /// HTTP access token (`Authorization: Bearer`). A personal token (no `project`) also works
    /// as the Basic password of its user.
    AccessToken {
        /// Username of the [`DcUser`] it authenticates as (a SERVICE user for project tokens).
        user: String,
        /// Makes it a project token, limited to this project.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        project: Option<String>,
        /// The secret.
        token: String,
    },
}

/// Why a fixture was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FixtureError {
    /// Not valid YAML/JSON for the fixture format.
    #[error("the fixture cannot be read: {0}")]
    Syntax(String),
    /// Something names a workspace, project, repository or user that does not exist.
    #[error("{what} refers to unknown {kind} '{name}'")]
    UnknownReference {
        /// The referring item.
        what: String,
        /// The kind of thing referred to.
        kind: &'static str,
        /// The missing name.
        name: String,
    },
    /// Two items share a name that must be unique.
    #[error("duplicate {kind} '{name}'")]
    Duplicate {
        /// The kind of thing.
        kind: &'static str,
        /// The repeated name.
        name: String,
    },
    /// A timestamp is not ISO-8601.
    #[error("'{0}' is not an ISO-8601 timestamp")]
    BadTimestamp(String),
}

/// The `updated_on` of repositories that do not set one, so listings are deterministic.
pub(crate) const DEFAULT_UPDATED_ON: &str = "2026-01-05T09:30:00.000000+00:00";

impl Fixture {
    /// Reads a fixture from YAML (JSON is YAML too).
    pub fn from_yaml(text: &str) -> Result<Self, FixtureError> {
        serde_saphyr::from_str(text).map_err(|e| FixtureError::Syntax(e.to_string()))
    }

    /// Validates references and uniqueness, expands generators and fills in derived values.
    /// The simulator calls this on every fixture it is given; calling it twice is harmless.
    pub fn prepare(mut self) -> Result<Self, FixtureError> {
        for workspace in &mut self.cloud.workspaces {
            expand_cloud(workspace);
        }
        let mut next_project_id = 1 + self
            .data_center
            .projects
            .iter()
            .filter_map(|p| p.id)
            .max()
            .unwrap_or(0);
        let mut next_repo_id = 1 + self
            .data_center
            .projects
            .iter()
            .flat_map(|p| &p.repositories)
            .filter_map(|r| r.id)
            .max()
            .unwrap_or(0);
        for project in &mut self.data_center.projects {
            if let Some(generator) = project.generate.take() {
                let width = digits(generator.count);
                for n in 1..=generator.count {
                    project.repositories.push(DcRepository {
                        slug: format!("{}-{n:0width$}", generator.prefix),
                        name: None,
                        id: None,
                        public: !generator.private,
                        archived: false,
                        default_branch: Some("main".to_owned()),
                    });
                }
            }
            if project.id.is_none() {
                project.id = Some(next_project_id);
                next_project_id += 1;
            }
            for repo in &mut project.repositories {
                if repo.id.is_none() {
                    repo.id = Some(next_repo_id);
                    next_repo_id += 1;
                }
            }
        }
        self.validate()?;
        Ok(self)
    }

    fn validate(&self) -> Result<(), FixtureError> {
        self.cloud.validate()?;
        self.data_center.validate()
    }

    /// A small, realistic set-up: Cloud workspace `acme` (projects API, WEB, OPS; ten
    /// repositories including an empty one and a public one), user `jdoe`, one credential of
    /// each kind; a Data Center instance with projects PLAT and OPS and the personal project
    /// `~jdoe`. All secrets are fakes (they start with `FAKE`).
    pub fn demo() -> Self {
        Self {
            cloud: CloudFixture {
                workspaces: vec![demo_data::acme_workspace()],
                users: vec![demo_data::cloud_user_jdoe()],
                credentials: demo_data::cloud_credentials(),
                ..CloudFixture::default()
            },
            data_center: DataCenterFixture {
                users: demo_data::dc_users(),
                projects: demo_data::dc_projects(),
                credentials: demo_data::dc_credentials(),
                ..DataCenterFixture::default()
            },
        }
    }

    /// The data behind the recorded examples in `testdata/bitbucket/`: Cloud workspace
    /// `sourcegraph-testing` (two repositories, user `sourcegraph-testing`) and Data Center
    /// project `PRIVUSER` (user `lone-private-user`). Requests that repeat a recorded one are
    /// answered with the recorded bytes, including their `https://api.bitbucket.org` links.
    /// Secrets are fakes.
    pub fn recorded() -> Self {
        Self {
            cloud: recorded_data::cloud(),
            data_center: recorded_data::data_center(),
        }
    }

    /// The demo fixture with `count` more repositories generated into workspace `acme`
    /// (project API) and Data Center project PLAT — for benchmarks.
    pub fn demo_with_generated(count: usize) -> Self {
        let mut fixture = Self::demo();
        fixture.cloud.workspaces[0].generate = Some(Generator {
            count,
            prefix: "gen".to_owned(),
            project: "API".to_owned(),
            private: true,
        });
        fixture.data_center.projects[0].generate = Some(Generator {
            count,
            prefix: "gen".to_owned(),
            project: String::new(),
            private: true,
        });
        fixture
    }
}

/// Validation of the Cloud half, in the order [`Fixture::prepare`] reports problems: unique
/// names first, then each workspace's contents, then memberships, then credentials.
impl CloudFixture {
    fn validate(&self) -> Result<(), FixtureError> {
        unique("workspace", self.workspaces.iter().map(|w| w.slug.as_str()))?;
        unique("cloud user", self.users.iter().map(|u| u.username.as_str()))?;
        unique(
            "cloud credential",
            self.credentials.iter().map(|c| c.id.as_str()),
        )?;
        for workspace in &self.workspaces {
            validate_workspace(workspace)?;
        }
        for user in &self.users {
            self.check_memberships(user)?;
        }
        for credential in &self.credentials {
            self.check_credential(credential)?;
        }
        Ok(())
    }

    /// Every workspace a user is a member of exists.
    fn check_memberships(&self, user: &CloudUser) -> Result<(), FixtureError> {
        for membership in &user.workspaces {
            if self.workspace(membership.slug()).is_none() {
                return Err(unknown(
                    format!("cloud user {}", user.username),
                    "workspace",
                    membership.slug(),
                ));
            }
        }
        Ok(())
    }

    /// A credential's expiry parses and whatever it acts as (user, workspace, project) exists.
    fn check_credential(&self, credential: &CloudCredential) -> Result<(), FixtureError> {
        let what = || format!("cloud credential {}", credential.id);
        if let Some(stamp) = &credential.expires_at {
            check_timestamp(stamp)?;
        }
        match &credential.kind {
            CloudCredentialKind::ApiToken { user, .. }
            | CloudCredentialKind::OauthConsumer { owner: user, .. } => {
                if self.user(user).is_none() {
                    return Err(unknown(what(), "cloud user", user));
                }
            }
            CloudCredentialKind::AccessToken {
                workspace, project, ..
            } => {
                let Some(ws) = self.workspace(workspace) else {
                    return Err(unknown(what(), "workspace", workspace));
                };
                if let Some(key) = project
                    && !ws.projects.iter().any(|p| &p.key == key)
                {
                    return Err(unknown(what(), "project", key));
                }
            }
        }
        Ok(())
    }
}

/// A workspace's project keys and repository slugs are unique, every repository names one of
/// its projects, and repository timestamps parse.
fn validate_workspace(workspace: &Workspace) -> Result<(), FixtureError> {
    unique("project", workspace.projects.iter().map(|p| p.key.as_str()))?;
    unique(
        "repository",
        workspace.repositories.iter().map(|r| r.slug.as_str()),
    )?;
    for repo in &workspace.repositories {
        if workspace.project(&repo.project).is_none() {
            return Err(unknown(
                format!("repository {}/{}", workspace.slug, repo.slug),
                "project",
                &repo.project,
            ));
        }
        for stamp in [&repo.updated_on, &repo.created_on].into_iter().flatten() {
            check_timestamp(stamp)?;
        }
    }
    Ok(())
}

/// Validation of the Data Center half: unique names, then credentials.
impl DataCenterFixture {
    fn validate(&self) -> Result<(), FixtureError> {
        unique(
            "data center user",
            self.users.iter().map(|u| u.name.as_str()),
        )?;
        unique(
            "data center project",
            self.projects.iter().map(|p| p.key.as_str()),
        )?;
        unique(
            "data center credential",
            self.credentials.iter().map(|c| c.id.as_str()),
        )?;
        for project in &self.projects {
            unique(
                "data center repository",
                project.repositories.iter().map(|r| r.slug.as_str()),
            )?;
        }
        for credential in &self.credentials {
            self.check_credential(credential)?;
        }
        Ok(())
    }

    /// A credential's expiry parses and the user it authenticates as exists.
    fn check_credential(&self, credential: &DcCredential) -> Result<(), FixtureError> {
        if let Some(stamp) = &credential.expires_at {
            check_timestamp(stamp)?;
        }
        let user = match &credential.kind {
            DcCredentialKind::Basic { username, .. } => username,
            DcCredentialKind::AccessToken { user, .. } => user,
        };
        if self.user(user).is_none() {
            return Err(unknown(
                format!("data center credential {}", credential.id),
                "data center user",
                user,
            ));
        }
        Ok(())
    }
}

/// The parts of [`Fixture::demo`], one function per kind of object.
mod demo_data {
    use super::*;

    /// Cloud repositories of workspace `acme` in listing order: slug, project, and `updated_on`
    /// in 2026 (`MM-DDThh:mm:ss`). All private with main branch `main` unless
    /// [`with_exceptions`] says otherwise.
    const ACME_REPOSITORIES: &[(&str, &str, &str)] = &[
        ("api", "API", "03-02T10:15:00"),
        ("api-gateway", "API", "02-11T08:00:00"),
        ("billing", "API", "01-20T16:45:00"),
        ("web-app", "WEB", "03-01T12:00:00"),
        ("docs", "WEB", "02-27T09:30:00"),
        ("marketing-site", "WEB", "01-08T14:20:00"),
        ("infra", "OPS", "02-28T18:05:00"),
        ("terraform-modules", "OPS", "02-03T11:11:00"),
        ("runbooks", "OPS", "01-15T07:45:00"),
        ("ci-templates", "OPS", "02-19T13:37:00"),
    ];

    /// Projects of workspace `acme`: key, name.
    const ACME_PROJECTS: &[(&str, &str)] = &[
        ("API", "API services"),
        ("WEB", "Web"),
        ("OPS", "Operations"),
    ];

    pub(super) fn acme_workspace() -> Workspace {
        Workspace {
            slug: "acme".to_owned(),
            uuid: Some("{6f1c2d4e-8a9b-4c3d-9e2f-0a1b2c3d4e5f}".to_owned()),
            name: Some("ACME Corp".to_owned()),
            private: true,
            projects: ACME_PROJECTS
                .iter()
                .map(|&(key, name)| CloudProject {
                    key: key.to_owned(),
                    name: Some(name.to_owned()),
                    uuid: None,
                })
                .collect(),
            repositories: with_exceptions(acme_repositories()),
            generate: None,
        }
    }

    fn acme_repositories() -> Vec<CloudRepository> {
        ACME_REPOSITORIES
            .iter()
            .map(|&(slug, project, updated)| CloudRepository {
                slug: slug.to_owned(),
                name: None,
                project: project.to_owned(),
                private: true,
                main_branch: Some("main".to_owned()),
                updated_on: Some(format!("2026-{updated}.000000+00:00")),
                created_on: None,
                description: String::new(),
                uuid: None,
            })
            .collect()
    }

    /// The repositories that differ from the rest, so the demo shows each case: a display name
    /// unlike the slug, a public repository, an empty one and one on `master`.
    fn with_exceptions(mut repositories: Vec<CloudRepository>) -> Vec<CloudRepository> {
        find(&mut repositories, "api-gateway").name = Some("API Gateway".to_owned());
        let docs = find(&mut repositories, "docs");
        docs.private = false;
        docs.description = "Public product documentation".to_owned();
        let runbooks = find(&mut repositories, "runbooks");
        runbooks.main_branch = None;
        runbooks.description = "Empty: nothing pushed yet".to_owned();
        find(&mut repositories, "marketing-site").main_branch = Some("master".to_owned());
        repositories
    }

    fn find<'a>(repositories: &'a mut [CloudRepository], slug: &str) -> &'a mut CloudRepository {
        repositories
            .iter_mut()
            .find(|r| r.slug == slug)
            .expect("listed in ACME_REPOSITORIES")
    }

    pub(super) fn cloud_user_jdoe() -> CloudUser {
        CloudUser {
            username: "jdoe".to_owned(),
            display_name: "Jane Doe".to_owned(),
            account_id: "712020:5a6b7c8d-1e2f-4a3b-9c8d-7e6f5a4b3c2d".to_owned(),
            uuid: "{d4c3b2a1-0f9e-4d8c-b7a6-958473625140}".to_owned(),
            email: "jdoe@example.com".to_owned(),
            workspaces: vec![Membership::Detailed {
                slug: "acme".to_owned(),
                administrator: true,
            }],
        }
    }

    /// One Cloud credential of each kind: jdoe's API token (granular scopes; a second one that
    /// may also manage webhooks), a workspace access token for `acme` and an OAuth consumer
    /// owned by jdoe (classic scopes).
    pub(super) fn cloud_credentials() -> Vec<CloudCredential> {
        vec![
            cloud_credential(
                "jdoe-api-token",
                CloudCredentialKind::ApiToken {
                    user: "jdoe".to_owned(),
                    token: "FAKE-cloud-api-token-for-jdoe".to_owned(),
                },
                &[
                    "read:user:bitbucket",
                    "read:workspace:bitbucket",
                    "read:project:bitbucket",
                    "read:repository:bitbucket",
                ],
            ),
            cloud_credential(
                "acme-ci-token",
                CloudCredentialKind::AccessToken {
                    name: "CI token".to_owned(),
                    workspace: "acme".to_owned(),
                    project: None,
                    repository: None,
                    token: "FAKE-cloud-workspace-access-token-acme".to_owned(),
                },
                &["project", "repository"],
            ),
            cloud_credential(
                "acme-oauth",
                CloudCredentialKind::OauthConsumer {
                    owner: "jdoe".to_owned(),
                    client_id: "FAKEclientid4acme".to_owned(),
                    client_secret: "FAKE-oauth-client-secret-acme".to_owned(),
                    token_lifetime_seconds: default_token_lifetime(),
                },
                &["account", "project", "repository"],
            ),
            // jdoe's second API token, which may also manage the workspace's webhooks.
            cloud_credential(
                "jdoe-hooks-token",
                CloudCredentialKind::ApiToken {
                    user: "jdoe".to_owned(),
                    token: "FAKE-cloud-api-token-for-jdoe-hooks".to_owned(),
                },
                &[
                    "read:user:bitbucket",
                    "read:workspace:bitbucket",
                    "read:project:bitbucket",
                    "read:repository:bitbucket",
                    "read:webhook:bitbucket",
                    "write:webhook:bitbucket",
                ],
            ),
        ]
    }

    fn cloud_credential(id: &str, kind: CloudCredentialKind, scopes: &[&str]) -> CloudCredential {
        CloudCredential {
            id: id.to_owned(),
            kind,
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            expires_at: None,
            rate_limit_per_hour: None,
            credential_type_header: None,
        }
    }

    /// Jane Doe, and the service user behind PLAT's project access token.
    pub(super) fn dc_users() -> Vec<DcUser> {
        vec![
            DcUser {
                name: "jdoe".to_owned(),
                slug: None,
                id: 101,
                display_name: "Jane Doe".to_owned(),
                email_address: "jdoe@example.com".to_owned(),
                kind: DcUserKind::Normal,
            },
            DcUser {
                name: "project-plat-bot".to_owned(),
                slug: None,
                id: 102,
                display_name: "PLAT project token".to_owned(),
                email_address: String::new(),
                kind: DcUserKind::Service,
            },
        ]
    }

    /// A Data Center repository: slug, public, archived, default branch (`None`: empty).
    type DcRepo = (&'static str, bool, bool, Option<&'static str>);

    /// Data Center projects in listing order: key, name, repositories.
    const DC_PROJECTS: &[(&str, &str, &[DcRepo])] = &[
        (
            "PLAT",
            "Platform",
            &[
                ("core", false, false, Some("main")),
                ("deploy-tools", false, false, Some("main")),
                ("legacy-build", false, true, Some("master")),
                ("scratch", false, false, None),
            ],
        ),
        (
            "OPS",
            "Operations",
            &[
                ("status-page", true, false, Some("main")),
                ("alerts", false, false, Some("main")),
            ],
        ),
        (
            "~jdoe",
            "Jane Doe",
            &[("dotfiles", false, false, Some("main"))],
        ),
    ];

    pub(super) fn dc_projects() -> Vec<DcProject> {
        DC_PROJECTS
            .iter()
            .map(|&(key, name, repositories)| DcProject {
                key: key.to_owned(),
                name: Some(name.to_owned()),
                id: None,
                public: false,
                repositories: repositories
                    .iter()
                    .map(|&(slug, public, archived, branch)| DcRepository {
                        slug: slug.to_owned(),
                        name: None,
                        id: None,
                        public,
                        archived,
                        default_branch: branch.map(str::to_owned),
                    })
                    .collect(),
                generate: None,
            })
            .collect()
    }

    /// jdoe's password and personal access token, and PLAT's project access token.
    pub(super) fn dc_credentials() -> Vec<DcCredential> {
        vec![
            dc_credential(
                "jdoe-password",
                DcCredentialKind::Basic {
                    username: "jdoe".to_owned(),
                    password: "FAKE-dc-password-jdoe".to_owned(),
                },
                None,
            ),
            dc_credential(
                "jdoe-pat",
                DcCredentialKind::AccessToken {
                    user: "jdoe".to_owned(),
                    project: None,
                    token: "FAKE-dc-personal-access-token-jdoe".to_owned(),
                },
                None,
            ),
            dc_credential(
                "plat-project-token",
                DcCredentialKind::AccessToken {
                    user: "project-plat-bot".to_owned(),
                    project: Some("PLAT".to_owned()),
                    token: "FAKE-dc-project-access-token-plat".to_owned(),
                },
                Some(vec!["PLAT".to_owned()]),
            ),
        ]
    }

    fn dc_credential(
        id: &str,
        kind: DcCredentialKind,
        projects: Option<Vec<String>>,
    ) -> DcCredential {
        DcCredential {
            id: id.to_owned(),
            kind,
            projects,
            expires_at: None,
            rate_limit_per_hour: None,
        }
    }
}

/// The two halves of [`Fixture::recorded`]: the objects behind `testdata/bitbucket/`, with the
/// names, UUIDs and ids the recordings show.
mod recorded_data {
    use super::*;

    pub(super) fn cloud() -> CloudFixture {
        CloudFixture {
            workspaces: vec![sourcegraph_testing_workspace()],
            users: vec![CloudUser {
                username: "sourcegraph-testing".to_owned(),
                display_name: "Sourcegraph Testing".to_owned(),
                account_id: "623316f53fbb880068413f6b".to_owned(),
                uuid: "{4b85b785-1433-4092-8512-20302f4a03be}".to_owned(),
                email: "sourcegraph-testing@example.com".to_owned(),
                workspaces: vec![Membership::Member("sourcegraph-testing".to_owned())],
            }],
            credentials: vec![CloudCredential {
                id: "recorded-api-token".to_owned(),
                kind: CloudCredentialKind::ApiToken {
                    user: "sourcegraph-testing".to_owned(),
                    token: "FAKE-recorded-api-token".to_owned(),
                },
                scopes: vec!["account".to_owned(), "repository".to_owned()],
                expires_at: None,
                rate_limit_per_hour: None,
                credential_type_header: None,
            }],
            ..CloudFixture::default()
        }
    }

    /// Repositories of workspace `sourcegraph-testing` in listing order: slug, uuid,
    /// `updated_on`.
    const SOURCEGRAPH_TESTING_REPOSITORIES: &[(&str, &str, &str)] = &[
        (
            "src-cli",
            "{b090a669-ac7b-44cd-9610-02d027cb39f3}",
            "2022-03-17T11:17:49.067413+00:00",
        ),
        (
            "sourcegraph",
            "{f46afc56-15a7-4579-9429-1b9329ad4c09}",
            "2022-03-17T11:18:32.485296+00:00",
        ),
    ];

    fn sourcegraph_testing_workspace() -> Workspace {
        Workspace {
            slug: "sourcegraph-testing".to_owned(),
            uuid: Some("{4b85b785-1433-4092-8512-20302f4a03be}".to_owned()),
            name: Some("Sourcegraph Testing".to_owned()),
            private: true,
            projects: vec![CloudProject {
                key: "SOUR".to_owned(),
                name: Some("sourcegraph-testing".to_owned()),
                uuid: Some("{a862a17c-1726-47a2-bcd1-d9b37313b350}".to_owned()),
            }],
            repositories: SOURCEGRAPH_TESTING_REPOSITORIES
                .iter()
                .map(|&(slug, uuid, updated)| CloudRepository {
                    slug: slug.to_owned(),
                    name: None,
                    project: "SOUR".to_owned(),
                    private: true,
                    main_branch: Some("master".to_owned()),
                    updated_on: Some(updated.to_owned()),
                    created_on: None,
                    description: String::new(),
                    uuid: Some(uuid.to_owned()),
                })
                .collect(),
            generate: None,
        }
    }

    /// Repositories of project `PRIVUSER` in listing order: slug, name, id.
    const PRIVUSER_REPOSITORIES: &[(&str, &str, u64)] =
        &[("userland", "userland", 6), ("userscript", "UserScript", 8)];

    pub(super) fn data_center() -> DataCenterFixture {
        DataCenterFixture {
            users: vec![DcUser {
                name: "lone-private-user".to_owned(),
                slug: None,
                id: 104,
                display_name: "Lone Private User".to_owned(),
                email_address: "lone-private-user@example.com".to_owned(),
                kind: DcUserKind::Normal,
            }],
            projects: vec![DcProject {
                key: "PRIVUSER".to_owned(),
                name: Some("private-only-users".to_owned()),
                id: Some(25),
                public: false,
                repositories: PRIVUSER_REPOSITORIES
                    .iter()
                    .map(|&(slug, name, id)| DcRepository {
                        slug: slug.to_owned(),
                        name: Some(name.to_owned()),
                        id: Some(id),
                        public: false,
                        archived: false,
                        default_branch: Some("master".to_owned()),
                    })
                    .collect(),
                generate: None,
            }],
            credentials: vec![DcCredential {
                id: "recorded-password".to_owned(),
                kind: DcCredentialKind::Basic {
                    username: "lone-private-user".to_owned(),
                    password: "FAKE-recorded-password".to_owned(),
                },
                projects: None,
                expires_at: None,
                rate_limit_per_hour: None,
            }],
            ..DataCenterFixture::default()
        }
    }
}

impl CloudFixture {
    /// The workspace with this slug or `{uuid}`.
    pub fn workspace(&self, id: &str) -> Option<&Workspace> {
        self.workspaces
            .iter()
            .find(|w| w.slug == id || w.uuid.as_deref() == Some(id))
    }
    pub(crate) fn workspace_mut(&mut self, id: &str) -> Option<&mut Workspace> {
        self.workspaces
            .iter_mut()
            .find(|w| w.slug == id || w.uuid.as_deref() == Some(id))
    }
    /// The user with this username.
    pub fn user(&self, username: &str) -> Option<&CloudUser> {
        self.users.iter().find(|u| u.username == username)
    }
}

impl DataCenterFixture {
    /// The user with this name.
    pub fn user(&self, name: &str) -> Option<&DcUser> {
        self.users.iter().find(|u| u.name == name)
    }
    /// The project with this key (case-insensitive, as in Data Center URLs).
    pub fn project(&self, key: &str) -> Option<&DcProject> {
        self.projects
            .iter()
            .find(|p| p.key.eq_ignore_ascii_case(key))
    }
    pub(crate) fn project_mut(&mut self, key: &str) -> Option<&mut DcProject> {
        self.projects
            .iter_mut()
            .find(|p| p.key.eq_ignore_ascii_case(key))
    }
}

impl Workspace {
    /// The UUID, given or derived.
    pub fn uuid(&self) -> String {
        self.uuid
            .clone()
            .unwrap_or_else(|| derived_uuid(&format!("workspace/{}", self.slug)))
    }
    /// The display name.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.slug)
    }
    /// The project with this key.
    pub fn project(&self, key: &str) -> Option<&CloudProject> {
        self.projects.iter().find(|p| p.key == key)
    }
}

impl CloudRepository {
    /// The display name.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.slug)
    }
    /// The UUID, given or derived from the workspace and slug at creation.
    pub fn uuid(&self, workspace: &str) -> String {
        self.uuid
            .clone()
            .unwrap_or_else(|| derived_uuid(&format!("repository/{workspace}/{}", self.slug)))
    }
    /// `updated_on` as written in responses.
    pub fn updated_on(&self) -> &str {
        self.updated_on.as_deref().unwrap_or(DEFAULT_UPDATED_ON)
    }
}

impl DcRepository {
    /// The display name.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.slug)
    }
}

fn expand_cloud(workspace: &mut Workspace) {
    let Some(generator) = workspace.generate.take() else {
        return;
    };
    let base: Timestamp = "2025-01-01T00:00:00+00:00"
        .parse()
        .expect("a valid constant");
    let width = digits(generator.count);
    let project = if generator.project.is_empty() {
        workspace
            .projects
            .first()
            .map(|p| p.key.clone())
            .unwrap_or_default()
    } else {
        generator.project.clone()
    };
    workspace.repositories.reserve(generator.count);
    for n in 1..=generator.count {
        // Minutes apart, so `sort=-updated_on` and `q=updated_on>…` have something to bite on.
        let updated = base + SignedDuration::from_secs(60 * n as i64);
        workspace.repositories.push(CloudRepository {
            slug: format!("{}-{n:0width$}", generator.prefix),
            name: None,
            project: project.clone(),
            private: generator.private,
            main_branch: Some("main".to_owned()),
            updated_on: Some(timestamp::format(updated)),
            created_on: None,
            description: String::new(),
            uuid: None,
        });
    }
}

fn digits(count: usize) -> usize {
    count.max(1).to_string().len()
}

fn unique<'a>(
    kind: &'static str,
    names: impl Iterator<Item = &'a str>,
) -> Result<(), FixtureError> {
    let mut seen = BTreeSet::new();
    for name in names {
        if !seen.insert(name) {
            return Err(FixtureError::Duplicate {
                kind,
                name: name.to_owned(),
            });
        }
    }
    Ok(())
}

fn unknown(what: String, kind: &'static str, name: &str) -> FixtureError {
    FixtureError::UnknownReference {
        what,
        kind,
        name: name.to_owned(),
    }
}

fn check_timestamp(text: &str) -> Result<(), FixtureError> {
    timestamp::parse(text)
        .map(drop)
        .ok_or_else(|| FixtureError::BadTimestamp(text.to_owned()))
}

/// A stable `{8-4-4-4-12}` UUID derived from `seed` (FNV-1a; stable across Rust versions, unlike
/// `DefaultHasher`), so generated objects keep their identity between runs.
pub(crate) fn derived_uuid(seed: &str) -> String {
    let high = fnv1a(seed.as_bytes(), 0xcbf2_9ce4_8422_2325);
    let low = fnv1a(seed.as_bytes(), 0x6c62_272e_07bb_0142);
    let hex = format!("{high:016x}{low:016x}");
    format!(
        "{{{}-{}-4{}-a{}-{}}}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

/// 64-bit FNV-1a, also used for deterministic fake hashes (ETags, commit ids).
pub(crate) fn fnv1a(bytes: &[u8], basis: u64) -> u64 {
    bytes.iter().fold(basis, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_fixture_is_valid() {
        let demo = Fixture::demo().prepare().unwrap();
        assert_eq!(demo.cloud.workspaces[0].repositories.len(), 10);
        assert!(demo.data_center.projects.iter().all(|p| p.id.is_some()));
    }

    #[test]
    fn generators_expand_deterministically_and_quickly() {
        let a = Fixture::demo_with_generated(10_000).prepare().unwrap();
        let b = Fixture::demo_with_generated(10_000).prepare().unwrap();
        assert_eq!(a, b);
        let repos = &a.cloud.workspaces[0].repositories;
        assert_eq!(repos.len(), 10_010);
        assert_eq!(repos[10].slug, "gen-00001");
        assert_eq!(repos.last().unwrap().slug, "gen-10000");
    }

    #[test]
    fn a_yaml_fixture_reads_with_camel_case_and_credential_kinds() {
        let fixture = Fixture::from_yaml(
            r#"
cloud:
  workspaces:
    - slug: acme
      projects: [{key: API}]
      repositories:
        - {slug: api, project: API, mainBranch: main, updatedOn: "2026-01-01T00:00:00+00:00"}
        - {slug: empty, project: API, mainBranch: null}
      generate: {count: 3, prefix: svc, project: API}
  users:
    - {username: jdoe, displayName: Jane, accountId: "1", uuid: "{u}", email: j@example.com, workspaces: [acme]}
  credentials:
    - {kind: apiToken, id: t1, user: jdoe, token: FAKE, scopes: [read:repository:bitbucket]}
    - {kind: accessToken, id: t2, name: CI token, workspace: acme, token: FAKE2, rateLimitPerHour: 5}
dataCenter:
  pageCap: 50
  users: [{name: jdoe, id: 1, displayName: Jane}]
  projects: [{key: "~jdoe", repositories: [{slug: dotfiles}]}]
  credentials:
    - {kind: basic, id: b1, username: jdoe, password: FAKE}
"#,
        )
        .unwrap()
        .prepare()
        .unwrap();
        let ws = &fixture.cloud.workspaces[0];
        assert_eq!(ws.repositories.len(), 5);
        assert_eq!(ws.repositories[1].main_branch, None);
        assert_eq!(fixture.cloud.credentials[1].rate_limit_per_hour, Some(5));
        assert_eq!(fixture.data_center.page_cap, 50);
        assert!(fixture.data_center.projects[0].is_personal());
    }

    #[test]
    fn a_repository_in_an_unknown_project_is_rejected_with_its_name() {
        let mut fixture = Fixture::demo();
        fixture.cloud.workspaces[0].repositories[0].project = "NOPE".to_owned();
        let error = fixture.prepare().unwrap_err();
        assert_eq!(
            error.to_string(),
            "repository acme/api refers to unknown project 'NOPE'"
        );
    }

    #[test]
    fn derived_uuids_are_stable_and_braced() {
        let uuid = derived_uuid("repository/acme/api");
        assert_eq!(uuid, derived_uuid("repository/acme/api"));
        assert_eq!(uuid.len(), 38);
        assert!(uuid.starts_with('{') && uuid.ends_with('}'));
    }
}
