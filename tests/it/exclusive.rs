//! Tests that change the plane for every other test: the soak restarts the API server and pauses
//! etcd; the node test installs the operator cluster-wide and uninstalls the CRDs. They run
//! after the others, one at a time: `make test` runs
//! `cargo test --test it -- exclusive:: --test-threads=1` after a run that skips them. Each
//! starts with [`alone`](crate::support::alone), which fails at once, saying so, when another
//! test of this process is using the plane (and makes tests that start meanwhile fail the same
//! way), instead of letting them break each other at random.

mod node;
mod soak;
