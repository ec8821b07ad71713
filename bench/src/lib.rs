//! framegate's benchmarks.
//!
//! - `benches/data_path.rs`: criterion micro-benchmarks of each stage of the
//!   data path (protocol encode/decode, ingress queue under contention, the
//!   batcher's decision, JPEG decode, resize + normalise, NMS), each with a
//!   note of what it shows. Run with `cargo bench -p framegate-bench`.
//! - `peers/`: what framegate is compared with — a FastAPI + uvicorn +
//!   OpenCV + ONNX Runtime server, ONNX Runtime alone (the limits),
//!   `ws-echo`, a bare tokio-tungstenite server, and `quic-echo`, a bare
//!   quinn + rustls server (the gateway-only references).
//! - `compare.sh`: runs the whole comparison in one go and writes a dated
//!   table into `docs/benchmarks.md`.
