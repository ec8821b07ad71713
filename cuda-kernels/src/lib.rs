//! CUDA preprocessing kernels for framegate, compiled at run time with NVRTC,
//! each with a plain CPU reference in Rust.
//!
//! One kernel launch turns a batch of frames of different sizes and formats
//! (packed RGB8 / BGR8, NV12) into a normalised NCHW tensor (float32 or
//! float16) ready for a detector: bilinear resize (stretch or letterbox with
//! a fill colour), channel order, mean/std normalisation and HWC→NCHW, fused.
//! [`GpuPreprocessor`] runs it on a GPU; [`preprocess_cpu`] is the reference
//! and the CPU path. The crate builds and its CPU tests run with no CUDA at
//! all: the driver (`libcuda`) and NVRTC (`libnvrtc`) are loaded at run time,
//! and their absence is a typed [`CudaError`], not a build failure.
//!
//! # Conventions (identical on CPU and GPU)
//!
//! **Placement** ([`Placement::new`]). For a `w`×`h` frame and an output of
//! `W`×`H`:
//! - *stretch*: the resized image is `W`×`H` at (0, 0);
//! - *letterbox*: `r = min(W / w, H / h)` (f64), resized size
//!   `nw = round(w·r)`, `nh = round(h·r)` (half away from zero, clamped to
//!   `1..=W` / `1..=H`), placed at `left = floor((W − nw) / 2)`,
//!   `top = floor((H − nh) / 2)`; every other output pixel is the fill colour.
//!
//! **Sampling.** Output pixel `(x, y)` inside the resized region samples the
//! source at `sx = (x − left + 0.5)·(w / nw) − 0.5`,
//! `sy = (y − top + 0.5)·(h / nh) − 0.5` (half-pixel centres, float32), each
//! clamped to `[0, w − 1]` / `[0, h − 1]`. With `x0 = floor(sx)`,
//! `x1 = min(x0 + 1, w − 1)`, `fx = sx − x0` (same for y), the value is
//! `lerp(lerp(p00, p01, fx), lerp(p10, p11, fx), fy)` with
//! `lerp(a, b, f) = a + f·(b − a)`, per colour, in float32. This is OpenCV's
//! `INTER_LINEAR` convention; there is no anti-aliasing filter when
//! downscaling.
//!
//! **NV12.** Each tap is converted to RGB before interpolation: BT.601
//! limited range, `R = 1.164383562·(Y−16) + 1.596026786·(V−128)`,
//! `G = 1.164383562·(Y−16) − 0.391762290·(U−128) − 0.812967647·(V−128)`,
//! `B = 1.164383562·(Y−16) + 2.017232143·(U−128)`, each clamped to `0..255`
//! (not rounded). Pixel `(x, y)` uses the U,V pair of its 2×2 block
//! (`(x/2, y/2)`, integer division): no chroma filtering.
//!
//! **Normalisation.** Output plane `c` = `v·mul[c] + add[c]` with
//! `mul[c] = 1 / (255·std[c])`, `add[c] = −mean[c] / std[c]`
//! ([`PreprocessSpec::affine`]), i.e. `(v/255 − mean[c]) / std[c]`, where
//! `v` is the interpolated 0..255 value of the colour plane `c` holds
//! ([`ChannelOrder`]). Float16 output rounds the float32 result to nearest
//! even. The fill colour goes through the same normalisation.
//!
//! **Layout.** The output is `[n, 3, H, W]`, frame `i` of the batch at
//! image `i`.
//!
//! The GPU may contract `a·b + c` into one fused multiply-add, so results
//! differ from the reference by a few float32 ulps (the tests allow 1e-3 for
//! float32 and 1e-2 for float16).

mod cpu;
mod gpu;
mod spec;

pub use cpu::{
    pixel_rgb, preprocess_cpu, preprocess_cpu_f16, preprocess_cpu_into, preprocess_frame_cpu, taps,
    validate_batch, yuv_to_rgb, OutElem,
};
pub use gpu::{
    compile_kernels, cuda_available, nvrtc_version, pick_arch, ArchChoice, CudaError, DeviceFrame,
    DeviceOutput, GpuPreprocessor, KernelImage, INPUT_KEEP_BYTES, KERNEL_SOURCE,
    SHRINK_AFTER_BATCHES,
};
pub use spec::{
    ChannelOrder, FrameError, FrameRef, OutputDType, PixelFormat, Placement, PreprocessSpec,
    ResizeMode, SpecError, MAX_DIM,
};

/// Why a batch, a frame, a spec or an output buffer was refused (the same
/// checks on the CPU and the GPU path).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// The spec is invalid.
    #[error("invalid preprocessing spec: {0}")]
    Spec(#[from] SpecError),
    /// One frame of the batch is invalid.
    #[error("frame {index} of the batch: {source}")]
    Frame {
        /// Index of the frame in the batch.
        index: usize,
        /// What is wrong with it.
        source: FrameError,
    },
    /// The output slice has the wrong number of elements.
    #[error("output holds {have} elements, the batch needs {need}")]
    OutputLen {
        /// Elements given.
        have: usize,
        /// Elements needed.
        need: usize,
    },
    /// More frames than the preprocessor was built for.
    #[error("batch of {n} frames is larger than the maximum {max}")]
    BatchTooLarge {
        /// Frames given.
        n: usize,
        /// The maximum.
        max: usize,
    },
    /// A device frame reaches past the end of its device buffer.
    #[error("device frame {index} needs bytes up to {need}, the buffer holds {have}")]
    DeviceBufferShort {
        /// Index of the frame in the batch.
        index: usize,
        /// Bytes in the buffer.
        have: usize,
        /// Bytes the frame needs.
        need: usize,
    },
    /// The output dtype of the call does not match the spec.
    #[error("output type {have} does not match the spec's {spec}")]
    DType {
        /// The type asked for.
        have: OutputDType,
        /// The spec's type.
        spec: OutputDType,
    },
}
