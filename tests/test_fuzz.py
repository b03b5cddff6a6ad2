"""Fuzzing (issue 15): hypothesis drives the Predictor API, the box and crop path and CLI verbs on
generated bad files. Every case must end in a result or one EdgefaceError line (exit 2 with one `error:`
line for the CLI): never another exception, never a crash.

Cases run in a subprocess (tests/fuzz_worker.py) that logs each input, flushed to disk, *before* running
it: a segfault in native code (OpenCV, onnxruntime) fails the test with the input that caused it instead
of killing pytest.

CI size: about 2,350 cases in all (EDGEFACE_FUZZ_SCALE=1). The release run, 20x longer (about an hour on
two cores), with hypothesis' example database kept so failures replay:

    EDGEFACE_FUZZ_SCALE=20 python -m pytest tests/test_fuzz.py -p no:randomly -q
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCALE = float(os.environ.get("EDGEFACE_FUZZ_SCALE", "1"))
MODEL = REPO / "edgeface" / "weights" / "default.onnx"


def examples(n: int) -> settings:
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, database=None if SCALE <= 1 else
                    hypothesis.database.DirectoryBasedExampleDatabase(str(REPO / ".hypothesis")),
                    suppress_health_check=list(HealthCheck))


class Worker:
    """One fuzz_worker subprocess; ``run(case)`` -> its answer, restarting it after a crash."""

    def __init__(self, log: Path):
        self.log = log
        self.proc = None

    def _start(self):
        env = dict(os.environ, EDGEFACE_FUZZ_LOG=str(self.log), EDGEFACE_FUZZ_MODEL=str(MODEL),
                   PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
                   OMP_NUM_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "fuzz_worker.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=str(self.log.parent))

    def run(self, case: dict) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        line = json.dumps(case, allow_nan=True)
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer:
            rc = self.proc.wait()
            last = self.log.read_text().splitlines()[-1] if self.log.exists() else "?"
            self.proc = None
            return {"ok": False, "error": f"the worker died (exit {rc}, a native crash?) on the input logged last: "
                                          f"{last[:2000]}"}
        return json.loads(answer)

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    if not MODEL.is_file():
        pytest.skip("the shipped default.onnx is not present")
    pytest.importorskip("onnxruntime")
    d = tmp_path_factory.mktemp("fuzz")
    w = Worker(d / "inputs.log")
    yield w
    w.close()


def check(worker, case):
    answer = worker.run(case)
    assert answer["ok"], f"{answer['error']}\ninput: {json.dumps(case)[:1500]}\n{answer.get('where', '')}"


def test_a_native_crash_names_its_input(worker):
    answer = worker.run({"kind": "_crash", "marker": "the-input-that-crashed"})
    assert not answer["ok"] and "worker died" in answer["error"] and "the-input-that-crashed" in answer["error"]
    assert worker.run({"kind": "predict", "crops": {"__array__": {"shape": [112, 112, 3], "dtype": "uint8",
                                                                  "fill": "zeros"}}})["ok"]  # restarted


# -- strategies ---------------------------------------------------------------------------------------------------
DTYPES = st.sampled_from(["uint8", "uint8", "uint8", "float32", "float64", "int16", "bool", "int64", "uint16"])
FILLS = st.sampled_from(["zeros", "random", "max", "nan", "inf"])
NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=64),
                    st.integers(min_value=-10**6, max_value=10**6), st.floats(-2000, 2000),
                    st.sampled_from([0, -0.0, 1e-300, 1e308, 2**31, -1, 0.5, 1e9]))


def arrays(max_dims: int = 5, max_side: int = 300):
    dims = st.integers(0, max_dims)
    return dims.flatmap(lambda n: st.fixed_dictionaries({
        "shape": st.lists(st.one_of(st.integers(0, 4), st.integers(0, max_side), st.just(3)), min_size=n, max_size=n),
        "dtype": DTYPES, "fill": FILLS, "seed": st.integers(0, 1000), "transpose": st.booleans(),
    })).filter(lambda a: math.prod(a["shape"]) <= 300_000).map(lambda a: {"__array__": a})


def images():
    return st.one_of(
        st.fixed_dictionaries({"shape": st.tuples(st.integers(0, 400), st.integers(0, 400),
                                                  st.sampled_from([1, 3, 4])).map(list),
                               "dtype": st.sampled_from(["uint8", "uint8", "float32", "uint16"]), "fill": FILLS,
                               "seed": st.integers(0, 100)}).map(lambda a: {"__array__": a}),
        arrays(4, 64))


OTHERS = st.one_of(st.none(), st.text(max_size=10), st.integers(), st.floats(),
                   st.dictionaries(st.text(max_size=3), st.integers(), max_size=3).map(lambda d: {"__dict__": d}))
BOX = st.lists(NUMBERS, min_size=0, max_size=6)
BOXES = st.one_of(st.lists(BOX, max_size=4), BOX, OTHERS, arrays(3, 6),
                  st.lists(st.lists(st.one_of(NUMBERS, st.text(max_size=2), st.none()), min_size=4, max_size=4),
                           max_size=3))


# -- the Predictor API ------------------------------------------------------------------------------------------------
@examples(600)
@given(crops=st.one_of(arrays(), st.lists(arrays(3, 200), max_size=4), OTHERS), rgb=st.booleans())
def test_fuzz_predict(worker, crops, rgb):
    check(worker, {"kind": "predict", "crops": crops, "rgb": rgb})


@examples(600)
@given(frame=images(), boxes=BOXES)
def test_fuzz_predict_image(worker, frame, boxes):
    check(worker, {"kind": "predict_image", "frame": frame, "boxes": boxes})


# -- the box and crop path ---------------------------------------------------------------------------------------------
@examples(600)
@given(image=images(), box=st.one_of(BOX, OTHERS), size=st.integers(16, 160),
       rule=st.fixed_dictionaries({"scale": st.floats(0.1, 10), "shift_x": st.floats(-2, 2),
                                   "shift_y": st.floats(-2, 2),
                                   "border": st.sampled_from(["replicate", "constant"])}),
       transform=st.fixed_dictionaries({}, optional={"angle_deg": st.floats(-720, 720), "flip": st.booleans(),
                                                     "scale": st.floats(0.05, 20),
                                                     "shift": st.tuples(st.floats(-3, 3), st.floats(-3, 3))}))
def test_fuzz_crop(worker, image, box, size, rule, transform):
    check(worker, {"kind": "crop", "image": image, "box": box, "size": size, "rule": rule, "transform": transform})


# -- CLI verbs and loaders on generated bad files
# ------------------------------------------------------------------------
def _mutate(base: bytes):
    return st.one_of(
        st.binary(max_size=400),
        st.builds(lambda cut, junk: base[:cut] + junk, st.integers(0, len(base)), st.binary(max_size=40)),
        st.builds(lambda i, b: base[:i] + bytes([b]) + base[i + 1:], st.integers(0, max(0, len(base) - 1)),
                  st.integers(0, 255)),
        st.text(max_size=300).map(lambda t: t.encode("utf-8")),
        st.text(max_size=100).map(lambda t: t.encode("utf-16")),
    )


X86_TARGET = REPO / "recipes" / "targets" / "x86.yaml"
TARGET = X86_TARGET.read_bytes() if X86_TARGET.is_file() else b""
RECIPE = (REPO / "recipes" / "train" / "mbv2_025.yaml").read_bytes()
BOXES_CSV = b"file,x,y,w,h\nface.png,10,10,60,60\n"


@examples(250)
@given(what=st.sampled_from(["target", "recipe"]), data=st.one_of(_mutate(TARGET), _mutate(RECIPE)))
def test_fuzz_recipe_and_target_files(worker, what, data):
    check(worker, {"kind": "load", "what": what, "path": "generated.yaml", "data": data.hex()})


@examples(150)
@given(data=_mutate(BOXES_CSV), threads=st.sampled_from([None, "0", "1", "-3", "100000", "abc"]))
def test_fuzz_cli_predict_boxes(worker, data, threads):
    import cv2
    import numpy as np

    img = Path(worker.log.parent) / "face.png"
    if not img.exists():
        cv2.imwrite(str(img), np.full((120, 160, 3), 90, np.uint8))
    argv = ["predict", str(MODEL), str(img), "--boxes", "boxes.csv"] + (["--threads", threads] if threads else [])
    check(worker, {"kind": "cli", "argv": argv, "files": {"boxes.csv": data.hex()}})


@examples(150)
@given(data=st.one_of(st.binary(max_size=300), st.just(b"[" * 100000), st.text(max_size=200).map(str.encode)))
def test_fuzz_cli_predict_manifest(worker, data):
    bundle = Path(worker.log.parent) / "bundle"
    bundle.mkdir(exist_ok=True)
    if not (bundle / "model.onnx").exists():
        import shutil

        shutil.copy(MODEL, bundle / "model.onnx")
    img = Path(worker.log.parent) / "crop.png"
    if not img.exists():
        import cv2
        import numpy as np

        cv2.imwrite(str(img), np.full((112, 112, 3), 90, np.uint8))
    check(worker, {"kind": "cli", "argv": ["predict", str(bundle), str(img)],
                   "files": {str(bundle / "manifest.json"): data.hex()}})
