"""Quantization-aware training: FP32 weights -> INT8-ready weights deployed through the usual paths.

    start checkpoint --torch.export--> ATen graph --EdgefaceInt8Quantizer + prepare_qat_pt2e--> fake-quant graph
      --train (the FP32 recipe's data pipeline and losses; BN statistics and activation observers frozen at
        the recipe's epochs)--> convert_pt2e (BatchNorm folded into the conv weights, int8 weights)
      --dynamo ONNX export, opset 17--> S8S8 Q/DQ ONNX: TensorRT's explicit-quantization form, runs in ORT
      --scales read off the Q/DQ graph (no recalibration)--> ORT x86 U8S8 form, ncnn INT8 form

Why torchao PT2E: torch.ao.quantization (eager/FX) is deprecated, cannot export (-127, 127) weight ranges
through the legacy exporter and leaves BatchNorm unfolded; NVIDIA ModelOpt pulls GPU packages and its
dynamo export fails here; torchao's XNNPACKQuantizer sits in its testing package, deprecated. PT2E with
a quantizer of our own (edgeface.quantizer) states exactly the deployed scheme and exports clean Q/DQ.

Output folder (written whole or not at all):
    model.pt                 QAT checkpoint: float weights (loads with load_model) + the Q/DQ ONNX inside
    tensorrt/model.onnx      S8S8 Q/DQ (zero points 0, per-channel weights, float bias) + calib.cache
    onnxruntime/model.onnx   U8S8 Q/DQ for ORT's fast x86 kernels (same scales, zero point 128)
    ncnn/model.ncnn.param    ncnn INT8 (int8 conv weights, per-channel scales, input blob scales) + .bin
    qat.json                 recipe, timings, per-epoch history, accuracy of every artifact
"""
from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .errors import EdgefaceError
from .recipes import REQUIRED, load_yaml, validate

QUANT_KEY = "edgeface.quantization"  # ONNX metadata: JSON, {"method": "qat", ...} on QAT artifacts
BACKENDS = ("tensorrt", "onnxruntime", "ncnn")
ARTIFACTS = {"tensorrt": "tensorrt/model.onnx", "onnxruntime": "onnxruntime/model.onnx",
             "ncnn": "ncnn/model.ncnn.param"}
RUN_WITH = {"tensorrt": "onnxruntime", "onnxruntime": "onnxruntime", "ncnn": "ncnn"}  # TRT form checked in ORT
SCHEMES = {"weights": ("int8_per_channel_symmetric",), "activations": ("int8_per_tensor_symmetric",),
           "heads": ("float", "int8")}


def _qat_schema() -> dict:
    from .train import TRAIN_SCHEMA

    return {
        "kind": "qat",
        "start": (str, None),  # start weights; None = the shipped edgeface/weights/default.pt
        "data": TRAIN_SCHEMA["data"],
        "augment": TRAIN_SCHEMA["augment"],
        "loss": TRAIN_SCHEMA["loss"],
        "train": {"epochs": 4, "epoch_size": 8192, "batch_size": 128, "lr": 1.0e-4, "weight_decay": 0.0,
                  "warmup_epochs": 0.25, "seed": 0, "threads": 2, "workers": 1,
                  "freeze_bn_after_epoch": 2, "freeze_observers_after_epoch": 3},
        "quant": {"weights": "int8_per_channel_symmetric", "activations": "int8_per_tensor_symmetric",
                  "weight_range": [-127, 127], "activation_range": [-127, 127], "observer_averaging": 0.01,
                  "heads": "float"},
        "export": {"opset": 17, "dynamic_batch": True, "emit": list(BACKENDS)},
        "out": "runs/qat_mbv2_025",
    }


def load_qat_recipe(path) -> dict:
    """Validated recipe; every problem (unknown key, wrong type, missing start weights) is one line."""
    from .checkpoint import DEFAULT_WEIGHTS

    where = f"recipe {path}"
    recipe = validate(load_yaml(path), _qat_schema(), where)
    if recipe["kind"] != "qat":
        raise EdgefaceError(f"{where}: field 'kind' is {recipe['kind']!r}; a quantization-aware recipe has kind 'qat'")
    sets = recipe["data"]["sets"]
    if not isinstance(sets, list) or not sets:
        raise EdgefaceError(f"{where}: field 'data.sets' must be a non-empty list of {{name, weight}}")
    for i, s in enumerate(sets):
        if not isinstance(s, dict):
            raise EdgefaceError(f"{where}: field 'data.sets[{i}]' must be a mapping {{name, weight}}")
        validate(s, {"name": REQUIRED, "weight": 1.0}, where, f"data.sets[{i}].")
    q, t = recipe["quant"], recipe["train"]
    for key, allowed in SCHEMES.items():
        if q[key] not in allowed:
            raise EdgefaceError(f"{where}: field 'quant.{key}' is {q[key]!r}; the deployed scheme is "
                                f"{' or '.join(map(repr, allowed))}")
    for key in ("weight_range", "activation_range"):
        r = q[key]
        if not (len(r) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in r)
                and -128 <= r[0] < 0 < r[1] <= 127 and r[0] == -r[1]):
            raise EdgefaceError(f"{where}: field 'quant.{key}' must be a symmetric int8 range [-N, N] with "
                                f"N <= 127 (TensorRT takes zero point 0 only), got {r!r}")
    if not 0 < q["observer_averaging"] <= 1:
        raise EdgefaceError(f"{where}: field 'quant.observer_averaging' must be in (0, 1], got {q['observer_averaging']}")
    for key in ("epochs", "epoch_size", "batch_size", "threads"):
        if t[key] < 1:
            raise EdgefaceError(f"{where}: field 'train.{key}' must be >= 1, got {t[key]}")
    for key in ("freeze_bn_after_epoch", "freeze_observers_after_epoch"):
        if t[key] < 0:
            raise EdgefaceError(f"{where}: field 'train.{key}' must be >= 0 (0 = frozen from the start)")
    if t["lr"] <= 0:
        raise EdgefaceError(f"{where}: field 'train.lr' must be > 0, got {t['lr']}")
    emit = recipe["export"]["emit"]
    bad = [b for b in emit if b not in BACKENDS]
    if bad or not emit:
        raise EdgefaceError(f"{where}: field 'export.emit' must list some of {', '.join(BACKENDS)}, got {emit!r}")
    if recipe["export"]["opset"] < 13:
        raise EdgefaceError(f"{where}: field 'export.opset' must be >= 13 (per-channel Q/DQ), got {recipe['export']['opset']}")
    start = Path(recipe["start"]) if recipe["start"] else DEFAULT_WEIGHTS
    if not start.is_file():
        hint = ("the shipped default weights are not there yet; train them or set 'start' to a checkpoint"
                if recipe["start"] is None else "set it to an FP32 checkpoint written by `edgeface train`")
        raise EdgefaceError(f"{where}: field 'start': checkpoint {start} does not exist; {hint}")
    recipe["start"] = str(start)
    return recipe


def scheme_from_recipe(recipe: dict):
    from .quantizer import Int8Scheme

    q = recipe["quant"]
    return Int8Scheme(weight_range=tuple(q["weight_range"]), activation_range=tuple(q["activation_range"]),
                      averaging_constant=float(q["observer_averaging"]), quantize_heads=q["heads"] == "int8")


# ----------------------------------------------------------------------------------------------
# The fake-quantized graph
# ----------------------------------------------------------------------------------------------
def prepare_qat_model(model, spec, scheme, batch: int = 8):
    """torch.export + prepare_qat_pt2e with our quantizer; batch dimension dynamic."""
    import torch
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    from .quantizer import EdgefaceInt8Quantizer

    x = torch.randn(batch, 3, spec.input_size, spec.input_size)
    dims = ({0: torch.export.Dim("batch", min=1, max=65536)},)
    model.train()
    graph = torch.export.export(model, (x,), dynamic_shapes=dims).module()
    return prepare_qat_pt2e(graph, EdgefaceInt8Quantizer(scheme))


def freeze_activation_observers(prepared) -> int:
    """Stop activation range updates (weights keep their per-step per-channel max-abs: no weight ever
    clips, and the deployed converters, which take each channel's max-abs, reproduce the trained grid)."""
    from torchao.quantization.pt2e import FakeQuantizeBase

    n = 0
    for m in prepared.modules():
        if isinstance(m, FakeQuantizeBase) and not getattr(m, "is_per_channel", False):
            m.disable_observer()
            n += 1
    return n


@contextmanager
def observers_paused(prepared):
    """Observers off for the duration (evaluation), restored after."""
    from torchao.quantization.pt2e import FakeQuantizeBase

    fqs = [m for m in prepared.modules() if isinstance(m, FakeQuantizeBase)]
    saved = [m.observer_enabled.clone() for m in fqs]
    for m in fqs:
        m.disable_observer()
    try:
        yield
    finally:
        for m, v in zip(fqs, saved):
            m.observer_enabled.copy_(v)


def float_state_dict(prepared, model) -> dict:
    """The trained float weights under EdgeFaceNet's names (a checkpoint load_model can read)."""
    sd = prepared.state_dict()
    want = model.state_dict()
    missing = [k for k in want if k not in sd or sd[k].shape != want[k].shape]
    if missing:
        raise EdgefaceError(f"QAT graph lost parameter {missing[0]} of the model; torch.export changed names "
                            f"(torch {__import__('torch').__version__})")
    return {k: sd[k].detach().clone() for k in want}


# ----------------------------------------------------------------------------------------------
# Export: converted graph -> Q/DQ ONNX
# ----------------------------------------------------------------------------------------------
def _fix_opset(proto, opset: int):
    """The dynamo exporter writes opset 18 whatever it is asked; convert down (TensorRT 8.6 parses <= 17)
    and drop ReduceMean's ``noop_with_empty_axes`` (an opset-18 attribute the converter leaves behind)."""
    import onnx

    from onnx import version_converter

    current = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
    if current != opset:
        proto = version_converter.convert_version(proto, opset)
    if opset < 18:
        for node in proto.graph.node:
            if node.op_type == "ReduceMean":
                keep = [a for a in node.attribute if a.name != "noop_with_empty_axes"]
                del node.attribute[:]
                node.attribute.extend(keep)
    # Drop opset imports of domains no node uses (the exporter lists pkg.* helpers).
    used = {n.domain for n in proto.graph.node}
    keep = [o for o in proto.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    del proto.opset_import[:]
    proto.opset_import.extend(keep)
    onnx.checker.check_model(proto)
    return proto


def quant_metadata(recipe: dict | None, extra: dict | None = None) -> dict:
    q = (recipe or {}).get("quant", {})
    return {"method": "qat", "weights": q.get("weights", "int8_per_channel_symmetric"),
            "activations": q.get("activations", "int8_per_tensor_symmetric"),
            "weight_range": q.get("weight_range", [-127, 127]), "activation_range": q.get("activation_range", [-127, 127]),
            "heads": q.get("heads", "float"), **(extra or {})}


def export_qdq_onnx(converted, spec, out_path: Path, opset: int = 17, dynamic_batch: bool = True,
                    quant_info: dict | None = None) -> Path:
    """The converted (int8 Q/DQ) graph as ONNX with the ModelSpec and a QAT flag in metadata_props."""
    import warnings

    import onnx
    import torch

    from . import __version__
    from .calibration.emit_onnx import check_symmetric_qdq
    from .export import FLOAT_NCHW, INPUT_KIND_KEY, PRECISION_KEY, SPEC_KEY, _set_metadata, atomic_path

    s = spec.input_size
    x = torch.zeros(2, 3, s, s)
    dims = ({0: torch.export.Dim("batch", min=1, max=65536)},) if dynamic_batch else None
    import logging

    # torch.onnx logs one warning per torchvision op it cannot register; torchvision is not used here.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="edgeface-qat-onnx-") as td, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = Path(td) / "raw.onnx"
        try:
            # Ask the exporter for its native opset 18 and convert below: asking 17 makes it try (and fail,
            # loudly) a conversion of its own before optimisation turns ReduceMean's axes into constants.
            with redirect_stdout(io.StringIO()):
                program = torch.onnx.export(converted, (x,), dynamo=True, opset_version=18,
                                            input_names=[spec.input_name], output_names=list(spec.output_names),
                                            dynamic_shapes=dims, external_data=False, verbose=False)
            program.save(str(raw), external_data=False)
        except Exception as e:  # noqa: BLE001 - exporter errors come in many types
            raise EdgefaceError(f"Q/DQ ONNX export failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
        proto = _fix_opset(onnx.load(str(raw)), opset)
    _set_metadata(proto, {SPEC_KEY: spec.to_json(), INPUT_KIND_KEY: FLOAT_NCHW, PRECISION_KEY: "int8",
                          QUANT_KEY: json.dumps(quant_info or quant_metadata(None), sort_keys=True)})
    proto.producer_name = "edgeface"
    proto.producer_version = __version__
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        onnx.save(proto, str(tmp))
    problems = check_symmetric_qdq(out_path)
    if problems:
        out_path.unlink()
        raise EdgefaceError(f"QAT export is not TensorRT's Q/DQ form: {problems[0]}")
    return out_path


# ----------------------------------------------------------------------------------------------
# Conversion of the Q/DQ ONNX to the other INT8 forms, scales read off the graph
# ----------------------------------------------------------------------------------------------
def qat_ranges(qdq_path):
    """(float ONNX, symmetric ranges, asymmetric ranges, float nodes) from a QAT Q/DQ ONNX.

    A conv output that feeds ReLU6 carries no Q/DQ of its own (the activation's does); the converters
    quantize it with the activation's range, which is what the fused conv+clip kernels do anyway.
    """
    from .calibration.emit_onnx import ranges_from_qdq
    from .calibration.policy import head_nodes

    from onnx import numpy_helper

    float_model, sym, asym = ranges_from_qdq(qdq_path)
    consts = {i.name: numpy_helper.to_array(i) for i in float_model.graph.initializer}
    consts.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in float_model.graph.node
                   if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    for node in float_model.graph.node:
        if node.op_type not in ("Clip", "Relu") or node.output[0] not in sym:
            continue
        if node.input[0] not in sym:
            sym[node.input[0]] = sym[node.output[0]]
        # ORT's quantizer deletes a Clip/Relu whose output is quantized, trusting the range to do the
        # clipping: the uint8 range must therefore be the activation's own bounds, [0, 127*s] for ReLU6,
        # not the symmetric [-128*s, 127*s] (which would let negatives through). Same clamp points, a
        # finer step than the trained grid.
        bounds = [-np.inf, np.inf] if node.op_type == "Clip" else [0.0, np.inf]
        if node.op_type == "Clip":
            for k, name in ((0, node.input[1] if len(node.input) > 1 else ""),
                            (1, node.input[2] if len(node.input) > 2 else "")):
                if name in consts:
                    bounds[k] = float(consts[name])
        lo, hi = asym[node.output[0]]
        clipped = (max(lo, bounds[0]), min(hi, bounds[1]))
        asym[node.output[0]] = asym[node.input[0]] = clipped
    return float_model, sym, asym, head_nodes(float_model)


def _module_from_float_onnx(float_model, spec):
    """An EdgeFaceNet whose convolutions carry the Q/DQ graph's BN-folded, dequantized weights (BatchNorm
    replaced by identity), so pnnx exports exactly the weights the int8 grid holds."""
    import torch
    from onnx import numpy_helper

    from .model import build_model

    inits = {i.name: numpy_helper.to_array(i) for i in float_model.graph.initializer}
    convs = [n for n in float_model.graph.node if n.op_type == "Conv"]
    gemms = [n for n in float_model.graph.node if n.op_type in ("Gemm", "MatMul")]
    net = build_model(spec).eval()
    order: list = []
    hooks = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in net.modules()
             if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        net(torch.zeros(1, 3, spec.input_size, spec.input_size))
    for h in hooks:
        h.remove()
    if len(order) != len(convs):
        raise EdgefaceError(f"the Q/DQ ONNX has {len(convs)} convolutions, the model {len(order)}; it was exported "
                            f"from another architecture")
    replaced = {}
    for module, node in zip(order, convs):
        w = inits[node.input[1]]
        b = inits[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros(w.shape[0], np.float32)
        if tuple(w.shape) != tuple(module.weight.shape):
            raise EdgefaceError(f"Q/DQ ONNX conv {node.name} has weights {w.shape}, the model expects "
                                f"{tuple(module.weight.shape)}")
        conv = torch.nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, module.stride,
                               module.padding, groups=module.groups, bias=True)
        conv.weight.data = torch.from_numpy(np.array(w, np.float32))
        conv.bias.data = torch.from_numpy(np.array(b, np.float32))
        replaced[id(module)] = conv
    for parent in list(net.modules()):
        if not isinstance(parent, torch.nn.Sequential):
            continue
        for i, child in enumerate(list(parent)):
            if id(child) in replaced:
                parent[i] = replaced[id(child)]
            elif isinstance(child, torch.nn.BatchNorm2d):
                parent[i] = torch.nn.Identity()
    linears = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    for node in gemms:
        w = inits[node.input[1]]
        trans_b = node.op_type == "Gemm" and any(a.name == "transB" and a.i == 1 for a in node.attribute)
        w = w if trans_b else w.T
        match = [m for m in linears if tuple(m.weight.shape) == tuple(w.shape)]
        if len(match) != 1:
            raise EdgefaceError(f"cannot place Q/DQ ONNX layer {node.name} ({w.shape}) in the model")
        match[0].weight.data = torch.from_numpy(np.array(w, np.float32))
        if len(node.input) > 2 and node.input[2]:
            match[0].bias.data = torch.from_numpy(np.array(inits[node.input[2]], np.float32))
    return net.eval()


def convert_qdq(qdq_path, backend: str, out_path, spec=None, console=None) -> dict:
    """One deployed INT8 form from the QAT Q/DQ ONNX, with the scales training learned."""
    import onnx

    from .calibration.emit_ncnn import emit_ncnn
    from .calibration.emit_onnx import emit_onnxruntime, emit_tensorrt_cache
    from .export import PRECISION_KEY, _set_metadata, atomic_path, export_ncnn, read_onnx_spec

    qdq_path, out_path = Path(qdq_path), Path(out_path)
    spec = spec or read_onnx_spec(qdq_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    float_model, sym, asym, heads = qat_ranges(qdq_path)
    if backend == "tensorrt":
        if out_path.resolve() != qdq_path.resolve():
            with atomic_path(out_path) as tmp:
                shutil.copyfile(qdq_path, tmp)
        cache = emit_tensorrt_cache(out_path.parent / "calib.cache", sym)
        return {"artifact": out_path.name, "calib_cache": Path(cache).name,
                "form": "S8S8 symmetric Q/DQ from QAT (zero points 0, per-channel weights, float bias)"}
    with tempfile.TemporaryDirectory(prefix="edgeface-qat-conv-") as td:
        td = Path(td)
        float_path = td / "float.onnx"
        _set_metadata(float_model, {PRECISION_KEY: "fp32"})
        onnx.save(float_model, str(float_path))
        if backend == "onnxruntime":
            emit_onnxruntime(float_path, out_path, asym, heads)
            _tag_quantization(out_path, {"converted_from": "qat_qdq", "form": "u8s8"})
            return {"artifact": out_path.name, "form": "U8S8 Q/DQ (uint8 activations, zero point 128, QAT scales)"}
        if backend == "ncnn":
            net = _module_from_float_onnx(float_model, spec)
            fp32_param = export_ncnn(net, td / "fp32.ncnn.param", spec=spec)
            summary = emit_ncnn(fp32_param, out_path, float_model, sym, heads)
            return {"artifact": out_path.name, "form": "ncnn INT8 (int8 weights, per-channel scales, QAT input scales)",
                    "quantized_layers": summary["quantized_layers"], "float_layers": summary["float_layers"]}
    raise EdgefaceError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def _tag_quantization(path: Path, extra: dict) -> None:
    import onnx

    from .export import _set_metadata

    m = onnx.load(str(path))
    meta = {p.key: p.value for p in m.metadata_props}
    info = json.loads(meta.get(QUANT_KEY, "{}") or "{}")
    info.update({"method": "qat", **extra})
    _set_metadata(m, {QUANT_KEY: json.dumps(info, sort_keys=True)})
    onnx.save(m, str(path))


def read_qdq_from_checkpoint(checkpoint) -> tuple[bytes, dict]:
    from .checkpoint import read_checkpoint

    obj = read_checkpoint(checkpoint)
    blob = obj.get("qdq_onnx")
    if blob is None:
        raise EdgefaceError(f"{checkpoint} is not a quantization-aware checkpoint (no Q/DQ graph inside); "
                            f"train one with `edgeface train --recipe recipes/qat/mbv2_025_int8.yaml`")
    return bytes(blob.numpy().tobytes()), obj


def export_for_deploy(*, backend: str, checkpoint=None, out_dir, opset: int = 17,
                      log: Callable[[str], None] = print) -> dict:
    """`edgeface deploy`'s INT8 step for a QAT checkpoint: the artifact in ``out_dir``, no calibration set."""
    from .spec import ModelSpec

    blob, obj = read_qdq_from_checkpoint(checkpoint)
    spec = ModelSpec.from_dict(obj["spec"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgeface-qat-") as td:
        qdq = Path(td) / "qdq.onnx"
        qdq.write_bytes(blob)
        if opset != 17:
            import onnx

            onnx.save(_fix_opset(onnx.load(str(qdq)), opset), str(qdq))
        name = {"onnxruntime": "model.onnx", "tensorrt": "model.onnx", "ncnn": "model.ncnn.param"}.get(backend)
        if name is None:
            raise EdgefaceError(f"unknown backend {backend!r} for a QAT checkpoint; choose one of {', '.join(BACKENDS)}")
        info = convert_qdq(qdq, backend, out_dir / name, spec)
    log(f"int8 {backend} from the quantization-aware checkpoint ({info['form']})")
    return {"artifact": name, "calib_cache": info.get("calib_cache"),
            "summary": {"method": "qat", "form": info["form"], "recipe": (obj.get("meta") or {}).get("recipe_path")}}


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------
def train_qat(recipe_path, out: str | None = None, epochs: int | None = None, limit: int | None = None,
              data_root: str | None = None, console=None, epoch_size: int | None = None) -> Path:
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    from .checkpoint import read_checkpoint, save_checkpoint
    from .evaluate import evaluate_samples, format_table
    from .model import build_model
    from .preprocess import to_input
    from .spec import ModelSpec
    from .train import AugmentedFaces, CropCache, _collate, _load_sets, run_epoch, warmup_cosine
    from .train import apply_cli_overrides, data_root_of

    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    recipe = load_qat_recipe(recipe_path)  # every field checked before any work
    if epochs is not None and epochs < 1:
        raise EdgefaceError(f"--epochs must be >= 1, got {epochs}")
    apply_cli_overrides(recipe, epochs, epoch_size, limit, data_root)
    root = data_root_of(recipe)
    out_dir = Path(out or recipe["out"])
    if out_dir.exists() and not out_dir.is_dir():
        raise EdgefaceError(f"--out {out_dir} is a file; choose a folder")
    start = read_checkpoint(recipe["start"])
    if (start.get("meta") or {}).get("kind") == "qat":
        raise EdgefaceError(f"start weights {recipe['start']} are already quantization-aware; start from an FP32 checkpoint")
    spec = ModelSpec.from_dict(start["spec"])
    t, a = recipe["train"], recipe["augment"]
    torch.manual_seed(t["seed"])
    torch.set_num_threads(t["threads"])

    train_sets = _load_sets(recipe, recipe["data"]["split"], root)
    val_sets = _load_sets(recipe, recipe["data"]["val_split"], root)
    all_train = [s for v in train_sets.values() for s in v]
    if not all_train:
        raise EdgefaceError(f"no labelled training images in {root} for sets {[s['name'] for s in recipe['data']['sets']]}")
    weights = np.concatenate([np.full(len(train_sets[s["name"]]), s["weight"] / max(1, len(train_sets[s["name"]])))
                              for s in recipe["data"]["sets"]])
    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeRemainingColumn())
    t0 = time.perf_counter()
    with Progress(*cols, console=console, transient=False, disable=console is None) as progress:
        task = progress.add_task("caching crops", total=len(all_train), info="")
        cache = CropCache(all_train, spec, a["context"], progress, task)
    timings["cache_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    model = build_model(spec)
    try:
        model.load_state_dict(start["state_dict"])
    except RuntimeError as e:
        raise EdgefaceError(f"start weights {recipe['start']} do not fit their ModelSpec ({str(e).splitlines()[0][:120]})") from None
    scheme = scheme_from_recipe(recipe)
    if console is not None:
        console.print("preparing the fake-quantized graph (torch.export + prepare_qat_pt2e) ...")
    prepared = prepare_qat_model(model, spec, scheme)
    timings["prepare_s"] = time.perf_counter() - t0

    opt = torch.optim.AdamW(prepared.parameters(), lr=t["lr"], weight_decay=t["weight_decay"])
    steps_per_epoch = max(1, t["epoch_size"] // t["batch_size"])
    lr_at = warmup_cosine(t, steps_per_epoch)

    dataset = AugmentedFaces(cache, a, t["seed"])
    bn_frozen = obs_frozen = False

    def runner(batch_bgr):
        with torch.no_grad(), observers_paused(prepared):  # validation images never move a range
            b, p = prepared(torch.from_numpy(to_input(batch_bgr, spec)))
        return b.numpy()[:, 0], p.numpy()

    history, step = [], 0
    t0 = time.perf_counter()
    with Progress(*cols, console=console, disable=console is None) as progress:
        for epoch in range(t["epochs"]):
            if not bn_frozen and epoch >= t["freeze_bn_after_epoch"]:
                bn_frozen = True  # BN now uses its running statistics: the graph computes what folding deploys
            if not obs_frozen and epoch >= t["freeze_observers_after_epoch"]:
                obs_frozen = True
                freeze_activation_observers(prepared)
            if bn_frozen:
                move_exported_model_to_eval(prepared)
            else:
                move_exported_model_to_train(prepared)
            dataset.epoch = epoch
            g = torch.Generator().manual_seed(t["seed"] * 1000 + epoch + 7919)
            sampler = torch.utils.data.WeightedRandomSampler(torch.from_numpy(weights), steps_per_epoch * t["batch_size"],
                                                             replacement=True, generator=g)
            loader = torch.utils.data.DataLoader(dataset, batch_size=t["batch_size"], sampler=sampler,
                                                 num_workers=t["workers"], collate_fn=_collate,
                                                 prefetch_factor=4 if t["workers"] else None)
            state = ("BN frozen" if bn_frozen else "BN live") + (", ranges frozen" if obs_frozen else "")
            task = progress.add_task(f"QAT epoch {epoch + 1}/{t['epochs']} ({state})", total=steps_per_epoch, info="")
            te = time.perf_counter()
            sums, step = run_epoch(prepared, loader, opt, lr_at, step, recipe["loss"], spec, progress, task)
            move_exported_model_to_eval(prepared)
            val = {name: evaluate_samples(runner, s, spec, blur=False, seed=0) for name, s in val_sets.items() if s}
            history.append({"epoch": epoch + 1, "pose_loss": sums[0] / steps_per_epoch, "blur_loss": sums[1] / steps_per_epoch,
                            "bn_frozen": bn_frozen, "observers_frozen": obs_frozen,
                            "val_mean_mae": {k: v.get("mean_mae") for k, v in val.items()},
                            "seconds": time.perf_counter() - te})
            progress.console.print(f"QAT epoch {epoch + 1}: " + "  ".join(
                f"{k} {v['mean_mae']:.2f}" for k, v in val.items() if v.get("mean_mae") is not None))
    timings["train_s"] = time.perf_counter() - t0
    # The trained fake-quant state, kept until the artifacts are written: export problems never cost the training.
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    trained_state = out_dir.parent / f".{out_dir.name}.trained.pt"
    torch.save({"prepared": prepared.state_dict(), "history": history, "timings_s": timings}, trained_state)

    # convert: BN folded into the conv weights, weights stored int8 with per-channel scales
    t0 = time.perf_counter()
    move_exported_model_to_eval(prepared)
    shadow = float_state_dict(prepared, model)
    if console is not None:
        console.print("converting (convert_pt2e: BatchNorm folded, int8 weights) and exporting the Q/DQ ONNX ...")
    converted = convert_pt2e(prepared)
    timings["convert_s"] = time.perf_counter() - t0

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        t0 = time.perf_counter()
        quant_info = quant_metadata(recipe, {"recipe": str(recipe_path), "start": recipe["start"]})
        qdq = export_qdq_onnx(converted, spec, staging / ARTIFACTS["tensorrt"], recipe["export"]["opset"],
                              recipe["export"]["dynamic_batch"], quant_info)
        timings["export_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        artifacts = {}
        for b in recipe["export"]["emit"]:
            artifacts[b] = convert_qdq(qdq, b, staging / ARTIFACTS[b], spec, console)
            artifacts[b]["path"] = ARTIFACTS[b]
        if "tensorrt" not in recipe["export"]["emit"]:
            kept = staging / "qdq.onnx"
            os.replace(qdq, kept)
            shutil.rmtree(qdq.parent, ignore_errors=True)
            qdq = kept
        timings["convert_artifacts_s"] = time.perf_counter() - t0

        # Final accuracy of every artifact (pose and blur) through the Predictor, what users load.
        t0 = time.perf_counter()
        from .calibration.guard import artifact_runner

        final = {}
        for b in artifacts:
            r = artifact_runner(staging / ARTIFACTS[b], RUN_WITH[b])
            final[b] = {name: evaluate_samples(r, s, spec, blur=True, seed=0) for name, s in val_sets.items() if s}
            if hasattr(r.predictor, "close"):
                r.predictor.close()
        timings["final_eval_s"] = time.perf_counter() - t0
        timings["total_s"] = time.perf_counter() - t_start
        first = next(iter(final.values()), {})
        meta = {"kind": "qat", "qat": quant_info, "recipe": recipe, "recipe_path": str(recipe_path),
                "start": recipe["start"], "history": history, "n_train": len(cache), "val": first,
                "val_per_artifact": final, "artifacts": artifacts, "timings_s": timings,
                "version": spec.model_version}
        save_checkpoint(staging / "model.pt", _ShadowModule(shadow), spec, meta)
        _attach_qdq(staging / "model.pt", Path(qdq).read_bytes())
        (staging / "qat.json").write_text(json.dumps(meta, indent=2, default=_jsonable) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
        trained_state.unlink(missing_ok=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    if console is not None:
        for b, res in final.items():
            console.print(format_table(res, title=f"QAT {b} ({ARTIFACTS[b]}) on split '{recipe['data']['val_split']}'"))
        console.print(f"QAT total {timings['total_s'] / 60:.1f} min (training {timings['train_s'] / 60:.1f} min)")
    return out_dir / "model.pt"


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
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _jsonable(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)
