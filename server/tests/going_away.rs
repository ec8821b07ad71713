//! Going away (docs/protocol.md, "Going away"): SIGTERM on a gateway with
//! open sessions. Frames admitted before the notice are answered and billed
//! by that gateway; later ones are refused with `going-away`; the close is
//! WebSocket 1001 / QUIC 1001 with the documented reason; the process exits
//! 0 with its usage flushed. The Rust SDK, given two gateways, continues on
//! the other one and every frame gets exactly one answer.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use framegate_client::{Answer, Client, ClientOptions, Image, SessionOptions};
use framegate_protocol::{ErrorCode, ServerMessage};
use futures_util::StreamExt;
use support::usage::*;
use support::*;
use tokio_tungstenite::tungstenite::Message;

const REASON: &str = "going-away: gateway shutting down";

/// SIGTERM in the background; (exit status, seconds it took, logs).
fn terminate_in_background(
    mut gw: Gateway,
) -> tokio::task::JoinHandle<(std::process::ExitStatus, Duration, Vec<String>)> {
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let status = gw.terminate();
        // Let the log readers catch the last lines.
        std::thread::sleep(Duration::from_millis(200));
        (status, started.elapsed(), gw.logs())
    })
}

/// Frames of `tenant` in the embedded usage store in `data_dir`, read with
/// `framegate usage` after the gateway has exited.
fn stored_frames(dir: &Path, data_dir: &Path, tenant: &str) -> u64 {
    let cfg = dir.join("usage-cli.toml");
    std::fs::write(
        &cfg,
        format!("[storage]\ndata_dir = {:?}\n", data_dir.to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_framegate"))
        .args([
            "usage",
            "--config",
            cfg.to_str().unwrap(),
            "--tenant",
            tenant,
        ])
        .output()
        .expect("run framegate usage");
    assert!(
        out.status.success(),
        "framegate usage: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["frames"].as_u64().unwrap()
}

async fn sdk_moves_to_the_other_gateway(transport: &str) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "{}\n[http]\nshutdown_timeout_secs = 15\n[metering]\nflush_interval_ms = 100\n",
            auth_keys_toml()
        ),
    );
    let (a_data, b_data) = (dir.path().join("a"), dir.path().join("b"));
    let start = |data: &Path| {
        let args = [
            "--config".to_string(),
            cfg.to_str().unwrap().to_string(),
            "--data-dir".to_string(),
            data.to_str().unwrap().to_string(),
        ];
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            Gateway::start(&args).await
        }
    };
    let a = start(&a_data).await;
    let b = start(&b_data).await;
    let url = |g: &Gateway| match transport {
        "ws" => format!("ws://{}", g.addr),
        _ => format!("{}?pin={}", g.quic_url(), g.fingerprint()),
    };
    let (a_url, b_url) = (url(&a), url(&b));
    let client = Client::connect_with(
        &a_url,
        key_of("acme"),
        ClientOptions::default().endpoints([b_url.clone()]),
    )
    .await
    .unwrap();
    let mut s = client.session(SessionOptions::default()).await.unwrap();
    assert_eq!(
        s.endpoint(),
        a_url,
        "{transport}: opens on the first gateway"
    );
    let n: u64 = 30;
    let sender = s.sender();
    let jpeg = data("dog.jpg");
    let send = tokio::spawn(async move {
        for _ in 0..n {
            sender
                .send(Image::encoded(jpeg.clone()).unwrap())
                .await
                .unwrap();
        }
    });
    let mut answers = Vec::new();
    let mut a = Some(a);
    let mut exit = None;
    while (answers.len() as u64) < n {
        let ans = tokio::time::timeout(Duration::from_secs(120), s.next())
            .await
            .expect("answers keep coming (hang guard)")
            .expect("session alive")
            .unwrap_or_else(|e| panic!("{transport}: {e}"));
        let Answer::Detections(d) = ans else {
            panic!("{transport}: expected Detections, got {ans:?}")
        };
        answers.push(d);
        if answers.len() == 6 {
            // The sender keeps the session's 8 credits busy: frames are in
            // flight both ways when gateway A is told to stop.
            exit = Some(terminate_in_background(a.take().unwrap()));
        }
    }
    send.await.unwrap();
    s.finish().await.unwrap();
    assert!(s.next().await.is_none());
    let seqs: Vec<u64> = answers.iter().map(|d| d.seq).collect();
    assert_eq!(
        seqs,
        (1..=n).collect::<Vec<_>>(),
        "{transport}: every frame exactly one answer, in order"
    );
    assert_eq!(s.failovers(), 1, "{transport}: moved once");
    assert_eq!(s.endpoint(), b_url, "{transport}: now on gateway B");

    // Each gateway's session counts its own frames from 1: the answers split
    // where the usage starts again.
    let split = answers
        .windows(2)
        .position(|w| w[1].usage.frames <= w[0].usage.frames)
        .map(|i| i + 1)
        .expect("usage restarts on gateway B");
    let (by_a, by_b) = answers.split_at(split);
    for (part, name) in [(by_a, "A"), (by_b, "B")] {
        for (i, d) in part.iter().enumerate() {
            assert_eq!(
                d.usage.frames,
                i as u64 + 1,
                "{transport}: {name} usage exact"
            );
        }
    }
    assert!(by_a.len() >= 6, "{transport}: A answered what it admitted");
    assert!(!by_b.is_empty());

    let (status, took, logs) = exit.unwrap().await.unwrap();
    assert!(status.success(), "{transport}: A exit status {status:?}");
    // A hang guard, not a speed check: the deadline is 15 s and the drain
    // finished well before it.
    assert!(took < Duration::from_secs(60), "{transport}: took {took:?}");
    assert!(
        !logs.iter().any(|l| l.contains("deadline passed")),
        "{transport}: A drained before its deadline: {logs:#?}"
    );
    // Frames answered by A are metered by A (flushed before it exited),
    // frames answered by B by B.
    assert_eq!(
        stored_frames(dir.path(), &a_data, "acme"),
        by_a.len() as u64,
        "{transport}: A's usage store"
    );
    let want = by_b.len() as u64;
    assert!(
        eventually(Duration::from_secs(30), || async {
            usage_frames(b.addr, "acme").await == Some(want)
        })
        .await,
        "{transport}: B's usage is {:?}, want {want}",
        usage_frames(b.addr, "acme").await
    );
}

#[tokio::test]
async fn sigterm_mid_stream_moves_the_sdk_session_to_another_gateway_ws_and_quic() {
    sdk_moves_to_the_other_gateway("ws").await;
    sdk_moves_to_the_other_gateway("quic").await;
}

/// What a raw client saw after SIGTERM.
#[derive(Debug, Default)]
struct Seen {
    answered: Vec<u64>,
    notice: bool,
    refused: Vec<u64>,
    close: Option<(u64, String)>,
}

fn on_message(seen: &mut Seen, m: ServerMessage) {
    match m {
        ServerMessage::Detections(d) => seen.answered.push(d.seq),
        ServerMessage::Error(e) if e.code == ErrorCode::GoingAway => {
            assert!(e.retryable, "going-away is retryable");
            match e.seq {
                None => seen.notice = true,
                Some(seq) => {
                    assert!(seen.notice, "refusals come after the notice");
                    seen.refused.push(seq);
                }
            }
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn going_away_notice_refusal_and_close_are_as_documented_ws_and_quic() {
    // The synthetic backend at 0.4 s per frame (labelled: this is about the
    // protocol, not inference) keeps answers owed for a while after SIGTERM.
    // The 8 frames queue longer than the latency budget would allow, so it
    // is off here.
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[http]\nshutdown_timeout_secs = 20\n[pipeline]\nmax_batch = 1\nworkers = 2\nmax_queue_wait_ms = 0\n\
         [synthetic]\nfixed_us = 400000\nwait = \"sleep\"\n",
    );
    let gw = Gateway::start(&["--config", cfg.to_str().unwrap(), "--backend", "synthetic"]).await;
    let jpeg = data("dog.jpg");

    // WebSocket: 4 frames; the first answer proves the rest were admitted.
    let (mut ws, _) = open_session(&gw).await;
    for seq in 1..=4 {
        send(&mut ws, &jpeg_frame(seq, &jpeg)).await;
    }
    // QUIC: the same.
    let ep = quic::endpoint(&gw);
    let conn = quic::connect(&ep, &gw).await.unwrap();
    let (mut qs, mut qr) = conn.open_bi().await.unwrap();
    quic::send(&mut qs, &hello(KEY)).await;
    assert!(matches!(
        quic::recv(&mut qr).await,
        Some(ServerMessage::Welcome(_))
    ));
    for seq in 1..=4 {
        quic::send(&mut qs, &jpeg_frame(seq, &jpeg)).await;
    }
    let mut ws_seen = Seen::default();
    let mut quic_seen = Seen::default();
    on_message(&mut ws_seen, recv(&mut ws).await.unwrap());
    on_message(&mut quic_seen, quic::recv(&mut qr).await.unwrap());
    assert_eq!((ws_seen.answered.len(), quic_seen.answered.len()), (1, 1));

    let addr = gw.addr;
    let exit = terminate_in_background(gw);

    let ws_task = async {
        loop {
            let next = tokio::time::timeout(Duration::from_secs(60), ws.next())
                .await
                .expect("hang guard");
            match next {
                Some(Ok(Message::Binary(b))) => {
                    let m = ServerMessage::decode(&b, &Default::default()).unwrap();
                    let was = ws_seen.notice;
                    on_message(&mut ws_seen, m);
                    if !was && ws_seen.notice {
                        // Sent after the notice: refused, not computed.
                        send(&mut ws, &jpeg_frame(5, &jpeg)).await;
                    }
                }
                Some(Ok(Message::Close(Some(f)))) => {
                    ws_seen.close = Some((u64::from(u16::from(f.code)), f.reason.to_string()));
                    break;
                }
                Some(Ok(_)) => continue,
                other => panic!("WebSocket ended without a close frame: {other:?}"),
            }
        }
    };
    let quic_task = async {
        while let Some(m) = quic::recv(&mut qr).await {
            let was = quic_seen.notice;
            on_message(&mut quic_seen, m);
            if !was && quic_seen.notice {
                quic::send(&mut qs, &jpeg_frame(5, &jpeg)).await;
            }
        }
        match tokio::time::timeout(Duration::from_secs(60), conn.closed())
            .await
            .expect("hang guard")
        {
            quinn::ConnectionError::ApplicationClosed(c) => {
                quic_seen.close = Some((
                    c.error_code.into_inner(),
                    String::from_utf8_lossy(&c.reason).into_owned(),
                ))
            }
            other => panic!("QUIC closed without an application close: {other:?}"),
        }
    };
    tokio::join!(ws_task, quic_task);

    for (name, seen) in [("ws", &ws_seen), ("quic", &quic_seen)] {
        assert!(seen.notice, "{name}: the notice came: {seen:?}");
        assert_eq!(
            seen.answered,
            vec![1, 2, 3, 4],
            "{name}: admitted frames answered"
        );
        assert_eq!(seen.refused, vec![5], "{name}: later frame refused");
        assert_eq!(
            seen.close,
            Some((1001, REASON.to_string())),
            "{name}: close code and reason"
        );
    }
    // …and that is what the protocol document promises.
    let doc = std::fs::read_to_string(repo_root().join("docs/protocol.md"))
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        doc.contains(&format!("the reason `{REASON}`")),
        "docs name the reason"
    );
    assert!(doc.contains("WebSocket close code **1001**"));
    assert!(doc.contains("QUIC application close code **1001** with the same reason"));
    assert!(doc.contains("| 17 | `going-away` | 503 | 1001 | yes |"));

    let (status, _, logs) = exit.await.unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        !logs.iter().any(|l| l.contains("deadline passed")),
        "drained before the deadline: {logs:#?}"
    );
    // New connections are refused once draining started (the process is
    // gone by now; while draining the listener no longer accepts).
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[tokio::test]
async fn sessions_still_owing_answers_at_the_deadline_are_closed_with_1001() {
    // 5 s per frame (synthetic, sleeping) against a 1 s deadline: the drain
    // cannot finish, so the deadline closes the session anyway.
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[http]\nshutdown_timeout_secs = 1\n[pipeline]\nmax_batch = 1\n\
         [synthetic]\nfixed_us = 5000000\nwait = \"sleep\"\n",
    );
    let gw = Gateway::start(&["--config", cfg.to_str().unwrap(), "--backend", "synthetic"]).await;
    let (mut ws, _) = open_session(&gw).await;
    send(&mut ws, &jpeg_frame(1, &data("dog.jpg"))).await;
    // Let the frame reach the session before the signal.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let exit = terminate_in_background(gw);
    match recv(&mut ws).await {
        Some(ServerMessage::Error(e)) => {
            assert_eq!((e.code, e.seq), (ErrorCode::GoingAway, None), "{e:?}")
        }
        other => panic!("expected the notice, got {other:?}"),
    }
    assert_eq!(close_code(&mut ws).await, Some(1001));
    let (status, took, logs) = exit.await.unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(
        logs.iter().any(|l| l.contains("deadline passed")),
        "the deadline closed it: {logs:#?}"
    );
    // Hang guard: the frame alone would take 5 s; the pipeline still answers
    // it before exit, but nothing waits for the client.
    assert!(took < Duration::from_secs(60), "took {took:?}");
}
