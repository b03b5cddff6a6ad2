"""Full frames in, faces out: the shipped detector, predict_frame, the tracker and smoothing, and
`edgeface predict` on images, videos and cameras."""
from __future__ import annotations

import json
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest

from edgeface.core.errors import EdgefaceError
from edgeface.runtime.detector import BOX_MAP, YUNET_DIR, YUNET_MODEL, FaceDetector, apply_map, map_features, \
    map_targets
from edgeface.runtime.predictor import Face, Predictor
from edgeface.runtime.stream import IouTracker, OneEuro, draw_faces


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "edgeface", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def _rows(proc):
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def _error_lines(proc):
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def two_faces(shared_data):
    """A 2-face frame: two celeba val images side by side on a grey canvas."""
    import csv

    with open(shared_data / "celeba" / "labels.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "val"][:2]
    imgs = [cv2.imread(str(shared_data / "celeba" / r["file"])) for r in rows]
    h = max(i.shape[0] for i in imgs)
    canvas = np.full((h + 80, sum(i.shape[1] for i in imgs) + 120, 3), 90, np.uint8)
    x = 40
    for im in imgs:
        canvas[40:40 + im.shape[0], x:x + im.shape[1]] = im
        x += im.shape[1] + 40
    return canvas


# -- the shipped detector ------------------------------------------------------------------------------------------
def test_detector_ships_with_licence_and_map():
    assert YUNET_MODEL.is_file() and (YUNET_DIR / "LICENSE").is_file() and (YUNET_DIR / "PROVENANCE.md").is_file()
    assert "Apache" in (YUNET_DIR / "LICENSE").read_text()
    assert BOX_MAP.is_file() and len(json.loads(BOX_MAP.read_text())["coef"]) == 12


def test_box_map_round_trip():
    rng = np.random.default_rng(0)
    boxes = np.column_stack([rng.uniform(0, 100, 20), rng.uniform(0, 100, 20), rng.uniform(40, 80, 20),
                             rng.uniform(50, 90, 20)])
    lms = boxes[:, None, :2] + rng.uniform(0.2, 0.8, (20, 5, 2)) * boxes[:, None, 2:]
    size = np.sqrt(boxes[:, 2] * boxes[:, 3])
    centre = boxes[:, :2] + boxes[:, 2:] / 2 + np.column_stack([0.02 * size, 0.1 * size])
    side = 1.3 * size  # a square 1.3x the detector's box, a tenth of its size lower
    target = np.column_stack([centre - side[:, None] / 2, side, side])
    feats, c, s = map_features(boxes, lms)
    coef = np.linalg.lstsq(feats, map_targets(target, c, s), rcond=None)[0]
    assert np.allclose(apply_map(coef, boxes, lms), target, atol=1e-3)

def test_predict_frame(two_faces):
    with Predictor() as p:
        faces = p.predict_frame(two_faces)
        assert len(faces) == 2 and all(isinstance(f, Face) for f in faces)
        d = faces[0].as_dict()
        assert set(d) >= {"box", "landmarks", "score", "crop_box", "blur", "yaw", "pitch", "roll"}
        assert len(d["landmarks"]) == 5 and 0 < d["score"] <= 1
        # the same crop through predict_image gives the same outputs
        r = p.predict_image(two_faces, [f.crop_box for f in faces])
        assert np.allclose(r.yaw, [f.yaw for f in faces], atol=1e-3)
        # options: the largest face only, a minimum size that drops everything
        assert len(p.predict_frame(two_faces, largest_only=True)) == 1
        assert p.predict_frame(two_faces, min_size=10_000) == []
        p.detector = FaceDetector()
        assert p.predict_frame(np.zeros((120, 160, 3), np.uint8)) == []   # no face: empty, not an error
        with pytest.raises(EdgefaceError, match="no pixels"):
            p.predict_frame(np.zeros((0, 0, 3), np.uint8))


def test_padded_detection_keeps_box_sizes(two_faces):
    """The border added for the retry was subtracted from the boxes' w and h too (negative sizes, wrong crops)."""
    plain, padded = FaceDetector(pad=0).detect(two_faces), FaceDetector(pad=0.5).detect(two_faces)
    assert len(plain) == len(padded) == 2
    for a, b in zip(sorted(plain.boxes.tolist()), sorted(padded.boxes.tolist())):
        assert b[2] > 0 and b[3] > 0 and np.abs(np.subtract(a, b)).max() < 0.1 * a[2], (a, b)


def test_large_frames_are_shrunk_for_detection(two_faces, monkeypatch):
    """A frame over MAX_DETECT_PIXELS is detected shrunk (a 64 MP frame used to take 14 GB), its boxes mapped back
    to the frame's pixels: the same faces, at the same places."""
    from edgeface.runtime import detector as detector_module

    det = FaceDetector(pad=0)
    full = det.detect(two_faces)
    seen = []
    real = detector_module.YuNetOnnxRuntime.detect

    def spy(self, frame):
        seen.append(frame.shape[0] * frame.shape[1])
        return real(self, frame)

    monkeypatch.setattr(detector_module.YuNetOnnxRuntime, "detect", spy)
    limit = two_faces.shape[0] * two_faces.shape[1] // 3
    monkeypatch.setattr(detector_module, "MAX_DETECT_PIXELS", limit)
    for d in (det, FaceDetector(pad=0.5)):
        small = d.detect(two_faces)
        assert seen and max(seen) <= limit, (seen, limit)
        assert len(small) == len(full) == 2
        for a, b in zip(sorted(full.boxes.tolist()), sorted(small.boxes.tolist())):
            assert np.abs(np.subtract(a, b)).max() < 0.15 * a[2], (a, b)  # detected at a third of the size or less
        seen.clear()


# -- tracker and smoothing -----------------------------------------------------------------------------------------
def test_detector_engines_find_the_same_faces(shared_data):
    """YuNet on onnxruntime (symbolic input size, OpenCV's decode and NMS reproduced) finds what
    cv2.FaceDetectorYN finds, to a thousandth of a pixel, on real val frames of every set."""
    from edgeface.faces.data import find_sets, load_samples

    cv = FaceDetector(engine="opencv")
    ours = FaceDetector(engine="onnxruntime")
    assert FaceDetector().engine == "onnxruntime" and ours.info()["engine"] == "onnxruntime"
    found = 0
    for folder in find_sets(shared_data):
        for sample in load_samples(folder, split="val")[:6]:
            frame = cv2.imread(str(sample.path))
            a, b = cv._run(frame), ours._run(frame)
            assert a.shape == b.shape, sample.path
            assert np.abs(a - b).max(initial=0) < 1e-3, sample.path
            found += len(a)
    assert found >= 20
    # a frame whose size is not a multiple of 32, and a frame with no face
    odd = cv2.resize(cv2.imread(str(load_samples(find_sets(shared_data)[0], split="val")[0].path)), (301, 257))
    assert np.abs(cv._run(odd) - ours._run(odd)).max(initial=0) < 1e-3
    assert len(ours.detect(np.full((120, 160, 3), 90, np.uint8))) == 0
    with pytest.raises(EdgefaceError, match="detector engine"):
        FaceDetector(engine="tflite")


def test_detector_engine_refuses_foreign_models(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07not an onnx model at all")
    with pytest.raises(EdgefaceError, match="not a readable ONNX"):
        FaceDetector(junk, engine="onnxruntime")
    import onnx
    from onnx import TensorProto, helper

    other = tmp_path / "other.onnx"  # a valid ONNX without YuNet's outputs
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["out"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 32, 32])])
    onnx.save(helper.make_model(graph), str(other))
    with pytest.raises(EdgefaceError, match="YuNet's input and outputs"):
        FaceDetector(other, engine="onnxruntime")


def _face(x, yaw=0.0):
    return Face((x, 10.0, 50.0, 50.0), [(0.0, 0.0)] * 5, 0.9, (x, 10.0, 50.0, 50.0), 0.1, yaw, 0.0, 0.0)


def test_iou_tracker_keeps_ids():
    tr = IouTracker()
    assert tr.update(0, 0.0, [_face(0), _face(200)]) == [0, 1]
    assert tr.update(1, 0.04, [_face(205), _face(4)]) == [1, 0]   # order of detections does not matter
    assert tr.update(2, 0.08, [_face(400)]) == [2]                # a new face, a new id
    assert tr.update(30, 1.2, [_face(8)]) == [3]                  # a track unseen too long has ended


def test_one_euro_smooths_noise_and_follows_moves():
    rng = np.random.default_rng(0)
    f = OneEuro(min_cutoff=1.0, beta=0.0)
    noisy = 10 + rng.normal(0, 2, 200)
    out = np.array([f([v], i / 30)[0] for i, v in enumerate(noisy)])
    assert out[50:].std() < 0.5 * noisy[50:].std()
    tr = IouTracker(smooth=True)
    faces = [_face(0, yaw=10.0)]
    tr.update(0, 0.0, faces)
    faces = [_face(1, yaw=30.0)]
    tr.update(1, 1 / 30, faces)
    assert 10.0 < faces[0].yaw < 30.0


def test_draw_faces():
    img = np.zeros((100, 120, 3), np.uint8)
    out = draw_faces(img, [_face(10, yaw=30)], ids=[3])
    assert out.shape == img.shape and out.any() and not img.any()


# -- the CLI -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def video(two_faces, tmp_path_factory):
    """A real video (MJPG .avi) of 8 frames: the two faces drifting right a few pixels a frame."""
    path = tmp_path_factory.mktemp("video") / "two.avi"
    h, w = two_faces.shape[:2]
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (w, h))
    assert wr.isOpened()
    for i in range(8):
        wr.write(np.ascontiguousarray(np.roll(two_faces, 3 * i, axis=1)))
    wr.release()
    return path


def test_cli_video_one_record_per_face_per_frame(video, tmp_path):
    out = tmp_path / "drawn.mp4"
    proc = _cli("predict", "default", video, "--smooth", "--draw", out)
    assert proc.returncode == 0, proc.stderr
    rows = _rows(proc)
    per_frame = {}
    for r in rows:
        per_frame.setdefault(r["frame"], []).append(r)
    assert sorted(per_frame) == list(range(8)) and all(len(v) == 2 for v in per_frame.values())
    # stable ids: the left face keeps one id, the right face the other
    ids = [tuple(r["track"] for r in sorted(v, key=lambda r: r["box"][0])) for _, v in sorted(per_frame.items())]
    assert len(set(ids)) == 1 and len(set(ids[0])) == 2
    # the run ends with a summary on stderr: frames, faces, tracks, FPS
    assert re.search(rf"{re.escape(str(video))}: 8 frames, 16 faces, 2 tracks, [0-9.]+ FPS", proc.stderr), proc.stderr
    cap = cv2.VideoCapture(str(out))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 8
    cap.release()


def test_cli_image_detects_and_draws(two_faces, tmp_path):
    img = tmp_path / "two.png"
    cv2.imwrite(str(img), two_faces)
    drawn = tmp_path / "drawn.png"
    proc = _cli("predict", "default", img, "--draw", drawn)
    assert proc.returncode == 0, proc.stderr
    rows = _rows(proc)
    assert [r["face"] for r in rows] == [0, 1] and all(len(r["landmarks"]) == 5 for r in rows)
    assert cv2.imread(str(drawn)).shape == two_faces.shape
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.zeros((100, 100, 3), np.uint8))
    proc = _cli("predict", "default", blank)  # every input appears in the output: an explicit no-face record
    assert proc.returncode == 0 and _rows(proc) == [{"image": str(blank), "faces": 0, "backend": "onnxruntime",
                                                     "precision": "fp32"}]


def test_cli_bad_inputs(tmp_path):
    notvideo = tmp_path / "notes.mp4"
    notvideo.write_text("not a video")
    empty = tmp_path / "empty.avi"
    wr = cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 64))
    wr.release()
    for args in ((notvideo,), (empty,), ("--camera", "57"), (tmp_path / "missing.mp4",)):
        proc = _cli("predict", "default", *args)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr  # nothing else, not even OpenCV's log
        assert proc.stdout.strip() == ""


# -- end to end accuracy and the per-stage bench (functional; the figures are in docs/frames.md) ----------------
def test_evaluate_detected_on_a_few_val_faces(shared_data):
    from edgeface.faces.data import load_samples
    from edgeface.faces.evaluate import evaluate_detected

    samples = load_samples(shared_data / "pointing04", split="val")[::40][:8]
    with Predictor() as p:
        r = evaluate_detected(p.blur_and_pose, FaceDetector(), samples, p.spec)
    assert r["n"] == 8 and r["detection"]["all"]["detected"] >= 7
    assert r["detector_boxes"]["mean_mae"] is not None and r["labelled_boxes"]["mean_mae"] is not None


def test_bench_frames_stages(video):
    from edgeface.bench.frames import STAGES, bench_frames

    rows = bench_frames(["default"], video, faces=[1, 2], limit=2, repeats=1)
    assert [r["faces"] for r in rows] == [1, 2]
    assert rows[1]["faces_per_frame"] >= 3.5  # 2 tiles of a 2-face frame
    assert all(r[s]["median_ms"] >= 0 for r in rows for s in STAGES) and all(r["fps"] > 0 for r in rows)
