//! Every JSON body the simulator sends, built from the recorded examples in `testdata/bitbucket/`
//! (embedded at compile time). Each recorded object is parsed once and used as a template: only
//! the fields that identify the object (slug, name, uuid, links, project, …) are replaced, every
//! other field keeps its recorded value. Requests that repeat a recorded exchange get the recorded
//! bytes themselves (see [`replay_cloud`], [`replay_dc`]). Also owns the byte formats: Cloud
//! writes JSON the way Python's `json.dumps` does (`", "` and `": "`, non-ASCII escaped), Data
//! Center the compact way Jackson does. Pure; no I/O.

use std::{io, sync::LazyLock};

use serde_json::{Value, json};

use super::fixture::{
    CloudProject, CloudRepository, CloudUser, DcProject, DcRepository, DcUser, Workspace,
};

/// The recorded examples, byte for byte.
pub(crate) mod recorded {
    macro_rules! example {
        ($name:ident, $file:literal) => {
            pub(crate) const $name: &str =
                include_str!(concat!("../../../testdata/bitbucket/", $file));
        };
    }
    example!(CLOUD_REPOSITORY, "cloud-repository.json");
    example!(CLOUD_REPOSITORIES_PAGE1, "cloud-repositories-page1.json");
    example!(
        CLOUD_REPOSITORIES_PAGE2_LAST,
        "cloud-repositories-page2-last.json"
    );
    example!(CLOUD_USER, "cloud-user.json");
    example!(CLOUD_WORKSPACE, "cloud-workspace.json");
    example!(
        CLOUD_USER_WORKSPACES,
        "cloud-user-workspaces-doc-example.json"
    );
    example!(
        CLOUD_ERROR_401_TOKEN_INVALID,
        "cloud-error-401-token-invalid.json"
    );
    example!(
        CLOUD_ERROR_403_MISSING_SCOPE,
        "cloud-error-403-missing-scope.json"
    );
    example!(CLOUD_ERROR_404_NO_API, "cloud-error-404-no-api.json");
    example!(
        CLOUD_ERROR_404_REPOSITORY_NOT_FOUND,
        "cloud-error-404-repository-not-found.json"
    );
    example!(
        CLOUD_ERROR_410_CHANGE_2770,
        "cloud-error-410-change-2770.json"
    );
    example!(
        CLOUD_ERROR_ACCESS_TOKEN_NOT_ACCESSIBLE,
        "cloud-error-access-token-not-accessible.json"
    );
    example!(DC_APPLICATION_PROPERTIES, "dc-application-properties.json");
    example!(DC_REPOS_PAGE1_NOT_LAST, "dc-repos-page1-not-last.json");
    example!(DC_REPOS_PAGE2_LAST, "dc-repos-page2-last.json");
    example!(DC_USER, "dc-user.json");
    example!(
        DC_ERROR_404_NO_SUCH_PROJECT,
        "dc-error-404-no-such-project.json"
    );
    example!(
        DC_ERROR_404_NO_SUCH_REPOSITORY,
        "dc-error-404-no-such-repository.json"
    );

    /// Cloud's body for a rejected request over the hourly limit (`text/plain`, 46 bytes; no
    /// recorded file exists because it is not JSON — quoted in API-FACTS §C.2).
    pub(crate) const CLOUD_RATE_LIMITED: &str = "Rate limit for this resource has been exceeded";
}

fn parse(text: &'static str) -> Value {
    serde_json::from_str(text).expect("recorded examples are valid JSON")
}

static CLOUD_REPOSITORY: LazyLock<Value> = LazyLock::new(|| parse(recorded::CLOUD_REPOSITORY));
static CLOUD_PAGE: LazyLock<Value> = LazyLock::new(|| parse(recorded::CLOUD_REPOSITORIES_PAGE1));
static CLOUD_USER: LazyLock<Value> = LazyLock::new(|| parse(recorded::CLOUD_USER));
static CLOUD_WORKSPACE: LazyLock<Value> = LazyLock::new(|| parse(recorded::CLOUD_WORKSPACE));
static CLOUD_USER_WORKSPACES: LazyLock<Value> =
    LazyLock::new(|| parse(recorded::CLOUD_USER_WORKSPACES));
static DC_PAGE: LazyLock<Value> = LazyLock::new(|| parse(recorded::DC_REPOS_PAGE1_NOT_LAST));
static DC_USER: LazyLock<Value> = LazyLock::new(|| parse(recorded::DC_USER));

/// Who is asking: the https clone URLs of both products embed the caller's username.
pub(crate) struct CloneUser<'a>(pub &'a str);

/// `{uuid}` as it appears inside URLs: `%7Buuid%7D`.
fn url_uuid(uuid: &str) -> String {
    uuid.replace('{', "%7B").replace('}', "%7D")
}

/// Replaces substrings in every string below `value` (the template's own identifying values are
/// swapped for the simulated object's, leaving the rest of each URL as recorded).
fn rewrite(value: &mut Value, replacements: &[(&str, &str)]) {
    match value {
        Value::String(text) => {
            for (from, to) in replacements {
                if text.contains(from) {
                    *text = text.replace(from, to);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rewrite(v, replacements)),
        Value::Object(map) => map.values_mut().for_each(|v| rewrite(v, replacements)),
        _ => {}
    }
}

fn text_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .expect("the recorded template has this field")
}

/// A Cloud `repository` object (template `cloud-repository.json`).
pub(crate) fn cloud_repository(
    workspace: &Workspace,
    repo: &CloudRepository,
    caller: Option<&CloneUser<'_>>,
) -> Value {
    let template = &*CLOUD_REPOSITORY;
    let mut value = template.clone();
    let project = workspace
        .project(&repo.project)
        .expect("prepared fixtures reference existing projects");
    rewrite_repository_links(&mut value["links"], template, workspace, repo, caller);
    rewrite_owner_workspace_and_project_links(&mut value, template, workspace, project);
    set_repository_fields(&mut value, template, workspace, repo);
    set_owner_and_workspace_fields(&mut value, workspace);
    set_project_fields(&mut value, workspace, project);
    value
}

/// The repository's own links: the template's full name, UUID and clone user become the
/// repository's and the caller's.
fn rewrite_repository_links(
    links: &mut Value,
    template: &Value,
    workspace: &Workspace,
    repo: &CloudRepository,
    caller: Option<&CloneUser<'_>>,
) {
    let old_full_name = text_at(template, "/full_name");
    let old_uuid = url_uuid(text_at(template, "/uuid"));
    let old_clone_user = text_at(template, "/links/clone/0/href")
        .trim_start_matches("https://")
        .split('@')
        .next()
        .expect("the https clone URL has a user");
    let full_name = format!("{}/{}", workspace.slug, repo.slug);
    let new_uuid = url_uuid(&repo.uuid(&workspace.slug));
    let clone_from = format!("https://{old_clone_user}@");
    // Anonymous callers get clone URLs without a user.
    let clone_to = caller.map_or_else(|| "https://".to_owned(), |c| format!("https://{}@", c.0));
    rewrite(
        links,
        &[
            (old_full_name, &full_name),
            (&old_uuid, &new_uuid),
            (&clone_from, &clone_to),
        ],
    );
}

/// Links of the owner (by the workspace's UUID), the workspace (by slug) and the project (by
/// workspace slug and project key).
fn rewrite_owner_workspace_and_project_links(
    value: &mut Value,
    template: &Value,
    workspace: &Workspace,
    project: &CloudProject,
) {
    let old_ws = text_at(template, "/workspace/slug");
    let old_owner_uuid = url_uuid(text_at(template, "/owner/uuid"));
    let old_project = text_at(template, "/project/key");
    let new_owner_uuid = url_uuid(&workspace.uuid());
    rewrite(
        &mut value["owner"]["links"],
        &[(&old_owner_uuid, &new_owner_uuid)],
    );
    rewrite(
        &mut value["workspace"]["links"],
        &[(old_ws, &workspace.slug)],
    );
    let project_prefix = format!("{old_ws}/");
    let project_prefix_new = format!("{}/", workspace.slug);
    let key_from = format!("projects/{old_project}");
    let key_to = format!("projects/{}", project.key);
    rewrite(
        &mut value["project"]["links"],
        &[(&project_prefix, &project_prefix_new), (&key_from, &key_to)],
    );
}

/// The repository's own fields. The others (language, settings, …) keep their recorded values,
/// except `size`, which is 0 for an empty repository.
fn set_repository_fields(
    value: &mut Value,
    template: &Value,
    workspace: &Workspace,
    repo: &CloudRepository,
) {
    value["full_name"] = json!(format!("{}/{}", workspace.slug, repo.slug));
    value["name"] = json!(repo.name());
    value["slug"] = json!(repo.slug);
    value["description"] = json!(repo.description);
    value["uuid"] = json!(repo.uuid(&workspace.slug));
    value["is_private"] = json!(repo.private);
    value["updated_on"] = json!(repo.updated_on());
    if let Some(created) = &repo.created_on {
        value["created_on"] = json!(created);
    }
    value["mainbranch"] = match &repo.main_branch {
        Some(branch) => {
            let mut branch_value = template["mainbranch"].clone();
            branch_value["name"] = json!(branch);
            branch_value
        }
        // As recorded for a freshly created repository: no main branch, nothing stored.
        None => Value::Null,
    };
    if repo.main_branch.is_none() {
        value["size"] = json!(0);
    }
}

/// The workspace owns its repositories; the owner object is the workspace's account.
fn set_owner_and_workspace_fields(value: &mut Value, workspace: &Workspace) {
    let ws_uuid = workspace.uuid();
    value["owner"]["display_name"] = json!(workspace.name());
    value["owner"]["nickname"] = json!(workspace.name());
    value["owner"]["uuid"] = json!(ws_uuid);
    value["owner"]["account_id"] = json!(format!(
        "{:024x}",
        super::fixture::fnv1a(workspace.slug.as_bytes(), 7)
    ));
    value["workspace"]["slug"] = json!(workspace.slug);
    value["workspace"]["name"] = json!(workspace.name());
    value["workspace"]["uuid"] = json!(ws_uuid);
}

fn set_project_fields(value: &mut Value, workspace: &Workspace, project: &CloudProject) {
    let project_uuid = project.uuid.clone().unwrap_or_else(|| {
        super::fixture::derived_uuid(&format!("project/{}/{}", workspace.slug, project.key))
    });
    value["project"]["key"] = json!(project.key);
    value["project"]["name"] = json!(project.name.as_deref().unwrap_or(&project.key));
    value["project"]["uuid"] = json!(project_uuid);
}

/// The Cloud paged envelope (template `cloud-repositories-page1.json`). `next`/`previous` are
/// absolute URLs, absent on the last/first page.
pub(crate) fn cloud_page(
    values: Vec<Value>,
    pagelen: u32,
    page: u32,
    size: usize,
    next: Option<String>,
    previous: Option<String>,
) -> Value {
    let mut envelope = CLOUD_PAGE.clone();
    envelope["pagelen"] = json!(pagelen);
    envelope["page"] = json!(page);
    envelope["size"] = json!(size);
    envelope["values"] = Value::Array(values);
    let map = envelope.as_object_mut().expect("the envelope is an object");
    map.remove("next");
    map.remove("previous");
    if let Some(next) = next {
        map.insert("next".to_owned(), json!(next));
    }
    if let Some(previous) = previous {
        map.insert("previous".to_owned(), json!(previous));
    }
    envelope
}

/// `GET /2.0/user` (template `cloud-user.json`).
pub(crate) fn cloud_user(user: &CloudUser) -> Value {
    let template = &*CLOUD_USER;
    let mut value = template.clone();
    let old_uuid = url_uuid(text_at(template, "/uuid"));
    rewrite(&mut value["links"], &[(&old_uuid, &url_uuid(&user.uuid))]);
    value["username"] = json!(user.username);
    value["display_name"] = json!(user.display_name);
    value["nickname"] = json!(user.display_name);
    value["account_id"] = json!(user.account_id);
    value["uuid"] = json!(user.uuid);
    value
}

/// `GET /2.0/workspaces/{workspace}` (template `cloud-workspace.json`).
pub(crate) fn cloud_workspace(workspace: &Workspace) -> Value {
    let template = &*CLOUD_WORKSPACE;
    let mut value = template.clone();
    let old = format!("/{}", text_at(template, "/slug"));
    rewrite(
        &mut value["links"],
        &[(&old, &format!("/{}", workspace.slug))],
    );
    value["slug"] = json!(workspace.slug);
    value["name"] = json!(workspace.name());
    value["uuid"] = json!(workspace.uuid());
    value["is_private"] = json!(workspace.private);
    value
}

/// One `workspace_access` entry of `GET /2.0/user/workspaces` (doc example template).
pub(crate) fn cloud_workspace_access(workspace: &Workspace, administrator: bool) -> Value {
    let template = &CLOUD_USER_WORKSPACES["values"][0];
    let mut value = template.clone();
    let old = format!("/{}/", text_at(template, "/workspace/slug"));
    let old_end = format!("/{}", text_at(template, "/workspace/slug"));
    rewrite(
        &mut value["workspace"]["links"],
        &[
            (&old, &format!("/{}/", workspace.slug)),
            (&old_end, &format!("/{}", workspace.slug)),
        ],
    );
    value["administrator"] = json!(administrator);
    value["workspace"]["slug"] = json!(workspace.slug);
    value["workspace"]["uuid"] = json!(workspace.uuid());
    value
}

/// The `/2.0/user/workspaces` envelope (its doc example: `pagelen`, `page`, `size`, `values`).
pub(crate) fn cloud_user_workspaces_page(
    values: Vec<Value>,
    pagelen: u32,
    page: u32,
    size: usize,
    next: Option<String>,
) -> Value {
    let mut envelope = CLOUD_USER_WORKSPACES.clone();
    envelope["pagelen"] = json!(pagelen);
    envelope["page"] = json!(page);
    envelope["size"] = json!(size);
    envelope["values"] = Value::Array(values);
    if let Some(next) = next {
        envelope["next"] = json!(next);
    }
    envelope
}

/// A Cloud error with only the message replaced (template: the given recorded error body).
pub(crate) fn cloud_error(template: &'static str, message: &str) -> Value {
    let mut value = parse(template);
    value["error"]["message"] = json!(message);
    value
}

/// The 403 for a credential without a required scope, naming both sides.
pub(crate) fn cloud_missing_scope(required: &str, granted: &[String]) -> Value {
    let mut value = parse(recorded::CLOUD_ERROR_403_MISSING_SCOPE);
    value["error"]["detail"]["required"] = json!([required]);
    value["error"]["detail"]["granted"] = json!(granted);
    value
}

/// Where the simulated Data Center serves clone and browse links from.
pub(crate) struct DcOrigin<'a> {
    /// `http://127.0.0.1:PORT`
    pub base: &'a str,
}

impl DcOrigin<'_> {
    fn host_port(&self) -> &str {
        self.base.split("://").nth(1).unwrap_or(self.base)
    }
    fn host(&self) -> &str {
        self.host_port().split(':').next().unwrap_or("127.0.0.1")
    }
    fn scheme(&self) -> &str {
        self.base.split("://").next().unwrap_or("http")
    }
}

/// A Data Center `project` object (template: the project inside the recorded repository).
pub(crate) fn dc_project(project: &DcProject, origin: &DcOrigin<'_>) -> Value {
    let mut value = DC_PAGE["values"][0]["project"].clone();
    value["key"] = json!(project.key);
    value["id"] = json!(project.id.unwrap_or_default());
    value["name"] = json!(project.name.as_deref().unwrap_or(&project.key));
    value["public"] = json!(project.public);
    value["type"] = json!(if project.is_personal() {
        "PERSONAL"
    } else {
        "NORMAL"
    });
    let self_href = match project.key.strip_prefix('~') {
        Some(user) => format!("{}/users/{user}", origin.base),
        None => format!("{}/projects/{}", origin.base, project.key),
    };
    value["links"]["self"][0]["href"] = json!(self_href);
    value
}

/// A Data Center `repository` object (template: the recorded repository of
/// `dc-repos-page1-not-last.json`, plus `archived` as in `dc-repos-archived-flag.json`).
pub(crate) fn dc_repository(
    project: &DcProject,
    repo: &DcRepository,
    origin: &DcOrigin<'_>,
    caller: Option<&CloneUser<'_>>,
) -> Value {
    let template = &DC_PAGE["values"][0];
    let mut value = template.clone();
    let scm_path = format!("{}/{}.git", project.key.to_lowercase(), repo.slug);
    let userinfo = caller.map(|c| format!("{}@", c.0)).unwrap_or_default();
    let http = format!(
        "{}://{userinfo}{}/scm/{scm_path}",
        origin.scheme(),
        origin.host_port()
    );
    let ssh = format!("ssh://git@{}:7999/{scm_path}", origin.host());
    let browse = match project.key.strip_prefix('~') {
        Some(user) => format!("{}/users/{user}/repos/{}/browse", origin.base, repo.slug),
        None => format!(
            "{}/projects/{}/repos/{}/browse",
            origin.base, project.key, repo.slug
        ),
    };
    let id = repo.id.unwrap_or_default();
    value["slug"] = json!(repo.slug);
    value["id"] = json!(id);
    value["name"] = json!(repo.name());
    value["hierarchyId"] = json!(
        format!(
            "{:020x}",
            super::fixture::fnv1a(format!("{}/{}", project.key, repo.slug).as_bytes(), id)
        )[..20]
    );
    value["project"] = dc_project(project, origin);
    value["public"] = json!(repo.public);
    value["archived"] = json!(repo.archived);
    value["links"]["clone"] = json!([
        {"href": http, "name": "http"},
        {"href": ssh, "name": "ssh"},
    ]);
    value["links"]["self"][0]["href"] = json!(browse);
    value
}

/// The Data Center paged envelope (template `dc-repos-page1-not-last.json`).
pub(crate) fn dc_page(
    values: Vec<Value>,
    limit: u32,
    start: usize,
    next_page_start: Option<usize>,
) -> Value {
    let mut envelope = DC_PAGE.clone();
    envelope["size"] = json!(values.len());
    envelope["limit"] = json!(limit);
    envelope["isLastPage"] = json!(next_page_start.is_none());
    envelope["values"] = Value::Array(values);
    envelope["start"] = json!(start);
    let map = envelope.as_object_mut().expect("the envelope is an object");
    map.remove("nextPageStart");
    if let Some(next) = next_page_start {
        map.insert("nextPageStart".to_owned(), json!(next));
    }
    envelope
}

/// `GET /rest/api/1.0/users/{slug}` (template `dc-user.json`).
pub(crate) fn dc_user(user: &DcUser, origin: &DcOrigin<'_>) -> Value {
    let mut value = DC_USER.clone();
    value["name"] = json!(user.name);
    value["emailAddress"] = json!(user.email_address);
    value["id"] = json!(user.id);
    value["displayName"] = json!(user.display_name);
    value["slug"] = json!(user.slug());
    value["type"] = json!(match user.kind {
        super::fixture::DcUserKind::Normal => "NORMAL",
        super::fixture::DcUserKind::Service => "SERVICE",
    });
    value["links"]["self"][0]["href"] = json!(format!("{}/users/{}", origin.base, user.slug()));
    value
}

/// `…/default-branch`. No recorded example exists; the shape is the documented `RestBranch`
/// (API-FACTS §D.4) with deterministic fake commit ids.
pub(crate) fn dc_default_branch(project: &DcProject, repo: &DcRepository, branch: &str) -> Value {
    let seed = format!("{}/{}/{branch}", project.key, repo.slug);
    let commit = format!(
        "{:016x}{:016x}{:08x}",
        super::fixture::fnv1a(seed.as_bytes(), 1),
        super::fixture::fnv1a(seed.as_bytes(), 2),
        super::fixture::fnv1a(seed.as_bytes(), 3) as u32
    );
    json!({
        "id": format!("refs/heads/{branch}"),
        "displayId": branch,
        "type": "BRANCH",
        "latestCommit": commit,
        "latestChangeset": commit,
        "isDefault": true,
    })
}

/// A Data Center error body with one error, from a recorded errors body (`template`).
pub(crate) fn dc_error(template: &'static str, message: &str, exception: &str) -> Value {
    let mut value = parse(template);
    value["errors"][0]["message"] = json!(message);
    value["errors"][0]["exceptionName"] = json!(exception);
    value
}

/// Serialises like Bitbucket Cloud (Python `json.dumps` defaults).
pub(crate) fn cloud_bytes(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    serde::Serialize::serialize(value, &mut serializer).expect("a Value always serialises");
    out
}

/// Serialises like Bitbucket Data Center (Jackson, compact).
pub(crate) fn dc_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("a Value always serialises")
}

/// `json.dumps` separators (`", "`, `": "`) and `ensure_ascii` escaping.
struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }
    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        if fragment.is_ascii() {
            return w.write_all(fragment.as_bytes());
        }
        for c in fragment.chars() {
            if c.is_ascii() {
                w.write_all(&[c as u8])?;
            } else {
                for unit in c.encode_utf16(&mut [0; 2]) {
                    write!(w, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

/// A recorded exchange that is replayed byte for byte when the simulated state would produce
/// the same answer.
struct Recording {
    path_and_query: &'static str,
    body: &'static str,
    /// Fields (JSON pointers, relative to each element of `values` for pages) that must agree
    /// between the rendered answer and the recording: the facts the fixture models.
    envelope: &'static [&'static str],
    each_value: &'static [&'static str],
}

const CLOUD_REPO_FACTS: &[&str] = &[
    "/slug",
    "/name",
    "/full_name",
    "/uuid",
    "/is_private",
    "/description",
    "/updated_on",
    "/mainbranch",
    "/project/key",
    "/project/name",
    "/project/uuid",
    "/workspace/slug",
    "/workspace/uuid",
    "/workspace/name",
    "/links/clone",
];

const CLOUD_RECORDINGS: &[Recording] = &[
    Recording {
        path_and_query: "/2.0/repositories/sourcegraph-testing?pagelen=1",
        body: recorded::CLOUD_REPOSITORIES_PAGE1,
        envelope: &["/pagelen", "/size", "/page"],
        each_value: CLOUD_REPO_FACTS,
    },
    Recording {
        path_and_query: "/2.0/repositories/sourcegraph-testing?pagelen=1&page=2",
        body: recorded::CLOUD_REPOSITORIES_PAGE2_LAST,
        envelope: &["/pagelen", "/size", "/page"],
        each_value: CLOUD_REPO_FACTS,
    },
    Recording {
        path_and_query: "/2.0/user",
        body: recorded::CLOUD_USER,
        envelope: &[
            "/username",
            "/display_name",
            "/nickname",
            "/account_id",
            "/uuid",
        ],
        each_value: &[],
    },
];

const DC_REPO_FACTS: &[&str] = &[
    "/slug",
    "/id",
    "/name",
    "/public",
    "/project/key",
    "/project/id",
    "/project/name",
    "/project/public",
    "/project/type",
];

const DC_RECORDINGS: &[Recording] = &[
    Recording {
        path_and_query: "/rest/api/1.0/projects/PRIVUSER/repos?limit=1",
        body: recorded::DC_REPOS_PAGE1_NOT_LAST,
        envelope: &["/size", "/limit", "/isLastPage", "/start", "/nextPageStart"],
        each_value: DC_REPO_FACTS,
    },
    Recording {
        path_and_query: "/rest/api/1.0/projects/PRIVUSER/repos?limit=1&start=1",
        body: recorded::DC_REPOS_PAGE2_LAST,
        envelope: &["/size", "/limit", "/isLastPage", "/start", "/nextPageStart"],
        each_value: DC_REPO_FACTS,
    },
];

fn replay(
    recordings: &[Recording],
    path_and_query: &str,
    rendered: &Value,
) -> Option<&'static str> {
    let recording = recordings
        .iter()
        .find(|r| r.path_and_query == path_and_query)?;
    let recorded = parse(recording.body);
    let same = |a: &Value, b: &Value, pointers: &[&str]| {
        pointers.iter().all(|p| a.pointer(p) == b.pointer(p))
    };
    if !same(rendered, &recorded, recording.envelope) {
        return None;
    }
    if ["/next", "/previous"]
        .iter()
        .any(|p| rendered.pointer(p).is_some() != recorded.pointer(p).is_some())
    {
        return None;
    }
    if !recording.each_value.is_empty() {
        let (Some(mine), Some(theirs)) =
            (rendered["values"].as_array(), recorded["values"].as_array())
        else {
            return None;
        };
        if mine.len() != theirs.len()
            || !mine
                .iter()
                .zip(theirs)
                .all(|(a, b)| same(a, b, recording.each_value))
        {
            return None;
        }
    }
    Some(recording.body)
}

/// The recorded Cloud body for this request, if it repeats a recorded one and `rendered` (what
/// the simulator would answer) agrees with it on every modelled fact.
pub(crate) fn replay_cloud(path_and_query: &str, rendered: &Value) -> Option<&'static str> {
    replay(CLOUD_RECORDINGS, path_and_query, rendered)
}

/// The Data Center counterpart of [`replay_cloud`].
pub(crate) fn replay_dc(path_and_query: &str, rendered: &Value) -> Option<&'static str> {
    replay(DC_RECORDINGS, path_and_query, rendered)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::Fixture;

    #[test]
    fn cloud_bytes_match_the_recorded_format() {
        // Keys come out sorted (serde_json's map), separators as Bitbucket's Python writes them.
        let value = json!({"type": "error", "error": {"message": "m", "list": [1, null]}});
        assert_eq!(
            cloud_bytes(&value),
            br#"{"error": {"list": [1, null], "message": "m"}, "type": "error"}"#
        );
        assert_eq!(cloud_bytes(&json!({"a": "é"})), br#"{"a": "\u00e9"}"#);
    }

    #[test]
    fn a_rendered_repository_keeps_recorded_fields_and_replaces_identity() {
        let fixture = Fixture::demo().prepare().unwrap();
        let ws = &fixture.cloud.workspaces[0];
        let repo = cloud_repository(ws, &ws.repositories[0], Some(&CloneUser("jdoe")));
        assert_eq!(repo["full_name"], "acme/api");
        assert_eq!(
            repo["links"]["clone"][0]["href"],
            "https://jdoe@bitbucket.org/acme/api.git"
        );
        assert_eq!(
            repo["links"]["clone"][1]["href"],
            "git@bitbucket.org:acme/api.git"
        );
        assert_eq!(
            repo["links"]["html"]["href"],
            "https://bitbucket.org/acme/api"
        );
        assert_eq!(repo["project"]["key"], "API");
        assert_eq!(
            repo["project"]["links"]["html"]["href"],
            "https://bitbucket.org/acme/workspace/projects/API"
        );
        assert_eq!(
            repo["workspace"]["links"]["self"]["href"],
            "https://api.bitbucket.org/2.0/workspaces/acme"
        );
        // Kept as recorded:
        assert_eq!(repo["fork_policy"], CLOUD_REPOSITORY["fork_policy"]);
        assert_eq!(
            repo["override_settings"],
            CLOUD_REPOSITORY["override_settings"]
        );
        let serialized = String::from_utf8(cloud_bytes(&repo)).unwrap();
        assert!(!serialized.contains("nfalco79") && !serialized.contains("test-repos"));
    }

    #[test]
    fn an_empty_repository_has_a_null_mainbranch() {
        let fixture = Fixture::demo().prepare().unwrap();
        let ws = &fixture.cloud.workspaces[0];
        let runbooks = ws
            .repositories
            .iter()
            .find(|r| r.slug == "runbooks")
            .unwrap();
        let repo = cloud_repository(ws, runbooks, None);
        assert_eq!(repo["mainbranch"], Value::Null);
        assert_eq!(repo["size"], 0);
    }

    #[test]
    fn a_data_center_repository_embeds_the_caller_in_its_http_clone_url() {
        let fixture = Fixture::demo().prepare().unwrap();
        let project = &fixture.data_center.projects[0];
        let origin = DcOrigin {
            base: "http://127.0.0.1:7990",
        };
        let repo = dc_repository(
            project,
            &project.repositories[0],
            &origin,
            Some(&CloneUser("jdoe")),
        );
        assert_eq!(
            repo["links"]["clone"][0]["href"],
            "http://jdoe@127.0.0.1:7990/scm/plat/core.git"
        );
        assert_eq!(
            repo["links"]["clone"][1]["href"],
            "ssh://git@127.0.0.1:7999/plat/core.git"
        );
        assert_eq!(repo["project"]["type"], "NORMAL");
        assert_eq!(repo["archived"], false);
        assert_eq!(repo["hierarchyId"].as_str().unwrap().len(), 20);
    }
}
