"""OpenVINO: Intel's engine for x86 CPUs. It runs the ONNX export (FP32, and the INT8 U8S8 Q/DQ ONNX that
onnxruntime runs, from the same calibration) and its own IR (``edgeface export --format openvino``).

    runner.py   OpenVinoBackend: compile for the CPU (threads, latency / throughput hint), the ModelSpec's
                preprocessing folded in with OpenVINO's PrePostProcessor, batches split over async requests
    ir.py       the IR's ModelSpec file beside model.xml (read without OpenVINO)

onnxruntime wins at batch 1 on x86, OpenVINO at large batches (docs/engines.md has the figures), so
``backend="auto"`` on x86 prefers it from ``AUTO_MIN_BATCH`` on (FP32 only with AVX-512), and ``deploy --target x86``
measures both on the machine the bundle runs on and records its choice in the manifest.
"""
from __future__ import annotations

from typing import Optional

from ...core.device import cpu_isa_flags
from ...core.errors import EdgefaceError
from ..descriptor import Engine, Int8Form, TargetSection

HINTS = ("latency", "throughput")
# backend="auto" on x86 (a bare ONNX; a bundle follows deploy's measurement) prefers OpenVINO over
# onnxruntime from batch AUTO_MIN_BATCH on: always for the INT8 Q/DQ (faster than onnxruntime's INT8 even on an
# AVX2-only CPU), and for FP32 only on a CPU with AVX-512 (slower than onnxruntime on AVX2 alone). The
# measurements behind this rule are in docs/engines.md.
AUTO_MIN_BATCH = 8
AUTO_FP32_ISA = ("avx512f",)
MIN_CHUNK = 8  # a batch is split over async infer requests only into pieces of at least this many crops

# Float precisions OpenVINO runs an FP32 model at, by INFERENCE_PRECISION_HINT (our name -> OpenVINO's). Its CPU
# plugin defaults the hint to bf16 on CPUs that compute bf16 natively (avx512_bf16, AMX), so every FP32 model
# is compiled with the hint pinned: f32 unless bf16 was asked for. bf16 is faster but moves each face's pose
# visibly where f32 stays with torch (the figures are in docs/engines.md).
FLOAT_HINTS = {"fp32": "f32", "bf16": "bf16"}
# CPU features that give OpenVINO a native bf16 path. fp16 is not offered: on x86 only AMX-FP16 (Granite
# Rapids) computes it, and OpenVINO's CPU plugin answers an f16 hint with bf16 on the CPUs we have.
BF16_ISA = ("avx512_bf16", "amx_bf16")


def bf16_missing(isa_flags=None) -> Optional[str]:
    """None where this CPU (or ``isa_flags``) computes bf16 natively; else why bf16 cannot run here."""
    flags = set(cpu_isa_flags() if isa_flags is None else isa_flags)
    if flags & set(BF16_ISA):
        return None
    return (f"bf16 needs a CPU with {' or '.join(BF16_ISA)} (AVX-512 BF16 or AMX); this CPU has neither, so "
            f"OpenVINO would emulate it or run f32: use --precision fp32 or int8")


def precision_problem(stored: str, wanted: str, isa_flags=None) -> Optional[str]:
    """None when OpenVINO can run an artifact holding ``stored`` at ``wanted`` on this CPU; else why not.
    An FP32 artifact runs at fp32 or bf16; an INT8 Q/DQ one at int8 (its float layers at OpenVINO's default)."""
    if wanted == stored and stored in ("fp32", "int8"):
        return None
    if stored == "fp32" and wanted == "bf16":
        return bf16_missing(isa_flags)
    if wanted == "fp16":
        return ("OpenVINO has no fp16 CPU path on x86 worth using (only AMX-FP16 computes fp16; the CPU plugin turns "
                "an f16 hint into bf16): use fp32, or bf16 on a CPU with avx512_bf16 / amx_bf16")
    return f"OpenVINO runs a {stored} artifact at {stored}{' or bf16' if stored == 'fp32' else ''}, not {wanted}"


def precisions_for(stored: str, isa_flags=None) -> list[str]:
    """The precisions OpenVINO can run an artifact holding ``stored`` at on this CPU (deploy's candidates)."""
    return [p for p in ("fp32", "bf16", "int8") if precision_problem(stored, p, isa_flags) is None]


def _check_target(section: dict, where: str) -> None:
    if section["hint"] not in HINTS:
        raise EdgefaceError(f"{where}: field 'openvino.hint' is {section['hint']!r}; choose one of {', '.join(HINTS)}")
    if not isinstance(section["requests"], int) or section["requests"] < 0:
        raise EdgefaceError(f"{where}: field 'openvino.requests' must be an integer >= 0 (0 = OpenVINO's optimum)")


def _runner_options(section: dict, precision: str) -> dict:
    """What a bundle's manifest tells the OpenVINO runner (OpenVinoBackend reads exactly these keys)."""
    return {"hint": section["hint"], "requests": section["requests"]}


class OpenVinoEngine(Engine):
    """OpenVINO decides two things itself: when ``backend="auto"`` prefers it on x86, and which of its target
    settings deploy measures."""

    def auto_rank(self, device: str, batch: int, precision: Optional[str], isa_flags=None) -> int:
        """First on x86 from batch AUTO_MIN_BATCH on (before onnxruntime), for an FP32 artifact only on a CPU
        with AUTO_FP32_ISA; otherwise not preferred at all."""
        if device not in self.preferred_on or batch < AUTO_MIN_BATCH:
            return 2
        if precision != "int8" and not set(cpu_isa_flags() if isa_flags is None else isa_flags) & set(AUTO_FP32_ISA):
            return 2
        return 0

    def measure_variants(self, section: dict, threads: Optional[int], batch: int) -> list[tuple[str, dict]]:
        """The other performance hint, where it can differ: the throughput hint runs several streams only with
        more than one thread (``threads`` None = all cores), and a batch is split over its requests only into
        pieces of MIN_CHUNK crops. The throughput hint won at large batches and lost at small ones
        (docs/engines.md), so neither hint wins everywhere."""
        if (threads is not None and threads < 2) or batch < 2 * MIN_CHUNK:
            return []
        other = "throughput" if section["hint"] == "latency" else "latency"
        return [(other, {**section, "hint": other})]


ENGINE = OpenVinoEngine(
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
    # A bundle carries the ONNX: OpenVINO compiles it when it loads (no build step), and deploy can measure
    # onnxruntime and OpenVINO on the very same file before it picks one.
    bundle_format="onnx",
    fold_preprocess=True,
    # The INT8 form is onnxruntime's U8S8 Q/DQ ONNX from the same statistics: OpenVINO reads the Q/DQ
    # graph and runs its own int8 kernels on it (no second calibration).
    int8=Int8Form(artifact="model.onnx"),
    # hint: OpenVINO's PERFORMANCE_HINT; requests: infer requests a batch is split over (0: one for the
    # latency hint, OpenVINO's optimum for the throughput hint).
    target=TargetSection(defaults={"hint": "latency", "requests": 0}, runner_options=_runner_options,
                         check=_check_target),
    preferred_on=("x86",),  # from batch AUTO_MIN_BATCH on (OpenVinoEngine.auto_rank)
)
