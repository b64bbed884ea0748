//! The Bitbucket Cloud OAuth 2.0 token endpoint (`POST /site/oauth2/access_token`): the
//! client-credentials grant (client authenticated by HTTP Basic or form fields) and the
//! refresh-token grant. Issued access tokens act as the consumer's owner with the consumer's
//! scopes and expire after the consumer's lifetime (or the one set through the control API).
//! Shapes and error codes per API-FACTS §B.4. Reads and writes the shared state under its lock.

use std::sync::Arc;

use axum::{
    Router,
    body::Bytes,
    extract::State,
    response::{IntoResponse, Response},
    routing::post,
};
use base64::{Engine, engine::general_purpose::STANDARD};
use http::{HeaderMap, StatusCode, header};
use jiff::{SignedDuration, Timestamp};
use serde_json::json;

use super::{
    Shared, control::lock, fixture::CloudCredentialKind, templates, timestamp, world::IssuedToken,
};

/// The token endpoint's route.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new().route("/site/oauth2/access_token", post(access_token))
}

fn error(code: &str, description: &str) -> Response {
    let body = json!({"error_description": description, "error": code});
    (
        StatusCode::BAD_REQUEST,
        [(header::CONTENT_TYPE, "application/json")],
        templates::cloud_bytes(&body),
    )
        .into_response()
}

/// `client_id:client_secret` from HTTP Basic, else from the form.
fn client_credentials(headers: &HeaderMap, form: &[(String, String)]) -> Option<(String, String)> {
    let from_header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        })
        .and_then(|b64| STANDARD.decode(b64.trim()).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| {
            text.split_once(':')
                .map(|(id, secret)| (id.to_owned(), secret.to_owned()))
        });
    from_header.or_else(|| {
        let get = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        Some((get("client_id")?, get("client_secret")?))
    })
}

fn random_token(length: usize) -> String {
    std::iter::repeat_with(fastrand::alphanumeric)
        .take(length)
        .collect()
}

async fn access_token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form: Vec<(String, String)> = url::form_urlencoded::parse(&body).into_owned().collect();
    let get = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let grant = get("grant_type").unwrap_or_default().to_owned();
    let Some((client_id, secret)) = client_credentials(&headers, &form) else {
        return error("invalid_request", "Client credentials missing");
    };
    let mut world = lock(&shared.world);
    let consumer = world
        .consumer_by_client_id(&client_id)
        .and_then(|c| match &c.kind {
            CloudCredentialKind::OauthConsumer {
                client_secret,
                token_lifetime_seconds,
                ..
            } if *client_secret == secret => Some((
                c.id.clone(),
                c.scopes.clone(),
                *token_lifetime_seconds,
                c.expires_at.clone(),
            )),
            _ => None,
        });
    let Some((consumer_id, scopes, lifetime, expires_at)) = consumer else {
        return error("unauthorized_client", "Invalid OAuth client credentials");
    };
    let now = Timestamp::now();
    if expires_at
        .as_deref()
        .and_then(timestamp::parse)
        .is_some_and(|at| at <= now)
    {
        return error("unauthorized_client", "Invalid OAuth client credentials");
    }
    match grant.as_str() {
        "client_credentials" => {}
        "refresh_token" => {
            let presented = get("refresh_token").unwrap_or_default();
            if world.oauth.refresh_tokens.get(presented) != Some(&consumer_id) {
                return error("invalid_grant", "Invalid refresh_token");
            }
            // Each refresh hands out a new refresh token and retires the old one.
            world.oauth.refresh_tokens.remove(presented);
        }
        other => {
            return error(
                "unsupported_grant_type",
                &format!("Unsupported grant type: {other}"),
            );
        }
    }
    let lifetime = world.oauth.lifetime_override.unwrap_or(lifetime);
    // A lifetime past jiff's last representable instant (year 9999) means "never expires".
    let token_expires_at = i64::try_from(lifetime)
        .ok()
        .and_then(|seconds| now.checked_add(SignedDuration::from_secs(seconds)).ok())
        .unwrap_or(Timestamp::MAX);
    let access = random_token(64);
    let refresh = random_token(24);
    world.oauth.access_tokens.insert(
        access.clone(),
        IssuedToken {
            consumer_id: consumer_id.clone(),
            expires_at: token_expires_at,
        },
    );
    world
        .oauth
        .refresh_tokens
        .insert(refresh.clone(), consumer_id);
    drop(world);
    tracing::debug!(client_id, grant, "issued an OAuth access token");
    // Key order and `state` as in the documented response (API-FACTS §B.4); scopes are
    // space-separated in one string.
    let body = json!({
        "scopes": scopes.join(" "),
        "access_token": access,
        "expires_in": lifetime,
        "token_type": "bearer",
        "state": grant,
        "refresh_token": refresh,
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        templates::cloud_bytes(&body),
    )
        .into_response()
}
