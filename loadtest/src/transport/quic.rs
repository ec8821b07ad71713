//! QUIC sessions (`docs/protocol.md`, "QUIC"): quinn + rustls on aws-lc-rs,
//! TLS 1.3, ALPN `framegate/1`. One connection per session; the client
//! opens one bidirectional stream, the control stream, and sends `Hello`
//! and then each `Frame` on it as a u32-big-endian length + message; the
//! answers come back on the same stream. A session ends with `Bye` and the
//! stream finished. Frames never travel as datagrams here (a 50 KB frame
//! does not fit one).
//!
//! Certificates: the load harness is for loopback, where the gateway runs
//! on its self-signed development certificate. The server's certificate is
//! accepted only when its SHA-256 (of the DER leaf) is the pinned one
//! (`--quic-pin`, printed by `framegate serve` and `quic-echo` at start),
//! or the certificate in a PEM file (`--quic-cert`, e.g.
//! `DATA_DIR/tls/dev-cert.pem`). Handshake signatures are still verified,
//! so the server must hold that certificate's key. There is no
//! "accept anything" mode.
//!
//! Connections are spread over a few client endpoints (UDP sockets,
//! `--quic-endpoints`), so one socket's receive task does not cap the
//! client.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::{Bytes, BytesMut};
use framegate_client::tls::PinnedCertificate;
use framegate_protocol::framing::{FrameDecoder, LENGTH_PREFIX_BYTES};
use framegate_protocol::{
    ClientMessage, DecodeLimits, Frame, Hello, ServerMessage, PROTOCOL_VERSION,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::{answer_events, BoxFuture, OutFrame, SessionEvent, SessionHandle, Transport};

/// The ALPN id of protocol version 1.
pub const ALPN: &[u8] = b"framegate/1";

/// QUIC application error code of a normal close.
const CLOSE_NORMAL: u32 = 1000;

/// Parses a SHA-256 fingerprint: 64 hex digits; colons, case and a
/// `sha256:` prefix ignored.
pub fn parse_pin(pin: &str) -> Result<[u8; 32]> {
    let clean: String = pin
        .trim()
        .trim_start_matches("sha256:")
        .chars()
        .filter(|c| *c != ':')
        .collect();
    let mut out = [0u8; 32];
    hex::decode_to_slice(&clean, &mut out)
        .with_context(|| format!("{pin:?} is not a SHA-256 fingerprint (64 hex digits)"))?;
    Ok(out)
}

/// The SHA-256 of the first certificate in a PEM file.
pub fn pin_of_pem_file(path: &Path) -> Result<[u8; 32]> {
    let cert = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read certificate {}", path.display()))?
        .next()
        .with_context(|| format!("no certificate in {}", path.display()))?
        .with_context(|| format!("bad certificate PEM in {}", path.display()))?;
    Ok(Sha256::digest(cert.as_ref()).into())
}

/// TLS 1.3 that accepts only the certificate with SHA-256 `pin` (QUIC, and
/// WebSocket over TLS).
pub fn pinned_tls(pin: [u8; 32]) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("TLS set-up")?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCertificate::new(pin, provider)))
            .with_no_client_auth(),
    )
}

/// The quinn client configuration: TLS 1.3 with the pinned certificate,
/// ALPN `framegate/1`, keep-alives well inside the gateway's idle timeout
/// (idle sessions stay open).
pub fn client_config(pin: [u8; 32]) -> Result<quinn::ClientConfig> {
    let mut tls = pinned_tls(pin)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).context("TLS for QUIC")?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(Duration::from_secs(5)))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(60)).expect("60 s fits"),
        ));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// QUIC transport.
#[derive(Debug, Clone)]
pub struct QuicTransport {
    /// The server's UDP address.
    pub addr: SocketAddr,
    /// The TLS server name (SNI); with a pinned certificate it is not
    /// checked against the certificate.
    pub server_name: String,
    /// The API key (`Hello.credential`).
    pub key: String,
    /// Model to request (empty: the default).
    pub model: String,
    config: quinn::ClientConfig,
    endpoints: Vec<quinn::Endpoint>,
}

impl QuicTransport {
    /// A transport to `addr` accepting only the certificate pinned by
    /// `pin`, over `endpoints` client UDP sockets (at least one). Must be
    /// called inside a tokio runtime.
    pub fn new(
        addr: SocketAddr,
        server_name: String,
        key: String,
        model: String,
        pin: [u8; 32],
        endpoints: usize,
    ) -> Result<Self> {
        let config = client_config(pin)?;
        // A loopback target (the default; others need --allow-remote) gets
        // a loopback socket: nothing listens beyond this machine.
        let ip = match addr.ip() {
            ip if ip.is_loopback() => ip,
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
        };
        let bind = SocketAddr::new(ip, 0);
        let endpoints = (0..endpoints.max(1))
            .map(|_| quinn::Endpoint::client(bind).context("cannot open a UDP socket"))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            addr,
            server_name,
            key,
            model,
            config,
            endpoints,
        })
    }
}

impl Transport for QuicTransport {
    fn name(&self) -> &'static str {
        "quic"
    }

    fn open(&self, id: usize) -> BoxFuture<'_, Result<SessionHandle>> {
        Box::pin(self.open_session(id))
    }
}

/// Reads length-prefixed server messages off the control stream.
struct Reader {
    recv: quinn::RecvStream,
    buf: BytesMut,
    decoder: FrameDecoder,
    limits: DecodeLimits,
}

impl Reader {
    /// The next message; `Err` with the reason the stream ended.
    async fn next(&mut self) -> std::result::Result<ServerMessage, String> {
        loop {
            if self.buf.len() >= LENGTH_PREFIX_BYTES {
                let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                    as usize;
                if len > self.limits.max_message_bytes {
                    return Err(format!("the server announced a message of {len} bytes"));
                }
                if self.buf.len() >= LENGTH_PREFIX_BYTES + len {
                    let body = self
                        .decoder
                        .decode(&mut self.buf)
                        .map_err(|e| e.to_string())?
                        .expect("a whole message is buffered");
                    return ServerMessage::decode(&body, &self.limits)
                        .map_err(|e| format!("undecodable server message: {e}"));
                }
            }
            match self.recv.read_chunk(64 << 10, true).await {
                Ok(Some(c)) => self.buf.extend_from_slice(&c.bytes),
                Ok(None) => return Err("the server finished the stream".into()),
                Err(quinn::ReadError::ConnectionLost(
                    quinn::ConnectionError::ApplicationClosed(c),
                )) => {
                    return Err(format!(
                        "closed by server: {} {}",
                        c.error_code,
                        String::from_utf8_lossy(&c.reason)
                    ))
                }
                Err(e) => return Err(format!("QUIC error: {e}")),
            }
        }
    }
}

/// Writes `msg` with its length prefix, without copying the message.
async fn write_message(send: &mut quinn::SendStream, msg: Bytes) -> Result<()> {
    let prefix = Bytes::copy_from_slice(&(msg.len() as u32).to_be_bytes());
    send.write_all_chunks(&mut [prefix, msg]).await?;
    Ok(())
}

impl QuicTransport {
    async fn open_session(&self, id: usize) -> Result<SessionHandle> {
        let endpoint = &self.endpoints[id % self.endpoints.len()];
        let connect = async {
            let conn = endpoint
                .connect_with(self.config.clone(), self.addr, &self.server_name)
                .context("QUIC connect")?
                .await
                .with_context(|| format!("QUIC handshake with {}", self.addr))?;
            let (send, recv) = conn.open_bi().await.context("open the control stream")?;
            Ok::<_, anyhow::Error>((conn, send, recv))
        };
        let (conn, mut send, recv) = tokio::time::timeout(Duration::from_secs(10), connect)
            .await
            .context("QUIC connect timed out")??;
        let hello = ClientMessage::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            credential: self.key.clone(),
            model: self.model.clone(),
            client_name: "framegate-load".into(),
            ..Default::default()
        });
        write_message(&mut send, hello.encode()).await?;
        let limits = DecodeLimits::default();
        let mut reader = Reader {
            recv,
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(limits.max_message_bytes),
            limits,
        };
        let credits = match tokio::time::timeout(Duration::from_secs(10), reader.next())
            .await
            .context("no Welcome within 10 s")?
        {
            Ok(ServerMessage::Welcome(w)) => w.credits.max(1),
            Ok(ServerMessage::Error(e)) => bail!("refused: {:?} {}", e.code, e.message),
            Ok(other) => bail!("expected Welcome, got {}", other.kind()),
            Err(reason) => bail!("closed before Welcome: {reason}"),
        };
        let (frames_tx, mut frames_rx) = mpsc::channel::<OutFrame>(credits as usize * 4 + 16);
        let (events_tx, events_rx) = mpsc::channel::<SessionEvent>(credits as usize * 4 + 16);
        let writer_conn = conn.clone();
        tokio::spawn(async move {
            let mut ok = true;
            while let Some(f) = frames_rx.recv().await {
                let msg = ClientMessage::Frame(Frame {
                    seq: f.seq,
                    capture_ts_us: 0,
                    codec: f.image.codec,
                    width: 0,
                    height: 0,
                    deadline_us: 0,
                    payload: f.image.bytes.clone(),
                });
                if write_message(&mut send, msg.encode()).await.is_err() {
                    ok = false;
                    break;
                }
            }
            if ok {
                // The run is over for this session: Bye, then the stream
                // ends; the gateway answers what is left and closes 1000.
                let bye = ClientMessage::Bye(framegate_protocol::Bye {
                    reason: "done".into(),
                });
                let _ = write_message(&mut send, bye.encode()).await;
                let _ = send.finish();
                // Give the Bye a moment to leave before the handle drops.
                let _ = tokio::time::timeout(Duration::from_secs(2), writer_conn.closed()).await;
            }
            writer_conn.close(CLOSE_NORMAL.into(), b"done");
        });
        tokio::spawn(async move {
            let _conn = conn;
            let reason = loop {
                let msg = match reader.next().await {
                    Ok(m) => m,
                    Err(reason) => break reason,
                };
                let Some(events) = answer_events(msg, Instant::now()) else {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_with_or_without_colons() {
        let hex64 = "ab".repeat(32);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_pin(&hex64).unwrap(), [0xab; 32]);
        assert_eq!(parse_pin(&colons).unwrap(), [0xab; 32]);
        assert_eq!(parse_pin(&format!("sha256:{hex64}")).unwrap(), [0xab; 32]);
        assert!(parse_pin("abc").is_err());
        assert!(parse_pin(&"zz".repeat(32)).is_err());
    }
}
