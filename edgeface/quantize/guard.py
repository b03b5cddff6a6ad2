"""The accuracy guard: every emitted artifact against FP32, on held-out labelled images.

Runners go through ``edgeface.runtime.Predictor`` — the loader users get — so what is measured is what
ships. ``accuracy_table`` is the PTQ table (pose mean MAE, blur MAE, their rise over FP32, and per-output
deviation from FP32's own outputs); the QAT work calls it for its own artifacts.
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from ..core.compare import deviation as output_deviation
from ..core.spec import ModelSpec
from ..engines import registry
from ..faces.evaluate import Runner, evaluate_crops, run_batched
from ..runtime.predictor import Predictor

POSE_BUDGET_DEG = 0.5   # allowed rise of pose mean MAE over FP32
BLUR_BUDGET = 0.01      # allowed rise of blur MAE over FP32


def checking_engine(engine_name: str) -> str:
    """The engine that runs an engine's artifacts for accuracy checks here (TensorRT's Q/DQ ONNX: onnxruntime)."""
    return registry.get(engine_name).checking()[0]


def artifact_runner(path, backend: str, threads: int | None = None, **options) -> Runner:
    """A runner over an artifact, through the Predictor (close it with ``runner.__self__.close()``)."""
    return Predictor(str(path), backend=backend, threads=threads, **options).blur_and_pose


def check_runner(path, engine_name: str) -> Runner:
    """A runner over an engine's artifact as the registry says to check it on this machine."""
    backend, options = registry.get(engine_name).checking()
    return artifact_runner(path, backend, **options)


def load_eval_sets(folder, spec: ModelSpec, split: str = "val", per_set: int | None = None, seed: int = 0,
                   progress=None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{set name: (crops, poses)} from a labelled set or a folder of sets (the ``split`` rows)."""
    import random

    from ..faces.data import find_sets, load_samples
    from ..faces.evaluate import load_crops

    out = {}
    for folder_ in find_sets(folder):
        samples = load_samples(folder_, split=split or None, require_labels=True)
        if per_set and len(samples) > per_set:
            samples = sorted(random.Random(seed).sample(samples, per_set), key=lambda s: str(s.path))
        task = progress.add_task(f"reading {folder_.name}", total=len(samples)) if progress is not None else None
        crops = load_crops(samples, spec, progress, task)
        out[folder_.name] = (crops, np.array([s.pose for s in samples], np.float32))
    return out


def deviation(runner: Callable, reference: Callable, crops: np.ndarray) -> dict:
    """How far ``runner``'s outputs stray from ``reference``'s on the same crops (``core.compare``)."""
    b, p = run_batched(runner, crops)
    rb, rp = run_batched(reference, crops)
    return output_deviation(b, p, rb, rp)


def summarize(per_set: Mapping[str, dict]) -> dict:
    pose = [r["mean_mae"] for r in per_set.values() if r.get("mean_mae") is not None]
    blur = [r["blur_mae"] for r in per_set.values() if r.get("blur_mae") is not None]
    return {"pose_mean_mae": float(np.mean(pose)) if pose else None,
            "blur_mae": float(np.mean(blur)) if blur else None}


def evaluate_runner(runner: Callable, eval_sets: Mapping[str, tuple]) -> dict:
    per_set = {name: evaluate_crops(runner, crops, poses) for name, (crops, poses) in eval_sets.items()}
    return {"sets": per_set, **summarize(per_set)}


def accuracy_table(artifacts: Mapping[str, Callable], reference: Callable, eval_sets: Mapping[str, tuple],
                   pose_budget: float = POSE_BUDGET_DEG, blur_budget: float = BLUR_BUDGET) -> dict:
    """{"fp32": metrics, label: metrics + rise + deviation + within_budget} for each artifact runner."""
    ref = evaluate_runner(reference, eval_sets)
    all_crops = np.concatenate([c for c, _ in eval_sets.values()]) if eval_sets else None
    table = {"fp32": ref}
    for label, runner in artifacts.items():
        row = evaluate_runner(runner, eval_sets)
        row["pose_mae_rise"] = _rise(row["pose_mean_mae"], ref["pose_mean_mae"])
        row["blur_mae_rise"] = _rise(row["blur_mae"], ref["blur_mae"])
        row["vs_fp32"] = deviation(runner, reference, all_crops)
        row["within_budget"] = within_budget(row, pose_budget, blur_budget)
        table[label] = row
    return table


def _rise(a, b):
    return None if a is None or b is None else float(a - b)


def within_budget(row: dict, pose_budget: float = POSE_BUDGET_DEG, blur_budget: float = BLUR_BUDGET) -> bool:
    ok = True
    if row.get("pose_mae_rise") is not None:
        ok &= row["pose_mae_rise"] <= pose_budget
    if row.get("blur_mae_rise") is not None:
        ok &= row["blur_mae_rise"] <= blur_budget
    return bool(ok)


def drop(runner: Callable, reference: Callable, eval_sets: Mapping[str, tuple] | None, crops: np.ndarray,
         ref_metrics: dict | None = None) -> tuple[float, float, str]:
    """(pose drop in degrees, blur drop, what was measured): the rise of pose mean MAE / blur MAE over FP32
    on labelled data when there is some, else the mean deviation from FP32's outputs on ``crops``."""
    if eval_sets:
        ref_metrics = ref_metrics or evaluate_runner(reference, eval_sets)
        row = evaluate_runner(runner, eval_sets)
        return (row["pose_mean_mae"] - ref_metrics["pose_mean_mae"], row["blur_mae"] - ref_metrics["blur_mae"],
                "rise of pose mean MAE / blur MAE over FP32 on the eval data")
    d = deviation(runner, reference, crops)
    return d["pose_mean_abs"], d["blur_mean_abs"], "mean |output - FP32 output| on the calibration crops"
