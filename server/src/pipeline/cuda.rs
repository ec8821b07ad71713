//! `pipeline.preprocess = "cuda"`: a batch's frames are resized, normalised
//! and laid out as the model's input by one launch of the `framegate-cuda`
//! kernels on a GPU, instead of frame by frame on the worker's thread.
//!
//! Each inference worker owns one [`CudaPreprocess`]: its own CUDA stream,
//! pinned staging and device buffers (grown to the largest batch seen, never
//! allocated per frame). JPEG and PNG frames are decoded on the worker's
//! thread into one pooled RGB8 buffer per batch slot; raw RGB8, BGR8 and NV12
//! frames go to the GPU as they arrived (NV12 is converted by the kernel).
//! The result is copied back into the worker's batch tensor, which is what
//! the CPU backends take.
//!
//! The kernels resample with plain bilinear taps (OpenCV's `INTER_LINEAR`),
//! the CPU path with an antialiasing filter, so the two model inputs differ
//! slightly on downscaled frames; `tests/cuda_preprocess.rs` holds their
//! detections to each other. Boxes are mapped back with the kernels' own
//! placement ([`framegate_cuda::Placement`]).

use framegate_cuda::{
    ChannelOrder as KernelOrder, CudaError, FrameRef, GpuPreprocessor, OutputDType, PixelFormat,
    PreprocessSpec, ResizeMode as KernelResize, MAX_DIM,
};

use framegate_protocol::Codec;

use super::decode::{ProbedFrame, RgbImage};
use super::preprocess::{Placement, Preprocessor};
use crate::backend::spec::{ChannelOrder, InputSpec, ResizeMode};
use crate::error::GatewayError;

/// The kernels' spec for a model input: the model's mean and std are in
/// 0..255 units, the kernels' in 0..1.
pub fn kernel_spec(input: &InputSpec) -> PreprocessSpec {
    PreprocessSpec {
        out_width: input.width,
        out_height: input.height,
        resize: match input.resize {
            ResizeMode::Stretch => KernelResize::Stretch,
            ResizeMode::Letterbox => KernelResize::Letterbox {
                fill: [input.pad_value; 3],
            },
        },
        channel_order: match input.channel_order {
            ChannelOrder::Rgb => KernelOrder::Rgb,
            ChannelOrder::Bgr => KernelOrder::Bgr,
        },
        mean: input.mean.map(|m| m / 255.0),
        std: input.std.map(|s| s / 255.0),
        dtype: OutputDType::F32,
    }
}

/// Where the kernels put a `w`×`h` frame, as the pipeline's [`Placement`].
pub fn placement(spec: &PreprocessSpec, w: u32, h: u32) -> Placement {
    let p = framegate_cuda::Placement::new(w, h, spec);
    Placement {
        scale_x: p.width as f32 / w as f32,
        scale_y: p.height as f32 / h as f32,
        pad_left: p.left as f32,
        pad_top: p.top as f32,
        frame_width: w,
        frame_height: h,
    }
}

/// The message a gateway that cannot start its CUDA preprocessing fails with.
pub fn unavailable_message(e: &dyn std::fmt::Display) -> String {
    format!(
        "CUDA preprocessing (pipeline.preprocess = \"cuda\") cannot start: {e}; to \
         preprocess on the CPU instead, set pipeline.preprocess = \"cpu\" (--preprocess cpu)"
    )
}

/// One worker's GPU preprocessing: the kernels, its stream and buffers, and
/// one decoded-frame buffer per batch slot (each keeps the capacity of the
/// largest frame it held up to [`KEEP_DECODE_BYTES`](super::decode::KEEP_DECODE_BYTES), as the CPU path's one
/// buffer does; the pinned staging and device buffers grow to the largest
/// batch's bytes and shrink when batches stay much smaller, see
/// [`GpuPreprocessor`]). A CPU preprocessor stands by for a batch the GPU
/// fails on.
pub struct CudaPreprocess {
    gpu: GpuPreprocessor,
    images: Vec<RgbImage>,
    cpu: Preprocessor,
    scratch: RgbImage,
}

impl std::fmt::Debug for CudaPreprocess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaPreprocess")
            .field("gpu", &self.gpu)
            .finish()
    }
}

impl CudaPreprocess {
    /// Loads the driver and NVRTC, compiles the kernels for device `ordinal`
    /// (once per process) and sets up a stream for batches of up to
    /// `max_batch` frames of `input`.
    pub fn new(input: &InputSpec, max_batch: usize, ordinal: usize) -> Result<Self, GatewayError> {
        let refuse = |e: CudaError| GatewayError::NotReady(unavailable_message(&e));
        let gpu = GpuPreprocessor::new(ordinal, kernel_spec(input), max_batch).map_err(refuse)?;
        // A worker waiting for its batch sleeps instead of holding a core
        // the other workers' inference could use (the driver spins by
        // default; docs/benchmarks.md, "Spinning waits"). A driver without
        // the call (before CUDA 12.1) keeps spinning, with a warning.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| gpu.set_blocking_sync())) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "CUDA waits will spin"),
            Err(_) => tracing::warn!("this CUDA driver cannot make waits block; they will spin"),
        }
        let mut me = Self {
            gpu,
            images: (0..max_batch.max(1)).map(|_| RgbImage::default()).collect(),
            cpu: Preprocessor::default(),
            scratch: RgbImage::default(),
        };
        // One small batch through the whole path: a GPU that cannot run the
        // kernels fails here, at start, and the copy-back buffer exists
        // before the first frame.
        let chw = kernel_spec(input).image_len();
        let pixel = FrameRef::rgb8(&[114, 114, 114], 1, 1);
        me.gpu
            .run_to_host(&[pixel], &mut vec![0f32; chw])
            .map_err(refuse)?;
        Ok(me)
    }

    /// The GPU's name.
    pub fn device_name(&self) -> &str {
        self.gpu.device_name()
    }

    /// The architecture the kernels were compiled for (`sm_90`, …).
    pub fn arch(&self) -> String {
        self.gpu.arch().option()
    }

    /// Where frame `frame` will land in the input.
    pub fn placement(&self, frame: &ProbedFrame) -> Placement {
        placement(self.gpu.spec(), frame.width, frame.height)
    }

    /// Gets `frame` ready for batch slot `slot`: decodes a JPEG or PNG with
    /// `decode` into the slot's buffer; a raw frame needs nothing (it goes
    /// to the GPU as it is). Returns whether it decoded.
    pub fn stage(
        &mut self,
        slot: usize,
        frame: &ProbedFrame,
        decode: impl FnOnce(&ProbedFrame, &mut RgbImage) -> Result<(), GatewayError>,
    ) -> Result<bool, GatewayError> {
        if frame.width > MAX_DIM || frame.height > MAX_DIM {
            return Err(GatewayError::InvalidImage(format!(
                "a {}x{} frame is larger than CUDA preprocessing takes ({MAX_DIM} pixels a side)",
                frame.width, frame.height
            )));
        }
        if raw_format(frame.codec).is_some() {
            return Ok(false);
        }
        let image = self
            .images
            .get_mut(slot)
            .ok_or_else(|| GatewayError::Internal(format!("batch slot {slot} out of range")))?;
        decode(frame, image)?;
        Ok(true)
    }

    /// Preprocesses the staged `frames` (slot `i` = `frames[i]`) in one launch
    /// and copies the result into `out` (`frames.len()` images), waiting for it.
    pub fn run(&mut self, frames: &[&ProbedFrame], out: &mut [f32]) -> Result<(), GatewayError> {
        let refs: Vec<FrameRef<'_>> = frames
            .iter()
            .zip(&self.images)
            .map(|(f, img)| match raw_format(f.codec) {
                Some(format) => FrameRef::new(&f.payload, f.width, f.height, format),
                None => FrameRef::rgb8(&img.pixels, img.width, img.height),
            })
            .collect();
        if refs.len() != frames.len() {
            return Err(GatewayError::Internal(format!(
                "batch of {} frames is larger than the CUDA preprocessing's {} slots",
                frames.len(),
                refs.len()
            )));
        }
        self.gpu
            .run_to_host(&refs, out)
            .map_err(|e| GatewayError::Internal(format!("CUDA preprocessing failed: {e}")))
    }

    /// Gives back the decode buffers that huge frames grew (over
    /// [`KEEP_DECODE_BYTES`](super::decode::KEEP_DECODE_BYTES)), once their batch is preprocessed.
    pub fn release_large_buffers(&mut self) {
        for image in &mut self.images {
            image.release_if_large();
        }
        self.scratch.release_if_large();
    }

    /// Preprocesses staged frame `slot` on the CPU into `out` (one image),
    /// for a batch the GPU failed on; returns where it landed.
    pub fn run_on_cpu(
        &mut self,
        slot: usize,
        frame: &ProbedFrame,
        input: &InputSpec,
        out: &mut [f32],
    ) -> Placement {
        let image = match (raw_format(frame.codec), self.images.get(slot)) {
            (None, Some(decoded)) => decoded,
            _ => {
                // A raw frame: `decode_rgb` only copies or converts it (its
                // size was checked by `probe`).
                if let Err(e) = super::decode::decode_rgb(frame, &mut self.scratch) {
                    tracing::error!(error = %e, "a staged raw frame did not convert");
                }
                &self.scratch
            }
        };
        self.cpu.run(image, input, out)
    }
}

/// The kernels' format of a raw frame; `None` for an encoded one.
fn raw_format(codec: Codec) -> Option<PixelFormat> {
    match codec {
        Codec::Rgb8 => Some(PixelFormat::Rgb8),
        Codec::Bgr8 => Some(PixelFormat::Bgr8),
        Codec::Nv12 => Some(PixelFormat::Nv12),
        Codec::Jpeg | Codec::Png => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::spec::LoadedModel;
    use crate::pipeline::preprocess;

    #[test]
    fn the_kernel_spec_normalises_as_the_model_asks() {
        let model = LoadedModel::bundled().unwrap();
        let input = &model.spec.input;
        let spec = kernel_spec(input);
        let (mul, add) = spec.affine();
        for c in 0..3 {
            // (v - mean) / std for a 0..255 value v, as the CPU path.
            for v in [0.0f32, 114.0, 255.0] {
                let want = (v - input.mean[c]) / input.std[c];
                let got = v * mul[c] + add[c];
                assert!(
                    (want - got).abs() < 1e-4,
                    "plane {c}, v {v}: {want} vs {got}"
                );
            }
        }
        assert_eq!(
            (spec.out_width, spec.out_height),
            (input.width, input.height)
        );
    }

    #[test]
    fn the_kernels_placement_agrees_with_the_cpu_paths() {
        let model = LoadedModel::bundled().unwrap();
        let input = &model.spec.input;
        let spec = kernel_spec(input);
        for (w, h) in [(768, 576), (1920, 1080), (416, 416), (333, 1001), (2, 2)] {
            let (cpu, _, _) = preprocess::placement(input, w, h);
            let gpu = placement(&spec, w, h);
            assert_eq!(
                (gpu.pad_left, gpu.pad_top),
                (cpu.pad_left, cpu.pad_top),
                "{w}x{h}"
            );
            assert!((gpu.scale_x - cpu.scale_x).abs() < 1e-6, "{w}x{h}");
            assert!((gpu.scale_y - cpu.scale_y).abs() < 1e-6, "{w}x{h}");
        }
    }

    #[test]
    fn without_a_gpu_it_refuses_and_names_what_is_missing() {
        if framegate_cuda::cuda_available().is_ok() {
            eprintln!("a CUDA device is present: the refusal is not exercised here");
            return;
        }
        let model = LoadedModel::bundled().unwrap();
        let err = CudaPreprocess::new(&model.spec.input, 4, 0).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("pipeline.preprocess = \"cuda\""), "{msg}");
        assert!(
            msg.contains("driver") || msg.contains("NVRTC") || msg.contains("device"),
            "{msg}"
        );
        assert!(msg.contains("--preprocess cpu"), "{msg}");
    }
}
