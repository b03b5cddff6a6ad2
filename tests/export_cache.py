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

    from edgeface.runtime.predictor import Predictor

    crops = np.frombuffer(crops_key, dtype=np.uint8).reshape(crops_shape)
    with Predictor(checkpoint, backend="torch") as p:
        r = p.predict(crops)
    return r.blur, r.pose


def reference(checkpoint, crops):
    return torch_reference(str(checkpoint), crops.tobytes(), crops.shape)


@functools.lru_cache(maxsize=None)
def parity_checkpoint(checkpoint: str) -> str:
    """A checkpoint whose outputs depend on the input, for parity tests.

    The shipped trained weights are used when present. conftest's random checkpoint gives the *same* output
    for every input (its BN statistics do not match the activations, so ReLU6 saturates everywhere), which
    would make any parity test pass trivially; here BN statistics are measured on generated images and the
    heads get weights scaled so outputs span tens of degrees and a good part of the blur range.
    """
    from edgeface.engines.torch.checkpoint import DEFAULT_WEIGHTS

    if Path(checkpoint).resolve() == DEFAULT_WEIGHTS.resolve():
        return checkpoint
    import math

    import pytest

    torch = pytest.importorskip("torch")

    from edgeface.engines.torch.checkpoint import save_checkpoint
    from edgeface.engines.torch.network import build_model
    from edgeface.core.spec import ModelSpec

    torch.manual_seed(0)
    spec = ModelSpec()
    model = build_model(spec)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, 0.0, 1.0 / math.sqrt(m.in_features))
    # Pose spread like a trained model's on these images (~±20°). An untrained trunk is far more sensitive to
    # weight rounding than a trained one: with fp16 weights, unit gain (±90°) deviates 1.1°, gain 0.3 0.51°,
    # while the trained weights deviate 0.08–0.10° at a ±70° spread.
    model.pose_head.weight.data.mul_(0.15)
    model.train()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(4):
            base = torch.rand(32, 3, 14, 14, generator=gen) * 2 - 1  # smooth blobs, not just pixel noise
            x = torch.nn.functional.interpolate(base, size=112, mode="bilinear", align_corners=False)
            model(x + 0.2 * torch.randn(32, 3, 112, 112, generator=gen))
    model.eval()
    root = Path(tempfile.mkdtemp(prefix="edgeface-test-ckpt-"))
    atexit.register(shutil.rmtree, root, True)
    path = root / "parity.pt"
    save_checkpoint(path, model, spec, {"note": "random weights with measured BN statistics (tests)"})
    return str(path)
