"""Artifacts exported once per test session (pnnx takes seconds; three test files share them)."""
from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path


@functools.lru_cache(maxsize=None)
def exported(checkpoint: str) -> dict[str, Path]:
    """{'onnx', 'onnx_folded', 'ncnn_fp32', 'ncnn_fp16'} -> artifact path, exported from ``checkpoint``."""
    from edgeface.export import export_ncnn, export_onnx

    root = Path(tempfile.mkdtemp(prefix="edgeface-test-artifacts-"))
    atexit.register(shutil.rmtree, root, True)
    return {
        "onnx": export_onnx(checkpoint, root / "fp32" / "model.onnx"),
        "onnx_folded": export_onnx(checkpoint, root / "folded" / "model.onnx", fold_preprocess=True),
        "ncnn_fp32": export_ncnn(checkpoint, root / "ncnn32" / "model.ncnn.param", precision="fp32"),
        "ncnn_fp16": export_ncnn(checkpoint, root / "ncnn16" / "model.ncnn.param", precision="fp16"),
    }


@functools.lru_cache(maxsize=None)
def torch_reference(checkpoint: str, crops_key: bytes, crops_shape: tuple) -> tuple:
    """(blur (N,), pose (N, 3)) from the torch reference for a crop batch (cached by content)."""
    import numpy as np

    from edgeface.predictor import Predictor

    crops = np.frombuffer(crops_key, dtype=np.uint8).reshape(crops_shape)
    with Predictor(checkpoint, backend="torch") as p:
        r = p.predict(crops)
    return r.blur, r.pose


def reference(checkpoint, crops):
    return torch_reference(str(checkpoint), crops.tobytes(), crops.shape)
