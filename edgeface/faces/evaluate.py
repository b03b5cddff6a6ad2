"""Accuracy on labelled sets: pose MAE per axis (where labels exist) and blur on synthetic blur.

A *runner* is any callable ``uint8 (N, S, S, 3) BGR -> (blur (N,), pose (N, 3))``: the torch model,
or any backend through the Predictor, so every artifact is measured by the same code.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

from .blur import KINDS, apply_blur, blur_label, sharpness, sigma_for_label
from .data import Sample, resolve_box
from ..core.preprocess import crop_face, iou, read_image
from ..core.spec import ModelSpec

Runner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
SHARP_MIN = 80.0  # variance of the Laplacian of the 112 px grey crop; below it a face is already soft
BLUR_SHARP_FRACTION = 0.25  # share of evaluated faces left sharp
MAX_LABEL = float(blur_label(8.0))


def load_crops(samples: list[Sample], spec: ModelSpec, progress=None, task=None) -> np.ndarray:
    crops = np.empty((len(samples), spec.input_size, spec.input_size, 3), np.uint8)
    for i, s in enumerate(samples):
        img = read_image(s.path)
        crops[i] = crop_face(img, resolve_box(s, img, spec.crop.scale), spec)
        if progress is not None:
            progress.advance(task)
    return crops


def run_batched(runner: Runner, crops: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    blurs, poses = [], []
    for i in range(0, len(crops), batch):
        b, p = runner(crops[i:i + batch])
        blurs.append(np.asarray(b, np.float64).reshape(-1))
        poses.append(np.asarray(p, np.float64).reshape(-1, 3))
    return np.concatenate(blurs), np.concatenate(poses)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    def rank(x):
        order = np.argsort(x, kind="mergesort")
        r = np.empty(len(x), np.float64)
        r[order] = np.arange(len(x))
        # average ranks over ties
        xs = x[order]
        i = 0
        while i < len(xs):
            j = i
            while j + 1 < len(xs) and xs[j + 1] == xs[i]:
                j += 1
            if j > i:
                r[order[i:j + 1]] = (i + j) / 2
            i = j + 1
        return r

    if len(a) < 2:
        return float("nan")
    ra, rb = rank(np.asarray(a, np.float64)), rank(np.asarray(b, np.float64))
    ra -= ra.mean()
    rb -= rb.mean()
    den = math.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / den) if den > 0 else float("nan")


def synthetic_blur_set(crops: np.ndarray, seed: int = 0, sharp_min: float = SHARP_MIN):
    """Deterministic blurred copies of the sharp crops: (images, labels). Kinds cycle; strengths are uniform
    in label space with a quarter left sharp."""
    keep = [i for i in range(len(crops)) if sharpness(crops[i]) >= sharp_min]
    imgs, labels = [], []
    for j, i in enumerate(keep):
        rng = np.random.default_rng([seed, j])
        if rng.random() < BLUR_SHARP_FRACTION:
            imgs.append(crops[i])
            labels.append(0.0)
            continue
        label = float(rng.uniform(0.03, MAX_LABEL))
        sigma = sigma_for_label(label)
        imgs.append(apply_blur(crops[i], KINDS[j % len(KINDS)], sigma, float(rng.uniform(0, 180))))
        labels.append(label)
    if not imgs:
        return np.empty((0,) + crops.shape[1:], np.uint8), np.empty(0)
    return np.stack(imgs), np.asarray(labels)


# |yaw| bins users ask about: where does the model stop being right? The last bin takes everything wider.
YAW_BINS = ((0.0, 30.0), (30.0, 60.0), (60.0, math.inf))


def yaw_bin_name(lo: float, hi: float) -> str:
    return f"{lo:.0f}-{hi:.0f}" if math.isfinite(hi) else f"{lo:.0f}+"


def pose_metrics(pred: np.ndarray, truth: np.ndarray) -> dict:
    """MAE per axis and their mean, overall and by |true yaw| bin (``by_yaw``)."""
    out = _axis_maes(pred, truth)
    by_yaw = {}
    ayaw = np.abs(truth[:, 0])
    for lo, hi in YAW_BINS:
        m = (ayaw >= lo) & (ayaw < hi)  # NaN yaw falls in no bin
        if m.any():
            r = _axis_maes(pred[m], truth[m])
            by_yaw[yaw_bin_name(lo, hi)] = {"n": int(m.sum()), "mean_mae": r["mean_mae"], "yaw_mae": r["yaw_mae"],
                                            "pitch_mae": r["pitch_mae"], "roll_mae": r["roll_mae"]}
    out["by_yaw"] = by_yaw
    return out


def _axis_maes(pred: np.ndarray, truth: np.ndarray) -> dict:
    out, maes = {}, []
    for k, name in enumerate(("yaw", "pitch", "roll")):
        m = ~np.isnan(truth[:, k])
        if m.any():
            out[f"{name}_mae"] = float(np.abs(pred[m, k] - truth[m, k]).mean())
            out[f"n_{name}"] = int(m.sum())
            maes.append(out[f"{name}_mae"])
        else:
            out[f"{name}_mae"] = None
    out["mean_mae"] = float(np.mean(maes)) if maes else None
    return out


def evaluate_crops(runner: Runner, crops: np.ndarray, poses: np.ndarray, blur: bool = True, seed: int = 0,
                   batch: int = 64) -> dict:
    res: dict = {"n": int(len(crops))}
    _, pose_pred = run_batched(runner, crops, batch)
    res.update(pose_metrics(pose_pred, poses))
    if blur:
        imgs, labels = synthetic_blur_set(crops, seed)
        if len(imgs):
            pred, _ = run_batched(runner, imgs, batch)
            sharp = labels == 0
            res.update(blur_mae=float(np.abs(pred - labels).mean()), blur_spearman=spearman(pred, labels),
                       blur_sharp_mean=float(pred[sharp].mean()) if sharp.any() else None, n_blur=int(len(imgs)))
        else:
            res.update(blur_mae=None, blur_spearman=None, blur_sharp_mean=None, n_blur=0)
    return res


_CROP_MEMO: dict = {}


def evaluate_samples(runner: Runner, samples: list[Sample], spec: ModelSpec, blur: bool = True, seed: int = 0) -> dict:
    key = (id(samples), len(samples), spec.input_size, spec.crop)
    if key not in _CROP_MEMO:  # crops are reused across epochs during training
        _CROP_MEMO[key] = (load_crops(samples, spec), np.array([s.pose for s in samples], np.float32))
    crops, poses = _CROP_MEMO[key]
    return evaluate_crops(runner, crops, poses, blur, seed)


def format_table(results: dict[str, dict], title: str = "accuracy"):
    from rich.table import Table

    table = Table(title=title)
    cols = ("n", "yaw_mae", "pitch_mae", "roll_mae", "mean_mae", "blur_mae", "blur_spearman", "blur_sharp_mean")
    bins = [yaw_bin_name(lo, hi) for lo, hi in YAW_BINS]
    # Headers fold onto two lines rather than end in "…" on a narrow terminal (140 columns cut "blur_spea…").
    table.add_column("set", overflow="fold")
    for c in cols:
        table.add_column(c.replace("_", " "), justify="right", overflow="fold")
    for b in bins:
        table.add_column(f"mean |yaw| {b}", justify="right", overflow="fold")

    def cell(v):
        return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    for name, r in results.items():
        per_bin = r.get("by_yaw") or {}
        table.add_row(name, *[cell(r.get(c)) for c in cols],
                      *[cell(per_bin[b]["mean_mae"]) + f" ({per_bin[b]['n']})" if b in per_bin else "-" for b in bins])
    return table


# -- end to end: detector -> crop -> model ---------------------------------------------------------------------
# A detection is the labelled face when its raw box holds the labelled box's centre, or its mapped box overlaps the
# labelled box this much. The centre rule does not depend on which box convention the labels and the box map use
# (the data pack's sets are labelled with MediaPipe boxes, AFLW2000-3D with landmark boxes), so changing the map
# changes the crops, not which faces count as found.
DETECT_MATCH_IOU = 0.3
DETECT_WIDE_YAW = YAW_BINS[-1][0]  # detection rates are reported apart for the widest bin


def detect_samples(detector, samples: list[Sample], spec: ModelSpec):
    """(crops from detector boxes, crops from labelled boxes, matched mask, IoU of the matched box with the
    label) over full labelled images: of the detections that match (DETECT_MATCH_IOU), the one whose mapped box
    best overlaps the labelled box."""
    n, s = len(samples), spec.input_size
    det_crops = np.zeros((n, s, s, 3), np.uint8)
    lab_crops = np.empty((n, s, s, 3), np.uint8)
    matched = np.zeros(n, bool)
    overlap = np.zeros(n, np.float32)
    for i, smp in enumerate(samples):
        img = read_image(smp.path)
        lab_crops[i] = crop_face(img, resolve_box(smp, img, spec.crop.scale), spec)
        found = detector.detect(img)
        if not len(found):
            continue
        boxes = detector.model_boxes(found)
        ov = iou(boxes, np.array([smp.box]))[:, 0]
        x, y, w, h = smp.box
        raw = found.boxes
        holds = ((raw[:, 0] <= x + w / 2) & (x + w / 2 <= raw[:, 0] + raw[:, 2])
                 & (raw[:, 1] <= y + h / 2) & (y + h / 2 <= raw[:, 1] + raw[:, 3]))
        ok = holds | (ov >= DETECT_MATCH_IOU)
        if ok.any():
            k = int(np.argmax(np.where(ok, ov, -1.0)))
            matched[i], overlap[i] = True, ov[k]
            det_crops[i] = crop_face(img, boxes[k], spec)
    return det_crops, lab_crops, matched, overlap


def evaluate_detected(runner: Runner, detector, samples: list[Sample], spec: ModelSpec, batch: int = 64) -> dict:
    """Detection rate (|yaw| <= 60 and beyond) and pose MAE with detector boxes beside labelled boxes, on the
    same detected faces; blur MAE between the two crops' blur scores (the model's own, no blur labels)."""
    det_crops, lab_crops, matched, overlap = detect_samples(detector, samples, spec)
    poses = np.array([s.pose for s in samples], np.float32)
    ayaw = np.abs(poses[:, 0])
    rate = {}
    for name, m in (("all", np.ones(len(samples), bool)), ("yaw<=60", ayaw <= DETECT_WIDE_YAW),
                    ("yaw>60", ayaw > DETECT_WIDE_YAW), ("yaw_unknown", np.isnan(ayaw))):
        if m.any():
            rate[name] = {"n": int(m.sum()), "detected": int(matched[m].sum()), "rate": float(matched[m].mean())}
    res: dict = {"n": len(samples), "detection": rate,
                 "mean_iou": float(overlap[matched].mean()) if matched.any() else None}
    if matched.any():
        b_det, p_det = run_batched(runner, det_crops[matched], batch)
        b_lab, p_lab = run_batched(runner, lab_crops[matched], batch)
        truth = poses[matched]
        res["detector_boxes"] = pose_metrics(p_det, truth)
        res["labelled_boxes"] = pose_metrics(p_lab, truth)
        res["blur_detector_vs_labelled_mae"] = float(np.abs(b_det - b_lab).mean())
        d, lab = res["detector_boxes"]["mean_mae"], res["labelled_boxes"]["mean_mae"]
        res["mean_mae_delta"] = (d - lab) if d is not None and lab is not None else None
    return res


# -- INT8 (or any artifact) against FP32: the one computation quantize, deploy and bench print ---------------------
COMPARISON_FACES_PER_SET = 64  # held-out faces per labelled set, a fixed-seed choice (deploy's verify set)


def comparison_samples(data, per_set: int | None = COMPARISON_FACES_PER_SET, seed: int = 0,
                       split: str | None = "val") -> list[tuple[Path, list[Sample]]]:
    """[(set folder, its chosen samples)]: the rule behind ``comparison_faces`` (bench --host sends the same rows
    to the device)."""
    from ..core.errors import EdgefaceError
    from .data import find_sets, load_samples

    out = []
    for folder in find_sets(data):
        try:
            rows = load_samples(folder, split=split)
        except EdgefaceError:
            if not split:
                raise
            rows = load_samples(folder)  # a plain folder (no split column): all of it
        n = len(rows) if per_set is None else min(per_set, len(rows))
        rng = np.random.default_rng(seed)
        pick = sorted(rng.choice(len(rows), size=n, replace=False).tolist())
        out.append((folder, [rows[i] for i in pick]))
    return out


def comparison_faces(data, spec: ModelSpec, per_set: int | None = COMPARISON_FACES_PER_SET, seed: int = 0,
                     split: str | None = "val") -> tuple[np.ndarray, np.ndarray, str]:
    """(crops, poses with NaN where unknown, name) of the faces an artifact is compared with FP32 on: the val
    split of each labelled set in ``data`` (a set, or a folder of sets as `eval` takes), ``per_set`` of each by a
    fixed seed (None: all). The name counts the faces per set and holds no path of this host."""
    chosen = comparison_samples(data, per_set, seed, split)
    samples = [s for _, rows in chosen for s in rows]
    used = [f"{folder.name}:{len(rows)}" for folder, rows in chosen]
    crops = load_crops(samples, spec)
    poses = np.array([s.pose for s in samples], np.float32)
    return crops, poses, f"{Path(data).name} {split + ' split' if split else 'all rows'} ({', '.join(used)})"


def vs_fp32(blur, pose, ref_blur, ref_pose, truth=None) -> dict:
    """An artifact's outputs against the FP32 reference's on the same faces: the deviation (degrees; blur in
    score units) and, where ``truth`` has labels, the pose mean MAE of both. Every tool prints this dict with
    ``format_vs_fp32``, so the same artifact on the same faces reads the same everywhere."""
    from ..core.compare import deviation
    from .pose import rotation_angle

    d = deviation(blur, pose, ref_blur, ref_pose)
    turned = rotation_angle(pose, ref_pose) if len(pose) else np.full(1, np.nan)
    out = {"n_faces": int(len(pose)), **d, "pose_max_rotation": float(turned.max()),
           "pose_mean_rotation": float(turned.mean()), "pose_mae": None, "fp32_pose_mae": None}
    if truth is not None and len(truth) and not np.isnan(np.asarray(truth, np.float64)).all():
        out["pose_mae"] = _axis_maes(np.asarray(pose, np.float64), np.asarray(truth, np.float64))["mean_mae"]
        out["fp32_pose_mae"] = _axis_maes(np.asarray(ref_pose, np.float64), np.asarray(truth, np.float64))["mean_mae"]
    return out


def format_vs_fp32(v: dict, faces: str) -> str:
    """One line: what was compared, on how many faces, in which units, with the FP32 baseline beside it."""
    line = (f"vs FP32 on {v['n_faces']} faces ({faces}): pose |Δ| max {v['pose_max_abs']:.2f}°, "
            f"p99 {v['pose_p99_abs']:.2f}°, mean {v['pose_mean_abs']:.3f}°")
    if v.get("pose_max_rotation") is not None:  # older JSON has no rotation figures
        line += f", head turned by at most {v['pose_max_rotation']:.2f}°"
    line += f"; blur |Δ| max {v['blur_max_abs']:.4f}"
    if v.get("pose_mae") is not None:
        line += (f"; pose mean MAE {v['pose_mae']:.2f}° (FP32 {v['fp32_pose_mae']:.2f}°, "
                 f"{v['pose_mae'] - v['fp32_pose_mae']:+.2f}°)")
    return line
