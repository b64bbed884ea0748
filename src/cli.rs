//! The command line: global flags and subcommands. Parsing only; `main.rs` acts on the result.

use clap::{Parser, Subcommand};

use crate::telemetry::LogFormat;

/// Makes Bitbucket account integrations declarative: BitbucketIntegration and Subscription
/// resources, validated and kept in sync against Bitbucket Cloud or Data Center.
#[derive(Debug, Parser)]
#[command(name = "bitbucket-operator", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t, env = "LOG_FORMAT", global = true)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the operator: watch BitbucketIntegrations and Subscriptions and reconcile them.
    Run(Box<crate::config::RunArgs>),
    /// Print the CustomResourceDefinitions and the admission policies installed beside them as
    /// YAML, or write one file each into a directory (`make crds` rewrites `crds/` this way).
    Crds {
        /// Write `<plural>.<group>.yaml` and `policy.<name>.yaml` files here instead of printing.
        #[arg(long, value_name = "DIR")]
        output_dir: Option<std::path::PathBuf>,
        /// Also write them into this Helm chart: the CRDs to `crds/`, the policies to
        /// `templates/`.
        #[arg(long, value_name = "DIR")]
        chart_dir: Option<std::path::PathBuf>,
    },
    /// Print the operator's version and, when a cluster is reachable through the usual
    /// kubeconfig resolution, the Kubernetes API server's version.
    Version,
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
    fn log_format_defaults_to_text_and_accepts_json() {
        let cli = Cli::try_parse_from(["bitbucket-operator", "version"]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Text);
        let cli =
            Cli::try_parse_from(["bitbucket-operator", "--log-format", "json", "version"]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
    }
}
