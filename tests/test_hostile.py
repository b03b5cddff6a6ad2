"""Issue 15: bad input and hostile files end in one EdgefaceError / one `error:` line with exit 2; never a
traceback, a memory blow-up, a silent wrong answer, a deleted user file or a trusted tampered bundle."""
from __future__ import annotations

import json
from pathlib import Path
import shutil
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from edgeface.core.errors import EdgefaceError
from edgeface.core.spec import ModelSpec
from conftest import ed25519_keypair, edgeface_cli as _cli, one_line_error as _one_line_error






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
    import os

    os.mkfifo(tmp_path / "fifo.csv")  # reading it waited forever for a writer
    with pytest.raises(EdgefaceError, match="not a regular file"):
        read_boxes_csv(tmp_path / "fifo.csv")


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
    lambda p: p.predict_image(np.zeros((1, 1, 4), np.float64), None),  # found by tests/test_fuzz.py
    lambda p: p.predict_image(np.zeros((5, 5), np.float32), [[0, 0, 2, 2]]),
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
    for mirror in (False, True):  # with the mirror average, checked before the mean (+1012 and -1012 give 0)
        monkeypatch.setattr(onnx_pred, "mirror", mirror)
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
    from edgeface.faces.data import load_samples

    row = {"file": "a.png", "x": "1", "y": "1", "w": "10", "h": "10", "yaw": "1", "pitch": "2", "roll": "3",
           "blur": "0.5", "split": "val"}
    row[col] = value
    (tmp_path / "labels.csv").write_text(",".join(row) + "\n" + ",".join(row.values()) + "\n")
    with pytest.raises(EdgefaceError, match=match):
        load_samples(tmp_path, split="val", require_labels=True)


# -- 4. bundles ------------------------------------------------------------------------------------------------
def _bundle(arts, d, **kw):
    from edgeface.core.artifact import read_onnx_spec
    from edgeface.runtime import bundle

    d.mkdir(parents=True, exist_ok=True)
    shutil.copy(arts["onnx"], d / "model.onnx")
    bundle.write_manifest(d, target="x86", backend="onnxruntime", precision="fp32", artifact="model.onnx",
                          spec=read_onnx_spec(arts["onnx"]), **kw)
    return d


def _edit_manifest(d, change, reseal: bool):
    from edgeface.runtime.bundle import manifest_digest

    m = json.loads((d / "manifest.json").read_text())
    change(m)
    if reseal:  # what someone who can rewrite the manifest does
        m["bundle_sha256"] = manifest_digest(m)
    (d / "manifest.json").write_text(json.dumps(m))


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    return {name: ed25519_keypair(d, name)[:2] for name in ("good", "other")}


def test_manifest_is_covered_by_its_digest(arts, tmp_path):
    from edgeface.runtime.predictor import Predictor

    d = _bundle(arts, tmp_path / "b")
    with Predictor(d, threads=1) as p:
        assert p.bundle is not None

    def std(m):
        m["spec"]["std"] = [1.0, 1.0, 1.0]
    _edit_manifest(d, std, reseal=False)
    with pytest.raises(EdgefaceError, match="bundle_sha256"):
        Predictor(d)


def test_tampered_model_with_its_hash_updated(arts, tmp_path):
    from edgeface.core.io import sha256_file
    from edgeface.runtime.predictor import Predictor

    d = _bundle(arts, tmp_path / "b")
    with open(d / "model.onnx", "r+b") as fh:
        fh.seek(300)
        fh.write(b"\x00\x01\x02")

    def rehash(m):
        m["files"]["model.onnx"]["sha256"] = sha256_file(d / "model.onnx")
    _edit_manifest(d, rehash, reseal=False)
    with pytest.raises(EdgefaceError, match="bundle_sha256"):
        Predictor(d)


@pytest.mark.parametrize("options,match", [
    ({"optimized_model_path": "/tmp/evil.onnx"}, "may not set"),
    ({"providers": ["CPUExecutionProvider"]}, "may not set"),
    ({"threads": 100000}, "threads"),
    ({"threads": "abc"}, "threads"),
    ({"allow_spinning": "yes"}, "not an allowed value"),
])
def test_manifest_options_whitelisted(arts, tmp_path, options, match):
    from edgeface.runtime.predictor import Predictor

    d = _bundle(arts, tmp_path / "b")
    _edit_manifest(d, lambda m: m.__setitem__("options", options), reseal=True)
    with pytest.raises(EdgefaceError, match=match):
        Predictor(d)
    assert not (tmp_path / "evil.onnx").exists()


@pytest.mark.parametrize("kind", ["dir", "dangling", "link"])
def test_manifest_entry_of_any_kind_is_a_bundle(arts, tmp_path, kind):
    from edgeface.runtime.predictor import Predictor

    d = _bundle(arts, tmp_path / "b")
    m = d / "manifest.json"
    real = m.read_text()
    m.unlink()
    if kind == "dir":
        m.mkdir()
    elif kind == "dangling":
        m.symlink_to(tmp_path / "nowhere.json")
    else:
        (tmp_path / "outside.json").write_text(real)
        m.symlink_to(tmp_path / "outside.json")
    with pytest.raises(EdgefaceError, match="manifest.json"):
        Predictor(d)


def test_no_symlinks_inside_a_bundle(arts, tmp_path):
    from edgeface.runtime.predictor import Predictor

    d = _bundle(arts, tmp_path / "b")
    outside = tmp_path / "outside.onnx"
    shutil.move(d / "model.onnx", outside)
    (d / "model.onnx").symlink_to(outside)  # same bytes, same hash: only the link gives it away
    with pytest.raises(EdgefaceError, match="symbolic link"):
        Predictor(d)
    (d / "model.onnx").unlink()
    shutil.copy(outside, d / "model.onnx")
    sub = tmp_path / "etc"
    sub.mkdir()
    (sub / "passwd").write_text("root:x:0:0\n")
    (d / "sub").symlink_to(sub)

    def add(m):
        m["files"]["sub/passwd"] = {"sha256": "0" * 64, "bytes": 11}
    _edit_manifest(d, add, reseal=True)
    with pytest.raises(EdgefaceError, match="symbolic link"):
        Predictor(d)


def test_signed_bundles(arts, tmp_path, keys, monkeypatch):
    from edgeface.runtime.predictor import Predictor
    from edgeface.runtime.signing import sign_manifest

    good_key, good_pub = keys["good"]
    _, other_pub = keys["other"]
    d = _bundle(arts, tmp_path / "b")
    with pytest.raises(EdgefaceError, match="not signed"):
        Predictor(d, trusted_keys=[good_pub])
    sign_manifest(d, good_key)
    with Predictor(d, threads=1, trusted_keys=[good_pub]) as p:
        assert len(p.predict(np.zeros((1, 112, 112, 3), np.uint8))) == 1
    with Predictor(d, threads=1) as p:  # signatures are optional for a device that trusts no key
        assert p.bundle is not None
    with pytest.raises(EdgefaceError, match="not signed by a trusted key"):
        Predictor(d, trusted_keys=[other_pub])
    monkeypatch.setenv("EDGEFACE_TRUSTED_KEYS", str(other_pub))
    with pytest.raises(EdgefaceError, match="not signed by a trusted key"):
        Predictor(d)
    monkeypatch.setenv("EDGEFACE_TRUSTED_KEYS", str(good_pub))
    with Predictor(d, threads=1):
        pass
    # A rewritten, resealed manifest keeps its digest right but breaks the signature.
    _edit_manifest(d, lambda m: m["spec"].__setitem__("mean", [0.0, 0.0, 0.0]), reseal=True)
    with pytest.raises(EdgefaceError, match="not signed by a trusted key"):
        Predictor(d)
    # With trusted keys, a plain folder or a loose artifact is refused (deleting the manifest does not help).
    (d / "manifest.json").unlink()
    with pytest.raises(EdgefaceError, match="not a bundle"):
        Predictor(d)
    with pytest.raises(EdgefaceError, match="not a bundle"):
        Predictor(arts["onnx"])


def test_deploy_sign_checks_its_key_first(tmp_path):
    from edgeface.deploy.pipeline import deploy

    bad = tmp_path / "bad.key"
    bad.write_text("not a key")
    with pytest.raises(EdgefaceError, match="signing key"):
        deploy("x86", sign=bad, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


# -- 5. no data loss, no leaks ------------------------------------------------------------------------------------
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_quantize_force_never_deletes_a_user_folder(tmp_path):
    from edgeface.quantize.ptq import check_quantize_out, quantize

    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("x")
    calib = tmp_path / "calib"
    calib.mkdir()
    for i in range(3):
        cv2.imwrite(str(calib / f"{i}.png"), np.full((112, 112, 3), 40 * i, np.uint8))
    with pytest.raises(EdgefaceError, match="did not write"):
        quantize(None, calib, out=precious, force=True)
    assert (precious / "thesis.txt").read_text() == "x"
    _one_line_error(_cli("quantize", "--calib", calib, "--out", precious, "--force"), "did not write")
    assert (precious / "thesis.txt").read_text() == "x"
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "quantize.json").write_text("{}")  # a file name proves nothing (issue 23): refused
    with pytest.raises(EdgefaceError, match="did not write"):
        check_quantize_out(ours, force=True)
    from edgeface.core.io import atomic_write_json, seal_record

    (ours / "model.onnx").write_bytes(b"int8")
    atomic_write_json(ours / "quantize.json", seal_record({"method": "minmax"}, ours, skip={"quantize.json"}))
    check_quantize_out(ours, force=True)  # quantize's own sealed output: --force may replace it
    with pytest.raises(EdgefaceError, match="--force"):
        check_quantize_out(ours, force=False)


def test_stale_partials_and_temp_folders_are_cleaned(tmp_path, monkeypatch):
    import os
    import tempfile

    from edgeface.core.io import clean_stale_partials, clean_stale_temp, temp_dir

    dead = _dead_pid()
    out = tmp_path / "quantized"
    stale = tmp_path / f".quantized.partial-{dead}-abc"
    live = tmp_path / f".quantized.partial-{os.getpid()}-abc"
    stale.mkdir()
    live.mkdir()
    assert clean_stale_partials(out) == [stale] and live.is_dir()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    (tmp / f"edgeface-fp32-{dead}-xyz").mkdir()
    (tmp / "edgeface-q-old").mkdir()
    (tmp / "someone-else").mkdir()
    with temp_dir("fp32") as mine:
        removed = clean_stale_temp()
        assert [p.name for p in removed] == [f"edgeface-fp32-{dead}-xyz"] and Path(mine).is_dir()
    assert not Path(mine).exists()  # removed on normal exit
    os.utime(tmp / "edgeface-q-old", (0, 0))  # no PID in its name: stale after a day
    assert [p.name for p in clean_stale_temp()] == ["edgeface-q-old"]
    assert (tmp / "someone-else").is_dir()


@pytest.mark.parametrize("fmt", ["onnx", "ncnn"])
def test_export_refuses_a_model_that_answers_nan(tmp_path, fmt):
    """A checkpoint with NaN weights is refused before anything is written (it used to export and answer NaN)."""
    import torch

    from conftest import random_checkpoint
    from edgeface.engines.torch.checkpoint import load_model, save_checkpoint

    model, spec, _ = load_model(random_checkpoint(tmp_path / "random.pt"))
    with torch.no_grad():
        model.pose_head.weight[0, 0] = float("nan")
    save_checkpoint(tmp_path / "nan.pt", model, spec, {"note": "a NaN weight"})
    out = tmp_path / "out"
    _one_line_error(_cli("export", tmp_path / "nan.pt", "--format", fmt, "--out", out, timeout=300), "non-finite")
    assert not out.exists()


# -- 6. found by the bad-input probe (round 2) -----------------------------------------------------------------
def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header declares width x height: a few hundred bytes that would decode to gigabytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 10000))
                     + chunk(b"IEND", b""))
    return path


def test_image_bombs_are_refused_from_their_header(tmp_path):
    """A 2.6 MB PNG declaring 30000 x 30000 used to decode to 5 GB (60000 x 60000: a cv2.error traceback)."""
    from edgeface.core.preprocess import image_header_size, read_image

    for side in (30000, 60000):
        p = _png_header_only(tmp_path / f"bomb{side}.png", side, side)
        t0 = time.monotonic()
        with pytest.raises(EdgefaceError, match="declares") as e:
            read_image(p)
        assert time.monotonic() - t0 < 2 and "\n" not in str(e.value)
    with pytest.raises(EdgefaceError, match="folder"):
        read_image(tmp_path)
    import os

    os.mkfifo(tmp_path / "fifo.png")  # opening it waited forever for a writer
    with pytest.raises(EdgefaceError, match="not a regular file"):
        read_image(tmp_path / "fifo.png")
    img = np.zeros((123, 457, 3), np.uint8)
    for ext in ("png", "jpg", "bmp", "webp", "tif", "ppm"):
        cv2.imwrite(str(tmp_path / f"h.{ext}"), img)
        assert image_header_size(tmp_path / f"h.{ext}") == (457, 123), ext
        assert read_image(tmp_path / f"h.{ext}").shape == (123, 457, 3)
    _one_line_error(_cli("predict", "default", tmp_path / "bomb60000.png", "--crops"), "declares")


def test_outputs_never_replace_an_input(tmp_path):
    """`--json` / `--draw` / `--stats-cache` naming an input used to overwrite it (bench --json model.onnx replaced
    the model with its own report)."""
    model = tmp_path / "model.onnx"
    shutil.copy(Path(__file__).resolve().parents[1] / "edgeface" / "weights" / "default.onnx", model)
    img = tmp_path / "face.png"
    cv2.imwrite(str(img), np.full((112, 112, 3), 90, np.uint8))
    img2 = tmp_path / "face2.png"
    cv2.imwrite(str(img2), np.full((112, 112, 3), 120, np.uint8))
    before = {p: p.read_bytes() for p in (model, img, img2)}
    _one_line_error(_cli("predict", model, img, "--crops", "--json", img), "input")
    _one_line_error(_cli("predict", model, img, img2, "--draw", tmp_path), "input")  # --draw DIR beside the images
    _one_line_error(_cli("bench", model, "--batch", "1", "--iters", "1", "--json", model), "input")
    _one_line_error(_cli("quantize", model, "--calib", tmp_path, "--stats-cache", model, "--out", tmp_path / "q"),
                    "input")
    assert {p: p.read_bytes() for p in before} == before
    assert not (tmp_path / "q").exists()


def test_bench_report_never_replaces_a_users_readme(tmp_path):
    from edgeface.bench.report import check_report_dir, markdown_summary

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "README.md").write_text("# my project\n")
    with pytest.raises(EdgefaceError, match="README.md"):
        check_report_dir(notes)
    _one_line_error(_cli("bench", "x.onnx", "--report", notes), "README.md")
    assert (notes / "README.md").read_text() == "# my project\n"
    old = tmp_path / "old-report"
    old.mkdir()
    (old / "README.md").write_text(markdown_summary([], []))
    check_report_dir(old)  # an earlier report is replaced
    check_report_dir(tmp_path / "new")


def test_numeric_options_out_of_range(tmp_path):
    img = tmp_path / "face.png"
    cv2.imwrite(str(img), np.full((112, 112, 3), 90, np.uint8))
    _one_line_error(_cli("quantize", "--calib", tmp_path, "--max-drop", "nan", "--out", tmp_path / "q"), "--max-drop")
    _one_line_error(_cli("predict", "default", img, "--max-frames", "0"), "--max-frames")
    _one_line_error(_cli("deploy", "--target", "x86", "--batch", "100000000", "--out", tmp_path / "b"), "--batch")
    from edgeface.deploy import deploy

    for batch in (100000000, True, 0):  # the API checks it too, before any export
        with pytest.raises(EdgefaceError, match="--batch must be an integer from 1 to"):
            deploy("x86", batch=batch, out=tmp_path / "b")
    assert not (tmp_path / "q").exists() and not (tmp_path / "b").exists()


def test_csv_files_the_csv_module_refuses(tmp_path):
    """A field over the csv module's 128 kB limit used to end in a _csv.Error traceback (labels and boxes)."""
    from edgeface.cli.predict import read_boxes_csv
    from edgeface.faces.data import load_samples

    (tmp_path / "labels.csv").write_text("file,x,y,w,h,yaw\na.png,1,2,30,30," + "1" * 200000 + "\n")
    with pytest.raises(EdgefaceError, match="line 2 is not CSV") as e:
        load_samples(tmp_path, split=None)
    assert "\n" not in str(e.value)
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("file,x,y,w,h\na.png,1,2,30," + "3" * 200000 + "\n")
    with pytest.raises(EdgefaceError, match="not CSV"):
        read_boxes_csv(boxes)


@pytest.mark.parametrize("col,value", [("yaw", "abc"), ("blur", "0,5"), ("t_pitch", "12deg")])
def test_labels_that_are_not_numbers(tmp_path, col, value):
    """A typo in a label used to read as 'unknown' (NaN) silently: the row dropped out of the metrics."""
    from edgeface.faces.data import load_samples

    row = {"file": "a.png", "x": "1", "y": "1", "w": "10", "h": "10", "yaw": "1", "pitch": "2", "roll": "3",
           "t_pitch": "", "blur": "0.5"}
    row[col] = value
    (tmp_path / "labels.csv").write_text(",".join(row) + "\n" + ",".join(f'"{v}"' for v in row.values()) + "\n")
    with pytest.raises(EdgefaceError, match=f"{col} .* is not a number"):
        load_samples(tmp_path, split=None)
    row[col] = "nan" if col != "blur" else ""  # NaN and empty stay 'unknown'
    (tmp_path / "labels.csv").write_text(",".join(row) + "\n" + ",".join(f'"{v}"' for v in row.values()) + "\n")
    assert len(load_samples(tmp_path, split=None)) == 1


@pytest.mark.parametrize("options,match", [
    ({"threads": 100000}, "threads"),        # onnxruntime started 100000 threads: 16 GB and minutes
    ({"threads": -1}, "threads"),
    ({"upscale_below": 100000}, "upscale_below"),  # a 10 x 10 frame enlarged to 30 GB
    ({"top_k": -1}, "top_k"),
    ({"top_k": "a"}, "top_k"),
    ({"min_size": float("nan")}, "min_size"),      # silently kept every face
    ({"min_size": "a"}, "min_size"),
    ({"score_threshold": "a"}, "score_threshold"),
    ({"pad": True}, "pad"),
    ({"box_map": "missing.json"}, "does not exist"),  # silently fell back to raw boxes
    ({"box_map": 5}, "box_map"),
])
def test_face_detector_options(tmp_path, options, match):
    from edgeface.runtime.detector import FaceDetector

    with pytest.raises(EdgefaceError, match=match) as e:
        FaceDetector(**options)
    assert "\n" not in str(e.value)


def test_face_detector_bad_files(tmp_path):
    from edgeface.runtime.detector import FaceDetector

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage" * 50)
    for engine in ("auto", "opencv"):  # auto fell back to OpenCV, which raised its own cv2.error
        with pytest.raises(EdgefaceError, match="YuNet") as e:
            FaceDetector(junk, engine=engine)
        assert "\n" not in str(e.value)
    bad_map = tmp_path / "box_map.json"
    for text in ("not json", '{"coef": "abc"}', "[" * 100000):
        bad_map.write_text(text)
        with pytest.raises(EdgefaceError, match="box map"):
            FaceDetector(box_map=bad_map)


@pytest.mark.parametrize("call,match", [
    (lambda P, a: P(123), "path"),
    (lambda P, a: P([a]), "path"),
    (lambda P, a: P(a, precision="bogus"), "precision"),  # was ignored
    (lambda P, a: P(a, batch=True), "batch"),
])
def test_predictor_arguments(arts, call, match):
    from edgeface.runtime.predictor import Predictor

    with pytest.raises(EdgefaceError, match=match):
        call(Predictor, arts["onnx"])


@pytest.mark.parametrize("call,match", [
    # 200000 boxes were cropped, stacked and converted to float: the process was killed for memory
    (lambda p: p.predict_image(np.zeros((200, 200, 3), np.uint8), np.tile([[10, 10, 50, 50]], (200000, 1))),
     "number of boxes"),
    (lambda p: p.predict([np.zeros((2, 2, 3), np.uint8)] * 200000), "number of crops"),
    (lambda p: p.predict(np.zeros((200000, 2, 2, 3), np.uint8)), "number of crops"),
    (lambda p: p.predict_image(np.zeros((50, 50, 3), np.uint8), np.array([[1 + 1j, 2, 3, 4]])), "numbers"),
    (lambda p: p.predict_frame(np.zeros((50, 50, 3), np.uint8), foo=1), "foo"),
    (lambda p: p.predict_frame(np.zeros((50, 50, 3), np.uint8), detector="yunet"), "FaceDetector"),
])
def test_predictor_api_bad_input_round_2(onnx_pred, call, match, monkeypatch):
    from edgeface.core import limits

    monkeypatch.setattr(limits, "available_memory", lambda: 16 << 30)  # the same answer on any machine
    with pytest.raises(EdgefaceError, match=match) as e:
        call(onnx_pred)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("change,match", [
    (lambda m: m.__setitem__("calib_cache", {"a": 1}), "calib_cache"),    # TypeError: unhashable
    (lambda m: m.__setitem__("calib_cache", ["x"]), "calib_cache"),
    (lambda m: (m.__setitem__("target", "rpi"), m.__setitem__("target_recipe", [1])),
     "target_recipe"),  # AttributeError
    (lambda m: m.__setitem__("backend", "evil"), "does not know"),      # said: pip install 'edgeface[evil]'
    (lambda m: m.__setitem__("target", "x" * 10000), "not a device name"),  # a 10 kB error line
    (lambda m: m.__setitem__("input_kind", [1]), "input_kind"),          # was ignored
])
def test_resealed_manifest_fields_of_the_wrong_type(arts, tmp_path, change, match):
    from edgeface.runtime.predictor import Predictor

    d = _bundle(arts, tmp_path / "b")
    _edit_manifest(d, change, reseal=True)
    with pytest.raises(EdgefaceError, match=match) as e:
        Predictor(d)
    assert "\n" not in str(e.value) and len(str(e.value)) < 400


def test_ncnn_spec_file_hostile(tmp_path):
    from edgeface.core.artifact import WEIGHTS_DIR
    from edgeface.runtime.predictor import Predictor

    pytest.importorskip("ncnn")
    for name, text in [("deep", "[" * 100000 + "]" * 100000), ("blobs", None)]:
        d = tmp_path / name
        d.mkdir()
        shutil.copy(WEIGHTS_DIR / "default.ncnn.param", d / "model.ncnn.param")
        shutil.copy(WEIGHTS_DIR / "default.ncnn.bin", d / "model.ncnn.bin")
        if text is None:  # blobs as a list: AttributeError in the runner
            data = json.loads((WEIGHTS_DIR / "default.spec.json").read_text())
            data["blobs"] = ["input"]
            text = json.dumps(data)
        (d / "model.spec.json").write_text(text)
        with pytest.raises(EdgefaceError, match="nested|blobs") as e:
            Predictor(d / "model.ncnn.param")
        assert "\n" not in str(e.value)


def test_target_and_bench_numbers_bounded(tmp_path):
    import yaml

    from edgeface.bench.frames import tile
    from edgeface.bench.runner import BenchConfig
    from edgeface.deploy.targets import TARGETS_DIR, load_target

    base = yaml.safe_load((TARGETS_DIR / "x86.yaml").read_text())
    for change, match in [({"batch": 100000000}, "batch"),  # deploy measured at it: a MemoryError traceback
                          ({"verify": {**base["verify"],
                                       "fp32": {**base["verify"]["fp32"], "pose_max_abs": float("nan")}}},
                           "pose_max_abs")]:  # a NaN budget passed every verification
        p = tmp_path / "t.yaml"
        p.write_text(yaml.safe_dump({**base, **change}))
        with pytest.raises(EdgefaceError, match=match):
            load_target(p)
    for kw, match in [({"duration": float("nan")}, "--duration"), ({"duration": 1e9}, "--duration"),
                      ({"iters": 10**9}, "--iters")]:
        with pytest.raises(EdgefaceError, match=match):
            BenchConfig(artifacts=[__file__], batches=[1], **kw).check()
    with pytest.raises(EdgefaceError, match="--faces"):  # 100000 faces tiled a 63000 x 63000 frame
        tile([np.zeros((4000, 4000, 3), np.uint8)], 16)


def test_export_never_replaces_a_foreign_file(tmp_path):
    """`export --out DIR` replaced DIR/model.onnx even when it was the user's own file, not an edgeface artifact."""
    from edgeface.export import export

    out = tmp_path / "mine"
    out.mkdir()
    (out / "model.onnx").write_text("my own model\n")
    with pytest.raises(EdgefaceError, match="not an edgeface artifact"):
        export("onnx", None, out)
    assert (out / "model.onnx").read_text() == "my own model\n"
    (out / "model.onnx").unlink()
    (out / "model.onnx").mkdir()
    with pytest.raises(EdgefaceError, match="not a file"):
        export("onnx", None, out)


def test_unusable_cache_folder_fails_before_collecting(tmp_path, monkeypatch):
    """EDGEFACE_CACHE naming a file failed only after the statistics were collected (minutes on a real set)."""
    from edgeface.quantize.calibrate import stats

    called = []
    monkeypatch.setattr(stats, "collect_statistics", lambda *a, **k: called.append(1))
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("x")

    class Calib:
        fingerprint = "f" * 64
        crops = None

    model = Path(__file__).resolve().parents[1] / "edgeface" / "weights" / "default.onnx"
    with pytest.raises(EdgefaceError, match="is a file"):
        stats.load_or_collect(model, Calib(), ModelSpec(), cache_dir=blocker / "calibration")
    assert not called


def test_build_numbers_checked_before_tensorrt(tmp_path):
    """`build --max-batch 100000000` reached TensorRT's builder; now one line, even where TensorRT is absent."""
    from edgeface.engines.tensorrt.build import check_build_numbers

    check_build_numbers(1024, 1, 8, 64)
    for args in [(1024, 1, 8, 10**8), (1024, 0, 8, 64), (1024, 8, 4, 64), (-5, 1, 8, 64), (1 << 40, 1, 8, 64),
                 (1024, True, 8, 64)]:
        with pytest.raises(EdgefaceError, match="batch profile|workspace"):
            check_build_numbers(*args)
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    _one_line_error(_cli("build", onnx, "--max-batch", "100000000"), "batch profile")


def test_trusted_keys_variable_that_names_no_key_fails_closed(arts, tmp_path, monkeypatch):
    """EDGEFACE_TRUSTED_KEYS=':' (a typo) read as 'no keys', so the device ran unsigned bundles. Issue 23: so did
    ' ', a tab or a newline; and '' (a template whose variable did not expand) is refused too: unset switches it off."""
    from edgeface.runtime.predictor import Predictor

    d = _bundle(arts, tmp_path / "b")
    for value in (":", " : :: ", "", " ", "\t", "\n", " \t\n:\n"):
        monkeypatch.setenv("EDGEFACE_TRUSTED_KEYS", value)
        with pytest.raises(EdgefaceError, match="names no key"):
            Predictor(d)
    monkeypatch.delenv("EDGEFACE_TRUSTED_KEYS")  # unset: signatures are optional
    with Predictor(d, threads=1):
        pass


def test_mesh_npz_shapes_checked_from_headers(tmp_path):
    """mesh.npz arrays were decompressed before their shapes were checked: a 1 MB file declaring a (200000, 468,
    3) mesh of zeros took 1.1 GB and 5 s (a 50 MB one, 50 GB)."""
    import io
    import zipfile

    from edgeface.model.render_bank import N_MESH_POINTS, read_mesh_file

    def npy(a):
        b = io.BytesIO()
        np.save(b, a)
        return b.getvalue()

    rows = 20000
    with zipfile.ZipFile(tmp_path / "mesh.npz", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("files.npy", npy(np.array(["a", "b"])))
        zf.writestr("ok.npy", npy(np.ones(2, bool)))
        with zf.open("mesh.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False,
                                                      "shape": (rows, N_MESH_POINTS, 3)})
            for _ in range(rows):
                fh.write(bytes(N_MESH_POINTS * 3 * 4))
    with pytest.raises(EdgefaceError, match="declares") as e:
        read_mesh_file(tmp_path, ["a", "b"])
    assert "\n" not in str(e.value)
    np.savez(tmp_path / "mesh.npz", files=np.array(["a", "b"]), mesh=np.zeros((2, N_MESH_POINTS, 3), np.float32),
             ok=np.ones(2, bool))
    assert read_mesh_file(tmp_path, ["a", "b"])[1].all()


def test_stats_cache_shapes_checked_from_headers(tmp_path, monkeypatch):
    """--stats-cache FILE: its arrays were decompressed before their shapes were compared (a zip bomb of zeros)."""
    import io
    import zipfile

    from edgeface.quantize.calibrate.stats import BINS, load_stats, save_stats, stats_from_arrays

    def npy(a):
        b = io.BytesIO()
        np.save(b, a)
        return b.getvalue()

    good = tmp_path / "good.npz"
    save_stats(stats_from_arrays({"a": np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)}), good, {})
    assert load_stats(good).names == ["a"]
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, a in (("header", np.array("{}")), ("names", np.array(["a"])), ("minimum", np.zeros(1)),
                        ("maximum", np.zeros(1))):
            zf.writestr(f"{name}.npy", npy(a))
        with zf.open("hist.npy", "w", force_zip64=True) as fh:
            np.lib.format.write_array_header_1_0(fh,
                                                 {"descr": "<i8", "fortran_order": False, "shape": (2000, 2 * BINS)})
            for _ in range(2000):
                fh.write(bytes(2 * BINS * 8))
    real = np.load

    def guarded(*a, **k):  # the real np.load, refusing to be reached for the bomb
        assert Path(a[0]) != bomb, "the bomb was opened for decompression"
        return real(*a, **k)

    monkeypatch.setattr(np, "load", guarded)
    with pytest.raises(EdgefaceError, match="shapes do not agree"):
        load_stats(bomb)


def test_pickle_with_code_is_one_line_and_runs_nothing(tmp_path):
    """A pickle that runs code when loaded: refused by weights_only; torch's warning used to add lines to stderr."""
    import pickle

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps(Evil(), protocol=4))
    img = tmp_path / "face.png"
    cv2.imwrite(str(img), np.full((112, 112, 3), 90, np.uint8))
    r = _cli("predict", evil, img, "--crops")
    _one_line_error(r, "not a readable edgeface checkpoint")
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1, r.stderr
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["param", "bin"])
def test_corrupt_ncnn_files_print_one_line(tmp_path, damage):
    """ncnn printed its own "parse magic failed" / "ModelBin read ... failed" lines above the error line."""
    from edgeface.core.artifact import WEIGHTS_DIR

    pytest.importorskip("ncnn")
    shutil.copy(WEIGHTS_DIR / "default.ncnn.param", tmp_path / "model.ncnn.param")
    shutil.copy(WEIGHTS_DIR / "default.ncnn.bin", tmp_path / "model.ncnn.bin")
    shutil.copy(WEIGHTS_DIR / "default.spec.json", tmp_path / "model.spec.json")
    if damage == "param":
        (tmp_path / "model.ncnn.param").write_text("garbage garbage\n")
    else:
        (tmp_path / "model.ncnn.bin").write_bytes((WEIGHTS_DIR / "default.ncnn.bin").read_bytes()[:1000])
    img = tmp_path / "face.png"
    cv2.imwrite(str(img), np.full((112, 112, 3), 90, np.uint8))
    r = _cli("predict", tmp_path / "model.ncnn.param", img, "--crops")
    _one_line_error(r, "ncnn cannot")
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1, r.stderr
