"""Predictor: one object that runs any edgeface artifact on whichever backend fits it.

    from edgeface import Predictor

    with Predictor("bundle/") as p:          # bundle dir, model.onnx, model.ncnn.param, model.engine, model.pt,
        r = p.predict(crops)                 # or None: the shipped default model
        r.blur, r.yaw, r.pitch, r.roll       # numpy float32 arrays, one value per crop
        r = p.predict_image(frame, boxes)    # boxes (N, 4) x, y, w, h in pixels; crop rule from the ModelSpec

Thread safety: one Predictor may be shared by several threads. Calls into the native engine, and the
reusable input buffer, are serialised by a lock (the engines already use every core through their own
thread pools, so running two batches at once would only make them compete); validation and result
assembly run outside it. For truly parallel inference create one Predictor per thread.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from .backends import REGISTRY, get_backend_class, is_installed
from .backends.base import FLOAT_NCHW, UINT8_NHWC
from .errors import EdgefaceError
from .preprocess import check_crops, check_image, crop_face, to_input
from .spec import ModelSpec

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_ONNX = WEIGHTS_DIR / "default.onnx"
DEFAULT_NCNN = WEIGHTS_DIR / "default.ncnn.param"
DEFAULT_PT = WEIGHTS_DIR / "default.pt"

# Which backends can run which artifact format (formats.FORMATS names); the first is the natural one.
RUNS_ON = {"onnx": ("onnxruntime", "tensorrt"), "ncnn": ("ncnn",), "tensorrt": ("tensorrt",), "torch": ("torch",)}
BUNDLE_CANDIDATES = ("model.engine", "model.onnx", "model.ncnn.param", "model.pt")


@dataclass
class Result:
    """Per-crop outputs; every array has one entry per crop (float32)."""

    blur: np.ndarray   # 0 (sharp) .. 1 (unusable)
    yaw: np.ndarray    # degrees, AFLW2000-3D Pose_Para convention
    pitch: np.ndarray
    roll: np.ndarray

    def __len__(self) -> int:
        return int(self.blur.shape[0])

    @property
    def pose(self) -> np.ndarray:
        """(N, 3) yaw, pitch, roll."""
        return np.stack([self.yaw, self.pitch, self.roll], axis=1)

    def as_dicts(self) -> list[dict[str, float]]:
        return [{"blur": float(b), "yaw": float(y), "pitch": float(p), "roll": float(r)}
                for b, y, p, r in zip(self.blur, self.yaw, self.pitch, self.roll)]

    @classmethod
    def empty(cls) -> "Result":
        z = np.zeros(0, dtype=np.float32)
        return cls(z, z.copy(), z.copy(), z.copy())


def detect_platform() -> str:
    """"jetson", "rpi", "arm64", "x86" (or the machine name): what backend="auto" decides by."""
    try:
        from .bundle import detect_device
    except ImportError:  # bundle support absent: a coarse guess from the machine name
        import platform

        m = platform.machine().lower()
        if Path("/etc/nv_tegra_release").exists():
            return "jetson"
        return "arm64" if m in ("aarch64", "arm64") else "x86" if m in ("x86_64", "amd64") else m
    return detect_device()


def _installed(name: str) -> bool:
    try:
        return is_installed(name)
    except (ImportError, ValueError):
        return False


def _format_name(path: Path) -> str:
    from .formats import format_of_artifact

    return format_of_artifact(path).name


def _read_spec(path: Path, fmt: str) -> ModelSpec:
    """The ModelSpec an artifact carries (inside it or beside it)."""
    if fmt == "onnx":
        from .export import read_onnx_spec

        return read_onnx_spec(path)
    if fmt == "ncnn":
        from .export import read_ncnn_spec

        return read_ncnn_spec(path)[0]
    if fmt == "torch":
        from .checkpoint import read_checkpoint

        return ModelSpec.from_dict(read_checkpoint(path)["spec"])
    # A TensorRT engine: its sidecar (written by tensorrt_build) or a spec file beside it.
    for cand in (path.with_name(path.name + ".json"), path.with_name("model.spec.json")):
        if cand.is_file():
            try:
                data = json.loads(cand.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                raise EdgefaceError(f"{cand} is not valid JSON; rebuild the engine") from None
            if isinstance(data, dict) and isinstance(data.get("spec"), dict):
                return ModelSpec.from_dict(data["spec"])
    raise EdgefaceError(f"no ModelSpec found for {path.name} (expected {path.name}.json beside it); "
                        f"rebuild it with `edgeface export --format tensorrt`")


class Predictor:
    """Run an edgeface artifact. See the module docstring; ``backend`` is "auto" or a registry name.

    ``precision`` and extra keyword ``options`` go to the backend (e.g. ncnn ``fp16=False``, ``vulkan=True``;
    onnxruntime ``providers=[...]``).
    """

    def __init__(self, artifact: str | Path | None = None, backend: str = "auto", threads: Optional[int] = None,
                 *, precision: Optional[str] = None, **options: Any):
        if backend != "auto" and backend not in REGISTRY:
            raise EdgefaceError(f"unknown backend {backend!r}; choose auto or one of {', '.join(REGISTRY)}")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise EdgefaceError(f"threads must be a positive integer, got {threads!r}")
        self._lock = threading.Lock()
        self._buffer: Optional[np.ndarray] = None
        self.bundle = None
        bundle_precision = None
        if artifact is None:
            path, fmt = self._default_artifact(backend)
        else:
            path = Path(artifact)
            if not path.exists():
                raise EdgefaceError(f"artifact {path} does not exist")
            if path.is_dir():
                path, fmt, bundle_precision, bundle_options = self._open_dir(path)
                for k, v in bundle_options.items():  # the target's tuned options; explicit arguments win
                    if k == "threads":
                        threads = threads or v
                    else:
                        options.setdefault(k, v)
            else:
                fmt = _format_name(path)
        self.artifact = path
        self.format = fmt
        name = self._choose_backend(fmt, backend, path)
        spec = self.bundle.spec if self.bundle is not None else _read_spec(path, fmt)
        self.spec: ModelSpec = spec
        cls = get_backend_class(name)
        self._backend = cls(path, spec, threads=threads, precision=precision or bundle_precision, **options)
        self._backend.load()
        self._backend._loaded = True
        self._closed = False

    # -- artifact resolution ----------------------------------------------------------------------
    @staticmethod
    def _default_artifact(backend: str) -> tuple[Path, str]:
        """The shipped default model in the form this platform runs best (torch-free where possible)."""
        plat = detect_platform()
        if backend == "auto":
            if plat == "jetson" and _installed("tensorrt"):
                order = ["tensorrt", "onnxruntime", "ncnn", "torch"]
            elif plat in ("rpi", "arm64") or plat.startswith("arm"):
                order = ["ncnn", "onnxruntime", "torch"]
            else:
                order = ["onnxruntime", "ncnn", "torch"]
            order = [b for b in order if _installed(b)]
        else:
            order = [backend]
        files = {"onnxruntime": (DEFAULT_ONNX, "onnx"), "tensorrt": (DEFAULT_ONNX, "onnx"),
                 "ncnn": (DEFAULT_NCNN, "ncnn"), "torch": (DEFAULT_PT, "torch")}
        for b in order:
            path, fmt = files[b]
            if path.is_file():
                return path, fmt
        shipped = [p.name for p in (DEFAULT_ONNX, DEFAULT_NCNN, DEFAULT_PT) if p.is_file()]
        if not shipped:
            raise EdgefaceError("no default model is shipped with this install; pass an artifact path "
                                "(or build them: python scripts/build_default_artifacts.py)")
        raise EdgefaceError(f"the default model ships as {', '.join(shipped)}, which backend {backend!r} cannot run "
                            f"here; install a fitting backend, e.g. pip install 'edgeface[ort]'")

    def _open_dir(self, path: Path):
        if (path / "manifest.json").is_file():
            try:
                from .bundle import open_bundle
            except ImportError:
                open_bundle = None
            if open_bundle is not None:
                info = open_bundle(path)
                self.bundle = info
                return Path(info.artifact), _format_name(Path(info.artifact)), info.precision, dict(info.options)
        for name in BUNDLE_CANDIDATES:
            cand = path / name
            if cand.is_file():
                return cand, _format_name(cand), None, {}
        raise EdgefaceError(f"{path} is a folder without an edgeface artifact (expected a manifest.json or one "
                            f"of {', '.join(BUNDLE_CANDIDATES)})")

    @staticmethod
    def _choose_backend(fmt: str, backend: str, path: Path) -> str:
        fits = RUNS_ON[fmt]
        if backend != "auto":
            if backend not in fits:
                hint = ("the torch backend runs .pt checkpoints" if backend == "torch" else
                        f"or make one for it with `edgeface export --format {_format_for_backend(backend)}`")
                raise EdgefaceError(f"{path.name} is an artifact of format {fmt!r}, which backend {backend!r} cannot run; "
                                    f"use backend={' or '.join(repr(b) for b in fits)} ({hint})")
            return backend
        if fmt == "onnx" and detect_platform() == "jetson" and _installed("tensorrt"):
            return "tensorrt"
        for b in fits:
            if _installed(b):
                return b
        row = REGISTRY[fits[0]]
        raise EdgefaceError(f"{path.name} needs the {fits[0]} backend: pip install 'edgeface[{row.extra}]'")

    # -- inference --------------------------------------------------------------------------------
    @property
    def backend(self) -> str:
        return self._backend.name

    @property
    def precision(self) -> str:
        return self._backend.precision

    @property
    def input_kind(self) -> str:
        return self._backend.input_kind

    @property
    def backend_session(self):
        """The loaded Backend object (its ``run`` is the raw engine call, without edgeface's preprocessing)."""
        return self._backend

    def info(self) -> dict:
        return {**self._backend.info(), "format": self.format,
                "bundle": str(self.bundle.root) if self.bundle is not None else None}

    def prepare(self, crops, rgb: bool = False) -> np.ndarray:
        """The exact array the backend is fed for these crops (a fresh copy; for benchmarking ``run_raw``)."""
        batch = check_crops(crops, self.spec, rgb=rgb)
        return batch.copy() if self.input_kind == UINT8_NHWC else to_input(batch, self.spec)

    def run_raw(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The backend's named outputs for an already prepared batch (see ``prepare``)."""
        self._check_open()
        with self._lock:
            return self._backend.run(x)

    def predict(self, crops, rgb: bool = False) -> Result:
        """One crop (H, W, 3), a list of crops, or an (N, H, W, 3) uint8 array; BGR unless ``rgb``.

        Crops of another size are resized to the spec's input size.
        """
        self._check_open()
        batch = check_crops(crops, self.spec, rgb=rgb)
        with self._lock:
            if self.input_kind == UINT8_NHWC:
                outs = self._backend.run(batch)
            else:
                outs = self._backend.run(to_input(batch, self.spec, out=self._input_buffer(batch.shape[0])))
        return self._result(outs)

    def predict_image(self, frame: np.ndarray, boxes, rgb: bool = False) -> Result:
        """Faces in a full image: ``boxes`` (N, 4) x, y, w, h in pixels; cropped with the spec's crop rule."""
        self._check_open()
        frame = check_image(frame)
        if rgb:
            frame = np.ascontiguousarray(frame[..., ::-1])
        b = np.asarray(boxes, dtype=np.float64)
        if b.size == 0:
            return Result.empty()  # no faces in this frame is a normal case, not an error
        if b.ndim == 1:
            b = b[None]
        if b.ndim != 2 or b.shape[1] != 4:
            raise EdgefaceError(f"boxes have shape {np.shape(boxes)}; expected (N, 4) x, y, w, h in pixels")
        crops = np.stack([crop_face(frame, box, self.spec) for box in b])
        return self.predict(crops)

    def _input_buffer(self, n: int) -> np.ndarray:
        # Reused between calls of the same batch size (under the lock): saves a 1.2 MB allocation per batch of
        # 32. Safe because every backend copies or consumes the input before run() returns.
        s = self.spec.input_size
        if self._buffer is None or self._buffer.shape[0] != n:
            self._buffer = np.empty((n, 3, s, s), dtype=np.float32)
        return self._buffer

    def _result(self, outs: dict[str, np.ndarray]) -> Result:
        names = self.spec.output_names
        blur = np.asarray(outs[names[0]], dtype=np.float32).reshape(-1)
        pose = np.asarray(outs[names[1]], dtype=np.float32).reshape(blur.shape[0], 3)
        return Result(blur, pose[:, 0].copy(), pose[:, 1].copy(), pose[:, 2].copy())

    # -- lifecycle --------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise EdgefaceError("this Predictor is closed; create a new one")

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._backend.close()
                self._closed = True

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Predictor({str(self.artifact)!r}, backend={self.backend!r}, precision={self.precision!r})"


def _format_for_backend(backend: str) -> str:
    return {"onnxruntime": "onnx", "ncnn": "ncnn", "tensorrt": "tensorrt"}.get(backend, "onnx")
