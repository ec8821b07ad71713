//! After `finish()` (Bye queued) a frame is refused at once: before, `send`
//! returned a seq for a frame the session never sent nor answered. The
//! gateway here is a scripted WebSocket peer that welcomes the session and
//! counts what it receives until Bye.

mod support;

use std::time::Duration;

use framegate_client::{Client, ClientError, SessionOptions};
use framegate_protocol::{ClientMessage, DecodeLimits};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn a_frame_sent_after_finish_is_refused_not_lost() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gateway = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let (mut ws, _hello) = support::accept_hello(tcp).await.expect("a Hello");
        ws.send(Message::Binary(support::welcome(4).encode()))
            .await
            .unwrap();
        let mut frames = 0;
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Binary(b) = m {
                match ClientMessage::decode(&b, &DecodeLimits::default()).unwrap() {
                    ClientMessage::Frame(_) => frames += 1,
                    ClientMessage::Bye(_) => {
                        let _ = ws.close(None).await;
                        break;
                    }
                    _ => {}
                }
            }
        }
        frames
    });
    let client = Client::connect(&format!("ws://{addr}"), "fg_test_key")
        .await
        .unwrap();
    let mut session = client.session(SessionOptions::default()).await.unwrap();
    let sender = session.sender();
    session.finish().await.unwrap();
    let sent = sender.send(support::dog()).await;
    assert!(matches!(sent, Err(ClientError::SessionClosed)), "{sent:?}");
    // Saying Bye twice is harmless.
    session.finish().await.unwrap();
    // The stream ends, with no answer owed.
    let end = tokio::time::timeout(Duration::from_secs(10), session.next())
        .await
        .expect("the session ends after Bye");
    assert!(end.is_none(), "{end:?}");
    let frames = tokio::time::timeout(Duration::from_secs(10), gateway)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(frames, 0, "the gateway got a frame after Bye");
}
