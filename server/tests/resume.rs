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

/// `framegate_sessions_open` once it reads `want`, or after 3 s.
async fn sessions_open_settles_at(gw: &Gateway, want: u64) -> u64 {
    gw.sessions_open_within(want, Duration::from_secs(3)).await
}

/// A gateway on the synthetic backend taking `fixed_us` a frame, one frame
/// at a time.
async fn slow_gateway(dir: &std::path::Path, fixed_us: u64) -> Gateway {
    let cfg = support::usage::write_config(
        dir,
        &format!(
            "[pipeline]\nmax_batch = 1\nworkers = 1\n\
             [synthetic]\nfixed_us = {fixed_us}\nwait = \"sleep\"\n"
        ),
    );
    Gateway::start(&["--backend", "synthetic", "--config", cfg.to_str().unwrap()]).await
}

/// A session on `gw` that sent frames 1 to `n` (dog.jpg), then Bye.
async fn frames_then_bye(gw: &Gateway, n: u64) -> (Ws, framegate_protocol::Welcome) {
    let jpeg = data("dog.jpg");
    let (mut ws, welcome) = open_session(gw).await;
    for seq in 1..=n {
        send(&mut ws, &jpeg_frame(seq, &jpeg)).await;
    }
    send(&mut ws, &ClientMessage::Bye(Default::default())).await;
    (ws, welcome)
}

/// Hello with `token` over a new WebSocket connection: the connection and
/// the gateway's first answer.
async fn try_resume(
    gw: &Gateway,
    token: &str,
    last_received_seq: u64,
) -> (Ws, Option<ServerMessage>) {
    let mut ws = ws_connect(gw, None).await;
    let hello = ClientMessage::Hello(Hello {
        resume_token: token.to_string(),
        last_received_seq,
        ..Hello::new(KEY)
    });
    send(&mut ws, &hello).await;
    let first = recv(&mut ws).await;
    (ws, first)
}

fn assert_refused(first: Option<ServerMessage>) {
    match first {
        Some(ServerMessage::Error(e)) => {
            assert_eq!(e.code, framegate_protocol::ErrorCode::NotFound)
        }
        other => panic!("expected a refused resume, got {other:?}"),
    }
}

/// A client that said Bye and lost its connection before the last answers
/// resumes to get them, billed once; its answer to the gateway's close then
/// ends the session for good. Before, the session ended with the
/// connection, the resume was refused (`not-found`), and a client that then
/// started afresh (the SDK fails over) sent those frames again and was
/// billed for them twice.
#[tokio::test]
async fn a_session_that_said_bye_resumes_for_its_last_answers() {
    let dir = tempfile::tempdir().unwrap();
    let gw = slow_gateway(dir.path(), 500_000).await;
    let (ws, welcome) = frames_then_bye(&gw, 3).await;
    // Gone without a close frame: a lost connection.
    drop(ws);
    tokio::time::sleep(Duration::from_millis(2000)).await;

    let (mut ws, first) = try_resume(&gw, &welcome.resume_token, 0).await;
    match first {
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
    // Then the close that Bye asked for, answered: the session is gone.
    assert_eq!(close_code(&mut ws).await, Some(1000));
    assert_eq!(gw.counters().await, (3, 3));
    assert_eq!(sessions_open_settles_at(&gw, 0).await, 0);
    assert_refused(try_resume(&gw, &welcome.resume_token, 3).await.1);
}

/// A connection that breaks after Bye, with the last answer and the
/// gateway's close on their way but not read (the client's socket is reset:
/// it closes with them unread), leaves the session to a resume, which gets
/// that answer, billed once, and the close again. A client that read the
/// close and ended the connection cleanly, without answering it, ends the
/// session.
#[tokio::test]
async fn a_close_not_read_after_bye_can_be_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let gw = slow_gateway(dir.path(), 1_000).await;
    let (ws, welcome) = frames_then_bye(&gw, 1).await;
    // The answer and the close arrive, unread; dropping the socket with
    // them unread resets the connection.
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(ws);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sessions_open_settles_at(&gw, 1).await,
        1,
        "held for a resume"
    );
    let (mut ws, first) = try_resume(&gw, &welcome.resume_token, 0).await;
    assert!(
        matches!(first, Some(ServerMessage::Welcome(_))),
        "{first:?}"
    );
    match recv(&mut ws).await {
        Some(ServerMessage::Detections(d)) => assert_eq!((d.seq, d.usage.frames), (1, 1)),
        other => panic!("expected Detections 1 again, got {other:?}"),
    }
    // This time the close is read, not answered, and the connection ends
    // cleanly.
    match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
        Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(Some(f))))) => {
            assert_eq!(u16::from(f.code), 1000)
        }
        other => panic!("expected the close, got {other:?}"),
    }
    drop(ws);
    assert_eq!(sessions_open_settles_at(&gw, 0).await, 0);
    assert_eq!(gw.counters().await, (1, 1));
    assert_refused(try_resume(&gw, &welcome.resume_token, 1).await.1);
}

/// A client may close right after Bye when it needs no more answers: its
/// close frame ends the session at once (it holds no `max_sessions` slot
/// and computes nothing more for a resume that will not come).
#[tokio::test]
async fn a_client_that_closes_right_after_bye_ends_its_session() {
    let dir = tempfile::tempdir().unwrap();
    let gw = slow_gateway(dir.path(), 1_000_000).await;
    let (mut ws, welcome) = frames_then_bye(&gw, 3).await;
    ws.close(None).await.unwrap();
    // The close is answered (before the session lets go of the connection).
    match tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
        Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_)))) => {}
        other => panic!("expected the close answered, got {other:?}"),
    }
    // Well before the first answer (at 1 s) is due: the gateway does not
    // wait for a write to fail.
    let open = gw.sessions_open_within(0, Duration::from_millis(600)).await;
    assert_eq!(open, 0, "the session outlived its client's close");
    assert_refused(try_resume(&gw, &welcome.resume_token, 0).await.1);
}

/// Over QUIC the client's acknowledgement of the stream's end, or its own
/// close of the connection right after Bye, ends the session at once.
#[tokio::test]
async fn over_quic_the_end_of_a_session_is_confirmed_by_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let gw = slow_gateway(dir.path(), 300_000).await;
    let jpeg = data("dog.jpg");
    let ep = quic::endpoint(&gw);
    for close_at_once in [false, true] {
        let conn = quic::connect(&ep, &gw).await.unwrap();
        let (mut tx, mut rx) = conn.open_bi().await.unwrap();
        quic::send(&mut tx, &hello(KEY)).await;
        let Some(ServerMessage::Welcome(welcome)) = quic::recv(&mut rx).await else {
            panic!("expected Welcome")
        };
        quic::send(&mut tx, &jpeg_frame(1, &jpeg)).await;
        quic::send(&mut tx, &ClientMessage::Bye(Default::default())).await;
        if close_at_once {
            // Once Bye has reached the gateway (a close discards what is
            // still unsent), well before the frame's answer.
            tokio::time::sleep(Duration::from_millis(100)).await;
            conn.close(0u32.into(), b"done");
            tokio::time::sleep(Duration::from_millis(50)).await;
        } else {
            match quic::recv(&mut rx).await {
                Some(ServerMessage::Detections(d)) => assert_eq!(d.seq, 1),
                other => panic!("expected Detections, got {other:?}"),
            }
            assert_eq!(quic::close_code(&conn).await, Some(1000));
        }
        assert_eq!(
            sessions_open_settles_at(&gw, 0).await,
            0,
            "closed at once: {close_at_once}"
        );
        assert_refused(try_resume(&gw, &welcome.resume_token, 1).await.1);
    }
}

/// The SDK's side: `finish()`, then the connection breaks while the frames
/// are still being computed (a synthetic backend taking 1 s a batch); the
/// session resumes rather than starting afresh, and every frame is answered
/// and billed once. Before, the gateway ended the session on the broken
/// connection, and the SDK's failover re-sent the four frames: eight
/// billed. At the end the SDK answers the gateway's close, so the session
/// does not linger for a resume.
#[tokio::test]
async fn the_sdk_resumes_after_finish_for_its_last_answers() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = support::usage::write_config(
        dir.path(),
        "[synthetic]\nfixed_us = 1000000\nwait = \"sleep\"\n",
    );
    let gw = Gateway::start(&["--backend", "synthetic", "--config", cfg.to_str().unwrap()]).await;
    let jpeg = data("dog.jpg");
    let urls = [
        format!("ws://{}", gw.addr),
        format!("{}?pin={}", gw.quic_url(), gw.fingerprint()),
    ];
    for (round, url) in (1..).zip(urls) {
        let client = Client::connect(&url, KEY).await.unwrap();
        let mut s = client.session(SessionOptions::default()).await.unwrap();
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
        assert_eq!(seqs, [1, 2, 3, 4], "{url}");
        assert_eq!(s.failovers(), 0, "resumed, not started afresh: {url}");
        assert_eq!(s.resumes(), 1, "{url}");
        assert_eq!(gw.counters().await, (4 * round, 4 * round), "{url}");
        let open = sessions_open_settles_at(&gw, 0).await;
        assert_eq!(open, 0, "the end was confirmed: {url}");
    }
}

/// A session held for a resume after Bye does not hold up a graceful
/// shutdown.
#[tokio::test]
async fn a_session_held_after_bye_does_not_delay_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let mut gw = slow_gateway(dir.path(), 500_000).await;
    let (ws, _) = frames_then_bye(&gw, 1).await;
    drop(ws);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        sessions_open_settles_at(&gw, 1).await,
        1,
        "held for a resume"
    );
    let started = std::time::Instant::now();
    assert!(gw.terminate().success());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
}

/// The SDK's plain end: `finish()`, every answer, and the gateway's close
/// answered (WebSocket) or its stream's end acknowledged (QUIC), so the
/// session ends at once rather than waiting out the resume window.
#[tokio::test]
async fn a_finished_sdk_session_ends_at_once_over_ws_and_quic() {
    let gw = Gateway::start(&["--backend", "synthetic"]).await;
    let jpeg = data("dog.jpg");
    for url in [
        format!("ws://{}", gw.addr),
        format!("{}?pin={}", gw.quic_url(), gw.fingerprint()),
    ] {
        let client = Client::connect(&url, KEY).await.unwrap();
        let mut s = client.session(SessionOptions::default()).await.unwrap();
        for _ in 0..3 {
            s.send(Image::encoded(jpeg.clone()).unwrap()).await.unwrap();
        }
        s.finish().await.unwrap();
        let mut answered = 0;
        while let Some(a) = s.next().await {
            assert!(matches!(a, Ok(Answer::Detections(_))), "{a:?}");
            answered += 1;
        }
        assert_eq!(answered, 3);
        assert_eq!(sessions_open_settles_at(&gw, 0).await, 0, "{url}");
    }
}
