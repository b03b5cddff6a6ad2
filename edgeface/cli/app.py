"""The `edgeface` command line. User mistakes print one `error:` line and exit 2, never a traceback."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from .errors import EdgefaceError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="edgeface: blur + head-pose model from PyTorch to edge devices, with measured proof.")
console = Console(stderr=True)
out_console = Console()


def write_json(path: Optional[Path], obj) -> None:
    """--json FILE: written atomically so a failed command leaves no half file."""
    if path is None:
        return
    import os
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, indent=2, default=_json_default)
        fh.write("\n")
    os.replace(tmp, path)


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


@app.command()
def info(json_out: Optional[Path] = typer.Option(None, "--json", help="Write the report as JSON.")):
    """Versions, installed backends, the detected device and the default model's card."""
    from .info import collect_info, print_info

    report = collect_info()
    print_info(report, out_console)
    write_json(json_out, report)


@app.command()
def train(recipe: Path = typer.Option(..., "--recipe", help="Recipe YAML (e.g. recipes/train/mbv2_025.yaml)."),
          out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: the recipe's `out`)."),
          epochs: Optional[int] = typer.Option(None, "--epochs", help="Override the recipe's epochs."),
          epoch_size: Optional[int] = typer.Option(None, "--epoch-size", help="Override samples per epoch."),
          limit: Optional[int] = typer.Option(None, "--limit", help="Use at most N samples per set (smoke runs)."),
          data_root: Optional[Path] = typer.Option(None, "--data-root", help="Folder holding the recipe's sets."),
          resume: bool = typer.Option(False, "--resume", help="Continue from OUT/last.pt."),
          init: Optional[Path] = typer.Option(None, "--init", help="Start weights (overrides the recipe's train.init)."),
          seed: Optional[int] = typer.Option(None, "--seed", help="Override the recipe's seed."),
          json_out: Optional[Path] = typer.Option(None, "--json", help="Write the final val metrics as JSON.")):
    """Train from a recipe (FP32, or quantization-aware with a `kind: qat` recipe)."""
    from .recipes import load_yaml

    kind = load_yaml(recipe).get("kind", "train")
    if kind == "qat":
        from .qat import train_qat

        result = train_qat(recipe, out=str(out) if out else None, epochs=epochs, limit=limit,
                           data_root=str(data_root) if data_root else None, epoch_size=epoch_size, console=console)
    else:
        from .train import train as run_train

        result = run_train(recipe, out=str(out) if out else None, epochs=epochs, limit=limit,
                           data_root=str(data_root) if data_root else None, resume=resume,
                           epoch_size=epoch_size, init=str(init) if init else None, seed=seed, console=console)
    console.print(f"[green]saved[/green] {result}")
    if json_out:
        from .checkpoint import read_checkpoint

        write_json(json_out, read_checkpoint(result)["meta"].get("val", {}))


@app.command(name="eval")
def eval_cmd(model: Optional[str] = typer.Argument(None, help="Checkpoint or artifact; default: the shipped model."),
             data: list[Path] = typer.Option(..., "--data", help="Labelled set folder (or a folder of sets); repeatable."),
             split: Optional[str] = typer.Option("val", "--split", help="Rows of this split only ('' for all)."),
             backend: str = typer.Option("auto", "--backend", help="Backend for artifacts."),
             json_out: Optional[Path] = typer.Option(None, "--json", help="Write the metrics as JSON.")):
    """Accuracy on labelled sets: pose MAE per axis, blur MAE and Spearman on synthetic blur."""
    from .evaluate import evaluate_samples, format_table
    from .data import find_sets, load_samples
    from .runners import make_runner

    # Check every data folder before loading a model, so a typo fails in a second.
    sets = [(folder, load_samples(folder, split=split or None, require_labels=True))
            for d in data for folder in find_sets(d)]
    runner, spec, label = make_runner(model, backend)
    results = {}
    for folder, samples in sets:
        console.print(f"evaluating {label} on {folder} ({len(samples)} images)")
        results[folder.name] = evaluate_samples(runner, samples, spec)
    out_console.print(format_table(results, title=f"{label} on split '{split}'"))
    write_json(json_out, {"model": label, "split": split, "sets": results})


# Each feature registers its sub-commands from its own module in edgeface/commands/ (one file per verb
# family), so a missing optional dependency of one verb never breaks the others.
COMMAND_MODULES = ("export", "predict", "quantize", "bench", "deploy", "build")


def _register_commands() -> None:
    import importlib

    for name in COMMAND_MODULES:
        modname = f"{__package__}.commands.{name}"
        try:
            importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name != modname:  # a real missing dependency inside the module: surface it
                raise


def main():
    try:
        app()
    except EdgefaceError as e:
        from rich.markup import escape  # messages hold "edgeface[extra]", which rich would eat as markup

        console.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/red]")
        sys.exit(130)


_register_commands()
