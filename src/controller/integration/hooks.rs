//! Keeps an integration's hooks in Bitbucket (`spec.webhook.register`): one per Cloud workspace
//! or Data Center project its Subscriptions list, pointing at `--webhook-url` +
//! `/hooks/<namespace>/<integration>`, signed with the secret of `spec.webhook.secretRef`. A
//! hook deleted in Bitbucket is made again, one whose events or secret are not ours is updated,
//! one no longer wanted is removed, and all go with the integration. `status.webhooks` shows
//! each, and the condition `WebhooksRegistered` says how it went, without touching `Ready`.
//!
//! It runs when what the hooks should be changed (the Subscriptions' workspaces or projects,
//! the secret, the credential, the URL), on a sync request (`scm.shippable.io/sync-requested-at`
//! on the integration), and once every validation interval after a good run
//! (that is when a hook deleted by hand comes back). After a refusal (a missing scope, not a
//! workspace owner) it does not run again until one of those changes: never a loop of refused
//! calls. Does API-server and Bitbucket I/O.

use std::{
    collections::BTreeSet,
    hash::{Hash, Hasher},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use secrecy::SecretString;

use crate::{
    api::{
        BitbucketIntegration, BitbucketIntegrationStatus, RegisteredWebhook, Subscription,
        WebhookState,
        conditions::{WEBHOOKS_REGISTERED, reasons},
    },
    bitbucket::{self, Hook, HookSpec, Server},
    controller::{Context, credentials::Resolved, finish, memory::HooksRun},
    status::conditions::{self, Desired, Status},
};

/// What workspace hooks are asked to carry on Cloud: pushes and settings (one repository is
/// fetched) and the changes to which repositories exist (a re-list).
pub const CLOUD_EVENTS: [&str; 5] = [
    "repo:push",
    "repo:updated",
    "repo:created",
    "repo:deleted",
    "repo:transfer",
];
/// What project hooks carry on Data Center (it has no event for a new or deleted repository).
pub const DATA_CENTER_EVENTS: [&str; 2] = ["repo:refs_changed", "repo:modified"];

/// What a run decided for the status.
pub(super) struct HookRun {
    pub webhooks: Vec<RegisteredWebhook>,
    /// `None`: no condition (registration is off).
    pub condition: Option<Desired>,
}

impl HookRun {
    pub fn show(self, status: &mut BitbucketIntegrationStatus, generation: Option<i64>) {
        status.webhooks = self.webhooks;
        match self.condition {
            Some(desired) => conditions::set(
                &mut status.conditions,
                desired,
                generation,
                &conditions::now(),
            ),
            None => conditions::remove(&mut status.conditions, WEBHOOKS_REGISTERED),
        }
    }
}

/// Where the hooks should be, from the Subscriptions that use the integration.
#[derive(Debug, Default, PartialEq, Eq)]
struct Wanted {
    owners: BTreeSet<String>,
    /// Data Center Subscriptions that list every project: no project hook reaches them all.
    unlisted: Vec<String>,
}

fn wanted(subscriptions: &[std::sync::Arc<Subscription>], cloud: bool) -> Wanted {
    let mut wanted = Wanted::default();
    for subscription in subscriptions {
        match (&subscription.spec.workspace, cloud) {
            (Some(workspace), true) => {
                wanted.owners.insert(workspace.clone());
            }
            (_, false) if subscription.spec.projects.is_empty() => {
                wanted.unlisted.push(subscription.name_any());
            }
            (_, false) => wanted
                .owners
                .extend(subscription.spec.projects.iter().cloned()),
            (None, true) => {}
        }
    }
    wanted
}

/// Brings the hooks in line when due; `None` when nothing is due (the status stays).
pub(super) async fn keep(
    context: &Context,
    integration: &BitbucketIntegration,
    resolved: &Resolved,
    shown: &BitbucketIntegrationStatus,
    interval: Duration,
) -> Option<HookRun> {
    let client = &resolved.client;
    let register = integration
        .spec
        .webhook
        .as_ref()
        .is_some_and(|w| w.register);
    let shared = &context.shared;
    if !register {
        if shown.webhooks.is_empty() && !has_condition(shown) {
            return None;
        }
        remove(client, &shown.webhooks).await;
        let uid = finish::uid(integration);
        shared.memory.integration(&uid, |m| m.hooks = None);
        return Some(HookRun {
            webhooks: Vec::new(),
            condition: None,
        });
    }
    let Some(url) = hook_url(shared.settings.webhook_url.as_ref(), integration) else {
        return Some(failed(shown, reasons::WEBHOOK_URL_NOT_SET,
            "spec.webhook.register is set, but the operator was not given --webhook-url (the address Bitbucket reaches its receiver at)".into()));
    };
    let secret = match secret(context, integration).await {
        Ok(secret) => secret,
        Err(message) => return Some(failed(shown, reasons::WEBHOOK_FAILED, message)),
    };
    let cloud = matches!(client.server(), Server::Cloud { .. });
    // Before the Subscriptions are listed every hook would look unwanted: wait for them.
    let wanted = wanted(&super::subscriptions_of(context, integration)?, cloud);
    // A sync request on the integration looks again too (a hook deleted by hand comes back).
    let requested = crate::controller::sync_request(integration);
    let key = key(
        &url,
        &wanted,
        &secret,
        &resolved.fingerprint,
        requested.as_deref(),
    );
    let uid = finish::uid(integration);
    let last = shared.memory.integration(&uid, |m| m.hooks.clone());
    if !due(last.as_ref(), key, interval) {
        return None;
    }
    let secret_changed = last.is_none_or(|l| l.secret != digest(&secret));
    let run = register_all(client, &url, &wanted, &secret, secret_changed, shown).await;
    let refused = run.condition.as_ref().is_some_and(|c| {
        [
            reasons::WEBHOOK_SCOPE_MISSING,
            reasons::WEBHOOK_NOT_PERMITTED,
        ]
        .contains(&c.reason)
    });
    let remembered = HooksRun {
        key,
        at: Instant::now(),
        refused,
        secret: digest(&secret),
    };
    shared
        .memory
        .integration(&uid, |m| m.hooks = Some(remembered));
    Some(run)
}

fn has_condition(shown: &BitbucketIntegrationStatus) -> bool {
    conditions::get(&shown.conditions, WEBHOOKS_REGISTERED).is_some()
}

/// Whether a run is due: something changed since the last one, or the last good one is an
/// interval old.
fn due(last: Option<&HooksRun>, key: u64, interval: Duration) -> bool {
    match last {
        None => true,
        Some(last) if last.key != key => true,
        Some(last) => !last.refused && last.at.elapsed() >= interval,
    }
}

/// The URL Bitbucket delivers this integration's events to.
pub fn hook_url(base: Option<&url::Url>, integration: &BitbucketIntegration) -> Option<String> {
    let base = base?.as_str().trim_end_matches('/');
    let namespace = integration.namespace().unwrap_or_default();
    Some(format!(
        "{base}/hooks/{namespace}/{}",
        integration.name_any()
    ))
}

/// The hook secret, from the Secret `spec.webhook.secretRef` names.
async fn secret(
    context: &Context,
    integration: &BitbucketIntegration,
) -> Result<SecretString, String> {
    let reference = &integration
        .spec
        .webhook
        .as_ref()
        .expect("register implies a webhook")
        .secret_ref;
    let namespace = integration.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(context.shared.kube.clone(), &namespace);
    let found = secrets
        .get_opt(&reference.name)
        .await
        .map_err(|e| format!("reading the webhook Secret {}: {e}", reference.name))?;
    let secret =
        found.ok_or_else(|| format!("the webhook Secret {} does not exist", reference.name))?;
    let value = crate::api::credential::value_of(&secret, &reference.key)
        .and_then(|v| String::from_utf8(v).ok())
        .filter(|v| !v.is_empty());
    value.map(SecretString::from).ok_or_else(|| {
        format!(
            "the webhook Secret {} has no key {} (or it is empty or not UTF-8)",
            reference.name, reference.key
        )
    })
}

fn digest(secret: &SecretString) -> [u8; 32] {
    use secrecy::ExposeSecret;
    use sha2::Digest;
    sha2::Sha256::digest(secret.expose_secret().as_bytes()).into()
}

fn key(
    url: &str,
    wanted: &Wanted,
    secret: &SecretString,
    fingerprint: &str,
    requested: Option<&str>,
) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (url, &wanted.owners, digest(secret), fingerprint, requested).hash(&mut hasher);
    hasher.finish()
}

/// The status entries kept, with `reason` and `message` in a False condition.
fn failed(shown: &BitbucketIntegrationStatus, reason: &'static str, message: String) -> HookRun {
    HookRun {
        webhooks: shown.webhooks.clone(),
        condition: Some(Desired::new(
            WEBHOOKS_REGISTERED,
            Status::False,
            reason,
            message,
        )),
    }
}

/// Makes each wanted hook as it should be and removes those no longer wanted.
async fn register_all(
    client: &bitbucket::Client,
    url: &str,
    wanted: &Wanted,
    secret: &SecretString,
    secret_changed: bool,
    shown: &BitbucketIntegrationStatus,
) -> HookRun {
    let cloud = matches!(client.server(), Server::Cloud { .. });
    let (events, not_offered) = events(client, cloud).await;
    let spec = HookSpec {
        url,
        name: "bitbucket-operator",
        events: &events,
        secret,
    };
    let mut webhooks = Vec::new();
    let mut first_failure = None;
    for owner in &wanted.owners {
        match one(client, owner, &spec, secret_changed).await {
            Ok(hook) => webhooks.push(RegisteredWebhook {
                owner: owner.clone(),
                id: Some(hook.id),
                state: WebhookState::Registered,
                events: hook.events,
                message: None,
            }),
            Err(error) => {
                let message = format!(
                    "{} {owner}: {error}",
                    if cloud { "workspace" } else { "project" }
                );
                first_failure.get_or_insert((failure_reason(&error), message.clone()));
                webhooks.push(RegisteredWebhook {
                    owner: owner.clone(),
                    id: shown
                        .webhooks
                        .iter()
                        .find(|w| w.owner == *owner)
                        .and_then(|w| w.id.clone()),
                    state: WebhookState::Failed,
                    events: Vec::new(),
                    message: Some(crate::api::text::for_the_api(&message, 1024).into_owned()),
                });
            }
        }
    }
    let gone = shown
        .webhooks
        .iter()
        .filter(|w| !wanted.owners.contains(&w.owner));
    remove(client, &gone.cloned().collect::<Vec<_>>()).await;
    let condition = match first_failure {
        Some((reason, message)) => {
            Desired::new(WEBHOOKS_REGISTERED, Status::False, reason, message)
        }
        None => Desired::new(
            WEBHOOKS_REGISTERED,
            Status::True,
            reasons::WEBHOOKS_REGISTERED,
            registered_message(&webhooks, &not_offered, &wanted.unlisted),
        ),
    };
    HookRun {
        webhooks,
        condition: Some(condition),
    }
}

/// The events to ask for, and those Bitbucket's workspace hooks do not carry (Cloud lists what
/// they may carry; if it cannot be read, all are asked for and Bitbucket says).
async fn events(client: &bitbucket::Client, cloud: bool) -> (Vec<String>, Vec<String>) {
    let wanted: Vec<String> = if cloud {
        CLOUD_EVENTS.to_vec()
    } else {
        DATA_CENTER_EVENTS.to_vec()
    }
    .into_iter()
    .map(String::from)
    .collect();
    if !cloud {
        return (wanted, Vec::new());
    }
    match client.workspace_hook_events().await {
        Ok(offered) => wanted.into_iter().partition(|e| offered.contains(e)),
        Err(_) => (wanted, Vec::new()),
    }
}

/// Makes the hook of `owner` as `spec` says: left alone when it already is, updated when its
/// events differ, it is inactive or the secret changed, made when missing.
async fn one(
    client: &bitbucket::Client,
    owner: &str,
    spec: &HookSpec<'_>,
    secret_changed: bool,
) -> Result<Hook, bitbucket::Error> {
    let ours = client
        .hooks(owner)
        .await?
        .into_iter()
        .find(|h| h.url == spec.url);
    let same = |hook: &Hook| {
        let (mut have, mut want) = (hook.events.clone(), spec.events.to_vec());
        have.sort();
        want.sort();
        hook.active && have == want && !secret_changed
    };
    match ours {
        Some(hook) if same(&hook) => Ok(hook),
        Some(hook) => client.update_hook(owner, &hook.id, spec).await,
        None => client.create_hook(owner, spec).await,
    }
}

fn failure_reason(error: &bitbucket::Error) -> &'static str {
    match error {
        bitbucket::Error::InsufficientScopes { .. } => reasons::WEBHOOK_SCOPE_MISSING,
        bitbucket::Error::Forbidden { .. } | bitbucket::Error::Unauthorized { .. } => {
            reasons::WEBHOOK_NOT_PERMITTED
        }
        _ => reasons::WEBHOOK_FAILED,
    }
}

fn registered_message(
    webhooks: &[RegisteredWebhook],
    not_offered: &[String],
    unlisted: &[String],
) -> String {
    let owners: Vec<&str> = webhooks.iter().map(|w| w.owner.as_str()).collect();
    let mut message = match owners.len() {
        0 => "no Subscription lists a workspace or project: no hook is needed".to_owned(),
        n => format!("{n} hook(s) in place: {}", owners.join(", ")),
    };
    if !not_offered.is_empty() {
        message.push_str(&format!(
            "; Bitbucket's workspace hooks do not carry {}: those changes show at each Subscription's sync interval",
            not_offered.join(", ")
        ));
    }
    if !unlisted.is_empty() {
        message.push_str(&format!(
            "; {} list(s) every project, which no project hook reaches: refreshed at the sync interval",
            unlisted.join(", ")
        ));
    }
    message
}

/// Removes the hooks an integration being deleted has in Bitbucket (those its status names),
/// best effort: a credential that no longer works must not keep the integration from going.
pub(super) async fn remove_with(context: &Context, integration: &BitbucketIntegration) {
    let hooks = (integration.status.as_ref()).map_or(&[][..], |s| s.webhooks.as_slice());
    if hooks.is_empty() {
        return;
    }
    let shared = &context.shared;
    let transport = shared.settings.transport.clone();
    match crate::controller::credentials::resolve(
        &shared.kube,
        &shared.memory,
        integration,
        transport,
    )
    .await
    {
        Ok(resolved) => remove(&resolved.client, hooks).await,
        Err(error) => {
            tracing::warn!(integration = %integration.name_any(), %error, "could not remove the integration's webhooks from Bitbucket")
        }
    }
}

/// Removes `hooks` from Bitbucket, best effort (a hook that cannot be removed is logged: it
/// only delivers to a receiver that answers 404).
pub(super) async fn remove(client: &bitbucket::Client, hooks: &[RegisteredWebhook]) {
    for hook in hooks {
        let Some(id) = &hook.id else { continue };
        if let Err(error) = client.delete_hook(&hook.owner, id).await {
            tracing::warn!(owner = %hook.owner, %error, "could not remove a webhook from Bitbucket");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SubscriptionSpec;

    fn subscription(
        name: &str,
        workspace: Option<&str>,
        projects: &[&str],
    ) -> std::sync::Arc<Subscription> {
        let spec: SubscriptionSpec = serde_json::from_value(serde_json::json!({
            "integrationRef": {"name": "acme"}, "workspace": workspace, "projects": projects,
        }))
        .unwrap();
        std::sync::Arc::new(Subscription::new(name, spec))
    }

    #[test]
    fn hooks_go_where_the_subscriptions_list() {
        let subs = [
            subscription("a", Some("acme"), &[]),
            subscription("b", Some("acme"), &["API"]),
            subscription("c", Some("other"), &[]),
        ];
        let cloud = wanted(&subs, true);
        assert_eq!(
            cloud.owners.into_iter().collect::<Vec<_>>(),
            ["acme", "other"]
        );
        let subs = [
            subscription("d", None, &["PLAT", "OPS"]),
            subscription("e", None, &[]),
        ];
        let dc = wanted(&subs, false);
        assert_eq!(dc.owners.into_iter().collect::<Vec<_>>(), ["OPS", "PLAT"]);
        assert_eq!(dc.unlisted, ["e"]);
    }

    #[test]
    fn a_refusal_is_not_asked_again_until_something_changes() {
        let run = |refused: bool, ago: Duration| HooksRun {
            key: 7,
            at: Instant::now() - ago,
            refused,
            secret: [0; 32],
        };
        let hour = Duration::from_secs(3600);
        assert!(due(None, 7, hour));
        assert!(!due(Some(&run(false, Duration::ZERO)), 7, hour));
        assert!(
            due(Some(&run(false, hour)), 7, hour),
            "a good run is checked every interval"
        );
        assert!(
            !due(Some(&run(true, 10 * hour)), 7, hour),
            "never again for the same wants"
        );
        assert!(
            due(Some(&run(true, Duration::ZERO)), 8, hour),
            "until they change"
        );
    }
}
