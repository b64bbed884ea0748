//! The simulator's mutable state: the prepared fixture plus the OAuth tokens issued so far, and
//! the changes tests make between syncs (add, rename, delete a repository; change its privacy or
//! main branch; bump `updated_on`). Pure; no I/O — callers hold it behind a mutex.

use std::collections::HashMap;

use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serialize};

use super::{
    fixture::{
        CloudCredential, CloudCredentialKind, CloudRepository, DcRepository, Fixture, FixtureError,
    },
    timestamp,
};

/// Everything the HTTP handlers read.
#[derive(Debug)]
pub(crate) struct World {
    /// The prepared fixture (generators expanded, ids assigned).
    pub fixture: Fixture,
    /// OAuth tokens issued by the token endpoint.
    pub oauth: OAuthTokens,
}

/// Issued OAuth tokens, by secret.
#[derive(Debug, Default)]
pub(crate) struct OAuthTokens {
    pub access_tokens: HashMap<String, IssuedToken>,
    /// Refresh token → whom it was issued to.
    pub refresh_tokens: HashMap<String, Grantee>,
    /// Rotated-out refresh tokens still accepted until the instant given (Bitbucket retires a
    /// rotated token "shortly after"; the simulator at once unless a grace is set).
    pub retired_refresh_tokens: HashMap<String, (Grantee, Timestamp)>,
    /// How long a rotated-out refresh token keeps working, in seconds (0: not at all).
    pub refresh_grace_seconds: u64,
    /// When each refresh token was rotated out, for as long as the simulator runs.
    pub rotated_out_at: HashMap<String, Timestamp>,
    /// Why refresh grants were refused, oldest first (consumer id and what the token was).
    pub refusals: Vec<String>,
    /// Authorization codes not exchanged yet.
    pub codes: HashMap<String, IssuedCode>,
    /// Overrides every consumer's token lifetime (set through the control API).
    pub lifetime_override: Option<u64>,
    /// What the person at the authorize page does (set through the control API).
    pub consent: Consent,
}

/// Whom a token was issued to: a consumer, acting as its owner or as a user who signed in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Grantee {
    pub consumer_id: String,
    /// The user who authorized the consumer; `None`: the consumer's owner (client credentials).
    pub user: Option<String>,
}

/// One issued access token.
#[derive(Clone, Debug)]
pub(crate) struct IssuedToken {
    pub consumer_id: String,
    /// The user it acts as, when one signed in; otherwise the consumer's owner.
    pub user: Option<String>,
    pub expires_at: Timestamp,
}

/// An authorization code, until it is exchanged.
#[derive(Clone, Debug)]
pub(crate) struct IssuedCode {
    pub grantee: Grantee,
    /// The `redirect_uri` the authorize request named; the exchange must name the same.
    pub redirect_uri: Option<String>,
}

/// What the simulated person at the authorize page does: approve (signed in as `user`, the
/// consumer's owner when absent) or deny.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Consent {
    /// Deny instead of approving.
    #[serde(default)]
    pub deny: bool,
    /// The Atlassian account that signs in (a username of the fixture's Cloud users).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// A change to a Cloud repository; absent fields stay as they are. Every change also moves
/// `updated_on` (to `updatedOn` when given, else to now), as a push or settings change would.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudRepositoryChange {
    /// Rename: new slug (the UUID stays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slug: Option<String>,
    /// New display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Move to another project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// New privacy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private: Option<bool>,
    /// New main branch; `null` empties the repository.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub main_branch: Option<Option<String>>,
    /// New description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Explicit `updated_on` (default: now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_on: Option<String>,
}

/// A change to a Data Center repository; absent fields stay as they are.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DcRepositoryChange {
    /// Rename: new slug (the id stays).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slug: Option<String>,
    /// New display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// New visibility.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<bool>,
    /// Archive or unarchive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived: Option<bool>,
    /// New default branch; `null` empties the repository.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub default_branch: Option<Option<String>>,
}

/// Distinguishes `"field": null` (`Some(None)`) from an absent field (`None`, via `default`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// Why a state change was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    /// The new fixture (or the fixture after the change) is invalid.
    #[error(transparent)]
    Fixture(#[from] FixtureError),
    /// No such workspace / project.
    #[error("unknown {kind} '{name}'")]
    NotFound {
        /// What kind of thing.
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The slug is taken.
    #[error("repository '{0}' already exists")]
    Exists(String),
}

fn not_found(kind: &'static str, name: &str) -> StateError {
    StateError::NotFound {
        kind,
        name: name.to_owned(),
    }
}

fn timestamp_or_now(text: Option<&str>) -> Result<String, StateError> {
    match text {
        None => Ok(timestamp::format(Timestamp::now())),
        Some(text) => timestamp::parse(text)
            .map(|_| text.to_owned())
            .ok_or_else(|| FixtureError::BadTimestamp(text.to_owned()).into()),
    }
}

impl World {
    pub(crate) fn new(fixture: Fixture) -> Self {
        Self {
            fixture,
            oauth: OAuthTokens::default(),
        }
    }

    /// Replaces the data; issued OAuth tokens stay valid while their consumer exists.
    pub(crate) fn replace_fixture(&mut self, fixture: Fixture) -> Result<(), StateError> {
        self.fixture = fixture.prepare()?;
        Ok(())
    }

    /// Sets when a credential stops working; false when there is no credential `id`.
    pub(crate) fn set_credential_expiry(&mut self, id: &str, at: Option<String>) -> bool {
        let fixture = &mut self.fixture;
        if let Some(credential) = fixture.cloud.credentials.iter_mut().find(|c| c.id == id) {
            credential.expires_at = at;
            return true;
        }
        if let Some(credential) = fixture
            .data_center
            .credentials
            .iter_mut()
            .find(|c| c.id == id)
        {
            credential.expires_at = at;
            return true;
        }
        false
    }

    /// The OAuth consumer with this client id.
    pub(crate) fn consumer_by_client_id(&self, client_id: &str) -> Option<&CloudCredential> {
        self.fixture.cloud.credentials.iter().find(|c| {
            matches!(&c.kind, CloudCredentialKind::OauthConsumer { client_id: id, .. } if id == client_id)
        })
    }

    pub(crate) fn add_cloud_repository(
        &mut self,
        workspace: &str,
        mut repo: CloudRepository,
    ) -> Result<(), StateError> {
        let ws = self
            .fixture
            .cloud
            .workspace_mut(workspace)
            .ok_or_else(|| not_found("workspace", workspace))?;
        if ws.project(&repo.project).is_none() {
            return Err(not_found("project", &repo.project));
        }
        if ws.repositories.iter().any(|r| r.slug == repo.slug) {
            return Err(StateError::Exists(repo.slug));
        }
        repo.updated_on = Some(timestamp_or_now(repo.updated_on.as_deref())?);
        ws.repositories.push(repo);
        Ok(())
    }

    pub(crate) fn change_cloud_repository(
        &mut self,
        workspace: &str,
        slug: &str,
        change: CloudRepositoryChange,
    ) -> Result<(), StateError> {
        let ws = self
            .fixture
            .cloud
            .workspace_mut(workspace)
            .ok_or_else(|| not_found("workspace", workspace))?;
        if let Some(project) = &change.project
            && ws.project(project).is_none()
        {
            return Err(not_found("project", project));
        }
        if let Some(new_slug) = &change.slug
            && new_slug != slug
            && ws.repositories.iter().any(|r| &r.slug == new_slug)
        {
            return Err(StateError::Exists(new_slug.clone()));
        }
        let ws_slug = ws.slug.clone();
        let updated_on = timestamp_or_now(change.updated_on.as_deref())?;
        let repo = ws
            .repositories
            .iter_mut()
            .find(|r| r.slug == slug)
            .ok_or_else(|| not_found("repository", slug))?;
        if let Some(new_slug) = change.slug {
            // A rename keeps the repository's identity, as on Bitbucket.
            repo.uuid = Some(repo.uuid(&ws_slug));
            repo.slug = new_slug;
        }
        if let Some(name) = change.name {
            repo.name = Some(name);
        }
        if let Some(project) = change.project {
            repo.project = project;
        }
        if let Some(private) = change.private {
            repo.private = private;
        }
        if let Some(branch) = change.main_branch {
            repo.main_branch = branch;
        }
        if let Some(description) = change.description {
            repo.description = description;
        }
        repo.updated_on = Some(updated_on);
        Ok(())
    }

    pub(crate) fn delete_cloud_repository(
        &mut self,
        workspace: &str,
        slug: &str,
    ) -> Result<(), StateError> {
        let ws = self
            .fixture
            .cloud
            .workspace_mut(workspace)
            .ok_or_else(|| not_found("workspace", workspace))?;
        let before = ws.repositories.len();
        ws.repositories.retain(|r| r.slug != slug);
        if ws.repositories.len() == before {
            return Err(not_found("repository", slug));
        }
        Ok(())
    }

    pub(crate) fn add_dc_repository(
        &mut self,
        project_key: &str,
        mut repo: DcRepository,
    ) -> Result<(), StateError> {
        let next_id = 1 + self
            .fixture
            .data_center
            .projects
            .iter()
            .flat_map(|p| &p.repositories)
            .filter_map(|r| r.id)
            .max()
            .unwrap_or(0);
        let project = self
            .fixture
            .data_center
            .project_mut(project_key)
            .ok_or_else(|| not_found("project", project_key))?;
        if project.repositories.iter().any(|r| r.slug == repo.slug) {
            return Err(StateError::Exists(repo.slug));
        }
        repo.id.get_or_insert(next_id);
        project.repositories.push(repo);
        Ok(())
    }

    pub(crate) fn change_dc_repository(
        &mut self,
        project_key: &str,
        slug: &str,
        change: DcRepositoryChange,
    ) -> Result<(), StateError> {
        let project = self
            .fixture
            .data_center
            .project_mut(project_key)
            .ok_or_else(|| not_found("project", project_key))?;
        if let Some(new_slug) = &change.slug
            && new_slug != slug
            && project.repositories.iter().any(|r| &r.slug == new_slug)
        {
            return Err(StateError::Exists(new_slug.clone()));
        }
        let repo = project
            .repositories
            .iter_mut()
            .find(|r| r.slug == slug)
            .ok_or_else(|| not_found("repository", slug))?;
        if let Some(new_slug) = change.slug {
            repo.slug = new_slug;
        }
        if let Some(name) = change.name {
            repo.name = Some(name);
        }
        if let Some(public) = change.public {
            repo.public = public;
        }
        if let Some(archived) = change.archived {
            repo.archived = archived;
        }
        if let Some(branch) = change.default_branch {
            repo.default_branch = branch;
        }
        Ok(())
    }

    pub(crate) fn delete_dc_repository(
        &mut self,
        project_key: &str,
        slug: &str,
    ) -> Result<(), StateError> {
        let project = self
            .fixture
            .data_center
            .project_mut(project_key)
            .ok_or_else(|| not_found("project", project_key))?;
        let before = project.repositories.len();
        project.repositories.retain(|r| r.slug != slug);
        if project.repositories.len() == before {
            return Err(not_found("repository", slug));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world() -> World {
        World::new(Fixture::demo().prepare().unwrap())
    }

    #[test]
    fn a_rename_keeps_the_uuid_and_bumps_updated_on() {
        let mut world = world();
        let before = world.fixture.cloud.workspaces[0].repositories[0].clone();
        world
            .change_cloud_repository(
                "acme",
                "api",
                CloudRepositoryChange {
                    slug: Some("api-v2".into()),
                    ..Default::default()
                },
            )
            .unwrap();
        let after = &world.fixture.cloud.workspaces[0].repositories[0];
        assert_eq!(after.slug, "api-v2");
        assert_eq!(after.uuid("acme"), before.uuid("acme"));
        assert!(
            timestamp::parse(after.updated_on()).unwrap()
                > timestamp::parse(before.updated_on()).unwrap()
        );
    }

    #[test]
    fn a_null_main_branch_empties_a_repository_and_an_absent_one_leaves_it() {
        let change: CloudRepositoryChange =
            serde_json::from_str(r#"{"mainBranch": null}"#).unwrap();
        assert_eq!(change.main_branch, Some(None));
        let change: CloudRepositoryChange = serde_json::from_str("{}").unwrap();
        assert_eq!(change.main_branch, None);
    }

    #[test]
    fn adding_a_taken_slug_is_refused() {
        let mut world = world();
        let existing = world.fixture.cloud.workspaces[0].repositories[0].clone();
        assert_eq!(
            world.add_cloud_repository("acme", existing),
            Err(StateError::Exists("api".into()))
        );
    }
}
