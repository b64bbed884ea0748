//! A credential's declared expiry (`scm.shippable.io/expires-at` on its Secret), on the real API
//! server: shown in status and the metric, warned once within 7 days with `CredentialExpiring`,
//! forgotten when renewed, and a refusal after the date says `CredentialExpired`.

use crate::support::{
    env::*,
    operator::{await_object, condition},
};
use bitbucket_operator::api::{BitbucketIntegration, EXPIRES_AT_ANNOTATION};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use serde_json::json;

fn expiring(integration: &BitbucketIntegration) -> Option<(String, String, String)> {
    let status = integration.status.as_ref()?;
    let expiring = condition(&status.conditions, "CredentialExpiring")?;
    Some((
        expiring.status.clone(),
        expiring.reason.clone(),
        expiring.message.clone(),
    ))
}

async fn declare(env: &Env, expires_at: &str) {
    let patch = json!({"metadata": {"annotations": {EXPIRES_AT_ANNOTATION: expires_at}}});
    env.api::<Secret>()
        .patch("acme-token", &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

fn in_days(days: i64) -> String {
    let at = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * days);
    jiff::Timestamp::from_second(at.as_second())
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_expiry_is_shown_warned_once_forgotten_when_renewed_and_named_when_refused() {
    let env = Env::start("expiry").await;
    env.ready_cloud_integration().await;

    // Three days left: shown, the condition with the date, one Warning Event.
    let soon = in_days(3);
    declare(&env, &soon).await;
    let date = soon.clone();
    let acme = await_object(
        &env.api(),
        "acme",
        "the declared expiry",
        move |i: &BitbucketIntegration| {
            expiring(i)
                .is_some_and(|(status, _, message)| status == "True" && message.contains(&date))
        },
    )
    .await;
    let status = acme.status.clone().unwrap();
    let credential = status.credential.unwrap();
    assert_eq!(credential.expires_at.as_deref(), Some(soon.as_str()));
    assert_eq!(credential.warned_days, Some(7));
    assert_eq!(
        condition(&status.conditions, "Ready").unwrap().status,
        "True",
        "Ready until Bitbucket refuses"
    );
    let (_, reason, message) = expiring(&acme).unwrap();
    assert_eq!(reason, "CredentialExpiring");
    assert!(
        message.contains("in 3 days") && message.contains("acme-token"),
        "{message}"
    );
    let events = env.wait_for_events(&[("acme", "CredentialExpiring")]).await;
    let warnings = |events: &[k8s_openapi::api::events::v1::Event]| {
        (events.iter())
            .filter(|e| e.reason.as_deref() == Some("CredentialExpiring"))
            .map(|e| e.series.as_ref().map_or(1, |s| s.count))
            .sum::<i32>()
    };
    assert_eq!(warnings(&events), 1);
    let metric = format!(
        "bitbucket_operator_credential_expiry_timestamp_seconds{{namespace=\"{}\",integration=\"acme\"}} {}",
        env.ns.name,
        soon.parse::<jiff::Timestamp>().unwrap().as_second()
    );
    assert!(env.operator().metrics_text().contains(&metric));
    // kubectl bitbucket list shows the day, and how soon.
    let listed = crate::plugin::plugin(&env, &["list"]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(
        listed.contains(&format!("{} (3d)", &soon[..10]))
            || listed.contains(&format!("{} (2d)", &soon[..10])),
        "{listed}"
    );

    let shown = crate::plugin::plugin(&env, &["get", "acme"]);
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("Expires:") && l.contains(&soon[..10])),
        "{shown}"
    );

    // Renewed for a year: no condition, no warning due.
    let later = in_days(365);
    declare(&env, &later).await;
    let renewed = await_object(
        &env.api(),
        "acme",
        "the renewed expiry",
        |i: &BitbucketIntegration| {
            expiring(i).is_none()
                && (i.status.as_ref()).is_some_and(|s| {
                    s.credential
                        .as_ref()
                        .is_some_and(|c| c.warned_days.is_none())
                })
        },
    )
    .await;
    assert_eq!(
        renewed
            .status
            .unwrap()
            .credential
            .unwrap()
            .expires_at
            .as_deref(),
        Some(later.as_str())
    );
    assert_eq!(warnings(&env.events().await), 1, "no second warning");

    // Past its date and refused by Bitbucket: CredentialExpired, naming the date.
    let past = in_days(-1);
    env.sim.control().revoke_credential("jdoe-api-token");
    declare(&env, &past).await;
    let expired = await_object(
        &env.api(),
        "acme",
        "CredentialExpired",
        |i: &BitbucketIntegration| {
            (i.status.as_ref())
                .and_then(|s| condition(&s.conditions, "Ready"))
                .is_some_and(|r| r.reason == "CredentialExpired")
        },
    )
    .await;
    let ready = condition(&expired.status.as_ref().unwrap().conditions, "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready.status, "False");
    assert!(ready.message.contains(&past), "{}", ready.message);
}
