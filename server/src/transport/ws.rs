//! WebSocket streaming at `/v1/stream` (`GET` over HTTP/1.1, extended
//! `CONNECT` over HTTP/2): one FlatBuffers message per binary WebSocket
//! message.
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

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use framegate_protocol::{ClientMessage, DecodeLimits, ServerMessage, PROTOCOL_VERSION};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{ReadHalf, WriteHalf};
use tokio::sync::{mpsc, watch};

use crate::auth::Principal;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::session::runner::OUTBOUND_CAPACITY;
use crate::session::Outbound;

use super::http::error_response;
use super::wsframe::{WsError, WsMessage, WsReader, WsWriter};

/// Room above the protocol limit that the WebSocket layer accepts, so an
/// oversized message is answered with a protocol Error, not a bare close.
const WS_SLACK_BYTES: usize = 64 << 10;

/// Pongs owed to the client before Hello: the latest ones.
const CONTROL_BACKLOG: usize = 4;

/// How long the writer gets to answer a client's close frame.
const CLOSE_ANSWER_SECS: u64 = 2;

/// A control frame the reader owes the client; the writer sends it.
#[derive(Debug)]
enum Control {
    /// Answer a ping with its payload.
    Pong(Bytes),
    /// The client sent a close frame (with this status code): answer it and
    /// end the connection.
    Close(Option<u16>),
    /// The connection broke (a reset, an I/O error) rather than ending
    /// cleanly.
    Broken,
}

/// Handles the upgrade: RFC 6455 over HTTP/1.1 (`GET` with `Upgrade:
/// websocket`, answered 101), or RFC 8441 over HTTP/2 (extended `CONNECT`
/// with `:protocol = websocket`, answered 200; browsers use it when the page
/// came over an HTTP/2 connection to the gateway, as over `https://`). A key
/// in `Authorization` is checked here (wrong key → 401, no upgrade); without
/// one, `Hello.credential` must carry it.
///
/// The request's [`super::StreamGuard`] goes with the connection, so an
/// HTTP/2 connection carrying a WebSocket is not idle while it runs.
pub async fn upgrade(State(gw): State<Arc<Gateway>>, mut req: Request) -> Response {
    let http2 = req.version() >= axum::http::Version::HTTP_2;
    let handshake = match handshake(&req, http2) {
        Ok(h) => h,
        Err(refusal) => {
            let status = refusal.0;
            let mut resp = refusal.into_response();
            if status == StatusCode::METHOD_NOT_ALLOWED {
                // RFC 9110 15.5.6: a 405 names the methods that would do.
                let allow = if http2 { "CONNECT" } else { "GET" };
                resp.headers_mut()
                    .insert(header::ALLOW, header::HeaderValue::from_static(allow));
            }
            if status == StatusCode::UPGRADE_REQUIRED {
                // RFC 6455 4.2.2: name the version this server speaks; RFC
                // 9110 15.5.22: a 426 names the protocol in `Upgrade`.
                use header::HeaderValue;
                let h = resp.headers_mut();
                h.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
                if !http2 {
                    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                }
            }
            return resp;
        }
    };
    let principal = match req.headers().get(header::AUTHORIZATION) {
        Some(v) => match gw.authenticate_header(v.to_str().ok()).await {
            Ok(p) => Some(p),
            Err(e) => {
                crate::metrics::auth_failure(crate::metrics::Transport::Ws);
                return error_response(&e);
            }
        },
        None => None,
    };
    let guard = req.extensions_mut().remove::<super::StreamGuard>();
    let on_upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                crate::metrics::ws_upgrade(http2);
                run_connection(gw, upgraded, principal).await
            }
            Err(e) => tracing::debug!(error = %e, "websocket upgrade failed"),
        }
        drop(guard);
    });
    match handshake {
        Handshake::Http1 { accept } => Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, accept)
            .body(Body::empty())
            .expect("static upgrade response"),
        Handshake::Http2 => Response::new(Body::empty()),
    }
}

/// How a WebSocket upgrade request is answered.
#[derive(Debug)]
enum Handshake {
    /// RFC 6455 over HTTP/1.1: 101 with this `Sec-WebSocket-Accept`.
    Http1 { accept: String },
    /// RFC 8441 over HTTP/2: 200, the stream becomes the connection.
    Http2,
}

/// Checks the upgrade request (RFC 6455 section 4.2.1 over HTTP/1.1, RFC
/// 8441 section 5 over HTTP/2) and says how to answer it, or the refusal to
/// send.
fn handshake(req: &Request, http2: bool) -> Result<Handshake, (StatusCode, &'static str)> {
    let refuse = |status: StatusCode, why: &'static str| Err((status, why));
    let headers = req.headers();
    if http2 {
        if req.method() != Method::CONNECT {
            return refuse(
                StatusCode::METHOD_NOT_ALLOWED,
                "over HTTP/2 a WebSocket opens with an extended CONNECT (RFC 8441)",
            );
        }
        match req.extensions().get::<hyper::ext::Protocol>() {
            Some(p) if p.as_str().eq_ignore_ascii_case("websocket") => {}
            _ => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "an extended CONNECT here must have :protocol websocket",
                )
            }
        }
    } else if req.method() != Method::GET {
        return refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "a WebSocket upgrade is a GET",
        );
    }
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !http2 && !has(header::CONNECTION, "upgrade") {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Connection header did not include 'upgrade'",
        );
    }
    if !http2 && !has(header::UPGRADE, "websocket") {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Upgrade header did not include 'websocket'",
        );
    }
    match headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
    {
        Some(b"13") => {}
        None => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "Sec-WebSocket-Version header missing",
            )
        }
        Some(_) => {
            return refuse(
                StatusCode::UPGRADE_REQUIRED,
                "Sec-WebSocket-Version must be 13",
            )
        }
    }
    if http2 {
        return Ok(Handshake::Http2);
    }
    match headers.get(header::SEC_WEBSOCKET_KEY) {
        Some(key) => Ok(Handshake::Http1 {
            accept: accept_for(key.as_bytes()),
        }),
        None => refuse(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key header missing"),
    }
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`: base64(SHA-1(key ++
/// the RFC 6455 GUID)).
fn accept_for(key: &[u8]) -> String {
    use base64::Engine;
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    h.update(key);
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

type Io = TokioIo<Upgraded>;
type Sink = WsWriter<WriteHalf<Io>>;
type Stream = WsReader<ReadHalf<Io>>;

async fn run_connection(gw: Arc<Gateway>, upgraded: Upgraded, principal: Option<Principal>) {
    let (rd, wr) = tokio::io::split(TokioIo::new(upgraded));
    // Hello first, with a limit of its own: an unauthenticated client
    // cannot make the gateway hold a buffer for a large message.
    let reader = WsReader::new(
        rd,
        super::hello_max_bytes(gw.config.limits.max_message_bytes),
    );
    run_session(gw, WsWriter::new(wr), reader, principal).await;
}

/// Answers the client's close frame and ends the connection's write side.
async fn answer_close(sink: &mut Sink, client_code: Option<u16>) {
    sink.queue_close_answer(client_code);
    let _ = sink.flush().await;
    sink.shutdown().await;
}

async fn close_with(sink: &mut Sink, error: &GatewayError) {
    sink.queue_binary(&ServerMessage::Error(error.to_message(None)).encode());
    sink.queue_close(error.ws_close_code(), &error.to_string());
    let _ = sink.flush().await;
}

fn decode_limits(gw: &Gateway) -> DecodeLimits {
    DecodeLimits::with_max_message_bytes(gw.config.limits.max_message_bytes)
}

/// Reads the next protocol message; `Ok(None)` when the client left. Pings
/// and the client's close frame are handed to `control` (the caller owes the
/// client a pong, or the answer to its close).
async fn next_message(
    stream: &mut Stream,
    limits: &DecodeLimits,
    control: &mut (dyn FnMut(Control) + Send),
) -> Result<Option<ClientMessage>, GatewayError> {
    loop {
        let b = match stream.next().await {
            Ok(None) => return Ok(None),
            Err(WsError::Io(_)) => {
                control(Control::Broken);
                return Ok(None);
            }
            Ok(Some(WsMessage::Close(code))) => {
                control(Control::Close(code));
                return Ok(None);
            }
            Err(WsError::TooLarge { size }) => {
                return Err(GatewayError::PayloadTooLarge {
                    size: usize::try_from(size).unwrap_or(usize::MAX),
                    limit: limits.max_message_bytes,
                })
            }
            Err(e @ WsError::Protocol(_)) => return Err(GatewayError::Protocol(e.to_string())),
            Ok(Some(WsMessage::Ping(p))) => {
                control(Control::Pong(p));
                continue;
            }
            Ok(Some(WsMessage::Text(_))) => {
                return Err(GatewayError::Protocol(
                    "text messages are not part of the protocol; send binary FlatBuffers".into(),
                ))
            }
            Ok(Some(WsMessage::Binary(b))) => b,
        };
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
}

async fn run_session(
    gw: Arc<Gateway>,
    mut sink: Sink,
    mut stream: Stream,
    header_principal: Option<Principal>,
) {
    let limits = decode_limits(&gw);
    let hello_max = super::hello_max_bytes(gw.config.limits.max_message_bytes);
    let hello_limits = DecodeLimits::with_max_message_bytes(hello_max);
    let handshake = Duration::from_secs(gw.config.http.handshake_timeout_secs);
    let mut early = std::collections::VecDeque::new();
    let hello = match tokio::time::timeout(
        handshake,
        // Pongs owed before Hello: the latest few (RFC 6455 allows
        // answering only the latest ping), so a ping flood during the
        // handshake is not buffered. A close frame ends the reading.
        next_message(&mut stream, &hello_limits, &mut |c| {
            if early.len() >= CONTROL_BACKLOG {
                early.pop_front();
            }
            early.push_back(c);
        }),
    )
    .await
    {
        Err(_) => {
            close_with(
                &mut sink,
                &GatewayError::Protocol("no Hello within the handshake timeout".into()),
            )
            .await;
            return;
        }
        Ok(Ok(None)) => {
            // A close frame ends the reading, so it is the last control
            // frame; pongs owed before it are not sent (RFC 6455 allows it).
            if let Some(Control::Close(code)) = early.pop_back() {
                answer_close(&mut sink, code).await;
            }
            return;
        }
        Ok(Err(e)) => {
            let e = match e {
                GatewayError::PayloadTooLarge { size, .. } => {
                    super::hello_too_large(size, hello_max)
                }
                e => e,
            };
            close_with(&mut sink, &e).await;
            // The rest of a message that was too large may still be on its
            // way: read it, so the close is not a reset that loses the Error.
            stream
                .linger(LINGER_MAX_BYTES, Duration::from_secs(LINGER_MAX_SECS))
                .await;
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
    for c in early {
        if let Control::Pong(p) = c {
            sink.queue_pong(&p);
        }
    }
    // Authenticated: messages up to the configured limit from here on.
    stream.set_max_message(gw.config.limits.max_message_bytes + WS_SLACK_BYTES);
    let (out_tx, out_rx) = mpsc::channel(OUTBOUND_CAPACITY);
    // The client's close frame (its status code), for the writer to answer.
    let (close_tx, close_rx) = mpsc::channel::<Option<u16>>(1);
    // After Hello, the pong owed for the latest ping: one the writer has
    // not sent yet is replaced, so a ping flood gets pongs for some of its
    // pings and always for the latest (RFC 6455 5.5.3 allows answering only
    // the most recent), and costs one payload of memory.
    let (pong_tx, pong_rx) = watch::channel(None);
    // Keep-alive pings the reader asks the writer to send.
    let pings = Arc::new(tokio::sync::Notify::new());
    let mut writer = tokio::spawn(write_outbound(
        sink,
        out_rx,
        close_rx,
        pong_rx,
        pings.clone(),
    ));
    let idle = gw.config.http.ws_idle_timeout_secs;
    let keepalive = (idle > 0).then(|| KeepAlive {
        idle: Duration::from_secs(idle),
        pings: &pings,
    });
    let conn = match gw
        .sessions
        .open(&gw, &principal, &hello, "ws", out_tx.clone())
        .await
    {
        Ok(c) => c,
        Err(e) => {
            let _ = out_tx.send(Outbound::Close(e)).await;
            drop(out_tx);
            super::drain_writer(&mut writer).await;
            return;
        }
    };
    drop(out_tx);
    // Read until Bye, a violation, or the socket ends; the writer ends when
    // the session says so or the socket dies.
    let ended = tokio::select! {
        ended = read_messages(&conn, &mut stream, &limits, &pong_tx, keepalive, true) => ended,
        sent_close = &mut writer => {
            let rest = read_messages(&conn, &mut stream, &limits, &pong_tx, None, false);
            close_answered(&conn, sent_close.unwrap_or(false), rest).await;
            return;
        }
    };
    match ended {
        ReadEnd::Bye => {
            // The answers still go out, then the close. Reading goes on for
            // the client's side of the end: its close frame (the answer to
            // ours, or a client that wants no more answers) ends the session
            // for good; a connection lost first leaves the session to a
            // resume, so a client that missed answers gets them, billed
            // once, instead of sending those frames again. As long as
            // answers take at most [`super::WRITER_DRAIN_MAX`].
            let mut rest = std::pin::pin!(read_messages(
                &conn,
                &mut stream,
                &limits,
                &pong_tx,
                keepalive,
                false
            ));
            let end = tokio::time::timeout(super::WRITER_DRAIN_MAX, async {
                tokio::select! {
                    end = &mut rest => Some(end),
                    sent_close = &mut writer => {
                        close_answered(&conn, sent_close.unwrap_or(false), &mut rest).await;
                        None
                    }
                }
            })
            .await;
            match end {
                Ok(None) => {}
                Ok(Some(ReadEnd::Closed(code))) => {
                    answer_close_frame(&conn, &close_tx, &mut writer, code).await;
                }
                Ok(Some(ReadEnd::Bye | ReadEnd::Violation)) => {
                    super::drain_writer(&mut writer).await;
                }
                // A half-close: the client may still read the answers.
                Ok(Some(ReadEnd::Ended)) => ended_cleanly(&conn, &mut writer, true).await,
                Ok(Some(ReadEnd::Gone)) | Err(_) => writer.abort(),
            }
        }
        ReadEnd::Violation => {
            // The session answers what it admitted, then the Error and the
            // close; meanwhile the client may still be sending (the rest of
            // an oversized message).
            super::drain_writer(&mut writer).await;
            stream
                .linger(LINGER_MAX_BYTES, Duration::from_secs(LINGER_MAX_SECS))
                .await;
        }
        ReadEnd::Closed(code) => {
            // The writer answers the close frame and ends the connection;
            // the session detaches and waits for a resume, as below, unless
            // it said Bye before (on a connection lost earlier, say).
            answer_close_frame(&conn, &close_tx, &mut writer, code).await;
        }
        ReadEnd::Ended => ended_cleanly(&conn, &mut writer, false).await,
        ReadEnd::Gone => {
            // The socket is gone: drop the writer so the session detaches
            // and waits for a resume.
            writer.abort();
        }
    }
}

/// After the writer ended the connection (`sent_close`: with a close frame
/// of its own, or the answer to the client's; otherwise the socket died or
/// the session moved): the client's close frame, or its clean end of the
/// connection right after our close, confirms that it read up to it, and
/// after Bye that ends the session for good (see
/// [`crate::session::Connection::quit`]).
async fn close_answered(
    conn: &crate::session::Connection,
    sent_close: bool,
    rest: impl std::future::Future<Output = ReadEnd>,
) {
    let answered = tokio::time::timeout(Duration::from_secs(CLOSE_ANSWER_SECS), rest).await;
    match answered {
        Ok(ReadEnd::Closed(_)) => conn.quit(),
        Ok(ReadEnd::Ended) if sent_close => conn.quit(),
        _ => {}
    }
}

/// The client's close frame: the writer is asked to answer it (unless it
/// has ended already, having sent a close of its own), then the session is
/// told (after Bye it ends, and answers still being computed are dropped,
/// unbilled; the writer answers a pending close even once the session has
/// let go of it), then the writer is waited for, at most
/// [`CLOSE_ANSWER_SECS`]: it may be stuck writing to a client that no
/// longer reads.
async fn answer_close_frame(
    conn: &crate::session::Connection,
    close_tx: &mpsc::Sender<Option<u16>>,
    writer: &mut tokio::task::JoinHandle<bool>,
    code: Option<u16>,
) {
    let queued = close_tx.try_send(code).is_ok();
    conn.quit();
    if !queued {
        return;
    }
    let answered = tokio::time::timeout(Duration::from_secs(CLOSE_ANSWER_SECS), &mut *writer).await;
    if answered.is_err() {
        writer.abort();
    }
}

/// The client ended the connection cleanly (FIN) without a close frame. If
/// the writer had already written our close, that confirms it (the client
/// read up to it: after Bye the session ends); otherwise the session waits
/// for a resume. With `drain` (after Bye: the client may have only
/// half-closed) the answers owed still go out first.
async fn ended_cleanly(
    conn: &crate::session::Connection,
    writer: &mut tokio::task::JoinHandle<bool>,
    drain: bool,
) {
    let closed_first = writer.is_finished();
    if !(closed_first || drain) {
        writer.abort();
        return;
    }
    if super::drain_writer(writer).await == Some(true) && closed_first {
        conn.quit();
    }
}

/// How the reading side of a session ended.
enum ReadEnd {
    /// Bye (or a second Hello): answers are still written, then the close.
    Bye,
    /// The client broke a rule: the session closes with an Error.
    Violation,
    /// The client sent a close frame (with this status code) without Bye:
    /// it gets the close answered; the session may be resumed.
    Closed(Option<u16>),
    /// The connection broke, or went quiet for too long: the session may be
    /// resumed.
    Gone,
    /// The client ended the connection cleanly without a close frame: as
    /// [`ReadEnd::Gone`], except right after the gateway's own close, which
    /// it then confirms (the client read up to it).
    Ended,
}

/// After refusing a client mid-stream, what the gateway still reads and
/// discards (see [`WsReader::linger`]) at most: bytes and seconds.
const LINGER_MAX_BYTES: usize = 64 << 20;
const LINGER_MAX_SECS: u64 = 2;

/// How a session finds a connection that died without a close: every
/// third of `idle` it looks at when the client last sent anything; quiet
/// for a third, it is pinged; quiet for all of `idle`, it is taken for
/// dead.
#[derive(Clone, Copy)]
struct KeepAlive<'a> {
    /// Quiet this long: the connection is taken for dead.
    idle: Duration,
    /// Asks the writer for a ping.
    pings: &'a tokio::sync::Notify,
}

/// Forwards client messages until Bye, a violation or the end of the
/// connection (with `keepalive`, also a connection quiet for too long).
/// Without `deliver` (after Bye) messages are read and dropped until the
/// connection ends.
async fn read_messages(
    conn: &crate::session::Connection,
    stream: &mut Stream,
    limits: &DecodeLimits,
    pongs: &watch::Sender<Option<Bytes>>,
    keepalive: Option<KeepAlive<'_>>,
    deliver: bool,
) -> ReadEnd {
    // Reading is cancel-safe: a tick that interrupts it loses nothing.
    let mut ticks = keepalive.map(|k| {
        let every = k.idle / 3;
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    loop {
        let mut closed = None;
        let mut broken = false;
        let mut control = |c| match c {
            // A copy (at most 125 bytes): the payload shares the read
            // buffer, which may hold a whole frame, and the slot keeps its
            // value after the pong is sent.
            Control::Pong(p) => {
                pongs.send_replace(Some(Bytes::copy_from_slice(&p)));
            }
            Control::Close(code) => closed = Some(code),
            Control::Broken => broken = true,
        };
        let next = match (keepalive, ticks.as_mut()) {
            // One timer for the connection's life, not one per message.
            (Some(k), Some(ticks)) => loop {
                tokio::select! {
                    biased;
                    next = next_message(stream, limits, &mut control) => break next,
                    _ = ticks.tick() => {
                        let quiet = stream.heard().elapsed();
                        if quiet >= k.idle {
                            tracing::info!(
                                quiet_secs = quiet.as_secs(),
                                "WebSocket client silent: connection taken for dead; the session waits for a resume"
                            );
                            return ReadEnd::Gone;
                        }
                        if quiet >= k.idle / 3 {
                            // Every WebSocket client answers a ping by itself.
                            k.pings.notify_one();
                        }
                    }
                }
            },
            _ => next_message(stream, limits, &mut control).await,
        };
        match next {
            Ok(Some(_)) if !deliver => {}
            Ok(Some(msg)) => {
                let bye = matches!(msg, ClientMessage::Bye(_) | ClientMessage::Hello(_));
                if !conn.deliver(msg, false).await || bye {
                    return ReadEnd::Bye;
                }
            }
            Ok(None) => {
                return match closed {
                    Some(code) => ReadEnd::Closed(code),
                    None if broken => ReadEnd::Gone,
                    None => ReadEnd::Ended,
                }
            }
            // After Bye (or our close) nothing read is the session's
            // business any more.
            Err(_) if !deliver => return ReadEnd::Violation,
            Err(e) => {
                conn.fatal(e).await;
                return ReadEnd::Violation;
            }
        }
    }
}

/// Writes what the session sends; true when it ended with a close frame
/// (its own, or the answer to the client's) written out.
async fn write_outbound(
    mut sink: Sink,
    mut rx: mpsc::Receiver<Outbound>,
    mut closes: mpsc::Receiver<Option<u16>>,
    mut pongs: watch::Receiver<Option<Bytes>>,
    pings: Arc<tokio::sync::Notify>,
) -> bool {
    loop {
        // Answers first: a client that pings without pause does not hold
        // them up; its pongs and its close's answer wait at most for the
        // answers already owed (frames stop coming once it closed).
        let mut out = tokio::select! {
            biased;
            out = rx.recv() => match out {
                Some(out) => out,
                // The session ended or moved on; a close frame of the
                // client's that came meanwhile is still answered.
                None => {
                    if let Ok(code) = closes.try_recv() {
                        answer_close(&mut sink, code).await;
                        return true;
                    }
                    return false;
                }
            },
            Some(code) = closes.recv() => {
                // Answers still queued are not sent: the client has closed
                // its side of the conversation.
                answer_close(&mut sink, code).await;
                return true;
            }
            // Ends (and is disabled) when the reader is gone.
            Ok(()) = pongs.changed() => {
                let owed = pongs.borrow_and_update().clone();
                if let Some(p) = owed {
                    sink.queue_pong(&p);
                    if sink.flush().await.is_err() {
                        return false;
                    }
                }
                continue;
            }
            () = pings.notified() => {
                sink.queue_ping();
                if sink.flush().await.is_err() {
                    return false;
                }
                continue;
            }
        };
        // Messages already waiting are queued and go out with one write,
        // not one write per answer; a closing message ends the connection
        // after them.
        loop {
            match out {
                Outbound::Message(m) => sink.queue_binary(&m.encode()),
                Outbound::Close(e) => {
                    close_with(&mut sink, &e).await;
                    return true;
                }
                Outbound::Finish => {
                    sink.queue_close(1000, "bye");
                    return sink.flush().await.is_ok();
                }
                Outbound::GoneAway => {
                    sink.queue_close(
                        GatewayError::GoingAway.ws_close_code(),
                        crate::error::GOING_AWAY_REASON,
                    );
                    let _ = sink.flush().await;
                    return true;
                }
            }
            match rx.try_recv() {
                Ok(next) => out = next,
                Err(_) => break,
            }
        }
        if sink.flush().await.is_err() {
            return false;
        }
    }
}
