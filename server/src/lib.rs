//! framegate, the gateway.
//!
//! Camera and video clients stream frames over QUIC or WebSocket; one-shot
//! callers POST an image over HTTP. Every frame follows one path, and each
//! stage lives in the module named after it:
//!
//! ```text
//! transport (http, ws, quic) → auth → ratelimit → session (credits, policy, deadline, resume)
//!   → pipeline::decode::probe
//!   → pipeline::queue (bounded, lock-free) → pipeline::batcher (run by the free worker)
//!   → inference worker: pipeline::decode → pipeline::preprocess → backend → pipeline::postprocess
//!   → answer on the same session / request → metering (accumulator → flusher → usage store)
//!   → billing (meter reporter → Stripe)
//! ```
//!
//! [`gateway::Gateway`] assembles the parts; `main.rs` is the `framegate` binary.

pub mod admin;
pub mod auth;
pub mod backend;
pub mod billing;
pub mod config;
pub mod error;
pub mod gateway;
pub mod metering;
pub mod metrics;
pub mod pipeline;
pub mod ratelimit;
pub mod session;
pub mod transport;
pub mod usage;
pub mod web;

pub use error::GatewayError;
pub use gateway::Gateway;
