"""Predictor: input forms, images with boxes, artifact/backend resolution, bad input, threads, the CLI."""
from __future__ import annotations

import json
import subprocess
import sys
import threading

import cv2
import numpy as np
import pytest

from edgeface.core.errors import EdgefaceError
from edgeface.runtime.predictor import Predictor, Result
from edgeface.core.artifact import ncnn_paths
from edgeface.core.preprocess import crop_face
from export_cache import reference




@pytest.fixture(scope="module")
def ort_pred(arts):
    with Predictor(arts["onnx"], threads=1) as p:
        yield p


def test_input_forms_agree(ort_pred, synthetic_crops):
    batch = ort_pred.predict(synthetic_crops)
    assert isinstance(batch, Result) and len(batch) == len(synthetic_crops)
    for arr in (batch.blur, batch.yaw, batch.pitch, batch.roll):
        assert arr.dtype == np.float32 and arr.shape == (len(synthetic_crops),)
    one = ort_pred.predict(synthetic_crops[3])
    listed = ort_pred.predict(list(synthetic_crops[:5]))
    np.testing.assert_allclose(one.pose[0], batch.pose[3], atol=1e-4)
    np.testing.assert_allclose(listed.pose, batch.pose[:5], atol=1e-4)
    rgb = ort_pred.predict(synthetic_crops[..., ::-1], rgb=True)
    np.testing.assert_allclose(rgb.pose, batch.pose, atol=1e-4)
    d = batch.as_dicts()[0]
    assert set(d) == {"blur", "yaw", "pitch", "roll"} and d["yaw"] == pytest.approx(float(batch.yaw[0]))
    big = ort_pred.predict(cv2.resize(synthetic_crops[0], (224, 224), interpolation=cv2.INTER_LINEAR))
    assert len(big) == 1  # other sizes are resized to the spec's input size


def test_predict_matches_reference(ort_pred, ckpt, synthetic_crops):
    blur, pose = reference(ckpt, synthetic_crops)
    r = ort_pred.predict(synthetic_crops)
    assert np.abs(r.pose - pose).max() <= 0.05 and np.abs(r.blur - blur).max() <= 1e-3


def test_predict_image_uses_crop_rule(ort_pred, synthetic_crops):
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    frame[40:200, 60:260] = cv2.resize(synthetic_crops[1], (200, 160))
    boxes = np.array([[90, 60, 140, 120], [10, 10, 40, 50], [280, 200, 60, 60]], dtype=float)  # last one: off the edge
    r = ort_pred.predict_image(frame, boxes)
    crops = np.stack([crop_face(frame, b, ort_pred.spec) for b in boxes])
    np.testing.assert_allclose(r.pose, ort_pred.predict(crops).pose, atol=1e-5)
    rr = ort_pred.predict_image(np.ascontiguousarray(frame[..., ::-1]), boxes, rgb=True)
    np.testing.assert_allclose(rr.pose, r.pose, atol=1e-5)
    assert len(ort_pred.predict_image(frame, np.zeros((0, 4)))) == 0  # no faces: an empty result, no error
    with pytest.raises(EdgefaceError, match=r"\(N, 4\)"):
        ort_pred.predict_image(frame, np.zeros((2, 3)))
    with pytest.raises(EdgefaceError, match="no area"):
        ort_pred.predict_image(frame, [[10, 10, 0, 20]])


@pytest.mark.parametrize("bad,match", [
    (np.zeros((2, 112, 112, 3), np.float32), "dtype"),
    (np.zeros((112, 112), np.uint8), "shape"),
    (np.zeros((2, 112, 112, 4), np.uint8), "shape"),
    (np.zeros((0, 112, 112, 3), np.uint8), "empty batch"),
    ([], "empty batch"),
    ("face.jpg", "numpy array"),
    ([np.zeros((112, 112, 3), np.uint8), np.zeros((5,), np.uint8)], "shape"),
])
def test_bad_input_is_one_line_error(ort_pred, bad, match):
    with pytest.raises(EdgefaceError, match=match) as e:
        ort_pred.predict(bad)
    assert "\n" not in str(e.value)


def test_artifact_resolution_and_mismatch(arts, ckpt, tmp_path):
    with Predictor(arts["onnx"].parent) as p:  # a folder holding model.onnx
        assert p.backend == "onnxruntime" and p.precision == "fp32"
    with Predictor(arts["ncnn_fp32"].parent) as p:
        assert p.backend == "ncnn"
    with Predictor(ckpt) as p:
        assert p.backend == "torch"
    with pytest.raises(EdgefaceError, match="backend='ncnn'"):
        Predictor(arts["ncnn_fp32"], backend="onnxruntime")
    with pytest.raises(EdgefaceError, match="'onnxruntime' or 'tensorrt'"):
        Predictor(arts["onnx"], backend="ncnn")
    with pytest.raises(EdgefaceError, match="unknown backend"):
        Predictor(arts["onnx"], backend="coreml")
    with pytest.raises(EdgefaceError, match="does not exist"):
        Predictor(tmp_path / "nope.onnx")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgefaceError, match="without an edgeface artifact"):
        Predictor(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(EdgefaceError, match="unknown artifact type"):
        Predictor(tmp_path / "notes.txt")
    with pytest.raises(EdgefaceError, match="threads"):
        Predictor(arts["onnx"], threads=0)


def test_foreign_and_broken_artifacts(arts, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    m = onnx.load(str(arts["onnx"]))
    del m.metadata_props[:]
    nospec = tmp_path / "nospec.onnx"
    onnx.save(m, str(nospec))
    with pytest.raises(EdgefaceError, match="no edgeface ModelSpec"):
        Predictor(nospec)
    (tmp_path / "junk.onnx").write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(EdgefaceError):
        Predictor(tmp_path / "junk.onnx")
    ckpt_like = tmp_path / "fake.pt"
    ckpt_like.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(EdgefaceError, match="not a readable"):
        Predictor(ckpt_like)
    # An ONNX with a spec whose outputs are not in the graph.
    g = helper.make_graph([helper.make_node("Relu", ["input"], ["y"])], "g",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 112, 112])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, 112, 112])])
    fm = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    fm.ir_version = m.ir_version
    fm.metadata_props.add(key="edgeface.spec", value=next(p.value for p in onnx.load(str(arts["onnx"])).metadata_props
                                                           if p.key == "edgeface.spec"))
    onnx.save(fm, str(tmp_path / "wrong_outputs.onnx"))
    with pytest.raises(EdgefaceError, match="outputs"):
        Predictor(tmp_path / "wrong_outputs.onnx")


def _shipped_weights(folder, arts, ckpt, which=("onnx", "ncnn", "pt")):
    """A weights folder laid out as edgeface/weights is (default.onnx, default.ncnn.*, default.pt)."""
    import shutil

    folder.mkdir()
    if "onnx" in which:
        shutil.copy(arts["onnx"], folder / "default.onnx")
    if "ncnn" in which:
        for src, name in zip(ncnn_paths(arts["ncnn_fp32"]),
                             ("default.ncnn.param", "default.ncnn.bin", "default.spec.json")):
            shutil.copy(src, folder / name)
    if "pt" in which:
        shutil.copy(ckpt, folder / "default.pt")
    return folder


def test_default_model_choice_per_platform(arts, ckpt, monkeypatch, tmp_path):
    import edgeface.runtime.predictor as pr

    monkeypatch.setattr(pr, "WEIGHTS_DIR", _shipped_weights(tmp_path / "all", arts, ckpt))
    for device, backend in (("x86", "onnxruntime"), ("rpi", "ncnn"), ("arm64", "ncnn")):
        monkeypatch.setenv("EDGEFACE_DEVICE", device)
        with Predictor() as p:
            assert p.backend == backend, device
    monkeypatch.setenv("EDGEFACE_DEVICE", "x86")
    with Predictor(backend="torch") as p:
        assert p.backend == "torch"
    monkeypatch.setattr(pr, "WEIGHTS_DIR", _shipped_weights(tmp_path / "pt_only", arts, ckpt, which=("pt",)))
    with Predictor() as p:  # only the checkpoint is shipped: torch it is
        assert p.backend == "torch"


def test_bundle_directory(arts, tmp_path):
    from edgeface.runtime import bundle
    import shutil

    from edgeface.core.artifact import read_onnx_spec

    d = tmp_path / "bundle"
    d.mkdir()
    shutil.copy(arts["onnx"], d / "model.onnx")
    bundle.write_manifest(d, target="x86", backend="onnxruntime", precision="fp32", artifact="model.onnx",
                          spec=read_onnx_spec(arts["onnx"]))
    with Predictor(d, threads=1) as p:
        assert p.backend == "onnxruntime" and p.bundle is not None
        assert len(p.predict(np.zeros((2, 112, 112, 3), np.uint8))) == 2
    data = bytearray((d / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (d / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(EdgefaceError, match="sha256|model.onnx"):
        Predictor(d)


def test_threads_share_one_predictor(arts, synthetic_crops):
    with Predictor(arts["ncnn_fp32"], threads=1) as p:
        expected = [p.predict(synthetic_crops[i:i + 4]).pose for i in range(0, 16, 4)]
        results, errors = {}, []

        def worker(k):
            try:
                for rep in range(5):
                    i = (k + rep) % 4
                    results[(k, rep)] = (i, p.predict(synthetic_crops[i * 4:i * 4 + 4]).pose)
            except Exception as e:  # noqa: BLE001 - surfaced below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        assert len(results) == 20
        for i, pose in results.values():
            np.testing.assert_array_equal(pose, expected[i])


def test_raw_session_access_and_close(arts, synthetic_crops):
    # run_raw is one engine call on the crops as given: the answers of predict without the mirror average
    with Predictor(arts["onnx"], threads=1, fold_preprocess=False, mirror=False) as floats:
        x = floats.prepare(synthetic_crops[:4])
        assert x.dtype == np.float32 and x.shape == (4, 3, 112, 112)
        np.testing.assert_allclose(floats.run_raw(x)["pose"], floats.predict(synthetic_crops[:4]).pose, atol=1e-6)
    p = Predictor(arts["onnx"], threads=1, mirror=False)  # preprocessing folded in: it takes the crops as they are
    x = p.prepare(synthetic_crops[:4])
    assert x.dtype == np.uint8 and x.shape == (4, 112, 112, 3)
    raw = p.run_raw(x)
    np.testing.assert_allclose(raw["pose"], p.predict(synthetic_crops[:4]).pose, atol=1e-6)
    assert p.info()["backend"] == "onnxruntime"
    p.close()
    with pytest.raises(EdgefaceError, match="closed"):
        p.predict(synthetic_crops[:1])


# -- CLI ---------------------------------------------------------------------------------------------
def _cli(*args):
    return subprocess.run([sys.executable, "-m", "edgeface", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_cli_predict(arts, synthetic_crops, tmp_path):
    crop = tmp_path / "crop.png"
    cv2.imwrite(str(crop), synthetic_crops[0])
    frame = tmp_path / "frame.png"
    big = np.zeros((200, 300, 3), np.uint8)
    big[50:162, 100:212] = synthetic_crops[1]
    cv2.imwrite(str(frame), big)
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("file,x,y,w,h\nframe.png,120,70,72,72\nframe.png,0,0,50,50\n")
    r = _cli("predict", arts["onnx"], crop, frame, "--boxes", boxes, "--crops", "--json", tmp_path / "out.json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    assert [(Path_name(row["image"]), row["face"]) for row in rows] == [("crop.png", 0), ("frame.png", 0),
                                                                       ("frame.png", 1)]
    assert rows[0]["backend"] == "onnxruntime" and set(rows[0]) >= {"blur", "yaw", "pitch", "roll"}
    with Predictor(arts["onnx"]) as p:
        assert rows[0]["yaw"] == pytest.approx(float(p.predict(synthetic_crops[0]).yaw[0]), abs=1e-3)
    assert json.loads((tmp_path / "out.json").read_text()) == rows

    notimage = tmp_path / "notes.jpg"
    notimage.write_text("not an image")
    for args, match in (((arts["onnx"], notimage), "is not in a format edgeface reads"),
                        ((arts["onnx"], crop, "--backend", "ncnn"), "backend='onnxruntime'"),
                        ((tmp_path / "missing.onnx", crop), "does not exist")):
        r = _cli("predict", *args)
        assert r.returncode != 0
        assert "Traceback" not in r.stderr and match in r.stderr.replace("\n", " ")
        assert r.stdout.strip() == ""


def Path_name(p):
    from pathlib import Path

    return Path(p).name
