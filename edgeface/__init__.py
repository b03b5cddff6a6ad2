"""edgeface: a small multitask face model (blur + head pose) from PyTorch to edge devices.

The package is layered; each layer imports only the ones below it (docs/architecture.md):

    cli        the `edgeface` command: one module per verb
    deploy     weights -> a verified bundle for a device (targets are data: recipes/targets/*.yaml)
    bench      latency, throughput, memory and accuracy, side by side, here or on a device over SSH
    quantize   INT8 per engine from one calibration pass; quantization-aware training (qat/)
    export     checkpoint -> each engine's artifact (one exporter per format)
    model      training: data, augmentation (blur, pose), the training loop, evaluation
    remote     SSH to a device, shared by bench and deploy
    runtime    Predictor and bundles: torch-free, what a device installs
    engines    one package per engine, one registry (edgeface.engines.registry lists them)
    core       ModelSpec, preprocessing, artifacts' metadata, atomic files, the device vocabulary
"""
from __future__ import annotations

from .core import __version__
from .core.errors import EdgefaceError
from .core.spec import ModelSpec

__all__ = ["EdgefaceError", "ModelSpec", "Predictor", "__version__"]


def __getattr__(name):  # lazy: importing edgeface must not import an engine
    if name == "Predictor":
        from .runtime.predictor import Predictor

        return Predictor
    raise AttributeError(name)
