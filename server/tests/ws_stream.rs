//! WebSocket streaming: Hello → Welcome, then one answer per frame, in order,
//! on a session that stays open; protocol violations get a clear Error.

mod support;

use std::time::Duration;

use framegate_protocol::{ClientMessage, ErrorCode, ServerMessage};
use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn dog_over_websocket_matches_http_and_the_reference() {
    let gw = Gateway::start(&[]).await;
    let (mut ws, welcome) = open_session(&gw).await;
    assert_eq!(welcome.model, "nanodet-g");
    assert!(welcome.credits >= 1);
    assert!(!welcome.session_id.is_empty() && !welcome.resume_token.is_empty());

    let jpeg = data("dog.jpg");
    let http = dets_from_json(
        &gw.detect(jpeg.clone(), "image/jpeg")
            .await
            .json()
            .await
            .unwrap(),
    );
    let reference = reference(&["dog.jpg"]);
    // Many frames on one session: each answered once, in order.
    for seq in 1..=5u64 {
        send(&mut ws, &jpeg_frame(seq, &jpeg)).await;
    }
    for seq in 1..=5u64 {
        match recv(&mut ws).await {
            Some(ServerMessage::Detections(d)) => {
                assert_eq!(d.seq, seq);
                assert_eq!(d.capture_ts_us, seq * 1000);
                assert_eq!((d.width, d.height), (768, 576));
                assert_eq!(d.usage.frames, seq, "usage so far travels with each answer");
                assert_eq!(d.usage.pixels, seq * 768 * 576);
                assert!(d.timings.infer_us > 0 && d.timings.total_us >= d.timings.infer_us);
                let got = dets_from_proto(&d);
                assert_matches(&got, &reference[0].1, &["dog", "bicycle", "truck"], 0.9);
                assert_eq!(got.len(), http.len());
                for (a, b) in got.iter().zip(&http) {
                    assert_eq!(a.class_id, b.class_id);
                    assert!(iou(&a.xyxy, &b.xyxy) > 0.999);
                }
            }
            other => panic!("frame {seq}: expected Detections, got {other:?}"),
        }
    }
    // A corrupt frame gets an Error about that frame; the session goes on.
    send(&mut ws, &jpeg_frame(6, &data("truncated.jpg"))).await;
    send(&mut ws, &jpeg_frame(7, &data("huge-header.jpg"))).await;
    send(&mut ws, &jpeg_frame(8, &jpeg)).await;
    match recv(&mut ws).await {
        Some(ServerMessage::Error(e)) => {
            assert_eq!((e.seq, e.code), (Some(6), ErrorCode::InvalidImage));
        }
        other => panic!("expected Error for seq 6, got {other:?}"),
    }
    match recv(&mut ws).await {
        Some(ServerMessage::Error(e)) => {
            assert_eq!((e.seq, e.code), (Some(7), ErrorCode::PayloadTooLarge));
            assert!(e.message.contains("pixel budget"));
        }
        other => panic!("expected Error for seq 7, got {other:?}"),
    }
    match recv(&mut ws).await {
        Some(ServerMessage::Detections(d)) => {
            assert_eq!(d.seq, 8);
            assert_eq!(d.usage.frames, 6, "failed frames are not counted");
        }
        other => panic!("expected Detections for seq 8, got {other:?}"),
    }
    send(&mut ws, &ClientMessage::Bye(Default::default())).await;
    assert_eq!(close_code(&mut ws).await, Some(1000));
}

#[tokio::test]
async fn key_in_the_upgrade_header_works_and_a_wrong_one_is_401() {
    let gw = Gateway::start(&[]).await;
    let mut ws = ws_connect(&gw, Some(KEY)).await;
    send(&mut ws, &hello("")).await;
    assert!(matches!(
        recv(&mut ws).await,
        Some(ServerMessage::Welcome(_))
    ));

    let mut req =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(gw.ws_url())
            .unwrap();
    req.headers_mut()
        .insert("authorization", "Bearer wrong".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("expected a 401 refusal, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn an_upgrade_with_another_websocket_version_is_told_which_one() {
    let gw = Gateway::start(&[]).await;
    let upgrade = |version: Option<&'static str>| {
        let mut req = reqwest::Client::new()
            .get(gw.url("/v1/stream"))
            .header("connection", "Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        if let Some(v) = version {
            req = req.header("sec-websocket-version", v);
        }
        async move { req.send().await.unwrap() }
    };
    let resp = upgrade(Some("8")).await;
    assert_eq!(resp.status(), 426);
    assert_eq!(resp.headers()["sec-websocket-version"], "13");
    assert_eq!(resp.headers()["upgrade"], "websocket");
    let body = resp.text().await.unwrap();
    assert!(body.contains("Sec-WebSocket-Version must be 13"), "{body}");
    // No version at all is a malformed upgrade: 400.
    let resp = upgrade(None).await;
    assert_eq!(resp.status(), 400);
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("Sec-WebSocket-Version header missing"),
        "{body}"
    );
}

/// RFC 8441: over HTTP/2 a WebSocket opens with an extended CONNECT
/// (browsers do this when the page came over HTTP/2, as over `https://`;
/// before, the gateway advertised `SETTINGS_ENABLE_CONNECT_PROTOCOL` but
/// answered the CONNECT 405, and Chromium's WebSocket failed). The stream
/// carries a whole session, and the connection is not idle while it does.
#[tokio::test]
async fn a_websocket_over_http2_streams_and_keeps_its_connection_while_open() {
    use http_body_util::Empty;
    use hyper::{Method, Request};
    use tokio_tungstenite::tungstenite::protocol::Role;

    let dir = tempfile::tempdir().unwrap();
    let cfg = support::usage::write_config(dir.path(), "[http]\nkeepalive_timeout_secs = 2\n");
    let gw = Gateway::start(&["--config", cfg.to_str().unwrap()]).await;
    let (mut h2, driver) = h2_connect(gw.addr).await;
    // A plain request first: by its answer the server's SETTINGS (which
    // allow the extended CONNECT) have arrived.
    let resp = h2
        .send_request(Request::get(gw.url("/healthz")).body(Empty::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let connect = |version: &str| {
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri(gw.url("/v1/stream"))
            .header("sec-websocket-version", version)
            .header("authorization", format!("Bearer {KEY}"))
            .body(Empty::new())
            .unwrap();
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        req
    };
    let refused = h2.send_request(connect("8")).await.unwrap();
    assert_eq!(refused.status(), 426);
    assert_eq!(refused.headers()["sec-websocket-version"], "13");
    let resp = h2.send_request(connect("13")).await.unwrap();
    assert_eq!(resp.status(), 200, "extended CONNECT refused");
    let upgraded = hyper::upgrade::on(resp).await.expect("the stream upgrades");
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        hyper_util::rt::TokioIo::new(upgraded),
        Role::Client,
        None,
    )
    .await;
    let next = async |ws: &mut tokio_tungstenite::WebSocketStream<_>| loop {
        let m = tokio::time::timeout(Duration::from_secs(120), ws.next())
            .await
            .expect("an answer within 120 s (a hang guard)");
        match m {
            Some(Ok(Message::Binary(b))) => {
                break Some(ServerMessage::decode(&b, &Default::default()).unwrap())
            }
            Some(Ok(Message::Close(f))) => {
                assert_eq!(f.map(|f| u16::from(f.code)), Some(1000));
                break None;
            }
            Some(Ok(_)) => continue,
            other => panic!("the WebSocket over HTTP/2 failed: {other:?}"),
        }
    };
    ws.send(Message::Binary(hello("").encode())).await.unwrap();
    assert!(matches!(
        next(&mut ws).await,
        Some(ServerMessage::Welcome(_))
    ));
    // Three times `keepalive_timeout_secs` with the session quiet: the
    // connection carries an open WebSocket, so it is not idle (an idle one
    // would have had its GOAWAY, and the next request would fail).
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        !driver.is_finished(),
        "the connection closed under an open WebSocket"
    );
    let resp = h2
        .send_request(Request::get(gw.url("/healthz")).body(Empty::new()).unwrap())
        .await
        .expect("the connection was closed under an open WebSocket");
    assert_eq!(resp.status(), 200);
    ws.send(Message::Binary(jpeg_frame(1, &data("dog.jpg")).encode()))
        .await
        .unwrap();
    match next(&mut ws).await {
        Some(ServerMessage::Detections(d)) => {
            assert_eq!((d.seq, d.usage.frames), (1, 1));
            assert!(dets_from_proto(&d).iter().any(|b| b.label == "dog"));
        }
        other => panic!("expected Detections, got {other:?}"),
    }
    ws.send(Message::Binary(
        ClientMessage::Bye(Default::default()).encode(),
    ))
    .await
    .unwrap();
    assert!(
        next(&mut ws).await.is_none(),
        "Bye is answered with a close"
    );
    drop(ws);
    // With the WebSocket gone nothing is open: the connection is closed.
    tokio::time::timeout(Duration::from_secs(10), driver)
        .await
        .expect("an HTTP/2 connection with nothing open was kept")
        .unwrap();
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("framegate_ws_upgrades_total{http=\"2\"} 1\n"),
        "{metrics}"
    );
}

async fn expect_close(ws: &mut Ws, code: ErrorCode, close: u16) -> String {
    let msg = match recv(ws).await {
        Some(ServerMessage::Error(e)) => {
            assert_eq!(e.code, code, "{e:?}");
            assert_eq!(e.seq, None);
            e.message
        }
        other => panic!("expected Error {code:?}, got {other:?}"),
    };
    assert_eq!(close_code(ws).await, Some(close));
    msg
}

#[tokio::test]
async fn protocol_violations_get_an_error_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("framegate.toml");
    std::fs::write(&cfg, "[limits]\nmax_message_bytes = 1048576\n").unwrap();
    let gw = Gateway::start(&["--config", cfg.to_str().unwrap()]).await;

    // Wrong key in Hello.
    let mut ws = ws_connect(&gw, None).await;
    send(&mut ws, &hello("wrong")).await;
    expect_close(&mut ws, ErrorCode::Unauthorized, 4001).await;

    // No key at all.
    let mut ws = ws_connect(&gw, None).await;
    send(&mut ws, &hello("")).await;
    expect_close(&mut ws, ErrorCode::Unauthorized, 4001).await;

    // A Frame before Hello, small and large (over what a Hello may be:
    // refused from its header, before the gateway buffers any of it).
    let mut ws = ws_connect(&gw, None).await;
    send(&mut ws, &jpeg_frame(1, &data("dog.jpg")[..1000])).await;
    let msg = expect_close(&mut ws, ErrorCode::ProtocolViolation, 1002).await;
    assert!(msg.contains("expected Hello first, got frame"), "{msg}");
    let mut ws = ws_connect(&gw, None).await;
    send(&mut ws, &jpeg_frame(1, &data("dog.jpg"))).await;
    let msg = expect_close(&mut ws, ErrorCode::ProtocolViolation, 1002).await;
    assert!(
        msg.contains("expected Hello first (at most 65536 bytes)"),
        "{msg}"
    );

    // Not FlatBuffers, before and after Hello.
    let mut ws = ws_connect(&gw, None).await;
    ws.send(Message::Binary(data("random.bin").into()))
        .await
        .unwrap();
    expect_close(&mut ws, ErrorCode::ProtocolViolation, 1002).await;
    let (mut ws, _) = open_session(&gw).await;
    ws.send(Message::Binary(vec![1, 2, 3, 4, 5, 6, 7, 8, 9].into()))
        .await
        .unwrap();
    expect_close(&mut ws, ErrorCode::ProtocolViolation, 1002).await;

    // Text messages are not part of the protocol.
    let (mut ws, _) = open_session(&gw).await;
    ws.send(Message::Text("hello".into())).await.unwrap();
    expect_close(&mut ws, ErrorCode::ProtocolViolation, 1002).await;

    // A message over the size limit.
    let (mut ws, _) = open_session(&gw).await;
    let big = vec![0xAB; 1_100_000];
    send(&mut ws, &jpeg_frame(1, &big)).await;
    let msg = expect_close(&mut ws, ErrorCode::PayloadTooLarge, 1009).await;
    assert!(msg.contains("1048576"), "{msg}");

    // Far over the limit (beyond the 64 KiB the WebSocket layer reads past
    // it): refused from the frame header; the gateway reads and discards
    // the rest, so the client's send completes and it reads the refusal.
    let (mut ws, _) = open_session(&gw).await;
    let huge = vec![0xCD; 4_000_000];
    send(&mut ws, &jpeg_frame(1, &huge)).await;
    let msg = expect_close(&mut ws, ErrorCode::PayloadTooLarge, 1009).await;
    assert!(msg.contains("1048576"), "{msg}");

    // Unsupported protocol version and unknown model.
    let mut ws = ws_connect(&gw, None).await;
    let mut h = hello(KEY);
    if let ClientMessage::Hello(h) = &mut h {
        h.protocol_version = 99;
    }
    send(&mut ws, &h).await;
    expect_close(&mut ws, ErrorCode::ProtocolViolation, 1002).await;
    let mut ws = ws_connect(&gw, None).await;
    let mut h = hello(KEY);
    if let ClientMessage::Hello(h) = &mut h {
        h.model = "nope".into();
    }
    send(&mut ws, &h).await;
    expect_close(&mut ws, ErrorCode::NotFound, 1008).await;

    // After all that, a good session still works.
    let (mut ws, _) = open_session(&gw).await;
    send(&mut ws, &jpeg_frame(1, &data("dog.jpg"))).await;
    assert!(matches!(recv(&mut ws).await, Some(ServerMessage::Detections(d)) if d.seq == 1));
}

#[tokio::test]
async fn pings_are_answered_with_their_payload_and_the_session_goes_on() {
    let gw = Gateway::start(&["--backend", "synthetic"]).await;
    // Pings before Hello: the latest few are answered (not one pong per
    // ping of a flood), then the Welcome.
    let mut ws = ws_connect(&gw, None).await;
    for i in 0..50 {
        ws.send(Message::Ping(format!("early {i}").into_bytes().into()))
            .await
            .unwrap();
    }
    send(&mut ws, &hello(KEY)).await;
    let mut pongs = Vec::new();
    loop {
        let next = tokio::time::timeout(std::time::Duration::from_secs(60), ws.next())
            .await
            .expect("an answer within a minute (a hang guard)");
        match next {
            Some(Ok(Message::Pong(p))) => pongs.push(String::from_utf8(p.to_vec()).unwrap()),
            Some(Ok(Message::Binary(b))) => {
                let m = ServerMessage::decode(&b, &Default::default()).unwrap();
                assert!(matches!(m, ServerMessage::Welcome(_)), "{m:?}");
                break;
            }
            other => panic!("expected pongs, then Welcome; got {other:?}"),
        }
    }
    assert_eq!(pongs, ["early 46", "early 47", "early 48", "early 49"]);

    let (mut ws, _) = open_session(&gw).await;
    let jpeg = data("dog.jpg");
    for seq in 1..=3u64 {
        let payload = format!("ping {seq}");
        ws.send(Message::Ping(payload.clone().into_bytes().into()))
            .await
            .unwrap();
        let pong = tokio::time::timeout(std::time::Duration::from_secs(60), ws.next())
            .await
            .expect("a pong within a minute (a hang guard)");
        let pong = match pong {
            Some(Ok(Message::Pong(p))) => p,
            other => panic!("expected a pong, got {other:?}"),
        };
        assert_eq!(&pong[..], payload.as_bytes());
        send(&mut ws, &jpeg_frame(seq, &jpeg)).await;
        match recv(&mut ws).await {
            Some(ServerMessage::Detections(d)) => assert_eq!(d.seq, seq),
            other => panic!("expected Detections {seq}, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_ping_flood_mid_session_gets_a_pong_for_its_latest_ping() {
    let gw = Gateway::start(&["--backend", "synthetic"]).await;
    let (mut ws, _) = open_session(&gw).await;
    // Far more pings than the writer answers one by one, sent without
    // reading, then a frame. Some pongs may be skipped (RFC 6455 allows
    // answering only the latest ping) but never the latest one's.
    const PINGS: usize = 300;
    for i in 0..PINGS {
        ws.feed(Message::Ping(format!("ping {i}").into_bytes().into()))
            .await
            .unwrap();
    }
    ws.flush().await.unwrap();
    send(&mut ws, &jpeg_frame(1, &data("dog.jpg"))).await;
    let mut pongs: Vec<usize> = Vec::new();
    let mut answered = false;
    let last = format!("ping {}", PINGS - 1);
    while !(answered && pongs.last() == Some(&(PINGS - 1))) {
        let next = tokio::time::timeout(std::time::Duration::from_secs(20), ws.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no pong for {last:?} within 20 s (answered: {answered}; {} pongs, the last {:?})",
                    pongs.len(),
                    pongs.last()
                )
            });
        match next {
            Some(Ok(Message::Pong(p))) => {
                let p = String::from_utf8(p.to_vec()).unwrap();
                let i: usize = p.strip_prefix("ping ").unwrap().parse().unwrap();
                assert!(
                    pongs.last().is_none_or(|&l| l < i),
                    "pongs out of order: {pongs:?} then {i}"
                );
                pongs.push(i);
            }
            Some(Ok(Message::Binary(b))) => {
                let m = ServerMessage::decode(&b, &Default::default()).unwrap();
                assert!(
                    matches!(m, ServerMessage::Detections(ref d) if d.seq == 1),
                    "{m:?}"
                );
                answered = true;
            }
            other => panic!("expected pongs and Detections 1, got {other:?}"),
        }
    }
    eprintln!("{} pongs for {PINGS} pings", pongs.len());
}

/// Sends a close frame with `code` and reads until the server's: the code
/// it answered with (`None` for an empty close frame). Panics when the
/// connection ends without one.
async fn close_and_read_the_answer(ws: &mut Ws, code: Option<u16>) -> Option<u16> {
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let frame = code.map(|c| CloseFrame {
        code: c.into(),
        reason: "".into(),
    });
    ws.close(frame).await.expect("send the close frame");
    loop {
        let next = tokio::time::timeout(std::time::Duration::from_secs(60), ws.next())
            .await
            .expect("an answer within a minute (a hang guard)");
        match next {
            Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
            Some(Ok(Message::Binary(_))) => continue,
            other => panic!("the connection ended without answering the close frame: {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_clients_close_frame_is_answered_and_its_session_can_be_resumed() {
    let gw = Gateway::start(&["--backend", "synthetic"]).await;
    // Before Hello, with and without a status code.
    let mut ws = ws_connect(&gw, None).await;
    assert_eq!(
        close_and_read_the_answer(&mut ws, Some(1000)).await,
        Some(1000)
    );
    let mut ws = ws_connect(&gw, None).await;
    assert_eq!(close_and_read_the_answer(&mut ws, None).await, None);
    // A code no endpoint may send: answered with 1002 (protocol error).
    let mut ws = ws_connect(&gw, None).await;
    assert_eq!(
        close_and_read_the_answer(&mut ws, Some(2000)).await,
        Some(1002)
    );

    // Mid-session: the code is echoed, and a close without Bye leaves the
    // session waiting for a resume, like a dropped connection.
    let (mut ws, welcome) = open_session(&gw).await;
    let jpeg = data("dog.jpg");
    send(&mut ws, &jpeg_frame(1, &jpeg)).await;
    assert!(matches!(recv(&mut ws).await, Some(ServerMessage::Detections(d)) if d.seq == 1));
    assert_eq!(
        close_and_read_the_answer(&mut ws, Some(4000)).await,
        Some(4000)
    );
    let mut ws = ws_connect(&gw, None).await;
    let hello = ClientMessage::Hello(framegate_protocol::Hello {
        resume_token: welcome.resume_token,
        last_received_seq: 1,
        ..framegate_protocol::Hello::new(KEY)
    });
    send(&mut ws, &hello).await;
    match recv(&mut ws).await {
        Some(ServerMessage::Welcome(w)) => assert_eq!(w.session_id, welcome.session_id),
        other => panic!("expected the session resumed, got {other:?}"),
    }
    send(&mut ws, &jpeg_frame(2, &jpeg)).await;
    assert!(matches!(recv(&mut ws).await, Some(ServerMessage::Detections(d)) if d.seq == 2));
}

#[tokio::test]
async fn frames_beyond_credits_are_refused_not_queued() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("framegate.toml");
    std::fs::write(
        &cfg,
        "[session]\ncredits = 2\n[pipeline]\nworkers = 1\nmax_batch = 1\n",
    )
    .unwrap();
    let gw = Gateway::start(&["--config", cfg.to_str().unwrap()]).await;
    let (mut ws, welcome) = open_session(&gw).await;
    assert_eq!(welcome.credits, 2);
    let jpeg = data("dog.jpg");
    for seq in 1..=6u64 {
        send(&mut ws, &jpeg_frame(seq, &jpeg)).await;
    }
    let (mut detections, mut refused) = (Vec::new(), Vec::new());
    for _ in 0..6 {
        match recv(&mut ws).await {
            Some(ServerMessage::Detections(d)) => detections.push(d.seq),
            Some(ServerMessage::Error(e)) => {
                assert_eq!(e.code, ErrorCode::NoCredit);
                assert!(e.retryable);
                refused.push(e.seq.unwrap());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    // Exactly one answer per frame; at least the first two were served.
    let mut all: Vec<u64> = detections.iter().chain(&refused).copied().collect();
    all.sort_unstable();
    assert_eq!(all, vec![1, 2, 3, 4, 5, 6]);
    assert!(detections.starts_with(&[1, 2]), "{detections:?}");
    assert!(
        !refused.is_empty(),
        "6 frames at once on 2 credits must refuse some"
    );
}

#[tokio::test]
async fn a_silent_client_is_taken_for_dead_and_a_quiet_one_is_kept() {
    // Two seconds without a byte from the client: the gateway pings after
    // a third of that, and a client that does not answer (it vanished, or
    // stopped reading) loses the connection; its session waits for a
    // resume. A client that answers pings keeps its connection however
    // long it stays quiet.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("framegate.toml");
    std::fs::write(&cfg, "[http]\nws_idle_timeout_secs = 2\n").unwrap();
    let gw = Gateway::start(&["--config", cfg.to_str().unwrap()]).await;
    let jpeg = data("dog.jpg");

    // Silent: nothing read (so no pong), nothing sent, for 4 s.
    let (mut silent, welcome) = open_session(&gw).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match silent.next().await {
                Some(Ok(Message::Ping(_))) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the connection of a silent client was kept");
    assert!(
        !matches!(ended, Some(Ok(Message::Binary(_)))),
        "unexpected message {ended:?}"
    );
    // The session itself waits for a resume.
    let mut ws = ws_connect(&gw, None).await;
    let hello = ClientMessage::Hello(framegate_protocol::Hello {
        resume_token: welcome.resume_token,
        ..framegate_protocol::Hello::new(KEY)
    });
    send(&mut ws, &hello).await;
    match recv(&mut ws).await {
        Some(ServerMessage::Welcome(w)) => assert_eq!(w.session_id, welcome.session_id),
        other => panic!("expected the session resumed, got {other:?}"),
    }

    // Quiet but alive: reading answers the gateway's pings.
    let (mut quiet, _) = open_session(&gw).await;
    let read = tokio::time::timeout(Duration::from_secs(4), async {
        loop {
            match quiet.next().await {
                Some(Ok(Message::Ping(_))) => continue,
                other => return other,
            }
        }
    })
    .await;
    assert!(
        read.is_err(),
        "the quiet connection ended or got a message: {read:?}"
    );
    send(&mut quiet, &jpeg_frame(1, &jpeg)).await;
    assert!(matches!(recv(&mut quiet).await, Some(ServerMessage::Detections(d)) if d.seq == 1));
}
