"""Issue 15: bad input and hostile files end in one EdgefaceError / one `error:` line with exit 2; never a
traceback, a memory blow-up, a silent wrong answer, a deleted user file or a trusted tampered bundle."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from edgeface.core.errors import EdgefaceError
from edgeface.core.spec import ModelSpec


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "edgeface", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def _one_line_error(r, match: str = ""):
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error:"), r.stderr[-2000:]
    assert match.lower() in r.stderr.lower(), r.stderr[-2000:]


# -- 1. memory blow-ups ------------------------------------------------------------------------------------
@pytest.fixture
def bounded_border(monkeypatch):
    """cv2.copyMakeBorder refusing to make anything over 64 MiB (a crop used to pad a 4.8 GB square)."""
    real = cv2.copyMakeBorder

    def guarded(src, top, bottom, left, right, *a, **k):
        h, w = src.shape[0] + top + bottom, src.shape[1] + left + right
        assert h * w * 3 <= 64 << 20, f"copyMakeBorder asked for {h}x{w}"
        return real(src, top, bottom, left, right, *a, **k)

    monkeypatch.setattr(cv2, "copyMakeBorder", guarded)


def test_huge_box_crops_without_padding_the_whole_square(bounded_border):
    from edgeface.core.preprocess import crop_face

    img = np.random.default_rng(0).integers(0, 255, (480, 640, 3), np.uint8)
    for border in ("replicate", "constant"):
        spec = ModelSpec()
        spec = ModelSpec(crop=type(spec.crop)(border=border))
        crop = crop_face(img, (0, 0, 40000, 40000), spec)
        assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8


def test_clipped_crop_matches_the_padded_one(monkeypatch):
    """The bounded path gives what padding the whole square gave, but for the one row where image meets border."""
    from edgeface.core import preprocess

    img = np.random.default_rng(1).integers(0, 255, (300, 400, 3), np.uint8)
    img = cv2.GaussianBlur(img, (0, 0), 8)
    for box in [(-150, -100, 500, 420), (250, 150, 600, 700), (10, 20, 900, 900)]:
        for border in ("replicate", "constant"):
            spec = ModelSpec(crop=type(ModelSpec().crop)(border=border))
            padded = preprocess.crop_face(img, box, spec)
            monkeypatch.setattr(preprocess, "_MAX_PADDED_BYTES", 0)
            clipped = preprocess.crop_face(img, box, spec)
            monkeypatch.undo()
            diff = np.abs(padded.astype(int) - clipped.astype(int))
            assert diff.mean() < 2.0 and np.percentile(diff, 97) < 8, (box, border, diff.mean())


@pytest.mark.parametrize("box,match", [
    ((0, 0, 1e9, 1e9), "beyond"),
    ((1e12, 0, 10, 10), "beyond"),
    ((float("nan"), 0, 10, 10), "no area"),
    ((0, 0, float("inf"), 10), "no area"),
    ((700, 10, 50, 50), "outside"),
    ((-100, -100, 50, 50), "outside"),
    ((10, 10, -5, 20), "no area"),
])
def test_bad_boxes_are_one_line(box, match):
    from edgeface.core.preprocess import crop_face

    img = np.zeros((480, 640, 3), np.uint8)
    with pytest.raises(EdgefaceError, match=match) as e:
        crop_face(img, box, ModelSpec())
    assert "\n" not in str(e.value)


def test_thread_and_batch_bounds():
    from edgeface.bench.runner import BenchConfig
    from edgeface.core.limits import check_threads, max_threads

    assert check_threads(1) == 1 and check_threads(None) is None and check_threads(max_threads()) == max_threads()
    for bad in (0, -1, max_threads() + 1, 100000, "abc", 2.5, True):
        with pytest.raises(EdgefaceError):
            check_threads(bad)
    cfg = BenchConfig(artifacts=[__file__], batches=[100000000])
    with pytest.raises(EdgefaceError, match="--batch 100000000 needs"):
        cfg.check()
    cfg = BenchConfig(artifacts=[__file__], threads=[100000])
    with pytest.raises(EdgefaceError, match="--threads"):
        cfg.check()


def test_predictor_threads_bounded(arts, tmp_path):
    from edgeface.runtime import bundle
    from edgeface.runtime.predictor import Predictor

    with pytest.raises(EdgefaceError, match="cores"):
        Predictor(arts["onnx"], threads=100000)
    d = tmp_path / "bundle"
    d.mkdir()
    shutil.copy(arts["onnx"], d / "model.onnx")
    bundle.write_manifest(d, target="x86", backend="onnxruntime", precision="fp32", artifact="model.onnx",
                          spec=ModelSpec(), options={"threads": 100000})
    with pytest.raises(EdgefaceError, match="threads"):
        Predictor(d)


def test_cli_threads_bounded(tmp_path):
    img = tmp_path / "face.png"
    cv2.imwrite(str(img), np.zeros((112, 112, 3), np.uint8))
    _one_line_error(_cli("predict", "default", img, "--threads", "100000"), "threads")


def _bomb(depth: int = 9) -> str:
    lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]']
    for i in range(1, depth):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]")
    return "\n".join(lines)


def test_yaml_bomb_in_a_known_field_is_not_printed(tmp_path):
    from edgeface.deploy.targets import load_target

    p = tmp_path / "bomb.yaml"
    p.write_text("bomb:\n" + "\n".join("  " + ln for ln in _bomb().splitlines()) +
                 "\nname: bomb\nbackend: onnxruntime\ndevice: x86\nthreads: *a8\n")
    t0 = time.monotonic()
    with pytest.raises(EdgefaceError) as e:
        load_target(p)
    assert time.monotonic() - t0 < 10 and len(str(e.value)) < 400
    from edgeface.core.recipe import validate

    import yaml

    data = yaml.safe_load(_bomb() + "\nout: *a8\n")
    t0 = time.monotonic()
    with pytest.raises(EdgefaceError, match="'out' must be str") as e:
        validate({"out": data["out"]}, {"out": "runs/x"}, "recipe r.yaml")
    assert time.monotonic() - t0 < 5 and len(str(e.value)) < 300
