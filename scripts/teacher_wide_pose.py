#!/usr/bin/env python3
"""What the teacher's wide-pose labels are worth: teacher vs lab ground truth by |yaw| bin (JSON out).

The in-the-wild sets have no ground truth, so their pose labels are the teacher's (MediaPipe FaceMesh).
The lab sets (Pointing'04, QMUL) carry both, so they show how far the teacher drifts as the head turns,
and how many in-the-wild training rows a mask at ``--max-yaw`` removes.

    python3 scripts/teacher_wide_pose.py --data ../shared/data [--max-yaw 45] [--json out.json]
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BINS = ((0, 30), (30, 45), (45, 60), (60, 75), (75, 91))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--max-yaw", type=float, default=45.0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    out = {"teacher_vs_gt": {}, "masked_rows": {}}
    for name in sorted(p.name for p in args.data.iterdir() if (p / "labels.csv").is_file()):
        with open(args.data / name / "labels.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        col = lambda k: np.array([float(r[k]) for r in rows])  # noqa: E731
        gt, t_yaw, t_pitch, gt_pitch = col("yaw"), col("t_yaw"), col("t_pitch"), col("pitch")
        train = np.array([r["split"] == "train" for r in rows])
        if np.isfinite(gt).any():
            per = {}
            for lo, hi in BINS:
                m = np.isfinite(gt) & np.isfinite(t_yaw) & (np.abs(gt) >= lo) & (np.abs(gt) < hi)
                if m.any():
                    per[f"{lo}-{hi}"] = {"n": int(m.sum()), "yaw_mae": float(np.abs(t_yaw[m] - gt[m]).mean()),
                                         "pitch_mae": float(np.abs(t_pitch[m] - gt_pitch[m]).mean()),
                                         "median_abs_teacher_yaw": float(np.median(np.abs(t_yaw[m])))}
            out["teacher_vs_gt"][name] = per
        else:
            out["masked_rows"][name] = {"train_rows": int(train.sum()),
                                        "masked": int((train & (np.abs(t_yaw) > args.max_yaw)).sum())}
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
