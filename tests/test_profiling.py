"""Face profiling (re-rendering faces at new head rotations) and the cached render bank."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeface.core.errors import EdgefaceError
from edgeface.faces.evaluate import pose_metrics
from edgeface.faces.pose import matrix_to_pose, pose_to_matrix
from edgeface.model.profiling import profile_face, to_camera
from edgeface.model.render_bank import BankConfig, build_bank, preview, read_mesh_file, read_sources
from edgeface.core.spec import ModelSpec

REPO = Path(__file__).resolve().parents[1]


def mesh_axes(mesh: np.ndarray) -> np.ndarray:
    """The data pack's head axes from FaceMesh points (its README): x from eye and mouth corners, up from
    chin to forehead made orthogonal, forward = x cross up; camera frame after flipping y and z."""
    p = to_camera(np.asarray(mesh, np.float64))
    x = (p[263] - p[33]) + (p[362] - p[133]) + (p[291] - p[61])
    x /= np.linalg.norm(x)
    up = p[10] - p[152]
    up -= x * (up @ x)
    up /= np.linalg.norm(up)
    return np.column_stack([x, up, np.cross(x, up)])


def mesh_pose(mesh: np.ndarray) -> tuple[float, float, float]:
    return matrix_to_pose(mesh_axes(mesh))


@pytest.fixture(scope="module")
def celeba_faces(shared_data):
    folder = shared_data / "celeba"
    if not (folder / "mesh.npz").is_file():
        pytest.skip("the data pack has no mesh.npz")
    return read_sources(folder, "val", BankConfig(max_source_yaw=15, max_source_pitch=15))[:6]


def test_label_is_the_turned_mesh_pose(celeba_faces):
    """The render's label is exact: the head axes of the turned mesh give the same angles (the teacher's own
    definition), at wide yaw and with a pitch change, to a fraction of a degree."""
    for s in celeba_faces:
        img = cv2.imread(str(s.image))
        assert max(abs(a - b) for a, b in zip(mesh_pose(s.mesh), s.pose)) < 0.5  # the source itself agrees
        for d_yaw, d_pitch in ((-70.0, 0.0), (60.0, 15.0), (-30.0, -20.0)):
            view = profile_face(img, s.mesh, s.pose, s.box, d_yaw, d_pitch)
            want = (s.pose[0] + d_yaw, s.pose[1] + d_pitch, s.pose[2])
            assert np.allclose(view.pose, want, atol=1e-6)
            # The turned points are the source points under exactly the label's rotation ...
            turn = pose_to_matrix(*view.pose) @ pose_to_matrix(*s.pose).T
            assert np.allclose(mesh_axes(view.mesh), turn @ mesh_axes(s.mesh), atol=1e-6)
            # ... so the teacher would read the render as labelled, within the source's own rounding
            # (float16 points, 0.01 deg labels), which wide yaw amplifies a little.
            assert np.allclose(mesh_pose(view.mesh), view.pose, atol=1.0), (mesh_pose(view.mesh), view.pose)


def test_no_turn_keeps_image_and_box(celeba_faces):
    s = celeba_faces[0]
    img = cv2.imread(str(s.image))
    view = profile_face(img, s.mesh, s.pose, s.box, 0.0)
    m = view.margin
    assert np.allclose(view.box, (s.box[0] + m, s.box[1] + m, s.box[2], s.box[3]), atol=1e-6)
    diff = np.abs(view.image[m:m + img.shape[0], m:m + img.shape[1]].astype(int) - img.astype(int))
    assert np.median(diff) == 0 and diff.mean() < 2.0  # resampled through identity affines


def test_turn_moves_face_and_keeps_background(celeba_faces):
    s = celeba_faces[1]
    img = cv2.imread(str(s.image))
    view = profile_face(img, s.mesh, s.pose, s.box, 75.0 - s.pose[0])
    h, w = img.shape[:2]
    m = view.margin
    assert view.image.shape == (h + 2 * m, w + 2 * m, 3) and view.image.dtype == np.uint8
    inside = view.image[m:m + h, m:m + w]
    # Yaw > 0 turns the nose to image-left: the nose tip (point 1) moves left of the face box centre.
    assert view.mesh[1, 0] < view.box[0] + view.box[2] / 2
    # The background far from the head is fixed: the source's corners are untouched.
    for y, x in ((0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)):
        assert np.abs(inside[y, x].astype(int) - img[y, x].astype(int)).max() <= 2
    # The face region did change.
    x, y, bw, bh = (int(v) for v in s.box)
    assert np.abs(inside[y:y + bh, x:x + bw].astype(int) - img[y:y + bh, x:x + bw].astype(int)).mean() > 10


def test_tight_crop_grows_the_canvas(shared_data):
    """UTKFace's faces fill the frame: a profile's nose must not be cut off at the border."""
    s = read_sources(shared_data / "utkface", "val", BankConfig(limit=3))[0]
    img = cv2.imread(str(s.image))
    view = profile_face(img, s.mesh, s.pose, s.box, 85.0 - s.pose[0])
    assert view.margin > 0
    hh, ww = view.image.shape[:2]
    assert np.all(view.mesh[:, 0] >= 0) and np.all(view.mesh[:, 0] < ww) and np.all(view.mesh[:, 1] < hh)


def test_profile_rejects_bad_mesh_and_pose(celeba_faces):
    s = celeba_faces[0]
    img = cv2.imread(str(s.image))
    with pytest.raises(EdgefaceError, match="face mesh"):
        profile_face(img, s.mesh[:100], s.pose, s.box, 30.0)
    with pytest.raises(EdgefaceError, match="finite"):
        profile_face(img, s.mesh, (float("nan"), 0.0, 0.0), s.box, 30.0)


def write_set(folder: Path, n: int = 3, mesh_rows: int | None = None, files=None) -> None:
    folder.mkdir(parents=True)
    with open(folder / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "x", "y", "w", "h", "t_yaw", "t_pitch", "t_roll", "split"])
        for i in range(n):
            w.writerow([f"images/{i}.jpg", 10, 10, 50, 50, 0, 0, 0, "val" if i == n - 1 else "train"])
    m = n if mesh_rows is None else mesh_rows
    names = files if files is not None else [f"images/{i}.jpg" for i in range(m)]
    np.savez(folder / "mesh.npz", files=np.array(names), mesh=np.zeros((m, 468, 3), np.float16), ok=np.ones(m, bool))


def test_bank_rejects_missing_corrupt_and_mismatched_meshes(tmp_path):
    cfg = BankConfig(sets=("s",))
    spec = ModelSpec()
    write_set(tmp_path / "a" / "s", n=4)
    (tmp_path / "a" / "s" / "mesh.npz").unlink()
    with pytest.raises(EdgefaceError, match="mesh.npz is missing"):
        build_bank(tmp_path / "a", cfg, spec, 1.6, cache=tmp_path / "c")
    write_set(tmp_path / "b" / "s")
    (tmp_path / "b" / "s" / "mesh.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(EdgefaceError, match="not a readable mesh file"):
        build_bank(tmp_path / "b", cfg, spec, 1.6, cache=tmp_path / "c")
    write_set(tmp_path / "c1" / "s", mesh_rows=2)
    with pytest.raises(EdgefaceError, match="does not match"):
        build_bank(tmp_path / "c1", cfg, spec, 1.6, cache=tmp_path / "c")
    write_set(tmp_path / "d" / "s", files=["images/2.jpg", "images/1.jpg", "images/0.jpg"])
    with pytest.raises(EdgefaceError, match="does not match"):
        read_mesh_file(tmp_path / "d" / "s", ["images/0.jpg", "images/1.jpg", "images/2.jpg"])


def test_bank_cli_error_is_one_line(tmp_path):
    root = tmp_path / "data"
    write_set(root / "utkface", mesh_rows=2)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("kind: train\ndata: {sets: [{name: utkface}]}\nrender: {views: 1, sets: [utkface]}\n")
    env = dict(os.environ, EDGEFACE_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "edgeface", "train", "--recipe", recipe, "--data-root", root,
                           "--out", tmp_path / "run"], capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert lines[-1].startswith("error:") and "does not match" in lines[-1], proc.stderr


def test_bank_is_cached_and_rebuilt_when_inputs_change(tmp_path, shared_data, monkeypatch):
    root = tmp_path / "data"
    (root / "celeba").mkdir(parents=True)
    for f in ("labels.csv", "mesh.npz"):
        (root / "celeba" / f).symlink_to(shared_data / "celeba" / f)
    (root / "celeba" / "images").symlink_to(shared_data / "celeba" / "images")
    cfg = BankConfig(sets=("celeba",), views=2, limit=6)
    spec = ModelSpec()
    monkeypatch.setattr("edgeface.model.render_bank.SPAWN_MIN_VIEWS", 1)  # exercise the process pool
    bank = build_bank(root, cfg, spec, 1.6, "val", cache=tmp_path / "cache", workers=2)
    assert len(bank) == 12 and bank.images.shape == (12, 179, 179, 3)
    assert np.all(np.abs(bank.poses[:, 0]) >= cfg.yaw_min - 1e-3) and np.all(np.abs(bank.poses[:, 0]) <= 90 + 1e-3)
    # each render's landmark box, in the crop, inside its face box's square
    lx, ly, lw, lh = bank.landmark_boxes.T
    assert np.isfinite(bank.landmark_boxes).all() and (lw > 0).all() and (lh > 0).all()
    assert ((lx >= 0) & (ly >= 0) & (lx + lw <= 179) & (ly + lh <= 179)).all()
    again = build_bank(root, cfg, spec, 1.6, "val", cache=tmp_path / "cache")
    assert again.folder == bank.folder and np.array_equal(np.asarray(again.images), bank.images)
    other = build_bank(root, replace(cfg, seed=1), spec, 1.6, "val", cache=tmp_path / "cache", workers=1)
    assert other.folder != bank.folder
    # rendered in-process and in a pool alike: the same views for the same inputs
    monkeypatch.setattr("edgeface.model.render_bank.SPAWN_MIN_VIEWS", 10**6)
    alone = build_bank(root, cfg, spec, 1.6, "val", cache=tmp_path / "cache2")
    assert np.array_equal(np.asarray(alone.images), np.asarray(bank.images)) and np.array_equal(alone.poses, bank.poses)
    png = preview(bank, root, cfg, "val", spec, tmp_path / "preview.png", n_faces=3, per_face=2)
    grid = cv2.imread(str(png))
    assert grid.shape == (3 * 224, 3 * 224, 3)


def test_pose_metrics_by_yaw_bin():
    truth = np.array([[10, 0, 0], [-45, 0, 0], [80, 0, 0], [-95, 0, 0], [np.nan, 0, 0]], np.float64)
    pred = truth.copy()
    pred[:, 0] = np.nan_to_num(truth[:, 0]) + np.array([1, 2, 3, 5, 0])
    m = pose_metrics(pred, truth)
    assert m["by_yaw"]["0-30"]["n"] == 1 and m["by_yaw"]["0-30"]["yaw_mae"] == pytest.approx(1)
    assert m["by_yaw"]["30-60"]["yaw_mae"] == pytest.approx(2)
    assert m["by_yaw"]["60+"]["n"] == 2 and m["by_yaw"]["60+"]["yaw_mae"] == pytest.approx(4)


def test_landmark_box_is_tighter_and_lower_than_the_detector_box(celeba_faces):
    """The 68-landmark box from the mesh (brows to chin, as AFLW2000-3D's boxes) sits inside the detector
    box's square, smaller and lower: the framing the benchmark crops from, which training now also sees."""
    from edgeface.model.profiling import landmark_box

    for s in celeba_faces:
        x, y, w, h = s.box
        lx, ly, lw, lh = landmark_box(s.mesh)
        assert 0.7 < max(lw, lh) / max(w, h) < 1.0
        assert 0.0 < (ly + lh / 2) - (y + h / 2) < 0.2 * h  # centred lower: no forehead
        assert abs((lx + lw / 2) - (x + w / 2)) < 0.1 * w
        # through a crop's matrix it is the same box in the crop's pixels
        m = np.array([[0.5, 0.0, 10.0], [0.0, 0.5, -4.0]])
        cx, cy, cw, ch = landmark_box(s.mesh, m)
        assert np.allclose((cx, cy, cw, ch), (0.5 * lx + 10, 0.5 * ly - 4, 0.5 * lw, 0.5 * lh), atol=1e-6)


def test_training_crops_use_the_landmark_box_at_its_rate(shared_data):
    """augment.landmark_box_p frames that share of crops by the landmark box (where the mesh is known) and
    the rest by the set's box; 0 leaves training as it was."""
    from edgeface.core.preprocess import crop_face
    from edgeface.faces.data import load_samples
    from edgeface.model.train import TRAIN_SCHEMA, AugmentedFaces, CropCache, set_meshes

    spec = ModelSpec(input_size=112)
    samples = load_samples(shared_data / "celeba", split="val")[:12]
    cache = CropCache(samples, spec, 1.6, meshes=set_meshes(shared_data, ["celeba"]))
    assert np.isfinite(cache.landmark_boxes).all()
    plain = dict(TRAIN_SCHEMA["augment"], scale=[1.0, 1.0], shift=0.0, rotate_p=0.0, flip_p=0.0, grey_p=0.0,
                 colour=0.0, blur_p=0.0, jpeg_p=0.0, noise_p=0.0, sharp_min=1e9)
    for p, box_of in ((0.0, cache.boxes), (1.0, cache.landmark_boxes)):
        faces = AugmentedFaces(cache, dict(plain, landmark_box_p=p), seed=0)
        for i in range(len(cache)):
            assert np.array_equal(faces[i][0], crop_face(cache.images[i], box_of[i], spec))
    # a face without a mesh keeps its own box
    bare = CropCache(samples[:2], spec, 1.6)
    assert np.isnan(bare.landmark_boxes).all()
    faces = AugmentedFaces(bare, dict(plain, landmark_box_p=1.0), seed=0)
    assert np.array_equal(faces[0][0], crop_face(bare.images[0], bare.boxes[0], spec))


def test_in_the_wild_nuisances_hide_or_shrink_the_face_and_drop_the_blur_label(shared_data):
    """occlude_p hides a rectangle of the crop; lowres_p shrinks the face and back, and such a crop carries
    no blur label (its softness is not a blur the model should score)."""
    from edgeface.faces.blur import sharpness
    from edgeface.faces.data import load_samples
    from edgeface.model.train import TRAIN_SCHEMA, AugmentedFaces, CropCache

    spec = ModelSpec(input_size=112)
    cache = CropCache(load_samples(shared_data / "celeba", split="val")[:6], spec, 1.6)
    plain = dict(TRAIN_SCHEMA["augment"], scale=[1.0, 1.0], shift=0.0, rotate_p=0.0, flip_p=0.0, grey_p=0.0,
                 colour=0.0, blur_p=0.0, jpeg_p=0.0, noise_p=0.0, sharp_min=0.0)
    base = AugmentedFaces(cache, plain, seed=0)
    hidden = AugmentedFaces(cache, dict(plain, occlude_p=1.0), seed=0)
    small = AugmentedFaces(cache, dict(plain, lowres_p=1.0), seed=0)
    for i in range(len(cache)):
        img, _, blur = base[i]
        assert blur == 0.0
        changed = np.any(hidden[i][0] != img, axis=2)
        assert 0.02 < changed.mean() < 0.3  # one rectangle of 15-50 % per side
        shrunk, _, no_label = small[i]
        assert np.isnan(no_label) and sharpness(shrunk) < sharpness(img)
