//! Shared helpers for the integration tests that run against a real Kubernetes API server.
//!
//! The server is the one `KUBECONFIG` names: `make test` starts a control plane built from source
//! and sets it. Every test gets its own namespace, so tests run in parallel against one plane.
//! Tests fail (never skip) when no cluster is configured.

use std::{future::Future, time::Duration};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::{
    Api, Client, Config,
    api::{DeleteParams, ObjectMeta, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};

/// How long a test waits for the cluster to do something (a watch event, the garbage collector,
/// namespace finalization) before failing. Generous: these machines have 2 cores.
pub const PATIENCE: Duration = Duration::from_secs(90);

/// Label put on every namespace a test creates, to find leftovers after an aborted run.
pub const TEST_NAMESPACE_LABEL: &str = "bitbucket-operator.test/owned";

/// A client for the cluster `KUBECONFIG` points at. Panics with instructions when unset, so a
/// run without a cluster fails loudly instead of passing by skipping.
pub async fn client() -> Client {
    let path = std::env::var_os("KUBECONFIG").expect(
        "KUBECONFIG is not set: run the tests with `make test`, which starts a control plane, \
         or point KUBECONFIG at an existing cluster",
    );
    let kubeconfig = Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("reading KUBECONFIG {}: {e}", path.to_string_lossy()));
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("building a client configuration from KUBECONFIG");
    Client::try_from(config).expect("building a Kubernetes client")
}

/// Waits for `future`, failing the test with `what` if it takes longer than [`PATIENCE`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {PATIENCE:?} waiting for {what}"))
}

/// Polls `check` until it gives `Some`, and returns that; fails the test after `timeout` naming
/// `what` it waited for. The interval grows from 10 ms to 100 ms. For what no watch can serve
/// (processes, files, HTTP answers, metrics, the simulator's counters); objects in the API
/// server are awaited with a watch ([`operator::await_object`]).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// A ValidatingAdmissionPolicy and its binding, both named `name`, that refuse the requests
/// `rule` (a `resourceRules` entry) matches in `namespace` unless CEL `expression` holds, saying
/// `message`: the real API server refusing the operator's writes. Returns once `refused()` sees
/// the API server enforce it; [`allow`] takes it away.
pub async fn refuse<F, Fut>(
    client: &Client,
    name: &str,
    namespace: &str,
    rule: serde_json::Value,
    (expression, message): (&str, &str),
    refused: F,
) where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "resourceRules": [rule]
            },
            "validations": [{"expression": expression, "message": message}]
        }
    }))
    .unwrap();
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"policyName": name, "validationActions": ["Deny"]}
    }))
    .unwrap();
    Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .create(&PostParams::default(), &policy)
        .await
        .unwrap();
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    eventually(
        &format!("the API server to enforce {name}"),
        PATIENCE,
        || async { refused().await.then_some(()) },
    )
    .await;
}

/// Takes away what [`refuse`] set up as `name`.
pub async fn allow(client: &Client, name: &str) {
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    Api::<ValidatingAdmissionPolicyBinding>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
    Api::<ValidatingAdmissionPolicy>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await
        .unwrap();
}

/// How many namespaces tests of this process hold now: the tests using the plane.
static SHARING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// The test (its thread's name: libtest names each test's thread after it) that changes the
/// plane for everyone, while it runs.
static ALONE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

fn this_test() -> String {
    std::thread::current().name().unwrap_or("main").to_owned()
}

/// Claims the plane for a test that changes it for everyone (the `exclusive` module); fails at
/// once if another test of this process uses it. Held until dropped.
pub fn alone() -> Alone {
    let me = this_test();
    let sharing = SHARING.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        sharing, 0,
        "{me} changes the plane for every test and must run alone, but {sharing} other tests use \
         it: run `cargo test --test it -- exclusive:: --test-threads=1` (make test does, after \
         the others)"
    );
    *ALONE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(me);
    Alone
}

/// The claim [`alone`] returns.
pub struct Alone;

impl Drop for Alone {
    fn drop(&mut self) {
        *ALONE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }
}

/// Fails a test that starts using the plane while an `exclusive` test changes it.
fn share_the_plane() {
    let me = this_test();
    if let Some(alone) = ALONE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
        .filter(|alone| **alone != me)
    {
        panic!(
            "{alone} is changing the plane for every test: run the exclusive:: tests alone \
             (`cargo test --test it -- --skip exclusive::`, then \
             `cargo test --test it -- exclusive:: --test-threads=1`, as make test does)"
        );
    }
}

/// A namespace that belongs to one test. Created with a server-generated unique name; deleted
/// when dropped, even when the test panics.
pub struct TestNamespace {
    pub name: String,
}

impl TestNamespace {
    /// Creates `<prefix>-<random>`; `prefix` should say which test owns it.
    pub async fn create(client: &Client, prefix: &str) -> Self {
        share_the_plane();
        SHARING.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let namespace = Namespace {
            metadata: ObjectMeta {
                generate_name: Some(format!("{prefix}-")),
                labels: Some([(TEST_NAMESPACE_LABEL.to_owned(), "true".to_owned())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        let created = namespaces
            .create(&PostParams::default(), &namespace)
            .await
            .expect("creating the test namespace");
        Self {
            name: created
                .metadata
                .name
                .expect("the server names generated namespaces"),
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        SHARING.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        // Drop cannot await, and the test's runtime may be single-threaded and busy dropping
        // us, so the delete runs on a runtime and client of its own.
        let name = std::mem::take(&mut self.name);
        let deleted = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building a runtime to delete the test namespace");
            runtime.block_on(async {
                let client = client().await;
                release_finalizers(&client, &name).await;
                let namespaces: Api<Namespace> = Api::all(client);
                match namespaces.delete(&name, &DeleteParams::background()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(status)) if status.is_not_found() => {}
                    Err(e) => eprintln!("could not delete test namespace {name}: {e}"),
                }
            })
        })
        .join();
        if deleted.is_err() && !std::thread::panicking() {
            panic!("deleting the test namespace panicked");
        }
    }
}

/// Removes the operator's finalizer from every integration in `namespace`: the test's operator
/// is gone by now, and a held finalizer would leave the namespace Terminating forever (and keep
/// the namespace controller busy retrying it while other tests wait).
pub async fn release_finalizers(client: &Client, namespace: &str) {
    use kube::api::{ListParams, Patch, PatchParams};
    let integrations: Api<bitbucket_operator::api::BitbucketIntegration> =
        Api::namespaced(client.clone(), namespace);
    let Ok(list) = integrations.list(&ListParams::default()).await else {
        return; // the CRDs are not installed: nothing to release
    };
    let patch = serde_json::json!({"metadata": {"finalizers": null}});
    for integration in list {
        let name = integration.metadata.name.unwrap_or_default();
        let _ = integrations
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await;
    }
}

/// Installs (or updates) the operator's CRDs and admission policies with server-side apply, as
/// `kubectl apply --server-side -f crds/` does, and waits until the server serves the CRDs.
/// Idempotent, so every test that needs them may call it. The API server puts a policy in
/// force a moment after it is stored: a test of a refusal waits for it (see `deletion.rs`).
pub async fn install_crds(client: &Client) {
    share_the_plane();
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::{
        api::{Patch, PatchParams},
        runtime::{conditions, wait::await_condition},
    };
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply("bitbucket-operator-tests").force();
    for crd in bitbucket_operator::api::crds() {
        let name = crd.metadata.name.clone().expect("generated CRDs are named");
        crds.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .unwrap_or_else(|e| panic!("installing CRD {name}: {e}"));
        within(
            &format!("CRD {name} to become Established"),
            await_condition(crds.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .unwrap();
    }
    install_policies(client, &params).await;
    policies_in_force(client).await;
}

/// Waits until the API server's admission has configured the policies. The policy
/// `subscription-integration-deleting` takes a BitbucketIntegration as its parameter, and the
/// admission plugin reads new kinds every 30 s: until it has, every Subscription is refused
/// ("failed to configure policy"). One dry-run create tells; once in force, it costs a request.
async fn policies_in_force(client: &Client) {
    use bitbucket_operator::api::Subscription;
    use kube::api::PostParams;
    let subscriptions: Api<Subscription> = Api::namespaced(client.clone(), "default");
    let probe: Subscription = serde_json::from_value(serde_json::json!({
        "apiVersion": "scm.shippable.io/v1alpha1",
        "kind": "Subscription",
        "metadata": {"name": "policies-in-force-probe"},
        "spec": {"integrationRef": {"name": "probe"}, "workspace": "probe"},
    }))
    .expect("a valid Subscription");
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    eventually(
        "the admission policies to be in force",
        Duration::from_secs(90),
        || async {
            match subscriptions.create(&dry_run, &probe).await {
                Err(kube::Error::Api(status))
                    if status.message.contains("failed to configure policy") =>
                {
                    None
                }
                Err(kube::Error::Api(status)) if status.is_already_exists() => Some(()),
                Err(e) => panic!("the probe Subscription was refused: {e}"),
                Ok(_) => Some(()),
            }
        },
    )
    .await;
}

async fn install_policies(client: &Client, params: &kube::api::PatchParams) {
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    use kube::api::Patch;
    let policies: Api<ValidatingAdmissionPolicy> = Api::all(client.clone());
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(client.clone());
    for (policy, binding) in bitbucket_operator::api::admission::policies() {
        let name = policy
            .metadata
            .name
            .clone()
            .expect("generated policies are named");
        policies
            .patch(&name, params, &Patch::Apply(&policy))
            .await
            .unwrap_or_else(|e| panic!("installing policy {name}: {e}"));
        bindings
            .patch(&name, params, &Patch::Apply(&binding))
            .await
            .unwrap_or_else(|e| panic!("installing the binding of {name}: {e}"));
    }
}

/// The documents of a multi-document YAML stream, as JSON values (empty documents dropped).
pub fn yaml_documents(yaml: &str) -> Vec<serde_json::Value> {
    serde_saphyr::from_multiple::<serde_json::Value>(yaml)
        .expect("parsing YAML")
        .into_iter()
        .filter(|doc| !doc.is_null())
        .collect()
}

/// An `Api` for the kind a manifest names, found through the server's discovery (in
/// `namespace` if the kind is namespaced).
pub async fn api_for(
    client: &Client,
    namespace: &str,
    manifest: &serde_json::Value,
) -> Api<kube::api::DynamicObject> {
    let types: kube::api::TypeMeta =
        serde_json::from_value(manifest.clone()).expect("a manifest has apiVersion and kind");
    let gvk = kube::api::GroupVersionKind::try_from(&types).expect("a valid apiVersion");
    let (resource, capabilities) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .unwrap_or_else(|e| panic!("the server does not serve {gvk:?}: {e}"));
    match capabilities.scope {
        kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &resource),
        kube::discovery::Scope::Namespaced => {
            Api::namespaced_with(client.clone(), namespace, &resource)
        }
    }
}

/// Applies each manifest into `namespace` with server-side apply, as `kubectl apply
/// --server-side` would; returns the server's answer for each.
pub async fn apply_manifests(
    client: &Client,
    namespace: &str,
    manifests: &[serde_json::Value],
) -> Vec<Result<kube::api::DynamicObject, kube::Error>> {
    use kube::api::{Patch, PatchParams};
    let params = PatchParams::apply("bitbucket-operator-tests");
    let mut results = Vec::new();
    for manifest in manifests {
        let api = api_for(client, namespace, manifest).await;
        let name = manifest["metadata"]["name"]
            .as_str()
            .expect("manifests are named");
        results.push(api.patch(name, &params, &Patch::Apply(manifest)).await);
    }
    results
}

pub mod env;
pub mod operator;
pub mod pty;
pub mod tls;

/// Captures everything logged (at every level) while `body` runs.
pub async fn logs_of<F: std::future::Future>(body: F) -> (F::Output, String) {
    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let output = body.await;
    let logs = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    (output, logs)
}

/// A Secret `name` holding `data` as string data.
pub fn string_secret(name: &str, data: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        string_data: Some(
            data.iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// `secret`, consenting (with the annotation an administrator writes) to its credential being
/// sent to `servers`: how tests let the operator reach their simulator.
pub fn consenting(mut secret: Secret, servers: &str) -> Secret {
    secret.metadata.annotations = Some(
        [(
            bitbucket_operator::api::ALLOWED_SERVERS_ANNOTATION.to_owned(),
            servers.to_owned(),
        )]
        .into(),
    );
    secret
}

/// A client acting as `user` in `groups` (and `system:authenticated`), through the admin's
/// impersonation: what that identity's RBAC allows, and nothing more.
pub async fn impersonating(user: &str, groups: &[&str]) -> Client {
    let path = std::env::var_os("KUBECONFIG").expect("KUBECONFIG is set by make test");
    let kubeconfig = Kubeconfig::read_from(path).unwrap();
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    config.auth_info.impersonate = Some(user.to_owned());
    let mut groups: Vec<String> = groups.iter().map(|g| (*g).to_owned()).collect();
    groups.push("system:authenticated".into());
    config.auth_info.impersonate_groups = Some(groups);
    Client::try_from(config).unwrap()
}

/// Runs the kubectl built with the plane (`$KUBECTL`, set by `hack/control-plane.sh exec`) from
/// the repository, against the test's cluster, as a user would.
pub fn kubectl(args: &[&str]) -> std::process::Output {
    let program = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".into());
    std::process::Command::new(&program)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("running {program}: {e}"))
}

/// [`kubectl`] that must succeed; returns what it printed.
pub fn kubectl_ok(args: &[&str]) -> String {
    let output = kubectl(args);
    assert!(
        output.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Who holds the Lease `name` in `namespace` now (`None`: nobody, or no Lease yet).
pub async fn lease_holder(client: &Client, namespace: &str, name: &str) -> Option<String> {
    Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .unwrap()
        .and_then(|lease| lease.spec?.holder_identity)
        .filter(|holder| !holder.is_empty())
}

/// The demo fixture's OAuth consumer (jdoe's) and its secret.
pub const OAUTH_CLIENT_ID: &str = "FAKEclientid4acme";
pub const OAUTH_CLIENT_SECRET: &str = "FAKE-oauth-client-secret-acme";

/// An HTTP client that, like a test standing in for a browser needs, shows redirects instead
/// of following them.
/// A memory figure of process `pid` in KiB, from `/proc/PID/status`: `VmRSS` (resident now),
/// `VmHWM` (the peak so far). `None` once the process is gone.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A loopback port nothing listens on now (the OS's pick).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

pub fn browser() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in to the simulator's OAuth consumer as a person would through a browser (authorize,
/// follow the redirect's code, exchange it) and returns the refresh token.
pub async fn signed_in(sim: &bitbucket_sim::Simulator) -> String {
    signed_in_to(sim, OAUTH_CLIENT_ID, OAUTH_CLIENT_SECRET).await
}

/// [`signed_in`] through another OAuth consumer of the simulator's.
pub async fn signed_in_to(
    sim: &bitbucket_sim::Simulator,
    client_id: &str,
    client_secret: &str,
) -> String {
    let browser = browser();
    let redirect = "http://127.0.0.1:9/callback";
    let mut authorize =
        url::Url::parse(&format!("{}/site/oauth2/authorize", sim.base_url())).unwrap();
    authorize
        .query_pairs_mut()
        .append_pair("client_id", client_id)
        .append_pair("response_type", "code")
        .append_pair("redirect_uri", redirect);
    let back = browser.get(authorize).send().await.unwrap();
    let back = url::Url::parse(back.headers()["location"].to_str().unwrap()).unwrap();
    let code = back
        .query_pairs()
        .find(|(k, _)| k == "code")
        .expect("the simulator approves")
        .1
        .into_owned();
    let form = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", redirect),
        ])
        .finish();
    let token: serde_json::Value = browser
        .post(format!("{}/site/oauth2/access_token", sim.base_url()))
        .basic_auth(client_id, Some(client_secret))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    token["refresh_token"].as_str().unwrap().to_owned()
}

/// A GitOps tool built by `hack/gitops.sh` (`make test` builds them): `gitops-check` (kstatus and
/// Argo CD's code) or `helm`.
pub fn gitops_tool(name: &str) -> std::path::PathBuf {
    let output = std::process::Command::new(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/gitops.sh"),
    )
    .args(["path", name])
    .output()
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().into()
}

pub fn gitops_check() -> std::path::PathBuf {
    gitops_tool("gitops-check")
}

/// Runs `command` with `input` on its standard input; its exit status, output and errors.
pub fn with_input(mut command: std::process::Command, input: &[u8]) -> std::process::Output {
    use std::{io::Write as _, process::Stdio};
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// The `kubectl-bitbucket` binary, from the crate of its own beside this one (so cargo sets no
/// `CARGO_BIN_EXE_` for it): in the profile directory this test binary runs from, where
/// `make test` builds it first (`cargo build --workspace --bins`).
pub fn plugin_binary() -> std::path::PathBuf {
    let test = std::env::current_exe().expect("the test binary's path");
    let profile = test
        .parent()
        .and_then(std::path::Path::parent)
        .expect("the test binary is in <target>/<profile>/deps");
    let plugin = profile.join("kubectl-bitbucket");
    assert!(
        plugin.exists(),
        "{} is not built: make test builds it, or cargo build -p kubectl-bitbucket",
        plugin.display()
    );
    plugin
}

/// `command` as a user runs it from a shell: without the variables cargo sets for this test
/// binary (`CARGO`, `CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, ...). A cargo run inside a test that saw
/// them would rebuild the crates whose build scripts watch them (ring watches
/// `CARGO_MANIFEST_DIR`), and the next `make test` would rebuild them back; and `CARGO` names
/// the toolchain's own cargo, passing by rustup.
pub fn as_from_a_shell(command: &mut std::process::Command) -> &mut std::process::Command {
    let set_by_cargo = |key: &str| {
        matches!(
            key,
            "CARGO"
                | "CARGO_MANIFEST_DIR"
                | "CARGO_MANIFEST_PATH"
                | "CARGO_CRATE_NAME"
                | "CARGO_BIN_NAME"
                | "CARGO_PRIMARY_PACKAGE"
                | "CARGO_TARGET_TMPDIR"
                | "CARGO_RUSTC_CURRENT_DIR"
                | "OUT_DIR"
        ) || key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_BIN_EXE_")
    };
    for (key, _) in std::env::vars_os() {
        if let Some(key) = key.to_str().filter(|key| set_by_cargo(key)) {
            command.env_remove(key);
        }
    }
    command
}
