"""Frames in, faces out over time: frame sources (image files, a video, a camera), an IoU tracker that gives
each face a stable id, One-Euro smoothing of pose and blur per track, and drawing of the results.

Torch-free: numpy and OpenCV only.
"""
from __future__ import annotations

import errno
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import cv2
import numpy as np

from ..core.errors import EdgefaceError
from ..core.io import native_path, silence_native_stderr
from ..core.limits import MAX_CAMERA_INDEX
from ..core.preprocess import iou
from .detector import quiet_opencv

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm"}


def _silent_stderr(make):
    """Run ``make`` with OpenCV's log at ERROR and file descriptor 2 on /dev/null: FFmpeg and V4L2 print their
    own lines ("moov atom not found", "can't open camera by index") that the caller turns into one clear error."""
    return silence_native_stderr(lambda: quiet_opencv(make))


# -- sources ---------------------------------------------------------------------------------------------------
def is_image_path(path: Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTS


def open_video(source) -> tuple[cv2.VideoCapture, float]:
    """(capture, fps) for a video file or a camera index; EdgefaceError when it gives no frame."""
    if isinstance(source, int):
        if not 0 <= source <= MAX_CAMERA_INDEX:
            raise EdgefaceError(f"camera index {source} is out of range; cameras are numbered 0 to {MAX_CAMERA_INDEX} "
                                f"(usually 0 for the first one)")
        cap = _silent_stderr(lambda: cv2.VideoCapture(source))
        what = f"camera {source}"
    else:
        if not Path(source).is_file():
            raise EdgefaceError(f"video {source} does not exist")
        with native_path(source) as name:  # a name that is not UTF-8 goes through a descriptor
            cap = _silent_stderr(lambda: cv2.VideoCapture(name))
        what = f"{source}"
    if not cap.isOpened():
        cap.release()
        raise EdgefaceError(f"{what} cannot be opened as a video" if not isinstance(source, int) else
                            f"camera {source} does not exist or cannot be opened")
    fps = cap.get(cv2.CAP_PROP_FPS)
    return cap, (fps if fps and math.isfinite(fps) and fps > 0 else 30.0)


def video_frames(source) -> Iterator[tuple[int, float, np.ndarray]]:
    """(frame index, time in seconds, BGR frame) from a video file or camera index. A source that opens but
    gives no first frame (a zero-frame video, a non-video file OpenCV accepts) is an error."""
    cap, fps = open_video(source)
    try:
        i = 0
        while True:
            ok, frame = cap.read()
            if not ok or frame is None:
                if i == 0:
                    raise EdgefaceError(f"{'camera ' + str(source) if isinstance(source, int) else source} "
                                        f"gave no frame (not a video, or a video without frames)")
                return
            yield i, i / fps, frame
            i += 1
    finally:
        cap.release()


# -- One-Euro filter -------------------------------------------------------------------------------------------
class OneEuro:
    """One-Euro filter (Casiez et al., CHI 2012) of a vector: strong smoothing when still, little lag when moving.

    ``min_cutoff`` (Hz) sets the smoothing at rest, ``beta`` how fast the cutoff rises with speed.
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.05, d_cutoff: float = 1.0):
        self.min_cutoff, self.beta, self.d_cutoff = float(min_cutoff), float(beta), float(d_cutoff)
        self._x: Optional[np.ndarray] = None
        self._dx: Optional[np.ndarray] = None
        self._t: Optional[float] = None

    @staticmethod
    def _alpha(cutoff, dt: float):
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x, t: float) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self._x is None or self._t is None or t <= self._t:
            self._x, self._dx, self._t = x.copy(), np.zeros_like(x), t
            return x.copy()
        dt = t - self._t
        dx = (x - self._x) / dt
        a_d = self._alpha(self.d_cutoff, dt)
        self._dx = a_d * dx + (1 - a_d) * self._dx
        cutoff = self.min_cutoff + self.beta * np.abs(self._dx)
        a = self._alpha(cutoff, dt)
        self._x = a * x + (1 - a) * self._x
        self._t = t
        return self._x.copy()


# -- IoU tracker -----------------------------------------------------------------------------------------------
@dataclass
class _Track:
    id: int
    box: np.ndarray
    last_seen: int
    pose_filter: Optional[OneEuro] = None
    blur_filter: Optional[OneEuro] = None
    hits: int = field(default=1)


class IouTracker:
    """Greedy IoU matching of each frame's faces to the live tracks; a track not seen for ``max_age`` frames
    ends. Ids start at 0 and are never reused. ``smooth``: One-Euro filter pose and blur per track."""

    def __init__(self, iou_threshold: float = 0.3, max_age: int = 10, smooth: bool = False,
                 min_cutoff: float = 1.0, beta: float = 0.05):
        self.iou_threshold, self.max_age, self.smooth = float(iou_threshold), int(max_age), bool(smooth)
        self.min_cutoff, self.beta = min_cutoff, beta
        self.tracks: list[_Track] = []
        self._next = 0

    def update(self, frame_index: int, t: float, faces: list) -> list[int]:
        """Track ids for ``faces`` (``Face`` records of one frame, in order); smooths them in place if asked."""
        self.tracks = [tr for tr in self.tracks if frame_index - tr.last_seen <= self.max_age]
        ids = [-1] * len(faces)
        if faces and self.tracks:
            ov = iou(np.array([f.box for f in faces]), np.array([tr.box for tr in self.tracks]))
            pairs = sorted(((ov[i, j], i, j) for i in range(ov.shape[0]) for j in range(ov.shape[1])
                            if ov[i, j] >= self.iou_threshold), reverse=True)
            used_f, used_t = set(), set()
            for _, i, j in pairs:
                if i in used_f or j in used_t:
                    continue
                used_f.add(i)
                used_t.add(j)
                ids[i] = j
        out = []
        for i, f in enumerate(faces):
            if ids[i] >= 0:
                tr = self.tracks[ids[i]]
                tr.box, tr.last_seen, tr.hits = np.asarray(f.box, np.float64), frame_index, tr.hits + 1
            else:
                tr = _Track(self._next, np.asarray(f.box, np.float64), frame_index)
                self._next += 1
                self.tracks.append(tr)
            if self.smooth:
                if tr.pose_filter is None:
                    tr.pose_filter = OneEuro(self.min_cutoff, self.beta)
                    tr.blur_filter = OneEuro(self.min_cutoff, self.beta)
                f.yaw, f.pitch, f.roll = (float(v) for v in tr.pose_filter([f.yaw, f.pitch, f.roll], t))
                f.blur = float(tr.blur_filter([f.blur], t)[0])
            out.append(tr.id)
        return out


# -- drawing ---------------------------------------------------------------------------------------------------
def pose_axes(yaw: float, pitch: float, roll: float, size: float) -> np.ndarray:
    """(3, 2) image-plane offsets of the head's x (red), y (green) and z (blue, facing) axes, Pose_Para convention."""
    p, y, r = math.radians(pitch), -math.radians(yaw), math.radians(roll)
    x1 = size * (math.cos(y) * math.cos(r))
    y1 = size * (math.cos(p) * math.sin(r) + math.cos(r) * math.sin(p) * math.sin(y))
    x2 = size * (-math.cos(y) * math.sin(r))
    y2 = size * (math.cos(p) * math.cos(r) - math.sin(p) * math.sin(y) * math.sin(r))
    x3 = size * (math.sin(y))
    y3 = size * (-math.cos(y) * math.sin(p))
    return np.array([[x1, y1], [x2, -y2], [x3, y3]])


def draw_faces(frame: np.ndarray, faces: list, ids: Optional[list[int]] = None) -> np.ndarray:
    """A copy of ``frame`` with each face's box, landmarks, pose axes and a blur bar (green sharp .. red blurred)."""
    img = frame.copy()
    scale = max(1.0, max(img.shape[:2]) / 640)
    th = max(1, int(round(2 * scale)))
    for k, f in enumerate(faces):
        x, y, w, h = (float(v) for v in f.box)
        cv2.rectangle(img, (int(x), int(y)), (int(x + w), int(y + h)), (255, 200, 0), th)
        for px, py in f.landmarks:
            cv2.circle(img, (int(px), int(py)), th + 1, (0, 255, 255), -1)
        cx, cy = f.landmarks[2] if len(f.landmarks) == 5 else (x + w / 2, y + h / 2)
        for (dx, dy), col in zip(pose_axes(f.yaw, f.pitch, f.roll, 0.6 * w), [(0, 0, 255), (0, 200, 0), (255, 0, 0)]):
            cv2.line(img, (int(cx), int(cy)), (int(cx + dx), int(cy + dy)), col, th + 1)
        _blur_bar(img, x, y, w, h, float(f.blur), scale)
        label = f"y{f.yaw:+.0f} p{f.pitch:+.0f} r{f.roll:+.0f} b{f.blur:.2f}"
        if ids is not None:
            label = f"#{ids[k]} " + label
        _label(img, label, x, y, h, scale, max(1, th - 1))
    return img


def _label(img: np.ndarray, text: str, x: float, y: float, h: float, scale: float, thickness: int) -> None:
    """White text on a dark strip above the box, moved inside the image where the box touches an edge (a face at
    the top of the frame had its label cut off)."""
    font, size = cv2.FONT_HERSHEY_SIMPLEX, 0.45 * scale
    (tw, tht), base = cv2.getTextSize(text, font, size, thickness)
    H, W = img.shape[:2]
    pad = max(2, int(2 * scale))
    tx = int(min(max(0, x), max(0, W - tw - pad)))
    ty = int(y - pad - base)  # baseline above the box
    if ty - tht - pad < 0:  # no room above: just inside the box's top edge
        ty = int(min(max(y, 0) + tht + pad, H - base - pad))
    cv2.rectangle(img, (tx - pad, ty - tht - pad), (tx + tw + pad, ty + base), (30, 30, 30), -1)
    cv2.putText(img, text, (tx, ty), font, size, (255, 255, 255), thickness, cv2.LINE_AA)


def _blur_bar(img: np.ndarray, x: float, y: float, w: float, h: float, blur: float, scale: float) -> None:
    """The blur score as a bar under the box (above it where the frame ends), outlined so it shows on any
    background: filled in proportion to the score, green (sharp) to red (blurred)."""
    b = min(max(blur, 0.0), 1.0)
    H, W = img.shape[:2]
    bh = max(6, int(round(0.08 * w)), int(8 * scale))
    bx0, bx1 = int(max(0, x)), int(min(W - 1, x + w))
    by = int(y + h + 4 * scale)
    if by + bh >= H:
        by = int(max(0, min(y + h, H) - bh - 4 * scale))  # inside the box's bottom edge
    cv2.rectangle(img, (bx0, by), (bx1, by + bh), (60, 60, 60), -1)
    cv2.rectangle(img, (bx0, by), (bx0 + int((bx1 - bx0) * b), by + bh), (0, int(255 * (1 - b)), int(255 * b)), -1)
    cv2.rectangle(img, (bx0, by), (bx1, by + bh), (255, 255, 255), max(1, int(scale)))


DISAGREEMENT_PNG = "int8_disagreement.png"


def disagreement_sheet(crops: np.ndarray, pose: np.ndarray, ref_pose: np.ndarray, k: int = 6,
                       names: tuple[str, str] = ("INT8", "FP32"), tile: int = 192) -> tuple[np.ndarray, list[int]]:
    """"Where INT8 disagrees most": the ``k`` faces whose pose differs most from the reference's (largest
    |Δ| over yaw, pitch and roll), each shown twice side by side, reference then artifact, with its pose axes
    and angles drawn. Returns (BGR image, the faces' indices, largest difference first)."""
    d = np.abs(np.asarray(pose, np.float64) - np.asarray(ref_pose, np.float64)).max(axis=1)
    idx = [int(i) for i in np.argsort(-d, kind="stable")[:k]]
    cap = 40
    cells = []
    for i in idx:
        pair = []
        for name, pz in ((names[1], ref_pose[i]), (names[0], pose[i])):
            img = cv2.resize(crops[i], (tile, tile), interpolation=cv2.INTER_CUBIC)
            c = tile / 2
            for (dx, dy), col in zip(pose_axes(*(float(v) for v in pz), 0.4 * tile),
                                     [(0, 0, 255), (0, 200, 0), (255, 0, 0)]):
                cv2.line(img, (int(c), int(c)), (int(c + dx), int(c + dy)), col, 3, cv2.LINE_AA)
            strip = np.full((cap, tile, 3), 255, np.uint8)
            cv2.putText(strip, name, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
            cv2.putText(strip, f"y{pz[0]:+.1f} p{pz[1]:+.1f} r{pz[2]:+.1f}", (4, 33), cv2.FONT_HERSHEY_SIMPLEX,
                        0.45, (0, 0, 0), 1, cv2.LINE_AA)
            pair.append(np.vstack([img, strip]))
        head = np.full((22, 2 * tile, 3), 235, np.uint8)
        cv2.putText(head, f"face {i}: max |d| {d[i]:.1f} deg", (4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 160), 1,
                    cv2.LINE_AA)
        cells.append(cv2.copyMakeBorder(np.vstack([head, np.hstack(pair)]), 4, 4, 4, 4, cv2.BORDER_CONSTANT,
                                        value=(255, 255, 255)))
    cols = 3 if len(cells) > 4 else max(1, len(cells))
    while len(cells) % cols:
        cells.append(np.full_like(cells[0], 255))
    grid = np.vstack([np.hstack(cells[r:r + cols]) for r in range(0, len(cells), cols)])
    title = np.full((30, grid.shape[1], 3), 255, np.uint8)
    cv2.putText(title, f"Where {names[0]} disagrees most with {names[1]} ({len(idx)} of {len(d)} faces; axes: "
                f"red x, green y, blue facing)", (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([title, grid]), idx


def write_disagreement(path, crops: np.ndarray, pose: np.ndarray, ref_pose: np.ndarray, **kw) -> list[int]:
    sheet, idx = disagreement_sheet(crops, pose, ref_pose, **kw)
    if not cv2.imwrite(str(path), sheet):
        raise EdgefaceError(f"cannot write {path}")
    return idx


DRAW_TEMP_TAG = ".edgeface-draw-"  # .edgeface-draw-PID-xxxx.mp4 beside --draw's video while it is written


class VideoOut:
    """A video file that appears whole or not at all: frames go to a hidden temporary sibling (ASCII name,
    with this process's PID, so the next run removes one a SIGKILL left), and ``commit`` checks that every
    frame reached the disk (a full disk truncates a video silently) before renaming it onto ``path``.
    ``abort`` removes the temporary file. The folder's own name may be anything (non-UTF-8 included)."""

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int]):
        import secrets

        from ..core.io import disk_errors

        self.path, self.frames, self._dir = Path(path), 0, None
        with disk_errors(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_draw_temps(self.path.parent)
        self.tmp = self.path.parent / f"{DRAW_TEMP_TAG}{os.getpid()}-{secrets.token_hex(4)}{self.path.suffix}"
        with disk_errors(self.path):
            self._dir = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            native = f"/proc/self/fd/{self._dir}/{self.tmp.name}" if os.path.isdir("/proc/self/fd") else str(self.tmp)
            self.writer = cv2.VideoWriter(native, cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        if not self.writer.isOpened():
            self.abort()
            raise EdgefaceError(f"cannot write video {self.path} (OpenCV has no writer for it here, or the folder "
                                f"is not writable); choose another --draw")

    def write(self, frame: np.ndarray) -> None:
        # Quiet: a full disk makes FFmpeg print "Failed to write frame" per frame; commit() reports it once.
        quiet_opencv(lambda: self.writer.write(frame))
        self.frames += 1

    def commit(self) -> Path:
        """Finish the file, check it holds every frame, and rename it onto ``path``."""
        from ..core.io import disk_errors, disk_full, os_error_message

        self.writer.release()
        try:
            got = _frame_count(self.tmp) if self.tmp.exists() else 0
            if got < self.frames:
                why = (os_error_message(OSError(errno.ENOSPC, "No space left on device"), self.path)
                       if disk_full(self.path.parent) else
                       f"cannot write video {self.path}: {got} of {self.frames} frames reached the file")
                raise EdgefaceError(why)
            with disk_errors(self.path):
                os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._close_dir()
        return self.path

    def abort(self) -> None:
        if getattr(self, "writer", None) is not None:
            self.writer.release()
        try:
            os.unlink(self.tmp)
        except OSError:
            pass
        self._close_dir()

    def _close_dir(self) -> None:
        if getattr(self, "_dir", None) is not None:
            os.close(self._dir)
            self._dir = None


def _frame_count(path: Path) -> int:
    """Frames a finished video file holds, as its container says (0 when it cannot be opened)."""
    with native_path(path) as name:
        cap = _silent_stderr(lambda: cv2.VideoCapture(name))
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    finally:
        cap.release()


def clean_stale_draw_temps(folder: Path) -> list[Path]:
    """Remove ``.edgeface-draw-PID-*`` files in ``folder`` whose process is gone (a SIGKILLed predict --draw)."""
    from ..core.io import pid_alive

    removed = []
    try:
        entries = list(Path(folder).glob(f"{DRAW_TEMP_TAG}*"))
    except OSError:
        return removed
    for p in entries:
        pid = p.name[len(DRAW_TEMP_TAG):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)) and p.is_file():
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed
