//! The chart's monitoring: the alerts (`charts/bitbucket-operator/files/alerts.yaml`) checked and
//! unit-tested by Prometheus's own promtool (built from its Go module by `hack/gitops.sh`), a
//! runbook in `docs/runbooks/` for each, and the ServiceMonitor and PrometheusRule the chart
//! renders when asked (and only then).

use std::{collections::BTreeSet, path::Path};

use crate::support::gitops_tool;

const ALERTS: &str = "charts/bitbucket-operator/files/alerts.yaml";

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn promtool(args: &[&str]) -> (bool, String) {
    let output = std::process::Command::new(gitops_tool("promtool"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}

fn alerts() -> Vec<(String, String)> {
    let rules: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(repo(ALERTS)).unwrap()).unwrap();
    rules["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["alert"].as_str().unwrap().to_owned(),
                r["annotations"]["runbook_url"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn promtool_checks_the_alerts_and_each_fires_when_it_should_and_only_then() {
    let (checked, said) = promtool(&["check", "rules", ALERTS]);
    assert!(checked, "{said}");
    let (tested, said) = promtool(&["test", "rules", "hack/promtool/alerts_test.yaml"]);
    assert!(tested, "{said}");
    // Every alert has a unit test.
    let tests = std::fs::read_to_string(repo("hack/promtool/alerts_test.yaml")).unwrap();
    for (alert, _) in alerts() {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} has no promtool test"
        );
    }
}

#[test]
fn each_alert_links_a_runbook_in_the_repository() {
    let base = "https://github.com/shippable/bitbucket-operator/blob/main/";
    for (alert, url) in alerts() {
        let path = url
            .strip_prefix(base)
            .unwrap_or_else(|| panic!("{alert}: {url}"));
        assert_eq!(path, format!("docs/runbooks/{alert}.md"));
        assert!(repo(path).exists(), "{alert}: no {path}");
    }
}

/// The metric names an expression uses, without the suffixes Prometheus adds to a histogram's
/// and a counter's series.
fn metrics_named(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("bitbucket_operator_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        let name = ["_bucket", "_count", "_sum", "_total"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .map_or(name.clone(), str::to_owned);
        names.insert(name);
    }
    names
}

#[test]
fn the_alerts_and_the_dashboard_use_only_metrics_the_operator_exports() {
    let metrics = bitbucket_operator::metrics::Metrics::default();
    let exported: BTreeSet<String> = metrics.names().iter().cloned().collect();
    let dashboard =
        std::fs::read_to_string(repo("charts/bitbucket-operator/files/dashboard.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut exprs = String::new();
    for panel in parsed["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            exprs.push_str(target["expr"].as_str().unwrap());
            exprs.push('\n');
        }
    }
    let alerts = std::fs::read_to_string(repo(ALERTS)).unwrap();
    for (what, text) in [("dashboard", exprs), ("alerts", alerts)] {
        let used = metrics_named(&text);
        assert!(used.len() > 5, "{what}: {used:?}");
        let unknown: Vec<_> = used.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{what} uses {unknown:?}, which the operator does not export"
        );
    }
}
