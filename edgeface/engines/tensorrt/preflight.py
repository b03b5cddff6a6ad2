"""Preflight: will TensorRT's ONNX parser take this model? Checked on any machine, before a Jetson sees it.

Rules from onnx-tensorrt's docs/operators.md (release/8.5-GA, which parses opset <= 17: JetPack 5's
TensorRT) and TensorRT's DataType docs. 8.6 and 10.x support a superset (e.g. LayerNormalization).
"""
from __future__ import annotations

from pathlib import Path

from ...core.errors import EdgefaceError

# Operators marked "Y" in onnx-tensorrt's docs/operators.md for TensorRT 8.5 (branch release/8.5-GA, which
# parses opset <= 17; JetPack 5's TensorRT). 8.6 and 10.x support a superset (e.g. LayerNormalization).
TRT85_SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu Clip
Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout
Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gemm GlobalAveragePool
GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GRU HardSwish HardSigmoid Identity If ImageScaler
InstanceNormalization IsNaN LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool
MatMul Max MaxPool Mean MeanVarianceNormalization Min Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range
Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements
ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt
Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

# Inputs that operators.md says must be initializers (constant at build time): op -> input index.
_CONST_INPUTS = {"Slice": (3,), "Squeeze": (1,), "Unsqueeze": (1,), "TopK": (1,), "CumSum": (1,)}
_RESIZE_COORD = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
_RESIZE_MODES = {"nearest", "linear"}
_RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}


def _onnx_dtype_names():
    import onnx

    T = onnx.TensorProto
    ok = {T.FLOAT, T.FLOAT16, T.INT8, T.BOOL, T.INT32, T.INT64, T.DOUBLE}  # INT64/DOUBLE: cast down by the parser
    return T, ok


def check_onnx_for_tensorrt(onnx_path: str | Path, max_opset: int = 17, data: bytes | None = None) -> list[str]:
    """Problems that would stop TensorRT's ONNX parser (8.5+) from taking this model; [] = none found.

    Rules, from onnx-tensorrt's docs/operators.md (release/8.5-GA) and TensorRT's DataType docs:
    default-domain opset <= ``max_opset`` (17 for TensorRT 8.5/8.6); no custom domains; every operator in the
    8.5 support matrix; data types FLOAT/FLOAT16/INT8/BOOL/INT32 (INT64 and DOUBLE are cast down); UINT8 only
    as a network input (TensorRT >= 8.5) that is Cast to float; one input whose dims after the batch dim are
    static; Q/DQ zero points zero and INT8; Slice/Squeeze/Unsqueeze axes, TopK K and CumSum axis constant;
    2D/3D pooling without MaxPool's Indices output; supported Resize modes; and, at opset <= 17, no
    ReduceMean ``noop_with_empty_axes`` (the attribute only exists from opset 18; the dynamo exporter's
    down-converted graphs keep it).
    """
    model = _load_onnx(onnx_path, data)
    opset, problems = _opset_problems(model, max_opset)
    consts = _Constants(model.graph)
    problems += _operator_problems(model.graph)
    for n in model.graph.node:
        problems += _node_problems(n, consts, opset)
    problems += _dtype_problems(model, consts)
    problems += _shape_problems(model.graph, consts)
    return problems


def _load_onnx(onnx_path: str | Path, data: bytes | None):
    try:
        import onnx
    except ImportError:
        raise EdgefaceError("checking an ONNX needs the onnx package: pip install onnx") from None
    p = Path(onnx_path)
    if data is None and not p.is_file():
        raise EdgefaceError(f"ONNX file {p} does not exist")
    try:  # ``data``: the ONNX's bytes, already read (and verified) once
        return onnx.load_from_string(data) if data is not None else onnx.load(str(p))
    except Exception as e:  # noqa: BLE001
        raise EdgefaceError(f"{p} is not a readable ONNX model ({type(e).__name__})") from None


def _opset_problems(model, max_opset: int) -> tuple[int | None, list[str]]:
    """(the default-domain opset, problems): custom domains, a missing or too new opset."""
    opset, problems = None, []
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            opset = imp.version
        else:
            problems.append(f"custom operator domain {imp.domain!r} (TensorRT's parser reads the default domain only)")
    if opset is None:
        problems.append("no default-domain opset import")
    elif opset > max_opset:
        problems.append(f"opset {opset} > {max_opset} (TensorRT 8.5/8.6 parse up to opset 17; "
                        f"re-export with opset 17)")
    return opset, problems


class _Constants:
    """The graph's build-time constants: initializers and Constant nodes' outputs, with their values."""

    def __init__(self, graph):
        self.names = {i.name for i in graph.initializer}
        self.names |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
        self._init_values = {i.name: i for i in graph.initializer}
        self._const_nodes = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.output}

    def __contains__(self, name) -> bool:
        return name in self.names

    def array(self, name):
        """The constant's value as a numpy array; None when ``name`` is not a constant."""
        from onnx import numpy_helper

        if name in self._init_values:
            return numpy_helper.to_array(self._init_values[name])
        n = self._const_nodes.get(name)
        if n is not None:
            for a in n.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None


def _operator_problems(graph) -> list[str]:
    """Default-domain operators outside the 8.5 support matrix, and custom-domain operators."""
    problems = []
    unsupported = sorted({n.op_type for n in graph.node if n.domain in ("", "ai.onnx")
                          and n.op_type not in TRT85_SUPPORTED_OPS})
    if unsupported:
        problems.append(f"operators TensorRT's ONNX parser does not support: {', '.join(unsupported)}")
    custom = sorted({f"{n.domain}.{n.op_type}" for n in graph.node if n.domain not in ("", "ai.onnx")})
    if custom:
        problems.append(f"custom-domain operators: {', '.join(custom)}")
    return problems


def _node_problems(n, consts: _Constants, opset: int | None) -> list[str]:
    """One node's inputs and attributes against operators.md's per-operator restrictions."""
    import onnx

    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
    where = f"{n.op_type} {n.name or n.output[0]!r}"
    problems = []
    for idx in _CONST_INPUTS.get(n.op_type, ()):
        if len(n.input) > idx and n.input[idx] and n.input[idx] not in consts:
            problems.append(f"{where}: input {idx} must be a constant initializer for TensorRT")
    if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
        problems += _qdq_problems(n, where, consts)
    if n.op_type in ("AveragePool", "MaxPool", "LpPool"):
        k = attrs.get("kernel_shape")
        if k is not None and len(k) not in (2, 3):
            problems.append(f"{where}: only 2D or 3D pooling is supported")
        if n.op_type == "MaxPool" and len(n.output) > 1 and n.output[1]:
            problems.append(f"{where}: MaxPool's Indices output is not supported")
    if n.op_type == "Resize":
        coord = attrs.get("coordinate_transformation_mode", b"half_pixel")
        mode = attrs.get("mode", b"nearest")
        near = attrs.get("nearest_mode", b"round_prefer_floor")
        coord, mode, near = (v.decode() if isinstance(v, bytes) else v for v in (coord, mode, near))
        if (coord not in _RESIZE_COORD or mode not in _RESIZE_MODES
                or (mode == "nearest" and near not in _RESIZE_NEAREST)):
            problems.append(f"{where}: Resize mode {mode}/{coord}/{near} is not supported by TensorRT")
    if n.op_type == "ReduceMean" and opset is not None and opset <= 17 and "noop_with_empty_axes" in attrs:
        problems.append(f"{where}: attribute noop_with_empty_axes does not exist for ReduceMean at opset "
                        f"{opset} (drop it after down-converting from opset 18)")
    return problems


def _qdq_problems(n, where: str, consts: _Constants) -> list[str]:
    """TensorRT quantizes symmetrically to INT8: a constant INT8 zero point of 0 and a constant scale."""
    problems = []
    if len(n.input) < 3 or not n.input[2]:
        problems.append(f"{where}: needs an explicit INT8 zero point (TensorRT quantizes to INT8 only)")
    else:
        zp = consts.array(n.input[2])
        if zp is None:
            problems.append(f"{where}: zero point must be a constant")
        else:
            if zp.dtype.name != "int8":
                problems.append(f"{where}: zero point is {zp.dtype.name}; TensorRT needs INT8 (symmetric S8)")
            if zp.size and (zp != 0).any():
                problems.append(f"{where}: zero point must be 0 (TensorRT quantization is symmetric)")
    if n.input[1] not in consts:
        problems.append(f"{where}: scale must be a constant initializer")
    return problems


def _dtype_problems(model, consts: _Constants) -> list[str]:
    """Input, output and tensor data types TensorRT takes; uint8 only as an input Cast to float."""
    import onnx

    T, ok_types = _onnx_dtype_names()
    graph = model.graph
    problems = []
    uint8_inputs = set()
    for vi in graph.input:
        if vi.name in consts:
            continue
        et = vi.type.tensor_type.elem_type
        if et == T.UINT8:
            uint8_inputs.add(vi.name)
        elif et not in (T.FLOAT, T.FLOAT16):
            problems.append(f"input {vi.name!r} is {T.DataType.Name(et)}; use float32, float16 or uint8")
    for vi in graph.output:
        et = vi.type.tensor_type.elem_type
        if et not in (T.FLOAT, T.FLOAT16):
            problems.append(f"output {vi.name!r} is {T.DataType.Name(et)}; TensorRT outputs here must be float")
    for name in uint8_inputs:  # TensorRT >= 8.5 takes UINT8 only as an input that is converted to float
        users = [n for n in graph.node if name in n.input]
        bad = [n.op_type for n in users if not (n.op_type == "Cast" and onnx.helper.get_attribute_value(
            next(a for a in n.attribute if a.name == "to")) in (T.FLOAT, T.FLOAT16))]
        if bad:
            problems.append(f"uint8 input {name!r} feeds {', '.join(sorted(set(bad)))}; TensorRT accepts uint8 only "
                            f"as an input Cast to float")
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # noqa: BLE001 - shape inference is a help here, not a requirement
        inferred = graph
    typed = [(i.name, i.data_type) for i in graph.initializer]
    typed += [(v.name, v.type.tensor_type.elem_type) for v in inferred.value_info if v.type.HasField("tensor_type")]
    bad_types = sorted({(T.DataType.Name(t), name) for name, t in typed
                        if t not in ok_types and t != T.UNDEFINED and name not in uint8_inputs})
    if bad_types:
        kinds = sorted({k for k, _ in bad_types})
        problems.append(f"tensors of types TensorRT does not support: {', '.join(kinds)} "
                        f"(e.g. {bad_types[0][1]!r})")
    return problems


def _shape_problems(graph, consts: _Constants) -> list[str]:
    """One input, static except the batch dim."""
    problems = []
    real_inputs = [vi for vi in graph.input if vi.name not in consts]
    if len(real_inputs) != 1:
        problems.append(f"{len(real_inputs)} graph inputs; edgeface engines take exactly one")
    for vi in real_inputs:
        dims = vi.type.tensor_type.shape.dim
        if len(dims) < 2:
            problems.append(f"input {vi.name!r} has rank {len(dims)}; expected batch + sample dims")
            continue
        for k, d in enumerate(dims[1:], start=1):
            if not (d.HasField("dim_value") and d.dim_value > 0):
                problems.append(f"input {vi.name!r} dim {k} is dynamic ({d.dim_param or '?'}); "
                                "only the batch dim may be")
    return problems
