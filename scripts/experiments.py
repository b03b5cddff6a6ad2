"""The head-pose experiment table (issue 22): measure a trained checkpoint into one JSON row, and render the
table in docs/experiments.md from those rows (the rows are the one source of its figures).

    # -> docs/bench/experiments/NAME.json
    python3 scripts/experiments.py measure NAME CHECKPOINT [--minutes M --note TEXT]
    # batch-1 ORT latency of each row's model / v2.0.0's, one interleaved run
    python3 scripts/experiments.py latency NAME...
    python3 scripts/experiments.py table [--check]      # rewrite (or check) the table in docs/experiments.md
                                                        # (= python3 scripts/figures.py --only experiments)

A row: the dev half of AFLW2000-3D (``aflw2000_dev``, landmark boxes; mean and by |yaw| bin) and the same photos
end to end through the shipped detector; teacher MAE on the UTKFace / CelebA val splits; blur Spearman and the
sharp faces' mean score on the four val splits; the ONNX size; the batch-1 ORT latency as a ratio to v2.0.0 in
the same run; the training time. Every row names the CPU it was measured on and the date.
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
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
ROWS = REPO / "docs" / "bench" / "experiments"
VAL_SETS = ("pointing04", "qmul", "utkface", "celeba")
TEACHER_SETS = ("utkface", "celeba")
DEV = "aflw2000_dev"
BASELINE = "v2.0.0"


ISA_OF_NOTE = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_name() -> str:
    """The CPU as a figure needs it: model name, family/model, and the vector ISA that decides speed."""
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        return platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    best = [f for f in ISA_OF_NOTE if f in flags][-1:] or ["no AVX2"]
    return (f"{fields.get('model name', platform.machine())} (family {fields.get('cpu family', '?')} model "
            f"{fields.get('model', '?')}, {os.cpu_count()} cores, up to {best[0]})")


def measure(name: str, checkpoint: Path, data: Path, minutes: float | None, note: str,
            box_map: Path | None = None) -> dict:
    from edgeface.export.onnx import export_onnx
    from edgeface.faces.data import load_samples
    from edgeface.faces.evaluate import evaluate_detected, evaluate_samples
    from edgeface.runtime.detector import BOX_MAP, FaceDetector
    from edgeface.runtime.predictor import Predictor

    row = {"name": name, "checkpoint": str(checkpoint), "note": note, "date": date.today().isoformat(),
           "cpu": cpu_name(), "train_minutes": minutes}
    with tempfile.TemporaryDirectory() as tmp:
        onnx = export_onnx(str(checkpoint), Path(tmp) / "model.onnx")
        row["onnx_bytes"] = Path(onnx).stat().st_size
    with Predictor(checkpoint, backend="torch") as pred:
        spec = pred.spec
        row.update(width=spec.width, input_size=spec.input_size, model_version=spec.model_version)
        dev = load_samples(data / DEV, require_labels=True)
        r = evaluate_samples(pred.blur_and_pose, dev, spec, blur=False)
        row["dev"] = {"n": r["n"], "mean": r["mean_mae"], "yaw": r["yaw_mae"], "pitch": r["pitch_mae"],
                      "roll": r["roll_mae"], "by_yaw": {b: v["mean_mae"] for b, v in r["by_yaw"].items()}}
        det = FaceDetector(box_map=box_map or "default")
        d = evaluate_detected(pred.blur_and_pose, det, dev, spec)
        row["dev_detected"] = {"found": d["detection"]["all"]["detected"], "n": d["n"],
                               "box_map": json.loads(Path(box_map or BOX_MAP).read_text()).get("target", "data"),
                               "mean": d["detector_boxes"]["mean_mae"],
                               "by_yaw": {b: v["mean_mae"] for b, v in d["detector_boxes"]["by_yaw"].items()}}
        val = {s: evaluate_samples(pred.blur_and_pose, load_samples(data / s, split="val", require_labels=True), spec)
               for s in VAL_SETS}
    row["teacher_mae"] = {s: val[s]["mean_mae"] for s in TEACHER_SETS}
    row["lab_mae"] = {s: {"yaw": val[s]["yaw_mae"], "pitch": val[s]["pitch_mae"]}
                      for s in VAL_SETS if s not in TEACHER_SETS}
    row["blur_spearman"] = {s: val[s]["blur_spearman"] for s in VAL_SETS}
    row["blur_sharp_mean"] = {s: val[s]["blur_sharp_mean"] for s in VAL_SETS}
    return row


def latency(names: list[str], rounds: int = 15, iters: int = 300) -> dict[str, float]:
    """Median per-round ratio of each model's onnxruntime latency for one face (1 thread) to v2.0.0's, the
    models interleaved round by round so a loaded machine slows them alike. One face is a batch of 1, or of 2
    for a model whose spec says ``mirror_average`` (the crop and its mirror image, as the Predictor runs them)."""
    import numpy as np
    import onnxruntime as ort

    from edgeface.engines.torch.checkpoint import read_spec
    from edgeface.export.onnx import export_onnx

    rows = {n: json.loads((ROWS / f"{n}.json").read_text()) for n in {BASELINE, *names}}
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {}
        for n, row in rows.items():
            path = export_onnx(row["checkpoint"], Path(tmp) / f"{n}.onnx")
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1
            sessions[n] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        feeds = {}
        for n, s in sessions.items():
            i = s.get_inputs()[0]
            rows_per_face = 2 if read_spec(rows[n]["checkpoint"]).mirror_average else 1
            shape = [rows_per_face if not isinstance(d, int) else d for d in i.shape]
            dtype = np.uint8 if "uint8" in i.type else np.float32
            feeds[n] = {i.name: (np.random.default_rng(0).random(shape) * 255).astype(dtype)}
        per = {n: [] for n in sessions}
        for _ in range(rounds):
            for n, s in sessions.items():
                s.run(None, feeds[n])
                t = time.perf_counter()
                for _ in range(iters):
                    s.run(None, feeds[n])
                per[n].append((time.perf_counter() - t) / iters)
    out = {}
    for n in names:
        ratios = [a / b for a, b in zip(per[n], per[BASELINE])]
        out[n] = statistics.median(ratios)
        rows[n]["latency_b1_ort_vs_v2"] = round(out[n], 3)
        rows[n]["latency_ms_b1_ort"] = round(1e3 * statistics.median(per[n]), 4)
        rows[n]["latency_cpu"] = cpu_name()
        rows[n]["latency_rows_per_face"] = feeds[n][next(iter(feeds[n]))].shape[0]
        (ROWS / f"{n}.json").write_text(json.dumps(rows[n], indent=1) + "\n")
    return out


# The detector's box map a row was measured with (scripts/fit_box_map.py --target); rows from before the
# landmark-box map used the data-pack map.
BOX_MAP_NOTE = {"data": "", "landmark": ", landmark-box map"}


def _f(v, fmt="{:.2f}"):
    return "–" if v is None else fmt.format(v)


def render_table() -> str:
    rows = [json.loads(p.read_text()) for p in sorted(ROWS.glob("*.json"))]
    rows.sort(key=lambda r: (r["name"] != BASELINE, r["date"], r["name"]))
    lines = ["| model | dev mean | dev by \\|yaw\\| 0–30 / 30–60 / 60+ | dev, detector (found) "
             "| teacher MAE UTK / CelebA "
             "| blur ρ (min of 4) | ONNX | ORT b1 vs v2.0.0 | training | measured |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        bins = " / ".join(_f(r["dev"]["by_yaw"].get(b)) for b in ("0-30", "30-60", "60+"))
        det = r["dev_detected"]
        lines.append(
            f"| {r['name']}{' — ' + r['note'] if r.get('note') else ''} | **{_f(r['dev']['mean'])}** | {bins} "
            f"| {_f(det['mean'])} ({det['found']}/{det['n']}{BOX_MAP_NOTE.get(det.get('box_map', 'data'), '')}) "
            f"| {_f(r['teacher_mae']['utkface'])} / {_f(r['teacher_mae']['celeba'])} "
            f"| {_f(min(v for v in r['blur_spearman'].values() if v is not None), '{:.3f}')} "
            f"| {r['onnx_bytes'] / 1e6:.2f} MB | {_f(r.get('latency_b1_ort_vs_v2'), '{:.2f}×')}"
            f"{' (2 passes)' if r.get('latency_rows_per_face') == 2 else ''} "
            f"| {_f(r.get('train_minutes'), '{:.0f} min')} | {r['date']}, {r['cpu']} |")
    return "\n".join(lines)


def write_table(check: bool) -> int:
    """The table is the ``experiments`` block of scripts/figures.py, which owns the markers and the check."""
    import figures
    return figures.main(["--only", "experiments", *(["--check"] if check else [])])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure")
    m.add_argument("name")
    m.add_argument("checkpoint", type=Path)
    m.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    m.add_argument("--minutes", type=float, default=None, help="training time, wall clock")
    m.add_argument("--note", default="")
    m.add_argument("--box-map", type=Path, default=None, help="the detector's box map (default: the shipped one)")
    lat = sub.add_parser("latency")
    lat.add_argument("names", nargs="+")
    t = sub.add_parser("table")
    t.add_argument("--check", action="store_true")
    args = ap.parse_args(argv)
    if args.cmd == "measure":
        ROWS.mkdir(parents=True, exist_ok=True)
        row = measure(args.name, args.checkpoint, args.data, args.minutes, args.note, args.box_map)
        (ROWS / f"{args.name}.json").write_text(json.dumps(row, indent=1) + "\n")
        print(json.dumps(row, indent=1))
        return 0
    if args.cmd == "latency":
        print(json.dumps(latency(args.names), indent=1))
        return 0
    return write_table(args.check)


if __name__ == "__main__":
    raise SystemExit(main())
