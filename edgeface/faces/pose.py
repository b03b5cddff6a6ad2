"""Head-pose rotation algebra in the AFLW2000-3D Pose_Para convention.

R = Rx(-pitch) @ Ry(-yaw) @ Rz(-roll), camera frame x right, y up, z toward the viewer.
An in-plane image rotation by theta clockwise left-multiplies R by Rz(-theta); the three angles all
change unless yaw = pitch = 0 (then only roll grows by theta).
"""
from __future__ import annotations

import numpy as np


def _rx(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _ry(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rz(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def pose_to_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    y, p, r = np.radians([yaw, pitch, roll])
    return _rx(-p) @ _ry(-y) @ _rz(-r)


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
