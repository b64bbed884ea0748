//! Bitbucket Data Center REST 1.0 as the operator uses it: the anonymous version probe
//! (`application-properties`), users, repository listings per project and across projects with
//! `start`/`limit` paging, single repositories and their default branch. Permissions follow
//! API-FACTS §D: 401 for bad credentials *and* for missing permission, 404 for missing objects;
//! public projects and repositories are readable by everyone. `/rest/api/latest` is an alias.
//! Handlers read the shared state under its lock and do no other I/O.

use std::sync::Arc;

use axum::{
    Extension, Router,
    extract::{Path, State},
    response::{IntoResponse, Response},
    routing::get,
};
use http::{StatusCode, Uri, header};
use serde_json::Value;

use super::{
    Shared,
    auth::{Authentication, Caller, DcCaller},
    control::lock,
    fixture::{DcProject, DcRepository},
    templates::{self, CloneUser, DcOrigin, recorded},
};

/// Routes under `/rest/api/1.0` and its alias `/rest/api/latest`.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    let mut router = Router::new();
    for version in ["1.0", "latest"] {
        let base = format!("/rest/api/{version}");
        router = router
            .route(
                &format!("{base}/application-properties"),
                get(application_properties),
            )
            .route(&format!("{base}/users/{{user_slug}}"), get(user))
            .route(&format!("{base}/repos"), get(all_repositories))
            .route(
                &format!("{base}/projects/{{project_key}}/repos"),
                get(project_repositories),
            )
            .route(
                &format!("{base}/projects/{{project_key}}/repos/{{repository_slug}}"),
                get(repository),
            )
            .route(
                &format!(
                    "{base}/projects/{{project_key}}/repos/{{repository_slug}}/default-branch"
                ),
                get(default_branch),
            );
    }
    router
}

/// Every way a Data Center request fails, with Data Center's errors body.
#[derive(Debug)]
pub(crate) enum DcError {
    /// Credentials presented and rejected (message UNCERTAIN, see SIMULATOR.md).
    AuthenticationFailed,
    /// Anonymous or authenticated without permission: also 401 on Data Center.
    NotPermitted,
    NoSuchProject(String),
    NoSuchRepository(String),
    NoSuchUser(String),
    /// An empty repository's default branch (status from the fixture; UNCERTAIN).
    NoDefaultBranch {
        repository: String,
        status: u16,
    },
    /// A malformed paging parameter (`context` names it).
    BadRequest {
        parameter: &'static str,
        value: String,
    },
    /// No such REST resource.
    NoResource,
}

impl IntoResponse for DcError {
    fn into_response(self) -> Response {
        let (status, template, message, exception) = match self {
            Self::AuthenticationFailed => (
                401,
                recorded::DC_ERROR_404_NO_SUCH_PROJECT,
                "Authentication failed. Please check your credentials and try again.".to_owned(),
                "com.atlassian.bitbucket.auth.IncorrectPasswordAuthenticationException",
            ),
            Self::NotPermitted => (
                401,
                recorded::DC_ERROR_404_NO_SUCH_PROJECT,
                "You are not permitted to access this resource".to_owned(),
                "com.atlassian.bitbucket.AuthorisationException",
            ),
            Self::NoSuchProject(key) => (
                404,
                recorded::DC_ERROR_404_NO_SUCH_PROJECT,
                format!("Project {key} does not exist."),
                "com.atlassian.bitbucket.project.NoSuchProjectException",
            ),
            Self::NoSuchRepository(name) => (
                404,
                recorded::DC_ERROR_404_NO_SUCH_REPOSITORY,
                format!("Repository {name} does not exist."),
                "com.atlassian.bitbucket.repository.NoSuchRepositoryException",
            ),
            Self::NoSuchUser(slug) => (
                404,
                recorded::DC_ERROR_404_NO_SUCH_PROJECT,
                format!("User {slug} does not exist."),
                "com.atlassian.bitbucket.user.NoSuchUserException",
            ),
            Self::NoDefaultBranch { status: 204, .. } => {
                return StatusCode::NO_CONTENT.into_response();
            }
            Self::NoDefaultBranch { repository, status } => (
                status,
                recorded::DC_ERROR_404_NO_SUCH_REPOSITORY,
                format!("Repository {repository} does not have a default branch."),
                "com.atlassian.bitbucket.repository.NoSuchBranchException",
            ),
            Self::BadRequest { parameter, value } => {
                let mut body = templates::dc_error(
                    recorded::DC_ERROR_404_NO_SUCH_PROJECT,
                    &format!("'{value}' is not a valid value for {parameter}."),
                    "com.atlassian.bitbucket.validation.ArgumentValidationException",
                );
                body["errors"][0]["context"] = Value::String(parameter.to_owned());
                return dc_json(StatusCode::BAD_REQUEST, templates::dc_bytes(&body));
            }
            Self::NoResource => (
                404,
                recorded::DC_ERROR_404_NO_SUCH_PROJECT,
                "No REST resource exists at this URL.".to_owned(),
                "com.sun.jersey.api.NotFoundException",
            ),
        };
        let body = templates::dc_error(template, &message, exception);
        dc_json(
            StatusCode::from_u16(status).unwrap_or(StatusCode::NOT_FOUND),
            templates::dc_bytes(&body),
        )
    }
}

/// 404 for unknown paths under `/rest`.
pub(crate) async fn no_resource() -> Response {
    DcError::NoResource.into_response()
}

pub(crate) fn dc_json(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json;charset=UTF-8")],
        body,
    )
        .into_response()
}

/// The authenticated caller, `None` for anonymous, or the 401 for rejected credentials.
fn caller(authn: &Authentication) -> Result<Option<&DcCaller>, DcError> {
    match &authn.caller {
        Caller::DataCenter(caller) => Ok(Some(caller)),
        Caller::Rejected(_) => Err(DcError::AuthenticationFailed),
        Caller::Anonymous | Caller::Cloud(_) => Ok(None),
    }
}

fn project_readable(caller: Option<&DcCaller>, project: &DcProject) -> bool {
    project.public || caller.is_some_and(|c| c.may_read(&project.key))
}

fn repository_readable(
    caller: Option<&DcCaller>,
    project: &DcProject,
    repo: &DcRepository,
) -> bool {
    repo.public || project_readable(caller, project)
}

/// Data Center paging: `start` (default 0) and `limit` (default 25, capped by the server).
struct Paging {
    start: usize,
    limit: u32,
}

impl Paging {
    fn of(params: &[(String, String)], cap: u32) -> Result<Self, DcError> {
        let get = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let start = match get("start") {
            None => 0,
            Some(text) => text.parse().map_err(|_| DcError::BadRequest {
                parameter: "start",
                value: text.to_owned(),
            })?,
        };
        let limit = match get("limit") {
            None => 25,
            Some(text) => text.parse::<u32>().map_err(|_| DcError::BadRequest {
                parameter: "limit",
                value: text.to_owned(),
            })?,
        };
        Ok(Self {
            start,
            limit: limit.clamp(1, cap.max(1)),
        })
    }

    fn page<'a, T>(&self, all: &'a [T]) -> (&'a [T], Option<usize>) {
        let start = self.start.min(all.len());
        let end = (start + self.limit as usize).min(all.len());
        let next = (end < all.len()).then_some(end);
        (&all[start..end], next)
    }
}

fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// Renders one page of `(project, repository)` pairs, replaying a recording when it matches.
fn page_response(
    shared: &Shared,
    uri: &Uri,
    caller: Option<&DcCaller>,
    paging: &Paging,
    repos: &[(&DcProject, &DcRepository)],
) -> Response {
    let (slice, next) = paging.page(repos);
    let origin = DcOrigin {
        base: &shared.origin,
    };
    let clone_user = caller.map(|c| CloneUser(&c.username));
    let values = slice
        .iter()
        .map(|(project, repo)| {
            templates::dc_repository(project, repo, &origin, clone_user.as_ref())
        })
        .collect();
    let page = templates::dc_page(values, paging.limit, paging.start, next);
    let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let body = match templates::replay_dc(path_and_query, &page) {
        Some(recorded) => recorded.as_bytes().to_vec(),
        None => templates::dc_bytes(&page),
    };
    dc_json(StatusCode::OK, body)
}

async fn application_properties(
    Extension(authn): Extension<Authentication>,
) -> Result<Response, DcError> {
    caller(&authn)?;
    Ok(dc_json(
        StatusCode::OK,
        recorded::DC_APPLICATION_PROPERTIES.as_bytes().to_vec(),
    ))
}

async fn user(
    State(shared): State<Arc<Shared>>,
    Extension(authn): Extension<Authentication>,
    Path(slug): Path<String>,
) -> Result<Response, DcError> {
    if caller(&authn)?.is_none() {
        return Err(DcError::NotPermitted);
    }
    let world = lock(&shared.world);
    let user = world
        .fixture
        .data_center
        .users
        .iter()
        .find(|u| u.slug().eq_ignore_ascii_case(&slug))
        .ok_or(DcError::NoSuchUser(slug))?;
    let body = templates::dc_user(
        user,
        &DcOrigin {
            base: &shared.origin,
        },
    );
    Ok(dc_json(StatusCode::OK, templates::dc_bytes(&body)))
}

async fn project_repositories(
    State(shared): State<Arc<Shared>>,
    Extension(authn): Extension<Authentication>,
    Path(key): Path<String>,
    uri: Uri,
) -> Result<Response, DcError> {
    let caller = caller(&authn)?;
    let world = lock(&shared.world);
    let dc = &world.fixture.data_center;
    let paging = Paging::of(&query_pairs(&uri), dc.page_cap)?;
    let project = dc.project(&key).ok_or(DcError::NoSuchProject(key))?;
    let repos: Vec<_> = project
        .repositories
        .iter()
        .filter(|r| repository_readable(caller, project, r))
        .map(|r| (project, r))
        .collect();
    if !project_readable(caller, project) && repos.is_empty() {
        return Err(DcError::NotPermitted);
    }
    Ok(page_response(&shared, &uri, caller, &paging, &repos))
}

async fn all_repositories(
    State(shared): State<Arc<Shared>>,
    Extension(authn): Extension<Authentication>,
    uri: Uri,
) -> Result<Response, DcError> {
    let caller = caller(&authn)?;
    let params = query_pairs(&uri);
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let archived = get("archived").unwrap_or("ACTIVE").to_ascii_uppercase();
    if !matches!(archived.as_str(), "ACTIVE" | "ARCHIVED" | "ALL") {
        return Err(DcError::BadRequest {
            parameter: "archived",
            value: archived,
        });
    }
    let name = get("name").map(str::to_lowercase);
    let visibility = get("visibility").map(str::to_ascii_lowercase);
    let world = lock(&shared.world);
    let dc = &world.fixture.data_center;
    let paging = Paging::of(&params, dc.page_cap)?;
    let repos: Vec<_> = dc
        .projects
        .iter()
        .filter(|p| get("projectkey").is_none_or(|k| p.key.eq_ignore_ascii_case(k)))
        .flat_map(|p| p.repositories.iter().map(move |r| (p, r)))
        .filter(|(p, r)| repository_readable(caller, p, r))
        .filter(|(_, r)| match archived.as_str() {
            "ACTIVE" => !r.archived,
            "ARCHIVED" => r.archived,
            _ => true,
        })
        .filter(|(_, r)| {
            name.as_deref()
                .is_none_or(|n| r.name().to_lowercase().contains(n))
        })
        .filter(|(_, r)| match visibility.as_deref() {
            Some("public") => r.public,
            Some("private") => !r.public,
            _ => true,
        })
        .collect();
    Ok(page_response(&shared, &uri, caller, &paging, &repos))
}

/// Finds a readable repository, mapping absence and lack of permission to Data Center's codes.
fn find<'a>(
    world: &'a super::world::World,
    caller: Option<&DcCaller>,
    key: &str,
    slug: &str,
) -> Result<(&'a DcProject, &'a DcRepository), DcError> {
    let project = world
        .fixture
        .data_center
        .project(key)
        .ok_or_else(|| DcError::NoSuchProject(key.to_owned()))?;
    let repo = project
        .repositories
        .iter()
        .find(|r| r.slug == slug)
        .ok_or_else(|| DcError::NoSuchRepository(format!("{}/{slug}", project.key)))?;
    if !repository_readable(caller, project, repo) {
        return Err(DcError::NotPermitted);
    }
    Ok((project, repo))
}

async fn repository(
    State(shared): State<Arc<Shared>>,
    Extension(authn): Extension<Authentication>,
    Path((key, slug)): Path<(String, String)>,
) -> Result<Response, DcError> {
    let caller = caller(&authn)?;
    let world = lock(&shared.world);
    let (project, repo) = find(&world, caller, &key, &slug)?;
    let clone_user = caller.map(|c| CloneUser(&c.username));
    let body = templates::dc_repository(
        project,
        repo,
        &DcOrigin {
            base: &shared.origin,
        },
        clone_user.as_ref(),
    );
    Ok(dc_json(StatusCode::OK, templates::dc_bytes(&body)))
}

async fn default_branch(
    State(shared): State<Arc<Shared>>,
    Extension(authn): Extension<Authentication>,
    Path((key, slug)): Path<(String, String)>,
) -> Result<Response, DcError> {
    let caller = caller(&authn)?;
    let world = lock(&shared.world);
    let (project, repo) = find(&world, caller, &key, &slug)?;
    let Some(branch) = &repo.default_branch else {
        return Err(DcError::NoDefaultBranch {
            repository: format!("{}/{}", project.key, repo.slug),
            status: world.fixture.data_center.empty_default_branch_status,
        });
    };
    let body = templates::dc_default_branch(project, repo, branch);
    Ok(dc_json(StatusCode::OK, templates::dc_bytes(&body)))
}
