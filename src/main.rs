//! The `bitbucket-operator` binary: parse the command line, set up logging, dispatch.
#![forbid(unsafe_code)]

use anyhow::Context as _;
use bitbucket_operator::{
    api,
    cli::{Cli, Command},
    telemetry,
};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    telemetry::init(cli.log_format)?;
    match cli.command {
        Command::Crds { output_dir } => crds(output_dir.as_deref()),
        Command::Version => version().await,
    }
}

fn crds(output_dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    let Some(dir) = output_dir else {
        print!("{}", api::crds_yaml());
        return Ok(());
    };
    for (file, yaml) in api::crd_files() {
        let path = dir.join(file);
        std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

async fn version() -> anyhow::Result<()> {
    println!("bitbucket-operator {}", env!("CARGO_PKG_VERSION"));
    let client = match kube::Client::try_default().await {
        Ok(client) => client,
        Err(_) => return Ok(()), // no kubeconfig: the operator's own version is all there is
    };
    let server = client
        .apiserver_version()
        .await
        .context("asking the Kubernetes API server for its version")?;
    println!("kubernetes {}", server.git_version);
    Ok(())
}
