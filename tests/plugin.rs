//! `kubectl bitbucket` as a person runs it: the built `kubectl-bitbucket` binary against the real
//! API server, the simulator and the operator (in-process), reading what it prints and its exit
//! code.

mod support;

use std::process::Output;

use bitbucket_operator::api::BitbucketIntegration;
use kube::api::DeleteParams;
use support::{
    env::*,
    operator::{eventually, subscription},
};

/// Runs `kubectl bitbucket ARGS -n NAMESPACE` (the plugin binary kubectl would run).
fn plugin(env: &Env, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-bitbucket"))
        .args(args)
        .args(["-n", &env.ns.name])
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_shows_each_integrations_server_account_health_and_users() {
    let env = Env::start("plugin-list").await;
    env.ready_cloud_integration().await;
    env.create(&subscription("ci", "acme", Some("acme"), &[]))
        .await;
    eventually(&env.api(), "acme", "acme to count ci", used_by(1)).await;

    let listed = plugin(&env, &["list"]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let lines: Vec<String> = text(&listed.stdout).lines().map(str::to_owned).collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["NAME", "SERVER", "ACCOUNT", "READY", "USED", "BY"]
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        row,
        ["acme", &env.sim.cloud_api_url(), "jdoe", "True", "1:", "ci"]
    );

    let json = plugin(&env, &["list", "-o", "json"]);
    let objects: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(objects[0]["metadata"]["name"], "acme");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_waits_for_the_answer_and_says_what_it_found() {
    let env = Env::start("plugin-sync").await;
    env.ready_cloud_integration().await;
    env.create(&subscription("ci", "acme", Some("acme"), &[]))
        .await;
    eventually(&env.api(), "ci", "ci to sync", is_synced).await;

    let synced = plugin(&env, &["sync", "ci"]);
    assert!(synced.status.success(), "{}", text(&synced.stderr));
    assert_eq!(
        text(&synced.stdout),
        "Subscription ci synced: 10 repositories\n"
    );

    let validated = plugin(&env, &["sync", "--integration", "acme"]);
    assert!(validated.status.success(), "{}", text(&validated.stderr));
    assert_eq!(
        text(&validated.stdout),
        "BitbucketIntegration acme synced: authenticated as jdoe\n"
    );

    // A workspace that does not exist: the request is answered, with the reason, and the
    // command fails.
    env.create(&subscription(
        "lost",
        "acme",
        Some("no-such-workspace"),
        &[],
    ))
    .await;
    let failed = plugin(&env, &["sync", "lost", "--timeout", "60s"]);
    assert_eq!(failed.status.code(), Some(1));
    let said = text(&failed.stderr);
    assert!(
        said.starts_with("Subscription lost did not sync: ") && said.contains("WorkspaceNotFound"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_is_refused_naming_every_subscription_then_done() {
    let env = Env::start("plugin-delete").await;
    env.ready_cloud_integration().await;
    for name in ["api-ci", "docs-ci", "web-ci"] {
        env.create(&subscription(name, "acme", Some("acme"), &[]))
            .await;
    }
    let integrations = env.api::<BitbucketIntegration>();
    eventually(&integrations, "acme", "acme to count 3", used_by(3)).await;
    // The API server enforces its policy a moment after it is installed (a dry run deletes
    // nothing meanwhile).
    let dry_run = DeleteParams {
        dry_run: true,
        ..DeleteParams::default()
    };
    support::within("the policy to be in force", async {
        while integrations.delete("acme", &dry_run).await.is_ok() {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    let refused = plugin(&env, &["delete", "acme"]);
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(
        text(&refused.stderr),
        "BitbucketIntegration acme is in use by Subscriptions api-ci, docs-ci and 1 more; delete \
         them or point them at another integration first\n  subscription/api-ci\n  \
         subscription/docs-ci\n  subscription/web-ci\n"
    );
    assert!(
        integrations
            .get("acme")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_none()
    );

    let subscriptions = env.api::<bitbucket_operator::api::Subscription>();
    for name in ["api-ci", "docs-ci", "web-ci"] {
        subscriptions
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    eventually(&integrations, "acme", "acme to count none", used_by(0)).await;
    let deleted = plugin(&env, &["delete", "acme"]);
    assert!(deleted.status.success(), "{}", text(&deleted.stderr));
    assert_eq!(text(&deleted.stdout), "BitbucketIntegration acme deleted\n");
}
