"""The torch-free runtime: what a Raspberry Pi or a Jetson installs to run a model.

    predictor.py   Predictor: any artifact or bundle, on the engine that fits it (``backend="auto"``)
    bundle.py      deployment bundles: the manifest, its sha256 checks, and whether this device fits

Needs only numpy, OpenCV, PyYAML and one engine's package; never torch (tests/test_torch_free.py).
"""
from __future__ import annotations

__all__ = ["BundleInfo", "Predictor", "Result", "open_bundle", "open_model"]


def __getattr__(name):
    """Lazy, so importing one module (``edgeface.runtime.bundle``, which a device runs to verify a bundle) does
    not import numpy, OpenCV and the predictor with it: the fleet playbooks start a Python on every device for
    every step."""
    if name in ("BundleInfo", "open_bundle"):
        from . import bundle

        return getattr(bundle, name)
    if name in ("Predictor", "Result", "open_model"):
        from . import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
