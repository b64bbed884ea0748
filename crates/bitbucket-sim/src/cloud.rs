//! Bitbucket Cloud REST 2.0 as the operator uses it: the caller (`/2.0/user`), its workspaces
//! (`/2.0/user/workspaces`, `/2.0/workspaces/{ws}`), the repository listing
//! (`/2.0/repositories/{ws}` with paging, `fields`, `q`, `sort`) and single repositories; the
//! endpoints removed under CHANGE-2770 answer 410; unknown paths the recorded "no API" 404.
//! Scope checks, access-token restrictions and every error body follow API-FACTS §A–C. Handlers
//! read the shared state under its lock and do no other I/O.

use std::sync::Arc;

use axum::{
    Extension, Router,
    extract::{Path, State},
    response::{IntoResponse, Response},
    routing::get,
};
use http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use serde_json::{Value, json};

use super::{
    Shared,
    auth::{Authentication, Caller, CloudCaller, CloudIdentity, Rejection},
    cloud_query::{Fields, Filter, Sort, order},
    control::lock,
    fixture::{CloudRepository, Workspace},
    templates::{self, CloneUser, recorded},
};

/// Routes under `/2.0` (the fallback for unknown paths is wired in `lib.rs`).
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/2.0/user", get(current_user))
        .route("/2.0/user/workspaces", get(user_workspaces))
        .route("/2.0/workspaces/{workspace}", get(workspace))
        .route("/2.0/repositories/{workspace}", get(repositories))
        .route("/2.0/repositories/{workspace}/{repo_slug}", get(repository))
        // Removed on 2026-04-14 (CHANGE-2770); 410 whoever asks.
        .route("/2.0/repositories", get(gone))
        .route("/2.0/workspaces", get(gone))
        .route("/2.0/user/permissions/workspaces", get(gone))
        .route("/2.0/user/permissions/repositories", get(gone))
}

/// A scope an endpoint needs: the granular name, and the classic one (`None`: any classic
/// scope will do, as for `GET /2.0/workspaces/{ws}`).
struct Needs {
    granular: &'static str,
    classic: Option<&'static str>,
}

const READ_USER: Needs = Needs {
    granular: "read:user:bitbucket",
    classic: Some("account"),
};
const READ_WORKSPACE_AS_USER: Needs = Needs {
    granular: "read:workspace:bitbucket",
    classic: Some("account"),
};
const READ_WORKSPACE: Needs = Needs {
    granular: "read:workspace:bitbucket",
    classic: None,
};
const READ_REPOSITORY: Needs = Needs {
    granular: "read:repository:bitbucket",
    classic: Some("repository"),
};

impl Needs {
    fn check(&self, caller: &CloudCaller) -> Result<(), CloudError> {
        let granted = match self.classic {
            Some(classic) => caller.has_scope(self.granular, classic),
            None => {
                caller.scopes.iter().any(|s| s == self.granular)
                    || caller.scopes.iter().any(|s| !s.ends_with(":bitbucket"))
            }
        };
        if granted {
            Ok(())
        } else {
            Err(CloudError::MissingScope {
                required: self.name_for(caller).to_owned(),
                granted: caller.scopes.clone(),
            })
        }
    }

    /// `X-Accepted-OAuth-Scopes`: in the vocabulary of the caller's credential.
    fn name_for(&self, caller: &CloudCaller) -> &'static str {
        match self.classic {
            Some(classic) => caller.scope_name(self.granular, classic),
            None => self.granular,
        }
    }
}

/// Every way a Cloud request fails, each with the recorded body of the real API.
#[derive(Debug)]
pub(crate) enum CloudError {
    /// No credentials, or rejected Basic credentials: `text/plain` + `WWW-Authenticate`.
    Unauthenticated,
    /// A rejected Bearer token (unknown, expired access token, expired OAuth token).
    Rejected(Rejection),
    /// Authenticated without the scope the endpoint needs.
    MissingScope {
        required: String,
        granted: Vec<String>,
    },
    /// An access token on a user-level endpoint.
    NotForAccessTokens(u16),
    /// An access token on `/2.0/user` (it is not a user).
    AccessTokenIsNotAUser(u16),
    /// Unknown or invisible workspace.
    WorkspaceNotFound(String),
    /// Unknown or invisible repository (`workspace/slug`).
    RepositoryNotFound(String),
    /// A malformed query parameter.
    BadRequest(String),
    /// An endpoint removed under CHANGE-2770.
    Gone,
    /// Authenticated and scoped, but not allowed (e.g. not a workspace owner).
    Forbidden(String),
    /// Another missing object (a webhook).
    NotFound(String),
}

impl IntoResponse for CloudError {
    fn into_response(self) -> Response {
        let json = |status: u16, body: Vec<u8>| {
            cloud_json(
                StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN),
                body,
            )
        };
        let verbatim = |status: u16, text: &'static str| json(status, text.as_bytes().to_vec());
        let message = |status: u16, template: &'static str, message: &str| {
            json(
                status,
                templates::cloud_bytes(&templates::cloud_error(template, message)),
            )
        };
        match self {
            // The real body of this answer was not recorded (only its type); UNCERTAIN.
            Self::Unauthenticated | Self::Rejected(Rejection::Basic) => (
                StatusCode::UNAUTHORIZED,
                [
                    (header::CONTENT_TYPE, "text/plain"),
                    (
                        header::WWW_AUTHENTICATE,
                        "Basic realm=\"Bitbucket.org HTTP\"",
                    ),
                ],
                "Unauthorized",
            )
                .into_response(),
            Self::Rejected(Rejection::Bearer) => {
                verbatim(401, recorded::CLOUD_ERROR_401_TOKEN_INVALID)
            }
            Self::Rejected(Rejection::ExpiredOAuthToken) => message(
                401,
                recorded::CLOUD_ERROR_401_TOKEN_INVALID,
                "Access token expired. Use your refresh token to obtain a new access token.",
            ),
            Self::MissingScope { required, granted } => {
                let body = templates::cloud_missing_scope(&required, &granted);
                let mut response = json(403, templates::cloud_bytes(&body));
                if let Ok(value) = HeaderValue::from_str(&required) {
                    response
                        .headers_mut()
                        .insert("x-accepted-oauth-scopes", value);
                }
                response
            }
            Self::NotForAccessTokens(status) => {
                verbatim(status, recorded::CLOUD_ERROR_ACCESS_TOKEN_NOT_ACCESSIBLE)
            }
            Self::AccessTokenIsNotAUser(status) => {
                verbatim(status, recorded::CLOUD_ERROR_401_TOKEN_INVALID)
            }
            Self::WorkspaceNotFound(workspace) => message(
                404,
                recorded::CLOUD_ERROR_404_REPOSITORY_NOT_FOUND,
                &format!("No workspace with identifier '{workspace}'."),
            ),
            Self::RepositoryNotFound(full_name) => message(
                404,
                recorded::CLOUD_ERROR_404_REPOSITORY_NOT_FOUND,
                &format!("Repository {full_name} not found"),
            ),
            Self::BadRequest(text) => message(400, recorded::CLOUD_ERROR_401_TOKEN_INVALID, &text),
            Self::Gone => verbatim(410, recorded::CLOUD_ERROR_410_CHANGE_2770),
            Self::Forbidden(text) => message(403, recorded::CLOUD_ERROR_401_TOKEN_INVALID, &text),
            Self::NotFound(text) => {
                message(404, recorded::CLOUD_ERROR_404_REPOSITORY_NOT_FOUND, &text)
            }
        }
    }
}

/// `404` for any path under `/2.0` without an API: the recorded body, verbatim.
pub(crate) async fn no_api() -> Response {
    cloud_json(
        StatusCode::NOT_FOUND,
        recorded::CLOUD_ERROR_404_NO_API.as_bytes().to_vec(),
    )
}

async fn gone() -> CloudError {
    CloudError::Gone
}

pub(crate) fn cloud_json(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body,
    )
        .into_response()
}

/// A 200 with `ETag` (`"gz[…]"` like Bitbucket's; the hash is FNV, not MD5) and
/// `X-Accepted-OAuth-Scopes`; `If-None-Match` with the same tag gives 304 (observed on Cloud,
/// API-FACTS §A.8).
fn ok(request: &HeaderMap, accepted: Option<&str>, body: Vec<u8>) -> Response {
    let tag = format!(
        "\"gz[{:016x}{:016x}]\"",
        super::fixture::fnv1a(&body, 0xcbf2_9ce4_8422_2325),
        super::fixture::fnv1a(&body, 0x84222325_cbf29ce4)
    );
    let unchanged = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    let mut response = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        cloud_json(StatusCode::OK, body)
    };
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&tag) {
        headers.insert(header::ETAG, value);
    }
    if let Some(value) = accepted.and_then(|a| HeaderValue::from_str(a).ok()) {
        headers.insert("x-accepted-oauth-scopes", value);
    }
    response
}

/// The authenticated caller, or the 401 for anonymous and rejected requests.
fn require_caller(authn: &Authentication) -> Result<&CloudCaller, CloudError> {
    match &authn.caller {
        Caller::Cloud(caller) => Ok(caller),
        Caller::Rejected(why) => Err(CloudError::Rejected(*why)),
        Caller::Anonymous | Caller::DataCenter(_) => Err(CloudError::Unauthenticated),
    }
}

/// The caller if any; anonymous callers may read public data, rejected ones get a 401.
fn optional_caller(authn: &Authentication) -> Result<Option<&CloudCaller>, CloudError> {
    match &authn.caller {
        Caller::Cloud(caller) => Ok(Some(caller)),
        Caller::Rejected(why) => Err(CloudError::Rejected(*why)),
        Caller::Anonymous | Caller::DataCenter(_) => Ok(None),
    }
}

fn path_and_query(uri: &Uri) -> &str {
    uri.path_and_query().map_or("/", |pq| pq.as_str())
}

async fn current_user(
    State(shared): State<Arc<Shared>>,
    Extension(authn): Extension<Authentication>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, CloudError> {
    let caller = require_caller(&authn)?;
    let world = lock(&shared.world);
    let CloudIdentity::User { username } = &caller.identity else {
        return Err(CloudError::AccessTokenIsNotAUser(
            world.fixture.cloud.access_token_on_user_status,
        ));
    };
    READ_USER.check(caller)?;
    let user = world
        .fixture
        .cloud
        .user(username)
        .ok_or(CloudError::Unauthenticated)?;
    let rendered = templates::cloud_user(user);
    drop(world);
    let body = templates::replay_cloud(path_and_query(&uri), &rendered).map_or_else(
        || templates::cloud_bytes(&rendered),
        |b| b.as_bytes().to_vec(),
    );
    Ok(ok(&headers, Some(READ_USER.name_for(caller)), body))
}

async fn user_workspaces(
    State(shared): State<Arc<Shared>>,
    Extension(authn): Extension<Authentication>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, CloudError> {
    let caller = require_caller(&authn)?;
    let world = lock(&shared.world);
    let cloud = &world.fixture.cloud;
    let CloudIdentity::User { username } = &caller.identity else {
        return Err(CloudError::NotForAccessTokens(
            cloud.access_token_on_user_endpoints_status,
        ));
    };
    READ_WORKSPACE_AS_USER.check(caller)?;
    let params = Params::of(&uri);
    // This endpoint's documented example pages by 25.
    let paging = params.paging(25, cloud.max_pagelen)?;
    let memberships: Vec<_> = cloud
        .user(username)
        .map(|u| u.workspaces.clone())
        .unwrap_or_default();
    let size = memberships.len();
    let values = memberships
        .iter()
        .skip(paging.skip())
        .take(paging.pagelen as usize)
        .filter_map(|m| {
            let ws = cloud.workspace(m.slug())?;
            Some(templates::cloud_workspace_access(ws, m.administrator()))
        })
        .collect();
    let next = paging
        .has_next(size)
        .then(|| params.url_for_page(&shared.origin, uri.path(), paging.page + 1));
    let page =
        templates::cloud_user_workspaces_page(values, paging.pagelen, paging.page, size, next);
    drop(world);
    let body = finish(page, &params)?;
    Ok(ok(
        &headers,
        Some(READ_WORKSPACE_AS_USER.name_for(caller)),
        body,
    ))
}

async fn workspace(
    State(shared): State<Arc<Shared>>,
    Extension(authn): Extension<Authentication>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, CloudError> {
    let caller = optional_caller(&authn)?;
    if let Some(caller) = caller {
        READ_WORKSPACE.check(caller)?;
    }
    let world = lock(&shared.world);
    let ws = world
        .fixture
        .cloud
        .workspace(&id)
        .ok_or_else(|| CloudError::WorkspaceNotFound(id.clone()))?;
    let member = match caller.map(|c| &c.identity) {
        Some(CloudIdentity::User { username }) => world
            .fixture
            .cloud
            .user(username)
            .is_some_and(|u| u.workspaces.iter().any(|m| m.slug() == ws.slug)),
        Some(CloudIdentity::AccessToken { workspace, .. }) => *workspace == ws.slug,
        None => false,
    };
    if !member && ws.private {
        return Err(CloudError::WorkspaceNotFound(id));
    }
    let rendered = templates::cloud_workspace(ws);
    drop(world);
    let body = finish(rendered, &Params::of(&uri))?;
    Ok(ok(
        &headers,
        caller.map(|c| READ_WORKSPACE.name_for(c)),
        body,
    ))
}

/// What part of a workspace a caller sees.
enum View<'a> {
    Everything,
    PublicOnly,
    Restricted {
        project: Option<&'a str>,
        repository: Option<&'a str>,
    },
}

impl View<'_> {
    fn of<'a>(
        caller: Option<&'a CloudCaller>,
        ws: &Workspace,
        world: &'a super::world::World,
    ) -> Result<View<'a>, CloudError> {
        Ok(match caller.map(|c| &c.identity) {
            None => View::PublicOnly,
            Some(CloudIdentity::User { username }) => {
                let member = world
                    .fixture
                    .cloud
                    .user(username)
                    .is_some_and(|u| u.workspaces.iter().any(|m| m.slug() == ws.slug));
                if member {
                    View::Everything
                } else {
                    View::PublicOnly
                }
            }
            Some(CloudIdentity::AccessToken {
                workspace,
                project,
                repository,
            }) => {
                // An access token belongs to one workspace; others do not exist for it.
                if *workspace != ws.slug {
                    return Err(CloudError::WorkspaceNotFound(ws.slug.clone()));
                }
                View::Restricted {
                    project: project.as_deref(),
                    repository: repository.as_deref(),
                }
            }
        })
    }

    fn shows(&self, repo: &CloudRepository) -> bool {
        match self {
            Self::Everything => true,
            Self::PublicOnly => !repo.private,
            Self::Restricted {
                project,
                repository,
            } => {
                project.is_none_or(|p| p == repo.project)
                    && repository.is_none_or(|r| r == repo.slug)
            }
        }
    }
}

/// A repository field by the dotted name `q` and `sort` use; `None` for unknown fields.
fn repo_field(ws: &Workspace, repo: &CloudRepository, field: &str) -> Option<Value> {
    let project = ws.project(&repo.project);
    Some(match field {
        "slug" => json!(repo.slug),
        "name" => json!(repo.name()),
        "full_name" => json!(format!("{}/{}", ws.slug, repo.slug)),
        "uuid" => json!(repo.uuid(&ws.slug)),
        "description" => json!(repo.description),
        "is_private" => json!(repo.private),
        "updated_on" => json!(repo.updated_on()),
        "created_on" => json!(repo.created_on),
        "scm" => json!("git"),
        "project.key" => json!(repo.project),
        "project.name" => json!(
            project
                .and_then(|p| p.name.as_deref())
                .unwrap_or(&repo.project)
        ),
        "project.uuid" => json!(project.and_then(|p| p.uuid.as_deref())),
        "mainbranch.name" => json!(repo.main_branch),
        "workspace.slug" | "owner.username" => json!(ws.slug),
        "workspace.uuid" => json!(ws.uuid()),
        "workspace.name" => json!(ws.name()),
        _ => return None,
    })
}

async fn repositories(
    State(shared): State<Arc<Shared>>,
    Extension(authn): Extension<Authentication>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, CloudError> {
    let caller = optional_caller(&authn)?;
    if let Some(caller) = caller {
        READ_REPOSITORY.check(caller)?;
    }
    let params = Params::of(&uri);
    let query = ListingQuery::of(&params)?;
    let world = lock(&shared.world);
    let paging = params.paging(10, world.fixture.cloud.max_pagelen)?;
    let ws = world
        .fixture
        .cloud
        .workspace(&id)
        .ok_or_else(|| CloudError::WorkspaceNotFound(id.clone()))?;
    let view = View::of(caller, ws, &world)?;
    query.check_fields(ws)?;
    let selected = query.select(ws, &view);
    let clone_user = caller.map(|c| CloneUser(c.clone_username()));
    let page = listing_page(
        ws,
        &selected,
        clone_user.as_ref(),
        &paging,
        &params,
        &shared.origin,
        uri.path(),
    );
    drop(world);
    let body = match templates::replay_cloud(path_and_query(&uri), &page) {
        Some(recorded) => recorded.as_bytes().to_vec(),
        None => finish(page, &params)?,
    };
    Ok(ok(
        &headers,
        caller.map(|c| READ_REPOSITORY.name_for(c)),
        body,
    ))
}

/// `q` and `sort` of a repository listing.
struct ListingQuery {
    filter: Option<Filter>,
    sort: Option<Sort>,
}

impl ListingQuery {
    fn of(params: &Params) -> Result<Self, CloudError> {
        let filter = params
            .get("q")
            .map(|q| {
                Filter::parse(q).map_err(|e| CloudError::BadRequest(format!("Invalid query: {e}")))
            })
            .transpose()?;
        let sort = params.get("sort").map(Sort::parse);
        Ok(Self { filter, sort })
    }

    /// Rejects unknown field names in `q`, then in `sort`. Names are checked against the first
    /// repository, so an empty workspace accepts any.
    fn check_fields(&self, ws: &Workspace) -> Result<(), CloudError> {
        let unknown = |field: &str| {
            ws.repositories
                .first()
                .is_some_and(|r| repo_field(ws, r, field).is_none())
        };
        if let Some(filter) = &self.filter
            && let Some(field) = filter.fields().into_iter().find(|f| unknown(f))
        {
            return Err(CloudError::BadRequest(format!(
                "Invalid field name: '{field}'"
            )));
        }
        if let Some(sort) = &self.sort
            && unknown(&sort.field)
        {
            return Err(CloudError::BadRequest(format!(
                "Invalid sort field: '{}'",
                sort.field
            )));
        }
        Ok(())
    }

    /// The repositories the caller sees that match `q`, in `sort` order (else fixture order).
    fn select<'a>(&self, ws: &'a Workspace, view: &View<'_>) -> Vec<&'a CloudRepository> {
        let mut selected: Vec<&CloudRepository> = ws
            .repositories
            .iter()
            .filter(|r| view.shows(r))
            .filter(|r| {
                self.filter.as_ref().is_none_or(|f| {
                    f.matches(&|field: &str| repo_field(ws, r, field).unwrap_or(Value::Null))
                })
            })
            .collect();
        if let Some(sort) = &self.sort {
            // Stable: ties keep the default (fixture) order.
            selected.sort_by(|a, b| {
                let ordering = order(
                    &repo_field(ws, a, &sort.field).unwrap_or(Value::Null),
                    &repo_field(ws, b, &sort.field).unwrap_or(Value::Null),
                );
                if sort.descending {
                    ordering.reverse()
                } else {
                    ordering
                }
            });
        }
        selected
    }
}

/// The page `paging` asks for out of `selected`, in the Cloud envelope; `next` and `previous`
/// are absolute URLs on `origin` for `path` that keep every query parameter.
fn listing_page(
    ws: &Workspace,
    selected: &[&CloudRepository],
    clone_user: Option<&CloneUser<'_>>,
    paging: &Paging,
    params: &Params,
    origin: &str,
    path: &str,
) -> Value {
    let size = selected.len();
    let values = selected
        .iter()
        .skip(paging.skip())
        .take(paging.pagelen as usize)
        .map(|repo| templates::cloud_repository(ws, repo, clone_user))
        .collect();
    let next = paging
        .has_next(size)
        .then(|| params.url_for_page(origin, path, paging.page + 1));
    let previous = (paging.page > 1).then(|| params.url_for_page(origin, path, paging.page - 1));
    templates::cloud_page(values, paging.pagelen, paging.page, size, next, previous)
}

async fn repository(
    State(shared): State<Arc<Shared>>,
    Extension(authn): Extension<Authentication>,
    Path((id, slug)): Path<(String, String)>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, CloudError> {
    let caller = optional_caller(&authn)?;
    if let Some(caller) = caller {
        READ_REPOSITORY.check(caller)?;
    }
    let world = lock(&shared.world);
    let not_found = || CloudError::RepositoryNotFound(format!("{id}/{slug}"));
    let ws = world.fixture.cloud.workspace(&id).ok_or_else(not_found)?;
    let view = View::of(caller, ws, &world).map_err(|_| not_found())?;
    let repo = ws
        .repositories
        .iter()
        .find(|r| r.slug == slug || r.uuid(&ws.slug) == slug)
        .filter(|r| view.shows(r))
        .ok_or_else(not_found)?;
    let clone_user = caller.map(|c| CloneUser(c.clone_username()));
    let rendered = templates::cloud_repository(ws, repo, clone_user.as_ref());
    drop(world);
    let body = finish(rendered, &Params::of(&uri))?;
    Ok(ok(
        &headers,
        caller.map(|c| READ_REPOSITORY.name_for(c)),
        body,
    ))
}

/// Applies `fields=` and serialises.
fn finish(value: Value, params: &Params) -> Result<Vec<u8>, CloudError> {
    let value = match params.get("fields") {
        Some(spec) => Fields::parse(spec)
            .map_err(CloudError::BadRequest)?
            .apply(value),
        None => value,
    };
    Ok(templates::cloud_bytes(&value))
}

/// Query parameters in their original order (so `next` repeats them faithfully).
struct Params(Vec<(String, String)>);

/// The page a list request asked for.
struct Paging {
    pagelen: u32,
    page: u32,
}

impl Paging {
    fn skip(&self) -> usize {
        (self.page as usize - 1) * self.pagelen as usize
    }
    fn has_next(&self, size: usize) -> bool {
        self.skip() + (self.pagelen as usize) < size
    }
}

impl Params {
    fn of(uri: &Uri) -> Self {
        Self(
            url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
                .into_owned()
                .collect(),
        )
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `pagelen` (default `default`, clamped to 1..=`max`) and `page` (from 1).
    fn paging(&self, default: u32, max: u32) -> Result<Paging, CloudError> {
        let number = |name: &str, fallback: u32| match self.get(name) {
            None => Ok(fallback),
            Some(text) => text
                .trim()
                .parse::<u32>()
                .map_err(|_| CloudError::BadRequest(format!("Invalid {name}: '{text}'"))),
        };
        let pagelen = number("pagelen", default)?.clamp(1, max.max(1));
        let page = number("page", 1)?;
        if page == 0 {
            return Err(CloudError::BadRequest("Invalid page: '0'".to_owned()));
        }
        Ok(Paging { pagelen, page })
    }

    /// An absolute URL on the simulator's origin for another page, keeping every parameter.
    fn url_for_page(&self, origin: &str, path: &str, page: u32) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        let mut wrote_page = false;
        for (key, value) in &self.0 {
            if key == "page" {
                if !wrote_page {
                    query.append_pair("page", &page.to_string());
                    wrote_page = true;
                }
            } else {
                query.append_pair(key, value);
            }
        }
        if !wrote_page {
            query.append_pair("page", &page.to_string());
        }
        format!("{origin}{path}?{}", query.finish())
    }
}
