"""The engine registry is complete: every entry has what the registry demands, and everything that used to
keep its own table of engines, suffixes or extras reads it."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = pytest.importorskip("tomli")

from edgeface.core.device import DEVICE_KINDS
from edgeface.core.errors import EdgefaceError
from edgeface.core.spec import PRECISIONS
from edgeface.engines import registry
from edgeface.engines.base import Backend
from edgeface.engines.descriptor import resolve

REPO = Path(__file__).resolve().parents[1]
ENGINES = registry.ENGINES
IDS = [e.name for e in ENGINES]
REF = re.compile(r"^edgeface(\.\w+)+:\w+(\.\w+)*$")


def _extras() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]


@pytest.mark.parametrize("engine", ENGINES, ids=IDS)
def test_entry_names_its_package_extra_and_files(engine):
    assert registry.REGISTRY[engine.name] is engine
    assert (REPO / "edgeface" / "engines" / engine.name / "__init__.py").is_file(), "one package per engine"
    assert engine.title and engine.description and engine.package
    extra = _extras().get(engine.extra)
    assert extra is not None, f"pyproject.toml has no extra [{engine.extra}]"
    assert any(re.match(rf"{engine.package.replace('_', '[-_]')}\b", dep) for dep in extra), \
        f"extra [{engine.extra}] does not install {engine.package}"
    assert engine.artifact.endswith(engine.suffix) and engine.suffix.startswith(".")
    for pattern in engine.companions:
        assert "{name}" in pattern or "{stem}" in pattern, pattern
        assert engine.companions_of(f"x/{engine.artifact}")  # formats without error
    assert registry.engine_of_artifact(f"some/dir/{engine.artifact}") is engine
    assert set(engine.precisions) <= set(PRECISIONS) and engine.precisions
    assert set(engine.preferred_on) <= set(DEVICE_KINDS)
    for fmt in engine.also_runs + ((engine.bundle_format,) if engine.bundle_format else ()):
        assert registry.by_format(fmt)  # a format some engine owns


@pytest.mark.parametrize("engine", ENGINES, ids=IDS)
def test_entry_code_references_resolve_in_their_layers(engine):
    """Runner and spec reader in the engine's own package (or core), named by string; its exporter and INT8
    emitter in the tables of export/ and quantize/, which name the engine, never the other way round."""
    from edgeface.export import EXPORTERS, formats
    from edgeface.quantize.emit import emitter_of

    for ref in (engine.runner, engine.read_spec):
        assert REF.match(ref), f"{ref!r} is not 'edgeface.module:attribute'"
        assert callable(resolve(ref)), ref
    runner = engine.runner_class()  # importable without the engine's own package (it loads it lazily)
    assert issubclass(runner, Backend) and runner.name == engine.name
    assert engine.runner.startswith(f"edgeface.engines.{engine.name}.")
    assert engine.read_spec.startswith((f"edgeface.engines.{engine.name}.", "edgeface.core."))
    assert (engine.format in EXPORTERS) == (engine.name != "torch"), "every format but the checkpoint exports"
    if engine.int8:
        assert callable(emitter_of(engine.name))
        assert set(engine.int8.sources) <= set(formats())
    backend, options = engine.checking()
    assert backend in registry.REGISTRY
    assert set(options) <= registry.get(backend).runner_class().OPTIONS, "check options its checker reads"
    assert engine.bundle_format is None or engine.bundle_format in formats(), "a bundle carries an exportable format"


@pytest.mark.parametrize("engine", [e for e in ENGINES if e.target], ids=[e.name for e in ENGINES if e.target])
def test_target_options_reach_the_runner(engine):
    """What deploy writes into a manifest from the engine's target section, its runner reads: a key the
    runner does not know would be refused when it is created (the rpi INT8 setting once went missing so)."""
    for precision in PRECISIONS:
        options = engine.target.runner_options(dict(engine.target.defaults), precision)
        assert set(options) <= engine.runner_class().OPTIONS, (precision, options)
    engine.target.check(dict(engine.target.defaults), "defaults")  # the defaults pass their own check


def test_every_deployable_engine_has_a_target_and_every_target_an_engine():
    from edgeface.deploy.targets import list_targets, load_target

    targets = [load_target(t) for t in list_targets()]
    # a target names its engine, or the engines deploy measures on the device and picks from (x86)
    named = {t["backend"] for t in targets} | {m for t in targets for m in t["measure"]}
    assert named <= {e.name for e in registry.deployable()}
    assert {e.name for e in registry.deployable()} <= named, "a deployable engine without a target YAML"
    assert {t["device"] for t in targets} <= set(DEVICE_KINDS)


def test_unknown_runner_options_are_refused(tmp_path):
    from edgeface.core.spec import ModelSpec

    cls = registry.get("onnxruntime").runner_class()
    with pytest.raises(EdgefaceError, match=r"no option 'int8_arithmetic'.*fold_preprocess"):
        cls(tmp_path / "model.onnx", ModelSpec(), int8_arithmetic=True)


def test_registry_answers_the_former_tables():
    """formats.py, predictor.RUNS_ON / BUNDLE_CANDIDATES, bench/remote.EXTRA_FOR_SUFFIX, bundle.model_suffixes,
    targets.BACKENDS and quantize's ARTIFACTS / RUN_WITH, as the registry now answers them."""
    from edgeface.bench.remote import install_hint
    from edgeface.deploy.targets import backends
    from edgeface.quantize.emit import int8_artifact
    from edgeface.quantize.guard import checking_engine
    from edgeface.export import exportable
    from edgeface.runtime.bundle import model_suffixes

    assert [e.name for e in registry.engines_running("onnx")] == ["onnxruntime", "tensorrt", "openvino"]
    assert [e.name for e in registry.engines_running("ncnn")] == ["ncnn"]
    assert [e.format for e in exportable()] == ["onnx", "ncnn", "tensorrt", "openvino"]
    assert install_hint(["a/model.onnx", "b/model.ncnn.param", "c/model.engine"]) == \
        "pip install 'edgeface[ort,ncnn,tensorrt]'"
    known = {".onnx", ".data", ".param", ".bin", ".ncnn.bin", ".spec.json", ".engine", ".pt", ".cache"}
    assert known <= set(model_suffixes())
    assert backends() == ["onnxruntime", "ncnn", "tensorrt", "openvino"]
    assert {e.name: int8_artifact(e.name) for e in registry.with_int8()} == {
        "onnxruntime": "onnxruntime/model.onnx", "ncnn": "ncnn/model.ncnn.param", "tensorrt": "tensorrt/model.onnx",
        "openvino": "openvino/model.onnx"}
    assert {e.name: checking_engine(e.name) for e in registry.with_int8()} == {
        "onnxruntime": "onnxruntime", "ncnn": "ncnn", "tensorrt": "onnxruntime", "openvino": "openvino"}
    assert [e.name for e in registry.auto_order(ENGINES, "jetson")] == ["tensorrt", "onnxruntime", "ncnn", "openvino",
                                                                         "torch"]
    assert [e.name for e in registry.auto_order(ENGINES, "rpi")][0] == "ncnn"
    # x86: onnxruntime for small batches, OpenVINO from its AUTO_MIN_BATCH on (docs/engines.md)
    assert [e.name for e in registry.auto_order(ENGINES, "x86")][:1] == ["onnxruntime"]
    assert [e.name for e in registry.auto_order(ENGINES, "x86", batch=64, precision="int8")][:2] == ["openvino",
                                                                                                  "onnxruntime"]
    ncnn = registry.get("ncnn")
    assert [p.name for p in ncnn.companions_of("d/model.ncnn.param")] == ["model.ncnn.bin", "model.spec.json"]
    assert registry.get("tensorrt").builds_on_device and not ncnn.builds_on_device
    assert not registry.get("openvino").builds_on_device  # it compiles the bundle's ONNX when it loads
