//! Test support: a real `framegate serve` process on a free loopback port,
//! a WebSocket client speaking the protocol, and the independent Python
//! reference detector.
#![allow(dead_code, missing_docs)]

pub mod fake_stripe;
pub mod redis;
pub mod usage;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use framegate_protocol::{
    Bytes, ClientMessage, Codec, DecodeLimits, Frame, Hello, ServerMessage, PROTOCOL_VERSION,
};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

pub const KEY: &str = "test-key-0123456789";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub fn data(name: &str) -> Vec<u8> {
    let p = repo_root().join("server/tests/data").join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// A running gateway; killed on drop.
pub struct Gateway {
    child: Child,
    /// A private data folder, unless the test gave `FRAMEGATE_DATA_DIR`.
    _data: Option<tempfile::TempDir>,
    pub addr: SocketAddr,
    pub stdout: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Gateway {
    /// Starts `framegate serve` with the dev key [`KEY`] and waits until ready.
    pub async fn start(args: &[&str]) -> Gateway {
        Self::start_with_env(args, &[]).await
    }

    pub async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Gateway {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_framegate"));
        cmd.arg("serve")
            .args(["--http-listen", "127.0.0.1:0"])
            .args(args)
            .env("FRAMEGATE_DEV_KEY", KEY)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        // Each gateway gets its own data folder (usage store, write-ahead file).
        let data = if env.iter().any(|(k, _)| *k == "FRAMEGATE_DATA_DIR") {
            None
        } else {
            let d = tempfile::tempdir().expect("temp dir");
            cmd.env("FRAMEGATE_DATA_DIR", d.path());
            Some(d)
        };
        let mut child = cmd.spawn().expect("spawn framegate");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        let addr = rest.split_whitespace().next().unwrap().to_string();
                        let _ = tx.send(addr);
                    }
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let errors = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        {
            let errors = errors.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    eprintln!("[framegate] {line}");
                    errors.lock().unwrap().push(line);
                }
            });
        }
        let addr: SocketAddr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "framegate did not start; stderr:\n{}",
                    errors.lock().unwrap().join("\n")
                );
            }
        };
        let gw = Gateway {
            child,
            _data: data,
            addr,
            stdout: lines,
        };
        gw.wait_ready().await;
        gw
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/stream", self.addr)
    }

    async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(self.url("/readyz")).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(Instant::now() < end, "gateway not ready within 60 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// POSTs an image to /v1/detect with the test key.
    pub async fn detect(&self, body: Vec<u8>, content_type: &str) -> reqwest::Response {
        reqwest::Client::new()
            .post(self.url("/v1/detect"))
            .bearer_auth(KEY)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request")
    }
}

impl Gateway {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits for the exit (graceful shutdown); the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -TERM failed");
        self.child.wait().expect("wait for the gateway")
    }

    /// SIGKILL, then reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A detection as the tests compare them.
#[derive(Debug, Clone, PartialEq)]
pub struct Det {
    pub class_id: u32,
    pub label: String,
    pub score: f32,
    pub xyxy: [f32; 4],
}

pub fn dets_from_json(v: &serde_json::Value) -> Vec<Det> {
    v["detections"]
        .as_array()
        .expect("detections array")
        .iter()
        .map(|d| {
            let b = d["box"].as_array().unwrap();
            Det {
                class_id: d["class_id"].as_u64().unwrap() as u32,
                label: d["label"].as_str().unwrap().to_string(),
                score: d["score"].as_f64().unwrap() as f32,
                xyxy: std::array::from_fn(|i| b[i].as_f64().unwrap() as f32),
            }
        })
        .collect()
}

pub fn dets_from_proto(d: &framegate_protocol::Detections) -> Vec<Det> {
    d.detections
        .iter()
        .map(|d| Det {
            class_id: d.class_id,
            label: d.label.clone(),
            score: d.score,
            xyxy: [d.x1, d.y1, d.x2, d.y2],
        })
        .collect()
}

pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: &[f32; 4]| (r[2] - r[0]) * (r[3] - r[1]);
    inter / (area(a) + area(b) - inter)
}

/// Asserts that every reference detection of the given labels has a match
/// of the same class at IoU ≥ `min_iou`.
pub fn assert_matches(got: &[Det], reference: &[Det], labels: &[&str], min_iou: f32) {
    for label in labels {
        let r = reference
            .iter()
            .find(|d| d.label == *label)
            .unwrap_or_else(|| panic!("reference has no {label}: {reference:?}"));
        let best = got
            .iter()
            .filter(|d| d.class_id == r.class_id)
            .map(|d| iou(&d.xyxy, &r.xyxy))
            .fold(0.0f32, f32::max);
        assert!(
            best >= min_iou,
            "{label}: best IoU {best:.3} < {min_iou} (got {got:?}, reference {r:?})"
        );
    }
}

/// The venv Python that `scripts/python-env.sh` sets up.
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("FRAMEGATE_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let p = repo_root().join(".cache/venv/bin/python");
    assert!(
        p.exists(),
        "the Python reference environment is missing: run `scripts/python-env.sh` (the README's test command does)"
    );
    p
}

/// Runs the independent Python/NumPy reference on the given images.
pub fn reference(images: &[&str]) -> Vec<(String, Vec<Det>)> {
    let root = repo_root();
    let out = Command::new(python())
        .arg(root.join("tools/reference/nanodet_ref.py"))
        .args(
            images
                .iter()
                .map(|i| root.join("server/tests/data").join(i)),
        )
        .output()
        .expect("run the reference");
    assert!(
        out.status.success(),
        "reference failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["image"].as_str().unwrap().to_string(), dets_from_json(&v))
        })
        .collect()
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a WebSocket; `header_key` goes in `Authorization`.
pub async fn ws_connect(gw: &Gateway, header_key: Option<&str>) -> Ws {
    let mut req = gw.ws_url().into_client_request().unwrap();
    if let Some(k) = header_key {
        req.headers_mut()
            .insert("authorization", format!("Bearer {k}").parse().unwrap());
    }
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("ws connect");
    ws
}

pub fn hello(credential: &str) -> ClientMessage {
    ClientMessage::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        credential: credential.to_string(),
        client_name: "framegate-tests".into(),
        ..Default::default()
    })
}

pub fn jpeg_frame(seq: u64, jpeg: &[u8]) -> ClientMessage {
    ClientMessage::Frame(Frame {
        seq,
        capture_ts_us: seq * 1000,
        codec: Codec::Jpeg,
        width: 0,
        height: 0,
        deadline_us: 0,
        payload: Bytes::copy_from_slice(jpeg),
    })
}

pub async fn send(ws: &mut Ws, msg: &ClientMessage) {
    ws.send(Message::Binary(msg.encode()))
        .await
        .expect("ws send");
}

/// The next protocol message, or `None` once the server closed. Panics after 30 s.
pub async fn recv(ws: &mut Ws) -> Option<ServerMessage> {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("no message from the server within 30 s");
        match next {
            None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return None,
            Some(Ok(Message::Binary(b))) => {
                return Some(
                    ServerMessage::decode(&b, &DecodeLimits::default())
                        .expect("decodable server message"),
                )
            }
            Some(Ok(_)) => continue,
        }
    }
}

/// Reads until the close frame and returns its code.
pub async fn close_code(ws: &mut Ws) -> Option<u16> {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("no close within 30 s");
        match next {
            Some(Ok(Message::Close(Some(f)))) => return Some(u16::from(f.code)),
            None | Some(Err(_)) | Some(Ok(Message::Close(None))) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

/// Hello → Welcome with the test key in Hello.
pub async fn open_session(gw: &Gateway) -> (Ws, framegate_protocol::Welcome) {
    let mut ws = ws_connect(gw, None).await;
    send(&mut ws, &hello(KEY)).await;
    match recv(&mut ws).await {
        Some(ServerMessage::Welcome(w)) => (ws, w),
        other => panic!("expected Welcome, got {other:?}"),
    }
}
