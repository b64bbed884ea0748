//! The `bitbucket-operator` binary: parse the command line, set up logging, dispatch.
#![forbid(unsafe_code)]

use std::sync::Arc;

use anyhow::Context as _;
use bitbucket_operator::{
    api,
    cli::{Cli, Command},
    config::RunArgs,
    controller::{self, Shared},
    generator, http,
    metrics::Metrics,
    telemetry, webhook,
};
use clap::Parser;
use futures::FutureExt;

#[cfg(feature = "heap-profile")]
#[global_allocator]
static ALLOCATOR: dhat::Alloc = dhat::Alloc;

/// With `--features heap-profile`: counts every allocation from the start, and writes what the
/// heap holds when the operator is told to stop (before it drops anything) to the file named by
/// `BBO_HEAP_PROFILE` (`dhat-heap.json` by default); the benchmarks read it
/// (`benches/operator/heap.rs`).
#[cfg(feature = "heap-profile")]
static HEAP_PROFILE: std::sync::Mutex<Option<dhat::Profiler>> = std::sync::Mutex::new(None);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    #[cfg(feature = "heap-profile")]
    {
        let file = std::env::var("BBO_HEAP_PROFILE").unwrap_or_else(|_| "dhat-heap.json".into());
        *HEAP_PROFILE.lock().unwrap() = Some(dhat::Profiler::builder().file_name(file).build());
    }
    let cli = Cli::parse();
    telemetry::init(cli.log_format)?;
    match cli.command {
        Command::Run(args) => run(*args).await,
        Command::Crds {
            output_dir,
            chart_dir,
        } => crds(output_dir.as_deref(), chart_dir.as_deref()),
        Command::Version => version().await,
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let settings = args.settings();
    let client = kube::Client::try_default()
        .await
        .context("connecting to Kubernetes (in-cluster config or KUBECONFIG)")?;
    let metrics = Arc::new(Metrics::default());
    let waiting = controller::Waiting::starting();
    let shutdown = shutdown_signal().shared();

    let probe = http::Probe {
        metrics: Arc::clone(&metrics),
        waiting: waiting.clone(),
    };
    let limits = args.server_limits();
    let mut servers = vec![tokio::spawn(http::serve(
        http::bind(args.metrics_address, "/metrics").await?,
        http::router(probe.clone()),
        limits,
        shutdown.clone(),
    ))];
    if args.health_address != args.metrics_address {
        servers.push(tokio::spawn(http::serve(
            http::bind(args.health_address, "/healthz and /readyz").await?,
            http::router(probe),
            limits,
            shutdown.clone(),
        )));
    }

    let shared = Shared::new(client.clone(), settings.clone(), metrics);
    if let Some(token_file) = args.plugin_token_file.clone() {
        let router = generator::router(generator::Generator {
            shared: Arc::clone(&shared),
            token_file,
        });
        servers.push(tokio::spawn(http::serve(
            http::bind(args.plugin_address, "the ApplicationSet plugin generator").await?,
            router,
            limits,
            shutdown.clone(),
        )));
    }

    servers.push(tokio::spawn(http::serve(
        http::bind(args.webhook_address, "Bitbucket's webhooks").await?,
        webhook::router(webhook::Receiver::new(Arc::clone(&shared))),
        limits,
        shutdown.clone(),
    )));

    tracing::info!(
        namespaces = ?settings.namespaces,
        concurrency = settings.concurrency,
        "starting bitbucket-operator {}",
        env!("CARGO_PKG_VERSION")
    );
    tokio::select! {
        () = controller::wait_for_crds(&client, &settings, &waiting) => {}
        () = shutdown.clone() => return Ok(()),
    }
    controller::run(shared, waiting, shutdown).await;
    for server in servers {
        server
            .await
            .context("HTTP server task")?
            .context("HTTP server")?;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM (what Kubernetes sends before killing a pod).
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        () = terminate => {}
    }
    #[cfg(feature = "heap-profile")]
    drop(HEAP_PROFILE.lock().unwrap().take());
    tracing::info!("shutting down");
}

fn crds(
    output_dir: Option<&std::path::Path>,
    chart_dir: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    if output_dir.is_none() && chart_dir.is_none() {
        print!("{}", api::crds_yaml());
        return Ok(());
    }
    let files = output_dir
        .into_iter()
        .flat_map(|dir| api::crd_files().into_iter().map(|(f, y)| (dir.join(f), y)))
        .chain(chart_dir.into_iter().flat_map(|dir| {
            api::chart_files()
                .into_iter()
                .map(|(f, y)| (dir.join(f), y))
        }));
    for (path, yaml) in files {
        // Write nothing when nothing changed.
        if std::fs::read_to_string(&path).is_ok_and(|text| text == yaml) {
            continue;
        }
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
