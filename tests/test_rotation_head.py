"""The rot6d pose head: a rotation decoded to yaw/pitch/roll inside the graph, the same in torch and ncnn."""
from __future__ import annotations

import numpy as np
import pytest

from edgeface.faces.pose import matrix_to_pose, pose_to_matrix

torch = pytest.importorskip("torch")


def _poses(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.uniform(-88, 88, n), rng.uniform(-80, 80, n), rng.uniform(-80, 80, n)], 1)


def _six_d(poses: np.ndarray, seed: int = 1) -> np.ndarray:
    """Two columns of each pose's matrix, scaled and skewed as an untrained head's would be (Gram-Schmidt
    must undo both)."""
    rng = np.random.default_rng(seed)
    out = []
    for yaw, pitch, roll in poses:
        m = pose_to_matrix(yaw, pitch, roll)
        out.append(np.concatenate([m[:, 0] * rng.uniform(0.3, 3.0), m[:, 1] * rng.uniform(0.3, 3.0) + 0.4 * m[:, 0]]))
    return np.asarray(out, np.float32)


def test_decode_recovers_the_pose_para_angles():
    from edgeface.engines.torch.network import matrix_columns_to_euler, rot6d_to_matrix_columns

    poses = _poses(500)
    decoded = matrix_columns_to_euler(*rot6d_to_matrix_columns(torch.from_numpy(_six_d(poses)))).numpy()
    assert np.abs(decoded - poses).max() < 0.01
    # and the convention is faces.pose's: matrix_to_pose inverts the same matrices
    assert np.allclose([matrix_to_pose(pose_to_matrix(*p)) for p in poses[:20]], poses[:20], atol=1e-6)


def test_rot6d_network_outputs_degrees_and_its_rotation():
    from edgeface.engines.torch.network import EdgeFaceNet

    net = EdgeFaceNet(0.25, pose_head="rot6d").eval()
    with torch.no_grad():
        blur, pose, rotation = net(torch.zeros(2, 3, 112, 112), with_rotation=True)
        _, plain = net(torch.zeros(2, 3, 112, 112))
    assert pose.shape == plain.shape == (2, 3) and rotation.shape == (2, 3, 3)
    assert torch.allclose(pose, plain)
    assert np.allclose(rotation[0].numpy() @ rotation[0].numpy().T, np.eye(3), atol=1e-5)  # orthonormal
    assert np.abs(pose.numpy()).max() < 5.0  # starts near the identity (a frontal face), not at a random pose


def test_geodesic_loss_is_the_rotation_angle_and_skips_partial_labels():
    from edgeface.model.train import geodesic_loss, pose_matrices

    truth = torch.tensor([[30.0, 10.0, -5.0], [0.0, 0.0, 0.0], [20.0, float("nan"), 0.0]])
    assert np.allclose(pose_matrices(truth[:2]).numpy(), [pose_to_matrix(*p) for p in truth[:2].numpy()], atol=1e-6)
    same = pose_matrices(torch.nan_to_num(truth))
    assert float(geodesic_loss(same, truth)) < 0.01
    turned = pose_matrices(torch.tensor([[30.0, 10.0, -5.0], [0.0, 0.0, 40.0], [0.0, 0.0, 0.0]]))
    # row 0: the same rotation (0 deg); row 1: 40 deg of roll; row 2 has no pitch label and is left out
    assert float(geodesic_loss(turned, truth)) == pytest.approx((0.0 + 40.0) / 2 / 10.0, abs=0.01)
    # weighted: row 1 counts three times as much as row 0
    assert float(geodesic_loss(turned, truth, torch.tensor([1.0, 3.0, 5.0]))) == pytest.approx(
        (0.0 + 3 * 40.0) / 4 / 10.0, abs=0.01)


def test_wide_yaw_faces_weigh_more_in_the_pose_losses():
    from edgeface.model.train import face_weights, masked_losses

    truth = torch.tensor([[70.0, 0.0, float("nan")], [-65.0, 0.0, 0.0], [10.0, 0.0, 0.0], [float("nan"), 5.0, 0.0]])
    w = face_weights(truth, 3.0)
    assert w.tolist() == [3.0, 3.0, 1.0, 1.0]  # |yaw| >= 60 either way; an unknown yaw is not wide
    pred = truth.nan_to_num() + torch.tensor([[10.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    blur = torch.zeros(4, 1)
    plain, _ = masked_losses(blur, pred, torch.full((4,), float("nan")), truth, beta=2.0)
    same, _ = masked_losses(blur, pred, torch.full((4,), float("nan")), truth, beta=2.0, weights=torch.ones(4))
    weighted, _ = masked_losses(blur, pred, torch.full((4,), float("nan")), truth, beta=2.0, weights=w)
    assert float(same) == pytest.approx(float(plain))
    # one error term of 1.0 - 0.1 = 0.9 (smooth L1 at 1.0, beta 0.2) among 10 known terms; weighted, 3 of 20 units
    assert float(plain) == pytest.approx(0.9 / 10, abs=1e-5)
    assert float(weighted) == pytest.approx(3 * 0.9 / (2 * 3 + 3 * 3 + 3 * 1 + 2 * 1), abs=1e-5)


def test_ncnn_decode_layers_match_torch():
    """The decode written as ncnn layers (pnnx cannot convert it) against the torch decode."""
    ncnn = pytest.importorskip("ncnn")
    from edgeface.engines.torch.network import matrix_columns_to_euler, rot6d_to_matrix_columns
    from edgeface.export.ncnn import append_layers, rot6d_decode_layers

    param = append_layers("7767517\n1 1\nInput in0 0 1 six 0=6\n", rot6d_decode_layers("six", "pose"))
    header, counts, *layers = param.splitlines()
    assert int(counts.split()[0]) == len(layers)
    consumers: dict[str, int] = {}
    for line in layers:
        parts = line.split()
        for blob in parts[4:4 + int(parts[2])]:
            consumers[blob] = consumers.get(blob, 0) + 1
    assert max(consumers.values()) == 1  # every blob read once: Splits where the decode reads one twice
    net = ncnn.Net()
    assert net.load_param_mem(param) == 0
    net.load_model_mem(b"")
    six = _six_d(_poses(64, seed=3), seed=4)
    want = matrix_columns_to_euler(*rot6d_to_matrix_columns(torch.from_numpy(six))).numpy()
    got = []
    for row in six:
        with net.create_extractor() as ex:
            ex.input("six", ncnn.Mat(row.copy()))
            _, out = ex.extract("pose")
            got.append(np.array(out))
    assert np.abs(np.asarray(got) - want).max() < 1e-3


def test_warm_start_across_head_kinds_keeps_the_trunk(tmp_path, checkpoint):
    import dataclasses

    from edgeface.core.spec import ModelSpec
    from edgeface.engines.torch.checkpoint import read_checkpoint
    from edgeface.model.train import _init_state

    src = read_checkpoint(checkpoint)
    other = "euler" if ModelSpec.from_dict(src["spec"]).pose_head == "rot6d" else "rot6d"
    spec = dataclasses.replace(ModelSpec.from_dict(src["spec"]), pose_head=other)
    state = _init_state(str(checkpoint), spec)
    trunk = [k for k in src["state_dict"] if not k.startswith("pose_head.")]
    assert all(torch.equal(state[k], src["state_dict"][k]) for k in trunk)
    assert state["pose_head.weight"].shape[0] == (6 if other == "rot6d" else 3)
