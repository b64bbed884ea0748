//! "Sign in with Bitbucket": the OAuth 2.0 authorization-code grant as a native app does it
//! (RFC 8252). The plugin listens on a loopback port, sends the person to Bitbucket's authorize
//! page for the consumer they named, receives the code on `http://127.0.0.1:PORT/callback`
//! and exchanges it, with the consumer's secret, for the user's refresh token. Nothing but
//! loopback is listened on.
//!
//! Against forgery (RFC 6749 §10.12): `state` is 256 bits from the operating system's CSPRNG,
//! and only a callback that carries it ends the wait; any other is answered and ignored, so a
//! page that links to the port cannot end or steer the sign-in. Bitbucket Cloud documents no
//! PKCE (`SECURITY.md` says what was found); a code that leaks is of no use without the
//! consumer's secret, which the exchange needs.

use std::{collections::HashMap, net::Ipv4Addr, str::FromStr, sync::Arc, time::Duration};

use axum::{Router, extract::Query, http::StatusCode, response::Html, routing::get};
use k8s_openapi::api::core::v1::Secret;
use secrecy::SecretString;
use tokio::sync::{mpsc, oneshot};
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
    let state = unguessable_state().map_err(|e| failed(terminal, e))?;
    send_to_bitbucket(&consumer, &state, &redirect, browser.open);
    let code = wait_for_code(terminal, listener, &consumer, &state).await?;
    let refresh_token =
        exchange_code(terminal, &consumer, client_secret, &code, &redirect, secret).await?;
    eprintln!("Signed in.");
    Ok(refresh_token)
}

/// A sign-in's `state`: 32 bytes from the operating system's CSPRNG, as 64 hex digits.
fn unguessable_state() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no random numbers from the system: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
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
    let Some(mut query) = callback(listener, state).await else {
        return Err(failed(
            terminal,
            format!("no answer from Bitbucket within {}s", PATIENCE.as_secs()),
        ));
    };
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

/// Serves `/callback` on `listener` until the browser arrives there with `state` (or
/// [`PATIENCE`] runs out); its query. A callback without this state (a stale tab, another
/// sign-in, a page that links here) is answered, said on the terminal, and otherwise ignored.
async fn callback(
    listener: tokio::net::TcpListener,
    state: &str,
) -> Option<HashMap<String, String>> {
    let (arrived, mut answers) = mpsc::channel::<HashMap<String, String>>(1);
    let state: Arc<str> = state.into();
    let app = Router::new().route(
        "/callback",
        get(move |Query(query): Query<HashMap<String, String>>| {
            let (arrived, state) = (arrived.clone(), Arc::clone(&state));
            async move { answer_callback(query, &state, &arrived) }
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
    let query = tokio::time::timeout(PATIENCE, answers.recv()).await.ok()?;
    // The page is sent before the server stops: graceful shutdown finishes requests in flight.
    let _ = stop.send(());
    let _ = server.await;
    query
}

/// The page for one callback; a callback with `state` is handed on (the first only).
fn answer_callback(
    query: HashMap<String, String>,
    state: &str,
    arrived: &mpsc::Sender<HashMap<String, String>>,
) -> (StatusCode, Html<String>) {
    let page = |status, text: &str| {
        let html = format!("<!doctype html><title>kubectl bitbucket</title><p>{text}</p>");
        (status, Html(html))
    };
    if query.get("state").map(String::as_str) != Some(state) {
        eprintln!(
            "Ignored a request to the sign-in's address that did not come from this sign-in \
             (no or another state); still waiting."
        );
        return page(
            StatusCode::BAD_REQUEST,
            "This is not the sign-in kubectl bitbucket is waiting for, so it was ignored. \
             Use the address the terminal shows.",
        );
    }
    let signed_in = query.contains_key("code") && !query.contains_key("error");
    let _ = arrived.try_send(query);
    if signed_in {
        page(
            StatusCode::OK,
            "Signed in to Bitbucket. You can close this window and return to the terminal.",
        )
    } else {
        page(
            StatusCode::OK,
            "Bitbucket did not sign you in; the terminal says why.",
        )
    }
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
