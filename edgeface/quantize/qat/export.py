"""The converted (int8 Q/DQ) graph as ONNX: TensorRT's explicit-quantization form, runnable in onnxruntime."""
from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

from ...core import __version__
from ...core.artifact import INPUT_KIND_KEY, PRECISION_KEY, QUANT_KEY, set_onnx_metadata
from ...core.errors import EdgefaceError
from ...core.io import atomic_path, temp_dir
from ...core.spec import FLOAT_NCHW, SPEC_KEY
from ..emit.onnx import check_symmetric_qdq


def fix_opset(proto, opset: int):
    """The dynamo exporter writes opset 18 whatever it is asked; convert down (TensorRT 8.6 parses <= 17)
    and drop ReduceMean's ``noop_with_empty_axes`` (an opset-18 attribute the converter leaves behind)."""
    import onnx

    from onnx import version_converter

    current = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
    if current != opset:
        proto = version_converter.convert_version(proto, opset)
    if opset < 18:
        for node in proto.graph.node:
            if node.op_type == "ReduceMean":
                keep = [a for a in node.attribute if a.name != "noop_with_empty_axes"]
                del node.attribute[:]
                node.attribute.extend(keep)
    # Drop opset imports of domains no node uses (the exporter lists pkg.* helpers).
    used = {n.domain for n in proto.graph.node}
    keep = [o for o in proto.opset_import if o.domain in ("", "ai.onnx") or o.domain in used]
    del proto.opset_import[:]
    proto.opset_import.extend(keep)
    onnx.checker.check_model(proto)
    return proto


def quant_metadata(recipe: dict | None, extra: dict | None = None) -> dict:
    q = (recipe or {}).get("quant", {})
    return {"method": "qat", "weights": q.get("weights", "int8_per_channel_symmetric"),
            "activations": q.get("activations", "int8_per_tensor_symmetric"),
            "weight_range": q.get("weight_range", [-127, 127]), "activation_range": q.get("activation_range",
                                                                                          [-127, 127]),
            "heads": q.get("heads", "float"), **(extra or {})}


def export_qdq_onnx(converted, spec, out_path: Path, opset: int = 17, dynamic_batch: bool = True,
                    quant_info: dict | None = None) -> Path:
    """The converted (int8 Q/DQ) graph as ONNX with the ModelSpec and a QAT flag in metadata_props."""
    import logging
    import warnings

    import onnx
    import torch

    s = spec.input_size
    x = torch.zeros(2, 3, s, s)
    dims = ({0: torch.export.Dim("batch", min=1, max=65536)},) if dynamic_batch else None
    # torch.onnx logs one warning per torchvision op it cannot register; torchvision is not used here.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with temp_dir("qat-onnx") as td, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = Path(td) / "raw.onnx"
        try:
            # Ask the exporter for its native opset 18 and convert below: asking 17 makes it try (and fail,
            # loudly) a conversion of its own before optimisation turns ReduceMean's axes into constants.
            with redirect_stdout(io.StringIO()):
                program = torch.onnx.export(converted, (x,), dynamo=True, opset_version=18,
                                            input_names=[spec.input_name], output_names=list(spec.output_names),
                                            dynamic_shapes=dims, external_data=False, verbose=False)
            program.save(str(raw), external_data=False)
        except Exception as e:  # noqa: BLE001 - exporter errors come in many types
            raise EdgefaceError(f"Q/DQ ONNX export failed ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:200]})") from None
        proto = fix_opset(onnx.load(str(raw)), opset)
    set_onnx_metadata(proto, {SPEC_KEY: spec.to_json(), INPUT_KIND_KEY: FLOAT_NCHW, PRECISION_KEY: "int8",
                          QUANT_KEY: json.dumps(quant_info or quant_metadata(None), sort_keys=True)})
    proto.producer_name = "edgeface"
    proto.producer_version = __version__
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        onnx.save(proto, str(tmp))
    problems = check_symmetric_qdq(out_path)
    if problems:
        out_path.unlink()
        raise EdgefaceError(f"QAT export is not TensorRT's Q/DQ form: {problems[0]}")
    return out_path
