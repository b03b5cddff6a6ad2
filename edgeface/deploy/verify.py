"""Verifying a bundle before it is sealed: through the loader a device uses, against the FP32 reference.

The faces are held out (the val split of the labelled sets, a fixed choice per set); without labelled data,
deterministic synthetic images still compare the two engines' outputs. Pose is budgeted on the faces as
they are, blur on the faces and on synthetically blurred copies of them (``recipes/targets/*.yaml``,
``verify:``).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from ..core.compare import abs_deviation, deviation
from ..engines import registry
from ..faces.data import default_verify_data, synthetic_faces  # noqa: F401 - deploy's API
from ..runtime.bundle import ANY_DEVICE, open_bundle
from ..runtime.predictor import Predictor

VERIFY_PER_SET = 64          # held-out faces per labelled set used for verification (deterministic choice)
# pose_max_rotation: the largest angle the head turned between the two answers (faces.pose.rotation_angle).
# The shipped targets bound the largest change by it, not by the largest change of one Euler angle
# (pose_max_abs, still reported, and still budgeted where a target sets it): near ±90° yaw pitch and roll turn
# about nearly the same axis, and a head turned by 7° there reads 30° apart in both.
BUDGET_KEYS = ("pose_max_abs", "pose_max_rotation", "pose_p99_abs", "pose_mean_abs", "blur_max_abs",
               "pose_mae_increase")


def load_verify_set(data: Optional[Path], spec, per_set: int = VERIFY_PER_SET, seed: int = 0):
    """(crops uint8 BGR, poses (N, 3) with NaN where unknown, description). Held-out = the val split: the faces
    quantize and bench compare INT8 with FP32 on by default too (``faces.evaluate.comparison_faces``)."""
    if data is None:
        return synthetic_faces(spec), np.full((48, 3), np.nan, np.float32), \
            "synthetic images (no held-out faces found; pass --verify-data DIR)"
    from ..faces.evaluate import comparison_faces

    return comparison_faces(data, spec, per_set, seed)


def verify_bundle(runner, reference, crops: np.ndarray, poses: np.ndarray, budget: dict) -> dict:
    """Compare a bundle's outputs with the FP32 reference on faces and on synthetic blur; check the budget."""
    from ..faces.evaluate import pose_metrics, run_batched, spearman, synthetic_blur_set, vs_fp32

    ref_b, ref_p = run_batched(reference, crops)
    art_b, art_p = run_batched(runner, crops)
    blur_imgs, blur_labels = synthetic_blur_set(crops)
    if len(blur_imgs):
        ref_bb, ref_bp = run_batched(reference, blur_imgs)
        art_bb, art_bp = run_batched(runner, blur_imgs)
    else:
        ref_bb = art_bb = np.empty(0)
        ref_bp = art_bp = np.empty((0, 3))
    # Pose is budgeted on the faces as they are; on the synthetically blurred copies (some blurred until the
    # face is gone) pose is reported but not budgeted. Blur is budgeted on both.
    d = deviation(np.concatenate([art_b, art_bb]), art_p, np.concatenate([ref_b, ref_bb]), ref_p)
    ref_acc, art_acc = pose_metrics(ref_p, poses), pose_metrics(art_p, poses)
    increase = None
    if ref_acc.get("mean_mae") is not None and art_acc.get("mean_mae") is not None:
        increase = art_acc["mean_mae"] - ref_acc["mean_mae"]
    faces_vs = vs_fp32(art_b, art_p, ref_b, ref_p, poses)  # the faces alone: what quantize and bench print
    result = {
        "n_faces": int(len(crops)), "n_blurred": int(len(blur_imgs)),
        "pose_max_abs": d["pose_max_abs"], "pose_p99_abs": d["pose_p99_abs"], "pose_mean_abs": d["pose_mean_abs"],
        "pose_max_rotation": faces_vs["pose_max_rotation"],
        "pose_max_abs_blurred": abs_deviation(art_bp, ref_bp)["max"] if len(blur_imgs) else None,
        "blur_max_abs": d["blur_max_abs"], "blur_mean_abs": d["blur_mean_abs"],
        "reference": {"pose_mean_mae": ref_acc.get("mean_mae"), "yaw_mae": ref_acc.get("yaw_mae"),
                      "pitch_mae": ref_acc.get("pitch_mae"), "roll_mae": ref_acc.get("roll_mae"),
                      "blur_spearman": spearman(ref_bb, blur_labels) if len(blur_imgs) > 1 else None},
        "bundle": {"pose_mean_mae": art_acc.get("mean_mae"), "yaw_mae": art_acc.get("yaw_mae"),
                   "pitch_mae": art_acc.get("pitch_mae"), "roll_mae": art_acc.get("roll_mae"),
                   "blur_spearman": spearman(art_bb, blur_labels) if len(blur_imgs) > 1 else None},
        "pose_mae_increase": increase,
        "budget": dict(budget),
        "vs_fp32": faces_vs,
    }
    over = []
    for key in BUDGET_KEYS:
        value = result[key]
        if value is not None and budget.get(key) is not None and value > budget[key]:
            over.append(f"{key} {value:.4g} > {budget[key]:.4g}")
    result["passed"] = not over
    result["exceeded"] = over
    return result


def bundle_runner(bundle: Path, target: dict):
    """(runner, Predictor, how) through the same loader the device uses. A bundle whose engine builds on the
    device (TensorRT: not installed here) runs its artifact on the engine that checks it (its ONNX in
    onnxruntime): the graph and its Q/DQ scales are checked; the engine's own numbers are checked by
    ``edgeface build`` on the device."""
    engine = registry.get(target["backend"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "deployed for rpi, runs here on x86" is expected while verifying
        if engine.builds_on_device:
            info = open_bundle(bundle, device=ANY_DEVICE, verify=False)
            backend, options = engine.checking()
            pred = Predictor(str(info.artifact), backend=backend, **options)
            how = (f"{backend} on the bundle's {engine.bundle_format.upper()} ({engine.title} engine numbers are "
                   f"checked on the device)")
        else:
            pred = Predictor(str(bundle))
            how = f"{pred.backend} through Predictor(bundle)"
    return pred.blur_and_pose, pred, how


def verify_line(v: dict) -> str:
    """What verification measured, for the terminal: the comparison on the faces (the line quantize and bench
    print for the same faces), then the target's budget with its limits beside the figures it checks."""
    from ..faces.evaluate import format_vs_fp32

    b = v["budget"]
    limits = ", ".join(f"{k.replace('_abs', '').replace('_', ' ')} {v[k]:.2f} {'≤' if v[k] <= b[k] else '>'} {b[k]:g}"
                       for k in ("pose_max_rotation", "pose_max_abs", "pose_p99_abs", "pose_mean_abs", "blur_max_abs")
                       if v.get(k) is not None and b.get(k) is not None)
    verdict = "[green]within budget[/green]" if v["passed"] else "[red]over budget[/red]"
    face_line = format_vs_fp32(v["vs_fp32"], v.get("data", "held-out faces")) if "vs_fp32" in v else ""
    return (f"{face_line}\n{verdict} of the target (faces + {v['n_blurred']} blurred copies for blur): {limits}"
            if face_line else f"{verdict}: {limits}")
