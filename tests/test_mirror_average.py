"""ModelSpec.mirror_average: each face answered with the mean of its crop's and its mirror image's answers.

The property that proves the runtime does it, on every engine that runs here: such a model answers a mirrored
crop with the mirrored answer (yaw and roll negated, pitch and blur the same), exactly up to float rounding.
A single-view network does not (checked too, so the check can fail).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from edgeface.core.errors import EdgefaceError
from edgeface.core.preprocess import MIRROR_SIGNS, mirror_mean, with_mirrors
from edgeface.core.spec import ModelSpec
from edgeface.engines import registry


def _mirrored(crops: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(crops[:, :, ::-1])


def _with_mirror_spec(ckpt: str, folder, on: bool) -> str:
    """``ckpt``'s weights under a spec whose mirror_average is ``on``."""
    torch = pytest.importorskip("torch")
    from edgeface.engines.torch.checkpoint import read_checkpoint, save_checkpoint
    from edgeface.engines.torch.network import build_model

    ck = read_checkpoint(ckpt)
    spec = dataclasses.replace(ModelSpec.from_dict(ck["spec"]), mirror_average=on)
    model = build_model(spec)
    model.load_state_dict({k: torch.as_tensor(v) for k, v in ck["state_dict"].items()})
    path = folder / f"mirror_{int(on)}.pt"
    save_checkpoint(path, model, spec, {"note": "test: mirror_average " + str(on)})
    return str(path)


@pytest.fixture(scope="module")
def mirror_artifacts(ckpt, tmp_path_factory) -> dict[str, str]:
    """The parity checkpoint with mirror_average on, as a checkpoint, an ONNX and an ncnn model."""
    from edgeface.export import export_ncnn, export_onnx

    folder = tmp_path_factory.mktemp("mirror")
    pt = _with_mirror_spec(ckpt, folder, True)
    return {"torch": pt, "onnxruntime": str(export_onnx(pt, folder / "m.onnx")),
            "openvino": str(folder / "m.onnx"), "ncnn": str(export_ncnn(pt, folder / "m.ncnn.param", precision="fp32"))}


def test_mirror_mean_turns_the_mirror_answer_back():
    blur = np.array([0.2, 0.4], np.float32)
    pose = np.array([[30.0, 10.0, -5.0], [-28.0, 12.0, 7.0]], np.float32)  # face, then its mirror image's answer
    b, p = mirror_mean(blur, pose)
    assert b.tolist() == pytest.approx([0.3])
    assert p.tolist()[0] == pytest.approx([29.0, 11.0, -6.0])
    crops = np.arange(2 * 4 * 5 * 3, dtype=np.uint8).reshape(2, 4, 5, 3)
    both = with_mirrors(crops)
    assert both.shape == (4, 4, 5, 3) and (both[2:] == crops[:, :, ::-1]).all() and (both[:2] == crops).all()
    assert MIRROR_SIGNS.tolist() == [-1.0, 1.0, -1.0]


def test_spec_field_checked_and_old_specs_read_as_single_view():
    d = ModelSpec().to_dict()
    d.pop("mirror_average")
    assert ModelSpec.from_dict(d).mirror_average is False  # an artifact from before v5.1.0
    with pytest.raises(EdgefaceError, match="mirror_average' must be true or false"):
        ModelSpec.from_dict({**d, "mirror_average": "yes"})
    assert ModelSpec.from_json(ModelSpec(mirror_average=True).to_json()).mirror_average is True


def test_a_mirror_spec_is_refused_by_an_edgeface_that_predates_it(monkeypatch):
    """The spec records the oldest version that reads it right: an older runtime would answer from one pass."""
    from edgeface.core import spec as spec_module

    assert ModelSpec().to_dict()["spec_version"] == 1  # readable by every edgeface, as before
    mirrored_spec = ModelSpec(mirror_average=True).to_dict()
    assert mirrored_spec["spec_version"] == 2
    monkeypatch.setattr(spec_module, "SPEC_VERSION", 1)  # an edgeface from before v5.1.0
    with pytest.raises(EdgefaceError, match="newer than this edgeface understands; upgrade edgeface"):
        ModelSpec.from_dict(mirrored_spec)
    assert ModelSpec.from_dict(ModelSpec().to_dict()).mirror_average is False


@pytest.mark.parametrize("engine", ["torch", "onnxruntime", "openvino", "ncnn"])
def test_a_mirror_averaged_model_answers_a_mirror_image_with_the_mirrored_answer(mirror_artifacts, face_crops,
                                                                                 engine):
    from edgeface.runtime.predictor import Predictor

    if not registry.is_installed(engine):
        pytest.skip(f"{engine} is not installed")
    crops = face_crops[:12]
    with Predictor(mirror_artifacts[engine], backend=engine, threads=1) as p:
        assert p.mirror is True and p.info()["mirror_average"] is True
        a, m = p.predict(crops), p.predict(_mirrored(crops))
        np.testing.assert_allclose(m.pose * MIRROR_SIGNS, a.pose, atol=2e-3)
        np.testing.assert_allclose(m.blur, a.blur, atol=1e-5)
        assert np.abs(a.pose).max() > 10  # the faces turn: the equality above is not one of zeros
    with Predictor(mirror_artifacts[engine], backend=engine, threads=1, mirror=False) as p:
        a, m = p.predict(crops), p.predict(_mirrored(crops))
        assert np.abs(m.pose * MIRROR_SIGNS - a.pose).max() > 0.5  # one view alone is not mirror-exact


def test_mirror_average_is_the_mean_of_the_two_single_view_answers(mirror_artifacts, face_crops):
    from edgeface.runtime.predictor import Predictor

    crops = face_crops[:8]
    with Predictor(mirror_artifacts["onnxruntime"], backend="onnxruntime", threads=1, mirror=False) as one:
        a, m = one.predict(crops), one.predict(_mirrored(crops))
    with Predictor(mirror_artifacts["onnxruntime"], backend="onnxruntime", threads=1) as both:
        r = both.predict(crops)
    np.testing.assert_allclose(r.pose, (a.pose + m.pose * MIRROR_SIGNS) / 2, atol=1e-4)
    np.testing.assert_allclose(r.blur, (a.blur + m.blur) / 2, atol=1e-6)


def test_mirror_argument_checked(mirror_artifacts):
    from edgeface.runtime.predictor import Predictor

    with pytest.raises(EdgefaceError, match="mirror must be True, False or None"):
        Predictor(mirror_artifacts["onnxruntime"], mirror="yes")


def test_a_graph_with_a_fixed_batch_takes_the_mirror_images_as_a_second_batch(tmp_path):
    """A foreign ONNX fixed at batch 4 (test_trust) under a spec with mirror_average: 4 crops still run."""
    from test_trust import CROPS, _foreign

    from edgeface.runtime.predictor import Predictor

    crops = np.concatenate([CROPS, CROPS[:1]])
    with Predictor(_foreign(tmp_path / "b4.onnx", batch=4), threads=1, mirror=True) as p:
        assert p._backend.fixed_batch == 4
        r = p.predict(crops)
        assert len(r) == 4 and np.isfinite(r.pose).all()


def test_training_measures_as_the_runtime_answers(mirror_artifacts, face_crops):
    """The per-epoch runner (model selection on the dev set) averages the mirror images when the spec says so."""
    from edgeface.engines.torch.checkpoint import read_checkpoint
    from edgeface.engines.torch.network import build_model
    from edgeface.model.train import _torch_runner
    from edgeface.runtime.predictor import Predictor

    torch = pytest.importorskip("torch")
    ck = read_checkpoint(mirror_artifacts["torch"])
    spec = ModelSpec.from_dict(ck["spec"])
    model = build_model(spec).eval()
    model.load_state_dict({k: torch.as_tensor(v) for k, v in ck["state_dict"].items()})
    blur, pose = _torch_runner(model, spec)(face_crops[:6])
    with Predictor(mirror_artifacts["torch"], backend="torch") as p:
        r = p.predict(face_crops[:6])
    np.testing.assert_allclose(pose, r.pose, atol=1e-3)
    np.testing.assert_allclose(blur, r.blur, atol=1e-5)


def test_bench_says_when_a_face_takes_two_passes(mirror_artifacts, ckpt, tmp_path):
    """A bench row of a mirror-averaged model times two passes a face, and its table and JSON say so."""
    import json

    from conftest import edgeface_cli

    from edgeface.export import export_onnx

    one_pass = export_onnx(_with_mirror_spec(ckpt, tmp_path, False), tmp_path / "one" / "model.onnx")
    out = tmp_path / "bench.json"
    r = edgeface_cli("bench", mirror_artifacts["onnxruntime"], one_pass, "--batch", "1", "--iters", "20",
                     "--reference", "none", "--json", out)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {Path(row["path"]).resolve(): row for row in json.loads(out.read_text())}
    assert rows[Path(mirror_artifacts["onnxruntime"]).resolve()]["passes_per_face"] == 2
    assert rows[Path(one_pass).resolve()]["passes_per_face"] == 1
    assert r.stdout.count("×2 mirror") == 2, r.stdout[-3000:]  # its row in the speed and the accuracy table


def test_int8_statistics_see_what_inference_feeds(mirror_artifacts, face_crops, tmp_path):
    """With the mirror average the network also sees each face's mirror image, so calibration does too: the input
    tensor's histogram counts twice the values of the same faces without it."""
    from edgeface.quantize.calibrate.dataset import CalibrationSet, fingerprint_crops
    from edgeface.quantize.calibrate.stats import load_or_collect

    crops = face_crops[:8]
    calib = CalibrationSet(crops, fingerprint=fingerprint_crops(crops))
    onnx = mirror_artifacts["onnxruntime"]
    spec = registry.by_format("onnx").spec_of(Path(onnx))
    assert spec.mirror_average
    counts = {}
    for on in (True, False):
        stats, _, reused = load_or_collect(onnx, calib, dataclasses.replace(spec, mirror_average=on),
                                           cache_dir=tmp_path)
        assert not reused
        counts[on] = int(stats.hist[stats.index(spec.input_name)].sum())
    assert counts[True] == 2 * counts[False] == 2 * crops.size


def test_tensorrt_calibration_batches_hold_the_mirror_images_too(face_crops):
    """TensorRT's own calibrator (implicit INT8 on a Jetson) is fed what the network sees; its batches are numpy."""
    from edgeface.core.spec import UINT8_NHWC
    from edgeface.engines.tensorrt.calibrator import _prepare_batches

    crops = face_crops[:8]
    both = np.concatenate(_prepare_batches(crops, ModelSpec(mirror_average=True), UINT8_NHWC, 16))
    assert both.shape[0] == 16 and (both[:8] == crops).all() and (both[8:] == crops[:, :, ::-1]).all()
    assert np.concatenate(_prepare_batches(crops, ModelSpec(), UINT8_NHWC, 8)).shape[0] == 8
