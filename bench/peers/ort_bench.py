#!/usr/bin/env python3
"""The limits: ONNX Runtime alone on NanoDet-g, in one process.

1. inference only: a fixed preprocessed tensor, no decode, no network, at
   batch sizes 1, 2, 4, 8 and two thread layouts on this machine's cores:
   one session with N intra-op threads, or N sessions with 1 thread each
   driven by N Python threads (ORT releases the GIL). The best is the limit.
2. the full in-process pipeline at the best layout: cv2.imdecode, resize,
   normalise, inference, the reference decode + NMS — where the rest goes.

With --only SESSIONSxTHREADS:BATCH (e.g. 2x1:4) it measures that one
inference-only row for --seconds and stops (bench/compare.sh's alternated
saturation rounds re-measure the sweep's best row that way).

Prints one JSON object.
"""
import argparse
import json
import os
import sys
import threading
import time

import cv2
import numpy as np
import onnxruntime as ort

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tools", "reference"))
import nanodet_ref as ref  # noqa: E402

MODEL = os.path.join(REPO, "models", "nanodet-g", "nanodet-g-416.onnx")


def make_session(threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(MODEL, so, providers=["CPUExecutionProvider"])


def run_parallel(sessions, work, seconds):
    """Each session in its own thread calls work(session) until time is up;
    returns images/s (work returns images done)."""
    stop = time.perf_counter() + seconds
    counts = [0] * len(sessions)

    def loop(i, s):
        while time.perf_counter() < stop:
            counts[i] += work(s)

    threads = [threading.Thread(target=loop, args=(i, s)) for i, s in enumerate(sessions)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", default=os.path.join(REPO, "server/tests/data/dog.jpg"))
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--cores", type=int, default=os.cpu_count())
    ap.add_argument("--only", metavar="SxT:B", help="measure only this row: S sessions x T threads, batch B")
    args = ap.parse_args()
    cores = max(1, args.cores)
    jpeg = open(args.image, "rb").read()
    layouts = [("1x%d" % cores, 1, cores)] + ([("%dx1" % cores, cores, 1)] if cores > 1 else [])
    batches = (1, 2, 4, 8)
    if args.only is not None:
        try:
            layout, batch = args.only.split(":")
            n_sessions, threads = (int(v) for v in layout.split("x"))
            layouts, batches = [(layout, n_sessions, threads)], (int(batch),)
            if min(n_sessions, threads, int(batch)) < 1:
                raise ValueError
        except ValueError:
            ap.error("--only wants SESSIONSxTHREADS:BATCH, e.g. 2x1:4, got %r" % args.only)
    results = []
    for name, n_sessions, threads in layouts:
        sessions = [make_session(threads) for _ in range(n_sessions)]
        for batch in batches:
            x = np.random.default_rng(0).standard_normal((batch, 3, 416, 416)).astype(np.float32)
            for s in sessions:
                s.run(None, {"images": x})  # warm-up
            fps = run_parallel(sessions, lambda s: (s.run(None, {"images": x}), batch)[1], args.seconds)
            results.append({"layout": name, "sessions": n_sessions, "threads": threads, "batch": batch,
                            "images_per_s": round(fps, 2)})
    best = max(results, key=lambda r: r["images_per_s"])
    if args.only is not None:
        print(json.dumps({"onnxruntime": ort.__version__, "seconds": args.seconds, "inference_only": results,
                          "best": best}))
        return
    names = None

    def full(s):
        nonlocal names
        img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        h, w = img.shape[:2]
        x = cv2.resize(img, (416, 416), interpolation=cv2.INTER_LINEAR)
        x = (x.astype(np.float32) - ref.MEAN_BGR) / ref.STD_BGR
        x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
        names = names or [o.name for o in s.get_outputs()]
        outs = {k: v[0] for k, v in zip(names, s.run(None, {"images": x}))}
        boxes, scores, cls = ref.decode(outs)
        ref.nms_class_aware(boxes, scores, cls)
        return 1

    # The full pipeline goes one image at a time (how frames arrive), at the
    # best layout's sessions/threads.
    sessions = [make_session(best["threads"]) for _ in range(best["sessions"])]
    for s in sessions:
        full(s)
    full_fps = run_parallel(sessions, full, args.seconds)
    # Stage costs, single-threaded, for the profile.
    s = sessions[0]
    t = {}
    n = 30
    t0 = time.perf_counter()
    for _ in range(n):
        img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    t["decode_ms"] = (time.perf_counter() - t0) / n * 1e3
    t0 = time.perf_counter()
    for _ in range(n):
        x = cv2.resize(img, (416, 416), interpolation=cv2.INTER_LINEAR)
        x = np.ascontiguousarray(((x.astype(np.float32) - ref.MEAN_BGR) / ref.STD_BGR).transpose(2, 0, 1)[None])
    t["preprocess_ms"] = (time.perf_counter() - t0) / n * 1e3
    print(json.dumps({
        "onnxruntime": ort.__version__, "opencv": cv2.__version__, "numpy": np.__version__,
        "cores": cores, "image": os.path.basename(args.image),
        "inference_only": results, "best": best,
        "full_pipeline": {"layout": "%dx%d" % (best["sessions"], best["threads"]), "batch": 1,
                          "images_per_s": round(full_fps, 2)},
        "stage_ms_single_thread": {k: round(v, 3) for k, v in t.items()},
    }))


if __name__ == "__main__":
    main()
