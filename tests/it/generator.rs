//! Argo CD's ApplicationSet plugin generator as Argo CD calls it: the operator's endpoint on the
//! real API server and simulator, asked over HTTP by our own requests (the protocol's edges)
//! and by Argo CD's own plugin client (`hack/gitops`, the Go package Argo CD runs).

use std::path::PathBuf;

use crate::support::{
    env::*,
    operator::{await_object, subscription},
};
use bitbucket_operator::{
    api::{CredentialType, Subscription},
    generator::{self, Generator, OFFER_LABEL},
    http,
};
use bitbucket_sim::Fixture;
use kube::ResourceExt;
use serde_json::{Value, json};

pub const TOKEN: &str = "FAKE-plugin-generator-token";

/// The generator of `env`'s operator on a free loopback port, its token in a file; its base URL.
pub async fn serve(env: &Env) -> String {
    serve_from(env, env.operator()).await
}

/// The generator of `operator` (a replica) on a free loopback port; its base URL.
pub async fn serve_from(env: &Env, operator: &crate::support::operator::Operator) -> String {
    let dir = std::env::temp_dir().join(format!("plugin-token-{}", env.ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file: PathBuf = dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = generator::router(Generator {
        shared: operator.shared.clone(),
        token_file,
    });
    tokio::spawn(http::serve(
        listener,
        router,
        http::ServerLimits::default(),
        std::future::pending(),
    ));
    url
}

/// `subscription(...)` offering its list to ApplicationSets.
pub fn offered(mut s: Subscription) -> Subscription {
    s.labels_mut().insert(OFFER_LABEL.into(), "true".into());
    s
}

/// POSTs a plugin request for `namespace/name` with `token`; the status and the JSON answer.
pub async fn ask(url: &str, token: Option<&str>, parameters: Value) -> (u16, Value) {
    let client = crate::support::browser();
    let mut request = client
        .post(format!("{url}/api/v1/getparams.execute"))
        .header("content-type", "application/json")
        .body(
            json!({"applicationSetName": "repos", "input": {"parameters": parameters}}).to_string(),
        );
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// The generator's first 200 for Subscription `name`: right after a sync the replica's slice
/// cache may lag the Subscription's for a moment, and the generator answers 503 (Argo CD
/// retries) until it has caught up.
pub async fn when_served(url: &str, env: &Env, name: &str) -> Value {
    crate::support::eventually(
        "the whole list to be served",
        crate::support::PATIENCE,
        || async {
            let (code, answer) = ask(url, Some(TOKEN), naming(env, name)).await;
            (code == 200).then_some(answer)
        },
    )
    .await
}

pub fn naming(env: &Env, subscription: &str) -> Value {
    json!({"namespace": env.ns.name, "subscription": subscription})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_repository_is_one_parameter_set_for_the_token_holder_only() {
    let env = Env::start("generator").await;
    env.ready_cloud_integration().await;
    env.create(&offered(subscription("ci", "acme", Some("acme"), &[])))
        .await;
    await_object(&env.api(), "ci", "ci to sync", is_synced).await;
    let url = serve(&env).await;

    for token in [None, Some("FAKE-wrong-token")] {
        let (status, answer) = ask(&url, token, naming(&env, "ci")).await;
        assert_eq!(status, 403);
        assert_eq!(
            answer["message"],
            "the bearer token is not the plugin generator's token"
        );
    }

    let requests = env.sim.control().counters().total;
    let answer = when_served(&url, &env, "ci").await;
    let sets = answer["output"]["parameters"].as_array().unwrap();
    assert_eq!(sets.len(), 10);
    let gateway = sets
        .iter()
        .find(|s| s["slug"] == "api-gateway")
        .expect("acme/api-gateway is listed");
    assert_eq!(
        gateway,
        &json!({
            "fullName": "acme/api-gateway",
            "slug": "api-gateway",
            "name": "API Gateway",
            "project": "API",
            "workspace": "acme",
            "private": true,
            "mainBranch": "main",
            "cloneUrlHttps": "https://bitbucket.org/acme/api-gateway.git",
            "cloneUrlSsh": "git@bitbucket.org:acme/api-gateway.git",
            "htmlUrl": "https://bitbucket.org/acme/api-gateway",
            "namespace": env.ns.name,
            "subscription": "ci",
            "integration": "acme",
        })
    );
    assert_eq!(
        env.sim.control().counters().total,
        requests,
        "no Bitbucket request per generator request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_unoffered_and_unsynced_subscriptions_are_errors_never_empty_lists() {
    let env = Env::start("generator-edges").await;
    env.ready_cloud_integration().await;
    env.create(&subscription("private", "acme", Some("acme"), &[]))
        .await;
    await_object(&env.api(), "private", "private to sync", is_synced).await;
    // An integration that never validates: its Subscription has no list yet.
    env.secret(
        "wrong",
        &[("email", "jdoe@example.com"), ("token", "FAKE-wrong")],
    )
    .await;
    env.create(&env.cloud("wrong", CredentialType::ApiToken, "wrong", None))
        .await;
    env.create(&offered(subscription(
        "waiting",
        "wrong",
        Some("acme"),
        &[],
    )))
    .await;
    await_object(
        &env.api(),
        "waiting",
        "waiting to wait for its integration",
        subscription_reason_is("IntegrationNotReady"),
    )
    .await;
    let url = serve(&env).await;

    let not_offered = |name: &str| {
        format!(
            "no Subscription {}/{name} offers its repositories (it must exist and be labelled \
             {OFFER_LABEL}: \"true\")",
            env.ns.name
        )
    };
    // Not offered and not there read the same: existence does not leak.
    for name in ["missing", "private"] {
        let (status, answer) = ask(&url, Some(TOKEN), naming(&env, name)).await;
        assert_eq!(
            (status, answer["message"].as_str()),
            (404, Some(&*not_offered(name)))
        );
    }
    let (status, answer) = ask(&url, Some(TOKEN), naming(&env, "waiting")).await;
    assert_eq!(
        status, 503,
        "Argo CD retries a 503; an empty list would delete Applications"
    );
    assert_eq!(
        answer["message"],
        format!(
            "Subscription {}/waiting: it has not listed its repositories yet",
            env.ns.name
        )
    );
    let (status, answer) = ask(&url, Some(TOKEN), json!({"subscription": "private"})).await;
    assert_eq!(status, 400);
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .ends_with("input.parameters must name the Subscription: namespace and subscription")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_repositories_are_all_served_beyond_the_thousand_in_status() {
    let env = Env::start_with(
        "generator-10k",
        Fixture::demo_with_generated(10_000),
        |_| {},
    )
    .await;
    env.ready_cloud_integration().await;
    let mut big = offered(subscription("big", "acme", Some("acme"), &[]));
    big.spec.repositories.include = vec!["gen-*".into()];
    env.create(&big).await;
    let synced = await_object(&env.api(), "big", "big to sync", is_synced).await;
    let status = synced.status.unwrap();
    assert!(status.repositories_truncated);
    assert_eq!(status.repositories.len(), 1000);
    let url = serve(&env).await;

    let answer = when_served(&url, &env, "big").await;
    let sets = answer["output"]["parameters"].as_array().unwrap();
    assert_eq!(
        sets.len(),
        10_000,
        "every repository the filter keeps, not only status's"
    );
    assert!(
        sets.iter()
            .all(|s| s["slug"].as_str().unwrap().starts_with("gen-"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argo_cds_own_plugin_client_reads_the_answer() {
    let env = Env::start("generator-argocd").await;
    env.ready_cloud_integration().await;
    env.create(&offered(subscription("ci", "acme", Some("acme"), &["WEB"])))
        .await;
    await_object(&env.api(), "ci", "ci to sync", is_synced).await;
    let url = serve(&env).await;
    let argo = |token: &str, parameters: Value| {
        let mut command = std::process::Command::new(crate::support::gitops_check());
        command
            .args(["plugin", &url, "repos"])
            .env("PLUGIN_TOKEN", token);
        crate::support::with_input(command, parameters.to_string().as_bytes())
    };
    when_served(&url, &env, "ci").await;
    let answered = argo(TOKEN, naming(&env, "ci"));
    assert!(
        answered.status.success(),
        "{}",
        String::from_utf8_lossy(&answered.stderr)
    );
    let response: Value = serde_json::from_slice(&answered.stdout).unwrap();
    let slugs: Vec<&str> = response["output"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["slug"].as_str().unwrap())
        .collect();
    assert_eq!(slugs, ["docs", "marketing-site", "web-app"]);

    // What Argo CD puts on the ApplicationSet when the token is wrong.
    let refused = argo("FAKE-wrong-token", naming(&env, "ci"));
    assert!(!refused.status.success());
    assert_eq!(
        String::from_utf8_lossy(&refused.stderr).trim(),
        "error get api 'repos': API error with status code 403: the bearer token is not the \
         plugin generator's token"
    );
}
