//! `bitbucket-operator run`: its flags (each also an environment variable) and how they become
//! [`Settings`](crate::controller::Settings). No I/O.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use clap::Args;

use crate::{
    bitbucket::{AllowList, ListingLimits, RefusedNetworks, RetryPolicy, TransportConfig},
    controller::{Settings, leader::LeaseSettings},
    downstream::DownstreamSettings,
    http::ServerLimits,
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

    /// The most repositories one listing may hold (the pages and bytes a listing may read follow
    /// from it). A Subscription whose listing passes it says `ListingTooLarge` and keeps its
    /// last list.
    #[arg(long, env = "MAX_REPOSITORIES", default_value_t = ListingLimits::default().max_repositories)]
    pub max_repositories: usize,

    /// The longest one listing may take, its pages and retries included (`10m`, `1h30m`).
    #[arg(long, env = "LISTING_DEADLINE", default_value = "10m", value_parser = crate::api::parse_duration)]
    pub listing_deadline: Duration,

    /// Name reported as the source of Events (defaults to the pod name when run in a cluster).
    #[arg(long, env = "POD_NAME", default_value = "bitbucket-operator")]
    pub instance: String,

    /// The Bitbucket servers any integration's credential may be sent to: URL prefixes,
    /// comma-separated; `cloud` stands for Bitbucket Cloud's API and OAuth endpoint. Other
    /// servers need the consent of the credential's Secret (its annotation
    /// `scm.shippable.io/allowed-servers`). Empty: only what Secrets consent to.
    #[arg(long, env = "ALLOWED_SERVERS", default_value_t = AllowList::cloud())]
    pub allowed_servers: AllowList,

    /// Networks (CIDRs or addresses, comma-separated) the operator never connects to, whatever
    /// the allowed servers say; checked on the addresses connected to. The default refuses
    /// link-local and cloud-metadata addresses; add your cluster's Service and Pod ranges to
    /// keep integrations away from in-cluster services.
    #[arg(long, env = "REFUSED_NETWORKS", default_value_t = RefusedNetworks::default())]
    pub refused_networks: RefusedNetworks,

    /// Let a Secret's consent alone send its credential to a loopback or cluster-internal server
    /// (`localhost`, `127.0.0.1`, `*.svc`, a single-label name): for a local demo with the
    /// Bitbucket simulator on loopback. Off: only --allowed-servers may name one, since it
    /// reaches the operator's own pod and the cluster's services.
    #[arg(long, env = "INTERNAL_SERVERS_BY_CONSENT")]
    pub internal_servers_by_consent: bool,

    /// Run as one of several replicas: lead with the Lease `--lease-name` in this namespace
    /// (the pod's own, from the downward API), reconciling only while holding it. Unset: this
    /// process reconciles alone, without a Lease.
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// The Lease the replicas share (with `--lease-namespace`).
    #[arg(long, env = "LEASE_NAME", default_value = "bitbucket-operator")]
    pub lease_name: String,

    /// Own only the integrations and Subscriptions whose labels match this selector, e.g.
    /// `scm.shippable.io/shard=shard1`, or `!scm.shippable.io/shard` for those of no shard:
    /// several operator Deployments (each with its own `--lease-name`) then share a cluster,
    /// one shard each. A Subscription must be in its integration's shard. Unset: all.
    #[arg(long, env = "WATCH_LABEL_SELECTOR")]
    pub watch_label_selector: Option<String>,

    /// Address serving Argo CD's ApplicationSet plugin generator (with --plugin-token-file).
    #[arg(long, env = "PLUGIN_ADDRESS", default_value = "0.0.0.0:4355")]
    pub plugin_address: SocketAddr,

    /// Address receiving Bitbucket's webhooks (`POST /hooks/<namespace>/<integration>`, for
    /// integrations with `spec.webhook`).
    #[arg(long, env = "WEBHOOK_ADDRESS", default_value = "0.0.0.0:4356")]
    pub webhook_address: SocketAddr,

    /// The receiver's public base URL, as Bitbucket reaches it (e.g. the Ingress:
    /// `https://hooks.example.com`): hooks the operator registers (`spec.webhook.register`)
    /// point at `<url>/hooks/<namespace>/<integration>`.
    #[arg(long, env = "WEBHOOK_URL")]
    pub webhook_url: Option<url::Url>,

    /// This replica's address in the cluster (the Downward API's `status.podIP`): with
    /// `--webhook-address`'s port it goes into the Lease this replica holds, so that the other
    /// replicas relay the webhook deliveries they get to the leader. Unset: deliveries that
    /// reach a standby are answered 503 (Bitbucket delivers again).
    #[arg(long, env = "POD_IP")]
    pub pod_ip: Option<std::net::IpAddr>,

    /// File holding the token Argo CD sends to the plugin generator (a mounted Secret; read on
    /// each request, so rotating the Secret takes effect at once). Unset: no plugin generator.
    #[arg(long, env = "PLUGIN_TOKEN_FILE")]
    pub plugin_token_file: Option<std::path::PathBuf>,

    /// After a Subscription's list changes, annotate the Argo CD ApplicationSets whose plugin
    /// generator reads it (`argocd.argoproj.io/application-set-refresh`), so Argo CD refreshes
    /// at once. Writes other tools' objects: needs list, watch and patch on
    /// `applicationsets.argoproj.io` in every namespace.
    #[arg(long, env = "REFRESH_APPLICATIONSETS")]
    pub refresh_applicationsets: bool,

    /// After a Subscription's list changes, set `reconcile.fluxcd.io/requestedAt` on the Flux
    /// Operator ResourceSetInputProviders that read it from this operator's input endpoint.
    /// Needs list, watch and patch on `resourcesetinputproviders.fluxcd.controlplane.io` in
    /// every namespace.
    #[arg(long, env = "REFRESH_FLUX_INPUT_PROVIDERS")]
    pub refresh_flux_input_providers: bool,

    /// The ConfigMap (in Argo CD's namespace) whose name an ApplicationSet's plugin generator
    /// uses for this operator: how --refresh-applicationsets recognises its ApplicationSets.
    #[arg(
        long,
        env = "PLUGIN_CONFIG_MAP",
        default_value = "bitbucket-operator-plugin"
    )]
    pub plugin_config_map: String,

    /// How long a client may take to send a request's head (and how long an idle connection
    /// is kept), on every port the operator serves.
    #[arg(long, env = "HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = crate::api::parse_duration)]
    pub http_header_timeout: Duration,

    /// How long one request may take, its body and the answer included, on every port the
    /// operator serves; a slower one is answered 408.
    #[arg(long, env = "HTTP_REQUEST_TIMEOUT", default_value = "30s", value_parser = crate::api::parse_duration)]
    pub http_request_timeout: Duration,

    /// Connections each port serves at once; more wait until one closes.
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value_t = ServerLimits::default().max_connections)]
    pub http_max_connections: usize,

    /// The window request budgets count in, in seconds (an hour): benchmarks speed time up
    /// with it. Never set in production.
    #[arg(long, hide = true)]
    pub budget_window_seconds: Option<u64>,

    /// For demos and benchmarks only: use this many seconds instead of every
    /// validationInterval and syncInterval.
    #[arg(long, hide = true)]
    pub interval_override_seconds: Option<u64>,
}

impl RunArgs {
    /// What every HTTP server of the operator allows one client.
    pub fn server_limits(&self) -> ServerLimits {
        ServerLimits {
            header_timeout: self.http_header_timeout,
            request_timeout: self.http_request_timeout,
            max_connections: self.http_max_connections.max(1),
        }
    }

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
            label_selector: self
                .watch_label_selector
                .as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            transport: TransportConfig {
                timeout: Duration::from_secs(self.bitbucket_timeout_seconds.max(1)),
                retry: RetryPolicy::default(),
                allowed: self.allowed_servers.clone(),
                refused: Arc::new(self.refused_networks.clone()),
                internal_by_consent: self.internal_servers_by_consent,
                listing: ListingLimits {
                    max_repositories: self.max_repositories.max(1),
                    deadline: self.listing_deadline,
                },
                ..TransportConfig::default()
            },
            instance: self.instance.clone(),
            lease: self
                .lease_namespace
                .as_deref()
                .filter(|namespace| !namespace.is_empty())
                .map(|namespace| LeaseSettings {
                    address: (self.pod_ip)
                        .map(|ip| SocketAddr::new(ip, self.webhook_address.port()).to_string()),
                    ..LeaseSettings::new(namespace, &self.lease_name, &self.instance)
                }),
            interval_override: self.interval_override_seconds.map(Duration::from_secs),
            budget_window: Duration::from_secs(self.budget_window_seconds.unwrap_or(3600).max(6)),
            request_budgets: true,
            downstream: DownstreamSettings {
                applicationsets: self.refresh_applicationsets,
                flux_input_providers: self.refresh_flux_input_providers,
                plugin_config_map: self.plugin_config_map.clone(),
            },
            webhook_url: self.webhook_url.clone(),
            ..Settings::default()
        }
    }
}
