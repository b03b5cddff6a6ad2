"""INT8 artifacts in each engine's own form, from a QuantPlan (per-tensor ranges, layers kept float).

    onnx.py   onnxruntime's U8S8 form and TensorRT's S8S8 Q/DQ form (+ calib.cache), through onnxruntime's
              quantizer fed our ranges; ranges read back off a Q/DQ graph (quantization-aware models)
    ncnn.py   ncnn's INT8 .param/.bin, written in ncnn's own format

``EMITTERS`` is each engine's emitter (the engine registry's ``Int8Form`` describes the artifact it writes);
an engine from another package adds its own with ``register_emitter``. ``emit_int8`` calls it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

from ...engines import registry
from ...engines.descriptor import resolve

# engine -> emitter(sources, plan, out_path, *, ort_format=..., calib_cache=...) -> a description of the form.
# Named "module:attribute" (onnx.py and ncnn.py import this module), resolved on first use.
EMITTERS: dict[str, Union[str, Callable[..., dict]]] = {
    "onnxruntime": "edgeface.quantize.emit.onnx:onnxruntime_int8",  # U8S8, ORT's fast x86 kernels
    "openvino": "edgeface.quantize.emit.onnx:onnxruntime_int8",     # the same Q/DQ ONNX, OpenVINO's kernels
    "tensorrt": "edgeface.quantize.emit.onnx:tensorrt_int8",        # S8S8 symmetric Q/DQ + calib.cache
    "ncnn": "edgeface.quantize.emit.ncnn:ncnn_int8",                # ncnn's own INT8 .param/.bin
}


def register_emitter(engine_name: str, emitter: Callable[..., dict]) -> None:
    """The INT8 emitter of another package's engine (whose descriptor has an ``int8`` form)."""
    EMITTERS[engine_name] = emitter


def emitter_of(engine_name: str) -> Callable[..., dict]:
    from ...core.errors import EdgefaceError

    if registry.get(engine_name).int8 is None or engine_name not in EMITTERS:
        raise EdgefaceError(f"edgeface quantize writes no INT8 form for {engine_name!r}; choose one of "
                            f"{', '.join(e.name for e in registry.with_int8() if e.name in EMITTERS)}")
    emitter = EMITTERS[engine_name]
    return resolve(emitter) if isinstance(emitter, str) else emitter


@dataclass
class Fp32Artifacts:
    """The FP32 artifacts an emitter reads (``Int8Form.sources`` says which it needs)."""

    onnx: Path                      # the FP32 ONNX the ranges are keyed on
    ncnn: Optional[Path] = None     # its ncnn export, whose weights the ncnn emitter rewrites
    onnx_model: object = None       # the parsed ONNX, when the caller has it already

    def model(self):
        if self.onnx_model is None:
            import onnx

            self.onnx_model = onnx.load(str(self.onnx))
        return self.onnx_model


def int8_artifact(engine_name: str) -> str:
    """Where ``edgeface quantize`` puts an engine's INT8 artifact, relative to its output folder."""
    return f"{engine_name}/{registry.get(engine_name).int8.artifact}"


def emit_int8(engine_name: str, sources: Fp32Artifacts, plan, out_dir: Path, ort_format: str = "qdq") -> dict:
    """Write one engine's INT8 artifact (and its calibration cache) under ``out_dir``; a description with
    their paths relative to ``out_dir``."""
    form = registry.get(engine_name).int8
    out_path = Path(out_dir) / int8_artifact(engine_name)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    cache = out_path.parent / form.calib_cache if form.calib_cache else None
    info = emitter_of(engine_name)(sources, plan, out_path, ort_format=ort_format, calib_cache=cache)
    info = {"artifact": int8_artifact(engine_name), **info}
    if cache is not None:
        info["calib_cache"] = f"{engine_name}/{form.calib_cache}"
    return info
