"""Which tensors get which range, and which layers stay in float.

The regression heads are clipping-sensitive: a pose angle is a linear read-out of the pooled features,
so clipping a stage output by even a few percent shifts every angle, and an int8 step in the final Gemm
is a visible fraction of a degree. The policy therefore
  * keeps the pooling layers and everything after them (Flatten, Concat, the Gemm heads, Sigmoid, the
    x90 scale) in float — they are < 0.1 % of the MACs;
  * ranges every tensor that feeds a pooling layer (the stage outputs the heads read) with minmax,
    whatever the chosen method, so those features are never clipped;
  * uses the chosen method for every other activation.
Weights are always per-channel symmetric int8 (each backend derives them from the weights themselves).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .calibrators import MinMaxCalibrator, get_calibrator
from .stats import ActivationStats

POOL_OPS = {"GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "AveragePool"}
TensorRanges = dict  # tensor name -> (lo, hi) floats


@dataclass
class QuantPlan:
    method: str
    ranges_sym: TensorRanges            # int8, zero point 0 (TensorRT, ncnn)
    ranges_asym: TensorRanges           # uint8 activations (onnxruntime x86)
    float_nodes: set = field(default_factory=set)       # ONNX node names kept in float
    minmax_tensors: set = field(default_factory=set)    # tensors ranged with minmax by the head policy

    def with_float_nodes(self, extra) -> "QuantPlan":
        return QuantPlan(self.method, self.ranges_sym, self.ranges_asym, set(self.float_nodes) | set(extra),
                         set(self.minmax_tensors))

    def summary(self) -> dict:
        return {"method": self.method, "float_nodes": sorted(self.float_nodes),
                "minmax_tensors": sorted(self.minmax_tensors)}


def head_nodes(model) -> set:
    """Pooling nodes and every node downstream of them (the blur and pose heads)."""
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    out, stack = set(), [n for n in model.graph.node if n.op_type in POOL_OPS]
    while stack:
        node = stack.pop()
        if node.name in out:
            continue
        out.add(node.name)
        for o in node.output:
            stack.extend(consumers.get(o, []))
    return out


def pooled_inputs(model) -> set:
    return {n.input[0] for n in model.graph.node if n.op_type in POOL_OPS}


def make_plan(model, stats: ActivationStats, method: str, keep_heads_float: bool = True) -> QuantPlan:
    calibrator = get_calibrator(method)
    minmax = MinMaxCalibrator()
    protected = pooled_inputs(model)
    sym, asym = {}, {}
    for name in stats.names:
        c = minmax if name in protected else calibrator
        sym[name] = c.tensor_range(stats, name, symmetric=True)
        asym[name] = c.tensor_range(stats, name, symmetric=False)
    floats = head_nodes(model) if keep_heads_float else set()
    return QuantPlan(method, sym, asym, floats, protected & set(stats.names))
