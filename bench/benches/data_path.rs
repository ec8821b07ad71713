//! Micro-benchmarks of the data path, one group per stage. Each group's
//! first comment line says what the numbers show.
#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use framegate::backend::spec::LoadedModel;
use framegate::pipeline::batcher::BatchPolicy;
use framegate::pipeline::decode::{decode_rgb, probe, FrameLimits, RgbImage};
use framegate::pipeline::fair::{FairAdmission, FairScheduler};
use framegate::pipeline::postprocess::{nms, RawDetection};
use framegate::pipeline::preprocess::Preprocessor;
use framegate::pipeline::queue::IngressQueue;
use framegate_protocol::{
    ClientMessage, Codec, DecodeLimits, Detection, Detections, Frame, ServerMessage, StageTimings,
};

fn dog() -> Bytes {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../server/tests/data/dog.jpg");
    Bytes::from(std::fs::read(p).expect("dog.jpg"))
}

const LIMITS: FrameLimits = FrameLimits {
    max_pixels: 40_000_000,
    max_side: 16_384,
};

/// Shows: the protocol's cost per message (FlatBuffers build + verify) is
/// microseconds against milliseconds of image work; the 164 KB payload copy
/// dominates a Frame's encode.
fn protocol(c: &mut Criterion) {
    let mut g = c.benchmark_group("protocol");
    let frame = ClientMessage::Frame(Frame {
        seq: 42,
        capture_ts_us: 1,
        codec: Codec::Jpeg,
        width: 0,
        height: 0,
        deadline_us: 0,
        payload: dog(),
    });
    let encoded = frame.encode();
    let limits = DecodeLimits::default();
    g.throughput(Throughput::Bytes(encoded.len() as u64));
    g.bench_function("frame_encode_164KB", |b| {
        b.iter(|| black_box(&frame).encode())
    });
    g.bench_function("frame_decode_164KB", |b| {
        b.iter(|| ClientMessage::decode(black_box(&encoded), &limits).unwrap())
    });
    // What the WebSocket reader does to every client frame before decoding
    // it (RFC 6455 masking), on a ~51 KB gateway-only frame.
    let mut masked = vec![0x5au8; 51_200];
    g.throughput(Throughput::Bytes(masked.len() as u64));
    g.bench_function("ws_unmask_51KB", |b| {
        b.iter(|| framegate::transport::wsframe::apply_mask(black_box(&mut masked), [1, 2, 3, 4]))
    });
    let det = ServerMessage::Detections(Detections {
        seq: 42,
        model: "nanodet-g".into(),
        detections: (0..10)
            .map(|i| Detection {
                class_id: i,
                label: "bicycle".into(),
                score: 0.5,
                x1: 1.0,
                y1: 2.0,
                x2: 3.0,
                y2: 4.0,
            })
            .collect(),
        timings: StageTimings::default(),
        ..Default::default()
    });
    let det_bytes = det.encode();
    g.throughput(Throughput::Elements(1));
    g.bench_function("detections10_encode", |b| {
        b.iter(|| black_box(&det).encode())
    });
    g.bench_function("detections10_decode", |b| {
        b.iter(|| ServerMessage::decode(black_box(&det_bytes), &limits).unwrap())
    });
    g.finish();
}

/// Shows: a push + pop through the lock-free ingress queue costs tens of
/// nanoseconds uncontended, and stays far below a frame's microseconds of
/// transport work with two producers racing a consumer — the queue is never
/// what limits the gateway.
fn queue(c: &mut Criterion) {
    let mut g = c.benchmark_group("ingress_queue");
    g.throughput(Throughput::Elements(1));
    g.bench_function("push_pop_uncontended", |b| {
        let q = IngressQueue::new(256);
        b.iter(|| {
            q.push(black_box(1u64)).unwrap();
            black_box(q.pop())
        })
    });
    g.bench_function("push_with_2_producers_1_consumer", |b| {
        b.iter_custom(|iters| {
            let q = Arc::new(IngressQueue::new(256));
            let stop = Arc::new(AtomicBool::new(false));
            let consumer = {
                let (q, stop) = (q.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if q.pop().is_none() {
                            // Yield, not spin: three threads share two cores here.
                            std::thread::yield_now();
                        }
                    }
                })
            };
            let t = Instant::now();
            let producers: Vec<_> = (0..2)
                .map(|_| {
                    let q = q.clone();
                    std::thread::spawn(move || {
                        for i in 0..iters / 2 {
                            while q.push(i).is_err() {
                                std::thread::yield_now();
                            }
                        }
                    })
                })
                .collect();
            for p in producers {
                p.join().unwrap();
            }
            let el = t.elapsed();
            stop.store(true, Ordering::Relaxed);
            consumer.join().unwrap();
            el
        })
    });
    g.finish();
}

/// Shows: the batcher's decision is a few nanoseconds of arithmetic, so the
/// batcher thread adds nothing measurable per frame.
fn batcher(c: &mut Criterion) {
    let p = BatchPolicy {
        max_batch: 8,
        max_delay: Duration::from_millis(2),
        solo: true,
        solo_backlog: 1,
    };
    let now = Instant::now();
    c.bench_function("batcher_decide", |b| {
        b.iter(|| {
            p.decide(
                black_box(now),
                black_box(3),
                Some(black_box(now)),
                black_box(1),
                2,
            )
        })
    });
}

/// Shows: what fair sharing adds per frame on the batcher's path. Each
/// iteration moves one batch of 8 frames through admission (admit +
/// release) and the per-tenant scheduler (push + DRR pop), against the
/// plain FIFO (`VecDeque`) the batcher used before; with one tenant and
/// with 12 tenants interleaved.
fn fair_share(c: &mut Criterion) {
    let mut g = c.benchmark_group("fair_share");
    g.throughput(Throughput::Elements(8));
    let now = Instant::now();
    g.bench_function("fifo_baseline_batch8", |b| {
        let mut q = std::collections::VecDeque::with_capacity(256);
        let mut out = Vec::with_capacity(8);
        b.iter(|| {
            for i in 0..8u64 {
                q.push_back((now, black_box(i)));
            }
            out.clear();
            out.extend(q.drain(..8).map(|(_, i)| i));
            black_box(out.len())
        })
    });
    for tenants in [1usize, 12] {
        let adm = FairAdmission::new(256, 4, 64);
        let shares: Vec<_> = (0..tenants)
            .map(|t| adm.tenant(&format!("t{t}"), 1 + t as u32 % 3))
            .collect();
        let mut sched = FairScheduler::new();
        let mut out = Vec::with_capacity(8);
        let mut next = 0usize;
        g.bench_function(format!("admit_drr_batch8_{tenants}_tenants"), |b| {
            b.iter(|| {
                for i in 0..8u64 {
                    let t = next % tenants;
                    next += 1;
                    let s = &shares[t];
                    adm.try_admit(s).unwrap();
                    sched.push(s.key(), s.weight(), now, (t, black_box(i)));
                }
                out.clear();
                sched.pop_batch(8, &mut out);
                // As the batcher does: one release per run of a tenant.
                let mut i = 0;
                while i < out.len() {
                    let t = out[i].0;
                    let n = out[i..].iter().take_while(|x| x.0 == t).count();
                    adm.release_n(&shares[t], n);
                    i += n;
                }
                black_box(out.len())
            })
        });
    }
    g.finish();
}

/// Shows: decoding dog.jpg (768×576, 164 KB) is a large share of a frame's
/// non-inference cost; the figure to compare with inference (~11 ms).
fn jpeg(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    let frame = probe(None, 0, 0, dog(), &LIMITS).unwrap();
    g.throughput(Throughput::Elements(1));
    let mut out = RgbImage::default();
    g.bench_function("jpeg_dog_768x576", |b| {
        b.iter(|| decode_rgb(black_box(&frame), &mut out).unwrap())
    });
    g.bench_function("probe_header", |b| {
        b.iter(|| probe(None, 0, 0, black_box(frame.payload.clone()), &LIMITS).unwrap())
    });
    g.finish();
}

/// Shows: antialiased resize 768×576 → 416×416 fused with BGR swap,
/// mean/std and NCHW layout — the other large non-inference cost — and
/// what the SIMD path saves against the reference loops.
fn preprocess(c: &mut Criterion) {
    let model = LoadedModel::bundled().unwrap();
    let frame = probe(None, 0, 0, dog(), &LIMITS).unwrap();
    let mut img = RgbImage::default();
    decode_rgb(&frame, &mut img).unwrap();
    let mut pre = Preprocessor::default();
    let mut out = vec![0f32; 3 * 416 * 416];
    let mut g = c.benchmark_group("preprocess");
    g.throughput(Throughput::Elements(1));
    g.bench_function("resize_normalise_768x576_to_416", |b| {
        b.iter(|| pre.run(black_box(&img), &model.spec.input, &mut out))
    });
    // The reference loops (horizontal pass first, no SIMD): the "before".
    g.bench_function("resize_normalise_768x576_to_416_reference", |b| {
        b.iter(|| pre.run_reference(black_box(&img), &model.spec.input, &mut out))
    });
    let big = RgbImage {
        width: 1920,
        height: 1080,
        pixels: (0..1920 * 1080 * 3).map(|i| (i % 251) as u8).collect(),
    };
    g.bench_function("resize_normalise_1920x1080_to_416", |b| {
        b.iter(|| pre.run(black_box(&big), &model.spec.input, &mut out))
    });
    g.finish();
}

/// Shows: class-aware NMS over a realistic candidate count (a few hundred
/// boxes above the score threshold) is microseconds.
fn nms_bench(c: &mut Criterion) {
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    let cands: Vec<RawDetection> = (0..300)
        .map(|_| {
            let (x, y) = (rnd() * 380.0, rnd() * 380.0);
            RawDetection {
                class_id: (rnd() * 5.0) as u32,
                score: 0.35 + rnd() * 0.6,
                xyxy: [x, y, x + 20.0 + rnd() * 60.0, y + 20.0 + rnd() * 60.0],
            }
        })
        .collect();
    c.bench_function("nms_300_candidates", |b| {
        b.iter_batched(
            || cands.clone(),
            |v| nms(v, 0.5, 100),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, protocol, queue, batcher, fair_share, jpeg, preprocess, nms_bench);
criterion_main!(benches);
