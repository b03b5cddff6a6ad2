"""Readers for labelled face sets: a labels.csv folder, AFLW2000-3D as distributed, a plain image folder.

Every reader yields the same ``Sample`` (image path, face box, yaw/pitch/roll, NaN = unknown), so training,
evaluation and calibration treat all sources alike.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..core.errors import EdgefaceError
from ..core.recipe import read_csv_utf8

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
REQUIRED_COLUMNS = ("file", "x", "y", "w", "h")
NAN = float("nan")
# Teacher roll (MediaPipe FaceMesh) is unreliable on profiles; trust it only this close to frontal.
TEACHER_ROLL_MAX_YAW = 45.0


@dataclass
class Sample:
    path: Path
    box: tuple[float, float, float, float]  # x, y, w, h in pixels
    yaw: float = NAN
    pitch: float = NAN
    roll: float = NAN
    blur: float = NAN
    split: str = ""
    source: str = ""  # the set's name (folder name)
    group: str = ""

    @property
    def pose(self) -> np.ndarray:
        return np.array([self.yaw, self.pitch, self.roll], dtype=np.float32)


def csv_float(row: dict, key: str) -> float:
    """A CSV cell as a float; empty, missing or unparsable is NaN (unknown)."""
    v = row.get(key)
    if v is None or str(v).strip() == "":
        return NAN
    try:
        return float(v)
    except ValueError:
        return NAN


# Per-person label offsets are measured this close to frontal, where the teacher is most reliable.
PERSON_OFFSET_MAX_YAW = 30.0
PERSON_OFFSET_MIN_ROWS = 5


def teacher_label_offsets(rows: list[dict]) -> dict[str, tuple[float, float]]:
    """Per person (``group``): median(teacher - label) of yaw and pitch over their near-frontal rows
    (|label yaw| <= PERSON_OFFSET_MAX_YAW); NaN where a person has fewer than PERSON_OFFSET_MIN_ROWS.

    Lab sets (Pointing'04, QMUL) label each photo with the camera's angle, so a person who sits turned
    carries that offset on every photo; the teacher sees the head.
    """
    per: dict[str, list[list[float]]] = {}
    for row in rows:
        yaw = csv_float(row, "yaw")
        if math.isnan(yaw) or abs(yaw) > PERSON_OFFSET_MAX_YAW or not row.get("group"):
            continue
        d = per.setdefault(row["group"], [[], []])
        for k, a in enumerate(("yaw", "pitch")):
            v = csv_float(row, f"t_{a}") - csv_float(row, a)
            if not math.isnan(v):
                d[k].append(v)
    return {g: tuple(float(np.median(v)) if len(v) >= PERSON_OFFSET_MIN_ROWS else math.nan for v in d)
            for g, d in per.items()}


def person_offsets(rows: list[dict]) -> dict[str, tuple[float, float]]:
    """Per-person yaw/pitch corrections for rig-angle labels: each person's `teacher_label_offsets` minus
    the median of all people's, so the set keeps its own frame and only the person-to-person scatter is
    removed. People without enough rows get none.
    """
    med = teacher_label_offsets(rows)
    centre = []
    for k in range(2):
        vals = [m[k] for m in med.values() if not math.isnan(m[k])]
        centre.append(float(np.median(vals)) if vals else 0.0)
    return {g: tuple(0.0 if math.isnan(m[k]) else m[k] - centre[k] for k in range(2)) for g, m in med.items()}


def read_labels_csv(folder: str | Path, split: str | None = None, centre_people: bool = False,
                    teacher_max_yaw: float | None = None) -> list[Sample]:
    """A folder with ``labels.csv`` (file,x,y,w,h and any of yaw,pitch,roll,blur; t_* teacher columns).

    Ground truth wins where present; the teacher's angles fill the gaps (teacher roll only near frontal).
    ``centre_people`` removes each person's rig offset from the ground-truth yaw/pitch (`person_offsets`,
    measured on the rows of the split read); for training only, never for evaluation.
    ``teacher_max_yaw`` masks the teacher's yaw/pitch where it reads the face wider than that: FaceMesh saturates
    near +-60 deg (14-15 deg MAE beyond 60 on AFLW2000-3D), and rendered views now teach wide poses.
    """
    folder = Path(folder)
    path = folder / "labels.csv"
    cols, rows = read_csv_utf8(path, "labels file")
    missing = [c for c in REQUIRED_COLUMNS if c not in cols]
    if missing:
        raise EdgefaceError(f"{path} lacks column(s) {', '.join(missing)}; it needs file,x,y,w,h "
                            f"and any of yaw,pitch,roll,blur")
    if split:
        rows = [(i, r) for i, r in enumerate(rows, start=2) if r.get("split", split) == split]
    else:
        rows = list(enumerate(rows, start=2))
    offsets = person_offsets([r for _, r in rows]) if centre_people else {}
    samples = []
    for i, row in rows:
        box = tuple(csv_float(row, k) for k in ("x", "y", "w", "h"))
        if not all(math.isfinite(v) for v in box) or box[2] <= 0 or box[3] <= 0:
            raise EdgefaceError(f"{path} line {i}: face box {box} is not a box with positive width and height")
        yaw, pitch, roll = csv_float(row, "yaw"), csv_float(row, "pitch"), csv_float(row, "roll")
        t_yaw, t_pitch, t_roll = csv_float(row, "t_yaw"), csv_float(row, "t_pitch"), csv_float(row, "t_roll")
        _check_label(path, i, row, box)
        d_yaw, d_pitch = offsets.get(row.get("group", ""), (0.0, 0.0))
        yaw, pitch = yaw + d_yaw, pitch + d_pitch  # NaN stays NaN: only ground truth is corrected
        teacher_ok = teacher_max_yaw is None or abs(t_yaw) <= teacher_max_yaw  # NaN compares False: masked
        if math.isnan(yaw) and teacher_ok:
            yaw = t_yaw
        if math.isnan(pitch) and teacher_ok:
            pitch = t_pitch
        if math.isnan(roll) and not math.isnan(t_roll):
            ref_yaw = yaw if not math.isnan(yaw) else t_yaw
            if not math.isnan(ref_yaw) and abs(ref_yaw) <= TEACHER_ROLL_MAX_YAW and not math.isnan(t_yaw):
                roll = t_roll
        file = row.get("file") or ""
        if not file:
            raise EdgefaceError(f"{path} line {i}: empty 'file' column")
        samples.append(Sample(folder / file, box, yaw, pitch, roll, csv_float(row, "blur"),
                              row.get("split", ""), folder.name, row.get("group", "")))
    return samples


MAX_LABEL_ANGLE = 180.0


def _is_number(text) -> bool:
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False


def _check_label(path: Path, line: int, row: dict, box) -> None:
    """Labels in range, or empty (unknown): an angle of 1e308 would turn every mean into inf or NaN."""
    for key in ("x", "y", "w", "h", "yaw", "pitch", "roll", "t_yaw", "t_pitch", "t_roll", "blur"):
        v = row.get(key)
        if v is not None and str(v).strip() and not _is_number(v):
            raise EdgefaceError(f"{path} line {line}: {key} {str(v)[:40]!r} is not a number; write a number, or "
                                f"leave it empty (unknown)")  # a typo must not turn a label into 'unknown' silently
    if max(abs(v) for v in box) > 1 << 20:
        raise EdgefaceError(f"{path} line {line}: face box {box} is beyond 2^20 pixels; boxes are x,y,w,h in pixels")
    for key in ("yaw", "pitch", "roll", "t_yaw", "t_pitch", "t_roll"):
        v = csv_float(row, key)
        if not math.isnan(v) and not abs(v) <= MAX_LABEL_ANGLE:
            raise EdgefaceError(f"{path} line {line}: {key} {row.get(key)} is not an angle in degrees within "
                                f"+-{MAX_LABEL_ANGLE:g}; fix the label or leave it empty (unknown)")
    v = csv_float(row, "blur")
    if not math.isnan(v) and not 0.0 <= v <= 1.0:
        raise EdgefaceError(f"{path} line {line}: blur {row.get('blur')} is not a score from 0 to 1; fix the label "
                            f"or leave it empty (unknown)")


def read_aflw2000(folder: str | Path, max_angle: float = 99.0) -> list[Sample]:
    """AFLW2000-3D: imageNNNNN.jpg beside imageNNNNN.mat (Pose_Para radians: pitch, yaw, roll, ...).

    The usual protocol: drop images with any angle beyond +-99 deg; the box is the 2D landmarks' box
    (``pt2d``; missing landmarks are marked -1 and dropped).
    """
    try:
        from scipy.io import loadmat
    except ImportError:  # pragma: no cover - scipy comes with the [train] and [dev] extras
        raise EdgefaceError("reading AFLW2000-3D .mat files needs scipy: pip install 'edgeface[train]'") from None
    folder = Path(folder)
    samples = []
    for mat in sorted(folder.glob("*.mat")):
        img = mat.with_suffix(".jpg")
        if not img.exists():
            continue
        try:
            m = loadmat(str(mat))
            pp = np.asarray(m["Pose_Para"], dtype=np.float64).ravel()
            pts = np.asarray(m["pt2d"], dtype=np.float64)
        except Exception as e:  # scipy raises several types for a bad file
            raise EdgefaceError(f"{mat} is not a readable AFLW2000-3D .mat file ({type(e).__name__}); "
                                f"it needs Pose_Para and pt2d") from None
        pitch, yaw, roll = np.degrees(pp[:3])
        if max(abs(pitch), abs(yaw), abs(roll)) > max_angle:
            continue
        if pts.shape[0] != 2 and pts.shape[-1] == 2:
            pts = pts.T
        keep = (pts[0] >= 0) & (pts[1] >= 0)
        if keep.sum() < 2:
            continue
        xs, ys = pts[0][keep], pts[1][keep]
        box = (float(xs.min()), float(ys.min()), float(xs.max() - xs.min()), float(ys.max() - ys.min()))
        if box[2] <= 0 or box[3] <= 0:
            continue
        samples.append(Sample(img, box, float(yaw), float(pitch), float(roll), NAN, "", folder.name))
    return samples


def read_image_folder(folder: str | Path) -> list[Sample]:
    """A plain folder of face crops: each whole image is the face box (boxes found at read time)."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    return [Sample(p, (NAN, NAN, NAN, NAN), source=folder.name) for p in files]


def load_samples(folder: str | Path, split: str | None = None, require_labels: bool = False,
                 centre_people: bool = False, teacher_max_yaw: float | None = None) -> list[Sample]:
    """Read any supported layout; a clear error for a missing or empty folder."""
    folder = Path(folder)
    if not folder.exists():
        raise EdgefaceError(f"data folder {folder} does not exist")
    if not folder.is_dir():
        raise EdgefaceError(f"{folder} is not a folder; pass a folder with labels.csv, AFLW2000-3D .mat files "
                            "or images")
    if (folder / "labels.csv").is_file():
        samples = read_labels_csv(folder, split, centre_people, teacher_max_yaw)
    elif any(folder.glob("*.mat")):
        samples = read_aflw2000(folder)
    else:
        if require_labels:
            raise EdgefaceError(f"{folder} has no labels.csv (file,x,y,w,h,yaw,pitch,roll) and no AFLW2000-3D .mat "
                                "files")
        samples = read_image_folder(folder)
    if not samples:
        what = f" with split '{split}'" if split else ""
        raise EdgefaceError(f"data folder {folder} has no usable images{what}")
    return samples


def find_sets(folder: str | Path) -> list[Path]:
    """``folder`` itself if it is a set, else its sub-folders that are sets (e.g. ../shared/data)."""
    folder = Path(folder)
    if not folder.exists():
        raise EdgefaceError(f"data folder {folder} does not exist")
    if not folder.is_dir():
        raise EdgefaceError(f"data folder {folder} is a file; pass the folder holding labels.csv (or a folder of sets)")
    if (folder / "labels.csv").is_file() or any(folder.glob("*.mat")):
        return [folder]
    subs = sorted(p for p in folder.iterdir() if p.is_dir() and ((p / "labels.csv").is_file() or any(p.glob("*.mat"))))
    if subs:
        return subs
    return [folder]


def resolve_box(sample: Sample, image: np.ndarray, crop_scale: float) -> tuple[float, float, float, float]:
    """The sample's box; for a folder of face crops (no boxes), the box whose crop is the whole image."""
    if all(math.isfinite(v) for v in sample.box):
        return sample.box
    h, w = image.shape[:2]
    side = max(w, h) / crop_scale
    return ((w - side) / 2, (h - side) / 2, side, side)


# -- faces to check a model on -------------------------------------------------------------------------------
def default_verify_data() -> Optional[Path]:
    """$EDGEFACE_SHARED_DATA, ./../shared/data, or the repository's ../shared/data, whichever exists."""
    cands = []
    if os.environ.get("EDGEFACE_SHARED_DATA"):
        cands.append(Path(os.environ["EDGEFACE_SHARED_DATA"]))
    cands += [Path.cwd().parent / "shared" / "data", Path(__file__).resolve().parents[3] / "shared" / "data"]
    for c in cands:
        if c.is_dir() and any((p / "labels.csv").is_file() for p in c.iterdir() if p.is_dir()):
            return c
    return None


def synthetic_faces(spec, n: int = 48) -> np.ndarray:
    """Deterministic structured images (gradients, blobs, noise): enough to compare two engines' outputs."""
    s = spec.input_size
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    out = np.empty((n, s, s, 3), np.uint8)
    for i in range(n):
        cx, cy, r = rng.uniform(0.3 * s, 0.7 * s, 2).tolist() + [rng.uniform(0.2 * s, 0.45 * s)]
        face = np.exp(-(((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r)))
        img = np.stack([face * rng.uniform(80, 255) + xx * rng.uniform(0, 1), face * rng.uniform(60, 220),
                        face * rng.uniform(40, 200) + yy * rng.uniform(0, 1)], -1)
        out[i] = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    return out
