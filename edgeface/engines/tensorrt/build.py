"""TensorRT engine builds: the build options, decided before TensorRT is touched, and the build itself.

``plan_build`` (what flags, profile shapes and pool limits the build will pass) is plain Python and is
tested on machines without a GPU; ``build_engine`` needs TensorRT. ``find_or_build_engine`` is what the
runner and ``edgeface build`` call: the cached engine for this ONNX, precision and device (see ``cache``),
built when there is none or the cached one must not be used. TensorRT API used (8.5 to 10.x, the
name-based API): Builder, create_network, OnnxParser.parse_from_file,
IBuilderConfig.set_memory_pool_limit(MemoryPoolType.WORKSPACE), set_flag(BuilderFlag.FP16/INT8),
create_timing_cache/set_timing_cache, add_optimization_profile, build_serialized_network,
Runtime.deserialize_cuda_engine.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ...core import __version__
from ...core.artifact import INPUT_KIND_KEY, read_onnx_metadata, spec_beside
from ...core.errors import EdgefaceError
from ...core.io import atomic_write_bytes, sha256_file
from ...core.spec import FLOAT_NCHW, SPEC_KEY, ModelSpec
from .cache import PRECISIONS
from .cache import (DeviceFacts, current_device_facts, default_cache_dir, engine_cache_key, engine_paths,
                    expected_record, normalize_cc, stale_reason, timing_cache_path, write_engine)
from .library import MIN_TRT, import_tensorrt, trt_version_tuple
from .preflight import check_onnx_for_tensorrt


def find_or_build_engine(onnx_path: str | Path, precision: str, cache_dir: str | Path | None = None, *,
                         facts: Optional[DeviceFacts] = None, calib_cache: str | Path | None = None,
                         min_batch: int = 1, opt_batch: int = 8, max_batch: int = 64, workspace_mb: int = 1024,
                         validate: Optional[Callable[[bytes], bool]] = None,
                         build: Optional[Callable[..., Path]] = None,
                         log: Callable[[str], None] = print, onnx_bytes: Optional[bytes] = None,
                         **build_options) -> Path:
    """The cached engine for this ONNX/precision/device, building (and caching) it when there is none or the
    cached one is stale, foreign, truncated or does not deserialise.

    ``onnx_bytes``: the ONNX as already read (a verified bundle's bytes): hashed for the cache key and parsed
    by TensorRT from memory, so the engine is built from exactly the bytes that were verified.

    ``facts``, ``validate`` and ``build`` default to the live device (TensorRT + CUDA), TensorRT's
    deserialiser and ``build_engine``; they are parameters so the cache logic runs without a GPU.
    """
    onnx_path = Path(onnx_path)
    if onnx_bytes is None and not onnx_path.is_file():
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
    onnx_sha = hashlib.sha256(onnx_bytes).hexdigest() if onnx_bytes is not None else sha256_file(onnx_path)
    key = engine_cache_key(onnx_sha, precision, facts.trt_version, facts.gpu_name, facts.compute_capability, extra)
    engine_path, _ = engine_paths(cache_dir, key)
    want = expected_record(onnx_sha, precision, facts, extra)
    reason = stale_reason(engine_path, want, validate)
    if reason is None:
        return engine_path
    if reason != "no cached engine":
        log(f"rebuilding the TensorRT engine {engine_path.name}: {reason}")
    timing_cache = timing_cache_path(cache_dir, facts)
    if onnx_bytes is not None:
        build_options["onnx_bytes"] = onnx_bytes
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


MAX_ENGINE_BATCH = 4096        # the profile's largest batch: TensorRT plans its memory for it
MAX_WORKSPACE_MB = 1 << 20     # 1 TiB: beyond any Jetson or GPU


def check_build_numbers(workspace_mb, min_batch, opt_batch, max_batch) -> None:
    """The numbers of a build, checked before TensorRT is even imported (``edgeface build --max-batch 1e8``)."""
    from ...core.limits import short

    if not (isinstance(workspace_mb, int) and not isinstance(workspace_mb, bool)
            and 0 < workspace_mb <= MAX_WORKSPACE_MB):
        raise EdgefaceError(f"workspace must be from 1 to {MAX_WORKSPACE_MB} MiB, got {short(workspace_mb)}")
    batches = (min_batch, opt_batch, max_batch)
    if not all(isinstance(b, int) and not isinstance(b, bool) for b in batches) \
            or not 1 <= min_batch <= opt_batch <= max_batch <= MAX_ENGINE_BATCH:
        raise EdgefaceError(f"batch profile must satisfy 1 <= min <= opt <= max <= {MAX_ENGINE_BATCH}, got "
                            f"{short(min_batch)}/{short(opt_batch)}/{short(max_batch)}")


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
    check_build_numbers(workspace_mb, min_batch, opt_batch, max_batch)
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


def _profile(builder, shapes: dict):
    """An optimisation profile: {input name: (min, opt, max) shape}."""
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    return profile


def _onnx_facts(onnx_path: Path, data: Optional[bytes] = None) -> dict:
    """ModelSpec and input kind from the ONNX when the onnx package is present (it is optional on a
    Jetson: then the network parsed by TensorRT and the spec files beside the ONNX are used)."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        return {}
    from ...core.artifact import onnx_metadata, parse_onnx

    meta = onnx_metadata(parse_onnx(data, onnx_path)) if data is not None else read_onnx_metadata(onnx_path)
    out = {"input_kind": meta.get(INPUT_KIND_KEY, FLOAT_NCHW)}
    if SPEC_KEY in meta:
        out["spec"] = json.loads(meta[SPEC_KEY])
    return out


def build_engine(onnx_path: str | Path, out_dir: str | Path, precision: str = "fp16", workspace_mb: int = 1024,
                 timing_cache: str | Path | None = None, calib_cache: str | Path | None = None,
                 min_batch: int = 1, opt_batch: int = 8, max_batch: int = 64, *,
                 calib_images=None, engine_path: str | Path | None = None, record: Optional[dict] = None,
                 log: Callable[[str], None] = print, onnx_bytes: Optional[bytes] = None) -> Path:
    """Build a TensorRT engine from an ONNX on this device; writes ``out_dir/model.engine`` (or
    ``engine_path``) and its record atomically and returns the engine path.

    INT8: a Q/DQ ONNX needs only the INT8 flag (explicit quantization); an FP32 ONNX uses the implicit path
    with the calibrator of ``edgeface.engines.tensorrt.calibrator`` reading ``calib_cache`` (or
    calibrating on ``calib_images``, uint8 BGR crops).
    """
    trt = import_tensorrt()
    onnx_path = Path(onnx_path)
    if onnx_bytes is None:  # read once: the bytes hashed into the record are the bytes TensorRT parses
        if not onnx_path.is_file():
            raise EdgefaceError(f"ONNX file {onnx_path} does not exist")
        onnx_bytes = onnx_path.read_bytes()
    engine_path = Path(engine_path) if engine_path is not None else Path(out_dir) / "model.engine"
    facts_onnx = _onnx_facts(onnx_path, onnx_bytes)
    trt_ver = str(trt.__version__)
    if facts_onnx:  # preflight with the rules of this TensorRT's parser, naming every problem at once
        _preflight(onnx_path, onnx_bytes, trt_ver)
    # The parser owns the weights it parsed and TensorRT keeps no reference to the calibrator: both stay in
    # this frame until the engine is built.
    builder, network, parser = _parse_network(trt, onnx_path, onnx_bytes, trt_ver)
    inp = network.get_input(0)
    opts = plan_build(precision, inp.name, list(inp.shape), has_qdq=_has_qdq(trt, network), trt_version=trt_ver,
                      workspace_mb=workspace_mb, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
                      calib_cache=calib_cache, calib_images=calib_images is not None, timing_cache=timing_cache)
    for note in opts.notes:
        log(f"note: {note}")
    config = _builder_config(trt, builder, opts)
    calibrator = None
    if opts.uses_calibrator:
        calibrator = _attach_calibrator(builder, config, opts, calib_cache, calib_images, onnx_path, facts_onnx)
    cache_obj = _attach_timing_cache(config, opts, log)

    log(f"building the TensorRT {trt_ver} {precision} engine for {onnx_path.name} "
        f"(batch {opts.min_batch}/{opts.opt_batch}/{opts.max_batch}; minutes on a Jetson)")
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgefaceError(f"TensorRT failed to build an engine from {onnx_path.name} (see the TensorRT log above)")
    build_s = time.perf_counter() - t0
    del parser, calibrator  # built: what they held is in the serialized engine now
    if cache_obj is not None:
        atomic_write_bytes(Path(opts.timing_cache), bytes(memoryview(config.get_timing_cache().serialize())))

    rec = dict(record) if record is not None else expected_record(hashlib.sha256(onnx_bytes).hexdigest(), precision,
                                                                  _device_facts(trt_ver))
    rec.update(onnx_file=onnx_path.name, build=opts.to_dict(), build_seconds=round(build_s, 2),
               spec=facts_onnx.get("spec") or spec_beside(onnx_path),
               input_kind=facts_onnx.get("input_kind"))
    rec["edgeface"] = __version__
    return write_engine(engine_path, bytes(memoryview(serialized)), rec)


def _preflight(onnx_path: Path, onnx_bytes: bytes, trt_ver: str) -> None:
    """The ONNX checked with the rules of this TensorRT's parser, every problem named in one error."""
    problems = check_onnx_for_tensorrt(onnx_path, max_opset=17 if trt_version_tuple(trt_ver)[0] < 10 else 20,
                                       data=onnx_bytes)
    if problems:
        raise EdgefaceError(f"{onnx_path.name} is not buildable by TensorRT {trt_ver}: {'; '.join(problems)}")


def _parse_network(trt, onnx_path: Path, onnx_bytes: bytes, trt_ver: str):
    """(builder, network, parser) with the ONNX parsed into the network; the network has one input."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = trt_version_tuple(trt_ver)[0]
    flags = 0
    for name in (("EXPLICIT_BATCH",) if major < 10 else ("STRONGLY_TYPED",) if major >= 11 else ()):
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # OnnxParser.parse(model, path): the serialized ONNX from memory; the path only locates external weights.
    if not parser.parse(onnx_bytes, str(onnx_path)):
        raise EdgefaceError(f"TensorRT's ONNX parser rejected {onnx_path.name}: {_parser_errors(parser)}")
    if network.num_inputs != 1:
        raise EdgefaceError(f"{onnx_path.name} has {network.num_inputs} inputs; edgeface models have one")
    return builder, network, parser


def _has_qdq(trt, network) -> bool:
    """The parsed network quantizes explicitly (Q/DQ layers): INT8 without a calibrator."""
    return any(network.get_layer(i).type in (trt.LayerType.QUANTIZE, trt.LayerType.DEQUANTIZE)
               for i in range(network.num_layers))


def _builder_config(trt, builder, opts: BuildOptions):
    """Workspace, precision flags and the batch profile of the plan."""
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, opts.workspace_bytes)
    for name in opts.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    config.add_optimization_profile(_profile(builder, opts.profile))
    return config


def _attach_calibrator(builder, config, opts: BuildOptions, calib_cache, calib_images, onnx_path: Path,
                       facts_onnx: dict):
    """Implicit INT8: the calibrator (reading the cache, or calibrating on the images) set on the config."""
    from .calibrator import make_calibrator

    spec_dict = facts_onnx.get("spec") or spec_beside(onnx_path)
    calibrator = make_calibrator(calib_cache, images=calib_images,
                                 spec=ModelSpec.from_dict(spec_dict) if spec_dict else ModelSpec(),
                                 input_kind=facts_onnx.get("input_kind", FLOAT_NCHW),
                                 batch_size=opts.opt_batch)
    config.int8_calibrator = calibrator
    if hasattr(config, "set_calibration_profile"):
        # Dynamic batch: calibration runs at one fixed shape, the calibrator's batch size.
        config.set_calibration_profile(_profile(builder, {n: (o, o, o) for n, (_, o, _) in opts.profile.items()}))
    return calibrator


def _attach_timing_cache(config, opts: BuildOptions, log: Callable[[str], None]):
    """The timing cache object set on the config (None without --timing-cache); one from another TensorRT or
    GPU is replaced by a fresh one rather than failing the build."""
    if not opts.timing_cache:
        return None
    tc = Path(opts.timing_cache)
    blob = tc.read_bytes() if tc.is_file() else b""
    cache_obj = config.create_timing_cache(blob)
    if cache_obj is None or not config.set_timing_cache(cache_obj, ignore_mismatch=False):
        log(f"note: timing cache {tc.name} is unusable here (other TensorRT/GPU?); starting a fresh one")
        cache_obj = config.create_timing_cache(b"")
        config.set_timing_cache(cache_obj, ignore_mismatch=True)
    return cache_obj


def _device_facts(trt_ver: str) -> DeviceFacts:
    """This TensorRT, GPU name and compute capability, for the engine's record."""
    try:
        from .cuda_memory import device_properties

        name, cc = device_properties()
        return DeviceFacts(trt_ver, name, normalize_cc(cc))
    except Exception:  # noqa: BLE001 - the record is still useful without the GPU name
        return DeviceFacts(trt_ver, "unknown", "0.0")


