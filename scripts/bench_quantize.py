"""INT8 vs FP32, measured in one run; prints JSON.

    python3 scripts/bench_quantize.py [--model runs/default/model.pt] [--data ../shared/data] [--calib-num 300]

* ORT x86: FP32 vs INT8 U8S8 (QDQ and QOperator) vs S8S8 QDQ (TensorRT's form) throughput, batch 64,
  interleaved rounds, median; acceptance: U8S8 >= 1.5x FP32.
* ncnn x86: FP32 vs INT8 latency at batch 1 (INT8 pays off on ARM; the x86 figure is reported as is).
* Accuracy (guard.accuracy_table): pose mean MAE and blur MAE per artifact vs FP32 on the val splits;
  acceptance: rise <= 0.5 deg and <= 0.01 for every emitted artifact, for each calibration method.
Calibration images: the train split of the data sets (never the val images that are scored).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def ort_throughput(paths: dict, threads: int, batch: int = 64, rounds: int = 7, iters: int = 10) -> dict:
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    x = np.random.default_rng(0).standard_normal((batch, 3, 112, 112)).astype(np.float32)
    sess = {}
    for k, p in paths.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        sess[k] = ort.InferenceSession(str(p), so, providers=["CPUExecutionProvider"])
        for _ in range(3):
            sess[k].run(None, {"input": x})
    times = {k: [] for k in sess}
    for _ in range(rounds):  # interleaved, so drifting load hits every artifact alike
        for k, s in sess.items():
            t = time.perf_counter()
            for _ in range(iters):
                s.run(None, {"input": x})
            times[k].append((time.perf_counter() - t) / iters)
    return {k: batch / float(np.median(v)) for k, v in times.items()}


def ncnn_latency(params: dict, threads: int = 1, n: int = 300) -> dict:
    from edgeface.runtime.predictor import Predictor

    crop = np.random.default_rng(0).integers(0, 255, (1, 112, 112, 3), dtype=np.uint8)
    preds = {k: Predictor(str(p), backend="ncnn", threads=threads) for k, p in params.items()}
    for p in preds.values():
        for _ in range(20):
            p.predict(crop)
    times = {k: [] for k in preds}
    for _ in range(5):
        for k, p in preds.items():
            t = time.perf_counter()
            for _ in range(n // 5):
                p.predict(crop)
            times[k].append((time.perf_counter() - t) / (n // 5) * 1000)
    return {k: float(np.median(v)) for k, v in times.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(REPO / "runs" / "default" / "model.pt"))
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--calib-num", type=int, default=300)
    ap.add_argument("--methods", default="minmax,percentile,entropy,mse")
    ap.add_argument("--eval-per-set", type=int, default=None, help="limit val images per set (smoke runs)")
    args = ap.parse_args()
    from edgeface.quantize import quantize

    data = Path(args.data)
    result = {"model": args.model, "machine": {"cpu": platform.processor() or platform.machine(),
                                               "cores": os.cpu_count()}, "methods": {}}
    with tempfile.TemporaryDirectory(prefix="bench-quant-") as td:
        td = Path(td)
        calib = td / "calib"  # train-split crops from every set, written as a folder of face crops
        calib.mkdir()
        import cv2

        from edgeface.faces.data import load_samples
        from edgeface.faces.evaluate import load_crops
        from edgeface.core.spec import ModelSpec

        rng = np.random.default_rng(0)
        for name in ("pointing04", "qmul", "utkface", "celeba"):
            s = load_samples(data / name, split="train")
            pick = [s[i] for i in rng.choice(len(s), args.calib_num // 4, replace=False)]
            for i, c in enumerate(load_crops(pick, ModelSpec())):
                cv2.imwrite(str(calib / f"{name}_{i:04d}.png"), c)
        reports = {}
        for method in args.methods.split(","):
            rep = quantize(args.model, calib, method=method, backend="all", num=args.calib_num,
                           out=td / f"q-{method}", eval_data=data, cache_dir=td / "cache",
                           eval_per_set=args.eval_per_set)
            reports[method] = rep
            acc = rep["accuracy"]
            result["methods"][method] = {
                "stats_reused": rep["calibration"]["stats_reused"],
                "fp32": {"pose_mean_mae": acc["fp32"]["pose_mean_mae"], "blur_mae": acc["fp32"]["blur_mae"]},
                **{b: {k: acc[b][k] for k in ("pose_mean_mae", "blur_mae", "pose_mae_rise", "blur_mae_rise",
                                               "within_budget")} | {"vs_fp32": acc[b]["vs_fp32"]}
                   for b in rep["artifacts"]}}
        first = reports[args.methods.split(",")[0]]
        out = Path(first["out"])
        from edgeface.quantize.emit.onnx import emit_onnxruntime
        from edgeface.export import export_ncnn, export_onnx

        fp32 = export_onnx(args.model, td / "fp32" / "model.onnx")
        import onnx

        from edgeface.quantize.calibrate.policy import make_plan
        from edgeface.quantize.calibrate.stats import load_stats

        st = load_stats(first["calibration"]["stats_cache"])
        plan = make_plan(onnx.load(str(fp32)), st, first["method"])
        qop = emit_onnxruntime(fp32, td / "qop" / "model.onnx", plan.ranges_asym, plan.float_nodes, fmt="qoperator")
        written = {b: out / a["artifact"] for b, a in first["artifacts"].items()}  # where quantize put each form
        paths = {"fp32": fp32, "int8_u8s8_qdq": written["onnxruntime"], "int8_u8s8_qoperator": qop,
                 "int8_s8s8_qdq_tensorrt_form": written["tensorrt"]}
        speed = {}
        for threads in (1, 2):
            ips = ort_throughput(paths, threads)
            speed[f"threads_{threads}"] = {"images_per_s": ips,
                                           "speedup_vs_fp32": {k: v / ips["fp32"] for k, v in ips.items()}}
        result["ort_x86_batch64"] = speed
        ncnn32 = export_ncnn(args.model, td / "ncnn32" / "model.ncnn.param")
        lat = ncnn_latency({"fp32": ncnn32, "int8": written["ncnn"]})
        result["ncnn_x86_batch1_1thread_ms"] = lat | {"int8_speedup": lat["fp32"] / lat["int8"]}
        result["sizes_mb"] = {"onnx_fp32": fp32.stat().st_size / 1e6,
                              "onnx_int8_u8s8": paths["int8_u8s8_qdq"].stat().st_size / 1e6,
                              "ncnn_fp32_bin": ncnn32.with_suffix(".bin").stat().st_size / 1e6,
                              "ncnn_int8_bin": written["ncnn"].with_suffix(".bin").stat().st_size / 1e6}
    json.dump(result, sys.stdout, indent=2, default=float)
    print()


if __name__ == "__main__":
    main()
