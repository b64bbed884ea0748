//! What tests and benchmarks steer and observe: injected faults, request counters, per-credential
//! rate limits, OAuth token lifetimes and the simulated data. [`Control`] is the Rust handle; the
//! `/_sim/…` HTTP routes (`control_http.rs`) call the same methods. Also holds [`observe`], the
//! middleware every simulated request passes through: authenticate → count → fault → rate limit
//! → handler → product headers. Counters and fault rules hold credential ids, never secrets; log
//! lines name the credential id only. Does no I/O itself apart from the injected latency sleep.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::{MatchedPath, Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use super::{
    Shared,
    auth::{Authentication, Caller, CloudIdentity, Realm},
    fixture::{CloudRepository, DcRepository, Fixture},
    hooks,
    templates::{self, recorded},
    world::{CloudRepositoryChange, Consent, DcRepositoryChange, StateError},
};

/// Largest token-endpoint form the middleware reads.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// How long a rate-limit window is: Bitbucket counts a rolling hour.
const WINDOW: Duration = Duration::from_secs(3600);

/// `X-RateLimit-Limit` for access tokens without a configured limit: the documented base
/// allowance for repository data (API-FACTS §C.2).
const DEFAULT_ACCESS_TOKEN_LIMIT: u32 = 1000;

/// Locks a mutex, ignoring poisoning: every critical section leaves the data consistent, and a
/// panicking test must not take the simulator down with it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A fault to inject into matching requests.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultRule {
    /// Which requests it applies to; everything when empty.
    #[serde(default, rename = "match")]
    pub matcher: FaultMatch,
    /// Answer with this status instead of the real response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Body of that answer (default empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// `Content-Type` of that answer (default: JSON if the body parses as JSON, else text);
    /// without `status`, replaces the real answer's `Content-Type`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// `Retry-After` header value of that answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<String>,
    /// Delay before answering (with or without a replaced status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    /// Let the real handler answer, then cut its body in half so it no longer parses.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub malformed_json: bool,
    /// Let the real handler answer, then put bytes that are not UTF-8 in the middle of its body.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invalid_utf8: bool,
    /// Let the real handler answer, then send its body 16 bytes at a time, this many
    /// milliseconds apart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trickle_ms: Option<u64>,
    /// Answer 200 with a JSON body of (about) this many bytes, sent as fast as it is read and
    /// without a `Content-Length`: a page far larger than any real one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oversize_bytes: Option<u64>,
    /// Let the real handler answer, then point its paging elsewhere: a Cloud page's `next`
    /// becomes this URL; a Data Center page becomes "not last" with `nextPageStart` this number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_page: Option<String>,
    /// Let the real handler answer, then make its paging endless, as a hostile server would: a
    /// Data Center page is never the last and its `nextPageStart` is one past its own start
    /// (past the real repositories, pages are empty); a Cloud page's `next` is the page after
    /// it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub endless_pages: bool,
    /// How many more requests it applies to; until cleared when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<u32>,
}

/// Which requests a [`FaultRule`] applies to. All given conditions must hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultMatch {
    /// HTTP method, e.g. `GET` (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Path prefix, e.g. `/2.0/repositories/acme`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Credential id (or `anonymous` / `invalid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

impl FaultRule {
    /// Answer with `status` (empty body).
    pub fn status(status: u16) -> Self {
        Self {
            status: Some(status),
            ..Self::default()
        }
    }
    /// Delay by `ms` milliseconds, then answer normally.
    pub fn latency(ms: u64) -> Self {
        Self {
            latency_ms: Some(ms),
            ..Self::default()
        }
    }
    /// Answer normally with a truncated body.
    pub fn malformed_json() -> Self {
        Self {
            malformed_json: true,
            ..Self::default()
        }
    }
    /// Answer normally, with bytes that are not UTF-8 in the body.
    pub fn invalid_utf8() -> Self {
        Self {
            invalid_utf8: true,
            ..Self::default()
        }
    }
    /// Answer normally, 16 bytes every `ms` milliseconds.
    pub fn trickle(ms: u64) -> Self {
        Self {
            trickle_ms: Some(ms),
            ..Self::default()
        }
    }
    /// Answer 200 with a JSON body of about `bytes` bytes.
    pub fn oversize(bytes: u64) -> Self {
        Self {
            oversize_bytes: Some(bytes),
            ..Self::default()
        }
    }
    /// Answer normally, with the page's next link (Cloud) or next start (Data Center) replaced.
    pub fn next_page(next: &str) -> Self {
        Self {
            next_page: Some(next.to_owned()),
            ..Self::default()
        }
    }
    /// Answer normally, with paging that never ends (see [`FaultRule::endless_pages`]).
    pub fn endless_pages() -> Self {
        Self {
            endless_pages: true,
            ..Self::default()
        }
    }
    /// Answer normally, with this `Content-Type`.
    pub fn content_type(content_type: &str) -> Self {
        Self {
            content_type: Some(content_type.to_owned()),
            ..Self::default()
        }
    }
    /// Sets the body and its content type.
    pub fn with_body(mut self, content_type: &str, body: &str) -> Self {
        self.content_type = Some(content_type.to_owned());
        self.body = Some(body.to_owned());
        self
    }
    /// Sets `Retry-After`.
    pub fn with_retry_after(mut self, value: &str) -> Self {
        self.retry_after = Some(value.to_owned());
        self
    }
    /// Applies only to paths starting with `prefix`.
    pub fn on_path(mut self, prefix: &str) -> Self {
        self.matcher.path_prefix = Some(prefix.to_owned());
        self
    }
    /// Applies only to this method.
    pub fn on_method(mut self, method: &str) -> Self {
        self.matcher.method = Some(method.to_owned());
        self
    }
    /// Applies only to requests made with this credential id.
    pub fn for_credential(mut self, id: &str) -> Self {
        self.matcher.credential = Some(id.to_owned());
        self
    }
    /// Applies to the next `n` matching requests only.
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    fn matches(&self, method: &str, path: &str, credential: &str) -> bool {
        let m = &self.matcher;
        m.method
            .as_deref()
            .is_none_or(|wanted| wanted.eq_ignore_ascii_case(method))
            && m.path_prefix
                .as_deref()
                .is_none_or(|prefix| path.starts_with(prefix))
            && m.credential.as_deref().is_none_or(|id| id == credential)
    }
}

/// A fault rule in force, with the id it was given and its remaining `times`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActiveFault {
    /// Assigned when added.
    pub id: u64,
    /// The rule (its `times` counts down).
    #[serde(flatten)]
    pub rule: FaultRule,
}

/// Requests seen since the last reset (control routes excluded).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counters {
    /// All requests.
    pub total: u64,
    /// By `METHOD route-template`, e.g. `GET /2.0/repositories/{workspace}`; requests matching
    /// no route count under `METHOD (unmatched)`.
    pub by_endpoint: BTreeMap<String, u64>,
    /// By credential id, `anonymous` or `invalid`.
    pub by_credential: BTreeMap<String, u64>,
    /// By credential id, then by endpoint as in `by_endpoint` with the answer's status
    /// (`GET /2.0/user 200`; injected answers included).
    #[serde(default)]
    pub by_credential_endpoint: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Counters {
    /// Requests to one endpoint (`"GET /2.0/user"`), 0 when none.
    pub fn endpoint(&self, key: &str) -> u64 {
        self.by_endpoint.get(key).copied().unwrap_or(0)
    }
    /// Requests made with one credential id, 0 when none.
    pub fn credential(&self, id: &str) -> u64 {
        self.by_credential.get(id).copied().unwrap_or(0)
    }
    /// Requests made with one credential id that were answered `status` (e.g. 429).
    pub fn answered(&self, id: &str, status: u16) -> u64 {
        let suffix = format!(" {status}");
        (self.by_credential_endpoint.get(id).into_iter().flatten())
            .filter(|(endpoint, _)| endpoint.ends_with(&suffix))
            .map(|(_, n)| n)
            .sum()
    }
}

#[derive(Debug, Default)]
pub(crate) struct Faults {
    next_id: u64,
    rules: Vec<ActiveFault>,
}

impl Faults {
    /// The first rule matching the request, consuming one of its `times`.
    fn take(&mut self, method: &str, path: &str, credential: &str) -> Option<FaultRule> {
        let index = self
            .rules
            .iter()
            .position(|f| f.rule.matches(method, path, credential))?;
        let fault = &mut self.rules[index];
        let rule = fault.rule.clone();
        if let Some(times) = &mut fault.rule.times {
            *times = times.saturating_sub(1);
            if *times == 0 {
                self.rules.remove(index);
            }
        }
        Some(rule)
    }
}

/// Rolling-hour request windows per credential, and limits set at run time.
#[derive(Debug, Default)]
pub(crate) struct RateLimits {
    /// Per credential id: `Some(n)` overrides the fixture, `None` removes its limit.
    overrides: HashMap<String, Option<u32>>,
    windows: HashMap<String, VecDeque<Instant>>,
    /// The window limits count in, when not an hour (benchmarks that speed time up).
    window: Option<Duration>,
}

enum Admission {
    Allowed { used: u32 },
    Refused { retry_after: Duration },
}

impl RateLimits {
    fn effective(&self, id: &str, configured: Option<u32>) -> Option<u32> {
        self.overrides.get(id).copied().unwrap_or(configured)
    }

    fn admit(&mut self, id: &str, limit: Option<u32>, now: Instant) -> Admission {
        let length = self.window.unwrap_or(WINDOW);
        let window = self.windows.entry(id.to_owned()).or_default();
        while window
            .front()
            .is_some_and(|t| now.duration_since(*t) >= length)
        {
            window.pop_front();
        }
        let used = u32::try_from(window.len()).unwrap_or(u32::MAX);
        if let Some(limit) = limit
            && used >= limit
        {
            let oldest = window.front().copied().unwrap_or(now);
            return Admission::Refused {
                retry_after: length.saturating_sub(now.duration_since(oldest)),
            };
        }
        window.push_back(now);
        Admission::Allowed { used: used + 1 }
    }
}

/// Steers and observes a running simulator. Cheap to clone; all clones act on the same server.
#[derive(Clone)]
pub struct Control {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("origin", &self.shared.origin)
            .finish_non_exhaustive()
    }
}

impl Control {
    /// A snapshot of the request counters.
    pub fn counters(&self) -> Counters {
        lock(&self.shared.counters).clone()
    }

    /// Zeroes the request counters.
    pub fn reset_counters(&self) {
        *lock(&self.shared.counters) = Counters::default();
    }

    /// Adds a fault rule after the existing ones; returns its id.
    pub fn add_fault(&self, rule: FaultRule) -> u64 {
        let mut faults = lock(&self.shared.faults);
        faults.next_id += 1;
        let id = faults.next_id;
        faults.rules.push(ActiveFault { id, rule });
        id
    }

    /// The rules in force, in the order they are tried.
    pub fn faults(&self) -> Vec<ActiveFault> {
        lock(&self.shared.faults).rules.clone()
    }

    /// Removes every fault rule.
    pub fn clear_faults(&self) {
        lock(&self.shared.faults).rules.clear();
    }

    /// The current data (generators expanded, changes applied).
    pub fn fixture(&self) -> Fixture {
        lock(&self.shared.world).fixture.clone()
    }

    /// Replaces all data. Issued OAuth tokens stay valid while their consumer exists.
    pub fn replace_fixture(&self, fixture: Fixture) -> Result<(), StateError> {
        lock(&self.shared.world).replace_fixture(fixture)
    }

    /// Adds a Cloud repository at the end of the workspace's listing (`updated_on` now unless
    /// set); its workspace's hooks get `repo:created`.
    pub fn add_cloud_repository(
        &self,
        workspace: &str,
        repo: CloudRepository,
    ) -> Result<(), StateError> {
        let slug = repo.slug.clone();
        let mut world = lock(&self.shared.world);
        world.add_cloud_repository(workspace, repo)?;
        let told = hooks::cloud_event(&world, workspace, &slug, "repo:created", None);
        drop(world);
        self.tell_workspace("repo:created", told);
        Ok(())
    }

    /// Renames or otherwise changes a Cloud repository; bumps its `updated_on`. Its workspace's
    /// hooks get `repo:updated` (with the old full name when renamed).
    pub fn change_cloud_repository(
        &self,
        workspace: &str,
        slug: &str,
        change: CloudRepositoryChange,
    ) -> Result<(), StateError> {
        let after = change.slug.clone().unwrap_or_else(|| slug.to_owned());
        let mut world = lock(&self.shared.world);
        let before =
            (world.fixture.cloud.workspace(workspace)).map(|w| format!("{}/{slug}", w.slug));
        world.change_cloud_repository(workspace, slug, change)?;
        let renamed = before.filter(|_| after != slug);
        let told = hooks::cloud_event(
            &world,
            workspace,
            &after,
            "repo:updated",
            renamed.as_deref(),
        );
        drop(world);
        self.tell_workspace("repo:updated", told);
        Ok(())
    }

    /// A push to a Cloud repository's main branch: bumps its `updated_on`; its workspace's hooks
    /// get `repo:push`.
    pub fn push_cloud_repository(&self, workspace: &str, slug: &str) -> Result<(), StateError> {
        let mut world = lock(&self.shared.world);
        world.change_cloud_repository(workspace, slug, CloudRepositoryChange::default())?;
        let told = hooks::cloud_event(&world, workspace, slug, "repo:push", None);
        drop(world);
        self.tell_workspace("repo:push", told);
        Ok(())
    }

    /// Deletes a Cloud repository; its workspace's hooks get `repo:deleted`.
    pub fn delete_cloud_repository(&self, workspace: &str, slug: &str) -> Result<(), StateError> {
        let mut world = lock(&self.shared.world);
        let told = hooks::cloud_event(&world, workspace, slug, "repo:deleted", None);
        world.delete_cloud_repository(workspace, slug)?;
        drop(world);
        self.tell_workspace("repo:deleted", told);
        Ok(())
    }

    /// Adds a Data Center repository (id assigned unless set). Data Center has no webhook event
    /// for a new repository: nothing is delivered.
    pub fn add_dc_repository(&self, project: &str, repo: DcRepository) -> Result<(), StateError> {
        lock(&self.shared.world).add_dc_repository(project, repo)
    }

    /// Renames or otherwise changes a Data Center repository; a rename gives its project's
    /// hooks `repo:modified` (Data Center sends nothing for its other settings).
    pub fn change_dc_repository(
        &self,
        project: &str,
        slug: &str,
        change: DcRepositoryChange,
    ) -> Result<(), StateError> {
        let renamed = change.slug.as_deref().is_some_and(|s| s != slug) || change.name.is_some();
        let after = change.slug.clone().unwrap_or_else(|| slug.to_owned());
        let origin = &self.shared.origin;
        let mut world = lock(&self.shared.world);
        let before = hooks::dc_event_repository(&world, origin, project, slug);
        world.change_dc_repository(project, slug, change)?;
        let told = renamed
            .then(|| hooks::dc_event(&world, origin, project, &after, "repo:modified", before))
            .flatten();
        drop(world);
        self.tell_project("repo:modified", told);
        Ok(())
    }

    /// A push to a Data Center repository's default branch: its project's hooks get
    /// `repo:refs_changed`.
    pub fn push_dc_repository(&self, project: &str, slug: &str) -> Result<(), StateError> {
        let world = lock(&self.shared.world);
        let origin = &self.shared.origin;
        let told = hooks::dc_event(&world, origin, project, slug, "repo:refs_changed", None);
        drop(world);
        match told {
            Some(told) => {
                self.tell_project("repo:refs_changed", Some(told));
                Ok(())
            }
            None => Err(StateError::NotFound {
                kind: "repository",
                name: format!("{project}/{slug}"),
            }),
        }
    }

    /// Deletes a Data Center repository (Data Center has no webhook event for it).
    pub fn delete_dc_repository(&self, project: &str, slug: &str) -> Result<(), StateError> {
        lock(&self.shared.world).delete_dc_repository(project, slug)
    }

    fn tell_workspace(&self, event: &str, told: Option<(String, serde_json::Value)>) {
        if let Some((workspace, body)) = told {
            hooks::deliver(
                &self.shared,
                hooks::Owner::Workspace(&workspace),
                event,
                &body,
            );
        }
    }

    fn tell_project(&self, event: &str, told: Option<(String, serde_json::Value)>) {
        if let Some((project, body)) = told {
            hooks::deliver(&self.shared, hooks::Owner::Project(&project), event, &body);
        }
    }

    /// The hooks registered so far (Cloud workspace hooks and Data Center project hooks).
    pub fn hooks(&self) -> Vec<hooks::RegisteredHook> {
        lock(&self.shared.hooks).registered()
    }

    /// Deletes hook `id` as a person in Bitbucket's settings would; whether it existed.
    pub fn remove_hook(&self, id: &str) -> bool {
        lock(&self.shared.hooks).remove(id)
    }

    /// The deliveries sent so far, each with its last answer.
    pub fn deliveries(&self) -> Vec<hooks::Delivery> {
        lock(&self.shared.hooks).deliveries.clone()
    }

    /// The events `GET /2.0/hook_events/workspace` lists (and workspace hooks accept).
    pub fn set_workspace_hook_events(&self, events: &[&str]) {
        lock(&self.shared.hooks).workspace_events =
            events.iter().map(|e| (*e).to_owned()).collect();
    }

    /// Makes every OAuth access token issued so far expired (refresh tokens stay usable).
    pub fn expire_oauth_tokens(&self) {
        let past = Timestamp::now() - SignedDuration::from_secs(1);
        let mut world = lock(&self.shared.world);
        for token in world.oauth.access_tokens.values_mut() {
            token.expires_at = past;
        }
    }

    /// Sets the lifetime (`expires_in`) of tokens issued from now on, for every consumer;
    /// `None` returns to each consumer's configured lifetime.
    pub fn set_oauth_token_lifetime(&self, seconds: Option<u64>) {
        lock(&self.shared.world).oauth.lifetime_override = seconds;
    }

    /// How long a refresh token keeps working after a grant rotated it out (0: not at all, the
    /// default). Bitbucket retires it "shortly after"; a grace lets a client that crashed between
    /// the grant and saving the new token come back with the old one.
    pub fn set_refresh_token_grace(&self, seconds: u64) {
        lock(&self.shared.world).oauth.refresh_grace_seconds = seconds;
    }

    /// Every OAuth access and refresh token issued so far, current or not: for a test to check
    /// that none reaches a log, a status or an Event (a fixture's secrets are known in advance;
    /// these are not).
    pub fn issued_tokens(&self) -> Vec<String> {
        let world = lock(&self.shared.world);
        let oauth = &world.oauth;
        (oauth.access_tokens.keys())
            .chain(oauth.refresh_tokens.keys())
            .chain(oauth.rotated_out_at.keys())
            .cloned()
            .collect()
    }

    /// Why refresh-token grants were refused so far: the consumer id and whether the token was
    /// rotated out (and how long ago) or never issued. No secrets.
    pub fn oauth_refusals(&self) -> Vec<String> {
        lock(&self.shared.world).oauth.refusals.clone()
    }

    /// Removes one fault rule; false when it is not in force (any more).
    pub fn remove_fault(&self, id: u64) -> bool {
        let mut faults = lock(&self.shared.faults);
        let before = faults.rules.len();
        faults.rules.retain(|f| f.id != id);
        faults.rules.len() != before
    }

    /// What the person at the authorize page does from now on (`/site/oauth2/authorize`).
    pub fn set_oauth_consent(&self, consent: Consent) {
        lock(&self.shared.world).oauth.consent = consent;
    }

    /// Revokes a credential (Cloud or Data Center; an OAuth consumer with every token it issued):
    /// from now on it gets the product's 401, counted under its id. Returns whether it exists.
    pub fn revoke_credential(&self, id: &str) -> bool {
        let past = Timestamp::now() - SignedDuration::from_secs(1);
        lock(&self.shared.world).set_credential_expiry(id, Some(past.to_string()))
    }

    /// Undoes [`Control::revoke_credential`] (and any expiry the fixture gave it).
    pub fn restore_credential(&self, id: &str) -> bool {
        lock(&self.shared.world).set_credential_expiry(id, None)
    }

    /// Sets a credential's hourly limit (`None`: unlimited), overriding the fixture.
    pub fn set_rate_limit(&self, credential_id: &str, per_hour: Option<u32>) {
        lock(&self.shared.limits)
            .overrides
            .insert(credential_id.to_owned(), per_hour);
    }

    /// Counts rate limits over `window` instead of an hour, for benchmarks that speed time up
    /// (a limit set is then per `window`).
    pub fn set_rate_window(&self, window: Duration) {
        lock(&self.shared.limits).window = Some(window);
    }

    /// Forgets all requests counted towards rate limits (every credential starts a new hour).
    pub fn reset_rate_limit_windows(&self) {
        lock(&self.shared.limits).windows.clear();
    }
}

/// The middleware around every route: see the module documentation.
pub(crate) async fn observe(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_owned();
    let realm = Realm::of(&path);
    if realm == Realm::Other && path.starts_with("/_sim") {
        return next.run(request).await;
    }
    let method = request.method().as_str().to_owned();
    let endpoint = request.extensions().get::<MatchedPath>().map_or_else(
        || format!("{method} (unmatched)"),
        |m| format!("{method} {}", m.as_str()),
    );
    // The token endpoint may name its consumer in the form body rather than in HTTP Basic;
    // read the (small) body once and hand it on unchanged.
    let (request, form_client_id) = if realm == Realm::OAuth {
        let (parts, body) = request.into_parts();
        let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
            .await
            .unwrap_or_default();
        let client_id = url::form_urlencoded::parse(&bytes)
            .find(|(key, _)| key == "client_id")
            .map(|(_, value)| value.into_owned());
        (Request::from_parts(parts, Body::from(bytes)), client_id)
    } else {
        (request, None)
    };
    let authn =
        lock(&shared.world).authenticate(realm, request.headers(), form_client_id.as_deref());
    {
        let mut counters = lock(&shared.counters);
        counters.total += 1;
        *counters.by_endpoint.entry(endpoint.clone()).or_default() += 1;
        *counters
            .by_credential
            .entry(authn.credential_id.clone())
            .or_default() += 1;
    }
    tracing::debug!(%endpoint, credential = %authn.credential_id, "simulated request");

    let response = answer(&shared, request, next, &method, &path, &authn, realm).await;
    let mut counters = lock(&shared.counters);
    *counters
        .by_credential_endpoint
        .entry(authn.credential_id.clone())
        .or_default()
        .entry(format!("{endpoint} {}", response.status().as_u16()))
        .or_default() += 1;
    drop(counters);
    response
}

/// The answer to a counted request: a fault's, a rate limit's or the handler's.
async fn answer(
    shared: &Arc<Shared>,
    request: Request,
    next: Next,
    method: &str,
    path: &str,
    authn: &Authentication,
    realm: Realm,
) -> Response {
    let fault = lock(&shared.faults).take(method, path, &authn.credential_id);
    if let Some(ms) = fault.as_ref().and_then(|f| f.latency_ms) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(fault) = &fault
        && let Some(status) = fault.status
    {
        return fault_response(status, fault);
    }
    if let Some(bytes) = fault.as_ref().and_then(|f| f.oversize_bytes) {
        return oversize(bytes);
    }

    let (limit, used) = {
        let mut limits = lock(&shared.limits);
        let limit = limits.effective(&authn.credential_id, authn.rate_limit_per_hour);
        let counted = !matches!(authn.caller, Caller::Anonymous | Caller::Rejected(_))
            || realm == Realm::OAuth && authn.credential_id != super::auth::ANONYMOUS;
        if counted {
            match limits.admit(&authn.credential_id, limit, Instant::now()) {
                Admission::Allowed { used } => (limit, used),
                Admission::Refused { retry_after } => {
                    drop(limits);
                    let mut response = rate_limited(realm, retry_after);
                    add_product_headers(&mut response, authn, limit, limit.unwrap_or(0));
                    return response;
                }
            }
        } else {
            (limit, 0)
        }
    };

    let mut request = request;
    request.extensions_mut().insert(authn.clone());
    let endless_from = fault
        .as_ref()
        .filter(|f| f.endless_pages)
        .map(|_| page_after(&request));
    let mut response = next.run(request).await;
    add_product_headers(&mut response, authn, limit, used);
    if let Some(fault) = fault {
        response = mangle(response, &fault).await;
    }
    if let Some(next) = endless_from {
        response = mangle(response, &FaultRule::next_page(&next)).await;
    }
    response
}

/// What follows the page `request` asks for: the Data Center start one past its own (`start`),
/// or the Cloud URL (on the origin it was asked at, over plain HTTP) of the next page number.
fn page_after(request: &Request) -> String {
    let uri = request.uri();
    let query: Vec<(String, String)> =
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let number = |key: &str| {
        query
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.parse::<u64>().ok())
    };
    if uri.path().contains("/rest/api/") {
        return (number("start").unwrap_or(0) + 1).to_string();
    }
    let page = number("page").unwrap_or(1) + 1;
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    let mut next = url::Url::parse(&format!("http://{host}")).expect("a host header is a host");
    next.set_path(uri.path());
    next.query_pairs_mut()
        .extend_pairs(query.iter().filter(|(k, _)| k != "page"))
        .append_pair("page", &page.to_string());
    next.into()
}

/// Applies the rule's changes to a real answer: its body cut, made invalid UTF-8, re-pointed,
/// re-labelled or trickled.
async fn mangle(response: Response, fault: &FaultRule) -> Response {
    let changes_body = fault.malformed_json || fault.invalid_utf8 || fault.next_page.is_some();
    if !changes_body && fault.trickle_ms.is_none() && fault.content_type.is_none() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let mut bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default()
        .to_vec();
    if changes_body {
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.remove(header::ETAG);
    }
    if let Some(next) = &fault.next_page {
        bytes = repoint(&bytes, next);
    }
    if fault.malformed_json {
        bytes.truncate(bytes.len() / 2);
    }
    if fault.invalid_utf8 {
        let middle = bytes.len() / 2;
        bytes.splice(middle..middle, [0xff, 0xfe, 0xc3]);
    }
    if let Some(value) = fault
        .content_type
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        parts.headers.insert(header::CONTENT_TYPE, value);
    }
    let body = match fault.trickle_ms {
        Some(ms) => trickled(bytes, Duration::from_millis(ms)),
        None => Body::from(bytes),
    };
    Response::from_parts(parts, body)
}

/// A page whose paging points at `next`: Cloud's `next` link, or Data Center's `nextPageStart`
/// (with `isLastPage` false). Other bodies are left as they are.
fn repoint(bytes: &[u8], next: &str) -> Vec<u8> {
    let Ok(serde_json::Value::Object(mut page)) = serde_json::from_slice(bytes) else {
        return bytes.to_vec();
    };
    if page.contains_key("isLastPage") {
        let Ok(start) = next.parse::<u64>() else {
            return bytes.to_vec();
        };
        page.insert("isLastPage".into(), false.into());
        page.insert("nextPageStart".into(), start.into());
    } else if page.contains_key("values") {
        page.insert("next".into(), next.into());
    }
    serde_json::to_vec(&page).unwrap_or_else(|_| bytes.to_vec())
}

/// `bytes` sent 16 at a time, `gap` apart.
fn trickled(bytes: Vec<u8>, gap: Duration) -> Body {
    let chunks: Vec<Vec<u8>> = bytes.chunks(16).map(<[u8]>::to_vec).collect();
    let stream = futures_util::stream::unfold(chunks.into_iter(), move |mut chunks| async move {
        let chunk = chunks.next()?;
        tokio::time::sleep(gap).await;
        Some((Ok::<_, std::io::Error>(chunk), chunks))
    });
    Body::from_stream(stream)
}

/// A 200 JSON answer of about `size` bytes (one huge string inside a page), streamed.
fn oversize(size: u64) -> Response {
    const CHUNK: usize = 64 * 1024;
    let filler = vec![b'x'; CHUNK];
    let chunks = size.div_ceil(CHUNK as u64);
    let head = futures_util::stream::once(async {
        Ok::<_, std::io::Error>(b"{\"values\":[],\"filler\":\"".to_vec())
    });
    let middle = futures_util::stream::iter((0..chunks).map(move |_| Ok(filler.clone())));
    let tail = futures_util::stream::once(async { Ok(b"\"}".to_vec()) });
    let stream = futures_util::StreamExt::chain(futures_util::StreamExt::chain(head, middle), tail);
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response()
}

fn fault_response(status: u16, fault: &FaultRule) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = fault.body.clone().unwrap_or_default();
    let content_type = fault.content_type.clone().unwrap_or_else(|| {
        if serde_json::from_str::<serde_json::Value>(&body).is_ok() {
            "application/json; charset=utf-8".to_owned()
        } else {
            "text/plain; charset=utf-8".to_owned()
        }
    });
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    if let Some(value) = fault
        .retry_after
        .as_deref()
        .and_then(|v| HeaderValue::from_str(v).ok())
    {
        headers.insert(header::RETRY_AFTER, value);
    }
    response
}

/// The 429 of each product: Cloud sends `text/plain` and no `Retry-After` (API-FACTS §C.2–C.3);
/// Data Center sends `Retry-After` in seconds (§D.7) with an errors body (its text UNCERTAIN).
fn rate_limited(realm: Realm, retry_after: Duration) -> Response {
    match realm {
        Realm::DataCenter => {
            let body = templates::dc_error(
                recorded::DC_ERROR_404_NO_SUCH_PROJECT,
                "You have been rate limited. Wait a moment and try again.",
                "com.atlassian.bitbucket.throttle.RateLimitedException",
            );
            let seconds = retry_after.as_secs().max(1).to_string();
            (
                StatusCode::TOO_MANY_REQUESTS,
                [
                    (
                        header::CONTENT_TYPE,
                        "application/json;charset=UTF-8".to_owned(),
                    ),
                    (header::RETRY_AFTER, seconds),
                ],
                templates::dc_bytes(&body),
            )
                .into_response()
        }
        _ => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::CONTENT_TYPE, "text/plain")],
            recorded::CLOUD_RATE_LIMITED,
        )
            .into_response(),
    }
}

/// Headers that depend on who called, not on the endpoint.
fn add_product_headers(
    response: &mut Response,
    authn: &Authentication,
    limit: Option<u32>,
    used: u32,
) {
    let headers: &mut HeaderMap = response.headers_mut();
    let mut set = |name: &'static str, value: String| {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    };
    match &authn.caller {
        Caller::Cloud(caller) => {
            set("x-oauth-scopes", caller.scopes.join(", "));
            set("x-credential-type", caller.credential_type.clone());
            // Only access tokens get rate-limit headers (API-FACTS §C.3).
            if matches!(caller.identity, CloudIdentity::AccessToken { .. }) {
                let limit = limit.unwrap_or(DEFAULT_ACCESS_TOKEN_LIMIT);
                // NearLimit's exact semantics are undocumented (UNCERTAIN): true once 80% is used.
                let near = u64::from(used) * 5 >= u64::from(limit) * 4;
                set("x-ratelimit-limit", limit.to_string());
                set("x-ratelimit-resource", "api".to_owned());
                set("x-ratelimit-nearlimit", near.to_string());
            }
        }
        Caller::DataCenter(caller) => {
            set("x-ausername", caller.username.clone());
            set("x-auserid", caller.user_id.to_string());
        }
        Caller::Anonymous | Caller::Rejected(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fault_with_times_stops_applying_after_its_count() {
        let mut faults = Faults::default();
        faults.rules.push(ActiveFault {
            id: 1,
            rule: FaultRule::status(503).times(2),
        });
        assert!(faults.take("GET", "/2.0/user", "x").is_some());
        assert!(faults.take("GET", "/2.0/user", "x").is_some());
        assert!(faults.take("GET", "/2.0/user", "x").is_none());
    }

    #[test]
    fn a_fault_matches_only_its_method_path_and_credential() {
        let rule = FaultRule::status(500)
            .on_method("get")
            .on_path("/2.0/repositories")
            .for_credential("ci");
        assert!(rule.matches("GET", "/2.0/repositories/acme", "ci"));
        assert!(!rule.matches("POST", "/2.0/repositories/acme", "ci"));
        assert!(!rule.matches("GET", "/2.0/user", "ci"));
        assert!(!rule.matches("GET", "/2.0/repositories/acme", "other"));
    }

    #[test]
    fn a_rate_limit_refuses_the_request_after_the_limit_and_says_when_to_retry() {
        let mut limits = RateLimits::default();
        let start = Instant::now();
        for _ in 0..3 {
            assert!(matches!(
                limits.admit("t", Some(3), start),
                Admission::Allowed { .. }
            ));
        }
        let later = start + Duration::from_secs(600);
        match limits.admit("t", Some(3), later) {
            Admission::Refused { retry_after } => {
                assert_eq!(retry_after, Duration::from_secs(3000))
            }
            Admission::Allowed { .. } => panic!("the fourth request in an hour must be refused"),
        }
        let next_hour = start + WINDOW;
        assert!(matches!(
            limits.admit("t", Some(3), next_hour),
            Admission::Allowed { used: 1 }
        ));
    }
}
