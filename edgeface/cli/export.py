"""`edgeface export [MODEL] --format FORMAT` (an engine's format: ``edgeface.export.formats()``): one artifact
with its ModelSpec inside or beside it."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from ..core.errors import EdgefaceError
from ..engines import registry
from ..export import formats
from .output import check_output_dir, check_output_file, console, out_console, write_json

NAME = "export"
_EXPORTABLE = formats()  # for --help; the command asks again (an engine registered since has its format)


def command(model: Optional[Path] = typer.Argument(None, help="Checkpoint (.pt); default: the shipped model."),
           fmt: str = typer.Option("onnx", "--format", "-f", help=f"One of: {', '.join(_EXPORTABLE)}."),
           precision: Optional[str] = typer.Option(None, "--precision",
                                                   help="fp32|fp16 (ncnn: fp16 weight storage; tensorrt: builder "
                                                        "precision, default fp16). INT8: `edgeface quantize`."),
           fold_preprocess: bool = typer.Option(False, "--fold-preprocess",
                                                help="Graph takes uint8 NHWC BGR crops; cast, channel swap and "
                                                     "normalisation run inside it (onnx, tensorrt)."),
           out: Path = typer.Option(Path("export"), "--out", "-o", help="Output folder."),
           json_out: Optional[Path] = typer.Option(None, "--json", help="Write what was exported as JSON.")):
    """Export a checkpoint to a deployable artifact (ModelSpec inside the ONNX, or beside the ncnn files)."""
    check_output_file(json_out, "--json", inputs=[model])
    check_output_dir(out, "--out")
    from ..export import export as run_export

    engine = registry.by_format(fmt)
    if fmt not in formats():
        raise EdgefaceError(f"--format must be one of {', '.join(formats())}")
    if model is not None and not model.is_file():
        raise EdgefaceError(f"checkpoint {model} does not exist")
    t0 = time.perf_counter()
    with console.status(f"exporting to {fmt}..."):
        artifact = run_export(fmt, model, out, precision=precision, fold_preprocess=fold_preprocess)
    seconds = time.perf_counter() - t0
    files = [p for p in sorted(Path(artifact).parent.iterdir()) if p.is_file() and not p.name.startswith(".")]
    report = {"format": fmt, "artifact": str(artifact), "backend": engine.name,
              "precision": precision or engine.precisions[0], "fold_preprocess": fold_preprocess,
              "source": str(model) if model else "default", "seconds": round(seconds, 2),
              "files": {p.name: p.stat().st_size for p in files}}
    out_console.print(f"[green]exported[/green] {artifact} ({engine.name}, {report['precision']}, "
                      f"{seconds:.1f} s)", highlight=False)
    write_json(json_out, report)
