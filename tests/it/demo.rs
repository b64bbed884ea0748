//! `make run`, the README's first command, as a newcomer runs it: under a pipe (`make run | tee
//! run.log`), stopped with Ctrl-C. Ctrl-C reaches the whole process group, the pipe's reader
//! dies first, and the demo must still stop everything it started: the control plane, the
//! simulator and the operator. The demo gets a control plane of its own (its own run
//! directories, free ports), so the suite's plane is untouched.

use std::{
    io::{BufRead, BufReader},
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use crate::support::eventually;

/// The processes whose environment carries `marker`: whatever the demo started, however it
/// detached them (setsid, reparenting), inherits the environment. Names are the programs' file
/// names.
fn started_with(marker: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        if environ.split(|b| *b == 0).any(|v| v == marker.as_bytes()) {
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let program = cmdline.split(|b| *b == 0).next().unwrap_or_default();
            let name = Path::new(&*String::from_utf8_lossy(program))
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            found.push((pid, name));
        }
    }
    found
}

/// A terminal's shell starts a foreground job with Ctrl-C's signals at their defaults. The test
/// may run where they are ignored (a CI job, a shell's background job: `cargo test &`), and an
/// ignored SIGINT stays ignored through exec, so it is reset for `make run` as a terminal would.
fn as_a_terminal_job_receives_ctrl_c() -> std::io::Result<()> {
    for signal in [libc::SIGINT, libc::SIGQUIT] {
        // SAFETY: signal(2) is async-signal-safe, and this runs in the child between fork and
        // exec, touching no memory of the parent.
        if unsafe { libc::signal(signal, libc::SIG_DFL) } == libc::SIG_ERR {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whatever the demo left running when the test ends, passed or not, is killed, so a failure
/// here does not leave a control plane behind for the rest of the suite.
struct Leftovers(String);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for (pid, _) in started_with(&self.0) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
    }
}

#[tokio::test]
async fn ctrl_c_of_make_run_under_a_pipe_leaves_nothing_running() {
    let dir = std::env::temp_dir().join(format!("bbo-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let marker = format!("BBO_DEMO_TEST={}", dir.display());
    let _leftovers = Leftovers(marker.clone());
    let stderr = std::fs::File::create(dir.join("make-run.stderr")).unwrap();
    let mut command = Command::new("bash");
    // SAFETY: the hook makes only async-signal-safe calls.
    unsafe { command.pre_exec(as_a_terminal_job_receives_ctrl_c) };
    let mut run = crate::support::as_from_a_shell(&mut command)
        .args(["-c", "make run | cat"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("BBO_DEMO_TEST", dir.display().to_string())
        .env("BBO_RUN_DIR", dir.join("plane"))
        .env("BBO_DEMO_DIR", dir.join("demo"))
        .env("BBO_NODE", "0")
        .env_remove("KUBECONFIG")
        .process_group(0) // its own group, as a terminal's foreground job is
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let group = run.id();
    let stdout = run.stdout.take().unwrap();
    let (lines, mut seen) = (BufReader::new(stdout).lines(), String::new());
    let started = tokio::task::spawn_blocking(move || {
        for line in lines.map_while(Result::ok) {
            seen.push_str(&line);
            seen.push('\n');
            if line.starts_with("Press Ctrl-C to stop everything") {
                return Ok(seen);
            }
        }
        Err(seen)
    });
    let started = tokio::time::timeout(Duration::from_secs(300), started).await;
    let log = || std::fs::read_to_string(dir.join("make-run.stderr")).unwrap_or_default();
    let Ok(Ok(Ok(shown))) = started else {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{group}")])
            .status();
        panic!("make run did not start; its stderr:\n{}", log());
    };

    // The whole list of acme-api is shown in its RepositorySlices (NAME, SUBSCRIPTION, count).
    assert!(
        shown.lines().any(|l| {
            let columns: Vec<&str> = l.split_whitespace().collect();
            columns.len() >= 3 && columns[1] == "acme-api" && columns[2].parse::<u32>().is_ok()
        }),
        "the demo shows no RepositorySlice of acme-api:\n{shown}"
    );
    // acme-oauth's declared expiry is in the Expires column.
    assert!(
        shown.lines().any(|l| l.starts_with("acme-oauth ")
            && l.split_whitespace()
                .any(|w| w.ends_with('Z') && w.len() == 20)),
        "the demo shows no expiry for acme-oauth:\n{shown}"
    );
    // A repository created in Bitbucket reaches acme-api through the webhook the operator
    // registered, without a sync request.
    assert!(
        shown
            .lines()
            .any(|l| l.starts_with("webhook of workspace acme: Registered")),
        "the demo shows no registered webhook:\n{shown}"
    );
    assert!(
        shown.lines().any(
            |l| l.starts_with("webhook: created acme/created-by-the-demo")
                && l.contains("acme-api listed it")
        ),
        "the demo's new repository did not arrive by webhook:\n{shown}"
    );
    let running: Vec<String> = started_with(&marker).into_iter().map(|(_, n)| n).collect();
    for program in [
        "etcd",
        "kube-apiserver",
        "bitbucket-sim",
        "bitbucket-operator",
    ] {
        assert!(
            running.iter().any(|name| name == program),
            "{program} is not among what the demo runs ({running:?}), so this test could not \
             see it left behind"
        );
    }

    let interrupted = Command::new("kill")
        .args(["-INT", "--", &format!("-{group}")])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let status = eventually(
        "make run to exit after Ctrl-C",
        Duration::from_secs(120),
        || std::future::ready(run.try_wait().unwrap()),
    )
    .await;
    let left = started_with(&marker);
    assert!(
        left.is_empty(),
        "Ctrl-C of make run | cat (exit {status}) left {left:?} running; make run's stderr:\n{}",
        log()
    );
    if let Err(error) = std::fs::remove_dir_all(&dir) {
        let what = Command::new("find").arg(&dir).output().unwrap();
        panic!(
            "after make run stopped, its directory could not be removed ({error}); it holds:\n{}",
            String::from_utf8_lossy(&what.stdout)
        );
    }
}
