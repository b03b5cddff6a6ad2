"""TensorRT engines: preflight checks on the ONNX, build options, the engine build and the engine cache.

An engine is specific to the TensorRT version, the GPU (compute capability) and the precision it was
built for, so it is built on the device that runs it and cached under a key of all of them plus the
ONNX's sha256:

    <cache_dir>/<onnx-sha256[:12]>/<trt-version>_<gpu-slug>_sm<cc>_<precision>[_x<extra8>].engine
    <same stem>.engine.json     sidecar: every key component in full, the engine's own sha256,
                                the build options and the ModelSpec

``find_or_build_engine`` reuses a cached engine only when its sidecar matches every component and the
engine file's sha256, and the engine deserialises; anything else (stale, foreign, truncated) is rebuilt
with a message saying why, never loaded.

Everything here except ``build_engine`` runs without TensorRT: the key logic, ``plan_build`` (what flags,
profile shapes and pool limits the build will pass) and ``check_onnx_for_tensorrt`` are plain Python and
are tested on machines without a GPU. TensorRT API used (8.5 to 10.x, the name-based API): Builder,
create_network, OnnxParser.parse_from_file, IBuilderConfig.set_memory_pool_limit(MemoryPoolType.WORKSPACE),
set_flag(BuilderFlag.FP16/INT8), create_timing_cache/set_timing_cache, add_optimization_profile,
build_serialized_network, Runtime.deserialize_cuda_engine.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, Sequence

from .errors import EdgefaceError, MissingBackendError
from .fileio import atomic_write_bytes

PRECISIONS = ("fp32", "fp16", "int8")
MIN_TRT = (8, 5)               # name-based tensors + execute_async_v3 exist from 8.5 (JetPack 5)
SIDECAR_FORMAT = "edgeface.tensorrt-engine"
SIDECAR_VERSION = 1
NO_TENSORRT = ("TensorRT is not installed here; run this on the Jetson: pip install 'edgeface[tensorrt]' "
               "/ JetPack's python3-libnvinfer")


# -- TensorRT / CUDA imports and device facts ------------------------------------------------------------------
def import_tensorrt():
    """The ``tensorrt`` module, or MissingBackendError with the one-line install hint."""
    try:
        import tensorrt as trt
    except ImportError:
        raise MissingBackendError(NO_TENSORRT) from None
    except OSError as e:  # the bindings wheel without libnvinfer raises OSError on some versions
        raise MissingBackendError(f"tensorrt is installed but its libraries fail to load ({e}); {NO_TENSORRT}") from None
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


def gpu_properties() -> tuple[str, str]:
    """(GPU name, compute capability) of device 0 via cuda-python, else pycuda."""
    from .backends.cuda_memory import device_properties

    return device_properties()


def current_device_facts() -> DeviceFacts:
    trt = import_tensorrt()
    name, cc = gpu_properties()
    return DeviceFacts(str(trt.__version__), name, normalize_cc(cc))


# -- the cache key ---------------------------------------------------------------------------------------------
def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


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
    it enters the key as a short digest and is recorded in full in the sidecar.
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
    """(engine, sidecar) paths of a key inside the cache folder."""
    engine = Path(cache_dir) / f"{key}.engine"
    return engine, engine.with_name(engine.name + ".json")


def sidecar_path(engine_path: str | Path) -> Path:
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def expected_record(onnx_sha256: str, precision: str, facts: DeviceFacts, extra: Optional[dict] = None) -> dict:
    """The sidecar fields a cached engine must match exactly."""
    return {"format": SIDECAR_FORMAT, "sidecar_version": SIDECAR_VERSION, "onnx_sha256": onnx_sha256,
            "precision": precision, "trt_version": str(facts.trt_version), "gpu_name": str(facts.gpu_name),
            "compute_capability": normalize_cc(facts.compute_capability), "extra": extra or {}}


def read_sidecar(engine_path: str | Path) -> dict:
    """The sidecar beside an engine; EdgefaceError when missing or unreadable."""
    side = sidecar_path(engine_path)
    if not side.is_file():
        raise EdgefaceError(f"{side.name} (the engine's record: TensorRT version, GPU, precision, ModelSpec) is "
                            f"missing beside {Path(engine_path).name}; rebuild it with `edgeface build`")
    try:
        data = json.loads(side.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise EdgefaceError(f"{side} is not valid JSON; rebuild the engine with `edgeface build`") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise EdgefaceError(f"{side} is not an edgeface engine record; rebuild the engine with `edgeface build`")
    return data


def stale_reason(engine_path: str | Path, want: dict,
                 validate: Optional[Callable[[bytes], bool]] = None) -> Optional[str]:
    """Why the engine at ``engine_path`` must not be used for ``want`` (None = it is good).

    Checks, in order: engine and sidecar exist and parse, every key field matches, the engine file's sha256
    matches the one recorded at build time (truncated/tampered), and ``validate(engine_bytes)`` (TensorRT's
    deserialiser on a device) accepts it.
    """
    engine_path = Path(engine_path)
    if not engine_path.is_file():
        return "no cached engine"
    try:
        record = read_sidecar(engine_path)
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
    """Write engine then sidecar, each atomically; the sidecar carries the engine's sha256."""
    engine_path = Path(engine_path)
    record = dict(record)
    record["engine_sha256"] = hashlib.sha256(engine_bytes).hexdigest()
    record["engine_bytes"] = len(engine_bytes)
    record.setdefault("built_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    atomic_write_bytes(engine_path, bytes(engine_bytes))
    atomic_write_bytes(sidecar_path(engine_path), (json.dumps(record, indent=2, sort_keys=True, default=str) + "\n").encode())
    return engine_path


def default_cache_dir() -> Path:
    """$EDGEFACE_ENGINE_CACHE, else ~/.cache/edgeface/engines."""
    env = os.environ.get("EDGEFACE_ENGINE_CACHE")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "edgeface" / "engines"


def find_or_build_engine(onnx_path: str | Path, precision: str, cache_dir: str | Path | None = None, *,
                         facts: Optional[DeviceFacts] = None, calib_cache: str | Path | None = None,
                         min_batch: int = 1, opt_batch: int = 8, max_batch: int = 64, workspace_mb: int = 1024,
                         validate: Optional[Callable[[bytes], bool]] = None,
                         build: Optional[Callable[..., Path]] = None,
                         log: Callable[[str], None] = print, **build_options) -> Path:
    """The cached engine for this ONNX/precision/device, building (and caching) it when there is none or the
    cached one is stale, foreign, truncated or does not deserialise.

    ``facts``, ``validate`` and ``build`` default to the live device (TensorRT + CUDA), TensorRT's
    deserialiser and ``build_engine``; they are parameters so the cache logic runs without a GPU.
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise EdgefaceError(f"ONNX file {onnx_path} does not exist")
    if precision not in PRECISIONS:
        raise EdgefaceError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    facts = facts or current_device_facts()
    if validate is None:
        validate = deserialize_check
    build = build or build_engine
    extra = {"batch": [int(min_batch), int(opt_batch), int(max_batch)]}
    if calib_cache is not None and precision == "int8":
        extra["calib_sha256"] = sha256_file(calib_cache)
    onnx_sha = sha256_file(onnx_path)
    key = engine_cache_key(onnx_sha, precision, facts.trt_version, facts.gpu_name, facts.compute_capability, extra)
    engine_path, _ = engine_paths(cache_dir, key)
    want = expected_record(onnx_sha, precision, facts, extra)
    reason = stale_reason(engine_path, want, validate)
    if reason is None:
        return engine_path
    if reason != "no cached engine":
        log(f"rebuilding the TensorRT engine {engine_path.name}: {reason}")
    timing_cache = Path(cache_dir) / f"timing_{_slug(facts.trt_version)}_{_slug(facts.gpu_name)}_sm" \
                                      f"{normalize_cc(facts.compute_capability).replace('.', '')}.cache"
    built = build(onnx_path, engine_path.parent, precision=precision, workspace_mb=workspace_mb,
                  timing_cache=timing_cache, calib_cache=calib_cache, min_batch=min_batch, opt_batch=opt_batch,
                  max_batch=max_batch, engine_path=engine_path, record=want, **build_options)
    reason = stale_reason(built, want, None)
    if reason is not None:  # a build that does not produce what we asked for must not be used silently
        raise EdgefaceError(f"the freshly built engine {Path(built).name} does not match its key ({reason})")
    return Path(built)


def deserialize_check(engine_bytes: bytes) -> bool:
    """TensorRT's own verdict on an engine blob: False when it was built elsewhere or is corrupt."""
    trt = import_tensorrt()
    runtime = trt.Runtime(trt.Logger(trt.Logger.ERROR))
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    ok = engine is not None
    del engine, runtime
    return ok


# -- build options (pure Python, unit-tested without TensorRT) --------------------------------------------------
@dataclass(frozen=True)
class BuildOptions:
    """What ``build_engine`` passes to TensorRT, decided before TensorRT is touched."""
    precision: str
    input_name: str
    sample_shape: tuple            # input dims after the batch dim, e.g. (3, 112, 112)
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 64
    workspace_mb: int = 1024
    quantization: Optional[str] = None     # None | "explicit" (Q/DQ ONNX) | "implicit" (calibrator)
    trt_version: str = "10.3.0"
    calib_cache: Optional[str] = None
    timing_cache: Optional[str] = None
    notes: tuple = field(default=())

    @property
    def trt_major(self) -> int:
        return trt_version_tuple(self.trt_version)[0]

    @property
    def builder_flags(self) -> tuple[str, ...]:
        """Names in trt.BuilderFlag to set (none from 11 on: a strongly typed network takes its precision
        from the ONNX's types and Q/DQ nodes)."""
        if self.trt_major >= 11:
            return ()
        if self.precision == "fp16":
            return ("FP16",)
        if self.precision == "int8":
            return ("INT8",)
        return ()

    @property
    def network_flags(self) -> tuple[str, ...]:
        """Names in trt.NetworkDefinitionCreationFlag: EXPLICIT_BATCH is required before 10.0 (and a
        deprecated no-op after); 11 builds strongly typed networks only."""
        if self.trt_major >= 11:
            return ("STRONGLY_TYPED",)
        if self.trt_major < 10:
            return ("EXPLICIT_BATCH",)
        return ()

    @property
    def workspace_bytes(self) -> int:
        return int(self.workspace_mb) << 20

    @property
    def profile(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """{input name: (min, opt, max) shapes} for the one optimisation profile."""
        s = tuple(int(d) for d in self.sample_shape)
        return {self.input_name: ((self.min_batch, *s), (self.opt_batch, *s), (self.max_batch, *s))}

    @property
    def uses_calibrator(self) -> bool:
        return self.quantization == "implicit"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(builder_flags=list(self.builder_flags), network_flags=list(self.network_flags),
                 workspace_bytes=self.workspace_bytes,
                 profile={k: [list(x) for x in v] for k, v in self.profile.items()})
        d["sample_shape"] = list(self.sample_shape)
        d["notes"] = list(self.notes)
        return d


def plan_build(precision: str, input_name: str, input_shape: Sequence, *, has_qdq: bool, trt_version: str,
               workspace_mb: int = 1024, min_batch: int = 1, opt_batch: int = 8, max_batch: int = 64,
               calib_cache: str | Path | None = None, calib_images: bool = False,
               timing_cache: str | Path | None = None) -> BuildOptions:
    """Decide and validate the build; EdgefaceError (one line) for anything TensorRT would reject later.

    ``input_shape`` is the network input's shape with the batch dim first (-1, 0, None or a name when it
    is dynamic). ``has_qdq``: the ONNX carries QuantizeLinear/DequantizeLinear (explicit INT8).
    """
    if precision not in PRECISIONS:
        raise EdgefaceError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if trt_version_tuple(trt_version) < MIN_TRT:
        raise EdgefaceError(f"TensorRT {trt_version} is too old; edgeface needs TensorRT >= 8.5 (JetPack 5)")
    major = trt_version_tuple(trt_version)[0]
    if not (isinstance(workspace_mb, int) and workspace_mb > 0):
        raise EdgefaceError(f"workspace must be a positive number of MiB, got {workspace_mb!r}")
    if not (1 <= min_batch <= opt_batch <= max_batch):
        raise EdgefaceError(f"batch profile must satisfy 1 <= min <= opt <= max, got {min_batch}/{opt_batch}/{max_batch}")
    shape = list(input_shape)
    if len(shape) < 2:
        raise EdgefaceError(f"input {input_name!r} has shape {shape}; expected a batch dim then the sample dims")
    sample = shape[1:]
    if not all(isinstance(d, int) and d > 0 for d in sample):
        raise EdgefaceError(f"input {input_name!r} has non-static sample dims {sample}; only the batch dim may be "
                            f"dynamic — re-export with `edgeface export --format onnx`")
    notes = []
    batch = shape[0]
    if isinstance(batch, int) and batch > 0:  # a static-batch ONNX: the profile can only be that batch
        if (min_batch, opt_batch, max_batch) != (batch, batch, batch):
            notes.append(f"the ONNX has a static batch of {batch}; profile set to {batch}/{batch}/{batch}")
        min_batch = opt_batch = max_batch = batch
    quantization = None
    if has_qdq:
        if precision != "int8":
            raise EdgefaceError(f"this ONNX is INT8 (it has Q/DQ nodes); build it with precision int8, not {precision}")
        quantization = "explicit"
    elif precision == "int8":
        if major >= 11:
            raise EdgefaceError("TensorRT 11 removed implicit INT8 calibration; build the INT8 Q/DQ ONNX from "
                                "`edgeface quantize --backend tensorrt` (model.int8.qdq.onnx) instead")
        if calib_cache is None and not calib_images:
            raise EdgefaceError("INT8 from an FP32 ONNX needs a calibration cache (calib.cache from `edgeface "
                                "quantize --backend tensorrt`) or calibration images; or use the Q/DQ ONNX")
        if calib_cache is not None and not Path(calib_cache).is_file() and not calib_images:
            raise EdgefaceError(f"calibration cache {calib_cache} does not exist; run `edgeface quantize --backend "
                                f"tensorrt` or pass calibration images")
        quantization = "implicit"
        notes.append("implicit INT8 calibration is deprecated since TensorRT 10.1; the Q/DQ ONNX is the lasting path")
    if precision == "fp16" and major >= 11:
        raise EdgefaceError("TensorRT 11 builds strongly typed networks only (no FP16 builder flag); build fp32, "
                            "or int8 from the Q/DQ ONNX")
    return BuildOptions(precision=precision, input_name=str(input_name), sample_shape=tuple(sample),
                        min_batch=int(min_batch), opt_batch=int(opt_batch), max_batch=int(max_batch),
                        workspace_mb=int(workspace_mb), quantization=quantization, trt_version=str(trt_version),
                        calib_cache=str(calib_cache) if calib_cache is not None else None,
                        timing_cache=str(timing_cache) if timing_cache is not None else None, notes=tuple(notes))


# -- the build (needs TensorRT) ----------------------------------------------------------------------------------
def _parser_errors(parser) -> str:
    msgs = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        try:
            node = err.node()
            where = f"node {node}: " if node is not None and node >= 0 else ""
            msgs.append(f"{where}{err.desc()}")
        except Exception:  # noqa: BLE001 - older bindings only stringify
            msgs.append(str(err))
    return "; ".join(m.replace("\n", " ") for m in msgs)[:400] or "no detail given"


def _onnx_facts(onnx_path: Path) -> dict:
    """ModelSpec, input kind and opset from the ONNX when the onnx package is present (it is optional on a
    Jetson: then the network parsed by TensorRT and the spec files beside the ONNX are used)."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        return {}
    from .export import INPUT_KIND_KEY, read_onnx_metadata

    meta = read_onnx_metadata(onnx_path)
    out = {"input_kind": meta.get(INPUT_KIND_KEY, "float32_nchw")}
    from .spec import SPEC_KEY

    if SPEC_KEY in meta:
        out["spec"] = json.loads(meta[SPEC_KEY])
    return out


def spec_beside(onnx_path: Path) -> Optional[dict]:
    """A ModelSpec stored beside the ONNX (bundle manifest.json or model.spec.json), as a dict."""
    for cand in (onnx_path.with_name("model.spec.json"), onnx_path.with_name("manifest.json")):
        if cand.is_file():
            try:
                data = json.loads(cand.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(data, dict):
                spec = data.get("spec", data if "input_size" in data else None)
                if isinstance(spec, dict):
                    return spec
    return None


def build_engine(onnx_path: str | Path, out_dir: str | Path, precision: str = "fp16", workspace_mb: int = 1024,
                 timing_cache: str | Path | None = None, calib_cache: str | Path | None = None,
                 min_batch: int = 1, opt_batch: int = 8, max_batch: int = 64, *,
                 calib_images=None, engine_path: str | Path | None = None, record: Optional[dict] = None,
                 log: Callable[[str], None] = print) -> Path:
    """Build a TensorRT engine from an ONNX on this device; writes ``out_dir/model.engine`` (or
    ``engine_path``) and its sidecar atomically and returns the engine path.

    INT8: a Q/DQ ONNX needs only the INT8 flag (explicit quantization); an FP32 ONNX uses the implicit path
    with the calibrator of ``edgeface.calibration.tensorrt_calibrator`` reading ``calib_cache`` (or
    calibrating on ``calib_images``, uint8 BGR crops).
    """
    trt = import_tensorrt()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise EdgefaceError(f"ONNX file {onnx_path} does not exist")
    engine_path = Path(engine_path) if engine_path is not None else Path(out_dir) / "model.engine"
    facts_onnx = _onnx_facts(onnx_path)
    trt_ver = str(trt.__version__)
    if facts_onnx:  # preflight with the rules of this TensorRT's parser, naming every problem at once
        problems = check_onnx_for_tensorrt(onnx_path, max_opset=17 if trt_version_tuple(trt_ver)[0] < 10 else 20)
        if problems:
            raise EdgefaceError(f"{onnx_path.name} is not buildable by TensorRT {trt_ver}: {'; '.join(problems)}")

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = trt_version_tuple(trt_ver)[0]
    flags = 0
    for name in (("EXPLICIT_BATCH",) if major < 10 else ("STRONGLY_TYPED",) if major >= 11 else ()):
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise EdgefaceError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {_parser_errors(parser)}")
    if network.num_inputs != 1:
        raise EdgefaceError(f"{onnx_path.name} has {network.num_inputs} inputs; edgeface models have one")
    inp = network.get_input(0)
    has_qdq = any(network.get_layer(i).type in (trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE)
                  for i in range(network.num_layers))
    opts = plan_build(precision, inp.name, list(inp.shape), has_qdq=has_qdq, trt_version=trt_ver,
                      workspace_mb=workspace_mb, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                      calib_cache=calib_cache, calib_images=calib_images is not None, timing_cache=timing_cache)
    for note in opts.notes:
        log(f"note: {note}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_bytes)
    for name in opts.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in opts.profile.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)

    calibrator = None
    if opts.uses_calibrator:
        from .calibration.tensorrt_calibrator import make_calibrator
        from .spec import ModelSpec

        spec_dict = facts_onnx.get("spec") or spec_beside(onnx_path)
        calibrator = make_calibrator(calib_cache, images=calib_images,
                                     spec=ModelSpec.from_dict(spec_dict) if spec_dict else ModelSpec(),
                                     input_kind=facts_onnx.get("input_kind", "float32_nchw"),
                                     batch_size=opts.opt_batch)
        config.int8_calibrator = calibrator
        if hasattr(config, "set_calibration_profile"):
            # Dynamic batch: calibration runs at one fixed shape, the calibrator's batch size.
            calib_profile = builder.create_optimization_profile()
            for name, (_, opt, _) in opts.profile.items():
                calib_profile.set_shape(name, opt, opt, opt)
            config.set_calibration_profile(calib_profile)

    cache_obj = None
    if opts.timing_cache:
        tc = Path(opts.timing_cache)
        blob = tc.read_bytes() if tc.is_file() else b""
        cache_obj = config.create_timing_cache(blob)
        if cache_obj is None or not config.set_timing_cache(cache_obj, ignore_mismatch=False):
            log(f"note: timing cache {tc.name} is unusable here (other TensorRT/GPU?); starting a fresh one")
            cache_obj = config.create_timing_cache(b"")
            config.set_timing_cache(cache_obj, ignore_mismatch=True)

    log(f"building the TensorRT {trt_ver} {precision} engine for {onnx_path.name} "
        f"(batch {opts.min_batch}/{opts.opt_batch}/{opts.max_batch}; minutes on a Jetson)")
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgefaceError(f"TensorRT failed to build an engine from {onnx_path.name} (see the TensorRT log above)")
    build_s = time.perf_counter() - t0
    if cache_obj is not None:
        atomic_write_bytes(Path(opts.timing_cache), bytes(memoryview(config.get_timing_cache().serialize())))

    try:
        name, cc = gpu_properties()
        facts = DeviceFacts(trt_ver, name, normalize_cc(cc))
    except Exception:  # noqa: BLE001 - the record is still useful without the GPU name
        facts = DeviceFacts(trt_ver, "unknown", "0.0")
    rec = dict(record) if record is not None else expected_record(sha256_file(onnx_path), precision, facts)
    rec.update(onnx_file=onnx_path.name, build=opts.to_dict(), build_seconds=round(build_s, 2),
               spec=facts_onnx.get("spec") or spec_beside(onnx_path),
               input_kind=facts_onnx.get("input_kind"))
    from . import __version__

    rec["edgeface"] = __version__
    return write_engine(engine_path, bytes(memoryview(serialized)), rec)


# -- preflight: will TensorRT's ONNX parser take this model? -----------------------------------------------------
# Operators marked "Y" in onnx-tensorrt's docs/operators.md for TensorRT 8.5 (branch release/8.5-GA, which
# parses opset <= 17; JetPack 5's TensorRT). 8.6 and 10.x support a superset (e.g. LayerNormalization).
TRT85_SUPPORTED_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast Ceil Celu Clip
Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace DequantizeLinear Div Dropout
Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements GatherND Gemm GlobalAveragePool
GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample GRU HardSwish HardSigmoid Identity If ImageScaler
InstanceNormalization IsNaN LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool
MatMul Max MaxPool Mean MeanVarianceNormalization Min Mod Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad
ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range
Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum
ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round ScaledTanh Scan Scatter ScatterElements
ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign SpaceToDepth Split Sqrt
Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

# Inputs that operators.md says must be initializers (constant at build time): op -> input index.
_CONST_INPUTS = {"Slice": (3,), "Squeeze": (1,), "Unsqueeze": (1,), "TopK": (1,), "CumSum": (1,)}
_RESIZE_COORD = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
_RESIZE_MODES = {"nearest", "linear"}
_RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}


def _onnx_dtype_names():
    import onnx

    T = onnx.TensorProto
    ok = {T.FLOAT, T.FLOAT16, T.INT8, T.BOOL, T.INT32, T.INT64, T.DOUBLE}  # INT64/DOUBLE: cast down by the parser
    return T, ok


def check_onnx_for_tensorrt(onnx_path: str | Path, max_opset: int = 17) -> list[str]:
    """Problems that would stop TensorRT's ONNX parser (8.5+) from taking this model; [] = none found.

    Rules, from onnx-tensorrt's docs/operators.md (release/8.5-GA) and TensorRT's DataType docs:
    default-domain opset <= ``max_opset`` (17 for TensorRT 8.5/8.6); no custom domains; every operator in the
    8.5 support matrix; data types FLOAT/FLOAT16/INT8/BOOL/INT32 (INT64 and DOUBLE are cast down); UINT8 only
    as a network input (TensorRT >= 8.5) that is Cast to float; one input whose dims after the batch dim are
    static; Q/DQ zero points zero and INT8; Slice/Squeeze/Unsqueeze axes, TopK K and CumSum axis constant;
    2D/3D pooling without MaxPool's Indices output; supported Resize modes; and, at opset <= 17, no
    ReduceMean ``noop_with_empty_axes`` (the attribute only exists from opset 18; the dynamo exporter's
    down-converted graphs keep it).
    """
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise EdgefaceError("checking an ONNX needs the onnx package: pip install onnx") from None
    p = Path(onnx_path)
    if not p.is_file():
        raise EdgefaceError(f"ONNX file {p} does not exist")
    try:
        model = onnx.load(str(p))
    except Exception as e:  # noqa: BLE001
        raise EdgefaceError(f"{p} is not a readable ONNX model ({type(e).__name__})") from None
    T, ok_types = _onnx_dtype_names()
    problems: list[str] = []

    opset = None
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            opset = imp.version
        else:
            problems.append(f"custom operator domain {imp.domain!r} (TensorRT's parser reads the default domain only)")
    if opset is None:
        problems.append("no default-domain opset import")
    elif opset > max_opset:
        problems.append(f"opset {opset} > {max_opset} (TensorRT 8.5/8.6 parse up to opset 17; "
                        f"re-export with opset 17)")

    graph = model.graph
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # noqa: BLE001 - shape inference is a help here, not a requirement
        inferred = graph
    consts = {i.name for i in graph.initializer}
    consts |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    init_values = {i.name: i for i in graph.initializer}
    const_nodes = {n.output[0]: n for n in graph.node if n.op_type == "Constant" and n.output}

    def const_array(name):
        if name in init_values:
            return numpy_helper.to_array(init_values[name])
        n = const_nodes.get(name)
        if n is not None:
            for a in n.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
        return None

    # -- operators ---------------------------------------------------------------------------------------------
    unsupported = sorted({n.op_type for n in graph.node if n.domain in ("", "ai.onnx")
                          and n.op_type not in TRT85_SUPPORTED_OPS})
    if unsupported:
        problems.append(f"operators TensorRT's ONNX parser does not support: {', '.join(unsupported)}")
    custom = sorted({f"{n.domain}.{n.op_type}" for n in graph.node if n.domain not in ("", "ai.onnx")})
    if custom:
        problems.append(f"custom-domain operators: {', '.join(custom)}")

    for n in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        where = f"{n.op_type} {n.name or n.output[0]!r}"
        for idx in _CONST_INPUTS.get(n.op_type, ()):
            if len(n.input) > idx and n.input[idx] and n.input[idx] not in consts:
                problems.append(f"{where}: input {idx} must be a constant initializer for TensorRT")
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            if len(n.input) < 3 or not n.input[2]:
                problems.append(f"{where}: needs an explicit INT8 zero point (TensorRT quantizes to INT8 only)")
            else:
                zp = const_array(n.input[2])
                if zp is None:
                    problems.append(f"{where}: zero point must be a constant")
                else:
                    if zp.dtype.name != "int8":
                        problems.append(f"{where}: zero point is {zp.dtype.name}; TensorRT needs INT8 (symmetric S8)")
                    if zp.size and (zp != 0).any():
                        problems.append(f"{where}: zero point must be 0 (TensorRT quantization is symmetric)")
            if n.input[1] not in consts:
                problems.append(f"{where}: scale must be a constant initializer")
        if n.op_type in ("AveragePool", "MaxPool", "LpPool"):
            k = attrs.get("kernel_shape")
            if k is not None and len(k) not in (2, 3):
                problems.append(f"{where}: only 2D or 3D pooling is supported")
            if n.op_type == "MaxPool" and len(n.output) > 1 and n.output[1]:
                problems.append(f"{where}: MaxPool's Indices output is not supported")
        if n.op_type == "Resize":
            coord = attrs.get("coordinate_transformation_mode", b"half_pixel")
            mode = attrs.get("mode", b"nearest")
            near = attrs.get("nearest_mode", b"round_prefer_floor")
            coord, mode, near = (v.decode() if isinstance(v, bytes) else v for v in (coord, mode, near))
            if coord not in _RESIZE_COORD or mode not in _RESIZE_MODES or (mode == "nearest" and near not in _RESIZE_NEAREST):
                problems.append(f"{where}: Resize mode {mode}/{coord}/{near} is not supported by TensorRT")
        if n.op_type == "ReduceMean" and opset is not None and opset <= 17 and "noop_with_empty_axes" in attrs:
            problems.append(f"{where}: attribute noop_with_empty_axes does not exist for ReduceMean at opset "
                            f"{opset} (drop it after down-converting from opset 18)")

    # -- data types --------------------------------------------------------------------------------------------
    input_names = {i.name for i in graph.input} - consts
    uint8_inputs = set()
    for vi in graph.input:
        if vi.name in consts:
            continue
        et = vi.type.tensor_type.elem_type
        if et == T.UINT8:
            uint8_inputs.add(vi.name)
        elif et not in (T.FLOAT, T.FLOAT16):
            problems.append(f"input {vi.name!r} is {T.DataType.Name(et)}; use float32, float16 or uint8")
    for vi in graph.output:
        et = vi.type.tensor_type.elem_type
        if et not in (T.FLOAT, T.FLOAT16):
            problems.append(f"output {vi.name!r} is {T.DataType.Name(et)}; TensorRT outputs here must be float")
    for name in uint8_inputs:  # TensorRT >= 8.5 takes UINT8 only as an input that is converted to float
        users = [n for n in graph.node if name in n.input]
        bad = [n.op_type for n in users if not (n.op_type == "Cast" and onnx.helper.get_attribute_value(
            next(a for a in n.attribute if a.name == "to")) in (T.FLOAT, T.FLOAT16))]
        if bad:
            problems.append(f"uint8 input {name!r} feeds {', '.join(sorted(set(bad)))}; TensorRT accepts uint8 only "
                            f"as an input Cast to float")
    typed = [(i.name, i.data_type) for i in graph.initializer]
    typed += [(v.name, v.type.tensor_type.elem_type) for v in inferred.value_info if v.type.HasField("tensor_type")]
    bad_types = sorted({(T.DataType.Name(t), name) for name, t in typed
                        if t not in ok_types and t != T.UNDEFINED and name not in uint8_inputs})
    if bad_types:
        kinds = sorted({k for k, _ in bad_types})
        problems.append(f"tensors of types TensorRT does not support: {', '.join(kinds)} "
                        f"(e.g. {bad_types[0][1]!r})")

    # -- shapes: one input, static except the batch dim -----------------------------------------------------------
    real_inputs = [vi for vi in graph.input if vi.name in input_names]
    if len(real_inputs) != 1:
        problems.append(f"{len(real_inputs)} graph inputs; edgeface engines take exactly one")
    for vi in real_inputs:
        dims = vi.type.tensor_type.shape.dim
        if len(dims) < 2:
            problems.append(f"input {vi.name!r} has rank {len(dims)}; expected batch + sample dims")
            continue
        for k, d in enumerate(dims[1:], start=1):
            if not (d.HasField("dim_value") and d.dim_value > 0):
                problems.append(f"input {vi.name!r} dim {k} is dynamic ({d.dim_param or '?'}); only the batch dim may be")
    return problems
