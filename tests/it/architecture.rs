//! The crate picture holds: every edge between the workspace's crates is one that
//! docs/architecture.md shows (its `edges` block), and the crates that must stay free of
//! Kubernetes, of HTTP clients or of the operator are. Reads `cargo metadata` and `cargo tree`;
//! no cluster.

use std::{collections::BTreeSet, path::Path, process::Command};

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn cargo(args: &[&str]) -> String {
    let output = crate::support::as_from_a_shell(&mut Command::new("cargo"))
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

/// The longest a function in any crate's `src/` may be, `fn` line to closing brace: a function
/// that does not fit a screen is a driver that has not been split into its steps yet.
const LONGEST_FUNCTION: usize = 80;

/// The functions of a rustfmt-formatted file longer than `limit` lines: (line, name, length).
fn long_functions(text: &str, limit: usize) -> Vec<(usize, String, usize)> {
    let start = regex::Regex::new(
        r"^(\s*)(?:pub(?:\([^)]*\))? )?(?:const )?(?:async )?(?:unsafe )?fn (\w+)",
    )
    .unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut long = Vec::new();
    for (at, line) in lines.iter().enumerate() {
        let Some(found) = start.captures(line) else {
            continue;
        };
        let ending = |c: char| lines[at..].iter().position(|l| l.trim_end().ends_with(c));
        if line.trim_end().ends_with('}') || ending(';') < ending('{') {
            continue; // a one-line function, or a trait method without a body
        }
        let close = format!("{}}}", &found[1]);
        let length = lines[at..]
            .iter()
            .position(|l| *l == close)
            .map_or(0, |end| end + 1);
        if length > limit {
            long.push((at + 1, found[2].to_owned(), length));
        }
    }
    long
}

fn rust_files(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn no_function_in_any_crates_src_is_longer_than_a_screen() {
    let root = Path::new(ROOT);
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    for entry in std::fs::read_dir(root.join("crates")).unwrap().flatten() {
        rust_files(&entry.path().join("src"), &mut files);
    }
    assert!(files.len() > 50, "found only {} files", files.len());
    let long: Vec<String> = files
        .iter()
        .flat_map(|file| {
            let text = std::fs::read_to_string(file).unwrap();
            let shown = file.strip_prefix(root).unwrap().display().to_string();
            long_functions(&text, LONGEST_FUNCTION)
                .into_iter()
                .map(move |(line, name, length)| format!("{shown}:{line} {name} ({length} lines)"))
        })
        .collect();
    assert!(
        long.is_empty(),
        "functions longer than {LONGEST_FUNCTION} lines (split them into named steps):\n{}",
        long.join("\n")
    );
}

#[test]
fn the_length_check_sees_a_long_function() {
    let body = "    step();\n".repeat(LONGEST_FUNCTION);
    let text = format!(
        "fn short() {{}}\n\npub async fn long() {{\n{body}}}\n\ntrait T {{\n    fn declared(\n        \
         a: u8,\n    ) -> u8;\n    fn given(&self) {{\n{body}    }}\n}}\n"
    );
    assert_eq!(
        long_functions(&text, LONGEST_FUNCTION),
        [
            (3, "long".to_owned(), LONGEST_FUNCTION + 2),
            (90, "given".to_owned(), LONGEST_FUNCTION + 2)
        ]
    );
}
