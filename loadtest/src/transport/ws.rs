//! WebSocket sessions: `Hello` → `Welcome`, then one binary message per
//! `Frame`, answers read by a task of their own (`docs/protocol.md`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use framegate_protocol::{
    ClientMessage, DecodeLimits, Frame, Hello, ServerMessage, PROTOCOL_VERSION,
};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::{answer_events, BoxFuture, OutFrame, SessionEvent, SessionHandle, Transport};

/// WebSocket transport.
#[derive(Debug, Clone)]
pub struct WsTransport {
    /// `ws://host:port/v1/stream`, or `wss://` with `tls`.
    pub url: String,
    /// For `wss://`: the TLS client configuration (e.g. a pinned
    /// certificate, [`super::quic::pinned_tls`]).
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    /// The API key (sent in the upgrade's `Authorization` and in `Hello`).
    pub key: String,
    /// Model to request (empty: the default).
    pub model: String,
    /// The addresses the URL's host was checked to resolve to
    /// ([`crate::target::Target::check_loopback`]); connections go there
    /// and the name is not looked up again. Empty: resolve the host.
    pub addrs: Vec<SocketAddr>,
}

impl Transport for WsTransport {
    fn name(&self) -> &'static str {
        "ws"
    }

    fn open(&self, _id: usize) -> BoxFuture<'_, Result<SessionHandle>> {
        Box::pin(self.open_session())
    }
}

impl WsTransport {
    async fn open_session(&self) -> Result<SessionHandle> {
        let mut req = self.url.as_str().into_client_request()?;
        req.headers_mut()
            .insert("authorization", format!("Bearer {}", self.key).parse()?);
        // Answers are small: tungstenite zero-fills up to `read_buffer_size`
        // bytes before every read (128 KiB by default, 10 % of the client's
        // CPU in a profile), so read in 8 KiB steps. TCP_NODELAY as any
        // streaming client.
        let config = WebSocketConfig::default().read_buffer_size(8 << 10);
        let connector = self.tls.clone().map(tokio_tungstenite::Connector::Rustls);
        let connect = async {
            if self.addrs.is_empty() {
                return tokio_tungstenite::connect_async_tls_with_config(
                    req,
                    Some(config),
                    true,
                    connector,
                )
                .await;
            }
            let tcp = TcpStream::connect(&self.addrs[..]).await?;
            tcp.set_nodelay(true)?;
            tokio_tungstenite::client_async_tls_with_config(req, tcp, Some(config), connector).await
        };
        let (mut ws, _) = tokio::time::timeout(Duration::from_secs(10), connect)
            .await
            .context("WebSocket connect timed out")?
            .context("WebSocket connect")?;
        let hello = ClientMessage::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            credential: self.key.clone(),
            model: self.model.clone(),
            client_name: "framegate-load".into(),
            ..Default::default()
        });
        ws.send(Message::Binary(hello.encode())).await?;
        let limits = DecodeLimits::default();
        let credits = loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .context("no Welcome within 10 s")?;
            match msg {
                Some(Ok(Message::Binary(b))) => match ServerMessage::decode(&b, &limits)? {
                    ServerMessage::Welcome(w) => break w.credits.max(1),
                    ServerMessage::Error(e) => bail!("refused: {:?} {}", e.code, e.message),
                    other => bail!("expected Welcome, got {}", other.kind()),
                },
                Some(Ok(Message::Close(f))) => bail!("closed before Welcome: {f:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => bail!("closed before Welcome"),
            }
        };
        let (mut sink, mut stream) = ws.split();
        let (frames_tx, mut frames_rx) = mpsc::channel::<OutFrame>(credits as usize * 4 + 16);
        let (events_tx, events_rx) = mpsc::channel::<SessionEvent>(credits as usize * 4 + 16);
        tokio::spawn(async move {
            // Every frame already queued goes out with one flush (one write
            // syscall for the lot), not one per frame.
            'send: while let Some(mut f) = frames_rx.recv().await {
                loop {
                    let msg = ClientMessage::Frame(Frame {
                        seq: f.seq,
                        capture_ts_us: 0,
                        codec: f.image.codec,
                        width: 0,
                        height: 0,
                        deadline_us: 0,
                        payload: f.image.bytes.clone(),
                    });
                    if sink.feed(Message::Binary(msg.encode())).await.is_err() {
                        break 'send;
                    }
                    match frames_rx.try_recv() {
                        Ok(next) => f = next,
                        Err(_) => break,
                    }
                }
                if sink.flush().await.is_err() {
                    break;
                }
            }
            // Bye, then the close: the gateway ends the session at once
            // (a close alone would leave it waiting for a resume).
            let bye = ClientMessage::Bye(framegate_protocol::Bye {
                reason: "done".into(),
            });
            let _ = sink.send(Message::Binary(bye.encode())).await;
            let _ = sink.close().await;
        });
        tokio::spawn(async move {
            let reason = loop {
                let b = match stream.next().await {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Close(f))) => break format!("closed by server: {f:?}"),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => break format!("WebSocket error: {e}"),
                    None => break "connection closed".to_string(),
                };
                let at = Instant::now();
                let msg = match ServerMessage::decode(&b, &limits) {
                    Ok(m) => m,
                    Err(e) => break format!("undecodable server message: {e}"),
                };
                let Some(events) = answer_events(msg, at) else {
                    continue;
                };
                for ev in events {
                    if events_tx.send(ev).await.is_err() {
                        return;
                    }
                }
            };
            let _ = events_tx.send(SessionEvent::Closed(reason)).await;
        });
        Ok(SessionHandle {
            frames: frames_tx,
            events: events_rx,
            credits,
        })
    }
}
