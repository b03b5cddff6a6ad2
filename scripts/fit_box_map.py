"""Fit the map from YuNet's box + landmarks to the data pack's face boxes (MediaPipe's square, brows to chin).

    python scripts/fit_box_map.py --data ../shared/data [--out edgeface/weights/yunet/box_map.json]
                                  [--target data|landmark] [--cache runs/yunet-train.npz]

Runs the shipped detector on the train split of every set, keeps the detection that matches the labelled
face (IoU >= 0.3 with its box), and fits a ridge least-squares map from the detection's landmarks (in units
of its box) to the labelled box's centre offset and log side (``edgeface.runtime.detector.map_features``).
Writes the 12x3 coefficients with the fit's residuals; the val splits are left for `edgeface eval --detect`.

``--target landmark`` fits to the face's landmark box instead (the box of the 68 landmark points of its FaceMesh,
``model.profiling.landmark_box``): the box AFLW2000-3D's photos are measured with, and half the training crops'.
Only sets with a mesh.npz take part (never aflw2000_dev: it is validation only). ``--cache`` keeps the
detections (per image: raw box and 5 landmarks, NaN where none matched), so a second fit skips the detector.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from edgeface.core.preprocess import iou, read_image
from edgeface.faces.data import find_sets, load_samples
from edgeface.model.profiling import landmark_box
from edgeface.model.train import set_meshes
from edgeface.runtime.detector import BOX_MAP, FaceDetector, map_features, map_targets

MATCH_IOU = 0.3


def detect_set(det: FaceDetector, samples):
    """Per sample: (raw box, landmarks) of the detection matching the labelled box, or None."""
    out = []
    for s in samples:
        d = det.detect(read_image(s.path))
        if not len(d):
            out.append(None)
            continue
        ov = iou(det.model_boxes(d), np.array([s.box]))[:, 0]
        k = int(np.argmax(ov))
        out.append((d.boxes[k], d.landmarks[k]) if ov[k] >= MATCH_IOU else None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=BOX_MAP)
    ap.add_argument("--target", choices=("data", "landmark"), default="data",
                    help="the box to map to: the data pack's (MediaPipe's square) or the face's landmark box")
    ap.add_argument("--cache", type=Path, help="an .npz keeping the detections between fits")
    ap.add_argument("--ridge", type=float, default=1e-3)
    ap.add_argument("--per-set", type=int, default=0, help="at most this many train images per set (0: all)")
    a = ap.parse_args()
    det = FaceDetector(box_map=None)
    cache = dict(np.load(a.cache, allow_pickle=False)) if a.cache and a.cache.is_file() else {}
    X, Y, W, stats = [], [], [], {}
    for folder in find_sets(a.data):
        if not (folder / "mesh.npz").is_file():
            continue  # the training sets ship meshes; aflw2000_dev (validation only) does not
        samples = load_samples(folder, split="train")
        if a.per_set:
            samples = samples[:: max(1, len(samples) // a.per_set)][: a.per_set]
        t = time.time()
        key = f"{folder.name}-{a.per_set}"  # the detections of exactly these samples (--per-set picks them)
        if key in cache and len(cache[key]) == len(samples):
            found = [None if np.isnan(r[0]) else (r[:4], r[4:].reshape(5, 2)) for r in cache[key]]
        else:
            found = detect_set(det, samples)
            cache[key] = np.array([np.full(14, np.nan) if f is None else np.concatenate([f[0], np.ravel(f[1])])
                                   for f in found], np.float64)
        if a.target == "landmark":
            meshes = set_meshes(a.data, [folder.name])
            targets = [landmark_box(meshes[s.path]) if s.path in meshes else None for s in samples]
        else:
            targets = [s.box for s in samples]
        ok = [(t_, f) for t_, f in zip(targets, found) if f is not None and t_ is not None]
        stats[folder.name] = {"n": len(samples), "matched": len(ok)}
        print(f"{folder.name}: {len(ok)}/{len(samples)} matched ({time.time() - t:.0f} s)", flush=True)
        boxes = np.array([f[0] for _, f in ok])
        lms = np.array([f[1] for _, f in ok])
        feats, centre, size = map_features(boxes, lms)
        X.append(feats)
        Y.append(map_targets(np.array([t_ for t_, _ in ok]), centre, size))
        W.append(np.full(len(ok), 1.0 / len(ok)))  # every set weighs the same
    if a.cache:
        np.savez(a.cache, **cache)
    X, Y, W = np.concatenate(X), np.concatenate(Y), np.concatenate(W)
    sw = np.sqrt(W)[:, None]
    A = X * sw
    reg = a.ridge * np.eye(X.shape[1])
    reg[0, 0] = 0.0
    coef = np.linalg.solve(A.T @ A + reg, A.T @ (Y * sw))
    res = Y - X @ coef
    base = Y - Y.mean(0)
    fit = {"residual_rms": [float(v) for v in np.sqrt((res ** 2).mean(0))],
           "constant_only_rms": [float(v) for v in np.sqrt((base ** 2).mean(0))]}
    print("residual rms (dx, dy, dlog side; units of the detector box):", fit)
    a.out.write_text(json.dumps({
        "what": ("YuNet box + 5 landmarks -> " + ("the face's landmark box (its 68 FaceMesh landmark points)"
                 if a.target == "landmark" else "data-pack face box (square, brows to chin)")
                 + "; see edgeface.runtime.detector.map_features"), "target": a.target,
        "detector": det.model.name, "fitted_on": "train split of " + ", ".join(stats), "sets": stats,
        "targets": ["centre dx / size", "centre dy / size", "log(side / size)"], "ridge": a.ridge, "fit": fit,
        "coef": [[round(float(v), 6) for v in row] for row in coef]}, indent=1) + "\n")
    print("wrote", a.out)


if __name__ == "__main__":
    main()
