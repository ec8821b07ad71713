//! Rate limits on one gateway: a stream over its frames/s gets
//! `Dropped{rate-limited}` for the excess and stays open, and only admitted
//! frames are metered; one-shot detect over `detect_per_minute` gets 429 with
//! `Retry-After`; a session over `max_sessions` is refused at Hello.

mod support;

use std::time::{Duration, Instant};

use framegate_protocol::{DropReason, ErrorCode, ServerMessage};
use support::usage::{eventually, write_config};
use support::*;

const CONFIG: &str = r#"
[backend]
kind = "synthetic"

[synthetic]
fixed_us = 200
wait = "sleep"

[session]
credits = 64

[metering]
flush_interval_ms = 100

[plans.default]
frames_per_sec = 10.0
burst = 5
max_sessions = 1
detect_per_minute = 6
"#;

async fn gateway() -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), CONFIG);
    let gw = Gateway::start(&["--config", cfg.to_str().unwrap()]).await;
    (gw, dir)
}

async fn usage_frames(gw: &Gateway) -> Option<u64> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let r = reqwest::Client::new()
        .get(gw.url(&format!(
            "/v1/usage?from={}&to={}&granularity=day",
            now - 86_400,
            now + 86_400
        )))
        .bearer_auth(KEY)
        .send()
        .await
        .ok()?;
    let v: serde_json::Value = r.json().await.ok()?;
    v["frames"].as_u64()
}

async fn metric(gw: &Gateway, line_prefix: &str) -> u64 {
    let text = gw.metrics().await;
    text.lines()
        .filter(|l| l.starts_with(line_prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test]
async fn a_stream_over_its_rate_gets_dropped_frames_stays_open_and_is_billed_only_for_admitted() {
    let (gw, _dir) = gateway().await;
    let dog = data("dog.jpg");
    let (mut ws, _) = open_session(&gw).await;

    // 30 frames at once: the burst (5) and what the rate adds meanwhile
    // pass; the rest are dropped as rate-limited, not computed.
    let started = Instant::now();
    for seq in 1..=30 {
        send(&mut ws, &jpeg_frame(seq, &dog)).await;
    }
    let (mut answered, mut limited) = (Vec::new(), Vec::new());
    while answered.len() + limited.len() < 30 {
        match recv(&mut ws).await {
            Some(ServerMessage::Detections(d)) => answered.push(d.seq),
            Some(ServerMessage::Dropped(d)) => {
                assert_eq!(d.reason, DropReason::RateLimited, "{d:?}");
                assert!(d.message.contains("frames/s"), "{}", d.message);
                // The next free slot, at 10 frames/s at most one
                // emission interval away.
                let after = d.retry_after_ms.expect("a retry hint");
                assert!((1..=100).contains(&after), "{d:?}");
                limited.extend(d.seqs);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let bound = 5 + (10.0 * elapsed).ceil() as usize;
    assert!(
        (5..=bound).contains(&answered.len()),
        "{} admitted in {elapsed:.2} s (bound {bound}); limited {limited:?}",
        answered.len()
    );
    assert_eq!(
        &answered[..5],
        &[1, 2, 3, 4, 5],
        "the burst is the first frames"
    );
    assert_eq!(
        answered.len() + limited.len(),
        30,
        "every frame answered once"
    );

    // The session stays open: after a pause, a frame is computed again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    send(&mut ws, &jpeg_frame(31, &dog)).await;
    match recv(&mut ws).await {
        Some(ServerMessage::Detections(d)) => assert_eq!(d.seq, 31),
        other => panic!("expected Detections for 31, got {other:?}"),
    }
    let admitted = answered.len() as u64 + 1;

    // Usage counts only what was computed and delivered.
    let billed = eventually(Duration::from_secs(10), || async {
        usage_frames(&gw).await == Some(admitted)
    })
    .await;
    assert!(
        billed,
        "usage {:?}, admitted {admitted}",
        usage_frames(&gw).await
    );
    assert_eq!(
        metric(
            &gw,
            "framegate_rate_limited_frames_total{transport=\"ws\",limit=\"frames\"}"
        )
        .await,
        limited.len() as u64
    );
    assert_eq!(
        metric(
            &gw,
            "framegate_frames_dropped_total{transport=\"ws\",reason=\"rate-limited\"}"
        )
        .await,
        limited.len() as u64
    );
}

#[tokio::test]
async fn detect_over_its_limit_gets_429_with_retry_after() {
    let (gw, _dir) = gateway().await;
    let dog = data("dog.jpg");
    let first = gw.detect(dog.clone(), "image/jpeg").await;
    assert_eq!(first.status(), 200);
    // 6 per minute with a burst of 1: the next one in 10 s.
    let second = gw.detect(dog.clone(), "image/jpeg").await;
    assert_eq!(second.status(), 429);
    let retry: u64 = second.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((9..=10).contains(&retry), "Retry-After {retry}");
    let body: serde_json::Value = second.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate-limited", "{body}");
    assert_eq!(body["error"]["retryable"], true);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("per minute"),
        "{body}"
    );
    assert_eq!(
        metric(
            &gw,
            "framegate_rate_limited_frames_total{transport=\"http\",limit=\"detect\"}"
        )
        .await,
        1
    );
    // Refused before inference: one frame billed.
    assert!(
        eventually(Duration::from_secs(10), || async {
            usage_frames(&gw).await == Some(1)
        })
        .await
    );
    // The gateway keeps serving the other limits: a stream still works.
    let (mut ws, _) = open_session(&gw).await;
    send(&mut ws, &jpeg_frame(1, &dog)).await;
    assert!(matches!(
        recv(&mut ws).await,
        Some(ServerMessage::Detections(_))
    ));
}

#[tokio::test]
async fn a_session_over_max_sessions_is_refused_at_hello() {
    let (gw, _dir) = gateway().await;
    let (mut first, _) = open_session(&gw).await;

    let mut ws = ws_connect(&gw, None).await;
    send(&mut ws, &hello(KEY)).await;
    match recv(&mut ws).await {
        Some(ServerMessage::Error(e)) => {
            assert_eq!(e.code, ErrorCode::RateLimited, "{e:?}");
            assert!(e.retryable);
            assert!(e.seq.is_none());
            assert_eq!(e.retry_after_ms, Some(1000), "{e:?}");
            assert!(
                e.message.contains("maximum of 1 streaming sessions"),
                "{}",
                e.message
            );
        }
        other => panic!("expected Error, got {other:?}"),
    }
    assert_eq!(close_code(&mut ws).await, Some(1013));
    assert_eq!(
        metric(
            &gw,
            "framegate_rate_limited_frames_total{transport=\"ws\",limit=\"sessions\"}"
        )
        .await,
        1
    );
    // The SDK hands the gateway's retry hint on.
    let sdk = framegate_client::Client::connect(&format!("ws://{}", gw.addr), KEY)
        .await
        .unwrap();
    match sdk
        .session(framegate_client::SessionOptions::default())
        .await
    {
        Err(e @ framegate_client::ClientError::Gateway { .. }) => {
            assert!(e.is_retryable(), "{e:?}");
            assert_eq!(e.retry_after(), Some(Duration::from_secs(1)), "{e:?}");
        }
        other => panic!("expected the session cap's refusal, got {other:?}"),
    }

    // The first session is unaffected; once it ends, a new one opens.
    send(&mut first, &jpeg_frame(1, &data("dog.jpg"))).await;
    assert!(matches!(
        recv(&mut first).await,
        Some(ServerMessage::Detections(_))
    ));
    send(
        &mut first,
        &framegate_protocol::ClientMessage::Bye(framegate_protocol::Bye {
            reason: "done".into(),
        }),
    )
    .await;
    let _ = close_code(&mut first).await;
    let reopened = eventually(Duration::from_secs(5), || async {
        let mut ws = ws_connect(&gw, None).await;
        send(&mut ws, &hello(KEY)).await;
        matches!(recv(&mut ws).await, Some(ServerMessage::Welcome(_)))
    })
    .await;
    assert!(reopened, "the slot is freed when the session ends");
}
