//! Every port the operator serves (`/metrics`, the probes, the plugin generator) under clients
//! that break the rules: slow heads, slow bodies, bodies too large or sent without the token,
//! more connections than it serves. The operator binary as it ships, on loopback ports, against
//! the real API server; each test prints what it measured.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::support::{TestNamespace, client, free_port, within};

const TOKEN: &str = "FAKE-plugin-generator-token";

/// The operator binary serving its three ports on loopback, watching only `namespace`; killed
/// when dropped.
struct Ports {
    metrics: String,
    health: String,
    plugin: String,
    child: Child,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Ports {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Ports {
    async fn start(namespace: &str, flags: &[&str]) -> Self {
        let dir = TempDir(std::env::temp_dir().join(format!("http-servers-{namespace}")));
        std::fs::create_dir_all(&dir.0).unwrap();
        let token_file = dir.0.join("token");
        std::fs::write(&token_file, TOKEN).unwrap();
        let [metrics, health, plugin] = [(); 3].map(|()| format!("127.0.0.1:{}", free_port()));
        let child = Command::new(env!("CARGO_BIN_EXE_bitbucket-operator"))
            .args(["run", "--namespaces", namespace])
            .args(["--metrics-address", &metrics, "--health-address", &health])
            .args(["--webhook-address", "127.0.0.1:0"])
            .args(["--plugin-address", &plugin, "--plugin-token-file"])
            .arg(&token_file)
            .args(flags)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.0.join("log")).unwrap())
            .spawn()
            .unwrap();
        let ports = Ports {
            metrics,
            health,
            plugin,
            child,
            _dir: dir,
        };
        crate::support::eventually(
            "the operator's ports to answer",
            Duration::from_secs(30),
            || {
                let health = ports.health.clone();
                async move { answer(&health, &get("/healthz")).await.ok() }
            },
        )
        .await;
        ports
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nhost: operator\r\nconnection: close\r\n\r\n")
}

/// A plugin generator request with the token, naming a Subscription that does not exist.
fn plugin_request() -> String {
    let body =
        r#"{"applicationSetName":"a","input":{"parameters":{"namespace":"n","subscription":"s"}}}"#;
    format!(
        "POST /api/v1/getparams.execute HTTP/1.1\r\nhost: operator\r\nauthorization: Bearer \
         {TOKEN}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\
         \r\n\r\n{body}",
        body.len()
    )
}

/// Sends `request` on a new connection and reads the answer to its end; the status line.
async fn answer(address: &str, request: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(address).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let answer = String::from_utf8_lossy(&answer);
    Ok(answer.lines().next().unwrap_or_default().to_owned())
}

/// How long the server kept a connection that sends `request` one byte every `pace`: `None` if
/// the whole request went out without the server closing the connection.
async fn trickle(mut stream: TcpStream, request: Vec<u8>, pace: Duration) -> Option<Duration> {
    let opened = Instant::now();
    let mut buf = [0u8; 1024];
    for byte in request {
        if stream.write_all(&[byte]).await.is_err() {
            return Some(opened.elapsed());
        }
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Some(opened.elapsed()),
                // An answer (408): the server ends the connection after it.
                Ok(_) => {
                    let _ = stream.read_to_end(&mut Vec::new()).await;
                    return Some(opened.elapsed());
                }
            },
            () = tokio::time::sleep(pace) => {}
        }
    }
    None
}

/// 300 clients per port that send a request head one byte every 5 s (as a slowloris attack
/// does) are cut off by each server within its header timeout (10 s by default), and while
/// they are held, each port still answers everyone else at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_on_every_port_and_others_are_answered_meanwhile() {
    let ns = TestNamespace::create(&client().await, "slow-clients").await;
    let ports = Ports::start(&ns.name, &[]).await;
    let pace = Duration::from_secs(5);
    let head = get("/healthz").into_bytes();
    let attack = |port: &'static str, address: String, request: String| {
        let head = head.clone();
        async move {
            let mut slow = tokio::task::JoinSet::new();
            for _ in 0..300 {
                let stream = TcpStream::connect(address.as_str()).await.unwrap();
                slow.spawn(trickle(stream, head.clone(), pace));
            }
            let asked = Instant::now();
            let status = tokio::time::timeout(Duration::from_secs(5), answer(&address, &request))
                .await
                .unwrap_or_else(|_| panic!("{port}: not answered while 300 slow clients were held"))
                .unwrap();
            let answered = asked.elapsed();
            assert!(status.starts_with("HTTP/1.1 "), "{port}: {status}");
            let held = tokio::time::timeout(Duration::from_secs(60), slow.join_all())
                .await
                .unwrap_or_else(|_| panic!("{port}: slow clients still held after 60 s"));
            let cut: Vec<Duration> = held.iter().flatten().copied().collect();
            assert_eq!(
                cut.len(),
                300,
                "{port}: the server closed {} of 300",
                cut.len()
            );
            let last = cut.iter().max().unwrap();
            assert!(
                *last < Duration::from_secs(20),
                "{port}: the last held {last:?}"
            );
            eprintln!(
                "{port}: 300 slow connections, all closed by the server, the last after {:.1} s; \
                 another client answered ({status}) in {} ms meanwhile",
                last.as_secs_f64(),
                answered.as_millis()
            );
        }
    };
    futures::future::join_all([
        attack("metrics", ports.metrics.clone(), get("/metrics")),
        attack("health", ports.health.clone(), get("/readyz")),
        attack("plugin", ports.plugin.clone(), plugin_request()),
    ])
    .await;
}

/// Writes `head` and then up to `body_bytes` of body in 64 KiB pieces while reading the answer;
/// the status line and how many bytes the socket took before the server closed it (an upper
/// bound of what the server read: the two kernels' buffers hold some).
async fn send_large(address: &str, head: String, body_bytes: usize) -> (String, usize) {
    let stream = TcpStream::connect(address).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        let mut sent = 0;
        if writer.write_all(head.as_bytes()).await.is_err() {
            return sent;
        }
        let piece = vec![b'x'; 64 * 1024];
        while sent < body_bytes {
            match writer.write(&piece).await {
                Ok(n) if n > 0 => sent += n,
                _ => break,
            }
        }
        sent
    });
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), reader.read_to_end(&mut answer)).await;
    drop(reader);
    let sent = tokio::time::timeout(Duration::from_secs(30), writing)
        .await
        .expect("the body was neither taken nor refused within 30 s")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    (answer.lines().next().unwrap_or_default().to_owned(), sent)
}

fn post_head(length: usize, token: Option<&str>) -> String {
    let authorization = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!(
        "POST /api/v1/getparams.execute HTTP/1.1\r\nhost: operator\r\n{authorization}\
         content-type: application/json\r\ncontent-length: {length}\r\n\r\n"
    )
}

/// A 64 MiB body without the token is refused from its headers (403), and one with the token
/// is refused for its size (413), each before the body is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generator_refuses_large_and_unauthenticated_bodies_before_reading_them() {
    let ns = TestNamespace::create(&client().await, "large-bodies").await;
    let ports = Ports::start(&ns.name, &[]).await;
    const BODY: usize = 64 * 1024 * 1024;
    for (who, token, refusal) in [
        ("without the token", None, "403"),
        ("with the token", Some(TOKEN), "413"),
    ] {
        let (status, taken) = send_large(&ports.plugin, post_head(BODY, token), BODY).await;
        assert!(status.contains(refusal), "a 64 MiB body {who}: {status:?}");
        assert!(
            taken < BODY / 8,
            "a 64 MiB body {who}: {taken} bytes were taken before the refusal"
        );
        eprintln!(
            "a 64 MiB body {who}: {status}; the socket took {:.2} MiB before the server closed \
             it (the server read at most that)",
            taken as f64 / (1024.0 * 1024.0)
        );
    }
}

/// A body that trickles is answered 408 at the request timeout, and a client beyond the
/// connection cap waits until a slot frees (here: when the header timeout cuts an idle one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_times_out_and_connections_beyond_the_cap_wait() {
    let ns = TestNamespace::create(&client().await, "connection-cap").await;
    let limits = [
        "--http-header-timeout=2s",
        "--http-request-timeout=2s",
        "--http-max-connections=20",
    ];
    let ports = Ports::start(&ns.name, &limits).await;

    let head = post_head(1000, Some(TOKEN));
    let mut stream = TcpStream::connect(ports.plugin.as_str()).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let slow = trickle(stream, vec![b' '; 1000], Duration::from_millis(200));
    let held = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("a body sent at 5 bytes a second was still read after 10 s")
        .expect("a body sent at 5 bytes a second was waited for to its end (200 s)");
    eprintln!(
        "a body at 5 bytes/s: cut off after {:.1} s",
        held.as_secs_f64()
    );

    let opened = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(ports.health.as_str()).await.unwrap());
    }
    // When the first of them is closed: a slot frees then.
    let idle_closed = tokio::spawn(async move {
        let mut closes = tokio::task::JoinSet::new();
        for mut stream in idle {
            closes.spawn(async move {
                let _ = stream.read(&mut [0u8; 16]).await;
                opened.elapsed()
            });
        }
        closes.join_all().await.into_iter().min().unwrap()
    });
    let status = within(
        "the 21st client's answer",
        answer(&ports.health, &get("/healthz")),
    )
    .await
    .unwrap();
    let answered = opened.elapsed();
    let first_closed = within("an idle connection to be closed", idle_closed)
        .await
        .unwrap();
    assert!(status.contains("200"), "{status}");
    assert!(
        answered >= first_closed,
        "the 21st connection was answered after {answered:?}, before any of the 20 idle ones \
         was closed (the first after {first_closed:?}): the cap of 20 did not hold"
    );
    eprintln!(
        "cap of 20: the 21st client was answered after {:.1} s, when the idle ones were cut \
         (the first after {:.1} s)",
        answered.as_secs_f64(),
        first_closed.as_secs_f64()
    );
}
