"""ncnn INT8 ``.param``/``.bin`` written in ncnn's own format, from an FP32 ncnn model and tensor ranges.

No ncnn2table / ncnn2int8 binary ships in any package here, so this does their job (format per ncnn's
``src/layer/{convolution,convolutiondepthwise,innerproduct}.cpp`` load_param/load_model and
``tools/quantize/net_quantize.cpp``):

  .param  the layer gets ``8=<int8_scale_term>`` (2 on Convolution / InnerProduct: per-output-channel
          weight scales; 1 on ConvolutionDepthWise: per-group weight scales);
  .bin    the layer's weight becomes int8 (tag 0x000D4B38, then the bytes, padded to 4), its bias stays
          float32, then ``weight_data_int8_scales`` (num_output or group float32) and
          ``bottom_blob_int8_scales`` (one float32) are appended. Scales are ncnn's: 127 / absmax
          (weights: per channel; input blob: the calibrated range of the tensor feeding the layer).

Which tensor feeds which ncnn layer: pnnx renames everything, so each ncnn weight layer is matched to the
ONNX Conv/Gemm with the same weights (value by value). A layer without a match, or whose ONNX node the
plan keeps in float (the heads), stays float.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ...core.artifact import ncnn_paths
from ...core.errors import EdgefaceError
from ...core.io import atomic_write_bytes, atomic_write_json
from . import Fp32Artifacts

MAGIC = 7767517
TAG_FP16 = 0x01306B47
TAG_INT8 = 0x000D4B38
WEIGHT_LAYERS = {"Convolution", "ConvolutionDepthWise", "InnerProduct"}
# Layers pnnx emits for this kind of network that carry no weights in the .bin.
WEIGHTLESS = {"Input", "Split", "Pooling", "BinaryOp", "Concat", "Flatten", "Reshape", "Sigmoid", "ReLU", "Clip",
              "Eltwise", "Softmax", "Noop", "Permute", "Crop", "Padding", "Interp", "TanH", "HardSigmoid",
              "HardSwish", "Swish", "UnaryOp", "Slice", "Squeeze", "ExpandDims", "Dropout"}


@dataclass
class NcnnLayer:
    type: str
    name: str
    bottoms: list
    tops: list
    params: dict  # key (str) -> value text, in file order

    def param_int(self, key: str, default: int = 0) -> int:
        return int(self.params.get(key, default))

    def line(self) -> str:
        head = f"{self.type:<24} {self.name:<24} {len(self.bottoms)} {len(self.tops)}"
        blobs = " ".join(self.bottoms + self.tops)
        ps = " ".join(f"{k}={v}" for k, v in self.params.items())
        return " ".join(x for x in (head, blobs, ps) if x)


def read_param(path) -> tuple[list[NcnnLayer], int]:
    lines = [l for l in Path(path).read_text().splitlines() if l.strip()]
    if not lines or lines[0].strip() != str(MAGIC):
        raise EdgefaceError(f"{path} is not an ncnn .param (magic {MAGIC} missing); export it with `edgeface export "
                            "--format ncnn`")
    layer_count, blob_count = (int(v) for v in lines[1].split())
    layers = []
    for l in lines[2:]:
        f = l.split()
        nb, nt = int(f[2]), int(f[3])
        bottoms, tops = f[4:4 + nb], f[4 + nb:4 + nb + nt]
        params = {}
        for kv in f[4 + nb + nt:]:
            k, v = kv.split("=", 1)
            params[k] = v
        layers.append(NcnnLayer(f[0], f[1], bottoms, tops, params))
    if len(layers) != layer_count:
        raise EdgefaceError(f"{path} declares {layer_count} layers but holds {len(layers)}; re-export it")
    return layers, blob_count


def _weight_geometry(layer: NcnnLayer) -> tuple[int, int, bool]:
    """(weight size, number of scales, bias_term) of a weight layer."""
    if layer.type == "InnerProduct":
        return layer.param_int("2"), layer.param_int("0"), bool(layer.param_int("1"))
    n = layer.param_int("0")
    groups = layer.param_int("7", 1) if layer.type == "ConvolutionDepthWise" else 1
    return layer.param_int("6"), (groups if layer.type == "ConvolutionDepthWise" else n), bool(layer.param_int("5"))


def _read_weight(buf: memoryview, off: int, size: int) -> tuple[np.ndarray, int]:
    (tag,) = struct.unpack_from("<I", buf, off)
    off += 4
    if tag == 0:
        return np.frombuffer(buf, np.float32, size, off).copy(), off + 4 * size
    if tag == TAG_FP16:
        w = np.frombuffer(buf, np.float16, size, off).astype(np.float32)
        return w, off + ((2 * size + 3) // 4) * 4
    raise EdgefaceError(f"ncnn weight storage tag {tag:#x} is not float32 or float16; convert an FP32 ncnn export")


def read_weights(layers: list[NcnnLayer], bin_path) -> dict[str, dict]:
    """{layer name: {"weight", "bias", "start", "end"}} for every weight layer; checks the .bin is exhausted."""
    buf = memoryview(Path(bin_path).read_bytes())
    off, out = 0, {}
    for layer in layers:
        if layer.type in WEIGHT_LAYERS:
            if layer.param_int("8"):
                raise EdgefaceError(f"ncnn layer {layer.name} is already INT8; convert the FP32 export")
            size, n, has_bias = _weight_geometry(layer)
            start = off
            try:
                w, off = _read_weight(buf, off, size)
                b = None
                if has_bias:
                    nb = layer.param_int("0")
                    b = np.frombuffer(buf, np.float32, nb, off).copy()
                    off += 4 * nb
            except (ValueError, struct.error):
                raise EdgefaceError(f"{bin_path} ends inside layer {layer.name}'s weights; re-export the "
                                    "model") from None
            out[layer.name] = {"weight": w, "bias": b, "start": start, "end": off}
        elif layer.type not in WEIGHTLESS:
            raise EdgefaceError(f"ncnn layer type {layer.type} ({layer.name}) is not supported by the INT8 converter")
    if off != len(buf):
        raise EdgefaceError(f"{bin_path} has {len(buf) - off} bytes beyond the layers' weights; "
                            ".param and .bin do not match")
    return out


def match_onnx_layers(ncnn_weights: Mapping[str, dict], onnx_model) -> dict[str, object]:
    """ncnn layer name -> the ONNX Conv/Gemm node with the same weights (BN-folded by both exporters)."""
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in onnx_model.graph.initializer}
    candidates = []
    for node in onnx_model.graph.node:
        if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.input) > 1 and node.input[1] in inits:
            w = inits[node.input[1]].astype(np.float32)
            if node.op_type == "MatMul" or (node.op_type == "Gemm" and not any(
                    a.name == "transB" and a.i == 1 for a in node.attribute)):
                w = w.T
            candidates.append((node, w.ravel()))
    out, taken = {}, set()
    for name, rec in ncnn_weights.items():
        w = rec["weight"]
        best, err = None, np.inf
        for node, cw in candidates:
            if cw.size != w.size or node.name in taken:
                continue
            e = float(np.abs(cw - w).max())
            if e < err:
                best, err = node, e
        if best is not None and err <= 1e-4 * max(1.0, float(np.abs(w).max())):
            out[name] = best
            taken.add(best.name)
    return out


def emit_ncnn(fp32_param, out_param, onnx_model, ranges_sym: Mapping[str, tuple], float_nodes: Iterable[str] = (),
              int8_weights: bool = True) -> dict:
    """Write ``out_param`` + its ``.bin`` (names as ``export.ncnn_paths``) and return a summary.

    ``onnx_model``: the FP32 ONNX (ModelProto or path) the ranges are keyed on. ``int8_weights=False``
    keeps float32 weights with the scales (ncnn quantizes them at load) — same numbers, bigger file.
    """
    import onnx

    if not isinstance(onnx_model, onnx.ModelProto):
        onnx_model = onnx.load(str(onnx_model))
    param_in, bin_in, spec_in = ncnn_paths(fp32_param)
    param_out, bin_out, spec_out = ncnn_paths(out_param)
    layers, blob_count = read_param(param_in)
    weights = read_weights(layers, bin_in)
    matched = match_onnx_layers(weights, onnx_model)
    float_nodes = set(float_nodes)
    raw = Path(bin_in).read_bytes()
    chunks, cursor = [], 0
    quantized, kept_float = [], []
    for layer in layers:
        if layer.name not in weights:
            continue
        rec = weights[layer.name]
        node = matched.get(layer.name)
        if node is None or node.name in float_nodes or node.input[0] not in ranges_sym:
            kept_float.append(layer.name if node is None else node.name)
            continue
        lo, hi = ranges_sym[node.input[0]]
        amax = max(abs(lo), abs(hi))
        size, n_scales, _ = _weight_geometry(layer)
        w = rec["weight"].reshape(n_scales, -1)
        wmax = np.abs(w).max(axis=1)
        wscale = (127.0 / np.maximum(wmax, 1e-12)).astype(np.float32)
        wscale[wmax == 0] = 1.0
        bscale = np.float32(127.0 / max(amax, 1e-12))
        chunks.append(raw[cursor:rec["start"]])
        if int8_weights:
            q = np.clip(np.round(w * wscale[:, None]), -127, 127).astype(np.int8).ravel()
            pad = (-q.size) % 4
            chunks.append(struct.pack("<I", TAG_INT8) + q.tobytes() + b"\0" * pad)
        else:
            chunks.append(struct.pack("<I", 0) + rec["weight"].astype(np.float32).tobytes())
        if rec["bias"] is not None:
            chunks.append(rec["bias"].astype(np.float32).tobytes())
        chunks.append(wscale.tobytes() + np.array([bscale], np.float32).tobytes())
        cursor = rec["end"]
        layer.params["8"] = "1" if layer.type == "ConvolutionDepthWise" else "2"
        quantized.append({"ncnn": layer.name, "onnx": node.name, "input": node.input[0],
                          "input_scale": float(bscale)})
    chunks.append(raw[cursor:])
    if not quantized:
        raise EdgefaceError(f"no layer of {Path(param_in).name} matched the ONNX model's weights; export both "
                            f"from the same checkpoint")
    text = "\n".join([str(MAGIC), f"{len(layers)} {blob_count}"] + [l.line() for l in layers]) + "\n"
    param_out.parent.mkdir(parents=True, exist_ok=True)
    # Weights and spec first, the .param last: a loader looks for the .param.
    atomic_write_bytes(bin_out, b"".join(chunks))
    if spec_in.is_file():
        import json

        info = json.loads(spec_in.read_text())
        info["precision"] = "int8"
        atomic_write_json(spec_out, info, sort_keys=True)
    atomic_write_bytes(param_out, text.encode())
    return {"param": str(param_out), "bin": str(bin_out), "quantized_layers": len(quantized),
            "float_layers": kept_float, "layers": quantized}


def ncnn_int8(sources: Fp32Artifacts, plan, out_path: Path, *, ort_format: str = "qdq",
              calib_cache: Path | None = None) -> dict:
    """The registry's INT8 emitter for ncnn: the FP32 ncnn export with int8 weights and the plan's scales."""
    if sources.ncnn is None:
        raise EdgefaceError("ncnn INT8 is converted from the ncnn export of the model; it was not made")
    summary = emit_ncnn(sources.ncnn, out_path, sources.model(), plan.ranges_sym, plan.float_nodes)
    return {"form": "ncnn INT8 (int8 weights, per-channel scales)",
            "quantized_layers": summary["quantized_layers"], "float_layers": summary["float_layers"]}
