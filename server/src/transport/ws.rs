//! WebSocket streaming at `GET /v1/stream`: one FlatBuffers message per
//! binary WebSocket message.
//!
//! A thin adapter around the session runner ([`crate::session::runner`]):
//! this module reads Hello, authenticates, and then only moves messages —
//! decoded client messages into the session, the session's [`Outbound`]
//! messages out as binary WebSocket messages. Credits, policies, answers and
//! resume are the session's business. The session's inbound channel is
//! bounded, so a client that floods the socket is slowed down by TCP, not
//! buffered.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::Response;
use framegate_protocol::{ClientMessage, DecodeLimits, ServerMessage, PROTOCOL_VERSION};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;

use crate::auth::Principal;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::session::runner::OUTBOUND_CAPACITY;
use crate::session::Outbound;

use super::http::error_response;

/// Room above the protocol limit that the WebSocket layer accepts, so an
/// oversized message is answered with a protocol Error, not a bare close.
const WS_SLACK_BYTES: usize = 64 << 10;

/// Handles the upgrade. A key in `Authorization` is checked here (wrong key
/// → 401, no upgrade); without one, `Hello.credential` must carry it.
pub async fn upgrade(
    State(gw): State<Arc<Gateway>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let principal = match headers.get(header::AUTHORIZATION) {
        Some(v) => match gw.authenticate_header(v.to_str().ok()).await {
            Ok(p) => Some(p),
            Err(e) => {
                crate::metrics::auth_failure(crate::metrics::Transport::Ws);
                return error_response(&e);
            }
        },
        None => None,
    };
    let limit = gw.config.limits.max_message_bytes + WS_SLACK_BYTES;
    // tungstenite reserves its read buffer up front (128 KiB by default):
    // 16 KiB keeps 10,000 idle sessions well under a gigabyte.
    ws.read_buffer_size(16 << 10)
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| async move {
            let (sink, stream) = socket.split();
            run_session(gw, sink, stream, principal).await;
        })
}

type Sink = SplitSink<WebSocket, Message>;
type Stream = SplitStream<WebSocket>;

async fn send_msg(sink: &mut Sink, msg: &ServerMessage) -> bool {
    sink.send(Message::Binary(msg.encode())).await.is_ok()
}

async fn close_with(sink: &mut Sink, error: &GatewayError) {
    let _ = send_msg(sink, &ServerMessage::Error(error.to_message(None))).await;
    let mut reason = error.to_string();
    reason.truncate(120); // close reasons are limited to 123 bytes
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: error.ws_close_code(),
            reason: Utf8Bytes::from(reason),
        })))
        .await;
}

fn decode_limits(gw: &Gateway) -> DecodeLimits {
    DecodeLimits {
        max_message_bytes: gw.config.limits.max_message_bytes,
        ..DecodeLimits::default()
    }
}

/// Reads the next protocol message; `Ok(None)` when the client left.
async fn next_message(
    stream: &mut Stream,
    limits: &DecodeLimits,
) -> Result<Option<ClientMessage>, GatewayError> {
    loop {
        let msg = match stream.next().await {
            None | Some(Ok(Message::Close(_))) => return Ok(None),
            Some(Err(e)) => {
                let text = e.to_string();
                return if text.contains("too long")
                    || text.contains("Space limit")
                    || text.contains("size")
                {
                    Err(GatewayError::PayloadTooLarge {
                        size: limits.max_message_bytes + 1,
                        limit: limits.max_message_bytes,
                    })
                } else {
                    Ok(None)
                };
            }
            Some(Ok(m)) => m,
        };
        match msg {
            Message::Binary(b) => {
                if b.len() > limits.max_message_bytes {
                    return Err(GatewayError::PayloadTooLarge {
                        size: b.len(),
                        limit: limits.max_message_bytes,
                    });
                }
                return ClientMessage::decode(&b, limits)
                    .map(Some)
                    .map_err(|e| GatewayError::Protocol(format!("undecodable message: {e}")));
            }
            Message::Text(_) => {
                return Err(GatewayError::Protocol(
                    "text messages are not part of the protocol; send binary FlatBuffers".into(),
                ))
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(_) => return Ok(None),
        }
    }
}

async fn run_session(
    gw: Arc<Gateway>,
    mut sink: Sink,
    mut stream: Stream,
    header_principal: Option<Principal>,
) {
    let limits = decode_limits(&gw);
    let handshake = Duration::from_secs(gw.config.http.handshake_timeout_secs);
    let hello = match tokio::time::timeout(handshake, next_message(&mut stream, &limits)).await {
        Err(_) => {
            close_with(
                &mut sink,
                &GatewayError::Protocol("no Hello within the handshake timeout".into()),
            )
            .await;
            return;
        }
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            close_with(&mut sink, &e).await;
            return;
        }
        Ok(Ok(Some(ClientMessage::Hello(h)))) => h,
        Ok(Ok(Some(other))) => {
            let e = GatewayError::Protocol(format!("expected Hello first, got {}", other.kind()));
            close_with(&mut sink, &e).await;
            return;
        }
    };
    // The key comes in the upgrade's Authorization header or in Hello; when
    // both are given they must name the same tenant's key.
    let principal = match (header_principal, hello.credential.is_empty()) {
        (Some(p), true) => Ok(p),
        (None, true) => Err(GatewayError::Unauthorized),
        (header, false) => gw
            .authenticate(&hello.credential)
            .await
            .and_then(|p| match header {
                Some(h) if h != p => Err(GatewayError::Unauthorized),
                _ => Ok(p),
            }),
    };
    let principal = match principal {
        Ok(p) => p,
        Err(e) => {
            crate::metrics::auth_failure(crate::metrics::Transport::Ws);
            close_with(&mut sink, &e).await;
            return;
        }
    };
    // A resume continues on the session's model, checked when it opened.
    let model = hello
        .resume_token
        .is_empty()
        .then_some(hello.model.as_str());
    if let Err(e) = gw.authorize_stream(&principal, model) {
        close_with(&mut sink, &e).await;
        return;
    }
    if hello.protocol_version != PROTOCOL_VERSION {
        let e = GatewayError::Protocol(format!(
            "protocol version {} is not supported; this gateway speaks {PROTOCOL_VERSION}",
            hello.protocol_version
        ));
        close_with(&mut sink, &e).await;
        return;
    }
    if hello.datagrams {
        let e = GatewayError::BadRequest("datagrams are a QUIC feature; not on WebSocket".into());
        close_with(&mut sink, &e).await;
        return;
    }
    let (out_tx, out_rx) = mpsc::channel(OUTBOUND_CAPACITY);
    let mut writer = tokio::spawn(write_outbound(sink, out_rx));
    let conn = match gw
        .sessions
        .open(&gw, &principal, &hello, "ws", out_tx.clone())
        .await
    {
        Ok(c) => c,
        Err(e) => {
            let _ = out_tx.send(Outbound::Close(e)).await;
            drop(out_tx);
            let _ = writer.await;
            return;
        }
    };
    drop(out_tx);
    // Read until Bye, a violation, or the socket ends; the writer ends when
    // the session says so or the socket dies.
    let ended_cleanly = tokio::select! {
        clean = read_messages(&conn, &mut stream, &limits) => clean,
        _ = &mut writer => return,
    };
    if ended_cleanly {
        let _ = writer.await;
    } else {
        // The socket is gone: drop the writer so the session detaches and
        // waits for a resume.
        writer.abort();
    }
}

/// Forwards client messages; true when the session was ended by the
/// client (Bye) or by a violation, so answers are still written.
async fn read_messages(
    conn: &crate::session::Connection,
    stream: &mut Stream,
    limits: &DecodeLimits,
) -> bool {
    loop {
        match next_message(stream, limits).await {
            Ok(Some(msg)) => {
                let bye = matches!(msg, ClientMessage::Bye(_) | ClientMessage::Hello(_));
                if !conn.deliver(msg, false).await {
                    return true;
                }
                if bye {
                    return true;
                }
            }
            Ok(None) => return false,
            Err(e) => {
                conn.fatal(e).await;
                return true;
            }
        }
    }
}

async fn write_outbound(mut sink: Sink, mut rx: mpsc::Receiver<Outbound>) {
    'recv: while let Some(mut out) = rx.recv().await {
        // Messages already waiting are buffered and go out with one flush
        // (one write syscall), not one flush per answer.
        while let Outbound::Message(m) = out {
            if sink.feed(Message::Binary(m.encode())).await.is_err() {
                return;
            }
            match rx.try_recv() {
                Ok(next) => out = next,
                Err(_) => {
                    if sink.flush().await.is_err() {
                        return;
                    }
                    continue 'recv;
                }
            }
        }
        // The messages before a closing one are flushed with the close.
        match out {
            Outbound::Message(_) => unreachable!("handled above"),
            Outbound::Close(e) => {
                close_with(&mut sink, &e).await;
                return;
            }
            Outbound::Finish => {
                let _ = sink
                    .send(Message::Close(Some(CloseFrame {
                        code: 1000,
                        reason: Utf8Bytes::from_static("bye"),
                    })))
                    .await;
                return;
            }
            Outbound::GoneAway => {
                let _ = sink
                    .send(Message::Close(Some(CloseFrame {
                        code: GatewayError::GoingAway.ws_close_code(),
                        reason: Utf8Bytes::from_static(crate::error::GOING_AWAY_REASON),
                    })))
                    .await;
                return;
            }
        }
    }
}
