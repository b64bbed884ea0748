//! Bitbucket Cloud OAuth 2.0: the authorize page (`GET /site/oauth2/authorize`, where a person
//! signs in and approves a consumer — here scripted through the control API's [`Consent`]) and
//! the token endpoint (`POST /site/oauth2/access_token`) with the authorization-code,
//! client-credentials and refresh-token grants (client authenticated by HTTP Basic or form
//! fields). Issued access tokens act as the user who signed in (or, for client credentials, the
//! consumer's owner) with the consumer's scopes, and expire after the consumer's lifetime (or the
//! one set through the control API). Every grant hands out a new refresh token and retires the
//! one presented. Shapes and error codes per API-FACTS §B.4. Reads and writes the shared state
//! under its lock.
//!
//! [`Consent`]: crate::Consent

use std::sync::Arc;

use axum::{
    Router,
    body::Bytes,
    extract::Query,
    extract::State,
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use http::{HeaderMap, StatusCode, header};
use jiff::{SignedDuration, Timestamp};
use serde_json::json;

use super::{
    Shared,
    control::lock,
    fixture::CloudCredentialKind,
    templates, timestamp,
    world::{Grantee, IssuedCode, IssuedToken, OAuthTokens, World},
};

/// The token endpoint's route.
pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/site/oauth2/access_token", post(access_token))
        .route("/site/oauth2/authorize", get(authorize))
}

/// Whether `uri` is a loopback address a native app listens on (RFC 8252 §7.3): the only
/// callbacks the simulated consumers accept.
fn loopback(uri: &str) -> bool {
    url::Url::parse(uri).is_ok_and(|u| {
        u.scheme() == "http" && matches!(u.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"))
    })
}

/// The authorize page: the simulated person approves or denies at once, as scripted, and the
/// browser is sent back to `redirect_uri` with a code (or an error) and the `state` it brought.
async fn authorize(
    State(shared): State<Arc<Shared>>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let page = |status: StatusCode, text: &str| {
        (
            status,
            [(header::CONTENT_TYPE, "text/html")],
            format!("<html><body><p>{text}</p></body></html>"),
        )
            .into_response()
    };
    let client_id = query
        .get("client_id")
        .map(String::as_str)
        .unwrap_or_default();
    if query.get("response_type").map(String::as_str) != Some("code") {
        return page(StatusCode::BAD_REQUEST, "response_type must be code");
    }
    let Some(redirect_uri) = query.get("redirect_uri").filter(|uri| loopback(uri)) else {
        return page(
            StatusCode::BAD_REQUEST,
            "redirect_uri does not match the consumer's callback URL",
        );
    };
    let mut world = lock(&shared.world);
    let Some(consumer) = world.consumer_by_client_id(client_id).map(|c| c.id.clone()) else {
        return page(StatusCode::BAD_REQUEST, "Invalid client_id");
    };
    let consent = world.oauth.consent.clone();
    let mut back = url::Url::parse(redirect_uri).expect("checked above");
    {
        let mut pairs = back.query_pairs_mut();
        if consent.deny {
            pairs
                .append_pair("error", "access_denied")
                .append_pair("error_description", "The user denied access");
        } else {
            let code = random_token(20);
            world.oauth.codes.insert(
                code.clone(),
                IssuedCode {
                    grantee: Grantee {
                        consumer_id: consumer,
                        user: consent.user.clone(),
                    },
                    redirect_uri: Some(redirect_uri.clone()),
                },
            );
            pairs.append_pair("code", &code);
        }
        if let Some(state) = query.get("state") {
            pairs.append_pair("state", state);
        }
    }
    Redirect::to(back.as_str()).into_response()
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

/// The token endpoint: authenticates the consumer, redeems the grant (which says whom the new
/// token acts as) and issues a new access token and refresh token.
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
    let now = Timestamp::now();
    let Some(consumer) = authenticated_consumer(&world, &client_id, &secret, now) else {
        return error("unauthorized_client", "Invalid OAuth client credentials");
    };
    let oauth = &mut world.oauth;
    let redeemed = match grant.as_str() {
        "client_credentials" => Ok(None),
        "authorization_code" => redeem_code(
            oauth,
            &consumer.id,
            get("code").unwrap_or_default(),
            get("redirect_uri"),
        ),
        "refresh_token" => redeem_refresh_token(
            oauth,
            &consumer.id,
            get("refresh_token").unwrap_or_default(),
            now,
        ),
        other => {
            return error(
                "unsupported_grant_type",
                &format!("Unsupported grant type: {other}"),
            );
        }
    };
    let user = match redeemed {
        Ok(user) => user,
        Err(description) => return error("invalid_grant", description),
    };
    let lifetime = oauth.lifetime_override.unwrap_or(consumer.lifetime);
    let grantee = Grantee {
        consumer_id: consumer.id,
        user,
    };
    let (access, refresh) = issue_tokens(oauth, grantee, lifetime, now);
    drop(world);
    tracing::debug!(client_id, grant, "issued an OAuth access token");
    token_response(&consumer.scopes, &access, lifetime, &grant, &refresh)
}

/// The parts of an OAuth consumer the token endpoint needs.
struct Consumer {
    id: String,
    scopes: Vec<String>,
    /// `expires_in` of the tokens it is issued, in seconds.
    lifetime: u64,
}

/// The consumer with this client id, if `secret` is its secret and it has not expired.
fn authenticated_consumer(
    world: &World,
    client_id: &str,
    secret: &str,
    now: Timestamp,
) -> Option<Consumer> {
    let credential = world.consumer_by_client_id(client_id)?;
    let CloudCredentialKind::OauthConsumer {
        client_secret,
        token_lifetime_seconds,
        ..
    } = &credential.kind
    else {
        return None;
    };
    let expired = credential
        .expires_at
        .as_deref()
        .and_then(timestamp::parse)
        .is_some_and(|at| at <= now);
    (*client_secret == secret && !expired).then(|| Consumer {
        id: credential.id.clone(),
        scopes: credential.scopes.clone(),
        lifetime: *token_lifetime_seconds,
    })
}

/// The authorization-code grant: the user who signed in, or why the code is refused. A code is
/// good for one exchange, by the consumer it was issued to, with the same `redirect_uri`.
fn redeem_code(
    oauth: &mut OAuthTokens,
    consumer_id: &str,
    presented: &str,
    redirect_uri: Option<&str>,
) -> Result<Option<String>, &'static str> {
    let issued = oauth.codes.get(presented).cloned();
    let Some(issued) = issued.filter(|c| c.grantee.consumer_id == consumer_id) else {
        return Err("Invalid authorization code");
    };
    if redirect_uri != issued.redirect_uri.as_deref() {
        return Err("redirect_uri does not match");
    }
    oauth.codes.remove(presented);
    Ok(issued.grantee.user)
}

/// The refresh-token grant: whom the token was issued to, or why it is refused (the reason is
/// also kept for the control API). Rotates the presented token out.
fn redeem_refresh_token(
    oauth: &mut OAuthTokens,
    consumer_id: &str,
    presented: &str,
    now: Timestamp,
) -> Result<Option<String>, &'static str> {
    oauth
        .retired_refresh_tokens
        .retain(|_, (_, until)| *until > now);
    let grantee = oauth.refresh_tokens.get(presented).cloned().or_else(|| {
        let (grantee, _) = oauth.retired_refresh_tokens.get(presented)?;
        Some(grantee.clone())
    });
    let Some(grantee) = grantee.filter(|g| g.consumer_id == consumer_id) else {
        let what = match oauth.rotated_out_at.get(presented) {
            Some(at) => format!(
                "a refresh token rotated out {}s ago (grace {}s)",
                now.duration_since(*at).as_secs(),
                oauth.refresh_grace_seconds
            ),
            None => "a refresh token never issued, or another consumer's".to_owned(),
        };
        oauth.refusals.push(format!("{consumer_id}: {what}"));
        return Err("Invalid refresh_token");
    };
    rotate_out(oauth, presented, now);
    Ok(grantee.user)
}

/// Each refresh hands out a new refresh token and retires the old one, at once or after the
/// grace set through the control API.
fn rotate_out(oauth: &mut OAuthTokens, presented: &str, now: Timestamp) {
    if oauth.refresh_tokens.contains_key(presented) {
        oauth.rotated_out_at.insert(presented.to_owned(), now);
    }
    if let Some(retired) = oauth.refresh_tokens.remove(presented)
        && oauth.refresh_grace_seconds > 0
    {
        let grace = SignedDuration::from_secs(
            i64::try_from(oauth.refresh_grace_seconds).unwrap_or(i64::MAX),
        );
        let until = now.checked_add(grace).unwrap_or(Timestamp::MAX);
        oauth
            .retired_refresh_tokens
            .insert(presented.to_owned(), (retired, until));
    }
}

/// Issues a new access token living `lifetime` seconds and a new refresh token, both for
/// `grantee`; returns (access token, refresh token).
fn issue_tokens(
    oauth: &mut OAuthTokens,
    grantee: Grantee,
    lifetime: u64,
    now: Timestamp,
) -> (String, String) {
    // A lifetime past jiff's last representable instant (year 9999) means "never expires".
    let expires_at = i64::try_from(lifetime)
        .ok()
        .and_then(|seconds| now.checked_add(SignedDuration::from_secs(seconds)).ok())
        .unwrap_or(Timestamp::MAX);
    let access = random_token(64);
    let refresh = random_token(24);
    oauth.access_tokens.insert(
        access.clone(),
        IssuedToken {
            consumer_id: grantee.consumer_id.clone(),
            user: grantee.user.clone(),
            expires_at,
        },
    );
    oauth.refresh_tokens.insert(refresh.clone(), grantee);
    (access, refresh)
}

fn token_response(
    scopes: &[String],
    access: &str,
    lifetime: u64,
    grant: &str,
    refresh: &str,
) -> Response {
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
