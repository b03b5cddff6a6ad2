"""The engine cache: an engine is tied to the TensorRT version, the GPU and the precision it was built for.

It is built on the device that runs it and cached under a key of all of them plus the ONNX's sha256:

    <cache_dir>/<onnx-sha256[:12]>/<trt-version>_<gpu-slug>_sm<cc>_<precision>[_x<extra8>].engine
    <same stem>.engine.json     the engine record: every key component in full, the engine's own sha256,
                                the build options and the ModelSpec (read by ``core.artifact``)

``build.find_or_build_engine`` reuses a cached engine only when its record matches every component and the
engine file's sha256, and the engine deserialises; anything else (stale, foreign, truncated) is rebuilt
with a message saying why, never loaded. Everything here is plain Python, tested without a GPU.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Callable, NamedTuple, Optional

from ...core.artifact import ENGINE_RECORD_FORMAT, engine_record_path, read_engine_record
from ...core.errors import EdgefaceError
from ...core.io import atomic_write_bytes
from .library import import_tensorrt

RECORD_VERSION = 1

# What TensorRT builds an engine for (bf16, an x86 CPU precision of OpenVINO's, is not one of them).
PRECISIONS = ("fp32", "fp16", "int8")


class DeviceFacts(NamedTuple):
    """What an engine is tied to besides its ONNX and precision."""
    trt_version: str
    gpu_name: str
    compute_capability: str   # "8.7"


def normalize_cc(cc) -> str:
    """(8, 7), "8.7", "87", 8.7 -> "8.7"."""
    if isinstance(cc, (tuple, list)) and len(cc) == 2:
        return f"{int(cc[0])}.{int(cc[1])}"
    s = str(cc).strip().lower().removeprefix("sm").removeprefix("_")
    if re.fullmatch(r"\d+\.\d+", s):
        major, minor = s.split(".")
        return f"{int(major)}.{int(minor)}"
    if re.fullmatch(r"\d{2,3}", s):   # "87" / "120": the last digit is the minor version
        return f"{int(s[:-1])}.{int(s[-1])}"
    raise EdgefaceError(f"compute capability {cc!r} is not of the form 8.7")


def current_device_facts() -> DeviceFacts:
    """The live device's facts: this TensorRT and GPU 0 (needs TensorRT and a CUDA binding)."""
    from .cuda_memory import device_properties

    trt = import_tensorrt()
    name, cc = device_properties()
    return DeviceFacts(str(trt.__version__), name, normalize_cc(cc))


# -- the cache key ---------------------------------------------------------------------------------------------
def _slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")
    return s or "unknown"


def _extra_digest(extra: Optional[dict]) -> str:
    if not extra:
        return ""
    blob = json.dumps(extra, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def engine_cache_key(onnx_sha256: str, precision: str, trt_version: str, gpu_name: str, compute_capability,
                     extra: Optional[dict] = None) -> str:
    """The engine's path relative to the cache folder, without suffix; changes with every component.

    ``extra`` holds anything else the engine depends on (batch profile, calibration cache sha256, ...);
    it enters the key as a short digest and is recorded in full in the record.
    """
    if not re.fullmatch(r"[0-9a-f]{64}", str(onnx_sha256)):
        raise EdgefaceError(f"onnx_sha256 must be 64 hex digits, got {onnx_sha256!r}")
    if precision not in PRECISIONS:
        raise EdgefaceError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    cc = normalize_cc(compute_capability).replace(".", "")
    stem = f"{_slug(trt_version)}_{_slug(gpu_name)}_sm{cc}_{precision}"
    digest = _extra_digest(extra)
    if digest:
        stem += f"_x{digest}"
    return f"{onnx_sha256[:12]}/{stem}"


def engine_paths(cache_dir: str | Path, key: str) -> tuple[Path, Path]:
    """(engine, record) paths of a key inside the cache folder."""
    engine = Path(cache_dir) / f"{key}.engine"
    return engine, engine.with_name(engine.name + ".json")


def expected_record(onnx_sha256: str, precision: str, facts: DeviceFacts, extra: Optional[dict] = None) -> dict:
    """The record fields a cached engine must match exactly."""
    return {"format": ENGINE_RECORD_FORMAT, "sidecar_version": RECORD_VERSION, "onnx_sha256": onnx_sha256,
            "precision": precision, "trt_version": str(facts.trt_version), "gpu_name": str(facts.gpu_name),
            "compute_capability": normalize_cc(facts.compute_capability), "extra": extra or {}}


def stale_reason(engine_path: str | Path, want: dict,
                 validate: Optional[Callable[[bytes], bool]] = None) -> Optional[str]:
    """Why the engine at ``engine_path`` must not be used for ``want`` (None = it is good).

    Checks, in order: engine and its record exist and parse, every key field matches, the engine file's sha256
    matches the one recorded at build time (truncated/tampered), and ``validate(engine_bytes)`` (TensorRT's
    deserialiser on a device) accepts it.
    """
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        return "no cached engine"
    try:
        record = read_engine_record(engine_path)
    except EdgefaceError as e:
        return str(e).split(";")[0]
    for k, v in want.items():
        if record.get(k) != v:
            return f"its {k} is {record.get(k)!r}, this needs {v!r}"
    blob = engine_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != record.get("engine_sha256"):
        return "the engine file does not match the sha256 recorded when it was built (truncated or modified)"
    if validate is not None:
        try:
            ok = validate(blob)
        except Exception as e:  # noqa: BLE001 - TensorRT raises various types for foreign engines
            return f"TensorRT could not deserialise it ({type(e).__name__}: {str(e)[:120]})"
        if not ok:
            return "TensorRT could not deserialise it (built by another TensorRT version or GPU?)"
    return None


def write_engine(engine_path: str | Path, engine_bytes: bytes, record: dict) -> Path:
    """Write the engine then its record, each atomically; the record carries the engine's sha256."""
    engine_path = Path(engine_path)
    record = dict(record)
    record["engine_sha256"] = hashlib.sha256(engine_bytes).hexdigest()
    record["engine_bytes"] = len(engine_bytes)
    record.setdefault("built_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    atomic_write_bytes(engine_path, bytes(engine_bytes))
    atomic_write_bytes(engine_record_path(engine_path),
                       (json.dumps(record, indent=2, sort_keys=True, default=str) + "\n").encode())
    return engine_path


def default_cache_dir() -> Path:
    """$EDGEFACE_ENGINE_CACHE, else ~/.cache/edgeface/engines."""
    env = os.environ.get("EDGEFACE_ENGINE_CACHE")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "edgeface" / "engines"


def timing_cache_path(cache_dir: str | Path, facts: DeviceFacts) -> Path:
    """TensorRT's timing cache for this TensorRT and GPU: shared by every engine built here (faster rebuilds)."""
    cc = normalize_cc(facts.compute_capability).replace(".", "")
    return Path(cache_dir) / f"timing_{_slug(facts.trt_version)}_{_slug(facts.gpu_name)}_sm{cc}.cache"
