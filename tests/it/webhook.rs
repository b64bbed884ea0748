//! Bitbucket's webhooks as Bitbucket sends them, to the operator's receiver on the real API
//! server and simulator: the recorded signed deliveries verify with their known secrets; an
//! unknown integration, an integration without a webhook, a body too large, an unsigned or a
//! badly signed delivery are refused before anything is done (no Bitbucket call); a retried
//! delivery does nothing; and a signed `repo:created` makes the Subscription list the new
//! repository without a sync request, long before its interval.

use crate::support::{
    env::*,
    operator::{await_object, subscription},
};
use bitbucket_operator::{
    api::{CredentialType, Subscription, Webhook, WebhookSecretReference},
    bitbucket::webhook,
    http,
    webhook::{Receiver, router},
};
use serde_json::{Value, json};

/// The secret of the recorded signed deliveries (`testdata/bitbucket/webhooks/README.md`).
const RECORDED_SECRET: &str = "Gkvl$k$wyNpQAF42";

/// The receiver of `env`'s operator on a free loopback port; its base URL.
async fn serve(env: &Env) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(http::serve(
        listener,
        router(Receiver::new(env.operator().shared.clone())),
        http::ServerLimits::default(),
        std::future::pending(),
    ));
    url
}

/// POSTs `body` to `url` with `headers`; the status and the JSON answer.
async fn deliver(url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, Value) {
    let mut request = crate::support::browser()
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

fn recorded(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/testdata/bitbucket/webhooks/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_delivery_refreshes_its_subscriptions_and_nothing_else_gets_in() {
    let env = Env::start("webhook").await;
    env.secret("acme-hook", &[("secret", RECORDED_SECRET)])
        .await;
    env.secret(
        "acme-token",
        &[("email", "jdoe@example.com"), ("token", API_TOKEN)],
    )
    .await;
    let mut acme = env.cloud("acme", CredentialType::ApiToken, "acme-token", None);
    acme.spec.webhook = Some(Webhook {
        secret_ref: WebhookSecretReference {
            name: "acme-hook".into(),
            key: "secret".into(),
        },
    });
    env.create(&acme).await;
    env.create(&env.cloud("plain", CredentialType::ApiToken, "acme-token", None))
        .await;
    let mut ci = subscription("ci", "acme", Some("acme"), &[]);
    ci.spec.sync_interval = "1h".into();
    env.create(&ci).await;
    let listed = await_object(&env.api(), "ci", "ci to sync", is_synced).await;
    let status = listed.status.unwrap();
    let before = status.repository_count.unwrap();
    let project = status.repositories[0].project.clone().unwrap();
    let url = serve(&env).await;
    let hooks = format!("{url}/hooks/{}", env.ns.name);

    // Refused before anything is done, in order: who, how much, signed.
    let calls = env.sim.control().counters().total;
    let push = recorded("cloud-repo-push-signed.json");
    let signature = "sha256=f205c729821c6954aff2afe72b965c34015b4baf96ea8ddc2cc44999c014a035";
    let signed = [("X-Event-Key", "repo:push"), ("X-Hub-Signature", signature)];
    let (unknown, answer) = deliver(&format!("{hooks}/nobody"), &signed, push.clone()).await;
    let (plain, same) = deliver(&format!("{hooks}/plain"), &signed, push.clone()).await;
    assert_eq!((unknown, plain), (404, 404));
    assert_eq!(answer, same, "no webhook and no integration look alike");
    let big = vec![b' '; 300 * 1024];
    assert_eq!(deliver(&format!("{hooks}/acme"), &signed, big).await.0, 413);
    let unsigned = [("X-Event-Key", "repo:push")];
    let (code, answer) = deliver(&format!("{hooks}/acme"), &unsigned, push.clone()).await;
    assert_eq!(code, 401);
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("no X-Hub-Signature")
    );
    let mut tampered = push.clone();
    tampered[0] = b' ';
    assert_eq!(
        deliver(&format!("{hooks}/acme"), &signed, tampered).await.0,
        401
    );
    assert_eq!(
        env.sim.control().counters().total,
        calls,
        "a refused delivery costs no Bitbucket call"
    );

    // The recorded delivery verifies under its secret (it is about another workspace: nothing
    // to refresh here); Bitbucket's retry of it is answered and ignored.
    let once = [
        ("X-Event-Key", "repo:push"),
        ("X-Hub-Signature", signature),
        ("X-Request-UUID", "4a1e2c4e-0b0c-4f5e-9d55-3c5b1d0e7a11"),
    ];
    let (code, answer) = deliver(&format!("{hooks}/acme"), &once, push.clone()).await;
    assert_eq!(
        (code, answer["message"].as_str()),
        (202, Some("0 Subscriptions to refresh"))
    );
    let (code, answer) = deliver(&format!("{hooks}/acme"), &once, push).await;
    assert_eq!(
        (code, answer["message"].as_str()),
        (200, Some("this delivery was received before"))
    );

    // A repository created in Bitbucket appears without a sync request, within seconds of its
    // signed delivery (the interval is an hour).
    let repository = serde_json::from_value(json!({"slug": "hooked", "project": project})).unwrap();
    env.sim
        .control()
        .add_cloud_repository("acme", repository)
        .unwrap();
    let created =
        json!({"repository": {"full_name": "acme/hooked", "workspace": {"slug": "acme"}}})
            .to_string()
            .into_bytes();
    let signature = webhook::sign(RECORDED_SECRET.as_bytes(), &created);
    let headers = [
        ("X-Event-Key", "repo:created"),
        ("X-Hub-Signature", &signature),
    ];
    let (code, answer) = deliver(&format!("{hooks}/acme"), &headers, created).await;
    assert_eq!(
        (code, answer["message"].as_str()),
        (202, Some("1 Subscriptions to refresh"))
    );
    let refreshed = await_object(
        &env.api(),
        "ci",
        "the new repository",
        move |s: &Subscription| {
            s.status
                .as_ref()
                .is_some_and(|s| s.repository_count == Some(before + 1))
        },
    )
    .await;
    let status = refreshed.status.unwrap();
    assert!(
        status
            .repositories
            .iter()
            .any(|r| r.full_name == "acme/hooked")
    );
    assert!(
        refreshed
            .metadata
            .annotations
            .unwrap_or_default()
            .is_empty(),
        "no sync request was made"
    );
}
