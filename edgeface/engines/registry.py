"""THE table of engines: one descriptor per engine package, in order of preference.

Everything that depends on which engines exist reads this module: the Predictor (which engine runs an
artifact, ``backend="auto"``, the shipped default model), bundles (which files are model data), deploy
(target sections, bundle artifacts, companions), bench (an artifact's files, the extra a device needs),
export (``--format``) and quantize (INT8 forms). Adding an engine is one package exporting an ``ENGINE``
descriptor and one entry: a line in ``ENGINES`` below for edgeface's own, ``register(ENGINE)`` (or
``$EDGEFACE_ENGINES``, which every edgeface process reads, bench's workers included) for an engine from
another package; docs/architecture.md walks through it.

Nothing here imports an engine's Python package: ``get_backend_class`` does, when it is asked for one, and
names the pip extra when the package is missing, so a missing engine never breaks the CLI.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import warnings
from pathlib import Path

from ..core.errors import EdgefaceError, MissingBackendError
from . import ncnn, onnxruntime, openvino, tensorrt, torch
from .descriptor import Engine, resolve

# Order = preference where nothing else decides (backend="auto" also looks at the device kind);
# torch, the reference, comes last: it needs the training dependencies. Registered engines follow.
# Both change only through register() / unregister(), in place, so every reader sees the same table.
ENGINES: list[Engine] = [onnxruntime.ENGINE, ncnn.ENGINE, tensorrt.ENGINE, openvino.ENGINE, torch.ENGINE]
REGISTRY: dict[str, Engine] = {e.name: e for e in ENGINES}
BUILT_IN: tuple[Engine, ...] = tuple(ENGINES)
ENV_ENGINES = "EDGEFACE_ENGINES"  # "module:attribute" of Engine descriptors, comma-separated, registered on import


def register(engine: Engine) -> Engine:
    """Add an engine from another package (a plug-in, a test's fake engine). Its name, format and artifact
    suffix must be new: an artifact belongs to one engine, and a format to the engine that makes it."""
    if not isinstance(engine, Engine):
        raise EdgefaceError(f"register() takes an edgeface.engines.descriptor.Engine, got {type(engine).__name__}")
    for e in ENGINES:
        clash = [f for f in ("name", "format", "suffix", "artifact") if getattr(e, f) == getattr(engine, f)]
        if clash:
            raise EdgefaceError(f"engine {engine.name!r} has the {clash[0]} of the registered engine {e.name!r} "
                                f"({getattr(e, clash[0])!r}); an engine's {clash[0]} is its own")
    ENGINES.append(engine)
    REGISTRY[engine.name] = engine
    return engine


def unregister(name: str) -> None:
    """Remove an engine ``register`` added (edgeface's own stay)."""
    engine = get(name)
    if any(engine is b for b in BUILT_IN):
        raise EdgefaceError(f"{name!r} is one of edgeface's own engines; only registered ones can be removed")
    ENGINES.remove(engine)
    del REGISTRY[name]


def _register_from_environment() -> None:
    """Engines named in $EDGEFACE_ENGINES, so every edgeface process (a bench worker, a device) has them. One
    that cannot be loaded is a warning naming it, not a broken import of edgeface."""
    for ref in filter(None, (r.strip() for r in os.environ.get(ENV_ENGINES, "").split(","))):
        try:
            engine = resolve(ref)
            if engine.name not in REGISTRY or REGISTRY[engine.name] is not engine:
                register(engine)
        except Exception as e:  # noqa: BLE001 - a broken plug-in must not break edgeface
            warnings.warn(f"${ENV_ENGINES}: {ref} not registered ({type(e).__name__}: {e})", stacklevel=2)


def names() -> list[str]:
    return list(REGISTRY)


def get(name: str) -> Engine:
    if name not in REGISTRY:
        raise MissingBackendError(f"unknown backend {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def is_installed(name: str) -> bool:
    """Whether the engine's Python package can be found (without importing it)."""
    try:
        return importlib.util.find_spec(REGISTRY[name].package) is not None
    except (ImportError, ValueError):  # a package half-imported or shadowed by a module without a spec
        return False


def get_backend_class(name: str):
    """The engine's runner class; MissingBackendError naming the extra when its package is absent."""
    engine = get(name)
    if not is_installed(name):
        raise MissingBackendError(f"backend {name!r} needs the {engine.package!r} package: "
                                  f"pip install 'edgeface[{engine.extra}]'")
    try:
        return engine.runner_class()  # the runner imports its engine's package when it loads
    except ImportError as e:
        raise MissingBackendError(f"backend {name!r} failed to import ({e}); reinstall with "
                                  f"pip install 'edgeface[{engine.extra}]'") from None


def available_backends() -> dict[str, str]:
    """name -> package version, or how to install it. Never raises."""
    out = {}
    for name, engine in REGISTRY.items():
        if not is_installed(name):
            out[name] = f"missing (pip install 'edgeface[{engine.extra}]')"
            continue
        try:
            mod = importlib.import_module(engine.package)
            out[name] = getattr(mod, "__version__", "installed")
        except Exception as e:  # noqa: BLE001 - a broken install must not break `edgeface info`
            out[name] = f"broken ({type(e).__name__}: {str(e)[:60]})"
    return out


# -- formats and artifacts ----------------------------------------------------------------------------------
def by_format(fmt: str) -> Engine:
    """The engine whose native artifact ``fmt`` is (``edgeface export --format`` names)."""
    for e in ENGINES:
        if e.format == fmt:
            return e
    raise EdgefaceError(f"unknown format {fmt!r}; choose one of {', '.join(e.format for e in ENGINES)}")


def engine_of_artifact(path: str | Path) -> Engine:
    """The engine whose native artifact this file is, from its name; EdgefaceError naming the known kinds."""
    name = Path(path).name
    # Longest suffix first, so model.ncnn.param is ncnn's even though '.param' alone would do too.
    suffixes = sorted(((s, e) for e in ENGINES for s in (e.suffix, *e.legacy_suffixes)), key=lambda se: -len(se[0]))
    for suffix, engine in suffixes:
        if name.endswith(suffix):
            return engine
    known = ", ".join(e.suffix for e in ENGINES)
    raise EdgefaceError(f"{name}: unknown artifact type; expected one of {known} (or a bundle directory)")


def engines_running(fmt: str) -> list[Engine]:
    """The engines that load artifacts of format ``fmt``: its own engine first, then those that also run it."""
    return [by_format(fmt)] + [e for e in ENGINES if fmt in e.also_runs]


def deployable() -> list[Engine]:
    """Engines a target YAML may name as its backend (a bundle can carry their artifact)."""
    return [e for e in ENGINES if e.bundle_format is not None]


def with_int8() -> list[Engine]:
    """Engines ``edgeface quantize`` writes an INT8 artifact for."""
    return [e for e in ENGINES if e.int8 is not None]


def precision_problem(name: str, precision: str, stored: str = "fp32") -> str | None:
    """Why engine ``name`` cannot run an artifact holding ``stored`` at ``precision`` here, or None. What an
    engine exports (ncnn's fp16, TensorRT's fp16 build) or quantizes is its own; another float precision (bf16)
    is asked of its runner, which knows its CPU paths (``Backend.precision_problem``)."""
    e = get(name)
    if precision == stored or precision in e.precisions or (precision == "int8" and e.int8 is not None):
        return None
    return e.runner_class().precision_problem(stored, precision)


def auto_order(engines, device: str, batch: int = 1, precision: str | None = None,
               isa_flags=None) -> list[Engine]:
    """``engines`` in the order backend="auto" tries them on ``device`` for batches of ``batch``, by each
    engine's own ``auto_rank`` (stable otherwise): those that ask to go first there (OpenVINO on x86 from
    batch 8; for an FP32 artifact only on a CPU with AVX-512), then the others preferred there, then the rest.
    ``precision``: the artifact's (None when unknown); ``isa_flags``: the CPU's (default: this one's)."""
    return sorted(engines, key=lambda e: e.auto_rank(device, batch, precision, isa_flags))


def model_file_suffixes() -> tuple[str, ...]:
    """Endings of files that hold model data for some engine: artifacts (native and INT8), their companions
    and calibration caches, and the last part of each (an ONNX may name its external weights freely; a
    '.param' is ncnn's whatever comes before). JSON in general is not model data, only the spec and engine
    record names are."""
    out: list[str] = []
    for e in ENGINES:
        names = [e.suffix, *e.legacy_suffixes, *e.companion_suffixes()]
        if e.int8 is not None and e.int8.calib_cache:
            names.append(Path(e.int8.calib_cache).suffix)
        for name in names:
            last = "." + name.rsplit(".", 1)[-1]
            for s in (name, last):
                if s not in out and s != ".json":
                    out.append(s)
    return tuple(out)


_register_from_environment()
