"""A model graph checked against its ModelSpec before an engine compiles it: a valid ONNX that is not
edgeface's (even one carrying edgeface's metadata) is refused with one line, not run into a traceback or
a hang.

What is checked (``check_io``, shared by the ONNX reader below and OpenVINO's IR):
  * one input, of the element type and layout the artifact's input kind says: float32 (N, 3, S, S), or
    uint8 (N, S, S, 3) for a graph with the preprocessing folded in, S the spec's ``input_size``; the batch
    dimension dynamic, or fixed (then every run must bring exactly that many crops: ``Backend.check_input``);
  * every output the spec names, float32, blur (N,) or (N, 1) and pose (N, 3) where the graph declares
    shapes (the rows per crop are checked again on every run: ``Backend.check_outputs``).

Control flow (``Loop``, ``Scan``, ``If``, anywhere: subgraphs and model-local functions included) is refused
in any artifact edgeface did not build. edgeface's exports never contain it (a test holds the exporters to
that), and a ``Loop`` of 2**62 iterations hangs every engine. "edgeface built it" is known only from a bundle
whose signature verified against a trusted key: metadata (producer name, ``edgeface.spec``) and a bundle's
``bundle_sha256`` are public arithmetic anyone can copy, so they prove nothing.
"""
from __future__ import annotations

from typing import Iterable, Optional

from .errors import EdgefaceError
from .spec import FLOAT_NCHW, ModelSpec

CONTROL_FLOW_OPS = frozenset({"Loop", "Scan", "If"})
_ONNX_ELEM = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
              11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16"}
FIX = "re-export it with `edgeface export`"

Dims = Optional[list]   # None: rank unknown; else one int (fixed) or None (dynamic) per dimension


def check_io(name: str, spec: ModelSpec, input_kind: str, inputs: list[tuple[str, str, Dims]],
             outputs: dict[str, tuple[str, Dims]]) -> Optional[int]:
    """Raise EdgefaceError (one line) when the graph's inputs/outputs do not fit ``spec``; return the fixed
    batch size the graph declares (None: dynamic or undeclared)."""
    if len(inputs) != 1:
        raise EdgefaceError(f"{name} has {len(inputs)} inputs ({', '.join(i[0] for i in inputs)[:80]}); an edgeface "
                            f"model has one; {FIX}")
    _, elem, dims = inputs[0]
    s = spec.input_size
    want_elem, want_dims = ("float32", [3, s, s]) if input_kind == FLOAT_NCHW else ("uint8", [s, s, 3])
    layout = f"(N, {', '.join(map(str, want_dims))}) {want_elem}"
    if elem != want_elem:
        raise EdgefaceError(f"{name} takes {elem} input; its ModelSpec says {layout}: it is not an edgeface model "
                            f"(or its spec is wrong); {FIX}")
    if dims is None:
        raise EdgefaceError(f"{name} does not declare its input's shape; an edgeface model takes {layout}; {FIX}")
    if len(dims) != 4 or any(d is not None and d != w for d, w in zip(dims[1:], want_dims)):
        shown = "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"
        raise EdgefaceError(f"{name} takes input {shown}; its ModelSpec says {layout} (input_size {s}): the model "
                            f"and its spec disagree; {FIX}")
    batch = dims[0]
    if batch is not None and batch < 1:
        batch = None  # 0 or -1: the exporters' ways of saying "dynamic"
    for o in spec.outputs:
        if o.name not in outputs:
            raise EdgefaceError(f"{name} has outputs {sorted(outputs)[:6]}; its ModelSpec wants "
                                f"{list(spec.output_names)}; {FIX}")
        elem, odims = outputs[o.name]
        if elem != "float32":
            raise EdgefaceError(f"{name} answers '{o.name}' as {elem}; an edgeface model answers float32; {FIX}")
        if odims is None:
            continue  # undeclared: the run-time check counts rows and columns
        k = len(o.fields)
        ok = (len(odims) == 2 and odims[1] in (k, None)) or (k == 1 and len(odims) == 1)
        if not ok:
            shown = "(" + ", ".join("?" if d is None else str(d) for d in odims) + ")"
            want = "(N,) or (N, 1)" if k == 1 else f"(N, {k})"
            raise EdgefaceError(f"{name} answers '{o.name}' of shape {shown}; an edgeface model answers {want} "
                                f"({', '.join(o.fields)}): it is not an edgeface model; {FIX}")
        if odims[0] is not None and odims[0] >= 1 and batch is not None and odims[0] != batch:
            raise EdgefaceError(f"{name} answers {odims[0]} '{o.name}' rows for a batch of {batch}; an edgeface "
                                f"model answers one row per crop; {FIX}")
        if odims[0] is not None and odims[0] >= 1 and batch is None:
            raise EdgefaceError(f"{name} answers a fixed {odims[0]} '{o.name}' rows whatever the batch; an edgeface "
                                f"model answers one row per crop; {FIX}")
    return batch


# -- ONNX ---------------------------------------------------------------------------------------------------
def _onnx_dims(value_info) -> Dims:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]


def _onnx_elem(value_info) -> str:
    t = value_info.type
    if not t.HasField("tensor_type"):
        return "not a tensor"
    return _ONNX_ELEM.get(t.tensor_type.elem_type, f"type {t.tensor_type.elem_type}")


def _nodes(graph) -> Iterable:
    """Every node of a graph and of the subgraphs its nodes' attributes hold, however deep."""
    stack = [graph]
    while stack:
        g = stack.pop()
        for node in g.node:
            yield node
            for attr in node.attribute:
                if attr.HasField("g"):
                    stack.append(attr.g)
                stack.extend(attr.graphs)


def control_flow_ops(proto) -> list[str]:
    """The control-flow operators anywhere in an ONNX model (graph, subgraphs, model-local functions)."""
    found = {n.op_type for n in _nodes(proto.graph) if n.op_type in CONTROL_FLOW_OPS}
    for fn in proto.functions:
        for node in fn.node:
            if node.op_type in CONTROL_FLOW_OPS:
                found.add(node.op_type)
            for attr in node.attribute:
                if attr.HasField("g") or attr.graphs:
                    found.update(n.op_type for g in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs)
                                 for n in _nodes(g) if n.op_type in CONTROL_FLOW_OPS)
    return sorted(found)


def check_onnx(proto, spec: ModelSpec, input_kind: str, name: str, *, built_by_edgeface: bool) -> Optional[int]:
    """``check_io`` on an ONNX proto, and (unless ``built_by_edgeface``: a bundle signed by a trusted key) no
    control flow. Returns the fixed batch size, or None."""
    if not built_by_edgeface:
        flow = control_flow_ops(proto)
        if flow:
            raise EdgefaceError(f"{name} contains control flow ({', '.join(flow)}), which edgeface's models never "
                                f"have and which can run without end; it is refused in a model edgeface did not "
                                f"build (sign the bundle with `edgeface deploy --sign KEY` to vouch for it)")
    inits = {i.name for i in proto.graph.initializer}
    inputs = [(i.name, _onnx_elem(i), _onnx_dims(i)) for i in proto.graph.input if i.name not in inits]
    outputs = {o.name: (_onnx_elem(o), _onnx_dims(o)) for o in proto.graph.output}
    return check_io(name, spec, input_kind, inputs, outputs)
