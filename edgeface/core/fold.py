"""The ModelSpec's preprocessing as ONNX nodes, prepended to a float-input graph ("folded").

One transformation serves two places: ``edgeface export --fold-preprocess`` writes it into an artifact
(TensorRT then takes the uint8 crops too), and the onnxruntime engine applies it in memory when it loads a
float-input artifact, so ORT's own threads do the work numpy's ``to_input`` would do (see
``edgeface.engines.onnxruntime.runner``). It is the ONNX form of ``preprocess.input_affine``.
"""
from __future__ import annotations

from .artifact import INPUT_KIND_KEY, set_onnx_metadata
from .errors import EdgefaceError
from .preprocess import input_affine
from .spec import UINT8_NHWC, ModelSpec


def prepend_preprocess(proto, spec: ModelSpec, cast_first: bool = True):
    """Return ``proto`` (a float32-NCHW-input ONNX) taking uint8 (N, S, S, 3) BGR instead.

    Cast, Transpose to NCHW, Gather (only when the spec wants RGB), Mul, Add, i.e.
    input[c] = bgr[..., idx[c]] * scale[c] + bias[c] from preprocess.input_affine, feed the original graph.
    ``cast_first`` (for artifacts: TensorRT takes uint8 only as a network input cast straight to float);
    without it the layout ops move 1-byte pixels, a quarter of the memory traffic (for ORT at load time).
    A 1x1 Conv would do the affine in one node but ran slower in ORT than Mul and Add (docs/figures.md).
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    init_names = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in init_names]
    if len(inputs) != 1 or inputs[0].type.tensor_type.elem_type != TensorProto.FLOAT:
        raise EdgefaceError(f"cannot fold preprocessing into a graph with inputs {[i.name for i in inputs]}; "
                            f"it needs one float32 NCHW input")
    old = inputs[0]
    s = spec.input_size
    batch = old.type.tensor_type.shape.dim[0]
    batch_dim = batch.dim_param or (batch.dim_value if batch.HasField("dim_value") else "batch")
    name = old.name
    inner = f"{name}__normalised"
    for node in graph.node:
        for k, used in enumerate(node.input):
            if used == name:
                node.input[k] = inner
    scale, bias, idx = input_affine(spec)
    consts = {"edgeface_scale": np.asarray(scale, np.float32).reshape(1, 3, 1, 1),
              "edgeface_bias": np.asarray(bias, np.float32).reshape(1, 3, 1, 1)}
    cast = [helper.make_node("Cast", [name], [f"{name}__float"], to=TensorProto.FLOAT, name="edgeface_cast")]
    layout = [helper.make_node("Transpose", [name], [f"{name}__nchw"], perm=[0, 3, 1, 2], name="edgeface_nchw")]
    if list(idx) != [0, 1, 2]:
        consts["edgeface_channel_order"] = np.asarray(idx, np.int64)
        layout.append(helper.make_node("Gather", [f"{name}__nchw", "edgeface_channel_order"], [f"{name}__planar"],
                                       axis=1, name="edgeface_channel_order"))
    else:
        layout.append(helper.make_node("Identity", [f"{name}__nchw"], [f"{name}__planar"], name="edgeface_planar"))
    # chain the two groups: the first takes the graph input, the second the first's output
    first, second = (cast, layout) if cast_first else (layout, cast)
    second[0].input[0] = first[-1].output[0]
    planar = second[-1].output[0]
    pre = first + second
    pre += [helper.make_node("Mul", [planar, "edgeface_scale"], [f"{name}__scaled"], name="edgeface_scale"),
            helper.make_node("Add", [f"{name}__scaled", "edgeface_bias"], [inner], name="edgeface_bias")]
    nodes = pre + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    pos = list(graph.input).index(old)
    graph.input.remove(old)
    graph.input.insert(pos, helper.make_tensor_value_info(name, TensorProto.UINT8, [batch_dim, s, s, 3]))
    set_onnx_metadata(proto, {INPUT_KIND_KEY: UINT8_NHWC})
    return proto
