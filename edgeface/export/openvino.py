"""OpenVINO IR (``model.xml`` + ``model.bin``): the ONNX export converted by OpenVINO, with the ModelSpec in
``model.spec.json`` beside it. With ``fold_preprocess`` the IR takes uint8 NHWC BGR crops (OpenVINO's
PrePostProcessor steps are saved into it). OpenVINO also runs the ONNX itself; the IR saves the ONNX
import when a model loads (``scripts/bench_openvino.py`` measures whether it runs any faster)."""
from __future__ import annotations

from pathlib import Path

from ..core.errors import EdgefaceError
from ..core.io import atomic_write_json, temp_dir
from ..core.spec import FLOAT_NCHW, UINT8_NHWC
from .onnx import export_onnx
from .source import resolve_model


def export_openvino(model_or_checkpoint=None, out_path: str | Path = "model.xml", *, precision: str = "fp32",
                    fold_preprocess: bool = False, opset: int = 17, **options) -> Path:
    """Export to ONNX, convert with ``openvino.convert_model`` and save the IR; return the .xml path."""
    if precision != "fp32":
        raise EdgefaceError(f"OpenVINO IR export is fp32, not {precision!r}; INT8 runs the Q/DQ ONNX "
                            f"from `edgeface quantize --backend openvino`")
    try:
        import openvino as ov
    except ImportError:
        raise EdgefaceError("export --format openvino needs OpenVINO: pip install 'edgeface[openvino]'") from None
    from ..engines.openvino.ir import ir_paths
    from ..engines.openvino.runner import fold_preprocess as fold

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model, spec = resolve_model(model_or_checkpoint, None)
    with temp_dir("ov") as td:
        onnx_path = export_onnx(model, Path(td) / "model.onnx", spec=spec, opset=opset)
        ov_model = ov.convert_model(str(onnx_path))
        input_kind = FLOAT_NCHW
        if fold_preprocess:
            ov_model, folded = fold(ov_model, spec)
            if not folded:
                raise EdgefaceError("this ModelSpec's channel order cannot be folded into the IR")
            input_kind = UINT8_NHWC
        xml, _, spec_file = ir_paths(out_path)
        tmp_xml = xml.with_name(f".{xml.stem}.partial.xml")
        ov.save_model(ov_model, str(tmp_xml), compress_to_fp16=False)
        atomic_write_json(spec_file, {"spec": spec.to_dict(), "precision": "fp32", "input_kind": input_kind,
                                      "openvino": ov.__version__})
        tmp_xml.with_suffix(".bin").replace(xml.with_suffix(".bin"))
        tmp_xml.replace(xml)
    return out_path
