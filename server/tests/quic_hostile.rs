//! Hostile QUIC input — garbage UDP, garbage datagrams, a stream that never
//! finishes a message, an oversized length prefix, a flood of connections,
//! a client that grants no flow-control credit — is refused cleanly, and a
//! session running alongside never notices.

mod support;

use std::time::Duration;

use framegate_client::{Answer, Client, Image, SessionOptions};
use framegate_protocol::{ClientMessage, Hello, ServerMessage};
use futures_util::StreamExt;
use support::*;

/// The bystander: one frame, one Detections.
async fn still_served(s: &mut framegate_client::Session, jpeg: &[u8]) {
    let seq = s
        .send(Image::encoded(jpeg.to_vec()).unwrap())
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(30), s.next()).await {
        Ok(Some(Ok(Answer::Detections(d)))) => assert_eq!(d.seq, seq),
        other => panic!("the bystander session was disturbed: {other:?}"),
    }
}

#[tokio::test]
async fn hostile_quic_input_is_refused_and_other_sessions_are_unaffected() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("framegate.toml");
    std::fs::write(
        &cfg,
        "[limits]\nmax_message_bytes = 1048576\n[quic]\nmax_connections = 12\nhandshake_timeout_secs = 2\n",
    )
    .unwrap();
    let gw = Gateway::start(&["--config", cfg.to_str().unwrap()]).await;
    let addr = gw.quic.as_ref().unwrap().0;
    let jpeg = data("dog.jpg");
    let client = Client::connect(&format!("{}?pin={}", gw.quic_url(), gw.fingerprint()), KEY)
        .await
        .unwrap();
    let mut bystander = client.session(SessionOptions::default()).await.unwrap();
    still_served(&mut bystander, &jpeg).await;

    // 1. Garbage UDP packets at the QUIC port.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let garbage = data("random.bin");
    for i in 0..500 {
        let n = 1 + (i * 37) % garbage.len().min(1400);
        udp.send_to(&garbage[..n], addr).await.unwrap();
    }
    still_served(&mut bystander, &jpeg).await;

    let ep = quic::endpoint(&gw);

    // 2. A garbage datagram on an authenticated datagram session: 1002.
    let conn = quic::connect(&ep, &gw).await.unwrap();
    let (mut tx, mut rx) = conn.open_bi().await.unwrap();
    let hello = ClientMessage::Hello(Hello {
        datagrams: true,
        ..Hello::new(KEY)
    });
    quic::send(&mut tx, &hello).await;
    assert!(matches!(
        quic::recv(&mut rx).await,
        Some(ServerMessage::Welcome(_))
    ));
    conn.send_datagram(garbage[..200].to_vec().into()).unwrap();
    match quic::recv(&mut rx).await {
        Some(ServerMessage::Error(e)) => {
            assert_eq!(e.code, framegate_protocol::ErrorCode::ProtocolViolation);
            assert_eq!(e.seq, None);
        }
        other => panic!("expected a protocol Error, got {other:?}"),
    }
    assert_eq!(quic::close_code(&conn).await, Some(1002));

    // 3. A stream that never finishes its first message: closed by the
    //    handshake timeout, nothing allocated for the announced body.
    let conn = quic::connect(&ep, &gw).await.unwrap();
    let (mut tx, _rx) = conn.open_bi().await.unwrap();
    tx.write_all(&[0, 0, 4, 0, 1, 2, 3]).await.unwrap(); // 1024 announced, 3 sent
    assert_eq!(quic::close_code(&conn).await, Some(1002));

    // 4. An oversized length prefix: before Hello, anything over 64 KiB
    //    is refused at once (1002); after Hello, over max_message_bytes
    //    (1009). Nothing of the body is read.
    let conn = quic::connect(&ep, &gw).await.unwrap();
    let (mut tx, mut rx) = conn.open_bi().await.unwrap();
    tx.write_all(&100_000u32.to_be_bytes()).await.unwrap();
    match quic::recv(&mut rx).await {
        Some(ServerMessage::Error(e)) => {
            assert_eq!(e.code, framegate_protocol::ErrorCode::ProtocolViolation);
            assert!(e.message.contains("expected Hello first"), "{e:?}");
        }
        other => panic!("expected protocol-violation, got {other:?}"),
    }
    assert_eq!(quic::close_code(&conn).await, Some(1002));
    let conn = quic::connect(&ep, &gw).await.unwrap();
    let (mut tx, mut rx) = conn.open_bi().await.unwrap();
    quic::send(&mut tx, &ClientMessage::Hello(Hello::new(KEY))).await;
    assert!(matches!(
        quic::recv(&mut rx).await,
        Some(ServerMessage::Welcome(_))
    ));
    tx.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    match quic::recv(&mut rx).await {
        Some(ServerMessage::Error(e)) => {
            assert_eq!(e.code, framegate_protocol::ErrorCode::PayloadTooLarge)
        }
        other => panic!("expected payload-too-large, got {other:?}"),
    }
    assert_eq!(quic::close_code(&conn).await, Some(1009));
    still_served(&mut bystander, &jpeg).await;

    // 5. A flood of connections: beyond max_connections they are refused;
    //    those accepted but silent are closed by the handshake timeout.
    let mut attempts = Vec::new();
    for _ in 0..40 {
        let ep = ep.clone();
        let gwaddr = addr;
        attempts.push(tokio::spawn(async move {
            match ep.connect(gwaddr, "localhost").unwrap().await {
                Ok(c) => Ok(c),
                Err(e) => Err(e.to_string()),
            }
        }));
    }
    let mut held = Vec::new();
    let mut refused = 0;
    for a in attempts {
        match a.await.unwrap() {
            Ok(c) => held.push(c),
            Err(_) => refused += 1,
        }
    }
    assert!(
        refused > 0,
        "40 connections over a limit of 12 must refuse some"
    );
    still_served(&mut bystander, &jpeg).await;
    for c in &held {
        assert_eq!(
            quic::close_code(c).await,
            Some(1002),
            "silent connections time out"
        );
    }
    // Capacity comes back once they are gone.
    let conn = quic::connect(&ep, &gw)
        .await
        .expect("accepted again after the flood");
    let (mut tx, mut rx) = conn.open_bi().await.unwrap();
    quic::send(&mut tx, &ClientMessage::Hello(Hello::new(KEY))).await;
    assert!(matches!(
        quic::recv(&mut rx).await,
        Some(ServerMessage::Welcome(_))
    ));
    still_served(&mut bystander, &jpeg).await;
}

#[tokio::test]
async fn a_client_that_takes_no_answer_cannot_hold_a_connection_slot() {
    // One connection slot. A client that grants the gateway no stream
    // credit (so the refusal it provokes can never be written) and keeps
    // its connection alive must not keep that slot for ever.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("framegate.toml");
    std::fs::write(&cfg, "[quic]\nmax_connections = 1\n").unwrap();
    let gw = Gateway::start(&["--config", cfg.to_str().unwrap()]).await;
    let mut stingy = quinn::TransportConfig::default();
    stingy
        .stream_receive_window(0u32.into())
        .receive_window(0u32.into())
        .keep_alive_interval(Some(Duration::from_millis(300)));
    let hostile_ep = quic::endpoint_with(&gw, stingy);
    let hostile = quic::connect(&hostile_ep, &gw).await.unwrap();
    let (mut tx, _rx) = hostile.open_bi().await.unwrap();
    tx.write_all(&u32::MAX.to_be_bytes()).await.unwrap(); // refused: 1002
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A well-behaved client gets the slot once the refusal's bounded write
    // gives up (2 s) and the hostile connection is closed.
    let ep = quic::endpoint(&gw);
    let started = std::time::Instant::now();
    let conn = loop {
        match quic::connect(&ep, &gw).await {
            Ok(c) => break c,
            Err(_) if started.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("the slot is still held after 10 s: {e}"),
        }
    };
    let (mut tx, mut rx) = conn.open_bi().await.unwrap();
    quic::send(&mut tx, &ClientMessage::Hello(Hello::new(KEY))).await;
    assert!(matches!(
        quic::recv(&mut rx).await,
        Some(ServerMessage::Welcome(_))
    ));
    assert_eq!(quic::close_code(&hostile).await, Some(1002));
}
