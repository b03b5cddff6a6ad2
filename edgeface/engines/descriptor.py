"""What an engine is, as data: the one descriptor each ``engines/<name>/`` package exports.

A descriptor holds every fact the rest of edgeface needs about an engine: the artifact it runs and the
files that travel with it, the package and pip extra it needs, where its runner, exporter and INT8
emitter are, and the section of a target YAML it reads. ``edgeface.engines.registry`` collects them; the
Predictor, bundles, deploy, bench and quantize read the registry instead of keeping tables of their own.

References to code are strings, "module:attribute", imported on first use: the runner needs the engine's
own Python package (onnxruntime, ncnn, tensorrt, torch), which may be absent, and the exporter and
emitter live in the export and quantize layers above this one, which only those layers resolve.
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
    every key to the runner's ``OPTIONS``), so a target setting cannot silently miss its engine.
    """

    defaults: Mapping[str, Any]
    runner_options: Callable[[dict, str], dict]
    check: Callable[[dict, str], None] = _no_check
    # (section, threads, batch) -> [(variant, section)]: other settings of this section that deploy measures
    # against the target's own when it chooses by measuring (OpenVINO's other performance hint)
    measure_variants: Optional[Callable[[dict, Optional[int], int], list[tuple[str, dict]]]] = None


@dataclass(frozen=True)
class Int8Form:
    """The engine's INT8 artifact, as ``edgeface quantize`` writes it.

    ``emitter`` is called as ``emitter(sources, plan, out_path, ort_format=...)`` with the FP32 artifacts
    (``edgeface.quantize.emit.Fp32Artifacts``; ``sources`` names the formats it reads) and the
    quantization plan, writes ``out_path`` (and its companions) and returns a dict describing the form.
    ``qdq_native``: the form is the symmetric int8 Q/DQ ONNX itself, so a quantization-aware export is
    used as it is instead of being re-emitted.
    """

    emitter: Ref
    artifact: str
    sources: tuple[str, ...] = ("onnx",)
    calib_cache: Optional[str] = None
    qdq_native: bool = False


@dataclass(frozen=True)
class Engine:
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
    precisions: tuple[str, ...]        # what `edgeface export` makes (the first is the default)
    exporter: Optional[Ref] = None     # (model, out_path, *, precision, fold_preprocess, **options) -> path;
    #                                    None: the source format itself (checkpoints are trained, not exported)
    companions: tuple[str, ...] = ()   # files that travel with an artifact: "{name}" = its file name,
    #                                    "{stem}" = that name without the suffix
    also_runs: tuple[str, ...] = ()    # formats of other engines it loads (TensorRT builds its engine from ONNX)
    bundle_format: Optional[str] = None  # the format a bundle for this engine carries; None: no bundles
    bundle_check: Optional[Ref] = None   # (artifact, opset) -> problems, run on a bundle's artifact by deploy
    checked_with: Optional[str] = None   # the engine that runs its artifacts for accuracy checks on a build
    #                                      machine, which need not have this one (None: itself)
    check_options: tuple[tuple[str, Any], ...] = ()  # that engine's runner options for those checks
    fold_preprocess: bool = False      # `--fold-preprocess` (uint8 crops into the graph) is available
    int8: Optional[Int8Form] = None
    target: Optional[TargetSection] = None
    preferred_on: tuple[str, ...] = ()  # device kinds where backend="auto" picks it first
    auto_min_batch: int = 0            # >0: on those devices, backend="auto" prefers it only from this batch
    #                                    size on, and then before the others preferred there (OpenVINO on x86)
    auto_fp32_isa: tuple[str, ...] = ()  # non-empty: for an FP32 artifact that preference also needs one of these
    #                                      CPU features (OpenVINO's FP32 kernels win with AVX-512, lose on AVX2)
    device_build: bool = False         # the device builds what it runs from the bundle's format (TensorRT);
    #                                    False: it loads the bundle's format as it is (OpenVINO reads the ONNX)
    legacy_suffixes: tuple[str, ...] = ()  # older names of its artifact, still recognised

    @property
    def builds_on_device(self) -> bool:
        """Its bundles carry another format, from which the device builds what it runs (`edgeface build`)."""
        return self.device_build and self.bundle_format is not None and self.bundle_format != self.format

    # -- code ------------------------------------------------------------------------------------------------
    def runner_class(self):
        """The Backend subclass (imports the runner module; its engine package is imported when it loads)."""
        return resolve(self.runner)

    def checking(self) -> tuple[str, dict]:
        """(engine, runner options) that check this engine's artifacts on a build machine."""
        return (self.checked_with or self.name), dict(self.check_options)

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
