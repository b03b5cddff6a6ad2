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


DEFAULT_FRAME_COUNT = 16  # frames of the source a frames bench uses (the first ones): `--frame-count`


def available_frames(source: Path) -> int:
    """Frames the source holds: images in the folder, or what the video's container says (0: it does not say)."""
    from ..runtime.stream import IMAGE_EXTS

    source = Path(source)
    if source.is_dir():
        return sum(1 for p in source.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    cap = cv2.VideoCapture(str(source))
    n = cap.get(cv2.CAP_PROP_FRAME_COUNT)
    cap.release()
    return int(n) if n and n > 0 else 0


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


def bench_frames(artifacts: list, source: Path, faces: list[int], threads: Optional[int] = 1,
                 limit: int = DEFAULT_FRAME_COUNT, repeats: int = 3, backend: str = "auto", console=None,
                 progress=None) -> list[dict]:
    """One row per artifact x faces-per-frame; ``progress`` (rich) gets one step per artifact x faces."""
    from ..runtime.detector import FaceDetector
    from ..runtime.predictor import Predictor

    for k in faces:  # before loading anything
        if not 1 <= k <= MAX_TILED_FACES:
            raise EdgefaceError(f"--faces values must be from 1 to {MAX_TILED_FACES}, got {k}")
    frames = load_frames(source, limit)
    for k in set(faces):
        tile_grid(frames, k)  # refuses a tiled frame over the image size limit, before any model is loaded
    detector = FaceDetector(threads=threads)
    available = available_frames(source)
    rows = []
    task = progress.add_task(f"frames bench ({len(frames)} frames)", total=len(artifacts) * len(faces)) \
        if progress is not None else None
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
                             "threads": threads, "faces": k, "frame": f"{shape[1]}x{shape[0]}",
                             "source": Path(source).name, "frames_available": available, **r})
                if task is not None:
                    progress.advance(task)
    return rows


def frames_title(rows: list[dict]) -> str:
    r = rows[0] if rows else {}
    avail = f" of {r['frames_available']}" if r.get("frames_available") else ""
    return (f"per-stage latency per frame (median ms): the first {r.get('frames', 0)}{avail} frames of "
            f"{r.get('source', '?')}, each pass repeated")


FRAME_COLUMNS = ("artifact", "engine", "faces put in each frame", "faces detected per frame", "frame px", *STAGES,
                 "FPS")


def frame_cells(r: dict) -> list[str]:
    """A row as the table and the report show it: how many faces each (tiled) frame holds, and how many the
    detector found on average, side by side."""
    return [Path(r["artifact"]).name, f"{r['backend']} {r['precision']}", str(r["faces"]),
            f"{r['faces_per_frame']:.2f}", r["frame"], *(f"{r[s]['median_ms']:.2f}" for s in STAGES), f"{r['fps']:.1f}"]


def format_rows(rows: list[dict]):
    from rich.table import Table

    table = Table(title=frames_title(rows),
                  caption="faces put in each frame: source frames tiled into one (--faces); detected: YuNet's "
                          "average over the frames")
    for c in FRAME_COLUMNS:
        table.add_column(c)
    for r in rows:
        table.add_row(*frame_cells(r))
    return table


def write_frames_report(rows: list[dict], out_dir: Path, command: str = "") -> Path:
    """--report with --frames: README.md (the table, how it was measured) and stages.png (median ms per stage,
    stacked, per artifact x faces), moved into ``out_dir`` when complete."""
    from .report import REPORT_TITLE, device_line, figure, report_folder

    with report_folder(out_dir) as tmp:
        with figure(tmp / "stages.png", 1, (max(6.0, 1.4 * len(rows) + 3), 4.8)) as (_, (ax,)):
            labels = [f"{Path(r['artifact']).name}\n{r['backend']} {r['precision']}\n{r['faces']} face(s)"
                      for r in rows]
            bottom = np.zeros(len(rows))
            for s in STAGES[:-1]:
                v = np.array([r[s]["median_ms"] for r in rows])
                ax.bar(labels, v, bottom=bottom, label=s)
                bottom += v
            for i, r in enumerate(rows):
                ax.annotate(f"{r['fps']:.0f} FPS", (i, bottom[i]), xytext=(0, 3), textcoords="offset points",
                            ha="center", fontsize=9)
            ax.set_ylim(0, bottom.max() * 1.15 if len(rows) else 1)
            ax.set_ylabel("median ms per frame")
            ax.tick_params(axis="x", labelsize=9)
            ax.set_title(frames_title(rows).replace(": ", ":\n", 1), fontsize=10)
            ax.legend(fontsize=9)
        head = "| " + " | ".join(FRAME_COLUMNS) + " |"
        lines = [REPORT_TITLE + " (full frames)", ""]
        if command:
            lines += ["```", command, "```", ""]
        lines += ["**Device:** "
                  f"{device_line(rows[0].get('device')) if rows and rows[0].get('device') else 'this machine'}",
                  "", f"{frames_title(rows)}.", "", head, "|" + "---|" * len(FRAME_COLUMNS)]
        lines += ["| " + " | ".join(frame_cells(r)) + " |" for r in rows]
        lines += ["", "Each frame is JPEG-encoded once; decode is `cv2.imdecode` of those bytes, then detect (YuNet), "
                  "crop (the training crop rule) and model, timed one after another per frame. \"faces put in each "
                  "frame\" tiles that many source frames into one; \"faces detected\" is what the detector found.",
                  "", "![stages](stages.png)", ""]
        (tmp / "README.md").write_text("\n".join(lines))
    return Path(out_dir)
