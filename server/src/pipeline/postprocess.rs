//! Postprocess: model outputs → boxes in the frame's own pixels.
//!
//! Decoders are chosen by the model's `model.toml`: NanoDet (per-stride class
//! scores plus distance distributions) and YOLOv8/YOLO11 exports (one
//! `[B, 4 + C, N]` output). Both end in class-aware non-maximum suppression
//! and the mapping back through the preprocess [`Placement`].

use crate::backend::spec::DecoderSpec;
use crate::backend::TensorView;
use crate::error::GatewayError;

use super::preprocess::Placement;

/// One detected box, in frame pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawDetection {
    /// Class index.
    pub class_id: u32,
    /// Confidence, 0..1.
    pub score: f32,
    /// Left, top, right, bottom.
    pub xyxy: [f32; 4],
}

/// Intersection over union of two xyxy boxes.
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union <= 0.0 {
        0.0
    } else {
        inter / union
    }
}

/// Class-aware non-maximum suppression: highest score first, a box is
/// dropped when it overlaps a kept box of the same class by more than
/// `iou_threshold`. Keeps at most `max` boxes.
pub fn nms(mut cands: Vec<RawDetection>, iou_threshold: f32, max: usize) -> Vec<RawDetection> {
    cands.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<RawDetection> = Vec::new();
    for c in cands {
        if kept.len() >= max {
            break;
        }
        if kept
            .iter()
            .all(|k| k.class_id != c.class_id || iou(&k.xyxy, &c.xyxy) <= iou_threshold)
        {
            kept.push(c);
        }
    }
    kept
}

fn find<'a>(outputs: &'a [TensorView<'a>], name: &str) -> Result<&'a TensorView<'a>, GatewayError> {
    outputs
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| GatewayError::Backend(format!("model output {name:?} is missing")))
}

/// Decodes batch element `index` of `outputs` into boxes in frame pixels.
pub fn decode(
    spec: &DecoderSpec,
    input_size: (u32, u32),
    outputs: &[TensorView<'_>],
    index: usize,
    place: &Placement,
) -> Result<Vec<RawDetection>, GatewayError> {
    let (cands, iou_t, max) = match spec {
        DecoderSpec::Nanodet {
            strides,
            reg_max,
            cls_outputs,
            box_outputs,
            score_threshold,
            nms_iou,
            max_detections,
        } => {
            let mut cands = Vec::new();
            for ((stride, cls_name), box_name) in strides.iter().zip(cls_outputs).zip(box_outputs) {
                let cls = find(outputs, cls_name)?;
                let bx = find(outputs, box_name)?;
                nanodet_level(
                    cls,
                    bx,
                    index,
                    *stride,
                    *reg_max as usize + 1,
                    input_size,
                    *score_threshold,
                    &mut cands,
                )?;
            }
            (cands, *nms_iou, *max_detections)
        }
        DecoderSpec::Yolov8 {
            output,
            score_threshold,
            nms_iou,
            max_detections,
        } => {
            let out = find(outputs, output)?;
            (
                yolov8(out, index, *score_threshold)?,
                *nms_iou,
                *max_detections,
            )
        }
    };
    let mut kept = nms(cands, iou_t, max);
    for d in &mut kept {
        let (x1, y1) = place.to_frame(d.xyxy[0], d.xyxy[1]);
        let (x2, y2) = place.to_frame(d.xyxy[2], d.xyxy[3]);
        d.xyxy = [x1, y1, x2, y2];
    }
    Ok(kept)
}

#[allow(clippy::too_many_arguments)]
fn nanodet_level(
    cls: &TensorView<'_>,
    bx: &TensorView<'_>,
    index: usize,
    stride: u32,
    bins: usize,
    (in_w, in_h): (u32, u32),
    threshold: f32,
    cands: &mut Vec<RawDetection>,
) -> Result<(), GatewayError> {
    let gw = (in_w / stride) as usize;
    let gh = (in_h / stride) as usize;
    let cells = gw * gh;
    let shape_err = |what: &str, shape: &[usize]| {
        GatewayError::Backend(format!(
            "output {what} has shape {shape:?}, expected [batch, {cells}, …]"
        ))
    };
    if cls.shape.len() != 3 || cls.shape[1] != cells || cls.shape[0] <= index {
        return Err(shape_err(&cls.name, &cls.shape));
    }
    if bx.shape.len() != 3
        || bx.shape[1] != cells
        || bx.shape[2] != 4 * bins
        || bx.shape[0] <= index
    {
        return Err(shape_err(&bx.name, &bx.shape));
    }
    let classes = cls.shape[2];
    let cls = &cls.data[index * cells * classes..(index + 1) * cells * classes];
    let bx = &bx.data[index * cells * 4 * bins..(index + 1) * cells * 4 * bins];
    let s = stride as f32;
    for cell in 0..cells {
        let scores = &cls[cell * classes..(cell + 1) * classes];
        // Best class per cell, as NanoDet's own demo decodes it.
        let (mut best, mut class_id) = (f32::NEG_INFINITY, 0usize);
        for (c, &v) in scores.iter().enumerate() {
            if v > best {
                best = v;
                class_id = c;
            }
        }
        if best <= threshold {
            continue;
        }
        let (row, col) = (cell / gw, cell % gw);
        let (cx, cy) = ((col as f32 + 0.5) * s, (row as f32 + 0.5) * s);
        let dist = &bx[cell * 4 * bins..(cell + 1) * 4 * bins];
        let mut d = [0f32; 4];
        for (side, out) in d.iter_mut().enumerate() {
            let logits = &dist[side * bins..(side + 1) * bins];
            let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let (mut sum, mut expect) = (0f32, 0f32);
            for (k, &l) in logits.iter().enumerate() {
                let e = (l - m).exp();
                sum += e;
                expect += e * k as f32;
            }
            *out = expect / sum * s;
        }
        let xyxy = [
            (cx - d[0]).max(0.0),
            (cy - d[1]).max(0.0),
            (cx + d[2]).min(in_w as f32),
            (cy + d[3]).min(in_h as f32),
        ];
        cands.push(RawDetection {
            class_id: class_id as u32,
            score: best,
            xyxy,
        });
    }
    Ok(())
}

fn yolov8(
    out: &TensorView<'_>,
    index: usize,
    threshold: f32,
) -> Result<Vec<RawDetection>, GatewayError> {
    if out.shape.len() != 3 || out.shape[1] < 5 || out.shape[0] <= index {
        return Err(GatewayError::Backend(format!(
            "output {} has shape {:?}, expected [batch, 4 + classes, anchors]",
            out.name, out.shape
        )));
    }
    let (rows, n) = (out.shape[1], out.shape[2]);
    let data = &out.data[index * rows * n..(index + 1) * rows * n];
    let at = |r: usize, a: usize| data[r * n + a];
    let mut cands = Vec::new();
    for a in 0..n {
        let (mut best, mut best_c) = (f32::NEG_INFINITY, 0usize);
        for c in 0..rows - 4 {
            let v = at(4 + c, a);
            if v > best {
                best = v;
                best_c = c;
            }
        }
        if best <= threshold {
            continue;
        }
        let (cx, cy, w, h) = (at(0, a), at(1, a), at(2, a), at(3, a));
        cands.push(RawDetection {
            class_id: best_c as u32,
            score: best,
            xyxy: [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0],
        });
    }
    Ok(cands)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(class_id: u32, score: f32, xyxy: [f32; 4]) -> RawDetection {
        RawDetection {
            class_id,
            score,
            xyxy,
        }
    }

    #[test]
    fn iou_basics() {
        assert_eq!(iou(&[0.0, 0.0, 2.0, 2.0], &[0.0, 0.0, 2.0, 2.0]), 1.0);
        assert_eq!(iou(&[0.0, 0.0, 1.0, 1.0], &[2.0, 2.0, 3.0, 3.0]), 0.0);
        assert!((iou(&[0.0, 0.0, 2.0, 2.0], &[1.0, 0.0, 3.0, 2.0]) - 1.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn nms_is_class_aware() {
        let kept = nms(
            vec![
                det(0, 0.5, [0.0, 0.0, 10.0, 10.0]),
                det(0, 0.9, [1.0, 1.0, 10.0, 10.0]),
                det(1, 0.8, [0.0, 0.0, 10.0, 10.0]),
                det(0, 0.7, [50.0, 50.0, 60.0, 60.0]),
            ],
            0.5,
            100,
        );
        let scores: Vec<f32> = kept.iter().map(|d| d.score).collect();
        assert_eq!(scores, vec![0.9, 0.8, 0.7]);
    }

    #[test]
    fn nanodet_single_cell_decodes_expected_box() {
        // A 32x32 input with stride 32: one cell centred at (16, 16). Bins
        // peaked at index 2 on every side → distance 2 * 32 = 64, clipped.
        let bins = 3usize;
        let mut dist = vec![-50.0f32; 4 * bins];
        for side in 0..4 {
            dist[side * bins + if side < 2 { 0 } else { 1 }] = 50.0;
        }
        let cls = TensorView {
            name: "c".into(),
            shape: vec![1, 1, 2],
            data: &[0.1, 0.8],
        };
        let bx = TensorView {
            name: "b".into(),
            shape: vec![1, 1, 4 * bins],
            data: &dist,
        };
        let spec = DecoderSpec::Nanodet {
            strides: vec![32],
            reg_max: 2,
            cls_outputs: vec!["c".into()],
            box_outputs: vec!["b".into()],
            score_threshold: 0.35,
            nms_iou: 0.5,
            max_detections: 10,
        };
        let place = Placement {
            scale_x: 0.5,
            scale_y: 0.5,
            pad_left: 0.0,
            pad_top: 0.0,
            frame_width: 64,
            frame_height: 64,
        };
        let out = decode(&spec, (32, 32), &[cls, bx], 0, &place).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].class_id, 1);
        // Input box: left/top distance 0 → (16,16); right/bottom 32 → clipped to 32.
        assert_eq!(out[0].xyxy, [32.0, 32.0, 64.0, 64.0]);
    }

    #[test]
    fn missing_output_is_a_backend_error() {
        let spec = DecoderSpec::Yolov8 {
            output: "output0".into(),
            score_threshold: 0.25,
            nms_iou: 0.45,
            max_detections: 10,
        };
        let place = Placement {
            scale_x: 1.0,
            scale_y: 1.0,
            pad_left: 0.0,
            pad_top: 0.0,
            frame_width: 1,
            frame_height: 1,
        };
        assert!(matches!(
            decode(&spec, (64, 64), &[], 0, &place),
            Err(GatewayError::Backend(_))
        ));
    }
}
