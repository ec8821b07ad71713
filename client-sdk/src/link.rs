//! One connection to the gateway, QUIC or WebSocket, split into a sending
//! and a receiving half that both speak protocol messages.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use framegate_protocol::framing::{self, FrameDecoder, LENGTH_PREFIX_BYTES};
use framegate_protocol::{ClientMessage, DecodeError, DecodeLimits, Hello, ServerMessage, Welcome};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::ClientError;

/// The ALPN id of protocol version 1.
pub(crate) const ALPN: &[u8] = b"framegate/1";

/// QUIC application code of [`LinkTx::kill`]: an abnormal end, which the
/// gateway takes for a lost connection.
const KILLED_CODE: u32 = 1006;

/// How long the answer to the gateway's WebSocket close may take to leave.
const CLOSE_ANSWER_MAX: Duration = Duration::from_secs(1);

/// WebSocket close code and QUIC application error code of a gateway that
/// is going away (docs/protocol.md, "Going away").
pub(crate) const GOING_AWAY_CODE: u16 = 1001;

/// One gateway sessions may go to.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    /// As the caller gave it (for reports).
    pub(crate) url: String,
    pub(crate) target: StreamTarget,
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Where streaming sessions go.
#[derive(Debug, Clone)]
pub(crate) enum StreamTarget {
    Quic {
        endpoint: quinn::Endpoint,
        addr: SocketAddr,
        server_name: String,
        config: quinn::ClientConfig,
    },
    Ws {
        url: String,
        tls: Option<Arc<rustls::ClientConfig>>,
    },
}

pub(crate) enum LinkTx {
    Quic {
        conn: quinn::Connection,
        send: quinn::SendStream,
        datagrams: bool,
    },
    Ws(SplitSink<Ws, Message>),
    /// After [`LinkTx::kill`].
    Dead,
}

pub(crate) enum LinkRx {
    Quic {
        recv: quinn::RecvStream,
        buf: BytesMut,
        decoder: FrameDecoder,
        limits: DecodeLimits,
    },
    Ws {
        stream: SplitStream<Ws>,
        limits: DecodeLimits,
        /// A keep-alive ping sent, with nothing heard from the gateway
        /// since (any frame, a pong included, clears it).
        ping_at: Option<tokio::time::Instant>,
        /// How long a ping may go unanswered before the connection counts
        /// as dead.
        silence: Duration,
    },
}

fn lost(e: impl std::fmt::Display) -> ClientError {
    ClientError::ConnectionLost(e.to_string())
}

impl LinkTx {
    pub(crate) async fn send(&mut self, msg: &ClientMessage) -> Result<(), ClientError> {
        self.send_reporting_datagram(msg).await.map(|_| ())
    }

    /// Sends `msg`; whether it went as a QUIC datagram (a Frame on a
    /// datagram session that fits one), which the gateway may never see.
    pub(crate) async fn send_reporting_datagram(
        &mut self,
        msg: &ClientMessage,
    ) -> Result<bool, ClientError> {
        let bytes = msg.encode();
        match self {
            LinkTx::Quic {
                conn,
                send,
                datagrams,
            } => {
                if *datagrams && matches!(msg, ClientMessage::Frame(_)) {
                    if let Some(max) = conn.max_datagram_size() {
                        if bytes.len() <= max {
                            return conn.send_datagram(bytes).map(|()| true).map_err(lost);
                        }
                    }
                }
                send.write_all(&framing::encode(&bytes))
                    .await
                    .map(|()| false)
                    .map_err(lost)
            }
            LinkTx::Ws(sink) => sink
                .send(Message::Binary(bytes))
                .await
                .map(|()| false)
                .map_err(lost),
            LinkTx::Dead => Err(lost("the connection was broken")),
        }
    }

    /// Keeps a quiet connection checked: a WebSocket ping (the gateway
    /// answers with a pong, which the receiving half counts as word from
    /// the gateway); true when one was sent. QUIC has its own keep-alive
    /// and idle timeout.
    pub(crate) async fn keepalive(&mut self) -> Result<bool, ClientError> {
        match self {
            LinkTx::Ws(sink) => sink
                .send(Message::Ping(Default::default()))
                .await
                .map(|()| true)
                .map_err(lost),
            LinkTx::Quic { .. } | LinkTx::Dead => Ok(false),
        }
    }

    /// Ends the connection at once, without Bye (tests use it to simulate a
    /// broken network).
    /// The socket closes once the receiving half is dropped too.
    pub(crate) fn kill(&mut self) {
        if let LinkTx::Quic { conn, .. } = std::mem::replace(self, LinkTx::Dead) {
            // Not 0 or 1000: the gateway takes those for a deliberate end.
            conn.close(KILLED_CODE.into(), b"killed");
        }
    }
}

impl LinkRx {
    /// The next message. Cancel-safe.
    /// The next message from the gateway. A message that does not decode
    /// is [`ClientError::Protocol`] (the session ends on it: resuming would
    /// only be sent it again); one of a type this SDK does not know (a
    /// newer gateway's) is skipped, as docs/protocol.md asks.
    pub(crate) async fn recv(&mut self) -> Result<ServerMessage, ClientError> {
        match self {
            LinkRx::Quic {
                recv,
                buf,
                decoder,
                limits,
            } => loop {
                if buf.len() >= LENGTH_PREFIX_BYTES {
                    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                    if len > limits.max_message_bytes {
                        return Err(ClientError::Protocol(format!(
                            "message of {len} bytes announced"
                        )));
                    }
                    if buf.len() >= LENGTH_PREFIX_BYTES + len {
                        let body = decoder
                            .decode(buf)
                            .map_err(|e| ClientError::Protocol(e.to_string()))?
                            .expect("whole message buffered");
                        match server_message(&body, limits) {
                            Some(m) => return m,
                            None => continue,
                        }
                    }
                }
                match recv.read_chunk(64 << 10, true).await {
                    Ok(Some(c)) => buf.extend_from_slice(&c.bytes),
                    Ok(None) => return Err(lost("the gateway finished the stream")),
                    Err(quinn::ReadError::ConnectionLost(
                        quinn::ConnectionError::ApplicationClosed(c),
                    )) if c.error_code.into_inner() == u64::from(GOING_AWAY_CODE) => {
                        return Err(ClientError::GoingAway(
                            String::from_utf8_lossy(&c.reason).into_owned(),
                        ))
                    }
                    Err(e) => return Err(lost(e)),
                }
            },
            LinkRx::Ws {
                stream,
                limits,
                ping_at,
                silence,
            } => loop {
                // A connection that died without a word (a NAT entry gone,
                // a network dropped) never says so: a keep-alive ping left
                // unanswered beyond the bound is the sign. What arrived
                // while this half was not read (the session busy elsewhere)
                // is read first: `timeout_at` polls the stream before its
                // deadline.
                let next = match *ping_at {
                    Some(at) => match tokio::time::timeout_at(at + *silence, stream.next()).await {
                        Ok(next) => next,
                        Err(_) => {
                            return Err(lost(format!(
                                "no answer from the gateway to a ping in {} ms",
                                silence.as_millis()
                            )))
                        }
                    },
                    None => stream.next().await,
                };
                *ping_at = None;
                match next {
                    Some(Ok(Message::Binary(b))) => match server_message(&b, limits) {
                        Some(m) => return m,
                        None => continue,
                    },
                    Some(Ok(Message::Close(Some(f)))) if u16::from(f.code) == GOING_AWAY_CODE => {
                        return Err(ClientError::GoingAway(f.reason.to_string()))
                    }
                    Some(Ok(Message::Close(f))) => {
                        return Err(lost(format!(
                            "closed by the gateway ({})",
                            f.map_or_else(|| "no code".into(), |f| f.code.to_string())
                        )))
                    }
                    Some(Ok(_)) => continue,
                    // What the gateway sent, not how it got here: a resume
                    // would only be sent the same message again. (Bad UTF-8
                    // stays a lost connection: the gateway sends no text
                    // and no such close reason, so it came from something
                    // in between, and a resume may well work.)
                    Some(Err(e @ WsError::Capacity(_))) => {
                        return Err(ClientError::Protocol(e.to_string()))
                    }
                    Some(Err(e)) => return Err(lost(e)),
                    None => return Err(lost("the gateway closed the connection")),
                }
            },
        }
    }
}

impl LinkRx {
    /// After the last answer of a session that said Bye: reads the
    /// gateway's close, if not read yet, and answers it (WebSocket; a QUIC
    /// stack acknowledges the stream's end by itself), so that the gateway
    /// ends the session at once instead of holding it for a resume. At
    /// most [`CLOSE_ANSWER_MAX`].
    pub(crate) async fn answer_close(&mut self) {
        if let LinkRx::Ws { stream, .. } = self {
            // The next read sends the answer to a close already read
            // (tungstenite answers on the read after it), then ends.
            let _ = tokio::time::timeout(CLOSE_ANSWER_MAX, async {
                while let Some(Ok(_)) = stream.next().await {}
            })
            .await;
        }
    }

    /// Whether a keep-alive ping is still waiting for word from the
    /// gateway (WebSocket).
    pub(crate) fn ping_outstanding(&self) -> bool {
        matches!(
            self,
            LinkRx::Ws {
                ping_at: Some(_),
                ..
            }
        )
    }

    /// A keep-alive ping was just sent (WebSocket): the gateway has
    /// `silence` to say anything.
    pub(crate) fn ping_sent(&mut self) {
        if let LinkRx::Ws { ping_at, .. } = self {
            *ping_at = Some(tokio::time::Instant::now());
        }
    }
}

/// Connects, sends `hello`, and waits for Welcome.
pub(crate) async fn open(
    target: &StreamTarget,
    hello: &Hello,
    timeout: Duration,
    silence: Duration,
) -> Result<(LinkTx, LinkRx, Welcome), ClientError> {
    let limits = DecodeLimits::default();
    let fut = async {
        let (mut tx, mut rx) = match target {
            StreamTarget::Quic {
                endpoint,
                addr,
                server_name,
                config,
            } => {
                let connect_err = |e: &dyn std::fmt::Display| ClientError::Connect {
                    url: format!("quic://{addr}"),
                    reason: e.to_string(),
                };
                let conn = endpoint
                    .connect_with(config.clone(), *addr, server_name)
                    .map_err(|e| connect_err(&e))?
                    .await
                    .map_err(|e| connect_err(&e))?;
                let (send, recv) = conn.open_bi().await.map_err(|e| connect_err(&e))?;
                (
                    LinkTx::Quic {
                        conn,
                        send,
                        datagrams: hello.datagrams,
                    },
                    LinkRx::Quic {
                        recv,
                        buf: BytesMut::new(),
                        decoder: FrameDecoder::new(limits.max_message_bytes),
                        limits,
                    },
                )
            }
            StreamTarget::Ws { url, tls } => {
                let connector = tls
                    .as_ref()
                    .map(|c| tokio_tungstenite::Connector::Rustls(c.clone()));
                // Messages are bounded as on QUIC (`max_message_bytes`):
                // tungstenite's own default would buffer up to 64 MiB, and
                // a message over its bound used to end the connection
                // only, so the session resumed and was sent it again.
                let config = WebSocketConfig::default()
                    .max_message_size(Some(limits.max_message_bytes))
                    .max_frame_size(Some(limits.max_message_bytes));
                let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
                    url.as_str(),
                    Some(config),
                    true,
                    connector,
                )
                .await
                .map_err(|e| ClientError::Connect {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
                bound_unacknowledged_writes(ws.get_ref(), silence);
                let (sink, stream) = ws.split();
                (
                    LinkTx::Ws(sink),
                    LinkRx::Ws {
                        stream,
                        limits,
                        ping_at: None,
                        silence,
                    },
                )
            }
        };
        tx.send(&ClientMessage::Hello(hello.clone())).await?;
        match rx.recv().await? {
            ServerMessage::Welcome(w) => Ok((tx, rx, w)),
            ServerMessage::Error(e) => Err(ClientError::Gateway {
                code: e.code,
                message: e.message,
                retryable: e.retryable,
                retry_after: e.retry_after_ms.map(crate::error::millis),
            }),
            other => Err(ClientError::Protocol(format!(
                "expected Welcome, got {}",
                other.kind()
            ))),
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ClientError::ConnectionLost("no Welcome within the timeout".into()))?
}

/// `body` decoded; `None` for a message type this SDK does not know.
fn server_message(
    body: &bytes::Bytes,
    limits: &DecodeLimits,
) -> Option<Result<ServerMessage, ClientError>> {
    match ServerMessage::decode(body, limits) {
        Err(DecodeError::UnknownMessage(t)) => {
            tracing::debug!(
                message_type = t,
                "skipping a message type this SDK does not know"
            );
            None
        }
        r => Some(r.map_err(|e| ClientError::Protocol(e.to_string()))),
    }
}

/// Bounds how long the socket's sent data may stay unacknowledged, or
/// unsent for a zero window, to `silence` (at least 2 s;
/// `TCP_USER_TIMEOUT`): the kernel
/// then breaks the connection and the session resumes. The keep-alive
/// deadline cannot see this case: while a write waits (a gateway that
/// stopped reading, a path gone dead with frames in the send buffer) the
/// session neither pings nor reads, and without the bound the write would
/// wait until TCP gives up (about 15 minutes), or for ever on a zero window.
fn bound_unacknowledged_writes(
    stream: &tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    silence: Duration,
) {
    let tcp = match stream {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp,
        tokio_tungstenite::MaybeTlsStream::Rustls(tls) => tls.get_ref().0,
        _ => return,
    };
    // Not below a few retransmission timeouts (200 ms at least each): a
    // keep-alive set very short must not make one lost segment fatal.
    let bound = silence.max(USER_TIMEOUT_FLOOR);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(bound)) {
        tracing::debug!(error = %e, "cannot set TCP_USER_TIMEOUT; a stalled write waits for TCP");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = (tcp, bound);
}

/// The least [`bound_unacknowledged_writes`] sets.
const USER_TIMEOUT_FLOOR: Duration = Duration::from_secs(2);
