//! QUIC streaming sessions (quinn + rustls), ALPN `framegate/1`.
//!
//! One connection carries one session. The client opens one bidirectional
//! stream, the control stream, and sends u32-big-endian-length-prefixed
//! protocol messages on it (`framegate_protocol::framing`); the gateway
//! answers on the same stream. Sessions that set `Hello.datagrams` may send
//! each Frame as one QUIC datagram instead (no prefix). Like the WebSocket
//! adapter this module only reads Hello, authenticates and moves messages;
//! the session runner does everything else.
//!
//! Hostile input is bounded before it costs anything:
//!
//! * more than `quic.max_connections` connections: refused in the handshake;
//! * no TLS handshake plus Hello within `quic.handshake_timeout_secs`: closed;
//! * a length prefix above `limits.max_message_bytes`: closed with 1009 as
//!   soon as the 4 bytes arrive — nothing is allocated for the body;
//! * a stream holds at most `quic.stream_receive_window` unread bytes, and
//!   the reassembly buffer grows only with bytes actually received;
//! * only one bidirectional stream and no unidirectional stream per
//!   connection; undecodable messages or datagrams close that connection
//!   with 1002 — other connections never notice.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use framegate_protocol::framing::{self, FrameDecoder, LENGTH_PREFIX_BYTES};
use framegate_protocol::{ClientMessage, DecodeLimits, ServerMessage, PROTOCOL_VERSION};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{QuicConfig, TlsConfig};
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::session::runner::OUTBOUND_CAPACITY;
use crate::session::{Connection, Outbound};

use super::tls::TlsMaterial;

/// The ALPN protocol id of framegate protocol version 1.
pub const ALPN: &[u8] = b"framegate/1";

/// QUIC application error code of a normal close.
pub const CLOSE_NORMAL: u32 = 1000;

/// How long a closing connection waits for the peer to read its last
/// messages before closing anyway.
const LINGER: Duration = Duration::from_secs(2);

/// Adds the problems of the `[quic]` and `[tls]` sections to `problems`.
pub fn validate(quic: &QuicConfig, tls: &TlsConfig, problems: &mut Vec<String>) {
    if quic.max_connections == 0 {
        problems.push("quic.max_connections must be at least 1".into());
    }
    if quic.idle_timeout_secs == 0 || quic.idle_timeout_secs > 600 {
        problems.push("quic.idle_timeout_secs must be in 1..=600".into());
    }
    if quic.stream_receive_window < 65_536 {
        problems.push("quic.stream_receive_window must be at least 65536".into());
    }
    if tls.cert.is_some() != tls.key.is_some() {
        problems.push("tls.cert and tls.key must be given together".into());
    }
    for p in [&tls.cert, &tls.key].into_iter().flatten() {
        if !p.exists() {
            problems.push(format!("tls: {} does not exist", p.display()));
        }
    }
}

/// A bound QUIC endpoint, not yet serving.
#[derive(Debug)]
pub struct QuicListener {
    endpoint: quinn::Endpoint,
}

impl QuicListener {
    /// Binds the UDP socket and sets up TLS from `material`.
    pub fn bind(config: &QuicConfig, material: &TlsMaterial) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_single_cert(material.certs.clone(), material.key.clone_key())
            .map_err(|e| format!("TLS certificate: {e}"))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| format!("TLS for QUIC: {e}"))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_concurrent_bidi_streams(1u32.into())
            .max_concurrent_uni_streams(0u32.into())
            .max_idle_timeout(Some(
                Duration::from_secs(config.idle_timeout_secs)
                    .try_into()
                    .map_err(|e| format!("quic.idle_timeout_secs: {e}"))?,
            ))
            .stream_receive_window(config.stream_receive_window.into())
            .receive_window(config.stream_receive_window.saturating_mul(2).into())
            .datagram_receive_buffer_size(
                config.datagrams.then_some(config.datagram_receive_buffer),
            );
        server.transport_config(Arc::new(transport));
        // Handshakes waiting to be accepted; the rest are refused by quinn.
        server.max_incoming(config.max_connections.min(65_536));
        let endpoint = quinn::Endpoint::server(server, config.listen)
            .map_err(|e| format!("cannot listen on udp {}: {e}", config.listen))?;
        Ok(Self { endpoint })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Accepts connections until `stop_accepting` resolves; then refuses
    /// new ones while the open sessions drain (the session registry tells
    /// them the gateway is going away), and once they have all closed, or
    /// `close_now` resolves, closes whatever is left with 1001.
    pub async fn serve(
        self,
        gw: Arc<Gateway>,
        stop_accepting: impl std::future::Future<Output = ()>,
        close_now: impl std::future::Future<Output = ()>,
    ) {
        let active = Arc::new(AtomicUsize::new(0));
        let max = gw.config.quic.max_connections;
        tokio::pin!(stop_accepting);
        tokio::pin!(close_now);
        loop {
            let incoming = tokio::select! {
                i = self.endpoint.accept() => match i {
                    Some(i) => i,
                    None => break,
                },
                () = &mut stop_accepting => break,
            };
            if active.load(Ordering::Acquire) >= max {
                tracing::debug!(peer = %incoming.remote_address(), "QUIC connection refused: at max_connections");
                incoming.refuse();
                continue;
            }
            let guard = ActiveGuard::new(active.clone());
            let gw = gw.clone();
            tokio::spawn(async move {
                let _guard = guard;
                run_connection(gw, incoming).await;
            });
        }
        // Draining: new connections are refused, open ones finish.
        let drained = async {
            loop {
                tokio::select! {
                    i = self.endpoint.accept() => match i {
                        Some(i) => i.refuse(),
                        None => return,
                    },
                    () = tokio::time::sleep(Duration::from_millis(50)) => {
                        if active.load(Ordering::Acquire) == 0 {
                            return;
                        }
                    }
                }
            }
        };
        tokio::select! {
            () = drained => {}
            () = &mut close_now => {}
        }
        self.endpoint.close(
            GatewayError::GoingAway.quic_error_code().into(),
            crate::error::GOING_AWAY_REASON.as_bytes(),
        );
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

struct ActiveGuard(Arc<AtomicUsize>);

impl ActiveGuard {
    fn new(count: Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Self(count)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The quinn receive half under a control stream: a native QUIC stream, or
/// a WebTransport stream (whose header `wtransport` has already read).
pub(super) trait QuinnRecv: Send + 'static {
    /// The quinn stream.
    fn quinn(&mut self) -> &mut quinn::RecvStream;
}

impl QuinnRecv for quinn::RecvStream {
    fn quinn(&mut self) -> &mut quinn::RecvStream {
        self
    }
}

impl QuinnRecv for wtransport::RecvStream {
    fn quinn(&mut self) -> &mut quinn::RecvStream {
        self.quic_stream_mut()
    }
}

/// The quinn send half under a control stream (see [`QuinnRecv`]).
pub(super) trait QuinnSend: Send + 'static {
    /// The quinn stream.
    fn quinn(&mut self) -> &mut quinn::SendStream;
}

impl QuinnSend for quinn::SendStream {
    fn quinn(&mut self) -> &mut quinn::SendStream {
        self
    }
}

impl QuinnSend for wtransport::SendStream {
    fn quinn(&mut self) -> &mut quinn::SendStream {
        self.quic_stream_mut()
    }
}

/// Reads length-prefixed messages off the control stream. Cancel-safe: a
/// call dropped while waiting loses nothing.
struct StreamReader<R> {
    recv: R,
    buf: BytesMut,
    decoder: FrameDecoder,
    limits: DecodeLimits,
}

/// Why reading stopped.
enum ReadEnd {
    /// The client finished the stream or the connection went away.
    Closed,
    /// A protocol rule was broken; close with this error.
    Violation(GatewayError),
}

impl<R: QuinnRecv> StreamReader<R> {
    fn new(recv: R, limits: DecodeLimits) -> Self {
        Self {
            recv,
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(limits.max_message_bytes),
            limits,
        }
    }

    /// New limits from the next message on (between messages: the decoder
    /// only ever takes whole ones).
    fn set_limits(&mut self, limits: DecodeLimits) {
        self.decoder = FrameDecoder::new(limits.max_message_bytes);
        self.limits = limits;
    }

    async fn next(&mut self) -> Result<ClientMessage, ReadEnd> {
        loop {
            if self.buf.len() >= LENGTH_PREFIX_BYTES {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if len > self.limits.max_message_bytes {
                    return Err(ReadEnd::Violation(GatewayError::PayloadTooLarge {
                        size: len,
                        limit: self.limits.max_message_bytes,
                    }));
                }
                // Decode only whole messages, so the decoder never reserves
                // room for bytes that have not arrived.
                if self.buf.len() >= LENGTH_PREFIX_BYTES + len {
                    let body = match self.decoder.decode(&mut self.buf) {
                        Ok(Some(b)) => b,
                        Ok(None) => unreachable!("a whole message is buffered"),
                        Err(e) => {
                            return Err(ReadEnd::Violation(GatewayError::Protocol(e.to_string())))
                        }
                    };
                    return decode(&body, &self.limits).map_err(ReadEnd::Violation);
                }
            }
            match self.recv.quinn().read_chunk(64 << 10, true).await {
                Ok(Some(chunk)) => self.buf.extend_from_slice(&chunk.bytes),
                Ok(None) if self.buf.is_empty() => return Err(ReadEnd::Closed),
                Ok(None) => {
                    return Err(ReadEnd::Violation(GatewayError::Protocol(
                        "the control stream ended inside a message".into(),
                    )))
                }
                Err(_) => return Err(ReadEnd::Closed),
            }
        }
    }
}

fn decode(body: &Bytes, limits: &DecodeLimits) -> Result<ClientMessage, GatewayError> {
    ClientMessage::decode(body, limits)
        .map_err(|e| GatewayError::Protocol(format!("undecodable message: {e}")))
}

async fn run_connection(gw: Arc<Gateway>, incoming: quinn::Incoming) {
    let deadline = Instant::now() + Duration::from_secs(gw.config.quic.handshake_timeout_secs);
    let conn = match tokio::time::timeout_at(deadline, incoming).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "QUIC handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!("QUIC handshake timed out");
            return;
        }
    };
    let timeout = || GatewayError::Protocol("no Hello within the handshake timeout".into());
    let (send, recv) = match tokio::time::timeout_at(deadline, conn.accept_bi()).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => return,
        Err(_) => {
            close_connection(&conn, &timeout());
            return;
        }
    };
    run_session(gw, conn.clone(), send, recv, deadline, "quic", Some(&conn)).await;
}

/// Runs one session on an accepted control stream: reads Hello before
/// `deadline`, authenticates, opens the session as `transport` and moves
/// messages until it ends. `datagrams` is the connection whose QUIC
/// datagrams carry Frames (native QUIC); WebTransport passes `None`.
pub(super) async fn run_session<S: QuinnSend, R: QuinnRecv>(
    gw: Arc<Gateway>,
    conn: quinn::Connection,
    send: S,
    recv: R,
    deadline: Instant,
    transport: &'static str,
    datagrams: Option<&quinn::Connection>,
) {
    let limits = DecodeLimits::with_max_message_bytes(gw.config.limits.max_message_bytes);
    let timeout = || GatewayError::Protocol("no Hello within the handshake timeout".into());
    // Hello first, with a limit of its own (the client is not yet
    // authenticated); the configured one once the session is open.
    let hello_max = super::hello_max_bytes(gw.config.limits.max_message_bytes);
    let mut reader = StreamReader::new(recv, DecodeLimits::with_max_message_bytes(hello_max));
    let (out_tx, out_rx) = mpsc::channel(OUTBOUND_CAPACITY);
    let mut writer = tokio::spawn(write_outbound(conn.clone(), send, out_rx));
    // Hello, authentication and the session, or the refusal to send (`None`:
    // the client went away first).
    let opened: Result<_, Option<GatewayError>> = async {
        let hello = match tokio::time::timeout_at(deadline, reader.next()).await {
            Err(_) => return Err(Some(timeout())),
            Ok(Err(ReadEnd::Closed)) => return Err(None),
            Ok(Err(ReadEnd::Violation(GatewayError::PayloadTooLarge { size, .. }))) => {
                return Err(Some(super::hello_too_large(size, hello_max)))
            }
            Ok(Err(ReadEnd::Violation(e))) => return Err(Some(e)),
            Ok(Ok(ClientMessage::Hello(h))) => h,
            Ok(Ok(other)) => {
                return Err(Some(GatewayError::Protocol(format!(
                    "expected Hello first, got {}",
                    other.kind()
                ))))
            }
        };
        let principal = gw.authenticate(&hello.credential).await.map_err(Some)?;
        // A resume continues on the session's model, checked when it opened.
        let model = hello
            .resume_token
            .is_empty()
            .then_some(hello.model.as_str());
        gw.authorize_stream(&principal, model).map_err(Some)?;
        if hello.protocol_version != PROTOCOL_VERSION {
            return Err(Some(GatewayError::Protocol(format!(
                "protocol version {} is not supported; this gateway speaks {PROTOCOL_VERSION}",
                hello.protocol_version
            ))));
        }
        let use_datagrams =
            hello.datagrams && datagrams.is_some_and(|c| c.max_datagram_size().is_some());
        let session = gw
            .sessions
            .open(&gw, &principal, &hello, transport, out_tx.clone())
            .await
            .map_err(Some)?;
        Ok((session, use_datagrams))
    }
    .await;
    let (session, use_datagrams) = match opened {
        Ok(opened) => opened,
        Err(refusal) => {
            if let Some(e) = refusal {
                let _ = out_tx.send(Outbound::Close(e)).await;
            }
            drop(out_tx);
            // Wait for the writer to send the refusal and linger: the caller
            // drops the connection when this returns (WebTransport closes
            // its session then), which would otherwise race the writer
            // task and could close the connection before the Error left.
            let _ = writer.await;
            return;
        }
    };
    drop(out_tx);
    reader.set_limits(limits);
    // A client that took the session's end (or closed the connection on
    // purpose) after Bye ends the session for good; one whose connection was
    // lost first may resume it for the answers it missed. The session
    // ignores `quit` from a client that did not say Bye.
    let clean = tokio::select! {
        biased;
        end = &mut writer => {
            if matches!(end, Ok(WriterEnd::ClientEnded)) {
                session.quit();
            }
            return;
        }
        clean = read_messages(&session, datagrams, &mut reader, &limits, use_datagrams) => clean,
    };
    if !clean {
        // Closed by the writer itself (after the session's end, say, on a
        // connection resumed after Bye): it says how the client took it.
        let here = matches!(
            conn.close_reason(),
            Some(quinn::ConnectionError::LocallyClosed)
        );
        let client_ended = if here || writer.is_finished() {
            super::drain_writer(&mut writer).await == Some(WriterEnd::ClientEnded)
        } else {
            writer.abort();
            closed_by_client(&conn)
        };
        if client_ended {
            session.quit();
        }
        return;
    }
    // After Bye (or a violation) the answers still go out; a client that
    // closes the connection meanwhile wants no more of them.
    let client_ended = tokio::select! {
        end = super::drain_writer(&mut writer) => end == Some(WriterEnd::ClientEnded),
        _ = conn.closed() => {
            if closed_by_client(&conn) {
                writer.abort();
                true
            } else {
                // Closed here: by the writer itself, which says how.
                super::drain_writer(&mut writer).await == Some(WriterEnd::ClientEnded)
            }
        }
    };
    if client_ended {
        session.quit();
    }
}

/// How a connection's writer ended.
#[derive(Debug, PartialEq, Eq)]
enum WriterEnd {
    /// The client acknowledged the stream's end after the last answer, or
    /// closed the connection itself (an application close): it ended its
    /// side on purpose.
    ClientEnded,
    /// Anything else: a lost connection, a refusal, a session moved.
    Other,
}

/// Whether `conn` was closed by the client on purpose: an application
/// close with code 0 (what a QUIC stack sends when the application drops the
/// connection) or 1000 (a normal end), not a timeout, a reset or an error
/// code.
fn closed_by_client(conn: &quinn::Connection) -> bool {
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(c)) => {
            let code = c.error_code.into_inner();
            code == 0 || code == u64::from(CLOSE_NORMAL)
        }
        _ => false,
    }
}

/// Forwards client messages (stream and datagrams); true when the session
/// ends by Bye or a violation (answers still go out), false when the
/// connection is gone (the session waits for a resume).
async fn read_messages<R: QuinnRecv>(
    session: &Connection,
    conn: Option<&quinn::Connection>,
    reader: &mut StreamReader<R>,
    limits: &DecodeLimits,
    datagrams: bool,
) -> bool {
    loop {
        let (msg, datagram) = tokio::select! {
            m = reader.next() => match m {
                Ok(m) => (m, false),
                Err(ReadEnd::Closed) => return false,
                Err(ReadEnd::Violation(e)) => {
                    session.fatal(e).await;
                    return true;
                }
            },
            d = read_datagram(conn) => match d {
                Err(_) => return false,
                Ok(_) if !datagrams => {
                    session.fatal(GatewayError::Protocol("datagram on a session that did not ask for datagrams in Hello".into())).await;
                    return true;
                }
                Ok(bytes) => match decode(&bytes, limits) {
                    Ok(m @ ClientMessage::Frame(_)) => (m, true),
                    Ok(other) => {
                        session.fatal(GatewayError::Protocol(format!("only Frames may travel as datagrams, got {}", other.kind()))).await;
                        return true;
                    }
                    Err(e) => {
                        session.fatal(e).await;
                        return true;
                    }
                },
            },
        };
        let ends = matches!(msg, ClientMessage::Bye(_) | ClientMessage::Hello(_));
        if !session.deliver(msg, datagram).await || ends {
            return true;
        }
    }
}

/// The next datagram of `conn`; never, without one.
async fn read_datagram(conn: Option<&quinn::Connection>) -> Result<Bytes, quinn::ConnectionError> {
    match conn {
        Some(c) => c.read_datagram().await,
        None => std::future::pending().await,
    }
}

fn close_connection(conn: &quinn::Connection, e: &GatewayError) {
    // At most 120 bytes, cut at a character boundary (the message may quote
    // what the client sent).
    let reason = e.to_string();
    conn.close(
        e.quic_error_code().into(),
        super::cut_at_char_boundary(&reason, 120).as_bytes(),
    );
}

async fn write_outbound<S: QuinnSend>(
    conn: quinn::Connection,
    mut send: S,
    mut rx: mpsc::Receiver<Outbound>,
) -> WriterEnd {
    let ended = |conn: &quinn::Connection| {
        if closed_by_client(conn) {
            WriterEnd::ClientEnded
        } else {
            WriterEnd::Other
        }
    };
    while let Some(out) = rx.recv().await {
        let (last, error) = match out {
            Outbound::Message(m) => {
                if send
                    .quinn()
                    .write_all(&framing::encode(&m.encode()))
                    .await
                    .is_err()
                {
                    return ended(&conn);
                }
                continue;
            }
            Outbound::Close(e) => (ServerMessage::Error(e.to_message(None)), Some(e)),
            Outbound::Finish => {
                let _ = send.quinn().finish();
                // Every byte and the end acknowledged by the client's QUIC
                // stack (or the stream stopped by it): the end reached it.
                let took = matches!(
                    tokio::time::timeout(LINGER, send.quinn().stopped()).await,
                    Ok(Ok(_))
                );
                let end = if took {
                    WriterEnd::ClientEnded
                } else {
                    ended(&conn)
                };
                conn.close(CLOSE_NORMAL.into(), b"bye");
                return end;
            }
            Outbound::GoneAway => {
                let _ = send.quinn().finish();
                let _ = tokio::time::timeout(LINGER, send.quinn().stopped()).await;
                close_connection(&conn, &GatewayError::GoingAway);
                return WriterEnd::Other;
            }
        };
        // Bounded as a whole: a client that grants no flow-control credit
        // (and keeps the connection alive) would otherwise hold the write,
        // and with it the connection's slot, for ever.
        let _ = tokio::time::timeout(LINGER, async {
            let _ = send
                .quinn()
                .write_all(&framing::encode(&last.encode()))
                .await;
            let _ = send.quinn().finish();
            let _ = send.quinn().stopped().await;
        })
        .await;
        if let Some(e) = error {
            close_connection(&conn, &e);
        }
        return WriterEnd::Other;
    }
    // The session moved to a newer connection (or ended): this one is done.
    conn.close(CLOSE_NORMAL.into(), b"session moved to another connection");
    WriterEnd::Other
}
