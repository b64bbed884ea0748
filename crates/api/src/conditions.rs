//! Condition types and reasons, in one place, so the controllers, Events, tests and docs agree.
//! kstatus-compatible: `Ready`, `Reconciling` (present only while True), `Stalled` (present only
//! while True), plus the abnormal-true `DeletionBlocked` on integrations.

/// True when the object is fully reconciled and usable.
pub const READY: &str = "Ready";
/// True only while work is in progress.
pub const RECONCILING: &str = "Reconciling";
/// True only when no progress is possible without a change by the user.
pub const STALLED: &str = "Stalled";
/// Integration only: True while deletion waits for the Subscriptions that use it.
pub const DELETION_BLOCKED: &str = "DeletionBlocked";
/// Integration only: True from 7 days before the credential's known expiry (the message gives
/// the date); absent otherwise. `Ready` stays True until Bitbucket refuses the credential.
pub const CREDENTIAL_EXPIRING: &str = "CredentialExpiring";
/// Integration only, with `spec.webhook.register`: whether its hooks are in place in Bitbucket.
/// It never changes `Ready`: without hooks, lists refresh at their interval.
pub const WEBHOOKS_REGISTERED: &str = "WebhooksRegistered";

/// Condition reasons (PascalCase, also used as Event reasons).
pub mod reasons {
    /// The credential expires within 7 days (`CredentialExpiring`), or within 30, 7 or 1 days
    /// (the Warning Events).
    pub const CREDENTIAL_EXPIRING: &str = "CredentialExpiring";
    /// Bitbucket refused the credential after the date it was known to expire.
    pub const CREDENTIAL_EXPIRED: &str = "CredentialExpired";
    /// The Secret's `scm.shippable.io/expires-at` is not an RFC 3339 time.
    pub const EXPIRY_NOT_UNDERSTOOD: &str = "ExpiryNotUnderstood";
    /// Every hook the integration wants is in place (the message names the events Bitbucket
    /// would not carry, if any).
    pub const WEBHOOKS_REGISTERED: &str = "WebhooksRegistered";
    /// The credential may not manage hooks: it lacks the scope the message names.
    pub const WEBHOOK_SCOPE_MISSING: &str = "WebhookScopeMissing";
    /// Bitbucket refused to let the credential manage hooks (not a workspace owner or project
    /// administrator).
    pub const WEBHOOK_NOT_PERMITTED: &str = "WebhookNotPermitted";
    /// The operator was not told where Bitbucket reaches it (`--webhook-url`).
    pub const WEBHOOK_URL_NOT_SET: &str = "WebhookUrlNotSet";
    /// A hook could not be made for another reason (the message says which).
    pub const WEBHOOK_FAILED: &str = "WebhookFailed";
    /// The credential authenticated and its identity is in status.
    pub const VALIDATED: &str = "Validated";
    /// The repository list in status is current.
    pub const SYNCED: &str = "Synced";
    /// Bitbucket refused the credential (401).
    pub const INVALID_CREDENTIALS: &str = "InvalidCredentials";
    /// The credential lacks a scope the operation needs (403 with scope detail).
    pub const INSUFFICIENT_SCOPES: &str = "InsufficientScopes";
    /// The referenced Secret does not exist.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// The referenced Secret lacks a key the credential type needs.
    pub const SECRET_KEY_MISSING: &str = "SecretKeyMissing";
    /// The referenced integration does not exist.
    pub const INTEGRATION_NOT_FOUND: &str = "IntegrationNotFound";
    /// The referenced integration is in another shard (`scm.shippable.io/shard`) than the
    /// Subscription: no operator owns both, so label them alike.
    pub const INTEGRATION_IN_ANOTHER_SHARD: &str = "IntegrationInAnotherShard";
    /// The referenced integration exists but is not Ready.
    pub const INTEGRATION_NOT_READY: &str = "IntegrationNotReady";
    /// The workspace does not exist or is not visible to the credential.
    pub const WORKSPACE_NOT_FOUND: &str = "WorkspaceNotFound";
    /// Bitbucket refused access (403) for a reason other than scopes.
    pub const FORBIDDEN: &str = "Forbidden";
    /// Bitbucket answered 5xx, timed out or could not be reached.
    pub const BITBUCKET_UNAVAILABLE: &str = "BitbucketUnavailable";
    /// A listing passed one of the operator's bounds (`--max-repositories`, and the pages and
    /// bytes it implies, or `--listing-deadline`); the last good list is kept.
    pub const LISTING_TOO_LARGE: &str = "ListingTooLarge";
    /// Bitbucket's paging does not add up: a `next` link elsewhere or back, an offset that does
    /// not advance, pages that bring nothing yet are not the last. The last good list is kept.
    pub const BITBUCKET_MISBEHAVES: &str = "BitbucketMisbehaves";
    /// Bitbucket answered 429; the operator waits as told.
    pub const RATE_LIMITED: &str = "RateLimited";
    /// The credential's request budget has no room now (`spec.requestBudget`): nothing was
    /// sent, and the call is made when there is room.
    pub const REQUEST_BUDGET_SPENT: &str = "RequestBudgetSpent";
    /// A Subscription never listed waits for its turn in its integration's request budget
    /// (`Reconciling`).
    pub const WAITING_FOR_REQUEST_BUDGET: &str = "WaitingForRequestBudget";
    /// A Subscription is synced less often than its `syncInterval`, which its integration's
    /// request budget cannot keep for all of its Subscriptions (an Event; the interval kept is
    /// `status.stretchedSyncInterval`).
    pub const SYNC_INTERVAL_STRETCHED: &str = "SyncIntervalStretched";
    /// The Subscription is suspended (`Ready` True: the state asked for); the last list is
    /// kept and not refreshed.
    pub const SUSPENDED: &str = "Suspended";
    /// The spec combines with another object in a way that cannot work (e.g. a workspace on a
    /// Data Center integration).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// The integration's server (or its OAuth token endpoint) is not one its credential may be
    /// sent to: not in the operator's allowed servers, not consented to by the Secret, or at an
    /// address the operator refuses. Nothing was sent.
    pub const SERVER_NOT_ALLOWED: &str = "ServerNotAllowed";
    /// An `OAuthUser` credential's Secret does not let the operator save the refresh tokens
    /// Bitbucket rotates (it lacks the label that allows it), so it is not used.
    pub const SECRET_NOT_WRITABLE: &str = "SecretNotWritable";
    /// Bitbucket rotated an `OAuthUser` refresh token and saving it to the Secret failed; it
    /// is held and saved again before anything else.
    pub const REFRESH_TOKEN_NOT_SAVED: &str = "RefreshTokenNotSaved";
    /// Work is in progress (`Reconciling`): a first validation, a listing asked for.
    pub const PROGRESSING: &str = "Progressing";
    /// Work failed for now and is retried with backoff (`Reconciling`, after Flux's
    /// `ProgressingWithRetry`).
    pub const PROGRESSING_WITH_RETRY: &str = "ProgressingWithRetry";
    /// The API server failed a request (metrics and logs only: such a failure cannot be written
    /// to status).
    pub const KUBERNETES_ERROR: &str = "KubernetesError";
    /// The last Subscription using an integration being deleted went; the integration goes too
    /// (an Event).
    pub const DELETION_RELEASED: &str = "DeletionReleased";
    /// Deletion waits for Subscriptions that still reference the integration.
    pub const DELETION_BLOCKED: &str = "DeletionBlocked";
    /// A listing succeeded but writing its RepositorySlices failed: readers keep serving the
    /// last complete list, and the writes are retried with backoff.
    pub const SLICES_NOT_WRITTEN: &str = "SlicesNotWritten";
}
