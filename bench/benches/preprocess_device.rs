//! `pipeline.preprocess`: one batch of frames made into the model's input on
//! the worker's CPU thread (`cpu`, frame by frame) against the GPU (`cuda`,
//! one launch: pinned staging, upload, kernel, copy back into the batch
//! tensor), for the bundled model's 416×416 input.
//!
//! Shows: what a batch's preprocessing costs a worker on each device, for
//! 8 frames of 768×576 RGB8 (dog.jpg's size), 1920×1080 RGB8 and 1920×1080
//! NV12 (a camera's native format: the CPU path converts it to RGB first,
//! the kernel samples it directly). Without a usable GPU the `cuda` rows
//! print `SKIPPED: no CUDA device (...)`; `cuda-kernels/gpu-check.sh` runs
//! this bench on a GPU machine.
#![allow(missing_docs)]

use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use framegate::backend::spec::LoadedModel;
use framegate::pipeline::cuda::CudaPreprocess;
use framegate::pipeline::decode::{decode_rgb, probe, FrameLimits, ProbedFrame, RgbImage};
use framegate::pipeline::preprocess::Preprocessor;
use framegate_protocol::Codec;

const BATCH: usize = 8;
const LIMITS: FrameLimits = FrameLimits {
    max_pixels: 40_000_000,
    max_side: 16_384,
};

/// A deterministic frame with detail at every scale (gradients plus a
/// hashed texture), so neither path meets flat memory.
fn pixels(w: u32, h: u32, seed: u32, codec: Codec) -> Vec<u8> {
    let len = match codec {
        Codec::Nv12 => (w * h * 3 / 2) as usize,
        _ => (w * h * 3) as usize,
    };
    (0..len as u32)
        .map(|i| {
            let x = i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 27;
            ((i % w) * 255 / w + x) as u8
        })
        .collect()
}

fn batch(w: u32, h: u32, codec: Codec) -> Vec<ProbedFrame> {
    (0..BATCH as u32)
        .map(|s| {
            let data = Bytes::from(pixels(w, h, s, codec));
            probe(Some(codec), w, h, data, &LIMITS).unwrap()
        })
        .collect()
}

fn preprocess_batch(c: &mut Criterion) {
    let model = LoadedModel::bundled().unwrap();
    let input = &model.spec.input;
    let chw = 3 * input.width as usize * input.height as usize;
    let mut out = vec![0f32; BATCH * chw];
    let mut gpu = match CudaPreprocess::new(input, BATCH, 0) {
        Ok(g) => {
            println!("CUDA device: {} ({})", g.device_name(), g.arch());
            Some(g)
        }
        Err(e) => {
            println!("SKIPPED: no CUDA device ({e})");
            None
        }
    };
    let mut g = c.benchmark_group("preprocess_batch8");
    g.sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(BATCH as u64));
    for (name, w, h, codec) in [
        ("rgb8_768x576", 768, 576, Codec::Rgb8),
        ("rgb8_1920x1080", 1920, 1080, Codec::Rgb8),
        ("nv12_1920x1080", 1920, 1080, Codec::Nv12),
    ] {
        let frames = batch(w, h, codec);
        // The CPU path as a worker runs it: convert (raw frames are copied
        // or converted to RGB8 by `decode_rgb`), then preprocess, per frame.
        let mut pre = Preprocessor::default();
        let mut rgb = RgbImage::default();
        g.bench_function(format!("cpu_{name}"), |b| {
            b.iter(|| {
                for (k, f) in frames.iter().enumerate() {
                    decode_rgb(f, &mut rgb).unwrap();
                    pre.run(&rgb, input, &mut out[k * chw..(k + 1) * chw]);
                }
            })
        });
        if let Some(gpu) = gpu.as_mut() {
            let refs: Vec<&ProbedFrame> = frames.iter().collect();
            for (k, f) in frames.iter().enumerate() {
                gpu.stage(k, f, decode_rgb).unwrap();
            }
            g.bench_function(format!("cuda_{name}"), |b| {
                b.iter(|| gpu.run(&refs, &mut out).unwrap())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, preprocess_batch);
criterion_main!(benches);
