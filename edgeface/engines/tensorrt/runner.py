"""TensorRT (8.5 to 10.x) through the name-based tensor API: ``set_input_shape``, ``set_tensor_address`` and
``execute_async_v3`` on one CUDA stream, with pinned host buffers and device buffers sized for the engine's
largest profile batch (pycuda when importable, else cuda-python).

The artifact is a ``.engine`` (with its ``.engine.json`` record) or an ``.onnx``, which is built into the
engine cache on first use (``build.find_or_build_engine``). An engine whose record says it was built for
another TensorRT version or GPU is never loaded: it is rebuilt from its ONNX when that sits beside it,
else refused with the command that rebuilds it. A bundle's target may bound the TensorRT versions it was
deployed for (``tensorrt_min_version`` / ``tensorrt_max_version``); a TensorRT outside them is refused.

Not verified on hardware from this repository's CI (no TensorRT there): written against the documented
Python API and exercised on a Jetson/GPU only.
"""
from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import numpy as np

from ...core.artifact import read_engine_record
from ...core.errors import EdgefaceError
from ...core.spec import FLOAT_NCHW, UINT8_NHWC
from .cache import PRECISIONS
from ..base import Backend
from .library import import_tensorrt, require_version_in_range, trt_version_tuple


def _np_dtype(trt, dt) -> np.dtype:
    """numpy dtype of a TensorRT DataType (trt.nptype lacks UINT8 on some versions)."""
    by_name = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
               "BOOL": np.bool_, "UINT8": np.uint8}
    name = getattr(dt, "name", str(dt).split(".")[-1])
    if name in by_name:
        return np.dtype(by_name[name])
    raise EdgefaceError(f"engine tensor type {name} is not one edgeface feeds or reads; rebuild from the edgeface ONNX")


class TensorRTBackend(Backend):
    """Options: ``cache_dir`` (engine cache for .onnx artifacts), ``calib_cache`` (implicit INT8 from an
    FP32 ONNX), ``min_batch``/``opt_batch``/``max_batch`` (profile when building), ``workspace_mb``,
    ``cuda`` ("pycuda" | "cuda-python", default: pycuda if importable), ``log`` (where build messages go),
    ``tensorrt_min_version``/``tensorrt_max_version`` (the TensorRT range a bundle's target supports).
    ``fp16`` and ``int8`` are what jetson bundles deployed by earlier versions also wrote: the bundle's
    precision says the same, so they are accepted and not read."""

    name = "tensorrt"
    OPTIONS = frozenset({"cache_dir", "calib_cache", "min_batch", "opt_batch", "max_batch", "workspace_mb", "cuda",
                         "log", "tensorrt_min_version", "tensorrt_max_version", "fp16", "int8"})
    MANIFEST_OPTIONS = {"workspace_mb": (int, lambda v: 1 <= v <= 1 << 20),
                        **{k: (int, lambda v: 1 <= v <= 4096) for k in ("min_batch", "opt_batch", "max_batch")},
                        **{k: (str, lambda v: len(v) <= 20 and all(c.isdigit() or c == "." for c in v))
                           for k in ("tensorrt_min_version", "tensorrt_max_version")}}

    def __init__(self, artifact, spec, threads=None, precision=None, **options):
        super().__init__(artifact, spec, threads, precision, **options)
        self._lock = threading.Lock()   # one context + one stream: runs are serialised
        self._cuda = None
        self._engine = self._context = self._runtime = None
        self._host: dict[str, np.ndarray] = {}
        self._device: dict[str, int] = {}

    # -- load -----------------------------------------------------------------------------------------------
    def _engine_path(self, trt) -> Path:
        from .build import find_or_build_engine
        from .cache import DeviceFacts, normalize_cc
        from .cuda_memory import device_properties

        art = self.artifact
        if art.suffix == ".onnx":
            # From a verified bundle: the ONNX bytes its manifest vouched for, hashed and parsed from memory.
            onnx_bytes = self.read_file(art) if self.verified_files is not None else None
            if onnx_bytes is not None:
                self._check_graph(onnx_bytes)
            return find_or_build_engine(art, self.precision if self.precision in PRECISIONS else "fp16",
                                        self.options.get("cache_dir"), calib_cache=self.options.get("calib_cache"),
                                        min_batch=self.options.get("min_batch", 1),
                                        opt_batch=self.options.get("opt_batch", 8),
                                        max_batch=self.options.get("max_batch", 64),
                                        workspace_mb=self.options.get("workspace_mb", 1024),
                                        log=self.options.get("log", print), onnx_bytes=onnx_bytes)
        if art.suffix != ".engine":
            raise EdgefaceError(f"{art.name}: the tensorrt backend runs .engine files (or builds them from .onnx)")
        if not art.is_file():
            raise EdgefaceError(f"engine {art} does not exist")
        record = read_engine_record(art)
        name, cc = device_properties()
        here = DeviceFacts(str(trt.__version__), name, normalize_cc(cc))
        built = (record.get("trt_version"), record.get("gpu_name"), record.get("compute_capability"))
        if built != tuple(here):
            onnx = art.with_name(record.get("onnx_file") or "model.onnx")
            why = (f"{art.name} was built with TensorRT {built[0]} for {built[1]} (sm {built[2]}); this is TensorRT "
                   f"{here.trt_version} on {here.gpu_name} (sm {here.compute_capability})")
            if onnx.is_file():
                self.options.get("log", print)(f"{why}: building a fresh engine from {onnx.name}")
                return find_or_build_engine(onnx, record.get("precision", "fp16"), self.options.get("cache_dir"),
                                            facts=here, calib_cache=self.options.get("calib_cache"))
            raise EdgefaceError(f"{why}; engines do not move between devices — rebuild it here with "
                                f"`edgeface build` from the ONNX")
        return art

    def _load_impl(self) -> None:
        from .cuda_memory import open_cuda

        if self.requested_precision is not None and self.requested_precision not in PRECISIONS:
            raise EdgefaceError(f"TensorRT builds {', '.join(PRECISIONS)} engines, not {self.requested_precision}")
        trt = import_tensorrt()
        require_version_in_range(str(trt.__version__), self.options.get("tensorrt_min_version"),
                                 self.options.get("tensorrt_max_version"))
        if self.precision == "int8" and trt_version_tuple(trt.__version__)[0] >= 11 \
                and self.artifact.suffix == ".onnx" and self.options.get("calib_cache"):
            raise EdgefaceError(f"TensorRT {trt.__version__} has no implicit INT8 (removed in 11); run the INT8 Q/DQ "
                                f"ONNX (model.int8.qdq.onnx from `edgeface quantize --backend tensorrt`)")
        self._cuda = open_cuda(self.options.get("cuda"))
        self._cuda.activate()
        try:
            engine_path = self._engine_path(trt)
            self._record = read_engine_record(engine_path)
            self.precision = self._record.get("precision", self.precision)
            self._engine_file = engine_path
            logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(logger)
            # Read once, checked against the sha256 its record holds, and those bytes deserialised.
            blob = engine_path.read_bytes()
            if hashlib.sha256(blob).hexdigest() != self._record.get("engine_sha256"):
                raise EdgefaceError(f"{engine_path.name} does not match the sha256 recorded when it was built "
                                    f"(modified or truncated); rebuild it with `edgeface build`")
            self._engine = self._runtime.deserialize_cuda_engine(blob)
            if self._engine is None:
                raise EdgefaceError(f"TensorRT {trt.__version__} could not deserialise {engine_path.name} (built by "
                                    f"another TensorRT version or GPU, or corrupt); rebuild it with `edgeface build`")
            self._context = self._engine.create_execution_context()
            self._bind_io(trt)
        finally:
            self._cuda.deactivate()
        self._trt_version = str(trt.__version__)

    def _bind_io(self, trt) -> None:
        eng = self._engine
        names = [eng.get_tensor_name(i) for i in range(eng.num_io_tensors)]
        inputs = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if eng.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1:
            raise EdgefaceError(f"{self._engine_file.name} has inputs {inputs}; edgeface engines have one")
        self._input = inputs[0]
        in_dtype = _np_dtype(trt, eng.get_tensor_dtype(self._input))
        self.input_kind = UINT8_NHWC if in_dtype == np.uint8 else FLOAT_NCHW
        lo, _, hi = eng.get_tensor_profile_shape(self._input, 0)
        self._min_batch, self._max_batch = int(lo[0]), int(hi[0])
        sample = tuple(int(d) for d in eng.get_tensor_shape(self._input))[1:]
        self._out_map = self._map_outputs(outputs, eng)
        self._sample = sample
        # Buffers for the largest batch of the profile, allocated once; runs use a prefix of them.
        self._host[self._input] = self._cuda.pinned_empty((self._max_batch, *sample), in_dtype)
        self._device[self._input] = self._cuda.malloc(self._host[self._input].nbytes)
        self._out_shapes = {}
        for name in outputs:
            shape = tuple(int(d) for d in eng.get_tensor_shape(name))[1:]
            dtype = _np_dtype(trt, eng.get_tensor_dtype(name))
            self._out_shapes[name] = (shape, dtype)
            self._host[name] = self._cuda.pinned_empty((self._max_batch, *shape), dtype)
            self._device[name] = self._cuda.malloc(self._host[name].nbytes)
        for name, ptr in self._device.items():
            self._context.set_tensor_address(name, int(ptr))

    def _map_outputs(self, outputs: list[str], eng) -> dict[str, str]:
        """spec output name -> engine tensor name: by name, else by the trailing size (blur 1, pose 3)."""
        want = {o.name: len(o.fields) for o in self.spec.outputs}
        if set(want) <= set(outputs):
            return {n: n for n in want}
        by_size: dict[int, list[str]] = {}
        for n in outputs:
            by_size.setdefault(int(eng.get_tensor_shape(n)[-1]), []).append(n)
        mapping = {}
        for spec_name, size in want.items():
            cands = by_size.get(size, [])
            if len(cands) != 1:
                raise EdgefaceError(f"{self._engine_file.name} outputs {outputs} cannot be matched to the spec's "
                                    f"{list(want)}; rebuild the engine from the edgeface ONNX")
            mapping[spec_name] = cands[0]
        return mapping

    def _check_graph(self, onnx_bytes: bytes) -> None:
        """The foreign-model checks of ``core.graphcheck`` on the ONNX, where the onnx package is installed
        (it is optional on a Jetson; the engine's own tensors are checked in ``_bind_io`` either way)."""
        try:
            import onnx  # noqa: F401
        except ImportError:
            return
        from ...core.artifact import INPUT_KIND_KEY, onnx_metadata, parse_onnx
        from ...core.graphcheck import check_onnx

        proto = parse_onnx(onnx_bytes, self.artifact)
        kind = onnx_metadata(proto).get(INPUT_KIND_KEY, FLOAT_NCHW)
        check_onnx(proto, self.spec, kind, self.artifact.name, built_by_edgeface=self.signed)

    # -- run ------------------------------------------------------------------------------------------------
    def _run_impl(self, x: np.ndarray) -> dict[str, np.ndarray]:
        n = x.shape[0]
        if n < self._min_batch:
            raise EdgefaceError(f"batch {n} is below the engine's profile minimum {self._min_batch}")
        parts = [self._run_chunk(x[i:i + self._max_batch]) for i in range(0, n, self._max_batch)]
        if len(parts) == 1:
            return parts[0]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _run_chunk(self, x: np.ndarray) -> dict[str, np.ndarray]:
        n = x.shape[0]
        with self._lock:
            self._cuda.activate()
            try:
                host_in = self._host[self._input]
                np.copyto(host_in[:n], x)
                if not self._context.set_input_shape(self._input, (n, *self._sample)):
                    raise EdgefaceError(f"TensorRT rejected input shape {(n, *self._sample)} "
                                        f"(profile {self._min_batch}..{self._max_batch})")
                self._cuda.htod_async(self._device[self._input], host_in, n * host_in[0].nbytes)
                if not self._context.execute_async_v3(self._cuda.stream_handle):
                    raise EdgefaceError("TensorRT execute_async_v3 failed (see the TensorRT log above)")
                for spec_name, tname in self._out_map.items():
                    h = self._host[tname]
                    self._cuda.dtoh_async(h, self._device[tname], n * h[0].nbytes)
                self._cuda.synchronize()
                return {spec_name: self._host[tname][:n].astype(np.float32, copy=True)
                        for spec_name, tname in self._out_map.items()}
            finally:
                self._cuda.deactivate()

    # -- info / close -----------------------------------------------------------------------------------------
    def _check_precision(self) -> None:
        """The engine's record is its precision (a prebuilt .engine runs as it was built); a precision TensorRT
        does not build (bf16) was refused before the build (``_load_impl``)."""

    def _info_impl(self) -> dict:
        rec = getattr(self, "_record", {}) or {}
        return {"version": getattr(self, "_trt_version", None), "gpu": rec.get("gpu_name"),
                "compute_capability": rec.get("compute_capability"), "engine": str(getattr(self, "_engine_file", "")),
                "cuda_binding": getattr(self._cuda, "binding", None),
                "batch_profile": [getattr(self, "_min_batch", None), getattr(self, "_max_batch", None)],
                "quantization": (rec.get("build") or {}).get("quantization")}

    def _close_impl(self) -> None:
        if self._cuda is not None:
            try:
                self._cuda.activate()
                for ptr in self._device.values():
                    self._cuda.free(ptr)
                for arr in self._host.values():
                    self._cuda.free_pinned(arr)
                self._context = self._engine = self._runtime = None
            finally:
                self._cuda.deactivate()
                self._cuda.close()
        self._device, self._host, self._cuda = {}, {}, None
