//! `list`, `get` and `repos`: what the operator found, read from the objects' status (and, for
//! `repos`, the Subscription's RepositorySlices, which hold its whole list). Tables are kubectl's
//! (left-aligned columns, three spaces apart); `-o json|yaml` prints the objects.

use std::fmt::Write as _;

use clap::Args;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{Api, Client, ResourceExt, api::ListParams};

use super::{Outcome, Output, terminal::Terminal};
use crate::api::{
    Account, BitbucketIntegration, CLOUD_API_URL, Repository, RepositorySlice, SUBSCRIPTION_LABEL,
    Subscription,
    conditions::{READY, STALLED},
    glob::glob,
    slice, subscription_label,
};

/// What `repos` shows.
#[derive(Debug, Args)]
pub struct ReposArgs {
    /// The Subscription.
    subscription: String,
    /// Only repositories whose slug matches this glob (`*`, `?`, `[abc]`); repeatable.
    #[arg(long = "match", value_name = "GLOB")]
    matching: Vec<String>,
    /// Only repositories in this project; repeatable.
    #[arg(long, value_name = "KEY")]
    project: Vec<String>,
    /// Only private repositories.
    #[arg(long, conflicts_with = "public")]
    private: bool,
    /// Only public repositories.
    #[arg(long)]
    public: bool,
    /// Print only how many repositories there are.
    #[arg(long)]
    count: bool,
    /// Output format (wide adds clone URLs).
    #[arg(short, long, value_enum, default_value_t)]
    output: Output,
}

pub async fn list(
    client: &Client,
    namespace: Option<&str>,
    output: Output,
) -> anyhow::Result<Outcome> {
    let api: Api<BitbucketIntegration> = match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    let mut items = api.list(&ListParams::default()).await?.items;
    items.sort_by_key(|i| (i.namespace(), i.name_any()));
    if let Some(text) = serialized(&items, output)? {
        return Ok(Outcome::ok(text));
    }
    let terminal = Terminal::detect();
    let wide = output == Output::Wide;
    let mut rows = vec![
        [
            "NAMESPACE",
            "NAME",
            "SERVER",
            "ACCOUNT",
            "READY",
            "USED BY",
            "EXPIRES",
        ]
        .map(String::from)
        .to_vec(),
    ];
    if wide {
        rows[0].extend(["TYPE", "SCOPES", "READY FOR"].map(String::from));
    }
    for i in &items {
        let status = i.status.clone().unwrap_or_default();
        let ready = ready_of(&status.conditions);
        let mut row = vec![
            i.namespace().unwrap_or_default(),
            i.name_any(),
            server_of(i),
            status
                .account
                .and_then(|a| a.username.or(a.display_name))
                .unwrap_or_else(|| "-".into()),
            ready.word(&terminal),
            match status.subscriptions.unwrap_or_default() {
                0 => "-".to_owned(),
                n => format!("{n}: {}", status.used_by.join(", ")),
            },
            expires(status.credential.as_ref()),
        ];
        if wide {
            row.extend([
                format!("{:?}", i.spec.credentials.credential_type),
                dash(&status.scopes.join(",")),
                ready.since,
            ]);
        }
        rows.push(row);
    }
    if namespace.is_some() {
        rows.iter_mut().for_each(|row| {
            row.remove(0);
        });
    }
    Ok(Outcome::ok(table(&rows)))
}

/// When the credential expires, as its Secret declares: the day, and how soon within 30 days.
fn expires(credential: Option<&bitbucket_operator_api::CredentialStatus>) -> String {
    let Some(at) = credential.and_then(|c| c.expires_at.as_deref()) else {
        return "-".into();
    };
    let Ok(at) = at.parse::<jiff::Timestamp>() else {
        return at.to_owned();
    };
    let day = at.strftime("%Y-%m-%d").to_string();
    let left = (at.as_second() - jiff::Timestamp::now().as_second()) / 86_400;
    match left {
        ..0 => format!("{day} (expired)"),
        0..=30 => format!("{day} ({left}d)"),
        _ => day,
    }
}

pub async fn get(
    client: &Client,
    namespace: &str,
    name: &str,
    output: Output,
) -> anyhow::Result<Outcome> {
    let integration = Api::<BitbucketIntegration>::namespaced(client.clone(), namespace)
        .get(name)
        .await?;
    if let Some(text) = serialized(&integration, output)? {
        return Ok(Outcome::ok(text));
    }
    let terminal = Terminal::detect();
    let users = super::sync::users_of(client, namespace, name).await?;
    let status = integration.status.clone().unwrap_or_default();
    let ready = ready_of(&status.conditions);
    let spec = &integration.spec;
    let account = status.account.as_ref().map_or("-".to_owned(), account_of);
    let mut text = String::new();
    let mut line = |key: &str, value: &str| {
        let _ = writeln!(text, "{:<14}{value}", format!("{key}:"));
    };
    line("Name", name);
    line("Namespace", namespace);
    if let Some(display) = &spec.display_name {
        line("Display name", display);
    }
    line(
        "Server",
        &format!(
            "{} ({:?})",
            server_of(&integration),
            spec.server.server_type
        ),
    );
    line(
        "Credential",
        &format!(
            "{:?} in Secret {}",
            spec.credentials.credential_type, spec.credentials.secret_ref.name
        ),
    );
    if let Some(workspace) = &spec.workspace {
        line("Workspace", workspace);
    }
    if status.credential.is_some() {
        line("Expires", &expires(status.credential.as_ref()));
    }
    line("Account", &account);
    line("Scopes", &dash(&status.scopes.join(", ")));
    line(
        "Ready",
        &format!("{} for {}", ready.word(&terminal), ready.since),
    );
    if !ready.message.is_empty() {
        line("Message", &ready.message);
    }
    line(
        "Validated",
        &format!("every {}", spec.validation_interval.0),
    );
    line(
        "Used by",
        &match users.len() {
            0 => "no Subscriptions".to_owned(),
            1 => "1 Subscription".to_owned(),
            n => format!("{n} Subscriptions"),
        },
    );
    for user in &users {
        let repositories = user
            .status
            .as_ref()
            .and_then(|s| s.repository_count)
            .map_or(String::new(), |n| format!(" ({n} repositories)"));
        let _ = writeln!(text, "  subscription/{}{repositories}", user.name_any());
    }
    Ok(Outcome::ok(text))
}

pub async fn repos(client: &Client, namespace: &str, args: ReposArgs) -> anyhow::Result<Outcome> {
    let subscription = Api::<Subscription>::namespaced(client.clone(), namespace)
        .get(&args.subscription)
        .await?;
    let status = subscription.status.clone().unwrap_or_default();
    let filtered =
        !args.matching.is_empty() || !args.project.is_empty() || args.private || args.public;
    let whole = whole_list(client, &subscription).await?;
    let (listed, complete) = match &whole {
        Some(list) => (list.as_slice(), true),
        None => (
            status.repositories.as_slice(),
            !status.repositories_truncated,
        ),
    };
    let kept: Vec<_> = listed.iter().filter(|r| shown(&args, r)).collect();
    let mut note = String::new();
    if !complete {
        let _ = writeln!(
            note,
            "(its RepositorySlices are being rewritten: status keeps the first {} of {} \
             repositories; {})",
            status.repositories.len(),
            status.repository_count.unwrap_or_default(),
            if filtered {
                "filters apply to those"
            } else {
                "the count is Bitbucket's"
            }
        );
    }
    if args.count {
        // Unfiltered, the count is the whole listing's, kept beyond the truncated list.
        let count = if filtered {
            kept.len()
        } else {
            usize::try_from(status.repository_count.unwrap_or_default()).unwrap_or_default()
        };
        return Ok(Outcome::ok(format!("{count}\n")));
    }
    if let Some(text) = serialized(&kept, args.output)? {
        return Ok(Outcome::ok(text));
    }
    if status.repository_count.is_none() {
        return Ok(Outcome::failed(format!(
            "Subscription {} has not listed its repositories yet\n",
            args.subscription
        )));
    }
    Ok(Outcome::ok(
        repository_table(&kept, args.output == Output::Wide) + &note,
    ))
}

/// Whether `repos`' filters keep `repository`.
fn shown(args: &ReposArgs, repository: &Repository) -> bool {
    (args.matching.is_empty() || args.matching.iter().any(|g| glob(g, &repository.name)))
        && (args.project.is_empty()
            || repository
                .project
                .as_ref()
                .is_some_and(|p| args.project.iter().any(|want| want.eq_ignore_ascii_case(p))))
        && (!args.private || repository.private)
        && (!args.public || !repository.private)
}

/// The table of `repos` (with clone URLs when `wide`).
fn repository_table(kept: &[&Repository], wide: bool) -> String {
    let mut rows = vec![
        ["REPOSITORY", "PROJECT", "PRIVATE", "MAIN BRANCH"]
            .map(String::from)
            .to_vec(),
    ];
    if wide {
        rows[0].extend(["HTTPS", "SSH"].map(String::from));
    }
    for r in kept {
        let mut row = vec![
            r.full_name.clone(),
            r.project.clone().unwrap_or_else(|| "-".into()),
            r.private.to_string(),
            r.main_branch.clone().unwrap_or_else(|| "-".into()),
        ];
        if wide {
            row.extend([
                r.clone_urls.https.clone().unwrap_or_else(|| "-".into()),
                r.clone_urls.ssh.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        rows.push(row);
    }
    table(&rows)
}

/// The whole list of `subscription` from its RepositorySlices, when they hold the list its
/// status names; `None` while they are being rewritten (or before the first listing). Asks again
/// once, a second later, before giving up.
async fn whole_list(
    client: &Client,
    subscription: &Subscription,
) -> anyhow::Result<Option<Vec<Repository>>> {
    let namespace = subscription.namespace().unwrap_or_default();
    let named = subscription
        .status
        .as_ref()
        .and_then(|s| s.slices.as_deref());
    if named.is_none() {
        return Ok(None);
    }
    let slices: Api<RepositorySlice> = Api::namespaced(client.clone(), &namespace);
    let selector = format!(
        "{SUBSCRIPTION_LABEL}={}",
        subscription_label(&subscription.name_any())
    );
    let uid = subscription.uid().unwrap_or_default();
    for attempt in 0..2 {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        let held = slices
            .list(&ListParams::default().labels(&selector))
            .await?
            .items;
        let found = slice::complete(named, |name| {
            held.iter()
                .find(|s| s.metadata.name.as_deref() == Some(name) && s.controlled_by(&uid))
        });
        if let Ok(found) = found {
            return Ok(Some(slice::entries(&found)));
        }
    }
    Ok(None)
}

/// Who an integration authenticates as: `jdoe (Jane Doe), User`.
pub fn account_of(account: &Account) -> String {
    let who = match (&account.username, &account.display_name) {
        (Some(user), Some(display)) => format!("{user} ({display})"),
        (Some(one), None) | (None, Some(one)) => one.clone(),
        (None, None) => "-".to_owned(),
    };
    format!("{who}, {:?}", account.kind)
}

/// The objects as JSON or YAML when asked for; `None` for the tables.
fn serialized<T: serde::Serialize>(value: &T, output: Output) -> anyhow::Result<Option<String>> {
    Ok(match output {
        Output::Json => Some(serde_json::to_string_pretty(value)? + "\n"),
        Output::Yaml => Some(serde_saphyr::to_string(value)?),
        Output::Table | Output::Wide => None,
    })
}

fn server_of(integration: &BitbucketIntegration) -> String {
    integration
        .spec
        .server
        .url
        .clone()
        .unwrap_or_else(|| CLOUD_API_URL.to_owned())
}

fn dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

/// The Ready condition as the tables show it.
struct Ready {
    status: String,
    reason: String,
    message: String,
    stalled: bool,
    since: String,
}

fn ready_of(conditions: &[Condition]) -> Ready {
    let ready = conditions.iter().find(|c| c.type_ == READY);
    Ready {
        status: ready.map_or("Unknown".to_owned(), |c| c.status.clone()),
        reason: ready.map(|c| c.reason.clone()).unwrap_or_default(),
        message: ready.map(|c| c.message.clone()).unwrap_or_default(),
        stalled: conditions
            .iter()
            .any(|c| c.type_ == STALLED && c.status == "True"),
        since: ready.map_or("-".to_owned(), |c| age(c.last_transition_time.0)),
    }
}

impl Ready {
    /// `True`, or the status with its reason: `False (InvalidCredentials)`.
    fn word(&self, terminal: &Terminal) -> String {
        match self.status.as_str() {
            "True" => terminal.good("True"),
            _ if self.reason.is_empty() => self.status.clone(),
            _ => {
                let word = format!("{} ({})", self.status, self.reason);
                if self.stalled {
                    terminal.bad(&word)
                } else {
                    word
                }
            }
        }
    }
}

/// How long ago `time` was, as kubectl's AGE column says it: 45s, 12m, 5h, 3d.
fn age(time: jiff::Timestamp) -> String {
    let seconds = (jiff::Timestamp::now() - time)
        .total(jiff::Unit::Second)
        .unwrap_or_default()
        .max(0.0) as u64;
    match seconds {
        0..120 => format!("{seconds}s"),
        120..7200 => format!("{}m", seconds / 60),
        7200..172_800 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86400),
    }
}

/// Left-aligned columns, three spaces apart, as kubectl prints them. Widths count what shows:
/// colour codes take no room.
pub fn table(rows: &[Vec<String>]) -> String {
    let shown = |cell: &str| {
        let mut width = 0;
        let mut escape = false;
        for c in cell.chars() {
            match c {
                '\x1b' => escape = true,
                'm' if escape => escape = false,
                _ if escape => {}
                _ => width += 1,
            }
        }
        width
    };
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|c| rows.iter().map(|r| shown(&r[c])).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < row.len() {
                line.push_str(&" ".repeat(widths[c] - shown(cell) + 3));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_their_columns() {
        let rows = vec![
            vec!["NAME".to_owned(), "READY".into(), "AGE".into()],
            vec!["acme".into(), "\x1b[32mTrue\x1b[0m".into(), "1m".into()],
        ];
        assert_eq!(
            table(&rows),
            "NAME   READY   AGE\nacme   \x1b[32mTrue\x1b[0m    1m\n"
        );
    }
}
