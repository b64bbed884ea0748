//! The Bitbucket client against the project's Bitbucket simulator on 127.0.0.1: every credential
//! kind, every error class, paging in both envelopes, retries with backoff, OAuth token reuse,
//! and that no secret reaches error text or logs.

use std::time::{Duration, Instant};

use bitbucket_operator::bitbucket::{
    Bound, Client, Credentials, Error, ErrorClass, IdentityKind, ListScope, ListingLimits,
    RetryPolicy, Server, TransportConfig,
};
use bitbucket_sim::{CloudRepositoryChange, FaultRule, Fixture, Generator, Simulator};
use url::Url;

const API_TOKEN: &str = "FAKE-cloud-api-token-for-jdoe";
const ACCESS_TOKEN: &str = "FAKE-cloud-workspace-access-token-acme";
const OAUTH_ID: &str = "FAKEclientid4acme";
const OAUTH_SECRET: &str = "FAKE-oauth-client-secret-acme";
const DC_PASSWORD: &str = "FAKE-dc-password-jdoe";
const DC_TOKEN: &str = "FAKE-dc-personal-access-token-jdoe";

const USER: &str = "GET /2.0/user";
const REPOSITORIES: &str = "GET /2.0/repositories/{workspace}";
const TOKEN: &str = "POST /site/oauth2/access_token";

fn api_token(token: &str) -> Credentials {
    Credentials::CloudApiToken {
        email: "jdoe@example.com".into(),
        token: token.into(),
    }
}

fn access_token(token: &str) -> Credentials {
    Credentials::CloudAccessToken {
        token: token.into(),
    }
}

fn oauth(secret: &str) -> Credentials {
    Credentials::CloudOAuthConsumer {
        client_id: OAUTH_ID.into(),
        client_secret: secret.into(),
    }
}

fn dc_basic(password: &str) -> Credentials {
    Credentials::DataCenterBasic {
        username: "jdoe".into(),
        password: password.into(),
    }
}

fn dc_token(token: &str) -> Credentials {
    Credentials::DataCenterAccessToken {
        token: token.into(),
    }
}

/// Fast retries so tests that exercise them stay quick.
fn quick() -> TransportConfig {
    TransportConfig {
        timeout: Duration::from_secs(5),
        retry: RetryPolicy {
            max_retries: 2,
            base_delay: Duration::from_millis(20),
            max_delay: Duration::from_secs(2),
        },
        ..TransportConfig::default()
    }
}

fn client(sim: &Simulator, credentials: Credentials) -> Client {
    client_with(sim, credentials, quick())
}

/// A client of `server` at `url` (which it may send the credential to) that never retries: one
/// request shows what the client does with one answer.
fn unretried(server: Server, url: &str, credentials: Credentials) -> Client {
    let config = TransportConfig {
        retry: RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        },
        allowed: url.parse().unwrap(),
        ..quick()
    };
    Client::new(server, credentials, config).unwrap()
}

/// A client of the simulator, which the allowed servers name (as the operator's
/// `--allowed-servers` or a Secret's consent would).
fn client_with(sim: &Simulator, credentials: Credentials, config: TransportConfig) -> Client {
    let config = TransportConfig {
        allowed: config.allowed.and(&sim.base_url().parse().unwrap()),
        ..config
    };
    let server = if credentials.is_cloud() {
        Server::Cloud {
            api_url: Url::parse(&sim.cloud_api_url()).unwrap(),
        }
    } else {
        Server::DataCenter {
            base_url: Url::parse(&sim.base_url()).unwrap(),
        }
    };
    Client::new(server, credentials, config).unwrap()
}

async fn demo() -> Simulator {
    Simulator::start(Fixture::demo()).await.unwrap()
}

fn acme(projects: &[&str]) -> ListScope {
    ListScope::CloudWorkspace {
        workspace: "acme".into(),
        projects: projects.iter().map(|p| (*p).to_owned()).collect(),
    }
}

fn data_center(projects: &[&str]) -> ListScope {
    ListScope::DataCenter {
        projects: projects.iter().map(|p| (*p).to_owned()).collect(),
    }
}

// --- identity, per credential kind ------------------------------------------------------------

#[tokio::test]
async fn a_cloud_api_token_is_the_user_it_belongs_to_with_its_scopes() {
    let sim = demo().await;
    let identity = client(&sim, api_token(API_TOKEN))
        .whoami(None)
        .await
        .unwrap();
    assert_eq!(identity.kind, IdentityKind::User);
    assert_eq!(identity.username.as_deref(), Some("jdoe"));
    assert_eq!(identity.display_name.as_deref(), Some("Jane Doe"));
    assert_eq!(
        identity.account_id.as_deref(),
        Some("712020:5a6b7c8d-1e2f-4a3b-9c8d-7e6f5a4b3c2d")
    );
    assert_eq!(
        identity.uuid.as_deref(),
        Some("{d4c3b2a1-0f9e-4d8c-b7a6-958473625140}")
    );
    assert_eq!(
        identity.scopes,
        [
            "read:project:bitbucket",
            "read:repository:bitbucket",
            "read:user:bitbucket",
            "read:workspace:bitbucket"
        ]
    );
}

#[tokio::test]
async fn a_cloud_access_token_is_validated_against_its_workspace_not_as_a_user() {
    let sim = demo().await;
    let identity = client(&sim, access_token(ACCESS_TOKEN))
        .whoami(Some("acme"))
        .await
        .unwrap();
    assert_eq!(identity.kind, IdentityKind::AccessToken);
    assert_eq!(identity.username, None);
    assert_eq!(identity.scopes, ["project", "repository"]);
    let counters = sim.control().counters();
    assert_eq!(counters.endpoint(USER), 0, "access tokens are not users");
    assert_eq!(counters.endpoint(REPOSITORIES), 1);
}

#[tokio::test]
async fn a_cloud_oauth_consumer_gets_a_token_once_and_acts_for_its_owner() {
    let sim = demo().await;
    let client = client(&sim, oauth(OAUTH_SECRET));
    let identity = client.whoami(None).await.unwrap();
    assert_eq!(identity.kind, IdentityKind::OAuthConsumer);
    assert_eq!(identity.username.as_deref(), Some("jdoe"));
    client.whoami(None).await.unwrap();
    client.list_repositories(&acme(&[])).await.unwrap();
    let counters = sim.control().counters();
    assert_eq!(
        counters.endpoint(TOKEN),
        1,
        "the token is reused until it expires"
    );
    assert_eq!(counters.endpoint(USER), 2);
}

#[tokio::test]
async fn an_expired_oauth_token_is_replaced_without_failing_the_call() {
    let sim = demo().await;
    let client = client(&sim, oauth(OAUTH_SECRET));
    client.whoami(None).await.unwrap();
    sim.control().expire_oauth_tokens();
    let identity = client.whoami(None).await.unwrap();
    assert_eq!(identity.username.as_deref(), Some("jdoe"));
    let counters = sim.control().counters();
    assert_eq!(counters.endpoint(TOKEN), 2);
    assert_eq!(
        counters.endpoint(USER),
        3,
        "one refused with the old token, one retried"
    );
}

#[tokio::test]
async fn an_oauth_token_is_renewed_before_it_expires() {
    let sim = demo().await;
    sim.control().set_oauth_token_lifetime(Some(1));
    let client = client(&sim, oauth(OAUTH_SECRET));
    client.whoami(None).await.unwrap();
    // The token lives a second and is renewed a fifth of its life early.
    tokio::time::sleep(Duration::from_millis(900)).await;
    client.whoami(None).await.unwrap();
    let counters = sim.control().counters();
    assert_eq!(counters.endpoint(TOKEN), 2);
    assert_eq!(counters.endpoint(USER), 2, "no request was refused");
}

#[tokio::test]
async fn a_data_center_user_is_named_by_x_ausername_and_described_by_its_user_record() {
    let sim = demo().await;
    for credentials in [dc_basic(DC_PASSWORD), dc_token(DC_TOKEN)] {
        let identity = client(&sim, credentials).whoami(None).await.unwrap();
        assert_eq!(identity.kind, IdentityKind::DataCenterUser);
        assert_eq!(identity.username.as_deref(), Some("jdoe"));
        assert_eq!(identity.display_name.as_deref(), Some("Jane Doe"));
        assert!(identity.scopes.is_empty());
    }
}

#[tokio::test]
async fn a_data_center_validation_is_one_call_once_the_username_is_known() {
    const PROBE: &str = "GET /rest/api/1.0/application-properties";
    const USER: &str = "GET /rest/api/1.0/users/{user_slug}";
    let sim = demo().await;
    let calls = |sim: &bitbucket_sim::Simulator| {
        let counters = sim.control().counters();
        (counters.endpoint(PROBE), counters.endpoint(USER))
    };
    // Basic names its user: the user's own record is the answer that names the caller.
    let basic = client(&sim, dc_basic(DC_PASSWORD));
    basic.whoami(None).await.unwrap();
    assert_eq!(calls(&sim), (0, 1));
    // A token does not: the first validation probes, the client remembers who it is.
    sim.control().reset_counters();
    let token = client(&sim, dc_token(DC_TOKEN));
    token.whoami(None).await.unwrap();
    assert_eq!(calls(&sim), (1, 1));
    let again = token.whoami(None).await.unwrap();
    assert_eq!(calls(&sim), (1, 2));
    assert_eq!(again.display_name.as_deref(), Some("Jane Doe"));
    // Revoked once its user is known, the token is refused in that one call: the probe does
    // not ask again (the chaos soak counted two refusals per validation).
    sim.control().revoke_credential("jdoe-pat");
    sim.control().reset_counters();
    let revoked = token.whoami(None).await.unwrap_err();
    assert!(matches!(revoked, Error::Unauthorized { .. }), "{revoked}");
    assert_eq!(calls(&sim), (0, 1));
    // A refused password is one failed login, not two.
    sim.control().reset_counters();
    let refused = client(&sim, dc_basic("wrong"))
        .whoami(None)
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::Unauthorized { .. }), "{refused}");
    assert_eq!(calls(&sim), (0, 1));
}

// --- listing ----------------------------------------------------------------------------------

/// A thousand integrations on one Bitbucket share one connection pool and TLS set-up (55 KB
/// each when every client had its own), and each request still goes as its own credential.
#[tokio::test]
async fn clients_that_connect_the_same_way_share_connections_and_stay_themselves() {
    let sim = demo().await;
    let shared = quick();
    let user = client_with(&sim, api_token(API_TOKEN), shared.clone());
    let workspace = client_with(&sim, access_token(ACCESS_TOKEN), shared.clone());
    for _ in 0..2 {
        let (user, workspace) = (
            user.whoami(None).await,
            workspace.whoami(Some("acme")).await,
        );
        assert_eq!(user.unwrap().username.as_deref(), Some("jdoe"));
        assert_eq!(workspace.unwrap().kind, IdentityKind::AccessToken);
    }
    assert_eq!(shared.http.built(), 1, "one HTTP client for both");
    let wrong = client_with(&sim, api_token("FAKE-wrong"), shared.clone());
    assert_eq!(
        wrong.whoami(None).await.unwrap_err().class(),
        ErrorClass::Credentials,
        "a shared connection carries no one's credential"
    );

    // Other trusted CAs are another way of connecting; a client nobody holds is dropped.
    let other_ca = TransportConfig {
        ca_bundle_pem: Some(
            crate::support::tls::pki("bitbucket.test")
                .ca_pem
                .into_bytes(),
        ),
        ..shared.clone()
    };
    let private = client_with(&sim, api_token(API_TOKEN), other_ca);
    assert_eq!((shared.http.built(), shared.http.live()), (2, 2));
    drop((user, workspace, wrong, private));
    assert_eq!(shared.http.live(), 0);
}

#[tokio::test]
async fn a_cloud_workspace_lists_every_repository_sorted_with_clean_clone_urls() {
    let sim = demo().await;
    let repositories = client(&sim, api_token(API_TOKEN))
        .list_repositories(&acme(&[]))
        .await
        .unwrap();
    let names: Vec<_> = repositories.iter().map(|r| r.full_name.as_str()).collect();
    assert_eq!(
        names,
        [
            "acme/api",
            "acme/api-gateway",
            "acme/billing",
            "acme/ci-templates",
            "acme/docs",
            "acme/infra",
            "acme/marketing-site",
            "acme/runbooks",
            "acme/terraform-modules",
            "acme/web-app"
        ]
    );
    let gateway = &repositories[1];
    assert_eq!(gateway.slug, "api-gateway");
    assert_eq!(gateway.name, "API Gateway");
    assert_eq!(gateway.project.as_deref(), Some("API"));
    assert!(gateway.private);
    assert_eq!(gateway.main_branch.as_deref(), Some("main"));
    assert_eq!(
        gateway.clone_https.as_deref(),
        Some("https://bitbucket.org/acme/api-gateway.git"),
        "the caller's username is stripped"
    );
    assert_eq!(
        gateway.clone_ssh.as_deref(),
        Some("git@bitbucket.org:acme/api-gateway.git")
    );
    assert_eq!(
        gateway.html_url.as_deref(),
        Some("https://bitbucket.org/acme/api-gateway")
    );
    assert!(gateway.updated_at.is_some());
    let docs = &repositories[4];
    assert!(!docs.private);
    let runbooks = &repositories[7];
    assert_eq!(
        runbooks.main_branch, None,
        "an empty repository has no main branch"
    );
}

#[tokio::test]
async fn a_project_filter_is_applied_by_bitbucket() {
    let sim = demo().await;
    let repositories = client(&sim, api_token(API_TOKEN))
        .list_repositories(&acme(&["API", "OPS"]))
        .await
        .unwrap();
    assert_eq!(repositories.len(), 7);
    assert!(
        repositories
            .iter()
            .all(|r| matches!(r.project.as_deref(), Some("API" | "OPS")))
    );
    assert_eq!(sim.control().counters().endpoint(REPOSITORIES), 1);
}

/// The error of listing workspace `acme` with an API token while `fault` holds.
async fn listing_error(sim: &Simulator, fault: FaultRule) -> Error {
    sim.control().add_fault(fault);
    client(sim, api_token(API_TOKEN))
        .list_repositories(&acme(&[]))
        .await
        .unwrap_err()
}

/// The demo's workspace `acme` with 245 more repositories: 255, three pages of up to 100.
async fn large_cloud_workspace() -> Simulator {
    let mut fixture = Fixture::demo();
    fixture.cloud.workspaces[0].generate = Some(Generator {
        count: 245,
        prefix: "svc".into(),
        project: "OPS".into(),
        private: true,
    });
    Simulator::start(fixture).await.unwrap()
}

#[tokio::test]
async fn a_large_cloud_workspace_is_paged_100_at_a_time() {
    let sim = large_cloud_workspace().await;
    let repositories = client(&sim, api_token(API_TOKEN))
        .list_repositories(&acme(&[]))
        .await
        .unwrap();
    assert_eq!(repositories.len(), 255);
    assert_eq!(
        sim.control().counters().endpoint(REPOSITORIES),
        3,
        "255 repositories are 3 pages of up to 100"
    );
}

// --- every listing is bounded (issue 25) -----------------------------------------------------

fn bounded(max_repositories: usize, deadline: Duration) -> TransportConfig {
    TransportConfig {
        listing: ListingLimits {
            max_repositories,
            deadline,
        },
        ..quick()
    }
}

const DC_PROJECT_REPOS: &str = "GET /rest/api/1.0/projects/{project_key}/repos";

#[tokio::test]
async fn a_listing_stops_at_its_bound_of_repositories_without_holding_more() {
    let sim = large_cloud_workspace().await;
    let config = bounded(150, Duration::from_secs(60));
    let error = client_with(&sim, api_token(API_TOKEN), config)
        .list_repositories(&acme(&[]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::ListingTooLarge {
                bound: Bound::Repositories(150),
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(
        error.class(),
        ErrorClass::Request,
        "a bigger list needs a higher bound"
    );
    assert_eq!(
        sim.control().counters().endpoint(REPOSITORIES),
        2,
        "2 pages of 100 pass 150"
    );
}

#[tokio::test]
async fn data_center_pages_that_never_end_are_refused_after_a_few_empty_ones() {
    // Both of the client's Data Center loops: a project's repositories, and everything the
    // credential sees.
    for (path, projects, endpoint) in [
        (
            "/rest/api/1.0/projects/PLAT/repos",
            &["PLAT"][..],
            DC_PROJECT_REPOS,
        ),
        ("/rest/api/1.0/repos", &[][..], "GET /rest/api/1.0/repos"),
    ] {
        let mut fixture = Fixture::demo();
        fixture.data_center.page_cap = 2;
        let sim = Simulator::start(fixture).await.unwrap();
        sim.control()
            .add_fault(FaultRule::endless_pages().on_path(path));
        let started = Instant::now();
        let client = client(&sim, dc_basic(DC_PASSWORD));
        let scope = data_center(projects);
        let error = tokio::time::timeout(Duration::from_secs(30), client.list_repositories(&scope))
            .await
            .expect("the listing ends")
            .unwrap_err();
        let pages = sim.control().counters().endpoint(endpoint);
        eprintln!(
            "endless Data Center pages at {path}: refused after {pages} pages, {:?}",
            started.elapsed()
        );
        assert!(
            matches!(error, Error::PagingLoop { .. }),
            "{path}: {error:?}"
        );
        assert!(
            error
                .to_string()
                .contains("pages in a row held no repository"),
            "{error}"
        );
        assert!((1..=10).contains(&pages), "{path}: {pages} pages fetched");
    }
}

#[tokio::test]
async fn cloud_pages_that_never_end_are_refused() {
    let sim = demo().await;
    let endless = FaultRule::endless_pages().on_path("/2.0/repositories/acme");
    let error = listing_error(&sim, endless).await;
    let pages = sim.control().counters().endpoint(REPOSITORIES);
    eprintln!("endless Cloud pages: refused after {pages} pages");
    assert!(matches!(error, Error::PagingLoop { .. }), "{error:?}");
    assert!(pages <= 10, "{pages} pages fetched");
}

#[tokio::test]
async fn a_listing_that_takes_longer_than_its_deadline_is_given_up() {
    let sim = demo().await;
    sim.control()
        .add_fault(FaultRule::latency(3_000).on_path("/2.0/repositories/acme"));
    let config = bounded(100_000, Duration::from_secs(1));
    let started = Instant::now();
    let error = client_with(&sim, api_token(API_TOKEN), config)
        .list_repositories(&acme(&[]))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::ListingTooLarge {
                bound: Bound::Deadline(_),
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(
        error.class(),
        ErrorClass::Transient,
        "slower than allowed: perhaps not next time"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn data_center_projects_are_paged_by_next_page_start_up_to_the_server_cap() {
    let mut fixture = Fixture::demo();
    fixture.data_center.page_cap = 2;
    let sim = Simulator::start(fixture).await.unwrap();
    let repositories = client(&sim, dc_basic(DC_PASSWORD))
        .list_repositories(&data_center(&["PLAT", "~jdoe"]))
        .await
        .unwrap();
    let names: Vec<_> = repositories.iter().map(|r| r.full_name.as_str()).collect();
    assert_eq!(
        names,
        [
            "PLAT/core",
            "PLAT/deploy-tools",
            "PLAT/legacy-build",
            "PLAT/scratch",
            "~jdoe/dotfiles"
        ]
    );
    assert_eq!(
        sim.control()
            .counters()
            .endpoint("GET /rest/api/1.0/projects/{project_key}/repos"),
        3,
        "PLAT in two pages of two, ~jdoe in one"
    );
    let core = &repositories[0];
    assert!(core.private);
    let https = core.clone_https.as_deref().unwrap();
    assert!(
        https.ends_with("/scm/plat/core.git") && !https.contains('@'),
        "{https}"
    );
    assert!(core.clone_ssh.as_deref().unwrap().starts_with("ssh://"));
}

#[tokio::test]
async fn data_center_without_projects_lists_everything_the_credential_sees() {
    let sim = demo().await;
    let repositories = client(&sim, dc_token(DC_TOKEN))
        .list_repositories(&data_center(&[]))
        .await
        .unwrap();
    assert!(
        repositories
            .iter()
            .any(|r| r.full_name == "OPS/status-page" && !r.private)
    );
    assert!(repositories.iter().any(|r| r.full_name == "PLAT/core"));
    let project_token = client(&sim, dc_token("FAKE-dc-project-access-token-plat"))
        .list_repositories(&data_center(&[]))
        .await
        .unwrap();
    assert!(
        project_token
            .iter()
            .all(|r| r.project.as_deref() == Some("PLAT") || !r.private),
        "a project token sees its project and public repositories only: {project_token:?}"
    );
    assert!(project_token.iter().any(|r| r.full_name == "PLAT/core"));
}

#[tokio::test]
async fn the_next_listing_shows_added_renamed_privatised_and_deleted_repositories() {
    let sim = demo().await;
    let client = client(&sim, api_token(API_TOKEN));
    let control = sim.control();
    let mut added = control.fixture().cloud.workspaces[0].repositories[0].clone();
    added.slug = "new-service".into();
    added.uuid = None;
    control.add_cloud_repository("acme", added).unwrap();
    control
        .change_cloud_repository(
            "acme",
            "docs",
            CloudRepositoryChange {
                private: Some(true),
                ..CloudRepositoryChange::default()
            },
        )
        .unwrap();
    control
        .change_cloud_repository(
            "acme",
            "billing",
            CloudRepositoryChange {
                slug: Some("payments".into()),
                ..CloudRepositoryChange::default()
            },
        )
        .unwrap();
    control.delete_cloud_repository("acme", "runbooks").unwrap();
    let repositories = client.list_repositories(&acme(&[])).await.unwrap();
    let find = |name: &str| repositories.iter().find(|r| r.full_name == name);
    assert!(find("acme/new-service").is_some());
    assert!(find("acme/docs").unwrap().private);
    assert!(find("acme/billing").is_none() && find("acme/payments").is_some());
    assert!(find("acme/runbooks").is_none());
}

// --- errors, per class ------------------------------------------------------------------------

#[tokio::test]
async fn every_credential_kind_with_a_wrong_secret_is_unauthorized_and_not_retried() {
    let sim = demo().await;
    let cases = [
        (api_token("wrong"), Some("acme")),
        (access_token("wrong"), Some("acme")),
        (oauth("wrong"), None),
        (dc_basic("wrong"), None),
        (dc_token("wrong"), None),
    ];
    for (credentials, workspace) in cases {
        let kind = credentials.kind();
        sim.control().reset_counters();
        let error = client(&sim, credentials)
            .whoami(workspace)
            .await
            .unwrap_err();
        assert!(
            matches!(error, Error::Unauthorized { .. }),
            "{kind}: {error:?}"
        );
        assert_eq!(error.class(), ErrorClass::Credentials);
        assert_eq!(
            sim.control().counters().total,
            1,
            "{kind}: a refused credential is tried once (repeated bad logins lock accounts)"
        );
    }
}

#[tokio::test]
async fn a_plain_text_401_from_cloud_becomes_unauthorized() {
    let sim = demo().await;
    let error = client(&sim, api_token("wrong"))
        .whoami(None)
        .await
        .unwrap_err();
    // Cloud answers rejected Basic credentials in text/plain (api-facts §C.1).
    assert!(
        error
            .to_string()
            .starts_with("Bitbucket rejected the credential (401)"),
        "{error}"
    );
}

#[tokio::test]
async fn missing_scopes_are_named_with_what_was_granted() {
    let mut fixture = Fixture::demo();
    fixture.cloud.credentials[0].scopes = vec!["read:repository:bitbucket".into()];
    let sim = Simulator::start(fixture).await.unwrap();
    let error = client(&sim, api_token(API_TOKEN))
        .whoami(None)
        .await
        .unwrap_err();
    match &error {
        Error::InsufficientScopes { required, granted } => {
            assert_eq!(required, &["read:user:bitbucket"]);
            assert_eq!(granted, &["read:repository:bitbucket"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(error.class(), ErrorClass::Credentials);
}

#[tokio::test]
async fn an_unknown_workspace_or_project_is_not_found() {
    let sim = demo().await;
    let error = client(&sim, api_token(API_TOKEN))
        .list_repositories(&ListScope::CloudWorkspace {
            workspace: "nope".into(),
            projects: vec![],
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::NotFound { message } if message.contains("nope")),
        "{error:?}"
    );
    assert_eq!(error.class(), ErrorClass::Request);
    let error = client(&sim, dc_basic(DC_PASSWORD))
        .list_repositories(&data_center(&["NOPE"]))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::NotFound { .. }), "{error:?}");
}

#[tokio::test]
async fn a_data_center_project_without_permission_is_forbidden() {
    let sim = demo().await;
    let error = client(&sim, dc_token("FAKE-dc-project-access-token-plat"))
        .list_repositories(&data_center(&["~jdoe"]))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Forbidden { .. }), "{error:?}");
    assert_eq!(error.class(), ErrorClass::Credentials);
}

#[tokio::test]
async fn a_removed_endpoint_says_atlassian_removed_it() {
    let sim = demo().await;
    sim.control().add_fault(
        FaultRule::status(410)
            .with_body(
                "application/json",
                include_str!("../../testdata/bitbucket/cloud-error-410-change-2770.json"),
            )
            .on_path("/2.0/user"),
    );
    let error = client(&sim, api_token(API_TOKEN))
        .whoami(None)
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "the endpoint /2.0/user was removed by Atlassian (410): CHANGE-2770 - Functionality has been deprecated"
    );
}

#[tokio::test]
async fn a_429_then_success_is_retried_with_backoff() {
    let sim = demo().await;
    sim.control()
        .add_fault(FaultRule::status(429).on_path("/2.0/user").times(1));
    let identity = client(&sim, api_token(API_TOKEN)).whoami(None).await;
    assert!(identity.is_ok(), "{identity:?}");
    assert_eq!(sim.control().counters().endpoint(USER), 2);
}

#[tokio::test]
async fn a_short_retry_after_is_waited_out_before_retrying() {
    let sim = demo().await;
    sim.control().add_fault(
        FaultRule::status(429)
            .with_retry_after("1")
            .on_path("/2.0/user")
            .times(1),
    );
    let started = Instant::now();
    client(&sim, api_token(API_TOKEN))
        .whoami(None)
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After: 1 was not honoured"
    );
    assert_eq!(sim.control().counters().endpoint(USER), 2);
}

#[tokio::test]
async fn a_long_retry_after_is_returned_to_the_caller_instead_of_blocking() {
    let sim = demo().await;
    sim.control().add_fault(
        FaultRule::status(429)
            .with_retry_after("120")
            .on_path("/2.0/user"),
    );
    let error = client(&sim, api_token(API_TOKEN))
        .whoami(None)
        .await
        .unwrap_err();
    assert_eq!(error.retry_after(), Some(Duration::from_secs(120)));
    assert_eq!(error.class(), ErrorClass::Transient);
    assert_eq!(sim.control().counters().endpoint(USER), 1);
}

#[tokio::test]
async fn a_persistent_5xx_is_tried_a_bounded_number_of_times() {
    let sim = demo().await;
    sim.control().add_fault(
        FaultRule::status(502)
            .with_body("text/html", "<html><body>502 Bad Gateway</body></html>")
            .on_path("/2.0/repositories"),
    );
    let error = client(&sim, api_token(API_TOKEN))
        .list_repositories(&acme(&[]))
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::Unavailable { status: 502, .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("502 Bad Gateway"), "{error}");
    assert_eq!(
        sim.control().counters().endpoint(REPOSITORIES),
        3,
        "the first try and two retries"
    );
}

#[tokio::test]
async fn a_slow_answer_times_out() {
    let sim = demo().await;
    sim.control()
        .add_fault(FaultRule::latency(2_000).on_path("/2.0/user"));
    let config = TransportConfig {
        timeout: Duration::from_millis(300),
        retry: RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        },
        ..TransportConfig::default()
    };
    let error = client_with(&sim, api_token(API_TOKEN), config)
        .whoami(None)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Timeout { .. }), "{error:?}");
    assert_eq!(error.class(), ErrorClass::Transient);
}

#[tokio::test]
async fn an_unreachable_server_is_a_transport_error() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = format!("http://127.0.0.1:{port}");
    let client = unretried(
        Server::DataCenter {
            base_url: Url::parse(&server).unwrap(),
        },
        &server,
        dc_basic(DC_PASSWORD),
    );
    let error = client.whoami(None).await.unwrap_err();
    assert!(matches!(error, Error::Transport { .. }), "{error:?}");
}

#[tokio::test]
async fn a_malformed_body_is_a_decode_error_with_an_excerpt() {
    let sim = demo().await;
    let error = listing_error(
        &sim,
        FaultRule::malformed_json().on_path("/2.0/repositories"),
    )
    .await;
    match &error {
        Error::Decode {
            status, excerpt, ..
        } => {
            assert_eq!(*status, 200);
            assert!(excerpt.starts_with('{'), "{excerpt}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_token_answer_cut_short_is_an_error_that_quotes_none_of_its_tokens() {
    // The chaos soak's defect: the error quoted the start of the token endpoint's answer, and
    // with it a fresh access token (which no redactor knows), into status and an Event.
    let sim = demo().await;
    let body = r#"{"access_token": "FAKE-fresh-access-token-7d1c", "expires_in": 7200, "refresh_token": "FAKE-fresh-refre"#;
    sim.control().add_fault(
        FaultRule::status(200)
            .with_body("application/json", body)
            .on_path("/site/oauth2/access_token"),
    );
    let error = client(&sim, oauth(OAUTH_SECRET))
        .whoami(None)
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::Decode { status: 200, .. }),
        "{error:?}"
    );
    let told = format!("{error} {error:?}");
    assert!(!told.contains("FAKE-fresh"), "{told}");
    assert_eq!(
        error.to_string(),
        "unexpected answer from Bitbucket (200): the OAuth token answer is not a token (cut short at refresh_token)"
    );
}

/// A page whose `next` is `next`, served in place of the real first page.
fn page_with_next(next: &str) -> FaultRule {
    let body = serde_json::json!({"values": [], "next": next}).to_string();
    FaultRule::status(200)
        .with_body("application/json", &body)
        .on_path("/2.0/repositories/acme")
}

#[tokio::test]
async fn a_next_link_to_another_host_is_refused_and_gets_no_credential() {
    let sim = demo().await;
    let elsewhere = demo().await;
    let next = format!("{}/repositories/acme?page=2", elsewhere.cloud_api_url());
    sim.control().add_fault(page_with_next(&next));
    let error = client(&sim, api_token(API_TOKEN))
        .list_repositories(&acme(&[]))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::PagingLoop { .. }), "{error:?}");
    assert_eq!(
        elsewhere.control().counters().total,
        0,
        "nothing was sent to the other host"
    );
}

#[tokio::test]
async fn a_redirect_is_not_followed_and_its_target_gets_no_credential() {
    let elsewhere = demo().await;
    // A server that answers every request with a redirect to `elsewhere`.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = format!("http://{}", listener.local_addr().unwrap());
    let location = format!("{}/2.0/user", elsewhere.base_url());
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request).await;
            let answer =
                format!("HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n");
            let _ = stream.write_all(answer.as_bytes()).await;
        }
    });
    let config = TransportConfig {
        // Even a server the credential may go to cannot send it on.
        allowed: format!("{server}, {}", elsewhere.base_url())
            .parse()
            .unwrap(),
        ..quick()
    };
    let client = Client::new(
        Server::Cloud {
            api_url: Url::parse(&format!("{server}/2.0")).unwrap(),
        },
        api_token(API_TOKEN),
        config,
    )
    .unwrap();
    let error = client.whoami(None).await.unwrap_err();
    assert!(
        matches!(error, Error::UnexpectedStatus { status: 302, .. }),
        "{error:?}"
    );
    assert_eq!(elsewhere.control().counters().total, 0);
}

#[tokio::test]
async fn a_url_outside_the_allowed_servers_gets_nothing() {
    let sim = demo().await;
    let config = TransportConfig {
        allowed: "https://bitbucket.example.com".parse().unwrap(),
        ..quick()
    };
    let client = Client::new(
        Server::Cloud {
            api_url: Url::parse(&sim.cloud_api_url()).unwrap(),
        },
        api_token(API_TOKEN),
        config,
    )
    .unwrap();
    let error = client.whoami(None).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{}/user is not an allowed Bitbucket server for this credential",
            sim.cloud_api_url()
        )
    );
    assert_eq!(error.class(), ErrorClass::Request);
    assert_eq!(sim.control().counters().total, 0);
}

#[tokio::test]
async fn a_next_link_that_repeats_a_page_is_refused() {
    let sim = demo().await;
    let next = format!("{}/repositories/acme?page=2", sim.cloud_api_url());
    sim.control().add_fault(page_with_next(&next));
    let error = client(&sim, api_token(API_TOKEN))
        .list_repositories(&acme(&[]))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("repeats an earlier page"),
        "{error}"
    );
    assert_eq!(sim.control().counters().endpoint(REPOSITORIES), 2);
}

// --- secrets ----------------------------------------------------------------------------------

#[tokio::test]
async fn no_secret_appears_in_errors_debug_output_or_logs() {
    let sim = demo().await;
    // A misbehaving proxy that echoes the credential back in its error page.
    for (id, secret) in [
        ("acme-ci-token", ACCESS_TOKEN),
        ("acme-oauth", OAUTH_SECRET),
    ] {
        let echoed = format!("<html>503 for Bearer {secret}</html>");
        sim.control().add_fault(
            FaultRule::status(503)
                .with_body("text/html", &echoed)
                .on_path("/2.0/repositories")
                .for_credential(id),
        );
    }
    let secrets = [API_TOKEN, ACCESS_TOKEN, OAUTH_SECRET, DC_PASSWORD, DC_TOKEN];
    let (texts, logs) = crate::support::logs_of(async {
        let mut texts = Vec::new();
        for (credentials, workspace) in [
            (access_token(ACCESS_TOKEN), Some("acme")),
            (oauth(OAUTH_SECRET), None),
            (api_token("wrong-and-secret"), None),
            (dc_basic("wrong-and-secret"), None),
            (dc_token(DC_TOKEN), None),
        ] {
            let client = client(&sim, credentials);
            texts.push(format!("{client:?}"));
            if let Err(e) = client.whoami(workspace).await {
                texts.push(format!("{e} {e:?}"));
            }
            if let Err(e) = client.list_repositories(&acme(&[])).await {
                texts.push(format!("{e} {e:?}"));
            }
        }
        texts
    })
    .await;
    assert!(
        texts.iter().any(|t| t.contains("<redacted>")),
        "the echo test did not run: {texts:?}"
    );
    assert!(
        !logs.is_empty(),
        "nothing was logged, so the log check proves nothing"
    );
    for secret in secrets.iter().chain(&["wrong-and-secret"]) {
        for text in &texts {
            assert!(!text.contains(secret), "{secret} leaked in {text}");
        }
        assert!(!logs.contains(secret), "{secret} leaked in the logs");
    }
}

#[tokio::test]
async fn credentials_of_the_wrong_product_are_refused_before_any_request() {
    let error = Client::new(
        Server::cloud(),
        dc_basic(DC_PASSWORD),
        TransportConfig::default(),
    )
    .unwrap_err();
    assert_eq!(
        error.to_string(),
        "invalid Bitbucket client configuration: a Data Center username and password cannot be used with Bitbucket Cloud"
    );
}

#[tokio::test]
async fn an_unusable_ca_bundle_is_a_configuration_error() {
    let config = TransportConfig {
        ca_bundle_pem: Some(
            b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".to_vec(),
        ),
        ..TransportConfig::default()
    };
    let error = Client::new(Server::cloud(), api_token(API_TOKEN), config).unwrap_err();
    assert!(matches!(error, Error::Config { .. }), "{error:?}");
    let empty = TransportConfig {
        ca_bundle_pem: Some(b"no certificates here".to_vec()),
        ..TransportConfig::default()
    };
    let error = Client::new(Server::cloud(), api_token(API_TOKEN), empty).unwrap_err();
    assert!(
        error.to_string().contains("holds no certificate"),
        "{error}"
    );
}

/// A server answering `GET` with an endless chunked body; the bytes it managed to send.
async fn endless_server() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::{Arc, atomic::AtomicUsize, atomic::Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/2.0", listener.local_addr().unwrap());
    let sent = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&sent);
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = listener.accept().await {
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = stream.read(&mut request).await;
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, " ".repeat(64 * 1024));
                // Until the client hangs up (or a gigabyte, which it must never take).
                while counted.load(Ordering::Relaxed) < 1 << 30 {
                    if stream.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                    counted.fetch_add(64 * 1024, Ordering::Relaxed);
                }
            });
        }
    });
    (url, sent)
}

#[tokio::test]
async fn an_endless_answer_is_cut_off_at_the_bound_not_buffered() {
    use bitbucket_operator::bitbucket::transport::MAX_BODY_BYTES;
    let (url, sent) = endless_server().await;
    let client = unretried(
        Server::Cloud {
            api_url: Url::parse(&url).unwrap(),
        },
        &url,
        api_token(API_TOKEN),
    );
    let error = client.whoami(None).await.unwrap_err();
    assert!(
        matches!(error, Error::TooLarge { limit } if limit == MAX_BODY_BYTES),
        "{error:?}"
    );
    // The client hung up near the bound; it did not read on until the timeout.
    let sent = sent.load(std::sync::atomic::Ordering::Relaxed);
    assert!(sent < 4 * MAX_BODY_BYTES, "{sent} bytes were sent");
}

/// Found by the soak: with a 16 MiB bound, eight reconciles reading oversized answers left the
/// operator (glibc) holding some 90 MB more for good. A 5 MiB answer is refused now, while the
/// largest real page — Data Center's 1,000 repositories — still reads.
#[tokio::test]
async fn an_answer_of_5_mib_is_refused_while_the_largest_real_page_reads() {
    let mut fixture = Fixture::demo();
    fixture.data_center.page_cap = 1000;
    fixture.data_center.projects[0].generate = Some(Generator {
        count: 1000,
        prefix: "svc".into(),
        project: String::new(),
        private: true,
    });
    let sim = Simulator::start(fixture).await.unwrap();
    let client = client(&sim, dc_basic(DC_PASSWORD));
    let listed = client
        .list_repositories(&data_center(&["PLAT"]))
        .await
        .unwrap();
    assert_eq!(listed.len(), 1004);

    sim.control()
        .add_fault(FaultRule::oversize(5 * 1024 * 1024).times(5));
    let error = client
        .list_repositories(&data_center(&["PLAT"]))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::TooLarge { .. }), "{error:?}");
}

#[tokio::test]
async fn a_declared_length_over_the_bound_is_refused_before_reading() {
    use bitbucket_operator::bitbucket::transport::MAX_BODY_BYTES;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/2.0", listener.local_addr().unwrap());
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request).await;
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{{",
                MAX_BODY_BYTES + 1
            );
            let _ = stream.write_all(head.as_bytes()).await;
            // ... and then nothing: a client that waited for the body would time out.
            tokio::time::sleep(Duration::from_secs(60)).await;
        }
    });
    let client = unretried(
        Server::Cloud {
            api_url: Url::parse(&url).unwrap(),
        },
        &url,
        api_token(API_TOKEN),
    );
    let error = client.whoami(None).await.unwrap_err();
    assert!(matches!(error, Error::TooLarge { .. }), "{error:?}");
}
