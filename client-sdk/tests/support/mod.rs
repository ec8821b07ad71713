//! Scripted gateways for the SDK's tests.

use framegate_protocol::{ClientMessage, DecodeLimits, Hello, ServerMessage, Welcome};
use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Accepts a WebSocket on `tcp` and reads the client's Hello; `None` when
/// the client left first.
#[allow(dead_code)]
pub async fn accept_hello(tcp: TcpStream) -> Option<(WebSocketStream<TcpStream>, Hello)> {
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    loop {
        match ws.next().await {
            Some(Ok(Message::Binary(b))) => {
                match ClientMessage::decode(&b, &DecodeLimits::default()).unwrap() {
                    ClientMessage::Hello(h) => return Some((ws, h)),
                    other => panic!("expected Hello, got {}", other.kind()),
                }
            }
            Some(Ok(_)) => continue,
            _ => return None,
        }
    }
}

/// The scripted gateways' Welcome: session `s-1`, resume token
/// `resume-me`, `credits` credits.
#[allow(dead_code)]
pub fn welcome(credits: u32) -> ServerMessage {
    ServerMessage::Welcome(Welcome {
        session_id: "s-1".into(),
        resume_token: "resume-me".into(),
        credits,
        ..Default::default()
    })
}

/// The server's test image, dog.jpg.
#[allow(dead_code)]
pub fn dog() -> framegate_client::Image {
    framegate_client::Image::from_file(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../server/tests/data/dog.jpg"
    ))
    .unwrap()
}
