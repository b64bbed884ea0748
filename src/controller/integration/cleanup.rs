//! Deleting an integration: the finalizer stays while any Subscription — terminating ones
//! included — references it. The check lists Subscriptions from the API server (a quorum read
//! with a server-side field selector), never from a cache, because releasing the finalizer by
//! mistake cannot be undone. Does API-server I/O.

use kube::{
    Api, ResourceExt,
    api::ListParams,
    runtime::{controller::Action, events::EventType},
};

use super::{Error, Users};
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
    let users = Users::of(users.items.iter().map(ResourceExt::name_any).collect());

    // What the integration leaves in memory goes when the watch reports it deleted.
    let draft = Draft::begin(&shared.memory, integration);
    let was_blocked = conditions::is_true(&draft.shown.conditions, DELETION_BLOCKED);
    if users.count == 0 {
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

    let message = users.message(&name);
    let mut status = draft.shown.clone();
    users.show(&mut status);
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
