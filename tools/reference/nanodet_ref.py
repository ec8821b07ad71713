#!/usr/bin/env python3
"""Independent NanoDet-g reference: Pillow + NumPy + onnxruntime (Python).

This is the yardstick the Rust gateway's NanoDet pipeline is compared against
(same detections, boxes at IoU >= 0.9).  It shares no code with the gateway.

Pipeline (see models/nanodet-g/model.toml):
  1. Pillow: open, apply the EXIF orientation, convert to RGB, resize to
     416x416 with ``Image.BILINEAR`` (plain stretch, no letterbox).
  2. RGB -> BGR, float32, ``(x - [103.53, 116.28, 123.675]) / [57.375, 57.12, 58.395]``
     per B, G, R channel (x in 0..255), NCHW [1, 3, 416, 416], input ``images``.
  3. onnxruntime (CPU).  Outputs cls_s{8,16,32} [1, cells, 80] (sigmoid
     scores) and box_s{8,16,32} [1, cells, 44] (4 sides l,t,r,b x 11 bins).
  4. Decode per stride s (grid g = 416 / s, cells in row-major order):
     cell i -> centre ((i % g + 0.5) * s, (i // g + 0.5) * s); per side
     softmax over the 11 bins, distance = sum(p_k * k) * s;
     box = (cx - l, cy - t, cx + r, cy + b).  Each cell keeps its best class
     (argmax of the 80 scores) if that score > 0.35.
  5. Class-aware NMS at IoU 0.5 (greedy, by descending score, boxes of
     different classes never suppress each other), then scale to the original
     frame (x * W / 416, y * H / 416) and clip to [0, W] x [0, H].

Usage:
  PY=$(scripts/python-env.sh | tail -n 1)
  $PY tools/reference/nanodet_ref.py --model models/nanodet-g/nanodet-g-416.onnx \
      --labels models/nanodet-g/labels.txt server/tests/data/dog.jpg ...

Prints one JSON object per image, one per line:
  {"image": path, "width": W, "height": H,
   "detections": [{"class_id": int, "label": str, "score": float,
                   "box": [x1, y1, x2, y2]}, ...]}   (sorted by score, desc)
"""
import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageOps

INPUT_SIZE = 416
MEAN_BGR = np.array([103.53, 116.28, 123.675], dtype=np.float32)
STD_BGR = np.array([57.375, 57.12, 58.395], dtype=np.float32)
STRIDES = (8, 16, 32)
REG_MAX = 10  # 11 bins: 0..10
NUM_CLASSES = 80
SCORE_THRESHOLD = 0.35
NMS_IOU = 0.5


def load_image(path):
    img = Image.open(path)
    img = ImageOps.exif_transpose(img)
    return img.convert("RGB")


def preprocess(img):
    resized = img.resize((INPUT_SIZE, INPUT_SIZE), Image.BILINEAR)
    rgb = np.asarray(resized, dtype=np.float32)  # HWC, RGB, 0..255
    bgr = rgb[:, :, ::-1]
    norm = (bgr - MEAN_BGR) / STD_BGR
    return np.ascontiguousarray(norm.transpose(2, 0, 1)[None], dtype=np.float32)


def softmax(x, axis):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def decode(outputs, score_threshold=SCORE_THRESHOLD):
    """outputs: name -> array for one image ([cells, C]).  Returns (boxes
    [N,4] in 416-space, scores [N], class_ids [N]) before NMS."""
    all_boxes, all_scores, all_cls = [], [], []
    bins = np.arange(REG_MAX + 1, dtype=np.float32)
    for s in STRIDES:
        grid = INPUT_SIZE // s
        cls = outputs[f"cls_s{s}"]
        box = outputs[f"box_s{s}"]
        assert cls.shape == (grid * grid, NUM_CLASSES), cls.shape
        assert box.shape == (grid * grid, 4 * (REG_MAX + 1)), box.shape
        class_ids = cls.argmax(axis=1)
        scores = cls[np.arange(cls.shape[0]), class_ids]
        keep = np.nonzero(scores > score_threshold)[0]
        if keep.size == 0:
            continue
        prob = softmax(box[keep].reshape(-1, 4, REG_MAX + 1), axis=2)
        dist = (prob * bins).sum(axis=2) * s  # [k, 4] = l, t, r, b
        cx = (keep % grid + 0.5) * s
        cy = (keep // grid + 0.5) * s
        boxes = np.stack([cx - dist[:, 0], cy - dist[:, 1],
                          cx + dist[:, 2], cy + dist[:, 3]], axis=1)
        all_boxes.append(boxes)
        all_scores.append(scores[keep])
        all_cls.append(class_ids[keep])
    if not all_boxes:
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64)
    return (np.concatenate(all_boxes).astype(np.float32),
            np.concatenate(all_scores).astype(np.float32),
            np.concatenate(all_cls).astype(np.int64))


def iou_one_to_many(b, bs):
    ix1 = np.maximum(b[0], bs[:, 0])
    iy1 = np.maximum(b[1], bs[:, 1])
    ix2 = np.minimum(b[2], bs[:, 2])
    iy2 = np.minimum(b[3], bs[:, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_b = max(b[2] - b[0], 0) * max(b[3] - b[1], 0)
    area_bs = np.clip(bs[:, 2] - bs[:, 0], 0, None) * np.clip(bs[:, 3] - bs[:, 1], 0, None)
    union = area_b + area_bs - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms_class_aware(boxes, scores, class_ids, iou_threshold=NMS_IOU):
    order = np.argsort(-scores, kind="stable")
    keep = []
    suppressed = np.zeros(len(order), dtype=bool)
    for pos, i in enumerate(order):
        if suppressed[pos]:
            continue
        keep.append(i)
        rest = order[pos + 1:]
        same = class_ids[rest] == class_ids[i]
        ious = iou_one_to_many(boxes[i], boxes[rest])
        suppressed[pos + 1:] |= same & (ious > iou_threshold)
    return np.array(keep, dtype=np.int64)


def detect(session, img, labels, score_threshold=SCORE_THRESHOLD, iou=NMS_IOU):
    w, h = img.size
    x = preprocess(img)
    names = [o.name for o in session.get_outputs()]
    outs = dict(zip(names, session.run(None, {"images": x})))
    outs = {k: v[0] for k, v in outs.items()}
    boxes, scores, class_ids = decode(outs, score_threshold)
    keep = nms_class_aware(boxes, scores, class_ids, iou)
    dets = []
    for i in keep:
        x1, y1, x2, y2 = boxes[i].astype(np.float64)
        x1 = min(max(x1 * w / INPUT_SIZE, 0.0), w)
        x2 = min(max(x2 * w / INPUT_SIZE, 0.0), w)
        y1 = min(max(y1 * h / INPUT_SIZE, 0.0), h)
        y2 = min(max(y2 * h / INPUT_SIZE, 0.0), h)
        cid = int(class_ids[i])
        dets.append({
            "class_id": cid,
            "label": labels[cid] if cid < len(labels) else str(cid),
            "score": round(float(scores[i]), 5),
            "box": [round(v, 2) for v in (x1, y1, x2, y2)],
        })
    dets.sort(key=lambda d: -d["score"])
    return {"width": w, "height": h, "detections": dets}


def main():
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.path.join(repo, "models/nanodet-g/nanodet-g-416.onnx"))
    ap.add_argument("--labels", default=os.path.join(repo, "models/nanodet-g/labels.txt"))
    ap.add_argument("--score-threshold", type=float, default=SCORE_THRESHOLD)
    ap.add_argument("--nms-iou", type=float, default=NMS_IOU)
    ap.add_argument("images", nargs="+")
    args = ap.parse_args()
    labels = [l.strip() for l in open(args.labels, encoding="utf-8") if l.strip()]
    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(args.model, so, providers=["CPUExecutionProvider"])
    for path in args.images:
        result = detect(session, load_image(path), labels, args.score_threshold, args.nms_iou)
        print(json.dumps({"image": path, **result}))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
