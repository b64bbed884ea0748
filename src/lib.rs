//! bitbucket-operator: a Kubernetes operator that makes Bitbucket account integrations
//! declarative. This file is the module tree only; `main.rs` wires it into a binary.
#![forbid(unsafe_code)]

pub mod api;
pub mod bitbucket;
pub mod cli;
pub mod config;
pub mod controller;
pub mod generator;
pub mod http;
pub mod metrics;
pub mod plugin;
pub mod status;
pub mod telemetry;
