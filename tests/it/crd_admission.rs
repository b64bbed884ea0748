//! The CRDs on a real API server: they install, accept every example, refuse bad input at
//! admission with a message that names the field and says what is allowed, publish their field
//! descriptions and printer columns, and keep status behind the status subresource.

use std::collections::BTreeSet;

use crate::support::{
    PATIENCE, TestNamespace, api_for, apply_manifests, client, eventually, install_crds,
    yaml_documents,
};
use bitbucket_operator::api::{BitbucketIntegration, Subscription};
use futures::future::join_all;
use kube::{
    Api, Client, Resource,
    api::{ApiResource, DynamicObject, Patch, PatchParams, PostParams},
};
use serde_json::{Value, json};

/// A valid Cloud integration; each invalid case changes it with a JSON merge patch.
fn integration() -> Value {
    json!({
        "apiVersion": "scm.shippable.io/v1alpha1",
        "kind": "BitbucketIntegration",
        "metadata": {"name": "acme"},
        "spec": {
            "displayName": "Acme",
            "credentials": {"type": "ApiToken", "secretRef": {"name": "acme-token"}}
        }
    })
}

/// A valid Cloud subscription; each invalid case changes it with a JSON merge patch.
fn subscription() -> Value {
    json!({
        "apiVersion": "scm.shippable.io/v1alpha1",
        "kind": "Subscription",
        "metadata": {"name": "acme-ci"},
        "spec": {"integrationRef": {"name": "acme"}, "workspace": "acme"}
    })
}

/// RFC 7396 JSON merge patch: objects merge, `null` deletes, anything else replaces.
fn merged(mut base: Value, patch: Value) -> Value {
    fn merge(base: &mut Value, patch: Value) {
        match (base, patch) {
            (Value::Object(base), Value::Object(patch)) => {
                for (key, value) in patch {
                    if value.is_null() {
                        base.remove(&key);
                    } else {
                        merge(base.entry(key).or_insert(Value::Null), value);
                    }
                }
            }
            (base, patch) => *base = patch,
        }
    }
    merge(&mut base, patch);
    base
}

fn data_center(extra: Value) -> Value {
    merged(
        json!({"spec": {
            "server": {"type": "DataCenter", "url": "https://bitbucket.example.com"},
            "credentials": {"type": "AccessToken"}
        }}),
        extra,
    )
}

struct Case {
    what: &'static str,
    manifest: Value,
    /// A fragment of the server's error message; it names the field and what is allowed.
    expected: &'static str,
}

fn bad_integration(what: &'static str, patch: Value, expected: &'static str) -> Case {
    Case {
        what,
        manifest: merged(integration(), patch),
        expected,
    }
}

fn bad_subscription(what: &'static str, patch: Value, expected: &'static str) -> Case {
    Case {
        what,
        manifest: merged(subscription(), patch),
        expected,
    }
}

fn invalid_cases() -> Vec<Case> {
    let long_name = "x".repeat(129);
    let many_projects: Vec<String> = (0..101).map(|i| format!("P{i}")).collect();
    vec![
        // BitbucketIntegration
        bad_integration(
            "no credentials",
            json!({"spec": {"credentials": null}}),
            "spec.credentials: Required value",
        ),
        bad_integration(
            "an app password (removed by Atlassian)",
            json!({"spec": {"credentials": {"type": "AppPassword"}}}),
            r#"spec.credentials.type: Unsupported value: "AppPassword": supported values: "ApiToken", "AccessToken", "OAuthConsumer", "OAuthUser", "Basic""#,
        ),
        bad_integration(
            "no Secret reference",
            json!({"spec": {"credentials": {"secretRef": null}}}),
            "spec.credentials.secretRef: Required value",
        ),
        bad_integration(
            "a Secret name that is not a DNS name",
            json!({"spec": {"credentials": {"secretRef": {"name": "Acme_Token"}}}}),
            "spec.credentials.secretRef.name: Invalid value: \"Acme_Token\": must be the name of a Secret: lowercase letters, digits, '-' and '.'",
        ),
        bad_integration(
            "an empty display name",
            json!({"spec": {"displayName": ""}}),
            "spec.displayName: Invalid value: \"\": spec.displayName in body should be at least 1 chars long",
        ),
        bad_integration(
            "a display name over 128 characters",
            json!({"spec": {"displayName": long_name}}),
            "spec.displayName: Too long: may not be more than 128 bytes",
        ),
        bad_integration(
            "an unknown server type",
            json!({"spec": {"server": {"type": "Server"}}}),
            r#"spec.server.type: Unsupported value: "Server": supported values: "Cloud", "DataCenter""#,
        ),
        bad_integration(
            "Data Center without a URL",
            data_center(json!({"spec": {"server": {"url": null}}})),
            "spec.server.url: Required value: Bitbucket Data Center needs url: the base URL of the instance",
        ),
        bad_integration(
            "a Data Center URL pointing at the REST API",
            data_center(
                json!({"spec": {"server": {"url": "https://bitbucket.example.com/rest/api/1.0"}}}),
            ),
            "spec.server.url: Invalid value: for Bitbucket Data Center, url is the base URL of the instance without /rest",
        ),
        bad_integration(
            "plain http to a remote host",
            data_center(json!({"spec": {"server": {"url": "http://bitbucket.example.com"}}})),
            "spec.server.url: Invalid value: \"http://bitbucket.example.com\": must use https: plain http is only accepted for loopback hosts",
        ),
        bad_integration(
            "the cloud metadata address",
            data_center(json!({"spec": {"server": {"url": "https://169.254.169.254/latest"}}})),
            "spec.server.url: Invalid value: \"https://169.254.169.254/latest\": must not name a link-local or cloud-metadata address",
        ),
        bad_integration(
            "an IPv6 link-local address",
            data_center(json!({"spec": {"server": {"url": "https://[fe80::1]:7990"}}})),
            "must not name a link-local or cloud-metadata address",
        ),
        bad_integration(
            "credentials inside the URL",
            data_center(
                json!({"spec": {"server": {"url": "https://ci:hunter2@bitbucket.example.com"}}}),
            ),
            "spec.server.url: Invalid value: \"https://ci:hunter2@bitbucket.example.com\": must not contain credentials (user:password@)",
        ),
        bad_integration(
            "a URL without a scheme",
            data_center(json!({"spec": {"server": {"url": "bitbucket.example.com"}}})),
            "spec.server.url: Invalid value: \"bitbucket.example.com\": must be an absolute http(s) URL",
        ),
        bad_integration(
            "a URL with a query",
            data_center(
                json!({"spec": {"server": {"url": "https://bitbucket.example.com/?next=1"}}}),
            ),
            "spec.server.url: Invalid value: \"https://bitbucket.example.com/?next=1\": must not have a query (?) or fragment (#)",
        ),
        bad_integration(
            "Basic on Bitbucket Cloud",
            json!({"spec": {"credentials": {"type": "Basic"}}}),
            "spec.credentials.type: Invalid value: Basic is for Bitbucket Data Center only (server.type: DataCenter)",
        ),
        bad_integration(
            "an API token on Data Center",
            data_center(json!({"spec": {"credentials": {"type": "ApiToken"}}})),
            "spec.credentials.type: Invalid value: ApiToken, OAuthConsumer and OAuthUser are for Bitbucket Cloud only",
        ),
        bad_integration(
            "an OAuth consumer on Data Center",
            data_center(json!({"spec": {"credentials": {"type": "OAuthConsumer"}}})),
            "spec.credentials.type: Invalid value: ApiToken, OAuthConsumer and OAuthUser are for Bitbucket Cloud only",
        ),
        bad_integration(
            "a signed-in OAuth user on Data Center",
            data_center(json!({"spec": {"credentials": {"type": "OAuthUser"}}})),
            "spec.credentials.type: Invalid value: ApiToken, OAuthConsumer and OAuthUser are for Bitbucket Cloud only",
        ),
        bad_integration(
            "a Cloud access token without its workspace",
            json!({"spec": {"credentials": {"type": "AccessToken"}}}),
            "spec.workspace: Required value: a Bitbucket Cloud AccessToken belongs to one workspace",
        ),
        bad_integration(
            "a workspace on Data Center",
            data_center(json!({"spec": {"workspace": "acme"}})),
            "spec.workspace: Forbidden: workspace applies to Bitbucket Cloud only",
        ),
        bad_integration(
            "a workspace with a space",
            json!({"spec": {"workspace": "acme corp"}}),
            "spec.workspace: Invalid value: \"acme corp\": must be a Bitbucket Cloud workspace slug",
        ),
        bad_integration(
            "a validation interval in words",
            json!({"spec": {"validationInterval": "30 minutes"}}),
            "spec.validationInterval: Invalid value: \"30 minutes\": must be a duration such as 30m, 1h or 1h30m",
        ),
        bad_integration(
            "a validation interval under a minute",
            json!({"spec": {"validationInterval": "30s"}}),
            "spec.validationInterval: Invalid value: \"30s\": must be at least 1m",
        ),
        bad_integration(
            "a CA bundle key with a space",
            data_center(
                json!({"spec": {"server": {"caBundleSecretRef": {"name": "corp-ca", "key": "ca crt"}}}}),
            ),
            "spec.server.caBundleSecretRef.key: Invalid value: \"ca crt\": must be a Secret key",
        ),
        // Subscription
        bad_subscription(
            "no integration reference",
            json!({"spec": {"integrationRef": null}}),
            "spec.integrationRef: Required value",
        ),
        bad_subscription(
            "an integration name that is not a DNS name",
            json!({"spec": {"integrationRef": {"name": "Acme!"}}}),
            "spec.integrationRef.name: Invalid value: \"Acme!\": must be the name of a BitbucketIntegration",
        ),
        bad_subscription(
            "a workspace URL instead of a slug",
            json!({"spec": {"workspace": "https://bitbucket.org/acme"}}),
            "spec.workspace: Invalid value: \"https://bitbucket.org/acme\": must be a Bitbucket Cloud workspace slug",
        ),
        bad_subscription(
            "a project key starting with a digit",
            json!({"spec": {"projects": ["API", "1WEB"]}}),
            "spec.projects: Invalid value: each entry must be a project key (a letter, then letters, digits or '_', e.g. API) or a personal project (~username)",
        ),
        bad_subscription(
            "the same project twice",
            json!({"spec": {"projects": ["API", "API"]}}),
            r#"spec.projects[1]: Duplicate value: "API""#,
        ),
        bad_subscription(
            "more than 100 projects",
            json!({"spec": {"projects": many_projects}}),
            "spec.projects: Too many: 101: must have at most 100 items",
        ),
        bad_subscription(
            "an unclosed bracket in an include glob",
            json!({"spec": {"repositories": {"include": ["api-[ab"]}}}),
            "spec.repositories.include: Invalid value: each entry must be a glob on repository slugs",
        ),
        bad_subscription(
            "a path in an exclude glob",
            json!({"spec": {"repositories": {"exclude": ["acme/*"]}}}),
            "spec.repositories.exclude: Invalid value: each entry must be a glob on repository slugs",
        ),
        bad_subscription(
            "an unknown visibility",
            json!({"spec": {"repositories": {"visibility": "Internal"}}}),
            r#"spec.repositories.visibility: Unsupported value: "Internal": supported values: "All", "Private", "Public""#,
        ),
        bad_subscription(
            "a sync interval without a unit",
            json!({"spec": {"syncInterval": "600"}}),
            "spec.syncInterval: Invalid value: \"600\": must be a duration such as 30m, 1h or 1h30m",
        ),
        bad_subscription(
            "a sync interval under a minute",
            json!({"spec": {"syncInterval": "59s"}}),
            "spec.syncInterval: Invalid value: \"59s\": must be at least 1m",
        ),
        bad_subscription(
            "suspend as a string",
            json!({"spec": {"suspend": "yes"}}),
            "spec.suspend: Invalid value: \"string\": spec.suspend in body must be of type boolean",
        ),
    ]
}

async fn create(
    client: &Client,
    namespace: &str,
    manifest: &Value,
) -> Result<DynamicObject, kube::Error> {
    let api = api_for(client, namespace, manifest).await;
    let object: DynamicObject = serde_json::from_value(manifest.clone()).unwrap();
    api.create(&PostParams::default(), &object).await
}

#[tokio::test]
async fn every_example_in_deploy_examples_is_accepted() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "examples").await;

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 8,
        "expected the example set, found {files:?}"
    );
    let mut kinds = BTreeSet::new();
    for file in files {
        let manifests = yaml_documents(&std::fs::read_to_string(&file).unwrap());
        for (manifest, result) in manifests
            .iter()
            .zip(apply_manifests(&client, &ns.name, &manifests).await)
        {
            if let Err(e) = result {
                panic!("{} was refused: {e}", file.display());
            }
            kinds.insert(manifest["kind"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(
        kinds,
        BTreeSet::from(["BitbucketIntegration", "Secret", "Subscription"].map(String::from))
    );
}

/// A CEL rule's refusal without the value it quotes: Kubernetes 1.33 prints the value's type
/// (`Invalid value: "string": …`), later versions the value itself or nothing. The field and
/// the message, which users read, are the same.
fn without_value(message: &str) -> String {
    regex::Regex::new(r#"Invalid value: "[^"]*": "#)
        .unwrap()
        .replace_all(message, "Invalid value: ")
        .into_owned()
}

#[tokio::test]
async fn invalid_manifests_are_refused_with_a_message_naming_the_field_and_what_is_allowed() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "invalid").await;

    let cases = invalid_cases();
    assert!(cases.len() >= 25, "the table must stay at least 25 cases");
    // The valid bases must pass, or every case would "fail" for the wrong reason.
    create(&client, &ns.name, &integration()).await.unwrap();
    create(&client, &ns.name, &subscription()).await.unwrap();

    let outcomes = join_all(cases.iter().enumerate().map(|(i, case)| {
        let manifest = merged(
            case.manifest.clone(),
            json!({"metadata": {"name": format!("case-{i}")}}),
        );
        let client = client.clone();
        let ns = ns.name.clone();
        async move { create(&client, &ns, &manifest).await }
    }))
    .await;

    let mut wrong = Vec::new();
    for (case, outcome) in cases.iter().zip(outcomes) {
        match outcome {
            Ok(_) => wrong.push(format!("- {}: accepted", case.what)),
            Err(kube::Error::Api(status))
                if status.code == 422
                    && without_value(&status.message).contains(&without_value(case.expected)) => {}
            Err(e) => wrong.push(format!(
                "- {}: expected a 422 containing\n    {}\n  got\n    {e}",
                case.what, case.expected
            )),
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases went wrong:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

/// Inputs that look unusual but are right: the rules must not refuse them.
fn valid_edge_cases() -> Vec<(&'static str, Value)> {
    vec![
        (
            "a loopback simulator over plain http",
            merged(
                integration(),
                json!({"spec": {"server": {"url": "http://127.0.0.1:8080/2.0"}}}),
            ),
        ),
        (
            "Data Center on localhost over plain http",
            merged(
                integration(),
                data_center(json!({"spec": {"server": {"url": "http://localhost:7990"}}})),
            ),
        ),
        (
            "Data Center on IPv6 loopback",
            merged(
                integration(),
                data_center(json!({"spec": {"server": {"url": "http://[::1]:7990/bitbucket"}}})),
            ),
        ),
        (
            "Data Center under a context path",
            merged(
                integration(),
                data_center(
                    json!({"spec": {"server": {"url": "https://git.example.com/bitbucket"}}}),
                ),
            ),
        ),
        (
            "Data Center Basic with a CA bundle (default key)",
            merged(
                integration(),
                data_center(json!({"spec": {
                    "credentials": {"type": "Basic"},
                    "server": {"caBundleSecretRef": {"name": "corp-ca"}}
                }})),
            ),
        ),
        (
            "a Cloud access token with a workspace UUID",
            merged(
                integration(),
                json!({"spec": {
                    "credentials": {"type": "AccessToken"},
                    "workspace": "{6c2e2e8a-1f0b-4c7e-9a55-0d3f1a2b3c4d}"
                }}),
            ),
        ),
        (
            "an OAuth consumer with an hour and a half between checks",
            merged(
                integration(),
                json!({"spec": {"credentials": {"type": "OAuthConsumer"}, "validationInterval": "1h30m"}}),
            ),
        ),
        (
            "a subscription with every filter",
            merged(
                subscription(),
                json!({"spec": {
                    "projects": ["API", "web_2", "~jdoe"],
                    "repositories": {"include": ["api-*", "svc-?", "[!x]*"], "exclude": ["*.archive"], "visibility": "Public"},
                    "syncInterval": "90s",
                    "suspend": true
                }}),
            ),
        ),
        (
            "a Data Center subscription without a workspace",
            merged(
                subscription(),
                json!({"spec": {"workspace": null, "projects": ["PLAT"]}}),
            ),
        ),
    ]
}

#[tokio::test]
async fn unusual_but_valid_manifests_are_accepted() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "valid").await;
    let mut refused = Vec::new();
    for (i, (what, manifest)) in valid_edge_cases().into_iter().enumerate() {
        let manifest = merged(manifest, json!({"metadata": {"name": format!("case-{i}")}}));
        if let Err(e) = create(&client, &ns.name, &manifest).await {
            refused.push(format!("- {what}: {e}"));
        }
    }
    assert!(
        refused.is_empty(),
        "valid manifests were refused:\n{}",
        refused.join("\n")
    );
}

#[tokio::test]
async fn the_server_fills_in_the_documented_defaults() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "defaults").await;

    let minimal = json!({
        "apiVersion": "scm.shippable.io/v1alpha1", "kind": "BitbucketIntegration",
        "metadata": {"name": "minimal"},
        "spec": {"credentials": {"type": "ApiToken", "secretRef": {"name": "s"}}}
    });
    create(&client, &ns.name, &minimal).await.unwrap();
    let integration = Api::<BitbucketIntegration>::namespaced(client.clone(), &ns.name)
        .get("minimal")
        .await
        .unwrap();
    assert_eq!(
        integration.spec.server.url.as_deref(),
        Some("https://api.bitbucket.org/2.0")
    );
    assert_eq!(integration.spec.validation_interval.0, "30m");

    let minimal = json!({
        "apiVersion": "scm.shippable.io/v1alpha1", "kind": "Subscription",
        "metadata": {"name": "minimal"},
        "spec": {"integrationRef": {"name": "minimal"}, "workspace": "acme"}
    });
    create(&client, &ns.name, &minimal).await.unwrap();
    let subscription = Api::<Subscription>::namespaced(client, &ns.name)
        .get("minimal")
        .await
        .unwrap();
    assert_eq!(subscription.spec.sync_interval.0, "10m");
    assert_eq!(
        serde_json::to_value(subscription.spec.repositories.visibility).unwrap(),
        "All"
    );
    assert!(!subscription.spec.suspend);
}

#[tokio::test]
async fn the_published_openapi_explains_every_field() {
    let client = client().await;
    install_crds(&client).await;

    // What `kubectl explain` reads: the OpenAPI v3 document of the group version.
    let request = http::Request::get("/openapi/v3/apis/scm.shippable.io/v1alpha1")
        .body(Vec::new())
        .unwrap();
    let document: Value = eventually(
        "the OpenAPI document to include the CRDs",
        PATIENCE,
        || async {
            let document: Value = client.request(request_clone(&request)).await.unwrap();
            document
                .pointer("/components/schemas")
                .is_some_and(|s| {
                    s.as_object()
                        .unwrap()
                        .keys()
                        .any(|k| k.ends_with("BitbucketIntegration"))
                        && s.as_object()
                            .unwrap()
                            .keys()
                            .any(|k| k.ends_with(".Subscription"))
                })
                .then_some(document)
        },
    )
    .await;
    let schemas = document["components"]["schemas"].as_object().unwrap();
    let schema = |suffix: &str| {
        schemas
            .iter()
            .find(|(k, _)| k.ends_with(suffix))
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    let integration = schema("v1alpha1.BitbucketIntegration");
    let credentials_type =
        &integration["properties"]["spec"]["properties"]["credentials"]["properties"]["type"];
    assert!(
        credentials_type["description"]
            .as_str()
            .unwrap()
            .contains("Secret keys `email`, `token`"),
        "{credentials_type}"
    );
    let subscription = schema("v1alpha1.Subscription");
    let sync_interval = &subscription["properties"]["spec"]["properties"]["syncInterval"];
    assert!(
        sync_interval["description"]
            .as_str()
            .unwrap()
            .contains("at least 1m")
    );
    assert_eq!(sync_interval["default"], "10m");

    // Every property of both specs is described.
    let mut undocumented = Vec::new();
    for (kind, schema) in [
        ("BitbucketIntegration", &integration),
        ("Subscription", &subscription),
    ] {
        collect_undocumented(
            &schema["properties"]["spec"],
            &format!("{kind}.spec"),
            &mut undocumented,
        );
    }
    assert!(
        undocumented.is_empty(),
        "fields without a description: {undocumented:?}"
    );
}

fn request_clone(request: &http::Request<Vec<u8>>) -> http::Request<Vec<u8>> {
    http::Request::get(request.uri().clone())
        .body(Vec::new())
        .unwrap()
}

fn collect_undocumented(schema: &Value, path: &str, out: &mut Vec<String>) {
    if let Some(properties) = schema.get("properties").and_then(Value::as_object) {
        for (name, property) in properties {
            let path = format!("{path}.{name}");
            // A $ref'd or allOf-wrapped property carries its description beside the wrapper.
            if property.get("description").is_none() {
                out.push(path.clone());
            }
            collect_undocumented(property, &path, out);
            if let Some(items) = property.get("items") {
                collect_undocumented(items, &format!("{path}[]"), out);
            }
        }
    }
}

#[tokio::test]
async fn kubectl_get_shows_the_printer_columns() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "columns").await;
    create(&client, &ns.name, &integration()).await.unwrap();
    create(&client, &ns.name, &subscription()).await.unwrap();

    for (resource, expected) in [
        (
            ApiResource::erase::<BitbucketIntegration>(&()),
            vec![
                "Name",
                "Display Name",
                "Type",
                "Account",
                "Ready",
                "In Use",
                "Expires",
                "Age",
            ],
        ),
        (
            ApiResource::erase::<Subscription>(&()),
            vec!["Name", "Integration", "Workspace", "Repos", "Ready", "Age"],
        ),
    ] {
        // The Table representation is what kubectl get prints.
        let request = http::Request::get(format!(
            "/apis/{}/namespaces/{}/{}",
            resource.api_version, ns.name, resource.plural
        ))
        .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io")
        .body(Vec::new())
        .unwrap();
        let table: Value = client.request(request).await.unwrap();
        let columns: Vec<&str> = table["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(columns, expected, "columns of {}", resource.kind);
        let row = &table["rows"][0]["cells"];
        assert_eq!(
            row[0],
            "acme".to_owned()
                + if resource.kind == "Subscription" {
                    "-ci"
                } else {
                    ""
                }
        );
        if resource.kind == "BitbucketIntegration" {
            assert_eq!(row[1], "Acme");
            assert_eq!(
                row[2], "Cloud",
                "the server-side default shows in the Type column"
            );
        } else {
            assert_eq!(row[1], "acme");
            assert_eq!(row[2], "acme");
        }
    }
}

#[tokio::test]
async fn status_is_written_only_through_the_status_subresource() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "status").await;
    let api = Api::<BitbucketIntegration>::namespaced(client.clone(), &ns.name);

    // A status sent with the object is dropped on create...
    let with_status = merged(integration(), json!({"status": {"subscriptions": 7}}));
    create(&client, &ns.name, &with_status).await.unwrap();
    assert_eq!(api.get("acme").await.unwrap().status, None);

    // ...and on update of the main resource...
    let params = PatchParams::default();
    api.patch(
        "acme",
        &params,
        &Patch::Merge(json!({"status": {"subscriptions": 7}})),
    )
    .await
    .unwrap();
    assert_eq!(api.get("acme").await.unwrap().status, None);

    // ...while the status subresource writes it, without touching the spec's generation.
    let before = api.get("acme").await.unwrap();
    let after = api
        .patch_status(
            "acme",
            &params,
            &Patch::Merge(json!({"status": {"subscriptions": 7}})),
        )
        .await
        .unwrap();
    assert_eq!(after.status.as_ref().unwrap().subscriptions, Some(7));
    assert_eq!(after.meta().generation, before.meta().generation);
}

#[tokio::test]
async fn subscriptions_can_be_listed_by_the_integration_they_use() {
    let client = client().await;
    install_crds(&client).await;
    let ns = TestNamespace::create(&client, "selector").await;
    for (name, integration) in [("a", "acme"), ("b", "other"), ("c", "acme")] {
        let manifest = merged(
            subscription(),
            json!({"metadata": {"name": name}, "spec": {"integrationRef": {"name": integration}}}),
        );
        create(&client, &ns.name, &manifest).await.unwrap();
    }
    // A server-side field selector: the deletion check lists exactly the users of one integration.
    let api = Api::<Subscription>::namespaced(client, &ns.name);
    let listed = api
        .list(&kube::api::ListParams::default().fields("spec.integrationRef.name=acme"))
        .await
        .unwrap();
    let names: Vec<_> = listed
        .iter()
        .map(|s| s.meta().name.clone().unwrap())
        .collect();
    assert_eq!(names, ["a", "c"]);
}

#[tokio::test]
async fn short_names_and_categories_are_served() {
    let client = client().await;
    install_crds(&client).await;
    let request = http::Request::get("/apis/scm.shippable.io/v1alpha1")
        .body(Vec::new())
        .unwrap();
    let list: Value = client.request(request).await.unwrap();
    let resources = list["resources"].as_array().unwrap();
    let find = |name: &str| {
        resources
            .iter()
            .find(|r| r["name"] == name)
            .unwrap()
            .clone()
    };
    let integrations = find("bitbucketintegrations");
    assert_eq!(integrations["shortNames"], json!(["bbi"]));
    assert_eq!(integrations["categories"], json!(["shippable", "scm"]));
    let subscriptions = find("subscriptions");
    assert_eq!(subscriptions["shortNames"], json!(["bbsub"]));
    assert_eq!(subscriptions["categories"], json!(["shippable", "scm"]));
    let slices = find("repositoryslices");
    assert_eq!(slices["shortNames"], json!(["bbrs"]));
    assert_eq!(slices["categories"], json!(["shippable", "scm"]));
    assert!(
        resources
            .iter()
            .any(|r| r["name"] == "bitbucketintegrations/status")
    );
}
