"""Backend registry: one row per backend, imported lazily so a missing package never breaks the CLI.

Adding a backend = one module in this folder + one row here.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from ..errors import MissingBackendError


@dataclass(frozen=True)
class BackendRow:
    name: str
    module: str        # module under edgeface.backends
    cls: str           # class name in that module
    package: str       # the Python package it needs (import name)
    extra: str         # pip extra that installs it: pip install 'edgeface[extra]'
    suffixes: tuple    # artifact suffixes it runs


REGISTRY: dict[str, BackendRow] = {
    r.name: r for r in (
        BackendRow("torch", "torch_backend", "TorchBackend", "torch", "train", (".pt",)),
        BackendRow("onnxruntime", "onnxruntime_backend", "OnnxRuntimeBackend", "onnxruntime", "ort", (".onnx",)),
        BackendRow("ncnn", "ncnn_backend", "NcnnBackend", "ncnn", "ncnn", (".param", ".bin")),
        BackendRow("tensorrt", "tensorrt_backend", "TensorRTBackend", "tensorrt", "tensorrt", (".engine", ".onnx")),
    )
}


def is_installed(name: str) -> bool:
    return importlib.util.find_spec(REGISTRY[name].package) is not None


def get_backend_class(name: str):
    """The backend class; MissingBackendError naming the extra when its package is absent."""
    if name not in REGISTRY:
        raise MissingBackendError(f"unknown backend {name!r}; choose one of {', '.join(REGISTRY)}")
    row = REGISTRY[name]
    if not is_installed(name):
        raise MissingBackendError(f"backend {name!r} needs the {row.package!r} package: "
                                  f"pip install 'edgeface[{row.extra}]'")
    try:
        mod = importlib.import_module(f"{__name__}.{row.module}")
    except ImportError as e:  # the package is there but broken (e.g. tensorrt without libnvinfer)
        raise MissingBackendError(f"backend {name!r} failed to import ({e}); reinstall with "
                                  f"pip install 'edgeface[{row.extra}]'") from None
    return getattr(mod, row.cls)


def available_backends() -> dict[str, str]:
    """name -> package version, or how to install it. Never raises."""
    out = {}
    for name, row in REGISTRY.items():
        if not is_installed(name):
            out[name] = f"missing (pip install 'edgeface[{row.extra}]')"
            continue
        try:
            mod = importlib.import_module(row.package)
            out[name] = getattr(mod, "__version__", "installed")
        except Exception as e:  # noqa: BLE001 - a broken install must not break `edgeface info`
            out[name] = f"broken ({type(e).__name__}: {str(e)[:60]})"
    return out
