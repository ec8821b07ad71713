//! Decode: compressed or raw frames to packed RGB8 pixels.
//!
//! Two steps, split on purpose. [`probe`] reads only the header (a few
//! bytes), so the transport can refuse a frame whose declared size breaks the
//! pixel budget before any pixel is decoded or any memory is reserved.
//! [`decode_rgb`] then decodes on an inference worker thread, never on the
//! async runtime.

use framegate_protocol::Codec;

use crate::error::GatewayError;

/// Limits checked by [`probe`].
#[derive(Debug, Clone, Copy)]
pub struct FrameLimits {
    /// Most pixels (width × height) in one frame.
    pub max_pixels: u64,
    /// Largest width or height.
    pub max_side: u32,
}

/// A frame whose header has been read and checked against the limits.
#[derive(Debug, Clone)]
pub struct ProbedFrame {
    /// Its encoding.
    pub codec: Codec,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// The encoded bytes (shared, not copied).
    pub payload: bytes::Bytes,
}

impl ProbedFrame {
    /// Width × height.
    pub fn pixels(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }
}

const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Which compressed format the bytes are, from their first bytes.
pub fn sniff(bytes: &[u8]) -> Option<Codec> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(Codec::Jpeg)
    } else if bytes.starts_with(PNG_MAGIC) {
        Some(Codec::Png)
    } else {
        None
    }
}

fn check_budget(width: u32, height: u32, limits: &FrameLimits) -> Result<(), GatewayError> {
    if width == 0 || height == 0 {
        return Err(GatewayError::InvalidImage(format!(
            "image declares an empty size {width}x{height}"
        )));
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > limits.max_pixels || width > limits.max_side || height > limits.max_side {
        return Err(GatewayError::PixelBudget {
            width,
            height,
            budget: limits.max_pixels,
        });
    }
    Ok(())
}

/// Reads the size from the header and checks it against the limits.
///
/// `codec` is what the sender declared (`None`: sniff the bytes). For raw
/// codecs the sender's `width`/`height` are used and the payload length must
/// match them exactly.
pub fn probe(
    codec: Option<Codec>,
    width: u32,
    height: u32,
    payload: bytes::Bytes,
    limits: &FrameLimits,
) -> Result<ProbedFrame, GatewayError> {
    if payload.is_empty() {
        return Err(GatewayError::BadRequest("empty image".into()));
    }
    let codec = match codec {
        Some(c) => c,
        None => sniff(&payload)
            .ok_or_else(|| GatewayError::UnsupportedMedia("not a JPEG or PNG image".into()))?,
    };
    let (w, h) = match codec {
        Codec::Jpeg => jpeg_size(&payload)?,
        Codec::Png => png_size(&payload)?,
        Codec::Rgb8 | Codec::Bgr8 | Codec::Nv12 => {
            check_budget(width, height, limits)?;
            let pixels = u64::from(width) * u64::from(height);
            let expected = match codec {
                Codec::Nv12 => {
                    if !width.is_multiple_of(2) || !height.is_multiple_of(2) {
                        return Err(GatewayError::InvalidImage(
                            "NV12 frames need an even width and height".into(),
                        ));
                    }
                    pixels * 3 / 2
                }
                _ => pixels * 3,
            };
            if payload.len() as u64 != expected {
                return Err(GatewayError::InvalidImage(format!(
                    "{} frame of {width}x{height} needs {expected} bytes, got {}",
                    codec.as_str(),
                    payload.len()
                )));
            }
            (width, height)
        }
    };
    check_budget(w, h, limits)?;
    Ok(ProbedFrame {
        codec,
        width: w,
        height: h,
        payload,
    })
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(b: &[u8]) -> Result<(u32, u32), GatewayError> {
    if !b.starts_with(PNG_MAGIC) {
        return Err(GatewayError::InvalidImage("not a PNG image".into()));
    }
    if b.len() < 24 || &b[12..16] != b"IHDR" {
        return Err(GatewayError::InvalidImage("truncated PNG header".into()));
    }
    let w = u32::from_be_bytes([b[16], b[17], b[18], b[19]]);
    let h = u32::from_be_bytes([b[20], b[21], b[22], b[23]]);
    Ok((w, h))
}

/// Width and height from a JPEG's first start-of-frame marker.
fn jpeg_size(b: &[u8]) -> Result<(u32, u32), GatewayError> {
    let truncated = || GatewayError::InvalidImage("truncated JPEG header".into());
    if !b.starts_with(&[0xFF, 0xD8]) {
        return Err(GatewayError::InvalidImage("not a JPEG image".into()));
    }
    let mut i = 2;
    loop {
        // Skip fill bytes before a marker.
        while i < b.len() && b[i] == 0xFF && b.get(i + 1) == Some(&0xFF) {
            i += 1;
        }
        if i + 4 > b.len() {
            return Err(truncated());
        }
        if b[i] != 0xFF {
            return Err(GatewayError::InvalidImage(
                "corrupt JPEG: expected a marker".into(),
            ));
        }
        let marker = b[i + 1];
        // Markers without a length.
        if marker == 0x01 || (0xD0..=0xD7).contains(&marker) {
            i += 2;
            continue;
        }
        let len = usize::from(u16::from_be_bytes([b[i + 2], b[i + 3]]));
        if len < 2 {
            return Err(GatewayError::InvalidImage(
                "corrupt JPEG: bad segment length".into(),
            ));
        }
        let is_sof = matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if is_sof {
            if i + 9 > b.len() {
                return Err(truncated());
            }
            let h = u32::from(u16::from_be_bytes([b[i + 5], b[i + 6]]));
            let w = u32::from(u16::from_be_bytes([b[i + 7], b[i + 8]]));
            return Ok((w, h));
        }
        if marker == 0xDA || marker == 0xD9 {
            return Err(GatewayError::InvalidImage(
                "corrupt JPEG: no frame header before the scan".into(),
            ));
        }
        i += 2 + len;
    }
}

/// Decode buffers up to this many bytes keep their memory from frame to
/// frame (a 4K frame needs 24.9 MB, 5K 44 MB); a larger one is given back
/// once its frame is preprocessed ([`RgbImage::release_if_large`]), so a
/// few huge frames (up to `limits.max_frame_pixels`, 120 MB at the default
/// 40 megapixels) do not hold that memory for the life of a worker.
pub const KEEP_DECODE_BYTES: usize = 64 << 20;

/// A decoded frame: packed RGB8, row-major, no padding.
#[derive(Debug, Default, Clone)]
pub struct RgbImage {
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// `width * height * 3` bytes.
    pub pixels: Vec<u8>,
}

impl RgbImage {
    /// Gives the buffer's memory back if it holds more than
    /// [`KEEP_DECODE_BYTES`]; the next frame allocates what it needs.
    pub fn release_if_large(&mut self) {
        if self.pixels.capacity() > KEEP_DECODE_BYTES {
            self.pixels = Vec::new();
        }
    }
}

/// Decodes a probed frame into `out` (its buffer is reused).
pub fn decode_rgb(frame: &ProbedFrame, out: &mut RgbImage) -> Result<(), GatewayError> {
    let n = frame.pixels() as usize * 3;
    out.width = frame.width;
    out.height = frame.height;
    out.pixels.clear();
    match frame.codec {
        Codec::Jpeg => decode_jpeg(frame, out),
        Codec::Png => decode_png(frame, out),
        Codec::Rgb8 => {
            out.pixels.extend_from_slice(&frame.payload);
            Ok(())
        }
        Codec::Bgr8 => {
            out.pixels.reserve(n);
            for px in frame.payload.chunks_exact(3) {
                out.pixels.extend_from_slice(&[px[2], px[1], px[0]]);
            }
            Ok(())
        }
        Codec::Nv12 => {
            nv12_to_rgb(
                &frame.payload,
                frame.width as usize,
                frame.height as usize,
                out,
            );
            Ok(())
        }
    }
}

fn decode_jpeg(frame: &ProbedFrame, out: &mut RgbImage) -> Result<(), GatewayError> {
    use zune_jpeg::zune_core::colorspace::ColorSpace;
    use zune_jpeg::zune_core::options::DecoderOptions;

    // A JPEG whose entropy-coded data stops early still "decodes" in lenient
    // decoders (the rest turns grey). We refuse it: the end-of-image marker
    // must be present.
    let data: &[u8] = &frame.payload;
    let trimmed = {
        let mut end = data.len();
        while end > 0 && data[end - 1] == 0 {
            end -= 1;
        }
        &data[..end]
    };
    if !trimmed.ends_with(&[0xFF, 0xD9]) {
        return Err(GatewayError::InvalidImage(
            "truncated JPEG: no end-of-image marker".into(),
        ));
    }
    let options = DecoderOptions::default()
        .set_max_width(frame.width as usize)
        .set_max_height(frame.height as usize)
        .set_strict_mode(true)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(data, options);
    decoder
        .decode_headers()
        .map_err(|e| GatewayError::InvalidImage(format!("corrupt JPEG: {e:?}")))?;
    let info = decoder
        .info()
        .ok_or_else(|| GatewayError::InvalidImage("corrupt JPEG: no header".into()))?;
    if (u32::from(info.width), u32::from(info.height)) != (frame.width, frame.height) {
        return Err(GatewayError::InvalidImage(
            "corrupt JPEG: inconsistent size".into(),
        ));
    }
    let size = decoder
        .output_buffer_size()
        .ok_or_else(|| GatewayError::InvalidImage("corrupt JPEG: no output size".into()))?;
    out.pixels.resize(size, 0);
    decoder
        .decode_into(&mut out.pixels)
        .map_err(|e| GatewayError::InvalidImage(format!("corrupt JPEG: {e:?}")))?;
    match decoder.get_output_colorspace() {
        Some(ColorSpace::RGB) => Ok(()),
        Some(ColorSpace::Luma) => {
            expand_gray(out, 1);
            Ok(())
        }
        other => Err(GatewayError::InvalidImage(format!(
            "unsupported JPEG colour space {other:?}"
        ))),
    }
}

/// Expands `channels`-per-pixel grey (with alpha when 2) to RGB in place.
fn expand_gray(out: &mut RgbImage, channels: usize) {
    let src = std::mem::take(&mut out.pixels);
    out.pixels.reserve(src.len() / channels * 3);
    for px in src.chunks_exact(channels) {
        out.pixels.extend_from_slice(&[px[0], px[0], px[0]]);
    }
}

fn decode_png(frame: &ProbedFrame, out: &mut RgbImage) -> Result<(), GatewayError> {
    let corrupt = |e: png::DecodingError| GatewayError::InvalidImage(format!("corrupt PNG: {e}"));
    let limits = png::Limits {
        // Room for 16-bit RGBA plus the decoder's own buffers.
        bytes: (frame.pixels() as usize).saturating_mul(8) + (1 << 20),
    };
    let mut decoder =
        png::Decoder::new_with_limits(std::io::Cursor::new(&frame.payload[..]), limits);
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(corrupt)?;
    let mut buf = vec![0u8; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).map_err(corrupt)?;
    if (info.width, info.height) != (frame.width, frame.height) {
        return Err(GatewayError::InvalidImage(
            "corrupt PNG: inconsistent size".into(),
        ));
    }
    buf.truncate(info.buffer_size());
    out.pixels = buf;
    match info.color_type {
        png::ColorType::Rgb => {}
        png::ColorType::Rgba => {
            let src = std::mem::take(&mut out.pixels);
            out.pixels.reserve(src.len() / 4 * 3);
            for px in src.chunks_exact(4) {
                out.pixels.extend_from_slice(&px[..3]);
            }
        }
        png::ColorType::Grayscale => expand_gray(out, 1),
        png::ColorType::GrayscaleAlpha => expand_gray(out, 2),
        png::ColorType::Indexed => {
            return Err(GatewayError::InvalidImage(
                "indexed PNG was not expanded".into(),
            ))
        }
    }
    Ok(())
}

/// NV12 (BT.601, limited range) to RGB8.
fn nv12_to_rgb(data: &[u8], w: usize, h: usize, out: &mut RgbImage) {
    let (y_plane, uv) = data.split_at(w * h);
    out.pixels.resize(w * h * 3, 0);
    // BT.601 limited range in 8.8 fixed point (coefficients × 256, rounded;
    // +128 rounds the final shift half up), integer arithmetic only.
    const Y: i32 = 298; // 1.164
    const RV: i32 = 409; // 1.596
    const GU: i32 = 100; // 0.392
    const GV: i32 = 208; // 0.813
    const BU: i32 = 516; // 2.017
    let px = |v: i32| (v >> 8).clamp(0, 255) as u8;
    // Width and height are even (`probe`): each U,V pair serves a 2×2 block.
    for (row, (ys, rgb)) in y_plane
        .chunks_exact(w)
        .zip(out.pixels.chunks_exact_mut(3 * w))
        .enumerate()
    {
        let uvs = &uv[(row / 2) * w..(row / 2) * w + w];
        for ((y2, uv2), rgb2) in ys
            .chunks_exact(2)
            .zip(uvs.chunks_exact(2))
            .zip(rgb.chunks_exact_mut(6))
        {
            let u = i32::from(uv2[0]) - 128;
            let v = i32::from(uv2[1]) - 128;
            let (r, g, b) = (RV * v + 128, 128 - GU * u - GV * v, BU * u + 128);
            for (y, o) in y2.iter().zip(rgb2.chunks_exact_mut(3)) {
                let y = Y * (i32::from(*y) - 16);
                o[0] = px(y + r);
                o[1] = px(y + g);
                o[2] = px(y + b);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const LIMITS: FrameLimits = FrameLimits {
        max_pixels: 40_000_000,
        max_side: 16_384,
    };

    fn png_of(w: u32, h: u32, rgb: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut out, w, h);
            enc.set_color(png::ColorType::Rgb);
            enc.set_depth(png::BitDepth::Eight);
            let mut writer = enc.write_header().unwrap();
            writer.write_image_data(rgb).unwrap();
        }
        out
    }

    #[test]
    fn png_round_trip() {
        let rgb: Vec<u8> = (0..4 * 3 * 3).map(|i| i as u8 * 7).collect();
        let bytes = Bytes::from(png_of(4, 3, &rgb));
        let probed = probe(None, 0, 0, bytes, &LIMITS).unwrap();
        assert_eq!(
            (probed.codec, probed.width, probed.height),
            (Codec::Png, 4, 3)
        );
        let mut img = RgbImage::default();
        decode_rgb(&probed, &mut img).unwrap();
        assert_eq!(img.pixels, rgb);
    }

    #[test]
    fn huge_png_header_is_refused_before_decoding() {
        let mut bytes = png_of(2, 2, &[0; 12]);
        bytes[16..20].copy_from_slice(&30000u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&30000u32.to_be_bytes());
        let err = probe(None, 0, 0, Bytes::from(bytes), &LIMITS).unwrap_err();
        assert!(
            matches!(err, GatewayError::PixelBudget { width: 30000, .. }),
            "{err}"
        );
    }

    #[test]
    fn only_large_decode_buffers_are_given_back() {
        let raw = |w: u32, h: u32| {
            let bytes = Bytes::from(vec![7u8; (w * h * 3) as usize]);
            probe(Some(Codec::Rgb8), w, h, bytes, &LIMITS).unwrap()
        };
        let mut img = RgbImage::default();
        // A 4K frame keeps its buffer for the next frame.
        decode_rgb(&raw(3840, 2160), &mut img).unwrap();
        img.release_if_large();
        assert!(img.pixels.capacity() >= 3840 * 2160 * 3);
        // 5000 × 5000 (75 MB) is given back after its frame ...
        decode_rgb(&raw(5000, 5000), &mut img).unwrap();
        assert_eq!(img.pixels.len(), 75_000_000);
        img.release_if_large();
        assert_eq!(img.pixels.capacity(), 0);
        // ... and the next frame decodes as before.
        decode_rgb(&raw(2, 1), &mut img).unwrap();
        assert_eq!(img.pixels, vec![7; 6]);
    }

    #[test]
    fn raw_frames_need_exact_lengths() {
        let ok = probe(
            Some(Codec::Bgr8),
            2,
            1,
            Bytes::from(vec![1, 2, 3, 4, 5, 6]),
            &LIMITS,
        )
        .unwrap();
        let mut img = RgbImage::default();
        decode_rgb(&ok, &mut img).unwrap();
        assert_eq!(img.pixels, vec![3, 2, 1, 6, 5, 4]);
        assert!(probe(Some(Codec::Rgb8), 2, 2, Bytes::from(vec![0; 5]), &LIMITS).is_err());
        assert!(probe(Some(Codec::Nv12), 3, 2, Bytes::from(vec![0; 9]), &LIMITS).is_err());
    }

    #[test]
    fn nv12_matches_the_per_pixel_formula() {
        // BT.601 limited range, pixel by pixel: exactly the conversion's
        // 8.8 fixed-point arithmetic, and within 1 of the float formula
        // rounded half away from zero (equal for most values).
        let (w, h) = (6usize, 4usize);
        let data: Vec<u8> = (0..w * h * 3 / 2)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).rotate_left(7) as u8)
            .collect();
        let f = probe(
            Some(Codec::Nv12),
            w as u32,
            h as u32,
            Bytes::from(data.clone()),
            &LIMITS,
        )
        .unwrap();
        let mut img = RgbImage::default();
        decode_rgb(&f, &mut img).unwrap();
        let fixed = |v: i32| (v + 128).div_euclid(256).clamp(0, 255);
        let textbook = |v: f32| v.round().clamp(0.0, 255.0) as i32;
        let mut exact = 0;
        for row in 0..h {
            for col in 0..w {
                let yv = f32::from(data[row * w + col]) - 16.0;
                let uv = w * h + (row / 2) * w + (col / 2) * 2;
                let (u, v) = (f32::from(data[uv]) - 128.0, f32::from(data[uv + 1]) - 128.0);
                let (yi, ui, vi) = (yv as i32, u as i32, v as i32);
                let want = [
                    fixed(298 * yi + 409 * vi),
                    fixed(298 * yi - 100 * ui - 208 * vi),
                    fixed(298 * yi + 516 * ui),
                ];
                let book = [
                    textbook(1.164 * yv + 1.596 * v),
                    textbook(1.164 * yv - 0.392 * u - 0.813 * v),
                    textbook(1.164 * yv + 2.017 * u),
                ];
                let o = (row * w + col) * 3;
                let got = img.pixels[o..o + 3].iter().map(|&p| i32::from(p));
                for (c, ((got, want), book)) in got.zip(want).zip(book).enumerate() {
                    assert_eq!(got, want, "({col},{row}) channel {c}");
                    assert!((got - book).abs() <= 1, "({col},{row}) channel {c}");
                    exact += usize::from(got == book);
                }
            }
        }
        assert!(
            exact >= w * h * 3 * 9 / 10,
            "only {exact} values equal the textbook's"
        );
    }

    #[test]
    fn nv12_grey_and_colour() {
        // Y=126 with neutral chroma is mid grey.
        let mut data = vec![126u8; 4];
        data.extend_from_slice(&[128, 128]);
        let f = probe(Some(Codec::Nv12), 2, 2, Bytes::from(data), &LIMITS).unwrap();
        let mut img = RgbImage::default();
        decode_rgb(&f, &mut img).unwrap();
        assert!(
            img.pixels.iter().all(|&v| (127..=129).contains(&v)),
            "{:?}",
            img.pixels
        );
        // Pure red in BT.601 limited range: Y=81, U=90, V=240.
        let f = probe(
            Some(Codec::Nv12),
            2,
            2,
            Bytes::from(vec![81, 81, 81, 81, 90, 240]),
            &LIMITS,
        )
        .unwrap();
        decode_rgb(&f, &mut img).unwrap();
        assert!(
            img.pixels[0] > 250 && img.pixels[1] < 5 && img.pixels[2] < 5,
            "{:?}",
            &img.pixels[..3]
        );
    }

    #[test]
    fn garbage_is_unsupported_and_empty_is_bad_request() {
        let err = probe(None, 0, 0, Bytes::from_static(b"hello world"), &LIMITS).unwrap_err();
        assert!(matches!(err, GatewayError::UnsupportedMedia(_)));
        let err = probe(None, 0, 0, Bytes::new(), &LIMITS).unwrap_err();
        assert!(matches!(err, GatewayError::BadRequest(_)));
    }

    #[test]
    fn jpeg_header_walk_finds_sof_and_refuses_junk() {
        // SOI, APP0 (len 4, 2 bytes), SOF0 declaring 30000x20000.
        let b = [
            0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0x00, 0x00, 0xFF, 0xC0, 0x00, 0x11, 0x08, 0x4E,
            0x20, 0x75, 0x30, 0x03,
        ];
        assert_eq!(jpeg_size(&b).unwrap(), (30000, 20000));
        assert!(jpeg_size(&b[..10]).is_err());
        assert!(jpeg_size(&[0xFF, 0xD8, 0xFF, 0xDA, 0, 2, 0, 0]).is_err());
    }
}
