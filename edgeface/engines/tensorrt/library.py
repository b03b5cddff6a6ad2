"""TensorRT itself: importing it with a one-line hint when it is absent, and what its version allows.

Nothing here needs a GPU; ``import_tensorrt`` is the one place that imports the ``tensorrt`` module.
"""
from __future__ import annotations

import re

from ...core.errors import EdgefaceError, MissingBackendError

MIN_TRT = (8, 5)               # name-based tensors + execute_async_v3 exist from 8.5 (JetPack 5)
NO_TENSORRT = ("TensorRT is not installed here; run this on the Jetson: pip install 'edgeface[tensorrt]' "
               "/ JetPack's python3-libnvinfer")


def import_tensorrt():
    """The ``tensorrt`` module, or MissingBackendError with the one-line install hint."""
    try:
        import tensorrt as trt
    except ImportError:
        raise MissingBackendError(NO_TENSORRT) from None
    except OSError as e:  # the bindings wheel without libnvinfer raises OSError on some versions
        raise MissingBackendError(f"tensorrt is installed but its libraries fail to load ({e}); "
                                  f"{NO_TENSORRT}") from None
    if trt_version_tuple(trt.__version__) < MIN_TRT:
        raise EdgefaceError(f"TensorRT {trt.__version__} is too old; edgeface needs TensorRT >= 8.5 (JetPack 5)")
    return trt


def trt_version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for p in str(version).split(".")[:4]:
        m = re.match(r"\d+", p)
        if not m:
            break
        parts.append(int(m.group()))
    return tuple(parts) or (0,)


def is_version(text) -> bool:
    """Whether ``text`` is a dotted version like "8.5" or "10.3.0" (what a target YAML may give)."""
    return re.fullmatch(r"\d+(\.\d+){0,3}", str(text).strip()) is not None


def version_in_range(version: str, min_version: str, max_version: str) -> bool:
    """Whether a TensorRT version lies within [min_version, max_version], compared on the components each
    bound gives ("10.99" admits 10.3.0; "8.5" admits 8.5.2.2, not 8.4.3)."""
    v, lo, hi = (trt_version_tuple(x) for x in (version, min_version, max_version))
    return v[: len(lo)] >= lo and v[: len(hi)] <= hi


def require_version_in_range(version: str, min_version: str | None, max_version: str | None,
                             target: str = "the bundle's target") -> None:
    """EdgefaceError when this TensorRT lies outside the range a bundle's target was deployed for (the
    target YAML's ``tensorrt.min_version`` / ``max_version``, written into the manifest's options)."""
    if min_version is None and max_version is None:
        return
    lo, hi = str(min_version or "0"), str(max_version or "999")
    if not version_in_range(version, lo, hi):
        raise EdgefaceError(f"TensorRT {version} on this device is outside the range {target} supports "
                            f"({lo} to {hi}); install a TensorRT in that range, or deploy for a target whose "
                            f"tensorrt.min_version / max_version cover {version}")
