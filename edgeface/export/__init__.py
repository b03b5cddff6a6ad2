"""Export a checkpoint to deployable artifacts (torch, imported when an export runs).

    onnx.py      ONNX opset 17 (onnxruntime's artifact; TensorRT and OpenVINO run it), optionally folded
    ncnn.py      ncnn .param/.bin through pnnx
    tensorrt.py  the ONNX, then a TensorRT engine built here
    openvino.py  OpenVINO's IR, converted from the ONNX
    source.py    what an export starts from: a checkpoint or a torch module

``EXPORTERS`` is the exporter of each format (an engine's ``format`` in the registry); an engine from another
package adds its own with ``register_exporter``. ``export(format, ...)`` is `edgeface export --format`: the
file name and precisions a format has come from the engine registry.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ..core.errors import EdgefaceError
from ..core.io import clean_stale_temp, removed_on_failure
from ..core.preprocess import to_input
from ..engines import registry
from ..runtime.predictor import check_outputs
from .ncnn import export_ncnn
from .onnx import export_onnx
from .openvino import export_openvino
from .source import require_torch, resolve_model
from .tensorrt import export_tensorrt

__all__ = ["EXPORTERS", "export", "export_ncnn", "export_onnx", "exportable", "exporter_of", "formats",
           "register_exporter"]

# format -> exporter: (model, out_path, *, precision, fold_preprocess, **options) -> the artifact's path.
# The torch format has none: the checkpoint is what every other artifact is exported from.
EXPORTERS: dict[str, Callable[..., Path]] = {"onnx": export_onnx, "ncnn": export_ncnn, "tensorrt": export_tensorrt,
                                             "openvino": export_openvino}


def register_exporter(fmt: str, exporter: Callable[..., Path]) -> None:
    """The exporter of another package's engine's format (the engine itself goes to ``registry.register``)."""
    EXPORTERS[fmt] = exporter


def exporter_of(fmt: str) -> Callable[..., Path]:
    engine = registry.by_format(fmt)
    if fmt not in EXPORTERS:
        raise EdgefaceError(f"format {fmt!r} has no exporter ({engine.title}'s artifact is not exported); "
                            f"choose one of {', '.join(formats())}")
    return EXPORTERS[fmt]


def exportable() -> list:
    """The engines whose format has an exporter, in the registry's order."""
    return [e for e in registry.ENGINES if e.format in EXPORTERS]


def formats() -> list[str]:
    """The `--format` values: every engine with an exporter."""
    return [e.format for e in exportable()]


def check_replaceable(target: Path, engine) -> None:
    """Re-exporting replaces an earlier edgeface artifact of the same name and its companions; never a user's
    own file that happens to be called model.onnx, model.ncnn.bin or model.spec.json (or a folder so named)."""
    present = [f for f in [target, *engine.companions_of(target)] if os.path.lexists(f)]
    for f in present:
        if f.is_symlink() or not f.is_file():
            raise EdgefaceError(f"{f} exists and is not a file; choose another --out")
    if not present:
        return
    if target in present:
        try:
            engine.spec_of(target)  # ncnn's reads the spec file beside the .param too
            return
        except EdgefaceError:
            raise EdgefaceError(f"{target} exists and is not an edgeface artifact (no ModelSpec), so export will "
                                f"not replace it; choose another --out, or move that file away") from None
    # Companions without their artifact: only what an interrupted export left (its spec file names the spec).
    records = [f for f in present if f.suffix == ".json"]
    for f in records or present:
        if not _is_spec_record(f):
            raise EdgefaceError(f"{f} exists and is not a file edgeface export wrote, so export will not replace "
                                f"it; choose another --out, or move that file away")


def _is_spec_record(path: Path) -> bool:
    """Whether ``path`` is a ModelSpec file an edgeface exporter wrote beside an artifact."""
    import json

    from ..core.spec import ModelSpec

    try:
        if path.stat().st_size > 1 << 20:
            return False
        record = json.loads(path.read_bytes())
        ModelSpec.from_dict(record["spec"])
    except Exception:  # noqa: BLE001 - anything unreadable is not ours
        return False
    return True


def export(format_name: str, model=None, out_dir: str | Path = "export", *, precision: str | None = None,
           fold_preprocess: bool = False, **options) -> Path:
    """Export ``model`` (checkpoint path, module, or None = shipped default) to ``out_dir``; the artifact path."""
    engine = registry.by_format(format_name)
    if engine.format not in EXPORTERS:
        raise EdgefaceError(f"format {engine.format!r} has no exporter (the torch format is the training "
                            f"checkpoint itself); choose one of {', '.join(formats())}")
    precision = precision or engine.precisions[0]
    if precision not in engine.precisions:
        raise EdgefaceError(f"format {engine.format!r} supports precision {' or '.join(engine.precisions)}, not "
                            f"{precision!r}" + ("; INT8 comes from `edgeface quantize`" if precision == "int8" else ""))
    if fold_preprocess and not engine.fold_preprocess:
        folds = " or ".join(e.format for e in exportable() if e.fold_preprocess)
        raise EdgefaceError(f"--fold-preprocess is not available for {engine.format!r}; use --format {folds}")
    target = Path(out_dir) / engine.artifact
    check_replaceable(target, engine)
    check_source_outputs(model)
    exporter = EXPORTERS[engine.format]
    clean_stale_temp()
    with removed_on_failure(target.parent):  # a failed export leaves no --out folder behind
        return exporter(model, target, precision=precision, fold_preprocess=fold_preprocess, **options)


def check_source_outputs(model=None, per_set: int = 8) -> None:
    """Run the model on faces before anything is written: NaN weights, a spec whose normalisation divides by
    zero or a foreign network stop here in one line instead of becoming an artifact that answers NaN.

    The faces are the labelled sets' val faces when ../shared/data (or $EDGEFACE_SHARED_DATA) is there, else
    deterministic synthetic images: either way a broken model shows (non-finite or out-of-range outputs).
    """
    torch = require_torch()
    net, spec = resolve_model(model)
    crops = _check_faces(spec, per_set)
    with torch.no_grad():
        blur, pose = net(torch.from_numpy(to_input(crops, spec)))
    where = f"checkpoint {model}" if model is not None and not isinstance(model, torch.nn.Module) else "the model"
    check_outputs(blur.numpy().reshape(-1), pose.numpy(), where,
                  fix="nothing was exported: retrain it or pass another checkpoint")


def _check_faces(spec, per_set: int):
    from ..faces.data import default_verify_data, find_sets, load_samples, synthetic_faces
    from ..faces.evaluate import load_crops

    data = default_verify_data()
    samples = []
    if data is not None:
        for folder in find_sets(data):
            try:
                samples += load_samples(folder, split="val")[:per_set]
            except EdgefaceError:  # a broken set is deploy's and eval's to report; the check needs some faces
                continue
    return load_crops(samples, spec) if samples else synthetic_faces(spec, 16)
