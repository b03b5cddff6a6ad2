"""Head-pose rotation algebra in the AFLW2000-3D Pose_Para convention.

R = Rx(-pitch) @ Ry(-yaw) @ Rz(-roll), camera frame x right, y up, z toward the viewer.
An in-plane image rotation by theta clockwise left-multiplies R by Rz(-theta); the three angles all
change unless yaw = pitch = 0 (then only roll grows by theta).
"""
from __future__ import annotations

import numpy as np


def _rz(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def pose_to_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    return pose_matrices([[yaw, pitch, roll]])[0]


def matrix_to_pose(m: np.ndarray) -> tuple[float, float, float]:
    # m = Rx(a) Ry(b) Rz(c): m02 = sin b, m12 = -sin a cos b, m22 = cos a cos b, m01 = -cos b sin c, m00 = cos b cos c
    b = np.arcsin(np.clip(m[0, 2], -1.0, 1.0))
    a = np.arctan2(-m[1, 2], m[2, 2])
    c = np.arctan2(-m[0, 1], m[0, 0])
    return float(np.degrees(-b)), float(np.degrees(-a)), float(np.degrees(-c))


def rotate_pose(yaw: float, pitch: float, roll: float, theta_deg: float) -> tuple[float, float, float]:
    """Pose after the image is rotated clockwise by ``theta_deg`` (exact, not roll += theta)."""
    return matrix_to_pose(_rz(np.radians(-theta_deg)) @ pose_to_matrix(yaw, pitch, roll))


def flip_pose(yaw: float, pitch: float, roll: float) -> tuple[float, float, float]:
    """Pose after a horizontal mirror: yaw and roll change sign, pitch stays."""
    return -yaw, pitch, -roll


def pose_matrices(poses) -> np.ndarray:
    """(N, 3, 3) rotation matrices of (N, 3) yaw / pitch / roll degrees (``pose_to_matrix``, vectorised)."""
    y, p, r = np.radians(np.asarray(poses, np.float64).reshape(-1, 3)).T
    cy, sy, cp, sp, cr, sr = np.cos(y), np.sin(y), np.cos(p), np.sin(p), np.cos(r), np.sin(r)
    one, zero = np.ones_like(y), np.zeros_like(y)
    rx = np.stack([one, zero, zero, zero, cp, sp, zero, -sp, cp], -1).reshape(-1, 3, 3)   # Rx(-pitch)
    ry = np.stack([cy, zero, -sy, zero, one, zero, sy, zero, cy], -1).reshape(-1, 3, 3)   # Ry(-yaw)
    rz = np.stack([cr, sr, zero, -sr, cr, zero, zero, zero, one], -1).reshape(-1, 3, 3)   # Rz(-roll)
    return rx @ ry @ rz


def rotation_angle(poses, reference) -> np.ndarray:
    """(N,) degrees: the angle of the rotation that takes each reference head pose to the other one.

    This is how far an answer moved, whatever the angles' convention: near ±90° yaw the Euler pitch and roll
    turn about nearly the same axis, so a head that turns by a few degrees can read 30° apart in pitch and in
    roll. From the chordal distance (2 asin(|Ra - Rb|_F / 2√2)), which stays exact for tiny angles where
    acos of the trace does not.
    """
    diff = pose_matrices(poses) - pose_matrices(reference)
    chord = np.sqrt((diff ** 2).sum(axis=(1, 2))) / (2.0 * np.sqrt(2.0))
    return np.degrees(2.0 * np.arcsin(np.clip(chord, 0.0, 1.0)))
