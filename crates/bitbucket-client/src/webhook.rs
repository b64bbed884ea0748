//! Bitbucket's webhook deliveries: the signature that proves a delivery came from whoever holds
//! the hook's secret, and what a payload says changed — one repository, or the set of
//! repositories of a workspace or project. Read leniently: only the fields needed, everything
//! else ignored; a payload that lacks them asks for a re-list rather than failing. Written from
//! the recorded deliveries in `testdata/bitbucket/webhooks/` (its README cites the sources for
//! headers, keys and the signature scheme). No I/O.

use serde::Deserialize;

/// The header carrying `sha256=<lowercase hex HMAC-SHA256 of the raw body>`, keyed with the
/// hook's secret (Cloud and Data Center alike).
pub const SIGNATURE_HEADER: &str = "X-Hub-Signature";
/// The header naming the event, e.g. `repo:push` (Cloud) or `repo:refs_changed` (Data Center).
pub const EVENT_HEADER: &str = "X-Event-Key";
/// The header naming one delivery, the same on each retry: Cloud's `X-Request-UUID`, Data
/// Center's `X-Request-Id`.
pub const DELIVERY_HEADERS: [&str; 2] = ["X-Request-UUID", "X-Request-Id"];

/// Why a delivery's signature is not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unsigned {
    #[error("the request carries no X-Hub-Signature (the hook needs the secret)")]
    Missing,
    #[error("X-Hub-Signature is not sha256=<64 hex digits>")]
    Malformed,
    #[error("X-Hub-Signature does not match the body under the hook's secret")]
    Mismatch,
}

/// Checks `signature` (the [`SIGNATURE_HEADER`] value) against `body` under `secret`, in
/// constant time.
pub fn verify(secret: &[u8], body: &[u8], signature: Option<&[u8]>) -> Result<(), Unsigned> {
    let signature = signature.ok_or(Unsigned::Missing)?;
    let hex = signature
        .strip_prefix(b"sha256=")
        .filter(|hex| hex.len() == 64)
        .ok_or(Unsigned::Malformed)?;
    let mut tag = [0u8; 32];
    for (byte, pair) in tag.iter_mut().zip(hex.chunks(2)) {
        let digit = |c: u8| (c as char).to_digit(16);
        let (Some(high), Some(low)) = (digit(pair[0]), digit(pair[1])) else {
            return Err(Unsigned::Malformed);
        };
        *byte = u8::try_from(high * 16 + low).expect("two hex digits are a byte");
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    ring::hmac::verify(&key, body, &tag).map_err(|_| Unsigned::Mismatch)
}

/// The signature Bitbucket would send for `body` under `secret` (the simulator signs with it).
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// What a delivery asks of the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// One repository changed (pushed to, or its settings): fetch it alone.
    Repository(Changed),
    /// Repositories may have come or gone in `owner` (a Cloud workspace or a Data Center
    /// project; `None`: anywhere the hook reaches): list again.
    Relist { owner: Option<String> },
    /// Nothing about repositories (pull requests, comments, builds, issues): no work.
    Nothing,
    /// Data Center's "Test connection".
    Ping,
}

/// A repository one delivery is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Changed {
    /// `workspace/slug` (Cloud) or `PROJECT/slug` (Data Center), as a listing names it.
    pub full_name: String,
    /// Bitbucket's id: the Cloud `uuid`, the Data Center `id`.
    pub id: Option<String>,
    /// Its full name before this delivery's change, when the change renamed or moved it.
    pub renamed_from: Option<String>,
}

/// What the delivery `event` (the [`EVENT_HEADER`] value) with `body` asks for. Never fails:
/// an event not understood, or a payload without the fields needed, asks for a re-list.
pub fn change(event: &str, body: &[u8]) -> Change {
    match event {
        "diagnostics:ping" => Change::Ping,
        // Cloud: a push, or a repository's settings (a rename among them).
        "repo:push" | "repo:updated" => cloud_repository(body),
        // Data Center: a push, or a rename or move.
        "repo:refs_changed" | "repo:modified" => datacenter_repository(body),
        // The set of repositories changed: Cloud creates, deletes, transfers, forks and
        // imports; Data Center forks and project changes (`proj:modified` on some versions).
        "repo:created" | "repo:deleted" | "repo:transfer" | "repo:fork" | "repo:imported" => {
            Change::Relist {
                owner: serde_json::from_slice::<CloudEvent>(body)
                    .ok()
                    .and_then(|e| e.repository)
                    .and_then(|r| r.owner()),
            }
        }
        "repo:forked" => Change::Relist {
            owner: serde_json::from_slice::<DataCenterEvent>(body)
                .ok()
                .and_then(|e| e.repository)
                .and_then(|r| r.project)
                .map(|p| p.key),
        },
        "project:modified" | "proj:modified" => Change::Relist { owner: None },
        other if IGNORED_PREFIXES.iter().any(|p| other.starts_with(p)) => Change::Nothing,
        _ => Change::Relist { owner: None },
    }
}

/// Events about pull requests, comments, builds, issues, pipelines and mirrors: they never
/// change which repositories exist or what a listing shows.
const IGNORED_PREFIXES: [&str; 8] = [
    "pullrequest:",
    "pr:",
    "issue:",
    "pipeline:",
    "repo:commit_",
    "repo:comment:",
    "mirror:",
    "repo:secret_detected",
];

fn cloud_repository(body: &[u8]) -> Change {
    let Ok(event) = serde_json::from_slice::<CloudEvent>(body) else {
        return Change::Relist { owner: None };
    };
    let Some(repository) = event.repository else {
        return Change::Relist { owner: None };
    };
    let Some(full_name) = repository.full_name.filter(|n| n.contains('/')) else {
        return Change::Relist {
            owner: repository.workspace.and_then(|w| w.slug),
        };
    };
    let renamed_from = event
        .changes
        .and_then(|c| c.full_name)
        .and_then(|f| f.old)
        .filter(|old| !old.is_empty() && *old != full_name);
    Change::Repository(Changed {
        full_name,
        id: repository.uuid,
        renamed_from,
    })
}

fn datacenter_repository(body: &[u8]) -> Change {
    let Ok(event) = serde_json::from_slice::<DataCenterEvent>(body) else {
        return Change::Relist { owner: None };
    };
    let old = event.old.as_ref().and_then(DataCenterRepository::full_name);
    let Some(repository) = event.repository.or(event.new) else {
        return Change::Relist { owner: None };
    };
    let Some(full_name) = repository.full_name() else {
        return Change::Relist {
            owner: repository.project.map(|p| p.key),
        };
    };
    Change::Repository(Changed {
        renamed_from: old.filter(|old| *old != full_name),
        full_name,
        id: repository.id.map(|id| id.to_string()),
    })
}

#[derive(Deserialize)]
struct CloudEvent {
    repository: Option<CloudRepository>,
    changes: Option<CloudChanges>,
}

#[derive(Deserialize)]
struct CloudRepository {
    full_name: Option<String>,
    uuid: Option<String>,
    workspace: Option<CloudWorkspace>,
}

impl CloudRepository {
    fn owner(self) -> Option<String> {
        (self.workspace.and_then(|w| w.slug)).or_else(|| {
            let full_name = self.full_name?;
            Some(full_name.split_once('/')?.0.to_owned())
        })
    }
}

#[derive(Deserialize)]
struct CloudWorkspace {
    slug: Option<String>,
}

#[derive(Deserialize)]
struct CloudChanges {
    full_name: Option<OldNew>,
}

#[derive(Deserialize)]
struct OldNew {
    old: Option<String>,
}

#[derive(Deserialize)]
struct DataCenterEvent {
    repository: Option<DataCenterRepository>,
    old: Option<DataCenterRepository>,
    new: Option<DataCenterRepository>,
}

#[derive(Deserialize)]
struct DataCenterRepository {
    slug: Option<String>,
    id: Option<u64>,
    project: Option<DataCenterProject>,
}

impl DataCenterRepository {
    fn full_name(&self) -> Option<String> {
        let (project, slug) = (self.project.as_ref()?, self.slug.as_ref()?);
        Some(format!("{}/{slug}", project.key))
    }
}

#[derive(Deserialize)]
struct DataCenterProject {
    key: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded(name: &str) -> Vec<u8> {
        let path = format!(
            "{}/../../testdata/bitbucket/webhooks/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The recorded signed deliveries, with their secrets and signatures (the fixtures' README).
    const SIGNED: [(&str, &str, &str); 4] = [
        (
            "cloud-repo-push-signed.json",
            "Gkvl$k$wyNpQAF42",
            "sha256=f205c729821c6954aff2afe72b965c34015b4baf96ea8ddc2cc44999c014a035",
        ),
        (
            "datacenter-repo-refs_changed-signed.json",
            "Gkvl$k$wyNpQAF42",
            "sha256=4ffba9e7b58ea3d7e1a230446e8c92baea0aeec89b73f598932387254f0de13e",
        ),
        (
            "datacenter-repo-modified-signed.json",
            "secret",
            "sha256=1511ed69d7697ede1699b0217e17b7d0b492eeccc9a5649d5d30dd84f0e5a89a",
        ),
        (
            "datacenter-repo-refs_changed-signed-goplayground.json",
            "secret",
            "sha256=8a60f7487d167f55886df87d4077192035d76f76a8e0b3a48fd8ae8cad25f391",
        ),
    ];

    #[test]
    fn recorded_signatures_verify_and_nothing_else_does() {
        for (file, secret, signature) in SIGNED {
            let body = recorded(file);
            let secret = secret.as_bytes();
            assert_eq!(
                verify(secret, &body, Some(signature.as_bytes())),
                Ok(()),
                "{file}"
            );
            assert_eq!(sign(secret, &body), signature, "{file}");
            // One byte more, another secret, the last digit changed: refused.
            let mut longer = body.clone();
            longer.push(b'\n');
            let signed = Some(signature.as_bytes());
            assert_eq!(verify(secret, &longer, signed), Err(Unsigned::Mismatch));
            assert_eq!(verify(b"other", &body, signed), Err(Unsigned::Mismatch));
            let mut changed = signature.to_owned();
            let last = if changed.ends_with('0') { "1" } else { "0" };
            changed.replace_range(changed.len() - 1.., last);
            let changed = Some(changed.as_bytes());
            assert_eq!(verify(secret, &body, changed), Err(Unsigned::Mismatch));
        }
        let body = recorded(SIGNED[0].0);
        let upper = SIGNED[0].2.to_uppercase().replace("SHA256=", "sha256=");
        assert_eq!(
            verify(b"Gkvl$k$wyNpQAF42", &body, Some(upper.as_bytes())),
            Ok(())
        );
        for malformed in [
            "",
            "sha256=",
            "sha1=abc",
            "sha256=zz",
            &format!("sha256={}", "g".repeat(64)),
        ] {
            assert_eq!(
                verify(b"k", &body, Some(malformed.as_bytes())),
                Err(Unsigned::Malformed),
                "{malformed:?}"
            );
        }
        assert_eq!(verify(b"k", &body, None), Err(Unsigned::Missing));
    }

    #[test]
    fn pushes_and_updates_name_their_one_repository() {
        let push = change("repo:push", &recorded("cloud-repo-push-signed.json"));
        assert_eq!(
            push,
            Change::Repository(Changed {
                full_name: "nfalco79/test-repos".into(),
                id: Some("{3deb8c29-778a-450c-8f69-3e50a18079df}".into()),
                renamed_from: None,
            })
        );
        let updated = change("repo:updated", &recorded("cloud-repo-updated.json"));
        let Change::Repository(updated) = updated else {
            panic!("{updated:?}")
        };
        assert_eq!(
            updated.renamed_from.as_deref(),
            Some("teamawesome/repository_name")
        );
        for file in [
            "datacenter-repo-refs_changed-signed.json",
            "datacenter-repo-refs_changed-push-v10.json",
            "datacenter-repo-refs_changed-push-v9.json",
            "datacenter-repo-refs_changed-argocd.json",
            "datacenter-repo-refs_changed-signed-goplayground.json",
        ] {
            let Change::Repository(pushed) = change("repo:refs_changed", &recorded(file)) else {
                panic!("{file}")
            };
            assert!(pushed.full_name.contains('/'), "{file}: {pushed:?}");
            assert!(pushed.id.is_some(), "{file}");
            assert_eq!(pushed.renamed_from, None, "{file}");
        }
        let argocd = change(
            "repo:refs_changed",
            &recorded("datacenter-repo-refs_changed-argocd.json"),
        );
        assert!(
            matches!(&argocd, Change::Repository(c) if c.full_name == "MYPROJECT/test-repo"),
            "{argocd:?}"
        );
        let renamed = change(
            "repo:modified",
            &recorded("datacenter-repo-modified-signed.json"),
        );
        let Change::Repository(renamed) = renamed else {
            panic!("{renamed:?}")
        };
        assert_eq!(renamed.full_name, "gopher/webhook-test");
        assert_eq!(
            renamed.renamed_from.as_deref(),
            Some("gopher/webhook-test-2")
        );
    }

    #[test]
    fn the_set_changing_relists_and_the_rest_is_ping_or_nothing() {
        let push = recorded("cloud-repo-push-signed.json");
        assert_eq!(
            change("repo:created", &push),
            Change::Relist {
                owner: Some("nfalco79".into())
            }
        );
        assert_eq!(
            change("project:modified", b"{}"),
            Change::Relist { owner: None }
        );
        assert_eq!(
            change(
                "diagnostics:ping",
                &recorded("datacenter-diagnostics-ping.json")
            ),
            Change::Ping
        );
        for ignored in [
            "pullrequest:created",
            "pr:opened",
            "repo:commit_status_created",
        ] {
            assert_eq!(change(ignored, &push), Change::Nothing, "{ignored}");
        }
        // Not understood, or without the fields needed: a re-list, never an error.
        assert_eq!(
            change("repo:teleported", &push),
            Change::Relist { owner: None }
        );
        assert_eq!(
            change("repo:push", b"not json"),
            Change::Relist { owner: None }
        );
        assert_eq!(
            change(
                "repo:push",
                br#"{"repository": {"workspace": {"slug": "acme"}}}"#
            ),
            Change::Relist {
                owner: Some("acme".into())
            }
        );
    }

    proptest::proptest! {
        /// Whatever a sender posts: an answer, never a panic.
        #[test]
        fn any_delivery_is_read_without_panicking(
            event in "(repo|project|proj|pr|diagnostics):[a-z_]{0,16}",
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            signature in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
        ) {
            let _ = change(&event, &body);
            let _ = verify(b"secret", &body, Some(&signature));
        }
    }
}
