//! OIDC bearer tokens against a real local issuer: `tools/oidc-issuer`
//! (oauth2-mock-server, installed by scripts/test.sh) on loopback, and a
//! real `framegate serve` with `[[auth.oidc]]` pointed at it. Valid RS256 and
//! ES256 tokens work on `/v1/detect`, WebSocket sessions and `/v1/usage`
//! (tenant from the claim); every bad token is a 401 and the gateway keeps
//! serving; rotation costs one JWKS refetch and refetches are rate-limited;
//! an unreachable issuer refuses its tokens without stopping API keys.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use framegate_protocol::ServerMessage;
use serde_json::{json, Value};
use support::usage::{eventually, write_config};
use support::*;

/// A running `tools/oidc-issuer/issuer.mjs`; killed on drop.
struct Issuer {
    child: Child,
    url: String,
    http: reqwest::Client,
}

impl Issuer {
    async fn start(args: &[&str]) -> Issuer {
        let dir = repo_root().join("tools/oidc-issuer");
        assert!(
            dir.join("node_modules/oauth2-mock-server").is_dir(),
            "the OIDC test issuer is not installed: run scripts/test.sh (npm ci --prefix tools/oidc-issuer)"
        );
        let mut child = Command::new("node")
            .arg(dir.join("issuer.mjs"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node (Node.js >= 20 is needed; scripts/test.sh installs it)");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("LISTENING ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the issuer printed no LISTENING line within 20 s");
        Issuer {
            child,
            url,
            http: reqwest::Client::new(),
        }
    }

    fn port(&self) -> u16 {
        self.url.rsplit(':').next().unwrap().parse().unwrap()
    }

    /// A client-credentials token from `/token`, signed with `alg`'s current
    /// key; `extra` is merged into the request (claims, expires_in, nbf_in,
    /// omit, aud, scope).
    async fn token(&self, alg: &str, tenant: Option<&str>, extra: Value) -> String {
        let mut body = json!({
            "grant_type": "client_credentials",
            "client_id": "svc",
            "aud": "framegate",
            "claims": { "sub": format!("svc-{}", tenant.unwrap_or("none")) },
        });
        if let Some(t) = tenant {
            body["claims"]["tenant"] = json!(t);
        }
        for (k, v) in extra.as_object().unwrap() {
            if k == "claims" {
                for (ck, cv) in v.as_object().unwrap() {
                    body["claims"][ck] = cv.clone();
                }
            } else {
                body[k] = v.clone();
            }
        }
        let r = self
            .http
            .post(format!("{}/token?alg={alg}", self.url))
            .json(&body)
            .send()
            .await
            .expect("token request");
        assert_eq!(r.status(), 200, "token endpoint: {:?}", r.text().await);
        let v: Value = r.json().await.unwrap();
        v["access_token"].as_str().unwrap().to_string()
    }

    /// New signing keys; with `retire`, the old ones leave the JWKS.
    async fn rotate(&self, retire: bool) -> Value {
        let r = self
            .http
            .post(format!("{}/_control/rotate", self.url))
            .body(json!({ "retire": retire }).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        r.json::<Value>().await.unwrap()["kids"].clone()
    }

    /// JWKS requests the issuer served so far.
    async fn jwks_fetches(&self) -> u64 {
        let v: Value = self
            .http
            .get(format!("{}/_control/stats", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["jwks"].as_u64().unwrap()
    }

    async fn jwks(&self) -> Value {
        self.http
            .get(format!("{}/jwks", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn oidc_toml(issuer: &str, min_refresh_secs: u64) -> String {
    format!(
        r#"
[metering]
flush_interval_ms = 100

[[auth.oidc]]
name = "kc"
issuer = "{issuer}"
audience = "framegate"
jwks_min_refresh_secs = {min_refresh_secs}
http_timeout_ms = 2000
"#
    )
}

async fn gateway(dir: &tempfile::TempDir, toml: &str) -> Gateway {
    let config = write_config(dir.path(), toml);
    Gateway::start(&[
        "--config",
        config.to_str().unwrap(),
        "--backend",
        "synthetic",
    ])
    .await
}

async fn detect_with(gw: &Gateway, credential: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(gw.url("/v1/detect"))
        .bearer_auth(credential)
        .header("content-type", "image/jpeg")
        .body(data("dog.jpg"))
        .send()
        .await
        .expect("detect request");
    let status = r.status().as_u16();
    if status == 401 {
        assert_eq!(
            r.headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap()),
            Some("Bearer")
        );
    }
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Frames of the caller's tenant (named in the answer) from `/v1/usage`.
async fn usage_with(gw: &Gateway, credential: &str) -> (String, u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let v: Value = reqwest::Client::new()
        .get(gw.url(&format!(
            "/v1/usage?from={}&to={}&granularity=day",
            now - 86_400,
            now + 86_400
        )))
        .bearer_auth(credential)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        v["tenant"].as_str().unwrap_or_default().to_string(),
        v["frames"].as_u64().unwrap_or(0),
    )
}

/// Hello with `credential` (and optionally the same in the upgrade header),
/// one frame, its Detections.
async fn ws_session_works(gw: &Gateway, credential: &str, in_header: bool) {
    let mut ws = ws_connect(gw, in_header.then_some(credential)).await;
    send(&mut ws, &hello(credential)).await;
    match recv(&mut ws).await {
        Some(ServerMessage::Welcome(_)) => {}
        other => panic!("expected Welcome, got {other:?}"),
    }
    send(&mut ws, &jpeg_frame(1, &data("dog.jpg"))).await;
    loop {
        match recv(&mut ws).await {
            Some(ServerMessage::Detections(d)) => {
                assert_eq!(d.seq, 1);
                break;
            }
            Some(ServerMessage::Credit(_)) => continue,
            other => panic!("expected Detections, got {other:?}"),
        }
    }
}

/// Hello with `credential` is refused with the unauthorized close code.
async fn ws_refused(gw: &Gateway, credential: &str) {
    let mut ws = ws_connect(gw, None).await;
    send(&mut ws, &hello(credential)).await;
    assert_eq!(close_code(&mut ws).await, Some(4001));
}

fn b64(v: &Value) -> String {
    B64.encode(v.to_string().as_bytes())
}

/// A token with `header` and the payload of `token`, signed with HMAC-SHA256
/// under `secret` (or unsigned when `secret` is None).
fn forge(token: &str, header: Value, secret: Option<&[u8]>) -> String {
    let payload = token.split('.').nth(1).unwrap();
    let input = format!("{}.{payload}", b64(&header));
    match secret {
        None => format!("{input}."),
        Some(secret) => {
            let mut h: jsonwebtoken::Header = serde_json::from_value(header).unwrap();
            h.alg = jsonwebtoken::Algorithm::HS256;
            let claims: Value = serde_json::from_slice(&B64.decode(payload).unwrap()).unwrap();
            jsonwebtoken::encode(&h, &claims, &jsonwebtoken::EncodingKey::from_secret(secret))
                .unwrap()
        }
    }
}

/// An RSA public key from a JWK, in the encodings an algorithm-confusion
/// attacker would try as an HMAC secret.
struct RsaPublic {
    n: Vec<u8>,
    e: Vec<u8>,
}

impl RsaPublic {
    fn from_jwk(jwk: &Value) -> Self {
        let part = |k: &str| B64.decode(jwk[k].as_str().unwrap()).unwrap();
        RsaPublic {
            n: part("n"),
            e: part("e"),
        }
    }

    fn pkcs1_der(&self) -> Vec<u8> {
        let int = |b: &[u8]| {
            let mut v = b.to_vec();
            if v[0] & 0x80 != 0 {
                v.insert(0, 0);
            }
            der(0x02, &v)
        };
        der(0x30, &[int(&self.n), int(&self.e)].concat())
    }

    fn spki_der(&self) -> Vec<u8> {
        // AlgorithmIdentifier { rsaEncryption, NULL }
        let alg = der(
            0x30,
            &[
                &[
                    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
                ][..],
                &[0x05, 0x00],
            ]
            .concat(),
        );
        let bits = der(0x03, &[&[0u8][..], &self.pkcs1_der()].concat());
        der(0x30, &[alg, bits].concat())
    }

    fn pem(&self) -> String {
        use base64::engine::general_purpose::STANDARD;
        let b = STANDARD.encode(self.spki_der());
        let lines: Vec<&str> = b
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            lines.join("\n")
        )
    }
}

/// A DER TLV.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn header_of(token: &str) -> Value {
    serde_json::from_slice(&B64.decode(token.split('.').next().unwrap()).unwrap()).unwrap()
}

#[tokio::test]
async fn valid_tokens_work_and_every_bad_token_is_a_clear_401() {
    let issuer = Issuer::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&dir, &oidc_toml(&issuer.url, 30)).await;

    // Valid tokens, both algorithms, two tenants from the claim.
    let rs = issuer.token("RS256", Some("acme"), json!({})).await;
    let es = issuer
        .token(
            "ES256",
            Some("globex"),
            json!({"scope": "openid stream detect usage"}),
        )
        .await;
    assert_eq!(header_of(&rs)["alg"], "RS256");
    assert_eq!(header_of(&es)["alg"], "ES256");
    let (status, body) = detect_with(&gw, &rs).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["detections"].is_array(), "{body}");
    assert_eq!(detect_with(&gw, &es).await.0, 200);
    assert_eq!(detect_with(&gw, &es).await.0, 200);
    ws_session_works(&gw, &es, false).await;
    ws_session_works(&gw, &rs, true).await;
    // Usage is the token's tenant's: acme 2 (detect + WS), globex 3.
    for (token, tenant, frames) in [(&rs, "acme", 2), (&es, "globex", 3)] {
        let ok = eventually(Duration::from_secs(10), || async {
            usage_with(&gw, token).await == (tenant.to_string(), frames)
        })
        .await;
        assert!(ok, "usage of {tenant}: {:?}", usage_with(&gw, token).await);
    }

    // Bad tokens. A second issuer with the same `iss` but other keys, and
    // one that names itself (not configured).
    let impostor = Issuer::start(&["--issuer", &issuer.url]).await;
    let stranger = Issuer::start(&[]).await;
    let impostor_token = impostor.token("RS256", Some("acme"), json!({})).await;
    let mut same_kid = header_of(&impostor_token);
    same_kid["kid"] = header_of(&rs)["kid"].clone();
    let swapped_kid = {
        // The impostor's signature under the real issuer's kid.
        let parts: Vec<&str> = impostor_token.split('.').collect();
        format!("{}.{}.{}", b64(&same_kid), parts[1], parts[2])
    };
    let jwks = issuer.jwks().await;
    let rsa = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kty"] == "RSA")
        .unwrap()
        .clone();
    let public = RsaPublic::from_jwk(&rsa);
    let rs_kid = header_of(&rs)["kid"].clone();
    let hs_header = json!({"alg": "HS256", "typ": "JWT", "kid": rs_kid});
    let mut bad: Vec<(&str, String)> = vec![
        (
            "expired",
            issuer
                .token("RS256", Some("acme"), json!({"expires_in": -120}))
                .await,
        ),
        (
            "nbf in the future",
            issuer
                .token("ES256", Some("acme"), json!({"nbf_in": 300}))
                .await,
        ),
        (
            "without exp",
            issuer
                .token("RS256", Some("acme"), json!({"omit": ["exp"]}))
                .await,
        ),
        (
            "wrong audience",
            issuer
                .token("RS256", Some("acme"), json!({"aud": "someone-else"}))
                .await,
        ),
        (
            "wrong issuer",
            stranger.token("RS256", Some("acme"), json!({})).await,
        ),
        (
            "iss claim of another issuer",
            issuer
                .token(
                    "RS256",
                    Some("acme"),
                    json!({"claims": {"iss": "https://evil.test"}}),
                )
                .await,
        ),
        (
            "bad signature (same iss, other keys)",
            impostor_token.clone(),
        ),
        ("bad signature (same iss and kid, other key)", swapped_kid),
        (
            "alg none",
            forge(
                &rs,
                json!({"alg": "none", "typ": "JWT", "kid": rs_kid}),
                None,
            ),
        ),
        (
            "alg none, no kid",
            forge(&rs, json!({"alg": "none", "typ": "JWT"}), None),
        ),
        (
            "HS256 keyed with the RSA public key (PEM)",
            forge(&rs, hs_header.clone(), Some(public.pem().as_bytes())),
        ),
        (
            "HS256 keyed with the RSA public key (SPKI DER)",
            forge(&rs, hs_header.clone(), Some(&public.spki_der())),
        ),
        (
            "HS256 keyed with the RSA public key (PKCS#1 DER)",
            forge(&rs, hs_header.clone(), Some(&public.pkcs1_der())),
        ),
        (
            "HS256 keyed with the modulus",
            forge(&rs, hs_header.clone(), Some(&public.n)),
        ),
        (
            "HS256 keyed with the JWK text",
            forge(&rs, hs_header.clone(), Some(rsa.to_string().as_bytes())),
        ),
        (
            "HS256 keyed with the JWKS text",
            forge(&rs, hs_header, Some(jwks.to_string().as_bytes())),
        ),
        (
            "missing tenant claim",
            issuer.token("RS256", None, json!({})).await,
        ),
        (
            "empty tenant claim",
            issuer
                .token("ES256", None, json!({"claims": {"tenant": ""}}))
                .await,
        ),
        ("truncated", rs[..rs.len() - 10].to_string()),
    ];
    // Tampered payload: acme's signature over globex's claims.
    let parts: Vec<&str> = rs.split('.').collect();
    let other = issuer.token("RS256", Some("globex"), json!({})).await;
    bad.push((
        "tampered payload",
        format!(
            "{}.{}.{}",
            parts[0],
            other.split('.').nth(1).unwrap(),
            parts[2]
        ),
    ));
    for (what, token) in &bad {
        let (status, body) = detect_with(&gw, token).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body["error"]["code"], "unauthorized", "{what}: {body}");
    }
    for (_, token) in bad.iter().take(3) {
        ws_refused(&gw, token).await;
    }

    // Still serving: tokens, the API key, sessions.
    assert_eq!(detect_with(&gw, &rs).await.0, 200);
    assert_eq!(detect_with(&gw, KEY).await.0, 200);
    ws_session_works(&gw, &es, false).await;
    // No token ever reaches the log.
    let logs = gw.logs().join("\n");
    for token in [&rs, &es] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!logs.contains(signature), "a token leaked into the log");
    }
}

async fn jwks_metric(gw: &Gateway, result: &str) -> u64 {
    let text = gw.metrics().await;
    let prefix = format!("framegate_oidc_jwks_fetches_total{{issuer=\"kc\",result=\"{result}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn rotation_costs_one_refetch_and_refetches_are_rate_limited() {
    const MIN_REFRESH: u64 = 4;
    let issuer = Issuer::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&dir, &oidc_toml(&issuer.url, MIN_REFRESH)).await;
    // The start-up prefetch.
    assert!(
        eventually(Duration::from_secs(10), || async {
            issuer.jwks_fetches().await == 1
        })
        .await,
        "no start-up JWKS fetch"
    );
    let old = issuer.token("RS256", Some("acme"), json!({})).await;
    assert_eq!(detect_with(&gw, &old).await.0, 200);
    assert_eq!(issuer.jwks_fetches().await, 1, "a known kid needs no fetch");

    // Rotation: the new kid is unknown once, fetched once, then cached.
    tokio::time::sleep(Duration::from_secs(MIN_REFRESH)).await;
    let kids = issuer.rotate(false).await;
    let new = issuer.token("ES256", Some("acme"), json!({})).await;
    assert_eq!(header_of(&new)["kid"], kids["ES256"]);
    assert_eq!(detect_with(&gw, &new).await.0, 200);
    assert_eq!(issuer.jwks_fetches().await, 2);
    for _ in 0..3 {
        assert_eq!(detect_with(&gw, &new).await.0, 200);
        assert_eq!(
            detect_with(&gw, &old).await.0,
            200,
            "old key still published"
        );
    }
    assert_eq!(issuer.jwks_fetches().await, 2);

    // A flood of made-up kids right after a fetch: refused, no fetch.
    let forged = |i: usize| {
        let mut h = header_of(&new);
        h["kid"] = json!(format!("made-up-{i}"));
        let parts: Vec<&str> = new.split('.').collect();
        format!("{}.{}.{}", b64(&h), parts[1], parts[2])
    };
    let flood = (0..20).map(|i| {
        let t = forged(i);
        let gw = &gw;
        async move { detect_with(gw, &t).await.0 }
    });
    let statuses = futures_util::future::join_all(flood).await;
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    assert_eq!(
        issuer.jwks_fetches().await,
        2,
        "rate limit: no refetch inside the interval"
    );

    // After the interval, 20 concurrent unknown kids share one fetch.
    tokio::time::sleep(Duration::from_secs(MIN_REFRESH)).await;
    let flood = (20..40).map(|i| {
        let t = forged(i);
        let gw = &gw;
        async move { detect_with(gw, &t).await.0 }
    });
    let statuses = futures_util::future::join_all(flood).await;
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    assert_eq!(issuer.jwks_fetches().await, 3, "one shared fetch");

    // Retiring the old keys: after the next rotation's fetch, the old
    // token's key is gone.
    tokio::time::sleep(Duration::from_secs(MIN_REFRESH)).await;
    issuer.rotate(true).await;
    let newest = issuer.token("RS256", Some("acme"), json!({})).await;
    assert_eq!(detect_with(&gw, &newest).await.0, 200);
    assert_eq!(issuer.jwks_fetches().await, 4);
    assert_eq!(detect_with(&gw, &new).await.0, 401, "retired key refused");
    assert_eq!(
        issuer.jwks_fetches().await,
        4,
        "inside the interval: no fetch"
    );
    // The metric agrees with the issuer's count.
    assert_eq!(jwks_metric(&gw, "ok").await, 4);
    assert_eq!(jwks_metric(&gw, "error").await, 0);
}

#[tokio::test]
async fn retired_keys_stop_working_once_the_key_set_is_older_than_max_age() {
    let issuer = Issuer::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let toml = format!("{}jwks_max_age_secs = 2\n", oidc_toml(&issuer.url, 1));
    let gw = gateway(&dir, &toml).await;
    let old = issuer.token("RS256", Some("acme"), json!({})).await;
    assert_eq!(detect_with(&gw, &old).await.0, 200);
    // The issuer drops the key (no new token names the new one yet).
    issuer.rotate(true).await;
    assert_eq!(detect_with(&gw, &old).await.0, 200, "cached until max age");
    let fetches = issuer.jwks_fetches().await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            detect_with(&gw, &old).await.0 == 401
        })
        .await,
        "a retired key must stop working after jwks_max_age_secs"
    );
    assert!(
        issuer.jwks_fetches().await > fetches,
        "a background refresh ran"
    );
}

#[tokio::test]
async fn unreachable_issuer_refuses_tokens_and_api_keys_keep_working() {
    // An issuer that was there, handed out a token, and went away.
    let mut issuer = Issuer::start(&[]).await;
    let port = issuer.port();
    let url = issuer.url.clone();
    let token = issuer.token("RS256", Some("acme"), json!({})).await;
    issuer.stop();

    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&dir, &oidc_toml(&url, 1)).await;
    assert_eq!(detect_with(&gw, &token).await.0, 401);
    assert_eq!(detect_with(&gw, KEY).await.0, 200, "API keys unaffected");
    let (_, welcome) = open_session(&gw).await;
    assert!(!welcome.session_id.is_empty());
    ws_refused(&gw, &token).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            gw.logs()
                .iter()
                .any(|l| l.contains("WARN") && l.contains("could not be fetched"))
        })
        .await,
        "a warning names the failed fetch:\n{}",
        gw.logs().join("\n")
    );
    assert!(jwks_metric(&gw, "error").await >= 1);

    // The issuer comes back (new keys, same address): after the refresh
    // interval its tokens work, without a gateway restart.
    let back = Issuer::start(&["--port", &port.to_string()]).await;
    assert_eq!(back.url, url);
    let fresh = back.token("ES256", Some("acme"), json!({})).await;
    assert!(
        eventually(Duration::from_secs(10), || async {
            detect_with(&gw, &fresh).await.0 == 200
        })
        .await,
        "tokens work again once the issuer answers"
    );
    assert_eq!(
        detect_with(&gw, &token).await.0,
        401,
        "the old issuer's keys are gone"
    );
}
