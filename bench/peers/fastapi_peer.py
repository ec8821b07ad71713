#!/usr/bin/env python3
"""The stack framegate replaces: FastAPI + uvicorn + OpenCV + ONNX Runtime.

Written the way a careful team would write it (not a straw man):
  - POST /detect: bearer-token check (constant-time compare), multipart
    upload (field "image", UploadFile), cv2.imdecode, cv2.resize
    (INTER_LINEAR, like the reference's bilinear stretch), BGR mean/std
    normalisation in NumPy, onnxruntime (CPU) on the same NanoDet-g ONNX
    file, the same decode + class-aware NMS as tools/reference/nanodet_ref.py
    (imported, not re-written), boxes scaled back to the frame.
  - POST /noop: same auth and upload, reads the file, no model.
  - Inference runs in the threadpool (`def` endpoint), so the event loop keeps
    accepting while ONNX Runtime (which releases the GIL) computes.

Run: python fastapi_peer.py --port 8090 --key KEY [--workers 1] [--ort-threads 2]
"""
import argparse
import hmac
import os
import sys

import cv2
import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, File, Header, HTTPException, UploadFile

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tools", "reference"))
import nanodet_ref as ref  # noqa: E402

KEY = os.environ.get("PEER_KEY", "")
ORT_THREADS = int(os.environ.get("PEER_ORT_THREADS", "2"))
MODEL = os.path.join(REPO, "models", "nanodet-g", "nanodet-g-416.onnx")
LABELS = [l.strip() for l in open(os.path.join(REPO, "models", "nanodet-g", "labels.txt")) if l.strip()]

so = ort.SessionOptions()
so.intra_op_num_threads = ORT_THREADS
so.inter_op_num_threads = 1
so.log_severity_level = 3
session = ort.InferenceSession(MODEL, so, providers=["CPUExecutionProvider"])
OUT_NAMES = [o.name for o in session.get_outputs()]

app = FastAPI()


def check_auth(authorization):
    expected = "Bearer " + KEY
    if not authorization or not hmac.compare_digest(authorization.encode(), expected.encode()):
        raise HTTPException(status_code=401, detail="bad key")


@app.post("/noop")
def noop(image: UploadFile = File(...), authorization: str = Header(None)):
    check_auth(authorization)
    data = image.file.read()
    return {"bytes": len(data), "detections": []}


@app.post("/detect")
def detect(image: UploadFile = File(...), authorization: str = Header(None)):
    check_auth(authorization)
    data = image.file.read()
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # BGR
    if img is None:
        raise HTTPException(status_code=400, detail="not an image")
    h, w = img.shape[:2]
    x = cv2.resize(img, (ref.INPUT_SIZE, ref.INPUT_SIZE), interpolation=cv2.INTER_LINEAR)
    x = (x.astype(np.float32) - ref.MEAN_BGR) / ref.STD_BGR
    x = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
    outs = dict(zip(OUT_NAMES, session.run(None, {"images": x})))
    outs = {k: v[0] for k, v in outs.items()}
    boxes, scores, class_ids = ref.decode(outs)
    keep = ref.nms_class_aware(boxes, scores, class_ids)
    dets = []
    for i in keep:
        x1, y1, x2, y2 = boxes[i].astype(np.float64)
        cid = int(class_ids[i])
        dets.append({
            "class_id": cid,
            "label": LABELS[cid],
            "score": float(scores[i]),
            "box": [min(max(x1 * w / ref.INPUT_SIZE, 0), w), min(max(y1 * h / ref.INPUT_SIZE, 0), h),
                    min(max(x2 * w / ref.INPUT_SIZE, 0), w), min(max(y2 * h / ref.INPUT_SIZE, 0), h)],
        })
    return {"width": w, "height": h, "detections": dets}


if __name__ == "__main__":
    import uvicorn

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8090)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    uvicorn.run("fastapi_peer:app", app_dir=os.path.dirname(os.path.abspath(__file__)), host="127.0.0.1", port=args.port, workers=args.workers,
                loop="uvloop", http="httptools", log_level="warning", access_log=False)
