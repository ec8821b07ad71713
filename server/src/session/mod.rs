//! Sessions: credits, sequence numbers, overload policy, deadlines, usage
//! and resume — everything about a streaming session that is not a socket.
//!
//! * [`core`] is the sans-IO state machine: plain events in, messages and
//!   pipeline submissions out, time passed in by the caller. Its tests
//!   (model-based, with a simulated client and pipeline) need no sockets.
//! * [`runner`] drives one core per session as a task, with the pipeline and
//!   the [`Clock`], and keeps sessions by resume token so a client can come
//!   back on any transport. WebSocket and QUIC are thin adapters around it.
//!
//! The one place a delivered frame is counted for billing is
//! `SessionRegistry::record_delivered` in [`runner`], fed by
//! [`core::Transmit::billed`].

pub mod core;
pub mod runner;

pub use self::core::{CoreConfig, Outcome, SessionCore};
pub use self::runner::{Connection, Outbound, SessionRegistry};

/// Wall-clock time for sessions, in microseconds since the Unix epoch (the
/// unit of `Frame.deadline_us`). Injectable so tests can drive time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now, µs since the Unix epoch.
    fn now_us(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_us(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64)
    }
}
