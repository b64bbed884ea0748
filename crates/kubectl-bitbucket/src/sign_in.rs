//! "Sign in with Bitbucket": the OAuth 2.0 authorization-code grant as a native app does it
//! (RFC 8252). The plugin listens on a loopback port, sends the person to Bitbucket's authorize
//! page for the consumer they named, receives the code on `http://127.0.0.1:PORT/callback`
//! (checking `state` against forgery, RFC 6749 §10.12) and exchanges it, with the consumer's
//! secret, for the user's refresh token. Nothing but loopback is listened on.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    str::FromStr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use axum::{Router, extract::Query, response::Html, routing::get};
use k8s_openapi::api::core::v1::Secret;
use secrecy::SecretString;
use tokio::sync::oneshot;
use url::Url;

use super::{Outcome, terminal::Terminal};
use crate::{
    api::{ALLOWED_SERVERS_ANNOTATION, BitbucketIntegration, CLOUD_API_URL, CredentialType},
    bitbucket::{self, AllowList, TransportConfig},
};

/// How long a person has to sign in.
const PATIENCE: Duration = Duration::from_secs(300);

/// Where the browser comes back, and whether to open one.
pub struct Browser {
    /// 0: any free port.
    pub port: u16,
    pub open: bool,
}

/// Signs the person in to the consumer whose key `secret` holds (`clientId`) and returns their
/// refresh token. `Err` is the outcome to print.
pub async fn sign_in(
    terminal: &Terminal,
    integration: &BitbucketIntegration,
    secret: &Secret,
    client_secret: &SecretString,
    browser: &Browser,
) -> Result<SecretString, Outcome> {
    let consumer = Consumer::of(terminal, integration, secret)?;
    let (listener, redirect) = listen_on_loopback(terminal, browser.port).await?;
    let state: String = std::iter::repeat_with(fastrand::alphanumeric)
        .take(32)
        .collect();
    send_to_bitbucket(&consumer, &state, &redirect, browser.open);
    let code = wait_for_code(terminal, listener, &consumer, &state).await?;
    let refresh_token =
        exchange_code(terminal, &consumer, client_secret, &code, &redirect, secret).await?;
    eprintln!("Signed in.");
    Ok(refresh_token)
}

/// The outcome of a sign-in that failed for `message`.
fn failed(terminal: &Terminal, message: impl std::fmt::Display) -> Outcome {
    Outcome::failed(format!("{}: {message}\n", terminal.bad("Sign-in failed")))
}

/// The OAuth consumer signed in to: Bitbucket's API and the consumer's key.
struct Consumer {
    api_url: Url,
    client_id: String,
}

impl Consumer {
    /// The consumer of `integration`, whose key `secret` holds.
    fn of(
        terminal: &Terminal,
        integration: &BitbucketIntegration,
        secret: &Secret,
    ) -> Result<Self, Outcome> {
        let api_url = integration
            .spec
            .server
            .url
            .as_deref()
            .unwrap_or(CLOUD_API_URL);
        let api_url =
            Url::parse(api_url).map_err(|e| failed(terminal, format!("server URL: {e}")))?;
        let client_id = CredentialType::OAuthUser
            .secret_keys()
            .identity
            .and_then(|key| secret.data.as_ref()?.get(key))
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
            .unwrap_or_default();
        Ok(Self { api_url, client_id })
    }
}

/// Listens on `port` of the loopback address (0: a free one); the listener and the callback
/// URL that reaches it.
async fn listen_on_loopback(
    terminal: &Terminal,
    port: u16,
) -> Result<(tokio::net::TcpListener, Url), Outcome> {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))
        .await
        .map_err(|e| failed(terminal, format!("listening on 127.0.0.1:{port}: {e}")))?;
    let port = listener
        .local_addr()
        .map_err(|e| failed(terminal, e))?
        .port();
    let redirect = Url::parse(&format!("http://127.0.0.1:{port}/callback")).expect("a valid URL");
    Ok((listener, redirect))
}

/// Sends the person to Bitbucket's authorize page: opens a browser there if `open` and there is
/// one, and prints the address either way.
fn send_to_bitbucket(consumer: &Consumer, state: &str, redirect: &Url, open: bool) {
    let Consumer { api_url, client_id } = consumer;
    let authorize = bitbucket::authorize_url(api_url, client_id, state, redirect);
    let opened = open && open_browser(&authorize);
    eprintln!(
        "Sign in with Bitbucket: {} this address in a browser to authorize consumer {client_id}:\n\n  {authorize}\n\nWaiting for Bitbucket to send the browser back to {redirect} ...",
        if opened {
            "a browser was opened at"
        } else {
            "open"
        }
    );
}

/// Waits for the browser to come back to `listener` with this sign-in's `state`; the code
/// Bitbucket sent, or why there is none.
async fn wait_for_code(
    terminal: &Terminal,
    listener: tokio::net::TcpListener,
    consumer: &Consumer,
    state: &str,
) -> Result<String, Outcome> {
    let Some(mut query) = callback(listener).await else {
        return Err(failed(
            terminal,
            format!("no answer from Bitbucket within {}s", PATIENCE.as_secs()),
        ));
    };
    if query.get("state").map(String::as_str) != Some(state) {
        return Err(failed(
            terminal,
            "the answer did not carry this sign-in's state (a forged or stale redirect); try again",
        ));
    }
    if let Some(error) = query.get("error") {
        return Err(failed(
            terminal,
            format!(
                "Bitbucket did not authorize consumer {}: {error}{}",
                consumer.client_id,
                query
                    .get("error_description")
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            ),
        ));
    }
    query
        .remove("code")
        .ok_or_else(|| failed(terminal, "Bitbucket sent the browser back without a code"))
}

/// Exchanges `code`, with the consumer's secret, for the signed-in user's refresh token,
/// sending it only to the servers `secret` consents to.
async fn exchange_code(
    terminal: &Terminal,
    consumer: &Consumer,
    client_secret: &SecretString,
    code: &str,
    redirect: &Url,
    secret: &Secret,
) -> Result<SecretString, Outcome> {
    let consent = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ALLOWED_SERVERS_ANNOTATION))
        .cloned()
        .unwrap_or_else(|| "cloud".into());
    let transport = TransportConfig {
        allowed: AllowList::from_str(&consent).map_err(|e| failed(terminal, e))?,
        ..TransportConfig::default()
    };
    bitbucket::exchange_code(
        &consumer.api_url,
        &consumer.client_id,
        client_secret,
        code,
        redirect,
        transport,
    )
    .await
    .map_err(|e| failed(terminal, e))
}

/// Serves `/callback` on `listener` until the browser arrives there once; its query.
async fn callback(listener: tokio::net::TcpListener) -> Option<HashMap<String, String>> {
    let (arrived, answer) = oneshot::channel::<HashMap<String, String>>();
    let arrived = Arc::new(Mutex::new(Some(arrived)));
    let app = Router::new().route(
        "/callback",
        get(move |Query(query): Query<HashMap<String, String>>| {
            let arrived = Arc::clone(&arrived);
            async move {
                let page = if query.contains_key("code") {
                    "Signed in to Bitbucket. You can close this window and return to the terminal."
                } else {
                    "Bitbucket did not sign you in; the terminal says why."
                };
                if let Some(arrived) = arrived
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take()
                {
                    let _ = arrived.send(query);
                }
                Html(format!(
                    "<!doctype html><title>kubectl bitbucket</title><p>{page}</p>"
                ))
            }
        }),
    );
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .into_future(),
    );
    let query = tokio::time::timeout(PATIENCE, answer).await.ok()?.ok();
    // The page is sent before the server stops: graceful shutdown finishes requests in flight.
    let _ = stop.send(());
    let _ = server.await;
    query
}

/// Opens `url` in the desktop's browser, where there is a desktop.
fn open_browser(url: &Url) -> bool {
    let program = if cfg!(target_os = "macos") {
        "open"
    } else if std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some()
    {
        "xdg-open"
    } else {
        return false;
    };
    std::process::Command::new(program)
        .arg(url.as_str())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok()
}
