"""A cached bank of faces re-rendered at new head rotations (``profiling.profile_face``), for training.

Sources are faces whose labels are accurate: the in-the-wild sets' near-frontal teacher labels (the teacher
is good below ~30 deg yaw; its own wide-pose labels saturate). Each source gives ``views`` renders whose
Euler yaw is drawn so the rendered |yaw| spreads over [yaw_min, yaw_max]; a share also gets a pitch change.
A source already turned one way is turned further that way (a turn back would reveal cheek the photo hides).

The bank holds context crops (as ``train.CropCache`` does), so training augments renders like photos. It is
built once per (data, recipe, crop) and kept under the cache folder (``$EDGEFACE_CACHE``, default
``~/.cache/edgeface``) in a folder named by a digest of its inputs: changed labels, meshes, settings, crop rule
or ``BANK_VERSION`` give a new digest and a rebuild. Building uses every core, with a progress bar.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..core.errors import EdgefaceError
from ..core.io import npz_shapes
from ..core.preprocess import context_crop, context_matrix, read_image
from ..core.recipe import read_csv_utf8
from ..core.spec import ModelSpec
from ..faces.data import csv_float
from .profiling import N_MESH_POINTS, landmark_box, profile_face

# Part of every bank's digest: bump it when rendering or view planning changes, so cached banks are rebuilt.
# (Hashing the code itself would also rebuild on a changed comment or a moved file.)
BANK_VERSION = 2  # 2: each render's landmark box
SPAWN_MIN_VIEWS = 256  # fewer renders than this are not worth a process pool


@dataclass(frozen=True)
class BankConfig:
    sets: tuple[str, ...] = ("utkface", "celeba")
    views: int = 3  # renders per source face
    max_source_yaw: float = 25.0  # sources: |teacher yaw| and |teacher pitch| at most this
    max_source_pitch: float = 25.0
    yaw_min: float = 15.0  # rendered |yaw| is uniform over [yaw_min, yaw_max]
    yaw_max: float = 90.0
    pitch_p: float = 0.4  # share of renders that also change pitch ...
    pitch_delta: float = 25.0  # ... by up to this much, keeping |pitch| <= max_pitch
    max_pitch: float = 45.0
    seed: int = 0
    limit: int | None = None  # at most this many sources per set (smoke runs), a seeded random subset


# The rendered wide-pose val set: one render per near-frontal val face, |yaw| uniform over 0-90, a share
# with a pitch change. Fixed here (not in a recipe) so every model is measured on the same views.
VAL_CONFIG = BankConfig(views=1, yaw_min=0.0, yaw_max=90.0, seed=12345)


@dataclass
class Bank:
    images: np.ndarray  # (N, S, S, 3) uint8 context crops (S = input size x context)
    boxes: np.ndarray  # (N, 4) face boxes in crop pixels
    poses: np.ndarray  # (N, 3) yaw, pitch, roll of each render
    source: np.ndarray  # (N,) index of the source face in the order of ``sources``
    folder: Path | None = None
    landmark_boxes: np.ndarray | None = None  # (N, 4) each render's landmark box (profiling.landmark_box), crop pixels

    def __len__(self):
        return len(self.images)


@dataclass(frozen=True)
class Source:
    image: Path
    box: tuple[float, float, float, float]
    pose: tuple[float, float, float]  # the teacher's (from the same mesh)
    mesh: np.ndarray


def cache_root() -> Path:
    return Path(os.environ.get("EDGEFACE_CACHE") or Path.home() / ".cache" / "edgeface")


def read_mesh_file(folder: Path, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``folder/mesh.npz`` checked against the rows of ``labels.csv`` (``files``, in order): (mesh, ok)."""
    path = folder / "mesh.npz"
    if not path.is_file():
        raise EdgefaceError(f"{path} is missing; face profiling needs the data pack's mesh.npz beside labels.csv")
    n = len(files)
    # Shapes from the arrays' headers, before any is decompressed: zeros compress 1000:1, so a 5 MB file can
    # declare a 5 GB mesh.
    want = {"files": (n,), "mesh": (n, N_MESH_POINTS, 3), "ok": (n,)}
    declared = npz_shapes(path)
    if declared is not None and any(declared.get(k, want[k]) != want[k] for k in want):
        got = ", ".join(f"{k} {declared.get(k)}" for k in want)
        raise EdgefaceError(f"{path} does not match {folder / 'labels.csv'}: it declares {got[:200]} where the "
                            f"labels need {', '.join(f'{k} {v}' for k, v in want.items())}; use the mesh.npz made "
                            f"for this labels.csv")
    try:
        with np.load(path, allow_pickle=False) as z:
            stored, mesh, ok = z["files"], z["mesh"], z["ok"]
    except Exception as e:  # zipfile, pickle, KeyError and ValueError all mean the same thing to a user
        raise EdgefaceError(f"{path} is not a readable mesh file ({type(e).__name__}); it needs arrays files, "
                            f"mesh (N, {N_MESH_POINTS}, 3) and ok (N,); restore it from the data pack") from None
    if mesh.ndim != 3 or mesh.shape[1:] != (N_MESH_POINTS, 3) or ok.shape != (len(mesh),) or stored.shape != (len(mesh),):
        raise EdgefaceError(f"{path} has mesh {mesh.shape}, ok {ok.shape}, files {stored.shape}; expected "
                            f"({n}, {N_MESH_POINTS}, 3), ({n},), ({n},); restore it from the data pack")
    if len(mesh) != n or any(str(a) != b for a, b in zip(stored, files)):
        raise EdgefaceError(f"{path} does not match {folder / 'labels.csv'} ({len(mesh)} meshes for {n} rows, or "
                            f"files in another order); use the mesh.npz made for this labels.csv")
    return mesh, ok.astype(bool)


def read_sources(folder: Path, split: str, cfg: BankConfig) -> list[Source]:
    """Near-frontal faces of one set's ``split`` with a mesh and a full teacher pose."""
    labels = folder / "labels.csv"
    if not labels.is_file():
        raise EdgefaceError(f"{labels} is missing; render sources need a labels.csv with teacher columns")
    _, rows = read_csv_utf8(labels, "labels file")
    mesh, ok = read_mesh_file(folder, [r.get("file", "") for r in rows])
    out = []
    for i, r in enumerate(rows):
        if not ok[i] or r.get("split", split) != split:
            continue
        pose = (csv_float(r, "t_yaw"), csv_float(r, "t_pitch"), csv_float(r, "t_roll"))
        box = tuple(csv_float(r, k) for k in ("x", "y", "w", "h"))
        if not all(math.isfinite(v) for v in (*pose, *box)) or box[2] <= 0 or box[3] <= 0:
            continue
        if abs(pose[0]) > cfg.max_source_yaw or abs(pose[1]) > cfg.max_source_pitch:
            continue
        out.append(Source(folder / r["file"], box, pose, mesh[i]))
    if cfg.limit is not None and len(out) > cfg.limit:
        keep = np.random.default_rng(cfg.seed).permutation(len(out))[:cfg.limit]
        out = [out[j] for j in sorted(keep)]
    return out


def plan_views(sources: list[Source], cfg: BankConfig, seed_offset: int = 0) -> list[tuple[int, float, float]]:
    """(source index, d_yaw, d_pitch) per render; deterministic given the config."""
    plan = []
    for i, s in enumerate(sources):
        rng = np.random.default_rng([cfg.seed, seed_offset, i])
        yaw0, pitch0, _ = s.pose
        for _ in range(cfg.views):
            sign = math.copysign(1.0, yaw0) if abs(yaw0) > 10 else (1.0 if rng.random() < 0.5 else -1.0)
            target = sign * rng.uniform(cfg.yaw_min, cfg.yaw_max)
            d_pitch = 0.0
            if rng.random() < cfg.pitch_p:
                lo = max(-cfg.pitch_delta, -cfg.max_pitch - pitch0)
                hi = min(cfg.pitch_delta, cfg.max_pitch - pitch0)
                d_pitch = float(rng.uniform(lo, hi))
            plan.append((i, float(target - yaw0), d_pitch))
    return plan


def _digest(root: Path, cfg: BankConfig, spec: ModelSpec, context: float, split: str) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"bank": BANK_VERSION, "cfg": asdict(cfg), "split": split, "context": context,
                         "size": spec.input_size, "crop": asdict(spec.crop)}, sort_keys=True).encode())
    for name in cfg.sets:
        for f in ("labels.csv", "mesh.npz"):
            p = root / name / f
            if p.is_file():
                with open(p, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
    return h.hexdigest()[:16]


# Worker state for the process pool (set once per worker by _init_worker).
_W: dict = {}


def _init_worker(root, cfg, split, plan, spec, context):
    import cv2

    cv2.setNumThreads(1)
    # Workers are spawned (forking a process that already runs torch's thread pool can deadlock), so each
    # re-reads the sources from disk instead of receiving every mesh through a pipe.
    sources = [s for name in cfg.sets for s in read_sources(Path(root) / name, split, cfg)]
    _W.update(sources=sources, plan=plan, spec=spec, context=context)


def _render_one(j: int):
    i, d_yaw, d_pitch = _W["plan"][j]
    s = _W["sources"][i]
    img = read_image(s.image)
    view = profile_face(img, s.mesh, s.pose, s.box, d_yaw, d_pitch)
    crop, box = context_crop(view.image, view.box, _W["spec"], _W["context"])
    marks = landmark_box(view.mesh, context_matrix(view.box, _W["spec"], _W["context"]))
    return j, crop, box, np.array(view.pose, np.float32), np.array(marks, np.float32)


def build_bank(root: str | Path, cfg: BankConfig, spec: ModelSpec, context: float, split: str = "train",
               cache: Path | None = None, workers: int | None = None, console=None, seed_offset: int = 0) -> Bank:
    """Load the bank for these inputs from the cache, or render it (with progress) and cache it."""
    root = Path(root)
    sources = [s for name in cfg.sets for s in read_sources(root / name, split, cfg)]
    if not sources:
        raise EdgefaceError(f"no render sources in {root} ({', '.join(cfg.sets)}, split {split!r}): no near-frontal "
                            f"faces with a mesh and teacher labels")
    folder = (cache or cache_root()) / "render-bank" / f"{split}-{_digest(root, cfg, spec, context, split)}"
    if (folder / "done.json").is_file():
        return _load(folder)
    plan = plan_views(sources, cfg, seed_offset)
    size = int(round(spec.input_size * context))
    images = np.empty((len(plan), size, size, 3), np.uint8)
    boxes = np.empty((len(plan), 4), np.float32)
    poses = np.empty((len(plan), 3), np.float32)
    marks = np.empty((len(plan), 4), np.float32)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    # Spawning a worker costs about a second (it imports numpy, OpenCV, scipy): small banks render in-process.
    n_workers = 1 if len(plan) < SPAWN_MIN_VIEWS else max(1, min(workers or os.cpu_count() or 1, len(plan)))
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task(f"rendering {split} views", total=len(plan))
        args = (root, cfg, split, plan, spec, context)
        if n_workers == 1:
            _init_worker(*args)
            results = map(_render_one, range(len(plan)))
            pool = None
        else:
            import multiprocessing as mp

            pool = mp.get_context("spawn").Pool(n_workers, _init_worker, args)
            results = pool.imap_unordered(_render_one, range(len(plan)), chunksize=16)
        try:
            for j, crop, box, pose, mark in results:
                images[j], boxes[j], poses[j], marks[j] = crop, box, pose, mark
                progress.advance(task)
        finally:
            if pool is not None:
                pool.terminate()
    source = np.array([p[0] for p in plan], np.int32)
    _save(folder, images, boxes, poses, source, marks, {"n": len(plan), "n_sources": len(sources), "config": asdict(cfg),
                                                  "split": split, "context": context})
    return Bank(images, boxes, poses, source, folder, marks)


def _save(folder: Path, images, boxes, poses, source, marks, info: dict) -> None:
    """Write into a temporary sibling, then rename: a killed build leaves no bank that looks complete."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.partial-", dir=folder.parent))
    try:
        np.save(tmp / "images.npy", images)
        np.savez(tmp / "labels.npz", boxes=boxes, poses=poses, source=source, landmark_boxes=marks)
        (tmp / "done.json").write_text(json.dumps(info, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load(folder: Path) -> Bank:
    try:
        images = np.load(folder / "images.npy", mmap_mode="r", allow_pickle=False)
        with np.load(folder / "labels.npz", allow_pickle=False) as z:
            boxes, poses, source, marks = z["boxes"], z["poses"], z["source"], z["landmark_boxes"]
    except Exception as e:
        raise EdgefaceError(f"cached render bank {folder} is unreadable ({type(e).__name__}); delete the folder "
                            f"and it is rebuilt") from None
    if not (len(images) == len(boxes) == len(poses) == len(source) == len(marks)):
        raise EdgefaceError(f"cached render bank {folder} is inconsistent; delete the folder and it is rebuilt")
    return Bank(images, boxes, poses, source, folder, marks)


def rendered_val(root, spec: ModelSpec, context: float = 1.6, console=None,
                 limit: int | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """Model crops and labels of the rendered wide-pose val set (val people only), or None where ``root`` has
    no meshes. One render per near-frontal val face, |yaw| spread uniformly over 0-90 deg."""
    from dataclasses import replace

    from ..core.preprocess import crop_face

    root = Path(root)
    if not all((root / name / "mesh.npz").is_file() for name in VAL_CONFIG.sets):
        return None
    bank = build_bank(root, replace(VAL_CONFIG, limit=limit), spec, context, split="val", console=console,
                      seed_offset=1)
    crops = np.stack([crop_face(np.asarray(bank.images[j]), bank.boxes[j], spec) for j in range(len(bank))])
    return crops, np.asarray(bank.poses, np.float32)


def preview(bank: Bank, sources_root: str | Path, cfg: BankConfig, split: str, spec: ModelSpec, out: str | Path,
            n_faces: int = 5, per_face: int = 4) -> Path:
    """A PNG grid: each row one source face (its model crop) then renders of it, labels printed on each."""
    import cv2

    from ..core.preprocess import crop_face

    root = Path(sources_root)
    sources = [s for name in cfg.sets for s in read_sources(root / name, split, cfg)]
    rng = np.random.default_rng(0)
    picks = rng.choice(np.unique(bank.source), size=min(n_faces, len(np.unique(bank.source))), replace=False)
    rows = []
    tile = spec.input_size * 2
    for i in picks:
        s = sources[int(i)]
        first = crop_face(read_image(s.image), s.box, spec, tile)
        tiles = [_label(first, "source", s.pose)]
        idx = np.flatnonzero(bank.source == i)[:per_face]
        idx = idx[np.argsort(bank.poses[idx, 0])]
        for j in idx:
            crop = crop_face(np.asarray(bank.images[j]), bank.boxes[j], spec, tile)
            tiles.append(_label(crop, "render", bank.poses[j]))
        while len(tiles) < per_face + 1:
            tiles.append(np.zeros_like(first))
        rows.append(np.hstack(tiles))
    grid = np.vstack(rows)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), grid):
        raise EdgefaceError(f"cannot write {out}; check the folder is writable")
    return out


def _label(img: np.ndarray, what: str, pose) -> np.ndarray:
    import cv2

    img = img.copy()
    text = f"{what} y{pose[0]:+.0f} p{pose[1]:+.0f} r{pose[2]:+.0f}"
    cv2.rectangle(img, (0, 0), (img.shape[1], 14), (0, 0, 0), -1)
    cv2.putText(img, text, (2, 11), cv2.FONT_HERSHEY_SIMPLEX, 0.36, (80, 255, 80), 1, cv2.LINE_AA)
    return img
