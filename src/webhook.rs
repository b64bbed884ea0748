//! The receiver of Bitbucket's webhooks: `POST /hooks/<namespace>/<integration>`, for
//! integrations that set `spec.webhook`. A delivery is checked in this order, and each failure
//! is answered at once with nothing else done: the integration is known here and has a webhook
//! secret (404 otherwise, alike for both); the body is at most 256 KiB (413); `X-Hub-Signature`
//! is the HMAC-SHA256 of the raw body under that secret (401; unsigned deliveries are refused).
//! A delivery seen in the last 10 minutes (`X-Request-UUID` on Cloud, `X-Request-Id` on Data
//! Center: the same on Bitbucket's retries) is then answered 200 and ignored. What the delivery
//! changed is asked of the Subscriptions it concerns — fetch one repository, or list again (see
//! `controller::refresh`) — and answered 202 at once: the work is queued, never done within
//! Bitbucket's 10-second timeout. Only the leading replica does the work: a standby relays the
//! delivery to the leader (at the address its Lease names) and answers what it answers, or 503
//! when it cannot (Bitbucket delivers again). Does network I/O (the Secret, the relay).

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use secrecy::{ExposeSecret, SecretSlice};
use serde_json::json;

use crate::{
    bitbucket::webhook::{self, Change, DELIVERY_HEADERS, EVENT_HEADER, SIGNATURE_HEADER},
    controller::{Shared, lock, refresh},
};

/// The most a delivery may carry: what Bitbucket Cloud sends at most (payloads over 256 KB are
/// not sent at all).
pub const MAX_DELIVERY_BYTES: usize = 256 * 1024;

/// How long a delivery's id is remembered, so Bitbucket's retries of it do nothing.
const REMEMBERED: Duration = Duration::from_secs(600);

/// The most delivery ids remembered at once (the oldest go first).
const MAX_REMEMBERED: usize = 100_000;

/// How long a webhook secret read from its Secret is used before it is read again: a rotated
/// secret takes effect within this, and deliveries never cost more than one read per
/// integration in this time, whatever their number.
const SECRET_KEPT: Duration = Duration::from_secs(30);

/// The header of a delivery a standby relays to the leader: a replica that does not lead
/// either answers it 503 rather than relay it on.
const RELAYED_HEADER: &str = "X-Bitbucket-Operator-Relayed";

/// How long a standby waits for the leader's answer to a relayed delivery.
const RELAY_TIMEOUT: Duration = Duration::from_secs(5);

/// What the handler shares.
#[derive(Clone)]
pub struct Receiver {
    shared: Arc<Shared>,
    secrets: Arc<Mutex<HashMap<SecretKey, Kept>>>,
    seen: Arc<Mutex<Seen>>,
    relay: reqwest::Client,
}

/// A delivery that passed the checks.
struct Received {
    change: Change,
    body: axum::body::Bytes,
    /// Its key among the deliveries seen, if it named itself.
    delivery: Option<String>,
}

/// A Secret key: namespace, Secret name, key.
type SecretKey = (String, String, String);

/// A secret as read (or found missing) at `read`.
struct Kept {
    read: Instant,
    secret: Option<Arc<SecretSlice<u8>>>,
}

/// Delivery ids seen, oldest first.
#[derive(Default)]
struct Seen {
    order: VecDeque<(Instant, String)>,
    ids: HashSet<String>,
}

impl Seen {
    /// Whether `id` was seen in the last [`REMEMBERED`] (and remembers it).
    fn again(&mut self, id: &str, now: Instant) -> bool {
        while let Some((at, _)) = self.order.front() {
            if now.saturating_duration_since(*at) < REMEMBERED && self.ids.len() < MAX_REMEMBERED {
                break;
            }
            let (_, old) = self.order.pop_front().expect("just looked");
            self.ids.remove(&old);
        }
        if !self.ids.insert(id.to_owned()) {
            return true;
        }
        self.order.push_back((now, id.to_owned()));
        false
    }

    /// Forgets `id` (its delivery was not taken: Bitbucket's retry of it must be).
    fn forget(&mut self, id: &str) {
        self.ids.remove(id);
    }
}

impl Receiver {
    pub fn new(shared: Arc<Shared>) -> Self {
        // Plain HTTP inside the cluster: no certificate authorities to load (the image has
        // none), but reqwest wants a TLS set-up all the same.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring offers the default protocol versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let relay = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(RELAY_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .expect("an HTTP client without TLS builds");
        Self {
            shared,
            secrets: Arc::default(),
            seen: Arc::default(),
            relay,
        }
    }

    /// The webhook secret of integration `namespace/name`, if it has one this replica can read.
    async fn secret(&self, namespace: &str, name: &str) -> Option<Arc<SecretSlice<u8>>> {
        let integration = self.shared.catalog.integration(namespace, name)?;
        let reference = integration.spec.webhook.as_ref()?.secret_ref.clone();
        let key = (
            namespace.to_owned(),
            reference.name.clone(),
            reference.key.clone(),
        );
        if let Some(kept) = lock(&self.secrets).get(&key)
            && kept.read.elapsed() < SECRET_KEPT
        {
            return kept.secret.clone();
        }
        let secrets: Api<Secret> = Api::namespaced(self.shared.kube.clone(), namespace);
        let read = tokio::time::timeout(Duration::from_secs(5), secrets.get_opt(&reference.name));
        let secret = match read.await {
            Ok(Ok(secret)) => secret
                .and_then(|s| crate::api::credential::value_of(&s, &reference.key))
                .filter(|value| !value.is_empty())
                .map(|value| Arc::new(SecretSlice::from(value))),
            Ok(Err(error)) => {
                tracing::warn!(%namespace, integration = %name, %error, "reading the webhook secret");
                None
            }
            Err(_) => {
                tracing::warn!(%namespace, integration = %name, "reading the webhook secret timed out");
                None
            }
        };
        let mut secrets = lock(&self.secrets);
        secrets.retain(|_, kept| kept.read.elapsed() < SECRET_KEPT);
        secrets.insert(
            key,
            Kept {
                read: Instant::now(),
                secret: secret.clone(),
            },
        );
        secret
    }
}

/// The receiver's route.
pub fn router(receiver: Receiver) -> Router {
    Router::new()
        .route("/hooks/{namespace}/{integration}", post(deliver))
        .with_state(receiver)
}

async fn deliver(
    State(receiver): State<Receiver>,
    Path((namespace, integration)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let received = receive(&receiver, &namespace, &integration, &headers, body).await;
    let (outcome, response) = match received {
        Err(refused) => refused,
        Ok(received) => match refresh(&receiver, &namespace, &integration, &received.change) {
            Some(answered) => answered,
            None => relay(&receiver, &namespace, &integration, &headers, received).await,
        },
    };
    let labels = crate::metrics::DeliveryLabels { outcome };
    let deliveries = &receiver.shared.metrics.webhook_deliveries;
    deliveries.get_or_create(&labels).inc();
    response
}

/// What a delivery is (metric outcome, answer) when it is not work to do.
type Answered = (&'static str, Response);

fn answer(outcome: &'static str, status: StatusCode, message: &str) -> Answered {
    let response = (status, Json(json!({ "message": message }))).into_response();
    (outcome, response)
}

/// Checks a delivery in order (see the module's documentation); what it changed, or how it
/// was answered.
async fn receive(
    receiver: &Receiver,
    namespace: &str,
    integration: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Received, Answered> {
    let unknown = || {
        let message = "no integration here accepts webhooks at this address";
        answer("unknown", StatusCode::NOT_FOUND, message)
    };
    let secret = receiver
        .secret(namespace, integration)
        .await
        .ok_or_else(unknown)?;
    let too_large = || {
        let message = "a delivery is at most 256 KiB";
        answer("too_large", StatusCode::PAYLOAD_TOO_LARGE, message)
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|length| length > MAX_DELIVERY_BYTES) {
        return Err(too_large());
    }
    let body = axum::body::to_bytes(body, MAX_DELIVERY_BYTES)
        .await
        .map_err(|_| too_large())?;
    let signature = headers.get(SIGNATURE_HEADER).map(|v| v.as_bytes());
    webhook::verify(secret.expose_secret(), &body, signature)
        .map_err(|unsigned| answer("unsigned", StatusCode::UNAUTHORIZED, &unsigned.to_string()))?;
    let delivery = DELIVERY_HEADERS
        .iter()
        .find_map(|name| headers.get(*name)?.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= 128);
    let delivery = delivery.map(|id| format!("{namespace}/{integration}/{id}"));
    if let Some(key) = &delivery
        && lock(&receiver.seen).again(key, Instant::now())
    {
        let message = "this delivery was received before";
        return Err(answer("duplicate", StatusCode::OK, message));
    }
    let event = headers
        .get(EVENT_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    Ok(Received {
        change: webhook::change(event, &body),
        body,
        delivery,
    })
}

/// Asks the Subscriptions `change` concerns to refresh (the work is queued, not done here).
fn refresh(
    receiver: &Receiver,
    namespace: &str,
    integration: &str,
    change: &Change,
) -> Option<Answered> {
    let (owner, what) = match change {
        Change::Ping => return Some(answer("ping", StatusCode::OK, "pong")),
        Change::Nothing => {
            let message = "nothing to refresh for this event";
            return Some(answer("ignored", StatusCode::OK, message));
        }
        Change::Repository(changed) => {
            let owner = changed.full_name.split_once('/').map(|(owner, _)| owner);
            (owner, refresh::Ask::Repository(changed))
        }
        Change::Relist { owner } => (owner.as_deref(), refresh::Ask::Relist),
    };
    let shared = &receiver.shared;
    let subscriptions = shared.catalog.subscriptions_in(namespace);
    let concerned = refresh::concerned(subscriptions, namespace, integration, owner);
    if !concerned.is_empty() && !shared.refreshes.ask(&shared.memory, &concerned, &what) {
        return None;
    }
    let message = format!("{} Subscriptions to refresh", concerned.len());
    Some(answer("accepted", StatusCode::ACCEPTED, &message))
}

/// Relays a delivery to the leading replica, which checks it again and does the work; its
/// answer is the answer. Without a leader to relay to, or when it does not answer: 503, and
/// this replica forgets it saw the delivery, so Bitbucket's next attempt counts.
async fn relay(
    receiver: &Receiver,
    namespace: &str,
    integration: &str,
    headers: &HeaderMap,
    received: Received,
) -> Answered {
    let leader =
        (receiver.shared.refreshes.leader()).filter(|_| !headers.contains_key(RELAYED_HEADER));
    let relayed = match leader {
        Some(leader) => {
            let url = format!("http://{leader}/hooks/{namespace}/{integration}");
            let mut request = (receiver.relay.post(url))
                .header(RELAYED_HEADER, "1")
                .body(received.body);
            let names = [
                header::CONTENT_TYPE.as_str(),
                EVENT_HEADER,
                SIGNATURE_HEADER,
            ];
            for name in names.iter().chain(DELIVERY_HEADERS.iter()) {
                if let Some(value) = headers.get(*name) {
                    request = request.header(*name, value.clone());
                }
            }
            match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    response.bytes().await.ok().map(|body| (status, body))
                }
                Err(_) => None,
            }
        }
        None => None,
    };
    if let Some((status, body)) = relayed {
        let json = [(header::CONTENT_TYPE, "application/json")];
        return ("relayed", (status, json, body).into_response());
    }
    if let Some(key) = &received.delivery {
        lock(&receiver.seen).forget(key);
    }
    let message = "this replica does not lead and cannot reach the leader: deliver again";
    answer("not_leading", StatusCode::SERVICE_UNAVAILABLE, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_is_remembered_for_ten_minutes_and_the_memory_is_bounded() {
        let mut seen = Seen::default();
        let start = Instant::now();
        assert!(!seen.again("a", start));
        assert!(seen.again("a", start + Duration::from_secs(599)));
        assert!(
            !seen.again("a", start + Duration::from_secs(601)),
            "forgotten"
        );
        for i in 0..MAX_REMEMBERED + 10 {
            seen.again(&i.to_string(), start + Duration::from_secs(700));
        }
        assert!(seen.ids.len() <= MAX_REMEMBERED + 1);
        assert_eq!(seen.ids.len(), seen.order.len());
    }
}
