//! Exactness: sessions over WebSocket and callers over HTTP send a known
//! number of frames (some of them bad); the usage store and the Stripe test
//! server end with exactly the delivered count per tenant, and each
//! Detections carries its session's usage so far.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use framegate_protocol::ServerMessage;
use support::fake_stripe::{FakeStripe, SECRET};
use support::redis::RedisServer;
use support::usage::*;
use support::*;

const WS_SESSIONS: u64 = 4;
const WS_FRAMES: u64 = 8;
const HTTP_CALLERS: u64 = 4;
const HTTP_FRAMES: u64 = 5;
const DOG_PIXELS: u64 = 768 * 576;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ws_and_http_usage_is_exact_in_the_store_and_at_stripe() {
    let redis = RedisServer::start();
    let stripe = FakeStripe::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "{}{}{}",
            auth_keys_toml(),
            redis_metering_toml(&redis.url()),
            billing_toml(&stripe.base_url())
        ),
    );
    let gw = Gateway::start_with_env(
        &["--config", cfg.to_str().unwrap()],
        &[
            ("STRIPE_API_KEY", SECRET),
            ("FRAMEGATE_ADMIN_TOKEN", "admin-secret"),
        ],
    )
    .await;
    let dog = data("dog.jpg");

    // acme streams over WebSocket: every Detections carries the session's
    // usage so far; a corrupt frame is answered with an Error and not billed.
    let mut tasks = Vec::new();
    for s in 0..WS_SESSIONS {
        let mut ws = open_session_as(&gw, "acme").await;
        let dog = dog.clone();
        tasks.push(tokio::spawn(async move {
            let mut seq = 0;
            for i in 1..=WS_FRAMES {
                if i == 3 {
                    seq += 1;
                    send(&mut ws, &jpeg_frame(seq, b"\xff\xd8 not a jpeg")).await;
                    match recv(&mut ws).await {
                        Some(ServerMessage::Error(e)) => assert_eq!(e.seq, Some(seq)),
                        other => panic!("session {s}: expected Error, got {other:?}"),
                    }
                }
                seq += 1;
                send(&mut ws, &jpeg_frame(seq, &dog)).await;
                match recv(&mut ws).await {
                    Some(ServerMessage::Detections(d)) => {
                        assert_eq!(d.usage.frames, i, "session {s}: usage so far");
                        assert_eq!(d.usage.pixels, i * DOG_PIXELS);
                    }
                    other => panic!("session {s}: expected Detections, got {other:?}"),
                }
            }
        }));
    }
    // globex calls HTTP; an undecodable image is refused and not billed.
    for _ in 0..HTTP_CALLERS {
        let dog = dog.clone();
        let addr = gw.addr;
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for _ in 0..HTTP_FRAMES {
                assert_eq!(detect_as(&client, addr, "globex", dog.clone()).await, 200);
            }
            let refused = detect_as(&client, addr, "globex", b"\xff\xd8 broken".to_vec()).await;
            assert!((400..500).contains(&refused), "bad image: {refused}");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let expected: HashMap<&str, u64> = HashMap::from([
        ("acme", WS_SESSIONS * WS_FRAMES),
        ("globex", HTTP_CALLERS * HTTP_FRAMES),
    ]);
    let expected_stripe: HashMap<String, u64> = HashMap::from([
        ("cus_acme".to_string(), expected["acme"]),
        ("cus_globex".to_string(), expected["globex"]),
    ]);
    let done = eventually(Duration::from_secs(20), || async {
        usage_frames(gw.addr, "acme").await == Some(expected["acme"])
            && usage_frames(gw.addr, "globex").await == Some(expected["globex"])
            && stripe.totals() == expected_stripe
    })
    .await;
    assert!(
        done,
        "store acme {:?} globex {:?}, Stripe {:?}, expected {expected:?}",
        usage_frames(gw.addr, "acme").await,
        usage_frames(gw.addr, "globex").await,
        stripe.totals()
    );
    // Stays exact: no late duplicates.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(stripe.totals(), expected_stripe);
    assert_eq!(usage_frames(gw.addr, "acme").await, Some(expected["acme"]));
    let events = stripe.events();
    let mut ids: Vec<_> = events.iter().map(|e| &e.identifier).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), events.len(), "duplicate meter events");
    assert!(events.iter().all(|e| e.event_name == "framegate_frames"));

    // The usage endpoint: buckets with frames, pixels and model.
    let now = framegate::metering::unix_now();
    let v: serde_json::Value = reqwest::Client::new()
        .get(gw.url(&format!(
            "/v1/usage?from={}&to={}&granularity=hour",
            now - 7200,
            now + 3600
        )))
        .bearer_auth(key_of("acme"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["tenant"], "acme");
    let buckets = v["buckets"].as_array().unwrap();
    assert!(!buckets.is_empty() && buckets.len() <= 2, "{v}");
    assert!(buckets.iter().all(|b| b["model"] == "nanodet-g"));
    let frames: u64 = buckets.iter().map(|b| b["frames"].as_u64().unwrap()).sum();
    let pixels: u64 = buckets.iter().map(|b| b["pixels"].as_u64().unwrap()).sum();
    assert_eq!(
        (frames, pixels),
        (expected["acme"], expected["acme"] * DOG_PIXELS)
    );
    // Bad queries are refused.
    let bad = reqwest::Client::new()
        .get(gw.url("/v1/usage?from=10&to=5"))
        .bearer_auth(key_of("acme"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    // The admin view of any tenant needs the admin token.
    let admin = |token: &'static str| {
        reqwest::Client::new()
            .get(gw.admin_url(&format!(
                "/v1/admin/usage?tenant=globex&from={}&to={}",
                now - 3600,
                now + 3600
            )))
            .bearer_auth(token)
            .send()
    };
    let r = admin("admin-secret").await.unwrap();
    assert_eq!(r.status(), 200);
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["frames"].as_u64(), Some(expected["globex"]));
    // A tenant's key is not an admin credential.
    assert_eq!(admin(key_of("globex")).await.unwrap().status(), 403);
    assert_eq!(admin("not-the-token").await.unwrap().status(), 401);
    // Not on the public listener.
    let public = reqwest::Client::new()
        .get(gw.url("/v1/admin/usage?tenant=globex&from=0&to=10"))
        .bearer_auth("admin-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_runs_on_the_embedded_store() {
    // A single gateway on its embedded store with billing on: the reporter
    // shares the store the gateway opened (the file can be open once).
    let stripe = FakeStripe::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "{}\n[metering]\nstore = \"embedded\"\nflush_interval_ms = 100\nwindow_secs = 1\n{}",
            auth_keys_toml(),
            billing_toml(&stripe.base_url())
        ),
    );
    let gw = Gateway::start_with_env(
        &["--config", cfg.to_str().unwrap()],
        &[("STRIPE_API_KEY", SECRET)],
    )
    .await;
    let client = reqwest::Client::new();
    for _ in 0..3 {
        assert_eq!(
            detect_as(&client, gw.addr, "acme", data("dog.jpg")).await,
            200
        );
    }
    let expected = HashMap::from([("cus_acme".to_string(), 3)]);
    let done = eventually(Duration::from_secs(20), || async {
        stripe.totals() == expected
    })
    .await;
    assert!(done, "Stripe {:?}, expected {expected:?}", stripe.totals());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_keeps_usage_across_a_graceful_restart() {
    let data_dir = tempfile::tempdir().unwrap();
    let dir = data_dir.path().to_str().unwrap().to_string();
    let env = [("FRAMEGATE_DATA_DIR", dir.as_str())];
    let mut gw = Gateway::start_with_env(&[], &env).await;
    let dog = data("dog.jpg");
    for _ in 0..3 {
        assert_eq!(gw.detect(dog.clone(), "image/jpeg").await.status(), 200);
    }
    // SIGTERM flushes before exit (the default flush interval is 1 s, so
    // without the shutdown flush these frames would still be in memory).
    assert!(gw.terminate().success());
    assert!(data_dir.path().join("usage.redb").exists());
    let gw = Gateway::start_with_env(&[], &env).await;
    let r: serde_json::Value = reqwest::Client::new()
        .get(gw.url(&format!(
            "/v1/usage?from={}&to={}&granularity=day",
            framegate::metering::unix_now() - 86_400,
            framegate::metering::unix_now() + 86_400
        )))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["tenant"], "dev");
    assert_eq!(r["frames"].as_u64(), Some(3), "{r}");
}
