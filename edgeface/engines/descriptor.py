"""What an engine is: the one descriptor each ``engines/<name>/`` package exports.

A descriptor holds the facts the rest of edgeface needs about an engine, as data: its name, the artifact it
runs and the files that travel with it, the package and pip extra it needs, where its runner and spec reader
are, the section of a target YAML it reads. ``edgeface.engines.registry`` collects them; the Predictor,
bundles, deploy, bench and quantize read the registry instead of keeping tables of their own.

What an engine *decides* is a method, not a flag: where ``backend="auto"`` ranks it (``auto_rank``), whether
a device builds what it runs (``builds_on_device``), which engine checks its artifacts on a build machine
(``checking``), the check a bundle's artifact must pass (``bundle_problems``), the other settings deploy
measures (``measure_variants``). ``Engine`` answers them with the plain defaults; an engine package that
decides otherwise subclasses it (OpenVINO, TensorRT) and overrides only those.

Code above this layer is not named here: ``edgeface.export`` keeps the exporter of each format and
``edgeface.quantize.emit`` the INT8 emitter of each engine (``register_exporter`` / ``register_emitter``),
so nothing in engines/ points up. The runner and spec reader are "module:attribute" strings, imported on
first use: the runner needs the engine's own Python package (onnxruntime, ncnn, tensorrt, torch), which may
be absent.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

Ref = str  # "package.module:attribute"


def resolve(ref: Ref):
    """The object a "module:attribute" reference names (importing the module)."""
    module, _, attr = ref.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _no_check(section: dict, where: str) -> None:
    return None


@dataclass(frozen=True)
class TargetSection:
    """The section of a target YAML (``recipes/targets/*.yaml``) named after the engine.

    ``defaults`` are its fields (a missing field takes the default; an unknown one is an error);
    ``check(section, where)`` refuses values the types alone do not catch; ``runner_options(section,
    precision)`` turns the validated section into the options the engine's runner is created with, which
    deploy writes into the bundle's manifest. The runner reads those same keys (the registry test holds
    every key to the runner's ``OPTIONS``), so a target setting cannot silently miss its engine. Other
    settings of the section that deploy measures are the engine's ``measure_variants``.
    """

    defaults: Mapping[str, Any]
    runner_options: Callable[[dict, str], dict]
    check: Callable[[dict, str], None] = _no_check


@dataclass(frozen=True)
class Int8Form:
    """The engine's INT8 artifact, as ``edgeface quantize`` writes it.

    Its emitter is ``edgeface.quantize.emit``'s for the engine (``register_emitter``): called as
    ``emitter(sources, plan, out_path, ort_format=..., calib_cache=...)`` with the FP32 artifacts
    (``edgeface.quantize.emit.Fp32Artifacts``; ``sources`` names the formats it reads) and the
    quantization plan, it writes ``out_path`` (and its companions) and returns a dict describing the form.
    ``qdq_native``: the form is the symmetric int8 Q/DQ ONNX itself, so a quantization-aware export is
    used as it is instead of being re-emitted.
    """

    artifact: str
    sources: tuple[str, ...] = ("onnx",)
    calib_cache: Optional[str] = None
    qdq_native: bool = False


@dataclass(frozen=True)
class Engine:
    """One engine, as the registry knows it. Fields are facts; methods are the engine's decisions, with the
    defaults most engines want (an engine package subclasses ``Engine`` to decide otherwise)."""

    name: str                          # Predictor(backend=...), a manifest's "backend", a target's "backend"
    title: str                         # how messages name it ("TensorRT")
    description: str
    package: str                       # the Python package it needs (import name)
    extra: str                         # pip install 'edgeface[extra]' installs it
    format: str                        # `edgeface export --format` name of its native artifact
    suffix: str                        # how its native artifact's name ends (".ncnn.param")
    artifact: str                      # the native artifact's file name in export folders and bundles
    runner: Ref                        # the Backend subclass
    read_spec: Ref                     # artifact path -> ModelSpec (needs no inference engine)
    precisions: tuple[str, ...]        # what its exporter makes (the first is the default)
    companions: tuple[str, ...] = ()   # files that travel with an artifact: "{name}" = its file name,
    #                                    "{stem}" = that name without the suffix
    also_runs: tuple[str, ...] = ()    # formats of other engines it loads (TensorRT builds its engine from ONNX)
    bundle_format: Optional[str] = None  # the format a bundle for this engine carries; None: no bundles
    fold_preprocess: bool = False      # its exporter can fold the preprocessing into the graph (uint8 crops in)
    int8: Optional[Int8Form] = None
    target: Optional[TargetSection] = None
    preferred_on: tuple[str, ...] = ()  # device kinds where backend="auto" prefers it (``auto_rank``)
    legacy_suffixes: tuple[str, ...] = ()  # older names of its artifact, still recognised

    # -- decisions (override in the engine's package) ----------------------------------------------------------
    def auto_rank(self, device: str, batch: int, precision: Optional[str], isa_flags=None) -> int:
        """Where ``backend="auto"`` puts this engine on a ``device`` kind for batches of ``batch`` and an artifact
        holding ``precision`` (None: unknown; ``isa_flags``: the CPU's, None: this one's): 0 before the others
        preferred there, 1 preferred there, 2 not preferred. Default: preferred on ``preferred_on``."""
        return 1 if device in self.preferred_on else 2

    @property
    def builds_on_device(self) -> bool:
        """Its bundles carry another format, from which the device builds what it runs (`edgeface build`).
        Default: no, the device loads the bundle's format as it is (OpenVINO compiles the ONNX when it loads)."""
        return False

    def checking(self) -> tuple[str, dict]:
        """(engine, runner options) that check this engine's artifacts on a build machine, which need not have
        this engine. Default: itself, with no options."""
        return self.name, {}

    def bundle_problems(self, artifact: Path, opset: int) -> list[str]:
        """What stops a bundle's artifact from running on this engine, found on the build machine before the
        bundle ships (TensorRT: its ONNX parser's limits). Default: nothing."""
        return []

    def measure_variants(self, section: dict, threads: Optional[int], batch: int) -> list[tuple[str, dict]]:
        """[(variant, section)]: other settings of this engine's target section that deploy measures against the
        target's own when it chooses by measuring (OpenVINO's other performance hint). Default: none."""
        return []

    # -- code ------------------------------------------------------------------------------------------------
    def runner_class(self):
        """The Backend subclass (imports the runner module; its engine package is imported when it loads)."""
        return resolve(self.runner)

    def spec_of(self, artifact: str | Path):
        return resolve(self.read_spec)(artifact)

    # -- files -----------------------------------------------------------------------------------------------
    def stem(self, path: str | Path) -> str:
        name = Path(path).name
        for s in (self.suffix, *self.legacy_suffixes):
            if name.endswith(s):
                return name[: -len(s)]
        return Path(name).stem

    def companions_of(self, path: str | Path) -> list[Path]:
        """The companion files of an artifact of this engine (whether they exist or not)."""
        p = Path(path)
        return [p.with_name(c.format(name=p.name, stem=self.stem(p))) for c in self.companions]

    def files_of(self, path: str | Path) -> list[Path]:
        """The artifact and those of its companions that exist: what makes it up on disk."""
        return [Path(path)] + [c for c in self.companions_of(path) if c.is_file()]

    def companion_suffixes(self) -> tuple[str, ...]:
        return tuple(c.format(name=self.suffix, stem="") for c in self.companions)
