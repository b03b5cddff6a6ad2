"""How far one set of outputs strays from a reference's: the one deviation computation.

bench (``vs_reference``), deploy's verification against the FP32 model and quantize's accuracy guard all
report these numbers, so "pose_max_abs" means the same thing wherever it appears: the largest absolute
difference in degrees over every crop and every angle (yaw, pitch and roll together).
"""
from __future__ import annotations

import numpy as np


def abs_deviation(values, reference) -> dict[str, float]:
    """{"max", "mean", "p99"} of |values - reference| over every element (float64)."""
    d = np.abs(np.asarray(values, np.float64) - np.asarray(reference, np.float64)).reshape(-1)
    if d.size == 0:
        return {"max": float("nan"), "mean": float("nan"), "p99": float("nan")}
    return {"max": float(d.max()), "mean": float(d.mean()), "p99": float(np.percentile(d, 99))}


def deviation(blur, pose, ref_blur, ref_pose) -> dict[str, float]:
    """Blur and pose outputs against a reference's on the same inputs.

    Keys: pose_max_abs, pose_mean_abs, pose_p99_abs (degrees), blur_max_abs, blur_mean_abs (score units).
    ``blur`` and ``pose`` may cover different inputs (deploy budgets blur over faces and their blurred
    copies, pose over the faces only); each is compared with its own reference.
    """
    p, b = abs_deviation(pose, ref_pose), abs_deviation(blur, ref_blur)
    return {"pose_max_abs": p["max"], "pose_mean_abs": p["mean"], "pose_p99_abs": p["p99"],
            "blur_max_abs": b["max"], "blur_mean_abs": b["mean"]}
