//! Deleting an integration: the finalizer stays while any Subscription — terminating ones
//! included — references it. The check lists Subscriptions from the API server (a quorum read
//! with a server-side field selector), never from a cache, because releasing the finalizer by
//! mistake cannot be undone. Does API-server I/O.

use kube::{
    Api, ResourceExt,
    api::ListParams,
    runtime::{controller::Action, events::EventType},
};

use super::Error;
use crate::{
    api::{
        BitbucketIntegration, Subscription,
        conditions::{DELETION_BLOCKED, reasons},
    },
    controller::{
        Context,
        finish::{Announcement, Draft, finish},
    },
    status::conditions::{self, Desired, Status},
};

/// How many names a message lists before "and N more".
const NAMED: usize = 2;

/// Allows the deletion (`Ok`) when no Subscription uses the integration; otherwise says who
/// does, in status and an Event, and returns [`Error::DeletionBlocked`] (the finalizer stays).
pub(super) async fn cleanup(
    integration: &BitbucketIntegration,
    context: &Context,
) -> Result<Action, Error> {
    let shared = &context.shared;
    let name = integration.name_any();
    let namespace = integration.namespace().unwrap_or_default();
    let subscriptions: Api<Subscription> = Api::namespaced(shared.kube.clone(), &namespace);
    let users = subscriptions
        .list(&ListParams::default().fields(&format!("spec.integrationRef.name={name}")))
        .await?;
    let mut names: Vec<String> = users.items.iter().map(ResourceExt::name_any).collect();
    names.sort();

    // What the integration leaves in memory goes when the watch reports it deleted.
    let draft = Draft::begin(&shared.memory, integration);
    let was_blocked = conditions::is_true(&draft.shown.conditions, DELETION_BLOCKED);
    if names.is_empty() {
        if was_blocked {
            shared.metrics.blocked_deletions.dec();
            let released = Announcement {
                type_: EventType::Normal,
                reason: reasons::DELETION_RELEASED.to_owned(),
                action: "Delete",
                note: "no Subscription uses the integration any more; deleting it".into(),
            };
            shared.announce(integration, released).await;
        }
        return Ok(Action::await_change());
    }

    let message = in_use_message(&names);
    let mut status = draft.shown.clone();
    status.subscriptions = Some(i32::try_from(names.len()).unwrap_or(i32::MAX));
    conditions::set(
        &mut status.conditions,
        Desired::new(
            DELETION_BLOCKED,
            Status::True,
            reasons::DELETION_BLOCKED,
            &message,
        ),
        integration.metadata.generation,
        &conditions::now(),
    );
    finish(shared, integration, &draft, &status).await?;
    if !was_blocked {
        shared.metrics.blocked_deletions.inc();
    }
    Err(Error::DeletionBlocked(message))
}

/// "in use by Subscriptions a, b and 3 more" (names sorted by the caller).
pub fn in_use_message(names: &[String]) -> String {
    let noun = if names.len() == 1 {
        "Subscription"
    } else {
        "Subscriptions"
    };
    let shown = names.iter().take(NAMED).cloned().collect::<Vec<_>>();
    let rest = names.len().saturating_sub(NAMED);
    let list = match (shown.as_slice(), rest) {
        ([only], 0) => only.clone(),
        ([a, b], 0) => format!("{a} and {b}"),
        (shown, rest) => format!("{} and {rest} more", shown.join(", ")),
    };
    format!("in use by {noun} {list}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_message_names_the_first_users_and_counts_the_rest() {
        assert_eq!(
            in_use_message(&names(&["api-ci"])),
            "in use by Subscription api-ci"
        );
        assert_eq!(
            in_use_message(&names(&["api-ci", "web-ci"])),
            "in use by Subscriptions api-ci and web-ci"
        );
        assert_eq!(
            in_use_message(&names(&["api-ci", "web-ci", "a", "b", "c"])),
            "in use by Subscriptions api-ci, web-ci and 3 more"
        );
    }
}
