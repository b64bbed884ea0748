//! Webhooks as Bitbucket keeps and sends them: Cloud workspace hooks
//! (`/2.0/workspaces/{workspace}/hooks`, and `GET /2.0/hook_events/workspace`) and Data Center
//! project hooks (`/rest/api/1.0/projects/{key}/webhooks`), and the signed deliveries the
//! simulator sends to them when its data changes through the control API. Payloads are the
//! recorded deliveries of `testdata/bitbucket/webhooks/` with the repository replaced; headers
//! are Bitbucket's (`X-Event-Key`, `X-Hook-UUID` and `X-Request-UUID` on Cloud, `X-Request-Id`
//! on Data Center, `X-Hub-Signature: sha256=<hex HMAC of the body>` when the hook has a
//! secret). Cloud tries a delivery up to three times (on a 5xx or no answer within 10 s), Data
//! Center once. The handlers do no I/O but the deliveries, which run as tasks.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Extension, Json, Router,
    extract::{Path, State},
    response::{IntoResponse, Response},
    routing::get,
};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    Shared,
    auth::{Authentication, Caller, CloudCaller, CloudIdentity},
    cloud::{CloudError, cloud_json},
    control::lock,
    datacenter::{DcError, dc_json},
    fixture::{CloudRepository, DcProject, DcRepository, Workspace},
    templates::{self, DcOrigin},
};

/// The recorded deliveries the payloads are written from.
mod recorded {
    pub(super) const CLOUD_PUSH: &str =
        include_str!("../../../testdata/bitbucket/webhooks/cloud-repo-push-signed.json");
    pub(super) const CLOUD_UPDATED: &str =
        include_str!("../../../testdata/bitbucket/webhooks/cloud-repo-updated.json");
    pub(super) const DC_REFS_CHANGED: &str = include_str!(
        "../../../testdata/bitbucket/webhooks/datacenter-repo-refs_changed-signed.json"
    );
    pub(super) const DC_MODIFIED: &str =
        include_str!("../../../testdata/bitbucket/webhooks/datacenter-repo-modified-signed.json");
    pub(super) const CLOUD_WEBHOOK: &str =
        include_str!("../../../testdata/bitbucket/cloud-webhook.json");
}

/// Cloud's deadline for an answer, and how often it tries.
const CLOUD_TIMEOUT: Duration = Duration::from_secs(10);
const CLOUD_ATTEMPTS: u32 = 3;

/// The events a Cloud workspace hook may subscribe to, as `GET /2.0/hook_events/workspace`
/// lists them. Atlassian's reference shows only a truncated example (`repo:push`, `repo:fork`,
/// `repo:imported`, `pullrequest:approved`) and says workspace hooks "are fired for events from
/// all repositories contained by that workspace"; whether `repo:created` and `repo:deleted`
/// are among them is not documented (UNCERTAIN: testdata/bitbucket/SIMULATOR.md). Tests change
/// the list with `Control::set_workspace_hook_events`.
pub const DEFAULT_WORKSPACE_EVENTS: [&str; 9] = [
    "repo:push",
    "repo:fork",
    "repo:updated",
    "repo:created",
    "repo:deleted",
    "repo:imported",
    "repo:transfer",
    "pullrequest:created",
    "pullrequest:approved",
];

/// The hooks the simulated Bitbucket holds, and what it delivered.
#[derive(Debug)]
pub(crate) struct Hooks {
    cloud: Vec<CloudHook>,
    dc: Vec<DcHook>,
    next: u64,
    pub workspace_events: Vec<String>,
    pub deliveries: Vec<Delivery>,
}

impl Default for Hooks {
    fn default() -> Self {
        Self {
            cloud: Vec::new(),
            dc: Vec::new(),
            next: 1,
            workspace_events: DEFAULT_WORKSPACE_EVENTS.map(String::from).to_vec(),
            deliveries: Vec::new(),
        }
    }
}

#[derive(Clone, Debug)]
struct CloudHook {
    uuid: String,
    workspace: String,
    description: String,
    url: String,
    active: bool,
    secret: Option<String>,
    events: Vec<String>,
    created_at: String,
}

#[derive(Clone, Debug)]
struct DcHook {
    id: u64,
    project: String,
    name: String,
    url: String,
    active: bool,
    secret: Option<String>,
    events: Vec<String>,
    created: i64,
    updated: i64,
}

/// One delivery the simulator sent (the last attempt's answer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    pub url: String,
    pub event: String,
    /// `X-Request-UUID` (Cloud) or `X-Request-Id` (Data Center).
    pub request_id: String,
    pub attempts: u32,
    /// The receiver's status; `None` when it never answered.
    pub status: Option<u16>,
    /// How long from the change to the last answer, in milliseconds.
    pub millis: u64,
}

/// A hook as listed, for tests: `(owner, url, events, has a secret)`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RegisteredHook {
    /// The workspace slug (Cloud) or project key (Data Center).
    pub owner: String,
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub active: bool,
    pub secret: Option<String>,
}

impl Hooks {
    pub(crate) fn registered(&self) -> Vec<RegisteredHook> {
        let cloud = self.cloud.iter().map(|h| RegisteredHook {
            owner: h.workspace.clone(),
            id: h.uuid.clone(),
            url: h.url.clone(),
            events: h.events.clone(),
            active: h.active,
            secret: h.secret.clone(),
        });
        let dc = self.dc.iter().map(|h| RegisteredHook {
            owner: h.project.clone(),
            id: h.id.to_string(),
            url: h.url.clone(),
            events: h.events.clone(),
            active: h.active,
            secret: h.secret.clone(),
        });
        cloud.chain(dc).collect()
    }

    /// Removes a hook behind the client's back (as a person in Bitbucket's settings would).
    pub(crate) fn remove(&mut self, id: &str) -> bool {
        let before = self.cloud.len() + self.dc.len();
        self.cloud.retain(|h| h.uuid != id);
        self.dc.retain(|h| h.id.to_string() != id);
        before != self.cloud.len() + self.dc.len()
    }
}

pub(crate) fn routes() -> Router<Arc<Shared>> {
    let mut router = Router::new()
        .route("/2.0/hook_events/workspace", get(workspace_events))
        .route(
            "/2.0/workspaces/{workspace}/hooks",
            get(list_cloud).post(create_cloud),
        )
        .route(
            "/2.0/workspaces/{workspace}/hooks/{uid}",
            get(get_cloud).put(update_cloud).delete(delete_cloud),
        );
    for version in ["1.0", "latest"] {
        let base = format!("/rest/api/{version}/projects/{{project_key}}/webhooks");
        router = router.route(&base, get(list_dc).post(create_dc)).route(
            &format!("{base}/{{id}}"),
            get(get_dc).put(update_dc).delete(delete_dc),
        );
    }
    router
}

// ---- Cloud ----

/// `GET /2.0/hook_events/workspace`: public, one page.
async fn workspace_events(State(shared): State<Arc<Shared>>) -> Response {
    let events = lock(&shared.hooks).workspace_events.clone();
    let values: Vec<Value> = events
        .iter()
        .map(|event| {
            let category = event.split(':').next().unwrap_or_default();
            json!({"event": event, "category": category, "label": event,
                "description": format!("{event} in any repository of the workspace")})
        })
        .collect();
    let page = json!({"pagelen": 50, "size": values.len(), "page": 1, "values": values});
    cloud_json(StatusCode::OK, templates::cloud_bytes(&page))
}

/// The body of a create or update, as the OpenAPI spec describes it.
#[derive(Deserialize)]
struct CloudHookBody {
    #[serde(default)]
    description: String,
    url: String,
    #[serde(default = "yes")]
    active: bool,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    events: Vec<String>,
}

fn yes() -> bool {
    true
}

/// Who may read (`write` false) or change a workspace's hooks: its administrators, or an access
/// token of the workspace, holding the `webhook` scope (granular: read/write:webhook:bitbucket).
fn cloud_hook_access<'a>(
    authn: &'a Authentication,
    world: &super::world::World,
    workspace: &Workspace,
    write: bool,
) -> Result<&'a CloudCaller, CloudError> {
    let caller = match &authn.caller {
        Caller::Cloud(caller) => caller,
        Caller::Rejected(why) => return Err(CloudError::Rejected(*why)),
        Caller::Anonymous | Caller::DataCenter(_) => return Err(CloudError::Unauthenticated),
    };
    let granular = if write {
        "write:webhook:bitbucket"
    } else {
        "read:webhook:bitbucket"
    };
    if !caller.has_scope(granular, "webhook") {
        return Err(CloudError::MissingScope {
            required: caller.scope_name(granular, "webhook").to_owned(),
            granted: caller.scopes.clone(),
        });
    }
    let owner = match &caller.identity {
        CloudIdentity::User { username } => (world.fixture.cloud.users.iter())
            .filter(|u| u.username == *username)
            .flat_map(|u| &u.workspaces)
            .any(|m| m.slug() == workspace.slug && m.administrator()),
        CloudIdentity::AccessToken {
            workspace: ws,
            project: None,
            repository: None,
        } => *ws == workspace.slug,
        CloudIdentity::AccessToken { .. } => false,
    };
    if owner {
        Ok(caller)
    } else {
        Err(CloudError::Forbidden(
            "Only workspace owners can install webhooks on workspaces.".into(),
        ))
    }
}

fn cloud_hook_json(hook: &CloudHook, workspace: &Workspace, origin: &str) -> Value {
    let mut value: Value = serde_json::from_str(recorded::CLOUD_WEBHOOK).expect("recorded JSON");
    value["uuid"] = json!(hook.uuid);
    value["description"] = json!(hook.description);
    value["url"] = json!(hook.url);
    value["active"] = json!(hook.active);
    value["events"] = json!(hook.events);
    value["created_at"] = json!(hook.created_at);
    value["secret_set"] = json!(hook.secret.is_some());
    value["subject_type"] = json!("workspace");
    value["subject"] = templates::cloud_workspace(workspace);
    value["links"]["self"]["href"] = json!(format!(
        "{origin}/2.0/workspaces/{}/hooks/{}",
        workspace.slug,
        hook.uuid.replace('{', "%7B").replace('}', "%7D")
    ));
    value
}

/// Checks a create or update against the workspace's events; the hook it describes.
fn cloud_hook_of(body: CloudHookBody, allowed: &[String]) -> Result<CloudHookBody, CloudError> {
    if !(body.url.starts_with("http://") || body.url.starts_with("https://")) {
        return Err(CloudError::BadRequest(format!(
            "url: '{}' is not a valid URL",
            body.url
        )));
    }
    if let Some(unknown) = body.events.iter().find(|e| !allowed.contains(e)) {
        return Err(CloudError::BadRequest(format!(
            "events: '{unknown}' is not a valid event for a workspace webhook"
        )));
    }
    if body.secret.as_ref().is_some_and(|s| s.len() > 128) {
        return Err(CloudError::BadRequest(
            "secret: at most 128 characters".into(),
        ));
    }
    Ok(body)
}

fn workspace_of<'a>(
    world: &'a super::world::World,
    slug: &str,
) -> Result<&'a Workspace, CloudError> {
    world
        .fixture
        .cloud
        .workspace(slug)
        .ok_or_else(|| CloudError::WorkspaceNotFound(slug.to_owned()))
}

async fn list_cloud(
    State(shared): State<Arc<Shared>>,
    Extension(authn): Extension<Authentication>,
    Path(workspace): Path<String>,
) -> Result<Response, CloudError> {
    let world = lock(&shared.world);
    let ws = workspace_of(&world, &workspace)?;
    cloud_hook_access(&authn, &world, ws, false)?;
    let hooks = lock(&shared.hooks);
    let values: Vec<Value> = (hooks.cloud.iter())
        .filter(|h| h.workspace == ws.slug)
        .map(|h| cloud_hook_json(h, ws, &shared.origin))
        .collect();
    let page = json!({"pagelen": 10, "size": values.len(), "page": 1, "values": values});
    Ok(cloud_json(StatusCode::OK, templates::cloud_bytes(&page)))
}

async fn create_cloud(
    State(shared): State<Arc<Shared>>,
    Extension(authn): Extension<Authentication>,
    Path(workspace): Path<String>,
    Json(body): Json<CloudHookBody>,
) -> Result<Response, CloudError> {
    let world = lock(&shared.world);
    let ws = workspace_of(&world, &workspace)?;
    cloud_hook_access(&authn, &world, ws, true)?;
    let mut hooks = lock(&shared.hooks);
    let body = cloud_hook_of(body, &hooks.workspace_events)?;
    let n = hooks.next;
    hooks.next += 1;
    let hook = CloudHook {
        uuid: format!("{{{:08x}-5eed-4b00-8000-{n:012x}}}", n),
        workspace: ws.slug.clone(),
        description: body.description,
        url: body.url,
        active: body.active,
        secret: body.secret.filter(|s| !s.is_empty()),
        events: body.events,
        created_at: jiff::Timestamp::now().to_string(),
    };
    let json = cloud_hook_json(&hook, ws, &shared.origin);
    hooks.cloud.push(hook);
    Ok(cloud_json(
        StatusCode::CREATED,
        templates::cloud_bytes(&json),
    ))
}

fn find_cloud<'a>(
    hooks: &'a mut Hooks,
    workspace: &str,
    uid: &str,
) -> Result<&'a mut CloudHook, CloudError> {
    hooks
        .cloud
        .iter_mut()
        .find(|h| h.workspace == workspace && h.uuid == uid)
        .ok_or_else(|| CloudError::NotFound(format!("Webhook {uid} not found")))
}

async fn get_cloud(
    State(shared): State<Arc<Shared>>,
    Extension(authn): Extension<Authentication>,
    Path((workspace, uid)): Path<(String, String)>,
) -> Result<Response, CloudError> {
    let world = lock(&shared.world);
    let ws = workspace_of(&world, &workspace)?;
    cloud_hook_access(&authn, &world, ws, false)?;
    let mut hooks = lock(&shared.hooks);
    let hook = find_cloud(&mut hooks, &ws.slug, &uid)?;
    let json = cloud_hook_json(hook, ws, &shared.origin);
    Ok(cloud_json(StatusCode::OK, templates::cloud_bytes(&json)))
}

async fn update_cloud(
    State(shared): State<Arc<Shared>>,
    Extension(authn): Extension<Authentication>,
    Path((workspace, uid)): Path<(String, String)>,
    Json(body): Json<CloudHookBody>,
) -> Result<Response, CloudError> {
    let world = lock(&shared.world);
    let ws = workspace_of(&world, &workspace)?;
    cloud_hook_access(&authn, &world, ws, true)?;
    let mut hooks = lock(&shared.hooks);
    let body = cloud_hook_of(body, &hooks.workspace_events)?;
    let hook = find_cloud(&mut hooks, &ws.slug, &uid)?;
    hook.description = body.description;
    hook.url = body.url;
    hook.active = body.active;
    hook.events = body.events;
    // As the spec says: a null or empty secret leaves it unset.
    hook.secret = body.secret.filter(|s| !s.is_empty());
    let json = cloud_hook_json(hook, ws, &shared.origin);
    Ok(cloud_json(StatusCode::OK, templates::cloud_bytes(&json)))
}

async fn delete_cloud(
    State(shared): State<Arc<Shared>>,
    Extension(authn): Extension<Authentication>,
    Path((workspace, uid)): Path<(String, String)>,
) -> Result<Response, CloudError> {
    let world = lock(&shared.world);
    let ws = workspace_of(&world, &workspace)?;
    cloud_hook_access(&authn, &world, ws, true)?;
    let mut hooks = lock(&shared.hooks);
    find_cloud(&mut hooks, &ws.slug, &uid)?;
    hooks.cloud.retain(|h| h.uuid != uid);
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- Data Center ----

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DcHookBody {
    name: String,
    url: String,
    #[serde(default = "yes")]
    active: bool,
    #[serde(default)]
    events: Vec<String>,
    #[serde(default)]
    configuration: DcConfiguration,
}

#[derive(Default, Deserialize)]
struct DcConfiguration {
    #[serde(default)]
    secret: Option<String>,
}

/// Who may manage a project's hooks (PROJECT_ADMIN on Data Center; the simulator lets anyone
/// who may read a non-public project: SIMULATOR.md).
fn dc_hook_access<'a>(
    authn: &Authentication,
    world: &'a super::world::World,
    key: &str,
) -> Result<&'a DcProject, DcError> {
    let caller = match &authn.caller {
        Caller::DataCenter(caller) => caller,
        Caller::Rejected(_) => return Err(DcError::AuthenticationFailed),
        Caller::Anonymous | Caller::Cloud(_) => return Err(DcError::NotPermitted),
    };
    let project = world
        .fixture
        .data_center
        .project(key)
        .ok_or_else(|| DcError::NoSuchProject(key.to_owned()))?;
    if caller.may_read(&project.key) {
        Ok(project)
    } else {
        Err(DcError::NotPermitted)
    }
}

fn dc_hook_json(hook: &DcHook) -> Value {
    json!({
        "id": hook.id, "name": hook.name, "createdDate": hook.created,
        "updatedDate": hook.updated, "events": hook.events,
        "configuration": {"createdBy": "bitbucket"}, "url": hook.url, "active": hook.active,
        "scopeType": "project", "sslVerificationRequired": true,
    })
}

fn now_millis() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

async fn list_dc(
    State(shared): State<Arc<Shared>>,
    Extension(authn): Extension<Authentication>,
    Path(key): Path<String>,
) -> Result<Response, DcError> {
    let world = lock(&shared.world);
    let project = dc_hook_access(&authn, &world, &key)?;
    let hooks = lock(&shared.hooks);
    let values: Vec<Value> = (hooks.dc.iter())
        .filter(|h| h.project == project.key)
        .map(dc_hook_json)
        .collect();
    let page = json!({"size": values.len(), "limit": 25, "isLastPage": true, "values": values, "start": 0});
    Ok(dc_json(StatusCode::OK, templates::dc_bytes(&page)))
}

async fn create_dc(
    State(shared): State<Arc<Shared>>,
    Extension(authn): Extension<Authentication>,
    Path(key): Path<String>,
    Json(body): Json<DcHookBody>,
) -> Result<Response, DcError> {
    let world = lock(&shared.world);
    let project = dc_hook_access(&authn, &world, &key)?;
    let mut hooks = lock(&shared.hooks);
    let id = hooks.next;
    hooks.next += 1;
    let hook = DcHook {
        id,
        project: project.key.clone(),
        name: body.name,
        url: body.url,
        active: body.active,
        secret: body.configuration.secret.filter(|s| !s.is_empty()),
        events: body.events,
        created: now_millis(),
        updated: now_millis(),
    };
    let json = dc_hook_json(&hook);
    hooks.dc.push(hook);
    Ok(dc_json(StatusCode::CREATED, templates::dc_bytes(&json)))
}

fn find_dc<'a>(hooks: &'a mut Hooks, project: &str, id: u64) -> Result<&'a mut DcHook, DcError> {
    hooks
        .dc
        .iter_mut()
        .find(|h| h.project == project && h.id == id)
        .ok_or(DcError::NoResource)
}

async fn get_dc(
    State(shared): State<Arc<Shared>>,
    Extension(authn): Extension<Authentication>,
    Path((key, id)): Path<(String, u64)>,
) -> Result<Response, DcError> {
    let world = lock(&shared.world);
    let project = dc_hook_access(&authn, &world, &key)?;
    let mut hooks = lock(&shared.hooks);
    let json = dc_hook_json(find_dc(&mut hooks, &project.key, id)?);
    Ok(dc_json(StatusCode::OK, templates::dc_bytes(&json)))
}

async fn update_dc(
    State(shared): State<Arc<Shared>>,
    Extension(authn): Extension<Authentication>,
    Path((key, id)): Path<(String, u64)>,
    Json(body): Json<DcHookBody>,
) -> Result<Response, DcError> {
    let world = lock(&shared.world);
    let project = dc_hook_access(&authn, &world, &key)?;
    let mut hooks = lock(&shared.hooks);
    let hook = find_dc(&mut hooks, &project.key, id)?;
    hook.name = body.name;
    hook.url = body.url;
    hook.active = body.active;
    hook.events = body.events;
    hook.secret = body.configuration.secret.filter(|s| !s.is_empty());
    hook.updated = now_millis();
    let json = dc_hook_json(hook);
    Ok(dc_json(StatusCode::OK, templates::dc_bytes(&json)))
}

async fn delete_dc(
    State(shared): State<Arc<Shared>>,
    Extension(authn): Extension<Authentication>,
    Path((key, id)): Path<(String, u64)>,
) -> Result<Response, DcError> {
    let world = lock(&shared.world);
    let project = dc_hook_access(&authn, &world, &key)?;
    let mut hooks = lock(&shared.hooks);
    find_dc(&mut hooks, &project.key, id)?;
    hooks.dc.retain(|h| h.id != id);
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- Payloads ----

/// The `repository` object of a Cloud delivery: the recorded push's, with this repository's
/// identity.
pub(crate) fn cloud_event_repository(workspace: &Workspace, repo: &CloudRepository) -> Value {
    let recorded: Value = serde_json::from_str(recorded::CLOUD_PUSH).expect("recorded JSON");
    let mut value = recorded["repository"].clone();
    let full_name = format!("{}/{}", workspace.slug, repo.slug);
    let api = templates::cloud_repository(workspace, repo, None);
    value["full_name"] = json!(full_name);
    value["name"] = api["name"].clone();
    value["uuid"] = api["uuid"].clone();
    value["is_private"] = api["is_private"].clone();
    value["links"] = json!({
        "self": api["links"]["self"], "html": api["links"]["html"],
        "avatar": api["links"]["avatar"],
    });
    for field in ["owner", "workspace", "project"] {
        value[field] = api[field].clone();
    }
    if let Some(fields) = value.as_object_mut() {
        fields.remove("parent");
    }
    value
}

/// A Cloud delivery body for `event` about `repository` (from [`cloud_event_repository`]);
/// `renamed_from`: the full name before a rename (`repo:updated`).
pub(crate) fn cloud_payload(
    event: &str,
    repository: Value,
    main_branch: Option<&str>,
    renamed_from: Option<&str>,
) -> Value {
    let recorded: Value = serde_json::from_str(recorded::CLOUD_PUSH).expect("recorded JSON");
    let mut body = json!({"actor": recorded["actor"], "repository": repository});
    match event {
        "repo:push" => {
            let mut change = recorded["push"]["changes"][0].clone();
            let branch = main_branch.unwrap_or("main");
            change["new"]["name"] = json!(branch);
            change["old"] = change["new"].clone();
            change["created"] = json!(false);
            body["push"] = json!({"changes": [change]});
        }
        "repo:updated" => {
            let mut changes: Value = serde_json::from_str::<Value>(recorded::CLOUD_UPDATED)
                .expect("recorded JSON")["changes"]
                .clone();
            let new = body["repository"]["full_name"].clone();
            let old = renamed_from.map_or_else(|| new.clone(), |old| json!(old));
            let name = |full: &Value| {
                json!(
                    full.as_str()
                        .and_then(|f| f.split_once('/'))
                        .map(|(_, s)| s)
                )
            };
            changes["full_name"] = json!({"old": old, "new": new});
            changes["name"] = json!({"old": name(&old), "new": name(&new)});
            body["changes"] = changes;
        }
        _ => {}
    }
    body
}

/// A Data Center delivery body: `repo:refs_changed` (a push to `repo`) or `repo:modified`
/// (`before` renamed or moved to `repo`).
pub(crate) fn dc_payload(
    event: &str,
    origin: &str,
    project: &DcProject,
    repo: &DcRepository,
    before: Option<Value>,
) -> Value {
    let repository = templates::dc_repository(project, repo, &DcOrigin { base: origin }, None);
    let date = jiff::Zoned::now()
        .with_time_zone(jiff::tz::TimeZone::UTC)
        .strftime("%Y-%m-%dT%H:%M:%S%z")
        .to_string();
    if event == "repo:modified" {
        let mut body: Value = serde_json::from_str(recorded::DC_MODIFIED).expect("recorded JSON");
        body["date"] = json!(date);
        body["old"] = before.unwrap_or_else(|| repository.clone());
        body["new"] = repository;
        body
    } else {
        let mut body: Value =
            serde_json::from_str(recorded::DC_REFS_CHANGED).expect("recorded JSON");
        body["date"] = json!(date);
        body["repository"] = repository;
        if let Some(branch) = &repo.default_branch {
            body["changes"][0]["ref"]["id"] = json!(format!("refs/heads/{branch}"));
            body["changes"][0]["ref"]["displayId"] = json!(branch);
            body["changes"][0]["refId"] = json!(format!("refs/heads/{branch}"));
            body["changes"][0]["type"] = json!("UPDATE");
        }
        body
    }
}

/// The delivery of `event` about Cloud repository `slug` of `workspace` as the world holds it
/// now: the workspace's slug and the body.
pub(crate) fn cloud_event(
    world: &super::world::World,
    workspace: &str,
    slug: &str,
    event: &str,
    renamed_from: Option<&str>,
) -> Option<(String, Value)> {
    let ws = world.fixture.cloud.workspace(workspace)?;
    let repo = ws.repositories.iter().find(|r| r.slug == slug)?;
    let repository = cloud_event_repository(ws, repo);
    let main_branch = repo.main_branch.as_deref();
    let body = cloud_payload(event, repository, main_branch, renamed_from);
    Some((ws.slug.clone(), body))
}

/// The delivery of `event` about Data Center repository `slug` of `project` as the world holds
/// it now (`before`: the repository object before a rename): the project's key and the body.
pub(crate) fn dc_event(
    world: &super::world::World,
    origin: &str,
    project: &str,
    slug: &str,
    event: &str,
    before: Option<Value>,
) -> Option<(String, Value)> {
    let project = world.fixture.data_center.project(project)?;
    let repo = project.repositories.iter().find(|r| r.slug == slug)?;
    let body = dc_payload(event, origin, project, repo, before);
    Some((project.key.clone(), body))
}

/// The repository object of a Data Center delivery, for the `old` side of a rename.
pub(crate) fn dc_event_repository(
    world: &super::world::World,
    origin: &str,
    project: &str,
    slug: &str,
) -> Option<Value> {
    let project = world.fixture.data_center.project(project)?;
    let repo = project.repositories.iter().find(|r| r.slug == slug)?;
    Some(templates::dc_repository(
        project,
        repo,
        &DcOrigin { base: origin },
        None,
    ))
}

// ---- Deliveries ----

/// Whose hooks hear of a change.
pub(crate) enum Owner<'a> {
    Workspace(&'a str),
    Project(&'a str),
}

/// Sends `body` as `event` to every active hook of `owner` that subscribes to it, each as its
/// own task (the control call that caused it returns at once). Outside a Tokio runtime nothing
/// is sent.
pub(crate) fn deliver(shared: &Arc<Shared>, owner: Owner<'_>, event: &str, body: &Value) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let targets = targets(&lock(&shared.hooks), &owner, event);
    let bytes = match owner {
        Owner::Workspace(_) => templates::cloud_bytes(body),
        Owner::Project(_) => templates::dc_bytes(body),
    };
    for target in targets {
        let (shared, event, bytes) = (Arc::clone(shared), event.to_owned(), bytes.clone());
        runtime.spawn(async move {
            let delivery = send(target, &event, bytes).await;
            lock(&shared.hooks).deliveries.push(delivery);
        });
    }
}

/// Where one delivery goes, and how.
struct Target {
    url: String,
    secret: Option<String>,
    /// The hook's and the request's own headers.
    headers: Vec<(&'static str, String)>,
    attempts: u32,
}

/// The active hooks of `owner` that subscribe to `event`.
fn targets(hooks: &Hooks, owner: &Owner<'_>, event: &str) -> Vec<Target> {
    let wants = |active: bool, events: &[String]| active && events.iter().any(|e| e == event);
    match owner {
        Owner::Workspace(ws) => (hooks.cloud.iter())
            .filter(|h| h.workspace == *ws && wants(h.active, &h.events))
            .map(|h| Target {
                url: h.url.clone(),
                secret: h.secret.clone(),
                headers: vec![
                    ("X-Hook-UUID", h.uuid.clone()),
                    ("X-Request-UUID", uuid_like()),
                    ("User-Agent", "Bitbucket-Webhooks/2.0".to_owned()),
                ],
                attempts: CLOUD_ATTEMPTS,
            })
            .collect(),
        Owner::Project(key) => (hooks.dc.iter())
            .filter(|h| h.project == *key && wants(h.active, &h.events))
            .map(|h| Target {
                url: h.url.clone(),
                secret: h.secret.clone(),
                headers: vec![("X-Request-Id", uuid_like())],
                attempts: 1,
            })
            .collect(),
    }
}

/// A random UUID's text (Bitbucket's request ids are UUIDs).
fn uuid_like() -> String {
    let hex = |n: usize| {
        (0..n)
            .map(|_| format!("{:x}", fastrand::u8(0..16)))
            .collect::<String>()
    };
    format!("{}-{}-4{}-a{}-{}", hex(8), hex(4), hex(3), hex(3), hex(12))
}

/// `sha256=<hex>` of `body` under `secret`: how Bitbucket signs (testdata/bitbucket/webhooks/
/// README.md, checked against the recorded signed deliveries).
pub fn signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

async fn send(target: Target, event: &str, body: Vec<u8>) -> Delivery {
    let start = Instant::now();
    let request_id = (target.headers.iter())
        .find(|(name, _)| name.starts_with("X-Request"))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let mut status = None;
    let mut tried = 0;
    while tried < target.attempts {
        tried += 1;
        let mut request = client()
            .post(&target.url)
            .header("Content-Type", "application/json")
            .header("X-Event-Key", event)
            .body(body.clone());
        if target.attempts > 1 {
            request = request.header("X-Attempt-Number", tried.to_string());
        }
        if let Some(secret) = &target.secret {
            request = request.header("X-Hub-Signature", signature(secret, &body));
        }
        for (name, value) in &target.headers {
            request = request.header(*name, value);
        }
        status = request.send().await.ok().map(|r| r.status().as_u16());
        if status.is_some_and(|s| s < 500) {
            break;
        }
    }
    Delivery {
        url: target.url,
        event: event.to_owned(),
        request_id,
        attempts: tried,
        status,
        millis: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
    }
}

/// One HTTP client for every delivery: plain HTTP on loopback, no proxy, Cloud's timeout.
fn client() -> &'static reqwest::Client {
    static CLIENT: std::sync::LazyLock<reqwest::Client> = std::sync::LazyLock::new(|| {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring offers the default protocol versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(CLOUD_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .expect("an HTTP client builds")
    });
    &CLIENT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_bitbucket_s_on_the_recorded_delivery() {
        let body = recorded::CLOUD_PUSH.as_bytes();
        assert_eq!(
            signature("Gkvl$k$wyNpQAF42", body),
            "sha256=f205c729821c6954aff2afe72b965c34015b4baf96ea8ddc2cc44999c014a035"
        );
    }
}
