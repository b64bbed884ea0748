//! Bitbucket Cloud REST 2.0: identity (`/2.0/user`, or a workspace probe for access tokens) and
//! the workspace's repositories (`/2.0/repositories/{workspace}`, 100 per page, trimmed with
//! `fields=`, filtered by project with `q=`). Does network I/O.

use serde::Deserialize;

use super::{
    Client, Error, Identity, IdentityKind, ListingSummary, Repository,
    credentials::Credentials,
    model::strip_userinfo,
    paging::{NextLinks, Tally},
    scopes,
};

/// Only what status needs (api-facts §A.6): a page of 100 repositories stays small.
const REPOSITORY_FIELDS: &str = "next,values.uuid,values.slug,values.name,values.full_name,values.is_private,\
values.mainbranch.name,values.links.clone,values.links.html.href,values.project.key,values.updated_on";

/// The largest page Bitbucket Cloud serves (api-facts §A.5).
const PAGE_LENGTH: &str = "100";

pub(super) async fn whoami(client: &Client, workspace: Option<&str>) -> Result<Identity, Error> {
    if let Credentials::CloudAccessToken { .. } = client.credentials {
        // Access tokens are not users: `/2.0/user` refuses them (api-facts §B.3). Listing one
        // repository of their workspace proves the token and its repository scope.
        let workspace = workspace.ok_or_else(|| Error::Config {
            message: "a Cloud access token can only be checked against its workspace".into(),
        })?;
        let url = client.url(
            &["repositories", workspace],
            &[("pagelen", "1"), ("fields", "values.slug")],
        );
        let response = client.get("whoami", &url).await?;
        let _: Page<serde_json::Value> = response.json(&client.redact)?;
        return Ok(Identity {
            kind: IdentityKind::AccessToken,
            username: None,
            display_name: None,
            uuid: None,
            account_id: None,
            scopes: scopes(&response),
        });
    }
    let url = client.url(&["user"], &[]);
    let response = client.get("whoami", &url).await?;
    let user: User = response.json(&client.redact)?;
    Ok(Identity {
        kind: match client.credentials {
            Credentials::CloudOAuthConsumer { .. } => IdentityKind::OAuthConsumer,
            // A signed-in user's token acts as that user.
            _ => IdentityKind::User,
        },
        username: user.username.or(user.nickname),
        display_name: user.display_name,
        uuid: user.uuid,
        account_id: user.account_id,
        scopes: scopes(&response),
    })
}

pub(super) async fn list(
    client: &Client,
    workspace: &str,
    projects: &[String],
    tally: &mut Tally,
) -> Result<Vec<Repository>, Error> {
    let filter = project_filter(projects);
    let mut query = vec![("pagelen", PAGE_LENGTH), ("fields", REPOSITORY_FIELDS)];
    if let Some(filter) = &filter {
        query.push(("q", filter));
    }
    let mut url = client.url(&["repositories", workspace], &query);
    let mut links = NextLinks::new(&url);
    let mut repositories = Vec::new();
    loop {
        let response = client.get("list_repositories", &url).await?;
        let page: Page<CloudRepository> = response.json(&client.redact)?;
        tally.count(page.values.len(), response.body.len(), page.next.is_none())?;
        repositories.extend(page.values.into_iter().map(Repository::from));
        match page.next {
            Some(next) => url = links.follow(&next)?,
            None => return Ok(repositories),
        }
    }
}

/// One repository, with the fields a listing asks for (`GET /2.0/repositories/{workspace}/{slug}`).
pub(super) async fn repository(
    client: &Client,
    workspace: &str,
    slug: &str,
) -> Result<Repository, Error> {
    let fields = REPOSITORY_FIELDS
        .split(',')
        .filter_map(|field| field.strip_prefix("values."))
        .collect::<Vec<_>>()
        .join(",");
    let url = client.url(&["repositories", workspace, slug], &[("fields", &fields)]);
    let response = client.get("get_repository", &url).await?;
    let repository: CloudRepository = response.json(&client.redact)?;
    Ok(repository.into())
}

/// One request: the listing's size and its most recently updated repository
/// (`pagelen=1&sort=-updated_on`, api-facts §A.5–A.7).
pub(super) async fn summarize(
    client: &Client,
    workspace: &str,
    projects: &[String],
) -> Result<ListingSummary, Error> {
    let filter = project_filter(projects);
    let mut query = vec![
        ("pagelen", "1"),
        ("sort", "-updated_on"),
        ("fields", "size,values.updated_on"),
    ];
    if let Some(filter) = &filter {
        query.push(("q", filter));
    }
    let url = client.url(&["repositories", workspace], &query);
    let page: Summary = client
        .get("summarize_repositories", &url)
        .await?
        .json(&client.redact)?;
    Ok(ListingSummary {
        size: page.size.ok_or_else(|| Error::Decode {
            status: 200,
            message: "the summary page has no size".into(),
            excerpt: String::new(),
        })?,
        newest: page
            .values
            .first()
            .and_then(|r| r.updated_on.as_deref())
            .and_then(|t| t.parse().ok()),
    })
}

#[derive(Deserialize)]
struct Summary {
    size: Option<u64>,
    #[serde(default)]
    values: Vec<Updated>,
}

#[derive(Deserialize)]
struct Updated {
    updated_on: Option<String>,
}

/// `q=project.key IN ("A","B")` (api-facts §A.7), quoting keys safely.
fn project_filter(projects: &[String]) -> Option<String> {
    let quoted: Vec<String> = projects
        .iter()
        .map(|key| format!("\"{}\"", key.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    match quoted.as_slice() {
        [] => None,
        [one] => Some(format!("project.key = {one}")),
        many => Some(format!("project.key IN ({})", many.join(","))),
    }
}

#[derive(Deserialize)]
struct Page<T> {
    #[serde(default = "Vec::new")]
    values: Vec<T>,
    next: Option<String>,
}

#[derive(Deserialize)]
struct User {
    username: Option<String>,
    nickname: Option<String>,
    display_name: Option<String>,
    uuid: Option<String>,
    account_id: Option<String>,
}

#[derive(Deserialize)]
struct CloudRepository {
    uuid: Option<String>,
    full_name: String,
    slug: Option<String>,
    name: Option<String>,
    #[serde(default)]
    is_private: bool,
    mainbranch: Option<Branch>,
    #[serde(default)]
    links: Links,
    project: Option<Project>,
    updated_on: Option<String>,
}

#[derive(Deserialize)]
struct Branch {
    name: Option<String>,
}

#[derive(Deserialize, Default)]
struct Links {
    #[serde(default)]
    clone: Vec<Link>,
    html: Option<Href>,
}

#[derive(Deserialize)]
struct Link {
    href: String,
    name: Option<String>,
}

#[derive(Deserialize)]
struct Href {
    href: Option<String>,
}

#[derive(Deserialize)]
struct Project {
    key: Option<String>,
}

impl From<CloudRepository> for Repository {
    fn from(repository: CloudRepository) -> Self {
        let slug = repository.slug.unwrap_or_else(|| {
            // Older payloads lack `slug`; `full_name` is `workspace/slug`.
            repository
                .full_name
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned()
        });
        let clone = |kind: &str| {
            repository
                .links
                .clone
                .iter()
                .find(|link| link.name.as_deref() == Some(kind))
                .map(|link| strip_userinfo(&link.href))
        };
        Repository {
            id: repository.uuid,
            clone_https: clone("https"),
            clone_ssh: clone("ssh"),
            name: repository.name.unwrap_or_else(|| slug.clone()),
            slug,
            full_name: repository.full_name,
            project: repository.project.and_then(|p| p.key),
            private: repository.is_private,
            main_branch: repository.mainbranch.and_then(|b| b.name),
            html_url: repository.links.html.and_then(|h| h.href),
            updated_at: repository.updated_on.and_then(|t| t.parse().ok()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses a recorded body the way `list` does.
    fn page(body: &str) -> Page<CloudRepository> {
        serde_json::from_str(body).expect("recorded pages parse")
    }

    fn repository(body: &str) -> Repository {
        serde_json::from_str::<CloudRepository>(body)
            .expect("recorded repositories parse")
            .into()
    }

    #[test]
    fn the_recorded_first_page_parses_with_its_next_link() {
        let page = page(include_str!(
            "../../../testdata/bitbucket/cloud-repositories-page1.json"
        ));
        assert_eq!(
            page.next.as_deref(),
            Some("https://api.bitbucket.org/2.0/repositories/sourcegraph-testing?pagelen=1&page=2")
        );
        let repositories: Vec<Repository> = page.values.into_iter().map(Into::into).collect();
        assert_eq!(
            repositories,
            [Repository {
                id: Some("{b090a669-ac7b-44cd-9610-02d027cb39f3}".into()),
                full_name: "sourcegraph-testing/src-cli".into(),
                slug: "src-cli".into(),
                name: "src-cli".into(),
                project: Some("SOUR".into()),
                private: true,
                main_branch: Some("master".into()),
                clone_https: Some("https://bitbucket.org/sourcegraph-testing/src-cli.git".into()),
                clone_ssh: Some("git@bitbucket.org:sourcegraph-testing/src-cli.git".into()),
                html_url: Some("https://bitbucket.org/sourcegraph-testing/src-cli".into()),
                updated_at: Some("2022-03-17T11:17:49.067413Z".parse().unwrap()),
            }]
        );
    }

    #[test]
    fn the_recorded_last_page_has_no_next_link() {
        let page = page(include_str!(
            "../../../testdata/bitbucket/cloud-repositories-page2-last.json"
        ));
        assert_eq!(page.next, None);
        assert_eq!(page.values.len(), 1);
        assert_eq!(page.values[0].full_name, "sourcegraph-testing/sourcegraph");
    }

    #[test]
    fn the_recorded_empty_page_parses() {
        let page = page(include_str!(
            "../../../testdata/bitbucket/cloud-repositories-empty.json"
        ));
        assert!(page.values.is_empty() && page.next.is_none());
    }

    #[test]
    fn an_empty_repository_has_no_main_branch() {
        let repository = repository(include_str!(
            "../../../testdata/bitbucket/cloud-repository-empty-mainbranch-null.json"
        ));
        assert_eq!(repository.main_branch, None);
        assert_eq!(repository.project, None, "a 2017 payload without a project");
        assert_eq!(
            repository.clone_https.as_deref(),
            Some("https://bitbucket.org/Gizmodo1/my-first-blog-of-theace.git")
        );
    }

    #[test]
    fn a_public_repository_and_a_fork_parse() {
        let public = repository(include_str!(
            "../../../testdata/bitbucket/cloud-repository.json"
        ));
        assert!(!public.private);
        assert_eq!(public.full_name, "nfalco79/test-repos");
        assert_eq!(public.project.as_deref(), Some("PUB"));
        let fork = repository(include_str!(
            "../../../testdata/bitbucket/cloud-repository-fork.json"
        ));
        assert_eq!(fork.slug, "src-cli-fork-00");
        assert_eq!(fork.main_branch.as_deref(), Some("master"));
    }

    #[test]
    fn the_recorded_user_parses_into_an_identity() {
        let user: User =
            serde_json::from_str(include_str!("../../../testdata/bitbucket/cloud-user.json"))
                .unwrap();
        assert_eq!(user.username.as_deref(), Some("sourcegraph-testing"));
        assert_eq!(user.display_name.as_deref(), Some("Sourcegraph Testing"));
        assert_eq!(user.account_id.as_deref(), Some("623316f53fbb880068413f6b"));
        assert_eq!(
            user.uuid.as_deref(),
            Some("{4b85b785-1433-4092-8512-20302f4a03be}")
        );
    }

    proptest::proptest! {
        /// Whatever a server sends, parsing a page returns a value or an error, never a panic.
        #[test]
        fn parsing_arbitrary_bytes_never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = serde_json::from_slice::<Page<CloudRepository>>(&body).map(|p| {
                p.values.into_iter().map(Repository::from).count()
            });
        }

        /// The current user and the summary page (the other two bodies a Cloud client reads),
        /// from any bytes and from the recorded user with one byte changed: a value or an
        /// error, never a panic.
        #[test]
        fn parsing_any_user_or_summary_never_panics(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            at in proptest::num::usize::ANY,
            byte in proptest::num::u8::ANY,
        ) {
            let _ = serde_json::from_slice::<User>(&body);
            let _ = serde_json::from_slice::<Summary>(&body);
            let mut user = include_bytes!("../../../testdata/bitbucket/cloud-user.json").to_vec();
            let at = at % user.len();
            user[at] = byte;
            let _ = serde_json::from_slice::<User>(&user);
        }

        /// Recorded pages with a field cut short or retyped still never panic.
        #[test]
        fn parsing_damaged_recorded_pages_never_panics(cut in 0usize..3567, byte in proptest::num::u8::ANY) {
            let mut body = include_bytes!("../../../testdata/bitbucket/cloud-repositories-page1.json").to_vec();
            let cut = cut.min(body.len() - 1);
            body[cut] = byte;
            let _ = serde_json::from_slice::<Page<CloudRepository>>(&body).map(|p| {
                p.values.into_iter().map(Repository::from).count()
            });
        }
    }

    #[test]
    fn project_filters_use_bitbuckets_query_language() {
        assert_eq!(project_filter(&[]), None);
        assert_eq!(
            project_filter(&["API".into()]).unwrap(),
            r#"project.key = "API""#
        );
        assert_eq!(
            project_filter(&["API".into(), "WEB".into()]).unwrap(),
            r#"project.key IN ("API","WEB")"#
        );
        assert_eq!(
            project_filter(&[r#"A"B"#.into()]).unwrap(),
            r#"project.key = "A\"B""#
        );
    }
}
