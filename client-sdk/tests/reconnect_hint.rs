//! A session that lost its connection reconnects no sooner than the
//! gateway's retry hint says. The gateway here is a scripted WebSocket peer
//! (the real gateway's hints are tested in the server's `rate_limits`): the
//! first connection is welcomed and then cut, the first reconnect is
//! refused `rate-limited` with a 700 ms hint, the next is welcomed back.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use framegate_client::{Client, SessionOptions};
use framegate_protocol::{
    ClientMessage, DecodeLimits, ErrorCode, ErrorMessage, ServerMessage, Welcome,
};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const HINT_MS: u32 = 700;

/// What the scripted gateway saw: when each connection came, and the
/// resume token its Hello carried.
type Seen = Arc<Mutex<Vec<(Instant, String)>>>;

async fn scripted_gateway() -> (std::net::SocketAddr, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        for n in 1.. {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let at = Instant::now();
            let log = log.clone();
            tokio::spawn(async move {
                let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
                let hello = loop {
                    match ws.next().await {
                        Some(Ok(Message::Binary(b))) => {
                            match ClientMessage::decode(&b, &DecodeLimits::default()).unwrap() {
                                ClientMessage::Hello(h) => break h,
                                other => panic!("expected Hello, got {}", other.kind()),
                            }
                        }
                        Some(Ok(_)) => continue,
                        _ => return,
                    }
                };
                log.lock().unwrap().push((at, hello.resume_token.clone()));
                let welcome = ServerMessage::Welcome(Welcome {
                    session_id: "s-1".into(),
                    resume_token: "resume-me".into(),
                    credits: 4,
                    ..Default::default()
                });
                let reply = match n {
                    2 => ServerMessage::Error(ErrorMessage {
                        code: ErrorCode::RateLimited,
                        message: "too many sessions, try later".into(),
                        retryable: true,
                        seq: None,
                        retry_after_ms: Some(HINT_MS),
                    }),
                    _ => welcome,
                };
                ws.send(Message::Binary(reply.encode())).await.unwrap();
                if n == 1 {
                    // Cut: the client has to come back.
                    drop(ws);
                    return;
                }
                // Hold the connection until the client goes.
                while let Some(Ok(_)) = ws.next().await {}
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn a_reconnect_waits_at_least_the_gateways_retry_hint() {
    let (addr, seen) = scripted_gateway().await;
    let client = Client::connect(&format!("ws://{addr}"), "fg_test_key")
        .await
        .unwrap();
    let backoff = Duration::from_millis(20);
    let session = client
        .session(SessionOptions::default().reconnect_backoff(backoff))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while session.resumes() < 1 {
        assert!(
            Instant::now() < deadline,
            "no resume: {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() >= 3, "{seen:?}");
    assert_eq!(seen[0].1, "", "a fresh session first");
    assert_eq!(seen[1].1, "resume-me", "then a resume");
    assert_eq!(
        seen[2].1, "resume-me",
        "and a resume again after the refusal"
    );
    // The refused try came after the backoff alone; the next one waited for
    // the hint, far longer than the backoff (20 ms, then 40 ms).
    let waited = seen[2].0 - seen[1].0;
    assert!(
        waited >= Duration::from_millis(u64::from(HINT_MS)),
        "reconnected {waited:?} after a refusal that asked for {HINT_MS} ms"
    );
}
