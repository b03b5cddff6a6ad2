"""Predictor: one object that runs any edgeface artifact on whichever backend fits it.

    from edgeface import Predictor

    with Predictor("bundle/") as p:          # bundle dir, model.onnx, model.ncnn.param, model.engine, model.pt,
        r = p.predict(crops)                 # or None: the shipped default model
        r.blur, r.yaw, r.pitch, r.roll       # numpy float32 arrays, one value per crop
        r = p.predict_image(frame, boxes)    # boxes (N, 4) x, y, w, h in pixels; crop rule from the ModelSpec
        faces = p.predict_frame(frame)       # full frame: detect (shipped YuNet), crop, model; list of Face

Thread safety: one Predictor may be shared by several threads. Calls into the native engine, and the
reusable input buffer, are serialised by a lock (the engines already use every core through their own
thread pools, so running two batches at once would only make them compete); validation and result
assembly run outside it. For truly parallel inference create one Predictor per thread.
"""
from __future__ import annotations

import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..core.artifact import PRECISION_KEY, WEIGHTS_DIR, read_onnx_metadata, shipped_artifact
from ..core.device import detect_device
from ..core.errors import EdgefaceError
from ..core.limits import check_batch, check_threads, short
from ..core.preprocess import (check_boxes, check_crops, check_image, crop_face, mirror_mean, mirrored, to_input,
                               with_mirrors)
from ..core.spec import PRECISIONS, UINT8_NHWC, ModelSpec
from ..engines import registry
from ..engines.descriptor import Engine
from ..core.snapshot import FolderSnapshot
from .bundle import MANIFEST_NAME, is_bundle, open_bundle, read_manifest, verified_paths
from .signing import trust_configured


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


@dataclass
class Face:
    """One face found in a frame: the detection and the model's outputs for its crop."""

    box: tuple[float, float, float, float]       # detector box x, y, w, h (pixels)
    landmarks: list[tuple[float, float]]          # 5 points: right eye, left eye, nose, right/left mouth corner
    score: float                                  # detector score
    crop_box: tuple[float, float, float, float]   # the box in the training convention the crop was cut from
    blur: float
    yaw: float
    pitch: float
    roll: float

    def as_dict(self, digits: int = 3) -> dict:
        r = lambda v: round(float(v), digits)  # noqa: E731
        return {"box": [r(v) for v in self.box], "landmarks": [[r(x), r(y)] for x, y in self.landmarks],
                "score": r(self.score), "crop_box": [r(v) for v in self.crop_box], "blur": r(self.blur),
                "yaw": r(self.yaw), "pitch": r(self.pitch), "roll": r(self.roll)}


class Predictor:
    """Run an edgeface artifact. See the module docstring; ``backend`` is "auto" or a registry name.

    ``backend="auto"``: a bundle runs on the engine its manifest names (deploy chose it, on x86 by measuring
    onnxruntime against OpenVINO), when that engine is installed here. Any other artifact runs on the first
    installed engine that loads it, preferring this device kind's engines. On x86 that is onnxruntime, except
    OpenVINO from ``batch`` (the batch size you expect to run; default 1) 8 on for an INT8 ONNX, and for an
    FP32 one on a CPU with AVX-512 (docs/engines.md has the measurements behind the rule).

    ``mirror``: answer each face with the mean of its crop's and its mirror image's answers (two passes a face);
    None follows the model (its spec's ``mirror_average``; on for the shipped default since v5.1.0).

    ``precision`` and extra keyword ``options`` go to the backend (e.g. ncnn ``fp16=False``, ``vulkan=True``;
    onnxruntime ``providers=[...]``; openvino ``hint="throughput"``).
    """

    def __init__(self, artifact: str | Path | None = None, backend: str = "auto", threads: Optional[int] = None,
                 *, precision: Optional[str] = None, batch: int = 1, trusted_keys=None,
                 mirror: Optional[bool] = None, **options: Any):
        if backend != "auto" and backend not in registry.REGISTRY:
            raise EdgefaceError(f"unknown backend {backend!r}; choose auto or one of {', '.join(registry.REGISTRY)}")
        check_threads(threads, "threads")
        self._lock = threading.Lock()
        self._buffer: Optional[np.ndarray] = None
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise EdgefaceError(f"batch must be a positive integer, got {short(batch)}")
        if artifact is not None and not isinstance(artifact, (str, os.PathLike)):
            raise EdgefaceError(f"artifact must be a path (str or Path) or None for the shipped model, got a "
                                f"{type(artifact).__name__}")
        if mirror is not None and not isinstance(mirror, bool):
            raise EdgefaceError(f"mirror must be True, False or None (the model's own setting), got {short(mirror)}")
        if precision is not None and precision not in PRECISIONS:
            raise EdgefaceError(f"precision must be one of {', '.join(PRECISIONS)} (or None: the artifact's), "
                                f"got {short(precision)}")
        self._detector = None
        self._closed = True
        self.bundle = None
        bundle_precision = None
        bundle_options: dict = {}
        # Fail closed: None when no trust is configured; otherwise the trusted keys, never an empty list
        # (trusted_keys=[] or an $EDGEFACE_TRUSTED_KEYS naming no key is an error, not "no checks").
        self._keys = trust_configured(trusted_keys)
        verified, signed = None, False
        if artifact is None:
            if self._keys:
                raise _unsigned_refusal("the default model")
            path, kind = _shipped_default(backend, batch)
        else:
            path = Path(artifact)
            try:
                is_dir = stat.S_ISDIR(os.stat(path).st_mode)
            except FileNotFoundError:
                raise EdgefaceError(f"artifact {path} does not exist") from None
            except OSError as e:
                raise EdgefaceError(f"artifact {path} cannot be read ({e.strerror})") from None
            if is_dir:
                # One snapshot decides bundle or plain folder, and the bundle is read from that snapshot: a
                # manifest that flickers away mid-load is an error, never a plain folder.
                with FolderSnapshot(path) as snap:
                    if MANIFEST_NAME in snap.names:
                        info = open_bundle(path, trusted_keys=self._keys, snapshot=snap)
                        self.bundle = info
                        path, kind = Path(info.artifact), registry.engine_of_artifact(info.artifact)
                        bundle_precision, bundle_options = info.precision, dict(info.options)
                        verified, signed = verified_paths(info), info.signed
                    elif self._keys:
                        raise _unsigned_refusal(path)
                    else:
                        path, kind = self._plain_folder(path, snap.names, batch)
            elif self._keys:
                raise _unsigned_refusal(path)
            else:
                kind = registry.engine_of_artifact(path)
        self.artifact = path
        self.format = kind.format
        if backend == "auto" and self.bundle is not None and _installed(registry.get(self.bundle.backend)) \
                and self.bundle.backend in [e.name for e in registry.engines_running(kind.format)]:
            backend = self.bundle.backend  # the engine deploy chose for this bundle
        name = _choose_engine(kind, backend, path, batch, precision)
        for k, v in bundle_options.items():  # the target's tuned options; explicit arguments win
            if k == "threads":
                threads = threads or check_threads(v, f"{path} manifest options.threads")
            elif self.bundle is None or name == self.bundle.backend:  # another engine's options do not apply
                options.setdefault(k, v)
        self.spec: ModelSpec = self.bundle.spec if self.bundle is not None else kind.spec_of(path)
        cls = registry.get_backend_class(name)
        if verified is not None:  # the bytes the bundle's check hashed are the bytes the engine loads
            options.update(verified_files=verified, signed=signed)
        self._backend = cls(path, self.spec, threads=threads, precision=precision or bundle_precision, **options)
        self._backend.load()
        # Each face's answer is the mean of its crop's and its mirror image's: the model's own setting unless
        # the caller chose (mirror=False halves the work at some accuracy; docs/model-card.md has both)
        self.mirror: bool = self.spec.mirror_average if mirror is None else mirror
        self._closed = False

    @staticmethod
    def _plain_folder(path: Path, names, batch: int = 1) -> tuple[Path, Engine]:
        """A folder holding one artifact of a known name (no manifest: nothing is verified)."""
        found = [e for e in registry.auto_order(registry.ENGINES, detect_device(), batch) if e.artifact in names]
        if not found:
            names = ", ".join(e.artifact for e in registry.ENGINES)
            raise EdgefaceError(f"{path} is a folder without an edgeface artifact (expected a manifest.json or one "
                                f"of {names})")
        # The first whose engine (or one that also runs its format) is installed here.
        runnable = [e for e in found if any(_installed(r) for r in registry.engines_running(e.format))]
        kind = (runnable or found)[0]
        return path / kind.artifact, kind

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
        return {**self._backend.info(), "format": self.format, "mirror_average": self.mirror,
                "bundle": str(self.bundle.root) if self.bundle is not None else None}

    def prepare(self, crops, rgb: bool = False) -> np.ndarray:
        """The exact array the backend is fed for these crops (a fresh copy; for benchmarking ``run_raw``)."""
        batch = check_crops(crops, self.spec, rgb=rgb)
        return batch.copy() if self.input_kind == UINT8_NHWC else to_input(batch, self.spec)

    def run_raw(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The backend's named outputs for an already prepared batch (see ``prepare``): one engine call, so the
        network's answers for these crops alone, without the mirror average ``predict`` adds when ``mirror``."""
        self._check_open()
        with self._lock:
            self._check_open()  # again under the lock: a close() in between must not let the backend reload
            return self._backend.run(x)

    def predict(self, crops, rgb: bool = False) -> Result:
        """One crop (H, W, 3), a list of crops, or an (N, H, W, 3) uint8 array; BGR unless ``rgb``.

        Crops of another size are resized to the spec's input size. With ``mirror`` on (the spec's
        ``mirror_average``), each answer is the mean of the crop's and its mirror image's (two passes a face).
        """
        self._check_open()
        batch = check_crops(crops, self.spec, rgb=rgb)
        if not self.mirror:
            return self._result(self._run_crops(batch))
        if self._backend.fixed_batch is None:
            outs = self._run_crops(with_mirrors(batch))
        else:  # a graph that fixes its batch takes the crops and their mirror images as two batches
            halves = [self._run_crops(batch), self._run_crops(mirrored(batch))]
            outs = {k: np.concatenate([h[k] for h in halves]) for k in halves[0]}
        # checked before the mean: a broken graph's yaw of 1012 on both views would average to 0
        return self._answer(*mirror_mean(*self._outputs(outs)))

    def _run_crops(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with self._lock:
            self._check_open()  # again under the lock: a close() in between must not let the backend reload
            if self.input_kind == UINT8_NHWC:
                return self._backend.run(batch)
            return self._backend.run(to_input(batch, self.spec, out=self._input_buffer(batch.shape[0])))

    def blur_and_pose(self, crops, rgb: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """(blur (N,), pose (N, 3)) for crops: the "runner" form evaluation, deploy's verification, bench
        and quantize's accuracy guard measure any model through (``edgeface.faces.evaluate.Runner``)."""
        r = self.predict(crops, rgb=rgb)
        return r.blur, r.pose

    def predict_image(self, frame: np.ndarray, boxes, rgb: bool = False) -> Result:
        """Faces in a full image: ``boxes`` (N, 4) x, y, w, h in pixels; cropped with the spec's crop rule."""
        self._check_open()
        frame = check_image(frame)
        if rgb:
            frame = np.ascontiguousarray(frame[..., ::-1])
        b = check_boxes(boxes)
        if b.shape[0] == 0:
            return Result.empty()  # no faces in this frame is a normal case, not an error
        check_batch(b.shape[0], self.spec.input_size, "number of boxes")  # before cropping them all
        crops = np.stack([crop_face(frame, box, self.spec) for box in b])
        return self.predict(crops)

    @property
    def detector(self):
        """The face detector ``predict_frame`` uses (the shipped YuNet with default options until set)."""
        if self._detector is None:
            from .detector import FaceDetector

            self._detector = FaceDetector()
        return self._detector

    @detector.setter
    def detector(self, det) -> None:
        self._detector = det

    def predict_frame(self, frame: np.ndarray, rgb: bool = False, detector=None, **detector_options) -> list[Face]:
        """Every face in a full frame: detect, crop with the training box convention, run the model.

        ``detector``: a ``FaceDetector`` (default: this Predictor's, the shipped YuNet); or options for a new
        one, e.g. ``score_threshold=0.7, largest_only=True, min_size=40`` (kept for later calls). A frame
        without a face gives an empty list.
        """
        self._check_open()
        frame = check_image(frame)
        if frame.shape[0] < 2 or frame.shape[1] < 2:
            raise EdgefaceError(f"frame of shape {frame.shape} is empty")
        if rgb:
            frame = np.ascontiguousarray(frame[..., ::-1])
        from .detector import FaceDetector

        if detector_options:
            try:
                self._detector = FaceDetector(**detector_options)
            except TypeError as e:  # an option FaceDetector does not take
                raise EdgefaceError(f"predict_frame: {e}; see help(FaceDetector) for its options") from None
        det = detector or self.detector
        if not all(callable(getattr(det, m, None)) for m in ("detect", "model_boxes")):
            raise EdgefaceError(f"detector must be a FaceDetector (or have its detect and model_boxes), got a "
                                f"{type(det).__name__}")
        if callable(getattr(det, "crop_faces", None)):
            found, crop_boxes, crops = det.crop_faces(frame, self.spec)
        else:  # a duck-typed detector with only detect and model_boxes
            found = det.detect(frame)
            crop_boxes = det.model_boxes(found) if len(found) else None
            crops = np.stack([crop_face(frame, b, self.spec) for b in crop_boxes]) if len(found) else None
        if not len(found):
            return []
        res = self.predict(crops)
        return [Face(tuple(float(v) for v in found.boxes[i]), [tuple(float(v) for v in p) for p in found.landmarks[i]],
                     float(found.scores[i]), tuple(float(v) for v in crop_boxes[i]), float(res.blur[i]),
                     float(res.yaw[i]), float(res.pitch[i]), float(res.roll[i])) for i in range(len(found))]

    def _input_buffer(self, n: int) -> np.ndarray:
        # Reused between calls of the same batch size (under the lock): saves a 1.2 MB allocation per batch of
        # 32. Safe because every backend copies or consumes the input before run() returns.
        s = self.spec.input_size
        if self._buffer is None or self._buffer.shape[0] != n:
            self._buffer = np.empty((n, 3, s, s), dtype=np.float32)
        return self._buffer

    def _outputs(self, outs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(blur (N,), pose (N, 3)) of an engine call, checked in range (``check_outputs``)."""
        names = self.spec.output_names
        blur = np.asarray(outs[names[0]], dtype=np.float32).reshape(-1)
        pose = np.asarray(outs[names[1]], dtype=np.float32).reshape(blur.shape[0], 3)
        check_outputs(blur, pose, self.artifact)
        return blur, pose

    @staticmethod
    def _answer(blur: np.ndarray, pose: np.ndarray) -> Result:
        return Result(blur, pose[:, 0].copy(), pose[:, 1].copy(), pose[:, 2].copy())

    def _result(self, outs: dict[str, np.ndarray]) -> Result:
        return self._answer(*self._outputs(outs))

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


# -- outputs in range ---------------------------------------------------------------------------------------
BLUR_SLACK = 1e-3   # a sigmoid's output, give or take INT8 / FP16 rounding
MAX_ANGLE = 180.0


def check_outputs(blur: np.ndarray, pose: np.ndarray, artifact, fix: str = "re-export or re-deploy it") -> None:
    """A model's answers are finite, blur in [0, 1] and angles within +-180 deg: anything else is a broken or
    foreign model, and an error naming it (and ``fix``), never a JSON NaN or a yaw of 1012 deg."""
    if not (np.isfinite(blur).all() and np.isfinite(pose).all()):
        raise EdgefaceError(f"{artifact} answered non-finite values (NaN or inf): the model is broken or not an "
                            f"edgeface model; {fix}")
    if blur.size and (blur.min() < -BLUR_SLACK or blur.max() > 1 + BLUR_SLACK):
        raise EdgefaceError(f"{artifact} answered a blur score of "
                            f"{float(blur.min() if blur.min() < 0 else blur.max()):.4g}"
                            f", outside 0..1: it is not an edgeface model (or a broken one); {fix}")
    if pose.size and np.abs(pose).max() > MAX_ANGLE:
        raise EdgefaceError(f"{artifact} answered an angle of {float(np.abs(pose).max()):.4g} deg, beyond "
                            f"+-{MAX_ANGLE:g}: it is not an edgeface model (or a broken one); {fix}")


def _unsigned_refusal(what) -> EdgefaceError:
    return EdgefaceError(f"{what} is not a bundle, and this device trusts only bundles signed by its trusted keys; "
                         f"deploy it with `edgeface deploy --sign KEY`")


# -- which artifact, which engine ------------------------------------------------------------------------
def _installed(engine: Engine) -> bool:
    return registry.is_installed(engine.name)


def _shipped_default(backend: str, batch: int = 1) -> tuple[Path, Engine]:
    """The shipped default model in the form this machine runs best (torch-free where possible)."""
    if backend == "auto":
        order = [e for e in registry.auto_order(registry.ENGINES, detect_device(), batch) if _installed(e)]
    else:
        order = [registry.get(backend)]
    for engine in order:
        # Its own artifact, else one it also runs (TensorRT builds its engine from the shipped ONNX).
        for kind in [engine] + [registry.by_format(f) for f in engine.also_runs]:
            path = shipped_artifact(kind.suffix, WEIGHTS_DIR)
            if path.is_file():
                return path, kind
    shipped = [p.name for e in registry.ENGINES if (p := shipped_artifact(e.suffix, WEIGHTS_DIR)).is_file()]
    if not shipped:
        raise EdgefaceError("no default model is shipped with this install; pass an artifact path "
                            "(or build them: python scripts/build_default_artifacts.py)")
    raise EdgefaceError(f"the default model ships as {', '.join(shipped)}, which backend {backend!r} cannot run "
                        f"here; install a fitting backend, e.g. pip install 'edgeface[ort]'")


def _choose_engine(kind: Engine, backend: str, path: Path, batch: int = 1, precision: Optional[str] = None) -> str:
    """The engine that runs an artifact of ``kind``: ``backend`` when it can, else (auto) the first installed
    of those that can, preferring the engines of this device kind (and batch size: ``registry.auto_order``);
    with a ``precision`` asked for, only engines that run it (bf16: OpenVINO, on a CPU that computes it)."""
    fits = registry.engines_running(kind.format)
    if backend == "auto" and precision is not None:
        stored = _artifact_precision(path, kind) or "fp32"
        running = [e for e in fits if registry.precision_problem(e.name, precision, stored) is None]
        if not running:
            why = "; ".join(f"{e.name}: {registry.precision_problem(e.name, precision, stored)}" for e in fits)
            raise EdgefaceError(f"no engine runs {path.name} at {precision} here ({why})")
        fits = running
    if backend != "auto":
        if backend not in [e.name for e in fits]:
            hint = ("the torch backend runs .pt checkpoints" if backend == "torch" else
                    f"or make one for it with `edgeface export --format {registry.get(backend).format}`")
            raise EdgefaceError(f"{path.name} is an artifact of format {kind.format!r}, which backend {backend!r} "
                                f"cannot run; use backend={' or '.join(repr(e.name) for e in fits)} ({hint})")
        return backend
    for engine in registry.auto_order(fits, detect_device(), batch, _artifact_precision(path, kind)):
        if _installed(engine):
            return engine.name
    raise EdgefaceError(f"{path.name} needs the {fits[0].name} backend: pip install 'edgeface[{fits[0].extra}]'")


def _artifact_precision(path: Path, kind: Engine) -> str | None:
    """What an ONNX says it holds ("fp32", "int8": its metadata), which decides whether OpenVINO is preferred
    at large batches (``registry.auto_order``); None for other formats. An unreadable file is the engine's to
    report when it loads."""
    if kind.format != "onnx":
        return None
    try:
        return read_onnx_metadata(path).get(PRECISION_KEY, "fp32")
    except (EdgefaceError, ImportError):
        return None


def artifact_engine(path: str | Path) -> Engine:
    """The engine an artifact, a bundle or a folder holding an artifact is made for (its native engine; the
    Predictor may run it on another one that also loads its format). EdgefaceError when there is none."""
    p = Path(path)
    if not p.is_dir():
        return registry.engine_of_artifact(p)
    if is_bundle(p):
        return registry.get(read_manifest(p)["backend"])
    for engine in registry.ENGINES:
        if (p / engine.artifact).is_file():
            return engine
    raise EdgefaceError(f"{p} is a folder without an edgeface artifact")


def open_model(model: str | Path | None = None, backend: str = "auto") -> tuple[Predictor, str]:
    """(Predictor, label) for a MODEL argument as the CLI verbs take it: nothing (the shipped weights) or a
    checkpoint runs in torch, the FP32 reference; any other artifact or bundle on ``backend``."""
    if model is None or str(model).endswith(registry.get("torch").suffix):
        path = Path(model) if model is not None else shipped_artifact(registry.get("torch").suffix, WEIGHTS_DIR)
        if model is not None and not path.is_file():
            raise EdgefaceError(f"checkpoint {path} does not exist")
        return Predictor(path, backend="torch"), str(model or "default model (torch)")
    if not Path(model).exists():
        raise EdgefaceError(f"model {model} does not exist")
    pred = Predictor(model, backend=backend)
    return pred, f"{model} ({pred.backend} {pred.precision})"
