"""`edgeface predict ARTIFACT IMAGE...`: blur and head pose as JSON lines, one per face."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from ..core.errors import EdgefaceError
from ..core.recipe import read_text_utf8
from ..engines import registry
from .output import check_output_file, out_console, write_json

NAME = "predict"


def read_boxes_csv(path: Path) -> dict[str, list[tuple[float, float, float, float]]]:
    """``file,x,y,w,h`` rows (a header row is required) -> boxes per file name."""
    if not path.exists():
        raise EdgefaceError(f"boxes file {path} does not exist")
    boxes: dict[str, list] = {}
    with io.StringIO(read_text_utf8(path, "boxes file"), newline="") as fh:
        reader = csv.DictReader(fh)
        need = {"file", "x", "y", "w", "h"}
        if not reader.fieldnames or need - set(reader.fieldnames):
            raise EdgefaceError(f"{path} needs a header with columns file,x,y,w,h (got {reader.fieldnames})")
        for i, row in enumerate(reader, start=2):
            try:
                box = tuple(float(row[k]) for k in ("x", "y", "w", "h"))
            except (TypeError, ValueError):
                raise EdgefaceError(f"{path} line {i}: x, y, w, h must be numbers") from None
            boxes.setdefault(row["file"], []).append(box)
    return boxes


def _boxes_for(boxes: dict, image: Path) -> list | None:
    for key in (str(image), image.name):
        if key in boxes:
            return boxes[key]
    return None


def command(artifact: str = typer.Argument(..., help="Bundle folder, model.onnx, model.ncnn.param, model.engine "
                                                     "or .pt; 'default' for the shipped model."),
            images: list[Path] = typer.Argument(..., help="Images: face crops, or full images with --boxes."),
            boxes_csv: Optional[Path] = typer.Option(None, "--boxes",
                                                     help="CSV file,x,y,w,h: face boxes per image (several rows "
                                                          "per image allowed); images not listed are face crops."),
            backend: str = typer.Option("auto", "--backend", help="|".join(["auto", *registry.names()]) + "."),
            threads: Optional[int] = typer.Option(None, "--threads", help="Inference threads."),
            json_out: Optional[Path] = typer.Option(None, "--json", help="Also write all results as one JSON list.")):
    """Blur score and head pose (degrees) per face, printed as JSON lines."""
    check_output_file(json_out, "--json")
    from ..core.preprocess import read_image
    from ..runtime.predictor import Predictor

    boxes = read_boxes_csv(boxes_csv) if boxes_csv else {}
    # Read every image first: a bad file fails the command before any output is printed.
    frames = [(p, read_image(p)) for p in images]
    rows = []
    with Predictor(None if artifact == "default" else artifact, backend=backend, threads=threads) as pred:
        for path, frame in frames:
            these = _boxes_for(boxes, path)
            if these is None:
                res, used = pred.predict(frame), [None]
            else:
                res, used = pred.predict_image(frame, np.asarray(these, dtype=np.float64)), these
            for i, (d, box) in enumerate(zip(res.as_dicts(), used)):
                row = {"image": str(path), "face": i, **({"box": list(box)} if box is not None else {}),
                       **{k: round(v, 5) for k, v in d.items()}, "backend": pred.backend, "precision": pred.precision}
                rows.append(row)
                out_console.print(json.dumps(row), highlight=False, soft_wrap=True)
    write_json(json_out, rows)
