"""The QAT Q/DQ graph in every engine's INT8 form, with the scales training learned (no recalibration)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from ...core.artifact import PRECISION_KEY, QUANT_KEY, read_onnx_spec, set_onnx_metadata
from ...core.errors import EdgefaceError
from ...core.io import atomic_path, temp_dir
from ...core.spec import ModelSpec
from ...engines import registry
from ..calibrate.policy import QuantPlan, head_nodes
from ..emit import Fp32Artifacts, emitter_of
from ..emit.onnx import emit_tensorrt_cache, ranges_from_qdq
from .export import fix_opset


def qat_ranges(qdq_path):
    """(float ONNX, symmetric ranges, asymmetric ranges, float nodes) from a QAT Q/DQ ONNX.

    A conv output that feeds ReLU6 carries no Q/DQ of its own (the activation's does); the converters
    quantize it with the activation's range, which is what the fused conv+clip kernels do anyway.
    """
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


def module_from_float_onnx(float_model, spec):
    """An EdgeFaceNet whose convolutions carry the Q/DQ graph's BN-folded, dequantized weights (BatchNorm
    replaced by identity), so pnnx exports exactly the weights the int8 grid holds."""
    import torch
    from onnx import numpy_helper

    from ...engines.torch.network import build_model

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


def convert_qdq(qdq_path, backend: str, out_path, spec=None) -> dict:
    """One engine's INT8 form from the QAT Q/DQ ONNX, with the scales training learned."""
    import onnx

    from ...export import export_ncnn

    qdq_path, out_path = Path(qdq_path), Path(out_path)
    form = registry.get(backend).int8
    if form is None:
        raise EdgefaceError(f"the {backend} engine has no INT8 form; choose one of "
                            f"{', '.join(e.name for e in registry.with_int8())}")
    spec = spec or read_onnx_spec(qdq_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    float_model, sym, asym, heads = qat_ranges(qdq_path)
    cache = out_path.parent / form.calib_cache if form.calib_cache else None
    if form.qdq_native:  # the trained graph already is this engine's form: used as it is
        if out_path.resolve() != qdq_path.resolve():
            with atomic_path(out_path) as tmp:
                shutil.copyfile(qdq_path, tmp)
        if cache is not None:  # TensorRT's implicit-INT8 build path, from the same trained scales
            emit_tensorrt_cache(cache, sym)
        info = {"form": "S8S8 symmetric Q/DQ from QAT (zero points 0, per-channel weights, float bias)"}
    else:
        with temp_dir("qat-conv") as td:
            td = Path(td)
            float_path = td / "float.onnx"
            set_onnx_metadata(float_model, {PRECISION_KEY: "fp32"})
            onnx.save(float_model, str(float_path))
            sources = Fp32Artifacts(float_path, onnx_model=float_model)
            if "ncnn" in form.sources:  # pnnx exports the module holding the Q/DQ graph's folded weights
                sources.ncnn = export_ncnn(module_from_float_onnx(float_model, spec), td / "fp32.ncnn.param",
                                           spec=spec)
            plan = QuantPlan("qat", sym, asym, set(heads))
            info = emitter_of(backend)(sources, plan, out_path, calib_cache=cache)
        info["form"] += ", QAT scales"
        if out_path.suffix == ".onnx":
            _tag_quantization(out_path, {"converted_from": "qat_qdq", "engine": backend})
    return {"artifact": out_path.name, **({"calib_cache": form.calib_cache} if cache is not None else {}), **info}


def _tag_quantization(path: Path, extra: dict) -> None:
    import onnx

    m = onnx.load(str(path))
    meta = {p.key: p.value for p in m.metadata_props}
    info = json.loads(meta.get(QUANT_KEY, "{}") or "{}")
    info.update({"method": "qat", **extra})
    set_onnx_metadata(m, {QUANT_KEY: json.dumps(info, sort_keys=True)})
    with atomic_path(path) as tmp:
        onnx.save(m, str(tmp))


def read_qdq_from_checkpoint(checkpoint) -> tuple[bytes, dict]:
    """(the Q/DQ ONNX's bytes, the checkpoint) of a quantization-aware checkpoint."""
    from ...engines.torch.checkpoint import read_checkpoint

    obj = read_checkpoint(checkpoint)
    blob = obj.get("qdq_onnx")
    if blob is None:
        raise EdgefaceError(f"{checkpoint} is not a quantization-aware checkpoint (no Q/DQ graph inside); "
                            f"train one with `edgeface train --recipe recipes/qat/mbv2_025_int8.yaml`")
    return bytes(blob.numpy().tobytes()), obj


def export_for_deploy(*, backend: str, checkpoint=None, out_dir, opset: int = 17,
                      log: Callable[[str], None] = print) -> dict:
    """`edgeface deploy`'s INT8 step for a QAT checkpoint: the artifact in ``out_dir``, no calibration set."""
    blob, obj = read_qdq_from_checkpoint(checkpoint)
    spec = ModelSpec.from_dict(obj["spec"])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with temp_dir("qat") as td:
        qdq = Path(td) / "qdq.onnx"
        qdq.write_bytes(blob)
        if opset != 17:
            import onnx

            onnx.save(fix_opset(onnx.load(str(qdq)), opset), str(qdq))
        form = registry.get(backend).int8
        if form is None:
            raise EdgefaceError(f"the {backend} engine has no INT8 form for a QAT checkpoint")
        name = form.artifact
        info = convert_qdq(qdq, backend, out_dir / name, spec)
    log(f"int8 {backend} from the quantization-aware checkpoint ({info['form']})")
    return {"artifact": name, "calib_cache": info.get("calib_cache"),
            "summary": {"method": "qat", "form": info["form"], "recipe": (obj.get("meta") or {}).get("recipe_path")}}
