"""`edgeface eval [MODEL] --data DIR`: pose MAE per axis and by |yaw| bin, blur MAE and Spearman on synthetic blur,
per set, and the rendered wide-pose val set where the data pack's meshes are there."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from ..core.device import measured_on
from ..engines import registry
from .output import check_output_file, console, table_console, write_json

NAME = "eval"


def command(model: Optional[str] = typer.Argument(None, help="Checkpoint or artifact; default: the shipped model."),
            data: list[Path] = typer.Option(..., "--data",
                                            help="Labelled set folder (or a folder of sets); repeatable."),
            split: Optional[str] = typer.Option("val", "--split", help="Rows of this split only ('' for all)."),
            backend: str = typer.Option("auto", "--backend",
                                        help=f"Backend for artifacts: {' | '.join(['auto', *registry.names()])}."),
            rendered: bool = typer.Option(True, "--rendered/--no-rendered",
                                          help="Also the rendered wide-pose val set, where --data holds the meshes."),
            detect: bool = typer.Option(False, "--detect", help="End to end on the full images: detect faces "
                                        "(shipped YuNet), crop with the mapped boxes, run the model; reports the "
                                        "detection rate and pose MAE with detector boxes beside labelled boxes."),
            json_out: Optional[Path] = typer.Option(None, "--json", help="Write the metrics as JSON.")):
    """Accuracy on labelled sets: pose MAE per axis and by |yaw| bin, blur MAE and Spearman on synthetic blur.

    With the data pack as --data and split 'val', it also measures the rendered wide-pose val set: the val
    people's near-frontal faces re-rendered at |yaw| 0-90 deg from their meshes (a visible proxy for wide poses).
    """
    check_output_file(json_out, "--json", inputs=[model, *data])
    from ..faces.data import find_sets, load_samples
    from ..faces.evaluate import evaluate_crops, evaluate_samples, format_table
    from ..model.render_bank import rendered_val
    from ..runtime.predictor import open_model

    # Check every data folder before loading a model, so a typo fails in a second.
    sets = [(folder, load_samples(folder, split=split or None, require_labels=True))
            for d in data for folder in find_sets(d)]
    pred, label = open_model(model, backend)
    if detect:
        return _detect(pred, label, sets, split, json_out)
    results = {}
    with pred, set_progress(len(sets)) as (progress, task):
        for folder, samples in sets:
            progress.update(task, description=f"{folder.name} ({len(samples)} faces)")
            console.print(f"evaluating {label} on {folder.name} ({len(samples)} images)")
            results[folder.name] = evaluate_samples(pred.blur_and_pose, samples, pred.spec)
            progress.advance(task)
        if rendered and split == "val":
            for d in data:
                views = rendered_val(d, pred.spec, console=console)
                if views is not None:
                    console.print(f"evaluating {label} on the rendered wide-pose val set of {d} ({len(views[0])} "
                                  "views)")
                    results["rendered"] = evaluate_crops(pred.blur_and_pose, *views, blur=False)
                    break
    table_console().print(format_table(results, title=f"{label} on split '{split}'"))
    write_json(json_out, {"model": label, "split": split, "sets": results, **measured_on()})
    console.print(f"eval: {label} on {len(results)} set(s), {sum(r.get('n', 0) for r in results.values())} faces",
                  highlight=False, soft_wrap=True)


@contextmanager
def set_progress(n_sets: int):
    """(progress, task): one step per set, drawn on a terminal (the sets take seconds each)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("eval {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as progress:
        yield progress, progress.add_task("sets", total=n_sets)


def _detect(pred, label, sets, split, json_out) -> None:
    from rich.table import Table

    from ..faces.evaluate import evaluate_detected
    from ..runtime.detector import FaceDetector

    det = FaceDetector()
    results = {}
    with pred, set_progress(len(sets)) as (progress, task):
        for folder, samples in sets:
            progress.update(task, description=f"{folder.name} ({len(samples)} frames)")
            console.print(f"detect -> crop -> {label} on {folder.name} ({len(samples)} images)")
            results[folder.name] = evaluate_detected(pred.blur_and_pose, det, samples, pred.spec)
            progress.advance(task)
    table = Table(title=f"{label} end to end on split '{split}' (YuNet, mapped boxes)")
    for col in ("set", "detected |yaw|<=60", "detected |yaw|>60", "mean IoU", "MAE labelled boxes",
                "MAE detector boxes", "delta", "blur |det-lab|"):
        table.add_column(col)

    def rate(r, k):
        d = r["detection"].get(k)
        return f"{d['detected']}/{d['n']} ({100 * d['rate']:.1f}%)" if d else "-"

    def num(v, f="{:.2f}"):
        return f.format(v) if v is not None else "-"

    for name, r in results.items():
        table.add_row(name, rate(r, "yaw<=60"), rate(r, "yaw>60"), num(r["mean_iou"]),
                      num(r.get("labelled_boxes", {}).get("mean_mae")),
                      num(r.get("detector_boxes", {}).get("mean_mae")),
                      num(r.get("mean_mae_delta"), "{:+.2f}"), num(r.get("blur_detector_vs_labelled_mae"), "{:.3f}"))
    table_console().print(table)
    write_json(json_out, {"model": label, "split": split, "detector": det.info(), "sets": results, **measured_on()})
