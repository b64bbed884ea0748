//! `kubectl bitbucket`: the hosted service's integration pages in a terminal. It speaks only to
//! the Kubernetes API, like kubectl: `list` the integrations, press `sync` and wait for the
//! answer, `delete` an integration (or be told which Subscriptions still use it). Parsing and
//! the commands; `src/bin/kubectl-bitbucket.rs` runs them.
//!
//! Exit codes: 0 done; 1 the request failed or was refused (a sync that failed, a delete of an
//! integration in use); 2 bad usage.

use std::{fmt::Write as _, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{
    Api, Client, Config, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
    config::{KubeConfigOptions, Kubeconfig},
};

use crate::api::{
    BitbucketIntegration, SYNC_REQUESTED_AT_ANNOTATION, Subscription, conditions::READY,
};

/// Bitbucket integrations and Subscriptions from the terminal: list them, sync them, delete
/// them.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl-bitbucket",
    bin_name = "kubectl bitbucket",
    version,
    after_help = "Examples:\n  kubectl bitbucket list -A\n  kubectl bitbucket sync api-ci\n  kubectl bitbucket sync --integration acme\n  kubectl bitbucket delete acme"
)]
pub struct Cli {
    #[command(flatten)]
    pub cluster: Cluster,
    #[command(subcommand)]
    pub command: Command,
}

/// Which cluster and namespace, as kubectl takes them.
#[derive(Clone, Debug, Args)]
pub struct Cluster {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The namespace (default: the context's).
    #[arg(short, long, global = true)]
    pub namespace: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the integrations: server, account, health and users.
    List {
        /// In every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Sync a Subscription (or re-validate an integration) now, and wait for the answer.
    Sync {
        /// The Subscription (or, with --integration, the integration).
        name: String,
        /// NAME is an integration: validate its credential again.
        #[arg(long)]
        integration: bool,
        /// Give up after this long (e.g. 30s, 2m).
        #[arg(long, default_value = "2m", value_parser = humantime_duration)]
        timeout: Duration,
    },
    /// Delete an integration; refused, naming them, while Subscriptions use it.
    Delete {
        /// The integration.
        name: String,
    },
}

/// How `list` prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A table.
    #[default]
    Table,
    /// The objects as JSON.
    Json,
    /// The objects as YAML.
    Yaml,
}

fn humantime_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 30s or 2m"))?;
    match unit {
        "s" | "" => Ok(Duration::from_secs(number)),
        "m" => Ok(Duration::from_secs(number * 60)),
        "h" => Ok(Duration::from_secs(number * 3600)),
        _ => Err(format!("{text:?} is not a duration like 30s or 2m")),
    }
}

/// What a command ends with: text for the user and the exit code.
pub struct Outcome {
    pub text: String,
    pub code: u8,
}

impl Outcome {
    fn ok(text: String) -> Self {
        Self { text, code: 0 }
    }

    fn failed(text: String) -> Self {
        Self { text, code: 1 }
    }
}

/// Runs `cli` against its cluster.
pub async fn run(cli: Cli) -> anyhow::Result<Outcome> {
    let (client, namespace) = connect(&cli.cluster).await?;
    match cli.command {
        Command::List {
            all_namespaces,
            output,
        } => {
            list(
                &client,
                (!all_namespaces).then_some(namespace.as_str()),
                output,
            )
            .await
        }
        Command::Sync {
            name,
            integration,
            timeout,
        } => {
            if integration {
                sync::<BitbucketIntegration>(&client, &namespace, &name, timeout).await
            } else {
                sync::<Subscription>(&client, &namespace, &name, timeout).await
            }
        }
        Command::Delete { name } => delete(&client, &namespace, &name).await,
    }
}

async fn connect(cluster: &Cluster) -> anyhow::Result<(Client, String)> {
    let options = KubeConfigOptions {
        context: cluster.context.clone(),
        ..KubeConfigOptions::default()
    };
    let config = match &cluster.kubeconfig {
        Some(path) => {
            Config::from_custom_kubeconfig(Kubeconfig::read_from(path)?, &options).await?
        }
        None => Config::from_kubeconfig(&options).await?,
    };
    let namespace = cluster
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    Ok((Client::try_from(config)?, namespace))
}

async fn list(client: &Client, namespace: Option<&str>, output: Output) -> anyhow::Result<Outcome> {
    let api: Api<BitbucketIntegration> = match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    };
    let mut items = api.list(&ListParams::default()).await?.items;
    items.sort_by_key(|i| (i.namespace(), i.name_any()));
    let text = match output {
        Output::Json => serde_json::to_string_pretty(&items)? + "\n",
        Output::Yaml => serde_saphyr::to_string(&items)?,
        Output::Table => {
            let mut rows = vec![vec![
                "NAMESPACE".to_owned(),
                "NAME".into(),
                "SERVER".into(),
                "ACCOUNT".into(),
                "READY".into(),
                "USED BY".into(),
            ]];
            for i in &items {
                let status = i.status.clone().unwrap_or_default();
                let ready = status.conditions.iter().find(|c| c.type_ == READY).map_or(
                    "Unknown".to_owned(),
                    |c| {
                        if c.status == "True" {
                            "True".to_owned()
                        } else {
                            format!("{} ({})", c.status, c.reason)
                        }
                    },
                );
                rows.push(vec![
                    i.namespace().unwrap_or_default(),
                    i.name_any(),
                    i.spec
                        .server
                        .url
                        .clone()
                        .unwrap_or_else(|| crate::api::CLOUD_API_URL.to_owned()),
                    status
                        .account
                        .and_then(|a| a.username.or(a.display_name))
                        .unwrap_or_else(|| "-".into()),
                    ready,
                    match status.subscriptions.unwrap_or_default() {
                        0 => "-".to_owned(),
                        n => format!("{n}: {}", status.used_by.join(", ")),
                    },
                ]);
            }
            if namespace.is_some() {
                rows.iter_mut().for_each(|row| {
                    row.remove(0);
                });
            }
            table(&rows)
        }
    };
    Ok(Outcome::ok(text))
}

/// Left-aligned columns, three spaces apart, as kubectl prints them.
fn table(rows: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len))
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}   ", width = widths[c]);
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// The kinds `sync` presses the button of.
trait Syncable:
    kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
    + Clone
    + serde::de::DeserializeOwned
    + std::fmt::Debug
{
    const KIND: &'static str;
    /// The sync request the status says was handled last, and its conditions.
    fn handled(&self) -> (Option<&str>, &[Condition]);
    /// What the user reads once the request is answered.
    fn report(&self) -> String;

    /// The request this object answered last, and its Ready condition.
    fn answer(&self) -> (Option<String>, Option<Condition>) {
        let (handled, conditions) = self.handled();
        let ready = conditions.iter().find(|c| c.type_ == READY).cloned();
        (handled.map(str::to_owned), ready)
    }
}

impl Syncable for Subscription {
    const KIND: &'static str = "Subscription";

    fn handled(&self) -> (Option<&str>, &[Condition]) {
        self.status.as_ref().map_or((None, &[]), |s| {
            (s.last_handled_sync_request.as_deref(), &s.conditions)
        })
    }

    fn report(&self) -> String {
        let count = self.status.as_ref().and_then(|s| s.repository_count);
        format!("{} repositories", count.unwrap_or_default())
    }
}

impl Syncable for BitbucketIntegration {
    const KIND: &'static str = "BitbucketIntegration";

    fn handled(&self) -> (Option<&str>, &[Condition]) {
        self.status.as_ref().map_or((None, &[]), |s| {
            (s.last_handled_sync_request.as_deref(), &s.conditions)
        })
    }

    fn report(&self) -> String {
        let account = self
            .status
            .as_ref()
            .and_then(|s| s.account.clone())
            .and_then(|a| a.username.or(a.display_name))
            .unwrap_or_else(|| "an access token".into());
        format!("authenticated as {account}")
    }
}

/// Sets the sync annotation to a new value and waits until the object's status echoes it.
async fn sync<K: Syncable>(
    client: &Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> anyhow::Result<Outcome> {
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let request = jiff::Timestamp::now().to_string();
    let patch = serde_json::json!({"metadata": {"annotations": {
        SYNC_REQUESTED_AT_ANNOTATION: request
    }}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    let answered = async {
        loop {
            let object = api.get(name).await?;
            let (handled, ready) = object.answer();
            if handled.as_deref() == Some(request.as_str()) {
                return anyhow::Ok((object, ready));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    let Ok(answer) = tokio::time::timeout(timeout, answered).await else {
        return Ok(Outcome::failed(format!(
            "{} {name}: no answer within {}s (is the operator running?)\n",
            K::KIND,
            timeout.as_secs()
        )));
    };
    let (object, ready) = answer?;
    Ok(match ready {
        Some(ready) if ready.status == "True" => {
            Outcome::ok(format!("{} {name} synced: {}\n", K::KIND, object.report()))
        }
        Some(ready) => Outcome::failed(format!(
            "{} {name} did not sync: {} ({})\n",
            K::KIND,
            ready.message,
            ready.reason
        )),
        None => Outcome::failed(format!("{} {name} has no Ready condition\n", K::KIND)),
    })
}

/// Deletes the integration; when the API server refuses because Subscriptions use it, lists
/// every one of them (the refusal names the first two).
async fn delete(client: &Client, namespace: &str, name: &str) -> anyhow::Result<Outcome> {
    let integrations: Api<BitbucketIntegration> = Api::namespaced(client.clone(), namespace);
    match integrations.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(Outcome::ok(format!(
            "BitbucketIntegration {name} deleted\n"
        ))),
        Err(kube::Error::Api(status)) if status.code == 403 => {
            let refusal = status
                .message
                .rsplit_once("denied request: ")
                .map_or(status.message.as_str(), |(_, m)| m)
                .to_owned();
            let subscriptions: Api<Subscription> = Api::namespaced(client.clone(), namespace);
            let users = subscriptions
                .list(&ListParams::default().fields(&format!("spec.integrationRef.name={name}")))
                .await?;
            let mut text = format!("{refusal}\n");
            for user in users.items {
                let _ = writeln!(text, "  subscription/{}", user.name_any());
            }
            Ok(Outcome::failed(text))
        }
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn timeouts_read_seconds_minutes_and_hours() {
        assert_eq!(humantime_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(humantime_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(humantime_duration("soon").is_err());
    }

    #[test]
    fn tables_align_their_columns() {
        let rows = vec![
            vec!["NAME".to_owned(), "READY".into()],
            vec!["acme".into(), "True".into()],
        ];
        assert_eq!(table(&rows), "NAME   READY\nacme   True\n");
    }
}
