//! Helpers for the metering and billing tests: tenants with keys, config
//! files, per-tenant requests and sessions, polling.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use framegate_protocol::ServerMessage;
use sha2::{Digest, Sha256};

use super::{hello, recv, send, ws_connect, Gateway, Ws};

/// Test tenants and their keys.
pub const TENANTS: [(&str, &str); 2] = [("acme", "key-acme-0001"), ("globex", "key-globex-0002")];

pub fn key_of(tenant: &str) -> &'static str {
    TENANTS.iter().find(|(t, _)| *t == tenant).unwrap().1
}

/// `[[auth.keys]]` for [`TENANTS`].
pub fn auth_keys_toml() -> String {
    TENANTS
        .iter()
        .map(|(t, k)| {
            format!(
                "[[auth.keys]]\ntenant = \"{t}\"\nsha256 = \"{}\"\n",
                hex::encode(Sha256::digest(k.as_bytes()))
            )
        })
        .collect()
}

/// `[billing]` sending to `stripe_base` for both tenants.
pub fn billing_toml(stripe_base: &str) -> String {
    format!(
        r#"
[billing]
enabled = true
api_base = "{stripe_base}"
report_interval_ms = 300
grace_secs = 1
request_timeout_ms = 1000
lease_ttl_ms = 3000

[[billing.customers]]
tenant = "acme"
customer = "cus_acme"
meter_event_name = "framegate_frames"

[[billing.customers]]
tenant = "globex"
customer = "cus_globex"
meter_event_name = "framegate_frames"
"#
    )
}

/// `[metering]` on Redis with fast flushes and 1 s windows.
pub fn redis_metering_toml(redis_url: &str) -> String {
    format!(
        r#"
[metering]
store = "redis"
redis_url = "{redis_url}"
flush_interval_ms = 100
window_secs = 1
store_timeout_ms = 500
shutdown_flush_secs = 3
"#
    )
}

pub fn write_config(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("framegate.toml");
    std::fs::write(&p, text).unwrap();
    p
}

/// POST /v1/detect as `tenant`; the status (0 when the connection failed).
pub async fn detect_as(
    client: &reqwest::Client,
    addr: std::net::SocketAddr,
    tenant: &str,
    body: Vec<u8>,
) -> u16 {
    match client
        .post(format!("http://{addr}/v1/detect"))
        .bearer_auth(key_of(tenant))
        .header("content-type", "image/jpeg")
        .body(body)
        .timeout(Duration::from_secs(30))
        .send()
        .await
    {
        Ok(r) => {
            let s = r.status().as_u16();
            let _ = r.bytes().await;
            s
        }
        Err(_) => 0,
    }
}

/// Frames of `tenant` in the store, from the gateway's `/v1/usage`.
pub async fn usage_frames(gw_addr: std::net::SocketAddr, tenant: &str) -> Option<u64> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let r = reqwest::Client::new()
        .get(format!(
            "http://{gw_addr}/v1/usage?from={}&to={}&granularity=day",
            now - 30 * 86_400,
            now + 86_400
        ))
        .bearer_auth(key_of(tenant))
        .send()
        .await
        .ok()?;
    if r.status() != 200 {
        return None;
    }
    let v: serde_json::Value = r.json().await.ok()?;
    v["frames"].as_u64()
}

/// Hello → Welcome as `tenant`.
pub async fn open_session_as(gw: &Gateway, tenant: &str) -> Ws {
    let mut ws = ws_connect(gw, None).await;
    send(&mut ws, &hello(key_of(tenant))).await;
    match recv(&mut ws).await {
        Some(ServerMessage::Welcome(_)) => ws,
        other => panic!("expected Welcome, got {other:?}"),
    }
}

/// Polls `check` until it returns true or `timeout` passes; whether it did.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
