"""Face profiling: re-render a face photo at a new head rotation from its 3D face mesh, with an exact label.

The idea behind 300W-LP: fit 3D points to a near-frontal photo, rotate them, and warp the photo triangle by
triangle so the face appears turned. Here the 3D points are MediaPipe FaceMesh's 468 landmarks that the
data pack ships per image (``mesh.npz``). numpy + OpenCV (+ scipy's Delaunay); no torch.

Geometry (camera frame: x right, y up, z toward the viewer; the stored mesh is x right, y down, z away,
so y and z are flipped on the way in; projection is orthographic, as MediaPipe's z is in pixel units):

* The mesh covers brows to chin only. The rest of the head (forehead and hair above, ears and the side of
  the head, jaw and neck edge below) is modelled as rings of extra points outside the face oval that curve
  back to a silhouette in the plane of a head centre put ``HEAD_DEPTH`` face widths behind the face.
  They turn with the face. A far ring and the image border stay fixed, so the background stays put and
  only the band between the head's silhouette and the far ring stretches.
* Triangles (Delaunay over the source positions) are drawn far to near into an index map, so the near side
  of the face hides the far side; triangles that turn their back to the camera are culled. One inverse
  affine per triangle and one ``cv2.remap`` render the image.
* The rotation changes the *Euler* yaw (and optionally pitch) and keeps the other angles, as 300W-LP did:
  R' = Rx(-(p + dp)) Ry(-(y + dy)) Rz(-r). Turning about the camera's vertical axis instead is just as
  exact, but a pitched source turned by 80 deg reads e.g. yaw -73 / pitch -58 / roll 59: Euler angles near
  +-90 deg yaw trade pitch against roll, a label that is exact but hard to learn.

Where it breaks (as 300W-LP does): beyond ~60 deg the side of the head is a stretched strip of the
source's hair or background, and the far side's hair smears. The face itself (what the model reads) holds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .errors import EdgefaceError
from .pose import matrix_to_pose, pose_to_matrix

N_MESH_POINTS = 468
# MediaPipe FaceMesh's face-oval contour (landmark indices, in order around the face).
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152,
             148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
CHEEK_RIGHT, CHEEK_LEFT = 234, 454  # the subject's right / left cheek (image-left / -right when frontal)

HEAD_DEPTH = 0.55  # head centre behind the face's mean depth, in face widths (cheek to cheek)
# How far the head reaches beyond the face oval, in face widths: to the sides (ears), above (hair) and
# below (jaw and neck edge); directions in between blend smoothly.
HEAD_REACH_SIDE, HEAD_REACH_TOP, HEAD_REACH_BOTTOM = 0.12, 0.45, 0.06
HEAD_RINGS = (0.35, 0.7, 1.0)  # fractions of the reach; 1.0 is the silhouette, in the head centre's plane
FIXED_RING = 0.35  # the far ring that stays put, this many face widths beyond the silhouette
BORDER_STEPS = 4  # fixed points per image edge


@dataclass(frozen=True)
class ProfiledFace:
    image: np.ndarray  # uint8 HxWx3 BGR, same size as the source
    pose: tuple[float, float, float]  # yaw, pitch, roll in degrees (Pose_Para convention)
    box: tuple[float, float, float, float]  # x, y, w, h: the face box, same convention as the source's box
    mesh: np.ndarray  # (468, 3) the turned face points, stored convention (x, y pixels down, z away)


def check_mesh(mesh: np.ndarray) -> np.ndarray:
    mesh = np.asarray(mesh, dtype=np.float64)
    if mesh.shape != (N_MESH_POINTS, 3) or not np.isfinite(mesh).all():
        raise EdgefaceError(f"face mesh has shape {mesh.shape} or non-finite values; expected ({N_MESH_POINTS}, 3) "
                            f"MediaPipe FaceMesh points (x, y pixels, z depth)")
    return mesh


def to_camera(mesh: np.ndarray) -> np.ndarray:
    """Stored mesh (x right, y down, z away from the viewer) -> camera frame (x right, y up, z toward it)."""
    return mesh * np.array([1.0, -1.0, -1.0])


def target_rotation(pose: tuple[float, float, float], d_yaw: float, d_pitch: float = 0.0) -> tuple[float, float, float]:
    """The label of a render: Euler yaw and pitch changed, roll kept (300W-LP's choice)."""
    yaw, pitch, roll = pose
    return (yaw + d_yaw, pitch + d_pitch, roll)


def _head_points(face: np.ndarray, rot: np.ndarray, width: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Head-centre (camera frame), moving head-ring points and the fixed far ring (camera frame)."""
    forward = rot[:, 2]
    centre = face.mean(axis=0) - HEAD_DEPTH * width * forward
    local = (face - centre) @ rot  # head frame: rows are points, columns the head's x/up/forward axes
    oval = local[list(FACE_OVAL)]
    mid = oval[:, :2].mean(axis=0)
    radial = oval[:, :2] - mid
    radial /= np.linalg.norm(radial, axis=1, keepdims=True) + 1e-9
    up = radial[:, 1]
    reach = (HEAD_REACH_SIDE + (HEAD_REACH_TOP - HEAD_REACH_SIDE) * np.clip(up, 0, None) ** 2
             + (HEAD_REACH_BOTTOM - HEAD_REACH_SIDE) * np.clip(-up, 0, None) ** 2) * width
    rings = []
    for t in HEAD_RINGS:
        xy = oval[:, :2] + radial * (t * reach)[:, None]
        # Depth follows a quarter ellipse from the oval back to the centre's plane, tangent to the line of
        # sight at the silhouette (t = 1), as a head's outline is.
        z = oval[:, 2] * math.sqrt(max(0.0, 1.0 - t * t))
        rings.append(np.column_stack([xy, z]))
    far_xy = oval[:, :2] + radial * (reach + FIXED_RING * width)[:, None]
    far = np.column_stack([far_xy, np.zeros(len(oval))])
    to_cam = lambda p: p @ rot.T + centre  # noqa: E731 - local inverse of the head-frame change above
    return centre, to_cam(np.concatenate(rings)), to_cam(far)


def _border_points(h: int, w: int) -> np.ndarray:
    s = np.linspace(0, 1, BORDER_STEPS + 1)
    xs, ys = s * (w - 1), s * (h - 1)
    pts = [(x, 0) for x in xs] + [(x, h - 1) for x in xs] + [(0, y) for y in ys[1:-1]] + [(w - 1, y) for y in ys[1:-1]]
    return np.array(pts, np.float64)


def _triangles(points2d: np.ndarray) -> np.ndarray:
    from scipy.spatial import Delaunay

    return Delaunay(points2d).simplices.astype(np.int64)


def _signed_area(p: np.ndarray, tris: np.ndarray) -> np.ndarray:
    a, b, c = p[tris[:, 0]], p[tris[:, 1]], p[tris[:, 2]]
    return 0.5 * ((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))


def warp_triangles(image: np.ndarray, src: np.ndarray, dst: np.ndarray, tris: np.ndarray, depth: np.ndarray,
                   keep: np.ndarray) -> np.ndarray:
    """Piecewise-affine warp: triangle ``tris[i]`` moves from ``src`` to ``dst`` (pixel positions); where
    triangles overlap, the one with the larger ``depth`` (nearer) wins. Pixels no triangle covers keep
    their source value."""
    h, w = image.shape[:2]
    index = np.full((h, w), -1, np.int32)
    order = np.argsort(depth, kind="stable")
    fixed = (dst * 16).round().astype(np.int32)  # fillConvexPoly's 4 fractional bits
    for t in order:
        if keep[t]:
            cv2.fillConvexPoly(index, fixed[tris[t]], int(t), lineType=cv2.LINE_8, shift=4)
    # Inverse affine per triangle, destination pixel -> source pixel: S = A @ [D; 1].
    d = np.concatenate([dst[tris], np.ones((len(tris), 3, 1))], axis=2)  # (T, 3, 3): rows are vertices
    s = src[tris]  # (T, 3, 2)
    ok = np.abs(np.linalg.det(d)) > 1e-9
    affine = np.zeros((len(tris), 3, 2))
    affine[ok] = np.linalg.solve(d[ok], s[ok])  # d @ A = s  ->  A maps [x, y, 1] to source x, y
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    map_x, map_y = xs.copy(), ys.copy()
    hit = index >= 0
    a = affine[index[hit]]
    px, py = xs[hit], ys[hit]
    map_x[hit] = (px * a[:, 0, 0] + py * a[:, 1, 0] + a[:, 2, 0]).astype(np.float32)
    map_y[hit] = (px * a[:, 0, 1] + py * a[:, 1, 1] + a[:, 2, 1]).astype(np.float32)
    return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _extent_box(points2d: np.ndarray) -> tuple[float, float, float]:
    lo, hi = points2d.min(axis=0), points2d.max(axis=0)
    c = (lo + hi) / 2
    return float(c[0]), float(c[1]), float(max(hi - lo))


def profile_face(image: np.ndarray, mesh: np.ndarray, pose: tuple[float, float, float],
                 box: tuple[float, float, float, float], d_yaw: float, d_pitch: float = 0.0) -> ProfiledFace:
    """Re-render ``image`` with the head turned by ``d_yaw`` (and nodded by ``d_pitch``) Euler degrees.

    ``mesh`` is the image's (468, 3) FaceMesh points as stored in ``mesh.npz``, ``pose`` its yaw/pitch/roll
    label (the teacher's, computed from the same mesh), ``box`` its face box. The new box keeps the source
    box's relation to the mesh's extent (centre offset and side, in units of the extent's longer side), so
    renders are cropped as the data pack's photos are.
    """
    mesh = check_mesh(mesh)
    if not all(math.isfinite(v) for v in (*pose, d_yaw, d_pitch)):
        raise EdgefaceError(f"face profiling needs a finite pose and rotation, got pose {pose}, d_yaw {d_yaw}, d_pitch {d_pitch}")
    h, w = image.shape[:2]
    face = to_camera(mesh)
    rot = pose_to_matrix(*pose)
    new_pose = target_rotation(pose, d_yaw, d_pitch)
    new_rot = pose_to_matrix(*new_pose)
    width = float(np.linalg.norm(face[CHEEK_LEFT] - face[CHEEK_RIGHT]))
    if width < 4:
        raise EdgefaceError(f"face mesh is {width:.1f} px wide; too small to re-render")
    centre, ring, far = _head_points(face, rot, width)
    moving = np.concatenate([face, ring])
    turned = (moving - centre) @ (new_rot @ rot.T).T + centre
    fixed2d = np.concatenate([far[:, :2], _border_points(h, w) * np.array([1.0, -1.0])])

    # Image pixels: x right, y down (the camera frame's y negated).
    to_px = np.array([1.0, -1.0])
    src = np.concatenate([moving[:, :2], fixed2d]) * to_px
    dst = np.concatenate([turned[:, :2], fixed2d]) * to_px
    tris = _triangles(src)
    n_moving = len(moving)
    depth_of = np.concatenate([turned[:, 2], np.full(len(fixed2d), -np.inf)])
    is_fixed = (tris >= n_moving).any(axis=1)
    # Background triangles first (they touch a fixed point), then the head far to near.
    depth = np.where(is_fixed, -np.inf, depth_of[tris].mean(axis=1))
    src_area, dst_area = _signed_area(src, tris), _signed_area(dst, tris)
    keep = is_fixed | (np.sign(src_area) == np.sign(dst_area))  # cull head triangles turned away
    out = warp_triangles(image, src, dst, tris, depth, keep)

    sx, sy, sside = _extent_box(face[:, :2] * to_px)
    bx, by, bw, bh = (float(v) for v in box)
    rel = ((bx + bw / 2 - sx) / sside, (by + bh / 2 - sy) / sside, bw / sside, bh / sside)
    nx, ny, nside = _extent_box(turned[:N_MESH_POINTS, :2] * to_px)
    nw, nh = rel[2] * nside, rel[3] * nside
    new_box = (nx + rel[0] * nside - nw / 2, ny + rel[1] * nside - nh / 2, nw, nh)
    exact = matrix_to_pose(new_rot)  # the Euler triple that R' decomposes to (equal to new_pose below 90 deg)
    return ProfiledFace(out, exact, new_box, to_camera(turned[:N_MESH_POINTS]))
