//! Webhooks the credential manages: Cloud workspace hooks (`/2.0/workspaces/{workspace}/hooks`,
//! which need the `webhook` scope and a workspace owner) and Data Center project hooks
//! (`/rest/api/1.0/projects/{key}/webhooks`, which need PROJECT_ADMIN). Also the events a Cloud
//! workspace hook may carry (`GET /2.0/hook_events/workspace`, public). The hook's secret goes
//! only into the request body and is redacted from every error. Writes are sent once (see
//! [`crate::transport::Transport::write`]). Does network I/O.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use super::{Client, Error, Server};

/// At most this many pages of hooks are read for one owner (Bitbucket caps an owner's hooks at
/// a few dozen).
const MAX_PAGES: usize = 10;

/// A hook as Bitbucket lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    /// Cloud: the hook's UUID (with braces); Data Center: its number.
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub active: bool,
}

/// What a hook should be.
pub struct HookSpec<'a> {
    /// Where deliveries go.
    pub url: &'a str,
    /// The description (Cloud) or name (Data Center) it is shown with.
    pub name: &'a str,
    pub events: &'a [String],
    /// The HMAC key Bitbucket signs deliveries with.
    pub secret: &'a SecretString,
}

impl Client {
    /// The events a Cloud workspace hook may subscribe to, as Bitbucket lists them.
    pub async fn workspace_hook_events(&self) -> Result<Vec<String>, Error> {
        #[derive(Deserialize)]
        struct Page {
            #[serde(default)]
            values: Vec<Event>,
            next: Option<String>,
        }
        #[derive(Deserialize)]
        struct Event {
            event: String,
        }
        let mut url = self.url(&["hook_events", "workspace"], &[("pagelen", "100")]);
        let mut events = Vec::new();
        for _ in 0..MAX_PAGES {
            let page: Page = self.get("hook_events", &url).await?.json(&self.redact)?;
            events.extend(page.values.into_iter().map(|e| e.event));
            match page.next {
                Some(next) => url = self.next_page(&url, &next)?,
                None => break,
            }
        }
        Ok(events)
    }

    /// The hooks of `owner`: a Cloud workspace's, or a Data Center project's.
    pub async fn hooks(&self, owner: &str) -> Result<Vec<Hook>, Error> {
        let mut hooks = Vec::new();
        match &self.server {
            Server::Cloud { .. } => {
                let mut url = self.url(&["workspaces", owner, "hooks"], &[("pagelen", "100")]);
                for _ in 0..MAX_PAGES {
                    let page: CloudPage = self.get("hooks", &url).await?.json(&self.redact)?;
                    hooks.extend(page.values.into_iter().map(CloudHook::into_hook));
                    match page.next {
                        Some(next) => url = self.next_page(&url, &next)?,
                        None => break,
                    }
                }
            }
            Server::DataCenter { .. } => {
                let mut start = 0u64;
                for _ in 0..MAX_PAGES {
                    let from = start.to_string();
                    let url = self.url(
                        &["rest", "api", "1.0", "projects", owner, "webhooks"],
                        &[("limit", "100"), ("start", &from)],
                    );
                    let page: DcPage = self.get("hooks", &url).await?.json(&self.redact)?;
                    hooks.extend(page.values.into_iter().map(DcHook::into_hook));
                    match page.next_page_start.filter(|_| !page.is_last_page) {
                        Some(next) if next > start => start = next,
                        _ => break,
                    }
                }
            }
        }
        Ok(hooks)
    }

    /// Creates a hook of `owner` as `spec` says.
    pub async fn create_hook(&self, owner: &str, spec: &HookSpec<'_>) -> Result<Hook, Error> {
        self.put_hook(owner, None, spec).await
    }

    /// Makes hook `id` of `owner` what `spec` says (its secret included).
    pub async fn update_hook(
        &self,
        owner: &str,
        id: &str,
        spec: &HookSpec<'_>,
    ) -> Result<Hook, Error> {
        self.put_hook(owner, Some(id), spec).await
    }

    /// Writes `spec` as a new hook of `owner` (POST), or over hook `id` (PUT).
    async fn put_hook(
        &self,
        owner: &str,
        id: Option<&str>,
        spec: &HookSpec<'_>,
    ) -> Result<Hook, Error> {
        let url = self.hooks_url(owner, id);
        let (operation, method) = match id {
            None => ("create_hook", reqwest::Method::POST),
            Some(_) => ("update_hook", reqwest::Method::PUT),
        };
        let body = body(self, spec);
        let answer = self.write(operation, method, &url, body, Some(spec.secret));
        self.hook_of(answer.await?)
    }

    /// Deletes hook `id` of `owner`; one already gone is fine.
    pub async fn delete_hook(&self, owner: &str, id: &str) -> Result<(), Error> {
        let url = self.hooks_url(owner, Some(id));
        match self
            .write("delete_hook", reqwest::Method::DELETE, &url, None, None)
            .await
        {
            Ok(_) | Err(Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(error),
        }
    }

    fn hooks_url(&self, owner: &str, id: Option<&str>) -> url::Url {
        let mut segments = match &self.server {
            Server::Cloud { .. } => vec!["workspaces", owner, "hooks"],
            Server::DataCenter { .. } => vec!["rest", "api", "1.0", "projects", owner, "webhooks"],
        };
        segments.extend(id);
        self.url(&segments, &[])
    }

    fn hook_of(&self, response: super::transport::Response) -> Result<Hook, Error> {
        Ok(match &self.server {
            Server::Cloud { .. } => response.json::<CloudHook>(&self.redact)?.into_hook(),
            Server::DataCenter { .. } => response.json::<DcHook>(&self.redact)?.into_hook(),
        })
    }
}

/// The JSON body of a create or update.
fn body(client: &Client, spec: &HookSpec<'_>) -> Option<Vec<u8>> {
    let secret = spec.secret.expose_secret();
    let value = match &client.server {
        Server::Cloud { .. } => json!({
            "description": spec.name, "url": spec.url, "active": true,
            "secret": secret, "events": spec.events,
        }),
        Server::DataCenter { .. } => json!({
            "name": spec.name, "url": spec.url, "active": true, "events": spec.events,
            "configuration": {"secret": secret},
        }),
    };
    Some(serde_json::to_vec(&value).expect("a hook serialises"))
}

#[derive(Deserialize)]
struct CloudPage {
    #[serde(default)]
    values: Vec<CloudHook>,
    next: Option<String>,
}

#[derive(Deserialize)]
struct CloudHook {
    uuid: String,
    #[serde(default)]
    url: String,
    #[serde(default)]
    events: Vec<String>,
    #[serde(default)]
    active: bool,
}

impl CloudHook {
    fn into_hook(self) -> Hook {
        Hook {
            id: self.uuid,
            url: self.url,
            events: self.events,
            active: self.active,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DcPage {
    #[serde(default)]
    values: Vec<DcHook>,
    #[serde(default = "last")]
    is_last_page: bool,
    next_page_start: Option<u64>,
}

fn last() -> bool {
    true
}

#[derive(Deserialize)]
struct DcHook {
    id: u64,
    #[serde(default)]
    url: String,
    #[serde(default)]
    events: Vec<String>,
    #[serde(default)]
    active: bool,
}

impl DcHook {
    fn into_hook(self) -> Hook {
        Hook {
            id: self.id.to_string(),
            url: self.url,
            events: self.events,
            active: self.active,
        }
    }
}
