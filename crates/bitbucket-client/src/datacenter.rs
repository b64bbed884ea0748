//! Bitbucket Data Center REST 1.0: identity from the `X-AUSERNAME` header of an authenticated
//! request, then the user's details; repositories per project or across projects, paged by
//! `start`/`nextPageStart` with the largest `limit` the server allows. Does network I/O.

use serde::Deserialize;

use super::{
    Client, Error, Identity, IdentityKind, Repository,
    model::strip_userinfo,
    paging::{Tally, next_start},
};

/// Asked for on every page; the server caps it (`page.max.repositories`, api-facts §D.5) and
/// `nextPageStart` tells where the next page begins.
const PAGE_LIMIT: u64 = 1000;

pub(super) async fn whoami(client: &Client) -> Result<Identity, Error> {
    // There is no "current user" endpoint, but every authenticated answer names the caller in
    // X-AUSERNAME (api-facts §D.3). When the username is known (Basic's, or the one this
    // client found before), the user's own details are that answer: one call.
    let basic = match &client.credentials {
        crate::Credentials::DataCenterBasic { username, .. } => Some(username.clone()),
        _ => None,
    };
    let known = basic.clone().or_else(|| found_user(client).clone());
    if let Some(known) = known {
        let alone = user_alone(client, &known).await;
        match alone {
            Ok(Some(identity)) => return Ok(identity),
            // Not readable as that user (a slug unlike the username; a token that may not read
            // users, whose 401 names an `AuthorisationException` and is `Forbidden`): the
            // probe decides.
            Ok(None) => {}
            // Refused, a password or a revoked token: no second attempt (bad logins lock
            // accounts, and a refused credential is asked once).
            Err(other) => return Err(other),
        }
    }
    let identity = probe_then_details(client).await?;
    *found_user(client) = identity.username.clone();
    Ok(identity)
}

fn found_user(client: &Client) -> std::sync::MutexGuard<'_, Option<String>> {
    client.found_user.lock().unwrap_or_else(|e| e.into_inner())
}

/// `GET /rest/api/1.0/users/{known}`: the caller (its X-AUSERNAME) and, when that is the
/// user asked for, its display name. `None` when it is not readable (404, 403).
async fn user_alone(client: &Client, known: &str) -> Result<Option<Identity>, Error> {
    let url = client.url(&["rest", "api", "1.0", "users", known], &[]);
    let response = match client.get("whoami", &url).await {
        Ok(response) => response,
        Err(Error::NotFound { .. } | Error::Forbidden { .. }) => return Ok(None),
        Err(other) => return Err(other),
    };
    let username = caller(response.header("x-ausername"))?;
    let user: User = response.json(&client.redact)?;
    let mut identity = data_center_user(username.clone());
    if user
        .name
        .as_deref()
        .is_some_and(|n| n.eq_ignore_ascii_case(&username))
    {
        identity.display_name = user.display_name;
    }
    Ok(Some(identity))
}

/// The probe (`application-properties`, the cheapest authenticated answer), then the
/// caller's details: two calls, for a credential whose username is not known yet.
async fn probe_then_details(client: &Client) -> Result<Identity, Error> {
    let url = client.url(&["rest", "api", "1.0", "application-properties"], &[]);
    let response = client.get("whoami", &url).await?;
    let username = caller(response.header("x-ausername"))?;
    let mut identity = data_center_user(username.clone());
    // The details are a nicety: a token that may not read its own user still works.
    let url = client.url(&["rest", "api", "1.0", "users", &username], &[]);
    match client.get("user_details", &url).await {
        Ok(response) => {
            let user: User = response.json(&client.redact)?;
            identity.display_name = user.display_name;
        }
        Err(Error::NotFound { .. } | Error::Unauthorized { .. } | Error::Forbidden { .. }) => {}
        Err(other) => return Err(other),
    }
    Ok(identity)
}

/// The caller an answer names, or the refusal of an anonymous answer.
fn caller(header: Option<&str>) -> Result<String, Error> {
    header
        .map(str::to_owned)
        .ok_or_else(|| Error::Unauthorized {
            message: "Bitbucket Data Center answered anonymously: the credential was not accepted"
                .into(),
        })
}

fn data_center_user(username: String) -> Identity {
    Identity {
        kind: IdentityKind::DataCenterUser,
        username: Some(username),
        display_name: None,
        uuid: None,
        account_id: None,
        scopes: Vec::new(),
    }
}

/// Every repository of `projects` (all the credential sees when empty): one listing, counted in
/// one `tally` across the projects.
pub(super) async fn list(
    client: &Client,
    projects: &[String],
    tally: &mut Tally,
) -> Result<Vec<Repository>, Error> {
    let mut repositories = Vec::new();
    if projects.is_empty() {
        let segments = ["rest", "api", "1.0", "repos"];
        list_pages(client, &segments, tally, &mut repositories).await?;
    }
    for project in projects {
        let segments = ["rest", "api", "1.0", "projects", project.as_str(), "repos"];
        list_pages(client, &segments, tally, &mut repositories).await?;
    }
    Ok(repositories)
}

/// One repository (`GET /rest/api/1.0/projects/{key}/repos/{slug}`).
pub(super) async fn repository(
    client: &Client,
    project: &str,
    slug: &str,
) -> Result<Repository, Error> {
    let segments = ["rest", "api", "1.0", "projects", project, "repos", slug];
    let url = client.url(&segments, &[]);
    let response = client.get("get_repository", &url).await?;
    let repository: DataCenterRepository = response.json(&client.redact)?;
    Ok(repository.into())
}

async fn list_pages(
    client: &Client,
    segments: &[&str],
    tally: &mut Tally,
    repositories: &mut Vec<Repository>,
) -> Result<(), Error> {
    let limit = PAGE_LIMIT.to_string();
    let mut start = 0;
    loop {
        let start_text = start.to_string();
        let url = client.url(segments, &[("limit", &limit), ("start", &start_text)]);
        let response = client.get("list_repositories", &url).await?;
        let page: Page = response.json(&client.redact)?;
        tally.count(page.values.len(), response.body.len(), page.is_last_page)?;
        repositories.extend(page.values.into_iter().map(Repository::from));
        match next_start(start, page.next_page_start, page.is_last_page)? {
            Some(next) => start = next,
            None => return Ok(()),
        }
    }
}

#[derive(Deserialize)]
struct User {
    #[serde(default)]
    name: Option<String>,
    #[serde(rename = "displayName")]
    display_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Page {
    #[serde(default)]
    values: Vec<DataCenterRepository>,
    #[serde(default)]
    is_last_page: bool,
    next_page_start: Option<u64>,
}

#[derive(Deserialize)]
struct DataCenterRepository {
    id: Option<u64>,
    slug: String,
    name: Option<String>,
    project: DataCenterProject,
    #[serde(default)]
    public: bool,
    #[serde(default)]
    links: Links,
}

#[derive(Deserialize)]
struct DataCenterProject {
    key: String,
}

#[derive(Deserialize, Default)]
struct Links {
    #[serde(default)]
    clone: Vec<Link>,
    #[serde(default, rename = "self")]
    self_: Vec<Link>,
}

#[derive(Deserialize)]
struct Link {
    href: String,
    name: Option<String>,
}

impl From<DataCenterRepository> for Repository {
    fn from(repository: DataCenterRepository) -> Self {
        // Clone links are named `http` even when the scheme is https (api-facts §D.6).
        let clone = |kind: &str| {
            repository
                .links
                .clone
                .iter()
                .find(|link| link.name.as_deref() == Some(kind))
                .map(|link| strip_userinfo(&link.href))
        };
        Repository {
            id: repository.id.map(|id| id.to_string()),
            full_name: format!("{}/{}", repository.project.key, repository.slug),
            name: repository
                .name
                .clone()
                .unwrap_or_else(|| repository.slug.clone()),
            clone_https: clone("http"),
            clone_ssh: clone("ssh"),
            html_url: repository.links.self_.first().map(|link| link.href.clone()),
            slug: repository.slug,
            project: Some(repository.project.key),
            private: !repository.public,
            main_branch: None,
            updated_at: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(body: &str) -> Page {
        serde_json::from_str(body).expect("recorded pages parse")
    }

    #[test]
    fn the_recorded_first_page_is_not_the_last() {
        let page = page(include_str!(
            "../../../testdata/bitbucket/dc-repos-page1-not-last.json"
        ));
        assert!(!page.is_last_page);
        assert_eq!(page.next_page_start, Some(1));
        let repositories: Vec<Repository> = page.values.into_iter().map(Into::into).collect();
        assert_eq!(
            repositories,
            [Repository {
                id: Some("6".into()),
                full_name: "PRIVUSER/userland".into(),
                slug: "userland".into(),
                name: "userland".into(),
                project: Some("PRIVUSER".into()),
                private: true,
                main_branch: None,
                clone_https: Some("https://bb.sgdev.org/scm/privuser/userland.git".into()),
                clone_ssh: Some("ssh://git@bb.sgdev.org:7999/privuser/userland.git".into()),
                html_url: Some(
                    "https://bb.sgdev.org/projects/PRIVUSER/repos/userland/browse".into()
                ),
                updated_at: None,
            }]
        );
    }

    #[test]
    fn the_recorded_last_page_ends_paging() {
        let page = page(include_str!(
            "../../../testdata/bitbucket/dc-repos-page2-last.json"
        ));
        assert!(page.is_last_page);
        assert_eq!(page.next_page_start, None);
        assert_eq!(page.values[0].name.as_deref(), Some("UserScript"));
    }

    #[test]
    fn clone_links_are_found_whatever_their_order() {
        let page = page(include_str!(
            "../../../testdata/bitbucket/dc-repos-project-single-page.json"
        ));
        let repositories: Vec<Repository> = page.values.into_iter().map(Into::into).collect();
        assert_eq!(repositories.len(), 6);
        let mux = repositories.iter().find(|r| r.slug == "mux").unwrap();
        assert_eq!(
            mux.clone_https.as_deref(),
            Some("https://bitbucket.sgdev.org/scm/sgdemo/mux.git")
        );
        assert_eq!(
            mux.clone_ssh.as_deref(),
            Some("ssh://git@bitbucket.sgdev.org:7999/sgdemo/mux.git")
        );
    }

    #[test]
    fn archived_repositories_parse_with_their_display_name() {
        let page = page(include_str!(
            "../../../testdata/bitbucket/dc-repos-archived-flag.json"
        ));
        let archived: Repository = page.values.into_iter().nth(1).unwrap().into();
        assert_eq!(archived.full_name, "FOO/bar-archived");
        assert_eq!(archived.name, "test-repos");
        assert_eq!(
            archived.clone_https.as_deref(),
            Some("http://localhost:7990/scm/foo/bar-archived.git")
        );
    }

    #[test]
    fn the_recorded_user_has_a_display_name() {
        let user: User =
            serde_json::from_str(include_str!("../../../testdata/bitbucket/dc-user.json")).unwrap();
        assert_eq!(user.display_name.as_deref(), Some("Jane Citizen"));
    }

    proptest::proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = serde_json::from_slice::<Page>(&body).map(|p| p.values.into_iter().map(Repository::from).count());
            let _ = serde_json::from_slice::<User>(&body);
        }

        /// The recorded page and user with one byte changed: a value or an error, never a
        /// panic.
        #[test]
        fn parsing_damaged_recorded_bodies_never_panics(at in proptest::num::usize::ANY, byte in proptest::num::u8::ANY) {
            let mut page = include_bytes!("../../../testdata/bitbucket/dc-repos-page1-not-last.json").to_vec();
            let index = at % page.len();
            page[index] = byte;
            let _ = serde_json::from_slice::<Page>(&page).map(|p| p.values.into_iter().map(Repository::from).count());
            let mut user = include_bytes!("../../../testdata/bitbucket/dc-user.json").to_vec();
            let index = at % user.len();
            user[index] = byte;
            let _ = serde_json::from_slice::<User>(&user);
        }
    }
}
