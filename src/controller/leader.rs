//! Leader election on a `coordination.k8s.io` Lease, so that of several replicas exactly one
//! reconciles while the others keep warm caches. The algorithm is client-go's: a candidate
//! takes the Lease when it is free or when its holder has not renewed it for
//! `duration` (measured on this replica's own clock, from when it last saw the record change,
//! so clocks need not agree); the leader renews it every `retry` and steps down on its own when
//! it could not renew for `renew_deadline` — shorter than `duration`, so its reconciles stop
//! before anyone else may take over. A leader that shuts down releases the Lease, and a
//! standby takes it at its next try. Writes use the Lease's resourceVersion, so two candidates
//! can never both win. Does API-server I/O.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use tokio::{sync::watch, time::Instant};

/// Where the Lease is and how it is held.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's name in the Lease (the pod name).
    pub identity: String,
    /// How long a Lease not renewed stays with its holder.
    pub duration: Duration,
    /// How long the leader keeps leading without a successful renewal.
    pub renew_deadline: Duration,
    /// How often candidates try, and the leader renews.
    pub retry: Duration,
    /// Where this replica receives webhooks (`POD_IP:port`), written into the Lease it holds
    /// so that a standby relays the deliveries it gets to the leader (see `crate::webhook`).
    pub address: Option<String>,
}

/// The annotation on the Lease naming where its holder receives webhooks.
pub const ADDRESS_ANNOTATION: &str = "scm.shippable.io/webhook-address";

impl LeaseSettings {
    /// client-go's defaults: 15 s, 10 s, 2 s.
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
            address: None,
        }
    }
}

/// A running election: whether this replica leads, as it changes.
pub struct Election {
    leading: watch::Receiver<bool>,
    leader_address: watch::Receiver<Option<String>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Election {
    /// Starts campaigning in the background.
    pub fn start(client: kube::Client, settings: LeaseSettings) -> Self {
        let (tell, leading) = watch::channel(false);
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let candidate = Candidate::new(client, settings);
        let leader_address = candidate.leader_address.subscribe();
        let task = tokio::spawn(campaign(candidate, tell, stopped));
        Self {
            leading,
            leader_address,
            stop: Some(stop),
            task,
        }
    }

    /// Whether this replica leads, and its changes.
    pub fn leading(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }

    /// Where the Lease's holder receives webhooks, as its Lease says (when it says).
    pub fn leader_address(&self) -> watch::Receiver<Option<String>> {
        self.leader_address.clone()
    }

    /// Stops campaigning and, when leading, releases the Lease so that a standby takes over at
    /// once. Call it after the reconciles have stopped.
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Election {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn campaign(
    mut candidate: Candidate,
    tell: watch::Sender<bool>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let retry = candidate.settings.retry;
    loop {
        let leading = candidate.try_acquire_or_renew().await;
        if *tell.borrow() != leading {
            tracing::info!(
                identity = %candidate.settings.identity,
                lease = %candidate.settings.name,
                leading,
                "leadership changed"
            );
            let _ = tell.send(leading);
        }
        tokio::select! {
            _ = &mut stopped => break,
            () = tokio::time::sleep(retry) => {}
        }
    }
    let _ = tell.send(false);
    candidate.release().await;
}

/// One replica's view of the Lease.
struct Candidate {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// The holder and renew time last seen, and when (on our clock) they were first seen.
    observed: Option<(Option<String>, Option<MicroTime>, Instant)>,
    /// When this replica last renewed successfully, while it leads.
    renewed: Option<Instant>,
    /// Where the holder receives webhooks, as last read from the Lease.
    leader_address: watch::Sender<Option<String>>,
}

impl Candidate {
    fn new(client: kube::Client, settings: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: None,
            renewed: None,
            leader_address: watch::Sender::new(None),
        }
    }

    /// One round: takes or renews the Lease when it may. Returns whether this replica leads
    /// now; a leader that failed to renew keeps leading until `renew_deadline` has passed.
    async fn try_acquire_or_renew(&mut self) -> bool {
        let now = Instant::now();
        match self.round(now).await {
            Ok(leading) => {
                self.renewed = leading.then_some(now);
                leading
            }
            Err(error) => {
                let within = self
                    .renewed
                    .is_some_and(|at| now.duration_since(at) < self.settings.renew_deadline);
                tracing::warn!(error = %error, still_leading = within, "could not renew the lease");
                if !within {
                    self.renewed = None;
                }
                within
            }
        }
    }

    async fn round(&mut self, now: Instant) -> Result<bool, kube::Error> {
        let me = &self.settings.identity;
        let Some(lease) = self.api.get_opt(&self.settings.name).await? else {
            let created = self
                .api
                .create(&PostParams::default(), &self.record(None, 0))
                .await;
            return match created {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(error) => Err(error),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let address = (lease.metadata.annotations.as_ref())
            .and_then(|a| a.get(ADDRESS_ANNOTATION).cloned())
            .filter(|_| {
                spec.holder_identity
                    .as_deref()
                    .is_some_and(|h| !h.is_empty())
            });
        self.leader_address.send_if_modified(|known| {
            let changed = *known != address;
            *known = address;
            changed
        });
        let seen = (spec.holder_identity.clone(), spec.renew_time.clone());
        match &self.observed {
            Some((holder, renewed, _)) if (holder, renewed) == (&seen.0, &seen.1) => {}
            _ => self.observed = Some((seen.0, seen.1, now)),
        }
        let held_by_other = spec
            .holder_identity
            .as_deref()
            .is_some_and(|holder| !holder.is_empty() && holder != me);
        let lapsed = self.observed.as_ref().is_some_and(|(_, _, since)| {
            let duration = spec
                .lease_duration_seconds
                .map_or(self.settings.duration, |s| {
                    Duration::from_secs(u64::try_from(s).unwrap_or_default())
                });
            now.duration_since(*since) >= duration
        });
        if held_by_other && !lapsed {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or_default()
            + i32::from(spec.holder_identity.as_deref() != Some(me));
        let acquired = if spec.holder_identity.as_deref() == Some(me) {
            spec.acquire_time.clone()
        } else {
            None
        };
        let mut record = self.record(acquired, transitions);
        record.metadata.resource_version = lease.metadata.resource_version.clone();
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &record)
            .await
        {
            Ok(_) => Ok(true),
            // Another candidate wrote first: it leads this round.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// The Lease held by this replica, renewed now.
    fn record(&self, acquired: Option<MicroTime>, transitions: i32) -> Lease {
        let now = MicroTime(jiff::Timestamp::now());
        Lease {
            metadata: ObjectMeta {
                name: Some(self.settings.name.clone()),
                namespace: Some(self.settings.namespace.clone()),
                annotations: (self.settings.address.clone())
                    .map(|address| [(ADDRESS_ANNOTATION.to_owned(), address)].into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(self.settings.identity.clone()),
                lease_duration_seconds: Some(
                    i32::try_from(self.settings.duration.as_secs()).unwrap_or(i32::MAX),
                ),
                acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
                renew_time: Some(now),
                lease_transitions: Some(transitions),
                ..LeaseSpec::default()
            }),
        }
    }

    /// Gives the Lease up when this replica holds it: no holder, so a standby takes it at its
    /// next try instead of waiting for it to lapse.
    async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.settings.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(&self.settings.identity) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(identity = %self.settings.identity, "released the lease"),
            Err(error) => tracing::warn!(error = %error, "could not release the lease"),
        }
    }
}
