//! The CPU reference of the preprocessing kernel: the plain version of the
//! exact same math (see the crate docs for the conventions), used by the
//! tests and by the gateway's CPU preprocessing path.

use crate::spec::{FrameRef, PixelFormat, Placement, PreprocessSpec};
use crate::InputError;

/// An output element type the reference can write.
pub trait OutElem: Copy + Send + Sync + 'static {
    /// The matching output type.
    const DTYPE: crate::OutputDType;
    /// Converts a float32 result (round to nearest even for narrower types).
    fn from_f32(v: f32) -> Self;
}

impl OutElem for f32 {
    const DTYPE: crate::OutputDType = crate::OutputDType::F32;
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl OutElem for half::f16 {
    const DTYPE: crate::OutputDType = crate::OutputDType::F16;
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        half::f16::from_f32(v)
    }
}

/// BT.601 limited-range YCbCr to RGB, each channel clamped to 0..255 (not
/// rounded). The coefficients are float32 and identical in the kernel.
#[inline(always)]
#[allow(clippy::excessive_precision)]
pub fn yuv_to_rgb(y: f32, u: f32, v: f32) -> [f32; 3] {
    let c = 1.164_383_562_f32 * (y - 16.0);
    let d = u - 128.0;
    let e = v - 128.0;
    [
        (c + 1.596_026_786_f32 * e).clamp(0.0, 255.0),
        (c - 0.391_762_290_f32 * d - 0.812_967_647_f32 * e).clamp(0.0, 255.0),
        (c + 2.017_232_143_f32 * d).clamp(0.0, 255.0),
    ]
}

/// The R, G, B value (0..255, float) of source pixel (`x`, `y`). For NV12 the
/// chroma pair of the 2x2 block holding the pixel is used (no chroma filter).
#[inline(always)]
pub fn pixel_rgb(frame: &FrameRef<'_>, x: usize, y: usize) -> [f32; 3] {
    let d = frame.data;
    match frame.format {
        PixelFormat::Rgb8 => {
            let i = y * frame.stride + 3 * x;
            [d[i] as f32, d[i + 1] as f32, d[i + 2] as f32]
        }
        PixelFormat::Bgr8 => {
            let i = y * frame.stride + 3 * x;
            [d[i + 2] as f32, d[i + 1] as f32, d[i] as f32]
        }
        PixelFormat::Nv12 => {
            let yv = d[y * frame.stride + x] as f32;
            let uv = frame.uv_offset() + (y / 2) * frame.stride + (x / 2) * 2;
            yuv_to_rgb(yv, d[uv] as f32, d[uv + 1] as f32)
        }
    }
}

/// One axis of bilinear taps: `(i0, i1, f)` for each resized coordinate.
///
/// `s = (i + 0.5) * scale - 0.5`, clamped to `[0, n - 1]`; `i0 = floor(s)`,
/// `i1 = min(i0 + 1, n - 1)`, `f = s - i0`. All in float32, as in the kernel.
pub fn taps(resized: u32, scale: f32, src_len: u32) -> Vec<(usize, usize, f32)> {
    let max = (src_len - 1) as f32;
    (0..resized)
        .map(|i| {
            let s = ((i as f32 + 0.5) * scale - 0.5).clamp(0.0, max);
            let i0 = s as usize;
            let i1 = (i0 + 1).min(src_len as usize - 1);
            (i0, i1, s - i0 as f32)
        })
        .collect()
}

#[inline(always)]
fn lerp(a: f32, b: f32, f: f32) -> f32 {
    a + f * (b - a)
}

/// Preprocesses one frame into one output image (`3 * out_h * out_w`
/// elements, planar). Validates nothing: callers use [`preprocess_cpu`] or
/// validate first.
fn frame_into<T: OutElem>(frame: &FrameRef<'_>, spec: &PreprocessSpec, out: &mut [T]) {
    let (ow, oh) = (spec.out_width as usize, spec.out_height as usize);
    let plane = ow * oh;
    let p = Placement::new(frame.width, frame.height, spec);
    let (mul, add) = spec.affine();
    let fill = spec.fill_values().map(T::from_f32);
    let colour = [
        spec.plane_colour(0),
        spec.plane_colour(1),
        spec.plane_colour(2),
    ];
    let xt = taps(p.width, p.scale_x, frame.width);
    let yt = taps(p.height, p.scale_y, frame.height);
    let (left, top) = (p.left as usize, p.top as usize);
    let (right, bottom) = (left + p.width as usize, top + p.height as usize);

    let (planes01, plane2) = out.split_at_mut(2 * plane);
    let (plane0, plane1) = planes01.split_at_mut(plane);
    let planes: [&mut [T]; 3] = [plane0, plane1, &mut plane2[..plane]];
    let [o0, o1, o2] = planes;

    for y in 0..oh {
        let row = y * ow..(y + 1) * ow;
        let (r0, r1, r2) = (&mut o0[row.clone()], &mut o1[row.clone()], &mut o2[row]);
        if y < top || y >= bottom {
            r0.fill(fill[0]);
            r1.fill(fill[1]);
            r2.fill(fill[2]);
            continue;
        }
        for x in (0..left).chain(right..ow) {
            r0[x] = fill[0];
            r1[x] = fill[1];
            r2[x] = fill[2];
        }
        let (y0, y1, fy) = yt[y - top];
        for (x, &(x0, x1, fx)) in (left..right).zip(xt.iter()) {
            let a = pixel_rgb(frame, x0, y0);
            let b = pixel_rgb(frame, x1, y0);
            let c = pixel_rgb(frame, x0, y1);
            let d = pixel_rgb(frame, x1, y1);
            let mut rgb = [0.0f32; 3];
            for k in 0..3 {
                rgb[k] = lerp(lerp(a[k], b[k], fx), lerp(c[k], d[k], fx), fy);
            }
            r0[x] = T::from_f32(rgb[colour[0]] * mul[0] + add[0]);
            r1[x] = T::from_f32(rgb[colour[1]] * mul[1] + add[1]);
            r2[x] = T::from_f32(rgb[colour[2]] * mul[2] + add[2]);
        }
    }
}

/// Checks a batch and its output length against a spec.
pub fn validate_batch(
    frames: &[FrameRef<'_>],
    spec: &PreprocessSpec,
    out_len: usize,
) -> Result<(), InputError> {
    spec.validate().map_err(InputError::Spec)?;
    for (index, f) in frames.iter().enumerate() {
        f.validate()
            .map_err(|source| InputError::Frame { index, source })?;
    }
    let need = frames.len() * spec.image_len();
    if out_len != need {
        return Err(InputError::OutputLen {
            have: out_len,
            need,
        });
    }
    Ok(())
}

/// Preprocesses a batch on the CPU into `out`, an NCHW float32 tensor of
/// `frames.len() * 3 * out_height * out_width` elements. `spec.dtype` is
/// ignored: the element type is the slice's.
pub fn preprocess_cpu(
    frames: &[FrameRef<'_>],
    spec: &PreprocessSpec,
    out: &mut [f32],
) -> Result<(), InputError> {
    preprocess_cpu_into(frames, spec, out)
}

/// As [`preprocess_cpu`], writing float16 (each float32 result rounded to
/// nearest even, as the kernel's `cvt.rn.f16.f32`).
pub fn preprocess_cpu_f16(
    frames: &[FrameRef<'_>],
    spec: &PreprocessSpec,
    out: &mut [half::f16],
) -> Result<(), InputError> {
    preprocess_cpu_into(frames, spec, out)
}

/// As [`preprocess_cpu`], generic over the element type.
pub fn preprocess_cpu_into<T: OutElem>(
    frames: &[FrameRef<'_>],
    spec: &PreprocessSpec,
    out: &mut [T],
) -> Result<(), InputError> {
    validate_batch(frames, spec, out.len())?;
    let n = spec.image_len();
    for (frame, image) in frames.iter().zip(out.chunks_exact_mut(n)) {
        frame_into(frame, spec, image);
    }
    Ok(())
}

/// Preprocesses one frame into one output image of `3 * out_height *
/// out_width` elements (for callers that spread a batch over threads).
pub fn preprocess_frame_cpu<T: OutElem>(
    frame: &FrameRef<'_>,
    spec: &PreprocessSpec,
    out: &mut [T],
) -> Result<(), InputError> {
    validate_batch(std::slice::from_ref(frame), spec, out.len())?;
    frame_into(frame, spec, out);
    Ok(())
}
