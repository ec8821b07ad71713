//! Times the preprocessing kernels against the card's device-to-device copy
//! bandwidth and prints a table last.
//!
//! `gpu-bench [--iters N] [--warmup N] [--allow-skip]`
//!
//! Method: every number is the median of `--iters` timed runs after
//! `--warmup` untimed ones, each run bracketed by two CUDA events recorded on
//! the stream; runs are enqueued back to back so the events measure GPU time,
//! not host launch gaps. Inputs are random bytes (never zeros), two input sets
//! are rotated, and every buffer is far larger than L2.
//!
//! Bytes: "counted" = every source frame's bytes once + the output bytes
//! (the counting); "touched" = the source rows a bilinear sampler
//! must fetch (two rows per output row, whole rows, since at these
//! downscales every 32-byte sector of such a row is hit) + the output bytes,
//! which is what DRAM really has to move. Percentages are of the measured
//! D2D copy bandwidth (bytes read + bytes written over time).

use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{
    result as dres, sys, CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtr, DevicePtrMut,
};
use framegate_cuda::{
    cuda_available, nvrtc_version, taps, DeviceFrame, FrameRef, GpuPreprocessor, OutputDType,
    PixelFormat, Placement, PreprocessSpec, ResizeMode,
};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

struct Args {
    iters: usize,
    warmup: usize,
    allow_skip: bool,
}

fn args() -> Args {
    let mut a = Args {
        iters: 50,
        warmup: 10,
        allow_skip: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--iters" => a.iters = it.next().and_then(|v| v.parse().ok()).expect("--iters N"),
            "--warmup" => a.warmup = it.next().and_then(|v| v.parse().ok()).expect("--warmup N"),
            "--allow-skip" => a.allow_skip = true,
            "-h" | "--help" => {
                println!("gpu-bench [--iters N] [--warmup N] [--allow-skip]");
                std::process::exit(0);
            }
            other => panic!("unknown argument {other}"),
        }
    }
    a
}

/// xorshift64*: fast random bytes without a dependency.
fn fill_random(buf: &mut [u8], mut seed: u64) {
    for chunk in buf.chunks_mut(8) {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        let v = seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

#[derive(Clone, Copy)]
struct Stats {
    median: f64,
    min: f64,
    max: f64,
}

/// Times `f` with CUDA events on `stream`: `warmup` untimed runs, then
/// `iters` runs each between two events, all enqueued before one sync.
fn time_gpu(
    ctx: &Arc<CudaContext>,
    stream: &Arc<CudaStream>,
    warmup: usize,
    iters: usize,
    mut f: impl FnMut(usize) -> Res<()>,
) -> Res<Stats> {
    for i in 0..warmup {
        f(i)?;
    }
    stream.synchronize()?;
    let ev = |_| ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT));
    let starts: Vec<CudaEvent> = (0..iters).map(ev).collect::<Result<_, _>>()?;
    let ends: Vec<CudaEvent> = (0..iters).map(ev).collect::<Result<_, _>>()?;
    for i in 0..iters {
        starts[i].record(stream)?;
        f(i)?;
        ends[i].record(stream)?;
    }
    stream.synchronize()?;
    let mut ms: Vec<f64> = Vec::with_capacity(iters);
    for i in 0..iters {
        ms.push(starts[i].elapsed_ms(&ends[i])? as f64);
    }
    ms.sort_by(f64::total_cmp);
    Ok(Stats {
        median: ms[ms.len() / 2],
        min: ms[0],
        max: ms[ms.len() - 1],
    })
}

struct Case {
    name: &'static str,
    frames: Vec<(u32, u32, PixelFormat)>,
    spec: PreprocessSpec,
    target: bool,
}

fn cases() -> Vec<Case> {
    use OutputDType::{F16, F32};
    use PixelFormat::{Bgr8, Nv12, Rgb8};
    let hd = |f| vec![(1920u32, 1080u32, f); 32];
    let stretch = |w, h, dtype| PreprocessSpec {
        resize: ResizeMode::Stretch,
        ..PreprocessSpec::yolo(w, h, dtype)
    };
    let mixed: Vec<(u32, u32, PixelFormat)> = (0..32)
        .map(|i| {
            [
                (640, 480, Rgb8),
                (1280, 720, Nv12),
                (1920, 1080, Bgr8),
                (641, 479, Nv12),
            ][i % 4]
        })
        .collect();
    vec![
        Case {
            name: "letterbox RGB8",
            frames: hd(Rgb8),
            spec: PreprocessSpec::yolo(416, 416, F32),
            target: true,
        },
        Case {
            name: "letterbox RGB8",
            frames: hd(Rgb8),
            spec: PreprocessSpec::yolo(416, 416, F16),
            target: true,
        },
        Case {
            name: "letterbox NV12",
            frames: hd(Nv12),
            spec: PreprocessSpec::yolo(416, 416, F16),
            target: false,
        },
        Case {
            name: "stretch BGR8",
            frames: hd(Bgr8),
            spec: stretch(640, 640, F32),
            target: false,
        },
        Case {
            name: "letterbox mixed",
            frames: mixed,
            spec: PreprocessSpec::yolo(416, 416, F16),
            target: false,
        },
    ]
}

/// Source bytes a bilinear sampler must fetch for one frame (whole rows).
fn touched_bytes(w: u32, h: u32, f: PixelFormat, spec: &PreprocessSpec) -> usize {
    let p = Placement::new(w, h, spec);
    let mut rows: Vec<usize> = taps(p.height, p.scale_y, h)
        .iter()
        .flat_map(|&(a, b, _)| [a, b])
        .collect();
    rows.sort_unstable();
    rows.dedup();
    match f {
        PixelFormat::Rgb8 | PixelFormat::Bgr8 => rows.len() * 3 * w as usize,
        PixelFormat::Nv12 => {
            let mut uv: Vec<usize> = rows.iter().map(|r| r / 2).collect();
            uv.dedup();
            rows.len() * w as usize + uv.len() * f.min_stride(w)
        }
    }
}

struct Row {
    kernel: String,
    batch: usize,
    sizes: String,
    stats: Stats,
    counted: usize,
    touched: usize,
}

fn main() {
    let a = args();
    if let Err(e) = run(&a) {
        eprintln!("gpu-bench failed: {e}");
        std::process::exit(1);
    }
}

fn run(a: &Args) -> Res<()> {
    let devices = match cuda_available() {
        Ok(n) => n,
        Err(e) if e.is_unavailable() => {
            println!("SKIPPED: no CUDA device ({e})");
            std::process::exit(if a.allow_skip { 0 } else { 2 });
        }
        Err(e) => return Err(e.into()),
    };
    let (nv_major, nv_minor) = nvrtc_version()?;
    let mut driver = 0;
    // SAFETY: out-parameter; the driver is loaded (cuda_available).
    unsafe { sys::cuDriverGetVersion(&mut driver) }.result()?;
    let ctx = CudaContext::new(0)?;
    let name = ctx.name()?;
    let (cc_major, cc_minor) = ctx.compute_capability()?;
    println!(
        "device 0 of {devices}: {name} (sm_{cc_major}{cc_minor}), driver CUDA {}.{}, NVRTC {nv_major}.{nv_minor}",
        driver / 1000,
        driver % 1000 / 10
    );
    let stream = ctx.new_stream()?;

    // 1. Device-to-device copy bandwidth: 1 GiB, bytes read + written.
    let copy_bytes = 1usize << 30;
    let d2d = {
        let mut src: CudaSlice<u8> = unsafe { stream.alloc(copy_bytes) }?;
        let mut dst: CudaSlice<u8> = unsafe { stream.alloc(copy_bytes) }?;
        {
            let (p, _s) = src.device_ptr_mut(&stream);
            // SAFETY: inside the buffer.
            unsafe { dres::memset_d8_async(p, 0x5a, copy_bytes, stream.cu_stream()) }?;
        }
        let stats = time_gpu(&ctx, &stream, a.warmup, a.iters, |_| {
            let (s, _a) = src.device_ptr(&stream);
            let (d, _b) = dst.device_ptr_mut(&stream);
            // SAFETY: two distinct 1 GiB device buffers.
            unsafe { dres::memcpy_dtod_async(d, s, copy_bytes, stream.cu_stream()) }?;
            Ok(())
        })?;
        drop((src, dst));
        stats
    };
    let d2d_gbs = 2.0 * copy_bytes as f64 / (d2d.median * 1e-3) / 1e9;
    println!(
        "D2D copy 1 GiB: median {:.3} ms (min {:.3}, max {:.3}) -> {d2d_gbs:.0} GB/s (read + write)",
        d2d.median, d2d.min, d2d.max
    );

    // 2. The kernels, on frames already on the device.
    let mut rows = Vec::new();
    let mut regs_printed = false;
    for (ci, case) in cases().iter().enumerate() {
        let n = case.frames.len();
        let mut pre = GpuPreprocessor::new(0, case.spec, n)?;
        if !regs_printed {
            let [r32, r16] = pre.kernel_registers()?;
            println!(
                "kernels: {:?}, registers/thread f32 {r32}, f16 {r16}",
                pre.arch()
            );
            regs_printed = true;
        }
        let mut layout = Vec::with_capacity(n);
        let mut off = 0usize;
        for &(w, h, f) in &case.frames {
            layout.push(DeviceFrame::packed(off, w, h, f));
            off += f.frame_len(w, h, f.min_stride(w)).next_multiple_of(256);
        }
        let mut host = vec![0u8; off];
        let mut sets = Vec::new();
        for s in 0..2u64 {
            fill_random(&mut host, 0x9e37_79b9_7f4a_7c15 ^ (ci as u64 * 7 + s + 1));
            sets.push(pre.stream().clone_htod(&host)?);
        }
        let pstream = pre.stream().clone();
        let stats = time_gpu(&ctx, &pstream, a.warmup, a.iters, |i| {
            pre.run_device(&sets[i % 2].slice(..), &layout)?;
            Ok(())
        })?;
        let src_bytes: usize = case
            .frames
            .iter()
            .map(|&(w, h, f)| f.frame_len(w, h, f.min_stride(w)))
            .sum();
        let touched_src: usize = case
            .frames
            .iter()
            .map(|&(w, h, f)| touched_bytes(w, h, f, &case.spec))
            .sum();
        let out_bytes = n * case.spec.image_len() * case.spec.dtype.size();
        let mut sizes: Vec<String> = case
            .frames
            .iter()
            .map(|&(w, h, _)| format!("{w}x{h}"))
            .collect();
        sizes.sort();
        sizes.dedup();
        let row = Row {
            kernel: format!("{} -> NCHW {}", case.name, case.spec.dtype),
            batch: n,
            sizes: format!(
                "{} -> {}x{}",
                sizes.join("/"),
                case.spec.out_width,
                case.spec.out_height
            ),
            stats,
            counted: src_bytes + out_bytes,
            touched: touched_src + out_bytes,
        };
        println!(
            "{} batch {} {}: median {:.4} ms (min {:.4}, max {:.4}); source {:.1} MB, touched {:.1} MB, output {:.1} MB",
            row.kernel,
            n,
            row.sizes,
            stats.median,
            stats.min,
            stats.max,
            src_bytes as f64 / 1e6,
            touched_src as f64 / 1e6,
            out_bytes as f64 / 1e6
        );
        rows.push((row, case.target));
        drop(sets);
    }

    // 3. End to end from host memory: pinned staging + PCIe upload + kernel.
    let e2e = {
        let spec = PreprocessSpec::yolo(416, 416, OutputDType::F16);
        let mut pre = GpuPreprocessor::new(0, spec, 32)?;
        let mut data = vec![0u8; 1920 * 1080 * 3];
        fill_random(&mut data, 42);
        let frames = vec![FrameRef::rgb8(&data, 1920, 1080); 32];
        let mut ms = Vec::new();
        for i in 0..(3 + 10) {
            let t = Instant::now();
            pre.run(&frames)?;
            pre.synchronize()?;
            if i >= 3 {
                ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        ms.sort_by(f64::total_cmp);
        ms[ms.len() / 2]
    };
    let e2e_src = 32.0 * 1920.0 * 1080.0 * 3.0;
    println!(
        "end to end from host (32 x 1920x1080 RGB8 -> 416x416 f16, memcpy into pinned staging + H2D + kernel, \
         wall clock): median {e2e:.2} ms = {:.1} GB/s of source frames",
        e2e_src / (e2e * 1e-3) / 1e9
    );

    // 4. The table, last.
    println!();
    println!("Device: {name} (sm_{cc_major}{cc_minor}), driver CUDA {}.{}, NVRTC {nv_major}.{nv_minor}; median of {} runs after {} warm-up", driver / 1000, driver % 1000 / 10, a.iters, a.warmup);
    println!("D2D copy bandwidth (1 GiB cuMemcpyDtoD, read + write): {d2d_gbs:.0} GB/s");
    println!();
    println!("| kernel | batch | sizes | median ms | counted MB (src + out) | GB/s | % of D2D | touched MB | GB/s touched | % of D2D touched |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| D2D copy | - | 1 GiB | {:.4} | {:.1} | {d2d_gbs:.0} | 100% | {:.1} | {d2d_gbs:.0} | 100% |",
        d2d.median,
        2.0 * copy_bytes as f64 / 1e6,
        2.0 * copy_bytes as f64 / 1e6
    );
    let mut target_ok = true;
    for (r, target) in &rows {
        let s = r.stats.median * 1e-3;
        let gbs = r.counted as f64 / s / 1e9;
        let gbs_t = r.touched as f64 / s / 1e9;
        let pct = 100.0 * gbs / d2d_gbs;
        if *target && pct < 70.0 {
            target_ok = false;
        }
        println!(
            "| {}{} | {} | {} | {:.4} | {:.1} | {gbs:.0} | {pct:.0}% | {:.1} | {gbs_t:.0} | {:.0}% |",
            r.kernel,
            if *target { " (target)" } else { "" },
            r.batch,
            r.sizes,
            r.stats.median,
            r.counted as f64 / 1e6,
            r.touched as f64 / 1e6,
            100.0 * gbs_t / d2d_gbs
        );
    }
    println!();
    println!(
        "target (letterbox+normalise+NCHW, 32 x 1920x1080 RGB8 -> 416x416, >= 70% of D2D, counted bytes): {}",
        if target_ok { "MET" } else { "NOT MET" }
    );
    Ok(())
}
