//! `ws-echo`: the bare WebSocket peer for the gateway-only comparison.
//!
//! tokio-tungstenite and nothing else: it accepts WebSocket connections,
//! answers `Hello` with `Welcome` and each `Frame` with an empty
//! `Detections` carrying its seq (decoding and verifying each message with
//! `framegate-protocol`, as any server of the protocol must). No auth, no
//! queue, no batching, no image work: the ceiling for framing + transport
//! on this machine, measured with the same `framegate-load` client and
//! frames as the gateway. (QUIC/quinn is built on another branch; its echo
//! peer joins with it.)
//!
//! `ws-echo [ADDR]` (default 127.0.0.1:8095); prints `listening on ADDR`.

use anyhow::Result;
use framegate_protocol::{
    ClientMessage, DecodeLimits, Detections, ServerMessage, Welcome, PROTOCOL_VERSION,
};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() -> Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8095".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("ws-echo listening on {}", listener.local_addr()?);
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                return;
            };
            let (mut tx, mut rx) = ws.split();
            let limits = DecodeLimits::default();
            while let Some(Ok(msg)) = rx.next().await {
                let Message::Binary(b) = msg else { continue };
                let answer = match ClientMessage::decode(&b, &limits) {
                    Ok(ClientMessage::Hello(_)) => ServerMessage::Welcome(Welcome {
                        session_id: "echo".into(),
                        credits: 8,
                        server_version: format!("ws-echo/{PROTOCOL_VERSION}"),
                        ..Default::default()
                    }),
                    Ok(ClientMessage::Frame(f)) => ServerMessage::Detections(Detections {
                        seq: f.seq,
                        capture_ts_us: f.capture_ts_us,
                        ..Default::default()
                    }),
                    Ok(_) => continue,
                    Err(_) => break,
                };
                if tx.send(Message::Binary(answer.encode())).await.is_err() {
                    break;
                }
            }
        });
    }
}
