//! The frames a run sends: JPEG/PNG files from a folder (or one file), or
//! synthetic JPEGs of a given size. All are loaded before the run starts, so
//! no file I/O happens while measuring.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use framegate_protocol::Codec;
use serde::Serialize;

/// One encoded image ready to send.
#[derive(Debug, Clone)]
pub struct EncodedImage {
    /// File name or `synthetic-N` (shared: a frame is cloned per send).
    pub name: Arc<str>,
    /// JPEG or PNG.
    pub codec: Codec,
    /// The bytes (cheap to clone).
    pub bytes: Bytes,
}

impl EncodedImage {
    /// `image/jpeg` or `image/png`.
    pub fn media_type(&self) -> &'static str {
        match self.codec {
            Codec::Png => "image/png",
            _ => "image/jpeg",
        }
    }
}

/// Summary of the frame set, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct FrameSetInfo {
    /// Where the frames came from.
    pub source: String,
    /// Number of distinct frames (sent round robin).
    pub count: usize,
    /// Mean encoded size in bytes.
    pub mean_bytes: usize,
}

/// Frames sent round robin.
#[derive(Debug, Clone)]
pub struct FrameSet {
    /// The frames, at least one.
    pub images: Vec<EncodedImage>,
    /// For the report.
    pub info: FrameSetInfo,
}

impl FrameSet {
    fn new(images: Vec<EncodedImage>, source: String) -> Result<Self> {
        if images.is_empty() {
            bail!("no JPEG or PNG frames in {source}");
        }
        let mean_bytes = images.iter().map(|i| i.bytes.len()).sum::<usize>() / images.len();
        let info = FrameSetInfo {
            source,
            count: images.len(),
            mean_bytes,
        };
        Ok(Self { images, info })
    }

    /// Every `.jpg`/`.jpeg`/`.png` in a folder (sorted by name), or one file.
    pub fn from_path(path: &Path) -> Result<Self> {
        let mut files = Vec::new();
        if path.is_dir() {
            for e in std::fs::read_dir(path).with_context(|| format!("read {}", path.display()))? {
                files.push(e?.path());
            }
            files.sort();
        } else {
            files.push(path.to_path_buf());
        }
        let mut images = Vec::new();
        for f in files {
            let bytes = std::fs::read(&f).with_context(|| format!("read {}", f.display()))?;
            let codec = if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
                Codec::Jpeg
            } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
                Codec::Png
            } else {
                continue;
            };
            images.push(EncodedImage {
                name: f
                    .file_name()
                    .map(|n| Arc::from(n.to_string_lossy()))
                    .unwrap_or_else(|| Arc::from("")),
                codec,
                bytes: Bytes::from(bytes),
            });
        }
        Self::new(images, path.display().to_string())
    }

    /// `count` different synthetic JPEGs of `width`×`height` at `quality`:
    /// smooth gradients with a seeded texture, so they compress like a
    /// photo rather than like a flat colour.
    pub fn synthetic(width: u32, height: u32, quality: u8, count: usize) -> Result<Self> {
        if width == 0 || height == 0 || width > 16384 || height > 16384 {
            bail!("synthetic frame size {width}x{height} is out of range");
        }
        let images = (0..count.max(1))
            .map(|i| {
                let rgb = synthetic_rgb(width, height, i as u64);
                let mut out = Vec::new();
                jpeg_encoder::Encoder::new(&mut out, quality)
                    .encode(
                        &rgb,
                        width as u16,
                        height as u16,
                        jpeg_encoder::ColorType::Rgb,
                    )
                    .context("encode synthetic JPEG")?;
                Ok(EncodedImage {
                    name: Arc::from(format!("synthetic-{i}")),
                    codec: Codec::Jpeg,
                    bytes: Bytes::from(out),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Self::new(
            images,
            format!("synthetic {width}x{height} JPEG q{quality}"),
        )
    }

    /// The frame for a session's n-th send.
    pub fn pick(&self, session: usize, seq: u64) -> &EncodedImage {
        &self.images[(session + seq as usize) % self.images.len()]
    }
}

fn synthetic_rgb(width: u32, height: u32, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(width as usize * height as usize * 3);
    for y in 0..height {
        for x in 0..width {
            // xorshift texture on top of gradients.
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let n = (s & 0x1f) as u32;
            let r = (x * 255 / width + n) as u8;
            let g = (y * 255 / height + (n >> 1)) as u8;
            let b = ((x + y + seed as u32 * 40) % 256) as u8;
            out.extend_from_slice(&[r, g, b]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_frames_are_jpegs_of_the_size() {
        let set = FrameSet::synthetic(64, 48, 80, 3).unwrap();
        assert_eq!(set.images.len(), 3);
        assert_ne!(set.images[0].bytes, set.images[1].bytes);
        let b = &set.images[0].bytes;
        assert!(b.starts_with(&[0xFF, 0xD8, 0xFF]) && b.ends_with(&[0xFF, 0xD9]));
        assert_eq!(&*set.pick(1, 2).name, "synthetic-0");
    }

    #[test]
    fn folder_keeps_only_images() {
        let dir = std::env::temp_dir().join(format!("fg-load-frames-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.jpg"), [0xFF, 0xD8, 0xFF, 0xE0, 0, 0]).unwrap();
        std::fs::write(dir.join("b.png"), b"\x89PNG\r\n\x1a\nrest").unwrap();
        std::fs::write(dir.join("notes.txt"), b"hello").unwrap();
        let set = FrameSet::from_path(&dir).unwrap();
        assert_eq!(set.images.len(), 2);
        assert_eq!(set.images[1].codec, Codec::Png);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
