//! WebTransport (HTTP/3) sessions against a real gateway with the real
//! model, from `wtransport`'s client pinned to the certificate hash that
//! `GET /v1/webtransport` publishes — what a browser does with
//! `serverCertificateHashes`: the same session as WebSocket and QUIC, the
//! same Hello credential check, the same limits.

mod support;

use std::time::Duration;

use framegate_protocol::framing;
use framegate_protocol::{ClientMessage, DecodeLimits, ServerMessage};
use support::{data, hello, jpeg_frame, Gateway, KEY};
use wtransport::tls::Sha256Digest;

async fn start() -> Gateway {
    Gateway::start(&[
        "--quic-listen",
        "off",
        "--webtransport-listen",
        "127.0.0.1:0",
    ])
    .await
}

/// `GET /v1/webtransport`: the URL and certificate hash browsers use.
async fn info(gw: &Gateway) -> (String, String) {
    let v: serde_json::Value = reqwest::get(gw.url("/v1/webtransport"))
        .await
        .expect("GET /v1/webtransport")
        .error_for_status()
        .expect("200")
        .json()
        .await
        .expect("json");
    (
        v["url"].as_str().expect("url").to_string(),
        v["certificate_sha256"]
            .as_str()
            .expect("certificate_sha256")
            .to_string(),
    )
}

fn client(sha256: &str) -> wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client> {
    let digest: [u8; 32] = hex::decode(sha256)
        .expect("hex")
        .try_into()
        .expect("32 bytes");
    let config = wtransport::ClientConfig::builder()
        .with_bind_default()
        .with_server_certificate_hashes([Sha256Digest::new(digest)])
        .build();
    wtransport::Endpoint::client(config).expect("client endpoint")
}

async fn send(s: &mut wtransport::SendStream, msg: &ClientMessage) {
    s.write_all(&framing::encode(&msg.encode()))
        .await
        .expect("write");
}

/// The next message, or `None` once the stream ended.
async fn recv(r: &mut wtransport::RecvStream) -> Option<ServerMessage> {
    let read = async {
        let mut len = [0u8; 4];
        r.read_exact(&mut len).await.ok()?;
        let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
        r.read_exact(&mut body).await.ok()?;
        Some(ServerMessage::decode(&body.into(), &DecodeLimits::default()).expect("decodable"))
    };
    tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .expect("no message within 120 s (a hang guard)")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webtransport_session_detects_and_ends_with_bye() {
    let gw = start().await;
    let (url, sha) = info(&gw).await;
    let (addr, logged) = gw
        .webtransport
        .clone()
        .expect("WebTransport line in the log");
    assert_eq!(url, format!("https://{addr}/v1/wt"));
    assert_eq!(sha, logged, "the published hash is the certificate's");
    assert!(
        console_csp(&gw)
            .await
            .contains(&format!("connect-src 'self' https://{addr};")),
        "the console may connect to the WebTransport origin"
    );

    let ep = client(&sha);
    let conn = ep.connect(&url).await.expect("WebTransport connect");
    let (mut tx, mut rx) = conn.open_bi().await.expect("open_bi").await.expect("bi");
    send(&mut tx, &hello(KEY)).await;
    let welcome = match recv(&mut rx).await {
        Some(ServerMessage::Welcome(w)) => w,
        other => panic!("expected Welcome, got {other:?}"),
    };
    assert!(welcome.credits > 0);
    send(&mut tx, &jpeg_frame(1, &data("dog.jpg"))).await;
    let dets = loop {
        match recv(&mut rx).await {
            Some(ServerMessage::Detections(d)) => break d,
            Some(ServerMessage::Credit(_)) => continue,
            other => panic!("expected Detections, got {other:?}"),
        }
    };
    assert_eq!(dets.seq, 1);
    let labels: Vec<&str> = dets.detections.iter().map(|d| d.label.as_str()).collect();
    assert!(
        labels.contains(&"dog") && labels.contains(&"bicycle"),
        "labels {labels:?}"
    );
    assert_eq!(dets.usage.frames, 1, "billed like any session");
    send(
        &mut tx,
        &ClientMessage::Bye(framegate_protocol::Bye {
            reason: "done".into(),
        }),
    )
    .await;
    // Whatever is left, then the end of the stream.
    let mut rest = 0;
    while recv(&mut rx).await.is_some() {
        rest += 1;
        assert!(rest < 10, "the stream did not end after Bye");
    }
    // The session is counted under its own transport label.
    let metrics = gw.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("framegate_frames_received_total")
                && l.contains("transport=\"webtransport\"")
                && l.ends_with(" 1")),
        "frames_received for webtransport:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("frames_received"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webtransport_refuses_a_bad_key_and_a_bad_path_and_keeps_serving() {
    let gw = start().await;
    let (url, sha) = info(&gw).await;
    let ep = client(&sha);

    // A wrong key in Hello: an unauthorized Error, then the stream ends.
    let conn = ep.connect(&url).await.expect("connect");
    let (mut tx, mut rx) = conn.open_bi().await.unwrap().await.unwrap();
    send(&mut tx, &hello("wrong-key-0000000000")).await;
    match recv(&mut rx).await {
        Some(ServerMessage::Error(e)) => {
            assert_eq!(e.code, framegate_protocol::ErrorCode::Unauthorized, "{e:?}")
        }
        other => panic!("expected an Unauthorized Error, got {other:?}"),
    }
    assert!(recv(&mut rx).await.is_none(), "nothing after the refusal");

    // A frame before Hello: a protocol Error.
    let conn = ep.connect(&url).await.expect("connect");
    let (mut tx, mut rx) = conn.open_bi().await.unwrap().await.unwrap();
    send(&mut tx, &jpeg_frame(1, &data("dog.jpg"))).await;
    match recv(&mut rx).await {
        Some(ServerMessage::Error(e)) => assert!(e.message.contains("Hello"), "{e:?}"),
        other => panic!("expected an Error, got {other:?}"),
    }

    // Another path: no session.
    let other = url.replace("/v1/wt", "/v1/elsewhere");
    assert!(
        ep.connect(&other).await.is_err(),
        "a session on {other} was accepted"
    );

    // The wrong certificate hash: the client refuses the handshake.
    let wrong = client(&"00".repeat(32));
    assert!(wrong.connect(&url).await.is_err(), "a wrong pin connected");

    // And the gateway still serves.
    let conn = ep.connect(&url).await.expect("connect after refusals");
    let (mut tx, mut rx) = conn.open_bi().await.unwrap().await.unwrap();
    send(&mut tx, &hello(KEY)).await;
    assert!(matches!(
        recv(&mut rx).await,
        Some(ServerMessage::Welcome(_))
    ));
    assert!(
        !gw.logs().iter().any(|l| l.contains(KEY)),
        "the key reached the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webtransport_is_off_by_default() {
    let gw = Gateway::start(&["--quic-listen", "off"]).await;
    let r = reqwest::get(gw.url("/v1/webtransport")).await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::NOT_FOUND);
    assert!(gw.webtransport.is_none());
    assert!(console_csp(&gw).await.contains("connect-src 'self';"));
}

/// The console page's Content-Security-Policy.
async fn console_csp(gw: &Gateway) -> String {
    let r = reqwest::get(gw.url("/console/"))
        .await
        .expect("GET /console/");
    r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string()
}
