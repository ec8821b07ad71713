//! Messages from the gateway that the SDK cannot read: a message type it
//! does not know (a newer gateway's) is skipped, as docs/protocol.md asks;
//! one that does not decode ends the session with a protocol error. Before,
//! both broke the connection and the session resumed, was sent the same
//! message again, and resumed again, for ever. The gateway here is a
//! scripted WebSocket peer.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use framegate_client::{Answer, Client, ClientError, SessionOptions};
use framegate_protocol::generated::framegate::v_1 as fb;
use framegate_protocol::{ClientMessage, DecodeLimits, Detections, ServerMessage};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// A message of type 42, unknown to this protocol version, carrying a table.
fn unknown_message() -> Bytes {
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let a = fb::Ack::create(&mut fbb, &fb::AckArgs { seq: 1 });
    let env = fb::Envelope::create(
        &mut fbb,
        &fb::EnvelopeArgs {
            message_type: fb::Message(42),
            message: Some(a.as_union_value()),
        },
    );
    fb::finish_envelope_buffer(&mut fbb, env);
    Bytes::copy_from_slice(fbb.finished_data())
}

/// Each connection: Welcome, then `first`, then a Detections answer for
/// every Frame. Counts connections.
async fn scripted_gateway(first: Bytes) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let count = connections.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let first = first.clone();
            tokio::spawn(async move {
                let Some((mut ws, _)) = support::accept_hello(tcp).await else {
                    return;
                };
                ws.send(Message::Binary(support::welcome(4).encode()))
                    .await
                    .unwrap();
                if ws.send(Message::Binary(first)).await.is_err() {
                    return;
                }
                while let Some(Ok(m)) = ws.next().await {
                    let Message::Binary(b) = m else { continue };
                    if let Ok(ClientMessage::Frame(f)) =
                        ClientMessage::decode(&b, &DecodeLimits::default())
                    {
                        let answer = ServerMessage::Detections(Detections {
                            seq: f.seq,
                            model: "scripted".into(),
                            ..Default::default()
                        });
                        if ws.send(Message::Binary(answer.encode())).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (format!("ws://{addr}"), connections)
}

#[tokio::test]
async fn a_message_type_the_sdk_does_not_know_is_skipped() {
    let (url, connections) = scripted_gateway(unknown_message()).await;
    let client = Client::connect(&url, "fg_test_key").await.unwrap();
    let mut session = client.session(SessionOptions::default()).await.unwrap();
    let seq = session.send(support::dog()).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), session.next())
        .await
        .expect("an answer within 10 s");
    match answer {
        Some(Ok(Answer::Detections(d))) => assert_eq!(d.seq, seq),
        other => panic!("expected the frame's answer, got {other:?}"),
    }
    assert_eq!(session.resumes(), 0);
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

/// The session reports a protocol error once, then ends, on one
/// connection: no resume loop.
async fn ends_the_session_without_resuming(first: Bytes) {
    let (url, connections) = scripted_gateway(first).await;
    let client = Client::connect(&url, "fg_test_key").await.unwrap();
    let mut session = client
        .session(SessionOptions::default().reconnect_backoff(Duration::from_millis(20)))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), session.next())
        .await
        .expect("the session reports the error within 10 s");
    assert!(
        matches!(first, Some(Err(ClientError::Protocol(_)))),
        "{first:?}"
    );
    let end = tokio::time::timeout(Duration::from_secs(10), session.next())
        .await
        .expect("the session ends");
    assert!(end.is_none(), "{end:?}");
    // No resume loop: one connection, and no more come.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    assert_eq!(session.resumes(), 0);
}

#[tokio::test]
async fn a_message_that_does_not_decode_ends_the_session() {
    ends_the_session_without_resuming(Bytes::from_static(b"not a framegate message")).await;
}

/// A WebSocket message over the SDK's message bound (16 MiB, as on QUIC;
/// here one frame, refused from its header before it is buffered) ends
/// the session. Before, tungstenite refused it as a connection error, and
/// the session resumed and was sent it again, for ever.
#[tokio::test]
async fn a_message_over_the_size_bound_ends_the_session() {
    ends_the_session_without_resuming(Bytes::from(vec![0u8; 17 << 20])).await;
}
