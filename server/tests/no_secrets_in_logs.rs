//! Keys never appear in logs, whatever the log level and whatever the
//! caller does with them (right key, wrong key, key in Hello).

mod support;

use std::time::Duration;

use framegate_protocol::ServerMessage;
use support::*;

#[tokio::test]
async fn keys_never_reach_the_logs() {
    const WRONG: &str = "wrong-key-4f1d2c9a8b7e";
    for (level, format) in [("debug", "text"), ("trace", "json")] {
        let gw = Gateway::start_with_env(&["--log-format", format], &[("RUST_LOG", level)]).await;
        assert_eq!(gw.detect(data("dog.jpg"), "image/jpeg").await.status(), 200);
        let resp = reqwest::Client::new()
            .post(gw.url("/v1/detect"))
            .bearer_auth(WRONG)
            .body(data("dog.jpg"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        let (mut ws, _) = open_session(&gw).await;
        send(&mut ws, &jpeg_frame(1, &data("dog.jpg"))).await;
        assert!(matches!(
            recv(&mut ws).await,
            Some(ServerMessage::Detections(_))
        ));
        let mut bad = ws_connect(&gw, None).await;
        send(&mut bad, &hello(WRONG)).await;
        assert!(matches!(
            recv(&mut bad).await,
            Some(ServerMessage::Error(_))
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let logs = gw.logs();
        assert!(
            logs.len() > 10,
            "expected a {level} log, got {} lines",
            logs.len()
        );
        for line in logs {
            assert!(!line.contains(KEY), "the key leaked at {level}: {line}");
            assert!(
                !line.contains(WRONG),
                "a presented key leaked at {level}: {line}"
            );
        }
    }
}
