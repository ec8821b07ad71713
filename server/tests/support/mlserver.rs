//! A real KServe v2 inference server for the Triton backend's tests: MLServer
//! (from the venv of `scripts/python-env.sh`) serving ONNX models through
//! `server/tests/mlserver/onnx_runtime.py`, on free loopback ports (the
//! tests make one endpoint fail and recover with a
//! [`Forwarder`](super::support::forwarder::Forwarder)).
#![allow(dead_code, missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::support::{python, repo_root};

pub use super::support::forwarder::{free_port, Forwarder};

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
