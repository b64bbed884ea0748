//! bitbucket-operator: a Kubernetes operator that makes Bitbucket account integrations
//! declarative. This file is the module tree only; `main.rs` wires it into a binary.
#![forbid(unsafe_code)]

// The API types and the Bitbucket client are crates of their own (crates/api,
// crates/bitbucket-client); the operator's modules name them by these short paths.
pub use bitbucket_client as bitbucket;
pub use bitbucket_operator_api as api;

pub mod catalog;
pub mod cli;
pub mod config;
pub mod controller;
pub mod downstream;
pub mod flux;
pub mod generator;
pub mod http;
pub mod metrics;
pub mod status;
pub mod telemetry;
pub mod webhook;
