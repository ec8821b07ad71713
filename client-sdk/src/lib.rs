//! The framegate Rust client SDK.
//!
//! It will hold QUIC and WebSocket sessions with credits, reconnect and resume,
//! and one-shot HTTP detection (issue: QUIC transport and client SDK). For now
//! it is an empty crate so the workspace layout is in place.
