//! framegate's load harness: sessions at a target rate over WebSocket/HTTP
//! (QUIC later), latency histograms and a report.
