//! `kubectl bitbucket`: the hosted service's integration pages in a terminal. It speaks to the
//! Kubernetes API like kubectl, and to Bitbucket only to check a credential before it is saved.
//!
//! - `connect` adds an integration (asking on a terminal, flags otherwise) and `edit` renames
//!   one or rotates its credential: [`connect`].
//! - `list`, `get` and `repos` show what the operator found: [`show`].
//! - `sync` presses the Sync button and waits for the answer; `delete` deletes an integration or
//!   names the Subscriptions that still use it: [`sync`].
//! - Prompts, progress and colour, only on a terminal: [`terminal`].
//!
//! `src/main.rs` runs [`run`]. The crate depends on the API and the Bitbucket client, never on
//! the operator. Exit codes: 0 done; 1 the request failed or was
//! refused (a credential Bitbucket refused, a sync that failed, a delete of an integration in
//! use, a timeout); 2 bad usage.

#![forbid(unsafe_code)]

mod connect;
mod show;
mod sign_in;
mod sync;
pub mod terminal;

use std::{path::PathBuf, time::Duration};

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use kube::{
    Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

use bitbucket_client as bitbucket;
use bitbucket_operator_api as api;

use crate::api::{BitbucketIntegration, Subscription};

/// Bitbucket integrations and Subscriptions from the terminal: connect a Bitbucket account,
/// list, sync, edit and delete.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl-bitbucket",
    bin_name = "kubectl bitbucket",
    version,
    after_help = "Examples:
  kubectl bitbucket connect acme                   # asks for the server, credential and name
  kubectl bitbucket connect acme --type AccessToken --workspace acme --secret-file token.txt
  kubectl bitbucket list -A
  kubectl bitbucket get acme
  kubectl bitbucket repos api-ci --match 'api-*'
  kubectl bitbucket sync api-ci
  kubectl bitbucket edit acme --token              # rotate: asks for the new token
  kubectl bitbucket delete acme

Exit codes: 0 done; 1 failed or refused (the reason is printed); 2 bad usage."
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
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The namespace (default: the context's).
    #[arg(short, long, global = true)]
    pub namespace: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Add an integration: check the credential against Bitbucket, save it and wait until the
    /// operator reports it Ready. Asks for what is missing when run on a terminal.
    #[command(
        after_help = "Secret values are never command-line arguments: they are asked for \
        without echo on a terminal, or read from --secret-file (- for standard input).

Examples:
  kubectl bitbucket connect acme
  kubectl bitbucket connect acme --type ApiToken --email jdoe@example.com --secret-file token.txt
  printf %s \"$TOKEN\" | kubectl bitbucket connect ci --type AccessToken --workspace acme --secret-file -
  kubectl bitbucket connect dc --server-type DataCenter --url https://bitbucket.example.com --type Basic --username ci --secret-file pw.txt"
    )]
    Connect(Box<connect::ConnectArgs>),
    /// Rename an integration or rotate its credential (checked before it is saved).
    #[command(after_help = "Examples:
  kubectl bitbucket edit acme --display-name \"ACME (CI)\"
  kubectl bitbucket edit acme --token
  kubectl bitbucket edit acme --token --secret-file new-token.txt")]
    Edit(connect::EditArgs),
    /// List the integrations: server, account, health and users.
    List {
        /// In every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// Show one integration: server, account, scopes, health and the Subscriptions that use it.
    Get {
        /// The integration.
        name: String,
        /// Output format (wide is the same as the default here).
        #[arg(short, long, value_enum, default_value_t)]
        output: Output,
    },
    /// The repositories a Subscription found.
    #[command(after_help = "Examples:
  kubectl bitbucket repos api-ci
  kubectl bitbucket repos api-ci --match 'svc-*' --private --count
  kubectl bitbucket repos api-ci -o wide")]
    Repos(show::ReposArgs),
    /// Sync a Subscription (or re-validate an integration) now, and wait for the answer.
    Sync {
        /// The Subscription (or, with --integration, the integration).
        name: String,
        /// NAME is an integration: validate its credential again.
        #[arg(long)]
        integration: bool,
        /// Give up after this long (e.g. 30s, 2m).
        #[arg(long, default_value = "2m", value_parser = duration)]
        timeout: Duration,
    },
    /// Delete an integration; refused, naming them, while Subscriptions use it.
    Delete {
        /// The integration.
        name: String,
    },
    /// Print a shell completion script.
    #[command(after_help = "Examples:
  source <(kubectl-bitbucket completion bash)
  kubectl-bitbucket completion zsh > \"${fpath[1]}/_kubectl-bitbucket\"
  kubectl-bitbucket completion fish > ~/.config/fish/completions/kubectl-bitbucket.fish")]
    Completion {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// How listing commands print.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A table.
    #[default]
    Table,
    /// A table with more columns.
    Wide,
    /// The objects as JSON.
    Json,
    /// The objects as YAML.
    Yaml,
}

/// A `--timeout`: a Go duration such as `30s`, `2m` or `1h30m`, read by the same parser as the
/// intervals of the custom resources (overflow and malformed texts are refused with a message).
fn duration(text: &str) -> Result<Duration, api::DurationError> {
    api::parse_duration(text)
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

    fn usage(text: String) -> Self {
        Self { text, code: 2 }
    }
}

/// Runs `cli` against its cluster.
pub async fn run(cli: Cli) -> anyhow::Result<Outcome> {
    if let Command::Completion { shell } = cli.command {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "kubectl-bitbucket", &mut script);
        return Ok(Outcome::ok(String::from_utf8(script)?));
    }
    let (client, namespace) = cluster(&cli.cluster).await?;
    match cli.command {
        Command::Connect(args) => connect::connect(&client, &namespace, *args).await,
        Command::Edit(args) => connect::edit(&client, &namespace, args).await,
        Command::List {
            all_namespaces,
            output,
        } => show::list(&client, (!all_namespaces).then_some(&*namespace), output).await,
        Command::Get { name, output } => show::get(&client, &namespace, &name, output).await,
        Command::Repos(args) => show::repos(&client, &namespace, args).await,
        Command::Sync {
            name,
            integration,
            timeout,
        } => {
            if integration {
                sync::sync::<BitbucketIntegration>(&client, &namespace, &name, timeout).await
            } else {
                sync::sync::<Subscription>(&client, &namespace, &name, timeout).await
            }
        }
        Command::Delete { name } => sync::delete(&client, &namespace, &name).await,
        Command::Completion { .. } => unreachable!("answered above"),
    }
}

/// The client and namespace kubectl would use with the same flags.
async fn cluster(cluster: &Cluster) -> anyhow::Result<(Client, String)> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations_read_seconds_minutes_and_hours() {
        assert_eq!(duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(duration("soon").is_err());
    }

    fn sync_timeout(args: &[&str]) -> Result<Duration, clap::Error> {
        let cli = Cli::try_parse_from(["kubectl-bitbucket", "sync", "api-ci"].iter().chain(args))?;
        match cli.command {
            Command::Sync { timeout, .. } => Ok(timeout),
            _ => unreachable!("parsed a sync"),
        }
    }

    #[test]
    fn the_timeout_flag_reads_go_durations_and_defaults_to_two_minutes() {
        assert_eq!(sync_timeout(&[]).unwrap(), Duration::from_secs(120));
        assert_eq!(
            sync_timeout(&["--timeout", "1h30m"]).unwrap(),
            Duration::from_secs(5400)
        );
        assert_eq!(
            sync_timeout(&["--timeout=1.5m"]).unwrap(),
            Duration::from_secs(90)
        );
    }

    #[test]
    fn the_timeout_flag_refuses_overflow_and_garbage_with_a_message() {
        let too_long = sync_timeout(&["--timeout", "99999999999999h"])
            .unwrap_err()
            .to_string();
        assert!(
            too_long.contains("`99999999999999h` is too long: at most 2562047h47m16.854775807s"),
            "{too_long}"
        );
        let garbage = sync_timeout(&["--timeout", "soon"])
            .unwrap_err()
            .to_string();
        assert!(
            garbage.contains("`soon` is not a duration") && garbage.contains("1h30m"),
            "{garbage}"
        );
    }

    #[test]
    fn no_flag_takes_a_secret_value() {
        // Secrets come from a prompt or a file, never from argv (visible in `ps` and shell
        // history): no flag may be named after a secret and take a value.
        fn check(command: &clap::Command) {
            for arg in command.get_arguments() {
                let name = arg.get_id().as_str().to_lowercase();
                let takes_value = arg.get_action().takes_values();
                assert!(
                    !(takes_value
                        && [
                            "token",
                            "password",
                            "secret",
                            "clientsecret",
                            "refreshtoken"
                        ]
                        .contains(&name.replace(['-', '_'], "").as_str())),
                    "--{name} takes a secret value on the command line"
                );
            }
            command.get_subcommands().for_each(check);
        }
        check(&Cli::command());
    }
}
