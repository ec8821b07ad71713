//! WebSocket streaming at `GET /v1/stream`: one FlatBuffers message per
//! binary WebSocket message.
//!
//! A thin adapter around [`SessionState`]: the reader task decodes messages,
//! admits frames against the session's credits and queues them; the writer
//! task answers every admitted frame exactly once (Detections, Dropped or
//! Error), in the order the frames arrived, then closes. The queue between
//! the two holds at most `credits × 2 + 16` entries, so a client that
//! floods the socket is slowed down by TCP, not buffered.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::Response;
use framegate_protocol::{
    ClientMessage, DecodeLimits, DropReason, Dropped, ServerMessage, SessionLimits, Welcome,
    PROTOCOL_VERSION,
};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rand::RngCore;
use tokio::sync::{mpsc, oneshot};

use crate::auth::Principal;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::metering::{Reservation, SessionMeter};
use crate::pipeline::decode::probe;
use crate::pipeline::{FrameOutcome, ModelPipeline};
use crate::session::SessionState;

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
        Some(v) => match gw.auth.authenticate_header(v.to_str().ok()) {
            Ok(p) => Some(p),
            Err(e) => return error_response(&e),
        },
        None => None,
    };
    let limit = gw.config.limits.max_message_bytes + WS_SLACK_BYTES;
    ws.max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| async move {
            let (sink, stream) = socket.split();
            run_session(gw, sink, stream, principal).await;
        })
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

type Sink = SplitSink<WebSocket, Message>;
type Stream = SplitStream<WebSocket>;

/// What the writer task sends next, in order.
enum Outgoing {
    /// The answer to an admitted frame.
    Answer {
        seq: u64,
        capture_ts_us: u64,
        pixels: u64,
        source: AnswerSource,
        reservation: Reservation,
    },
    /// An error about a frame that was not admitted (no credit taken).
    Refused { seq: u64, error: GatewayError },
    /// End the session with this error.
    Close(GatewayError),
}

enum AnswerSource {
    Pending(oneshot::Receiver<FrameOutcome>),
    Failed(GatewayError),
    Dropped(DropReason, String),
}

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
            .auth
            .authenticate(&hello.credential)
            .and_then(|p| match header {
                Some(h) if h != p => Err(GatewayError::Unauthorized),
                _ => Ok(p),
            }),
    };
    let principal = match principal {
        Ok(p) => p,
        Err(e) => {
            close_with(&mut sink, &e).await;
            return;
        }
    };
    if hello.protocol_version != PROTOCOL_VERSION {
        let e = GatewayError::Protocol(format!(
            "protocol version {} is not supported; this gateway speaks {PROTOCOL_VERSION}",
            hello.protocol_version
        ));
        close_with(&mut sink, &e).await;
        return;
    }
    let pipeline = match gw.model(&hello.model) {
        Ok(p) => p.clone(),
        Err(e) => {
            close_with(&mut sink, &e).await;
            return;
        }
    };
    let meter = Arc::new(SessionMeter::new(
        &gw,
        &principal,
        &pipeline.model().spec.name,
    ));
    if let Err(e) = meter.admit_session() {
        close_with(&mut sink, &e).await;
        return;
    }
    let credits = gw.config.session.credits;
    let session_id = random_hex(8);
    let welcome = ServerMessage::Welcome(Welcome {
        session_id: session_id.clone(),
        resume_token: random_hex(16),
        credits,
        limits: SessionLimits {
            max_message_bytes: gw.config.limits.max_message_bytes.min(u32::MAX as usize) as u32,
            max_frame_pixels: gw.config.limits.max_frame_pixels,
            max_in_flight: credits,
        },
        model: pipeline.model().spec.name.clone(),
        server_version: env!("CARGO_PKG_VERSION").to_string(),
    });
    if !send_msg(&mut sink, &welcome).await {
        return;
    }
    let span = tracing::info_span!("session", id = %session_id, tenant = %principal.tenant, transport = "ws");
    let _enter = span.enter();
    tracing::debug!("session started");
    drop(_enter);

    let state = Arc::new(Mutex::new(SessionState::new(credits)));
    let (tx, rx) = mpsc::channel::<Outgoing>(credits as usize * 2 + 16);
    let writer = tokio::spawn(write_answers(
        sink,
        rx,
        state.clone(),
        pipeline.model().spec.name.clone(),
        meter.clone(),
    ));
    read_frames(&gw, &pipeline, &mut stream, &limits, &state, &tx, &meter).await;
    drop(tx);
    let _ = writer.await;
    tracing::debug!(session = %session_id, "session ended");
}

async fn read_frames(
    gw: &Gateway,
    pipeline: &Arc<ModelPipeline>,
    stream: &mut Stream,
    limits: &DecodeLimits,
    state: &Mutex<SessionState>,
    tx: &mpsc::Sender<Outgoing>,
    meter: &SessionMeter,
) {
    loop {
        let msg = match next_message(stream, limits).await {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(e) => {
                let _ = tx.send(Outgoing::Close(e)).await;
                return;
            }
        };
        let frame = match msg {
            ClientMessage::Frame(f) => f,
            ClientMessage::Ack(_) => continue,
            ClientMessage::Bye(_) => return,
            ClientMessage::Hello(_) => {
                let _ = tx
                    .send(Outgoing::Close(GatewayError::Protocol(
                        "Hello sent twice".into(),
                    )))
                    .await;
                return;
            }
        };
        let received_at = Instant::now();
        let seq = frame.seq;
        // Budget first (reserved before inference), then credit.
        let admitted = meter.reserve().and_then(|r| {
            state
                .lock()
                .expect("session lock")
                .on_frame(seq)
                .map(|()| r)
        });
        let out = match admitted {
            Err(error) => Outgoing::Refused { seq, error },
            Ok(reservation) => {
                let probed = probe(
                    Some(frame.codec),
                    frame.width,
                    frame.height,
                    frame.payload,
                    &gw.frame_limits,
                );
                let (pixels, source) = match probed {
                    Err(e) => (0, AnswerSource::Failed(e)),
                    Ok(p) => {
                        let pixels = p.pixels();
                        let source = match pipeline.submit(p, received_at) {
                            Ok(rx) => AnswerSource::Pending(rx),
                            Err(GatewayError::QueueFull) => AnswerSource::Dropped(
                                DropReason::QueueFull,
                                "the ingress queue is full".into(),
                            ),
                            Err(e) => AnswerSource::Failed(e),
                        };
                        (pixels, source)
                    }
                };
                Outgoing::Answer {
                    seq,
                    capture_ts_us: frame.capture_ts_us,
                    pixels,
                    source,
                    reservation,
                }
            }
        };
        if tx.send(out).await.is_err() {
            return; // writer gone: the client's socket is dead
        }
    }
}

async fn write_answers(
    mut sink: Sink,
    mut rx: mpsc::Receiver<Outgoing>,
    state: Arc<Mutex<SessionState>>,
    model: String,
    meter: Arc<SessionMeter>,
) {
    while let Some(out) = rx.recv().await {
        match out {
            Outgoing::Refused { seq, error } => {
                if !send_msg(
                    &mut sink,
                    &ServerMessage::Error(error.to_message(Some(seq))),
                )
                .await
                {
                    return;
                }
            }
            Outgoing::Close(e) => {
                // Answer what was admitted before closing.
                drain_admitted(&mut sink, &mut rx, &state, &model, &meter).await;
                close_with(&mut sink, &e).await;
                return;
            }
            Outgoing::Answer {
                seq,
                capture_ts_us,
                pixels,
                source,
                reservation,
            } => {
                if !answer(
                    &mut sink,
                    &state,
                    &model,
                    seq,
                    capture_ts_us,
                    pixels,
                    source,
                    (&meter, reservation),
                )
                .await
                {
                    return;
                }
            }
        }
    }
    let _ = sink
        .send(Message::Close(Some(CloseFrame {
            code: 1000,
            reason: Utf8Bytes::from_static("bye"),
        })))
        .await;
}

async fn drain_admitted(
    sink: &mut Sink,
    rx: &mut mpsc::Receiver<Outgoing>,
    state: &Mutex<SessionState>,
    model: &str,
    meter: &SessionMeter,
) {
    rx.close();
    while let Some(out) = rx.recv().await {
        if let Outgoing::Answer {
            seq,
            capture_ts_us,
            pixels,
            source,
            reservation,
        } = out
        {
            if !answer(
                sink,
                state,
                model,
                seq,
                capture_ts_us,
                pixels,
                source,
                (meter, reservation),
            )
            .await
            {
                return;
            }
        }
    }
}

/// Sends the one answer of an admitted frame; false when the socket is dead.
#[allow(clippy::too_many_arguments)]
async fn answer(
    sink: &mut Sink,
    state: &Mutex<SessionState>,
    model: &str,
    seq: u64,
    capture_ts_us: u64,
    pixels: u64,
    source: AnswerSource,
    (meter, reservation): (&SessionMeter, Reservation),
) -> bool {
    let outcome = match source {
        AnswerSource::Pending(rx) => rx.await.unwrap_or_else(|_| {
            Err(GatewayError::Internal(
                "the pipeline dropped the frame".into(),
            ))
        }),
        AnswerSource::Failed(e) => Err(e),
        AnswerSource::Dropped(reason, message) => {
            state.lock().expect("session lock").on_answered(None);
            let msg = ServerMessage::Dropped(Dropped {
                seqs: vec![seq],
                reason,
                message,
            });
            return send_msg(sink, &msg).await;
        }
    };
    match outcome {
        Ok(result) => {
            // Usage counts only once the answer is handed to the socket.
            let mut usage = state.lock().expect("session lock").usage();
            usage.frames += 1;
            usage.pixels += pixels;
            let msg = ServerMessage::Detections(framegate_protocol::Detections {
                seq,
                capture_ts_us,
                width: result.width,
                height: result.height,
                model: model.to_string(),
                detections: result.detections,
                timings: result.timings,
                usage,
            });
            let sent = send_msg(sink, &msg).await;
            state
                .lock()
                .expect("session lock")
                .on_answered(sent.then_some(pixels));
            if sent {
                // The one metering point of the WebSocket transport.
                meter.delivered(reservation, pixels);
            }
            sent
        }
        Err(e) => {
            state.lock().expect("session lock").on_answered(None);
            send_msg(sink, &ServerMessage::Error(e.to_message(Some(seq)))).await
        }
    }
}
