//! Isolation: no session or request ever receives another tenant's results.
//!
//! Twelve tenants, each with its own configured key (`[[auth.keys]]`, SHA-256),
//! stream at once over a WebSocket session, a QUIC session and HTTP detect
//! calls into one pipeline (the synthetic backend, so batches mix every
//! tenant's frames). Every frame is a unique PNG built from (tenant,
//! transport, seq); the synthetic backend's boxes are a pure function of the
//! frame's bytes (`synthetic_boxes`), so the checker knows the one right
//! answer to every frame and verifies, on every answer, that it is for a
//! frame sent on that session (its seq) and carries that frame's boxes; at
//! the end no answer is missing and none came twice.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use framegate::backend::synthetic::synthetic_boxes;
use framegate_protocol::{Bytes, ClientMessage, Codec, Frame, Hello, ServerMessage};
use sha2::{Digest, Sha256};
use support::*;

const TENANTS: usize = 12;
const STREAM_FRAMES: u64 = 60;
const HTTP_FRAMES: u64 = 20;
const SIDE: u32 = 16;
/// Classes the synthetic backend draws from (its default; the bundled
/// model has 80 labels).
const CLASSES: u32 = 80;

fn tenant(i: usize) -> String {
    format!("tenant-{i:02}")
}

fn key(i: usize) -> String {
    format!(
        "key-{i:02}-{}",
        hex::encode(Sha256::digest(format!("iso{i}")))
    )
}

/// A 16×16 PNG whose pixels come from (tenant, transport, seq).
fn unique_png(tenant: usize, transport: u8, seq: u64) -> Vec<u8> {
    let mut s = (tenant as u64) << 48 ^ u64::from(transport) << 40 ^ seq;
    let mut px = Vec::with_capacity((SIDE * SIDE * 3) as usize);
    for _ in 0..SIDE * SIDE * 3 {
        s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        px.push((z >> 56) as u8);
    }
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, SIDE, SIDE);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&px).unwrap();
    }
    out
}

fn expected(png: &[u8]) -> Vec<(u32, [f32; 4])> {
    synthetic_boxes(png, SIDE, SIDE, CLASSES)
        .into_iter()
        .map(|d| (d.class_id, d.xyxy))
        .collect()
}

fn check(who: &str, seq: u64, got: &[Det], want: &[(u32, [f32; 4])]) {
    let ok = got.len() == want.len()
        && got.iter().zip(want).all(|(g, (c, b))| {
            g.class_id == *c && g.xyxy.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-3)
        });
    assert!(
        ok,
        "{who}: the answer to seq {seq} is not this frame's: got {got:?}, want {want:?}"
    );
}

/// A streaming session over WebSocket or QUIC.
enum Conn {
    Ws(Box<Ws>),
    /// The connection is kept open for the session's life.
    Quic(
        quinn::SendStream,
        quinn::RecvStream,
        #[allow(dead_code)] quinn::Connection,
    ),
}

impl Conn {
    async fn send(&mut self, m: &ClientMessage) {
        match self {
            Conn::Ws(ws) => send(ws, m).await,
            Conn::Quic(tx, _, _) => quic::send(tx, m).await,
        }
    }

    async fn recv(&mut self) -> Option<ServerMessage> {
        match self {
            Conn::Ws(ws) => recv(ws).await,
            Conn::Quic(_, rx, _) => quic::recv(rx).await,
        }
    }
}

/// Streams [`STREAM_FRAMES`] unique frames on one session, keeping up to the
/// session's credits in flight, and checks every answer.
async fn stream(mut conn: Conn, who: String, t: usize, transport: u8) {
    conn.send(&ClientMessage::Hello(Hello::new(key(t)))).await;
    let window = match conn.recv().await {
        Some(ServerMessage::Welcome(w)) => u64::from(w.credits.clamp(1, 8)),
        other => panic!("{who}: expected Welcome, got {other:?}"),
    };
    let mut outstanding: HashMap<u64, Vec<(u32, [f32; 4])>> = HashMap::new();
    let (mut next, mut answered) = (1u64, 0u64);
    while answered < STREAM_FRAMES {
        while next <= STREAM_FRAMES && (outstanding.len() as u64) < window {
            let png = unique_png(t, transport, next);
            outstanding.insert(next, expected(&png));
            conn.send(&ClientMessage::Frame(Frame {
                seq: next,
                capture_ts_us: next,
                codec: Codec::Png,
                width: 0,
                height: 0,
                deadline_us: 0,
                payload: Bytes::from(png),
            }))
            .await;
            next += 1;
        }
        match conn.recv().await {
            Some(ServerMessage::Detections(d)) => {
                let want = outstanding.remove(&d.seq).unwrap_or_else(|| {
                    panic!(
                        "{who}: answer for seq {} never sent or already answered",
                        d.seq
                    )
                });
                check(&who, d.seq, &dets_from_proto(&d), &want);
                assert_eq!((d.width, d.height), (SIDE, SIDE), "{who}");
                answered += 1;
            }
            Some(ServerMessage::Credit(_)) => {}
            other => panic!("{who}: unexpected {other:?}"),
        }
    }
    assert!(outstanding.is_empty(), "{who}: missing answers");
    conn.send(&ClientMessage::Bye(Default::default())).await;
}

async fn http_calls(addr: std::net::SocketAddr, t: usize) {
    let client = reqwest::Client::new();
    for seq in 1..=HTTP_FRAMES {
        let png = unique_png(t, 2, seq);
        let want = expected(&png);
        let r = client
            .post(format!("http://{addr}/v1/detect"))
            .bearer_auth(key(t))
            .header("content-type", "image/png")
            .body(png)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{} http seq {seq}", tenant(t));
        let v: serde_json::Value = r.json().await.unwrap();
        check(
            &format!("{} http", tenant(t)),
            seq,
            &dets_from_json(&v),
            &want,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tenant_ever_receives_another_tenants_results() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = String::from(
        "[synthetic]\nfixed_us = 1000\nwait = \"sleep\"\n\
         [pipeline]\nworkers = 2\nmax_batch = 8\nmax_delay_us = 2000\n",
    );
    for i in 0..TENANTS {
        cfg.push_str(&format!(
            "[[auth.keys]]\ntenant = \"{}\"\nsha256 = \"{}\"\n",
            tenant(i),
            hex::encode(Sha256::digest(key(i).as_bytes()))
        ));
    }
    // Weights differ, so the scheduler interleaves tenants unevenly.
    cfg.push_str("[plans.heavy]\nweight = 3\n");
    for i in (0..TENANTS).step_by(3) {
        cfg.push_str(&format!("[tenants.{}]\nplan = \"heavy\"\n", tenant(i)));
    }
    let path = dir.path().join("framegate.toml");
    std::fs::write(&path, cfg).unwrap();
    let gw = Gateway::start(&["--backend", "synthetic", "--config", path.to_str().unwrap()]).await;
    let ep = quic::endpoint(&gw);

    let run = async {
        let mut tasks = Vec::new();
        for t in 0..TENANTS {
            let ws = ws_connect(&gw, None).await;
            tasks.push(tokio::spawn(stream(
                Conn::Ws(Box::new(ws)),
                format!("{} ws", tenant(t)),
                t,
                0,
            )));
            let conn = quic::connect(&ep, &gw).await.unwrap();
            let (tx, rx) = conn.open_bi().await.unwrap();
            tasks.push(tokio::spawn(stream(
                Conn::Quic(tx, rx, conn),
                format!("{} quic", tenant(t)),
                t,
                1,
            )));
            tasks.push(tokio::spawn(http_calls(gw.addr, t)));
        }
        for task in tasks {
            task.await.expect("a client failed its checks");
        }
    };
    tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the isolation run finishes within 60 s");

    // The frames really were batched together (mixed tenants in one batch).
    let metrics = gw.metrics().await;
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in /metrics"))
    };
    let (sum, count) = (
        value("framegate_batch_size_sum"),
        value("framegate_batch_size_count"),
    );
    let frames = TENANTS as f64 * (2 * STREAM_FRAMES + HTTP_FRAMES) as f64;
    assert!(sum >= frames, "{sum} frames inferred, {frames} sent");
    assert!(
        sum / count > 1.5,
        "mean batch {:.2}: batches mixed little",
        sum / count
    );
}
