"""`edgeface eval [MODEL] --data DIR`: pose MAE per axis and by |yaw| bin, blur MAE and Spearman on synthetic blur,
per set, and the rendered wide-pose val set where the data pack's meshes are there."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..engines import registry
from .output import check_output_file, console, out_console, write_json

NAME = "eval"


def command(model: Optional[str] = typer.Argument(None, help="Checkpoint or artifact; default: the shipped model."),
            data: list[Path] = typer.Option(..., "--data", help="Labelled set folder (or a folder of sets); repeatable."),
            split: Optional[str] = typer.Option("val", "--split", help="Rows of this split only ('' for all)."),
            backend: str = typer.Option("auto", "--backend",
                                        help=f"Backend for artifacts: {' | '.join(['auto', *registry.names()])}."),
            rendered: bool = typer.Option(True, "--rendered/--no-rendered",
                                          help="Also the rendered wide-pose val set, where --data holds the meshes."),
            json_out: Optional[Path] = typer.Option(None, "--json", help="Write the metrics as JSON.")):
    """Accuracy on labelled sets: pose MAE per axis and by |yaw| bin, blur MAE and Spearman on synthetic blur.

    With the data pack as --data and split 'val', it also measures the rendered wide-pose val set: the val
    people's near-frontal faces re-rendered at |yaw| 0-90 deg from their meshes (a visible proxy for wide poses).
    """
    check_output_file(json_out, "--json")
    from ..model.data import find_sets, load_samples
    from ..model.evaluate import evaluate_crops, evaluate_samples, format_table, rendered_val
    from ..runtime.predictor import open_model

    # Check every data folder before loading a model, so a typo fails in a second.
    sets = [(folder, load_samples(folder, split=split or None, require_labels=True))
            for d in data for folder in find_sets(d)]
    pred, label = open_model(model, backend)
    results = {}
    with pred:
        for folder, samples in sets:
            console.print(f"evaluating {label} on {folder} ({len(samples)} images)")
            results[folder.name] = evaluate_samples(pred.blur_and_pose, samples, pred.spec)
        if rendered and split == "val":
            for d in data:
                views = rendered_val(d, pred.spec, console=console)
                if views is not None:
                    console.print(f"evaluating {label} on the rendered wide-pose val set of {d} ({len(views[0])} views)")
                    results["rendered"] = evaluate_crops(pred.blur_and_pose, *views, blur=False)
                    break
    out_console.print(format_table(results, title=f"{label} on split '{split}'"))
    write_json(json_out, {"model": label, "split": split, "sets": results})
