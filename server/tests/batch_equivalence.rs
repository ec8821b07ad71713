//! A batch of 8 gives the same answers as 8 single runs, at the backend and
//! through the whole pipeline.

mod support;

use std::time::{Duration, Instant};

use framegate::backend::onnx::{init_runtime, OnnxBackend, OnnxThreads};
use framegate::backend::spec::LoadedModel;
use framegate::backend::Backend;
use framegate::config::PipelineConfig;
use framegate::gateway::onnx_factory;
use framegate::pipeline::decode::{decode_rgb, probe, FrameLimits, RgbImage};
use framegate::pipeline::preprocess::Preprocessor;
use framegate::pipeline::{FrameResult, ModelPipeline, Readiness};
use support::data;

const LIMITS: FrameLimits = support::FRAME_LIMITS;
const PHOTOS: [&str; 8] = [
    "dog.jpg",
    "person.jpg",
    "horses.jpg",
    "giraffe.jpg",
    "kite.jpg",
    "dog.jpg",
    "kite.jpg",
    "horses.jpg",
];

fn frame(name: &str) -> framegate::pipeline::decode::ProbedFrame {
    probe(None, 0, 0, data(name).into(), &LIMITS).unwrap()
}

#[test]
fn backend_batch_of_eight_equals_eight_single_runs() {
    init_runtime(None).expect("ONNX Runtime (run scripts/install-onnxruntime.sh)");
    let model = LoadedModel::bundled().unwrap();
    let spec = model.spec.input.clone();
    let chw = 3 * spec.width as usize * spec.height as usize;
    let mut input = vec![0f32; 8 * chw];
    let (mut pre, mut rgb) = (Preprocessor::default(), RgbImage::default());
    for (i, p) in PHOTOS.iter().enumerate() {
        decode_rgb(&frame(p), &mut rgb).unwrap();
        pre.run(&rgb, &spec, &mut input[i * chw..(i + 1) * chw]);
    }
    let mut backend = OnnxBackend::new(&model, 1).unwrap();
    let mut batched: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    backend
        .infer(&input, 8, &mut |views| {
            batched = views
                .iter()
                .map(|v| (v.name.clone(), v.shape.clone(), v.data.to_vec()))
                .collect();
            Ok(())
        })
        .unwrap();
    assert_eq!(batched.len(), 6);
    let mut max_diff = 0f32;
    for i in 0..8 {
        backend
            .infer(&input[i * chw..(i + 1) * chw], 1, &mut |views| {
                for v in views {
                    let (_, shape, data) = batched.iter().find(|b| b.0 == v.name).unwrap();
                    assert_eq!(shape[0], 8);
                    assert_eq!(&shape[1..], &v.shape[1..]);
                    let per = v.data.len();
                    for (a, b) in v.data.iter().zip(&data[i * per..(i + 1) * per]) {
                        max_diff = max_diff.max((a - b).abs());
                    }
                }
                Ok(())
            })
            .unwrap();
    }
    assert!(
        max_diff < 1e-4,
        "batched and single outputs differ by {max_diff}"
    );
}

/// Starts a pipeline of the bundled model on ONNX Runtime (one thread per
/// worker), waits until it is ready, and makes a runtime to await answers.
fn start(config: &PipelineConfig) -> (std::sync::Arc<ModelPipeline>, tokio::runtime::Runtime) {
    init_runtime(None).expect("ONNX Runtime (run scripts/install-onnxruntime.sh)");
    let pipeline = ModelPipeline::start(
        LoadedModel::bundled().unwrap(),
        config,
        onnx_factory(OnnxThreads::new(1)),
    );
    assert_eq!(
        pipeline.wait_ready(Duration::from_secs(60)),
        Readiness::Ready
    );
    // The warm-up timed a full batch: admission knows the service time
    // before the first frame (a burst right after start is not refused on
    // a guess).
    assert!(pipeline.queue_wait().1 > Duration::ZERO);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    (pipeline, rt)
}

fn run_pipeline(max_batch: usize) -> (Vec<FrameResult>, u32) {
    let config = PipelineConfig {
        max_batch: Some(max_batch),
        workers: Some(1),
        // Long enough that the 8 frames submitted together leave as one batch.
        max_delay_us: 200_000,
        // The frames are submitted in one burst on purpose, more than the
        // latency budget would queue: this test is about batching.
        max_queue_wait_ms: 0,
        ..PipelineConfig::default()
    };
    let (pipeline, rt) = start(&config);
    let tenant = pipeline.tenant("test", 1);
    let receivers: Vec<_> = PHOTOS
        .iter()
        .map(|p| pipeline.submit(&tenant, frame(p), Instant::now()).unwrap())
        .collect();
    let results: Vec<FrameResult> = rt.block_on(async {
        let mut out = Vec::new();
        for r in receivers {
            out.push(r.await.unwrap().unwrap());
        }
        out
    });
    pipeline.shutdown();
    let largest_batch = results.iter().map(|r| r.batch_size).max().unwrap();
    (results, largest_batch)
}

#[test]
fn pipeline_batch_of_eight_equals_eight_single_runs() {
    let (single, one) = run_pipeline(1);
    let (batched, largest) = run_pipeline(8);
    assert_eq!(one, 1);
    // The first frame leaves at once (the worker is idle); the rest batch up.
    assert!(
        largest >= 4,
        "frames were not batched: largest batch {largest}"
    );
    for (i, (a, b)) in single.iter().zip(&batched).enumerate() {
        assert_eq!(
            a.detections.len(),
            b.detections.len(),
            "frame {i} ({})",
            PHOTOS[i]
        );
        for (x, y) in a.detections.iter().zip(&b.detections) {
            assert_eq!(x.class_id, y.class_id);
            assert!((x.score - y.score).abs() < 1e-4);
            for (p, q) in [(x.x1, y.x1), (x.y1, y.y1), (x.x2, y.x2), (x.y2, y.y2)] {
                assert!((p - q).abs() < 0.05, "frame {i}: {x:?} vs {y:?}");
            }
        }
    }
}

/// Runs the photos one at a time (each answered before the next is sent)
/// through two workers; returns the answers and the frames run solo.
fn run_one_at_a_time(solo_threads: usize) -> (Vec<FrameResult>, u64) {
    let config = PipelineConfig {
        workers: Some(2),
        solo_threads: Some(solo_threads),
        ..PipelineConfig::default()
    };
    let (pipeline, rt) = start(&config);
    assert_eq!(pipeline.has_solo(), solo_threads > 1);
    let tenant = pipeline.tenant("test", 1);
    let results = rt.block_on(async {
        let mut out = Vec::new();
        for p in PHOTOS {
            let rx = pipeline.submit(&tenant, frame(p), Instant::now()).unwrap();
            out.push(rx.await.unwrap().unwrap());
        }
        out
    });
    let solo = pipeline.solo_frames();
    pipeline.shutdown();
    (results, solo)
}

#[test]
fn lone_frames_run_solo_with_the_same_answers() {
    let (plain, none) = run_one_at_a_time(0);
    let (solo, ran_solo) = run_one_at_a_time(2);
    assert_eq!(none, 0, "solo_threads = 0 must not run anything solo");
    // Every frame arrived while both workers were idle.
    assert_eq!(ran_solo, PHOTOS.len() as u64);
    for (i, (a, b)) in plain.iter().zip(&solo).enumerate() {
        assert_eq!(
            a.detections.len(),
            b.detections.len(),
            "frame {i} ({})",
            PHOTOS[i]
        );
        for (x, y) in a.detections.iter().zip(&b.detections) {
            assert_eq!(x.class_id, y.class_id);
            assert!(
                (x.score - y.score).abs() < 1e-4,
                "frame {i}: {x:?} vs {y:?}"
            );
            for (p, q) in [(x.x1, y.x1), (x.y1, y.y1), (x.x2, y.x2), (x.y2, y.y2)] {
                assert!((p - q).abs() < 0.05, "frame {i}: {x:?} vs {y:?}");
            }
        }
    }
}

#[test]
fn a_backlog_runs_side_by_side_not_solo() {
    let config = PipelineConfig {
        workers: Some(2),
        solo_threads: Some(2),
        max_batch: Some(1),
        // The 16 frames are queued at once on purpose.
        max_queue_wait_ms: 0,
        ..PipelineConfig::default()
    };
    let (pipeline, rt) = start(&config);
    let tenant = pipeline.tenant("test", 1);
    // 16 frames at once: at most the first runs solo (it may meet idle
    // workers alone) and the last (both workers may finish together with
    // only it left); every other one finds a backlog and a worker session.
    let receivers: Vec<_> = PHOTOS
        .iter()
        .chain(PHOTOS.iter())
        .map(|p| pipeline.submit(&tenant, frame(p), Instant::now()).unwrap())
        .collect();
    rt.block_on(async {
        for r in receivers {
            r.await.unwrap().unwrap();
        }
    });
    assert!(
        pipeline.solo_frames() <= 2,
        "{} frames of a backlog ran solo",
        pipeline.solo_frames()
    );
    pipeline.shutdown();
}
