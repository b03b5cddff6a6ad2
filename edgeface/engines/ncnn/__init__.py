"""ncnn: the ARM CPU engine (Raspberry Pi). Its artifact is a .ncnn.param + .ncnn.bin pair made by pnnx."""
from __future__ import annotations

from ...core.errors import EdgefaceError
from ..descriptor import Engine, Int8Form, TargetSection

FP16_POLICIES = {"on": True, "off": False, "auto": None}  # None: on where the CPU has fp16 arithmetic


def _check_target(section: dict, where: str) -> None:
    if section["fp16"] not in FP16_POLICIES:
        raise EdgefaceError(f"{where}: field 'ncnn.fp16' is {section['fp16']!r}; choose one of "
                            f"{', '.join(FP16_POLICIES)}")


def _runner_options(section: dict, precision: str) -> dict:
    """What a bundle's manifest tells the ncnn runner (NcnnBackend reads exactly these keys)."""
    options = {"fp16": FP16_POLICIES["on" if precision == "fp16" else section["fp16"]]}
    if precision == "int8":
        options["int8_arithmetic"] = bool(section["int8_arithmetic"])
    return options


ENGINE = Engine(
    name="ncnn",
    title="ncnn",
    description="ncnn .param + .bin via pnnx (fp16 = fp16 weight storage), ModelSpec in model.spec.json",
    package="ncnn",
    extra="ncnn",
    format="ncnn",
    suffix=".ncnn.param",
    artifact="model.ncnn.param",
    companions=("{stem}.ncnn.bin", "{stem}.spec.json"),
    legacy_suffixes=(".param",),
    runner="edgeface.engines.ncnn.runner:NcnnBackend",
    read_spec="edgeface.core.artifact:read_ncnn_spec",
    precisions=("fp32", "fp16"),
    bundle_format="ncnn",
    int8=Int8Form(artifact="model.ncnn.param", sources=("onnx", "ncnn")),
    # "fp16": the fp16 policy of fp32/int8 bundles (an fp16 bundle always runs with "on");
    # "int8_arithmetic": an INT8 bundle's layers run ncnn's INT8 kernels (they pay off on ARM).
    target=TargetSection(defaults={"fp16": "off", "int8_arithmetic": True}, runner_options=_runner_options,
                         check=_check_target),
    preferred_on=("rpi", "arm64"),
)
