//! Deleting an integration: the finalizer stays while any Subscription — terminating ones
//! included — references it. The check lists Subscriptions from the API server (a quorum read
//! with a server-side field selector), never from a cache, because releasing the finalizer by
//! mistake cannot be undone. It looks twice, [`SETTLE`] apart: a Subscription admitted just
//! before the API server's admission policy saw the integration being deleted is stored within
//! that time, and the second look finds it. Does API-server I/O.

use std::time::{Duration, Instant};

use kube::{Api, ResourceExt, api::ListParams, runtime::events::EventType};

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

/// How long no Subscription must have used an integration being deleted before its finalizer
/// goes: longer than a create takes from admission to storage.
pub(super) const SETTLE: Duration = Duration::from_secs(1);

/// What cleanup decided.
pub(super) enum Cleanup {
    /// Nobody uses the integration: release the finalizer.
    Release,
    /// Nobody uses it now; look again after this long before releasing.
    LookAgain(Duration),
}

/// Allows the deletion when no Subscription has used the integration for [`SETTLE`]; otherwise
/// says who does, in status and an Event, and returns [`Error::DeletionBlocked`] (the finalizer
/// stays).
pub(super) async fn cleanup(
    integration: &BitbucketIntegration,
    context: &Context,
) -> Result<Cleanup, Error> {
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
    let uid = crate::controller::finish::uid(integration);
    let unused_since = shared.memory.integration(&uid, |m| {
        if users.count == 0 {
            *m.unused_since.get_or_insert_with(Instant::now)
        } else {
            m.unused_since = None;
            Instant::now()
        }
    });
    if users.count == 0 {
        let waited = unused_since.elapsed();
        if waited < SETTLE {
            return Ok(Cleanup::LookAgain(SETTLE - waited));
        }
        shared.memory.deletion_blocked(&uid, false);
        if was_blocked {
            let released = Announcement {
                type_: EventType::Normal,
                reason: reasons::DELETION_RELEASED.to_owned(),
                action: "Delete",
                note: "no Subscription uses the integration any more; deleting it".into(),
            };
            shared.announce(integration, released).await;
        }
        return Ok(Cleanup::Release);
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
    shared.memory.deletion_blocked(&uid, true);
    Err(Error::DeletionBlocked(message))
}
