//! Transports: how a session reaches the server.
//!
//! A transport only opens sessions. An open session is two bounded channels
//! — frames out, events in — with tasks behind them that speak the wire
//! protocol, so the drivers never see WebSocket or HTTP. Adding QUIC (the
//! control stream of `docs/protocol.md`, on the branch that builds the
//! client SDK) means one more [`Transport`] implementation here.

pub mod http;
pub mod ws;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use framegate_protocol::StageTimings;
use tokio::sync::mpsc;

use crate::frames::EncodedImage;

/// A frame handed to a session.
#[derive(Debug, Clone)]
pub struct OutFrame {
    /// Sequence number, unique within the session.
    pub seq: u64,
    /// The image.
    pub image: EncodedImage,
}

/// How the server answered a frame.
#[derive(Debug, Clone, PartialEq)]
pub enum AnswerKind {
    /// Detections (or JSON detections over HTTP).
    Detections {
        /// Boxes in the answer.
        boxes: u32,
        /// Server-side stage timings, when the server sent them.
        timings: Option<StageTimings>,
    },
    /// Dropped by the server; the reason.
    Dropped(String),
    /// Refused or failed; the code or status.
    Error(String),
}

/// An event from a session.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// One frame's answer.
    Answer {
        /// Its seq.
        seq: u64,
        /// What came back.
        kind: AnswerKind,
        /// When it arrived.
        at: Instant,
    },
    /// More credits (`Credit` message).
    Credit(u32),
    /// The session ended (server closed, fatal error); the reason.
    Closed(String),
}

/// An open session.
#[derive(Debug)]
pub struct SessionHandle {
    /// Frames to send. Bounded by the credits.
    pub frames: mpsc::Sender<OutFrame>,
    /// Answers and session events.
    pub events: mpsc::Receiver<SessionEvent>,
    /// Frames the session may have in flight at first.
    pub credits: u32,
}

/// A boxed future, so transports can be trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A way to open sessions to the target.
pub trait Transport: Send + Sync {
    /// `ws`, `http`, (later `quic`).
    fn name(&self) -> &'static str;

    /// Opens session number `id` (connect and handshake).
    fn open(&self, id: usize) -> BoxFuture<'_, anyhow::Result<SessionHandle>>;
}

/// Shared transport.
pub type SharedTransport = Arc<dyn Transport>;
