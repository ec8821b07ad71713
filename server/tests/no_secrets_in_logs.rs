//! Keys never appear in logs, whatever the log level and whatever the
//! caller does with them (right key, wrong key, key in Hello).

mod support;

use std::time::Duration;

use framegate_protocol::ServerMessage;
use serde_json::json;
use support::keys::*;
use support::*;

#[tokio::test]
async fn keys_never_reach_the_logs() {
    const WRONG: &str = "wrong-key-4f1d2c9a8b7e";
    for (level, format) in [("debug", "text"), ("trace", "json")] {
        let gw = Gateway::start_with_env(
            &["--log-format", format],
            &[("RUST_LOG", level), ("FRAMEGATE_ADMIN_TOKEN", ADMIN_TOKEN)],
        )
        .await;
        // Issued keys: created through the admin API and self-service, used
        // on every transport, revoked, then presented again.
        admin(
            &gw,
            reqwest::Method::PUT,
            "/v1/admin/plans/team",
            Some(ADMIN_TOKEN),
            Some(json!({"max_keys": 5})),
        )
        .await;
        admin(
            &gw,
            reqwest::Method::PUT,
            "/v1/admin/tenants/acme",
            Some(ADMIN_TOKEN),
            Some(json!({"plan": "team"})),
        )
        .await;
        let (id, issued) = create_key(&gw, json!({"tenant": "acme"})).await;
        assert_eq!(detect_with(&gw, &issued).await.0, 200);
        assert!(ws_welcomed(&gw, &issued).await);
        let r = reqwest::Client::new()
            .post(gw.url("/v1/keys"))
            .bearer_auth(&issued)
            .json(&json!({"name": "self"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let own: serde_json::Value = r.json().await.unwrap();
        let own = own["key"].as_str().unwrap().to_string();
        assert_eq!(detect_with(&gw, &own).await.0, 200);
        admin(
            &gw,
            reqwest::Method::DELETE,
            &format!("/v1/admin/keys/{id}"),
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
        assert_eq!(detect_with(&gw, &issued).await.0, 401);
        assert!(!ws_welcomed(&gw, &issued).await);
        let secrets = [
            issued.clone(),
            issued[16..].to_string(),
            own.clone(),
            own[16..].to_string(),
            ADMIN_TOKEN.to_string(),
        ];
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
            for secret in &secrets {
                assert!(
                    !line.contains(secret.as_str()),
                    "an issued key or the admin token leaked at {level}: {line}"
                );
            }
            assert!(!line.contains(KEY), "the key leaked at {level}: {line}");
            assert!(
                !line.contains(WRONG),
                "a presented key leaked at {level}: {line}"
            );
        }
    }
}
