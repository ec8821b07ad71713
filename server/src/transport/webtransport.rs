//! WebTransport (HTTP/3 over QUIC) streaming sessions for browsers, at
//! `https://HOST:PORT/v1/wt` (`wtransport` on the same quinn and rustls as
//! the native QUIC transport).
//!
//! One WebTransport session per QUIC connection carries one gateway
//! session. The browser opens one bidirectional stream and speaks on it
//! exactly what a native QUIC client speaks on its control stream:
//! u32-big-endian-length-prefixed protocol messages, Hello first with the
//! credential. Everything after the stream is accepted is
//! [`super::quic::run_session`], so the limits, authentication and session
//! are those of QUIC (and, behind them, of WebSocket). Frames do not travel
//! as datagrams here.
//!
//! Bounds: `quic.max_connections` connections, `quic.handshake_timeout_secs`
//! for TLS + the HTTP/3 CONNECT + the stream + Hello, `quic.idle_timeout_secs`
//! and `quic.stream_receive_window`; a few streams per connection (HTTP/3
//! needs its control and QPACK streams, the CONNECT and ours); any path but
//! `/v1/wt` is answered 404.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use wtransport::endpoint::endpoint_side::Server;
use wtransport::endpoint::IncomingSession;

use crate::config::{QuicConfig, WebTransportConfig};
use crate::error::GatewayError;
use crate::gateway::Gateway;

use super::tls::TlsMaterial;

/// The path of the WebTransport session.
pub const PATH: &str = "/v1/wt";

/// What `GET /v1/webtransport` tells browsers.
#[derive(Debug, Clone, Serialize)]
pub struct WebTransportInfo {
    /// The UDP port.
    pub port: u16,
    /// The address listened on; an unspecified one (`0.0.0.0`) means "the
    /// host the page came from".
    #[serde(skip)]
    pub ip: std::net::IpAddr,
    /// SHA-256 of the certificate (DER), lowercase hex, when browsers must
    /// pin it (`serverCertificateHashes`): the generated one. `None` with a
    /// configured `[tls]` certificate, which browsers validate themselves.
    pub certificate_sha256: Option<String>,
}

impl WebTransportInfo {
    /// The session URL for a page served from `host` (a `Host` header; its
    /// port, if any, is ignored).
    pub fn url(&self, host: Option<&str>) -> String {
        let host = if self.ip.is_unspecified() {
            host.map(strip_port).unwrap_or("127.0.0.1").to_string()
        } else if self.ip.is_ipv6() {
            format!("[{}]", self.ip)
        } else {
            self.ip.to_string()
        };
        format!("https://{host}:{}{PATH}", self.port)
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return rest
            .split(']')
            .next()
            .map_or(host, |h| &host[..h.len() + 2]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// A bound WebTransport endpoint, not yet serving.
pub struct WebTransportListener {
    endpoint: wtransport::Endpoint<Server>,
    info: WebTransportInfo,
}

impl std::fmt::Debug for WebTransportListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebTransportListener")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl WebTransportListener {
    /// Binds the UDP socket with `material` (`pin`: publish its SHA-256 for
    /// `serverCertificateHashes`) and `[quic]`'s limits.
    pub fn bind(
        config: &WebTransportConfig,
        quic: &QuicConfig,
        material: &TlsMaterial,
        pin: bool,
    ) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_single_cert(material.certs.clone(), material.key.clone_key())
            .map_err(|e| format!("TLS certificate: {e}"))?;
        tls.alpn_protocols = vec![wtransport::tls::WEBTRANSPORT_ALPN.to_vec()];
        let mut transport = quinn::TransportConfig::default();
        transport
            // The CONNECT and our stream, with room for a browser's extra.
            .max_concurrent_bidi_streams(4u32.into())
            // HTTP/3 control plus the two QPACK streams, and one spare.
            .max_concurrent_uni_streams(4u32.into())
            .max_idle_timeout(Some(
                Duration::from_secs(quic.idle_timeout_secs)
                    .try_into()
                    .map_err(|e| format!("quic.idle_timeout_secs: {e}"))?,
            ))
            .stream_receive_window(quic.stream_receive_window.into())
            .receive_window(quic.stream_receive_window.saturating_mul(2).into())
            // HTTP/3 datagram support is part of the WebTransport handshake;
            // frames never come as datagrams, so a small buffer will do.
            .datagram_receive_buffer_size(Some(64 << 10));
        let mut server = wtransport::ServerConfig::builder()
            .with_bind_address(config.listen)
            .with_custom_tls_and_transport(tls, transport)
            .build();
        server
            .quic_config_mut()
            .max_incoming(quic.max_connections.min(65_536));
        let endpoint = wtransport::Endpoint::server(server)
            .map_err(|e| format!("cannot listen on udp {} (WebTransport): {e}", config.listen))?;
        let addr = endpoint
            .local_addr()
            .map_err(|e| format!("WebTransport socket: {e}"))?;
        Ok(Self {
            endpoint,
            info: WebTransportInfo {
                port: addr.port(),
                ip: addr.ip(),
                certificate_sha256: pin.then(|| material.fingerprint.clone()),
            },
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// What browsers need to connect.
    pub fn info(&self) -> WebTransportInfo {
        self.info.clone()
    }

    /// Accepts sessions until `shutdown` resolves, then closes them all.
    pub async fn serve(self, gw: Arc<Gateway>, shutdown: impl std::future::Future<Output = ()>) {
        let active = Arc::new(AtomicUsize::new(0));
        let max = gw.config.quic.max_connections;
        tokio::pin!(shutdown);
        loop {
            let incoming = tokio::select! {
                i = self.endpoint.accept() => i,
                () = &mut shutdown => break,
            };
            if active.load(Ordering::Acquire) >= max {
                tracing::debug!(peer = %incoming.remote_address(), "WebTransport connection refused: at max_connections");
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
        self.endpoint.close(
            wtransport::VarInt::from_u32(
                GatewayError::NotReady("shutting down".into()).quic_error_code(),
            ),
            b"shutting down",
        );
        self.endpoint.wait_idle().await;
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

async fn run_connection(gw: Arc<Gateway>, incoming: IncomingSession) {
    let deadline = Instant::now() + Duration::from_secs(gw.config.quic.handshake_timeout_secs);
    let request = match tokio::time::timeout_at(deadline, incoming).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "WebTransport handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!("WebTransport handshake timed out");
            return;
        }
    };
    let path = request.path().split('?').next().unwrap_or_default();
    if path != PATH {
        tracing::debug!(path, "WebTransport session refused: unknown path");
        let _ = tokio::time::timeout_at(deadline, request.not_found()).await;
        return;
    }
    let conn = match tokio::time::timeout_at(deadline, request.accept()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "WebTransport session not established");
            return;
        }
        Err(_) => return,
    };
    let quic = conn.quic_connection().clone();
    let (send, recv) = match tokio::time::timeout_at(deadline, conn.accept_bi()).await {
        Ok(Ok(s)) => s,
        Ok(Err(_)) => return,
        Err(_) => {
            let e = GatewayError::Protocol("no stream within the handshake timeout".into());
            quic.close(
                e.quic_error_code().into(),
                b"no stream within the handshake timeout",
            );
            return;
        }
    };
    // `conn` (the HTTP/3 session) lives until the session ends.
    super::quic::run_session(gw, quic, send, recv, deadline, "webtransport", None).await;
    drop(conn);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_follows_the_page_host_only_for_unspecified_addresses() {
        let mut info = WebTransportInfo {
            port: 8444,
            ip: "0.0.0.0".parse().unwrap(),
            certificate_sha256: None,
        };
        assert_eq!(
            info.url(Some("gw.example:8080")),
            "https://gw.example:8444/v1/wt"
        );
        assert_eq!(info.url(Some("[::1]:8080")), "https://[::1]:8444/v1/wt");
        assert_eq!(info.url(None), "https://127.0.0.1:8444/v1/wt");
        info.ip = "127.0.0.1".parse().unwrap();
        assert_eq!(
            info.url(Some("localhost:1")),
            "https://127.0.0.1:8444/v1/wt"
        );
        info.ip = "::1".parse().unwrap();
        assert_eq!(info.url(None), "https://[::1]:8444/v1/wt");
    }
}
