"""`edgeface quantize`: one calibration pass, INT8 in each backend's own form, checked against FP32.

    calibration images --(same crop/preprocess as inference)--> crops
    FP32 ONNX --(onnxruntime, every tensor exposed)--> statistics (cached: model sha256 + spec + crops)
    statistics --(method + head policy)--> QuantPlan (per-tensor ranges, layers kept in float)
    QuantPlan --> onnxruntime U8S8 QDQ | TensorRT S8S8 QDQ ONNX + calib.cache | ncnn INT8 .param/.bin
    each artifact --(Predictor)--> accuracy vs FP32; --max-drop keeps the most sensitive layers in float

The output folder is assembled in a temporary sibling and renamed into place: an error leaves nothing.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .errors import EdgefaceError

BACKENDS = ("onnxruntime", "tensorrt", "ncnn")
DEFAULT_METHOD = "minmax"
ARTIFACTS = {"onnxruntime": "onnxruntime/model.onnx", "tensorrt": "tensorrt/model.onnx",
             "ncnn": "ncnn/model.ncnn.param"}
RUN_WITH = {"onnxruntime": "onnxruntime", "tensorrt": "onnxruntime", "ncnn": "ncnn"}  # TRT QDQ checked in ORT


def _progress(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False, disable=console is None)


def parse_backends(backend: str | Sequence[str]) -> list[str]:
    items = [backend] if isinstance(backend, str) else list(backend)
    out = []
    for b in items:
        for name in (BACKENDS if b == "all" else [b]):
            if name not in BACKENDS:
                raise EdgefaceError(f"unknown backend {name!r} for quantize; choose onnxruntime, tensorrt, ncnn or all")
            if name not in out:
                out.append(name)
    return out


def model_spec(model):
    """The ModelSpec of a checkpoint, the default model or an ONNX, without exporting anything."""
    from .spec import ModelSpec

    if model is not None and str(model).endswith(".onnx"):
        from .export import read_onnx_spec

        if not Path(model).is_file():
            raise EdgefaceError(f"model {model} does not exist")
        return read_onnx_spec(model)
    from .checkpoint import read_checkpoint

    return ModelSpec.from_dict(read_checkpoint(model)["spec"])


def prepare_fp32(model, work: Path, backends: Sequence[str], fold_preprocess: bool = False, opset: int = 17):
    """(fp32 onnx, fp32 ncnn param or None, spec) in ``work`` from a checkpoint, the default model or an ONNX."""
    from .export import export_ncnn, export_onnx, read_onnx_spec

    work.mkdir(parents=True, exist_ok=True)
    if model is not None and str(model).endswith(".onnx"):
        if not Path(model).is_file():
            raise EdgefaceError(f"model {model} does not exist")
        if "ncnn" in backends:
            raise EdgefaceError("ncnn INT8 is converted from the ncnn export of the checkpoint; pass the .pt "
                                "checkpoint (or leave MODEL out for the default model), not an ONNX")
        return Path(model), None, read_onnx_spec(model)
    onnx_path = export_onnx(model, work / "model.onnx", opset=opset, fold_preprocess=fold_preprocess)
    ncnn_param = export_ncnn(model, work / "model.ncnn.param") if "ncnn" in backends else None
    return onnx_path, ncnn_param, read_onnx_spec(onnx_path)


def emit(backend: str, fp32_onnx: Path, fp32_ncnn: Optional[Path], plan, out_dir: Path, onnx_model=None,
         ort_format: str = "qdq") -> dict:
    """Write one backend's INT8 artifact under ``out_dir`` (relative paths as ARTIFACTS)."""
    from .calibration.emit_ncnn import emit_ncnn
    from .calibration.emit_onnx import emit_onnxruntime, emit_tensorrt_cache, emit_tensorrt_onnx

    target = out_dir / ARTIFACTS[backend]
    target.parent.mkdir(parents=True, exist_ok=True)
    if backend == "onnxruntime":
        emit_onnxruntime(fp32_onnx, target, plan.ranges_asym, plan.float_nodes, fmt=ort_format)
        return {"artifact": ARTIFACTS[backend], "form": f"U8S8 {ort_format.upper()} (uint8 activations, int8 "
                                                         f"per-channel weights)"}
    if backend == "tensorrt":
        emit_tensorrt_onnx(fp32_onnx, target, plan.ranges_sym, plan.float_nodes)
        emit_tensorrt_cache(target.parent / "calib.cache", plan.ranges_sym)
        return {"artifact": ARTIFACTS[backend], "calib_cache": "tensorrt/calib.cache",
                "form": "S8S8 symmetric Q/DQ (zero points 0), float bias; calib.cache for implicit INT8"}
    import onnx

    summary = emit_ncnn(fp32_ncnn, target, onnx_model or onnx.load(str(fp32_onnx)), plan.ranges_sym, plan.float_nodes)
    return {"artifact": ARTIFACTS[backend], "form": "ncnn INT8 (int8 weights, per-channel scales)",
            "quantized_layers": summary["quantized_layers"], "float_layers": summary["float_layers"]}


def sensitivity(build: Callable[[set], Callable], plan, layers: Sequence[str], reference: Callable,
                crops: np.ndarray, progress=None) -> list[dict]:
    """Leave-one-out: each layer kept in float alone; how much of the INT8 error that removes, ranked."""
    full = build(set())
    from .calibration.guard import deviation

    base = deviation(full, reference, crops)
    task = progress.add_task("per-layer sensitivity", total=len(layers)) if progress is not None else None
    rows = []
    for layer in layers:
        d = deviation(build({layer}), reference, crops)
        rows.append({"layer": layer, "pose_gain": base["pose_mean_abs"] - d["pose_mean_abs"],
                     "blur_gain": base["blur_mean_abs"] - d["blur_mean_abs"],
                     "pose_mean_abs_if_float": d["pose_mean_abs"]})
        if progress is not None:
            progress.advance(task)
    rows.sort(key=lambda r: (r["pose_gain"] + 100 * r["blur_gain"]), reverse=True)
    return rows


def quantize(model=None, calib=None, *, method: str = DEFAULT_METHOD, backend="all", num: int = 300,
             out="quantized", max_drop: Optional[float] = None, analyze: bool = False, eval_data=None,
             stats_cache=None, cache_dir=None, ort_format: str = "qdq", force: bool = False, console=None,
             eval_per_set: Optional[int] = None) -> dict:
    import onnx

    from .calibration.calibrators import CALIBRATORS
    from .calibration.dataset import load_calibration_set
    from .calibration.guard import BLUR_BUDGET, accuracy_table, artifact_runner, drop, load_eval_sets
    from .calibration.policy import make_plan
    from .calibration.stats import load_or_collect

    t0 = time.time()
    backends = parse_backends(backend)
    if method not in CALIBRATORS:
        raise EdgefaceError(f"unknown --method {method!r}; choose one of {', '.join(CALIBRATORS)}")
    if calib is None:
        raise EdgefaceError("quantize needs calibration images: pass --calib DIR (face crops, or images with labels.csv)")
    from .calibration.dataset import check_calibration_folder

    check_calibration_folder(Path(calib))
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise EdgefaceError(f"--out {out} exists and is not empty; pass --force to replace it or choose another folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        with _progress(console) as progress, tempfile.TemporaryDirectory(prefix="edgeface-fp32-") as work:
            work = Path(work)
            # Read the calibration images before exporting: a bad image fails in seconds, not after pnnx.
            calib_set = load_calibration_set(calib, model_spec(model), num=num, progress=progress)
            fp32_onnx, fp32_ncnn, spec = prepare_fp32(model, work, backends)
            if spec != model_spec(model):
                calib_set = load_calibration_set(calib, spec, num=num, progress=progress)
            stats, cache_file, reused = load_or_collect(fp32_onnx, calib_set, spec, stats_cache, cache_dir, progress)
            onnx_model = onnx.load(str(fp32_onnx))
            plan = make_plan(onnx_model, stats, method)
            eval_sets = load_eval_sets(eval_data, spec, per_set=eval_per_set, progress=progress) if eval_data else {}
            reference = artifact_runner(fp32_onnx, "onnxruntime")
            report = {"model": str(model or "default model"), "method": method, "backends": backends,
                      "calibration": {**calib_set.summary(), "stats_cache": str(cache_file),
                                      "stats_reused": reused, "tensors": len(stats.names)},
                      "policy": plan.summary(), "artifacts": {}}

            def build_for(b):
                scratch = work / f"try-{b}"

                def build(extra_float: set):
                    shutil.rmtree(scratch, ignore_errors=True)
                    emit(b, fp32_onnx, fp32_ncnn, plan.with_float_nodes(extra_float), scratch, onnx_model, ort_format)
                    return artifact_runner(scratch / ARTIFACTS[b], RUN_WITH[b])
                return build

            quantizable = [n.name for n in onnx_model.graph.node
                           if n.op_type in ("Conv", "Gemm", "MatMul") and n.name not in plan.float_nodes]
            ranking = None
            if analyze or max_drop is not None:
                rank_backend = "onnxruntime" if "onnxruntime" in backends else backends[0]
                ranking = sensitivity(build_for(rank_backend), plan, quantizable, reference,
                                      calib_set.crops[:128], progress)
                report["sensitivity"] = {"backend": rank_backend, "measure": "drop in mean |pose - FP32 pose| "
                                         "(deg) when only this layer stays float", "ranking": ranking}
            runners = {}
            for b in backends:
                extra: list[str] = []
                if max_drop is not None:
                    build = build_for(b)
                    ref_metrics = None
                    if eval_sets:
                        from .calibration.guard import evaluate_runner
                        ref_metrics = evaluate_runner(reference, eval_sets)
                    k = 0
                    while True:
                        pose_drop, blur_drop, measured = drop(build(set(extra)), reference, eval_sets,
                                                              calib_set.crops, ref_metrics)
                        if (pose_drop <= max_drop and blur_drop <= BLUR_BUDGET) or k >= len(ranking):
                            break
                        k = max(1, 2 * k)  # 1, 2, 4, 8 ... most sensitive layers in float
                        extra = [r["layer"] for r in ranking[:k]]
                    report.setdefault("max_drop", {"degrees": max_drop, "measure": measured})[b] = {
                        "float_layers": extra, "pose_drop": pose_drop, "blur_drop": blur_drop,
                        "fits": bool(pose_drop <= max_drop and blur_drop <= BLUR_BUDGET)}
                info = emit(b, fp32_onnx, fp32_ncnn, plan.with_float_nodes(extra), staging, onnx_model, ort_format)
                info["extra_float_layers"] = extra
                report["artifacts"][b] = info
                runners[b] = artifact_runner(staging / ARTIFACTS[b], RUN_WITH[b])
            from .calibration.guard import deviation

            for b, r in runners.items():
                report["artifacts"][b]["vs_fp32_on_calib"] = deviation(r, reference, calib_set.crops)
            if eval_sets:
                report["accuracy"] = accuracy_table(runners, reference, eval_sets)
            report["seconds"] = round(time.time() - t0, 2)
            (staging / "quantize.json").write_text(json.dumps(report, indent=2, default=_jsonable) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    report["out"] = str(out)
    return report


def _jsonable(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, (set, tuple)):
        return sorted(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def quantize_for_deploy(*, backend: str, checkpoint=None, calib=None, out_dir, fp32_artifact=None, qat: bool = False,
                        opset: int = 17, fold_preprocess: bool = False, log: Callable[[str], None] = print,
                        method: str = DEFAULT_METHOD, num: int = 300) -> dict:
    """The deploy step's INT8 path for one backend: writes the artifact into ``out_dir`` and returns
    {"artifact": name in out_dir, "calib_cache": name or None, "summary": {...}}."""
    if calib is None:
        raise EdgefaceError("INT8 deploy needs --calib DIR; quantization-aware checkpoints go through edgeface.qat")
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="edgeface-q-") as td:
        rep = quantize(checkpoint, calib, method=method, backend=backend, num=num, out=Path(td) / "q")
        art = rep["artifacts"][backend]
        src = Path(rep["out"])
        names = {"onnxruntime": ["model.onnx"], "tensorrt": ["model.onnx", "calib.cache"],
                 "ncnn": ["model.ncnn.param", "model.ncnn.bin", "model.spec.json"]}[backend]
        for n in names:
            shutil.copyfile(src / backend / n, out_dir / n)
    dev = art["vs_fp32_on_calib"]
    log(f"int8 {backend}: pose max |d| {dev['pose_max_abs']:.3f} deg, blur max |d| {dev['blur_max_abs']:.4f} vs FP32")
    return {"artifact": names[0], "calib_cache": "calib.cache" if backend == "tensorrt" else None,
            "summary": {**rep["calibration"], "method": method, "policy": rep["policy"], "vs_fp32": dev}}
