//! `kubectl bitbucket` as a person runs it: the built `kubectl-bitbucket` binary against the real
//! API server, the simulator and the operator (in-process), reading what it prints and its exit
//! code.

use std::process::{Output, Stdio};

use crate::support::{
    PATIENCE,
    env::*,
    eventually,
    operator::{await_object, subscription},
};
use bitbucket_operator::api::{
    ALLOWED_SERVERS_ANNOTATION, BitbucketIntegration, CREDENTIAL_TYPE_LABEL,
};
use k8s_openapi::api::core::v1::Secret;
use kube::{ResourceExt, api::DeleteParams};

/// Runs `kubectl bitbucket ARGS -n NAMESPACE` (the plugin binary kubectl would run).
pub fn plugin(env: &Env, args: &[&str]) -> Output {
    std::process::Command::new(crate::support::plugin_binary())
        .args(args)
        .args(["-n", &env.ns.name])
        .output()
        .unwrap()
}

/// Runs `kubectl bitbucket ARGS -n NAMESPACE` with `input` as its standard input.
fn plugin_with_input(env: &Env, args: &[&str], input: &str) -> Output {
    let mut command = std::process::Command::new(crate::support::plugin_binary());
    command.args(args).args(["-n", &env.ns.name]);
    crate::support::with_input(command, input.as_bytes())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_shows_each_integrations_server_account_health_and_users() {
    let env = Env::start("plugin-list").await;
    env.ready_cloud_integration().await;
    env.create(&subscription("ci", "acme", Some("acme"), &[]))
        .await;
    await_object(&env.api(), "acme", "acme to count ci", used_by(1)).await;

    let listed = plugin(&env, &["list"]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let lines: Vec<String> = text(&listed.stdout).lines().map(str::to_owned).collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        [
            "NAME", "SERVER", "ACCOUNT", "READY", "USED", "BY", "EXPIRES"
        ]
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        row,
        [
            "acme",
            &env.sim.cloud_api_url(),
            "jdoe",
            "True",
            "1:",
            "ci",
            "-"
        ]
    );

    let json = plugin(&env, &["list", "-o", "json"]);
    let objects: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(objects[0]["metadata"]["name"], "acme");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_waits_for_the_answer_and_says_what_it_found() {
    let env = Env::start("plugin-sync").await;
    env.ready_cloud_integration().await;
    env.create(&subscription("ci", "acme", Some("acme"), &[]))
        .await;
    await_object(&env.api(), "ci", "ci to sync", is_synced).await;

    let synced = plugin(&env, &["sync", "ci"]);
    assert!(synced.status.success(), "{}", text(&synced.stderr));
    assert_eq!(
        text(&synced.stdout),
        "Subscription ci synced: 10 repositories, no change\n"
    );

    // What changed since the last list is shown, repository by repository.
    env.sim
        .control()
        .delete_cloud_repository("acme", "docs")
        .unwrap();
    let changed = plugin(&env, &["sync", "ci"]);
    assert!(changed.status.success(), "{}", text(&changed.stderr));
    assert_eq!(
        text(&changed.stdout),
        "Subscription ci synced: 9 repositories\n  - acme/docs\n"
    );

    let validated = plugin(&env, &["sync", "--integration", "acme"]);
    assert!(validated.status.success(), "{}", text(&validated.stderr));
    assert_eq!(
        text(&validated.stdout),
        "BitbucketIntegration acme synced: authenticated as jdoe\n"
    );

    // A workspace that does not exist: the request is answered, with the reason, and the
    // command fails.
    env.create(&subscription(
        "lost",
        "acme",
        Some("no-such-workspace"),
        &[],
    ))
    .await;
    let failed = plugin(&env, &["sync", "lost", "--timeout", "60s"]);
    assert_eq!(failed.status.code(), Some(1));
    // Progress lines come first on standard error; the verdict is the last line.
    let said = text(&failed.stderr);
    let verdict = said.lines().last().unwrap();
    assert!(
        verdict.starts_with("Subscription lost did not sync: ")
            && verdict.ends_with("(WorkspaceNotFound)"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_is_refused_naming_every_subscription_then_done() {
    let env = Env::start("plugin-delete").await;
    env.ready_cloud_integration().await;
    for name in ["api-ci", "docs-ci", "web-ci"] {
        env.create(&subscription(name, "acme", Some("acme"), &[]))
            .await;
    }
    let integrations = env.api::<BitbucketIntegration>();
    await_object(&integrations, "acme", "acme to count 3", used_by(3)).await;
    // The API server enforces its policy a moment after it is installed (a dry run deletes
    // nothing meanwhile).
    let dry_run = DeleteParams {
        dry_run: true,
        ..DeleteParams::default()
    };
    eventually("the policy to be in force", PATIENCE, || async {
        integrations.delete("acme", &dry_run).await.err()
    })
    .await;
    let refused = plugin(&env, &["delete", "acme"]);
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(
        text(&refused.stderr),
        "BitbucketIntegration acme is in use by Subscriptions api-ci, docs-ci and web-ci; delete \
         them or point them at another integration first\n  subscription/api-ci\n  \
         subscription/docs-ci\n  subscription/web-ci\n"
    );
    assert!(
        integrations
            .get("acme")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_none()
    );

    let subscriptions = env.api::<bitbucket_operator::api::Subscription>();
    for name in ["api-ci", "docs-ci", "web-ci"] {
        subscriptions
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    await_object(&integrations, "acme", "acme to count none", used_by(0)).await;
    let deleted = plugin(&env, &["delete", "acme"]);
    assert!(deleted.status.success(), "{}", text(&deleted.stderr));
    assert_eq!(text(&deleted.stdout), "BitbucketIntegration acme deleted\n");
}

/// The Secret `connect` wrote.
async fn secret_of(env: &Env, name: &str) -> Option<Secret> {
    env.api::<Secret>().get_opt(name).await.unwrap()
}

fn value(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_checks_the_credential_saves_it_with_its_integration_and_waits_for_ready() {
    let env = Env::start("plugin-connect").await;
    let url = env.sim.cloud_api_url();
    let connected = plugin_with_input(
        &env,
        &[
            "connect",
            "acme",
            "--url",
            &url,
            "--type",
            "ApiToken",
            "--email",
            "jdoe@example.com",
            "--display-name",
            "ACME",
            "--expires-at",
            "2027-06-30T00:00:00.5Z",
            "--secret-file",
            "-",
        ],
        &format!("{API_TOKEN}\n"),
    );
    let (out, err) = (text(&connected.stdout), text(&connected.stderr));
    assert!(connected.status.success(), "{err}");
    assert!(
        out.starts_with("BitbucketIntegration acme is Ready ("),
        "{out}"
    );
    assert!(
        out.contains("\n  account: jdoe (Jane Doe), User\n"),
        "{out}"
    );
    assert!(
        out.ends_with("  secret:  acme-bitbucket (deleted with the integration)\n"),
        "{out}"
    );
    assert!(!out.contains(API_TOKEN) && !err.contains(API_TOKEN));

    let integration = env.api::<BitbucketIntegration>().get("acme").await.unwrap();
    assert_eq!(integration.spec.display_name.as_deref(), Some("ACME"));
    assert_eq!(integration.spec.server.url.as_deref(), Some(url.as_str()));
    assert_eq!(
        integration.spec.credentials.secret_ref.name,
        "acme-bitbucket"
    );
    let secret = secret_of(&env, "acme-bitbucket").await.unwrap();
    assert_eq!(value(&secret, "token"), API_TOKEN);
    assert_eq!(value(&secret, "email"), "jdoe@example.com");
    // It consents to its own server only, and goes with the integration.
    assert_eq!(
        secret.annotations()[ALLOWED_SERVERS_ANNOTATION],
        env.sim.base_url()
    );
    let owner = &secret.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("BitbucketIntegration", integration.uid().unwrap().as_str())
    );
    // The expiry goes onto the Secret, to the second.
    assert_eq!(
        secret.annotations()[bitbucket_operator::api::EXPIRES_AT_ANNOTATION],
        "2027-06-30T00:00:00Z"
    );
    let refused = plugin(&env, &["connect", "other", "--expires-at", "next june"]);
    assert_eq!(refused.status.code(), Some(2), "a usage error");
    assert!(
        text(&refused.stderr).contains("is not an RFC 3339 time"),
        "{}",
        text(&refused.stderr)
    );

    // Connecting the same name again is refused, and changes nothing.
    let again = plugin_with_input(
        &env,
        &[
            "connect",
            "acme",
            "--url",
            &url,
            "--type",
            "AccessToken",
            "--workspace",
            "acme",
            "--secret-file",
            "-",
        ],
        ACCESS_TOKEN,
    );
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("already exists"));

    let deleted = plugin(&env, &["delete", "acme"]);
    assert!(deleted.status.success(), "{}", text(&deleted.stderr));
    eventually(
        "the Secret to go with its integration",
        PATIENCE,
        || async {
            secret_of(&env, "acme-bitbucket")
                .await
                .is_none()
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_bitbucket_refuses_is_not_saved_and_a_rotation_is_checked_first() {
    let env = Env::start("plugin-refused").await;
    let url = env.sim.cloud_api_url();
    let wrong = "FAKE-wrong-token-for-jdoe";
    let connect = |input: &str, extra: &[&str]| {
        let mut args = vec![
            "connect",
            "acme",
            "--url",
            &url,
            "--type",
            "ApiToken",
            "--email",
            "jdoe@example.com",
            "--secret-file",
            "-",
        ];
        args.extend_from_slice(extra);
        plugin_with_input(&env, &args, input)
    };
    let refused = connect(wrong, &[]);
    let err = text(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{err}");
    assert!(
        err.contains("\nThe credential does not work: Bitbucket rejected the credential (401)")
            && err.ends_with("Nothing was saved (--skip-check saves without this check).\n"),
        "{err}"
    );
    assert!(!err.contains(wrong) && !text(&refused.stdout).contains(wrong));
    assert!(
        env.api::<BitbucketIntegration>()
            .get_opt("acme")
            .await
            .unwrap()
            .is_none()
    );
    assert!(secret_of(&env, "acme-bitbucket").await.is_none());

    // Without a terminal, what is missing is a usage error naming the flag.
    let usage = plugin_with_input(&env, &["connect", "acme", "--secret-file", "-"], wrong);
    assert_eq!(usage.status.code(), Some(2));
    assert!(text(&usage.stderr).starts_with("--type is required when not on a terminal"));

    // Saved anyway, the operator says why it is not Ready.
    let skipped = connect(wrong, &["--skip-check"]);
    let err = text(&skipped.stderr);
    assert_eq!(skipped.status.code(), Some(1), "{err}");
    assert!(
        err.lines()
            .last()
            .is_some_and(|l| l.starts_with("BitbucketIntegration acme is Stalled: ")
                && l.ends_with("(InvalidCredentials)")),
        "{err}"
    );

    let rotate = |input: &str| {
        plugin_with_input(
            &env,
            &["edit", "acme", "--token", "--secret-file", "-"],
            input,
        )
    };
    let still_wrong = rotate("FAKE-another-wrong-token");
    assert_eq!(still_wrong.status.code(), Some(1));
    assert!(text(&still_wrong.stderr).contains("The credential does not work: "));
    let secret = secret_of(&env, "acme-bitbucket").await.unwrap();
    assert_eq!(
        value(&secret, "token"),
        wrong,
        "a refused rotation changes nothing"
    );

    let rotated = rotate(API_TOKEN);
    assert!(rotated.status.success(), "{}", text(&rotated.stderr));
    assert_eq!(
        text(&rotated.stdout),
        "The API token in Secret acme-bitbucket was replaced\nBitbucketIntegration acme \
         synced: authenticated as jdoe\n"
    );
    let secret = secret_of(&env, "acme-bitbucket").await.unwrap();
    assert_eq!(value(&secret, "token"), API_TOKEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_repos_and_edit_show_and_change_what_a_person_asks_for() {
    let env = Env::start("plugin-get").await;
    env.ready_cloud_integration().await;
    env.create(&subscription("ci", "acme", Some("acme"), &[]))
        .await;
    await_object(&env.api(), "ci", "ci to sync", is_synced).await;
    await_object(&env.api(), "acme", "acme to count ci", used_by(1)).await;

    let got = plugin(&env, &["get", "acme"]);
    let out = text(&got.stdout);
    assert!(got.status.success(), "{}", text(&got.stderr));
    for line in [
        "Name:         acme\n",
        "Credential:   ApiToken in Secret acme-token\n",
        "Account:      jdoe (Jane Doe), User\n",
        "Used by:      1 Subscription\n  subscription/ci (10 repositories)\n",
    ] {
        assert!(out.contains(line), "{line:?} in:\n{out}");
    }

    let count = plugin(&env, &["repos", "ci", "--count"]);
    assert_eq!(text(&count.stdout), "10\n");
    let api = plugin(&env, &["repos", "ci", "--match", "api*"]);
    let rows: Vec<Vec<String>> = text(&api.stdout)
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect();
    assert_eq!(
        rows[0],
        ["REPOSITORY", "PROJECT", "PRIVATE", "MAIN", "BRANCH"]
    );
    assert_eq!(
        rows[1..].iter().map(|r| r[0].as_str()).collect::<Vec<_>>(),
        ["acme/api", "acme/api-gateway"]
    );
    let public = plugin(&env, &["repos", "ci", "--public", "--count"]);
    assert_eq!(
        text(&public.stdout),
        "1\n",
        "docs is the only public repository"
    );
    let wide = plugin(&env, &["repos", "ci", "-o", "wide", "--project", "OPS"]);
    let header: Vec<String> = text(&wide.stdout)
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(header[header.len() - 2..], ["HTTPS", "SSH"]);
    assert_eq!(
        text(&wide.stdout).lines().count(),
        5,
        "four OPS repositories"
    );

    let listed = plugin(&env, &["list", "-o", "wide"]);
    let header: Vec<String> = text(&listed.stdout)
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(
        header[header.len() - 6..],
        ["BY", "EXPIRES", "TYPE", "SCOPES", "READY", "FOR"]
    );

    let renamed = plugin(&env, &["edit", "acme", "--display-name", "ACME CI"]);
    assert!(renamed.status.success(), "{}", text(&renamed.stderr));
    assert_eq!(
        text(&renamed.stdout),
        "BitbucketIntegration acme is now called \"ACME CI\"\n"
    );
    let integration = env.api::<BitbucketIntegration>().get("acme").await.unwrap();
    assert_eq!(integration.spec.display_name.as_deref(), Some("ACME CI"));

    let nothing = plugin(&env, &["edit", "acme"]);
    assert_eq!(nothing.status.code(), Some(2));
}

#[test]
fn completion_scripts_know_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let script = std::process::Command::new(crate::support::plugin_binary())
            .args(["completion", shell])
            .output()
            .unwrap();
        assert!(script.status.success());
        let script = text(&script.stdout);
        for command in ["connect", "edit", "list", "get", "repos", "sync", "delete"] {
            assert!(
                script.contains(command),
                "{shell} completion lacks {command}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_on_a_terminal_asks_for_each_value_and_never_shows_the_token() {
    let env = Env::start("plugin-pty").await;
    let mut command = std::process::Command::new(crate::support::plugin_binary());
    command
        .args(["connect", "acme", "--url", &env.sim.cloud_api_url()])
        .args(["-n", &env.ns.name])
        .env_remove("NO_COLOR")
        .env("TERM", "xterm");
    let mut terminal = crate::support::pty::Pty::spawn(command);
    let patience = std::time::Duration::from_secs(30);
    terminal.expect("Server", patience);
    terminal.send("\r"); // Bitbucket Cloud, the first choice
    terminal.expect("Credential", patience);
    terminal.send("\r"); // ApiToken
    terminal.expect("Atlassian account email", patience);
    terminal.send("jdoe@example.com\r");
    terminal.expect("Friendly name", patience);
    terminal.send("ACME\r");
    terminal.expect("API token", patience);
    terminal.expect_no_echo(patience);
    let arguments = std::fs::read(format!("/proc/{}/cmdline", terminal.id())).unwrap();
    terminal.send(&format!("{API_TOKEN}\r"));
    let (status, screen) = terminal.wait(std::time::Duration::from_secs(120));
    assert!(status.success(), "{screen}");
    assert!(screen.contains("BitbucketIntegration acme is "), "{screen}");
    assert!(
        !screen.contains(API_TOKEN),
        "the token was shown:\n{screen}"
    );
    assert!(!String::from_utf8_lossy(&arguments).contains(API_TOKEN));

    let secret = secret_of(&env, "acme-bitbucket").await.unwrap();
    assert_eq!(value(&secret, "token"), API_TOKEN);
    let integration = env.api::<BitbucketIntegration>().get("acme").await.unwrap();
    assert_eq!(integration.spec.display_name.as_deref(), Some("ACME"));
}

/// `kubectl bitbucket connect NAME --sign-in` run in the background, with the consumer's secret
/// on its standard input; its standard error line by line as it comes.
struct SigningIn {
    child: std::process::Child,
    said: std::sync::mpsc::Receiver<String>,
    reader: std::thread::JoinHandle<()>,
}

impl SigningIn {
    fn start(env: &Env, name: &str) -> Self {
        use std::io::{BufRead as _, Write as _};
        let mut child = std::process::Command::new(crate::support::plugin_binary())
            .args([
                "connect",
                name,
                "--sign-in",
                "--no-browser",
                "--secret-file",
                "-",
            ])
            .args(["--url", &env.sim.cloud_api_url()])
            .args([
                "--client-id",
                crate::support::OAUTH_CLIENT_ID,
                "-n",
                &env.ns.name,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(crate::support::OAUTH_CLIENT_SECRET.as_bytes())
            .unwrap();
        drop(stdin);
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let (tell, said) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in stderr.lines() {
                let _ = tell.send(line.unwrap());
            }
        });
        Self {
            child,
            said,
            reader,
        }
    }

    /// The address it asks the person to open.
    fn authorize_url(&self) -> String {
        loop {
            let line = self
                .said
                .recv_timeout(std::time::Duration::from_secs(60))
                .expect("the plugin prints the address to sign in at");
            if line.trim_start().starts_with("http") {
                return line.trim().to_owned();
            }
        }
    }

    /// Its exit, standard output and all of standard error.
    fn finish(self) -> (std::process::ExitStatus, String, String) {
        let output = self.child.wait_with_output().unwrap();
        self.reader.join().unwrap();
        let said: Vec<String> = self.said.try_iter().collect();
        (output.status, text(&output.stdout), said.join("\n"))
    }
}

/// A person's browser at Bitbucket's authorize page: where Bitbucket sends it back, and the
/// page the plugin shows there.
async fn browse(authorize: &str) -> (String, String) {
    let browser = crate::support::browser();
    let page = browser.get(authorize).send().await.unwrap();
    assert!(page.status().is_redirection(), "{page:?}");
    let back = page.headers()["location"].to_str().unwrap().to_owned();
    let shown = browser
        .get(&back)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    (back, shown)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_with_bitbucket_saves_a_refresh_token_the_operator_keeps() {
    let env = Env::start("plugin-sign-in").await;
    let signing_in = SigningIn::start(&env, "acme");
    let authorize = signing_in.authorize_url();
    assert!(
        authorize.starts_with(&format!("{}/site/oauth2/authorize?", env.sim.base_url())),
        "{authorize}"
    );
    // The test is the person's browser: Bitbucket sends it back to the plugin on loopback.
    let (back, page) = browse(&authorize).await;
    assert!(back.starts_with("http://127.0.0.1:"), "{back}");
    assert!(page.contains("Signed in to Bitbucket."), "{page}");

    let (status, out, err) = signing_in.finish();
    assert!(status.success(), "{err}");
    assert!(
        out.starts_with("BitbucketIntegration acme is Ready ("),
        "{out}"
    );
    assert!(
        out.contains("\n  account: jdoe (Jane Doe), User\n"),
        "{out}"
    );
    let integration = env.api::<BitbucketIntegration>().get("acme").await.unwrap();
    assert_eq!(
        integration.spec.credentials.credential_type,
        bitbucket_operator::api::CredentialType::OAuthUser
    );
    let secret = secret_of(&env, "acme-bitbucket").await.unwrap();
    assert_eq!(secret.labels()[CREDENTIAL_TYPE_LABEL], "OAuthUser");
    assert_eq!(value(&secret, "clientId"), crate::support::OAUTH_CLIENT_ID);
    assert_eq!(
        value(&secret, "clientSecret"),
        crate::support::OAUTH_CLIENT_SECRET
    );
    let refresh_token = value(&secret, "refreshToken");
    for shown in [&out, &err] {
        assert!(!shown.contains(crate::support::OAUTH_CLIENT_SECRET));
        assert!(!shown.contains(&refresh_token));
    }
    // The operator keeps it working: a forced new grant uses the token it saved.
    env.sim.control().expire_oauth_tokens();
    let validated = plugin(&env, &["sync", "--integration", "acme"]);
    assert!(validated.status.success(), "{}", text(&validated.stderr));
    assert_ne!(
        value(
            &secret_of(&env, "acme-bitbucket").await.unwrap(),
            "refreshToken"
        ),
        refresh_token,
        "the operator saved the token Bitbucket rotated"
    );
}

/// Requests to the sign-in's loopback address that do not carry its `state` (a page that links
/// there, a stale tab) are answered and ignored: the sign-in waits on, and the real one ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_callbacks_are_answered_and_ignored_and_the_sign_in_goes_on() {
    let env = Env::start("plugin-sign-in-forged").await;
    let signing_in = SigningIn::start(&env, "acme");
    let authorize = signing_in.authorize_url();
    let query: std::collections::HashMap<String, String> = url::Url::parse(&authorize)
        .unwrap()
        .query_pairs()
        .into_owned()
        .collect();
    let state = &query["state"];
    assert!(
        state.len() == 64 && state.chars().all(|c| c.is_ascii_hexdigit()),
        "256 bits of state: {state}"
    );
    let callback = &query["redirect_uri"];
    for forged in [
        "code=FORGED-code&state=not-this-sign-in",
        "error=access_denied&state=",
        "code=FORGED-code",
    ] {
        let answer = crate::support::browser()
            .get(format!("{callback}?{forged}"))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 400, "{forged}");
        let page = answer.text().await.unwrap();
        assert!(page.contains("not the sign-in"), "{forged}: {page}");
    }
    let (_, page) = browse(&authorize).await;
    assert!(page.contains("Signed in to Bitbucket."), "{page}");
    let (status, out, err) = signing_in.finish();
    assert!(status.success(), "{err}");
    assert!(
        out.starts_with("BitbucketIntegration acme is Ready ("),
        "{out}"
    );
    assert_eq!(err.matches("Ignored a request").count(), 3, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_sign_in_saves_nothing() {
    let env = Env::start("plugin-sign-in-denied").await;
    env.sim.control().set_oauth_consent(bitbucket_sim::Consent {
        deny: true,
        user: None,
    });
    let signing_in = SigningIn::start(&env, "acme");
    let authorize = signing_in.authorize_url();
    let (_, page) = browse(&authorize).await;
    assert!(page.contains("did not sign you in"), "{page}");
    let (status, _, err) = signing_in.finish();
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.ends_with(&format!(
            "Sign-in failed: Bitbucket did not authorize consumer {}: access_denied (The user \
             denied access)",
            crate::support::OAUTH_CLIENT_ID
        )),
        "{err}"
    );
    assert!(
        env.api::<BitbucketIntegration>()
            .get_opt("acme")
            .await
            .unwrap()
            .is_none()
    );
    assert!(secret_of(&env, "acme-bitbucket").await.is_none());
}
