//! Resume: the client's socket is cut mid-stream (the gateway keeps
//! running); after the automatic resume every frame has exactly one answer,
//! nothing is computed twice and nothing is billed twice — over WebSocket,
//! over QUIC, and from one transport to the other.

mod support;

use std::time::Duration;

use framegate_client::{Answer, Client, Image, SessionOptions};
use framegate_protocol::{ClientMessage, Hello, ServerMessage};
use futures_util::StreamExt;
use support::*;

async fn cut_mid_stream(client: &Client, n: u64) {
    let mut s = client.session(SessionOptions::default()).await.unwrap();
    let sender = s.sender();
    let jpeg = data("dog.jpg");
    let send = tokio::spawn(async move {
        for _ in 0..n {
            sender
                .send(Image::encoded(jpeg.clone()).unwrap())
                .await
                .unwrap();
        }
    });
    let mut seqs = Vec::new();
    while (seqs.len() as u64) < n {
        let a = tokio::time::timeout(Duration::from_secs(60), s.next())
            .await
            .expect("answers keep coming")
            .expect("session alive")
            .expect("no error");
        let Answer::Detections(d) = a else {
            panic!("expected Detections, got {a:?}")
        };
        assert_eq!(d.usage.frames, d.seq, "usage exact, nothing billed twice");
        seqs.push(d.seq);
        if seqs.len() == 5 {
            // Frames are in flight both ways right now.
            s.break_connection_for_test().await;
        }
    }
    send.await.unwrap();
    s.finish().await.unwrap();
    assert!(s.next().await.is_none());
    assert_eq!(
        seqs,
        (1..=n).collect::<Vec<_>>(),
        "every seq exactly once, in order"
    );
    assert!(s.resumes() >= 1, "the session was resumed");
}

#[tokio::test]
async fn cut_socket_resumes_with_every_answer_once_over_ws_and_quic() {
    let gw = Gateway::start(&[]).await;
    let n = 24;
    let ws = Client::connect(&format!("ws://{}", gw.addr), KEY)
        .await
        .unwrap();
    cut_mid_stream(&ws, n).await;
    let quic = Client::connect(&format!("{}?pin={}", gw.quic_url(), gw.fingerprint()), KEY)
        .await
        .unwrap();
    cut_mid_stream(&quic, n).await;
    let (inferred, billed) = gw.counters().await;
    assert_eq!(inferred, 2 * n, "no frame computed twice");
    assert_eq!(billed, 2 * n, "no frame billed twice");
}

#[tokio::test]
async fn a_websocket_session_resumes_over_quic() {
    let gw = Gateway::start(&[]).await;
    let jpeg = data("dog.jpg");
    let (mut ws, welcome) = open_session(&gw).await;
    for seq in 1..=3 {
        send(&mut ws, &jpeg_frame(seq, &jpeg)).await;
    }
    // The first answer arrives; then the socket dies with two in flight.
    match recv(&mut ws).await {
        Some(ServerMessage::Detections(d)) => assert_eq!(d.seq, 1),
        other => panic!("{other:?}"),
    }
    drop(ws);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let ep = quic::endpoint(&gw);
    let conn = quic::connect(&ep, &gw).await.unwrap();
    let (mut tx, mut rx) = conn.open_bi().await.unwrap();
    let hello = ClientMessage::Hello(Hello {
        resume_token: welcome.resume_token.clone(),
        last_received_seq: 1,
        ..Hello::new(KEY)
    });
    quic::send(&mut tx, &hello).await;
    match quic::recv(&mut rx).await {
        Some(ServerMessage::Welcome(w)) => {
            assert_eq!(w.session_id, welcome.session_id, "the same session");
            assert_eq!(w.received_seq, 3, "all three frames reached the gateway");
            assert_eq!(
                w.credits,
                welcome.credits - 2,
                "answers of 2 and 3 are owed"
            );
        }
        other => panic!("expected Welcome, got {other:?}"),
    }
    for seq in 2..=3 {
        match quic::recv(&mut rx).await {
            Some(ServerMessage::Detections(d)) => {
                assert_eq!(d.seq, seq);
                assert_eq!(d.usage.frames, seq);
            }
            other => panic!("expected Detections {seq}, got {other:?}"),
        }
    }
    // The session goes on over QUIC.
    quic::send(&mut tx, &jpeg_frame(4, &jpeg)).await;
    match quic::recv(&mut rx).await {
        Some(ServerMessage::Detections(d)) => assert_eq!((d.seq, d.usage.frames), (4, 4)),
        other => panic!("{other:?}"),
    }
    quic::send(&mut tx, &ClientMessage::Bye(Default::default())).await;
    assert_eq!(quic::close_code(&conn).await, Some(1000));
    assert_eq!(gw.counters().await, (4, 4));

    // After Bye the token is gone; a stale or foreign token is refused.
    let mut ws = ws_connect(&gw, None).await;
    let hello = ClientMessage::Hello(Hello {
        resume_token: welcome.resume_token,
        ..Hello::new(KEY)
    });
    send(&mut ws, &hello).await;
    match recv(&mut ws).await {
        Some(ServerMessage::Error(e)) => {
            assert_eq!(e.code, framegate_protocol::ErrorCode::NotFound);
            assert_eq!(e.seq, None);
        }
        other => panic!("expected a refused resume, got {other:?}"),
    }
    assert_eq!(close_code(&mut ws).await, Some(1008));
}
