"""OpenVINO: Intel's engine for x86 CPUs. It runs the ONNX export (FP32, and the INT8 U8S8 Q/DQ ONNX that
onnxruntime runs, from the same calibration) and its own IR (``edgeface export --format openvino``).

    runner.py   OpenVinoBackend: compile for the CPU (threads, latency / throughput hint), the ModelSpec's
                preprocessing folded in with OpenVINO's PrePostProcessor, batches split over async requests
    ir.py       the IR's ModelSpec file beside model.xml (read without OpenVINO)

onnxruntime wins at batch 1 on x86, OpenVINO at large batches (docs/engines.md has the figures), so
``backend="auto"`` on x86 prefers it from ``AUTO_MIN_BATCH`` on, and ``deploy --target x86`` measures both
on the machine the bundle runs on and records its choice in the manifest.
"""
from __future__ import annotations

from ...core.errors import EdgefaceError
from ..descriptor import Engine, Int8Form, TargetSection

HINTS = ("latency", "throughput")
AUTO_MIN_BATCH = 8  # backend="auto" on x86 prefers OpenVINO over onnxruntime from this batch size on


def _check_target(section: dict, where: str) -> None:
    if section["hint"] not in HINTS:
        raise EdgefaceError(f"{where}: field 'openvino.hint' is {section['hint']!r}; choose one of {', '.join(HINTS)}")
    if not isinstance(section["requests"], int) or section["requests"] < 0:
        raise EdgefaceError(f"{where}: field 'openvino.requests' must be an integer >= 0 (0 = OpenVINO's optimum)")


def _runner_options(section: dict, precision: str) -> dict:
    """What a bundle's manifest tells the OpenVINO runner (OpenVinoBackend reads exactly these keys)."""
    return {"hint": section["hint"], "requests": section["requests"]}


ENGINE = Engine(
    name="openvino",
    title="OpenVINO",
    description="OpenVINO on x86 CPUs: runs the ONNX (FP32 and the INT8 Q/DQ) or its own IR (model.xml + .bin)",
    package="openvino",
    extra="openvino",
    format="openvino",
    suffix=".xml",
    artifact="model.xml",
    companions=("{stem}.bin", "{stem}.spec.json"),  # the IR's weights; the ModelSpec beside it
    also_runs=("onnx",),
    runner="edgeface.engines.openvino.runner:OpenVinoBackend",
    read_spec="edgeface.engines.openvino.ir:read_spec",
    precisions=("fp32",),
    exporter="edgeface.export.openvino:export_openvino",
    # A bundle carries the ONNX: OpenVINO compiles it when it loads (no build step), and deploy can measure
    # onnxruntime and OpenVINO on the very same file before it picks one.
    bundle_format="onnx",
    fold_preprocess=True,
    # The INT8 form is onnxruntime's U8S8 Q/DQ ONNX from the same statistics: OpenVINO reads the Q/DQ
    # graph and runs its own int8 kernels on it (no second calibration).
    int8=Int8Form(emitter="edgeface.quantize.emit.onnx:onnxruntime_int8", artifact="model.onnx"),
    # hint: OpenVINO's PERFORMANCE_HINT; requests: infer requests a batch is split over (0: one for the
    # latency hint, OpenVINO's optimum for the throughput hint).
    target=TargetSection(defaults={"hint": "latency", "requests": 0}, runner_options=_runner_options,
                         check=_check_target),
    preferred_on=("x86",),
    auto_min_batch=AUTO_MIN_BATCH,
)
