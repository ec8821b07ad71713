//! Test support: a real `framegate serve` process on a free loopback port,
//! a WebSocket client speaking the protocol, and the independent Python
//! reference detector.
#![allow(dead_code, missing_docs)]

pub mod fake_stripe;
pub mod forwarder;
pub mod keys;
pub mod load;
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

/// The checkout's root: `FRAMEGATE_REPO_ROOT` when set (a test executable
/// run away from its build tree, as `cuda-kernels/gpu-check.sh` does on a GPU
/// machine), else the tree it was built from.
pub fn repo_root() -> PathBuf {
    if let Some(root) = std::env::var_os("FRAMEGATE_REPO_ROOT").filter(|v| !v.is_empty()) {
        return PathBuf::from(root);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The five test photos with reference detections (tests/data/README.md).
pub const PHOTOS: [&str; 5] = [
    "dog.jpg",
    "person.jpg",
    "horses.jpg",
    "giraffe.jpg",
    "kite.jpg",
];

/// Frame limits roomy enough for every test photo and raw frame.
pub const FRAME_LIMITS: framegate::pipeline::decode::FrameLimits =
    framegate::pipeline::decode::FrameLimits {
        max_pixels: 40_000_000,
        max_side: 16_384,
    };

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
    pub stderr: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// The QUIC address and the certificate's SHA-256, unless QUIC is off.
    pub quic: Option<(SocketAddr, String)>,
    /// The admin API's address, when its listener is on.
    pub admin: Option<SocketAddr>,
    /// The WebTransport address and its certificate's SHA-256, when it is
    /// on (`--webtransport-listen 127.0.0.1:0`).
    pub webtransport: Option<(SocketAddr, String)>,
    _data_dir: Option<tempfile::TempDir>,
}

impl Gateway {
    /// Starts `framegate serve` with the dev key [`KEY`] and waits until ready.
    pub async fn start(args: &[&str]) -> Gateway {
        Self::start_with_env(args, &[]).await
    }

    pub async fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Gateway {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_framegate"));
        cmd.arg("serve").args(["--http-listen", "127.0.0.1:0"]);
        // QUIC on a free port, its development certificate in a fresh folder.
        if !args.contains(&"--quic-listen") {
            cmd.args(["--quic-listen", "127.0.0.1:0"]);
        }
        // The admin API on its own free port (many gateways run at once).
        if !args.contains(&"--admin-listen") {
            cmd.args(["--admin-listen", "127.0.0.1:0"]);
        }
        let data_dir = if args.contains(&"--data-dir")
            || env.iter().any(|(k, _)| *k == "FRAMEGATE_DATA_DIR")
        {
            None
        } else {
            let d = tempfile::tempdir().expect("temp data dir");
            cmd.arg("--data-dir").arg(d.path());
            Some(d)
        };
        cmd.args(args)
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
                    if line.contains("admin API") {
                        // Not the public listener; read by `admin` below.
                    } else if let Some(rest) = line.split("listening on http://").nth(1) {
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
                    if std::env::var_os("FRAMEGATE_TEST_ECHO").is_some() {
                        eprintln!("[framegate] {line}");
                    }
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
        let mut gw = Gateway {
            child,
            _data: data,
            addr,
            stdout: lines,
            stderr: errors,
            quic: None,
            admin: None,
            webtransport: None,
            _data_dir: data_dir,
        };
        gw.wait_ready().await;
        gw.quic = gw
            .stdout
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| parse_quic_line(l));
        gw.admin = gw.stdout.lock().unwrap().iter().find_map(|l| {
            l.split("admin API listening on http://")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        });
        gw.webtransport = gw
            .stdout
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| parse_webtransport_line(l));
        gw
    }

    /// `http://ADMIN_ADDR{path}` (the admin listener must be on).
    pub fn admin_url(&self, path: &str) -> String {
        format!(
            "http://{}{}",
            self.admin
                .expect("the admin API is on (set FRAMEGATE_ADMIN_TOKEN)"),
            path
        )
    }

    /// `HOST:PORT` of the HTTPS listener (started with `--https-listen`),
    /// from the line the gateway prints.
    pub fn https_addr(&self) -> String {
        self.stdout
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| {
                l.split("HTTPS listening on https://")
                    .nth(1)
                    .map(|r| r.split_whitespace().next().unwrap().to_string())
            })
            .expect("the gateway printed its HTTPS line (start it with --https-listen)")
    }

    /// Everything the process printed so far (stdout and stderr).
    pub fn logs(&self) -> Vec<String> {
        let mut out = self.stdout.lock().unwrap().clone();
        out.extend(self.stderr.lock().unwrap().iter().cloned());
        out
    }

    /// `quic://ADDR` of the gateway.
    pub fn quic_url(&self) -> String {
        format!("quic://{}", self.quic.as_ref().expect("QUIC is on").0)
    }

    /// The SHA-256 fingerprint of the gateway's certificate.
    pub fn fingerprint(&self) -> String {
        self.quic.as_ref().expect("QUIC is on").1.clone()
    }

    /// The gateway's resident memory, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("read /proc/PID/status");
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS line");
        kb * 1024
    }

    /// `GET /v1/models` as JSON.
    pub async fn models(&self) -> serde_json::Value {
        reqwest::Client::new()
            .get(self.url("/v1/models"))
            .bearer_auth(KEY)
            .send()
            .await
            .expect("models")
            .json()
            .await
            .expect("models json")
    }

    /// (frames inferred, session frames billed) of the default model.
    pub async fn counters(&self) -> (u64, u64) {
        let m = self.models().await;
        let m = &m["models"][0];
        (
            m["frames_inferred"].as_u64().unwrap(),
            m["session_frames_billed"].as_u64().unwrap(),
        )
    }

    /// `GET /metrics`: the Prometheus text.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.url("/metrics"))
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("the metrics text")
    }

    /// `framegate_sessions_open` (every transport) once it reads `want`,
    /// or after `within`: what it read last.
    pub async fn sessions_open_within(&self, want: u64, within: Duration) -> u64 {
        let end = Instant::now() + within;
        loop {
            let open: u64 = self
                .metrics()
                .await
                .lines()
                .filter(|l| l.starts_with("framegate_sessions_open{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .map(|v| v as u64)
                .sum();
            if open == want || Instant::now() > end {
                return open;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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

/// "framegate: QUIC listening on quic://ADDR (…), certificate sha256 HEX (…)"
fn parse_quic_line(line: &str) -> Option<(SocketAddr, String)> {
    let rest = line.split("QUIC listening on quic://").nth(1)?;
    let addr = rest.split_whitespace().next()?.parse().ok()?;
    let fp = rest.split("sha256 ").nth(1)?.split_whitespace().next()?;
    Some((addr, fp.to_string()))
}

/// "framegate: WebTransport listening on https://ADDR/v1/wt (…), certificate sha256 HEX (…)"
fn parse_webtransport_line(line: &str) -> Option<(SocketAddr, String)> {
    let rest = line.split("WebTransport listening on https://").nth(1)?;
    let addr = rest.split('/').next()?.parse().ok()?;
    let fp = rest.split("sha256 ").nth(1)?.split_whitespace().next()?;
    Some((addr, fp.to_string()))
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

/// The next protocol message, or `None` once the server closed. Panics after 120 s.
pub async fn recv(ws: &mut Ws) -> Option<ServerMessage> {
    loop {
        let next = tokio::time::timeout(Duration::from_secs(120), ws.next())
            .await
            .expect("no message from the server within 120 s (a hang guard, not a speed check)");
        match next {
            None | Some(Err(_)) => return None,
            Some(Ok(Message::Close(_))) => {
                answer_close(ws).await;
                return None;
            }
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
        let next = tokio::time::timeout(Duration::from_secs(120), ws.next())
            .await
            .expect("no close within 120 s");
        match next {
            Some(Ok(Message::Close(Some(f)))) => {
                answer_close(ws).await;
                return Some(u16::from(f.code));
            }
            Some(Ok(Message::Close(None))) => {
                answer_close(ws).await;
                return None;
            }
            None | Some(Err(_)) => return None,
            Some(Ok(_)) => continue,
        }
    }
}

/// Answers a close frame just read, as every WebSocket client does
/// (tungstenite sends the answer on the next read): after Bye that tells
/// the gateway the end reached the client, and the session ends at once
/// instead of waiting for a resume.
pub async fn answer_close(ws: &mut Ws) {
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.next()).await;
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

/// An HTTP/2 connection to `addr` in cleartext (prior knowledge, as the
/// gateway's HTTP listener takes it): the request sender, and the task
/// driving the connection, which ends when the connection does.
pub async fn h2_connect(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("HTTP/2 handshake");
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, driver)
}

/// A raw QUIC connection to the gateway (for protocol-level and hostile
/// tests), pinned to its development certificate.
pub mod quic {
    use std::sync::Arc;

    use framegate_protocol::framing;
    use framegate_protocol::{ClientMessage, DecodeLimits, ServerMessage};
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::CryptoProvider;
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
    use sha2::{Digest, Sha256};

    #[derive(Debug)]
    struct Pinned(String, Arc<CryptoProvider>);

    impl ServerCertVerifier for Pinned {
        fn verify_server_cert(
            &self,
            end_entity: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            if hex::encode(Sha256::digest(end_entity.as_ref())) == self.0 {
                Ok(ServerCertVerified::assertion())
            } else {
                Err(rustls::Error::General("pin mismatch".into()))
            }
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.1.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.1.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.1.signature_verification_algorithms.supported_schemes()
        }
    }

    /// A client endpoint that trusts exactly the gateway's certificate.
    pub fn endpoint(gw: &super::Gateway) -> quinn::Endpoint {
        endpoint_with(gw, quinn::TransportConfig::default())
    }

    /// A client endpoint with its own transport settings (flow control,
    /// keep-alive).
    pub fn endpoint_with(
        gw: &super::Gateway,
        transport: quinn::TransportConfig,
    ) -> quinn::Endpoint {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned(gw.fingerprint(), provider)))
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"framegate/1".to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport));
        ep.set_default_client_config(config);
        ep
    }

    pub async fn connect(
        ep: &quinn::Endpoint,
        gw: &super::Gateway,
    ) -> Result<quinn::Connection, String> {
        let addr = gw.quic.as_ref().unwrap().0;
        ep.connect(addr, "localhost")
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())
    }

    pub async fn send(s: &mut quinn::SendStream, msg: &ClientMessage) {
        s.write_all(&framing::encode(&msg.encode()))
            .await
            .expect("quic write");
    }

    /// The next message, or `None` when the stream/connection ended.
    pub async fn recv(r: &mut quinn::RecvStream) -> Option<ServerMessage> {
        let mut len = [0u8; 4];
        r.read_exact(&mut len).await.ok()?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        r.read_exact(&mut body).await.ok()?;
        Some(ServerMessage::decode(&body.into(), &DecodeLimits::default()).expect("decodable"))
    }

    /// The application error code the connection was closed with.
    pub async fn close_code(conn: &quinn::Connection) -> Option<u64> {
        match tokio::time::timeout(std::time::Duration::from_secs(30), conn.closed())
            .await
            .expect("connection not closed within 30 s")
        {
            quinn::ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner()),
            _ => None,
        }
    }
}
