//! The SDK's errors.

use framegate_protocol::ErrorCode;

/// Everything that can go wrong in the SDK, one variant per cause.
///
/// ```
/// use framegate_client::ClientError;
/// let e = ClientError::InvalidUrl("ftp://x".into());
/// assert!(!e.is_retryable());
/// ```
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `quic://`, `ws://`, `wss://`, `http://` or malformed.
    #[error("invalid gateway URL: {0}")]
    InvalidUrl(String),
    /// A certificate pin is not 64 hex digits (SHA-256).
    #[error("invalid certificate pin {0:?}: expected the SHA-256 fingerprint, 64 hex digits")]
    InvalidPin(String),
    /// The image is not a JPEG or PNG (or its header is unreadable).
    #[error("invalid image: {0}")]
    InvalidImage(String),
    /// Connecting failed (DNS, TCP/UDP, TLS handshake, certificate pin).
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The gateway URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The gateway closed the connection because it is going away
    /// (WebSocket 1001 / QUIC 1001, after the `going-away` notice); the
    /// session continues on another gateway when one is configured.
    #[error("the gateway is going away: {0}")]
    GoingAway(String),
    /// The connection broke and could not be resumed.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// The gateway refused the session or ended it (an Error without seq).
    #[error("gateway error {code:?}: {message}")]
    Gateway {
        /// The protocol error code.
        code: ErrorCode,
        /// The gateway's explanation.
        message: String,
        /// Whether retrying later may succeed.
        retryable: bool,
        /// For a retryable error, about how long the gateway asks to wait
        /// before trying again, when it gave an estimate (reconnects wait at
        /// least this long).
        retry_after: Option<std::time::Duration>,
    },
    /// The gateway answered a one-shot HTTP request with an error status.
    #[error("HTTP {status}: {message}")]
    Http {
        /// The status code.
        status: u16,
        /// The gateway's explanation.
        message: String,
    },
    /// The gateway sent something that does not follow the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The session has ended; nothing more can be sent.
    #[error("the session has ended")]
    SessionClosed,
}

impl ClientError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Connect { .. }
            | ClientError::ConnectionLost(_)
            | ClientError::GoingAway(_) => true,
            ClientError::Gateway { retryable, .. } => *retryable,
            ClientError::Http { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// The gateway's retry hint, if it gave one.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            ClientError::Gateway { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A wire retry hint (milliseconds) as a duration.
pub(crate) fn millis(ms: u32) -> std::time::Duration {
    std::time::Duration::from_millis(u64::from(ms))
}
