"""ONNX export (opset 17, dynamic batch): the artifact onnxruntime runs and TensorRT builds its engines from.

The ModelSpec goes inside, in ``metadata_props`` (``edgeface.core.artifact``). With ``fold_preprocess`` the
graph takes uint8 NHWC BGR crops and does the cast, channel swap, normalisation and NCHW transpose itself
(``edgeface.core.fold``), so a camera frame's crop needs no Python copy; the artifact records this as its
input kind, which engines read to know what to feed. The file is written to a temporary name and renamed,
so an interrupted export never leaves a half-written artifact behind.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from ..core import __version__
from ..core.artifact import INPUT_KIND_KEY, PRECISION_KEY, set_onnx_metadata
from ..core.errors import EdgefaceError
from ..core.fold import prepend_preprocess
from ..core.io import atomic_path, temp_dir
from ..core.spec import FLOAT_NCHW, SPEC_KEY, ModelSpec
from .source import require_torch, resolve_model

DEFAULT_OPSET = 17                         # TensorRT 8.6 (JetPack 5) parses ONNX up to opset 17


def export_onnx(model_or_checkpoint=None, out_path: str | Path = "model.onnx", *, precision: str = "fp32",
                fold_preprocess: bool = False, spec: ModelSpec | None = None, opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = True, simplify: bool = True) -> Path:
    """Export to ONNX with the legacy TorchScript exporter (exact to ~1e-6 at opset 17) and return the path.

    Input ``spec.input_name``: float32 (N, 3, S, S) normalised, or uint8 (N, S, S, 3) BGR when
    ``fold_preprocess``; outputs named after the spec (``blur`` (N, 1), ``pose`` (N, 3)). The ModelSpec is
    stored in ``metadata_props`` and the model passes ``onnx.checker``. The ONNX is FP32 (``precision``);
    INT8 comes from ``edgeface quantize``.
    """
    if precision != "fp32":
        raise EdgefaceError(f"ONNX export is fp32, not {precision!r}; INT8 comes from `edgeface quantize`")
    torch = require_torch()
    import onnx

    out_path = Path(out_path)
    model, spec = resolve_model(model_or_checkpoint, spec)
    s = spec.input_size
    dummy = torch.zeros(1, 3, s, s)
    names = list(spec.output_names)
    axes = {spec.input_name: {0: "batch"}, **{n: {0: "batch"} for n in names}} if dynamic_batch else None
    with temp_dir("onnx") as td:
        raw = Path(td) / "raw.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the legacy exporter's DeprecationWarning is expected here
            try:
                torch.onnx.export(model, (dummy,), str(raw), dynamo=False, opset_version=opset,
                                  input_names=[spec.input_name], output_names=names, dynamic_axes=axes,
                                  do_constant_folding=True)
            except Exception as e:  # noqa: BLE001 - exporter errors come in many types
                raise EdgefaceError(f"ONNX export failed ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0][:200]})") from None
        proto = onnx.load(str(raw))
    if simplify:
        proto = _simplify(proto)
    set_onnx_metadata(proto, {SPEC_KEY: spec.to_json(), INPUT_KIND_KEY: FLOAT_NCHW, PRECISION_KEY: "fp32"})
    if fold_preprocess:
        proto = prepend_preprocess(proto, spec)
    proto.producer_name = "edgeface"
    proto.producer_version = __version__
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:  # noqa: BLE001
        raise EdgefaceError(f"exported ONNX fails onnx.checker ({str(e).splitlines()[0][:200]})") from None
    with atomic_path(out_path) as tmp:
        onnx.save(proto, str(tmp))
    return out_path


def _simplify(proto):
    try:
        import onnxslim
    except ImportError:
        warnings.warn("onnxslim is not installed; the ONNX is exported unsimplified (pip install onnxslim)")
        return proto
    try:
        slim = onnxslim.slim(proto)
    except Exception as e:  # noqa: BLE001 - a failed simplification must not lose the export
        warnings.warn(f"onnxslim failed ({type(e).__name__}); keeping the unsimplified graph")
        return proto
    return slim if slim is not None else proto
