"""INT8: one calibration pass, each engine's own INT8 form, checked against FP32; and quantization-aware
training.

    calibrate/  statistics, calibrators, the head policy, the calibration set -> a QuantPlan
    emit/       the plan written in each engine's INT8 form (the registry names each engine's emitter)
    ptq.py      `edgeface quantize`: the pipeline, the sensitivity ranking, --max-drop
    guard.py    every INT8 artifact against FP32 through the Predictor (what ships is what is measured)
    qat/        quantization-aware training (torch, torchao PT2E) and the conversion of its Q/DQ graph

Only qat/ imports torch (inside its functions); post-training quantization needs onnx and onnxruntime.
"""
from __future__ import annotations

from .ptq import quantize, quantize_for_deploy

__all__ = ["quantize", "quantize_for_deploy"]
