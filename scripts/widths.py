#!/usr/bin/env python3
"""The widths table of the model card (issue 22): what each MobileNetV2 width the torch engine builds costs, against
the default model's budget (ONNX <= 2.5 MB, onnxruntime latency per face <= 2x v2.0.0's).

Size, parameters and multiply-adds are the network's own (random weights: they do not depend on training). Latency is
measured through the Predictor, 1 thread, one face: onnxruntime with one pass and with two (the mirror average) and
ncnn with one pass, all interleaved round by round with v2.0.0's ONNX, so a loaded machine slows them alike.
Accuracy is only known for trained widths: the shipped model's experiment row.

    python3 scripts/widths.py [--rounds 9] [--json docs/bench/widths.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from experiments import BASELINE, ROWS, cpu_name  # noqa: E402
from figures import shipped_rows  # noqa: E402

SIZE_BUDGET_BYTES = 2.5e6    # FSA-Net's pair of ONNX files
LATENCY_BUDGET = 2.0         # x v2.0.0's onnxruntime latency for one face


def export_width(width: float, folder: Path) -> dict:
    """A random-weights network of ``width`` (the shipped head) as a checkpoint, its ONNX and its ncnn model."""
    from edgeface.core.spec import ModelSpec
    from edgeface.engines.torch.checkpoint import read_spec, save_checkpoint
    from edgeface.engines.torch.network import build_model, count_macs, count_params
    from edgeface.export import export_ncnn, export_onnx

    shipped = read_spec(None)
    spec = ModelSpec(width=width, pose_head=shipped.pose_head, mirror_average=shipped.mirror_average)
    model = build_model(spec).eval()
    pt = folder / f"w{width}.pt"
    save_checkpoint(pt, model, spec, {"note": "random weights: size and speed only"})
    onnx = export_onnx(str(pt), folder / f"w{width}.onnx")
    ncnn = export_ncnn(str(pt), folder / f"w{width}.ncnn.param", precision="fp32")
    return {"width": width, "params": count_params(model), "macs": count_macs(model, spec.input_size),
            "onnx_bytes": Path(onnx).stat().st_size, "onnx": str(onnx), "ncnn": str(ncnn)}


def latencies(runs: dict, rounds: int, iters: int) -> dict[str, float]:
    """Median ms per call of each (name -> zero-argument callable), interleaved round by round."""
    for fn in runs.values():
        for _ in range(50):
            fn()
    per = {k: [] for k in runs}
    for _ in range(rounds):
        for k, fn in runs.items():
            t = time.perf_counter()
            for _ in range(iters):
                fn()
            per[k].append(1e3 * (time.perf_counter() - t) / iters)
    return {k: statistics.median(v) for k, v in per.items()}


def main(argv=None) -> int:
    import numpy as np

    from edgeface.engines.torch.network import WIDTHS
    from edgeface.export import export_onnx
    from edgeface.runtime.predictor import Predictor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--json", type=Path, default=REPO / "docs" / "bench" / "widths.json")
    args = ap.parse_args(argv)
    crop = np.random.default_rng(0).integers(0, 255, (1, 112, 112, 3), np.uint8)
    baseline = json.loads((ROWS / f"{BASELINE}.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = [export_width(w, folder) for w in WIDTHS]
        v2 = export_onnx(baseline["checkpoint"], folder / "v2.onnx")
        preds = {"v2.0.0": Predictor(str(v2), backend="onnxruntime", threads=1, mirror=False)}
        for r in rows:
            w = r["width"]
            preds[f"{w} ort one"] = Predictor(r["onnx"], backend="onnxruntime", threads=1, mirror=False)
            preds[f"{w} ort two"] = Predictor(r["onnx"], backend="onnxruntime", threads=1, mirror=True)
            preds[f"{w} ncnn one"] = Predictor(r["ncnn"], backend="ncnn", threads=1, mirror=False)
        ms = latencies({k: (lambda p=p: p.predict(crop)) for k, p in preds.items()}, args.rounds, args.iters)
        for p in preds.values():
            p.close()
    shipped = shipped_rows()[0]
    for r in rows:
        w = r.pop("width")
        r.pop("onnx"), r.pop("ncnn")
        r.update(width=w, ort_one_ms=ms[f"{w} ort one"], ort_two_ms=ms[f"{w} ort two"],
                 ncnn_one_ms=ms[f"{w} ncnn one"], ort_one_vs_v2=ms[f"{w} ort one"] / ms["v2.0.0"],
                 ort_two_vs_v2=ms[f"{w} ort two"] / ms["v2.0.0"],
                 fits_one_pass=r["onnx_bytes"] <= SIZE_BUDGET_BYTES
                 and ms[f"{w} ort one"] / ms["v2.0.0"] <= LATENCY_BUDGET,
                 fits_two_passes=r["onnx_bytes"] <= SIZE_BUDGET_BYTES
                 and ms[f"{w} ort two"] / ms["v2.0.0"] <= LATENCY_BUDGET)
        if w == shipped["width"]:
            r["dev"] = {"model": shipped["model_version"], "mean": shipped["dev"]["mean"],
                        "by_yaw": shipped["dev"]["by_yaw"], "row": shipped["name"]}
    out = {"date": date.today().isoformat(), "cpu": cpu_name(), "threads": 1, "v2.0.0_ort_ms": ms["v2.0.0"],
           "size_budget_bytes": SIZE_BUDGET_BYTES, "latency_budget_vs_v2": LATENCY_BUDGET,
           "command": "python3 scripts/widths.py --json docs/bench/widths.json", "widths": rows}
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
