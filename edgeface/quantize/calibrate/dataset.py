"""The calibration set: face crops made by the same crop and preprocessing path as inference.

A folder of face crops (each whole image is the face), full frames (a user's camera: the faces are found by the
shipped detector and cut by the one crop rule, ``FaceDetector.crop_faces``), or full images with a
``labels.csv`` of boxes (``file,x,y,w,h``). Which of the first two a folder holds is decided from the detector
on a sample of it: faces that cover a small part of their image mean full frames. A fixed-seed subset keeps runs
reproducible; the fingerprint (a hash of the crops' bytes) keys the statistics cache, so a changed image or crop
rule never reuses stale statistics.
"""
from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...core.errors import EdgefaceError
from ...core.preprocess import check_crops, crop_face, read_image
from ...core.spec import ModelSpec
from ...faces.data import IMAGE_EXTS, load_samples, resolve_box

DEFAULT_NUM = 300
DEFAULT_SEED = 0
MIN_FACES = 100        # below this, INT8 ranges may miss what the camera shows: a warning with the figure
FULL_FRAME_AREA = 0.5  # a face whose crop box covers less than this fraction of its image: a full frame
SAMPLE_FOR_KIND = 16   # images the detector looks at to tell crops from full frames


@dataclass
class CalibrationSet:
    crops: np.ndarray  # uint8 (N, S, S, 3) BGR, cropped as inference crops (statistics: fed_to_network)
    files: list[str] = field(default_factory=list)
    folder: str = ""
    fingerprint: str = ""  # sha256 of the crops' bytes and shape
    kind: str = "face crops"  # "face crops" | "full frames" | "labelled boxes"
    images: int = 0  # image files read
    without_face: int = 0  # full frames in which the detector found no face
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.crops)

    def summary(self) -> dict:
        """What a report or manifest records: the folder's name (never the build host's path), what it held,
        the faces used and their digest."""
        return {"folder": Path(self.folder).name, "kind": self.kind, "images": self.images or len(self.crops),
                "faces": len(self.crops), "frames_without_face": self.without_face, "fingerprint": self.fingerprint}

    def describe(self) -> str:
        """One line for the console: what was read and what was used."""
        if self.kind == "full frames":
            return (f"calibration: {self.images} full frames in {Path(self.folder).name}/, {len(self.crops)} faces "
                    f"found and cropped by the shipped detector ({self.without_face} frame(s) without a face)")
        return f"calibration: {len(self.crops)} {self.kind} from {Path(self.folder).name}/"


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


def _frame_kind(paths: list[Path], detector) -> str:
    """"full frames" when, among a sample of the images, most of those where the detector finds a face show it
    small (its crop box under FULL_FRAME_AREA of the image); else "face crops" (a crop fills its image)."""
    small = big = 0
    for path in paths[:SAMPLE_FOR_KIND]:
        image = read_image(path)
        det = detector.detect(image)
        if not len(det):
            continue
        b = detector.model_boxes(det)
        area = float(np.max(b[:, 2] * b[:, 3])) / (image.shape[0] * image.shape[1])
        small, big = (small + 1, big) if area < FULL_FRAME_AREA else (small, big + 1)
    return "full frames" if small > big else "face crops"


def load_calibration_set(folder: str | Path, spec: ModelSpec, num: int = DEFAULT_NUM, seed: int = DEFAULT_SEED,
                         split: str | None = None, progress=None) -> CalibrationSet:
    """Read, crop and check up to ``num`` faces (a fixed-seed random subset of the images when there are more)."""
    folder = Path(folder)
    if num < 1:
        raise EdgefaceError(f"--num must be at least 1, got {num}")
    check_calibration_folder(folder)
    samples = load_samples(folder, split=split)
    samples = sorted(samples, key=lambda s: str(s.path))
    if len(samples) > num:
        samples = random.Random(seed).sample(samples, num)
        samples.sort(key=lambda s: str(s.path))
    labelled = all(math.isfinite(v) for s in samples for v in s.box)
    kind, detector = "labelled boxes", None
    if not labelled:
        from ...runtime.detector import FaceDetector

        detector = FaceDetector()
        kind = _frame_kind([s.path for s in samples], detector)
    task = progress.add_task(f"reading calibration images ({kind})", total=len(samples)) \
        if progress is not None else None
    crops, files, without = [], [], 0
    for s in samples:
        image = read_image(s.path)  # names the file when it is missing or undecodable
        try:
            if kind == "full frames":
                found = detector.crop_faces(image, spec)[2]
                without += not len(found)
                crops += list(found)
                files += [str(s.path)] * len(found)
            else:
                crops.append(crop_face(image, resolve_box(s, image, spec.crop.scale), spec))
                files.append(str(s.path))
        except EdgefaceError as e:
            raise EdgefaceError(f"calibration image {s.path}: {e}") from None
        if progress is not None:
            progress.advance(task)
    if not crops:
        raise EdgefaceError(f"the detector found no face in the {len(samples)} full frames of {folder}; pass frames "
                            f"with faces, or face crops")
    crops = check_crops(np.stack(crops[:num]), spec)
    cs = CalibrationSet(crops, files[:num], str(folder), fingerprint_crops(crops), kind, len(samples), without)
    if len(crops) < MIN_FACES:
        cs.warnings.append(f"only {len(crops)} faces for calibration (at least {MIN_FACES} recommended): INT8 ranges "
                           f"from so few faces may not cover what the camera sees; add images to {folder.name}/")
    return cs
