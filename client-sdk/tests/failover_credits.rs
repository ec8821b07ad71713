//! Under `block`, frames re-sent after a failover wait for the new
//! gateway's credits as new frames would. Before, every unanswered frame
//! was re-sent at once, and a gateway that gave fewer credits than the old
//! one refused the surplus (`no-credit`). The gateways here are a scripted
//! WebSocket peer: the first session gives 4 credits, takes 4 frames and
//! goes away without answering; the second gives 2 and answers each frame
//! 100 ms after it arrives, recording how many it held unanswered at most.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use framegate_client::{Answer, Client, SessionOptions};
use framegate_protocol::{ClientMessage, DecodeLimits, Detections, ServerMessage};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// Starts a scripted gateway: connection `n` (from 1) is served by
/// `script(n, ws, counter)`, every one with the same counter (what the
/// script counts: frames held, frames taken).
async fn scripted_gateway<F, Fut>(script: F) -> (String, Arc<AtomicUsize>)
where
    F: Fn(usize, Ws, Arc<AtomicUsize>) -> Fut + Copy + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let counter = Arc::new(AtomicUsize::new(0));
    let shared = counter.clone();
    tokio::spawn(async move {
        for n in 1.. {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                if let Some((ws, _)) = support::accept_hello(tcp).await {
                    script(n, ws, shared).await;
                }
            });
        }
    });
    (format!("ws://{addr}"), counter)
}

/// A session (20 ms reconnect backoff) on `url` sends 4 frames; each is
/// answered with Detections, in order.
async fn four_frames_answered(url: &str) -> framegate_client::Session {
    let client = Client::connect(url, "fg_test_key").await.unwrap();
    let mut session = client
        .session(SessionOptions::default().reconnect_backoff(Duration::from_millis(20)))
        .await
        .unwrap();
    for _ in 0..4 {
        session.send(support::dog()).await.unwrap();
    }
    let mut seqs = Vec::new();
    while seqs.len() < 4 {
        let a = tokio::time::timeout(Duration::from_secs(10), session.next())
            .await
            .expect("answers within 10 s")
            .expect("session alive");
        match a {
            Ok(Answer::Detections(d)) => seqs.push(d.seq),
            other => panic!("expected Detections, got {other:?}"),
        }
    }
    assert_eq!(seqs, [1, 2, 3, 4]);
    session
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

fn frame_seq(m: &Message) -> Option<u64> {
    let Message::Binary(b) = m else { return None };
    match ClientMessage::decode(b, &DecodeLimits::default()) {
        Ok(ClientMessage::Frame(f)) => Some(f.seq),
        _ => None,
    }
}

async fn first_session(mut ws: Ws) {
    ws.send(Message::Binary(support::welcome(4).encode()))
        .await
        .unwrap();
    let mut frames = 0;
    while frames < 4 {
        match ws.next().await {
            Some(Ok(m)) => frames += usize::from(frame_seq(&m).is_some()),
            _ => return,
        }
    }
    let _ = ws
        .close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: "going away".into(),
        }))
        .await;
}

async fn second_session(ws: Ws, most: Arc<AtomicUsize>) {
    let (mut tx, mut rx) = ws.split();
    tx.send(Message::Binary(support::welcome(2).encode()))
        .await
        .unwrap();
    let held = Arc::new(AtomicUsize::new(0));
    let (answer_tx, mut answer_rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let writer_held = held.clone();
    tokio::spawn(async move {
        while let Some(seq) = answer_rx.recv().await {
            tokio::time::sleep(Duration::from_millis(100)).await;
            writer_held.fetch_sub(1, Ordering::SeqCst);
            let answer = ServerMessage::Detections(Detections {
                seq,
                model: "scripted".into(),
                ..Default::default()
            });
            if tx.send(Message::Binary(answer.encode())).await.is_err() {
                return;
            }
        }
    });
    while let Some(Ok(m)) = rx.next().await {
        if let Some(seq) = frame_seq(&m) {
            let now = held.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            let _ = answer_tx.send(seq);
        }
    }
}

#[tokio::test]
async fn frames_resent_after_a_failover_wait_for_the_new_gateways_credits() {
    // The counter: the most frames the second session held unanswered.
    let (url, most) = scripted_gateway(|n, ws, most| async move {
        if n == 1 {
            first_session(ws).await;
        } else {
            second_session(ws, most).await;
        }
    })
    .await;
    let session = four_frames_answered(&url).await;
    assert_eq!(session.failovers(), 1);
    assert_eq!(
        most.load(Ordering::SeqCst),
        2,
        "the second gateway held more frames than the 2 credits it gave"
    );
}

/// A gateway that gives notice while re-sends still wait for its credits
/// gets none of them: they go to the next. Here the second session gives 1
/// credit, takes the first re-sent frame, gives the going-away notice,
/// answers it 50 ms later and goes away 300 ms after that; the third
/// takes the rest.
#[tokio::test]
async fn no_resend_goes_to_a_gateway_going_away() {
    // The counter: the frames the second session took.
    let (url, second_got) = scripted_gateway(|n, ws, got| async move {
        match n {
            1 => first_session(ws).await,
            2 => leaving_session(ws, got).await,
            _ => second_session(ws, Arc::default()).await,
        }
    })
    .await;
    let session = four_frames_answered(&url).await;
    assert_eq!(session.failovers(), 2);
    assert_eq!(
        second_got.load(Ordering::SeqCst),
        1,
        "frames sent to the gateway after its going-away notice"
    );
}

/// Welcome with 1 credit; on the first frame the going-away notice, its
/// answer, and the going-away close; counts the frames it got.
async fn leaving_session(mut ws: Ws, got: Arc<AtomicUsize>) {
    ws.send(Message::Binary(support::welcome(1).encode()))
        .await
        .unwrap();
    let Some(seq) = next_frame(&mut ws, &got).await else {
        return;
    };
    let notice = ServerMessage::Error(framegate_protocol::ErrorMessage {
        code: framegate_protocol::ErrorCode::GoingAway,
        message: "going away".into(),
        retryable: true,
        seq: None,
        retry_after_ms: None,
    });
    ws.send(Message::Binary(notice.encode())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let answer = ServerMessage::Detections(Detections {
        seq,
        model: "scripted".into(),
        ..Default::default()
    });
    ws.send(Message::Binary(answer.encode())).await.unwrap();
    // Whatever comes in the next 300 ms is counted.
    let _ = tokio::time::timeout(Duration::from_millis(300), async {
        while next_frame(&mut ws, &got).await.is_some() {}
    })
    .await;
    let _ = ws
        .close(Some(CloseFrame {
            code: CloseCode::Away,
            reason: "going away".into(),
        }))
        .await;
}

/// The next frame's seq (counted in `got`); `None` when the client left.
async fn next_frame(ws: &mut Ws, got: &AtomicUsize) -> Option<u64> {
    while let Some(Ok(m)) = ws.next().await {
        if let Some(seq) = frame_seq(&m) {
            got.fetch_add(1, Ordering::SeqCst);
            return Some(seq);
        }
    }
    None
}
