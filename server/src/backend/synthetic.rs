//! The synthetic backend: deterministic boxes at a configured cost, so the
//! gateway (transports, sessions, queue, batcher, delivery) can be measured
//! without the model.
//!
//! Boxes are derived from the frame's encoded bytes (a hash of its length and
//! 256 words sampled across it): the same frame always gets the same boxes,
//! different frames get different ones. By default the worker skips decoding
//! and preprocessing too (`decode = false`), so only the gateway itself is
//! measured; `decode = true` keeps decode + preprocess in the path and
//! replaces only inference.
//!
//! Cost per batch is `fixed_us + per_frame_us × frames`, spent by
//! busy-waiting (`wait = "spin"`, the default: the worker's core is taken, as
//! with a CPU backend) or by sleeping (`wait = "sleep"`: the core is free, as
//! with an accelerator or a remote backend).
//! Every place that reports the backend (`/v1/models`, the load harness's
//! reports) says `synthetic`.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Backend, BackendInput, EncodedFrame, TensorView};
use crate::error::GatewayError;
use crate::pipeline::postprocess::RawDetection;

/// How the synthetic backend spends its configured cost.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum WaitMode {
    /// Busy-wait: the worker's core stays busy, like a CPU backend.
    #[default]
    Spin,
    /// Sleep: the core is free for others, like a GPU or remote backend.
    Sleep,
}

/// `[synthetic]` in `framegate.toml`; used when `backend = "synthetic"`.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SyntheticConfig {
    /// Cost of every batch, microseconds. Default 0.
    pub fixed_us: u64,
    /// Extra cost per frame in the batch, microseconds. Default 0.
    pub per_frame_us: u64,
    /// `spin` (busy-wait, default) or `sleep`.
    pub wait: WaitMode,
    /// Decode and preprocess each frame as the real path does (timed in the
    /// stage timings) before making up its boxes. Default false: the gateway
    /// alone is measured.
    pub decode: bool,
    /// Number of classes boxes are drawn from (capped by the model's
    /// labels). Default 80.
    pub classes: u32,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            fixed_us: 0,
            per_frame_us: 0,
            wait: WaitMode::Spin,
            decode: false,
            classes: 80,
        }
    }
}

/// A backend that makes up boxes.
#[derive(Debug, Clone)]
pub struct SyntheticBackend {
    config: SyntheticConfig,
    classes: u32,
}

impl SyntheticBackend {
    /// A backend for a model with `labels` classes.
    pub fn new(config: SyntheticConfig, labels: usize) -> Self {
        let classes = config.classes.min(labels.max(1) as u32).max(1);
        Self { config, classes }
    }

    fn spend(&self, frames: usize) {
        let us = self
            .config
            .fixed_us
            .saturating_add(self.config.per_frame_us.saturating_mul(frames as u64));
        if us == 0 {
            return;
        }
        let cost = Duration::from_micros(us);
        match self.config.wait {
            WaitMode::Sleep => std::thread::sleep(cost),
            WaitMode::Spin => {
                let end = Instant::now() + cost;
                while Instant::now() < end {
                    std::hint::spin_loop();
                }
            }
        }
    }
}

/// Words sampled evenly across a frame by [`fingerprint`].
const SAMPLED_WORDS: usize = 32;

/// FNV-style hash of the length, [`SAMPLED_WORDS`] eight-byte words sampled
/// evenly across `bytes`, and the last 64 bytes: cheap next to the frame's
/// own transport cost. Each sampled word is a cache miss on a frame another
/// core received: a byte-wise 4 KiB version took 12 % of the gateway's CPU in
/// a gateway-only profile, 256 sampled words still 6.8 %.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut mix = |w: u64| h = (h ^ w).wrapping_mul(PRIME);
    mix(bytes.len() as u64);
    let (words, _) = bytes.split_at(bytes.len() / 8 * 8);
    let step = (words.len() / 8 / SAMPLED_WORDS).max(1);
    for w in words.chunks_exact(8).step_by(step) {
        mix(u64::from_le_bytes(w.try_into().expect("8 bytes")));
    }
    // The end of the frame (a JPEG's last scan bytes differ between frames
    // that share headers), byte by byte so no length is special.
    for b in &bytes[bytes.len().saturating_sub(64)..] {
        mix(u64::from(*b));
    }
    h
}

/// splitmix64: spreads one hash into a stream of independent values.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn unit(state: &mut u64) -> f32 {
    (next(state) >> 40) as f32 / (1u64 << 24) as f32
}

/// The boxes the synthetic backend gives a frame: 1 to 3 boxes inside the
/// frame, scores in 0.5..1, sorted by score.
pub fn synthetic_boxes(payload: &[u8], width: u32, height: u32, classes: u32) -> Vec<RawDetection> {
    let mut s = fingerprint(payload);
    let n = 1 + (next(&mut s) % 3) as usize;
    let (w, h) = (width as f32, height as f32);
    let mut out: Vec<RawDetection> = (0..n)
        .map(|_| {
            let (a, b) = (unit(&mut s), unit(&mut s));
            let (c, d) = (unit(&mut s), unit(&mut s));
            let x1 = a * 0.7 * w;
            let y1 = b * 0.7 * h;
            let x2 = (x1 + (0.1 + 0.2 * c) * w).min(w);
            let y2 = (y1 + (0.1 + 0.2 * d) * h).min(h);
            RawDetection {
                class_id: (next(&mut s) % u64::from(classes.max(1))) as u32,
                score: 0.5 + 0.49 * unit(&mut s),
                xyxy: [x1, y1, x2, y2],
            }
        })
        .collect();
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out
}

impl Backend for SyntheticBackend {
    fn kind(&self) -> &'static str {
        "synthetic"
    }

    fn input(&self) -> BackendInput {
        BackendInput::Encoded {
            decode: self.config.decode,
        }
    }

    fn infer(
        &mut self,
        _input: &[f32],
        batch: usize,
        sink: &mut dyn FnMut(&[TensorView<'_>]) -> Result<(), GatewayError>,
    ) -> Result<(), GatewayError> {
        // Only the warm-up calls this: a synthetic model has no tensors.
        self.spend(batch);
        sink(&[])
    }

    fn detect_encoded(
        &mut self,
        frames: &[EncodedFrame<'_>],
        out: &mut Vec<Vec<RawDetection>>,
    ) -> Result<(), GatewayError> {
        self.spend(frames.len());
        out.clear();
        out.extend(
            frames
                .iter()
                .map(|f| synthetic_boxes(f.payload, f.width, f.height, self.classes)),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_are_deterministic_and_inside_the_frame() {
        let a = synthetic_boxes(b"frame one", 640, 480, 80);
        assert_eq!(a, synthetic_boxes(b"frame one", 640, 480, 80));
        assert_ne!(a, synthetic_boxes(b"frame two", 640, 480, 80));
        // Frames of the same length that share their headers differ.
        let big = vec![7u8; 50_000];
        let mut tail = big.clone();
        tail[49_990] = 8;
        assert_ne!(fingerprint(&big), fingerprint(&tail));
        let mut middle = big.clone();
        // A byte of the 16th sampled word.
        middle[16 * (big.len() / 8 / SAMPLED_WORDS) * 8] = 8;
        assert_ne!(fingerprint(&big), fingerprint(&middle));
        for payload in [&b"x"[..], &[7u8; 100_000][..], b"frame one"] {
            let boxes = synthetic_boxes(payload, 640, 480, 80);
            assert!((1..=3).contains(&boxes.len()));
            for d in boxes {
                assert!(d.class_id < 80);
                assert!((0.5..1.0).contains(&d.score));
                let [x1, y1, x2, y2] = d.xyxy;
                assert!(0.0 <= x1 && x1 < x2 && x2 <= 640.0, "{d:?}");
                assert!(0.0 <= y1 && y1 < y2 && y2 <= 480.0, "{d:?}");
            }
        }
    }

    #[test]
    fn configured_cost_is_spent() {
        for wait in [WaitMode::Spin, WaitMode::Sleep] {
            let mut b = SyntheticBackend::new(
                SyntheticConfig {
                    fixed_us: 1_000,
                    per_frame_us: 500,
                    wait,
                    ..Default::default()
                },
                80,
            );
            let frame = EncodedFrame {
                payload: b"abc",
                width: 10,
                height: 10,
            };
            let mut out = Vec::new();
            let t = Instant::now();
            b.detect_encoded(&[frame, frame], &mut out).unwrap();
            // A lower bound only: the cost is never skipped.
            assert!(t.elapsed() >= Duration::from_micros(2_000));
            assert_eq!(out.len(), 2);
        }
    }
}
