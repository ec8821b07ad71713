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
        /// least this long, up to `SessionOptions::max_retry_wait`).
        retry_after: Option<std::time::Duration>,
    },
    /// The gateway (or a proxy in front of it) answered a one-shot HTTP
    /// request with an error status.
    #[error("HTTP {status}: {message}")]
    Http {
        /// The status code.
        status: u16,
        /// The gateway's error code, when the answer was its JSON error
        /// (`None` for a proxy's page, or a code this SDK does not know).
        code: Option<ErrorCode>,
        /// The gateway's explanation, or the start of the answer's text.
        message: String,
        /// Whether the same request may succeed later: the gateway's
        /// `retryable`, else true for 408, 429 and 5xx.
        retryable: bool,
        /// How long the gateway asks to wait before sending again
        /// (`retry_after_ms`, else the `Retry-After` header), when it said.
        retry_after: Option<std::time::Duration>,
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
            ClientError::Http { retryable, .. } => *retryable,
            _ => false,
        }
    }

    /// The gateway's retry hint, if it gave one.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            ClientError::Gateway { retry_after, .. } | ClientError::Http { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }
}

/// The error of a one-shot HTTP answer with status `status`: from the
/// gateway's JSON error (`{"error": {"code", "message", "retryable",
/// "retry_after_ms"}}`) when the body is one, else (a load balancer's page,
/// say) from the status and the start of the text; `retry_after_header` is
/// the `Retry-After` header, in seconds.
pub(crate) fn http_error(
    status: u16,
    retry_after_header: Option<&str>,
    body: &[u8],
) -> ClientError {
    let by_status = status == 408 || status == 429 || status >= 500;
    let header_hint = retry_after_header
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(std::time::Duration::from_secs);
    let json: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    match json.as_ref().map(|v| &v["error"]) {
        Some(e) if e.is_object() => ClientError::Http {
            status,
            code: e["code"].as_str().and_then(|c| c.parse().ok()),
            message: e["message"].as_str().unwrap_or("").to_string(),
            retryable: e["retryable"].as_bool().unwrap_or(by_status),
            retry_after: e["retry_after_ms"]
                .as_u64()
                .and_then(|ms| u32::try_from(ms).ok())
                .map(millis)
                .or(header_hint),
        },
        other => {
            let message = match other.and_then(|e| e.as_str()) {
                Some(m) => m.to_string(),
                None => {
                    let text = String::from_utf8_lossy(body);
                    let text = text.trim();
                    match text.char_indices().nth(200) {
                        Some((end, _)) => format!("{}…", &text[..end]),
                        None => text.to_string(),
                    }
                }
            };
            ClientError::Http {
                status,
                code: None,
                message,
                retryable: by_status,
                retry_after: header_hint,
            }
        }
    }
}

/// A wire retry hint (milliseconds) as a duration.
pub(crate) fn millis(ms: u32) -> std::time::Duration {
    std::time::Duration::from_millis(u64::from(ms))
}
