//! Redis killed for 30 s under load, then restarted: usage waits in memory
//! and in the write-ahead file — across a graceful gateway restart in the
//! middle of the outage — and the store and Stripe end exact.
//!
//! Redis runs with an fsync-always append-only file here so that its own
//! restart keeps what it had, as a production Redis would.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::fake_stripe::{FakeStripe, SECRET};
use support::redis::RedisServer;
use support::usage::*;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_for_30_s_under_load_loses_and_doubles_nothing() {
    let mut redis = RedisServer::start_persistent();
    let stripe = FakeStripe::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let cfg = write_config(
        dir.path(),
        &format!(
            "{}{}{}",
            auth_keys_toml(),
            redis_metering_toml(&redis.url()),
            billing_toml(&stripe.base_url())
        ),
    );
    let data = data_dir.to_str().unwrap().to_string();
    let args = ["--config", cfg.to_str().unwrap()];
    let env = [
        ("STRIPE_API_KEY", SECRET),
        ("FRAMEGATE_DATA_DIR", data.as_str()),
    ];
    let mut gw = Gateway::start_with_env(&args, &env).await;
    let addr = Arc::new(Mutex::new(gw.addr));
    let delivered = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let dog = data_file();
    let mut load = Vec::new();
    for _ in 0..2 {
        let (addr, delivered, stop, dog) =
            (addr.clone(), delivered.clone(), stop.clone(), dog.clone());
        load.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                let a = *addr.lock().unwrap();
                match detect_as(&client, a, "acme", dog.clone()).await {
                    200 => {
                        delivered.fetch_add(1, Ordering::Relaxed);
                    }
                    // The gateway restarting: try again shortly.
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.kill();
    let at_kill = delivered.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let wal = data_dir.join("usage.wal");
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert!(
        wal_len > 0,
        "usage must wait in the write-ahead file during the outage"
    );
    // A graceful restart while Redis is still down: what the gateway could
    // not flush stays in the write-ahead file and is replayed later.
    assert!(gw.terminate().success());
    gw = Gateway::start_with_env(&args, &env).await;
    *addr.lock().unwrap() = gw.addr;
    tokio::time::sleep(Duration::from_secs(18)).await;
    let during = delivered.load(Ordering::Relaxed) - at_kill;
    assert!(
        during > 20,
        "the gateway kept serving during the outage ({during} frames)"
    );
    redis.restart();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let total = delivered.load(Ordering::Relaxed);
    let exact = eventually(Duration::from_secs(20), || async {
        usage_frames(gw.addr, "acme").await == Some(total)
            && stripe.totals().get("cus_acme") == Some(&total)
    })
    .await;
    assert!(
        exact,
        "delivered {total}, store {:?}, Stripe {:?}",
        usage_frames(gw.addr, "acme").await,
        stripe.totals()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(usage_frames(gw.addr, "acme").await, Some(total));
    assert_eq!(stripe.totals().get("cus_acme"), Some(&total));
    eprintln!("delivered {total} frames, {during} of them while Redis was down");
}

fn data_file() -> Vec<u8> {
    data("dog.jpg")
}

/// SIGKILL while the store is down: everything already in the write-ahead
/// file is replayed after the restart; the loss is at most what the gateway
/// answered in its last flush interval before the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_loses_at_most_the_last_flush_interval() {
    const FLUSH_MS: u64 = 100;
    let mut redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let cfg = write_config(
        dir.path(),
        &format!("{}{}", auth_keys_toml(), redis_metering_toml(&redis.url())),
    );
    let data = data_dir.to_str().unwrap().to_string();
    let args = ["--config", cfg.to_str().unwrap()];
    let env = [("FRAMEGATE_DATA_DIR", data.as_str())];
    let mut gw = Gateway::start_with_env(&args, &env).await;
    // The store is gone before any usage: whatever reaches it later comes
    // from the write-ahead file.
    redis.kill();
    let answered: Arc<Mutex<Vec<std::time::Instant>>> = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for _ in 0..2 {
        let (addr, answered, stop, dog) = (gw.addr, answered.clone(), stop.clone(), data_file());
        load.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !stop.load(Ordering::Relaxed) {
                if detect_as(&client, addr, "acme", dog.clone()).await == 200 {
                    answered.lock().unwrap().push(std::time::Instant::now());
                } else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    gw.kill();
    let killed_at = std::time::Instant::now();
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let answered = answered.lock().unwrap().clone();
    let delivered = answered.len() as u64;
    let bound = answered
        .iter()
        .filter(|&&at| killed_at.duration_since(at) <= Duration::from_millis(2 * FLUSH_MS + 500))
        .count() as u64;
    assert!(std::fs::metadata(data_dir.join("usage.wal")).unwrap().len() > 0);
    redis.restart();
    let gw = Gateway::start_with_env(&args, &env).await;
    let end = std::time::Instant::now() + Duration::from_secs(10);
    let mut stored = 0;
    while std::time::Instant::now() < end {
        stored = usage_frames(gw.addr, "acme").await.unwrap_or(0);
        if stored + bound >= delivered {
            // Give a replay that is still running the chance to over-count.
            tokio::time::sleep(Duration::from_millis(500)).await;
            stored = usage_frames(gw.addr, "acme").await.unwrap_or(0);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("delivered {delivered}, stored after replay {stored}, bound {bound}");
    assert!(
        delivered >= 20,
        "load too small to mean anything ({delivered})"
    );
    assert!(
        stored <= delivered + 1,
        "over-counted: {stored} > {delivered}"
    );
    assert!(
        delivered - stored.min(delivered) <= bound,
        "lost {} frames, more than the {bound} answered in the last flush interval",
        delivered - stored.min(delivered)
    );
}
