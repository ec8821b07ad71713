//! Frame descriptions, the preprocessing specification and the letterbox
//! geometry shared by the CPU reference and the GPU kernels.

use std::fmt;

/// Pixel layout of an input frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    /// Packed 8-bit R, G, B per pixel (3 bytes), rows `stride` bytes apart.
    Rgb8,
    /// Packed 8-bit B, G, R per pixel (3 bytes), rows `stride` bytes apart.
    Bgr8,
    /// NV12: a full-resolution 8-bit Y plane of `height` rows, followed by an
    /// interleaved U,V plane of `ceil(height / 2)` rows each holding
    /// `ceil(width / 2)` U,V pairs. Both planes use the same `stride`, and
    /// the UV plane starts right after the Y plane (`height * stride`).
    /// YCbCr is BT.601 limited range.
    Nv12,
}

impl PixelFormat {
    /// The code the CUDA kernel uses for this format.
    pub(crate) fn code(self) -> i32 {
        match self {
            PixelFormat::Rgb8 => 0,
            PixelFormat::Bgr8 => 1,
            PixelFormat::Nv12 => 2,
        }
    }

    /// The smallest row stride, in bytes, that a frame of this format and width needs.
    pub fn min_stride(self, width: u32) -> usize {
        match self {
            PixelFormat::Rgb8 | PixelFormat::Bgr8 => 3 * width as usize,
            // The UV rows hold ceil(w/2) pairs, so an odd width needs w + 1 bytes.
            PixelFormat::Nv12 => 2 * width.div_ceil(2) as usize,
        }
    }

    /// The number of bytes a frame of this format occupies with the given
    /// geometry (the last row counted up to its last used byte).
    pub fn frame_len(self, width: u32, height: u32, stride: usize) -> usize {
        if width == 0 || height == 0 {
            return 0;
        }
        let row = self.min_stride(width);
        match self {
            PixelFormat::Rgb8 | PixelFormat::Bgr8 => (height as usize - 1) * stride + row,
            PixelFormat::Nv12 => {
                let uv_rows = height.div_ceil(2) as usize;
                height as usize * stride + (uv_rows - 1) * stride + row
            }
        }
    }
}

/// A borrowed input frame in host memory.
#[derive(Clone, Copy, Debug)]
pub struct FrameRef<'a> {
    /// The frame's bytes, laid out as [`PixelFormat`] describes.
    pub data: &'a [u8],
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Bytes from the start of one row to the start of the next.
    pub stride: usize,
    /// Pixel layout.
    pub format: PixelFormat,
}

impl<'a> FrameRef<'a> {
    /// A tightly packed frame (`stride` = the format's minimum).
    pub fn new(data: &'a [u8], width: u32, height: u32, format: PixelFormat) -> Self {
        FrameRef {
            data,
            width,
            height,
            stride: format.min_stride(width),
            format,
        }
    }

    /// A tightly packed RGB8 frame.
    pub fn rgb8(data: &'a [u8], width: u32, height: u32) -> Self {
        Self::new(data, width, height, PixelFormat::Rgb8)
    }

    /// A tightly packed BGR8 frame.
    pub fn bgr8(data: &'a [u8], width: u32, height: u32) -> Self {
        Self::new(data, width, height, PixelFormat::Bgr8)
    }

    /// A tightly packed NV12 frame.
    pub fn nv12(data: &'a [u8], width: u32, height: u32) -> Self {
        Self::new(data, width, height, PixelFormat::Nv12)
    }

    /// The same frame with another row stride.
    pub fn with_stride(mut self, stride: usize) -> Self {
        self.stride = stride;
        self
    }

    /// The bytes of `data` that the frame uses.
    pub fn used_len(&self) -> usize {
        self.format.frame_len(self.width, self.height, self.stride)
    }

    /// Byte offset of the NV12 UV plane from the start of `data`.
    pub fn uv_offset(&self) -> usize {
        self.height as usize * self.stride
    }

    /// Checks the geometry against `data`.
    pub fn validate(&self) -> Result<(), FrameError> {
        validate_geometry(self.width, self.height, self.stride, self.format)?;
        let need = self.used_len();
        if self.data.len() < need {
            return Err(FrameError::Short {
                have: self.data.len(),
                need,
            });
        }
        Ok(())
    }
}

/// Checks a frame's size and stride (not its buffer).
pub(crate) fn validate_geometry(
    width: u32,
    height: u32,
    stride: usize,
    format: PixelFormat,
) -> Result<(), FrameError> {
    if width == 0 || height == 0 {
        return Err(FrameError::Empty);
    }
    if width > MAX_DIM || height > MAX_DIM {
        return Err(FrameError::TooLarge { width, height });
    }
    let min = format.min_stride(width);
    if stride < min || stride > i32::MAX as usize {
        return Err(FrameError::Stride { stride, min });
    }
    Ok(())
}

/// The largest accepted frame side, in pixels.
pub const MAX_DIM: u32 = 16384;

/// Why a frame was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Width or height is zero.
    #[error("frame has zero width or height")]
    Empty,
    /// Width or height is above [`MAX_DIM`].
    #[error("frame {width}x{height} is larger than {MAX_DIM} pixels on a side")]
    TooLarge {
        /// Width in pixels.
        width: u32,
        /// Height in pixels.
        height: u32,
    },
    /// The stride is below the format's minimum (or absurdly large).
    #[error("row stride {stride} is below the minimum {min} for this width and format")]
    Stride {
        /// The given stride.
        stride: usize,
        /// The minimum for the width and format.
        min: usize,
    },
    /// The buffer is shorter than the geometry needs.
    #[error("frame buffer holds {have} bytes, the geometry needs {need}")]
    Short {
        /// Bytes given.
        have: usize,
        /// Bytes needed.
        need: usize,
    },
}

/// How a frame is fitted into the output size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ResizeMode {
    /// Stretch to the output size, ignoring the aspect ratio.
    Stretch,
    /// Keep the aspect ratio, centre the image and fill the borders.
    Letterbox {
        /// Border colour as R, G, B pixel values (0..255), normalised like any pixel.
        fill: [u8; 3],
    },
}

/// Order of the three colour planes in the output tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelOrder {
    /// Plane 0 = R, 1 = G, 2 = B.
    Rgb,
    /// Plane 0 = B, 1 = G, 2 = R.
    Bgr,
}

/// Element type of the output tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputDType {
    /// IEEE float32.
    F32,
    /// IEEE float16 (converted from float32 with round-to-nearest-even).
    F16,
}

impl OutputDType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            OutputDType::F32 => 4,
            OutputDType::F16 => 2,
        }
    }
}

impl fmt::Display for OutputDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OutputDType::F32 => "f32",
            OutputDType::F16 => "f16",
        })
    }
}

/// What the preprocessing produces: an NCHW tensor `[n, 3, out_height, out_width]`.
///
/// Output plane `c` holds `(v / 255 - mean[c]) / std[c]`, where `v` is the
/// interpolated 0..255 value of the colour that plane holds ([`ChannelOrder`]);
/// `mean` and `std` are indexed by output plane, not by source channel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PreprocessSpec {
    /// Output width in pixels.
    pub out_width: u32,
    /// Output height in pixels.
    pub out_height: u32,
    /// Stretch or letterbox.
    pub resize: ResizeMode,
    /// Plane order of the output.
    pub channel_order: ChannelOrder,
    /// Per output plane mean, in units of 0..1 pixel values.
    pub mean: [f32; 3],
    /// Per output plane standard deviation, in units of 0..1 pixel values.
    pub std: [f32; 3],
    /// Output element type.
    pub dtype: OutputDType,
}

impl PreprocessSpec {
    /// The YOLO convention: letterbox with grey 114 borders, RGB planes,
    /// values `v / 255`.
    pub fn yolo(out_width: u32, out_height: u32, dtype: OutputDType) -> Self {
        PreprocessSpec {
            out_width,
            out_height,
            resize: ResizeMode::Letterbox {
                fill: [114, 114, 114],
            },
            channel_order: ChannelOrder::Rgb,
            mean: [0.0; 3],
            std: [1.0; 3],
            dtype,
        }
    }

    /// Elements of one output image (`3 * out_height * out_width`).
    pub fn image_len(&self) -> usize {
        3 * self.out_width as usize * self.out_height as usize
    }

    /// Checks the spec.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.out_width == 0
            || self.out_height == 0
            || self.out_width > MAX_DIM
            || self.out_height > MAX_DIM
        {
            return Err(SpecError::Size {
                width: self.out_width,
                height: self.out_height,
            });
        }
        if self.std.iter().any(|s| !s.is_finite() || *s == 0.0)
            || self.mean.iter().any(|m| !m.is_finite())
        {
            return Err(SpecError::Norm);
        }
        Ok(())
    }

    /// The affine normalisation per output plane: `out = v * mul + add` for a
    /// 0..255 value `v`. Both the CPU reference and the kernels use these
    /// exact float32 numbers.
    pub fn affine(&self) -> ([f32; 3], [f32; 3]) {
        let mut mul = [0.0f32; 3];
        let mut add = [0.0f32; 3];
        for c in 0..3 {
            mul[c] = (1.0f64 / (255.0 * self.std[c] as f64)) as f32;
            add[c] = (-(self.mean[c] as f64) / self.std[c] as f64) as f32;
        }
        (mul, add)
    }

    /// The colour (R, G, B index) that output plane `c` holds.
    pub fn plane_colour(&self, c: usize) -> usize {
        match self.channel_order {
            ChannelOrder::Rgb => c,
            ChannelOrder::Bgr => 2 - c,
        }
    }

    /// The normalised fill value of each output plane (letterbox borders);
    /// zeros for [`ResizeMode::Stretch`], which has no border.
    pub fn fill_values(&self) -> [f32; 3] {
        let (mul, add) = self.affine();
        let fill = match self.resize {
            ResizeMode::Letterbox { fill } => fill,
            ResizeMode::Stretch => return [0.0; 3],
        };
        let mut out = [0.0f32; 3];
        for c in 0..3 {
            out[c] = fill[self.plane_colour(c)] as f32 * mul[c] + add[c];
        }
        out
    }
}

/// Why a spec was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Output size zero or above [`MAX_DIM`].
    #[error("output size {width}x{height} is invalid")]
    Size {
        /// Output width.
        width: u32,
        /// Output height.
        height: u32,
    },
    /// A mean is not finite or a std is zero or not finite.
    #[error("mean must be finite and std finite and non-zero")]
    Norm,
}

/// Where a source frame lands in the output image, and how output pixels map
/// back to source pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Placement {
    /// Left edge of the resized image in the output (pixels).
    pub left: u32,
    /// Top edge of the resized image in the output (pixels).
    pub top: u32,
    /// Width of the resized image (pixels).
    pub width: u32,
    /// Height of the resized image (pixels).
    pub height: u32,
    /// Source pixels per output pixel horizontally: `src_width / width`.
    pub scale_x: f32,
    /// Source pixels per output pixel vertically: `src_height / height`.
    pub scale_y: f32,
}

impl Placement {
    /// Computes the placement of a `src_width` x `src_height` frame.
    ///
    /// Letterbox: `r = min(out_w / w, out_h / h)` (in f64), resized size
    /// `round(w * r)` x `round(h * r)` (half away from zero, at least 1, at most
    /// the output size), padding split with `left = floor((out_w - new_w) / 2)`
    /// and `top = floor((out_h - new_h) / 2)`. Stretch: the whole output.
    /// In both, `scale = src size / resized size` per axis (so the resized
    /// region maps exactly onto the source).
    pub fn new(src_width: u32, src_height: u32, spec: &PreprocessSpec) -> Self {
        let (ow, oh) = (spec.out_width, spec.out_height);
        let (width, height) = match spec.resize {
            ResizeMode::Stretch => (ow, oh),
            ResizeMode::Letterbox { .. } => {
                let r = (ow as f64 / src_width as f64).min(oh as f64 / src_height as f64);
                let nw = ((src_width as f64 * r).round() as u32).clamp(1, ow);
                let nh = ((src_height as f64 * r).round() as u32).clamp(1, oh);
                (nw, nh)
            }
        };
        Placement {
            left: (ow - width) / 2,
            top: (oh - height) / 2,
            width,
            height,
            scale_x: (src_width as f64 / width as f64) as f32,
            scale_y: (src_height as f64 / height as f64) as f32,
        }
    }

    /// Maps an output-image x coordinate (continuous, pixel edges at
    /// integers) back to the source frame, e.g. for detection boxes.
    pub fn to_source_x(&self, x: f32) -> f32 {
        (x - self.left as f32) * self.scale_x
    }

    /// Maps an output-image y coordinate back to the source frame.
    pub fn to_source_y(&self, y: f32) -> f32 {
        (y - self.top as f32) * self.scale_y
    }
}
