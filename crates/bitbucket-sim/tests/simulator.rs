//! The Bitbucket simulator tested over raw HTTP (reqwest), independently of the operator's
//! client: authentication of every credential kind and the exact shape of each failure, paging
//! in both envelopes, partial responses and filters, faults, counters, rate limits, OAuth token
//! expiry, control-API data changes, and byte-for-byte replay of the recorded examples.

use std::time::{Duration, Instant};

use bitbucket_sim::{
    CloudCredentialKind, CloudRepository, CloudRepositoryChange, FaultRule, Fixture, Simulator,
};
use reqwest::{Client, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};

const JDOE_EMAIL: &str = "jdoe@example.com";
const JDOE_API_TOKEN: &str = "FAKE-cloud-api-token-for-jdoe";
const ACME_ACCESS_TOKEN: &str = "FAKE-cloud-workspace-access-token-acme";
const OAUTH_CLIENT_ID: &str = "FAKEclientid4acme";
const OAUTH_CLIENT_SECRET: &str = "FAKE-oauth-client-secret-acme";
const DC_PASSWORD: &str = "FAKE-dc-password-jdoe";
const DC_PAT: &str = "FAKE-dc-personal-access-token-jdoe";
const DC_PROJECT_TOKEN: &str = "FAKE-dc-project-access-token-plat";

fn client() -> Client {
    // reqwest is built without a TLS provider; plain http needs none, but building a client
    // still wants one installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("a reqwest client")
}

async fn demo() -> (Simulator, Client) {
    (
        Simulator::start(Fixture::demo())
            .await
            .expect("the simulator starts"),
        client(),
    )
}

/// Signs a request as one of the demo fixture's credentials.
trait SignedBy {
    fn by_jdoe(self) -> Self;
    fn by_ci_token(self) -> Self;
    fn by_dc_jdoe(self) -> Self;
}

impl SignedBy for RequestBuilder {
    fn by_jdoe(self) -> Self {
        self.basic_auth(JDOE_EMAIL, Some(JDOE_API_TOKEN))
    }
    fn by_ci_token(self) -> Self {
        self.bearer_auth(ACME_ACCESS_TOKEN)
    }
    fn by_dc_jdoe(self) -> Self {
        self.basic_auth("jdoe", Some(DC_PASSWORD))
    }
}

async fn json_of(response: Response) -> Value {
    let text = response.text().await.expect("a body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn header<'a>(response: &'a Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Follows `next` links from `url` and returns every value's `slug` plus the number of pages.
async fn list_all_slugs(
    client: &Client,
    url: String,
    auth: fn(RequestBuilder) -> RequestBuilder,
) -> (Vec<String>, usize) {
    let mut slugs = Vec::new();
    let mut pages = 0;
    let mut next = Some(url);
    while let Some(url) = next {
        let response = auth(client.get(&url)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{url}");
        let page = json_of(response).await;
        pages += 1;
        for value in page["values"].as_array().unwrap() {
            slugs.push(value["slug"].as_str().unwrap().to_owned());
        }
        next = page["next"].as_str().map(str::to_owned);
    }
    (slugs, pages)
}

async fn oauth_token(client: &Client, sim: &Simulator) -> Value {
    let response = client
        .post(format!("{}/site/oauth2/access_token", sim.base_url()))
        .basic_auth(OAUTH_CLIENT_ID, Some(OAUTH_CLIENT_SECRET))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    json_of(response).await
}

#[tokio::test]
async fn each_cloud_credential_kind_authenticates() {
    let (sim, client) = demo().await;
    let api = sim.cloud_api_url();

    let response = client
        .get(format!("{api}/user"))
        .by_jdoe()
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "x-credential-type"), Some("api_token"));
    assert_eq!(
        header(&response, "x-oauth-scopes"),
        Some(
            "read:user:bitbucket, read:workspace:bitbucket, read:project:bitbucket, read:repository:bitbucket"
        )
    );
    assert_eq!(
        header(&response, "x-accepted-oauth-scopes"),
        Some("read:user:bitbucket")
    );
    assert_eq!(
        header(&response, "content-type"),
        Some("application/json; charset=utf-8")
    );
    assert!(header(&response, "etag").is_some());
    let user = json_of(response).await;
    assert_eq!(user["username"], "jdoe");
    assert_eq!(user["display_name"], "Jane Doe");
    assert_eq!(user["type"], "user");

    let response = client
        .get(format!("{api}/repositories/acme?pagelen=1"))
        .by_ci_token()
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        header(&response, "x-credential-type"),
        Some("workspace_access_token")
    );

    let token = oauth_token(&client, &sim).await;
    let response = client
        .get(format!("{api}/user"))
        .bearer_auth(token["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(header(&response, "x-credential-type"), Some("oauth2"));
    assert_eq!(json_of(response).await["username"], "jdoe");
}

#[tokio::test]
async fn wrong_basic_credentials_on_cloud_get_a_plain_text_401_with_a_basic_challenge() {
    let (sim, client) = demo().await;
    for request in [
        client
            .get(format!("{}/user", sim.cloud_api_url()))
            .basic_auth(JDOE_EMAIL, Some("wrong")),
        // API tokens take the email; the username is refused.
        client
            .get(format!("{}/user", sim.cloud_api_url()))
            .basic_auth("jdoe", Some(JDOE_API_TOKEN)),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(header(&response, "content-type"), Some("text/plain"));
        assert_eq!(
            header(&response, "www-authenticate"),
            Some("Basic realm=\"Bitbucket.org HTTP\"")
        );
    }
}

#[tokio::test]
async fn an_unknown_or_expired_token_gets_the_recorded_json_401() {
    let mut fixture = Fixture::demo();
    fixture.cloud.credentials[1].expires_at = Some("2020-01-01T00:00:00+00:00".to_owned());
    let sim = Simulator::start(fixture).await.unwrap();
    let client = client();
    for token in ["not-a-token", ACME_ACCESS_TOKEN] {
        let response = client
            .get(format!("{}/repositories/acme", sim.cloud_api_url()))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.text().await.unwrap(),
            include_str!("../../../testdata/bitbucket/cloud-error-401-token-invalid.json")
        );
    }
}

#[tokio::test]
async fn a_credential_without_a_required_scope_gets_403_naming_required_and_granted() {
    let mut fixture = Fixture::demo();
    fixture.cloud.credentials[0].scopes = vec!["read:repository:bitbucket".to_owned()];
    let sim = Simulator::start(fixture).await.unwrap();
    let response = client()
        .get(format!("{}/user", sim.cloud_api_url()))
        .by_jdoe()
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body = json_of(response).await;
    assert_eq!(
        body,
        json!({"type": "error", "error": {
            "message": "Your credentials lack one or more required privilege scopes.",
            "detail": {"required": ["read:user:bitbucket"], "granted": ["read:repository:bitbucket"]}
        }})
    );
}

#[tokio::test]
async fn removed_cross_workspace_endpoints_answer_410_whoever_asks() {
    let (sim, client) = demo().await;
    for path in [
        "/repositories",
        "/repositories?role=member",
        "/workspaces",
        "/user/permissions/workspaces",
        "/user/permissions/repositories",
    ] {
        for request in [
            client
                .get(format!("{}{path}", sim.cloud_api_url()))
                .by_jdoe(),
            client
                .get(format!("{}{path}", sim.cloud_api_url()))
                .by_ci_token(),
        ] {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::GONE, "{path}");
            assert_eq!(
                response.text().await.unwrap(),
                include_str!("../../../testdata/bitbucket/cloud-error-410-change-2770.json")
            );
        }
    }
}

#[tokio::test]
async fn access_tokens_are_refused_on_user_endpoints() {
    let (sim, client) = demo().await;
    let response = client
        .get(format!("{}/user/workspaces", sim.cloud_api_url()))
        .by_ci_token()
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        response.text().await.unwrap(),
        include_str!("../../../testdata/bitbucket/cloud-error-access-token-not-accessible.json")
    );
    let response = client
        .get(format!("{}/user", sim.cloud_api_url()))
        .by_ci_token()
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    let response = client
        .get(format!("{}/user/workspaces", sim.cloud_api_url()))
        .by_jdoe()
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let page = json_of(response).await;
    assert_eq!(page["values"][0]["workspace"]["slug"], "acme");
    assert_eq!(page["values"][0]["administrator"], true);
}

#[tokio::test]
async fn unknown_or_foreign_workspaces_are_404_naming_the_workspace() {
    let mut fixture = Fixture::demo();
    let mut other = fixture.cloud.workspaces[0].clone();
    other.slug = "other".to_owned();
    other.uuid = None;
    fixture.cloud.workspaces.push(other);
    let sim = Simulator::start(fixture).await.unwrap();
    let client = client();
    let response = client
        .get(format!("{}/repositories/nope", sim.cloud_api_url()))
        .by_jdoe()
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        json_of(response).await["error"]["message"],
        "No workspace with identifier 'nope'."
    );
    // The access token belongs to acme only.
    let response = client
        .get(format!("{}/repositories/other", sim.cloud_api_url()))
        .by_ci_token()
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = client
        .get(format!("{}/workspaces/other", sim.cloud_api_url()))
        .by_ci_token()
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    // A workspace can be named by its UUID too.
    let response = client
        .get(format!(
            "{}/workspaces/%7B6f1c2d4e-8a9b-4c3d-9e2f-0a1b2c3d4e5f%7D",
            sim.cloud_api_url()
        ))
        .by_ci_token()
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(json_of(response).await["slug"], "acme");
}

#[tokio::test]
async fn cloud_listing_pages_with_opaque_next_links_on_the_simulators_origin() {
    let (sim, client) = demo().await;
    let first = json_of(
        client
            .get(format!(
                "{}/repositories/acme?pagelen=4&sort=slug",
                sim.cloud_api_url()
            ))
            .by_jdoe()
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(first["pagelen"], 4);
    assert_eq!(first["size"], 10);
    assert_eq!(first["page"], 1);
    assert!(first.get("previous").is_none());
    let next = first["next"].as_str().unwrap();
    assert!(
        next.starts_with(&format!("{}/2.0/repositories/acme?", sim.base_url())),
        "{next}"
    );
    assert!(
        next.contains("sort=slug") && next.contains("page=2"),
        "{next}"
    );

    let (slugs, pages) = list_all_slugs(
        &client,
        format!(
            "{}/repositories/acme?pagelen=4&sort=slug",
            sim.cloud_api_url()
        ),
        |r| r.by_jdoe(),
    )
    .await;
    assert_eq!(pages, 3);
    let mut sorted = slugs.clone();
    sorted.sort();
    assert_eq!(slugs, sorted);
    assert_eq!(slugs.len(), 10);

    let last = json_of(
        client
            .get(format!(
                "{}/repositories/acme?pagelen=4&page=3",
                sim.cloud_api_url()
            ))
            .by_jdoe()
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(last.get("next").is_none());
    assert!(last["previous"].as_str().unwrap().contains("page=2"));
    assert_eq!(last["values"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn pagelen_above_the_maximum_is_clamped_to_100() {
    let sim = Simulator::start(Fixture::demo_with_generated(150))
        .await
        .unwrap();
    let page = json_of(
        client()
            .get(format!(
                "{}/repositories/acme?pagelen=1000",
                sim.cloud_api_url()
            ))
            .by_jdoe()
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(page["pagelen"], 100);
    assert_eq!(page["values"].as_array().unwrap().len(), 100);
}

#[tokio::test]
async fn fields_select_only_keeps_exactly_the_named_paths() {
    let (sim, client) = demo().await;
    let page = json_of(
        client
            .get(format!(
                "{}/repositories/acme?pagelen=2&fields=next,values.slug,values.links.clone,values.mainbranch.name",
                sim.cloud_api_url()
            ))
            .by_jdoe()
            .send()
            .await
            .unwrap(),
    )
    .await;
    let keys: Vec<_> = page.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, ["next", "values"]);
    assert!(page["next"].as_str().unwrap().contains("fields="));
    assert_eq!(
        page["values"][0],
        json!({
            "slug": "api",
            "mainbranch": {"name": "main"},
            "links": {"clone": [
                {"name": "https", "href": "https://jdoe@bitbucket.org/acme/api.git"},
                {"name": "ssh", "href": "git@bitbucket.org:acme/api.git"}
            ]}
        })
    );
}

#[tokio::test]
async fn q_filters_by_project_and_date_and_a_malformed_q_is_400() {
    let (sim, client) = demo().await;
    let get = |q: &str| {
        let url = url::Url::parse_with_params(
            &format!("{}/repositories/acme", sim.cloud_api_url()),
            [("q", q), ("pagelen", "100")],
        )
        .unwrap();
        client.get(url).by_jdoe().send()
    };
    let page = json_of(get(r#"project.key = "OPS""#).await.unwrap()).await;
    let slugs: Vec<_> = page["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["slug"].as_str().unwrap())
        .collect();
    assert_eq!(
        slugs,
        ["infra", "terraform-modules", "runbooks", "ci-templates"]
    );

    let page = json_of(
        get(r#"project.key IN ("API","WEB") AND updated_on > 2026-02-27T00:00:00+00:00"#)
            .await
            .unwrap(),
    )
    .await;
    let slugs: Vec<_> = page["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["slug"].as_str().unwrap())
        .collect();
    assert_eq!(slugs, ["api", "web-app", "docs"]);

    let response = get(r#"project.key = "OPS"#).await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body = json_of(response).await;
    assert_eq!(body["type"], "error");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Invalid query")
    );
}

#[tokio::test]
async fn sort_by_descending_update_time_puts_the_newest_first() {
    let (sim, client) = demo().await;
    let page = json_of(
        client
            .get(format!(
                "{}/repositories/acme?sort=-updated_on&pagelen=3",
                sim.cloud_api_url()
            ))
            .by_jdoe()
            .send()
            .await
            .unwrap(),
    )
    .await;
    let slugs: Vec<_> = page["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["slug"].as_str().unwrap())
        .collect();
    assert_eq!(slugs, ["api", "web-app", "infra"]);
}

#[tokio::test]
async fn clone_urls_carry_the_callers_username_and_empty_repositories_have_no_mainbranch() {
    let (sim, client) = demo().await;
    let url = format!("{}/repositories/acme?pagelen=100", sim.cloud_api_url());
    let as_user = json_of(client.get(&url).by_jdoe().send().await.unwrap()).await;
    let as_token = json_of(client.get(&url).by_ci_token().send().await.unwrap()).await;
    let anonymous = json_of(client.get(&url).send().await.unwrap()).await;
    assert_eq!(
        as_user["values"][0]["links"]["clone"][0]["href"],
        "https://jdoe@bitbucket.org/acme/api.git"
    );
    assert_eq!(
        as_token["values"][0]["links"]["clone"][0]["href"],
        "https://x-token-auth@bitbucket.org/acme/api.git"
    );
    // Anonymous callers see public repositories only.
    assert_eq!(anonymous["size"], 1);
    assert_eq!(anonymous["values"][0]["slug"], "docs");
    assert_eq!(
        anonymous["values"][0]["links"]["clone"][0]["href"],
        "https://bitbucket.org/acme/docs.git"
    );
    let runbooks = as_user["values"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["slug"] == "runbooks")
        .unwrap();
    assert_eq!(runbooks["mainbranch"], Value::Null);
}

#[tokio::test]
async fn a_generated_ten_thousand_repository_workspace_lists_completely_in_100_pages() {
    let started = Instant::now();
    let sim = Simulator::start(Fixture::demo_with_generated(9_990))
        .await
        .unwrap();
    let client = client();
    let (slugs, pages) = list_all_slugs(
        &client,
        format!("{}/repositories/acme?pagelen=100", sim.cloud_api_url()),
        |r| r.by_ci_token(),
    )
    .await;
    assert_eq!(pages, 100);
    assert_eq!(slugs.len(), 10_000);
    let unique: std::collections::BTreeSet<_> = slugs.iter().collect();
    assert_eq!(unique.len(), 10_000);
    // Printed, not asserted: timing depends on the machine.
    eprintln!("listed 10,000 repositories in {:?}", started.elapsed());
    assert_eq!(
        sim.control()
            .counters()
            .endpoint("GET /2.0/repositories/{workspace}"),
        100
    );
}

#[tokio::test]
async fn injected_latency_delays_the_answer_and_times_limits_a_fault() {
    let (sim, client) = demo().await;
    sim.control()
        .add_fault(FaultRule::latency(300).on_path("/2.0/user").times(1));
    let started = Instant::now();
    let response = client
        .get(format!("{}/user", sim.cloud_api_url()))
        .by_jdoe()
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(sim.control().faults().is_empty());

    sim.control()
        .add_fault(FaultRule::status(503).on_path("/2.0/repositories").times(2));
    let url = format!("{}/repositories/acme", sim.cloud_api_url());
    for expected in [503, 503, 200] {
        let response = client.get(&url).by_jdoe().send().await.unwrap();
        assert_eq!(response.status().as_u16(), expected);
    }
}

#[tokio::test]
async fn rate_limit_faults_come_with_or_without_retry_after() {
    let (sim, client) = demo().await;
    let url = format!("{}/repositories/acme", sim.cloud_api_url());
    sim.control()
        .add_fault(FaultRule::status(429).with_retry_after("7").times(1));
    sim.control().add_fault(
        FaultRule::status(429)
            .with_body(
                "text/plain",
                "Rate limit for this resource has been exceeded",
            )
            .times(1),
    );
    let first = client.get(&url).by_jdoe().send().await.unwrap();
    assert_eq!(first.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&first, "retry-after"), Some("7"));
    let second = client.get(&url).by_jdoe().send().await.unwrap();
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&second, "retry-after"), None);
    assert_eq!(header(&second, "content-type"), Some("text/plain"));
}

#[tokio::test]
async fn malformed_json_and_html_error_pages_can_be_injected_for_one_credential() {
    let (sim, client) = demo().await;
    let url = format!("{}/repositories/acme", sim.cloud_api_url());
    sim.control().add_fault(
        FaultRule::malformed_json()
            .for_credential("jdoe-api-token")
            .times(1),
    );
    let text = client
        .get(&url)
        .by_jdoe()
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(serde_json::from_str::<Value>(&text).is_err());
    assert!(!text.is_empty());
    // Other credentials are unaffected.
    let ok = client.get(&url).by_ci_token().send().await.unwrap();
    assert!(serde_json::from_str::<Value>(&ok.text().await.unwrap()).is_ok());

    let html = "<html><body><h1>502 Bad Gateway</h1></body></html>";
    let id = sim.control().add_fault(
        FaultRule::status(502)
            .with_body("text/html", html)
            .on_method("GET")
            .on_path("/2.0/"),
    );
    assert!(id > 0);
    let response = client.get(&url).by_jdoe().send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(header(&response, "content-type"), Some("text/html"));
    assert_eq!(response.text().await.unwrap(), html);
    sim.control().clear_faults();
    assert_eq!(
        client.get(&url).by_jdoe().send().await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn real_answers_can_be_mangled_invalid_utf8_relabelled_repointed_or_trickled() {
    let (sim, client) = demo().await;
    let url = format!("{}/repositories/acme?pagelen=2", sim.cloud_api_url());
    let get = || client.get(&url).by_jdoe().send();

    sim.control().add_fault(FaultRule::invalid_utf8().times(1));
    let bytes = get().await.unwrap().bytes().await.unwrap();
    assert!(std::str::from_utf8(&bytes).is_err());
    assert!(bytes.starts_with(b"{"), "still the real answer, mangled");

    sim.control()
        .add_fault(FaultRule::content_type("text/html; charset=utf-8").times(1));
    let relabelled = get().await.unwrap();
    assert_eq!(
        header(&relabelled, "content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(relabelled.json::<Value>().await.unwrap()["values"].is_array());

    let elsewhere = "http://127.0.0.2:9/2.0/repositories/acme?page=2";
    sim.control()
        .add_fault(FaultRule::next_page(elsewhere).times(1));
    let page: Value = get().await.unwrap().json().await.unwrap();
    assert_eq!(page["next"], elsewhere);
    assert_eq!(page["values"].as_array().unwrap().len(), 2);

    let dc = format!(
        "{}/rest/api/1.0/projects/PLAT/repos?limit=10",
        sim.base_url()
    );
    sim.control().add_fault(FaultRule::next_page("0").times(1));
    let page: Value = client
        .get(&dc)
        .by_dc_jdoe()
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["isLastPage"], false);
    assert_eq!(page["nextPageStart"], 0);

    let whole = get().await.unwrap().bytes().await.unwrap();
    sim.control().add_fault(FaultRule::trickle(5).times(1));
    let started = Instant::now();
    let trickled = get().await.unwrap().bytes().await.unwrap();
    assert_eq!(trickled, whole, "the same body, only slower");
    let chunks = u32::try_from(whole.len().div_ceil(16)).unwrap();
    assert!(started.elapsed() >= Duration::from_millis(5) * chunks);
}

#[tokio::test]
async fn an_oversize_answer_streams_far_more_than_any_page() {
    let (sim, client) = demo().await;
    sim.control()
        .add_fault(FaultRule::oversize(5 * 1024 * 1024).times(1));
    let response = client
        .get(format!("{}/repositories/acme", sim.cloud_api_url()))
        .by_jdoe()
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.content_length(), None, "no length announced");
    let body = response.bytes().await.unwrap();
    assert!(body.len() >= 5 * 1024 * 1024);
    let page: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(page["values"], json!([]));
}

#[tokio::test]
async fn a_revoked_credential_gets_401_counted_as_its_own_until_restored() {
    let (sim, client) = demo().await;
    let user = format!("{}/user", sim.cloud_api_url());
    let token = format!("{}/site/oauth2/access_token", sim.base_url());
    let grant = || {
        client
            .post(&token)
            .basic_auth(OAUTH_CLIENT_ID, Some(OAUTH_CLIENT_SECRET))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=client_credentials")
            .send()
    };
    let issued: Value = grant().await.unwrap().json().await.unwrap();
    let access = issued["access_token"].as_str().unwrap().to_owned();

    let revoke = |id: &str| {
        client
            .post(format!("{}/_sim/credentials/{id}/revoke", sim.base_url()))
            .send()
    };
    for id in ["jdoe-api-token", "acme-oauth", "jdoe-password"] {
        assert_eq!(revoke(id).await.unwrap().status(), StatusCode::NO_CONTENT);
    }
    assert_eq!(
        revoke("nobody").await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    sim.control().reset_counters();

    let refused = client.get(&user).by_jdoe().send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let refused = client.get(&user).bearer_auth(&access).send().await.unwrap();
    assert_eq!(
        refused.status(),
        StatusCode::UNAUTHORIZED,
        "its tokens go with it"
    );
    assert!(!grant().await.unwrap().status().is_success());
    let dc = format!("{}/rest/api/1.0/projects/PLAT/repos", sim.base_url());
    let refused = client.get(&dc).by_dc_jdoe().send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    let counters = sim.control().counters();
    assert_eq!(counters.credential("jdoe-api-token"), 1);
    assert_eq!(counters.credential("acme-oauth"), 2);
    assert_eq!(counters.credential("jdoe-password"), 1);
    assert_eq!(counters.credential(bitbucket_sim::INVALID), 0);

    for id in ["jdoe-api-token", "acme-oauth", "jdoe-password"] {
        assert!(sim.control().restore_credential(id));
    }
    assert_eq!(
        client.get(&user).by_jdoe().send().await.unwrap().status(),
        StatusCode::OK
    );
    assert!(grant().await.unwrap().status().is_success());
    assert_eq!(
        client.get(&dc).by_dc_jdoe().send().await.unwrap().status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_rotated_refresh_token_works_on_only_during_the_grace_set() {
    let (sim, client) = demo().await;
    let token = format!("{}/site/oauth2/access_token", sim.base_url());
    let grant = |body: String| {
        client
            .post(&token)
            .basic_auth(OAUTH_CLIENT_ID, Some(OAUTH_CLIENT_SECRET))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let refresh = |refresh_token: &str| {
        grant(format!(
            "grant_type=refresh_token&refresh_token={refresh_token}"
        ))
    };
    let issued: Value = grant("grant_type=client_credentials".into())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let first = issued["refresh_token"].as_str().unwrap().to_owned();
    let second: Value = refresh(&first).await.unwrap().json().await.unwrap();
    let second = second["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(
        refresh(&first).await.unwrap().status(),
        StatusCode::BAD_REQUEST,
        "retired at once by default"
    );

    sim.control().set_refresh_token_grace(60);
    let third = refresh(&second).await.unwrap();
    assert!(third.status().is_success());
    let again = refresh(&second).await.unwrap();
    assert!(
        again.status().is_success(),
        "the rotated-out token still works during the grace"
    );
    assert_ne!(
        again.json::<Value>().await.unwrap()["refresh_token"],
        third.json::<Value>().await.unwrap()["refresh_token"]
    );
}

#[tokio::test]
async fn faults_and_counters_work_over_the_http_control_api() {
    let (sim, client) = demo().await;
    let control = |path: &str| format!("{}/_sim{path}", sim.base_url());
    let response = client
        .post(control("/faults"))
        .json(&json!({"match": {"pathPrefix": "/2.0/user", "credential": "jdoe-api-token"}, "status": 500, "body": "{\"oops\": 1}", "times": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let failed = client
        .get(format!("{}/user", sim.cloud_api_url()))
        .by_jdoe()
        .send()
        .await
        .unwrap();
    assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        header(&failed, "content-type"),
        Some("application/json; charset=utf-8")
    );
    client
        .get(format!("{}/user", sim.cloud_api_url()))
        .by_jdoe()
        .send()
        .await
        .unwrap();
    client
        .get(format!("{}/user", sim.cloud_api_url()))
        .basic_auth("x", Some("y"))
        .send()
        .await
        .unwrap();
    client
        .get(format!("{}/repositories/acme", sim.cloud_api_url()))
        .send()
        .await
        .unwrap();
    client
        .get(format!("{}/nothing/here", sim.cloud_api_url()))
        .send()
        .await
        .unwrap();

    let counters = json_of(client.get(control("/counters")).send().await.unwrap()).await;
    assert_eq!(counters["total"], 5);
    assert_eq!(counters["byEndpoint"]["GET /2.0/user"], 3);
    assert_eq!(
        counters["byEndpoint"]["GET /2.0/repositories/{workspace}"],
        1
    );
    assert_eq!(counters["byEndpoint"]["GET (unmatched)"], 1);
    assert_eq!(counters["byCredential"]["jdoe-api-token"], 2);
    assert_eq!(counters["byCredential"]["invalid"], 1);
    assert_eq!(counters["byCredential"]["anonymous"], 2);
    let serialized = counters.to_string();
    assert!(
        !serialized.contains("FAKE"),
        "counters must not hold secrets"
    );

    client
        .post(control("/counters/reset"))
        .send()
        .await
        .unwrap();
    assert_eq!(sim.control().counters().total, 0);
    let faults = json_of(client.get(control("/faults")).send().await.unwrap()).await;
    assert_eq!(faults, json!([]));
}

#[tokio::test]
async fn access_tokens_get_rate_limit_headers_and_429_after_the_hourly_limit() {
    let mut fixture = Fixture::demo();
    fixture.cloud.credentials[1].rate_limit_per_hour = Some(3);
    let sim = Simulator::start(fixture).await.unwrap();
    let client = client();
    let url = format!("{}/repositories/acme?pagelen=1", sim.cloud_api_url());
    for n in 1..=3 {
        let response = client.get(&url).by_ci_token().send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "x-ratelimit-limit"), Some("3"));
        assert_eq!(header(&response, "x-ratelimit-resource"), Some("api"));
        assert_eq!(
            header(&response, "x-ratelimit-nearlimit"),
            Some(if n == 3 { "true" } else { "false" })
        );
    }
    let refused = client.get(&url).by_ci_token().send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&refused, "retry-after"), None);
    assert_eq!(header(&refused, "content-type"), Some("text/plain"));
    assert_eq!(
        refused.text().await.unwrap(),
        "Rate limit for this resource has been exceeded"
    );
    // API tokens have their own allowance and no rate-limit headers.
    let user = client.get(&url).by_jdoe().send().await.unwrap();
    assert_eq!(user.status(), StatusCode::OK);
    assert_eq!(header(&user, "x-ratelimit-limit"), None);

    sim.control().reset_rate_limit_windows();
    assert_eq!(
        client
            .get(&url)
            .by_ci_token()
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    sim.control().set_rate_limit("acme-ci-token", None);
    for _ in 0..5 {
        assert_eq!(
            client
                .get(&url)
                .by_ci_token()
                .send()
                .await
                .unwrap()
                .status(),
            StatusCode::OK
        );
    }
}

#[tokio::test]
async fn data_center_rate_limits_answer_429_with_retry_after() {
    let (sim, client) = demo().await;
    sim.control().set_rate_limit("jdoe-password", Some(1));
    let url = format!("{}/rest/api/1.0/repos", sim.base_url());
    assert_eq!(
        client.get(&url).by_dc_jdoe().send().await.unwrap().status(),
        StatusCode::OK
    );
    let refused = client.get(&url).by_dc_jdoe().send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let seconds: u64 = header(&refused, "retry-after").unwrap().parse().unwrap();
    assert!((3500..=3600).contains(&seconds));
}

#[tokio::test]
async fn oauth_tokens_work_until_expired_and_can_be_refreshed() {
    let (sim, client) = demo().await;
    let token = oauth_token(&client, &sim).await;
    assert_eq!(token["token_type"], "bearer");
    assert_eq!(token["state"], "client_credentials");
    assert_eq!(token["expires_in"], 7200);
    assert_eq!(token["scopes"], "account project repository");
    let access = token["access_token"].as_str().unwrap().to_owned();
    let url = format!("{}/repositories/acme", sim.cloud_api_url());
    assert_eq!(
        client
            .get(&url)
            .bearer_auth(&access)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    sim.control().expire_oauth_tokens();
    let expired = client.get(&url).bearer_auth(&access).send().await.unwrap();
    assert_eq!(expired.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        json_of(expired).await["error"]["message"],
        "Access token expired. Use your refresh token to obtain a new access token."
    );

    let refreshed = client
        .post(format!("{}/site/oauth2/access_token", sim.base_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=refresh_token&refresh_token={}&client_id={OAUTH_CLIENT_ID}&client_secret={OAUTH_CLIENT_SECRET}",
            token["refresh_token"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(refreshed.status(), StatusCode::OK);
    let refreshed = json_of(refreshed).await;
    assert_ne!(refreshed["access_token"], token["access_token"]);
    assert_eq!(
        client
            .get(&url)
            .bearer_auth(refreshed["access_token"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    sim.control().set_oauth_token_lifetime(Some(60));
    assert_eq!(oauth_token(&client, &sim).await["expires_in"], 60);
    assert_eq!(sim.control().counters().credential("acme-oauth"), 6);
}

#[tokio::test]
async fn the_token_endpoint_rejects_bad_secrets_and_unsupported_grants() {
    let (sim, client) = demo().await;
    let post = |body: String| {
        client
            .post(format!("{}/site/oauth2/access_token", sim.base_url()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let bad = post(format!(
        "grant_type=client_credentials&client_id={OAUTH_CLIENT_ID}&client_secret=nope"
    ))
    .await
    .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        json_of(bad).await,
        json!({"error": "unauthorized_client", "error_description": "Invalid OAuth client credentials"})
    );
    let unsupported = post(format!(
        "grant_type=password&client_id={OAUTH_CLIENT_ID}&client_secret={OAUTH_CLIENT_SECRET}"
    ))
    .await
    .unwrap();
    assert_eq!(unsupported.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        json_of(unsupported).await["error"],
        "unsupported_grant_type"
    );
}

#[tokio::test]
async fn expired_api_tokens_are_rejected() {
    let mut fixture = Fixture::demo();
    fixture.cloud.credentials[0].expires_at = Some("2024-06-30T00:00:00Z".to_owned());
    let sim = Simulator::start(fixture).await.unwrap();
    let response = client()
        .get(format!("{}/user", sim.cloud_api_url()))
        .by_jdoe()
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(header(&response, "content-type"), Some("text/plain"));
}

#[tokio::test]
async fn data_center_pages_with_next_page_start_and_caps_the_limit() {
    let mut fixture = Fixture::demo_with_generated(40);
    fixture.data_center.page_cap = 30;
    let sim = Simulator::start(fixture).await.unwrap();
    let client = client();
    let url = |start: u64| {
        format!(
            "{}/rest/api/1.0/projects/PLAT/repos?limit=500&start={start}",
            sim.base_url()
        )
    };
    let first = json_of(client.get(url(0)).by_dc_jdoe().send().await.unwrap()).await;
    assert_eq!(first["limit"], 30);
    assert_eq!(first["size"], 30);
    assert_eq!(first["isLastPage"], false);
    assert_eq!(first["start"], 0);
    assert_eq!(first["nextPageStart"], 30);
    let last = json_of(client.get(url(30)).by_dc_jdoe().send().await.unwrap()).await;
    assert_eq!(last["size"], 14);
    assert_eq!(last["isLastPage"], true);
    assert!(last.get("nextPageStart").is_none());

    let defaults = json_of(
        client
            .get(format!("{}/rest/api/1.0/repos", sim.base_url()))
            .by_dc_jdoe()
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(defaults["limit"], 25);
    let repo = &first["values"][0];
    assert_eq!(repo["slug"], "core");
    assert_eq!(repo["project"]["key"], "PLAT");
    assert_eq!(repo["archived"], false);
    let base = sim.base_url();
    let host = base.trim_start_matches("http://");
    assert_eq!(
        repo["links"]["clone"][0],
        json!({"name": "http", "href": format!("http://jdoe@{host}/scm/plat/core.git")})
    );
    assert_eq!(
        repo["links"]["self"][0]["href"],
        format!("{base}/projects/PLAT/repos/core/browse")
    );
}

#[tokio::test]
async fn data_center_answers_name_the_caller_in_x_ausername() {
    let (sim, client) = demo().await;
    let url = format!("{}/rest/api/1.0/application-properties", sim.base_url());
    for request in [
        client.get(&url).by_dc_jdoe(),
        client.get(&url).bearer_auth(DC_PAT),
        client.get(&url).basic_auth("jdoe", Some(DC_PAT)),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "x-ausername"), Some("jdoe"));
        assert_eq!(header(&response, "x-auserid"), Some("101"));
    }
    let project_token = client
        .get(&url)
        .bearer_auth(DC_PROJECT_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&project_token, "x-ausername"),
        Some("project-plat-bot")
    );
    let anonymous = client.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::OK);
    assert_eq!(header(&anonymous, "x-ausername"), None);

    let user = json_of(
        client
            .get(format!("{}/rest/api/1.0/users/jdoe", sim.base_url()))
            .by_dc_jdoe()
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(user["name"], "jdoe");
    assert_eq!(user["type"], "NORMAL");
    let missing = client
        .get(format!("{}/rest/api/1.0/users/ghost", sim.base_url()))
        .by_dc_jdoe()
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(header(&missing, "x-ausername"), Some("jdoe"));
}

#[tokio::test]
async fn data_center_permission_errors_are_401_and_missing_projects_404() {
    let (sim, client) = demo().await;
    let bad = client
        .get(format!("{}/rest/api/1.0/repos", sim.base_url()))
        .basic_auth("jdoe", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        json_of(bad).await["errors"][0]["exceptionName"],
        "com.atlassian.bitbucket.auth.IncorrectPasswordAuthenticationException"
    );
    // The PLAT project token cannot read OPS (it sees OPS's public repository only).
    let ops = json_of(
        client
            .get(format!(
                "{}/rest/api/1.0/projects/OPS/repos",
                sim.base_url()
            ))
            .bearer_auth(DC_PROJECT_TOKEN)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(ops["size"], 1);
    let personal = client
        .get(format!(
            "{}/rest/api/1.0/projects/~jdoe/repos",
            sim.base_url()
        ))
        .bearer_auth(DC_PROJECT_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(personal.status(), StatusCode::UNAUTHORIZED);
    let body = json_of(personal).await;
    assert_eq!(
        body["errors"][0]["message"],
        "You are not permitted to access this resource"
    );
    assert_eq!(
        body["errors"][0]["exceptionName"],
        "com.atlassian.bitbucket.AuthorisationException"
    );
    let own = json_of(
        client
            .get(format!(
                "{}/rest/api/1.0/projects/~jdoe/repos",
                sim.base_url()
            ))
            .by_dc_jdoe()
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(own["values"][0]["project"]["type"], "PERSONAL");

    let missing = client
        .get(format!(
            "{}/rest/api/1.0/projects/NOPE/repos",
            sim.base_url()
        ))
        .by_dc_jdoe()
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        json_of(missing).await["errors"][0]["message"],
        "Project NOPE does not exist."
    );
}

#[tokio::test]
async fn data_center_repos_search_filters_archived_and_project_key() {
    let (sim, client) = demo().await;
    let slugs = |page: Value| -> Vec<String> {
        page["values"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["slug"].as_str().unwrap().to_owned())
            .collect()
    };
    let active = json_of(
        client
            .get(format!(
                "{}/rest/api/1.0/repos?projectkey=PLAT",
                sim.base_url()
            ))
            .by_dc_jdoe()
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(slugs(active), ["core", "deploy-tools", "scratch"]);
    let archived = json_of(
        client
            .get(format!(
                "{}/rest/api/1.0/repos?projectkey=PLAT&archived=ARCHIVED",
                sim.base_url()
            ))
            .by_dc_jdoe()
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(slugs(archived.clone()), ["legacy-build"]);
    assert_eq!(archived["values"][0]["archived"], true);
}

#[tokio::test]
async fn data_center_default_branch_is_served_and_empty_repositories_have_none() {
    let (sim, client) = demo().await;
    let url = |slug: &str| {
        format!(
            "{}/rest/api/1.0/projects/PLAT/repos/{slug}/default-branch",
            sim.base_url()
        )
    };
    let branch = json_of(client.get(url("core")).by_dc_jdoe().send().await.unwrap()).await;
    assert_eq!(branch["id"], "refs/heads/main");
    assert_eq!(branch["displayId"], "main");
    assert_eq!(branch["type"], "BRANCH");
    let empty = client
        .get(url("scratch"))
        .by_dc_jdoe()
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), StatusCode::NOT_FOUND);
    assert!(
        json_of(empty).await["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("PLAT/scratch")
    );
}

#[tokio::test]
async fn repositories_added_renamed_and_deleted_through_the_control_api_show_in_the_next_listing() {
    let (sim, client) = demo().await;
    let listing = || async {
        let page = json_of(
            client
                .get(format!(
                    "{}/repositories/acme?pagelen=100",
                    sim.cloud_api_url()
                ))
                .by_jdoe()
                .send()
                .await
                .unwrap(),
        )
        .await;
        page["values"].as_array().unwrap().clone()
    };
    let control = |path: &str| format!("{}/_sim{path}", sim.base_url());
    let added = client
        .post(control("/cloud/workspaces/acme/repositories"))
        .json(&json!({"slug": "new-service", "project": "API", "mainBranch": "main"}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), StatusCode::CREATED);
    let renamed = client
        .patch(control("/cloud/workspaces/acme/repositories/billing"))
        .json(&json!({"slug": "payments", "private": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(renamed.status(), StatusCode::NO_CONTENT);
    let deleted = client
        .delete(control("/cloud/workspaces/acme/repositories/infra"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let missing = client
        .delete(control("/cloud/workspaces/acme/repositories/infra"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    let values = listing().await;
    let slugs: Vec<_> = values.iter().map(|v| v["slug"].as_str().unwrap()).collect();
    assert!(slugs.contains(&"new-service"));
    assert!(slugs.contains(&"payments") && !slugs.contains(&"billing"));
    assert!(!slugs.contains(&"infra"));
    let payments = values.iter().find(|v| v["slug"] == "payments").unwrap();
    assert_eq!(payments["is_private"], false);
    assert!(payments["updated_on"].as_str().unwrap() > "2026-03-02");

    // The same operations from Rust.
    sim.control()
        .change_cloud_repository(
            "acme",
            "api",
            CloudRepositoryChange {
                main_branch: Some(None),
                ..Default::default()
            },
        )
        .unwrap();
    sim.control()
        .add_cloud_repository(
            "acme",
            CloudRepository {
                slug: "from-rust".into(),
                name: None,
                project: "OPS".into(),
                private: true,
                main_branch: None,
                updated_on: None,
                created_on: None,
                description: String::new(),
                uuid: None,
            },
        )
        .unwrap();
    let values = listing().await;
    assert_eq!(
        values.iter().find(|v| v["slug"] == "api").unwrap()["mainbranch"],
        Value::Null
    );
    assert!(values.iter().any(|v| v["slug"] == "from-rust"));

    // Data Center too.
    let added = client
        .post(control("/dc/projects/PLAT/repositories"))
        .json(&json!({"slug": "fresh", "defaultBranch": "main"}))
        .send()
        .await
        .unwrap();
    assert_eq!(added.status(), StatusCode::CREATED);
    client
        .patch(control("/dc/projects/PLAT/repositories/core"))
        .json(&json!({"slug": "core-v2"}))
        .send()
        .await
        .unwrap();
    let page = json_of(
        client
            .get(format!(
                "{}/rest/api/1.0/projects/PLAT/repos",
                sim.base_url()
            ))
            .by_dc_jdoe()
            .send()
            .await
            .unwrap(),
    )
    .await;
    let slugs: Vec<_> = page["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["slug"].as_str().unwrap().to_owned())
        .collect();
    assert!(slugs.contains(&"fresh".to_owned()) && slugs.contains(&"core-v2".to_owned()));
}

#[tokio::test]
async fn the_whole_fixture_can_be_replaced_with_yaml() {
    let (sim, client) = demo().await;
    let yaml = r#"
cloud:
  workspaces:
    - slug: tiny
      projects: [{key: T}]
      repositories: [{slug: only, project: T, mainBranch: main}]
  users:
    - {username: u, displayName: U, accountId: "1", uuid: "{u}", email: u@example.com, workspaces: [tiny]}
  credentials:
    - {kind: apiToken, id: u-token, user: u, token: FAKE-u, scopes: [read:repository:bitbucket]}
"#;
    let replaced = client
        .put(format!("{}/_sim/fixture", sim.base_url()))
        .body(yaml)
        .send()
        .await
        .unwrap();
    assert_eq!(replaced.status(), StatusCode::NO_CONTENT);
    let page = json_of(
        client
            .get(format!("{}/repositories/tiny", sim.cloud_api_url()))
            .basic_auth("u@example.com", Some("FAKE-u"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(page["size"], 1);
    let invalid = client
        .put(format!("{}/_sim/fixture", sim.base_url()))
        .body("cloud: {workspaces: [{slug: x, repositories: [{slug: r, project: NOPE}]}]}")
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);
    assert!(matches!(
        sim.control().fixture().cloud.credentials[0].kind,
        CloudCredentialKind::ApiToken { .. }
    ));
}

#[tokio::test]
async fn requests_repeating_a_recorded_exchange_get_the_recorded_bytes() {
    let sim = Simulator::start(Fixture::recorded()).await.unwrap();
    let client = client();
    let cloud = |path: &str| {
        client
            .get(format!("{}{path}", sim.base_url()))
            .basic_auth(
                "sourcegraph-testing@example.com",
                Some("FAKE-recorded-api-token"),
            )
            .send()
    };
    let body = |r: Response| async move { r.text().await.unwrap() };
    assert_eq!(
        body(
            cloud("/2.0/repositories/sourcegraph-testing?pagelen=1")
                .await
                .unwrap()
        )
        .await,
        include_str!("../../../testdata/bitbucket/cloud-repositories-page1.json")
    );
    assert_eq!(
        body(
            cloud("/2.0/repositories/sourcegraph-testing?pagelen=1&page=2")
                .await
                .unwrap()
        )
        .await,
        include_str!("../../../testdata/bitbucket/cloud-repositories-page2-last.json")
    );
    assert_eq!(
        body(cloud("/2.0/user").await.unwrap()).await,
        include_str!("../../../testdata/bitbucket/cloud-user.json")
    );
    let no_api = cloud("/2.0/").await.unwrap();
    assert_eq!(no_api.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        body(no_api).await,
        include_str!("../../../testdata/bitbucket/cloud-error-404-no-api.json")
    );

    let dc = |path: &str| {
        client
            .get(format!("{}{path}", sim.base_url()))
            .basic_auth("lone-private-user", Some("FAKE-recorded-password"))
            .send()
    };
    assert_eq!(
        body(
            dc("/rest/api/1.0/projects/PRIVUSER/repos?limit=1")
                .await
                .unwrap()
        )
        .await,
        include_str!("../../../testdata/bitbucket/dc-repos-page1-not-last.json")
    );
    assert_eq!(
        body(
            dc("/rest/api/1.0/projects/PRIVUSER/repos?limit=1&start=1")
                .await
                .unwrap()
        )
        .await,
        include_str!("../../../testdata/bitbucket/dc-repos-page2-last.json")
    );
    assert_eq!(
        body(dc("/rest/api/1.0/application-properties").await.unwrap()).await,
        include_str!("../../../testdata/bitbucket/dc-application-properties.json")
    );

    // Once the data differs from the recording, the answer is rendered instead.
    sim.control()
        .change_cloud_repository(
            "sourcegraph-testing",
            "src-cli",
            CloudRepositoryChange::default(),
        )
        .unwrap();
    let changed = body(
        cloud("/2.0/repositories/sourcegraph-testing?pagelen=1")
            .await
            .unwrap(),
    )
    .await;
    assert_ne!(
        changed,
        include_str!("../../../testdata/bitbucket/cloud-repositories-page1.json")
    );
    assert!(changed.contains(&format!(
        "{}/2.0/repositories/sourcegraph-testing?pagelen=1&page=2",
        sim.base_url()
    )));
}

#[tokio::test]
async fn the_simulator_refuses_non_loopback_addresses_and_shuts_down_cleanly() {
    let error = Simulator::start_on("0.0.0.0:0".parse().unwrap(), Fixture::demo())
        .await
        .unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
    let sim = Simulator::start(Fixture::demo()).await.unwrap();
    let url = sim.base_url();
    assert!(url.starts_with("http://127.0.0.1:"));
    sim.shutdown().await;
    assert!(
        client()
            .get(format!("{url}/2.0/user"))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn sign_in_sends_the_browser_back_with_a_code_good_for_one_exchange() {
    let (sim, client) = demo().await;
    let browser = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let callback = "http://127.0.0.1:9/callback";
    let authorize = |redirect: &str| {
        let mut url =
            url::Url::parse(&format!("{}/site/oauth2/authorize", sim.base_url())).unwrap();
        url.query_pairs_mut()
            .append_pair("client_id", OAUTH_CLIENT_ID)
            .append_pair("response_type", "code")
            .append_pair("state", "xyz")
            .append_pair("redirect_uri", redirect);
        browser.get(url).send()
    };
    let location = |response: &Response| {
        url::Url::parse(response.headers()["location"].to_str().unwrap()).unwrap()
    };
    let query = |url: &url::Url, key: &str| {
        url.query_pairs()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    };

    // Only loopback callbacks (a native app's, RFC 8252) are accepted.
    let elsewhere = authorize("https://attacker.example/callback")
        .await
        .unwrap();
    assert_eq!(elsewhere.status(), StatusCode::BAD_REQUEST);

    let approved = authorize(callback).await.unwrap();
    assert_eq!(approved.status(), StatusCode::SEE_OTHER);
    let back = location(&approved);
    assert_eq!(back.as_str().split('?').next(), Some(callback));
    assert_eq!(query(&back, "state").as_deref(), Some("xyz"));
    let code = query(&back, "code").unwrap();

    let exchange = |code: &str, redirect: &str| {
        client
            .post(format!("{}/site/oauth2/access_token", sim.base_url()))
            .basic_auth(OAUTH_CLIENT_ID, Some(OAUTH_CLIENT_SECRET))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect),
            ]))
            .send()
    };
    assert_eq!(
        exchange(&code, "http://127.0.0.1:10/other")
            .await
            .unwrap()
            .status(),
        StatusCode::BAD_REQUEST,
        "the exchange must name the same redirect_uri"
    );
    let token = json_of(exchange(&code, callback).await.unwrap()).await;
    assert_eq!(token["state"], "authorization_code");
    let user = client
        .get(format!("{}/user", sim.cloud_api_url()))
        .bearer_auth(token["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(json_of(user).await["username"], "jdoe");
    let again = exchange(&code, callback).await.unwrap();
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json_of(again).await["error"], "invalid_grant");

    // Each refresh rotates the refresh token; the one presented is retired.
    let refresh = |token: &str| {
        client
            .post(format!("{}/site/oauth2/access_token", sim.base_url()))
            .basic_auth(OAUTH_CLIENT_ID, Some(OAUTH_CLIENT_SECRET))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", token),
            ]))
            .send()
    };
    let first = token["refresh_token"].as_str().unwrap().to_owned();
    let rotated = json_of(refresh(&first).await.unwrap()).await;
    assert_ne!(rotated["refresh_token"], token["refresh_token"]);
    assert_eq!(
        refresh(&first).await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        refresh(rotated["refresh_token"].as_str().unwrap())
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );

    // The person can deny.
    sim.control().set_oauth_consent(bitbucket_sim::Consent {
        deny: true,
        user: None,
    });
    let denied = location(&authorize(callback).await.unwrap());
    assert_eq!(query(&denied, "error").as_deref(), Some("access_denied"));
    assert_eq!(query(&denied, "code"), None);
}

fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// A receiver on loopback that keeps every request it gets: (headers, body).
async fn receiver() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<(http::HeaderMap, Vec<u8>)>>>,
) {
    use axum::{Router, body::Bytes, extract::State, routing::post};
    type Got = std::sync::Arc<std::sync::Mutex<Vec<(http::HeaderMap, Vec<u8>)>>>;
    let got = Got::default();
    let app = Router::new()
        .route(
            "/hooks",
            post(
                |State(got): State<Got>, headers: http::HeaderMap, body: Bytes| async move {
                    got.lock().unwrap().push((headers, body.to_vec()));
                    StatusCode::ACCEPTED
                },
            ),
        )
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

/// Waits (a few seconds at most) until `got` holds `n` requests; the last one as (event, body).
async fn nth_delivery(
    got: &std::sync::Mutex<Vec<(http::HeaderMap, Vec<u8>)>>,
    n: usize,
) -> (http::HeaderMap, Value) {
    let start = Instant::now();
    loop {
        if let Some((headers, body)) = got.lock().unwrap().get(n - 1).cloned() {
            return (headers, serde_json::from_slice(&body).unwrap());
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "delivery {n} never came"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn workspace_hooks_are_managed_by_owners_with_the_webhook_scope_and_get_signed_deliveries() {
    let (sim, client) = demo().await;
    let hooks = format!("{}/workspaces/acme/hooks", sim.cloud_api_url());
    let (url, got) = receiver().await;
    let body = json!({"description": "bitbucket-operator", "url": url, "active": true,
        "secret": "s3cret", "events": ["repo:push", "repo:updated", "repo:created", "repo:deleted"]});

    // Without the webhook scope, or not the workspace's owner: refused, saying why.
    let refused = client
        .post(&hooks)
        .by_jdoe()
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        header(&refused, "x-accepted-oauth-scopes"),
        Some("write:webhook:bitbucket")
    );
    let refused = client
        .post(&hooks)
        .by_ci_token()
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    // An event workspace hooks do not carry.
    sim.control().set_workspace_hook_events(&["repo:push"]);
    let events = json_of(
        client
            .get(format!("{}/hook_events/workspace", sim.cloud_api_url()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(events["values"][0]["event"], "repo:push");
    let refused = (client.post(&hooks))
        .basic_auth(JDOE_EMAIL, Some("FAKE-cloud-api-token-for-jdoe-hooks"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert!(
        json_of(refused).await["error"]["message"]
            .as_str()
            .unwrap()
            .contains("repo:updated")
    );
    sim.control()
        .set_workspace_hook_events(&bitbucket_sim::DEFAULT_WORKSPACE_EVENTS);

    let created = (client.post(&hooks))
        .basic_auth(JDOE_EMAIL, Some("FAKE-cloud-api-token-for-jdoe-hooks"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let created = json_of(created).await;
    assert_eq!(
        (
            created["secret_set"].clone(),
            created["subject_type"].clone()
        ),
        (json!(true), json!("workspace"))
    );
    assert!(created.get("secret").is_none(), "the secret is never shown");

    // Each change through the control API is delivered, signed, with Bitbucket's headers.
    let repo: CloudRepository =
        serde_json::from_value(json!({"slug": "hooked", "project": "API"})).unwrap();
    sim.control().add_cloud_repository("acme", repo).unwrap();
    let (headers, payload) = nth_delivery(&got, 1).await;
    let raw = got.lock().unwrap()[0].1.clone();
    assert_eq!(headers["x-event-key"], "repo:created");
    assert_eq!(headers["x-hook-uuid"], created["uuid"].as_str().unwrap());
    assert_eq!(headers["x-attempt-number"], "1");
    assert!(headers.contains_key("x-request-uuid"));
    assert_eq!(
        headers["x-hub-signature"],
        bitbucket_sim::signature("s3cret", &raw).as_str()
    );
    assert_eq!(payload["repository"]["full_name"], "acme/hooked");
    assert_eq!(payload["repository"]["workspace"]["slug"], "acme");

    sim.control()
        .push_cloud_repository("acme", "hooked")
        .unwrap();
    let (headers, payload) = nth_delivery(&got, 2).await;
    assert_eq!(headers["x-event-key"], "repo:push");
    assert_eq!(payload["push"]["changes"][0]["new"]["type"], "branch");

    let rename = CloudRepositoryChange {
        slug: Some("renamed".into()),
        ..Default::default()
    };
    sim.control()
        .change_cloud_repository("acme", "hooked", rename)
        .unwrap();
    let (headers, payload) = nth_delivery(&got, 3).await;
    assert_eq!(headers["x-event-key"], "repo:updated");
    assert_eq!(
        payload["changes"]["full_name"],
        json!({"old": "acme/hooked", "new": "acme/renamed"})
    );

    sim.control()
        .delete_cloud_repository("acme", "renamed")
        .unwrap();
    let (headers, payload) = nth_delivery(&got, 4).await;
    assert_eq!(headers["x-event-key"], "repo:deleted");
    assert_eq!(payload["repository"]["full_name"], "acme/renamed");
    let deliveries = sim.control().deliveries();
    assert_eq!(deliveries.len(), 4);
    assert!(
        deliveries
            .iter()
            .all(|d| d.status == Some(202) && d.attempts == 1)
    );

    // Deleted, it hears nothing more.
    let uid = created["uuid"]
        .as_str()
        .unwrap()
        .replace('{', "%7B")
        .replace('}', "%7D");
    let deleted = (client.delete(format!("{hooks}/{uid}")))
        .basic_auth(JDOE_EMAIL, Some("FAKE-cloud-api-token-for-jdoe-hooks"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert!(sim.control().hooks().is_empty());
}

#[tokio::test]
async fn project_hooks_hear_of_pushes_and_renames_and_nothing_of_new_repositories() {
    let (sim, client) = demo().await;
    let hooks = format!("{}/rest/api/1.0/projects/PLAT/webhooks", sim.base_url());
    let (url, got) = receiver().await;
    let body = json!({"name": "bitbucket-operator", "url": url, "active": true,
        "events": ["repo:refs_changed", "repo:modified"], "configuration": {"secret": "s3cret"}});
    let created = client
        .post(&hooks)
        .by_dc_jdoe()
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let listed = json_of(client.get(&hooks).by_dc_jdoe().send().await.unwrap()).await;
    assert_eq!(listed["values"][0]["url"], url.as_str());
    assert!(listed["values"][0]["configuration"].get("secret").is_none());

    let repo: bitbucket_sim::DcRepository =
        serde_json::from_value(json!({"slug": "fresh"})).unwrap();
    sim.control().add_dc_repository("PLAT", repo).unwrap();
    sim.control().push_dc_repository("PLAT", "core").unwrap();
    let (headers, payload) = nth_delivery(&got, 1).await;
    let raw = got.lock().unwrap()[0].1.clone();
    assert_eq!(
        headers["x-event-key"], "repo:refs_changed",
        "the new repository was not announced"
    );
    assert!(headers.contains_key("x-request-id"));
    assert_eq!(
        headers["x-hub-signature"],
        bitbucket_sim::signature("s3cret", &raw).as_str()
    );
    assert_eq!(
        (
            payload["repository"]["slug"].clone(),
            payload["repository"]["project"]["key"].clone()
        ),
        (json!("core"), json!("PLAT"))
    );

    let rename = bitbucket_sim::DcRepositoryChange {
        slug: Some("kernel".into()),
        ..Default::default()
    };
    sim.control()
        .change_dc_repository("PLAT", "core", rename)
        .unwrap();
    let (headers, payload) = nth_delivery(&got, 2).await;
    assert_eq!(headers["x-event-key"], "repo:modified");
    assert_eq!(
        (
            payload["old"]["slug"].clone(),
            payload["new"]["slug"].clone()
        ),
        (json!("core"), json!("kernel"))
    );
}
