"""FP32 vs PTQ (best calibration method) vs QAT, per emitted INT8 artifact, on the val splits; prints JSON.

    python3 scripts/qat_table.py --qat runs/qat_mbv2_025 [--model edgeface/weights/default.pt]
                                 [--data ../shared/data] [--methods minmax,percentile,entropy,mse]

Every artifact goes through the Predictor (what users load) and edgeface.quantize.guard.accuracy_table
against the same FP32 ONNX reference: pose mean MAE (mean of the per-set yaw/pitch/roll means) and blur MAE
on the deterministic synthetic blur. PTQ calibrates on 300 train-split crops (never the scored val images)
with each method; "best" = the lowest pose mean MAE (blur MAE breaks ties) per artifact.
Acceptance (issue 5): QAT within 0.2 deg pose and 0.005 blur of FP32, and no worse than the best PTQ on
either column, for every artifact.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
POSE_TOL, BLUR_TOL = 0.2, 0.005


def int8_artifacts() -> dict[str, str]:
    """engine -> its INT8 artifact in a quantize / QAT output folder."""
    from edgeface.engines import registry
    from edgeface.quantize.emit import int8_artifact

    return {e.name: int8_artifact(e.name) for e in registry.with_int8()}


def calibration_folder(data: Path, dst: Path, num: int) -> Path:
    import cv2

    from edgeface.faces.data import load_samples
    from edgeface.faces.evaluate import load_crops
    from edgeface.core.spec import ModelSpec

    dst.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in ("pointing04", "qmul", "utkface", "celeba"):
        s = load_samples(data / name, split="train")
        pick = [s[i] for i in rng.choice(len(s), num // 4, replace=False)]
        for i, c in enumerate(load_crops(pick, ModelSpec())):
            cv2.imwrite(str(dst / f"{name}_{i:04d}.png"), c)
    return dst


def _have_all(args) -> bool:
    return bool(args.ptq_dir) and all((Path(args.ptq_dir) / f"ptq-{m}" / "quantize.json").is_file()
                                      for m in args.methods.split(","))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--qat", required=True, help="QAT output folder (edgeface train --recipe recipes/qat/...)")
    ap.add_argument("--model", default=None, help="FP32 checkpoint (default: the QAT run's start weights)")
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--methods", default="minmax,percentile,entropy,mse")
    ap.add_argument("--calib-num", type=int, default=300)
    ap.add_argument("--eval-per-set", type=int, default=None, help="limit val images per set (smoke runs)")
    ap.add_argument("--ptq-dir", default=None, help="keep / reuse the PTQ artifacts here (ptq-METHOD folders)")
    ap.add_argument("--ptq-only", action="store_true", help="only write the PTQ artifacts into --ptq-dir")
    args = ap.parse_args()

    from edgeface.quantize.guard import accuracy_table, artifact_runner, check_runner, load_eval_sets
    from edgeface.engines.torch.checkpoint import read_checkpoint
    from edgeface.export import export_onnx
    from edgeface.quantize import quantize
    from edgeface.core.spec import ModelSpec

    qat_dir = Path(args.qat)
    qat_meta = read_checkpoint(qat_dir / "model.pt")["meta"] if not args.ptq_only else {}
    model = args.model or qat_meta.get("start")
    if model is None:
        ap.error("--ptq-only needs --model")
    spec = ModelSpec.from_dict(read_checkpoint(model)["spec"])
    data = Path(args.data)
    with tempfile.TemporaryDirectory(prefix="qat-table-") as td:
        td = Path(td)
        calib = calibration_folder(data, td / "calib", args.calib_num) if not _have_all(args) else None
        ptq = {}
        ptq_root = Path(args.ptq_dir) if args.ptq_dir else td
        for method in args.methods.split(","):
            folder = ptq_root / f"ptq-{method}"
            if (folder / "quantize.json").is_file():
                ptq[method] = folder
                continue
            ptq[method] = Path(quantize(model, calib, method=method, backend="all", num=args.calib_num,
                                        out=folder, cache_dir=td / "cache")["out"])
        if args.ptq_only:
            print(json.dumps({m: str(f) for m, f in ptq.items()}))
            return
        fp32 = export_onnx(model, td / "fp32" / "model.onnx")
        eval_sets = load_eval_sets(data, spec, per_set=args.eval_per_set)
        runners = {}
        for art, rel in int8_artifacts().items():  # each checked as the registry says (TensorRT's in ORT)
            if (qat_dir / rel).exists():
                runners[f"qat/{art}"] = check_runner(qat_dir / rel, art)
            for method, folder in ptq.items():
                runners[f"ptq-{method}/{art}"] = check_runner(folder / rel, art)
        table = accuracy_table(runners, artifact_runner(fp32, "onnxruntime"), eval_sets)
    fp = table["fp32"]
    rows, ok_all = {}, True
    for art in int8_artifacts():
        if f"qat/{art}" not in table:
            continue
        cands = {m: table[f"ptq-{m}/{art}"] for m in ptq}
        best = min(cands, key=lambda m: (round(cands[m]["pose_mean_mae"], 4), cands[m]["blur_mae"]))
        q, p = table[f"qat/{art}"], cands[best]
        checks = {"qat_pose_within_0.2_of_fp32": q["pose_mean_mae"] - fp["pose_mean_mae"] <= POSE_TOL,
                  "qat_blur_within_0.005_of_fp32": q["blur_mae"] - fp["blur_mae"] <= BLUR_TOL,
                  "qat_pose_not_worse_than_ptq": q["pose_mean_mae"] <= p["pose_mean_mae"],
                  "qat_blur_not_worse_than_ptq": q["blur_mae"] <= p["blur_mae"]}
        ok_all &= all(checks.values())
        rows[art] = {"fp32": {"pose_mean_mae": fp["pose_mean_mae"], "blur_mae": fp["blur_mae"]},
                     "ptq_best": {"method": best, "pose_mean_mae": p["pose_mean_mae"], "blur_mae": p["blur_mae"]},
                     "qat": {"pose_mean_mae": q["pose_mean_mae"], "blur_mae": q["blur_mae"],
                             "vs_fp32": q["vs_fp32"]},
                     "ptq_all": {m: {"pose_mean_mae": c["pose_mean_mae"], "blur_mae": c["blur_mae"]}
                                 for m, c in cands.items()},
                     "checks": checks}
    result = {"fp32_model": str(model), "qat": str(qat_dir), "val_images": {k: len(v[0]) for k, v in eval_sets.items()},
              "qat_timings_s": qat_meta.get("timings_s"), "rows": rows, "acceptance_met": bool(ok_all)}
    json.dump(result, sys.stdout, indent=2, default=float)
    print()
    lines = ["| artifact | FP32 pose / blur | PTQ best (method) pose / blur | QAT pose / blur |", "|---|---|---|---|"]
    for art, r in rows.items():
        lines.append(f"| {art} | {r['fp32']['pose_mean_mae']:.3f} / {r['fp32']['blur_mae']:.4f} | "
                     f"{r['ptq_best']['pose_mean_mae']:.3f} / {r['ptq_best']['blur_mae']:.4f} "
                     f"({r['ptq_best']['method']}) | "
                     f"{r['qat']['pose_mean_mae']:.3f} / {r['qat']['blur_mae']:.4f} |")
    print("\n".join(lines), file=sys.stderr)


if __name__ == "__main__":
    main()
