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

/// Condition reasons (PascalCase, also used as Event reasons).
pub mod reasons {
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
    /// The referenced integration exists but is not Ready.
    pub const INTEGRATION_NOT_READY: &str = "IntegrationNotReady";
    /// The workspace does not exist or is not visible to the credential.
    pub const WORKSPACE_NOT_FOUND: &str = "WorkspaceNotFound";
    /// Bitbucket refused access (403) for a reason other than scopes.
    pub const FORBIDDEN: &str = "Forbidden";
    /// Bitbucket answered 5xx, timed out or could not be reached.
    pub const BITBUCKET_UNAVAILABLE: &str = "BitbucketUnavailable";
    /// Bitbucket answered 429; the operator waits as told.
    pub const RATE_LIMITED: &str = "RateLimited";
    /// The Subscription is suspended; nothing is synced.
    pub const SUSPENDED: &str = "Suspended";
    /// The spec combines with another object in a way that cannot work (e.g. a workspace on a
    /// Data Center integration).
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Work is in progress.
    pub const PROGRESSING: &str = "Progressing";
    /// Deletion waits for Subscriptions that still reference the integration.
    pub const DELETION_BLOCKED: &str = "DeletionBlocked";
}
