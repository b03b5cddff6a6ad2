#!/usr/bin/env python3
"""Per-person pose label offsets of the lab sets, measured two independent ways (JSON out).

Pointing'04 and QMUL label each photo with the camera rig's angle, not the head's: a person who sits
turned a little reads as offset on every photo. This script measures that offset per person (the
labels.csv ``group`` column) near frontal (|GT yaw| <= --max-yaw):

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
import math
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ANGLES = ("yaw", "pitch")


def _num(v: str | None) -> float:
    try:
        return float(v) if v not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _median(xs: list[float]) -> float | None:
    xs = [x for x in xs if not math.isnan(x)]
    return round(float(np.median(xs)), 2) if xs else None


def teacher_offsets(folder: Path, max_yaw: float) -> dict[str, dict]:
    per = defaultdict(lambda: {a: [] for a in ANGLES} | {"split": ""})
    with open(folder / "labels.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            yaw = _num(row.get("yaw"))
            if math.isnan(yaw) or abs(yaw) > max_yaw:
                continue
            g = per[row.get("group", "")]
            g["split"] = row.get("split", "")
            for a in ANGLES:
                g[a].append(_num(row.get(f"t_{a}")) - _num(row.get(a)))
    return {k: {"split": v["split"], **{a: _median(v[a]) for a in ANGLES}, "n": len(v["yaw"])} for k, v in per.items()}


def main() -> int:
    from edgeface.data import read_labels_csv
    from edgeface.errors import EdgefaceError
    from edgeface.evaluate import load_crops, run_batched
    from edgeface.runners import make_runner
    from edgeface.spec import ModelSpec

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--model", default=None, help="checkpoint or artifact (default: the shipped model)")
    ap.add_argument("--sets", default="pointing04,qmul")
    ap.add_argument("--max-yaw", type=float, default=30.0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    try:
        runner, spec, _ = make_runner(args.model, "auto")
        out: dict = {"max_yaw": args.max_yaw, "sets": {}}
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
            near = np.abs(truth[:, 0]) <= args.max_yaw
            centred = err.copy()
            people = teacher_offsets(folder, args.max_yaw)
            for g in np.unique(groups):
                m = groups == g
                bias = np.nanmedian(err[m & near], axis=0) if (m & near).any() else np.zeros(3)
                centred[m] -= bias
                people.setdefault(g, {"split": str(splits[m][0])})
                people[g]["model"] = {a: round(float(bias[i]), 2) for i, a in enumerate(ANGLES)}
            per_split = {}
            for sp in np.unique(splits):
                m = splits == sp
                per_split[str(sp)] = {
                    "n": int(m.sum()),
                    **{f"{a}_mae": round(float(np.nanmean(np.abs(err[m, i]))), 2) for i, a in enumerate(ANGLES)},
                    **{f"{a}_mae_person_centred": round(float(np.nanmean(np.abs(centred[m, i]))), 2)
                       for i, a in enumerate(ANGLES)},
                }
            out["sets"][name] = {"splits": per_split,
                                 "people": {k: {"split": v["split"],
                                                "teacher_minus_gt": {a: v.get(a) for a in ANGLES},
                                                "model_minus_gt": v.get("model")}
                                            for k, v in sorted(people.items())}}
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
