//! The soak's moving parts outside the simulator: the operator binary as its own process (killed
//! and started again), a TCP front between it and the API server that can drop every connection
//! (and with them its watches), a TLS front for a Data Center server whose certificate can stop
//! matching the CA bundle, and the control plane's own faults (`hack/control-plane.sh restart`
//! and `pause`). No decisions: the soak says when.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio::{
    net::{TcpListener, TcpStream},
    task::AbortHandle,
};

/// The connections a front has open, so that all can be cut at once.
#[derive(Clone, Default)]
struct Connections(Arc<Mutex<Vec<AbortHandle>>>);

impl Connections {
    fn add(&self, handle: AbortHandle) {
        let mut open = self.0.lock().unwrap();
        open.retain(|h| !h.is_finished());
        open.push(handle);
    }

    fn cut(&self) -> usize {
        let open = std::mem::take(&mut *self.0.lock().unwrap());
        let live = open.iter().filter(|h| !h.is_finished()).count();
        open.iter().for_each(AbortHandle::abort);
        live
    }
}

/// A TCP front for the API server (TLS passes through): the operator's kubeconfig points here.
pub struct ApiFront {
    pub address: SocketAddr,
    connections: Connections,
}

impl ApiFront {
    pub async fn start(backend: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let connections = Connections::default();
        let open = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                open.add(task.abort_handle());
            }
        });
        Self {
            address,
            connections,
        }
    }

    /// Drops every connection: each watch the operator has open ends mid-stream.
    pub fn drop_connections(&self) -> usize {
        self.connections.cut()
    }
}

/// A TLS front for the simulator whose certificate is signed by the CA in the integration's
/// bundle, or — while `mismatched` — by another CA.
pub struct TlsFront {
    pub address: SocketAddr,
    pub ca_pem: String,
    mismatched: Arc<AtomicBool>,
    connections: Connections,
}

impl TlsFront {
    pub async fn start(backend: SocketAddr) -> Self {
        let good = crate::support::tls::pki("127.0.0.1");
        let other = crate::support::tls::pki("127.0.0.1");
        let good_acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(good.server));
        let other_acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(other.server));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let mismatched = Arc::new(AtomicBool::new(false));
        let connections = Connections::default();
        let (open, wrong) = (connections.clone(), Arc::clone(&mismatched));
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let acceptor = if wrong.load(Ordering::SeqCst) {
                    other_acceptor.clone()
                } else {
                    good_acceptor.clone()
                };
                let task = tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(socket).await else {
                        return;
                    };
                    let Ok(mut plain) = TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
                open.add(task.abort_handle());
            }
        });
        Self {
            address,
            ca_pem: good.ca_pem,
            mismatched,
            connections,
        }
    }

    /// From now on, a certificate the bundle does not vouch for (pooled connections are cut).
    pub fn set_mismatched(&self, mismatched: bool) {
        self.mismatched.store(mismatched, Ordering::SeqCst);
        self.connections.cut();
    }
}

/// The operator's image binary, watching one namespace through `kubeconfig`; its log appended
/// to `log` across restarts.
pub struct OperatorProcess {
    child: Child,
    args: Vec<String>,
    kubeconfig: PathBuf,
    log: PathBuf,
    pub metrics_port: u16,
    pub starts: u32,
}

impl OperatorProcess {
    pub fn start(kubeconfig: &Path, log: &Path, namespace: &str, servers: &str) -> Self {
        let metrics_port = crate::support::free_port();
        let address = format!("127.0.0.1:{metrics_port}");
        let args = [
            "run",
            "--namespaces",
            namespace,
            "--metrics-address",
            &address,
            "--health-address",
            &address,
            "--plugin-address",
            "127.0.0.1:0",
            "--webhook-address",
            "127.0.0.1:0",
            "--allowed-servers",
            &format!("cloud,{servers}"),
            "--bitbucket-timeout-seconds",
            "10",
        ]
        .map(str::to_owned)
        .to_vec();
        let child = spawn(&args, kubeconfig, log);
        Self {
            child,
            args,
            kubeconfig: kubeconfig.to_owned(),
            log: log.to_owned(),
            metrics_port,
            starts: 1,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, then the same command again.
    pub fn kill_and_restart(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.child = spawn(&self.args, &self.kubeconfig, &self.log);
        self.starts += 1;
    }

    /// How it ended, if it ended without being killed by the soak.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().unwrap()
    }

    /// Resident memory in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> Option<u64> {
        crate::support::proc_status_kib(self.pid(), "VmRSS")
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(args: &[String], kubeconfig: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Command::new(operator_binary())
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env(
            "RUST_LOG",
            std::env::var("SOAK_OPERATOR_LOG").unwrap_or_else(|_| "info".into()),
        )
        .env_remove("WATCH_NAMESPACES")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// The binary the image ships (static, musl, release; `make image-binary`, which `make test`
/// and `make soak` run first): the soak runs the operator as users run it, allocator included.
pub fn operator_binary() -> PathBuf {
    let binary = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/image/bitbucket-operator");
    assert!(
        binary.exists(),
        "{} is missing: the soak runs the image's binary; build it with `make image-binary`",
        binary.display()
    );
    binary
}

/// The control plane `make test` / `make soak` started (its run directory holds the kubeconfig).
pub struct Plane {
    run_dir: PathBuf,
}

impl Plane {
    pub fn from_env() -> Self {
        let kubeconfig = PathBuf::from(std::env::var_os("KUBECONFIG").expect("KUBECONFIG"));
        let run_dir = kubeconfig.parent().unwrap().to_owned();
        assert!(
            run_dir.join("kube-apiserver.args").exists(),
            "the soak needs a plane started by hack/control-plane.sh (make test or make soak), \
             not {}",
            run_dir.display()
        );
        Self { run_dir }
    }

    /// The API server's address, as the kubeconfig names it.
    pub fn api_address(&self) -> SocketAddr {
        let server = std::fs::read_to_string(self.run_dir.join("server")).unwrap();
        let url = url::Url::parse(server.trim()).unwrap();
        format!("{}:{}", url.host_str().unwrap(), url.port().unwrap())
            .parse()
            .unwrap()
    }

    /// The admin kubeconfig, pointed at `front` instead.
    pub fn kubeconfig_via(&self, front: SocketAddr, path: &Path) {
        let server = std::fs::read_to_string(self.run_dir.join("server")).unwrap();
        let original = std::fs::read_to_string(self.run_dir.join("kubeconfig")).unwrap();
        let rewritten = original.replace(
            server.trim(),
            &format!("https://127.0.0.1:{}", front.port()),
        );
        std::fs::write(path, rewritten).unwrap();
    }

    /// SIGKILL kube-apiserver and start it again; returns when it is ready.
    pub async fn restart_api_server(&self) {
        self.script(&["restart", "kube-apiserver"]).await;
    }

    /// SIGSTOP etcd for `seconds`, then SIGCONT.
    pub async fn pause_etcd(&self, seconds: f64) {
        self.script(&["pause", "etcd", &format!("{seconds:.1}")])
            .await;
    }

    async fn script(&self, args: &[&str]) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("hack/control-plane.sh");
        let run_dir = self.run_dir.clone();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let output = tokio::task::spawn_blocking(move || {
            Command::new(script)
                .args(&args)
                .env("BBO_RUN_DIR", run_dir)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(
            output.status.success(),
            "hack/control-plane.sh: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
