//! Bitbucket's webhooks as Bitbucket sends them, to the operator's receiver on the real API
//! server and simulator: the recorded signed deliveries verify with their known secrets; an
//! unknown integration, an integration without a webhook, a body too large, an unsigned or a
//! badly signed delivery are refused before anything is done (no Bitbucket call); a retried
//! delivery does nothing; and a signed `repo:created` makes the Subscription list the new
//! repository without a sync request, long before its interval.

use crate::support::{
    PATIENCE,
    env::*,
    eventually,
    operator::{Operator, await_object, subscription, sync_request},
};
use bitbucket_operator::{
    api::{
        BitbucketIntegration, CredentialType, Subscription, Webhook, WebhookSecretReference,
        WebhookState,
    },
    bitbucket::webhook,
    http,
    webhook::{Receiver, router},
};
use bitbucket_sim::CloudRepositoryChange;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

/// The secret of the recorded signed deliveries (`testdata/bitbucket/webhooks/README.md`).
const RECORDED_SECRET: &str = "Gkvl$k$wyNpQAF42";

/// The receiver of `operator` on `listener`; its base URL.
fn serve_on(listener: tokio::net::TcpListener, operator: &Operator) -> String {
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(http::serve(
        listener,
        router(Receiver::new(operator.shared.clone())),
        http::ServerLimits::default(),
        std::future::pending(),
    ));
    url
}

async fn loopback() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()
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

/// [`with_webhook`], and the receiver of `env`'s operator: its hooks URL for the namespace, and
/// `ci` as listed.
async fn hooked(env: &Env) -> (String, Subscription) {
    let listed = with_webhook(env).await;
    let url = serve_on(loopback().await, env.operator());
    (format!("{url}/hooks/{}", env.ns.name), listed)
}

/// Integration `acme` with a webhook (the recorded deliveries' secret), `plain` without one,
/// and Subscription `ci` of workspace `acme` (interval an hour), returned once listed.
async fn with_webhook(env: &Env) -> Subscription {
    env.secret("acme-hook", &[("secret", RECORDED_SECRET)])
        .await;
    env.jdoe_token_secret("acme-token").await;
    let mut acme = env.cloud("acme", CredentialType::ApiToken, "acme-token", None);
    acme.spec.webhook = Some(Webhook {
        secret_ref: WebhookSecretReference {
            name: "acme-hook".into(),
            key: "secret".into(),
        },
        register: false,
    });
    env.create(&acme).await;
    env.create(&env.cloud("plain", CredentialType::ApiToken, "acme-token", None))
        .await;
    let mut ci = subscription("ci", "acme", Some("acme"), &[]);
    ci.spec.sync_interval = "1h".into();
    env.create(&ci).await;
    // Both validated before anything is counted (a late first validation is a Bitbucket call).
    for name in ["acme", "plain"] {
        await_object(
            &env.api(),
            name,
            "the integration validated",
            is_ready_integration,
        )
        .await;
    }
    await_object(&env.api(), "ci", "ci to sync", is_synced).await
}

/// Subscription `ci` once it counts `count` repositories (a new one came).
async fn counted(env: &Env, count: i32) -> Subscription {
    await_object(
        &env.api(),
        "ci",
        "the new repository",
        move |s: &Subscription| {
            (s.status.as_ref()).is_some_and(|s| s.repository_count == Some(count))
        },
    )
    .await
}

/// `body` as Bitbucket sends event `event`, signed with the webhook secret.
async fn signed(url: &str, event: &str, body: Value) -> (u16, Value) {
    let body = body.to_string().into_bytes();
    let signature = webhook::sign(RECORDED_SECRET.as_bytes(), &body);
    let headers = [("X-Event-Key", event), ("X-Hub-Signature", &signature)];
    deliver(url, &headers, body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_delivery_refreshes_its_subscriptions_and_nothing_else_gets_in() {
    let env = Env::start("webhook").await;
    let (hooks, listed) = hooked(&env).await;
    let status = listed.status.unwrap();
    let before = status.repository_count.unwrap();
    let project = status.repositories[0].project.clone().unwrap();

    // Refused before anything is done, in order: who, how much, signed.
    let calls = env.sim.control().counters().total;
    let push = recorded("cloud-repo-push-signed.json");
    let signature = "sha256=f205c729821c6954aff2afe72b965c34015b4baf96ea8ddc2cc44999c014a035";
    let recorded_headers = [("X-Event-Key", "repo:push"), ("X-Hub-Signature", signature)];
    let (unknown, answer) =
        deliver(&format!("{hooks}/nobody"), &recorded_headers, push.clone()).await;
    let (plain, same) = deliver(&format!("{hooks}/plain"), &recorded_headers, push.clone()).await;
    assert_eq!((unknown, plain), (404, 404));
    assert_eq!(answer, same, "no webhook and no integration look alike");
    let big = vec![b' '; 300 * 1024];
    assert_eq!(
        deliver(&format!("{hooks}/acme"), &recorded_headers, big)
            .await
            .0,
        413
    );
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
        deliver(&format!("{hooks}/acme"), &recorded_headers, tampered)
            .await
            .0,
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
        json!({"repository": {"full_name": "acme/hooked", "workspace": {"slug": "acme"}}});
    let (code, answer) = signed(&format!("{hooks}/acme"), "repo:created", created).await;
    assert_eq!(
        (code, answer["message"].as_str()),
        (202, Some("1 Subscriptions to refresh"))
    );
    let refreshed = counted(&env, before + 1).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_or_a_rename_fetches_that_repository_alone_and_rewrites_only_its_entry() {
    let env = Env::start("webhook-push").await;
    let (hooks, listed) = hooked(&env).await;
    let status = listed.status.unwrap();
    let count = status.repository_count;
    let pushed = status.repositories[1].clone();
    let hook = format!("{hooks}/acme");
    let (calls, writes) = (env.sim.control().counters(), env.operator().slice_writes());

    // A push that made it public: one request for that repository, one slice written.
    let public = CloudRepositoryChange {
        private: Some(!pushed.private),
        ..Default::default()
    };
    (env.sim.control())
        .change_cloud_repository("acme", &pushed.name, public)
        .unwrap();
    let push = json!({"repository": {"full_name": pushed.full_name, "uuid": pushed.id}});
    assert_eq!(signed(&hook, "repo:push", push).await.0, 202);
    let (name, private) = (pushed.full_name.clone(), pushed.private);
    let pushed_shown = move |s: &Subscription| {
        s.status.as_ref().is_some_and(|s| {
            (s.repositories.iter()).any(|r| r.full_name == name && r.private != private)
        })
    };
    await_object(&env.api(), "ci", "the pushed repository", pushed_shown).await;
    let after = env.sim.control().counters();
    assert_eq!(
        after.total - calls.total,
        1,
        "one Bitbucket request: {after:?}"
    );
    let single = "GET /2.0/repositories/{workspace}/{repo_slug}";
    let fetched = |c: &bitbucket_sim::Counters| c.by_endpoint.get(single).copied().unwrap_or(0);
    assert_eq!(fetched(&after), fetched(&calls) + 1);
    assert_eq!(
        env.operator().slice_writes() - writes,
        1,
        "one slice rewritten"
    );

    // A rename: the entry moves to its new name, and nothing else changes.
    let renamed = CloudRepositoryChange {
        slug: Some("renamed".into()),
        ..Default::default()
    };
    (env.sim.control())
        .change_cloud_repository("acme", &pushed.name, renamed)
        .unwrap();
    let updated = json!({
        "repository": {"full_name": "acme/renamed", "uuid": pushed.id},
        "changes": {"full_name": {"old": pushed.full_name, "new": "acme/renamed"}}
    });
    assert_eq!(signed(&hook, "repo:updated", updated).await.0, 202);
    let old = pushed.full_name.clone();
    let renamed_shown = move |s: &Subscription| {
        s.status.as_ref().is_some_and(|s| {
            (s.repositories.iter()).any(|r| r.full_name == "acme/renamed")
                && !s.repositories.iter().any(|r| r.full_name == old)
        })
    };
    let renamed = await_object(&env.api(), "ci", "the renamed repository", renamed_shown).await;
    assert_eq!(renamed.status.unwrap().repository_count, count);
    let listings = "GET /2.0/repositories/{workspace}";
    let listed = |c: &bitbucket_sim::Counters| c.by_endpoint.get(listings).copied();
    let now = env.sim.control().counters();
    assert_eq!(listed(&now), listed(&calls), "no listing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_deliveries_is_coalesced_into_a_fetch_per_repository_or_one_listing() {
    // A burst is over after a second without a delivery (250 ms in production): the suite's
    // other tests share the two cores, and a slow delivery must not end the burst early.
    let env = Env::start_with("webhook-burst", bitbucket_sim::Fixture::demo(), |s| {
        s.settle.quiet = std::time::Duration::from_secs(1);
        s.settle.longest = std::time::Duration::from_secs(60);
    })
    .await;
    let (hooks, listed) = hooked(&env).await;
    let hook = format!("{hooks}/acme");
    let repositories = listed.status.unwrap().repositories;
    let single = "GET /2.0/repositories/{workspace}/{repo_slug}";
    let listing = "GET /2.0/repositories/{workspace}";
    // 200 pushes over 5 repositories, as fast as 8 senders can: one fetch each.
    let before = env.sim.control().counters();
    send_burst(&hook, &repositories, 200, |_| "repo:push").await;
    let fetched = |c: &bitbucket_sim::Counters| c.endpoint(single);
    eventually("a fetch of each pushed repository", PATIENCE, || async {
        (fetched(&env.sim.control().counters()) >= fetched(&before) + 5).then_some(())
    })
    .await;
    // A sync request now is answered by a listing begun after the burst: nothing is left to do.
    synced_after(&env, "after-pushes").await;
    let after = env.sim.control().counters();
    assert_eq!(
        fetched(&after) - fetched(&before),
        5,
        "one fetch per repository: {after:?}"
    );
    let pages = after.endpoint(listing) - before.endpoint(listing);

    // 100 deliveries of which 10 say a repository was created: one listing for the burst.
    let before = env.sim.control().counters();
    send_burst(&hook, &repositories, 100, |n| {
        if n % 10 == 9 {
            "repo:created"
        } else {
            "repo:push"
        }
    })
    .await;
    synced_after(&env, "after-created").await;
    let after = env.sim.control().counters();
    let listings = (after.endpoint(listing) - before.endpoint(listing)) / pages.max(1);
    assert!(
        listings <= 2,
        "{listings} listings of {pages} pages for one burst: {after:?}"
    );
}

/// Asks Subscription `ci` for a sync (`value`) and waits until it was answered: by a listing
/// begun after everything sent before.
async fn synced_after(env: &Env, value: &'static str) {
    (env.api::<Subscription>())
        .patch("ci", &PatchParams::default(), &sync_request(value))
        .await
        .unwrap();
    await_object(
        &env.api(),
        "ci",
        "the sync request",
        move |s: &Subscription| {
            (s.status.as_ref())
                .is_some_and(|s| s.last_handled_sync_request.as_deref() == Some(value))
        },
    )
    .await;
}

/// `count` signed deliveries over the first 5 of `repositories`, 8 at a time, the event of the
/// `n`th from `event`; each must be accepted.
async fn send_burst(
    hook: &str,
    repositories: &[bitbucket_operator::api::Repository],
    count: usize,
    event: impl Fn(usize) -> &'static str,
) {
    use futures::StreamExt;
    let deliveries = (0..count).map(|n| {
        let repository = &repositories[n % 5];
        let body = json!({"repository": {"full_name": repository.full_name, "uuid": repository.id,
            "workspace": {"slug": "acme"}}});
        signed(hook, event(n), body)
    });
    let answers: Vec<u16> = futures::stream::iter(deliveries)
        .buffer_unordered(8)
        .map(|(code, _)| code)
        .collect()
        .await;
    assert!(answers.iter().all(|code| *code == 202), "{answers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_to_the_standby_is_relayed_to_the_leader() {
    let env = crate::leader::env_without_operator("webhook-relay").await;
    let replica = |identity: &str, listener: &tokio::net::TcpListener| {
        let address = listener.local_addr().unwrap().to_string();
        crate::leader::replica_receiving_at(&env, identity, Some(address))
    };
    let (a_port, b_port) = (loopback().await, loopback().await);
    let (a, b) = (replica("replica-a", &a_port), replica("replica-b", &b_port));
    let (a_url, b_url) = (serve_on(a_port, &a), serve_on(b_port, &b));
    eventually("one replica to lead", PATIENCE, || async {
        (a.leads() || b.leads()).then_some(())
    })
    .await;
    let (standby, standby_url) = if a.leads() { (&b, b_url) } else { (&a, a_url) };
    let listed = with_webhook(&env).await.status.unwrap();
    let project = listed.repositories[0].project.clone().unwrap();
    let repository =
        serde_json::from_value(json!({"slug": "relayed", "project": project})).unwrap();
    (env.sim.control())
        .add_cloud_repository("acme", repository)
        .unwrap();

    // The standby knows where the leader receives (its Lease says), checks the delivery and
    // hands it on; the leader's answer is the answer, and the leader lists.
    let hook = format!("{standby_url}/hooks/{}/acme", env.ns.name);
    let created =
        json!({"repository": {"full_name": "acme/relayed", "workspace": {"slug": "acme"}}});
    let relayed = eventually("the standby to relay", PATIENCE, || async {
        let (code, answer) = signed(&hook, "repo:created", created.clone()).await;
        (code == 202).then_some(answer)
    })
    .await;
    assert_eq!(relayed["message"], "1 Subscriptions to refresh");
    let count = listed.repository_count;
    await_object(
        &env.api(),
        "ci",
        "the relayed repository",
        move |s: &Subscription| {
            s.status.as_ref().is_some_and(|s| {
                s.repository_count == count.map(|c| c + 1)
                    && s.repositories.iter().any(|r| r.full_name == "acme/relayed")
            })
        },
    )
    .await;
    assert!(!standby.reconciles(), "the standby did no work itself");
    a.stop().await;
    b.stop().await;
}

/// The integration's `WebhooksRegistered` condition: (status, reason, message).
fn hooks_condition(integration: &BitbucketIntegration) -> Option<(String, String, String)> {
    let status = integration.status.as_ref()?;
    let condition = (status.conditions.iter()).find(|c| c.type_ == "WebhooksRegistered")?;
    Some((
        condition.status.clone(),
        condition.reason.clone(),
        condition.message.clone(),
    ))
}

/// Registered, with at least one hook (the first run may come before a Subscription is cached,
/// and needs none).
fn hooks_in_place(integration: &BitbucketIntegration) -> bool {
    hooks_condition(integration).is_some_and(|(status, _, _)| status == "True")
        && (integration.status.as_ref()).is_some_and(|s| !s.webhooks.is_empty())
}

/// An operator whose receiver listens on loopback and is its `--webhook-url` (the base URL,
/// returned), with the Secrets `acme-hook` (the recorded deliveries' secret) and `hooks-token`
/// (jdoe's API token that may manage webhooks).
async fn receiving(prefix: &str) -> (Env, String) {
    let listener = loopback().await;
    let base = format!("http://{}", listener.local_addr().unwrap());
    let url = base.parse().unwrap();
    let env = Env::start_with(prefix, bitbucket_sim::Fixture::demo(), |s| {
        s.webhook_url = Some(url);
    })
    .await;
    serve_on(listener, env.operator());
    env.secret("acme-hook", &[("secret", RECORDED_SECRET)])
        .await;
    let token = [
        ("email", "jdoe@example.com"),
        ("token", "FAKE-cloud-api-token-for-jdoe-hooks"),
    ];
    env.secret("hooks-token", &token).await;
    (env, base)
}

fn registering(env: &Env, name: &str, secret: &str) -> BitbucketIntegration {
    let mut integration = env.cloud(name, CredentialType::ApiToken, secret, None);
    integration.spec.webhook = Some(Webhook {
        secret_ref: WebhookSecretReference {
            name: "acme-hook".into(),
            key: "secret".into(),
        },
        register: true,
    });
    integration
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_hooks_are_kept_and_a_new_repository_appears_without_a_sync_request() {
    let (env, base) = receiving("webhook-register").await;
    let ns = env.ns.name.clone();
    env.create(&registering(&env, "acme", "hooks-token")).await;
    let mut ci = subscription("ci", "acme", Some("acme"), &[]);
    ci.spec.sync_interval = "1h".into();
    env.create(&ci).await;
    let listed = await_object(&env.api(), "ci", "ci to sync", is_synced).await;
    let before = listed.status.unwrap().repository_count.unwrap();

    // The workspace hook is made, pointing at the receiver, with the secret.
    let acme = await_object(&env.api(), "acme", "the hook registered", hooks_in_place).await;
    let shown = &acme.status.as_ref().unwrap().webhooks;
    assert_eq!((shown.len(), shown[0].owner.as_str()), (1, "acme"));
    assert!(shown[0].events.iter().any(|e| e == "repo:created"));
    let hooks = env.sim.control().hooks();
    assert_eq!(hooks.len(), 1);
    assert_eq!(hooks[0].url, format!("{base}/hooks/{ns}/acme"));
    assert_eq!(hooks[0].secret.as_deref(), Some(RECORDED_SECRET));
    assert_eq!(Some(hooks[0].id.clone()), shown[0].id);

    // Bitbucket delivers, signed: the new repository is listed within seconds, with no sync
    // request and an interval of an hour.
    let repository = serde_json::from_value(json!({"slug": "hooked", "project": "API"})).unwrap();
    env.sim
        .control()
        .add_cloud_repository("acme", repository)
        .unwrap();
    let refreshed = counted(&env, before + 1).await;
    assert!(
        refreshed
            .metadata
            .annotations
            .unwrap_or_default()
            .is_empty()
    );
    let deliveries = env.sim.control().deliveries();
    assert_eq!(deliveries[0].event, "repo:created");
    assert_eq!(deliveries[0].status, Some(202));

    // A rotated secret is given to the hook; a hook deleted by hand comes back on a sync
    // request.
    env.secret("acme-hook", &[("secret", "rotated")]).await;
    eventually("the rotated secret in Bitbucket", PATIENCE, || async {
        (env.sim.control().hooks().first()?.secret.as_deref() == Some("rotated")).then_some(())
    })
    .await;
    assert!(env.sim.control().remove_hook(&hooks[0].id));
    (env.api::<BitbucketIntegration>())
        .patch("acme", &PatchParams::default(), &sync_request("again"))
        .await
        .unwrap();
    let back = eventually("the hook made again", PATIENCE, || async {
        env.sim.control().hooks().first().cloned()
    })
    .await;
    assert_eq!(back.url, hooks[0].url);

    // It goes with the integration.
    env.api::<Subscription>()
        .delete("ci", &Default::default())
        .await
        .unwrap();
    await_object(&env.api(), "acme", "no more users", used_by(0)).await;
    env.api::<BitbucketIntegration>()
        .delete("acme", &Default::default())
        .await
        .unwrap();
    eventually("the hook removed", PATIENCE, || async {
        env.sim.control().hooks().is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_without_the_webhook_scope_is_told_once_and_not_asked_again() {
    let env = Env::start_with("webhook-scope", bitbucket_sim::Fixture::demo(), |s| {
        s.webhook_url = Some("https://hooks.example.com".parse().unwrap());
    })
    .await;
    env.secret("acme-hook", &[("secret", RECORDED_SECRET)])
        .await;
    env.jdoe_token_secret("acme-token").await;
    env.create(&registering(&env, "acme", "acme-token")).await;
    env.create(&subscription("ci", "acme", Some("acme"), &[]))
        .await;
    let refused = |i: &BitbucketIntegration| {
        hooks_condition(i).is_some_and(|(_, reason, _)| reason == "WebhookScopeMissing")
    };
    let acme = await_object(&env.api(), "acme", "the missing scope", refused).await;
    let (status, _, message) = hooks_condition(&acme).unwrap();
    assert_eq!(status, "False");
    assert!(
        message.contains("needs read:webhook:bitbucket"),
        "{message}"
    );
    assert!(message.contains("workspace acme"), "{message}");
    assert_eq!(
        acme.status.as_ref().unwrap().webhooks[0].state,
        WebhookState::Failed
    );
    assert!(
        is_ready_integration(&acme),
        "Ready is not the webhook's business"
    );

    // Woken again with nothing changed, it does not ask Bitbucket again.
    let hook_calls = || {
        let counters = env.sim.control().counters();
        counters.endpoint("POST /2.0/workspaces/{workspace}/hooks")
            + counters.endpoint("GET /2.0/workspaces/{workspace}/hooks")
    };
    let (calls, reconciles) = (hook_calls(), env.operator().reconciles_of("integration"));
    let touch = json!({"metadata": {"labels": {"touched": "yes"}}});
    (env.api::<BitbucketIntegration>())
        .patch("acme", &PatchParams::default(), &Patch::Merge(touch))
        .await
        .unwrap();
    eventually(
        "a reconcile of the touched integration",
        PATIENCE,
        || async { (env.operator().reconciles_of("integration") > reconciles).then_some(()) },
    )
    .await;
    assert_eq!(hook_calls(), calls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_bitbucket_does_not_offer_are_named_and_data_center_gets_project_hooks() {
    let (env, _) = receiving("webhook-events").await;

    // Cloud: workspace hooks that carry pushes and settings only.
    env.sim
        .control()
        .set_workspace_hook_events(&["repo:push", "repo:updated"]);
    env.create(&registering(&env, "acme", "hooks-token")).await;
    env.create(&subscription("ci", "acme", Some("acme"), &[]))
        .await;
    let acme = await_object(&env.api(), "acme", "the hook registered", hooks_in_place).await;
    let (_, _, message) = hooks_condition(&acme).unwrap();
    assert!(
        message.contains("do not carry repo:created, repo:deleted, repo:transfer"),
        "{message}"
    );
    assert_eq!(
        acme.status.unwrap().webhooks[0].events,
        ["repo:push", "repo:updated"]
    );

    // Data Center: a project hook per listed project; a push fetches that repository.
    env.secret(
        "dc-basic",
        &[("username", "jdoe"), ("password", DC_PASSWORD)],
    )
    .await;
    let mut dc = env.data_center("dc", CredentialType::Basic, "dc-basic");
    dc.spec.webhook = registering(&env, "x", "x").spec.webhook;
    env.create(&dc).await;
    let mut plat = subscription("plat", "dc", None, &["PLAT"]);
    plat.spec.sync_interval = "1h".into();
    env.create(&plat).await;
    let dc = await_object(&env.api(), "dc", "the project hook", hooks_in_place).await;
    let shown = &dc.status.as_ref().unwrap().webhooks;
    assert_eq!((shown.len(), shown[0].owner.as_str()), (1, "PLAT"));
    assert_eq!(shown[0].events, ["repo:refs_changed", "repo:modified"]);
    await_object(&env.api(), "plat", "plat to sync", is_synced).await;
    let fetched = env.operator().requests("get_repository");
    env.sim
        .control()
        .push_dc_repository("PLAT", "core")
        .unwrap();
    eventually("the pushed repository fetched", PATIENCE, || async {
        (env.operator().requests("get_repository") > fetched).then_some(())
    })
    .await;
    let delivered = env.sim.control().deliveries();
    let push = delivered
        .iter()
        .find(|d| d.event == "repo:refs_changed")
        .unwrap();
    assert_eq!(push.status, Some(202));
}
