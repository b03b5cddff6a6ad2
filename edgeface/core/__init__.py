"""The vocabulary every layer shares, and nothing heavier than numpy, OpenCV and PyYAML.

    errors      the one user-facing exception type
    spec        ModelSpec (what travels with every artifact), precisions, input kinds
    preprocess  the one crop and normalisation path (training, calibration, evaluation, inference)
    fold        the same normalisation as ONNX nodes (folded into a graph)
    artifact    the ModelSpec and metadata an artifact carries (ONNX, ncnn, TensorRT engine record)
    io          atomic writes, sha256, JSON
    recipe      YAML recipes validated against a schema of defaults
    device      what machine this is (one device vocabulary) and the facts a benchmark records
    compare     the one deviation-from-a-reference computation

Nothing in ``core`` imports another edgeface layer, torch, onnx at import time, or an inference engine.
"""
from __future__ import annotations

__version__ = "0.1.0"
