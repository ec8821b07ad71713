//! The protocol's enumerations, their wire values and their string names.

use std::fmt;
use std::str::FromStr;

use crate::fb;

/// Error returned by the `FromStr` implementations of the protocol's enums.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{value}` (expected one of: {expected})")]
pub struct ParseEnumError {
    /// What was being parsed, e.g. "codec".
    pub what: &'static str,
    /// The rejected input.
    pub value: String,
    /// The accepted names, comma separated.
    pub expected: &'static str,
}

/// Declares `as_str`, `ALL`, `Display` and `FromStr` for a fieldless enum.
macro_rules! string_names {
    ($ty:ident, $what:literal, [$($variant:ident => $name:literal $(| $alias:literal)*),+ $(,)?]) => {
        impl $ty {
            /// Every variant, in wire order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The variant's stable lower-case (kebab-case) name, as used in
            /// configuration, logs, metrics labels and docs/protocol.md.
            pub fn as_str(&self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = ParseEnumError;

            /// Parses the name returned by `as_str`, ASCII case-insensitively;
            /// `_` is accepted in place of `-`.
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let norm = s.trim().to_ascii_lowercase().replace('_', "-");
                match norm.as_str() {
                    $($name $(| $alias)* => Ok($ty::$variant),)+
                    _ => Err(ParseEnumError {
                        what: $what,
                        value: s.to_owned(),
                        expected: concat!($($name, ", "),+),
                    }),
                }
            }
        }
    };
}

/// What the gateway does when a session sends frames faster than they are
/// served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OverloadPolicy {
    /// The client waits for credit; a frame sent without credit is answered
    /// with an [`ErrorCode::NoCredit`] error.
    #[default]
    Block,
    /// A frame sent without credit replaces the session's oldest frame still
    /// waiting in the queue, which is reported as [`DropReason::Superseded`].
    DropOldest,
    /// A new frame replaces every frame of the session still waiting in the
    /// queue; those are reported as [`DropReason::Superseded`].
    LatestOnly,
}

string_names!(OverloadPolicy, "overload policy", [
    Block => "block",
    DropOldest => "drop-oldest",
    LatestOnly => "latest-only",
]);

/// Encoding of a frame's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// A JPEG file.
    Jpeg,
    /// A PNG file.
    Png,
    /// Packed 8-bit RGB, `width * height * 3` bytes, no row padding.
    Rgb8,
    /// Packed 8-bit BGR, `width * height * 3` bytes, no row padding.
    Bgr8,
    /// NV12: a `width * height` Y plane, then interleaved UV at half
    /// resolution (`width * height / 2` bytes); width and height are even.
    Nv12,
}

string_names!(Codec, "codec", [
    Jpeg => "jpeg" | "jpg",
    Png => "png",
    Rgb8 => "rgb8",
    Bgr8 => "bgr8",
    Nv12 => "nv12",
]);

impl Codec {
    /// Whether the payload is raw pixels (its size follows from the
    /// dimensions) rather than a compressed file.
    pub fn is_raw(&self) -> bool {
        matches!(self, Codec::Rgb8 | Codec::Bgr8 | Codec::Nv12)
    }

    /// The exact payload size in bytes of a raw frame of this size; `None`
    /// for compressed codecs, for NV12 with an odd width or height, and when
    /// the size does not fit in a `u64`.
    pub fn raw_payload_len(&self, width: u32, height: u32) -> Option<u64> {
        let pixels = u64::from(width) * u64::from(height);
        match self {
            Codec::Jpeg | Codec::Png => None,
            Codec::Rgb8 | Codec::Bgr8 => pixels.checked_mul(3),
            Codec::Nv12 if width.is_multiple_of(2) && height.is_multiple_of(2) => {
                pixels.checked_add(pixels / 2)
            }
            Codec::Nv12 => None,
        }
    }

    /// The media type of a compressed codec (`image/jpeg`, `image/png`).
    pub fn media_type(&self) -> Option<&'static str> {
        match self {
            Codec::Jpeg => Some("image/jpeg"),
            Codec::Png => Some("image/png"),
            _ => None,
        }
    }
}

/// Why frames were dropped without being computed. Dropped frames are never
/// billed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The gateway's ingress queue was full.
    QueueFull,
    /// The session had no credit and its overload policy drops rather than
    /// failing the frame.
    NoCredit,
    /// Replaced by a newer frame of the same session (drop-oldest,
    /// latest-only).
    Superseded,
    /// The frame could no longer be answered before its deadline.
    DeadlineExceeded,
    /// The tenant's rate limit was exceeded.
    RateLimited,
    /// The gateway is shutting down and did not start the frame.
    ShuttingDown,
    /// The gateway or the model's backend is overloaded.
    Overloaded,
}

string_names!(DropReason, "drop reason", [
    QueueFull => "queue-full",
    NoCredit => "no-credit",
    Superseded => "superseded",
    DeadlineExceeded => "deadline-exceeded",
    RateLimited => "rate-limited",
    ShuttingDown => "shutting-down",
    Overloaded => "overloaded",
]);

/// Error codes carried by [`ErrorMessage`](crate::ErrorMessage).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request is malformed (a bad field value, a bad multipart body).
    BadRequest,
    /// No credential, or an unknown or revoked one.
    Unauthorized,
    /// The credential is valid but may not do this (e.g. use this model).
    Forbidden,
    /// Unknown model, route or resume token.
    NotFound,
    /// A message, body or frame above the size or pixel limits.
    PayloadTooLarge,
    /// A codec or content type the gateway does not take.
    UnsupportedMediaType,
    /// The payload could not be decoded as the declared image.
    InvalidImage,
    /// The peer broke the protocol (undecodable message, wrong order,
    /// non-increasing seq, a server message sent by a client).
    ProtocolViolation,
    /// The tenant's rate limit was exceeded.
    RateLimited,
    /// The gateway is overloaded; try later or elsewhere.
    Overloaded,
    /// The inference backend failed.
    BackendFailure,
    /// A bug in the gateway.
    Internal,
    /// The gateway is starting, draining or shutting down.
    Unavailable,
    /// The tenant's usage budget is spent.
    BudgetExhausted,
    /// The client's protocol version is not supported.
    UnsupportedVersion,
    /// A frame was sent without credit under the `block` policy.
    NoCredit,
    /// This gateway is going away (shutdown, rolling upgrade). Without `seq`
    /// it is the notice: frames admitted before it are still answered, then
    /// the connection closes (WebSocket 1001, QUIC application code 1001).
    /// With `seq` it refuses a frame that arrived after the notice. Either
    /// way the client continues on another gateway with a new session and
    /// re-sends every frame without an answer.
    GoingAway,
}

string_names!(ErrorCode, "error code", [
    BadRequest => "bad-request",
    Unauthorized => "unauthorized",
    Forbidden => "forbidden",
    NotFound => "not-found",
    PayloadTooLarge => "payload-too-large",
    UnsupportedMediaType => "unsupported-media-type",
    InvalidImage => "invalid-image",
    ProtocolViolation => "protocol-violation",
    RateLimited => "rate-limited",
    Overloaded => "overloaded",
    BackendFailure => "backend-failure",
    Internal => "internal",
    Unavailable => "unavailable",
    BudgetExhausted => "budget-exhausted",
    UnsupportedVersion => "unsupported-version",
    NoCredit => "no-credit",
    GoingAway => "going-away",
]);

impl ErrorCode {
    /// The HTTP status used when this error answers an HTTP request (or
    /// refuses a WebSocket upgrade). The table is in docs/protocol.md,
    /// "Errors".
    pub fn http_status(&self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::BudgetExhausted => 402,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::InvalidImage => 400,
            ErrorCode::ProtocolViolation => 400,
            ErrorCode::UnsupportedVersion => 400,
            ErrorCode::RateLimited | ErrorCode::Overloaded | ErrorCode::NoCredit => 429,
            ErrorCode::Internal => 500,
            ErrorCode::BackendFailure => 502,
            ErrorCode::Unavailable | ErrorCode::GoingAway => 503,
        }
    }

    /// The WebSocket close code used when this error ends a WebSocket
    /// session (1xxx from RFC 6455, 4xxx private to framegate).
    pub fn ws_close_code(&self) -> u16 {
        match self {
            ErrorCode::BadRequest | ErrorCode::ProtocolViolation => 1002,
            ErrorCode::Unauthorized => 4001,
            ErrorCode::BudgetExhausted => 4002,
            ErrorCode::Forbidden => 4003,
            ErrorCode::UnsupportedVersion => 4010,
            ErrorCode::PayloadTooLarge => 1009,
            ErrorCode::NotFound | ErrorCode::UnsupportedMediaType | ErrorCode::InvalidImage => 1008,
            ErrorCode::RateLimited
            | ErrorCode::Overloaded
            | ErrorCode::Unavailable
            | ErrorCode::NoCredit => 1013,
            ErrorCode::Internal | ErrorCode::BackendFailure => 1011,
            ErrorCode::GoingAway => 1001,
        }
    }

    /// Whether an error with this code is retryable unless the gateway says
    /// otherwise: the same request may succeed later.
    pub fn default_retryable(&self) -> bool {
        matches!(
            self,
            ErrorCode::RateLimited
                | ErrorCode::Overloaded
                | ErrorCode::BackendFailure
                | ErrorCode::Unavailable
                | ErrorCode::NoCredit
                | ErrorCode::GoingAway
        )
    }
}

// ------------------------------------------------------------- wire values

/// Converts between an owned enum and its generated wire value.
pub(crate) trait Wire: Sized + Copy {
    type Raw: Copy;
    const WHAT: &'static str;
    fn to_wire(self) -> Self::Raw;
    fn from_wire(raw: Self::Raw) -> Option<Self>;
}

macro_rules! wire_map {
    ($ty:ident, $raw:ty, $what:literal, [$($variant:ident),+ $(,)?]) => {
        impl Wire for $ty {
            type Raw = $raw;
            const WHAT: &'static str = $what;
            fn to_wire(self) -> $raw {
                match self {
                    $($ty::$variant => <$raw>::$variant),+
                }
            }
            fn from_wire(raw: $raw) -> Option<Self> {
                $(if raw == <$raw>::$variant { return Some($ty::$variant); })+
                None
            }
        }
    };
}

wire_map!(
    OverloadPolicy,
    fb::OverloadPolicy,
    "overload_policy",
    [Block, DropOldest, LatestOnly]
);
wire_map!(Codec, fb::Codec, "codec", [Jpeg, Png, Rgb8, Bgr8, Nv12]);
wire_map!(
    DropReason,
    fb::DropReason,
    "drop reason",
    [
        QueueFull,
        NoCredit,
        Superseded,
        DeadlineExceeded,
        RateLimited,
        ShuttingDown,
        Overloaded,
    ]
);
wire_map!(
    ErrorCode,
    fb::ErrorCode,
    "error code",
    [
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        PayloadTooLarge,
        UnsupportedMediaType,
        InvalidImage,
        ProtocolViolation,
        RateLimited,
        Overloaded,
        BackendFailure,
        Internal,
        Unavailable,
        BudgetExhausted,
        UnsupportedVersion,
        NoCredit,
        GoingAway,
    ]
);

#[cfg(test)]
mod tests {
    use super::*;

    fn names_round_trip<T>(all: &[T])
    where
        T: Copy + PartialEq + fmt::Debug + fmt::Display + FromStr<Err = ParseEnumError>,
    {
        let mut seen = std::collections::HashSet::new();
        for v in all {
            let s = v.to_string();
            assert!(seen.insert(s.clone()), "duplicate name {s}");
            assert_eq!(s.parse::<T>().unwrap(), *v);
            assert_eq!(
                s.to_ascii_uppercase()
                    .replace('-', "_")
                    .parse::<T>()
                    .unwrap(),
                *v
            );
            assert!(s
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
        }
        let err = "no-such-thing".parse::<T>().unwrap_err();
        assert!(err.to_string().contains("no-such-thing"), "{err}");
    }

    #[test]
    fn string_names_round_trip() {
        names_round_trip(OverloadPolicy::ALL);
        names_round_trip(Codec::ALL);
        names_round_trip(DropReason::ALL);
        names_round_trip(ErrorCode::ALL);
        assert_eq!("jpg".parse::<Codec>().unwrap(), Codec::Jpeg);
        assert_eq!(OverloadPolicy::DropOldest.as_str(), "drop-oldest");
        assert_eq!(DropReason::DeadlineExceeded.as_str(), "deadline-exceeded");
        assert_eq!(
            ErrorCode::UnsupportedMediaType.as_str(),
            "unsupported-media-type"
        );
    }

    fn wire_round_trip<T: Wire + PartialEq + fmt::Debug>(all: &[T]) {
        for v in all {
            assert_eq!(T::from_wire(v.to_wire()), Some(*v));
        }
    }

    #[test]
    fn wire_values_round_trip() {
        wire_round_trip(OverloadPolicy::ALL);
        wire_round_trip(Codec::ALL);
        wire_round_trip(DropReason::ALL);
        wire_round_trip(ErrorCode::ALL);
        assert_eq!(Codec::from_wire(fb::Codec::Unspecified), None);
        assert_eq!(Codec::from_wire(fb::Codec(200)), None);
        assert_eq!(ErrorCode::from_wire(fb::ErrorCode(999)), None);
        assert_eq!(OverloadPolicy::from_wire(fb::OverloadPolicy(3)), None);
    }

    #[test]
    fn error_code_mappings() {
        assert_eq!(ErrorCode::Unauthorized.http_status(), 401);
        assert_eq!(ErrorCode::Unauthorized.ws_close_code(), 4001);
        assert_eq!(ErrorCode::ProtocolViolation.ws_close_code(), 1002);
        assert_eq!(ErrorCode::PayloadTooLarge.http_status(), 413);
        assert_eq!(ErrorCode::PayloadTooLarge.ws_close_code(), 1009);
        assert_eq!(ErrorCode::Overloaded.http_status(), 429);
        assert_eq!(ErrorCode::Internal.ws_close_code(), 1011);
        assert_eq!(ErrorCode::Unavailable.http_status(), 503);
        for c in ErrorCode::ALL {
            let ws = c.ws_close_code();
            assert!((1000..=1015).contains(&ws) || (4000..=4999).contains(&ws));
            assert!((400..=599).contains(&c.http_status()));
        }
    }

    #[test]
    fn raw_payload_lengths() {
        assert_eq!(Codec::Rgb8.raw_payload_len(4, 2), Some(24));
        assert_eq!(Codec::Nv12.raw_payload_len(4, 2), Some(12));
        assert_eq!(Codec::Nv12.raw_payload_len(3, 2), None);
        assert_eq!(Codec::Jpeg.raw_payload_len(4, 2), None);
        assert_eq!(Codec::Bgr8.raw_payload_len(1 << 16, 1 << 16), Some(3 << 32));
        assert_eq!(Codec::Bgr8.raw_payload_len(u32::MAX, u32::MAX), None);
    }
}
