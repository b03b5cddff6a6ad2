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


# -- 2. tracebacks -> one line ------------------------------------------------------------------------------
def test_output_paths_of_the_wrong_kind(tmp_path):
    d = tmp_path / "adir"
    d.mkdir()
    f = tmp_path / "afile"
    f.write_text("x")
    r = _cli("info", "--json", d)
    _one_line_error(r, "folder")
    assert not list(tmp_path.glob(".*.tmp")), "info --json DIR left a temporary file"
    _one_line_error(_cli("export", "--out", f), "is a file")
    _one_line_error(_cli("eval", "--data", f), "is a file")
    _one_line_error(_cli("quantize", "--calib", d, "--out", f, "--force"), "is a file")
    _one_line_error(_cli("predict", "default", f, "--json", d), "folder")


@pytest.mark.parametrize("change,match", [
    ({"input_size": 0}, "input_size"),
    ({"input_size": 10**9}, "input_size"),
    ({"crop": {"scale": 0}}, "crop.scale"),
    ({"crop": {"border": "wrap"}}, "crop.border"),
    ({"outputs": [{"name": "pose", "fields": ["yaw", "pitch", "roll"], "units": ""},
                  {"name": "blur", "fields": ["blur"], "units": ""}]}, "outputs"),
    ({"width": 100}, "width"),
    ({"std": [127.5, 0, 127.5]}, "std"),
    ({"mean": [float("nan"), 0, 0]}, "mean"),
    ({"channel_order": "XYZ"}, "channel_order"),
    ({"mean": "abc"}, "mean|malformed"),
    ({"crop": [1, 2]}, "malformed"),
])
def test_bad_spec_values(change, match):
    d = ModelSpec().to_dict()
    d.update(change)
    with pytest.raises(EdgefaceError, match=match) as e:
        ModelSpec.from_dict(d)
    assert "\n" not in str(e.value)
    with pytest.raises(EdgefaceError):
        ModelSpec.from_json(json.dumps(d))


def test_deep_json_spec_and_manifest(tmp_path):
    from edgeface.runtime.bundle import read_manifest

    deep = "[" * 200000 + "]" * 200000
    with pytest.raises(EdgefaceError, match="nested"):
        ModelSpec.from_json(deep)
    (tmp_path / "manifest.json").write_text(deep)
    with pytest.raises(EdgefaceError, match="nested"):
        read_manifest(tmp_path)


def _recipe(tmp_path, section, key, value, name="r.yaml"):
    import yaml

    from edgeface.core.recipe import RECIPES_DIR

    data = yaml.safe_load((RECIPES_DIR / "train" / "mbv2_025.yaml").read_text())
    data.setdefault(section, {})[key] = value
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.parametrize("section,key,value,match", [
    ("train", "batch_size", 0, "train.batch_size"),
    ("train", "lr", -0.1, "train.lr"),
    ("train", "threads", 0, "train.threads"),
    ("train", "workers", -1, "train.workers"),
    ("train", "epochs", 0, "train.epochs"),
    ("train", "epochs", -1, "train.epochs"),
    ("augment", "scale", [0.85], "augment.scale"),
    ("augment", "flip_p", 1.5, "augment.flip_p"),
    ("data", "sets", [{"name": "a", "weight": float("nan")}], "weight"),
    ("model", "input_size", 0, "input_size"),
    ("model", "crop_scale", 0.0, "crop_scale|crop.scale"),
])
def test_bad_recipe_values(tmp_path, section, key, value, match):
    from edgeface.model.train import load_train_recipe

    with pytest.raises(EdgefaceError, match=match) as e:
        load_train_recipe(_recipe(tmp_path, section, key, value))
    assert "\n" not in str(e.value)


def test_cli_overrides_bounded():
    from edgeface.model.train import apply_cli_overrides

    for bad in (0, -1):
        with pytest.raises(EdgefaceError, match="--epochs"):
            apply_cli_overrides({"train": {}, "data": {}}, epochs=bad)


def test_train_init_with_other_shapes(tmp_path):
    from conftest import random_checkpoint

    from edgeface.model.train import _init_state

    ck = random_checkpoint(tmp_path / "wide.pt", width=0.5)
    with pytest.raises(EdgefaceError, match="other shapes") as e:
        _init_state(str(ck), ModelSpec(width=0.25))
    assert "\n" not in str(e.value)


def test_text_files_not_utf8(tmp_path):
    from edgeface.cli.predict import read_boxes_csv
    from edgeface.core.recipe import load_yaml
    from edgeface.deploy.targets import load_target

    u16 = tmp_path / "r16.yaml"
    u16.write_bytes("kind: train\n".encode("utf-16"))
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("name: caf\xe9\n".encode("latin-1"))
    for p in (u16, latin):
        with pytest.raises(EdgefaceError, match="UTF"):
            load_yaml(p)
        with pytest.raises(EdgefaceError, match="UTF"):
            load_target(p)
    boxes = tmp_path / "boxes.csv"
    boxes.write_bytes("file,x,y,w,h\nimg.png,1,2,3,4\n".encode("utf-16"))
    with pytest.raises(EdgefaceError, match="UTF"):
        read_boxes_csv(boxes)
    with pytest.raises(EdgefaceError, match="folder"):
        read_boxes_csv(tmp_path)


@pytest.fixture(scope="module")
def onnx_pred(arts):
    from edgeface.runtime.predictor import Predictor

    with Predictor(arts["onnx"], threads=1) as p:
        yield p


@pytest.mark.parametrize("call", [
    lambda p: p.predict(np.zeros((1, 0, 5, 3), np.uint8)),
    lambda p: p.predict(np.zeros((0, 0, 3), np.uint8)),
    lambda p: p.predict([np.zeros((0, 7, 3), np.uint8)]),
    lambda p: p.predict_image(np.zeros((0, 0, 3), np.uint8), [[0, 0, 1, 1]]),
    lambda p: p.predict_image(np.zeros((0, 0), np.uint8), [[0, 0, 1, 1]]),
    lambda p: p.predict_image(np.zeros((50, 50, 3), np.uint8), {"x": 1, "y": 2, "w": 3, "h": 4}),
    lambda p: p.predict_image(np.zeros((50, 50, 3), np.uint8), [[np.nan, 0, 10, 10]]),
    lambda p: p.predict_image(np.zeros((50, 50, 3), np.uint8), [[0, 0, 1e300, 1e300]]),
    lambda p: p.predict_image(np.zeros((50, 50, 3), np.uint8), [["a", "b", "c", "d"]]),
    lambda p: p.predict_image(np.zeros((50, 50, 3), np.uint8), [[1, 2, 3]]),
    lambda p: p.predict_image(np.zeros((50, 50, 3), np.uint8), [[60, 60, 10, 10]]),
])
def test_predictor_api_bad_input(onnx_pred, call):
    with pytest.raises(EdgefaceError) as e:
        call(onnx_pred)
    assert "\n" not in str(e.value)


def test_manifest_threads_not_a_number(arts, tmp_path):
    from edgeface.runtime import bundle
    from edgeface.runtime.predictor import Predictor

    d = tmp_path / "bundle"
    d.mkdir()
    shutil.copy(arts["onnx"], d / "model.onnx")
    bundle.write_manifest(d, target="x86", backend="onnxruntime", precision="fp32", artifact="model.onnx",
                          spec=ModelSpec(), options={"threads": "abc"})
    with pytest.raises(EdgefaceError, match="threads"):
        Predictor(d)


# -- 3. silent wrong answers ----------------------------------------------------------------------------------
@pytest.mark.parametrize("blur,yaw,match", [
    (float("nan"), 0.0, "non-finite"),
    (0.5, float("inf"), "non-finite"),
    (192.8, 0.0, "blur"),
    (-0.2, 0.0, "blur"),
    (0.5, 1012.0, "angle"),
])
def test_out_of_range_outputs_are_errors(onnx_pred, monkeypatch, blur, yaw, match):
    def fake_run(x):
        n = x.shape[0]
        return {"blur": np.full((n, 1), blur, np.float32), "pose": np.tile(np.float32([yaw, 0, 0]), (n, 1))}

    monkeypatch.setattr(onnx_pred._backend, "run", fake_run)
    with pytest.raises(EdgefaceError, match=match) as e:
        onnx_pred.predict(np.zeros((2, 112, 112, 3), np.uint8))
    assert str(onnx_pred.artifact) in str(e.value) and "\n" not in str(e.value)


def test_in_range_outputs_pass(onnx_pred):
    r = onnx_pred.predict(np.random.default_rng(0).integers(0, 255, (4, 112, 112, 3), np.uint8))
    assert np.isfinite(r.pose).all() and ((r.blur >= 0) & (r.blur <= 1)).all()


@pytest.mark.parametrize("col,value,match", [
    ("yaw", "1e308", "yaw"), ("pitch", "inf", "pitch"), ("roll", "-500", "roll"), ("blur", "3", "blur"),
    ("x", "1e300", "box"),
])
def test_labels_out_of_range(tmp_path, col, value, match):
    from edgeface.model.data import load_samples

    row = {"file": "a.png", "x": "1", "y": "1", "w": "10", "h": "10", "yaw": "1", "pitch": "2", "roll": "3",
           "blur": "0.5", "split": "val"}
    row[col] = value
    (tmp_path / "labels.csv").write_text(",".join(row) + "\n" + ",".join(row.values()) + "\n")
    with pytest.raises(EdgefaceError, match=match):
        load_samples(tmp_path, split="val", require_labels=True)
