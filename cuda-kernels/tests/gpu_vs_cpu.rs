//! Compares the GPU kernels with the CPU reference on random frames of odd
//! sizes, every format, both resize modes, both channel orders and both
//! output types, in mixed batches (one launch each). The output buffer is
//! poisoned with NaN first, so an unwritten element fails.
//!
//! Without a usable GPU these tests print `SKIPPED: no CUDA device (...)`
//! and pass; with `FRAMEGATE_REQUIRE_GPU=1` (set by gpu-check.sh) they fail
//! instead.

use framegate_cuda::{
    preprocess_cpu_into, ChannelOrder, DeviceFrame, FrameRef, GpuPreprocessor, InputError, OutElem,
    OutputDType, PixelFormat, PreprocessSpec, ResizeMode,
};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn require_gpu() -> bool {
    std::env::var_os("FRAMEGATE_REQUIRE_GPU").is_some_and(|v| v == "1")
}

fn gpu(spec: PreprocessSpec, max_batch: usize) -> Option<GpuPreprocessor> {
    match GpuPreprocessor::new(0, spec, max_batch) {
        Ok(p) => Some(p),
        Err(e) if e.is_unavailable() && !require_gpu() => {
            println!("SKIPPED: no CUDA device ({e})");
            None
        }
        Err(e) => panic!("could not start the GPU preprocessor: {e}"),
    }
}

fn rng() -> StdRng {
    let seed: u64 = std::env::var("FRAMEGATE_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    println!("seed {seed} (set FRAMEGATE_TEST_SEED to repeat)");
    StdRng::seed_from_u64(seed)
}

struct Owned {
    data: Vec<u8>,
    width: u32,
    height: u32,
    stride: usize,
    format: PixelFormat,
}

impl Owned {
    fn random(rng: &mut StdRng, width: u32, height: u32, format: PixelFormat) -> Self {
        // Sometimes padded rows, as decoders and cameras produce.
        let pad = if rng.gen_bool(0.5) {
            rng.gen_range(1..40)
        } else {
            0
        };
        let stride = format.min_stride(width) + pad;
        let len = format.frame_len(width, height, stride) + rng.gen_range(0..16);
        let mut data = vec![0u8; len];
        rng.fill(&mut data[..]);
        Owned {
            data,
            width,
            height,
            stride,
            format,
        }
    }

    fn frame(&self) -> FrameRef<'_> {
        FrameRef {
            data: &self.data,
            width: self.width,
            height: self.height,
            stride: self.stride,
            format: self.format,
        }
    }
}

const SIZES: [(u32, u32); 5] = [(1, 1), (17, 9), (2, 3), (641, 479), (1920, 1080)];
const FORMATS: [PixelFormat; 3] = [PixelFormat::Rgb8, PixelFormat::Bgr8, PixelFormat::Nv12];

fn mixed_batch(rng: &mut StdRng) -> Vec<Owned> {
    let mut v = Vec::new();
    for &(w, h) in &SIZES {
        for &f in &FORMATS {
            v.push(Owned::random(rng, w, h, f));
        }
    }
    // Shuffle so that formats and sizes interleave in the launch.
    for i in (1..v.len()).rev() {
        let j = rng.gen_range(0..=i);
        v.swap(i, j);
    }
    v
}

fn specs(rng: &mut StdRng, dtype: OutputDType) -> Vec<PreprocessSpec> {
    let mut out = Vec::new();
    for (w, h) in [(416u32, 416u32), (97, 61)] {
        for resize in [
            ResizeMode::Stretch,
            ResizeMode::Letterbox {
                fill: [rng.gen(), rng.gen(), rng.gen()],
            },
        ] {
            for channel_order in [ChannelOrder::Rgb, ChannelOrder::Bgr] {
                out.push(PreprocessSpec {
                    out_width: w,
                    out_height: h,
                    resize,
                    channel_order,
                    mean: [
                        rng.gen_range(0.0..0.6),
                        rng.gen_range(0.0..0.6),
                        rng.gen_range(0.0..0.6),
                    ],
                    std: [
                        rng.gen_range(0.2..1.0),
                        rng.gen_range(0.2..1.0),
                        rng.gen_range(0.2..1.0),
                    ],
                    dtype,
                });
            }
        }
    }
    out
}

trait ToF32: OutElem + PartialEq {
    fn to_f32(self) -> f32;
    fn nan() -> Self;
}
impl ToF32 for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn nan() -> Self {
        f32::NAN
    }
}
impl ToF32 for half::f16 {
    fn to_f32(self) -> f32 {
        half::f16::to_f32(self)
    }
    fn nan() -> Self {
        half::f16::NAN
    }
}

/// Max abs error, panicking on any non-finite GPU element (unwritten).
fn compare<T: ToF32>(gpu: &[T], cpu: &[T], what: &str) -> f32 {
    assert_eq!(gpu.len(), cpu.len());
    let mut max = 0.0f32;
    let mut worst = 0;
    for (i, (g, c)) in gpu.iter().zip(cpu).enumerate() {
        let (g, c) = (g.to_f32(), c.to_f32());
        assert!(
            g.is_finite(),
            "{what}: element {i} not written (or not finite): {g}"
        );
        let d = (g - c).abs();
        if d > max {
            max = d;
            worst = i;
        }
    }
    println!("{what}: max abs error {max:.3e} (element {worst})");
    max
}

fn check_dtype<T: ToF32>(dtype: OutputDType, tol: f32) {
    let mut rng = rng();
    let frames = mixed_batch(&mut rng);
    let refs: Vec<FrameRef<'_>> = frames.iter().map(Owned::frame).collect();
    for spec in specs(&mut rng, dtype) {
        let Some(mut pre) = gpu(spec, refs.len()) else {
            return;
        };
        pre.poison_output().unwrap();
        let mut out = vec![T::nan(); refs.len() * spec.image_len()];
        pre.run_to_host(&refs, &mut out).unwrap();
        let mut want = vec![T::nan(); out.len()];
        preprocess_cpu_into(&refs, &spec, &mut want).unwrap();
        let what = format!(
            "{dtype} {}x{} {:?} {:?}",
            spec.out_width, spec.out_height, spec.resize, spec.channel_order
        );
        let err = compare(&out, &want, &what);
        assert!(err <= tol, "{what}: max abs error {err} > {tol}");
    }
}

#[test]
fn gpu_matches_cpu_f32() {
    check_dtype::<f32>(OutputDType::F32, 1e-3);
}

#[test]
fn gpu_matches_cpu_f16() {
    check_dtype::<half::f16>(OutputDType::F16, 1e-2);
}

#[test]
fn device_frames_match_cpu() {
    let mut rng = rng();
    let frames = mixed_batch(&mut rng);
    let spec = PreprocessSpec::yolo(320, 192, OutputDType::F32);
    let Some(mut pre) = gpu(spec, frames.len()) else {
        return;
    };
    // Pack the frames into one device buffer at odd offsets.
    let mut packed = Vec::new();
    let mut dframes = Vec::new();
    for f in &frames {
        let off = packed.len() + 3;
        packed.resize(off, 0xEE);
        packed.extend_from_slice(&f.data);
        dframes.push(DeviceFrame {
            offset: off,
            width: f.width,
            height: f.height,
            stride: f.stride,
            format: f.format,
        });
    }
    let dev = pre.stream().clone_htod(&packed).unwrap();
    pre.poison_output().unwrap();
    let mut out = vec![f32::NAN; frames.len() * spec.image_len()];
    pre.run_device_to_host(&dev.slice(..), &dframes, &mut out)
        .unwrap();
    let refs: Vec<FrameRef<'_>> = frames.iter().map(Owned::frame).collect();
    let mut want = vec![0.0f32; out.len()];
    preprocess_cpu_into(&refs, &spec, &mut want).unwrap();
    let err = compare(&out, &want, "device frames");
    assert!(err <= 1e-3);
    // A frame past the end of the buffer is refused.
    let mut bad = dframes.clone();
    bad[0].offset = packed.len();
    let e = pre.run_device(&dev.slice(..), &bad).unwrap_err();
    assert!(
        matches!(
            e,
            framegate_cuda::CudaError::Input(InputError::DeviceBufferShort { .. })
        ),
        "{e}"
    );
}

#[test]
fn repeated_batches_reuse_and_grow_buffers() {
    let mut rng = rng();
    let spec = PreprocessSpec {
        mean: [0.485, 0.456, 0.406],
        std: [0.229, 0.224, 0.225],
        ..PreprocessSpec::yolo(160, 96, OutputDType::F16)
    };
    let Some(mut pre) = gpu(spec, 8) else { return };
    for n in [3usize, 1, 8, 2, 0, 5] {
        let frames: Vec<Owned> = (0..n)
            .map(|_| {
                let (w, h) = (rng.gen_range(1..900), rng.gen_range(1..700));
                let format = FORMATS[rng.gen_range(0..3)];
                Owned::random(&mut rng, w, h, format)
            })
            .collect();
        let refs: Vec<FrameRef<'_>> = frames.iter().map(Owned::frame).collect();
        pre.poison_output().unwrap();
        let mut out = vec![half::f16::NAN; n * spec.image_len()];
        pre.run_to_host(&refs, &mut out).unwrap();
        let mut want = vec![half::f16::NAN; out.len()];
        preprocess_cpu_into(&refs, &spec, &mut want).unwrap();
        let err = compare(&out, &want, &format!("batch of {n}"));
        assert!(err <= 1e-2);
    }
    let e = pre
        .run(&vec![FrameRef::rgb8(&[0, 0, 0], 1, 1); 9])
        .unwrap_err();
    assert!(
        matches!(
            e,
            framegate_cuda::CudaError::Input(InputError::BatchTooLarge { n: 9, max: 8 })
        ),
        "{e}"
    );
    let mut wrong = vec![0.0f32; spec.image_len()];
    let e = pre
        .run_to_host(&[FrameRef::rgb8(&[0, 0, 0], 1, 1)], &mut wrong)
        .unwrap_err();
    assert!(
        matches!(
            e,
            framegate_cuda::CudaError::Input(InputError::DType { .. })
        ),
        "{e}"
    );
}

#[test]
fn input_buffers_grown_by_large_frames_are_given_back() {
    use framegate_cuda::SHRINK_AFTER_BATCHES;
    let mut rng = rng();
    let spec = PreprocessSpec::yolo(96, 96, OutputDType::F32);
    let Some(mut pre) = gpu(spec, 4) else { return };
    // A keep size the test can pass with small frames: 2 MiB.
    pre.set_input_keep(2 << 20);
    let run = |pre: &mut GpuPreprocessor, frames: &[Owned], what: &str| {
        let refs: Vec<FrameRef<'_>> = frames.iter().map(Owned::frame).collect();
        pre.poison_output().unwrap();
        let mut out = vec![f32::NAN; frames.len() * spec.image_len()];
        pre.run_to_host(&refs, &mut out).unwrap();
        let mut want = vec![f32::NAN; out.len()];
        preprocess_cpu_into(&refs, &spec, &mut want).unwrap();
        assert!(compare(&out, &want, what) <= 1e-3);
    };
    // 4 × 1920×1080 RGB8: about 24 MiB of input.
    let big: Vec<Owned> = (0..4)
        .map(|_| Owned::random(&mut rng, 1920, 1080, PixelFormat::Rgb8))
        .collect();
    run(&mut pre, &big, "large batch");
    let grown = pre.input_capacity();
    assert!(grown >= 4 * 1920 * 1080 * 3, "{grown}");
    let small = vec![Owned::random(&mut rng, 320, 240, PixelFormat::Bgr8)];
    // One batch short of the count, the buffers stay (a burst that comes
    // back soon does not pay for a new allocation) ...
    for i in 0..SHRINK_AFTER_BATCHES - 1 {
        run(&mut pre, &small, &format!("small batch {i}"));
        assert_eq!(pre.input_capacity(), grown);
    }
    // ... a large batch in between starts the count again ...
    run(&mut pre, &big[..2], "two large frames");
    for i in 0..SHRINK_AFTER_BATCHES - 1 {
        run(&mut pre, &small, &format!("small batch {i} after"));
        assert_eq!(pre.input_capacity(), grown);
    }
    // ... and the count's last small batch runs on buffers its own size.
    run(&mut pre, &small, "the batch that shrinks");
    let shrunk = pre.input_capacity();
    assert!(shrunk <= 1 << 20, "{shrunk} after {grown}");
    println!("    input buffers: {grown} bytes after the large batch, {shrunk} after {SHRINK_AFTER_BATCHES} small ones");
    // Large frames again: they grow back and are right.
    run(&mut pre, &big, "large batch again");
    assert!(pre.input_capacity() >= grown);
    // Buffers within the keep size never shrink.
    pre.set_input_keep(usize::MAX);
    for i in 0..SHRINK_AFTER_BATCHES + 1 {
        run(&mut pre, &small, &format!("kept {i}"));
    }
    assert!(pre.input_capacity() >= grown);
}

#[test]
fn device_output_is_usable_in_stream_order() {
    let mut rng = rng();
    let spec = PreprocessSpec::yolo(64, 64, OutputDType::F32);
    let Some(mut pre) = gpu(spec, 2) else { return };
    let f = Owned::random(&mut rng, 300, 200, PixelFormat::Nv12);
    let stream = pre.stream().clone();
    let host = {
        let out = pre.run(&[f.frame()]).unwrap();
        assert_eq!(out.shape(), [1, 3, 64, 64]);
        assert_ne!(out.device_ptr(), 0);
        stream.clone_dtoh(out.bytes()).unwrap()
    };
    stream.synchronize().unwrap();
    let got: Vec<f32> = host
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let mut want = vec![0.0f32; spec.image_len()];
    preprocess_cpu_into(&[f.frame()], &spec, &mut want).unwrap();
    assert!(compare(&got, &want, "device output") <= 1e-3);
}
