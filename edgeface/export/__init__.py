"""Export a checkpoint to deployable artifacts (torch, imported when an export runs).

    onnx.py      ONNX opset 17 (onnxruntime's artifact; TensorRT builds from it), optionally folded
    ncnn.py      ncnn .param/.bin through pnnx
    tensorrt.py  the ONNX, then a TensorRT engine built here
    source.py    what an export starts from: a checkpoint or a torch module

``export(format, ...)`` is `edgeface export --format`: which exporter, file name and precisions a format
has comes from the engine registry.
"""
from __future__ import annotations

from pathlib import Path

from ..core.errors import EdgefaceError
from ..engines import registry
from ..engines.descriptor import resolve
from .ncnn import export_ncnn
from .onnx import export_onnx

__all__ = ["export", "export_ncnn", "export_onnx", "formats"]


def formats() -> list[str]:
    """The `--format` values: every engine with an exporter."""
    return [e.format for e in registry.exportable()]


def export(format_name: str, model=None, out_dir: str | Path = "export", *, precision: str | None = None,
           fold_preprocess: bool = False, **options) -> Path:
    """Export ``model`` (checkpoint path, module, or None = shipped default) to ``out_dir``; the artifact path."""
    engine = registry.by_format(format_name)
    if engine.exporter is None:
        raise EdgefaceError(f"format {engine.format!r} is the training checkpoint itself; nothing to export")
    precision = precision or engine.precisions[0]
    if precision not in engine.precisions:
        raise EdgefaceError(f"format {engine.format!r} supports precision {' or '.join(engine.precisions)}, not "
                            f"{precision!r}" + ("; INT8 comes from `edgeface quantize`" if precision == "int8" else ""))
    if fold_preprocess and not engine.fold_preprocess:
        folds = " or ".join(e.format for e in registry.exportable() if e.fold_preprocess)
        raise EdgefaceError(f"--fold-preprocess is not available for {engine.format!r}; use --format {folds}")
    exporter = resolve(engine.exporter)
    return exporter(model, Path(out_dir) / engine.artifact, precision=precision, fold_preprocess=fold_preprocess,
                    **options)
