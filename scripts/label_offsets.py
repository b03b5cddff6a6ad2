#!/usr/bin/env python3
"""Per-person pose label offsets of the lab sets, measured two independent ways (JSON out).

Pointing'04 and QMUL label each photo with the camera rig's angle, not the head's: a person who sits
turned a little reads as offset on every photo. This script measures that offset per person (the
labels.csv ``group`` column) near frontal (|GT yaw| <= 30, edgeface.data.PERSON_OFFSET_MAX_YAW):

* ``teacher_minus_gt``: median of the teacher's angle (t_yaw/t_pitch, MediaPipe) minus the label;
* ``model_minus_gt``: median of the model's prediction minus the label;

and, per set and split, the model's MAE as measured and after removing each person's own median error
(``mae_person_centred``): the part of the error that no model could remove without knowing the person.

    python3 scripts/label_offsets.py --data ../shared/data [--model edgeface/weights/default.pt] [--json out.json]
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ANGLES = ("yaw", "pitch")


def main() -> int:
    from edgeface.core.errors import EdgefaceError
    from edgeface.faces.data import PERSON_OFFSET_MAX_YAW, read_labels_csv, teacher_label_offsets
    from edgeface.faces.evaluate import load_crops, run_batched
    from edgeface.runtime.predictor import open_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--model", default=None, help="checkpoint or artifact (default: the shipped model)")
    ap.add_argument("--sets", default="pointing04,qmul")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    try:
        predictor, _ = open_model(args.model, "auto")
        runner, spec = predictor.blur_and_pose, predictor.spec
        out: dict = {"max_yaw": PERSON_OFFSET_MAX_YAW, "sets": {}}
        for name in args.sets.split(","):
            folder = args.data / name
            if not (folder / "labels.csv").is_file():
                raise EdgefaceError(f"{folder}/labels.csv not found; pass --data pointing at ../shared/data")
            samples = read_labels_csv(folder)
            _, pred = run_batched(runner, load_crops(samples, spec))
            truth = np.stack([s.pose for s in samples]).astype(np.float64)
            err = pred - truth
            groups = np.array([s.group for s in samples])
            splits = np.array([s.split for s in samples])
            near = np.abs(truth[:, 0]) <= PERSON_OFFSET_MAX_YAW  # where the offsets are measured
            centred = err.copy()
            with open(folder / "labels.csv", newline="") as fh:
                teacher = teacher_label_offsets(list(csv.DictReader(fh)))
            people = {}
            for g in np.unique(groups):
                m = groups == g
                bias = np.nanmedian(err[m & near], axis=0) if (m & near).any() else np.zeros(3)
                centred[m] -= bias
                t = teacher.get(str(g), (np.nan, np.nan))
                people[str(g)] = {"split": str(splits[m][0]),
                                  "teacher_minus_gt": {a: None if np.isnan(t[i]) else round(t[i], 2)
                                                       for i, a in enumerate(ANGLES)},
                                  "model_minus_gt": {a: round(float(bias[i]), 2) for i, a in enumerate(ANGLES)}}
            per_split = {}
            for sp in np.unique(splits):
                m = splits == sp
                per_split[str(sp)] = {
                    "n": int(m.sum()),
                    **{f"{a}_mae": round(float(np.nanmean(np.abs(err[m, i]))), 2) for i, a in enumerate(ANGLES)},
                    **{f"{a}_mae_person_centred": round(float(np.nanmean(np.abs(centred[m, i]))), 2)
                       for i, a in enumerate(ANGLES)},
                }
            out["sets"][name] = {"splits": per_split, "people": people}
    except EdgefaceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(out, indent=1)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
