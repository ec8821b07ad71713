//! API keys end to end: the admin API and the CLI issue, scope, expire and
//! revoke keys that a real gateway then accepts or refuses on every
//! transport; the admin listener is separate and needs its token.

mod support;

use std::process::Command;
use std::time::Duration;

use framegate_protocol::{ErrorCode, ServerMessage};
use reqwest::Method;
use serde_json::json;
use support::keys::*;
use support::*;

async fn gateway() -> Gateway {
    Gateway::start_with_env(&[], &[("FRAMEGATE_ADMIN_TOKEN", ADMIN_TOKEN)]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_issues_keys_that_work_until_revoked_or_expired() {
    let gw = gateway().await;
    let (id, key) = create_key(&gw, json!({"tenant": "acme", "name": "ci"})).await;
    assert!(key.starts_with(&format!("fg_{id}_")) && key.len() == 3 + 12 + 1 + 48);
    assert_eq!(detect_with(&gw, &key).await.0, 200);
    assert!(ws_welcomed(&gw, &key).await);
    let (status, me) = get_with(&gw, "/v1/me", &key).await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(
        (me["tenant"].as_str(), me["key_id"].as_str()),
        (Some("acme"), Some(id.as_str()))
    );

    // Listing and reading never shows the secret or its hash.
    let (status, list) = admin(
        &gw,
        Method::GET,
        "/v1/admin/keys?tenant=acme",
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(list["keys"].as_array().unwrap().len(), 1);
    let text = list.to_string();
    assert!(
        !text.contains(&key[16..]) && !text.contains("sha256"),
        "{text}"
    );
    let (status, one) = admin(
        &gw,
        Method::GET,
        &format!("/v1/admin/keys/{id}"),
        Some(ADMIN_TOKEN),
        None,
    )
    .await;
    assert_eq!((status, one["name"].as_str()), (200, Some("ci")));

    // Revoked: refused at once on this gateway, like an unknown key.
    let (status, v) = revoke_as_admin(&gw, &id).await;
    assert_eq!(status, 200, "{v}");
    assert!(v["revoked_at"].as_u64().is_some());
    let (status, body) = detect_with(&gw, &key).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    match ws_hello_with(&gw, &key, "").await {
        Some(ServerMessage::Error(e)) => assert_eq!(e.code, ErrorCode::Unauthorized),
        other => panic!("expected Error, got {other:?}"),
    }
    let (status, _) = revoke_as_admin(&gw, "aaaaaaaaaaaa").await;
    assert_eq!(status, 404);

    // Expiry.
    let (_, short) = create_key(&gw, json!({"tenant": "acme", "expires_in_secs": 2})).await;
    assert_eq!(detect_with(&gw, &short).await.0, 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(detect_with(&gw, &short).await.0, 401);
    assert!(!ws_welcomed(&gw, &short).await);

    // A made-up key of the right shape costs one store lookup per cache
    // TTL, however often it is tried (the negative cache).
    let ghost = format!("fg_{}_{}", "q".repeat(12), "7".repeat(48));
    for _ in 0..5 {
        assert_eq!(detect_with(&gw, &ghost).await.0, 401);
    }
    let metrics = gw.metrics().await;
    let unknown = metrics
        .lines()
        .find(|l| l.starts_with("framegate_auth_key_lookups_total{result=\"unknown\"}"))
        .and_then(|l| l.split_whitespace().last())
        .expect("the lookup counter");
    // Every other lookup above found its key; only the ghost was unknown.
    assert_eq!(unknown, "1", "{metrics}");

    // Bad requests get clear JSON errors.
    let (status, v) = admin(
        &gw,
        Method::POST,
        "/v1/admin/keys",
        Some(ADMIN_TOKEN),
        Some(json!({"tenant": "acme", "scopes": ["fly"]})),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("fly"),
        "{v}"
    );
    // A budget is the tenant's, not a key's.
    let (status, v) = admin(
        &gw,
        Method::POST,
        "/v1/admin/keys",
        Some(ADMIN_TOKEN),
        Some(json!({"tenant": "acme", "limits": {"budget_frames": 10}})),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limits.budget_frames"),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_and_model_lists_are_enforced() {
    let gw = gateway().await;
    // A detect-only key: no streams, no usage.
    let (_, detect_only) = create_key(&gw, json!({"tenant": "acme", "scopes": ["detect"]})).await;
    assert_eq!(detect_with(&gw, &detect_only).await.0, 200);
    match ws_hello_with(&gw, &detect_only, "").await {
        Some(ServerMessage::Error(e)) => {
            assert_eq!(e.code, ErrorCode::Forbidden);
            assert!(e.message.contains("\"stream\" scope"), "{}", e.message);
        }
        other => panic!("expected Error, got {other:?}"),
    }
    let (status, v) = get_with(&gw, "/v1/usage?from=0&to=10", &detect_only).await;
    assert_eq!(status, 403, "{v}");
    assert_eq!(get_with(&gw, "/v1/me", &detect_only).await.0, 403);
    // QUIC too.
    let ep = quic::endpoint(&gw);
    let conn = quic::connect(&ep, &gw).await.unwrap();
    let (mut s, mut r) = conn.open_bi().await.unwrap();
    quic::send(&mut s, &hello(&detect_only)).await;
    match quic::recv(&mut r).await {
        Some(ServerMessage::Error(e)) => assert_eq!(e.code, ErrorCode::Forbidden),
        other => panic!("expected Error over QUIC, got {other:?}"),
    }
    // A stream-only key: no one-shot detect.
    let (_, stream_only) = create_key(&gw, json!({"tenant": "acme", "scopes": ["stream"]})).await;
    let (status, v) = detect_with(&gw, &stream_only).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    assert!(ws_welcomed(&gw, &stream_only).await);
    // A non-admin key is refused by the admin API (403), no credential 401.
    let (status, _) = admin(&gw, Method::GET, "/v1/admin/keys", Some(&stream_only), None).await;
    assert_eq!(status, 403);
    // An admin-scope key works there.
    let (_, ops) = create_key(&gw, json!({"tenant": "ops", "scopes": ["admin"]})).await;
    assert_eq!(
        admin(&gw, Method::GET, "/v1/admin/plans", Some(&ops), None)
            .await
            .0,
        200
    );

    // A plan with a model list: other models are refused with a clear message.
    let (status, v) = admin(
        &gw,
        Method::PUT,
        "/v1/admin/plans/narrow",
        Some(ADMIN_TOKEN),
        Some(json!({"models": ["some-other-model"]})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = admin(
        &gw,
        Method::PUT,
        "/v1/admin/tenants/limited",
        Some(ADMIN_TOKEN),
        Some(json!({"plan": "narrow"})),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (status, _) = admin(
        &gw,
        Method::PUT,
        "/v1/admin/tenants/x",
        Some(ADMIN_TOKEN),
        Some(json!({"plan": "missing"})),
    )
    .await;
    assert_eq!(status, 400);
    let (_, limited) = create_key(&gw, json!({"tenant": "limited"})).await;
    // /v1/models lists only the models the key may use: none here.
    let (status, v) = get_with(&gw, "/v1/models", &limited).await;
    assert_eq!(
        (status, v["models"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{v}"
    );
    assert_eq!(v["default"], serde_json::Value::Null, "{v}");
    let (status, v) = detect_with(&gw, &limited).await;
    assert_eq!(status, 403, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nanodet-g"),
        "{v}"
    );
    match ws_hello_with(&gw, &limited, "").await {
        Some(ServerMessage::Error(e)) => {
            assert_eq!(e.code, ErrorCode::Forbidden);
            assert!(
                e.message.contains("not in tenant \"limited\"'s plan"),
                "{}",
                e.message
            );
        }
        other => panic!("expected Error, got {other:?}"),
    }
    // Allowing the model lets it through.
    admin(
        &gw,
        Method::PUT,
        "/v1/admin/plans/narrow",
        Some(ADMIN_TOKEN),
        Some(json!({"models": ["nanodet-g"]})),
    )
    .await;
    assert_eq!(detect_with(&gw, &limited).await.0, 200);
    let (_, v) = get_with(&gw, "/v1/models", &limited).await;
    assert_eq!(v["models"][0]["name"], "nanodet-g", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_needs_its_token_and_is_not_public() {
    let gw = gateway().await;
    let admin_addr = gw.admin.expect("admin listener on");
    assert_ne!(admin_addr.port(), gw.addr.port());
    for token in [None, Some("wrong-token"), Some("")] {
        let (status, v) = admin(&gw, Method::GET, "/v1/admin/keys", token, None).await;
        assert_eq!(status, 401, "{token:?}: {v}");
        assert_eq!(v["error"]["code"], "unauthorized");
    }
    // A valid key without the admin scope: 403.
    let (status, v) = admin(&gw, Method::GET, "/v1/admin/keys", Some(KEY), None).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    let (status, _) = admin(
        &gw,
        Method::POST,
        "/v1/admin/keys",
        None,
        Some(json!({"tenant": "acme"})),
    )
    .await;
    assert_eq!(status, 401);
    // The public port has no admin API, even with the token.
    for path in ["/v1/admin/keys", "/v1/admin/usage?tenant=dev&from=0&to=10"] {
        let r = reqwest::Client::new()
            .get(gw.url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
    }
    // Without any admin credential the listener stays off, and says why.
    let off = Gateway::start(&[]).await;
    assert!(off.admin.is_none());
    assert!(off
        .logs()
        .iter()
        .any(|l| l.contains("admin API off") && l.contains("FRAMEGATE_ADMIN_TOKEN")));
    // The admin port may not be the public one.
    let out = Command::new(env!("CARGO_BIN_EXE_framegate"))
        .args([
            "serve",
            "--http-listen",
            "127.0.0.1:18080",
            "--admin-listen",
            "127.0.0.1:18080",
            "--quic-listen",
            "off",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("admin.listen") && err.contains("own, private port"),
        "{err}"
    );
}

fn cli(data_dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_framegate"));
    cmd.args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .env_remove("FRAMEGATE_ADMIN_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run framegate")
}

fn json_out(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_keys_in_the_store_and_through_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Gateway down: the CLI writes the embedded store directly.
    json_out(&cli(
        d,
        &[
            "plans",
            "set",
            "pro",
            "--frames-per-sec",
            "50",
            "--max-keys",
            "3",
        ],
        &[],
    ));
    json_out(&cli(d, &["tenants", "set", "acme", "--plan", "pro"], &[]));
    let bad = cli(d, &["tenants", "set", "acme", "--plan", "nope"], &[]);
    assert!(
        !bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("no plan named")
    );
    let v = json_out(&cli(
        d,
        &[
            "keys",
            "create",
            "--tenant",
            "acme",
            "--name",
            "cam",
            "--scopes",
            "stream,detect,usage",
            "--expires-in",
            "30d",
        ],
        &[],
    ));
    let (id, key) = (
        v["id"].as_str().unwrap().to_string(),
        v["key"].as_str().unwrap().to_string(),
    );
    assert!(v["expires_at"].as_u64().unwrap() > v["created_at"].as_u64().unwrap() + 29 * 86_400);
    let list = json_out(&cli(d, &["keys", "list", "--tenant", "acme"], &[]));
    assert_eq!(list["keys"][0]["id"], id.as_str());
    assert!(!list.to_string().contains(&key[16..]));
    assert!(json_out(&cli(d, &["plans", "list"], &[]))["plans"]["pro"]["limits"]["max_keys"] == 3);
    assert!(json_out(&cli(d, &["tenants", "list"], &[]))["tenants"]["acme"]["plan"] == "pro");

    let data = d.to_str().unwrap();
    let gw = Gateway::start_with_env(
        &[],
        &[
            ("FRAMEGATE_DATA_DIR", data),
            ("FRAMEGATE_ADMIN_TOKEN", ADMIN_TOKEN),
        ],
    )
    .await;
    assert_eq!(detect_with(&gw, &key).await.0, 200);
    assert!(ws_welcomed(&gw, &key).await);
    let (_, me) = get_with(&gw, "/v1/me", &key).await;
    assert_eq!(me["limits"]["frames_per_sec"], 50.0);

    // The store is locked by the gateway: the CLI says so and how to go on.
    let locked = cli(d, &["keys", "revoke", &id], &[]);
    assert!(!locked.status.success());
    let err = String::from_utf8_lossy(&locked.stderr);
    assert!(
        err.contains("in use") && err.contains("--admin-url"),
        "{err}"
    );
    // Through the admin API.
    let url = format!("http://{}", gw.admin.unwrap());
    let no_token = cli(d, &["keys", "list", "--admin-url", &url], &[]);
    assert!(String::from_utf8_lossy(&no_token.stderr).contains("FRAMEGATE_ADMIN_TOKEN"));
    let env = [("FRAMEGATE_ADMIN_TOKEN", ADMIN_TOKEN)];
    let wrong = cli(
        d,
        &["keys", "list", "--admin-url", &url],
        &[("FRAMEGATE_ADMIN_TOKEN", "nope")],
    );
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("401"));
    let second = json_out(&cli(
        d,
        &["keys", "create", "--tenant", "acme", "--admin-url", &url],
        &env,
    ));
    let second_key = second["key"].as_str().unwrap();
    assert_eq!(detect_with(&gw, second_key).await.0, 200);
    assert_eq!(
        json_out(&cli(d, &["keys", "list", "--admin-url", &url], &env))["keys"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let revoked = json_out(&cli(d, &["keys", "revoke", &id, "--admin-url", &url], &env));
    assert!(revoked["revoked_at"].as_u64().is_some());
    assert_eq!(detect_with(&gw, &key).await.0, 401);
    assert!(!ws_welcomed(&gw, &key).await);
    assert_eq!(detect_with(&gw, second_key).await.0, 200);
    json_out(&cli(
        d,
        &[
            "plans",
            "set",
            "pro",
            "--frames-per-sec",
            "7",
            "--admin-url",
            &url,
        ],
        &env,
    ));
    let (_, me) = get_with(&gw, "/v1/me", second_key).await;
    assert_eq!(me["limits"]["frames_per_sec"], 7.0);
}

/// Puts plan `plan` with `limits` and `tenant` on it, through the admin API.
async fn put_tenant_on_plan(gw: &Gateway, tenant: &str, plan: &str, limits: serde_json::Value) {
    for (path, body) in [
        (format!("/v1/admin/plans/{plan}"), limits),
        (
            format!("/v1/admin/tenants/{tenant}"),
            json!({ "plan": plan }),
        ),
    ] {
        let (status, v) = admin(gw, Method::PUT, &path, Some(ADMIN_TOKEN), Some(body)).await;
        assert_eq!(status, 200, "{path}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_service_keys_follow_the_plan_and_stay_in_the_tenant() {
    let gw = gateway().await;
    put_tenant_on_plan(
        &gw,
        "acme",
        "team",
        json!({"max_keys": 2, "budget_frames": 1000}),
    )
    .await;
    let (acme_id, acme) = create_key(&gw, json!({"tenant": "acme", "name": "owner"})).await;
    let (_, globex) = create_key(&gw, json!({"tenant": "globex"})).await;
    let client = reqwest::Client::new();

    assert_eq!(detect_with(&gw, &acme).await.0, 200);
    let (status, me) = get_with(&gw, "/v1/me", &acme).await;
    assert_eq!(status, 200);
    assert_eq!(me["scopes"], json!(["stream", "detect", "usage"]));
    assert_eq!(me["limits"]["max_keys"], 2);
    assert_eq!(me["budget"]["cap_frames"], 1000);
    assert_eq!(me["budget"]["used_frames"], 1);
    let (_, me) = get_with(&gw, "/v1/me", &globex).await;
    assert_eq!(me["budget"]["cap_frames"], serde_json::Value::Null);

    let post = |key: String, body: serde_json::Value| {
        client
            .post(gw.url("/v1/keys"))
            .bearer_auth(key)
            .json(&body)
            .send()
    };
    // No admin, no scope the caller lacks.
    let r = post(acme.clone(), json!({"name": "x", "scopes": ["admin"]}))
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = post(acme.clone(), json!({"name": "cam", "scopes": ["stream"]}))
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let cam: serde_json::Value = r.json().await.unwrap();
    let cam_key = cam["key"].as_str().unwrap().to_string();
    assert_eq!(cam["scopes"], json!(["stream"]));
    assert!(ws_welcomed(&gw, &cam_key).await);
    assert_eq!(detect_with(&gw, &cam_key).await.0, 403);
    // Two active keys = max_keys: the third is refused.
    let r = post(acme.clone(), json!({"name": "more"})).await.unwrap();
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("max_keys"),
        "{v}"
    );
    // globex's plan has no max_keys: none.
    assert_eq!(
        post(globex.clone(), json!({"name": "g"}))
            .await
            .unwrap()
            .status(),
        403
    );

    let (status, list) = get_with(&gw, "/v1/keys", &acme).await;
    assert_eq!(status, 200);
    let keys = list["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2);
    assert!(keys
        .iter()
        .all(|k| k.get("secret_sha256").is_none() && k.get("key").is_none()));
    // Another tenant cannot delete acme's key; acme can.
    let cam_id = cam["id"].as_str().unwrap();
    let del = |key: &str, id: &str| {
        client
            .delete(gw.url(&format!("/v1/keys/{id}")))
            .bearer_auth(key.to_string())
            .send()
    };
    assert_eq!(del(&globex, cam_id).await.unwrap().status(), 404);
    assert!(ws_welcomed(&gw, &cam_key).await);
    assert_eq!(del(&acme, cam_id).await.unwrap().status(), 204);
    assert!(!ws_welcomed(&gw, &cam_key).await);
    assert_eq!(del(&acme, "aaaaaaaaaaaa").await.unwrap().status(), 404);
    // A slot is free again.
    assert_eq!(
        post(acme.clone(), json!({"name": "again"}))
            .await
            .unwrap()
            .status(),
        201
    );
    // Without the usage scope: none of it.
    let (_, detect_only) = create_key(&gw, json!({"tenant": "acme", "scopes": ["detect"]})).await;
    assert_eq!(get_with(&gw, "/v1/keys", &detect_only).await.0, 403);
    assert_eq!(del(&detect_only, &acme_id).await.unwrap().status(), 403);
    assert_eq!(get_with(&gw, "/v1/keys", "nope").await.0, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_key_revokes_the_keys_it_minted() {
    let gw = gateway().await;
    put_tenant_on_plan(&gw, "acme", "team", json!({"max_keys": 6})).await;
    let (owner_id, owner) = create_key(&gw, json!({"tenant": "acme", "name": "owner"})).await;
    let client = reqwest::Client::new();
    let mint = |key: &str, body: serde_json::Value| {
        let req = client.post(gw.url("/v1/keys")).bearer_auth(key).json(&body);
        async move {
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 201);
            let v: serde_json::Value = r.json().await.unwrap();
            (
                v["id"].as_str().unwrap().to_string(),
                v["key"].as_str().unwrap().to_string(),
            )
        }
    };
    let del = |key: &str, id: &str| {
        client
            .delete(gw.url(&format!("/v1/keys/{id}")))
            .bearer_auth(key.to_string())
            .send()
    };
    // owner → child → grandchild, each minted by the one before.
    let (child_id, child) = mint(&owner, json!({"name": "child"})).await;
    let (_, grandchild) = mint(&child, json!({"name": "cam", "scopes": ["stream"]})).await;
    assert!(ws_welcomed(&gw, &grandchild).await);
    // A key with fewer scopes may not revoke one with more.
    let (_, usage_only) = create_key(&gw, json!({"tenant": "acme", "scopes": ["usage"]})).await;
    let r = del(&usage_only, &child_id).await.unwrap();
    assert_eq!(r.status(), 403);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("scope"),
        "{v}"
    );
    assert_eq!(detect_with(&gw, &child).await.0, 200);
    // Revoking the child (self-service) revokes what it minted.
    assert_eq!(del(&owner, &child_id).await.unwrap().status(), 204);
    assert_eq!(detect_with(&gw, &child).await.0, 401);
    assert!(
        !ws_welcomed(&gw, &grandchild).await,
        "a key minted by a revoked key still works"
    );
    // Revoking the owner (admin API) revokes the keys it still has out.
    let (other_id, other) = mint(&owner, json!({"name": "other"})).await;
    let (status, v) = revoke_as_admin(&gw, &owner_id).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["revoked_with_it"], json!([other_id]), "{v}");
    assert_eq!(detect_with(&gw, &other).await.0, 401);
    assert_eq!(detect_with(&gw, &owner).await.0, 401);
    // Keys made by the admin API are nobody's children: untouched.
    assert_eq!(get_with(&gw, "/v1/keys", &usage_only).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plans_budget_caps_its_tenants_frames() {
    let gw = gateway().await;
    let put = |path: &'static str, body: serde_json::Value| {
        let gw = &gw;
        async move {
            admin(gw, Method::PUT, path, Some(ADMIN_TOKEN), Some(body))
                .await
                .0
        }
    };
    assert_eq!(
        put("/v1/admin/plans/tiny", json!({"budget_frames": 2})).await,
        200
    );
    assert_eq!(
        put("/v1/admin/tenants/acme", json!({"plan": "tiny"})).await,
        200
    );
    let (_, key) = create_key(&gw, json!({"tenant": "acme"})).await;
    assert_eq!(detect_with(&gw, &key).await.0, 200);
    assert_eq!(detect_with(&gw, &key).await.0, 200);
    let (status, v) = detect_with(&gw, &key).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (402, Some("budget-exhausted")),
        "{v}"
    );
    match ws_hello_with(&gw, &key, "").await {
        Some(ServerMessage::Error(e)) => assert_eq!(e.code, ErrorCode::BudgetExhausted),
        other => panic!("expected Error, got {other:?}"),
    }
    let (_, me) = get_with(&gw, "/v1/me", &key).await;
    assert_eq!(
        (
            me["budget"]["cap_frames"].as_u64(),
            me["budget"]["used_frames"].as_u64()
        ),
        (Some(2), Some(2))
    );
    // Other tenants are not capped.
    let (_, other) = create_key(&gw, json!({"tenant": "globex"})).await;
    for _ in 0..3 {
        assert_eq!(detect_with(&gw, &other).await.0, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_minted_by_a_key_keeps_its_expiry_and_limits() {
    let gw = gateway().await;
    put_tenant_on_plan(&gw, "initech", "team", json!({"max_keys": 3})).await;
    let (_, parent) = create_key(
        &gw,
        json!({"tenant": "initech", "expires_in_secs": 3600, "limits": {"frames_per_sec": 1.0}}),
    )
    .await;
    let (_, me) = get_with(&gw, "/v1/me", &parent).await;
    assert_eq!(me["limits"]["frames_per_sec"], 1.0, "{me}");
    let r = reqwest::Client::new()
        .post(gw.url("/v1/keys"))
        .bearer_auth(&parent)
        .json(&json!({"name": "child"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let child: serde_json::Value = r.json().await.unwrap();
    let expires = child["expires_at"].as_u64().expect("the child expires");
    let now = framegate::metering::unix_now();
    assert!(expires > now && expires <= now + 3600, "{child}");
    let (_, me) = get_with(&gw, "/v1/me", child["key"].as_str().unwrap()).await;
    assert_eq!(
        me["limits"]["frames_per_sec"], 1.0,
        "the child escaped the limit: {me}"
    );
}

/// `DELETE /v1/admin/keys/{id}` with the admin token.
async fn revoke_as_admin(gw: &Gateway, id: &str) -> (u16, serde_json::Value) {
    admin(
        gw,
        Method::DELETE,
        &format!("/v1/admin/keys/{id}"),
        Some(ADMIN_TOKEN),
        None,
    )
    .await
}
