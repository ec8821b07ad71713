//! What a model needs around it: its `model.toml`.
//!
//! A model is an ONNX file plus this description of how to feed it (input
//! size, resize mode, channel order, normalisation) and how to read its
//! outputs (the decoder). The bundled NanoDet-g model is compiled into the
//! binary; other models are loaded from a `model.toml` on disk.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The bundled model's description.
pub const BUNDLED_SPEC: &str = include_str!("../../../models/nanodet-g/model.toml");
/// The bundled model's ONNX bytes.
pub const BUNDLED_ONNX: &[u8] = include_bytes!("../../../models/nanodet-g/nanodet-g-416.onnx");
/// The bundled model's labels, one per line.
pub const BUNDLED_LABELS: &str = include_str!("../../../models/nanodet-g/labels.txt");

/// A `model.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Name the model is served under.
    pub name: String,
    /// The ONNX file, relative to the `model.toml`.
    pub file: PathBuf,
    /// SHA-256 of the ONNX file, hex; checked at load.
    pub sha256: String,
    /// Class labels file (one per line), relative to the `model.toml`.
    pub labels: PathBuf,
    /// How to feed the model.
    pub input: InputSpec,
    /// How to read the model's outputs.
    pub decoder: DecoderSpec,
    /// Free text: where the model comes from and its licence.
    #[serde(default)]
    pub source: String,
}

/// Channel order of the model's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelOrder {
    /// Red, green, blue planes.
    Rgb,
    /// Blue, green, red planes.
    Bgr,
}

/// How a frame is fitted to the model's input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResizeMode {
    /// Scale each axis independently to the input size.
    Stretch,
    /// Keep the aspect ratio, centre, pad with `pad_value`.
    Letterbox,
}

/// The model's input tensor: float32 `[batch, 3, height, width]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Input tensor name.
    pub name: String,
    /// Width in pixels (a multiple of 32 for most detectors).
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Plane order.
    pub channel_order: ChannelOrder,
    /// Resize mode.
    pub resize: ResizeMode,
    /// Pixel value (0..255) of the letterbox padding. Default 114.
    #[serde(default = "default_pad")]
    pub pad_value: u8,
    /// Per channel (in the model's channel order), subtracted from 0..255 pixels.
    pub mean: [f32; 3],
    /// Per channel, divides after the mean is subtracted.
    pub std: [f32; 3],
}

fn default_pad() -> u8 {
    114
}

/// How the outputs become boxes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum DecoderSpec {
    /// NanoDet: per stride, class scores `[B, cells, C]` (sigmoid applied) and
    /// box distributions `[B, cells, 4 × (reg_max + 1)]`.
    Nanodet {
        /// Feature strides, e.g. `[8, 16, 32]`.
        strides: Vec<u32>,
        /// Highest bin index of the box distribution (bins = reg_max + 1).
        reg_max: u32,
        /// Class-score output names, one per stride.
        cls_outputs: Vec<String>,
        /// Box-distribution output names, one per stride.
        box_outputs: Vec<String>,
        /// Minimum score kept.
        score_threshold: f32,
        /// IoU above which a lower-scoring box of the same class is removed.
        nms_iou: f32,
        /// Most boxes returned per frame.
        #[serde(default = "default_max_det")]
        max_detections: usize,
    },
    /// YOLOv8 / YOLO11 exports: one output `[B, 4 + C, N]`, rows cx, cy, w, h
    /// in input pixels then per-class scores, no objectness.
    Yolov8 {
        /// Output name.
        output: String,
        /// Minimum score kept.
        score_threshold: f32,
        /// IoU above which a lower-scoring box of the same class is removed.
        nms_iou: f32,
        /// Most boxes returned per frame.
        #[serde(default = "default_max_det")]
        max_detections: usize,
    },
}

fn default_max_det() -> usize {
    100
}

/// Problems loading a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `model.toml` is not valid.
    #[error("invalid model description {path}: {message}")]
    Spec {
        /// The file.
        path: String,
        /// Why.
        message: String,
    },
    /// The ONNX file is not the one the description names.
    #[error("model file {path} has sha256 {actual}, expected {expected}: the file is corrupt or not the described model")]
    Checksum {
        /// The file.
        path: String,
        /// Expected hash.
        expected: String,
        /// Actual hash.
        actual: String,
    },
}

/// A model ready to load: its description, ONNX bytes and labels.
#[derive(Debug, Clone)]
pub struct LoadedModel {
    /// The description.
    pub spec: ModelSpec,
    /// The ONNX file's contents.
    pub onnx: std::sync::Arc<[u8]>,
    /// Class labels.
    pub labels: Vec<String>,
}

impl ModelSpec {
    /// Parses and checks a `model.toml` text.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ModelError> {
        let spec: ModelSpec = toml::from_str(text).map_err(|e| ModelError::Spec {
            path: origin.to_string(),
            message: e.to_string(),
        })?;
        spec.check(origin)?;
        Ok(spec)
    }

    fn check(&self, origin: &str) -> Result<(), ModelError> {
        let bad = |message: String| ModelError::Spec {
            path: origin.to_string(),
            message,
        };
        if self.input.width == 0 || self.input.height == 0 {
            return Err(bad("input width and height must be positive".into()));
        }
        if self.input.std.contains(&0.0) {
            return Err(bad("input.std must not contain 0".into()));
        }
        if let DecoderSpec::Nanodet {
            strides,
            cls_outputs,
            box_outputs,
            ..
        } = &self.decoder
        {
            if strides.is_empty()
                || strides.len() != cls_outputs.len()
                || strides.len() != box_outputs.len()
            {
                return Err(bad(
                    "decoder.strides, cls_outputs and box_outputs must have the same, non-zero length"
                        .into(),
                ));
            }
            for s in strides {
                if *s == 0
                    || !self.input.width.is_multiple_of(*s)
                    || !self.input.height.is_multiple_of(*s)
                {
                    return Err(bad(format!(
                        "input size {}x{} is not a multiple of stride {s}",
                        self.input.width, self.input.height
                    )));
                }
            }
        }
        Ok(())
    }

    /// Score threshold of the decoder.
    pub fn score_threshold(&self) -> f32 {
        match &self.decoder {
            DecoderSpec::Nanodet {
                score_threshold, ..
            }
            | DecoderSpec::Yolov8 {
                score_threshold, ..
            } => *score_threshold,
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn parse_labels(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

impl LoadedModel {
    /// The model compiled into the binary (NanoDet-g, COCO).
    pub fn bundled() -> Result<Self, ModelError> {
        let spec = ModelSpec::parse(BUNDLED_SPEC, "bundled model.toml")?;
        Self::assemble(
            spec,
            BUNDLED_ONNX.into(),
            parse_labels(BUNDLED_LABELS),
            "bundled",
        )
    }

    /// A model described by the `model.toml` at `path`.
    pub fn from_spec_file(path: &Path) -> Result<Self, ModelError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|source| ModelError::Read {
                path: p.to_path_buf(),
                source,
            })
        };
        let text = String::from_utf8_lossy(&read(path)?).into_owned();
        let spec = ModelSpec::parse(&text, &path.display().to_string())?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let onnx = read(&dir.join(&spec.file))?;
        let labels = parse_labels(&String::from_utf8_lossy(&read(&dir.join(&spec.labels))?));
        let origin = dir.join(&spec.file).display().to_string();
        Self::assemble(spec, onnx.into(), labels, &origin)
    }

    fn assemble(
        spec: ModelSpec,
        onnx: std::sync::Arc<[u8]>,
        labels: Vec<String>,
        origin: &str,
    ) -> Result<Self, ModelError> {
        let actual = sha256_hex(&onnx);
        if !actual.eq_ignore_ascii_case(&spec.sha256) {
            return Err(ModelError::Checksum {
                path: origin.to_string(),
                expected: spec.sha256.clone(),
                actual,
            });
        }
        Ok(Self { spec, onnx, labels })
    }

    /// The label of a class id, or `class_N` when the labels file is short.
    pub fn label(&self, class_id: u32) -> String {
        self.labels
            .get(class_id as usize)
            .cloned()
            .unwrap_or_else(|| format!("class_{class_id}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_model_checks_out() {
        let m = LoadedModel::bundled().unwrap();
        assert_eq!(m.labels.len(), 80);
        assert_eq!(m.labels[16], "dog");
        assert_eq!(m.spec.input.width % 32, 0);
    }

    #[test]
    fn corrupt_model_is_refused_with_checksum_error() {
        let spec = ModelSpec::parse(BUNDLED_SPEC, "x").unwrap();
        let mut bytes = BUNDLED_ONNX.to_vec();
        bytes[1000] ^= 0xff;
        let err = LoadedModel::assemble(spec, bytes.into(), vec![], "x").unwrap_err();
        assert!(matches!(err, ModelError::Checksum { .. }), "{err}");
    }
}
