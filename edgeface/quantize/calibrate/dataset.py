"""The calibration set: face crops made by the same crop and preprocessing path as inference.

A folder of face crops (each whole image is the face), or full images with a ``labels.csv`` of boxes
(``file,x,y,w,h``). A fixed-seed subset keeps runs reproducible; the fingerprint (a hash of the crops'
bytes) keys the statistics cache, so a changed image or crop rule never reuses stale statistics.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...core.errors import EdgefaceError
from ...core.preprocess import check_crops, crop_face, read_image
from ...core.spec import ModelSpec
from ...model.data import IMAGE_EXTS, load_samples, resolve_box

DEFAULT_NUM = 300
DEFAULT_SEED = 0


@dataclass
class CalibrationSet:
    crops: np.ndarray  # uint8 (N, S, S, 3) BGR, exactly what inference feeds the model
    files: list[str] = field(default_factory=list)
    folder: str = ""
    fingerprint: str = ""  # sha256 of the crops' bytes and shape

    def __len__(self) -> int:
        return len(self.crops)

    def summary(self) -> dict:
        return {"folder": self.folder, "images": len(self.crops), "fingerprint": self.fingerprint}


def fingerprint_crops(crops: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(repr((crops.shape, str(crops.dtype))).encode())
    h.update(np.ascontiguousarray(crops).tobytes())
    return h.hexdigest()


def check_calibration_folder(folder: Path) -> None:
    """Cheap checks first (before any export): missing, empty, or no images in it."""
    folder = Path(folder)
    if not folder.exists():
        raise EdgefaceError(f"calibration folder {folder} does not exist; pass --calib with a folder of face crops")
    if not folder.is_dir():
        raise EdgefaceError(f"--calib {folder} is not a folder; pass a folder of face crops or images with labels.csv")
    if (folder / "labels.csv").is_file():
        return
    files = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTS]
    if not files:
        raise EdgefaceError(f"calibration folder {folder} is empty; put a few hundred face crops (.jpg/.png) in it")
    if not images:
        kinds = sorted({p.suffix.lower() or p.name for p in files})[:4]
        raise EdgefaceError(f"calibration folder {folder} has no images ({len(files)} file(s) of kind "
                            f"{', '.join(kinds)}); pass face crops ({', '.join(sorted(IMAGE_EXTS))}) "
                            f"or full images with labels.csv")


def load_calibration_set(folder: str | Path, spec: ModelSpec, num: int = DEFAULT_NUM, seed: int = DEFAULT_SEED,
                         split: str | None = None, progress=None) -> CalibrationSet:
    """Read, crop and check up to ``num`` images (a fixed-seed random subset when there are more)."""
    folder = Path(folder)
    if num < 1:
        raise EdgefaceError(f"--num must be at least 1, got {num}")
    check_calibration_folder(folder)
    samples = load_samples(folder, split=split)
    samples = sorted(samples, key=lambda s: str(s.path))
    if len(samples) > num:
        samples = random.Random(seed).sample(samples, num)
        samples.sort(key=lambda s: str(s.path))
    task = progress.add_task("reading calibration images", total=len(samples)) if progress is not None else None
    crops = np.empty((len(samples), spec.input_size, spec.input_size, 3), np.uint8)
    for i, s in enumerate(samples):
        image = read_image(s.path)  # names the file when it is missing or undecodable
        try:
            crops[i] = crop_face(image, resolve_box(s, image, spec.crop.scale), spec)
        except EdgefaceError as e:
            raise EdgefaceError(f"calibration image {s.path}: {e}") from None
        if progress is not None:
            progress.advance(task)
    crops = check_crops(crops, spec)
    return CalibrationSet(crops, [str(s.path) for s in samples], str(folder), fingerprint_crops(crops))
