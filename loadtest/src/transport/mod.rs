//! Transports: how a session reaches the server.
//!
//! A transport only opens sessions. An open session is two bounded channels
//! — frames out, events in — with tasks behind them that speak the wire
//! protocol, so the drivers never see WebSocket, QUIC or HTTP.

pub mod http;
pub mod quic;
pub mod ws;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use framegate_protocol::{ServerMessage, StageTimings};
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
    /// The gateway's `going-away` notice (an `Error` without seq): it
    /// answers the frames it admitted, then closes; the session sends no
    /// more. The notice's text.
    GoingAway(String),
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
    /// `ws`, `quic` or `http`.
    fn name(&self) -> &'static str;

    /// Opens session number `id` (connect and handshake).
    fn open(&self, id: usize) -> BoxFuture<'_, anyhow::Result<SessionHandle>>;
}

/// Shared transport.
pub type SharedTransport = Arc<dyn Transport>;

/// The session events of one server message of a streaming session (the
/// same on WebSocket and QUIC); `None` for a message that is no event (a
/// second `Welcome`).
pub fn answer_events(msg: ServerMessage, at: Instant) -> Option<Events> {
    let one = |ev| Events(Some(ev), Vec::new());
    Some(match msg {
        // The common case, without a Vec per answer.
        ServerMessage::Detections(d) => one(SessionEvent::Answer {
            seq: d.seq,
            kind: AnswerKind::Detections {
                boxes: d.detections.len() as u32,
                timings: Some(d.timings),
            },
            at,
        }),
        ServerMessage::Dropped(d) => Events(
            None,
            d.seqs
                .iter()
                .map(|&seq| SessionEvent::Answer {
                    seq,
                    kind: AnswerKind::Dropped(d.reason.as_str().to_string()),
                    at,
                })
                .collect(),
        ),
        ServerMessage::Error(e) => one(match e.seq {
            Some(seq) => SessionEvent::Answer {
                seq,
                kind: AnswerKind::Error(e.code.as_str().to_string()),
                at,
            },
            None if e.code == framegate_protocol::ErrorCode::GoingAway => {
                SessionEvent::GoingAway(format!("{}: {}", e.code.as_str(), e.message))
            }
            None => {
                SessionEvent::Closed(format!("session error {}: {}", e.code.as_str(), e.message))
            }
        }),
        ServerMessage::Credit(c) => one(SessionEvent::Credit(c.credits)),
        ServerMessage::Welcome(_) => return None,
    })
}

/// The events of one server message: one (no allocation) or several.
#[derive(Debug)]
pub struct Events(Option<SessionEvent>, Vec<SessionEvent>);

impl IntoIterator for Events {
    type Item = SessionEvent;
    type IntoIter =
        std::iter::Chain<std::option::IntoIter<SessionEvent>, std::vec::IntoIter<SessionEvent>>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter().chain(self.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use framegate_protocol::{ErrorCode, ErrorMessage};

    fn session_error(code: ErrorCode) -> SessionEvent {
        let msg = ServerMessage::Error(ErrorMessage {
            code,
            message: "why".into(),
            retryable: true,
            seq: None,
            retry_after_ms: None,
        });
        let mut events = answer_events(msg, Instant::now()).unwrap().into_iter();
        let ev = events.next().unwrap();
        assert!(events.next().is_none());
        ev
    }

    #[test]
    fn the_going_away_notice_is_not_the_end_of_the_session() {
        assert!(matches!(
            session_error(ErrorCode::GoingAway),
            SessionEvent::GoingAway(r) if r == "going-away: why"
        ));
        assert!(matches!(
            session_error(ErrorCode::Overloaded),
            SessionEvent::Closed(r) if r.contains("overloaded")
        ));
    }
}
