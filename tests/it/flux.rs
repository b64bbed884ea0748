//! The Flux Operator's `ExternalService` input provider as Flux calls it: the operator's
//! endpoint on the real API server and simulator, read by the Flux Operator's own client code
//! (`hack/gitops.sh`'s flux-contract: its `callExternalServiceProvider`, built from its Go
//! module) and by our own requests for the edges Flux does not show (its errors carry only the
//! HTTP status).

use std::collections::BTreeSet;

use crate::{
    generator::{TOKEN, offered, serve},
    support::{
        PATIENCE,
        env::*,
        eventually,
        operator::{await_object, subscription, sync_request},
    },
};
use bitbucket_operator::api::Subscription;
use bitbucket_sim::{CloudRepositoryChange, Fixture};
use kube::api::PatchParams;
use serde_json::Value;

/// What Flux's own client makes of `url` with `token` and `limit` (`spec.filter.limit`; Flux's
/// default when `None`): its inputs, or its error.
fn flux(url: &str, token: &str, limit: Option<usize>) -> Result<Vec<Value>, String> {
    let output = std::process::Command::new(crate::support::gitops_tool("flux-contract"))
        .args(["-test.run", "TestBitbucketOperatorContract"])
        .env("BBO_FLUX_URL", url)
        .env("BBO_FLUX_TOKEN", token)
        .env(
            "BBO_FLUX_LIMIT",
            limit.map(|l| l.to_string()).unwrap_or_default(),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BBO-RESULT "))
        .unwrap_or_else(|| panic!("no result from Flux's client: {stdout}"));
    let result: Value = serde_json::from_str(line).unwrap();
    match result["error"].as_str() {
        Some(error) => Err(error.to_owned()),
        None => Ok(result["inputs"].as_array().cloned().unwrap_or_default()),
    }
}

fn field<'a>(input: &'a Value, name: &str) -> &'a str {
    input[name].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flux_operators_own_client_reads_the_inputs_by_stable_ids() {
    let env = Env::start("flux").await;
    env.ready_cloud_integration().await;
    env.create(&offered(subscription("ci", "acme", Some("acme"), &[])))
        .await;
    await_object(&env.api(), "ci", "ci to sync", is_synced).await;
    let base = serve(&env).await;
    let url = format!("{base}/api/v1/inputs/{}/ci", env.ns.name);

    let inputs = eventually("Flux to read the inputs", PATIENCE, || async {
        flux(&url, TOKEN, None).ok()
    })
    .await;
    assert_eq!(inputs.len(), 10, "{inputs:#?}");
    let ids: BTreeSet<&str> = inputs.iter().map(|i| field(i, "id")).collect();
    assert_eq!(ids.len(), 10, "unique ids");
    assert!(
        ids.iter().all(|id| id.starts_with('{')),
        "Cloud UUIDs: {ids:?}"
    );
    let docs = inputs.iter().find(|i| field(i, "slug") == "docs").unwrap();
    assert_eq!(field(docs, "fullName"), "acme/docs");
    assert_eq!(field(docs, "subscription"), "ci");
    assert_eq!(field(docs, "integration"), "acme");
    let names: Vec<&str> = inputs.iter().map(|i| field(i, "fullName")).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(
        names, sorted,
        "a stable order: Flux keeps the first `limit`"
    );

    // Filters in the URL; Flux's own limit on top.
    let web = flux(&format!("{url}?project=WEB"), TOKEN, None).unwrap();
    let slugs: Vec<&str> = web.iter().map(|i| field(i, "slug")).collect();
    assert_eq!(slugs, ["docs", "marketing-site", "web-app"]);
    let first = flux(&format!("{url}?match=*-*&limit=2"), TOKEN, None).unwrap();
    assert_eq!(first.len(), 2);
    assert_eq!(flux(&url, TOKEN, Some(3)).unwrap().len(), 3);

    // deploy/flux's example: its query is one the endpoint takes, and the inputs carry what
    // its ResourceSet's template reads.
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/flux/inputprovider.yaml"),
    )
    .unwrap();
    let documents = crate::support::yaml_documents(&example);
    let provider_url = documents[0]["spec"]["url"].as_str().unwrap();
    let (path, query) = provider_url.split_once('?').unwrap();
    assert!(path.contains("/api/v1/inputs/team-a/acme-ci"), "{path}");
    let from_example = flux(&format!("{url}?{query}"), TOKEN, None).unwrap();
    assert!(!from_example.is_empty());
    let template = documents[1]["spec"]["resources"].to_string();
    for used in ["inputs.slug", "inputs.cloneUrlHttps", "inputs.mainBranch"] {
        assert!(template.contains(used), "{template}");
        let name = used.trim_start_matches("inputs.");
        assert!(from_example.iter().all(|i| i.get(name).is_some()), "{name}");
    }

    // A wrong token, a typo in the URL: Flux keeps its inputs and says the status.
    assert_eq!(
        flux(&url, "FAKE-wrong-token", None).unwrap_err(),
        format!("external service '{url}' returned HTTP 403")
    );
    let typo = format!("{url}?projects=WEB");
    assert_eq!(
        flux(&typo, TOKEN, None).unwrap_err(),
        format!("external service '{typo}' returned HTTP 400")
    );

    // A rename keeps the id: the input of the renamed repository is the same input.
    let id = field(docs, "id").to_owned();
    let rename = CloudRepositoryChange {
        slug: Some("handbook".into()),
        ..CloudRepositoryChange::default()
    };
    env.sim
        .control()
        .change_cloud_repository("acme", "docs", rename)
        .unwrap();
    env.api::<Subscription>()
        .patch("ci", &PatchParams::default(), &sync_request("renamed"))
        .await
        .unwrap();
    let renamed = eventually("the renamed repository to be served", PATIENCE, || async {
        let inputs = flux(&url, TOKEN, None).ok()?;
        inputs.into_iter().find(|i| field(i, "slug") == "handbook")
    })
    .await;
    assert_eq!(field(&renamed, "id"), id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_larger_than_flux_reads_is_refused_whole_with_the_filter_to_add() {
    let env = Env::start_with("flux-big", Fixture::demo_with_generated(10_000), |_| {}).await;
    env.ready_cloud_integration().await;
    env.create(&offered(subscription("big", "acme", Some("acme"), &[])))
        .await;
    await_object(&env.api(), "big", "big to sync", is_synced).await;
    let base = serve(&env).await;
    let url = format!("{base}/api/v1/inputs/{}/big", env.ns.name);
    let refused = eventually("the list to be served", PATIENCE, || async {
        let refused = flux(&url, TOKEN, Some(10_000)).unwrap_err();
        (!refused.ends_with("HTTP 503")).then_some(refused)
    })
    .await;
    assert_eq!(
        refused,
        format!("external service '{url}' returned HTTP 413"),
        "refused whole, not a body Flux would cut"
    );
    // What the operator says (Flux shows only the status; the body says what to do).
    let answer: Value = crate::support::browser()
        .get(&url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let message = answer["message"].as_str().unwrap();
    assert!(
        message.contains("take more than the 900 KiB Flux reads")
            && message.contains("?project=KEY, ?match=GLOB (on the slug) or ?limit=N"),
        "{message}"
    );
    // Narrowed, Flux reads it.
    let narrowed = flux(
        &format!("{url}?match=gen-0*&limit=1000"),
        TOKEN,
        Some(10_000),
    )
    .unwrap();
    assert_eq!(narrowed.len(), 1000);
}
