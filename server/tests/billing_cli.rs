//! `framegate billing preview`, `framegate billing report --once` and
//! `framegate usage`, as an operator runs them, against a real Redis and the
//! Stripe test server.

mod support;

use std::process::Command;
use std::time::Duration;

use framegate::metering::{unix_now, UsageDelta};
use framegate::usage::redis::RedisStore;
use framegate::usage::{FlushBatch, UsageStore};
use support::fake_stripe::{FakeStripe, SECRET};
use support::redis::RedisServer;
use support::usage::*;

async fn framegate(args: Vec<String>) -> (bool, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_framegate"))
            .args(&args)
            .env("STRIPE_API_KEY", SECRET)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preview_then_report_once_then_nothing_left() {
    let redis = RedisServer::start();
    let stripe = FakeStripe::start().await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "{}{}",
            redis_metering_toml(&redis.url()),
            billing_toml(&stripe.base_url())
        ),
    );
    let cfg = cfg.to_str().unwrap().to_string();
    let store =
        UsageStore::Redis(RedisStore::connect(&redis.url(), Duration::from_secs(2)).unwrap());
    let now = unix_now();
    let window = now - 120;
    store
        .apply(&FlushBatch {
            id: "cli-1".into(),
            deltas: vec![UsageDelta {
                tenant: "acme".into(),
                key_id: "k".into(),
                model: "nanodet-g".into(),
                window_start: window,
                frames: 42,
                pixels: 4200,
            }],
        })
        .await
        .unwrap();
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();

    let (ok, out, err) = framegate(s(&[
        "billing", "preview", "--tenant", "acme", "--config", &cfg,
    ]))
    .await;
    assert!(ok, "{err}");
    let lines: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(lines[0]["to_send"], 42, "{out}");
    assert_eq!(lines[0]["customer"], "cus_acme");
    assert_eq!(lines[0]["closed"], true);

    let (ok, out, err) = framegate(s(&["billing", "report", "--once", "--config", &cfg])).await;
    assert!(ok, "{err}");
    assert!(out.contains("reported 1 events, 42 frames"), "{out}");
    assert_eq!(stripe.totals().get("cus_acme"), Some(&42));
    assert!(
        !err.contains(SECRET) && !out.contains(SECRET),
        "the key leaked"
    );

    let (ok, out, _) = framegate(s(&[
        "billing", "preview", "--tenant", "acme", "--config", &cfg,
    ]))
    .await;
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        serde_json::json!([])
    );
    let (ok, out, _) = framegate(s(&["billing", "report", "--once", "--config", &cfg])).await;
    assert!(ok && out.contains("reported 0 events"), "{out}");
    assert_eq!(stripe.events().len(), 1);

    let (ok, out, err) = framegate(s(&[
        "usage",
        "--tenant",
        "acme",
        "--config",
        &cfg,
        "--from",
        &(now - 3600).to_string(),
        "--granularity",
        "day",
    ]))
    .await;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["frames"], 42, "{out}");

    // Without a key, reporting says which variable to set.
    let out = Command::new(env!("CARGO_BIN_EXE_framegate"))
        .args(["billing", "report", "--once", "--config", &cfg])
        .env_remove("STRIPE_API_KEY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("STRIPE_API_KEY"));
}
