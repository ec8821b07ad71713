//! `pipeline.preprocess = "cuda"`: the GPU path finds what the CPU path
//! finds.
//!
//! - Everywhere: the kernels' CPU reference (which the GPU matches within
//!   1e-3, `cuda-kernels/tests/gpu_vs_cpu.rs`) fed to the model finds the
//!   same objects as the gateway's own CPU preprocessing, on every photo.
//! - On a GPU: a pipeline with CUDA preprocessing answers JPEG and raw RGB8,
//!   BGR8 and NV12 frames, batched together, with the detections the
//!   kernels' reference gives, and the same objects as a CPU pipeline.
//!   Without a usable GPU it prints `SKIPPED: no CUDA device (...)` and
//!   passes; with `FRAMEGATE_REQUIRE_GPU=1` (set by
//!   `cuda-kernels/gpu-check.sh`) it fails instead.

mod support;

use std::time::{Duration, Instant};

use framegate::backend::onnx::{init_runtime, OnnxBackend, OnnxThreads};
use framegate::backend::spec::LoadedModel;
use framegate::backend::Backend;
use framegate::config::{PipelineConfig, PreprocessDevice};
use framegate::error::GatewayError;
use framegate::gateway::onnx_factory;
use framegate::pipeline::cuda::{kernel_spec, placement, CudaPreprocess};
use framegate::pipeline::decode::{decode_rgb, probe, FrameLimits, ProbedFrame, RgbImage};
use framegate::pipeline::postprocess::{self, RawDetection};
use framegate::pipeline::preprocess::{Placement, Preprocessor};
use framegate::pipeline::{FrameOutcome, FrameResult, ModelPipeline, Readiness};
use framegate_cuda::{preprocess_cpu, FrameRef, PixelFormat};
use framegate_protocol::Codec;
use support::{data, PHOTOS};

const LIMITS: FrameLimits = support::FRAME_LIMITS;

fn require_gpu() -> bool {
    std::env::var_os("FRAMEGATE_REQUIRE_GPU").is_some_and(|v| v == "1")
}

fn model() -> LoadedModel {
    init_runtime(None).expect("ONNX Runtime (run scripts/install-onnxruntime.sh)");
    LoadedModel::bundled().unwrap()
}

fn jpeg(name: &str) -> ProbedFrame {
    probe(None, 0, 0, data(name).into(), &LIMITS).unwrap()
}

fn decoded(frame: &ProbedFrame) -> RgbImage {
    let mut rgb = RgbImage::default();
    decode_rgb(frame, &mut rgb).unwrap();
    rgb
}

/// Runs one preprocessed image through the model and its decoder.
fn detect(
    backend: &mut OnnxBackend,
    model: &LoadedModel,
    input: &[f32],
    place: &Placement,
) -> Vec<RawDetection> {
    let spec = &model.spec;
    let mut out = Vec::new();
    backend
        .infer(input, 1, &mut |views| {
            out = postprocess::decode(
                &spec.decoder,
                (spec.input.width, spec.input.height),
                views,
                0,
                place,
            )?;
            Ok(())
        })
        .unwrap();
    out
}

/// What the kernels' CPU reference makes of `frame` (pixels in `format`).
fn kernel_reference(
    backend: &mut OnnxBackend,
    model: &LoadedModel,
    pixels: &[u8],
    format: PixelFormat,
    (w, h): (u32, u32),
) -> Vec<RawDetection> {
    let spec = kernel_spec(&model.spec.input);
    let mut input = vec![0f32; spec.image_len()];
    preprocess_cpu(&[FrameRef::new(pixels, w, h, format)], &spec, &mut input).unwrap();
    detect(backend, model, &input, &placement(&spec, w, h))
}

/// Every detection of `a` scoring at least `min_score` has one in `b` of the
/// same class with IoU ≥ `min_iou` and a score within `max_score_diff`.
/// Returns the worst IoU and score difference seen.
fn assert_found_in(
    what: &str,
    a: &[RawDetection],
    b: &[RawDetection],
    min_score: f32,
    min_iou: f32,
    max_score_diff: f32,
) -> (f32, f32) {
    let (mut worst_iou, mut worst_diff) = (1.0f32, 0.0f32);
    for d in a.iter().filter(|d| d.score >= min_score) {
        let best = b
            .iter()
            .filter(|e| e.class_id == d.class_id)
            .max_by(|x, y| {
                support::iou(&x.xyxy, &d.xyxy).total_cmp(&support::iou(&y.xyxy, &d.xyxy))
            })
            .unwrap_or_else(|| {
                panic!("{what}: nothing of class {} in {b:?} for {d:?}", d.class_id)
            });
        let iou = support::iou(&best.xyxy, &d.xyxy);
        let diff = (best.score - d.score).abs();
        assert!(
            iou >= min_iou && diff <= max_score_diff,
            "{what}: {d:?} best match {best:?}: IoU {iou:.3} (need {min_iou}), score difference {diff:.3} (at most {max_score_diff})"
        );
        worst_iou = worst_iou.min(iou);
        worst_diff = worst_diff.max(diff);
    }
    (worst_iou, worst_diff)
}

/// The objects both preprocessings must agree on: every box scoring 0.5 or
/// more, matched by class at IoU ≥ 0.85 with scores within 0.1. The kernels
/// sample without the CPU path's antialiasing filter, so the two inputs
/// differ a little on downscaled frames: measured on the five photos, boxes
/// scoring 0.5 or more match at IoU ≥ 0.925 with scores within 0.026; weaker
/// boxes move more (scores by up to 0.08), and a weak second class for one
/// object (person.jpg's horse, 0.52, also "cow" at 0.49 with the kernels)
/// may be in one list only.
fn assert_same_objects(what: &str, a: &[RawDetection], b: &[RawDetection]) {
    let (i1, d1) = assert_found_in(what, a, b, 0.5, 0.85, 0.1);
    let (i2, d2) = assert_found_in(what, b, a, 0.5, 0.85, 0.1);
    println!(
        "{what}: {} / {} boxes, worst IoU {:.3}, worst score difference {:.3}",
        a.len(),
        b.len(),
        i1.min(i2),
        d1.max(d2)
    );
}

#[test]
fn the_kernels_reference_finds_what_the_cpu_preprocessing_finds() {
    let model = model();
    let input = &model.spec.input;
    let chw = 3 * input.width as usize * input.height as usize;
    let mut backend = OnnxBackend::new(&model, 1).unwrap();
    let mut pre = Preprocessor::default();
    let mut buf = vec![0f32; chw];
    let mut found = 0;
    for name in PHOTOS {
        let rgb = decoded(&jpeg(name));
        let place = pre.run(&rgb, input, &mut buf);
        let cpu = detect(&mut backend, &model, &buf, &place);
        let kernel = kernel_reference(
            &mut backend,
            &model,
            &rgb.pixels,
            PixelFormat::Rgb8,
            (rgb.width, rgb.height),
        );
        assert_same_objects(name, &cpu, &kernel);
        found += cpu.iter().filter(|d| d.score >= 0.5).count();
    }
    assert!(found >= 5, "only {found} confident boxes in five photos");
}

/// `rgb` as NV12 (BT.601 limited range, chroma of each 2×2 block averaged).
fn to_nv12(rgb: &RgbImage) -> Vec<u8> {
    let (w, h) = (rgb.width as usize, rgb.height as usize);
    assert!(w % 2 == 0 && h % 2 == 0);
    let px = |x: usize, y: usize| {
        let i = 3 * (y * w + x);
        [
            f32::from(rgb.pixels[i]),
            f32::from(rgb.pixels[i + 1]),
            f32::from(rgb.pixels[i + 2]),
        ]
    };
    let mut out = vec![0u8; w * h * 3 / 2];
    for y in 0..h {
        for x in 0..w {
            let [r, g, b] = px(x, y);
            out[y * w + x] = (16.0 + 0.256_788 * r + 0.504_129 * g + 0.097_906 * b)
                .round()
                .clamp(0.0, 255.0) as u8;
        }
    }
    for by in 0..h / 2 {
        for bx in 0..w / 2 {
            let mut sum = [0f32; 3];
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                let p = px(2 * bx + dx, 2 * by + dy);
                for c in 0..3 {
                    sum[c] += p[c] / 4.0;
                }
            }
            let [r, g, b] = sum;
            let u = 128.0 - 0.148_223 * r - 0.290_993 * g + 0.439_216 * b;
            let v = 128.0 + 0.439_216 * r - 0.367_788 * g - 0.071_427 * b;
            let at = w * h + by * w + 2 * bx;
            out[at] = u.round().clamp(0.0, 255.0) as u8;
            out[at + 1] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

fn start(model: LoadedModel, preprocess: PreprocessDevice) -> std::sync::Arc<ModelPipeline> {
    let config = PipelineConfig {
        max_batch: Some(8),
        workers: Some(1),
        // Frames queued behind a running batch wait for batch-mates (the
        // first of a burst may leave alone: the worker was idle).
        max_delay_us: 200_000,
        max_queue_wait_ms: 0,
        preprocess,
        ..PipelineConfig::default()
    };
    ModelPipeline::start(model, &config, onnx_factory(OnnxThreads::new(1)))
}

/// Submits `frames` at once and returns their answers, in order.
fn outcomes(pipeline: &ModelPipeline, frames: &[ProbedFrame]) -> Vec<FrameOutcome> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let tenant = pipeline.tenant("test", 1);
    let receivers: Vec<_> = frames
        .iter()
        .map(|f| pipeline.submit(&tenant, f.clone(), Instant::now()).unwrap())
        .collect();
    rt.block_on(async {
        let mut out = Vec::new();
        for r in receivers {
            out.push(r.await.expect("one answer per frame"));
        }
        out
    })
}

fn run_all(pipeline: &ModelPipeline, frames: &[ProbedFrame]) -> Vec<FrameResult> {
    outcomes(pipeline, frames)
        .into_iter()
        .map(|o| o.expect("frame answered"))
        .collect()
}

fn raw(result: &FrameResult) -> Vec<RawDetection> {
    result
        .detections
        .iter()
        .map(|d| RawDetection {
            class_id: d.class_id,
            score: d.score,
            xyxy: [d.x1, d.y1, d.x2, d.y2],
        })
        .collect()
}

#[test]
fn a_cuda_pipeline_answers_what_the_kernels_reference_and_the_cpu_pipeline_find() {
    let model = model();
    let gpu_pipeline = start(model.clone(), PreprocessDevice::Cuda);
    match gpu_pipeline.wait_ready(Duration::from_secs(120)) {
        Readiness::Ready => {}
        Readiness::Failed(e) if framegate_cuda::cuda_available().is_err() && !require_gpu() => {
            // What a gateway without a GPU says at start.
            assert!(e.contains("pipeline.preprocess = \"cuda\""), "{e}");
            println!("SKIPPED: no CUDA device ({e})");
            return;
        }
        other => panic!("the CUDA pipeline did not start: {other:?}"),
    }
    let cpu_pipeline = start(model.clone(), PreprocessDevice::Cpu);
    assert_eq!(
        cpu_pipeline.wait_ready(Duration::from_secs(60)),
        Readiness::Ready
    );

    // Every photo as JPEG, then the dog as raw RGB8, BGR8 and NV12: 8 frames
    // of four formats and five sizes, one batch; then the photos again, a
    // second batch through the same buffers.
    let dog = decoded(&jpeg("dog.jpg"));
    let (w, h) = (dog.width, dog.height);
    let bgr: Vec<u8> = dog
        .pixels
        .chunks_exact(3)
        .flat_map(|p| [p[2], p[1], p[0]])
        .collect();
    let nv12 = to_nv12(&dog);
    let mut frames: Vec<ProbedFrame> = PHOTOS.iter().map(|p| jpeg(p)).collect();
    for (codec, bytes) in [
        (Codec::Rgb8, dog.pixels.clone()),
        (Codec::Bgr8, bgr),
        (Codec::Nv12, nv12.clone()),
    ] {
        frames.push(probe(Some(codec), w, h, bytes.into(), &LIMITS).unwrap());
    }
    frames.extend(PHOTOS.iter().map(|p| jpeg(p)));

    let t0 = Instant::now();
    let gpu = run_all(&gpu_pipeline, &frames);
    println!("CUDA pipeline: {} frames in {:?}", gpu.len(), t0.elapsed());
    let cpu = run_all(&cpu_pipeline, &frames);

    let mut backend = OnnxBackend::new(&model, 1).unwrap();
    for (i, (frame, (g, c))) in frames.iter().zip(gpu.iter().zip(&cpu)).enumerate() {
        let what = format!(
            "frame {i} ({:?} {}x{})",
            frame.codec, frame.width, frame.height
        );
        assert_eq!((g.width, g.height), (frame.width, frame.height), "{what}");
        assert!(g.timings.preprocess_us > 0, "{what}: no preprocess time");
        let expected = match frame.codec {
            Codec::Nv12 => kernel_reference(&mut backend, &model, &nv12, PixelFormat::Nv12, (w, h)),
            _ => {
                let rgb = decoded(frame);
                kernel_reference(
                    &mut backend,
                    &model,
                    &rgb.pixels,
                    PixelFormat::Rgb8,
                    (rgb.width, rgb.height),
                )
            }
        };
        // The GPU's input equals the reference's within 1e-3: the same boxes.
        let got = raw(g);
        assert_found_in(&what, &expected, &got, 0.3, 0.98, 0.01);
        assert_found_in(&what, &got, &expected, 0.3, 0.98, 0.01);
        // And the same objects as the CPU preprocessing.
        assert_same_objects(&what, &raw(c), &got);
    }
    let batches: Vec<u32> = gpu.iter().map(|r| r.batch_size).collect();
    println!("CUDA pipeline batch sizes: {batches:?}");
    assert!(
        batches.iter().any(|&b| b > 1),
        "no batch of more than one frame: {batches:?}"
    );
    // Raw RGB8 and BGR8 of the dog are the JPEG's pixels: the same answers
    // (to within what the batch position may change in the model's sums).
    for i in [5, 6] {
        let what = format!("frame {i} against frame 0");
        assert_found_in(&what, &raw(&gpu[0]), &raw(&gpu[i]), 0.3, 0.999, 1e-4);
        assert_found_in(&what, &raw(&gpu[i]), &raw(&gpu[0]), 0.3, 0.999, 1e-4);
    }

    // A frame that fails to decode in the middle of a batch gets its own
    // error; the frames staged after it keep their own pixels and boxes.
    let mixed = vec![
        jpeg("dog.jpg"),
        probe(None, 0, 0, data("truncated.jpg").into(), &LIMITS).unwrap(),
        frames[5].clone(),
        jpeg("person.jpg"),
        jpeg("dog.jpg"),
    ];
    let answers = outcomes(&gpu_pipeline, &mixed);
    assert!(
        matches!(answers[1], Err(GatewayError::InvalidImage(_))),
        "{:?}",
        answers[1]
    );
    for (i, like) in [(0, 0), (2, 0), (3, 1), (4, 0)] {
        let got = answers[i]
            .as_ref()
            .unwrap_or_else(|e| panic!("frame {i}: {e}"));
        let what = format!("mixed batch frame {i} against frame {like}");
        assert_found_in(&what, &raw(&gpu[like]), &raw(got), 0.3, 0.999, 1e-4);
        assert_found_in(&what, &raw(got), &raw(&gpu[like]), 0.3, 0.999, 1e-4);
    }
    println!(
        "mixed batch: {:?}",
        answers
            .iter()
            .map(|a| a.as_ref().map(|r| r.batch_size).map_err(|e| e.to_string()))
            .collect::<Vec<_>>()
    );
    gpu_pipeline.shutdown();
    cpu_pipeline.shutdown();
}

#[test]
fn cuda_preprocessing_refuses_a_frame_too_large_for_the_kernels_and_only_that_frame() {
    let model = model();
    let mut pre = match CudaPreprocess::new(&model.spec.input, 2, 0) {
        Ok(p) => p,
        Err(e) if framegate_cuda::cuda_available().is_err() && !require_gpu() => {
            println!("SKIPPED: no CUDA device ({e})");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let limits = FrameLimits {
        max_pixels: 20_000 * 4,
        max_side: 20_000,
    };
    let wide = probe(
        Some(Codec::Rgb8),
        20_000,
        2,
        vec![0u8; 20_000 * 2 * 3].into(),
        &limits,
    )
    .unwrap();
    let err = pre.stage(0, &wide, |_, _| unreachable!()).unwrap_err();
    assert!(err.to_string().contains("16384"), "{err}");
    let dog = jpeg("dog.jpg");
    assert!(pre.stage(0, &dog, decode_rgb).unwrap());
    let chw = 3 * model.spec.input.width as usize * model.spec.input.height as usize;
    let mut out = vec![f32::NAN; chw];
    pre.run(&[&dog], &mut out).unwrap();
    assert!(out.iter().all(|v| v.is_finite()));
}
