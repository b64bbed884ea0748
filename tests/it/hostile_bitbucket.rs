//! A Bitbucket server whose paging never ends, against the operator binary with its default
//! bounds: Cloud pages that keep promising more, both Data Center loops (a project's
//! repositories, everything the credential sees) answering empty pages with `nextPageStart` one
//! higher, and a workspace larger than `--max-repositories` (100,000) whose full pages go on.
//! Each time the Subscription must say so, with its own reason, in bounded pages, time and
//! memory; the figures are printed.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use bitbucket_operator::api::{CredentialType, Subscription};
use bitbucket_sim::{FaultRule, Fixture};

use crate::support::{
    env::*,
    operator::{await_object, condition, subscription},
};

struct Case {
    what: &'static str,
    /// Repositories the workspace holds beyond the demo's (0: none), with no fault.
    generated: usize,
    reason: &'static str,
    path: &'static str,
    endpoint: &'static str,
    server: Kind,
    projects: &'static [&'static str],
}

#[derive(Clone, Copy)]
enum Kind {
    Cloud,
    DataCenter,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_paging_is_refused_in_bounded_pages_time_and_memory() {
    let cases = [
        Case {
            what: "Cloud, a workspace",
            generated: 0,
            reason: "BitbucketMisbehaves",
            path: "/2.0/repositories/acme",
            endpoint: "GET /2.0/repositories/{workspace}",
            server: Kind::Cloud,
            projects: &[],
        },
        Case {
            what: "Data Center, a project",
            generated: 0,
            reason: "BitbucketMisbehaves",
            path: "/rest/api/1.0/projects/PLAT/repos",
            endpoint: "GET /rest/api/1.0/projects/{project_key}/repos",
            server: Kind::DataCenter,
            projects: &["PLAT"],
        },
        Case {
            what: "Data Center, every repository",
            generated: 0,
            reason: "BitbucketMisbehaves",
            path: "/rest/api/1.0/repos",
            endpoint: "GET /rest/api/1.0/repos",
            server: Kind::DataCenter,
            projects: &[],
        },
        Case {
            what: "Cloud, 120,000 repositories in full pages",
            generated: 120_000,
            reason: "ListingTooLarge",
            path: "",
            endpoint: "GET /2.0/repositories/{workspace}",
            server: Kind::Cloud,
            projects: &[],
        },
    ];
    for case in cases {
        let mut fixture = Fixture::demo();
        fixture.data_center.page_cap = 2;
        if case.generated > 0 {
            fixture.cloud.workspaces[0].generate = Some(bitbucket_sim::Generator {
                count: case.generated,
                prefix: "svc".into(),
                project: "OPS".into(),
                private: true,
            });
        }
        let mut env = Env::start_with("endless-pages", fixture, |_| {}).await;
        env.operator.take().unwrap().stop().await;
        if !case.path.is_empty() {
            env.sim
                .control()
                .add_fault(FaultRule::endless_pages().on_path(case.path));
        }
        let integration = match case.server {
            Kind::Cloud => {
                env.jdoe_token_secret("token").await;
                let mut acme = env.cloud("acme", CredentialType::ApiToken, "token", None);
                // These bounds come before the request budget: a Bitbucket that allows what
                // endless pages take (10,000 an hour, as a scaled access token gets).
                acme.spec.request_budget = Some(bitbucket_operator::api::RequestBudget {
                    requests_per_hour: Some(10_000),
                    planned_percent: None,
                });
                acme
            }
            Kind::DataCenter => {
                env.secret("token", &[("username", "jdoe"), ("password", DC_PASSWORD)])
                    .await;
                env.data_center("acme", CredentialType::Basic, "token")
            }
        };
        env.create(&integration).await;
        let workspace = matches!(case.server, Kind::Cloud).then_some("acme");
        env.create(&subscription("repos", "acme", workspace, case.projects))
            .await;

        let log = std::env::temp_dir().join(format!("{}.log", env.ns.name));
        let mut operator = Command::new(env!("CARGO_BIN_EXE_bitbucket-operator"))
            .args(["run", "--namespaces", &env.ns.name])
            .args([
                "--allowed-servers",
                &format!("cloud,{}", env.sim.base_url()),
            ])
            .args([
                "--metrics-address",
                "127.0.0.1:0",
                "--health-address",
                "127.0.0.1:0",
                "--webhook-address",
                "127.0.0.1:0",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let reason = case.reason;
        let said = await_object(
            &env.api::<Subscription>(),
            "repos",
            "the Subscription to say its listing was refused",
            move |s: &Subscription| {
                s.status.as_ref().is_some_and(|s| {
                    condition(&s.conditions, "Ready").is_some_and(|c| c.reason == reason)
                })
            },
        )
        .await;
        let took = started.elapsed();
        let peak = crate::support::proc_status_kib(operator.id(), "VmHWM")
            .expect("the operator's peak memory (VmHWM)");
        let _ = operator.kill();
        let _ = operator.wait();
        let _ = std::fs::remove_file(&log);
        let pages = env.sim.control().counters().endpoint(case.endpoint);
        let message = condition(&said.status.unwrap().conditions, "Ready")
            .unwrap()
            .message
            .clone();
        eprintln!(
            "endless paging, {}: {pages} pages fetched, operator RSS peak {:.1} MiB, the \
             Subscription said so {:.2} s after the operator started: {message}",
            case.what,
            peak as f64 / 1024.0,
            took.as_secs_f64()
        );
        let bound = if case.generated > 0 { 1_010 } else { 10 };
        assert!(pages <= bound, "{}: {pages} pages", case.what);
        assert!(peak < 256 * 1024, "{}: {peak} KiB", case.what);
        assert!(took < Duration::from_secs(60), "{}: {took:?}", case.what);
    }
}
