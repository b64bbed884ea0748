//! Argo CD's ApplicationSet plugin generator, served from what the operator already holds: one
//! parameter set per repository of a Subscription, with no Bitbucket call per request (Argo CD's
//! own Bitbucket generator lists Bitbucket on every refresh of every ApplicationSet).
//!
//! Protocol (Argo CD `applicationset/services/plugin`): `POST /api/v1/getparams.execute` with
//! `Authorization: Bearer TOKEN` and `{"applicationSetName": …, "input": {"parameters":
//! {"namespace": …, "subscription": …}}}`; the answer is `{"output": {"parameters": [{…}, …]}}`.
//! A wrong token is 403; errors carry `{"message": …}`, which Argo CD shows on the ApplicationSet.
//!
//! Who may read what: whoever holds the token (Argo CD's ApplicationSet controller) may read
//! the repository list of a Subscription in any namespace **that offers it**, by carrying the
//! label `scm.shippable.io/applicationset: "true"` — whoever may label a Subscription decides.
//! A Subscription that does not offer its list answers exactly like one that does not exist.
//!
//! Never an empty list for "not known yet": Argo CD deletes the Applications a generator stops
//! producing, so a Subscription that has not listed yet is a 503 that Argo CD retries, not
//! `[]`. Every replica answers, leader or standby, from its catalog: the whole list, however
//! long, from the cached RepositorySlices, and only a complete one (see [`crate::catalog`]).
//! Does network I/O.

use std::{convert::Infallible, path::PathBuf, sync::Arc};

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use kube::ResourceExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tower_http::limit::RequestBodyLimitLayer;

use crate::{
    api::{self, Subscription},
    catalog::{self, NotServed, Served},
    controller::Shared,
};

/// The label by which a Subscription offers its repository list to ApplicationSets.
pub const OFFER_LABEL: &str = "scm.shippable.io/applicationset";

/// What the handlers share: the controllers' state and where the token is kept.
#[derive(Clone)]
pub struct Generator {
    pub shared: Arc<Shared>,
    /// Read on every request, so a rotated Secret (a mounted file) takes effect at once.
    pub token_file: PathBuf,
}

/// The most a plugin request may carry: Argo CD sends the ApplicationSet's name and the
/// generator's few input parameters.
const MAX_REQUEST_BYTES: usize = 256 * 1024;

/// The plugin generator's route, and the Flux input provider's (see [`crate::flux`]), behind one
/// token. The token is checked before anything of the body is read; a body over
/// [`MAX_REQUEST_BYTES`] is refused (413) before it is read.
pub fn router(generator: Generator) -> Router {
    Router::new()
        .route("/api/v1/getparams.execute", post(getparams))
        .route(
            "/api/v1/inputs/{namespace}/{subscription}",
            get(crate::flux::inputs),
        )
        .layer(RequestBodyLimitLayer::new(MAX_REQUEST_BYTES))
        .route_layer(middleware::from_fn_with_state(
            generator.clone(),
            token_holders_only,
        ))
        .with_state(generator)
}

/// Lets through only requests that carry the generator's token; the others are answered 403
/// from their headers alone.
async fn token_holders_only(
    State(generator): State<Generator>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    if !authorized(&generator.token_file, request.headers()) {
        return refusal(
            StatusCode::FORBIDDEN,
            "the bearer token is not the plugin generator's token".into(),
        );
    }
    next.run(request).await
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    #[serde(default)]
    application_set_name: String,
    #[serde(default)]
    input: Input,
}

#[derive(Debug, Default, Deserialize)]
struct Input {
    #[serde(default)]
    parameters: Map<String, Value>,
}

fn refusal(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "message": message }))).into_response()
}

async fn getparams(State(generator): State<Generator>, body: axum::body::Bytes) -> Response {
    let (namespace, name) = match read_request(&body) {
        Ok(named) => named,
        Err(message) => return refusal(StatusCode::BAD_REQUEST, message),
    };
    match offered_list(&generator.shared, &namespace, &name, ENDPOINT) {
        Ok((subscription, list)) => {
            let integration = subscription.spec.integration_ref.name.clone();
            let body = answer(list, namespace, name, integration).await;
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Err((status, message)) => refusal(status, message),
    }
}

/// The answer for `list`: the one kept beside it, or one rendered now and kept.
async fn answer(
    list: Arc<catalog::List>,
    namespace: String,
    name: String,
    integration: String,
) -> axum::body::Body {
    let chunks = match list.rendered(&integration) {
        Some(chunks) => chunks,
        None => {
            let chunks = render(Arc::clone(&list), namespace, name, integration.clone()).await;
            list.keep_rendered(integration, Arc::clone(&chunks));
            chunks
        }
    };
    let chunks = (0..chunks.len()).map(move |i| Ok::<_, Infallible>(chunks[i].clone()));
    axum::body::Body::from_stream(futures::stream::iter(chunks))
}

/// How many parameter sets go into one chunk of an answer.
const SETS_PER_CHUNK: usize = 256;

/// The answer `{"output": {"parameters": [...]}}` for `list`, in chunks of [`SETS_PER_CHUNK`]
/// sets, rendered off the async workers (100,000 repositories take tens of milliseconds). The
/// catalog keeps it with the list while Argo CD asks for it (see [`catalog::List::rendered`]);
/// sending a kept answer copies nothing.
async fn render(
    list: Arc<catalog::List>,
    namespace: String,
    name: String,
    integration: String,
) -> Arc<[axum::body::Bytes]> {
    let rendering = tokio::task::spawn_blocking(move || {
        let mut chunks = Vec::with_capacity(list.len() / SETS_PER_CHUNK + 2);
        chunks.push(axum::body::Bytes::from_static(
            b"{\"output\":{\"parameters\":[",
        ));
        let mut chunk = Vec::new();
        // Parsed for this rendering only: the rendered answer is what is kept.
        for (i, repository) in list.parse().iter().enumerate() {
            if i > 0 {
                chunk.push(b',');
            }
            let set = ParameterSet::new(repository, &namespace, &name, &integration);
            serde_json::to_writer(&mut chunk, &set).expect("JSON to memory");
            if (i + 1) % SETS_PER_CHUNK == 0 {
                let room = chunk.len() + chunk.len() / 8;
                chunks.push(std::mem::replace(&mut chunk, Vec::with_capacity(room)).into());
            }
        }
        chunk.extend_from_slice(b"]}}");
        chunks.push(chunk.into());
        chunks.into()
    });
    rendering.await.expect("rendering an answer does not panic")
}

/// The Subscription a plugin request names (`namespace`, `name`), or why it names none. The
/// names must be Kubernetes names before they reach a request path; what the request says is
/// quoted short and escaped (Argo CD shows the message on the ApplicationSet).
fn read_request(body: &[u8]) -> Result<(String, String), String> {
    let quoted =
        |text: &str| api::text::for_the_api(text, api::text::MAX_QUOTED_BYTES).into_owned();
    let request: Request = serde_json::from_slice(body).map_err(|error| {
        format!(
            "the request is not a plugin generator request: {}",
            quoted(&error.to_string())
        )
    })?;
    let application_set = quoted(&request.application_set_name);
    let parameter = |name: &str| {
        request
            .input
            .parameters
            .get(name)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty())
    };
    let (Some(namespace), Some(name)) = (parameter("namespace"), parameter("subscription")) else {
        return Err(format!(
            "ApplicationSet {application_set}: the generator's input.parameters must name the \
             Subscription: namespace and subscription"
        ));
    };
    if !kubernetes_name(namespace, 63, false) || !kubernetes_name(name, 253, true) {
        return Err(format!(
            "ApplicationSet {application_set}: input.parameters namespace {:?} and subscription \
             {:?} must be Kubernetes names (lowercase letters, digits and '-'; '.' too in the \
             subscription's)",
            quoted(namespace),
            quoted(name)
        ));
    }
    Ok((namespace.to_owned(), name.to_owned()))
}

/// A DNS-1123 label (or, with `dots`, subdomain) of at most `max` characters.
fn kubernetes_name(text: &str, max: usize, dots: bool) -> bool {
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    text.len() <= max
        && edge(text.chars().next())
        && edge(text.chars().last())
        && text
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.'))
}

/// Whether the request carries the token in `token_file` (compared in constant time).
fn authorized(token_file: &std::path::Path, headers: &HeaderMap) -> bool {
    let Ok(token) = std::fs::read_to_string(token_file) else {
        return false;
    };
    let token = token.trim();
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    !token.is_empty()
        && presented.len() == token.len()
        && presented
            .bytes()
            .zip(token.bytes())
            .fold(0, |differ, (a, b)| differ | (a ^ b))
            == 0
}

/// The generator's name in the `lists_served` metric.
const ENDPOINT: &str = "generator";

/// A Subscription that offers its list (see [`OFFER_LABEL`]) and its complete list, or the answer
/// that says why there is none: 404 for one that does not exist or does not offer its list
/// (alike), 503 while no complete list is known (Argo CD and Flux retry). Counted in the
/// `lists_served` metric under `endpoint`.
pub fn offered_list(
    shared: &Shared,
    namespace: &str,
    name: &str,
    endpoint: &'static str,
) -> Result<(Arc<Subscription>, Arc<catalog::List>), (StatusCode, String)> {
    let count = |list: &'static str| {
        let labels = crate::metrics::ServedLabels { endpoint, list };
        shared.metrics.lists_served.get_or_create(&labels).inc();
    };
    let not_offered = || {
        (
            StatusCode::NOT_FOUND,
            format!(
                "no Subscription {namespace}/{name} offers its repositories (it must exist and \
                 be labelled {OFFER_LABEL}: \"true\")"
            ),
        )
    };
    let offers = |s: &Subscription| s.labels().get(OFFER_LABEL).map(String::as_str) == Some("true");
    let subscription = match shared.catalog.subscription(namespace, name) {
        Ok(s) if offers(&s) => s,
        Ok(_) | Err(NotServed::NotFound(..)) => return Err(not_offered()),
        Err(other) => {
            count("unavailable");
            return Err((StatusCode::SERVICE_UNAVAILABLE, other.to_string()));
        }
    };
    match shared.catalog.list(namespace, name) {
        Ok(Served::Complete(list)) => {
            count("complete");
            Ok((subscription, list))
        }
        Ok(Served::Previous(list)) => {
            count("previous");
            Ok((subscription, list))
        }
        Err(NotServed::NotFound(..)) => Err(not_offered()),
        Err(other) => {
            count("unavailable");
            Err((StatusCode::SERVICE_UNAVAILABLE, other.to_string()))
        }
    }
}

/// The parameters of one repository, flat, named as in the Subscription's status: borrowed
/// from the cached entry and written straight to the answer.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParameterSet<'a> {
    /// Bitbucket's id of the repository (the Flux input's `id`; not a generator parameter).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<&'a str>,
    full_name: &'a str,
    slug: &'a str,
    name: &'a str,
    project: &'a str,
    workspace: &'a str,
    private: bool,
    main_branch: &'a str,
    clone_url_https: &'a str,
    clone_url_ssh: &'a str,
    html_url: &'a str,
    namespace: &'a str,
    subscription: &'a str,
    integration: &'a str,
}

impl<'a> ParameterSet<'a> {
    pub fn new(
        repository: &'a api::Repository,
        namespace: &'a str,
        subscription: &'a str,
        integration: &'a str,
    ) -> Self {
        let slug = repository.name.as_str();
        let text = |value: &'a Option<String>| value.as_deref().unwrap_or_default();
        Self {
            id: None,
            full_name: &repository.full_name,
            slug,
            name: repository.display_name.as_deref().unwrap_or(slug),
            project: text(&repository.project),
            workspace: repository.full_name.split_once('/').map_or("", |(w, _)| w),
            private: repository.private,
            main_branch: text(&repository.main_branch),
            clone_url_https: text(&repository.clone_urls.https),
            clone_url_ssh: text(&repository.clone_urls.ssh),
            html_url: text(&repository.html_url),
            namespace,
            subscription,
            integration,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_names_its_subscription_by_kubernetes_names() {
        let body = |namespace: &str, subscription: &str| {
            json!({"applicationSetName": "repos", "input": {"parameters": {
                "namespace": namespace, "subscription": subscription}}})
            .to_string()
        };
        assert_eq!(
            read_request(body("team-a", "api.ci").as_bytes()),
            Ok(("team-a".into(), "api.ci".into()))
        );
        for (namespace, subscription) in [
            ("../../api/v1/secrets", "s"),
            ("team-a", "x?watch=true"),
            ("Team", "s"),
            ("team.a", "s"),
            ("team-a", "-s"),
        ] {
            let refused = read_request(body(namespace, subscription).as_bytes()).unwrap_err();
            assert!(refused.contains("must be Kubernetes names"), "{refused}");
        }
    }

    proptest::proptest! {
        /// Whatever bytes Argo CD (or anyone with the token) sends: a Subscription named by valid
        /// names, or a refusal that is short and safe to show, never a panic.
        #[test]
        fn any_request_is_read_or_refused_safely(
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            name in ".{0,300}",
            namespace in ".{0,80}",
        ) {
            let built = json!({"applicationSetName": name, "input": {"parameters": {
                "namespace": namespace, "subscription": name}}})
            .to_string();
            for body in [body, built.into_bytes()] {
                match read_request(&body) {
                    Ok((namespace, name)) => {
                        proptest::prop_assert!(kubernetes_name(&namespace, 63, false));
                        proptest::prop_assert!(kubernetes_name(&name, 253, true));
                    }
                    Err(message) => {
                        proptest::prop_assert!(message.len() <= 4 * api::text::MAX_QUOTED_BYTES);
                        proptest::prop_assert!(!message.chars().any(char::is_control), "{:?}", message);
                    }
                }
            }
        }
    }
}
