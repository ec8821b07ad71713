//! Three gateways share one Redis and report to one Stripe. Under load each
//! is stopped and restarted once — SIGTERM for two, SIGKILL for one. Totals
//! are exact except for the documented SIGKILL bound (what the killed
//! gateway delivered in its last flush interval), Stripe matches the store
//! exactly, and only one reporter reports at a time.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::fake_stripe::{FakeStripe, SECRET};
use support::redis::RedisServer;
use support::usage::*;
use support::*;

const FLUSH_MS: u64 = 100;

/// An answered request: (gateway, tenant, when).
type Answer = (usize, &'static str, Instant);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_gateways_each_restarted_once_bill_exactly() {
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
    let cfg = cfg.to_str().unwrap().to_string();
    let data_dirs: Vec<String> = (0..3)
        .map(|i| {
            dir.path()
                .join(format!("gw{i}"))
                .to_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let start = |i: usize| {
        let (cfg, data) = (cfg.clone(), data_dirs[i].clone());
        async move {
            Gateway::start_with_env(
                &["--config", &cfg, "--workers", "1"],
                &[("STRIPE_API_KEY", SECRET), ("FRAMEGATE_DATA_DIR", &data)],
            )
            .await
        }
    };
    let mut gws = [start(0).await, start(1).await, start(2).await];
    let addrs: Arc<Vec<Mutex<std::net::SocketAddr>>> =
        Arc::new(gws.iter().map(|g| Mutex::new(g.addr)).collect());
    // Every answered request: (gateway, tenant, when).
    let answered: Arc<Mutex<Vec<Answer>>> = Default::default();
    let stop = Arc::new(AtomicBool::new(false));
    let dog = data("dog.jpg");
    let mut load = Vec::new();
    for i in 0..3 {
        for tenant in ["acme", "globex"] {
            let (addrs, answered, stop, dog) =
                (addrs.clone(), answered.clone(), stop.clone(), dog.clone());
            load.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    let a = *addrs[i].lock().unwrap();
                    if detect_as(&client, a, tenant, dog.clone()).await == 200 {
                        answered.lock().unwrap().push((i, tenant, Instant::now()));
                    } else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }));
        }
    }
    let mut killed_at = None;
    for (i, how) in [(0, "TERM"), (1, "TERM"), (2, "KILL")] {
        tokio::time::sleep(Duration::from_secs(3)).await;
        if how == "TERM" {
            assert!(
                gws[i].terminate().success(),
                "gateway {i} exits cleanly on SIGTERM"
            );
        } else {
            gws[i].kill();
            killed_at = Some(Instant::now());
        }
        gws[i] = start(i).await;
        *addrs[i].lock().unwrap() = gws[i].addr;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.unwrap();
    }
    let answered = answered.lock().unwrap().clone();
    let killed_at = killed_at.unwrap();
    let mut delivered: HashMap<&str, u64> = HashMap::new();
    // The SIGKILL bound: frames the killed gateway answered in its last
    // flush interval (plus scheduling slack) may be lost.
    let mut bound: HashMap<&str, u64> = HashMap::new();
    let window = Duration::from_millis(2 * FLUSH_MS + 500);
    for (gw, tenant, at) in &answered {
        *delivered.entry(tenant).or_default() += 1;
        if *gw == 2 && *at <= killed_at && killed_at.duration_since(*at) <= window {
            *bound.entry(tenant).or_default() += 1;
        }
    }
    // Wait until Stripe has what the store has (both stable).
    let a = gws[0].addr;
    let settled = eventually(Duration::from_secs(20), || async {
        let s_acme = usage_frames(a, "acme").await;
        let s_globex = usage_frames(a, "globex").await;
        let t = stripe.totals();
        s_acme.is_some()
            && s_acme == t.get("cus_acme").copied()
            && s_globex == t.get("cus_globex").copied()
    })
    .await;
    let totals = stripe.totals();
    assert!(settled, "Stripe {totals:?} never matched the store");
    for tenant in ["acme", "globex"] {
        let stored = usage_frames(a, tenant).await.unwrap();
        let d = delivered[tenant];
        let b = bound.get(tenant).copied().unwrap_or(0);
        eprintln!("{tenant}: delivered {d}, stored {stored}, SIGKILL bound {b}");
        assert!(
            stored <= d + 1,
            "{tenant}: stored {stored} > delivered {d} (+1 in flight at the kill)"
        );
        assert!(
            d - stored.min(d) <= b,
            "{tenant}: lost {} > bound {b}",
            d - stored.min(d)
        );
    }
    // One reporter at a time: the reporter named in each request's
    // User-Agent changes only at hand-overs (a stop or a kill of the
    // holder), never back and forth as two concurrent reporters would.
    let mut events = stripe.events();
    events.sort_by_key(|e| e.received_ms);
    let holders: Vec<&str> = events
        .iter()
        .map(|e| e.user_agent.split("reporter=").nth(1).unwrap_or("?"))
        .collect();
    let switches = holders.windows(2).filter(|w| w[0] != w[1]).count();
    let distinct: std::collections::HashSet<_> = holders.iter().collect();
    eprintln!(
        "{} events from {} reporters, {switches} hand-overs",
        events.len(),
        distinct.len()
    );
    assert!(switches <= 3, "reporters alternated: {holders:?}");
    let mut ids: Vec<_> = events.iter().map(|e| &e.identifier).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), events.len(), "duplicate meter events");
}
