//! Backends: where a batch of preprocessed frames becomes model outputs.
//!
//! Each inference worker owns one backend instance on its own OS thread, so a
//! backend needs no internal locking and inference never runs on the async
//! runtime. Outputs are lent to the caller through a callback, so tensors are
//! read where the runtime left them instead of being copied.

pub mod onnx;
pub mod spec;
pub mod triton;

use crate::error::GatewayError;

/// One output tensor, borrowed from the backend.
#[derive(Debug, Clone)]
pub struct TensorView<'a> {
    /// Output name.
    pub name: String,
    /// Shape, batch first.
    pub shape: Vec<usize>,
    /// Row-major data.
    pub data: &'a [f32],
}

/// Runs a model on batches.
pub trait Backend: Send {
    /// Short name for logs and `/v1/models` (`onnx`, `synthetic`, …).
    fn kind(&self) -> &'static str;

    /// Runs `batch` frames (`input` is `[batch, 3, H, W]` float32) and hands
    /// the outputs to `sink`.
    fn infer(
        &mut self,
        input: &[f32],
        batch: usize,
        sink: &mut dyn FnMut(&[TensorView<'_>]) -> Result<(), GatewayError>,
    ) -> Result<(), GatewayError>;
}
