//! Images to send: encoded JPEG/PNG files or raw pixels.

use bytes::Bytes;
use framegate_protocol::Codec;

use crate::ClientError;

/// One image, with its codec and size.
///
/// ```
/// use framegate_client::Image;
/// let raw = Image::rgb8(2, 1, vec![255, 0, 0, 0, 255, 0]).unwrap();
/// assert_eq!((raw.width(), raw.height()), (2, 1));
/// assert!(Image::encoded(vec![1, 2, 3]).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct Image {
    pub(crate) codec: Codec,
    pub(crate) width: u32,
    pub(crate) height: u32,
    pub(crate) payload: Bytes,
}

impl Image {
    /// A JPEG or PNG file's bytes; the size is read from its header.
    pub fn encoded(bytes: impl Into<Bytes>) -> Result<Image, ClientError> {
        let payload = bytes.into();
        let (codec, (width, height)) = if payload.starts_with(&[0xFF, 0xD8]) {
            (Codec::Jpeg, jpeg_size(&payload)?)
        } else if payload.starts_with(b"\x89PNG\r\n\x1a\n") {
            (Codec::Png, png_size(&payload)?)
        } else {
            return Err(ClientError::InvalidImage("not a JPEG or PNG file".into()));
        };
        Ok(Image {
            codec,
            width,
            height,
            payload,
        })
    }

    /// Reads a JPEG or PNG file.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), framegate_client::ClientError> {
    /// let img = framegate_client::Image::from_file("dog.jpg")?;
    /// # Ok(()) }
    /// ```
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Image, ClientError> {
        let path = path.as_ref();
        let bytes = std::fs::read(path)
            .map_err(|e| ClientError::InvalidImage(format!("{}: {e}", path.display())))?;
        Image::encoded(bytes)
    }

    /// Packed 8-bit RGB pixels, `width × height × 3` bytes, rows top to bottom.
    pub fn rgb8(width: u32, height: u32, pixels: impl Into<Bytes>) -> Result<Image, ClientError> {
        let payload = pixels.into();
        if payload.len() as u64 != u64::from(width) * u64::from(height) * 3 {
            return Err(ClientError::InvalidImage(format!(
                "rgb8 {width}x{height} needs {} bytes, got {}",
                u64::from(width) * u64::from(height) * 3,
                payload.len()
            )));
        }
        Ok(Image {
            codec: Codec::Rgb8,
            width,
            height,
            payload,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The codec.
    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// The encoded bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.payload
    }
}

fn jpeg_size(b: &[u8]) -> Result<(u32, u32), ClientError> {
    let mut i = 2;
    while i + 9 < b.len() {
        if b[i] != 0xFF {
            i += 1;
            continue;
        }
        let marker = b[i + 1];
        if marker == 0xFF || (0xD0..=0xD9).contains(&marker) || marker == 0x01 {
            i += 2;
            continue;
        }
        let len = usize::from(u16::from_be_bytes([b[i + 2], b[i + 3]]));
        if matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
            let h = u16::from_be_bytes([b[i + 5], b[i + 6]]);
            let w = u16::from_be_bytes([b[i + 7], b[i + 8]]);
            return Ok((u32::from(w), u32::from(h)));
        }
        i += 2 + len;
    }
    Err(ClientError::InvalidImage("no JPEG frame header".into()))
}

fn png_size(b: &[u8]) -> Result<(u32, u32), ClientError> {
    if b.len() < 24 || &b[12..16] != b"IHDR" {
        return Err(ClientError::InvalidImage("truncated PNG header".into()));
    }
    Ok((
        u32::from_be_bytes([b[16], b[17], b[18], b[19]]),
        u32::from_be_bytes([b[20], b[21], b[22], b[23]]),
    ))
}
