"""A small engine from outside edgeface, for tests/test_fake_engine.py: a package plus one registry entry.

Its artifact, ``model.fake``, is an edgeface ONNX under another name, and its runner (runner.py) runs it through
onnxruntime's Python API directly, not edgeface's onnxruntime engine. It has its own target section (``fake:``
in a target YAML: one ``tag``, which deploy writes into the manifest and the runner reads back) and deploys
through fake.yaml. Its exporter (export.py) needs torch, so it lives apart: this module is all a process that
only runs the engine imports ($EDGEFACE_ENGINES=fake_engine:ENGINE, as bench's workers do).
"""
from __future__ import annotations

from edgeface.core.errors import EdgefaceError
from edgeface.engines.descriptor import Engine, TargetSection


def _check_target(section: dict, where: str) -> None:
    if not isinstance(section["tag"], str) or not section["tag"]:
        raise EdgefaceError(f"{where}: field 'fake.tag' must be a non-empty string")


ENGINE = Engine(
    name="fake",
    title="Fake",
    description="an edgeface ONNX under another name, run by onnxruntime's Python API (tests only)",
    package="onnxruntime",
    extra="ort",
    format="fake",
    suffix=".fake",
    artifact="model.fake",
    runner="fake_engine.runner:FakeBackend",
    read_spec="edgeface.core.artifact:read_onnx_spec",  # the ONNX's own metadata carries the ModelSpec
    precisions=("fp32",),
    bundle_format="fake",
    target=TargetSection(defaults={"tag": "untagged"}, check=_check_target,
                         runner_options=lambda section, precision: {"tag": section["tag"]}),
)
