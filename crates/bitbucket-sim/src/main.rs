//! `bitbucket-sim`: runs the Bitbucket simulator (the `bitbucket_sim` library) as a process, for
//! local demos and benchmarks. Prints its base URL on stdout once listening; stops on Ctrl-C or
//! SIGTERM. Thin by design: everything else lives in the library.
#![forbid(unsafe_code)]

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use bitbucket_sim::{Fixture, Generator, Simulator};
use clap::{Parser, ValueEnum};
use tracing_subscriber::EnvFilter;

/// Simulates Bitbucket Cloud (REST 2.0 + OAuth) and Data Center (REST 1.0) on loopback.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Loopback address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:7990")]
    listen: SocketAddr,
    /// Fixture file (YAML or JSON); the built-in demo fixture when absent.
    #[arg(long)]
    fixture: Option<PathBuf>,
    /// Generates this many more repositories into the first Cloud workspace and the first Data
    /// Center project.
    #[arg(long)]
    generate_repos: Option<usize>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format)?;
    let mut fixture = match &args.fixture {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            Fixture::from_yaml(&text).with_context(|| format!("reading {}", path.display()))?
        }
        None => Fixture::demo(),
    };
    if let Some(count) = args.generate_repos {
        add_generated(&mut fixture, count);
    }
    let simulator = Simulator::start_on(args.listen, fixture)
        .await
        .with_context(|| format!("starting the simulator on {}", args.listen))?;
    println!("{}", simulator.base_url());
    shutdown_signal().await?;
    simulator.shutdown().await;
    Ok(())
}

/// How log lines are written (the operator's `--log-format`, kept apart so that this crate does
/// not depend on the operator).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    /// Human-readable lines, for terminals.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Installs the global subscriber, writing to stderr. The filter comes from `RUST_LOG` (default
/// `info`).
fn init_logging(format: LogFormat) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    }
    .map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))
}

fn add_generated(fixture: &mut Fixture, count: usize) {
    let generator = |project: String| Generator {
        count,
        prefix: "gen".to_owned(),
        project,
        private: true,
    };
    if let Some(workspace) = fixture.cloud.workspaces.first_mut() {
        let project = workspace
            .projects
            .first()
            .map(|p| p.key.clone())
            .unwrap_or_default();
        workspace.generate = Some(generator(project));
    }
    if let Some(project) = fixture.data_center.projects.first_mut() {
        project.generate = Some(generator(String::new()));
    }
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for Ctrl-C")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}
