"""edgeface: a small multitask face model (blur + head pose) from PyTorch to edge devices."""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import EdgefaceError  # noqa: E402
from .spec import ModelSpec  # noqa: E402

__all__ = ["EdgefaceError", "ModelSpec", "Predictor", "__version__"]


def __getattr__(name):  # lazy: importing edgeface must not import a backend
    if name == "Predictor":
        from .predictor import Predictor

        return Predictor
    raise AttributeError(name)
