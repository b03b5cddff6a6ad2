"""The one table of artifact formats (after Ultralytics' export table).

Each row says what ``edgeface export --format NAME`` writes, which backend runs it and at which
precisions. ``export``, ``bench`` and ``deploy`` all read this table, so adding a format is one row
plus one exporter function.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from .errors import EdgefaceError


@dataclass(frozen=True)
class Format:
    name: str                 # --format value
    filename: str             # artifact file name written inside --out
    suffix: str               # how an artifact of this format is recognised
    backend: str              # backend (edgeface.backends.REGISTRY) that runs it
    precisions: tuple         # --precision values the exporter accepts; the first is the default
    exporter: Optional[str]   # "module:function" (imported lazily); None = not exportable (the source)
    fold_preprocess: bool     # whether the uint8-NHWC folded-preprocessing variant exists
    description: str

    def export_fn(self) -> Callable:
        if self.exporter is None:
            raise EdgefaceError(f"format {self.name!r} is the training checkpoint itself; nothing to export")
        mod, fn = self.exporter.split(":")
        return getattr(importlib.import_module(mod), fn)


FORMATS: dict[str, Format] = {
    f.name: f for f in (
        Format("torch", "model.pt", ".pt", "torch", ("fp32",), None, False,
               "PyTorch checkpoint (the reference; needs torch)"),
        Format("onnx", "model.onnx", ".onnx", "onnxruntime", ("fp32",), "edgeface.formats:export_onnx_format", True,
               "ONNX opset 17, dynamic batch, ModelSpec in metadata_props"),
        Format("ncnn", "model.ncnn.param", ".ncnn.param", "ncnn", ("fp32", "fp16"),
               "edgeface.formats:export_ncnn_format", False,
               "ncnn .param + .bin via pnnx (fp16 = fp16 weight storage), ModelSpec in model.spec.json"),
        Format("tensorrt", "model.engine", ".engine", "tensorrt", ("fp16", "fp32"),
               "edgeface.formats:export_tensorrt_format", True,
               "TensorRT engine built from the ONNX on the device that runs it (cached by TRT/GPU/precision/sha256)"),
    )
}


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise EdgefaceError(f"unknown format {name!r}; choose one of {', '.join(FORMATS)}")
    return FORMATS[name]


def format_of_artifact(path: str | Path) -> Format:
    """The format of an artifact file, from its name; EdgefaceError naming the known suffixes otherwise."""
    name = Path(path).name
    # Longest suffix first, so model.ncnn.param is ncnn and not a generic '.param'.
    for fmt in sorted(FORMATS.values(), key=lambda f: -len(f.suffix)):
        if name.endswith(fmt.suffix):
            return fmt
    if name.endswith(".param") or name.endswith(".bin"):
        return FORMATS["ncnn"]
    known = ", ".join(f.suffix for f in FORMATS.values())
    raise EdgefaceError(f"{name}: unknown artifact type; expected one of {known} (or a bundle directory)")


def export(format_name: str, model=None, out_dir: str | Path = "export", *, precision: str | None = None,
           fold_preprocess: bool = False, **options) -> Path:
    """Export ``model`` (checkpoint path, module, or None = shipped default) to ``out_dir``; the artifact path."""
    fmt = get_format(format_name)
    precision = precision or fmt.precisions[0]
    if precision not in fmt.precisions:
        raise EdgefaceError(f"format {fmt.name!r} supports precision {' or '.join(fmt.precisions)}, not {precision!r}"
                            + ("; INT8 comes from `edgeface quantize`" if precision == "int8" else ""))
    if fold_preprocess and not fmt.fold_preprocess:
        raise EdgefaceError(f"--fold-preprocess is not available for {fmt.name!r}; use --format onnx or tensorrt")
    return fmt.export_fn()(model, Path(out_dir), precision=precision, fold_preprocess=fold_preprocess, **options)


# -- exporters: (model, out_dir, *, precision, fold_preprocess, **options) -> artifact path -------------------
def export_onnx_format(model, out_dir: Path, *, precision: str = "fp32", fold_preprocess: bool = False,
                       **options) -> Path:
    from .export import export_onnx

    return export_onnx(model, out_dir / FORMATS["onnx"].filename, fold_preprocess=fold_preprocess, **options)


def export_ncnn_format(model, out_dir: Path, *, precision: str = "fp32", fold_preprocess: bool = False,
                       **options) -> Path:
    from .export import export_ncnn

    return export_ncnn(model, out_dir / FORMATS["ncnn"].filename, precision=precision, **options)


def export_tensorrt_format(model, out_dir: Path, *, precision: str = "fp16", fold_preprocess: bool = False,
                           workspace_mb: int = 1024, timing_cache=None, calib_cache=None, **options) -> Path:
    """ONNX first (kept beside the engine: it is the portable source), then the engine, built here."""
    from .export import export_onnx

    try:
        from .tensorrt_build import build_engine, import_tensorrt
    except ImportError as e:
        raise EdgefaceError(f"TensorRT engine building is unavailable ({e}); "
                            f"pip install 'edgeface[tensorrt]' on the Jetson/GPU that will run it") from None
    import_tensorrt()  # fail before the ONNX export when TensorRT is absent (MissingBackendError, one line)
    onnx_path = export_onnx(model, out_dir / FORMATS["onnx"].filename, fold_preprocess=fold_preprocess, **options)
    return build_engine(onnx_path, out_dir, precision=precision, workspace_mb=workspace_mb,
                        timing_cache=timing_cache, calib_cache=calib_cache)
