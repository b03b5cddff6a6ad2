"""The annotated-frame figure for docs/frames.md and the README: three data-pack val frames side by side
(Pointing'04 turned heads and a CelebA face), drawn by `edgeface predict --draw`.

    python scripts/frames_figure.py --data ../shared/data --out docs/img/frame-annotated.png

The data pack is research-only: only this small drawn figure is committed, never the source frames.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

PICKS = [("pointing04", "images/person02149.jpg"), ("celeba", None), ("pointing04", "images/person11144.jpg")]
HEIGHT = 240


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("docs/img/frame-annotated.png"))
    a = ap.parse_args()
    tiles = []
    for name, file in PICKS:
        folder = a.data / name
        if file is None or not (folder / file).is_file():
            import csv

            with open(folder / "labels.csv", newline="") as fh:
                file = next(r["file"] for r in csv.DictReader(fh) if r["split"] == "val")
        img = cv2.imread(str(folder / file))
        tiles.append(cv2.resize(img, (int(img.shape[1] * HEIGHT / img.shape[0]), HEIGHT), interpolation=cv2.INTER_AREA))
    gap = np.full((HEIGHT, 8, 3), 255, np.uint8)
    frame = np.concatenate([t if i == 0 else np.concatenate([gap, t], 1) for i, t in enumerate(tiles)], 1)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "frame.png"
        cv2.imwrite(str(src), frame)
        subprocess.run([sys.executable, "-m", "edgeface", "predict", "default", str(src), "--draw", str(a.out)],
                       check=True)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
