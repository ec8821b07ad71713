//! Backends: where a batch of preprocessed frames becomes model outputs.
//!
//! Each inference worker owns one backend instance on its own OS thread, so a
//! backend needs no internal locking and inference never runs on the async
//! runtime. Outputs are lent to the caller through a callback, so tensors are
//! read where the runtime left them instead of being copied.

pub mod onnx;
pub mod spec;
pub mod synthetic;
pub mod triton;

use crate::backend::spec::LoadedModel;
use crate::error::GatewayError;
use crate::pipeline::postprocess::RawDetection;

/// What a backend needs from the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendInput {
    /// The preprocessed `[batch, 3, H, W]` tensor ([`Backend::infer`]).
    Tensor,
    /// The encoded frames ([`Backend::detect_encoded`]); `decode`: still
    /// decode and preprocess them first (timed, then discarded).
    Encoded {
        /// Run decode + preprocess anyway.
        decode: bool,
    },
}

/// A frame as it arrived, for [`BackendInput::Encoded`] backends.
#[derive(Debug, Clone, Copy)]
pub struct EncodedFrame<'a> {
    /// The encoded bytes.
    pub payload: &'a [u8],
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

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

    /// Another instance of this backend that runs one frame with `threads`
    /// inference threads: the pipeline's solo session (`pipeline.solo_threads`),
    /// used for a lone frame while every worker is idle. `None` (the default)
    /// when the backend has no thread setting to widen (remote, synthetic).
    fn solo(
        &self,
        model: &LoadedModel,
        threads: usize,
    ) -> Option<Result<Box<dyn Backend>, GatewayError>> {
        let _ = (model, threads);
        None
    }

    /// What the worker must hand this backend. Default: the tensor.
    fn input(&self) -> BackendInput {
        BackendInput::Tensor
    }

    /// For [`BackendInput::Encoded`] backends: boxes in frame pixels for each
    /// frame, in order, written to `out`.
    fn detect_encoded(
        &mut self,
        frames: &[EncodedFrame<'_>],
        out: &mut Vec<Vec<RawDetection>>,
    ) -> Result<(), GatewayError> {
        let _ = (frames, out);
        Err(GatewayError::Internal(format!(
            "the {} backend takes tensors, not encoded frames",
            self.kind()
        )))
    }
}
