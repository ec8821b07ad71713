#!/usr/bin/env python3
"""Build a tiny YOLOv8/YOLO11-style ONNX test model with the `onnx` helper API.

No weights, no torch: the output is a fixed table, so a test can predict the
exact detections the gateway's YOLO decoder must produce.

YOLOv8 / YOLO11 export convention (what a real `yolo export format=onnx`
model expects and what framegate's "yolov8" decoder implements):
  * input ``images`` float32 [batch, 3, H, W] (NCHW), here H = W = 64
  * pre-processing: letterbox to the input size keeping the aspect ratio
    (scale r = min(W / w0, H / h0), resized size (round(w0 r), round(h0 r)),
    centred, pad value 114 on every channel), RGB channel order, x / 255
  * output ``output0`` float32 [batch, 4 + C, N]: for each of the N anchors
    (columns) the rows are cx, cy, w, h (box centre and size in the
    letterboxed input's pixels) followed by the C class scores (already
    sigmoid probabilities).  There is no objectness row: the confidence of an
    anchor is its best class score.
  * post-processing: per anchor take the best class, keep it if its score >
    the threshold, box = (cx - w/2, cy - h/2, cx + w/2, cy + h/2), class-aware
    NMS, then undo the letterbox ((x - pad_x) / r, (y - pad_y) / r) and clip
    to the original frame.

This model: C = 3 classes, N = 6 anchors, input 64 x 64, opset 13.  The output
is the constant TABLE below (rows cx, cy, w, h, s0, s1, s2; one column per
anchor), except that the three class scores of anchor 0 are multiplied by
``m``, the mean of all 3*64*64 input values of that batch item:

    m[b]            = ReduceMean(images[b])                       (keepdims)
    output0[b]      = TABLE * (1 + MASK * (m[b] - 1))
    MASK[r][a]      = 1 for r in 4..6 and a == 0, else 0

so output0 depends on the input (and differs between batch items), while
every other value is exact.  Runs under onnxruntime with any batch size.

Intended scenarios with a 0.25 score threshold and NMS IoU 0.45 / 0.5:
  anchor 0  class 0, score 0.9 * m   (kept iff 0.9 m > threshold)
  anchor 1  class 1, score 0.8       kept
  anchor 2  class 1, score 0.7       suppressed by anchor 1 (same class, IoU ~0.85)
  anchor 3  class 2, score 0.6       kept: overlaps anchor 1 but another class
  anchor 4  class 2, score 0.2       below threshold
  anchor 5  class 1, score 0.55      kept; reaches into the top padding band
                                     of a landscape frame (y1 = 4), so it is
                                     clipped after un-letterboxing

Usage:
  make_yolo_onnx.py --out path/to/yolo-test.onnx       # write the model
  make_yolo_onnx.py --print-expected                   # print the table as JSON
  make_yolo_onnx.py --out m.onnx --check               # also run it in onnxruntime
"""
import argparse
import json
import sys

INPUT_SIZE = 64
NUM_CLASSES = 3
# anchor: (cx, cy, w, h, [s0, s1, s2]) in the 64x64 letterboxed input space
ANCHORS = [
    (32.0, 32.0, 20.0, 20.0, [0.90, 0.05, 0.00]),
    (16.0, 16.0, 12.0, 12.0, [0.10, 0.80, 0.00]),
    (17.0, 16.0, 12.0, 12.0, [0.05, 0.70, 0.00]),
    (18.0, 17.0, 12.0, 12.0, [0.00, 0.00, 0.60]),
    (48.0, 48.0, 10.0, 8.0, [0.10, 0.10, 0.20]),
    (50.0, 12.0, 8.0, 16.0, [0.30, 0.55, 0.20]),
]
MEAN_SCALED_ANCHOR = 0
N = len(ANCHORS)
ROWS = 4 + NUM_CLASSES


def table():
    """[4 + C][N] nested lists (row-major, as output0[b] is laid out)."""
    t = [[0.0] * N for _ in range(ROWS)]
    for a, (cx, cy, w, h, scores) in enumerate(ANCHORS):
        for r, v in enumerate([cx, cy, w, h] + scores):
            t[r][a] = v
    return t


def expected_json():
    return {
        "input": "images",
        "input_shape": ["batch", 3, INPUT_SIZE, INPUT_SIZE],
        "output": "output0",
        "output_shape": ["batch", ROWS, N],
        "input_size": [INPUT_SIZE, INPUT_SIZE],
        "num_classes": NUM_CLASSES,
        "num_anchors": N,
        "rows": ["cx", "cy", "w", "h"] + [f"score_{c}" for c in range(NUM_CLASSES)],
        "table": table(),
        "anchors": [{"cx": cx, "cy": cy, "w": w, "h": h, "scores": s} for cx, cy, w, h, s in ANCHORS],
        "mean_scaled_anchor": MEAN_SCALED_ANCHOR,
        "mean_scaling": "scores of anchor 0 are multiplied by mean(images[b]) over all 3*64*64 values",
        "preprocess": {"letterbox": True, "pad_value": 114, "channel_order": "rgb", "scale": 1.0 / 255.0},
    }


def build(path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    t = np.array(table(), dtype=np.float32)[None]          # [1, ROWS, N]
    mask = np.zeros_like(t)
    mask[0, 4:, MEAN_SCALED_ANCHOR] = 1.0
    inits = [
        numpy_helper.from_array(t, "table"),
        numpy_helper.from_array(mask, "mask"),
        numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one"),
        numpy_helper.from_array(np.array([-1, 1, 1], dtype=np.int64), "mean_shape"),
    ]
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean4"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["mean4", "mean_shape"], ["mean"]),          # [B,1,1]
        helper.make_node("Sub", ["mean", "one"], ["mean_m1"]),                   # m - 1
        helper.make_node("Mul", ["mask", "mean_m1"], ["masked"]),                # [B,ROWS,N]
        helper.make_node("Add", ["masked", "one"], ["factor"]),                  # 1 + mask (m-1)
        helper.make_node("Mul", ["table", "factor"], ["output0"]),               # [B,ROWS,N]
    ]
    graph = helper.make_graph(
        nodes, "yolo-test",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, INPUT_SIZE, INPUT_SIZE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, ["batch", ROWS, N])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="framegate tools/reference/make_yolo_onnx.py")
    model.ir_version = 8
    model.doc_string = "framegate YOLOv8-style test graph: constant table, anchor 0 scores x input mean"
    for k, v in {"framegate.decoder": "yolov8", "names": "{0: 'class0', 1: 'class1', 2: 'class2'}",
                 "imgsz": f"[{INPUT_SIZE}, {INPUT_SIZE}]", "stride": "32", "task": "detect"}.items():
        model.metadata_props.add(key=k, value=v)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)


def check(path):
    import numpy as np
    import onnxruntime as ort

    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    t = np.array(table(), dtype=np.float32)
    for batch in (1, 4):
        rng = np.random.default_rng(batch)
        x = rng.random((batch, 3, INPUT_SIZE, INPUT_SIZE), dtype=np.float32)
        x[0] = 0.5
        (y,) = s.run(None, {"images": x})
        assert y.shape == (batch, ROWS, N), y.shape
        for b in range(batch):
            m = float(x[b].mean(dtype=np.float64))
            want = t.copy()
            want[4:, MEAN_SCALED_ANCHOR] *= m
            assert np.allclose(y[b], want, rtol=1e-5, atol=1e-6), (b, y[b], want)
    print(f"check ok: {path} runs with batch 1 and 4 (onnxruntime {ort.__version__})", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="where to write the .onnx")
    ap.add_argument("--print-expected", action="store_true", help="print the constant table as JSON")
    ap.add_argument("--check", action="store_true", help="run the written model in onnxruntime")
    args = ap.parse_args()
    if not args.out and not args.print_expected:
        ap.error("give --out and/or --print-expected")
    if args.out:
        build(args.out)
        if args.check:
            check(args.out)
    if args.print_expected:
        print(json.dumps(expected_json()))


if __name__ == "__main__":
    main()
