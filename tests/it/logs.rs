//! The operator's log as a file or a log collector receives it: Kubernetes keeps a container's
//! standard error in a file, and `kubectl logs` shows it as written, so text lines carry no
//! terminal colour codes unless standard error is a terminal.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use crate::support::eventually;

#[tokio::test]
async fn a_text_log_written_to_a_file_has_no_colour_codes() {
    let dir = std::env::temp_dir().join(format!("logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("operator.log");
    let mut operator = Command::new(env!("CARGO_BIN_EXE_bitbucket-operator"))
        .args(["run", "--namespaces", "logs-nobody-creates"])
        .args(["--metrics-address", "127.0.0.1:0"])
        .args(["--health-address", "127.0.0.1:0"])
        .args(["--webhook-address", "127.0.0.1:0"])
        .args(["--log-format", "text"])
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let written = eventually(
        "the operator to log its start",
        Duration::from_secs(30),
        || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            async move { text.contains("starting bitbucket-operator").then_some(text) }
        },
    )
    .await;
    let _ = operator.kill();
    let _ = operator.wait();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        !written.contains('\x1b'),
        "the log holds terminal escape codes: {written:?}"
    );
    assert!(
        written.contains(" INFO "),
        "a level in plain text: {written:?}"
    );
}
