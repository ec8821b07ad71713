//! SIGTERM with a streaming session still open: the gateway tells the
//! session it is going away (notice, then close 1001) and exits by its
//! shutdown deadline instead of waiting for the client forever.

mod support;

use std::time::{Duration, Instant};

use framegate_protocol::{ErrorCode, ServerMessage};
use support::*;

#[tokio::test]
async fn sigterm_with_an_open_session_exits_by_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("framegate.toml");
    std::fs::write(&cfg, "[http]\nshutdown_timeout_secs = 2\n").unwrap();
    let mut gw = Gateway::start(&["--config", cfg.to_str().unwrap()]).await;
    let (mut ws, _) = open_session(&gw).await;
    send(&mut ws, &jpeg_frame(1, &data("dog.jpg"))).await;
    assert!(matches!(
        recv(&mut ws).await,
        Some(ServerMessage::Detections(_))
    ));
    // The session stays open (no Bye) while the gateway is told to stop.
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || gw.terminate())
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(status.success(), "exit status {status:?}");
    // A hang guard, not a speed check: the deadline is 2 s.
    assert!(took < Duration::from_secs(60), "took {took:?}");
    match recv(&mut ws).await {
        Some(ServerMessage::Error(e)) => {
            assert_eq!(e.code, ErrorCode::GoingAway);
            assert_eq!(e.seq, None);
        }
        other => panic!("expected the going-away notice, got {other:?}"),
    }
    assert_eq!(close_code(&mut ws).await, Some(1001));
}
