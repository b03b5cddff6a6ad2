"""`edgeface quantize`: one calibration pass, INT8 in each backend's own form, checked against FP32.

    calibration images --(same crop/preprocess as inference)--> crops
    FP32 ONNX --(onnxruntime, every tensor exposed)--> statistics (cached: model sha256 + spec + crops)
    statistics --(method + head policy)--> QuantPlan (per-tensor ranges, layers kept in float)
    QuantPlan --> onnxruntime U8S8 QDQ | TensorRT S8S8 QDQ ONNX + calib.cache | ncnn INT8 .param/.bin
    each artifact --(Predictor)--> accuracy vs FP32; --max-drop keeps the most sensitive layers in float

The output folder is assembled in a temporary sibling and renamed into place: an error leaves nothing.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..core.artifact import check_foreign_onnx, read_onnx_spec
from ..core.errors import EdgefaceError
from ..core.io import (atomic_write_json, check_folder_not_an_input, clean_stale_partials, clean_stale_temp,
                       make_staging_dir, replace_folder, seal_record, sealed_folder_problem, sha256_file, temp_dir)
from ..core.spec import ModelSpec
from ..engines import registry
from .calibrate.calibrators import CALIBRATORS
from .calibrate.dataset import check_calibration_folder, load_calibration_set
from .calibrate.policy import make_plan
from .calibrate.stats import load_or_collect
from .emit import Fp32Artifacts, emit_int8, int8_artifact
from .guard import (BLUR_BUDGET, accuracy_table, artifact_runner, check_runner, deviation, drop, evaluate_runner,
                    load_eval_sets)

DEFAULT_METHOD = "minmax"


def _progress(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False, disable=console is None)


def int8_engines() -> list[str]:
    """The engines `edgeface quantize --backend` accepts (every engine with an INT8 form)."""
    return [e.name for e in registry.with_int8()]


def parse_backends(backend: str | Sequence[str]) -> list[str]:
    known = int8_engines()
    items = [backend] if isinstance(backend, str) else list(backend)
    out = []
    for b in items:
        for name in (known if b == "all" else [b]):
            if name not in known:
                raise EdgefaceError(f"unknown backend {name!r} for quantize; choose {', '.join(known)} or all")
            if name not in out:
                out.append(name)
    return out


def _is_onnx(model) -> bool:
    return model is not None and str(model).endswith(registry.by_format("onnx").suffix)


def model_spec(model):
    """The ModelSpec of a checkpoint, the default model or an ONNX, without exporting anything."""
    if _is_onnx(model):
        if not Path(model).is_file():
            raise EdgefaceError(f"model {model} does not exist")
        return check_foreign_onnx(model)  # it is run for statistics: a Loop would never end
    from ..engines.torch.checkpoint import read_spec

    return read_spec(model)  # None: the shipped default checkpoint


def prepare_fp32(model, work: Path, backends: Sequence[str], fold_preprocess: bool = False,
                 opset: int = 17) -> tuple[Fp32Artifacts, ModelSpec]:
    """The FP32 artifacts the backends' emitters read, in ``work``, from a checkpoint, the default model or
    an ONNX; and the ModelSpec."""
    from ..export import export_ncnn, export_onnx

    work.mkdir(parents=True, exist_ok=True)
    needs_ncnn = any("ncnn" in registry.get(b).int8.sources for b in backends)
    if _is_onnx(model):
        if not Path(model).is_file():
            raise EdgefaceError(f"model {model} does not exist")
        if needs_ncnn:
            raise EdgefaceError("ncnn INT8 is converted from the ncnn export of the checkpoint; pass the .pt "
                                "checkpoint (or leave MODEL out for the default model), not an ONNX")
        return Fp32Artifacts(Path(model)), check_foreign_onnx(model)
    onnx_path = export_onnx(model, work / registry.by_format("onnx").artifact, opset=opset,
                            fold_preprocess=fold_preprocess)
    ncnn_param = export_ncnn(model, work / registry.by_format("ncnn").artifact) if needs_ncnn else None
    return Fp32Artifacts(onnx_path, ncnn_param), read_onnx_spec(onnx_path)


def sensitivity(build: Callable[[set], Callable], plan, layers: Sequence[str], reference: Callable,
                crops: np.ndarray, progress=None) -> list[dict]:
    """Leave-one-out: each layer kept in float alone; how much of the INT8 error that removes, ranked."""
    full = build(set())
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
             eval_per_set: Optional[int] = None, opset: int = 17) -> dict:
    """INT8 artifacts for ``backend`` (an engine, "all", or a list) from one calibration pass, in ``out``
    (see the module docstring); the report, also written to ``out/quantize.json``."""
    t0 = time.time()
    backends = parse_backends(backend)
    if method not in CALIBRATORS:
        raise EdgefaceError(f"unknown --method {method!r}; choose one of {', '.join(CALIBRATORS)}")
    if calib is None:
        raise EdgefaceError("quantize needs calibration images: pass --calib DIR (face crops, or images with "
                            "labels.csv)")
    check_calibration_folder(Path(calib))
    out = Path(out)
    inputs = [model, calib, eval_data, stats_cache]
    check_quantize_out(out, force, inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_partials(out)
    clean_stale_temp()
    staging = make_staging_dir(out)
    try:
        with _progress(console) as progress, temp_dir("fp32") as work:
            cal = _calibrate(model, calib, Path(work), backends, method, num, stats_cache, cache_dir, opset, progress,
                             console)
            eval_sets = (load_eval_sets(eval_data, cal.spec, per_set=eval_per_set, progress=progress)
                         if eval_data else {})
            report = _report_header(model, method, backends, cal)
            ranking = None
            if analyze or max_drop is not None:
                ranking = _rank_layers(cal, backends, ort_format, progress, report)
            runners = {}
            for b in backends:
                extra = _float_layers_within(b, cal, ort_format, max_drop, ranking, eval_sets, report) \
                    if max_drop is not None else []
                info = emit_int8(b, cal.sources, cal.plan.with_float_nodes(extra), staging, ort_format)
                report["artifacts"][b] = {**info, "extra_float_layers": extra}
                runners[b] = check_runner(staging / int8_artifact(b), b)
            _compare(report, model, cal, runners, eval_data, eval_sets, staging)
            report["seconds"] = round(time.time() - t0, 2)
            # Sealed: the digest of every file's sha256 is what lets a later --force replace this folder.
            atomic_write_json(staging / REPORT_NAME, seal_record(report, staging, skip={REPORT_NAME}))
        if out.exists():
            check_quantize_out(out, force, inputs)  # it may have appeared (or changed) while we worked
        replace_folder(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    report["out"] = str(out)
    report["stats_cache_path"] = str(cal.cache_file)  # for the caller on this host; not in quantize.json
    return report


@dataclass
class _Calibration:
    """What one calibration pass gives every backend: the FP32 sources, the crops, the statistics, the plan."""

    calib_set: object
    sources: object
    spec: object
    stats: object
    cache_file: object
    reused: bool
    plan: object
    reference: object       # the FP32 ONNX, run by onnxruntime
    work: Path

    @property
    def quantizable(self) -> list[str]:
        return [n.name for n in self.sources.onnx_model.graph.node
                if n.op_type in ("Conv", "Gemm", "MatMul") and n.name not in self.plan.float_nodes]


def _calibrate(model, calib, work: Path, backends, method, num, stats_cache, cache_dir, opset, progress,
               console) -> _Calibration:
    import onnx

    # Read the calibration images before exporting: a bad image fails in seconds, not after pnnx.
    calib_set = load_calibration_set(calib, model_spec(model), num=num, progress=progress)
    if console is not None:
        console.print(calib_set.describe(), highlight=False, soft_wrap=True)
        for w in calib_set.warnings:
            console.print(f"[yellow]warning:[/yellow] {w}", highlight=False, soft_wrap=True)
    sources, spec = prepare_fp32(model, work, backends, opset=opset)
    if spec != model_spec(model):
        calib_set = load_calibration_set(calib, spec, num=num, progress=progress)
    stats, cache_file, reused = load_or_collect(sources.onnx, calib_set, spec, stats_cache, cache_dir, progress)
    sources.onnx_model = onnx.load(str(sources.onnx))
    plan = make_plan(sources.onnx_model, stats, method)
    reference = artifact_runner(sources.onnx, registry.by_format("onnx").name)
    return _Calibration(calib_set, sources, spec, stats, cache_file, reused, plan, reference, work)


def _report_header(model, method: str, backends, cal: _Calibration) -> dict:
    # Names and digests, never this host's paths: the report travels with the artifacts.
    return {"model": model_record(model), "method": method, "backends": backends,
            "calibration": {**cal.calib_set.summary(), "warnings": cal.calib_set.warnings,
                            "stats_cache": Path(cal.cache_file).name, "stats_sha256": sha256_file(cal.cache_file),
                            "stats_reused": cal.reused, "tensors": len(cal.stats.names)},
            "policy": cal.plan.summary(), "artifacts": {}}


def _builder(b: str, cal: _Calibration, ort_format: str):
    """A function: the float layers to keep -> a runner of backend ``b``'s INT8 artifact with them in float."""
    scratch = cal.work / f"try-{b}"

    def build(extra_float: set):
        shutil.rmtree(scratch, ignore_errors=True)
        emit_int8(b, cal.sources, cal.plan.with_float_nodes(extra_float), scratch, ort_format)
        return check_runner(scratch / int8_artifact(b), b)
    return build


def _rank_layers(cal: _Calibration, backends, ort_format: str, progress, report: dict) -> list[dict]:
    """Each quantizable layer's sensitivity, ranked on onnxruntime's form where it is asked for (the quickest to
    emit and run on a build machine); also in the report."""
    rank_backend = "onnxruntime" if "onnxruntime" in backends else backends[0]
    ranking = sensitivity(_builder(rank_backend, cal, ort_format), cal.plan, cal.quantizable, cal.reference,
                          cal.calib_set.crops[:128], progress)
    report["sensitivity"] = {"backend": rank_backend, "measure": "drop in mean |pose - FP32 pose| "
                             "(deg) when only this layer stays float", "ranking": ranking}
    return ranking


def _float_layers_within(b: str, cal: _Calibration, ort_format: str, max_drop: float, ranking: list[dict],
                         eval_sets: dict, report: dict) -> list[str]:
    """The fewest most-sensitive layers (1, 2, 4, 8 ...) kept in float for backend ``b`` to stay within
    ``max_drop`` degrees (and the blur budget); the search's outcome goes in the report."""
    build = _builder(b, cal, ort_format)
    ref_metrics = evaluate_runner(cal.reference, eval_sets) if eval_sets else None
    extra: list[str] = []
    k = 0
    while True:
        pose_drop, blur_drop, measured = drop(build(set(extra)), cal.reference, eval_sets, cal.calib_set.crops,
                                              ref_metrics)
        if (pose_drop <= max_drop and blur_drop <= BLUR_BUDGET) or k >= len(ranking):
            break
        k = max(1, 2 * k)
        extra = [r["layer"] for r in ranking[:k]]
    report.setdefault("max_drop", {"degrees": max_drop, "measure": measured})[b] = {
        "float_layers": extra, "pose_drop": pose_drop, "blur_drop": blur_drop,
        "fits": bool(pose_drop <= max_drop and blur_drop <= BLUR_BUDGET)}
    return extra


def _compare(report: dict, model, cal: _Calibration, runners: dict, eval_data, eval_sets: dict, staging: Path) -> None:
    """Each INT8 artifact against FP32: on the calibration crops, on the comparison faces, and (with --eval-data)
    accuracy per set."""
    for b, r in runners.items():
        report["artifacts"][b]["vs_fp32_on_calib"] = deviation(r, cal.reference, cal.calib_set.crops)
    report["vs_fp32_faces"], compare = compare_with_fp32(model, cal.spec, runners, eval_data, cal.calib_set, staging)
    for b, v in compare.items():
        report["artifacts"][b]["vs_fp32"] = v
    if eval_sets:
        report["accuracy"] = accuracy_table(runners, cal.reference, eval_sets)


def compare_with_fp32(model, spec, runners: dict, eval_data, calib_set, out: Optional[Path] = None
                      ) -> tuple[str, dict]:
    """(faces' name, {backend: vs_fp32}) on the faces deploy verifies on and bench measures by default: the val
    split of --eval-data, else of the shared data pack, else (no labelled faces here) the calibration crops;
    against the FP32 checkpoint in torch (deploy's reference), or the FP32 ONNX when that is the model given.
    ``out``: each backend's folder there gets int8_disagreement.png, the faces where INT8 disagrees most."""
    from ..runtime.stream import DISAGREEMENT_PNG, write_disagreement
    from ..faces.data import default_verify_data
    from ..faces.evaluate import comparison_faces, run_batched, vs_fp32
    from ..runtime.predictor import open_model

    data = eval_data or default_verify_data()
    if data is not None:
        crops, poses, name = comparison_faces(data, spec)
    else:
        crops, poses = calib_set.crops, None
        name = f"the calibration crops of {Path(calib_set.folder).name}/, no labelled faces found"
    ref, _ = open_model(model)
    try:
        ref_b, ref_p = run_batched(ref.blur_and_pose, crops)
    finally:
        ref.close()
    result = {}
    for b, r in runners.items():
        blur, pose = run_batched(r, crops)
        result[b] = vs_fp32(blur, pose, ref_b, ref_p, poses)
        if out is not None and (out / b).is_dir():
            write_disagreement(out / b / DISAGREEMENT_PNG, crops, pose, ref_p)
    return name, result


def model_record(model) -> dict:
    """What a report says about the model it started from: its file name and sha256, or the shipped default."""
    if model is None:
        return {"name": "default"}
    return {"name": Path(model).name, "sha256": sha256_file(model)}


REPORT_NAME = "quantize.json"   # what marks a folder as one quantize wrote


def check_quantize_out(out: Path, force: bool, inputs=()) -> None:
    """--out may be new, empty, or (with --force) a folder edgeface wrote, proven by its sealed content:
    quantize's own output (quantize.json's digest covers every file in it) or a deploy bundle. Never a user's
    folder, even one holding a quantize.json or manifest.json of its own, and never a folder holding one of
    this command's ``inputs``."""
    from ..runtime.ownership import bundle_not_ours

    if out.exists() and not out.is_dir():
        raise EdgefaceError(f"--out {out} is a file; pass a folder path")
    check_folder_not_an_input(out, "--out", inputs)
    if not out.is_dir() or not any(out.iterdir()):
        return
    why = sealed_folder_problem(out, REPORT_NAME)
    if why is not None and os.path.lexists(out / "manifest.json"):
        why = bundle_not_ours(out)
    if why is not None:
        raise EdgefaceError(f"--out {out} is a non-empty folder edgeface did not write ({why}); choose another --out "
                            f"(--force replaces only a folder quantize or deploy wrote, as they sealed it)")
    if not force:
        raise EdgefaceError(f"--out {out} exists and is not empty; pass --force to replace it or choose another folder")


def quantize_for_deploy(*, backend: str, checkpoint=None, calib=None, out_dir, opset: int = 17,
                        log: Callable[[str], None] = print, method: str = DEFAULT_METHOD, num: int = 300) -> dict:
    """The deploy step's INT8 path for one backend: writes the artifact (and its companions and calibration
    cache) into ``out_dir`` and returns {"artifact": name in out_dir, "calib_cache": name or None,
    "summary": {...}}. The INT8 ONNX takes float NCHW input whatever the target's input layout (onnxruntime
    folds the preprocessing in when it loads it)."""
    if calib is None:
        raise EdgefaceError("INT8 deploy needs --calib DIR; quantization-aware checkpoints go through "
                            "edgeface.quantize.qat")
    out_dir = Path(out_dir)
    form = registry.get(backend).int8
    with temp_dir("q") as td:
        rep = quantize(checkpoint, calib, method=method, backend=backend, num=num, out=Path(td) / "q", opset=opset)
        art = rep["artifacts"][backend]
        artifact = Path(rep["out"]) / art["artifact"]
        files = registry.engine_of_artifact(artifact).files_of(artifact)  # with its companions (ncnn's .bin)
        if form.calib_cache:
            files.append(artifact.with_name(form.calib_cache))
        for f in files:
            shutil.copyfile(f, out_dir / f.name)
    # No figure printed here: deploy's verification prints the comparison on the held-out faces, the same line
    # quantize and bench print for this artifact.
    return {"artifact": form.artifact, "calib_cache": form.calib_cache,
            "summary": {**rep["calibration"], "method": method, "policy": rep["policy"],
                        "vs_fp32_on_calibration_faces": art["vs_fp32_on_calib"]}}
