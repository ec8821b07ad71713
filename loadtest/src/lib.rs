//! framegate's load harness: sessions at a target rate over WebSocket,
//! QUIC or HTTP, per-frame latency histograms, and a JSON + HTML report.
//!
//! The parts, in the order a run uses them:
//!
//! - [`target`]: where to send, and the loopback-only guard;
//! - [`frames`]: the frames to send (a folder of JPEG/PNG files, or
//!   synthetic JPEGs of a given size);
//! - [`transport`]: one [`transport::Transport`] per wire protocol
//!   (WebSocket, QUIC, HTTP). A transport only opens sessions; a session is
//!   a pair of channels (frames out, answers in), so the drivers never see
//!   the wire;
//! - [`driver`]: open-loop (N sessions × F frames/s, fixed duration),
//!   closed-loop (fixed frames in flight, as fast as answered) and idle
//!   (sessions held open) load;
//! - [`recorder`]: hdrhistogram latencies, counts and per-second windows;
//! - [`report`]: the JSON report and the self-contained HTML report.

pub mod driver;
pub mod frames;
pub mod recorder;
pub mod report;
pub mod target;
pub mod transport;
