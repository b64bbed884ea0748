//! The Helm chart `charts/bitbucket-operator`, checked with helm itself (built from its Go module
//! by `hack/gitops.sh`): it lints, renders by default exactly the objects `deploy/` applies
//! (except the Namespace, which Helm's `--create-namespace` makes), narrows RBAC to Roles when
//! namespaces are listed, and what it renders is accepted by the real API server.

use std::{collections::BTreeMap, path::Path, process::Output};

use crate::support::{TestNamespace, client, install_crds, yaml_documents};
use serde_json::Value;

const CHART: &str = "charts/bitbucket-operator";

fn helm(args: &[&str]) -> Output {
    std::process::Command::new(crate::support::gitops_tool("helm"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

/// `helm template` of the chart into `namespace` with `sets`, as objects.
fn render(namespace: &str, sets: &[&str]) -> Vec<Value> {
    let mut args = vec![
        "template",
        "bitbucket-operator",
        CHART,
        "--namespace",
        namespace,
        "--include-crds",
    ];
    for set in sets {
        args.extend(["--set", set]);
    }
    let rendered = helm(&args);
    assert!(
        rendered.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    objects(&String::from_utf8(rendered.stdout).unwrap())
}

fn objects(yaml: &str) -> Vec<Value> {
    yaml_documents(yaml)
        .into_iter()
        .filter(|d| d.is_object())
        .collect()
}

/// Objects by kind, namespace and name.
fn keyed(objects: Vec<Value>) -> BTreeMap<(String, String, String), Value> {
    objects
        .into_iter()
        .map(|o| {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            (
                (
                    text(&o["kind"]),
                    text(&o["metadata"]["namespace"]),
                    text(&o["metadata"]["name"]),
                ),
                o,
            )
        })
        .collect()
}

/// What `kubectl apply -k deploy/` applies: its resources, with `../crds`'s.
fn deploy_objects() -> Vec<Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let listed = |dir: &Path, file: &str| -> Vec<String> {
        let kustomization = &yaml_documents(&std::fs::read_to_string(dir.join(file)).unwrap())[0];
        kustomization["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_owned())
            .collect()
    };
    let mut found = Vec::new();
    for resource in listed(&root.join("deploy"), "kustomization.yaml") {
        if resource == "../crds" {
            for file in listed(&root.join("crds"), "Kustomization") {
                found.extend(objects(
                    &std::fs::read_to_string(root.join("crds").join(file)).unwrap(),
                ));
            }
        } else {
            found.extend(objects(
                &std::fs::read_to_string(root.join("deploy").join(resource)).unwrap(),
            ));
        }
    }
    found
}

#[test]
fn helm_lints_the_chart() {
    let linted = helm(&["lint", CHART, "--strict"]);
    let said = String::from_utf8_lossy(&linted.stdout);
    assert!(linted.status.success(), "{said}");
    assert!(
        said.contains("1 chart(s) linted, 0 chart(s) failed"),
        "{said}"
    );
}

#[test]
fn by_default_the_chart_renders_what_deploy_applies() {
    let mut deploy = keyed(deploy_objects());
    let namespace = deploy
        .remove(&(
            "Namespace".into(),
            String::new(),
            "bitbucket-operator".into(),
        ))
        .expect("deploy/ creates the namespace");
    assert_eq!(
        namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    let chart = keyed(render("bitbucket-operator", &[]));
    assert_eq!(
        chart.keys().collect::<Vec<_>>(),
        deploy.keys().collect::<Vec<_>>(),
        "the same objects"
    );
    for (key, object) in &deploy {
        assert_eq!(&chart[key], object, "{key:?} differs");
    }
}

#[test]
fn values_narrow_rbac_to_the_watched_namespaces_and_drop_what_is_off() {
    let chart = keyed(render(
        "ops",
        &[
            "watchNamespaces={team-a,team-b}",
            "replicas=1",
            "plugin.enabled=false",
            "image.tag=1.2.3",
            "logFormat=text",
        ],
    ));
    let kinds: Vec<&str> = chart.keys().map(|(kind, _, _)| kind.as_str()).collect();
    assert!(!kinds.contains(&"ClusterRole") && !kinds.contains(&"ClusterRoleBinding"));
    assert!(
        !kinds.contains(&"PodDisruptionBudget"),
        "one replica: no PDB"
    );
    let deploy = keyed(deploy_objects());
    let cluster_rules = &deploy[&(
        "ClusterRole".into(),
        String::new(),
        "bitbucket-operator".into(),
    )]["rules"];
    for namespace in ["team-a", "team-b"] {
        let role = &chart[&("Role".into(), namespace.into(), "bitbucket-operator".into())];
        assert_eq!(
            &role["rules"], cluster_rules,
            "the same rules in {namespace}"
        );
        let binding = &chart[&(
            "RoleBinding".into(),
            namespace.into(),
            "bitbucket-operator".into(),
        )];
        assert_eq!(binding["subjects"][0]["namespace"], "ops");
    }
    assert!(!chart.contains_key(&(
        "Service".into(),
        "ops".into(),
        "bitbucket-operator-plugin".into()
    )));
    let deployment = &chart[&(
        "Deployment".into(),
        "ops".into(),
        "bitbucket-operator".into(),
    )];
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "bitbucket-operator:1.2.3");
    let env: BTreeMap<&str, &Value> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap(), &e["value"]))
        .collect();
    assert_eq!(env["WATCH_NAMESPACES"], "team-a,team-b");
    assert_eq!(env["LOG_FORMAT"], "text");
    assert!(!env.contains_key("PLUGIN_TOKEN_FILE"));
    assert_eq!(deployment["spec"]["replicas"], 1);
}

#[test]
fn downstream_and_webhook_values_reach_the_deployment_with_only_the_permission_they_need() {
    let env_of = |chart: &BTreeMap<(String, String, String), Value>| -> BTreeMap<String, Value> {
        let deployment = &chart[&(
            "Deployment".into(),
            "ops".into(),
            "bitbucket-operator".into(),
        )];
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        (container["env"].as_array().unwrap().iter())
            .map(|e| (e["name"].as_str().unwrap().to_owned(), e["value"].clone()))
            .collect()
    };
    let role = (
        "ClusterRole".into(),
        String::new(),
        "bitbucket-operator-downstream".into(),
    );
    let off = keyed(render("ops", &[]));
    assert!(
        !off.contains_key(&role),
        "off by default: no permission on other tools' objects"
    );
    assert!(!env_of(&off).contains_key("REFRESH_APPLICATIONSETS"));

    let argo = keyed(render(
        "ops",
        &[
            "downstream.applicationSets=true",
            "downstream.pluginConfigMap=bbo",
        ],
    ));
    let rules = &argo[&role]["rules"];
    assert_eq!(rules.as_array().unwrap().len(), 1);
    assert_eq!(rules[0]["apiGroups"], serde_json::json!(["argoproj.io"]));
    assert_eq!(
        rules[0]["resources"],
        serde_json::json!(["applicationsets"])
    );
    assert_eq!(
        rules[0]["verbs"],
        serde_json::json!(["get", "list", "watch", "patch"])
    );
    let binding = (
        "ClusterRoleBinding".into(),
        String::new(),
        "bitbucket-operator-downstream".into(),
    );
    assert_eq!(argo[&binding]["subjects"][0]["namespace"], "ops");
    let env = env_of(&argo);
    assert_eq!(env["REFRESH_APPLICATIONSETS"], "true");
    assert_eq!(env["PLUGIN_CONFIG_MAP"], "bbo");
    assert!(!env.contains_key("REFRESH_FLUX_INPUT_PROVIDERS"));

    // The hooks integrations register point at webhooks.url, else at the Ingress's host.
    assert!(!env_of(&off).contains_key("WEBHOOK_URL"));
    let url = keyed(render("ops", &["webhooks.url=https://bb.example.com/x"]));
    assert_eq!(env_of(&url)["WEBHOOK_URL"], "https://bb.example.com/x");
    let ingress = keyed(render(
        "ops",
        &[
            "webhooks.ingress.enabled=true",
            "webhooks.ingress.host=hooks.example.com",
        ],
    ));
    assert_eq!(env_of(&ingress)["WEBHOOK_URL"], "http://hooks.example.com");

    let flux = keyed(render("ops", &["downstream.fluxInputProviders=true"]));
    let rules = &flux[&role]["rules"];
    assert_eq!(rules.as_array().unwrap().len(), 1);
    assert_eq!(
        rules[0]["resources"],
        serde_json::json!(["resourcesetinputproviders"])
    );
    assert_eq!(env_of(&flux)["REFRESH_FLUX_INPUT_PROVIDERS"], "true");
}

#[test]
fn each_shard_is_a_deployment_of_its_own_with_its_lease_services_and_selector() {
    let chart = keyed(render(
        "ops",
        &[
            "sharding.shards={s1,s2}",
            "sharding.webhookUrls.s1=https://s1.hooks.example.com",
            "webhooks.url=https://hooks.example.com",
        ],
    ));
    let env_of = |name: &str| -> BTreeMap<String, Value> {
        let deployment = &chart[&("Deployment".into(), "ops".into(), name.into())];
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        (container["env"].as_array().unwrap().iter())
            .map(|e| (e["name"].as_str().unwrap().to_owned(), e["value"].clone()))
            .collect()
    };
    let (main, s1, s2) = (
        env_of("bitbucket-operator"),
        env_of("bitbucket-operator-s1"),
        env_of("bitbucket-operator-s2"),
    );
    assert_eq!(main["WATCH_LABEL_SELECTOR"], "!scm.shippable.io/shard");
    assert!(!main.contains_key("LEASE_NAME"), "the main keeps its Lease");
    assert_eq!(s1["WATCH_LABEL_SELECTOR"], "scm.shippable.io/shard=s1");
    assert_eq!(s1["LEASE_NAME"], "bitbucket-operator-s1");
    assert_eq!(s2["LEASE_NAME"], "bitbucket-operator-s2");
    assert_eq!(main["WEBHOOK_URL"], "https://hooks.example.com");
    assert_eq!(s1["WEBHOOK_URL"], "https://s1.hooks.example.com");
    assert!(!s2.contains_key("WEBHOOK_URL"), "{s2:?}");

    // No Service or Deployment selects another's pods.
    for name in ["bitbucket-operator", "bitbucket-operator-s1"] {
        let deployment = &chart[&("Deployment".into(), "ops".into(), name.into())];
        let selector = serde_json::json!({"app.kubernetes.io/name": name});
        assert_eq!(deployment["spec"]["selector"]["matchLabels"], selector);
        assert_eq!(
            deployment["spec"]["template"]["metadata"]["labels"],
            selector
        );
        for service in ["metrics", "webhooks", "plugin"] {
            let service = &chart[&("Service".into(), "ops".into(), format!("{name}-{service}"))];
            assert_eq!(service["spec"]["selector"], selector);
        }
        let budget = &chart[&("PodDisruptionBudget".into(), "ops".into(), name.into())];
        assert_eq!(budget["spec"]["selector"]["matchLabels"], selector);
    }
    let lease = &chart[&(
        "Role".into(),
        "ops".into(),
        "bitbucket-operator-lease".into(),
    )];
    assert_eq!(
        lease["rules"][1]["resourceNames"],
        serde_json::json!([
            "bitbucket-operator",
            "bitbucket-operator-s1",
            "bitbucket-operator-s2"
        ])
    );
    // Without shards, nothing of it.
    let plain = keyed(render("ops", &[]));
    assert!(!plain.keys().any(|(_, _, name)| name.contains("-s1")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_accepts_everything_the_chart_renders() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "chart").await;
    let rendered = helm(&[
        "template",
        "bitbucket-operator",
        CHART,
        "--namespace",
        &ns.name,
        "--include-crds",
        "--set",
        "webhooks.ingress.enabled=true",
        "--set",
        "webhooks.ingress.host=hooks.example.com",
        "--set",
        "downstream.applicationSets=true",
        "--set",
        "downstream.fluxInputProviders=true",
        "--set",
        "sharding.shards={s1}",
    ]);
    assert!(rendered.status.success());
    let file = std::env::temp_dir().join(format!("{}.yaml", ns.name));
    std::fs::write(&file, &rendered.stdout).unwrap();
    let applied = crate::support::kubectl(&[
        "apply",
        "--server-side",
        "--dry-run=server",
        // The suite's own install of the policies owns their bindings, whose parameter (the
        // operator's ServiceAccount) is in another namespace than this release's.
        "--force-conflicts",
        "-f",
        file.to_str().unwrap(),
    ]);
    let said = String::from_utf8_lossy(&applied.stdout);
    assert!(
        applied.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let count = objects(&String::from_utf8(rendered.stdout).unwrap()).len();
    assert_eq!(said.lines().count(), count, "{said}");
    assert!(
        said.lines().all(|l| l.ends_with("(server dry run)")),
        "{said}"
    );
}

#[test]
fn monitoring_values_render_a_service_monitor_and_the_promtool_checked_alerts() {
    let monitor = (
        "ServiceMonitor".into(),
        "ops".into(),
        "bitbucket-operator".into(),
    );
    let rule = (
        "PrometheusRule".into(),
        "ops".into(),
        "bitbucket-operator".into(),
    );
    let off = keyed(render("ops", &[]));
    assert!(
        !off.contains_key(&monitor) && !off.contains_key(&rule),
        "off by default"
    );

    let on = keyed(render(
        "ops",
        &[
            "monitoring.serviceMonitor.enabled=true",
            "monitoring.prometheusRule.enabled=true",
            "monitoring.prometheusRule.runbookBaseUrl=https://wiki.example.com/runbooks",
            "monitoring.labels.release=prometheus",
        ],
    ));
    let endpoints = &on[&monitor]["spec"]["endpoints"];
    assert_eq!(endpoints[0]["port"], "metrics");
    assert_eq!(on[&monitor]["metadata"]["labels"]["release"], "prometheus");
    // The rule carries the very groups promtool checks, with the runbooks where the values say.
    let file = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(CHART)
            .join("files/alerts.yaml"),
    )
    .unwrap();
    let file = file.replace(
        "https://github.com/shippable/bitbucket-operator/blob/main/docs/runbooks",
        "https://wiki.example.com/runbooks",
    );
    let groups: Value = serde_saphyr::from_str(&file).unwrap();
    assert_eq!(on[&rule]["spec"]["groups"], groups["groups"]);
}

#[test]
fn the_grafana_dashboard_renders_for_the_sidecar_and_parses() {
    let dashboard = (
        "ConfigMap".into(),
        "grafana".into(),
        "bitbucket-operator-dashboard".into(),
    );
    assert!(
        !keyed(render("ops", &[])).contains_key(&dashboard),
        "off by default"
    );
    let on = keyed(render(
        "ops",
        &[
            "monitoring.grafanaDashboard.enabled=true",
            "monitoring.grafanaDashboard.namespace=grafana",
        ],
    ));
    let config_map = &on[&dashboard];
    assert_eq!(config_map["metadata"]["labels"]["grafana_dashboard"], "1");
    let json = config_map["data"]["bitbucket-operator.json"]
        .as_str()
        .unwrap();
    let parsed: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(parsed["uid"], "bitbucket-operator");
    let file = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(CHART)
            .join("files/dashboard.json"),
    )
    .unwrap();
    assert_eq!(
        parsed,
        serde_json::from_str::<serde_json::Value>(&file).unwrap()
    );
}
