//! Helpers for the API key tests: the admin API and a key's use on every
//! transport.

use framegate_protocol::ServerMessage;
use serde_json::Value;

use super::*;

pub const ADMIN_TOKEN: &str = "admin-token-7c1e9a44b2";

/// Calls the admin API; (status, JSON body or Null).
pub async fn admin(
    gw: &Gateway,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, gw.admin_url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("admin request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Creates a key with the admin token; (id, key).
pub async fn create_key(gw: &Gateway, body: Value) -> (String, String) {
    let (status, v) = admin(
        gw,
        reqwest::Method::POST,
        "/v1/admin/keys",
        Some(ADMIN_TOKEN),
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    (
        v["id"].as_str().unwrap().to_string(),
        v["key"].as_str().unwrap().to_string(),
    )
}

/// POST /v1/detect with `key`; (status, body).
pub async fn detect_with(gw: &Gateway, key: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(gw.url("/v1/detect"))
        .bearer_auth(key)
        .header("content-type", "image/jpeg")
        .body(data("dog.jpg"))
        .send()
        .await
        .expect("detect");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// A GET on the public listener with `key`; (status, body).
pub async fn get_with(gw: &Gateway, path: &str, key: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(gw.url(path))
        .bearer_auth(key)
        .send()
        .await
        .expect("get");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// WebSocket Hello with `key` (and `model`); the first answer.
pub async fn ws_hello_with(gw: &Gateway, key: &str, model: &str) -> Option<ServerMessage> {
    let mut ws = ws_connect(gw, None).await;
    let mut h = hello(key);
    if let framegate_protocol::ClientMessage::Hello(h) = &mut h {
        h.model = model.to_string();
    }
    send(&mut ws, &h).await;
    recv(&mut ws).await
}

/// Whether a WebSocket session with `key` is welcomed.
pub async fn ws_welcomed(gw: &Gateway, key: &str) -> bool {
    matches!(
        ws_hello_with(gw, key, "").await,
        Some(ServerMessage::Welcome(_))
    )
}
