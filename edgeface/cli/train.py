"""`edgeface train --recipe R`: FP32 training, or quantization-aware training with a `kind: qat` recipe."""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import typer

from ..core.io import removed_on_failure
from .output import check_output_dir, check_output_file, console, write_json

NAME = "train"


def command(recipe: Path = typer.Option(..., "--recipe", help="Recipe YAML (e.g. recipes/train/mbv2_025.yaml)."),
            out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: the recipe's `out`)."),
            epochs: Optional[int] = typer.Option(None, "--epochs", help="Override the recipe's epochs."),
            epoch_size: Optional[int] = typer.Option(None, "--epoch-size", help="Override samples per epoch."),
            limit: Optional[int] = typer.Option(None, "--limit", help="Use at most N samples per set (smoke runs)."),
            data_root: Optional[Path] = typer.Option(None, "--data-root", help="Folder holding the recipe's sets."),
            resume: bool = typer.Option(False, "--resume", help="Continue from OUT/last.pt."),
            init: Optional[Path] = typer.Option(None, "--init",
                                                help="Start weights (overrides the recipe's train.init)."),
            seed: Optional[int] = typer.Option(None, "--seed", help="Override the recipe's seed."),
            json_out: Optional[Path] = typer.Option(None, "--json", help="Write the final val metrics as JSON.")):
    """Train from a recipe (FP32, or quantization-aware with a `kind: qat` recipe)."""
    check_output_file(json_out, "--json", inputs=[recipe, init])
    check_output_dir(out, "--out")
    from ..core.recipe import load_yaml

    loaded = load_yaml(recipe)
    kind = loaded.get("kind", "train") if isinstance(loaded, dict) else "train"
    out_dir = out if out is not None else (loaded.get("out") if isinstance(loaded, dict) else None)
    with removed_on_failure(out_dir, make=False) if isinstance(out_dir, (str, Path)) else nullcontext():
        result = _train(kind, recipe, out, epochs, limit, data_root, epoch_size, resume, init, seed)
    console.print(f"[green]saved[/green] {result}")
    if json_out:
        from ..engines.torch.checkpoint import read_checkpoint

        write_json(json_out, read_checkpoint(result)["meta"].get("val", {}))


def _train(kind, recipe, out, epochs, limit, data_root, epoch_size, resume, init, seed):
    if kind == "qat":
        from ..quantize.qat.train import train_qat

        return train_qat(recipe, out=str(out) if out else None, epochs=epochs, limit=limit,
                         data_root=str(data_root) if data_root else None, epoch_size=epoch_size, console=console)
    from ..model.train import train as run_train

    return run_train(recipe, out=str(out) if out else None, epochs=epochs, limit=limit,
                     data_root=str(data_root) if data_root else None, resume=resume,
                     epoch_size=epoch_size, init=str(init) if init else None, seed=seed, console=console)
