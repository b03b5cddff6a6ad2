"""An engine is its package plus one registry entry: the fake engine of tests/fake_engine/, a package outside
edgeface, registered here, runs through the Predictor, bench and deploy with nothing in edgeface naming it.

This file and tests/fake_engine/ are the whole of it (docs/architecture.md, "Adding an engine", walks through
the same steps). bench runs each artifact in a process of its own, which registers the engine from
$EDGEFACE_ENGINES.
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from edgeface.core.errors import EdgefaceError
from edgeface.engines import registry

FAKE = Path(__file__).resolve().parent / "fake_engine"


@pytest.fixture
def fake(monkeypatch):
    """The fake engine registered (and its exporter), for this process and the processes it starts."""
    from edgeface.export import EXPORTERS, register_exporter

    monkeypatch.syspath_prepend(str(FAKE.parent))
    from fake_engine import ENGINE
    from fake_engine.export import export_fake

    registry.register(ENGINE)
    register_exporter(ENGINE.format, export_fake)
    monkeypatch.setenv(registry.ENV_ENGINES, "fake_engine:ENGINE")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(FAKE.parent), os.environ.get("PYTHONPATH")])))
    try:
        yield ENGINE
    finally:
        EXPORTERS.pop(ENGINE.format, None)
        registry.unregister(ENGINE.name)
        sys.modules.pop("fake_engine.runner", None)


@pytest.fixture
def artifact(fake, checkpoint, tmp_path):
    from edgeface.export import export

    return export("fake", str(checkpoint), tmp_path / "export")


def _crops(n=6):
    from edgeface.core.spec import ModelSpec
    from edgeface.deploy.verify import synthetic_faces

    return synthetic_faces(ModelSpec(), n)


def test_registered_engine_joins_every_list(fake):
    from edgeface.deploy.targets import backends, target_schema
    from edgeface.export import formats
    from edgeface.runtime.bundle import model_suffixes

    assert registry.get("fake") is fake and "fake" in registry.names() and "fake" in registry.available_backends()
    assert registry.engine_of_artifact("x/model.fake") is fake
    assert "fake" in formats() and "fake" in backends() and ".fake" in model_suffixes()
    assert target_schema()["fake"] == {"tag": "untagged"}
    with pytest.raises(EdgefaceError, match="suffix"):  # an artifact belongs to one engine
        registry.register(type(fake)(**{**fake.__dict__, "name": "fake2", "format": "fake2"}))
    with pytest.raises(EdgefaceError, match="edgeface's own"):
        registry.unregister("onnxruntime")


def test_predictor_runs_it(fake, artifact, checkpoint):
    from edgeface.runtime.predictor import Predictor

    assert artifact.name == "model.fake"
    crops = _crops()
    with Predictor(checkpoint, backend="torch") as ref:
        want = ref.predict(crops)
    for backend in ("auto", "fake"):
        with Predictor(artifact, backend=backend) as p:
            got = p.predict(crops)
            assert p.backend == "fake"
        np.testing.assert_allclose(got.pose, want.pose, atol=1e-2)
        np.testing.assert_allclose(got.blur, want.blur, atol=1e-3)
    with pytest.raises(EdgefaceError, match="cannot run"):  # its format is its own
        Predictor(artifact, backend="onnxruntime")


def test_bench_runs_it(fake, artifact):
    from edgeface.bench.runner import BenchConfig, run_bench

    rows, _ = run_bench(BenchConfig([str(artifact)], warmup=1, iters=3, duration=None, rounds=1, reference="none"))
    assert [r["backend"] for r in rows] == ["fake"]
    assert rows[0]["latency_ms"]


def test_deploy_bundles_and_verifies_it(fake, checkpoint, tmp_path):
    from edgeface.deploy import deploy
    from edgeface.runtime.predictor import Predictor

    result = deploy(str(FAKE / "fake.yaml"), str(checkpoint), out=tmp_path / "bundle")
    assert result.backend == "fake" and result.verify["passed"]
    assert "model.fake" in result.manifest["files"] and result.manifest["options"]["tag"] == "from-the-target"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deployed for the "fake" target, run on this machine
        with Predictor(tmp_path / "bundle") as p:
            assert p.backend == "fake" and p.info()["tag"] == "from-the-target"
            assert p.predict(_crops(2)).pose.shape == (2, 3)
