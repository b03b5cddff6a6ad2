"""ONNX Runtime: the x86 engine (and any CPU onnxruntime supports). Its artifact is the ONNX export."""
from __future__ import annotations

from ..descriptor import Engine, Int8Form

ENGINE = Engine(
    name="onnxruntime",
    title="ONNX Runtime",
    description="ONNX opset 17, dynamic batch, ModelSpec in metadata_props",
    package="onnxruntime",
    extra="ort",
    format="onnx",
    suffix=".onnx",
    artifact="model.onnx",
    companions=("{name}.data", "{stem}.spec.json"),  # external weights, a spec file beside it
    runner="edgeface.engines.onnxruntime.runner:OnnxRuntimeBackend",
    read_spec="edgeface.core.artifact:read_onnx_spec",
    precisions=("fp32",),
    bundle_format="onnx",
    fold_preprocess=True,
    # U8S8: uint8 activations, int8 per-channel weights (ORT's fast x86 kernels want uint8 inputs)
    int8=Int8Form(artifact="model.onnx"),
    preferred_on=("x86",),
)
