"""Foundation: spec round trip, crop rule, pose algebra, blur label, readers, model size, checkpoints."""
from __future__ import annotations


import cv2
import numpy as np
import pytest

from edgeface.faces.blur import apply_blur, blur_label, degrade, sharpness, sigma_for_label
from edgeface.core.errors import EdgefaceError
from edgeface.faces.pose import flip_pose, rotate_pose, rotation_angle
from edgeface.core.preprocess import crop_face, to_input
from edgeface.core.spec import ModelSpec


def test_spec_roundtrip_and_bad_json():
    s = ModelSpec(width=0.5, model_version="9.9")
    assert ModelSpec.from_json(s.to_json()) == s
    with pytest.raises(EdgefaceError, match="not valid JSON"):
        ModelSpec.from_json("{nope")
    with pytest.raises(EdgefaceError, match="malformed"):
        ModelSpec.from_dict({"outputs": [{"nam": 1}]})


def test_crop_rule_centres_box_and_pads():
    spec = ModelSpec()
    img = np.zeros((200, 300, 3), np.uint8)
    cv2.rectangle(img, (100, 50), (159, 109), (255, 255, 255), -1)  # a 60 px box
    crop = crop_face(img, (100, 50, 60, 60), spec)
    assert crop.shape == (112, 112, 3)
    # the box covers 1/1.4 of the crop, centred
    inner = 112 / 1.4
    lo, hi = int(56 - inner / 2) + 2, int(56 + inner / 2) - 2
    assert crop[lo:hi, lo:hi].min() > 200
    assert crop[:lo - 6].max() < 50
    # a box past the border is padded, not an error
    assert crop_face(img, (-50, -50, 120, 120), spec).shape == (112, 112, 3)
    with pytest.raises(EdgefaceError, match="no area"):
        crop_face(img, (0, 0, 0, 10), spec)


def test_rotation_moves_content_clockwise():
    spec = ModelSpec()
    img = np.zeros((112, 112, 3), np.uint8)
    img[10:20, 51:61] = 255  # a dot straight above the centre
    box = (56 - 40, 56 - 40, 80, 80)
    rot = crop_face(img, box, spec, angle_deg=90)
    ys, xs = np.nonzero(rot[..., 0] > 128)
    assert xs.mean() > 80 and abs(ys.mean() - 56) < 8  # top went to the right: clockwise


def test_pose_rotation_exact():
    assert np.allclose(rotate_pose(0, 0, 0, 30), (0, 0, 30), atol=1e-9)
    y, p, r = rotate_pose(45, 0, 0, 30)  # field-notes example
    assert abs(y - 37.8) < 0.2 and abs(p - 26.6) < 0.2 and abs(r - 39.2) < 0.2
    back = rotate_pose(*rotate_pose(20, -10, 5, 25), -25)
    assert np.allclose(back, (20, -10, 5), atol=1e-6)
    assert flip_pose(10, 5, -3) == (-10, 5, 3)


def test_rotation_angle_is_how_far_the_head_turned():
    assert np.allclose(rotation_angle([[10, 5, 3]], [[10, 5, 3]]), 0.0, atol=1e-9)
    assert np.allclose(rotation_angle([[0, 0, 12]], [[0, 0, 0]]), 12.0)
    assert np.allclose(rotation_angle([[0, 0, 0.01]], [[0, 0, 0]]), 0.01, rtol=1e-6)  # exact for tiny turns
    # Near 90 deg yaw a 10 deg tilt in the image moves Euler pitch and roll by ~60 deg each: one turn of 10 deg.
    tilted = rotate_pose(85, 0, 0, 10)
    assert abs(tilted[1]) > 50 and abs(tilted[2]) > 50
    assert np.allclose(rotation_angle([tilted], [[85, 0, 0]]), 10.0)
    # Vectorised, and symmetric.
    a, b = np.array([[30, -10, 5], [70, 20, -15]]), np.array([[25, -5, 5], [75, 10, 0]])
    assert np.allclose(rotation_angle(a, b), rotation_angle(b, a))
    assert rotation_angle(a, b).shape == (2,)


def test_blur_label_monotonic_and_noise_is_not_blur():
    sig = np.linspace(0, 10, 50)
    lab = blur_label(sig)
    assert lab[0] == 0 and np.all(np.diff(lab) > 0) and lab[-1] < 1
    assert abs(sigma_for_label(float(blur_label(3.0))) - 3.0) < 1e-9
    rng = np.random.default_rng(0)
    img = (np.random.default_rng(1).random((112, 112, 3)) * 255).astype(np.uint8)
    img = cv2.GaussianBlur(img, (0, 0), 1.0)
    s0 = sharpness(img)
    assert sharpness(apply_blur(img, "motion", 3.0, 30)) < s0
    assert sharpness(apply_blur(img, "defocus", 3.0)) < s0
    noisy = degrade(img, rng, jpeg_p=0.0, noise_p=1.0)
    assert sharpness(noisy) > 0.5 * s0  # noise does not make a face look soft


def test_to_input_normalises_rgb():
    spec = ModelSpec()
    batch = np.zeros((2, 112, 112, 3), np.uint8)
    batch[..., 2] = 255  # red in BGR
    x = to_input(batch, spec)
    assert x.shape == (2, 3, 112, 112) and x.dtype == np.float32
    assert np.allclose(x[:, 0], 1.0) and np.allclose(x[:, 2], -1.0)


def test_model_size_matches_spec():
    from edgeface.engines.torch.network import build_model, count_macs, count_params

    m = build_model(ModelSpec())
    assert 0.2e6 < count_params(m) < 0.3e6
    assert 9.0e6 < count_macs(m) < 10.5e6


def test_checkpoint_roundtrip_and_corrupt(tmp_path, checkpoint):
    from edgeface.engines.torch.checkpoint import load_model

    model, spec, _ = load_model(checkpoint)
    assert spec.input_size == 112
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x02not a checkpoint")
    with pytest.raises(EdgefaceError, match="not a readable edgeface checkpoint"):
        load_model(bad)
    import torch

    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(1)}, plain)
    with pytest.raises(EdgefaceError, match="no ModelSpec"):
        load_model(plain)
