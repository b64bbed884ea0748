//! The repositories webhook deliveries named, fetched one request each, and only their entries
//! written (the one slice holding each, and status): the least work a push, a settings change
//! or a rename asks for. What this replica cannot do exactly — its copy of the Subscription's
//! list is not the complete one its status names, or a fetch fails — is left to a full
//! listing, with its backoff. Does network I/O (Bitbucket, the API server).

use kube::ResourceExt;

use super::{
    Context, Found, filter, integration_summary, publish_entries,
    report::{self, SyncOutcome},
};
use crate::{
    api::{Repository, Subscription},
    catalog::Served,
    controller::{finish, memory::Told},
};

/// Fetches the repositories in `told` and writes their entries into the Subscription's list;
/// `None` when a full listing must answer them instead.
pub async fn told(
    context: &Context,
    subscription: &Subscription,
    found: &Found,
    told: &[Told],
) -> Option<SyncOutcome> {
    let shared = &context.shared;
    let namespace = subscription.namespace()?;
    let Ok(Served::Complete(list)) = shared.catalog.list(&namespace, &subscription.name_any())
    else {
        return None;
    };
    let mut fetched = Vec::with_capacity(told.len());
    for told in told {
        match found
            .resolved
            .client
            .repository(&told.changed.full_name)
            .await
        {
            Ok(repository) => fetched.extend(repository.map(report::to_status)),
            Err(error) => {
                tracing::debug!(%error, "fetching a repository a webhook named: listing instead");
                return None;
            }
        }
    }
    let named = |entry: &Repository| told.iter().any(|t| names(t, entry));
    let kept = list.iter().filter(|r| !named(r));
    let entries = report::in_order(
        kept.chain(fetched.iter().filter(|r| fits(subscription, r)))
            .collect(),
    );
    // The cached listing shows these repositories as they were: the next sync lists afresh.
    (shared.memory.listings).forget(&finish::uid(&*found.integration), &found.scope);
    let integration = integration_summary(found);
    let outcome = publish_entries(context, subscription, entries, integration).await;
    if matches!(outcome, SyncOutcome::Listed { .. }) {
        let answered = |t: &Told| {
            (told.iter()).any(|d| d.at == t.at && d.changed.full_name == t.changed.full_name)
        };
        shared.memory.subscription(&finish::uid(subscription), |m| {
            m.told.retain(|t| !answered(t))
        });
    }
    Some(outcome)
}

/// Whether `told` is about `entry`: by Bitbucket's id, or by its name now or before a rename.
fn names(told: &Told, entry: &Repository) -> bool {
    let changed = &told.changed;
    let same = |name: &str| name.eq_ignore_ascii_case(&entry.full_name);
    (changed.id.is_some() && changed.id == entry.id)
        || same(&changed.full_name)
        || changed.renamed_from.as_deref().is_some_and(same)
}

/// Whether a fetched repository belongs in the Subscription's list: its filters, and on
/// Cloud its projects (the listing filters those on Bitbucket's side).
fn fits(subscription: &Subscription, repository: &Repository) -> bool {
    let spec = &subscription.spec;
    let in_projects = spec.workspace.is_none()
        || spec.projects.is_empty()
        || (repository.project.as_deref())
            .is_some_and(|p| spec.projects.iter().any(|k| k.eq_ignore_ascii_case(p)));
    in_projects && filter::keeps(&spec.repositories, repository)
}
