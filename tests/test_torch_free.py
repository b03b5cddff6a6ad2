"""The promise to Raspberry Pi users, proven: the runtime works where torch cannot be imported.

Each check runs in a fresh interpreter whose import system refuses torch (a meta-path hook, as if it were
not installed), on the shipped default model: importing edgeface, its runtime and the onnxruntime and ncnn
engines; Predictor() on the default model; opening and verifying a bundle; `edgeface info` and
`edgeface predict`. The ncnn path also runs with onnx and onnxruntime refused, as a Pi's `[ncnn]` install has
neither.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeface.core.artifact import WEIGHTS_DIR

REPO = Path(__file__).resolve().parents[1]

BLOCKER = textwrap.dedent("""
    import importlib.abc, os, sys

    BLOCKED = set(os.environ["EDGEFACE_TEST_BLOCK"].split(","))

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {name!r} (refused: a torch-free device)", name=name)
            return None

    sys.meta_path.insert(0, Refuse())
""")


def _run(tmp_path, code: str, blocked=("torch", "torchao", "torchvision"), args=()):
    script = tmp_path / "torch_free_check.py"
    script.write_text(BLOCKER + textwrap.dedent(code))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "EDGEFACE_TEST_BLOCK": ",".join(blocked),
           "EDGEFACE_DEVICE": "x86", "PYTHONDONTWRITEBYTECODE": "1",
           "PYTHONPATH": str(REPO)}  # this checkout, not whichever edgeface the interpreter has installed
    proc = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def crop(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("crop") / "face.png"
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    cv2.imwrite(str(path), cv2.resize(small, (112, 112), interpolation=cv2.INTER_CUBIC))
    return path


def test_the_shipped_default_model_is_there():
    for name in ("default.onnx", "default.ncnn.param", "default.ncnn.bin", "default.spec.json"):
        assert (WEIGHTS_DIR / name).is_file(), f"{name} is shipped for devices without torch"


def test_runtime_imports_predicts_and_verifies_a_bundle_without_torch(tmp_path):
    proc = _run(tmp_path, """
        import json, shutil, sys
        from pathlib import Path

        import numpy as np

        import edgeface, edgeface.runtime
        import edgeface.engines.onnxruntime, edgeface.engines.onnxruntime.runner
        import edgeface.engines.ncnn, edgeface.engines.ncnn.runner
        import edgeface.faces.data, edgeface.faces.blur, edgeface.faces.pose, edgeface.faces.evaluate  # bench --data
        from edgeface import Predictor
        from edgeface.core.artifact import WEIGHTS_DIR, read_onnx_spec
        from edgeface.runtime.bundle import open_bundle, write_manifest

        crops = np.random.default_rng(0).integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)
        with Predictor() as p:                               # the shipped default model, engine chosen here
            r = p.predict(crops)
            default = {"backend": p.backend, "artifact": Path(p.artifact).name, "n": len(r)}
        bundle = Path(sys.argv[1]) / "bundle"
        bundle.mkdir()
        shutil.copy(WEIGHTS_DIR / "default.onnx", bundle / "model.onnx")
        write_manifest(bundle, target="x86", backend="onnxruntime", precision="fp32", artifact="model.onnx",
                       spec=read_onnx_spec(bundle / "model.onnx"))
        info = open_bundle(bundle)                           # reads the manifest, checks every sha256
        with Predictor(bundle) as p:
            rb = p.predict(crops)
        print(json.dumps({"default": default, "bundle_backend": info.backend,
                          "same": bool(np.allclose(rb.pose, r.pose, atol=1e-4)),
                          "torch": "torch" in sys.modules}))
    """, args=[tmp_path])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"default": {"backend": "onnxruntime", "artifact": "default.onnx", "n": 4},
                   "bundle_backend": "onnxruntime", "same": True, "torch": False}


def test_ncnn_runtime_needs_neither_torch_nor_onnx(tmp_path):
    proc = _run(tmp_path, """
        import json, shutil, sys, warnings
        from pathlib import Path

        import numpy as np

        from edgeface import Predictor
        from edgeface.core.artifact import WEIGHTS_DIR, read_ncnn_spec
        from edgeface.runtime.bundle import open_bundle, write_manifest

        crops = np.random.default_rng(0).integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)
        bundle = Path(sys.argv[1]) / "rpi"
        bundle.mkdir()
        for src, dst in (("default.ncnn.param", "model.ncnn.param"), ("default.ncnn.bin", "model.ncnn.bin"),
                         ("default.spec.json", "model.spec.json")):
            shutil.copy(WEIGHTS_DIR / src, bundle / dst)
        write_manifest(bundle, target="rpi", backend="ncnn", precision="fp32", artifact="model.ncnn.param",
                       spec=read_ncnn_spec(bundle / "model.ncnn.param"), target_recipe={"portable": True})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")                  # "deployed for rpi, runs here on x86"
            open_bundle(bundle)
            with Predictor(bundle) as p, Predictor(WEIGHTS_DIR / "default.ncnn.param") as q:
                same = bool(np.allclose(p.predict(crops).pose, q.predict(crops).pose, atol=1e-5))
                backends = [p.backend, q.backend]
        print(json.dumps({"backends": backends, "same": same,
                          "imported": sorted(m for m in ("torch", "onnx", "onnxruntime") if m in sys.modules)}))
    """, blocked=("torch", "torchao", "torchvision", "onnx", "onnxruntime"), args=[tmp_path])
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {"backends": ["ncnn", "ncnn"], "same": True, "imported": []}


CLI = """
    import runpy, sys

    sys.argv = ["edgeface", *sys.argv[1:]]
    try:
        runpy.run_module("edgeface", run_name="__main__")
    finally:
        assert "torch" not in sys.modules, "the CLI imported torch"
"""


def test_cli_info_without_torch(tmp_path):
    proc = _run(tmp_path, CLI, args=["info", "--json", tmp_path / "info.json"])
    report = json.loads((tmp_path / "info.json").read_text())
    assert report["packages"]["torch"] is None and report["backends"]["torch"].startswith("missing")
    assert report["default_model"]["note"].startswith("model details need torch")
    assert report["device"]["cores"] >= 1
    assert "edgeface" in proc.stdout


def test_cli_predict_without_torch(tmp_path, crop):
    proc = _run(tmp_path, CLI, args=["predict", "default", crop, "--crops"])
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert row["backend"] == "onnxruntime" and set(row) >= {"blur", "yaw", "pitch", "roll"}


def test_detector_and_predict_frame_without_torch(tmp_path):
    """Full frames on a device: the shipped YuNet and predict_frame on onnxruntime and on ncnn (onnx refused)."""
    code = """
        import numpy as np
        from edgeface import Predictor
        from edgeface.runtime.detector import FaceDetector
        from edgeface.runtime.stream import IouTracker

        det = FaceDetector()
        frame = np.full((240, 320, 3), 128, np.uint8)
        with Predictor(backend=BACKEND) as p:
            assert p.predict_frame(frame) == []
            assert len(det.detect(frame)) == 0
            assert IouTracker(smooth=True).update(0, 0.0, []) == []
        print("ok", p.backend)
    """
    proc = _run(tmp_path, "BACKEND = 'onnxruntime'\n" + textwrap.dedent(code))
    assert "ok onnxruntime" in proc.stdout
    proc = _run(tmp_path, "BACKEND = 'ncnn'\n" + textwrap.dedent(code),
                blocked=("torch", "torchao", "torchvision", "onnx", "onnxruntime"))
    assert "ok ncnn" in proc.stdout
