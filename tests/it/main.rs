//! The one integration-test binary: a module per area, sharing `support` (the control plane,
//! namespaces, the operator in-process, the simulator and the `eventually` waits). One binary
//! links the dependencies once instead of once per area.

mod support;

mod architecture;
mod bare_machine;
mod bitbucket_client;
mod bitbucket_tls;
mod budget;
mod chart;
mod control_plane;
mod crd_admission;
mod crds_up_to_date;
mod deletion;
mod demo;
mod downstream;
mod exclusive;
mod expiry;
mod flux;
mod generator;
mod gitops;
mod hostile_bitbucket;
mod http_servers;
mod leader;
mod logs;
mod monitoring;
mod operator;
mod plugin;
mod rbac;
mod sharding;
mod slices;
mod tenancy;
mod webhook;
