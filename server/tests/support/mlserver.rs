//! A real KServe v2 inference server for the Triton backend's tests: MLServer
//! (from the venv of `scripts/python-env.sh`) serving ONNX models through
//! `server/tests/mlserver/onnx_runtime.py`, on free loopback ports; and a
//! TCP forwarder to make one endpoint fail and recover on demand.
#![allow(dead_code, missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::support::{python, repo_root};

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Removes the model repositories of earlier test processes (named
/// `mlserver-PID-PORT`) that are no longer running.
fn remove_stale_repositories() {
    let Ok(dir) = std::fs::read_dir(env!("CARGO_TARGET_TMPDIR")) else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("mlserver-")
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A running MLServer; killed on drop (and by its own watchdog when the
/// test process exits, for servers kept in a `static`).
pub struct MlServer {
    child: Mutex<Child>,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl MlServer {
    /// Serves each `(name, onnx file)` and waits until every model is ready.
    pub fn start(models: &[(&str, PathBuf)]) -> MlServer {
        remove_stale_repositories();
        let repo = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "mlserver-{}-{}",
            std::process::id(),
            free_port()
        ));
        let _ = std::fs::remove_dir_all(&repo);
        std::fs::create_dir_all(&repo).unwrap();
        let (http, grpc) = (free_port(), free_port());
        let settings = serde_json::json!({
            "host": "127.0.0.1",
            "http_port": http,
            "grpc_port": grpc,
            "metrics_endpoint": null,
            // Inference in the server process itself: no worker pool to leak.
            "parallel_workers": 0,
            // gRPC's default limit is 4 MiB; a batch of NanoDet-g is ~14 MB.
            "grpc_max_message_length": 268_435_456,
            "debug": false,
        });
        std::fs::write(repo.join("settings.json"), settings.to_string()).unwrap();
        for (name, onnx) in models {
            let dir = repo.join(name);
            std::fs::create_dir_all(&dir).unwrap();
            let model = serde_json::json!({
                "name": name,
                "implementation": "onnx_runtime.OnnxRuntimeModel",
                "parameters": { "uri": onnx },
            });
            std::fs::write(dir.join("model-settings.json"), model.to_string()).unwrap();
        }
        let mut child = Command::new(python())
            .arg(repo_root().join("server/tests/mlserver/serve.py"))
            .arg(&repo)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start MLServer (run scripts/python-env.sh)");
        let log = Arc::new(Mutex::new(Vec::new()));
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
        }
        let server = MlServer {
            child: Mutex::new(child),
            grpc: SocketAddr::from(([127, 0, 0, 1], grpc)),
            http: SocketAddr::from(([127, 0, 0, 1], http)),
            log,
        };
        let end = Instant::now() + Duration::from_secs(60);
        for (name, _) in models {
            while !server.http_ok(&format!("/v2/models/{name}/ready")) {
                if let Ok(Some(status)) = server.child.lock().unwrap().try_wait() {
                    panic!("MLServer exited ({status}):\n{}", server.log_text());
                }
                assert!(
                    Instant::now() < end,
                    "MLServer not ready within 60 s:\n{}",
                    server.log_text()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        server
    }

    /// The gRPC endpoint as `backend.triton.endpoints` wants it.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// `GET path` on the HTTP port answers 200.
    fn http_ok(&self, path: &str) -> bool {
        let Ok(mut s) = TcpStream::connect_timeout(&self.http, Duration::from_millis(200)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut head = [0u8; 12];
        s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
    }
}

impl Drop for MlServer {
    fn drop(&mut self) {
        let mut c = self.child.lock().unwrap();
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// The ONNX file of the bundled model.
pub fn nanodet_onnx() -> PathBuf {
    repo_root().join("models/nanodet-g/nanodet-g-416.onnx")
}

/// A TCP forwarder from a loopback port to `target`: an endpoint the test
/// can take down (listener and every connection closed) and bring back on
/// the same port. Counts the bytes it forwarded towards `target`.
pub struct Forwarder {
    pub port: u16,
    target: SocketAddr,
    pub bytes_up: Arc<AtomicU64>,
    runtime: tokio::runtime::Runtime,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Forwarder {
    pub fn start(target: SocketAddr) -> Forwarder {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let f = Forwarder {
            port: free_port(),
            target,
            bytes_up: Arc::new(AtomicU64::new(0)),
            runtime,
            tasks: Mutex::new(Vec::new()),
            conns: Arc::new(Mutex::new(Vec::new())),
        };
        f.resume();
        f
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Listens (again) on `port`.
    pub fn resume(&self) {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let listener = self
            .runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .expect("bind the forwarder port");
        let (target, bytes, conns) = (self.target, self.bytes_up.clone(), self.conns.clone());
        let accept = self.runtime.spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let bytes = bytes.clone();
                let conn = tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut ri, mut wi) = inbound.split();
                    let (mut ro, mut wo) = outbound.split();
                    let up = async {
                        let mut buf = vec![0u8; 64 << 10];
                        loop {
                            use tokio::io::{AsyncReadExt, AsyncWriteExt};
                            match ri.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    bytes.fetch_add(n as u64, Ordering::Relaxed);
                                    if wo.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                    };
                    let down = tokio::io::copy(&mut ro, &mut wi);
                    tokio::select! { _ = up => {}, _ = down => {} }
                });
                conns.lock().unwrap().push(conn.abort_handle());
            }
        });
        self.tasks.lock().unwrap().push(accept.abort_handle());
    }

    /// Closes the listener and every forwarded connection.
    pub fn stop(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
        // Let the aborted tasks drop their sockets.
        self.runtime
            .block_on(async { tokio::time::sleep(Duration::from_millis(50)).await });
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let end = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(addr).is_ok() {
            assert!(Instant::now() < end, "forwarder port still open");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes_up.load(Ordering::Relaxed)
    }
}

/// Writes a `framegate.toml` into a temp dir; returns (dir, path).
pub fn config_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("framegate.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}
