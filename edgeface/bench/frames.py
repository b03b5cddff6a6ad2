"""Per-stage latency on full frames: decode, detect, crop, model and total per frame, at 1 and several faces.

Frames come from a folder of images or a video. For k faces per frame, k source frames are tiled into one
grid frame (each keeps its size), so the detector and the model see k real faces. Every frame is JPEG-encoded
once up front; "decode" is ``cv2.imdecode`` of those bytes (what a camera's MJPEG stream or a photo costs).
Stages run one after another in this process, frame by frame, as ``Predictor.predict_frame`` does.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from ..core.errors import EdgefaceError
from ..core.preprocess import crop_face, read_image

STAGES = ("decode", "detect", "crop", "model", "total")
MAX_TILED_FACES = 64  # faces per tiled frame: 100000 made a 63000 x 63000 canvas


def load_frames(source: Path, limit: int = 32) -> list[np.ndarray]:
    """Up to ``limit`` BGR frames from a folder of images (sorted) or a video file."""
    from ..runtime.stream import IMAGE_EXTS, video_frames

    source = Path(source)
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_EXTS)[:limit]
        if not files:
            raise EdgefaceError(f"{source} holds no images")
        return [read_image(p) for p in files]
    frames = []
    for i, _, frame in video_frames(source):
        frames.append(frame)
        if len(frames) >= limit:
            break
    return frames


def tile_grid(frames: list[np.ndarray], k: int, start: int = 0) -> tuple[list[np.ndarray], int, int, int]:
    """(picks, columns, cell height, cell width) of ``tile``'s grid; EdgefaceError when its canvas would be over
    the image size limit (checked from the frames' shapes, nothing allocated)."""
    from ..core.limits import MAX_IMAGE_PIXELS

    picks = [frames[(start + i) % len(frames)] for i in range(k)]
    cols = int(math.ceil(math.sqrt(k)))
    rows = int(math.ceil(k / cols))
    ch = max(f.shape[0] for f in picks)
    cw = max(f.shape[1] for f in picks)
    if rows * ch * cols * cw > MAX_IMAGE_PIXELS:
        raise EdgefaceError(f"--faces {k} tiles these {cw}x{ch} frames into {cols * cw}x{rows * ch} pixels, more than "
                            f"{MAX_IMAGE_PIXELS / 1e6:.0f} MP; pass fewer faces or smaller frames")
    return picks, cols, ch, cw


def tile(frames: list[np.ndarray], k: int, start: int = 0) -> np.ndarray:
    """k frames (from ``start``, wrapping) in a grid of ceil(sqrt(k)) columns on a grey canvas."""
    picks, cols, ch, cw = tile_grid(frames, k, start)
    rows = int(math.ceil(k / cols))
    canvas = np.full((rows * ch, cols * cw, 3), 100, np.uint8)
    for i, f in enumerate(picks):
        r, c = divmod(i, cols)
        canvas[r * ch:r * ch + f.shape[0], c * cw:c * cw + f.shape[1]] = f
    return canvas


def bench_stages(pred, detector, encoded: list[bytes], repeats: int = 3) -> dict:
    """Per-stage milliseconds per frame (median, p90, mean) over ``repeats`` passes of the encoded frames,
    after one untimed pass."""
    times = {s: [] for s in STAGES}
    faces = []
    for rep in range(repeats + 1):
        for buf in encoded:
            t0 = time.perf_counter()
            frame = cv2.imdecode(np.frombuffer(buf, np.uint8), cv2.IMREAD_COLOR)
            t1 = time.perf_counter()
            det = detector.detect(frame)
            t2 = time.perf_counter()
            crops = None
            if len(det):  # detect and crop timed apart: the steps of FaceDetector.crop_faces, one by one
                crops = np.stack([crop_face(frame, b, pred.spec) for b in detector.model_boxes(det)])
            t3 = time.perf_counter()
            if crops is not None:
                pred.predict(crops)
            t4 = time.perf_counter()
            if rep == 0:  # the first pass warms up (and counts faces)
                faces.append(len(det))
                continue
            for s, v in zip(STAGES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
                times[s].append(v * 1e3)
    out = {}
    for s, v in times.items():
        a = np.array(v)
        out[s] = {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)), "mean_ms": float(a.mean())}
    out["fps"] = 1e3 / out["total"]["mean_ms"]
    out["faces_per_frame"] = float(np.mean(faces)) if faces else 0.0
    out["frames"] = len(encoded)
    return out


def bench_frames(artifacts: list, source: Path, faces: list[int], threads: Optional[int] = 1, limit: int = 16,
                 repeats: int = 3, backend: str = "auto", console=None) -> list[dict]:
    """One row per artifact x faces-per-frame."""
    from ..runtime.detector import FaceDetector
    from ..runtime.predictor import Predictor

    for k in faces:  # before loading anything
        if not 1 <= k <= MAX_TILED_FACES:
            raise EdgefaceError(f"--faces values must be from 1 to {MAX_TILED_FACES}, got {k}")
    frames = load_frames(source, limit)
    for k in set(faces):
        tile_grid(frames, k)  # refuses a tiled frame over the image size limit, before any model is loaded
    detector = FaceDetector(threads=threads)
    rows = []
    for art in artifacts:
        with Predictor(None if str(art) == "default" else art, backend=backend, threads=threads) as pred:
            for k in faces:
                encoded = [cv2.imencode(".jpg", tile(frames, k, i), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
                           for i in range(len(frames))]
                if console is not None:
                    console.print(f"{art} on {pred.backend}: {k} face(s) per frame, {len(encoded)} frames")
                r = bench_stages(pred, detector, encoded, repeats)
                shape = cv2.imdecode(np.frombuffer(encoded[0], np.uint8), cv2.IMREAD_COLOR).shape
                rows.append({"artifact": str(art), "backend": pred.backend, "precision": pred.precision,
                             "threads": threads, "faces": k, "frame": f"{shape[1]}x{shape[0]}", **r})
    return rows


def format_rows(rows: list[dict]):
    from rich.table import Table

    table = Table(title="per-stage latency per frame (median ms)")
    for c in ("artifact", "backend", "faces", "found", "frame", *STAGES, "FPS"):
        table.add_column(c)
    for r in rows:
        table.add_row(Path(r["artifact"]).name, r["backend"], str(r["faces"]), f"{r['faces_per_frame']:.2f}",
                      r["frame"], *(f"{r[s]['median_ms']:.2f}" for s in STAGES), f"{r['fps']:.1f}")
    return table
