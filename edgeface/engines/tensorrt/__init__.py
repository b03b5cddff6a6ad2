"""TensorRT: the NVIDIA Jetson / GPU engine. Engines are built on the device that runs them, from the ONNX.

    runner.py       TensorRTBackend: runs an engine (or builds one from an ONNX on first use)
    build.py        build options decided before TensorRT is touched, the build, find-or-build
    cache.py        the engine cache: keys, records, stale/foreign/truncated engines rebuilt, never loaded
    preflight.py    whether TensorRT's ONNX parser will take a model (checked on any machine)
    calibrator.py   TensorRT's calibration-cache text format and the implicit-INT8 calibrator
    cuda_memory.py  device and pinned buffers through pycuda or cuda-python
    library.py      importing TensorRT, and the versions a bundle's target allows
"""
from __future__ import annotations

from pathlib import Path

from ...core.errors import EdgefaceError
from ..descriptor import Engine, Int8Form, TargetSection
from .library import is_version

INT8_FORMS = ("qdq",)  # the explicit Q/DQ ONNX (TensorRT 8.0 to 11), plus calib.cache for implicit builds


def _check_target(section: dict, where: str) -> None:
    for key in ("min_version", "max_version"):
        if not is_version(section[key]):
            raise EdgefaceError(f"{where}: field 'tensorrt.{key}' must be a version like \"8.5\"")
    if section["int8_form"] not in INT8_FORMS:
        raise EdgefaceError(f"{where}: field 'tensorrt.int8_form' is {section['int8_form']!r}; edgeface writes "
                            f"{' or '.join(INT8_FORMS)}")
    if not section["workspace_mb"] > 0:
        raise EdgefaceError(f"{where}: field 'tensorrt.workspace_mb' must be > 0")


def _runner_options(section: dict, precision: str) -> dict:
    """What a bundle's manifest tells the TensorRT runner (TensorRTBackend reads exactly these keys)."""
    return {"workspace_mb": section["workspace_mb"], "tensorrt_min_version": section["min_version"],
            "tensorrt_max_version": section["max_version"]}


class TensorRTEngine(Engine):
    """TensorRT engines do not move between GPUs or TensorRT versions: the device builds one from the bundle's
    ONNX, which is checked against TensorRT's parser before it ships, and checked for accuracy on a build
    machine (no GPU) by onnxruntime."""

    @property
    def builds_on_device(self) -> bool:
        return self.bundle_format != self.format

    def checking(self) -> tuple[str, dict]:
        """onnxruntime running the Q/DQ graph as written (its exact arithmetic, as TensorRT's int8 kernels compute
        it), not through ORT's own x86 int8 kernels."""
        return "onnxruntime", {"simulate_qdq": True}

    def bundle_problems(self, artifact: Path, opset: int) -> list[str]:
        from .preflight import check_onnx_for_tensorrt

        return check_onnx_for_tensorrt(artifact, opset)


ENGINE = TensorRTEngine(
    name="tensorrt",
    title="TensorRT",
    description="TensorRT engine built from the ONNX on the device that runs it (cached by TRT/GPU/precision/sha256)",
    package="tensorrt",
    extra="tensorrt",
    format="tensorrt",
    suffix=".engine",
    artifact="model.engine",
    companions=("{name}.json", "{stem}.spec.json"),  # the engine record; a spec file beside it
    also_runs=("onnx",),
    runner="edgeface.engines.tensorrt.runner:TensorRTBackend",
    read_spec="edgeface.core.artifact:read_engine_spec",
    precisions=("fp16", "fp32"),
    # Engines do not move between GPUs or TensorRT versions: a bundle carries the ONNX and the device
    # builds the engine (`edgeface build`, or the first Predictor call).
    bundle_format="onnx",
    fold_preprocess=True,
    # S8S8 symmetric Q/DQ (zero points 0), float bias; calib.cache for the implicit-INT8 build path
    int8=Int8Form(artifact="model.onnx", calib_cache="calib.cache", qdq_native=True),
    # min/max_version: execute_async_v3 / build_serialized_network exist from 8.5; 11 drops the FP16/INT8
    # builder flags (strongly typed networks only). workspace_mb: the builder's workspace pool.
    target=TargetSection(defaults={"min_version": "8.5", "max_version": "10.99", "workspace_mb": 256,
                                   "int8_form": "qdq"},
                         runner_options=_runner_options, check=_check_target),
    preferred_on=("jetson",),
)
