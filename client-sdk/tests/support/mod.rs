//! Scripted gateways for the SDK's tests.

use framegate_protocol::{ClientMessage, DecodeLimits, Hello};
use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Accepts a WebSocket on `tcp` and reads the client's Hello; `None` when
/// the client left first.
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
