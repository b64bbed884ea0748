//! Publishes Events (`events.k8s.io/v1`) as kube's `Recorder` does: an Event repeated within
//! six minutes (same type, action, reason and object) becomes one Event whose series counts the
//! repeats. Kube's `Recorder` keeps each whole Event for those six minutes and scans them all on
//! every publish: 13.5 MiB and a scan of 7,000 at every Event when 6,000 objects start at once
//! (figure 7's heap profile). This keeps what a repeat needs: the Event's name and its count.
//! Does API-server I/O.

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    time::{Duration, Instant},
};

use jiff::Timestamp;
use k8s_openapi::{
    api::{core::v1::ObjectReference, events::v1::Event as KubeEvent},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
    runtime::events::{Event, EventType, Reporter},
};

/// How long a repeat joins the Event before it (kube's Recorder: six minutes).
const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// How often the Events past their window are forgotten.
const FORGET_EVERY: Duration = Duration::from_secs(30);

pub struct Events {
    client: kube::Client,
    reporter: Reporter,
    recent: std::sync::Mutex<Recent>,
}

#[derive(Default)]
struct Recent {
    /// By a hash of the type, action, reason and object.
    events: HashMap<u64, Published>,
    forgotten: Option<Instant>,
}

/// An Event published in the last [`SERIES_WINDOW`].
struct Published {
    name: String,
    count: i32,
    at: Instant,
}

impl Events {
    pub fn new(client: kube::Client, reporter: Reporter) -> Self {
        Self {
            client,
            reporter,
            recent: std::sync::Mutex::default(),
        }
    }

    /// Creates the Event about `regarding`, or counts it in the series of the same Event
    /// published within six minutes.
    pub async fn publish(
        &self,
        event: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let namespace = regarding.namespace.as_deref().unwrap_or("default");
        let api: Api<KubeEvent> = Api::namespaced(self.client.clone(), namespace);
        let key = key(event, regarding);
        let repeat = self.repeat(key);
        let now = Timestamp::now();
        let name = match &repeat {
            Some((name, count)) => {
                let series = serde_json::json!({"series": {
                    "count": count,
                    "lastObservedTime": MicroTime(now),
                }});
                api.patch(name, &PatchParams::default(), &Patch::Merge(&series))
                    .await?;
                name.clone()
            }
            None => {
                let created = self.event(event, regarding, now);
                let name = created.metadata.name.clone().unwrap_or_default();
                api.create(&PostParams::default(), &created).await?;
                name
            }
        };
        let published = Published {
            name,
            count: repeat.map_or(1, |(_, count)| count),
            at: Instant::now(),
        };
        let mut recent = self.recent.lock().expect("Events lock");
        recent.events.insert(key, published);
        Ok(())
    }

    /// The name of the Event `key` repeats and the count it now has, if it was published
    /// within the window; forgets those past it now and then.
    fn repeat(&self, key: u64) -> Option<(String, i32)> {
        let mut recent = self.recent.lock().expect("Events lock");
        if recent
            .forgotten
            .is_none_or(|at| at.elapsed() >= FORGET_EVERY)
        {
            recent.events.retain(|_, p| p.at.elapsed() < SERIES_WINDOW);
            recent.events.shrink_to_fit();
            recent.forgotten = Some(Instant::now());
        }
        let published = recent.events.get(&key)?;
        (published.at.elapsed() < SERIES_WINDOW)
            .then(|| (published.name.clone(), published.count.saturating_add(1)))
    }

    /// A new Event, named as kube's Recorder names it (the object's name and the time).
    fn event(&self, event: &Event, regarding: &ObjectReference, now: Timestamp) -> KubeEvent {
        let controller = &self.reporter.controller;
        KubeEvent {
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: event.secondary.clone(),
            note: event.note.clone(),
            metadata: ObjectMeta {
                namespace: regarding.namespace.clone(),
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(controller),
                    now.as_nanosecond()
                )),
                ..ObjectMeta::default()
            },
            reporting_controller: Some(controller.clone()),
            reporting_instance: Some(
                (self.reporter.instance.clone()).unwrap_or_else(|| controller.clone()),
            ),
            type_: Some(
                match event.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .into(),
            ),
            ..KubeEvent::default()
        }
    }
}

/// What makes an Event a repeat of another, as kube's Recorder has it: its type, action and
/// reason, and the object it is about (the note may differ).
fn key(event: &Event, regarding: &ObjectReference) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    (event.type_ == EventType::Warning).hash(&mut hasher);
    event.action.hash(&mut hasher);
    event.reason.hash(&mut hasher);
    regarding.api_version.hash(&mut hasher);
    regarding.kind.hash(&mut hasher);
    regarding.namespace.hash(&mut hasher);
    regarding.name.hash(&mut hasher);
    regarding.uid.hash(&mut hasher);
    hasher.finish()
}
