//! A tenant's budget cap reached mid-session: the next frame is refused with
//! `budget-exhausted`, new sessions and HTTP calls are refused too, and
//! usage never exceeds the cap, even with many frames in flight at once.

mod support;

use std::time::Duration;

use framegate_protocol::{ErrorCode, ServerMessage};
use support::usage::*;
use support::*;

const CAP: u64 = 5;

async fn capped_gateway(dir: &std::path::Path) -> Gateway {
    let cfg = write_config(
        dir,
        &format!(
            "{}\n[metering]\nflush_interval_ms = 100\nbudgets = {{ acme = {CAP} }}\n",
            auth_keys_toml()
        ),
    );
    Gateway::start(&["--config", cfg.to_str().unwrap()]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_frame_after_the_cap_is_refused_and_usage_stops_at_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let gw = capped_gateway(dir.path()).await;
    let dog = data("dog.jpg");
    let mut ws = open_session_as(&gw, "acme").await;
    for seq in 1..=CAP {
        send(&mut ws, &jpeg_frame(seq, &dog)).await;
        match recv(&mut ws).await {
            Some(ServerMessage::Detections(d)) => assert_eq!(d.usage.frames, seq),
            other => panic!("frame {seq}: expected Detections, got {other:?}"),
        }
    }
    // Mid-session: the next frame is refused with the specific error.
    send(&mut ws, &jpeg_frame(CAP + 1, &dog)).await;
    match recv(&mut ws).await {
        Some(ServerMessage::Error(e)) => {
            assert_eq!(e.code, ErrorCode::BudgetExhausted);
            assert_eq!(e.seq, Some(CAP + 1));
            assert!(!e.retryable);
            assert!(e.message.contains("budget exhausted"), "{}", e.message);
        }
        other => panic!("expected the budget error, got {other:?}"),
    }
    // A new session is refused at once, with close code 4002.
    let mut ws2 = ws_connect(&gw, None).await;
    send(&mut ws2, &hello(key_of("acme"))).await;
    match recv(&mut ws2).await {
        Some(ServerMessage::Error(e)) => assert_eq!(e.code, ErrorCode::BudgetExhausted),
        other => panic!("expected the budget error, got {other:?}"),
    }
    assert_eq!(close_code(&mut ws2).await, Some(4002));
    // HTTP: 402 with the same code.
    let r = reqwest::Client::new()
        .post(gw.url("/v1/detect"))
        .bearer_auth(key_of("acme"))
        .header("content-type", "image/jpeg")
        .body(dog.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 402);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "budget-exhausted");
    // Other tenants are not affected.
    let client = reqwest::Client::new();
    assert_eq!(
        detect_as(&client, gw.addr, "globex", dog.clone()).await,
        200
    );
    // The store holds exactly the cap.
    assert!(
        eventually(Duration::from_secs(10), || async {
            usage_frames(gw.addr, "acme").await == Some(CAP)
        })
        .await,
        "store: {:?}",
        usage_frames(gw.addr, "acme").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_in_flight_at_once_never_pass_the_cap() {
    let dir = tempfile::tempdir().unwrap();
    let gw = capped_gateway(dir.path()).await;
    let dog = data("dog.jpg");
    let mut ws = open_session_as(&gw, "acme").await;
    // Eight frames at once (the default credits), more than the cap: each
    // is reserved against the budget before it is queued.
    for seq in 1..=8 {
        send(&mut ws, &jpeg_frame(seq, &dog)).await;
    }
    let (mut delivered, mut refused) = (0, 0);
    for _ in 1..=8 {
        match recv(&mut ws).await {
            Some(ServerMessage::Detections(_)) => delivered += 1,
            Some(ServerMessage::Error(e)) if e.code == ErrorCode::BudgetExhausted => refused += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((delivered, refused), (CAP, 8 - CAP));
    // HTTP callers racing the same budget: nothing more gets through.
    let mut calls = Vec::new();
    for _ in 0..4 {
        let (addr, dog) = (gw.addr, dog.clone());
        calls.push(tokio::spawn(async move {
            detect_as(&reqwest::Client::new(), addr, "acme", dog).await
        }));
    }
    for c in calls {
        assert_eq!(c.await.unwrap(), 402);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(usage_frames(gw.addr, "acme").await, Some(CAP));
}
