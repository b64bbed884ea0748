//! `bitbucket-operator run`: its flags (each also an environment variable) and how they become
//! [`Settings`](crate::controller::Settings). No I/O.

use std::{net::SocketAddr, time::Duration};

use clap::Args;

use crate::{
    bitbucket::{RetryPolicy, TransportConfig},
    controller::Settings,
};

/// Flags of `bitbucket-operator run`.
#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    /// Namespaces to watch, comma-separated; all namespaces when empty.
    #[arg(long, env = "WATCH_NAMESPACES", value_delimiter = ',')]
    pub namespaces: Vec<String>,

    /// Address serving /metrics.
    #[arg(long, env = "METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    pub metrics_address: SocketAddr,

    /// Address serving /healthz and /readyz (may equal the metrics address).
    #[arg(long, env = "HEALTH_ADDRESS", default_value = "0.0.0.0:8081")]
    pub health_address: SocketAddr,

    /// Reconciles run at once, per controller and namespace.
    #[arg(long, env = "CONCURRENCY", default_value_t = 8)]
    pub concurrency: u16,

    /// Timeout of one request to Bitbucket, in seconds.
    #[arg(long, env = "BITBUCKET_TIMEOUT_SECONDS", default_value_t = 30)]
    pub bitbucket_timeout_seconds: u64,

    /// Name reported as the source of Events (defaults to the pod name when run in a cluster).
    #[arg(long, env = "POD_NAME", default_value = "bitbucket-operator")]
    pub instance: String,

    /// For demos and benchmarks only: use this many seconds instead of every
    /// validationInterval and syncInterval.
    #[arg(long, hide = true)]
    pub interval_override_seconds: Option<u64>,
}

impl RunArgs {
    /// The controllers' settings.
    pub fn settings(&self) -> Settings {
        Settings {
            namespaces: self
                .namespaces
                .iter()
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty())
                .collect(),
            concurrency: self.concurrency.max(1),
            transport: TransportConfig {
                timeout: Duration::from_secs(self.bitbucket_timeout_seconds.max(1)),
                retry: RetryPolicy::default(),
                ..TransportConfig::default()
            },
            instance: self.instance.clone(),
            interval_override: self.interval_override_seconds.map(Duration::from_secs),
            ..Settings::default()
        }
    }
}
