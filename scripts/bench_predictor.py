#!/usr/bin/env python3
"""Benchmark the issue-3 acceptance figures and print them as JSON (run once; never a timed unit test).

  1. ORT FP32 batch-1 median latency with one thread (target <= 0.35 ms), for several session settings.
  2. Predictor end-to-end throughput on 112x112 uint8 BGR crops at batch 32 vs the raw ORT session on the
     same preprocessed batch (target >= 90 %). Rounds alternate between the two so background load hits both.
  3. ORT and ncnn batch-1 latency vs torch eager, one thread each (target >= 4x faster).

    python3 scripts/bench_predictor.py [--checkpoint edgeface/weights/default.pt] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def median_latency_ms(fn, iters: int, warmup: int) -> dict:
    for _ in range(warmup):
        fn()
    times = np.empty(iters)
    for i in range(iters):
        t0 = time.perf_counter_ns()
        fn()
        times[i] = time.perf_counter_ns() - t0
    times /= 1e6
    return {"p50": float(np.median(times)), "p10": float(np.percentile(times, 10)),
            "p90": float(np.percentile(times, 90)), "min": float(times.min()), "iters": iters}


def throughput_pair(fn_a, fn_b, batch: int, rounds: int, per_round: int) -> tuple[float, float, list]:
    """Images/s of two callables, measured in alternating rounds; each side's best-half median."""
    a, b = [], []
    fn_a(), fn_b()
    for r in range(rounds):
        for fn, acc in ((fn_a, a), (fn_b, b)) if r % 2 == 0 else ((fn_b, b), (fn_a, a)):
            t0 = time.perf_counter()
            for _ in range(per_round):
                fn()
            acc.append(batch * per_round / (time.perf_counter() - t0))
    return statistics.median(a), statistics.median(b), list(zip(a, b))


def default_checkpoint() -> Path:
    for cand in (REPO / "edgeface" / "weights" / "default.pt", REPO / "runs" / "default" / "model.pt"):
        if cand.is_file():
            return cand
    raise SystemExit("no checkpoint: pass --checkpoint (runs/default/model.pt or edgeface/weights/default.pt)")


def main() -> int:
    ap = argparse.ArgumentParser(description="issue-3 acceptance benchmark (JSON out)")
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--iters", type=int, default=3000, help="batch-1 timed iterations per engine")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    import onnxruntime as ort

    from edgeface.export import export_ncnn, export_onnx
    from edgeface.predictor import Predictor
    from edgeface.preprocess import to_input

    ckpt = args.checkpoint or default_checkpoint()
    rng = np.random.default_rng(0)
    crops32 = rng.integers(0, 256, (32, 112, 112, 3), dtype=np.uint8)
    crop1 = crops32[:1].copy()
    report: dict = {"checkpoint": str(ckpt), "machine": platform.machine(), "cpu_count": os.cpu_count(),
                    "loadavg_before": os.getloadavg(), "versions": {"onnxruntime": ort.__version__}}
    with tempfile.TemporaryDirectory() as td:
        onnx_path = export_onnx(ckpt, Path(td) / "model.onnx")
        ncnn_path = export_ncnn(ckpt, Path(td) / "model.ncnn.param", precision="fp32")
        spec = Predictor(onnx_path).spec
        x1 = to_input(crop1, spec)

        # 1. ORT batch 1, one thread, a few session settings (raw session.run; Predictor overhead excluded).
        variants = {}
        for name, opts in (("default", {}), ("no_spinning", {"allow_spinning": False})):
            with Predictor(onnx_path, backend="onnxruntime", threads=1, **opts) as p:
                sess = p.backend_session.session
                out_names = [o.name for o in sess.get_outputs()]
                feed = {sess.get_inputs()[0].name: x1}
                variants[f"run_{name}"] = median_latency_ms(lambda: sess.run(out_names, feed), args.iters, 300)
                # IOBinding: input bound once, outputs into ORT-allocated buffers reused between runs.
                io = sess.io_binding()
                io.bind_cpu_input(sess.get_inputs()[0].name, x1)
                for n in out_names:
                    io.bind_output(n, "cpu")
                variants[f"iobinding_{name}"] = median_latency_ms(lambda: sess.run_with_iobinding(io), args.iters, 300)
                variants[f"predictor_{name}"] = median_latency_ms(lambda: p.predict(crop1), args.iters, 300)
        best = min((v["p50"], k) for k, v in variants.items() if not k.startswith("predictor"))
        report["ort_b1_1thread_ms"] = {"variants": variants, "best_p50": best[0], "best_variant": best[1],
                                       "target_p50": 0.35, "meets_target": best[0] <= 0.35}

        # 2. Predictor end to end vs the raw session on the same preprocessed batch, batch 32, all cores.
        with Predictor(onnx_path, backend="onnxruntime") as p:
            sess = p.backend_session.session
            out_names = [o.name for o in sess.get_outputs()]
            feed = {sess.get_inputs()[0].name: p.prepare(crops32)}
            pred_ips, raw_ips, rounds = throughput_pair(lambda: p.predict(crops32), lambda: sess.run(out_names, feed),
                                                        32, rounds=10, per_round=20)
            prep = median_latency_ms(lambda: to_input(crops32, spec), 200, 20)
        report["predictor_vs_raw_b32"] = {"threads": "onnxruntime default", "predictor_ips": pred_ips,
                                          "raw_session_ips": raw_ips, "ratio": pred_ips / raw_ips,
                                          "target_ratio": 0.9, "meets_target": pred_ips / raw_ips >= 0.9,
                                          "to_input_b32_ms": prep["p50"], "rounds_ips": rounds}

        # 3. Batch 1, one thread: torch eager vs ORT vs ncnn (each engine's raw call on its own input form).
        with Predictor(ckpt, backend="torch", threads=1) as p:
            tb = p.backend_session
            torch_ms = median_latency_ms(lambda: tb.run(x1), max(300, args.iters // 5), 50)
        with Predictor(ncnn_path, backend="ncnn", threads=1) as p:
            nb = p.backend_session
            ncnn_ms = median_latency_ms(lambda: nb.run(crop1), args.iters, 300)
            ncnn_pred_ms = median_latency_ms(lambda: p.predict(crop1), args.iters, 300)
        ort_ms = report["ort_b1_1thread_ms"]["best_p50"]
        report["vs_torch_b1_1thread"] = {
            "torch_eager_ms": torch_ms, "ncnn_ms": ncnn_ms, "ncnn_predictor_ms": ncnn_pred_ms,
            "ort_ms_p50": ort_ms,
            "ort_speedup": torch_ms["p50"] / ort_ms, "ncnn_speedup": torch_ms["p50"] / ncnn_ms["p50"],
            "target_speedup": 4.0,
            "meets_target": torch_ms["p50"] / ort_ms >= 4 and torch_ms["p50"] / ncnn_ms["p50"] >= 4}
    report["loadavg_after"] = os.getloadavg()
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
