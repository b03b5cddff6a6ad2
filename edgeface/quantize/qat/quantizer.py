"""Our torchao PT2E quantizer: the deployed INT8 scheme, annotated on an exported EdgeFaceNet graph.

The scheme is the one every INT8 target consumes, so the QAT graph exports to TensorRT's explicit
quantization form and converts to the ncnn / ORT x86 forms without recalibration:
  * weights: int8, per output channel, symmetric, range -127..127 (zero point 0);
  * activations: int8, per tensor, symmetric, range -127..127 (zero point 0; TensorRT accepts only 0,
    and -127 keeps ncnn's clamp range, so every runtime rounds the same way).
Where the Q/DQ pairs go:
  * Conv2d (+BatchNorm, folded at convert time) (+ReLU6/ReLU): input, weight; output after the activation;
  * add: both inputs and the output (residuals fuse into the conv on TensorRT / QLinearAdd on ORT).
The heads (pooling, concat, the Linear layers, sigmoid, the x90 scale; < 0.1 % of the MACs) stay float by
default, as the post-training policy keeps them (edgeface.quantize.calibrate.policy), so the trained graph is
exactly what the ORT and ncnn converters deploy. ``quantize_heads=True`` quantizes them too:
  * Linear (+ReLU): input, weight; output after ReLU. The two head outputs (blur logit, pose) stay float:
    an int8 step on a [0, 1] score is 1/127 = 0.008, more than the whole 0.005 blur-MAE budget;
  * average pooling shares its input's scale (a mean never leaves the input range);
  * concat gets its own output scale; its inputs keep their pooling scales. Sharing one scale across the
    concat would tie the stages' output scales together through the pooling sharing.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.fx import GraphModule, Node

from torchao.quantization.pt2e import FusedMovingAvgObsFakeQuantize, MovingAverageMinMaxObserver, \
    MovingAveragePerChannelMinMaxObserver
from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, QuantizationSpec, Quantizer, \
    SharedQuantizationSpec

ANNOTATION_KEY = "quantization_annotation"
_aten = torch.ops.aten
_CONV = {_aten.conv2d.default}
_LINEAR = {_aten.linear.default}
_BN = {_aten.batch_norm.default, _aten._native_batch_norm_legit.default,
       _aten._native_batch_norm_legit_no_training.default}
_ACT = {_aten.hardtanh.default, _aten.hardtanh_.default, _aten.relu.default, _aten.relu_.default,
        _aten.clamp.default}
_ADD = {_aten.add.Tensor, _aten.add_.Tensor}
_POOL = {_aten.adaptive_avg_pool2d.default, _aten.mean.dim, _aten.avg_pool2d.default}
_CAT = {_aten.cat.default, _aten.concat.default}


@dataclass(frozen=True)
class Int8Scheme:
    """The deployed INT8 scheme (see the module docstring); the recipe's ``quant`` section fills it."""

    weight_range: tuple[int, int] = (-127, 127)
    activation_range: tuple[int, int] = (-127, 127)
    averaging_constant: float = 0.01  # activation observers: moving average of the batch min/max
    eps: float = 2 ** -12  # smallest scale, so a dead channel never divides by zero
    quantize_heads: bool = False

    def activation_spec(self) -> QuantizationSpec:
        lo, hi = self.activation_range
        ctr = FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAverageMinMaxObserver,
                                                      averaging_constant=self.averaging_constant, eps=self.eps)
        return QuantizationSpec(dtype=torch.int8, quant_min=lo, quant_max=hi, qscheme=torch.per_tensor_symmetric,
                                observer_or_fake_quant_ctr=ctr)

    def weight_spec(self) -> QuantizationSpec:
        lo, hi = self.weight_range
        # Weights: the current min/max each step (averaging 1.0), so a scale never lags the weights it clips.
        ctr = FusedMovingAvgObsFakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver,
                                                      averaging_constant=1.0, eps=self.eps)
        return QuantizationSpec(dtype=torch.int8, quant_min=lo, quant_max=hi, qscheme=torch.per_channel_symmetric,
                                ch_axis=0, observer_or_fake_quant_ctr=ctr)


def _single_user(node: Node, targets) -> Node | None:
    users = [u for u in node.users if u.op == "call_function"]
    if len(node.users) == 1 and len(users) == 1 and users[0].target in targets:
        return users[0]
    return None


def _is_annotated(node: Node) -> bool:
    a = node.meta.get(ANNOTATION_KEY)
    return a is not None and a._annotated


def _annotate(node: Node, inputs: dict | None = None, output=None) -> None:
    ann = node.meta.get(ANNOTATION_KEY) or QuantizationAnnotation()
    ann.input_qspec_map.update(inputs or {})
    if output is not None:
        ann.output_qspec = output
    ann._annotated = True
    node.meta[ANNOTATION_KEY] = ann


class EdgefaceInt8Quantizer(Quantizer):
    """Annotates conv(+bn)(+relu6) and add (with ``quantize_heads`` also linear(+relu), pooling, concat)."""

    def __init__(self, scheme: Int8Scheme | None = None):
        super().__init__()
        self.scheme = scheme or Int8Scheme()

    def annotate(self, model: GraphModule) -> GraphModule:
        act, weight = self.scheme.activation_spec(), self.scheme.weight_spec()
        for n in model.graph.nodes:
            if n.op != "call_function" or _is_annotated(n):
                continue
            heads = self.scheme.quantize_heads
            if n.target in _CONV or (heads and n.target in _LINEAR):
                _annotate(n, {n.args[0]: act, n.args[1]: weight})
                tail = n
                bn = _single_user(n, _BN) if n.target in _CONV else None
                if bn is not None:
                    tail = bn
                    _annotate(bn)
                relu = _single_user(tail, _ACT)
                if relu is not None:
                    tail = relu
                    _annotate(relu)
                # A linear without activation is a head output: leave it float (see the module docstring).
                if n.target in _CONV or relu is not None:
                    _annotate(tail, output=act)
            elif n.target in _ADD and all(isinstance(a, Node) for a in n.args[:2]):
                _annotate(n, {n.args[0]: act, n.args[1]: act}, act)
            elif heads and n.target in _POOL:
                src = n.args[0]
                _annotate(n, {src: act}, SharedQuantizationSpec((src, n)))
            elif heads and n.target in _CAT:
                _annotate(n, output=act)
        return model

    def validate(self, model: GraphModule) -> None:
        convs = [n for n in model.graph.nodes if n.op == "call_function" and n.target in _CONV]
        missing = [n.name for n in convs if not _is_annotated(n)]
        if missing:
            raise RuntimeError(f"int8 quantizer left convolutions unannotated: {missing[:5]}")
