//! Revocation across nodes: three `framegate serve` processes share one
//! redis-server as their key store; a key revoked through node A's admin
//! API is refused by every node within the documented bound,
//! `[auth] cache_ttl_secs` (plus one lookup).

mod support;

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;
use support::keys::*;
use support::redis::RedisServer;
use support::usage::write_config;
use support::*;

const TTL_SECS: u64 = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_revoked_on_one_node_is_refused_on_all_within_the_cache_ttl() {
    let mut redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        &format!(
            "[auth]\nstore = \"redis\"\ncache_ttl_secs = {TTL_SECS}\n[metering]\nredis_url = \"{}\"\n",
            redis.url()
        ),
    );
    let cfg = cfg.to_str().unwrap();
    let env = [("FRAMEGATE_ADMIN_TOKEN", ADMIN_TOKEN)];
    let nodes = vec![
        Gateway::start_with_env(&["--config", cfg, "--backend", "synthetic"], &env).await,
        Gateway::start_with_env(&["--config", cfg, "--backend", "synthetic"], &env).await,
        Gateway::start_with_env(&["--config", cfg, "--backend", "synthetic"], &env).await,
    ];
    // Created on A, usable everywhere (and now cached on every node).
    let (id, key) = create_key(&nodes[0], json!({"tenant": "acme"})).await;
    let (_, other) = create_key(&nodes[1], json!({"tenant": "acme"})).await;
    for n in &nodes {
        assert_eq!(detect_with(n, &key).await.0, 200);
        assert!(ws_welcomed(n, &key).await);
    }
    // The same key list on every node.
    for n in &nodes {
        let (_, v) = admin(n, Method::GET, "/v1/admin/keys", Some(ADMIN_TOKEN), None).await;
        assert_eq!(v["keys"].as_array().unwrap().len(), 2);
    }

    let revoked_at = Instant::now();
    let (status, _) = admin(
        &nodes[0],
        Method::DELETE,
        &format!("/v1/admin/keys/{id}"),
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 200);
    // Node A forgets at once.
    assert_eq!(detect_with(&nodes[0], &key).await.0, 401);
    // The others within the TTL: poll each every 100 ms.
    let bound = Duration::from_secs(TTL_SECS) + Duration::from_millis(1000);
    let mut refused_after = Vec::new();
    for n in &nodes[1..] {
        loop {
            let (status, _) = detect_with(n, &key).await;
            if status == 401 {
                refused_after.push(revoked_at.elapsed());
                break;
            }
            assert_eq!(status, 200);
            assert!(
                revoked_at.elapsed() < bound,
                "node still accepts the revoked key after {:?}",
                revoked_at.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(!ws_welcomed(n, &key).await);
    }
    println!("revoked key refused by the other nodes after {refused_after:?} (bound {bound:?})");
    for t in &refused_after {
        assert!(*t <= bound, "{t:?} > {bound:?}");
    }
    // Other keys of the tenant still work everywhere.
    for n in &nodes {
        assert_eq!(detect_with(n, &other).await.0, 200);
    }

    // The store goes away: once the cache has expired an issued key is
    // answered 503 (retryable), never accepted unchecked; static keys (the
    // development key here) keep working with the configured limits.
    redis.kill();
    tokio::time::sleep(Duration::from_secs(TTL_SECS) + Duration::from_millis(200)).await;
    let (status, v) = detect_with(&nodes[1], &other).await;
    assert_eq!(status, 503, "{v}");
    assert_eq!(v["error"]["retryable"], true);
    assert_eq!(
        nodes[1]
            .detect(data("dog.jpg"), "image/jpeg")
            .await
            .status(),
        200
    );
}
