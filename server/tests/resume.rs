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

/// A client that said Bye and lost its connection before the last answers
/// resumes to get them, billed once. Before, the session ended with the
/// connection, the resume was refused (`not-found`), and a client that then
/// started afresh (the SDK fails over) sent those frames again and was
/// billed for them twice.
///
/// One frame at a time, 500 ms each (a synthetic backend), so the gateway
/// finds the connection gone when it writes the second answer, with the
/// third still to compute. (Had every answer gone out in one write before
/// the gateway noticed, the session would have ended normally: it cannot
/// tell answers written to a dead socket from answers read.)
#[tokio::test]
async fn a_session_that_said_bye_resumes_for_its_last_answers() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = support::usage::write_config(
        dir.path(),
        "[pipeline]\nmax_batch = 1\nworkers = 1\n\
         [synthetic]\nfixed_us = 500000\nwait = \"sleep\"\n",
    );
    let gw = Gateway::start(&["--backend", "synthetic", "--config", cfg.to_str().unwrap()]).await;
    let jpeg = data("dog.jpg");
    let (mut ws, welcome) = open_session(&gw).await;
    for seq in 1..=3 {
        send(&mut ws, &jpeg_frame(seq, &jpeg)).await;
    }
    send(&mut ws, &ClientMessage::Bye(Default::default())).await;
    drop(ws);
    // The second answer (at 1 s) fails to go out; the third is computed
    // (at 1.5 s) while the session waits for a resume.
    tokio::time::sleep(Duration::from_millis(2000)).await;

    let mut ws = ws_connect(&gw, None).await;
    let hello = ClientMessage::Hello(Hello {
        resume_token: welcome.resume_token.clone(),
        last_received_seq: 0,
        ..Hello::new(KEY)
    });
    send(&mut ws, &hello).await;
    match recv(&mut ws).await {
        Some(ServerMessage::Welcome(w)) => {
            assert_eq!(w.session_id, welcome.session_id, "the same session");
            assert_eq!(w.received_seq, 3);
        }
        other => panic!("expected Welcome, got {other:?}"),
    }
    for seq in 1..=3 {
        match recv(&mut ws).await {
            Some(ServerMessage::Detections(d)) => {
                assert_eq!((d.seq, d.usage.frames), (seq, seq), "billed once");
            }
            other => panic!("expected Detections {seq}, got {other:?}"),
        }
    }
    // Then the close that Bye asked for; the token is gone with it.
    assert_eq!(close_code(&mut ws).await, Some(1000));
    assert_eq!(gw.counters().await, (3, 3));
    let mut ws = ws_connect(&gw, None).await;
    send(&mut ws, &hello).await;
    match recv(&mut ws).await {
        Some(ServerMessage::Error(e)) => {
            assert_eq!(e.code, framegate_protocol::ErrorCode::NotFound)
        }
        other => panic!("expected a refused resume, got {other:?}"),
    }
}

/// The SDK's side of the same: `finish()`, then the connection breaks
/// while the frames are still being computed (a synthetic backend taking
/// 1 s a batch); the session resumes rather than starting afresh, and
/// every frame is answered and billed once. Before, the gateway ended the
/// session on the broken connection, and the SDK's failover re-sent the
/// four frames: eight billed.
#[tokio::test]
async fn the_sdk_resumes_after_finish_for_its_last_answers() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = support::usage::write_config(
        dir.path(),
        "[synthetic]\nfixed_us = 1000000\nwait = \"sleep\"\n",
    );
    let gw = Gateway::start(&["--backend", "synthetic", "--config", cfg.to_str().unwrap()]).await;
    let client = Client::connect(&format!("ws://{}", gw.addr), KEY)
        .await
        .unwrap();
    let mut s = client.session(SessionOptions::default()).await.unwrap();
    let jpeg = data("dog.jpg");
    for _ in 0..4 {
        s.send(Image::encoded(jpeg.clone()).unwrap()).await.unwrap();
    }
    s.finish().await.unwrap();
    // `finish()` returns once Bye is queued: give it time to reach the
    // gateway (the frames take a second), then break the connection.
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.break_connection_for_test().await;
    let mut seqs = Vec::new();
    while let Some(a) = tokio::time::timeout(Duration::from_secs(60), s.next())
        .await
        .expect("answers keep coming")
    {
        match a.expect("no error") {
            Answer::Detections(d) => {
                assert_eq!(d.usage.frames, d.seq, "billed once");
                seqs.push(d.seq);
            }
            other => panic!("expected Detections, got {other:?}"),
        }
    }
    assert_eq!(seqs, [1, 2, 3, 4]);
    assert_eq!(s.failovers(), 0, "resumed, not started afresh");
    assert_eq!(s.resumes(), 1);
    assert_eq!(gw.counters().await, (4, 4));
}
