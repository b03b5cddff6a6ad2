"""INT8 ONNX from per-tensor ranges: the onnxruntime x86 form and TensorRT's explicit Q/DQ form.

Both go through onnxruntime's own quantizer, fed OUR ranges (written as its calibration cache, so ORT
runs no calibration of its own) — its graph rules (which ops take Q/DQ, Conv+Clip fusion, per-channel
weight axes) are the ones ORT's and TensorRT's kernels are written for.

    onnxruntime (x86): U8S8 — uint8 asymmetric activations, int8 per-channel symmetric weights, QDQ,
                       after ORT's quant_pre_process. ORT's x86 int8 kernels want u8 inputs: S8S8 QDQ
                       runs slower than FP32 there (the figures are in docs/figures.md and docs/engines.md).
    tensorrt:          S8S8 symmetric Q/DQ (zero points 0), per-channel weights, float bias (TensorRT
                       parses only int8 Q/DQ), opset kept; plus calib.cache for the implicit path.

The functions take plain ``{tensor: (lo, hi)}`` dicts, from our statistics or read off an existing Q/DQ
graph (``ranges_from_qdq``), so a quantization-aware model reuses them without recalibrating.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ...core.artifact import PRECISION_KEY, onnx_metadata, set_onnx_metadata
from ...core.device import x86_int8_without_vnni
from ...core.errors import EdgefaceError
from ...core.io import atomic_path, temp_dir
from ...engines.tensorrt.calibrator import calibration_header, scales_from_amax, write_calibration_cache
from . import Fp32Artifacts

ORT_FORMATS = ("qdq", "qoperator")


def _quiet_ort():
    import onnxruntime as ort

    ort.set_default_logger_severity(3)
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))


def _copy_metadata(src_model, dst_path: Path, precision: str) -> None:
    """The FP32 model's metadata (ModelSpec, input kind) on the quantized one, with its precision."""
    import onnx

    m = onnx.load(str(dst_path))
    del m.metadata_props[:]
    set_onnx_metadata(m, {**onnx_metadata(src_model), PRECISION_KEY: precision})
    m.producer_name = "edgeface"
    onnx.save(m, str(dst_path))


def _quantize(float_onnx: Path, out_path: Path, ranges: Mapping[str, tuple], float_nodes: Iterable[str], *,
              unsigned_activations: bool, fmt: str, preprocess: bool, extra: dict, reduce_range: bool = False) -> Path:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    _quiet_ort()
    if fmt not in ORT_FORMATS:
        raise EdgefaceError(f"unknown ONNX quantization format {fmt!r}; choose one of {', '.join(ORT_FORMATS)}")
    src = onnx.load(str(float_onnx))
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with temp_dir("quant") as td:
        td = Path(td)
        model_in = float_onnx
        if preprocess:
            model_in = td / "pre.onnx"
            quant_pre_process(str(float_onnx), str(model_in), skip_optimization=False)
        data = {k: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for k, (lo, hi) in ranges.items()}
        cache = td / "ranges.json"
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), cache)
        tmp_out = td / "q.onnx"
        try:
            quantize_static(str(model_in), str(tmp_out), None,
                            quant_format=QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator,
                            per_channel=True, reduce_range=reduce_range,
                            activation_type=QuantType.QUInt8 if unsigned_activations else QuantType.QInt8,
                            weight_type=QuantType.QInt8, nodes_to_exclude=sorted(float_nodes),
                            calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=str(cache),
                            extra_options={"WeightSymmetric": True, **extra})
        except KeyError as e:
            raise EdgefaceError(f"the ranges do not cover tensor {e.args[0]!r} of {Path(float_onnx).name}; the "
                                f"statistics belong to another model (re-run without --stats-cache)") from None
        _copy_metadata(src, tmp_out, "int8")
        with atomic_path(out_path) as final:  # the artifact appears whole or not at all
            shutil.copyfile(tmp_out, final)
    return out_path


def emit_onnxruntime(float_onnx, out_path, ranges_asym: Mapping[str, tuple], float_nodes: Iterable[str] = (),
                     fmt: str = "qdq", reduce_range: bool | None = None) -> Path:
    """onnxruntime's fast x86 INT8 form (U8S8) at ``out_path``.

    ``reduce_range``: 7-bit weights ([-64, 64]), so that a pair of uint8 x int8 products fits int16 on CPUs
    without VNNI (``core.device.x86_int8_without_vnni``). None decides by the CPU this runs on: with full
    8-bit weights an AVX2 CPU moved pose by 2.1 deg mean, and a bundle was refused by its budget.
    """
    if reduce_range is None:
        reduce_range = x86_int8_without_vnni()
    return _quantize(Path(float_onnx), Path(out_path), ranges_asym, float_nodes, unsigned_activations=True,
                     fmt=fmt, preprocess=True, extra={}, reduce_range=reduce_range)


def emit_tensorrt_onnx(float_onnx, out_path, ranges_sym: Mapping[str, tuple], float_nodes: Iterable[str] = ()) -> Path:
    """TensorRT's explicit-quantization ONNX: symmetric int8 Q/DQ (zero points 0), float bias."""
    path = _quantize(Path(float_onnx), Path(out_path), ranges_sym, float_nodes, unsigned_activations=False,
                     fmt="qdq", preprocess=False,
                     extra={"ActivationSymmetric": True, "QuantizeBias": False, "DedicatedQDQPair": False})
    problems = check_symmetric_qdq(path)
    if problems:
        raise EdgefaceError(f"TensorRT Q/DQ ONNX check failed: {problems[0]}")
    return path


def emit_tensorrt_cache(cache_path, ranges_sym: Mapping[str, tuple], algorithm: str = "entropy2") -> Path:
    """TensorRT's calibration-cache text (scale = amax / 127 per tensor) for the implicit INT8 path."""
    amax = {name: max(abs(lo), abs(hi)) for name, (lo, hi) in ranges_sym.items()}
    return write_calibration_cache(cache_path, scales_from_amax(amax), calibration_header("8.6.1", algorithm))


def onnxruntime_int8(sources: Fp32Artifacts, plan, out_path: Path, *, ort_format: str = "qdq",
                     calib_cache: Path | None = None) -> dict:
    """The registry's INT8 emitter for onnxruntime: U8S8 (uint8 activations, int8 per-channel weights)."""
    reduce_range = x86_int8_without_vnni()
    emit_onnxruntime(sources.onnx, out_path, plan.ranges_asym, plan.float_nodes, fmt=ort_format,
                     reduce_range=reduce_range)
    weights = ("7-bit per-channel weights (reduce_range: this CPU has no VNNI)" if reduce_range
               else "int8 per-channel weights")
    return {"form": f"U8S8 {ort_format.upper()} (uint8 activations, {weights})", "reduce_range": reduce_range}


def tensorrt_int8(sources: Fp32Artifacts, plan, out_path: Path, *, ort_format: str = "qdq",
                  calib_cache: Path | None = None) -> dict:
    """The registry's INT8 emitter for TensorRT: the S8S8 Q/DQ ONNX, and ``calib_cache`` for implicit builds."""
    emit_tensorrt_onnx(sources.onnx, out_path, plan.ranges_sym, plan.float_nodes)
    if calib_cache is not None:
        emit_tensorrt_cache(calib_cache, plan.ranges_sym)
    return {"form": "S8S8 symmetric Q/DQ (zero points 0), float bias; calib.cache for implicit INT8"}


def check_symmetric_qdq(path) -> list[str]:
    """Problems that stop TensorRT from taking a Q/DQ graph: non-int8 Q/DQ or a non-zero zero point."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    inits = {i.name: i for i in m.graph.initializer}
    consts = {n.output[0]: n.attribute[0].t for n in m.graph.node if n.op_type == "Constant" and n.attribute}
    problems = []
    for node in m.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        if len(node.input) < 3 or not node.input[2]:
            problems.append(f"{node.name} has no zero point (defaults to uint8)")
            continue
        t = inits.get(node.input[2]) or consts.get(node.input[2])
        if t is None:
            problems.append(f"{node.name}'s zero point is not a constant")
            continue
        if t.data_type != onnx.TensorProto.INT8:
            problems.append(f"{node.name}'s zero point is {onnx.TensorProto.DataType.Name(t.data_type)}, not INT8")
        elif np.any(numpy_helper.to_array(t) != 0):
            problems.append(f"{node.name} has a non-zero zero point")
    return problems


def ranges_from_qdq(qdq_model) -> tuple[object, dict[str, tuple], dict[str, tuple]]:
    """Read the scales off a Q/DQ graph (e.g. a quantization-aware model) and strip it back to float.

    Returns (float ModelProto, symmetric ranges, asymmetric ranges) keyed by the float graph's tensor
    names, ready for ``emit_onnxruntime`` / ``emit_tensorrt_*`` / ``emit_ncnn``. Weights stored as int8
    behind a DequantizeLinear become their dequantized float values (the QAT grid, which the emitters'
    per-channel max-abs scales reproduce when the trained weights span their range).
    """
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(qdq_model if isinstance(qdq_model, onnx.ModelProto) else onnx.load(str(qdq_model)))
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    consts = {n.output[0]: n for n in g.node if n.op_type == "Constant"}

    def value(name):
        if name in inits:
            return numpy_helper.to_array(inits[name])
        if name in consts:
            return numpy_helper.to_array(consts[name].attribute[0].t)
        raise EdgefaceError(f"Q/DQ parameter {name!r} is not a constant; cannot read scales off this graph")

    producer = {o: n for n in g.node for o in n.output}
    rename: dict[str, str] = {}
    sym, asym, drop, new_inits = {}, {}, set(), []
    for node in g.node:
        if node.op_type != "DequantizeLinear":
            continue
        src = node.input[0]
        scale = value(node.input[1]).astype(np.float64)
        zp = value(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros((), np.uint8)
        q = producer.get(src)
        if q is not None and q.op_type == "QuantizeLinear":  # activation: DQ(Q(x)) -> x
            x = q.input[0]
            info = np.iinfo(zp.dtype)
            s, z = float(scale.reshape(-1)[0]), float(np.asarray(zp).reshape(-1)[0])
            lo, hi = (info.min - z) * s, (info.max - z) * s
            asym[x] = (lo, hi)
            a = max(abs(lo), abs(hi))
            sym[x] = (-a, a)
            rename[node.output[0]] = x
            drop.update({node.name, q.name})
        elif src in inits or src in consts:  # weight: DQ(int8 constant) -> float constant
            w = value(src).astype(np.float64)
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [1] * w.ndim
            if scale.size > 1:
                shape[axis] = -1
            wf = ((w - np.asarray(zp, np.float64).reshape(shape if np.size(zp) > 1 else ())) *
                  scale.reshape(shape if scale.size > 1 else ())).astype(np.float32)
            new_inits.append(numpy_helper.from_array(wf, node.output[0]))
            drop.add(node.name)
    keep = [n for n in g.node if n.name not in drop]
    for n in keep:
        for i, name in enumerate(n.input):
            while name in rename:
                name = rename[name]
            n.input[i] = name
    for o in g.output:
        if o.name in rename:  # a graph output behind Q/DQ: keep its name with an Identity
            keep.append(onnx.helper.make_node("Identity", [rename[o.name]], [o.name]))
    del g.node[:]
    g.node.extend(keep)
    g.initializer.extend(new_inits)
    used = {i for n in g.node for i in n.input}
    kept_inits = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(kept_inits)
    return m, sym, asym
