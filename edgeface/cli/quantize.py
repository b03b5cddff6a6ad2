"""`edgeface quantize`: INT8 per backend from one calibration pass, with an accuracy check."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from ..core.errors import EdgefaceError
from ..core.device import measured_on
from ..engines import registry
from .output import check_output_dir, check_output_file, console, out_console, table_console, write_json

NAME = "quantize"


def command(model: Optional[str] = typer.Argument(None,
                                                  help="Checkpoint (.pt) or FP32 ONNX; default: the shipped model."),
             calib: Path = typer.Option(..., "--calib",
                                        help="Calibration images: face crops, or images with labels.csv."),
             method: str = typer.Option("minmax", "--method", help="minmax | percentile | entropy | mse."),
             backend: str = typer.Option("all", "--backend", help=" | ".join(
                 [e.name for e in registry.with_int8()] + ["all"]) + "."),
             num: int = typer.Option(300, "--num", help="Calibration images to use (fixed-seed subset)."),
             max_drop: Optional[float] = typer.Option(None, "--max-drop", help="Keep the most sensitive layers in "
                                                      "float until the pose mean MAE rise is at most DEGREES."),
             analyze: bool = typer.Option(False, "--analyze", help="Rank layers by the damage their INT8 does."),
             eval_data: Optional[Path] = typer.Option(None, "--eval-data",
                                                      help="Labelled set(s) for the accuracy check (val split)."),
             out: Path = typer.Option(Path("quantized"), "--out", help="Output folder."),
             force: bool = typer.Option(False, "--force", help="Replace a non-empty --out."),
             stats_cache: Optional[Path] = typer.Option(None, "--stats-cache",
                                                        help="Statistics cache file to use/create."),
             ort_format: str = typer.Option("qdq", "--ort-format", help="onnxruntime form: qdq | qoperator."),
             json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON.")):
    """INT8 from a calibration set: onnxruntime U8S8, TensorRT Q/DQ + calib.cache, ncnn INT8."""
    check_output_file(json_out, "--json", inputs=[model, calib, eval_data, stats_cache])
    check_output_dir(out, "--out")
    check_output_file(stats_cache, "--stats-cache", inputs=[model, eval_data])
    if max_drop is not None and not (math.isfinite(max_drop) and max_drop >= 0):
        raise EdgefaceError(f"--max-drop is a pose MAE rise in degrees, >= 0; got {max_drop}")
    from ..quantize import quantize as run

    rep = run(model, calib, method=method, backend=backend, num=num, out=out, max_drop=max_drop, analyze=analyze,
              eval_data=eval_data, stats_cache=stats_cache, ort_format=ort_format, force=force, console=console)
    from rich.table import Table

    from ..faces.evaluate import format_vs_fp32

    faces = rep["vs_fp32_faces"]
    t = Table(title=f"INT8 ({method}) vs FP32 on {faces}")
    for c in ("backend", "artifact", "faces", "pose |Δ| max °", "p99 °", "mean °", "turned max °", "blur |Δ| max",
              "pose MAE ° (FP32)", "float layers"):
        t.add_column(c)
    for b, a in rep["artifacts"].items():
        v = a["vs_fp32"]
        mae = "-" if v["pose_mae"] is None else f"{v['pose_mae']:.2f} ({v['fp32_pose_mae']:.2f})"
        t.add_row(b, a["artifact"], str(v["n_faces"]), f"{v['pose_max_abs']:.2f}", f"{v['pose_p99_abs']:.2f}",
                  f"{v['pose_mean_abs']:.3f}", f"{v['pose_max_rotation']:.2f}", f"{v['blur_max_abs']:.4f}", mae,
                  str(len(a.get("extra_float_layers", []))))
    table_console().print(t)
    for b, a in rep["artifacts"].items():
        out_console.print(f"{b} int8 {format_vs_fp32(a['vs_fp32'], faces)}", highlight=False, soft_wrap=True)
    acc = rep.get("accuracy", {})
    for b, row in acc.items():
        if b != "fp32" and row.get("pose_mae_rise") is not None:
            out_console.print(f"{b} int8 on --eval-data: pose mean MAE rise {row['pose_mae_rise']:+.2f}°, blur MAE "
                              f"rise {row['blur_mae_rise']:+.4f}", highlight=False, soft_wrap=True)
    if rep.get("sensitivity"):
        out_console.print("most sensitive layers: " + ", ".join(
            f"{r['layer']} ({r['pose_gain']:+.3f} deg)" for r in rep["sensitivity"]["ranking"][:5]))
    console.print(f"quantize: {len(rep['artifacts'])} INT8 artifact(s) from {rep['calibration']['faces']} calibration "
                  f"faces, {rep['seconds']:.1f} s", highlight=False)
    console.print(f"[green]wrote[/green] {rep['out']} (statistics "
                  f"{'reused' if rep['calibration']['stats_reused'] else 'collected'}: "
                  f"{rep['stats_cache_path']})")
    write_json(json_out, {**rep, **measured_on()})
