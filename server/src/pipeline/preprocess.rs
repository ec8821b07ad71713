//! Preprocess: RGB8 frame → the model's float input, in one pass per axis.
//!
//! Resampling is separable bilinear with a triangle filter whose support
//! widens with the downscale factor (the "antialiased bilinear" of Pillow),
//! so a 1920-pixel frame shrunk to 416 averages every source pixel instead
//! of skipping most of them. Channel swap, mean/std normalisation and the
//! HWC → NCHW layout are fused into the last pass; letterbox padding is
//! written directly. Coefficient tables are cached per (source, target) size.
//!
//! Two implementations compute the same filter:
//! - the fast path (`resample_vertical_first`) runs the vertical pass first,
//!   per output row, straight from the 8-bit rows, so the costlier
//!   horizontal pass runs on output rows only; on x86-64 with AVX2 + FMA
//!   (detected at run time) both passes are explicit SIMD kernels
//!   (module `x86`), elsewhere plain loops the compiler vectorises;
//! - the reference (`resample_reference`, [`Preprocessor::run_reference`]):
//!   horizontal pass over every needed source row, then vertical. Frames
//!   narrower than the filter take it. A unit test holds the fast paths to
//!   it within 1e-4 in normalised units.

use crate::backend::spec::{ChannelOrder, InputSpec, ResizeMode};

use super::decode::RgbImage;

/// Where the frame landed inside the model input, to map boxes back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    /// Horizontal scale from frame to input pixels.
    pub scale_x: f32,
    /// Vertical scale from frame to input pixels.
    pub scale_y: f32,
    /// Left padding in input pixels.
    pub pad_left: f32,
    /// Top padding in input pixels.
    pub pad_top: f32,
    /// Frame width.
    pub frame_width: u32,
    /// Frame height.
    pub frame_height: u32,
}

impl Placement {
    /// Maps a point in input pixels back to frame pixels, clipped to the frame.
    pub fn to_frame(&self, x: f32, y: f32) -> (f32, f32) {
        let fx = ((x - self.pad_left) / self.scale_x).clamp(0.0, self.frame_width as f32);
        let fy = ((y - self.pad_top) / self.scale_y).clamp(0.0, self.frame_height as f32);
        (fx, fy)
    }
}

/// Computes where a `w`×`h` frame goes in the input.
pub fn placement(spec: &InputSpec, w: u32, h: u32) -> (Placement, u32, u32) {
    let (iw, ih) = (spec.width as f32, spec.height as f32);
    match spec.resize {
        ResizeMode::Stretch => (
            Placement {
                scale_x: iw / w as f32,
                scale_y: ih / h as f32,
                pad_left: 0.0,
                pad_top: 0.0,
                frame_width: w,
                frame_height: h,
            },
            spec.width,
            spec.height,
        ),
        ResizeMode::Letterbox => {
            let r = (iw / w as f32).min(ih / h as f32);
            let nw = ((w as f32 * r).round() as u32).clamp(1, spec.width);
            let nh = ((h as f32 * r).round() as u32).clamp(1, spec.height);
            let left = (spec.width - nw) / 2;
            let top = (spec.height - nh) / 2;
            (
                Placement {
                    scale_x: nw as f32 / w as f32,
                    scale_y: nh as f32 / h as f32,
                    pad_left: left as f32,
                    pad_top: top as f32,
                    frame_width: w,
                    frame_height: h,
                },
                nw,
                nh,
            )
        }
    }
}

/// Filter taps of one output position.
#[derive(Debug, Clone)]
struct Taps {
    start: u32,
    len: u32,
}

/// The resampling coefficients along one axis.
#[derive(Debug, Clone)]
struct AxisCoeffs {
    taps: Vec<Taps>,
    /// `ksize` weights per output position.
    weights: Vec<f32>,
    ksize: usize,
}

fn axis_coeffs(in_size: u32, out_size: u32) -> AxisCoeffs {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // the bilinear (triangle) filter has support 1
    let ksize = (support.ceil() as usize) * 2 + 1;
    let mut taps = Vec::with_capacity(out_size as usize);
    let mut weights = vec![0f32; ksize * out_size as usize];
    for xx in 0..out_size as usize {
        let center = (xx as f64 + 0.5) * scale;
        let xmin = ((center - support + 0.5).floor() as i64).max(0) as usize;
        let xmax = ((center + support + 0.5).floor() as i64).min(in_size as i64) as usize;
        let len = xmax.saturating_sub(xmin).min(ksize);
        let k = &mut weights[xx * ksize..xx * ksize + ksize];
        let mut total = 0.0f64;
        let mut raw = [0f64; 64];
        let raw = if len <= 64 {
            &mut raw[..len]
        } else {
            unreachable!("filter too wide")
        };
        for (x, w) in raw.iter_mut().enumerate() {
            let d = ((x + xmin) as f64 - center + 0.5) / filterscale;
            *w = (1.0 - d.abs()).max(0.0);
            total += *w;
        }
        for (x, w) in raw.iter().enumerate() {
            k[x] = if total > 0.0 {
                (*w / total) as f32
            } else {
                0.0
            };
        }
        taps.push(Taps {
            start: xmin as u32,
            len: len as u32,
        });
    }
    AxisCoeffs {
        taps,
        weights,
        ksize,
    }
}

/// Everything derived from one (source w, h, target w, h), built once and
/// reused while the frame size stays the same.
#[derive(Debug)]
struct Plan {
    key: (u32, u32, u32, u32),
    cx: AxisCoeffs,
    cy: AxisCoeffs,
    /// Horizontal taps padded to a fixed length; `None` when the frame is
    /// narrower than the filter (such frames take the reference path).
    fixed: Option<FixedTaps>,
    /// The AVX2 pass's weights, see [`x86::paired_weights`]; empty when the
    /// CPU lacks AVX2/FMA or `fixed` is `None`.
    #[cfg(target_arch = "x86_64")]
    paired: Vec<f32>,
}

impl Plan {
    fn new(key: (u32, u32, u32, u32)) -> Self {
        let (w, h, nw, nh) = key;
        let cx = axis_coeffs(w, nw);
        let cy = axis_coeffs(h, nh);
        let fixed = FixedTaps::new(&cx, w);
        #[cfg(target_arch = "x86_64")]
        let paired = match &fixed {
            Some(f) if x86::available() => x86::paired_weights(f),
            _ => Vec::new(),
        };
        Self {
            key,
            cx,
            cy,
            fixed,
            #[cfg(target_arch = "x86_64")]
            paired,
        }
    }
}

/// Which implementation [`Preprocessor::run_with`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// The fastest the CPU supports.
    Auto,
    /// Vertical-first in plain Rust, no CPU-specific code (what `Auto` is
    /// without AVX2; named on its own by the tests).
    #[cfg_attr(not(test), allow(dead_code))]
    Portable,
    /// The straightforward horizontal-then-vertical loops that define the
    /// results; the fast paths are tested against it.
    Reference,
}

/// Reusable preprocessing state for one worker: the cached [`Plan`] and the
/// intermediate buffers.
#[derive(Debug, Default)]
pub struct Preprocessor {
    plan: Option<Plan>,
    tmp: Vec<f32>,
    row: Vec<f32>,
}

/// Horizontal taps padded to a fixed `ksize` (zero weights outside the
/// filter, start moved left at the right edge), so the inner loop has a
/// constant length the compiler unrolls and vectorises. Padding adds exact
/// zeros, so results are bit-identical to the variable-length loop.
#[derive(Debug)]
struct FixedTaps {
    starts: Vec<u32>,
    weights: Vec<f32>,
    ksize: usize,
}

impl FixedTaps {
    fn new(c: &AxisCoeffs, in_size: u32) -> Option<Self> {
        let k = c.ksize;
        if (in_size as usize) < k {
            return None;
        }
        let starts: Vec<u32> = c
            .taps
            .iter()
            .map(|t| t.start.min(in_size - k as u32))
            .collect();
        let mut weights = vec![0f32; c.weights.len()];
        for (x, t) in c.taps.iter().enumerate() {
            let shift = (t.start - starts[x]) as usize;
            let len = t.len as usize;
            weights[x * k + shift..x * k + shift + len]
                .copy_from_slice(&c.weights[x * k..x * k + len]);
        }
        Some(Self {
            starts,
            weights,
            ksize: k,
        })
    }

    fn run(&self, row: &[f32], dst: &mut [f32]) {
        match self.ksize {
            3 => horizontal_fixed::<3>(&self.starts, &self.weights, row, dst),
            5 => horizontal_fixed::<5>(&self.starts, &self.weights, row, dst),
            7 => horizontal_fixed::<7>(&self.starts, &self.weights, row, dst),
            9 => horizontal_fixed::<9>(&self.starts, &self.weights, row, dst),
            11 => horizontal_fixed::<11>(&self.starts, &self.weights, row, dst),
            13 => horizontal_fixed::<13>(&self.starts, &self.weights, row, dst),
            k => horizontal_dyn(k, &self.starts, &self.weights, row, dst),
        }
    }
}

#[inline(always)]
fn horizontal_fixed<const K: usize>(starts: &[u32], weights: &[f32], row: &[f32], dst: &mut [f32]) {
    for ((s, k), d) in starts
        .iter()
        .zip(weights.chunks_exact(K))
        .zip(dst.chunks_exact_mut(3))
    {
        let px = &row[*s as usize * 3..][..K * 3];
        let (mut r, mut g, mut b) = (0f32, 0f32, 0f32);
        for j in 0..K {
            r += px[j * 3] * k[j];
            g += px[j * 3 + 1] * k[j];
            b += px[j * 3 + 2] * k[j];
        }
        d[0] = r;
        d[1] = g;
        d[2] = b;
    }
}

fn horizontal_dyn(k: usize, starts: &[u32], weights: &[f32], row: &[f32], dst: &mut [f32]) {
    for ((s, w), d) in starts
        .iter()
        .zip(weights.chunks_exact(k))
        .zip(dst.chunks_exact_mut(3))
    {
        let px = &row[*s as usize * 3..][..k * 3];
        let (mut r, mut g, mut b) = (0f32, 0f32, 0f32);
        for (p, w) in px.chunks_exact(3).zip(w) {
            r += p[0] * w;
            g += p[1] * w;
            b += p[2] * w;
        }
        d[0] = r;
        d[1] = g;
        d[2] = b;
    }
}

/// The unpadded loop, for frames narrower than the filter.
fn horizontal_generic(cx: &AxisCoeffs, row: &[f32], dst: &mut [f32]) {
    for (x, t) in cx.taps.iter().enumerate() {
        let k = &cx.weights[x * cx.ksize..x * cx.ksize + t.len as usize];
        let s = &row[t.start as usize * 3..(t.start + t.len) as usize * 3];
        let (mut r, mut g, mut b) = (0f32, 0f32, 0f32);
        for (px, w) in s.chunks_exact(3).zip(k) {
            r += px[0] * w;
            g += px[1] * w;
            b += px[2] * w;
        }
        dst[x * 3] = r;
        dst[x * 3 + 1] = g;
        dst[x * 3 + 2] = b;
    }
}

/// Where the resampled frame goes: the input planes' size, the letterbox
/// offset, and per output channel its source channel and affine map.
#[derive(Debug, Clone, Copy)]
struct Sink {
    iw: usize,
    ih: usize,
    left: usize,
    top: usize,
    src_ch: [usize; 3],
    mul: [f32; 3],
    add: [f32; 3],
}

impl Sink {
    /// Writes one resampled row (`nw` interleaved RGB floats) as output row
    /// `y` of the frame: normalised, in the model's channel order, NCHW.
    fn write_row(&self, y: usize, rgb: &[f32], out: &mut [f32]) {
        let nw = rgb.len() / 3;
        let oy = self.top + y;
        for c in 0..3 {
            let at = c * self.iw * self.ih + oy * self.iw + self.left;
            let sc = self.src_ch[c];
            for (o, px) in out[at..at + nw].iter_mut().zip(rgb.chunks_exact(3)) {
                *o = px[sc] * self.mul[c] + self.add[c];
            }
        }
    }
}

/// One output row of the vertical pass straight from the 8-bit pixels:
/// `dst[i] = Σ_j w[j] · src[(start + j) · stride + i]`.
fn vertical_portable(pixels: &[u8], stride: usize, start: usize, w: &[f32], dst: &mut [f32]) {
    let dst = &mut dst[..stride];
    dst.fill(0.0);
    for (j, wj) in w.iter().enumerate() {
        let src = &pixels[(start + j) * stride..][..stride];
        for (d, s) in dst.iter_mut().zip(src) {
            *d += f32::from(*s) * wj;
        }
    }
}

impl Preprocessor {
    /// Writes one frame into `out` (`3 × height × width` floats, NCHW for
    /// one batch element) and returns where it landed.
    pub fn run(&mut self, img: &RgbImage, spec: &InputSpec, out: &mut [f32]) -> Placement {
        self.run_with(img, spec, out, Path::Auto)
    }

    /// [`run`](Self::run) through the reference loops (horizontal pass
    /// first, no CPU-specific code): what the fast paths are tested
    /// against, and the "before" in the preprocess benchmark.
    pub fn run_reference(
        &mut self,
        img: &RgbImage,
        spec: &InputSpec,
        out: &mut [f32],
    ) -> Placement {
        self.run_with(img, spec, out, Path::Reference)
    }

    fn run_with(
        &mut self,
        img: &RgbImage,
        spec: &InputSpec,
        out: &mut [f32],
        path: Path,
    ) -> Placement {
        let (iw, ih) = (spec.width as usize, spec.height as usize);
        assert_eq!(out.len(), 3 * iw * ih, "output slice has the wrong size");
        assert_eq!(
            img.pixels.len(),
            img.width as usize * img.height as usize * 3,
            "pixel buffer does not match the frame size"
        );
        let (place, nw, nh) = placement(spec, img.width, img.height);
        let key = (img.width, img.height, nw, nh);
        if self.plan.as_ref().map(|p| p.key) != Some(key) {
            self.plan = Some(Plan::new(key));
        }
        let Self { plan, tmp, row } = self;
        let plan = plan.as_ref().expect("just filled");

        // Per output channel: which source channel, and the affine map.
        let src_ch = match spec.channel_order {
            ChannelOrder::Rgb => [0usize, 1, 2],
            ChannelOrder::Bgr => [2usize, 1, 0],
        };
        let mul: [f32; 3] = std::array::from_fn(|c| 1.0 / spec.std[c]);
        let add: [f32; 3] = std::array::from_fn(|c| -spec.mean[c] / spec.std[c]);
        let sink = Sink {
            iw,
            ih,
            left: place.pad_left as usize,
            top: place.pad_top as usize,
            src_ch,
            mul,
            add,
        };

        // Letterbox padding.
        if nw as usize != iw || nh as usize != ih {
            let pad = f32::from(spec.pad_value);
            for c in 0..3 {
                out[c * iw * ih..(c + 1) * iw * ih].fill(pad * mul[c] + add[c]);
            }
        }

        match (&plan.fixed, path) {
            (Some(fixed), Path::Auto | Path::Portable) => {
                resample_vertical_first(img, plan, fixed, &sink, path, tmp, row, out)
            }
            _ => resample_reference(img, plan, &sink, tmp, row, out),
        }
        place
    }
}

/// The fast paths: for each output row, the vertical pass reads the 8-bit
/// rows it needs straight into one float row (so the horizontal pass, the
/// costlier one, runs on output rows only, not on every source row), then
/// the horizontal pass writes the normalised planes. Same filter as the
/// reference, only the order of the two passes and of float additions
/// differ (≪ 1e-4 of a pixel level).
#[allow(clippy::too_many_arguments)]
fn resample_vertical_first(
    img: &RgbImage,
    plan: &Plan,
    fixed: &FixedTaps,
    sink: &Sink,
    path: Path,
    vrow: &mut Vec<f32>,
    hrow: &mut Vec<f32>,
    out: &mut [f32],
) {
    let stride = img.width as usize * 3;
    let nw = plan.cx.taps.len();
    let cy = &plan.cy;
    // One float past the last pixel: the AVX2 horizontal pass loads four
    // floats per pixel and ignores the fourth.
    vrow.clear();
    vrow.resize(stride + 1, 0.0);
    hrow.resize(nw * 3, 0.0);
    #[cfg(target_arch = "x86_64")]
    let simd = path == Path::Auto && !plan.paired.is_empty();
    #[cfg(not(target_arch = "x86_64"))]
    let simd = {
        let _ = path;
        false
    };
    for (y, t) in cy.taps.iter().enumerate() {
        let w = &cy.weights[y * cy.ksize..y * cy.ksize + t.len as usize];
        let start = t.start as usize;
        if simd {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `paired` is only non-empty when AVX2 and FMA were
            // detected at run time.
            unsafe {
                x86::vertical(&img.pixels, stride, start, w, &mut vrow[..stride]);
                x86::horizontal(fixed, &plan.paired, vrow, sink, y, out);
            }
        } else {
            vertical_portable(&img.pixels, stride, start, w, vrow);
            fixed.run(vrow, hrow);
            sink.write_row(y, hrow, out);
        }
    }
}

/// The reference: horizontal pass over every source row the vertical pass
/// needs (8-bit → float once per pixel), then the vertical pass over those
/// float rows. Also the path for frames narrower than the filter.
fn resample_reference(
    img: &RgbImage,
    plan: &Plan,
    sink: &Sink,
    tmp: &mut Vec<f32>,
    row: &mut Vec<f32>,
    out: &mut [f32],
) {
    let (cx, cy) = (&plan.cx, &plan.cy);
    let nw = cx.taps.len();
    let row_lo = cy.taps.first().map_or(0, |t| t.start as usize);
    let row_hi = cy
        .taps
        .iter()
        .map(|t| (t.start + t.len) as usize)
        .max()
        .unwrap_or(0);
    let sw = img.width as usize;
    tmp.resize((row_hi - row_lo) * nw * 3, 0.0);
    row.resize(sw * 3, 0.0);
    for y in row_lo..row_hi {
        let src = &img.pixels[y * sw * 3..(y + 1) * sw * 3];
        let dst = &mut tmp[(y - row_lo) * nw * 3..(y - row_lo + 1) * nw * 3];
        // Each source pixel feeds about two outputs: convert it once.
        for (f, b) in row.iter_mut().zip(src) {
            *f = f32::from(*b);
        }
        // Bit-identical to `horizontal_generic` (unit test), just faster.
        match &plan.fixed {
            Some(f) => f.run(row, dst),
            None => horizontal_generic(cx, row, dst),
        }
    }
    let mut acc = vec![0f32; nw * 3];
    for (y, t) in cy.taps.iter().enumerate() {
        acc.fill(0.0);
        let k = &cy.weights[y * cy.ksize..y * cy.ksize + t.len as usize];
        for (j, w) in k.iter().enumerate() {
            let r = t.start as usize + j - row_lo;
            let row = &tmp[r * nw * 3..(r + 1) * nw * 3];
            for (a, v) in acc.iter_mut().zip(row) {
                *a += v * w;
            }
        }
        sink.write_row(y, &acc, out);
    }
}

/// AVX2 + FMA kernels, chosen at run time (the build targets baseline
/// x86-64).
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{FixedTaps, Sink};

    /// Whether the CPU runs these kernels (detected once, then cached by std).
    pub(super) fn available() -> bool {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }

    /// The horizontal weights laid out for [`horizontal`]: for each group of
    /// eight outputs `x0..x0+8`, tap `j` and pair `m` (outputs `x0+m` and
    /// `x0+m+4`), eight floats: `w[x0+m][j]` four times, then
    /// `w[x0+m+4][j]` four times. Outputs past the last whole group are
    /// computed from `FixedTaps::weights` directly.
    pub(super) fn paired_weights(f: &FixedTaps) -> Vec<f32> {
        let k = f.ksize;
        let groups = f.starts.len() / 8;
        let mut v = Vec::with_capacity(groups * k * 4 * 8);
        for g in 0..groups {
            for j in 0..k {
                for m in 0..4 {
                    let lo = f.weights[(g * 8 + m) * k + j];
                    let hi = f.weights[(g * 8 + m + 4) * k + j];
                    v.extend_from_slice(&[lo, lo, lo, lo, hi, hi, hi, hi]);
                }
            }
        }
        v
    }

    /// [`super::vertical_portable`], eight bytes → eight floats → one FMA
    /// per tap, four vectors at a time.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn vertical(
        pixels: &[u8],
        stride: usize,
        start: usize,
        w: &[f32],
        dst: &mut [f32],
    ) {
        assert!(dst.len() >= stride && (start + w.len()) * stride <= pixels.len());
        let base = pixels[start * stride..].as_ptr();
        let d = dst.as_mut_ptr();
        let mut i = 0;
        // SAFETY (all loads and stores below): rows start..start+w.len()
        // lie inside `pixels` and `i + 32` (or `i + 8`) ≤ stride, checked
        // by the assert and the loop conditions; `dst` holds `stride` floats.
        let load = |p: *const u8| unsafe {
            _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p.cast())))
        };
        while i + 32 <= stride {
            let (mut a0, mut a1, mut a2, mut a3) = (
                _mm256_setzero_ps(),
                _mm256_setzero_ps(),
                _mm256_setzero_ps(),
                _mm256_setzero_ps(),
            );
            for (j, &wj) in w.iter().enumerate() {
                let wv = _mm256_set1_ps(wj);
                let p = unsafe { base.add(j * stride + i) };
                a0 = _mm256_fmadd_ps(load(p), wv, a0);
                a1 = _mm256_fmadd_ps(load(unsafe { p.add(8) }), wv, a1);
                a2 = _mm256_fmadd_ps(load(unsafe { p.add(16) }), wv, a2);
                a3 = _mm256_fmadd_ps(load(unsafe { p.add(24) }), wv, a3);
            }
            unsafe {
                _mm256_storeu_ps(d.add(i), a0);
                _mm256_storeu_ps(d.add(i + 8), a1);
                _mm256_storeu_ps(d.add(i + 16), a2);
                _mm256_storeu_ps(d.add(i + 24), a3);
            }
            i += 32;
        }
        while i + 8 <= stride {
            let mut a = _mm256_setzero_ps();
            for (j, &wj) in w.iter().enumerate() {
                let p = unsafe { base.add(j * stride + i) };
                a = _mm256_fmadd_ps(load(p), _mm256_set1_ps(wj), a);
            }
            unsafe { _mm256_storeu_ps(d.add(i), a) };
            i += 8;
        }
        for (o, i) in dst[i..stride].iter_mut().zip(i..) {
            *o = w
                .iter()
                .enumerate()
                .map(|(j, wj)| f32::from(pixels[(start + j) * stride + i]) * wj)
                .sum();
        }
    }

    /// The horizontal pass over one vertically filtered row (`rgb`:
    /// interleaved floats, one spare float at the end), written as output
    /// row `y`: normalised, channel-ordered, one plane per channel.
    ///
    /// Each 128-bit lane holds one output pixel (R, G, B and a junk lane
    /// that is dropped); two pixels, `x` and `x + 4`, share a register, so
    /// four registers hold eight outputs that a 4×4 transpose per lane
    /// turns into one R, one G and one B vector of eight.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn horizontal(
        f: &FixedTaps,
        paired: &[f32],
        rgb: &[f32],
        sink: &Sink,
        y: usize,
        out: &mut [f32],
    ) {
        let k = f.ksize;
        let nw = f.starts.len();
        let groups = nw / 8;
        let sw = (rgb.len() - 1) / 3;
        assert_eq!(paired.len(), groups * k * 32);
        // Every tap window lies inside the row (FixedTaps clamps starts).
        assert!(f.starts.iter().all(|&s| s as usize + k <= sw));
        let oy = sink.top + y;
        let planes: [usize; 3] =
            std::array::from_fn(|c| c * sink.iw * sink.ih + oy * sink.iw + sink.left);
        assert!(planes[2] + nw <= out.len() && sink.left + nw <= sink.iw);
        let mul = sink.mul.map(|m| _mm256_set1_ps(m));
        let add = sink.add.map(|a| _mm256_set1_ps(a));
        let src = rgb.as_ptr();
        let o = out.as_mut_ptr();
        for g in 0..groups {
            let x0 = g * 8;
            // SAFETY: pixel s + j < sw, so its four floats end at most at
            // index 3·sw, the spare float.
            let px: [*const f32; 8] =
                std::array::from_fn(|i| unsafe { src.add(f.starts[x0 + i] as usize * 3) });
            let wg = &paired[g * k * 32..(g + 1) * k * 32];
            let mut acc = [_mm256_setzero_ps(); 4];
            for j in 0..k {
                for (m, a) in acc.iter_mut().enumerate() {
                    // SAFETY: see `px`; `wg` holds k · 32 floats.
                    let v = unsafe {
                        _mm256_set_m128(
                            _mm_loadu_ps(px[m + 4].add(j * 3)),
                            _mm_loadu_ps(px[m].add(j * 3)),
                        )
                    };
                    let wv = unsafe { _mm256_loadu_ps(wg.as_ptr().add((j * 4 + m) * 8)) };
                    *a = _mm256_fmadd_ps(v, wv, *a);
                }
            }
            // acc[m] = [p(m) | p(m+4)], p = (r, g, b, junk).
            let t0 = _mm256_unpacklo_ps(acc[0], acc[1]);
            let t1 = _mm256_unpacklo_ps(acc[2], acc[3]);
            let t2 = _mm256_unpackhi_ps(acc[0], acc[1]);
            let t3 = _mm256_unpackhi_ps(acc[2], acc[3]);
            let chans = [
                _mm256_shuffle_ps::<0x44>(t0, t1),
                _mm256_shuffle_ps::<0xEE>(t0, t1),
                _mm256_shuffle_ps::<0x44>(t2, t3),
            ];
            for c in 0..3 {
                let v = _mm256_fmadd_ps(chans[sink.src_ch[c]], mul[c], add[c]);
                // SAFETY: planes[c] + x0 + 8 ≤ planes[c] + nw, inside `out`
                // (asserted above).
                unsafe { _mm256_storeu_ps(o.add(planes[c] + x0), v) };
            }
        }
        for x in groups * 8..nw {
            let s = f.starts[x] as usize * 3;
            let w = &f.weights[x * k..(x + 1) * k];
            for c in 0..3 {
                let sc = sink.src_ch[c];
                let v: f32 = w
                    .iter()
                    .enumerate()
                    .map(|(j, wj)| rgb[s + j * 3 + sc] * wj)
                    .sum();
                out[planes[c] + x] = v * sink.mul[c] + sink.add[c];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(w: u32, h: u32, resize: ResizeMode, order: ChannelOrder) -> InputSpec {
        InputSpec {
            name: "images".into(),
            width: w,
            height: h,
            channel_order: order,
            resize,
            pad_value: 114,
            mean: [0.0; 3],
            std: [1.0; 3],
        }
    }

    fn solid(w: u32, h: u32, rgb: [u8; 3]) -> RgbImage {
        RgbImage {
            width: w,
            height: h,
            pixels: rgb
                .iter()
                .copied()
                .cycle()
                .take((w * h * 3) as usize)
                .collect(),
        }
    }

    #[test]
    fn solid_colour_stays_solid_and_channels_swap() {
        let img = solid(37, 23, [10, 20, 30]);
        let s = spec(16, 8, ResizeMode::Stretch, ChannelOrder::Bgr);
        let mut out = vec![f32::NAN; 3 * 16 * 8];
        Preprocessor::default().run(&img, &s, &mut out);
        for (c, want) in [30.0, 20.0, 10.0].iter().enumerate() {
            for v in &out[c * 128..(c + 1) * 128] {
                assert!((v - want).abs() < 1e-3, "channel {c}: {v}");
            }
        }
    }

    #[test]
    fn normalisation_is_applied() {
        let img = solid(4, 4, [100, 100, 100]);
        let mut s = spec(4, 4, ResizeMode::Stretch, ChannelOrder::Rgb);
        s.mean = [50.0, 0.0, 100.0];
        s.std = [2.0, 100.0, 1.0];
        let mut out = vec![0f32; 48];
        Preprocessor::default().run(&img, &s, &mut out);
        assert!((out[0] - 25.0).abs() < 1e-4);
        assert!((out[16] - 1.0).abs() < 1e-4);
        assert!(out[32].abs() < 1e-4);
    }

    #[test]
    fn identity_size_copies_pixels() {
        let img = RgbImage {
            width: 3,
            height: 2,
            pixels: (0..18).map(|i| i as u8 * 10).collect(),
        };
        let s = spec(3, 2, ResizeMode::Stretch, ChannelOrder::Rgb);
        let mut out = vec![0f32; 18];
        Preprocessor::default().run(&img, &s, &mut out);
        // Red plane is every third byte.
        assert_eq!(&out[..6], &[0.0, 30.0, 60.0, 90.0, 120.0, 150.0]);
    }

    #[test]
    fn letterbox_pads_and_maps_back() {
        let img = solid(200, 100, [255, 255, 255]);
        let s = spec(64, 64, ResizeMode::Letterbox, ChannelOrder::Rgb);
        let mut out = vec![f32::NAN; 3 * 64 * 64];
        let p = Preprocessor::default().run(&img, &s, &mut out);
        assert_eq!((p.pad_left, p.pad_top), (0.0, 16.0));
        assert!(out.iter().all(|v| v.is_finite()));
        assert_eq!(out[0], 114.0); // top padding row
        assert!((out[20 * 64 + 10] - 255.0).abs() < 1e-3); // inside the image
        assert_eq!(out[60 * 64], 114.0); // bottom padding
        let (x, y) = p.to_frame(32.0, 32.0);
        assert!((x - 100.0).abs() < 1e-3 && (y - 50.0).abs() < 1e-3);
    }

    #[test]
    fn padded_taps_match_the_variable_length_loop_exactly() {
        let mut seed = 7u32;
        for (w, out_w) in [
            (768u32, 416u32),
            (1920, 416),
            (417, 416),
            (100, 416),
            (5, 2),
            (13, 3),
        ] {
            let row: Vec<f32> = (0..w * 3)
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 24) as f32
                })
                .collect();
            let c = axis_coeffs(w, out_w);
            let mut want = vec![0f32; out_w as usize * 3];
            horizontal_generic(&c, &row, &mut want);
            let mut got = vec![f32::NAN; out_w as usize * 3];
            match FixedTaps::new(&c, w) {
                Some(f) => f.run(&row, &mut got),
                None => horizontal_generic(&c, &row, &mut got),
            }
            assert_eq!(got, want, "{w} -> {out_w}");
        }
    }

    fn noise(w: u32, h: u32, seed: &mut u32) -> RgbImage {
        RgbImage {
            width: w,
            height: h,
            pixels: (0..w * h * 3)
                .map(|_| {
                    *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (*seed >> 24) as u8
                })
                .collect(),
        }
    }

    #[test]
    fn fast_paths_match_the_reference() {
        use ResizeMode::{Letterbox, Stretch};
        let mut seed = 11u32;
        // (frame w, h, input w, h, mode): down- and upscales, odd sizes,
        // sizes around the 8-pixel SIMD groups, 1-pixel frames.
        let cases = [
            (768, 576, 416, 416, Letterbox),
            (768, 576, 416, 416, Stretch),
            (1920, 1080, 416, 416, Letterbox),
            (1280, 720, 320, 192, Stretch),
            (100, 60, 416, 416, Letterbox),
            (37, 23, 64, 48, Stretch),
            (417, 301, 416, 320, Stretch),
            (333, 517, 96, 160, Letterbox),
            (15, 9, 13, 7, Stretch),
            (9, 7, 4, 4, Stretch),
            (2, 640, 64, 64, Letterbox),
            (640, 2, 64, 64, Letterbox),
            (1, 1, 32, 32, Stretch),
            (1, 1, 32, 32, Letterbox),
            (1, 300, 32, 32, Stretch),
            (300, 1, 32, 32, Stretch),
        ];
        for (w, h, iw, ih, mode) in cases {
            let img = noise(w, h, &mut seed);
            for order in [ChannelOrder::Rgb, ChannelOrder::Bgr] {
                let mut s = spec(iw, ih, mode, order);
                s.mean = [103.53, 116.28, 123.675];
                s.std = [57.375, 57.12, 58.395];
                let n = 3 * (iw * ih) as usize;
                let mut pre = Preprocessor::default();
                let mut want = vec![f32::NAN; n];
                let p0 = pre.run_with(&img, &s, &mut want, Path::Reference);
                assert!(want.iter().all(|v| v.is_finite()));
                for path in [Path::Auto, Path::Portable] {
                    let mut got = vec![f32::NAN; n];
                    let p1 = pre.run_with(&img, &s, &mut got, path);
                    assert_eq!(p0, p1);
                    let worst = want
                        .iter()
                        .zip(&got)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0f32, f32::max);
                    assert!(
                        worst <= 1e-4,
                        "{w}x{h} -> {iw}x{ih} {mode:?} {order:?} {path:?}: max diff {worst}"
                    );
                }
            }
        }
        // The fast path is the one taken on the frames that matter.
        let mut pre = Preprocessor::default();
        let s = spec(416, 416, Letterbox, ChannelOrder::Bgr);
        pre.run(
            &noise(768, 576, &mut seed),
            &s,
            &mut vec![0f32; 3 * 416 * 416],
        );
        let plan = pre.plan.as_ref().expect("plan");
        assert!(plan.fixed.is_some());
        #[cfg(target_arch = "x86_64")]
        assert_eq!(!plan.paired.is_empty(), x86::available());
    }

    #[test]
    fn downscale_averages_instead_of_skipping() {
        // Alternating black/white columns must average to grey, not alias.
        let mut img = solid(64, 8, [0, 0, 0]);
        for y in 0..8 {
            for x in (1..64).step_by(2) {
                let i = (y * 64 + x) * 3;
                img.pixels[i..i + 3].copy_from_slice(&[255, 255, 255]);
            }
        }
        let s = spec(8, 8, ResizeMode::Stretch, ChannelOrder::Rgb);
        let mut out = vec![0f32; 3 * 64];
        Preprocessor::default().run(&img, &s, &mut out);
        for v in &out[..64] {
            assert!((v - 127.5).abs() < 20.0, "{v}");
        }
    }
}
