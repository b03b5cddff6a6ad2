"""The torch-free runtime: what a Raspberry Pi or a Jetson installs to run a model.

    predictor.py   Predictor: any artifact or bundle, on the engine that fits it (``backend="auto"``)
    bundle.py      deployment bundles: the manifest, its sha256 checks, and whether this device fits

Needs only numpy, OpenCV, PyYAML and one engine's package; never torch (tests/test_torch_free.py).
"""
from __future__ import annotations

from .bundle import BundleInfo, open_bundle
from .predictor import Predictor, Result, open_model

__all__ = ["BundleInfo", "Predictor", "Result", "open_bundle", "open_model"]
