//! The one error taxonomy of the gateway.
//!
//! Every error knows its side (who caused it), whether a retry can help, and
//! maps in this one place to an HTTP status, a WebSocket close code and a
//! protocol `Error` message.

use std::time::Duration;

use framegate_protocol::{ErrorCode, ErrorMessage};

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The caller sent something wrong, or is not allowed.
    Client,
    /// The inference backend failed.
    Backend,
    /// The gateway is at capacity; the caller may retry later.
    Capacity,
    /// A bug or an unexpected condition in the gateway.
    Internal,
}

/// An error that ends one request or one frame.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    /// No key, or a key the gateway does not know.
    #[error("missing or invalid API key")]
    Unauthorized,
    /// The credential is valid but may not do this (a scope it lacks, a
    /// model outside its plan, a limit of its plan).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// No such thing (an admin or self-service resource).
    #[error("not found: {0}")]
    NotFound(String),
    /// The request or frame is malformed (empty body, bad field).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The body or message is larger than allowed.
    #[error("payload too large: {size} bytes, limit {limit}")]
    PayloadTooLarge {
        /// Size seen.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The image's header declares more pixels than the budget.
    #[error("image of {width}x{height} exceeds the pixel budget of {budget} pixels")]
    PixelBudget {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// The budget.
        budget: u64,
    },
    /// The request body stopped arriving (`http.body_timeout_secs`).
    #[error("request timeout: {0}")]
    RequestTimeout(String),
    /// The content type or image format is not one we decode.
    #[error("unsupported media type: {0}")]
    UnsupportedMedia(String),
    /// The image could not be decoded (corrupt or truncated).
    #[error("invalid image: {0}")]
    InvalidImage(String),
    /// A protocol rule was broken (message order, undecodable message).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The requested model is not served here.
    #[error("unknown model {0:?}")]
    UnknownModel(String),
    /// The session has no credit left for this frame.
    #[error("no credit: {in_flight} frames already in flight (limit {credits})")]
    NoCredit {
        /// Frames in flight.
        in_flight: u32,
        /// Credits granted.
        credits: u32,
    },
    /// The ingress queue is full.
    #[error("overloaded: the ingress queue is full")]
    QueueFull,
    /// A frame queued now would not start within the pipeline's latency
    /// budget (`pipeline.max_queue_wait_ms`): refused at once instead.
    #[error("overloaded: the queue holds all that its {budget_ms} ms wait budget allows (a frame queued now would wait about {expected_ms} ms)")]
    QueueWait {
        /// Expected wait before a worker would pick the frame up, ms
        /// (including what it already waited in its session). Can be a
        /// little under the budget: a lone tenant leaves the headroom free
        /// for others (docs/architecture.md).
        expected_ms: u64,
        /// `pipeline.max_queue_wait_ms`.
        budget_ms: u64,
    },
    /// The model is still loading or warming up.
    #[error("not ready: {0}")]
    NotReady(String),
    /// The backend failed on this batch.
    #[error("inference failed: {0}")]
    Backend(String),
    /// The tenant's frame budget for the billing period is spent.
    #[error("budget exhausted: tenant {tenant:?} has used {used} of its {cap} frames this billing period")]
    BudgetExhausted {
        /// Tenant.
        tenant: String,
        /// The cap, frames per period.
        cap: u64,
        /// Frames counted against it.
        used: u64,
    },
    /// An unexpected failure inside the gateway.
    #[error("internal error: {0}")]
    Internal(String),
    /// The frame could no longer be answered by its deadline (answered with
    /// `Dropped{deadline-exceeded}` on a session, never as an Error there).
    #[error("deadline exceeded before the frame was computed")]
    DeadlineExceeded,
    /// A resume was refused: unknown or expired token, or answers no longer
    /// kept.
    #[error("cannot resume: {0}")]
    ResumeRefused(String),
    /// Too many sessions or connections right now.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// The gateway is shutting down: the session's notice, a frame that
    /// arrived after it, or a session refused during the drain. The text is
    /// the WebSocket/QUIC close reason (docs/protocol.md, "Going away").
    #[error("{GOING_AWAY_REASON}")]
    GoingAway,
    /// A rate limit of the caller's tenant or key (frames per second,
    /// detect requests per minute, concurrent sessions) is reached.
    #[error("rate limited: {message}")]
    RateLimited {
        /// Which limit, in words (never a secret).
        message: String,
        /// When the same request would be admitted again (from the GCRA).
        retry_after: Duration,
    },
}

/// The close reason of a `going-away` close (WebSocket 1001, QUIC 1001).
pub const GOING_AWAY_REASON: &str = "going-away: gateway shutting down";

impl GatewayError {
    /// Who caused it.
    pub fn side(&self) -> Side {
        use GatewayError::*;
        match self {
            Unauthorized
            | Forbidden(_)
            | NotFound(_)
            | BadRequest(_)
            | RequestTimeout(_)
            | PayloadTooLarge { .. }
            | PixelBudget { .. }
            | UnsupportedMedia(_)
            | InvalidImage(_)
            | Protocol(_)
            | UnknownModel(_)
            | NoCredit { .. }
            | ResumeRefused(_)
            | BudgetExhausted { .. }
            | RateLimited { .. } => Side::Client,
            QueueFull
            | QueueWait { .. }
            | NotReady(_)
            | DeadlineExceeded
            | Overloaded(_)
            | GoingAway => Side::Capacity,
            Backend(_) => Side::Backend,
            Internal(_) => Side::Internal,
        }
    }

    /// Whether sending the same thing again later can succeed.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            GatewayError::QueueFull
                | GatewayError::QueueWait { .. }
                | GatewayError::NotReady(_)
                | GatewayError::Backend(_)
                | GatewayError::NoCredit { .. }
                | GatewayError::DeadlineExceeded
                | GatewayError::Overloaded(_)
                | GatewayError::GoingAway
                | GatewayError::RateLimited { .. }
                | GatewayError::RequestTimeout(_)
        )
    }

    /// The protocol error code.
    pub fn code(&self) -> ErrorCode {
        use GatewayError::*;
        match self {
            Unauthorized => ErrorCode::Unauthorized,
            Forbidden(_) => ErrorCode::Forbidden,
            BadRequest(_) | RequestTimeout(_) => ErrorCode::BadRequest,
            PayloadTooLarge { .. } | PixelBudget { .. } => ErrorCode::PayloadTooLarge,
            UnsupportedMedia(_) => ErrorCode::UnsupportedMediaType,
            InvalidImage(_) => ErrorCode::InvalidImage,
            Protocol(_) => ErrorCode::ProtocolViolation,
            UnknownModel(_) | ResumeRefused(_) | NotFound(_) => ErrorCode::NotFound,
            NoCredit { .. } => ErrorCode::NoCredit,
            BudgetExhausted { .. } => ErrorCode::BudgetExhausted,
            QueueFull | QueueWait { .. } | DeadlineExceeded | Overloaded(_) => {
                ErrorCode::Overloaded
            }
            NotReady(_) => ErrorCode::Unavailable,
            RateLimited { .. } => ErrorCode::RateLimited,
            Backend(_) => ErrorCode::BackendFailure,
            Internal(_) => ErrorCode::Internal,
            GoingAway => ErrorCode::GoingAway,
        }
    }

    /// The HTTP status for a one-shot request.
    pub fn http_status(&self) -> u16 {
        use GatewayError::*;
        match self {
            Unauthorized => 401,
            Forbidden(_) => 403,
            BadRequest(_) | InvalidImage(_) | Protocol(_) => 400,
            RequestTimeout(_) => 408,
            PayloadTooLarge { .. } | PixelBudget { .. } => 413,
            UnsupportedMedia(_) => 415,
            UnknownModel(_) | ResumeRefused(_) | NotFound(_) => 404,
            NoCredit { .. } | QueueFull | QueueWait { .. } | Overloaded(_) | RateLimited { .. } => {
                429
            }
            BudgetExhausted { .. } => 402,
            NotReady(_) | DeadlineExceeded | GoingAway => 503,
            Backend(_) => 502,
            Internal(_) => 500,
        }
    }

    /// About how long to wait before sending again, when the gateway has an
    /// estimate: HTTP's `Retry-After` and the protocol `Error`'s
    /// `retry_after_ms`. None for `NoCredit`: a stream's client waits for
    /// its next `Credit`, which comes with the answers it is owed.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GatewayError::QueueFull => Some(Duration::from_secs(1)),
            // About when the queue has drained to the budget again; at
            // least 100 ms (a tenant refused for the headroom it leaves
            // others can be under the budget: no hint of "retry at once").
            GatewayError::QueueWait {
                expected_ms,
                budget_ms,
            } => Some(Duration::from_millis(
                expected_ms
                    .saturating_sub(*budget_ms)
                    .max(MIN_OVERLOAD_RETRY_MS),
            )),
            GatewayError::NotReady(_) => Some(Duration::from_secs(2)),
            GatewayError::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The WebSocket close code, for errors that end a session.
    pub fn ws_close_code(&self) -> u16 {
        use GatewayError::*;
        match self {
            Unauthorized => 4001,
            Forbidden(_) => 4003,
            Protocol(_) | BadRequest(_) | RequestTimeout(_) => 1002,
            PayloadTooLarge { .. } | PixelBudget { .. } => 1009,
            UnknownModel(_) | UnsupportedMedia(_) | InvalidImage(_) | ResumeRefused(_)
            | NotFound(_) => 1008,
            QueueFull
            | QueueWait { .. }
            | NoCredit { .. }
            | NotReady(_)
            | DeadlineExceeded
            | Overloaded(_)
            | RateLimited { .. } => 1013,
            BudgetExhausted { .. } => 4002,
            Backend(_) | Internal(_) => 1011,
            GoingAway => 1001,
        }
    }

    /// The QUIC application error code when this error closes a connection:
    /// the same number as the WebSocket close code (docs/protocol.md).
    pub fn quic_error_code(&self) -> u32 {
        u32::from(self.ws_close_code())
    }

    /// [`Self::retry_after`] in whole milliseconds, rounded up (a client
    /// that waits this long is not refused for the same reason: a GCRA wait
    /// of 50.2 ms says 51), at least 1.
    pub fn retry_after_ms(&self) -> Option<u32> {
        self.retry_after().map(millis_rounded_up)
    }

    /// The protocol `Error` message, about frame `seq` if given.
    pub fn to_message(&self, seq: Option<u64>) -> ErrorMessage {
        ErrorMessage {
            code: self.code(),
            message: self.to_string(),
            retryable: self.retryable(),
            seq,
            retry_after_ms: self.retry_after_ms(),
        }
    }
}

/// The shortest retry hint of an overload refusal, ms.
const MIN_OVERLOAD_RETRY_MS: u64 = 100;

/// A wait in whole milliseconds for a retry hint: rounded up, at least 1,
/// at most `u32::MAX`.
pub fn millis_rounded_up(d: Duration) -> u32 {
    u32::try_from(d.as_micros().div_ceil(1_000).max(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_errors_are_retryable_429s() {
        let e = GatewayError::QueueFull;
        assert_eq!(e.http_status(), 429);
        assert!(e.retryable());
        assert_eq!(e.side(), Side::Capacity);
        assert!(e.retry_after().is_some());
    }

    #[test]
    fn retry_hints_round_up_and_an_overload_hint_is_at_least_100_ms() {
        assert_eq!(millis_rounded_up(Duration::from_micros(50_200)), 51);
        assert_eq!(millis_rounded_up(Duration::ZERO), 1);
        assert_eq!(
            millis_rounded_up(Duration::from_secs(u64::MAX / 2)),
            u32::MAX
        );
        let wait = |expected_ms, budget_ms| {
            GatewayError::QueueWait {
                expected_ms,
                budget_ms,
            }
            .retry_after_ms()
        };
        assert_eq!(wait(2_500, 500), Some(2_000));
        assert_eq!(wait(490, 500), Some(100), "under the budget (headroom)");
        let no_credit = GatewayError::NoCredit {
            in_flight: 8,
            credits: 8,
        };
        assert_eq!(no_credit.retry_after_ms(), None, "waits for Credit");
    }

    #[test]
    fn client_errors_are_not_retryable() {
        for e in [
            GatewayError::Unauthorized,
            GatewayError::InvalidImage("x".into()),
            GatewayError::PixelBudget {
                width: 1,
                height: 1,
                budget: 0,
            },
        ] {
            assert_eq!(e.side(), Side::Client);
            assert!(!e.retryable());
            assert!((400..500).contains(&e.http_status()));
        }
    }
}
