//! The crate picture holds: every edge between the workspace's crates is one that
//! docs/architecture.md shows (its `edges` block), and the crates that must stay free of
//! Kubernetes, of HTTP clients or of the operator are. Reads `cargo metadata` and `cargo tree`;
//! no cluster.

use std::{collections::BTreeSet, path::Path, process::Command};

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn cargo(args: &[&str]) -> String {
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(ROOT)
        .output()
        .expect("running cargo");
    assert!(
        output.status.success(),
        "cargo {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// An edge as the doc writes it: `from -> to`, with `(dev)`, `(optional)` or `(feature f)`.
fn edge(from: &str, to: &str, dependency: &Value) -> String {
    let mut notes = Vec::new();
    if dependency["kind"] == "dev" {
        notes.push("dev".to_owned());
    }
    if dependency["optional"] == true {
        notes.push("optional".to_owned());
    }
    for feature in dependency["features"].as_array().into_iter().flatten() {
        notes.push(format!("feature {}", feature.as_str().unwrap()));
    }
    match notes.is_empty() {
        true => format!("{from} -> {to}"),
        false => format!("{from} -> {to} ({})", notes.join(", ")),
    }
}

fn edges_in_cargo() -> BTreeSet<String> {
    let metadata: Value = serde_json::from_str(&cargo(&[
        "metadata",
        "--format-version",
        "1",
        "--no-deps",
        "--locked",
        "--offline",
    ]))
    .unwrap();
    let packages = metadata["packages"].as_array().unwrap();
    let ours: BTreeSet<&str> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let mut edges = BTreeSet::new();
    for package in packages {
        let from = package["name"].as_str().unwrap();
        for dependency in package["dependencies"].as_array().unwrap() {
            let to = dependency["name"].as_str().unwrap();
            if ours.contains(to) {
                edges.insert(edge(from, to, dependency));
            }
        }
    }
    edges
}

fn edges_in_the_doc() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(Path::new(ROOT).join("docs/architecture.md")).unwrap();
    let block = doc
        .split("```edges\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/architecture.md has an ```edges block");
    block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_edge_between_the_crates_is_one_the_architecture_picture_shows() {
    let (cargo, doc) = (edges_in_cargo(), edges_in_the_doc());
    let unshown: Vec<_> = cargo.difference(&doc).collect();
    let gone: Vec<_> = doc.difference(&cargo).collect();
    assert!(
        unshown.is_empty() && gone.is_empty(),
        "the crate edges differ from docs/architecture.md's picture:\n  in Cargo.toml, not in \
         the doc: {unshown:?}\n  in the doc, not in Cargo.toml: {gone:?}\nA new edge is a change \
         to the architecture: draw it (and say why) in docs/architecture.md first."
    );
}

/// The crates `package` depends on when built alone (normal edges, default features).
fn normal_dependencies(package: &str) -> BTreeSet<String> {
    cargo(&[
        "tree",
        "--locked",
        "--offline",
        "-e",
        "normal",
        "-p",
        package,
        "--prefix",
        "none",
        "--format",
        "{p}",
    ])
    .lines()
    .filter_map(|line| line.split_whitespace().next())
    .map(str::to_owned)
    .collect()
}

#[test]
fn the_client_knows_nothing_of_kubernetes_and_the_api_does_no_bitbucket_io() {
    for (package, forbidden) in [
        ("bitbucket-client", &["kube", "k8s-openapi", "axum"][..]),
        (
            "bitbucket-operator-api",
            &["reqwest", "bitbucket-client"][..],
        ),
        ("kubectl-bitbucket", &["bitbucket-operator"][..]),
    ] {
        let dependencies = normal_dependencies(package);
        assert!(dependencies.contains(package), "cargo tree of {package}");
        let found: Vec<_> = forbidden
            .iter()
            .filter(|f| dependencies.contains(**f))
            .collect();
        assert!(
            found.is_empty(),
            "{package} depends on {found:?} (cargo tree -e normal -p {package} shows the path)"
        );
    }
}
