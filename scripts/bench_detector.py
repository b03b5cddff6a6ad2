#!/usr/bin/env python3
"""YuNet through onnxruntime (edgeface's detector engine) vs cv2.FaceDetectorYN, 1 thread; prints JSON.

    python3 scripts/bench_detector.py [--frames ../shared/data/pointing04/images] [--json out.json]

Issue 16 asks to run the detector through our own engines *where that measures faster*. Subjects, timed
interleaved in rounds on the same frames:
    cv2_native   cv2.FaceDetectorYN.detect at the frame's own size (preprocess + inference + decode + NMS)
    ort_native   edgeface's YuNetOnnxRuntime.detect at the frame's own size (the shipped ONNX with symbolic
                 height/width, padding to a multiple of 32, OpenCV's decode and NMS): the whole path too
    cv2_640      FaceDetectorYN on the frame letterboxed to 640x640 (the ONNX's declared size)
    ort_640      onnxruntime's session.run alone on that 640x640 blob (inference only)
The first pair decides the engine; the second pair compares the two inference engines on the same pixels.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
SIZE = 640


def letterbox(frame: np.ndarray) -> np.ndarray:
    h, w = frame.shape[:2]
    k = SIZE / max(h, w)
    small = cv2.resize(frame, (round(w * k), round(h * k)), interpolation=cv2.INTER_LINEAR)
    out = np.zeros((SIZE, SIZE, 3), np.uint8)
    out[: small.shape[0], : small.shape[1]] = small
    return out


def median_ms(fn, frames, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        for f in frames:
            t0 = time.perf_counter()
            fn(f)
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=Path, default=REPO.parent / "shared" / "data" / "pointing04" / "images")
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import onnxruntime as ort

    from edgeface.runtime.detector import YUNET_MODEL, YuNetOnnxRuntime

    paths = sorted(p for p in args.frames.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})[: args.limit]
    frames = [cv2.imread(str(p)) for p in paths]
    frames = [f for f in frames if f is not None]
    if not frames:
        raise SystemExit(f"error: no images in {args.frames}")
    tiled = [np.concatenate([np.concatenate(frames[i:i + 2], 1), np.concatenate(frames[i + 2:i + 4], 1)], 0)
             for i in range(0, len(frames) - 3, 4) if len({f.shape for f in frames[i:i + 4]}) == 1]
    cv2.setNumThreads(1)
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    session = ort.InferenceSession(str(YUNET_MODEL), so, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def cv2_detector(size):
        yn = cv2.FaceDetectorYN.create(str(YUNET_MODEL), "", size, 0.4, 0.3, 50)
        return lambda f: yn.detect(f)

    report = {"machine": platform.machine(), "cpu_count": os.cpu_count(), "loadavg_before": os.getloadavg(),
              "versions": {"opencv": cv2.__version__, "onnxruntime": ort.__version__}, "threads": 1,
              "model": YUNET_MODEL.name, "results": {}}
    for label, group in (("1 face", frames), ("4 faces tiled", tiled)):
        if not group:
            continue
        h, w = group[0].shape[:2]
        boxed = [letterbox(f) for f in group]
        blobs = [cv2.dnn.blobFromImage(b) for b in boxed]  # float32 NCHW, BGR, 0..255: what YuNet takes
        native, square = cv2_detector((w, h)), cv2_detector((SIZE, SIZE))
        ours = YuNetOnnxRuntime(YUNET_MODEL, 0.4, 0.3, 50, threads=1)
        for f in group[:2]:  # warm up
            native(f), ours.detect(f), square(boxed[0]), session.run(None, {name: blobs[0]})
        subjects = {"cv2_native": lambda i: native(group[i]), "ort_native": lambda i: ours.detect(group[i]),
                    "cv2_640": lambda i: square(boxed[i]), "ort_640": lambda i: session.run(None, {name: blobs[i]})}
        timings = {k: [] for k in subjects}
        for r in range(args.rounds):  # interleaved, order rotating, so drift hits every subject alike
            order = list(subjects)[r % len(subjects):] + list(subjects)[: r % len(subjects)]
            for k in order:
                timings[k].append(median_ms(subjects[k], range(len(group)), 1))
        res = {k: round(statistics.median(v), 3) for k, v in timings.items()}
        res["frame"] = f"{w}x{h}"
        res["ort_native_vs_cv2_native"] = round(res["ort_native"] / res["cv2_native"], 3)
        res["ort_640_vs_cv2_640"] = round(res["ort_640"] / res["cv2_640"], 3)
        report["results"][label] = res
    report["loadavg_after"] = os.getloadavg()
    report["onnxruntime_faster"] = {k: v["ort_native"] < v["cv2_native"] for k, v in report["results"].items()}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
