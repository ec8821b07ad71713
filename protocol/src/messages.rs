//! Owned message types, one per table of the schema.
//!
//! String fields that are absent on the wire decode as empty strings, and
//! empty strings are left out when encoding. See `docs/protocol.md` for the
//! meaning of every field in the session.

use bytes::Bytes;

use crate::enums::{Codec, DropReason, ErrorCode, OverloadPolicy};

/// First message of every session (client → server).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Hello {
    /// Protocol version the client speaks; [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION).
    pub protocol_version: u16,
    /// API key; may be empty when the key was given by the transport
    /// (`Authorization: Bearer` on the WebSocket upgrade).
    pub credential: String,
    /// Model to run; empty means the gateway's default model.
    pub model: String,
    /// What happens when the client sends faster than it is served.
    pub overload_policy: OverloadPolicy,
    /// Token from an earlier [`Welcome`] to resume that session; empty for a
    /// new session.
    pub resume_token: String,
    /// When resuming: the highest seq whose answer the client has received
    /// (0 if none).
    pub last_received_seq: u64,
    /// QUIC only: frames may be sent as datagrams.
    pub datagrams: bool,
    /// Free-form client identification, e.g. `framegate-client-rs/0.1.0`.
    pub client_name: String,
}

impl Hello {
    /// A Hello for a new session at the current protocol version, with the
    /// default model and policy.
    pub fn new(credential: impl Into<String>) -> Self {
        Hello {
            protocol_version: crate::PROTOCOL_VERSION,
            credential: credential.into(),
            ..Hello::default()
        }
    }
}

/// One image to run the model on (client → server).
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Sequence number, strictly increasing within a session.
    pub seq: u64,
    /// Capture time in microseconds, on any clock; echoed in [`Detections`].
    pub capture_ts_us: u64,
    /// Encoding of `payload`.
    pub codec: Codec,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Absolute deadline in microseconds since the Unix epoch; 0 = none.
    pub deadline_us: u64,
    /// The encoded image. After decoding it is a zero-copy slice of the
    /// received buffer.
    pub payload: Bytes,
}

impl Frame {
    /// `width * height`, the figure checked against the pixel budget and
    /// billed.
    pub fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }
}

/// The client has received every answer up to and including `seq`
/// (client → server). Lets the gateway free its resume buffer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Ack {
    /// Highest seq whose answer was received.
    pub seq: u64,
}

/// The client ends the session (client → server).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Bye {
    /// Free-form reason, for logs.
    pub reason: String,
}

/// Limits the gateway enforces on a session, announced in [`Welcome`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SessionLimits {
    /// Largest message the gateway accepts, in bytes.
    pub max_message_bytes: u32,
    /// Largest `width * height` of a frame.
    pub max_frame_pixels: u64,
    /// Most frames in flight (sent, not yet answered) at once.
    pub max_in_flight: u32,
}

/// Answer to a successful [`Hello`] (server → client).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Welcome {
    /// Identifier of the session, for logs and support.
    pub session_id: String,
    /// Secret that resumes this session after a dropped connection.
    pub resume_token: String,
    /// Credits the client holds now: frames it may send before waiting for
    /// answers.
    pub credits: u32,
    /// Limits of this session.
    pub limits: SessionLimits,
    /// The model actually used.
    pub model: String,
    /// The gateway's version, e.g. `framegate/0.1.0`.
    pub server_version: String,
    /// The highest Frame seq the gateway has received in this session (0 if
    /// none). After a resume the client re-sends its frames above it.
    pub received_seq: u64,
}

/// One detected object, in the frame's own pixel coordinates.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Detection {
    /// Class index in the model's label set.
    pub class_id: u32,
    /// Class name.
    pub label: String,
    /// Confidence in `[0, 1]`.
    pub score: f32,
    /// Left edge.
    pub x1: f32,
    /// Top edge.
    pub y1: f32,
    /// Right edge.
    pub x2: f32,
    /// Bottom edge.
    pub y2: f32,
}

/// Microseconds spent in each stage for one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StageTimings {
    /// Waiting in the ingress queue and the batcher.
    pub queue_us: u32,
    /// Image decoding or raw layout conversion.
    pub decode_us: u32,
    /// Resize, normalisation and layout.
    pub preprocess_us: u32,
    /// Model inference of the frame's batch.
    pub infer_us: u32,
    /// Box decoding, NMS and rescaling.
    pub postprocess_us: u32,
    /// From receiving the frame to sending its answer.
    pub total_us: u32,
}

/// Usage billed to the session so far, including the answered frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Frames billed.
    pub frames: u64,
    /// Pixels billed.
    pub pixels: u64,
}

/// The model's result for one frame (server → client).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Detections {
    /// The frame answered.
    pub seq: u64,
    /// Echo of [`Frame::capture_ts_us`].
    pub capture_ts_us: u64,
    /// Width of the decoded image.
    pub width: u32,
    /// Height of the decoded image.
    pub height: u32,
    /// Model that produced the result.
    pub model: String,
    /// Detected objects, by descending score.
    pub detections: Vec<Detection>,
    /// Per-stage timings of this frame.
    pub timings: StageTimings,
    /// Usage of the session so far.
    pub usage: Usage,
}

/// Grants `credits` additional credits (server → client). An increment, on
/// top of the credit every answer returns implicitly.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Credit {
    /// Number of credits granted.
    pub credits: u32,
}

/// Frames dropped without being computed (server → client); each listed
/// seq is answered by this message and is not billed.
#[derive(Debug, Clone, PartialEq)]
pub struct Dropped {
    /// The dropped frames, ascending.
    pub seqs: Vec<u64>,
    /// Why they were dropped.
    pub reason: DropReason,
    /// Human-readable detail; may be empty.
    pub message: String,
    /// About how long to wait before sending again (milliseconds), when
    /// the gateway has an estimate.
    pub retry_after_ms: Option<u32>,
}

/// An error (server → client). With `seq` it answers that frame and the
/// session continues; without `seq` it ends the session.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorMessage {
    /// What went wrong.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
    /// Whether the same request may succeed later.
    pub retryable: bool,
    /// The frame this error answers, if any.
    pub seq: Option<u64>,
    /// For a retryable error, about how long to wait before sending again
    /// (milliseconds), when the gateway has an estimate.
    pub retry_after_ms: Option<u32>,
}

impl ErrorMessage {
    /// A session-level error (no seq) with the code's default retryability.
    pub fn session(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorMessage {
            code,
            message: message.into(),
            retryable: code.default_retryable(),
            seq: None,
            retry_after_ms: None,
        }
    }

    /// An error answering frame `seq`, with the code's default retryability.
    pub fn frame(seq: u64, code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorMessage {
            code,
            message: message.into(),
            retryable: code.default_retryable(),
            seq: Some(seq),
            retry_after_ms: None,
        }
    }

    /// Whether this error ends the session (it has no seq).
    pub fn is_fatal(&self) -> bool {
        self.seq.is_none()
    }
}

/// A message sent by the client.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// Opens or resumes a session.
    Hello(Hello),
    /// An image to process.
    Frame(Frame),
    /// Acknowledges answers.
    Ack(Ack),
    /// Ends the session.
    Bye(Bye),
}

/// A message sent by the gateway.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerMessage {
    /// Accepts a Hello.
    Welcome(Welcome),
    /// Result for one frame.
    Detections(Detections),
    /// More credits.
    Credit(Credit),
    /// Frames dropped.
    Dropped(Dropped),
    /// An error.
    Error(ErrorMessage),
}

impl ClientMessage {
    /// The message's name: `hello`, `frame`, `ack` or `bye` (for logs and
    /// metric labels).
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMessage::Hello(_) => "hello",
            ClientMessage::Frame(_) => "frame",
            ClientMessage::Ack(_) => "ack",
            ClientMessage::Bye(_) => "bye",
        }
    }
}

impl ServerMessage {
    /// The message's name: `welcome`, `detections`, `credit`, `dropped` or
    /// `error` (for logs and metric labels).
    pub fn kind(&self) -> &'static str {
        match self {
            ServerMessage::Welcome(_) => "welcome",
            ServerMessage::Detections(_) => "detections",
            ServerMessage::Credit(_) => "credit",
            ServerMessage::Dropped(_) => "dropped",
            ServerMessage::Error(_) => "error",
        }
    }

    /// The frame seqs this message answers: one for Detections and for an
    /// Error with a seq, every listed seq for Dropped, none otherwise.
    pub fn answered_seqs(&self) -> &[u64] {
        match self {
            ServerMessage::Detections(d) => std::slice::from_ref(&d.seq),
            ServerMessage::Dropped(d) => &d.seqs,
            ServerMessage::Error(ErrorMessage { seq: Some(seq), .. }) => std::slice::from_ref(seq),
            _ => &[],
        }
    }
}

macro_rules! from_variant {
    ($enum:ident, $($variant:ident($ty:ty)),+) => {
        $(impl From<$ty> for $enum {
            fn from(m: $ty) -> Self {
                $enum::$variant(m)
            }
        })+
    };
}

from_variant!(
    ClientMessage,
    Hello(Hello),
    Frame(Frame),
    Ack(Ack),
    Bye(Bye)
);
from_variant!(
    ServerMessage,
    Welcome(Welcome),
    Detections(Detections),
    Credit(Credit),
    Dropped(Dropped),
    Error(ErrorMessage)
);
