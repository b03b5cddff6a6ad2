"""Face profiling: re-render a face photo at a new head rotation from its 3D face mesh, with an exact label.

The idea behind 300W-LP: fit 3D points to a near-frontal photo, rotate them, and warp the photo triangle by
triangle so the face appears turned. Here the 3D points are MediaPipe FaceMesh's 468 landmarks that the
data pack ships per image (``mesh.npz``). numpy + OpenCV (+ scipy's Delaunay); no torch.

Geometry (camera frame: x right, y up, z toward the viewer; the stored mesh is x right, y down, z away,
so y and z are flipped on the way in; projection is orthographic, as MediaPipe's z is in pixel units):

* The mesh covers brows to chin only. The rest of the head (forehead and hair above, ears and the side of
  the head, jaw and neck edge below) is modelled as rings of extra points outside the face oval that curve
  back to a silhouette in the plane of a head centre put ``HEAD_DEPTH`` face widths behind the face.
  They turn with the face. A far ring stays fixed: the background beyond it stays put, and only the band
  between the head's silhouette and the far ring stretches.
* Triangles: Delaunay over the face points in cylindrical coordinates about the head's axis (neighbours on
  the skin, not in the photo's foreshortened projection), then bands joining each ring to the next. They
  are drawn far to near into an index map, so the near side of the face hides the far side. One inverse
  affine per triangle and one ``cv2.remap`` render the image, on a canvas grown (border replicated) where
  the turned head would leave the frame.
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

from ..core.errors import EdgefaceError
from ..core.preprocess import check_image
from ..faces.pose import matrix_to_pose, pose_to_matrix

N_MESH_POINTS = 468
# MediaPipe FaceMesh's face-oval contour (landmark indices, in order around the face).
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152,
             148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
CHEEK_RIGHT, CHEEK_LEFT = 234, 454

# The FaceMesh points nearest the 68 landmarks of 300W/AFLW2000-3D (jaw line, brows, nose, eyes, mouth): their box
# is the "landmark box" that in-the-wild benchmarks crop from, tighter and lower than a detector's box (brows to
# chin, jaw to jaw; no forehead). Training on both kinds of box keeps the model from reading the box's framing.
LANDMARKS68 = (234, 93, 132, 58, 172, 136, 150, 149, 152, 378, 379, 365, 397, 288, 361, 323, 454,  # jaw
               70, 63, 105, 66, 107, 336, 296, 334, 293, 300,  # brows
               168, 197, 5, 4, 75, 97, 2, 326, 305,  # nose
               33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,  # eyes
               61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181, 78, 82, 13, 312, 308, 317, 14, 87)  # mouth


def landmark_box(mesh: np.ndarray, m: np.ndarray | None = None) -> tuple[float, float, float, float]:
    """The box (x, y, w, h) of the mesh's 68-landmark points, in image pixels or, with the 2x3 affine ``m``
    (an image-to-crop matrix without rotation), in the crop's pixels."""
    pts = np.asarray(mesh, np.float64)[list(LANDMARKS68), :2]
    if m is not None:
        pts = pts @ np.asarray(m, np.float64)[:, :2].T + np.asarray(m, np.float64)[:, 2]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    return float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])
  # the subject's right / left cheek (image-left / -right when frontal)

HEAD_DEPTH = 0.55  # head centre behind the face's mean depth, in face widths (cheek to cheek)
# How far the head reaches beyond the face oval, in face widths: to the sides (ears), above (hair) and
# below (jaw and neck edge); directions in between blend smoothly.
HEAD_REACH_SIDE, HEAD_REACH_TOP, HEAD_REACH_BOTTOM = 0.12, 0.45, 0.06
HEAD_RINGS = (0.35, 0.7, 1.0)  # fractions of the reach; 1.0 is the silhouette, in the head centre's plane
ELLIPSE_START = 0.5  # where on the head's outline ellipse the face oval sits (0 = facing the camera)
FIXED_RING = 0.35  # the far ring that stays put, this many face widths beyond the silhouette


@dataclass(frozen=True)
class ProfiledFace:
    image: np.ndarray  # uint8 BGR: the source grown by ``margin`` px on every side (border replicated)
    pose: tuple[float, float, float]  # yaw, pitch, roll in degrees (Pose_Para convention)
    box: tuple[float, float, float, float]  # x, y, w, h in ``image`` pixels, the source box's convention
    mesh: np.ndarray  # (468, 3) the turned face points in ``image`` pixels (stored convention: y down, z away)
    margin: int = 0  # 0 unless the turned head would leave the source's frame


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


def _head_rings(face: np.ndarray, rot: np.ndarray, width: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """Head centre and the rings around the face (camera frame), inner to outer, each ``len(FACE_OVAL)``
    points in oval order: the moving head rings, then the fixed far ring last."""
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
        # Depth follows an ellipse from the oval back to the centre's plane, tangent to the line of sight at
        # the silhouette (t = 1), as a head's outline is. It starts part-way round (ELLIPSE_START), already
        # falling away faster than the cheek does: a flat start would make a crease at the oval that
        # folds over itself as the head turns (seen as saw teeth at the ear).
        u = ELLIPSE_START + (1.0 - ELLIPSE_START) * t
        z = oval[:, 2] * math.sqrt(max(0.0, 1.0 - u * u)) / math.sqrt(1.0 - ELLIPSE_START ** 2)
        rings.append(np.column_stack([xy, z]))
    far_xy = oval[:, :2] + radial * (reach + FIXED_RING * width)[:, None]
    rings.append(np.column_stack([far_xy, np.zeros(len(oval))]))
    return centre, [r @ rot.T + centre for r in rings]


def _strip(inner: np.ndarray, outer: np.ndarray) -> np.ndarray:
    """Triangles joining two closed rings of point indices, point i to point i (a band of quads, halved)."""
    nxt = np.roll(np.arange(len(inner)), -1)
    return np.concatenate([np.column_stack([inner, outer, outer[nxt]]),
                           np.column_stack([inner, outer[nxt], inner[nxt]])])


def _mesh_triangles(face: np.ndarray, centre: np.ndarray, rot: np.ndarray, width: float) -> np.ndarray:
    """Triangles over the face points: Delaunay in cylindrical coordinates about the head's vertical axis.

    In the photo's own projection the cheeks are foreshortened, and a 2D Delaunay there joins points across
    depth (slivers from the cheek's edge to the ear) that fold into saw teeth once the cheek turns toward the
    camera. Around the head's axis the face is a single-valued surface, so neighbours there are neighbours
    on the skin. The hull is the face oval, so no triangle leaves the face.
    """
    from scipy.spatial import Delaunay

    local = (face - centre) @ rot
    around = np.arctan2(local[:, 0], local[:, 2]) * (HEAD_DEPTH * width)  # arc length at about the face's radius
    return Delaunay(np.column_stack([around, local[:, 1]])).simplices.astype(np.int64)


def warp_triangles(image: np.ndarray, src: np.ndarray, dst: np.ndarray, tris: np.ndarray,
                   depth: np.ndarray) -> np.ndarray:
    """Piecewise-affine warp: triangle ``tris[i]`` moves from ``src`` to ``dst`` (pixel positions); where
    triangles overlap, the one with the larger ``depth`` (nearer) wins. Pixels no triangle covers keep
    their source value."""
    h, w = image.shape[:2]
    index = np.full((h, w), -1, np.int32)
    order = np.argsort(depth, kind="stable")
    fixed = (dst * 16).round().astype(np.int32)  # fillConvexPoly's 4 fractional bits
    for t in order:
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
    image = check_image(image)
    if not all(math.isfinite(v) for v in (*pose, d_yaw, d_pitch)):
        raise EdgefaceError(f"face profiling needs a finite pose and rotation, got pose {pose}, d_yaw {d_yaw}, d_pitch "
                            f"{d_pitch}")
    face = to_camera(mesh)
    rot = pose_to_matrix(*pose)
    new_pose = target_rotation(pose, d_yaw, d_pitch)
    new_rot = pose_to_matrix(*new_pose)
    width = float(np.linalg.norm(face[CHEEK_LEFT] - face[CHEEK_RIGHT]))
    if width < 4:
        raise EdgefaceError(f"face mesh is {width:.1f} px wide; too small to re-render")
    centre, rings = _head_rings(face, rot, width)
    n_face, n_ring = len(face), len(FACE_OVAL)
    points = np.concatenate([face, *rings])  # face, head rings inner to outer, fixed far ring last
    n_moving = len(points) - n_ring
    turned = points.copy()
    turned[:n_moving] = (points[:n_moving] - centre) @ (new_rot @ rot.T).T + centre

    # Triangles: Delaunay inside the face; outside it, bands joining each ring to the next in oval order
    # (a free triangulation there zig-zags between rings and tears into combs when they move). The last
    # band ends on the fixed ring: the background stretches there. Beyond it no triangle: pixels stay.
    ring_idx = [np.array(FACE_OVAL)] + [n_face + k * n_ring + np.arange(n_ring) for k in range(len(rings))]
    tris = np.concatenate([_mesh_triangles(face, centre, rot, width)] + [_strip(a, b) for a, b in zip(ring_idx,
                                                                                                      ring_idx[1:])])
    to_px = np.array([1.0, -1.0])  # image pixels: x right, y down (the camera frame's y negated)
    src, dst = points[:, :2] * to_px, turned[:, :2] * to_px
    # Tight crops (UTKFace's face fills the frame) would lose a turned nose past the border: grow the canvas
    # by replicating the border, as the crop rule does anyway, until every point fits.
    h, w = image.shape[:2]
    reach = dst[:n_moving]  # the fixed ring may lie outside: the remap replicates the border there anyway
    margin = int(math.ceil(max(0.0, -reach.min(), (reach[:, 0] - (w - 1)).max(), (reach[:, 1] - (h - 1)).max())))
    margin = min(margin, int(2 * width) + 2)  # a bound, whatever the mesh says
    if margin:
        image = cv2.copyMakeBorder(image, margin, margin, margin, margin, cv2.BORDER_REPLICATE)
        src, dst = src + margin, dst + margin
    is_band = (tris >= n_moving).any(axis=1)
    # The background band first, then the head far to near, so the near side hides the far side.
    depth = np.where(is_band, -np.inf, turned[tris, 2].mean(axis=1))
    out = warp_triangles(image, src, dst, tris, depth)

    sx, sy, sside = _extent_box(src[:N_MESH_POINTS])
    bx, by, bw, bh = float(box[0]) + margin, float(box[1]) + margin, float(box[2]), float(box[3])
    rel = ((bx + bw / 2 - sx) / sside, (by + bh / 2 - sy) / sside, bw / sside, bh / sside)
    nx, ny, nside = _extent_box(dst[:N_MESH_POINTS])
    nw, nh = rel[2] * nside, rel[3] * nside
    new_box = (nx + rel[0] * nside - nw / 2, ny + rel[1] * nside - nh / 2, nw, nh)
    exact = matrix_to_pose(new_rot)  # the Euler triple that R' decomposes to (equal to new_pose below 90 deg)
    mesh_px = to_camera(turned[:N_MESH_POINTS]) + np.array([margin, margin, 0.0])
    return ProfiledFace(out, exact, new_box, mesh_px, margin)
