//! Transports: thin adapters from sockets to the gateway.
//!
//! `http` carries one-shot detection and health endpoints and hosts the
//! router; `ws` is the WebSocket streaming session; `quic` the QUIC one,
//! with its certificates from `tls`; `webtransport` the same session for
//! browsers over HTTP/3.

pub mod http;
pub mod https;
pub mod quic;
pub mod tls;
pub mod webtransport;
pub mod ws;
pub mod wsframe;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::gateway::Gateway;

/// How long a stream connection whose client said Bye (or broke the
/// protocol) waits for its writer to send the answers still owed and the
/// close. Frames in flight are answered well within it; a client that
/// stopped reading (a zero receive window) would otherwise keep the
/// connection, its session and its slot for ever.
pub(crate) const WRITER_DRAIN_MAX: Duration = Duration::from_secs(30);

/// Largest first message (Hello: a key or a token, a model name, a resume
/// token) a stream transport reads before the client is authenticated, so
/// an unauthenticated client cannot make the gateway buffer a large one
/// (never above the configured `max_message_bytes`).
pub(crate) fn hello_max_bytes(max_message_bytes: usize) -> usize {
    (64usize << 10).min(max_message_bytes)
}

/// The refusal of a first message over [`hello_max_bytes`].
pub(crate) fn hello_too_large(size: usize, max: usize) -> crate::error::GatewayError {
    crate::error::GatewayError::Protocol(format!(
        "expected Hello first (at most {max} bytes), got a message of {size} bytes"
    ))
}

/// Waits for `writer` at most [`WRITER_DRAIN_MAX`], then aborts it.
pub(crate) async fn drain_writer(writer: &mut tokio::task::JoinHandle<()>) {
    if tokio::time::timeout(WRITER_DRAIN_MAX, &mut *writer)
        .await
        .is_err()
    {
        tracing::debug!("the client did not take its last answers in time; connection dropped");
        writer.abort();
    }
}

/// Serves HTTP and WebSocket on `listener` until `shutdown` resolves, then
/// stops accepting and lets open requests finish.
///
/// Sockets are `TCP_NODELAY` (axum leaves Nagle on): answers are small
/// writes, already coalesced per batch by the writers, and Nagle would hold
/// one back until the client's delayed ACK.
pub async fn serve_http(
    gw: Arc<Gateway>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let app = http::router(gw);
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// The longest start of `text` of at most `max` bytes that ends at a
/// character boundary (close reasons are short and may quote client input).
pub(crate) fn cut_at_char_boundary(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
