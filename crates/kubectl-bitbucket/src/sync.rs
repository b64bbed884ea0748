//! `sync` (the Sync button: set the annotation, wait for the status to echo it) and `delete`
//! (or the Subscriptions that still use the integration).

use std::{collections::BTreeSet, fmt::Write as _, time::Duration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};

use super::{Outcome, terminal::Terminal};
use crate::api::{
    BitbucketIntegration, SYNC_REQUESTED_AT_ANNOTATION, Subscription,
    conditions::{READY, RECONCILING, reasons},
};

/// How often a wait reads the object again.
pub const POLL: Duration = Duration::from_millis(250);

/// The kinds `sync` presses the button of.
pub trait Syncable:
    kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
    const KIND: &'static str;
    /// The sync request the status says was handled last, and its conditions.
    fn handled(&self) -> (Option<&str>, &[Condition]);
    /// What the user reads once the request is answered, knowing what the object said before.
    fn report(&self, before: &Self) -> String;

    /// The request this object answered last, and its Ready condition.
    fn answer(&self) -> (Option<String>, Option<Condition>) {
        let (handled, conditions) = self.handled();
        let ready = conditions.iter().find(|c| c.type_ == READY).cloned();
        (handled.map(str::to_owned), ready)
    }
}

impl Syncable for Subscription {
    const KIND: &'static str = "Subscription";

    fn handled(&self) -> (Option<&str>, &[Condition]) {
        self.status.as_ref().map_or((None, &[]), |s| {
            (s.last_handled_sync_request.as_deref(), &s.conditions)
        })
    }

    fn report(&self, before: &Self) -> String {
        let names = |s: &Self| -> BTreeSet<String> {
            s.status.as_ref().map_or_else(BTreeSet::new, |s| {
                s.repositories.iter().map(|r| r.full_name.clone()).collect()
            })
        };
        let (now, then) = (names(self), names(before));
        let count = self.status.as_ref().and_then(|s| s.repository_count);
        let mut text = format!("{} repositories", count.unwrap_or_default());
        let added: Vec<_> = now.difference(&then).collect();
        let removed: Vec<_> = then.difference(&now).collect();
        if added.is_empty() && removed.is_empty() {
            text.push_str(", no change");
        }
        for (sign, names) in [('+', added), ('-', removed)] {
            for name in names {
                let _ = write!(text, "\n  {sign} {name}");
            }
        }
        text
    }
}

impl Syncable for BitbucketIntegration {
    const KIND: &'static str = "BitbucketIntegration";

    fn handled(&self) -> (Option<&str>, &[Condition]) {
        self.status.as_ref().map_or((None, &[]), |s| {
            (s.last_handled_sync_request.as_deref(), &s.conditions)
        })
    }

    fn report(&self, _before: &Self) -> String {
        let account = self
            .status
            .as_ref()
            .and_then(|s| s.account.clone())
            .and_then(|a| a.username.or(a.display_name))
            .unwrap_or_else(|| "an access token".into());
        format!("authenticated as {account}")
    }
}

/// Sets the sync annotation to a new value and waits until the object's status echoes it.
pub async fn sync<K: Syncable>(
    client: &Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<Outcome> {
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let before = api.get(name).await?;
    let request = jiff::Timestamp::now().to_string();
    let patch = serde_json::json!({"metadata": {"annotations": {
        SYNC_REQUESTED_AT_ANNOTATION: request
    }}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let mut progress = Terminal::detect().progress(&format!("Syncing {} {name}", K::KIND));
    let answered = async {
        loop {
            let object = api.get(name).await?;
            let (handled, ready) = object.answer();
            if handled.as_deref() == Some(request.as_str()) {
                return anyhow::Ok((object, ready));
            }
            // Until the echo, Ready still describes the last sync: show the work in progress.
            let (_, conditions) = object.handled();
            let working = conditions
                .iter()
                .find(|c| c.type_ == RECONCILING && c.status == "True");
            progress.show(
                &working.map_or("asked; waiting for the operator".to_owned(), |c| {
                    format!("{} {}", c.reason, c.message)
                }),
            );
            tokio::time::sleep(POLL).await;
        }
    };
    let answer = tokio::time::timeout(timeout, answered).await;
    progress.done();
    let Ok(answer) = answer else {
        return Ok(Outcome::failed(format!(
            "{} {name}: no answer within {}s (is the operator running?)\n",
            K::KIND,
            timeout.as_secs()
        )));
    };
    let (object, ready) = answer?;
    Ok(match ready {
        Some(ready) if ready.reason == reasons::SUSPENDED => Outcome::failed(format!(
            "{} {name} is suspended: {} (set spec.suspend to false to sync)\n",
            K::KIND,
            ready.message
        )),
        Some(ready) if ready.status == "True" => Outcome::ok(format!(
            "{} {name} synced: {}\n",
            K::KIND,
            object.report(&before)
        )),
        Some(ready) => Outcome::failed(format!(
            "{} {name} did not sync: {} ({})\n",
            K::KIND,
            ready.message,
            ready.reason
        )),
        None => Outcome::failed(format!("{} {name} has no Ready condition\n", K::KIND)),
    })
}

/// The Subscriptions that use integration `name`, by name.
pub async fn users_of(
    client: &Client,
    namespace: &str,
    name: &str,
) -> anyhow::Result<Vec<Subscription>> {
    let subscriptions: Api<Subscription> = Api::namespaced(client.clone(), namespace);
    let mut users = subscriptions
        .list(&ListParams::default().fields(&format!("spec.integrationRef.name={name}")))
        .await?
        .items;
    users.sort_by_key(ResourceExt::name_any);
    Ok(users)
}

/// Deletes the integration; when the API server refuses because Subscriptions use it, lists
/// every one of them (the refusal names the ten status keeps and counts the rest).
pub async fn delete(client: &Client, namespace: &str, name: &str) -> anyhow::Result<Outcome> {
    let integrations: Api<BitbucketIntegration> = Api::namespaced(client.clone(), namespace);
    match integrations.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(Outcome::ok(format!(
            "BitbucketIntegration {name} deleted\n"
        ))),
        Err(kube::Error::Api(status)) if status.code == 403 => {
            let refusal = status
                .message
                .rsplit_once("denied request: ")
                .map_or(status.message.as_str(), |(_, m)| m)
                .to_owned();
            let mut text = format!("{refusal}\n");
            for user in users_of(client, namespace, name).await? {
                let _ = writeln!(text, "  subscription/{}", user.name_any());
            }
            Ok(Outcome::failed(text))
        }
        Err(error) => Err(error.into()),
    }
}
