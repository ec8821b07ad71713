//! Preprocess: RGB8 frame → the model's float input, in one pass per axis.
//!
//! Resampling is separable bilinear with a triangle filter whose support
//! widens with the downscale factor (the "antialiased bilinear" of Pillow),
//! so a 1920-pixel frame shrunk to 416 averages every source pixel instead
//! of skipping most of them. Channel swap, mean/std normalisation and the
//! HWC → NCHW layout are fused into the vertical pass; letterbox padding is
//! written directly. Coefficient tables are cached per (source, target) size.

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

/// Coefficients cached for one (source w, h, target w, h).
type CoeffCache = ((u32, u32, u32, u32), AxisCoeffs, AxisCoeffs);

/// Reusable preprocessing state for one worker: coefficient cache and the
/// intermediate buffer.
#[derive(Debug, Default)]
pub struct Preprocessor {
    cache: Option<CoeffCache>,
    tmp: Vec<f32>,
    row: Vec<f32>,
}

/// Horizontal taps padded to a fixed `ksize` (zero weights outside the
/// filter, start moved left at the right edge), so the inner loop has a
/// constant length the compiler unrolls and vectorises. Padding adds exact
/// zeros, so results are bit-identical to the variable-length loop.
struct FixedTaps<'a> {
    starts: Vec<u32>,
    weights: std::borrow::Cow<'a, [f32]>,
    ksize: usize,
}

impl<'a> FixedTaps<'a> {
    fn new(c: &'a AxisCoeffs, in_size: u32) -> Option<Self> {
        let k = c.ksize;
        if (in_size as usize) < k {
            return None;
        }
        let mut moved = false;
        let starts: Vec<u32> = c
            .taps
            .iter()
            .map(|t| {
                let s = t.start.min(in_size - k as u32);
                moved |= s != t.start;
                s
            })
            .collect();
        let weights = if moved {
            let mut w = vec![0f32; c.weights.len()];
            for (x, t) in c.taps.iter().enumerate() {
                let shift = (t.start - starts[x]) as usize;
                let len = t.len as usize;
                w[x * k + shift..x * k + shift + len]
                    .copy_from_slice(&c.weights[x * k..x * k + len]);
            }
            std::borrow::Cow::Owned(w)
        } else {
            std::borrow::Cow::Borrowed(&c.weights[..])
        };
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

impl Preprocessor {
    /// Writes one frame into `out` (`3 × height × width` floats, NCHW for
    /// one batch element) and returns where it landed.
    pub fn run(&mut self, img: &RgbImage, spec: &InputSpec, out: &mut [f32]) -> Placement {
        let (iw, ih) = (spec.width as usize, spec.height as usize);
        assert_eq!(out.len(), 3 * iw * ih, "output slice has the wrong size");
        let (place, nw, nh) = placement(spec, img.width, img.height);
        let key = (img.width, img.height, nw, nh);
        if self.cache.as_ref().map(|c| c.0) != Some(key) {
            self.cache = Some((key, axis_coeffs(img.width, nw), axis_coeffs(img.height, nh)));
        }
        let (_, cx, cy) = self.cache.as_ref().expect("just filled");

        // Per output channel: which source channel, and the affine map.
        let src_ch = match spec.channel_order {
            ChannelOrder::Rgb => [0usize, 1, 2],
            ChannelOrder::Bgr => [2usize, 1, 0],
        };
        let mul: [f32; 3] = std::array::from_fn(|c| 1.0 / spec.std[c]);
        let add: [f32; 3] = std::array::from_fn(|c| -spec.mean[c] / spec.std[c]);

        // Letterbox padding.
        let (left, top) = (place.pad_left as usize, place.pad_top as usize);
        let (nw, nh) = (nw as usize, nh as usize);
        if nw != iw || nh != ih {
            let pad = f32::from(spec.pad_value);
            for c in 0..3 {
                out[c * iw * ih..(c + 1) * iw * ih].fill(pad * mul[c] + add[c]);
            }
        }

        // Horizontal pass: only the source rows the vertical pass will read.
        let row_lo = cy.taps.first().map_or(0, |t| t.start as usize);
        let row_hi = cy
            .taps
            .iter()
            .map(|t| (t.start + t.len) as usize)
            .max()
            .unwrap_or(0);
        let sw = img.width as usize;
        self.tmp.resize((row_hi - row_lo) * nw * 3, 0.0);
        self.row.resize(sw * 3, 0.0);
        let fixed = FixedTaps::new(cx, img.width);
        for y in row_lo..row_hi {
            let src = &img.pixels[y * sw * 3..(y + 1) * sw * 3];
            let dst = &mut self.tmp[(y - row_lo) * nw * 3..(y - row_lo + 1) * nw * 3];
            // Each source pixel feeds about two outputs: convert it once.
            for (f, b) in self.row.iter_mut().zip(src) {
                *f = f32::from(*b);
            }
            match &fixed {
                Some(f) => f.run(&self.row, dst),
                None => horizontal_generic(cx, &self.row, dst),
            }
        }

        // Vertical pass fused with normalisation, channel order and layout.
        let mut acc = vec![0f32; nw * 3];
        for (y, t) in cy.taps.iter().enumerate() {
            acc.fill(0.0);
            let k = &cy.weights[y * cy.ksize..y * cy.ksize + t.len as usize];
            for (j, w) in k.iter().enumerate() {
                let r = t.start as usize + j - row_lo;
                let row = &self.tmp[r * nw * 3..(r + 1) * nw * 3];
                for (a, v) in acc.iter_mut().zip(row) {
                    *a += v * w;
                }
            }
            let oy = top + y;
            for c in 0..3 {
                let plane =
                    &mut out[c * iw * ih + oy * iw + left..c * iw * ih + oy * iw + left + nw];
                let sc = src_ch[c];
                for (x, o) in plane.iter_mut().enumerate() {
                    *o = acc[x * 3 + sc] * mul[c] + add[c];
                }
            }
        }
        place
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
