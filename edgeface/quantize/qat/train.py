"""Quantization-aware training: FP32 weights -> INT8-ready weights deployed through the usual paths.

    start checkpoint --torch.export--> ATen graph --EdgefaceInt8Quantizer + prepare_qat_pt2e--> fake-quant graph
      --train (the FP32 recipe's data pipeline and losses; BN statistics and activation observers frozen at
        the recipe's epochs)--> convert_pt2e (BatchNorm folded into the conv weights, int8 weights)
      --dynamo ONNX export, opset 17--> S8S8 Q/DQ ONNX: TensorRT's explicit-quantization form, runs in ORT
      --scales read off the Q/DQ graph (no recalibration)--> ORT x86 U8S8 form, ncnn INT8 form

Output folder (written whole or not at all):
    model.pt                 QAT checkpoint: float weights (loads with load_model) + the Q/DQ ONNX inside
    tensorrt/model.onnx      S8S8 Q/DQ (zero points 0, per-channel weights, float bias) + calib.cache
    onnxruntime/model.onnx   U8S8 Q/DQ for ORT's fast x86 kernels (same scales, zero point 128)
    ncnn/model.ncnn.param    ncnn INT8 (int8 conv weights, per-channel scales, input blob scales) + .bin
    qat.json                 recipe, timings, per-epoch history, accuracy of every artifact
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ...core.errors import EdgefaceError
from ...core.io import (atomic_path, atomic_write_json, check_folder_not_an_input, replace_folder, seal_record,
                        sealed_folder_problem)
from ...engines import registry
from ..emit import int8_artifact
from ..guard import check_runner
from .convert import convert_qdq
from .export import export_qdq_onnx, quant_metadata
from .graph import float_state_dict, freeze_activation_observers, observers_paused, prepare_qat_model
from .recipe import load_qat_recipe, scheme_from_recipe

# The engine whose INT8 form the QAT export is (the symmetric Q/DQ ONNX: TensorRT's explicit quantization).
QDQ_NATIVE_ENGINE = next(e.name for e in registry.with_int8() if e.int8.qdq_native)


QAT_RECORD = "qat.json"  # sealed: its digest covers every file the QAT run wrote


def check_qat_out(out_dir: Path, inputs=()) -> None:
    """The QAT output folder is replaced as a whole, so it must be new, empty, or one a QAT run wrote (its
    sealed qat.json verifies against its files): never a user's folder, and never one holding an input."""
    if out_dir.exists() and not out_dir.is_dir():
        raise EdgefaceError(f"--out {out_dir} is a file; choose a folder")
    check_folder_not_an_input(out_dir, "--out", inputs)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        why = sealed_folder_problem(out_dir, QAT_RECORD)
        if why is not None:
            raise EdgefaceError(f"--out {out_dir} is a non-empty folder that is not provably a QAT run's output "
                                f"({why}); choose another --out (training never replaces a folder it did not write)")


@dataclass
class _QatRun:
    """What every step of one QAT run reads: the checked recipe, the start weights, the data, the timings."""

    recipe_path: object
    recipe: dict
    start: dict
    spec: object
    out_dir: Path
    t_start: float
    timings: dict = field(default_factory=dict)
    data: object = None
    history: list = field(default_factory=list)


def train_qat(recipe_path, out: str | None = None, epochs: int | None = None, limit: int | None = None,
              data_root: str | None = None, console=None, epoch_size: int | None = None) -> Path:
    """Start checkpoint -> fake-quantized graph -> QAT epochs -> converted INT8 artifacts, sealed in ``out``;
    returns the QAT checkpoint's path."""
    import torch

    from ...model.train import prepare_training_data

    run, root = _start_run(recipe_path, out, epochs, limit, data_root, epoch_size)
    t0 = time.perf_counter()
    run.data = prepare_training_data(run.recipe, run.spec, root, console)
    run.timings["cache_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    model, prepared = _prepare_fake_quant(run, console)
    run.timings["prepare_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    run.history = _train_epochs(run, prepared, console)
    run.timings["train_s"] = time.perf_counter() - t0
    # The trained fake-quant state, kept until the artifacts are written: export problems never cost the training.
    run.out_dir.parent.mkdir(parents=True, exist_ok=True)
    trained_state = run.out_dir.parent / f".{run.out_dir.name}.trained.pt"
    torch.save({"prepared": prepared.state_dict(), "history": run.history, "timings_s": run.timings}, trained_state)

    t0 = time.perf_counter()
    shadow, converted = _convert(prepared, model, console)
    run.timings["convert_s"] = time.perf_counter() - t0

    final = _write_output(run, converted, shadow)
    trained_state.unlink(missing_ok=True)
    if console is not None:
        _print_summary(run, final, console)
    return run.out_dir / "model.pt"


def _start_run(recipe_path, out, epochs, limit, data_root, epoch_size) -> tuple[_QatRun, Path]:
    """(the run, the data root): recipe, overrides, output folder and start weights checked before any work;
    torch seeded and its threads set."""
    import torch

    from ...core.spec import ModelSpec
    from ...engines.torch.checkpoint import read_checkpoint
    from ...model.train import apply_cli_overrides, data_root_of

    t_start = time.perf_counter()
    recipe = load_qat_recipe(recipe_path)  # every field checked before any work
    if epochs is not None and epochs < 1:
        raise EdgefaceError(f"--epochs must be >= 1, got {epochs}")
    apply_cli_overrides(recipe, epochs, epoch_size, limit, data_root)
    root = data_root_of(recipe)
    out_dir = Path(out or recipe["out"])
    check_qat_out(out_dir, inputs=[recipe_path, recipe["start"]])
    start = read_checkpoint(recipe["start"])
    if (start.get("meta") or {}).get("kind") == "qat":
        raise EdgefaceError(f"start weights {recipe['start']} are already quantization-aware; start from an FP32 "
                            "checkpoint")
    spec = ModelSpec.from_dict(start["spec"])
    torch.manual_seed(recipe["train"]["seed"])
    torch.set_num_threads(recipe["train"]["threads"])
    return _QatRun(recipe_path, recipe, start, spec, out_dir, t_start), root


def _prepare_fake_quant(run: _QatRun, console):
    """(the FP32 model with the start weights, its fake-quantized graph ready for QAT)."""
    from ...engines.torch.network import build_model

    model = build_model(run.spec)
    try:
        model.load_state_dict(run.start["state_dict"])
    except RuntimeError as e:
        raise EdgefaceError(f"start weights {run.recipe['start']} do not fit their ModelSpec "
                            f"({str(e).splitlines()[0][:120]})") from None
    scheme = scheme_from_recipe(run.recipe)
    if console is not None:
        console.print("preparing the fake-quantized graph (torch.export + prepare_qat_pt2e) ...")
    return model, prepare_qat_model(model, run.spec, scheme)


def _train_epochs(run: _QatRun, prepared, console) -> list[dict]:
    """The recipe's epochs on the fake-quantized graph (FP32 training's data pipeline and losses), each
    measured on the validation sets; returns the per-epoch history."""
    import torch
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)
    from torchao.quantization.pt2e import move_exported_model_to_eval

    from ...model.train import AugmentedFaces, epoch_loader, run_epoch, warmup_cosine

    t, spec, data = run.recipe["train"], run.spec, run.data
    opt = torch.optim.AdamW(prepared.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])
    steps_per_epoch = max(1, t["epoch_size"] // t["batch_size"])
    lr_at = warmup_cosine(t, steps_per_epoch)
    dataset = AugmentedFaces(data.cache, run.recipe["augment"], t["seed"])
    runner = _fake_quant_runner(prepared, spec)
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeRemainingColumn())
    history, step = [], 0
    bn_frozen = obs_frozen = False
    with Progress(*cols, console=console, disable=console is None) as progress:
        for epoch in range(t["epochs"]):
            bn_frozen, obs_frozen = _freeze_for_epoch(prepared, t, epoch, bn_frozen, obs_frozen)
            # Seeds apart from FP32 training's (offset 7919): QAT draws other batches than its start did.
            loader = epoch_loader(dataset, data.weights, t, epoch, steps_per_epoch, seed_offset=7919)
            state = ("BN frozen" if bn_frozen else "BN live") + (", ranges frozen" if obs_frozen else "")
            task = progress.add_task(f"QAT epoch {epoch + 1}/{t['epochs']} ({state})", total=steps_per_epoch, info="")
            te = time.perf_counter()
            sums, step = run_epoch(prepared, loader, opt, lr_at, step, run.recipe["loss"], spec, progress, task)
            move_exported_model_to_eval(prepared)
            val = data.evaluate(runner, blur=False)
            history.append({"epoch": epoch + 1, "pose_loss": sums[0] / steps_per_epoch,
                            "blur_loss": sums[1] / steps_per_epoch,
                            "bn_frozen": bn_frozen, "observers_frozen": obs_frozen,
                            "val_mean_mae": {k: v.get("mean_mae") for k, v in val.items()},
                            "seconds": time.perf_counter() - te})
            progress.console.print(f"QAT epoch {epoch + 1}: " + "  ".join(
                f"{k} {v['mean_mae']:.2f}" for k, v in val.items() if v.get("mean_mae") is not None))
    return history


def _freeze_for_epoch(prepared, t: dict, epoch: int, bn_frozen: bool, obs_frozen: bool) -> tuple[bool, bool]:
    """(BN frozen, observers frozen) from this epoch on, the graph put in the matching mode."""
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train

    if not bn_frozen and epoch >= t["freeze_bn_after_epoch"]:
        bn_frozen = True  # BN now uses its running statistics: the graph computes what folding deploys
    if not obs_frozen and epoch >= t["freeze_observers_after_epoch"]:
        obs_frozen = True
        freeze_activation_observers(prepared)
    if bn_frozen:
        move_exported_model_to_eval(prepared)
    else:
        move_exported_model_to_train(prepared)
    return bn_frozen, obs_frozen


def _fake_quant_runner(prepared, spec):
    """Predictor-style runner over the fake-quantized graph, its observers paused."""
    import torch

    from ...core.preprocess import to_input

    def runner(batch_bgr):
        with torch.no_grad(), observers_paused(prepared):  # validation images never move a range
            b, p = prepared(torch.from_numpy(to_input(batch_bgr, spec)))
        return b.numpy()[:, 0], p.numpy()
    return runner


def _convert(prepared, model, console):
    """(the float weights for the checkpoint, the converted graph): BN folded into the conv weights, weights
    stored int8 with per-channel scales."""
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    move_exported_model_to_eval(prepared)
    shadow = float_state_dict(prepared, model)
    if console is not None:
        console.print("converting (convert_pt2e: BatchNorm folded, int8 weights) and exporting the Q/DQ ONNX ...")
    return shadow, convert_pt2e(prepared)


def _write_output(run: _QatRun, converted, shadow: dict) -> dict:
    """Export, convert and measure every artifact in a staging folder, seal it and put it at ``out_dir`` whole;
    returns the final accuracy per artifact."""
    from ...engines.torch.checkpoint import save_checkpoint, weights_terms

    recipe, timings, out_dir = run.recipe, run.timings, run.out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        quant_info, qdq, artifacts = _export_artifacts(run, converted, staging)
        t0 = time.perf_counter()
        final = _final_accuracy(staging, artifacts, run.data)
        timings["final_eval_s"] = time.perf_counter() - t0
        timings["total_s"] = time.perf_counter() - run.t_start
        meta = {"kind": "qat", "qat": quant_info, "recipe": recipe, "recipe_path": str(run.recipe_path),
                "start": recipe["start"],
                "terms": weights_terms(run.start.get("meta"), shipped=recipe["start"] is None),
                "history": run.history, "n_train": len(run.data.cache), "val": next(iter(final.values()), {}),
                "val_per_artifact": final, "artifacts": artifacts, "timings_s": timings,
                "version": run.spec.model_version}
        save_checkpoint(staging / "model.pt", _ShadowModule(shadow), run.spec, meta)
        _attach_qdq(staging / "model.pt", Path(qdq).read_bytes())
        atomic_write_json(staging / QAT_RECORD, seal_record(meta, staging, skip={QAT_RECORD}))
        if out_dir.exists():
            check_qat_out(out_dir, inputs=[run.recipe_path, recipe["start"]])  # it may have changed while we trained
        replace_folder(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return final


def _export_artifacts(run: _QatRun, converted, staging: Path) -> tuple[dict, Path, dict]:
    """(quantization metadata, the Q/DQ ONNX, {engine: artifact facts}): the Q/DQ export, then each emitted
    engine's INT8 form converted from it with the same scales."""
    recipe, timings = run.recipe, run.timings
    t0 = time.perf_counter()
    quant_info = quant_metadata(recipe, {"recipe": str(run.recipe_path), "start": recipe["start"]})
    # The Q/DQ graph lands where the engine whose form it is keeps its INT8 artifact (TensorRT's).
    native = QDQ_NATIVE_ENGINE
    qdq = export_qdq_onnx(converted, run.spec, staging / int8_artifact(native), recipe["export"]["opset"],
                          recipe["export"]["dynamic_batch"], quant_info)
    timings["export_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    artifacts = {}
    for b in recipe["export"]["emit"]:
        artifacts[b] = convert_qdq(qdq, b, staging / int8_artifact(b), run.spec)
        artifacts[b]["path"] = int8_artifact(b)
    if native not in recipe["export"]["emit"]:
        kept = staging / "qdq.onnx"
        os.replace(qdq, kept)
        shutil.rmtree(qdq.parent, ignore_errors=True)
        qdq = kept
    timings["convert_artifacts_s"] = time.perf_counter() - t0
    return quant_info, qdq, artifacts


def _final_accuracy(staging: Path, artifacts: dict, data) -> dict:
    """Final accuracy of every artifact (pose and blur) through the Predictor, what users load."""
    final = {}
    for b in artifacts:
        runner = check_runner(staging / int8_artifact(b), b)
        final[b] = data.evaluate(runner, blur=True)
        runner.__self__.close()  # the Predictor behind the runner
    return final


def _print_summary(run: _QatRun, final: dict, console) -> None:
    from ...faces.evaluate import format_table

    for b, res in final.items():
        console.print(format_table(res,
                                   title=f"QAT {b} ({int8_artifact(b)}) on split '{run.recipe['data']['val_split']}'"))
    console.print(f"QAT total {run.timings['total_s'] / 60:.1f} min (training {run.timings['train_s'] / 60:.1f} min)")


class _ShadowModule:
    """Just enough of a module for save_checkpoint: a fixed state_dict."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self):
        return self._state


def _attach_qdq(path: Path, blob: bytes) -> None:
    """Store the Q/DQ ONNX inside the checkpoint as a uint8 tensor (weights_only loading stays possible)."""
    import torch

    obj = torch.load(path, map_location="cpu", weights_only=True)
    obj["qdq_onnx"] = torch.frombuffer(bytearray(blob), dtype=torch.uint8).clone()
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
